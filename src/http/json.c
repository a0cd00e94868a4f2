/*
 * json.c - JSON intake with limits.
 *
 * jansson bounds nesting only at a compile-time depth far above what idpd
 * accepts, so the depth is checked first by a byte scan that tracks strings
 * and escapes; the parse itself rejects duplicate keys and trailing data.
 */
#include <stdio.h>
#include <string.h>

#include "idpd/http.h"
#include "idpd/json_out.h"

/* Deepest nesting of [ and { outside strings; -1 if it passes max_depth. */
static int
scan_depth(const char *s, size_t len, int max_depth)
{
	int depth = 0;
	bool in_str = false, esc = false;

	for (size_t i = 0; i < len; i++) {
		char c = s[i];

		if (in_str) {
			if (esc)
				esc = false;
			else if (c == '\\')
				esc = true;
			else if (c == '"')
				in_str = false;
			continue;
		}
		if (c == '"') {
			in_str = true;
		} else if (c == '[' || c == '{') {
			if (++depth > max_depth)
				return -1;
		} else if (c == ']' || c == '}') {
			depth--;
		}
	}
	return 0;
}

static bool
is_ws(char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

/*
 * A plain JSON string at s[*i] (after its opening quote): no escapes and no
 * control characters.  Sets *start and *n; false for anything else.
 */
static bool
flat_string(const char *s, size_t len, size_t *i, const char **start, size_t *n, bool *ascii)
{
	size_t j = *i + idp_json_plain_prefix(s + *i, len - *i);

	*ascii = j < len && s[j] == '"';
	while (j < len && s[j] != '"') {
		unsigned char c = (unsigned char)s[j];

		if (c < 0x20 || c == '\\')
			return false;
		j++;
	}
	if (j == len)
		return false;
	*start = s + *i;
	*n = j - *i;
	*i = j + 1;
	return true;
}

/* A value that ends here: the next byte is whitespace, ',' or '}'. */
static bool
ends_here(const char *s, size_t len, size_t i)
{
	return i < len && (is_ws(s[i]) || s[i] == ',' || s[i] == '}');
}

/*
 * The common body, a flat object of strings, small integers, true, false
 * and null with no escapes, read straight into jansson values: the lexer
 * of json_loadb costs more than the rest of a token request's parsing.
 * Anything else (nesting, escapes, reals, duplicates, bad UTF-8, trailing
 * data, any error) returns NULL and is left to json_loadb, so the result
 * and every error message are jansson's.  IDP_TESTING makes it visible.
 */
IDP_STATIC json_t *
json_parse_flat(const char *s, size_t len)
{
	json_t *o;
	size_t i = 0;

	while (i < len && is_ws(s[i]))
		i++;
	if (i == len || s[i] != '{')
		return NULL;
	o = json_object();
	if (o == NULL)
		return NULL;
	i++;
	for (bool first = true;; first = false) {
		const char *k, *vs;
		size_t kn, vn;
		json_t *v = NULL;
		bool ascii;

		while (i < len && is_ws(s[i]))
			i++;
		if (first && i < len && s[i] == '}') {
			i++;
			break;
		}
		if (i == len || s[i] != '"')
			goto fallback;
		i++;
		if (!flat_string(s, len, &i, &k, &kn, &ascii))
			goto fallback;
		while (i < len && is_ws(s[i]))
			i++;
		if (i == len || s[i] != ':')
			goto fallback;
		i++;
		while (i < len && is_ws(s[i]))
			i++;
		if (i == len)
			goto fallback;
		if (s[i] == '"') {
			i++;
			if (!flat_string(s, len, &i, &vs, &vn, &ascii))
				goto fallback;
			/* Plain ASCII is valid UTF-8: jansson need not check it again. */
			v = ascii ? json_stringn_nocheck(vs, vn)
			          : json_stringn(vs, vn); /* NULL for bad UTF-8 */
		} else if (s[i] == '-' || (s[i] >= '0' && s[i] <= '9')) {
			size_t d = i + (s[i] == '-'), e = d;
			long long x = 0;

			while (e < len && s[e] >= '0' && s[e] <= '9' && e - d < 18)
				x = x * 10 + (s[e++] - '0');
			/* No digits, a leading zero, -0, or more than 18 digits: leave it. */
			if (e == d || (s[d] == '0' && e - d > 1) || (s[i] == '-' && x == 0) ||
			    !ends_here(s, len, e))
				goto fallback;
			v = json_integer(s[i] == '-' ? -x : x);
			i = e;
		} else if (len - i >= 4 && memcmp(s + i, "true", 4) == 0 &&
		           ends_here(s, len, i + 4)) {
			v = json_true();
			i += 4;
		} else if (len - i >= 5 && memcmp(s + i, "false", 5) == 0 &&
		           ends_here(s, len, i + 5)) {
			v = json_false();
			i += 5;
		} else if (len - i >= 4 && memcmp(s + i, "null", 4) == 0 &&
		           ends_here(s, len, i + 4)) {
			v = json_null();
			i += 4;
		}
		if (v == NULL)
			goto fallback;
		/* A duplicate key, or a key that is not valid UTF-8: jansson says why. */
		if (json_object_getn(o, k, kn) != NULL) {
			json_decref(v);
			goto fallback;
		}
		if (json_object_setn_new(o, k, kn, v) != 0)
			goto fallback;
		while (i < len && is_ws(s[i]))
			i++;
		if (i < len && s[i] == ',') {
			i++;
			continue;
		}
		if (i < len && s[i] == '}') {
			i++;
			break;
		}
		goto fallback;
	}
	while (i < len && is_ws(s[i]))
		i++;
	if (i == len)
		return o;
fallback:
	json_decref(o);
	return NULL;
}

json_t *
http_json_parse(const char *text, size_t len, int max_depth, char *err, size_t err_len)
{
	json_error_t je;
	json_t *j;

	/* A flat object is one level deep, and holds no NUL (a control
	 * character, refused by flat_string): the checks below are for the
	 * rest. */
	if (max_depth >= 1 && (j = json_parse_flat(text, len)) != NULL)
		return j;
	if (scan_depth(text, len, max_depth) < 0) {
		snprintf(err, err_len, "nesting deeper than %d levels", max_depth);
		return NULL;
	}
	if (memchr(text, '\0', len) != NULL) {
		snprintf(err, err_len, "NUL byte in body");
		return NULL;
	}
	j = json_loadb(text, len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &je);
	if (j == NULL) {
		snprintf(err, err_len, "line %d, column %d: %s", je.line, je.column, je.text);
		return NULL;
	}
	return j;
}

void
http_json_unknown_members(const json_t *obj, const char *const *known, struct idp_diag *d)
{
	const char *k;
	json_t *v;

	json_object_foreach((json_t *)obj, k, v)
	{
		size_t i = 0;

		(void)v;
		while (known[i] != NULL && strcmp(known[i], k) != 0)
			i++;
		if (known[i] == NULL)
			idp_diag_add(d, "%.64s: not a member of this request", k);
	}
}
