/*
 * Integration tests of tasks through idpd's HTTP API and a real
 * PostgreSQL: a human with an [[idp]] token (minted here with a test key)
 * starts a task for a root agent and gets a delegation token that verifies
 * against the served JWKS and carries the recomputable hash chain; the
 * refusals (scope outside the capabilities, unknown or suspended root
 * agent, bad, expired, other-audience and alg-none IdP tokens, an email
 * not verified, a typ of idpd's own tokens); who may
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

#include "idpd/b64.h"
#include "idpd/jws.h"
#include "idpd/tasks.h"
#include "world.h"

/* A key the IdP never published, under its kid. */
static struct idp_jws_key *rogue_key;

/* tasks.max_ttl is 2h here, so that a longer ttl is seen to be cut. */
static void
start(struct world *w, const char *db)
{
	const struct world_opts o = {.max_ttl = "2h"};

	world_start_opts(w, db, &o);
}

static void
register_agent(struct world *w, const char *id)
{
	const struct world_agent a = {.id = id,
	                              .type = "planner",
	                              .owner = "alice@example.com",
	                              .caps = "[\"cloud:Describe*\",\"reports:write\"]",
	                              .max_depth = 2};

	world_agent(w, &a);
}

static void
task_starts_with_a_verifiable_delegation_token(void **state)
{
	struct world w;
	struct http_resp r;
	uint8_t h[TASK_CHAIN_HASH_LEN];
	char chain[TASK_CHAIN_TEXT_LEN], task_id[80], jti[64], sql[512];
	char *alice = NULL;
	const char *tok;
	json_t *act, *claims;
	long long now = (long long)time(NULL);

	(void)state;
	start(&w, "t_tasks_start");
	register_agent(&w, "planning-agent");
	alice = world_idp_token(NULL, "alice@example.com", "idpd", 600);
	world_call(&w, "POST", "/v1/tasks", alice,
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
	claims = world_verify(&w, tok, TASK_TOKEN_TYP);
	assert_string_equal(json_string_value(json_object_get(claims, "sub")), "planning-agent");
	assert_string_equal(json_string_value(json_object_get(claims, "iss")), "idpd");
	assert_string_equal(json_string_value(json_object_get(claims, "aud")), "idpd");
	assert_string_equal(json_string_value(json_object_get(claims, "task_id")), task_id);
	assert_string_equal(json_string_value(json_object_get(claims, "scope")),
	                    "cloud:DescribeInstances reports:write");
	assert_string_equal(json_string_value(json_object_get(claims, "human_principal")),
	                    "alice@example.com");
	assert_int_equal(json_integer_value(json_object_get(claims, "depth")), 0);
	act = json_object_get(claims, "act");
	assert_string_equal(json_string_value(json_object_get(act, "sub")), "planning-agent");
	assert_string_equal(json_string_value(json_object_get(json_object_get(act, "act"), "sub")),
	                    "alice@example.com");
	/* exp is the task's ttl (1h, under tasks.max_ttl). */
	long long exp = json_integer_value(json_object_get(claims, "exp"));
	assert_true(exp >= now + 3600 - 5 && exp <= now + 3600 + 5);
	snprintf(jti, sizeof(jti), "%s", json_string_value(json_object_get(claims, "jti")));
	/* The hash chain, recomputed here. */
	assert_int_equal(task_chain_root("alice@example.com", h), IDP_OK);
	assert_int_equal(
	    task_chain_next(h, "planning-agent", jti, "cloud:DescribeInstances reports:write", h),
	    IDP_OK);
	task_chain_format(h, chain);
	assert_string_equal(json_string_value(json_object_get(claims, "delegation_chain_hash")),
	                    chain);
	json_decref(claims);
	harness_resp_free(&r);

	/* The token is recorded as the root of the task, and the start is audited. */
	snprintf(sql, sizeof(sql),
	         "SELECT count(*) FROM delegation_tokens WHERE jti = '%s' AND task_id = '%s' AND "
	         "parent_jti IS NULL AND chain_hash = '%s' AND revoked_at IS NULL",
	         jti, task_id, chain);
	assert_int_equal(world_count(&w, sql), 1);
	snprintf(sql, sizeof(sql),
	         "SELECT count(*) FROM audit_events WHERE type = 'task.started' AND task_id = '%s' "
	         "AND human_principal = 'alice@example.com' AND agent_id = 'planning-agent'",
	         task_id);
	assert_int_equal(world_count(&w, sql), 1);

	/* A ttl beyond tasks.max_ttl is cut to it. */
	world_call(&w, "POST", "/v1/tasks", alice,
	           "{\"root_agent\":\"planning-agent\",\"scope\":\"reports:write\",\"ttl\":86400}",
	           &r);
	assert_int_equal(r.status, 201);
	assert_true(json_integer_value(json_object_get(r.json, "expires_in")) <= 7200);
	harness_resp_free(&r);
	free(alice);
	world_stop(&w);
}

static void
task_refusals_issue_nothing(void **state)
{
	struct world w;
	struct http_resp r;
	char *alice, *expired, *other_aud, *rogue, none[512];
	const char *ok_body = "{\"root_agent\":\"planning-agent\",\"scope\":[\"reports:write\"]}";

	(void)state;
	if (rogue_key == NULL)
		assert_int_equal(idp_jws_key_generate("sso-1", &rogue_key, NULL), IDP_OK);
	start(&w, "t_tasks_refuse");
	register_agent(&w, "planning-agent");
	register_agent(&w, "sleepy-agent");
	alice = world_idp_token(NULL, "alice@example.com", "idpd", 600);
	expired = world_idp_token(NULL, "alice@example.com", "idpd", -120);
	other_aud = world_idp_token(NULL, "alice@example.com", "someone-else", 600);
	rogue = world_idp_token(rogue_key, "alice@example.com", "idpd", 600);
	{
		const char *hdr = "{\"alg\":\"none\",\"kid\":\"sso-1\"}";
		char body[256];
		char *hb, *bb;

		snprintf(body, sizeof(body),
		         "{\"iss\":\"" WORLD_IDP_ISS "\",\"aud\":\"idpd\",\"exp\":%lld,"
		         "\"email\":\"alice@example.com\"}",
		         (long long)time(NULL) + 600);
		hb = idp_b64url_encode(hdr, strlen(hdr), NULL);
		bb = idp_b64url_encode(body, strlen(body), NULL);
		snprintf(none, sizeof(none), "%s.%s.", hb, bb);
		free(hb);
		free(bb);
	}

	/* Bad human tokens: 401. */
	assert_int_equal(harness_status(&w.p, "POST", "/v1/tasks", NULL, ok_body), 401);
	assert_int_equal(harness_status(&w.p, "POST", "/v1/tasks", "not-a-jwt", ok_body), 401);
	assert_int_equal(harness_status(&w.p, "POST", "/v1/tasks", expired, ok_body), 401);
	assert_int_equal(harness_status(&w.p, "POST", "/v1/tasks", other_aud, ok_body), 401);
	assert_int_equal(harness_status(&w.p, "POST", "/v1/tasks", rogue, ok_body), 401);
	assert_int_equal(harness_status(&w.p, "POST", "/v1/tasks", none, ok_body), 401);
	/* An operator key is not a human. */
	assert_int_equal(harness_status(&w.p, "POST", "/v1/tasks", w.k.admin, ok_body), 401);

	/* Scope outside the root agent's capabilities: 403 with the reason. */
	world_call(&w, "POST", "/v1/tasks", alice,
	           "{\"root_agent\":\"planning-agent\",\"scope\":[\"cloud:TerminateInstances\"]}",
	           &r);
	assert_int_equal(r.status, 403);
	assert_string_equal(json_string_value(json_object_get(r.json, "reason")),
	                    "scope_outside_capabilities");
	harness_resp_free(&r);
	/* Unknown root agent. */
	world_call(&w, "POST", "/v1/tasks", alice,
	           "{\"root_agent\":\"nobody\",\"scope\":\"reports:write\"}", &r);
	assert_int_equal(r.status, 403);
	assert_string_equal(json_string_value(json_object_get(r.json, "reason")),
	                    "root_agent_unknown");
	harness_resp_free(&r);
	/* Not an agent id at all: a bad request. */
	world_call(&w, "POST", "/v1/tasks", alice,
	           "{\"root_agent\":\"Bad Id!\",\"scope\":\"reports:write\"}", &r);
	assert_int_equal(r.status, 400);
	assert_string_equal(json_string_value(json_object_get(r.json, "code")), "invalid_request");
	assert_int_equal(
	    strncmp(json_string_value(json_array_get(json_object_get(r.json, "errors"), 0)),
	            "root_agent: not an agent id", 27),
	    0);
	harness_resp_free(&r);
	/* Suspended root agent. */
	assert_int_equal(
	    harness_status(&w.p, "POST", "/v1/agents/sleepy-agent/suspend", w.k.registrar, NULL),
	    200);
	world_call(&w, "POST", "/v1/tasks", alice,
	           "{\"root_agent\":\"sleepy-agent\",\"scope\":\"reports:write\"}", &r);
	assert_int_equal(r.status, 403);
	assert_string_equal(json_string_value(json_object_get(r.json, "reason")),
	                    "root_agent_not_active");
	harness_resp_free(&r);
	/* Malformed requests. */
	assert_int_equal(
	    harness_status(&w.p, "POST", "/v1/tasks", alice, "{\"root_agent\":\"planning-agent\"}"),
	    400);
	assert_int_equal(
	    harness_status(&w.p, "POST", "/v1/tasks", alice,
	                   "{\"root_agent\":\"planning-agent\",\"scope\":\"nocolon\"}"),
	    400);
	assert_int_equal(
	    harness_status(&w.p, "POST", "/v1/tasks", alice,
	                   "{\"root_agent\":\"planning-agent\",\"scope\":\"reports:write\","
	                   "\"ttl\":\"forever\"}"),
	    400);
	/* A misspelt field is an error, not its default (here a ttl left at 8h). */
	world_call(&w, "POST", "/v1/tasks", alice,
	           "{\"root_agent\":\"planning-agent\",\"scope\":\"reports:write\","
	           "\"tll\":\"5m\"}",
	           &r);
	assert_int_equal(r.status, 400);
	assert_string_equal(json_string_value(json_array_get(json_object_get(r.json, "errors"), 0)),
	                    "tll: not a member of this request");
	harness_resp_free(&r);
	/* Under a second: tokens carry whole seconds, it would be born expired. */
	assert_int_equal(
	    harness_status(&w.p, "POST", "/v1/tasks", alice,
	                   "{\"root_agent\":\"planning-agent\",\"scope\":\"reports:write\","
	                   "\"ttl\":\"1ms\"}"),
	    400);

	/* Nothing was issued or recorded. */
	assert_int_equal(world_count(&w, "SELECT count(*) FROM tasks"), 0);
	assert_int_equal(world_count(&w, "SELECT count(*) FROM delegation_tokens"), 0);
	assert_int_equal(
	    world_count(&w, "SELECT count(*) FROM audit_events WHERE type LIKE 'task.%'"), 0);
	free(alice);
	free(expired);
	free(other_aud);
	free(rogue);
	world_stop(&w);
}

static void
task_read_and_complete_by_who_may(void **state)
{
	struct world w;
	struct http_resp r;
	char *alice, *bob, task_id[80], path[160], path2[160], sql[512], cred[4096];

	(void)state;
	start(&w, "t_tasks_complete");
	register_agent(&w, "planning-agent");
	register_agent(&w, "other-agent");
	alice = world_idp_token(NULL, "alice@example.com", "idpd", 600);
	bob = world_idp_token(NULL, "bob@example.com", "idpd", 600);
	world_call(&w, "POST", "/v1/tasks", alice,
	           "{\"root_agent\":\"planning-agent\",\"scope\":\"reports:write\"}", &r);
	assert_int_equal(r.status, 201);
	snprintf(task_id, sizeof(task_id), "%s",
	         json_string_value(json_object_get(json_object_get(r.json, "task"), "id")));
	harness_resp_free(&r);
	snprintf(path, sizeof(path), "/v1/tasks/%s", task_id);
	snprintf(path2, sizeof(path2), "/v1/tasks/%s/complete", task_id);

	/* Read: the owner, the root agent, an auditor; not another human or agent. */
	world_call(&w, "GET", path, alice, NULL, &r);
	assert_int_equal(r.status, 200);
	assert_string_equal(json_string_value(json_object_get(r.json, "id")), task_id);
	assert_string_equal(json_string_value(json_object_get(r.json, "status")), "open");
	harness_resp_free(&r);
	assert_int_equal(harness_status(&w.p, "GET", path, bob, NULL), 403);
	assert_int_equal(harness_status(&w.p, "GET", path, w.k.auditor, NULL), 200);
	assert_int_equal(harness_status(&w.p, "GET", path, w.k.registrar, NULL), 403);
	assert_int_equal(harness_status(&w.p, "GET", path, NULL, NULL), 401);
	assert_int_equal(
	    harness_status(&w.p, "GET", "/v1/tasks/task_doesnotexist0000000", alice, NULL), 403);
	world_credential(&w, "planning-agent", cred, sizeof(cred));
	assert_int_equal(harness_status(&w.p, "GET", path, cred, NULL), 200);
	world_credential(&w, "other-agent", cred, sizeof(cred));
	assert_int_equal(harness_status(&w.p, "GET", path, cred, NULL), 403);

	/* Complete: not by another human, another agent or an auditor. */
	assert_int_equal(harness_status(&w.p, "POST", path2, bob, NULL), 403);
	assert_int_equal(harness_status(&w.p, "POST", path2, cred, NULL), 403);
	assert_int_equal(harness_status(&w.p, "POST", path2, w.k.auditor, NULL), 403);
	snprintf(
	    sql, sizeof(sql),
	    "SELECT count(*) FROM delegation_tokens WHERE task_id = '%s' AND revoked_at IS NULL",
	    task_id);
	assert_int_equal(world_count(&w, sql), 1);

	/* By the human: completed, every token of the task revoked, audited once. */
	world_call(&w, "POST", path2, alice, NULL, &r);
	assert_int_equal(r.status, 200);
	assert_string_equal(json_string_value(json_object_get(r.json, "status")), "completed");
	assert_string_equal(json_string_value(json_object_get(r.json, "completed_by")),
	                    "alice@example.com");
	harness_resp_free(&r);
	assert_int_equal(world_count(&w, sql), 0);
	snprintf(
	    sql, sizeof(sql),
	    "SELECT count(*) FROM audit_events WHERE type = 'task.completed' AND task_id = '%s' "
	    "AND body::json->'detail'->>'delegations_revoked' = '1'",
	    task_id);
	assert_int_equal(world_count(&w, sql), 1);

	/* Again (by an admin): the same answer, nothing more recorded. */
	world_call(&w, "POST", path2, w.k.admin, NULL, &r);
	assert_int_equal(r.status, 200);
	assert_string_equal(json_string_value(json_object_get(r.json, "status")), "completed");
	assert_string_equal(json_string_value(json_object_get(r.json, "completed_by")),
	                    "alice@example.com");
	harness_resp_free(&r);
	snprintf(
	    sql, sizeof(sql),
	    "SELECT count(*) FROM audit_events WHERE type = 'task.completed' AND task_id = '%s'",
	    task_id);
	assert_int_equal(world_count(&w, sql), 1);

	/* The timeline: started then completed, oldest first; not for another human. */
	snprintf(path, sizeof(path), "/v1/tasks/%s/timeline", task_id);
	world_call(&w, "GET", path, alice, NULL, &r);
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
	assert_int_equal(harness_status(&w.p, "GET", path, bob, NULL), 403);
	assert_int_equal(harness_status(&w.p, "GET", path, w.k.auditor, NULL), 200);
	free(alice);
	free(bob);
	world_stop(&w);
}

/*
 * A query parameter a task endpoint does not read, or a body sent to the
 * completion, which reads none, is a 400: the task is not started or
 * completed, its tokens stay good, nothing is audited.
 */
static void
options_a_task_endpoint_does_not_read_are_refused(void **state)
{
	struct world w;
	struct http_resp r;
	char *alice, task_id[80], path[160], sql[512];

	(void)state;
	start(&w, "t_tasks_opts");
	register_agent(&w, "planning-agent");
	alice = world_idp_token(NULL, "alice@example.com", "idpd", 600);
	world_call(&w, "POST", "/v1/tasks?ttl=1h", alice,
	           "{\"root_agent\":\"planning-agent\",\"scope\":\"reports:write\"}", &r);
	assert_int_equal(r.status, 400);
	assert_string_equal(
	    json_string_value(json_array_get(json_object_get(r.json, "parameters"), 0)), "ttl");
	harness_resp_free(&r);
	assert_int_equal(world_count(&w, "SELECT count(*) FROM tasks"), 0);

	world_call(&w, "POST", "/v1/tasks", alice,
	           "{\"root_agent\":\"planning-agent\",\"scope\":\"reports:write\"}", &r);
	assert_int_equal(r.status, 201);
	snprintf(task_id, sizeof(task_id), "%s",
	         json_string_value(json_object_get(json_object_get(r.json, "task"), "id")));
	harness_resp_free(&r);

	snprintf(path, sizeof(path), "/v1/tasks/%s/complete?x=1", task_id);
	assert_int_equal(harness_status(&w.p, "POST", path, alice, NULL), 400);
	snprintf(path, sizeof(path), "/v1/tasks/%s/complete", task_id);
	world_call(&w, "POST", path, alice, "{\"reason\":\"done\"}", &r);
	assert_int_equal(r.status, 400);
	assert_non_null(strstr(json_string_value(json_object_get(r.json, "detail")), "no body"));
	harness_resp_free(&r);
	snprintf(sql, sizeof(sql),
	         "SELECT count(*) FROM tasks t WHERE id = '%s' AND status = 'open' AND "
	         "(SELECT count(*) FROM delegation_tokens WHERE task_id = t.id AND revoked_at IS "
	         "NULL) = 1 AND NOT EXISTS (SELECT 1 FROM audit_events WHERE type = "
	         "'task.completed')",
	         task_id);
	assert_int_equal(world_count(&w, sql), 1);

	snprintf(path, sizeof(path), "/v1/tasks/%s?fields=id", task_id);
	assert_int_equal(harness_status(&w.p, "GET", path, alice, NULL), 400);
	snprintf(path, sizeof(path), "/v1/tasks/%s/timeline?type=task.completed", task_id);
	world_call(&w, "GET", path, alice, NULL, &r);
	assert_int_equal(r.status, 400);
	assert_null(json_object_get(r.json, "events"));
	harness_resp_free(&r);

	/* Without them, the same calls do their work. */
	snprintf(path, sizeof(path), "/v1/tasks/%s/complete", task_id);
	assert_int_equal(harness_status(&w.p, "POST", path, alice, NULL), 200);
	free(alice);
	world_stop(&w);
}

/* POST /v1/tasks with an IdP token of typ (NULL: none) and claims; the status. */
static long
start_with(struct world *w, const char *typ, const char *claims)
{
	char *tok = world_idp_token_claims(typ, claims);
	long status =
	    harness_status(&w->p, "POST", "/v1/tasks", tok,
	                   "{\"root_agent\":\"planning-agent\",\"scope\":\"reports:write\"}");

	free(tok);
	return status;
}

#define ALICE "\"sub\":\"u-alice\",\"email\":\"alice@example.com\""

/*
 * With principal_claim "email", an address its provider has not verified
 * names nobody: a user of a provider that lets users type in their email
 * would otherwise become whoever they wrote.  email_verified false (or
 * anything but true) is a 401, also with require_email_verified = false,
 * which only lets a token without the claim through; by default that one
 * is a 401 too.  Each refusal logs its reason and starts nothing.
 */
static void
task_human_email_must_be_verified(void **state)
{
	struct world w;
	const struct world_opts lax = {.idp_toml = "require_email_verified = false\n"};

	(void)state;
	world_start(&w, "t_tasks_email_verified", NULL);
	register_agent(&w, "planning-agent");
	assert_int_equal(start_with(&w, NULL, "{" ALICE ",\"email_verified\":false}"), 401);
	assert_true(harness_log_contains(&w.p, "human authentication failed: email_unverified"));
	assert_int_equal(start_with(&w, NULL, "{" ALICE ",\"email_verified\":\"false\"}"), 401);
	assert_int_equal(start_with(&w, NULL, "{" ALICE ",\"email_verified\":null}"), 401);
	assert_int_equal(start_with(&w, NULL, "{" ALICE ",\"email_verified\":1}"), 401);
	assert_int_equal(start_with(&w, NULL, "{" ALICE "}"), 401);
	assert_true(
	    harness_log_contains(&w.p, "human authentication failed: email_verified_missing"));
	assert_int_equal(world_count(&w, "SELECT count(*) FROM tasks"), 0);
	/* true, and the string "true" some providers send. */
	assert_int_equal(start_with(&w, NULL, "{" ALICE ",\"email_verified\":true}"), 201);
	assert_int_equal(start_with(&w, NULL, "{" ALICE ",\"email_verified\":\"true\"}"), 201);
	assert_int_equal(start_with(&w, NULL, "{" ALICE ",\"email_verified\":\"TRUE\"}"), 401);
	assert_int_equal(world_count(&w, "SELECT count(*) FROM tasks"), 2);
	world_stop(&w);

	/* A provider that never sends the claim: absent passes, false still does not. */
	world_start_opts(&w, "t_tasks_email_lax", &lax);
	register_agent(&w, "planning-agent");
	assert_int_equal(start_with(&w, NULL, "{" ALICE "}"), 201);
	assert_int_equal(start_with(&w, NULL, "{" ALICE ",\"email_verified\":false}"), 401);
	assert_true(harness_log_contains(&w.p, "human authentication failed: email_unverified"));
	assert_int_equal(start_with(&w, NULL, "{" ALICE ",\"email_verified\":\"false\"}"), 401);
	assert_int_equal(world_count(&w, "SELECT count(*) FROM tasks"), 1);
	world_stop(&w);
}

/*
 * A token whose typ is one of idpd's own (a delegation token's, an
 * identity credential's) is not a human's, even signed by a provider's key;
 * at+jwt is too when its iss is identity.issuer (an access token of idpd's),
 * but not from a provider that issues RFC 9068 access tokens itself.
 */
static void
task_human_token_of_idpd_typ_refused(void **state)
{
	struct world w;
	const struct world_opts same_iss = {.issuer = WORLD_IDP_ISS};
	const char *ok = "{" ALICE ",\"email_verified\":true}";

	(void)state;
	world_start(&w, "t_tasks_typ", NULL);
	register_agent(&w, "planning-agent");
	assert_int_equal(start_with(&w, TASK_TOKEN_TYP, ok), 401);
	assert_true(harness_log_contains(&w.p, "human authentication failed: idpd_token"));
	assert_int_equal(start_with(&w, IDP_JWS_TYP_IDENTITY, ok), 401);
	assert_int_equal(start_with(&w, "application/IDPD-agent+jwt", ok), 401);
	assert_int_equal(world_count(&w, "SELECT count(*) FROM tasks"), 0);
	assert_int_equal(start_with(&w, IDP_JWS_TYP_ACCESS, ok), 201);
	assert_int_equal(start_with(&w, "JWT", ok), 201);
	world_stop(&w);

	world_start_opts(&w, "t_tasks_typ_iss", &same_iss);
	register_agent(&w, "planning-agent");
	assert_int_equal(start_with(&w, IDP_JWS_TYP_ACCESS, ok), 401);
	assert_int_equal(start_with(&w, "JWT", ok), 201);
	world_stop(&w);
}

static int
teardown(void **state)
{
	idp_jws_key_unref(rogue_key);
	return world_teardown(state);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(task_starts_with_a_verifiable_delegation_token),
	    cmocka_unit_test(task_refusals_issue_nothing),
	    cmocka_unit_test(task_read_and_complete_by_who_may),
	    cmocka_unit_test(options_a_task_endpoint_does_not_read_are_refused),
	    cmocka_unit_test(task_human_email_must_be_verified),
	    cmocka_unit_test(task_human_token_of_idpd_typ_refused),
	};

	return cmocka_run_group_tests(tests, NULL, teardown);
}
