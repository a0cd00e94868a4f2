/*
 * alerts.c - the detection rules of audit_alerts.h.
 *
 * Per-agent state sits in a hash table (seeded, so chosen agent ids cannot
 * pile into one bucket) threaded on a recency list for eviction.  A
 * tracker's tools and audiences are a small array kept most recent first;
 * with at most a few dozen entries a linear scan beats anything cleverer.
 */
#include <limits.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/rand.h>

#include "idpd/audit_alerts.h"
#include "idpd/log.h"

#include "audit_int.h"

#define ALERT_ACTOR "alerts"

struct agent {
	char *id;
	struct agent *hnext;       /* hash chain */
	struct agent *prev, *next; /* recency list, most recent first */
	int64_t *denials;          /* ring of the last denial times (idp_elapsed_ms) */
	unsigned ndenials, head;   /* head: the oldest entry once the ring is full */
	int64_t quiet_until;       /* no escalation alert before this (idp_elapsed_ms) */
	unsigned history;          /* tool and audience events seen, saturating */
	char **items;              /* "t:<tool>" / "a:<audience>", most recent first */
	unsigned nitems;
};

struct audit_alerts {
	pthread_mutex_t lock; /* guards everything below */
	struct audit_alert_config cfg;
	const struct idp_clock *clock;
	uint64_t seed;
	struct agent **buckets;
	size_t nbuckets; /* a power of two */
	struct agent *newest, *oldest;
	size_t nagents;
};

void
audit_alert_config_defaults(struct audit_alert_config *c)
{
	c->escalation_threshold = 5;
	c->escalation_window_ms = 10 * 60 * 1000;
	c->escalation_severity = 7;
	c->chain_violation = true;
	c->chain_severity = 8;
	c->novelty = true;
	c->novelty_min_events = 20;
	c->novelty_max_items = 64;
	c->novelty_severity = 5;
	c->max_agents = 10000;
}

static bool
severity_ok(int s)
{
	return s >= 0 && s <= AUDIT_SEVERITY_MAX;
}

int
audit_alerts_new(const struct audit_alert_config *cfg, const struct idp_clock *clock,
                 struct audit_alerts **out, struct idp_diag *diag)
{
	struct audit_alerts *a;
	int rc = IDP_OK;

	*out = NULL;
	if (cfg->escalation_threshold > 1000) {
		idp_diag_add(diag, "audit alerts: escalation_threshold must be 0-1000");
		rc = IDP_EINVAL;
	}
	if (cfg->escalation_window_ms <= 0) {
		idp_diag_add(diag, "audit alerts: escalation_window must be positive");
		rc = IDP_EINVAL;
	}
	if (cfg->novelty_max_items < 1 || cfg->novelty_max_items > 4096) {
		idp_diag_add(diag, "audit alerts: novelty_max_items must be 1-4096");
		rc = IDP_EINVAL;
	}
	if (cfg->max_agents < 1 || cfg->max_agents > 1000000) {
		idp_diag_add(diag, "audit alerts: max_agents must be 1-1000000");
		rc = IDP_EINVAL;
	}
	if (!severity_ok(cfg->escalation_severity) || !severity_ok(cfg->chain_severity) ||
	    !severity_ok(cfg->novelty_severity)) {
		idp_diag_add(diag, "audit alerts: severities must be 0-10");
		rc = IDP_EINVAL;
	}
	if (rc != IDP_OK)
		return rc;
	a = idp_xcalloc(1, sizeof(*a));
	pthread_mutex_init(&a->lock, NULL);
	a->cfg = *cfg;
	a->clock = clock;
	if (RAND_bytes((unsigned char *)&a->seed, sizeof(a->seed)) != 1)
		a->seed = (uint64_t)idp_mono_us(); /* weaker, but the table still works */
	a->nbuckets = 16;
	while (a->nbuckets < cfg->max_agents)
		a->nbuckets *= 2;
	a->buckets = idp_xcalloc(a->nbuckets, sizeof(*a->buckets));
	*out = a;
	return IDP_OK;
}

