/*
 * jwks_remote.c - key sets fetched from a jwks_uri; see jwks_remote.h.
 *
 * DESIGN.  The remotes form one list behind jwks.lock.  The jwks thread
 * walks it, picks a remote whose fetch is due, takes a reference and marks
 * it fetching, drops the lock for the fetch (up to JWKS_REMOTE_TIMEOUT_MS),
 * then publishes the result under the lock: a new set replaces the old one
 * whole, so a verifier holding the old set's reference finishes with it.
 * Logging and the audit event for a changed set happen outside the lock.
 * Verifiers on I/O threads only ever take jwks.lock to copy a pointer and
 * two numbers (jwks_remote_view) or set a flag (jwks_remote_want).
 *
 * The request is HTTP/1.0 with "Connection: close": the answer then comes
 * without chunked transfer coding, its end is the end of the stream, and a
 * Content-Length, when given, must be met.
 */
#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/x509.h>

#include "idpd/app.h"
#include "idpd/audit.h"
#include "idpd/audit_writer.h"
#include "idpd/b64.h"
#include "idpd/buf.h"
#include "idpd/clock.h"
#include "idpd/jwks_remote.h"
#include "idpd/jws.h"
#include "idpd/keys.h"
#include "idpd/log.h"
#include "idpd/metrics.h"
#include "idpd/tls_client.h"

/* The answer's head (status line and headers) is bounded apart from its body. */
#define JWKS_HEAD_MAX 16384

struct jwks_remote {
	/* Fixed once made. */
	char *kind, *name, *uri, *ca_file;
	char *host, *port, *authority, *target;
	bool host_ip;
	SSL_CTX *ctx;
	char desc[128]; /* "idp \"corp\"", for logs */

