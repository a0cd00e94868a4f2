/*
 * Integration tests of POST /introspect (RFC 7662) and POST /revoke (RFC
 * 7009) through idpd's HTTP API and a real PostgreSQL.
 *
 * The world: alice opens a task for planning-agent, which delegates to
 * cloud-agent (D1), which delegates to sub-agent (D2).  Access tokens are
 * minted here with idpd's own signing key, read from the database with the
 * test KEK, in the shape docs/tokens.md gives them (typ at+jwt, claim
 * delegation_jti naming the delegation token they were issued under); the
 * token endpoint is not needed to test what happens to them.
 *
 * Covered: the active answer and its chain (recomputed here with
 * task_chain_next), the exact inactive answer for expired, forged,
 * alg none / HS256, wrong typ, other-audience and other-issuer tokens,
 * revocation cascading to descendants and to access tokens, who may
 * revoke, a completed task, an agent decommissioned or suspended mid-task,
 * bad caller authentication and bad bodies, the cleanup job, two
 * instances on one database (revoked on one, inactive on the other within
 * a second; the delay is printed), and PostgreSQL stopped (503 past
 * revocation.max_staleness, correct answers again after the restart).
 */
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>
#include <libpq-fe.h>

#include "idpd/attest.h"
#include "idpd/auth.h"
#include "idpd/b64.h"
#include "idpd/clock.h"
#include "idpd/delegation.h"
#include "idpd/jws.h"
#include "idpd/kek.h"
#include "idpd/keys.h"
#include "idpd/revocation.h"
#include "idpd/store.h"
#include "idpd/tasks.h"
#include "world.h"

#define ISSUER "https://idpd.test"
/* The KEK the harness gives every idpd. */

/* ---- idpd's signing key, opened here with the harness KEK ---- */

struct signer {
	struct store *store;
	struct keys *km;
};

static void
signer_open(struct signer *s, const char *db)
{
	char url[256];
	struct store_opts so = {.pool_size = 1,
	                        .connect_timeout_ms = 2000,
	                        .acquire_timeout_ms = 2000,
	                        .statement_timeout_ms = 5000};
	struct keys_opts o = {.clock = idp_clock_system(),
	                      .policy = {.rotate_every_ms = 0,
	                                 .retire_after_ms = 24 * 3600 * 1000LL,
	                                 .max_age_ms = 90LL * 86400 * 1000},
	                      .kek_source = "the test"};
	struct idp_kek *k = NULL;
	struct idp_diag d;

	harness_db_url(db, url, sizeof(url));
	so.url = url;
	s->store = store_open(&so);
	o.store = s->store;
	idp_diag_init(&d);
	assert_int_equal(idp_kek_from_string(HARNESS_KEK, &k, &d), IDP_OK);
	assert_int_equal(keys_open(&o, k, &s->km, &d), IDP_OK);
	if (keys_reload(s->km, &d) != IDP_OK)
		fail_msg("%s", idp_diag_str(&d));
}

static void
signer_close(struct signer *s)
{
	keys_free(s->km);
	store_close(s->store);
}

/* Sign claims (stolen) with idpd's active key as typ. */
static char *
sign_as(struct signer *s, const char *typ, json_t *claims)
{
	struct idp_jws_key *key = NULL;
	char *tok = NULL;

	assert_int_equal(keys_signing_key(s->km, &key, NULL), IDP_OK);
	assert_int_equal(idp_jws_sign(key, typ, claims, &tok, NULL, NULL), IDP_OK);
	idp_jws_key_unref(key);
	json_decref(claims);
	return tok;
}

/* The claims of one of idpd's tokens (the caller decrefs). */
static json_t *
claims_of(struct signer *s, const char *tok, const char *typ)
{
	struct idp_jws_keyset *set = keys_verify_set(s->km);
	struct idp_jws_verify_opts o = {.typ = typ};
	struct idp_jws_verified v;
	json_t *c;

	assert_int_equal(idp_jws_verify(set, tok, strlen(tok), &o, &v, NULL), IDP_OK);
	idp_jws_keyset_unref(set);
	c = json_incref(v.claims);
	idp_jws_verified_cleanup(&v);
	return c;
}

static void
random_jti(char out[23])
{
	assert_int_equal(attest_jti_new(out), IDP_OK);
}

/*
 * The claims of an access token for sub under the delegation token deleg
 * (its claims dc), living from iat to exp; the caller may change them
 * before signing.
 */
static json_t *
access_claims(const json_t *dc, const char *aud, long long iat, long long exp)
{
	char jti[23];

	random_jti(jti);
	return json_pack(
	    "{s:s,s:s,s:s,s:I,s:I,s:s,s:s,s:s,s:s,s:s,s:s,s:s,s:s,s:s,s:O}", "iss", ISSUER, "sub",
	    json_string_value(json_object_get(dc, "sub")), "aud", aud, "iat", (json_int_t)iat,
	    "exp", (json_int_t)exp, "jti", jti, "scope",
	    json_string_value(json_object_get(dc, "scope")), "task_id",
	    json_string_value(json_object_get(dc, "task_id")), "human_principal",
	    json_string_value(json_object_get(dc, "human_principal")), "delegation_chain_hash",
	    json_string_value(json_object_get(dc, "delegation_chain_hash")), "agent_type",
	    "cloud-inventory", "agent_version", "v1.2.0", "client_id",
	    json_string_value(json_object_get(dc, "sub")), ACCESS_CLAIM_DELEGATION_JTI,
	    json_string_value(json_object_get(dc, "jti")), "act", json_object_get(dc, "act"));
}

static char *
mint_access(struct signer *s, const char *deleg)
{
	json_t *dc = claims_of(s, deleg, TASK_TOKEN_TYP);
	long long now = (long long)time(NULL);
	char *tok = sign_as(s, IDP_JWS_TYP_ACCESS,
	                    access_claims(dc, "https://s3.internal", now, now + 900));

	json_decref(dc);
	return tok;
}

/* ---- the setting ---- */

struct setting {
	struct world w;
	struct signer sg;
	char planner[4096], cloud[4096], sub[4096], outsider[4096];
	char task_id[80];
	char *alice, *root, *d1, *d2;
};

static void
register_agent(struct world *w, const char *id, const char *type, const char *caps,
               const char *delegate_to)
{
	const struct world_agent a = {.id = id,
	                              .type = type,
	                              .owner = "alice@example.com",
	                              .version = "v1.2.0",
	                              .caps = caps,
	                              .delegate_to = delegate_to,
	                              .max_depth = 3};

	world_agent(w, &a);
}

/* The setting with revocation.max_staleness (NULL: the world's). */
static void
setting_start(struct setting *s, const char *db, const char *max_staleness)
{
	const struct world_opts o = {
	    .issuer = ISSUER, .max_ttl = "2h", .max_staleness = max_staleness};

	memset(s, 0, sizeof(*s));
	world_start_opts(&s->w, db, &o);
	signer_open(&s->sg, db);
	register_agent(&s->w, "sub-agent", "helper", "[\"cloud:Describe*\"]", "[]");
	register_agent(&s->w, "cloud-agent", "cloud-inventory", "[\"cloud:Describe*\"]",
	               "[\"sub-agent\"]");
	register_agent(&s->w, "outsider", "helper", "[\"cloud:Describe*\"]", "[]");
	register_agent(&s->w, "planning-agent", "planner",
	               "[\"cloud:Describe*\",\"reports:write\"]", "[\"cloud-agent\"]");
	world_credential(&s->w, "planning-agent", s->planner, sizeof(s->planner));
	world_credential(&s->w, "cloud-agent", s->cloud, sizeof(s->cloud));
	world_credential(&s->w, "sub-agent", s->sub, sizeof(s->sub));
	world_credential(&s->w, "outsider", s->outsider, sizeof(s->outsider));
	s->alice = world_human_token("alice@example.com");
	world_task_ttl(&s->w, s->alice, "planning-agent",
	               "[\"cloud:DescribeInstances\",\"reports:write\"]", "1h", s->task_id, NULL,
	               &s->root);
	s->d1 = world_delegate(&s->w, s->planner, s->root, "cloud-agent", "cloud:DescribeInstances",
	                       NULL);
	s->d2 =
	    world_delegate(&s->w, s->cloud, s->d1, "sub-agent", "cloud:DescribeInstances", NULL);
}

