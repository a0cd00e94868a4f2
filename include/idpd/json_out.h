/*
 * json_out.h - compact JSON text written straight into an idp_buf, for the
 * hot paths where building a jansson tree only to serialize it would cost
 * more than the work itself.
 *
 * The output is byte for byte what jansson's json_dumps() writes with
 * JSON_COMPACT (plus JSON_SORT_KEYS when sorted): strings escaped the same
 * way (", \ and control characters; "\u00XX" in upper case; nothing else),
 * integers in decimal, reals with 17 significant digits.  Owns nothing;
 * any thread.
 */
#ifndef IDPD_JSON_OUT_H
#define IDPD_JSON_OUT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "idpd/buf.h"

/*
 * s[0..len) as a quoted JSON string.  IDP_EINVAL when s is not valid UTF-8
 * (jansson would refuse it too), IDP_ETOOBIG past the buffer's cap; on
 * error the buffer may hold part of the string.
 */
int idp_json_put_strn(struct idp_buf *b, const char *s, size_t len) IDP_WUR;

/*
 * Length of the UTF-8 sequence at s (n >= 1 bytes available), or 0 if it is
 * not valid: truncated, overlong, a surrogate or past U+10FFFF.
 */
size_t idp_utf8_seq(const unsigned char *s, size_t n);
/*
 * How many leading bytes of s[0..len) are plain: printable ASCII other
 * than '"' and '\\', which JSON carries as they are in either direction.
 * Goes 8 bytes at a time; for scanners and writers of JSON strings.
 */
size_t idp_json_plain_prefix(const char *s, size_t len);
int idp_json_put_str(struct idp_buf *b, const char *s) IDP_WUR;
/* "key": at the start of an object member, preceded by a comma unless first. */
int idp_json_put_key(struct idp_buf *b, const char *key, bool first) IDP_WUR;
int idp_json_put_int(struct idp_buf *b, int64_t v) IDP_WUR;
/* Any jansson value; objects' keys in strcmp order when sort_keys. */
int idp_json_put_value(struct idp_buf *b, const json_t *v, bool sort_keys) IDP_WUR;

#endif /* IDPD_JSON_OUT_H */