	/* Guarded by jwks.lock. */
	int refs;
	bool listed; /* in remotes, fetched by the jwks thread */
	struct jwks_remote *next;
	int64_t refresh_ms, min_refresh_ms, max_stale_ms;
	struct idp_jws_keyset *keys; /* the last good set, or NULL */
	int64_t good_began_ms;       /* wall clock: start of the fetch that last succeeded */
	int64_t due_mono_ms;         /* the next periodic fetch */
	int64_t tried_mono_ms;       /* start of the last fetch; 0 before the first */
	bool tried;                  /* a first fetch has ended */
	bool fetching, wanted;
	bool failing; /* the last fetch failed (logged once) */
	uint64_t n_ok, n_failed;
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER; /* jwks.lock: see the file comment */
static pthread_cond_t wake;                              /* the thread: something to do */
static pthread_cond_t tried_cond;                        /* a fetch ended */
static pthread_once_t conds_once = PTHREAD_ONCE_INIT;
static struct jwks_remote *remotes;
static pthread_t thread;
static bool running, stopping;
static bool registered; /* main thread only */

static int64_t
mono_ms(void)
{
	return idp_mono_us() / 1000;
}

/* Both conditions wait on the monotonic clock: a wall-clock step neither stalls nor races them. */
static void
conds_make(void)
{
	pthread_condattr_t a;

	pthread_condattr_init(&a);
	pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
	pthread_cond_init(&wake, &a);
	pthread_cond_init(&tried_cond, &a);
	pthread_condattr_destroy(&a);
}

static void
timed_wait(pthread_cond_t *c, int64_t until_mono_ms)
{
	struct timespec ts = {.tv_sec = until_mono_ms / 1000,
	                      .tv_nsec = (long)(until_mono_ms % 1000) * 1000000};

	pthread_cond_timedwait(c, &lock, &ts);
}

static bool
str_eq(const char *a, const char *b)
{
	if (a == NULL || a[0] == '\0')
		return b == NULL || b[0] == '\0';
	return b != NULL && strcmp(a, b) == 0;
}

/* ---- checking and making ---- */

static void
remote_free(struct jwks_remote *r)
{
	free(r->kind);
	free(r->name);
	free(r->uri);
	free(r->ca_file);
	free(r->host);
	free(r->port);
	free(r->authority);
	free(r->target);
	SSL_CTX_free(r->ctx);
	idp_jws_keyset_unref(r->keys);
	free(r);
}

/*
 * A new remote for o, not yet listed; NULL with diag when o is unusable.
 * The TLS context is made here, so a ca_file that does not load is refused
 * when the configuration is read, not at the first fetch.
 */
static struct jwks_remote *
remote_new(const struct jwks_remote_opts *o, struct idp_diag *diag)
{
	struct jwks_remote *r = idp_xcalloc(1, sizeof(*r));
	bool tls = false;

	snprintf(r->desc, sizeof(r->desc), "%s \"%.64s\"", o->kind, o->name);
	r->kind = idp_xstrdup(o->kind);
	r->name = idp_xstrdup(o->name);
	r->uri = idp_xstrdup(o->uri);
	r->ca_file = o->ca_file != NULL && o->ca_file[0] != '\0' ? idp_xstrdup(o->ca_file) : NULL;
	if (!tls_client_split_url(o->uri, &tls, &r->host, &r->port, &r->authority, &r->target) ||
	    !tls) {
		idp_diag_add(diag, "%s: jwks_uri must be https://host[:port][/path] (%s)", r->desc,
		             tls ? "malformed" : "plain http is never used for keys");
		goto fail;
	}
	r->host_ip = tls_client_is_ip_literal(r->host);
	if (!r->host_ip && !tls_client_is_dns_name(r->host)) {
		idp_diag_add(diag,
		             "%s: the host of jwks_uri is neither a DNS name nor an IP address, so "
		             "the server's certificate cannot be checked against it "
		             "(" TLS_CLIENT_DNS_NAME_RULE ")",
		             r->desc);
		goto fail;
	}
	if (o->max_stale_ms <= o->refresh_ms || o->min_refresh_ms <= 0) {
		idp_diag_add(diag, "%s: jwks_max_stale must be longer than jwks_refresh", r->desc);
		goto fail;
	}
	r->ctx = tls_client_ctx_new(r->ca_file, r->desc, diag);
	if (r->ctx == NULL)
		goto fail;
	r->refresh_ms = o->refresh_ms;
	r->min_refresh_ms = o->min_refresh_ms;
	r->max_stale_ms = o->max_stale_ms;
	return r;
fail:
	remote_free(r);
	return NULL;
}

int
jwks_remote_new(const struct jwks_remote_opts *o, struct jwks_remote **out, struct idp_diag *diag)
{
	*out = remote_new(o, diag);
	if (*out == NULL)
		return IDP_EINVAL;
	(*out)->refs = 1;
	return IDP_OK;
}

static void *run(void *arg);

struct jwks_remote *
jwks_remote_publish(struct jwks_remote *r)
{
	struct jwks_remote *have, *drop = NULL;

	pthread_once(&conds_once, conds_make);
	pthread_mutex_lock(&lock);
	if (r->listed) {
		pthread_mutex_unlock(&lock);
		return r;
	}
	for (have = remotes; have != NULL; have = have->next)
		if (strcmp(have->kind, r->kind) == 0 && strcmp(have->name, r->name) == 0 &&
		    strcmp(have->uri, r->uri) == 0 && str_eq(have->ca_file, r->ca_file))
			break;
	if (have != NULL) {
		SSL_CTX *ctx = have->ctx;

		/* The ca_file as the reload read it: its contents may have
		 * changed under the same name (a CA added, or one distrusted).
		 * A fetch in progress holds its own reference to the old one. */
		have->ctx = r->ctx;
		r->ctx = ctx;
		if (have->failing)
			have->due_mono_ms = 0; /* try the new trust now (min_refresh still holds) */
		have->refs++;
		have->refresh_ms = r->refresh_ms;
		have->min_refresh_ms = r->min_refresh_ms;
		have->max_stale_ms = r->max_stale_ms;
		/* The next periodic fetch follows the new refresh. */
		if (have->tried && have->due_mono_ms > have->tried_mono_ms + have->refresh_ms)
			have->due_mono_ms = have->tried_mono_ms + have->refresh_ms;
		/* r was never listed: the last reference is the caller's. */
		if (--r->refs == 0)
			drop = r;
		r = have;
	} else {
		r->listed = true;
		r->next = remotes;
		remotes = r;
	}
	if (!running) {
		stopping = false;
		if (pthread_create(&thread, NULL, run, NULL) == 0)
			running = true;
		else
			log_error(
			    "jwks: cannot start the fetch thread; jwks_uri providers answer 503");
	}
	pthread_cond_signal(&wake);
	pthread_mutex_unlock(&lock);
	if (drop != NULL)
		remote_free(drop);
	return r;
}

/* Drop a reference with jwks.lock held; the last one unlinks r, and *gone gets it to free. */
static void
unref_locked(struct jwks_remote *r, struct jwks_remote **gone)
{
	*gone = NULL;
	if (--r->refs > 0)
		return;
	for (struct jwks_remote **p = &remotes; r->listed && *p != NULL; p = &(*p)->next)
		if (*p == r) {
			*p = r->next;
			break;
		}
	*gone = r;
}

void
jwks_remote_unref(struct jwks_remote *r)
{
	struct jwks_remote *gone;

	if (r == NULL)
		return;
	pthread_mutex_lock(&lock);
	unref_locked(r, &gone);
	pthread_mutex_unlock(&lock);
	if (gone != NULL)
		remote_free(gone);
}

void
jwks_remote_wait_tried(int64_t timeout_ms)
{
	int64_t until = mono_ms() + timeout_ms;

	pthread_once(&conds_once, conds_make);
	pthread_mutex_lock(&lock);
	for (;;) {
		bool all = true;

		for (struct jwks_remote *r = remotes; r != NULL; r = r->next)
			all = all && r->tried;
		if (all || !running || mono_ms() >= until)
			break;
		timed_wait(&tried_cond, until);
	}
	pthread_mutex_unlock(&lock);
}

/* ---- what verifiers read ---- */

void
jwks_remote_view(struct jwks_remote *r, const struct idp_clock *clock, struct jwks_remote_view *v)
{
	int64_t now = idp_now_ms(clock), next;

	pthread_mutex_lock(&lock);
	v->keys = r->keys != NULL ? idp_jws_keyset_ref(r->keys) : NULL;
	v->began_ms = r->good_began_ms;
	v->usable = r->keys != NULL && now - r->good_began_ms <= r->max_stale_ms;
	next = r->tried_mono_ms == 0 ? 0 : r->tried_mono_ms + r->min_refresh_ms - mono_ms();
	pthread_mutex_unlock(&lock);
	/* The next fetch may start in next ms and takes a moment: a second more. */
	next = next > 0 ? (next + 999) / 1000 + 1 : 1;
	v->retry_after_s = next > 3600 ? 3600 : (int)next;
}

void
jwks_remote_view_cleanup(struct jwks_remote_view *v)
{
	idp_jws_keyset_unref(v->keys);
	v->keys = NULL;
}

void
jwks_remote_want(struct jwks_remote *r)
{
	pthread_mutex_lock(&lock);
	if (!r->wanted) {
		r->wanted = true;
		pthread_cond_signal(&wake);
	}
	pthread_mutex_unlock(&lock);
}

int
jwks_remote_kid_unknown(struct jwks_remote *r, const struct idp_clock *clock, int64_t iat_ms,
                        const char **reason, int *retry_after_s)
{
	struct jwks_remote_view rv;
	int rc = IDP_EUNAVAIL;

	jwks_remote_view(r, clock, &rv);
	if (!rv.usable)
		*reason = "jwks_unavailable";
	else if (iat_ms < 0 || rv.began_ms - iat_ms <= KEYS_KID_SKEW_MS)
		*reason = "kid_unknown_until_refresh";
	else
		rc = IDP_EUNAUTH;
	/* Even a definite "unknown": a provider whose clock runs behind (or
	 * that backdates iat) has its new key fetched within min_refresh
	 * rather than at the next scheduled refresh.  Rate limited. */
	jwks_remote_want(r);
	if (rc == IDP_EUNAVAIL)
		*retry_after_s = rv.retry_after_s;
	jwks_remote_view_cleanup(&rv);
	return rc;
}

void
jwks_token_iss_iat(const char *token, size_t len, char *iss, size_t iss_len, int64_t *iat_ms)
{
	json_t *claims = idp_jws_peek_claims(token, len);
	const json_t *v = json_object_get(claims, "iss");

	iss[0] = '\0';
	if (json_is_string(v) && json_string_length(v) < iss_len &&
	    json_string_length(v) == strlen(json_string_value(v)))
		memcpy(iss, json_string_value(v), json_string_length(v) + 1);
	if (idp_jwt_numeric_date_ms(claims, "iat", iat_ms) != 1)
		*iat_ms = KEYS_NO_IAT;
	json_decref(claims);
}

/* ---- one fetch (jwks thread) ---- */

/* A TLS call on ssl returned ret: wait for what it wants until deadline; IDP_OK to call again. */
static int
tls_wait(const struct jwks_remote *r, SSL *ssl, struct tls_client_sock *sock, int ret,
         int64_t deadline, const char *what, struct idp_diag *diag)
{
	int err = SSL_get_error(ssl, ret), e;
	long verify = SSL_get_verify_result(ssl);
	char buf[256];

	if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
		e = tls_client_wait_fd(sock->fd, err == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT,
		                       deadline, -1);
		if (e == 0)
			return IDP_OK;
		idp_diag_add(diag, "%s: %s: %s", r->uri, what, idp_strerror(e, buf, sizeof(buf)));
	} else if (verify != X509_V_OK) {
		idp_diag_add(diag, "%s: %s: the server's certificate failed verification: %s",
		             r->uri, what, X509_verify_cert_error_string(verify));
	} else if (err == SSL_ERROR_SYSCALL && sock->err != 0) {
		idp_diag_add(diag, "%s: %s: %s", r->uri, what,
		             idp_strerror(sock->err, buf, sizeof(buf)));
	} else if (err == SSL_ERROR_ZERO_RETURN ||
	           (err == SSL_ERROR_SYSCALL && ERR_peek_error() == 0)) {
		idp_diag_add(diag, "%s: %s: the server closed the connection", r->uri, what);
	} else {
		idp_diag_add(diag, "%s: %s: %s", r->uri, what, tls_client_reason(buf, sizeof(buf)));
	}
	ERR_clear_error();
	return IDP_EUNAVAIL;
}

