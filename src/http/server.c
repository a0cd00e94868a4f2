/*
 * server.c - libmicrohttpd glue: one struct http_req per request, body
 * intake under a cap, dispatch through the router, responses, access log
 * and request metrics.
 *
 * MHD calls the access handler several times per request: first when the
 * headers are in (the request is created here), then once per chunk of
 * body, then a last time with no data, where the handler is dispatched and
 * the response queued.  Queuing on that later call keeps the connection
 * alive; queuing on the first one makes MHD close it, which is acceptable
 * only for errors (413 on a declared oversize body).
 *
 * Shutdown: new connections are closed at once (on_accept), in_flight counts requests
 * between their first callback and their completion, and http_server_stop
 * waits for it to reach zero (bounded) before stopping the daemon.
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <pthread.h>
#include <netinet/in.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <microhttpd.h>

#include "idpd/buf.h"
#include "idpd/clock.h"
#include "idpd/http.h"
#include "idpd/log.h"
#include "idpd/metrics.h"

/* Latency histogram bounds, in microseconds. */
static const int64_t lat_bounds[] = {100,   250,   500,    1000,   2500,   5000,   10000,
                                     25000, 50000, 100000, 250000, 500000, 1000000};
#define N_BOUNDS (IDP_ARRAY_LEN(lat_bounds))
#define N_STATUS 600
#define DISCARD_MAX (16u << 20)
#define HTTP_CONNECTION_MEMORY (16u << 10)

struct route_stats {
	_Atomic uint64_t by_status[N_STATUS];
	_Atomic uint64_t aborted; /* the answer was never delivered (or never made) */
	_Atomic uint64_t buckets[N_BOUNDS + 1];
	_Atomic uint64_t sum_us;
	_Atomic uint64_t count;
};

struct http_server {
	struct MHD_Daemon *mhd;
	/* The handler pool.  pool.lock guards the job list and stop flag. */
	struct {
		pthread_mutex_t lock;
		pthread_cond_t cond;
		struct http_req *head, *tail;
		bool stop;
		/* http_server_stop is waiting for held requests: no more. */
		bool closing;
		pthread_t *threads;
		int n;
	} pool;
	struct http_router *router;
	struct http_server_opts opts;
	char listen[64];
	_Atomic int in_flight;
	_Atomic int cut_off; /* requests ended unanswered once draining began */
	/* Bytes of request bodies held now, all connections together: bounded
	 * by opts.max_body_memory, so that many slow uploads, authenticated or
	 * not, cannot hold max_connections times max_body. */
	_Atomic size_t body_bytes;
	/* Requests handed to another thread by http_req_suspend, not yet
	 * resumed: MHD must not stop while one is suspended. */
	_Atomic int held;
	/* Requests resumed with their answer whose connection has not completed
	 * yet: the stop waits for them, or MHD_stop_daemon would close the
	 * connection before the I/O thread sent an answer already made. */
	_Atomic int resuming;
	/* Set when shutdown begins: responses then carry "Connection: close",
	 * so keep-alive clients leave and in_flight can reach zero. */
	_Atomic bool draining;
	/* One slot per route plus one for requests that matched none. */
	struct route_stats *stats;
	size_t n_stats;
};

struct resp_header {
	const char *name, *value;
	struct resp_header *next;
};

struct http_req {
	struct http_server *srv;
	struct MHD_Connection *conn;
	struct idp_arena arena;
	unsigned method;
	const char *method_text;
	const char *path;
	const char *authority; /* of an absolute-form target (RFC 9112 3.2.2), or NULL */
	int route;
	struct http_match match;
	char scratch[1024];
	char *bearer; /* http_req_bearer's copy without trailing whitespace; wiped */
	char request_id[129];
	char peer[INET6_ADDRSTRLEN];
	struct idp_buf body;
	struct resp_header *headers;
	bool answered;
	bool on_pool;              /* the handler runs on the pool: stash the response */
	bool resuming;             /* counted in srv->resuming until on_completed */
	bool deferred;             /* an inline handler asked to be run on the pool */
	bool no_defer;             /* the pool is stopping: the handler must finish here */
	struct MHD_Response *resp; /* stashed until the connection is resumed */
	int resp_status;
	struct http_req *next_job;
	http_handler cont; /* the job is this continuation, not the route's handler */
	void *cont_arg;
	bool too_big;     /* body passed the cap: discard the rest, answer 413 at the end */
	bool too_busy;    /* bodies held passed max_body_memory: likewise, 503 */
	size_t body_held; /* this body's share of srv->body_bytes */
	size_t discarded;
	size_t query_n; /* query parameters, counted once by query_malformed */
	int status;
	int64_t start_us;
};

/*
 * The request a handler gave away on this thread (http_req_suspend,
 * http_req_continue): from then on another thread may answer and free it,
 * so the code that ran the handler compares the pointer and touches
 * nothing behind it.
 */
static _Thread_local struct http_req *given_away;

static bool pool_push(struct http_req *req);

/* ---- responses ---- */

/* A handler that answers twice is a bug: said, and the second answer dropped. */
static bool
second_answer(struct http_req *req)
{
	if (!req->answered)
		return false;
	log_error("bug: second response for %s %s (request %s)", req->method_text,
	          http_req_route(req), req->request_id);
	return true;
}

/*
 * Give r as req's answer, with the common headers; NULL (it could not be
 * made) becomes an empty 500.  A suspended request holds it until resumed.
 */
static void
queue_response(struct http_req *req, int status, const char *ctype, struct MHD_Response *r)
{
	bool has_cache = false, has_retry = false;

	req->answered = true;
	req->status = status;
	if (r == NULL) {
		log_error("cannot create a response for request %s", req->request_id);
		/* A pooled request must still get something, or its suspended
		 * connection would wait for its timeout. */
		r = MHD_create_response_from_buffer(0, NULL, MHD_RESPMEM_PERSISTENT);
		if (r == NULL)
			return;
		status = 500;
		req->status = 500;
	}
	if (ctype != NULL)
		MHD_add_response_header(r, "Content-Type", ctype);
	MHD_add_response_header(r, "X-Request-Id", req->request_id);
	MHD_add_response_header(r, "X-Content-Type-Options", "nosniff");
	for (struct resp_header *h = req->headers; h != NULL; h = h->next) {
		MHD_add_response_header(r, h->name, h->value);
		if (strcasecmp(h->name, "Cache-Control") == 0)
			has_cache = true;
		else if (strcasecmp(h->name, "Retry-After") == 0)
			has_retry = true;
	}
	/* Every 503 is "idpd cannot know right now" (a store, a key read, the
	 * audit log): a client told when to come back does not hammer it
	 * (RFC 9110 10.2.3).  A handler that knows better sets its own. */
	if (status == 503 && !has_retry)
		MHD_add_response_header(r, "Retry-After", "1");
	/* Responses carry tokens and identity data: never cached unless a
	 * handler says otherwise (JWKS, metadata). */
	if (!has_cache)
		MHD_add_response_header(r, "Cache-Control", "no-store");
	if (atomic_load(&req->srv->draining))
		MHD_add_response_header(r, "Connection", "close");
	if (req->on_pool) {
		/* A suspended connection cannot take a response: keep it until
		 * the pool thread resumes the connection and MHD calls us again. */
		req->resp = r;
		req->resp_status = status;
		return;
	}
	if (MHD_queue_response(req->conn, (unsigned)status, r) != MHD_YES)
		log_warn("could not queue response %d for request %s", status, req->request_id);
	MHD_destroy_response(r);
}

