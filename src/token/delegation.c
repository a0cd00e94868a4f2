/*
 * delegation.c - POST /v1/delegations: an agent hands a narrower part of its
 * task-scoped delegation token to another agent (docs/tokens.md
 * "Delegation", DESIGN §7).
 *
 * The caller authenticates with its identity credential and presents its
 * own delegation token in the body.  Every check that needs no database
 * runs first (the token, delegate-to, scope diminishment, capabilities,
 * max-scope-per-delegation, lifetime); then one transaction share-locks the
 * task row, the stored chain from the parent jti up to the root, and the
 * rows of the chain's agents and the delegate (so neither a completion, a
 * revocation nor a suspension can slip in, even one this instance's
 * registry has not heard of yet), checks them (every link unrevoked, every
 * agent active and its max_chain_depth respected), inserts the new token
 * with its parent jti, emits delegation.created and COMMITs.  The token is
 * handed out only after its event is durable.
 *
 * Refusals are 403 problems whose "reason" is a stable code; chain
 * violations start with AUDIT_REASON_CHAIN_PREFIX so the audit alert rule
 * classifies them.  Each refusal is audited as delegation.denied, best
 * effort: a refusal stands even when its event cannot be written.
 *
 * An action class listed in the delegator's requires_human_approval_for
 * turns a request that passes every other check, the database's included
 * (run in a transaction rolled back before the approval is recorded), into
 * 202 REQUIRE_APPROVAL with a pending approval (approvals.h) bound to it:
 * kind delegation, the delegator, the task, the scope set and to_agent as
 * target.  The agent retries with "approval_id"; the approval is then
 * spent inside the delegation's own transaction, after every other check
 * and just before the token's row is inserted, so it is used if and only if
 * the delegation commits.  A presented approval_id is always checked and spent, also when
 * no approval is required (any more); the new token's row names it, which
 * makes that link of the chain human-approved.
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "idpd/agent_auth.h"
#include "idpd/audit_refusal.h"
#include "idpd/app.h"
#include "idpd/approvals.h"
#include "idpd/attest.h"
#include "idpd/audit_writer.h"
#include "idpd/clock.h"
#include "idpd/delegation.h"
#include "idpd/jws.h"
#include "idpd/keys.h"
#include "idpd/log.h"
#include "idpd/registry.h"
#include "idpd/revocation.h"
#include "idpd/scope.h"
#include "idpd/tasks.h"
#include "revocation_int.h"

#define GENERIC_401 "a valid agent credential is required"
/* Walking more links than this means a corrupt chain: no agent allows it. */
#define CHAIN_MAX 64

static struct store *store;
static char issuer[513], audience[513];
/* A delegator presents the same token for each delegation: verify it once per key. */
static struct idp_jws_cache *parent_cache;

int
delegation_init(struct idpd_app *app, struct idp_diag *diag)
{
	(void)diag;
	store = app->store;
	if (parent_cache == NULL)
		parent_cache = idp_jws_cache_new((size_t)app->cfg->introspection.cache_size);
	/* identity.* are restart-only, like the copies in tasks and attestation. */
	snprintf(issuer, sizeof(issuer), "%s", app->cfg->identity.issuer);
	snprintf(audience, sizeof(audience), "%s", app->cfg->identity.audience);
	return IDP_OK;
}

/* ---- the pure parts ---- */

json_t *
delegation_act_of(const json_t *act, const char *holder)
{
	const char *sub = json_string_value(json_object_get(act, "sub"));

	if (!json_is_object(act))
		return NULL;
	if (sub != NULL && strcmp(sub, holder) == 0)
		return json_incref((json_t *)act);
	return json_pack("{s:s,s:s,s:O}", "sub", holder, "sub_type", "agent", "act", act);
}

size_t
delegation_act_agents(const json_t *act, const char *holder, const char **out, size_t max)
{
	const char *rev[CHAIN_MAX];
	size_t n = 0, k = 0;

	for (const json_t *j = act; json_is_object(j) && n < CHAIN_MAX;
	     j = json_object_get(j, "act")) {
		const char *sub = json_string_value(json_object_get(j, "sub"));
		const char *type = json_string_value(json_object_get(j, "sub_type"));

		if (sub != NULL && type != NULL && strcmp(type, "agent") == 0)
			rev[n++] = sub;
	}
	for (size_t i = n; i > 0 && k < max; i--)
		out[k++] = rev[i - 1];
	if (holder != NULL && (n == 0 || strcmp(rev[0], holder) != 0) && k < max)
		out[k++] = holder;
	return k;
}

json_t *
delegation_claims(const struct delegation_token *t, const json_t *parent_act)
{
	json_t *c, *act, *parent;

	if (t->exp_s <= t->iat_s || !json_is_object(parent_act))
		return NULL;
	/* The parent's act with its holder, the delegator, outermost. */
	parent = delegation_act_of(parent_act, t->delegator);
	act = parent == NULL ? NULL
	                     : json_pack("{s:s,s:s,s:o}", "sub", t->agent_id, "sub_type", "agent",
	                                 "act", parent);
	c = json_pack("{s:s,s:s,s:s,s:I,s:I,s:s,s:s,s:s,s:s,s:s,s:i,s:o}", "iss", t->issuer, "sub",
	              t->agent_id, "aud", t->audience, "iat", (json_int_t)t->iat_s, "exp",
	              (json_int_t)t->exp_s, "jti", t->jti, "task_id", t->task_id, "scope", t->scope,
	              "human_principal", t->human, "delegation_chain_hash", t->chain_hash, "depth",
	              t->depth, "act", act);
	return c;
}

