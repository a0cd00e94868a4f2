/*
 * revoke.c - POST /revoke (RFC 7009): revoke an access token or a
 * delegation token, and with a delegation token everything derived from it.
 *
 * Callers: an operator key with the admin role (Bearer or HTTP Basic), an
 * agent with its identity credential when it is the token's subject or an
 * agent on the token's chain (a delegator may revoke what it delegated), or
 * the task's human with a token of an [[idp]].  A well-formed request from
 * such a caller is answered 200 whatever the token: one that does not
 * verify, has expired or is already revoked is already unusable, and RFC
 * 7009 section 2.2 wants the client not to care.
 *
 * A delegation token is revoked with its whole subtree in one transaction:
 * revoked_at on every token of the subtree (a recursive CTE over
 * parent_jti), a revoked_tokens row saying who and why, the
 * delegation.revoked event, COMMIT.  An access token gets a revoked_tokens
 * row and a token.revoked event.  Access tokens issued under a revoked
 * delegation token need no row: every check walks their ancestors.  The
 * triggers notify every instance; this one installs the change itself
 * before it answers.
 *
 * An agent's identity credential (typ idpd-agent+jwt) may be revoked too,
 * by an admin or by the agent itself: agent_credentials.revoked_at, which
 * authenticate_agent reads on every use, and a token.revoked event.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "idpd/agent_auth.h"
#include "idpd/audit_refusal.h"
#include "idpd/attest.h"
#include "idpd/audit_writer.h"
#include "idpd/caller.h"
#include "idpd/clock.h"
#include "idpd/http.h"
#include "idpd/human_auth.h"
#include "idpd/jws.h"
#include "idpd/keys.h"
#include "idpd/log.h"
#include "idpd/registry.h"
#include "idpd/tasks.h"
#include "revocation_int.h"

#define REASON_MAX 256
/* Revoked jtis an event lists at most; the count is always complete. */
#define EVENT_JTIS 100

/* The token as far as revocation needs it. */
struct target {
	bool access;
	const char *jti, *sub, *task_id, *human, *chain_jti;
	int64_t exp_s;
};

static struct store *store;

/*
 * Authenticate the caller; on failure answer the request and return false.
 * An operator key must have the admin role.
 */
static bool
identify(struct http_req *req, struct caller *c)
{
	struct auth_principal op;
	const char *why = NULL, *why_agent = NULL;
	int rc;

	memset(c, 0, sizeof(*c));
	rc = rev_operator_key(req, &op);
	if (rc == IDP_OK) {
		if ((op.roles & IDPD_ROLE_ADMIN) == 0) {
			http_reply_oauth_error(req, 400, "unauthorized_client",
			                       "an operator key needs the admin role to revoke");
			return false;
		}
		c->kind = CALLER_OPERATOR;
		snprintf(c->name, sizeof(c->name), "%s", op.name);
		return true;
	}
	if (rc == IDP_ENOTFOUND && http_req_bearer(req) != NULL) {
		rc = caller_authenticate(req, c, &why, &why_agent);
		if (rc == IDP_OK)
			return true;
		if (rc == IDP_EUNAVAIL) {
			http_reply_error(req, IDP_EUNAVAIL, "cannot authenticate now");
			return false;
		}
		log_info("revoke: caller not authenticated (human: %s, agent: %s)",
		         why != NULL ? why : "-", why_agent != NULL ? why_agent : "-");
		audit_refused(req, AUDIT_ACTOR_NONE, NULL, NULL,
		              caller_refusal_reason(why, why_agent));
	} else if (rc != IDP_ENOTFOUND) {
		audit_refused(req, AUDIT_ACTOR_NONE, NULL, NULL, "unknown_key");
	}
	http_add_header(req, "WWW-Authenticate", "Basic realm=\"idpd\", Bearer realm=\"idpd\"");
	http_reply_oauth_error(req, 401, "invalid_client",
	                       "an admin API key, an agent's identity credential or the task's "
	                       "human token is required");
	return false;
}

/*
 * Verify token as an access or delegation token of this issuer, not
 * expired at now.  IDP_OK with *v and *t filled (t points into v); IDP_EUNAUTH
 * for a token that is not one (nothing to revoke); IDP_EUNAVAIL without keys.
 */
