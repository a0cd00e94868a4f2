/*
 * http.h - the HTTP front: libmicrohttpd server, router, request and response
 * helpers, problem+json errors, JSON intake with limits, access log and
 * request metrics.
 *
 * The server owns the MHD daemon and one struct http_req per request.  A
 * request's memory (its arena, body, headers it copied) is released in MHD's
 * completion callback, so handlers rarely free anything.  Handlers run on
 * MHD's pool threads ("any worker") and must answer exactly once through one
 * of the http_reply_* functions; a handler that returns without answering
 * gets a 500, which is logged as a bug.
 *
 * Threads: MHD's pool (server.threads, one per core) does the I/O.  A
 * request whose route may block is handed to a pool of handler threads
 * (server.handler_threads) while its connection is suspended, so an I/O
 * thread never waits on PostgreSQL and a slow handler never stalls the
 * other connections of its I/O thread.  Waiting handlers are what lets the
 * audit writer group-commit the events of many requests at once.
 */
#ifndef IDPD_HTTP_H
#define IDPD_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "idpd/arena.h"
#include "idpd/common.h"

struct http_server;
struct http_router;
struct http_req;

enum http_method {
	HTTP_GET = 1 << 0,
	HTTP_HEAD = 1 << 1,
	HTTP_POST = 1 << 2,
	HTTP_PUT = 1 << 3,
	HTTP_PATCH = 1 << 4,
	HTTP_DELETE = 1 << 5,
	HTTP_OPTIONS = 1 << 6,
};

/* Parse "GET" etc.; 0 for a method idpd does not serve. */
unsigned http_method_parse(const char *s);
const char *http_method_name(unsigned m);

typedef void (*http_handler)(struct http_req *req, void *ctx);

/* ---- router (no MHD dependency; unit-tested alone) ---- */

#define HTTP_MAX_PARAMS 4
#define HTTP_MAX_ROUTES 128

struct http_match {
	int route;      /* index, or -1 */
	int status;     /* 0 on match, 404 or 405 otherwise */
	unsigned allow; /* for 405: methods the path accepts */
	size_t n_params;
	struct {
		const char *name;
		const char *value; /* points into the caller's scratch buffer */
	} params[HTTP_MAX_PARAMS];
};

struct http_router *http_router_new(void);
void http_router_free(struct http_router *r);

/*
 * Add a route.  pattern is a path of literal segments and "{name}"
 * parameters, e.g. "/v1/agents/{id}/attest".  methods is a mask; GET routes
 * also answer HEAD.  Returns IDP_EINVAL for a malformed pattern or a
 * duplicate (pattern, method), IDP_ETOOBIG past HTTP_MAX_ROUTES.
 */
int http_router_add(struct http_router *r, unsigned methods, const char *pattern, http_handler h,
                    void *ctx) IDP_WUR;

/*
 * Handlers run on the server's handler pool by default, because most of
 * them wait on PostgreSQL or on the audit commit.  HTTP_ROUTE_INLINE runs
 * one on the I/O thread instead: for handlers that never block (liveness,
 * metrics, JWKS, answers from memory), where a thread hand-off would cost
 * more than the work.
 */
#define HTTP_ROUTE_INLINE 1u
int http_router_add_ex(struct http_router *r, unsigned methods, const char *pattern, http_handler h,
                       void *ctx, unsigned flags) IDP_WUR;
unsigned http_router_flags(const struct http_router *r, int route);

/*
 * Match path for method.  scratch (scratch_len bytes) receives the parameter
 * values; they are percent-decoded and never contain '/'.  A path that does
 * not parse (no leading '/', empty segment, a "." or ".." segment, a NUL)
 * matches nothing (404).
 */
void http_router_match(const struct http_router *r, unsigned method, const char *path,
                       char *scratch, size_t scratch_len, struct http_match *m);

const char *http_router_pattern(const struct http_router *r, int route);
size_t http_router_count(const struct http_router *r);
http_handler http_router_handler(const struct http_router *r, int route, void **ctx);

/* Format an Allow header value from a mask ("GET, HEAD, POST"). */
void http_allow_format(unsigned mask, char *out, size_t len);

/* ---- server ---- */

