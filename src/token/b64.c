/*
 * b64.c - base64url and base64 encoders and strict decoders.
 */
#include <stdlib.h>
#include <string.h>

#include "idpd/b64.h"

static const char url_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
static const char std_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* The 6-bit value of c in the chosen alphabet, or -1. */
static int
sextet(unsigned char c, int url)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == (url ? '-' : '+'))
		return 62;
	if (c == (url ? '_' : '/'))
		return 63;
	return -1;
}

static size_t
encode(const unsigned char *p, size_t n, char *out, const char *abc, int pad)
{
	size_t i, o = 0;

	for (i = 0; i + 3 <= n; i += 3) {
		unsigned v = (unsigned)p[i] << 16 | (unsigned)p[i + 1] << 8 | p[i + 2];

		out[o++] = abc[v >> 18 & 63];
		out[o++] = abc[v >> 12 & 63];
		out[o++] = abc[v >> 6 & 63];
		out[o++] = abc[v & 63];
	}
	if (n - i == 1) {
		unsigned v = (unsigned)p[i] << 16;

		out[o++] = abc[v >> 18 & 63];
		out[o++] = abc[v >> 12 & 63];
		if (pad) {
			out[o++] = '=';
			out[o++] = '=';
		}
	} else if (n - i == 2) {
		unsigned v = (unsigned)p[i] << 16 | (unsigned)p[i + 1] << 8;

		out[o++] = abc[v >> 18 & 63];
		out[o++] = abc[v >> 12 & 63];
		out[o++] = abc[v >> 6 & 63];
		if (pad)
			out[o++] = '=';
	}
	out[o] = '\0';
	return o;
}

/*
 * Decode an unpadded body.  The caller has already removed any padding and
 * checked that len % 4 != 1.  The last character of a partial group must
 * leave its unused low bits zero, so that each byte string has exactly one
 * encoding.
 */
static int
decode_body(const char *s, size_t len, unsigned char *out, size_t cap, size_t *out_len, int url)
{
	size_t rem = len % 4, need = len / 4 * 3 + (rem ? rem - 1 : 0);
	size_t i, o = 0;
	unsigned v = 0;
	int bits = 0;

	if (rem == 1)
		return IDP_EINVAL;
	if (need > cap)
		return IDP_ETOOBIG;
	for (i = 0; i < len; i++) {
		int x = sextet((unsigned char)s[i], url);

		if (x < 0)
			return IDP_EINVAL;
		v = (v << 6 | (unsigned)x) & 0xffffff;
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			out[o++] = (unsigned char)(v >> bits);
		}
	}
	/* Leftover bits (2 or 4) must be zero in a canonical encoding. */
	if (bits > 0 && (v & ((1u << bits) - 1)) != 0)
		return IDP_EINVAL;
	*out_len = o;
	return IDP_OK;
}

size_t
idp_b64url_encoded_len(size_t n)
{
	return n / 3 * 4 + (n % 3 ? n % 3 + 1 : 0);
}

size_t
idp_b64url_decoded_max(size_t len)
{
	return len / 4 * 3 + 2;
}

size_t
idp_b64url_encode_to(const void *data, size_t n, char *out)
{
	return encode(data, n, out, url_alphabet, 0);
}

char *
idp_b64url_encode(const void *data, size_t n, size_t *out_len)
{
	char *s = idp_xmalloc(idp_b64url_encoded_len(n) + 1);
	size_t len = idp_b64url_encode_to(data, n, s);

	if (out_len != NULL)
		*out_len = len;
	return s;
}

int
idp_b64url_decode(const char *s, size_t len, unsigned char *out, size_t cap, size_t *out_len)
{
	return decode_body(s, len, out, cap, out_len, 1);
}

int
idp_b64url_decode_alloc(const char *s, size_t len, unsigned char **out, size_t *out_len)
{
	size_t max = idp_b64url_decoded_max(len);
	unsigned char *p = idp_xmalloc(max + 1);
	int rc;

	*out = NULL;
	rc = idp_b64url_decode(s, len, p, max, out_len);
	if (rc != IDP_OK) {
		free(p);
		return rc;
	}
	p[*out_len] = '\0';
	*out = p;
	return IDP_OK;
}

size_t
idp_b64_encoded_len(size_t n)
{
	return (n + 2) / 3 * 4;
}

size_t
idp_b64_encode_to(const void *data, size_t n, char *out)
{
	return encode(data, n, out, std_alphabet, 1);
}

int
idp_b64_decode(const char *s, size_t len, unsigned char *out, size_t cap, size_t *out_len)
{
	size_t pad = 0;

	if (len % 4 != 0)
		return IDP_EINVAL;
	while (pad < 2 && pad < len && s[len - 1 - pad] == '=')
		pad++;
	/* A third '=' (or one in the body) is caught by the body decoder. */
	return decode_body(s, len - pad, out, cap, out_len, 0);
}
