/*
 * attest.c - the attestation service and its endpoints:
 *
 *   POST /v1/agents/{id}/join-tokens   a one-time join token (registrar)
 *   POST /v1/agents/{id}/attest        evidence in, identity credential out
 *   GET  /v1/me                        the calling agent's own record
 *
 * The service's settings (identity.*, attestation.*, [[attestors]] with
 * their key sets) are one immutable snapshot behind attest.lock, taken with
 * a reference by each request.  A reload's check builds the new snapshot
 * from the attestors' JWKS files as the configuration loader read them, and
 * its apply swaps in that same snapshot; if any file fails, the reload is
 * refused and the old attestors stay.  An attestor with a jwks_uri holds a
 * remote whose keys the jwks thread fetches (jwks_remote.h): evidence under
 * a key it may not have fetched yet answers 503, never 401.  identity.* are
 * restart-only: a reload keeps them.
 *
 * Wrong evidence always gets the same 401, so a caller learns nothing about
 * which check failed; the precise reason goes into the
 * agent.attestation_failed audit event.
 */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "idpd/agent_auth.h"
#include "idpd/audit_refusal.h"
#include "idpd/app.h"
#include "idpd/auth.h"
#include "idpd/b64.h"
#include "idpd/clock.h"
#include "idpd/jwks_remote.h"
#include "idpd/log.h"
#include "idpd/maintenance.h"
#include "attest_int.h"

#define WRITE_ROLES IDPD_ROLE_REGISTRAR
#define GENERIC_401 "the evidence does not prove this agent's identity"
/* The largest agent JSON, as the registry renders it. */
#define AGENT_JSON_MAX (1u << 20)

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER; /* attest.lock: guards current */
static struct attest_conf *current;

/* ---- the settings snapshot ---- */

static void
conf_free(struct attest_conf *c)
{
	for (size_t i = 0; i < c->n_attestors; i++) {
		struct attestor *at = &c->attestors[i];

		free(at->name);
		free(at->issuer);
		free(at->audience);
		idp_jws_keyset_unref(at->keys);
		jwks_remote_unref(at->remote);
		attest_selector_map_free(at->map);
	}
	free(c->attestors);
	free(c->trust_domain);
	free(c->issuer);
	free(c->audience);
	free(c);
}

void
attest_conf_unref(struct attest_conf *c)
{
	if (c != NULL && atomic_fetch_sub_explicit(&c->refs, 1, memory_order_acq_rel) == 1)
		conf_free(c);
}

struct attest_conf *
attest_conf_current(void)
{
	struct attest_conf *c;

	pthread_mutex_lock(&lock);
	c = current;
	if (c != NULL)
		atomic_fetch_add_explicit(&c->refs, 1, memory_order_relaxed);
	pthread_mutex_unlock(&lock);
	return c;
}

/*
 * The key set of a jwks_file from the bytes the configuration loader read
 * (so that it is the set the reload's event hashed), or from the file
 * itself for a configuration not loaded from one.
 */
static int
keyset_load(const char *path, const struct idpd_file_bytes *b, struct idp_jws_keyset **out,
            struct idp_diag *diag)
{
	return idp_jws_keyset_from_read(path, b->data, b->len, b->error, out, diag);
}

/* An attestor's keys: its jwks_file's (keyset_load), or its jwks_uri's remote. */
static int
attestor_keys(const struct idpd_attestor_cfg *ac, struct attestor *at, struct idp_diag *diag)
{
	struct jwks_remote_opts o = {
	    .kind = "attestor",
	    .name = ac->name,
	    .uri = ac->jwks_uri,
	    .ca_file = ac->ca_file,
	    .refresh_ms = ac->jwks_refresh_ms,
	    .min_refresh_ms = ac->jwks_min_refresh_ms,
	    .max_stale_ms = ac->jwks_max_stale_ms,
	};

	if (ac->jwks_uri == NULL)
		return ac->jwks_file != NULL
		           ? keyset_load(ac->jwks_file, &ac->jwks, &at->keys, diag)
		           : IDP_EINVAL;
	return jwks_remote_new(&o, &at->remote, diag);
}

