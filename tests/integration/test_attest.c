/*
 * Integration tests of workload attestation and identity credentials
 * through idpd's HTTP API and a real PostgreSQL: join tokens (single use,
 * also under concurrent attempts; expiry; never stored or audited in
 * clear), jwt attestation with Kubernetes service-account-shaped (RS256)
 * and SPIRE JWT-SVID-shaped (ES256) tokens signed by test keys through
 * libjwt, the selector and issuer/audience/algorithm checks, agent status,
 * the audit trail, and authenticate_agent through GET /v1/me: valid,
 * expired, revoked, wrong audience, suspended after issuance,
 * decommissioned.
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

#include <jwt.h>
#include <libpq-fe.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include "harness.h"
#include "idpd/auth.h"
#include "idpd/b64.h"
#include "idpd/jws.h"

#define K8S_ISS "https://kubernetes.default.svc.cluster.local"
#define SPIRE_ISS "https://spire.example.org"

static char registrar_key[64], auditor_key[64], maint_key[64];
static char keys_toml[1024];

/* The attestors' test keys: PEM private halves for libjwt. */
static char *rsa_pem, *ec_k8s_pem, *ec_spire_pem;
static char jwks_k8s[256], jwks_spire[256];

static void
sleep_ms(int ms)
{
	struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};

	nanosleep(&ts, NULL);
}

static void
write_file(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");

	assert_non_null(f);
	assert_int_equal(fputs(text, f) >= 0, 1);
	assert_int_equal(fclose(f), 0);
}

static char *
jwks_of(struct idp_jws_key *const *keys, size_t n)
{
	json_t *doc = json_pack("{s:[]}", "keys");
	char *s;

	for (size_t i = 0; i < n; i++)
		json_array_append_new(json_object_get(doc, "keys"),
		                      idp_jws_key_public_jwk(keys[i]));
	s = json_dumps(doc, JSON_COMPACT);
	json_decref(doc);
	return s;
}

/* Keys for every test: an RSA and an EC key for "k8s", an EC key for "spire". */
static void
make_attestor_keys(void)
{
	struct idp_jws_key *rsa, *eck, *ecs, *k8s[2];
	struct idp_diag d;
	EVP_PKEY *pk;
	BIO *bio;
	char *pem, *doc;
	size_t len;
	long n;

	if (rsa_pem != NULL)
		return;
	idp_diag_init(&d);
	pk = EVP_RSA_gen(2048);
	assert_non_null(pk);
	bio = BIO_new(BIO_s_mem());
	assert_int_equal(PEM_write_bio_PrivateKey(bio, pk, NULL, NULL, 0, NULL, NULL), 1);
	n = BIO_get_mem_data(bio, &pem);
	rsa_pem = strndup(pem, (size_t)n);
	BIO_free(bio);
	EVP_PKEY_free(pk);
	assert_int_equal(idp_jws_key_from_pem(rsa_pem, strlen(rsa_pem), "rsa-k8s", &rsa, &d),
	                 IDP_OK);
	assert_int_equal(idp_jws_key_generate("ec-k8s", &eck, &d), IDP_OK);
	assert_int_equal(idp_jws_key_generate("ec-spire", &ecs, &d), IDP_OK);
	assert_int_equal(idp_jws_key_private_pem(eck, &ec_k8s_pem, &len), IDP_OK);
	assert_int_equal(idp_jws_key_private_pem(ecs, &ec_spire_pem, &len), IDP_OK);

	snprintf(jwks_k8s, sizeof(jwks_k8s), "/tmp/idpd-attest-k8s-%d.jwks.json", (int)getpid());
	snprintf(jwks_spire, sizeof(jwks_spire), "/tmp/idpd-attest-spire-%d.jwks.json",
	         (int)getpid());
	k8s[0] = rsa;
	k8s[1] = eck;
	doc = jwks_of(k8s, 2);
	write_file(jwks_k8s, doc);
	free(doc);
	doc = jwks_of(&ecs, 1);
	write_file(jwks_spire, doc);
	free(doc);
	idp_jws_key_unref(rsa);
	idp_jws_key_unref(eck);
	idp_jws_key_unref(ecs);
}

static void
make_keys(void)
{
	char h1[80], h2[80], h3[80];

	make_attestor_keys();
	if (keys_toml[0] != '\0')
		return;
	assert_int_equal(auth_key_generate(registrar_key, h1), IDP_OK);
	assert_int_equal(auth_key_generate(auditor_key, h2), IDP_OK);
	assert_int_equal(auth_key_generate(maint_key, h3), IDP_OK);
	snprintf(keys_toml, sizeof(keys_toml),
	         "[[api_keys]]\nname = \"ci-registrar\"\nhash = \"%s\"\nroles = [\"registrar\"]\n"
	         "[[api_keys]]\nname = \"siem-reader\"\nhash = \"%s\"\nroles = [\"auditor\"]\n"
	         "[[api_keys]]\nname = \"cron\"\nhash = \"%s\"\nroles = [\"maintenance\"]\n",
	         h1, h2, h3);
}

/* identity.leeway of the next start(). */
static const char *leeway = "0s";

static void
start(struct idpd_proc *p, const char *db, const char *identity)
{
	char toml[8192];

	make_keys();
	snprintf(toml, sizeof(toml),
	         "[identity]\ntrust_domain = \"example.org\"\nleeway = \"%s\"\n%s\n"
	         "[[attestors]]\nname = \"k8s\"\nissuer = \"" K8S_ISS "\"\naudience = \"idpd\"\n"
	         "jwks_file = \"%s\"\nalgs = [\"RS256\"]\n"
	         "selectors = \"k8s:ns=kubernetes.io/namespace "
	         "k8s:sa=kubernetes.io/serviceaccount/name\"\n"
	         "[[attestors]]\nname = \"spire\"\nissuer = \"" SPIRE_ISS
	         "\"\naudience = \"idpd\"\n"
	         "jwks_file = \"%s\"\nalgs = [\"ES256\"]\nselectors = \"spiffe_id=sub\"\n"
	         "max_token_age = \"10m\"\n%s",
	         leeway, identity ? identity : "", jwks_k8s, jwks_spire, keys_toml);
	assert_int_equal(harness_idpd_start(p, db, NULL, toml), 0);
}

/* Every request of these tests must get an answer. */
static void
call(const struct idpd_proc *p, const char *method, const char *path, const char *bearer,
     const char *body, struct http_resp *r)
{
	assert_int_equal(harness_call(p, method, path, bearer, body, r), 0);
}

static void
register_agent(const struct idpd_proc *p, const char *id, const char *selectors)
{
	char body[2048];
	struct http_resp r;

	snprintf(body, sizeof(body),
	         "{\"id\":\"%s\",\"agent_type\":\"planner\",\"owner\":\"alice@company.com\","
	         "\"capabilities\":[\"reports:read\"],\"delegation_constraints\":{"
	         "\"max_chain_depth\":1,\"max_scope_per_delegation\":\"read\",\"requires_human_"
	         "approval_for\":[]},"
	         "\"credential\":{\"rotation\":\"30m\"},\"attestation_selectors\":%s}",
	         id, selectors ? selectors : "[]");
	call(p, "POST", "/v1/agents", registrar_key, body, &r);
	if (r.status != 201)
		fprintf(stderr, "register %s: %ld %s\n", id, r.status, r.body);
	assert_int_equal(r.status, 201);
	harness_resp_free(&r);
}

