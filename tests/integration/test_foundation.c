/*
 * Integration tests of the foundation: a real idpd child process against the
 * private PostgreSQL, over HTTP on loopback.
 */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>
#include <libpq-fe.h>

#include <sys/resource.h>

#include "harness.h"
#include "idpd/auth.h"

static struct idpd_proc idpd;
/* An admin API key, for the routes that authenticate. */
static char admin_key[64];

static int
group_setup(void **state)
{
	char hash[80], toml[384];

	(void)state;
	if (harness_db_create("t_foundation") != 0 || auth_key_generate(admin_key, hash) != IDP_OK)
		return -1;
	snprintf(toml, sizeof(toml),
	         "[[api_keys]]\nname = \"ci-admin\"\nhash = \"%s\"\nroles = [\"admin\"]\n"
	         /* a key of earlier versions, still read: see the test of it below */
	         "[tokens]\npresign_pool = 8\n",
	         hash);
	/* idpd inherits core files allowed, so that turning them off is its own doing. */
	{
		struct rlimit any = {RLIM_INFINITY, RLIM_INFINITY};

		if (setrlimit(RLIMIT_CORE, &any) != 0) {
			getrlimit(RLIMIT_CORE, &any);
			any.rlim_cur = any.rlim_max;
			(void)setrlimit(RLIMIT_CORE, &any);
		}
	}
	return harness_idpd_start(&idpd, "t_foundation", NULL, toml);
}

static int
group_teardown(void **state)
{
	(void)state;
	return harness_idpd_stop(&idpd, SIGTERM, 10000) == 0 ? 0 : -1;
}

/* The signing keys' secrets must not reach a core file: idpd turns them off for itself. */
static void
idpd_writes_no_core_file(void **state)
{
	char path[64], line[256];
	bool seen = false;
	FILE *f;

	(void)state;
	snprintf(path, sizeof(path), "/proc/%d/limits", (int)idpd.pid);
	f = fopen(path, "r");
	assert_non_null(f);
	while (fgets(line, sizeof(line), f) != NULL) {
		unsigned long long soft, hard;

		if (strncmp(line, "Max core file size", 18) != 0)
			continue;
		assert_int_equal(sscanf(line + 18, "%llu %llu", &soft, &hard), 2);
		assert_true(soft == 0 && hard == 0);
		seen = true;
	}
	fclose(f);
	assert_true(seen);
}

static void
get(const char *path, struct http_resp *r)
{
	char url[256];

	snprintf(url, sizeof(url), "%s%s", idpd.base, path);
	assert_int_equal(harness_http("GET", url, NULL, NULL, 0, r), 0);
}

static void
assert_problem(const struct http_resp *r, long status, const char *code)
{
	char ct[128], rid[160];
	json_t *j = r->json;

	assert_int_equal(r->status, status);
	assert_true(harness_resp_header(r, "Content-Type", ct, sizeof(ct)));
	assert_string_equal(ct, "application/problem+json");
	assert_non_null(j);
	assert_int_equal(json_integer_value(json_object_get(j, "status")), status);
	assert_string_equal(json_string_value(json_object_get(j, "code")), code);
	assert_non_null(json_string_value(json_object_get(j, "title")));
	assert_non_null(json_string_value(json_object_get(j, "detail")));
	assert_true(
	    strncmp(json_string_value(json_object_get(j, "type")), "urn:idpd:problem:", 17) == 0);
	/* The problem names the request, and so does the header. */
	assert_true(harness_resp_header(r, "X-Request-Id", rid, sizeof(rid)));
	assert_string_equal(json_string_value(json_object_get(j, "request_id")), rid);
}

/*
 * Send request (which asks for Connection: close) on a new connection and
 * read the answer into out until idpd closes it.  A raw socket, because
 * libcurl would not send what these tests need (a header twice, trailing
 * whitespace kept).
 */
static void
raw(const char *request, char *out, size_t len)
{
	struct timeval tv = {10, 0};
	int fd = harness_connect(idpd.port);
	size_t got = 0;
	ssize_t n;

	assert_true(fd >= 0);
	assert_int_equal(setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)), 0);
	assert_int_equal(send(fd, request, strlen(request), MSG_NOSIGNAL),
	                 (ssize_t)strlen(request));
	while (got + 1 < len && (n = recv(fd, out + got, len - 1 - got, 0)) > 0)
		got += (size_t)n;
	out[got] = '\0';
	close(fd);
}