static void
queue(struct http_req *req, int status, const char *ctype, void *data, size_t len,
      enum MHD_ResponseMemoryMode mode)
{
	struct MHD_Response *r;

	if (second_answer(req)) {
		if (mode == MHD_RESPMEM_MUST_FREE)
			free(data);
		return;
	}
	r = MHD_create_response_from_buffer(len, data, mode);
	if (r == NULL && mode == MHD_RESPMEM_MUST_FREE)
		free(data);
	queue_response(req, status, ctype, r);
}

void
http_add_header(struct http_req *req, const char *name, const char *value)
{
	struct resp_header *h = idp_arena_alloc(&req->arena, sizeof(*h));

	if (h == NULL)
		return;
	h->name = idp_arena_strdup(&req->arena, name);
	h->value = idp_arena_strdup(&req->arena, value);
	if (h->name == NULL || h->value == NULL)
		return;
	h->next = req->headers;
	req->headers = h;
}

void
http_reply_data(struct http_req *req, int status, const char *content_type, const void *data,
                size_t len)
{
	queue(req, status, content_type, (void *)data, len, MHD_RESPMEM_MUST_COPY);
}

void
http_reply_take(struct http_req *req, int status, const char *content_type, char *data, size_t len)
{
	queue(req, status, content_type, data, len, MHD_RESPMEM_MUST_FREE);
}

/* MHD's free callback for a body that carries a secret (NUL-terminated). */
static void
wipe_free(void *p)
{
	if (p != NULL) {
		idp_wipe(p, strlen(p));
		free(p);
	}
}

void
http_reply_take_secret(struct http_req *req, int status, const char *content_type, char *data,
                       size_t len)
{
	struct MHD_Response *r;

	if (second_answer(req)) {
		wipe_free(data);
		return;
	}
	r = MHD_create_response_from_buffer_with_free_callback(len, data, wipe_free);
	if (r == NULL)
		wipe_free(data);
	queue_response(req, status, content_type, r);
}

void
http_reply_empty(struct http_req *req, int status)
{
	queue(req, status, NULL, NULL, 0, MHD_RESPMEM_PERSISTENT);
}

static void
reply_json_typed(struct http_req *req, int status, json_t *body, const char *ctype)
{
	char *text = json_dumps(body, JSON_COMPACT);

	json_decref(body);
	if (text == NULL) {
		static const char fallback[] =
		    "{\"type\":\"urn:idpd:problem:internal\",\"title\":\"Internal Server Error\","
		    "\"status\":500,\"code\":\"internal\"}";

		log_error("cannot serialize a response for request %s", req->request_id);
		queue(req, 500, "application/problem+json", (void *)fallback, sizeof(fallback) - 1,
		      MHD_RESPMEM_PERSISTENT);
		return;
	}
	queue(req, status, ctype, text, strlen(text), MHD_RESPMEM_MUST_FREE);
}

void
http_reply_json(struct http_req *req, int status, json_t *body)
{
	reply_json_typed(req, status, body, "application/json");
}

static void vproblem(struct http_req *req, int status, const char *code, json_t *extra,
                     const char *fmt, va_list ap) IDP_PRINTF(5, 0);

static void
vproblem(struct http_req *req, int status, const char *code, json_t *extra, const char *fmt,
         va_list ap)
{
	char detail[1024];
	json_t *p;

	vsnprintf(detail, sizeof(detail), fmt, ap);
	p = json_pack("{s:s+,s:s,s:i,s:s,s:s,s:s}", "type", "urn:idpd:problem:", code, "title",
	              http_status_title(status), "status", status, "detail", detail, "code", code,
	              "request_id", req->request_id);
	if (p == NULL) {
		/* detail was not valid UTF-8 (it may echo input): drop it. */
		p = json_pack("{s:s+,s:s,s:i,s:s,s:s}", "type", "urn:idpd:problem:", code, "title",
		              http_status_title(status), "status", status, "code", code,
		              "request_id", req->request_id);
	}
	if (p != NULL && extra != NULL)
		json_object_update_missing(p, extra);
	json_decref(extra);
	if (p == NULL) {
		http_reply_empty(req, status);
		return;
	}
	reply_json_typed(req, status, p, "application/problem+json");
}

void
http_reply_problem(struct http_req *req, int status, const char *code, json_t *extra,
                   const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vproblem(req, status, code, extra, fmt, ap);
	va_end(ap);
}

void
http_reply_error(struct http_req *req, int err, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vproblem(req, http_status_for(err), http_code_for(err), NULL, fmt, ap);
	va_end(ap);
}

/* ---- request accessors ---- */

struct idp_arena *
http_req_arena(struct http_req *req)
{
	return &req->arena;
}

unsigned
http_req_method(const struct http_req *req)
{
	return req->method;
}

const char *
http_req_path(const struct http_req *req)
{
	return req->path;
}

const char *
http_req_route(const struct http_req *req)
{
	return http_router_pattern(req->srv->router, req->route);
}

const char *
http_req_id(const struct http_req *req)
{
	return req->request_id;
}

const char *
http_req_param(const struct http_req *req, const char *name)
{
	for (size_t i = 0; i < req->match.n_params; i++)
		if (strcmp(req->match.params[i].name, name) == 0)
			return req->match.params[i].value;
	return NULL;
}

/*
 * Query values arrive still percent-encoded (keep_escaped) and are decoded
 * here, once, by the form rules; dispatch has refused a query that does not
 * decode, so NULL here means only "absent" (or a full arena).
 */
const char *
http_req_query(struct http_req *req, const char *name)
{
	const char *raw = MHD_lookup_connection_value(req->conn, MHD_GET_ARGUMENT_KIND, name);
	size_t n, len;
	char *out;

	if (raw == NULL || strchr(raw, '%') == NULL)
		return raw;
	n = strlen(raw);
	out = idp_arena_alloc(&req->arena, n + 1);
	if (out == NULL || http_form_decode(raw, n, out, n + 1, &len) != IDP_OK)
		return NULL;
	return out;
}

bool
http_req_query_int(struct http_req *req, const char *name, long min, long max, long dflt, long *out)
{
	const char *s = http_req_query(req, name);
	char *end;
	long v;

	if (s == NULL) {
		*out = dflt;
		return true;
	}
	/* Digits only, an optional '-' first: strtol would also take " 1" and "+1". */
	if (!isdigit((unsigned char)s[s[0] == '-']))
		return false;
	errno = 0;
	v = strtol(s, &end, 10);
	if (*end != '\0' || errno != 0 || v < min || v > max)
		return false;
	*out = v;
	return true;
}

/*
 * MHD strips the whitespace before a field value but not after it, which
 * RFC 9110 section 5.5 excludes from the value too: such a value is given
 * trimmed, a copy in the request's arena (MHD's buffer is not ours).
 */
const char *
http_req_header(struct http_req *req, const char *name)
{
	const char *v = MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND, name);
	size_t n;

	if (v == NULL)
		return NULL;
	n = strlen(v);
	if (n == 0 || (v[n - 1] != ' ' && v[n - 1] != '\t'))
		return v;
	while (n > 0 && (v[n - 1] == ' ' || v[n - 1] == '\t'))
		n--;
	return idp_arena_strndup(&req->arena, v, n);
}