static void
agent_free(struct agent *g)
{
	for (unsigned i = 0; i < g->nitems; i++)
		free(g->items[i]);
	free(g->items);
	free(g->denials);
	free(g->id);
	free(g);
}

void
audit_alerts_free(struct audit_alerts *a)
{
	struct agent *g, *next;

	if (a == NULL)
		return;
	for (g = a->newest; g != NULL; g = next) {
		next = g->next;
		agent_free(g);
	}
	free(a->buckets);
	pthread_mutex_destroy(&a->lock);
	free(a);
}

size_t
audit_alerts_tracked(struct audit_alerts *a)
{
	size_t n;

	pthread_mutex_lock(&a->lock);
	n = a->nagents;
	pthread_mutex_unlock(&a->lock);
	return n;
}

/* ---- the agent table ---------------------------------------------------- */

/* FNV-1a, started from the table's random seed. */
static size_t
bucket_of(const struct audit_alerts *a, const char *id)
{
	uint64_t h = 0xcbf29ce484222325ULL ^ a->seed;

	for (; *id != '\0'; id++) {
		h ^= (unsigned char)*id;
		h *= 0x100000001b3ULL;
	}
	h ^= h >> 29;
	return (size_t)(h & (a->nbuckets - 1));
}

static void
lru_unlink(struct audit_alerts *a, struct agent *g)
{
	if (g->prev)
		g->prev->next = g->next;
	else
		a->newest = g->next;
	if (g->next)
		g->next->prev = g->prev;
	else
		a->oldest = g->prev;
	g->prev = g->next = NULL;
}

static void
lru_push(struct audit_alerts *a, struct agent *g)
{
	g->next = a->newest;
	g->prev = NULL;
	if (a->newest)
		a->newest->prev = g;
	a->newest = g;
	if (a->oldest == NULL)
		a->oldest = g;
}

static void
evict_oldest(struct audit_alerts *a)
{
	struct agent *g = a->oldest, **pp;

	lru_unlink(a, g);
	for (pp = &a->buckets[bucket_of(a, g->id)]; *pp != g; pp = &(*pp)->hnext)
		;
	*pp = g->hnext;
	a->nagents--;
	agent_free(g);
}

/* The tracker of agent id, created (evicting the least recent) if new; made most recent. */
static struct agent *
agent_get(struct audit_alerts *a, const char *id)
{
	size_t b = bucket_of(a, id);
	struct agent *g;

	for (g = a->buckets[b]; g != NULL; g = g->hnext) {
		if (strcmp(g->id, id) == 0) {
			lru_unlink(a, g);
			lru_push(a, g);
			return g;
		}
	}
	if (a->nagents >= a->cfg.max_agents)
		evict_oldest(a);
	g = idp_xcalloc(1, sizeof(*g));
	g->id = idp_xstrdup(id);
	g->hnext = a->buckets[b];
	a->buckets[b] = g;
	lru_push(a, g);
	a->nagents++;
	return g;
}

/* ---- alert events ------------------------------------------------------- */

static void
copy_str(struct audit_event *to, const struct audit_event *from, enum audit_field f)
{
	if (from->str[f] != NULL)
		to->str[f] = idp_xstrdup(from->str[f]);
}

/* detail.<key> = value; the keys are fixed and never secret-looking. */
static void
put(struct audit_event *ev, const char *key, json_t *value)
{
	if (audit_event_put_detail(ev, key, audit_json_must(value)) != IDP_OK)
		log_error("audit alerts: detail.%s was refused", key);
}

