/*
 * Unit tests for the alert rules, driven by a fixed clock that the tests
 * move by hand.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include <pthread.h>

#include "idpd/audit_alerts.h"

#define T0 1774620000000LL
#define MIN 60000LL

struct fixture {
	struct idp_clock clock;
	struct audit_alerts *alerts;
};

static struct fixture *
fixture_new(void (*tune)(struct audit_alert_config *))
{
	struct fixture *fx = calloc(1, sizeof(*fx));
	struct audit_alert_config c;
	struct idp_diag d;

	assert_non_null(fx);
	idp_clock_fixed(&fx->clock, T0);
	audit_alert_config_defaults(&c);
	if (tune)
		tune(&c);
	idp_diag_init(&d);
	if (audit_alerts_new(&c, &fx->clock, &fx->alerts, &d) != IDP_OK)
		fail_msg("alerts: %s", idp_diag_str(&d));
	return fx;
}

static void
fixture_free(struct fixture *fx)
{
	audit_alerts_free(fx->alerts);
	free(fx);
}

static struct audit_event *
denial(enum audit_type t, const char *agent, const char *reason)
{
	struct audit_event *ev = audit_event_new(t, T0);

	assert_int_equal(audit_event_set(ev, AUDIT_F_AGENT_ID, agent), IDP_OK);
	assert_int_equal(audit_event_set(ev, AUDIT_F_TASK_ID, "task-1"), IDP_OK);
	assert_int_equal(audit_event_set(ev, AUDIT_F_HUMAN_PRINCIPAL, "alice@company.com"), IDP_OK);
	assert_int_equal(audit_event_set(ev, AUDIT_F_ID, "evt-1"), IDP_OK);
	assert_int_equal(audit_event_chain_append(ev, "alice@company.com"), IDP_OK);
	assert_int_equal(audit_event_chain_append(ev, agent), IDP_OK);
	if (reason != NULL)
		assert_int_equal(audit_event_put_detail(ev, "reason", json_string(reason)), IDP_OK);
	return ev;
}

static struct audit_event *
invocation(const char *agent, const char *tool)
{
	struct audit_event *ev = audit_event_new(AUDIT_TOOL_INVOCATION, T0);

	assert_int_equal(audit_event_set(ev, AUDIT_F_AGENT_ID, agent), IDP_OK);
	assert_int_equal(audit_event_set(ev, AUDIT_F_TOOL, tool), IDP_OK);
	return ev;
}

static struct audit_event *
issued(const char *agent, const char *audience)
{
	struct audit_event *ev = audit_event_new(AUDIT_TOKEN_ISSUED, T0);

	assert_int_equal(audit_event_set(ev, AUDIT_F_AGENT_ID, agent), IDP_OK);
	assert_int_equal(audit_event_put_detail(ev, "audience", json_string(audience)), IDP_OK);
	return ev;
}

/*
 * Feed ev (and free it); return how many alerts it raised.  If rule is not
 * NULL, exactly one alert is expected, with that rule, and *out gets it.
 */
static size_t
feed(struct fixture *fx, struct audit_event *ev, const char *rule, struct audit_event **out)
{
	struct audit_event *got[AUDIT_ALERTS_MAX_PER_EVENT];
	size_t n = audit_alerts_feed(fx->alerts, ev, got);

	audit_event_free(ev);
	if (rule != NULL) {
		assert_int_equal(n, 1);
		assert_int_equal(audit_event_type(got[0]), AUDIT_ALERT);
		assert_string_equal(audit_event_detail_str(got[0], "rule"), rule);
	}
	if (out != NULL && n > 0) {
		*out = got[0];
		for (size_t i = 1; i < n; i++)
			audit_event_free(got[i]);
	} else {
		for (size_t i = 0; i < n; i++)
			audit_event_free(got[i]);
	}
	return n;
}

static size_t
feed_n(struct fixture *fx, struct audit_event *ev)
{
	return feed(fx, ev, NULL, NULL);
}

static void
three_in_ten(struct audit_alert_config *c)
{
	c->escalation_threshold = 3;
	c->escalation_window_ms = 10 * MIN;
}