/* A fresh join token for id (copied into out). */
static void
join_token(const struct idpd_proc *p, const char *id, char *out, size_t len)
{
	char path[256];
	struct http_resp r;

	snprintf(path, sizeof(path), "/v1/agents/%s/join-tokens", id);
	call(p, "POST", path, registrar_key, NULL, &r);
	assert_int_equal(r.status, 201);
	assert_non_null(json_string_value(json_object_get(r.json, "join_token")));
	assert_non_null(json_string_value(json_object_get(r.json, "expires_at")));
	snprintf(out, len, "%s", json_string_value(json_object_get(r.json, "join_token")));
	harness_resp_free(&r);
}

/* POST /v1/agents/{id}/attest with body; the response in r. */
static void
attest(const struct idpd_proc *p, const char *id, const char *body, struct http_resp *r)
{
	char path[256];

	snprintf(path, sizeof(path), "/v1/agents/%s/attest", id);
	call(p, "POST", path, NULL, body, r);
}

static long
attest_join(const struct idpd_proc *p, const char *id, const char *tok, char *cred, size_t len)
{
	char body[512];
	struct http_resp r;
	long st;

	snprintf(body, sizeof(body), "{\"method\":\"join_token\",\"join_token\":\"%s\"}", tok);
	attest(p, id, body, &r);
	st = r.status;
	if (st == 200 && cred != NULL)
		snprintf(cred, len, "%s", json_string_value(json_object_get(r.json, "credential")));
	harness_resp_free(&r);
	return st;
}

static long
attest_jwt(const struct idpd_proc *p, const char *id, const char *tok, char *cred, size_t len)
{
	char body[8192];
	struct http_resp r;
	long st;

	snprintf(body, sizeof(body), "{\"method\":\"jwt\",\"token\":\"%s\"}", tok);
	attest(p, id, body, &r);
	st = r.status;
	if (st == 200 && cred != NULL)
		snprintf(cred, len, "%s", json_string_value(json_object_get(r.json, "credential")));
	if (st != 200 && st != 401 && st != 403)
		fprintf(stderr, "attest %s: %ld %s\n", id, r.status, r.body);
	harness_resp_free(&r);
	return st;
}

/* The audit reason of the latest agent.attestation_failed event of agent id. */
static void
last_failure(const char *db, const char *id, char *out, size_t len)
{
	char sql[512];

	snprintf(sql, sizeof(sql),
	         "SELECT body::json->'detail'->>'reason' FROM audit_events WHERE type = "
	         "'agent.attestation_failed' AND agent_id = '%s' ORDER BY id DESC LIMIT 1",
	         id);
	assert_int_equal(harness_sql_value(db, sql, out, len), 0);
}

/*
 * The latest failure's reason is want.  A failure's event is queued
 * without waiting for its commit, so it may land just after the answer.
 */
static void
assert_last_failure(const char *db, const char *id, const char *want)
{
	char got[128] = "", sql[512];

	snprintf(sql, sizeof(sql),
	         "SELECT coalesce((SELECT body::json->'detail'->>'reason' FROM audit_events WHERE "
	         "type = 'agent.attestation_failed' AND agent_id = '%s' ORDER BY id DESC LIMIT 1), "
	         "'')",
	         id);
	for (int i = 0; i < 300; i++) {
		if (harness_sql_value(db, sql, got, sizeof(got)) == 0 && strcmp(got, want) == 0)
			return;
		sleep_ms(10);
	}
	last_failure(db, id, got, sizeof(got));
	assert_string_equal(got, want);
}

static long
me_status(const struct idpd_proc *p, const char *cred)
{
	return harness_status(p, "GET", "/v1/me", cred, NULL);
}

/* ---- workload tokens ---- */

enum signer { RSA_K8S, EC_K8S, EC_SPIRE };

/*
 * A workload token: claims (a JSON object text) signed by signer, exp from
 * now, and iat now unless with_iat is false.
 */
static char *
workload_token_iat(enum signer s, const char *claims_json, bool with_iat, long exp_in_s)
{
	const char *pem = s == RSA_K8S ? rsa_pem : s == EC_K8S ? ec_k8s_pem : ec_spire_pem;
	const char *kid = s == RSA_K8S ? "rsa-k8s" : s == EC_K8S ? "ec-k8s" : "ec-spire";
	jwt_t *j = NULL;
	json_t *c;
	char *claims, *tok, *out;

	c = json_loads(claims_json, 0, NULL);
	assert_non_null(c);
	if (with_iat)
		json_object_set_new(c, "iat", json_integer((json_int_t)time(NULL)));
	json_object_set_new(c, "exp", json_integer((json_int_t)time(NULL) + exp_in_s));
	claims = json_dumps(c, JSON_COMPACT);
	json_decref(c);
	assert_int_equal(jwt_new(&j), 0);
	assert_int_equal(jwt_add_grants_json(j, claims), 0);
	assert_int_equal(jwt_add_header(j, "kid", kid), 0);
	assert_int_equal(jwt_set_alg(j, s == RSA_K8S ? JWT_ALG_RS256 : JWT_ALG_ES256,
	                             (const unsigned char *)pem, (int)strlen(pem)),
	                 0);
	tok = jwt_encode_str(j);
	assert_non_null(tok);
	out = strdup(tok);
	free(tok);
	jwt_free(j);
	free(claims);
	return out;
}

static char *
workload_token(enum signer s, const char *claims_json, long exp_in_s)
{
	return workload_token_iat(s, claims_json, true, exp_in_s);
}

/* Kubernetes service-account token claims (projected, audience idpd). */
static void
k8s_claims(char *claims, size_t len, const char *iss, const char *aud, const char *ns,
           const char *sa)
{
	snprintf(claims, len,
	         "{\"iss\":\"%s\",\"aud\":[\"%s\"],\"sub\":\"system:serviceaccount:%s:%s\","
	         "\"kubernetes.io\":{\"namespace\":\"%s\",\"serviceaccount\":{\"name\":\"%s\","
	         "\"uid\":\"0b7c3f1e-1d2a-4f5b-8c9d-0e1f2a3b4c5d\"},\"pod\":{\"name\":"
	         "\"planner-7d9f\",\"uid\":\"a0d2b1c4-1111-2222-3333-444455556666\"}}}",
	         iss, aud, ns, sa, ns, sa);
}

static char *
k8s_token(enum signer s, const char *iss, const char *aud, const char *ns, const char *sa,
          long exp_in_s)
{
	char claims[1024];

	k8s_claims(claims, sizeof(claims), iss, aud, ns, sa);
	return workload_token(s, claims, exp_in_s);
}

/* SPIRE JWT-SVID claims. */
static char *
svid_token(const char *spiffe_id, long exp_in_s)
{
	char claims[512];

	snprintf(claims, sizeof(claims),
	         "{\"iss\":\"" SPIRE_ISS "\",\"aud\":[\"idpd\"],\"sub\":\"%s\"}", spiffe_id);
	return workload_token(EC_SPIRE, claims, exp_in_s);
}