int
delegation_chain_parse(const char *text, uint8_t out[TASK_CHAIN_HASH_LEN])
{
	if (text == NULL || strlen(text) != TASK_CHAIN_TEXT_LEN - 1 ||
	    strncmp(text, "sha256:", 7) != 0)
		return IDP_EINVAL;
	for (size_t i = 0; i < TASK_CHAIN_HASH_LEN; i++) {
		int v = 0;

		for (size_t k = 0; k < 2; k++) {
			char ch = text[7 + 2 * i + k];

			if (ch >= '0' && ch <= '9')
				v = v * 16 + (ch - '0');
			else if (ch >= 'a' && ch <= 'f')
				v = v * 16 + (ch - 'a' + 10);
			else
				return IDP_EINVAL;
		}
		out[i] = (uint8_t)v;
	}
	return IDP_OK;
}

bool
delegation_may_delegate_to(const struct registry_agent *from, const struct registry_agent *to)
{
	for (size_t i = 0; i < from->n_delegate_to; i++)
		if (strcmp(from->delegate_to[i], to->id) == 0 ||
		    strcmp(from->delegate_to[i], to->agent_type) == 0)
			return true;
	return false;
}

/* ---- the request ---- */

struct deleg {
	struct http_req *req;
	struct agent_principal who;
	const struct registry_agent *target;
	struct idp_jws_verified parent;
	struct task_scopes sc;
	struct task_scopes parent_sc;
	const char *to_agent;
	const char *task_id;
	const char *human;
	const char *parent_jti;
	int parent_depth;
	int64_t parent_exp_s;
	int64_t ttl_s;           /* 0: absent */
	const char *approval_id; /* presented with the request, or NULL */
	bool parent_ok;          /* the token verified as the caller's own */
	/* The chain's agents from the root to the caller, space-separated: for approvals. */
	char agents[CHAIN_MAX * (REGISTRY_ID_MAX + 1)];
	/* the outcome */
	const char *reason;
	const char *refused_scope; /* the scope a scope check refused, in sc; or NULL */
	char jti[ATTEST_JTI_LEN + 1];
	char chain[TASK_CHAIN_TEXT_LEN];
	char *token;
	int64_t exp_s;
};

static void
emit_event(struct deleg *g, enum audit_type type, enum audit_outcome outcome, json_t *detail,
           bool *ok)
{
	struct audit_event *ev = audit_event_new(type, AUDIT_TIME_UNSET);
	const char *peer = http_req_peer(g->req);
	const char *agent = g->who.agent != NULL ? g->who.agent->id : NULL;
	int rc = IDP_OK;

	*ok = false;
	if (ev == NULL) {
		json_decref(detail);
		return;
	}
	audit_event_set_outcome(ev, outcome);
	if (audit_event_set(ev, AUDIT_F_TASK_ID, g->task_id) != IDP_OK ||
	    audit_event_set(ev, AUDIT_F_HUMAN_PRINCIPAL, g->human) != IDP_OK ||
	    audit_event_set(ev, AUDIT_F_AGENT_ID, agent) != IDP_OK ||
	    audit_event_set(ev, AUDIT_F_AGENT_TYPE,
	                    g->who.agent != NULL ? g->who.agent->agent_type : NULL) != IDP_OK ||
	    audit_event_set(ev, AUDIT_F_REQUEST_ID, http_req_id(g->req)) != IDP_OK ||
	    (peer[0] != '\0' && audit_event_set(ev, AUDIT_F_SOURCE_ADDRESS, peer) != IDP_OK) ||
	    (agent != NULL && audit_event_set_actor(ev, AUDIT_ACTOR_AGENT, agent) != IDP_OK))
		rc = IDP_EINTERNAL;
	if (rc == IDP_OK && type == AUDIT_DELEGATION_CREATED &&
	    (audit_event_set(ev, AUDIT_F_TOKEN_ID, g->jti) != IDP_OK ||
	     audit_event_set(ev, AUDIT_F_GRANTED_SCOPE, g->sc.joined) != IDP_OK))
		rc = IDP_EINTERNAL;
	/* The chain: the human, then every agent from the root to the caller
	 * (the parent's act, signed by idpd), then the delegate once it is one. */
	if (rc == IDP_OK && g->human != NULL && audit_event_chain_append(ev, g->human) != IDP_OK)
		rc = IDP_EINTERNAL;
	if (rc == IDP_OK && agent != NULL) {
		const char *agents[CHAIN_MAX];
		size_t n = g->parent_ok
		               ? delegation_act_agents(json_object_get(g->parent.claims, "act"),
		                                       agent, agents, CHAIN_MAX)
		               : 0;

		if (n == 0)
			agents[n++] = agent;
		for (size_t i = 0; rc == IDP_OK && i < n; i++)
			if (audit_event_chain_append(ev, agents[i]) != IDP_OK)
				rc = IDP_EINTERNAL;
	}
	if (rc == IDP_OK && g->to_agent != NULL && type == AUDIT_DELEGATION_CREATED &&
	    audit_event_chain_append(ev, g->to_agent) != IDP_OK)
		rc = IDP_EINTERNAL;
	if (rc == IDP_OK && detail != NULL && audit_event_set_detail(ev, detail) != IDP_OK)
		rc = IDP_EINTERNAL;
	json_decref(detail);
	if (rc != IDP_OK) {
		log_error("delegation: bug: cannot build the %s event", audit_type_name(type));
		audit_event_free(ev);
		return;
	}
	*ok = audit_emit(ev) == IDP_OK;
}