static void
setting_stop(struct setting *s)
{
	free(s->root);
	free(s->d1);
	free(s->d2);
	free(s->alice);
	signer_close(&s->sg);
	world_stop(&s->w);
}

/* ---- the two endpoints ---- */

static char *
bearer(const char *key)
{
	static char b[4200];

	snprintf(b, sizeof(b), "Bearer %s", key);
	return b;
}

/* POST /introspect as the introspector, hinting an access token; the answer in r. */
static void
introspect(struct world *w, const char *tok, struct http_resp *r)
{
	world_introspect(w, tok, "access_token", r);
}

/* Whether tok is active on w; fails the test on anything but a 200. */
static bool
active(struct world *w, const char *tok)
{
	struct http_resp r;
	bool a;

	introspect(w, tok, &r);
	if (r.status != 200)
		fprintf(stderr, "POST /introspect: %ld %s\n", r.status, r.body);
	assert_int_equal(r.status, 200);
	a = json_is_true(json_object_get(r.json, "active"));
	if (!a)
		assert_string_equal(r.body, "{\"active\":false}");
	harness_resp_free(&r);
	return a;
}

/* ---- tests ---- */

static void
introspect_active_token_carries_its_claims_and_a_recomputable_chain(void **state)
{
	struct setting w;
	struct http_resp r, again;
	json_t *dc, *chain, *act;
	uint8_t h[TASK_CHAIN_HASH_LEN];
	char text[TASK_CHAIN_TEXT_LEN], basic[512], b64[400], user_pass[256];
	char *at;
	size_t i;
	json_t *link;

	(void)state;
	setting_start(&w, "t_rev_active", NULL);
	at = mint_access(&w.sg, w.d1);
	dc = claims_of(&w.sg, w.d1, TASK_TOKEN_TYP);

	introspect(&w.w, at, &r);
	assert_int_equal(r.status, 200);
	assert_true(json_is_true(json_object_get(r.json, "active")));
	assert_string_equal(json_string_value(json_object_get(r.json, "token_type")), "Bearer");
	assert_string_equal(json_string_value(json_object_get(r.json, "token_use")),
	                    "access_token");
	assert_string_equal(json_string_value(json_object_get(r.json, "sub")), "cloud-agent");
	assert_string_equal(json_string_value(json_object_get(r.json, "client_id")), "cloud-agent");
	assert_string_equal(json_string_value(json_object_get(r.json, "aud")),
	                    "https://s3.internal");
	assert_string_equal(json_string_value(json_object_get(r.json, "iss")), ISSUER);
	assert_string_equal(json_string_value(json_object_get(r.json, "scope")),
	                    "cloud:DescribeInstances");
	assert_string_equal(json_string_value(json_object_get(r.json, "task_id")), w.task_id);
	assert_string_equal(json_string_value(json_object_get(r.json, "human_principal")),
	                    "alice@example.com");
	assert_string_equal(json_string_value(json_object_get(r.json, "agent_type")),
	                    "cloud-inventory");
	assert_string_equal(json_string_value(json_object_get(r.json, "agent_version")), "v1.2.0");
	assert_true(json_is_integer(json_object_get(r.json, "exp")));
	assert_true(json_is_integer(json_object_get(r.json, "iat")));
	assert_non_null(json_string_value(json_object_get(r.json, "jti")));
	/* act as the delegation token carries it: cloud-agent (acting now), planning-agent, alice.
	 */
	act = json_object_get(r.json, "act");
	assert_true(json_equal(act, json_object_get(dc, "act")));
	assert_string_equal(json_string_value(json_object_get(act, "sub")), "cloud-agent");
	assert_string_equal(json_string_value(json_object_get(json_object_get(act, "act"), "sub")),
	                    "planning-agent");
	/* The chain, root first, and its hash recomputed as a downstream would. */
	chain = json_object_get(r.json, "delegation_chain");
	assert_int_equal(json_array_size(chain), 2);
	assert_string_equal(json_string_value(json_object_get(json_array_get(chain, 0), "agent")),
	                    "planning-agent");
	assert_string_equal(json_string_value(json_object_get(json_array_get(chain, 1), "jti")),
	                    json_string_value(json_object_get(dc, "jti")));
	assert_int_equal(task_chain_root("alice@example.com", h), IDP_OK);
	json_array_foreach(chain, i, link)
	{
		assert_int_equal(json_integer_value(json_object_get(link, "depth")), (json_int_t)i);
		assert_int_equal(
		    task_chain_next(h, json_string_value(json_object_get(link, "agent")),
		                    json_string_value(json_object_get(link, "jti")),
		                    json_string_value(json_object_get(link, "scope")), h),
		    IDP_OK);
	}
	task_chain_format(h, text);
	assert_string_equal(json_string_value(json_object_get(r.json, "delegation_chain_hash")),
	                    text);
	assert_string_equal(text, json_string_value(json_object_get(dc, "delegation_chain_hash")));

	/* Again (from the verified-token cache): the same answer. */
	introspect(&w.w, at, &again);
	assert_int_equal(again.status, 200);
	assert_string_equal(again.body, r.body);
	harness_resp_free(&again);
	harness_resp_free(&r);

	/* HTTP Basic: the key as the password, the user name empty or the key's name. */
	snprintf(user_pass, sizeof(user_pass), ":%s", w.w.k.introspector);
	idp_b64_encode_to(user_pass, strlen(user_pass), b64);
	snprintf(basic, sizeof(basic), "Basic %s", b64);
	{
		char body[9000];

		snprintf(body, sizeof(body), "token=%s", at);
		world_post(&w.w, "/introspect", basic, NULL, body, &r);
		assert_int_equal(r.status, 200);
		assert_true(json_is_true(json_object_get(r.json, "active")));
		harness_resp_free(&r);
		snprintf(user_pass, sizeof(user_pass), "resource-api:%s", w.w.k.introspector);
		idp_b64_encode_to(user_pass, strlen(user_pass), b64);
		snprintf(basic, sizeof(basic), "Basic %s", b64);
		world_post(&w.w, "/introspect", basic, NULL, body, &r);
		assert_int_equal(r.status, 200);
		harness_resp_free(&r);
		snprintf(user_pass, sizeof(user_pass), "someone-else:%s", w.w.k.introspector);
		idp_b64_encode_to(user_pass, strlen(user_pass), b64);
		snprintf(basic, sizeof(basic), "Basic %s", b64);
		world_post(&w.w, "/introspect", basic, NULL, body, &r);
		assert_int_equal(r.status, 401);
		assert_string_equal(json_string_value(json_object_get(r.json, "error")),
		                    "invalid_client");
		harness_resp_free(&r);
	}

	/* A delegation token introspects too, its agent fields from the registry. */
	introspect(&w.w, w.d2, &r);
	assert_int_equal(r.status, 200);
	assert_true(json_is_true(json_object_get(r.json, "active")));
	assert_string_equal(json_string_value(json_object_get(r.json, "token_use")),
	                    "delegation_token");
	assert_string_equal(json_string_value(json_object_get(r.json, "sub")), "sub-agent");
	assert_string_equal(json_string_value(json_object_get(r.json, "agent_type")), "helper");
	assert_string_equal(json_string_value(json_object_get(r.json, "aud")), "idpd");
	assert_int_equal(json_array_size(json_object_get(r.json, "delegation_chain")), 3);
	harness_resp_free(&r);

	/* No audit event per answer; the answers are counted. */
	assert_int_equal(
	    world_count(&w.w, "SELECT count(*) FROM audit_events WHERE type LIKE '%intro%'"), 0);
	world_call(&w.w, "GET", "/metrics", NULL, NULL, &r);
	assert_non_null(strstr(r.body, "idpd_introspection_total{result=\"active\"} 5"));
	assert_non_null(strstr(r.body, "idpd_introspection_cache_total{result=\"hit\"}"));
	assert_non_null(strstr(r.body, "idpd_revocation_current 1"));
	harness_resp_free(&r);
	json_decref(dc);
	free(at);
	setting_stop(&w);
}