/*
 * A snapshot of cfg's attestation settings, with the identity strings of
 * keep (a reload) or of cfg (startup).  NULL with diag naming what failed.
 */
static struct attest_conf *
conf_build(const struct idpd_config *cfg, const struct attest_conf *keep, struct idp_diag *diag)
{
	struct attest_conf *c = idp_xcalloc(1, sizeof(*c));

	atomic_init(&c->refs, 1);
	c->trust_domain = idp_xstrdup(keep ? keep->trust_domain : cfg->identity.trust_domain);
	c->issuer = idp_xstrdup(keep ? keep->issuer : cfg->identity.issuer);
	c->audience = idp_xstrdup(keep ? keep->audience : cfg->identity.audience);
	c->leeway_ms = cfg->identity.leeway_ms;
	c->join_token_ttl_ms = cfg->attestation.join_token_ttl_ms;
	c->attestors = idp_xcalloc(cfg->n_attestors ? cfg->n_attestors : 1, sizeof(*c->attestors));
	for (size_t i = 0; i < cfg->n_attestors; i++) {
		const struct idpd_attestor_cfg *ac = &cfg->attestors[i];
		struct attestor *at = &c->attestors[c->n_attestors++];
		struct idp_diag d;

		at->name = idp_xstrdup(ac->name);
		at->issuer = idp_xstrdup(ac->issuer);
		at->audience = idp_xstrdup(ac->audience);
		at->max_token_age_ms = ac->max_token_age_ms;
		/* Config bit i is the i-th name of ["ES256", "RS256"]. */
		at->algs = (ac->algs & 1u ? IDP_JWS_ALLOW_ES256 : 0) |
		           (ac->algs & 2u ? IDP_JWS_ALLOW_RS256 : 0);
		if (at->algs == 0)
			at->algs = IDP_JWS_ALLOW_ES256 | IDP_JWS_ALLOW_RS256;
		idp_diag_init(&d);
		at->map = attest_selector_map_parse(ac->selectors, &d);
		if (at->map == NULL || attestor_keys(ac, at, &d) != IDP_OK) {
			idp_diag_add(diag, "attestor \"%s\" (%s): %s", ac->name,
			             ac->jwks_uri != NULL ? ac->jwks_uri : ac->jwks_file,
			             idp_diag_str(&d));
			conf_free(c);
			return NULL;
		}
		for (size_t j = 0; j + 1 < c->n_attestors; j++) {
			const char *p = attest_selector_maps_overlap(at->map, c->attestors[j].map);

			if (p != NULL) {
				idp_diag_add(
				    diag,
				    "attestors \"%s\" and \"%s\" both read selectors under "
				    "\"%s\": give each attestor prefixes of its own (e.g. "
				    "\"k8s-prod:ns\"), so an agent's selectors name the attestor "
				    "that must vouch for it",
				    c->attestors[j].name, ac->name, p);
				conf_free(c);
				return NULL;
			}
		}
	}
	return c;
}

/*
 * Put c's jwks_uri remotes in force (jwks_remote_publish: an attestor
 * already running keeps its remote and keys) and wait for the first fetch of
 * new ones, JWKS_REMOTE_START_WAIT_MS at most.  Before c is installed.  Main
 * thread.
 */
static void
publish_remotes(struct attest_conf *c)
{
	for (size_t i = 0; i < c->n_attestors; i++)
		if (c->attestors[i].remote != NULL)
			c->attestors[i].remote = jwks_remote_publish(c->attestors[i].remote);
	jwks_remote_wait_tried(JWKS_REMOTE_START_WAIT_MS);
}

static void
install(struct attest_conf *c)
{
	struct attest_conf *old;

	pthread_mutex_lock(&lock);
	old = current;
	current = c;
	pthread_mutex_unlock(&lock);
	attest_conf_unref(old);
}

/*
 * The reload's check: the snapshot of next, its key sets built from the
 * bytes its load read, its jwks_uri attestors' remotes made but not yet
 * fetched.
 */
static int
reload_prepare(struct idpd_app *app, const struct idpd_config *next, void **staged,
               struct idp_diag *diag)
{
	struct attest_conf *old = attest_conf_current(), *c;