static void
escalation_raises_one_alert_per_burst(void **state)
{
	struct fixture *fx = fixture_new(three_in_ten);
	struct audit_event *alert = NULL;

	(void)state;
	assert_int_equal(
	    feed_n(fx, denial(AUDIT_TOKEN_DENIED, "a1", AUDIT_REASON_SCOPE_ESCALATION)), 0);
	fx->clock.fixed_ms += MIN;
	assert_int_equal(
	    feed_n(fx, denial(AUDIT_DELEGATION_DENIED, "a1", AUDIT_REASON_SCOPE_ESCALATION)), 0);
	fx->clock.fixed_ms += MIN;
	feed(fx, denial(AUDIT_TOKEN_DENIED, "a1", AUDIT_REASON_SCOPE_ESCALATION),
	     "scope_escalation", &alert);
	assert_int_equal(audit_event_time(alert), T0 + 2 * MIN);
	assert_int_equal(audit_event_severity(alert), 7);
	assert_string_equal(audit_event_get(alert, AUDIT_F_AGENT_ID), "a1");
	assert_string_equal(audit_event_get(alert, AUDIT_F_TASK_ID), "task-1");
	assert_string_equal(audit_event_get(alert, AUDIT_F_HUMAN_PRINCIPAL), "alice@company.com");
	assert_int_equal(audit_event_chain_len(alert), 2);
	assert_int_equal(audit_event_actor_kind(alert), AUDIT_ACTOR_SYSTEM);
	assert_string_equal(audit_event_detail_str(alert, "trigger_event_id"), "evt-1");
	assert_string_equal(audit_event_detail_str(alert, "trigger_type"), "token.denied");
	assert_int_equal(json_integer_value(json_object_get(audit_event_detail(alert), "denials")),
	                 3);
	audit_event_free(alert);

	/* The rest of the burst stays quiet for a window. */
	for (int i = 0; i < 6; i++) {
		fx->clock.fixed_ms += MIN;
		assert_int_equal(
		    feed_n(fx, denial(AUDIT_TOKEN_DENIED, "a1", AUDIT_REASON_SCOPE_ESCALATION)), 0);
	}
	/* A new burst after the quiet window alerts again. */
	fx->clock.fixed_ms = T0 + 13 * MIN;
	assert_int_equal(
	    feed_n(fx, denial(AUDIT_TOKEN_DENIED, "a1", AUDIT_REASON_SCOPE_ESCALATION)), 0);
	assert_int_equal(
	    feed_n(fx, denial(AUDIT_TOKEN_DENIED, "a1", AUDIT_REASON_SCOPE_ESCALATION)), 0);
	feed(fx, denial(AUDIT_TOKEN_DENIED, "a1", AUDIT_REASON_SCOPE_ESCALATION),
	     "scope_escalation", NULL);
	fixture_free(fx);
}

static void
escalation_counts_only_denials_inside_the_window(void **state)
{
	struct fixture *fx = fixture_new(three_in_ten);
	static const int64_t at[] = {0, 6, 12}; /* minutes: never three within ten */

	(void)state;
	for (size_t i = 0; i < 3; i++) {
		fx->clock.fixed_ms = T0 + at[i] * MIN;
		assert_int_equal(
		    feed_n(fx, denial(AUDIT_TOKEN_DENIED, "a1", AUDIT_REASON_SCOPE_ESCALATION)), 0);
	}
	/* 6, 12 and 13 are within ten minutes. */
	fx->clock.fixed_ms = T0 + 13 * MIN;
	feed(fx, denial(AUDIT_TOKEN_DENIED, "a1", AUDIT_REASON_SCOPE_ESCALATION),
	     "scope_escalation", NULL);
	fixture_free(fx);
}

/* A clock whose wall time the test sets apart from its monotonic time. */
static int64_t wall_ms, mono_ms;

static int64_t
wall_now(const struct idp_clock *c)
{
	(void)c;
	return wall_ms;
}

static int64_t
mono_now(const struct idp_clock *c)
{
	(void)c;
	return mono_ms;
}

