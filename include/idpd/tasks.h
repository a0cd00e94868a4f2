/*
 * tasks.h - tasks: a human's request, carried out by a root agent and the
 * agents it delegates to, and the task-scoped delegation tokens issued
 * within it (migrations/0007_tasks.sql, docs/tokens.md "Tasks").
 *
 *   POST /v1/tasks                 a human (IdP bearer token) opens a task
 *   GET  /v1/tasks/{id}            the human, the root agent, or an auditor
 *   POST /v1/tasks/{id}/complete   the human, the root agent, or an admin
 *   GET  /v1/tasks/{id}/timeline   its audit events, oldest first (as GET)
 *
 * PostgreSQL holds tasks and tokens; each write commits only after its
 * audit event is durable.  The pure parts (the delegation hash chain, the
 * claims of a delegation token) are functions of their arguments, so they
 * are unit-tested without a database.
 */
#ifndef IDPD_TASKS_H
#define IDPD_TASKS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "idpd/common.h"
#include "idpd/scope.h"

struct http_router;
struct idpd_app;

/* "typ" of delegation tokens. */
#define TASK_TOKEN_TYP "idpd-delegation+jwt"

#define TASK_CHAIN_HASH_LEN 32
/* "sha256:" + 64 lower-case hex digits + NUL. */
#define TASK_CHAIN_TEXT_LEN 72
#define TASK_ID_MAX 64
#define TASK_MAX_SCOPES 64

/*
 * The scopes a task or delegation request names: validated, duplicates
 * dropped, in request order, also joined with spaces (the RFC 6749 form).
 * Caller's storage, no allocation; large, so keep it off small stacks.
 */
struct task_scopes {
	const char *v[TASK_MAX_SCOPES];
	size_t n;
	char vals[TASK_MAX_SCOPES][IDP_SCOPE_MAX_LEN + 1];
	char joined[TASK_MAX_SCOPES * (IDP_SCOPE_MAX_LEN + 1)];
};

/*
 * Fill s from a space-separated string or an array of strings; at least
 * one scope.  false with diag filled on anything invalid.  Any thread.
 */
bool task_scopes_parse(const json_t *j, struct task_scopes *s, struct idp_diag *d);
/* s as a PostgreSQL text[] literal (the scopes are validated: no quotes); free() it. */
char *task_scopes_pg_array(const struct task_scopes *s);
#define TASK_DESCRIPTION_MAX 1024

/* Whether s has the form of a task id: "task_" and 1..59 of [A-Za-z0-9_-].  Any thread. */
bool task_id_valid(const char *s);

/*
 * The delegation hash chain (DESIGN §7):
 *   h0 = SHA-256("idpd-chain-v1" || human)
 *   hi = SHA-256(h(i-1) || agent_i || jti_i || scope_i)
 * where h(i-1) is the 32 raw bytes, the strings are their UTF-8 bytes
 * without separators or terminators, and scope_i is the token's "scope"
 * claim (space-separated).  out may alias prev.  IDP_EINTERNAL if OpenSSL
 * fails.  Any thread.
 */
int task_chain_root(const char *human, uint8_t out[TASK_CHAIN_HASH_LEN]) IDP_WUR;
int task_chain_next(const uint8_t prev[TASK_CHAIN_HASH_LEN], const char *agent, const char *jti,
                    const char *scope, uint8_t out[TASK_CHAIN_HASH_LEN]) IDP_WUR;
/* "sha256:<lower-case hex>". */
void task_chain_format(const uint8_t h[TASK_CHAIN_HASH_LEN], char out[TASK_CHAIN_TEXT_LEN]);

/* What the root delegation token of a task says; every string borrowed. */
struct task_root_token {
	const char *issuer;   /* identity.issuer */
	const char *audience; /* identity.audience: the token is for idpd itself */
	const char *agent_id; /* sub */
	const char *jti;
	const char *task_id;
	const char *scope;      /* space-separated */
	const char *human;      /* human_principal; also the actor of depth 0 */
	const char *idp;        /* the [[idp]] that authenticated the human */
	const char *chain_hash; /* task_chain_format of h1 */
	int64_t iat_s;
	int64_t exp_s;
};

/*
 * The claims of a task's root delegation token, a new object the caller
 * owns: iss, sub, aud, iat, exp, jti, task_id, scope, human_principal,
 * delegation_chain_hash, depth 0, and act {"sub": agent_id, "sub_type":
 * "agent", "act": {"sub": human, "sub_type": "human", "idp": idp}}
 * (RFC 8693 section 4.1: the current actor outermost, the root agent, and
 * before it the human who started the task).  NULL if exp_s <= iat_s.  Any
 * thread.
 */
json_t *task_root_claims(const struct task_root_token *t);

/*
 * Copy the settings and the store from app, register the reload hook.
 * IDP_EINVAL with diag if the hook cannot be registered.  Main thread,
 * after registry_init, keys_start and human_auth_init.
 */
int tasks_init(struct idpd_app *app, struct idp_diag *diag) IDP_WUR;
/* Add the /v1/tasks routes to r. */
int tasks_routes(struct http_router *r, struct idpd_app *app) IDP_WUR;

#endif /* IDPD_TASKS_H */
