/*
 * tasks.c - the task endpoints, their SQL, and the pure parts of a task's
 * root delegation token (hash chain, claims).
 *
 * Opening a task is one transaction: lock the root agent's row (so a
 * suspension cannot slip between the check and the insert), check its
 * status and capabilities, insert the task and its root token's record,
 * sign the token, emit task.started, COMMIT.  The token is handed out only
 * after its event is durable.  Completing is the same shape: lock the task,
 * mark it completed, set revoked_at on every token of it, emit
 * task.completed, COMMIT.  A second completion changes nothing and emits
 * nothing: it answers with the record as it is.
 *
 * Callers of GET and complete are told apart by their bearer: an operator
 * API key ("idpk_..."), else a human token of an [[idp]], else an agent's
 * identity credential.  A caller who may not see a task gets 403, as does
 * one asking for a task that does not exist, so task ids cannot be probed.
 */
#include <openssl/evp.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "idpd/agent_auth.h"
#include "idpd/audit_refusal.h"
#include "idpd/app.h"
#include "idpd/attest.h"
#include "idpd/audit_writer.h"
#include "idpd/caller.h"
#include "idpd/auth.h"
#include "idpd/clock.h"
#include "idpd/human_auth.h"
#include "idpd/keys.h"
#include "idpd/log.h"
#include "idpd/registry.h"
#include "idpd/revocation.h"
#include "idpd/scope.h"
#include "idpd/tasks.h"

#define CHAIN_DOMAIN "idpd-chain-v1"
#define GENERIC_401 "a valid bearer token is required"
#define NOT_YOURS "this task does not exist or is not yours"

static struct store *store;
static _Atomic int64_t max_ttl_ms, default_ttl_ms;
static char issuer[513], audience[513];

/* ---- the hash chain ---- */

static int
sha256_parts(const void *const *parts, const size_t *lens, size_t n, uint8_t out[32])
{
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	unsigned int len = 0;
	int ok = ctx != NULL && EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) == 1;

	for (size_t i = 0; ok && i < n; i++)
		ok = EVP_DigestUpdate(ctx, parts[i], lens[i]) == 1;
	ok = ok && EVP_DigestFinal_ex(ctx, out, &len) == 1 && len == 32;
	EVP_MD_CTX_free(ctx);
	return ok ? IDP_OK : IDP_EINTERNAL;
}

int
task_chain_root(const char *human, uint8_t out[TASK_CHAIN_HASH_LEN])
{
	const void *parts[2] = {CHAIN_DOMAIN, human};
	size_t lens[2] = {strlen(CHAIN_DOMAIN), strlen(human)};

	return sha256_parts(parts, lens, 2, out);
}

int
task_chain_next(const uint8_t prev[TASK_CHAIN_HASH_LEN], const char *agent, const char *jti,
                const char *scope, uint8_t out[TASK_CHAIN_HASH_LEN])
{
	uint8_t p[TASK_CHAIN_HASH_LEN];
	const void *parts[4] = {p, agent, jti, scope};
	size_t lens[4] = {sizeof(p), strlen(agent), strlen(jti), strlen(scope)};

	/* Copied first: out may alias prev. */
	memcpy(p, prev, sizeof(p));
	return sha256_parts(parts, lens, 4, out);
}

void
task_chain_format(const uint8_t h[TASK_CHAIN_HASH_LEN], char out[TASK_CHAIN_TEXT_LEN])
{
	static const char hex[] = "0123456789abcdef";

	memcpy(out, "sha256:", 7);
	for (size_t i = 0; i < TASK_CHAIN_HASH_LEN; i++) {
		out[7 + 2 * i] = hex[h[i] >> 4];
		out[8 + 2 * i] = hex[h[i] & 15];
	}
	out[7 + 2 * TASK_CHAIN_HASH_LEN] = '\0';
}

json_t *
task_root_claims(const struct task_root_token *t)
{
	if (t->exp_s <= t->iat_s)
		return NULL;
	return json_pack(
	    "{s:s,s:s,s:s,s:I,s:I,s:s,s:s,s:s,s:s,s:s,s:i,s:{s:s,s:s,s:{s:s,s:s,s:s}}}", "iss",
	    t->issuer, "sub", t->agent_id, "aud", t->audience, "iat", (json_int_t)t->iat_s, "exp",
	    (json_int_t)t->exp_s, "jti", t->jti, "task_id", t->task_id, "scope", t->scope,
	    "human_principal", t->human, "delegation_chain_hash", t->chain_hash, "depth", 0, "act",
	    "sub", t->agent_id, "sub_type", "agent", "act", "sub", t->human, "sub_type", "human",
	    "idp", t->idp);
}