/*
 * Escalation windows run on the monotonic clock: the wall clock set back
 * an hour right after an alert does not keep the rule quiet for that hour.
 */
static void
escalation_ignores_a_wall_clock_set_back(void **state)
{
	struct idp_clock clock = {wall_now, 0, mono_now};
	struct audit_alert_config c;
	struct audit_alerts *a;
	struct idp_diag d;
	struct fixture fx;

	(void)state;
	audit_alert_config_defaults(&c);
	three_in_ten(&c);
	idp_diag_init(&d);
	assert_int_equal(audit_alerts_new(&c, &clock, &a, &d), IDP_OK);
	fx.alerts = a;
	wall_ms = T0;
	mono_ms = 1000 * MIN;
	for (int i = 0; i < 2; i++)
		assert_int_equal(
		    feed_n(&fx, denial(AUDIT_TOKEN_DENIED, "a1", AUDIT_REASON_SCOPE_ESCALATION)),
		    0);
	feed(&fx, denial(AUDIT_TOKEN_DENIED, "a1", AUDIT_REASON_SCOPE_ESCALATION),
	     "scope_escalation", NULL);
	/* Eleven minutes on, with the wall clock an hour behind. */
	wall_ms = T0 - 60 * MIN;
	mono_ms += 11 * MIN;
	for (int i = 0; i < 2; i++)
		assert_int_equal(
		    feed_n(&fx, denial(AUDIT_TOKEN_DENIED, "a1", AUDIT_REASON_SCOPE_ESCALATION)),
		    0);
	feed(&fx, denial(AUDIT_TOKEN_DENIED, "a1", AUDIT_REASON_SCOPE_ESCALATION),
	     "scope_escalation", NULL);
	audit_alerts_free(a);
}

static void
escalation_is_counted_per_agent_and_reason(void **state)
{
	struct fixture *fx = fixture_new(three_in_ten);

	(void)state;
	assert_int_equal(
	    feed_n(fx, denial(AUDIT_TOKEN_DENIED, "a1", AUDIT_REASON_SCOPE_ESCALATION)), 0);
	assert_int_equal(
	    feed_n(fx, denial(AUDIT_TOKEN_DENIED, "a1", AUDIT_REASON_SCOPE_ESCALATION)), 0);
	assert_int_equal(
	    feed_n(fx, denial(AUDIT_TOKEN_DENIED, "a2", AUDIT_REASON_SCOPE_ESCALATION)), 0);
	assert_int_equal(feed_n(fx, denial(AUDIT_TOKEN_DENIED, "a1", "outside_business_hours")), 0);
	assert_int_equal(feed_n(fx, denial(AUDIT_TOKEN_DENIED, "a1", NULL)), 0);
	/* Not a denial, even with the reason. */
	assert_int_equal(
	    feed_n(fx, denial(AUDIT_TOKEN_ISSUED, "a1", AUDIT_REASON_SCOPE_ESCALATION)), 0);
	feed(fx, denial(AUDIT_TOKEN_DENIED, "a1", AUDIT_REASON_SCOPE_ESCALATION),
	     "scope_escalation", NULL);
	fixture_free(fx);
}

static void
escalation_rule_can_be_turned_off(void **state)
{
	struct fixture *fx = fixture_new(NULL);
	struct audit_alert_config c;
	struct audit_alerts *off;
	struct audit_event *got[AUDIT_ALERTS_MAX_PER_EVENT];
	struct idp_diag d;

	(void)state;
	audit_alert_config_defaults(&c);
	c.escalation_threshold = 0;
	idp_diag_init(&d);
	assert_int_equal(audit_alerts_new(&c, &fx->clock, &off, &d), IDP_OK);
	for (int i = 0; i < 20; i++) {
		struct audit_event *ev =
		    denial(AUDIT_TOKEN_DENIED, "a1", AUDIT_REASON_SCOPE_ESCALATION);

		assert_int_equal(audit_alerts_feed(off, ev, got), 0);
		audit_event_free(ev);
	}
	audit_alerts_free(off);
	fixture_free(fx);
}

