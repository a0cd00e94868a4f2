/*
 * Unit tests for the sink transports: a file in a private directory, and
 * syslog receivers (TCP and UDP) and a webhook receiver that the tests open
 * on 127.0.0.1 with port 0.  Nothing leaves the loopback interface.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <jansson.h>
#include <poll.h>
#include <pthread.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "idpd/audit_sink.h"
#include "idpd/buf.h"

#define TS 1774620923456LL
#define TS_TEXT "2026-03-27T14:15:23.456Z"

/* ---- helpers ------------------------------------------------------------ */

static char *
tmpdir(void)
{
	char *dir = strdup("/tmp/idpd-audit-sink-XXXXXX");

	assert_non_null(dir);
	assert_non_null(mkdtemp(dir));
	return dir;
}

static char *
path_in(const char *dir, const char *name)
{
	char *p = malloc(strlen(dir) + strlen(name) + 2);

	assert_non_null(p);
	memcpy(p, dir, strlen(dir));
	p[strlen(dir)] = '/';
	memcpy(p + strlen(dir) + 1, name, strlen(name) + 1);
	return p;
}

static char *
slurp(const char *path)
{
	struct idp_buf b;
	char chunk[4096];
	ssize_t n;
	int fd = open(path, O_RDONLY);

	assert_true(fd >= 0);
	idp_buf_init(&b, 0);
	while ((n = read(fd, chunk, sizeof(chunk))) > 0)
		assert_int_equal(idp_buf_append(&b, chunk, (size_t)n), IDP_OK);
	close(fd);
	return idp_buf_take(&b, NULL);
}

/* A socket of type bound to 127.0.0.1 on a port the kernel picks; *port gets it. */
static int
loopback_socket(int type, int *port)
{
	struct sockaddr_in sa;
	socklen_t len = sizeof(sa);
	int fd = socket(AF_INET, type | SOCK_CLOEXEC, 0);

	assert_true(fd >= 0);
	memset(&sa, 0, sizeof(sa));
	sa.sin_family = AF_INET;
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
	*port = ntohs(sa.sin_port);
	return fd;
}

static struct audit_sink *
syslog_sink(enum audit_sink_proto proto, int port, enum audit_format fmt, size_t udp_max)
{
	struct audit_sink_config c;
	struct audit_sink *s = NULL;
	struct idp_diag d;
	char addr[32];

	audit_sink_config_defaults(&c);
	snprintf(addr, sizeof(addr), "127.0.0.1:%d", port);
	c.type = AUDIT_SINK_SYSLOG;
	c.protocol = proto;
	c.address = addr;
	c.format = fmt;
	c.hostname = "testhost";
	c.version = "0.1.0";
	c.connect_timeout_ms = 2000;
	c.send_timeout_ms = 2000;
	if (udp_max)
		c.udp_max = udp_max;
	idp_diag_init(&d);
	if (audit_sink_new(&c, &s, &d) != IDP_OK)
		fail_msg("sink: %s", idp_diag_str(&d));
	return s;
}

static struct audit_sink_msg
msg(const char *line, const char *msgid, int severity)
{
	struct audit_sink_msg m = {line, strlen(line), TS, msgid, severity};

	return m;
}

/* The RFC 5424 message idpd sends for line, as a test builds it by hand. */
static char *
syslog_text(int pri, const char *msgid, const char *line)
{
	struct idp_buf b;

	idp_buf_init(&b, 0);
	assert_int_equal(idp_buf_printf(&b, "<%d>1 " TS_TEXT " testhost idpd %ld %s - %s", pri,
	                                (long)getpid(), msgid, line),
	                 IDP_OK);
	return idp_buf_take(&b, NULL);
}

/* Read from a connected stream until want bytes arrived (or EOF / 5 s of silence). */
static char *
read_bytes(int fd, size_t want)
{
	struct idp_buf b;
	char chunk[4096];

	idp_buf_init(&b, 0);
	while (b.len < want) {
		struct pollfd p = {fd, POLLIN, 0};
		ssize_t n;

		if (poll(&p, 1, 5000) <= 0)
			break;
		n = read(fd, chunk, sizeof(chunk));
		if (n <= 0)
			break;
		assert_int_equal(idp_buf_append(&b, chunk, (size_t)n), IDP_OK);
	}
	return idp_buf_take(&b, NULL);
}

/* Accept one connection, waiting up to 5 s. */
static int
accept_one(int lfd)
{
	struct pollfd p = {lfd, POLLIN, 0};

	assert_int_equal(poll(&p, 1, 5000), 1);
	return accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
}

static struct audit_event *
sample_event(enum audit_type t, const char *task)
{
	struct audit_event *ev = audit_event_new(t, TS);

	assert_int_equal(audit_event_set(ev, AUDIT_F_TASK_ID, task), IDP_OK);
	assert_int_equal(audit_event_set(ev, AUDIT_F_AGENT_ID, "agent-7"), IDP_OK);
	return ev;
}

/* ---- file --------------------------------------------------------------- */

static struct audit_sink *
file_sink(const char *path, enum audit_format fmt)
{
	struct audit_sink_config c;
	struct audit_sink *s = NULL;
	struct idp_diag d;

	audit_sink_config_defaults(&c);
	c.type = AUDIT_SINK_FILE;
	c.path = path;
	c.format = fmt;
	c.version = "0.1.0";
	idp_diag_init(&d);
	if (audit_sink_new(&c, &s, &d) != IDP_OK)
		fail_msg("sink: %s", idp_diag_str(&d));
	return s;
}

static void
file_sink_appends_exactly_the_lines(void **state)
{
	char *dir = tmpdir(), *path = path_in(dir, "audit.log"), *got;
	struct audit_event *a = sample_event(AUDIT_TOKEN_ISSUED, "t1");
	struct audit_event *b = sample_event(AUDIT_ALERT, "t2");
	struct idp_buf want;
	struct audit_sink *s;
	struct audit_sink_msg m = msg("raw line", "x", 1);
	struct idp_diag d;
	struct stat st;

	(void)state;
	idp_diag_init(&d);
	idp_buf_init(&want, 0);
	s = file_sink(path, AUDIT_FORMAT_CEF);
	assert_int_equal(audit_sink_write_event(s, a, &d), IDP_OK);
	assert_int_equal(audit_sink_write_event(s, b, &d), IDP_OK);
	assert_int_equal(audit_sink_flush(s, &d), IDP_OK);
	audit_sink_free(s);
	/* A new sink appends; it never truncates. */
	s = file_sink(path, AUDIT_FORMAT_CEF);
	assert_int_equal(audit_sink_write(s, &m, &d), IDP_OK);
	assert_int_equal(audit_sink_flush(s, &d), IDP_OK);
	audit_sink_free(s);

	assert_int_equal(audit_format_line(AUDIT_FORMAT_CEF, a, "0.1.0", &want), IDP_OK);
	assert_int_equal(idp_buf_putc(&want, '\n'), IDP_OK);
	assert_int_equal(audit_format_line(AUDIT_FORMAT_CEF, b, "0.1.0", &want), IDP_OK);
	assert_int_equal(idp_buf_puts(&want, "\nraw line\n"), IDP_OK);
	got = slurp(path);
	assert_string_equal(got, idp_buf_str(&want));
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0640);

	free(got);
	idp_buf_cleanup(&want);
	audit_event_free(a);
	audit_event_free(b);
	unlink(path);
	rmdir(dir);
	free(path);
	free(dir);
}