/* Answer a refusal and record it, best effort. */
static void
deny(struct deleg *g, int status, const char *reason)
{
	bool ok;

	emit_event(g, AUDIT_DELEGATION_DENIED, AUDIT_OUTCOME_DENIED,
	           json_pack("{s:s,s:o?,s:o?}", "reason", reason, "to_agent",
	                     audit_json_clip(g->to_agent, AUDIT_ECHO_MAX), "requested_scope",
	                     g->sc.n > 0 ? audit_json_clip(g->sc.joined, AUDIT_ECHO_MAX) : NULL),
	           &ok);
	if (!ok)
		log_warn("delegation: cannot record the refusal (%s) in the audit log", reason);
	if (g->refused_scope != NULL)
		http_reply_problem(
		    g->req, status, reason,
		    json_pack("{s:s,s:s}", "reason", reason, "scope", g->refused_scope),
		    "the delegation is refused: %s (%s)", reason, g->refused_scope);
	else
		http_reply_problem(g->req, status, reason, json_pack("{s:s}", "reason", reason),
		                   "the delegation is refused: %s", reason);
}

int
delegation_token_verify(const char *tok, const char *agent_id, struct idp_jws_cache *cache,
                        bool may_block, struct idp_jws_verified *v, struct delegation_presented *p,
                        const char **reason)
{
	struct idp_jws_verify_opts o = {
	    .typ = TASK_TOKEN_TYP, .cache = cache, .low_s = idp_jws_own_low_s()};
	enum idp_jws_reason why;
	const json_t *c;
	const char *iss, *aud;
	int rc = IDP_EFORBIDDEN;

	memset(p, 0, sizeof(*p));
	*reason = "delegation_token_invalid";
	switch (
	    keys_verify_own(keys_process(), tok, strlen(tok), &o, 1, may_block, v, NULL, &why)) {
	case IDP_OK:
		break;
	case IDP_EWOULDBLOCK:
		*reason = NULL;
		return IDP_EWOULDBLOCK;
	case IDP_EUNAVAIL:
		*reason = "unavailable";
		return IDP_EUNAVAIL;
	default:
		return IDP_EFORBIDDEN;
	}
	c = v->claims;
	/* identity.leeway for iat, as introspection allows: a token from an
	 * instance whose clock runs a little ahead is not "from the future";
	 * exp is held exactly, a token past it delegates nothing. */
	if (idp_jwt_check_time(c, idp_clock_system(), rev_leeway_s(),
	                       IDP_JWT_REQUIRE_EXP | IDP_JWT_REQUIRE_IAT, &why) != IDP_OK ||
	    json_integer_value(json_object_get(c, "exp")) <=
	        idp_now_ms(idp_clock_system()) / 1000) {
		*reason = "delegation_token_expired";
		goto done;
	}
	iss = json_string_value(json_object_get(c, "iss"));
	aud = json_string_value(json_object_get(c, "aud"));
	p->sub = json_string_value(json_object_get(c, "sub"));
	p->jti = json_string_value(json_object_get(c, "jti"));
	p->task_id = json_string_value(json_object_get(c, "task_id"));
	p->human = json_string_value(json_object_get(c, "human_principal"));
	p->chain_hash = json_string_value(json_object_get(c, "delegation_chain_hash"));
	p->act = json_object_get(c, "act");
	p->scope = json_object_get(c, "scope");
	if (iss == NULL || aud == NULL || p->sub == NULL || p->jti == NULL || p->task_id == NULL ||
	    p->human == NULL || p->chain_hash == NULL || !json_is_string(p->scope) ||
	    !json_is_object(p->act) || strcmp(iss, issuer) != 0 || strcmp(aud, audience) != 0 ||
	    !json_is_integer(json_object_get(c, "depth")) ||
	    !json_is_integer(json_object_get(c, "exp"))) {
		memset(p, 0, sizeof(*p));
		goto done;
	}
	p->depth = (int)json_integer_value(json_object_get(c, "depth"));
	p->exp_s = (int64_t)json_integer_value(json_object_get(c, "exp"));
	if (strcmp(p->sub, agent_id) != 0) {
		*reason = "delegation_token_not_yours";
		goto done;
	}
	*reason = NULL;
	rc = IDP_OK;
done:
	/* *v stays filled on a refusal too: *p points into its claims. */
	return rc;
}

/* Verify the presented delegation token; on failure sets g->reason. */
static bool
parent_verify(struct deleg *g, const char *tok)
{
	struct delegation_presented p;
	struct idp_diag d;
	/* A pooled route: the keys may be read here. */
	int rc = delegation_token_verify(tok, g->who.agent->id, parent_cache, true, &g->parent, &p,
	                                 &g->reason);

	/* Even a refusal names the task and the human when the token said them. */
	g->task_id = p.task_id;
	g->human = p.human;
	g->parent_jti = p.jti;
	if (rc != IDP_OK)
		return false;
	g->parent_depth = p.depth;
	g->parent_exp_s = p.exp_s;
	idp_diag_init(&d);
	if (!task_scopes_parse(p.scope, &g->parent_sc, &d)) {
		g->reason = "delegation_token_invalid";
		return false;
	}
	g->parent_ok = true;
	{
		const char *agents[CHAIN_MAX];
		size_t n = delegation_act_agents(p.act, g->who.agent->id, agents, CHAIN_MAX),
		       at = 0;

		g->agents[0] = '\0';
		for (size_t i = 0; i < n; i++) {
			int w = snprintf(g->agents + at, sizeof(g->agents) - at, "%s%s",
			                 i > 0 ? " " : "", agents[i]);

			if (w < 0 || (size_t)w >= sizeof(g->agents) - at)
				break;
			at += (size_t)w;
		}
	}
	return true;
}

