/*
 * harness.c - integration-test support (see harness.h).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <libpq-fe.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "harness.h"

static const char *
env_or(const char *name, const char *dflt)
{
	const char *v = getenv(name);

	return v != NULL && v[0] != '\0' ? v : dflt;
}

static void
sleep_ms(int ms)
{
	struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};

	nanosleep(&ts, NULL);
}

void
harness_db_url(const char *name, char *out, size_t len)
{
	snprintf(out, len, "postgresql://postgres@127.0.0.1:%s/%s",
	         env_or("IDPD_TEST_PG_PORT", "55400"), name);
}

static void
quiet(void *arg, const char *msg)
{
	(void)arg;
	(void)msg;
}

static PGconn *
connect_db(const char *name)
{
	char url[256];
	PGconn *pg;

	harness_db_url(name, url, sizeof(url));
	pg = PQconnectdb(url);
	if (PQstatus(pg) != CONNECTION_OK) {
		fprintf(stderr, "harness: connect %s: %s", name, PQerrorMessage(pg));
		PQfinish(pg);
		return NULL;
	}
	PQsetNoticeProcessor(pg, quiet, NULL);
	return pg;
}

int
harness_sql(const char *name, const char *sql)
{
	PGconn *pg = connect_db(name);
	PGresult *r;
	int rc;

	if (pg == NULL)
		return -1;
	r = PQexec(pg, sql);
	rc = (PQresultStatus(r) == PGRES_COMMAND_OK || PQresultStatus(r) == PGRES_TUPLES_OK) ? 0
	                                                                                     : -1;
	if (rc != 0)
		fprintf(stderr, "harness: %s: %s", sql, PQresultErrorMessage(r));
	PQclear(r);
	PQfinish(pg);
	return rc;
}

int
harness_sql_value(const char *name, const char *sql, char *out, size_t len)
{
	PGconn *pg = connect_db(name);
	PGresult *r;
	int rc = -1;

	if (pg == NULL)
		return -1;
	r = PQexec(pg, sql);
	if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) >= 1) {
		snprintf(out, len, "%s", PQgetvalue(r, 0, 0));
		rc = 0;
	} else {
		fprintf(stderr, "harness: %s: %s", sql, PQresultErrorMessage(r));
	}
	PQclear(r);
	PQfinish(pg);
	return rc;
}

int
harness_db_create(const char *name)
{
	char sql[256];

	snprintf(sql, sizeof(sql), "DROP DATABASE IF EXISTS \"%s\" WITH (FORCE)", name);
	if (harness_sql("postgres", sql) != 0)
		return -1;
	snprintf(sql, sizeof(sql), "CREATE DATABASE \"%s\" TEMPLATE idpd_template", name);
	return harness_sql("postgres", sql);
}

int
harness_free_port(void)
{
	struct sockaddr_in sa;
	socklen_t sl = sizeof(sa);
	int fd = socket(AF_INET, SOCK_STREAM, 0), port = -1;

	if (fd < 0)
		return -1;
	memset(&sa, 0, sizeof(sa));
	sa.sin_family = AF_INET;
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0 &&
	    getsockname(fd, (struct sockaddr *)&sa, &sl) == 0)
		port = ntohs(sa.sin_port);
	close(fd);
	return port;
}

int
harness_connect(int port)
{
	struct sockaddr_in sa;
	int fd = socket(AF_INET, SOCK_STREAM, 0);

	if (fd < 0)
		return -1;
	memset(&sa, 0, sizeof(sa));
	sa.sin_family = AF_INET;
	sa.sin_port = htons((uint16_t)port);
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
		close(fd);
		return -1;
	}
	return fd;
}

void
harness_idpd_dump_log(const struct idpd_proc *p)
{
	FILE *f = fopen(p->log, "r");
	char line[1024];

	if (f == NULL)
		return;
	fprintf(stderr, "---- idpd log (%s) ----\n", p->log);
	while (fgets(line, sizeof(line), f) != NULL)
		fputs(line, stderr);
	fprintf(stderr, "---- end of log ----\n");
	fclose(f);
}

bool
harness_log_contains(const struct idpd_proc *p, const char *s)
{
	return harness_file_contains(p->log, s);
}

int
harness_idpd_start(struct idpd_proc *p, const char *db, const char *server_keys,
                   const char *extra_toml)
{
	return harness_idpd_start_ex(p, db, server_keys, extra_toml, false);
}

int
harness_idpd_start_ex(struct idpd_proc *p, const char *db, const char *server_keys,
                      const char *extra_toml, bool migrate)
{
	const char *top = env_or("IDPD_TEST_TOP", ".");
	const char *bin = env_or("IDPD_BIN", "build/idpd");
	char tmpl[] = "/tmp/idpd-test-XXXXXX", url[256];
	FILE *f;

	memset(p, 0, sizeof(*p));
	if (mkdtemp(tmpl) == NULL)
		return -1;
	snprintf(p->dir, sizeof(p->dir), "%s", tmpl);
	snprintf(p->config, sizeof(p->config), "%s/idpd.toml", p->dir);
	snprintf(p->log, sizeof(p->log), "%s/idpd.log", p->dir);
	snprintf(p->db, sizeof(p->db), "%s", db);
	p->port = harness_free_port();
	snprintf(p->base, sizeof(p->base), "http://127.0.0.1:%d", p->port);
	harness_db_url(db, url, sizeof(url));
	f = fopen(p->config, "w");
	if (f == NULL)
		return -1;
	/* A test's own shutdown_timeout replaces the default one. */
	fprintf(f,
	        "[server]\nlisten = \"127.0.0.1\"\nport = %d\nthreads = 2\n"
	        "%s%s"
	        "[database]\nurl = \"%s\"\npool_size = 4\nacquire_timeout = \"1s\"\n"
	        "connect_timeout = \"2s\"\n"
	        "[node]\nmigrations_dir = \"%s/migrations\"\ninstance_id = \"test-%d\"\n"
	        "[log]\nlevel = \"debug\"\n",
	        p->port,
	        server_keys != NULL && strstr(server_keys, "shutdown_timeout") != NULL
	            ? ""
	            : "shutdown_timeout = \"10s\"\n",
	        server_keys != NULL ? server_keys : "", url, top, p->port);
	/* The shipped policy set, unless the test brings its own. */
	if (extra_toml == NULL || strstr(extra_toml, "[policy]") == NULL)
		fprintf(f, "[policy]\ndir = \"%s/policies\"\n", top);
	if (extra_toml != NULL)
		fputs(extra_toml, f);
	fclose(f);

	p->pid = fork();
	if (p->pid < 0)
		return -1;
	if (p->pid == 0) {
		int fd = open(p->log, O_WRONLY | O_CREAT | O_TRUNC, 0600);

		/* A test binary that fails or dies takes its idpd children with it:
		 * a stray idpd would reconnect to the next database of the same name. */
		if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() == 1)
			_exit(127);

		if (fd >= 0) {
			dup2(fd, STDOUT_FILENO);
			dup2(fd, STDERR_FILENO);
			close(fd);
		}
		/* The test's environment would otherwise override the config. */
		unsetenv("IDPD_DATABASE_URL");
		/* Every idpd needs a KEK.  A test may set its own IDPD_KEK, or set it
		 * empty to have idpd read keys.kek_file instead. */
		setenv("IDPD_KEK", HARNESS_KEK, 0);
		if (migrate)
			execl(bin, bin, "serve", "--config", p->config, "--migrate", (char *)NULL);
		else
			execl(bin, bin, "serve", "--config", p->config, (char *)NULL);
		_exit(127);
	}
	for (int i = 0; i < 200; i++) {
		struct http_resp r;
		char u[128];
		int status;

		if (waitpid(p->pid, &status, WNOHANG) == p->pid) {
			p->exit_status = WIFEXITED(status) ? WEXITSTATUS(status) : 128;
			p->pid = 0;
			return -1;
		}
		snprintf(u, sizeof(u), "%s/healthz", p->base);
		if (harness_http("GET", u, NULL, NULL, 0, &r) == 0 && r.status == 200) {
			harness_resp_free(&r);
			return 0;
		}
		harness_resp_free(&r);
		sleep_ms(50);
	}
	fprintf(stderr, "harness: idpd did not answer /healthz in 10 s\n");
	harness_idpd_dump_log(p);
	harness_idpd_stop(p, SIGKILL, 2000);
	return -1;
}

