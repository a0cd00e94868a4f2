/*
 * access.c - POST /v1/token: just-in-time access tokens (docs/tokens.md
 * "Access tokens", DESIGN §7).
 *
 * The checks are the seed's: the agent is registered and active (its
 * credential authenticated it), the audience is a known resource, the
 * delegation token it holds is ours and its own and its chain is live
 * (revocation state: every link unrevoked, the task open), the scope is
 * within its capabilities and within that token (permission diminishment),
 * every agent on the chain is active, and then the policy engine decides
 * with the resource from [[resources]].  The token comes first so that
 * even a refusal names the task, the human and the chain in its event.
 *
 * A presented approval is checked only after every check before the policy
 * has passed, so such a refusal never burns one; the policy then sees
 * context.approval (a DENY after that still stands: an approval lifts
 * REQUIRE_APPROVAL, never a deny).  It is spent once the token is signed,
 * so that a DENY or a failure of idpd's own leaves it for the retry; and a
 * token withheld after that (its event not durable in time) gives it back
 * (access_finish).  The token's lifetime is the
 * smallest of the asked ttl (tokens.default_ttl), tokens.max_ttl, the policy's max_ttl condition,
 * the delegation token's exp, the keys' longest lifetime and the signing key's not-after.  The
 * token names the identity credential that asked for it (identity_jti): revoking that
 * credential ends the token too.
 *
 * Every outcome is audited: token.issued durably before the token goes
 * out (audit.durability "sync"), token.denied best effort (a refusal stands
 * even when its event cannot be written).  last_active is batched
 * (registry_touch), never written per token.
 */
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "idpd/access.h"
#include "idpd/audit_refusal.h"
#include "idpd/agent_auth.h"
#include "idpd/app.h"
#include "idpd/audit_writer.h"
#include "idpd/clock.h"
#include "idpd/config.h"
#include "idpd/delegation.h"
#include "idpd/http.h"
#include "idpd/json_out.h"
#include "idpd/jws.h"
#include "idpd/keys.h"
#include "idpd/log.h"
#include "idpd/policy_service.h"
#include "idpd/registry.h"
#include "idpd/revocation.h"
#include "idpd/scope.h"
#include "idpd/store.h"
#include "idpd/tasks.h"

#define GENERIC_401 "a valid agent credential is required"

/* ---- settings: identity.* are restart-only; the rest follows reloads ---- */

struct resource {
	char *audience, *domain, *classification, *environment;
};

static struct {
	/* access.settings_lock guards everything below it. */
	pthread_rwlock_t lock;
	int64_t default_ttl_ms;
	int64_t max_ttl_ms;
	struct resource *res;
	size_t n_res;
} S = {.lock = PTHREAD_RWLOCK_INITIALIZER};

static struct store *store;
static char issuer[513];
/* Delegation tokens are presented with every request: verify each once per key. */
static struct idp_jws_cache *parent_cache;

static void
resources_free(struct resource *r, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		free(r[i].audience);
		free(r[i].domain);
		free(r[i].classification);
		free(r[i].environment);
	}
	free(r);
}

static void
settings_set(const struct idpd_config *cfg)
{
	struct resource *r =
	    cfg->n_resources > 0 ? idp_xcalloc(cfg->n_resources, sizeof(*r)) : NULL;
	struct resource *old;
	size_t n_old;

	for (size_t i = 0; i < cfg->n_resources; i++) {
		r[i].audience = idp_xstrdup(cfg->resources[i].audience);
		r[i].domain = idp_xstrdup(cfg->resources[i].domain);
		r[i].classification = idp_xstrdup(cfg->resources[i].classification);
		r[i].environment = idp_xstrdup(cfg->resources[i].environment);
	}
	pthread_rwlock_wrlock(&S.lock);
	S.default_ttl_ms = cfg->tokens.default_ttl_ms;
	S.max_ttl_ms = cfg->tokens.max_ttl_ms;
	idp_jws_own_low_s_set(cfg->tokens.require_low_s);
	old = S.res;
	n_old = S.n_res;
	S.res = r;
	S.n_res = cfg->n_resources;
	pthread_rwlock_unlock(&S.lock);
	resources_free(old, n_old);
}

static int
on_reload(struct idpd_app *app, const struct idpd_config *next, void *ctx, struct idp_diag *diag)
{
	(void)app;
	(void)ctx;
	(void)diag;
	settings_set(next);
	return IDP_OK;
}

int
access_init(struct idpd_app *app, struct idp_diag *diag)
{
	store = app->store;
	snprintf(issuer, sizeof(issuer), "%s", app->cfg->identity.issuer);
	settings_set(app->cfg);
	parent_cache = idp_jws_cache_new((size_t)app->cfg->introspection.cache_size);
	if (app_on_reload(on_reload, NULL) != IDP_OK) {
		idp_diag_add(diag, "access: cannot register the reload hook");
		return IDP_EINVAL;
	}
	return IDP_OK;
}

void
access_shutdown(void)
{
	pthread_rwlock_wrlock(&S.lock);
	resources_free(S.res, S.n_res);
	S.res = NULL;
	S.n_res = 0;
	pthread_rwlock_unlock(&S.lock);
	idp_jws_cache_free(parent_cache);
	parent_cache = NULL;
}

/*
 * A copy of the resource aud names (a reload may free the settings'), its
 * strings in one block the caller frees (r->audience), or false if aud is
 * not a resource.
 */
static bool
resource_get(const char *aud, struct resource *r, int64_t *default_ttl_ms, int64_t *max_ttl_ms)
{
	bool found = false;

	memset(r, 0, sizeof(*r));
	pthread_rwlock_rdlock(&S.lock);
	*default_ttl_ms = S.default_ttl_ms;
	*max_ttl_ms = S.max_ttl_ms;
	for (size_t i = 0; i < S.n_res; i++) {
		const struct resource *c = &S.res[i];
		size_t la, ld, lc, le;

		if (strcmp(c->audience, aud) != 0)
			continue;
		la = strlen(c->audience) + 1;
		ld = strlen(c->domain) + 1;
		lc = strlen(c->classification) + 1;
		le = strlen(c->environment) + 1;
		r->audience = idp_xmalloc(la + ld + lc + le);
		r->domain = r->audience + la;
		r->classification = r->domain + ld;
		r->environment = r->classification + lc;
		memcpy(r->audience, c->audience, la);
		memcpy(r->domain, c->domain, ld);
		memcpy(r->classification, c->classification, lc);
		memcpy(r->environment, c->environment, le);
		found = true;
		break;
	}
	pthread_rwlock_unlock(&S.lock);
	return found;
}

json_t *
access_resource_json(const char *aud)
{
	struct resource r;
	int64_t dflt, max;
	json_t *o;

	if (aud == NULL || !resource_get(aud, &r, &dflt, &max))
		return NULL;
	o = json_pack("{s:s,s:s}", "domain", r.domain, "classification", r.classification);
	if (o != NULL && r.environment[0] != '\0')
		json_object_set_new(o, "environment", json_string(r.environment));
	free(r.audience);
	return o;
}

/* ---- one request ---- */

