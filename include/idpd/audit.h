/*
 * audit.h - the audit event: its model, its canonical JSON and hash chain,
 * redaction of parameters, and the three SIEM line formats.
 *
 * An audit event is a heap object owned by exactly one thread at a time.
 * It owns copies of every string and JSON value set on it, so a caller may
 * free or reuse its own data as soon as a setter returns.  Every value on an
 * event has been validated when it was set (lengths, UTF-8, patterns), so
 * serialising or formatting a valid event cannot fail except on a full
 * output buffer.
 *
 * Ownership rule of the writer (built on this API): audit_emit(ev) ALWAYS
 * takes ownership of ev, also when it fails, so an emitting path never
 * frees an event it has handed over and never leaks one it could not.
 *
 * Sinks (file, syslog) are in audit_sink.h, detection rules in
 * audit_alerts.h.  docs/audit.md describes the fields, formats and keys.
 */
#ifndef IDPD_AUDIT_H
#define IDPD_AUDIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "idpd/buf.h"
#include "idpd/common.h"

struct audit_event;

/*
 * Event types.  The numeric values are not stable and never stored: every
 * stored or shipped form uses the string name (audit_type_name), which is.
 */
enum audit_type {
	AUDIT_AGENT_REGISTERED,
	AUDIT_AGENT_UPDATED,
	AUDIT_AGENT_SUSPENDED,
	AUDIT_AGENT_RESUMED,
	AUDIT_AGENT_DECOMMISSIONED,
	AUDIT_AGENT_ATTESTED,
	AUDIT_AGENT_ATTESTATION_FAILED,
	AUDIT_AGENT_JOIN_TOKEN_CREATED,
	AUDIT_AUTH_FAILED,
	AUDIT_TOKEN_ISSUED,
	AUDIT_TOKEN_DENIED,
	AUDIT_TOKEN_REVOKED,
	AUDIT_DELEGATION_CREATED,
	AUDIT_DELEGATION_DENIED,
	AUDIT_DELEGATION_REVOKED,
	AUDIT_APPROVAL_REQUESTED,
	AUDIT_APPROVAL_GRANTED,
	AUDIT_APPROVAL_DENIED,
	AUDIT_APPROVAL_EXPIRED,
	AUDIT_APPROVAL_USED,     /* spent by the request it was for, or a refused use */
	AUDIT_APPROVAL_RESTORED, /* given back: the token it was spent on was withheld */
	AUDIT_TASK_STARTED,
	AUDIT_TASK_COMPLETED,
	AUDIT_POLICY_RELOADED,
	AUDIT_POLICY_EVALUATED,
	AUDIT_KEY_GENERATED,
	AUDIT_KEY_ROTATED,
	AUDIT_KEY_RETIRED,
	AUDIT_KEY_RESEALED,
	AUDIT_TOOL_INVOCATION,
	AUDIT_ALERT,
	AUDIT_CONFIG_RELOADED,
	AUDIT_MAINTENANCE_CLEANUP,
	AUDIT_AUDIT_VERIFIED,
	AUDIT_AUDIT_WITHDRAWN,     /* an event committed after its emitter gave up on it */
	AUDIT_AUDIT_EVENT_REFUSED, /* an event PostgreSQL refused for good, dropped from the log */
	AUDIT_JWKS_CHANGED,        /* a provider's key set fetched from its jwks_uri changed */
	AUDIT_TYPE_COUNT,
	/*
	 * Only in an event read back from a row that a newer idpd wrote, of a
	 * type this version does not know (audit_event_from_stored): the
	 * event keeps the name.  Never emitted; no rule or alert matches it.
	 */
	AUDIT_TYPE_UNKNOWN
};

/* "token.issued", "tool_invocation", ...; NULL for an out-of-range value. */
const char *audit_type_name(enum audit_type t);
/* The part before the first '.', or the whole name ("token", "tool", "alert"). */
const char *audit_type_category(enum audit_type t);
/* A short human title ("Token issued"); used as the CEF Name. */
const char *audit_type_title(enum audit_type t);
/* Severity 0-10 an event of this type gets unless its emitter sets one. */
int audit_type_default_severity(enum audit_type t);
/* Exact, case-sensitive name -> type.  IDP_EINVAL for an unknown name. */
int audit_type_parse(const char *s, enum audit_type *out) IDP_WUR;

