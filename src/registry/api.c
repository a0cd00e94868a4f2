/*
 * api.c - the registry's HTTP endpoints:
 *
 *   POST  /v1/agents                       register (registrar)
 *   GET   /v1/agents                       list with filters, keyset pages
 *   GET   /v1/agents/{id}                  one agent, from the cache
 *   PATCH /v1/agents/{id}                  JSON merge patch, If-Match required
 *   POST  /v1/agents/{id}/suspend          active -> suspended
 *   POST  /v1/agents/{id}/resume           suspended -> active
 *   POST  /v1/agents/{id}/decommission     -> decommissioned (terminal)
 *
 * Reads need registrar, auditor or introspector (a downstream API checks
 * an agent's capabilities); writes need registrar.  admin passes every check.
 * docs/api.md describes the shapes; docs/openapi.yaml is the schema.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "idpd/auth.h"
#include "idpd/b64.h"
#include "idpd/log.h"
#include "registry_int.h"

#define READ_ROLES (IDPD_ROLE_REGISTRAR | IDPD_ROLE_AUDITOR | IDPD_ROLE_INTROSPECTOR)
#define WRITE_ROLES IDPD_ROLE_REGISTRAR
/* The largest agent JSON: 256 capabilities of 256 bytes, escaped, and the rest. */
#define AGENT_JSON_MAX (1u << 20)

/* ---- helpers ---- */

static void
set_etag(struct http_req *req, const struct registry_agent *a)
{
	char etag[32];

	snprintf(etag, sizeof(etag), "\"%lld\"", (long long)a->version);
	http_add_header(req, "ETag", etag);
}

/* Answer with one agent as JSON; status 200 or 201. */
static void
reply_agent(struct http_req *req, int status, const struct registry_agent *a)
{
	static const char room[2048];
	struct idp_buf b;

	idp_buf_init(&b, AGENT_JSON_MAX);
	/* Room for a typical record up front, instead of five doublings. */
	if (idp_buf_append(&b, room, sizeof(room) - 1) == IDP_OK)
		idp_buf_reset(&b);
	if (agent_render(a, &b) != IDP_OK) {
		idp_buf_cleanup(&b);
		http_reply_error(req, IDP_EINTERNAL, "the agent record is too large to render");
		return;
	}
	set_etag(req, a);
	http_reply_data(req, status, "application/json", b.data, b.len);
	idp_buf_cleanup(&b);
}

static void
reply_errors(struct http_req *req, json_t *errors)
{
	http_reply_problem(req, 422, "unprocessable", json_pack("{s:O}", "errors", errors),
	                   "the agent is not valid: %zu problem(s), listed in errors",
	                   json_array_size(errors));
}

static void
actor_of(struct http_req *req, const struct auth_principal *who, struct registry_actor *a)
{
	a->name = who->name;
	a->request_id = http_req_id(req);
	a->source_address = http_req_peer(req);
}

/*
 * If-None-Match: "*", or a list of entity tags compared weakly (RFC 9110
 * 13.1.2), so W/"7" and "3", "7" both hit version 7.  A tag that is not
 * quoted ends the walk: what follows cannot be read as a list.
 */
static bool
if_none_match_hits(const char *h, int64_t version)
{
	char etag[32];
	size_t n = (size_t)snprintf(etag, sizeof(etag), "\"%lld\"", (long long)version);

	for (;;) {
		const char *close;

		while (*h == ' ' || *h == '\t' || *h == ',')
			h++;
		if (*h == '\0')
			return false;
		if (*h == '*')
			return true;
		if (strncmp(h, "W/", 2) == 0)
			h += 2;
		if (*h != '"' || (close = strchr(h + 1, '"')) == NULL)
			return false;
		if ((size_t)(close + 1 - h) == n && memcmp(h, etag, n) == 0)
			return true;
		h = close + 1;
	}
}

