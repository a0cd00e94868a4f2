/*
 * human_auth.h - humans authenticate with a bearer JWT from one of the
 * identity providers configured as [[idp]] (an OIDC ID token or an access
 * token of the corporate SSO).
 *
 * The module owns the providers snapshot: each [[idp]] with its key set
 * read from its JWKS file, or the remote that fetches it from its jwks_uri
 * (jwks_remote.h), immutable once published and reference counted, swapped
 * whole by a reload (SIGHUP).  A reload whose JWKS files do not all load is
 * refused and the old providers stay.
 *
 * A token authenticates only if: its kid names a key of a provider (the
 * first in configuration order whose key set knows the kid decides), its
 * alg is in that provider's algs and matches the key (never "none", never
 * HMAC), the signature verifies, iss equals the provider's issuer, aud
 * holds its audience, exp is present and in the future and iat/nbf are not
 * in the future (identity.leeway of tolerance), and the principal claim is
 * a non-empty string of at most HUMAN_PRINCIPAL_MAX bytes of UTF-8 without
 * spaces or control characters (C1 included).
 */
#ifndef IDPD_HUMAN_AUTH_H
#define IDPD_HUMAN_AUTH_H

#include <stdbool.h>
#include <stdint.h>

#include "idpd/common.h"

struct http_req;
struct idp_clock;
struct idpd_app;
struct idpd_config;

#define HUMAN_PRINCIPAL_MAX 320

/* Who a human token names. */
struct human_principal {
	char principal[HUMAN_PRINCIPAL_MAX + 1]; /* the principal claim's value */
	char idp[65];                            /* the [[idp]] name that vouched for it */
	bool vouches_for_owners;                 /* that [[idp]]'s vouches_for_owners */
	int64_t expires_at_s;                    /* the token's exp */
	int retry_after_s; /* with IDP_EUNAVAIL: when a key set being fetched may be there */
};

/* A verifier over one configuration's providers; immutable, any thread. */
struct human_verifier;

/*
 * Build a verifier from cfg's [[idp]] sections and identity.leeway, reading
 * each JWKS file and making each jwks_uri's remote (jwks_remote_new: not
 * fetched until published, which human_auth_init and a reload's apply do).
 * NULL with diag naming the provider and file that failed.  Caller owns it
 * (human_verifier_free).  Any thread.
 */
struct human_verifier *human_verifier_new(const struct idpd_config *cfg, struct idp_diag *diag);
void human_verifier_free(struct human_verifier *v);

/*
 * Verify token (len bytes) with v at clock's time.  IDP_OK with *out
 * filled, or IDP_EUNAUTH with *reason (if not NULL) a stable code for logs
 * and audit ("no_idp", "kid_unknown", "alg_not_allowed", "issuer_mismatch",
 * "audience_mismatch", "expired", "idpd_token" (one of idpd's own tokens),
 * "principal_missing", "email_unverified" (email_verified present and not
 * true), "email_verified_missing", ...), never for the client.
 * IDP_EUNAVAIL, with out->retry_after_s, when a jwks_uri provider cannot
 * tell yet: its key set is being fetched ("kid_unknown_until_refresh"), has
 * never been fetched ("jwks_unavailable") or is past jwks_max_stale
 * ("jwks_stale"); see jwks_remote_kid_unknown.  Never blocks; it may ask
 * the jwks thread for a fetch.  Any thread.
 */
int human_token_verify(const struct human_verifier *v, const char *token, size_t len,
                       const struct idp_clock *clock, struct human_principal *out,
                       const char **reason) IDP_WUR;

/*
 * Build the process's verifier from app->cfg and register its reload hook.
 * IDP_EINVAL with diag when a JWKS file cannot be loaded.  Main thread.
 */
int human_auth_init(struct idpd_app *app, struct idp_diag *diag) IDP_WUR;
/* Drop the process's verifier.  After the HTTP server stops.  Main thread. */
void human_auth_shutdown(void);

/*
 * Authenticate req's "Authorization: Bearer <jwt>" as a human with the
 * process's verifier and clock.  Does not answer the request.  IDP_OK with
 * *out filled; IDP_EUNAUTH for a missing or bad token (*reason as above);
 * IDP_EUNAVAIL before human_auth_init, or as human_token_verify says (then
 * with a Retry-After header added to req).  Any worker thread; never
 * blocks.
 */
int authenticate_human(struct http_req *req, struct human_principal *out,
                       const char **reason) IDP_WUR;

#endif /* IDPD_HUMAN_AUTH_H */
