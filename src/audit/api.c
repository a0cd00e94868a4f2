/*
 * api.c - the audit endpoints: query (GET /v1/audit/events), ingestion of
 * tool invocations (POST /v1/audit/events) and chain verification
 * (GET /v1/audit/verify).
 */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "idpd/app.h"
#include "idpd/audit_writer.h"
#include "idpd/audit_refusal.h"
#include "idpd/auth.h"
#include "idpd/buf.h"
#include "idpd/clock.h"
#include "idpd/log.h"

#define PAGE_DEFAULT 100
#define PAGE_MAX 1000
#define VERIFY_BATCH 2000

/* ---- GET /v1/audit/events ---- */

static const struct {
	const char *param;
	const char *column;
} filters[] = {
    {"task_id", "task_id"},
    {"agent_id", "agent_id"},
    {"human_principal", "human_principal"},
    {"type", "type"},
};

/*
 * RFC 3339 date-time, strictly: "2026-03-27T14:15:23Z", optional fraction,
 * "Z" or a numeric offset.  PostgreSQL alone would also take "yesterday".
 */
static bool
rfc3339(const char *s)
{
	static const char shape[] = "dddd-dd-ddTdd:dd:dd";
	size_t i;

	if (s == NULL || strlen(s) < sizeof(shape) || strlen(s) > 40)
		return false;
	for (i = 0; i < sizeof(shape) - 1; i++) {
		if (shape[i] == 'd' ? (s[i] < '0' || s[i] > '9') : s[i] != shape[i])
			return false;
	}
	if (s[i] == '.') {
		size_t start = ++i;

		while (s[i] >= '0' && s[i] <= '9')
			i++;
		if (i == start || i - start > 9)
			return false;
	}
	if (s[i] == 'Z')
		return s[i + 1] == '\0';
	return (s[i] == '+' || s[i] == '-') && s[i + 1] >= '0' && s[i + 1] <= '9' &&
	       s[i + 2] >= '0' && s[i + 2] <= '9' && s[i + 3] == ':' && s[i + 4] >= '0' &&
	       s[i + 4] <= '9' && s[i + 5] >= '0' && s[i + 5] <= '9' && s[i + 6] == '\0';
}

/* Cursors are the table's row id, opaque to clients ("c" + decimal). */
static bool
parse_cursor(const char *s, long long *out)
{
	char *end;

	if (s == NULL || s[0] != 'c' || s[1] < '0' || s[1] > '9')
		return false;
	*out = strtoll(s + 1, &end, 10);
	return *end == '\0' && *out >= 0;
}