struct issuing {
	const struct access_ask *a;
	struct access_grant *g;
	const struct registry_agent *agent; /* borrowed from a->who */
	struct idp_jws_verified parent;     /* the delegation token presented */
	const char *djti;                   /* its jti */
	const char *task_id;                /* a->task_id, or the delegation token's */
	/* The task the events name: the presented token's own (idpd signed it) or
	 * the task whose root agent asked, never a task_id the request only claims. */
	const char *event_task;
	const char *human;
	const char *chain_hash;
	json_t *act; /* owned */
	json_t *own; /* owned: strings of the root token when none was presented */
	int64_t parent_exp_s;
	struct task_scopes *parent_sc; /* the token's scopes: thread-local storage */
	struct revocation_chain *chain;
	bool approved;
	int top_class; /* the requested scopes' highest action class; -1 until needed */
	char rules[1024];
};

static void
refuse(struct issuing *s, int status, const char *code)
{
	s->g->status = status;
	s->g->code = code;
}

/* A refusal of one requested scope, which the answer names. */
static void
refuse_scope(struct issuing *s, const char *code, const char *scope)
{
	refuse(s, 403, code);
	snprintf(s->g->refused_scope, sizeof(s->g->refused_scope), "%s", scope);
}

static const char *
decision_name(const struct issuing *s)
{
	return s->g->decided ? policy_effect_name(s->g->decision.effect) : NULL;
}

static void
rules_join(struct issuing *s)
{
	const struct policy_outcome *o = &s->g->decision;
	size_t used = 0;

	s->rules[0] = '\0';
	for (size_t i = 0; s->g->decided && i < o->n_rules; i++) {
		int n = snprintf(s->rules + used, sizeof(s->rules) - used, "%s%s", used ? " " : "",
		                 o->rules[i]);

		if (n < 0 || (size_t)n >= sizeof(s->rules) - used) {
			s->rules[used] = '\0';
			break;
		}
		used += (size_t)n;
	}
}

/* The outcome's event, token.issued or token.denied; NULL only on a bug. */
static struct audit_event *
outcome_event(struct issuing *s, bool issued, const char *granted, int64_t exp_s)
{
	const struct access_ask *a = s->a;
	struct audit_event *ev =
	    audit_event_new(issued ? AUDIT_TOKEN_ISSUED : AUDIT_TOKEN_DENIED, AUDIT_TIME_UNSET);
	const char *peer = http_req_peer(a->req);
	const char *dec = decision_name(s);
	json_t *detail;
	enum audit_decision ad = AUDIT_DECISION_NONE;
	int rc = IDP_OK;

	if (ev == NULL)
		return NULL;
	if (dec != NULL && audit_decision_parse(dec, &ad) == IDP_OK)
		audit_event_set_decision(ev, ad);
	audit_event_set_outcome(ev, issued ? AUDIT_OUTCOME_SUCCESS : AUDIT_OUTCOME_DENIED);
	if (audit_event_set(ev, AUDIT_F_TASK_ID, s->event_task) != IDP_OK ||
	    audit_event_set(ev, AUDIT_F_HUMAN_PRINCIPAL, s->human) != IDP_OK ||
	    audit_event_set(ev, AUDIT_F_AGENT_ID, s->agent->id) != IDP_OK ||
	    audit_event_set(ev, AUDIT_F_AGENT_TYPE, s->agent->agent_type) != IDP_OK ||
	    audit_event_set(ev, AUDIT_F_REQUEST_ID, http_req_id(a->req)) != IDP_OK ||
	    (peer[0] != '\0' && audit_event_set(ev, AUDIT_F_SOURCE_ADDRESS, peer) != IDP_OK) ||
	    audit_event_set_actor(ev, AUDIT_ACTOR_AGENT, s->agent->id) != IDP_OK ||
	    (s->rules[0] != '\0' && audit_event_set(ev, AUDIT_F_POLICY_RULE, s->rules) != IDP_OK))
		rc = IDP_EINTERNAL;
	if (rc == IDP_OK && issued &&
	    (audit_event_set(ev, AUDIT_F_TOKEN_ID, s->g->jti) != IDP_OK ||
	     audit_event_set(ev, AUDIT_F_GRANTED_SCOPE, granted) != IDP_OK))
		rc = IDP_EINTERNAL;
	/* The chain: the human, then every agent from the root to this one. */
	if (rc == IDP_OK && s->human != NULL && audit_event_chain_append(ev, s->human) != IDP_OK)
		rc = IDP_EINTERNAL;
	for (size_t i = 0; rc == IDP_OK && s->chain != NULL && i < s->chain->n; i++)
		if (audit_event_chain_append(ev, s->chain->links[i].agent_id) != IDP_OK)
			rc = IDP_EINTERNAL;
	if (rc == IDP_OK && s->chain == NULL &&
	    audit_event_chain_append(ev, s->agent->id) != IDP_OK)
		rc = IDP_EINTERNAL;
	/* detail.reason is the refusal code: the alert rules classify by it. */
	/* identity_jti: which of the agent's credentials asked (a stolen one is traced by it). */
	detail = json_pack("{s:o,s:o,s:o?,s:s?,s:s}", "audience",
	                   audit_json_clip(a->audience, AUDIT_ECHO_MAX), "requested_scope",
	                   audit_json_clip(a->scopes->joined, AUDIT_ECHO_MAX), "stated_reason",
	                   audit_json_clip(a->reason, AUDIT_ECHO_MAX), "delegation_jti", s->djti,
	                   "identity_jti", a->who->cred.jti);
	if (detail != NULL) {
		if (!issued)
			json_object_set_new(detail, "reason", json_string(s->g->code));
		else
			json_object_set_new(detail, "exp", json_integer((json_int_t)exp_s));
		if (s->g->decided) {
			json_object_set_new(detail, "policy_reason",
			                    json_string(s->g->decision.reason));
			if (s->g->decision.has_conditions)
				json_object_set_new(
				    detail, "conditions",
				    policy_outcome_conditions_json(&s->g->decision));
		}
		/* A task the request named but the token does not: kept, as a claim. */
		if (a->task_id != NULL &&
		    (s->event_task == NULL || strcmp(s->event_task, a->task_id) != 0))
			json_object_set_new(detail, "requested_task_id",
			                    audit_json_clip(a->task_id, AUDIT_ECHO_MAX));
		if (s->approved)
			json_object_set_new(detail, "approval_id", json_string(a->approval_id));
		if (s->g->approval_id[0] != '\0')
			json_object_set_new(detail, "approval_requested",
			                    json_string(s->g->approval_id));
	}
	if (rc != IDP_OK || detail == NULL)
		json_decref(detail);
	else if (audit_event_take_detail(ev, detail) != IDP_OK)
		rc = IDP_EINTERNAL;
	if (rc != IDP_OK) {
		log_error("access: bug: cannot build the token event");
		audit_event_free(ev);
		return NULL;
	}
	return ev;
}

/* Verify the presented delegation token: ours, for idpd, unexpired, the caller's, this task's. */
static bool
parent_verify(struct issuing *s)
{
	struct delegation_presented p;
	struct idp_diag d;
	const char *why = NULL;
	int rc = delegation_token_verify(s->a->delegation_token, s->agent->id, parent_cache,
	                                 s->a->may_block, &s->parent, &p, &why);

	/* A key not loaded here yet: read for it on the handler pool. */
	if (rc == IDP_EWOULDBLOCK) {
		s->g->would_block = true;
		return false;
	}
	/* Even a refusal names the task, the human and the chain when the token said them. */
	s->human = p.human;
	s->djti = p.jti;
	s->chain_hash = p.chain_hash;
	s->event_task = p.task_id;
	if (s->a->task_id == NULL)
		s->task_id = p.task_id;
	if (rc != IDP_OK) {
		refuse(s, rc == IDP_EUNAVAIL ? 503 : 403, rc == IDP_EUNAVAIL ? "unavailable" : why);
		return false;
	}
	if (strcmp(p.task_id, s->task_id) != 0) {
		refuse(s, 403, "task_mismatch");
		return false;
	}
	s->parent_exp_s = p.exp_s;
	/* The verified claims are never modified: act is shared, not copied,
	 * unless a token older than the current nesting needs its holder added. */
	s->act = delegation_act_of(p.act, s->agent->id);
	idp_diag_init(&d);
	if (!task_scopes_parse(p.scope, s->parent_sc, &d)) {
		refuse(s, 403, "delegation_token_invalid");
		return false;
	}
	return true;
}

