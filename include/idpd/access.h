/*
 * access.h - just-in-time access tokens: short-lived, audience-bound,
 * narrowly scoped ES256 JWTs (RFC 9068 "at+jwt") for one resource of
 * [[resources]], issued to an agent within a task (docs/tokens.md "Access
 * tokens", DESIGN §7, the seed's "Just-in-Time Token Issuance").
 *
 *   POST /v1/token          JSON, the agent's identity credential as Bearer
 *   POST /oauth2/token      RFC 8693 token exchange, the same core
 *
 * access_issue() is that core: every check, the policy decision, the
 * approval, the signature and the audit event.  It reads in-memory state
 * only (registry, keys, revocation state, policy set) except for the
 * approval it is given and, when no delegation token is presented, the
 * task's root token.  access_finish() then makes the audit event durable
 * before the token is handed out, without holding a thread: POST /v1/token
 * runs on the HTTP I/O thread and goes to the handler pool only for what
 * must wait on PostgreSQL.
 */
#ifndef IDPD_ACCESS_H
#define IDPD_ACCESS_H

#include <stdint.h>

#include <jansson.h>

#include "idpd/approvals.h"
#include "idpd/attest.h"
#include "idpd/common.h"
#include "idpd/policy_service.h"
#include "idpd/registry.h"
#include "idpd/tasks.h"

struct agent_principal;
struct audit_event;
struct http_req;
struct http_router;
struct idpd_app;

/* What an agent asks for; every pointer borrowed. */
struct access_ask {
	struct http_req *req; /* for the request id and the peer in audit events */
	const struct agent_principal *who;
	const char *audience;
	const struct task_scopes *scopes; /* parsed, at least one */
	const char *task_id;              /* NULL: the task the delegation token names */
	const char *delegation_token;     /* NULL: the task's root token (the root agent only) */
	const char *reason;               /* the agent's stated purpose, may be NULL */
	const char *approval_id;          /* may be NULL */
	int64_t ttl_s;                    /* 0: tokens.default_ttl */
	/* false on a thread that must not wait (an HTTP I/O thread): see would_block */
	bool may_block;
};

/* The outcome; access_grant_cleanup releases it. */
struct access_grant {
	int status;       /* 200 issued, 202 approval required, 400, 403, 500, 503 */
	const char *code; /* a stable code when status != 200 ("scope_outside_capabilities") */
	/* The requested scope a scope check refused, for the answer; "" when none. */
	char refused_scope[IDP_SCOPE_MAX_LEN + 1];
	bool decided;                   /* the policy made a decision: */
	struct policy_outcome decision; /* ... this one */
	char *token;                    /* the JWT, when issued */
	char jti[ATTEST_JTI_LEN + 1];
	char *scope;        /* granted, space-separated */
	int64_t expires_in; /* seconds */
	char approval_id[APPROVAL_ID_MAX + 1];
	int64_t approval_expires_s;
	/* !may_block and a step would have waited on PostgreSQL (a cache miss,
	 * the root token, an approval): nothing was done; ask again where
	 * waiting is allowed. */
	bool would_block;
	/* Owned, for access_finish: the outcome's audit event (token.issued,
	 * token.denied), and the approval to record for a REQUIRE_APPROVAL. */
	struct audit_event *event;
	struct approval_subject *approval;
	/* Issued: to whom and when, for last_active once the event is durable. */
	char agent_id[REGISTRY_ID_MAX + 1];
	int64_t issued_ms;
	/* Issued with an approval, which it spent: its id and what it was
	 * bound to (owned), for access_finish to give it back if the token is
	 * withheld.  spent is NULL when no approval was spent. */
	char spent_id[APPROVAL_ID_MAX + 1];
	struct approval_subject *spent;
};

/*
 * Run every check, decide, sign, or refuse.  Never answers req, writes
 * nothing: what must be made durable before the answer is left in g for
 * access_finish.  Any worker thread; with !a->may_block it never waits.
 */
void access_issue(const struct access_ask *a, struct access_grant *g);
void access_grant_cleanup(struct access_grant *g);

/*
 * Make g's outcome durable, then answer req with reply(req, g): the event
 * is committed first (a token whose token.issued cannot be committed
 * within audit.timeout is withheld: 503), and an approval is recorded on
 * the handler pool.  Neither blocks the calling thread: req is suspended
 * meanwhile, and reply runs on the audit writer's thread or a pool thread.
 * The exception is a token that spent an approval (g->spent), issued on a
 * thread that may wait: it waits there for its commit, so that a withheld
 * one gives its approval back (approval_restore) before the 503 goes out.
 * Takes over g's contents (g is left empty); the caller must not touch req
 * after this returns.  The thread of any handler.
 */
typedef void (*access_reply_fn)(struct http_req *req, struct access_grant *g);
void access_finish(struct http_req *req, struct access_grant *g, access_reply_fn reply);

/* Copy the settings, register the reload hook.  Main thread, after the modules it reads. */
int access_init(struct idpd_app *app, struct idp_diag *diag) IDP_WUR;
void access_shutdown(void);
/* POST /v1/token. */
int access_routes(struct http_router *r, struct idpd_app *app) IDP_WUR;
/*
 * The [[resources]] entry of audience aud as policy input:
 * {"domain", "classification", "environment"?}, a new object; NULL when aud
 * is no configured resource.  Any thread.
 */
json_t *access_resource_json(const char *aud);

#endif /* IDPD_ACCESS_H */