/* The checks that need no database; false with g->reason on a refusal. */
static bool
check_request(struct deleg *g, int64_t now_s)
{
	const struct registry_agent *me = g->who.agent;
	const struct scope_verb_map *vm = scope_verb_map_current();
	int rc = registry_get(g->to_agent, &g->target);

	if (rc == IDP_ENOTFOUND || rc == IDP_EINVAL) {
		g->target = NULL;
		g->reason = "chain_delegate_unknown";
		return false;
	}
	if (rc != IDP_OK) {
		g->target = NULL;
		g->reason = "unavailable";
		return false;
	}
	if (!delegation_may_delegate_to(me, g->target)) {
		g->reason = "chain_delegate_not_allowed";
		return false;
	}
	if (g->target->status != REGISTRY_ACTIVE) {
		g->reason = "chain_delegate_not_active";
		return false;
	}
	for (size_t i = 0; i < g->sc.n; i++) {
		if (!scope_within(g->sc.v[i], g->parent_sc.v, g->parent_sc.n)) {
			g->reason = "scope_not_within_parent";
			g->refused_scope = g->sc.v[i];
			return false;
		}
	}
	/* Within what both ends may do now: capabilities narrowed since the
	 * parent was issued bound what the delegator passes on. */
	for (size_t i = 0; i < g->sc.n; i++) {
		if (!registry_agent_can(me, g->sc.v[i]) ||
		    !registry_agent_can(g->target, g->sc.v[i])) {
			g->reason = AUDIT_REASON_SCOPE_ESCALATION;
			g->refused_scope = g->sc.v[i];
			return false;
		}
	}
	for (size_t i = 0; i < g->sc.n; i++) {
		if (scope_action_class(vm, g->sc.v[i]) > me->max_scope_per_delegation) {
			g->reason = "scope_exceeds_max_per_delegation";
			g->refused_scope = g->sc.v[i];
			return false;
		}
	}
	if (g->parent_depth + 1 > me->max_chain_depth ||
	    g->parent_depth + 1 > g->target->max_chain_depth) {
		g->reason = "chain_depth_exceeded";
		return false;
	}
	if (g->ttl_s > 0 && now_s + g->ttl_s > g->parent_exp_s) {
		g->reason = "chain_lifetime_exceeds_parent";
		return false;
	}
	/* Any class a scope could do counts, not only its highest: "cloud:*"
	 * is admin, and writes too. */
	for (size_t i = 0; i < g->sc.n; i++) {
		unsigned k = scope_action_classes(vm, g->sc.v[i]);

		if ((me->requires_human_approval_for & k) != 0 && g->approval_id == NULL) {
			g->reason = "approval_required";
			return false;
		}
	}
	return true;
}

static struct store_stmt st_task_share = {
    "deleg_task_share", "SELECT status, expires_at > now() FROM tasks WHERE id = $1 FOR SHARE", 1,
    0};

/*
 * The parent and its ancestors, root first, share-locked: POST /revoke
 * updates revoked_at (a FOR NO KEY UPDATE lock, which FOR SHARE conflicts
 * with), so a revocation of any link either commits first and is seen here
 * (the locked row is read again as committed) or waits for this
 * delegation's COMMIT and then reaches the new token too.  Locked root
 * first, the order a revocation of an ancestor locks its subtree in, so
 * the two never wait on each other in a cycle.
 */
static struct store_stmt st_chain = {
    "deleg_chain",
    "WITH RECURSIVE c(jti, parent_jti, n) AS ("
    " SELECT jti, parent_jti, 0 FROM delegation_tokens WHERE jti = $1 AND task_id = $2"
    " UNION ALL SELECT d.jti, d.parent_jti, c.n + 1 FROM delegation_tokens d"
    " JOIN c ON d.jti = c.parent_jti WHERE c.n < 64)"
    " SELECT d.agent_id, d.depth, d.revoked_at IS NOT NULL,"
    " floor(extract(epoch FROM d.issued_at))::bigint FROM c JOIN delegation_tokens d"
    " ON d.jti = c.jti ORDER BY c.n DESC FOR SHARE OF d",
    2, 0};

/*
 * The delegate and every agent of the stored chain (the delegator last) as
 * PostgreSQL has them now, their rows share-locked in id order (the order
 * the registry's touches lock theirs in): id, status, revocation epoch (ms,
 * 0: none).  A suspension or decommissioning is an UPDATE of the row,
 * which FOR SHARE conflicts with, so one committed before this read is
 * seen here even while this instance's registry has not yet heard of it,
 * and one that comes later waits for this delegation's COMMIT (and its
 * revocation epoch, stamped then, cuts the new token with the rest).
 */
static struct store_stmt st_agents_share = {
    "deleg_agents_share",
    "SELECT id, status, coalesce(floor(extract(epoch FROM revocation_epoch) * 1000)::bigint, 0)"
    " FROM agents WHERE id = ANY($1::text[]) ORDER BY id FOR SHARE",
    1, 0};