static struct store_stmt st_root = {
    "access_root_token",
    "SELECT d.jti, d.chain_hash, array_to_string(d.scope, ' '), t.human_principal, t.idp,"
    " extract(epoch FROM d.expires_at)::bigint FROM delegation_tokens d JOIN tasks t ON"
    " t.id = d.task_id WHERE d.task_id = $1 AND d.depth = 0 AND t.root_agent = $2",
    2, 0};

/* No delegation token presented: the task's root agent stands on the task's root token. */
static bool
root_token(struct issuing *s)
{
	const char *params[2] = {s->task_id, s->agent->id};
	struct store_conn *c = NULL;
	PGresult *r = NULL;
	struct idp_diag d;
	bool ok = false;

	if (store_acquire(store, &c) != IDP_OK) {
		refuse(s, 503, "unavailable");
		return false;
	}
	if (store_exec(c, &st_root, params, &r) != IDP_OK) {
		refuse(s, 503, "unavailable");
		goto done;
	}
	if (PQntuples(r) != 1) {
		refuse(s, 403, "delegation_token_required");
		goto done;
	}
	s->own =
	    json_pack("{s:s,s:s,s:s,s:s}", "jti", PQgetvalue(r, 0, 0), "chain", PQgetvalue(r, 0, 1),
	              "scope", PQgetvalue(r, 0, 2), "human", PQgetvalue(r, 0, 3));
	/* As the root token's act: the root agent acting, after the human. */
	s->act =
	    json_pack("{s:s,s:s,s:{s:s,s:s,s:s}}", "sub", s->agent->id, "sub_type", "agent", "act",
	              "sub", PQgetvalue(r, 0, 3), "sub_type", "human", "idp", PQgetvalue(r, 0, 4));
	if (s->own == NULL || s->act == NULL) {
		refuse(s, 500, "internal");
		goto done;
	}
	s->djti = json_string_value(json_object_get(s->own, "jti"));
	s->chain_hash = json_string_value(json_object_get(s->own, "chain"));
	s->human = json_string_value(json_object_get(s->own, "human"));
	/* The task exists and the caller is its root agent: it is the caller's task. */
	s->event_task = s->task_id;
	s->parent_exp_s = strtoll(PQgetvalue(r, 0, 5), NULL, 10);
	idp_diag_init(&d);
	if (!task_scopes_parse(json_object_get(s->own, "scope"), s->parent_sc, &d)) {
		refuse(s, 500, "internal");
		goto done;
	}
	ok = true;
done:
	PQclear(r);
	store_release(store, c);
	return ok;
}

/* The highest action class of the requested scopes, computed once into s->top_class. */
static enum idp_action_class
requested_top_class(struct issuing *s)
{
	if (s->top_class < 0) {
		const struct scope_verb_map *vm = scope_verb_map_current();
		enum idp_action_class top = IDP_ACTION_READ;

		for (size_t j = 0; j < s->a->scopes->n; j++) {
			enum idp_action_class k = scope_action_class(vm, s->a->scopes->v[j]);

			if (k > top)
				top = k;
		}
		s->top_class = (int)top;
	}
	return (enum idp_action_class)s->top_class;
}

/*
 * Whether the link from delegator `from` to `to` still stands as from's
 * constraints are now: to is in from's delegate_to, and no requested scope
 * is above from's max_scope_per_delegation.  Refuses s otherwise, with
 * the codes a new delegation is refused with.
 */
static bool
link_ok(struct issuing *s, const struct registry_agent *from, const struct registry_agent *to)
{
	const struct scope_verb_map *vm;

	if (!delegation_may_delegate_to(from, to)) {
		refuse(s, 403, "chain_delegate_not_allowed");
		return false;
	}
	/* Every class is within admin: no need to classify the scopes. */
	if (from->max_scope_per_delegation >= IDP_ACTION_ADMIN ||
	    requested_top_class(s) <= from->max_scope_per_delegation)
		return true;
	vm = scope_verb_map_current();
	for (size_t j = 0; j < s->a->scopes->n; j++) {
		if (scope_action_class(vm, s->a->scopes->v[j]) > from->max_scope_per_delegation) {
			refuse_scope(s, "scope_exceeds_max_per_delegation", s->a->scopes->v[j]);
			return false;
		}
	}
	return true;
}

/*
 * Every agent on the chain is active, its link was made after its
 * revocation epoch, and its capabilities still hold the asked scopes: an
 * agent's authority is the least of its delegators' as they are now, so
 * narrowing one's capabilities reaches the tokens below it at once.  So
 * do its delegation constraints: each link must still be one its
 * delegator may make (link_ok), so taking an agent out of a delegate_to,
 * or lowering a max_scope_per_delegation, reaches what was delegated
 * before too.
 */
static bool
chain_agents_ok(struct issuing *s)
{
	const struct registry_agent *prev = NULL;
	bool ok = false;

	for (size_t i = 0; i < s->chain->n; i++) {
		const struct revocation_link *l = &s->chain->links[i];
		const struct registry_agent *ag = NULL;
		bool live, can = true;
		int rc;

		rc = registry_lookup(l->agent_id, s->a->may_block, &ag);
		if (rc == IDP_EWOULDBLOCK) {
			s->g->would_block = true;
			goto done;
		}
		if (rc == IDP_EUNAVAIL) {
			refuse(s, 503, "unavailable");
			goto done;
		}
		size_t j = 0;

		live = rc == IDP_OK && ag->status == REGISTRY_ACTIVE &&
		       !registry_issued_before_revocation(ag, l->iat_s);
		for (; live && can && j < s->a->scopes->n; j++)
			can = registry_agent_can(ag, s->a->scopes->v[j]);
		if (!live) {
			registry_agent_unref(ag);
			refuse(s, 403, "chain_agent_inactive");
			goto done;
		}
		if (!can) {
			registry_agent_unref(ag);
			refuse_scope(s, "scope_outside_chain_capabilities", s->a->scopes->v[j - 1]);
			goto done;
		}
		if (prev != NULL && !link_ok(s, prev, ag)) {
			registry_agent_unref(ag);
			goto done;
		}
		registry_agent_unref(prev);
		prev = ag;
	}
	ok = true;
done:
	registry_agent_unref(prev);
	return ok;
}

/*
 * The chain's agents, root first, space-separated: what an approval of
 * this request records.  NULL when there is no chain; the caller frees it.
 */
