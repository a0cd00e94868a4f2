/*
 * introspect.c - POST /introspect (RFC 7662) and its verified-token cache.
 *
 * A token is active only if every check holds: its signature verifies with
 * a key of the keys module's verify set (ES256 pinned to the key), its typ
 * is an access token's (at+jwt) or a delegation token's
 * (idpd-delegation+jwt), iss is identity.issuer (and, for a delegation
 * token, aud is identity.audience), it is unexpired, its jti and every jti
 * on its chain are unrevoked, every agent on the chain and its subject are
 * active and were not revoked after their token was issued (the registry's
 * revocation epoch), and its task is open.  Anything else is exactly
 * {"active":false}.  When the revocation state or the registry cannot
 * answer, 503: never a guess.
 *
 * The cache.  Everything but the live checks is a function of the token's
 * bytes: the claims and, since a chain never changes once issued, the
 * whole active response.  So a token that verified once is kept, keyed by
 * the SHA-256 of the token, with its response already rendered; a later
 * request for it skips the signature (the key that signed it must still be
 * in the verify set) and runs every live check again.  Bounded: at most
 * introspection.cache_size entries in sets of CACHE_WAYS, an expired or the
 * oldest-placed entry of a set giving way.  Lock striping keeps threads
 * apart.  A delegation token's agent_version is the registry's at the time
 * of the request, so a cached response whose version is out of date is
 * rendered again.
 *
 * Threads: the handler runs inline on the I/O threads (it is CPU work over
 * memory); a check that would read PostgreSQL (a token or task the state
 * does not hold, a registry miss) hands the request to the handler pool.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/sha.h>

#include "idpd/audit_refusal.h"
#include "idpd/audit_writer.h"
#include "idpd/auth.h"
#include "idpd/b64.h"
#include "idpd/clock.h"
#include "idpd/delegation.h"
#include "idpd/http.h"
#include "idpd/jws.h"
#include "idpd/keys.h"
#include "idpd/log.h"
#include "idpd/metrics.h"
#include "idpd/registry.h"
#include "idpd/tasks.h"
#include "revocation_int.h"

#define CACHE_WAYS 4
#define CACHE_STRIPES 64

/* ---- operator keys, Bearer or Basic ---- */

/*
 * The credentials of "Authorization: Basic <h>" as RFC 6749 section 2.3.1
 * has them: base64 of the form-encoded client id, ':', the form-encoded
 * secret.  So the split is at the first ':' (an encoded one is "%3A"), and
 * a key named "svc:introspect" is sent as "svc%3Aintrospect".  The id is
 * optional; when given it must be the name of the key the secret is.
 * IDP_OK or IDP_EUNAUTH.  Every buffer that held the secret is wiped, on
 * every path.
 */
static int
basic_key(const char *h, struct auth_principal *out)
{
	unsigned char buf[512];
	char user[256], pass[256];
	size_t len = 0, n = strlen(h), ulen, plen;
	const unsigned char *colon;
	struct auth_keys *k;
	int rc = IDP_EUNAUTH;

	/* Trailing whitespace is not part of the field value (RFC 9110 5.5). */
	while (n > 0 && (h[n - 1] == ' ' || h[n - 1] == '\t'))
		n--;
	if (idp_b64_decode(h, n, buf, sizeof(buf), &len) != IDP_OK)
		goto done;
	colon = memchr(buf, ':', len);
	if (colon == NULL)
		goto done;
	/* Decoded text never holds a NUL or a control character. */
	if (http_form_decode((const char *)buf, (size_t)(colon - buf), user, sizeof(user), &ulen) !=
	        IDP_OK ||
	    http_form_decode((const char *)colon + 1, len - (size_t)(colon - buf) - 1, pass,
	                     sizeof(pass), &plen) != IDP_OK)
		goto done;
	k = auth_keys_current();
	rc = auth_check_key(k, pass, out);
	auth_keys_unref(k);
	if (rc == IDP_OK && ulen > 0 && strcmp(user, out->name) != 0)
		rc = IDP_EUNAUTH;
done:
	idp_wipe(buf, sizeof(buf));
	idp_wipe(user, sizeof(user));
	idp_wipe(pass, sizeof(pass));
	return rc == IDP_OK ? IDP_OK : IDP_EUNAUTH;
}

int
rev_operator_key(struct http_req *req, struct auth_principal *out)
{
	const char *h = http_req_header(req, "Authorization");
	const char *bearer = http_req_bearer(req);
	struct auth_keys *k;
	int rc = IDP_ENOTFOUND;

	if (bearer != NULL && strncmp(bearer, AUTH_KEY_PREFIX, strlen(AUTH_KEY_PREFIX)) == 0) {
		k = auth_keys_current();
		rc = auth_check_key(k, bearer, out);
		auth_keys_unref(k);
		return rc == IDP_OK ? IDP_OK : IDP_EUNAUTH;
	}
	if (h != NULL && strncasecmp(h, "Basic ", 6) == 0) {
		h += 6;
		while (*h == ' ')
			h++;
		return basic_key(h, out);
	}
	return rc;
}

/* ---- the cache ---- */

