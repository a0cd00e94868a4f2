/*
 * agent_auth.h - agents authenticate with the identity credential that
 * attestation gave them (attest.h), sent as "Authorization: Bearer <jwt>".
 *
 * A credential authenticates only if every one of these holds: its
 * signature verifies with a key of the keys module's verify set (ES256
 * pinned to the key), its typ is IDP_JWS_TYP_IDENTITY, its iss and aud are
 * this service's (identity.issuer, identity.audience), exp/nbf/iat are
 * within identity.leeway of the clock, its sub is
 * spiffe://<trust_domain>/agent/<id>, its jti is not revoked (the
 * revocation state, or PostgreSQL when the state cannot answer),
 * the agent is in the registry and active, and the credential was issued
 * after the agent's revocation epoch (a suspension or decommissioning cuts
 * every credential issued before it).
 */
#ifndef IDPD_AGENT_AUTH_H
#define IDPD_AGENT_AUTH_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "idpd/attest.h"
#include "idpd/common.h"

struct http_req;
struct idp_clock;
struct idp_jws_keyset;
struct registry_agent;

/* Who a credential names, after the cryptographic and claim checks. */
struct agent_credential {
	char agent_id[129];
	char jti[65];
	char kid[129];
	int64_t issued_at_s;
	int64_t expires_at_s;
};

/*
 * The stateless half of authentication: verify token (len bytes) with set
 * and check typ, iss, aud, time claims (leeway_ms) and the form of sub and
 * jti against id.  Fills *out and returns IDP_OK, or returns IDP_EUNAUTH
 * with *reason a stable code ("expired", "audience_mismatch", ...).
 * Either spelling of the ES256 signature is taken, whatever
 * tokens.require_low_s says: this is the check of a revocation, and both
 * spellings name the same jti.  Touches no global state; any thread.
 */
int agent_credential_verify(const struct idp_jws_keyset *set, const char *token, size_t len,
                            const struct attest_identity *id, int64_t leeway_ms,
                            const struct idp_clock *clock, struct agent_credential *out,
                            const char **reason) IDP_WUR;

/*
 * The same with the process's keys (keys_verify_own): a credential signed
 * with a key another instance activated a moment ago is found by reading
 * the keys.  Also IDP_EUNAVAIL (*reason "keys_unavailable") when idpd
 * cannot tell whether the credential's key is one of the deployment's (the
 * keys cannot be read, or their notifications are lost).  May wait on
 * PostgreSQL: a worker thread, not an I/O thread.
 */
int agent_credential_verify_own(const char *token, size_t len, const struct attest_identity *id,
                                int64_t leeway_ms, const struct idp_clock *clock,
                                struct agent_credential *out, const char **reason) IDP_WUR;

/* What authenticate_agent hands back; agent_principal_cleanup releases it. */
struct agent_principal {
	const struct registry_agent *agent; /* a reference to the current record */
	struct agent_credential cred;
};

/*
 * Authenticate req's bearer credential with the process's keys, identity
 * settings, credential records and registry.  Does not answer the request.
 * Returns IDP_OK with *out filled (the caller calls
 * agent_principal_cleanup); IDP_EUNAUTH for a missing or bad credential
 * (*reason, if not NULL, gets the precise code for logs and audit, never
 * for the client); IDP_EUNAVAIL when idpd cannot tell (no keys loaded,
 * PostgreSQL down): fail closed with 503.  A credential whose key this
 * instance has not loaded is looked up in PostgreSQL once (keys_verify_own)
 * before it is refused: another instance may have activated it a moment
 * ago.  Any worker thread; may wait on PostgreSQL for that read and for the
 * jti lookup.
 */
int authenticate_agent(struct http_req *req, struct agent_principal *out,
                       const char **reason) IDP_WUR;
/*
 * The same on a thread that must not wait (an HTTP I/O thread): where
 * PostgreSQL would be read (a key not loaded, an agent not cached, a
 * revocation state that cannot answer) it returns IDP_EWOULDBLOCK instead, having changed
 * nothing; the caller defers to the handler pool (http_req_defer).
 */
int authenticate_agent_nowait(struct http_req *req, struct agent_principal *out,
                              const char **reason) IDP_WUR;
/*
 * How many verified credentials authenticate_agent remembers, so that it
 * checks an agent's credential signature once, not on every request (0:
 * never).  Before the first authentication; main thread.
 */
void agent_credential_cache_size(size_t slots);
/* The same for a credential given otherwise (RFC 8693's actor_token); NULL is IDP_EUNAUTH. */
int authenticate_agent_token(const char *token, struct agent_principal *out,
                             const char **reason) IDP_WUR;
void agent_principal_cleanup(struct agent_principal *p);

#endif /* IDPD_AGENT_AUTH_H */