int
harness_idpd_stop(struct idpd_proc *p, int sig, int timeout_ms)
{
	int status;

	if (p->pid <= 0)
		return -1;
	kill(p->pid, sig);
	for (int waited = 0; waited <= timeout_ms; waited += 10) {
		pid_t w = waitpid(p->pid, &status, WNOHANG);

		if (w == p->pid) {
			p->pid = 0;
			if (WIFEXITED(status))
				return WEXITSTATUS(status);
			return 128 + WTERMSIG(status);
		}
		sleep_ms(10);
	}
	kill(p->pid, SIGKILL);
	waitpid(p->pid, &status, 0);
	p->pid = 0;
	return -1;
}

/* ---- HTTP ---- */

struct sink {
	char *data;
	size_t len;
};

static size_t
on_data(char *ptr, size_t size, size_t n, void *arg)
{
	struct sink *s = arg;
	size_t add = size * n;

	s->data = realloc(s->data, s->len + add + 1);
	if (s->data == NULL)
		abort();
	memcpy(s->data + s->len, ptr, add);
	s->len += add;
	s->data[s->len] = '\0';
	return add;
}

int
harness_http(const char *method, const char *url, const char *const *headers, const char *body,
             size_t body_len, struct http_resp *r)
{
	static bool inited;
	struct sink b = {NULL, 0}, h = {NULL, 0};
	struct curl_slist *hl = NULL;
	CURL *c;
	CURLcode cc;

	memset(r, 0, sizeof(*r));
	if (!inited) {
		curl_global_init(CURL_GLOBAL_DEFAULT);
		inited = true;
	}
	c = curl_easy_init();
	if (c == NULL)
		return -1;
	curl_easy_setopt(c, CURLOPT_URL, url);
	curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
	if (strcmp(method, "HEAD") == 0)
		curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
	curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_data);
	curl_easy_setopt(c, CURLOPT_HEADERDATA, &h);
	curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 20000L);
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(c, CURLOPT_PATH_AS_IS, 1L);
	for (size_t i = 0; headers != NULL && headers[i] != NULL; i++)
		hl = curl_slist_append(hl, headers[i]);
	if (body != NULL) {
		curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
		curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)body_len);
		hl = curl_slist_append(hl, "Expect:");
	}
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, hl);
	cc = curl_easy_perform(c);
	if (cc == CURLE_OK)
		curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r->status);
	curl_slist_free_all(hl);
	curl_easy_cleanup(c);
	r->body = b.data ? b.data : calloc(1, 1);
	r->len = b.len;
	r->headers = h.data ? h.data : calloc(1, 1);
	if (r->len > 0)
		r->json = json_loadb(r->body, r->len, 0, NULL);
	return cc == CURLE_OK ? 0 : -1;
}