/* What a verified token says, its active response rendered.  Immutable. */
struct vc_entry {
	_Atomic int refs;
	uint8_t key[SHA256_DIGEST_LENGTH];
	bool access;
	int64_t iat_s, exp_s;
	char *kid;
	char *jti;
	char *sub;
	char *task_id;
	char *chain_jti;     /* the delegation token to walk from; NULL: the task alone */
	char *cred_jti;      /* the credential that asked for an access token, or NULL */
	char *agent_version; /* delegation tokens: the registry's when rendered, or NULL */
	char *aud;           /* the token's aud, its audiences separated by spaces */
	char *scope;         /* the token's scope claim */
	int top_class;       /* its highest action class (the verb map is restart-only) */
	bool low_s;          /* verified with tokens.require_low_s on: a high-S twin was refused */
	char *body;
	size_t body_len;
	size_t bytes;
};

static struct {
	size_t nsets;
	struct vc_entry **slots;                /* nsets * CACHE_WAYS */
	uint8_t *hand;                          /* per set: the way to evict next */
	pthread_mutex_t stripes[CACHE_STRIPES]; /* introspection.cache_lock: set % CACHE_STRIPES */
	_Atomic size_t entries, bytes;
} cache;

static struct {
	_Atomic uint64_t active, inactive, unavailable, hits, misses, deferred;
} stats;

/* Reasons an inactive answer is counted under; anything else is "other". */
static const char *const inactive_reasons[] = {
    "malformed",
    "bad_signature",
    "alg_not_allowed",
    "typ_mismatch",
    "kid_unknown",
    "expired",
    "claims_invalid",
    "issuer_mismatch",
    "audience_mismatch",
    "token_revoked",
    "token_unknown",
    "token_expired",
    "task_mismatch",
    "task_not_open",
    "chain_mismatch",
    "agent_unknown",
    "agent_not_active",
    "agent_revoked",
    "audience_not_allowed",
    "scope_outside_chain_capabilities",
    "chain_delegate_not_allowed",
    "scope_exceeds_max_per_delegation",
    "credential_revoked",
    "other",
};
static _Atomic uint64_t inactive_counts[IDP_ARRAY_LEN(inactive_reasons)];

static void
count_inactive(const char *reason)
{
	size_t n = IDP_ARRAY_LEN(inactive_reasons);

	for (size_t i = 0; i < n; i++) {
		if (i == n - 1 || strcmp(inactive_reasons[i], reason) == 0) {
			atomic_fetch_add_explicit(&inactive_counts[i], 1, memory_order_relaxed);
			return;
		}
	}
}

static void
vc_unref(struct vc_entry *e)
{
	if (e == NULL || atomic_fetch_sub_explicit(&e->refs, 1, memory_order_acq_rel) != 1)
		return;
	free(e->kid);
	free(e->jti);
	free(e->sub);
	free(e->task_id);
	free(e->chain_jti);
	free(e->cred_jti);
	free(e->agent_version);
	free(e->aud);
	free(e->scope);
	free(e->body);
	free(e);
}

static size_t
vc_set(const uint8_t key[SHA256_DIGEST_LENGTH])
{
	uint64_t h;

	memcpy(&h, key, sizeof(h));
	return (size_t)(h % cache.nsets);
}

/* The entry for key with a new reference, or NULL. */
static struct vc_entry *
vc_get(const uint8_t key[SHA256_DIGEST_LENGTH])
{
	size_t set, i;
	struct vc_entry *e = NULL;

	if (cache.nsets == 0)
		return NULL;
	set = vc_set(key);
	pthread_mutex_lock(&cache.stripes[set % CACHE_STRIPES]);
	for (i = set * CACHE_WAYS; i < (set + 1) * CACHE_WAYS; i++) {
		if (cache.slots[i] != NULL &&
		    memcmp(cache.slots[i]->key, key, sizeof(e->key)) == 0) {
			e = cache.slots[i];
			atomic_fetch_add_explicit(&e->refs, 1, memory_order_relaxed);
			break;
		}
	}
	pthread_mutex_unlock(&cache.stripes[set % CACHE_STRIPES]);
	return e;
}

/* Keep e (a new reference is taken), replacing its key's entry, an expired one, or the oldest. */
static void
vc_put(struct vc_entry *e, int64_t now)
{
	struct vc_entry *old = NULL;
	size_t set, base, pick = SIZE_MAX;

	if (cache.nsets == 0)
		return;
	set = vc_set(e->key);
	base = set * CACHE_WAYS;
	atomic_fetch_add(&e->refs, 1);
	pthread_mutex_lock(&cache.stripes[set % CACHE_STRIPES]);
	for (size_t i = base; i < base + CACHE_WAYS && pick == SIZE_MAX; i++)
		if (cache.slots[i] != NULL &&
		    memcmp(cache.slots[i]->key, e->key, sizeof(e->key)) == 0)
			pick = i;
	for (size_t i = base; i < base + CACHE_WAYS && pick == SIZE_MAX; i++)
		if (cache.slots[i] == NULL || cache.slots[i]->exp_s <= now)
			pick = i;
	if (pick == SIZE_MAX) {
		pick = base + cache.hand[set];
		cache.hand[set] = (uint8_t)((cache.hand[set] + 1) % CACHE_WAYS);
	}
	old = cache.slots[pick];
	cache.slots[pick] = e;
	pthread_mutex_unlock(&cache.stripes[set % CACHE_STRIPES]);
	atomic_fetch_add(&cache.bytes, e->bytes);
	if (old != NULL)
		atomic_fetch_sub(&cache.bytes, old->bytes);
	else
		atomic_fetch_add(&cache.entries, 1);
	vc_unref(old);
}