/* The payload of a compact JWT, parsed. */
static json_t *
jwt_payload(const char *tok)
{
	const char *a = strchr(tok, '.'), *b = a ? strchr(a + 1, '.') : NULL;
	unsigned char *raw = NULL;
	size_t n = 0;
	json_t *j;

	assert_non_null(b);
	assert_int_equal(idp_b64url_decode_alloc(a + 1, (size_t)(b - a - 1), &raw, &n), IDP_OK);
	j = json_loadb((const char *)raw, n, 0, NULL);
	free(raw);
	assert_non_null(j);
	return j;
}

/* ---- join tokens ---- */

static void
join_token_attests_once_and_is_never_stored_in_clear(void **state)
{
	struct idpd_proc p;
	struct http_resp r;
	char tok[128], cred[4096], v[4096], sql[512];
	json_t *claims;

	(void)state;
	assert_int_equal(harness_db_create("t_att_join"), 0);
	start(&p, "t_att_join", NULL);
	register_agent(&p, "planner-1", NULL);

	/* Only a registrar (or admin) makes join tokens. */
	assert_int_equal(harness_status(&p, "POST", "/v1/agents/planner-1/join-tokens", NULL, NULL),
	                 401);
	assert_int_equal(
	    harness_status(&p, "POST", "/v1/agents/planner-1/join-tokens", auditor_key, NULL), 403);
	assert_int_equal(
	    harness_status(&p, "POST", "/v1/agents/nobody/join-tokens", registrar_key, NULL), 404);
	join_token(&p, "planner-1", tok, sizeof(tok));

	attest(&p, "planner-1", "{\"method\":\"join_token\",\"join_token\":\"x\",\"extra\":1}", &r);
	assert_int_equal(r.status, 400);
	harness_resp_free(&r);

	snprintf(v, sizeof(v), "{\"method\":\"join_token\",\"join_token\":\"%s\"}", tok);
	attest(&p, "planner-1", v, &r);
	assert_int_equal(r.status, 200);
	assert_string_equal(json_string_value(json_object_get(r.json, "spiffe_id")),
	                    "spiffe://example.org/agent/planner-1");
	snprintf(cred, sizeof(cred), "%s",
	         json_string_value(json_object_get(r.json, "credential")));
	claims = jwt_payload(cred);
	assert_string_equal(json_string_value(json_object_get(claims, "sub")),
	                    "spiffe://example.org/agent/planner-1");
	assert_string_equal(json_string_value(json_object_get(claims, "aud")), "idpd");
	assert_string_equal(json_string_value(json_object_get(claims, "jti")),
	                    json_string_value(json_object_get(r.json, "jti")));
	/* The lifetime is the record's rotation interval (30m). */
	assert_int_equal(json_integer_value(json_object_get(claims, "exp")) -
	                     json_integer_value(json_object_get(claims, "iat")),
	                 1800);
	/* The jti is recorded. */
	snprintf(sql, sizeof(sql),
	         "SELECT agent_id || ',' || method FROM agent_credentials WHERE jti = '%s'",
	         json_string_value(json_object_get(claims, "jti")));
	assert_int_equal(harness_sql_value("t_att_join", sql, v, sizeof(v)), 0);
	assert_string_equal(v, "planner-1,join_token");
	json_decref(claims);
	harness_resp_free(&r);

	/* The record says when the credential was last rotated. */
	call(&p, "GET", "/v1/agents/planner-1", auditor_key, NULL, &r);
	assert_int_equal(r.status, 200);
	assert_true(
	    json_is_string(json_object_get(json_object_get(r.json, "credential"), "last_rotated")));
	harness_resp_free(&r);

	/* The credential authenticates the agent. */
	call(&p, "GET", "/v1/me", cred, NULL, &r);
	assert_int_equal(r.status, 200);
	assert_string_equal(json_string_value(json_object_get(r.json, "id")), "planner-1");
	harness_resp_free(&r);
	/* A body or a query is refused, once the agent is known: a stranger
	 * gets the 401 whatever else the request carries. */
	call(&p, "GET", "/v1/me", cred, "{\"fields\":[\"id\"]}", &r);
	assert_int_equal(r.status, 400);
	assert_string_equal(json_string_value(json_object_get(r.json, "code")), "bad_request");
	assert_null(json_object_get(r.json, "id"));
	harness_resp_free(&r);
	assert_int_equal(harness_status(&p, "GET", "/v1/me?fields=id", cred, NULL), 400);
	assert_int_equal(harness_status(&p, "GET", "/v1/me", NULL, "{}"), 401);
	assert_int_equal(harness_status(&p, "GET", "/v1/me?fields=id", NULL, NULL), 401);
	assert_int_equal(harness_status(&p, "GET", "/v1/me", cred, ""), 200);

	/* Spent: a second use fails with the generic 401. */
	attest(
	    &p, "planner-1",
	    (snprintf(v, sizeof(v), "{\"method\":\"join_token\",\"join_token\":\"%s\"}", tok), v),
	    &r);
	assert_int_equal(r.status, 401);
	assert_string_equal(json_string_value(json_object_get(r.json, "detail")),
	                    "the evidence does not prove this agent's identity");
	harness_resp_free(&r);
	assert_last_failure("t_att_join", "planner-1", "join_token_used");
	assert_int_equal(attest_join(&p, "planner-1", "idpj_not-a-token", NULL, 0), 401);
	assert_last_failure("t_att_join", "planner-1", "join_token_malformed");

	/* Neither the table nor the audit log holds the secret. */
	snprintf(sql, sizeof(sql), "SELECT count(*) FROM audit_events WHERE body LIKE '%%%s%%'",
	         tok + 5);
	assert_int_equal(harness_sql_value("t_att_join", sql, v, sizeof(v)), 0);
	assert_string_equal(v, "0");
	snprintf(sql, sizeof(sql),
	         "SELECT count(*) FROM agent_join_tokens WHERE token_hash = encode(sha256('%s'), "
	         "'hex') AND used_at IS NOT NULL",
	         tok);
	assert_int_equal(harness_sql_value("t_att_join", sql, v, sizeof(v)), 0);
	assert_string_equal(v, "1");
	assert_int_equal(harness_sql_value("t_att_join",
	                                   "SELECT string_agg(type, ',' ORDER BY id) FROM "
	                                   "audit_events WHERE type LIKE 'agent.%' AND type <> "
	                                   "'agent.registered'",
	                                   v, sizeof(v)),
	                 0);
	/* The first failure is the body with an extra field (evidence_malformed). */
	assert_string_equal(v, "agent.join_token_created,agent.attestation_failed,agent.attested,"
	                       "agent.attestation_failed,agent.attestation_failed");
	assert_int_equal(
	    harness_sql_value("t_att_join",
	                      "SELECT body::json->'detail'->>'method' || ',' || "
	                      "(body::json->'authorization'->>'token_id' = "
	                      "body::json->'detail'->>'jti') FROM audit_events WHERE type = "
	                      "'agent.attested'",
	                      v, sizeof(v)),
	    0);
	assert_string_equal(v, "join_token,true");
	assert_int_equal(harness_idpd_stop(&p, SIGTERM, 10000), 0);
}