static struct store_stmt st_insert = {
    "deleg_insert",
    "INSERT INTO delegation_tokens (jti, task_id, parent_jti, agent_id, scope, depth, "
    "chain_hash, kid, issued_at, expires_at, approval_id) VALUES ($1, $2, $3, $4, $5::text[], "
    "$6::int, $7, $8, to_timestamp($9::bigint), to_timestamp($10::bigint), $11)",
    11, 0};

/* What an approval of g is bound to; strings borrowed from g. */
static struct approval_subject
subject_of(const struct deleg *g)
{
	return (struct approval_subject){
	    .kind = APPROVAL_DELEGATION,
	    .agent_id = g->who.agent->id,
	    .task_id = g->task_id,
	    .human = g->human,
	    .scope = g->sc.joined,
	    .target = g->to_agent,
	    .reason = "approval_required",
	    .request_id = http_req_id(g->req),
	    .chain = g->agents[0] != '\0' ? g->agents : NULL,
	};
}

/*
 * Whether the stored link from `from` to `to` still stands as from's
 * constraints are now, for the scopes passed on: to in from's delegate_to,
 * no requested scope above from's max_scope_per_delegation (the codes a
 * new link is refused with).  false with g->reason otherwise.
 */
static bool
link_ok(struct deleg *g, const struct registry_agent *from, const struct registry_agent *to)
{
	const struct scope_verb_map *vm = scope_verb_map_current();

	if (!delegation_may_delegate_to(from, to)) {
		g->reason = "chain_delegate_not_allowed";
		return false;
	}
	for (size_t j = 0; from->max_scope_per_delegation < IDP_ACTION_ADMIN && j < g->sc.n; j++) {
		if (scope_action_class(vm, g->sc.v[j]) > from->max_scope_per_delegation) {
			g->reason = "scope_exceeds_max_per_delegation";
			g->refused_scope = g->sc.v[j];
			return false;
		}
	}
	return true;
}

/*
 * Every agent on the stored chain allows depth and is still what its link
 * was issued to: active, and not revoked after the link (a suspension cuts
 * the links before it, a resume does not bring them back), and still holds
 * the scopes passed on (an ancestor's narrowed capabilities bind every
 * delegation below it), and each link is still one its delegator may make
 * (link_ok: a delegate_to or max_scope_per_delegation tightened since binds
 * what was delegated before), as introspection and POST /v1/token judge
 * the chain; false with g->reason otherwise.
 */
/*
 * One agent a of the stored chain, whose link was issued at iat_s by prev
 * (NULL for the root): see chain_ok.  false with g->reason otherwise.
 */
static bool
chain_agent_ok(struct deleg *g, const struct registry_agent *a, const struct registry_agent *prev,
               int depth, int64_t iat_s)
{
	if (depth > a->max_chain_depth) {
		g->reason = "chain_depth_exceeded";
		return false;
	}
	if (a->status != REGISTRY_ACTIVE || registry_issued_before_revocation(a, iat_s)) {
		g->reason = "chain_agent_inactive";
		return false;
	}
	for (size_t j = 0; j < g->sc.n; j++) {
		if (!registry_agent_can(a, g->sc.v[j])) {
			g->reason = "scope_outside_chain_capabilities";
			g->refused_scope = g->sc.v[j];
			return false;
		}
	}
	return prev == NULL || link_ok(g, prev, a);
}

static bool
chain_ok(struct deleg *g, PGresult *r, int depth)
{
	const struct registry_agent *prev = NULL;
	int n = PQntuples(r);
	bool ok = true;

	/* The stored parent (the last row) must be the token presented, held by the caller. */
	if (n != g->parent_depth + 1 || n > CHAIN_MAX ||
	    strcmp(PQgetvalue(r, n - 1, 0), g->who.agent->id) != 0) {
		g->reason = "chain_broken";
		return false;
	}
	for (int i = 0; i < n; i++) {
		if (strcmp(PQgetvalue(r, i, 2), "t") == 0) {
			g->reason = "chain_token_revoked";
			return false;
		}
	}
	for (int i = 0; ok && i < n; i++) {
		const struct registry_agent *a = NULL;
		int rc = registry_get(PQgetvalue(r, i, 0), &a);

		if (rc != IDP_OK) {
			g->reason = rc == IDP_EUNAVAIL ? "unavailable" : "chain_agent_unknown";
			ok = false;
			break;
		}
		ok = chain_agent_ok(g, a, prev, depth, strtoll(PQgetvalue(r, i, 3), NULL, 10));
		registry_agent_unref(prev);
		prev = a;
	}
	registry_agent_unref(prev);
	return ok;
}

/* The row of r (st_agents_share) for agent id, or -1. */
static int
agent_row(PGresult *r, const char *id)
{
	for (int i = 0; i < PQntuples(r); i++)
		if (strcmp(PQgetvalue(r, i, 0), id) == 0)
			return i;
	return -1;
}

/*
 * The agents' status once more, from their rows rather than the registry
 * cache, which learns of a change by a notification that may still be on
 * its way (st_agents_share): the delegate active, and each agent of the
 * stored chain (chain, st_chain's rows) active and its link issued after
 * its revocation epoch.  The codes are those of the cached checks.
 * IDP_OK; IDP_EFORBIDDEN with g->reason; a store error.
 */