static char *
chain_agents_text(const struct revocation_chain *c)
{
	struct idp_buf b;

	if (c == NULL || c->n == 0)
		return NULL;
	idp_buf_init(&b, 64 * 1024);
	for (size_t i = 0; i < c->n; i++) {
		/* At most 64 ids of 128 bytes: the cap is never reached. */
		if ((i > 0 && idp_buf_putc(&b, ' ') != IDP_OK) ||
		    idp_buf_puts(&b, c->links[i].agent_id) != IDP_OK) {
			idp_buf_cleanup(&b);
			return NULL;
		}
	}
	return idp_buf_take(&b, NULL);
}

/* Room for the lists of one policy input, on the caller's stack. */
#define INPUT_CHAIN_MAX 32
struct input_lists {
	const char *approval_for[IDP_ACTION_COUNT];
	struct policy_kv labels[64];
	struct policy_kv *labels_heap; /* owned: when there are more labels */
	const char *chain[INPUT_CHAIN_MAX];
	const char **chain_heap; /* owned: when the chain is longer */
};

/*
 * The policy input of the seed's step 5: agent, request, resource,
 * delegation, context, with the values policy_agent_json and the JSON
 * reader would give.  Everything is borrowed from s, r and l.  false when a
 * value the input needs is missing.
 */
static bool
policy_input_build(struct issuing *s, const struct resource *r, int64_t ttl_s,
                   struct input_lists *l, struct policy_input *in)
{
	const struct registry_agent *ag = s->agent;
	struct policy_kv *kv = l->labels;
	const char **chain = l->chain;
	size_t n_approval = 0, n_chain = s->chain->n;

	if (s->a->audience == NULL || s->task_id == NULL || s->human == NULL)
		return false;
	policy_input_init(in);
	(void)policy_input_set_str(in, POLICY_ATTR_AGENT_ID, ag->id);
	(void)policy_input_set_str(in, POLICY_ATTR_AGENT_TYPE, ag->agent_type);
	(void)policy_input_set_str(in, POLICY_ATTR_AGENT_VERSION, ag->agent_version);
	(void)policy_input_set_str(in, POLICY_ATTR_AGENT_MODEL, ag->model);
	(void)policy_input_set_str(in, POLICY_ATTR_AGENT_DEPLOYMENT, ag->deployment);
	(void)policy_input_set_str(in, POLICY_ATTR_AGENT_OWNER, ag->owner);
	(void)policy_input_set_str(in, POLICY_ATTR_AGENT_TEAM, ag->team);
	(void)policy_input_set_str(in, POLICY_ATTR_AGENT_STATUS, registry_status_name(ag->status));
	(void)policy_input_set_str(in, POLICY_ATTR_AGENT_ENVIRONMENT, ag->environment);
	(void)policy_input_set_list(in, POLICY_ATTR_AGENT_CAPABILITIES, ag->capabilities,
	                            ag->n_capabilities);
	(void)policy_input_set_list(in, POLICY_ATTR_AGENT_DELEGATE_TO, ag->delegate_to,
	                            ag->n_delegate_to);
	(void)policy_input_set_list(in, POLICY_ATTR_AGENT_DOMAINS, ag->domains, ag->n_domains);
	(void)policy_input_set_int(in, POLICY_ATTR_AGENT_MAX_CHAIN_DEPTH, ag->max_chain_depth);
	for (int c = IDP_ACTION_READ; c <= IDP_ACTION_ADMIN; c++)
		if (ag->requires_human_approval_for & (1u << c))
			l->approval_for[n_approval++] =
			    idp_action_class_name((enum idp_action_class)c);
	(void)policy_input_set_list(in, POLICY_ATTR_AGENT_APPROVAL_FOR, l->approval_for,
	                            n_approval);
	if (ag->n_labels > IDP_ARRAY_LEN(l->labels))
		kv = l->labels_heap = idp_xcalloc(ag->n_labels, sizeof(*kv));
	for (size_t i = 0; i < ag->n_labels; i++) {
		kv[i].key = ag->labels[i].key;
		kv[i].value = ag->labels[i].value;
	}
	(void)policy_input_set_map(in, POLICY_ATTR_AGENT_LABELS, kv, ag->n_labels);

	(void)policy_input_set_list(in, POLICY_ATTR_REQUEST_SCOPES, s->a->scopes->v,
	                            s->a->scopes->n);
	(void)policy_input_set_str(in, POLICY_ATTR_REQUEST_AUDIENCE, s->a->audience);
	(void)policy_input_set_int(in, POLICY_ATTR_REQUEST_TTL, ttl_s);
	(void)policy_input_set_str(in, POLICY_ATTR_REQUEST_TASK_ID, s->task_id);
	(void)policy_input_set_str(in, POLICY_ATTR_REQUEST_HUMAN, s->human);

	(void)policy_input_set_str(in, POLICY_ATTR_RESOURCE_AUDIENCE, r->audience);
	(void)policy_input_set_str(in, POLICY_ATTR_RESOURCE_DOMAIN, r->domain);
	(void)policy_input_set_str(in, POLICY_ATTR_RESOURCE_CLASSIFICATION, r->classification);
	if (r->environment[0] != '\0')
		(void)policy_input_set_str(in, POLICY_ATTR_RESOURCE_ENVIRONMENT, r->environment);

	if (n_chain > INPUT_CHAIN_MAX)
		chain = l->chain_heap = idp_xcalloc(n_chain, sizeof(*chain));
	for (size_t i = 0; i < n_chain; i++)
		chain[i] = s->chain->links[i].agent_id;
	(void)policy_input_set_int(in, POLICY_ATTR_DELEGATION_DEPTH,
	                           n_chain > 0 ? s->chain->links[n_chain - 1].depth : 0);
	(void)policy_input_set_list(in, POLICY_ATTR_DELEGATION_CHAIN, chain, n_chain);
	{
		/*
		 * The deepest links a human approved, counted from the last one
		 * up to the first that nobody approved: an approval answers for
		 * its own level, so one given at depth 1 is not that of depth 4
		 * (the delegation-depth rule wants each level past the third).
		 */
		int64_t approved = 0;

		for (size_t i = n_chain; i > 0 && s->chain->links[i - 1].approved; i--)
			approved++;
		(void)policy_input_set_int(in, POLICY_ATTR_DELEGATION_APPROVALS, approved);
	}
	(void)policy_input_set_bool(in, POLICY_ATTR_CONTEXT_APPROVAL, s->approved);
	return true;
}

/* "key":"value" after a comma; a NULL value is an error, as it is to json_pack. */
static int
put_member(struct idp_buf *b, const char *key, const char *value)
{
	int rc;

	if (value == NULL)
		return IDP_EINVAL;
	rc = idp_json_put_key(b, key, false);
	return rc == IDP_OK ? idp_json_put_str(b, value) : rc;
}

/*
 * The access token's claims as compact JSON into b, written directly (no
 * tree built to be serialized): the members and their order are those
 * json_pack gave them.  IDP_EINVAL when a value is not valid UTF-8.
 */
