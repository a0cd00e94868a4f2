/*
 * approvals_api.c - the /v1/approvals endpoints: list, read, approve, deny.
 *
 * Callers are told apart by their bearer, as for tasks: an operator API key
 * ("idpk_..."), else a human token of an [[idp]], else an agent's identity
 * credential.
 *
 *   who                                   reads                decides
 *   API key, role approver (or admin)     every approval       every approval
 *   API key, role auditor                 every approval       -
 *   human (IdP token)                     those they may decide: the task's
 *                                         human, or the agent's owner
 *   agent (identity credential)           its own              -
 *
 * An approval the caller may not see is answered 404, exactly like one that
 * does not exist, so ids cannot be probed.  A caller who may see it but not
 * decide it (an agent) gets 403.
 *
 * Deciding is one transaction: lock the row, check it is pending and
 * unexpired (PostgreSQL's clock), set the decision, emit approval.granted or
 * approval.denied with the decider as actor, COMMIT.  Deciding again is 409
 * approval_already_decided; deciding an expired approval is 409
 * approval_expired, recorded as approval.expired, and changes nothing.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "approvals_int.h"
#include "idpd/agent_auth.h"
#include "idpd/app.h"
#include "idpd/auth.h"
#include "idpd/caller.h"
#include "idpd/b64.h"
#include "idpd/buf.h"
#include "idpd/clock.h"
#include "idpd/human_auth.h"
#include "idpd/log.h"
#include "idpd/registry.h"
#include "idpd/tasks.h"

#define READ_ROLES (IDPD_ROLE_APPROVER | IDPD_ROLE_AUDITOR)
#define DECIDE_ROLES IDPD_ROLE_APPROVER

/* Whether c may read the approval in row r. */
static bool
may_see(const struct caller *c, const PGresult *r)
{
	switch (c->kind) {
	case CALLER_OPERATOR:
		return true; /* identify() required approver, auditor or admin */
	case CALLER_HUMAN:
		return approval_human_may_decide(
		    c->name, c->idp, c->vouches_for_owners, PQgetvalue(r, 0, APR_C_HUMAN),
		    PQgetvalue(r, 0, APR_C_HUMAN_IDP), PQgetvalue(r, 0, APR_C_OWNER));
	case CALLER_AGENT:
		return strcmp(c->name, PQgetvalue(r, 0, APR_C_AGENT)) == 0;
	}
	return false;
}

static void
reply_not_found(struct http_req *req)
{
	http_reply_problem(req, 404, "not_found", NULL, "no such approval, or not one you may see");
}

/* ---- GET /v1/approvals/{id} ---- */

static struct store_stmt st_get = {
    "apr_get", "SELECT " APPROVAL_COLUMNS " FROM approvals WHERE id = $1", 1, 0};

static void
get_one(struct http_req *req, void *ctx)
{
	const char *id = http_req_param(req, "id");
	const char *params[1] = {id};
	struct store_conn *c = NULL;
	struct caller who;
	PGresult *r = NULL;
	int rc;

	(void)ctx;
	if (!caller_identify(req, READ_ROLES, "approvals", &who) || !http_req_query_only(req, NULL))
		return;
	if (!approval_id_valid(id)) {
		reply_not_found(req);
		return;
	}
	if (store_acquire(approvals_store(), &c) != IDP_OK) {
		http_reply_error(req, IDP_EUNAVAIL, "the approval store is not reachable");
		return;
	}
	rc = store_exec(c, &st_get, params, &r);
	store_release(approvals_store(), c);
	if (rc != IDP_OK) {
		http_reply_error(req, IDP_EUNAVAIL, "the approval store is not reachable");
		return;
	}
	if (PQntuples(r) != 1 || !may_see(&who, r))
		reply_not_found(req);
	else
		http_reply_json(req, 200, approval_json(r, 0));
	PQclear(r);
}

/* ---- GET /v1/approvals ---- */

/*
 * A list cursor is the last row's position, (created_at in microseconds,
 * id), not a reference to the row: paging goes on when that row has been
 * deleted meanwhile (cleanup removes the oldest approvals, exactly the ones
 * an oldest-first listing pages through).
 */
static void
cursor_encode(const char *created_us, const char *last_id, char *out, size_t len)
{
	char pos[APPROVAL_ID_MAX + 32];
	int n = snprintf(pos, sizeof(pos), "%s:%s", created_us, last_id);

	if (n < 0 || (size_t)n >= sizeof(pos) || len < 3 + idp_b64url_encoded_len((size_t)n)) {
		if (len > 0)
			out[0] = '\0';
		return;
	}
	memcpy(out, "p2", 2);
	idp_b64url_encode_to(pos, (size_t)n, out + 2);
}