static void
query_events(struct http_req *req, void *ctx)
{
	static const char *const params_known[] = {
	    "task_id", "agent_id", "human_principal", "type",   "since",
	    "until",   "order",    "limit",           "cursor", NULL};
	struct idpd_app *app = ctx;
	struct auth_principal who;
	struct idp_buf sql;
	const char *params[8];
	char limit_s[24], cursor_s[24];
	const char *order = http_req_query(req, "order");
	const char *since = http_req_query(req, "since"), *until = http_req_query(req, "until");
	bool desc;
	int n = 0, rc, rows;
	long limit;
	long long cursor = 0;
	struct store_conn *c;
	PGresult *res = NULL;
	json_t *events, *out;

	/* A misspelt filter ("task=") would otherwise answer every event. */
	if (!auth_require(req, IDPD_ROLE_AUDITOR, &who) || !http_req_query_only(req, params_known))
		return;
	if (order != NULL && strcmp(order, "asc") != 0 && strcmp(order, "desc") != 0) {
		http_reply_problem(req, 400, "bad_request", NULL, "order must be asc or desc");
		return;
	}
	desc = order != NULL && strcmp(order, "desc") == 0;
	if (!http_req_query_int(req, "limit", 1, PAGE_MAX, PAGE_DEFAULT, &limit)) {
		http_reply_problem(req, 400, "bad_request", NULL,
		                   "limit must be an integer from 1 to %d", PAGE_MAX);
		return;
	}
	if ((since != NULL && !rfc3339(since)) || (until != NULL && !rfc3339(until))) {
		http_reply_problem(req, 400, "bad_request", NULL,
		                   "since and until must be RFC 3339 timestamps");
		return;
	}
	if (http_req_query(req, "cursor") != NULL &&
	    !parse_cursor(http_req_query(req, "cursor"), &cursor)) {
		http_reply_problem(req, 400, "bad_request", NULL, "cursor is not one idpd issued");
		return;
	}

	/* The SQL text is assembled from constant fragments only; every value
	 * travels as a parameter. */
	idp_buf_init(&sql, 4096);
	rc = idp_buf_puts(&sql, "SELECT id, body FROM audit_events WHERE true");
	for (size_t i = 0; i < IDP_ARRAY_LEN(filters); i++) {
		const char *v = http_req_query(req, filters[i].param);

		if (v == NULL)
			continue;
		if (strlen(v) > 1024) {
			idp_buf_cleanup(&sql);
			http_reply_problem(req, 400, "bad_request", NULL, "%s is too long",
			                   filters[i].param);
			return;
		}
		params[n++] = v;
		rc |= idp_buf_printf(&sql, " AND %s = $%d", filters[i].column, n);
	}
	if (since != NULL) {
		params[n++] = since;
		rc |= idp_buf_printf(&sql, " AND ts >= $%d::timestamptz", n);
	}
	if (until != NULL) {
		params[n++] = until;
		rc |= idp_buf_printf(&sql, " AND ts < $%d::timestamptz", n);
	}
	if (http_req_query(req, "cursor") != NULL) {
		snprintf(cursor_s, sizeof(cursor_s), "%lld", cursor);
		params[n++] = cursor_s;
		rc |= idp_buf_printf(&sql, " AND id %s $%d::bigint", desc ? "<" : ">", n);
	}
	snprintf(limit_s, sizeof(limit_s), "%ld", limit + 1);
	params[n++] = limit_s;
	rc |= idp_buf_printf(&sql, " ORDER BY id %s LIMIT $%d::int", desc ? "DESC" : "ASC", n);
	if (rc != 0) {
		idp_buf_cleanup(&sql);
		http_reply_error(req, IDP_EINTERNAL, "query too long");
		return;
	}

	if (store_acquire(app->store, &c) != IDP_OK) {
		idp_buf_cleanup(&sql);
		http_reply_error(req, IDP_EUNAVAIL, "the audit store is unavailable");
		return;
	}
	res = PQexecParams(store_pg(c), idp_buf_str(&sql), n, NULL, params, NULL, NULL, 0);
	idp_buf_cleanup(&sql);
	if (PQresultStatus(res) != PGRES_TUPLES_OK) {
		const char *st = PQresultErrorField(res, PG_DIAG_SQLSTATE);
		/* 22xxx: since/until did not parse as timestamps.  Read before
		 * PQclear: st points into res. */
		bool bad_time = st != NULL && strncmp(st, "22", 2) == 0;

		PQclear(res);
		store_release(app->store, c);
		if (bad_time)
			http_reply_problem(req, 400, "bad_request", NULL,
			                   "since and until must be RFC 3339 timestamps");
		else
			http_reply_error(req, IDP_EUNAVAIL, "the audit query failed");
		return;
	}
	store_release(app->store, c);
	rows = PQntuples(res);
	events = json_array();
	for (int i = 0; i < rows && i < limit; i++) {
		json_t *ev = json_loads(PQgetvalue(res, i, 1), 0, NULL);

		if (ev != NULL)
			json_array_append_new(events, ev);
	}
	out = json_pack("{s:o}", "events", events);
	if (rows > limit) {
		char next[32];

		snprintf(next, sizeof(next), "c%s", PQgetvalue(res, limit - 1, 0));
		json_object_set_new(out, "next_cursor", json_string(next));
	}
	PQclear(res);
	http_reply_json(req, 200, out);
}

/* ---- POST /v1/audit/events ---- */

static _Atomic(audit_token_resolver) token_resolver;