const char *
http_req_host(struct http_req *req)
{
	return req->authority != NULL ? req->authority : http_req_header(req, "Host");
}

int
http_req_public_base(struct http_req *req, const char *issuer, int max_age_s, char *out, size_t len)
{
	const char *host;
	char cc[32];
	int n;

	if (strncmp(issuer, "https://", 8) == 0 || strncmp(issuer, "http://", 7) == 0) {
		n = snprintf(out, len, "%s", issuer);
		snprintf(cc, sizeof(cc), "max-age=%d", max_age_s);
		http_add_header(req, "Cache-Control", cc);
	} else {
		host = http_req_host(req);
		if (host == NULL)
			return IDP_EINVAL;
		n = snprintf(out, len, "http://%s", host);
		/* Right only for this host: a shared cache keyed without Host
		 * would hand one client's answer, perhaps a forged Host's, to
		 * the next. */
		http_add_header(req, "Cache-Control", "no-store");
		http_add_header(req, "Vary", "Host");
	}
	if (n < 0 || (size_t)n >= len)
		return IDP_ETOOBIG;
	if (n > 0 && out[n - 1] == '/')
		out[n - 1] = '\0';
	return IDP_OK;
}

/*
 * MHD strips the whitespace before a field value but not after it, which
 * RFC 9110 section 5.5 also excludes from the value: a client or proxy
 * that leaves a space after the token must not make a valid key fail.
 * The trimmed token is a copy (MHD's buffer is not ours to write), made at
 * most once per request and wiped when the request ends.
 */
const char *
http_req_bearer(struct http_req *req)
{
	const char *h = http_req_header(req, "Authorization");
	size_t n;

	if (req->bearer != NULL)
		return req->bearer;
	if (h == NULL || strncasecmp(h, "Bearer ", 7) != 0)
		return NULL;
	h += 7;
	while (*h == ' ')
		h++;
	n = strlen(h);
	while (n > 0 && (h[n - 1] == ' ' || h[n - 1] == '\t'))
		n--;
	if (n == 0)
		return NULL;
	if (h[n] == '\0')
		return h;
	req->bearer = idp_xstrndup(h, n);
	return req->bearer;
}

const char *
http_req_body(const struct http_req *req, size_t *len)
{
	*len = req->body.len;
	return idp_buf_str(&req->body);
}

const char *
http_req_peer(struct http_req *req)
{
	return req->peer;
}

bool
http_req_may_wait(const struct http_req *req)
{
	return req->on_pool || req->no_defer || req->answered || req->srv->pool.n == 0;
}

bool
http_req_defer(struct http_req *req)
{
	if (http_req_may_wait(req))
		return false;
	req->deferred = true;
	return true;
}

bool
http_req_suspend(struct http_req *req)
{
	struct http_server *s = req->srv;

	/* Counted under the pool's lock, so that http_server_stop, once it has
	 * set closing, waits for every request held before and sees no new one. */
	pthread_mutex_lock(&s->pool.lock);
	if (s->pool.closing) {
		pthread_mutex_unlock(&s->pool.lock);
		return false;
	}
	atomic_fetch_add(&s->held, 1);
	pthread_mutex_unlock(&s->pool.lock);
	if (!req->on_pool) {
		req->on_pool = true;
		MHD_suspend_connection(req->conn);
	}
	given_away = req;
	return true;
}

void
http_req_resume(struct http_req *req)
{
	struct http_server *s = req->srv;

	if (!req->answered) {
		log_error("bug: request %s resumed without an answer", req->request_id);
		http_reply_problem(req, 500, "internal", NULL, "internal error");
	}
	/* Counted before held drops, so that the stop never sees neither. */
	req->resuming = true;
	atomic_fetch_add(&s->resuming, 1);
	MHD_resume_connection(req->conn);
	atomic_fetch_sub(&s->held, 1);
}

void
http_req_withdraw(struct http_req *req)
{
	if (req->resp != NULL) {
		MHD_destroy_response(req->resp);
		req->resp = NULL;
	}
	/* The headers went with the answer; the next one adds its own (they
	 * live in the request's arena, freed with it). */
	req->headers = NULL;
	req->answered = false;
	req->status = 0;
}

void
http_req_continue(struct http_req *req, http_handler fn, void *arg)
{
	if (req->on_pool || req->no_defer || req->srv->pool.n == 0) {
		fn(req, arg);
		return;
	}
	req->cont = fn;
	req->cont_arg = arg;
	if (!pool_push(req)) {
		req->cont = NULL;
		fn(req, arg);
		return;
	}
	given_away = req;
}

bool
http_req_answered(const struct http_req *req)
{
	return req->answered;
}

static bool
is_json_type(const char *ct)
{
	size_t n;

	if (ct == NULL)
		return false;
	n = strcspn(ct, ";");
	while (n > 0 && (ct[n - 1] == ' ' || ct[n - 1] == '\t'))
		n--;
	if (n == strlen("application/json") && strncasecmp(ct, "application/json", n) == 0)
		return true;
	/* RFC 6839 structured syntax suffix, e.g. application/merge-patch+json */
	return n > 17 && strncasecmp(ct, "application/", 12) == 0 &&
	       strncasecmp(ct + n - 5, "+json", 5) == 0;
}

json_t *
http_req_json_object(struct http_req *req)
{
	char err[256];
	json_t *j;

	if (!is_json_type(http_req_header(req, "Content-Type"))) {
		http_reply_problem(req, 415, "unsupported_media_type", NULL,
		                   "the body must be application/json");
		return NULL;
	}
	if (req->body.len == 0) {
		http_reply_problem(req, 400, "invalid_json", NULL, "a JSON body is required");
		return NULL;
	}
	j = http_json_parse(idp_buf_str(&req->body), req->body.len, req->srv->opts.json_max_depth,
	                    err, sizeof(err));
	if (j == NULL) {
		http_reply_problem(req, 400, "invalid_json", NULL, "the body is not valid JSON: %s",
		                   err);
		return NULL;
	}
	if (!json_is_object(j)) {
		json_decref(j);
		http_reply_problem(req, 400, "invalid_json", NULL,
		                   "the body must be a JSON object");
		return NULL;
	}
	return j;
}

/* One {"field", "message"} entry; an unknown field's name is cut and made ASCII. */
static json_t *
field_error(const char *field, const char *message)
{
	char safe[65];
	size_t i;

	for (i = 0; field[i] != '\0' && i + 1 < sizeof(safe); i++)
		safe[i] = (unsigned char)field[i] >= 0x20 && (unsigned char)field[i] < 0x7f
		              ? field[i]
		              : '?';
	safe[i] = '\0';
	return json_pack("{s:s,s:s}", "field", safe, "message", message);
}

