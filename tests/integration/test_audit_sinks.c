/*
 * Integration tests of SIEM shipping: events reach a file sink and a syslog
 * TCP receiver in order, a receiver that is down for a while gets every
 * event once it is back (and none twice in a normal run), a restarted
 * idpd resumes from its cursor instead of shipping everything again,
 * sinks are added, kept and removed by a reload, and a webhook receiver
 * gets the types it asked for until it takes them.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
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
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include "harness.h"
#include "idpd/auth.h"

static char reporter_key[64], reporter_hash[80];

static void
sleep_ms(int ms)
{
	struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};

	nanosleep(&ts, NULL);
}

static long
report(const struct idpd_proc *p, const char *task, char *id, size_t id_len)
{
	char url[256], auth[128], body[512];
	const char *h[] = {auth, "Content-Type: application/json", NULL};
	struct http_resp r;
	long st;

	snprintf(auth, sizeof(auth), "Authorization: Bearer %s", reporter_key);
	snprintf(url, sizeof(url), "%s/v1/audit/events", p->base);
	snprintf(body, sizeof(body),
	         "{\"type\":\"tool_invocation\",\"agent_id\":\"cost-agent\",\"task_id\":\"%s\","
	         "\"action\":{\"tool\":\"billing|read\",\"result\":\"ok=1\\\\done\"}}",
	         task);
	if (harness_http("POST", url, h, body, strlen(body), &r) != 0) {
		harness_resp_free(&r);
		return -1;
	}
	st = r.status;
	if (id != NULL && r.json != NULL)
		snprintf(id, id_len, "%s", json_string_value(json_object_get(r.json, "id")));
	harness_resp_free(&r);
	return st;
}

/* Lines of path that mention s: idpd ships its own events (key
 * generation, say) to the same sinks, so tests count theirs. */
static int
count_lines(const char *path, const char *s)
{
	FILE *f = fopen(path, "r");
	char line[8192];
	int n = 0;

	if (f == NULL)
		return 0;
	while (fgets(line, sizeof(line), f) != NULL)
		n += strstr(line, s) != NULL;
	fclose(f);
	return n;
}

/* The value of metric{sink="sink"} on /metrics. */
static double
sink_metric(const struct idpd_proc *p, const char *metric, const char *sink)
{
	char url[256], want[160];
	struct http_resp r;
	const char *at;
	double v;

	snprintf(url, sizeof(url), "%s/metrics", p->base);
	assert_int_equal(harness_http("GET", url, NULL, NULL, 0, &r), 0);
	snprintf(want, sizeof(want), "%s{sink=\"%s\"} ", metric, sink);
	at = strstr(r.body, want);
	assert_non_null(at);
	v = strtod(at + strlen(want), NULL);
	harness_resp_free(&r);
	return v;
}

static double
sink_lag(const struct idpd_proc *p, const char *sink)
{
	return sink_metric(p, "idpd_audit_sink_lag_seconds", sink);
}

/*
 * Retention empties old chains but keeps their audit_chains rows.  A sink
 * added later has no cursor on them: it must step past them, not ask for
 * them forever (with 64 of them, it shipped nothing at all).
 */
static void
a_new_sink_steps_past_chains_retention_emptied(void **state)
{
	struct idpd_proc p;
	char extra[1024], id[80], path[] = "/tmp/idpd-sink-late-XXXXXX";
	int fd, i;

	(void)state;
	assert_int_equal(auth_key_generate(reporter_key, reporter_hash), IDP_OK);
	fd = mkstemp(path);
	close(fd);
	assert_int_equal(harness_db_create("t_sink_emptied"), 0);
	assert_int_equal(harness_idpd_start(&p, "t_sink_emptied", NULL, NULL), 0);
	assert_int_equal(harness_idpd_stop(&p, SIGTERM, 10000), 0);
	assert_int_equal(harness_sql("t_sink_emptied",
	                             "INSERT INTO audit_chains (writer_id, last_seq, updated_at) "
	                             "SELECT 'emptied-' || g, 7, now() - interval '400 days' "
	                             "FROM generate_series(1, 70) g"),
	                 0);
	snprintf(extra, sizeof(extra),
	         "[audit]\nship_interval = \"50ms\"\n"
	         "[[audit.sinks]]\nname = \"late\"\ntype = \"file\"\nformat = \"json\"\n"
	         "path = \"%s\"\n"
	         "[[api_keys]]\nname = \"reporter\"\nhash = \"%s\"\nroles = [\"introspector\"]\n",
	         path, reporter_hash);
	assert_int_equal(harness_idpd_start(&p, "t_sink_emptied", NULL, extra), 0);
	assert_int_equal(report(&p, "task-late", id, sizeof(id)), 201);
	for (i = 0; i < 200 && count_lines(path, "task-late") < 1; i++)
		sleep_ms(50);
	assert_int_equal(count_lines(path, "task-late"), 1);
	assert_int_equal(
	    harness_sql("t_sink_emptied",
	                "DO $$ BEGIN IF (SELECT count(*) FROM audit_sink_cursors WHERE "
	                "sink = 'late' AND writer_id LIKE 'emptied-%' AND last_seq = 7) "
	                "<> 70 THEN RAISE EXCEPTION 'cursors'; END IF; END $$"),
	    0);
	/* Never silently: the rows it never got are counted and logged. */
	{
		char url[256];
		struct http_resp r;

		snprintf(url, sizeof(url), "%s/metrics", p.base);
		assert_int_equal(harness_http("GET", url, NULL, NULL, 0, &r), 0);
		assert_non_null(
		    strstr(r.body, "idpd_audit_sink_skipped_total{sink=\"late\"} 490\n"));
		/* The one instance, so the one shipping. */
		assert_non_null(strstr(r.body, "idpd_audit_sink_active{sink=\"late\"} 1\n"));
		harness_resp_free(&r);
		assert_true(harness_log_contains(&p, "emptied-1/1..7 were deleted before this sink "
		                                     "shipped them"));
	}
	assert_int_equal(harness_idpd_stop(&p, SIGTERM, 10000), 0);
	unlink(path);
}

/*
 * Retention run by an instance without sinks keeps what another
 * instance's sink has not shipped: every sink whose cursor moved within
 * the retention period holds it back, configured here or not.
 */
static void
retention_keeps_what_another_instances_sink_has_not_shipped(void **state)
{
	struct idpd_proc a, b;
	char extra[1024], maint[64], maint_hash[80], v[32], url[256];
	char path[] = "/tmp/idpd-sink-other-XXXXXX";
	struct http_resp r;
	char auth[128];
	long total;
	int fd, i;

	(void)state;
	assert_int_equal(auth_key_generate(reporter_key, reporter_hash), IDP_OK);
	assert_int_equal(auth_key_generate(maint, maint_hash), IDP_OK);
	fd = mkstemp(path);
	close(fd);
	assert_int_equal(harness_db_create("t_sink_other"), 0);
	snprintf(extra, sizeof(extra),
	         "[audit]\nship_interval = \"50ms\"\n"
	         "[[audit.sinks]]\nname = \"siem-a\"\ntype = \"file\"\nformat = \"json\"\n"
	         "path = \"%s\"\n"
	         "[[api_keys]]\nname = \"reporter\"\nhash = \"%s\"\nroles = [\"introspector\"]\n",
	         path, reporter_hash);
	assert_int_equal(harness_idpd_start(&a, "t_sink_other", NULL, extra), 0);
	for (i = 0; i < 4; i++)
		assert_int_equal(report(&a, "task-other", NULL, 0), 201);
	for (i = 0; i < 200 && count_lines(path, "task-other") < 4; i++)
		sleep_ms(50);
	assert_int_equal(count_lines(path, "task-other"), 4);
	assert_int_equal(harness_idpd_stop(&a, SIGTERM, 10000), 0);
	/* As if siem-a's receiver had been down: its cursor back at seq 1, and
	 * every event old enough for retention. */
	assert_int_equal(
	    harness_sql("t_sink_other",
	                "UPDATE audit_sink_cursors SET last_seq = 1 WHERE sink = "
	                "'siem-a'; UPDATE audit_events SET ts = ts - interval '2 days'"),
	    0);
	assert_int_equal(
	    harness_sql_value("t_sink_other", "SELECT count(*) FROM audit_events", v, sizeof(v)),
	    0);
	total = atol(v);
	/* Instance b has no sinks and keeps a day. */
	snprintf(extra, sizeof(extra),
	         "[audit]\nretention = \"1d\"\n"
	         "[[api_keys]]\nname = \"cron\"\nhash = \"%s\"\nroles = [\"maintenance\"]\n",
	         maint_hash);
	assert_int_equal(harness_idpd_start(&b, "t_sink_other", NULL, extra), 0);
	snprintf(auth, sizeof(auth), "Authorization: Bearer %s", maint);
	snprintf(url, sizeof(url), "%s/v1/maintenance/cleanup", b.base);
	{
		const char *hh[] = {auth, NULL};

		assert_int_equal(harness_http("POST", url, hh, NULL, 0, &r), 0);
	}
	assert_int_equal(r.status, 200);
	harness_resp_free(&r);
	/* Only the chain's first row, the one siem-a shipped, went. */
	assert_int_equal(harness_sql_value("t_sink_other",
	                                   "SELECT count(*) FROM audit_events WHERE ts < now() - "
	                                   "interval '1 day'",
	                                   v, sizeof(v)),
	                 0);
	assert_int_equal(atol(v), total - 1);
	assert_int_equal(harness_idpd_stop(&b, SIGTERM, 10000), 0);
	unlink(path);
}

