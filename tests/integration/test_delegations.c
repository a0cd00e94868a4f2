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

#include <libpq-fe.h>
#include <pthread.h>
#include <stdatomic.h>

#include "idpd/delegation.h"
#include "idpd/jws.h"
#include "idpd/tasks.h"
#include "world.h"

/* The setting of these tests: a task opened by alice for planning-agent. */
struct setting {
	struct world w;
	char planner[4096], cloud[4096], outsider[4096];
	char task_id[80], root_jti[80];
	char *root_token;
	char *alice;
};

static void
register_agent(struct world *w, const char *id, const char *type, const char *caps,
               const char *delegate_to, int depth, const char *approvals)
{
	/* In production and the cloud domain, so that the shipped policies
	 * issue their access tokens. */
	const struct world_agent a = {.id = id,
	                              .type = type,
	                              .owner = "alice@example.com",
	                              .environment = "production",
	                              .domains = "[\"cloud\",\"reports\"]",
	                              .caps = caps,
	                              .delegate_to = delegate_to,
	                              .max_depth = depth,
	                              .approvals = approvals};

	world_agent(w, &a);
}

static void
setting_start(struct setting *s, const char *db, const char *planner_approvals)
{
	const struct world_opts o = {.max_ttl = "2h"};

	memset(s, 0, sizeof(*s));
	world_start_opts(&s->w, db, &o);
	register_agent(&s->w, "cloud-agent", "cloud-inventory", "[\"cloud:Describe*\"]",
	               "[\"sub-agent\"]", 1, "[]");
	register_agent(&s->w, "report-agent", "reporter", "[\"reports:write\"]", "[]", 2, "[]");
	register_agent(&s->w, "sub-agent", "helper", "[\"cloud:Describe*\"]", "[]", 3, "[]");
	register_agent(&s->w, "outsider", "helper", "[\"cloud:Describe*\"]", "[]", 3, "[]");
	/* cloud-agent by id, report-agent by its agent type. */
	register_agent(&s->w, "planning-agent", "planner",
	               "[\"cloud:Describe*\",\"reports:write\"]", "[\"cloud-agent\",\"reporter\"]",
	               2, planner_approvals);
	world_credential(&s->w, "planning-agent", s->planner, sizeof(s->planner));
	world_credential(&s->w, "cloud-agent", s->cloud, sizeof(s->cloud));
	world_credential(&s->w, "outsider", s->outsider, sizeof(s->outsider));
	s->alice = world_human_token("alice@example.com");
	world_task_ttl(&s->w, s->alice, "planning-agent",
	               "[\"cloud:DescribeInstances\",\"reports:write\"]", "1h", s->task_id,
	               s->root_jti, &s->root_token);
}

static void
setting_stop(struct setting *s)
{
	free(s->root_token);
	free(s->alice);
	world_stop(&s->w);
}

/* POST /v1/delegations as bearer; the answer in r. */
static void
delegate(struct setting *s, const char *bearer, const char *token, const char *to,
         const char *scope, const char *ttl, struct http_resp *r)
{
	world_delegation(&s->w, bearer, token, to, scope, ttl, NULL, r);
}

static void
expect_refusal(struct setting *w, const char *bearer, const char *token, const char *to,
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
	assert_int_equal(world_count(&w->w, sql), 1);
}

static void
delegation_issues_a_narrower_chained_token(void **state)
{
	struct setting w;
	struct http_resp r;
	uint8_t h[TASK_CHAIN_HASH_LEN];
	char chain[TASK_CHAIN_TEXT_LEN], sql[512];
	const char *tok;
	json_t *act, *vc, *rc;

	(void)state;
	setting_start(&w, "t_deleg_ok", "[]");
	delegate(&w, w.planner, w.root_token, "cloud-agent", "cloud:DescribeInstances", "600", &r);
	if (r.status != 201)
		fprintf(stderr, "POST /v1/delegations: %ld %s\n", r.status, r.body);
	assert_int_equal(r.status, 201);
	tok = json_string_value(json_object_get(r.json, "delegation_token"));
	assert_non_null(tok);

	vc = world_verify(&w.w, tok, TASK_TOKEN_TYP);
	rc = world_verify(&w.w, w.root_token, TASK_TOKEN_TYP);
	assert_string_equal(json_string_value(json_object_get(vc, "sub")), "cloud-agent");
	assert_string_equal(json_string_value(json_object_get(vc, "scope")),
	                    "cloud:DescribeInstances");
	assert_string_equal(json_string_value(json_object_get(vc, "task_id")), w.task_id);
	assert_string_equal(json_string_value(json_object_get(vc, "human_principal")),
	                    "alice@example.com");
	assert_int_equal(json_integer_value(json_object_get(vc, "depth")), 1);
	assert_true(json_integer_value(json_object_get(vc, "exp")) <=
	            json_integer_value(json_object_get(vc, "iat")) + 600);

	/* The next link of the parent's chain, recomputed here. */
	assert_int_equal(delegation_chain_parse(
	                     json_string_value(json_object_get(rc, "delegation_chain_hash")), h),
	                 IDP_OK);
	assert_int_equal(task_chain_next(h, "cloud-agent",
	                                 json_string_value(json_object_get(vc, "jti")),
	                                 "cloud:DescribeInstances", h),
	                 IDP_OK);
	task_chain_format(h, chain);
	assert_string_equal(json_string_value(json_object_get(vc, "delegation_chain_hash")), chain);

	/* RFC 8693 4.1: the current actor (the delegate) outermost, wrapping the
	 * parent's act: the delegator, then the human. */
	act = json_object_get(vc, "act");
	assert_string_equal(json_string_value(json_object_get(act, "sub")), "cloud-agent");
	assert_string_equal(json_string_value(json_object_get(act, "sub_type")), "agent");
	act = json_object_get(act, "act");
	assert_string_equal(json_string_value(json_object_get(act, "sub")), "planning-agent");
	assert_string_equal(json_string_value(json_object_get(act, "sub_type")), "agent");
	act = json_object_get(act, "act");
	assert_string_equal(json_string_value(json_object_get(act, "sub")), "alice@example.com");
	assert_string_equal(json_string_value(json_object_get(act, "sub_type")), "human");

	/* Stored with its parent's jti; audited. */
	snprintf(sql, sizeof(sql),
	         "SELECT count(*) FROM delegation_tokens WHERE jti = '%s' AND parent_jti = '%s' "
	         "AND depth = 1 AND agent_id = 'cloud-agent' AND chain_hash = '%s'",
	         json_string_value(json_object_get(vc, "jti")), w.root_jti, chain);
	assert_int_equal(world_count(&w.w, sql), 1);
	assert_int_equal(world_count(&w.w, "SELECT count(*) FROM audit_events WHERE type = "
	                                   "'delegation.created' AND agent_id = 'planning-agent'"),
	                 1);
	harness_resp_free(&r);
	json_decref(vc);
	json_decref(rc);
	setting_stop(&w);
}