static struct audit_event *
alert_new(struct audit_alerts *a, const struct audit_event *trigger, const char *rule, int severity)
{
	int64_t now = idp_now_ms(a->clock);
	struct audit_event *ev;

	if (now < 0 || now > AUDIT_TIME_MAX)
		now = AUDIT_TIME_UNSET;
	ev = audit_event_new(AUDIT_ALERT, now);
	ev->severity = severity;
	ev->actor_kind = AUDIT_ACTOR_SYSTEM;
	ev->actor_name = idp_xstrdup(ALERT_ACTOR);
	copy_str(ev, trigger, AUDIT_F_AGENT_ID);
	copy_str(ev, trigger, AUDIT_F_AGENT_TYPE);
	copy_str(ev, trigger, AUDIT_F_HUMAN_PRINCIPAL);
	copy_str(ev, trigger, AUDIT_F_TASK_ID);
	copy_str(ev, trigger, AUDIT_F_REQUEST_ID);
	copy_str(ev, trigger, AUDIT_F_INSTANCE_ID);
	if (trigger->chain_len > 0) {
		ev->chain = idp_xcalloc(trigger->chain_len, sizeof(char *));
		for (size_t i = 0; i < trigger->chain_len; i++)
			ev->chain[i] = idp_xstrdup(trigger->chain[i]);
		ev->chain_len = trigger->chain_len;
	}
	put(ev, "rule", json_string(rule));
	put(ev, "trigger_type", json_string(audit_event_type_name(trigger)));
	if (trigger->str[AUDIT_F_ID] != NULL)
		put(ev, "trigger_event_id", json_string(trigger->str[AUDIT_F_ID]));
	return ev;
}

/* ---- the rules ---------------------------------------------------------- */

static bool
is_denial(const struct audit_event *ev)
{
	return ev->type == AUDIT_TOKEN_DENIED || ev->type == AUDIT_DELEGATION_DENIED;
}

/* Record one out-of-capability denial; an alert when the window fills. */
static struct audit_event *
escalation(struct audit_alerts *a, struct agent *g, const struct audit_event *ev)
{
	unsigned n = a->cfg.escalation_threshold, in_window = 0;
	/* Monotonic: a wall clock set back would stretch quiet_until and the
	 * window, and hide the alerts due meanwhile. */
	int64_t now = idp_elapsed_ms(a->clock), since = now - a->cfg.escalation_window_ms;
	struct audit_event *alert;

	if (now < g->quiet_until)
		return NULL;
	if (g->denials == NULL)
		g->denials = idp_xcalloc(n, sizeof(int64_t));
	if (g->ndenials < n) {
		g->denials[(g->head + g->ndenials) % n] = now;
		g->ndenials++;
	} else {
		g->denials[g->head] = now;
		g->head = (g->head + 1) % n;
	}
	for (unsigned i = 0; i < g->ndenials; i++)
		if (g->denials[i] > since)
			in_window++;
	if (in_window < n)
		return NULL;
	g->ndenials = 0;
	g->head = 0;
	g->quiet_until = now + a->cfg.escalation_window_ms;
	alert = alert_new(a, ev, "scope_escalation", a->cfg.escalation_severity);
	put(alert, "denials", json_integer(n));
	put(alert, "window_ms", json_integer(a->cfg.escalation_window_ms));
	return alert;
}

/*
 * Note that agent g used item (kind 't' or 'a'); true if it had not before.
 * The item becomes the most recent; the least recent falls off a full list.
 */
static bool
remember(struct audit_alerts *a, struct agent *g, char kind, const char *name)
{
	size_t nlen = strlen(name);
	char *item;
	unsigned i;

	for (i = 0; i < g->nitems; i++) {
		if (g->items[i][0] == kind && strcmp(g->items[i] + 2, name) == 0)
			break;
	}
	if (i < g->nitems) {
		item = g->items[i];
		memmove(&g->items[1], &g->items[0], i * sizeof(char *));
		g->items[0] = item;
		return false;
	}
	if (g->items == NULL)
		g->items = idp_xcalloc(a->cfg.novelty_max_items, sizeof(char *));
	if (g->nitems == a->cfg.novelty_max_items)
		free(g->items[--g->nitems]);
	item = idp_xmalloc(nlen + 3);
	item[0] = kind;
	item[1] = ':';
	memcpy(item + 2, name, nlen + 1);
	memmove(&g->items[1], &g->items[0], g->nitems * sizeof(char *));
	g->items[0] = item;
	g->nitems++;
	return true;
}