/* etagc of RFC 9110 8.8.3: what an opaque tag may hold between its quotes. */
static bool
etagc(unsigned char c)
{
	return c == 0x21 || (c >= 0x23 && c <= 0x7e) || c >= 0x80;
}

/* The version a strong tag's opaque part names, or 0 when idpd never sends that tag. */
static int64_t
tag_version(const char *s, size_t n)
{
	int64_t v = 0;

	if (n == 0 || n > 18 || s[0] == '0')
		return 0;
	for (size_t i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return 0;
		v = v * 10 + (s[i] - '0');
	}
	return v;
}

int
registry_if_match_parse(const char *h, struct registry_if_match *out)
{
	size_t tags = 0;

	memset(out, 0, sizeof(*out));
	while (*h == ' ' || *h == '\t')
		h++;
	if (strcmp(h, "*") == 0) {
		out->any = true;
		return IDP_OK;
	}
	for (;;) {
		const char *open, *close;
		bool weak = false;
		int64_t v;

		/* Empty list elements are allowed (RFC 9110 5.6.1). */
		while (*h == ' ' || *h == '\t' || *h == ',')
			h++;
		if (*h == '\0')
			break;
		if (strncmp(h, "W/", 2) == 0) {
			weak = true;
			h += 2;
		}
		if (*h != '"')
			return IDP_EINVAL;
		open = h + 1;
		for (close = open; *close != '"'; close++)
			if (!etagc((unsigned char)*close))
				return IDP_EINVAL; /* '\0' too: the quote never closes */
		if (++tags > REGISTRY_IF_MATCH_MAX)
			return IDP_EINVAL;
		/* If-Match compares strongly (RFC 9110 13.1.1): a weak tag
		 * matches nothing, nor does a tag idpd never sends. */
		v = weak ? 0 : tag_version(open, (size_t)(close - open));
		if (v > 0)
			out->versions[out->n++] = v;
		h = close + 1;
		while (*h == ' ' || *h == '\t')
			h++;
		if (*h != ',' && *h != '\0')
			return IDP_EINVAL;
	}
	return tags > 0 ? IDP_OK : IDP_EINVAL;
}

bool
registry_if_match_holds(const struct registry_if_match *m, int64_t version)
{
	if (m == NULL || m->any)
		return true;
	for (size_t i = 0; i < m->n; i++)
		if (m->versions[i] == version)
			return true;
	return false;
}

/*
 * If-Match: "*" or a list of entity tags.  Returns 1 with *m filled, 0
 * when the header is absent and not required, or -1 after answering (428
 * when required and absent; 400 for a value that is neither form).  A tag
 * that names no current version is not an error: the change fails its
 * precondition (412) under the row lock.
 */
static int
if_match(struct http_req *req, bool required, struct registry_if_match *m)
{
	const char *h = http_req_header(req, "If-Match");

	if (h == NULL) {
		if (required) {
			http_reply_problem(
			    req, 428, "precondition_required", NULL,
			    "send If-Match with the ETag of the version you read, so "
			    "a concurrent change is not overwritten");
			return -1;
		}
		return 0;
	}
	if (registry_if_match_parse(h, m) != IDP_OK) {
		http_reply_problem(req, 400, "bad_request", NULL,
		                   "If-Match must be * or a list of at most %d entity tags, such "
		                   "as \"7\" or \"7\", \"8\"",
		                   REGISTRY_IF_MATCH_MAX);
		return -1;
	}
	return 1;
}

static void
reply_not_found(struct http_req *req, const char *id)
{
	http_reply_problem(req, 404, "not_found", NULL, "no agent has the id \"%.128s\"",
	                   registry_id_valid(id) ? id : "(malformed)");
}

/* ---- POST /v1/agents ---- */

