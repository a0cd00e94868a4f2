/*
 * Integration tests of idpd's life cycle and limits: body caps, readiness
 * across a PostgreSQL outage, draining on SIGTERM, reloads and their audit
 * events, schema checks and the migrations runner.  Real processes and a real database; no mocks.
 */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>
#include <libpq-fe.h>

#include "harness.h"
#include "idpd/auth.h"
#include "idpd/jws.h"
#include "world.h"

static void
sleep_ms(int ms)
{
	struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};

	nanosleep(&ts, NULL);
}

/* Read from fd until the peer closes or timeout_ms passes. */
static size_t
read_all(int fd, char *buf, size_t len, int timeout_ms)
{
	size_t got = 0;

	while (got + 1 < len) {
		struct pollfd p = {fd, POLLIN, 0};
		ssize_t n;

		if (poll(&p, 1, timeout_ms) <= 0)
			break;
		n = read(fd, buf + got, len - 1 - got);
		if (n <= 0)
			break;
		got += (size_t)n;
		/* A complete small response is enough for these tests. */
		if (strstr(buf, "\r\n\r\n") != NULL && got > 0) {
			buf[got] = '\0';
			const char *cl = strstr(buf, "Content-Length: ");

			if (cl != NULL) {
				size_t body = strtoul(cl + 16, NULL, 10);
				const char *hend = strstr(buf, "\r\n\r\n") + 4;

				if ((size_t)(buf + got - hend) >= body)
					break;
			}
		}
	}
	buf[got] = '\0';
	return got;
}

static int
send_all(int fd, const char *s)
{
	size_t n = strlen(s);

	return send(fd, s, n, MSG_NOSIGNAL) == (ssize_t)n ? 0 : -1;
}

static void
body_over_the_limit_is_a_413_problem(void **state)
{
	struct idpd_proc p;
	struct http_resp r;
	char url[256], buf[4096], *big;
	const char *hdrs[] = {"Content-Type: application/json", NULL};
	int fd;

	(void)state;
	assert_int_equal(harness_db_create("t_life_413"), 0);
	assert_int_equal(harness_idpd_start(&p, "t_life_413", "max_body = 1024\n", NULL), 0);
	big = malloc(4096);
	memset(big, 'x', 4096);
	/* A route that takes a body: one that does not is a 405 before any body is read. */
	snprintf(url, sizeof(url), "%s/v1/agents", p.base);
	assert_int_equal(harness_http("POST", url, hdrs, big, 4096, &r), 0);
	assert_int_equal(r.status, 413);
	assert_non_null(r.json);
	assert_string_equal(json_string_value(json_object_get(r.json, "code")),
	                    "payload_too_large");
	harness_resp_free(&r);

	/* Without a Content-Length the cap still holds: chunked upload. */
	fd = harness_connect(p.port);
	assert_true(fd >= 0);
	assert_int_equal(send_all(fd, "POST /v1/agents HTTP/1.1\r\nHost: t\r\n"
	                              "Content-Type: application/json\r\n"
	                              "Transfer-Encoding: chunked\r\n\r\n"),
	                 0);
	for (int i = 0; i < 4; i++) {
		char chunk[700];

		snprintf(chunk, sizeof(chunk), "200\r\n%.*s\r\n", 512, big);
		if (send_all(fd, chunk) != 0)
			break; /* idpd may already have answered and closed */
	}
	send_all(fd, "0\r\n\r\n");
	read_all(fd, buf, sizeof(buf), 5000);
	close(fd);
	assert_non_null(strstr(buf, "HTTP/1.1 413"));
	assert_non_null(strstr(buf, "application/problem+json"));
	free(big);

	/* idpd is still healthy afterwards. */
	snprintf(url, sizeof(url), "%s/healthz", p.base);
	assert_int_equal(harness_http("GET", url, NULL, NULL, 0, &r), 0);
	assert_int_equal(r.status, 200);
	harness_resp_free(&r);
	assert_int_equal(harness_idpd_stop(&p, SIGTERM, 10000), 0);
}

/* Poll /readyz until it answers want (or 30 s pass); returns the last status. */
static long
wait_ready(const struct idpd_proc *p, long want, json_t **last)
{
	char url[256];
	long status = 0;

	snprintf(url, sizeof(url), "%s/readyz", p->base);
	for (int i = 0; i < 300; i++) {
		struct http_resp r;

		if (harness_http("GET", url, NULL, NULL, 0, &r) == 0) {
			status = r.status;
			if (status == want) {
				if (last != NULL) {
					*last = r.json;
					r.json = NULL;
				}
				harness_resp_free(&r);
				return status;
			}
		}
		harness_resp_free(&r);
		sleep_ms(100);
	}
	return status;
}

static struct idpd_proc outage_proc;

static int
outage_teardown(void **state)
{
	(void)state;
	/* Whatever happened, leave the cluster running for the next test. */
	harness_pg_start();
	if (outage_proc.pid > 0)
		harness_idpd_stop(&outage_proc, SIGKILL, 2000);
	return 0;
}

static void
readyz_turns_503_while_postgres_is_down_and_recovers_without_restart(void **state)
{
	struct idpd_proc *p = &outage_proc;
	json_t *j = NULL;
	pid_t pid;

	char key[64], hash[80], extra[512], url[256], auth[128];
	const char *hdr[] = {auth, "Content-Type: application/json", NULL};
	struct http_resp r;

	(void)state;
	assert_int_equal(auth_key_generate(key, hash), IDP_OK);
	snprintf(extra, sizeof(extra),
	         "[[api_keys]]\nname = \"ops\"\nhash = \"%s\"\nroles = [\"admin\"]\n", hash);
	snprintf(auth, sizeof(auth), "Authorization: Bearer %s", key);
	assert_int_equal(harness_db_create("t_life_outage"), 0);
	assert_int_equal(harness_idpd_start(p, "t_life_outage", NULL, extra), 0);
	pid = p->pid;
	assert_int_equal(wait_ready(p, 200, NULL), 200);
	{
		const char *body =
		    "{\"id\":\"agent-x\",\"agent_type\":\"worker\",\"owner\":\"alice@company.com\","
		    "\"capabilities\":[\"a:read\"],\"delegation_constraints\":{\"max_chain_depth\":"
		    "1,"
		    "\"max_scope_per_delegation\":\"read\",\"requires_human_approval_for\":[]}}";

		snprintf(url, sizeof(url), "%s/v1/agents", p->base);
		assert_int_equal(harness_http("POST", url, hdr, body, strlen(body), &r), 0);
		assert_int_equal(r.status, 201);
		harness_resp_free(&r);
	}
	snprintf(url, sizeof(url), "%s/v1/agents/agent-x", p->base);
	assert_int_equal(harness_http("GET", url, hdr, NULL, 0, &r), 0);
	assert_int_equal(r.status, 200);
	harness_resp_free(&r);

	assert_int_equal(harness_pg_stop("immediate"), 0);
	assert_int_equal(wait_ready(p, 503, &j), 503);
	/* The registry's cache no longer hears about changes made elsewhere:
	 * it does not answer from memory as if it were current (fail closed). */
	for (int i = 0; i < 100; i++) {
		assert_int_equal(harness_http("GET", url, hdr, NULL, 0, &r), 0);
		if (r.status == 503)
			break;
		harness_resp_free(&r);
		sleep_ms(100);
	}
	assert_int_equal(r.status, 503);
	harness_resp_free(&r);
	assert_non_null(j);
	assert_string_equal(json_string_value(json_object_get(j, "code")), "not_ready");
	assert_string_equal(json_string_value(json_object_get(j, "reason")),
	                    "database_unreachable");
	json_decref(j);

	assert_int_equal(harness_pg_start(), 0);
	assert_int_equal(wait_ready(p, 200, NULL), 200);
	for (int i = 0; i < 100; i++) {
		assert_int_equal(harness_http("GET", url, hdr, NULL, 0, &r), 0);
		if (r.status == 200)
			break;
		harness_resp_free(&r);
		sleep_ms(100);
	}
	assert_int_equal(r.status, 200);
	harness_resp_free(&r);
	/* Same process throughout: idpd healed its pool on its own. */
	assert_int_equal(p->pid, pid);
	assert_int_equal(kill(pid, 0), 0);
	/* The listener noticed too and came back. */
	for (int i = 0; i < 100 && !harness_log_contains(p, "listener: reconnected"); i++)
		sleep_ms(100);
	assert_true(harness_log_contains(p, "listener: reconnected"));
	assert_int_equal(harness_idpd_stop(p, SIGTERM, 10000), 0);
}