/* Outcome of the action the event records; NONE is "not set" and is omitted. */
enum audit_outcome {
	AUDIT_OUTCOME_NONE,
	AUDIT_OUTCOME_SUCCESS,
	AUDIT_OUTCOME_FAILURE, /* attempted and failed */
	AUDIT_OUTCOME_DENIED,  /* refused by a check or a policy */
	AUDIT_OUTCOME_PENDING, /* waiting, e.g. for an approval */
	AUDIT_OUTCOME_ERROR,   /* idpd could not decide (dependency down, bug) */
};
const char *audit_outcome_name(enum audit_outcome o); /* "success", ...; NULL for NONE */
int audit_outcome_parse(const char *s, enum audit_outcome *out) IDP_WUR;

/* The policy engine's four outcomes, as the seed names them. */
enum audit_decision {
	AUDIT_DECISION_NONE,
	AUDIT_DECISION_ALLOW,
	AUDIT_DECISION_DENY,
	AUDIT_DECISION_REQUIRE_APPROVAL,
	AUDIT_DECISION_ALLOW_WITH_CONDITIONS,
};
const char *audit_decision_name(enum audit_decision d); /* "ALLOW", ...; NULL for NONE */
int audit_decision_parse(const char *s, enum audit_decision *out) IDP_WUR;

/* Who performed the action. */
enum audit_actor_kind {
	AUDIT_ACTOR_NONE,
	AUDIT_ACTOR_OPERATOR, /* an API key; the name is the key's configured name */
	AUDIT_ACTOR_AGENT,    /* the name is the agent id */
	AUDIT_ACTOR_HUMAN,    /* the name is the IdP principal */
	AUDIT_ACTOR_SYSTEM,   /* idpd itself: cleanup, key rotation, alert rules */
};
const char *audit_actor_kind_name(enum audit_actor_kind k); /* NULL for NONE */
int audit_actor_kind_parse(const char *s, enum audit_actor_kind *out) IDP_WUR;

/*
 * The string fields of an event.  The comment gives the canonical JSON key
 * (a dotted key sits in a nested object) and the bound in bytes.  Every
 * value is UTF-8 without control characters other than tab, LF and CR;
 * AUDIT_F_ID and AUDIT_F_SOURCE_ADDRESS are stricter.
 */
enum audit_field {
	AUDIT_F_ID,              /* id: [A-Za-z0-9._:-], 64; unique per event */
	AUDIT_F_AGENT_ID,        /* agent_id, 256 */
	AUDIT_F_AGENT_TYPE,      /* agent_type, 128 */
	AUDIT_F_HUMAN_PRINCIPAL, /* human_principal, 320 */
	AUDIT_F_TASK_ID,         /* task_id, 256 */
	AUDIT_F_REQUEST_ID,      /* request_id, 128 */
	AUDIT_F_SOURCE_ADDRESS,  /* source_address: an IPv4 or IPv6 literal, 64 */
	AUDIT_F_INSTANCE_ID,     /* instance_id, 256 */
	AUDIT_F_TOOL,            /* action.tool, 256 */
	AUDIT_F_RESULT,          /* action.result, 1024 */
	AUDIT_F_TOKEN_ID,        /* authorization.token_id, 256 */
	AUDIT_F_GRANTED_SCOPE,   /* authorization.granted_scope, 4096 */
	AUDIT_F_POLICY_RULE,     /* authorization.policy_rule, 1024 */
	AUDIT_F_STEP,            /* context.step, 1024 */
	AUDIT_F_PREVIOUS_STEP,   /* context.previous_step, 1024 */
	AUDIT_F_NEXT_STEP,       /* context.next_step, 1024 */
	AUDIT_F_COUNT
};

#define AUDIT_TIME_UNSET INT64_C(-1)
#define AUDIT_TIME_MAX INT64_C(253402300799999) /* 9999-12-31T23:59:59.999Z */
#define AUDIT_SEVERITY_MAX 10
#define AUDIT_CHAIN_MAX 32         /* principals on a delegation chain */
#define AUDIT_PRINCIPAL_MAX 320    /* bytes per principal on the chain */
#define AUDIT_JSON_MAX_BYTES 16384 /* parameters, and detail, serialised compactly */
#define AUDIT_JSON_MAX_DEPTH 8     /* nesting of parameters or detail, the object itself = 1 */
#define AUDIT_EVENT_JSON_MAX 65536 /* a whole event as accepted by audit_event_from_json */
#define AUDIT_REDACTED "[REDACTED]"