/* ---- the checks ---- */

/* Whether a has every scope of the space-separated list scopes (NULL: no list). */
static bool
agent_has_scopes(const struct registry_agent *a, const char *scopes)
{
	char one[IDP_SCOPE_MAX_LEN + 1];
	const char *w;
	size_t n;

	while (scopes != NULL && (w = idp_word_next(&scopes, &n)) != NULL) {
		if (n > IDP_SCOPE_MAX_LEN)
			return false;
		memcpy(one, w, n);
		one[n] = '\0';
		if (!registry_agent_can(a, one))
			return false;
	}
	return true;
}

/*
 * One agent of the chain: known, active, not revoked at or after iat_s,
 * and still capable of every scope of the token (an agent's authority is
 * the least of its delegators' as they are now: see docs/tokens.md).
 */
static int
agent_ok(const char *id, int64_t iat_s, const char *scopes, bool may_block,
         const struct registry_agent **out, const char **reason)
{
	const struct registry_agent *a = NULL;
	int rc;

	if (out != NULL)
		*out = NULL;
	rc = registry_lookup(id, may_block, &a);
	if (rc == IDP_EWOULDBLOCK)
		return REV_WOULD_BLOCK;
	if (rc == IDP_ENOTFOUND || rc == IDP_EINVAL) {
		*reason = "agent_unknown";
		return IDP_EFORBIDDEN;
	}
	if (rc != IDP_OK)
		return IDP_EUNAVAIL;
	if (a->status != REGISTRY_ACTIVE) {
		*reason = "agent_not_active";
		rc = IDP_EFORBIDDEN;
	} else if (registry_issued_before_revocation(a, iat_s)) {
		*reason = "agent_revoked";
		rc = IDP_EFORBIDDEN;
	} else if (!agent_has_scopes(a, scopes)) {
		*reason = "scope_outside_chain_capabilities";
		rc = IDP_EFORBIDDEN;
	}
	if (rc == IDP_OK && out != NULL)
		*out = a;
	else
		registry_agent_unref(a);
	return rc;
}

/* The highest action class of the space-separated scopes (admin for one too long to be a scope). */
static enum idp_action_class
scopes_top_class(const char *scopes)
{
	const struct scope_verb_map *vm = scope_verb_map_current();
	enum idp_action_class top = IDP_ACTION_READ;
	char one[IDP_SCOPE_MAX_LEN + 1];
	const char *w;
	size_t n;

	while (scopes != NULL && (w = idp_word_next(&scopes, &n)) != NULL) {
		enum idp_action_class k;

		if (n > IDP_SCOPE_MAX_LEN)
			return IDP_ACTION_ADMIN;
		memcpy(one, w, n);
		one[n] = '\0';
		k = scope_action_class(vm, one);
		if (k > top)
			top = k;
	}
	return top;
}

/*
 * The link from delegator `from` to `to` as from's constraints are now: to
 * in from's delegate_to, and the token's scopes (highest class computed
 * once into *top, -1 until needed) within from's max_scope_per_delegation.
 * IDP_OK, or IDP_EFORBIDDEN with *reason the code a new delegation gets.
 */
static int
link_ok(const struct registry_agent *from, const struct registry_agent *to, const char *scopes,
        int *top, const char **reason)
{
	if (!delegation_may_delegate_to(from, to)) {
		*reason = "chain_delegate_not_allowed";
		return IDP_EFORBIDDEN;
	}
	if (from->max_scope_per_delegation >= IDP_ACTION_ADMIN)
		return IDP_OK;
	if (*top < 0)
		*top = (int)scopes_top_class(scopes);
	if (*top > (int)from->max_scope_per_delegation) {
		*reason = "scope_exceeds_max_per_delegation";
		return IDP_EFORBIDDEN;
	}
	return IDP_OK;
}

/* What the live checks need to know of a token. */
struct tok {
	bool access;
	const char *jti, *sub, *task_id, *chain_jti;
	const char *cred_jti; /* an access token's identity_jti; NULL in tokens older than it */
	const char *scope;    /* the scope claim */
	int64_t iat_s, exp_s;
	int top_class; /* scope's highest action class, or -1: computed when needed */
	/* Each chain agent must still hold the scopes: false only for an
	 * agent reporting what it did (revocation_introspect_access). */
	bool caps;
};

/*
 * Every check that depends on the moment: expiry, revocation of the token
 * and its chain, the task, the agents.  IDP_OK with *v (release it) and
 * *sub_agent (unref it); IDP_EFORBIDDEN with *reason; IDP_EUNAVAIL;
 * REV_WOULD_BLOCK when !may_block and PostgreSQL would be read.
 */