static int
agents_live(struct deleg *g, struct store_conn *c, PGresult *chain)
{
	struct idp_buf ids;
	const char *params[1];
	PGresult *r = NULL;
	int n = PQntuples(chain), row, rc;

	/* Quoted: an id may be spelled "null".  Ids are [a-z0-9._-] (a CHECK
	 * of agents; the chain's rows reference them), nothing to escape. */
	idp_buf_init(&ids, 0);
	rc = idp_buf_printf(&ids, "{\"%s\"", g->to_agent);
	for (int i = 0; rc == IDP_OK && i < n; i++)
		rc = idp_buf_printf(&ids, ",\"%s\"", PQgetvalue(chain, i, 0));
	if (rc == IDP_OK)
		rc = idp_buf_putc(&ids, '}');
	if (rc != IDP_OK)
		goto done;
	params[0] = ids.data;
	rc = store_exec(c, &st_agents_share, params, &r);
	if (rc != IDP_OK)
		goto done;
	row = agent_row(r, g->to_agent);
	if (row < 0 || strcmp(PQgetvalue(r, row, 1), "active") != 0) {
		g->reason = row < 0 ? "chain_delegate_unknown" : "chain_delegate_not_active";
		rc = IDP_EFORBIDDEN;
		goto done;
	}
	for (int i = 0; i < n; i++) {
		struct registry_agent epoch = {0};

		row = agent_row(r, PQgetvalue(chain, i, 0));
		if (row < 0) {
			g->reason = "chain_agent_unknown";
			rc = IDP_EFORBIDDEN;
			goto done;
		}
		epoch.revocation_epoch_ms = strtoll(PQgetvalue(r, row, 2), NULL, 10);
		if (strcmp(PQgetvalue(r, row, 1), "active") != 0 ||
		    registry_issued_before_revocation(&epoch,
		                                      strtoll(PQgetvalue(chain, i, 3), NULL, 10))) {
			g->reason = "chain_agent_inactive";
			rc = IDP_EFORBIDDEN;
			goto done;
		}
	}
done:
	PQclear(r);
	idp_buf_cleanup(&ids);
	return rc;
}

/*
 * The checks the database answers, in the caller's open transaction on c:
 * the task is open (its row share-locked, so a completion either waits for
 * the caller's COMMIT or is seen here), the stored chain is live
 * (chain_ok), and so are its agents and the delegate as their rows say
 * (agents_live: a suspension committed elsewhere is seen here, or waits).
 * IDP_OK; IDP_EFORBIDDEN with g->reason; another code when the store fails
 * (the caller rolls back).
 */
static int
tx_checks(struct deleg *g, struct store_conn *c)
{
	const char *params[2];
	PGresult *r = NULL;
	int rc;

	params[0] = g->task_id;
	rc = store_exec(c, &st_task_share, params, &r);
	if (rc != IDP_OK)
		return rc;
	if (PQntuples(r) != 1 || strcmp(PQgetvalue(r, 0, 0), "open") != 0 ||
	    strcmp(PQgetvalue(r, 0, 1), "t") != 0) {
		PQclear(r);
		g->reason = "task_not_open";
		return IDP_EFORBIDDEN;
	}
	PQclear(r);
	r = NULL;
	params[0] = g->parent_jti;
	params[1] = g->task_id;
	rc = store_exec(c, &st_chain, params, &r);
	if (rc != IDP_OK)
		return rc;
	if (!chain_ok(g, r, g->parent_depth + 1))
		rc = strcmp(g->reason, "unavailable") == 0 ? IDP_EUNAVAIL : IDP_EFORBIDDEN;
	else
		rc = agents_live(g, c, r);
	PQclear(r);
	return rc;
}

/*
 * Before a request that needs an approval is recorded as pending, the
 * checks the database answers, in a transaction rolled back at once: an
 * approval is asked for only when every check passes, so a closed task or
 * a revoked chain is refused here, not put in front of a human.  The
 * delegation's own transaction runs them again when the approval is spent.
 * Same results as tx_checks.
 */
static int
precheck(struct deleg *g)
{
	struct store_conn *c = NULL;
	int rc;

	if (store_acquire(store, &c) != IDP_OK)
		return IDP_EUNAVAIL;
	rc = store_cmd(c, "BEGIN");
	if (rc == IDP_OK)
		rc = tx_checks(g, c);
	if (store_cmd(c, "ROLLBACK") != IDP_OK)
		store_discard(c);
	store_release(store, c);
	return rc;
}

/*
 * The transaction.  IDP_EFORBIDDEN with g->reason for a refusal found in
 * the database, IDP_EUNAVAIL when the store or the audit log is down.
 */