static int
verify(const char *token, const char *hint, int64_t now, struct idp_jws_verified *v,
       struct target *t)
{
	bool deleg_first = hint != NULL && strcmp(hint, "delegation_token") == 0;
	/* Either s: a twin names the same jti, and a revocation must never do
	 * nothing for a token idpd issued. */
	const struct idp_jws_verify_opts opts[2] = {
	    {.typ = deleg_first ? TASK_TOKEN_TYP : ACCESS_TOKEN_TYP},
	    {.typ = deleg_first ? ACCESS_TOKEN_TYP : TASK_TOKEN_TYP}};
	enum idp_jws_reason why = IDP_JWS_OK;
	const char *iss;
	size_t which = 0;
	int rc;

	memset(t, 0, sizeof(*t));
	/*
	 * A key published elsewhere a moment ago is looked up before the token
	 * is called none of ours, and one that may be missing answers 503:
	 * "nothing to revoke" would tell the caller its token is dead when it
	 * may not be.  A pooled route: the read may wait.
	 */
	rc = keys_verify_own(keys_process(), token, strlen(token), opts, 2, true, v, &which, &why);
	if (rc == IDP_EUNAVAIL)
		return IDP_EUNAVAIL;
	if (rc != IDP_OK) {
		log_debug("revoke: the token does not verify (%s); nothing to revoke",
		          idp_jws_reason_name(why));
		return IDP_EUNAUTH;
	}
	t->access = strcmp(opts[which].typ, ACCESS_TOKEN_TYP) == 0;
	iss = json_string_value(json_object_get(v->claims, "iss"));
	t->jti = json_string_value(json_object_get(v->claims, "jti"));
	t->sub = json_string_value(json_object_get(v->claims, "sub"));
	t->task_id = json_string_value(json_object_get(v->claims, "task_id"));
	t->human = json_string_value(json_object_get(v->claims, "human_principal"));
	t->chain_jti =
	    t->access ? json_string_value(json_object_get(v->claims, ACCESS_CLAIM_DELEGATION_JTI))
	              : t->jti;
	t->exp_s = (int64_t)json_integer_value(json_object_get(v->claims, "exp"));
	if (iss == NULL || strcmp(iss, rev_identity()->issuer) != 0 || !rev_jti_ok(t->jti) ||
	    t->sub == NULL || t->task_id == NULL || t->exp_s <= now) {
		idp_jws_verified_cleanup(v);
		memset(t, 0, sizeof(*t));
		return IDP_EUNAUTH;
	}
	return IDP_OK;
}

/* ---- SQL ---- */

/* A token and its ancestors, nearest first, with their agents. */
static struct store_stmt st_chain = {
    "revoke_chain",
    "WITH RECURSIVE c AS (SELECT jti, parent_jti, agent_id, task_id, 0 AS n FROM "
    "delegation_tokens WHERE jti = $1 UNION ALL SELECT d.jti, d.parent_jti, d.agent_id, "
    "d.task_id, c.n + 1 FROM delegation_tokens d JOIN c ON d.jti = c.parent_jti WHERE c.n < 64) "
    "SELECT agent_id, task_id FROM c ORDER BY n",
    1, 0};

static struct store_stmt st_task_idp = {"revoke_task_idp", "SELECT idp FROM tasks WHERE id = $1", 1,
                                        0};

/*
 * The revoked token's row, locked before its subtree is read: a delegation
 * being made under it holds its chain's rows share-locked (delegation.c), so
 * this waits for it to commit, and the subtree read next, in a statement of
 * its own (a snapshot of its own), holds the new token too.  A delegation
 * that starts after this waits for the revocation and sees it.
 */
static struct store_stmt st_lock_target = {
    "revoke_lock_target", "SELECT 1 FROM delegation_tokens WHERE jti = $1 FOR NO KEY UPDATE", 1, 0};

static struct store_stmt st_revoke_subtree = {
    "revoke_subtree",
    "WITH RECURSIVE s AS (SELECT jti, 0 AS n FROM delegation_tokens WHERE jti = $1 "
    "UNION ALL SELECT d.jti, s.n + 1 FROM delegation_tokens d JOIN s ON d.parent_jti = s.jti "
    "WHERE s.n < 64) UPDATE delegation_tokens SET revoked_at = now() WHERE jti IN "
    "(SELECT jti FROM s) AND revoked_at IS NULL RETURNING jti",
    1, 0};