/*
 * Create the two files json_path and cef_path (mkstemp templates) and put
 * in extra the [audit] table with a JSON file sink "json-file" and a CEF
 * file sink "cef-file" writing to them, shipping every 50 ms.
 */
static void
two_file_sinks(char *extra, size_t len, char *json_path, char *cef_path)
{
	int fd;

	fd = mkstemp(json_path);
	assert_true(fd >= 0);
	close(fd);
	fd = mkstemp(cef_path);
	assert_true(fd >= 0);
	close(fd);
	snprintf(extra, len,
	         "[audit]\nship_interval = \"50ms\"\n"
	         "[[audit.sinks]]\nname = \"json-file\"\ntype = \"file\"\nformat = \"json\"\n"
	         "path = \"%s\"\n"
	         "[[audit.sinks]]\nname = \"cef-file\"\ntype = \"file\"\nformat = \"cef\"\n"
	         "path = \"%s\"\n",
	         json_path, cef_path);
}

static void
file_sinks_receive_every_event_in_order_in_each_format(void **state)
{
	struct idpd_proc p;
	char extra[2048], ids[5][80], json_path[] = "/tmp/idpd-sink-json-XXXXXX",
	                              cef_path[] = "/tmp/idpd-sink-cef-XXXXXX";
	char line[8192];
	FILE *f;
	int i;

	(void)state;
	assert_int_equal(auth_key_generate(reporter_key, reporter_hash), IDP_OK);
	two_file_sinks(extra, sizeof(extra), json_path, cef_path);
	snprintf(extra + strlen(extra), sizeof(extra) - strlen(extra),
	         "[[api_keys]]\nname = \"reporter\"\nhash = \"%s\"\nroles = [\"introspector\"]\n",
	         reporter_hash);
	assert_int_equal(harness_db_create("t_sink_file"), 0);
	assert_int_equal(harness_idpd_start(&p, "t_sink_file", NULL, extra), 0);
	for (i = 0; i < 5; i++)
		assert_int_equal(report(&p, "task-file", ids[i], sizeof(ids[i])), 201);
	for (i = 0; i < 100 && (count_lines(json_path, "task-file") < 5 ||
	                        count_lines(cef_path, "task-file") < 5);
	     i++)
		sleep_ms(50);
	assert_int_equal(count_lines(json_path, "task-file"), 5);
	assert_int_equal(count_lines(cef_path, "task-file"), 5);

	f = fopen(json_path, "r");
	for (i = 0; fgets(line, sizeof(line), f) != NULL;) {
		json_t *j = json_loads(line, 0, NULL);

		assert_non_null(j);
		if (strstr(line, "task-file") != NULL)
			assert_string_equal(json_string_value(json_object_get(j, "id")), ids[i++]);
		json_decref(j);
	}
	fclose(f);
	f = fopen(cef_path, "r");
	for (i = 0; fgets(line, sizeof(line), f) != NULL;) {
		assert_int_equal(strncmp(line, "CEF:0|idpd|idpd|", 16), 0);
		if (strstr(line, "task-file") == NULL)
			continue;
		assert_non_null(strstr(line, ids[i++]));
		/* The extension escapes '=' and '\\' in values. */
		assert_non_null(strstr(line, "ok\\=1\\\\done"));
	}
	fclose(f);

	/* A restart resumes from the cursor: nothing is shipped twice... */
	assert_int_equal(harness_idpd_stop(&p, SIGTERM, 10000), 0);
	assert_int_equal(harness_idpd_start(&p, "t_sink_file", NULL, extra), 0);
	sleep_ms(500);
	assert_int_equal(count_lines(json_path, "task-file"), 5);
	/* ...and what is new still goes out. */
	assert_int_equal(report(&p, "task-file", ids[0], sizeof(ids[0])), 201);
	for (i = 0; i < 100 && count_lines(json_path, "task-file") < 6; i++)
		sleep_ms(50);
	assert_int_equal(count_lines(json_path, "task-file"), 6);
	assert_int_equal(harness_idpd_stop(&p, SIGTERM, 10000), 0);
	unlink(json_path);
	unlink(cef_path);
}

/* ---- a syslog receiver that comes and goes ---- */

struct receiver {
	int port;
	int listen_fd;
	char *data;
	size_t len;
	pthread_t th;
	volatile int stop;
};

static void *
receive(void *arg)
{
	struct receiver *rc = arg;

	while (!rc->stop) {
		struct pollfd p = {rc->listen_fd, POLLIN, 0};
		int c;

		if (poll(&p, 1, 100) <= 0)
			continue;
		c = accept(rc->listen_fd, NULL, NULL);
		if (c < 0)
			continue;
		while (!rc->stop) {
			struct pollfd q = {c, POLLIN, 0};
			char buf[8192];
			ssize_t n;

			if (poll(&q, 1, 100) <= 0)
				continue;
			n = read(c, buf, sizeof(buf));
			if (n <= 0)
				break;
			rc->data = realloc(rc->data, rc->len + (size_t)n + 1);
			memcpy(rc->data + rc->len, buf, (size_t)n);
			rc->len += (size_t)n;
			rc->data[rc->len] = '\0';
		}
		close(c);
	}
	return NULL;
}

static int
listen_on(int port)
{
	struct sockaddr_in sa;
	int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;

	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	memset(&sa, 0, sizeof(sa));
	sa.sin_family = AF_INET;
	sa.sin_port = htons((uint16_t)port);
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0 || listen(fd, 4) != 0) {
		close(fd);
		return -1;
	}
	return fd;
}

/* Count octet-counted frames ("LEN SP MSG") of data holding s; -1 on a broken frame. */
static int
frames_in(const char *data, size_t data_len, const char *s)
{
	size_t off = 0;
	int n = 0;

	while (off < data_len) {
		char *end;
		unsigned long len = strtoul(data + off, &end, 10);

		if (end == data + off || *end != ' ')
			return -1;
		off = (size_t)(end - data) + 1;
		if (off + len > data_len)
			break; /* a frame still arriving */
		if (s == NULL || memmem(data + off, len, s, strlen(s)) != NULL)
			n++;
		off += len;
	}
	return n;
}

static int
frames_with(const struct receiver *rc, const char *s)
{
	return frames_in(rc->data, rc->len, s);
}

static long
sink_skipped(const struct idpd_proc *p, const char *sink)
{
	return (long)sink_metric(p, "idpd_audit_sink_skipped_total", sink);
}

/*
 * Rows deleted before a sink shipped them are counted once, when the sink
 * moves past them, however many times it retried before that.
 */
static void
a_gap_is_counted_once_across_retries(void **state)
{
	struct idpd_proc p;
	struct receiver rc;
	char extra[2048];
	int i;

	(void)state;
	memset(&rc, 0, sizeof(rc));
	assert_int_equal(auth_key_generate(reporter_key, reporter_hash), IDP_OK);
	assert_int_equal(harness_db_create("t_sink_gap"), 0);
	snprintf(extra, sizeof(extra),
	         "[[api_keys]]\nname = \"reporter\"\nhash = \"%s\"\nroles = [\"introspector\"]\n",
	         reporter_hash);
	assert_int_equal(harness_idpd_start(&p, "t_sink_gap", NULL, extra), 0);
	for (i = 0; i < 5; i++)
		assert_int_equal(report(&p, "task-gap", NULL, 0), 201);
	assert_int_equal(harness_idpd_stop(&p, SIGTERM, 10000), 0);
	assert_int_equal(harness_sql("t_sink_gap", "DELETE FROM audit_events WHERE seq <= 2"), 0);

	rc.port = harness_free_port();
	snprintf(extra, sizeof(extra),
	         "[audit]\nship_interval = \"50ms\"\n"
	         "[[audit.sinks]]\nname = \"gap\"\ntype = \"syslog\"\nformat = \"json\"\n"
	         "address = \"127.0.0.1:%d\"\nprotocol = \"tcp\"\nconnect_timeout = \"200ms\"\n"
	         "[[api_keys]]\nname = \"reporter\"\nhash = \"%s\"\nroles = [\"introspector\"]\n",
	         rc.port, reporter_hash);
	assert_int_equal(harness_idpd_start(&p, "t_sink_gap", NULL, extra), 0);
	/* The receiver is down: several attempts, nothing passed, nothing counted. */
	sleep_ms(1500);
	assert_int_equal(sink_skipped(&p, "gap"), 0);
	rc.listen_fd = listen_on(rc.port);
	assert_true(rc.listen_fd >= 0);
	pthread_create(&rc.th, NULL, receive, &rc);
	for (int w = 0; w < 200 && sink_skipped(&p, "gap") < 2; w++)
		sleep_ms(50);
	sleep_ms(300);
	assert_int_equal(sink_skipped(&p, "gap"), 2);
	assert_true(frames_with(&rc, "task-gap") >= 3);
	assert_int_equal(harness_idpd_stop(&p, SIGTERM, 10000), 0);
	rc.stop = 1;
	pthread_join(rc.th, NULL);
	close(rc.listen_fd);
	free(rc.data);
}