void
audit_set_token_resolver(audit_token_resolver fn)
{
	atomic_store(&token_resolver, fn);
}

/*
 * Stamp a report made with an access token with what the token says: the
 * agent, the task, the human, the token and its scope, and the chain from
 * the human through every agent.  The reporter cannot choose these.
 */
static int
stamp_from_token(struct audit_event *ev, const json_t *t)
{
	const char *sub = json_string_value(json_object_get(t, "sub"));
	const char *human = json_string_value(json_object_get(t, "human_principal"));
	const json_t *chain = json_object_get(t, "delegation_chain"), *link;
	size_t i;

	if (sub == NULL || audit_event_set_actor(ev, AUDIT_ACTOR_AGENT, sub) != IDP_OK ||
	    audit_event_set(ev, AUDIT_F_AGENT_ID, sub) != IDP_OK ||
	    audit_event_set(ev, AUDIT_F_AGENT_TYPE,
	                    json_string_value(json_object_get(t, "agent_type"))) != IDP_OK ||
	    audit_event_set(ev, AUDIT_F_TASK_ID,
	                    json_string_value(json_object_get(t, "task_id"))) != IDP_OK ||
	    audit_event_set(ev, AUDIT_F_HUMAN_PRINCIPAL, human) != IDP_OK ||
	    audit_event_set(ev, AUDIT_F_TOKEN_ID, json_string_value(json_object_get(t, "jti"))) !=
	        IDP_OK ||
	    audit_event_set(ev, AUDIT_F_GRANTED_SCOPE,
	                    json_string_value(json_object_get(t, "scope"))) != IDP_OK)
		return IDP_EINTERNAL;
	audit_event_chain_clear(ev);
	if (human != NULL && audit_event_chain_append(ev, human) != IDP_OK)
		return IDP_EINTERNAL;
	json_array_foreach(chain, i, link)
	{
		const char *a = json_string_value(json_object_get(link, "agent"));

		if (a != NULL && audit_event_chain_append(ev, a) != IDP_OK)
			return IDP_EINTERNAL;
	}
	return IDP_OK;
}

/*
 * Who reports: an operator key with the introspector role (a downstream API
 * reporting what an agent did), or an agent with the access token it used.
 * true with *agent_token set (a new reference) for the latter; false when
 * the request was answered.
 */
static bool
reporter(struct http_req *req, struct auth_principal *who, json_t **agent_token)
{
	const char *bearer = http_req_bearer(req);
	audit_token_resolver fn = atomic_load(&token_resolver);
	int rc;

	*agent_token = NULL;
	if (bearer == NULL || strncmp(bearer, "idpk_", 5) == 0 || fn == NULL)
		return auth_require(req, IDPD_ROLE_INTROSPECTOR, who);
	rc = fn(bearer, agent_token);
	if (rc == IDP_OK)
		return true;
	if (rc == IDP_EUNAVAIL) {
		http_reply_error(req, IDP_EUNAVAIL, "cannot tell whether the token is active now");
		return false;
	}
	audit_refused(req, AUDIT_ACTOR_NONE, NULL, NULL, "token_not_active");
	http_add_header(req, "WWW-Authenticate", "Bearer realm=\"idpd\", error=\"invalid_token\"");
	http_reply_problem(req, 401, "unauthorized", NULL,
	                   "an active access token or an introspector API key is required");
	return false;
}

