/*
 * Integration tests of tasks through idpd's HTTP API and a real
 * PostgreSQL: a human with an [[idp]] token (minted here with a test key)
 * starts a task for a root agent and gets a delegation token that verifies
 * against the served JWKS and carries the recomputable hash chain; the
 * refusals (scope outside the capabilities, unknown or suspended root
 * agent, bad, expired, other-audience and alg-none IdP tokens); who may
 * read a task; completion revoking every token of the task, idempotently;
 * the audit events of each write, and the task's timeline.
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
#include "idpd/b64.h"
#include "idpd/jws.h"
#include "idpd/tasks.h"

#define IDP_ISS "https://sso.example.com"

static char registrar_key[64], auditor_key[64], admin_key[64];
static char keys_toml[1024];
static struct idp_jws_key *idp_key, *rogue_key;
static char jwks_path[64];

static void
setup_keys(void)
{
	char h1[80], h2[80], h3[80];
	json_t *doc;
	FILE *f;
	int fd;

	if (idp_key != NULL)
		return;
	assert_int_equal(idp_jws_key_generate("sso-1", &idp_key, NULL), IDP_OK);
	assert_int_equal(idp_jws_key_generate("sso-1", &rogue_key, NULL), IDP_OK);
	snprintf(jwks_path, sizeof(jwks_path), "/tmp/test_tasks_idp_XXXXXX");
	fd = mkstemp(jwks_path);
	assert_true(fd >= 0);
	f = fdopen(fd, "w");
	assert_non_null(f);
	doc = json_pack("{s:[o]}", "keys", idp_jws_key_public_jwk(idp_key));
	assert_int_equal(json_dumpf(doc, f, JSON_COMPACT), 0);
	json_decref(doc);
	assert_int_equal(fclose(f), 0);
	assert_int_equal(auth_key_generate(registrar_key, h1), IDP_OK);
	assert_int_equal(auth_key_generate(auditor_key, h2), IDP_OK);
	assert_int_equal(auth_key_generate(admin_key, h3), IDP_OK);
	snprintf(keys_toml, sizeof(keys_toml),
	         "[[api_keys]]\nname = \"ci-registrar\"\nhash = \"%s\"\nroles = [\"registrar\"]\n"
	         "[[api_keys]]\nname = \"siem-reader\"\nhash = \"%s\"\nroles = [\"auditor\"]\n"
	         "[[api_keys]]\nname = \"ops-admin\"\nhash = \"%s\"\nroles = [\"admin\"]\n",
	         h1, h2, h3);
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

/* An IdP token for email signed by key, expiring exp_in seconds from now. */
static char *
human_token(const struct idp_jws_key *key, const char *email, const char *aud, long exp_in)
{
	long long now = (long long)time(NULL);
	json_t *c =
	    json_pack("{s:s,s:s,s:s,s:I,s:I,s:s}", "iss", IDP_ISS, "sub", email, "aud", aud, "iat",
	              (json_int_t)(now - 5), "exp", (json_int_t)(now + exp_in), "email", email);
	char *tok = NULL;

	assert_int_equal(idp_jws_sign(key, NULL, c, &tok, NULL, NULL), IDP_OK);
	json_decref(c);
	return tok;
}

/* Every request of these tests must get an answer. */
static void
call(const struct idpd_proc *p, const char *method, const char *path, const char *bearer,
     const char *body, struct http_resp *r)
{
	assert_int_equal(harness_call(p, method, path, bearer, body, r), 0);
}

static void
register_agent(const struct idpd_proc *p, const char *id)
{
	char body[2048];
	struct http_resp r;

	snprintf(body, sizeof(body),
	         "{\"id\":\"%s\",\"agent_type\":\"planner\",\"owner\":\"alice@example.com\","
	         "\"capabilities\":[\"cloud:Describe*\",\"reports:write\"],"
	         "\"delegation_constraints\":{\"max_chain_depth\":2,"
	         "\"max_scope_per_delegation\":\"read\",\"requires_human_approval_for\":[]},"
	         "\"credential\":{\"rotation\":\"30m\"}}",
	         id);
	call(p, "POST", "/v1/agents", registrar_key, body, &r);
	if (r.status != 201)
		fprintf(stderr, "register %s: %ld %s\n", id, r.status, r.body);
	assert_int_equal(r.status, 201);
	harness_resp_free(&r);
}