bool
http_req_optional_text(struct http_req *req, const char *field, size_t max, json_t **holder,
                       const char **out)
{
	const char *k;
	json_t *v, *errors;
	size_t len;
	char msg[128];

	*holder = NULL;
	*out = NULL;
	(void)http_req_body(req, &len);
	if (len == 0)
		return true;
	*holder = http_req_json_object(req);
	if (*holder == NULL)
		return false;
	snprintf(msg, sizeof(msg), "must be a string of 1 to %zu bytes without control characters",
	         max);
	errors = json_array();
	json_object_foreach(*holder, k, v)
	{
		const char *s = json_string_value(v);
		bool bad = strcmp(k, field) != 0 || s == NULL ||
		           strlen(s) != json_string_length(v) || s[0] == '\0' || strlen(s) > max;

		for (size_t i = 0; !bad && s[i] != '\0'; i++)
			bad = (unsigned char)s[i] < 0x20 || s[i] == 0x7f;
		if (!bad)
			*out = s;
		else
			json_array_append_new(
			    errors, field_error(k, strcmp(k, field) != 0 ? "unknown field" : msg));
	}
	if (json_array_size(errors) > 0) {
		http_reply_problem(req, 422, "unprocessable", json_pack("{s:o}", "errors", errors),
		                   "the body is not valid");
		json_decref(*holder);
		*holder = NULL;
		*out = NULL;
		return false;
	}
	json_decref(errors);
	return true;
}

bool
http_req_no_body(struct http_req *req)
{
	if (req->body.len == 0)
		return true;
	http_reply_problem(req, 400, "bad_request", NULL,
	                   "this endpoint takes no body; nothing was done (a body's options "
	                   "would be ignored, not applied)");
	return false;
}

struct query_allow {
	const char *const *allowed;
	json_t *unknown; /* names not in allowed */
};

static enum MHD_Result
collect_unknown(void *cls, enum MHD_ValueKind kind, const char *key, const char *value)
{
	struct query_allow *q = cls;
	bool known = false;

	(void)kind;
	if (key[0] == '\0' && value == NULL)
		return MHD_YES; /* an empty item asks nothing (see check_query_arg) */
	for (size_t i = 0; q->allowed != NULL && q->allowed[i] != NULL && !known; i++)
		known = strcmp(q->allowed[i], key) == 0;
	if (!known) {
		size_t n = strnlen(key, 64);
		json_t *name;

		/* Cut on a character boundary: the name is UTF-8 (dispatch checked). */
		while (key[n] != '\0' && n > 0 && ((unsigned char)key[n] & 0xc0) == 0x80)
			n--;
		name = json_stringn(key, n);
		json_array_append_new(q->unknown, name != NULL ? name : json_string("?"));
	}
	return MHD_YES;
}

bool
http_req_query_only(struct http_req *req, const char *const *allowed)
{
	struct query_allow q = {allowed, NULL};
	struct idp_buf names;
	size_t i;
	json_t *v;

	/* Every endpoint that checks its query checks here, after it has
	 * authenticated the caller: the one place for a GET's body too. */
	if ((req->method & (HTTP_GET | HTTP_HEAD | HTTP_DELETE)) != 0 && req->body.len > 0) {
		http_reply_problem(req, 400, "bad_request", NULL,
		                   "a %s request takes no body; nothing was done (a body's options "
		                   "would be ignored, not applied)",
		                   http_method_name(req->method));
		return false;
	}
	/* Most requests (every token request) have no query: they cost a
	 * comparison, not a walk over the connection's values. */
	if (req->query_n == 0)
		return true;
	q.unknown = json_array();
	/* Dispatch has refused more than 32 parameters, so this is bounded. */
	MHD_get_connection_values(req->conn, MHD_GET_ARGUMENT_KIND, collect_unknown, &q);
	if (json_array_size(q.unknown) == 0) {
		json_decref(q.unknown);
		return true;
	}
	idp_buf_init(&names, 4096);
	json_array_foreach(q.unknown, i, v)
	{
		if (idp_buf_printf(&names, "%s\"%s\"", i > 0 ? ", " : "", json_string_value(v)) !=
		    IDP_OK)
			break;
	}
	http_reply_problem(req, 400, "bad_request", json_pack("{s:o}", "parameters", q.unknown),
	                   "unknown query parameter%s %s; nothing was done",
	                   json_array_size(q.unknown) > 1 ? "s" : "", idp_buf_str(&names));
	idp_buf_cleanup(&names);
	return false;
}

/* ---- ids ---- */

bool
http_request_id_valid(const char *s)
{
	size_t n = 0;

	if (s == NULL)
		return false;
	for (; s[n] != '\0'; n++) {
		unsigned char c = (unsigned char)s[n];

		/* Visible ASCII (AuthZEN 10.1 asks that the PEP's id come back),
		 * but for the characters that quote or mark up where ids are shown. */
		if (n >= 128)
			return false;
		if (c < 0x21 || c > 0x7e || strchr("\"'\\<>`", c) != NULL)
			return false;
	}
	return n > 0;
}

void
http_request_id_new(char out[33])
{
	static const char hex[] = "0123456789abcdef";
	unsigned char r[16];

	if (idp_random_id_bytes(r, sizeof(r)) != IDP_OK) {
		/* The CSPRNG failing is not a reason to drop a request: a
		 * request id is a correlation key, not a secret. */
		struct timespec ts;

		clock_gettime(CLOCK_MONOTONIC, &ts);
		memcpy(r, &ts, sizeof(r) < sizeof(ts) ? sizeof(r) : sizeof(ts));
	}
	for (size_t i = 0; i < sizeof(r); i++) {
		out[2 * i] = hex[r[i] >> 4];
		out[2 * i + 1] = hex[r[i] & 15];
	}
	out[32] = '\0';
}

/* ---- the MHD callbacks ---- */

static struct http_req *
req_new(struct http_server *s, struct MHD_Connection *conn, const char *url, const char *method)
{
	struct http_req *req = idp_xcalloc(1, sizeof(*req));
	const union MHD_ConnectionInfo *ci;
	const char *rid;

	req->srv = s;
	req->conn = conn;
	req->route = -1;
	req->start_us = idp_mono_us();
	idp_arena_init(&req->arena, 4u << 20);
	idp_buf_init(&req->body, s->opts.max_body);
	req->method_text = idp_arena_strdup(&req->arena, method);
	req->method = http_method_parse(method);
	/* RFC 9112 3.2.2: an absolute-form target is served as its path, its
	 * authority standing for Host (checked with it, host_refused). */
	if (strncasecmp(url, "http://", 7) == 0 || strncasecmp(url, "https://", 8) == 0) {
		const char *a = url + (url[4] == ':' ? 7 : 8);
		size_t alen = strcspn(a, "/");

		req->authority = idp_arena_strndup(&req->arena, a, alen);
		url = a[alen] == '/' ? a + alen : "/";
	}
	req->path = idp_arena_strndup(&req->arena, url, strnlen(url, 4096));
	rid = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "X-Request-Id");
	if (http_request_id_valid(rid))
		snprintf(req->request_id, sizeof(req->request_id), "%s", rid);
	else
		http_request_id_new(req->request_id);
	ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
	if (ci != NULL && ci->client_addr != NULL) {
		const struct sockaddr *sa = ci->client_addr;

		if (sa->sa_family == AF_INET)
			inet_ntop(AF_INET,
			          &((const struct sockaddr_in *)(const void *)sa)->sin_addr,
			          req->peer, sizeof(req->peer));
		else if (sa->sa_family == AF_INET6)
			inet_ntop(AF_INET6,
			          &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr,
			          req->peer, sizeof(req->peer));
	}
	return req;
}

/* Run the request's job: its continuation or its route's handler.  Returns
 * false when the handler gave the request away: then req is not touched. */