/*
 * The answer's bytes into ans, until the end of the stream, at most
 * JWKS_HEAD_MAX + JWKS_REMOTE_BODY_MAX of them.  *clean says whether the
 * server ended with close_notify (else the stream may have been cut).
 */
static int
read_answer(const struct jwks_remote *r, SSL *ssl, struct tls_client_sock *sock, int64_t deadline,
            struct idp_buf *ans, bool *clean, struct idp_diag *diag)
{
	*clean = false;
	for (;;) {
		char chunk[16384];
		size_t got = 0;
		int ret, rc;

		ERR_clear_error();
		ret = SSL_read_ex(ssl, chunk, sizeof(chunk), &got);
		if (ret == 1) {
			if (idp_buf_append(ans, chunk, got) != IDP_OK) {
				idp_diag_add(diag, "%s: the answer passes %d bytes", r->uri,
				             JWKS_HEAD_MAX + JWKS_REMOTE_BODY_MAX);
				return IDP_ETOOBIG;
			}
			continue;
		}
		if (SSL_get_error(ssl, ret) == SSL_ERROR_ZERO_RETURN) {
			*clean = true;
			return IDP_OK;
		}
		/* The end of the stream without close_notify: judged by Content-Length. */
		if (sock->eof && SSL_get_error(ssl, ret) == SSL_ERROR_SYSCALL) {
			ERR_clear_error();
			return IDP_OK;
		}
		if ((rc = tls_wait(r, ssl, sock, ret, deadline, "reading the answer", diag)) !=
		    IDP_OK)
			return rc;
	}
}

