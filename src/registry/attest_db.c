/*
 * attest_db.c - join tokens and identity credentials in PostgreSQL, each
 * write with its audit event.
 *
 * The ordering is the registry's (db.c): the rows are written inside one
 * transaction, the audit event describing the result is made durable, and
 * only then does the transaction commit; a commit that fails after its event
 * is followed by a second event with outcome "error".  So a credential is
 * never handed out, and a join token never shown, without its event.
 *
 * A join token is spent by one conditional UPDATE (used_at IS NULL AND
 * expires_at > now()), so of two concurrent attempts the second waits for
 * the first's row lock and then matches nothing.  If the rest of the
 * attestation fails (the agent is suspended, the audit log is down) the
 * transaction rolls back and the token is unspent.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "idpd/audit_writer.h"
#include "idpd/clock.h"
#include "idpd/keys.h"
#include "idpd/log.h"
#include "attest_int.h"

static struct store_stmt st_agent_share = {
    "attest_agent_share", "SELECT " AGENT_COLUMNS " FROM agents WHERE id = $1 FOR SHARE", 1, 0};

static struct store_stmt st_agent_lock = {
    "attest_agent_lock", "SELECT " AGENT_COLUMNS " FROM agents WHERE id = $1 FOR UPDATE", 1, 0};

static struct store_stmt st_join_insert = {
    "attest_join_insert",
    "INSERT INTO agent_join_tokens (agent_id, token_hash, created_by, expires_at) "
    "VALUES ($1, $2, $3, now() + $4::bigint * interval '1 millisecond') "
    "RETURNING id, floor(extract(epoch FROM expires_at) * 1000)::bigint",
    4, 0};

static struct store_stmt st_join_spend = {
    "attest_join_spend",
    "UPDATE agent_join_tokens SET used_at = now() "
    "WHERE token_hash = $1 AND agent_id = $2 AND used_at IS NULL AND expires_at > now() "
    "AND created_at > coalesce((SELECT revocation_epoch FROM agents WHERE id = $2), "
    "'-infinity') RETURNING id",
    2, 0};

static struct store_stmt st_join_why = {
    "attest_join_why",
    "SELECT agent_id = $2, used_at IS NOT NULL, expires_at <= now(), created_at <= "
    "coalesce((SELECT revocation_epoch FROM agents WHERE id = $2), '-infinity') "
    "FROM agent_join_tokens WHERE token_hash = $1",
    2, 0};

/*
 * Seconds until the agent's revocation epoch has passed, on PostgreSQL's
 * clock; 0 once it has.  At the epoch itself it is still ahead: a token
 * made then would be no later than the epoch, which a spend refuses.
 */
static struct store_stmt st_epoch_ahead = {
    "attest_epoch_ahead",
    "SELECT CASE WHEN revocation_epoch >= now() THEN "
    "greatest(1, ceil(extract(epoch FROM revocation_epoch - now())))::bigint ELSE 0 END "
    "FROM agents WHERE id = $1",
    1, 0};

static struct store_stmt st_cred_insert = {
    "attest_cred_insert",
    "INSERT INTO agent_credentials (jti, agent_id, kid, method, attestor, issued_at, "
    "expires_at) VALUES ($1, $2, $3, $4, $5, to_timestamp($6::bigint), "
    "to_timestamp($7::bigint))",
    7, 0};

/* Bumps the version so every instance's cache re-reads the record. */
static struct store_stmt st_rotated = {
    "attest_rotated",
    "UPDATE agents SET credential_last_rotated = to_timestamp($2::double precision / 1000), "
    "version = version + 1 WHERE id = $1 RETURNING " AGENT_COLUMNS,
    2, 0};

static struct store_stmt st_cred_check = {
    "attest_cred_check",
    "SELECT agent_id, revoked_at IS NOT NULL FROM agent_credentials WHERE jti = $1", 1, 0};

/* ---- audit ---- */