static void
ingest_event(struct http_req *req, void *ctx)
{
	struct auth_principal who;
	struct audit_event *ev = NULL;
	struct idp_diag diag;
	json_t *body, *errs, *token = NULL;
	char id[80];
	int rc;

	(void)ctx;
	if (!reporter(req, &who, &token))
		return;
	if (!http_req_query_only(req, NULL))
		goto done;
	body = http_req_json_object(req);
	if (body == NULL)
		goto done;
	idp_diag_init(&diag);
	rc = audit_event_from_jsonv(body, &ev, &diag);
	json_decref(body);
	if (rc != IDP_OK) {
		errs = http_diag_lines(&diag);
		http_reply_problem(req, rc == IDP_ETOOBIG ? 413 : 422,
		                   rc == IDP_ETOOBIG ? "payload_too_large" : "unprocessable",
		                   json_pack("{s:o}", "errors", errs), "the event is not valid");
		goto done;
	}
	if (audit_event_type(ev) != AUDIT_TOOL_INVOCATION) {
		audit_event_free(ev);
		http_reply_problem(req, 422, "unprocessable", NULL,
		                   "only tool_invocation events may be reported");
		goto done;
	}
	/*
	 * An agent reports what it did, not what idpd decided or how much it
	 * matters: a policy decision or rule it wrote would be shipped as the
	 * policy engine's, a severity of its own would hide or inflate the
	 * event.  A downstream API (an introspector key) may state its own.
	 */
	if (token != NULL &&
	    (audit_event_decision(ev) != AUDIT_DECISION_NONE ||
	     audit_event_get(ev, AUDIT_F_POLICY_RULE) != NULL ||
	     audit_event_severity(ev) != audit_type_default_severity(AUDIT_TOOL_INVOCATION))) {
		audit_event_free(ev);
		http_reply_problem(
		    req, 422, "unprocessable",
		    json_pack("{s:[s]}", "errors",
		              "authorization.policy_decision, authorization.policy_rule "
		              "and severity are not an agent's to report"),
		    "the event is not valid");
		goto done;
	}
	/*
	 * Keys of detail that idpd gives meaning to (the alert rules and the
	 * CEF and LEEF lines read them as idpd's own: why it refused, for
	 * which audience, which rule fired) are no reporter's to write.
	 */
	{
		static const char *const owned[] = {"reason", "audience", "rule"};
		const json_t *detail = audit_event_detail(ev);
		char named[64] = "";
		size_t used = 0;

		for (size_t i = 0; detail != NULL && i < IDP_ARRAY_LEN(owned); i++)
			if (json_object_get(detail, owned[i]) != NULL)
				used +=
				    (size_t)snprintf(named + used, sizeof(named) - used,
				                     "%sdetail.%s", used > 0 ? ", " : "", owned[i]);
		if (used > 0) {
			audit_event_free(ev);
			http_reply_problem(
			    req, 422, "unprocessable",
			    json_pack("{s:[s+]}", "errors", named, ": set by idpd, not reported"),
			    "the event is not valid");
			goto done;
		}
	}
	/* What the reporter may not choose: identity, time, origin. */
	if (audit_event_set(ev, AUDIT_F_ID, NULL) != IDP_OK ||
	    audit_event_assign_id(ev) != IDP_OK ||
	    audit_event_set_time(ev, AUDIT_TIME_UNSET) != IDP_OK ||
	    audit_event_set(ev, AUDIT_F_INSTANCE_ID, NULL) != IDP_OK ||
	    audit_event_set(ev, AUDIT_F_REQUEST_ID, http_req_id(req)) != IDP_OK ||
	    audit_event_set(ev, AUDIT_F_SOURCE_ADDRESS,
	                    http_req_peer(req)[0] ? http_req_peer(req) : NULL) != IDP_OK ||
	    (token != NULL ? stamp_from_token(ev, token)
	                   : audit_event_set_actor(ev, AUDIT_ACTOR_OPERATOR, who.name)) != IDP_OK) {
		audit_event_free(ev);
		http_reply_error(req, IDP_EINTERNAL, "cannot stamp the event");
		goto done;
	}
	snprintf(id, sizeof(id), "%s", audit_event_get(ev, AUDIT_F_ID));
	if (audit_emit(ev) != IDP_OK) {
		http_reply_error(req, IDP_EUNAVAIL, "the audit log cannot take the event now");
		goto done;
	}
	http_reply_json(req, 201, json_pack("{s:s}", "id", id));
done:
	json_decref(token);
}

/* ---- GET /v1/audit/verify ---- */

#define VERIFY_UNANCHORED_LISTED 16

