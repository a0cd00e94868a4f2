/*
 * attest_credential.c - the agent identity credential: its claims, the
 * random values around it (jti, join tokens), and its verification, from
 * the stateless checks (agent_credential_verify) to authenticate_agent,
 * which adds the jti record and the registry.
 */
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include <openssl/rand.h>
#include <openssl/sha.h>

#include "idpd/agent_auth.h"
#include "idpd/b64.h"
#include "idpd/clock.h"
#include "idpd/http.h"
#include "idpd/jws.h"
#include "idpd/keys.h"
#include "idpd/log.h"
#include "idpd/registry.h"
#include "idpd/revocation.h"
#include "attest_int.h"

#define SPIFFE_AGENT_PATH "/agent/"

/* ---- random values ---- */

int
attest_jti_new(char out[ATTEST_JTI_LEN + 1])
{
	unsigned char r[16];

	/* An identifier, not a secret: the per-thread pool spares a CSPRNG call
	 * (and OpenSSL's global lock) per token; the bytes are the CSPRNG's. */
	if (idp_random_id_bytes(r, sizeof(r)) != IDP_OK)
		return IDP_EINTERNAL;
	idp_b64url_encode_to(r, sizeof(r), out);
	out[ATTEST_JTI_LEN] = '\0';
	return IDP_OK;
}

static void
hex_sha256(const char *s, size_t n, char hash[65])
{
	unsigned char h[SHA256_DIGEST_LENGTH];

	SHA256((const unsigned char *)s, n, h);
	for (size_t i = 0; i < sizeof(h); i++)
		snprintf(hash + 2 * i, 3, "%02x", h[i]);
}

int
attest_join_token_new(char token[ATTEST_JOIN_TOKEN_LEN + 1], char hash[65])
{
	unsigned char r[32];
	size_t p = sizeof(ATTEST_JOIN_TOKEN_PREFIX) - 1;

	if (RAND_bytes(r, sizeof(r)) != 1)
		return IDP_EINTERNAL;
	memcpy(token, ATTEST_JOIN_TOKEN_PREFIX, p);
	idp_b64url_encode_to(r, sizeof(r), token + p);
	token[ATTEST_JOIN_TOKEN_LEN] = '\0';
	idp_wipe(r, sizeof(r));
	hex_sha256(token, ATTEST_JOIN_TOKEN_LEN, hash);
	return IDP_OK;
}

bool
attest_join_token_hash(const char *token, char hash[65])
{
	size_t p = sizeof(ATTEST_JOIN_TOKEN_PREFIX) - 1;

	if (token == NULL || strlen(token) != ATTEST_JOIN_TOKEN_LEN ||
	    strncmp(token, ATTEST_JOIN_TOKEN_PREFIX, p) != 0)
		return false;
	for (const char *c = token + p; *c != '\0'; c++)
		if (!((*c >= 'A' && *c <= 'Z') || (*c >= 'a' && *c <= 'z') ||
		      (*c >= '0' && *c <= '9') || *c == '-' || *c == '_'))
			return false;
	hex_sha256(token, ATTEST_JOIN_TOKEN_LEN, hash);
	return true;
}

/* ---- claims ---- */

bool
attest_spiffe_id(const char *trust_domain, const char *agent_id, char *out, size_t len)
{
	int n = snprintf(out, len, "spiffe://%s" SPIFFE_AGENT_PATH "%s", trust_domain, agent_id);

	return n > 0 && (size_t)n < len;
}

static int64_t
floor_div(int64_t a, int64_t b)
{
	return a >= 0 ? a / b : -((-a + b - 1) / b);
}