/* The event attest_emit and attest_emit_nowait send; NULL (logged) for a bug.  Steals detail. */
static struct audit_event *
event_build(enum audit_type type, enum audit_outcome outcome, const struct registry_agent *a,
            const char *agent_id, enum audit_actor_kind actor, const char *actor_name,
            const char *request_id, const char *source_address, const char *token_id,
            json_t *detail)
{
	struct audit_event *ev = audit_event_new(type, AUDIT_TIME_UNSET);
	int rc = IDP_OK;

	if (ev == NULL) {
		json_decref(detail);
		return NULL;
	}
	audit_event_set_outcome(ev, outcome);
	if (a != NULL && (audit_event_set(ev, AUDIT_F_AGENT_TYPE, a->agent_type) != IDP_OK ||
	                  audit_event_set(ev, AUDIT_F_HUMAN_PRINCIPAL, a->owner) != IDP_OK))
		rc = IDP_EINTERNAL;
	if (agent_id != NULL && audit_event_set(ev, AUDIT_F_AGENT_ID, agent_id) != IDP_OK)
		rc = IDP_EINTERNAL;
	if (request_id != NULL && audit_event_set(ev, AUDIT_F_REQUEST_ID, request_id) != IDP_OK)
		rc = IDP_EINTERNAL;
	if (source_address != NULL && source_address[0] != '\0' &&
	    audit_event_set(ev, AUDIT_F_SOURCE_ADDRESS, source_address) != IDP_OK)
		rc = IDP_EINTERNAL;
	if (token_id != NULL && audit_event_set(ev, AUDIT_F_TOKEN_ID, token_id) != IDP_OK)
		rc = IDP_EINTERNAL;
	if (actor != AUDIT_ACTOR_NONE && audit_event_set_actor(ev, actor, actor_name) != IDP_OK)
		rc = IDP_EINTERNAL;
	if (rc == IDP_OK && detail != NULL && audit_event_set_detail(ev, detail) != IDP_OK)
		rc = IDP_EINTERNAL;
	json_decref(detail);
	if (rc != IDP_OK) {
		log_error("attest: bug: cannot build the %s event", audit_type_name(type));
		audit_event_free(ev);
		return NULL;
	}
	return ev;
}

int
attest_emit(enum audit_type type, enum audit_outcome outcome, const struct registry_agent *a,
            const char *agent_id, enum audit_actor_kind actor, const char *actor_name,
            const char *request_id, const char *source_address, const char *token_id,
            json_t *detail)
{
	struct audit_event *ev = event_build(type, outcome, a, agent_id, actor, actor_name,
	                                     request_id, source_address, token_id, detail);

	if (ev == NULL)
		return IDP_EINTERNAL;
	return audit_emit(ev) == IDP_OK ? IDP_OK : IDP_EUNAVAIL;
}

int
attest_emit_nowait(enum audit_type type, enum audit_outcome outcome, const struct registry_agent *a,
                   const char *agent_id, enum audit_actor_kind actor, const char *actor_name,
                   const char *request_id, const char *source_address, const char *token_id,
                   json_t *detail)
{
	struct audit_event *ev = event_build(type, outcome, a, agent_id, actor, actor_name,
	                                     request_id, source_address, token_id, detail);

	if (ev == NULL)
		return IDP_EINTERNAL;
	return audit_emit_nowait(ev) == IDP_OK ? IDP_OK : IDP_EUNAVAIL;
}

/* COMMIT, or flag the event just emitted as describing a change that may not have happened. */
static int
commit_or_flag(struct store_conn *c, enum audit_type type, const struct registry_agent *a,
               enum audit_actor_kind actor, const char *actor_name, const char *request_id)
{
	if (store_cmd(c, "COMMIT") == IDP_OK)
		return IDP_OK;
	log_error("attest: COMMIT failed after the %s event for %s was written",
	          audit_type_name(type), a->id);
	if (attest_emit(type, AUDIT_OUTCOME_ERROR, a, a->id, actor, actor_name, request_id, NULL,
	                NULL,
	                json_pack("{s:b,s:s}", "commit_failed", 1, "message",
	                          "the database commit failed after this change was audited; "
	                          "the change may not have been applied")) != IDP_OK)
		log_error("attest: cannot record the failed commit of %s in the audit log",
		          audit_type_name(type));
	return IDP_EUNAVAIL;
}

/* Run st with params and build the one record it returns (ENOTFOUND for none). */
static int
read_agent(struct store_conn *c, struct store_stmt *st, const char *const *params,
           struct registry_agent **out)
{
	PGresult *r;
	int rc;

	*out = NULL;
	rc = store_exec(c, st, params, &r);
	if (rc != IDP_OK)
		return rc == IDP_EINVAL ? IDP_ENOTFOUND : rc;
	if (PQntuples(r) == 0) {
		PQclear(r);
		return IDP_ENOTFOUND;
	}
	*out = agent_from_row(r, 0);
	PQclear(r);
	return *out != NULL ? IDP_OK : IDP_EINTERNAL;
}