static bool
run_handler(struct http_req *req)
{
	http_handler h = req->cont;
	void *ctx = req->cont_arg;

	if (h != NULL)
		req->cont = NULL;
	else
		h = http_router_handler(req->srv->router, req->route, &ctx);
	h(req, ctx);
	if (given_away == req) {
		given_away = NULL;
		return false;
	}
	if (!req->answered && !req->deferred) {
		log_error("bug: handler for %s returned without answering (request %s)",
		          http_req_route(req), req->request_id);
		http_reply_problem(req, 500, "internal", NULL, "internal error");
	}
	return true;
}

static void *
pool_main(void *arg)
{
	struct http_server *s = arg;

	for (;;) {
		struct http_req *req;

		pthread_mutex_lock(&s->pool.lock);
		while (s->pool.head == NULL && !s->pool.stop)
			pthread_cond_wait(&s->pool.cond, &s->pool.lock);
		req = s->pool.head;
		if (req == NULL) {
			pthread_mutex_unlock(&s->pool.lock);
			break;
		}
		s->pool.head = req->next_job;
		if (s->pool.head == NULL)
			s->pool.tail = NULL;
		pthread_mutex_unlock(&s->pool.lock);

		/* Hand the connection back to MHD; it calls on_request again and
		 * the stashed response is queued there.  req is not touched after
		 * this line: it may be freed at any moment. */
		if (run_handler(req)) {
			req->resuming = true;
			atomic_fetch_add(&s->resuming, 1);
			MHD_resume_connection(req->conn);
		}
	}
	return NULL;
}

/*
 * Suspend req and queue it for the pool.  false when the pool is stopping
 * (nobody would resume a suspended connection, and MHD cannot stop with
 * one): the caller runs the job itself.
 */
static bool
pool_push(struct http_req *req)
{
	struct http_server *s = req->srv;

	pthread_mutex_lock(&s->pool.lock);
	if (s->pool.stop) {
		pthread_mutex_unlock(&s->pool.lock);
		req->no_defer = true;
		return false;
	}
	req->on_pool = true;
	MHD_suspend_connection(req->conn);
	req->next_job = NULL;
	if (s->pool.tail != NULL)
		s->pool.tail->next_job = req;
	else
		s->pool.head = req;
	s->pool.tail = req;
	pthread_cond_signal(&s->pool.cond);
	pthread_mutex_unlock(&s->pool.lock);
	return true;
}

/* Match the route (cheap, on the I/O thread); returns true when a handler
 * should run, false when the request was answered here (404, 405). */
static bool
route(struct http_req *req)
{
	struct http_server *s = req->srv;

	http_router_match(s->router, req->method, req->path, req->scratch, sizeof(req->scratch),
	                  &req->match);
	if (req->match.status == 405) {
		char allow[128];

		http_allow_format(req->match.allow, allow, sizeof(allow));
		http_add_header(req, "Allow", allow);
		http_reply_problem(
		    req, 405, "method_not_allowed", NULL, "%s is not allowed here; allowed: %s",
		    req->method ? http_method_name(req->method) : "this method", allow);
		return false;
	}
	if (req->match.status != 0) {
		http_reply_problem(req, 404, "not_found", NULL, "no such resource");
		return false;
	}
	req->route = req->match.route;
	return true;
}

/* Whether s decodes by the form rules (no bad escape, no %00, no control). */
static bool
decodable(const char *s)
{
	char small[256], *out = small;
	size_t n = strlen(s), len;
	bool ok;

	if (n >= sizeof(small))
		out = idp_xmalloc(n + 1);
	ok = http_form_decode(s, n, out, n + 1, &len) == IDP_OK;
	if (out != small)
		free(out);
	return ok;
}

#define QUERY_MAX 32

/* What the walk over a query's arguments found wrong, if anything. */
struct query_check {
	const char *why; /* NULL: nothing */
	const char *names[QUERY_MAX];
	size_t n;
};

static enum MHD_Result
check_query_arg(void *cls, enum MHD_ValueKind kind, const char *key, const char *value)
{
	struct query_check *q = cls;

	(void)kind;
	if (key[0] == '\0' && value == NULL)
		return MHD_YES; /* "?&" or "a=1&&b=2": an empty item, nothing asked */
	if (!decodable(key) || (value != NULL && !decodable(value))) {
		q->why = "the query string holds a malformed percent-escape, %00 or a control "
		         "character";
	} else if (value == NULL) {
		/* "?status" would otherwise read as no filter at all. */
		q->why = "a query parameter has no value; send name=value";
	} else if (strchr(key, '%') != NULL) {
		/* Matched as sent, an escaped name would be a filter silently left out. */
		q->why = "a query parameter's name is percent-encoded; idpd's names are plain";
	} else if (q->n == QUERY_MAX) {
		q->why = "the query string has more than 32 parameters";
	} else {
		for (size_t i = 0; i < q->n && q->why == NULL; i++)
			if (strcmp(q->names[i], key) == 0)
				q->why = "a query parameter is repeated; which one counts would be "
				         "a guess";
		q->names[q->n++] = key;
	}
	return q->why == NULL ? MHD_YES : MHD_NO;
}

/*
 * A query argument that does not decode (a bad escape, %00, a control
 * character) is refused whole, before any handler: decoded in place it
 * would have been cut short at the NUL and read as another value.  So is
 * one whose name is percent-encoded or given twice: handlers look names up
 * as sent and take the first, and would silently ignore the other spelling.
 */
static bool
query_malformed(struct http_req *req)
{
	struct query_check q = {.why = NULL, .n = 0};

	MHD_get_connection_values(req->conn, MHD_GET_ARGUMENT_KIND, check_query_arg, &q);
	if (q.why != NULL)
		http_reply_problem(req, 400, "bad_request", NULL, "%s", q.why);
	req->query_n = q.n;
	return q.why != NULL;
}

/*
 * Fields a request may carry once (RFC 9110 5.3 and 8.3, RFC 9112 3.2 and
 * 6.3).  Content-Type among them: a body read as a form here and as JSON by
 * a filter in front (or the other way round) would be two requests.
 */
static const char *const singletons[] = {"Authorization", "Host", "Content-Length",
                                         "Transfer-Encoding", "Content-Type"};

struct field_count {
	unsigned n[IDP_ARRAY_LEN(singletons)];
	const char *bad; /* why a field is refused, or NULL */
};

static enum MHD_Result
count_singletons(void *cls, enum MHD_ValueKind kind, const char *key, size_t key_size,
                 const char *value, size_t value_size)
{
	struct field_count *fc = cls;

	(void)kind;
	/*
	 * RFC 9112 5.1: whitespace between a field name and its colon is a
	 * 400 (MHD keeps it in the name, so "Content-Length : 5" would frame
	 * nothing here and a body there).
	 */
	(void)value;
	(void)value_size;
	if (key_size == 0 || strcspn(key, " \t") != key_size)
		fc->bad = "a header field name is empty or holds whitespace";
	for (size_t i = 0; i < IDP_ARRAY_LEN(singletons); i++)
		if (strcasecmp(key, singletons[i]) == 0)
			fc->n[i]++;
	return MHD_YES;
}

/*
 * MHD keeps every line of a repeated field while http_req_header gives the
 * first: a proxy, a WAF or a log that honours the last would see another
 * caller (Authorization), another host (Host), another body length
 * (Content-Length, the classic request smuggling) or another body format
 * (Content-Type) than idpd.  So a request
 * repeating one is refused on its first call, before its body is read and
 * before any handler, and so any authentication, runs.
 */