/* The position in cursor into *created_us (digits) and id; false if it is not one of ours. */
static bool
cursor_decode(const char *cursor, char created_us[24], char *id, size_t len)
{
	char pos[APPROVAL_ID_MAX + 32];
	size_t n, got, digits = 0;

	if (cursor == NULL || strncmp(cursor, "p2", 2) != 0)
		return false;
	cursor += 2;
	n = strlen(cursor);
	if (n == 0 || n > 160 ||
	    idp_b64url_decode(cursor, n, (unsigned char *)pos, sizeof(pos) - 1, &got) != IDP_OK)
		return false;
	pos[got] = '\0';
	if (memchr(pos, '\0', got) != NULL)
		return false;
	while (digits < got && pos[digits] >= '0' && pos[digits] <= '9')
		digits++;
	if (digits == 0 || digits > 19 || pos[digits] != ':' || strlen(pos + digits + 1) >= len)
		return false;
	memcpy(created_us, pos, digits);
	created_us[digits] = '\0';
	snprintf(id, len, "%s", pos + digits + 1);
	return approval_id_valid(id);
}

static const struct {
	const char *name;
	const char *sql;
} status_filters[] = {
    {"pending", " AND status = 'pending' AND expires_at > now()"},
    {"approved", " AND status = 'approved' AND expires_at > now()"},
    {"denied", " AND status = 'denied'"},
    {"used", " AND status = 'used'"},
    {"expired", " AND status IN ('pending', 'approved') AND expires_at <= now()"},
};

static bool
principal_ok(const char *s)
{
	size_t n = strlen(s);

	if (n == 0 || n > HUMAN_PRINCIPAL_MAX)
		return false;
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)s[i] <= 0x20 || s[i] == 0x7f)
			return false;
	return true;
}