/* An identity credential for agent id through a join token. */
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

static void
task_starts_with_a_verifiable_delegation_token(void **state)
{
	struct idpd_proc p;
	struct http_resp r, jw;
	struct idp_jws_keyset *set = NULL;
	struct idp_jws_verified v = {0};
	struct idp_jws_verify_opts o = {.typ = TASK_TOKEN_TYP};
	enum idp_jws_reason why;
	uint8_t h[TASK_CHAIN_HASH_LEN];
	char chain[TASK_CHAIN_TEXT_LEN], task_id[80], jti[64], sql[512];
	char *alice = NULL;
	const char *tok;
	json_t *act;
	long long now = (long long)time(NULL);

	(void)state;
	start(&p, "t_tasks_start");
	register_agent(&p, "planning-agent");
	alice = human_token(idp_key, "alice@example.com", "idpd", 600);
	call(&p, "POST", "/v1/tasks", alice,
	     "{\"root_agent\":\"planning-agent\",\"scope\":[\"cloud:DescribeInstances\","
	     "\"reports:write\"],\"description\":\"quarterly infrastructure review\","
	     "\"ttl\":\"1h\"}",
	     &r);
	if (r.status != 201)
		fprintf(stderr, "POST /v1/tasks: %ld %s\n", r.status, r.body);
	assert_int_equal(r.status, 201);
	json_t *task = json_object_get(r.json, "task");
	assert_string_equal(json_string_value(json_object_get(task, "status")), "open");
	assert_string_equal(json_string_value(json_object_get(task, "human_principal")),
	                    "alice@example.com");
	assert_string_equal(json_string_value(json_object_get(task, "root_agent")),
	                    "planning-agent");
	snprintf(task_id, sizeof(task_id), "%s", json_string_value(json_object_get(task, "id")));
	tok = json_string_value(json_object_get(r.json, "delegation_token"));
	assert_non_null(tok);

	/* The token verifies with the served JWKS, as its typ. */
	call(&p, "GET", "/.well-known/jwks.json", NULL, NULL, &jw);
	assert_int_equal(jw.status, 200);
	assert_int_equal(idp_jws_keyset_from_jwks(jw.body, jw.len, &set, NULL), IDP_OK);
	harness_resp_free(&jw);
	assert_int_equal(idp_jws_verify(set, tok, strlen(tok), &o, &v, &why), IDP_OK);
	assert_string_equal(json_string_value(json_object_get(v.claims, "sub")), "planning-agent");
	assert_string_equal(json_string_value(json_object_get(v.claims, "iss")), "idpd");
	assert_string_equal(json_string_value(json_object_get(v.claims, "aud")), "idpd");
	assert_string_equal(json_string_value(json_object_get(v.claims, "task_id")), task_id);
	assert_string_equal(json_string_value(json_object_get(v.claims, "scope")),
	                    "cloud:DescribeInstances reports:write");
	assert_string_equal(json_string_value(json_object_get(v.claims, "human_principal")),
	                    "alice@example.com");
	assert_int_equal(json_integer_value(json_object_get(v.claims, "depth")), 0);
	act = json_object_get(v.claims, "act");
	assert_string_equal(json_string_value(json_object_get(act, "sub")), "alice@example.com");
	/* exp is the task's ttl (1h, under tasks.max_ttl). */
	long long exp = json_integer_value(json_object_get(v.claims, "exp"));
	assert_true(exp >= now + 3600 - 5 && exp <= now + 3600 + 5);
	snprintf(jti, sizeof(jti), "%s", json_string_value(json_object_get(v.claims, "jti")));
	/* The hash chain, recomputed here. */
	assert_int_equal(task_chain_root("alice@example.com", h), IDP_OK);
	assert_int_equal(
	    task_chain_next(h, "planning-agent", jti, "cloud:DescribeInstances reports:write", h),
	    IDP_OK);
	task_chain_format(h, chain);
	assert_string_equal(json_string_value(json_object_get(v.claims, "delegation_chain_hash")),
	                    chain);
	idp_jws_verified_cleanup(&v);
	idp_jws_keyset_unref(set);
	harness_resp_free(&r);

	/* The token is recorded as the root of the task, and the start is audited. */
	snprintf(sql, sizeof(sql),
	         "SELECT count(*) FROM delegation_tokens WHERE jti = '%s' AND task_id = '%s' AND "
	         "parent_jti IS NULL AND chain_hash = '%s' AND revoked_at IS NULL",
	         jti, task_id, chain);
	assert_int_equal(count("t_tasks_start", sql), 1);
	snprintf(sql, sizeof(sql),
	         "SELECT count(*) FROM audit_events WHERE type = 'task.started' AND task_id = '%s' "
	         "AND human_principal = 'alice@example.com' AND agent_id = 'planning-agent'",
	         task_id);
	assert_int_equal(count("t_tasks_start", sql), 1);

	/* A ttl beyond tasks.max_ttl is cut to it. */
	call(&p, "POST", "/v1/tasks", alice,
	     "{\"root_agent\":\"planning-agent\",\"scope\":\"reports:write\",\"ttl\":86400}", &r);
	assert_int_equal(r.status, 201);
	assert_true(json_integer_value(json_object_get(r.json, "expires_in")) <= 7200);
	harness_resp_free(&r);
	free(alice);
	assert_int_equal(harness_idpd_stop(&p, SIGTERM, 10000), 0);
}