json_t *
attest_credential_claims(const struct attest_identity *id, const char *agent_id, const char *jti,
                         int64_t now_ms, int64_t lifetime_ms, int64_t not_after_ms, int64_t max_ms)
{
	char sub[ATTEST_SPIFFE_ID_MAX];
	int64_t exp_ms = now_ms + lifetime_ms, iat, exp;

	if (not_after_ms > 0 && exp_ms > not_after_ms)
		exp_ms = not_after_ms;
	if (max_ms > 0 && exp_ms > now_ms + max_ms)
		exp_ms = now_ms + max_ms;
	/* Whole seconds, rounded towards the past on both ends: exp never
	 * passes the bound it was cut to. */
	iat = floor_div(now_ms, 1000);
	exp = floor_div(exp_ms, 1000);
	if (exp <= iat || !attest_spiffe_id(id->trust_domain, agent_id, sub, sizeof(sub)))
		return NULL;
	return json_pack("{s:s,s:s,s:s,s:I,s:I,s:I,s:s}", "iss", id->issuer, "sub", sub, "aud",
	                 id->audience, "iat", (json_int_t)iat, "nbf", (json_int_t)iat, "exp",
	                 (json_int_t)exp, "jti", jti);
}

/* ---- verification ---- */

static bool
jti_ok(const char *s)
{
	size_t n = strlen(s);

	if (n < 16 || n > 64)
		return false;
	for (; *s != '\0'; s++)
		if (!((*s >= 'A' && *s <= 'Z') || (*s >= 'a' && *s <= 'z') ||
		      (*s >= '0' && *s <= '9') || *s == '-' || *s == '_'))
			return false;
	return true;
}

/* aud as a string or an array of strings holding want (RFC 7519 4.1.3). */
bool
attest_audience_holds(const json_t *aud, const char *want)
{
	size_t i;
	const json_t *v;

	if (json_is_string(aud))
		return strcmp(json_string_value(aud), want) == 0;
	if (!json_is_array(aud))
		return false;
	json_array_foreach(aud, i, v)
	{
		if (json_is_string(v) && strcmp(json_string_value(v), want) == 0)
			return true;
	}
	return false;
}

/*
 * Credentials are presented on every request of an agent, so the signature
 * checks of authenticate_agent go through a verified-token cache: an
 * agent's credential is verified once per key and lifetime, then only its
 * claims, its revocation and its agent are checked (introspection.cache_size
 * entries; made on first use).
 */
static struct idp_jws_cache *cred_cache;
static pthread_once_t cred_cache_once = PTHREAD_ONCE_INIT;
static size_t cred_cache_slots = 65536;

static void
cred_cache_make(void)
{
	cred_cache = idp_jws_cache_new(cred_cache_slots);
}

void
agent_credential_cache_size(size_t slots)
{
	cred_cache_slots = slots;
}

/*
 * The claims of a credential whose signature verified (v): time (leeway_ms),
 * iss, aud, and the form of sub and jti.  IDP_OK with *out filled, or
 * IDP_EUNAUTH with *reason a stable code.
 */
static int
credential_claims(const struct idp_jws_verified *v, const struct attest_identity *id,
                  int64_t leeway_ms, const struct idp_clock *clock, struct agent_credential *out,
                  const char **reason)
{
	enum idp_jws_reason jr = IDP_JWS_OK;
	char prefix[ATTEST_SPIFFE_ID_MAX];
	const char *sub, *jti, *iss;
	size_t plen;
	int rc = IDP_EUNAUTH;

	memset(out, 0, sizeof(*out));
	if (idp_jwt_check_time(v->claims, clock, leeway_ms / 1000,
	                       IDP_JWT_REQUIRE_EXP | IDP_JWT_REQUIRE_IAT, &jr) != IDP_OK) {
		*reason = idp_jws_reason_name(jr);
		goto done;
	}
	iss = json_string_value(json_object_get(v->claims, "iss"));
	if (iss == NULL || strcmp(iss, id->issuer) != 0) {
		*reason = "issuer_mismatch";
		goto done;
	}
	if (!attest_audience_holds(json_object_get(v->claims, "aud"), id->audience)) {
		*reason = "audience_mismatch";
		goto done;
	}
	sub = json_string_value(json_object_get(v->claims, "sub"));
	if (!attest_spiffe_id(id->trust_domain, "", prefix, sizeof(prefix)) || sub == NULL ||
	    strncmp(sub, prefix, (plen = strlen(prefix))) != 0 || !registry_id_valid(sub + plen)) {
		*reason = "subject_invalid";
		goto done;
	}
	jti = json_string_value(json_object_get(v->claims, "jti"));
	if (jti == NULL || !jti_ok(jti)) {
		*reason = "jti_invalid";
		goto done;
	}
	snprintf(out->agent_id, sizeof(out->agent_id), "%s", sub + plen);
	snprintf(out->jti, sizeof(out->jti), "%s", jti);
	snprintf(out->kid, sizeof(out->kid), "%s", v->kid);
	out->issued_at_s = (int64_t)json_number_value(json_object_get(v->claims, "iat"));
	out->expires_at_s = (int64_t)json_number_value(json_object_get(v->claims, "exp"));
	*reason = NULL;
	rc = IDP_OK;
done:
	if (rc != IDP_OK)
		memset(out, 0, sizeof(*out));
	return rc;
}