static struct idpd_proc writer_proc;

static int
writer_teardown(void **state)
{
	(void)state;
	(void)harness_sql("t_life_writer", "DROP TRIGGER IF EXISTS refuse ON audit_events");
	if (writer_proc.pid > 0)
		harness_idpd_stop(&writer_proc, SIGKILL, 2000);
	return 0;
}

/*
 * PostgreSQL up but refusing the audit writer's batches: every request that
 * must be audited would answer 503, so /readyz says so (the pool alone
 * would call the instance ready), and turns 200 once the batch commits.
 */
static void
readyz_turns_503_while_audit_events_cannot_commit(void **state)
{
	struct idpd_proc *p = &writer_proc;
	char key[64], hash[80], extra[512], req[1024], v[32];
	const char *body =
	    "{\"id\":\"agent-w\",\"agent_type\":\"worker\",\"owner\":"
	    "\"alice@company.com\",\"capabilities\":[\"a:read\"],"
	    "\"delegation_constraints\":{\"max_chain_depth\":1,"
	    "\"max_scope_per_delegation\":\"read\",\"requires_human_approval_for\":[]}}";
	json_t *j = NULL;
	int fd;

	(void)state;
	assert_int_equal(auth_key_generate(key, hash), IDP_OK);
	/* The emitter waits long enough for the failing batch to be seen. */
	snprintf(extra, sizeof(extra),
	         "[audit]\ntimeout = \"60s\"\n[[api_keys]]\nname = \"ops\"\nhash = \"%s\"\n"
	         "roles = [\"admin\"]\n",
	         hash);
	assert_int_equal(harness_db_create("t_life_writer"), 0);
	assert_int_equal(harness_idpd_start(p, "t_life_writer", NULL, extra), 0);
	assert_int_equal(wait_ready(p, 200, &j), 200);
	assert_string_equal(
	    json_string_value(json_object_get(json_object_get(j, "checks"), "audit")), "ok");
	json_decref(j);
	j = NULL;
	assert_int_equal(harness_sql("t_life_writer",
	                             "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "
	                             "$$BEGIN RAISE EXCEPTION 'refused by the test'; END$$; "
	                             "CREATE TRIGGER refuse BEFORE INSERT ON audit_events "
	                             "FOR EACH ROW EXECUTE FUNCTION refuse()"),
	                 0);

	/* A registration, left waiting for its audit event. */
	fd = harness_connect(p->port);
	assert_true(fd >= 0);
	snprintf(req, sizeof(req),
	         "POST /v1/agents HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer %s\r\n"
	         "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n%s",
	         key, strlen(body), body);
	assert_int_equal(send_all(fd, req), 0);

	assert_int_equal(wait_ready(p, 503, &j), 503);
	assert_non_null(j);
	assert_string_equal(json_string_value(json_object_get(j, "reason")),
	                    "audit_writer_failing");
	assert_string_equal(
	    json_string_value(json_object_get(json_object_get(j, "checks"), "audit")),
	    "audit_writer_failing");
	assert_string_equal(
	    json_string_value(json_object_get(json_object_get(j, "checks"), "revocation")), "ok");
	json_decref(j);

	assert_int_equal(harness_sql("t_life_writer", "DROP TRIGGER refuse ON audit_events"), 0);
	assert_int_equal(wait_ready(p, 200, NULL), 200);
	/* The registration's event was the batch retried: it is there once. */
	assert_int_equal(harness_sql_value("t_life_writer",
	                                   "SELECT count(*) FROM audit_events WHERE type = "
	                                   "'agent.registered' AND agent_id = 'agent-w'",
	                                   v, sizeof(v)),
	                 0);
	assert_string_equal(v, "1");
	close(fd);
	assert_int_equal(harness_idpd_stop(p, SIGTERM, 10000), 0);
}

static struct idpd_proc stall_proc;
static pid_t stalled_backend;

static int
stall_teardown(void **state)
{
	(void)state;
	if (stalled_backend > 0)
		kill(stalled_backend, SIGCONT);
	stalled_backend = 0;
	if (stall_proc.pid > 0)
		harness_idpd_stop(&stall_proc, SIGKILL, 2000);
	return 0;
}

/*
 * The listener's backend stops answering while its TCP connection stays
 * up: the idle probe gives up within seconds and the listener moves to a
 * new session, and SIGTERM still stops idpd promptly.  Before, the probe
 * waited forever: "connected" the while, nothing arriving, and shutdown
 * stuck joining the thread.
 */