static void
file_sink_follows_rotation_after_a_flush(void **state)
{
	char *dir = tmpdir(), *path = path_in(dir, "audit.log"), *old = path_in(dir, "audit.log.1");
	struct audit_sink *s = file_sink(path, AUDIT_FORMAT_JSON);
	struct audit_sink_msg one = msg("one", "x", 1), two = msg("two", "x", 1);
	struct idp_diag d;
	char *got;

	(void)state;
	idp_diag_init(&d);
	assert_int_equal(audit_sink_write(s, &one, &d), IDP_OK);
	assert_int_equal(rename(path, old), 0);
	/* Written before the flush notices: still goes to the renamed file. */
	assert_int_equal(audit_sink_write(s, &two, &d), IDP_OK);
	assert_int_equal(audit_sink_flush(s, &d), IDP_OK);
	assert_int_equal(audit_sink_write(s, &one, &d), IDP_OK);
	assert_int_equal(audit_sink_flush(s, &d), IDP_OK);
	got = slurp(old);
	assert_string_equal(got, "one\ntwo\n");
	free(got);
	got = slurp(path);
	assert_string_equal(got, "one\n");
	free(got);
	audit_sink_free(s);
	unlink(path);
	unlink(old);
	rmdir(dir);
	free(path);
	free(old);
	free(dir);
}

static void
file_sink_in_missing_directory_fails_permanently(void **state)
{
	struct audit_sink *s = file_sink("/nonexistent-idpd-dir/audit.log", AUDIT_FORMAT_JSON);
	struct audit_sink_msg m = msg("x", "x", 1);
	struct idp_diag d;
	int rc;

	(void)state;
	idp_diag_init(&d);
	rc = audit_sink_write(s, &m, &d);
	assert_int_equal(rc, IDP_EIO);
	assert_false(audit_sink_retryable(rc));
	assert_non_null(strstr(idp_diag_str(&d), "open"));
	audit_sink_free(s);
}

static void
sink_refuses_oversized_or_broken_lines(void **state)
{
	char *dir = tmpdir(), *path = path_in(dir, "audit.log");
	struct audit_sink *s = file_sink(path, AUDIT_FORMAT_JSON);
	char *line = malloc(AUDIT_SINK_LINE_MAX + 2);
	struct audit_sink_msg m;
	struct idp_diag d;
	int rc;

	(void)state;
	assert_non_null(line);
	memset(line, 'x', AUDIT_SINK_LINE_MAX + 1);
	line[AUDIT_SINK_LINE_MAX + 1] = '\0';
	m = msg(line, "x", 1);
	idp_diag_init(&d);
	rc = audit_sink_write(s, &m, &d);
	assert_int_equal(rc, IDP_ETOOBIG);
	assert_false(audit_sink_retryable(rc));
	m = msg("two\nlines", "x", 1);
	assert_int_equal(audit_sink_write(s, &m, &d), IDP_EINVAL);
	m = msg("cr\r", "x", 1);
	assert_int_equal(audit_sink_write(s, &m, &d), IDP_EINVAL);
	/* Nothing reached the file. */
	assert_int_equal(access(path, F_OK), -1);
	audit_sink_free(s);
	unlink(path);
	rmdir(dir);
	free(line);
	free(path);
	free(dir);
}

/* ---- syslog over TCP ---------------------------------------------------- */

static void
tcp_sink_sends_octet_counted_rfc5424_frames(void **state)
{
	int port, lfd = loopback_socket(SOCK_STREAM, &port), cfd;
	struct audit_sink *s = syslog_sink(AUDIT_PROTO_TCP, port, AUDIT_FORMAT_LEEF, 0);
	struct audit_event *ev = sample_event(AUDIT_TOKEN_DENIED, "t-9");
	struct audit_sink_msg m = msg("first \xc3\xa9 line", "tool_invocation", 2);
	struct idp_buf want, line;
	struct idp_diag d;
	char *a, *b, *got;

	(void)state;
	assert_int_equal(listen(lfd, 4), 0);
	idp_diag_init(&d);
	assert_int_equal(audit_sink_open(s, &d), IDP_OK);
	assert_int_equal(audit_sink_write(s, &m, &d), IDP_OK);
	assert_int_equal(audit_sink_write_event(s, ev, &d), IDP_OK);
	assert_int_equal(audit_sink_flush(s, &d), IDP_OK);

	/* Severity 2 is informational (6), 5 is warning (4); facility 13 (log audit). */
	idp_buf_init(&line, 0);
	assert_int_equal(audit_format_line(AUDIT_FORMAT_LEEF, ev, "0.1.0", &line), IDP_OK);
	a = syslog_text(13 * 8 + 6, "tool_invocation", "first \xc3\xa9 line");
	b = syslog_text(13 * 8 + 4, "token.denied", idp_buf_str(&line));
	idp_buf_init(&want, 0);
	assert_int_equal(idp_buf_printf(&want, "%zu %s%zu %s", strlen(a), a, strlen(b), b), IDP_OK);

	cfd = accept_one(lfd);
	assert_true(cfd >= 0);
	got = read_bytes(cfd, want.len);
	assert_string_equal(got, idp_buf_str(&want));

	free(got);
	free(a);
	free(b);
	idp_buf_cleanup(&want);
	idp_buf_cleanup(&line);
	audit_event_free(ev);
	audit_sink_free(s);
	close(cfd);
	close(lfd);
}

static void
tcp_sink_to_a_closed_port_asks_to_retry(void **state)
{
	int port, fd = loopback_socket(SOCK_STREAM, &port);
	struct audit_sink *s;
	struct audit_sink_msg m = msg("x", "x", 1);
	struct idp_diag d;
	int rc;

	(void)state;
	/* Bound but not listening: the kernel refuses connections to it. */
	s = syslog_sink(AUDIT_PROTO_TCP, port, AUDIT_FORMAT_JSON, 0);
	idp_diag_init(&d);
	rc = audit_sink_write(s, &m, &d);
	assert_int_equal(rc, IDP_EUNAVAIL);
	assert_true(audit_sink_retryable(rc));
	assert_non_null(strstr(idp_diag_str(&d), "connect"));
	assert_int_equal(audit_sink_open(s, &d), IDP_EUNAVAIL);
	audit_sink_free(s);
	close(fd);
}

/*
 * The receiver drops the connection; the sender's loop (write, flush, on
 * error write again) must get the line to the next connection.
 */
