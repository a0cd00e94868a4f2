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
#include "idpd/jws.h"
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
 * {"sub": agent_id, "sub_type": "agent", "act": parent_act}, parent_act
 * copied: RFC 8693 section 4.1's nesting, the outermost act the current
 * actor (the agent the token is given to), the innermost the human.  NULL
 * if exp_s <= iat_s or parent_act is not an object.  Any thread.
 */
json_t *delegation_claims(const struct delegation_token *t, const json_t *parent_act);
/*
 * act as the token of holder carries it: act itself (a new reference) when
 * its outermost actor is holder, else act wrapped in {"sub": holder,
 * "sub_type": "agent"}, for tokens issued before the outermost act named
 * the holder.  NULL if act is not an object.  Any thread.
 */
json_t *delegation_act_of(const json_t *act, const char *holder);
/*
 * The agents of a delegation token's act (as verified) for its holder,
 * root first and holder last, into out (pointers into act, and holder
 * itself when act's outermost actor is not it, as in a token of the
 * earlier nesting).  The human is not among them.  The count, at most max.
 * Any thread.
 */
size_t delegation_act_agents(const json_t *act, const char *holder, const char **out, size_t max);
/* The raw hash of a "sha256:<64 lower-case hex>" text; IDP_EINVAL otherwise.  Any thread. */
int delegation_chain_parse(const char *text, uint8_t out[TASK_CHAIN_HASH_LEN]) IDP_WUR;
/* Whether to's id or agent type is in from's delegate_to.  Any thread. */
bool delegation_may_delegate_to(const struct registry_agent *from, const struct registry_agent *to);

/* What a verified delegation token says; every pointer borrows from the verified claims. */
struct delegation_presented {
	const char *sub;
	const char *jti;
	const char *task_id;
	const char *human;
	const char *chain_hash; /* delegation_chain_hash */
	const json_t *act;
	const json_t *scope; /* the "scope" claim, for task_scopes_parse */
	int depth;
	int64_t exp_s;
};

/*
 * Verify a delegation token presented by agent_id: it verifies with idpd's
 * keys (ES256, typ TASK_TOKEN_TYP; through cache when not NULL), is
 * unexpired, carries idpd's iss and aud and every claim a delegation token
 * has, and its sub is agent_id.  IDP_OK with *v (the caller cleans it up
 * with idp_jws_verified_cleanup) and *p filled; IDP_EFORBIDDEN with
 * *reason "delegation_token_invalid", "delegation_token_expired" or
 * "delegation_token_not_yours" (then *p is filled too when the claims
 * were whole: the refusal can name the task); IDP_EUNAVAIL (*reason
 * "unavailable") when idpd cannot tell whether the token's key is one of
 * the deployment's (keys_verify_own: a kid this instance has not loaded is
 * read for once, as another instance may have activated it a moment ago).
 * With may_block false (an I/O thread), IDP_EWOULDBLOCK with *reason NULL
 * where that read would be made: nothing was read, and the caller defers
 * the request to the handler pool.  Any thread.
 */
int delegation_token_verify(const char *tok, const char *agent_id, struct idp_jws_cache *cache,
                            bool may_block, struct idp_jws_verified *v,
                            struct delegation_presented *p, const char **reason) IDP_WUR;

/* Copy the identity settings and the store from app.  Main thread, after tasks_init. */
int delegation_init(struct idpd_app *app, struct idp_diag *diag) IDP_WUR;
/* Add POST /v1/delegations to r. */
int delegation_routes(struct http_router *r, struct idpd_app *app) IDP_WUR;

#endif /* IDPD_DELEGATION_H */