static void
a_silent_listener_session_is_noticed(void **state)
{
	struct idpd_proc *p = &stall_proc;
	char v[32];

	(void)state;
	assert_int_equal(harness_db_create("t_life_stall"), 0);
	assert_int_equal(
	    harness_idpd_start(p, "t_life_stall", NULL, "[revocation]\nmax_staleness = \"1s\"\n"),
	    0);
	assert_int_equal(wait_ready(p, 200, NULL), 200);
	/* Ready does not wait for the listener's session (the revocation state
	 * is read through the pool): on a loaded machine it may come later. */
	{
		int found = -1;

		for (int i = 0; i < 100 && found != 0; i++) {
			found = harness_sql_value(
			    "t_life_stall",
			    "SELECT pid FROM pg_stat_activity WHERE application_name "
			    "= 'idpd listener' AND datname = 't_life_stall'",
			    v, sizeof(v));
			if (found != 0)
				sleep_ms(100);
		}
		assert_int_equal(found, 0);
	}
	stalled_backend = (pid_t)atoi(v);
	assert_true(stalled_backend > 0);
	assert_int_equal(kill(stalled_backend, SIGSTOP), 0);
	/* 10 s idle, then 5 s for the probe's answer. */
	for (int i = 0; i < 250 && !harness_log_contains(p, "no answer to the idle probe"); i++)
		sleep_ms(100);
	assert_true(harness_log_contains(p, "no answer to the idle probe"));
	/* A new session replaces the silent one; its resync makes the state
	 * current again. */
	for (int i = 0; i < 100 && !harness_log_contains(p, "listener: reconnected"); i++)
		sleep_ms(100);
	assert_true(harness_log_contains(p, "listener: reconnected"));
	assert_int_equal(wait_ready(p, 200, NULL), 200);
	assert_int_equal(harness_idpd_stop(p, SIGTERM, 10000), 0);
	kill(stalled_backend, SIGCONT);
	stalled_backend = 0;
}

/*
 * A second idpd on a port one is serving refuses to start (exit 1) instead
 * of sharing it: requests split between two processes, perhaps with other
 * configurations, policies or keys, would be nobody's intent.
 */
static void
a_second_instance_on_the_same_port_refuses_to_start(void **state)
{
	struct idpd_proc p;
	char out[400];
	pid_t second;
	int status = -1;

	(void)state;
	assert_int_equal(harness_db_create("t_life_port"), 0);
	assert_int_equal(harness_idpd_start(&p, "t_life_port", NULL, NULL), 0);
	snprintf(out, sizeof(out), "%s/second.log", p.dir);
	setenv("IDPD_KEK", HARNESS_KEK, 1); /* the first's, so only the port stands in the way */
	{
		const char *args[] = {"serve", "--config", p.config, NULL};

		second = harness_idpd_spawn(args, out);
	}
	assert_true(second > 0);
	for (int i = 0; i < 100; i++) {
		pid_t w = waitpid(second, &status, WNOHANG);

		if (w == second)
			break;
		status = -1;
		sleep_ms(100);
	}
	if (status == -1) {
		kill(second, SIGKILL);
		waitpid(second, NULL, 0);
		fail_msg("the second idpd is still running on port %d", p.port);
	}
	assert_true(WIFEXITED(status));
	assert_int_equal(WEXITSTATUS(status), 1);
	{
		FILE *f = fopen(out, "r");
		char log[8192];
		size_t n;

		assert_non_null(f);
		n = fread(log, 1, sizeof(log) - 1, f);
		fclose(f);
		log[n] = '\0';
		if (strstr(log, "cannot listen") == NULL)
			fail_msg("the second idpd failed for another reason: %s", log);
	}
	assert_int_equal(harness_idpd_stop(&p, SIGTERM, 10000), 0);
}

/* A connection with a request's head and half its 20-byte body sent, and a moment to arrive. */
static int
half_sent_request(int port)
{
	int fd = harness_connect(port);

	assert_true(fd >= 0);
	assert_int_equal(send_all(fd, "POST /v1/agents HTTP/1.1\r\nHost: t\r\n"
	                              "Content-Type: application/json\r\n"
	                              "Content-Length: 20\r\n\r\n{\"half\":\"a"),
	                 0);
	sleep_ms(300);
	return fd;
}

static void
sigterm_drains_a_slow_in_flight_request(void **state)
{
	struct idpd_proc p;
	char buf[4096];
	int fd, fd2, rc;

	(void)state;
	assert_int_equal(harness_db_create("t_life_drain"), 0);
	assert_int_equal(harness_idpd_start(&p, "t_life_drain", NULL, NULL), 0);

	/* Headers and half the body now; the rest after SIGTERM. */
	fd = half_sent_request(p.port);
	assert_int_equal(kill(p.pid, SIGTERM), 0);
	sleep_ms(500);

	/* Draining: a new connection is closed without an answer (refused, if
	 * the listening socket is already gone)... */
	fd2 = harness_connect(p.port);
	if (fd2 >= 0) {
		char none[256];

		none[0] = '\0';
		if (send_all(fd2, "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n") == 0)
			read_all(fd2, none, sizeof(none), 2000);
		close(fd2);
		assert_null(strstr(none, "HTTP/1.1"));
	}
	/* ...but the request in flight is finished and answered. */
	assert_int_equal(send_all(fd, "bcdefghi\"}"), 0);
	read_all(fd, buf, sizeof(buf), 5000);
	close(fd);
	/* Its handler ran once the body was whole: no key, so a 401. */
	assert_non_null(strstr(buf, "HTTP/1.1 401"));

	rc = harness_idpd_stop(&p, 0, 10000); /* signal 0: just wait */
	assert_int_equal(rc, 0);
	assert_true(harness_log_contains(&p, "SIGTERM: draining"));
	assert_true(harness_log_contains(&p, "stopped"));
	assert_false(harness_log_contains(&p, "without their answer"));
}

/*
 * Past server.shutdown_timeout the daemon stops: a request still reading
 * its body then ends unanswered, and the log counts it.
 */
static void
sigterm_counts_the_requests_it_cuts_off(void **state)
{
	struct idpd_proc p;
	char buf[256];
	int fd;

	(void)state;
	assert_int_equal(harness_db_create("t_life_cut"), 0);
	assert_int_equal(
	    harness_idpd_start(&p, "t_life_cut", "shutdown_timeout = \"300ms\"\n", NULL), 0);
	fd = half_sent_request(p.port);
	assert_int_equal(harness_idpd_stop(&p, SIGTERM, 10000), 0);
	buf[0] = '\0';
	read_all(fd, buf, sizeof(buf), 1000);
	close(fd);
	assert_null(strstr(buf, "HTTP/1.1"));
	assert_true(harness_log_contains(&p, "shutdown: 1 request(s) ended without their answer"));
}

/* ---- keep-alive clients hammering during shutdown ---- */

struct hammer {
	int port;
	volatile int stop;
	int requests;
};

/* One keep-alive client: request after request on one connection, a new
 * connection whenever idpd closes one, until no connection is accepted. */
static void *
hammer_main(void *arg)
{
	struct hammer *h = arg;
	char buf[8192];

	while (!h->stop) {
		int fd = harness_connect(h->port);

		if (fd < 0)
			break; /* listening socket closed: idpd is draining */
		while (!h->stop) {
			size_t got;

			if (send_all(fd, "GET /readyz HTTP/1.1\r\nHost: t\r\n\r\n") != 0)
				break;
			got = read_all(fd, buf, sizeof(buf), 5000);
			if (got == 0 || strstr(buf, "HTTP/1.1 ") == NULL)
				break;
			h->requests++;
			if (strstr(buf, "Connection: close") != NULL)
				break;
		}
		close(fd);
	}
	return NULL;
}