static void
healthz_answers_ok_with_a_generated_request_id(void **state)
{
	struct http_resp r;
	char rid[160];

	(void)state;
	get("/healthz", &r);
	assert_int_equal(r.status, 200);
	assert_non_null(r.json);
	assert_string_equal(json_string_value(json_object_get(r.json, "status")), "ok");
	assert_true(harness_resp_header(&r, "X-Request-Id", rid, sizeof(rid)));
	assert_int_equal(strlen(rid), 32);
	assert_int_equal(strspn(rid, "0123456789abcdef"), 32);
	harness_resp_free(&r);
}

static void
request_id_is_echoed_when_well_formed_and_replaced_otherwise(void **state)
{
	const char *good[] = {"X-Request-Id: trace-42.abc:1", NULL};
	const char *also_good[] = {"X-Request-Id: tenant=1;trace=x/y+z==", NULL};
	const char *bad[] = {"X-Request-Id: <script>", NULL};
	struct http_resp r;
	char url[256], rid[160];

	(void)state;
	snprintf(url, sizeof(url), "%s/healthz", idpd.base);
	assert_int_equal(harness_http("GET", url, good, NULL, 0, &r), 0);
	assert_true(harness_resp_header(&r, "X-Request-Id", rid, sizeof(rid)));
	assert_string_equal(rid, "trace-42.abc:1");
	harness_resp_free(&r);
	assert_int_equal(harness_http("GET", url, also_good, NULL, 0, &r), 0);
	assert_true(harness_resp_header(&r, "X-Request-Id", rid, sizeof(rid)));
	assert_string_equal(rid, "tenant=1;trace=x/y+z==");
	harness_resp_free(&r);

	assert_int_equal(harness_http("GET", url, bad, NULL, 0, &r), 0);
	assert_true(harness_resp_header(&r, "X-Request-Id", rid, sizeof(rid)));
	assert_string_not_equal(rid, "<script>");
	assert_int_equal(strlen(rid), 32);
	harness_resp_free(&r);
	/* And the access log carries the id it answered with. */
	assert_true(harness_log_contains(&idpd, "\"request_id\":\"trace-42.abc:1\""));
}

/* tokens.presign_pool (precomputed nonces, removed) still loads, and says it is ignored. */
static void
a_removed_config_key_loads_and_is_reported_ignored(void **state)
{
	(void)state;
	assert_int_equal(harness_status(&idpd, "GET", "/healthz", NULL, NULL), 200);
	assert_true(harness_log_contains(&idpd, "tokens.presign_pool is ignored"));
}

/* Header sections up to about 12 KiB are read (large IdP tokens, proxy
 * headers); a larger one gets 431, and the next connection is served. */
static void
large_header_sections_are_read_and_oversized_ones_refused(void **state)
{
	static char pad[24 * 1024];
	const char *h[] = {pad, NULL};
	struct http_resp r;
	char url[256];

	(void)state;
	snprintf(url, sizeof(url), "%s/healthz", idpd.base);
	memcpy(pad, "X-Pad: ", 7);
	memset(pad + 7, 'p', 12 * 1024);
	pad[7 + 12 * 1024] = '\0';
	assert_int_equal(harness_http("GET", url, h, NULL, 0, &r), 0);
	assert_int_equal(r.status, 200);
	harness_resp_free(&r);
	memset(pad + 7, 'p', 20 * 1024);
	pad[7 + 20 * 1024] = '\0';
	assert_int_equal(harness_http("GET", url, h, NULL, 0, &r), 0);
	assert_int_equal(r.status, 431);
	harness_resp_free(&r);
	assert_int_equal(harness_http("GET", url, NULL, NULL, 0, &r), 0);
	assert_int_equal(r.status, 200);
	harness_resp_free(&r);
}

static void
readyz_reports_the_schema_version(void **state)
{
	struct http_resp r;
	char v[32];

	(void)state;
	get("/readyz", &r);
	assert_int_equal(r.status, 200);
	assert_string_equal(json_string_value(json_object_get(r.json, "status")), "ready");
	assert_int_equal(harness_sql_value("t_foundation",
	                                   "SELECT max(version) FROM schema_migrations", v,
	                                   sizeof(v)),
	                 0);
	assert_int_equal(json_integer_value(json_object_get(r.json, "schema_version")), atoi(v));
	/* Each component that can make requests fail says it can serve. */
	assert_string_equal(
	    json_string_value(json_object_get(json_object_get(r.json, "checks"), "audit")), "ok");
	assert_string_equal(
	    json_string_value(json_object_get(json_object_get(r.json, "checks"), "revocation")),
	    "ok");
	harness_resp_free(&r);
}