/* What a credential's signature is verified with: its typ, ES256 only. */
static struct idp_jws_verify_opts
credential_opts(struct idp_jws_cache *cache, bool low_s)
{
	return (struct idp_jws_verify_opts){.typ = IDP_JWS_TYP_IDENTITY,
	                                    .algs = IDP_JWS_ALLOW_ES256,
	                                    .cache = cache,
	                                    .low_s = low_s};
}

int
agent_credential_verify(const struct idp_jws_keyset *set, const char *token, size_t len,
                        const struct attest_identity *id, int64_t leeway_ms,
                        const struct idp_clock *clock, struct agent_credential *out,
                        const char **reason)
{
	struct idp_jws_verify_opts opts = credential_opts(NULL, false);
	struct idp_jws_verified v = {0};
	enum idp_jws_reason jr = IDP_JWS_OK;
	int rc;

	memset(out, 0, sizeof(*out));
	if (idp_jws_verify(set, token, len, &opts, &v, &jr) != IDP_OK) {
		*reason = idp_jws_reason_name(jr);
		return IDP_EUNAUTH;
	}
	rc = credential_claims(&v, id, leeway_ms, clock, out, reason);
	idp_jws_verified_cleanup(&v);
	return rc;
}

/*
 * agent_credential_verify with km's keys through keys_verify_own: a
 * credential signed with a key another instance activated a moment ago is
 * found.  Also IDP_EUNAVAIL (*reason "keys_unavailable") when idpd cannot
 * tell whether the key is one of the deployment's, and IDP_EWOULDBLOCK
 * when !may_block and the keys would be read (*reason NULL).
 */
static int
credential_verify_own(struct keys *km, bool may_block, const char *token, size_t len,
                      const struct attest_identity *id, int64_t leeway_ms,
                      const struct idp_clock *clock, struct idp_jws_cache *cache, bool low_s,
                      struct agent_credential *out, const char **reason)
{
	struct idp_jws_verify_opts opts = credential_opts(cache, low_s);
	struct idp_jws_verified v;
	enum idp_jws_reason jr = IDP_JWS_OK;
	int rc;

	memset(out, 0, sizeof(*out));
	rc = keys_verify_own(km, token, len, &opts, 1, may_block, &v, NULL, &jr);
	if (rc == IDP_OK) {
		rc = credential_claims(&v, id, leeway_ms, clock, out, reason);
		idp_jws_verified_cleanup(&v);
		return rc;
	}
	if (rc == IDP_EWOULDBLOCK) {
		*reason = NULL;
		return IDP_EWOULDBLOCK;
	}
	if (rc == IDP_EUNAVAIL) {
		*reason = "keys_unavailable";
		return IDP_EUNAVAIL;
	}
	*reason = idp_jws_reason_name(jr);
	return IDP_EUNAUTH;
}

int
agent_credential_verify_own(const char *token, size_t len, const struct attest_identity *id,
                            int64_t leeway_ms, const struct idp_clock *clock,
                            struct agent_credential *out, const char **reason)
{
	return credential_verify_own(keys_process(), true, token, len, id, leeway_ms, clock, NULL,
	                             false, out, reason);
}