/* ---- settings ---- */

static void
settings_set(const struct idpd_config *cfg)
{
	atomic_store(&max_ttl_ms, cfg->tasks.max_ttl_ms);
	atomic_store(&default_ttl_ms, cfg->tasks.default_ttl_ms);
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
tasks_init(struct idpd_app *app, struct idp_diag *diag)
{
	store = app->store;
	settings_set(app->cfg);
	/* identity.* are restart-only, like attestation's copy. */
	snprintf(issuer, sizeof(issuer), "%s", app->cfg->identity.issuer);
	snprintf(audience, sizeof(audience), "%s", app->cfg->identity.audience);
	if (app_on_reload(on_reload, NULL) != IDP_OK) {
		idp_diag_add(diag, "tasks: cannot register the reload hook");
		return IDP_EINVAL;
	}
	return IDP_OK;
}

/* ---- SQL ---- */

#define TASK_COLUMNS                                                                               \
	"id, human_principal, idp, root_agent, array_to_json(scope)::text, description, status, "  \
	"floor(extract(epoch FROM created_at) * 1000)::bigint, "                                   \
	"floor(extract(epoch FROM expires_at) * 1000)::bigint, "                                   \
	"floor(extract(epoch FROM completed_at) * 1000)::bigint, completed_by"

static struct store_stmt st_agent_share = {
    "tasks_agent_share", "SELECT status FROM agents WHERE id = $1 FOR SHARE", 1, 0};

static struct store_stmt st_task_insert = {
    "tasks_insert",
    "INSERT INTO tasks (id, human_principal, idp, root_agent, scope, description, created_at, "
    "expires_at) VALUES ($1, $2, $3, $4, $5::text[], $6, to_timestamp($7::bigint / 1000.0), "
    "to_timestamp($8::bigint / 1000.0)) RETURNING " TASK_COLUMNS,
    8, 0};

static struct store_stmt st_token_insert = {
    "tasks_token_insert",
    "INSERT INTO delegation_tokens (jti, task_id, parent_jti, agent_id, scope, depth, "
    "chain_hash, kid, issued_at, expires_at) VALUES ($1, $2, NULL, $3, $4::text[], 0, $5, $6, "
    "to_timestamp($7::bigint), to_timestamp($8::bigint))",
    8, 0};

static struct store_stmt st_task_get = {"tasks_get",
                                        "SELECT " TASK_COLUMNS " FROM tasks WHERE id = $1", 1, 0};

static struct store_stmt st_task_lock = {
    "tasks_lock", "SELECT " TASK_COLUMNS " FROM tasks WHERE id = $1 FOR UPDATE", 1, 0};

static struct store_stmt st_task_complete = {
    "tasks_complete",
    "UPDATE tasks SET status = 'completed', completed_at = now(), completed_by = $2 "
    "WHERE id = $1 RETURNING " TASK_COLUMNS,
    2, 0};

static struct store_stmt st_tokens_revoke = {
    "tasks_tokens_revoke",
    "UPDATE delegation_tokens SET revoked_at = now() WHERE task_id = $1 AND revoked_at IS NULL", 1,
    0};

/* A task row (TASK_COLUMNS) as the API shows it. */
static json_t *
task_json(PGresult *r)
{
	char t[32];
	json_t *j, *scope;

	scope = json_loads(PQgetvalue(r, 0, 4), JSON_REJECT_DUPLICATES, NULL);
	j = json_pack("{s:s,s:s,s:s,s:s,s:o,s:s,s:s}", "id", PQgetvalue(r, 0, 0), "human_principal",
	              PQgetvalue(r, 0, 1), "idp", PQgetvalue(r, 0, 2), "root_agent",
	              PQgetvalue(r, 0, 3), "scope", scope != NULL ? scope : json_array(),
	              "description", PQgetvalue(r, 0, 5), "status", PQgetvalue(r, 0, 6));
	idp_time_format(strtoll(PQgetvalue(r, 0, 7), NULL, 10), t);
	json_object_set_new(j, "created_at", json_string(t));
	idp_time_format(strtoll(PQgetvalue(r, 0, 8), NULL, 10), t);
	json_object_set_new(j, "expires_at", json_string(t));
	if (!PQgetisnull(r, 0, 9)) {
		idp_time_format(strtoll(PQgetvalue(r, 0, 9), NULL, 10), t);
		json_object_set_new(j, "completed_at", json_string(t));
		json_object_set_new(j, "completed_by", json_string(PQgetvalue(r, 0, 10)));
	}
	return j;
}

/* ---- audit ---- */

struct task_event {
	enum audit_type type;
	const char *task_id;
	const char *human;
	const char *agent_id;
	const char *agent_type;
	enum audit_actor_kind actor;
	const char *actor_name;
	const char *token_id;
	const char *scope;
	struct http_req *req;
	json_t *detail; /* stolen */
};

static int
emit(struct task_event *e)
{
	struct audit_event *ev = audit_event_new(e->type, AUDIT_TIME_UNSET);
	const char *peer = http_req_peer(e->req);
	int rc = IDP_OK;

	if (ev == NULL) {
		json_decref(e->detail);
		return IDP_EINTERNAL;
	}
	audit_event_set_outcome(ev, AUDIT_OUTCOME_SUCCESS);
	if (audit_event_set(ev, AUDIT_F_TASK_ID, e->task_id) != IDP_OK ||
	    audit_event_set(ev, AUDIT_F_HUMAN_PRINCIPAL, e->human) != IDP_OK ||
	    audit_event_set(ev, AUDIT_F_AGENT_ID, e->agent_id) != IDP_OK ||
	    audit_event_set(ev, AUDIT_F_AGENT_TYPE, e->agent_type) != IDP_OK ||
	    audit_event_set(ev, AUDIT_F_TOKEN_ID, e->token_id) != IDP_OK ||
	    audit_event_set(ev, AUDIT_F_GRANTED_SCOPE, e->scope) != IDP_OK ||
	    audit_event_set(ev, AUDIT_F_REQUEST_ID, http_req_id(e->req)) != IDP_OK ||
	    (peer[0] != '\0' && audit_event_set(ev, AUDIT_F_SOURCE_ADDRESS, peer) != IDP_OK) ||
	    audit_event_set_actor(ev, e->actor, e->actor_name) != IDP_OK ||
	    audit_event_chain_append(ev, e->human) != IDP_OK ||
	    audit_event_chain_append(ev, e->agent_id) != IDP_OK)
		rc = IDP_EINTERNAL;
	if (rc == IDP_OK && e->detail != NULL && audit_event_set_detail(ev, e->detail) != IDP_OK)
		rc = IDP_EINTERNAL;
	json_decref(e->detail);
	e->detail = NULL;
	if (rc != IDP_OK) {
		log_error("tasks: bug: cannot build the %s event", audit_type_name(e->type));
		audit_event_free(ev);
		return rc;
	}
	return audit_emit(ev) == IDP_OK ? IDP_OK : IDP_EUNAVAIL;
}

/* COMMIT after the event is durable; a failed COMMIT is recorded as an error event. */
static int
commit_or_flag(struct store_conn *c, struct task_event *e)
{
	if (store_cmd(c, "COMMIT") == IDP_OK)
		return IDP_OK;
	log_error("tasks: COMMIT failed after the %s event for %s was written",
	          audit_type_name(e->type), e->task_id);
	e->detail = json_pack("{s:b,s:s}", "commit_failed", 1, "message",
	                      "the database commit failed after this change was audited; "
	                      "the change may not have been applied");
	if (emit(e) != IDP_OK)
		log_error("tasks: cannot record the failed commit in the audit log");
	return IDP_EUNAVAIL;
}

static void
rollback(struct store_conn *c)
{
	if (store_cmd(c, "ROLLBACK") != IDP_OK)
		store_discard(c);
}

/* ---- POST /v1/tasks ---- */

static bool
scopes_add(struct task_scopes *s, const char *scope, size_t len, struct idp_diag *d)
{
	char one[IDP_SCOPE_MAX_LEN + 1];
	size_t at = strlen(s->joined);

	if (len == 0)
		return true;
	if (len > IDP_SCOPE_MAX_LEN) {
		idp_diag_add(d, "scope: longer than %d bytes", IDP_SCOPE_MAX_LEN);
		return false;
	}
	memcpy(one, scope, len);
	one[len] = '\0';
	if (scope_validate(one, d) != IDP_OK)
		return false;
	for (size_t i = 0; i < s->n; i++)
		if (strcmp(s->v[i], one) == 0)
			return true;
	if (s->n == TASK_MAX_SCOPES) {
		idp_diag_add(d, "scope: more than %d scopes", TASK_MAX_SCOPES);
		return false;
	}
	if (at > 0)
		s->joined[at++] = ' ';
	memcpy(s->joined + at, one, len + 1);
	memcpy(s->vals[s->n], one, len + 1);
	s->v[s->n] = s->vals[s->n];
	s->n++;
	return true;
}

bool
task_scopes_parse(const json_t *j, struct task_scopes *s, struct idp_diag *d)
{
	size_t i;
	const json_t *e;

	/* Only what scopes_add reads: the struct is large, and hot paths parse it per request. */
	s->n = 0;
	s->joined[0] = '\0';
	if (json_is_string(j)) {
		const char *p = json_string_value(j);

		while (*p != '\0') {
			size_t n = strcspn(p, " ");

			if (!scopes_add(s, p, n, d))
				return false;
			p += n;
			p += strspn(p, " ");
		}
	} else if (json_is_array(j)) {
		json_array_foreach(j, i, e)
		{
			if (!json_is_string(e)) {
				idp_diag_add(d, "scope[%zu]: not a string", i);
				return false;
			}
			if (!scopes_add(s, json_string_value(e), json_string_length(e), d))
				return false;
		}
	} else {
		idp_diag_add(d, "scope: required, a string or an array of strings");
		return false;
	}
	if (s->n == 0) {
		idp_diag_add(d, "scope: at least one scope is required");
		return false;
	}
	return true;
}

char *
task_scopes_pg_array(const struct task_scopes *s)
{
	struct idp_buf b;
	int rc;
	char *out;

	idp_buf_init(&b, 1u << 20);
	rc = idp_buf_putc(&b, '{');
	for (size_t i = 0; rc == IDP_OK && i < s->n; i++)
		rc = idp_buf_printf(&b, "%s\"%s\"", i > 0 ? "," : "", s->v[i]);
	if (rc == IDP_OK)
		rc = idp_buf_putc(&b, '}');
	/* 64 scopes of 256 bytes cannot reach the cap. */
	out = rc == IDP_OK ? idp_buf_take(&b, NULL) : NULL;
	idp_buf_cleanup(&b);
	return out;
}

/* ttl: a duration string ("30m") or whole seconds; absent means tasks.default_ttl. */
static bool
ttl_parse(const json_t *j, int64_t *ms, struct idp_diag *d)
{
	if (j == NULL) {
		*ms = atomic_load(&default_ttl_ms);
	} else if (json_is_integer(j) && json_integer_value(j) > 0 &&
	           json_integer_value(j) <= 366LL * 86400) {
		*ms = (int64_t)json_integer_value(j) * 1000;
	} else if (!json_is_string(j) || idp_duration_parse(json_string_value(j), ms) != IDP_OK ||
	           *ms < 1000) {
		/* Tokens carry whole seconds: less than one would be born expired. */
		idp_diag_add(d, "ttl: a duration of at least 1s (\"30m\") or a number of seconds");
		return false;
	}
	if (*ms > atomic_load(&max_ttl_ms))
		*ms = atomic_load(&max_ttl_ms);
	return true;
}

static int
random_id(const char *prefix, char *out, size_t len)
{
	char jti[ATTEST_JTI_LEN + 1];
	int rc = attest_jti_new(jti);

	if (rc == IDP_OK)
		snprintf(out, len, "%s%s", prefix, jti);
	return rc;
}

/* What opening a task produced. */
struct opened {
	json_t *task;
	char *token;
	char jti[ATTEST_JTI_LEN + 1];
	char chain[TASK_CHAIN_TEXT_LEN];
	int64_t exp_s;
	const char *reason; /* for a refusal: a stable code */
};

static int
task_open(struct http_req *req, const struct human_principal *who, const char *agent_id,
          const struct task_scopes *sc, const char *description, int64_t ttl_ms, struct opened *o)
{
	struct store_conn *c = NULL;
	const struct registry_agent *a = NULL;
	struct idp_jws_key *key = NULL;
	struct keys *km = keys_process();
	char task_id[TASK_ID_MAX + 1], created[24], expires[24], iat[24], exp[24];
	char *scopes = NULL;
	uint8_t h[TASK_CHAIN_HASH_LEN];
	json_t *claims = NULL;
	const char *params[8];
	int64_t now_ms, not_after = 0, exp_ms;
	PGresult *r = NULL;
	int rc;

	rc = registry_get(agent_id, &a);
	if (rc == IDP_ENOTFOUND || rc == IDP_EINVAL) {
		o->reason = "root_agent_unknown";
		return IDP_ENOTFOUND;
	}
	if (rc != IDP_OK)
		return IDP_EUNAVAIL;
	if (a->status != REGISTRY_ACTIVE) {
		o->reason = "root_agent_not_active";
		rc = IDP_EFORBIDDEN;
		goto done;
	}
	for (size_t i = 0; i < sc->n; i++) {
		if (!registry_agent_can(a, sc->v[i])) {
			o->reason = AUDIT_REASON_SCOPE_ESCALATION;
			rc = IDP_EFORBIDDEN;
			goto done;
		}
	}
	if (km == NULL || keys_signing_key(km, &key, &not_after) != IDP_OK) {
		rc = IDP_EUNAVAIL;
		goto done;
	}
	now_ms = idp_now_ms(idp_clock_system());
	/* The token must not outlive the key that signs it, nor its publication. */
	exp_ms = now_ms + ttl_ms;
	if (exp_ms > now_ms + keys_max_token_lifetime_ms(km))
		exp_ms = now_ms + keys_max_token_lifetime_ms(km);
	if (exp_ms > not_after)
		exp_ms = not_after;
	o->exp_s = exp_ms / 1000;
	if (o->exp_s <= now_ms / 1000) {
		log_warn("tasks: the signing key expires too soon to issue a delegation token");
		rc = IDP_EUNAVAIL;
		goto done;
	}
	if (random_id("task_", task_id, sizeof(task_id)) != IDP_OK ||
	    attest_jti_new(o->jti) != IDP_OK || task_chain_root(who->principal, h) != IDP_OK ||
	    task_chain_next(h, a->id, o->jti, sc->joined, h) != IDP_OK) {
		rc = IDP_EINTERNAL;
		goto done;
	}
	task_chain_format(h, o->chain);
	claims = task_root_claims(&(struct task_root_token){
	    .issuer = issuer,
	    .audience = audience,
	    .agent_id = a->id,
	    .jti = o->jti,
	    .task_id = task_id,
	    .scope = sc->joined,
	    .human = who->principal,
	    .idp = who->idp,
	    .chain_hash = o->chain,
	    .iat_s = now_ms / 1000,
	    .exp_s = o->exp_s,
	});
	if (claims == NULL ||
	    idp_jws_sign(key, TASK_TOKEN_TYP, claims, &o->token, NULL, NULL) != IDP_OK) {
		rc = IDP_EINTERNAL;
		goto done;
	}
	scopes = task_scopes_pg_array(sc);
	if (scopes == NULL) {
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
	/* Under the row lock, a suspension waits for this task or is seen by it. */
	params[0] = a->id;
	rc = store_exec(c, &st_agent_share, params, &r);
	if (rc != IDP_OK)
		goto done;
	if (PQntuples(r) != 1 || strcmp(PQgetvalue(r, 0, 0), "active") != 0) {
		o->reason = "root_agent_not_active";
		rc = IDP_EFORBIDDEN;
		goto done;
	}
	PQclear(r);
	r = NULL;
	snprintf(created, sizeof(created), "%lld", (long long)now_ms);
	snprintf(expires, sizeof(expires), "%lld", (long long)(o->exp_s * 1000));
	params[0] = task_id;
	params[1] = who->principal;
	params[2] = who->idp;
	params[3] = a->id;
	params[4] = scopes;
	params[5] = description;
	params[6] = created;
	params[7] = expires;
	rc = store_exec(c, &st_task_insert, params, &r);
	if (rc != IDP_OK)
		goto done;
	o->task = task_json(r);
	PQclear(r);
	r = NULL;
	snprintf(iat, sizeof(iat), "%lld", (long long)(now_ms / 1000));
	snprintf(exp, sizeof(exp), "%lld", (long long)o->exp_s);
	params[0] = o->jti;
	params[1] = task_id;
	params[2] = a->id;
	params[3] = scopes;
	params[4] = o->chain;
	params[5] = idp_jws_key_kid(key);
	params[6] = iat;
	params[7] = exp;
	rc = store_exec(c, &st_token_insert, params, &r);
	if (rc != IDP_OK)
		goto done;
	PQclear(r);
	r = NULL;

	struct task_event e = {
	    .type = AUDIT_TASK_STARTED,
	    .task_id = task_id,
	    .human = who->principal,
	    .agent_id = a->id,
	    .agent_type = a->agent_type,
	    .actor = AUDIT_ACTOR_HUMAN,
	    .actor_name = who->principal,
	    .token_id = o->jti,
	    .scope = sc->joined,
	    .req = req,
	    .detail = json_pack(
	        "{s:s,s:s,s:s,s:s,s:s,s:I}", "idp", who->idp, "description", description,
	        "delegation_chain_hash", o->chain, "kid", idp_jws_key_kid(key), "expires_at",
	        json_string_value(json_object_get(o->task, "expires_at")), "depth", (json_int_t)0),
	};
	rc = emit(&e);
	if (rc != IDP_OK)
		goto done;
	rc = commit_or_flag(c, &e);
	if (rc == IDP_OK) {
		revocation_note_delegation(o->jti, NULL, task_id, a->id, sc->joined, 0,
		                           now_ms / 1000, o->exp_s, false);
		log_debug("tasks: %s opened by %s for %s", task_id, who->principal, a->id);
	}
done:
	PQclear(r);
	if (c != NULL) {
		if (rc != IDP_OK)
			rollback(c);
		store_release(store, c);
	}
	registry_agent_unref(a);
	idp_jws_key_unref(key);
	json_decref(claims);
	free(scopes);
	if (rc != IDP_OK) {
		json_decref(o->task);
		o->task = NULL;
		if (o->token != NULL) {
			idp_wipe(o->token, strlen(o->token));
			free(o->token);
			o->token = NULL;
		}
	}
	return rc;
}

static void
post_task(struct http_req *req, void *ctx)
{
	struct human_principal who;
	struct task_scopes sc;
	struct opened o = {0};
	struct idp_diag d;
	const char *why = NULL, *agent_id, *description = "";
	json_t *body = NULL, *resp, *v;
	int64_t ttl_ms = 0;
	int rc;

	(void)ctx;
	rc = authenticate_human(req, &who, &why);
	if (rc != IDP_OK) {
		log_info("tasks: human authentication failed: %s", why ? why : "unknown");
		if (rc == IDP_EUNAUTH && http_req_bearer(req) != NULL)
			audit_refused(req, AUDIT_ACTOR_NONE, NULL, NULL, why);
		if (rc == IDP_EUNAUTH)
			http_add_header(req, "WWW-Authenticate", "Bearer");
		http_reply_error(req, rc,
		                 rc == IDP_EUNAUTH ? GENERIC_401 : "cannot authenticate now");
		return;
	}
	if (!http_req_query_only(req, NULL))
		return;
	body = http_req_json_object(req);
	if (body == NULL)
		return;
	idp_diag_init(&d);
	agent_id = json_string_value(json_object_get(body, "root_agent"));
	if (agent_id == NULL)
		idp_diag_add(&d, "root_agent: required, an agent id");
	else if (!registry_id_valid(agent_id))
		idp_diag_add(&d,
		             "root_agent: not an agent id (1 to %d of a-z 0-9 . _ -, starting "
		             "with a letter or digit)",
		             REGISTRY_ID_MAX);
	v = json_object_get(body, "description");
	if (v != NULL) {
		if (!json_is_string(v) || json_string_length(v) > TASK_DESCRIPTION_MAX)
			idp_diag_add(&d, "description: a string of at most %d bytes",
			             TASK_DESCRIPTION_MAX);
		else
			description = json_string_value(v);
	}
	(void)task_scopes_parse(json_object_get(body, "scope"), &sc, &d);
	(void)ttl_parse(json_object_get(body, "ttl"), &ttl_ms, &d);
	http_json_unknown_members(
	    body, (const char *const[]){"root_agent", "scope", "description", "ttl", NULL}, &d);
	if (d.count > 0) {
		http_reply_problem(req, 400, "invalid_request",
		                   json_pack("{s:o}", "errors", http_diag_lines(&d)),
		                   "the task request is not valid");
		goto done;
	}
	rc = task_open(req, &who, agent_id, &sc, description, ttl_ms, &o);
	switch (rc) {
	case IDP_OK:
		resp = json_pack("{s:o,s:s,s:s,s:s,s:I,s:s}", "task", o.task, "delegation_token",
		                 o.token, "token_type", TASK_TOKEN_TYP, "jti", o.jti, "expires_in",
		                 (json_int_t)(o.exp_s - idp_now_ms(idp_clock_system()) / 1000),
		                 "delegation_chain_hash", o.chain);
		idp_wipe(o.token, strlen(o.token));
		free(o.token);
		http_reply_json(req, 201, resp);
		break;
	case IDP_ENOTFOUND:
	case IDP_EFORBIDDEN:
		http_reply_problem(req, 403, o.reason, json_pack("{s:s}", "reason", o.reason),
		                   "the task cannot be started: %s", o.reason);
		break;
	default:
		http_reply_error(req, rc == IDP_EINTERNAL ? IDP_EINTERNAL : IDP_EUNAVAIL,
		                 "the task cannot be started now");
	}
done:
	json_decref(body);
}

/* ---- GET /v1/tasks/{id}, POST /v1/tasks/{id}/complete ---- */

/* Whether c may act on the task in row r (TASK_COLUMNS) as owner or root agent. */
static bool
may_touch(const struct caller *c, PGresult *r, unsigned op_roles)
{
	switch (c->kind) {
	case CALLER_HUMAN:
		/* The principal of the task's provider: another [[idp]] may
		 * assert the same principal for someone else. */
		return strcmp(c->name, PQgetvalue(r, 0, 1)) == 0 &&
		       strcmp(c->idp, PQgetvalue(r, 0, 2)) == 0;
	case CALLER_AGENT:
		return strcmp(c->name, PQgetvalue(r, 0, 3)) == 0;
	case CALLER_OPERATOR:
		return (c->roles & (op_roles | IDPD_ROLE_ADMIN)) != 0;
	}
	return false;
}

bool
task_id_valid(const char *id)
{
	size_t n = strlen(id);

	if (n < 6 || n > TASK_ID_MAX || strncmp(id, "task_", 5) != 0)
		return false;
	for (size_t i = 5; i < n; i++) {
		char ch = id[i];

		if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
		      (ch >= '0' && ch <= '9') || ch == '_' || ch == '-'))
			return false;
	}
	return true;
}