static void
metrics_expose_requests_pool_listener_and_build(void **state)
{
	struct http_resp r;

	(void)state;
	get("/healthz", &r);
	harness_resp_free(&r);
	get("/nope", &r);
	harness_resp_free(&r);
	/* The listener connects in the background, and a request is counted
	 * when its completion runs, which may be just after its client has
	 * the answer: give both a moment. */
	for (int i = 0; i < 100; i++) {
		get("/metrics", &r);
		if (strstr(r.body, "idpd_listener_connected 1\n") != NULL &&
		    strstr(r.body,
		           "idpd_http_requests_total{route=\"unmatched\",status=\"404\"}") != NULL)
			break;
		harness_resp_free(&r);
		struct timespec ts = {0, 50 * 1000 * 1000};
		nanosleep(&ts, NULL);
	}
	assert_int_equal(r.status, 200);
	assert_non_null(
	    strstr(r.body, "idpd_http_requests_total{route=\"/healthz\",status=\"200\"} "));
	assert_non_null(
	    strstr(r.body, "idpd_http_requests_total{route=\"unmatched\",status=\"404\"} 1\n"));
	assert_non_null(strstr(r.body, "idpd_http_request_duration_seconds_bucket{route="
	                               "\"/healthz\",le=\"+Inf\"}"));
	assert_non_null(strstr(r.body, "idpd_db_pool_connections{state=\"idle\"}"));
	assert_non_null(strstr(r.body, "idpd_db_pool_connections{state=\"in_use\"}"));
	assert_non_null(strstr(r.body, "idpd_listener_connected 1\n"));
	assert_non_null(strstr(r.body, "idpd_build_info{version=\""));
	harness_resp_free(&r);
}

static void
unknown_path_is_a_404_problem(void **state)
{
	struct http_resp r;

	(void)state;
	get("/v1/no/such/thing", &r);
	assert_problem(&r, 404, "not_found");
	harness_resp_free(&r);
	/* Paths that cannot name a resource are 404s too, not crashes. */
	get("/healthz/../healthz", &r);
	assert_int_equal(r.status, 404);
	harness_resp_free(&r);
	get("/%00", &r);
	assert_int_equal(r.status, 404);
	harness_resp_free(&r);
}

static void
wrong_method_is_a_405_problem_with_allow(void **state)
{
	struct http_resp r;
	char url[256], allow[128];

	(void)state;
	snprintf(url, sizeof(url), "%s/healthz", idpd.base);
	assert_int_equal(harness_http("DELETE", url, NULL, NULL, 0, &r), 0);
	assert_problem(&r, 405, "method_not_allowed");
	assert_true(harness_resp_header(&r, "Allow", allow, sizeof(allow)));
	assert_string_equal(allow, "GET, HEAD");
	harness_resp_free(&r);
}

static void
head_is_answered_like_get_without_a_body(void **state)
{
	struct http_resp r;
	char url[256];

	(void)state;
	snprintf(url, sizeof(url), "%s/healthz", idpd.base);
	assert_int_equal(harness_http("HEAD", url, NULL, NULL, 0, &r), 0);
	assert_int_equal(r.status, 200);
	assert_int_equal(r.len, 0);
	harness_resp_free(&r);
}

static void
responses_are_not_cacheable_by_default(void **state)
{
	struct http_resp r;
	char v[64];

	(void)state;
	get("/healthz", &r);
	assert_true(harness_resp_header(&r, "Cache-Control", v, sizeof(v)));
	assert_string_equal(v, "no-store");
	assert_true(harness_resp_header(&r, "X-Content-Type-Options", v, sizeof(v)));
	assert_string_equal(v, "nosniff");
	harness_resp_free(&r);
}

/*
 * Authorization is a singleton field.  With two, idpd would take the first
 * and a proxy or log that honours the last would see another caller, so
 * the request is refused before any handler runs, on every route, whichever
 * of the two carries the valid key and however the names are spelled.
 */
/*
 * The path and the query are percent-decoded once, by idpd: a %00 or %2F
 * never names a route (decoded in place, /healthz%00/x was served as
 * /healthz), %25 stays a percent sign, and a query value that does not
 * decode is a 400, as is a percent-encoded or repeated parameter name.
 */