/* A compact JWS with this header and payload and a junk signature. */
static char *
hand_made(const char *header, const json_t *payload)
{
	char *p = json_dumps(payload, JSON_COMPACT), *h64, *p64, *out;
	uint8_t sig[64];
	size_t n;

	memset(sig, 0x5a, sizeof(sig));
	h64 = idp_b64url_encode(header, strlen(header), NULL);
	p64 = idp_b64url_encode(p, strlen(p), NULL);
	n = strlen(h64) + strlen(p64) + 100;
	out = malloc(n);
	assert_non_null(out);
	snprintf(out, n, "%s.%s.", h64, p64);
	idp_b64url_encode_to(sig, sizeof(sig), out + strlen(out));
	free(p);
	free(h64);
	free(p64);
	return out;
}

static void
introspect_answers_exactly_active_false_for_bad_tokens(void **state)
{
	struct setting w;
	struct idp_jws_key *key = NULL, *forger = NULL;
	json_t *dc, *c;
	char *tok, header[256];
	long long now = (long long)time(NULL);

	(void)state;
	setting_start(&w, "t_rev_inactive", NULL);
	dc = claims_of(&w.sg, w.d1, TASK_TOKEN_TYP);
	assert_int_equal(keys_signing_key(w.sg.km, &key, NULL), IDP_OK);

	/* Expired. */
	tok = sign_as(&w.sg, IDP_JWS_TYP_ACCESS,
	              access_claims(dc, "https://s3.internal", now - 1000, now - 100));
	assert_false(active(&w.w, tok));
	free(tok);
	/* Forged: a key of its own under the active key's kid. */
	assert_int_equal(idp_jws_key_generate(idp_jws_key_kid(key), &forger, NULL), IDP_OK);
	c = access_claims(dc, "https://s3.internal", now, now + 600);
	assert_int_equal(idp_jws_sign(forger, IDP_JWS_TYP_ACCESS, c, &tok, NULL, NULL), IDP_OK);
	json_decref(c);
	assert_false(active(&w.w, tok));
	free(tok);
	/* alg none and HS256, with idpd's kid. */
	c = access_claims(dc, "https://s3.internal", now, now + 600);
	snprintf(header, sizeof(header), "{\"alg\":\"none\",\"typ\":\"at+jwt\",\"kid\":\"%s\"}",
	         idp_jws_key_kid(key));
	tok = hand_made(header, c);
	assert_false(active(&w.w, tok));
	free(tok);
	snprintf(header, sizeof(header), "{\"alg\":\"HS256\",\"typ\":\"at+jwt\",\"kid\":\"%s\"}",
	         idp_jws_key_kid(key));
	tok = hand_made(header, c);
	assert_false(active(&w.w, tok));
	free(tok);
	/* The right key and claims, the wrong typ: an identity credential's, or none. */
	tok = sign_as(&w.sg, IDP_JWS_TYP_IDENTITY, json_incref(c));
	assert_false(active(&w.w, tok));
	free(tok);
	tok = sign_as(&w.sg, NULL, json_incref(c));
	assert_false(active(&w.w, tok));
	free(tok);
	/* Another issuer. */
	json_object_set_new(c, "iss", json_string("https://elsewhere.example"));
	tok = sign_as(&w.sg, IDP_JWS_TYP_ACCESS, json_incref(c));
	assert_false(active(&w.w, tok));
	free(tok);
	json_decref(c);
	/* A delegation token for another audience. */
	c = json_deep_copy(dc);
	json_object_set_new(c, "aud", json_string("some-other-service"));
	tok = sign_as(&w.sg, TASK_TOKEN_TYP, c);
	assert_false(active(&w.w, tok));
	free(tok);
	/* An access token naming a delegation token that does not exist. */
	c = access_claims(dc, "https://s3.internal", now, now + 600);
	json_object_set_new(c, ACCESS_CLAIM_DELEGATION_JTI, json_string("nosuchjti-AAAAAAAAAAAA"));
	tok = sign_as(&w.sg, IDP_JWS_TYP_ACCESS, c);
	assert_false(active(&w.w, tok));
	free(tok);
	/* An access token whose subject is not the delegation token's. */
	c = access_claims(dc, "https://s3.internal", now, now + 600);
	json_object_set_new(c, "sub", json_string("outsider"));
	tok = sign_as(&w.sg, IDP_JWS_TYP_ACCESS, c);
	assert_false(active(&w.w, tok));
	free(tok);
	/* Issued in the future: a minute is refused, two seconds (a clock a little ahead,
	 * within identity.leeway) are not. */
	tok = sign_as(&w.sg, IDP_JWS_TYP_ACCESS,
	              access_claims(dc, "https://s3.internal", now + 60, now + 600));
	assert_false(active(&w.w, tok));
	free(tok);
	tok = sign_as(&w.sg, IDP_JWS_TYP_ACCESS,
	              access_claims(dc, "https://s3.internal", now + 2, now + 600));
	assert_true(active(&w.w, tok));
	free(tok);
	/* Garbage. */
	assert_false(active(&w.w, "not-a-token"));
	assert_false(active(&w.w, "a.b.c"));
	/* The genuine article is active, and each refusal above had its own reason. */
	tok = mint_access(&w.sg, w.d1);
	assert_true(active(&w.w, tok));
	free(tok);
	{
		static const char *const want[] = {
		    "{reason=\"expired\"} 1",         "{reason=\"bad_signature\"} 1",
		    "{reason=\"alg_not_allowed\"} 2", "{reason=\"typ_mismatch\"} 2",
		    "{reason=\"issuer_mismatch\"} 1", "{reason=\"audience_mismatch\"} 1",
		    "{reason=\"token_unknown\"} 1",   "{reason=\"chain_mismatch\"} 1",
		    "{reason=\"malformed\"} 2",       "{reason=\"claims_invalid\"} 1"};
		struct http_resp m;
		char line[128];

		world_call(&w.w, "GET", "/metrics", NULL, NULL, &m);
		for (size_t i = 0; i < IDP_ARRAY_LEN(want); i++) {
			snprintf(line, sizeof(line), "idpd_introspection_inactive_total%s\n",
			         want[i]);
			if (strstr(m.body, line) == NULL)
				fail_msg("metrics lack %s", line);
		}
		harness_resp_free(&m);
	}

	idp_jws_key_unref(forger);
	idp_jws_key_unref(key);
	json_decref(dc);
	setting_stop(&w);
}