static void
task_refusals_issue_nothing(void **state)
{
	struct idpd_proc p;
	struct http_resp r;
	char *alice, *expired, *other_aud, *rogue, none[512];
	const char *ok_body = "{\"root_agent\":\"planning-agent\",\"scope\":[\"reports:write\"]}";

	(void)state;
	start(&p, "t_tasks_refuse");
	register_agent(&p, "planning-agent");
	register_agent(&p, "sleepy-agent");
	alice = human_token(idp_key, "alice@example.com", "idpd", 600);
	expired = human_token(idp_key, "alice@example.com", "idpd", -120);
	other_aud = human_token(idp_key, "alice@example.com", "someone-else", 600);
	rogue = human_token(rogue_key, "alice@example.com", "idpd", 600);
	{
		const char *hdr = "{\"alg\":\"none\",\"kid\":\"sso-1\"}";
		char body[256];
		char *hb, *bb;

		snprintf(body, sizeof(body),
		         "{\"iss\":\"" IDP_ISS "\",\"aud\":\"idpd\",\"exp\":%lld,"
		         "\"email\":\"alice@example.com\"}",
		         (long long)time(NULL) + 600);
		hb = idp_b64url_encode(hdr, strlen(hdr), NULL);
		bb = idp_b64url_encode(body, strlen(body), NULL);
		snprintf(none, sizeof(none), "%s.%s.", hb, bb);
		free(hb);
		free(bb);
	}

	/* Bad human tokens: 401. */
	assert_int_equal(harness_status(&p, "POST", "/v1/tasks", NULL, ok_body), 401);
	assert_int_equal(harness_status(&p, "POST", "/v1/tasks", "not-a-jwt", ok_body), 401);
	assert_int_equal(harness_status(&p, "POST", "/v1/tasks", expired, ok_body), 401);
	assert_int_equal(harness_status(&p, "POST", "/v1/tasks", other_aud, ok_body), 401);
	assert_int_equal(harness_status(&p, "POST", "/v1/tasks", rogue, ok_body), 401);
	assert_int_equal(harness_status(&p, "POST", "/v1/tasks", none, ok_body), 401);
	/* An operator key is not a human. */
	assert_int_equal(harness_status(&p, "POST", "/v1/tasks", admin_key, ok_body), 401);

	/* Scope outside the root agent's capabilities: 403 with the reason. */
	call(&p, "POST", "/v1/tasks", alice,
	     "{\"root_agent\":\"planning-agent\",\"scope\":[\"cloud:TerminateInstances\"]}", &r);
	assert_int_equal(r.status, 403);
	assert_string_equal(json_string_value(json_object_get(r.json, "reason")),
	                    "scope_outside_capabilities");
	harness_resp_free(&r);
	/* Unknown root agent. */
	call(&p, "POST", "/v1/tasks", alice,
	     "{\"root_agent\":\"nobody\",\"scope\":\"reports:write\"}", &r);
	assert_int_equal(r.status, 403);
	assert_string_equal(json_string_value(json_object_get(r.json, "reason")),
	                    "root_agent_unknown");
	harness_resp_free(&r);
	/* Suspended root agent. */
	assert_int_equal(
	    harness_status(&p, "POST", "/v1/agents/sleepy-agent/suspend", registrar_key, NULL),
	    200);
	call(&p, "POST", "/v1/tasks", alice,
	     "{\"root_agent\":\"sleepy-agent\",\"scope\":\"reports:write\"}", &r);
	assert_int_equal(r.status, 403);
	assert_string_equal(json_string_value(json_object_get(r.json, "reason")),
	                    "root_agent_not_active");
	harness_resp_free(&r);
	/* Malformed requests. */
	assert_int_equal(
	    harness_status(&p, "POST", "/v1/tasks", alice, "{\"root_agent\":\"planning-agent\"}"),
	    400);
	assert_int_equal(
	    harness_status(&p, "POST", "/v1/tasks", alice,
	                   "{\"root_agent\":\"planning-agent\",\"scope\":\"nocolon\"}"),
	    400);
	assert_int_equal(
	    harness_status(&p, "POST", "/v1/tasks", alice,
	                   "{\"root_agent\":\"planning-agent\",\"scope\":\"reports:write\","
	                   "\"ttl\":\"forever\"}"),
	    400);

	/* Nothing was issued or recorded. */
	assert_int_equal(count("t_tasks_refuse", "SELECT count(*) FROM tasks"), 0);
	assert_int_equal(count("t_tasks_refuse", "SELECT count(*) FROM delegation_tokens"), 0);
	assert_int_equal(
	    count("t_tasks_refuse", "SELECT count(*) FROM audit_events WHERE type LIKE 'task.%'"),
	    0);
	free(alice);
	free(expired);
	free(other_aud);
	free(rogue);
	assert_int_equal(harness_idpd_stop(&p, SIGTERM, 10000), 0);
}

