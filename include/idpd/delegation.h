/*
 * delegation.h - POST /v1/delegations: an agent passes part of its
 * task-scoped delegation token on to another agent, with permission
 * diminishment (docs/tokens.md "Delegation", DESIGN §7).
 *
 * The new token has the typ and claim shape of a task's root token; its sub
 * is the delegate, its depth one more than its parent's, its
 * delegation_chain_hash the next link of the parent's (task_chain_next),
 * and its act the delegator wrapping the parent's act (RFC 8693 section
 * 4.1).  It is stored in delegation_tokens with its parent's jti.
 */
#ifndef IDPD_DELEGATION_H
#define IDPD_DELEGATION_H

#include <stdbool.h>
#include <stdint.h>

#include <jansson.h>

#include "idpd/common.h"
#include "idpd/tasks.h"

struct http_router;
struct idpd_app;
struct registry_agent;

/* What a delegated token says; every string borrowed. */
struct delegation_token {
	const char *issuer;
	const char *audience;
	const char *agent_id;  /* sub: the delegate */
	const char *delegator; /* the parent's sub: the actor of this delegation */
	const char *jti;
	const char *task_id;
	const char *scope; /* space-separated */
	const char *human; /* human_principal, from the parent */
	const char *chain_hash;
	int depth;
	int64_t iat_s;
	int64_t exp_s;
};

/*
 * The claims of a delegated token, a new object the caller owns; act is
 * {"sub": delegator, "sub_type": "agent", "act": parent_act}, parent_act
 * copied.  NULL if exp_s <= iat_s or parent_act is not an object.  Any
 * thread.
 */
json_t *delegation_claims(const struct delegation_token *t, const json_t *parent_act);
/* The raw hash of a "sha256:<64 lower-case hex>" text; IDP_EINVAL otherwise.  Any thread. */
int delegation_chain_parse(const char *text, uint8_t out[TASK_CHAIN_HASH_LEN]) IDP_WUR;
/* Whether to's id or agent type is in from's delegate_to.  Any thread. */
bool delegation_may_delegate_to(const struct registry_agent *from, const struct registry_agent *to);

/* Copy the identity settings and the store from app.  Main thread, after tasks_init. */
int delegation_init(struct idpd_app *app, struct idp_diag *diag) IDP_WUR;
/* Add POST /v1/delegations to r. */
int delegation_routes(struct http_router *r, struct idpd_app *app) IDP_WUR;

#endif /* IDPD_DELEGATION_H */