static void
revoking_a_delegation_token_cascades_to_everything_derived_from_it(void **state)
{
	struct setting w;
	struct http_resp r;
	char *at1, *at2, *at_root, sql[512];
	json_t *d1c;

	(void)state;
	setting_start(&w, "t_rev_cascade", NULL);
	at1 = mint_access(&w.sg, w.d1);
	at2 = mint_access(&w.sg, w.d2);
	at_root = mint_access(&w.sg, w.root);
	d1c = claims_of(&w.sg, w.d1, TASK_TOKEN_TYP);
	assert_true(active(&w.w, at1));
	assert_true(active(&w.w, at2));
	assert_true(active(&w.w, w.d2));

	/* An agent off the chain may not; the token stays active. */
	assert_int_equal(world_revoke_as(&w.w, bearer(w.outsider), w.d1, &r), 400);
	assert_string_equal(json_string_value(json_object_get(r.json, "error")),
	                    "unauthorized_client");
	harness_resp_free(&r);
	assert_true(active(&w.w, at1));
	/* The delegator revokes what it delegated: D1, D2 and their access tokens die at once. */
	assert_int_equal(world_revoke_as(&w.w, bearer(w.planner), w.d1, NULL), 200);
	assert_false(active(&w.w, w.d1));
	assert_false(active(&w.w, w.d2));
	assert_false(active(&w.w, at1));
	assert_false(active(&w.w, at2));
	/* Its parent and what hangs off the parent alone live on. */
	assert_true(active(&w.w, w.root));
	assert_true(active(&w.w, at_root));
	snprintf(
	    sql, sizeof(sql),
	    "SELECT count(*) FROM delegation_tokens WHERE revoked_at IS NOT NULL AND jti <> '%s'",
	    json_string_value(json_object_get(d1c, "jti")));
	assert_int_equal(world_count(&w.w, sql), 1); /* D2 */
	snprintf(sql, sizeof(sql),
	         "SELECT count(*) FROM revoked_tokens WHERE jti = '%s' AND kind = 'delegation' "
	         "AND revoked_by = 'agent:planning-agent'",
	         json_string_value(json_object_get(d1c, "jti")));
	assert_int_equal(world_count(&w.w, sql), 1);
	assert_int_equal(world_count(&w.w, "SELECT count(*) FROM audit_events WHERE type = "
	                                   "'delegation.revoked' AND outcome = 'success' AND "
	                                   "(body::json->'detail'->>'revoked_count')::int = 2"),
	                 1);
	/* Revoking it again changes nothing and records nothing more. */
	assert_int_equal(world_revoke_as(&w.w, bearer(w.planner), w.d1, NULL), 200);
	assert_int_equal(world_count(&w.w, "SELECT count(*) FROM audit_events WHERE type = "
	                                   "'delegation.revoked' AND outcome = 'success'"),
	                 1);

	/* An access token, by its own subject. */
	free(at1);
	at1 = mint_access(&w.sg, w.root);
	assert_true(active(&w.w, at1));
	assert_int_equal(world_revoke_as(&w.w, bearer(w.planner), at1, NULL), 200);
	assert_false(active(&w.w, at1));
	assert_true(active(&w.w, at_root));
	assert_int_equal(
	    world_count(&w.w, "SELECT count(*) FROM revoked_tokens WHERE kind = 'access'"), 1);
	assert_int_equal(world_count(&w.w, "SELECT count(*) FROM audit_events WHERE type = "
	                                   "'token.revoked' AND outcome = 'success'"),
	                 1);
	/* The task's human, and an admin key, may revoke too; an auditor key may not. */
	assert_int_equal(world_revoke_as(&w.w, bearer(w.alice), at_root, NULL), 200);
	assert_false(active(&w.w, at_root));
	free(at_root);
	at_root = mint_access(&w.sg, w.root);
	assert_int_equal(world_revoke_as(&w.w, bearer(w.w.k.auditor), at_root, &r), 400);
	assert_string_equal(json_string_value(json_object_get(r.json, "error")),
	                    "unauthorized_client");
	harness_resp_free(&r);
	assert_true(active(&w.w, at_root));
	assert_int_equal(world_revoke_as(&w.w, bearer(w.w.k.admin), w.root, NULL), 200);
	assert_false(active(&w.w, at_root));
	/* RFC 7009: an invalid or unknown token is still a 200. */
	assert_int_equal(world_revoke_as(&w.w, bearer(w.w.k.admin), "not-a-token", &r), 200);
	harness_resp_free(&r);

	json_decref(d1c);
	free(at1);
	free(at2);
	free(at_root);
	setting_stop(&w);
}

static void
revoking_an_identity_credential_ends_its_use(void **state)
{
	struct setting w;
	struct http_resp r;

	(void)state;
	setting_start(&w, "t_rev_credential", NULL);
	assert_int_equal(harness_status(&w.w.p, "GET", "/v1/me", w.cloud, NULL), 200);
	/* Another agent may not; the agent itself may. */
	assert_int_equal(world_revoke_as(&w.w, bearer(w.outsider), w.cloud, &r), 400);
	assert_string_equal(json_string_value(json_object_get(r.json, "error")),
	                    "unauthorized_client");
	harness_resp_free(&r);
	assert_int_equal(harness_status(&w.w.p, "GET", "/v1/me", w.cloud, NULL), 200);
	assert_int_equal(world_revoke_as(&w.w, bearer(w.cloud), w.cloud, NULL), 200);
	assert_int_equal(harness_status(&w.w.p, "GET", "/v1/me", w.cloud, NULL), 401);
	assert_int_equal(world_count(&w.w,
	                             "SELECT count(*) FROM agent_credentials WHERE agent_id = "
	                             "'cloud-agent' AND revoked_at IS NOT NULL"),
	                 1);
	assert_int_equal(world_count(&w.w, "SELECT count(*) FROM audit_events WHERE type = "
	                                   "'token.revoked' AND outcome = 'success' AND "
	                                   "body::json->'detail'->>'kind' = 'identity_credential'"),
	                 1);
	/* An admin may revoke any agent's. */
	assert_int_equal(world_revoke_as(&w.w, bearer(w.w.k.admin), w.sub, NULL), 200);
	assert_int_equal(harness_status(&w.w.p, "GET", "/v1/me", w.sub, NULL), 401);
	setting_stop(&w);
}

/*
 * A credential found stolen only after it expired still ends the access
 * tokens it obtained (they may outlive it by tokens.max_ttl): /revoke takes
 * it, and introspection refuses its tokens (identity_jti).
 */
static void
an_expired_credential_can_still_be_revoked_with_its_tokens(void **state)
{
	struct setting w;
	char jti[23], sql[512], *old_cred, *at;
	long long now = (long long)time(NULL);
	json_t *cc, *dc, *ac;

	(void)state;
	setting_start(&w, "t_rev_expired_cred", NULL);
	/* cloud-agent's credential as attestation made it, but an hour old
	 * and expired half an hour ago; its record as attestation left it. */
	random_jti(jti);
	cc = claims_of(&w.sg, w.cloud, IDP_JWS_TYP_IDENTITY);
	json_object_set_new(cc, "jti", json_string(jti));
	json_object_set_new(cc, "iat", json_integer(now - 3600));
	json_object_set_new(cc, "exp", json_integer(now - 1800));
	if (json_object_get(cc, "nbf") != NULL)
		json_object_set_new(cc, "nbf", json_integer(now - 3600));
	old_cred = sign_as(&w.sg, IDP_JWS_TYP_IDENTITY, cc);
	snprintf(
	    sql, sizeof(sql),
	    "INSERT INTO agent_credentials (jti, agent_id, kid, method, issued_at, expires_at) "
	    "SELECT '%s', agent_id, kid, method, now() - interval '1 hour', now() - interval "
	    "'30 minutes' FROM agent_credentials WHERE agent_id = 'cloud-agent' LIMIT 1",
	    jti);
	assert_int_equal(harness_sql(w.w.db, sql), 0);
	/* An access token it obtained before it expired, still alive. */
	dc = claims_of(&w.sg, w.d1, TASK_TOKEN_TYP);
	ac = access_claims(dc, "https://s3.internal", now - 1900, now + 900);
	json_object_set_new(ac, ACCESS_CLAIM_IDENTITY_JTI, json_string(jti));
	at = sign_as(&w.sg, IDP_JWS_TYP_ACCESS, ac);
	json_decref(dc);
	assert_true(active(&w.w, at));
	/* The agent, with its live credential, revokes the expired one. */
	assert_int_equal(world_revoke_as(&w.w, bearer(w.cloud), old_cred, NULL), 200);
	assert_false(active(&w.w, at));
	snprintf(
	    sql, sizeof(sql),
	    "SELECT count(*) FROM agent_credentials WHERE jti = '%s' AND revoked_at IS NOT NULL",
	    jti);
	assert_int_equal(world_count(&w.w, sql), 1);
	free(old_cred);
	free(at);
	setting_stop(&w);
}