static bool
singleton_repeated(struct http_req *req)
{
	struct field_count fc = {{0}, NULL};

	MHD_get_connection_values_n(req->conn, MHD_HEADER_KIND, count_singletons, &fc);
	if (fc.bad != NULL) {
		http_reply_problem(req, 400, "bad_request", NULL, "%s", fc.bad);
		return true;
	}
	for (size_t i = 0; i < IDP_ARRAY_LEN(singletons); i++) {
		if (fc.n[i] > 1) {
			http_reply_problem(req, 400, "bad_request", NULL,
			                   "the request has %u %s headers; send one", fc.n[i],
			                   singletons[i]);
			return true;
		}
	}
	return false;
}

static void
dispatch(struct http_req *req)
{
	struct http_server *s = req->srv;

	if (s->pool.n == 0 || (http_router_flags(s->router, req->route) & HTTP_ROUTE_INLINE)) {
		if (!run_handler(req) || !req->deferred)
			return;
		req->deferred = false; /* it would block: to the pool with it */
	}
	/* The last requests of a shutdown run here. */
	if (!pool_push(req))
		(void)run_handler(req);
}

/*
 * MHD would percent-decode the path and every query argument in place,
 * where a %00 cuts the string short (/v1/agents/x%00/y served as
 * /v1/agents/x) and a %2F becomes a separator that a proxy in front did
 * not see.  So nothing is decoded here: the router decodes the path once,
 * segment by segment, refusing %00 and %2F, and http_req_query decodes a
 * query value once.  MHD has already turned the query's '+' into ' '.
 */
static size_t
keep_escaped(void *cls, struct MHD_Connection *conn, char *s)
{
	(void)cls;
	(void)conn;
	return strlen(s);
}

/*
 * Free req's body and give its bytes back.  The body may hold a secret (a
 * join token, a form's token=, a subject token), so it is wiped first.
 */
static void
body_release(struct http_req *req)
{
	if (req->body.data != NULL)
		idp_wipe(req->body.data, req->body.len);
	idp_buf_cleanup(&req->body);
	atomic_fetch_sub(&req->srv->body_bytes, req->body_held);
	req->body_held = 0;
}

/*
 * The first BODY_FREE bytes of every body are not counted: otherwise slow
 * uploads of large bodies, which need no credentials to start, could hold
 * the whole budget and get every request with a body refused, a token
 * request of a few hundred bytes too.  What those bytes cost is bounded by
 * server.max_connections: a buffer holding them grows to 32 KiB at most.
 */
#define BODY_FREE ((size_t)16 * 1024)

static size_t
body_counted(size_t len)
{
	return len > BODY_FREE ? len - BODY_FREE : 0;
}

/*
 * Count n more bytes of req's body against max_body_memory; false (and
 * nothing counted) when they would pass it.
 */
static bool
body_hold(struct http_req *req, size_t n)
{
	struct http_server *s = req->srv;
	size_t more = body_counted(req->body.len + n) - body_counted(req->body.len), held;

	if (more == 0)
		return true;
	held = atomic_fetch_add(&s->body_bytes, more) + more;
	if (held > s->opts.max_body_memory) {
		atomic_fetch_sub(&s->body_bytes, more);
		body_release(req);
		return false;
	}
	req->body_held += more;
	return true;
}

/*
 * A body is framed by Content-Length or by chunked coding, never both
 * (RFC 9112 6.3: a proxy that reads the other framing sees other requests,
 * request smuggling), and idpd decodes no other coding.  Refused on the
 * first call, which also closes the connection.
 */
static bool
coding_refused(struct http_req *req)
{
	/* Untrimmed: MHD decodes chunked only for exactly that value, so
	 * "chunked " must not pass as chunked here (the body would be read as
	 * the next request). */
	const char *te = MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND,
	                                             MHD_HTTP_HEADER_TRANSFER_ENCODING);

	if (te == NULL)
		return false;
	if (MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND,
	                                MHD_HTTP_HEADER_CONTENT_LENGTH) != NULL) {
		http_reply_problem(req, 400, "bad_request", NULL,
		                   "the request has both Content-Length and Transfer-Encoding");
		return true;
	}
	if (strcasecmp(te, "chunked") != 0) {
		http_reply_problem(req, 501, "not_implemented", NULL,
		                   "Transfer-Encoding: only chunked is supported");
		return true;
	}
	return false;
}

/* A reg-name, IPv4 or IP-literal, and an optional port (RFC 3986 3.2.2, 3.2.3). */
static bool
authority_valid(const char *a)
{
	size_t n = strlen(a);

	if (n == 0 || n > 255)
		return false;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)a[i];

		if (!isalnum(c) && strchr("-._~!$&'()*+,;=:[]%", c) == NULL)
			return false;
	}
	return true;
}

/*
 * RFC 9112 3.2: an HTTP/1.1 request carries Host, and a Host (or an
 * absolute-form target's authority) must be one; the metadata documents
 * build URLs from it.
 */
static bool
host_refused(struct http_req *req, const char *version)
{
	const char *host = http_req_host(req);

	if (host == NULL && version != NULL && strcmp(version, MHD_HTTP_VERSION_1_0) == 0)
		return false;
	if (host != NULL && authority_valid(host))
		return false;
	http_reply_problem(req, 400, "bad_request", NULL,
	                   host == NULL ? "the request has no Host header"
	                                : "the Host header is not a host and port");
	return true;
}

static enum MHD_Result
on_request(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
           const char *version, const char *upload_data, size_t *upload_size, void **con_cls)
{
	struct http_server *s = cls;
	struct http_req *req = *con_cls;

	if (req == NULL) {
		const char *cl;

		req = req_new(s, conn, url, method);
		*con_cls = req;
		atomic_fetch_add(&s->in_flight, 1);
		/* Refused before MHD reads a body by one of two lengths: a reply
		 * queued now also closes the connection, so no byte after this
		 * request is read as another (request smuggling). */
		if (singleton_repeated(req) || coding_refused(req) || host_refused(req, version))
			return MHD_YES;
		/* A request for nothing here is answered before its body is
		 * read, so no one can make idpd hold bodies it would refuse. */
		if (query_malformed(req) || !route(req))
			return MHD_YES;
		cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Content-Length");
		if (cl != NULL) {
			char *end;
			unsigned long long n = strtoull(cl, &end, 10);

			if (*end == '\0' && n > s->opts.max_body)
				http_reply_problem(req, 413, "payload_too_large", NULL,
				                   "the body is larger than %zu bytes",
				                   s->opts.max_body);
		}
		return MHD_YES;
	}
	if (*upload_size > 0) {
		/* MHD cannot queue a response in the middle of an upload, so an
		 * oversize chunked body is read and dropped, then answered 413;
		 * past DISCARD_MAX the connection is simply closed. */
		if (!req->too_big && !req->too_busy && !req->answered &&
		    !body_hold(req, *upload_size))
			req->too_busy = true;
		if (req->too_big || req->too_busy || req->answered) {
			req->discarded += *upload_size;
			*upload_size = 0;
			return req->discarded > DISCARD_MAX ? MHD_NO : MHD_YES;
		}
		if (idp_buf_append(&req->body, upload_data, *upload_size) != IDP_OK) {
			body_release(req);
			req->too_big = true;
		}
		*upload_size = 0;
		return MHD_YES;
	}
	if (req->resp != NULL) {
		/* Back from the handler pool with its answer. */
		req->on_pool = false;
		if (MHD_queue_response(conn, (unsigned)req->resp_status, req->resp) != MHD_YES)
			log_warn("could not queue response %d for request %s", req->resp_status,
			         req->request_id);
		MHD_destroy_response(req->resp);
		req->resp = NULL;
		return MHD_YES;
	}
	if (req->too_big) {
		http_reply_problem(req, 413, "payload_too_large", NULL,
		                   "the body is larger than %zu bytes", s->opts.max_body);
	} else if (req->too_busy) {
		http_add_header(req, "Retry-After", "1");
		http_reply_problem(req, 503, "unavailable", NULL,
		                   "too many request bodies are being received; try again");
	} else if (!req->answered)
		dispatch(req);
	return MHD_YES;
}

