/*
 * json_out.c - compact JSON writer (see json_out.h).
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "idpd/json_out.h"

size_t
idp_utf8_seq(const unsigned char *s, size_t n)
{
	unsigned c = s[0];
	size_t len;
	uint32_t cp;

	if (c < 0x80)
		return 1;
	if (c >= 0xc2 && c <= 0xdf)
		len = 2, cp = c & 0x1f;
	else if (c >= 0xe0 && c <= 0xef)
		len = 3, cp = c & 0x0f;
	else if (c >= 0xf0 && c <= 0xf4)
		len = 4, cp = c & 0x07;
	else
		return 0;
	if (len > n)
		return 0;
	for (size_t i = 1; i < len; i++) {
		if ((s[i] & 0xc0) != 0x80)
			return 0;
		cp = (cp << 6) | (s[i] & 0x3f);
	}
	/* Overlong forms, surrogates and code points past U+10FFFF. */
	if ((len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) || cp > 0x10ffff ||
	    (cp >= 0xd800 && cp <= 0xdfff))
		return 0;
	return len;
}

#define ONES UINT64_C(0x0101010101010101)
#define HIGHS UINT64_C(0x8080808080808080)

/* Whether any of the 8 bytes in x is zero (the classic bit trick: exact, no false positives). */
static inline uint64_t
has_zero(uint64_t x)
{
	return (x - ONES) & ~x & HIGHS;
}

/*
 * Whether any of the 8 bytes at p needs a look of its own: a control
 * character, '"', '\\' or a byte of a multi-byte sequence.  Strings are
 * mostly plain ASCII, so they go past 8 bytes at a time.
 */
static inline bool
word_needs_care(const unsigned char *p)
{
	uint64_t x;

	memcpy(&x, p, sizeof(x));
	return ((x | (x - 0x20 * ONES)) & HIGHS) != 0 || has_zero(x ^ ('"' * ONES)) != 0 ||
	       has_zero(x ^ ('\\' * ONES)) != 0;
}

size_t
idp_json_plain_prefix(const char *s, size_t len)
{
	const unsigned char *u = (const unsigned char *)s;
	size_t i = 0;

	while (len - i >= 8 && !word_needs_care(u + i))
		i += 8;
	while (i < len && u[i] >= 0x20 && u[i] < 0x80 && u[i] != '"' && u[i] != '\\')
		i++;
	return i;
}

int
idp_json_put_strn(struct idp_buf *b, const char *s, size_t len)
{
	const unsigned char *u = (const unsigned char *)s;
	size_t run = 0, i = 0;
	int rc = idp_buf_putc(b, '"');

	while (rc == IDP_OK && i < len) {
		unsigned char c;
		char esc[8];
		size_t n;

		i += idp_json_plain_prefix(s + i, len - i);
		if (i == len)
			break;
		c = u[i];
		if (c >= 0x20 && c != '"' && c != '\\') {
			n = c < 0x80 ? 1 : idp_utf8_seq(u + i, len - i);
			if (n == 0)
				return IDP_EINVAL;
			i += n;
			continue;
		}
		/* Flush the plain bytes before c, then c escaped. */
		rc = idp_buf_append(b, s + run, i - run);
		switch (c) {
		case '"':
			snprintf(esc, sizeof(esc), "\\\"");
			break;
		case '\\':
			snprintf(esc, sizeof(esc), "\\\\");
			break;
		case '\b':
			snprintf(esc, sizeof(esc), "\\b");
			break;
		case '\f':
			snprintf(esc, sizeof(esc), "\\f");
			break;
		case '\n':
			snprintf(esc, sizeof(esc), "\\n");
			break;
		case '\r':
			snprintf(esc, sizeof(esc), "\\r");
			break;
		case '\t':
			snprintf(esc, sizeof(esc), "\\t");
			break;
		default:
			snprintf(esc, sizeof(esc), "\\u%04X", c);
			break;
		}
		if (rc == IDP_OK)
			rc = idp_buf_puts(b, esc);
		run = ++i;
	}
	if (rc == IDP_OK)
		rc = idp_buf_append(b, s + run, len - run);
	if (rc == IDP_OK)
		rc = idp_buf_putc(b, '"');
	return rc;
}