static int
live_checks(const struct tok *t, int64_t now, bool may_block, struct rev_view *v,
            const struct registry_agent **sub_agent, const char **reason)
{
	int rc;

	*sub_agent = NULL;
	memset(v, 0, sizeof(*v));
	if (t->exp_s <= now) {
		*reason = "expired";
		return IDP_EFORBIDDEN;
	}
	if (t->access) {
		rc = revocation_check_jti(t->jti);
		if (rc == IDP_EFORBIDDEN)
			*reason = "token_revoked";
		if (rc != IDP_OK)
			return rc;
	}
	if (t->cred_jti != NULL) {
		rc = revocation_check_jti(t->cred_jti);
		if (rc == IDP_EFORBIDDEN)
			*reason = "credential_revoked";
		if (rc != IDP_OK)
			return rc;
	}
	if (t->chain_jti != NULL)
		rc = rev_view_delegation(t->chain_jti, t->task_id, now, may_block, v, reason);
	else
		rc = rev_view_task(t->task_id, now, may_block, v, reason);
	if (rc != IDP_OK)
		return rc;
	/* The chain ends with the token's subject: the agent holding it. */
	if (v->n > 0 && strcmp(v->links[v->n - 1].agent_id, t->sub) != 0) {
		*reason = "chain_mismatch";
		rc = IDP_EFORBIDDEN;
	}
	/* Each link must still be one its delegator may make (delegate_to,
	 * max_scope_per_delegation), as capabilities must still hold. */
	{
		const struct registry_agent *prev = NULL, *cur = NULL;
		int top = t->top_class;

		for (size_t i = 0; rc == IDP_OK && i < v->n; i++) {
			rc = agent_ok(v->links[i].agent_id, v->links[i].iat_s,
			              t->caps ? t->scope : NULL, may_block, &cur, reason);
			if (rc == IDP_OK && prev != NULL && t->caps)
				rc = link_ok(prev, cur, t->scope, &top, reason);
			registry_agent_unref(prev);
			prev = rc == IDP_OK ? cur : NULL;
			if (rc != IDP_OK)
				registry_agent_unref(cur);
			cur = NULL;
		}
		registry_agent_unref(prev);
	}
	/* The subject is the chain's last agent, its scopes checked there. */
	if (rc == IDP_OK)
		rc = agent_ok(t->sub, t->iat_s, v->n > 0 || !t->caps ? NULL : t->scope, may_block,
		              sub_agent, reason);
	if (rc != IDP_OK)
		rev_view_release(v);
	return rc;
}

/* ---- the cold path: verify and render ---- */

static const char *
claim_str(const json_t *c, const char *name)
{
	return json_string_value(json_object_get(c, name));
}

/* aud (a string or an array of strings, aud_ok) as one string, its audiences separated by spaces.
 */
static char *
aud_list(const json_t *aud)
{
	struct idp_buf b;
	const json_t *v;
	size_t i;

	if (json_is_string(aud))
		return idp_xstrdup(json_string_value(aud));
	idp_buf_init(&b, 0);
	json_array_foreach(aud, i, v)
	{
		if ((i > 0 && idp_buf_puts(&b, " ") != IDP_OK) ||
		    idp_buf_puts(&b, json_string_value(v)) != IDP_OK)
			break;
	}
	return b.data != NULL ? b.data : idp_xstrdup("");
}

static bool
aud_ok(const json_t *aud)
{
	size_t i;
	const json_t *e;

	if (json_is_string(aud))
		return json_string_length(aud) > 0;
	if (!json_is_array(aud) || json_array_size(aud) == 0)
		return false;
	json_array_foreach(aud, i, e)
	{
		if (!json_is_string(e))
			return false;
	}
	return true;
}

/*
 * Verify token and check its claims (not yet its state): IDP_OK with *out
 * filled (the caller cleans it up) and *access set; IDP_EFORBIDDEN with
 * *reason; IDP_EUNAVAIL when no key set is loaded or the keys cannot be
 * read; REV_WOULD_BLOCK when !may_block and the keys would be read.
 */
static int
verify(const char *token, const char *hint, int64_t now, bool may_block, bool low_s,
       struct idp_jws_verified *out, bool *access, const char **reason)
{
	const struct rev_identity *id = rev_identity();
	bool deleg_first = hint != NULL && strcmp(hint, "delegation_token") == 0;
	const struct idp_jws_verify_opts opts[2] = {
	    {.typ = deleg_first ? TASK_TOKEN_TYP : ACCESS_TOKEN_TYP, .low_s = low_s},
	    {.typ = deleg_first ? ACCESS_TOKEN_TYP : TASK_TOKEN_TYP, .low_s = low_s}};
	enum idp_jws_reason why = IDP_JWS_OK;
	struct idp_clock fixed;
	const json_t *c;
	size_t which = 0;
	int rc;