static void
escapes_are_decoded_once(void **state)
{
	static const struct {
		const char *target;
		int status;
	} cases[] = {
	    {"/healthz", 200},
	    {"/health%7A", 200},
	    {"/healthz%00/x", 404},
	    {"/healthz%00", 404},
	    {"/.well-known/jwks.json", 200},
	    {"/.well-known%2Fjwks.json", 404},
	    {"/health%257A", 404},
	    {"/healthz?x=a%20b+c%2B", 200},
	    {"/healthz?x=%00", 400},
	    {"/healthz?x=a%zz", 400},
	    {"/healthz?x%00=1", 400},
	    {"/healthz?x=%0A", 400},
	    /* A name is plain and given once: else a filter could be left out unseen. */
	    {"/healthz?%78=1", 400},
	    {"/healthz?x=1&x=2", 400},
	    {"/healthz?x=1&y=2", 200},
	    {"/healthz?a=1&b=1&c=1&d=1&e=1&f=1&g=1&h=1&i=1&j=1&k=1&l=1&m=1&n=1&o=1&p=1&q=1&r=1"
	     "&s=1&t=1&u=1&v=1&w=1&x=1&y=1&z=1&A=1&B=1&C=1&D=1&E=1&F=1&G=1",
	     400},
	};
	char req[512], resp[8192], want[32];

	(void)state;
	for (size_t i = 0; i < IDP_ARRAY_LEN(cases); i++) {
		snprintf(req, sizeof(req),
		         "GET %s HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
		         cases[i].target);
		raw(req, resp, sizeof(resp));
		snprintf(want, sizeof(want), "HTTP/1.1 %d ", cases[i].status);
		if (strncmp(resp, want, strlen(want)) != 0)
			fail_msg("%s: want %d, got %.120s", cases[i].target, cases[i].status, resp);
	}
}