	(void)app;
	c = conf_build(next, old, diag);
	attest_conf_unref(old);
	*staged = c;
	return c != NULL ? IDP_OK : IDP_EINVAL;
}

/* The reload's apply: exactly the snapshot the check built.  Cannot fail. */
static int
reload_commit(struct idpd_app *app, void *staged, struct idp_diag *diag)
{
	struct attest_conf *c = staged;

	(void)app;
	(void)diag;
	publish_remotes(c);
	install(c);
	log_info("attest: %zu attestor(s) loaded", c->n_attestors);
	return IDP_OK;
}

static void
reload_discard(void *staged)
{
	attest_conf_unref(staged);
}

static const struct app_reload_stage reload_stage = {reload_prepare, reload_commit, reload_discard};

/*
 * Cleanup job: join tokens that were spent or have expired, and records of
 * identity credentials that expired, both older than a day (kept that long
 * for investigations; the audit log keeps the story for good).  Bounded
 * batches, like every cleanup job.  The cutoff is PostgreSQL's now() less
 * the interval, as the timestamps it is compared with are PostgreSQL's:
 * this instance's clock may be off.
 */
#define ATTEST_KEEP_MS (24LL * 3600 * 1000)
#define ATTEST_CLEANUP_BATCH "10000"

static int
attest_cleanup(const struct maintenance_run *run, void *ctx, json_t *counts, struct idp_diag *diag)
{
	static struct store_stmt tokens = {
	    "cleanup_join_tokens",
	    "DELETE FROM agent_join_tokens WHERE id IN (SELECT id FROM agent_join_tokens "
	    "WHERE coalesce(used_at, expires_at) < now() - $1::bigint * interval '1 millisecond' "
	    "LIMIT $2::int)",
	    2, 0};
	static struct store_stmt creds = {
	    "cleanup_credentials",
	    "DELETE FROM agent_credentials WHERE jti IN (SELECT jti FROM agent_credentials "
	    "WHERE expires_at < now() - $1::bigint * interval '1 millisecond' LIMIT $2::int)",
	    2, 0};
	char keep[24];
	const char *params[2] = {keep, ATTEST_CLEANUP_BATCH};
	PGresult *r;
	int rc;

	(void)ctx;
	snprintf(keep, sizeof(keep), "%lld", (long long)ATTEST_KEEP_MS);
	rc = store_exec(run->conn, &tokens, params, &r);
	if (rc != IDP_OK) {
		idp_diag_add(diag, "deleting old join tokens: %s", idp_err_name(rc));
		return rc;
	}
	json_object_set_new(counts, "join_tokens_deleted",
	                    json_integer(strtoll(PQcmdTuples(r), NULL, 10)));
	PQclear(r);
	rc = store_exec(run->conn, &creds, params, &r);
	if (rc != IDP_OK) {
		idp_diag_add(diag, "deleting expired credential records: %s", idp_err_name(rc));
		return rc;
	}
	json_object_set_new(counts, "credentials_deleted",
	                    json_integer(strtoll(PQcmdTuples(r), NULL, 10)));
	PQclear(r);
	return IDP_OK;
}

int
attest_init(struct idpd_app *app, struct idp_diag *diag)
{
	struct attest_conf *c;

	if (jwks_remote_init() != IDP_OK) {
		idp_diag_add(diag, "attest: cannot register the jwks metrics or readiness check");
		return IDP_EINVAL;
	}
	c = conf_build(app->cfg, NULL, diag);
	if (c == NULL)
		return IDP_EINVAL;
	publish_remotes(c);
	install(c);
	agent_credential_cache_size((size_t)app->cfg->introspection.cache_size);
	if (app_on_reload_staged(&reload_stage) != IDP_OK) {
		idp_diag_add(diag, "attest: cannot register the reload hook");
		return IDP_EINVAL;
	}
	if (maintenance_register("attestation", attest_cleanup, NULL) != IDP_OK) {
		idp_diag_add(diag, "attest: cannot register the cleanup job");
		return IDP_EINVAL;
	}
	return IDP_OK;
}

void
attest_shutdown(void)
{
	install(NULL);
}

