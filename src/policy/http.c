/*
 * http.c - the policy engine's endpoints: the dry run, the OpenID AuthZEN
 * evaluation API for downstream PEPs, the loaded set, and reloads.
 *
 * The engine (struct policy_engine) holds the current set; every request
 * acquires a reference, evaluates on that set and drops it, so a reload
 * never waits for an evaluation and an evaluation never sees half a set.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "idpd/access.h"
#include "idpd/app.h"
#include "idpd/audit_refusal.h"
#include "idpd/audit_writer.h"
#include "idpd/auth.h"
#include "idpd/clock.h"
#include "idpd/log.h"
#include "idpd/policy.h"
#include "idpd/policy_service.h"
#include "idpd/registry.h"
#include "idpd/scope.h"

#define AUTHZEN_MAX_BATCH 64

/*
 * The live context state: per-agent call counters and behavioural
 * baselines, shared by every evaluation of this process (the token service
 * uses the same ones), each bounded and internally locked.
 */
#define CONTEXT_CAPACITY 65536

static struct {
	struct policy_engine *engine;
	struct policy_tz *tz;
	struct policy_counters *counters;
	struct policy_baseline *baseline;
	char *dir;
} P;

static json_t *strings(const char *const *v, size_t n);

/*
 * What an evaluation may change of the live state.  A token request is a
 * call: it is counted for its (agent, resource) pair and teaches the agent's
 * baseline.  An AuthZEN question and a dry run only look.  A question reads
 * the count and the baseline, so its answer is the one a token request would
 * get, but changes neither: the token service reads both, and a key may ask
 * about any agent, and a key without audiences about any resource id.
 * Counted questions would let it raise an agent's count for a resource until
 * the volume rule holds its tokens there for a human, or fill the counter
 * table with made-up resource ids until new pairs' counts are unknown and
 * that rule fails closed for every agent; taught, they would raise (denied
 * questions) or lower (asking a scope makes it "seen") the agent's risk
 * for every resource.  The exception is USE_PEP_CALL: a question from a key
 * bound to audiences, about one of them (anything else was refused), is that
 * resource server reporting a call made to it, and counts for that pair, as
 * the volume rule needs; it still teaches nothing.  Such a key can raise
 * counts for its own resources only, and holds at most one entry per
 * registered agent and audience (an unknown agent is answered unevaluated).
 */
enum use { USE_DRY_RUN, USE_QUESTION, USE_PEP_CALL, USE_REQUEST };

static const char *
slot_str(const struct policy_input *in, enum policy_attr a)
{
	return policy_input_has(in, a) ? in->slot[a].s : NULL;
}

/*
 * Fill what the caller left out of context: the local time, the agent's
 * calls to this resource in the last minute, and its risk score.  A token
 * request, or a question from the resource's own server (USE_PEP_CALL),
 * counts as a call of the agent to the resource; another question or a dry
 * run reads the count without creating or raising an entry.
 * Values the caller gave are kept: a dry run may ask "what if".
 */
static void
fill_context(struct policy_input *in, enum use use, int64_t now)
{
	bool counts = use == USE_REQUEST || use == USE_PEP_CALL;
	const char *agent = slot_str(in, POLICY_ATTR_AGENT_ID);
	const char *resource = slot_str(in, POLICY_ATTR_RESOURCE_AUDIENCE);
	bool has_scopes = policy_input_has(in, POLICY_ATTR_REQUEST_SCOPES);

	if (resource == NULL)
		resource = slot_str(in, POLICY_ATTR_REQUEST_AUDIENCE);
	/* Each of the time attributes the caller left out, from one reading. */
	if (P.tz != NULL && (!policy_input_has(in, POLICY_ATTR_CONTEXT_HOUR) ||
	                     !policy_input_has(in, POLICY_ATTR_CONTEXT_MINUTE) ||
	                     !policy_input_has(in, POLICY_ATTR_CONTEXT_WEEKDAY))) {
		struct policy_localtime lt;

		policy_tz_local(P.tz, now, &lt);
		if (!policy_input_has(in, POLICY_ATTR_CONTEXT_HOUR))
			(void)policy_input_set_int(in, POLICY_ATTR_CONTEXT_HOUR, lt.hour);
		if (!policy_input_has(in, POLICY_ATTR_CONTEXT_MINUTE))
			(void)policy_input_set_int(in, POLICY_ATTR_CONTEXT_MINUTE, lt.minute);
		if (!policy_input_has(in, POLICY_ATTR_CONTEXT_WEEKDAY))
			(void)policy_input_set_int(in, POLICY_ATTR_CONTEXT_WEEKDAY, lt.weekday);
	}
	/* A question or a dry run sees the count with the call it asks about
	 * in it, as the token request it stands for would, so all three answer
	 * the same question the same way. */
	/* Counted on the monotonic clock, so a wall clock step neither empties
	 * nor stretches the minute.  An unknown count (the table is full of
	 * live entries) leaves the attribute missing: a rule on it fails closed. */
	if (!policy_input_has(in, POLICY_ATTR_CONTEXT_CALLS) && agent != NULL && resource != NULL) {
		int64_t mono = idp_mono_us() / 1000;
		uint32_t n = counts ? policy_counters_hit(P.counters, agent, resource, mono)
		                    : policy_counters_get(P.counters, agent, resource, mono);

		if (n != POLICY_COUNT_UNKNOWN)
			(void)policy_input_set_int(in, POLICY_ATTR_CONTEXT_CALLS,
			                           (int64_t)n + (counts ? 0 : 1));
	}
	if (!policy_input_has(in, POLICY_ATTR_CONTEXT_RISK) && agent != NULL)
		(void)policy_input_set_int(
		    in, POLICY_ATTR_CONTEXT_RISK,
		    policy_baseline_score(
		        P.baseline, agent,
		        has_scopes ? in->slot[POLICY_ATTR_REQUEST_SCOPES].list.v : NULL,
		        has_scopes ? in->slot[POLICY_ATTR_REQUEST_SCOPES].list.n : 0, resource, now,
		        NULL));
}