static void
two_authorization_headers_are_a_400_problem(void **state)
{
	static const char *const paths[] = {"/v1/agents", "/v1/agents/nobody", "/v1/keys"};
	char req[1024], resp[8192];

	(void)state;
	for (size_t i = 0; i < IDP_ARRAY_LEN(paths); i++) {
		for (int order = 0; order < 3; order++) {
			snprintf(req, sizeof(req),
			         "GET %s HTTP/1.1\r\nHost: t\r\n"
			         "Authorization: Bearer %s\r\n"
			         "%s: Bearer %s\r\nConnection: close\r\n\r\n",
			         paths[i], order == 1 ? "idpk_someone_else" : admin_key,
			         order == 2 ? "authorization" : "Authorization",
			         order == 1 ? admin_key : "idpk_someone_else");
			raw(req, resp, sizeof(resp));
			if (strncmp(resp, "HTTP/1.1 400 ", 13) != 0)
				fail_msg("%s, case %d: %.200s", paths[i], order, resp);
			assert_non_null(strstr(resp, "application/problem+json"));
			assert_non_null(strstr(resp, "\"code\":\"bad_request\""));
		}
	}
	/* Host and Content-Length may not repeat either. */
	snprintf(req, sizeof(req),
	         "GET /v1/agents HTTP/1.1\r\nHost: t\r\nHost: other.example\r\n"
	         "Authorization: Bearer %s\r\nConnection: close\r\n\r\n",
	         admin_key);
	raw(req, resp, sizeof(resp));
	assert_true(strncmp(resp, "HTTP/1.1 400 ", 13) == 0);
	assert_non_null(strstr(resp, "Host headers"));
	snprintf(req, sizeof(req),
	         "POST /v1/agents HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer %s\r\n"
	         "Content-Type: application/json\r\nContent-Length: 2\r\nContent-Length: 2\r\n"
	         "Connection: close\r\n\r\n{}",
	         admin_key);
	raw(req, resp, sizeof(resp));
	assert_true(strncmp(resp, "HTTP/1.1 400 ", 13) == 0);
	/* Nor Content-Type: a form to idpd could be JSON to a filter in front. */
	snprintf(req, sizeof(req),
	         "POST /introspect HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer %s\r\n"
	         "Content-Type: application/x-www-form-urlencoded\r\n"
	         "content-type: application/json\r\nContent-Length: 9\r\n"
	         "Connection: close\r\n\r\ntoken=abc",
	         admin_key);
	raw(req, resp, sizeof(resp));
	assert_true(strncmp(resp, "HTTP/1.1 400 ", 13) == 0);
	assert_non_null(strstr(resp, "\"code\":\"bad_request\""));
	assert_non_null(strstr(resp, "2 Content-Type headers"));
	/* Two lengths on a kept-alive connection: the 400 closes it, so the
	 * bytes a proxy honouring the second length would send as the body
	 * are never read as a request of their own (smuggling). */
	snprintf(req, sizeof(req),
	         "POST /v1/token HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
	         "Content-Length: 0\r\nContent-Length: 34\r\n\r\n"
	         "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
	raw(req, resp, sizeof(resp));
	assert_true(strncmp(resp, "HTTP/1.1 400 ", 13) == 0);
	assert_null(strstr(resp + 1, "HTTP/1.1 "));
	/* One header with the key is served. */
	snprintf(req, sizeof(req),
	         "GET /v1/agents HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer %s\r\n"
	         "Connection: close\r\n\r\n",
	         admin_key);
	raw(req, resp, sizeof(resp));
	assert_true(strncmp(resp, "HTTP/1.1 200 ", 13) == 0);
}

/* Trailing spaces and tabs are not part of a field value (RFC 9110 section 5.5). */
static void
bearer_with_trailing_whitespace_is_accepted(void **state)
{
	static const char *const tails[] = {" ", "\t", " \t  "};
	char req[1024], resp[8192];

	(void)state;
	for (size_t i = 0; i < IDP_ARRAY_LEN(tails); i++) {
		snprintf(req, sizeof(req),
		         "GET /v1/agents HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer %s%s\r\n"
		         "Connection: close\r\n\r\n",
		         admin_key, tails[i]);
		raw(req, resp, sizeof(resp));
		if (strncmp(resp, "HTTP/1.1 200 ", 13) != 0)
			fail_msg("case %zu: %.200s", i, resp);
	}
	/* Whitespace alone is no credential. */
	raw("GET /v1/agents HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer  \t \r\n"
	    "Connection: close\r\n\r\n",
	    resp, sizeof(resp));
	assert_true(strncmp(resp, "HTTP/1.1 401 ", 13) == 0);
	assert_non_null(strstr(resp, "an API key is required"));
}

/*
 * A client that leaves before its answer is sent is not counted as
 * answered.  Made deterministic with a lock: the handler of GET /v1/agents
 * waits on it (seen in pg_stat_activity), the client resets its
 * connection, then the lock goes and the handler answers into a socket
 * that is gone.
 */
static void
a_response_the_client_never_received_is_counted_as_aborted(void **state)
{
	static const char waiting[] =
	    "SELECT count(*) FROM pg_stat_activity WHERE pid <> pg_backend_pid() "
	    "AND wait_event_type = 'Lock' AND query LIKE 'SELECT%FROM agents WHERE true%'";
	struct linger lg = {1, 0};
	struct http_resp r;
	char url[256], req[512], v[32] = "0";
	PGresult *res;
	PGconn *pg;
	int fd;
	bool seen = false;

	(void)state;
	harness_db_url("t_foundation", url, sizeof(url));
	pg = PQconnectdb(url);
	assert_int_equal(PQstatus(pg), CONNECTION_OK);
	res = PQexec(pg, "BEGIN; LOCK TABLE agents IN ACCESS EXCLUSIVE MODE");
	assert_int_equal(PQresultStatus(res), PGRES_COMMAND_OK);
	PQclear(res);

	fd = harness_connect(idpd.port);
	assert_true(fd >= 0);
	snprintf(req, sizeof(req),
	         "GET /v1/agents HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer %s\r\n\r\n",
	         admin_key);
	assert_int_equal(send(fd, req, strlen(req), MSG_NOSIGNAL), (ssize_t)strlen(req));
	for (int i = 0; i < 200 && atoi(v) == 0; i++) {
		struct timespec ts = {0, 25 * 1000 * 1000};

		assert_int_equal(harness_sql_value("t_foundation", waiting, v, sizeof(v)), 0);
		if (atoi(v) == 0)
			nanosleep(&ts, NULL);
	}
	assert_int_not_equal(atoi(v), 0);
	/* A reset, not a FIN: idpd's write of the answer then fails. */
	assert_int_equal(setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg)), 0);
	close(fd);
	res = PQexec(pg, "COMMIT");
	assert_int_equal(PQresultStatus(res), PGRES_COMMAND_OK);
	PQclear(res);
	PQfinish(pg);

	for (int i = 0; i < 100 && !seen; i++) {
		struct timespec ts = {0, 50 * 1000 * 1000};

		get("/metrics", &r);
		seen = strstr(r.body, "idpd_http_requests_total{route=\"/v1/agents\","
		                      "status=\"aborted\"} 1\n") != NULL;
		harness_resp_free(&r);
		if (!seen)
			nanosleep(&ts, NULL);
	}
	assert_true(seen);
	assert_true(harness_log_contains(&idpd, "\"route\":\"/v1/agents\",\"status\":0,"));
}

static void
sleep_ms(int ms)
{
	struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};

	nanosleep(&ts, NULL);
}

/* A connection to port with a receive timeout of ms; request (len bytes, or strlen if 0) sent. */
static int
send_on(int port, const char *request, size_t len, int ms)
{
	struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
	int fd = harness_connect(port);

	if (len == 0)
		len = strlen(request);
	assert_true(fd >= 0);
	assert_int_equal(setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)), 0);
	assert_int_equal(send(fd, request, len, MSG_NOSIGNAL), (ssize_t)len);
	return fd;
}