void
attest_identity_get(struct attest_identity_copy *out)
{
	struct attest_conf *c = attest_conf_current();

	memset(out, 0, sizeof(*out));
	if (c == NULL)
		return;
	snprintf(out->trust_domain, sizeof(out->trust_domain), "%s", c->trust_domain);
	snprintf(out->issuer, sizeof(out->issuer), "%s", c->issuer);
	snprintf(out->audience, sizeof(out->audience), "%s", c->audience);
	out->leeway_ms = c->leeway_ms;
	attest_conf_unref(c);
}

/* ---- POST /v1/agents/{id}/join-tokens ---- */

static void
join_tokens(struct http_req *req, void *ctx)
{
	struct auth_principal who;
	struct registry_actor actor;
	struct attest_conf *conf;
	const char *id = http_req_param(req, "id");
	char token[ATTEST_JOIN_TOKEN_LEN + 1], hash[65], exp[32];
	int64_t token_id = 0, expires_ms = 0, retry_after_s = 0;
	int rc;

	(void)ctx;
	/* Nothing to choose: a "ttl" in a body or query would be ignored, and a
	 * token of the configured lifetime made anyway. */
	if (!auth_require(req, WRITE_ROLES, &who) || !http_req_query_only(req, NULL) ||
	    !http_req_no_body(req))
		return;
	if (!registry_id_valid(id)) {
		http_reply_problem(req, 404, "not_found", NULL, "no agent has this id");
		return;
	}
	conf = attest_conf_current();
	if (conf == NULL) {
		http_reply_error(req, IDP_EUNAVAIL, "attestation is not ready");
		return;
	}
	if (attest_join_token_new(token, hash) != IDP_OK) {
		attest_conf_unref(conf);
		http_reply_error(req, IDP_EINTERNAL, "cannot make a random token");
		return;
	}
	actor.name = who.name;
	actor.request_id = http_req_id(req);
	actor.source_address = http_req_peer(req);
	rc = attest_db_join_token_create(id, hash, conf->join_token_ttl_ms, &actor, &token_id,
	                                 &expires_ms, &retry_after_s);
	attest_conf_unref(conf);
	switch (rc) {
	case IDP_OK:
		idp_time_format(expires_ms, exp);
		http_add_header(req, "Cache-Control", "no-store");
		http_reply_json(req, 201,
		                json_pack("{s:s,s:s,s:I,s:s}", "join_token", token, "agent_id", id,
		                          "join_token_id", (json_int_t)token_id, "expires_at",
		                          exp));
		break;
	case IDP_ENOTFOUND:
		http_reply_problem(req, 404, "not_found", NULL, "no agent has the id \"%s\"", id);
		break;
	case IDP_ECONFLICT:
		http_reply_problem(req, 409, "conflict",
		                   json_pack("{s:s}", "agent_status", "decommissioned"),
		                   "a decommissioned agent cannot attest");
		break;
	default:
		if (rc == IDP_EUNAVAIL && retry_after_s > 0) {
			char ra[24];

			snprintf(ra, sizeof(ra), "%lld", (long long)retry_after_s);
			http_add_header(req, "Retry-After", ra);
			http_reply_problem(req, 503, "unavailable", NULL,
			                   "the agent was suspended moments ago; a join token made "
			                   "before its revocation epoch would be dead at birth");
			break;
		}
		http_reply_error(req, rc, "the join token could not be made");
		break;
	}
	idp_wipe(token, sizeof(token));
}

/* ---- POST /v1/agents/{id}/attest ---- */

/*
 * The kid of token's header, when the header decodes; the verification that
 * follows checks the header again, strictly.
 */
static bool
header_kid(const char *token, char kid[IDP_JWS_MAX_KID + 1])
{
	size_t n = strcspn(token, ".");
	unsigned char *raw = NULL;
	size_t len = 0;
	json_t *h;
	const char *k;
	bool ok = false;

	if (token[n] != '.' || idp_b64url_decode_alloc(token, n, &raw, &len) != IDP_OK)
		return false;
	h = json_loadb((const char *)raw, len, JSON_REJECT_DUPLICATES, NULL);
	free(raw);
	k = json_string_value(json_object_get(h, "kid"));
	if (k != NULL && strlen(k) <= IDP_JWS_MAX_KID) {
		snprintf(kid, IDP_JWS_MAX_KID + 1, "%s", k);
		ok = true;
	}
	json_decref(h);
	return ok;
}