static void
rollback(struct store_conn *c)
{
	if (store_cmd(c, "ROLLBACK") != IDP_OK)
		log_debug("attest: ROLLBACK failed; the connection is gone");
}

/* ---- join tokens ---- */

int
attest_db_join_token_create(const char *id, const char *hash, int64_t ttl_ms,
                            const struct registry_actor *who, int64_t *token_id,
                            int64_t *expires_ms, int64_t *retry_after_s)
{
	struct store *st = registry_store();
	struct store_conn *c = NULL;
	struct registry_agent *a = NULL;
	const char *params[4];
	char ttl[24], exp_s[32], tid[24];
	PGresult *r;
	int rc;

	if (store_acquire(st, &c) != IDP_OK)
		return IDP_EUNAVAIL;
	rc = store_cmd(c, "BEGIN");
	if (rc != IDP_OK)
		goto done;
	params[0] = id;
	rc = read_agent(c, &st_agent_share, params, &a);
	if (rc != IDP_OK)
		goto done;
	if (a->status == REGISTRY_DECOMMISSIONED) {
		rc = IDP_ECONFLICT;
		goto done;
	}
	/* Within identity.leeway of a suspension the epoch is still ahead: a
	 * token made now would be dead at birth (it predates the epoch). */
	*retry_after_s = 0;
	rc = store_exec(c, &st_epoch_ahead, params, &r);
	if (rc != IDP_OK)
		goto done;
	*retry_after_s = PQntuples(r) == 1 ? strtoll(PQgetvalue(r, 0, 0), NULL, 10) : 0;
	PQclear(r);
	if (*retry_after_s > 0) {
		rc = IDP_EUNAVAIL;
		goto done;
	}
	snprintf(ttl, sizeof(ttl), "%lld", (long long)ttl_ms);
	params[1] = hash;
	params[2] = who->name;
	params[3] = ttl;
	rc = store_exec(c, &st_join_insert, params, &r);
	if (rc != IDP_OK)
		goto done;
	*token_id = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
	*expires_ms = strtoll(PQgetvalue(r, 0, 1), NULL, 10);
	PQclear(r);
	idp_time_format(*expires_ms, exp_s);
	snprintf(tid, sizeof(tid), "%lld", (long long)*token_id);
	rc =
	    attest_emit(AUDIT_AGENT_JOIN_TOKEN_CREATED, AUDIT_OUTCOME_SUCCESS, a, a->id,
	                AUDIT_ACTOR_OPERATOR, who->name, who->request_id, who->source_address, NULL,
	                json_pack("{s:s,s:s,s:I}", "join_token_id", tid, "expires_at", exp_s,
	                          "ttl_ms", (json_int_t)ttl_ms));
	if (rc != IDP_OK)
		goto done;
	rc = commit_or_flag(c, AUDIT_AGENT_JOIN_TOKEN_CREATED, a, AUDIT_ACTOR_OPERATOR, who->name,
	                    who->request_id);
done:
	if (rc != IDP_OK && c != NULL)
		rollback(c);
	if (c != NULL)
		store_release(st, c);
	registry_agent_unref(a);
	return rc;
}

/* Why spending a join token matched nothing: for the audit event only. */
static const char *
join_failure(struct store_conn *c, const char *hash, const char *agent_id)
{
	const char *params[2] = {hash, agent_id};
	const char *why = "join_token_unknown";
	PGresult *r;

	if (store_exec(c, &st_join_why, params, &r) != IDP_OK)
		return "join_token_rejected";
	if (PQntuples(r) == 1) {
		if (strcmp(PQgetvalue(r, 0, 0), "t") != 0)
			why = "join_token_other_agent";
		else if (strcmp(PQgetvalue(r, 0, 1), "t") == 0)
			why = "join_token_used";
		else if (strcmp(PQgetvalue(r, 0, 2), "t") == 0)
			why = "join_token_expired";
		else if (strcmp(PQgetvalue(r, 0, 3), "t") == 0)
			why = "join_token_revoked";
		else
			why = "join_token_rejected";
	}
	PQclear(r);
	return why;
}

/* ---- issuing ---- */

