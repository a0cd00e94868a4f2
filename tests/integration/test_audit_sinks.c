/*
 * Integration tests of SIEM shipping: events reach a file sink and a syslog
 * TCP receiver in order, a receiver that is down for a while gets every
 * event once it is back (and none twice in a normal run), and a restarted
 * idpd resumes from its cursor instead of shipping everything again.
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

static void
file_sinks_receive_every_event_in_order_in_each_format(void **state)
{
	struct idpd_proc p;
	char extra[2048], ids[5][80], json_path[] = "/tmp/idpd-sink-json-XXXXXX",
					cef_path[] = "/tmp/idpd-sink-cef-XXXXXX";
	char line[8192];
	FILE *f;
	int fd, i;

	(void)state;
	assert_int_equal(auth_key_generate(reporter_key, reporter_hash), IDP_OK);
	fd = mkstemp(json_path);
	close(fd);
	fd = mkstemp(cef_path);
	close(fd);
	snprintf(extra, sizeof(extra),
		 "[audit]\nship_interval = \"50ms\"\n"
		 "[[audit.sinks]]\nname = \"json-file\"\ntype = \"file\"\nformat = \"json\"\npath = \"%s\"\n"
		 "[[audit.sinks]]\nname = \"cef-file\"\ntype = \"file\"\nformat = \"cef\"\npath = \"%s\"\n"
		 "[[api_keys]]\nname = \"reporter\"\nhash = \"%s\"\nroles = [\"introspector\"]\n",
		 json_path, cef_path, reporter_hash);
	assert_int_equal(harness_db_create("t_sink_file"), 0);
	assert_int_equal(harness_idpd_start(&p, "t_sink_file", NULL, extra), 0);
	for (i = 0; i < 5; i++)
		assert_int_equal(report(&p, "task-file", ids[i], sizeof(ids[i])), 201);
	for (i = 0; i < 100 && (count_lines(json_path, "task-file") < 5 || count_lines(cef_path, "task-file") < 5); i++)
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

/* Count octet-counted frames ("LEN SP MSG") holding s; -1 on a broken frame. */
static int
frames_with(const struct receiver *rc, const char *s)
{
	size_t off = 0;
	int n = 0;

	while (off < rc->len) {
		char *end;
		unsigned long len = strtoul(rc->data + off, &end, 10);

		if (end == rc->data + off || *end != ' ')
			return -1;
		off = (size_t)(end - rc->data) + 1;
		if (off + len > rc->len)
			break; /* a frame still arriving */
		if (s == NULL || memmem(rc->data + off, len, s, strlen(s)) != NULL)
			n++;
		off += len;
	}
	return n;
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

	/* The SIEM is down: events are committed and wait in the outbox. */
	for (i = 0; i < 10; i++)
		assert_int_equal(report(&p, "task-syslog", ids[i], sizeof(ids[i])), 201);
	sleep_ms(600);

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

	assert_int_equal(harness_idpd_stop(&p, SIGTERM, 10000), 0);
	rc.stop = 1;
	pthread_join(rc.th, NULL);
	close(rc.listen_fd);
	free(rc.data);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(file_sinks_receive_every_event_in_order_in_each_format),
		cmocka_unit_test(syslog_receiver_down_for_a_while_gets_every_event_once),
	};
	return cmocka_run_group_tests_name("audit_sinks", tests, NULL, NULL);
}