static void
every_chain_violation_alerts(void **state)
{
	struct fixture *fx = fixture_new(NULL);
	struct audit_event *alert = NULL;

	(void)state;
	feed(fx, denial(AUDIT_DELEGATION_DENIED, "a1", "chain_depth_exceeded"),
	     "delegation_violation", &alert);
	assert_int_equal(audit_event_severity(alert), 8);
	assert_string_equal(audit_event_detail_str(alert, "reason"), "chain_depth_exceeded");
	assert_string_equal(audit_event_detail_str(alert, "trigger_type"), "delegation.denied");
	audit_event_free(alert);
	feed(fx, denial(AUDIT_DELEGATION_DENIED, "a1", "chain_depth_exceeded"),
	     "delegation_violation", NULL);
	feed(fx, denial(AUDIT_TOKEN_DENIED, "a2", "chain_revoked"), "delegation_violation", NULL);
	assert_int_equal(feed_n(fx, denial(AUDIT_DELEGATION_DENIED, "a1", "target_suspended")), 0);
	assert_int_equal(feed_n(fx, denial(AUDIT_DELEGATION_CREATED, "a1", "chain_ok")), 0);
	fixture_free(fx);
}

static void
three_events_of_history(struct audit_alert_config *c)
{
	c->novelty_min_events = 3;
}

static void
new_tool_and_audience_alert_once_history_exists(void **state)
{
	struct fixture *fx = fixture_new(three_events_of_history);
	struct audit_event *alert = NULL;

	(void)state;
	/* A new agent builds its history quietly. */
	assert_int_equal(feed_n(fx, invocation("a1", "s3_list")), 0);
	assert_int_equal(feed_n(fx, invocation("a1", "ec2_describe")), 0);
	assert_int_equal(feed_n(fx, issued("a1", "cloud-inventory-api")), 0);
	assert_int_equal(feed_n(fx, invocation("a1", "s3_list")), 0);
	feed(fx, invocation("a1", "iam_create_user"), "new_tool", &alert);
	assert_string_equal(audit_event_detail_str(alert, "tool"), "iam_create_user");
	assert_int_equal(audit_event_severity(alert), 5);
	assert_string_equal(audit_event_get(alert, AUDIT_F_AGENT_ID), "a1");
	audit_event_free(alert);
	assert_int_equal(feed_n(fx, invocation("a1", "iam_create_user")), 0);
	assert_int_equal(feed_n(fx, issued("a1", "cloud-inventory-api")), 0);
	feed(fx, issued("a1", "billing-api"), "new_audience", &alert);
	assert_string_equal(audit_event_detail_str(alert, "audience"), "billing-api");
	audit_event_free(alert);
	/* A tool and an audience with the same name are different things. */
	feed(fx, invocation("a1", "billing-api"), "new_tool", NULL);
	/* Another agent has its own history. */
	assert_int_equal(feed_n(fx, invocation("a2", "iam_create_user")), 0);
	fixture_free(fx);
}

static void
two_items_no_history(struct audit_alert_config *c)
{
	c->novelty_min_events = 0;
	c->novelty_max_items = 2;
}

static void
least_recently_used_tool_is_forgotten(void **state)
{
	struct fixture *fx = fixture_new(two_items_no_history);

	(void)state;
	feed(fx, invocation("a1", "A"), "new_tool", NULL);
	feed(fx, invocation("a1", "B"), "new_tool", NULL);
	assert_int_equal(feed_n(fx, invocation("a1", "A")), 0); /* A is now the most recent */
	feed(fx, invocation("a1", "C"), "new_tool", NULL);      /* B falls off */
	assert_int_equal(feed_n(fx, invocation("a1", "A")), 0);
	assert_int_equal(feed_n(fx, invocation("a1", "C")), 0);
	feed(fx, invocation("a1", "B"), "new_tool", NULL);
	fixture_free(fx);
}

static void
two_agents(struct audit_alert_config *c)
{
	c->novelty_min_events = 0;
	c->max_agents = 2;
}

