/*
 * registry_int.h - what the registry's files share: input validation, the
 * record's PostgreSQL row and JSON forms, the cache, the departed-owners
 * list and the write paths.  Not for other modules: they use registry.h.
 */
#ifndef IDPD_REGISTRY_INT_H
#define IDPD_REGISTRY_INT_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include <jansson.h>
#include <libpq-fe.h>

#include "idpd/audit.h"
#include "idpd/buf.h"
#include "idpd/registry.h"
#include "idpd/store.h"

#define REGISTRY_CAPABILITIES_MAX 256
#define REGISTRY_DELEGATE_TO_MAX 64
#define REGISTRY_DOMAINS_MAX 32
#define REGISTRY_SELECTORS_MAX 32
#define REGISTRY_LABELS_MAX 64
#define REGISTRY_CHAIN_DEPTH_MAX 16
#define REGISTRY_REASON_MAX 1024
#define REGISTRY_ROTATION_MIN_MS (5 * 60 * 1000LL)
#define REGISTRY_ROTATION_MAX_MS (24 * 3600 * 1000LL)
#define REGISTRY_ROTATION_DEFAULT_MS (3600 * 1000LL)
#define REGISTRY_PAGE_DEFAULT 100
#define REGISTRY_PAGE_MAX 500

/* ---- input (agent.c): pure functions, no I/O ---- */

/*
 * Validate a registration body (or a merged PATCH result) and return its
 * normalised form: every writable field present (null for an absent
 * optional one), defaults filled in, an email owner in lower case.  Every
 * problem is appended to errors as {"field": "...", "message": "..."}; the
 * result is NULL when there was at least one.  The caller owns the result.
 */
json_t *agent_input_validate(const json_t *body, json_t *errors);

/*
 * Check the top level of a PATCH body against current (the record's
 * writable form): unknown and read-only fields, and changes to id or
 * agent_type, are appended to errors.  Returns the number of errors added.
 * accepted (an object, or NULL) receives the members that passed, so the
 * rest of the patch can still be merged and validated: a 422 then lists
 * every problem, not only these.
 */
size_t agent_patch_check(const json_t *patch, const json_t *current, json_t *errors,
                         json_t *accepted);

/* RFC 7396 JSON merge patch: returns a new value (caller owns it). */
json_t *json_merge_patch(const json_t *target, const json_t *patch);

/* An owner as stored: an email address lower-cased, a subject as is. */
void registry_owner_normalize(const char *in, char *out, size_t len);

/* Append {"field": field, "message": ...} to errors. */
void agent_error(json_t *errors, const char *field, const char *fmt, ...) IDP_PRINTF(3, 4);

/* ---- records (record.c) ---- */

/*
 * The columns every query that reads agents selects, in the order
 * agent_from_row expects.
 */
#define AGENT_COLUMNS                                                                              \
	"id, agent_type, agent_version, model, deployment, owner, team, "                          \
	"floor(extract(epoch FROM created_at) * 1000)::bigint, "                                   \
	"coalesce(floor(extract(epoch FROM last_active) * 1000)::bigint, 0), status, "             \
	"array_to_string(capabilities, E'\\n'), array_to_string(delegate_to, E'\\n'), "            \
	"max_chain_depth, max_scope_per_delegation, "                                              \
	"array_to_string(requires_human_approval_for, E'\\n'), credential_type, "                  \
	"credential_rotation_ms, "                                                                 \
	"coalesce(floor(extract(epoch FROM credential_last_rotated) * 1000)::bigint, 0), "         \
	"array_to_string(domains, E'\\n'), environment, "                                          \
	"array_to_string(attestation_selectors, E'\\n'), labels::text, version, "                  \
	"floor(extract(epoch FROM updated_at) * 1000)::bigint, "                                   \
	"coalesce(floor(extract(epoch FROM revocation_epoch) * 1000)::bigint, 0), "                \
	"coalesce(floor(extract(epoch FROM status_changed_at) * 1000)::bigint, 0), "               \
	"status_changed_by, status_reason"
#define AGENT_NCOLUMNS 28