static void
delegation_refusals_issue_nothing(void **state)
{
	struct setting w;
	struct http_resp r;
	char *child;
	char path[160];

	(void)state;
	setting_start(&w, "t_deleg_refusals", "[]");
	expect_refusal(&w, w.planner, w.root_token, "outsider", "cloud:DescribeInstances", NULL,
	               "chain_delegate_not_allowed");
	expect_refusal(&w, w.planner, w.root_token, "cloud-agent", "cloud:Describe*", NULL,
	               "scope_not_within_parent");
	expect_refusal(&w, w.planner, w.root_token, "cloud-agent", "reports:write", NULL,
	               "scope_outside_capabilities");
	/* The answer names the scope refused, not only why. */
	delegate(&w, w.planner, w.root_token, "cloud-agent", "reports:write", NULL, &r);
	assert_int_equal(r.status, 403);
	assert_string_equal(json_string_value(json_object_get(r.json, "scope")), "reports:write");
	harness_resp_free(&r);
	expect_refusal(&w, w.planner, w.root_token, "report-agent", "reports:write", NULL,
	               "scope_exceeds_max_per_delegation");
	expect_refusal(&w, w.planner, w.root_token, "cloud-agent", "cloud:DescribeInstances",
	               "\"2h\"", "chain_lifetime_exceeds_parent");
	expect_refusal(&w, w.cloud, w.root_token, "cloud-agent", "cloud:DescribeInstances", NULL,
	               "delegation_token_not_yours");
	/* A misspelt field is an error, not its default. */
	{
		static char body[8192];

		snprintf(body, sizeof(body),
		         "{\"delegation_token\":\"%s\",\"to_agent\":\"cloud-agent\","
		         "\"scope\":\"cloud:DescribeInstances\",\"tll\":\"5m\"}",
		         w.root_token);
		world_call(&w.w, "POST", "/v1/delegations", w.planner, body, &r);
		assert_int_equal(r.status, 400);
		assert_string_equal(
		    json_string_value(json_array_get(json_object_get(r.json, "errors"), 0)),
		    "tll: not a member of this request");
		harness_resp_free(&r);
	}
	/* So is a query parameter, which the endpoint does not read. */
	{
		static char body[8192];

		snprintf(body, sizeof(body),
		         "{\"delegation_token\":\"%s\",\"to_agent\":\"cloud-agent\","
		         "\"scope\":\"cloud:DescribeInstances\"}",
		         w.root_token);
		world_call(&w.w, "POST", "/v1/delegations?ttl=5m", w.planner, body, &r);
		assert_int_equal(r.status, 400);
		assert_string_equal(
		    json_string_value(json_array_get(json_object_get(r.json, "parameters"), 0)),
		    "ttl");
		assert_null(json_object_get(r.json, "delegation_token"));
		harness_resp_free(&r);
	}
	assert_int_equal(world_count(&w.w, "SELECT count(*) FROM delegation_tokens"), 1);
	/* A request that echoes 16 KiB of scopes is still recorded, its scope
	 * clipped: an agent cannot push its refusal out of the log. */
	{
		static char body[48000];
		size_t n;

		n = (size_t)snprintf(body, sizeof(body),
		                     "{\"delegation_token\":\"%s\",\"to_agent\":\"cloud-agent\","
		                     "\"scope\":[",
		                     w.root_token);
		for (int i = 0; i < 64; i++)
			n += (size_t)snprintf(body + n, sizeof(body) - n,
			                      "%s\"cloud:Describe%03d%0239d\"", i > 0 ? "," : "", i,
			                      0);
		snprintf(body + n, sizeof(body) - n, "]}");
		world_call(&w.w, "POST", "/v1/delegations", w.planner, body, &r);
		assert_int_equal(r.status, 403);
		harness_resp_free(&r);
		assert_int_equal(
		    world_count(&w.w,
		                "SELECT count(*) FROM audit_events WHERE type = "
		                "'delegation.denied' AND body::json->'detail'->>'requested_scope' "
		                "LIKE 'cloud:Describe000%more bytes]'"),
		    1);
		/* 20 KB of to_agent, or any to_agent that is no agent id: a bad
		 * request (400), not a delegation refused, so no chain violation. */
		n = (size_t)snprintf(
		    body, sizeof(body),
		    "{\"delegation_token\":\"%s\",\"scope\":\"cloud:DescribeInstances\","
		    "\"to_agent\":\"",
		    w.root_token);
		memset(body + n, 'x', 20000);
		snprintf(body + n + 20000, sizeof(body) - n - 20000, "\"}");
		for (int k = 0; k < 3; k++) {
			if (k == 1)
				snprintf(body, sizeof(body),
				         "{\"delegation_token\":\"%s\",\"scope\":"
				         "\"cloud:DescribeInstances\",\"to_agent\":\"Bad Id!\"}",
				         w.root_token);
			if (k == 2)
				snprintf(body, sizeof(body),
				         "{\"delegation_token\":\"%s\",\"scope\":"
				         "\"cloud:DescribeInstances\",\"to_agent\":\"\"}",
				         w.root_token);
			world_call(&w.w, "POST", "/v1/delegations", w.planner, body, &r);
			assert_int_equal(r.status, 400);
			assert_string_equal(json_string_value(json_object_get(r.json, "code")),
			                    "invalid_request");
			assert_int_equal(strncmp(json_string_value(json_array_get(
			                             json_object_get(r.json, "errors"), 0)),
			                         "to_agent: not an agent id", 25),
			                 0);
			harness_resp_free(&r);
		}
		assert_int_equal(
		    world_count(&w.w, "SELECT count(*) FROM audit_events WHERE "
		                      "body::json->'detail'->>'reason' = 'chain_delegate_unknown'"),
		    0);
	}

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
	assert_int_equal(harness_status(&w.w.p, "POST", path, w.alice, NULL), 200);
	expect_refusal(&w, w.planner, w.root_token, "cloud-agent", "cloud:DescribeInstances", NULL,
	               "task_not_open");
	assert_int_equal(world_count(&w.w, "SELECT count(*) FROM delegation_tokens"), 2);
	assert_int_equal(world_count(&w.w, "SELECT count(*) FROM audit_events WHERE type = "
	                                   "'delegation.created'"),
	                 1);
	/* Without a credential: 401, nothing recorded as a delegation. */
	assert_int_equal(harness_status(&w.w.p, "POST", "/v1/delegations", NULL, "{}"), 401);
	setting_stop(&w);
}

static void
delegation_of_an_approval_class_requires_approval(void **state)
{
	struct setting w;
	struct http_resp r;

	(void)state;
	setting_start(&w, "t_deleg_approval", "[\"read\"]");
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
	assert_int_equal(world_count(&w.w, "SELECT count(*) FROM delegation_tokens"), 1);
	assert_int_equal(world_count(&w.w, "SELECT count(*) FROM audit_events WHERE type = "
	                                   "'delegation.denied' AND outcome = 'pending'"),
	                 1);
	setting_stop(&w);
}

/*
 * requires_human_approval_for ["write"] holds for every scope that can
 * write: "cloud:*" is admin by its highest class, yet it covers every write
 * verb, so it needs the approval "cloud:PutObject" needs; a read needs none.
 */