/* The value of header name in head (len bytes, lines ending CRLF), into out; false if absent. */
static bool
header(const char *head, size_t len, const char *name, char *out, size_t out_len)
{
	size_t n = strlen(name);

	for (const char *p = head; p < head + len;) {
		const char *eol = memchr(p, '\n', (size_t)(head + len - p));
		const char *end = eol != NULL ? eol : head + len;

		if ((size_t)(end - p) > n && p[n] == ':' && strncasecmp(p, name, n) == 0) {
			const char *v = p + n + 1;
			size_t vl;

			while (v < end && (*v == ' ' || *v == '\t'))
				v++;
			vl = (size_t)(end - v);
			while (vl > 0 &&
			       (v[vl - 1] == '\r' || v[vl - 1] == ' ' || v[vl - 1] == '\t'))
				vl--;
			snprintf(out, out_len, "%.*s", (int)vl, v);
			return true;
		}
		p = end + 1;
	}
	return false;
}

/*
 * The JWKS in an answer: a 200 whose Content-Type is JSON (application/json
 * or a +json type such as application/jwk-set+json), without transfer
 * coding, whose body is whole.  *body and *body_len point into ans.  uri
 * names the answer in diag.  Pure; reached by the unit test (IDP_STATIC).
 */
IDP_STATIC int
jwks_parse_answer(const char *uri, const struct idp_buf *ans, bool clean, const char **body,
                  size_t *body_len, struct idp_diag *diag)
{
	const char *data = ans->data, *end;
	char ctype[128], clen[32];
	size_t head_len;
	int status;

	if (ans->len < 12 || strncmp(data, "HTTP/1.", 7) != 0 || data[8] != ' ' || data[9] < '1' ||
	    data[9] > '5' || data[10] < '0' || data[10] > '9' || data[11] < '0' || data[11] > '9') {
		idp_diag_add(diag, "%s: the answer is not HTTP/1", uri);
		return IDP_EUNAVAIL;
	}
	status = (data[9] - '0') * 100 + (data[10] - '0') * 10 + (data[11] - '0');
	end = memmem(data, ans->len < JWKS_HEAD_MAX ? ans->len : JWKS_HEAD_MAX, "\r\n\r\n", 4);
	if (end == NULL) {
		idp_diag_add(diag, "%s: the answer's head is incomplete or passes %d bytes", uri,
		             JWKS_HEAD_MAX);
		return IDP_EUNAVAIL;
	}
	head_len = (size_t)(end - data) + 2;
	if (status >= 300 && status < 400) {
		idp_diag_add(diag,
		             "%s: the server answered %d (a redirect; redirects are not followed: "
		             "set jwks_uri to where the keys are)",
		             uri, status);
		return IDP_EUNAVAIL;
	}
	if (status != 200) {
		idp_diag_add(diag, "%s: the server answered %d", uri, status);
		return IDP_EUNAVAIL;
	}
	if (header(data, head_len, "Transfer-Encoding", ctype, sizeof(ctype))) {
		idp_diag_add(diag,
		             "%s: the answer has a transfer coding (%s), which this HTTP/1.0 "
		             "client did not ask for",
		             uri, ctype);
		return IDP_EUNAVAIL;
	}
	if (!header(data, head_len, "Content-Type", ctype, sizeof(ctype))) {
		idp_diag_add(diag, "%s: the answer has no Content-Type", uri);
		return IDP_EUNAVAIL;
	}
	ctype[strcspn(ctype, "; ")] = '\0';
	if (strcasecmp(ctype, "application/json") != 0 &&
	    (strlen(ctype) < 5 || strcasecmp(ctype + strlen(ctype) - 5, "+json") != 0)) {
		idp_diag_add(diag, "%s: the answer's Content-Type is %s, not JSON", uri, ctype);
		return IDP_EUNAVAIL;
	}
	*body = end + 4;
	*body_len = ans->len - (size_t)(*body - data);
	if (*body_len > JWKS_REMOTE_BODY_MAX) {
		idp_diag_add(diag, "%s: the key set passes %d bytes", uri, JWKS_REMOTE_BODY_MAX);
		return IDP_ETOOBIG;
	}
	if (header(data, head_len, "Content-Length", clen, sizeof(clen))) {
		char *e;
		unsigned long long n = strtoull(clen, &e, 10);

		if (*e != '\0' || clen[0] < '0' || clen[0] > '9' || n != *body_len) {
			idp_diag_add(diag,
			             "%s: the body is %zu bytes, not the %s its Content-Length "
			             "says",
			             uri, *body_len, clen);
			return IDP_EUNAVAIL;
		}
	} else if (!clean) {
		/* Without a length, only close_notify proves the body whole. */
		idp_diag_add(
		    diag, "%s: the answer has no Content-Length and its TLS stream was cut", uri);
		return IDP_EUNAVAIL;
	}
	return IDP_OK;
}