static void
tcp_sink_reconnects_when_the_receiver_comes_back(void **state)
{
	int port, lfd = loopback_socket(SOCK_STREAM, &port), cfd;
	struct audit_sink *s = syslog_sink(AUDIT_PROTO_TCP, port, AUDIT_FORMAT_JSON, 0);
	struct audit_sink_msg one = msg("one", "x", 2), two = msg("two", "x", 2);
	char *a = syslog_text(110, "x", "one"), *b = syslog_text(110, "x", "two"), *got;
	struct idp_buf want;
	struct idp_diag d;
	int tries = 0, rc;

	(void)state;
	assert_int_equal(listen(lfd, 4), 0);
	idp_diag_init(&d);
	assert_int_equal(audit_sink_write(s, &one, &d), IDP_OK);
	assert_int_equal(audit_sink_flush(s, &d), IDP_OK);
	cfd = accept_one(lfd);
	idp_buf_init(&want, 0);
	assert_int_equal(idp_buf_printf(&want, "%zu %s", strlen(a), a), IDP_OK);
	got = read_bytes(cfd, want.len);
	assert_string_equal(got, idp_buf_str(&want));
	free(got);
	close(cfd);

	do {
		rc = audit_sink_write(s, &two, &d);
		if (rc == IDP_OK)
			rc = audit_sink_flush(s, &d);
		assert_true(rc == IDP_OK || audit_sink_retryable(rc));
	} while (rc != IDP_OK && ++tries < 5);
	assert_int_equal(rc, IDP_OK);

	cfd = accept_one(lfd);
	idp_buf_reset(&want);
	assert_int_equal(idp_buf_printf(&want, "%zu %s", strlen(b), b), IDP_OK);
	got = read_bytes(cfd, want.len);
	assert_string_equal(got, idp_buf_str(&want));

	free(got);
	free(a);
	free(b);
	idp_buf_cleanup(&want);
	audit_sink_free(s);
	close(cfd);
	close(lfd);
}

/*
 * The receiver resets the connection before acknowledging what was sent
 * (it closes with the bytes unread): the next write must not carry on over
 * a new connection as if they had arrived, but ask for a resend from the
 * cursor.  Only with nothing sent since the last flush is a reconnect silent.
 */
static void
tcp_sink_reset_before_a_flush_asks_to_resend(void **state)
{
	int port, lfd = loopback_socket(SOCK_STREAM, &port), cfd;
	struct audit_sink *s = syslog_sink(AUDIT_PROTO_TCP, port, AUDIT_FORMAT_JSON, 0);
	struct audit_sink_msg one = msg("one", "x", 2), two = msg("two", "x", 2);
	struct timespec pause = {0, 50 * 1000000L};
	struct idp_diag d;
	int rc;

	(void)state;
	assert_int_equal(listen(lfd, 4), 0);
	idp_diag_init(&d);
	assert_int_equal(audit_sink_write(s, &one, &d), IDP_OK);
	cfd = accept_one(lfd);
	assert_true(cfd >= 0);
	nanosleep(&pause, NULL); /* "one" is in the receiver's buffer, unread */
	close(cfd);              /* unread data: the kernel answers with a reset */
	nanosleep(&pause, NULL);
	rc = audit_sink_write(s, &two, &d);
	assert_int_equal(rc, IDP_EUNAVAIL);
	assert_true(audit_sink_retryable(rc));

	/* The resend from the cursor goes out on a new connection. */
	assert_int_equal(audit_sink_write(s, &one, &d), IDP_OK);
	assert_int_equal(audit_sink_write(s, &two, &d), IDP_OK);
	assert_int_equal(audit_sink_flush(s, &d), IDP_OK);
	cfd = accept_one(lfd);
	assert_true(cfd >= 0);
	/* After a good flush, a receiver that left costs a silent reconnect. */
	close(cfd);
	nanosleep(&pause, NULL);
	assert_int_equal(audit_sink_write(s, &one, &d), IDP_OK);
	audit_sink_free(s);
	cfd = accept_one(lfd);
	if (cfd >= 0)
		close(cfd);
	close(lfd);
}

/* ---- syslog over UDP ---------------------------------------------------- */

static void
udp_sink_sends_one_datagram_per_message(void **state)
{
	int port, fd = loopback_socket(SOCK_DGRAM, &port);
	struct audit_sink *s = syslog_sink(AUDIT_PROTO_UDP, port, AUDIT_FORMAT_CEF, 0);
	struct audit_sink_msg m1 = msg("CEF:0|a", "token.issued", 9), m2 = msg("b", "-", 0);
	char *w1 = syslog_text(13 * 8 + 2, "token.issued", "CEF:0|a");
	char *w2 = syslog_text(13 * 8 + 6, "-", "b");
	char got[2048];
	struct idp_diag d;
	ssize_t n;

	(void)state;
	idp_diag_init(&d);
	assert_int_equal(audit_sink_write(s, &m1, &d), IDP_OK);
	assert_int_equal(audit_sink_write(s, &m2, &d), IDP_OK);
	assert_int_equal(audit_sink_flush(s, &d), IDP_OK);
	n = recv(fd, got, sizeof(got), 0);
	assert_int_equal(n, (ssize_t)strlen(w1));
	assert_memory_equal(got, w1, strlen(w1));
	n = recv(fd, got, sizeof(got), 0);
	assert_int_equal(n, (ssize_t)strlen(w2));
	assert_memory_equal(got, w2, strlen(w2));
	free(w1);
	free(w2);
	audit_sink_free(s);
	close(fd);
}

static void
udp_sink_truncates_on_a_utf8_boundary(void **state)
{
	int port, fd = loopback_socket(SOCK_DGRAM, &port);
	struct audit_sink *s = syslog_sink(AUDIT_PROTO_UDP, port, AUDIT_FORMAT_JSON, 480);
	char line[1201], got[2048], *full;
	struct audit_sink_msg m;
	struct idp_diag d;
	ssize_t n;

	(void)state;
	/* 600 two-byte characters: any cut lands next to a lead byte or inside a pair. */
	for (int i = 0; i < 600; i++)
		memcpy(line + 2 * i, "\xc3\xa9", 2);
	line[1200] = '\0';
	m = msg(line, "x", 1);
	full = syslog_text(110, "x", line);
	idp_diag_init(&d);
	assert_int_equal(audit_sink_write(s, &m, &d), IDP_OK);
	n = recv(fd, got, sizeof(got), 0);
	assert_true(n > 400 && n <= 480);
	assert_memory_equal(got, full, (size_t)n);
	/* The last byte ends a character: it is the second byte of a pair. */
	assert_int_equal((unsigned char)got[n - 1], 0xa9);
	free(full);
	audit_sink_free(s);
	close(fd);
}

/* ---- webhook ------------------------------------------------------------ */

/*
 * One HTTP exchange on a thread of its own (the sink's flush waits for the
 * answer): accept, read the head and Content-Length bytes of body, answer
 * with answer (NULL: say nothing, until the sink gives up), close.
 */
struct hook_receiver {
	int lfd;
	const char *answer;
	char *request; /* what arrived, head and body */
	char *body;    /* points into request */
	pthread_t thread;
};