/*
 * Reason codes emitters put in detail.reason of token.denied and
 * delegation.denied events, so the alert rules can classify denials:
 * AUDIT_REASON_SCOPE_ESCALATION for a scope outside the agent's
 * capabilities (or outside the delegator's own scope), and any code
 * starting with AUDIT_REASON_CHAIN_PREFIX for a delegation-chain violation
 * ("chain_depth_exceeded", "chain_delegate_not_allowed", ...).
 */
#define AUDIT_REASON_SCOPE_ESCALATION "scope_outside_capabilities"
#define AUDIT_REASON_CHAIN_PREFIX "chain_"

/* ---- lifecycle ---------------------------------------------------------- */

/*
 * A new event of the given type at ts_ms (ms since the epoch, UTC, or
 * AUDIT_TIME_UNSET), with the type's default severity and nothing else set.
 * Returns NULL only for a type or time out of range (a bug in the caller).
 * The caller owns the event: audit_event_free(), or hand it to audit_emit().
 * Any thread.
 */
struct audit_event *audit_event_new(enum audit_type type, int64_t ts_ms);
/* Free an event and everything it owns.  NULL is a no-op. */
void audit_event_free(struct audit_event *ev);
/*
 * An auth.failed event (outcome denied) for a request an endpoint refused
 * its caller: actor, the request's id and source address (either may be
 * NULL or ""), and detail {"endpoint", "reason"}.  NULL when a value does
 * not fit the model.  The caller owns it, as with audit_event_new.
 */
struct audit_event *audit_refusal_new(enum audit_actor_kind kind, const char *actor,
                                      const char *request_id, const char *peer,
                                      const char *endpoint, const char *reason);
/* A deep copy; cannot fail. */
struct audit_event *audit_event_clone(const struct audit_event *ev);

/* ---- setters: each copies its input; on error the event is unchanged ---- */

/*
 * Set string field f to a copy of value.  NULL or "" clears the field.
 * IDP_ETOOBIG past the field's bound; IDP_EINVAL for invalid UTF-8, a
 * control character, or a value that breaks the field's pattern.
 */
int audit_event_set(struct audit_event *ev, enum audit_field f, const char *value) IDP_WUR;
/* IDP_EINVAL unless 0 <= ms <= AUDIT_TIME_MAX or ms == AUDIT_TIME_UNSET. */
int audit_event_set_time(struct audit_event *ev, int64_t ms) IDP_WUR;
/* IDP_EINVAL unless 0 <= severity <= 10. */
int audit_event_set_severity(struct audit_event *ev, int severity) IDP_WUR;
void audit_event_set_outcome(struct audit_event *ev, enum audit_outcome o);
void audit_event_set_decision(struct audit_event *ev, enum audit_decision d);
/* kind NONE clears the actor; name may be NULL.  Same errors as audit_event_set (256 bytes). */
int audit_event_set_actor(struct audit_event *ev, enum audit_actor_kind kind,
                          const char *name) IDP_WUR;
/*
 * Append one principal (the human first, then each agent) to the delegation
 * chain.  IDP_ETOOBIG past AUDIT_CHAIN_MAX entries or AUDIT_PRINCIPAL_MAX
 * bytes; IDP_EINVAL for an empty or invalid string.
 */
int audit_event_chain_append(struct audit_event *ev, const char *principal) IDP_WUR;
void audit_event_chain_clear(struct audit_event *ev);
/*
 * Set action.parameters to a redacted deep copy of params (a JSON object;
 * see audit_redact_params for the rules and limits).  NULL or {} clears.
 * IDP_EINVAL for a non-object or nesting deeper than AUDIT_JSON_MAX_DEPTH;
 * IDP_ETOOBIG past AUDIT_JSON_MAX_BYTES after redaction.
 */
int audit_event_set_params(struct audit_event *ev, const json_t *params) IDP_WUR;
/*
 * Set detail, the type-specific data, to a redacted deep copy of detail,
 * with the same rules and errors as audit_event_set_params.
 */
int audit_event_set_detail(struct audit_event *ev, const json_t *detail) IDP_WUR;
/*
 * The same for a detail object the caller built and hands over: it is
 * redacted in place rather than copied.  Steals the reference, also on
 * error; nobody else may hold one.
 */
int audit_event_take_detail(struct audit_event *ev, json_t *detail) IDP_WUR;
/*
 * Add or replace one key of detail.  Steals the reference to value, also on
 * error.  The value is redacted if key looks secret.  Same limits as
 * audit_event_set_detail, checked on the whole detail object.
 */