	/* A kid unknown here may be a key another instance activated a moment
	 * ago: keys_verify_own reads the keys once before calling it unknown. */
	rc = keys_verify_own(keys_process(), token, strlen(token), opts, 2, may_block, out, &which,
	                     &why);
	if (rc == IDP_EWOULDBLOCK)
		return REV_WOULD_BLOCK;
	if (rc == IDP_EUNAVAIL)
		return IDP_EUNAVAIL;
	if (rc != IDP_OK) {
		switch (why) {
		case IDP_JWS_BAD_SIGNATURE:
		case IDP_JWS_BAD_SIGNATURE_FORMAT:
			*reason = "bad_signature";
			break;
		case IDP_JWS_ALG_NOT_ALLOWED:
		case IDP_JWS_ALG_MISSING:
		case IDP_JWS_ALG_KEY_MISMATCH:
			*reason = "alg_not_allowed";
			break;
		case IDP_JWS_TYP_MISMATCH:
			*reason = "typ_mismatch";
			break;
		case IDP_JWS_KID_UNKNOWN:
		case IDP_JWS_KID_MISSING:
			*reason = "kid_unknown";
			break;
		default:
			*reason = "malformed";
		}
		return IDP_EFORBIDDEN;
	}
	*access = strcmp(opts[which].typ, ACCESS_TOKEN_TYP) == 0;
	c = out->claims;
	idp_clock_fixed(&fixed, now * 1000);
	/* The leeway is for an iat (or nbf) from a clock running ahead; exp is
	 * checked without it below and again on every request. */
	if (idp_jwt_check_time(c, &fixed, rev_leeway_s(), IDP_JWT_REQUIRE_EXP | IDP_JWT_REQUIRE_IAT,
	                       &why) != IDP_OK) {
		*reason = why == IDP_JWS_EXPIRED ? "expired" : "claims_invalid";
		goto refused;
	}
	if (!json_is_integer(json_object_get(c, "exp")) ||
	    !json_is_integer(json_object_get(c, "iat"))) {
		*reason = "claims_invalid";
		goto refused;
	}
	if (json_integer_value(json_object_get(c, "exp")) <= now) {
		*reason = "expired";
		goto refused;
	}
	if (claim_str(c, "iss") == NULL || strcmp(claim_str(c, "iss"), id->issuer) != 0) {
		*reason = "issuer_mismatch";
		goto refused;
	}
	if (*access
	        ? !aud_ok(json_object_get(c, "aud"))
	        : (claim_str(c, "aud") == NULL || strcmp(claim_str(c, "aud"), id->audience) != 0)) {
		*reason = "audience_mismatch";
		goto refused;
	}
	if (!rev_jti_ok(claim_str(c, "jti")) || claim_str(c, "sub") == NULL ||
	    claim_str(c, "task_id") == NULL || claim_str(c, "scope") == NULL ||
	    (*access && json_object_get(c, ACCESS_CLAIM_DELEGATION_JTI) != NULL &&
	     claim_str(c, ACCESS_CLAIM_DELEGATION_JTI) == NULL) ||
	    (*access && json_object_get(c, ACCESS_CLAIM_IDENTITY_JTI) != NULL &&
	     claim_str(c, ACCESS_CLAIM_IDENTITY_JTI) == NULL) ||
	    (!*access && (!json_is_integer(json_object_get(c, "depth")) ||
	                  !json_is_object(json_object_get(c, "act"))))) {
		*reason = "claims_invalid";
		goto refused;
	}
	return IDP_OK;
refused:
	idp_jws_verified_cleanup(out);
	return IDP_EFORBIDDEN;
}

/* The active response for a verified token whose checks held. */
static char *
render(const json_t *c, bool access, const struct rev_view *v, const struct registry_agent *sub,
       size_t *len)
{
	json_t *r, *chain = json_array(), *x;
	const char *s;
	char *text;

	for (size_t i = 0; i < v->n; i++)
		json_array_append_new(chain,
		                      json_pack("{s:s,s:s,s:s,s:i}", "jti", v->links[i].jti,
		                                "agent", v->links[i].agent_id, "scope",
		                                v->links[i].scope, "depth", v->links[i].depth));
	r = json_pack("{s:b,s:s,s:s,s:s,s:O,s:s,s:O,s:O,s:s,s:s,s:s,s:s,s:s,s:o}", "active", 1,
	              "scope", claim_str(c, "scope"), "client_id",
	              access && claim_str(c, "client_id") != NULL ? claim_str(c, "client_id")
	                                                          : claim_str(c, "sub"),
	              "sub", claim_str(c, "sub"), "aud", json_object_get(c, "aud"), "iss",
	              claim_str(c, "iss"), "exp", json_object_get(c, "exp"), "iat",
	              json_object_get(c, "iat"), "jti", claim_str(c, "jti"), "token_type", "Bearer",
	              "token_use", access ? "access_token" : "delegation_token", "task_id",
	              claim_str(c, "task_id"), "human_principal", v->human, "delegation_chain",
	              chain);
	if (r == NULL)
		return NULL;
	s = access ? claim_str(c, "agent_type") : sub->agent_type;
	if (s != NULL)
		json_object_set_new(r, "agent_type", json_string(s));
	s = access ? claim_str(c, "agent_version") : sub->agent_version;
	if (s != NULL)
		json_object_set_new(r, "agent_version", json_string(s));
	x = json_object_get(c, "act");
	if (json_is_object(x))
		json_object_set(r, "act", x);
	s = claim_str(c, "delegation_chain_hash");
	if (s != NULL)
		json_object_set_new(r, "delegation_chain_hash", json_string(s));
	if (!access)
		json_object_set(r, "depth", json_object_get(c, "depth"));
	text = json_dumps(r, JSON_COMPACT);
	json_decref(r);
	if (text != NULL)
		*len = strlen(text);
	return text;
}

/*
 * The whole decision for a token the cache does not hold (or holds out of
 * date): verify, check, render, cache.  Same returns as live_checks, with
 * *out the entry to answer from on IDP_OK.
 */