static void
a_wildcard_scope_needs_the_approval_of_every_class_it_covers(void **state)
{
	const struct world_opts o = {.max_ttl = "2h"};
	const struct world_agent store = {.id = "store-agent",
	                                  .type = "store",
	                                  .owner = "alice@example.com",
	                                  .caps = "[\"cloud:*\"]",
	                                  .delegate_to = "[]",
	                                  .max_depth = 2,
	                                  .approvals = "[]"};
	const struct world_agent planner = {.id = "planning-agent",
	                                    .type = "planner",
	                                    .owner = "alice@example.com",
	                                    .caps = "[\"cloud:*\"]",
	                                    .delegate_to = "[\"store-agent\"]",
	                                    .max_depth = 2,
	                                    .max_scope = "admin",
	                                    .approvals = "[\"write\"]"};
	const char *scopes[] = {"cloud:PutObject", "cloud:Put*", "cloud:*", "cloud:Describe*"};
	const long want[] = {202, 202, 202, 201};
	struct world w;
	struct http_resp r;
	char cred[4096], task_id[80], *alice, *root;

	(void)state;
	world_start_opts(&w, "t_deleg_apr_wild", &o);
	world_agent(&w, &store);
	world_agent(&w, &planner);
	world_credential(&w, "planning-agent", cred, sizeof(cred));
	alice = world_human_token("alice@example.com");
	world_task_ttl(&w, alice, "planning-agent", "[\"cloud:*\"]", "1h", task_id, NULL, &root);
	for (size_t i = 0; i < sizeof(scopes) / sizeof(scopes[0]); i++) {
		world_delegation(&w, cred, root, "store-agent", scopes[i], NULL, NULL, &r);
		if (r.status != want[i])
			fprintf(stderr, "%s: %ld %s\n", scopes[i], r.status, r.body);
		assert_int_equal(r.status, want[i]);
		harness_resp_free(&r);
	}
	assert_int_equal(world_count(&w, "SELECT count(*) FROM approvals"), 3);
	free(alice);
	free(root);
	world_stop(&w);
}

/*
 * An approval is asked for only when every check passes, the database's
 * too: a delegation that needs one under a revoked parent or in a completed
 * task is refused (403) and leaves no approval for a human to decide.
 */
static void
an_approval_is_asked_only_when_the_stored_checks_pass(void **state)
{
	struct setting w;
	char auth[128], task2[80], path[160];
	char *root2;

	(void)state;
	setting_start(&w, "t_deleg_apr_checks", "[\"read\"]");
	snprintf(auth, sizeof(auth), "Bearer %s", w.w.k.admin);
	assert_int_equal(world_revoke_as(&w.w, auth, w.root_token, NULL), 200);
	expect_refusal(&w, w.planner, w.root_token, "cloud-agent", "cloud:DescribeInstances", NULL,
	               "chain_token_revoked");

	world_task_ttl(&w.w, w.alice, "planning-agent", "[\"cloud:DescribeInstances\"]", "1h",
	               task2, NULL, &root2);
	snprintf(path, sizeof(path), "/v1/tasks/%s/complete", task2);
	assert_int_equal(harness_status(&w.w.p, "POST", path, w.alice, NULL), 200);
	expect_refusal(&w, w.planner, root2, "cloud-agent", "cloud:DescribeInstances", NULL,
	               "task_not_open");

	assert_int_equal(world_count(&w.w, "SELECT count(*) FROM approvals"), 0);
	assert_int_equal(world_count(&w.w, "SELECT count(*) FROM audit_events WHERE type IN "
	                                   "('approval.requested', 'delegation.denied') AND "
	                                   "outcome = 'pending'"),
	                 0);
	free(root2);
	setting_stop(&w);
}

/*
 * The shipped delegation-depth rule asks a human to approve each level of a
 * chain past the third before a token is issued there.  A link issued on a
 * human's approval (its delegator's requires_human_approval_for) counts as
 * one: the agent at depth 4 under an approved link gets its access token at
 * once, where the same agent under a link nobody approved must wait for an
 * approval of its own.
 */
static void
an_approved_link_counts_for_the_chain_below_it(void **state)
{
	struct world w;
	struct http_resp r;
	char cred[4096], c1[4096], c2[4096], c3[4096], c4[4096], c4b[4096];
	char task_id[80], root_jti[80], approval[80], path[160], body[8192];
	char *t0, *t1, *t2, *t3, *approved = NULL, *plain, *alice;
	const struct world_opts o = {.max_ttl = "2h"};
	const char *caps = "[\"cloud:Describe*\"]";

	(void)state;
	world_start_opts(&w, "t_deleg_deep", &o);
	{
		/* The one that asks for access tokens: registered for the cloud domain. */
		const struct world_agent a = {.id = "deep-5",
		                              .type = "deep-worker",
		                              .owner = "alice@example.com",
		                              .caps = caps,
		                              .domains = "[\"cloud\"]",
		                              .environment = "production",
		                              .delegate_to = "[]",
		                              .max_depth = 5,
		                              .approvals = "[]"};

		world_agent(&w, &a);
	}
	register_agent(&w, "deep-4", "deep-worker", caps, "[\"deep-5\"]", 5, "[\"read\"]");
	register_agent(&w, "deep-4b", "deep-worker", caps, "[\"deep-5\"]", 5, "[]");
	register_agent(&w, "deep-3", "deep-worker", caps, "[\"deep-4\",\"deep-4b\"]", 5, "[]");
	register_agent(&w, "deep-2", "deep-worker", caps, "[\"deep-3\"]", 5, "[]");
	register_agent(&w, "deep-1", "deep-worker", caps, "[\"deep-2\"]", 5, "[]");
	world_credential(&w, "deep-1", c1, sizeof(c1));
	world_credential(&w, "deep-2", c2, sizeof(c2));
	world_credential(&w, "deep-3", c3, sizeof(c3));
	world_credential(&w, "deep-4", c4, sizeof(c4));
	world_credential(&w, "deep-4b", c4b, sizeof(c4b));
	world_credential(&w, "deep-5", cred, sizeof(cred));
	alice = world_human_token("alice@example.com");
	world_task_ttl(&w, alice, "deep-1", "[\"cloud:DescribeInstances\"]", "1h", task_id,
	               root_jti, &t0);
	t1 = world_delegate(&w, c1, t0, "deep-2", "cloud:DescribeInstances", NULL);
	t2 = world_delegate(&w, c2, t1, "deep-3", "cloud:DescribeInstances", NULL);
	t3 = world_delegate(&w, c3, t2, "deep-4", "cloud:DescribeInstances", NULL);
	free(t3);
	/* Depth 4 through deep-4b: nobody approved the link. */
	t3 = world_delegate(&w, c3, t2, "deep-4b", "cloud:DescribeInstances", NULL);
	plain = world_delegate(&w, c4b, t3, "deep-5", "cloud:DescribeInstances", NULL);
	free(t3);
	/* Depth 4 through deep-4, whose delegations a human approves. */
	t3 = world_delegate(&w, c3, t2, "deep-4", "cloud:DescribeInstances", NULL);
	world_delegation(&w, c4, t3, "deep-5", "cloud:DescribeInstances", NULL, NULL, &r);
	assert_int_equal(r.status, 202);
	snprintf(approval, sizeof(approval), "%s",
	         json_string_value(json_object_get(r.json, "approval_id")));
	harness_resp_free(&r);
	snprintf(path, sizeof(path), "/v1/approvals/%s/approve", approval);
	world_call(&w, "POST", path, alice, NULL, &r);
	assert_int_equal(r.status, 200);
	harness_resp_free(&r);
	world_delegation(&w, c4, t3, "deep-5", "cloud:DescribeInstances", NULL, approval, &r);
	if (r.status != 201)
		fprintf(stderr, "approved delegation: %ld %s\n", r.status, r.body);
	assert_int_equal(r.status, 201);
	assert_int_equal(json_integer_value(json_object_get(r.json, "depth")), 4);
	approved = strdup(json_string_value(json_object_get(r.json, "delegation_token")));
	harness_resp_free(&r);

	/* Under the unapproved link, the token waits for a human; under the
	 * approved one, it is issued at once. */
	for (int i = 0; i < 2; i++) {
		long want = i == 0 ? 202 : 200;

		snprintf(body, sizeof(body),
		         "{\"audience\":\"%s\",\"scope\":\"cloud:DescribeInstances\","
		         "\"task_id\":\"%s\",\"reason\":\"inventory\",\"delegation_token\":\"%s\"}",
		         WORLD_AWS, task_id, i == 0 ? plain : approved);
		world_call(&w, "POST", "/v1/token", cred, body, &r);
		if (r.status != want)
			fprintf(stderr, "token at depth 4: %ld %s\n", r.status, r.body);
		assert_int_equal(r.status, want);
		assert_true(want == 202 ||
		            json_string_value(json_object_get(r.json, "access_token")) != NULL);
		harness_resp_free(&r);
	}
	free(approved);
	free(plain);
	free(t3);
	free(t2);
	free(t1);
	free(t0);
	free(alice);
	world_stop(&w);
}