static void
syslog_receiver_down_for_a_while_gets_every_event_once(void **state)
{
	struct idpd_proc p;
	struct receiver rc;
	char extra[2048], ids[20][80];
	int i;

	(void)state;
	memset(&rc, 0, sizeof(rc));
	assert_int_equal(auth_key_generate(reporter_key, reporter_hash), IDP_OK);
	rc.port = harness_free_port();
	snprintf(extra, sizeof(extra),
	         "[audit]\nship_interval = \"50ms\"\n"
	         "[[audit.sinks]]\nname = \"siem\"\ntype = \"syslog\"\nformat = \"leef\"\n"
	         "address = \"127.0.0.1:%d\"\nprotocol = \"tcp\"\nconnect_timeout = \"200ms\"\n"
	         "[[api_keys]]\nname = \"reporter\"\nhash = \"%s\"\nroles = [\"introspector\"]\n",
	         rc.port, reporter_hash);
	assert_int_equal(harness_db_create("t_sink_syslog"), 0);
	assert_int_equal(harness_idpd_start(&p, "t_sink_syslog", NULL, extra), 0);

	/* The SIEM is down: events are committed and wait in the outbox, and
	 * the sink says it is behind. */
	for (i = 0; i < 10; i++)
		assert_int_equal(report(&p, "task-syslog", ids[i], sizeof(ids[i])), 201);
	sleep_ms(600);
	assert_true(sink_lag(&p, "siem") > 0.1);

	/* It comes back. */
	rc.listen_fd = listen_on(rc.port);
	assert_true(rc.listen_fd >= 0);
	pthread_create(&rc.th, NULL, receive, &rc);
	for (; i < 20; i++)
		assert_int_equal(report(&p, "task-syslog", ids[i], sizeof(ids[i])), 201);
	for (int w = 0; w < 200 && frames_with(&rc, "task-syslog") < 20; w++)
		sleep_ms(50);
	assert_int_equal(frames_with(&rc, "task-syslog"), 20);
	for (i = 0; i < 20; i++)
		assert_int_equal(frames_with(&rc, ids[i]), 1);
	/* LEEF 2.0 with the tab delimiter declared. */
	assert_non_null(strstr(rc.data, "LEEF:2.0|idpd|idpd|"));
	/* Caught up: no lag, whatever errors it had on the way. */
	for (int w = 0; w < 100 && sink_lag(&p, "siem") > 0; w++)
		sleep_ms(50);
	assert_true(sink_lag(&p, "siem") == 0);

	assert_int_equal(harness_idpd_stop(&p, SIGTERM, 10000), 0);
	rc.stop = 1;
	pthread_join(rc.th, NULL);
	close(rc.listen_fd);
	free(rc.data);
}

/* Replace old with new in p's configuration file and send SIGHUP. */
static void
reconfigure(const struct idpd_proc *p, const char *old, const char *new)
{
	char *text, *at;
	size_t n;
	FILE *f = fopen(p->config, "r");

	assert_non_null(f);
	text = calloc(1, 65536);
	assert_non_null(text);
	n = fread(text, 1, 65535, f);
	fclose(f);
	text[n] = '\0';
	at = strstr(text, old);
	assert_non_null(at);
	f = fopen(p->config, "w");
	assert_non_null(f);
	fprintf(f, "%.*s%s%s", (int)(at - text), text, new, at + strlen(old));
	fclose(f);
	free(text);
	assert_int_equal(kill(p->pid, SIGHUP), 0);
}

/* Wait (5 s at most) until path has n lines mentioning s; the count then. */
static int
wait_lines(const char *path, const char *s, int n)
{
	for (int i = 0; i < 100 && count_lines(path, s) < n; i++)
		sleep_ms(50);
	return count_lines(path, s);
}

static bool
wait_log(const struct idpd_proc *p, const char *s)
{
	for (int i = 0; i < 100 && !harness_log_contains(p, s); i++)
		sleep_ms(50);
	return harness_log_contains(p, s);
}

/*
 * A receiver that takes the connection and never reads holds a shipper in
 * its send or flush wait for up to send_timeout (and more, were it to
 * trickle): a reload removing that sink must not wait for it.
 */