/*
 * A NumericDate claim in milliseconds; false when absent.  Called after
 * idp_jwt_check_time, which refused a time claim that is not a number in
 * range.
 */
static bool
claim_ms(const json_t *claims, const char *name, int64_t *ms)
{
	const json_t *v = json_object_get(claims, name);

	if (json_is_integer(v)) {
		*ms = (int64_t)json_integer_value(v) * 1000;
		return true;
	}
	if (json_is_real(v)) {
		*ms = (int64_t)floor(json_real_value(v) * 1000.0);
		return true;
	}
	return false;
}

/*
 * Why a workload token lives too long to be evidence, or NULL: exp - iat
 * (or exp - nbf) must be at most max_ms.  A token made to last for years is
 * a standing credential, not evidence of a running workload; and a leaked
 * one could be replayed for as long as it lasts.  A token with neither iat
 * nor nbf does not say how long it was made to last: judged by what is
 * left of it, one made for years would pass in its last hour, so it is
 * refused.
 */
static const char *
token_age_refusal(const json_t *claims, int64_t max_ms, int64_t *exp_ms)
{
	int64_t start;

	if (!claim_ms(claims, "exp", exp_ms))
		return "token_lifetime_too_long";
	if (!claim_ms(claims, "iat", &start) && !claim_ms(claims, "nbf", &start))
		return "token_issue_time_missing";
	return *exp_ms - start <= max_ms ? NULL : "token_lifetime_too_long";
}

/*
 * The key set at verifies with: its file's, or the last good set of its
 * jwks_uri while usable (rv holds the reference; the caller releases it).
 * NULL for a remote without a usable set.
 */
static const struct idp_jws_keyset *
attestor_set(const struct attestor *at, struct jwks_remote_view *rv)
{
	memset(rv, 0, sizeof(*rv));
	if (at->remote == NULL)
		return at->keys;
	jwks_remote_view(at->remote, idp_clock_system(), rv);
	return rv->usable ? rv->keys : NULL;
}

/*
 * No attestor knew the token's kid.  If its (unverified) iss is a jwks_uri
 * attestor's, that attestor decides whether the kid is definitely unknown
 * or may be a key published since its set was fetched: then true, a fetch
 * asked for, *reason and *retry_after_s set (jwks_remote_kid_unknown).
 * stale: an attestor whose set, too old to use, holds the kid.
 */
static bool
kid_may_come(const struct attest_conf *conf, const struct attestor *stale, const char *token,
             const char **reason, int64_t *retry_after_s)
{
	char iss[600];
	int64_t iat_ms;
	int ra = 0;

	if (stale != NULL) {
		jwks_remote_want(stale->remote);
		*reason = "jwks_stale";
		*retry_after_s = 1;
		return true;
	}
	jwks_token_iss_iat(token, strlen(token), iss, sizeof(iss), &iat_ms);
	for (size_t i = 0; i < conf->n_attestors && iss[0] != '\0'; i++) {
		const struct attestor *at = &conf->attestors[i];

		if (at->remote != NULL && strcmp(at->issuer, iss) == 0 &&
		    jwks_remote_kid_unknown(at->remote, idp_clock_system(), iat_ms, reason, &ra) ==
		        IDP_EUNAVAIL) {
			*retry_after_s = ra;
			return true;
		}
	}
	return false;
}

/*
 * Find the attestor that vouches for token: its signature verifies with the
 * attestor's keys and algorithms, its iss, aud and time claims are the
 * attestor's, and it lives no longer than the attestor's max_token_age.  On
 * success *claims is the verified payload (caller decrefs), *exp_ms its
 * exp, and the attestor is returned; otherwise NULL with *reason the most
 * specific failure (that of an attestor that knew the token's kid), and
 * *retry_after_s > 0 when no attestor knows the kid yet one fetching its
 * keys from a jwks_uri may (answer 503: kid_may_come).
 */