static void *
hook_serve(void *arg)
{
	struct hook_receiver *h = arg;
	struct idp_buf b;
	char chunk[4096];
	int fd;

	idp_buf_init(&b, 0);
	fd = accept_one(h->lfd);
	for (;;) {
		struct pollfd p = {fd, POLLIN, 0};
		const char *head_end, *cl;
		ssize_t n;

		if (b.len > 0 && (head_end = strstr(idp_buf_str(&b), "\r\n\r\n")) != NULL &&
		    (cl = strstr(idp_buf_str(&b), "Content-Length: ")) != NULL &&
		    b.len >= (size_t)(head_end + 4 - b.data) + strtoul(cl + 16, NULL, 10))
			break;
		if (fd < 0 || poll(&p, 1, 5000) <= 0 || (n = read(fd, chunk, sizeof(chunk))) <= 0)
			break;
		if (idp_buf_append(&b, chunk, (size_t)n) != IDP_OK)
			break;
	}
	if (h->answer != NULL) {
		if (write(fd, h->answer, strlen(h->answer)) < 0)
			perror("write");
	} else {
		/* Silent until the sink hangs up. */
		struct pollfd p = {fd, POLLIN, 0};

		(void)poll(&p, 1, 5000);
	}
	close(fd);
	h->request = idp_buf_take(&b, NULL);
	h->body = strstr(h->request, "\r\n\r\n");
	h->body = h->body != NULL ? h->body + 4 : h->request + strlen(h->request);
	return NULL;
}

static void
hook_start(struct hook_receiver *h, int lfd, const char *answer)
{
	memset(h, 0, sizeof(*h));
	h->lfd = lfd;
	h->answer = answer;
	assert_int_equal(pthread_create(&h->thread, NULL, hook_serve, h), 0);
}

static void
hook_join(struct hook_receiver *h)
{
	assert_int_equal(pthread_join(h->thread, NULL), 0);
}

static bool
starts_with(const char *s, const char *prefix)
{
	return strncmp(s, prefix, strlen(prefix)) == 0;
}

static struct audit_sink *
webhook_sink(const char *url, const char *bearer, int64_t send_timeout_ms)
{
	struct audit_sink_config c;
	struct audit_sink *s = NULL;
	struct idp_diag d;

	audit_sink_config_defaults(&c);
	c.type = AUDIT_SINK_WEBHOOK;
	c.url = url;
	c.bearer = bearer;
	c.version = "0.1.0";
	c.connect_timeout_ms = 2000;
	c.send_timeout_ms = send_timeout_ms;
	idp_diag_init(&d);
	if (audit_sink_new(&c, &s, &d) != IDP_OK)
		fail_msg("sink: %s", idp_diag_str(&d));
	return s;
}

#define HTTP_OK "HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n"

/* The lines written since the last flush arrive as one JSON document, in one POST. */
static void
webhook_posts_the_lines_as_one_json_document(void **state)
{
	int port, lfd = loopback_socket(SOCK_STREAM, &port);
	struct audit_event *ev = sample_event(AUDIT_TASK_COMPLETED, "t-done");
	struct audit_sink_msg m = msg("{\"first\":1}", "x", 1);
	struct hook_receiver h;
	struct audit_sink *s;
	struct idp_diag d;
	struct pollfd p;
	json_t *doc, *events;
	char url[64], host[64];

	(void)state;
	assert_int_equal(listen(lfd, 4), 0);
	snprintf(url, sizeof(url), "http://127.0.0.1:%d/hooks/idpd?v=1", port);
	snprintf(host, sizeof(host), "\r\nHost: 127.0.0.1:%d\r\n", port);
	s = webhook_sink(url, "tok-123", 2000);
	assert_non_null(strstr(audit_sink_describe(s), "webhook http://127.0.0.1:"));
	idp_diag_init(&d);
	/* Nothing written: a flush sends nothing. */
	assert_int_equal(audit_sink_flush(s, &d), IDP_OK);
	p = (struct pollfd){lfd, POLLIN, 0};
	assert_int_equal(poll(&p, 1, 100), 0);
	/* Writes connect to nothing either: the flush carries them. */
	assert_int_equal(audit_sink_write(s, &m, &d), IDP_OK);
	assert_int_equal(audit_sink_write_event(s, ev, &d), IDP_OK);
	assert_int_equal(poll(&p, 1, 100), 0);
	hook_start(&h, lfd, HTTP_OK);
	assert_int_equal(audit_sink_flush(s, &d), IDP_OK);
	hook_join(&h);
	assert_true(starts_with(h.request, "POST /hooks/idpd?v=1 HTTP/1.1\r\n"));
	assert_non_null(strstr(h.request, host));
	assert_non_null(strstr(h.request, "\r\nContent-Type: application/json\r\n"));
	assert_non_null(strstr(h.request, "\r\nAuthorization: Bearer tok-123\r\n"));
	assert_non_null(strstr(h.request, "\r\nUser-Agent: idpd/0.1.0\r\n"));
	doc = json_loads(h.body, 0, NULL);
	assert_non_null(doc);
	events = json_object_get(doc, "events");
	assert_int_equal(json_array_size(events), 2);
	assert_int_equal(json_integer_value(json_object_get(json_array_get(events, 0), "first")),
	                 1);
	assert_string_equal(json_string_value(json_object_get(json_array_get(events, 1), "type")),
	                    "task.completed");
	assert_string_equal(
	    json_string_value(json_object_get(json_array_get(events, 1), "task_id")), "t-done");
	json_decref(doc);
	free(h.request);
	/* Delivered: the next flush starts a new document. */
	assert_int_equal(audit_sink_flush(s, &d), IDP_OK);
	assert_int_equal(poll(&p, 1, 100), 0);
	audit_event_free(ev);
	audit_sink_free(s);
	close(lfd);
}

/*
 * A receiver that answers anything but 2xx, or nothing, has not taken the
 * events: the flush asks for them again, and the next document holds only
 * what is written again (the failed body is not sent twice).
 */