/* Teach the baseline what a token request did and how it ended. */
static void
learn(const struct policy_input *in, bool denied, int64_t now)
{
	const char *agent = slot_str(in, POLICY_ATTR_AGENT_ID);
	const char *resource = slot_str(in, POLICY_ATTR_RESOURCE_AUDIENCE);
	bool has_scopes = policy_input_has(in, POLICY_ATTR_REQUEST_SCOPES);

	if (agent == NULL)
		return;
	if (resource == NULL)
		resource = slot_str(in, POLICY_ATTR_REQUEST_AUDIENCE);
	policy_baseline_record(
	    P.baseline, agent, has_scopes ? in->slot[POLICY_ATTR_REQUEST_SCOPES].list.v : NULL,
	    has_scopes ? in->slot[POLICY_ATTR_REQUEST_SCOPES].list.n : 0, resource, denied, now);
}

/*
 * The core every entry point shares: on the current set (returned with a
 * reference the caller drops), fill the context, evaluate and, for a token
 * request only, learn.  NULL when no set is loaded.
 */
static struct policy_set *
decide(struct policy_input *in, enum use use, struct policy_decision *d)
{
	int64_t now = idp_now_ms(idp_clock_system());
	struct policy_set *set = policy_engine_acquire(P.engine);

	if (set == NULL)
		return NULL;
	fill_context(in, use, now);
	policy_eval(set, in, d);
	if (use == USE_REQUEST)
		learn(in, d->effect == POLICY_DENY, now);
	return set;
}

/* decide() on a parsed input: the decision as JSON with policy_hash, or NULL (no set). */
static json_t *
decide_doc(struct policy_input_doc *doc, enum use use)
{
	struct policy_decision d;
	struct policy_set *set = decide(policy_input_doc_input(doc), use, &d);
	json_t *out;

	if (set == NULL)
		return NULL;
	/* The decision points into the set: turn it into JSON while it is held. */
	out = policy_decision_json(&d);
	json_object_set_new(out, "policy_hash", json_string(policy_set_hash(set)));
	policy_set_unref(set);
	return out;
}

int
policy_service_decide(const json_t *input, bool live, json_t **out, struct idp_diag *diag)
{
	struct policy_json_opts jo = {NULL, P.tz, false};
	struct policy_input_doc *doc = NULL;

	*out = NULL;
	if (policy_input_from_json(input, &jo, &doc, diag) != IDP_OK)
		return IDP_EUNPROCESSABLE;
	*out = decide_doc(doc, live ? USE_REQUEST : USE_DRY_RUN);
	policy_input_doc_free(doc);
	return *out != NULL ? IDP_OK : IDP_EUNAVAIL;
}

/* Copy what an outcome keeps of d (pointing into the set and the input) into one block. */
static void
outcome_copy(const struct policy_decision *d, struct policy_outcome *o)
{
	size_t need = strlen(d->reason) + 1, used = 0;
	bool cond = d->effect == POLICY_ALLOW_WITH_CONDITIONS;

	for (size_t i = 0; i < d->n_matches; i++)
		if (d->matches[i].applied)
			need += strlen(policy_rule_id(d->matches[i].rule)) + 1;
	for (size_t i = 0; cond && d->cond.narrowed && i < d->cond.n_scopes; i++)
		need += strlen(d->cond.scopes[i]) + 1;
	o->text = idp_xmalloc(need);
#define OUTCOME_PUT(dst, src)                                                                      \
	do {                                                                                       \
		size_t n_ = strlen(src) + 1;                                                       \
		memcpy(o->text + used, (src), n_);                                                 \
		(dst) = o->text + used;                                                            \
		used += n_;                                                                        \
	} while (0)
	o->effect = d->effect;
	OUTCOME_PUT(o->reason, d->reason);
	for (size_t i = 0; i < d->n_matches; i++)
		if (d->matches[i].applied)
			OUTCOME_PUT(o->rules[o->n_rules++], policy_rule_id(d->matches[i].rule));
	if (cond) {
		o->has_conditions = true;
		o->has_max_ttl = d->cond.has_max_ttl;
		o->max_ttl = d->cond.max_ttl;
		o->enhanced_logging = d->cond.enhanced_logging;
		o->narrowed = d->cond.narrowed;
		for (size_t i = 0; o->narrowed && i < d->cond.n_scopes; i++)
			OUTCOME_PUT(o->scopes[o->n_scopes++], d->cond.scopes[i]);
	}
#undef OUTCOME_PUT
}

int
policy_service_decide_input(struct policy_input *in, bool live, struct policy_outcome *out,
                            struct idp_diag *diag)
{
	struct policy_decision d;
	struct policy_set *set;

	memset(out, 0, sizeof(*out));
	if (policy_input_validate(in, diag) != IDP_OK)
		return IDP_EUNPROCESSABLE;
	policy_input_derive_action_class(in, NULL);
	set = decide(in, live ? USE_REQUEST : USE_DRY_RUN, &d);
	if (set == NULL)
		return IDP_EUNAVAIL;
	outcome_copy(&d, out);
	policy_set_unref(set);
	return IDP_OK;
}

void
policy_outcome_cleanup(struct policy_outcome *o)
{
	free(o->text);
	memset(o, 0, sizeof(*o));
}

json_t *
policy_outcome_rules_json(const struct policy_outcome *o)
{
	return strings(o->rules, o->n_rules);
}

json_t *
policy_outcome_conditions_json(const struct policy_outcome *o)
{
	json_t *c;

	if (!o->has_conditions)
		return NULL;
	c = json_object();
	if (o->has_max_ttl)
		json_object_set_new(c, "max_ttl", json_integer((json_int_t)o->max_ttl));
	if (o->narrowed)
		json_object_set_new(c, "scopes", strings(o->scopes, o->n_scopes));
	json_object_set_new(c, "enhanced_logging", json_boolean(o->enhanced_logging));
	return c;
}

static void audit_evaluated(struct http_req *req, const struct auth_principal *who,
                            const char *kind, const struct policy_input *in, const json_t *full);

/* POST /v1/policy/evaluate: the full input in, the full decision out. */
static void
dry_run(struct http_req *req, void *ctx)
{
	const struct policy_json_opts jo = {NULL, P.tz, false};
	struct policy_input_doc *doc = NULL;
	struct auth_principal who;
	struct idp_diag diag;
	json_t *body, *out;

	(void)ctx;
	if (!auth_require(req, IDPD_ROLE_AUDITOR, &who) || !http_req_query_only(req, NULL))
		return;
	body = http_req_json_object(req);
	if (body == NULL)
		return;
	idp_diag_init(&diag);
	if (policy_input_from_json(body, &jo, &doc, &diag) != IDP_OK) {
		json_decref(body);
		http_reply_problem(req, 422, "unprocessable",
		                   json_pack("{s:o}", "errors", http_diag_lines(&diag)),
		                   "the input does not fit the policy input model");
		return;
	}
	json_decref(body);
	out = decide_doc(doc, USE_DRY_RUN);
	if (out == NULL) {
		policy_input_doc_free(doc);
		http_reply_error(req, IDP_EUNAVAIL, "no policy set is loaded");
		return;
	}
	audit_evaluated(req, &who, "dry_run", policy_input_doc_input(doc), out);
	policy_input_doc_free(doc);
	http_reply_json(req, 200, out);
}