int
harness_call(const struct idpd_proc *p, const char *method, const char *path, const char *bearer,
             const char *body, struct http_resp *r)
{
	char url[1024], auth[4200];
	const char *h[3];
	int n = 0;

	snprintf(auth, sizeof(auth), "Authorization: Bearer %s", bearer ? bearer : "");
	if (bearer != NULL)
		h[n++] = auth;
	if (body != NULL)
		h[n++] = "Content-Type: application/json";
	h[n] = NULL;
	snprintf(url, sizeof(url), "%s%s", p->base, path);
	return harness_http(method, url, h, body, body ? strlen(body) : 0, r);
}

long
harness_status(const struct idpd_proc *p, const char *method, const char *path, const char *bearer,
               const char *body)
{
	struct http_resp r;
	long st = -1;

	if (harness_call(p, method, path, bearer, body, &r) == 0)
		st = r.status;
	harness_resp_free(&r);
	return st;
}

void
harness_resp_free(struct http_resp *r)
{
	free(r->body);
	free(r->headers);
	json_decref(r->json);
	memset(r, 0, sizeof(*r));
}

bool
harness_resp_header(const struct http_resp *r, const char *name, char *out, size_t len)
{
	const char *p = r->headers;
	size_t n = strlen(name);

	while (p != NULL && *p != '\0') {
		const char *eol = strstr(p, "\r\n");
		size_t ll = eol ? (size_t)(eol - p) : strlen(p);

		if (ll > n && strncasecmp(p, name, n) == 0 && p[n] == ':') {
			const char *v = p + n + 1;
			size_t vl;

			while (*v == ' ')
				v++;
			vl = ll - (size_t)(v - p);
			snprintf(out, len, "%.*s", (int)vl, v);
			return true;
		}
		p = eol ? eol + 2 : NULL;
	}
	return false;
}