static void
completing_the_task_makes_every_token_inactive(void **state)
{
	struct setting w;
	char *at, path[160];

	(void)state;
	setting_start(&w, "t_rev_complete", NULL);
	at = mint_access(&w.sg, w.d2);
	assert_true(active(&w.w, at));
	snprintf(path, sizeof(path), "/v1/tasks/%s/complete", w.task_id);
	assert_int_equal(harness_status(&w.w.p, "POST", path, w.alice, NULL), 200);
	assert_false(active(&w.w, w.root));
	assert_false(active(&w.w, w.d1));
	assert_false(active(&w.w, w.d2));
	assert_false(active(&w.w, at));
	free(at);
	setting_stop(&w);
}

static void
agent_decommissioned_or_suspended_mid_task_makes_its_tokens_inactive(void **state)
{
	struct setting w;
	char *at_cloud, *at_root;

	(void)state;
	setting_start(&w, "t_rev_agents", NULL);
	at_cloud = mint_access(&w.sg, w.d1);
	at_root = mint_access(&w.sg, w.root);
	assert_true(active(&w.w, at_cloud));
	assert_int_equal(harness_status(&w.w.p, "POST", "/v1/agents/cloud-agent/decommission",
	                                w.w.k.registrar, "{\"reason\":\"compromised\"}"),
	                 200);
	assert_false(active(&w.w, at_cloud));
	assert_false(active(&w.w, w.d1));
	/* D2 was delegated by cloud-agent: an agent on its chain is gone. */
	assert_false(active(&w.w, w.d2));
	assert_true(active(&w.w, at_root));

	/* A suspension of the root agent cuts the whole task's tokens, and a resume does not
	 * bring them back. */
	assert_int_equal(harness_status(&w.w.p, "POST", "/v1/agents/planning-agent/suspend",
	                                w.w.k.registrar, "{\"reason\":\"investigation\"}"),
	                 200);
	assert_false(active(&w.w, at_root));
	assert_false(active(&w.w, w.root));
	assert_int_equal(harness_status(&w.w.p, "POST", "/v1/agents/planning-agent/resume",
	                                w.w.k.registrar, "{}"),
	                 200);
	assert_false(active(&w.w, at_root));
	assert_false(active(&w.w, w.root));
	free(at_cloud);
	free(at_root);
	setting_stop(&w);
}

/* POST /introspect of a token that is not one, with Basic user:pass; the status. */
static long
introspect_basic(struct world *w, const char *user, const char *pass)
{
	char up[256], b64[400], basic[420];
	struct http_resp r;
	long status;

	snprintf(up, sizeof(up), "%s:%s", user, pass);
	idp_b64_encode_to(up, strlen(up), b64);
	snprintf(basic, sizeof(basic), "Basic %s", b64);
	world_post(w, "/introspect", basic, NULL, "token=not-a-token", &r);
	status = r.status;
	if (status == 200)
		assert_string_equal(r.body, "{\"active\":false}");
	harness_resp_free(&r);
	return status;
}

/*
 * RFC 6749 section 2.3.1: the client id and the secret are each
 * form-encoded before they are joined with ':' and base64-encoded.  So a
 * key whose name holds a ':' can be named (its ':' encoded), any encoded
 * character decodes, and an unencoded ':' ends the user name.
 */
static void
basic_credentials_are_form_decoded(void **state)
{
	char key[64], hash[80], toml[256], enc[80];
	struct world w;
	const char *intro;

	(void)state;
	assert_int_equal(auth_key_generate(key, hash), IDP_OK);
	snprintf(toml, sizeof(toml),
	         "[[api_keys]]\nname = \"svc:introspect\"\nhash = \"%s\"\n"
	         "roles = [\"introspector\"]\n",
	         hash);
	world_start(&w, "t_rev_basic", toml);
	intro = w.k.introspector;

	/* A plain name, as is and with a character encoded. */
	assert_int_equal(introspect_basic(&w, "resource-api", intro), 200);
	assert_int_equal(introspect_basic(&w, "resource%2Dapi", intro), 200);
	assert_int_equal(introspect_basic(&w, "resource-api", key), 401);
	/* A name with a ':', encoded either case. */
	assert_int_equal(introspect_basic(&w, "svc%3Aintrospect", key), 200);
	assert_int_equal(introspect_basic(&w, "svc%3aintrospect", key), 200);
	assert_int_equal(introspect_basic(&w, "", key), 200);
	/* The secret is decoded too: its '_' sent as %5F. */
	snprintf(enc, sizeof(enc), "idpk%%5F%s", key + strlen(AUTH_KEY_PREFIX));
	assert_int_equal(introspect_basic(&w, "svc%3Aintrospect", enc), 200);
	/* Not encoded, the ':' ends the name: "svc" and a password that is no key. */
	assert_int_equal(introspect_basic(&w, "svc:introspect", key), 401);
	assert_int_equal(introspect_basic(&w, "svc", key), 401);
	/* A bad escape, an encoded NUL or control character: refused. */
	assert_int_equal(introspect_basic(&w, "svc%3Xintrospect", key), 401);
	assert_int_equal(introspect_basic(&w, "svc%3", key), 401);
	assert_int_equal(introspect_basic(&w, "svc%00", key), 401);
	snprintf(enc, sizeof(enc), "%s%%0A", key);
	assert_int_equal(introspect_basic(&w, "svc%3Aintrospect", enc), 401);
	world_stop(&w);
}

static void
bad_callers_and_bad_bodies_are_refused_with_oauth_errors(void **state)
{
	static const char *const paths[] = {"/introspect", "/revoke"};
	struct setting w;
	struct http_resp r;
	char body[9000], hdr[256];
	char *at;

	(void)state;
	setting_start(&w, "t_rev_bad", NULL);
	at = mint_access(&w.sg, w.d1);
	snprintf(body, sizeof(body), "token=%s", at);
	for (size_t i = 0; i < 2; i++) {
		const char *key = i == 0 ? w.w.k.introspector : w.w.k.admin;

		/* No credentials, a wrong key, garbage Basic: 401 invalid_client. */
		world_post(&w.w, paths[i], NULL, NULL, body, &r);
		assert_int_equal(r.status, 401);
		assert_string_equal(json_string_value(json_object_get(r.json, "error")),
		                    "invalid_client");
		assert_true(harness_resp_header(&r, "WWW-Authenticate", hdr, sizeof(hdr)));
		assert_true(harness_resp_header(&r, "Cache-Control", hdr, sizeof(hdr)));
		assert_string_equal(hdr, "no-store");
		harness_resp_free(&r);
		world_post(&w.w, paths[i], bearer("idpk_wrongwrongwrongwrongwrongwrongwrongwrongw"),
		           NULL, body, &r);
		assert_int_equal(r.status, 401);
		assert_string_equal(json_string_value(json_object_get(r.json, "error")),
		                    "invalid_client");
		harness_resp_free(&r);
		world_post(&w.w, paths[i], "Basic !!!", NULL, body, &r);
		assert_int_equal(r.status, 401);
		harness_resp_free(&r);
		/* A key without the role: RFC 7009 answers as RFC 6749 §5.2 (400);
		 * introspection, which RFC 7662 leaves to HTTP, 403. */
		world_post(&w.w, paths[i], bearer(w.w.k.auditor), NULL, body, &r);
		assert_int_equal(r.status, strcmp(paths[i], "/revoke") == 0 ? 400 : 403);
		assert_string_equal(json_string_value(json_object_get(r.json, "error")),
		                    "unauthorized_client");
		harness_resp_free(&r);
		/* The right caller, a wrong body: JSON, a duplicate, no token, a bad escape. */
		world_post(&w.w, paths[i], bearer(key), "application/json", "{\"token\":\"x\"}",
		           &r);
		assert_int_equal(r.status, 415);
		assert_string_equal(json_string_value(json_object_get(r.json, "error")),
		                    "invalid_request");
		harness_resp_free(&r);
		snprintf(body, sizeof(body), "token=%s&token=%s", at, at);
		world_post(&w.w, paths[i], bearer(key), NULL, body, &r);
		assert_int_equal(r.status, 400);
		assert_string_equal(json_string_value(json_object_get(r.json, "error")),
		                    "invalid_request");
		assert_non_null(
		    strstr(json_string_value(json_object_get(r.json, "error_description")),
		           "more than once"));
		harness_resp_free(&r);
		world_post(&w.w, paths[i], bearer(key), NULL, "token_type_hint=access_token", &r);
		assert_int_equal(r.status, 400);
		assert_string_equal(json_string_value(json_object_get(r.json, "error")),
		                    "invalid_request");
		harness_resp_free(&r);
		if (strcmp(paths[i], "/revoke") == 0) {
			/* Kinds of token /revoke does not take (RFC 7009 §2.2.1). */
			static const char *const other[] = {
			    "token=idpk_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
			    "token=idpj_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"};

			for (size_t j = 0; j < 2; j++) {
				world_post(&w.w, paths[i], bearer(key), NULL, other[j], &r);
				assert_int_equal(r.status, 400);
				assert_string_equal(
				    json_string_value(json_object_get(r.json, "error")),
				    "unsupported_token_type");
				harness_resp_free(&r);
			}
		}
		world_post(&w.w, paths[i], bearer(key), NULL, "token=%zz", &r);
		assert_int_equal(r.status, 400);
		harness_resp_free(&r);
		snprintf(body, sizeof(body), "token=%s", at);
	}
	/* None of that revoked anything. */
	assert_true(active(&w.w, at));
	assert_int_equal(world_count(&w.w, "SELECT count(*) FROM revoked_tokens"), 0);
	free(at);
	setting_stop(&w);
}