static json_t *
strings(const char *const *v, size_t n)
{
	json_t *a = json_array();

	for (size_t i = 0; i < n; i++)
		json_array_append_new(a, json_string(v[i]));
	return a;
}

json_t *
policy_agent_json(const struct registry_agent *a)
{
	json_t *o = json_object(), *labels = json_object(), *approval = json_array();

	json_object_set_new(o, "id", json_string(a->id));
	json_object_set_new(o, "type", json_string(a->agent_type));
	if (a->agent_version != NULL)
		json_object_set_new(o, "version", json_string(a->agent_version));
	if (a->model != NULL)
		json_object_set_new(o, "model", json_string(a->model));
	if (a->deployment != NULL)
		json_object_set_new(o, "deployment", json_string(a->deployment));
	json_object_set_new(o, "owner", json_string(a->owner));
	if (a->team != NULL)
		json_object_set_new(o, "team", json_string(a->team));
	json_object_set_new(o, "status", json_string(registry_status_name(a->status)));
	if (a->environment != NULL)
		json_object_set_new(o, "environment", json_string(a->environment));
	json_object_set_new(o, "capabilities", strings(a->capabilities, a->n_capabilities));
	json_object_set_new(o, "delegate_to", strings(a->delegate_to, a->n_delegate_to));
	json_object_set_new(o, "domains", strings(a->domains, a->n_domains));
	json_object_set_new(o, "max_chain_depth", json_integer(a->max_chain_depth));
	for (int c = IDP_ACTION_READ; c <= IDP_ACTION_ADMIN; c++)
		if (a->requires_human_approval_for & (1u << c))
			json_array_append_new(
			    approval, json_string(idp_action_class_name((enum idp_action_class)c)));
	json_object_set_new(o, "requires_human_approval_for", approval);
	for (size_t i = 0; i < a->n_labels; i++)
		json_object_set_new(labels, a->labels[i].key, json_string(a->labels[i].value));
	json_object_set_new(o, "labels", labels);
	return o;
}

/*
 * AuthZEN subject/action/resource/context -> the policy input shape:
 * subject.id -> agent.* from the registry; action.name ->
 * request.scopes [name], action.properties -> request.*; resource.id ->
 * resource.audience (and request.audience), resource.properties ->
 * resource.* (the PEP describes its own resource); context -> context.*,
 * without what only idpd may know (time, calls, risk, approval), and with
 * context.delegation moved to the delegation section (absent: depth 0).
 */
/* The registry's answer for one evaluation's subject. */
struct subject {
	const struct registry_agent *ra; /* a reference, or NULL */
	int rc;                          /* registry_lookup's */
};

static void
subjects_free(struct subject *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		registry_agent_unref(s[i].ra);
}

/*
 * The subjects of n evaluations, all looked up before any is evaluated.
 * From an I/O thread, a subject only PostgreSQL can answer moves the whole
 * request to the handler pool (false: the deferral was granted; return),
 * so the I/O thread never waits and no evaluation is made (and logged)
 * twice.  In the one step of registry_lookup, so a cache refresh cannot
 * slip between a check and the read.
 */
static bool
lookup_subjects(struct http_req *req, json_t *const *subjects, size_t n, struct subject *out)
{
	bool may_block = http_req_may_wait(req);

	for (size_t i = 0; i < n; i++) {
		const char *id = json_string_value(json_object_get(subjects[i], "id"));

		out[i].ra = NULL;
		out[i].rc = id != NULL ? registry_lookup(id, may_block, &out[i].ra) : IDP_EINVAL;
		if (out[i].rc == IDP_EWOULDBLOCK) {
			subjects_free(out, i);
			if (http_req_defer(req))
				return false;
			/* Not granted (the server is stopping): read them, waiting. */
			may_block = true;
			i = (size_t)-1;
		}
	}
	return true;
}