/*
 * One fetch of r, verifying its server with ctx (a reference the caller
 * holds: a reload may swap r's): its key set into *out, or an error with
 * diag.  jwks thread.
 */
static int
fetch(const struct jwks_remote *r, SSL_CTX *ctx, struct idp_jws_keyset **out, struct idp_diag *diag)
{
	int64_t deadline = idp_mono_us() + (int64_t)JWKS_REMOTE_TIMEOUT_MS * 1000;
	struct tls_client_sock sock = {.fd = -1};
	struct idp_buf req, ans;
	SSL *ssl = NULL;
	BIO *bio;
	const char *body;
	size_t body_len, sent = 0;
	char buf[256];
	int err, gai, ret, rc = IDP_EUNAVAIL;
	bool clean;

	*out = NULL;
	idp_buf_init(&req, 0);
	idp_buf_init(&ans, JWKS_HEAD_MAX + JWKS_REMOTE_BODY_MAX);
	tls_client_connect(r->host, r->port, false, deadline, -1, &sock.fd, &err, &gai);
	if (gai != 0) {
		idp_diag_add(diag, "%s: resolve %s: %s", r->uri, r->host, gai_strerror(gai));
		goto done;
	}
	if (sock.fd < 0) {
		idp_diag_add(diag, "%s: connect: %s", r->uri, idp_strerror(err, buf, sizeof(buf)));
		goto done;
	}
	ERR_clear_error();
	if ((ssl = SSL_new(ctx)) == NULL || (bio = tls_client_bio_new(&sock)) == NULL) {
		idp_diag_add(diag, "%s: TLS: %s", r->uri, tls_client_reason(buf, sizeof(buf)));
		goto done;
	}
	SSL_set_bio(ssl, bio, bio);
	if (!tls_client_set_name(ssl, r->host, r->host_ip)) {
		idp_diag_add(diag, "%s: TLS: cannot set the name to verify: %s", r->uri,
		             tls_client_reason(buf, sizeof(buf)));
		goto done;
	}
	for (;;) {
		ERR_clear_error();
		ret = SSL_connect(ssl);
		if (ret == 1)
			break;
		if ((rc = tls_wait(r, ssl, &sock, ret, deadline, "TLS handshake", diag)) != IDP_OK)
			goto done;
	}
	rc = idp_buf_printf(
	    &req,
	    "GET %s HTTP/1.0\r\nHost: %s\r\nAccept: application/json, "
	    "application/jwk-set+json\r\nUser-Agent: idpd\r\nConnection: close\r\n\r\n",
	    r->target, r->authority);
	while (rc == IDP_OK && sent < req.len) {
		size_t w = 0;

		ERR_clear_error();
		ret = SSL_write_ex(ssl, req.data + sent, req.len - sent, &w);
		if (ret == 1)
			sent += w;
		else
			rc = tls_wait(r, ssl, &sock, ret, deadline, "sending the request", diag);
	}
	if (rc != IDP_OK)
		goto done;
	rc = read_answer(r, ssl, &sock, deadline, &ans, &clean, diag);
	if (rc == IDP_OK)
		rc = jwks_parse_answer(r->uri, &ans, clean, &body, &body_len, diag);
	if (rc == IDP_OK)
		rc = idp_jws_keyset_from_jwks(body, body_len, out, diag);
done:
	if (ssl != NULL) {
		ERR_clear_error();
		SSL_free(ssl);
	}
	ERR_clear_error();
	if (sock.fd >= 0)
		close(sock.fd);
	idp_buf_cleanup(&req);
	idp_buf_cleanup(&ans);
	return rc;
}