static const struct attestor *
find_attestor(const struct attest_conf *conf, const char *token, json_t **claims, int64_t *exp_ms,
              const char **reason, int64_t *retry_after_s)
{
	/* A failure after the signature verified says more than one before,
	 * which says more than an unknown kid. */
	int rank = 0;
	char kid[IDP_JWS_MAX_KID + 1];
	bool have_kid = header_kid(token, kid);
	const struct attestor *stale = NULL;

	*claims = NULL;
	*exp_ms = 0;
	*reason =
	    conf->n_attestors == 0 ? "no_attestors" : idp_jws_reason_name(IDP_JWS_KID_UNKNOWN);
	for (size_t i = 0; i < conf->n_attestors; i++) {
		const struct attestor *at = &conf->attestors[i];
		struct idp_jws_verify_opts opts = {.typ = NULL, .algs = at->algs};
		struct idp_jws_verified v = {0};
		enum idp_jws_reason jr = IDP_JWS_OK;
		struct jwks_remote_view rv;
		const struct idp_jws_keyset *keys = attestor_set(at, &rv);
		const char *iss, *why;
		bool verified;

		if (keys == NULL && have_kid && rv.keys != NULL &&
		    idp_jws_keyset_find(rv.keys, kid) != NULL && stale == NULL)
			stale = at;
		/* Only the attestors that know the key are asked. */
		if (keys == NULL || (have_kid && idp_jws_keyset_find(keys, kid) == NULL)) {
			jwks_remote_view_cleanup(&rv);
			continue;
		}
		verified = idp_jws_verify(keys, token, strlen(token), &opts, &v, &jr) == IDP_OK;
		jwks_remote_view_cleanup(&rv);
		if (!verified) {
			if (jr != IDP_JWS_KID_UNKNOWN && rank < 1) {
				*reason = idp_jws_reason_name(jr);
				rank = 1;
			}
			continue;
		}
		iss = json_string_value(json_object_get(v.claims, "iss"));
		if (idp_jwt_check_time(v.claims, idp_clock_system(), conf->leeway_ms / 1000,
		                       IDP_JWT_REQUIRE_EXP, &jr) != IDP_OK)
			why = idp_jws_reason_name(jr);
		else if (iss == NULL || strcmp(iss, at->issuer) != 0)
			why = "issuer_mismatch";
		else if (!attest_audience_holds(json_object_get(v.claims, "aud"), at->audience))
			why = "audience_mismatch";
		else if ((why = token_age_refusal(v.claims, at->max_token_age_ms, exp_ms)) ==
		         NULL) {
			*claims = json_incref(v.claims);
			idp_jws_verified_cleanup(&v);
			*reason = NULL;
			return at;
		}
		if (rank < 2) {
			*reason = why;
			rank = 2;
		}
		idp_jws_verified_cleanup(&v);
	}
	/* A token without a kid can never verify (kid_missing): 401, whatever
	 * the attestors' sets. */
	if (rank == 0 && have_kid)
		(void)kid_may_come(conf, stale, token, reason, retry_after_s);
	return NULL;
}

/*
 * Read {"method": ..., "join_token"|"token": ...}.  false after answering
 * 400 for a body that is not one of the two shapes.
 */
static bool
read_evidence(struct http_req *req, json_t *body, const char **method, const char **evidence)
{
	const char *k, *want;
	json_t *v;

	*method = json_string_value(json_object_get(body, "method"));
	if (*method == NULL ||
	    (strcmp(*method, "join_token") != 0 && strcmp(*method, "jwt") != 0)) {
		http_reply_problem(req, 400, "bad_request", NULL,
		                   "method must be \"join_token\" or \"jwt\"");
		return false;
	}
	want = strcmp(*method, "jwt") == 0 ? "token" : "join_token";
	json_object_foreach(body, k, v)
	{
		if (strcmp(k, "method") != 0 && strcmp(k, want) != 0) {
			http_reply_problem(req, 400, "bad_request", NULL,
			                   "unknown field \"%.64s\" for method %s", k, *method);
			return false;
		}
	}
	v = json_object_get(body, want);
	*evidence = json_string_value(v);
	if (*evidence == NULL || strlen(*evidence) != json_string_length(v) ||
	    json_string_length(v) == 0 || json_string_length(v) > IDP_JWS_MAX_TOKEN) {
		http_reply_problem(req, 400, "bad_request", NULL,
		                   "%s must be a non-empty string of at most %d bytes", want,
		                   IDP_JWS_MAX_TOKEN);
		return false;
	}
	return true;
}