/* jansson's reference counts make even a read-only update take json_t *. */
static json_t *
authzen_to_input(json_t *subject, const struct subject *who, json_t *action, json_t *resource,
                 json_t *context, const char **why, int *status)
{
	json_t *in = json_object(), *agent = json_object(), *request = json_object(),
	       *res = json_object(), *ctx = json_object();
	const char *s;

	*why = NULL;
	if (!json_is_object(subject) || !json_is_string(json_object_get(subject, "id")) ||
	    !json_is_string(json_object_get(subject, "type")))
		*why = "subject.type and subject.id are required";
	/* The subjects idpd decides for are its agents; a PEP asking about a
	 * user or a group would get an answer about a namesake agent. */
	else if (strcmp(json_string_value(json_object_get(subject, "type")), "agent") != 0)
		*why = "subject.type must be \"agent\"";
	else if (!json_is_object(action) || !json_is_string(json_object_get(action, "name")))
		*why = "action.name is required";
	else if (!json_is_object(resource) || !json_is_string(json_object_get(resource, "id")) ||
	         !json_is_string(json_object_get(resource, "type")))
		*why = "resource.type and resource.id are required";
	else if (context != NULL && !json_is_object(context))
		*why = "context must be an object";
	if (*why != NULL)
		goto fail;
	/*
	 * Who the agent is and what it may do come from the registry, never
	 * from the PEP: a caller could otherwise claim any capability for any
	 * id.  An id the registry does not know is refused; subject.properties
	 * is ignored.
	 */
	if (who->rc == IDP_EUNAVAIL) {
		*why = "the registry cannot be read";
		*status = 503;
		goto fail;
	}
	if (who->rc != IDP_OK) {
		*why = "unknown agent";
		*status = 404;
		goto fail;
	}
	json_decref(agent);
	agent = policy_agent_json(who->ra);
	if (json_is_object(json_object_get(action, "properties")))
		json_object_update(request, json_object_get(action, "properties"));
	/* What the request is comes from action.name and resource.id alone: a
	 * PEP may not call a destructive scope a read, nor name another
	 * audience.  Nor may it name the human or the task: the token path
	 * takes both from a verified task, and a rule trusting them (a task's
	 * owner may do more) must not be satisfied by a PEP's say-so. */
	json_object_del(request, "action_class");
	json_object_del(request, "audience");
	json_object_del(request, "human");
	json_object_del(request, "task_id");
	json_object_set_new(request, "scopes", json_pack("[O]", json_object_get(action, "name")));
	s = json_string_value(json_object_get(resource, "id"));
	/* A resource idpd knows ([[resources]]) is as configured and nothing
	 * else, whatever the PEP says of it: the billing API cannot be asked
	 * about as public, nor given an environment it is not configured with. */
	{
		json_t *known = access_resource_json(s);

		if (known != NULL) {
			json_decref(res);
			res = known;
		} else if (json_is_object(json_object_get(resource, "properties"))) {
			json_object_update(res, json_object_get(resource, "properties"));
		}
	}
	json_object_set_new(res, "audience", json_string(s));
	json_object_set_new(request, "audience", json_string(s));
	if (context != NULL)
		json_object_update(ctx, context);
	/* The clock, the call counters, the risk score and approvals are
	 * idpd's own knowledge: a PEP cannot supply them. */
	json_object_del(ctx, "time");
	json_object_del(ctx, "hour");
	json_object_del(ctx, "minute");
	json_object_del(ctx, "weekday");
	json_object_del(ctx, "calls_last_minute");
	json_object_del(ctx, "risk");
	json_object_del(ctx, "approval");
	/* A PEP asking about a direct call sends no chain: depth 0.  One that
	 * knows the chain passes it as context.delegation. */
	if (json_is_object(json_object_get(ctx, "delegation"))) {
		json_object_set(in, "delegation", json_object_get(ctx, "delegation"));
		json_object_del(ctx, "delegation");
	} else {
		json_object_set_new(
		    in, "delegation",
		    json_pack("{s:i,s:[],s:i}", "depth", 0, "chain", "approvals", 0));
	}
	json_object_set_new(in, "agent", agent);
	json_object_set_new(in, "request", request);
	json_object_set_new(in, "resource", res);
	json_object_set_new(in, "context", ctx);
	return in;
fail:
	json_decref(agent);
	json_decref(request);
	json_decref(res);
	json_decref(ctx);
	json_decref(in);
	return NULL;
}

/* Whether the scope conditions of a full decision keep asked itself. */
static bool
conditions_keep(const json_t *full, const char *asked)
{
	const json_t *scopes = json_object_get(json_object_get(full, "conditions"), "scopes");
	size_t i;
	json_t *v;

	if (scopes == NULL)
		return true; /* not narrowed: the asked action stands */
	if (asked == NULL)
		return false;
	json_array_foreach(scopes, i, v)
	{
		if (json_is_string(v) && strcmp(json_string_value(v), asked) == 0)
			return true;
	}
	return false;
}

/*
 * {decision: bool, context: {reason, ...}} from a full decision on the
 * asked action.  A PEP reads true as "yes, this action": so an
 * ALLOW_WITH_CONDITIONS whose scope conditions put other scopes in the
 * asked one's place ("ec2:*" narrowed to "ec2:Describe*") is false, with
 * the decision and its conditions in the context for a PEP that can use them.
 */
static json_t *
authzen_answer(const json_t *full, const char *asked)
{
	const char *d = json_string_value(json_object_get(full, "decision"));
	bool allow = d != NULL &&
	             (strcmp(d, "ALLOW") == 0 ||
	              (strcmp(d, "ALLOW_WITH_CONDITIONS") == 0 && conditions_keep(full, asked)));
	json_t *ctx = json_pack("{s:O*,s:O*,s:O*}", "reason", json_object_get(full, "reason"),
	                        "idpd_decision", json_object_get(full, "decision"), "rules",
	                        json_object_get(full, "rules"));

	if (json_object_get(full, "conditions") != NULL)
		json_object_set(ctx, "conditions", json_object_get(full, "conditions"));
	return json_pack("{s:b,s:o}", "decision", allow, "context", ctx);
}

/*
 * A decided evaluation as a policy.evaluated event, queued without waiting
 * (a flood of questions may neither slow the answers nor fill the queue):
 * who asked about whom, what, and what the policy said.
 */
static void
audit_evaluated(struct http_req *req, const struct auth_principal *who, const char *kind,
                const struct policy_input *in, const json_t *full)
{
	struct audit_event *ev = audit_event_new(AUDIT_POLICY_EVALUATED, AUDIT_TIME_UNSET);
	const char *agent = slot_str(in, POLICY_ATTR_AGENT_ID);
	const char *aud = slot_str(in, POLICY_ATTR_RESOURCE_AUDIENCE);
	const char *peer = http_req_peer(req);
	json_t *scopes = policy_input_has(in, POLICY_ATTR_REQUEST_SCOPES)
	                     ? strings(in->slot[POLICY_ATTR_REQUEST_SCOPES].list.v,
	                               in->slot[POLICY_ATTR_REQUEST_SCOPES].list.n)
	                     : json_array();

	if (ev == NULL) {
		json_decref(scopes);
		return;
	}
	audit_event_set_outcome(ev, AUDIT_OUTCOME_SUCCESS);
	if (audit_event_set_actor(ev, AUDIT_ACTOR_OPERATOR, who->name) != IDP_OK ||
	    audit_event_set(ev, AUDIT_F_REQUEST_ID, http_req_id(req)) != IDP_OK ||
	    (peer[0] != '\0' && audit_event_set(ev, AUDIT_F_SOURCE_ADDRESS, peer) != IDP_OK) ||
	    (agent != NULL && audit_event_set(ev, AUDIT_F_AGENT_ID, agent) != IDP_OK) ||
	    audit_event_put_detail(ev, "kind", json_string(kind)) != IDP_OK ||
	    audit_event_put_detail(ev, "resource", aud != NULL ? json_string(aud) : json_null()) !=
	        IDP_OK ||
	    audit_event_put_detail(ev, "scopes", json_incref(scopes)) != IDP_OK ||
	    audit_event_put_detail(ev, "decision",
	                           json_incref(json_object_get(full, "decision"))) != IDP_OK ||
	    audit_event_put_detail(ev, "rules", json_incref(json_object_get(full, "rules"))) !=
	        IDP_OK ||
	    audit_event_put_detail(ev, "policy_hash",
	                           json_incref(json_object_get(full, "policy_hash"))) != IDP_OK) {
		json_decref(scopes);
		audit_event_free(ev);
		return;
	}
	json_decref(scopes);
	if (audit_emit_nowait(ev) != IDP_OK)
		log_debug("policy: an evaluation was not recorded (audit queue full)");
}