static void
tracked_agents_are_bounded(void **state)
{
	struct fixture *fx = fixture_new(two_agents);

	(void)state;
	feed(fx, invocation("a1", "X"), "new_tool", NULL);
	feed(fx, invocation("a2", "X"), "new_tool", NULL);
	assert_int_equal(feed_n(fx, invocation("a1", "X")), 0); /* a2 is now the least recent */
	feed(fx, invocation("a3", "X"), "new_tool", NULL);      /* evicts a2 */
	assert_int_equal(audit_alerts_tracked(fx->alerts), 2);
	assert_int_equal(feed_n(fx, invocation("a1", "X")), 0);
	feed(fx, invocation("a2", "X"), "new_tool", NULL); /* forgotten, so new again */
	assert_int_equal(audit_alerts_tracked(fx->alerts), 2);
	fixture_free(fx);
}

static void
three_denials_two_agents(struct audit_alert_config *c)
{
	c->escalation_threshold = 3;
	c->novelty_min_events = 0;
	c->max_agents = 2;
}

/*
 * Events no rule reads do not take a tracker: a flood of failed
 * attestations under made-up agent ids (anyone can send one) evicts
 * neither a real agent's history nor its pending denials.
 */
static void
unread_events_do_not_evict_trackers(void **state)
{
	struct fixture *fx = fixture_new(three_denials_two_agents);
	char id[32];

	(void)state;
	feed(fx, invocation("a1", "X"), "new_tool", NULL);
	for (int i = 0; i < 2; i++)
		assert_int_equal(
		    feed_n(fx, denial(AUDIT_TOKEN_DENIED, "a1", AUDIT_REASON_SCOPE_ESCALATION)), 0);
	for (int i = 0; i < 100; i++) {
		struct audit_event *ev = audit_event_new(AUDIT_AGENT_ATTESTATION_FAILED, T0);

		snprintf(id, sizeof(id), "made-up-%d", i);
		assert_int_equal(audit_event_set(ev, AUDIT_F_AGENT_ID, id), IDP_OK);
		assert_int_equal(feed_n(fx, ev), 0);
		ev = audit_event_new(AUDIT_AGENT_ATTESTATION_FAILED, T0);
		assert_int_equal(audit_event_set(ev, AUDIT_F_AGENT_ID, id), IDP_OK);
		audit_alerts_observe(fx->alerts, ev);
		audit_event_free(ev);
	}
	assert_int_equal(audit_alerts_tracked(fx->alerts), 1);
	/* a1's history and its two denials are still there. */
	assert_int_equal(feed_n(fx, invocation("a1", "X")), 0);
	feed(fx, denial(AUDIT_TOKEN_DENIED, "a1", AUDIT_REASON_SCOPE_ESCALATION),
	     "scope_escalation", NULL);
	fixture_free(fx);
}

static void
observe_learns_without_alerting(void **state)
{
	struct fixture *fx = fixture_new(three_events_of_history);
	static const char *const tools[] = {"t1", "t2", "t3", "t4"};

	(void)state;
	for (size_t i = 0; i < 4; i++) {
		struct audit_event *ev = invocation("a1", tools[i]);

		audit_alerts_observe(fx->alerts, ev);
		audit_event_free(ev);
	}
	for (size_t i = 0; i < 4; i++)
		assert_int_equal(feed_n(fx, invocation("a1", tools[i])), 0);
	feed(fx, invocation("a1", "t5"), "new_tool", NULL);
	fixture_free(fx);
}

static void
alerts_and_agentless_events_are_ignored(void **state)
{
	struct fixture *fx = fixture_new(two_items_no_history);
	struct audit_event *ev = audit_event_new(AUDIT_ALERT, T0);

	(void)state;
	/* An alert is never fed back: it neither alerts nor teaches. */
	assert_int_equal(audit_event_set(ev, AUDIT_F_AGENT_ID, "a1"), IDP_OK);
	assert_int_equal(audit_event_set(ev, AUDIT_F_TOOL, "X"), IDP_OK);
	assert_int_equal(audit_event_put_detail(ev, "reason", json_string("chain_revoked")),
	                 IDP_OK);
	assert_int_equal(feed_n(fx, ev), 0);
	/* Without an agent there is nobody to track. */
	ev = audit_event_new(AUDIT_TOOL_INVOCATION, T0);
	assert_int_equal(audit_event_set(ev, AUDIT_F_TOOL, "X"), IDP_OK);
	assert_int_equal(feed_n(fx, ev), 0);
	assert_int_equal(audit_alerts_tracked(fx->alerts), 0);
	feed(fx, invocation("a1", "X"), "new_tool", NULL);
	fixture_free(fx);
}

