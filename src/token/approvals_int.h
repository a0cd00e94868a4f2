/*
 * approvals_int.h - what the two files of the approvals module share: the
 * store, the row's columns and JSON form, the audit helper, and the pure
 * rules (scope sets, who may decide, why a use is refused) the unit tests
 * reach.  Other modules use approvals.h.
 */
#ifndef IDPD_APPROVALS_INT_H
#define IDPD_APPROVALS_INT_H

#include <stdbool.h>
#include <stdint.h>

#include <jansson.h>
#include <libpq-fe.h>

#include "idpd/approvals.h"
#include "idpd/audit.h"
#include "idpd/store.h"

#define APPROVAL_TARGET_MAX 512
#define APPROVAL_TEXT_MAX 1024 /* reason, rules (joined), decision note */
#define APPROVAL_RULES_MAX 64
#define APPROVAL_PAGE_DEFAULT 100
#define APPROVAL_PAGE_MAX 500

/* The pool the module was initialised with (approvals_init). */
struct store *approvals_store(void);

/*
 * The columns every read of an approval selects, in the order of enum
 * approval_col.  "status" is the effective status: a pending or approved
 * approval past its expiry reads "expired".
 */
#define APPROVAL_COLUMNS                                                                           \
	"id, kind, "                                                                               \
	"CASE WHEN status IN ('pending', 'approved') AND expires_at <= now() THEN 'expired' "      \
	"ELSE status END, "                                                                        \
	"agent_id, task_id, human_principal, agent_owner, array_to_json(scope)::text, target, "    \
	"reason, array_to_json(rules)::text, "                                                     \
	"floor(extract(epoch FROM created_at) * 1000)::bigint, "                                   \
	"floor(extract(epoch FROM expires_at) * 1000)::bigint, "                                   \
	"floor(extract(epoch FROM decided_at) * 1000)::bigint, decided_by, decided_by_kind, "      \
	"decision_note, floor(extract(epoch FROM used_at) * 1000)::bigint, status, human_idp, "    \
	"floor(extract(epoch FROM created_at) * 1000000)::bigint, "                                \
	"array_to_string(delegation_chain, ' '), decided_by_idp"

enum approval_col {
	APR_C_ID,
	APR_C_KIND,
	APR_C_STATUS,
	APR_C_AGENT,
	APR_C_TASK,
	APR_C_HUMAN,
	APR_C_OWNER,
	APR_C_SCOPE,
	APR_C_TARGET,
	APR_C_REASON,
	APR_C_RULES,
	APR_C_CREATED,
	APR_C_EXPIRES,
	APR_C_DECIDED,
	APR_C_DECIDED_BY,
	APR_C_DECIDED_KIND,
	APR_C_NOTE,
	APR_C_USED,
	APR_C_STORED_STATUS, /* as stored: pending, approved, denied, used */
	APR_C_HUMAN_IDP,     /* the [[idp]] of the task's human */
	APR_C_CREATED_US,    /* created_at, exactly: a list cursor's position */
	APR_C_CHAIN,         /* the agents root first, space-separated; "" before 0018 */
	APR_C_DECIDED_IDP,   /* the [[idp]] of a human decider; NULL otherwise (0019) */
};

/* Row `row` of r (APPROVAL_COLUMNS) as the API shows it; a new object. */
json_t *approval_json(const PGresult *r, int row);

/* ---- pure rules (any thread; unit-tested) ---- */

/* Whether s is a well-formed approval id: "apr_" + 16..60 of [A-Za-z0-9_-]. */
bool approval_id_valid(const char *s);

/*
 * The space-separated scopes as a set: each validated (scope_validate),
 * duplicates dropped, sorted bytewise, as a PostgreSQL text[] literal the
 * caller frees.  NULL for an empty or invalid list, or more than 64 scopes.
 */
char *approval_scope_set(const char *scope);

/*
 * The space-separated words of s (NULL or "" gives "{}") as a PostgreSQL
 * text[] literal with every element quoted and escaped; the caller frees
 * it.  NULL for more than max words.
 */
char *approval_words_array(const char *s, size_t max);

/*
 * Why a use of an approval that the consuming UPDATE did not take is
 * refused, from what one SELECT of it says: found (the id exists), bound
 * (its kind, agent, task, scope set and target are the request's), stored
 * status, live (unexpired).  Binding first, so a caller learns nothing about
 * an approval that is not its own.  One of the codes of approval_consume.
 */
const char *approval_refusal(bool found, bool bound, const char *status, bool live);

/*
 * Whether the human principal (authenticated by [[idp]] idp, whose
 * vouches_for_owners is vouches) may decide an approval of the task's human
 * `human` (of [[idp]] human_idp) for an agent of `owner`: they are that
 * human of that provider, or the owner (an email owner compares without
 * case, and only for a provider that vouches for owners; an "idp:subject"
 * owner only as idp ":" principal, whatever the principal looks like).
 */
bool approval_human_may_decide(const char *principal, const char *idp, bool vouches,
                               const char *human, const char *human_idp, const char *owner);

/*
 * principal as an agent owner is stored (registry_owner_normalize): an
 * email address in lower case, an "idp:subject" as it is.
 */
void approval_owner_form(const char *principal, char *out, size_t len);

/* ---- audit ---- */

struct approval_event {
	enum audit_type type;
	enum audit_outcome outcome;
	const char *approval_id;
	const char *task_id;
	const char *human;
	const char *agent_id;
	const char *chain; /* agents root first ending with agent_id, space-separated; NULL or "":
	                      agent_id alone */
	enum audit_actor_kind actor;
	const char *actor_name;
	const char *granted_scope; /* approval.granted, approval.used: the approved scopes */
	const char *token_id;      /* approval.used, approval.restored: the token it was spent on */
	const char *rules;         /* authorization.policy_rule */
	const char *request_id;
	const char *peer; /* "" or NULL when unknown */
	int severity;     /* 0: the type's default */
	json_t *detail;   /* stolen */
};

/*
 * Emit e (its detail is stolen, also on failure).  IDP_OK once the event
 * is durable (or queued, with async audit); IDP_EUNAVAIL when the audit log
 * cannot take it; IDP_EINTERNAL for an event that cannot be built (a bug).
 */
int approval_emit(struct approval_event *e) IDP_WUR;

#endif /* IDPD_APPROVALS_INT_H */
