/*
 * audit_alerts.h - detection rules over the audit stream, each a small
 * state machine that turns events into `alert` events:
 *
 *   scope_escalation      one agent collects escalation_threshold denials
 *                         for a scope outside its capabilities (token.denied
 *                         or delegation.denied with detail.reason
 *                         AUDIT_REASON_SCOPE_ESCALATION) within
 *                         escalation_window_ms: one alert, then quiet for a
 *                         window, so a burst gives one alert, not one per
 *                         denial.
 *   delegation_violation  every token.denied or delegation.denied whose
 *                         detail.reason starts with AUDIT_REASON_CHAIN_PREFIX.
 *   new_tool              an agent invokes a tool (tool_invocation,
 *   new_audience          action.tool) or gets a token for an audience
 *                         (token.issued, detail.audience) it has not used
 *                         before, once it has a history of at least
 *                         novelty_min_events such events.
 *
 * The state (per agent: recent denials, the tools and audiences it used)
 * lives in memory, bounded: at most max_agents agents, the least recently
 * seen evicted first, and novelty_max_items tools and audiences per agent,
 * the least recently used forgotten first (so a tool forgotten and used
 * again alerts again).  State starts empty at each start of idpd; feed
 * recent history through audit_alerts_observe to warm it.
 *
 * An audit_alerts object is thread-safe: one lock guards it.  Time comes
 * from the clock given at creation.  Alert events are never fed back.
 */
#ifndef IDPD_AUDIT_ALERTS_H
#define IDPD_AUDIT_ALERTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "idpd/audit.h"
#include "idpd/clock.h"
#include "idpd/common.h"

struct audit_alerts;

/* Thresholds; the config module fills them from [audit.alerts]. */
struct audit_alert_config {
	unsigned escalation_threshold; /* N denials, 1-1000; 0 turns the rule off.  5 */
	int64_t escalation_window_ms;  /* M, > 0.  10 minutes */
	int escalation_severity;       /* 7 */
	bool chain_violation;          /* the delegation_violation rule.  true */
	int chain_severity;            /* 8 */
	bool novelty;                  /* the new_tool and new_audience rules.  true */
	unsigned novelty_min_events;   /* history an agent needs before they fire.  20 */
	unsigned novelty_max_items;    /* tools + audiences remembered per agent, 1-4096.  64 */
	int novelty_severity;          /* 5 */
	unsigned max_agents;           /* agents tracked, 1-1000000.  10000 */
};

void audit_alert_config_defaults(struct audit_alert_config *c);

/*
 * Make a detector.  clock is borrowed and must outlive it.  On success
 * *out is the caller's (audit_alerts_free).  IDP_EINVAL with diag filled in
 * for a threshold out of range.
 */
int audit_alerts_new(const struct audit_alert_config *cfg, const struct idp_clock *clock,
                     struct audit_alerts **out, struct idp_diag *diag) IDP_WUR;
void audit_alerts_free(struct audit_alerts *a);

#define AUDIT_ALERTS_MAX_PER_EVENT 2

/*
 * Feed one event.  Stores the alerts it raises, new events the caller owns
 * (to be emitted: audit_emit takes them over), in out[0..n) and returns n,
 * 0 to AUDIT_ALERTS_MAX_PER_EVENT.  An alert carries the trigger's agent,
 * human principal, task, request, instance and delegation chain, the rule's
 * severity, the actor system:alerts, and detail {rule, trigger_event_id,
 * trigger_type, ...}.  Any thread.  Cannot fail.
 */
size_t audit_alerts_feed(struct audit_alerts *a, const struct audit_event *ev,
                         struct audit_event *out[AUDIT_ALERTS_MAX_PER_EVENT]);

/* Learn which tools and audiences ev shows, raising nothing.  Any thread. */
void audit_alerts_observe(struct audit_alerts *a, const struct audit_event *ev);

/* Agents currently tracked; for metrics and tests. */
size_t audit_alerts_tracked(struct audit_alerts *a);

#endif /* IDPD_AUDIT_ALERTS_H */