static void
create(struct http_req *req, void *ctx)
{
	struct auth_principal who;
	struct registry_actor actor;
	struct registry_agent *a = NULL;
	json_t *body, *norm, *errors;
	char location[160];
	int rc;

	(void)ctx;
	if (!auth_require(req, WRITE_ROLES, &who) || !http_req_query_only(req, NULL))
		return;
	body = http_req_json_object(req);
	if (body == NULL)
		return;
	errors = json_array();
	norm = agent_input_validate(body, errors);
	json_decref(body);
	if (norm != NULL && registry_owner_check(json_string_value(json_object_get(norm, "owner")),
	                                         errors) != IDP_OK) {
		json_decref(norm);
		norm = NULL;
	}
	if (norm == NULL) {
		reply_errors(req, errors);
		json_decref(errors);
		return;
	}
	json_decref(errors);
	actor_of(req, &who, &actor);
	rc = registry_db_create(registry_store(), norm, &actor, &a);
	if (rc == IDP_ECONFLICT) {
		http_reply_problem(
		    req, 409, "conflict",
		    json_pack("{s:s}", "id", json_string_value(json_object_get(norm, "id"))),
		    "an agent with this id exists (decommissioned ids are never "
		    "reused)");
		json_decref(norm);
		return;
	}
	json_decref(norm);
	if (rc != IDP_OK) {
		http_reply_error(req, rc == IDP_EINVAL ? IDP_EUNPROCESSABLE : rc,
		                 "the agent could not be registered");
		return;
	}
	snprintf(location, sizeof(location), "/v1/agents/%s", a->id);
	http_add_header(req, "Location", location);
	reply_agent(req, 201, a);
	registry_publish(a); /* hands over the reference */
}

/* ---- GET /v1/agents/{id} ---- */

static void
get_one(struct http_req *req, void *ctx)
{
	struct auth_principal who;
	const struct registry_agent *a;
	const char *id = http_req_param(req, "id"), *inm;
	int rc;

	(void)ctx;
	if (!auth_require(req, READ_ROLES, &who) || !http_req_query_only(req, NULL))
		return;
	/* Served from memory on the I/O thread; a read that would wait on
	 * PostgreSQL moves to the handler pool instead. */
	rc = registry_lookup(id, false, &a);
	if (rc == IDP_EWOULDBLOCK) {
		if (http_req_defer(req))
			return;
		rc = registry_get(id, &a); /* on a pool thread already */
	}
	if (rc == IDP_ENOTFOUND || rc == IDP_EINVAL) {
		reply_not_found(req, id);
		return;
	}
	if (rc != IDP_OK) {
		http_reply_error(req, rc, "the registry cannot answer now");
		return;
	}
	inm = http_req_header(req, "If-None-Match");
	if (inm != NULL && if_none_match_hits(inm, a->version)) {
		set_etag(req, a);
		registry_agent_unref(a);
		http_reply_empty(req, 304);
		return;
	}
	reply_agent(req, 200, a);
	registry_agent_unref(a);
}

/* ---- GET /v1/agents ---- */

/* Cursor: "a1" + base64url(last id), opaque to clients. */
void
registry_cursor_encode(const char *last_id, char *out, size_t len)
{
	size_t n = strlen(last_id);

	if (len < 3 + idp_b64url_encoded_len(n)) {
		if (len > 0)
			out[0] = '\0';
		return;
	}
	memcpy(out, "a1", 2);
	idp_b64url_encode_to(last_id, n, out + 2);
}

bool
registry_cursor_decode(const char *cursor, char *id, size_t len)
{
	size_t n, got;

	if (cursor == NULL || strncmp(cursor, "a1", 2) != 0 || len == 0)
		return false;
	cursor += 2;
	n = strlen(cursor);
	if (n == 0 || n > 180 ||
	    idp_b64url_decode(cursor, n, (unsigned char *)id, len - 1, &got) != IDP_OK)
		return false;
	id[got] = '\0';
	return memchr(id, '\0', got) == NULL && registry_id_valid(id);
}