static int authenticate(const char *token, bool may_block, struct agent_principal *out,
                        const char **reason);

int
authenticate_agent(struct http_req *req, struct agent_principal *out, const char **reason)
{
	return authenticate(http_req_bearer(req), true, out, reason);
}

int
authenticate_agent_nowait(struct http_req *req, struct agent_principal *out, const char **reason)
{
	return authenticate(http_req_bearer(req), false, out, reason);
}

int
authenticate_agent_token(const char *token, struct agent_principal *out, const char **reason)
{
	return authenticate(token, true, out, reason);
}

static int
authenticate(const char *token, bool may_block, struct agent_principal *out, const char **reason)
{
	struct attest_conf *conf = attest_conf_current();
	struct keys *km = keys_process();
	const struct registry_agent *a = NULL;
	const char *why = NULL;
	struct attest_identity id;
	int rc;

	memset(out, 0, sizeof(*out));
	if (conf == NULL || km == NULL) {
		why = "not_ready";
		rc = IDP_EUNAVAIL;
		goto done;
	}
	if (token == NULL) {
		why = "no_credential";
		rc = IDP_EUNAUTH;
		goto done;
	}
	id.trust_domain = conf->trust_domain;
	id.issuer = conf->issuer;
	id.audience = conf->audience;
	pthread_once(&cred_cache_once, cred_cache_make);
	/* A key this instance has not heard of yet is read for (or, on an I/O
	 * thread, the request deferred first); one it cannot know about is 503. */
	rc = credential_verify_own(km, may_block, token, strlen(token), &id, conf->leeway_ms,
	                           idp_clock_system(), cred_cache, idp_jws_own_low_s(), &out->cred,
	                           &why);
	if (rc != IDP_OK)
		goto done;
	rc = registry_lookup(out->cred.agent_id, may_block, &a);
	if (rc == IDP_EWOULDBLOCK)
		goto done;
	if (rc == IDP_ENOTFOUND || rc == IDP_EINVAL) {
		why = "unknown_agent";
		rc = IDP_EUNAUTH;
		goto done;
	}
	if (rc != IDP_OK)
		goto done;
	/* The revocation epoch first: a credential from before a suspension is
	 * dead even after the agent is resumed. */
	if (registry_issued_before_revocation(a, out->cred.issued_at_s)) {
		why = "agent_revoked";
		rc = IDP_EUNAUTH;
		goto done;
	}
	if (a->status != REGISTRY_ACTIVE) {
		why = a->status == REGISTRY_SUSPENDED ? "agent_suspended" : "agent_decommissioned";
		rc = IDP_EUNAUTH;
		goto done;
	}
	/*
	 * A credential revoked one by one is in the revocation state (migration
	 * 0010 copies it there), so the check needs no query; when the state
	 * cannot answer, PostgreSQL does.
	 */
	rc = revocation_check_jti(out->cred.jti);
	if (rc == IDP_EFORBIDDEN) {
		why = "jti_revoked";
		rc = IDP_EUNAUTH;
		goto done;
	}
	if (rc != IDP_OK)
		rc = may_block ? attest_db_credential_check(out->cred.jti, out->cred.agent_id, &why)
		               : IDP_EWOULDBLOCK;
	if (rc != IDP_OK)
		goto done;
	out->agent = a;
	a = NULL;
done:
	registry_agent_unref(a);
	attest_conf_unref(conf);
	if (rc != IDP_OK) {
		if (rc == IDP_EUNAVAIL && why == NULL)
			why = "unavailable";
		if (rc == IDP_EWOULDBLOCK)
			why = NULL;
		memset(out, 0, sizeof(*out));
	}
	if (reason != NULL)
		*reason = why;
	return rc;
}

void
agent_principal_cleanup(struct agent_principal *p)
{
	registry_agent_unref(p->agent);
	memset(p, 0, sizeof(*p));
}
