/*
 * approvals.h - human approvals: a token or delegation request that needs
 * one (REQUIRE_APPROVAL) leaves a pending approval; the task's human, the
 * agent's owner or an operator with the approver role decides it; the agent
 * retries its request with the approval's id (docs/tokens.md "Approvals").
 *
 *   GET  /v1/approvals?status=&approver=&task_id=&agent_id=
 *   GET  /v1/approvals/{id}
 *   POST /v1/approvals/{id}/approve
 *   POST /v1/approvals/{id}/deny
 *
 * An approval is bound to what was asked - kind, agent, task, scope set and
 * target (the audience of an access token, the delegate of a delegation) -
 * is used at most once, and expires approvals.ttl after it was requested.
 * PostgreSQL holds them (migrations/0009_approvals.sql); every change is
 * audited before it commits.
 */
#ifndef IDPD_APPROVALS_H
#define IDPD_APPROVALS_H

#include <stdint.h>

#include "idpd/common.h"

struct http_router;
struct idpd_app;
struct store_conn;

/* "apr_" + 22 base64url characters. */
#define APPROVAL_ID_MAX 64

enum approval_kind {
	APPROVAL_TOKEN,      /* POST /v1/token, /oauth2/token */
	APPROVAL_DELEGATION, /* POST /v1/delegations */
};

/* What an approval is for; every string borrowed. */
struct approval_subject {
	enum approval_kind kind;
	const char *agent_id; /* the agent that asked */
	const char *task_id;
	const char *human;  /* the task's human principal */
	const char *scope;  /* the requested scopes, space-separated (order does not matter) */
	const char *target; /* the audience (token) or the delegate's id (delegation) */
	const char *reason; /* why an approval is needed: the policy's reason or a check's code */
	const char *rules; /* the deciding rule ids, space-separated; NULL when no policy decided */
	const char *request_id;
	/* The agents from the task's root agent down to agent_id, space-separated, root
	 * first; NULL: agent_id alone.  Recorded and audited, not bound. */
	const char *chain;
};

/*
 * Record a pending approval for s, audited as approval.requested (actor:
 * the agent; decision REQUIRE_APPROVAL; outcome pending) before it
 * commits.  The agent's owner is read from the registry and copied into
 * the approval, so the owner at request time may decide it.  When one is
 * pending already for exactly this request (kind, agent, task, scope set,
 * target), its id and expiry are returned instead and nothing is written:
 * an agent that retries before the human decides waits on one approval.
 * IDP_OK with
 * id (NUL-terminated) and *expires_s (seconds since the epoch, PostgreSQL's
 * clock) filled; IDP_EINVAL for a subject that is not well formed or names
 * an agent or task that does not exist; IDP_EUNAVAIL when the registry,
 * PostgreSQL or the audit log cannot take it.  Any worker thread; waits on
 * PostgreSQL.
 */
int approval_request(const struct approval_subject *s, char id[APPROVAL_ID_MAX + 1],
                     int64_t *expires_s) IDP_WUR;

/*
 * A copy of s and of every string it points to, in one allocation that
 * free() releases: for a subject handed to another thread.  Never NULL.
 */
struct approval_subject *approval_subject_dup(const struct approval_subject *s);

/*
 * Use approval id for s: it must be approved, unexpired, unused and bound
 * to exactly s (kind, agent, task, scope set, target).  On IDP_OK it is
 * marked used in the same statement, so it can never serve twice, and
 * used_by (the jti of the token it is spent on; NULL when there is none)
 * is recorded with it, for approval_restore.
 * IDP_EFORBIDDEN with *reason one of "approval_unknown",
 * "approval_pending", "approval_denied", "approval_used",
 * "approval_expired", "approval_mismatch" (bound to something else);
 * IDP_EUNAVAIL when PostgreSQL cannot answer.  A use and a refused use
 * are both audited as approval.used (outcome success or denied, with
 * detail.reason).  Runs and commits its own transaction.  Any worker
 * thread.
 */
int approval_consume(const char *id, const struct approval_subject *s, const char *used_by,
                     const char **reason) IDP_WUR;

/*
 * Whether approval_consume would take id for s now, without spending it:
 * IDP_OK, or what approval_consume answers (a refusal recorded as it
 * records one).  For a caller with work left that may fail on idpd's side
 * (a policy to run, a token to sign): it checks first and spends at the
 * end, so that its own failure never burns a human's approval; a use in
 * between makes the spending fail with "approval_used".  Any worker thread.
 */
int approval_check(const char *id, const struct approval_subject *s, const char **reason) IDP_WUR;

/*
 * approval_consume inside the caller's open transaction on c, so the
 * approval is spent if and only if the caller commits what it was for.
 * The approval.used event is written before this returns, that is before
 * the caller's COMMIT (the audit-before-commit order); if the caller rolls
 * back afterwards, the approval stays approved.  Same results as
 * approval_consume; on an error other than IDP_EFORBIDDEN the caller must
 * roll back.  Any worker thread.
 */
int approval_consume_in(struct store_conn *c, const char *id, const struct approval_subject *s,
                        const char *used_by, const char **reason) IDP_WUR;

/*
 * Give back approval id, spent (approval_consume) on the token used_by that
 * was then withheld: its token.issued event did not become durable within
 * audit.timeout, so the token never left and the agent may ask again.  It
 * is approved again only if it is still spent on used_by (a compare and
 * set, so that no other use is ever undone), audited as approval.restored
 * before that commits; withheld_event (may be NULL) is the id of the
 * token.issued event, which may still commit later and is then followed by
 * the writer's audit.withdrawn naming it.  IDP_OK once given back;
 * IDP_ENOTFOUND when it is not (or no longer) spent on used_by: nothing
 * changes; IDP_EUNAVAIL when PostgreSQL or the audit log cannot take it:
 * it stays spent.  Runs and commits its own transaction.  Any worker
 * thread; waits on PostgreSQL and on the audit commit.
 */
int approval_restore(const char *id, const struct approval_subject *s, const char *used_by,
                     const char *withheld_event) IDP_WUR;

/* "token", "delegation". */
const char *approval_kind_name(enum approval_kind k);

/* Copy the settings and the store from app, register the reload hook. Main thread. */
int approvals_init(struct idpd_app *app, struct idp_diag *diag) IDP_WUR;
/* Add the /v1/approvals routes to r. */
int approvals_routes(struct http_router *r, struct idpd_app *app) IDP_WUR;

#endif /* IDPD_APPROVALS_H */