/* What ev shows an agent using, if anything: kind 't' + tool or 'a' + audience. */
static const char *
novelty_item(const struct audit_event *ev, char *kind)
{
	if (ev->type == AUDIT_TOOL_INVOCATION && ev->str[AUDIT_F_TOOL] != NULL) {
		*kind = 't';
		return ev->str[AUDIT_F_TOOL];
	}
	if (ev->type == AUDIT_TOKEN_ISSUED) {
		const char *aud = audit_event_detail_str(ev, "audience");

		/* Bounded like a tool name, so a tracker's memory is bounded too. */
		if (aud != NULL && aud[0] != '\0' && strlen(aud) <= 256) {
			*kind = 'a';
			return aud;
		}
	}
	return NULL;
}

static struct audit_event *
novelty(struct audit_alerts *a, struct agent *g, const struct audit_event *ev, bool raise)
{
	struct audit_event *alert = NULL;
	char kind;
	const char *name = novelty_item(ev, &kind);
	bool experienced;

	if (name == NULL)
		return NULL;
	experienced = g->history >= a->cfg.novelty_min_events;
	if (g->history < UINT_MAX)
		g->history++;
	if (remember(a, g, kind, name) && raise && experienced) {
		alert = alert_new(a, ev, kind == 't' ? "new_tool" : "new_audience",
		                  a->cfg.novelty_severity);
		put(alert, kind == 't' ? "tool" : "audience", json_string(name));
	}
	return alert;
}

static size_t
run(struct audit_alerts *a, const struct audit_event *ev, bool raise,
    struct audit_event *out[AUDIT_ALERTS_MAX_PER_EVENT])
{
	const char *agent_id = ev->str[AUDIT_F_AGENT_ID];
	const char *reason = audit_event_detail_str(ev, "reason");
	struct audit_event *alert;
	struct agent *g = NULL;
	size_t n = 0;
	char kind;
	bool denial, escalates, novel;

	if (ev->type == AUDIT_ALERT || agent_id == NULL)
		return 0;
	/*
	 * Only the events a rule reads get a tracker, or refresh one: denials
	 * and the events that show an agent using a tool or an audience, all
	 * of them made for an authenticated agent.  Any other event naming an
	 * agent (agent.attestation_failed carries whatever id an
	 * unauthenticated caller sent) would otherwise let a flood of made-up
	 * ids evict every real agent's tracker, and with it their history and
	 * their pending denials.
	 */
	denial = raise && is_denial(ev) && reason != NULL;
	escalates = denial && a->cfg.escalation_threshold > 0 &&
	            strcmp(reason, AUDIT_REASON_SCOPE_ESCALATION) == 0;
	novel = a->cfg.novelty && novelty_item(ev, &kind) != NULL;
	if (!denial && !novel)
		return 0;
	pthread_mutex_lock(&a->lock);
	if (escalates || novel)
		g = agent_get(a, agent_id);
	if (denial) {
		if (escalates && (alert = escalation(a, g, ev)) != NULL)
			out[n++] = alert;
		if (a->cfg.chain_violation && strncmp(reason, AUDIT_REASON_CHAIN_PREFIX,
		                                      strlen(AUDIT_REASON_CHAIN_PREFIX)) == 0) {
			alert = alert_new(a, ev, "delegation_violation", a->cfg.chain_severity);
			put(alert, "reason", json_string(reason));
			out[n++] = alert;
		}
	}
	if (novel && (alert = novelty(a, g, ev, raise)) != NULL)
		out[n++] = alert;
	pthread_mutex_unlock(&a->lock);
	return n;
}

size_t
audit_alerts_feed(struct audit_alerts *a, const struct audit_event *ev,
                  struct audit_event *out[AUDIT_ALERTS_MAX_PER_EVENT])
{
	return run(a, ev, true, out);
}

void
audit_alerts_observe(struct audit_alerts *a, const struct audit_event *ev)
{
	struct audit_event *none[AUDIT_ALERTS_MAX_PER_EVENT];

	(void)run(a, ev, false, none);
}