static struct store_stmt st_credential = {
    "revoke_credential",
    "UPDATE agent_credentials SET revoked_at = now() WHERE jti = $1 AND agent_id = $2 AND "
    "revoked_at IS NULL RETURNING jti",
    2, 0};

static struct store_stmt st_record = {
    "revoke_record",
    "INSERT INTO revoked_tokens (jti, kind, task_id, agent_id, expires_at, revoked_by, reason) "
    "VALUES ($1, $2, $3, $4, to_timestamp($5::bigint), $6, $7) ON CONFLICT (jti) DO NOTHING "
    "RETURNING jti",
    7, 0};

/* ---- audit ---- */

/* Emit the revocation's event; detail is stolen.  IDP_OK once durable. */
static int
emit(struct http_req *req, const struct caller *who, const struct target *t,
     enum audit_outcome outcome, PGresult *chain, json_t *detail)
{
	struct audit_event *ev = audit_event_new(
	    t->access ? AUDIT_TOKEN_REVOKED : AUDIT_DELEGATION_REVOKED, AUDIT_TIME_UNSET);
	const char *peer = http_req_peer(req);
	int rc = IDP_OK;

	if (ev == NULL) {
		json_decref(detail);
		return IDP_EINTERNAL;
	}
	audit_event_set_outcome(ev, outcome);
	if (audit_event_set(ev, AUDIT_F_TASK_ID, t->task_id) != IDP_OK ||
	    audit_event_set(ev, AUDIT_F_HUMAN_PRINCIPAL, t->human) != IDP_OK ||
	    audit_event_set(ev, AUDIT_F_AGENT_ID, t->sub) != IDP_OK ||
	    audit_event_set(ev, AUDIT_F_TOKEN_ID, t->jti) != IDP_OK ||
	    audit_event_set(ev, AUDIT_F_REQUEST_ID, http_req_id(req)) != IDP_OK ||
	    (peer[0] != '\0' && audit_event_set(ev, AUDIT_F_SOURCE_ADDRESS, peer) != IDP_OK) ||
	    audit_event_set_actor(ev, caller_actor_kind(who), who->name) != IDP_OK ||
	    (t->human != NULL && audit_event_chain_append(ev, t->human) != IDP_OK))
		rc = IDP_EINTERNAL;
	/* The chain's agents, root first (the result is nearest first). */
	for (int i = chain != NULL ? PQntuples(chain) - 1 : -1; rc == IDP_OK && i >= 0; i--)
		if (audit_event_chain_append(ev, PQgetvalue(chain, i, 0)) != IDP_OK)
			rc = IDP_EINTERNAL;
	if (rc == IDP_OK && detail != NULL && audit_event_set_detail(ev, detail) != IDP_OK)
		rc = IDP_EINTERNAL;
	json_decref(detail);
	if (rc != IDP_OK) {
		log_error("revoke: bug: cannot build the revocation event");
		audit_event_free(ev);
		return rc;
	}
	return audit_emit(ev) == IDP_OK ? IDP_OK : IDP_EUNAVAIL;
}

/*
 * Whether who may revoke t, whose chain (agents, nearest first) is chain
 * and whose task's human authenticated with [[idp]] task_idp (NULL: not
 * known).
 */
static bool
may_revoke(const struct caller *who, const struct target *t, PGresult *chain, const char *task_idp)
{
	switch (who->kind) {
	case CALLER_OPERATOR:
		return true;
	case CALLER_HUMAN:
		/* The task's human, of the task's provider: another [[idp]] may
		 * assert the same principal for someone else. */
		return t->human != NULL && strcmp(t->human, who->name) == 0 && task_idp != NULL &&
		       strcmp(task_idp, who->idp) == 0;
	case CALLER_AGENT:
		if (strcmp(t->sub, who->name) == 0)
			return true;
		for (int i = 0; chain != NULL && i < PQntuples(chain); i++)
			if (strcmp(PQgetvalue(chain, i, 0), who->name) == 0)
				return true;
		return false;
	}
	return false;
}

static void
rollback(struct store_conn *c)
{
	if (store_cmd(c, "ROLLBACK") != IDP_OK)
		store_discard(c);
}