/*
 * An approval answers for its own level: a link a human approved at depth 1
 * is not the approval the delegation-depth rule wants for depth 4, so the
 * agent at depth 4 under unapproved deeper links still waits for a human.
 */
static void
an_approved_shallow_link_is_not_the_approval_of_a_deep_level(void **state)
{
	struct world w;
	struct http_resp r;
	char c1[4096], c2[4096], c3[4096], c4[4096], cred[4096];
	char task_id[80], approval[80], path[160], body[8192];
	char *t0, *t1, *t2, *t3, *t4, *alice;
	const struct world_opts o = {.max_ttl = "2h"};
	const char *caps = "[\"cloud:Describe*\"]";

	(void)state;
	world_start_opts(&w, "t_deleg_shallow", &o);
	{
		const struct world_agent a = {.id = "deep-5",
		                              .type = "deep-worker",
		                              .owner = "alice@example.com",
		                              .caps = caps,
		                              .domains = "[\"cloud\"]",
		                              .environment = "production",
		                              .delegate_to = "[]",
		                              .max_depth = 5,
		                              .approvals = "[]"};

		world_agent(&w, &a);
	}
	register_agent(&w, "deep-4", "deep-worker", caps, "[\"deep-5\"]", 5, "[]");
	register_agent(&w, "deep-3", "deep-worker", caps, "[\"deep-4\"]", 5, "[]");
	register_agent(&w, "deep-2", "deep-worker", caps, "[\"deep-3\"]", 5, "[]");
	/* deep-1's delegations need a human: the link at depth 1 is approved. */
	register_agent(&w, "deep-1", "deep-worker", caps, "[\"deep-2\"]", 5, "[\"read\"]");
	world_credential(&w, "deep-1", c1, sizeof(c1));
	world_credential(&w, "deep-2", c2, sizeof(c2));
	world_credential(&w, "deep-3", c3, sizeof(c3));
	world_credential(&w, "deep-4", c4, sizeof(c4));
	world_credential(&w, "deep-5", cred, sizeof(cred));
	alice = world_human_token("alice@example.com");
	world_task_ttl(&w, alice, "deep-1", "[\"cloud:DescribeInstances\"]", "1h", task_id, NULL,
	               &t0);
	world_delegation(&w, c1, t0, "deep-2", "cloud:DescribeInstances", NULL, NULL, &r);
	assert_int_equal(r.status, 202);
	snprintf(approval, sizeof(approval), "%s",
	         json_string_value(json_object_get(r.json, "approval_id")));
	harness_resp_free(&r);
	snprintf(path, sizeof(path), "/v1/approvals/%s/approve", approval);
	world_call(&w, "POST", path, alice, NULL, &r);
	assert_int_equal(r.status, 200);
	harness_resp_free(&r);
	world_delegation(&w, c1, t0, "deep-2", "cloud:DescribeInstances", NULL, approval, &r);
	assert_int_equal(r.status, 201);
	t1 = strdup(json_string_value(json_object_get(r.json, "delegation_token")));
	harness_resp_free(&r);
	t2 = world_delegate(&w, c2, t1, "deep-3", "cloud:DescribeInstances", NULL);
	t3 = world_delegate(&w, c3, t2, "deep-4", "cloud:DescribeInstances", NULL);
	t4 = world_delegate(&w, c4, t3, "deep-5", "cloud:DescribeInstances", NULL);
	snprintf(body, sizeof(body),
	         "{\"audience\":\"%s\",\"scope\":\"cloud:DescribeInstances\","
	         "\"task_id\":\"%s\",\"reason\":\"inventory\",\"delegation_token\":\"%s\"}",
	         WORLD_AWS, task_id, t4);
	world_call(&w, "POST", "/v1/token", cred, body, &r);
	if (r.status != 202)
		fprintf(stderr, "token at depth 4: %ld %s\n", r.status, r.body);
	assert_int_equal(r.status, 202);
	harness_resp_free(&r);
	free(t4);
	free(t3);
	free(t2);
	free(t1);
	free(t0);
	free(alice);
	world_stop(&w);
}

/*
 * A read-only delegator may pass on a verb idpd does not know only once the
 * deployment names it a read verb ([[policy.verbs]]); until then an unknown
 * verb is a write and the delegation is refused.
 */
static void
deployment_verbs_decide_what_read_only_delegation_allows(void **state)
{
	static const char *verbs = "[[policy.verbs]]\nverb = \"Search*\"\nclass = \"read\"\n";
	const char *dbs[2] = {"t_deleg_verbs_none", "t_deleg_verbs_read"};

	(void)state;
	for (int with = 0; with < 2; with++) {
		const struct world_opts o = {.max_ttl = "2h", .extra_toml = with ? verbs : NULL};
		const struct world_agent searcher = {.id = "search-agent",
		                                     .type = "searcher",
		                                     .owner = "alice@example.com",
		                                     .caps = "[\"cloud:Search*\"]",
		                                     .delegate_to = "[]",
		                                     .max_depth = 2,
		                                     .approvals = "[]"};
		const struct world_agent planner = {.id = "planning-agent",
		                                    .type = "planner",
		                                    .owner = "alice@example.com",
		                                    .caps = "[\"cloud:Search*\"]",
		                                    .delegate_to = "[\"search-agent\"]",
		                                    .max_depth = 2,
		                                    .approvals = "[]"};
		struct world w;
		struct http_resp r;
		char cred[4096], task_id[80], *alice, *root;

		world_start_opts(&w, dbs[with], &o);
		world_agent(&w, &searcher);
		world_agent(&w, &planner); /* max_scope_per_delegation: read */
		world_credential(&w, "planning-agent", cred, sizeof(cred));
		alice = world_human_token("alice@example.com");
		world_task_ttl(&w, alice, "planning-agent", "[\"cloud:SearchInstances\"]", "1h",
		               task_id, NULL, &root);
		world_delegation(&w, cred, root, "search-agent", "cloud:SearchInstances", "600",
		                 NULL, &r);
		if (with) {
			assert_int_equal(r.status, 201);
		} else {
			assert_int_equal(r.status, 403);
			assert_string_equal(json_string_value(json_object_get(r.json, "reason")),
			                    "scope_exceeds_max_per_delegation");
		}
		harness_resp_free(&r);
		free(alice);
		free(root);
		world_stop(&w);
	}
}