static int
claims_write(struct issuing *s, struct idp_buf *b, const char *scope, int64_t iat_s, int64_t exp_s)
{
	int rc = idp_buf_reserve(b, 1000);

	if (rc == IDP_OK)
		rc = idp_buf_putc(b, '{');
	if (rc == IDP_OK)
		rc = idp_json_put_key(b, "iss", true);
	if (rc == IDP_OK)
		rc = idp_json_put_str(b, issuer);
	if (rc == IDP_OK)
		rc = put_member(b, "sub", s->agent->id);
	if (rc == IDP_OK)
		rc = put_member(b, "aud", s->a->audience);
	if (rc == IDP_OK)
		rc = idp_json_put_key(b, "iat", false);
	if (rc == IDP_OK)
		rc = idp_json_put_int(b, iat_s);
	if (rc == IDP_OK)
		rc = idp_json_put_key(b, "exp", false);
	if (rc == IDP_OK)
		rc = idp_json_put_int(b, exp_s);
	if (rc == IDP_OK)
		rc = put_member(b, "jti", s->g->jti);
	if (rc == IDP_OK)
		rc = put_member(b, "scope", scope);
	if (rc == IDP_OK)
		rc = put_member(b, "task_id", s->task_id);
	if (rc == IDP_OK)
		rc = put_member(b, "human_principal", s->human);
	if (rc == IDP_OK)
		rc = put_member(b, "delegation_chain_hash", s->chain_hash);
	if (rc == IDP_OK)
		rc = put_member(b, "agent_type", s->agent->agent_type);
	if (rc == IDP_OK)
		rc = put_member(b, "client_id", s->agent->id);
	if (rc == IDP_OK)
		rc = put_member(b, ACCESS_CLAIM_DELEGATION_JTI, s->djti);
	if (rc == IDP_OK)
		rc = put_member(b, ACCESS_CLAIM_IDENTITY_JTI, s->a->who->cred.jti);
	if (rc == IDP_OK)
		rc = idp_json_put_key(b, "act", false);
	if (rc == IDP_OK)
		rc = idp_json_put_value(b, s->act, false);
	if (rc == IDP_OK && s->agent->agent_version != NULL)
		rc = put_member(b, "agent_version", s->agent->agent_version);
	if (rc == IDP_OK)
		rc = idp_buf_putc(b, '}');
	return rc;
}

/* Narrow the requested scopes as an ALLOW_WITH_CONDITIONS says; NULL if nothing is left. */
static char *
granted_scope(struct issuing *s)
{
	const struct policy_outcome *o = &s->g->decision;
	struct idp_buf b;

	if (!o->narrowed)
		return idp_xstrdup(s->a->scopes->joined);
	idp_buf_init(&b, 64 * 1024);
	for (size_t i = 0; i < o->n_scopes; i++) {
		/* The scopes come from a bounded request: the 64 KiB cap is never reached. */
		if ((b.len > 0 && idp_buf_putc(&b, ' ') != IDP_OK) ||
		    idp_buf_puts(&b, o->scopes[i]) != IDP_OK) {
			idp_buf_cleanup(&b);
			return NULL;
		}
	}
	if (b.len == 0) {
		idp_buf_cleanup(&b);
		return NULL;
	}
	return idp_buf_take(&b, NULL);
}