static void
sigterm_with_busy_keep_alive_clients_still_exits_cleanly(void **state)
{
	struct idpd_proc p;
	struct hammer hs[3];
	pthread_t th[3];

	(void)state;
	assert_int_equal(harness_db_create("t_life_busy"), 0);
	assert_int_equal(harness_idpd_start(&p, "t_life_busy", NULL, NULL), 0);
	for (int i = 0; i < 3; i++) {
		hs[i].port = p.port;
		hs[i].stop = 0;
		hs[i].requests = 0;
		pthread_create(&th[i], NULL, hammer_main, &hs[i]);
	}
	sleep_ms(500);
	/* Requests keep coming on open connections while idpd drains: it must
	 * still finish them, close those connections and exit 0 in time. */
	assert_int_equal(harness_idpd_stop(&p, SIGTERM, 15000), 0);
	for (int i = 0; i < 3; i++) {
		hs[i].stop = 1;
		pthread_join(th[i], NULL);
		assert_true(hs[i].requests > 0);
	}
	assert_true(harness_log_contains(&p, "stopped"));
}

static void
serve_refuses_a_database_whose_schema_is_behind(void **state)
{
	struct idpd_proc p;
	char v[32];

	(void)state;
	assert_int_equal(harness_sql("postgres", "DROP DATABASE IF EXISTS t_life_empty"), 0);
	assert_int_equal(harness_sql("postgres", "CREATE DATABASE t_life_empty TEMPLATE template0"),
	                 0);
	assert_int_equal(harness_idpd_start(&p, "t_life_empty", NULL, NULL), -1);
	assert_int_equal(p.exit_status, 1);
	assert_true(harness_log_contains(&p, "the database schema is at version 0"));
	assert_true(harness_log_contains(&p, "--migrate"));

	/* With --migrate it brings the schema up and serves. */
	assert_int_equal(harness_idpd_start_ex(&p, "t_life_empty", NULL, NULL, true), 0);
	assert_int_equal(wait_ready(&p, 200, NULL), 200);
	assert_int_equal(harness_sql_value("t_life_empty", "SELECT count(*) FROM schema_migrations",
	                                   v, sizeof(v)),
	                 0);
	assert_true(atoi(v) >= 1);
	assert_int_equal(harness_idpd_stop(&p, SIGTERM, 10000), 0);
}

/* Whether the file at path holds s. */
static bool
file_holds(const char *path, const char *s)
{
	static char text[65536];
	FILE *f = fopen(path, "r");
	size_t n;

	if (f == NULL)
		return false;
	n = fread(text, 1, sizeof(text) - 1, f);
	fclose(f);
	text[n] = '\0';
	return strstr(text, s) != NULL;
}

/*
 * serve --migrate waiting for the migration lock (another instance holds
 * it) stops at once on SIGTERM, cleanly, instead of ignoring it until the
 * lock comes and then starting to serve.
 */
static void
sigterm_while_waiting_for_the_migration_lock_stops_cleanly(void **state)
{
	const char *top = getenv("IDPD_TEST_TOP");
	char url[256], cfg[128], out[128], text[1024];
	int status = -1;
	PGresult *r;
	PGconn *pg;
	FILE *f;
	pid_t pid;

	(void)state;
	assert_int_equal(harness_sql("postgres", "DROP DATABASE IF EXISTS t_life_miglock"), 0);
	assert_int_equal(
	    harness_sql("postgres", "CREATE DATABASE t_life_miglock TEMPLATE template0"), 0);
	harness_db_url("t_life_miglock", url, sizeof(url));
	pg = PQconnectdb(url);
	assert_int_equal(PQstatus(pg), CONNECTION_OK);
	r = PQexec(pg, "SELECT pg_advisory_lock(1768189796)"); /* the migrations' lock */
	assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
	PQclear(r);
	snprintf(cfg, sizeof(cfg), "/tmp/idpd-miglock-%d.toml", (int)getpid());
	snprintf(out, sizeof(out), "/tmp/idpd-miglock-%d.log", (int)getpid());
	snprintf(text, sizeof(text),
	         "[server]\nlisten = \"127.0.0.1\"\nport = %d\n[database]\nurl = \"%s\"\n"
	         "[node]\nmigrations_dir = \"%s/migrations\"\n",
	         harness_free_port(), url, top ? top : ".");
	f = fopen(cfg, "w");
	assert_non_null(f);
	assert_true(fputs(text, f) >= 0);
	assert_int_equal(fclose(f), 0);
	setenv("IDPD_KEK", HARNESS_KEK, 1);
	{
		const char *args[] = {"serve", "--config", cfg, "--migrate", NULL};

		pid = harness_idpd_spawn(args, out);
	}
	assert_true(pid > 0);
	for (int i = 0; i < 100 && !file_holds(out, "holds the migration lock"); i++)
		sleep_ms(100);
	assert_true(file_holds(out, "holds the migration lock"));
	assert_int_equal(kill(pid, SIGTERM), 0);
	for (int i = 0; i < 50; i++) {
		if (waitpid(pid, &status, WNOHANG) == pid)
			break;
		status = -1;
		sleep_ms(100);
	}
	if (status == -1) {
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
		PQfinish(pg);
		fail_msg("idpd still waits for the migration lock after SIGTERM");
	}
	assert_true(WIFEXITED(status));
	assert_int_equal(WEXITSTATUS(status), 0);
	assert_true(file_holds(out, "stopped before serving"));
	PQfinish(pg);
	unlink(cfg);
	unlink(out);
}

/*
 * A URL mistyped so that libpq would take all of it for a database name
 * ("postgresql//user:pw@host/db"): a server then names that database, the
 * password in it, in "database ... does not exist".  idpd refuses it first.
 */
static void
a_mistyped_database_url_is_not_sent_to_the_server(void **state)
{
	char url[256], port[16];
	const char *colon;

	(void)state;
	harness_db_url("postgres", url, sizeof(url));
	colon = strrchr(url, ':');
	assert_non_null(colon);
	snprintf(port, sizeof(port), "%d", atoi(colon + 1));
	/* Where libpq would go with a bare database name: this cluster. */
	setenv("PGHOST", "127.0.0.1", 1);
	setenv("PGPORT", port, 1);
	setenv("PGUSER", "postgres", 1);
	{
		const char *args[] = {"migrate", "--database-url",
		                      "postgresql//idpd:S3cr3tPW@db.example/idpd", NULL};

		assert_int_not_equal(harness_idpd_run(args, "/tmp/idpd-test-mistyped.log"), 0);
	}
	unsetenv("PGHOST");
	unsetenv("PGPORT");
	unsetenv("PGUSER");
	assert_true(harness_file_contains("/tmp/idpd-test-mistyped.log", "does not parse"));
	assert_false(harness_file_contains("/tmp/idpd-test-mistyped.log", "S3cr3tPW"));
}