/* ---- publishing (jwks thread) ---- */

/* Whether set (NULL: none) holds k itself: the same key under the same kid. */
static bool
holds_key(const struct idp_jws_keyset *set, const struct idp_jws_key *k)
{
	const struct idp_jws_key *o =
	    set != NULL ? idp_jws_keyset_find(set, idp_jws_key_kid(k)) : NULL;
	char t1[44], t2[44];

	if (o == NULL)
		return false;
	idp_jws_key_thumbprint(k, t1);
	idp_jws_key_thumbprint(o, t2);
	return strcmp(t1, t2) == 0;
}

/* The kids of a that b lacks, or holds for another key (a kid reused for a new key). */
static json_t *
kids_not_in(const struct idp_jws_keyset *a, const struct idp_jws_keyset *b)
{
	json_t *out = json_array();

	for (size_t i = 0; a != NULL && i < idp_jws_keyset_count(a); i++) {
		const struct idp_jws_key *k = idp_jws_keyset_key(a, i);

		if (!holds_key(b, k))
			json_array_append_new(out, json_string(idp_jws_key_kid(k)));
	}
	return out;
}

/* Log and audit a changed set (jwks.changed).  Takes added and removed. */
static int
report_change(const struct jwks_remote *r, size_t n_keys, json_t *added, json_t *removed)
{
	struct audit_event *ev = audit_event_new(AUDIT_JWKS_CHANGED, AUDIT_TIME_UNSET);
	char *a = json_dumps(added, JSON_COMPACT), *d = json_dumps(removed, JSON_COMPACT);
	json_t *detail;
	int rc;

	log_info("jwks: %s: the key set of %s changed: %zu key(s), added %s, removed %s", r->desc,
	         r->uri, n_keys, a != NULL ? a : "?", d != NULL ? d : "?");
	free(a);
	free(d);
	detail =
	    json_pack("{s:s,s:s,s:s,s:I,s:o,s:o}", "kind", r->kind, "provider", r->name, "jwks_uri",
	              r->uri, "keys", (json_int_t)n_keys, "added", added, "removed", removed);
	if (ev == NULL || detail == NULL ||
	    audit_event_set_actor(ev, AUDIT_ACTOR_SYSTEM, "jwks_refresh") != IDP_OK ||
	    audit_event_set_detail(ev, detail) != IDP_OK) {
		log_error("jwks: %s: cannot build the jwks.changed audit event", r->desc);
		audit_event_free(ev);
		json_decref(detail);
		return IDP_EINTERNAL;
	}
	json_decref(detail);
	audit_event_set_outcome(ev, AUDIT_OUTCOME_SUCCESS);
	rc = audit_emit(ev);
	if (rc != IDP_OK)
		log_error("jwks: %s: the jwks.changed audit event could not be written (%s)",
		          r->desc, idp_err_name(rc));
	return rc;
}

/* Count a failed fetch of r (or one whose change could not be audited); whether it is the first. */
static bool
count_failure(struct jwks_remote *r)
{
	bool first;

	pthread_mutex_lock(&lock);
	first = !r->failing || !r->tried;
	r->failing = true;
	r->n_failed++;
	pthread_mutex_unlock(&lock);
	return first;
}

/*
 * The keys of old that set still holds, the same key under the same kid:
 * what may stay trusted while set's additions wait for their audit event.
 * NULL when none does (or on a bug, logged): the provider then has no set.
 */
static struct idp_jws_keyset *
kept_keys(const struct idp_jws_keyset *old, const struct idp_jws_keyset *set)
{
	size_t n = old != NULL ? idp_jws_keyset_count(old) : 0, k = 0;
	struct idp_jws_key **keys = idp_xcalloc(n ? n : 1, sizeof(*keys));
	struct idp_jws_keyset *out = NULL;
	struct idp_diag d;

	for (size_t i = 0; i < n; i++) {
		const struct idp_jws_key *key = idp_jws_keyset_key(old, i);

		if (holds_key(set, key))
			keys[k++] = (struct idp_jws_key *)key; /* the set takes its own reference */
	}
	idp_diag_init(&d);
	if (k > 0 && idp_jws_keyset_new(keys, k, &out, &d) != IDP_OK)
		log_error("jwks: bug: cannot rebuild a key set: %s", idp_diag_str(&d));
	free(keys);
	return out;
}

/*
 * The result of one fetch of r, which began at began_ms (wall clock):
 * set (taken) on success, else diag says why.  A set that adds keys is
 * trusted only once its jwks.changed event is written, as a reload's keys
 * are; when it cannot be, only the keys of the set in force that the new
 * one keeps stay trusted (a key withdrawn by the same rotation stops at
 * once), and the fetch counts as failed: tried again after min_refresh.
 * A set that only removes keys is swapped first, and its event follows.
 * Swaps under jwks.lock; logs and audits outside it.  Whether the fetch
 * succeeded, for the schedule.
 */