int audit_event_put_detail(struct audit_event *ev, const char *key, json_t *value) IDP_WUR;
/*
 * A detail value echoing request text s (valid UTF-8), cut to at most max
 * bytes on a character boundary and marked with how much was left out, so
 * that a caller cannot push its own refusal's event past
 * AUDIT_JSON_MAX_BYTES and out of the log.  NULL for NULL s or no memory.
 */
json_t *audit_json_clip(const char *s, size_t max);
/* How much request text a refusal's event echoes (audit_json_clip). */
#define AUDIT_ECHO_MAX 2048
/*
 * Set AUDIT_F_ID to a time-ordered UUID (version 7, RFC 9562): ids a process
 * assigns strictly increase.  IDP_EINTERNAL if the RNG fails.  Any thread.
 */
int audit_event_assign_id(struct audit_event *ev) IDP_WUR;

/* ---- getters: borrowed pointers, valid until the field changes ---------- */

enum audit_type audit_event_type(const struct audit_event *ev);
/*
 * The type's name, title and category (audit_type_name and the others); for
 * AUDIT_TYPE_UNKNOWN the name as stored, which is also its title, and the
 * part of it before the first '.'.  Never NULL.
 */
const char *audit_event_type_name(const struct audit_event *ev);
const char *audit_event_type_title(const struct audit_event *ev);
const char *audit_event_type_category(const struct audit_event *ev);
int64_t audit_event_time(const struct audit_event *ev); /* AUDIT_TIME_UNSET if not set */
int audit_event_severity(const struct audit_event *ev);
enum audit_outcome audit_event_outcome(const struct audit_event *ev);
enum audit_decision audit_event_decision(const struct audit_event *ev);
enum audit_actor_kind audit_event_actor_kind(const struct audit_event *ev);
const char *audit_event_actor_name(const struct audit_event *ev);              /* NULL if not set */
const char *audit_event_get(const struct audit_event *ev, enum audit_field f); /* NULL if not set */
size_t audit_event_chain_len(const struct audit_event *ev);
const char *audit_event_chain_at(const struct audit_event *ev, size_t i); /* NULL past the end */
const json_t *audit_event_params(const struct audit_event *ev);           /* NULL if not set */
const json_t *audit_event_detail(const struct audit_event *ev);           /* NULL if not set */
/* detail.<key> if it is a string, else NULL. */
const char *audit_event_detail_str(const struct audit_event *ev, const char *key);

/* ---- JSON --------------------------------------------------------------- */

/*
 * The event as a new JSON object (caller owns the reference): the shape
 * documented in docs/audit.md, absent fields omitted.  Cannot fail.  Any
 * thread, also concurrently on one event (it only reads).
 */
json_t *audit_event_to_json(const struct audit_event *ev);

/*
 * Parse one event from JSON text (at most AUDIT_EVENT_JSON_MAX bytes).
 * Duplicate keys, unknown keys, wrong types, values out of bounds and
 * trailing data are rejected; parameters and detail are redacted.  This is
 * how ingested events (POST /v1/audit/events) enter: the caller then
 * overwrites what the client may not choose (id, time, actor, source,
 * instance) with the setters.
 *
 * On success *out is a new event the caller owns.  On failure *out is NULL,
 * diag has one line per problem ("action.tool: longer than 256 bytes"), and
 * the result is IDP_ETOOBIG when a size bound was the first problem found,
 * else IDP_EINVAL.
 */
int audit_event_from_json(const char *text, size_t len, struct audit_event **out,
                          struct idp_diag *diag) IDP_WUR;
/* The same from a parsed value; j stays the caller's. */
int audit_event_from_jsonv(const json_t *j, struct audit_event **out,
                           struct idp_diag *diag) IDP_WUR;

/*
 * An event read back from an audit_events row's body, for the sinks.  Rows
 * outlive the version that wrote them, and during a rolling upgrade a
 * newer idpd writes rows this one ships, so this accepts what
 * audit_event_from_json refuses only because it is new: a type this version
 * does not know (kept by name, AUDIT_TYPE_UNKNOWN) and members it does not
 * know (passed over).  Everything else is checked as there.  The event keeps
 * text, and audit_event_canonical gives it back byte for byte: a JSON sink
 * ships the row as it was written and hashed, unknown members included.
 * Such an event is for reading: a setter would not change that text, and
 * the audit writer refuses to emit it.  Two exceptions to "byte for byte",
 * both for rows idpd did not write: a body with line breaks comes back
 * compact, and one whose parameters or detail this version would redact
 * comes back with them redacted.
 */
