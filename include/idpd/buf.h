/*
 * buf.h - a growable byte buffer with a hard size cap.
 *
 * The buffer owns its storage.  Appends that would pass the cap fail with
 * IDP_ETOOBIG and leave the contents as they were, so an input-driven buffer
 * can never grow without limit.  data is always NUL-terminated (when not NULL).
 */
#ifndef IDPD_BUF_H
#define IDPD_BUF_H

#include "idpd/common.h"

struct idp_buf {
	char *data;
	size_t len;
	size_t cap;
	size_t max; /* 0 means SIZE_MAX / 2 */
};

void idp_buf_init(struct idp_buf *b, size_t max);
void idp_buf_cleanup(struct idp_buf *b);
void idp_buf_reset(struct idp_buf *b);
/* Room for n more bytes (one allocation instead of several doublings); IDP_ETOOBIG past max. */
int idp_buf_reserve(struct idp_buf *b, size_t n) IDP_WUR;
int idp_buf_append(struct idp_buf *b, const void *p, size_t n) IDP_WUR;
int idp_buf_puts(struct idp_buf *b, const char *s) IDP_WUR;
int idp_buf_putc_slow(struct idp_buf *b, char c) IDP_WUR;
/* One byte: inline while there is room, the JSON writers put many. */
IDP_WUR static inline int
idp_buf_putc(struct idp_buf *b, char c)
{
	if (b->len + 2 <= b->cap && b->len < b->max) {
		b->data[b->len++] = c;
		b->data[b->len] = '\0';
		return IDP_OK;
	}
	return idp_buf_putc_slow(b, c);
}
int idp_buf_printf(struct idp_buf *b, const char *fmt, ...) IDP_PRINTF(2, 3) IDP_WUR;
/* v in decimal, as "%lld" would write it, without going through printf. */
int idp_buf_put_int(struct idp_buf *b, int64_t v) IDP_WUR;
int idp_buf_vprintf(struct idp_buf *b, const char *fmt, va_list ap) IDP_PRINTF(2, 0) IDP_WUR;
/* Hand the storage to the caller (free() it); the buffer is left empty. */
char *idp_buf_take(struct idp_buf *b, size_t *len);
/* The contents as a string; "" for an empty buffer. */
const char *idp_buf_str(const struct idp_buf *b);

#endif /* IDPD_BUF_H */