static void
webhook_without_a_2xx_asks_to_resend(void **state)
{
	int port, lfd = loopback_socket(SOCK_STREAM, &port);
	struct audit_sink_msg a = msg("{\"n\":1}", "x", 1), b = msg("{\"n\":2}", "x", 1);
	struct hook_receiver h;
	struct idp_diag d;
	char url[64];
	struct audit_sink *s;
	int rc;

	(void)state;
	assert_int_equal(listen(lfd, 4), 0);
	snprintf(url, sizeof(url), "http://127.0.0.1:%d", port);
	s = webhook_sink(url, NULL, 300);
	idp_diag_init(&d);
	assert_int_equal(audit_sink_write(s, &a, &d), IDP_OK);
	hook_start(&h, lfd, "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n");
	rc = audit_sink_flush(s, &d);
	hook_join(&h);
	assert_int_equal(rc, IDP_EUNAVAIL);
	assert_true(audit_sink_retryable(rc));
	assert_non_null(strstr(idp_diag_str(&d), "answered 503"));
	/* No Authorization without a bearer token; the target defaults to "/". */
	assert_true(starts_with(h.request, "POST / HTTP/1.1\r\n"));
	assert_null(strstr(h.request, "Authorization"));
	free(h.request);

	/* Silence: given up after send_timeout. */
	idp_diag_init(&d);
	assert_int_equal(audit_sink_write(s, &a, &d), IDP_OK);
	hook_start(&h, lfd, NULL);
	rc = audit_sink_flush(s, &d);
	hook_join(&h);
	assert_int_equal(rc, IDP_EUNAVAIL);
	assert_non_null(strstr(idp_diag_str(&d), "answer"));
	free(h.request);

	/* Not HTTP. */
	idp_diag_init(&d);
	assert_int_equal(audit_sink_write(s, &a, &d), IDP_OK);
	hook_start(&h, lfd, "SSH-2.0-OpenSSH\r\n");
	rc = audit_sink_flush(s, &d);
	hook_join(&h);
	assert_int_equal(rc, IDP_EUNAVAIL);
	assert_non_null(strstr(idp_diag_str(&d), "not HTTP"));
	free(h.request);

	/* Sent again, and taken: only what was written since. */
	idp_diag_init(&d);
	assert_int_equal(audit_sink_write(s, &a, &d), IDP_OK);
	assert_int_equal(audit_sink_write(s, &b, &d), IDP_OK);
	hook_start(&h, lfd, "HTTP/1.0 200 OK\r\n\r\n");
	assert_int_equal(audit_sink_flush(s, &d), IDP_OK);
	hook_join(&h);
	assert_string_equal(h.body, "{\"events\":[{\"n\":1},{\"n\":2}]}");
	free(h.request);
	audit_sink_free(s);
	close(lfd);

	/* A name that does not resolve: nothing kept for the next flush
	 * either, which starts a new document with what is written again. */
	s = webhook_sink("http://idpd-test-no-such-host.invalid/", NULL, 300);
	idp_diag_init(&d);
	assert_int_equal(audit_sink_write(s, &a, &d), IDP_OK);
	assert_int_equal(audit_sink_pending(s), 1);
	assert_int_not_equal(audit_sink_flush(s, &d), IDP_OK);
	assert_non_null(strstr(idp_diag_str(&d), "resolve"));
	assert_int_equal(audit_sink_pending(s), 0);
	audit_sink_free(s);

	/* Nobody listening. */
	lfd = loopback_socket(SOCK_STREAM, &port);
	snprintf(url, sizeof(url), "http://127.0.0.1:%d/", port);
	s = webhook_sink(url, NULL, 300);
	idp_diag_init(&d);
	assert_int_equal(audit_sink_write(s, &a, &d), IDP_OK);
	assert_int_equal(audit_sink_flush(s, &d), IDP_EUNAVAIL);
	assert_non_null(strstr(idp_diag_str(&d), "connect"));
	assert_int_equal(audit_sink_pending(s), 0);
	audit_sink_free(s);
	close(lfd);
}

/* A batch of large events goes in several POSTs of at most about 4 MiB each. */
static void
webhook_splits_a_large_batch(void **state)
{
	int port, lfd = loopback_socket(SOCK_STREAM, &port);
	size_t len = 250 * 1024;
	char *line = malloc(len + 1), url[64];
	struct audit_sink_msg m;
	struct hook_receiver h;
	struct audit_sink *s;
	struct idp_diag d;
	json_t *doc;

	(void)state;
	assert_non_null(line);
	/* {"pad":"xxx...x"} */
	memset(line, 'x', len);
	memcpy(line, "{\"pad\":\"", 8);
	memcpy(line + len - 2, "\"}", 2);
	line[len] = '\0';
	m = msg(line, "x", 1);
	assert_int_equal(listen(lfd, 4), 0);
	snprintf(url, sizeof(url), "http://127.0.0.1:%d/", port);
	s = webhook_sink(url, NULL, 2000);
	idp_diag_init(&d);
	hook_start(&h, lfd, HTTP_OK);
	for (int i = 0; i < 17; i++)
		assert_int_equal(audit_sink_write(s, &m, &d), IDP_OK);
	hook_join(&h);
	doc = json_loads(h.body, 0, NULL);
	assert_non_null(doc);
	assert_int_equal(json_array_size(json_object_get(doc, "events")), 16);
	assert_true(strlen(h.body) <= 4 * 1024 * 1024 + 64);
	json_decref(doc);
	free(h.request);
	hook_start(&h, lfd, HTTP_OK);
	assert_int_equal(audit_sink_flush(s, &d), IDP_OK);
	hook_join(&h);
	doc = json_loads(h.body, 0, NULL);
	assert_non_null(doc);
	assert_int_equal(json_array_size(json_object_get(doc, "events")), 1);
	json_decref(doc);
	free(h.request);
	free(line);
	audit_sink_free(s);
	close(lfd);
}

static void
webhook_refuses_bad_settings(void **state)
{
	static const struct {
		const char *url, *bearer;
		enum audit_format format;
		const char *mention;
	} bad[] = {
	    {NULL, NULL, AUDIT_FORMAT_JSON, "url"},
	    {"https://", NULL, AUDIT_FORMAT_JSON, "url"},
	    {"https://user:pw@portal.example/hook", NULL, AUDIT_FORMAT_JSON, "url"},
	    {"ftp://portal.example/hook", NULL, AUDIT_FORMAT_JSON, "url"},
	    {"http://", NULL, AUDIT_FORMAT_JSON, "url"},
	    {"http:///hook", NULL, AUDIT_FORMAT_JSON, "url"},
	    {"http://user:pw@portal.example/hook", NULL, AUDIT_FORMAT_JSON, "url"},
	    {"http://portal.example:0/hook", NULL, AUDIT_FORMAT_JSON, "url"},
	    {"http://portal.example:99999/", NULL, AUDIT_FORMAT_JSON, "url"},
	    {"http://portal.example?x=1", NULL, AUDIT_FORMAT_JSON, "url"},
	    {"http://portal.example/a b", NULL, AUDIT_FORMAT_JSON, "url"},
	    {"http://portal.example/a#frag", NULL, AUDIT_FORMAT_JSON, "url"},
	    {"http://portal example/hook", NULL, AUDIT_FORMAT_JSON, "url"},
	    {"http://[a\r\nX-Evil: 1.example]:80/", NULL, AUDIT_FORMAT_JSON, "url"},
	    {"http://portal.example\x7f/", NULL, AUDIT_FORMAT_JSON, "url"},
	    {"http://portal.example/hook", NULL, AUDIT_FORMAT_CEF, "json"},
	    {"http://portal.example/hook", "two words", AUDIT_FORMAT_JSON, "bearer"},
	    {"http://portal.example/hook", "line\r\nX-Evil: 1", AUDIT_FORMAT_JSON, "bearer"},
	};
	static const char *const good[][2] = {
	    {"http://portal.example", "webhook http://portal.example/"},
	    {"http://portal.example:8081/a/b?c=d", "webhook http://portal.example:8081/a/b?c=d"},
	    {"http://[::1]/hook", "webhook http://[::1]/hook"},
	    {"http://[::1]:9000/hook", "webhook http://[::1]:9000/hook"},
	    {"https://portal.example/hook", "webhook https://portal.example/hook"},
	    {"https://[::1]:8443/hook", "webhook https://[::1]:8443/hook"},
	};

	(void)state;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct audit_sink_config c;
		struct audit_sink *s = (struct audit_sink *)1;
		struct idp_diag d;

		audit_sink_config_defaults(&c);
		c.type = AUDIT_SINK_WEBHOOK;
		c.url = bad[i].url;
		c.bearer = bad[i].bearer;
		c.format = bad[i].format;
		idp_diag_init(&d);
		assert_int_equal(audit_sink_new(&c, &s, &d), IDP_EINVAL);
		assert_null(s);
		if (strstr(idp_diag_str(&d), bad[i].mention) == NULL)
			fail_msg("case %zu: \"%s\" lacks \"%s\"", i, idp_diag_str(&d),
			         bad[i].mention);
	}
	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
		struct audit_sink_config c;
		struct audit_sink *s = NULL;
		struct idp_diag d;

		audit_sink_config_defaults(&c);
		c.type = AUDIT_SINK_WEBHOOK;
		c.url = good[i][0];
		idp_diag_init(&d);
		if (audit_sink_new(&c, &s, &d) != IDP_OK)
			fail_msg("case %zu: %s", i, idp_diag_str(&d));
		assert_string_equal(audit_sink_describe(s), good[i][1]);
		audit_sink_free(s);
	}
}

