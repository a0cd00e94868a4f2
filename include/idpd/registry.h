/*
 * registry.h - the Agent Identity Registry: agent records in PostgreSQL, the
 * REST API over them, and the in-memory cache the hot paths read.
 *
 * PostgreSQL is the source of truth.  Every instance keeps a complete copy
 * of the agents table in memory: a hash table of immutable, reference-counted
 * records behind one read-write lock (registry.lock).  A reader takes the
 * lock shared, finds the record, takes a reference and lets go, so a lookup
 * costs a hash and two atomic operations and never waits for PostgreSQL.  The
 * copy stays fresh through LISTEN/NOTIFY on the channel "agents" (a trigger
 * on the table), and is reloaded whole when the listener reconnects, since
 * notifications sent while it was away are lost.  A write made through this
 * instance is installed in its copy before the response goes out, so a
 * client reads its own writes; other instances see it when the notification
 * arrives (milliseconds).
 *
 * The process has one registry (like it has one audit writer): registry_init
 * creates it, and registry_get() is the lookup every module uses.
 */
#ifndef IDPD_REGISTRY_H
#define IDPD_REGISTRY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "idpd/app.h"
#include "idpd/common.h"
#include "idpd/scope.h"

#define REGISTRY_ID_MAX 128

enum registry_status {
	REGISTRY_ACTIVE,
	REGISTRY_SUSPENDED,
	REGISTRY_DECOMMISSIONED, /* terminal */
};

/* "active", "suspended", "decommissioned". */
const char *registry_status_name(enum registry_status s);
/* The status named s, or -1. */
int registry_status_parse(const char *s);

struct registry_label {
	const char *key;
	const char *value;
};

/*
 * One agent as it was at `version`.  Immutable once published: every field
 * may be read without a lock by whoever holds a reference.  Strings are
 * NUL-terminated UTF-8; optional strings are NULL when not set; times are
 * milliseconds since the epoch (UTC), 0 when not set.  The whole record is
 * one allocation.
 */
struct registry_agent {
	const char *id;
	const char *agent_type;
	const char *agent_version; /* optional */
	const char *model;         /* optional */
	const char *deployment;    /* optional */
	const char *owner;         /* the accountable human: an email address or "idp:subject" */
	const char *team;          /* optional */
	int64_t created_ms;
	int64_t last_active_ms; /* as of the last reload: touches do not notify */
	enum registry_status status;

	const char *const *capabilities; /* scope patterns, at least one */
	size_t n_capabilities;
	const char *const *delegate_to; /* agent ids it may delegate to */
	size_t n_delegate_to;

	/* delegation constraints */
	int max_chain_depth;
	enum idp_action_class max_scope_per_delegation; /* highest class a delegation may carry */
	unsigned requires_human_approval_for;           /* bit (1u << class) per action class */

	/* credential info */
	const char *credential_type; /* "spiffe-jwt-svid" | "spiffe-x509-svid" */
	int64_t credential_rotation_ms;
	int64_t credential_last_rotated_ms;

	const char *const *domains;
	size_t n_domains;
	const char *environment;                  /* optional */
	const char *const *attestation_selectors; /* "type:value", e.g. "k8s:ns:agents" */
	size_t n_attestation_selectors;
	const struct registry_label *labels;
	size_t n_labels;

	int64_t version;
	int64_t updated_ms;
	/*
	 * Every credential and token of this agent issued at or before this
	 * instant is invalid (0: none revoked).  Set by suspension and by
	 * decommissioning; see registry_issued_before_revocation().
	 */
	int64_t revocation_epoch_ms;
	int64_t status_changed_ms;
	const char *status_changed_by; /* the API key name, or NULL */
	const char *status_reason;     /* NULL when none was given */
};

/* ---- lifecycle (main thread) ---- */

/*
 * Create the process's registry on app's store: subscribe its cache to
 * app->listener (before store_listener_start), register its reload hook and
 * the built-in cleanup jobs (maintenance.h), and copy the settings it needs
 * from app->cfg.  The cache fills when the listener first connects; until
 * then registry_get() reads PostgreSQL.  IDP_EINVAL with diag when it
 * cannot subscribe or register.
 */