static void
list(struct http_req *req, void *ctx)
{
	static const struct {
		const char *param;
		const char *before, *after; /* around "$n" */
	} filters[] = {
	    {"owner", " AND owner = ", ""},
	    {"team", " AND team = ", ""},
	    {"type", " AND agent_type = ", ""},
	    {"status", " AND status = ", ""},
	    {"capability", " AND idpd_scope_within(", ", capabilities)"},
	};
	static const char *const params_known[] = {"owner",      "team",  "type",   "status",
	                                           "capability", "limit", "cursor", NULL};
	struct auth_principal who;
	struct idp_buf sql, out;
	const char *params[8];
	char owner[330], after[REGISTRY_ID_MAX + 1], limit_s[24], next[200];
	const char *cursor = http_req_query(req, "cursor");
	int n = 0, rc = 0, rows, shown = 0;
	long limit;
	PGresult *res;

	(void)ctx;
	/* A misspelt filter ("statu=") would otherwise list every agent. */
	if (!auth_require(req, READ_ROLES, &who) || !http_req_query_only(req, params_known))
		return;
	if (!http_req_query_int(req, "limit", 1, REGISTRY_PAGE_MAX, REGISTRY_PAGE_DEFAULT,
	                        &limit)) {
		http_reply_problem(req, 400, "bad_request", NULL,
		                   "limit must be an integer from 1 to %d", REGISTRY_PAGE_MAX);
		return;
	}
	if (cursor != NULL && !registry_cursor_decode(cursor, after, sizeof(after))) {
		http_reply_problem(req, 400, "bad_request", NULL,
		                   "cursor is not one idpd issued; start again without it");
		return;
	}

	/* The SQL is assembled from the constant fragments above; every value
	 * travels as a parameter. */
	idp_buf_init(&sql, 4096);
	rc |= idp_buf_puts(&sql, "SELECT " AGENT_COLUMNS " FROM agents WHERE true");
	for (size_t i = 0; i < IDP_ARRAY_LEN(filters); i++) {
		const char *v = http_req_query(req, filters[i].param);

		if (v == NULL)
			continue;
		if (strcmp(filters[i].param, "status") == 0 && registry_status_parse(v) < 0) {
			idp_buf_cleanup(&sql);
			http_reply_problem(req, 400, "bad_request", NULL,
			                   "status must be active, suspended or decommissioned");
			return;
		}
		if (strcmp(filters[i].param, "capability") == 0 &&
		    scope_validate(v, NULL) != IDP_OK) {
			idp_buf_cleanup(&sql);
			http_reply_problem(
			    req, 400, "bad_request", NULL,
			    "capability must be a scope such as ec2:DescribeInstances");
			return;
		}
		if (strlen(v) > 512) {
			idp_buf_cleanup(&sql);
			http_reply_problem(req, 400, "bad_request", NULL, "%s is too long",
			                   filters[i].param);
			return;
		}
		if (strcmp(filters[i].param, "owner") == 0) {
			registry_owner_normalize(v, owner, sizeof(owner));
			v = owner;
		}
		params[n++] = v;
		rc |= idp_buf_printf(&sql, "%s$%d%s", filters[i].before, n, filters[i].after);
	}
	if (cursor != NULL) {
		params[n++] = after;
		rc |= idp_buf_printf(&sql, " AND id > $%d", n);
	}
	snprintf(limit_s, sizeof(limit_s), "%ld", limit + 1);
	params[n++] = limit_s;
	rc |= idp_buf_printf(&sql, " ORDER BY id LIMIT $%d::int", n);
	if (rc != 0) {
		idp_buf_cleanup(&sql);
		http_reply_error(req, IDP_EINTERNAL, "query too long");
		return;
	}
	rc = store_query(registry_store(), idp_buf_str(&sql), n, params, &res);
	idp_buf_cleanup(&sql);
	if (rc != IDP_OK) {
		/* IDP_EINVAL is a filter value PostgreSQL cannot take, such as
		 * invalid UTF-8: the client's error (400), not ours. */
		http_reply_error(req, rc == IDP_EINVAL ? IDP_EINVAL : IDP_EUNAVAIL,
		                 rc == IDP_EINVAL ? "a filter value is not valid text"
		                                  : "the registry query failed");
		return;
	}
	rows = PQntuples(res);
	idp_buf_init(&out, 0);
	rc = idp_buf_puts(&out, "{\"agents\":[");
	for (int i = 0; i < rows && i < limit; i++) {
		struct registry_agent *a = agent_from_row(res, i);

		if (a == NULL)
			continue;
		if (shown++ > 0)
			rc |= idp_buf_putc(&out, ',');
		rc |= agent_render(a, &out);
		registry_agent_unref(a);
	}
	rc |= idp_buf_putc(&out, ']');
	if (rows > limit) {
		registry_cursor_encode(PQgetvalue(res, limit - 1, 0), next, sizeof(next));
		rc |= idp_buf_printf(&out, ",\"next_cursor\":\"%s\"", next);
	}
	rc |= idp_buf_putc(&out, '}');
	PQclear(res);
	if (rc != 0) {
		idp_buf_cleanup(&out);
		http_reply_error(req, IDP_EINTERNAL, "cannot render the page");
		return;
	}
	http_reply_data(req, 200, "application/json", out.data, out.len);
	idp_buf_cleanup(&out);
}