static void
list(struct http_req *req, void *ctx)
{
	static const char *const params_known[] = {"status", "approver", "task_id", "agent_id",
	                                           "cursor", "limit",    NULL};
	const char *status = http_req_query(req, "status");
	const char *approver = http_req_query(req, "approver");
	const char *task_id = http_req_query(req, "task_id");
	const char *agent_id = http_req_query(req, "agent_id");
	const char *cursor = http_req_query(req, "cursor");
	char after[APPROVAL_ID_MAX + 1], after_us[24], limit_s[24], next[240];
	char owner_form[HUMAN_PRINCIPAL_MAX + 1], idp_form[HUMAN_PRINCIPAL_MAX + 70];
	const char *params[9];
	struct caller who;
	struct idp_buf sql;
	json_t *items;
	PGresult *res;
	long limit;
	int n = 0, rc = 0, rows;

	(void)ctx;
	/* A misspelt filter ("statu=") would otherwise list every approval. */
	if (!caller_identify(req, READ_ROLES, "approvals", &who) ||
	    !http_req_query_only(req, params_known))
		return;
	if (!http_req_query_int(req, "limit", 1, APPROVAL_PAGE_MAX, APPROVAL_PAGE_DEFAULT,
	                        &limit)) {
		http_reply_problem(req, 400, "bad_request", NULL,
		                   "limit must be an integer from 1 to %d", APPROVAL_PAGE_MAX);
		return;
	}
	if (cursor != NULL && !cursor_decode(cursor, after_us, after, sizeof(after))) {
		http_reply_problem(req, 400, "bad_request", NULL,
		                   "cursor is not one idpd issued; start again without it");
		return;
	}
	if (approver != NULL && !principal_ok(approver)) {
		http_reply_problem(req, 400, "bad_request", NULL,
		                   "approver must be a principal of 1 to %d printable characters",
		                   HUMAN_PRINCIPAL_MAX);
		return;
	}
	if (task_id != NULL && !task_id_valid(task_id)) {
		http_reply_problem(req, 400, "bad_request", NULL, "task_id is not a task id");
		return;
	}
	if (agent_id != NULL && !registry_id_valid(agent_id)) {
		http_reply_problem(req, 400, "bad_request", NULL, "agent_id is not an agent id");
		return;
	}
	/* A human sees what they may decide; an agent sees its own. */
	if (who.kind == CALLER_HUMAN) {
		if (approver != NULL && strcmp(approver, who.name) != 0) {
			http_reply_problem(req, 403, "forbidden", NULL,
			                   "a human lists only the approvals they may decide");
			return;
		}
		approver = who.name;
	} else if (who.kind == CALLER_AGENT) {
		if (agent_id != NULL && strcmp(agent_id, who.name) != 0) {
			http_reply_problem(req, 403, "forbidden", NULL,
			                   "an agent lists only its own approvals");
			return;
		}
		agent_id = who.name;
	}

	/* Assembled from constant fragments; every value travels as a parameter. */
	idp_buf_init(&sql, 8192);
	rc |= idp_buf_puts(&sql, "SELECT " APPROVAL_COLUMNS " FROM approvals WHERE true");
	if (status != NULL) {
		size_t i;

		for (i = 0; i < IDP_ARRAY_LEN(status_filters); i++)
			if (strcmp(status, status_filters[i].name) == 0)
				break;
		if (i == IDP_ARRAY_LEN(status_filters)) {
			idp_buf_cleanup(&sql);
			http_reply_problem(
			    req, 400, "bad_request", NULL,
			    "status must be pending, approved, denied, used or expired");
			return;
		}
		rc |= idp_buf_puts(&sql, status_filters[i].sql);
	}
	if (approver != NULL && who.kind == CALLER_HUMAN) {
		/* What approval_human_may_decide allows, in SQL: the task's human
		 * of the same provider, an email owner (never matched by a
		 * principal with a colon) or an "idp:subject" owner. */
		approval_owner_form(approver, owner_form, sizeof(owner_form));
		/* "" matches no owner (they are 3+ characters): a principal with a
		 * colon, or one of a provider that does not vouch for owners. */
		if (strchr(approver, ':') != NULL || !who.vouches_for_owners)
			owner_form[0] = '\0';
		snprintf(idp_form, sizeof(idp_form), "%s:%s", who.idp, approver);
		params[n++] = approver;
		params[n++] = who.idp;
		params[n++] = owner_form;
		params[n++] = idp_form;
		rc |= idp_buf_printf(&sql,
		                     " AND ((human_principal = $%d AND human_idp = $%d) OR "
		                     "agent_owner = $%d OR agent_owner = $%d)",
		                     n - 3, n - 2, n - 1, n);
	} else if (approver != NULL) {
		/* An operator's filter: no provider to tell principals apart by. */
		approval_owner_form(approver, owner_form, sizeof(owner_form));
		params[n++] = approver;
		params[n++] = owner_form;
		rc |= idp_buf_printf(&sql,
		                     " AND (human_principal = $%d OR agent_owner = $%d OR "
		                     "agent_owner = $%d)",
		                     n - 1, n, n - 1);
	}
	if (task_id != NULL) {
		params[n++] = task_id;
		rc |= idp_buf_printf(&sql, " AND task_id = $%d", n);
	}
	if (agent_id != NULL) {
		params[n++] = agent_id;
		rc |= idp_buf_printf(&sql, " AND agent_id = $%d", n);
	}
	if (cursor != NULL) {
		params[n++] = after_us;
		params[n++] = after;
		rc |=
		    idp_buf_printf(&sql,
		                   " AND (created_at, id) > ('epoch'::timestamptz + $%d::bigint * "
		                   "interval '1 microsecond', $%d)",
		                   n - 1, n);
	}
	snprintf(limit_s, sizeof(limit_s), "%ld", limit + 1);
	params[n++] = limit_s;
	rc |= idp_buf_printf(&sql, " ORDER BY created_at, id LIMIT $%d::int", n);
	if (rc != 0) {
		idp_buf_cleanup(&sql);
		http_reply_error(req, IDP_EINTERNAL, "query too long");
		return;
	}
	rc = store_query(approvals_store(), idp_buf_str(&sql), n, params, &res);
	idp_buf_cleanup(&sql);
	if (rc != IDP_OK) {
		/* IDP_EINVAL is a filter value PostgreSQL cannot take, such as
		 * invalid UTF-8: the client's error (400), not ours. */
		http_reply_error(req, rc == IDP_EINVAL ? IDP_EINVAL : IDP_EUNAVAIL,
		                 rc == IDP_EINVAL ? "a filter value is not valid text"
		                                  : "the approval query failed");
		return;
	}
	rows = PQntuples(res);
	items = json_array();
	for (int i = 0; i < rows && i < limit; i++)
		json_array_append_new(items, approval_json(res, i));
	if (rows > limit) {
		cursor_encode(PQgetvalue(res, (int)limit - 1, APR_C_CREATED_US),
		              PQgetvalue(res, (int)limit - 1, APR_C_ID), next, sizeof(next));
		http_reply_json(req, 200,
		                json_pack("{s:o,s:s}", "approvals", items, "next_cursor", next));
	} else {
		http_reply_json(req, 200, json_pack("{s:o}", "approvals", items));
	}
	PQclear(res);
}