/* ---- the cluster ---- */

static int
pg_script(const char *args)
{
	char cmd[1024];

	snprintf(cmd, sizeof(cmd), "'%s/tests/support/pg.sh' %s >/dev/null 2>&1",
	         env_or("IDPD_TEST_TOP", "."), args);
	return system(cmd) == 0 ? 0 : -1;
}

int
harness_pg_stop(const char *mode)
{
	char args[512];

	snprintf(args, sizeof(args), "stop '%s' %s", env_or("IDPD_TEST_PG_DIR", "build/pg"), mode);
	return pg_script(args);
}

int
harness_pg_start(void)
{
	char args[512];

	snprintf(args, sizeof(args), "start '%s' %s fast", env_or("IDPD_TEST_PG_DIR", "build/pg"),
	         env_or("IDPD_TEST_PG_PORT", "55400"));
	return pg_script(args);
}

pid_t
harness_idpd_spawn(const char *const *args, const char *out_path)
{
	const char *bin = env_or("IDPD_BIN", "build/idpd");
	const char *argv[32];
	size_t n = 0;
	pid_t pid;

	argv[n++] = bin;
	for (size_t i = 0; args[i] != NULL && n < 31; i++)
		argv[n++] = args[i];
	argv[n] = NULL;
	pid = fork();
	if (pid == 0) {
		int fd = open(out_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);

		if (fd >= 0) {
			dup2(fd, STDOUT_FILENO);
			dup2(fd, STDERR_FILENO);
			close(fd);
		}
		unsetenv("IDPD_DATABASE_URL");
		execv(bin, (char *const *)argv);
		_exit(127);
	}
	return pid;
}