static void
cleanup_job_prunes_revocations_past_their_expiry(void **state)
{
	struct setting w;
	struct http_resp r;
	json_t *job;
	char *at;

	(void)state;
	setting_start(&w, "t_rev_cleanup", NULL);
	at = mint_access(&w.sg, w.root);
	assert_int_equal(world_revoke_as(&w.w, bearer(w.w.k.admin), at, NULL), 200);
	assert_int_equal(world_revoke_as(&w.w, bearer(w.w.k.admin), w.d2, NULL), 200);
	assert_int_equal(world_count(&w.w, "SELECT count(*) FROM revoked_tokens"), 2);
	/* The chain below the root (D1, D2) and both records have long expired; the root has
	 * not, and a fresh record stays. */
	assert_int_equal(harness_sql(w.w.db, "UPDATE delegation_tokens SET issued_at = now() - "
	                                     "interval '3 hours', expires_at = now() - interval "
	                                     "'2 hours' WHERE depth > 0"),
	                 0);
	assert_int_equal(harness_sql(w.w.db, "UPDATE revoked_tokens SET expires_at = now() - "
	                                     "interval '2 hours'"),
	                 0);
	free(at);
	at = mint_access(&w.sg, w.root);
	assert_int_equal(world_revoke_as(&w.w, bearer(w.w.k.admin), at, NULL), 200);

	world_call(&w.w, "POST", "/v1/maintenance/cleanup", w.w.k.maintenance, NULL, &r);
	assert_int_equal(r.status, 200);
	job = json_object_get(json_object_get(r.json, "jobs"), "revocations");
	if (job == NULL)
		fprintf(stderr, "cleanup: %s\n", r.body);
	assert_non_null(job);
	assert_int_equal(json_integer_value(json_object_get(job, "revoked_tokens_deleted")), 2);
	assert_int_equal(json_integer_value(json_object_get(job, "delegation_tokens_deleted")), 2);
	harness_resp_free(&r);
	assert_int_equal(world_count(&w.w, "SELECT count(*) FROM delegation_tokens"), 1);
	assert_int_equal(world_count(&w.w, "SELECT count(*) FROM revoked_tokens"), 1);
	/* Idempotent. */
	world_call(&w.w, "POST", "/v1/maintenance/cleanup", w.w.k.maintenance, NULL, &r);
	job = json_object_get(json_object_get(r.json, "jobs"), "revocations");
	assert_int_equal(json_integer_value(json_object_get(job, "revoked_tokens_deleted")), 0);
	assert_int_equal(json_integer_value(json_object_get(job, "delegation_tokens_deleted")), 0);
	harness_resp_free(&r);
	/* What was kept still works, and what was revoked stays so. */
	assert_true(active(&w.w, w.root));
	assert_false(active(&w.w, at));
	free(at);
	setting_stop(&w);
}

static int
cmp_ll(const void *a, const void *b)
{
	long long x = *(const long long *)a, y = *(const long long *)b;

	return x < y ? -1 : x > y;
}

static void
revocation_on_one_instance_reaches_the_other(void **state)
{
	enum { ROUNDS = 5 };
	struct setting w;
	struct world b;
	long long delays[ROUNDS];

	(void)state;
	setting_start(&w, "t_rev_two", NULL);
	world_start_peer(&w.w, &b);
	for (int i = 0; i < ROUNDS; i++) {
		char *at = mint_access(&w.sg, w.d1);
		int64_t t0;
		bool gone = false;

		/* Known to the other instance before the revocation. */
		assert_true(active(&b, at));
		t0 = idp_mono_us();
		assert_int_equal(world_revoke_as(&w.w, bearer(w.w.k.admin), at, NULL), 200);
		while (idp_mono_us() - t0 < 1000000) {
			if (!active(&b, at)) {
				gone = true;
				break;
			}
		}
		delays[i] = (idp_mono_us() - t0) / 1000;
		assert_true(gone);
		free(at);
	}
	qsort(delays, ROUNDS, sizeof(delays[0]), cmp_ll);
	printf("revocation propagation to the second instance: median %lld ms, max %lld ms "
	       "(revoke request included; target 100 ms)\n",
	       delays[ROUNDS / 2], delays[ROUNDS - 1]);
	/* A whole subtree, and a completed task, the same way. */
	assert_true(active(&b, w.d2));
	assert_int_equal(world_revoke_as(&w.w, bearer(w.planner), w.d1, NULL), 200);
	for (int i = 0; i < 100 && active(&b, w.d2); i++)
		usleep(10000);
	assert_false(active(&b, w.d2));
	world_stop(&b);
	setting_stop(&w);
}

/* Introspect tok until the status is want (for s seconds at most); the last status. */
static long
introspect_until_s(struct world *w, const char *tok, long want, int s)
{
	struct http_resp r;
	long st = 0;
	int64_t t0 = idp_mono_us();

	do {
		introspect(w, tok, &r);
		st = r.status;
		harness_resp_free(&r);
	} while (st != want && idp_mono_us() - t0 < s * 1000000LL && usleep(50000) == 0);
	return st;
}

static long
introspect_until(struct world *w, const char *tok, long want)
{
	return introspect_until_s(w, tok, want, 10);
}

/*
 * A token signed with a key this instance has never seen: definitely not
 * valid while the keys' notifications arrive, but while they are lost
 * another instance may have published that key, so the answer is 503
 * (introspection and revocation alike), until the reload after the
 * listener is back.  A bad signature under a known key is answered all along.
 */
