/*
 * redact.c - hiding secrets in tool parameters and detail objects, and the
 * size and depth bounds on them (see audit_redact_params in audit.h).
 */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "audit_int.h"

/* Compared against keys lower-cased and stripped of '_', '-', '.' and ' '. */
static const char *const secret_words[] = {
    "password",      "passwd", "passphrase", "secret",     "token",
    "authorization", "apikey", "privatekey", "credential", "cookie",
    "session",       "jwt",    "pwd",        "accesskey",  "signingkey",
};

bool
audit_key_is_secret(const char *key)
{
	char small[256], *norm;
	size_t len = strlen(key), n = 0;
	bool hit = false;

	norm = len < sizeof(small) ? small : idp_xmalloc(len + 1);
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)key[i];

		if (c == '_' || c == '-' || c == '.' || c == ' ')
			continue;
		norm[n++] = (char)(c < 0x80 ? tolower(c) : c);
	}
	norm[n] = '\0';
	for (size_t i = 0; i < IDP_ARRAY_LEN(secret_words) && !hit; i++)
		hit = strstr(norm, secret_words[i]) != NULL;
	if (norm != small)
		free(norm);
	return hit;
}

static bool
has_prefix_nocase(const char *s, const char *prefix)
{
	return strncasecmp(s, prefix, strlen(prefix)) == 0;
}

static bool
b64url_char(unsigned char c)
{
	return isalnum(c) || c == '-' || c == '_' || c == '=';
}

/* Whether a compact JWS/JWE starts at p: "eyJ", then base64url segments, two dots or more. */
static bool
jwt_at(const char *p)
{
	size_t dots = 0, seg = 0;

	if (strncmp(p, "eyJ", 3) != 0)
		return false;
	for (; *p != '\0'; p++) {
		unsigned char c = (unsigned char)*p;

		if (c == '.') {
			if (seg == 0)
				return false;
			dots++;
			seg = 0;
		} else if (b64url_char(c)) {
			seg++;
		} else {
			break;
		}
	}
	return dots >= 2;
}

/* Whether a run of at least n characters none of which is a space starts at p. */
static bool
word_at_least(const char *p, size_t n)
{
	size_t k = 0;

	while (p[k] != '\0' && !isspace((unsigned char)p[k]))
		k++;
	return k >= n;
}

bool
audit_value_is_secret(const char *s)
{
	while (isspace((unsigned char)*s))
		s++;
	/* The whole value: an HTTP authorization value, a scheme and one word
	 * ("Basic dXNlcjpwdw==", not "basic usage of the API"). */
	if (has_prefix_nocase(s, "bearer ") || has_prefix_nocase(s, "basic ")) {
		const char *w = s + (tolower((unsigned char)s[1]) == 'e' ? 7 : 6);

		while (*w == ' ')
			w++;
		while (*w != '\0' && !isspace((unsigned char)*w))
			w++;
		while (isspace((unsigned char)*w))
			w++;
		if (*w == '\0')
			return true;
	}
	/* Anywhere in it: a bearer token, an idpd API key, a JWS/JWE, as in a
	 * command line or a header copied into a result. */
	for (const char *p = s; *p != '\0'; p++) {
		if ((p == s || !isalnum((unsigned char)p[-1])) &&
		    ((has_prefix_nocase(p, "bearer ") && word_at_least(p + 7, 8)) ||
		     (strncmp(p, "idpk_", 5) == 0 && word_at_least(p + 5, 8)) || jwt_at(p)))
			return true;
	}
	return false;
}

static json_t *
redacted(void)
{
	return audit_json_must(json_string(AUDIT_REDACTED));
}

/* Recursion is bounded: the caller checked the depth first. */
static void
redact(json_t *v)
{
	if (json_is_object(v)) {
		for (void *it = json_object_iter(v); it != NULL;
		     it = json_object_iter_next(v, it)) {
			json_t *child = json_object_iter_value(it);

			if (audit_key_is_secret(json_object_iter_key(it)) ||
			    (json_is_string(child) &&
			     audit_value_is_secret(json_string_value(child)))) {
				if (json_object_iter_set_new(v, it, redacted()) != 0)
					audit_json_must(NULL);
			} else {
				redact(child);
			}
		}
	} else if (json_is_array(v)) {
		for (size_t i = 0; i < json_array_size(v); i++) {
			json_t *child = json_array_get(v, i);

			if (json_is_string(child) &&
			    audit_value_is_secret(json_string_value(child))) {
				if (json_array_set_new(v, i, redacted()) != 0)
					audit_json_must(NULL);
			} else {
				redact(child);
			}
		}
	}
}

int
audit_json_depth(const json_t *j, int limit)
{
	int max = 0;

	if (!json_is_object(j) && !json_is_array(j))
		return 0;
	if (limit <= 0)
		return 1;
	if (json_is_object(j)) {
		const char *key;
		json_t *v;

		json_object_foreach((json_t *)j, key, v)
		{
			int d = audit_json_depth(v, limit - 1);

			if (d > max)
				max = d;
			if (1 + max > limit)
				break;
		}
	} else {
		size_t i;
		json_t *v;

		json_array_foreach(j, i, v)
		{
			int d = audit_json_depth(v, limit - 1);

			if (d > max)
				max = d;
			if (1 + max > limit)
				break;
		}
	}
	return 1 + max;
}

/*
 * An upper bound of v's compact serialization, without writing it: six
 * bytes per string byte (\u00XX) and the widest number.  Stops counting
 * once past limit.
 */
static size_t
json_size_bound(const json_t *v, size_t limit)
{
	size_t n = 0;

	switch (json_typeof(v)) {
	case JSON_OBJECT: {
		const char *key;
		json_t *child;

		n = 2;
		json_object_foreach((json_t *)v, key, child)
		{
			n += 6 * strlen(key) + 4 + json_size_bound(child, limit);
			if (n > limit)
				break;
		}
		return n;
	}
	case JSON_ARRAY: {
		size_t i;
		json_t *child;

		n = 2;
		json_array_foreach(v, i, child)
		{
			n += 1 + json_size_bound(child, limit);
			if (n > limit)
				break;
		}
		return n;
	}
	case JSON_STRING:
		return 2 + 6 * json_string_length(v);
	case JSON_INTEGER:
	case JSON_REAL:
		return 32;
	default:
		return 5;
	}
}

int
audit_redact_params(json_t *params)
{
	if (params == NULL)
		return IDP_EINVAL;
	if (audit_json_depth(params, AUDIT_JSON_MAX_DEPTH) > AUDIT_JSON_MAX_DEPTH)
		return IDP_EINVAL;
	redact(params);
	/* The exact size only when the cheap bound cannot vouch for it. */
	if (json_size_bound(params, AUDIT_JSON_MAX_BYTES) > AUDIT_JSON_MAX_BYTES &&
	    json_dumpb(params, NULL, 0, JSON_COMPACT | JSON_REAL_PRECISION(17)) >
	        AUDIT_JSON_MAX_BYTES)
		return IDP_ETOOBIG;
	return IDP_OK;
}