int
harness_wait(pid_t pid)
{
	int status;

	if (pid <= 0 || waitpid(pid, &status, 0) != pid)
		return -1;
	return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

int
harness_idpd_run(const char *const *args, const char *out_path)
{
	return harness_wait(harness_idpd_spawn(args, out_path));
}

bool
harness_file_contains(const char *path, const char *s)
{
	FILE *f = fopen(path, "r");
	char line[4096];
	bool found = false;

	if (f == NULL)
		return false;
	while (!found && fgets(line, sizeof(line), f) != NULL)
		found = strstr(line, s) != NULL;
	fclose(f);
	return found;
}

/* ---- a webhook receiver ---- */

/* Read one request (head, then Content-Length bytes of body); NULL on EOF or 5 s of silence. */
static char *
hook_read(int fd)
{
	size_t cap = 8192, len = 0;
	char *buf = malloc(cap);

	if (buf == NULL)
		return NULL;
	for (;;) {
		struct pollfd p = {fd, POLLIN, 0};
		const char *end, *cl;
		ssize_t n;

		buf[len] = '\0';
		if ((end = strstr(buf, "\r\n\r\n")) != NULL) {
			size_t want = (size_t)(end + 4 - buf);

			cl = strcasestr(buf, "\r\nContent-Length:");
			if (cl != NULL && cl < end)
				want += strtoul(cl + 17, NULL, 10);
			if (len >= want)
				return buf;
		}
		if (len + 4097 > cap) {
			char *more = realloc(buf, cap * 2);

			if (more == NULL)
				break;
			buf = more;
			cap *= 2;
		}
		if (poll(&p, 1, 5000) <= 0 || (n = read(fd, buf + len, 4096)) <= 0)
			break;
		len += (size_t)n;
	}
	free(buf);
	return NULL;
}

static void *
hook_run(void *arg)
{
	struct harness_hook *h = arg;

	for (;;) {
		struct pollfd p = {h->lfd, POLLIN, 0};
		char answer[128], *req;
		size_t i;
		int fd, status;
		bool stop;

		pthread_mutex_lock(&h->lock);
		stop = h->stop;
		pthread_mutex_unlock(&h->lock);
		if (stop)
			break;
		if (poll(&p, 1, 50) <= 0)
			continue;
		fd = accept(h->lfd, NULL, NULL);
		if (fd < 0)
			continue;
		req = hook_read(fd);
		if (req != NULL) {
			pthread_mutex_lock(&h->lock);
			i = h->n_requests;
			status = h->statuses[i < h->n_statuses ? i : h->n_statuses - 1];
			h->requests = realloc(h->requests, (i + 1) * sizeof(*h->requests));
			h->requests[i] = req;
			h->n_requests = i + 1;
			pthread_mutex_unlock(&h->lock);
			snprintf(
			    answer, sizeof(answer),
			    "HTTP/1.1 %d Status\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
			    status);
			if (write(fd, answer, strlen(answer)) < 0)
				perror("hook: write");
		}
		close(fd);
	}
	return NULL;
}

int
harness_hook_start(struct harness_hook *h, const int *statuses, size_t n)
{
	struct sockaddr_in sa;
	socklen_t sl = sizeof(sa);

	memset(h, 0, sizeof(*h));
	if (n == 0 || n > 4)
		return -1;
	memcpy(h->statuses, statuses, n * sizeof(*statuses));
	h->n_statuses = n;
	h->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (h->lfd < 0)
		return -1;
	memset(&sa, 0, sizeof(sa));
	sa.sin_family = AF_INET;
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (bind(h->lfd, (struct sockaddr *)&sa, sizeof(sa)) != 0 || listen(h->lfd, 16) != 0 ||
	    getsockname(h->lfd, (struct sockaddr *)&sa, &sl) != 0) {
		close(h->lfd);
		return -1;
	}
	h->port = ntohs(sa.sin_port);
	pthread_mutex_init(&h->lock, NULL);
	if (pthread_create(&h->thread, NULL, hook_run, h) != 0) {
		close(h->lfd);
		return -1;
	}
	return 0;
}

size_t
harness_hook_count(struct harness_hook *h)
{
	size_t n;

	pthread_mutex_lock(&h->lock);
	n = h->n_requests;
	pthread_mutex_unlock(&h->lock);
	return n;
}

char *
harness_hook_request(struct harness_hook *h, size_t i)
{
	char *copy = NULL;

	pthread_mutex_lock(&h->lock);
	if (i < h->n_requests)
		copy = strdup(h->requests[i]);
	pthread_mutex_unlock(&h->lock);
	return copy;
}

bool
harness_hook_wait(struct harness_hook *h, const char *s, int timeout_ms)
{
	for (int waited = 0;; waited += 20) {
		bool found = false;

		pthread_mutex_lock(&h->lock);
		for (size_t i = 0; i < h->n_requests && !found; i++)
			found = strstr(h->requests[i], s) != NULL;
		pthread_mutex_unlock(&h->lock);
		if (found)
			return true;
		if (waited >= timeout_ms)
			return false;
		usleep(20 * 1000);
	}
}

void
harness_hook_stop(struct harness_hook *h)
{
	pthread_mutex_lock(&h->lock);
	h->stop = true;
	pthread_mutex_unlock(&h->lock);
	pthread_join(h->thread, NULL);
	close(h->lfd);
	for (size_t i = 0; i < h->n_requests; i++)
		free(h->requests[i]);
	free(h->requests);
	pthread_mutex_destroy(&h->lock);
}

/* ---- a TLS receiver ---- */

int
harness_tls_pki(char *dir, size_t len)
{
	char cmd[1024];

	if (snprintf(dir, len, "/tmp/idpd-pki-XXXXXX") >= (int)len || mkdtemp(dir) == NULL)
		return -1;
	snprintf(cmd, sizeof(cmd), "%s/tests/support/tls-pki.sh %s", env_or("IDPD_TEST_TOP", "."),
	         dir);
	return system(cmd) == 0 ? 0 : -1;
}

void
harness_tls_pki_remove(const char *dir)
{
	char cmd[300];

	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	if (system(cmd) != 0)
		fprintf(stderr, "harness: cannot remove %s\n", dir);
}

/* A client certificate's verdict, late if the test asked for a slow refusal. */
static int
tls_verify(int ok, X509_STORE_CTX *x)
{
	SSL *ssl = X509_STORE_CTX_get_ex_data(x, SSL_get_ex_data_X509_STORE_CTX_idx());
	struct harness_tls *t = ssl != NULL ? SSL_get_app_data(ssl) : NULL;
	int delay = 0;

	if (!ok && t != NULL) {
		pthread_mutex_lock(&t->lock);
		delay = t->slow_refusal_ms;
		pthread_mutex_unlock(&t->lock);
	}
	if (delay > 0)
		sleep_ms(delay);
	return ok;
}

static SSL_CTX *
tls_server_ctx(const char *cert, const char *key, const char *client_ca)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());

	if (ctx == NULL || SSL_CTX_use_certificate_chain_file(ctx, cert) != 1 ||
	    SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1)
		goto fail;
	if (client_ca != NULL) {
		STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(client_ca);

		if (names == NULL || SSL_CTX_load_verify_locations(ctx, client_ca, NULL) != 1)
			goto fail;
		SSL_CTX_set_client_CA_list(ctx, names);
		SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT,
		                   tls_verify);
	}
	return ctx;
