/*
 * form.c - application/x-www-form-urlencoded bodies (the OAuth endpoints'
 * request format) and the RFC 6749 error body those endpoints answer with.
 *
 * The parser is strict where OAuth asks it to be and where a lenient reading
 * could make two parsers disagree: a parameter given twice is refused (RFC
 * 6749 section 3.2), a '%' not followed by two hex digits is refused, and a
 * decoded name or value must be UTF-8 without control characters, so
 * nothing that reaches a handler, a log line or an audit event can carry a
 * NUL or a newline.  '+' is a space, as the format says.  Empty pairs
 * ("a=1&&b=2") are skipped and a pair without '=' is a name with an empty
 * value, as browsers send them.  A parameter with an empty value is kept
 * (it still counts as given, so "a=&a=1" is a repetition) but reads as
 * absent: RFC 6749 section 3.1 says it "MUST be treated as if [it was]
 * omitted from the request".
 */
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "idpd/http.h"

static int
hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* Whether s[0..n) is UTF-8 (no overlongs, no surrogates) without control characters. */
static bool
text_ok(const unsigned char *s, size_t n)
{
	size_t i = 0;

	while (i < n) {
		unsigned char c = s[i];
		size_t len;
		uint32_t cp;

		if (c < 0x80) {
			if (c < 0x20 || c == 0x7f)
				return false;
			i++;
			continue;
		}
		if (c >= 0xc2 && c <= 0xdf) {
			len = 2;
			cp = c & 0x1f;
		} else if (c >= 0xe0 && c <= 0xef) {
			len = 3;
			cp = c & 0x0f;
		} else if (c >= 0xf0 && c <= 0xf4) {
			len = 4;
			cp = c & 0x07;
		} else {
			return false;
		}
		if (i + len > n)
			return false;
		for (size_t k = 1; k < len; k++) {
			if ((s[i + k] & 0xc0) != 0x80)
				return false;
			cp = (cp << 6) | (s[i + k] & 0x3f);
		}
		if ((len == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) ||
		    (len == 4 && (cp < 0x10000 || cp > 0x10ffff)) || (cp >= 0x80 && cp <= 0x9f))
			return false;
		i += len;
	}
	return true;
}

/*
 * Unescape s[0..n) into out, at most max bytes ('+' is a space, %XX its
 * byte; never longer than s), its length into *len.  IDP_EINVAL for a '%'
 * without two hex digits, IDP_ETOOBIG past max.
 */
static int
unescape(const char *s, size_t n, char *out, size_t max, size_t *len)
{
	size_t o = 0;

	for (size_t i = 0; i < n; i++) {
		char c = s[i];

		if (c == '+') {
			c = ' ';
		} else if (c == '%') {
			int hi = i + 1 < n ? hexval(s[i + 1]) : -1;
			int lo = i + 2 < n ? hexval(s[i + 2]) : -1;

			if (hi < 0 || lo < 0)
				return IDP_EINVAL;
			c = (char)(hi * 16 + lo);
			i += 2;
		}
		if (o == max)
			return IDP_ETOOBIG;
		out[o++] = c;
	}
	*len = o;
	return IDP_OK;
}

/*
 * Decode s[0..n) into a new arena string; NULL with diag on a bad escape,
 * bad text, a result longer than max, or a full arena.
 */
static char *
decode(const char *s, size_t n, size_t max, const char *what, struct idp_arena *arena,
       struct idp_diag *diag, int *err)
{
	char *out = idp_arena_alloc(arena, n + 1);
	size_t o = 0;

	*err = IDP_EINVAL;
	if (out == NULL) {
		*err = IDP_ETOOBIG;
		idp_diag_add(diag, "the form is too large");
		return NULL;
	}
	if (unescape(s, n, out, n, &o) != IDP_OK) {
		idp_diag_add(diag, "%s: '%%' must be followed by two hex digits", what);
		return NULL;
	}
	out[o] = '\0';
	if (o > max) {
		*err = IDP_ETOOBIG;
		idp_diag_add(diag, "%s: longer than %zu bytes", what, max);
		return NULL;
	}
	if (!text_ok((const unsigned char *)out, o)) {
		idp_diag_add(diag, "%s: not UTF-8 text without control characters", what);
		return NULL;
	}
	return out;
}

