/*
 * buf.c - growable byte buffer with a hard cap (see buf.h).
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "idpd/buf.h"

void
idp_buf_init(struct idp_buf *b, size_t max)
{
	b->data = NULL;
	b->len = 0;
	b->cap = 0;
	b->max = max ? max : SIZE_MAX / 2;
}

void
idp_buf_cleanup(struct idp_buf *b)
{
	free(b->data);
	b->data = NULL;
	b->len = 0;
	b->cap = 0;
}

void
idp_buf_reset(struct idp_buf *b)
{
	b->len = 0;
	if (b->data != NULL)
		b->data[0] = '\0';
}

/*
 * Make room for n more bytes plus the terminating NUL: exactly that much
 * when exact (the caller knows the size), else by doubling.
 */
static int
grow(struct idp_buf *b, size_t n, bool exact)
{
	size_t need, cap;

	if (n > b->max || b->len > b->max - n)
		return IDP_ETOOBIG;
	need = b->len + n + 1;
	if (need <= b->cap)
		return IDP_OK;
	if (exact) {
		cap = need < 64 ? 64 : need;
	} else {
		/* Most buffers hold a JSON document or a token: start past
		 * the first few doublings. */
		cap = b->cap ? b->cap : 256;
		while (cap < need)
			cap *= 2;
		/* Never past what max allows: a body of max bytes takes max + 1, not twice. */
		if (cap > b->max + 1)
			cap = b->max + 1;
	}
	b->data = idp_xrealloc(b->data, cap);
	b->cap = cap;
	if (b->len == 0)
		b->data[0] = '\0';
	return IDP_OK;
}

static int
reserve(struct idp_buf *b, size_t n)
{
	return grow(b, n, false);
}

int
idp_buf_reserve(struct idp_buf *b, size_t n)
{
	return grow(b, n, true);
}

int
idp_buf_append(struct idp_buf *b, const void *p, size_t n)
{
	int rc = reserve(b, n);

	if (rc != IDP_OK)
		return rc;
	if (n > 0)
		memcpy(b->data + b->len, p, n);
	b->len += n;
	b->data[b->len] = '\0';
	return IDP_OK;
}

int
idp_buf_puts(struct idp_buf *b, const char *s)
{
	return idp_buf_append(b, s, strlen(s));
}

int
idp_buf_putc_slow(struct idp_buf *b, char c)
{
	return idp_buf_append(b, &c, 1);
}

int
idp_buf_vprintf(struct idp_buf *b, const char *fmt, va_list ap)
{
	va_list ap2;
	int n, rc;

	va_copy(ap2, ap);
	n = vsnprintf(NULL, 0, fmt, ap2);
	va_end(ap2);
	if (n < 0)
		return IDP_EINVAL;
	rc = reserve(b, (size_t)n);
	if (rc != IDP_OK)
		return rc;
	vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
	b->len += (size_t)n;
	return IDP_OK;
}

int
idp_buf_put_int(struct idp_buf *b, int64_t v)
{
	char t[24];
	size_t n = sizeof(t);
	/* In unsigned arithmetic, so that INT64_MIN negates without overflow. */
	uint64_t u = v < 0 ? 0 - (uint64_t)v : (uint64_t)v;

	do {
		t[--n] = (char)('0' + u % 10);
		u /= 10;
	} while (u != 0);
	if (v < 0)
		t[--n] = '-';
	return idp_buf_append(b, t + n, sizeof(t) - n);
}

int
idp_buf_printf(struct idp_buf *b, const char *fmt, ...)
{
	va_list ap;
	int rc;

	va_start(ap, fmt);
	rc = idp_buf_vprintf(b, fmt, ap);
	va_end(ap);
	return rc;
}

char *
idp_buf_take(struct idp_buf *b, size_t *len)
{
	char *p;

	if (b->data == NULL)
		b->data = idp_xcalloc(1, 1);
	p = b->data;
	if (len != NULL)
		*len = b->len;
	b->data = NULL;
	b->len = 0;
	b->cap = 0;
	return p;
}

const char *
idp_buf_str(const struct idp_buf *b)
{
	return b->data ? b->data : "";
}