int audit_event_from_stored(const char *text, size_t len, struct audit_event **out,
                            struct idp_diag *diag) IDP_WUR;
/* Whether ev came from audit_event_from_stored. */
bool audit_event_is_stored(const struct audit_event *ev);

/* ---- canonical form and hash chain ------------------------------------- */

/*
 * The canonical serialisation that the hash chain covers: the JSON of
 * audit_event_to_json with keys sorted by their UTF-8 bytes at every level,
 * no whitespace outside strings, strings as UTF-8 (only '"', '\\' and
 * control characters escaped), integers in decimal, reals with 17
 * significant digits ("%.17g", so a parse/serialise round trip gives the
 * same bytes), and absent fields omitted.  An event from
 * audit_event_from_stored gives back the text it was read from.  Returns a
 * NUL-terminated string the caller frees; *len (if not NULL) gets its
 * length.  Cannot fail.
 */
char *audit_event_canonical(const struct audit_event *ev, size_t *len);

#define AUDIT_HASH_LEN 32
#define AUDIT_HASH_HEX_LEN 64

/* The prev_hash of a chain's first event: 32 zero bytes. */
extern const uint8_t audit_genesis_hash[AUDIT_HASH_LEN];

/*
 * out = SHA-256(prev || canonical[0..len)).  out may alias prev.
 * IDP_EINTERNAL if OpenSSL fails.  Any thread.
 */
int audit_chain_hash(const uint8_t prev[AUDIT_HASH_LEN], const char *canonical, size_t len,
                     uint8_t out[AUDIT_HASH_LEN]) IDP_WUR;
/* Lower-case hex of a hash, NUL-terminated. */
void audit_hash_to_hex(const uint8_t h[AUDIT_HASH_LEN], char out[AUDIT_HASH_HEX_LEN + 1]);
/* Exactly 64 hex digits (either case) -> bytes; IDP_EINVAL otherwise. */
int audit_hash_from_hex(const char *hex, uint8_t out[AUDIT_HASH_LEN]) IDP_WUR;

/* ---- redaction ---------------------------------------------------------- */

/*
 * Whether a JSON key looks like it holds a secret: after lower-casing ASCII
 * and dropping '_', '-', '.' and ' ', it contains password, passwd,
 * passphrase, secret, token, authorization, apikey, privatekey, credential,
 * cookie, session or jwt.  "db_password", "X-Api-Key" and "max_tokens" all
 * match: the rule errs on the side of hiding.
 */
bool audit_key_is_secret(const char *key);

/*
 * Whether a string holds a credential, whatever its key: it is an HTTP
 * authorization value ("Bearer ...", "Basic ..."), or has anywhere in it a
 * bearer token, an idpd API key (idpk_...) or a compact JWS/JWE
 * ("eyJ..." with two dots), leading and trailing spaces aside.  Such a
 * value is stored as [REDACTED], whole.
 */
bool audit_value_is_secret(const char *s);

/*
 * Redact params in place and check its bounds.  Values (of any JSON type)
 * under a secret-looking key become "[REDACTED]", at every depth, inside
 * arrays too; so do strings that are themselves credentials ("Bearer ...",
 * "Basic ...", a JWT, an idpd API key "idpk_...").
 *
 * Returns IDP_EINVAL if params nests deeper than AUDIT_JSON_MAX_DEPTH (then
 * nothing is changed), IDP_ETOOBIG if the redacted value serialises to more
 * than AUDIT_JSON_MAX_BYTES, else 0.  Redacting twice changes nothing more.
 */
int audit_redact_params(json_t *params) IDP_WUR;

/* ---- line formats ------------------------------------------------------- */

enum audit_format {
	AUDIT_FORMAT_JSON, /* the canonical JSON, one line */
	AUDIT_FORMAT_CEF,  /* ArcSight CEF:0 */
	AUDIT_FORMAT_LEEF, /* QRadar LEEF:2.0, tab-separated */
};
const char *audit_format_name(enum audit_format f); /* "json", "cef", "leef" */
int audit_format_parse(const char *s, enum audit_format *out) IDP_WUR;

/*
 * Append ev as one line in format f to out, without a trailing newline; the
 * line contains no LF or CR.  version is idpd's version for the CEF/LEEF
 * header.  A pure function of its inputs; any thread.  IDP_ETOOBIG if out's
 * cap is reached, and then out is as it was.
 */
int audit_format_line(enum audit_format f, const struct audit_event *ev, const char *version,
                      struct idp_buf *out) IDP_WUR;

#endif /* IDPD_AUDIT_H */