/* Read from fd until it closes or times out; what came. */
static void
read_all(int fd, char *out, size_t len)
{
	size_t got = 0;
	ssize_t n;

	while (got + 1 < len && (n = recv(fd, out + got, len - 1 - got, 0)) > 0)
		got += (size_t)n;
	out[got] = '\0';
}

/*
 * A body framed both by Content-Length and by chunked coding is refused,
 * and the connection closed, so what a proxy reading the other framing
 * would forward as the body is never served as a request of its own.  A
 * coding idpd does not decode is refused at once, not waited on.
 */
static void
a_body_framed_two_ways_or_in_an_unknown_coding_is_refused(void **state)
{
	char resp[8192];
	int fd;

	(void)state;
	raw("POST /introspect HTTP/1.1\r\nHost: t\r\nContent-Length: 39\r\n"
	    "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /healthz HTTP/1.1\r\nHost: t\r\n\r\n",
	    resp, sizeof(resp));
	assert_true(strncmp(resp, "HTTP/1.1 400 ", 13) == 0);
	assert_non_null(strstr(resp, "both Content-Length and Transfer-Encoding"));
	assert_null(strstr(resp + 1, "HTTP/1.1 "));
	raw("POST /introspect HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
	    "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n",
	    resp, sizeof(resp));
	assert_true(strncmp(resp, "HTTP/1.1 400 ", 13) == 0);
	/* Answered within the second, not at the connection timeout. */
	fd = send_on(
	    idpd.port,
	    "POST /introspect HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 0,
	    1000);
	read_all(fd, resp, sizeof(resp));
	close(fd);
	assert_true(strncmp(resp, "HTTP/1.1 501 ", 13) == 0);
	assert_non_null(strstr(resp, "application/problem+json"));
	assert_non_null(strstr(resp, "\"title\":\"Not Implemented\""));
	/* Chunked alone is read as ever. */
	raw("POST /introspect HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
	    "Content-Type: application/x-www-form-urlencoded\r\nConnection: close\r\n\r\n"
	    "7\r\ntoken=x\r\n0\r\n\r\n",
	    resp, sizeof(resp));
	assert_true(strncmp(resp, "HTTP/1.1 401 ", 13) == 0);
}

/*
 * RFC 9112's rules for a request head, checked before any handler runs:
 * no whitespace before a colon (where a hidden Content-Length would frame
 * the body as another request), a Host that is one (and
 * one at all in HTTP/1.1); an absolute-form target is served, its
 * authority standing for Host.
 */
static void
request_heads_are_read_as_rfc_9112_asks(void **state)
{
	char resp[8192];

	(void)state;
	raw("POST /introspect HTTP/1.1\r\nHost: t\r\nContent-Length : 46\r\n"
	    "Connection: close\r\n\r\nGET /healthz?smuggled=1 HTTP/1.1\r\nHost: t\r\n\r\n",
	    resp, sizeof(resp));
	assert_true(strncmp(resp, "HTTP/1.1 400 ", 13) == 0);
	assert_non_null(strstr(resp, "holds whitespace"));
	assert_null(strstr(resp + 1, "HTTP/1.1 "));
	raw("GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n", resp, sizeof(resp));
	assert_true(strncmp(resp, "HTTP/1.1 400 ", 13) == 0);
	assert_non_null(strstr(resp, "no Host header"));
	raw("GET /healthz HTTP/1.0\r\n\r\n", resp, sizeof(resp));
	assert_non_null(strstr(resp, " 200 OK"));
	raw("GET /.well-known/oauth-authorization-server HTTP/1.1\r\nHost: ex\xff"
	    "ample\r\nConnection: close\r\n\r\n",
	    resp, sizeof(resp));
	assert_true(strncmp(resp, "HTTP/1.1 400 ", 13) == 0);
	assert_non_null(strstr(resp, "not a host and port"));
	raw("GET http://t/healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n", resp,
	    sizeof(resp));
	assert_true(strncmp(resp, "HTTP/1.1 200 ", 13) == 0);
	raw("GET http://auth.example:8443/.well-known/oauth-authorization-server HTTP/1.1\r\n"
	    "Host: other.example\r\nConnection: close\r\n\r\n",
	    resp, sizeof(resp));
	assert_true(strncmp(resp, "HTTP/1.1 200 ", 13) == 0);
	assert_non_null(strstr(resp, "http://auth.example:8443/oauth2/token"));
	assert_null(strstr(resp, "other.example"));
	/* Whitespace after a value is not part of it (RFC 9110 5.5): an If-Match
	 * read so reaches the record (404 here), where it was a malformed 400. */
	{
		char req[512];

		snprintf(req, sizeof(req),
		         "PATCH /v1/agents/no-such-agent HTTP/1.1\r\nHost: t\r\nAuthorization: "
		         "Bearer %s\r\nIf-Match: \"1\" \r\nContent-Type: application/json\r\n"
		         "Content-Length: 2\r\nConnection: close\r\n\r\n{}",
		         admin_key);
		raw(req, resp, sizeof(resp));
		if (strncmp(resp, "HTTP/1.1 404 ", 13) != 0)
			fail_msg("If-Match with a trailing space: %.300s", resp);
	}
	/* A coding libmicrohttpd would not decode as chunked is refused, trailing space or not. */
	raw("POST /introspect HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked \r\n"
	    "Content-Type: application/x-www-form-urlencoded\r\nConnection: close\r\n\r\n"
	    "7\r\ntoken=x\r\n0\r\n\r\n",
	    resp, sizeof(resp));
	assert_true(strncmp(resp, "HTTP/1.1 501 ", 13) == 0);
	assert_null(strstr(resp + 1, "HTTP/1.1 "));
}