fail:
	ERR_print_errors_fp(stderr);
	SSL_CTX_free(ctx);
	return NULL;
}

static void
tls_keep(struct harness_tls *t, const char *p, size_t n)
{
	pthread_mutex_lock(&t->lock);
	t->data = realloc(t->data, t->len + n + 1);
	memcpy(t->data + t->len, p, n);
	t->len += n;
	t->data[t->len] = '\0';
	pthread_mutex_unlock(&t->lock);
}

static bool
tls_stopping(struct harness_tls *t)
{
	bool stop;

	pthread_mutex_lock(&t->lock);
	stop = t->stop;
	pthread_mutex_unlock(&t->lock);
	return stop;
}

/* One connection, after its handshake: read until it ends (syslog) or one request (http). */
static void
tls_serve(struct harness_tls *t, SSL *ssl, int fd)
{
	char req[65536];
	size_t got = 0;

	while (!tls_stopping(t)) {
		struct pollfd p = {fd, POLLIN, 0};
		const char *end;
		size_t n;

		if (SSL_pending(ssl) == 0 && poll(&p, 1, 100) <= 0)
			continue;
		if (SSL_read_ex(ssl, req + got, sizeof(req) - 1 - got, &n) != 1)
			return;
		if (!t->http) {
			tls_keep(t, req, n);
			continue;
		}
		got += n;
		req[got] = '\0';
		end = strstr(req, "\r\n\r\n");
		if (end != NULL) {
			const char *cl = strcasestr(req, "\r\nContent-Length:");
			size_t want = (size_t)(end + 4 - req);
			static const char answer[] = "HTTP/1.1 204 No Content\r\nContent-Length: "
			                             "0\r\nConnection: close\r\n\r\n";

			if (cl != NULL && cl < end)
				want += strtoul(cl + 17, NULL, 10);
			if (got >= want) {
				char *ans;
				size_t w, ans_len;

				tls_keep(t, req, got);
				pthread_mutex_lock(&t->lock);
				ans_len = t->answer != NULL ? t->answer_len : strlen(answer);
				ans = malloc(ans_len);
				memcpy(ans, t->answer != NULL ? t->answer : answer, ans_len);
				t->requests++;
				pthread_mutex_unlock(&t->lock);
				if (SSL_write_ex(ssl, ans, ans_len, &w) == 1)
					SSL_shutdown(ssl);
				free(ans);
				return;
			}
		}
		if (got == sizeof(req) - 1)
			return;
	}
}

