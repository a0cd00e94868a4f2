/*
 * attest_jwt.c - the selector mappings of workload attestors, and matching
 * an agent's attestation selectors against a workload token's claims.
 *
 * A mapping entry "k8s:ns=kubernetes.io/namespace" says: a selector that
 * starts with "k8s:ns:" holds when the claim kubernetes.io -> namespace
 * equals the rest of the selector.  Claim names are separated by '/', not
 * '.', because real claim names contain dots ("kubernetes.io").  Pure
 * functions: no I/O, no global state.
 */
#include <stdlib.h>
#include <string.h>

#include "idpd/attest.h"

#define MAP_MAX_ENTRIES 32
#define MAP_MAX_DEPTH 8

struct map_entry {
	char *prefix;
	size_t prefix_len;
	char *path[MAP_MAX_DEPTH]; /* claim names, NULL-terminated */
};

struct attest_selector_map {
	struct map_entry e[MAP_MAX_ENTRIES];
	size_t n;
};

static bool
prefix_char_ok(char c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
	       c == '.' || c == '_' || c == '-' || c == ':';
}

/* Parse one "prefix=a/b/c" of n bytes into e. */
static bool
entry_parse(const char *s, size_t n, struct map_entry *e, struct idp_diag *diag)
{
	const char *eq = memchr(s, '=', n);
	const char *p, *end = s + n;
	size_t depth = 0;

	if (eq == NULL || eq == s || eq + 1 == end) {
		idp_diag_add(diag, "selectors: \"%.*s\" is not prefix=claim/path", (int)n, s);
		return false;
	}
	for (p = s; p < eq; p++) {
		if (!prefix_char_ok(*p)) {
			idp_diag_add(diag,
			             "selectors: the prefix of \"%.*s\" may hold only "
			             "letters, digits, '.', '_', '-' and ':'",
			             (int)n, s);
			return false;
		}
	}
	e->prefix = idp_xstrndup(s, (size_t)(eq - s));
	e->prefix_len = (size_t)(eq - s);
	for (p = eq + 1; p < end;) {
		const char *slash = memchr(p, '/', (size_t)(end - p));
		const char *stop = slash != NULL ? slash : end;

		if (stop == p || memchr(p, '=', (size_t)(stop - p)) != NULL ||
		    depth + 1 >= MAP_MAX_DEPTH) {
			idp_diag_add(diag,
			             "selectors: the claim path of \"%.*s\" must be 1 to %d "
			             "non-empty names separated by '/'",
			             (int)n, s, MAP_MAX_DEPTH - 1);
			return false;
		}
		e->path[depth++] = idp_xstrndup(p, (size_t)(stop - p));
		p = slash != NULL ? slash + 1 : end;
		if (slash != NULL && p == end) {
			idp_diag_add(diag, "selectors: the claim path of \"%.*s\" ends with '/'",
			             (int)n, s);
			return false;
		}
	}
	return true;
}

struct attest_selector_map *
attest_selector_map_parse(const char *s, struct idp_diag *diag)
{
	struct attest_selector_map *m = idp_xcalloc(1, sizeof(*m));

	if (s == NULL)
		s = "";
	while (*s != '\0') {
		size_t n = strcspn(s, " \t");

		if (n == 0) {
			s++;
			continue;
		}
		if (m->n == MAP_MAX_ENTRIES) {
			idp_diag_add(diag, "selectors: more than %d mappings", MAP_MAX_ENTRIES);
			goto fail;
		}
		if (!entry_parse(s, n, &m->e[m->n++], diag))
			goto fail;
		for (size_t i = 0; i + 1 < m->n; i++) {
			if (strcmp(m->e[i].prefix, m->e[m->n - 1].prefix) == 0) {
				idp_diag_add(diag, "selectors: the prefix \"%s\" is mapped twice",
				             m->e[i].prefix);
				goto fail;
			}
		}
		s += n;
	}
	if (m->n == 0) {
		idp_diag_add(diag, "selectors: no mapping given");
		goto fail;
	}
	return m;
fail:
	attest_selector_map_free(m);
	return NULL;
}

/* Whether one selector could be read by both p and q: equal, or one is the other and ':' more. */
static bool
prefixes_overlap(const char *p, const char *q)
{
	size_t np = strlen(p), nq = strlen(q);

	if (np < nq)
		return prefixes_overlap(q, p);
	return strncmp(p, q, nq) == 0 && (p[nq] == '\0' || p[nq] == ':');
}

const char *
attest_selector_maps_overlap(const struct attest_selector_map *a,
                             const struct attest_selector_map *b)
{
	for (size_t i = 0; i < a->n; i++)
		for (size_t j = 0; j < b->n; j++)
			if (prefixes_overlap(a->e[i].prefix, b->e[j].prefix))
				return a->e[i].prefix;
	return NULL;
}

void
attest_selector_map_free(struct attest_selector_map *m)
{
	if (m == NULL)
		return;
	for (size_t i = 0; i < m->n; i++) {
		free(m->e[i].prefix);
		for (size_t d = 0; d < MAP_MAX_DEPTH && m->e[i].path[d] != NULL; d++)
			free(m->e[i].path[d]);
	}
	free(m);
}

/* The entry with the longest prefix p such that sel starts with p + ':', or NULL. */
static const struct map_entry *
entry_for(const struct attest_selector_map *m, const char *sel)
{
	const struct map_entry *best = NULL;

	for (size_t i = 0; i < m->n; i++) {
		const struct map_entry *e = &m->e[i];

		if (strncmp(sel, e->prefix, e->prefix_len) == 0 && sel[e->prefix_len] == ':' &&
		    (best == NULL || e->prefix_len > best->prefix_len))
			best = e;
	}
	return best;
}

static const json_t *
claim_at(const json_t *claims, char *const *path)
{
	const json_t *v = claims;

	for (size_t d = 0; d < MAP_MAX_DEPTH && path[d] != NULL && v != NULL; d++)
		v = json_is_object(v) ? json_object_get(v, path[d]) : NULL;
	return v;
}

/* A string claim equal to want, or an array holding such a string. */
static bool
claim_holds(const json_t *v, const char *want)
{
	size_t i;
	const json_t *item;

	if (json_is_string(v))
		return strlen(json_string_value(v)) == json_string_length(v) &&
		       strcmp(json_string_value(v), want) == 0;
	if (!json_is_array(v))
		return false;
	json_array_foreach(v, i, item)
	{
		if (json_is_string(item) &&
		    strlen(json_string_value(item)) == json_string_length(item) &&
		    strcmp(json_string_value(item), want) == 0)
			return true;
	}
	return false;
}

bool
attest_selectors_match(const struct attest_selector_map *m, const json_t *claims,
                       const char *const *sel, size_t n, const char **reason, const char **failed)
{
	if (failed != NULL)
		*failed = NULL;
	if (n == 0) {
		*reason = "no_selectors";
		return false;
	}
	for (size_t i = 0; i < n; i++) {
		const struct map_entry *e = entry_for(m, sel[i]);
		const json_t *v;

		if (failed != NULL)
			*failed = sel[i];
		if (e == NULL) {
			*reason = "selector_unmapped";
			return false;
		}
		v = claim_at(claims, e->path);
		if (v == NULL || json_is_null(v)) {
			*reason = "selector_claim_missing";
			return false;
		}
		if (!claim_holds(v, sel[i] + e->prefix_len + 1)) {
			*reason = "selector_mismatch";
			return false;
		}
	}
	if (failed != NULL)
		*failed = NULL;
	*reason = NULL;
	return true;
}