/* A request for nothing here is answered before its body is read. */
static void
no_route_is_answered_before_the_body(void **state)
{
	char resp[4096];
	int fd;

	(void)state;
	fd = send_on(idpd.port,
	             "POST /no/such/route HTTP/1.1\r\nHost: t\r\nContent-Length: 500000\r\n\r\n", 0,
	             2000);
	read_all(fd, resp, sizeof(resp));
	close(fd);
	assert_true(strncmp(resp, "HTTP/1.1 404 ", 13) == 0);
	fd = send_on(idpd.port,
	             "DELETE /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 500000\r\n\r\n", 0,
	             2000);
	read_all(fd, resp, sizeof(resp));
	close(fd);
	assert_true(strncmp(resp, "HTTP/1.1 405 ", 13) == 0);
	/* Answered early, the body is never read as a request of its own. */
	fd = send_on(idpd.port,
	             "POST /no/such/route HTTP/1.1\r\nHost: t\r\nContent-Length: 34\r\n\r\n"
	             "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n",
	             0, 2000);
	read_all(fd, resp, sizeof(resp));
	close(fd);
	assert_true(strncmp(resp, "HTTP/1.1 404 ", 13) == 0);
	assert_null(strstr(resp + 1, "HTTP/1.1 "));
	/* Nor when it comes after the answer: the answer closed the connection. */
	fd = send_on(idpd.port,
	             "POST /no/such/route HTTP/1.1\r\nHost: t\r\nContent-Length: 34\r\n\r\n", 0,
	             2000);
	sleep_ms(300);
	(void)send(fd, "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n", 34, MSG_NOSIGNAL);
	read_all(fd, resp, sizeof(resp));
	close(fd);
	assert_true(strncmp(resp, "HTTP/1.1 404 ", 13) == 0);
	assert_null(strstr(resp + 1, "HTTP/1.1 "));
}

/* "?status" is not "no filter": a parameter without a value is a 400. */
static void
a_query_parameter_without_a_value_is_refused(void **state)
{
	struct http_resp r;
	char url[256], auth[128];
	const char *h[] = {auth, NULL};

	(void)state;
	snprintf(auth, sizeof(auth), "Authorization: Bearer %s", admin_key);
	snprintf(url, sizeof(url), "%s/v1/agents?status", idpd.base);
	assert_int_equal(harness_http("GET", url, h, NULL, 0, &r), 0);
	assert_problem(&r, 400, "bad_request");
	assert_non_null(strstr(json_string_value(json_object_get(r.json, "detail")), "no value"));
	harness_resp_free(&r);
	snprintf(url, sizeof(url), "%s/v1/agents?status=active", idpd.base);
	assert_int_equal(harness_http("GET", url, h, NULL, 0, &r), 0);
	assert_int_equal(r.status, 200);
	harness_resp_free(&r);
	/* An empty item asks nothing and is no error. */
	snprintf(url, sizeof(url), "%s/v1/agents?&status=active&&limit=5&", idpd.base);
	assert_int_equal(harness_http("GET", url, h, NULL, 0, &r), 0);
	assert_int_equal(r.status, 200);
	harness_resp_free(&r);
}

/*
 * Bodies held at once are bounded over all connections: slow uploads
 * (no credentials needed to start one) cannot make idpd hold
 * max_connections times max_body.  Past the bound a body gets 503 with
 * Retry-After; once the others are gone, the same request is read.
 */