static void *
tls_run(void *arg)
{
	struct harness_tls *t = arg;

	while (!tls_stopping(t)) {
		struct pollfd p = {t->lfd, POLLIN, 0};
		struct timeval tv = {5, 0};
		SSL_CTX *ctx;
		SSL *ssl;
		X509 *peer;
		bool tickets;
		int fd;

		if (poll(&p, 1, 50) <= 0)
			continue;
		fd = accept(t->lfd, NULL, NULL);
		if (fd < 0)
			continue;
		/* Blocking, but never for long: a stop is heard between reads. */
		setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
		setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
		pthread_mutex_lock(&t->lock);
		ctx = t->ctx;
		SSL_CTX_up_ref(ctx);
		tickets = !t->no_tickets;
		pthread_mutex_unlock(&t->lock);
		ssl = SSL_new(ctx);
		if (!tickets)
			SSL_set_num_tickets(ssl, 0);
		SSL_set_app_data(ssl, t);
		SSL_set_fd(ssl, fd);
		if (SSL_accept(ssl) != 1) {
			pthread_mutex_lock(&t->lock);
			t->refused++;
			pthread_mutex_unlock(&t->lock);
		} else {
			pthread_mutex_lock(&t->lock);
			t->handshakes++;
			t->client[0] = '\0';
			peer = SSL_get1_peer_certificate(ssl);
			if (peer != NULL)
				X509_NAME_get_text_by_NID(X509_get_subject_name(peer),
				                          NID_commonName, t->client,
				                          sizeof(t->client));
			X509_free(peer);
			pthread_mutex_unlock(&t->lock);
			tls_serve(t, ssl, fd);
		}
		ERR_clear_error();
		SSL_free(ssl);
		SSL_CTX_free(ctx);
		close(fd);
	}
	return NULL;
}

int
harness_tls_use(struct harness_tls *t, const char *cert, const char *key, const char *client_ca)
{
	SSL_CTX *ctx = tls_server_ctx(cert, key, client_ca), *old;

	if (ctx == NULL)
		return -1;
	pthread_mutex_lock(&t->lock);
	old = t->ctx;
	t->ctx = ctx;
	pthread_mutex_unlock(&t->lock);
	SSL_CTX_free(old);
	return 0;
}