static void
join_token_expired_or_for_another_agent_is_refused(void **state)
{
	struct idpd_proc p;
	char tok[128], tok2[128];

	(void)state;
	assert_int_equal(harness_db_create("t_att_expired"), 0);
	start(&p, "t_att_expired", NULL);
	register_agent(&p, "planner-1", NULL);
	register_agent(&p, "planner-2", NULL);
	join_token(&p, "planner-1", tok, sizeof(tok));
	join_token(&p, "planner-1", tok2, sizeof(tok2));
	assert_int_equal(harness_sql("t_att_expired",
	                             "UPDATE agent_join_tokens SET created_at = now() - interval "
	                             "'2 hours', expires_at = now() - interval '1 hour' WHERE id = "
	                             "(SELECT min(id) FROM agent_join_tokens)"),
	                 0);
	assert_int_equal(attest_join(&p, "planner-1", tok, NULL, 0), 401);
	assert_last_failure("t_att_expired", "planner-1", "join_token_expired");
	/* A token is bound to its agent, and stays unspent when misused. */
	assert_int_equal(attest_join(&p, "planner-2", tok2, NULL, 0), 401);
	assert_last_failure("t_att_expired", "planner-2", "join_token_other_agent");
	assert_int_equal(attest_join(&p, "planner-1", tok2, NULL, 0), 200);

	/* The cron job removes spent and expired join tokens and expired
	 * credential records once they are a day old; fresh ones stay. */
	{
		struct http_resp r;
		json_t *job;
		char n[32];

		join_token(&p, "planner-1", tok, sizeof(tok)); /* unspent, fresh: kept */
		assert_int_equal(
		    harness_sql("t_att_expired",
		                "UPDATE agent_join_tokens SET created_at = now() - "
		                "interval '3 days', expires_at = now() - interval '2 days', "
		                "used_at = CASE WHEN used_at IS NULL THEN NULL ELSE now() - "
		                "interval '2 days' END WHERE id < (SELECT max(id) FROM "
		                "agent_join_tokens)"),
		    0);
		assert_int_equal(
		    harness_sql("t_att_expired",
		                "UPDATE agent_credentials SET issued_at = now() - interval "
		                "'3 days', expires_at = now() - interval '2 days'"),
		    0);
		call(&p, "POST", "/v1/maintenance/cleanup", maint_key, NULL, &r);
		assert_int_equal(r.status, 200);
		job = json_object_get(json_object_get(r.json, "jobs"), "attestation");
		assert_non_null(job);
		assert_int_equal(json_integer_value(json_object_get(job, "join_tokens_deleted")),
		                 2);
		assert_int_equal(json_integer_value(json_object_get(job, "credentials_deleted")),
		                 1);
		harness_resp_free(&r);
		assert_int_equal(harness_sql_value("t_att_expired",
		                                   "SELECT count(*) FROM agent_join_tokens", n,
		                                   sizeof(n)),
		                 0);
		assert_string_equal(n, "1");
		/* Idempotent: a second run finds nothing more. */
		call(&p, "POST", "/v1/maintenance/cleanup", maint_key, NULL, &r);
		job = json_object_get(json_object_get(r.json, "jobs"), "attestation");
		assert_int_equal(json_integer_value(json_object_get(job, "join_tokens_deleted")),
		                 0);
		harness_resp_free(&r);
	}
	assert_int_equal(harness_idpd_stop(&p, SIGTERM, 10000), 0);
}

struct racer {
	const struct idpd_proc *p;
	const char *tok;
	long status;
};

static void *
race(void *arg)
{
	struct racer *r = arg;
	char body[512], url[512];
	const char *h[] = {"Content-Type: application/json", NULL};
	struct http_resp resp;

	snprintf(body, sizeof(body), "{\"method\":\"join_token\",\"join_token\":\"%s\"}", r->tok);
	snprintf(url, sizeof(url), "%s/v1/agents/planner-1/attest", r->p->base);
	r->status = harness_http("POST", url, h, body, strlen(body), &resp) == 0 ? resp.status : -1;
	if (r->status >= 0)
		harness_resp_free(&resp);
	return NULL;
}

static void
join_token_concurrent_uses_succeed_exactly_once(void **state)
{
	struct idpd_proc p;
	char tok[128], v[64];
	struct racer rs[8];
	pthread_t th[8];
	int ok = 0, refused = 0;

	(void)state;
	assert_int_equal(harness_db_create("t_att_race"), 0);
	start(&p, "t_att_race", NULL);
	register_agent(&p, "planner-1", NULL);
	for (int round = 0; round < 3; round++) {
		join_token(&p, "planner-1", tok, sizeof(tok));
		for (int i = 0; i < 8; i++) {
			rs[i].p = &p;
			rs[i].tok = tok;
			assert_int_equal(pthread_create(&th[i], NULL, race, &rs[i]), 0);
		}
		for (int i = 0; i < 8; i++) {
			assert_int_equal(pthread_join(th[i], NULL), 0);
			ok += rs[i].status == 200;
			refused += rs[i].status == 401;
		}
	}
	assert_int_equal(ok, 3);
	assert_int_equal(refused, 21);
	assert_int_equal(
	    harness_sql_value("t_att_race", "SELECT count(*) FROM agent_credentials", v, sizeof(v)),
	    0);
	assert_string_equal(v, "3");
	assert_int_equal(harness_idpd_stop(&p, SIGTERM, 10000), 0);
}

static void
suspended_or_decommissioned_agent_cannot_attest(void **state)
{
	struct idpd_proc p;
	struct http_resp r;
	char tok[128], tok2[128];

	(void)state;
	assert_int_equal(harness_db_create("t_att_status"), 0);
	start(&p, "t_att_status", NULL);
	register_agent(&p, "planner-1", NULL);
	register_agent(&p, "planner-2", NULL);
	join_token(&p, "planner-1", tok, sizeof(tok));
	join_token(&p, "planner-2", tok2, sizeof(tok2));
	assert_int_equal(
	    harness_status(&p, "POST", "/v1/agents/planner-1/suspend", registrar_key, NULL), 200);
	/* The join token made before the suspension died with it ... */
	assert_int_equal(attest_join(&p, "planner-1", tok, NULL, 0), 401);
	assert_last_failure("t_att_status", "planner-1", "join_token_revoked");
	/* ... and one made since proves the agent, which is suspended. */
	join_token(&p, "planner-1", tok, sizeof(tok));
	assert_int_equal(attest_join(&p, "planner-1", tok, NULL, 0), 403);
	assert_last_failure("t_att_status", "planner-1", "agent_suspended");
	call(&p, "POST", "/v1/agents/planner-2/decommission", registrar_key,
	     "{\"reason\":\"retired\"}", &r);
	assert_int_equal(r.status, 200);
	harness_resp_free(&r);
	assert_int_equal(attest_join(&p, "planner-2", tok2, NULL, 0), 401);
	assert_last_failure("t_att_status", "planner-2", "join_token_revoked");
	/* No join token for a decommissioned agent. */
	assert_int_equal(
	    harness_status(&p, "POST", "/v1/agents/planner-2/join-tokens", registrar_key, NULL),
	    409);
	/* A workload token that is not the agent's learns nothing of its status:
	 * 401 as for an active or unknown agent; the agent's own evidence gets 403. */
	register_agent(&p, "k8s-held", "[\"k8s:ns:agents\",\"k8s:sa:planner\"]");
	assert_int_equal(
	    harness_status(&p, "POST", "/v1/agents/k8s-held/suspend", registrar_key, NULL), 200);
	{
		char *intruder = k8s_token(RSA_K8S, K8S_ISS, "idpd", "dev", "intruder", 600);
		char *own = k8s_token(RSA_K8S, K8S_ISS, "idpd", "agents", "planner", 600);

		assert_int_equal(attest_jwt(&p, "k8s-held", intruder, NULL, 0), 401);
		assert_last_failure("t_att_status", "k8s-held", "selector_mismatch");
		assert_int_equal(attest_jwt(&p, "k8s-held", own, NULL, 0), 403);
		assert_last_failure("t_att_status", "k8s-held", "agent_suspended");
		free(intruder);
		free(own);
	}
	/* The refused attempt did not spend the token made during the
	 * suspension: resumed, the agent attests with it. */
	assert_int_equal(
	    harness_status(&p, "POST", "/v1/agents/planner-1/resume", registrar_key, NULL), 200);
	sleep_ms(1100); /* past the suspension's second: the epoch is behind */
	assert_int_equal(attest_join(&p, "planner-1", tok, NULL, 0), 200);
	assert_int_equal(harness_idpd_stop(&p, SIGTERM, 10000), 0);
}