/* ---- PATCH /v1/agents/{id} ---- */

static void
patch(struct http_req *req, void *ctx)
{
	struct auth_principal who;
	struct registry_actor actor;
	struct registry_agent *a = NULL;
	const char *id = http_req_param(req, "id");
	json_t *body, *errors;
	struct registry_if_match im;
	int rc;

	(void)ctx;
	if (!auth_require(req, WRITE_ROLES, &who) || !http_req_query_only(req, NULL))
		return;
	if (!registry_id_valid(id)) {
		reply_not_found(req, id);
		return;
	}
	if (if_match(req, true, &im) < 0)
		return;
	body = http_req_json_object(req);
	if (body == NULL)
		return;
	errors = json_array();
	actor_of(req, &who, &actor);
	rc = registry_db_patch(registry_store(), id, &im, body, &actor, errors, &a);
	json_decref(body);
	switch (rc) {
	case IDP_OK:
		reply_agent(req, 200, a);
		registry_publish(a);
		break;
	case IDP_EUNPROCESSABLE:
		reply_errors(req, errors);
		break;
	case IDP_ENOTFOUND:
		reply_not_found(req, id);
		break;
	case IDP_EPRECOND:
		http_reply_problem(req, 412, "precondition_failed", NULL,
		                   "the agent changed since you read it: GET it again and "
		                   "re-apply your change");
		break;
	case IDP_ECONFLICT:
		http_reply_problem(req, 409, "conflict",
		                   json_pack("{s:s}", "agent_status", "decommissioned"),
		                   "a decommissioned agent cannot change");
		break;
	default:
		http_reply_error(req, rc, "the agent could not be updated");
		break;
	}
	json_decref(errors);
}

/* ---- status transitions ---- */

/* The optional body {"reason": "..."}; *reason is NULL without one.  false after answering. */
static bool
read_reason(struct http_req *req, json_t **holder, const char **reason)
{
	return http_req_optional_text(req, "reason", REGISTRY_REASON_MAX, holder, reason);
}