int registry_init(struct idpd_app *app, struct idp_diag *diag) IDP_WUR;
/* Free the registry.  After the HTTP server and the listener are stopped. */
void registry_shutdown(void);

/* Add the /v1/agents routes to r. */
int registry_routes(struct http_router *r, struct idpd_app *app) IDP_WUR;

/* ---- lookups (any thread) ---- */

/*
 * The current record of agent id, with a reference the caller gives back
 * with registry_agent_unref().  IDP_OK; IDP_ENOTFOUND when there is no such
 * agent (a decommissioned agent is found, with its status); IDP_EINVAL for
 * an id that is not well formed; IDP_EUNAVAIL when the cache is not loaded
 * yet and PostgreSQL cannot answer either.  Never blocks on PostgreSQL once
 * the cache is loaded.
 */
int registry_get(const char *id, const struct registry_agent **out) IDP_WUR;
/*
 * registry_get for a thread that must not wait (an I/O thread): with
 * may_block false, IDP_EWOULDBLOCK when only PostgreSQL can answer (the
 * cache is not loaded, or id is being refreshed), decided in the same step
 * as the lookup, so the answer cannot change between a check and the read.
 */
int registry_lookup(const char *id, bool may_block, const struct registry_agent **out) IDP_WUR;
const struct registry_agent *registry_agent_ref(const struct registry_agent *a);
/* NULL is a no-op. */
void registry_agent_unref(const struct registry_agent *a);

/*
 * Whether a credential or token of agent a issued at issued_at_s (seconds,
 * a JWT "iat") falls at or before the agent's revocation epoch.  JWT times
 * have a resolution of one second, so a token issued in the same second as
 * the revocation counts as revoked: the check never errs towards valid.
 */
bool registry_issued_before_revocation(const struct registry_agent *a, int64_t issued_at_s);

/*
 * Note that agent id was active at now_ms (it was issued a token or an
 * identity credential).  Kept in
 * memory and written for all agents at once every registry.last_active_flush
 * (one statement, no notification), so a busy agent costs no write per
 * token; last_active never moves backwards.  Holds registry.touch_lock for
 * a hash lookup; never blocks on PostgreSQL.  A no-op before registry_init
 * and after registry_shutdown.  Any thread.
 */
void registry_touch(const char *id, int64_t now_ms);
/*
 * Write what registry_touch noted now, on the caller's thread, in one
 * statement, as the flusher thread does every registry.last_active_flush.
 * IDP_OK (also when nothing was noted); IDP_EUNAVAIL when PostgreSQL cannot
 * take it, in which case the times stay noted for the next flush.  A
 * flush in progress (the flusher thread's) is waited for first, so on
 * IDP_OK every touch made before the call is written, except those of
 * agents whose rows another transaction held locked: the flush never waits
 * for a row lock, and leaves those times noted for the next flush.  Any
 * thread; waits on PostgreSQL (never on a row lock).
 */
int registry_touch_flush(void) IDP_WUR;
/* How many flush statements have succeeded since the process started.  Any thread. */
uint64_t registry_touch_flushes(void);

/* Whether scope is within a's capabilities (scope_within over them). */
bool registry_agent_can(const struct registry_agent *a, const char *scope);

/* Agents in the cache, and whether it has been loaded. */
size_t registry_cached_count(void);
bool registry_cache_ready(void);

/* ---- validation, shared with the tests ---- */

/* Whether s is a well-formed agent id: ^[a-z0-9][a-z0-9._-]{0,127}$. */
bool registry_id_valid(const char *s);

/*
 * Whether s names an accountable human: an email address (local@domain,
 * the domain with at least one dot) or an IdP subject "idp:subject" (idp
 * a lower-case label, subject 1..255 printable ASCII characters without
 * spaces).  why (may be NULL) gets a reason when it does not.
 */
bool registry_owner_valid(const char *s, const char **why);

#endif /* IDPD_REGISTRY_H */