void
access_issue(const struct access_ask *a, struct access_grant *g)
{
	/*
	 * A scope set is 16 KiB: kept per thread rather than on the stack or
	 * the heap of every request (a handler thread serves one at a time).
	 */
	static _Thread_local struct task_scopes parent_sc;
	struct issuing s = {.a = a,
	                    .g = g,
	                    .agent = a->who->agent,
	                    .task_id = a->task_id,
	                    .parent_sc = &parent_sc,
	                    .top_class = -1};
	struct approval_subject subj;
	struct keys *km = keys_process();
	struct idp_jws_key *key = NULL;
	struct resource res;
	struct policy_input input;
	struct input_lists lists = {.labels_heap = NULL, .chain_heap = NULL};
	struct idp_buf claims;
	const char *dec, *why = NULL;
	int64_t now_ms = idp_now_ms(idp_clock_system()), default_ttl_ms, max_ttl_ms, exp_ms;
	int64_t not_after = 0;
	struct idp_diag d;
	char *agents = NULL; /* s.chain's agents, once an approval needs them */
	int rc;

	memset(g, 0, sizeof(*g));
	if (!a->may_block && (a->delegation_token == NULL || a->approval_id != NULL)) {
		/* The root token and the approval are read from PostgreSQL. */
		g->would_block = true;
		return;
	}
	idp_buf_init(&claims, IDP_JWS_MAX_TOKEN);
	/* 1. The audience names a resource. */
	if (!resource_get(a->audience, &res, &default_ttl_ms, &max_ttl_ms)) {
		refuse(&s, 400, "invalid_target");
		goto refused;
	}
	/* 2. The delegation token it stands on: who delegated, for which task. */
	if (a->delegation_token != NULL ? !parent_verify(&s) : !root_token(&s)) {
		if (g->would_block)
			goto done;
		goto refused;
	}
	/* 3. The chain is live: no link revoked, the task open. */
	rc = revocation_check_delegation(s.djti, s.task_id, now_ms / 1000, a->may_block, &s.chain,
	                                 &why);
	if (rc == IDP_EWOULDBLOCK) {
		g->would_block = true;
		goto done;
	}
	if (rc == IDP_EUNAVAIL) {
		refuse(&s, 503, "unavailable");
		goto refused;
	}
	if (rc != IDP_OK) {
		refuse(&s, 403, why != NULL ? why : "token_revoked");
		goto refused;
	}
	/* 4. Within the agent's capabilities, and within its delegation token. */
	for (size_t i = 0; i < a->scopes->n; i++) {
		if (!registry_agent_can(s.agent, a->scopes->v[i])) {
			refuse_scope(&s, AUDIT_REASON_SCOPE_ESCALATION, a->scopes->v[i]);
			goto refused;
		}
	}
	for (size_t i = 0; i < a->scopes->n; i++) {
		if (!scope_within(a->scopes->v[i], s.parent_sc->v, s.parent_sc->n)) {
			refuse_scope(&s, "scope_not_within_delegation", a->scopes->v[i]);
			goto refused;
		}
	}
	/* Every agent on the chain is still active. */
	if (!chain_agents_ok(&s)) {
		if (g->would_block)
			goto done;
		goto refused;
	}
	/* 5. An approval presented must be for exactly this request. */
	subj = (struct approval_subject){
	    .kind = APPROVAL_TOKEN,
	    .agent_id = s.agent->id,
	    .task_id = s.task_id,
	    .human = s.human,
	    .scope = a->scopes->joined,
	    .target = a->audience,
	    .request_id = http_req_id(a->req),
	};
	if (a->approval_id != NULL) {
		agents = chain_agents_text(s.chain);
		subj.chain = agents;
		/* Checked here for the policy to see; spent once the token is
		 * signed (below), so that no failure of idpd's own burns it. */
		rc = approval_check(a->approval_id, &subj, &why);
		if (rc == IDP_EUNAVAIL) {
			refuse(&s, 503, "unavailable");
			goto refused;
		}
		if (rc != IDP_OK) {
			refuse(&s, 403, why != NULL ? why : "approval_invalid");
			goto refused;
		}
		s.approved = true;
	}
	/* 6. The policy decides. */
	{
		int64_t ttl_ms = a->ttl_s > 0 ? a->ttl_s * 1000 : default_ttl_ms;

		idp_diag_init(&d);
		rc =
		    policy_input_build(&s, &res, (ttl_ms < max_ttl_ms ? ttl_ms : max_ttl_ms) / 1000,
		                       &lists, &input)
		        ? policy_service_decide_input(&input, true, &g->decision, &d)
		        : IDP_EINTERNAL;
	}
	g->decided = rc == IDP_OK;
	if (rc != IDP_OK) {
		log_error("access: the policy input could not be evaluated: %s",
		          d.count > 0 ? idp_diag_str(&d) : "no set or no memory");
		refuse(&s, 503, "unavailable");
		goto refused;
	}
	rules_join(&s);
	dec = decision_name(&s);
	if (dec == NULL || strcmp(dec, "DENY") == 0) {
		refuse(&s, 403, "policy_denied");
		goto refused;
	}
	if (strcmp(dec, "REQUIRE_APPROVAL") == 0 && s.approved) {
		/*
		 * An approval was presented and still approval is required: the
		 * rule does not yield to one (context.approval is all a rule
		 * sees), so another would not help either.  A refusal, not a
		 * new approval to wait on forever; the presented one is kept.
		 */
		refuse(&s, 403, "approval_insufficient");
		goto refused;
	}
	if (strcmp(dec, "REQUIRE_APPROVAL") == 0) {
		/* Recorded by access_finish, where PostgreSQL may be waited on. */
		subj.reason = g->decision.reason;
		subj.rules = s.rules[0] != '\0' ? s.rules : NULL;
		if (agents == NULL)
			agents = chain_agents_text(s.chain);
		subj.chain = agents;
		g->approval = approval_subject_dup(&subj);
		refuse(&s, 202, "approval_required");
		goto refused;
	}

	/* 7. The lifetime, the scope, the signature. */
	/* Capped before the sum: a ttl parsed from "9223372036854775s" would overflow it. */
	exp_ms = a->ttl_s > 0 ? a->ttl_s * 1000 : default_ttl_ms;
	exp_ms = now_ms + (exp_ms < max_ttl_ms ? exp_ms : max_ttl_ms);
	if (g->decision.has_max_ttl && exp_ms > now_ms + g->decision.max_ttl * 1000)
		exp_ms = now_ms + g->decision.max_ttl * 1000;
	if (exp_ms > s.parent_exp_s * 1000)
		exp_ms = s.parent_exp_s * 1000;
	if (km == NULL || keys_signing_key(km, &key, &not_after) != IDP_OK) {
		refuse(&s, 503, "unavailable");
		goto refused;
	}
	if (exp_ms > now_ms + keys_max_token_lifetime_ms(km))
		exp_ms = now_ms + keys_max_token_lifetime_ms(km);
	if (exp_ms > not_after)
		exp_ms = not_after;
	if (exp_ms / 1000 <= now_ms / 1000) {
		/* The delegation token ends within the second: nothing useful is left. */
		refuse(&s, 403, "delegation_token_expired");
		goto refused;
	}
	g->scope = granted_scope(&s);
	if (g->scope == NULL) {
		refuse(&s, 403, "policy_denied");
		goto refused;
	}
	if (s.act == NULL || attest_jti_new(g->jti) != IDP_OK ||
	    claims_write(&s, &claims, g->scope, now_ms / 1000, exp_ms / 1000) != IDP_OK ||
	    idp_jws_sign_payload(key, ACCESS_TOKEN_TYP, claims.data, claims.len, &g->token, NULL,
	                         NULL) != IDP_OK) {
		refuse(&s, 500, "internal");
		goto refused;
	}
	/* Built before the approval is spent, so that failing to build it
	 * (a bug) leaves the approval as it was. */
	g->event = outcome_event(&s, true, g->scope, exp_ms / 1000);
	if (g->event == NULL) {
		/* Not durable, not issued. */
		idp_wipe(g->token, strlen(g->token));
		free(g->token);
		g->token = NULL;
		refuse(&s, 503, "unavailable");
		goto done;
	}
	if (a->approval_id != NULL &&
	    (rc = approval_consume(a->approval_id, &subj, g->jti, &why)) != IDP_OK) {
		/* Spent by another request since the check, or PostgreSQL gone:
		 * this token never existed. */
		idp_wipe(g->token, strlen(g->token));
		free(g->token);
		g->token = NULL;
		audit_event_free(g->event);
		g->event = NULL;
		if (rc == IDP_EUNAVAIL)
			refuse(&s, 503, "unavailable");
		else
			refuse(&s, 403, why != NULL ? why : "approval_invalid");
		goto refused;
	}
	if (a->approval_id != NULL) {
		/* Spent on this token: given back if the token is withheld. */
		snprintf(g->spent_id, sizeof(g->spent_id), "%s", a->approval_id);
		g->spent = approval_subject_dup(&subj);
	}
	g->status = 200;
	g->expires_in = exp_ms / 1000 - now_ms / 1000;
	/* last_active moves once the event is durable (access_finish). */
	snprintf(g->agent_id, sizeof(g->agent_id), "%s", s.agent->id);
	g->issued_ms = now_ms;
	goto done;

refused:
	/* A 5xx is idpd's own failure, logged where it happened; writing it
	 * to an audit log that may be the thing down would only delay it. */
	/* A 202 is audited by approval_request as approval.requested. */
	if (g->status < 500 && g->status != 202 &&
	    (g->event = outcome_event(&s, false, NULL, 0)) == NULL)
		log_warn("access: cannot record the refusal (%s) in the audit log", g->code);
done:
	idp_jws_key_unref(key);
	idp_buf_cleanup(&claims);
	free(res.audience);
	free(lists.labels_heap);
	free(lists.chain_heap);
	json_decref(s.act);
	json_decref(s.own);
	free(agents);
	revocation_chain_free(s.chain);
	idp_jws_verified_cleanup(&s.parent);
}

void
access_grant_cleanup(struct access_grant *g)
{
	if (g->token != NULL) {
		idp_wipe(g->token, strlen(g->token));
		free(g->token);
	}
	audit_event_free(g->event);
	free(g->approval);
	free(g->spent);
	free(g->scope);
	policy_outcome_cleanup(&g->decision);
	memset(g, 0, sizeof(*g));
}

/* ---- finishing: the outcome made durable, then the answer ---- */

/*
 * A grant on its way to its answer, owned by whichever thread holds it.
 * Once the answer is written and held, g is released and only what the
 * audit writer's word needs is kept.
 */
struct finishing {
	struct http_req *req;
	access_reply_fn reply;
	struct access_grant g;
	int status;
	const char *code; /* static text */
	char jti[ATTEST_JTI_LEN + 1];
};

static void
finish_answer(struct finishing *f)
{
	f->reply(f->req, &f->g);
	access_grant_cleanup(&f->g);
	free(f);
}

/* The outcome's event is durable: the agent was active (batched write). */
static void
touch_if_issued(const struct access_grant *g, int status, int rc)
{
	if (rc == IDP_OK && status == 200 && g->agent_id[0] != '\0')
		registry_touch(g->agent_id, g->issued_ms);
}

/* A token whose event is not durable is not issued: wiped, and a 503. */
static void
withhold(struct access_grant *g, const char *jti)
{
	log_warn("access: token %s withheld: its audit event is not durable", jti);
	if (g->token != NULL) {
		idp_wipe(g->token, strlen(g->token));
		free(g->token);
		g->token = NULL;
	}
	g->status = 503;
	g->code = "unavailable";
	g->decided = false;
}

/*
 * The token g spent its approval on was withheld (jti; event_id is its
 * token.issued event's id): give the approval back, so that the agent's
 * retry may use it.  When that cannot be done now the approval stays
 * spent, as a human would have to approve again: logged, never silent.
 * A thread that may wait on PostgreSQL and the audit commit.
 */
