/*
 * redact.c - hiding secrets in tool parameters and detail objects, and the
 * size and depth bounds on them (see audit_redact_params in audit.h).
 */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "audit_int.h"

/*
 * Characters the token scan examined, in this thread: tests check through
 * it that the scan stays linear in its input.
 */
#ifdef IDP_TESTING
_Thread_local size_t redact_scan_steps;
#define SCAN_STEP() (redact_scan_steps++)
#else
#define SCAN_STEP() ((void)0)
#endif

/* The largest parameters or detail object redaction scans: an event's whole text. */
#define REDACT_INPUT_MAX AUDIT_EVENT_JSON_MAX

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

/*
 * Whether a compact JWS/JWE starts at p, and where the run of base64url
 * characters and dots that starts there ends (*end).  A token is "eyJ", the
 * rest of its header, then at least two dots and one non-empty segment
 * after the header.  Empty segments are allowed (a JWE with alg "dir" has
 * no encrypted key; a detached-payload JWS has no payload), and so are
 * dots after the last segment ("...", as audit_json_clip appends).
 *
 * An "eyJ" inside a run that is not a token cannot start one either (its
 * run ends where this one does, with no more dots, and any segment after
 * its header would have been one after this header), so the caller
 * looks for the next token only from *end and the whole scan stays linear.
 */
static bool
jwt_at(const char *p, const char **end)
{
	size_t dots = 0, seg = 0;
	bool filled = false; /* a non-empty segment after the header */

	*end = p + 1;
	if (strncmp(p, "eyJ", 3) != 0)
		return false;
	for (; *p != '\0'; p++) {
		unsigned char c = (unsigned char)*p;

		SCAN_STEP();
		if (c == '.') {
			dots++;
			seg = 0;
		} else if (b64url_char(c)) {
			seg++;
			if (dots > 0)
				filled = true;
		} else {
			break;
		}
	}
	*end = p;
	return dots >= 2 && filled;
}

/* Whether a run of at least n characters none of which is a space starts at p. */
static bool
word_at_least(const char *p, size_t n)
{
	size_t k = 0;

	/* Stops at n: the caller tries every position, and must stay linear. */
	while (k < n && p[k] != '\0' && !isspace((unsigned char)p[k]))
		k++;
	return k >= n;
}

bool
audit_value_is_secret(const char *s)
{
	const char *p, *next; /* next: where a token may start */

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
	/*
	 * Anywhere in it: a bearer token, an idpd API key, a JWS/JWE, as in a
	 * command line or a header copied into a result.  Only "bearer" needs
	 * a word boundary before it (else "cupbearer" would match); a key or
	 * a token may follow anything, as in "Bearer%20eyJ...".
	 */
	for (p = s, next = s; *p != '\0'; p++) {
		if ((p == s || !isalnum((unsigned char)p[-1])) && has_prefix_nocase(p, "bearer ") &&
		    word_at_least(p + 7, 8))
			return true;
		if (strncmp(p, "idpk_", 5) == 0 && word_at_least(p + 5, 8))
			return true;
		if (p >= next && jwt_at(p, &next))
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
	/* Bounded before the scan too: redaction may shrink a value (a long
	 * token becomes "[REDACTED]"), so the bound here is looser, but the
	 * work the scan does stays bounded whoever calls. */
	if (json_size_bound(params, REDACT_INPUT_MAX) > REDACT_INPUT_MAX &&
	    json_dumpb(params, NULL, 0, JSON_COMPACT | JSON_REAL_PRECISION(17)) > REDACT_INPUT_MAX)
		return IDP_ETOOBIG;
	redact(params);
	/* The exact size only when the cheap bound cannot vouch for it. */
	if (json_size_bound(params, AUDIT_JSON_MAX_BYTES) > AUDIT_JSON_MAX_BYTES &&
	    json_dumpb(params, NULL, 0, JSON_COMPACT | JSON_REAL_PRECISION(17)) >
	        AUDIT_JSON_MAX_BYTES)
		return IDP_ETOOBIG;
	return IDP_OK;
}