/* ---- configuration ------------------------------------------------------ */

static void
sink_new_rejects_bad_settings(void **state)
{
	static const struct {
		enum audit_sink_type type;
		const char *path, *address;
		enum audit_sink_proto proto;
		int facility;
		size_t udp_max;
		const char *mention;
	} bad[] = {
	    {AUDIT_SINK_FILE, NULL, NULL, AUDIT_PROTO_TCP, 13, 2048, "path"},
	    {AUDIT_SINK_FILE, "", NULL, AUDIT_PROTO_TCP, 13, 2048, "path"},
	    {AUDIT_SINK_SYSLOG, NULL, NULL, AUDIT_PROTO_TCP, 13, 2048, "address"},
	    {AUDIT_SINK_SYSLOG, NULL, "localhost", AUDIT_PROTO_TCP, 13, 2048, "address"},
	    {AUDIT_SINK_SYSLOG, NULL, "localhost:0", AUDIT_PROTO_TCP, 13, 2048, "address"},
	    {AUDIT_SINK_SYSLOG, NULL, "localhost:70000", AUDIT_PROTO_TCP, 13, 2048, "address"},
	    {AUDIT_SINK_SYSLOG, NULL, "localhost:51x", AUDIT_PROTO_TCP, 13, 2048, "address"},
	    {AUDIT_SINK_SYSLOG, NULL, "::1:514", AUDIT_PROTO_TCP, 13, 2048, "address"},
	    {AUDIT_SINK_SYSLOG, NULL, "[::1]514", AUDIT_PROTO_TCP, 13, 2048, "address"},
	    {AUDIT_SINK_SYSLOG, NULL, "127.0.0.1:514", (enum audit_sink_proto)5, 13, 2048,
	     "protocol"},
	    {AUDIT_SINK_SYSLOG, NULL, "127.0.0.1:514", AUDIT_PROTO_TCP, 24, 2048, "facility"},
	    {AUDIT_SINK_SYSLOG, NULL, "127.0.0.1:514", AUDIT_PROTO_UDP, 13, 100, "udp_max"},
	    {(enum audit_sink_type)9, "/tmp/x", NULL, AUDIT_PROTO_TCP, 13, 2048, "type"},
	};

	(void)state;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct audit_sink_config c;
		struct audit_sink *s = (struct audit_sink *)1;
		struct idp_diag d;

		audit_sink_config_defaults(&c);
		c.type = bad[i].type;
		c.path = bad[i].path;
		c.address = bad[i].address;
		c.protocol = bad[i].proto;
		c.facility = bad[i].facility;
		c.udp_max = bad[i].udp_max;
		idp_diag_init(&d);
		assert_int_equal(audit_sink_new(&c, &s, &d), IDP_EINVAL);
		assert_null(s);
		if (strstr(idp_diag_str(&d), bad[i].mention) == NULL)
			fail_msg("case %zu: \"%s\" lacks \"%s\"", i, idp_diag_str(&d),
			         bad[i].mention);
	}
}

/* A throwaway PKI in a new directory (tests/support/tls-pki.sh says what is in it). */
static char *
make_pki(void)
{
	const char *top = getenv("IDPD_TEST_TOP");
	char *dir = tmpdir(), cmd[512];

	snprintf(cmd, sizeof(cmd), "%s/tests/support/tls-pki.sh %s",
	         top != NULL && *top != '\0' ? top : ".", dir);
	if (system(cmd) != 0)
		fail_msg("%s failed", cmd);
	return dir;
}

static void
remove_pki(char *dir)
{
	char cmd[300];

	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	assert_int_equal(system(cmd), 0);
	free(dir);
}

/*
 * TLS settings are checked when the sink is made, files read included, so
 * that a start or a reload refuses them before anything ships; the message
 * names the setting.
 */