struct verify_state {
	char writer[320];
	long long seq;
	long long last_seq; /* audit_chains.last_seq of the chain, as the row's page saw it */
	uint8_t prev[AUDIT_HASH_LEN];
	bool in_chain;
	long long events, chains;
	/* Chains with rows but no audit_chains row: the first few, and how many. */
	char unanchored[VERIFY_UNANCHORED_LISTED][320];
	long long n_unanchored;
};

/*
 * Whether the chain verified so far ends where audit_chains says it does.
 * A chain's row and its events commit together, and the row's last_seq
 * was read in the same statement as the chain's last rows, so a shorter
 * chain means rows were deleted from its end (retention removes the oldest
 * rows, never the newest).
 */
static bool
chain_complete(const struct verify_state *st)
{
	return !st->in_chain || st->last_seq <= st->seq;
}

static bool
hex_bytea(const char *s, uint8_t out[AUDIT_HASH_LEN])
{
	/* bytea in hex output form: "\x" + 64 hex digits */
	return s[0] == '\\' && s[1] == 'x' && audit_hash_from_hex(s + 2, out) == IDP_OK;
}

static const char *
json_str_at(json_t *o, const char *group, const char *key)
{
	if (group != NULL)
		o = json_object_get(o, group);
	return json_string_value(json_object_get(o, key));
}

static bool
same(const char *col, const char *body)
{
	if (col == NULL || col[0] == '\0')
		return body == NULL;
	return body != NULL && strcmp(col, body) == 0;
}

/* Check one row; on a break, fill reason and return false. */
static bool
verify_row(struct verify_state *st, PGresult *r, int i, const char **reason)
{
	const char *writer = PQgetvalue(r, i, 1);
	long long seq = strtoll(PQgetvalue(r, i, 2), NULL, 10);
	const char *body = PQgetvalue(r, i, 3);
	uint8_t prev[AUDIT_HASH_LEN], hash[AUDIT_HASH_LEN], want[AUDIT_HASH_LEN];
	json_t *j;
	bool ok;

	if (!hex_bytea(PQgetvalue(r, i, 4), prev) || !hex_bytea(PQgetvalue(r, i, 5), hash)) {
		*reason = "hash columns are malformed";
		return false;
	}
	if (!st->in_chain || strcmp(st->writer, writer) != 0) {
		/* A chain's oldest remaining row follows the anchor retention
		 * left (0016), or the genesis hash if nothing was pruned. */
		long long pruned = strtoll(PQgetvalue(r, i, 15), NULL, 10);
		const char *anchor = PQgetvalue(r, i, 16);
		uint8_t want_prev[AUDIT_HASH_LEN];

		snprintf(st->writer, sizeof(st->writer), "%s", writer);
		st->in_chain = true;
		st->chains++;
		/*
		 * Every writer since 0011 commits its chain's row with each
		 * batch, and migrations 0006 and 0011 made one for every older
		 * chain.  A chain without one was written by a version before
		 * 0011 still running during an upgrade (the cleanup job gives it
		 * a row), or has lost its row, and with it the record of how far
		 * it went (its newest rows may be gone too).  verify cannot tell
		 * which, so it names such chains instead of calling them broken:
		 * one still listed after a cleanup run is the second kind.
		 */
		if (strcmp(PQgetvalue(r, i, 17), "t") != 0) {
			if (st->n_unanchored < VERIFY_UNANCHORED_LISTED)
				snprintf(st->unanchored[st->n_unanchored],
				         sizeof(st->unanchored[0]), "%s", writer);
			st->n_unanchored++;
		}
		if (seq != pruned + 1) {
			*reason = seq > pruned
			              ? "rows are missing at the start of the chain (after "
			                "the last row retention removed)"
			              : "the row is older than the chain's retention anchor";
			return false;
		}
		if (pruned == 0)
			memcpy(want_prev, audit_genesis_hash, AUDIT_HASH_LEN);
		else if (PQgetisnull(r, i, 16))
			memcpy(want_prev, prev, AUDIT_HASH_LEN); /* emptied before 0016 */
		else if (!hex_bytea(anchor, want_prev)) {
			*reason = "the chain's retention anchor is malformed";
			return false;
		}
		if (memcmp(prev, want_prev, AUDIT_HASH_LEN) != 0) {
			*reason = "prev_hash does not match the chain's retention anchor";
			return false;
		}
	} else {
		if (seq != st->seq + 1) {
			*reason = "a row is missing before this one (sequence gap)";
			return false;
		}
		if (memcmp(prev, st->prev, AUDIT_HASH_LEN) != 0) {
			*reason = "prev_hash does not match the previous row's hash";
			return false;
		}
	}
	if (audit_chain_hash(prev, body, strlen(body), want) != IDP_OK ||
	    memcmp(want, hash, AUDIT_HASH_LEN) != 0) {
		*reason = "the row's content does not match its hash";
		return false;
	}
	j = json_loads(body, 0, NULL);
	{
		char ts[32];

		idp_time_format(strtoll(PQgetvalue(r, i, 11), NULL, 10), ts);
		ok = j != NULL && same(PQgetvalue(r, i, 6), json_str_at(j, NULL, "type")) &&
		     same(PQgetvalue(r, i, 7), json_str_at(j, NULL, "agent_id")) &&
		     same(PQgetvalue(r, i, 8), json_str_at(j, NULL, "task_id")) &&
		     same(PQgetvalue(r, i, 9), json_str_at(j, NULL, "human_principal")) &&
		     same(PQgetvalue(r, i, 10), json_str_at(j, NULL, "id")) &&
		     same(ts, json_str_at(j, NULL, "timestamp")) &&
		     json_integer_value(json_object_get(j, "severity")) ==
		         strtoll(PQgetvalue(r, i, 12), NULL, 10) &&
		     same(PQgetvalue(r, i, 13), json_str_at(j, NULL, "outcome"));
	}
	json_decref(j);
	if (!ok) {
		*reason = "an indexed column disagrees with the hashed body";
		return false;
	}
	st->seq = seq;
	st->last_seq = strtoll(PQgetvalue(r, i, 14), NULL, 10);
	memcpy(st->prev, hash, AUDIT_HASH_LEN);
	st->events++;
	return true;
}