/*
 * The transaction.  IDP_OK (revoked, or nothing left to revoke);
 * IDP_EFORBIDDEN when who may not revoke t; IDP_EUNAVAIL when the
 * database or the audit log cannot take it.  *revoked gets the delegation
 * jtis revoked (PQclear it).
 */
static int
revoke_tx(struct http_req *req, const struct caller *who, const struct target *t,
          const char *reason, PGresult **revoked, bool *recorded)
{
	struct store_conn *c = NULL;
	PGresult *chain = NULL, *r = NULL, *task = NULL;
	char exp[24], by[HUMAN_PRINCIPAL_MAX + 16];
	const char *params[7];
	json_t *jtis = NULL;
	int rc;

	*revoked = NULL;
	*recorded = false;
	if (store_acquire(store, &c) != IDP_OK)
		return IDP_EUNAVAIL;
	rc = store_cmd(c, "BEGIN");
	if (rc != IDP_OK)
		goto done;
	if (t->chain_jti != NULL) {
		params[0] = t->chain_jti;
		rc = store_exec(c, &st_chain, params, &chain);
		if (rc == IDP_EINVAL) {
			rc = IDP_OK;
			chain = NULL;
		} else if (rc != IDP_OK) {
			goto done;
		}
	}
	if (who->kind == CALLER_HUMAN && t->task_id != NULL) {
		params[0] = t->task_id;
		rc = store_exec(c, &st_task_idp, params, &task);
		if (rc == IDP_EINVAL) {
			rc = IDP_OK; /* not a task id PostgreSQL can take: no such task */
			task = NULL;
		} else if (rc != IDP_OK) {
			goto done;
		}
	}
	if (!may_revoke(who, t, chain,
	                task != NULL && PQntuples(task) == 1 ? PQgetvalue(task, 0, 0) : NULL)) {
		rc = IDP_EFORBIDDEN;
		goto done;
	}
	if (!t->access && (chain == NULL || PQntuples(chain) == 0)) {
		/* Not recorded (cleaned up after its expiry): nothing to revoke. */
		goto done;
	}
	if (!t->access) {
		params[0] = t->jti;
		rc = store_exec(c, &st_lock_target, params, &r);
		PQclear(r);
		r = NULL;
		if (rc == IDP_OK)
			rc = store_exec(c, &st_revoke_subtree, params, revoked);
		if (rc != IDP_OK)
			goto done;
	}
	snprintf(exp, sizeof(exp), "%lld", (long long)t->exp_s);
	snprintf(by, sizeof(by), "%s:%s",
	         who->kind == CALLER_OPERATOR ? "operator"
	         : who->kind == CALLER_AGENT  ? "agent"
	                                      : "human",
	         who->name);
	params[0] = t->jti;
	params[1] = t->access ? "access" : "delegation";
	params[2] = t->task_id;
	params[3] = t->sub;
	params[4] = exp;
	params[5] = by;
	params[6] = reason;
	rc = store_exec(c, &st_record, params, &r);
	if (rc != IDP_OK)
		goto done;
	*recorded = PQntuples(r) == 1;
	if (!*recorded && (*revoked == NULL || PQntuples(*revoked) == 0)) {
		/* Already revoked, and nothing below it was left: no change. */
		goto done;
	}
	jtis = json_array();
	for (int i = 0; *revoked != NULL && i < PQntuples(*revoked) && i < EVENT_JTIS; i++)
		json_array_append_new(jtis, json_string(PQgetvalue(*revoked, i, 0)));
	rc = emit(req, who, t, AUDIT_OUTCOME_SUCCESS, chain,
	          json_pack("{s:s,s:s?,s:I,s:I,s:o,s:s}", "kind",
	                    t->access ? "access_token" : "delegation_token", "reason", reason,
	                    "revoked_count",
	                    (json_int_t)(*revoked != NULL ? PQntuples(*revoked) : 1), "exp",
	                    (json_int_t)t->exp_s, "revoked_jtis", jtis, "revoked_by", by));
	if (rc != IDP_OK)
		goto done;
	rc = store_cmd(c, "COMMIT");
	if (rc != IDP_OK) {
		log_error("revoke: COMMIT failed after the revocation of %s was audited", t->jti);
		(void)emit(req, who, t, AUDIT_OUTCOME_ERROR, chain,
		           json_pack("{s:b,s:s}", "commit_failed", 1, "message",
		                     "the database commit failed after this revocation was "
		                     "audited; it may not have been applied"));
		rc = IDP_EUNAVAIL;
	}
done:
	if (rc == IDP_EFORBIDDEN)
		(void)emit(req, who, t, AUDIT_OUTCOME_DENIED, chain,
		           json_pack("{s:s,s:s}", "reason", "not_authorized", "kind",
		                     t->access ? "access_token" : "delegation_token"));
	if (c != NULL) {
		if (PQtransactionStatus(store_pg(c)) != PQTRANS_IDLE)
			rollback(c);
		store_release(store, c);
	}
	if (rc != IDP_OK) {
		PQclear(*revoked);
		*revoked = NULL;
		*recorded = false;
	}
	PQclear(chain);
	PQclear(task);
	PQclear(r);
	return rc;
}