static void
give_back(const struct access_grant *g, const char *jti, const char *event_id)
{
	int rc = approval_restore(g->spent_id, g->spent, jti, event_id);

	if (rc == IDP_OK)
		log_info("access: approval %s given back: token %s was withheld", g->spent_id, jti);
	else if (rc == IDP_ENOTFOUND)
		log_warn("access: approval %s not given back: it is no longer spent on token %s",
		         g->spent_id, jti);
	else
		log_error(
		    "access: approval %s stays spent on withheld token %s: it cannot be given "
		    "back now (%s)",
		    g->spent_id, jti, idp_err_name(rc));
}

/*
 * The audit writer's word on the outcome's event (the writer's thread, the
 * audit timer's, or the one stopping it).  The answer is already written
 * and held by the suspended request: on success it only goes out; a token
 * whose event did not commit is taken back and becomes a 503.
 */
static void
audited(void *arg, int rc)
{
	struct finishing *f = arg;
	struct http_req *req = f->req;

	touch_if_issued(&f->g, f->status, rc);
	if (rc != IDP_OK && f->status == 200) {
		http_req_withdraw(req);
		withhold(&f->g, f->jti);
		f->reply(req, &f->g);
	} else if (rc != IDP_OK) {
		log_warn("access: cannot record the refusal (%s) in the audit log", f->code);
	}
	access_grant_cleanup(&f->g);
	free(f);
	http_req_resume(req);
}

/* On the handler pool: record the approval the policy asked for. */
static void
request_approval(struct http_req *req, void *arg)
{
	struct finishing *f = arg;

	(void)req;
	if (approval_request(f->g.approval, f->g.approval_id, &f->g.approval_expires_s) != IDP_OK) {
		f->g.approval_id[0] = '\0';
		f->g.status = 503;
		f->g.code = "unavailable";
	}
	finish_answer(f);
}

void
access_finish(struct http_req *req, struct access_grant *g, access_reply_fn reply)
{
	struct finishing *f;
	struct audit_event *ev;
	int rc;

	if (g->event == NULL && g->approval == NULL) {
		reply(req, g);
		access_grant_cleanup(g);
		return;
	}
	f = idp_xcalloc(1, sizeof(*f));
	f->req = req;
	f->reply = reply;
	f->g = *g;
	memset(g, 0, sizeof(*g));
	if (f->g.approval != NULL) {
		http_req_continue(req, request_approval, f);
		return;
	}
	ev = f->g.event;
	f->g.event = NULL;
	/*
	 * Wait for the commit here, as a pooled handler would, when the token
	 * spent an approval (spending it waited on PostgreSQL, so this thread
	 * may wait), so that a withheld token gives its approval back before
	 * its 503 goes out and the agent's retry finds it approved; and when
	 * the server is stopping and would not resume the connection.
	 */
	if (f->g.spent != NULL || !http_req_suspend(req)) {
		char event_id[65] = ""; /* an event id is at most 64 bytes (audit.h) */

		/* Named before audit_emit takes it: a withheld token's event may
		 * still commit, and the writer's audit.withdrawn then names it. */
		if (f->g.spent != NULL && audit_event_get(ev, AUDIT_F_ID) == NULL &&
		    audit_event_assign_id(ev) != IDP_OK)
			log_warn("access: the token event has no id yet");
		if (f->g.spent != NULL && audit_event_get(ev, AUDIT_F_ID) != NULL)
			snprintf(event_id, sizeof(event_id), "%s", audit_event_get(ev, AUDIT_F_ID));
		rc = audit_emit(ev);
		touch_if_issued(&f->g, f->g.status, rc);
		if (rc != IDP_OK && f->g.status == 200) {
			withhold(&f->g, f->g.jti);
			if (f->g.spent != NULL)
				give_back(&f->g, f->g.jti, event_id[0] != '\0' ? event_id : NULL);
		}
		finish_answer(f);
		return;
	}
	/* The answer is written here, on this thread, and held until the event
	 * commits: the writer's thread, which every request goes through, only
	 * releases it.  The grant is released with it; its token lives on
	 * only in the held answer, which is wiped when freed. */
	reply(req, &f->g);
	f->status = f->g.status;
	f->code = f->g.code;
	memcpy(f->jti, f->g.jti, sizeof(f->jti));
	{
		char agent_id[sizeof(f->g.agent_id)];
		int64_t issued_ms = f->g.issued_ms;

		memcpy(agent_id, f->g.agent_id, sizeof(agent_id));
		access_grant_cleanup(&f->g);
		memcpy(f->g.agent_id, agent_id, sizeof(agent_id));
		f->g.issued_ms = issued_ms;
	}
	/* From here f belongs to the audit writer: the callback may run before
	 * audit_emit_then returns. */
	rc = audit_emit_then(ev, audited, f);
	if (rc != AUDIT_PENDING)
		audited(f, rc);
}

/* ---- POST /v1/token ---- */

/* {"max_ttl"?, "scopes"?, "enhanced_logging"}, as policy_outcome_conditions_json. */
static int
conditions_write(struct idp_buf *b, const struct policy_outcome *o)
{
	int rc = idp_buf_putc(b, '{');
	bool first = true;

	if (rc == IDP_OK && o->has_max_ttl) {
		rc = idp_json_put_key(b, "max_ttl", true);
		if (rc == IDP_OK)
			rc = idp_json_put_int(b, o->max_ttl);
		first = false;
	}
	if (rc == IDP_OK && o->narrowed) {
		rc = idp_json_put_key(b, "scopes", first);
		if (rc == IDP_OK)
			rc = idp_buf_putc(b, '[');
		for (size_t i = 0; rc == IDP_OK && i < o->n_scopes; i++) {
			if (i > 0)
				rc = idp_buf_putc(b, ',');
			if (rc == IDP_OK)
				rc = idp_json_put_str(b, o->scopes[i]);
		}
		if (rc == IDP_OK)
			rc = idp_buf_putc(b, ']');
		first = false;
	}
	if (rc == IDP_OK)
		rc = idp_json_put_key(b, "enhanced_logging", first);
	if (rc == IDP_OK)
		rc = idp_buf_puts(b, o->enhanced_logging ? "true" : "false");
	if (rc == IDP_OK)
		rc = idp_buf_putc(b, '}');
	return rc;
}

/* The 200 answer, written directly: the members json_pack gave it, in that order. */
static void
reply_issued(struct http_req *req, const struct access_grant *g)
{
	const struct policy_outcome *dec = g->decided ? &g->decision : NULL;
	struct idp_buf b;
	int rc;

	idp_buf_init(&b, 2 * IDP_JWS_MAX_TOKEN);
	rc = idp_buf_reserve(&b, strlen(g->token) + 256);
	if (rc == IDP_OK)
		rc = idp_buf_puts(&b, "{\"access_token\":");
	if (rc == IDP_OK)
		rc = idp_json_put_str(&b, g->token);
	if (rc == IDP_OK)
		rc = idp_buf_printf(&b, ",\"token_type\":\"Bearer\",\"expires_in\":%lld",
		                    (long long)g->expires_in);
	if (rc == IDP_OK)
		rc = put_member(&b, "scope", g->scope);
	if (rc == IDP_OK)
		rc = put_member(&b, "jti", g->jti);
	if (rc == IDP_OK && dec != NULL)
		rc = put_member(&b, "decision", policy_effect_name(dec->effect));
	if (rc == IDP_OK && dec != NULL && dec->has_conditions) {
		rc = idp_json_put_key(&b, "conditions", false);
		if (rc == IDP_OK)
			rc = conditions_write(&b, dec);
	}
	if (rc == IDP_OK)
		rc = idp_buf_putc(&b, '}');
	if (rc != IDP_OK) {
		log_error("access: bug: cannot write the token answer");
		http_reply_error(req, IDP_EINTERNAL, "the token cannot be issued");
		if (b.data != NULL)
			idp_wipe(b.data, b.len);
		idp_buf_cleanup(&b);
		return;
	}
	/* Handed over, not copied: MHD frees it once sent. */
	{
		size_t len;
		char *body = idp_buf_take(&b, &len);

		http_reply_take_secret(req, 200, "application/json", body, len);
	}
}

