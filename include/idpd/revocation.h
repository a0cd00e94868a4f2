/*
 * revocation.h - what idpd must know about its tokens beyond their
 * signatures: which are revoked, how delegation tokens descend from one
 * another, and whether each task is still open.  Token issuance, delegation
 * and introspection read it on every request; POST /introspect and
 * POST /revoke are served here.
 *
 * PostgreSQL is the source of truth (tasks, delegation_tokens,
 * revoked_tokens).  Every instance keeps the live part of it in memory -
 * tasks not yet expired, delegation tokens not yet expired, revoked jtis not
 * yet expired - as one immutable snapshot swapped under one lock
 * (revocation.lock), reloaded whole when the listener (re)connects and
 * patched by the notifications on channel "tokens" (triggers on the three
 * tables).  So a revocation made on one instance reaches every instance in
 * the time a NOTIFY takes.
 *
 * Failing closed: the state is current while the listener is connected.
 * From the moment the connection is lost, the instance answers from what it
 * has for revocation.max_staleness, then every check returns IDP_EUNAVAIL
 * (503) until a reload has succeeded.  A delegation jti the snapshot does
 * not know is looked up in PostgreSQL (a token made on another instance
 * whose notification has not arrived yet); if PostgreSQL cannot answer,
 * IDP_EUNAVAIL.  No check ever guesses.
 */
#ifndef IDPD_REVOCATION_H
#define IDPD_REVOCATION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "idpd/common.h"

struct http_router;
struct idpd_app;

/* "typ" of access tokens (RFC 9068). */
#define ACCESS_TOKEN_TYP "at+jwt"
/*
 * The private claim of an access token naming the delegation token it was
 * issued under: its ancestors are that token and that token's ancestors.
 */
#define ACCESS_CLAIM_DELEGATION_JTI "delegation_jti"
/*
 * The private claim of an access token naming the identity credential that
 * asked for it: revoking that credential ends the token too.
 */
#define ACCESS_CLAIM_IDENTITY_JTI "identity_jti"
/*
 * How long past its exp a revoked identity credential stays in the
 * revocation state: the longest an access token it obtained can live
 * (tokens.max_ttl's maximum).  Migration 0017 keeps its rows as long.
 */
#define REV_CREDENTIAL_SPAN_S (24 * 3600)

/* One link of a delegation chain: a delegation token as stored. */
struct revocation_link {
	char *jti;
	char *agent_id; /* the token's sub: the agent the token was given to */
	char *scope;    /* space-separated, as in the token's "scope" claim */
	int depth;      /* 0 for a task's root token */
	int64_t iat_s;
	int64_t exp_s;
	bool approved; /* issued on a human's approval (delegation.approvals counts these) */
};

/* A delegation token's chain, root (depth 0) first; the caller owns it. */
struct revocation_chain {
	char *task_id;
	char *human; /* the task's human principal */
	size_t n;
	struct revocation_link *links;
};
void revocation_chain_free(struct revocation_chain *c);

/*
 * Whether the delegation token jti, which claims task task_id, is live at
 * now_s: known, unexpired, itself and every ancestor unrevoked, of task
 * task_id, and that task open and unexpired.  IDP_OK, and *out (if not
 * NULL) gets a new chain ending with jti; IDP_EFORBIDDEN with *reason one
 * of "token_unknown", "token_expired", "token_revoked", "task_mismatch",
 * "task_not_open"; IDP_EUNAVAIL when the state is stale or the lookup of an
 * unknown jti cannot reach PostgreSQL.  Any thread; waits on PostgreSQL only
 * on a miss, and only when may_block: else a miss is IDP_EWOULDBLOCK.
 */
int revocation_check_delegation(const char *jti, const char *task_id, int64_t now_s, bool may_block,
                                struct revocation_chain **out, const char **reason) IDP_WUR;

/*
 * Whether the jti of an access token is revoked: IDP_OK when it is not,
 * IDP_EFORBIDDEN when it is, IDP_EUNAVAIL when the state is stale.  Never
 * reads PostgreSQL.  Any thread.
 */
int revocation_check_jti(const char *jti) IDP_WUR;

/*
 * Install in this instance's state what a committed transaction has just
 * written, so that its next request sees it before the notification
 * arrives (read your writes).  Best effort: the notification brings the
 * same.  Any thread.
 */
void revocation_note_delegation(const char *jti, const char *parent_jti, const char *task_id,
                                const char *agent_id, const char *scope, int depth, int64_t iat_s,
                                int64_t exp_s, bool approved);
void revocation_note_task_closed(const char *task_id);

/*
 * Whether token is an active access token, by every rule of POST
 * /introspect.  IDP_OK with *out its introspection response (a new object);
 * IDP_EUNAUTH for any token that is not an active access token;
 * IDP_EUNAVAIL when idpd cannot tell.  Any worker thread; may wait on
 * PostgreSQL on a miss.  The audit log's token resolver.
 */
int revocation_introspect_access(const char *token, json_t **out) IDP_WUR;

/*
 * Load the state and subscribe to the listener (before
 * store_listener_start), register the cleanup job "revocations" (it prunes
 * revoked_tokens and delegation_tokens past their expiry) and copy the
 * settings.  Main thread, after registry_init and keys_start.
 */
int revocation_init(struct idpd_app *app, struct idp_diag *diag) IDP_WUR;
/* After the HTTP server and the listener are stopped. */
void revocation_shutdown(void);
/* POST /introspect (RFC 7662) and POST /revoke (RFC 7009). */
int revocation_routes(struct http_router *r, struct idpd_app *app) IDP_WUR;

#endif /* IDPD_REVOCATION_H */