static void
unknown_kid_is_503_while_key_notifications_are_lost(void **state)
{
	struct setting w;
	struct idp_jws_key *elsewhere = NULL, *ours = NULL;
	struct http_resp r;
	json_t *dc, *c;
	char *live, *stranger, *forged;
	long long now = (long long)time(NULL);
	long st;

	(void)state;
	setting_start(&w, "t_rev_kid", "60s");
	live = mint_access(&w.sg, w.d1);
	dc = claims_of(&w.sg, w.d1, TASK_TOKEN_TYP);
	assert_int_equal(idp_jws_key_generate("published-elsewhere", &elsewhere, NULL), IDP_OK);
	c = access_claims(dc, "https://s3.internal", now, now + 600);
	assert_int_equal(idp_jws_sign(elsewhere, IDP_JWS_TYP_ACCESS, c, &stranger, NULL, NULL),
	                 IDP_OK);
	idp_jws_key_unref(elsewhere);
	/* And one under the active key's kid, signed by a key of its own. */
	assert_int_equal(keys_signing_key(w.sg.km, &ours, NULL), IDP_OK);
	assert_int_equal(idp_jws_key_generate(idp_jws_key_kid(ours), &elsewhere, NULL), IDP_OK);
	assert_int_equal(idp_jws_sign(elsewhere, IDP_JWS_TYP_ACCESS, c, &forged, NULL, NULL),
	                 IDP_OK);
	idp_jws_key_unref(elsewhere);
	idp_jws_key_unref(ours);
	json_decref(c);
	json_decref(dc);

	/* Notifications flowing (after the listener's first reload): not ours. */
	assert_int_equal(introspect_until(&w.w, stranger, 200), 200);
	assert_false(active(&w.w, stranger));
	assert_int_equal(world_revoke_as(&w.w, bearer(w.w.k.admin), stranger, NULL), 200);
	assert_true(active(&w.w, live));

	assert_int_equal(harness_pg_stop("immediate"), 0);
	assert_int_equal(introspect_until(&w.w, stranger, 503), 503);
	introspect(&w.w, stranger, &r);
	assert_int_equal(r.status, 503);
	assert_string_equal(json_string_value(json_object_get(r.json, "code")), "unavailable");
	harness_resp_free(&r);
	assert_int_equal(world_revoke_as(&w.w, bearer(w.w.k.admin), stranger, NULL), 503);
	/* A bad signature under a key idpd knows is still a definite answer. */
	assert_false(active(&w.w, forged));

	assert_int_equal(harness_pg_start(), 0);
	st = introspect_until_s(&w.w, stranger, 200, 30);
	if (st != 200)
		harness_idpd_dump_log(&w.w.p);
	assert_int_equal(st, 200);
	assert_false(active(&w.w, stranger));
	assert_true(active(&w.w, live));
	free(live);
	free(stranger);
	free(forged);
	setting_stop(&w);
}

/*
 * The listener reconnects but the key reload after it fails: unknown key
 * ids stay 503 (idpd still cannot know), and the refresher retries until a
 * reload succeeds, with no further reconnect or notification to prompt it.
 */
static void
a_failed_key_reload_after_a_reconnect_is_retried(void **state)
{
	struct setting w;
	struct idp_jws_key *elsewhere = NULL;
	json_t *dc, *c;
	char *stranger, n[32];
	long long now = (long long)time(NULL);

	(void)state;
	setting_start(&w, "t_rev_kid_retry", "60s");
	dc = claims_of(&w.sg, w.d1, TASK_TOKEN_TYP);
	assert_int_equal(idp_jws_key_generate("published-elsewhere", &elsewhere, NULL), IDP_OK);
	c = access_claims(dc, "https://s3.internal", now, now + 600);
	assert_int_equal(idp_jws_sign(elsewhere, IDP_JWS_TYP_ACCESS, c, &stranger, NULL, NULL),
	                 IDP_OK);
	idp_jws_key_unref(elsewhere);
	json_decref(c);
	json_decref(dc);
	assert_int_equal(introspect_until(&w.w, stranger, 200), 200);
	assert_false(active(&w.w, stranger));

	/* The keys cannot be read, and the listener's session is cut. */
	assert_int_equal(
	    harness_sql("t_rev_kid_retry", "ALTER TABLE signing_keys RENAME TO signing_keys_away"),
	    0);
	assert_int_equal(harness_sql_value("t_rev_kid_retry",
	                                   "SELECT count(pg_terminate_backend(pid)) FROM "
	                                   "pg_stat_activity WHERE datname = 't_rev_kid_retry' AND "
	                                   "application_name = 'idpd listener'",
	                                   n, sizeof(n)),
	                 0);
	assert_string_equal(n, "1");
	assert_int_equal(introspect_until(&w.w, stranger, 503), 503);
	/* Reconnected, reloads failing: still 503, a second later too. */
	usleep(1000000);
	{
		struct http_resp r;

		introspect(&w.w, stranger, &r);
		assert_int_equal(r.status, 503);
		harness_resp_free(&r);
	}

	/* The keys readable again: the refresher's next try ends the 503s. */
	assert_int_equal(
	    harness_sql("t_rev_kid_retry", "ALTER TABLE signing_keys_away RENAME TO signing_keys"),
	    0);
	assert_int_equal(introspect_until(&w.w, stranger, 200), 200);
	assert_false(active(&w.w, stranger));
	free(stranger);
	setting_stop(&w);
}

static void
postgres_down_means_503_after_max_staleness_then_correct_again(void **state)
{
	struct setting w;
	struct http_resp r;
	char *live, *dead;
	long st = 0;
	int64_t t0;

	(void)state;
	setting_start(&w, "t_rev_pgdown", "1s");
	live = mint_access(&w.sg, w.d1);
	dead = mint_access(&w.sg, w.d1);
	assert_int_equal(world_revoke_as(&w.w, bearer(w.w.k.admin), dead, NULL), 200);
	assert_true(active(&w.w, live));
	assert_false(active(&w.w, dead));

	assert_int_equal(harness_pg_stop("immediate"), 0);
	t0 = idp_mono_us();
	while (idp_mono_us() - t0 < 10 * 1000000LL) {
		introspect(&w.w, live, &r);
		st = r.status;
		if (st == 503)
			assert_string_equal(json_string_value(json_object_get(r.json, "code")),
			                    "unavailable");
		else
			assert_true(json_is_true(json_object_get(r.json, "active")));
		harness_resp_free(&r);
		if (st == 503)
			break;
		usleep(50000);
	}
	assert_int_equal(st, 503);
	/* Past max_staleness every answer is a 503, the revoked token's too: never a guess. */
	usleep(1200000);
	introspect(&w.w, live, &r);
	assert_int_equal(r.status, 503);
	harness_resp_free(&r);
	introspect(&w.w, dead, &r);
	assert_int_equal(r.status, 503);
	harness_resp_free(&r);
	world_call(&w.w, "GET", "/metrics", NULL, NULL, &r);
	assert_non_null(strstr(r.body, "idpd_revocation_current 0\n"));
	harness_resp_free(&r);

	assert_int_equal(harness_pg_start(), 0);
	t0 = idp_mono_us();
	st = 0;
	while (idp_mono_us() - t0 < 30 * 1000000LL) {
		introspect(&w.w, live, &r);
		st = r.status;
		harness_resp_free(&r);
		if (st == 200)
			break;
		usleep(100000);
	}
	assert_int_equal(st, 200);
	printf("introspection answered again %lld ms after PostgreSQL was started\n",
	       (long long)((idp_mono_us() - t0) / 1000));
	assert_true(active(&w.w, live));
	assert_false(active(&w.w, dead));
	free(live);
	free(dead);
	setting_stop(&w);
}

/*
 * A delegation token from an instance whose clock runs a little ahead (iat
 * two seconds in the future, within identity.leeway) still delegates (a
 * token past its exp is refused: test_access, expired_or_other_kind...).
 */
