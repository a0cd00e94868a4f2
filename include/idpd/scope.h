/*
 * scope.h - scope patterns ("resource:verb", '*' a wildcard) and action classes.
 *
 * Shared by the registry (capabilities, delegation), the token service and the
 * policy engine.  Everything here is a pure function of its arguments except
 * the verb maps, which are immutable once built and so safe to share between
 * threads.
 *
 * A scope is a resource and a verb separated by exactly one ':'.  Both parts
 * are non-empty and made of letters, digits and "._-/" plus '*', which stands
 * for any run of those characters, possibly empty (it never matches ':').
 * A pattern without '*' names one concrete scope.
 */
#ifndef IDPD_SCOPE_H
#define IDPD_SCOPE_H

#include <stdbool.h>
#include <stddef.h>

#include "idpd/common.h"

#define IDP_SCOPE_MAX_LEN 256 /* bytes, both parts and the ':' */
#define IDP_SCOPE_MAX_STARS 4 /* per scope; bounds matching work */

/*
 * 0 if s is a valid scope pattern, else IDP_EINVAL with one line in diag
 * (which may be NULL) saying why: "scope \"x\": ...".
 */
int scope_validate(const char *s, struct idp_diag *diag) IDP_WUR;

/* Whether the valid scope pattern s contains a '*'. */
bool scope_is_pattern(const char *s);

/*
 * Glob match: true if the concrete string text is matched by pattern, where
 * '*' in pattern matches any run of characters (possibly empty) and every
 * other byte matches itself.  Used for scopes and for the policy language's
 * "like".  Works on any strings; a '*' in text is an ordinary character.
 */
bool scope_glob_match(const char *pattern, const char *text);

/*
 * Exact containment of one pattern in another: true only if every scope that
 * requested can match is also matched by pattern.  False when either is not a
 * valid scope pattern.  "ec2:Describe*" is within "ec2:*", not within
 * "ec2:DescribeInstances".
 */
bool scope_pattern_within(const char *requested, const char *pattern);

/*
 * True only if every scope requested can match is matched by some single
 * pattern of patterns[0..n).  False for an invalid requested scope and for
 * n == 0; invalid patterns in the set never match.  The test is exact
 * containment in a single pattern; a requested pattern covered only by the
 * union of several patterns is reported as not within, so the answer never
 * errs towards "within".
 */
bool scope_within(const char *requested, const char *const *patterns, size_t n);

/* Whether the two patterns match at least one common string. */
bool scope_glob_overlap(const char *a, const char *b);

/* Action classes, ordered: a higher class may do more damage. */
enum idp_action_class {
	IDP_ACTION_READ = 0,
	IDP_ACTION_WRITE = 1,
	IDP_ACTION_DELETE = 2,
	IDP_ACTION_ADMIN = 3,
};
#define IDP_ACTION_COUNT 4
/* Every class, as a set of bits 1u << class. */
#define IDP_ACTION_MASK_ALL ((1u << IDP_ACTION_COUNT) - 1)

/* "read", "write", "delete", "admin". */
const char *idp_action_class_name(enum idp_action_class c);
/* The class named s, or -1. */
int idp_action_class_parse(const char *s);

/*
 * A verb map: verb patterns ("Describe*", "read") with the class each
 * implies.  A concrete verb takes the highest class of the entries that match
 * it, and "write" when none does (an unknown verb is never "read").  A verb
 * with '*' takes the highest class of any verb it could match: of every entry
 * it overlaps, and "write" unless one entry alone covers it.
 */
struct scope_verb_map;

/*
 * The built-in map: read: Describe*, List*, Get*, Read*, read; write: write,
 * Put*, Create*, Update*, Modify*; delete: delete, Delete*, Remove*,
 * Terminate*, Destroy*, Purge*; admin: admin, Admin*, Grant*, Revoke*.
 * A static object; never free it.
 */
const struct scope_verb_map *scope_verb_map_default(void);

/* An empty map, caller owns it (scope_verb_map_free). */
struct scope_verb_map *scope_verb_map_new(void);
void scope_verb_map_free(struct scope_verb_map *m);
/*
 * Add an entry while building a map (not once it is shared).  IDP_EINVAL with
 * a line in diag for a bad verb pattern (the verb part charset, at most
 * IDP_SCOPE_MAX_STARS '*') and IDP_ETOOBIG past 256 entries.
 */
int scope_verb_map_add(struct scope_verb_map *m, const char *verb, enum idp_action_class c,
                       struct idp_diag *diag) IDP_WUR;

/* Whether verb is a valid verb pattern for scope_verb_map_add. */
bool scope_verb_valid(const char *verb);

/*
 * The built-in entries followed by the deployment's ([[policy.verbs]]):
 * since a verb takes the highest class of the entries that match it, a
 * deployment can name its own read verbs ("Search*" is write until then)
 * or raise a built-in one, never lower one.  NULL with diag on a bad entry.
 * Caller owns the map.
 */
struct scope_verb_map *scope_verb_map_with(const char *const *verbs,
                                           const enum idp_action_class *classes, size_t n,
                                           struct idp_diag *diag);

struct idpd_config;
/*
 * scope_verb_map_with over cfg's [[policy.verbs]]: the map `idpd serve`
 * installs, and `idpd policy test --config` too.  NULL with diag.
 */
struct scope_verb_map *scope_verb_map_from_config(const struct idpd_config *cfg,
                                                  struct idp_diag *diag);

/*
 * The map every check uses: delegation's max_scope_per_delegation and
 * requires_human_approval_for, and the policy input's action class.  The
 * built-in map until scope_verb_map_install.  Any thread.
 */
const struct scope_verb_map *scope_verb_map_current(void);
/*
 * Make m the current map; takes ownership.  Main thread, at startup before
 * the threads that read it start (the map is restart-only); the previous
 * installed map, if any, is freed (tests).
 */
void scope_verb_map_install(struct scope_verb_map *m);

/* The class of a verb or verb pattern (see above).  Invalid verbs are admin. */
enum idp_action_class scope_verb_class(const struct scope_verb_map *m, const char *verb);
/* The class of a scope's verb; an invalid scope is admin. */
enum idp_action_class scope_action_class(const struct scope_verb_map *m, const char *scope);

/*
 * Every class a verb or verb pattern could have, as bits 1u << class: the
 * class of a concrete verb alone; for a pattern, also the class of every
 * entry it overlaps, write when no single entry covers it, and every class
 * of the map when a '*' before its end stands for whole words.  Its
 * highest bit is scope_verb_class.  Where the question is "may it do
 * anything of class c" (requires_human_approval_for), this is the answer:
 * "cloud:*" is admin by its highest class, yet it writes too.  An invalid
 * verb or scope gives every class.
 */
unsigned scope_verb_classes(const struct scope_verb_map *m, const char *verb);
unsigned scope_action_classes(const struct scope_verb_map *m, const char *scope);

#endif /* IDPD_SCOPE_H */