struct http_server_opts {
	const char *listen; /* IPv4 or IPv6 literal */
	int port;
	int threads;         /* I/O threads (MHD's pool), >= 1 */
	int handler_threads; /* handler pool; 0 runs every handler inline */
	size_t max_body;     /* bytes; larger bodies get 413 */
	/* Bytes of bodies held at once over all connections (at least max_body);
	 * a body that would pass it gets 503. */
	size_t max_body_memory;
	int max_connections;
	int connection_timeout_s;
	int json_max_depth;
	bool access_log;
};

/*
 * Start serving with the given router (the server takes ownership of it).
 * Returns NULL with diag filled when the socket cannot be bound or MHD fails.
 */
struct http_server *http_server_start(const struct http_server_opts *o, struct http_router *r,
                                      struct idp_diag *diag);

/*
 * Stop accepting new connections, wait up to timeout_ms for requests in
 * flight to complete, then stop the daemon and free everything.  Returns the
 * number of requests that ended without their answer once draining began
 * (closed by the stop, or by their client).  Main thread only.
 */
int http_server_stop(struct http_server *s, int64_t timeout_ms);

/* Requests whose handler has started and whose response is not yet sent. */
int http_server_in_flight(const struct http_server *s);

/* ---- request accessors (handler thread) ---- */

struct idp_arena *http_req_arena(struct http_req *req);
unsigned http_req_method(const struct http_req *req);
const char *http_req_path(const struct http_req *req);
const char *http_req_route(const struct http_req *req); /* pattern, for logs */
const char *http_req_id(const struct http_req *req);
const char *http_req_param(const struct http_req *req, const char *name);
const char *http_req_query(struct http_req *req, const char *name);
/*
 * Query parameter name as a decimal integer in [min, max]; dflt when it is
 * absent.  Returns false (and leaves *out alone) when it is present but not
 * such an integer; the caller answers 400.
 */
bool http_req_query_int(struct http_req *req, const char *name, long min, long max, long dflt,
                        long *out);
/* A header's value without the whitespace around it, or NULL. */
const char *http_req_header(struct http_req *req, const char *name);
/*
 * The host the client addressed: an absolute-form target's authority, else
 * Host (checked before any handler runs: a reg-name or IP and a port).
 */
const char *http_req_host(struct http_req *req);
/*
 * The URL clients reach this service by, for the metadata documents: issuer
 * when it is an http(s) URL (the setting behind an ingress; the answer may
 * be cached max_age_s), else "http://" and http_req_host (right only for
 * that host: the answer is not stored and varies by Host).  Adds the
 * Cache-Control (and Vary) headers; no trailing '/'.  IDP_EINVAL without a
 * host (an HTTP/1.0 request without Host): the caller answers 400.
 */
int http_req_public_base(struct http_req *req, const char *issuer, int max_age_s, char *out,
                         size_t len) IDP_WUR;
/* The token of "Authorization: Bearer <token>", or NULL when there is none. */
const char *http_req_bearer(struct http_req *req);
const char *http_req_body(const struct http_req *req, size_t *len);
/* Peer address as text ("127.0.0.1"); "" when unknown. */
const char *http_req_peer(struct http_req *req);
bool http_req_answered(const struct http_req *req);
/*
 * From an inline handler that finds it would have to wait (a cache miss
 * that needs PostgreSQL): ask to be run again on the handler pool.  Returns
 * true when granted; the handler then returns at once without answering and
 * is called again, from the start, on a pool thread.  Returns false on the
 * pool (or when there is none, or during shutdown): then just do the work.
 */
bool http_req_defer(struct http_req *req);
/* Whether this handler may wait (on the pool, or with no pool to defer to):
 * false exactly when http_req_defer would grant a deferral. */
bool http_req_may_wait(const struct http_req *req);

/*
 * Answer later, from another thread.  The handler calls this, hands req to
 * whoever will answer it (the audit writer's completion, say) and returns
 * without answering and without touching req again.  That thread answers
 * with http_reply_* and then calls http_req_resume, after which req is
 * gone.  Until then the connection is suspended and nothing else touches
 * req.  Any handler, inline or pooled; http_server_stop waits for every
 * suspended request to be resumed.  Returns false, and suspends nothing,
 * once the server is stopping: then answer on this thread.
 */