/* One AuthZEN evaluation made ready: its input checked, nothing evaluated yet. */
struct prepared {
	struct policy_input_doc *doc; /* NULL when the answer needs no evaluation */
	json_t *answer;               /* that answer (an unknown agent), owned */
	json_t *asked;                /* with it, {subject, resource, scope} asked, owned */
};

static void
prepared_free(struct prepared *p, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		policy_input_doc_free(p[i].doc);
		json_decref(p[i].answer);
		json_decref(p[i].asked);
	}
}

/*
 * The answer about an agent the registry does not know, recorded as a
 * policy.evaluated event like any other (queued without waiting): a PEP
 * probing for agent ids leaves a trace.  The ids asked about are request
 * text, echoed clipped.
 */
static void
audit_unknown_agent(struct http_req *req, const struct auth_principal *who, const json_t *asked)
{
	struct audit_event *ev = audit_event_new(AUDIT_POLICY_EVALUATED, AUDIT_TIME_UNSET);
	const char *peer = http_req_peer(req);
	const char *scope = json_string_value(json_object_get(asked, "scope"));

	if (ev == NULL)
		return;
	audit_event_set_outcome(ev, AUDIT_OUTCOME_SUCCESS);
	if (audit_event_set_actor(ev, AUDIT_ACTOR_OPERATOR, who->name) != IDP_OK ||
	    audit_event_set(ev, AUDIT_F_REQUEST_ID, http_req_id(req)) != IDP_OK ||
	    (peer[0] != '\0' && audit_event_set(ev, AUDIT_F_SOURCE_ADDRESS, peer) != IDP_OK) ||
	    audit_event_put_detail(ev, "kind", json_string("authzen")) != IDP_OK ||
	    audit_event_put_detail(
	        ev, "subject",
	        audit_json_clip(json_string_value(json_object_get(asked, "subject")), 256)) !=
	        IDP_OK ||
	    audit_event_put_detail(
	        ev, "resource",
	        audit_json_clip(json_string_value(json_object_get(asked, "resource")), 512)) !=
	        IDP_OK ||
	    audit_event_put_detail(ev, "scopes", json_pack("[o]", audit_json_clip(scope, 512))) !=
	        IDP_OK ||
	    audit_event_put_detail(ev, "decision", json_string("DENY")) != IDP_OK ||
	    audit_event_put_detail(ev, "reason", json_string("unknown agent")) != IDP_OK ||
	    audit_event_put_detail(ev, "rules", json_array()) != IDP_OK) {
		audit_event_free(ev);
		return;
	}
	if (audit_emit_nowait(ev) != IDP_OK)
		log_debug("policy: an evaluation was not recorded (audit queue full)");
}

/*
 * Build one evaluation's input.  200 with *p, or the status of the
 * request's refusal (400, 403, 422, 503) with *why or diag.  Pure: a batch
 * is prepared whole before any of it is evaluated, so a bad item answers
 * and records nothing.  Unknown members are ignored (AuthZEN 10.1.1);
 * those the policy input model knows must still fit it.
 */
static int
authzen_prepare(const struct auth_principal *caller, json_t *subject, const struct subject *who,
                json_t *action, json_t *resource, json_t *context, struct prepared *p,
                const char **why, struct idp_diag *diag)
{
	const struct policy_json_opts jo = {NULL, P.tz, true};
	const char *rid = json_string_value(json_object_get(resource, "id"));
	int status = 400;
	json_t *in;

	memset(p, 0, sizeof(*p));
	/* A key bound to audiences asks about its own resources only: it may
	 * not learn another's answers (nor, through them, the agent's calls
	 * there).  The id is one audience, matched whole: "billing-api x" is
	 * not x. */
	if (rid != NULL && !auth_resource_allowed(caller, rid)) {
		*why = "this key may not ask about that resource (api_keys[].audiences)";
		return 403;
	}
	in = authzen_to_input(subject, who, action, resource, context, why, &status);
	if (in == NULL) {
		if (status != 404)
			return status;
		/* AuthZEN: a decision, not an error, for an unknown subject. */
		p->answer =
		    json_pack("{s:b,s:{s:s}}", "decision", 0, "context", "reason", "unknown agent");
		p->asked = json_pack("{s:O,s:O,s:O}", "subject", json_object_get(subject, "id"),
		                     "resource", json_object_get(resource, "id"), "scope",
		                     json_object_get(action, "name"));
		return 200;
	}
	if (policy_input_from_json(in, &jo, &p->doc, diag) != IDP_OK) {
		json_decref(in);
		*why = "the input does not fit the policy input model";
		return 422;
	}
	json_decref(in);
	return 200;
}

/*
 * Answer a refused preparation; item is the batch index, or -1.  A 403 (a
 * key asking about a resource not its own) is recorded as auth.failed,
 * as introspection records a token of another audience.
 */
static void
authzen_refuse(struct http_req *req, const struct auth_principal *who, int status, long item,
               const char *why, struct idp_diag *diag)
{
	char at[48] = "";

	if (status == 403)
		audit_refused(req, AUDIT_ACTOR_OPERATOR, who->name, "authzen",
		              "audience_not_allowed");

	if (item >= 0)
		snprintf(at, sizeof(at), "evaluations[%ld]: ", item);
	if (status == 422)
		http_reply_problem(req, 422, "unprocessable",
		                   json_pack("{s:o}", "errors", http_diag_lines(diag)), "%s%s", at,
		                   why);
	else
		http_reply_problem(req, status,
		                   status == 503   ? "unavailable"
		                   : status == 403 ? "forbidden"
		                                   : "bad_request",
		                   NULL, "%s%s", at, why);
}

/*
 * Evaluate a prepared question (the call count and the baseline only read):
 * its AuthZEN answer, or NULL (no policy set).
 */