static void
get_task(struct http_req *req, void *ctx)
{
	const char *id = http_req_param(req, "id");
	const char *params[1] = {id};
	struct store_conn *c = NULL;
	struct caller who;
	PGresult *r = NULL;
	int rc;

	(void)ctx;
	if (!caller_identify(req, IDPD_ROLE_AUDITOR, "tasks", &who) ||
	    !http_req_query_only(req, NULL))
		return;
	if (!task_id_valid(id)) {
		http_reply_problem(req, 403, "forbidden", NULL, NOT_YOURS);
		return;
	}
	if (store_acquire(store, &c) != IDP_OK) {
		http_reply_error(req, IDP_EUNAVAIL, "the task store is not reachable");
		return;
	}
	rc = store_exec(c, &st_task_get, params, &r);
	store_release(store, c);
	if (rc != IDP_OK) {
		http_reply_error(req, IDP_EUNAVAIL, "the task store is not reachable");
		return;
	}
	if (PQntuples(r) != 1 || !may_touch(&who, r, IDPD_ROLE_AUDITOR))
		http_reply_problem(req, 403, "forbidden", NULL, NOT_YOURS);
	else
		http_reply_json(req, 200, task_json(r));
	PQclear(r);
}

static void
complete_task(struct http_req *req, void *ctx)
{
	const char *id = http_req_param(req, "id");
	const char *params[2];
	struct store_conn *c = NULL;
	struct caller who;
	PGresult *r = NULL, *t = NULL;
	json_t *task = NULL;
	long long revoked = 0;
	int rc;

	(void)ctx;
	/* Takes no options: a body or query asking for one would be ignored. */
	if (!caller_identify(req, IDPD_ROLE_ADMIN, "tasks", &who) ||
	    !http_req_query_only(req, NULL) || !http_req_no_body(req))
		return;
	if (!task_id_valid(id)) {
		http_reply_problem(req, 403, "forbidden", NULL, NOT_YOURS);
		return;
	}
	if (store_acquire(store, &c) != IDP_OK) {
		http_reply_error(req, IDP_EUNAVAIL, "the task store is not reachable");
		return;
	}
	rc = store_cmd(c, "BEGIN");
	if (rc != IDP_OK)
		goto done;
	params[0] = id;
	rc = store_exec(c, &st_task_lock, params, &t);
	if (rc != IDP_OK)
		goto done;
	if (PQntuples(t) != 1 || !may_touch(&who, t, IDPD_ROLE_ADMIN)) {
		rc = IDP_EFORBIDDEN;
		goto done;
	}
	if (strcmp(PQgetvalue(t, 0, 6), "completed") == 0) {
		/* Already done: nothing changes and nothing is recorded again. */
		task = task_json(t);
		goto done;
	}
	params[1] = who.name;
	rc = store_exec(c, &st_task_complete, params, &r);
	if (rc != IDP_OK)
		goto done;
	task = task_json(r);
	PQclear(r);
	r = NULL;
	rc = store_exec(c, &st_tokens_revoke, params, &r);
	if (rc != IDP_OK)
		goto done;
	revoked = strtoll(PQcmdTuples(r), NULL, 10);

	struct task_event e = {
	    .type = AUDIT_TASK_COMPLETED,
	    .task_id = id,
	    .human = PQgetvalue(t, 0, 1),
	    .agent_id = PQgetvalue(t, 0, 3),
	    .actor = caller_actor_kind(&who),
	    .actor_name = who.name,
	    .req = req,
	    .detail = json_pack("{s:I,s:s}", "delegations_revoked", (json_int_t)revoked,
	                        "completed_by", who.name),
	};
	rc = emit(&e);
	if (rc != IDP_OK)
		goto done;
	rc = commit_or_flag(c, &e);
	if (rc == IDP_OK)
		revocation_note_task_closed(id);
done:
	if (rc != IDP_OK || task == NULL || r == NULL)
		rollback(c);
	store_release(store, c);
	PQclear(r);
	PQclear(t);
	if (rc == IDP_OK) {
		http_reply_json(req, 200, task);
		return;
	}
	json_decref(task);
	if (rc == IDP_EFORBIDDEN)
		http_reply_problem(req, 403, "forbidden", NULL, NOT_YOURS);
	else
		http_reply_error(req, IDP_EUNAVAIL, "the task cannot be completed now");
}

