/*
 * common.h - the project-wide error codes, diagnostics and allocation rules.
 *
 * Every function that can fail returns an idp_err (0 or a negative code) or
 * NULL with a struct idp_diag filled in.  Detail text travels in the diag,
 * never in the code.  Out of memory aborts the process with a message: every
 * input-driven size is bounded elsewhere, so OOM means the machine is gone.
 */
#ifndef IDPD_COMMON_H
#define IDPD_COMMON_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define IDP_WUR __attribute__((warn_unused_result))
#define IDP_PRINTF(a, b) __attribute__((format(printf, a, b)))
#define IDP_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/*
 * Test builds reach static functions through this macro: a test defines
 * IDP_TESTING and the function becomes visible.
 */
#ifdef IDP_TESTING
#define IDP_STATIC
#else
#define IDP_STATIC static
#endif

typedef enum idp_err {
	IDP_OK = 0,
	IDP_EINVAL = -1,         /* malformed input (syntax, shape, limits) */
	IDP_EUNPROCESSABLE = -2, /* well-formed but semantically invalid */
	IDP_ENOTFOUND = -3,
	IDP_ECONFLICT = -4,  /* duplicate, or state forbids the change */
	IDP_EPRECOND = -5,   /* If-Match / version mismatch */
	IDP_EUNAUTH = -6,    /* no or bad credentials */
	IDP_EFORBIDDEN = -7, /* authenticated but not allowed */
	IDP_ETOOBIG = -8,    /* a size limit was exceeded */
	IDP_EUNAVAIL = -9,   /* a dependency is down: fail closed */
	IDP_EIO = -10,       /* file or socket error */
	IDP_EINTERNAL = -11, /* a bug or an impossible state */
	IDP_EWOULDBLOCK =
	    -12, /* the answer needs a wait the caller cannot afford (an I/O thread) */
} idp_err;

/* Stable lower-case name of an error code ("invalid", "not_found", ...). */
const char *idp_err_name(int err);

/*
 * A diagnostic: zero or more lines of human-readable detail.  Bounded to
 * IDP_DIAG_MAX bytes; lines beyond that are counted but dropped.
 */
#define IDP_DIAG_MAX 16384
struct idp_diag {
	char text[IDP_DIAG_MAX];
	size_t len;
	unsigned count; /* lines added, including dropped ones */
};

void idp_diag_init(struct idp_diag *d);
/* Append one line (no trailing newline needed).  Never fails. */
void idp_diag_add(struct idp_diag *d, const char *fmt, ...) IDP_PRINTF(2, 3);
void idp_diag_vadd(struct idp_diag *d, const char *fmt, va_list ap) IDP_PRINTF(2, 0);
/* The text, "" when empty; valid until the next add or init. */
const char *idp_diag_str(const struct idp_diag *d);

/*
 * n random bytes for an identifier (an audit event id, a request id): not
 * for keys, nonces or anything secret.  They come from a small per-thread
 * pool refilled with one RAND_bytes call, so a request's ids cost one draw
 * from the CSPRNG between them, not one each.  IDP_EINTERNAL if the CSPRNG
 * fails; n at most 64.  Any thread.
 */
int idp_random_id_bytes(void *out, size_t n) IDP_WUR;

/* Allocation that cannot fail: abort with a message on OOM. */
void *idp_xmalloc(size_t n);
void *idp_xcalloc(size_t nmemb, size_t size);
void *idp_xrealloc(void *p, size_t n);
char *idp_xstrdup(const char *s);
char *idp_xstrndup(const char *s, size_t n);
char *idp_xasprintf(const char *fmt, ...) IDP_PRINTF(1, 2);

/* Overwrite a secret so the compiler cannot elide it. */
void idp_wipe(void *p, size_t n);

/*
 * The words of a space-separated list (scopes, audiences), one per call:
 * the next word of *s, *len bytes long, or NULL when none is left; *s moves
 * past it.  Runs of spaces separate as one.
 */
const char *idp_word_next(const char **s, size_t *len);
/* Whether the word w (len bytes) is one of list's. */
bool idp_word_listed(const char *list, const char *w, size_t len);

/* Constant-time equality of two byte strings of equal length n. */
int idp_ct_equal(const void *a, const void *b, size_t n);
/*
 * An OpenSSL pem_password_cb that gives no passphrase: an encrypted PEM key
 * fails to load instead of OpenSSL asking the terminal.
 */
int idp_pem_no_passphrase(char *buf, int size, int rwflag, void *u);
/*
 * SHA-256 of a (alen bytes) followed by b (blen bytes; NULL when 0) into
 * out.  The algorithm is fetched once per process: OpenSSL 3's SHA256()
 * and EVP_sha256() look it up again on every call, which costs more than
 * hashing a token.  IDP_EINTERNAL if OpenSSL fails.  Any thread.
 */
#define IDP_SHA256_LEN 32
int idp_sha256(const void *a, size_t alen, const void *b, size_t blen,
               uint8_t out[IDP_SHA256_LEN]) IDP_WUR;

/* strerror_r wrapper that always yields a string. */
const char *idp_strerror(int errnum, char *buf, size_t len);

#endif /* IDPD_COMMON_H */