static void
concurrent_migrate_runs_apply_each_migration_once(void **state)
{
	char url[256], n1[32], n2[32];
	const char *top = getenv("IDPD_TEST_TOP");
	char dir[512];
	pid_t a, b;

	(void)state;
	snprintf(dir, sizeof(dir), "%s/migrations", top ? top : ".");
	assert_int_equal(harness_sql("postgres", "DROP DATABASE IF EXISTS t_life_mig"), 0);
	assert_int_equal(harness_sql("postgres", "CREATE DATABASE t_life_mig TEMPLATE template0"),
	                 0);
	harness_db_url("t_life_mig", url, sizeof(url));
	{
		const char *args[] = {"migrate", "--database-url", url, "--migrations", dir, NULL};

		a = harness_idpd_spawn(args, "/tmp/idpd-test-mig-a.log");
		b = harness_idpd_spawn(args, "/tmp/idpd-test-mig-b.log");
		assert_int_equal(harness_wait(a), 0);
		assert_int_equal(harness_wait(b), 0);
		/* A third run finds nothing to do. */
		assert_int_equal(harness_idpd_run(args, "/tmp/idpd-test-mig-c.log"), 0);
		assert_true(
		    harness_file_contains("/tmp/idpd-test-mig-c.log", "0 migration(s) applied"));
	}
	assert_int_equal(harness_sql_value("t_life_mig", "SELECT count(*) FROM schema_migrations",
	                                   n1, sizeof(n1)),
	                 0);
	assert_int_equal(harness_sql_value("t_life_mig",
	                                   "SELECT count(DISTINCT version) FROM schema_migrations",
	                                   n2, sizeof(n2)),
	                 0);
	assert_string_equal(n1, n2);
	assert_true(atoi(n1) >= 1);
}

static void
migrate_refuses_an_applied_migration_that_changed(void **state)
{
	char url[256], dir[512];
	const char *top = getenv("IDPD_TEST_TOP");

	(void)state;
	snprintf(dir, sizeof(dir), "%s/migrations", top ? top : ".");
	assert_int_equal(harness_db_create("t_life_changed"), 0);
	assert_int_equal(harness_sql("t_life_changed",
	                             "UPDATE schema_migrations SET checksum = 'tampered' "
	                             "WHERE version = 1"),
	                 0);
	harness_db_url("t_life_changed", url, sizeof(url));
	{
		const char *args[] = {"migrate", "--database-url", url, "--migrations", dir, NULL};

		assert_int_equal(harness_idpd_run(args, "/tmp/idpd-test-mig-d.log"), 1);
	}
	assert_true(harness_file_contains("/tmp/idpd-test-mig-d.log",
	                                  "0001_init.sql was changed after it was applied"));
}

/* Append text to p's configuration file and send SIGHUP. */
static void
append_and_reload(const struct idpd_proc *p, const char *text)
{
	FILE *f = fopen(p->config, "a");

	assert_non_null(f);
	assert_true(fputs(text, f) >= 0);
	assert_int_equal(fclose(f), 0);
	assert_int_equal(kill(p->pid, SIGHUP), 0);
}

static long
agents_status(const struct idpd_proc *p, const char *key)
{
	char url[256], auth[128];
	const char *h[] = {auth, NULL};
	struct http_resp r;
	long st;

	snprintf(url, sizeof(url), "%s/v1/agents", p->base);
	snprintf(auth, sizeof(auth), "Authorization: Bearer %s", key);
	assert_int_equal(harness_http("GET", url, h, NULL, 0, &r), 0);
	st = r.status;
	harness_resp_free(&r);
	return st;
}

/*
 * A reload applies all of a new configuration or none of it: a file one
 * component cannot read (an IdP's JWKS) stops the reload before an API key
 * added in the same edit, or any other change, takes effect.
 */
static void
a_reload_that_cannot_read_a_file_changes_nothing(void **state)
{
	struct idpd_proc p;
	char key[64], hash[80], block[512];

	(void)state;
	assert_int_equal(auth_key_generate(key, hash), IDP_OK);
	assert_int_equal(harness_db_create("t_life_reload"), 0);
	assert_int_equal(harness_idpd_start(&p, "t_life_reload", NULL, NULL), 0);
	snprintf(block, sizeof(block),
	         "\n[[api_keys]]\nname = \"late-admin\"\nhash = \"%s\"\nroles = [\"admin\"]\n"
	         "[[idp]]\nname = \"broken\"\nissuer = \"https://idp.broken\"\naudience = "
	         "\"idpd\"\njwks_file = \"/nonexistent/jwks.json\"\n",
	         hash);
	append_and_reload(&p, block);
	for (int i = 0; i < 100 && !harness_log_contains(&p, "nothing was changed"); i++)
		sleep_ms(50);
	assert_true(harness_log_contains(&p, "nothing was changed"));
	assert_int_equal(agents_status(&p, key), 401);
	assert_int_equal(harness_idpd_stop(&p, SIGTERM, 10000), 0);
}

/* The SHA-256 of path's contents, in hex, as config.reloaded names it. */
static void
file_sha256_hex(const char *path, char out[65])
{
	static char text[1 << 16];
	uint8_t h[IDP_SHA256_LEN];
	FILE *f = fopen(path, "rb");
	size_t n;

	assert_non_null(f);
	n = fread(text, 1, sizeof(text), f);
	assert_true(n < sizeof(text));
	fclose(f);
	assert_int_equal(idp_sha256(text, n, NULL, 0, h), IDP_OK);
	for (size_t i = 0; i < sizeof(h); i++)
		snprintf(out + 2 * i, 3, "%02x", h[i]);
}

/*
 * The config.reloaded events in db, oldest first, once there are at least
 * want of them (waiting up to 10 s): a new JSON array the caller frees.
 */
static json_t *
reload_events(const char *db, size_t want)
{
	static char text[65536];
	json_t *a = NULL;

	for (int i = 0; i < 100; i++) {
		json_decref(a);
		assert_int_equal(
		    harness_sql_value(db,
		                      "SELECT coalesce(json_agg(body::json ORDER BY id), "
		                      "'[]')::text FROM audit_events "
		                      "WHERE type = 'config.reloaded'",
		                      text, sizeof(text)),
		    0);
		a = json_loads(text, 0, NULL);
		assert_non_null(a);
		if (json_array_size(a) >= want)
			break;
		sleep_ms(100);
	}
	return a;
}

/* The section of a config.reloaded event's detail named name, or NULL. */
static json_t *
reload_section(json_t *ev, const char *name)
{
	json_t *sections = json_object_get(json_object_get(ev, "detail"), "sections"), *s;
	size_t i;

	json_array_foreach(sections, i, s)
	{
		if (strcmp(json_string_value(json_object_get(s, "section")), name) == 0)
			return s;
	}
	return NULL;
}

/*
 * A SIGHUP that makes a new admin API key and a new IdP live is audited
 * before they take effect: config.reloaded names the key (with its roles)
 * and the IdP (with its issuer), the file and its SHA-256, and who sent the
 * signal; never the key's hash.  New keys in the IdP's JWKS file with the
 * TOML unchanged are named too (field "jwks", with the file's hashes).  A
 * file that then does not parse is audited as a failed reload and changes
 * nothing.
 */