bool http_req_suspend(struct http_req *req);
void http_req_resume(struct http_req *req);
/*
 * Take back the answer a suspended request holds, not yet sent, so that
 * another can be given: a token answered before its audit event was
 * committed becomes a 503 when the commit fails.  The answer is freed at
 * once; a body given with http_reply_take_secret is wiped as it is, so an
 * answer that may be withdrawn with a token in it must be given that way.
 */
void http_req_withdraw(struct http_req *req);

/*
 * From an inline handler that reached a step that must wait (a write to
 * PostgreSQL) after work it must not repeat: run fn(req, arg) on the
 * handler pool, which answers.  The handler returns at once and does not
 * touch req again.  On the pool (or with no pool, or during shutdown) fn
 * runs right here, before this returns.
 */
void http_req_continue(struct http_req *req, http_handler fn, void *arg);

/*
 * Parse the body as one JSON object: Content-Type must be application/json
 * (415 otherwise), nesting within the configured depth, no duplicate keys,
 * no trailing data.  On failure the request is answered (400/415) and NULL
 * returned; the handler then just returns.  The caller owns the result
 * (json_decref).
 */
json_t *http_req_json_object(struct http_req *req);

/*
 * An optional body of one text field, {"<field>": "..."} (a reason, a
 * note): an empty body is none (*out NULL).  The text must be 1..max bytes
 * without control characters; any other field is refused.  true with *out
 * pointing into *holder (json_decref it when done); false after answering
 * (400/415 as http_req_json_object, 422 with "errors").
 */
bool http_req_optional_text(struct http_req *req, const char *field, size_t max, json_t **holder,
                            const char **out);

/*
 * For an endpoint that takes no body: true when the request carries none;
 * otherwise answers 400 bad_request (the endpoint would ignore what the
 * body asks, and still act) and returns false.
 */
bool http_req_no_body(struct http_req *req);

/*
 * Refuse query parameters the endpoint does not read: true when every
 * parameter's name is in allowed (NULL-terminated; NULL for an endpoint
 * that reads none); otherwise answers 400 bad_request naming the others
 * (detail and "parameters") and returns false.  A misspelt filter or an
 * option the endpoint lacks would otherwise be silently ignored.  A
 * request without a query costs one comparison (dispatch counted them).
 * A GET, HEAD or DELETE with a non-empty body is refused the same way
 * (400 bad_request): no such endpoint reads one, and what it asks would be
 * ignored.  Every endpoint with this strictness calls this once it has
 * authenticated the caller; those without it (OAuth, probes, metrics,
 * /.well-known) do not, and so take both as they always did.
 */
bool http_req_query_only(struct http_req *req, const char *const *allowed);

/* ---- application/x-www-form-urlencoded (the OAuth endpoints' bodies) ---- */

#define HTTP_FORM_MAX_PARAMS 32
#define HTTP_FORM_MAX_NAME 64     /* bytes, decoded */
#define HTTP_FORM_MAX_VALUE 16384 /* bytes, decoded */
#define HTTP_FORM_MAX_BODY 65536  /* bytes, encoded */

/*
 * A parsed form: names and values decoded, NUL-terminated, each name once
 * (one given with an empty value too).  Read it with http_form_get.
 */
struct http_form {
	size_t n;
	struct {
		const char *name;
		const char *value;
	} p[HTTP_FORM_MAX_PARAMS];
	/* After a refusal for a name given twice: that name (some answers depend on it). */
	const char *repeated;
};

/*
 * Parse len bytes of body into out, the strings allocated from arena.
 * '+' decodes to a space and %XX to its byte; empty pairs are skipped; a
 * pair without '=' has an empty value, and http_form_get reads an empty
 * value as absent.  Refused with a line in diag:
 * IDP_EINVAL for a '%' without two hex digits, a name or value that is not
 * UTF-8 text without control characters (so never a NUL), an empty name, or
 * a name given twice (RFC 6749 section 3.2); IDP_ETOOBIG past the limits
 * above or a full arena.  out is unspecified on error, but for
 * out->repeated.  Pure; no MHD.
 */
int http_form_parse(const char *body, size_t len, struct idp_arena *arena, struct http_form *out,
                    struct idp_diag *diag) IDP_WUR;