static json_t *
strings_json(const char *const *v, size_t n)
{
	json_t *arr = json_array();

	for (size_t i = 0; i < n; i++)
		json_array_append_new(arr, json_string(v[i]));
	return arr;
}

int
attest_db_issue(const struct attest_conf *conf, const struct idp_clock *clock,
                struct attest_attempt *at, char **credential, char jti[ATTEST_JTI_LEN + 1],
                int64_t *exp_s)
{
	struct store *st = registry_store();
	struct store_conn *c = NULL;
	struct registry_agent *a = NULL, *after = NULL;
	struct idp_jws_key *key = NULL;
	struct keys *km = keys_process();
	struct attest_identity id = {conf->trust_domain, conf->issuer, conf->audience};
	const char *params[7];
	char iat_s[24], expv[24], now_ms_s[24], exp_text[32], tid[24];
	json_t *claims = NULL;
	int64_t not_after = 0, now_ms, iat;
	PGresult *r;
	int rc;

	*credential = NULL;
	if (km == NULL)
		return IDP_EUNAVAIL;
	if (store_acquire(st, &c) != IDP_OK)
		return IDP_EUNAVAIL;
	rc = store_cmd(c, "BEGIN");
	if (rc != IDP_OK)
		goto done;
	if (at->join_hash != NULL) {
		/* A join token made before the agent's revocation epoch is dead
		 * with its credentials (creating one while the epoch is ahead is
		 * refused, so none is born dead). */
		params[0] = at->join_hash;
		params[1] = at->agent_id;
		rc = store_exec(c, &st_join_spend, params, &r);
		if (rc != IDP_OK)
			goto done;
		if (PQntuples(r) != 1) {
			PQclear(r);
			rollback(c);
			at->reason = join_failure(c, at->join_hash, at->agent_id);
			rc = IDP_EUNAUTH;
			goto done_released;
		}
		at->join_token_id = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
		PQclear(r);
	}
	params[0] = at->agent_id;
	rc = read_agent(c, &st_agent_lock, params, &a);
	if (rc == IDP_ENOTFOUND) {
		at->reason = "unknown_agent";
		rc = IDP_EUNAUTH;
		goto done;
	}
	if (rc != IDP_OK)
		goto done;
	if (at->at != NULL) {
		const char *failed = NULL;

		if (!attest_selectors_match(at->at->map, at->claims, a->attestation_selectors,
		                            a->n_attestation_selectors, &at->reason, &failed)) {
			/* Copied: the record is released before the caller audits. */
			snprintf(at->failed_sel, sizeof(at->failed_sel), "%s",
			         failed ? failed : "");
			rc = IDP_EUNAUTH;
			goto done;
		}
		at->matched = strings_json(a->attestation_selectors, a->n_attestation_selectors);
	}
	/* After the selectors: evidence that is not this agent's learns
	 * nothing of its status (401 like an unknown agent, not 403). */
	if (a->status != REGISTRY_ACTIVE) {
		at->reason =
		    a->status == REGISTRY_SUSPENDED ? "agent_suspended" : "agent_decommissioned";
		rc = IDP_EFORBIDDEN;
		goto done;
	}

	/*
	 * Just after a resume the revocation epoch (the suspension plus
	 * identity.leeway) may still be ahead: a credential signed now would
	 * be born revoked.  Refuse before anything is spent, and say when.
	 */
	now_ms = idp_now_ms(clock);
	if (registry_issued_before_revocation(a, now_ms / 1000)) {
		at->reason = "revocation_epoch_ahead";
		at->retry_after_s = a->revocation_epoch_ms / 1000 - now_ms / 1000 + 1;
		rc = IDP_EUNAVAIL;
		goto done;
	}
	rc = keys_signing_key(km, &key, &not_after);
	if (rc != IDP_OK)
		goto done;
	rc = attest_jti_new(jti);
	if (rc != IDP_OK)
		goto done;
	/*
	 * A credential never outlives the workload token that proved the
	 * agent: a token that leaked cannot buy more time than it has itself,
	 * and the agent re-attests with a fresh one, as workloads whose tokens
	 * rotate (SPIRE, projected service-account tokens) do anyway.
	 */
	if (at->evidence_exp_ms > 0 && (not_after == 0 || at->evidence_exp_ms < not_after))
		not_after = at->evidence_exp_ms;
	claims = attest_credential_claims(&id, a->id, jti, now_ms, a->credential_rotation_ms,
	                                  not_after, keys_max_token_lifetime_ms(km));
	if (claims == NULL && at->evidence_exp_ms > 0 && not_after == at->evidence_exp_ms) {
		/* Expired, or about to (accepted within identity.leeway). */
		at->reason = idp_jws_reason_name(IDP_JWS_EXPIRED);
		rc = IDP_EUNAUTH;
		goto done;
	}
	if (claims == NULL) {
		log_warn("attest: the signing key expires too soon to issue a credential");
		rc = IDP_EUNAVAIL;
		goto done;
	}
	rc = idp_jws_sign(key, IDP_JWS_TYP_IDENTITY, claims, credential, NULL, NULL);
	if (rc != IDP_OK) {
		rc = IDP_EUNAVAIL;
		goto done;
	}
	iat = (int64_t)json_integer_value(json_object_get(claims, "iat"));
	*exp_s = (int64_t)json_integer_value(json_object_get(claims, "exp"));
	snprintf(iat_s, sizeof(iat_s), "%lld", (long long)iat);
	snprintf(expv, sizeof(expv), "%lld", (long long)*exp_s);
	params[0] = jti;
	params[1] = a->id;
	params[2] = idp_jws_key_kid(key);
	params[3] = at->method;
	params[4] = at->at != NULL ? at->at->name : NULL;
	params[5] = iat_s;
	params[6] = expv;
	rc = store_exec(c, &st_cred_insert, params, &r);
	if (rc != IDP_OK)
		goto done;
	PQclear(r);
	snprintf(now_ms_s, sizeof(now_ms_s), "%lld", (long long)now_ms);
	params[0] = a->id;
	params[1] = now_ms_s;
	rc = read_agent(c, &st_rotated, params, &after);
	if (rc != IDP_OK)
		goto done;

	idp_time_format(*exp_s * 1000, exp_text);
	snprintf(tid, sizeof(tid), "%lld", (long long)at->join_token_id);
	rc = attest_emit(AUDIT_AGENT_ATTESTED, AUDIT_OUTCOME_SUCCESS, after, after->id,
	                 AUDIT_ACTOR_AGENT, after->id, at->request_id, at->source_address, jti,
	                 json_pack("{s:s,s:s?,s:s?,s:O?,s:s,s:s,s:s,s:I}", "method", at->method,
	                           "attestor", at->at != NULL ? at->at->name : NULL,
	                           "join_token_id", at->join_hash != NULL ? tid : NULL, "selectors",
	                           at->matched, "jti", jti, "kid", idp_jws_key_kid(key),
	                           "expires_at", exp_text, "version", (json_int_t)after->version));
	if (rc != IDP_OK)
		goto done;
	rc = commit_or_flag(c, AUDIT_AGENT_ATTESTED, after, AUDIT_ACTOR_AGENT, after->id,
	                    at->request_id);
	if (rc == IDP_OK) {
		registry_publish(after);
		after = NULL;
	}
done:
	if (rc != IDP_OK)
		rollback(c);
done_released:
	store_release(st, c);
	registry_agent_unref(a);
	registry_agent_unref(after);
	idp_jws_key_unref(key);
	json_decref(claims);
	if (rc != IDP_OK) {
		if (*credential != NULL) {
			idp_wipe(*credential, strlen(*credential));
			free(*credential);
		}
		*credential = NULL;
	}
	return rc;
}

/* ---- checking ---- */

int
attest_db_credential_check(const char *jti, const char *agent_id, const char **reason)
{
	struct store *st = registry_store();
	struct store_conn *c;
	const char *params[1] = {jti};
	PGresult *r;
	int rc;

	if (store_acquire(st, &c) != IDP_OK)
		return IDP_EUNAVAIL;
	rc = store_exec(c, &st_cred_check, params, &r);
	store_release(st, c);
	if (rc != IDP_OK)
		return IDP_EUNAVAIL;
	if (PQntuples(r) != 1 || strcmp(PQgetvalue(r, 0, 0), agent_id) != 0) {
		*reason = "jti_unknown";
		rc = IDP_EUNAUTH;
	} else if (strcmp(PQgetvalue(r, 0, 1), "t") == 0) {
		*reason = "jti_revoked";
		rc = IDP_EUNAUTH;
	}
	PQclear(r);
	return rc;
}