static void
a_reload_is_audited_naming_what_it_changes(void **state)
{
	struct idpd_proc p;
	char key[64], hash[80], key2[64], hash2[80], block[2048], sum[65];
	json_t *evs, *ev, *d, *s, *e;
	char *body;

	(void)state;
	assert_int_equal(auth_key_generate(key, hash), IDP_OK);
	assert_int_equal(auth_key_generate(key2, hash2), IDP_OK);
	assert_int_equal(harness_db_create("t_life_reload_audit"), 0);
	assert_int_equal(harness_idpd_start(&p, "t_life_reload_audit", NULL, NULL), 0);
	assert_int_equal(agents_status(&p, key), 401);
	snprintf(block, sizeof(block),
	         "\n[[api_keys]]\nname = \"late-admin\"\nhash = \"%s\"\nroles = [\"admin\"]\n%s",
	         hash, world_partner_toml());
	append_and_reload(&p, block);
	for (int i = 0; i < 100 && !harness_log_contains(&p, "reload: done"); i++)
		sleep_ms(50);
	assert_true(harness_log_contains(&p, "reload: done"));
	assert_int_equal(agents_status(&p, key), 200);

	evs = reload_events(p.db, 1);
	assert_int_equal(json_array_size(evs), 1);
	ev = json_array_get(evs, 0);
	d = json_object_get(ev, "detail");
	assert_string_equal(json_string_value(json_object_get(ev, "outcome")), "success");
	assert_int_equal(json_integer_value(json_object_get(ev, "severity")), 4);
	assert_string_equal(
	    json_string_value(json_object_get(json_object_get(ev, "actor"), "kind")), "system");
	assert_string_equal(
	    json_string_value(json_object_get(json_object_get(ev, "actor"), "name")), "sighup");
	assert_string_equal(json_string_value(json_object_get(d, "path")), p.config);
	file_sha256_hex(p.config, sum);
	assert_string_equal(json_string_value(json_object_get(d, "sha256")), sum);
	assert_non_null(json_object_get(d, "previous_sha256"));
	assert_string_not_equal(json_string_value(json_object_get(d, "previous_sha256")), sum);
	assert_int_equal(json_integer_value(json_object_get(json_object_get(d, "sent_by"), "pid")),
	                 (json_int_t)getpid());
	s = reload_section(ev, "api_keys");
	assert_non_null(s);
	assert_int_equal(json_array_size(json_object_get(s, "added")), 1);
	e = json_array_get(json_object_get(s, "added"), 0);
	assert_string_equal(json_string_value(json_object_get(e, "name")), "late-admin");
	assert_string_equal(json_string_value(json_array_get(json_object_get(e, "roles"), 0)),
	                    "admin");
	s = reload_section(ev, "idp");
	assert_non_null(s);
	e = json_array_get(json_object_get(s, "added"), 0);
	assert_string_equal(json_string_value(json_object_get(e, "name")), "partners");
	assert_string_equal(json_string_value(json_object_get(e, "issuer")), WORLD_PARTNER_ISS);
	body = json_dumps(ev, JSON_COMPACT);
	assert_null(strstr(body, hash + strlen("sha256:")));
	assert_null(strstr(body, "idpd_world_partner")); /* the JWKS file */
	free(body);
	json_decref(evs);

	/* One more key in the partners' JWKS file, the TOML untouched: a new
	 * trust anchor, named with the file's hashes before and after. */
	{
		char jwks[256], before[65], after[65];
		const char *at = strstr(world_partner_toml(), "jwks_file = \"");
		struct idp_jws_key *k2 = NULL;
		json_t *doc;

		assert_non_null(at);
		assert_int_equal(sscanf(at, "jwks_file = \"%255[^\"]\"", jwks), 1);
		file_sha256_hex(jwks, before);
		doc = json_load_file(jwks, 0, NULL);
		assert_non_null(doc);
		assert_int_equal(idp_jws_key_generate("partner-2", &k2, NULL), IDP_OK);
		assert_int_equal(
		    json_array_append_new(json_object_get(doc, "keys"), idp_jws_key_public_jwk(k2)),
		    0);
		assert_int_equal(json_dump_file(doc, jwks, JSON_COMPACT), 0);
		json_decref(doc);
		idp_jws_key_unref(k2);
		file_sha256_hex(jwks, after);
		assert_int_equal(kill(p.pid, SIGHUP), 0);
		evs = reload_events(p.db, 2);
		assert_int_equal(json_array_size(evs), 2);
		ev = json_array_get(evs, 1);
		assert_string_equal(json_string_value(json_object_get(ev, "outcome")), "success");
		s = reload_section(ev, "idp");
		assert_non_null(s);
		assert_int_equal(json_array_size(json_object_get(s, "changed")), 1);
		e = json_array_get(json_object_get(s, "changed"), 0);
		assert_string_equal(json_string_value(json_object_get(e, "name")), "partners");
		assert_int_equal(json_array_size(json_object_get(e, "fields")), 1);
		assert_string_equal(
		    json_string_value(json_array_get(json_object_get(e, "fields"), 0)), "jwks");
		assert_string_equal(json_string_value(json_object_get(e, "jwks_sha256")), after);
		assert_string_equal(json_string_value(json_object_get(e, "previous_jwks_sha256")),
		                    before);
		body = json_dumps(ev, JSON_COMPACT);
		assert_null(strstr(body, "idpd_world_partner"));
		free(body);
		json_decref(evs);
	}

	/* A file that does not parse: audited as refused, and nothing changes. */
	snprintf(block, sizeof(block),
	         "[[api_keys]]\nname = \"second\"\nhash = \"%s\"\nroles = [\"admin\"]\n"
	         "this is not toml\n",
	         hash2);
	append_and_reload(&p, block);
	for (int i = 0; i < 100 && !harness_log_contains(&p, "keeping the running configuration");
	     i++)
		sleep_ms(50);
	evs = reload_events(p.db, 3);
	assert_int_equal(json_array_size(evs), 3);
	ev = json_array_get(evs, 2);
	d = json_object_get(ev, "detail");
	assert_string_equal(json_string_value(json_object_get(ev, "outcome")), "failure");
	assert_string_equal(json_string_value(json_object_get(d, "stage")), "load");
	file_sha256_hex(p.config, sum);
	assert_string_equal(json_string_value(json_object_get(d, "sha256")), sum);
	assert_true(json_array_size(json_object_get(d, "errors")) >= 1);
	assert_non_null(strstr(json_string_value(json_array_get(json_object_get(d, "errors"), 0)),
	                       "idpd.toml:"));
	body = json_dumps(ev, JSON_COMPACT);
	assert_null(strstr(body, hash2 + strlen("sha256:")));
	free(body);
	json_decref(evs);
	assert_int_equal(agents_status(&p, key2), 401);
	assert_int_equal(agents_status(&p, key), 200);
	assert_int_equal(harness_idpd_stop(&p, SIGTERM, 10000), 0);
	(void)world_teardown(NULL);
}

static struct idpd_proc refuse_proc;