static int
cold(const char *token, const uint8_t key[SHA256_DIGEST_LENGTH], const char *hint, int64_t now,
     bool may_block, bool caps, struct vc_entry **out, const char **reason)
{
	struct idp_jws_verified jv;
	const struct registry_agent *sub = NULL;
	struct rev_view v;
	struct tok t;
	struct vc_entry *e;
	const json_t *c;
	bool access = false, low_s = idp_jws_own_low_s(); /* read once: the entry says which */
	int rc;

	*out = NULL;
	rc = verify(token, hint, now, may_block, low_s, &jv, &access, reason);
	if (rc != IDP_OK)
		return rc;
	c = jv.claims;
	t = (struct tok){
	    .access = access,
	    .jti = claim_str(c, "jti"),
	    .sub = claim_str(c, "sub"),
	    .task_id = claim_str(c, "task_id"),
	    .chain_jti = access ? claim_str(c, ACCESS_CLAIM_DELEGATION_JTI) : claim_str(c, "jti"),
	    .cred_jti = access ? claim_str(c, ACCESS_CLAIM_IDENTITY_JTI) : NULL,
	    .scope = claim_str(c, "scope"),
	    .iat_s = (int64_t)json_integer_value(json_object_get(c, "iat")),
	    .exp_s = (int64_t)json_integer_value(json_object_get(c, "exp")),
	    .top_class = (int)scopes_top_class(claim_str(c, "scope")),
	    .caps = caps,
	};
	rc = live_checks(&t, now, may_block, &v, &sub, reason);
	if (rc != IDP_OK)
		goto done;
	/* The human the token names is the task's. */
	if (claim_str(c, "human_principal") == NULL ||
	    strcmp(claim_str(c, "human_principal"), v.human) != 0) {
		*reason = "chain_mismatch";
		rc = IDP_EFORBIDDEN;
		goto release;
	}
	e = idp_xcalloc(1, sizeof(*e));
	atomic_init(&e->refs, 1);
	memcpy(e->key, key, sizeof(e->key));
	e->access = access;
	e->iat_s = t.iat_s;
	e->exp_s = t.exp_s;
	e->kid = idp_xstrdup(jv.kid);
	e->jti = idp_xstrdup(t.jti);
	e->sub = idp_xstrdup(t.sub);
	e->task_id = idp_xstrdup(t.task_id);
	e->chain_jti = t.chain_jti != NULL ? idp_xstrdup(t.chain_jti) : NULL;
	e->cred_jti = t.cred_jti != NULL ? idp_xstrdup(t.cred_jti) : NULL;
	e->agent_version =
	    !access && sub->agent_version != NULL ? idp_xstrdup(sub->agent_version) : NULL;
	e->aud = aud_list(json_object_get(c, "aud"));
	e->scope = idp_xstrdup(t.scope);
	e->top_class = t.top_class;
	e->low_s = low_s;
	e->body = render(c, access, &v, sub, &e->body_len);
	if (e->body == NULL) {
		vc_unref(e);
		rc = IDP_EINTERNAL;
		goto release;
	}
	e->bytes =
	    sizeof(*e) + e->body_len + strlen(token) / 4 + strlen(e->aud) + strlen(e->scope) + 256;
	vc_put(e, now);
	*out = e;
release:
	rev_view_release(&v);
	registry_agent_unref(sub);
done:
	idp_jws_verified_cleanup(&jv);
	return rc;
}

static bool
same_str(const char *a, const char *b)
{
	return (a == NULL && b == NULL) || (a != NULL && b != NULL && strcmp(a, b) == 0);
}

/* Whether the key that signed e is still one idpd verifies with. */
static bool
kid_trusted(const char *kid)
{
	struct keys *km = keys_process();
	struct idp_jws_keyset *set = km != NULL ? keys_verify_set(km) : NULL;
	bool ok = set != NULL && idp_jws_keyset_find(set, kid) != NULL;

	idp_jws_keyset_unref(set);
	return ok;
}

/* The decision for token: IDP_OK with *out (unref it), or as live_checks. */
static int
decide(const char *token, const char *hint, int64_t now, bool may_block, bool caps,
       struct vc_entry **out, const char **reason)
{
	uint8_t key[SHA256_DIGEST_LENGTH];
	const struct registry_agent *sub = NULL;
	struct vc_entry *e;
	struct rev_view v;
	int rc;