/*
 * Answer a finished walk with out (stolen), and record that who walked the
 * chain: audit.verified with the result and, for a break, where.  Queued
 * without waiting, like policy.evaluated: the answer does not depend on
 * it, and a full queue must not turn a verification into a 503.
 */
static void
reply_verified(struct http_req *req, const struct auth_principal *who, json_t *out)
{
	struct audit_event *ev = audit_event_new(AUDIT_AUDIT_VERIFIED, AUDIT_TIME_UNSET);
	const char *peer = http_req_peer(req);
	json_t *broken = json_object_get(out, "broken_at");
	bool ok = json_is_true(json_object_get(out, "ok"));

	if (ev != NULL) {
		audit_event_set_outcome(ev, ok ? AUDIT_OUTCOME_SUCCESS : AUDIT_OUTCOME_FAILURE);
		/* A broken chain is evidence of tampering: as severe as an alert. */
		if ((!ok && audit_event_set_severity(ev, 8) != IDP_OK) ||
		    audit_event_set_actor(ev, AUDIT_ACTOR_OPERATOR, who->name) != IDP_OK ||
		    audit_event_set(ev, AUDIT_F_REQUEST_ID, http_req_id(req)) != IDP_OK ||
		    (peer[0] != '\0' &&
		     audit_event_set(ev, AUDIT_F_SOURCE_ADDRESS, peer) != IDP_OK) ||
		    audit_event_put_detail(ev, "result", json_string(ok ? "ok" : "broken")) !=
		        IDP_OK ||
		    audit_event_put_detail(ev, "events_verified",
		                           json_incref(json_object_get(out, "events_verified"))) !=
		        IDP_OK ||
		    audit_event_put_detail(ev, "chains",
		                           json_incref(json_object_get(out, "chains"))) != IDP_OK ||
		    (broken != NULL &&
		     audit_event_put_detail(ev, "broken_at", json_deep_copy(broken)) != IDP_OK) ||
		    (json_object_get(out, "unanchored_chains") != NULL &&
		     audit_event_put_detail(
		         ev, "unanchored_chains",
		         json_deep_copy(json_object_get(out, "unanchored_chains"))) != IDP_OK)) {
			log_error("audit: cannot record a verification");
			audit_event_free(ev);
		} else if (audit_emit_nowait(ev) != IDP_OK) {
			log_warn("audit: a verification was not recorded (audit queue full)");
		}
	}
	http_reply_json(req, 200, out);
}