/* PATCH planning-agent's capabilities (a JSON array text) as the registrar, with its current ETag.
 */
static void
patch_agent(struct setting *w, const char *id, const char *body)
{
	char url[256], auth[128], match[160];
	const char *get_h[] = {auth, NULL};
	const char *patch_h[] = {auth, "Content-Type: application/json", match, NULL};
	struct http_resp r;
	char etag[128];

	snprintf(auth, sizeof(auth), "Authorization: Bearer %s", w->w.k.registrar);
	snprintf(url, sizeof(url), "%s/v1/agents/%s", w->w.p.base, id);
	assert_int_equal(harness_http("GET", url, get_h, NULL, 0, &r), 0);
	assert_int_equal(r.status, 200);
	assert_true(harness_resp_header(&r, "ETag", etag, sizeof(etag)));
	harness_resp_free(&r);
	snprintf(match, sizeof(match), "If-Match: %s", etag);
	assert_int_equal(harness_http("PATCH", url, patch_h, body, strlen(body), &r), 0);
	if (r.status != 200)
		fprintf(stderr, "PATCH: %ld %s\n", r.status, r.body);
	assert_int_equal(r.status, 200);
	harness_resp_free(&r);
}

static void
set_planner_capabilities(struct setting *w, const char *caps)
{
	char body[256];

	snprintf(body, sizeof(body), "{\"capabilities\":%s}", caps);
	patch_agent(w, "planning-agent", body);
}

/*
 * cloud-agent's POST /v1/token for cloud:DescribeInstances under tok: the
 * status, the code in code, and (when out is not NULL) the access token,
 * which the caller frees.
 */
static long
cloud_token_out(struct setting *w, const char *tok, char *code, size_t len, char **out)
{
	char body[4096];
	struct http_resp r;
	long st;

	snprintf(body, sizeof(body),
	         "{\"audience\":\"%s\",\"scope\":\"cloud:DescribeInstances\",\"task_id\":\"%s\","
	         "\"reason\":\"inventory\",\"delegation_token\":\"%s\"}",
	         WORLD_AWS, w->task_id, tok);
	world_call(&w->w, "POST", "/v1/token", w->cloud, body, &r);
	st = r.status;
	if (st != 200)
		fprintf(stderr, "token: %ld %s\n", st, r.body);
	snprintf(code, len, "%s",
	         r.json != NULL && json_string_value(json_object_get(r.json, "code")) != NULL
	             ? json_string_value(json_object_get(r.json, "code"))
	             : "");
	if (out != NULL && st == 200)
		*out = strdup(json_string_value(json_object_get(r.json, "access_token")));
	harness_resp_free(&r);
	return st;
}

static long
cloud_token(struct setting *w, const char *tok, char *code, size_t len)
{
	return cloud_token_out(w, tok, code, len, NULL);
}

/*
 * An agent's authority is the least of its delegators' as they are now:
 * once an admin narrows the planner's capabilities, neither a delegation it
 * made before nor one it makes now carries what it lost, and giving the
 * capability back restores both (a check, not a revocation).
 */
static void
narrowing_a_delegators_capabilities_reaches_below_it(void **state)
{
	struct setting w;
	char code[128];
	char *child, *access = NULL;

	(void)state;
	setting_start(&w, "t_deleg_narrow", "[]");
	/* Room for cloud-agent to delegate on, to sub-agent. */
	patch_agent(&w, "cloud-agent",
	            "{\"delegation_constraints\":{\"max_chain_depth\":3,"
	            "\"max_scope_per_delegation\":\"read\",\"requires_human_approval_for\":[]}}");
	child = world_delegate(&w.w, w.planner, w.root_token, "cloud-agent",
	                       "cloud:DescribeInstances", NULL);
	assert_int_equal(cloud_token_out(&w, child, code, sizeof(code), &access), 200);
	assert_true(world_active(&w.w, access, NULL));
	assert_true(world_active(&w.w, child, NULL));

	set_planner_capabilities(&w, "[\"reports:write\"]");
	/* What was issued before goes inactive with it, the delegation too. */
	assert_false(world_active(&w.w, access, NULL));
	assert_false(world_active(&w.w, child, NULL));
	/* But what the agent did with it before is still reported: the token
	 * still proves the agent, and the audit trail needs the report. */
	{
		struct http_resp r;

		world_call(&w.w, "POST", "/v1/audit/events", access,
		           "{\"type\":\"tool_invocation\",\"action\":{\"tool\":\"ec2.describe\","
		           "\"result\":\"success\"}}",
		           &r);
		if (r.status != 201)
			fprintf(stderr, "report: %ld %s\n", r.status, r.body);
		assert_int_equal(r.status, 201);
		harness_resp_free(&r);
		/* What idpd decided, or how much it matters, is not the agent's to say. */
		world_call(&w.w, "POST", "/v1/audit/events", access,
		           "{\"type\":\"tool_invocation\",\"action\":{\"tool\":\"ec2.describe\"},"
		           "\"authorization\":{\"policy_decision\":\"ALLOW\",\"policy_rule\":"
		           "\"security-team-override\"}}",
		           &r);
		assert_int_equal(r.status, 422);
		harness_resp_free(&r);
		world_call(&w.w, "POST", "/v1/audit/events", access,
		           "{\"type\":\"tool_invocation\",\"severity\":0,\"action\":{\"tool\":"
		           "\"ec2.describe\"}}",
		           &r);
		assert_int_equal(r.status, 422);
		harness_resp_free(&r);
	}
	assert_int_equal(cloud_token(&w, child, code, sizeof(code)), 403);
	assert_string_equal(code, "scope_outside_chain_capabilities");
	/* The same through OAuth token exchange: RFC 6749's invalid_scope. */
	{
		static char form[12288];
		struct http_resp r;

		snprintf(
		    form, sizeof(form),
		    "grant_type=urn%%3Aietf%%3Aparams%%3Aoauth%%3Agrant-type%%3Atoken-exchange"
		    "&subject_token=%s&subject_token_type=urn%%3Aietf%%3Aparams%%3Aoauth%%3Atoken-"
		    "type%%3Ajwt&actor_token=%s&actor_token_type=urn%%3Aietf%%3Aparams%%3Aoauth%%"
		    "3Atoken-type%%3Ajwt&resource=https%%3A%%2F%%2Faws.example.com"
		    "&scope=cloud%%3ADescribeInstances",
		    child, w.cloud);
		world_form(&w.w, "/oauth2/token", NULL, form, &r);
		if (r.status != 400)
			fprintf(stderr, "exchange: %ld %s\n", r.status, r.body);
		assert_int_equal(r.status, 400);
		assert_string_equal(json_string_value(json_object_get(r.json, "error")),
		                    "invalid_scope");
		harness_resp_free(&r);
	}
	expect_refusal(&w, w.planner, w.root_token, "cloud-agent", "cloud:DescribeInstances", NULL,
	               "scope_outside_capabilities");
	/* Nor can the delegate pass on, further down, what its delegator lost. */
	expect_refusal(&w, w.cloud, child, "sub-agent", "cloud:DescribeInstances", NULL,
	               "scope_outside_chain_capabilities");

	set_planner_capabilities(&w, "[\"cloud:Describe*\",\"reports:write\"]");
	assert_int_equal(cloud_token(&w, child, code, sizeof(code)), 200);
	assert_true(world_active(&w.w, access, NULL));
	assert_true(world_active(&w.w, child, NULL));
	free(access);
	access = world_delegate(&w.w, w.cloud, child, "sub-agent", "cloud:DescribeInstances", NULL);
	free(access);
	free(child);
	child = world_delegate(&w.w, w.planner, w.root_token, "cloud-agent",
	                       "cloud:DescribeInstances", NULL);
	free(child);
	setting_stop(&w);
}