static void
task_read_and_complete_by_who_may(void **state)
{
	struct idpd_proc p;
	struct http_resp r;
	char *alice, *bob, task_id[80], path[160], path2[160], sql[512], cred[4096];

	(void)state;
	start(&p, "t_tasks_complete");
	register_agent(&p, "planning-agent");
	register_agent(&p, "other-agent");
	alice = human_token(idp_key, "alice@example.com", "idpd", 600);
	bob = human_token(idp_key, "bob@example.com", "idpd", 600);
	call(&p, "POST", "/v1/tasks", alice,
	     "{\"root_agent\":\"planning-agent\",\"scope\":\"reports:write\"}", &r);
	assert_int_equal(r.status, 201);
	snprintf(task_id, sizeof(task_id), "%s",
	         json_string_value(json_object_get(json_object_get(r.json, "task"), "id")));
	harness_resp_free(&r);
	snprintf(path, sizeof(path), "/v1/tasks/%s", task_id);
	snprintf(path2, sizeof(path2), "/v1/tasks/%s/complete", task_id);

	/* Read: the owner, the root agent, an auditor; not another human or agent. */
	call(&p, "GET", path, alice, NULL, &r);
	assert_int_equal(r.status, 200);
	assert_string_equal(json_string_value(json_object_get(r.json, "id")), task_id);
	assert_string_equal(json_string_value(json_object_get(r.json, "status")), "open");
	harness_resp_free(&r);
	assert_int_equal(harness_status(&p, "GET", path, bob, NULL), 403);
	assert_int_equal(harness_status(&p, "GET", path, auditor_key, NULL), 200);
	assert_int_equal(harness_status(&p, "GET", path, registrar_key, NULL), 403);
	assert_int_equal(harness_status(&p, "GET", path, NULL, NULL), 401);
	assert_int_equal(
	    harness_status(&p, "GET", "/v1/tasks/task_doesnotexist0000000", alice, NULL), 403);
	agent_credential(&p, "planning-agent", cred, sizeof(cred));
	assert_int_equal(harness_status(&p, "GET", path, cred, NULL), 200);
	agent_credential(&p, "other-agent", cred, sizeof(cred));
	assert_int_equal(harness_status(&p, "GET", path, cred, NULL), 403);

	/* Complete: not by another human, another agent or an auditor. */
	assert_int_equal(harness_status(&p, "POST", path2, bob, NULL), 403);
	assert_int_equal(harness_status(&p, "POST", path2, cred, NULL), 403);
	assert_int_equal(harness_status(&p, "POST", path2, auditor_key, NULL), 403);
	snprintf(
	    sql, sizeof(sql),
	    "SELECT count(*) FROM delegation_tokens WHERE task_id = '%s' AND revoked_at IS NULL",
	    task_id);
	assert_int_equal(count("t_tasks_complete", sql), 1);

	/* By the human: completed, every token of the task revoked, audited once. */
	call(&p, "POST", path2, alice, NULL, &r);
	assert_int_equal(r.status, 200);
	assert_string_equal(json_string_value(json_object_get(r.json, "status")), "completed");
	assert_string_equal(json_string_value(json_object_get(r.json, "completed_by")),
	                    "alice@example.com");
	harness_resp_free(&r);
	assert_int_equal(count("t_tasks_complete", sql), 0);
	snprintf(
	    sql, sizeof(sql),
	    "SELECT count(*) FROM audit_events WHERE type = 'task.completed' AND task_id = '%s' "
	    "AND body::json->'detail'->>'delegations_revoked' = '1'",
	    task_id);
	assert_int_equal(count("t_tasks_complete", sql), 1);

	/* Again (by an admin): the same answer, nothing more recorded. */
	call(&p, "POST", path2, admin_key, NULL, &r);
	assert_int_equal(r.status, 200);
	assert_string_equal(json_string_value(json_object_get(r.json, "status")), "completed");
	assert_string_equal(json_string_value(json_object_get(r.json, "completed_by")),
	                    "alice@example.com");
	harness_resp_free(&r);
	snprintf(
	    sql, sizeof(sql),
	    "SELECT count(*) FROM audit_events WHERE type = 'task.completed' AND task_id = '%s'",
	    task_id);
	assert_int_equal(count("t_tasks_complete", sql), 1);

	/* The timeline: started then completed, oldest first; not for another human. */
	snprintf(path, sizeof(path), "/v1/tasks/%s/timeline", task_id);
	call(&p, "GET", path, alice, NULL, &r);
	assert_int_equal(r.status, 200);
	json_t *evs = json_object_get(r.json, "events");
	assert_int_equal(json_array_size(evs), 2);
	assert_string_equal(json_string_value(json_object_get(json_array_get(evs, 0), "type")),
	                    "task.started");
	assert_string_equal(json_string_value(json_object_get(json_array_get(evs, 1), "type")),
	                    "task.completed");
	assert_string_equal(json_string_value(json_object_get(json_array_get(evs, 1), "task_id")),
	                    task_id);
	harness_resp_free(&r);
	assert_int_equal(harness_status(&p, "GET", path, bob, NULL), 403);
	assert_int_equal(harness_status(&p, "GET", path, auditor_key, NULL), 200);
	free(alice);
	free(bob);
	assert_int_equal(harness_idpd_stop(&p, SIGTERM, 10000), 0);
}

static int
teardown(void **state)
{
	(void)state;
	if (jwks_path[0] != '\0')
		unlink(jwks_path);
	idp_jws_key_unref(idp_key);
	idp_jws_key_unref(rogue_key);
	return 0;
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(task_starts_with_a_verifiable_delegation_token),
	    cmocka_unit_test(task_refusals_issue_nothing),
	    cmocka_unit_test(task_read_and_complete_by_who_may),
	};

	return cmocka_run_group_tests(tests, NULL, teardown);
}