static int
issue(struct deleg *g, int64_t now_ms)
{
	struct keys *km = keys_process();
	struct idp_jws_key *key = NULL;
	struct store_conn *c = NULL;
	PGresult *r = NULL;
	json_t *claims = NULL;
	char *scopes = NULL;
	char depth[16], iat[24], exp[24];
	const char *params[11];
	uint8_t h[TASK_CHAIN_HASH_LEN];
	int64_t not_after = 0, exp_ms;
	bool ok;
	int rc;

	if (km == NULL || keys_signing_key(km, &key, &not_after) != IDP_OK)
		return IDP_EUNAVAIL;
	exp_ms = g->ttl_s > 0 ? now_ms + g->ttl_s * 1000 : g->parent_exp_s * 1000;
	if (exp_ms > g->parent_exp_s * 1000)
		exp_ms = g->parent_exp_s * 1000;
	if (exp_ms > now_ms + keys_max_token_lifetime_ms(km))
		exp_ms = now_ms + keys_max_token_lifetime_ms(km);
	if (exp_ms > not_after)
		exp_ms = not_after;
	g->exp_s = exp_ms / 1000;
	if (g->exp_s <= now_ms / 1000) {
		rc = IDP_EUNAVAIL;
		goto done;
	}
	if (attest_jti_new(g->jti) != IDP_OK ||
	    delegation_chain_parse(
	        json_string_value(json_object_get(g->parent.claims, "delegation_chain_hash")), h) !=
	        IDP_OK ||
	    task_chain_next(h, g->to_agent, g->jti, g->sc.joined, h) != IDP_OK) {
		rc = IDP_EINTERNAL;
		goto done;
	}
	task_chain_format(h, g->chain);
	claims = delegation_claims(
	    &(struct delegation_token){
	        .issuer = issuer,
	        .audience = audience,
	        .agent_id = g->to_agent,
	        .delegator = g->who.agent->id,
	        .jti = g->jti,
	        .task_id = g->task_id,
	        .scope = g->sc.joined,
	        .human = g->human,
	        .chain_hash = g->chain,
	        .depth = g->parent_depth + 1,
	        .iat_s = now_ms / 1000,
	        .exp_s = g->exp_s,
	    },
	    json_object_get(g->parent.claims, "act"));
	scopes = task_scopes_pg_array(&g->sc);
	if (claims == NULL || scopes == NULL ||
	    idp_jws_sign(key, TASK_TOKEN_TYP, claims, &g->token, NULL, NULL) != IDP_OK) {
		rc = IDP_EINTERNAL;
		goto done;
	}

	if (store_acquire(store, &c) != IDP_OK) {
		rc = IDP_EUNAVAIL;
		goto done;
	}
	rc = store_cmd(c, "BEGIN");
	if (rc != IDP_OK)
		goto done;
	rc = tx_checks(g, c);
	if (rc != IDP_OK)
		goto done;
	if (g->approval_id != NULL) {
		struct approval_subject s = subject_of(g);
		const char *why = NULL;

		rc = approval_consume_in(c, g->approval_id, &s, g->jti, &why);
		if (rc == IDP_EFORBIDDEN) {
			g->reason = why;
			goto done;
		}
		if (rc != IDP_OK) {
			rc = IDP_EUNAVAIL;
			goto done;
		}
	}
	snprintf(depth, sizeof(depth), "%d", g->parent_depth + 1);
	snprintf(iat, sizeof(iat), "%lld", (long long)(now_ms / 1000));
	snprintf(exp, sizeof(exp), "%lld", (long long)g->exp_s);
	params[0] = g->jti;
	params[1] = g->task_id;
	params[2] = g->parent_jti;
	params[3] = g->to_agent;
	params[4] = scopes;
	params[5] = depth;
	params[6] = g->chain;
	params[7] = idp_jws_key_kid(key);
	params[8] = iat;
	params[9] = exp;
	params[10] = g->approval_id;
	rc = store_exec(c, &st_insert, params, &r);
	if (rc != IDP_OK)
		goto done;
	emit_event(g, AUDIT_DELEGATION_CREATED, AUDIT_OUTCOME_SUCCESS,
	           json_pack("{s:s,s:s,s:s,s:i,s:s,s:I,s:s?}", "to_agent", g->to_agent,
	                     "parent_jti", g->parent_jti, "delegation_chain_hash", g->chain,
	                     "depth", g->parent_depth + 1, "kid", idp_jws_key_kid(key), "exp",
	                     (json_int_t)g->exp_s, "approval_id", g->approval_id),
	           &ok);
	if (!ok) {
		rc = IDP_EUNAVAIL;
		goto done;
	}
	rc = store_cmd(c, "COMMIT");
	if (rc != IDP_OK) {
		log_error("delegation: COMMIT failed after delegation.created for %s was written",
		          g->jti);
		rc = IDP_EUNAVAIL;
	} else {
		revocation_note_delegation(g->jti, g->parent_jti, g->task_id, g->to_agent,
		                           g->sc.joined, g->parent_depth + 1, now_ms / 1000,
		                           g->exp_s, g->approval_id != NULL);
	}
done:
	PQclear(r);
	if (c != NULL) {
		if (rc != IDP_OK && store_cmd(c, "ROLLBACK") != IDP_OK)
			store_discard(c);
		store_release(store, c);
	}
	idp_jws_key_unref(key);
	json_decref(claims);
	free(scopes);
	if (rc != IDP_OK && g->token != NULL) {
		idp_wipe(g->token, strlen(g->token));
		free(g->token);
		g->token = NULL;
	}
	return rc;
}

/*
 * Every check passed but an approval is required: record a pending
 * approval bound to this request and answer 202 with where to watch it.
 */
static void
require_approval(struct deleg *g)
{
	struct approval_subject s = subject_of(g);
	char id[APPROVAL_ID_MAX + 1], when[32], location[APPROVAL_ID_MAX + 20];
	int64_t expires_s = 0;
	bool ok;
	int rc = approval_request(&s, id, &expires_s);

	if (rc != IDP_OK) {
		/* Only a bug makes this subject invalid: it passed every check. */
		http_reply_error(g->req, rc == IDP_EINVAL ? IDP_EINTERNAL : IDP_EUNAVAIL,
		                 "the approval cannot be requested now");
		return;
	}
	emit_event(g, AUDIT_DELEGATION_DENIED, AUDIT_OUTCOME_PENDING,
	           json_pack("{s:s,s:s,s:s,s:s}", "reason", g->reason, "to_agent", g->to_agent,
	                     "requested_scope", g->sc.joined, "approval_id", id),
	           &ok);
	if (!ok)
		log_warn("delegation: cannot record the approval requirement");
	idp_time_format(expires_s * 1000, when);
	snprintf(location, sizeof(location), "/v1/approvals/%s", id);
	http_add_header(g->req, "Location", location);
	http_reply_json(g->req, 202,
	                json_pack("{s:s,s:s,s:s,s:s,s:s}", "decision", "REQUIRE_APPROVAL", "reason",
	                          g->reason, "approval_id", id, "status", "pending", "expires_at",
	                          when));
}