/* ---- POST /v1/approvals/{id}/approve, /deny ---- */

/* The optional body {"note": "..."}; *note is NULL without one.  false after answering. */
static bool
read_note(struct http_req *req, json_t **holder, const char **note)
{
	return http_req_optional_text(req, "note", APPROVAL_TEXT_MAX, holder, note);
}

static struct store_stmt st_lock = {
    "apr_lock", "SELECT " APPROVAL_COLUMNS " FROM approvals WHERE id = $1 FOR UPDATE", 1, 0};

static struct store_stmt st_decide = {
    "apr_decide",
    "UPDATE approvals SET status = $2, decided_at = now(), decided_by = $3, "
    "decided_by_kind = $4, decision_note = $5, decided_by_idp = $6 WHERE id = $1 AND "
    "status = 'pending' AND expires_at > now() RETURNING " APPROVAL_COLUMNS,
    6, 0};

/* The scope column (a JSON array) of row 0 of r, space-separated, into out. */
static void
scope_joined(const PGresult *r, char *out, size_t len)
{
	json_t *a = json_loads(PQgetvalue(r, 0, APR_C_SCOPE), 0, NULL);
	size_t at = 0, i;
	json_t *e;

	out[0] = '\0';
	json_array_foreach(a, i, e)
	{
		int w = snprintf(out + at, len - at, "%s%s", at > 0 ? " " : "",
		                 json_string_value(e) ? json_string_value(e) : "");

		if (w < 0 || (size_t)w >= len - at)
			break;
		at += (size_t)w;
	}
	json_decref(a);
}

/* The event of a decision (or of an attempt on an expired approval). */
static int
emit_decision(struct http_req *req, const struct caller *who, enum audit_type type,
              enum audit_outcome outcome, const PGresult *r, const char *note,
              const char *attempted)
{
	char scope[TASK_MAX_SCOPES * (IDP_SCOPE_MAX_LEN + 1)];
	json_t *scopes = json_loads(PQgetvalue(r, 0, APR_C_SCOPE), 0, NULL);
	char when[32];

	scope_joined(r, scope, sizeof(scope));
	idp_time_format(strtoll(PQgetvalue(r, 0, APR_C_EXPIRES), NULL, 10), when);
	struct approval_event e = {
	    .type = type,
	    .outcome = outcome,
	    .approval_id = PQgetvalue(r, 0, APR_C_ID),
	    .task_id = PQgetvalue(r, 0, APR_C_TASK),
	    .human = PQgetvalue(r, 0, APR_C_HUMAN),
	    .agent_id = PQgetvalue(r, 0, APR_C_AGENT),
	    .chain = PQgetvalue(r, 0, APR_C_CHAIN),
	    .actor = caller_actor_kind(who),
	    .actor_name = who->name,
	    .granted_scope = type == AUDIT_APPROVAL_GRANTED ? scope : NULL,
	    .request_id = http_req_id(req),
	    .peer = http_req_peer(req),
	    .detail = json_pack("{s:s,s:s,s:s,s:o,s:s,s:s,s:s?,s:s?,s:s,s:s?}", "approval_id",
	                        PQgetvalue(r, 0, APR_C_ID), "kind", PQgetvalue(r, 0, APR_C_KIND),
	                        "target", PQgetvalue(r, 0, APR_C_TARGET), "scope",
	                        scopes != NULL ? scopes : json_array(), "reason",
	                        PQgetvalue(r, 0, APR_C_REASON), "decided_by_kind",
	                        who->kind == CALLER_HUMAN ? "human" : "operator", "note", note,
	                        "attempted", attempted, "expires_at", when, "decided_by_idp",
	                        who->kind == CALLER_HUMAN ? who->idp : NULL),
	};
	return approval_emit(&e);
}