/* The answer for a break with no row to name: its chain and first missing seq. */
static void
reply_chain_broken(struct http_req *req, const struct auth_principal *who,
                   const struct verify_state *st, const char *chain, long long seq,
                   const char *reason)
{
	log_warn("audit: verification failed: chain %s at seq %lld: %s", chain, seq, reason);
	reply_verified(req, who,
	               json_pack("{s:b,s:I,s:I,s:{s:s,s:I,s:s}}", "ok", 0, "events_verified",
	                         (json_int_t)st->events, "chains", (json_int_t)st->chains,
	                         "broken_at", "chain", chain, "seq", (json_int_t)seq, "reason",
	                         reason));
}

static void
reply_tail_missing(struct http_req *req, const struct auth_principal *who,
                   const struct verify_state *st)
{
	reply_chain_broken(req, who, st, st->writer, st->seq + 1,
	                   "rows are missing at the end of the chain (audit_chains.last_seq "
	                   "is beyond its last row)");
}

/*
 * A chain whose every row is gone though retention removed fewer: one
 * statement, so a chain retention empties meanwhile (its delete and anchor
 * commit together) is never taken for one.  0 when there is none, 1 when
 * answered, negative when the store failed.
 */
static int
check_emptied_chains(struct http_req *req, const struct auth_principal *who, struct store_conn *c,
                     const struct verify_state *st)
{
	static struct store_stmt q = {
	    "audit_verify_emptied",
	    "SELECT writer_id, pruned_seq + 1 FROM audit_chains c WHERE last_seq > pruned_seq "
	    "AND NOT EXISTS (SELECT 1 FROM audit_events e WHERE e.writer_id = c.writer_id) "
	    "ORDER BY writer_id LIMIT 1",
	    0, 0};
	PGresult *r;

	if (store_exec(c, &q, NULL, &r) != IDP_OK)
		return IDP_EUNAVAIL;
	if (PQntuples(r) == 0) {
		PQclear(r);
		return 0;
	}
	reply_chain_broken(req, who, st, PQgetvalue(r, 0, 0),
	                   strtoll(PQgetvalue(r, 0, 1), NULL, 10),
	                   "every row of the chain is missing (audit_chains.last_seq is beyond "
	                   "what retention removed)");
	PQclear(r);
	return 1;
}

