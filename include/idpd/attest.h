/*
 * attest.h - workload attestation and agent identity credentials: join
 * tokens, the trusted attestors of workload tokens ([[attestors]]), the
 * POST /v1/agents/{id}/attest endpoint, and the ES256 identity credential it
 * answers with.
 *
 * An agent proves which workload it is with one of two kinds of evidence:
 *   join_token  a one-time secret an operator made for it (stored hashed,
 *               single use, expires);
 *   jwt         a workload token from a configured attestor (a Kubernetes
 *               service-account token, a SPIRE JWT-SVID, ...), whose claims
 *               satisfy every attestation selector of the agent's record.
 * In exchange it gets an identity credential (typ IDP_JWS_TYP_IDENTITY):
 * sub spiffe://<trust_domain>/agent/<id>, aud identity.audience, a lifetime
 * of the record's rotation interval, and a jti recorded in
 * agent_credentials so it can be revoked.  agent_auth.h checks it.
 *
 * The process has one attestation service, like it has one registry: its
 * configuration (identity settings and the attestors with their loaded key
 * sets) is an immutable, reference-counted snapshot that a reload replaces
 * under attest.lock.  The pure parts (selector mappings, matching,
 * credential claims) are exposed for the unit tests.
 */
#ifndef IDPD_ATTEST_H
#define IDPD_ATTEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "idpd/common.h"
#include "idpd/config.h"

struct http_router;
struct idp_clock;
struct idp_jws_key;
struct idpd_app;

#define ATTEST_JOIN_TOKEN_PREFIX "idpj_"
/* "idpj_" and 43 base64url characters (256 bits), and a NUL. */
#define ATTEST_JOIN_TOKEN_LEN 48
#define ATTEST_JTI_LEN 22 /* 128 random bits, base64url */
#define ATTEST_SPIFFE_ID_MAX 512

/* ---- selector mappings (pure; any thread) ---- */

struct attest_selector_map;

/*
 * Parse an attestor's `selectors` string: space-separated
 * "prefix=claim/path" entries.  A selector "<prefix>:<value>" is satisfied
 * when the claim at path (names separated by '/', each a member of the
 * object before it) is the string <value>, or an array holding it.
 * Returns a new map (attest_selector_map_free), or NULL with diag filled.
 */
struct attest_selector_map *attest_selector_map_parse(const char *s, struct idp_diag *diag);
void attest_selector_map_free(struct attest_selector_map *m);

/*
 * A prefix of a under which some selector would also be read by b (the
 * same prefix, or one of them the other plus ":..."), or NULL when none.
 * Two attestors must not share one: an agent's selectors would not say
 * which of them has to vouch for it, so another cluster's workload with
 * the same namespace and service account would attest as the agent.
 */
const char *attest_selector_maps_overlap(const struct attest_selector_map *a,
                                         const struct attest_selector_map *b);

/*
 * Check that claims satisfy every selector of sel[0..n).  None at all is a
 * failure ("no_selectors"): an agent nobody described cannot be attested by
 * a workload token.  Each selector is read with the longest prefix of m
 * that it starts with (followed by ':').  Returns true, or false with
 * *reason one of "no_selectors", "selector_unmapped",
 * "selector_claim_missing", "selector_mismatch" and *failed (may be NULL)
 * the selector that failed.
 */
bool attest_selectors_match(const struct attest_selector_map *m, const json_t *claims,
                            const char *const *sel, size_t n, const char **reason,
                            const char **failed);

/* ---- the identity credential (pure; any thread) ---- */

struct attest_identity {
	const char *trust_domain;
	const char *issuer;
	const char *audience;
};

/* "spiffe://<trust_domain>/agent/<id>" into out; false if it does not fit. */
bool attest_spiffe_id(const char *trust_domain, const char *agent_id, char *out, size_t len);

/*
 * The claims of a credential for agent_id issued at now_ms: iss, sub, aud,
 * iat, nbf, exp, jti.  exp is now plus lifetime_ms, cut back so that it is
 * never past not_after_ms (the signing key's; 0 for none) or past now plus
 * max_ms (0 for none), in whole seconds.  A new object the caller owns, or
 * NULL when no valid lifetime remains (exp would not be after iat).
 */
json_t *attest_credential_claims(const struct attest_identity *id, const char *agent_id,
                                 const char *jti, int64_t now_ms, int64_t lifetime_ms,
                                 int64_t not_after_ms, int64_t max_ms);

/* A new random jti (ATTEST_JTI_LEN characters).  IDP_EINTERNAL if the CSPRNG fails. */
int attest_jti_new(char out[ATTEST_JTI_LEN + 1]) IDP_WUR;

/*
 * A new join token and its hash as stored: the lowercase hex SHA-256 of the
 * whole token.  IDP_EINTERNAL if the CSPRNG fails.  The caller wipes token.
 */
int attest_join_token_new(char token[ATTEST_JOIN_TOKEN_LEN + 1], char hash[65]) IDP_WUR;
/* The stored hash of a presented token; false if it is not shaped like one. */
bool attest_join_token_hash(const char *token, char hash[65]);

/* ---- the process's service (main thread unless said otherwise) ---- */

/*
 * Read app->cfg's identity.*, attestation.* and [[attestors]] (loading each
 * attestor's JWKS file) and register the reload hook.  IDP_EINVAL with diag
 * naming the attestor and file when one cannot be loaded: startup stops.
 */
int attest_init(struct idpd_app *app, struct idp_diag *diag) IDP_WUR;
void attest_shutdown(void);

/*
 * POST /v1/agents/{id}/join-tokens (registrar), POST /v1/agents/{id}/attest
 * (the evidence is the authentication) and GET /v1/me (an identity
 * credential).
 */
int attest_routes(struct http_router *r, struct idpd_app *app) IDP_WUR;

/* The identity settings in force (copies of strings into caller storage); any thread. */
struct attest_identity_copy {
	char trust_domain[256];
	char issuer[513];
	char audience[513];
	int64_t leeway_ms;
};
void attest_identity_get(struct attest_identity_copy *out);

#endif /* IDPD_ATTEST_H */