static void
transition(struct http_req *req, enum registry_status to)
{
	struct auth_principal who;
	struct registry_actor actor;
	struct registry_agent *a = NULL;
	enum registry_status from = REGISTRY_ACTIVE;
	const char *id = http_req_param(req, "id"), *reason;
	struct store_conn *c;
	json_t *holder, *errors;
	struct registry_if_match im;
	int rc, present;

	if (!auth_require(req, WRITE_ROLES, &who) || !http_req_query_only(req, NULL))
		return;
	if (!registry_id_valid(id)) {
		reply_not_found(req, id);
		return;
	}
	present = if_match(req, false, &im);
	if (present < 0)
		return;
	if (!read_reason(req, &holder, &reason))
		return;
	if (to == REGISTRY_DECOMMISSIONED && reason == NULL) {
		errors = json_array();
		agent_error(errors, "reason",
		            "is required: a decommissioning records who, when and why");
		http_reply_problem(req, 422, "unprocessable", json_pack("{s:o}", "errors", errors),
		                   "the body is not valid");
		json_decref(holder);
		return;
	}
	if (store_acquire(registry_store(), &c) != IDP_OK) {
		json_decref(holder);
		http_reply_error(req, IDP_EUNAVAIL, "the registry is unavailable");
		return;
	}
	actor_of(req, &who, &actor);
	errors = json_array();
	rc = registry_db_transition(c, id, to, present ? &im : NULL, reason, &actor, NULL, errors,
	                            &from, &a);
	store_release(registry_store(), c);
	json_decref(holder);
	switch (rc) {
	case IDP_OK:
		reply_agent(req, 200, a);
		registry_publish(a);
		break;
	case IDP_ENOTFOUND:
		reply_not_found(req, id);
		break;
	case IDP_EPRECOND:
		http_reply_problem(req, 412, "precondition_failed", NULL,
		                   "the agent changed since you read it");
		break;
	case IDP_ECONFLICT:
		http_reply_problem(req, 409, "conflict",
		                   json_pack("{s:s}", "agent_status", registry_status_name(from)),
		                   "the agent is %s; it cannot become %s%s",
		                   registry_status_name(from), registry_status_name(to),
		                   from == REGISTRY_DECOMMISSIONED ? " (decommissioned is final)"
		                                                   : "");
		break;
	case IDP_EUNPROCESSABLE:
		/* As an owner change to the same owner is refused (422 on owner);
		 * like it, not audited: nothing changed. */
		http_reply_problem(
		    req, 422, "unprocessable", json_pack("{s:O}", "errors", errors),
		    "the agent's owner cannot be accountable for it: give it another "
		    "owner (PATCH) before resuming it");
		break;
	default:
		http_reply_error(req, rc, "the status could not be changed");
		break;
	}
	json_decref(errors);
}

static void
suspend(struct http_req *req, void *ctx)
{
	(void)ctx;
	transition(req, REGISTRY_SUSPENDED);
}

static void
resume(struct http_req *req, void *ctx)
{
	(void)ctx;
	transition(req, REGISTRY_ACTIVE);
}

static void
decommission(struct http_req *req, void *ctx)
{
	(void)ctx;
	transition(req, REGISTRY_DECOMMISSIONED);
}

int
registry_routes(struct http_router *r, struct idpd_app *app)
{
	int rc = 0;

	rc |= http_router_add(r, HTTP_POST, "/v1/agents", create, app);
	rc |= http_router_add(r, HTTP_GET, "/v1/agents", list, app);
	/* Answered from memory: on the I/O thread, where a hand-off to the
	 * handler pool would cost more than the lookup.  Only before the cache
	 * has loaded does it read PostgreSQL (one indexed row). */
	rc |= http_router_add_ex(r, HTTP_GET, "/v1/agents/{id}", get_one, app, HTTP_ROUTE_INLINE);
	rc |= http_router_add(r, HTTP_PATCH, "/v1/agents/{id}", patch, app);
	rc |= http_router_add(r, HTTP_POST, "/v1/agents/{id}/suspend", suspend, app);
	rc |= http_router_add(r, HTTP_POST, "/v1/agents/{id}/resume", resume, app);
	rc |= http_router_add(r, HTTP_POST, "/v1/agents/{id}/decommission", decommission, app);
	return rc == 0 ? IDP_OK : IDP_EINVAL;
}