static void
reply(struct http_req *req, struct access_grant *g)
{
	const struct policy_outcome *dec = g->decided ? &g->decision : NULL;
	json_t *extra;

	switch (g->status) {
	case 200:
		http_add_header(req, "Cache-Control", "no-store");
		reply_issued(req, g);
		return;
	case 202: {
		char loc[128], when[32];

		/* The shape of the delegation's 202, so one client handles both. */
		idp_time_format(g->approval_expires_s * 1000, when);
		snprintf(loc, sizeof(loc), "/v1/approvals/%s", g->approval_id);
		http_add_header(req, "Location", loc);
		http_reply_json(req, 202,
		                json_pack("{s:s,s:s*,s:o*,s:s,s:s,s:s}", "decision",
		                          "REQUIRE_APPROVAL", "reason", dec ? dec->reason : NULL,
		                          "rules", dec ? policy_outcome_rules_json(dec) : NULL,
		                          "approval_id", g->approval_id, "status", "pending",
		                          "expires_at", when));
		return;
	}
	case 400:
		http_reply_problem(req, 400, g->code, NULL,
		                   "the audience is not a resource access tokens are issued for");
		return;
	case 403:
		extra = json_pack("{s:s}", "reason", g->code);
		if (extra != NULL && g->refused_scope[0] != '\0') {
			json_object_set_new(extra, "scope", json_string(g->refused_scope));
			http_reply_problem(req, 403, g->code, extra,
			                   "the token is refused: %s (%s)", g->code,
			                   g->refused_scope);
			return;
		}
		if (extra != NULL && dec != NULL) {
			json_object_set_new(extra, "decision",
			                    json_string(policy_effect_name(dec->effect)));
			json_object_set_new(extra, "policy_reason", json_string(dec->reason));
			json_object_set_new(extra, "rules", policy_outcome_rules_json(dec));
		}
		http_reply_problem(req, 403, g->code, extra, "the token is refused: %s",
		                   dec != NULL ? dec->reason : g->code);
		return;
	case 503:
		http_reply_error(req, IDP_EUNAVAIL, "idpd cannot decide now; retry");
		return;
	default:
		http_reply_error(req, IDP_EINTERNAL, "the token cannot be issued");
	}
}

static void
post_token(struct http_req *req, void *ctx)
{
	struct agent_principal who;
	static _Thread_local struct task_scopes scopes;
	struct access_grant g;
	struct task_scopes *sc = &scopes;
	struct access_ask a = {.req = req, .who = &who, .scopes = sc};
	const char *why = NULL;
	struct idp_diag d;
	json_t *body = NULL, *v;
	int rc;

	(void)ctx;
	memset(&g, 0, sizeof(g));
	/* Inline on the I/O thread: whatever would wait on PostgreSQL sends the
	 * request to the handler pool before anything is done. */
	a.may_block = http_req_may_wait(req);
	rc = a.may_block ? authenticate_agent(req, &who, &why)
	                 : authenticate_agent_nowait(req, &who, &why);
	if (rc == IDP_EWOULDBLOCK) {
		(void)http_req_defer(req);
		return;
	}
	if (rc != IDP_OK) {
		log_info("access: agent authentication failed: %s", why ? why : "unknown");
		if (rc == IDP_EUNAUTH && http_req_bearer(req) != NULL)
			audit_refused(req, AUDIT_ACTOR_NONE, NULL, NULL, why);
		if (rc == IDP_EUNAUTH)
			http_add_header(req, "WWW-Authenticate", "Bearer");
		http_reply_error(req, rc == IDP_EUNAUTH ? IDP_EUNAUTH : IDP_EUNAVAIL,
		                 rc == IDP_EUNAUTH ? GENERIC_401 : "cannot authenticate now");
		return;
	}
	if (!http_req_query_only(req, NULL))
		goto done;
	body = http_req_json_object(req);
	if (body == NULL)
		goto done;
	idp_diag_init(&d);
	a.audience = json_string_value(json_object_get(body, "audience"));
	if (a.audience == NULL || a.audience[0] == '\0')
		idp_diag_add(&d, "audience: required, the resource the token is for");
	a.task_id = json_string_value(json_object_get(body, "task_id"));
	if (a.task_id == NULL)
		idp_diag_add(&d, "task_id: required, the task the token serves");
	else if (!task_id_valid(a.task_id))
		idp_diag_add(&d,
		             "task_id: a task id (\"task_\" and up to %d letters, digits, "
		             "'_' or '-')",
		             TASK_ID_MAX - 5);
	(void)task_scopes_parse(json_object_get(body, "scope"), sc, &d);
	v = json_object_get(body, "delegation_token");
	if (v != NULL && !json_is_null(v) && (a.delegation_token = json_string_value(v)) == NULL)
		idp_diag_add(&d, "delegation_token: a string, the caller's delegation token");
	v = json_object_get(body, "approval_id");
	if (v != NULL && !json_is_null(v) && (a.approval_id = json_string_value(v)) == NULL)
		idp_diag_add(&d, "approval_id: a string");
	v = json_object_get(body, "reason");
	if (v != NULL && !json_is_null(v) &&
	    ((a.reason = json_string_value(v)) == NULL || strlen(a.reason) > 1024))
		idp_diag_add(&d, "reason: a string of at most 1024 bytes");
	v = json_object_get(body, "ttl");
	if (v != NULL) {
		int64_t ttl_ms = 0;

		if (json_is_integer(v) && json_integer_value(v) > 0 &&
		    json_integer_value(v) <= 86400)
			ttl_ms = (int64_t)json_integer_value(v) * 1000;
		else if (!json_is_string(v) ||
		         idp_duration_parse(json_string_value(v), &ttl_ms) != IDP_OK ||
		         ttl_ms < 1000)
			idp_diag_add(&d,
			             "ttl: a positive duration (\"5m\") or a number of seconds");
		a.ttl_s = ttl_ms / 1000;
	}
	http_json_unknown_members(body,
	                          (const char *const[]){"audience", "task_id", "scope",
	                                                "delegation_token", "approval_id", "reason",
	                                                "ttl", NULL},
	                          &d);
	if (d.count > 0) {
		http_reply_problem(req, 400, "invalid_request",
		                   json_pack("{s:o}", "errors", http_diag_lines(&d)),
		                   "the token request is not valid");
		goto done;
	}
	access_issue(&a, &g);
	if (g.would_block)
		(void)http_req_defer(req);
	else
		access_finish(req, &g, reply);
done:
	access_grant_cleanup(&g);
	json_decref(body);
	agent_principal_cleanup(&who);
}

int
access_routes(struct http_router *r, struct idpd_app *app)
{
	(void)app;
	return http_router_add_ex(r, HTTP_POST, "/v1/token", post_token, NULL, HTTP_ROUTE_INLINE);
}
