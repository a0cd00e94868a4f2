/*
 * harness.h - integration-test support: a database per test cloned from the
 * migrated template, an idpd child process on a free loopback port, HTTP
 * over libcurl, and control of the private PostgreSQL cluster.
 *
 * The test runner (tests/support/run-tests.sh) starts the cluster and sets
 * IDPD_BIN, IDPD_TEST_PG_DIR, IDPD_TEST_PG_PORT and IDPD_TEST_TOP.
 */
#ifndef IDPD_TEST_HARNESS_H
#define IDPD_TEST_HARNESS_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include <jansson.h>

/* The KEK every idpd a test starts gets, unless the test sets its own IDPD_KEK. */
#define HARNESS_KEK "746573742d6f6e6c792d6b656b2d6e657665722d7573652d69742d666f722121"

struct idpd_proc {
	pid_t pid;
	int port;
	char dir[256]; /* temp dir with config and log */
	char config[300];
	char log[300];
	char base[64]; /* "http://127.0.0.1:PORT" */
	char db[64];
	int exit_status; /* when start failed because idpd exited */
};

struct http_resp {
	long status;
	char *body;
	size_t len;
	char *headers; /* raw response header block */
	json_t *json;  /* parsed body when it is JSON, else NULL */
};

/* Create database name from the template (drops an old one first). */
int harness_db_create(const char *name);
/* A libpq connection string for database name. */
void harness_db_url(const char *name, char *out, size_t len);
/* Run one SQL statement in database name; returns 0 on success. */
int harness_sql(const char *name, const char *sql);
/* Run a query returning one value; copies it into out; 0 on success. */
int harness_sql_value(const char *name, const char *sql, char *out, size_t len);

/*
 * Start idpd with a fresh config in a temp dir: the given database, a free
 * port, server_keys added inside [server] and extra_toml appended at the
 * end (either may be NULL).  Waits until /healthz answers.  Returns 0, or
 * -1 when idpd did not come up (exit_status set
 * if it exited; the log stays in p->log).
 */
int harness_idpd_start(struct idpd_proc *p, const char *db, const char *server_keys,
                       const char *extra_toml);
/* The same; migrate adds --migrate.  If idpd exits, exit_status says how. */
int harness_idpd_start_ex(struct idpd_proc *p, const char *db, const char *server_keys,
                          const char *extra_toml, bool migrate);

/* Run idpd with args (NULL-terminated) to completion; output to out_path. */
int harness_idpd_run(const char *const *args, const char *out_path);
/* Start it without waiting; harness_wait() returns its exit status. */
pid_t harness_idpd_spawn(const char *const *args, const char *out_path);
int harness_wait(pid_t pid);
bool harness_file_contains(const char *path, const char *s);
/* Send sig and wait up to timeout_ms; returns the exit status, or -1. */
int harness_idpd_stop(struct idpd_proc *p, int sig, int timeout_ms);
/* Print the child's log to stderr (for failures). */
void harness_idpd_dump_log(const struct idpd_proc *p);
/* Does the child's log contain s? */
bool harness_log_contains(const struct idpd_proc *p, const char *s);

/*
 * One HTTP request.  headers is a NULL-terminated list of "Name: value"
 * strings (may be NULL); body may be NULL.  Returns 0 when a response
 * arrived (any status).  Free with harness_resp_free.
 */
int harness_http(const char *method, const char *url, const char *const *headers, const char *body,
                 size_t body_len, struct http_resp *r);
void harness_resp_free(struct http_resp *r);
/*
 * A request to idpd p: path relative to its base URL, bearer (may be NULL)
 * sent as "Authorization: Bearer", body (may be NULL) as application/json.
 * Returns 0 when a response arrived.  harness_status returns its status
 * (-1 when none) and frees the response.
 */
int harness_call(const struct idpd_proc *p, const char *method, const char *path,
                 const char *bearer, const char *body, struct http_resp *r);
long harness_status(const struct idpd_proc *p, const char *method, const char *path,
                    const char *bearer, const char *body);
/* Value of response header name (case-insensitive) into out; false if absent. */
bool harness_resp_header(const struct http_resp *r, const char *name, char *out, size_t len);

/* Stop / start the private PostgreSQL cluster (pg.sh). */
int harness_pg_stop(const char *mode);
int harness_pg_start(void);

/* A free TCP port on 127.0.0.1. */
int harness_free_port(void);

/* Connect a raw TCP socket to 127.0.0.1:port; -1 on failure. */
int harness_connect(int port);

/*
 * A webhook receiver on 127.0.0.1 (an audit sink's destination): a thread
 * that answers each POST with the next status of statuses (the last one
 * repeats) and keeps every request that arrived, head and body.
 */