static json_t *
authzen_decide(struct http_req *req, const struct auth_principal *who, struct prepared *p)
{
	const struct policy_input *in;
	json_t *full, *ans;

	if (p->doc == NULL) {
		audit_unknown_agent(req, who, p->asked);
		return json_incref(p->answer);
	}
	/* A key bound to audiences asks about its own resource (anything else
	 * was a 403): its questions are that resource's calls, and count. */
	full = decide_doc(p->doc, who->audiences[0] != '\0' ? USE_PEP_CALL : USE_QUESTION);
	if (full == NULL)
		return NULL;
	in = policy_input_doc_input(p->doc);
	audit_evaluated(req, who, "authzen", in, full);
	ans = authzen_answer(full, policy_input_has(in, POLICY_ATTR_REQUEST_SCOPES) &&
	                                   in->slot[POLICY_ATTR_REQUEST_SCOPES].list.n == 1
	                               ? in->slot[POLICY_ATTR_REQUEST_SCOPES].list.v[0]
	                               : NULL);
	json_decref(full);
	return ans;
}

/* POST /access/v1/evaluation (AuthZEN 1.0). */
static void
authzen_evaluation(struct http_req *req, void *ctx)
{
	struct auth_principal who;
	struct prepared p;
	struct subject sub;
	struct idp_diag diag;
	const char *why = NULL;
	json_t *body, *subject, *ans;
	int status;

	(void)ctx;
	if (!auth_require(req, IDPD_ROLE_INTROSPECTOR, &who) || !http_req_query_only(req, NULL))
		return;
	body = http_req_json_object(req);
	if (body == NULL)
		return;
	subject = json_object_get(body, "subject");
	if (!lookup_subjects(req, &subject, 1, &sub)) {
		json_decref(body);
		return;
	}
	idp_diag_init(&diag);
	status = authzen_prepare(&who, subject, &sub, json_object_get(body, "action"),
	                         json_object_get(body, "resource"),
	                         json_object_get(body, "context"), &p, &why, &diag);
	subjects_free(&sub, 1);
	json_decref(body);
	if (status != 200) {
		authzen_refuse(req, &who, status, -1, why, &diag);
		return;
	}
	ans = authzen_decide(req, &who, &p);
	prepared_free(&p, 1);
	if (ans == NULL)
		http_reply_error(req, IDP_EUNAVAIL, "no policy set is loaded");
	else
		http_reply_json(req, 200, ans);
}

/* Member of the item if present, else the request's default. */
static json_t *
pick(json_t *item, json_t *body, const char *key)
{
	json_t *v = json_object_get(item, key);

	return v != NULL ? v : json_object_get(body, key);
}

/* AuthZEN 7.1.2: when a batch stops. */
enum semantic { EXECUTE_ALL, DENY_ON_FIRST_DENY, PERMIT_ON_FIRST_PERMIT };

static bool
semantic_parse(json_t *options, enum semantic *out, const char **why)
{
	json_t *v = json_object_get(options, "evaluations_semantic");
	const char *s = json_string_value(v);

	*out = EXECUTE_ALL;
	if (options == NULL || v == NULL)
		return options == NULL || json_is_object(options) ||
		       (*why = "options must be an object", false);
	if (s != NULL && strcmp(s, "execute_all") == 0)
		return true;
	if (s != NULL && strcmp(s, "deny_on_first_deny") == 0)
		*out = DENY_ON_FIRST_DENY;
	else if (s != NULL && strcmp(s, "permit_on_first_permit") == 0)
		*out = PERMIT_ON_FIRST_PERMIT;
	else
		*why = "options.evaluations_semantic must be execute_all, deny_on_first_deny or "
		       "permit_on_first_permit";
	return *why == NULL;
}

/*
 * POST /access/v1/evaluations: defaults at the top level, overrides per
 * item.  Every item is prepared before any is evaluated; then they are
 * evaluated in order, up to the one that ends the batch under its
 * semantic (the answer then has fewer items than the request).
 */
static void
authzen_evaluations(struct http_req *req, void *ctx)
{
	struct auth_principal who;
	struct subject subs[AUTHZEN_MAX_BATCH];
	struct prepared prep[AUTHZEN_MAX_BATCH];
	json_t *body, *items, *out, *subjects[AUTHZEN_MAX_BATCH] = {NULL};
	json_t *single[1] = {NULL};
	enum semantic sem;
	const char *why = NULL;
	struct idp_diag diag;
	size_t i, n;
	int status = 200;

	(void)ctx;
	if (!auth_require(req, IDPD_ROLE_INTROSPECTOR, &who) || !http_req_query_only(req, NULL))
		return;
	body = http_req_json_object(req);
	if (body == NULL)
		return;
	items = json_object_get(body, "evaluations");
	if (items != NULL &&
	    (!json_is_array(items) || json_array_size(items) > AUTHZEN_MAX_BATCH)) {
		json_decref(body);
		http_reply_problem(req, 400, "bad_request", NULL,
		                   "evaluations must be a list of at most %d items",
		                   AUTHZEN_MAX_BATCH);
		return;
	}
	if (!semantic_parse(json_object_get(body, "options"), &sem, &why)) {
		json_decref(body);
		http_reply_problem(req, 400, "bad_request", NULL, "%s", why);
		return;
	}
	/* Absent or empty (AuthZEN 7.1): the top level is the one evaluation. */
	if (items == NULL || json_array_size(items) == 0) {
		single[0] = json_object();
		items = json_pack("[o]", single[0]);
	} else {
		json_incref(items);
	}
	n = json_array_size(items);
	for (i = 0; i < n; i++) {
		json_t *it = json_array_get(items, i);

		if (!json_is_object(it)) {
			json_decref(items);
			json_decref(body);
			http_reply_problem(req, 400, "bad_request", NULL,
			                   "evaluations[%zu] must be an object", i);
			return;
		}
		subjects[i] = pick(it, body, "subject");
	}
	if (!lookup_subjects(req, subjects, n, subs)) {
		json_decref(items);
		json_decref(body);
		return;
	}
	idp_diag_init(&diag);
	for (i = 0; i < n && status == 200; i++) {
		json_t *it = json_array_get(items, i);

		status = authzen_prepare(&who, subjects[i], &subs[i], pick(it, body, "action"),
		                         pick(it, body, "resource"), pick(it, body, "context"),
		                         &prep[i], &why, &diag);
	}
	subjects_free(subs, n);
	json_decref(items);
	json_decref(body);
	if (status != 200) {
		prepared_free(prep, i - 1);
		authzen_refuse(req, &who, status, (long)(i - 1), why, &diag);
		return;
	}
	out = json_array();
	for (i = 0; i < n; i++) {
		json_t *ans = authzen_decide(req, &who, &prep[i]);
		bool allow;

		if (ans == NULL) {
			json_decref(out);
			prepared_free(prep, n);
			http_reply_error(req, IDP_EUNAVAIL, "no policy set is loaded");
			return;
		}
		allow = json_is_true(json_object_get(ans, "decision"));
		json_array_append_new(out, ans);
		if ((sem == DENY_ON_FIRST_DENY && !allow) ||
		    (sem == PERMIT_ON_FIRST_PERMIT && allow))
			break;
	}
	prepared_free(prep, n);
	http_reply_json(req, 200, json_pack("{s:o}", "evaluations", out));
}