/*
 * A delegator's constraints as they are now bind what it delegated before,
 * as its capabilities do: once planning-agent may no longer delegate to
 * cloud-agent (delegate_to []), the delegation it made is inactive and
 * serves no access token, and a lowered max_scope_per_delegation does the
 * same to a delegation of a class above it; restoring either restores them
 * (a check, not a revocation).
 */
static void
tightening_a_delegators_constraints_reaches_what_it_delegated(void **state)
{
	struct setting w;
	char code[128], rep_cred[4096], body[4096];
	char *child, *access = NULL, *rep;
	struct http_resp r;

	(void)state;
	setting_start(&w, "t_deleg_tighten", "[]");
	patch_agent(&w, "cloud-agent",
	            "{\"delegation_constraints\":{\"max_chain_depth\":3,"
	            "\"max_scope_per_delegation\":\"read\",\"requires_human_approval_for\":[]}}");
	child = world_delegate(&w.w, w.planner, w.root_token, "cloud-agent",
	                       "cloud:DescribeInstances", NULL);
	assert_int_equal(cloud_token_out(&w, child, code, sizeof(code), &access), 200);

	patch_agent(&w, "planning-agent", "{\"delegate_to\":[]}");
	assert_false(world_active(&w.w, child, NULL));
	assert_false(world_active(&w.w, access, NULL));
	assert_int_equal(cloud_token(&w, child, code, sizeof(code)), 403);
	assert_string_equal(code, "chain_delegate_not_allowed");
	expect_refusal(&w, w.cloud, child, "sub-agent", "cloud:DescribeInstances", NULL,
	               "chain_delegate_not_allowed");
	patch_agent(&w, "planning-agent", "{\"delegate_to\":[\"cloud-agent\",\"reporter\"]}");
	assert_true(world_active(&w.w, child, NULL));
	assert_true(world_active(&w.w, access, NULL));
	assert_int_equal(cloud_token(&w, child, code, sizeof(code)), 200);

	/* A write delegated while the planner might, no longer once it may only pass on reads. */
	patch_agent(&w, "planning-agent",
	            "{\"delegation_constraints\":{\"max_chain_depth\":2,"
	            "\"max_scope_per_delegation\":\"write\",\"requires_human_approval_for\":[]}}");
	rep = world_delegate(&w.w, w.planner, w.root_token, "report-agent", "reports:write", NULL);
	assert_true(world_active(&w.w, rep, NULL));
	patch_agent(&w, "planning-agent",
	            "{\"delegation_constraints\":{\"max_chain_depth\":2,"
	            "\"max_scope_per_delegation\":\"read\",\"requires_human_approval_for\":[]}}");
	assert_false(world_active(&w.w, rep, NULL));
	world_credential(&w.w, "report-agent", rep_cred, sizeof(rep_cred));
	snprintf(body, sizeof(body),
	         "{\"audience\":\"%s\",\"scope\":\"reports:write\",\"task_id\":\"%s\","
	         "\"delegation_token\":\"%s\"}",
	         WORLD_REPORTS, w.task_id, rep);
	world_call(&w.w, "POST", "/v1/token", rep_cred, body, &r);
	assert_int_equal(r.status, 403);
	assert_string_equal(json_string_value(json_object_get(r.json, "code")),
	                    "scope_exceeds_max_per_delegation");
	assert_string_equal(json_string_value(json_object_get(r.json, "scope")), "reports:write");
	harness_resp_free(&r);
	/* The read-only link to cloud-agent still stands. */
	assert_true(world_active(&w.w, child, NULL));
	free(rep);
	free(access);
	free(child);
	setting_stop(&w);
}

/* How many events of type by agent carry chain (a JSON array) as their delegation chain. */
static long
events_with_chain(struct setting *w, const char *type, const char *agent, const char *chain)
{
	char sql[1024];

	snprintf(sql, sizeof(sql),
	         "SELECT count(*) FROM audit_events WHERE type = '%s' AND agent_id = '%s' AND "
	         "body::jsonb->'delegation_chain' = '%s'::jsonb",
	         type, agent, chain);
	return world_count(&w->w, sql);
}

/*
 * An event names the whole chain: the human, then every agent from the root
 * down to the one acting (docs/audit.md), for a delegation made, refused or
 * waiting on an approval three links down, and for that approval's events.
 */
static void
delegation_events_name_the_whole_chain(void **state)
{
	struct setting w;
	struct http_resp r;
	char *child, *sub, id[80], path[160];

	(void)state;
	setting_start(&w, "t_deleg_chain", "[]");
	patch_agent(&w, "cloud-agent",
	            "{\"delegation_constraints\":{\"max_chain_depth\":3,"
	            "\"max_scope_per_delegation\":\"read\",\"requires_human_approval_for\":[]}}");
	child = world_delegate(&w.w, w.planner, w.root_token, "cloud-agent",
	                       "cloud:DescribeInstances", NULL);
	sub = world_delegate(&w.w, w.cloud, child, "sub-agent", "cloud:DescribeInstances", NULL);
	assert_int_equal(events_with_chain(&w, "delegation.created", "cloud-agent",
	                                   "[\"alice@example.com\",\"planning-agent\","
	                                   "\"cloud-agent\",\"sub-agent\"]"),
	                 1);
	assert_int_equal(events_with_chain(&w, "delegation.created", "planning-agent",
	                                   "[\"alice@example.com\",\"planning-agent\","
	                                   "\"cloud-agent\"]"),
	                 1);
	expect_refusal(&w, w.cloud, child, "outsider", "cloud:DescribeInstances", NULL,
	               "chain_delegate_not_allowed");
	assert_int_equal(events_with_chain(&w, "delegation.denied", "cloud-agent",
	                                   "[\"alice@example.com\",\"planning-agent\","
	                                   "\"cloud-agent\"]"),
	                 1);

	/* The approval of a delegation three links down, and its events. */
	patch_agent(&w, "cloud-agent",
	            "{\"delegation_constraints\":{\"max_chain_depth\":3,"
	            "\"max_scope_per_delegation\":\"read\",\"requires_human_approval_for\":"
	            "[\"read\"]}}");
	world_delegation(&w.w, w.cloud, child, "sub-agent", "cloud:DescribeInstances", NULL, NULL,
	                 &r);
	assert_int_equal(r.status, 202);
	snprintf(id, sizeof(id), "%s", json_string_value(json_object_get(r.json, "approval_id")));
	harness_resp_free(&r);
	snprintf(path, sizeof(path), "/v1/approvals/%s/approve", id);
	world_call(&w.w, "POST", path, w.alice, NULL, &r);
	assert_int_equal(r.status, 200);
	assert_int_equal(json_array_size(json_object_get(r.json, "delegation_chain")), 2);
	assert_string_equal(
	    json_string_value(json_array_get(json_object_get(r.json, "delegation_chain"), 0)),
	    "planning-agent");
	harness_resp_free(&r);
	world_delegation(&w.w, w.cloud, child, "sub-agent", "cloud:DescribeInstances", NULL, id,
	                 &r);
	assert_int_equal(r.status, 201);
	harness_resp_free(&r);
	for (int i = 0; i < 3; i++) {
		const char *types[] = {"approval.requested", "approval.granted", "approval.used"};

		assert_int_equal(events_with_chain(&w, types[i], "cloud-agent",
		                                   "[\"alice@example.com\",\"planning-agent\","
		                                   "\"cloud-agent\"]"),
		                 1);
	}
	free(sub);
	free(child);
	setting_stop(&w);
}