static void
decide(struct http_req *req, bool approve)
{
	const char *id = http_req_param(req, "id");
	const char *note = NULL, *params[6];
	struct store_conn *c = NULL;
	struct caller who;
	json_t *holder = NULL, *out = NULL;
	PGresult *t = NULL, *r = NULL;
	enum { NONE, NOT_FOUND, DECIDED, EXPIRED } refused = NONE;
	int rc;

	if (!caller_identify(req, DECIDE_ROLES, "approvals", &who) ||
	    !http_req_query_only(req, NULL))
		return;
	if (who.kind == CALLER_AGENT) {
		http_reply_problem(
		    req, 403, "forbidden", NULL,
		    "an agent cannot decide an approval; a human or an approver does");
		return;
	}
	if (!approval_id_valid(id)) {
		reply_not_found(req);
		return;
	}
	if (!read_note(req, &holder, &note))
		return;
	if (store_acquire(approvals_store(), &c) != IDP_OK) {
		json_decref(holder);
		http_reply_error(req, IDP_EUNAVAIL, "the approval store is not reachable");
		return;
	}
	rc = store_cmd(c, "BEGIN");
	if (rc != IDP_OK)
		goto done;
	params[0] = id;
	rc = store_exec(c, &st_lock, params, &t);
	if (rc != IDP_OK)
		goto done;
	if (PQntuples(t) != 1 || !may_see(&who, t)) {
		refused = NOT_FOUND;
		goto done;
	}
	/* Expired first, decided or not, as GET reads it (an approval approved
	 * and never used expires too). */
	if (strcmp(PQgetvalue(t, 0, APR_C_STATUS), "expired") == 0) {
		/* Nothing changes; the attempt is on the record. */
		if (emit_decision(req, &who, AUDIT_APPROVAL_EXPIRED, AUDIT_OUTCOME_DENIED, t, note,
		                  approve ? "approve" : "deny") != IDP_OK)
			log_warn("approvals: cannot record the decision attempt on expired %s", id);
		refused = EXPIRED;
		goto done;
	}
	if (strcmp(PQgetvalue(t, 0, APR_C_STORED_STATUS), "pending") != 0) {
		refused = DECIDED;
		goto done;
	}
	params[1] = approve ? "approved" : "denied";
	params[2] = who.name;
	params[3] = who.kind == CALLER_HUMAN ? "human" : "operator";
	params[4] = note;
	/* A principal names a person only with its provider: recorded with it. */
	params[5] = who.kind == CALLER_HUMAN ? who.idp : NULL;
	rc = store_exec(c, &st_decide, params, &r);
	if (rc != IDP_OK)
		goto done;
	if (PQntuples(r) != 1) {
		/* Locked above and pending under one clock: this cannot happen. */
		rc = IDP_EINTERNAL;
		goto done;
	}
	rc = emit_decision(req, &who, approve ? AUDIT_APPROVAL_GRANTED : AUDIT_APPROVAL_DENIED,
	                   AUDIT_OUTCOME_SUCCESS, r, note, NULL);
	if (rc != IDP_OK)
		goto done;
	rc = store_cmd(c, "COMMIT");
	if (rc != IDP_OK) {
		log_error("approvals: COMMIT failed after the decision on %s was audited", id);
		goto done;
	}
	out = approval_json(r, 0);
	log_info("approvals: %s %s by %s", id, approve ? "approved" : "denied", who.name);
done:
	if (out == NULL && store_cmd(c, "ROLLBACK") != IDP_OK)
		store_discard(c);
	store_release(approvals_store(), c);
	if (out != NULL) {
		http_reply_json(req, 200, out);
	} else if (refused == NOT_FOUND) {
		reply_not_found(req);
	} else if (refused == DECIDED) {
		http_reply_problem(
		    req, 409, "approval_already_decided",
		    json_pack("{s:s}", "approval_status", PQgetvalue(t, 0, APR_C_STORED_STATUS)),
		    "the approval is already %s", PQgetvalue(t, 0, APR_C_STORED_STATUS));
	} else if (refused == EXPIRED) {
		http_reply_problem(req, 409, "approval_expired",
		                   json_pack("{s:s}", "approval_status", "expired"),
		                   "the approval has expired");
	} else {
		http_reply_error(req, rc == IDP_EINTERNAL ? IDP_EINTERNAL : IDP_EUNAVAIL,
		                 "the approval cannot be decided now");
	}
	PQclear(r);
	PQclear(t);
	json_decref(holder);
}

static void
approve(struct http_req *req, void *ctx)
{
	(void)ctx;
	decide(req, true);
}

static void
deny(struct http_req *req, void *ctx)
{
	(void)ctx;
	decide(req, false);
}

int
approvals_routes(struct http_router *r, struct idpd_app *app)
{
	(void)app;
	if (http_router_add(r, HTTP_GET, "/v1/approvals", list, NULL) != IDP_OK ||
	    http_router_add(r, HTTP_GET, "/v1/approvals/{id}", get_one, NULL) != IDP_OK ||
	    http_router_add(r, HTTP_POST, "/v1/approvals/{id}/approve", approve, NULL) != IDP_OK ||
	    http_router_add(r, HTTP_POST, "/v1/approvals/{id}/deny", deny, NULL) != IDP_OK)
		return IDP_EINVAL;
	return IDP_OK;
}