static void
tls_settings_are_checked_when_the_sink_is_made(void **state)
{
	char *dir = make_pki();
	char *ca = path_in(dir, "ca.pem"), *cert = path_in(dir, "client.pem");
	char *key = path_in(dir, "client.key"), *other = path_in(dir, "other.key");
	char *locked = path_in(dir, "client-encrypted.key"), *missing = path_in(dir, "none.pem");
	const struct {
		enum audit_sink_type type;
		enum audit_sink_proto proto;
		const char *url, *ca, *name, *cert, *key;
		const char *mention;
	} bad[] = {
	    {AUDIT_SINK_SYSLOG, AUDIT_PROTO_TLS, NULL, ca, NULL, cert, NULL,
	     "cert_file and key_file go together"},
	    {AUDIT_SINK_SYSLOG, AUDIT_PROTO_TLS, NULL, ca, NULL, NULL, key,
	     "cert_file and key_file go together"},
	    {AUDIT_SINK_SYSLOG, AUDIT_PROTO_TLS, NULL, missing, NULL, NULL, NULL,
	     "ca_file %s/none.pem cannot be read: No such file or directory"},
	    {AUDIT_SINK_SYSLOG, AUDIT_PROTO_TLS, NULL, other, NULL, NULL, NULL,
	     "ca_file %s/other.key holds no usable PEM certificate"},
	    {AUDIT_SINK_SYSLOG, AUDIT_PROTO_TLS, NULL, ca, NULL, other, key,
	     "cert_file %s/other.key is not a PEM certificate chain"},
	    {AUDIT_SINK_SYSLOG, AUDIT_PROTO_TLS, NULL, ca, NULL, cert, other,
	     "key_file %s/other.key is not an unencrypted PEM key matching cert_file"},
	    {AUDIT_SINK_SYSLOG, AUDIT_PROTO_TLS, NULL, ca, NULL, cert, locked,
	     "key_file %s/client-encrypted.key is not an unencrypted PEM key"},
	    {AUDIT_SINK_SYSLOG, AUDIT_PROTO_TLS, NULL, ca, NULL, cert, missing,
	     "key_file %s/none.pem cannot be read"},
	    {AUDIT_SINK_SYSLOG, AUDIT_PROTO_TLS, NULL, ca, "siem example", NULL, NULL,
	     "server_name \"siem example\" is neither a DNS name nor an IP address"},
	    {AUDIT_SINK_FILE, AUDIT_PROTO_TLS, NULL, NULL, NULL, NULL, NULL,
	     "protocol \"tls\" is for syslog sinks"},
	    {AUDIT_SINK_WEBHOOK, AUDIT_PROTO_TLS, "https://127.0.0.1/hook", NULL, NULL, NULL, NULL,
	     "a webhook takes TLS from an https:// url"},
	    /* TLS settings on a sink without TLS: it would not be protected. */
	    {AUDIT_SINK_SYSLOG, AUDIT_PROTO_TCP, NULL, ca, NULL, NULL, NULL,
	     "ca_file is for TLS, which this sink does not use"},
	    {AUDIT_SINK_SYSLOG, AUDIT_PROTO_UDP, NULL, NULL, "localhost", NULL, NULL,
	     "server_name is for TLS"},
	    {AUDIT_SINK_WEBHOOK, AUDIT_PROTO_TCP, "http://127.0.0.1/hook", NULL, NULL, cert, key,
	     "cert_file is for TLS"},
	    {AUDIT_SINK_FILE, AUDIT_PROTO_TCP, NULL, ca, NULL, NULL, NULL, "ca_file is for TLS"},
	};

	(void)state;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct audit_sink_config c;
		struct audit_sink *s = (struct audit_sink *)1;
		struct idp_diag d;
		const char *at;
		char want[512];

		audit_sink_config_defaults(&c);
		c.type = bad[i].type;
		c.protocol = bad[i].proto;
		c.path = "/tmp/idpd-tls-test.log";
		c.address = "127.0.0.1:6514";
		c.url = bad[i].url;
		c.ca_file = bad[i].ca;
		c.server_name = bad[i].name;
		c.cert_file = bad[i].cert;
		c.key_file = bad[i].key;
		idp_diag_init(&d);
		assert_int_equal(audit_sink_new(&c, &s, &d), IDP_EINVAL);
		assert_null(s);
		/* "%s" in the mention stands for the PKI's directory. */
		at = strstr(bad[i].mention, "%s");
		if (at != NULL)
			snprintf(want, sizeof(want), "%.*s%s%s", (int)(at - bad[i].mention),
			         bad[i].mention, dir, at + 2);
		else
			snprintf(want, sizeof(want), "%s", bad[i].mention);
		if (strstr(idp_diag_str(&d), want) == NULL)
			fail_msg("case %zu: \"%s\" lacks \"%s\"", i, idp_diag_str(&d), want);
		/* Nothing of a key in the message. */
		assert_null(strstr(idp_diag_str(&d), "PRIVATE KEY"));
	}

	/* Good settings, with and without a client certificate. */
	{
		struct audit_sink_config c;
		struct audit_sink *s = NULL;
		struct idp_diag d;

		audit_sink_config_defaults(&c);
		c.type = AUDIT_SINK_SYSLOG;
		c.protocol = AUDIT_PROTO_TLS;
		c.address = "127.0.0.1:6514";
		c.ca_file = ca;
		c.cert_file = cert;
		c.key_file = key;
		idp_diag_init(&d);
		if (audit_sink_new(&c, &s, &d) != IDP_OK)
			fail_msg("%s", idp_diag_str(&d));
		assert_string_equal(audit_sink_describe(s), "syslog tls 127.0.0.1:6514 (json)");
		audit_sink_free(s);

		audit_sink_config_defaults(&c);
		c.type = AUDIT_SINK_WEBHOOK;
		c.url = "https://127.0.0.1:8443/hook";
		c.ca_file = ca;
		c.server_name = "localhost";
		idp_diag_init(&d);
		if (audit_sink_new(&c, &s, &d) != IDP_OK)
			fail_msg("%s", idp_diag_str(&d));
		assert_string_equal(audit_sink_describe(s), "webhook https://127.0.0.1:8443/hook");
		audit_sink_free(s);
	}
	free(ca);
	free(cert);
	free(key);
	free(other);
	free(locked);
	free(missing);
	remove_pki(dir);
}

/*
 * The name a TLS sink checks the receiver's certificate against is taken
 * label by label (1-63 letters, digits, '-' or '_'; no '-' at a label's
 * ends; no empty label, so no trailing dot), and a bad one is blamed on
 * the setting it came from: server_name, or the host of address or url.
 */