/*
 * Decode one form-encoded component s[0..n) (a name, a value, or an HTTP
 * Basic user or password, RFC 6749 section 2.3.1) into out, cap bytes
 * NUL-terminated, with http_form_parse's rules, its length into *len.
 * The caller's storage, so that a decoded secret can be wiped: on error
 * out may hold part of it.  IDP_EINVAL for a bad escape or bad text,
 * IDP_ETOOBIG when the result needs more than cap - 1 bytes.  Pure.
 */
int http_form_decode(const char *s, size_t n, char *out, size_t cap, size_t *len) IDP_WUR;
/*
 * The value of name, never empty; NULL when the form does not have it or
 * gives it without a value ("name=" or "name"), which RFC 6749 section 3.1
 * says is to be treated as omitted.
 */
const char *http_form_get(const struct http_form *f, const char *name);
/* Whether req's Content-Type is application/x-www-form-urlencoded (parameters allowed). */
bool http_req_is_form(struct http_req *req);
/* http_form_parse of req's body into its arena.  Does not answer the request. */
int http_req_form(struct http_req *req, struct http_form *out, struct idp_diag *diag) IDP_WUR;

/* ---- responses: each answers the request; call exactly one, once ---- */

/*
 * An RFC 6749 §5.2 error_description made of s: printable ASCII but '"' and
 * '\\' (a description may quote the request); any other byte becomes '?'.
 */
json_t *http_oauth_description(const char *s);
/*
 * An OAuth error (RFC 6749 section 5.2): {"error": error,
 * "error_description": description} (description may be NULL, made as
 * above), with Cache-Control: no-store and Pragma: no-cache.  Headers such
 * as WWW-Authenticate are added by the caller first.
 */
void http_reply_oauth_error(struct http_req *req, int status, const char *error,
                            const char *description);

/* Add a response header (copied).  Before the reply call. */
void http_add_header(struct http_req *req, const char *name, const char *value);

/* Reply with a JSON document; steals the reference to body. */
void http_reply_json(struct http_req *req, int status, json_t *body);
void http_reply_data(struct http_req *req, int status, const char *content_type, const void *data,
                     size_t len);
/* As http_reply_data, but takes data (from malloc) instead of copying it. */
void http_reply_take(struct http_req *req, int status, const char *content_type, char *data,
                     size_t len);
/* The same for a body that carries a secret (a token; NUL-terminated):
 * wiped when libmicrohttpd frees it, sent or withdrawn. */
void http_reply_take_secret(struct http_req *req, int status, const char *content_type, char *data,
                            size_t len);
/* 204 or any status without a body. */
void http_reply_empty(struct http_req *req, int status);

/*
 * application/problem+json (RFC 9457): type "urn:idpd:problem:<code>",
 * title (from the status), status, detail, code, request_id.  extra, when
 * not NULL, is merged in (stolen), e.g. a field-by-field "errors" list.
 */
void http_reply_problem(struct http_req *req, int status, const char *code, json_t *extra,
                        const char *fmt, ...) IDP_PRINTF(5, 6);
/* The same, with status and code taken from the one error table. */
void http_reply_error(struct http_req *req, int err, const char *fmt, ...) IDP_PRINTF(3, 4);

/* The lines of a diagnostic as a JSON array of strings, for a problem's
 * "errors" member.  Lines that are not valid UTF-8 are left out. */
json_t *http_diag_lines(const struct idp_diag *d);

/* The table: idp_err -> HTTP status and problem code. */
int http_status_for(int err);
const char *http_code_for(int err);
const char *http_status_title(int status);

/* ---- JSON limits (no MHD dependency) ---- */

/*
 * Parse text as JSON with duplicate keys rejected and nesting bounded by
 * max_depth.  On error returns NULL and writes "line L, column C: why" into
 * err (err_len bytes).
 */
json_t *http_json_parse(const char *text, size_t len, int max_depth, char *err, size_t err_len);

/*
 * A line in d for each member of obj not named in known (NULL-terminated):
 * a misspelt optional field ("tll") must not silently become its default.
 */
void http_json_unknown_members(const json_t *obj, const char *const *known, struct idp_diag *d);

/* ---- ids ---- */

/* A well-formed request id: 1..128 of [A-Za-z0-9._:-]. */
bool http_request_id_valid(const char *s);
/* 32 hex chars from the CSPRNG into out[33]. */
void http_request_id_new(char out[33]);

#endif /* IDPD_HTTP_H */