static void
bodies_held_at_once_are_bounded(void **state)
{
	struct idpd_proc p;
	char head[256], resp[4096], *body;
	int a, b, c;
	size_t hl;

	(void)state;
	assert_int_equal(harness_idpd_start(&p, "t_foundation",
	                                    "max_body = 600000\nmax_body_memory = 1048576\n", NULL),
	                 0);
	body = malloc(600000);
	assert_non_null(body);
	memset(body, 'x', 600000);
	/* Two uploads of 524,000 bytes each, held one byte short of done... */
	snprintf(head, sizeof(head),
	         "POST /v1/agents HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
	         "Content-Length: 524001\r\n\r\n");
	hl = strlen(head);
	a = send_on(p.port, head, hl, 10000);
	assert_int_equal(send(a, body, 524000, MSG_NOSIGNAL), 524000);
	b = send_on(p.port, head, hl, 10000);
	assert_int_equal(send(b, body, 524000, MSG_NOSIGNAL), 524000);
	sleep_ms(500);
	/* ...count all but their first 16 KiB (1,015,232 bytes) and leave no
	 * room for a third of 300,000... */
	snprintf(head, sizeof(head),
	         "POST /v1/agents HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
	         "Content-Length: 300000\r\nConnection: close\r\n\r\n");
	c = send_on(p.port, head, strlen(head), 10000);
	assert_int_equal(send(c, body, 300000, MSG_NOSIGNAL), 300000);
	read_all(c, resp, sizeof(resp));
	close(c);
	if (strncmp(resp, "HTTP/1.1 503 ", 13) != 0)
		fail_msg("expected 503: %.200s", resp);
	assert_non_null(strstr(resp, "Retry-After: 1"));
	assert_non_null(strstr(resp, "application/problem+json"));
	/* ...while a small body is still read: 2 KiB, which would not fit
	 * were every byte counted (1,048,000 are held). */
	c = send_on(p.port,
	            "POST /v1/agents HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
	            "Content-Length: 2048\r\nConnection: close\r\n\r\n",
	            0, 10000);
	assert_int_equal(send(c, body, 2048, MSG_NOSIGNAL), 2048);
	read_all(c, resp, sizeof(resp));
	close(c);
	if (strncmp(resp, "HTTP/1.1 401 ", 13) != 0)
		fail_msg("expected 401: %.200s", resp);
	close(a);
	close(b);
	sleep_ms(500);
	/* Their bytes given back, the same request is read (and refused for
	 * want of credentials, as any). */
	c = send_on(p.port, head, strlen(head), 10000);
	assert_int_equal(send(c, body, 300000, MSG_NOSIGNAL), 300000);
	read_all(c, resp, sizeof(resp));
	close(c);
	if (strncmp(resp, "HTTP/1.1 401 ", 13) != 0)
		fail_msg("expected 401: %.200s", resp);
	free(body);
	assert_int_equal(harness_idpd_stop(&p, SIGTERM, 10000), 0);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(idpd_writes_no_core_file),
	    cmocka_unit_test(healthz_answers_ok_with_a_generated_request_id),
	    cmocka_unit_test(request_id_is_echoed_when_well_formed_and_replaced_otherwise),
	    cmocka_unit_test(a_removed_config_key_loads_and_is_reported_ignored),
	    cmocka_unit_test(readyz_reports_the_schema_version),
	    cmocka_unit_test(large_header_sections_are_read_and_oversized_ones_refused),
	    cmocka_unit_test(metrics_expose_requests_pool_listener_and_build),
	    cmocka_unit_test(unknown_path_is_a_404_problem),
	    cmocka_unit_test(wrong_method_is_a_405_problem_with_allow),
	    cmocka_unit_test(head_is_answered_like_get_without_a_body),
	    cmocka_unit_test(responses_are_not_cacheable_by_default),
	    cmocka_unit_test(escapes_are_decoded_once),
	    cmocka_unit_test(two_authorization_headers_are_a_400_problem),
	    cmocka_unit_test(bearer_with_trailing_whitespace_is_accepted),
	    cmocka_unit_test(a_response_the_client_never_received_is_counted_as_aborted),
	    cmocka_unit_test(a_body_framed_two_ways_or_in_an_unknown_coding_is_refused),
	    cmocka_unit_test(request_heads_are_read_as_rfc_9112_asks),
	    cmocka_unit_test(no_route_is_answered_before_the_body),
	    cmocka_unit_test(a_query_parameter_without_a_value_is_refused),
	    cmocka_unit_test(bodies_held_at_once_are_bounded),
	};
	return cmocka_run_group_tests_name("foundation", tests, group_setup, group_teardown);
}