/*
 * Revoke an identity credential, if tok is one of this service's: the
 * agent itself or an admin.  IDP_OK (revoked, or nothing to revoke),
 * IDP_EFORBIDDEN, IDP_EUNAVAIL; IDP_ENOTFOUND when tok is no credential.
 */
static int
revoke_credential(struct http_req *req, const struct caller *who, const char *tok, int64_t now)
{
	struct attest_identity_copy idc;
	struct agent_credential cred;
	struct idp_clock fixed;
	struct store_conn *c = NULL;
	const char *params[2], *why = NULL;
	PGresult *r = NULL;
	char by[HUMAN_PRINCIPAL_MAX + 16];
	int rc;

	attest_identity_get(&idc);
	idp_clock_fixed(&fixed, now * 1000);
	/*
	 * A credential is revocable as long as an access token it obtained may
	 * live (REV_CREDENTIAL_SPAN_S past its exp, plus identity.leeway and
	 * the second now was rounded down by): one stolen and found out after
	 * it expired still ends the tokens minted with it.  The caller is
	 * authenticated on its own; this only reads what the token names.  A
	 * key published elsewhere a moment ago is looked up first; one idpd
	 * cannot know about is IDP_EUNAVAIL.
	 */
	rc = agent_credential_verify_own(
	    tok, strlen(tok), &(struct attest_identity){idc.trust_domain, idc.issuer, idc.audience},
	    ((int64_t)REV_CREDENTIAL_SPAN_S + rev_leeway_s()) * 1000 + 1000, &fixed, &cred, &why);
	if (rc != IDP_OK)
		return rc == IDP_EUNAVAIL ? IDP_EUNAVAIL : IDP_ENOTFOUND;
	struct target t = {
	    .access = true, .jti = cred.jti, .sub = cred.agent_id, .exp_s = cred.expires_at_s};
	if (who->kind == CALLER_HUMAN ||
	    (who->kind == CALLER_AGENT && strcmp(who->name, cred.agent_id) != 0)) {
		(void)emit(req, who, &t, AUDIT_OUTCOME_DENIED, NULL,
		           json_pack("{s:s,s:s}", "reason", "not_authorized", "kind",
		                     "identity_credential"));
		return IDP_EFORBIDDEN;
	}
	if (store_acquire(store, &c) != IDP_OK)
		return IDP_EUNAVAIL;
	rc = store_cmd(c, "BEGIN");
	params[0] = cred.jti;
	params[1] = cred.agent_id;
	if (rc == IDP_OK)
		rc = store_exec(c, &st_credential, params, &r);
	if (rc == IDP_OK && PQntuples(r) == 1) {
		snprintf(by, sizeof(by), "%s:%s",
		         who->kind == CALLER_OPERATOR ? "operator" : "agent", who->name);
		rc = emit(req, who, &t, AUDIT_OUTCOME_SUCCESS, NULL,
		          json_pack("{s:s,s:I,s:s}", "kind", "identity_credential", "exp",
		                    (json_int_t)cred.expires_at_s, "revoked_by", by));
	}
	if (rc == IDP_OK)
		rc = store_cmd(c, "COMMIT");
	if (PQtransactionStatus(store_pg(c)) != PQTRANS_IDLE)
		rollback(c);
	store_release(store, c);
	PQclear(r);
	if (rc != IDP_OK)
		return IDP_EUNAVAIL;
	/* Read your writes: authentication checks the revocation state (0010). */
	rev_note_revoked_jti(cred.jti, cred.expires_at_s + REV_CREDENTIAL_SPAN_S);
	log_info("revoke: identity credential %s of %s revoked by %s", cred.jti, cred.agent_id,
	         who->name);
	return IDP_OK;
}

