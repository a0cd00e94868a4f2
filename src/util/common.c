/*
 * common.c - error names, diagnostics, allocation that cannot fail, and the
 * small secret-handling helpers every module shares.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <pthread.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "idpd/common.h"

const char *
idp_err_name(int err)
{
	switch (err) {
	case IDP_OK:
		return "ok";
	case IDP_EINVAL:
		return "invalid";
	case IDP_EUNPROCESSABLE:
		return "unprocessable";
	case IDP_ENOTFOUND:
		return "not_found";
	case IDP_ECONFLICT:
		return "conflict";
	case IDP_EPRECOND:
		return "precondition_failed";
	case IDP_EUNAUTH:
		return "unauthorized";
	case IDP_EFORBIDDEN:
		return "forbidden";
	case IDP_ETOOBIG:
		return "too_large";
	case IDP_EUNAVAIL:
		return "unavailable";
	case IDP_EIO:
		return "io_error";
	case IDP_EINTERNAL:
		return "internal";
	case IDP_EWOULDBLOCK:
		return "would_block";
	}
	return "unknown";
}

void
idp_diag_init(struct idp_diag *d)
{
	d->text[0] = '\0';
	d->len = 0;
	d->count = 0;
}

void
idp_diag_vadd(struct idp_diag *d, const char *fmt, va_list ap)
{
	size_t room;
	int n;

	d->count++;
	/* Leave room for the separating newline and the NUL. */
	if (d->len + 2 >= sizeof(d->text))
		return;
	if (d->len > 0)
		d->text[d->len++] = '\n';
	room = sizeof(d->text) - d->len;
	n = vsnprintf(d->text + d->len, room, fmt, ap);
	if (n < 0) {
		d->text[d->len] = '\0';
		return;
	}
	d->len += (size_t)n < room ? (size_t)n : room - 1;
}

void
idp_diag_add(struct idp_diag *d, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	idp_diag_vadd(d, fmt, ap);
	va_end(ap);
}

const char *
idp_diag_str(const struct idp_diag *d)
{
	return d->text;
}

static void
oom(size_t n)
{
	char msg[96];
	int len = snprintf(msg, sizeof(msg), "idpd: out of memory allocating %zu bytes\n", n);

	if (len > 0 && write(STDERR_FILENO, msg, (size_t)len) < 0) {
		/* Nothing more can be done; abort regardless. */
	}
	abort();
}

void *
idp_xmalloc(size_t n)
{
	void *p = malloc(n ? n : 1);

	if (p == NULL)
		oom(n);
	return p;
}

void *
idp_xcalloc(size_t nmemb, size_t size)
{
	void *p = calloc(nmemb ? nmemb : 1, size ? size : 1);

	if (p == NULL)
		oom(nmemb * size);
	return p;
}

void *
idp_xrealloc(void *p, size_t n)
{
	void *q = realloc(p, n ? n : 1);

	if (q == NULL)
		oom(n);
	return q;
}

char *
idp_xstrdup(const char *s)
{
	return idp_xstrndup(s, strlen(s));
}

char *
idp_xstrndup(const char *s, size_t n)
{
	char *p = idp_xmalloc(n + 1);

	memcpy(p, s, n);
	p[n] = '\0';
	return p;
}

char *
idp_xasprintf(const char *fmt, ...)
{
	va_list ap;
	char *p = NULL;
	int n;

	va_start(ap, fmt);
	n = vasprintf(&p, fmt, ap);
	va_end(ap);
	if (n < 0)
		oom(0);
	return p;
}

void
idp_wipe(void *p, size_t n)
{
	if (p != NULL)
		OPENSSL_cleanse(p, n);
}

const char *
idp_word_next(const char **s, size_t *len)
{
	const char *w = *s + strspn(*s, " ");

	if (*w == '\0') {
		*s = w;
		return NULL;
	}
	*len = strcspn(w, " ");
	*s = w + *len;
	return w;
}

bool
idp_word_listed(const char *list, const char *w, size_t len)
{
	const char *x;
	size_t n;

	while ((x = idp_word_next(&list, &n)) != NULL)
		if (n == len && strncmp(x, w, len) == 0)
			return true;
	return false;
}

int
idp_ct_equal(const void *a, const void *b, size_t n)
{
	return CRYPTO_memcmp(a, b, n) == 0;
}

int
idp_pem_no_passphrase(char *buf, int size, int rwflag, void *u)
{
	(void)buf;
	(void)size;
	(void)rwflag;
	(void)u;
	return -1;
}

/*
 * SHA-256 state: the algorithm fetched once, and one digest context per
 * thread, reset between uses (a context per call costs two allocations);
 * a thread's context is freed when the thread ends.
 */
static EVP_MD *sha256_md;
static pthread_key_t sha256_ctx_key;
static pthread_once_t sha256_once = PTHREAD_ONCE_INIT;

static void
sha256_ctx_free(void *ctx)
{
	EVP_MD_CTX_free(ctx);
}

static void
sha256_init(void)
{
	sha256_md = EVP_MD_fetch(NULL, "SHA256", NULL);
	if (pthread_key_create(&sha256_ctx_key, sha256_ctx_free) != 0) {
		EVP_MD_free(sha256_md);
		sha256_md = NULL;
	}
}

int
idp_sha256(const void *a, size_t alen, const void *b, size_t blen, uint8_t out[IDP_SHA256_LEN])
{
	EVP_MD_CTX *ctx;
	unsigned int n = 0;

	pthread_once(&sha256_once, sha256_init);
	if (sha256_md == NULL)
		return IDP_EINTERNAL;
	ctx = pthread_getspecific(sha256_ctx_key);
	if (ctx == NULL) {
		ctx = EVP_MD_CTX_new();
		if (ctx == NULL || pthread_setspecific(sha256_ctx_key, ctx) != 0) {
			EVP_MD_CTX_free(ctx);
			return IDP_EINTERNAL;
		}
	}
	if (EVP_DigestInit_ex2(ctx, sha256_md, NULL) != 1 || EVP_DigestUpdate(ctx, a, alen) != 1 ||
	    (blen != 0 && EVP_DigestUpdate(ctx, b, blen) != 1) ||
	    EVP_DigestFinal_ex(ctx, out, &n) != 1 || n != IDP_SHA256_LEN)
		return IDP_EINTERNAL;
	return IDP_OK;
}

const char *
idp_strerror(int errnum, char *buf, size_t len)
{
	/* _GNU_SOURCE gives the GNU strerror_r, which may return a static string. */
	return strerror_r(errnum, buf, len);
}

#define ID_POOL 512

int
idp_random_id_bytes(void *out, size_t n)
{
	/* Fixed per-thread storage: nothing to free when a thread ends. */
	static _Thread_local unsigned char pool[ID_POOL];
	static _Thread_local size_t left;

	if (n > 64)
		return IDP_EINVAL;
	if (left < n) {
		if (RAND_bytes(pool, sizeof(pool)) != 1)
			return IDP_EINTERNAL;
		left = sizeof(pool);
	}
	memcpy(out, pool + sizeof(pool) - left, n);
	/* Bytes handed out are not kept: a later reader of the pool cannot learn them. */
	idp_wipe(pool + sizeof(pool) - left, n);
	left -= n;
	return IDP_OK;
}