static void
stats_record(struct http_server *s, int route, int status, int64_t us)
{
	size_t slot = route >= 0 ? (size_t)route : s->n_stats - 1;
	struct route_stats *st = &s->stats[slot];
	size_t b = 0;

	if (status == 0)
		atomic_fetch_add_explicit(&st->aborted, 1, memory_order_relaxed);
	else if (status > 0 && status < N_STATUS)
		atomic_fetch_add_explicit(&st->by_status[status], 1, memory_order_relaxed);
	while (b < N_BOUNDS && us > lat_bounds[b])
		b++;
	atomic_fetch_add_explicit(&st->buckets[b], 1, memory_order_relaxed);
	atomic_fetch_add_explicit(&st->sum_us, (uint64_t)us, memory_order_relaxed);
	atomic_fetch_add_explicit(&st->count, 1, memory_order_relaxed);
}

static void
access_log(struct http_req *req, int64_t us)
{
	char line[512], ts[32];
	int n;

	idp_time_format(idp_now_ms(idp_clock_system()), ts);
	/* The route pattern, not the raw path: paths and queries can carry
	 * identifiers an operator did not mean to log. */
	n = snprintf(line, sizeof(line),
	             "{\"ts\":\"%s\",\"type\":\"access\",\"method\":\"%s\",\"route\":\"%s\","
	             "\"status\":%d,\"us\":%lld,\"request_id\":\"%s\",\"peer\":\"%s\"}",
	             ts, req->method ? http_method_name(req->method) : "other", http_req_route(req),
	             req->status, (long long)us, req->request_id, req->peer);
	if (n > 0)
		idp_log_raw(line, (size_t)n < sizeof(line) ? (size_t)n : sizeof(line) - 1);
}

/*
 * MHD's completion callback.  Only COMPLETED_OK means the whole answer was
 * handed to the client's socket; any other code (the client left, a write
 * failed, a timeout, shutdown) means the status idpd chose was never
 * delivered, so the request is logged with status 0 and counted as
 * "aborted", never as the answer the client did not get.
 */
static void
on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
             enum MHD_RequestTerminationCode toe)
{
	struct http_server *s = cls;
	struct http_req *req = *con_cls;
	int64_t us;

	(void)conn;
	if (req == NULL)
		return;
	if (req->resuming)
		atomic_fetch_sub(&s->resuming, 1);
	us = idp_mono_us() - req->start_us;
	if (!req->answered || toe != MHD_REQUEST_TERMINATED_COMPLETED_OK) {
		req->status = 0;
		if (atomic_load(&s->draining))
			atomic_fetch_add(&s->cut_off, 1);
	}
	stats_record(s, req->route, req->status, us);
	if (s->opts.access_log)
		access_log(req, us);
	if (req->resp != NULL)
		MHD_destroy_response(req->resp);
	if (req->bearer != NULL) {
		idp_wipe(req->bearer, strlen(req->bearer));
		free(req->bearer);
	}
	body_release(req);
	idp_arena_cleanup(&req->arena);
	free(req);
	*con_cls = NULL;
	atomic_fetch_sub(&s->in_flight, 1);
}

static void mhd_log(void *cls, const char *fmt, va_list ap) IDP_PRINTF(2, 0);

static void
mhd_log(void *cls, const char *fmt, va_list ap)
{
	char msg[512];
	size_t n;

	(void)cls;
	vsnprintf(msg, sizeof(msg), fmt, ap);
	n = strlen(msg);
	while (n > 0 && (msg[n - 1] == '\n' || msg[n - 1] == '\r'))
		msg[--n] = '\0';
	log_warn("http: %s", msg);
}

/* ---- metrics ---- */

static void
collect(struct idp_buf *out, void *ctx)
{
	struct http_server *s = ctx;
	int rc = 0;

	rc |= idp_buf_puts(out, "# HELP idpd_http_requests_total HTTP requests by route and "
	                        "status (\"aborted\": no answer reached the client).\n"
	                        "# TYPE idpd_http_requests_total counter\n");
	for (size_t i = 0; i < s->n_stats; i++) {
		const char *route =
		    http_router_pattern(s->router, i + 1 == s->n_stats ? -1 : (int)i);
		uint64_t aborted;

		for (int st = 100; st < N_STATUS; st++) {
			uint64_t v =
			    atomic_load_explicit(&s->stats[i].by_status[st], memory_order_relaxed);

			if (v != 0)
				rc |= idp_buf_printf(
				    out,
				    "idpd_http_requests_total{route=\"%s\",status=\"%d\"} %llu\n",
				    route, st, (unsigned long long)v);
		}
		aborted = atomic_load_explicit(&s->stats[i].aborted, memory_order_relaxed);
		if (aborted != 0)
			rc |= idp_buf_printf(
			    out, "idpd_http_requests_total{route=\"%s\",status=\"aborted\"} %llu\n",
			    route, (unsigned long long)aborted);
	}
	rc |= idp_buf_puts(out, "# HELP idpd_http_request_duration_seconds Time from request "
	                        "headers to response completion.\n"
	                        "# TYPE idpd_http_request_duration_seconds histogram\n");
	for (size_t i = 0; i < s->n_stats; i++) {
		const char *route =
		    http_router_pattern(s->router, i + 1 == s->n_stats ? -1 : (int)i);
		uint64_t cum = 0, count;

		count = atomic_load_explicit(&s->stats[i].count, memory_order_relaxed);
		if (count == 0)
			continue;
		for (size_t b = 0; b <= N_BOUNDS; b++) {
			cum += atomic_load_explicit(&s->stats[i].buckets[b], memory_order_relaxed);
			if (b < N_BOUNDS)
				rc |= idp_buf_printf(
				    out,
				    "idpd_http_request_duration_seconds_bucket{route="
				    "\"%s\",le=\"%g\"} %llu\n",
				    route, (double)lat_bounds[b] / 1e6, (unsigned long long)cum);
			else
				rc |= idp_buf_printf(
				    out,
				    "idpd_http_request_duration_seconds_bucket{route="
				    "\"%s\",le=\"+Inf\"} %llu\n",
				    route, (unsigned long long)cum);
		}
		rc |= idp_buf_printf(
		    out,
		    "idpd_http_request_duration_seconds_sum{route=\"%s\"} %.6f\n"
		    "idpd_http_request_duration_seconds_count{route=\"%s\"} %llu\n",
		    route,
		    (double)atomic_load_explicit(&s->stats[i].sum_us, memory_order_relaxed) / 1e6,
		    route, (unsigned long long)count);
	}
	rc |= idp_buf_printf(out,
	                     "# HELP idpd_http_in_flight Requests being served.\n"
	                     "# TYPE idpd_http_in_flight gauge\nidpd_http_in_flight %d\n",
	                     atomic_load(&s->in_flight));
	if (rc != 0)
		log_warn("metrics: output truncated");
}