static bool
publish(struct jwks_remote *r, int rc, struct idp_jws_keyset *set, int64_t began_ms,
        const struct idp_diag *diag)
{
	struct idp_jws_keyset *old;
	json_t *added, *removed;
	size_t n_added, n_removed;
	bool was_failing;

	if (rc != IDP_OK) {
		size_t n_old;

		pthread_mutex_lock(&lock);
		n_old = r->keys != NULL ? idp_jws_keyset_count(r->keys) : 0;
		pthread_mutex_unlock(&lock);
		if (count_failure(r))
			log_warn("jwks: %s: cannot fetch its keys: %s; %s", r->desc,
			         idp_diag_str(diag),
			         n_old > 0 ? "the last good set stays in use until jwks_max_stale"
			                   : "its tokens answer 503 until a fetch succeeds");
		return false;
	}
	pthread_mutex_lock(&lock);
	old = r->keys != NULL ? idp_jws_keyset_ref(r->keys) : NULL;
	was_failing = r->failing;
	pthread_mutex_unlock(&lock);
	added = kids_not_in(set, old);
	removed = kids_not_in(old, set);
	n_added = json_array_size(added);
	n_removed = json_array_size(removed);
	/* report_change takes added and removed. */
	if (n_added > 0 && report_change(r, idp_jws_keyset_count(set), added, removed) != IDP_OK) {
		struct idp_jws_keyset *kept = n_removed > 0 ? kept_keys(old, set) : NULL;

		if (n_removed > 0) {
			/* The withdrawn keys go now; the good_began_ms of the set
			 * in force stays, so its kid rule is unchanged. */
			pthread_mutex_lock(&lock);
			idp_jws_keyset_unref(old);
			old = r->keys;
			r->keys = kept;
			pthread_mutex_unlock(&lock);
		}
		if (count_failure(r))
			log_warn("jwks: %s: its new keys are not trusted until their jwks.changed "
			         "event can be written%s",
			         r->desc,
			         n_removed > 0 ? "; the keys it withdrew are dropped now" : "");
		idp_jws_keyset_unref(set);
		idp_jws_keyset_unref(old);
		return false;
	}
	pthread_mutex_lock(&lock);
	idp_jws_keyset_unref(old);
	old = r->keys;
	r->keys = set;
	r->good_began_ms = began_ms;
	r->failing = false;
	r->n_ok++;
	pthread_mutex_unlock(&lock);
	if (was_failing)
		log_info("jwks: %s: its keys are fetched again", r->desc);
	if (n_added == 0 && n_removed > 0)
		(void)report_change(r, idp_jws_keyset_count(set), added, removed);
	else if (n_added == 0) {
		json_decref(added);
		json_decref(removed);
	}
	idp_jws_keyset_unref(old);
	return true;
}

/*
 * The remote whose fetch has been due longest (not the first due in list
 * order: a provider kept wanted by made-up kids, whose fetches hang for
 * the whole timeout, would be due again after each and starve the rest);
 * NULL and *wake_at if none is due now.  jwks.lock held.
 */
static struct jwks_remote *
next_due(int64_t now, int64_t *wake_at)
{
	struct jwks_remote *best = NULL;
	int64_t best_at = 0;

	*wake_at = now + 60000;
	for (struct jwks_remote *r = remotes; r != NULL; r = r->next) {
		int64_t at = r->due_mono_ms;

		if (r->fetching)
			continue;
		if (r->wanted && r->tried_mono_ms + r->min_refresh_ms < at)
			at = r->tried_mono_ms + r->min_refresh_ms;
		/* Never two fetches of one provider within min_refresh. */
		if (r->tried_mono_ms != 0 && at < r->tried_mono_ms + r->min_refresh_ms)
			at = r->tried_mono_ms + r->min_refresh_ms;
		if (at <= now) {
			if (best == NULL || at < best_at) {
				best = r;
				best_at = at;
			}
			continue;
		}
		if (at < *wake_at)
			*wake_at = at;
	}
	return best;
}

static void *
run(void *arg)
{
	(void)arg;
	pthread_mutex_lock(&lock);
	while (!stopping) {
		int64_t now = mono_ms(), wake_at;
		struct jwks_remote *r = next_due(now, &wake_at), *gone;
		struct idp_jws_keyset *set = NULL;
		SSL_CTX *ctx;
		bool ok;
		struct idp_diag d;
		int64_t began;
		int rc;

		if (r == NULL) {
			timed_wait(&wake, wake_at);
			continue;
		}
		r->refs++;
		r->fetching = true;
		r->wanted = false;
		r->tried_mono_ms = now;
		ctx = r->ctx;
		SSL_CTX_up_ref(ctx);
		pthread_mutex_unlock(&lock);

		/* Taken before the connection: the fetch begins no earlier, so a
		 * kid judged against it errs toward 503, as keys.c does. */
		began = idp_now_ms(idp_clock_system());
		idp_diag_init(&d);
		rc = fetch(r, ctx, &set, &d);
		SSL_CTX_free(ctx);
		ok = publish(r, rc, set, began, &d);

		pthread_mutex_lock(&lock);
		r->due_mono_ms = mono_ms() + (ok ? r->refresh_ms : r->min_refresh_ms);
		r->fetching = false;
		r->tried = true;
		pthread_cond_broadcast(&tried_cond);
		unref_locked(r, &gone);
		if (gone != NULL) {
			pthread_mutex_unlock(&lock);
			remote_free(gone);
			pthread_mutex_lock(&lock);
		}
	}
	pthread_mutex_unlock(&lock);
	return NULL;
}