/*
 * Within identity.leeway of a suspension the agent's revocation epoch is
 * still ahead: a join token made then, or a credential signed then, would be
 * dead at birth.  Both get 503 with Retry-After and spend nothing; the
 * retries then work.
 */
static void
attest_just_after_a_resume_waits_for_the_epoch(void **state)
{
	struct idpd_proc p;
	struct http_resp r;
	char tok[128], ra[16], cred[2048], used[16];
	char *own;

	(void)state;
	assert_int_equal(harness_db_create("t_att_epoch"), 0);
	leeway = "2s";
	start(&p, "t_att_epoch", NULL);
	leeway = "0s";
	register_agent(&p, "k8s-held", "[\"k8s:ns:agents\",\"k8s:sa:planner\"]");
	assert_int_equal(
	    harness_status(&p, "POST", "/v1/agents/k8s-held/suspend", registrar_key, NULL), 200);
	assert_int_equal(
	    harness_status(&p, "POST", "/v1/agents/k8s-held/resume", registrar_key, NULL), 200);
	/* A join token now would predate the epoch. */
	call(&p, "POST", "/v1/agents/k8s-held/join-tokens", registrar_key, NULL, &r);
	assert_int_equal(r.status, 503);
	assert_true(harness_resp_header(&r, "Retry-After", ra, sizeof(ra)));
	assert_true(atoi(ra) >= 1 && atoi(ra) <= 3);
	harness_resp_free(&r);
	/* So would a credential: the workload's own token is refused for now. */
	own = k8s_token(RSA_K8S, K8S_ISS, "idpd", "agents", "planner", 600);
	{
		char body[8192];

		snprintf(body, sizeof(body), "{\"method\":\"jwt\",\"token\":\"%s\"}", own);
		attest(&p, "k8s-held", body, &r);
	}
	if (r.status != 503)
		fprintf(stderr, "attest: %ld %s\n", r.status, r.body);
	assert_int_equal(r.status, 503);
	assert_true(harness_resp_header(&r, "Retry-After", ra, sizeof(ra)));
	assert_true(atoi(ra) >= 1 && atoi(ra) <= 3);
	harness_resp_free(&r);
	assert_last_failure("t_att_epoch", "k8s-held", "revocation_epoch_ahead");
	assert_int_equal(harness_sql_value("t_att_epoch", "SELECT count(*) FROM agent_join_tokens",
	                                   used, sizeof(used)),
	                 0);
	assert_string_equal(used, "0");
	sleep_ms(atoi(ra) * 1000 + 100);
	assert_int_equal(attest_jwt(&p, "k8s-held", own, cred, sizeof(cred)), 200);
	assert_int_equal(me_status(&p, cred), 200);
	join_token(&p, "k8s-held", tok, sizeof(tok));
	assert_int_equal(attest_join(&p, "k8s-held", tok, NULL, 0), 200);
	free(own);
	assert_int_equal(harness_idpd_stop(&p, SIGTERM, 10000), 0);
}

/*
 * Two clusters' attestors that read the same selectors would let a workload
 * of one attest as an agent meant for the other: idpd refuses to start.
 */
static void
attestors_reading_the_same_selectors_are_refused(void **state)
{
	struct idpd_proc p;
	char toml[8192];

	(void)state;
	assert_int_equal(harness_db_create("t_att_overlap"), 0);
	make_keys();
	snprintf(toml, sizeof(toml),
	         "[identity]\ntrust_domain = \"example.org\"\n"
	         "[[attestors]]\nname = \"k8s-prod\"\nissuer = \"" K8S_ISS
	         "\"\naudience = \"idpd\"\n"
	         "jwks_file = \"%s\"\nselectors = \"k8s:ns=kubernetes.io/namespace\"\n"
	         "[[attestors]]\nname = \"k8s-staging\"\nissuer = \"https://staging.example\"\n"
	         "audience = \"idpd\"\njwks_file = \"%s\"\n"
	         "selectors = \"k8s=kubernetes.io/namespace\"\n%s",
	         jwks_k8s, jwks_k8s, keys_toml);
	assert_int_equal(harness_idpd_start(&p, "t_att_overlap", NULL, toml), -1);
	assert_true(harness_log_contains(&p, "both read selectors under"));
}

/* ---- jwt attestation ---- */