struct harness_hook {
	int port;
	int lfd;
	int statuses[4];
	size_t n_statuses;
	pthread_t thread;
	pthread_mutex_t lock; /* guards requests, n_requests, stop */
	char **requests;
	size_t n_requests;
	bool stop;
};

/* Start h answering with statuses (1..4 of them, e.g. {503, 204}). */
int harness_hook_start(struct harness_hook *h, const int *statuses, size_t n);
/* Wait up to timeout_ms until some request holds s; true if one does. */
bool harness_hook_wait(struct harness_hook *h, const char *s, int timeout_ms);
/* A copy of request i (NULL past the end); the caller frees it. */
char *harness_hook_request(struct harness_hook *h, size_t i);
/* Requests so far. */
size_t harness_hook_count(struct harness_hook *h);
/* Stop the thread and free what it kept. */
void harness_hook_stop(struct harness_hook *h);

/*
 * A throwaway PKI for TLS tests (tests/support/tls-pki.sh lists its files)
 * in a new directory, whose path goes into dir; 0 on success.
 * harness_tls_pki_remove deletes it.
 */
int harness_tls_pki(char *dir, size_t len);
void harness_tls_pki_remove(const char *dir);

/*
 * A TLS receiver on 127.0.0.1 (a TLS audit sink's destination): a thread
 * that takes one connection at a time and keeps every byte it decrypts.
 * As a syslog receiver it reads until the connection ends; with http set
 * it reads one request (head, then Content-Length bytes of body), answers
 * 204 and closes.  Each connection gets the certificate set last
 * (harness_tls_use), so a test can fix a receiver while a sink retries.
 * With a client CA, a client certificate signed by it is required.
 */
struct harness_tls {
	int port;
	int lfd;
	bool http;
	pthread_t thread;
	pthread_mutex_t lock; /* guards what follows */
	void *ctx;            /* the SSL_CTX the next connection gets */
	char *data;           /* every byte received, decrypted; NUL-terminated */
	size_t len;
	unsigned handshakes; /* completed */
	unsigned refused;    /* failed: the client refused us or we refused it */
	char client[128];    /* the CN of the last client certificate; "" for none */
	int slow_refusal_ms; /* an untrusted client certificate is refused this much later */
	bool no_tickets;     /* TLS 1.3 session tickets are not sent */
	char *answer;        /* http: the raw answer to send (harness_tls_answer); NULL: a 204 */
	size_t answer_len;
	unsigned requests; /* http: requests answered */
	bool stop;
};

/* Start t presenting cert/key (PEM files); client_ca NULL for no client certificate. */
int harness_tls_start(struct harness_tls *t, bool http, const char *cert, const char *key,
                      const char *client_ca);
/* Present cert/key from the next connection on (client_ca as in start). */
int harness_tls_use(struct harness_tls *t, const char *cert, const char *key,
                    const char *client_ca);
/*
 * Refuse a client certificate it does not trust only ms later, as a
 * receiver that checks revocation over the network might: under TLS 1.3
 * the client has finished its handshake by then.
 */
void harness_tls_slow_refusal(struct harness_tls *t, int ms);
/*
 * From the next connection on, send no TLS 1.3 session tickets, as
 * syslog-ng does (or send them again, the default, with send set).
 */
void harness_tls_tickets(struct harness_tls *t, bool send);
/*
 * From the next request on, answer with the raw bytes answer (len of them:
 * status line, headers, body) instead of a 204, as a server of files (a
 * JWKS) would.  Copied.
 */
void harness_tls_answer(struct harness_tls *t, const char *answer, size_t len);
/* The same for a 200 with Content-Type ctype and body (NUL-terminated). */
void harness_tls_answer_200(struct harness_tls *t, const char *ctype, const char *body);
/* Requests answered so far (http). */
unsigned harness_tls_requests(struct harness_tls *t);
/* A copy of what was received (NUL-terminated, *len its length); the caller frees it. */
char *harness_tls_data(struct harness_tls *t, size_t *len);
/* Wait up to timeout_ms until what was received holds s; true if it does. */
bool harness_tls_wait(struct harness_tls *t, const char *s, int timeout_ms);
/* Handshakes completed and failed so far; the last client certificate's CN into cn. */
void harness_tls_counts(struct harness_tls *t, unsigned *ok, unsigned *refused, char *cn,
                        size_t cn_len);
/* Stop the thread and free what it kept. */
void harness_tls_stop(struct harness_tls *t);

#endif /* IDPD_TEST_HARNESS_H */