void
jwks_remote_shutdown(void)
{
	pthread_mutex_lock(&lock);
	if (!running) {
		pthread_mutex_unlock(&lock);
		return;
	}
	stopping = true;
	pthread_cond_signal(&wake);
	pthread_mutex_unlock(&lock);
	pthread_join(thread, NULL);
	pthread_mutex_lock(&lock);
	running = false;
	pthread_cond_broadcast(&tried_cond);
	pthread_mutex_unlock(&lock);
}

/* ---- metrics and readiness ---- */

static void
collect(struct idp_buf *out, void *ctx)
{
	int64_t now = idp_now_ms(idp_clock_system());
	int rc = 0;

	(void)ctx;
	pthread_mutex_lock(&lock);
	rc |= idp_buf_puts(out, "# HELP idpd_jwks_fetches_total Fetches of a provider's jwks_uri, "
	                        "by result.\n# TYPE idpd_jwks_fetches_total counter\n");
	for (struct jwks_remote *r = remotes; r != NULL; r = r->next)
		rc |= idp_buf_printf(out,
		                     "idpd_jwks_fetches_total{kind=\"%s\",provider=\"%s\","
		                     "result=\"ok\"} %llu\n"
		                     "idpd_jwks_fetches_total{kind=\"%s\",provider=\"%s\","
		                     "result=\"error\"} %llu\n",
		                     r->kind, r->name, (unsigned long long)r->n_ok, r->kind,
		                     r->name, (unsigned long long)r->n_failed);
	rc |= idp_buf_puts(out, "# HELP idpd_jwks_keys Keys in a provider's last good set.\n"
	                        "# TYPE idpd_jwks_keys gauge\n");
	for (struct jwks_remote *r = remotes; r != NULL; r = r->next)
		rc |= idp_buf_printf(out, "idpd_jwks_keys{kind=\"%s\",provider=\"%s\"} %zu\n",
		                     r->kind, r->name,
		                     r->keys != NULL ? idp_jws_keyset_count(r->keys) : 0);
	rc |= idp_buf_puts(out, "# HELP idpd_jwks_age_seconds Time since the start of the fetch "
	                        "that last succeeded; -1 if none has.\n"
	                        "# TYPE idpd_jwks_age_seconds gauge\n");
	for (struct jwks_remote *r = remotes; r != NULL; r = r->next)
		rc |= idp_buf_printf(
		    out, "idpd_jwks_age_seconds{kind=\"%s\",provider=\"%s\"} %.3f\n", r->kind,
		    r->name, r->keys != NULL ? (double)(now - r->good_began_ms) / 1000.0 : -1.0);
	rc |= idp_buf_puts(out, "# HELP idpd_jwks_usable Whether a provider has a key set no older "
	                        "than jwks_max_stale (0: its tokens answer 503).\n"
	                        "# TYPE idpd_jwks_usable gauge\n");
	for (struct jwks_remote *r = remotes; r != NULL; r = r->next)
		rc |= idp_buf_printf(out, "idpd_jwks_usable{kind=\"%s\",provider=\"%s\"} %d\n",
		                     r->kind, r->name,
		                     r->keys != NULL && now - r->good_began_ms <= r->max_stale_ms);
	pthread_mutex_unlock(&lock);
	if (rc != 0)
		log_warn("metrics: jwks output truncated");
}

/* Ready while every remote has a usable set; the log and metrics name the one that has none. */
static const char *
unready(void *ctx)
{
	int64_t now = idp_now_ms(idp_clock_system());
	const char *why = NULL;

	(void)ctx;
	pthread_mutex_lock(&lock);
	for (struct jwks_remote *r = remotes; r != NULL && why == NULL; r = r->next)
		if (r->keys == NULL || now - r->good_began_ms > r->max_stale_ms)
			why = "jwks_unavailable";
	pthread_mutex_unlock(&lock);
	return why;
}

int
jwks_remote_init(void)
{
	if (registered)
		return IDP_OK;
	if (metrics_register(collect, NULL) != IDP_OK ||
	    app_on_ready_degraded("jwks", unready, NULL) != IDP_OK)
		return IDP_ETOOBIG;
	registered = true;
	return IDP_OK;
}