/* A connection of the test's own to w's database, as another instance's transaction. */
static PGconn *
db_session(struct setting *w)
{
	char url[256];
	PGconn *pg;

	harness_db_url(w->w.db, url, sizeof(url));
	pg = PQconnectdb(url);
	assert_int_equal(PQstatus(pg), CONNECTION_OK);
	return pg;
}

static void
db_do(PGconn *pg, const char *sql)
{
	PGresult *r = PQexec(pg, sql);

	if (PQresultStatus(r) != PGRES_COMMAND_OK && PQresultStatus(r) != PGRES_TUPLES_OK)
		fprintf(stderr, "%s: %s\n", sql, PQerrorMessage(pg));
	assert_true(PQresultStatus(r) == PGRES_COMMAND_OK || PQresultStatus(r) == PGRES_TUPLES_OK);
	PQclear(r);
}

/* One POST on its own thread; no cmocka here. */
struct racer {
	char url[256];
	char auth[4200];
	const char *ctype; /* the Content-Type header */
	char body[8192];
	long status;
	char reason[64];
	_Atomic bool done;
};

static void *
race(void *arg)
{
	struct racer *x = arg;
	const char *h[] = {x->auth, x->ctype, NULL};
	struct http_resp r;

	if (harness_http("POST", x->url, h, x->body, strlen(x->body), &r) == 0) {
		x->status = r.status;
		if (json_string_value(json_object_get(r.json, "reason")) != NULL)
			snprintf(x->reason, sizeof(x->reason), "%s",
			         json_string_value(json_object_get(r.json, "reason")));
		harness_resp_free(&r);
	}
	atomic_store(&x->done, true);
	return NULL;
}

/* Whether x finishes within ms. */
static bool
finishes_within(struct racer *x, int ms)
{
	for (int i = 0; i < ms / 10 && !atomic_load(&x->done); i++)
		usleep(10 * 1000);
	return atomic_load(&x->done);
}

/*
 * A delegation racing a revocation of its parent is never issued dead: while
 * the revocation's transaction holds the parent's row (revoked, not yet
 * committed), the delegation waits for it, then sees it and is refused.
 */
static void
a_delegation_waits_for_a_revocation_of_its_parent_in_progress(void **state)
{
	struct setting w;
	struct racer x = {.done = false};
	pthread_t th;
	PGconn *pg;
	char sql[256];

	(void)state;
	setting_start(&w, "t_deleg_race_revoke", "[]");
	pg = db_session(&w);
	db_do(pg, "BEGIN");
	snprintf(sql, sizeof(sql),
	         "UPDATE delegation_tokens SET revoked_at = now() WHERE jti = '%s'", w.root_jti);
	db_do(pg, sql);
	snprintf(x.url, sizeof(x.url), "%s/v1/delegations", w.w.p.base);
	snprintf(x.auth, sizeof(x.auth), "Authorization: Bearer %s", w.planner);
	x.ctype = "Content-Type: application/json";
	snprintf(x.body, sizeof(x.body),
	         "{\"delegation_token\":\"%s\",\"to_agent\":\"cloud-agent\","
	         "\"scope\":\"cloud:DescribeInstances\"}",
	         w.root_token);
	assert_int_equal(pthread_create(&th, NULL, race, &x), 0);
	if (finishes_within(&x, 500))
		fprintf(stderr, "not held by the revocation: %ld %s\n", x.status, x.reason);
	assert_false(atomic_load(&x.done));
	db_do(pg, "COMMIT");
	assert_int_equal(pthread_join(th, NULL), 0);
	assert_int_equal(x.status, 403);
	assert_string_equal(x.reason, "chain_token_revoked");
	assert_int_equal(world_count(&w.w, "SELECT count(*) FROM delegation_tokens"), 1);
	PQfinish(pg);
	setting_stop(&w);
}

/*
 * The other order: a revocation that comes while a delegation under the
 * revoked token is being made waits for it and revokes the new token too
 * (its row, its event), rather than reading the subtree without it.
 */
static void
a_revocation_waits_for_a_delegation_in_progress_and_reaches_it(void **state)
{
	struct setting w;
	struct racer x = {.done = false};
	char sql[1024];
	pthread_t th;
	PGconn *pg;

	(void)state;
	setting_start(&w, "t_deleg_race_deleg", "[]");
	/* A delegation in progress, as delegation.c makes it: the chain share-locked, the new
	 * row inserted, not yet committed. */
	pg = db_session(&w);
	db_do(pg, "BEGIN");
	snprintf(sql, sizeof(sql), "SELECT 1 FROM delegation_tokens WHERE jti = '%s' FOR SHARE",
	         w.root_jti);
	db_do(pg, sql);
	snprintf(
	    sql, sizeof(sql),
	    "INSERT INTO delegation_tokens (jti, task_id, parent_jti, agent_id, scope, depth, "
	    "chain_hash, kid, issued_at, expires_at) SELECT 'racejti-AAAAAAAAAAAAAA', task_id, "
	    "jti, 'cloud-agent', scope, 1, chain_hash, kid, issued_at, expires_at FROM "
	    "delegation_tokens WHERE jti = '%s'",
	    w.root_jti);
	db_do(pg, sql);
	snprintf(x.url, sizeof(x.url), "%s/revoke", w.w.p.base);
	snprintf(x.auth, sizeof(x.auth), "Authorization: Bearer %s", w.w.k.admin);
	x.ctype = "Content-Type: application/x-www-form-urlencoded";
	snprintf(x.body, sizeof(x.body), "token=%s", w.root_token);
	assert_int_equal(pthread_create(&th, NULL, race, &x), 0);
	if (finishes_within(&x, 500))
		fprintf(stderr, "not held by the delegation: %ld\n", x.status);
	assert_false(atomic_load(&x.done));
	db_do(pg, "COMMIT");
	assert_int_equal(pthread_join(th, NULL), 0);
	assert_int_equal(x.status, 200);
	assert_int_equal(world_count(&w.w, "SELECT count(*) FROM delegation_tokens WHERE jti = "
	                                   "'racejti-AAAAAAAAAAAAAA' AND revoked_at IS NOT NULL"),
	                 1);
	assert_int_equal(world_count(&w.w, "SELECT count(*) FROM audit_events WHERE type = "
	                                   "'delegation.revoked' AND "
	                                   "(body::json->'detail'->>'revoked_count')::int = 2"),
	                 1);
	PQfinish(pg);
	setting_stop(&w);
}