int
idp_json_put_str(struct idp_buf *b, const char *s)
{
	return idp_json_put_strn(b, s, strlen(s));
}

int
idp_json_put_key(struct idp_buf *b, const char *key, bool first)
{
	int rc = first ? IDP_OK : idp_buf_putc(b, ',');

	if (rc == IDP_OK)
		rc = idp_json_put_str(b, key);
	if (rc == IDP_OK)
		rc = idp_buf_putc(b, ':');
	return rc;
}

int
idp_json_put_int(struct idp_buf *b, int64_t v)
{
	return idp_buf_put_int(b, v);
}

/* As jansson: 17 significant digits, always with '.' or an exponent, exponent unpadded. */
static int
put_real(struct idp_buf *b, double v)
{
	char t[64], out[64];
	size_t o = 0;
	int n = snprintf(t, sizeof(t), "%.17g", v);

	if (n < 0 || (size_t)n >= sizeof(t) - 3)
		return IDP_EINVAL;
	if (strpbrk(t, ".eE") == NULL)
		memcpy(t + n, ".0", 3);
	for (const char *p = t; *p != '\0'; p++) {
		out[o++] = *p;
		if (*p != 'e' && *p != 'E')
			continue;
		if (p[1] == '+')
			p++;
		else if (p[1] == '-')
			out[o++] = *++p;
		while (p[1] == '0' && p[2] != '\0')
			p++;
	}
	out[o] = '\0';
	return idp_buf_puts(b, out);
}

struct member {
	const char *key;
	const json_t *value;
};

static int
cmp_members(const void *a, const void *b)
{
	return strcmp(((const struct member *)a)->key, ((const struct member *)b)->key);
}

/* Values nest no deeper than this: idpd's inputs are bounded far below it. */
#define MAX_DEPTH 64

static int
put_value(struct idp_buf *b, const json_t *v, bool sort_keys, int depth)
{
	int rc = IDP_OK;

	if (depth > MAX_DEPTH)
		return IDP_EINVAL;
	switch (json_typeof(v)) {
	case JSON_NULL:
		return idp_buf_puts(b, "null");
	case JSON_TRUE:
		return idp_buf_puts(b, "true");
	case JSON_FALSE:
		return idp_buf_puts(b, "false");
	case JSON_INTEGER:
		return idp_json_put_int(b, (int64_t)json_integer_value(v));
	case JSON_REAL:
		return put_real(b, json_real_value(v));
	case JSON_STRING:
		return idp_json_put_strn(b, json_string_value(v), json_string_length(v));
	case JSON_ARRAY:
		rc = idp_buf_putc(b, '[');
		for (size_t i = 0; rc == IDP_OK && i < json_array_size(v); i++) {
			if (i > 0)
				rc = idp_buf_putc(b, ',');
			if (rc == IDP_OK)
				rc = put_value(b, json_array_get(v, i), sort_keys, depth + 1);
		}
		return rc == IDP_OK ? idp_buf_putc(b, ']') : rc;
	case JSON_OBJECT: {
		size_t n = json_object_size(v), k = 0;
		struct member small[16], *mem = n <= 16 ? small : idp_xcalloc(n, sizeof(*mem));
		const char *key;
		json_t *m;

		json_object_foreach((json_t *)v, key, m)
		{
			mem[k].key = key;
			mem[k++].value = m;
		}
		if (sort_keys)
			qsort(mem, k, sizeof(*mem), cmp_members);
		rc = idp_buf_putc(b, '{');
		for (size_t i = 0; rc == IDP_OK && i < k; i++) {
			rc = idp_json_put_key(b, mem[i].key, i == 0);
			if (rc == IDP_OK)
				rc = put_value(b, mem[i].value, sort_keys, depth + 1);
		}
		if (mem != small)
			free(mem);
		return rc == IDP_OK ? idp_buf_putc(b, '}') : rc;
	}
	}
	return IDP_EINVAL;
}

int
idp_json_put_value(struct idp_buf *b, const json_t *v, bool sort_keys)
{
	return v != NULL ? put_value(b, v, sort_keys, 0) : IDP_EINVAL;
}