static void
revoke(struct http_req *req, void *ctx)
{
	struct caller who;
	struct http_form form;
	struct idp_diag d;
	struct idp_jws_verified v;
	struct target t;
	PGresult *revoked = NULL;
	const char *token, *reason;
	bool recorded = false;
	int64_t now;
	int rc;

	(void)ctx;
	if (!identify(req, &who))
		return;
	if (!http_req_is_form(req)) {
		http_reply_oauth_error(req, 415, "invalid_request",
		                       "the body must be application/x-www-form-urlencoded");
		return;
	}
	idp_diag_init(&d);
	if (http_req_form(req, &form, &d) != IDP_OK) {
		http_reply_oauth_error(req, 400, "invalid_request", idp_diag_str(&d));
		return;
	}
	/* http_form_get: a parameter without a value is an omitted one. */
	token = http_form_get(&form, "token");
	reason = http_form_get(&form, "reason");
	if (token == NULL) {
		http_reply_oauth_error(req, 400, "invalid_request", "token is required");
		return;
	}
	if (reason != NULL && strlen(reason) > REASON_MAX) {
		http_reply_oauth_error(req, 400, "invalid_request",
		                       "reason: 1 to 256 bytes when given");
		return;
	}
	/* RFC 7009 §2.2.1: kinds of token this endpoint does not revoke. */
	if (strncmp(token, AUTH_KEY_PREFIX, strlen(AUTH_KEY_PREFIX)) == 0 ||
	    strncmp(token, ATTEST_JOIN_TOKEN_PREFIX, strlen(ATTEST_JOIN_TOKEN_PREFIX)) == 0) {
		http_reply_oauth_error(
		    req, 400, "unsupported_token_type",
		    "API keys are withdrawn in the configuration and join tokens "
		    "by suspending the agent; /revoke takes idpd's JWTs");
		return;
	}
	now = idp_now_ms(idp_clock_system()) / 1000;
	rc = verify(token, http_form_get(&form, "token_type_hint"), now, &v, &t);
	if (rc == IDP_EUNAVAIL) {
		http_reply_error(req, IDP_EUNAVAIL, "cannot verify tokens now");
		return;
	}
	if (rc != IDP_OK) {
		rc = revoke_credential(req, &who, token, now);
		if (rc == IDP_EFORBIDDEN)
			http_reply_oauth_error(req, 400, "unauthorized_client",
			                       "the caller may not revoke this credential");
		else if (rc == IDP_EUNAVAIL)
			http_reply_error(req, IDP_EUNAVAIL, "the token cannot be revoked now");
		else /* revoked, or not a live token of ours: nothing to revoke (RFC 7009 2.2) */
			http_reply_data(req, 200, "application/json", "{}", 2);
		return;
	}
	rc = revoke_tx(req, &who, &t, reason, &revoked, &recorded);
	if (rc == IDP_OK) {
		if (t.access && recorded)
			rev_note_revoked_jti(t.jti, t.exp_s);
		for (int i = 0; revoked != NULL && i < PQntuples(revoked); i++)
			rev_note_revoked_delegation(PQgetvalue(revoked, i, 0));
		log_info("revoke: %s %s revoked by %s (%d token(s))",
		         t.access ? "access token" : "delegation token", t.jti, who.name,
		         revoked != NULL ? PQntuples(revoked) : (recorded ? 1 : 0));
		http_reply_data(req, 200, "application/json", "{}", 2);
	} else if (rc == IDP_EFORBIDDEN) {
		http_reply_oauth_error(req, 400, "unauthorized_client",
		                       "the caller may not revoke this token");
	} else {
		http_reply_error(req, IDP_EUNAVAIL, "the token cannot be revoked now");
	}
	PQclear(revoked);
	idp_jws_verified_cleanup(&v);
}

int
revoke_routes(struct http_router *r)
{
	return http_router_add(r, HTTP_POST, "/revoke", revoke, NULL);
}

void
revoke_set_store(struct store *s)
{
	store = s;
}