int
http_form_decode(const char *s, size_t n, char *out, size_t cap, size_t *len)
{
	size_t o = 0;
	int rc = cap > 0 ? unescape(s, n, out, cap - 1, &o) : IDP_ETOOBIG;

	if (rc == IDP_OK && !text_ok((const unsigned char *)out, o))
		rc = IDP_EINVAL;
	if (rc != IDP_OK) {
		if (cap > 0)
			out[0] = '\0';
		return rc;
	}
	out[o] = '\0';
	*len = o;
	return IDP_OK;
}

/* The value of name as given, "" included; NULL when the form does not have it. */
static const char *
find(const struct http_form *f, const char *name)
{
	for (size_t i = 0; i < f->n; i++)
		if (strcmp(f->p[i].name, name) == 0)
			return f->p[i].value;
	return NULL;
}

int
http_form_parse(const char *body, size_t len, struct idp_arena *arena, struct http_form *out,
                struct idp_diag *diag)
{
	size_t at = 0;
	int err;

	memset(out, 0, sizeof(*out));
	if (len > HTTP_FORM_MAX_BODY) {
		idp_diag_add(diag, "the form is longer than %d bytes", HTTP_FORM_MAX_BODY);
		return IDP_ETOOBIG;
	}
	while (at < len) {
		const char *pair = body + at, *eq;
		size_t plen = 0, nlen;
		char *name, *value;

		while (at + plen < len && pair[plen] != '&')
			plen++;
		at += plen + 1;
		if (plen == 0)
			continue;
		eq = memchr(pair, '=', plen);
		nlen = eq != NULL ? (size_t)(eq - pair) : plen;
		if (nlen == 0) {
			idp_diag_add(diag, "a parameter without a name");
			return IDP_EINVAL;
		}
		if (out->n == HTTP_FORM_MAX_PARAMS) {
			idp_diag_add(diag, "more than %d parameters", HTTP_FORM_MAX_PARAMS);
			return IDP_ETOOBIG;
		}
		name =
		    decode(pair, nlen, HTTP_FORM_MAX_NAME, "a parameter name", arena, diag, &err);
		if (name == NULL)
			return err;
		if (name[0] == '\0') {
			idp_diag_add(diag, "a parameter without a name");
			return IDP_EINVAL;
		}
		value = eq != NULL ? decode(eq + 1, plen - nlen - 1, HTTP_FORM_MAX_VALUE, name,
		                            arena, diag, &err)
		                   : decode("", 0, HTTP_FORM_MAX_VALUE, name, arena, diag, &err);
		if (value == NULL)
			return err;
		if (find(out, name) != NULL) {
			idp_diag_add(diag, "%s: given more than once", name);
			out->repeated = name;
			return IDP_EINVAL;
		}
		out->p[out->n].name = name;
		out->p[out->n].value = value;
		out->n++;
	}
	return IDP_OK;
}

const char *
http_form_get(const struct http_form *f, const char *name)
{
	const char *v = find(f, name);

	return v != NULL && v[0] != '\0' ? v : NULL;
}

bool
http_req_is_form(struct http_req *req)
{
	static const char form[] = "application/x-www-form-urlencoded";
	const char *ct = http_req_header(req, "Content-Type");
	size_t n;

	if (ct == NULL)
		return false;
	n = strcspn(ct, ";");
	while (n > 0 && (ct[n - 1] == ' ' || ct[n - 1] == '\t'))
		n--;
	return n == sizeof(form) - 1 && strncasecmp(ct, form, n) == 0;
}

int
http_req_form(struct http_req *req, struct http_form *out, struct idp_diag *diag)
{
	size_t len;
	const char *body = http_req_body(req, &len);

	return http_form_parse(body, len, http_req_arena(req), out, diag);
}

json_t *
http_oauth_description(const char *s)
{
	char *d = idp_xstrdup(s);
	json_t *j;

	for (char *p = d; *p != '\0'; p++) {
		unsigned char c = (unsigned char)*p;

		if (c < 0x20 || c > 0x7e || c == '"' || c == '\\')
			*p = '?';
	}
	j = json_string(d);
	free(d);
	return j;
}

void
http_reply_oauth_error(struct http_req *req, int status, const char *error, const char *description)
{
	json_t *body = json_pack("{s:s}", "error", error);

	if (body != NULL && description != NULL)
		json_object_set_new(body, "error_description", http_oauth_description(description));
	http_add_header(req, "Cache-Control", "no-store");
	http_add_header(req, "Pragma", "no-cache");
	http_reply_json(req, status, body);
}