static void
jwt_attestation_with_kubernetes_and_spire_tokens(void **state)
{
	struct idpd_proc p;
	char cred[4096], v[512];
	char *t;

	(void)state;
	assert_int_equal(harness_db_create("t_att_jwt"), 0);
	start(&p, "t_att_jwt", NULL);
	register_agent(&p, "k8s-agent", "[\"k8s:ns:agents\",\"k8s:sa:planner\"]");
	register_agent(&p, "svid-agent",
	               "[\"spiffe_id:spiffe://example.org/ns/agents/sa/planner\"]");
	register_agent(&p, "bare-agent", NULL);

	/* A Kubernetes service-account token (RS256) whose claims satisfy both selectors. */
	t = k8s_token(RSA_K8S, K8S_ISS, "idpd", "agents", "planner", 600);
	assert_int_equal(attest_jwt(&p, "k8s-agent", t, cred, sizeof(cred)), 200);
	assert_int_equal(me_status(&p, cred), 200);
	/* The same token does not attest an agent with no selectors: fail closed. */
	assert_int_equal(attest_jwt(&p, "bare-agent", t, NULL, 0), 401);
	assert_last_failure("t_att_jwt", "bare-agent", "no_selectors");
	/* Nor one whose selectors it does not satisfy (unmapped prefix). */
	assert_int_equal(attest_jwt(&p, "svid-agent", t, NULL, 0), 401);
	assert_last_failure("t_att_jwt", "svid-agent", "selector_unmapped");
	free(t);
	assert_int_equal(
	    harness_sql_value("t_att_jwt",
	                      "SELECT body::json->'detail'->>'attestor' || ',' || "
	                      "(body::json->'detail'->'selectors')::text FROM audit_events WHERE "
	                      "type = 'agent.attested' AND agent_id = 'k8s-agent'",
	                      v, sizeof(v)),
	    0);
	assert_string_equal(v, "k8s,[\"k8s:ns:agents\",\"k8s:sa:planner\"]");

	/* Another service account: one selector fails. */
	t = k8s_token(RSA_K8S, K8S_ISS, "idpd", "agents", "intruder", 600);
	assert_int_equal(attest_jwt(&p, "k8s-agent", t, NULL, 0), 401);
	assert_last_failure("t_att_jwt", "k8s-agent", "selector_mismatch");
	assert_int_equal(harness_sql_value("t_att_jwt",
	                                   "SELECT body::json->'detail'->>'selector' FROM "
	                                   "audit_events WHERE type = 'agent.attestation_failed' "
	                                   "ORDER BY id DESC LIMIT 1",
	                                   v, sizeof(v)),
	                 0);
	assert_string_equal(v, "k8s:sa:planner");
	free(t);

	/* A SPIRE JWT-SVID (ES256) for the registered SPIFFE id. */
	t = svid_token("spiffe://example.org/ns/agents/sa/planner", 300);
	assert_int_equal(attest_jwt(&p, "svid-agent", t, cred, sizeof(cred)), 200);
	assert_int_equal(me_status(&p, cred), 200);
	free(t);
	t = svid_token("spiffe://example.org/ns/agents/sa/other", 300);
	assert_int_equal(attest_jwt(&p, "svid-agent", t, NULL, 0), 401);
	assert_last_failure("t_att_jwt", "svid-agent", "selector_mismatch");
	free(t);
	assert_int_equal(harness_idpd_stop(&p, SIGTERM, 10000), 0);
}

static void
jwt_attestation_refuses_wrong_issuer_audience_alg_and_expiry(void **state)
{
	struct idpd_proc p;
	char *t;

	(void)state;
	assert_int_equal(harness_db_create("t_att_jwt_bad"), 0);
	start(&p, "t_att_jwt_bad", NULL);
	register_agent(&p, "k8s-agent", "[\"k8s:ns:agents\",\"k8s:sa:planner\"]");

	t = k8s_token(RSA_K8S, "https://other-cluster.example", "idpd", "agents", "planner", 600);
	assert_int_equal(attest_jwt(&p, "k8s-agent", t, NULL, 0), 401);
	assert_last_failure("t_att_jwt_bad", "k8s-agent", "issuer_mismatch");
	free(t);
	t = k8s_token(RSA_K8S, K8S_ISS, "vault", "agents", "planner", 600);
	assert_int_equal(attest_jwt(&p, "k8s-agent", t, NULL, 0), 401);
	assert_last_failure("t_att_jwt_bad", "k8s-agent", "audience_mismatch");
	free(t);
	/* The k8s attestor allows RS256 only; its EC key does not make ES256 acceptable. */
	t = k8s_token(EC_K8S, K8S_ISS, "idpd", "agents", "planner", 600);
	assert_int_equal(attest_jwt(&p, "k8s-agent", t, NULL, 0), 401);
	assert_last_failure("t_att_jwt_bad", "k8s-agent", "alg_not_allowed");
	free(t);
	t = k8s_token(RSA_K8S, K8S_ISS, "idpd", "agents", "planner", -60);
	assert_int_equal(attest_jwt(&p, "k8s-agent", t, NULL, 0), 401);
	assert_last_failure("t_att_jwt_bad", "k8s-agent", "expired");
	free(t);
	/* A token signed by an unknown key. */
	assert_int_equal(
	    attest_jwt(&p, "k8s-agent", "eyJhbGciOiJSUzI1NiIsImtpZCI6Im5vcGUifQ.e30.c2ln", NULL, 0),
	    401);
	assert_last_failure("t_att_jwt_bad", "k8s-agent", "kid_unknown");
	/* A good token still works afterwards. */
	t = k8s_token(RSA_K8S, K8S_ISS, "idpd", "agents", "planner", 600);
	assert_int_equal(attest_jwt(&p, "k8s-agent", t, NULL, 0), 200);
	free(t);
	assert_int_equal(harness_idpd_stop(&p, SIGTERM, 10000), 0);
}

/* The exp claim of a compact JWT. */
static int64_t
exp_of(const char *tok)
{
	json_t *c = jwt_payload(tok);
	int64_t exp = json_integer_value(json_object_get(c, "exp"));

	json_decref(c);
	return exp;
}

static void
jwt_credential_ends_with_the_workload_token_and_long_lived_tokens_are_refused(void **state)
{
	struct idpd_proc p;
	char cred[4096], claims[1024];
	char *t;

	(void)state;
	assert_int_equal(harness_db_create("t_att_jwt_age"), 0);
	start(&p, "t_att_jwt_age", NULL);
	register_agent(&p, "k8s-agent", "[\"k8s:ns:agents\",\"k8s:sa:planner\"]");
	register_agent(&p, "svid-agent",
	               "[\"spiffe_id:spiffe://example.org/ns/agents/sa/planner\"]");

	/* The record's rotation is 30m; a token with 10 minutes left gives a
	 * credential that ends when the token does. */
	t = k8s_token(RSA_K8S, K8S_ISS, "idpd", "agents", "planner", 600);
	assert_int_equal(attest_jwt(&p, "k8s-agent", t, cred, sizeof(cred)), 200);
	assert_int_equal(exp_of(cred), exp_of(t));
	assert_int_equal(me_status(&p, cred), 200);
	free(t);

	/* k8s keeps the default max_token_age (1h): a token made for ten years
	 * is refused like any wrong evidence.  A token with neither iat nor
	 * nbf does not say how long it was made to last (one made for years
	 * would pass in its last hour), so it is refused too, however little
	 * is left of it. */
	t = k8s_token(RSA_K8S, K8S_ISS, "idpd", "agents", "planner", 10L * 365 * 86400);
	assert_int_equal(attest_jwt(&p, "k8s-agent", t, NULL, 0), 401);
	assert_last_failure("t_att_jwt_age", "k8s-agent", "token_lifetime_too_long");
	free(t);
	k8s_claims(claims, sizeof(claims), K8S_ISS, "idpd", "agents", "planner");
	t = workload_token_iat(RSA_K8S, claims, false, 1800);
	assert_int_equal(attest_jwt(&p, "k8s-agent", t, NULL, 0), 401);
	assert_last_failure("t_att_jwt_age", "k8s-agent", "token_issue_time_missing");
	free(t);
	/* Without iat, nbf says when it began: exp - nbf is judged. */
	{
		json_t *c = json_loads(claims, 0, NULL);
		char *with_nbf;

		assert_non_null(c);
		json_object_set_new(c, "nbf", json_integer((json_int_t)time(NULL)));
		with_nbf = json_dumps(c, JSON_COMPACT);
		json_decref(c);
		t = workload_token_iat(RSA_K8S, with_nbf, false, 2 * 3600);
		assert_int_equal(attest_jwt(&p, "k8s-agent", t, NULL, 0), 401);
		assert_last_failure("t_att_jwt_age", "k8s-agent", "token_lifetime_too_long");
		free(t);
		t = workload_token_iat(RSA_K8S, with_nbf, false, 1800);
		assert_int_equal(attest_jwt(&p, "k8s-agent", t, cred, sizeof(cred)), 200);
		assert_int_equal(exp_of(cred), exp_of(t));
		free(t);
		free(with_nbf);
	}
	t = k8s_token(RSA_K8S, K8S_ISS, "idpd", "agents", "planner", 3600);
	assert_int_equal(attest_jwt(&p, "k8s-agent", t, cred, sizeof(cred)), 200);
	/* Here the rotation (30m) ends the credential first. */
	assert_true(exp_of(cred) < exp_of(t));
	free(t);

	/* spire sets max_token_age = "10m". */
	t = svid_token("spiffe://example.org/ns/agents/sa/planner", 300);
	assert_int_equal(attest_jwt(&p, "svid-agent", t, cred, sizeof(cred)), 200);
	assert_int_equal(exp_of(cred), exp_of(t));
	free(t);
	t = svid_token("spiffe://example.org/ns/agents/sa/planner", 900);
	assert_int_equal(attest_jwt(&p, "svid-agent", t, NULL, 0), 401);
	assert_last_failure("t_att_jwt_age", "svid-agent", "token_lifetime_too_long");
	free(t);
	assert_int_equal(harness_idpd_stop(&p, SIGTERM, 10000), 0);
}