	*out = NULL;
	if (idp_sha256(token, strlen(token), NULL, 0, key) != IDP_OK)
		return IDP_EUNAVAIL;
	e = vc_get(key);
	/* An entry verified before tokens.require_low_s was turned on may be a
	 * high-S twin: verified again, as if not cached. */
	if (e == NULL || !kid_trusted(e->kid) || (idp_jws_own_low_s() && !e->low_s)) {
		vc_unref(e);
		atomic_fetch_add_explicit(&stats.misses, 1, memory_order_relaxed);
		return cold(token, key, hint, now, may_block, caps, out, reason);
	}
	rc = live_checks(&(struct tok){.access = e->access,
	                               .jti = e->jti,
	                               .sub = e->sub,
	                               .task_id = e->task_id,
	                               .chain_jti = e->chain_jti,
	                               .cred_jti = e->cred_jti,
	                               .scope = e->scope,
	                               .iat_s = e->iat_s,
	                               .exp_s = e->exp_s,
	                               .top_class = e->top_class,
	                               .caps = caps},
	                 now, may_block, &v, &sub, reason);
	if (rc != IDP_OK) {
		vc_unref(e);
		return rc;
	}
	if (!e->access && !same_str(e->agent_version, sub->agent_version)) {
		/* The agent's record changed since the response was rendered. */
		rev_view_release(&v);
		registry_agent_unref(sub);
		vc_unref(e);
		atomic_fetch_add_explicit(&stats.misses, 1, memory_order_relaxed);
		return cold(token, key, hint, now, may_block, caps, out, reason);
	}
	rev_view_release(&v);
	registry_agent_unref(sub);
	atomic_fetch_add_explicit(&stats.hits, 1, memory_order_relaxed);
	*out = e;
	return IDP_OK;
}

int
revocation_introspect_access(const char *token, json_t **out)
{
	struct vc_entry *e = NULL;
	const char *reason = NULL;
	int64_t now = idp_now_ms(idp_clock_system()) / 1000;
	json_t *r;
	int rc;

	*out = NULL;
	if (token == NULL)
		return IDP_EUNAUTH;
	/* A report of what the agent did stands even once a capability on its
	 * chain was narrowed: the trail needs it, and the token still proves
	 * the agent (signature, expiry, revocation, task and agents checked). */
	rc = decide(token, "access_token", now, true, false, &e, &reason);
	if (rc == IDP_EUNAVAIL)
		return IDP_EUNAVAIL;
	if (rc != IDP_OK)
		return IDP_EUNAUTH;
	r = json_loadb(e->body, e->body_len, 0, NULL);
	vc_unref(e);
	if (r == NULL)
		return IDP_EUNAVAIL;
	if (!json_is_string(json_object_get(r, "token_use")) ||
	    strcmp(json_string_value(json_object_get(r, "token_use")), "access_token") != 0) {
		json_decref(r);
		return IDP_EUNAUTH;
	}
	*out = r;
	return IDP_OK;
}

/*
 * A token a resource server was shown and idpd found inactive is worth a
 * line in the audit log (a revoked token still in use, a forgery), but no
 * answer waits for it: it is queued without waiting (audit_emit_nowait), so
 * a flood of bad tokens can neither slow introspection nor fill the queue
 * for anyone else.  The token itself is never recorded.
 */
static void
audit_inactive(struct http_req *req, const struct auth_principal *op, const char *reason)
{
	audit_refused(req, AUDIT_ACTOR_OPERATOR, op->name, "introspect", reason);
}

/* ---- the endpoint ---- */

static void
introspect(struct http_req *req, void *ctx)
{
	struct auth_principal op;
	struct http_form form;
	struct idp_diag d;
	struct vc_entry *e = NULL;
	const char *token, *reason = "other";
	int64_t now;
	int rc;

	(void)ctx;
	rc = rev_operator_key(req, &op);
	if (rc != IDP_OK) {
		if (rc != IDP_ENOTFOUND)
			audit_refused(req, AUDIT_ACTOR_NONE, NULL, "introspect", "unknown_key");
		http_add_header(req, "WWW-Authenticate",
		                "Basic realm=\"idpd\", Bearer realm=\"idpd\"");
		http_reply_oauth_error(
		    req, 401, "invalid_client",
		    rc == IDP_ENOTFOUND ? "an API key is required (Authorization: Bearer or Basic)"
		                        : "the API key is not valid");
		return;
	}
	if ((op.roles & (IDPD_ROLE_INTROSPECTOR | IDPD_ROLE_ADMIN)) == 0) {
		http_reply_oauth_error(req, 403, "unauthorized_client",
		                       "this API key does not have the introspector role");
		return;
	}
	if (!http_req_is_form(req)) {
		http_reply_oauth_error(req, 415, "invalid_request",
		                       "the body must be application/x-www-form-urlencoded");
		return;
	}
	idp_diag_init(&d);
	if (http_req_form(req, &form, &d) != IDP_OK) {
		http_reply_oauth_error(req, 400, "invalid_request", idp_diag_str(&d));
		return;
	}
	/* http_form_get: a parameter without a value is an omitted one. */
	token = http_form_get(&form, "token");
	if (token == NULL) {
		http_reply_oauth_error(req, 400, "invalid_request", "token is required");
		return;
	}
	now = idp_now_ms(idp_clock_system()) / 1000;
	rc = decide(token, http_form_get(&form, "token_type_hint"), now, false, true, &e, &reason);
	if (rc == REV_WOULD_BLOCK) {
		if (http_req_defer(req)) {
			atomic_fetch_add_explicit(&stats.deferred, 1, memory_order_relaxed);
			return;
		}
		rc = decide(token, http_form_get(&form, "token_type_hint"), now, true, true, &e,
		            &reason);
	}
	/* A key bound to audiences sees only access tokens for them: a
	 * resource server learns nothing of another's tokens, nor of
	 * delegation tokens, which are not its to accept.  Those are refused
	 * by their kind, not by their audience: a key whose audiences happen
	 * to name identity.audience must not see them either. */
	if (rc == IDP_OK &&
	    (!auth_audience_allowed(&op, e->aud) || (op.audiences[0] != '\0' && !e->access))) {
		vc_unref(e);
		e = NULL;
		reason = "audience_not_allowed";
		rc = IDP_EFORBIDDEN;
	}
	switch (rc) {
	case IDP_OK:
		atomic_fetch_add_explicit(&stats.active, 1, memory_order_relaxed);
		http_reply_data(req, 200, "application/json", e->body, e->body_len);
		vc_unref(e);
		break;
	case IDP_EFORBIDDEN:
		atomic_fetch_add_explicit(&stats.inactive, 1, memory_order_relaxed);
		count_inactive(reason);
		audit_inactive(req, &op, reason);
		log_debug("introspect: inactive (%s), request %s", reason, http_req_id(req));
		http_reply_data(req, 200, "application/json", "{\"active\":false}", 16);
		break;
	case IDP_EUNAVAIL:
		atomic_fetch_add_explicit(&stats.unavailable, 1, memory_order_relaxed);
		http_reply_error(req, IDP_EUNAVAIL,
		                 "idpd cannot tell whether the token is active now");
		break;
	default:
		http_reply_error(req, IDP_EINTERNAL, "the token cannot be introspected");
	}
}