/* The body's method when it is "join_token" or "jwt", else NULL. */
static const char *
method_known(const json_t *body)
{
	const char *m = json_string_value(json_object_get(body, "method"));

	if (m != NULL && (strcmp(m, "join_token") == 0 || strcmp(m, "jwt") == 0))
		return m;
	return NULL;
}

/*
 * agent.attestation_failed, queued without waiting: the attempt changed
 * nothing and anyone who reaches idpd can make one, so a flood of bogus
 * evidence must not hold a worker per attempt for an audit commit.  When
 * the queue is full the event is dropped and counted (refused, in
 * /metrics); the answer is the same either way.
 */
static void
record_failure(struct http_req *req, const char *id, const struct attest_attempt *at,
               const char *attestor, int rc)
{
	enum audit_outcome o = rc == IDP_EUNAVAIL ? AUDIT_OUTCOME_ERROR : AUDIT_OUTCOME_DENIED;

	if (attest_emit_nowait(
	        AUDIT_AGENT_ATTESTATION_FAILED, o, NULL, registry_id_valid(id) ? id : NULL,
	        AUDIT_ACTOR_NONE, NULL, http_req_id(req), http_req_peer(req), NULL,
	        json_pack("{s:s?,s:s?,s:s,s:s?}", "method", at->method, "attestor", attestor,
	                  "reason", at->reason ? at->reason : "unavailable", "selector",
	                  at->failed_sel[0] != '\0' ? at->failed_sel : NULL)) != IDP_OK)
		log_debug("attest: the failed attestation of %s was not queued for the audit log",
		          registry_id_valid(id) ? id : "(malformed id)");
}

static void
attest(struct http_req *req, void *ctx)
{
	struct attest_attempt at = {0};
	struct attest_conf *conf = NULL;
	const struct attestor *who = NULL;
	const char *id = http_req_param(req, "id"), *method, *evidence;
	char hash[65], jti[ATTEST_JTI_LEN + 1], spiffe[ATTEST_SPIFFE_ID_MAX], exp[32];
	char *credential = NULL;
	json_t *body, *claims = NULL;
	int64_t exp_s = 0;
	int rc;

	(void)ctx;
	if (!http_req_query_only(req, NULL))
		return;
	body = http_req_json_object(req);
	if (body == NULL || !read_evidence(req, body, &method, &evidence)) {
		/* Answered (400/415); recorded as wrong evidence is, naming the
		 * method only when it is one of the two, never what was sent. */
		at.method = method_known(body);
		at.reason = "evidence_malformed";
		record_failure(req, id, &at, NULL, IDP_EUNAUTH);
		goto done;
	}
	conf = attest_conf_current();
	if (conf == NULL) {
		http_reply_error(req, IDP_EUNAVAIL, "attestation is not ready");
		goto done;
	}
	at.agent_id = id;
	at.method = method;
	at.request_id = http_req_id(req);
	at.source_address = http_req_peer(req);
	if (!registry_id_valid(id)) {
		at.reason = "unknown_agent";
		rc = IDP_EUNAUTH;
	} else if (strcmp(method, "join_token") == 0) {
		if (attest_join_token_hash(evidence, hash)) {
			at.join_hash = hash;
			rc = IDP_OK;
		} else {
			at.reason = "join_token_malformed";
			rc = IDP_EUNAUTH;
		}
	} else {
		who = find_attestor(conf, evidence, &claims, &at.evidence_exp_ms, &at.reason,
		                    &at.retry_after_s);
		at.at = who;
		at.claims = claims;
		rc = who != NULL ? IDP_OK : at.retry_after_s > 0 ? IDP_EUNAVAIL : IDP_EUNAUTH;
	}
	if (rc == IDP_OK)
		rc = attest_db_issue(conf, idp_clock_system(), &at, &credential, jti, &exp_s);
	if (rc != IDP_OK) {
		record_failure(req, id, &at, who != NULL ? who->name : NULL, rc);
		if (rc == IDP_EUNAUTH)
			http_reply_problem(req, 401, "unauthorized", NULL, GENERIC_401);
		else if (rc == IDP_EFORBIDDEN)
			http_reply_problem(req, 403, "forbidden",
			                   json_pack("{s:s}", "agent_status",
			                             strcmp(at.reason, "agent_suspended") == 0
			                                 ? "suspended"
			                                 : "decommissioned"),
			                   "the agent is not active and cannot attest");
		else if (at.retry_after_s > 0) {
			char ra[24];

			snprintf(ra, sizeof(ra), "%lld", (long long)at.retry_after_s);
			http_add_header(req, "Retry-After", ra);
			if (who == NULL)
				http_reply_problem(
				    req, 503, "unavailable", NULL,
				    "the attestor's keys are being fetched; try again");
			else
				http_reply_problem(
				    req, 503, "unavailable", NULL,
				    "the agent was resumed moments ago; a credential issued "
				    "before its revocation epoch would be born revoked");
		} else
			http_reply_error(req, rc, "the attestation could not be completed");
		goto done;
	}
	/* An attestation is activity too (the stale-agents job reads it). */
	registry_touch(id, idp_now_ms(idp_clock_system()));
	if (!attest_spiffe_id(conf->trust_domain, id, spiffe, sizeof(spiffe)))
		spiffe[0] = '\0';
	idp_time_format(exp_s * 1000, exp);
	http_add_header(req, "Cache-Control", "no-store");
	http_reply_json(req, 200,
	                json_pack("{s:s,s:s,s:s,s:s,s:s}", "credential", credential, "token_type",
	                          "Bearer", "expires_at", exp, "spiffe_id", spiffe, "jti", jti));
done:
	if (credential != NULL) {
		idp_wipe(credential, strlen(credential));
		free(credential);
	}
	json_decref(at.matched);
	json_decref(claims);
	json_decref(body);
	attest_conf_unref(conf);
}