/*
 * GET /v1/tasks/{id}/timeline: the task's audit events, oldest first, as
 * the audit log stores them.  Bounded to TIMELINE_MAX events; "truncated"
 * says when there were more.
 */
#define TIMELINE_MAX 1000

static struct store_stmt st_timeline = {
    "tasks_timeline",
    "SELECT body FROM audit_events WHERE task_id = $1 ORDER BY ts, id LIMIT $2::int", 2, 0};

static void
task_timeline(struct http_req *req, void *ctx)
{
	const char *id = http_req_param(req, "id");
	char lim[16];
	const char *params[2] = {id, lim};
	struct store_conn *c = NULL;
	struct caller who;
	PGresult *t = NULL, *r = NULL;
	json_t *events;
	int rc, n;

	(void)ctx;
	if (!caller_identify(req, IDPD_ROLE_AUDITOR, "tasks", &who) ||
	    !http_req_query_only(req, NULL))
		return;
	if (!task_id_valid(id)) {
		http_reply_problem(req, 403, "forbidden", NULL, NOT_YOURS);
		return;
	}
	if (store_acquire(store, &c) != IDP_OK) {
		http_reply_error(req, IDP_EUNAVAIL, "the task store is not reachable");
		return;
	}
	snprintf(lim, sizeof(lim), "%d", TIMELINE_MAX + 1);
	rc = store_exec(c, &st_task_get, params, &t);
	if (rc == IDP_OK && PQntuples(t) == 1 && may_touch(&who, t, IDPD_ROLE_AUDITOR))
		rc = store_exec(c, &st_timeline, params, &r);
	store_release(store, c);
	if (rc != IDP_OK) {
		PQclear(t);
		http_reply_error(req, IDP_EUNAVAIL, "the task store is not reachable");
		return;
	}
	if (r == NULL) {
		PQclear(t);
		http_reply_problem(req, 403, "forbidden", NULL, NOT_YOURS);
		return;
	}
	events = json_array();
	n = PQntuples(r);
	for (int i = 0; i < n && i < TIMELINE_MAX; i++) {
		json_t *ev = json_loads(PQgetvalue(r, i, 0), 0, NULL);

		if (ev != NULL)
			json_array_append_new(events, ev);
	}
	http_reply_json(req, 200,
	                json_pack("{s:s,s:o,s:b}", "task_id", id, "events", events, "truncated",
	                          n > TIMELINE_MAX));
	PQclear(r);
	PQclear(t);
}

int
tasks_routes(struct http_router *r, struct idpd_app *app)
{
	(void)app;
	if (http_router_add(r, HTTP_POST, "/v1/tasks", post_task, NULL) != IDP_OK ||
	    http_router_add(r, HTTP_GET, "/v1/tasks/{id}", get_task, NULL) != IDP_OK ||
	    http_router_add(r, HTTP_POST, "/v1/tasks/{id}/complete", complete_task, NULL) !=
	        IDP_OK ||
	    http_router_add(r, HTTP_GET, "/v1/tasks/{id}/timeline", task_timeline, NULL) != IDP_OK)
		return IDP_EINVAL;
	return IDP_OK;
}
