/*
 * Integration tests of POST /v1/delegations through idpd's HTTP API and a
 * real PostgreSQL: a human starts a task for a planning agent, which
 * delegates a narrower token to a cloud agent.  The delegated token
 * verifies against the served JWKS, carries depth 1, the recomputable next
 * link of the hash chain and the nested act, and is stored with its
 * parent's jti.  Each refusal (delegate not allowed, scope wider than the
 * parent, outside the target's capabilities, above max_scope_per_delegation,
 * depth beyond max_chain_depth, lifetime beyond the parent's, someone
 * else's token, a completed task) is a 403 with its reason, is audited as
 * delegation.denied and issues nothing.
 */
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

#include "harness.h"
#include "idpd/auth.h"
#include "idpd/delegation.h"
#include "idpd/jws.h"
#include "idpd/tasks.h"

#define IDP_ISS "https://sso.example.com"

static char registrar_key[64];
static char keys_toml[512];
static struct idp_jws_key *idp_key;
static char jwks_path[64];

static void
setup_keys(void)
{
	char h1[80];
	json_t *doc;
	FILE *f;
	int fd;

	if (idp_key != NULL)
		return;
	assert_int_equal(idp_jws_key_generate("sso-1", &idp_key, NULL), IDP_OK);
	snprintf(jwks_path, sizeof(jwks_path), "/tmp/test_deleg_idp_XXXXXX");
	fd = mkstemp(jwks_path);
	assert_true(fd >= 0);
	f = fdopen(fd, "w");
	assert_non_null(f);
	doc = json_pack("{s:[o]}", "keys", idp_jws_key_public_jwk(idp_key));
	assert_int_equal(json_dumpf(doc, f, JSON_COMPACT), 0);
	json_decref(doc);
	assert_int_equal(fclose(f), 0);
	assert_int_equal(auth_key_generate(registrar_key, h1), IDP_OK);
	snprintf(keys_toml, sizeof(keys_toml),
	         "[[api_keys]]\nname = \"ci-registrar\"\nhash = \"%s\"\nroles = [\"registrar\"]\n",
	         h1);
}

static void
start(struct idpd_proc *p, const char *db)
{
	char toml[4096];

	setup_keys();
	assert_int_equal(harness_db_create(db), 0);
	snprintf(toml, sizeof(toml),
	         "[identity]\ntrust_domain = \"example.org\"\n"
	         "[tasks]\nmax_ttl = \"2h\"\n"
	         "[[idp]]\nname = \"corp\"\nissuer = \"" IDP_ISS "\"\naudience = \"idpd\"\n"
	         "jwks_file = \"%s\"\nalgs = [\"ES256\"]\nprincipal_claim = \"email\"\n%s",
	         jwks_path, keys_toml);
	assert_int_equal(harness_idpd_start(p, db, NULL, toml), 0);
}

static char *
human_token(const char *email)
{
	long long now = (long long)time(NULL);
	json_t *c =
	    json_pack("{s:s,s:s,s:s,s:I,s:I,s:s}", "iss", IDP_ISS, "sub", email, "aud", "idpd",
	              "iat", (json_int_t)(now - 5), "exp", (json_int_t)(now + 600), "email", email);
	char *tok = NULL;

	assert_int_equal(idp_jws_sign(idp_key, NULL, c, &tok, NULL, NULL), IDP_OK);
	json_decref(c);
	return tok;
}

static void
call(const struct idpd_proc *p, const char *method, const char *path, const char *bearer,
     const char *body, struct http_resp *r)
{
	assert_int_equal(harness_call(p, method, path, bearer, body, r), 0);
}

static void
register_agent(const struct idpd_proc *p, const char *id, const char *type, const char *caps,
               const char *delegate_to, int depth, const char *approvals)
{
	char body[2048];
	struct http_resp r;

	snprintf(body, sizeof(body),
	         "{\"id\":\"%s\",\"agent_type\":\"%s\",\"owner\":\"alice@example.com\","
	         "\"capabilities\":%s,\"delegate_to\":%s,"
	         "\"delegation_constraints\":{\"max_chain_depth\":%d,"
	         "\"max_scope_per_delegation\":\"read\",\"requires_human_approval_for\":%s},"
	         "\"credential\":{\"rotation\":\"30m\"}}",
	         id, type, caps, delegate_to, depth, approvals);
	call(p, "POST", "/v1/agents", registrar_key, body, &r);
	if (r.status != 201)
		fprintf(stderr, "register %s: %ld %s\n", id, r.status, r.body);
	assert_int_equal(r.status, 201);
	harness_resp_free(&r);
}