static int64_t
mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/*
 * While the audit log cannot commit, wrong evidence is still answered at
 * once (its event is queued, and lands once the log commits again), and
 * good evidence still gets no credential before its event is durable.
 */
static void
a_failed_attempt_is_audited_without_waiting_for_the_commit(void **state)
{
	struct idpd_proc p;
	char tok[128], url[256];
	PGconn *hold;
	PGresult *res;
	int64_t t0, took;

	(void)state;
	assert_int_equal(harness_db_create("t_att_nowait"), 0);
	start(&p, "t_att_nowait", "[audit]\ntimeout = \"3s\"\n");
	register_agent(&p, "agent-a", NULL);
	join_token(&p, "agent-a", tok, sizeof(tok));

	/* Another session holds audit_events: no batch can commit. */
	harness_db_url("t_att_nowait", url, sizeof(url));
	hold = PQconnectdb(url);
	assert_int_equal(PQstatus(hold), CONNECTION_OK);
	res = PQexec(hold, "BEGIN; LOCK TABLE audit_events IN ACCESS EXCLUSIVE MODE");
	assert_int_equal(PQresultStatus(res), PGRES_COMMAND_OK);
	PQclear(res);

	t0 = mono_ms();
	assert_int_equal(attest_join(&p, "agent-a", "idpj_not-a-token", NULL, 0), 401);
	took = mono_ms() - t0;
	assert_true(took < 1000);
	/* A good token: no credential without its durable event (503 after
	 * audit.timeout), and the token is not spent. */
	assert_int_equal(attest_join(&p, "agent-a", tok, NULL, 0), 503);

	res = PQexec(hold, "ROLLBACK");
	PQclear(res);
	PQfinish(hold);
	/* Both attempts are in the log once it commits again. */
	assert_last_failure("t_att_nowait", "agent-a", "unavailable");
	assert_int_equal(harness_sql_value("t_att_nowait",
	                                   "SELECT string_agg(body::json->'detail'->>'reason', ',' "
	                                   "ORDER BY id) FROM audit_events WHERE type = "
	                                   "'agent.attestation_failed'",
	                                   url, sizeof(url)),
	                 0);
	assert_string_equal(url, "join_token_malformed,unavailable");
	assert_int_equal(attest_join(&p, "agent-a", tok, NULL, 0), 200);
	assert_int_equal(harness_idpd_stop(&p, SIGTERM, 10000), 0);
}

/*
 * A body that is not evidence of either shape (not JSON, an unknown method,
 * an unknown field, evidence that is not a string) is a 400, and recorded as
 * wrong evidence is: agent.attestation_failed with reason
 * evidence_malformed, the method only when it is one of the two, and
 * nothing of what was sent.
 */
static void
a_malformed_attest_body_is_audited_without_the_evidence(void **state)
{
	static const struct {
		const char *body, *method;
	} cases[] = {
	    {"{\"method\":", ""},
	    {"{\"method\":\"password\",\"password\":\"hunter2-secret\"}", ""},
	    {"{\"method\":\"join_token\",\"join_token\":\"idpj_secret-in-transit\","
	     "\"extra\":1}",
	     "join_token"},
	    {"{\"method\":\"jwt\",\"token\":42}", "jwt"},
	};
	struct idpd_proc p;
	struct http_resp r;
	char want[256] = "", got[256] = "";

	(void)state;
	assert_int_equal(harness_db_create("t_att_malformed"), 0);
	start(&p, "t_att_malformed", NULL);
	register_agent(&p, "agent-m", NULL);
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		attest(&p, "agent-m", cases[i].body, &r);
		assert_int_equal(r.status, 400);
		harness_resp_free(&r);
		snprintf(want + strlen(want), sizeof(want) - strlen(want),
		         "%sevidence_malformed:%s", i > 0 ? "," : "", cases[i].method);
	}
	/* Queued without waiting: the events may land just after the answers. */
	for (int i = 0; i < 300 && strcmp(got, want) != 0; i++) {
		if (i > 0)
			sleep_ms(10);
		assert_int_equal(harness_sql_value(
		                     "t_att_malformed",
		                     "SELECT coalesce(string_agg((body::json->'detail'->>'reason') "
		                     "|| ':' || coalesce(body::json->'detail'->>'method', ''), ',' "
		                     "ORDER BY id), '') FROM audit_events WHERE type = "
		                     "'agent.attestation_failed' AND agent_id = 'agent-m' AND "
		                     "outcome = 'denied'",
		                     got, sizeof(got)),
		                 0);
	}
	assert_string_equal(got, want);
	assert_int_equal(harness_sql_value("t_att_malformed",
	                                   "SELECT count(*) FROM audit_events WHERE body LIKE "
	                                   "'%hunter2%' OR body LIKE '%secret-in-transit%' OR "
	                                   "body LIKE '%password%'",
	                                   got, sizeof(got)),
	                 0);
	assert_string_equal(got, "0");
	/* Nothing else happened to the agent. */
	assert_int_equal(harness_sql_value("t_att_malformed",
	                                   "SELECT count(*) FROM audit_events WHERE type LIKE "
	                                   "'agent.%' AND type NOT IN ('agent.registered', "
	                                   "'agent.attestation_failed')",
	                                   got, sizeof(got)),
	                 0);
	assert_string_equal(got, "0");
	assert_int_equal(harness_idpd_stop(&p, SIGTERM, 10000), 0);
}

/* ---- authenticate_agent, through GET /v1/me ---- */