static void
verify(struct http_req *req, void *ctx)
{
	static struct store_stmt page = {
	    "audit_verify_page",
	    "SELECT id, writer_id, seq, body, prev_hash, hash, type, agent_id, task_id, "
	    "human_principal, event_id, floor(extract(epoch FROM ts) * 1000)::bigint, "
	    "severity, outcome, coalesce((SELECT last_seq FROM audit_chains c WHERE "
	    "c.writer_id = e.writer_id), 0), coalesce((SELECT pruned_seq FROM audit_chains c "
	    "WHERE c.writer_id = e.writer_id), 0), (SELECT pruned_hash FROM audit_chains c "
	    "WHERE c.writer_id = e.writer_id), EXISTS (SELECT 1 FROM audit_chains c WHERE "
	    "c.writer_id = e.writer_id) FROM audit_events e "
	    "WHERE (writer_id, seq) > ($1, $2::bigint) ORDER BY writer_id, seq LIMIT 2000",
	    2, 0};
	struct idpd_app *app = ctx;
	struct auth_principal who;
	struct verify_state st;
	char last_writer[320] = "", last_seq[24] = "0";
	struct store_conn *c;
	json_t *out;

	if (!auth_require(req, IDPD_ROLE_AUDITOR, &who) || !http_req_query_only(req, NULL))
		return;
	memset(&st, 0, sizeof(st));
	if (store_acquire(app->store, &c) != IDP_OK) {
		http_reply_error(req, IDP_EUNAVAIL, "the audit store is unavailable");
		return;
	}
	/*
	 * Every page and the last check read one snapshot: retention pruning a
	 * chain between two pages would otherwise look like rows deleted from
	 * its middle.  store_release ends the transaction.
	 */
	if (store_cmd(c, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY") != IDP_OK) {
		store_release(app->store, c);
		http_reply_error(req, IDP_EUNAVAIL, "the audit store is unavailable");
		return;
	}
	for (;;) {
		const char *params[2] = {last_writer, last_seq};
		PGresult *r;
		int n;

		if (store_exec(c, &page, params, &r) != IDP_OK) {
			store_release(app->store, c);
			http_reply_error(req, IDP_EUNAVAIL, "the audit store is unavailable");
			return;
		}
		n = PQntuples(r);
		for (int i = 0; i < n; i++) {
			const char *reason = NULL;

			if (st.in_chain && strcmp(st.writer, PQgetvalue(r, i, 1)) != 0 &&
			    !chain_complete(&st)) {
				PQclear(r);
				store_release(app->store, c);
				reply_tail_missing(req, &who, &st);
				return;
			}
			if (!verify_row(&st, r, i, &reason)) {
				out = json_pack("{s:b,s:I,s:I,s:{s:I,s:s,s:I,s:s,s:s}}", "ok", 0,
				                "events_verified", (json_int_t)st.events, "chains",
				                (json_int_t)st.chains, "broken_at", "row",
				                (json_int_t)strtoll(PQgetvalue(r, i, 0), NULL, 10),
				                "chain", PQgetvalue(r, i, 1), "seq",
				                (json_int_t)strtoll(PQgetvalue(r, i, 2), NULL, 10),
				                "event_id", PQgetvalue(r, i, 10), "reason", reason);
				PQclear(r);
				store_release(app->store, c);
				log_warn("audit: verification failed at row %s",
				         json_string_value(json_object_get(
				             json_object_get(out, "broken_at"), "event_id")));
				reply_verified(req, &who, out);
				return;
			}
		}
		if (n > 0) {
			snprintf(last_writer, sizeof(last_writer), "%s", PQgetvalue(r, n - 1, 1));
			snprintf(last_seq, sizeof(last_seq), "%s", PQgetvalue(r, n - 1, 2));
		}
		PQclear(r);
		if (n < VERIFY_BATCH)
			break;
	}
	if (!chain_complete(&st)) {
		store_release(app->store, c);
		reply_tail_missing(req, &who, &st);
		return;
	}
	{
		int rc = check_emptied_chains(req, &who, c, &st);

		store_release(app->store, c);
		if (rc < 0)
			http_reply_error(req, IDP_EUNAVAIL, "the audit store is unavailable");
		if (rc != 0)
			return;
	}
	out = json_pack("{s:b,s:I,s:I}", "ok", 1, "events_verified", (json_int_t)st.events,
	                "chains", (json_int_t)st.chains);
	if (st.n_unanchored > 0) {
		json_t *names = json_array();

		for (long long k = 0; k < st.n_unanchored && k < VERIFY_UNANCHORED_LISTED; k++)
			json_array_append_new(names, json_string(st.unanchored[k]));
		json_object_set_new(out, "unanchored_chains", names);
		json_object_set_new(out, "unanchored_count", json_integer(st.n_unanchored));
	}
	reply_verified(req, &who, out);
}

int
audit_routes(struct http_router *r, struct idpd_app *app)
{
	int rc = 0;

	rc |= http_router_add(r, HTTP_GET, "/v1/audit/events", query_events, app);
	rc |= http_router_add(r, HTTP_POST, "/v1/audit/events", ingest_event, app);
	rc |= http_router_add(r, HTTP_GET, "/v1/audit/verify", verify, app);
	return rc == 0 ? IDP_OK : IDP_EINVAL;
}