/* identity.issuer, for the metadata's URLs (restart-only). */
static char authzen_issuer[513];

/* GET /.well-known/authzen-configuration: URLs as the OAuth metadata's. */
static void
authzen_metadata(struct http_req *req, void *ctx)
{
	char base[600];

	(void)ctx;
	if (http_req_public_base(req, authzen_issuer, 3600, base, sizeof(base)) != IDP_OK) {
		http_reply_problem(req, 400, "bad_request", NULL, "a Host header is required");
		return;
	}
	http_reply_json(req, 200,
	                json_pack("{s:s,s:s+,s:s+}", "policy_decision_point", base,
	                          "access_evaluation_endpoint", base, "/access/v1/evaluation",
	                          "access_evaluations_endpoint", base, "/access/v1/evaluations"));
}

/* GET /v1/policies */
static void
list_policies(struct http_req *req, void *ctx)
{
	struct auth_principal who;
	struct policy_set *set;

	(void)ctx;
	if (!auth_require(req, IDPD_ROLE_AUDITOR, &who) || !http_req_query_only(req, NULL))
		return;
	set = policy_engine_acquire(P.engine);
	if (set == NULL) {
		http_reply_error(req, IDP_EUNAVAIL, "no policy set is loaded");
		return;
	}
	http_reply_json(req, 200, policy_set_describe(set));
	policy_set_unref(set);
}

/* policy.reload_lock: one reload at a time, so its event and its answer describe its own set. */
static pthread_mutex_t reload_lock = PTHREAD_MUTEX_INITIALIZER;
/*
 * Every read of policy.dir takes the next number before it reads (an API
 * reload under reload_lock, a SIGHUP's check without it); installed is the
 * number of the read in force, under reload_lock.  A SIGHUP's apply
 * installs its set only if no read after its own is in force: the newest
 * read of the files wins, whatever order the two finish in.
 */
static _Atomic uint64_t reads;
static uint64_t installed;

/*
 * Audit the outcome of a load of policy.dir (rc, and set when it is
 * IDP_OK, which this takes), and only then install set: a reload that
 * cannot be audited changes nothing.  IDP_OK with *loaded (a reference the
 * caller drops; may be NULL) the set now in force; IDP_EUNAVAIL when the
 * audit log cannot take the event; rc, with diag, when the files did not
 * load.  On failure the old set stays.  Called with policy.reload_lock held.
 */
static int
publish(struct policy_set *set, int rc, const char *actor_name, enum audit_actor_kind kind,
        const char *request_id, struct idp_diag *diag, struct policy_set **loaded)
{
	struct audit_event *ev;
	int arc = IDP_EINTERNAL;

	if (loaded != NULL)
		*loaded = NULL;
	ev = audit_event_new(AUDIT_POLICY_RELOADED, AUDIT_TIME_UNSET);
	if (ev != NULL) {
		audit_event_set_outcome(ev, rc == IDP_OK ? AUDIT_OUTCOME_SUCCESS
		                                         : AUDIT_OUTCOME_FAILURE);
		if (audit_event_set_actor(ev, kind, actor_name) != IDP_OK ||
		    (request_id != NULL &&
		     audit_event_set(ev, AUDIT_F_REQUEST_ID, request_id) != IDP_OK) ||
		    (rc == IDP_OK &&
		     (audit_event_put_detail(ev, "policy_hash",
		                             json_string(policy_set_hash(set))) != IDP_OK ||
		      audit_event_put_detail(
		          ev, "rules", json_integer((json_int_t)policy_set_rule_count(set))) !=
		          IDP_OK)) ||
		    (rc != IDP_OK &&
		     audit_event_put_detail(ev, "errors", http_diag_lines(diag)) != IDP_OK)) {
			audit_event_free(ev);
			ev = NULL;
		}
	}
	if (ev != NULL)
		arc = audit_emit(ev);
	if (arc != IDP_OK) {
		log_warn("policy: the reload could not be audited; the set in force stays");
		if (rc == IDP_OK) {
			policy_set_unref(set);
			set = NULL;
			idp_diag_add(diag, "the reload cannot be audited now; the old set stays");
			rc = IDP_EUNAVAIL;
		}
	}
	if (rc == IDP_OK) {
		log_info("policy: loaded %zu rule(s) from %s (%s)", policy_set_rule_count(set),
		         P.dir, policy_set_hash(set));
		if (loaded != NULL)
			*loaded = policy_set_ref(set);
		policy_engine_swap(P.engine, set);
	}
	return rc;
}

/* Load policy.dir, then publish() it.  The same contract. */
static int
reload(const char *actor_name, enum audit_actor_kind kind, const char *request_id,
       struct idp_diag *diag, struct policy_set **loaded)
{
	struct policy_set *set = NULL;
	int rc;

	uint64_t n;

	pthread_mutex_lock(&reload_lock);
	n = atomic_fetch_add(&reads, 1) + 1;
	rc = policy_set_load_dir(P.dir, NULL, &set, diag);
	rc = publish(set, rc, actor_name, kind, request_id, diag, loaded);
	if (rc == IDP_OK)
		installed = n;
	pthread_mutex_unlock(&reload_lock);
	return rc;
}

int
policy_service_reload(const char *actor_name, const char *request_id, struct idp_diag *diag,
                      struct policy_set **loaded)
{
	return reload(actor_name, AUDIT_ACTOR_OPERATOR, request_id, diag, loaded);
}