static int
refuse_teardown(void **state)
{
	(void)state;
	(void)harness_sql("t_life_reload_refuse", "DROP TRIGGER IF EXISTS refuse ON audit_events");
	if (refuse_proc.pid > 0)
		harness_idpd_stop(&refuse_proc, SIGKILL, 2000);
	return 0;
}

/*
 * A reload whose config.reloaded event cannot be written changes nothing:
 * an API key it would add stays unknown, and the log never claims a reload
 * that did not happen.
 */
static void
a_reload_the_audit_log_cannot_take_changes_nothing(void **state)
{
	struct idpd_proc *p = &refuse_proc;
	char key[64], hash[80], block[512];
	json_t *evs, *ev;

	(void)state;
	assert_int_equal(auth_key_generate(key, hash), IDP_OK);
	assert_int_equal(harness_db_create("t_life_reload_refuse"), 0);
	assert_int_equal(
	    harness_idpd_start(p, "t_life_reload_refuse", NULL, "[audit]\ntimeout = \"1s\"\n"), 0);
	assert_int_equal(harness_sql("t_life_reload_refuse",
	                             "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "
	                             "$$BEGIN RAISE EXCEPTION 'refused by the test'; END$$; "
	                             "CREATE TRIGGER refuse BEFORE INSERT ON audit_events "
	                             "FOR EACH ROW WHEN (NEW.type = 'config.reloaded') "
	                             "EXECUTE FUNCTION refuse()"),
	                 0);
	snprintf(block, sizeof(block),
	         "\n[[api_keys]]\nname = \"late-admin\"\nhash = \"%s\"\nroles = [\"admin\"]\n",
	         hash);
	append_and_reload(p, block);
	for (int i = 0; i < 100 && !harness_log_contains(p, "cannot take its config.reloaded"); i++)
		sleep_ms(50);
	assert_true(harness_log_contains(p, "cannot take its config.reloaded"));
	assert_int_equal(agents_status(p, key), 401);

	assert_int_equal(harness_sql("t_life_reload_refuse", "DROP TRIGGER refuse ON audit_events"),
	                 0);
	/* The refused event was cancelled, not written: once the log takes
	 * events again, the same file reloads and is the one reload audited. */
	assert_int_equal(kill(p->pid, SIGHUP), 0);
	for (int i = 0; i < 100 && !harness_log_contains(p, "reload: done"); i++)
		sleep_ms(50);
	assert_int_equal(agents_status(p, key), 200);
	evs = reload_events(p->db, 1);
	assert_int_equal(json_array_size(evs), 1);
	ev = json_array_get(evs, 0);
	assert_string_equal(json_string_value(json_object_get(ev, "outcome")), "success");
	assert_non_null(reload_section(ev, "api_keys"));
	json_decref(evs);
}

/*
 * A file that does not load because of a malformed line holding an API key
 * hash: neither the log, nor the config.reloaded event, nor check-config
 * quotes it, whether the line's key is secret, misspelt, or unreadable.
 */
static void
a_refused_reload_never_quotes_a_key_hash(void **state)
{
	struct idpd_proc p;
	char key[64], hash[80], key2[64], hash2[80], block[1024], out[512];
	const char *hex, *hex2;
	const char *args[] = {"check-config", NULL, NULL};
	json_t *evs;
	char *body;

	(void)state;
	assert_int_equal(auth_key_generate(key, hash), IDP_OK);
	assert_int_equal(auth_key_generate(key2, hash2), IDP_OK);
	hex = hash + strlen("sha256:");
	hex2 = hash2 + strlen("sha256:");
	assert_int_equal(harness_db_create("t_life_reload_leak"), 0);
	assert_int_equal(harness_idpd_start(&p, "t_life_reload_leak", NULL, NULL), 0);
	/* An unterminated hash, and a hash under a misspelt key with a bad escape. */
	snprintf(block, sizeof(block),
	         "\n[[api_keys]]\nname = \"leaky\"\nhash = \"%s\nhsah = \"%s\\q\"\n", hash, hash2);
	append_and_reload(&p, block);
	for (int i = 0; i < 100 && !harness_log_contains(&p, "keeping the running configuration");
	     i++)
		sleep_ms(50);
	assert_true(harness_log_contains(&p, "keeping the running configuration"));
	assert_true(harness_log_contains(&p, "unterminated string"));
	assert_false(harness_log_contains(&p, hex));
	assert_false(harness_log_contains(&p, hex2));
	evs = reload_events(p.db, 1);
	assert_int_equal(json_array_size(evs), 1);
	body = json_dumps(evs, JSON_COMPACT);
	assert_non_null(strstr(body, "unterminated string"));
	assert_null(strstr(body, hex));
	assert_null(strstr(body, hex2));
	free(body);
	json_decref(evs);

	snprintf(out, sizeof(out), "%s/check-config.out", p.dir);
	args[1] = p.config;
	assert_int_equal(harness_idpd_run(args, out), 1);
	assert_true(harness_file_contains(out, "unterminated string"));
	assert_false(harness_file_contains(out, hex));
	assert_false(harness_file_contains(out, hex2));
	assert_int_equal(harness_idpd_stop(&p, SIGTERM, 10000), 0);
}

static struct idpd_proc partial_proc;

static int
partial_teardown(void **state)
{
	(void)state;
	(void)harness_sql("t_life_reload_partial",
	                  "DROP TRIGGER IF EXISTS refuse_policy ON audit_events");
	if (partial_proc.pid > 0)
		harness_idpd_stop(&partial_proc, SIGKILL, 2000);
	return 0;
}

/*
 * A component that fails to apply a reload (the policy service, whose
 * policy.reloaded event the audit log refuses) keeps its state while the
 * others switch (a new API key works), and the running configuration stays
 * the one before: the next reload, of the same file, names that reload's
 * changes again rather than nothing.
 */