static void
credential_revoked_suspended_or_decommissioned_does_not_authenticate(void **state)
{
	struct idpd_proc p;
	struct http_resp r;
	char tok[128], c1[4096], c2[4096], c3[4096], sql[512];
	json_t *claims;

	(void)state;
	assert_int_equal(harness_db_create("t_att_auth"), 0);
	start(&p, "t_att_auth", NULL);
	register_agent(&p, "agent-a", NULL);
	register_agent(&p, "agent-b", NULL);
	register_agent(&p, "agent-c", NULL);
	join_token(&p, "agent-a", tok, sizeof(tok));
	assert_int_equal(attest_join(&p, "agent-a", tok, c1, sizeof(c1)), 200);
	join_token(&p, "agent-b", tok, sizeof(tok));
	assert_int_equal(attest_join(&p, "agent-b", tok, c2, sizeof(c2)), 200);
	join_token(&p, "agent-c", tok, sizeof(tok));
	assert_int_equal(attest_join(&p, "agent-c", tok, c3, sizeof(c3)), 200);

	/* Valid. */
	assert_int_equal(me_status(&p, c1), 200);
	assert_int_equal(me_status(&p, c2), 200);
	assert_int_equal(me_status(&p, c3), 200);
	/* No credential, an operator key, or garbage. */
	assert_int_equal(me_status(&p, NULL), 401);
	assert_int_equal(me_status(&p, registrar_key), 401);
	assert_int_equal(me_status(&p, "a.b.c"), 401);

	/* Revoked by jti. */
	claims = jwt_payload(c1);
	snprintf(sql, sizeof(sql),
	         "UPDATE agent_credentials SET revoked_at = now() WHERE jti = '%s'",
	         json_string_value(json_object_get(claims, "jti")));
	json_decref(claims);
	assert_int_equal(harness_sql("t_att_auth", sql), 0);
	/* A revocation written by another session reaches idpd's revocation
	 * state by NOTIFY: within milliseconds, not within the same instant. */
	for (int i = 0; i < 200 && me_status(&p, c1) != 401; i++)
		usleep(10 * 1000);
	assert_int_equal(me_status(&p, c1), 401);

	/* Suspended after issuance; resuming does not revive the credential. */
	assert_int_equal(
	    harness_status(&p, "POST", "/v1/agents/agent-b/suspend", registrar_key, NULL), 200);
	assert_int_equal(me_status(&p, c2), 401);
	assert_int_equal(
	    harness_status(&p, "POST", "/v1/agents/agent-b/resume", registrar_key, NULL), 200);
	assert_int_equal(me_status(&p, c2), 401);

	/* Decommissioned. */
	call(&p, "POST", "/v1/agents/agent-c/decommission", registrar_key, "{\"reason\":\"gone\"}",
	     &r);
	assert_int_equal(r.status, 200);
	harness_resp_free(&r);
	assert_int_equal(me_status(&p, c3), 401);
	assert_true(harness_log_contains(&p, "(jti_revoked)"));
	assert_true(harness_log_contains(&p, "(agent_revoked)"));
	assert_int_equal(harness_idpd_stop(&p, SIGTERM, 10000), 0);
}

static void
credential_for_another_audience_does_not_authenticate(void **state)
{
	struct idpd_proc a, b;
	char tok[128], ca[4096], cb[4096];

	(void)state;
	assert_int_equal(harness_db_create("t_att_aud"), 0);
	start(&a, "t_att_aud", NULL);
	/* A second service on the same database, with its own audience. */
	start(&b, "t_att_aud", "audience = \"idpd-staging\"\n");
	register_agent(&a, "agent-a", NULL);
	join_token(&a, "agent-a", tok, sizeof(tok));
	assert_int_equal(attest_join(&a, "agent-a", tok, ca, sizeof(ca)), 200);
	join_token(&a, "agent-a", tok, sizeof(tok));
	assert_int_equal(attest_join(&b, "agent-a", tok, cb, sizeof(cb)), 200);
	assert_int_equal(me_status(&a, ca), 200);
	assert_int_equal(me_status(&b, cb), 200);
	assert_int_equal(me_status(&b, ca), 401);
	assert_int_equal(me_status(&a, cb), 401);
	assert_true(harness_log_contains(&b, "(audience_mismatch)"));
	assert_int_equal(harness_idpd_stop(&b, SIGTERM, 10000), 0);
	assert_int_equal(harness_idpd_stop(&a, SIGTERM, 10000), 0);
}

static void
credential_expires_with_the_signing_key_not_after(void **state)
{
	struct idpd_proc p;
	char tok[128], cred[4096];
	json_t *claims;
	int64_t lifetime = 0;

	(void)state;
	assert_int_equal(harness_db_create("t_att_exp"), 0);
	start(&p, "t_att_exp", NULL);
	register_agent(&p, "agent-a", NULL);
	/* The active key may sign for 3 more seconds: a credential issued now
	 * is cut to that, whatever the rotation interval says. */
	assert_int_equal(harness_sql("t_att_exp", "UPDATE signing_keys SET not_after = now() + "
	                                          "interval '3 seconds' WHERE state = 'active'"),
	                 0);
	for (int i = 0; i < 50; i++) {
		join_token(&p, "agent-a", tok, sizeof(tok));
		assert_int_equal(attest_join(&p, "agent-a", tok, cred, sizeof(cred)), 200);
		claims = jwt_payload(cred);
		lifetime = json_integer_value(json_object_get(claims, "exp")) -
		           json_integer_value(json_object_get(claims, "iat"));
		json_decref(claims);
		if (lifetime <= 3)
			break;
		sleep_ms(100); /* the key change is still on its way through NOTIFY */
	}
	assert_true(lifetime <= 3);
	assert_int_equal(me_status(&p, cred), 200);
	sleep_ms(4000);
	assert_int_equal(me_status(&p, cred), 401);
	assert_true(harness_log_contains(&p, "(expired)"));
	assert_int_equal(harness_idpd_stop(&p, SIGTERM, 10000), 0);
}

static int
teardown(void **state)
{
	(void)state;
	unlink(jwks_k8s);
	unlink(jwks_spire);
	return 0;
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(join_token_attests_once_and_is_never_stored_in_clear),
	    cmocka_unit_test(join_token_expired_or_for_another_agent_is_refused),
	    cmocka_unit_test(join_token_concurrent_uses_succeed_exactly_once),
	    cmocka_unit_test(suspended_or_decommissioned_agent_cannot_attest),
	    cmocka_unit_test(attest_just_after_a_resume_waits_for_the_epoch),
	    cmocka_unit_test(attestors_reading_the_same_selectors_are_refused),
	    cmocka_unit_test(jwt_attestation_with_kubernetes_and_spire_tokens),
	    cmocka_unit_test(jwt_attestation_refuses_wrong_issuer_audience_alg_and_expiry),
	    cmocka_unit_test(
	        jwt_credential_ends_with_the_workload_token_and_long_lived_tokens_are_refused),
	    cmocka_unit_test(a_failed_attempt_is_audited_without_waiting_for_the_commit),
	    cmocka_unit_test(a_malformed_attest_body_is_audited_without_the_evidence),
	    cmocka_unit_test(credential_revoked_suspended_or_decommissioned_does_not_authenticate),
	    cmocka_unit_test(credential_for_another_audience_does_not_authenticate),
	    cmocka_unit_test(credential_expires_with_the_signing_key_not_after),
	};

	return cmocka_run_group_tests(tests, NULL, teardown);
}