/*
 * When an agent last showed signs of use, as SQL over the agents row: a
 * token (last_active), an attestation (credential_last_rotated), its
 * registration, or its last status change (a resume restarts the clock).
 */
#define AGENT_LAST_SEEN_SQL                                                                        \
	"greatest(coalesce(last_active, created_at), coalesce(status_changed_at, created_at), "    \
	"coalesce(credential_last_rotated, created_at))"

/*
 * Build a record from row `row` of r (selected with AGENT_COLUMNS), with one
 * reference.  NULL when the row does not hold a record idpd could have
 * written (logged as a warning with the id).
 */
struct registry_agent *agent_from_row(const PGresult *r, int row);

/* Append a's JSON form (the API's agent object) to out.  IDP_ETOOBIG past out's cap. */
int agent_render(const struct registry_agent *a, struct idp_buf *out) IDP_WUR;
/* The writable fields of a as a JSON object (the base a PATCH merges into). */
json_t *agent_writable_json(const struct registry_agent *a);

/* Format a duration the way the API writes it: "1h", "90m", "45s". */
void registry_duration_format(int64_t ms, char out[32]);

/* ---- cache (cache.c) ---- */

struct agent_cache;

struct agent_cache *agent_cache_new(void);
void agent_cache_free(struct agent_cache *c);
/*
 * Install rec (the cache takes the caller's reference) unless the cache
 * already holds that agent at the same or a later version, in which case
 * rec is released.  Returns true when rec was installed.  Any thread.
 */
bool agent_cache_install(struct agent_cache *c, struct registry_agent *rec);
/* Drop agent id if cached.  Any thread. */
void agent_cache_remove(struct agent_cache *c, const char *id);
/* A new reference to agent id, or NULL.  Any thread. */
const struct registry_agent *agent_cache_get(struct agent_cache *c, const char *id);
/* A counter of installs; read it before a full load and pass it to replace. */
uint64_t agent_cache_seq(struct agent_cache *c);
/*
 * Replace the whole content with recs[0..n) (references taken).  Records
 * installed after agent_cache_seq() returned `since` survive where they are
 * newer than the loaded ones or missing from the load, so a write published
 * while the load ran is not lost.  Frees recs (the array).  Any thread.
 */
void agent_cache_replace(struct agent_cache *c, struct registry_agent **recs, size_t n,
                         uint64_t since);
size_t agent_cache_count(struct agent_cache *c);

/* ---- departed owners (owners.c) ---- */

struct owner_set;

/*
 * Parse a departed-owners file: one owner per line, blank lines and lines
 * starting with '#' ignored, surrounding spaces trimmed.  A line that is
 * not a valid owner is an error naming its line.  Returns a new set, or
 * NULL with diag filled.
 */
struct owner_set *owner_set_parse(const char *text, size_t len, struct idp_diag *diag);
void owner_set_free(struct owner_set *s);
bool owner_set_contains(const struct owner_set *s, const char *owner);
size_t owner_set_count(const struct owner_set *s);
/* The owners, normalised, as a PostgreSQL text[] literal (caller frees). */
char *owner_set_pg_array(const struct owner_set *s);

/*
 * The departed owners from path, re-read when the file changes (device,
 * inode, size, mtime or ctime).  IDP_OK with *out a set the caller frees with owner_set_free
 * (an empty set for path ""); IDP_EIO / IDP_EINVAL / IDP_ETOOBIG with diag.
 * Any thread.
 */
int departed_owners_load(const char *path, struct owner_set **out, struct idp_diag *diag) IDP_WUR;

/* ---- PostgreSQL helpers (db.c) ---- */

/* A PostgreSQL text[] literal of the strings of a JSON array (caller frees). */
char *pg_text_array_json(const json_t *arr);

/*
 * An If-Match precondition (RFC 9110 13.1.1), parsed by
 * registry_if_match_parse: "*" (any), or the versions of the strong ETags
 * idpd could have sent among those it lists.  A weak tag or an ETag idpd
 * never sends is kept as nothing: it can match no version.
 */