static void
a_reload_after_a_failed_apply_names_its_changes_again(void **state)
{
	struct idpd_proc *p = &partial_proc;
	char key[64], hash[80], block[512];
	json_t *evs, *ok, *failed, *again, *s;
	const char *before;

	(void)state;
	assert_int_equal(auth_key_generate(key, hash), IDP_OK);
	assert_int_equal(harness_db_create("t_life_reload_partial"), 0);
	assert_int_equal(
	    harness_idpd_start(p, "t_life_reload_partial", NULL, "[audit]\ntimeout = \"1s\"\n"), 0);
	assert_int_equal(harness_sql("t_life_reload_partial",
	                             "CREATE FUNCTION refuse_policy() RETURNS trigger LANGUAGE "
	                             "plpgsql AS $$BEGIN RAISE EXCEPTION 'refused by the test'; "
	                             "END$$; CREATE TRIGGER refuse_policy BEFORE INSERT ON "
	                             "audit_events FOR EACH ROW WHEN (NEW.type = "
	                             "'policy.reloaded') EXECUTE FUNCTION refuse_policy()"),
	                 0);
	snprintf(block, sizeof(block),
	         "\n[[api_keys]]\nname = \"late-admin\"\nhash = \"%s\"\nroles = [\"admin\"]\n",
	         hash);
	append_and_reload(p, block);
	for (int i = 0; i < 100 && !harness_log_contains(p, "components that failed keep"); i++)
		sleep_ms(50);
	assert_true(harness_log_contains(p, "components that failed keep"));
	assert_int_equal(agents_status(p, key), 200);
	evs = reload_events(p->db, 2);
	assert_int_equal(json_array_size(evs), 2);
	ok = json_array_get(evs, 0);
	failed = json_array_get(evs, 1);
	assert_string_equal(json_string_value(json_object_get(ok, "outcome")), "success");
	assert_non_null(reload_section(ok, "api_keys"));
	before =
	    json_string_value(json_object_get(json_object_get(ok, "detail"), "previous_sha256"));
	assert_non_null(before);
	assert_string_equal(json_string_value(json_object_get(failed, "outcome")), "failure");
	assert_string_equal(
	    json_string_value(json_object_get(json_object_get(failed, "detail"), "stage")),
	    "apply");
	assert_string_equal(json_string_value(json_object_get(json_object_get(failed, "detail"),
	                                                      "reload_event_id")),
	                    json_string_value(json_object_get(ok, "id")));
	assert_non_null(json_object_get(json_object_get(failed, "detail"), "running_sha256"));
	assert_string_equal(
	    json_string_value(json_object_get(json_object_get(failed, "detail"), "running_sha256")),
	    before);

	/* The audit log takes policy events again: the same file reloads, and
	 * its event is compared with the configuration before the failed one. */
	assert_int_equal(
	    harness_sql("t_life_reload_partial", "DROP TRIGGER refuse_policy ON audit_events"), 0);
	json_decref(evs);
	assert_int_equal(kill(p->pid, SIGHUP), 0);
	evs = reload_events(p->db, 3);
	assert_int_equal(json_array_size(evs), 3);
	ok = json_array_get(evs, 0);
	again = json_array_get(evs, 2);
	assert_string_equal(json_string_value(json_object_get(again, "outcome")), "success");
	assert_string_equal(
	    json_string_value(json_object_get(json_object_get(again, "detail"), "previous_sha256")),
	    json_string_value(json_object_get(json_object_get(ok, "detail"), "previous_sha256")));
	s = reload_section(again, "api_keys");
	assert_non_null(s);
	assert_string_equal(json_string_value(json_object_get(
	                        json_array_get(json_object_get(s, "added"), 0), "name")),
	                    "late-admin");
	json_decref(evs);
	for (int i = 0; i < 100 && !harness_log_contains(p, "reload: done"); i++)
		sleep_ms(50);
	assert_true(harness_log_contains(p, "reload: done"));
	assert_int_equal(agents_status(p, key), 200);
}

/* A .sql file not named as a migration is an error, not silently skipped. */
static void
migrate_refuses_a_misnamed_migration(void **state)
{
	char url[256], dir[] = "/tmp/idpd-test-migs-XXXXXX", path[512];
	FILE *f;

	(void)state;
	assert_non_null(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/0001_init.sql", dir);
	f = fopen(path, "w");
	assert_non_null(f);
	fputs("CREATE TABLE t1 (x int);\n", f);
	fclose(f);
	snprintf(path, sizeof(path), "%s/0002_Add_Table.sql", dir);
	f = fopen(path, "w");
	assert_non_null(f);
	fputs("CREATE TABLE t2 (x int);\n", f);
	fclose(f);
	assert_int_equal(harness_sql("postgres", "DROP DATABASE IF EXISTS t_life_misnamed"), 0);
	assert_int_equal(
	    harness_sql("postgres", "CREATE DATABASE t_life_misnamed TEMPLATE template0"), 0);
	harness_db_url("t_life_misnamed", url, sizeof(url));
	{
		const char *args[] = {"migrate", "--database-url", url, "--migrations", dir, NULL};

		assert_int_not_equal(harness_idpd_run(args, "/tmp/idpd-test-mig-e.log"), 0);
	}
	assert_true(harness_file_contains("/tmp/idpd-test-mig-e.log",
	                                  "0002_Add_Table.sql is not named as a migration"));
	unlink(path);
	snprintf(path, sizeof(path), "%s/0001_init.sql", dir);
	unlink(path);
	rmdir(dir);
}

static void
check_config_names_file_line_and_column(void **state)
{
	const char *path = "/tmp/idpd-test-bad.toml";
	const char *args[] = {"check-config", path, NULL};
	FILE *f = fopen(path, "w");

	(void)state;
	assert_non_null(f);
	fputs("[server]\nport = 8080\nprot = 1\n", f);
	fclose(f);
	assert_int_equal(harness_idpd_run(args, "/tmp/idpd-test-check.log"), 1);
	assert_true(harness_file_contains("/tmp/idpd-test-check.log", "idpd-test-bad.toml:3:1"));
	assert_true(harness_file_contains("/tmp/idpd-test-check.log", "prot"));
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(body_over_the_limit_is_a_413_problem),
	    cmocka_unit_test_teardown(
	        readyz_turns_503_while_postgres_is_down_and_recovers_without_restart,
	        outage_teardown),
	    cmocka_unit_test_teardown(a_silent_listener_session_is_noticed, stall_teardown),
	    cmocka_unit_test_teardown(readyz_turns_503_while_audit_events_cannot_commit,
	                              writer_teardown),
	    cmocka_unit_test(a_second_instance_on_the_same_port_refuses_to_start),
	    cmocka_unit_test(sigterm_drains_a_slow_in_flight_request),
	    cmocka_unit_test(sigterm_counts_the_requests_it_cuts_off),
	    cmocka_unit_test(sigterm_with_busy_keep_alive_clients_still_exits_cleanly),
	    cmocka_unit_test(serve_refuses_a_database_whose_schema_is_behind),
	    cmocka_unit_test(concurrent_migrate_runs_apply_each_migration_once),
	    cmocka_unit_test(a_mistyped_database_url_is_not_sent_to_the_server),
	    cmocka_unit_test(sigterm_while_waiting_for_the_migration_lock_stops_cleanly),
	    cmocka_unit_test(migrate_refuses_an_applied_migration_that_changed),
	    cmocka_unit_test(migrate_refuses_a_misnamed_migration),
	    cmocka_unit_test(a_reload_that_cannot_read_a_file_changes_nothing),
	    cmocka_unit_test(a_reload_is_audited_naming_what_it_changes),
	    cmocka_unit_test_teardown(a_reload_the_audit_log_cannot_take_changes_nothing,
	                              refuse_teardown),
	    cmocka_unit_test(check_config_names_file_line_and_column),
	    cmocka_unit_test(a_refused_reload_never_quotes_a_key_hash),
	    cmocka_unit_test_teardown(a_reload_after_a_failed_apply_names_its_changes_again,
	                              partial_teardown),
	};
	return cmocka_run_group_tests_name("lifecycle", tests, NULL, NULL);
}