/* The number of delegation.denied events for reason. */
static long
denials(struct setting *w, const char *reason)
{
	char sql[512];

	snprintf(sql, sizeof(sql),
	         "SELECT count(*) FROM audit_events WHERE type = 'delegation.denied' AND "
	         "body::json->'detail'->>'reason' = '%s'",
	         reason);
	return world_count(&w->w, sql);
}

/*
 * A suspension committed on another connection reaches this instance's
 * registry by a notification that may still be on its way.  Here it never
 * comes (the trigger is disabled): the delegation reads the agents' rows in
 * its own transaction and is refused all the same, for a suspended
 * delegate, a suspended delegator, and a delegator resumed after a
 * suspension (its revocation epoch cuts the token it delegates from).
 */
static void
a_suspension_not_yet_notified_is_seen_by_the_delegation(void **state)
{
	struct setting w;
	struct http_resp r;

	(void)state;
	setting_start(&w, "t_deleg_suspended", "[]");
	assert_int_equal(
	    harness_sql(w.w.db, "ALTER TABLE agents DISABLE TRIGGER agents_notify_update"), 0);

	/* The delegate. */
	assert_int_equal(harness_sql(w.w.db, "UPDATE agents SET status = 'suspended', "
	                                     "revocation_epoch = now() WHERE id = 'cloud-agent'"),
	                 0);
	expect_refusal(&w, w.planner, w.root_token, "cloud-agent", "cloud:DescribeInstances", NULL,
	               "chain_delegate_not_active");
	assert_int_equal(harness_sql(w.w.db, "UPDATE agents SET status = 'active', "
	                                     "revocation_epoch = NULL WHERE id = 'cloud-agent'"),
	                 0);

	/* The delegator: its credential still authenticates (the cache says
	 * active), the delegation is refused in its transaction. */
	assert_int_equal(harness_sql(w.w.db,
	                             "UPDATE agents SET status = 'suspended', "
	                             "revocation_epoch = now() WHERE id = 'planning-agent'"),
	                 0);
	expect_refusal(&w, w.planner, w.root_token, "cloud-agent", "cloud:DescribeInstances", NULL,
	               "chain_agent_inactive");

	/* Resumed: active again, but the token it holds is from before the epoch. */
	assert_int_equal(harness_sql(w.w.db, "UPDATE agents SET status = 'active' WHERE id = "
	                                     "'planning-agent'"),
	                 0);
	delegate(&w, w.planner, w.root_token, "cloud-agent", "cloud:DescribeInstances", NULL, &r);
	assert_int_equal(r.status, 403);
	assert_string_equal(json_string_value(json_object_get(r.json, "reason")),
	                    "chain_agent_inactive");
	harness_resp_free(&r);
	assert_int_equal(denials(&w, "chain_agent_inactive"), 2);
	/* Nothing was issued: the root token is the only one. */
	assert_int_equal(world_count(&w.w, "SELECT count(*) FROM delegation_tokens"), 1);

	assert_int_equal(
	    harness_sql(w.w.db, "ALTER TABLE agents ENABLE TRIGGER agents_notify_update"), 0);
	setting_stop(&w);
}

/*
 * A suspension of the delegate in progress on another connection (its row
 * updated, not yet committed) holds a delegation to it until it commits;
 * the delegation then sees it and is refused, rather than issuing a token
 * to an agent whose suspension committed first.
 */
static void
a_delegation_waits_for_a_suspension_in_progress(void **state)
{
	struct setting w;
	struct racer x = {.done = false};
	pthread_t th;
	PGconn *pg;

	(void)state;
	setting_start(&w, "t_deleg_race_suspend", "[]");
	pg = db_session(&w);
	db_do(pg, "BEGIN");
	db_do(pg, "UPDATE agents SET status = 'suspended', revocation_epoch = now() WHERE id = "
	          "'cloud-agent'");
	snprintf(x.url, sizeof(x.url), "%s/v1/delegations", w.w.p.base);
	snprintf(x.auth, sizeof(x.auth), "Authorization: Bearer %s", w.planner);
	x.ctype = "Content-Type: application/json";
	snprintf(x.body, sizeof(x.body),
	         "{\"delegation_token\":\"%s\",\"to_agent\":\"cloud-agent\","
	         "\"scope\":\"cloud:DescribeInstances\"}",
	         w.root_token);
	assert_int_equal(pthread_create(&th, NULL, race, &x), 0);
	if (finishes_within(&x, 500))
		fprintf(stderr, "not held by the suspension: %ld %s\n", x.status, x.reason);
	assert_false(atomic_load(&x.done));
	db_do(pg, "COMMIT");
	assert_int_equal(pthread_join(th, NULL), 0);
	assert_int_equal(x.status, 403);
	assert_string_equal(x.reason, "chain_delegate_not_active");
	assert_int_equal(denials(&w, "chain_delegate_not_active"), 1);
	assert_int_equal(world_count(&w.w, "SELECT count(*) FROM delegation_tokens"), 1);
	PQfinish(pg);
	setting_stop(&w);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(delegation_issues_a_narrower_chained_token),
	    cmocka_unit_test(delegation_refusals_issue_nothing),
	    cmocka_unit_test(delegation_of_an_approval_class_requires_approval),
	    cmocka_unit_test(an_approval_is_asked_only_when_the_stored_checks_pass),
	    cmocka_unit_test(a_wildcard_scope_needs_the_approval_of_every_class_it_covers),
	    cmocka_unit_test(an_approved_link_counts_for_the_chain_below_it),
	    cmocka_unit_test(an_approved_shallow_link_is_not_the_approval_of_a_deep_level),
	    cmocka_unit_test(deployment_verbs_decide_what_read_only_delegation_allows),
	    cmocka_unit_test(narrowing_a_delegators_capabilities_reaches_below_it),
	    cmocka_unit_test(tightening_a_delegators_constraints_reaches_what_it_delegated),
	    cmocka_unit_test(delegation_events_name_the_whole_chain),
	    cmocka_unit_test(a_delegation_waits_for_a_revocation_of_its_parent_in_progress),
	    cmocka_unit_test(a_revocation_waits_for_a_delegation_in_progress_and_reaches_it),
	    cmocka_unit_test(a_suspension_not_yet_notified_is_seen_by_the_delegation),
	    cmocka_unit_test(a_delegation_waits_for_a_suspension_in_progress),
	};

	return cmocka_run_group_tests(tests, NULL, world_teardown);
}