int
harness_tls_start(struct harness_tls *t, bool http, const char *cert, const char *key,
                  const char *client_ca)
{
	struct sockaddr_in sa;
	socklen_t sl = sizeof(sa);

	memset(t, 0, sizeof(*t));
	/* A client that goes away mid-answer must not kill the test. */
	signal(SIGPIPE, SIG_IGN);
	t->http = http;
	pthread_mutex_init(&t->lock, NULL);
	if (harness_tls_use(t, cert, key, client_ca) != 0)
		return -1;
	t->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (t->lfd < 0)
		return -1;
	memset(&sa, 0, sizeof(sa));
	sa.sin_family = AF_INET;
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (bind(t->lfd, (struct sockaddr *)&sa, sizeof(sa)) != 0 || listen(t->lfd, 16) != 0 ||
	    getsockname(t->lfd, (struct sockaddr *)&sa, &sl) != 0 ||
	    pthread_create(&t->thread, NULL, tls_run, t) != 0) {
		close(t->lfd);
		return -1;
	}
	t->port = ntohs(sa.sin_port);
	return 0;
}

void
harness_tls_slow_refusal(struct harness_tls *t, int ms)
{
	pthread_mutex_lock(&t->lock);
	t->slow_refusal_ms = ms;
	pthread_mutex_unlock(&t->lock);
}

void
harness_tls_tickets(struct harness_tls *t, bool send)
{
	pthread_mutex_lock(&t->lock);
	t->no_tickets = !send;
	pthread_mutex_unlock(&t->lock);
}

void
harness_tls_answer(struct harness_tls *t, const char *answer, size_t len)
{
	char *copy = malloc(len);

	memcpy(copy, answer, len);
	pthread_mutex_lock(&t->lock);
	free(t->answer);
	t->answer = copy;
	t->answer_len = len;
	pthread_mutex_unlock(&t->lock);
}

void
harness_tls_answer_200(struct harness_tls *t, const char *ctype, const char *body)
{
	size_t n = strlen(body), cap = n + 256;
	char *a = malloc(cap);
	int h = snprintf(a, cap,
	                 "HTTP/1.1 200 OK\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
	                 "Connection: close\r\n\r\n",
	                 ctype, n);

	memcpy(a + h, body, n);
	harness_tls_answer(t, a, (size_t)h + n);
	free(a);
}

unsigned
harness_tls_requests(struct harness_tls *t)
{
	unsigned n;

	pthread_mutex_lock(&t->lock);
	n = t->requests;
	pthread_mutex_unlock(&t->lock);
	return n;
}

char *
harness_tls_data(struct harness_tls *t, size_t *len)
{
	char *copy;

	pthread_mutex_lock(&t->lock);
	copy = malloc(t->len + 1);
	if (t->len > 0)
		memcpy(copy, t->data, t->len);
	copy[t->len] = '\0';
	*len = t->len;
	pthread_mutex_unlock(&t->lock);
	return copy;
}

bool
harness_tls_wait(struct harness_tls *t, const char *s, int timeout_ms)
{
	for (int waited = 0;; waited += 20) {
		bool found;

		pthread_mutex_lock(&t->lock);
		found = t->data != NULL && memmem(t->data, t->len, s, strlen(s)) != NULL;
		pthread_mutex_unlock(&t->lock);
		if (found)
			return true;
		if (waited >= timeout_ms)
			return false;
		sleep_ms(20);
	}
}

void
harness_tls_counts(struct harness_tls *t, unsigned *ok, unsigned *refused, char *cn, size_t cn_len)
{
	pthread_mutex_lock(&t->lock);
	*ok = t->handshakes;
	*refused = t->refused;
	if (cn != NULL)
		snprintf(cn, cn_len, "%s", t->client);
	pthread_mutex_unlock(&t->lock);
}

void
harness_tls_stop(struct harness_tls *t)
{
	pthread_mutex_lock(&t->lock);
	t->stop = true;
	pthread_mutex_unlock(&t->lock);
	pthread_join(t->thread, NULL);
	close(t->lfd);
	SSL_CTX_free(t->ctx);
	free(t->data);
	free(t->answer);
	pthread_mutex_destroy(&t->lock);
}