static void
a_reload_does_not_wait_for_a_stalled_receiver(void **state)
{
	struct idpd_proc p;
	char extra[2048], sink[512];
	int lfd, cfd = -1, small = 4096, i;
	struct timespec t0, t1;

	(void)state;
	assert_int_equal(auth_key_generate(reporter_key, reporter_hash), IDP_OK);
	{
		int port = harness_free_port();
		struct sockaddr_in sa;
		int one = 1;

		lfd = socket(AF_INET, SOCK_STREAM, 0);
		setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
		setsockopt(lfd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
		memset(&sa, 0, sizeof(sa));
		sa.sin_family = AF_INET;
		sa.sin_port = htons((uint16_t)port);
		sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		assert_int_equal(bind(lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
		assert_int_equal(listen(lfd, 4), 0);
		snprintf(
		    sink, sizeof(sink),
		    "[[audit.sinks]]\nname = \"stalled\"\ntype = \"syslog\"\nformat = \"json\"\n"
		    "address = \"127.0.0.1:%d\"\nprotocol = \"tcp\"\nsend_timeout = \"1m\"\n",
		    port);
	}
	snprintf(extra, sizeof(extra),
	         "[[api_keys]]\nname = \"reporter\"\nhash = \"%s\"\nroles = [\"introspector\"]\n"
	         "[audit]\nship_interval = \"50ms\"\n%s",
	         reporter_hash, sink);
	assert_int_equal(harness_db_create("t_sink_stalled"), 0);
	assert_int_equal(harness_idpd_start(&p, "t_sink_stalled", NULL, extra), 0);
	for (i = 0; i < 400; i++)
		assert_int_equal(report(&p, "task-stalled", NULL, 0), 201);
	/* Taken, never read: the window closes, the shipper waits. */
	for (i = 0; i < 100 && cfd < 0; i++) {
		struct pollfd pf = {lfd, POLLIN, 0};

		if (poll(&pf, 1, 50) > 0)
			cfd = accept(lfd, NULL, NULL);
	}
	assert_true(cfd >= 0);
	sleep_ms(1000);
	clock_gettime(CLOCK_MONOTONIC, &t0);
	reconfigure(&p, sink, "");
	assert_true(wait_log(&p, "audit sinks: 0 kept, 1 stopped, 0 started"));
	clock_gettime(CLOCK_MONOTONIC, &t1);
	assert_true(t1.tv_sec - t0.tv_sec < 5);
	assert_int_equal(harness_idpd_stop(&p, SIGTERM, 10000), 0);
	close(cfd);
	close(lfd);
}

/*
 * Sinks change with a reload: a sink added ships everything from its own
 * cursor, an unchanged one goes on without a pause or a duplicate, a
 * removed one stops; a reload naming an unusable sink changes nothing.
 */
static void
sinks_change_on_reload(void **state)
{
	struct idpd_proc p;
	char a_path[] = "/tmp/idpd-sink-a-XXXXXX", b_path[] = "/tmp/idpd-sink-b-XXXXXX";
	char keys[256], sink_a[512], sink_b[512], bad[512], extra[2048];
	struct http_resp r;
	char url[256];
	int fd;

	(void)state;
	assert_int_equal(auth_key_generate(reporter_key, reporter_hash), IDP_OK);
	fd = mkstemp(a_path);
	close(fd);
	fd = mkstemp(b_path);
	close(fd);
	snprintf(keys, sizeof(keys),
	         "[[api_keys]]\nname = \"reporter\"\nhash = \"%s\"\nroles = [\"introspector\"]\n",
	         reporter_hash);
	snprintf(sink_a, sizeof(sink_a),
	         "[[audit.sinks]]\nname = \"a\"\ntype = \"file\"\npath = \"%s\"\n", a_path);
	snprintf(sink_b, sizeof(sink_b),
	         "[[audit.sinks]]\nname = \"b\"\ntype = \"file\"\nformat = \"cef\"\n"
	         "path = \"%s\"\n",
	         b_path);
	snprintf(bad, sizeof(bad),
	         "[[audit.sinks]]\nname = \"c\"\ntype = \"syslog\"\naddress = \"no-port\"\n");
	snprintf(extra, sizeof(extra), "%s[audit]\nship_interval = \"50ms\"\n%s", keys, sink_a);
	assert_int_equal(harness_db_create("t_sink_reload"), 0);
	assert_int_equal(harness_idpd_start(&p, "t_sink_reload", NULL, extra), 0);
	for (int i = 0; i < 3; i++)
		assert_int_equal(report(&p, "task-reload", NULL, 0), 201);
	assert_int_equal(wait_lines(a_path, "task-reload", 3), 3);

	/* database.url is restart-only: a file naming another database changes
	 * nothing until a restart, not even for a sink added meanwhile. */
	reconfigure(&p, "/t_sink_reload\"", "/t_sink_elsewhere\"");
	assert_true(wait_log(&p, "database.url"));
	/* b added: it ships all three from its own cursor; a is kept. */
	{
		char both[1100];

		snprintf(both, sizeof(both), "%s%s", sink_a, sink_b);
		reconfigure(&p, sink_a, both);
	}
	assert_true(wait_log(&p, "audit sinks: 1 kept, 0 stopped, 1 started"));
	assert_int_equal(wait_lines(b_path, "task-reload", 3), 3);
	for (int i = 0; i < 2; i++)
		assert_int_equal(report(&p, "task-reload", NULL, 0), 201);
	assert_int_equal(wait_lines(b_path, "task-reload", 5), 5);
	assert_int_equal(wait_lines(a_path, "task-reload", 5), 5);

	/* a removed: it stops where it got to, b goes on. */
	reconfigure(&p, sink_a, "");
	assert_true(wait_log(&p, "audit sinks: 1 kept, 1 stopped, 0 started"));
	assert_int_equal(report(&p, "task-reload", NULL, 0), 201);
	assert_int_equal(wait_lines(b_path, "task-reload", 6), 6);
	sleep_ms(200);
	assert_int_equal(count_lines(a_path, "task-reload"), 5);
	snprintf(url, sizeof(url), "%s/metrics", p.base);
	assert_int_equal(harness_http("GET", url, NULL, NULL, 0, &r), 0);
	assert_non_null(strstr(r.body, "idpd_audit_sink_shipped_total{sink=\"b\"}"));
	assert_null(strstr(r.body, "sink=\"a\""));
	harness_resp_free(&r);

	/* b changed (now JSON): it goes on from its cursor, nothing is shipped twice. */
	{
		char b_json[512];

		snprintf(b_json, sizeof(b_json),
		         "[[audit.sinks]]\nname = \"b\"\ntype = \"file\"\nformat = \"json\"\n"
		         "path = \"%s\"\n",
		         b_path);
		reconfigure(&p, sink_b, b_json);
		assert_true(wait_log(&p, "audit sinks: 0 kept, 1 stopped, 1 started"));
		assert_int_equal(report(&p, "task-reload", NULL, 0), 201);
		assert_int_equal(wait_lines(b_path, "task-reload", 7), 7);
		sleep_ms(200);
		assert_int_equal(count_lines(b_path, "task-reload"), 7);
		assert_int_equal(count_lines(b_path, "\"task_id\":\"task-reload\""), 1);
		snprintf(sink_b, sizeof(sink_b), "%s", b_json);
	}

	/* A restart-only key changed with it: the reload says so. */
	reconfigure(&p, "ship_interval = \"50ms\"\n",
	            "ship_interval = \"50ms\"\nqueue_max = 777\n");
	assert_true(wait_log(&p, "audit.queue_max: changed; takes effect after a restart"));

	/* An unusable sink in the new file: nothing changes, b still ships,
	 * and an API key added with it is not taken either (the sinks are
	 * checked before any component applies the file). */
	{
		char late_key[64], late_hash[80], saved[64];

		assert_int_equal(auth_key_generate(late_key, late_hash), IDP_OK);
		snprintf(extra, sizeof(extra),
		         "%s%s[[api_keys]]\nname = \"late\"\nhash = \"%s\"\n"
		         "roles = [\"introspector\"]\n",
		         sink_b, bad, late_hash);
		reconfigure(&p, sink_b, extra);
		assert_true(wait_log(&p, "audit sinks unchanged"));
		memcpy(saved, reporter_key, sizeof(saved));
		memcpy(reporter_key, late_key, sizeof(late_key));
		assert_int_equal(report(&p, "task-late", NULL, 0), 401);
		memcpy(reporter_key, saved, sizeof(saved));
		assert_true(wait_log(&p, "nothing was changed"));
	}
	/* queue_max still differs from what idpd started with: said again. */
	assert_int_equal(count_lines(p.log, "audit.queue_max: changed"), 2);
	assert_int_equal(report(&p, "task-reload", NULL, 0), 201);
	assert_int_equal(wait_lines(b_path, "task-reload", 8), 8);
	assert_int_equal(count_lines(a_path, "task-reload"), 5);
	assert_int_equal(harness_idpd_stop(&p, SIGTERM, 10000), 0);
	unlink(a_path);
	unlink(b_path);
}

/* path's lines that mention s, each into out[] (NUL-terminated, newline cut); how many. */
static int
lines_with(const char *path, const char *s, char out[][1024], int max)
{
	FILE *f = fopen(path, "r");
	char line[1024];
	int n = 0;

	assert_non_null(f);
	while (n < max && fgets(line, sizeof(line), f) != NULL) {
		if (strstr(line, s) == NULL)
			continue;
		line[strcspn(line, "\n")] = '\0';
		memcpy(out[n++], line, sizeof(line));
	}
	fclose(f);
	return n;
}

/*
 * During a rolling upgrade a newer idpd writes rows of types, and with
 * members, this version does not know; its sinks ship them (a JSON sink
 * as written, unknown members included) instead of stepping past them.
 * A row that does not parse at all is still skipped, logged and counted.
 */
static void
rows_a_newer_version_wrote_are_shipped(void **state)
{
	static const char newer[] =
	    "{\"future\":{\"depth\":2},\"severity\":6,\"task_id\":\"task-newer\","
	    "\"timestamp\":\"2026-12-05T10:00:00.000Z\",\"type\":\"session.resumed\"}";
	static const char known[] =
	    "{\"agent_id\":\"planner\",\"scope_hash\":\"ab12\",\"severity\":2,\"task_id\":"
	    "\"task-newer\",\"timestamp\":\"2026-12-05T10:00:00.001Z\",\"type\":\"token.issued\"}";
	static const char broken[] =
	    "{\"outcome\":\"maybe\",\"task_id\":\"task-newer\",\"type\":\"token.issued\"}";
	struct idpd_proc p;
	struct http_resp r;
	char extra[1024], sql[2048], url[256], got[4][1024];
	char json_path[] = "/tmp/idpd-sink-newer-json-XXXXXX",
	     cef_path[] = "/tmp/idpd-sink-newer-cef-XXXXXX";

	(void)state;
	two_file_sinks(extra, sizeof(extra), json_path, cef_path);
	assert_int_equal(harness_db_create("t_sink_newer"), 0);
	assert_int_equal(harness_idpd_start(&p, "t_sink_newer", NULL, extra), 0);
	/* One statement string, one transaction: the chain's rows and its
	 * audit_chains row commit together, as a writer's do. */
	snprintf(sql, sizeof(sql),
	         "INSERT INTO audit_events (event_id, writer_id, seq, ts, type, task_id, severity, "
	         "body, prev_hash, hash) SELECT 'e' || n, 'newer-1', n, now(), t, 'task-newer', 5, "
	         "b, decode(repeat('00', 32), 'hex'), decode(repeat('00', 32), 'hex') FROM (VALUES "
	         "(1, 'session.resumed', '%s'), (2, 'token.issued', '%s'), (3, 'token.issued', "
	         "'%s')) v(n, t, b);"
	         "INSERT INTO audit_chains (writer_id, last_seq, updated_at) "
	         "VALUES ('newer-1', 3, now())",
	         newer, broken, known);
	assert_int_equal(harness_sql("t_sink_newer", sql), 0);

	assert_int_equal(wait_lines(json_path, "task-newer", 2), 2);
	assert_int_equal(wait_lines(cef_path, "task-newer", 2), 2);
	/* JSON: the rows as written, in chain order, the broken one left out. */
	assert_int_equal(lines_with(json_path, "task-newer", got, 4), 2);
	assert_string_equal(got[0], newer);
	assert_string_equal(got[1], known);
	/* CEF: the new type by name, its category its first part. */
	assert_int_equal(lines_with(cef_path, "task-newer", got, 4), 2);
	assert_non_null(strstr(got[0], "|session.resumed|session.resumed|6|"));
	assert_non_null(strstr(got[0], "cat=session "));
	assert_non_null(strstr(got[1], "|token.issued|Token issued|2|"));
	assert_non_null(strstr(got[1], "duser=planner"));
	assert_true(wait_log(&p, "event newer-1/2 does not parse"));
	snprintf(url, sizeof(url), "%s/metrics", p.base);
	assert_int_equal(harness_http("GET", url, NULL, NULL, 0, &r), 0);
	assert_non_null(strstr(r.body, "idpd_audit_sink_skipped_total{sink=\"json-file\"} 1\n"));
	assert_non_null(strstr(r.body, "idpd_audit_sink_skipped_total{sink=\"cef-file\"} 1\n"));
	harness_resp_free(&r);
	assert_int_equal(harness_idpd_stop(&p, SIGTERM, 10000), 0);
	unlink(json_path);
	unlink(cef_path);
}

/* The ids of the events in a webhook request's body, each followed by a space; "" if none. */
static void
hook_event_ids(const char *request, char *out, size_t len, bool *only_reports)
{
	const char *body = strstr(request, "\r\n\r\n");
	json_t *doc = body != NULL ? json_loads(body + 4, 0, NULL) : NULL;
	json_t *events = json_object_get(doc, "events"), *ev;
	size_t i, used = 0;

	assert_non_null(doc);
	assert_true(json_is_array(events));
	out[0] = '\0';
	json_array_foreach(events, i, ev)
	{
		const char *type = json_string_value(json_object_get(ev, "type"));
		const char *id = json_string_value(json_object_get(ev, "id"));

		if (type == NULL || strcmp(type, "tool_invocation") != 0)
			*only_reports = false;
		if (id != NULL && used + strlen(id) + 2 < len)
			used += (size_t)snprintf(out + used, len - used, "%s ", id);
	}
	json_decref(doc);
}

/*
 * A webhook sink POSTs the events of the types it names, with its bearer
 * token from the environment; a receiver that answers 503 gets the same
 * events again, and the token never reaches the log.
 */
static void
webhook_sink_posts_its_types_until_taken(void **state)
{
	struct idpd_proc p;
	struct harness_hook h;
	static const int statuses[] = {503, 204};
	const char *start = "POST /idpd/events HTTP/1.1\r\n";
	char extra[1024], ids[3][80], first[4096], all[16384] = "";
	bool only_reports = true;
	size_t n;

	(void)state;
	assert_int_equal(auth_key_generate(reporter_key, reporter_hash), IDP_OK);
	assert_int_equal(harness_hook_start(&h, statuses, 2), 0);
	assert_int_equal(setenv("IDPD_TEST_HOOK_TOKEN", "hook-secret-7f3a", 1), 0);
	snprintf(
	    extra, sizeof(extra),
	    "[[api_keys]]\nname = \"reporter\"\nhash = \"%s\"\nroles = [\"introspector\"]\n"
	    "[audit]\nship_interval = \"50ms\"\n"
	    "[[audit.sinks]]\nname = \"portal\"\ntype = \"webhook\"\n"
	    "url = \"http://127.0.0.1:%d/idpd/events\"\nbearer_env = \"IDPD_TEST_HOOK_TOKEN\"\n"
	    "types = \"tool_invocation\"\nsend_timeout = \"2s\"\n",
	    reporter_hash, h.port);
	assert_int_equal(harness_db_create("t_sink_hook"), 0);
	assert_int_equal(harness_idpd_start(&p, "t_sink_hook", NULL, extra), 0);
	/* Make sure other types are written meanwhile: a key rotation's events. */
	for (int i = 0; i < 3; i++)
		assert_int_equal(report(&p, "task-hook", ids[i], sizeof(ids[i])), 201);
	for (int i = 0; i < 3; i++)
		assert_true(harness_hook_wait(&h, ids[i], 5000));
	/* The first POST was refused: wait for a taken one, then another
	 * round (what is taken is not sent again). */
	for (int i = 0; i < 250 && harness_hook_count(&h) < 2; i++)
		sleep_ms(20);
	sleep_ms(300);
	n = harness_hook_count(&h);
	assert_true(n >= 2);
	for (size_t i = 0; i < n; i++) {
		char *req = harness_hook_request(&h, i), got[4096];

		assert_non_null(req);
		assert_true(strncmp(req, start, strlen(start)) == 0);
		assert_non_null(strstr(req, "\r\nAuthorization: Bearer hook-secret-7f3a\r\n"));
		hook_event_ids(req, got, sizeof(got), &only_reports);
		if (i == 0)
			snprintf(first, sizeof(first), "%s", got);
		else
			strncat(all, got, sizeof(all) - strlen(all) - 1);
		free(req);
	}
	assert_true(only_reports);
	assert_true(first[0] != '\0');
	{
		char *id = strtok(first, " ");

		for (; id != NULL; id = strtok(NULL, " ")) {
			char *at = strstr(all, id);

			/* Delivered again, and once only. */
			assert_non_null(at);
			assert_null(strstr(at + 1, id));
		}
	}
	for (int i = 0; i < 3; i++)
		assert_non_null(strstr(all, ids[i]));
	/* Counted as shipped: the three reports, not the rows passed by. */
	{
		char url[256];
		struct http_resp r;

		snprintf(url, sizeof(url), "%s/metrics", p.base);
		assert_int_equal(harness_http("GET", url, NULL, NULL, 0, &r), 0);
		assert_non_null(
		    strstr(r.body, "idpd_audit_sink_shipped_total{sink=\"portal\"} 3\n"));
		harness_resp_free(&r);
	}
	assert_int_equal(harness_idpd_stop(&p, SIGTERM, 10000), 0);
	assert_false(harness_log_contains(&p, "hook-secret-7f3a"));
	harness_hook_stop(&h);

	/* types of blanks only would carry nothing: not usable. */
	{
		char blank[1024];

		snprintf(blank, sizeof(blank), "%s", extra);
		memcpy(strstr(blank, "types = \"tool_invocation\""), "types = \"               \"",
		       strlen("types = \"tool_invocation\""));
		assert_int_not_equal(harness_idpd_start(&p, "t_sink_hook", NULL, blank), 0);
		assert_true(harness_log_contains(&p, "types names no event type"));
	}
	/* A variable named but not set: the sink is not usable, idpd does not start. */
	assert_int_equal(unsetenv("IDPD_TEST_HOOK_TOKEN"), 0);
	assert_int_not_equal(harness_idpd_start(&p, "t_sink_hook", NULL, extra), 0);
	assert_true(harness_log_contains(&p, "IDPD_TEST_HOOK_TOKEN is not set"));
}

/* ---- TLS ---- */

/* Octet-counted frames holding s (NULL: any) that the TLS receiver decrypted. */
static int
tls_frames(struct harness_tls *t, const char *s)
{
	size_t len;
	char *data = harness_tls_data(t, &len);
	int n = frames_in(data, len, s);

	free(data);
	return n;
}

/*
 * How many of task's events the sink's cursor has passed, that is, taken
 * for delivered.  (A cursor may pass events of other types that a sink
 * does not carry without sending anything.)
 */
static int
sink_passed(const char *db, const char *sink, const char *task)
{
	char sql[512], v[32];

	snprintf(sql, sizeof(sql),
	         "SELECT count(*) FROM audit_events e JOIN audit_sink_cursors c ON "
	         "c.writer_id = e.writer_id AND c.sink = '%s' WHERE e.task_id = '%s' AND "
	         "e.seq <= c.last_seq",
	         sink, task);
	assert_int_equal(harness_sql_value(db, sql, v, sizeof(v)), 0);
	return atoi(v);
}

/* Wait (5 s at most) until the sink's cursor passed n of task's events; how many it did. */
static int
wait_passed(const char *db, const char *sink, const char *task, int n)
{
	for (int i = 0; i < 100 && sink_passed(db, sink, task) < n; i++)
		sleep_ms(50);
	return sink_passed(db, sink, task);
}

/*
 * Wait (15 s at most: a failing sink's retries back off up to 5 s apart)
 * until the TLS receiver refused at least n handshakes.
 */
static void
wait_refused(struct harness_tls *t, unsigned n)
{
	unsigned ok = 0, refused = 0;

	for (int i = 0; i < 300; i++) {
		harness_tls_counts(t, &ok, &refused, NULL, 0);
		if (refused >= n)
			break;
		sleep_ms(50);
	}
	assert_true(refused >= n);
	assert_int_equal(ok, 0);
}

/* pki/name into out. */
static void
pki_file(char *out, size_t len, const char *pki, const char *name)
{
	snprintf(out, len, "%s/%s", pki, name);
}

/*
 * Syslog over TLS (RFC 5425): a receiver whose certificate does not chain
 * to ca_file gets nothing, the cursor stays where it was and the sink says
 * it is failing; once the receiver presents a certificate of the trusted
 * CA, every event arrives, once, octet-counted inside TLS.  A reload that
 * names an unreadable ca_file changes nothing.
 */
static void
syslog_over_tls_ships_only_to_a_receiver_it_verifies(void **state)
{
	struct idpd_proc p;
	struct harness_tls t;
	char pki[64], ca[128], cert[128], key[128], rogue[128], rogue_key[128], missing[128];
	char sink[1024], bad_sink[1024], extra[2048], ids[6][80];
	int i;

	(void)state;
	assert_int_equal(auth_key_generate(reporter_key, reporter_hash), IDP_OK);
	assert_int_equal(harness_tls_pki(pki, sizeof(pki)), 0);
	pki_file(ca, sizeof(ca), pki, "ca.pem");
	pki_file(cert, sizeof(cert), pki, "server.pem");
	pki_file(key, sizeof(key), pki, "server.key");
	pki_file(rogue, sizeof(rogue), pki, "rogue.pem");
	pki_file(rogue_key, sizeof(rogue_key), pki, "rogue.key");
	pki_file(missing, sizeof(missing), pki, "missing.pem");
	assert_int_equal(harness_tls_start(&t, false, rogue, rogue_key, NULL), 0);
	snprintf(sink, sizeof(sink),
	         "[[audit.sinks]]\nname = \"siem-tls\"\ntype = \"syslog\"\nformat = \"json\"\n"
	         "address = \"127.0.0.1:%d\"\nprotocol = \"tls\"\nca_file = \"%s\"\n"
	         "connect_timeout = \"1s\"\n",
	         t.port, ca);
	snprintf(extra, sizeof(extra),
	         "[[api_keys]]\nname = \"reporter\"\nhash = \"%s\"\nroles = [\"introspector\"]\n"
	         "[audit]\nship_interval = \"50ms\"\n%s",
	         reporter_hash, sink);
	assert_int_equal(harness_db_create("t_sink_tls"), 0);
	assert_int_equal(harness_idpd_start(&p, "t_sink_tls", NULL, extra), 0);
	for (i = 0; i < 5; i++)
		assert_int_equal(report(&p, "task-tls", ids[i], sizeof(ids[i])), 201);

	/* Not signed by ca_file: refused at every try, nothing delivered. */
	assert_true(wait_log(&p, "the receiver's certificate failed verification: unable to get "
	                         "local issuer certificate"));
	wait_refused(&t, 2);
	assert_int_equal(tls_frames(&t, NULL), 0);
	assert_int_equal(sink_passed("t_sink_tls", "siem-tls", "task-tls"), 0);
	assert_true(sink_metric(&p, "idpd_audit_sink_errors_total", "siem-tls") >= 2);
	assert_true(sink_lag(&p, "siem-tls") > 0);

	/* The receiver presents the right certificate: all of it arrives, once. */
	assert_int_equal(harness_tls_use(&t, cert, key, NULL), 0);
	for (i = 0; i < 200 && tls_frames(&t, "task-tls") < 5; i++)
		sleep_ms(50);
	assert_int_equal(tls_frames(&t, "task-tls"), 5);
	for (i = 0; i < 5; i++)
		assert_int_equal(tls_frames(&t, ids[i]), 1);
	assert_int_equal(wait_passed("t_sink_tls", "siem-tls", "task-tls", 5), 5);
	for (i = 0; i < 100 && sink_lag(&p, "siem-tls") > 0; i++)
		sleep_ms(50);
	assert_true(sink_lag(&p, "siem-tls") == 0);

	/* A reload naming a ca_file that cannot be read: refused, the sink goes on. */
	snprintf(bad_sink, sizeof(bad_sink),
	         "[[audit.sinks]]\nname = \"siem-tls\"\ntype = \"syslog\"\nformat = \"json\"\n"
	         "address = \"127.0.0.1:%d\"\nprotocol = \"tls\"\nca_file = \"%s\"\n"
	         "connect_timeout = \"1s\"\n",
	         t.port, missing);
	reconfigure(&p, sink, bad_sink);
	assert_true(wait_log(&p, "missing.pem cannot be read: No such file or directory"));
	assert_true(wait_log(&p, "audit sinks unchanged"));
	assert_int_equal(report(&p, "task-tls", ids[5], sizeof(ids[5])), 201);
	for (i = 0; i < 100 && tls_frames(&t, "task-tls") < 6; i++)
		sleep_ms(50);
	assert_int_equal(tls_frames(&t, ids[5]), 1);
	assert_int_equal(tls_frames(&t, "task-tls"), 6);

	assert_int_equal(harness_idpd_stop(&p, SIGTERM, 10000), 0);
	harness_tls_stop(&t);
	harness_tls_pki_remove(pki);
}

/*
 * A sink whose address is an IP literal, without server_name, checks that
 * address against the certificate's IP addresses: a certificate of the
 * trusted CA that names only DNS:localhost is refused at 127.0.0.1, and
 * nothing is delivered; with server_name = "localhost" the same receiver
 * is taken.
 */
static void
syslog_over_tls_to_an_ip_address_checks_it(void **state)
{
	struct idpd_proc p;
	struct harness_tls t;
	char pki[64], ca[128], cert[128], key[128], sink[1024], named[1100], extra[2048];
	char ids[2][80];
	int i;

	(void)state;
	assert_int_equal(auth_key_generate(reporter_key, reporter_hash), IDP_OK);
	assert_int_equal(harness_tls_pki(pki, sizeof(pki)), 0);
	pki_file(ca, sizeof(ca), pki, "ca.pem");
	pki_file(cert, sizeof(cert), pki, "dnsonly.pem");
	pki_file(key, sizeof(key), pki, "dnsonly.key");
	assert_int_equal(harness_tls_start(&t, false, cert, key, NULL), 0);
	snprintf(sink, sizeof(sink),
	         "[[audit.sinks]]\nname = \"siem-ip\"\ntype = \"syslog\"\n"
	         "address = \"127.0.0.1:%d\"\nprotocol = \"tls\"\nca_file = \"%s\"\n"
	         "connect_timeout = \"1s\"\n",
	         t.port, ca);
	snprintf(named, sizeof(named), "%sserver_name = \"localhost\"\n", sink);
	snprintf(extra, sizeof(extra),
	         "[[api_keys]]\nname = \"reporter\"\nhash = \"%s\"\nroles = [\"introspector\"]\n"
	         "[audit]\nship_interval = \"50ms\"\n%s",
	         reporter_hash, sink);
	assert_int_equal(harness_db_create("t_sink_tls_ip"), 0);
	assert_int_equal(harness_idpd_start(&p, "t_sink_tls_ip", NULL, extra), 0);
	for (i = 0; i < 2; i++)
		assert_int_equal(report(&p, "task-tls-ip", ids[i], sizeof(ids[i])), 201);

	assert_true(wait_log(&p, "the receiver's certificate failed verification: IP address "
	                         "mismatch"));
	wait_refused(&t, 2);
	assert_int_equal(tls_frames(&t, NULL), 0);
	assert_int_equal(sink_passed("t_sink_tls_ip", "siem-ip", "task-tls-ip"), 0);

	/* Its DNS name, asked for by server_name: taken. */
	reconfigure(&p, sink, named);
	assert_true(wait_log(&p, "audit sinks: 0 kept, 1 stopped, 1 started"));
	for (i = 0; i < 200 && tls_frames(&t, "task-tls-ip") < 2; i++)
		sleep_ms(50);
	for (i = 0; i < 2; i++)
		assert_int_equal(tls_frames(&t, ids[i]), 1);
	assert_int_equal(wait_passed("t_sink_tls_ip", "siem-ip", "task-tls-ip", 2), 2);
	assert_int_equal(harness_idpd_stop(&p, SIGTERM, 10000), 0);
	harness_tls_stop(&t);
	harness_tls_pki_remove(pki);
}

/*
 * An https webhook verifies the receiver's name: with a server_name its
 * certificate does not hold, nothing is sent; with the right one, the
 * events and the bearer token go inside TLS.
 */
static void
https_webhook_ships_only_to_the_name_it_expects(void **state)
{
	struct idpd_proc p;
	struct harness_tls t;
	char pki[64], ca[128], cert[128], key[128], extra[2048], ids[3][80], want[128];
	char *data;
	size_t len;
	int i;

	(void)state;
	assert_int_equal(auth_key_generate(reporter_key, reporter_hash), IDP_OK);
	assert_int_equal(harness_tls_pki(pki, sizeof(pki)), 0);
	pki_file(ca, sizeof(ca), pki, "ca.pem");
	pki_file(cert, sizeof(cert), pki, "server.pem");
	pki_file(key, sizeof(key), pki, "server.key");
	assert_int_equal(harness_tls_start(&t, true, cert, key, NULL), 0);
	assert_int_equal(setenv("IDPD_TEST_HOOK_TOKEN", "hook-secret-tls-5e1d", 1), 0);
	snprintf(extra, sizeof(extra),
	         "[[api_keys]]\nname = \"reporter\"\nhash = \"%s\"\nroles = [\"introspector\"]\n"
	         "[audit]\nship_interval = \"50ms\"\n"
	         "[[audit.sinks]]\nname = \"portal-tls\"\ntype = \"webhook\"\n"
	         "url = \"https://127.0.0.1:%d/idpd/events\"\nca_file = \"%s\"\n"
	         "server_name = \"siem.example\"\nbearer_env = \"IDPD_TEST_HOOK_TOKEN\"\n"
	         "types = \"tool_invocation\"\nconnect_timeout = \"1s\"\nsend_timeout = \"2s\"\n",
	         reporter_hash, t.port, ca);
	assert_int_equal(harness_db_create("t_sink_https"), 0);
	assert_int_equal(harness_idpd_start(&p, "t_sink_https", NULL, extra), 0);
	for (i = 0; i < 3; i++)
		assert_int_equal(report(&p, "task-https", ids[i], sizeof(ids[i])), 201);

	/* The certificate is for 127.0.0.1 and localhost, not siem.example. */
	assert_true(wait_log(&p, "the receiver's certificate failed verification: hostname "
	                         "mismatch"));
	wait_refused(&t, 1);
	data = harness_tls_data(&t, &len);
	assert_int_equal(len, 0);
	free(data);
	assert_int_equal(sink_passed("t_sink_https", "portal-tls", "task-https"), 0);

	reconfigure(&p, "server_name = \"siem.example\"", "server_name = \"localhost\"");
	assert_true(wait_log(&p, "audit sinks: 0 kept, 1 stopped, 1 started"));
	for (i = 0; i < 3; i++)
		assert_true(harness_tls_wait(&t, ids[i], 10000));
	data = harness_tls_data(&t, &len);
	assert_int_equal(strncmp(data, "POST /idpd/events HTTP/1.1\r\n", 28), 0);
	snprintf(want, sizeof(want), "\r\nHost: 127.0.0.1:%d\r\n", t.port);
	assert_non_null(strstr(data, want));
	assert_non_null(strstr(data, "\r\nAuthorization: Bearer hook-secret-tls-5e1d\r\n"));
	free(data);
	assert_int_equal(wait_passed("t_sink_https", "portal-tls", "task-https", 3), 3);
	assert_int_equal(harness_idpd_stop(&p, SIGTERM, 10000), 0);
	assert_false(harness_log_contains(&p, "hook-secret-tls-5e1d"));
	assert_int_equal(unsetenv("IDPD_TEST_HOOK_TOKEN"), 0);
	harness_tls_stop(&t);
	harness_tls_pki_remove(pki);
}

/*
 * Mutual TLS: a receiver that requires a client certificate refuses a
 * sink without one, then a sink whose certificate it does not trust, and
 * neither time is anything taken for delivered, though under TLS 1.3 the
 * refusal comes after idpd's handshake has ended (here 400 ms after, as
 * from a receiver that checks revocation, and then 550 ms after: past
 * idpd's wait before the first line, so the lines have gone and its TCP
 * took them, but within the first flush's wait); once it trusts idpd's
 * certificate it gets it, and the events.
 */
static void
mutual_tls_presents_the_client_certificate(void **state)
{
	struct idpd_proc p;
	struct harness_tls t;
	char pki[64], ca[128], rogue_ca[128], cert[128], key[128], ccert[128], ckey[128];
	char sink[1024], with_cert[1400], extra[2048], ids[3][80], cn[128];
	unsigned ok, refused, before;
	int i;

	(void)state;
	assert_int_equal(auth_key_generate(reporter_key, reporter_hash), IDP_OK);
	assert_int_equal(harness_tls_pki(pki, sizeof(pki)), 0);
	pki_file(ca, sizeof(ca), pki, "ca.pem");
	pki_file(rogue_ca, sizeof(rogue_ca), pki, "rogue-ca.pem");
	pki_file(cert, sizeof(cert), pki, "server.pem");
	pki_file(key, sizeof(key), pki, "server.key");
	pki_file(ccert, sizeof(ccert), pki, "client.pem");
	pki_file(ckey, sizeof(ckey), pki, "client.key");
	assert_int_equal(harness_tls_start(&t, false, cert, key, ca), 0);
	snprintf(sink, sizeof(sink),
	         "[[audit.sinks]]\nname = \"siem-mtls\"\ntype = \"syslog\"\nformat = \"cef\"\n"
	         "address = \"localhost:%d\"\nprotocol = \"tls\"\nca_file = \"%s\"\n"
	         "connect_timeout = \"1s\"\n",
	         t.port, ca);
	snprintf(with_cert, sizeof(with_cert), "%scert_file = \"%s\"\nkey_file = \"%s\"\n", sink,
	         ccert, ckey);
	snprintf(extra, sizeof(extra),
	         "[[api_keys]]\nname = \"reporter\"\nhash = \"%s\"\nroles = [\"introspector\"]\n"
	         "[audit]\nship_interval = \"50ms\"\n%s",
	         reporter_hash, sink);
	assert_int_equal(harness_db_create("t_sink_mtls"), 0);
	assert_int_equal(harness_idpd_start(&p, "t_sink_mtls", NULL, extra), 0);
	for (i = 0; i < 3; i++)
		assert_int_equal(report(&p, "task-mtls", ids[i], sizeof(ids[i])), 201);

	/* No client certificate: refused, and the cursor does not move. */
	wait_refused(&t, 2);
	sleep_ms(300);
	assert_int_equal(tls_frames(&t, NULL), 0);
	assert_int_equal(sink_passed("t_sink_mtls", "siem-mtls", "task-mtls"), 0);
	assert_true(wait_log(&p, "certificate required"));

	/* A certificate the receiver does not trust, refused late: the same. */
	assert_int_equal(harness_tls_use(&t, cert, key, rogue_ca), 0);
	harness_tls_slow_refusal(&t, 400);
	harness_tls_counts(&t, &ok, &before, NULL, 0);
	reconfigure(&p, sink, with_cert);
	assert_true(wait_log(&p, "audit sinks: 0 kept, 1 stopped, 1 started"));
	wait_refused(&t, before + 1);
	sleep_ms(600);
	assert_int_equal(sink_passed("t_sink_mtls", "siem-mtls", "task-mtls"), 0);
	assert_int_equal(tls_frames(&t, NULL), 0);
	assert_true(wait_log(&p, "unknown ca"));
	wait_refused(&t, before + 2);

	/* Refused after the lines went: the first flush hears it, the cursor stays. */
	/* 550 ms: after the 500 ms wait before the first line, so the lines go
	 * first, and as early within the flush's own 500 ms wait as that allows,
	 * so that a loaded machine delaying the receiver does not push the
	 * refusal past it. */
	harness_tls_slow_refusal(&t, 550);
	harness_tls_counts(&t, &ok, &before, NULL, 0);
	refused = before;
	/* Two more refusals (the second is 550 ms late for sure), unless the
	 * cursor moves first: a sink that took its lines for delivered stops. */
	for (i = 0; i < 300 && refused < before + 2; i++) {
		if (sink_passed("t_sink_mtls", "siem-mtls", "task-mtls") != 0)
			break;
		sleep_ms(50);
		harness_tls_counts(&t, &ok, &refused, NULL, 0);
	}
	sleep_ms(300);
	assert_int_equal(sink_passed("t_sink_mtls", "siem-mtls", "task-mtls"), 0);
	assert_true(refused >= before + 2);
	assert_int_equal(ok, 0);
	assert_int_equal(tls_frames(&t, NULL), 0);
	assert_true(wait_log(&p, "flush: tlsv1 alert unknown ca"));

	/* Trusted: the receiver gets idpd's certificate, and every event once. */
	assert_int_equal(harness_tls_use(&t, cert, key, ca), 0);
	for (i = 0; i < 200 && tls_frames(&t, "task-mtls") < 3; i++)
		sleep_ms(50);
	assert_int_equal(tls_frames(&t, "task-mtls"), 3);
	for (i = 0; i < 3; i++)
		assert_int_equal(tls_frames(&t, ids[i]), 1);
	harness_tls_counts(&t, &ok, &refused, cn, sizeof(cn));
	assert_true(ok >= 1);
	assert_string_equal(cn, "idpd-client");
	assert_int_equal(wait_passed("t_sink_mtls", "siem-mtls", "task-mtls", 3), 3);
	assert_int_equal(harness_idpd_stop(&p, SIGTERM, 10000), 0);
	assert_false(harness_log_contains(&p, "PRIVATE KEY"));
	harness_tls_stop(&t);
	harness_tls_pki_remove(pki);
}

/*
 * A receiver that asks for idpd's client certificate, takes it, and sends
 * no session tickets (as syslog-ng does, on purpose): idpd's wait for its
 * verdict is short and apart from connect_timeout, so the events arrive
 * promptly, not once connect_timeout has passed on every connection.
 */
static void
mutual_tls_to_a_receiver_without_tickets_ships_promptly(void **state)
{
	struct idpd_proc p;
	struct harness_tls t;
	char pki[64], ca[128], cert[128], key[128], ccert[128], ckey[128];
	char extra[2048], ids[2][80], cn[128];
	unsigned ok, refused;

	(void)state;
	assert_int_equal(auth_key_generate(reporter_key, reporter_hash), IDP_OK);
	assert_int_equal(harness_tls_pki(pki, sizeof(pki)), 0);
	pki_file(ca, sizeof(ca), pki, "ca.pem");
	pki_file(cert, sizeof(cert), pki, "server.pem");
	pki_file(key, sizeof(key), pki, "server.key");
	pki_file(ccert, sizeof(ccert), pki, "client.pem");
	pki_file(ckey, sizeof(ckey), pki, "client.key");
	assert_int_equal(harness_tls_start(&t, false, cert, key, ca), 0);
	harness_tls_tickets(&t, false);
	snprintf(extra, sizeof(extra),
	         "[[api_keys]]\nname = \"reporter\"\nhash = \"%s\"\nroles = [\"introspector\"]\n"
	         "[audit]\nship_interval = \"50ms\"\n"
	         "[[audit.sinks]]\nname = \"siem-noticket\"\ntype = \"syslog\"\n"
	         "address = \"127.0.0.1:%d\"\nprotocol = \"tls\"\nca_file = \"%s\"\n"
	         "cert_file = \"%s\"\nkey_file = \"%s\"\nconnect_timeout = \"10s\"\n",
	         reporter_hash, t.port, ca, ccert, ckey);
	assert_int_equal(harness_db_create("t_sink_noticket"), 0);
	assert_int_equal(harness_idpd_start(&p, "t_sink_noticket", NULL, extra), 0);

	/* Well under connect_timeout, on a new connection and on the same one. */
	assert_int_equal(report(&p, "task-noticket", ids[0], sizeof(ids[0])), 201);
	assert_true(harness_tls_wait(&t, ids[0], 2000));
	assert_int_equal(report(&p, "task-noticket", ids[1], sizeof(ids[1])), 201);
	assert_true(harness_tls_wait(&t, ids[1], 2000));
	assert_int_equal(tls_frames(&t, "task-noticket"), 2);
	harness_tls_counts(&t, &ok, &refused, cn, sizeof(cn));
	assert_int_equal(refused, 0);
	assert_string_equal(cn, "idpd-client");
	assert_int_equal(wait_passed("t_sink_noticket", "siem-noticket", "task-noticket", 2), 2);
	assert_int_equal(harness_idpd_stop(&p, SIGTERM, 10000), 0);
	harness_tls_stop(&t);
	harness_tls_pki_remove(pki);
}

/* Copy from over to, in place (the same inode, new content), as cp does. */
static void
copy_file(const char *from, const char *to)
{
	char buf[8192];
	size_t n;
	FILE *in = fopen(from, "r"), *out = fopen(to, "w");

	assert_non_null(in);
	assert_non_null(out);
	while ((n = fread(buf, 1, sizeof(buf), in)) > 0)
		assert_int_equal(fwrite(buf, 1, n, out), n);
	fclose(in);
	assert_int_equal(fclose(out), 0);
}

/*
 * A TLS sink reads its files once, when it is made; a reload after a file
 * was replaced at the same path (a CA bundle renewed, say) makes it again,
 * though the configuration's text did not change.
 */
static void
a_reload_takes_a_ca_file_replaced_at_the_same_path(void **state)
{
	struct idpd_proc p;
	struct harness_tls t;
	char pki[64], ca[128], rogue_ca[128], trust[128], cert[128], key[128];
	char extra[2048], id[80];
	int i;

	(void)state;
	assert_int_equal(auth_key_generate(reporter_key, reporter_hash), IDP_OK);
	assert_int_equal(harness_tls_pki(pki, sizeof(pki)), 0);
	pki_file(ca, sizeof(ca), pki, "ca.pem");
	pki_file(rogue_ca, sizeof(rogue_ca), pki, "rogue-ca.pem");
	pki_file(trust, sizeof(trust), pki, "trust.pem");
	pki_file(cert, sizeof(cert), pki, "server.pem");
	pki_file(key, sizeof(key), pki, "server.key");
	copy_file(rogue_ca, trust);
	assert_int_equal(harness_tls_start(&t, false, cert, key, NULL), 0);
	snprintf(extra, sizeof(extra),
	         "[[api_keys]]\nname = \"reporter\"\nhash = \"%s\"\nroles = [\"introspector\"]\n"
	         "[audit]\nship_interval = \"50ms\"\n"
	         "[[audit.sinks]]\nname = \"siem-renewed\"\ntype = \"syslog\"\n"
	         "address = \"127.0.0.1:%d\"\nprotocol = \"tls\"\nca_file = \"%s\"\n"
	         "connect_timeout = \"1s\"\n",
	         reporter_hash, t.port, trust);
	assert_int_equal(harness_db_create("t_sink_renewed"), 0);
	assert_int_equal(harness_idpd_start(&p, "t_sink_renewed", NULL, extra), 0);
	assert_int_equal(report(&p, "task-renewed", id, sizeof(id)), 201);
	wait_refused(&t, 1);

	/* The same configuration, a new CA file under the old name. */
	copy_file(ca, trust);
	assert_int_equal(kill(p.pid, SIGHUP), 0);
	assert_true(wait_log(&p, "audit sinks: 0 kept, 1 stopped, 1 started"));
	for (i = 0; i < 200 && tls_frames(&t, id) < 1; i++)
		sleep_ms(50);
	assert_int_equal(tls_frames(&t, id), 1);
	assert_int_equal(wait_passed("t_sink_renewed", "siem-renewed", "task-renewed", 1), 1);
	assert_int_equal(harness_idpd_stop(&p, SIGTERM, 10000), 0);
	harness_tls_stop(&t);
	harness_tls_pki_remove(pki);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(a_new_sink_steps_past_chains_retention_emptied),
	    cmocka_unit_test(retention_keeps_what_another_instances_sink_has_not_shipped),
	    cmocka_unit_test(file_sinks_receive_every_event_in_order_in_each_format),
	    cmocka_unit_test(syslog_receiver_down_for_a_while_gets_every_event_once),
	    cmocka_unit_test(a_gap_is_counted_once_across_retries),
	    cmocka_unit_test(sinks_change_on_reload),
	    cmocka_unit_test(a_reload_does_not_wait_for_a_stalled_receiver),
	    cmocka_unit_test(rows_a_newer_version_wrote_are_shipped),
	    cmocka_unit_test(webhook_sink_posts_its_types_until_taken),
	    cmocka_unit_test(syslog_over_tls_ships_only_to_a_receiver_it_verifies),
	    cmocka_unit_test(syslog_over_tls_to_an_ip_address_checks_it),
	    cmocka_unit_test(https_webhook_ships_only_to_the_name_it_expects),
	    cmocka_unit_test(mutual_tls_presents_the_client_certificate),
	    cmocka_unit_test(mutual_tls_to_a_receiver_without_tickets_ships_promptly),
	    cmocka_unit_test(a_reload_takes_a_ca_file_replaced_at_the_same_path),
	};
	return cmocka_run_group_tests_name("audit_sinks", tests, NULL, NULL);
}