static void
agent_credential(const struct idpd_proc *p, const char *id, char *out, size_t len)
{
	char path[256], body[512];
	struct http_resp r;

	snprintf(path, sizeof(path), "/v1/agents/%s/join-tokens", id);
	call(p, "POST", path, registrar_key, NULL, &r);
	assert_int_equal(r.status, 201);
	snprintf(body, sizeof(body), "{\"method\":\"join_token\",\"join_token\":\"%s\"}",
	         json_string_value(json_object_get(r.json, "join_token")));
	harness_resp_free(&r);
	snprintf(path, sizeof(path), "/v1/agents/%s/attest", id);
	call(p, "POST", path, NULL, body, &r);
	assert_int_equal(r.status, 200);
	snprintf(out, len, "%s", json_string_value(json_object_get(r.json, "credential")));
	harness_resp_free(&r);
}

static long
count(const char *db, const char *sql)
{
	char v[64];

	assert_int_equal(harness_sql_value(db, sql, v, sizeof(v)), 0);
	return strtol(v, NULL, 10);
}

/* The world of these tests: a task opened by alice for planning-agent. */
struct world {
	struct idpd_proc p;
	const char *db;
	char planner[4096], cloud[4096], outsider[4096];
	char task_id[80], root_jti[80];
	char *root_token;
	char *alice;
};

static void
world_start(struct world *w, const char *db, const char *planner_approvals)
{
	struct http_resp r;

	memset(w, 0, sizeof(*w));
	w->db = db;
	start(&w->p, db);
	register_agent(&w->p, "cloud-agent", "cloud-inventory", "[\"cloud:Describe*\"]",
	               "[\"sub-agent\"]", 1, "[]");
	register_agent(&w->p, "report-agent", "reporter", "[\"reports:write\"]", "[]", 2, "[]");
	register_agent(&w->p, "sub-agent", "helper", "[\"cloud:Describe*\"]", "[]", 3, "[]");
	register_agent(&w->p, "outsider", "helper", "[\"cloud:Describe*\"]", "[]", 3, "[]");
	/* cloud-agent by id, report-agent by its agent type. */
	register_agent(&w->p, "planning-agent", "planner",
	               "[\"cloud:Describe*\",\"reports:write\"]", "[\"cloud-agent\",\"reporter\"]",
	               2, planner_approvals);
	agent_credential(&w->p, "planning-agent", w->planner, sizeof(w->planner));
	agent_credential(&w->p, "cloud-agent", w->cloud, sizeof(w->cloud));
	agent_credential(&w->p, "outsider", w->outsider, sizeof(w->outsider));
	w->alice = human_token("alice@example.com");
	call(&w->p, "POST", "/v1/tasks", w->alice,
	     "{\"root_agent\":\"planning-agent\",\"scope\":[\"cloud:DescribeInstances\","
	     "\"reports:write\"],\"description\":\"quarterly infrastructure review\","
	     "\"ttl\":\"1h\"}",
	     &r);
	assert_int_equal(r.status, 201);
	snprintf(w->task_id, sizeof(w->task_id), "%s",
	         json_string_value(json_object_get(json_object_get(r.json, "task"), "id")));
	snprintf(w->root_jti, sizeof(w->root_jti), "%s",
	         json_string_value(json_object_get(r.json, "jti")));
	w->root_token = strdup(json_string_value(json_object_get(r.json, "delegation_token")));
	assert_non_null(w->root_token);
	harness_resp_free(&r);
}

static void
world_stop(struct world *w)
{
	free(w->root_token);
	free(w->alice);
	assert_int_equal(harness_idpd_stop(&w->p, SIGTERM, 10000), 0);
}

/* POST /v1/delegations as bearer; the answer in r. */
static void
delegate(struct world *w, const char *bearer, const char *token, const char *to, const char *scope,
         const char *ttl, struct http_resp *r)
{
	char body[8192];

	snprintf(body, sizeof(body),
	         "{\"delegation_token\":\"%s\",\"to_agent\":\"%s\",\"scope\":\"%s\"%s%s}", token,
	         to, scope, ttl != NULL ? ",\"ttl\":" : "", ttl != NULL ? ttl : "");
	call(&w->p, "POST", "/v1/delegations", bearer, body, r);
}

