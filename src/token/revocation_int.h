/*
 * revocation_int.h - what the revocation state (revocation.c) shares with
 * the two endpoints built on it (introspect.c, revoke.c).  Not for other
 * modules: they use include/idpd/revocation.h.
 */
#ifndef IDPD_REVOCATION_INT_H
#define IDPD_REVOCATION_INT_H

#include <stdbool.h>
#include <stdint.h>

#include "idpd/app.h"
#include "idpd/auth.h"
#include "idpd/revocation.h"

/* No chain is longer: a walk that goes further has found a corrupt one. */
#define REV_CHAIN_MAX 64
/*
 * A check that would have to read PostgreSQL, asked with may_block false
 * (an inline handler): not an idp_err, so it can never be mistaken for one.
 */
#define REV_WOULD_BLOCK 1

struct rev_snap;

/* One link as the state holds it; the strings live as long as the view. */
struct rev_link_view {
	const char *jti;
	const char *agent_id;
	const char *scope;
	int depth;
	int64_t iat_s;
	int64_t exp_s;
	bool approved; /* issued on a human's approval */
};

/*
 * A live delegation chain (or a task alone), read from one snapshot and
 * valid until rev_view_release: root first, links[n - 1] the token asked
 * about.  Caller's storage.
 */
struct rev_view {
	struct rev_snap *snap;
	size_t n;
	struct rev_link_view links[REV_CHAIN_MAX];
	const char *task_id;
	const char *human;
};

/*
 * revocation_check_delegation's checks, handing back a view instead of a
 * copy.  With may_block false, a jti, ancestor or task the snapshot does
 * not hold answers REV_WOULD_BLOCK instead of reading PostgreSQL.  On
 * IDP_OK the caller must rev_view_release(v).  Any thread.
 */
int rev_view_delegation(const char *jti, const char *task_id, int64_t now_s, bool may_block,
                        struct rev_view *v, const char **reason) IDP_WUR;
/*
 * Whether task task_id is open and unexpired at now_s: IDP_OK (v->n is 0;
 * release it), IDP_EFORBIDDEN with *reason "token_unknown" (no such task)
 * or "task_not_open", IDP_EUNAVAIL, or REV_WOULD_BLOCK as above.
 */
int rev_view_task(const char *task_id, int64_t now_s, bool may_block, struct rev_view *v,
                  const char **reason) IDP_WUR;
void rev_view_release(struct rev_view *v);

/*
 * After a revocation committed by this instance: install it before the
 * notification arrives.  rev_note_revoked_jti records a revoked jti that
 * lives until exp_s; rev_note_revoked_delegation marks a delegation token
 * the state holds as revoked (one it does not hold is left to the
 * notification and the miss path).  Best effort; any thread.
 */
void rev_note_revoked_jti(const char *jti, int64_t exp_s);
void rev_note_revoked_delegation(const char *jti);

/* Whether s has the form of a jti idpd issues and records: [A-Za-z0-9_-]{16,64}. */
bool rev_jti_ok(const char *s);

/* The identity settings the endpoints check tokens against (restart-only). */
struct rev_identity {
	char issuer[513];
	char audience[513];
};
const struct rev_identity *rev_identity(void);
/*
 * identity.leeway in seconds: tolerated for an iat in the future (another
 * instance's clock may run ahead), never for exp.
 */
int64_t rev_leeway_s(void);

/* introspect.c: set up the verified-token cache and the metrics; main thread. */
int introspect_init(struct idpd_app *app, struct idp_diag *diag) IDP_WUR;
void introspect_shutdown(void);
int introspect_routes(struct http_router *r) IDP_WUR;
/* revoke.c: the store its transactions use (main thread), and its route. */
void revoke_set_store(struct store *s);
int revoke_routes(struct http_router *r) IDP_WUR;

/*
 * The caller of an OAuth endpoint as an operator: an API key sent as
 * "Authorization: Bearer idpk_..." or as the password of HTTP Basic (the
 * user name, if not empty, must be the key's name).  IDP_OK with *out
 * filled; IDP_ENOTFOUND when the request carries neither form (the caller
 * may try another kind of credential); IDP_EUNAUTH for a key that is not
 * valid.  Does not answer the request.  Any thread.
 */
int rev_operator_key(struct http_req *req, struct auth_principal *out) IDP_WUR;

#endif /* IDPD_REVOCATION_INT_H */