#define REGISTRY_IF_MATCH_MAX 32
struct registry_if_match {
	bool any;
	size_t n;
	int64_t versions[REGISTRY_IF_MATCH_MAX];
};

/*
 * Parse an If-Match value: "*" or a comma-separated list of entity tags
 * (W/"x" or "x"; empty elements allowed).  IDP_OK, or IDP_EINVAL for a
 * value that is neither (an unquoted tag, a missing quote, "*" in a list,
 * nothing at all, more than REGISTRY_IF_MATCH_MAX tags).  Pure.
 */
int registry_if_match_parse(const char *h, struct registry_if_match *out) IDP_WUR;
/* Whether m (NULL: no precondition) lets a change to version through.  Pure. */
bool registry_if_match_holds(const struct registry_if_match *m, int64_t version);

/* Who asked for a write, for the audit event and status_changed_by. */
struct registry_actor {
	const char *name; /* the API key's name */
	const char *request_id;
	const char *source_address; /* may be "" */
};

/*
 * Insert the agent described by norm (from agent_input_validate), emit its
 * agent.registered event, commit.  *out gets the new record (a reference).
 * IDP_ECONFLICT for a duplicate id, IDP_EUNAVAIL when PostgreSQL or the
 * audit log cannot take it.  Any worker thread.
 */
int registry_db_create(struct store *st, const json_t *norm, const struct registry_actor *who,
                       struct registry_agent **out) IDP_WUR;

/*
 * The PATCH path under one row lock: read the agent, check if_match (NULL
 * for none) and its status, merge patch, validate, update,
 * emit agent.updated, commit.  IDP_ENOTFOUND, IDP_EPRECOND (stale
 * version), IDP_ECONFLICT (decommissioned), IDP_EUNPROCESSABLE with errors
 * filled, IDP_EUNAVAIL.  *out gets the new record.  Any worker thread.
 */
int registry_db_patch(struct store *st, const char *id, const struct registry_if_match *if_match,
                      const json_t *patch, const struct registry_actor *who, json_t *errors,
                      struct registry_agent **out) IDP_WUR;

/*
 * A condition a cleanup job's transition must still meet when it writes:
 * what made the agent a candidate (idle, or owned by someone who left) may
 * have changed between the job's query and the write.  Both also require
 * the agent to be active.
 */
enum registry_guard_kind {
	REGISTRY_GUARD_IDLE,  /* arg: milliseconds; AGENT_LAST_SEEN_SQL older than now() - arg */
	REGISTRY_GUARD_OWNER, /* arg: the owner the job found */
};

struct registry_guard {
	enum registry_guard_kind kind;
	const char *arg;
};

/*
 * Move agent id to status `to` (suspended, active or decommissioned)
 * under a row lock, with reason (may be NULL except for decommissioning),
 * emitting the matching agent.* event before the commit.  Suspension and
 * decommissioning set the revocation epoch.  guard (NULL for none) is
 * repeated in the UPDATE's WHERE; an idle guard also fails for an agent
 * this instance touched since the job's flush (touch_pending).  A resume
 * checks the owner under the row lock as a registration does
 * (registry_owner_check).  IDP_ENOTFOUND, IDP_EPRECOND, IDP_ECONFLICT (the
 * transition is not allowed from the current status, or the guard no
 * longer holds; *from gets the current status), IDP_EUNPROCESSABLE (a
 * resume whose owner is refused; the reason appended to errors, which may
 * be NULL), IDP_EUNAVAIL.  c is a connection the caller holds (outside a
 * transaction); the function runs its own transaction on it.
 */
int registry_db_transition(struct store_conn *c, const char *id, enum registry_status to,
                           const struct registry_if_match *if_match, const char *reason,
                           const struct registry_actor *who, const struct registry_guard *guard,
                           json_t *errors, enum registry_status *from,
                           struct registry_agent **out) IDP_WUR;

/* Read agent id straight from PostgreSQL.  IDP_ENOTFOUND, IDP_EUNAVAIL. */
int registry_db_get(struct store *st, const char *id, struct registry_agent **out) IDP_WUR;