/* ---- GET /v1/me ---- */

static void
me(struct http_req *req, void *ctx)
{
	struct agent_principal p;
	const char *why = NULL;
	struct idp_buf b;
	int rc;

	(void)ctx;
	rc = authenticate_agent(req, &p, &why);
	if (rc == IDP_EUNAUTH) {
		log_info("attest: agent authentication refused (%s), request %s", why,
		         http_req_id(req));
		if (http_req_bearer(req) != NULL)
			audit_refused(req, AUDIT_ACTOR_NONE, NULL, NULL, why);
		http_add_header(req, "WWW-Authenticate", "Bearer realm=\"idpd\"");
		http_reply_problem(req, 401, "unauthorized", NULL,
		                   "send a valid identity credential as a Bearer token");
		return;
	}
	if (rc != IDP_OK) {
		http_reply_error(req, rc, "agent authentication is not available now");
		return;
	}
	/* After authentication, as every endpoint checks: a stranger learns
	 * nothing about what the endpoint reads. */
	if (!http_req_query_only(req, NULL)) {
		agent_principal_cleanup(&p);
		return;
	}
	idp_buf_init(&b, AGENT_JSON_MAX);
	if (agent_render(p.agent, &b) != IDP_OK) {
		idp_buf_cleanup(&b);
		agent_principal_cleanup(&p);
		http_reply_error(req, IDP_EINTERNAL, "the agent record is too large to render");
		return;
	}
	http_reply_data(req, 200, "application/json", b.data, b.len);
	idp_buf_cleanup(&b);
	agent_principal_cleanup(&p);
}

int
attest_routes(struct http_router *r, struct idpd_app *app)
{
	int rc = 0;

	rc |= http_router_add(r, HTTP_POST, "/v1/agents/{id}/join-tokens", join_tokens, app);
	rc |= http_router_add(r, HTTP_POST, "/v1/agents/{id}/attest", attest, app);
	rc |= http_router_add(r, HTTP_GET, "/v1/me", me, app);
	return rc == 0 ? IDP_OK : IDP_EINVAL;
}