static void
post_delegation(struct http_req *req, void *ctx)
{
	struct deleg g = {.req = req};
	struct idp_diag d;
	const char *why = NULL, *tok;
	json_t *body = NULL, *v;
	int64_t now_ms, ttl_ms = 0;
	int rc;

	(void)ctx;
	rc = authenticate_agent(req, &g.who, &why);
	if (rc != IDP_OK) {
		log_info("delegation: agent authentication failed: %s", why ? why : "unknown");
		g.who.agent = NULL;
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
	tok = json_string_value(json_object_get(body, "delegation_token"));
	if (tok == NULL)
		idp_diag_add(&d, "delegation_token: required, the caller's delegation token");
	g.to_agent = json_string_value(json_object_get(body, "to_agent"));
	if (g.to_agent == NULL)
		idp_diag_add(&d, "to_agent: required, an agent id");
	else if (!registry_id_valid(g.to_agent))
		idp_diag_add(&d,
		             "to_agent: not an agent id (1 to %d of a-z 0-9 . _ -, starting "
		             "with a letter or digit)",
		             REGISTRY_ID_MAX);
	(void)task_scopes_parse(json_object_get(body, "scope"), &g.sc, &d);
	v = json_object_get(body, "ttl");
	if (v != NULL) {
		if (json_is_integer(v) && json_integer_value(v) > 0 &&
		    json_integer_value(v) <= 366LL * 86400)
			ttl_ms = (int64_t)json_integer_value(v) * 1000;
		else if (!json_is_string(v) ||
		         idp_duration_parse(json_string_value(v), &ttl_ms) != IDP_OK ||
		         ttl_ms < 1000)
			idp_diag_add(&d,
			             "ttl: a positive duration (\"30m\") or a number of seconds");
		g.ttl_s = ttl_ms / 1000;
	}
	v = json_object_get(body, "approval_id");
	if (v != NULL) {
		if (!json_is_string(v) || json_string_length(v) == 0 ||
		    json_string_length(v) > APPROVAL_ID_MAX ||
		    strlen(json_string_value(v)) != json_string_length(v))
			idp_diag_add(&d, "approval_id: the id of an approval, a string");
		else
			g.approval_id = json_string_value(v);
	}
	http_json_unknown_members(body,
	                          (const char *const[]){"delegation_token", "to_agent", "scope",
	                                                "ttl", "approval_id", NULL},
	                          &d);
	if (d.count > 0) {
		http_reply_problem(req, 400, "invalid_request",
		                   json_pack("{s:o}", "errors", http_diag_lines(&d)),
		                   "the delegation request is not valid");
		goto done;
	}
	if (!parent_verify(&g, tok)) {
		if (strcmp(g.reason, "unavailable") == 0)
			http_reply_error(req, IDP_EUNAVAIL, "cannot verify tokens now");
		else
			deny(&g, 403, g.reason);
		goto done;
	}
	now_ms = idp_now_ms(idp_clock_system());
	if (!check_request(&g, now_ms / 1000)) {
		if (strcmp(g.reason, "unavailable") == 0) {
			http_reply_error(req, IDP_EUNAVAIL, "the registry is not reachable");
		} else if (strcmp(g.reason, "approval_required") == 0) {
			rc = precheck(&g);
			if (rc == IDP_OK)
				require_approval(&g);
			else if (rc == IDP_EFORBIDDEN)
				deny(&g, 403, g.reason);
			else
				http_reply_error(req, IDP_EUNAVAIL,
				                 "the delegation cannot be checked now");
		} else {
			deny(&g, 403, g.reason);
		}
		goto done;
	}
	rc = issue(&g, now_ms);
	switch (rc) {
	case IDP_OK:
		http_reply_json(req, 201,
		                json_pack("{s:s,s:s,s:s,s:I,s:s,s:i}", "delegation_token", g.token,
		                          "token_type", TASK_TOKEN_TYP, "jti", g.jti, "expires_in",
		                          (json_int_t)(g.exp_s - now_ms / 1000),
		                          "delegation_chain_hash", g.chain, "depth",
		                          g.parent_depth + 1));
		idp_wipe(g.token, strlen(g.token));
		free(g.token);
		break;
	case IDP_EFORBIDDEN:
		deny(&g, 403, g.reason);
		break;
	default:
		http_reply_error(req, rc == IDP_EINTERNAL ? IDP_EINTERNAL : IDP_EUNAVAIL,
		                 "the delegation cannot be made now");
	}
done:
	json_decref(body);
	idp_jws_verified_cleanup(&g.parent);
	registry_agent_unref(g.target);
	agent_principal_cleanup(&g.who);
}

int
delegation_routes(struct http_router *r, struct idpd_app *app)
{
	(void)app;
	return http_router_add(r, HTTP_POST, "/v1/delegations", post_delegation, NULL);
}