static void
a_delegation_token_from_a_clock_ahead_still_delegates(void **state)
{
	struct setting w;
	struct http_resp r;
	json_t *dc;
	char *ahead;
	long long now = (long long)time(NULL);

	(void)state;
	setting_start(&w, "t_rev_clock_ahead", NULL);
	dc = claims_of(&w.sg, w.d1, TASK_TOKEN_TYP);
	json_object_set_new(dc, "iat", json_integer(now + 2));
	ahead = sign_as(&w.sg, TASK_TOKEN_TYP, dc);
	world_delegation(&w.w, w.cloud, ahead, "sub-agent", "cloud:DescribeInstances", NULL, NULL,
	                 &r);
	if (r.status != 201)
		fprintf(stderr, "clock ahead: %ld %s\n", r.status, r.body);
	assert_int_equal(r.status, 201);
	harness_resp_free(&r);
	free(ahead);
	setting_stop(&w);
}

struct suspender {
	struct world *w;
	long status;
};

static void *
suspend_cloud_agent(void *arg)
{
	struct suspender *sp = arg;

	sp->status = harness_status(&sp->w->p, "POST", "/v1/agents/cloud-agent/suspend",
	                            sp->w->k.registrar, "{\"reason\":\"incident\"}");
	return NULL;
}

/*
 * A token issued while a suspension is under way (here: waiting for a row
 * lock, while every cache still says active) is cut by it, and stays cut
 * after a resume: the epoch is taken when the suspension writes, plus the
 * identity leeway, not when its transaction began.
 */
/* A world with planning-agent -> cloud-agent -> sub-agent, each allowing depth 3. */
static void
chain_world(struct world *w, const char *db, const struct world_opts *o)
{
	static const char *const ids[][3] = {
	    {"sub-agent", "helper", "[]"},
	    {"cloud-agent", "cloud-inventory", "[\"sub-agent\"]"},
	    {"planning-agent", "planner", "[\"cloud-agent\"]"},
	};

	world_start_opts(w, db, o);
	for (size_t i = 0; i < sizeof(ids) / sizeof(ids[0]); i++) {
		const struct world_agent a = {.id = ids[i][0],
		                              .type = ids[i][1],
		                              .owner = "alice@example.com",
		                              .caps = "[\"cloud:Describe*\"]",
		                              .delegate_to = ids[i][2],
		                              .max_depth = 3,
		                              .approvals = "[]"};

		world_agent(w, &a);
	}
}

static void
a_token_issued_during_a_suspension_does_not_survive_it(void **state)
{
	/* No leeway: the test pins the epoch to when the suspension writes,
	 * not to a margin that would cover a transaction's start anyway. */
	const struct world_opts o = {.max_ttl = "2h", .leeway = "0s"};
	char cred[4096], task_id[80], root_jti[80], url[512];
	char *alice, *root, *during;
	struct suspender sp;
	struct world w;
	pthread_t th;
	PGconn *pg;
	PGresult *r;

	(void)state;
	chain_world(&w, "t_rev_epoch", &o);
	world_credential(&w, "planning-agent", cred, sizeof(cred));
	alice = world_human_token("alice@example.com");
	world_task_ttl(&w, alice, "planning-agent", "[\"cloud:DescribeInstances\"]", "1h", task_id,
	               root_jti, &root);

	/* Another session holds cloud-agent's row: the suspension waits. */
	harness_db_url(w.db, url, sizeof(url));
	pg = PQconnectdb(url);
	assert_int_equal(PQstatus(pg), CONNECTION_OK);
	PQclear(PQexec(pg, "BEGIN"));
	r = PQexec(pg, "SELECT 1 FROM agents WHERE id = 'cloud-agent' FOR SHARE");
	assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
	PQclear(r);
	sp = (struct suspender){.w = &w};
	assert_int_equal(pthread_create(&th, NULL, suspend_cloud_agent, &sp), 0);
	sleep(2);
	during = world_delegate(&w, cred, root, "cloud-agent", "cloud:DescribeInstances", NULL);
	PQclear(PQexec(pg, "COMMIT"));
	PQfinish(pg);
	assert_int_equal(pthread_join(th, NULL), 0);
	assert_int_equal(sp.status, 200);
	assert_false(world_active(&w, during, NULL));
	assert_int_equal(
	    harness_status(&w.p, "POST", "/v1/agents/cloud-agent/resume", w.k.registrar, "{}"),
	    200);
	assert_false(world_active(&w, during, NULL));
	free(during);
	free(root);
	free(alice);
	world_stop(&w);
}

/*
 * A link whose agent was suspended after it was issued is dead, resumed or
 * not: it delegates nothing (before, the delegation was created, dead on
 * arrival), as it is refused by introspection and POST /v1/token.
 */
static void
a_link_cut_by_a_suspension_delegates_nothing(void **state)
{
	const struct world_opts o = {.max_ttl = "2h", .leeway = "0s"};
	char pcred[4096], ccred[4096], task_id[80], root_jti[80], sql[256];
	char *alice, *root, *d1;
	struct http_resp r;
	struct world w;

	(void)state;
	chain_world(&w, "t_rev_cut_link", &o);
	world_credential(&w, "planning-agent", pcred, sizeof(pcred));
	alice = world_human_token("alice@example.com");
	world_task_ttl(&w, alice, "planning-agent", "[\"cloud:DescribeInstances\"]", "1h", task_id,
	               root_jti, &root);
	d1 = world_delegate(&w, pcred, root, "cloud-agent", "cloud:DescribeInstances", NULL);
	sleep(1); /* iat has whole seconds */
	assert_int_equal(
	    harness_status(&w.p, "POST", "/v1/agents/cloud-agent/suspend", w.k.registrar, "{}"),
	    200);
	assert_int_equal(
	    harness_status(&w.p, "POST", "/v1/agents/cloud-agent/resume", w.k.registrar, "{}"),
	    200);
	sleep(1);
	world_credential(&w, "cloud-agent", ccred, sizeof(ccred));
	assert_false(world_active(&w, d1, NULL));
	world_delegation(&w, ccred, d1, "sub-agent", "cloud:DescribeInstances", NULL, NULL, &r);
	assert_int_equal(r.status, 403);
	assert_string_equal(json_string_value(json_object_get(r.json, "reason")),
	                    "chain_agent_inactive");
	harness_resp_free(&r);
	snprintf(sql, sizeof(sql),
	         "SELECT count(*) FROM delegation_tokens WHERE agent_id = 'sub-agent'");
	assert_int_equal(world_count(&w, sql), 0);
	free(d1);
	free(root);
	free(alice);
	world_stop(&w);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(introspect_active_token_carries_its_claims_and_a_recomputable_chain),
	    cmocka_unit_test(introspect_answers_exactly_active_false_for_bad_tokens),
	    cmocka_unit_test(revoking_a_delegation_token_cascades_to_everything_derived_from_it),
	    cmocka_unit_test(revoking_an_identity_credential_ends_its_use),
	    cmocka_unit_test(an_expired_credential_can_still_be_revoked_with_its_tokens),
	    cmocka_unit_test(completing_the_task_makes_every_token_inactive),
	    cmocka_unit_test(agent_decommissioned_or_suspended_mid_task_makes_its_tokens_inactive),
	    cmocka_unit_test(bad_callers_and_bad_bodies_are_refused_with_oauth_errors),
	    cmocka_unit_test(basic_credentials_are_form_decoded),
	    cmocka_unit_test(cleanup_job_prunes_revocations_past_their_expiry),
	    cmocka_unit_test(revocation_on_one_instance_reaches_the_other),
	    cmocka_unit_test(unknown_kid_is_503_while_key_notifications_are_lost),
	    cmocka_unit_test(a_failed_key_reload_after_a_reconnect_is_retried),
	    cmocka_unit_test(postgres_down_means_503_after_max_staleness_then_correct_again),
	    cmocka_unit_test(a_token_issued_during_a_suspension_does_not_survive_it),
	    cmocka_unit_test(a_link_cut_by_a_suspension_delegates_nothing),
	    cmocka_unit_test(a_delegation_token_from_a_clock_ahead_still_delegates),
	};

	return cmocka_run_group_tests(tests, NULL, world_teardown);
}
