/*
 * audit_int.h - what the files of src/audit share and nothing outside sees:
 * the layout of struct audit_event and a few helpers.
 */
#ifndef IDPD_AUDIT_INT_H
#define IDPD_AUDIT_INT_H

#include <stdbool.h>
#include <stddef.h>

#include "idpd/audit.h"

struct audit_event {
	enum audit_type type;
	int64_t ts_ms;
	int severity;
	enum audit_outcome outcome;
	enum audit_decision decision;
	enum audit_actor_kind actor_kind;
	char *actor_name;
	char *str[AUDIT_F_COUNT];
	char **chain;
	size_t chain_len;
	json_t *params; /* an object, never empty; NULL when absent */
	json_t *detail; /* likewise */
	/* Set only by audit_event_from_stored: */
	char *type_name;     /* AUDIT_TYPE_UNKNOWN's name as stored, */
	char *type_category; /* and the part of it before the first '.' */
	char *stored;        /* the row's text, given back as the canonical form */
	size_t stored_len;
};

/*
 * jansson's constructors fail only on allocation failure for values already
 * validated, and idpd aborts on OOM everywhere (common.h).
 */
json_t *audit_json_must(json_t *j);

/* Whether s[0..len) is valid UTF-8 (no overlongs, surrogates or > U+10FFFF). */
bool audit_utf8_valid(const char *s, size_t len);

/*
 * Depth of a JSON value, containers counted (an object of scalars is 1),
 * computed no further than limit + 1 so hostile nesting costs nothing.
 */
int audit_json_depth(const json_t *j, int limit);

#endif /* IDPD_AUDIT_INT_H */