static void
bad_thresholds_are_refused(void **state)
{
	struct idp_clock clock;
	struct audit_alert_config c;
	struct audit_alerts *a = (struct audit_alerts *)1;
	struct idp_diag d;

	(void)state;
	idp_clock_fixed(&clock, T0);
	audit_alert_config_defaults(&c);
	c.escalation_window_ms = 0;
	c.novelty_max_items = 0;
	c.max_agents = 0;
	c.chain_severity = 11;
	idp_diag_init(&d);
	assert_int_equal(audit_alerts_new(&c, &clock, &a, &d), IDP_EINVAL);
	assert_null(a);
	assert_int_equal(d.count, 4);
}

struct worker {
	struct fixture *fx;
	int id;
	size_t alerts;
};

static void *
work(void *arg)
{
	struct worker *w = arg;
	char agent[16], tool[16];

	snprintf(agent, sizeof(agent), "agent-%d", w->id);
	for (int i = 0; i < 2000; i++) {
		struct audit_event *out[AUDIT_ALERTS_MAX_PER_EVENT];
		struct audit_event *ev;
		size_t n;

		snprintf(tool, sizeof(tool), "tool-%d", i % 50);
		ev = audit_event_new(AUDIT_TOOL_INVOCATION, T0);
		if (audit_event_set(ev, AUDIT_F_AGENT_ID, agent) != IDP_OK ||
		    audit_event_set(ev, AUDIT_F_TOOL, tool) != IDP_OK)
			abort();
		n = audit_alerts_feed(w->fx->alerts, ev, out);
		for (size_t k = 0; k < n; k++)
			audit_event_free(out[k]);
		w->alerts += n;
		audit_event_free(ev);
	}
	return NULL;
}

static void
no_history_many_items(struct audit_alert_config *c)
{
	c->novelty_min_events = 0;
	c->novelty_max_items = 64;
}

static void
concurrent_feeders_see_consistent_state(void **state)
{
	struct fixture *fx = fixture_new(no_history_many_items);
	struct worker w[4];
	pthread_t th[4];

	(void)state;
	for (int i = 0; i < 4; i++) {
		w[i] = (struct worker){fx, i, 0};
		assert_int_equal(pthread_create(&th[i], NULL, work, &w[i]), 0);
	}
	for (int i = 0; i < 4; i++) {
		assert_int_equal(pthread_join(th[i], NULL), 0);
		/* Each agent uses 50 tools, each new exactly once. */
		assert_int_equal(w[i].alerts, 50);
	}
	assert_int_equal(audit_alerts_tracked(fx->alerts), 4);
	fixture_free(fx);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(escalation_raises_one_alert_per_burst),
	    cmocka_unit_test(escalation_counts_only_denials_inside_the_window),
	    cmocka_unit_test(escalation_ignores_a_wall_clock_set_back),
	    cmocka_unit_test(escalation_is_counted_per_agent_and_reason),
	    cmocka_unit_test(escalation_rule_can_be_turned_off),
	    cmocka_unit_test(every_chain_violation_alerts),
	    cmocka_unit_test(new_tool_and_audience_alert_once_history_exists),
	    cmocka_unit_test(least_recently_used_tool_is_forgotten),
	    cmocka_unit_test(tracked_agents_are_bounded),
	    cmocka_unit_test(unread_events_do_not_evict_trackers),
	    cmocka_unit_test(observe_learns_without_alerting),
	    cmocka_unit_test(alerts_and_agentless_events_are_ignored),
	    cmocka_unit_test(bad_thresholds_are_refused),
	    cmocka_unit_test(concurrent_feeders_see_consistent_state),
	};
	return cmocka_run_group_tests_name("audit_alerts", tests, NULL, NULL);
}