/* POST /v1/policies/reload */
static void
reload_policies(struct http_req *req, void *ctx)
{
	struct auth_principal who;
	struct idp_diag diag;
	struct policy_set *set;
	int rc;

	(void)ctx;
	/* Reloads policy.dir and nothing else: options in a query or body would be ignored. */
	if (!auth_require(req, IDPD_ROLE_ADMIN, &who) || !http_req_query_only(req, NULL) ||
	    !http_req_no_body(req))
		return;
	idp_diag_init(&diag);
	rc = policy_service_reload(who.name, http_req_id(req), &diag, &set);
	if (rc == IDP_EUNAVAIL) {
		http_reply_error(req, IDP_EUNAVAIL,
		                 "the reload cannot be audited now; the old set stays in force");
		return;
	}
	if (rc != IDP_OK) {
		http_reply_problem(req, 422, "unprocessable",
		                   json_pack("{s:o}", "errors", http_diag_lines(&diag)),
		                   "the policy set has errors; the old set stays in force");
		return;
	}
	http_reply_json(req, 200, policy_set_describe(set));
	policy_set_unref(set);
}

/* What a SIGHUP's check staged: the set it compiled, and the number of its read. */
struct sighup_staged {
	struct policy_set *set;
	uint64_t read;
};

static void
sighup_discard(void *staged)
{
	struct sighup_staged *st = staged;

	if (st == NULL)
		return;
	policy_set_unref(st->set);
	free(st);
}

/*
 * A SIGHUP's check: policy.dir is read and compiled here, once; the set
 * waits for the apply, or the reload stops before it changes anything.
 */
static int
sighup_prepare(struct idpd_app *app, const struct idpd_config *next, void **staged,
               struct idp_diag *diag)
{
	struct sighup_staged *st;
	struct policy_set *set = NULL;
	uint64_t n = atomic_fetch_add(&reads, 1) + 1;

	(void)app;
	(void)next;
	*staged = NULL;
	if (policy_set_load_dir(P.dir, NULL, &set, diag) != IDP_OK) {
		idp_diag_add(diag, "policy.dir: %s does not load", P.dir);
		return IDP_EINVAL;
	}
	st = idp_xcalloc(1, sizeof(*st));
	st->set = set;
	st->read = n;
	*staged = st;
	return IDP_OK;
}

/*
 * A SIGHUP's apply: audit and install the set the check compiled, not the
 * files as they are now, so that the policy.reloaded event's hash is that
 * of the rules that were checked and go live.  A set in force from a read
 * of the files that began after the check's (POST /v1/policies/reload)
 * stays; one read before it is replaced, even if installed since.
 */
static int
sighup_commit(struct idpd_app *app, void *staged, struct idp_diag *diag)
{
	struct sighup_staged *st = staged;
	int rc = IDP_OK;

	(void)app;
	pthread_mutex_lock(&reload_lock);
	if (st->read > installed) {
		rc = publish(st->set, IDP_OK, "sighup", AUDIT_ACTOR_SYSTEM, NULL, diag, NULL);
		st->set = NULL;
		if (rc == IDP_OK)
			installed = st->read;
	} else {
		log_warn("policy: a set the API read after the SIGHUP's check stays in force; the "
		         "SIGHUP's older read of %s is not installed",
		         P.dir);
	}
	pthread_mutex_unlock(&reload_lock);
	sighup_discard(st);
	if (rc != IDP_OK)
		idp_diag_add(diag, "policy: the set in force stays, not the one checked");
	return rc;
}

static const struct app_reload_stage sighup_stage = {sighup_prepare, sighup_commit, sighup_discard};

int
policy_service_start(struct idpd_app *app, struct idp_diag *diag)
{
	struct policy_set *set = NULL;

	P.dir = idp_xstrdup(app->cfg->policy.dir);
	if (strcmp(app->cfg->policy.timezone, "UTC") == 0) {
		P.tz = policy_tz_fixed("UTC", 0);
	} else if (policy_tz_load(app->cfg->policy.timezone, NULL, &P.tz, diag) != IDP_OK) {
		idp_diag_add(diag, "policy.timezone: cannot load \"%s\"",
		             app->cfg->policy.timezone);
		return IDP_EINVAL;
	}
	if (policy_set_load_dir(P.dir, NULL, &set, diag) != IDP_OK) {
		idp_diag_add(diag, "policy.dir: %s does not load; not starting", P.dir);
		return IDP_EINVAL;
	}
	P.engine = policy_engine_new();
	P.counters = policy_counters_new(CONTEXT_CAPACITY);
	P.baseline = policy_baseline_new(CONTEXT_CAPACITY, P.tz, NULL);
	log_info("policy: loaded %zu rule(s) from %s (%s)", policy_set_rule_count(set), P.dir,
	         policy_set_hash(set));
	policy_engine_swap(P.engine, set);
	return app_on_reload_staged(&sighup_stage);
}

struct policy_engine *
policy_service_engine(void)
{
	return P.engine;
}

const struct policy_tz *
policy_service_tz(void)
{
	return P.tz;
}

void
policy_service_stop(void)
{
	policy_engine_free(P.engine);
	policy_counters_free(P.counters);
	policy_baseline_free(P.baseline);
	policy_tz_free(P.tz);
	free(P.dir);
	memset(&P, 0, sizeof(P));
}

int
policy_routes(struct http_router *r, struct idpd_app *app)
{
	int rc = 0;

	snprintf(authzen_issuer, sizeof(authzen_issuer), "%s", app->cfg->identity.issuer);
	rc |= http_router_add_ex(r, HTTP_POST, "/v1/policy/evaluate", dry_run, NULL,
	                         HTTP_ROUTE_INLINE);
	rc |= http_router_add_ex(r, HTTP_POST, "/access/v1/evaluation", authzen_evaluation, NULL,
	                         HTTP_ROUTE_INLINE);
	rc |= http_router_add_ex(r, HTTP_POST, "/access/v1/evaluations", authzen_evaluations, NULL,
	                         HTTP_ROUTE_INLINE);
	rc |= http_router_add_ex(r, HTTP_GET, "/.well-known/authzen-configuration",
	                         authzen_metadata, NULL, HTTP_ROUTE_INLINE);
	rc |=
	    http_router_add_ex(r, HTTP_GET, "/v1/policies", list_policies, NULL, HTTP_ROUTE_INLINE);
	/* A reload reads files and waits on the audit commit: off the I/O threads. */
	rc |= http_router_add(r, HTTP_POST, "/v1/policies/reload", reload_policies, NULL);
	return rc == 0 ? IDP_OK : IDP_EINVAL;
}