/*
 * Read every agent, in id order, into a new array (*out, *n; caller frees
 * the array and unrefs each).  IDP_EUNAVAIL when PostgreSQL cannot answer.
 */
int registry_db_load_all(struct store *st, struct registry_agent ***out, size_t *n) IDP_WUR;

/* ---- the process's registry (registry.c) ---- */

/* Copy of the settings the registry reads at run time; swapped on reload. */
struct registry_settings {
	char departed_owners[4096];
	int64_t stale_after_ms;
	bool stale_suspend;
	bool departed_suspend;
	int batch_size;
	int64_t audit_retention_ms;
	int64_t last_active_flush_ms; /* registry.last_active_flush */
};

void registry_settings_get(struct registry_settings *out);
/*
 * Refuse an owner no human can answer for: one "idp:subject" whose idp is
 * not a configured [[idp]], or one listed in registry.departed_owners.
 * IDP_EUNPROCESSABLE with an error on "owner" added to errors for each,
 * else IDP_OK (also when the departed file cannot be read: that is logged,
 * and reported by the cleanup job).  owner is a valid owner.  Any thread.
 */
int registry_owner_check(const char *owner, json_t *errors) IDP_WUR;
/*
 * The names of the configured [[idp]] sections as a PostgreSQL text[]
 * literal (caller frees).  Any thread.
 */
char *registry_idp_names_pg(void);
struct store *registry_store(void);
/* Install a record this instance just wrote (takes the reference). */
void registry_publish(struct registry_agent *rec);

/*
 * The built-in cleanup jobs (jobs.c): stale agents, departed owners, audit
 * retention (which keeps what the running sinks, audit_ship_names, have not
 * shipped), audit chains.  Registered by registry_init.
 */
int registry_register_jobs(void) IDP_WUR;

/*
 * The map behind registry_touch (touch.c): agent id -> latest time, open
 * addressing with linear probing; cap is 0 or a power of two, n <= cap / 2,
 * n <= TOUCH_MAX_ENTRIES.  Its functions are static; the unit tests reach
 * them in test builds.
 */
#define TOUCH_MAX_ENTRIES 65536

struct touch_entry {
	char *id; /* NULL: the slot is free */
	int64_t ms;
	uint32_t hash;
};

struct touch_map {
	struct touch_entry *slots;
	size_t cap;
	size_t n;
};

/*
 * The batched last_active writes (touch.c).  touch_start starts the
 * flusher thread on st, writing every interval_ms; touch_set_interval
 * changes the period (reload); touch_stop writes what is left and stops
 * the thread.  Main thread.
 */
int touch_start(struct store *st, int64_t interval_ms) IDP_WUR;
void touch_set_interval(int64_t interval_ms);
void touch_stop(void);

struct touch_stats {
	size_t pending;   /* agents noted since the last flush */
	uint64_t flushes; /* UPDATE statements that succeeded */
	uint64_t dropped; /* touches dropped: the map was full, or a flush failed at exit */
	uint64_t written; /* rows those statements moved forward */
	uint64_t skipped; /* agents a flush left noted: another transaction held the row */
};
void touch_stats(struct touch_stats *out);

/*
 * The agents whose times are noted and not written (touched since the last
 * flush, or skipped by it because their rows were locked), as a PostgreSQL
 * text[] literal the caller frees; NULL if it cannot be formatted.  Holds
 * registry.touch_lock while it formats.  Any thread.
 */
char *touch_pending_ids(void);

/*
 * Whether agent id's time is noted and not written, as touch_pending_ids
 * lists it.  Waits for a flush in progress first (registry.touch_flush_lock),
 * so a time that flush took out of the map and puts back (its row was
 * locked) is seen; a flush never waits for a row lock, so a caller may hold
 * one (at worst it waits out the flush's pool acquire or statement
 * timeout).  Any thread.
 */
bool touch_pending(const char *id);

/* Keyset cursors (api.c): opaque to clients. */
void registry_cursor_encode(const char *last_id, char *out, size_t len);
bool registry_cursor_decode(const char *cursor, char *id, size_t len);

#endif /* IDPD_REGISTRY_INT_H */