static void
expect_refusal(struct world *w, const char *bearer, const char *token, const char *to,
               const char *scope, const char *ttl, const char *reason)
{
	struct http_resp r;
	char sql[512];

	delegate(w, bearer, token, to, scope, ttl, &r);
	if (r.status != 403)
		fprintf(stderr, "expected %s: %ld %s\n", reason, r.status, r.body);
	assert_int_equal(r.status, 403);
	assert_string_equal(json_string_value(json_object_get(r.json, "reason")), reason);
	harness_resp_free(&r);
	snprintf(sql, sizeof(sql),
	         "SELECT count(*) FROM audit_events WHERE type = 'delegation.denied' AND "
	         "body::json->'detail'->>'reason' = '%s'",
	         reason);
	assert_int_equal(count(w->db, sql), 1);
}

static void
delegation_issues_a_narrower_chained_token(void **state)
{
	struct world w;
	struct http_resp r, jw;
	struct idp_jws_keyset *set = NULL;
	struct idp_jws_verified root = {0}, v = {0};
	struct idp_jws_verify_opts o = {.typ = TASK_TOKEN_TYP};
	enum idp_jws_reason why;
	uint8_t h[TASK_CHAIN_HASH_LEN];
	char chain[TASK_CHAIN_TEXT_LEN], sql[512];
	const char *tok;
	json_t *act;

	(void)state;
	world_start(&w, "t_deleg_ok", "[]");
	delegate(&w, w.planner, w.root_token, "cloud-agent", "cloud:DescribeInstances", "600", &r);
	if (r.status != 201)
		fprintf(stderr, "POST /v1/delegations: %ld %s\n", r.status, r.body);
	assert_int_equal(r.status, 201);
	tok = json_string_value(json_object_get(r.json, "delegation_token"));
	assert_non_null(tok);

	call(&w.p, "GET", "/.well-known/jwks.json", NULL, NULL, &jw);
	assert_int_equal(jw.status, 200);
	assert_int_equal(idp_jws_keyset_from_jwks(jw.body, jw.len, &set, NULL), IDP_OK);
	harness_resp_free(&jw);
	assert_int_equal(idp_jws_verify(set, tok, strlen(tok), &o, &v, &why), IDP_OK);
	assert_int_equal(idp_jws_verify(set, w.root_token, strlen(w.root_token), &o, &root, &why),
	                 IDP_OK);
	assert_string_equal(json_string_value(json_object_get(v.claims, "sub")), "cloud-agent");
	assert_string_equal(json_string_value(json_object_get(v.claims, "scope")),
	                    "cloud:DescribeInstances");
	assert_string_equal(json_string_value(json_object_get(v.claims, "task_id")), w.task_id);
	assert_string_equal(json_string_value(json_object_get(v.claims, "human_principal")),
	                    "alice@example.com");
	assert_int_equal(json_integer_value(json_object_get(v.claims, "depth")), 1);
	assert_true(json_integer_value(json_object_get(v.claims, "exp")) <=
	            json_integer_value(json_object_get(v.claims, "iat")) + 600);

	/* The next link of the parent's chain, recomputed here. */
	assert_int_equal(
	    delegation_chain_parse(
	        json_string_value(json_object_get(root.claims, "delegation_chain_hash")), h),
	    IDP_OK);
	assert_int_equal(task_chain_next(h, "cloud-agent",
	                                 json_string_value(json_object_get(v.claims, "jti")),
	                                 "cloud:DescribeInstances", h),
	                 IDP_OK);
	task_chain_format(h, chain);
	assert_string_equal(json_string_value(json_object_get(v.claims, "delegation_chain_hash")),
	                    chain);

	/* The delegator outermost, wrapping the parent's act (the human). */
	act = json_object_get(v.claims, "act");
	assert_string_equal(json_string_value(json_object_get(act, "sub")), "planning-agent");
	assert_string_equal(json_string_value(json_object_get(act, "sub_type")), "agent");
	act = json_object_get(act, "act");
	assert_string_equal(json_string_value(json_object_get(act, "sub")), "alice@example.com");
	assert_string_equal(json_string_value(json_object_get(act, "sub_type")), "human");

	/* Stored with its parent's jti; audited. */
	snprintf(sql, sizeof(sql),
	         "SELECT count(*) FROM delegation_tokens WHERE jti = '%s' AND parent_jti = '%s' "
	         "AND depth = 1 AND agent_id = 'cloud-agent' AND chain_hash = '%s'",
	         json_string_value(json_object_get(v.claims, "jti")), w.root_jti, chain);
	assert_int_equal(count(w.db, sql), 1);
	assert_int_equal(count(w.db, "SELECT count(*) FROM audit_events WHERE type = "
	                             "'delegation.created' AND agent_id = 'planning-agent'"),
	                 1);
	harness_resp_free(&r);
	idp_jws_verified_cleanup(&v);
	idp_jws_verified_cleanup(&root);
	idp_jws_keyset_unref(set);
	world_stop(&w);
}