/* ---- start / stop ---- */

/*
 * While draining, a new connection is closed as soon as it is accepted.
 * (MHD_quiesce_daemon would stop accepting altogether, but with a pool of
 * epoll I/O threads this libmicrohttpd races its own threads over removing
 * the listening socket from their epoll sets, and treats losing the race as
 * fatal: idpd aborted on SIGTERM now and then.)
 */
static enum MHD_Result
on_accept(void *cls, const struct sockaddr *addr, socklen_t len)
{
	struct http_server *s = cls;

	(void)addr;
	(void)len;
	return atomic_load(&s->draining) ? MHD_NO : MHD_YES;
}

struct http_server *
http_server_start(const struct http_server_opts *o, struct http_router *r, struct idp_diag *diag)
{
	struct http_server *s = idp_xcalloc(1, sizeof(*s));
	struct sockaddr_storage ss;
	unsigned flags = MHD_USE_EPOLL_INTERNAL_THREAD | MHD_USE_ITC | MHD_USE_ERROR_LOG |
	                 MHD_ALLOW_SUSPEND_RESUME;
	socklen_t sl;

	memset(&ss, 0, sizeof(ss));
	if (inet_pton(AF_INET, o->listen, &((struct sockaddr_in *)&ss)->sin_addr) == 1) {
		struct sockaddr_in *sin = (struct sockaddr_in *)&ss;

		sin->sin_family = AF_INET;
		sin->sin_port = htons((uint16_t)o->port);
		sl = sizeof(*sin);
	} else if (inet_pton(AF_INET6, o->listen, &((struct sockaddr_in6 *)&ss)->sin6_addr) == 1) {
		struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;

		sin6->sin6_family = AF_INET6;
		sin6->sin6_port = htons((uint16_t)o->port);
		sl = sizeof(*sin6);
		flags |= MHD_USE_IPv6;
	} else {
		idp_diag_add(diag, "server.listen: \"%s\" is not an IPv4 or IPv6 address",
		             o->listen);
		http_router_free(r);
		free(s);
		return NULL;
	}
	(void)sl;
	s->opts = *o;
	if (s->opts.max_body_memory < s->opts.max_body)
		s->opts.max_body_memory = s->opts.max_body;
	snprintf(s->listen, sizeof(s->listen), "%s", o->listen);
	s->opts.listen = s->listen;
	s->router = r;
	s->n_stats = http_router_count(r) + 1;
	s->stats = idp_xcalloc(s->n_stats, sizeof(*s->stats));
	/* The logger goes first, so MHD sends even its option errors to it. */
	s->mhd = MHD_start_daemon(
	    flags, (uint16_t)o->port, on_accept, s, on_request, s, MHD_OPTION_EXTERNAL_LOGGER,
	    mhd_log, NULL, MHD_OPTION_SOCK_ADDR, &ss, MHD_OPTION_THREAD_POOL_SIZE,
	    (unsigned)o->threads, MHD_OPTION_CONNECTION_LIMIT, (unsigned)o->max_connections,
	    MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)o->connection_timeout_s,
	    MHD_OPTION_NOTIFY_COMPLETED, on_completed, s, MHD_OPTION_UNESCAPE_CALLBACK,
	    keep_escaped, NULL,
	    /* The pool holds a request's header section and the
	     * response's; MHD zeroes all of it between requests,
	     * so its default of 32 KiB costs a visible share of a
	     * small request.  16 KiB still takes headers of
	     * about 12 KiB. */
	    MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)HTTP_CONNECTION_MEMORY, MHD_OPTION_END);
	if (s->mhd == NULL) {
		idp_diag_add(diag,
		             "cannot listen on %s:%d (in use, or not an address of this host)",
		             o->listen, o->port);
		http_router_free(r);
		free(s->stats);
		free(s);
		return NULL;
	}
	pthread_mutex_init(&s->pool.lock, NULL);
	pthread_cond_init(&s->pool.cond, NULL);
	s->pool.threads = idp_xcalloc((size_t)(o->handler_threads > 0 ? o->handler_threads : 1),
	                              sizeof(pthread_t));
	for (int i = 0; i < o->handler_threads; i++) {
		if (pthread_create(&s->pool.threads[i], NULL, pool_main, s) != 0) {
			log_warn("http: started only %d of %d handler threads", i,
			         o->handler_threads);
			break;
		}
		s->pool.n++;
	}
	if (metrics_register(collect, s) != IDP_OK)
		log_warn("metrics: too many collectors; HTTP metrics not exported");
	return s;
}

int
http_server_in_flight(const struct http_server *s)
{
	return atomic_load(&((struct http_server *)s)->in_flight);
}

int
http_server_stop(struct http_server *s, int64_t timeout_ms)
{
	int64_t deadline;
	int cut;

	if (s == NULL)
		return 0;
	/* From here new connections are closed at once (on_accept), and every
	 * answer says Connection: close, so the open ones end too. */
	atomic_store(&s->draining, true);
	deadline = idp_mono_us() + timeout_ms * 1000;
	while (atomic_load(&s->in_flight) > 0 && idp_mono_us() < deadline) {
		struct timespec ts = {0, 10 * 1000 * 1000};

		nanosleep(&ts, NULL);
	}
	/* The pool threads leave only once the job list is empty, so every job
	 * queued before this point still runs and is answered, and every
	 * suspended connection is resumed before MHD stops, as MHD requires. */
	pthread_mutex_lock(&s->pool.lock);
	s->pool.stop = true;
	pthread_cond_broadcast(&s->pool.cond);
	pthread_mutex_unlock(&s->pool.lock);
	for (int i = 0; i < s->pool.n; i++)
		pthread_join(s->pool.threads[i], NULL);
	/* A request handed to the audit writer is answered within
	 * audit.timeout, committed or not: wait for it.  From here no request
	 * may be held any more (http_req_suspend refuses). */
	pthread_mutex_lock(&s->pool.lock);
	s->pool.closing = true;
	pthread_mutex_unlock(&s->pool.lock);
	while (atomic_load(&s->held) > 0) {
		struct timespec ts = {0, 10 * 1000 * 1000};

		nanosleep(&ts, NULL);
	}
	/* And for the answers those made to leave: resumed, the connection is
	 * the I/O thread's to write, which MHD_stop_daemon would cut short.
	 * Bounded: a client that stopped reading does not hold the stop. */
	deadline = idp_mono_us() + 2000 * 1000;
	while (atomic_load(&s->resuming) > 0 && idp_mono_us() < deadline) {
		struct timespec ts = {0, 5 * 1000 * 1000};

		nanosleep(&ts, NULL);
	}
	/* Past the wait, queued jobs and held requests were still answered;
	 * what the daemon's stop closes unanswered is what was cut off. */
	MHD_stop_daemon(s->mhd);
	cut = atomic_load(&s->cut_off);
	pthread_cond_destroy(&s->pool.cond);
	pthread_mutex_destroy(&s->pool.lock);
	free(s->pool.threads);
	metrics_clear();
	http_router_free(s->router);
	free(s->stats);
	free(s);
	return cut;
}