static void
tls_names_are_checked_label_by_label(void **state)
{
	char *dir = make_pki(), *ca = path_in(dir, "ca.pem");
	char long_label[80], long_name[300];
	const struct {
		enum audit_sink_type type;
		const char *where, *name; /* where: an address or a url */
		const char *mention;
	} bad[] = {
	    {AUDIT_SINK_SYSLOG, "127.0.0.1:6514", "siem..example", "server_name \"siem..example\""},
	    {AUDIT_SINK_SYSLOG, "127.0.0.1:6514", "siem.example.", "server_name \"siem.example.\""},
	    {AUDIT_SINK_SYSLOG, "127.0.0.1:6514", ".siem.example", "server_name \".siem.example\""},
	    {AUDIT_SINK_SYSLOG, "127.0.0.1:6514", "-siem.example", "server_name \"-siem.example\""},
	    {AUDIT_SINK_SYSLOG, "127.0.0.1:6514", "siem-.example", "server_name \"siem-.example\""},
	    {AUDIT_SINK_SYSLOG, "127.0.0.1:6514", "siem.-example", "server_name \"siem.-example\""},
	    {AUDIT_SINK_SYSLOG, "127.0.0.1:6514", "siem example", "server_name \"siem example\""},
	    {AUDIT_SINK_SYSLOG, "127.0.0.1:6514",
	     "s\xc3\xaf"
	     "em.example",
	     "server_name \"s"},
	    {AUDIT_SINK_SYSLOG, "127.0.0.1:6514", "[::1]", "server_name \"[::1]\""},
	    {AUDIT_SINK_SYSLOG, "127.0.0.1:6514", long_label, "server_name \"aaaa"},
	    {AUDIT_SINK_SYSLOG, "127.0.0.1:6514", long_name, "server_name \"a.a."},
	    {AUDIT_SINK_SYSLOG, "siem..example:6514", NULL,
	     "the host \"siem..example\" of address"},
	    {AUDIT_SINK_SYSLOG, "siem.example.:6514", NULL,
	     "the host \"siem.example.\" of address"},
	    {AUDIT_SINK_SYSLOG, "siem-.example:6514", NULL,
	     "the host \"siem-.example\" of address"},
	    {AUDIT_SINK_WEBHOOK, "https://portal..example/hook", NULL,
	     "the host \"portal..example\" of url"},
	};
	static const char *const good[][2] = {
	    /* {address, server_name} */
	    {"siem_rx:6514", NULL},
	    {"127.0.0.1:6514", "_syslog.siem.example"},
	    {"127.0.0.1:6514", "siem-rx.example"},
	    {"127.0.0.1:6514", "SIEM.Example"},
	    {"127.0.0.1:6514", "xn--bcher-kva.example"},
	    {"127.0.0.1:6514", "localhost"},
	    {"127.0.0.1:6514", "10.0.0.7"},
	    {"127.0.0.1:6514", "::1"},
	    {"[::1]:6514", NULL},
	    {"siem.example:6514", NULL},
	};

	(void)state;
	/* One label of 64 bytes; 127 labels of one byte: 253 bytes, then 255. */
	memset(long_label, 'a', 64);
	long_label[64] = '\0';
	for (size_t i = 0; i < 128; i++)
		memcpy(long_name + 2 * i, "a.", 2);
	long_name[255] = '\0';
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct audit_sink_config c;
		struct audit_sink *s = (struct audit_sink *)1;
		struct idp_diag d;

		audit_sink_config_defaults(&c);
		c.type = bad[i].type;
		c.protocol = bad[i].type == AUDIT_SINK_SYSLOG ? AUDIT_PROTO_TLS : AUDIT_PROTO_TCP;
		c.address = bad[i].where;
		c.url = bad[i].where;
		c.server_name = bad[i].name;
		c.ca_file = ca;
		idp_diag_init(&d);
		assert_int_equal(audit_sink_new(&c, &s, &d), IDP_EINVAL);
		assert_null(s);
		if (strstr(idp_diag_str(&d), bad[i].mention) == NULL ||
		    strstr(idp_diag_str(&d), "is neither a DNS name nor an IP address") == NULL)
			fail_msg("case %zu: \"%s\" lacks \"%s\"", i, idp_diag_str(&d),
			         bad[i].mention);
		/* Blamed on the host, it says how to go on; no server_name was set. */
		if (bad[i].name == NULL && (strstr(idp_diag_str(&d), "set server_name") == NULL ||
		                            strstr(idp_diag_str(&d), "server_name \"") != NULL))
			fail_msg("case %zu: \"%s\"", i, idp_diag_str(&d));
	}
	/* 63 bytes are a label, 253 a name. */
	long_label[63] = '\0';
	long_name[253] = '\0';
	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]) + 2; i++) {
		struct audit_sink_config c;
		struct audit_sink *s = NULL;
		struct idp_diag d;
		size_t k = sizeof(good) / sizeof(good[0]);

		audit_sink_config_defaults(&c);
		c.type = AUDIT_SINK_SYSLOG;
		c.protocol = AUDIT_PROTO_TLS;
		c.address = i < k ? good[i][0] : "127.0.0.1:6514";
		c.server_name = i < k ? good[i][1] : i == k ? long_label : long_name;
		c.ca_file = ca;
		idp_diag_init(&d);
		if (audit_sink_new(&c, &s, &d) != IDP_OK)
			fail_msg("case %zu: %s", i, idp_diag_str(&d));
		audit_sink_free(s);
	}
	free(ca);
	remove_pki(dir);
}

static void
sink_accepts_ipv6_addresses_and_describes_itself(void **state)
{
	struct audit_sink_config c;
	struct audit_sink *s;
	struct idp_diag d;

	(void)state;
	audit_sink_config_defaults(&c);
	c.type = AUDIT_SINK_SYSLOG;
	c.address = "[::1]:6514";
	c.protocol = AUDIT_PROTO_UDP;
	c.format = AUDIT_FORMAT_LEEF;
	idp_diag_init(&d);
	assert_int_equal(audit_sink_new(&c, &s, &d), IDP_OK);
	assert_string_equal(audit_sink_describe(s), "syslog udp [::1]:6514 (leef)");
	audit_sink_free(s);
	audit_sink_free(NULL);
}

static void
sink_names_parse_back(void **state)
{
	enum audit_sink_type t;
	enum audit_sink_proto p;

	(void)state;
	assert_int_equal(audit_sink_type_parse("syslog", &t), IDP_OK);
	assert_int_equal(t, AUDIT_SINK_SYSLOG);
	assert_int_equal(audit_sink_type_parse("kafka", &t), IDP_EINVAL);
	assert_int_equal(audit_sink_proto_parse("udp", &p), IDP_OK);
	assert_int_equal(p, AUDIT_PROTO_UDP);
	assert_int_equal(audit_sink_proto_parse("TCP", &p), IDP_EINVAL);
	assert_int_equal(audit_sink_proto_parse("tls", &p), IDP_OK);
	assert_int_equal(p, AUDIT_PROTO_TLS);
	assert_string_equal(audit_sink_proto_name(AUDIT_PROTO_TLS), "tls");
	assert_string_equal(audit_sink_type_name(AUDIT_SINK_FILE), "file");
	assert_int_equal(audit_sink_type_parse("webhook", &t), IDP_OK);
	assert_int_equal(t, AUDIT_SINK_WEBHOOK);
	assert_string_equal(audit_sink_proto_name(AUDIT_PROTO_TCP), "tcp");
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(file_sink_appends_exactly_the_lines),
	    cmocka_unit_test(file_sink_follows_rotation_after_a_flush),
	    cmocka_unit_test(file_sink_in_missing_directory_fails_permanently),
	    cmocka_unit_test(sink_refuses_oversized_or_broken_lines),
	    cmocka_unit_test(tcp_sink_sends_octet_counted_rfc5424_frames),
	    cmocka_unit_test(tcp_sink_to_a_closed_port_asks_to_retry),
	    cmocka_unit_test(tcp_sink_reconnects_when_the_receiver_comes_back),
	    cmocka_unit_test(tcp_sink_reset_before_a_flush_asks_to_resend),
	    cmocka_unit_test(udp_sink_sends_one_datagram_per_message),
	    cmocka_unit_test(udp_sink_truncates_on_a_utf8_boundary),
	    cmocka_unit_test(webhook_posts_the_lines_as_one_json_document),
	    cmocka_unit_test(webhook_without_a_2xx_asks_to_resend),
	    cmocka_unit_test(webhook_splits_a_large_batch),
	    cmocka_unit_test(webhook_refuses_bad_settings),
	    cmocka_unit_test(sink_new_rejects_bad_settings),
	    cmocka_unit_test(tls_settings_are_checked_when_the_sink_is_made),
	    cmocka_unit_test(tls_names_are_checked_label_by_label),
	    cmocka_unit_test(sink_accepts_ipv6_addresses_and_describes_itself),
	    cmocka_unit_test(sink_names_parse_back),
	};
	return cmocka_run_group_tests_name("audit_sink", tests, NULL, NULL);
}