/* ---- metrics and lifecycle ---- */

static void
collect(struct idp_buf *out, void *ctx)
{
	int rc = 0;

	(void)ctx;
	rc |= idp_buf_printf(
	    out,
	    "# HELP idpd_introspection_total Introspection answers by result.\n"
	    "# TYPE idpd_introspection_total counter\n"
	    "idpd_introspection_total{result=\"active\"} %llu\n"
	    "idpd_introspection_total{result=\"inactive\"} %llu\n"
	    "idpd_introspection_total{result=\"unavailable\"} %llu\n"
	    "# HELP idpd_introspection_cache_total Verified-token cache lookups by result.\n"
	    "# TYPE idpd_introspection_cache_total counter\n"
	    "idpd_introspection_cache_total{result=\"hit\"} %llu\n"
	    "idpd_introspection_cache_total{result=\"miss\"} %llu\n"
	    "# HELP idpd_introspection_cache_entries Tokens in the verified-token cache.\n"
	    "# TYPE idpd_introspection_cache_entries gauge\nidpd_introspection_cache_entries %zu\n"
	    "# HELP idpd_introspection_cache_bytes Approximate memory of the cache.\n"
	    "# TYPE idpd_introspection_cache_bytes gauge\nidpd_introspection_cache_bytes %zu\n"
	    "# HELP idpd_introspection_deferred_total Requests handed to the handler pool "
	    "because a check had to read PostgreSQL.\n"
	    "# TYPE idpd_introspection_deferred_total counter\n"
	    "idpd_introspection_deferred_total %llu\n"
	    "# HELP idpd_introspection_inactive_total Inactive answers by reason.\n"
	    "# TYPE idpd_introspection_inactive_total counter\n",
	    (unsigned long long)atomic_load(&stats.active),
	    (unsigned long long)atomic_load(&stats.inactive),
	    (unsigned long long)atomic_load(&stats.unavailable),
	    (unsigned long long)atomic_load(&stats.hits),
	    (unsigned long long)atomic_load(&stats.misses), atomic_load(&cache.entries),
	    atomic_load(&cache.bytes), (unsigned long long)atomic_load(&stats.deferred));
	for (size_t i = 0; i < IDP_ARRAY_LEN(inactive_reasons); i++) {
		uint64_t v = atomic_load(&inactive_counts[i]);

		if (v != 0)
			rc |= idp_buf_printf(
			    out, "idpd_introspection_inactive_total{reason=\"%s\"} %llu\n",
			    inactive_reasons[i], (unsigned long long)v);
	}
	if (rc != 0)
		log_warn("metrics: introspection output truncated");
}

int
introspect_init(struct idpd_app *app, struct idp_diag *diag)
{
	int size = app->cfg->introspection.cache_size;

	(void)diag;
	memset(&cache, 0, sizeof(cache));
	if (size > 0) {
		cache.nsets = ((size_t)size + CACHE_WAYS - 1) / CACHE_WAYS;
		cache.slots = idp_xcalloc(cache.nsets * CACHE_WAYS, sizeof(*cache.slots));
		cache.hand = idp_xcalloc(cache.nsets, 1);
		for (size_t i = 0; i < CACHE_STRIPES; i++)
			pthread_mutex_init(&cache.stripes[i], NULL);
	}
	if (metrics_register(collect, NULL) != IDP_OK)
		log_warn("metrics: too many collectors; introspection metrics not exported");
	return IDP_OK;
}

void
introspect_shutdown(void)
{
	if (cache.nsets == 0)
		return;
	for (size_t i = 0; i < cache.nsets * CACHE_WAYS; i++)
		vc_unref(cache.slots[i]);
	for (size_t i = 0; i < CACHE_STRIPES; i++)
		pthread_mutex_destroy(&cache.stripes[i]);
	free(cache.slots);
	free(cache.hand);
	memset(&cache, 0, sizeof(cache));
}

int
introspect_routes(struct http_router *r)
{
	return http_router_add_ex(r, HTTP_POST, "/introspect", introspect, NULL, HTTP_ROUTE_INLINE);
}