static void
delegation_refusals_issue_nothing(void **state)
{
	struct world w;
	struct http_resp r;
	char *child;
	char path[160];

	(void)state;
	world_start(&w, "t_deleg_refusals", "[]");
	expect_refusal(&w, w.planner, w.root_token, "outsider", "cloud:DescribeInstances", NULL,
	               "chain_delegate_not_allowed");
	expect_refusal(&w, w.planner, w.root_token, "cloud-agent", "cloud:Describe*", NULL,
	               "scope_not_within_parent");
	expect_refusal(&w, w.planner, w.root_token, "cloud-agent", "reports:write", NULL,
	               "scope_outside_capabilities");
	expect_refusal(&w, w.planner, w.root_token, "report-agent", "reports:write", NULL,
	               "scope_exceeds_max_per_delegation");
	expect_refusal(&w, w.planner, w.root_token, "cloud-agent", "cloud:DescribeInstances",
	               "\"2h\"", "chain_lifetime_exceeds_parent");
	expect_refusal(&w, w.cloud, w.root_token, "cloud-agent", "cloud:DescribeInstances", NULL,
	               "delegation_token_not_yours");
	assert_int_equal(count(w.db, "SELECT count(*) FROM delegation_tokens"), 1);

	/* cloud-agent allows a chain of depth 1 only. */
	delegate(&w, w.planner, w.root_token, "cloud-agent", "cloud:DescribeInstances", NULL, &r);
	assert_int_equal(r.status, 201);
	child = strdup(json_string_value(json_object_get(r.json, "delegation_token")));
	assert_non_null(child);
	harness_resp_free(&r);
	expect_refusal(&w, w.cloud, child, "sub-agent", "cloud:DescribeInstances", NULL,
	               "chain_depth_exceeded");
	free(child);

	/* Once the task is completed, its tokens delegate nothing. */
	snprintf(path, sizeof(path), "/v1/tasks/%s/complete", w.task_id);
	assert_int_equal(harness_status(&w.p, "POST", path, w.alice, NULL), 200);
	expect_refusal(&w, w.planner, w.root_token, "cloud-agent", "cloud:DescribeInstances", NULL,
	               "task_not_open");
	assert_int_equal(count(w.db, "SELECT count(*) FROM delegation_tokens"), 2);
	assert_int_equal(count(w.db, "SELECT count(*) FROM audit_events WHERE type = "
	                             "'delegation.created'"),
	                 1);
	/* Without a credential: 401, nothing recorded as a delegation. */
	assert_int_equal(harness_status(&w.p, "POST", "/v1/delegations", NULL, "{}"), 401);
	world_stop(&w);
}

static void
delegation_of_an_approval_class_requires_approval(void **state)
{
	struct world w;
	struct http_resp r;

	(void)state;
	world_start(&w, "t_deleg_approval", "[\"read\"]");
	delegate(&w, w.planner, w.root_token, "cloud-agent", "cloud:DescribeInstances", NULL, &r);
	if (r.status != 202)
		fprintf(stderr, "POST /v1/delegations: %ld %s\n", r.status, r.body);
	assert_int_equal(r.status, 202);
	assert_string_equal(json_string_value(json_object_get(r.json, "decision")),
	                    "REQUIRE_APPROVAL");
	assert_string_equal(json_string_value(json_object_get(r.json, "reason")),
	                    "approval_required");
	assert_null(json_object_get(r.json, "delegation_token"));
	harness_resp_free(&r);
	/* A check that fails still wins over the approval requirement. */
	expect_refusal(&w, w.planner, w.root_token, "outsider", "cloud:DescribeInstances", NULL,
	               "chain_delegate_not_allowed");
	assert_int_equal(count(w.db, "SELECT count(*) FROM delegation_tokens"), 1);
	assert_int_equal(count(w.db, "SELECT count(*) FROM audit_events WHERE type = "
	                             "'delegation.denied' AND outcome = 'pending'"),
	                 1);
	world_stop(&w);
}

static int
teardown(void **state)
{
	(void)state;
	if (jwks_path[0] != '\0')
		unlink(jwks_path);
	idp_jws_key_unref(idp_key);
	return 0;
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(delegation_issues_a_narrower_chained_token),
	    cmocka_unit_test(delegation_refusals_issue_nothing),
	    cmocka_unit_test(delegation_of_an_approval_class_requires_approval),
	};

	return cmocka_run_group_tests(tests, NULL, teardown);
}
