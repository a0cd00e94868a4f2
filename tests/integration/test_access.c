/*
 * Integration tests of POST /v1/token through idpd's HTTP API and a real
 * PostgreSQL: a task opened by alice, a planning agent delegating to a cloud
 * agent and a cost agent, and access tokens for the [[resources]] of the
 * world (tests/support/world.h).
 *
 * The policy set is the shipped base, scope-boundary and cross-domain
 * policies plus two test rules, so that every outcome is reachable at any
 * hour: an ALLOW_WITH_CONDITIONS for long-lived cloud tokens and a
 * REQUIRE_APPROVAL for write-class scopes on confidential resources.  Each
 * refusal is checked for its status and code, for its token.denied event,
 * and for issuing nothing (no token.issued event appears).
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdbool.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include <openssl/bn.h>

#include "idpd/auth.h"
#include "idpd/b64.h"
#include "idpd/jws.h"
#include "idpd/revocation.h"
#include "idpd/tasks.h"
#include "world.h"

static const char test_rules[] =
    "@id(\"test-long-cloud-tokens\")\n"
    "@reason(\"long-lived cloud tokens are narrowed to Describe and five minutes\")\n"
    "allow_with_conditions when { resource.domain == \"cloud\" and request.ttl > 1800 }\n"
    "\twith { scopes: [\"cloud:Describe*\"], max_ttl: \"5m\" };\n"
    "\n"
    "@id(\"test-confidential-writes\")\n"
    "@reason(\"writes to confidential resources need a human approval\")\n"
    "require_approval when {\n"
    "\tresource.classification == \"confidential\" and request.action_class >= \"write\"\n"
    "} unless { context.approval };\n"
    "\n"
    "@id(\"test-risk-watched\")\n"
    "@reason(\"a watched agent at risk 60 or more needs a human\")\n"
    "require_approval when { agent.type == \"risk-watched\" and context.risk >= 60 }\n"
    "\tunless { context.approval };\n"
    "\n"
    "@id(\"test-volume-watched\")\n"
    "@reason(\"a volume-watched agent's fourth call a minute to one resource needs a human\")\n"
    "require_approval when {\n"
    "\tagent.type == \"volume-watched\" and context.calls_last_minute > 3\n"
    "} unless { context.approval };\n";

static char policy_dir[64];

/* The shipped policies these tests rely on, and the test rules. */
static void
write_policies(void)
{
	static const char *const shipped[] = {"base", "scope-boundary", "cross-domain"};
	const char *top = getenv("IDPD_TEST_TOP");
	char src[512], dst[512], buf[8192];

	if (policy_dir[0] != '\0')
		return;
	snprintf(policy_dir, sizeof(policy_dir), "/tmp/idpd_access_pol_XXXXXX");
	assert_non_null(mkdtemp(policy_dir));
	for (size_t i = 0; i < sizeof(shipped) / sizeof(shipped[0]); i++) {
		FILE *in, *out;
		size_t n;

		snprintf(src, sizeof(src), "%s/policies/%s.policy", top ? top : ".", shipped[i]);
		snprintf(dst, sizeof(dst), "%s/%s.policy", policy_dir, shipped[i]);
		in = fopen(src, "r");
		assert_non_null(in);
		out = fopen(dst, "w");
		assert_non_null(out);
		while ((n = fread(buf, 1, sizeof(buf), in)) > 0)
			assert_int_equal(fwrite(buf, 1, n, out), n);
		fclose(in);
		assert_int_equal(fclose(out), 0);
	}
	snprintf(dst, sizeof(dst), "%s/test.policy", policy_dir);
	{
		FILE *out = fopen(dst, "w");

		assert_non_null(out);
		assert_int_equal(fputs(test_rules, out) >= 0, 1);
		assert_int_equal(fclose(out), 0);
	}
}

struct setting {
	struct world w;
	char planner[4096], cloud[4096], cost[4096], outsider[4096];
	char task_id[80];
	char *root_token, *cloud_token, *cost_token;
	char *alice;
};

static void
agent(struct setting *s, const char *id, const char *type, const char *caps, const char *domains,
      const char *delegate_to)
{
	const struct world_agent a = {.id = id,
	                              .type = type,
	                              .owner = "alice@example.com",
	                              .version = "v2.4.1",
	                              .environment = "production",
	                              .caps = caps,
	                              .domains = domains,
	                              .delegate_to = delegate_to,
	                              .max_depth = 3,
	                              .max_scope = "write"};

	world_agent(&s->w, &a);
}

static char *
delegate(struct setting *s, const char *to, const char *scope)
{
	return world_delegate(&s->w, s->planner, s->root_token, to, scope, "\"1h\"");
}

/* The setting on database db; more is appended to the config (may be NULL). */
static void
setting_start_with(struct setting *s, const char *db, const struct world_opts *more)
{
	char extra[512];
	struct world_opts o = more != NULL ? *more : (struct world_opts){0};

	memset(s, 0, sizeof(*s));
	write_policies();
	snprintf(extra, sizeof(extra), "[policy]\ndir = \"%s\"\n%s", policy_dir,
	         o.extra_toml != NULL ? o.extra_toml : "");
	o.extra_toml = extra;
	world_start_opts(&s->w, db, &o);
	agent(s, "cloud-agent", "cloud-inventory",
	      "[\"cloud:Describe*\",\"cloud:List*\",\"billing:read\"]", "[\"cloud\"]", "[]");
	agent(s, "cost-agent", "cost-analysis", "[\"billing:read\",\"billing:export\"]",
	      "[\"finance\"]", "[]");
	agent(s, "outsider", "helper", "[\"cloud:Describe*\"]", "[\"cloud\"]", "[]");
	agent(s, "planning-agent", "planner",
	      "[\"cloud:Describe*\",\"cloud:List*\",\"billing:read\",\"billing:export\"]",
	      "[\"cloud\",\"finance\"]", "[\"cloud-agent\",\"cost-agent\"]");
	world_credential(&s->w, "planning-agent", s->planner, sizeof(s->planner));
	world_credential(&s->w, "cloud-agent", s->cloud, sizeof(s->cloud));
	world_credential(&s->w, "cost-agent", s->cost, sizeof(s->cost));
	world_credential(&s->w, "outsider", s->outsider, sizeof(s->outsider));
	s->alice = world_human_token("alice@example.com");
	world_task(&s->w, s->alice, "planning-agent",
	           "[\"cloud:DescribeInstances\",\"cloud:ListBuckets\",\"billing:read\","
	           "\"billing:export\"]",
	           s->task_id, &s->root_token);
	s->cloud_token =
	    delegate(s, "cloud-agent", "cloud:DescribeInstances cloud:ListBuckets billing:read");
	s->cost_token = delegate(s, "cost-agent", "billing:read billing:export");
}

static void
setting_start(struct setting *s, const char *db)
{
	setting_start_with(s, db, NULL);
}

static void
setting_stop(struct setting *s)
{
	world_stop(&s->w);
	free(s->root_token);
	free(s->cloud_token);
	free(s->cost_token);
	free(s->alice);
}

/* POST /v1/token as bearer; extra is more JSON members (may be ""). */
static void
token(struct setting *s, const char *bearer, const char *dtoken, const char *audience,
      const char *scope, const char *extra, struct http_resp *r)
{
	char body[8192];

	snprintf(body, sizeof(body),
	         "{\"audience\":\"%s\",\"scope\":\"%s\",\"task_id\":\"%s\","
	         "\"reason\":\"inventory for the quarterly review\"%s%s%s%s}",
	         audience, scope, s->task_id, dtoken ? ",\"delegation_token\":\"" : "",
	         dtoken ? dtoken : "", dtoken ? "\"" : "", extra);
	world_call(&s->w, "POST", "/v1/token", bearer, body, r);
}

/* Whether the rule id is among the decision's rules. */
static bool
has_rule(const json_t *answer, const char *id)
{
	const json_t *rules = json_object_get(answer, "rules"), *v;
	size_t i;

	json_array_foreach(rules, i, v)
	{
		if (json_is_string(v) && strcmp(json_string_value(v), id) == 0)
			return true;
	}
	return false;
}

static long
issued(struct setting *s)
{
	return world_count(&s->w, "SELECT count(*) FROM audit_events WHERE type = 'token.issued'");
}

static long
denied(struct setting *s, const char *reason)
{
	char sql[512];

	snprintf(sql, sizeof(sql),
	         "SELECT count(*) FROM audit_events WHERE type = 'token.denied' AND "
	         "body::json->'detail'->>'reason' = '%s'",
	         reason);
	return world_count(&s->w, sql);
}

/* A refusal: the status, the code, one token.denied event with it, nothing issued. */
static void
expect_refusal(struct setting *s, const char *bearer, const char *dtoken, const char *audience,
               const char *scope, const char *extra, long status, const char *code)
{
	long before = issued(s), seen = denied(s, code);
	struct http_resp r;

	token(s, bearer, dtoken, audience, scope, extra, &r);
	if (r.status != status)
		fprintf(stderr, "expected %ld %s: %ld %s\n", status, code, r.status, r.body);
	assert_int_equal(r.status, status);
	assert_string_equal(json_string_value(json_object_get(r.json, "code")), code);
	assert_null(json_object_get(r.json, "access_token"));
	harness_resp_free(&r);
	assert_int_equal(issued(s), before);
	if (status == 403)
		assert_int_equal(denied(s, code), seen + 1);
}

static void
access_token_carries_the_seed_claims(void **state)
{
	struct setting s;
	struct http_resp r;
	json_t *c, *dc;
	const char *tok;

	(void)state;
	setting_start(&s, "t_access_claims");
	token(&s, s.cloud, s.cloud_token, WORLD_AWS, "cloud:DescribeInstances", "", &r);
	if (r.status != 200)
		fprintf(stderr, "token: %ld %s\n", r.status, r.body);
	assert_int_equal(r.status, 200);
	assert_string_equal(json_string_value(json_object_get(r.json, "token_type")), "Bearer");
	assert_string_equal(json_string_value(json_object_get(r.json, "scope")),
	                    "cloud:DescribeInstances");
	assert_string_equal(json_string_value(json_object_get(r.json, "decision")), "ALLOW");
	/* tokens.default_ttl is 15 minutes. */
	assert_int_equal(json_integer_value(json_object_get(r.json, "expires_in")), 900);
	tok = json_string_value(json_object_get(r.json, "access_token"));
	assert_non_null(tok);
	c = world_verify(&s.w, tok, ACCESS_TOKEN_TYP);
	dc = world_verify(&s.w, s.cloud_token, TASK_TOKEN_TYP);
	assert_string_equal(json_string_value(json_object_get(c, "sub")), "cloud-agent");
	assert_string_equal(json_string_value(json_object_get(c, "client_id")), "cloud-agent");
	assert_string_equal(json_string_value(json_object_get(c, "aud")), WORLD_AWS);
	assert_string_equal(json_string_value(json_object_get(c, "iss")), "idpd");
	assert_string_equal(json_string_value(json_object_get(c, "scope")),
	                    "cloud:DescribeInstances");
	assert_string_equal(json_string_value(json_object_get(c, "task_id")), s.task_id);
	assert_string_equal(json_string_value(json_object_get(c, "human_principal")),
	                    "alice@example.com");
	assert_string_equal(json_string_value(json_object_get(c, "agent_type")), "cloud-inventory");
	assert_string_equal(json_string_value(json_object_get(c, "agent_version")), "v2.4.1");
	assert_string_equal(json_string_value(json_object_get(c, "jti")),
	                    json_string_value(json_object_get(r.json, "jti")));
	assert_int_equal(json_integer_value(json_object_get(c, "exp")) -
	                     json_integer_value(json_object_get(c, "iat")),
	                 900);
	/* Bound to the delegation token it stands on: its chain hash, its jti, its act. */
	assert_string_equal(json_string_value(json_object_get(c, "delegation_chain_hash")),
	                    json_string_value(json_object_get(dc, "delegation_chain_hash")));
	assert_string_equal(json_string_value(json_object_get(c, ACCESS_CLAIM_DELEGATION_JTI)),
	                    json_string_value(json_object_get(dc, "jti")));
	assert_true(json_equal(json_object_get(c, "act"), json_object_get(dc, "act")));
	/* RFC 8693 4.1: the agent acting now outermost, its delegator next. */
	assert_string_equal(json_string_value(json_object_get(json_object_get(c, "act"), "sub")),
	                    "cloud-agent");
	assert_string_equal(json_string_value(json_object_get(
	                        json_object_get(json_object_get(c, "act"), "act"), "sub")),
	                    "planning-agent");
	json_decref(c);
	json_decref(dc);
	harness_resp_free(&r);

	/* Audited durably, with the task, the human and the chain. */
	assert_int_equal(
	    world_count(&s.w,
	                "SELECT count(*) FROM audit_events WHERE type = 'token.issued' AND "
	                "task_id IS NOT NULL AND body::json->>'human_principal' = "
	                "'alice@example.com' AND body::json->'authorization'->>'granted_scope'"
	                " = 'cloud:DescribeInstances'"),
	    1);
	/* last_active is written in batches (registry.last_active_flush = 1s). */
	for (int i = 0; i < 100; i++) {
		if (world_count(&s.w, "SELECT count(*) FROM agents WHERE id = 'cloud-agent' AND "
		                      "last_active IS NOT NULL") == 1)
			break;
		usleep(50 * 1000);
	}
	assert_int_equal(world_count(&s.w, "SELECT count(*) FROM agents WHERE id = 'cloud-agent' "
	                                   "AND last_active IS NOT NULL"),
	                 1);
	setting_stop(&s);
}

static void
conditions_narrow_scope_and_lifetime(void **state)
{
	struct setting s;
	struct http_resp r;
	json_t *c;

	(void)state;
	setting_start(&s, "t_access_conditions");
	token(&s, s.cloud, s.cloud_token, WORLD_AWS, "cloud:DescribeInstances cloud:ListBuckets",
	      ",\"ttl\":3600", &r);
	assert_int_equal(r.status, 200);
	assert_string_equal(json_string_value(json_object_get(r.json, "decision")),
	                    "ALLOW_WITH_CONDITIONS");
	assert_string_equal(json_string_value(json_object_get(r.json, "scope")),
	                    "cloud:DescribeInstances");
	assert_int_equal(json_integer_value(json_object_get(r.json, "expires_in")), 300);
	assert_int_equal(
	    json_integer_value(json_object_get(json_object_get(r.json, "conditions"), "max_ttl")),
	    300);
	c = world_verify(&s.w, json_string_value(json_object_get(r.json, "access_token")),
	                 ACCESS_TOKEN_TYP);
	assert_string_equal(json_string_value(json_object_get(c, "scope")),
	                    "cloud:DescribeInstances");
	json_decref(c);
	harness_resp_free(&r);
	/* tokens.max_ttl caps an ask the policy does not narrow: 2h becomes at most 1h. */
	token(&s, s.cost, s.cost_token, WORLD_BILLING, "billing:read", ",\"ttl\":\"2h\"", &r);
	assert_int_equal(r.status, 200);
	assert_true(json_integer_value(json_object_get(r.json, "expires_in")) <= 3600);
	assert_true(json_integer_value(json_object_get(r.json, "expires_in")) >= 3590);
	harness_resp_free(&r);
	/* So does an ask at the top of what a duration can say (the cap
	 * comes before the sum with the time, which would overflow). */
	token(&s, s.cost, s.cost_token, WORLD_BILLING, "billing:read",
	      ",\"ttl\":\"9223372036854775s\"", &r);
	assert_int_equal(r.status, 200);
	assert_true(json_integer_value(json_object_get(r.json, "expires_in")) <= 3600);
	assert_true(json_integer_value(json_object_get(r.json, "expires_in")) >= 3590);
	harness_resp_free(&r);
	setting_stop(&s);
}

static void
policy_deny_answers_403_with_rules(void **state)
{
	struct setting s;
	struct http_resp r;

	(void)state;
	setting_start(&s, "t_access_deny");
	/* billing:read is a capability of cloud-agent, but finance is not its domain. */
	token(&s, s.cloud, s.cloud_token, WORLD_BILLING, "billing:read", "", &r);
	assert_int_equal(r.status, 403);
	assert_string_equal(json_string_value(json_object_get(r.json, "code")), "policy_denied");
	assert_string_equal(json_string_value(json_object_get(r.json, "decision")), "DENY");
	assert_string_equal(json_string_value(json_object_get(r.json, "policy_reason")),
	                    "the resource is in a domain the agent is not registered for");
	assert_true(has_rule(r.json, "cross-domain"));
	harness_resp_free(&r);
	assert_int_equal(issued(&s), 0);
	assert_int_equal(denied(&s, "policy_denied"), 1);
	setting_stop(&s);
}

static void
refusals_issue_nothing(void **state)
{
	struct setting s;
	char forged[8192];
	size_t n;

	(void)state;
	setting_start(&s, "t_access_refusals");
	/* A misspelt field is an error, not a default. */
	{
		struct http_resp r;
		long before = issued(&s);

		token(&s, s.cloud, s.cloud_token, WORLD_AWS, "cloud:DescribeInstances",
		      ",\"tll\":\"1m\"", &r);
		assert_int_equal(r.status, 400);
		assert_string_equal(
		    json_string_value(json_array_get(json_object_get(r.json, "errors"), 0)),
		    "tll: not a member of this request");
		harness_resp_free(&r);
		assert_int_equal(issued(&s), before);
	}
	/* So is a query parameter, which the endpoint does not read. */
	{
		struct http_resp r;
		char body[8192];
		long before = issued(&s);

		snprintf(body, sizeof(body),
		         "{\"audience\":\"%s\",\"scope\":\"cloud:DescribeInstances\","
		         "\"task_id\":\"%s\",\"delegation_token\":\"%s\"}",
		         WORLD_AWS, s.task_id, s.cloud_token);
		world_call(&s.w, "POST", "/v1/token?ttl=1m", s.cloud, body, &r);
		assert_int_equal(r.status, 400);
		assert_string_equal(
		    json_string_value(json_array_get(json_object_get(r.json, "parameters"), 0)),
		    "ttl");
		assert_null(json_object_get(r.json, "access_token"));
		harness_resp_free(&r);
		assert_int_equal(issued(&s), before);
	}
	/* An audience that is not a resource. */
	expect_refusal(&s, s.cloud, s.cloud_token, "https://evil.example.com",
	               "cloud:DescribeInstances", "", 400, "invalid_target");
	/* Outside the agent's capabilities (an escalation attempt). */
	expect_refusal(&s, s.cloud, s.cloud_token, WORLD_AWS, "cloud:TerminateInstances", "", 403,
	               "scope_outside_capabilities");
	/* The answer names the scope refused, not only why. */
	{
		struct http_resp r;

		token(&s, s.cloud, s.cloud_token, WORLD_AWS,
		      "cloud:DescribeInstances cloud:TerminateInstances", "", &r);
		assert_int_equal(r.status, 403);
		assert_string_equal(json_string_value(json_object_get(r.json, "scope")),
		                    "cloud:TerminateInstances");
		assert_non_null(strstr(json_string_value(json_object_get(r.json, "detail")),
		                       "cloud:TerminateInstances"));
		harness_resp_free(&r);
	}
	/* Within its capabilities but wider than its delegation token. */
	expect_refusal(&s, s.cloud, s.cloud_token, WORLD_AWS, "cloud:DescribeVolumes", "", 403,
	               "scope_not_within_delegation");
	/* Another agent's delegation token. */
	expect_refusal(&s, s.outsider, s.cloud_token, WORLD_AWS, "cloud:DescribeInstances", "", 403,
	               "delegation_token_not_yours");
	/* A forged one: the last signature character changed. */
	snprintf(forged, sizeof(forged), "%s", s.cloud_token);
	n = strlen(forged);
	forged[n - 2] = forged[n - 2] == 'A' ? 'B' : 'A';
	expect_refusal(&s, s.cloud, forged, WORLD_AWS, "cloud:DescribeInstances", "", 403,
	               "delegation_token_invalid");
	/* Only the root agent may stand on the task's root token without presenting it. */
	expect_refusal(&s, s.cloud, NULL, WORLD_AWS, "cloud:DescribeInstances", "", 403,
	               "delegation_token_required");
	/* Another task's id. */
	{
		struct http_resp r;
		char body[8192];

		snprintf(body, sizeof(body),
		         "{\"audience\":\"%s\",\"scope\":\"cloud:DescribeInstances\","
		         "\"task_id\":\"task_AAAAAAAAAAAAAAAAAAAAAA\",\"delegation_token\":\"%s\"}",
		         WORLD_AWS, s.cloud_token);
		world_call(&s.w, "POST", "/v1/token", s.cloud, body, &r);
		assert_int_equal(r.status, 403);
		assert_string_equal(json_string_value(json_object_get(r.json, "code")),
		                    "task_mismatch");
		harness_resp_free(&r);
	}
	/* No credential; a body that is not a token request. */
	{
		struct http_resp r;

		world_call(&s.w, "POST", "/v1/token", NULL, "{}", &r);
		assert_int_equal(r.status, 401);
		harness_resp_free(&r);
		world_call(&s.w, "POST", "/v1/token", s.cloud, "{\"scope\":7}", &r);
		assert_int_equal(r.status, 400);
		assert_non_null(json_object_get(r.json, "errors"));
		harness_resp_free(&r);
	}
	assert_int_equal(issued(&s), 0);
	setting_stop(&s);
}

static void
root_agent_needs_no_delegation_token(void **state)
{
	struct setting s;
	struct http_resp r;
	json_t *c;

	(void)state;
	setting_start(&s, "t_access_root");
	token(&s, s.planner, NULL, WORLD_AWS, "cloud:ListBuckets", "", &r);
	if (r.status != 200)
		fprintf(stderr, "root: %ld %s\n", r.status, r.body);
	assert_int_equal(r.status, 200);
	c = world_verify(&s.w, json_string_value(json_object_get(r.json, "access_token")),
	                 ACCESS_TOKEN_TYP);
	/* As the root token's act: the root agent acting, the human before it. */
	assert_string_equal(json_string_value(json_object_get(json_object_get(c, "act"), "sub")),
	                    "planning-agent");
	assert_string_equal(json_string_value(json_object_get(
	                        json_object_get(json_object_get(c, "act"), "act"), "sub")),
	                    "alice@example.com");
	json_decref(c);
	harness_resp_free(&r);
	setting_stop(&s);
}

static void
completed_task_and_decommissioned_agent_get_nothing(void **state)
{
	struct setting s;
	struct http_resp r;
	char path[256];

	(void)state;
	setting_start(&s, "t_access_ended");
	/* The cost agent is decommissioned mid-task: its credential stops authenticating. */
	world_call(&s.w, "POST", "/v1/agents/cost-agent/decommission", s.w.k.registrar,
	           "{\"reason\":\"retired mid-task\"}", &r);
	assert_true(r.status == 200 || r.status == 204);
	harness_resp_free(&r);
	token(&s, s.cost, s.cost_token, WORLD_BILLING, "billing:read", "", &r);
	assert_int_equal(r.status, 401);
	harness_resp_free(&r);
	/* The task completes: every token of it stops working, new ones are refused. */
	snprintf(path, sizeof(path), "/v1/tasks/%s/complete", s.task_id);
	world_call(&s.w, "POST", path, s.alice, NULL, &r);
	assert_int_equal(r.status, 200);
	harness_resp_free(&r);
	expect_refusal(&s, s.cloud, s.cloud_token, WORLD_AWS, "cloud:DescribeInstances", "", 403,
	               "token_revoked");
	assert_int_equal(issued(&s), 0);
	setting_stop(&s);
}

/*
 * A token request names its task, but only the token it stands on proves
 * it: a refusal goes into the timeline of the task the token is for, never
 * of a task the request merely claims.  An outsider naming alice's task is
 * audited without a task (the claim kept in detail.requested_task_id), and
 * a task_id that is no task id is a 400 that changes nothing.
 */
static void
a_refusal_goes_only_into_the_timeline_of_a_proven_task(void **state)
{
	struct setting s;
	struct http_resp r;
	char body[4096], path[160], sql[512];
	json_t *e;
	size_t i;

	(void)state;
	setting_start(&s, "t_access_claimed_task");
	/* No delegation token: the outsider is not the task's root agent. */
	expect_refusal(&s, s.outsider, NULL, WORLD_AWS, "cloud:DescribeInstances", "", 403,
	               "delegation_token_required");
	/* cloud-agent's own token, for a task it claims is another. */
	snprintf(body, sizeof(body),
	         "{\"audience\":\"%s\",\"scope\":\"cloud:DescribeInstances\","
	         "\"task_id\":\"task_notthetokenstask\",\"delegation_token\":\"%s\"}",
	         WORLD_AWS, s.cloud_token);
	world_call(&s.w, "POST", "/v1/token", s.cloud, body, &r);
	assert_int_equal(r.status, 403);
	assert_string_equal(json_string_value(json_object_get(r.json, "code")), "task_mismatch");
	harness_resp_free(&r);

	snprintf(path, sizeof(path), "/v1/tasks/%s/timeline", s.task_id);
	world_call(&s.w, "GET", path, s.alice, NULL, &r);
	assert_int_equal(r.status, 200);
	json_array_foreach(json_object_get(r.json, "events"), i, e)
	{
		assert_string_not_equal(json_string_value(json_object_get(e, "agent_id")),
		                        "outsider");
	}
	harness_resp_free(&r);
	/* Still audited, with the claim aside. */
	snprintf(sql, sizeof(sql),
	         "SELECT count(*) FROM audit_events WHERE type = 'token.denied' AND agent_id = "
	         "'outsider' AND task_id IS NULL AND body::json->'detail'->>'requested_task_id' = "
	         "'%s'",
	         s.task_id);
	assert_int_equal(world_count(&s.w, sql), 1);
	/* The mismatch belongs to the token's own task, the claim aside. */
	snprintf(
	    sql, sizeof(sql),
	    "SELECT count(*) FROM audit_events WHERE type = 'token.denied' AND agent_id = "
	    "'cloud-agent' AND task_id = '%s' AND body::json->'detail'->>'requested_task_id' = "
	    "'task_notthetokenstask'",
	    s.task_id);
	assert_int_equal(world_count(&s.w, sql), 1);

	/* Not a task id: 400, nothing recorded. */
	{
		static const char *const bad[] = {"Bad Id!", "nope", ""};
		long before = world_count(&s.w, "SELECT count(*) FROM audit_events WHERE type = "
		                                "'token.denied'");
		char longid[400];

		memset(longid, 'a', sizeof(longid) - 1);
		memcpy(longid, "task_", 5);
		longid[sizeof(longid) - 1] = '\0';
		for (int k = 0; k < 4; k++) {
			snprintf(body, sizeof(body),
			         "{\"audience\":\"%s\",\"scope\":\"cloud:DescribeInstances\","
			         "\"task_id\":\"%s\"}",
			         WORLD_AWS, k < 3 ? bad[k] : longid);
			world_call(&s.w, "POST", "/v1/token", s.outsider, body, &r);
			if (r.status != 400)
				fprintf(stderr, "task_id %d: %ld %s\n", k, r.status, r.body);
			assert_int_equal(r.status, 400);
			assert_string_equal(json_string_value(json_object_get(r.json, "code")),
			                    "invalid_request");
			harness_resp_free(&r);
		}
		assert_int_equal(world_count(&s.w, "SELECT count(*) FROM audit_events WHERE type = "
		                                   "'token.denied'"),
		                 before);
	}
	setting_stop(&s);
}

static void stop_rules(struct setting *s, const char *rules);

/* REQUIRE_APPROVAL: 202 with an approval; alice approves; the retry is issued once. */
static void
approval_is_bound_and_single_use(void **state)
{
	struct setting s;
	struct http_resp r;
	char approval[128], path[256], extra[256];

	(void)state;
	setting_start(&s, "t_access_approval");
	token(&s, s.cost, s.cost_token, WORLD_BILLING, "billing:export", "", &r);
	if (r.status != 202)
		fprintf(stderr, "approval: %ld %s\n", r.status, r.body);
	assert_int_equal(r.status, 202);
	assert_string_equal(json_string_value(json_object_get(r.json, "decision")),
	                    "REQUIRE_APPROVAL");
	assert_true(has_rule(r.json, "test-confidential-writes"));
	/* The delegation's 202 shape: a status and an RFC 3339 expiry. */
	assert_string_equal(json_string_value(json_object_get(r.json, "status")), "pending");
	assert_non_null(json_string_value(json_object_get(r.json, "expires_at")));
	assert_int_equal(strlen(json_string_value(json_object_get(r.json, "expires_at"))), 24);
	snprintf(approval, sizeof(approval), "%s",
	         json_string_value(json_object_get(r.json, "approval_id")));
	harness_resp_free(&r);
	assert_int_equal(issued(&s), 0);
	/* Asking again before anyone decides waits on the same approval. */
	token(&s, s.cost, s.cost_token, WORLD_BILLING, "billing:export", "", &r);
	assert_int_equal(r.status, 202);
	assert_string_equal(json_string_value(json_object_get(r.json, "approval_id")), approval);
	harness_resp_free(&r);
	assert_int_equal(world_count(&s.w, "SELECT count(*) FROM approvals"), 1);
	snprintf(extra, sizeof(extra), ",\"approval_id\":\"%s\"", approval);
	/* Still pending: the retry is refused and the approval is not spent. */
	expect_refusal(&s, s.cost, s.cost_token, WORLD_BILLING, "billing:export", extra, 403,
	               "approval_pending");
	/* Alice, the task's human, approves. */
	snprintf(path, sizeof(path), "/v1/approvals/%s/approve", approval);
	world_call(&s.w, "POST", path, s.alice, "{\"note\":\"ok for the review\"}", &r);
	if (r.status != 200)
		fprintf(stderr, "approve: %ld %s\n", r.status, r.body);
	assert_int_equal(r.status, 200);
	harness_resp_free(&r);
	/* Used for another scope: refused, and still usable for its own. */
	expect_refusal(&s, s.cost, s.cost_token, WORLD_BILLING, "billing:read billing:export",
	               extra, 403, "approval_mismatch");
	/* A rule no approval lifts: refused, not a new approval to wait on
	 * forever, and the presented one is kept. */
	stop_rules(&s, "@id(\"test-exports-always-approved\")\n@reason(\"r\")\n"
	               "require_approval when { request.action_class >= \"write\" };\n");
	expect_refusal(&s, s.cost, s.cost_token, WORLD_BILLING, "billing:export", extra, 403,
	               "approval_insufficient");
	assert_int_equal(world_count(&s.w, "SELECT count(*) FROM approvals"), 1);
	stop_rules(&s, NULL);
	token(&s, s.cost, s.cost_token, WORLD_BILLING, "billing:export", extra, &r);
	if (r.status != 200)
		fprintf(stderr, "approved retry: %ld %s\n", r.status, r.body);
	assert_int_equal(r.status, 200);
	assert_string_equal(json_string_value(json_object_get(r.json, "scope")), "billing:export");
	harness_resp_free(&r);
	assert_int_equal(issued(&s), 1);
	/* The approval's events name the whole chain: alice, the planner, the asker. */
	assert_int_equal(
	    world_count(&s.w, "SELECT count(*) FROM audit_events WHERE type IN "
	                      "('approval.requested', 'approval.granted', 'approval.used') AND "
	                      "outcome <> 'denied' AND body::jsonb->'delegation_chain' = "
	                      "'[\"alice@example.com\",\"planning-agent\",\"cost-agent\"]'::jsonb"),
	    3);
	/* Replayed: refused. */
	expect_refusal(&s, s.cost, s.cost_token, WORLD_BILLING, "billing:export", extra, 403,
	               "approval_used");
	setting_stop(&s);
}

/* Write (or, with rules NULL, remove) policies/stop.policy and reload the set. */
static void
stop_rules(struct setting *s, const char *rules)
{
	char path[512];
	struct http_resp r;

	snprintf(path, sizeof(path), "%s/stop.policy", policy_dir);
	if (rules != NULL) {
		FILE *out = fopen(path, "w");

		assert_non_null(out);
		assert_true(fputs(rules, out) >= 0);
		assert_int_equal(fclose(out), 0);
	} else {
		assert_int_equal(unlink(path), 0);
	}
	world_call(&s->w, "POST", "/v1/policies/reload", s->w.k.admin, NULL, &r);
	assert_int_equal(r.status, 200);
	harness_resp_free(&r);
}

struct spender {
	struct setting *s;
	const char *extra;
	long status;
	char error[64];
};

/* One approved retry; no cmocka here (another thread). */
static void *
spend(void *arg)
{
	struct spender *sp = arg;
	struct http_resp r;
	char body[8192];

	snprintf(body, sizeof(body),
	         "{\"audience\":\"%s\",\"scope\":\"billing:export\",\"task_id\":\"%s\","
	         "\"reason\":\"inventory for the quarterly review\",\"delegation_token\":\"%s\"%s}",
	         WORLD_BILLING, sp->s->task_id, sp->s->cost_token, sp->extra);
	if (harness_call(&sp->s->w.p, "POST", "/v1/token", sp->s->cost, body, &r) != 0)
		return NULL;
	sp->status = r.status;
	if (json_string_value(json_object_get(r.json, "code")) != NULL)
		snprintf(sp->error, sizeof(sp->error), "%s",
		         json_string_value(json_object_get(r.json, "code")));
	harness_resp_free(&r);
	return NULL;
}

/*
 * An approval is checked before the policy and spent only once the token
 * is signed: a DENY leaves it for the retry, and of eight retries at once
 * one gets the token and seven approval_used.
 */
static void
an_approval_is_spent_only_by_an_issued_token(void **state)
{
	struct setting s;
	struct http_resp r;
	struct spender sp[8];
	pthread_t th[8];
	char approval[128], path[256], extra[256], sql[256];
	int ok = 0, used = 0;

	(void)state;
	setting_start(&s, "t_access_spend");
	token(&s, s.cost, s.cost_token, WORLD_BILLING, "billing:export", "", &r);
	assert_int_equal(r.status, 202);
	snprintf(approval, sizeof(approval), "%s",
	         json_string_value(json_object_get(r.json, "approval_id")));
	harness_resp_free(&r);
	snprintf(path, sizeof(path), "/v1/approvals/%s/approve", approval);
	world_call(&s.w, "POST", path, s.alice, NULL, &r);
	assert_int_equal(r.status, 200);
	harness_resp_free(&r);
	snprintf(extra, sizeof(extra), ",\"approval_id\":\"%s\"", approval);
	snprintf(sql, sizeof(sql),
	         "SELECT count(*) FROM approvals WHERE id = '%s' AND status = "
	         "'approved'",
	         approval);

	/* Denied after the check: no token, and the approval is still there. */
	stop_rules(&s, "@id(\"test-stop-exports\")\n@reason(\"exports are stopped\")\n"
	               "deny when { resource.domain == \"finance\" };\n");
	expect_refusal(&s, s.cost, s.cost_token, WORLD_BILLING, "billing:export", extra, 403,
	               "policy_denied");
	assert_int_equal(world_count(&s.w, sql), 1);
	stop_rules(&s, NULL);

	for (int i = 0; i < 8; i++) {
		sp[i] = (struct spender){.s = &s, .extra = extra};
		assert_int_equal(pthread_create(&th[i], NULL, spend, &sp[i]), 0);
	}
	for (int i = 0; i < 8; i++) {
		assert_int_equal(pthread_join(th[i], NULL), 0);
		ok += sp[i].status == 200;
		used += sp[i].status == 403 && strcmp(sp[i].error, "approval_used") == 0;
	}
	assert_int_equal(ok, 1);
	assert_int_equal(used, 7);
	assert_int_equal(issued(&s), 1);
	assert_int_equal(world_count(&s.w, sql), 0);
	setting_stop(&s);
}

/*
 * The setting on db with audit.timeout 2 s, an approval of cost-agent's
 * billing:export that alice approved (its id into approval, the request's
 * member for it into extra), and a trigger that makes the batch holding
 * an event that names "withheld-marker" take 2.5 s: its emitter gives up
 * first, and the event commits after all.
 */
static void
approved_with_slow_marker(struct setting *s, const char *db, char approval[128], char extra[256])
{
	const struct world_opts o = {.extra_toml = "[audit]\ntimeout = \"2s\"\n"};
	struct http_resp r;
	char path[256];

	setting_start_with(s, db, &o);
	token(s, s->cost, s->cost_token, WORLD_BILLING, "billing:export", "", &r);
	assert_int_equal(r.status, 202);
	snprintf(approval, 128, "%s", json_string_value(json_object_get(r.json, "approval_id")));
	harness_resp_free(&r);
	snprintf(path, sizeof(path), "/v1/approvals/%s/approve", approval);
	world_call(&s->w, "POST", path, s->alice, NULL, &r);
	assert_int_equal(r.status, 200);
	harness_resp_free(&r);
	snprintf(extra, 256, ",\"approval_id\":\"%s\"", approval);
	assert_int_equal(harness_sql(db, "CREATE FUNCTION slow_marker() RETURNS trigger LANGUAGE "
	                                 "plpgsql AS $$ BEGIN IF NEW.body LIKE "
	                                 "'%withheld-marker%' THEN PERFORM pg_sleep(2.5); END IF; "
	                                 "RETURN NEW; END $$; CREATE TRIGGER slow_marker BEFORE "
	                                 "INSERT ON audit_events FOR EACH ROW EXECUTE FUNCTION "
	                                 "slow_marker()"),
	                 0);
}

/* The approved retry whose token.issued names the marker: withheld, 503. */
static long
withheld_retry(struct setting *s, const char *extra)
{
	struct http_resp r;
	char body[8192];
	long status;

	snprintf(body, sizeof(body),
	         "{\"audience\":\"%s\",\"scope\":\"billing:export\",\"task_id\":\"%s\","
	         "\"reason\":\"withheld-marker\",\"delegation_token\":\"%s\"%s}",
	         WORLD_BILLING, s->task_id, s->cost_token, extra);
	if (harness_call(&s->w.p, "POST", "/v1/token", s->cost, body, &r) != 0)
		return -1;
	status = r.status;
	if (status != 503 || strstr(r.body, "eyJ") != NULL ||
	    json_string_value(json_object_get(r.json, "code")) == NULL ||
	    strcmp(json_string_value(json_object_get(r.json, "code")), "unavailable") != 0) {
		fprintf(stderr, "withheld: %ld %s\n", r.status, r.body);
		status = -1;
	}
	harness_resp_free(&r);
	return status;
}

/*
 * A token withheld after it spent its approval (its token.issued event not
 * durable within audit.timeout: 503, the token never leaves) gives the
 * approval back, audited as approval.restored, so that the agent's retry
 * is issued without a human approving again, and only once.  Here a
 * trigger of the test's makes the batch holding that one event slow: it
 * commits after the emitter gave up, and the writer's audit.withdrawn then
 * names the same event as the approval.restored does.
 */
static void
a_withheld_token_gives_its_approval_back(void **state)
{
	struct setting s;
	struct http_resp r;
	char approval[128], extra[256], sql[1024];

	(void)state;
	approved_with_slow_marker(&s, "t_access_give_back", approval, extra);
	assert_int_equal(withheld_retry(&s, extra), 503);

	/* Approved again by the time the 503 came, and the log says why. */
	snprintf(sql, sizeof(sql),
	         "SELECT count(*) FROM approvals WHERE id = '%s' AND status = 'approved' AND "
	         "used_at IS NULL AND used_by IS NULL",
	         approval);
	assert_int_equal(world_count(&s.w, sql), 1);
	snprintf(sql, sizeof(sql),
	         "SELECT count(*) FROM audit_events WHERE type = 'approval.restored' AND "
	         "outcome = 'success' AND agent_id = 'cost-agent' AND task_id = '%s' AND "
	         "body::jsonb->'detail'->>'approval_id' = '%s' AND "
	         "body::jsonb->'detail'->>'reason' = 'token_withheld'",
	         s.task_id, approval);
	assert_int_equal(world_count(&s.w, sql), 1);
	/* The withheld token's event committed late: withdrawn, and it is the
	 * one (event and token) that the approval was given back for. */
	snprintf(sql, sizeof(sql),
	         "SELECT count(*) FROM audit_events t JOIN audit_events w ON w.type = "
	         "'audit.withdrawn' AND w.body::jsonb->'detail'->>'withdrawn_event_id' = "
	         "t.event_id::text JOIN audit_events a ON a.type = 'approval.restored' AND "
	         "a.body::jsonb->'detail'->>'withheld_event_id' = t.event_id::text AND "
	         "a.body::jsonb->'authorization'->>'token_id' = "
	         "t.body::jsonb->'authorization'->>'token_id' WHERE t.type = 'token.issued' AND "
	         "t.body::jsonb->'detail'->>'approval_id' = '%s'",
	         approval);
	for (int i = 0; i < 100 && world_count(&s.w, sql) == 0; i++) {
		struct timespec ts = {0, 100 * 1000 * 1000};

		nanosleep(&ts, NULL);
	}
	assert_int_equal(world_count(&s.w, sql), 1);

	/* The retry is issued without anyone approving again... */
	token(&s, s.cost, s.cost_token, WORLD_BILLING, "billing:export", extra, &r);
	if (r.status != 200)
		fprintf(stderr, "retry: %ld %s\n", r.status, r.body);
	assert_int_equal(r.status, 200);
	assert_non_null(json_string_value(json_object_get(r.json, "access_token")));
	harness_resp_free(&r);
	/* ...and once: the approval is single use again. */
	expect_refusal(&s, s.cost, s.cost_token, WORLD_BILLING, "billing:export", extra, 403,
	               "approval_used");
	snprintf(sql, sizeof(sql),
	         "SELECT count(*) FROM audit_events WHERE type = 'approval.used' AND outcome = "
	         "'success' AND body::jsonb->'detail'->>'approval_id' = '%s'",
	         approval);
	assert_int_equal(world_count(&s.w, sql), 2);
	world_call(&s.w, "GET", "/v1/audit/verify", s.w.k.auditor, NULL, &r);
	assert_int_equal(r.status, 200);
	assert_true(json_is_true(json_object_get(r.json, "ok")));
	harness_resp_free(&r);
	setting_stop(&s);
}

struct withheld_asker {
	struct setting *s;
	const char *extra;
	long status;
};

static void *
ask_withheld(void *arg)
{
	struct withheld_asker *a = arg;

	a->status = withheld_retry(a->s, a->extra);
	return NULL;
}

/*
 * Giving an approval back is a compare and set on the token it was spent
 * on: when, by then, the approval reads as spent on another token (here
 * the test rewrites its row while the withheld token waits for its audit
 * commit), that use is left alone and nothing is recorded as given back.
 */
static void
a_withheld_token_never_undoes_another_use(void **state)
{
	struct setting s;
	struct withheld_asker a;
	pthread_t th;
	char approval[128], extra[256], sql[512];

	(void)state;
	approved_with_slow_marker(&s, "t_access_give_back_cas", approval, extra);
	a = (struct withheld_asker){.s = &s, .extra = extra};
	assert_int_equal(pthread_create(&th, NULL, ask_withheld, &a), 0);
	snprintf(sql, sizeof(sql),
	         "SELECT count(*) FROM approvals WHERE id = '%s' AND status = 'used' AND used_by "
	         "IS NOT NULL",
	         approval);
	for (int i = 0; i < 150 && world_count(&s.w, sql) == 0; i++) {
		struct timespec ts = {0, 10 * 1000 * 1000};

		nanosleep(&ts, NULL);
	}
	assert_int_equal(world_count(&s.w, sql), 1);
	snprintf(sql, sizeof(sql),
	         "UPDATE approvals SET used_by = 'another-token-jti' WHERE id = '%s'", approval);
	assert_int_equal(harness_sql("t_access_give_back_cas", sql), 0);
	assert_int_equal(pthread_join(th, NULL), 0);
	assert_int_equal(a.status, 503);
	snprintf(sql, sizeof(sql),
	         "SELECT count(*) FROM approvals WHERE id = '%s' AND status = 'used' AND used_by = "
	         "'another-token-jti'",
	         approval);
	assert_int_equal(world_count(&s.w, sql), 1);
	assert_int_equal(world_count(&s.w, "SELECT count(*) FROM audit_events WHERE type = "
	                                   "'approval.restored'"),
	                 0);
	assert_true(harness_log_contains(&s.w.p, "not given back"));
	setting_stop(&s);
}

/* A form value with the characters RFC 3986 reserves percent-encoded (tokens are base64url: none).
 */
static void
form_add(char *out, size_t len, const char *name, const char *value)
{
	size_t at = strlen(out);

	snprintf(out + at, len - at, "%s%s=", at > 0 ? "&" : "", name);
	at = strlen(out);
	for (const char *p = value; *p != '\0' && at + 4 < len; p++) {
		if ((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') ||
		    (*p >= '0' && *p <= '9') || *p == '-' || *p == '_' || *p == '.' || *p == '~')
			out[at++] = *p;
		else
			at += (size_t)snprintf(out + at, len - at, "%%%02X", (unsigned char)*p);
	}
	out[at] = '\0';
}

#define TT_JWT "urn:ietf:params:oauth:token-type:jwt"

/* Start form (len bytes) as a token exchange of subject (of stt) by actor (of att). */
static void
exchange_form(char *form, size_t len, const char *subject, const char *stt, const char *actor,
              const char *att)
{
	form[0] = '\0';
	form_add(form, len, "grant_type", "urn:ietf:params:oauth:grant-type:token-exchange");
	form_add(form, len, "subject_token", subject);
	form_add(form, len, "subject_token_type", stt);
	form_add(form, len, "actor_token", actor);
	form_add(form, len, "actor_token_type", att);
}

/* RFC 8693 token exchange reaches the same core: same checks, same token. */
/*
 * An access token names the identity credential that asked for it; revoking
 * that credential (stolen, say) ends the tokens it obtained, on every
 * instance, and not those the agent obtained with another credential.
 */
static void
revoking_a_credential_ends_the_access_tokens_it_obtained(void **state)
{
	struct setting s;
	struct world peer;
	struct http_resp r;
	char second[4096], auth[4200];
	char *at1, *at2;
	json_t *c, *cc;

	(void)state;
	setting_start(&s, "t_access_cred");
	token(&s, s.cloud, s.cloud_token, WORLD_AWS, "cloud:DescribeInstances", "", &r);
	assert_int_equal(r.status, 200);
	at1 = strdup(json_string_value(json_object_get(r.json, "access_token")));
	harness_resp_free(&r);
	c = world_verify(&s.w, at1, ACCESS_TOKEN_TYP);
	cc = world_verify(&s.w, s.cloud, IDP_JWS_TYP_IDENTITY);
	assert_string_equal(json_string_value(json_object_get(c, ACCESS_CLAIM_IDENTITY_JTI)),
	                    json_string_value(json_object_get(cc, "jti")));
	/* The audit trail says which credential asked. */
	{
		char sql[512];

		snprintf(sql, sizeof(sql),
		         "SELECT count(*) FROM audit_events WHERE type = 'token.issued' AND "
		         "body::json->'detail'->>'identity_jti' = '%s'",
		         json_string_value(json_object_get(cc, "jti")));
		assert_int_equal(world_count(&s.w, sql), 1);
	}
	json_decref(c);
	json_decref(cc);
	/* The same agent attests again: a second credential, a second token. */
	world_credential(&s.w, "cloud-agent", second, sizeof(second));
	token(&s, second, s.cloud_token, WORLD_AWS, "cloud:DescribeInstances", "", &r);
	assert_int_equal(r.status, 200);
	at2 = strdup(json_string_value(json_object_get(r.json, "access_token")));
	harness_resp_free(&r);
	assert_true(world_active(&s.w, at1, NULL));
	assert_true(world_active(&s.w, at2, NULL));

	snprintf(auth, sizeof(auth), "Bearer %s", s.cloud);
	assert_int_equal(world_revoke_as(&s.w, auth, s.cloud, NULL), 200);
	assert_false(world_active(&s.w, at1, NULL));
	assert_true(world_active(&s.w, at2, NULL));
	world_call(&s.w, "GET", "/metrics", NULL, NULL, &r);
	assert_non_null(
	    strstr(r.body, "idpd_introspection_inactive_total{reason=\"credential_revoked\"} 1\n"));
	harness_resp_free(&r);
	/* Kept as long as such a token can live: its exp plus tokens.max_ttl's maximum. */
	assert_int_equal(world_count(&s.w, "SELECT count(*) FROM revoked_tokens r JOIN "
	                                   "agent_credentials c USING (jti) WHERE r.kind = "
	                                   "'identity' AND r.expires_at = c.expires_at + "
	                                   "interval '24 hours'"),
	                 1);
	/* An instance started now reads it from PostgreSQL. */
	world_start_peer(&s.w, &peer);
	assert_false(world_active(&peer, at1, NULL));
	assert_true(world_active(&peer, at2, NULL));
	world_stop(&peer);
	free(at1);
	free(at2);
	setting_stop(&s);
}

static void
token_exchange_issues_the_same_token(void **state)
{
	static char form[16384];
	struct setting s;
	struct http_resp r;
	char cc[64];
	json_t *c;

	(void)state;
	setting_start(&s, "t_access_exchange");
	exchange_form(form, sizeof(form), s.cloud_token,
	              "urn:idpd:params:oauth:token-type:delegation", s.cloud, TT_JWT);
	form_add(form, sizeof(form), "audience", WORLD_AWS);
	form_add(form, sizeof(form), "scope", "cloud:DescribeInstances");
	world_form(&s.w, "/oauth2/token", NULL, form, &r);
	if (r.status != 200)
		fprintf(stderr, "exchange: %ld %s\n", r.status, r.body);
	assert_int_equal(r.status, 200);
	assert_string_equal(json_string_value(json_object_get(r.json, "issued_token_type")),
	                    "urn:ietf:params:oauth:token-type:access_token");
	assert_string_equal(json_string_value(json_object_get(r.json, "token_type")), "Bearer");
	assert_int_equal(json_integer_value(json_object_get(r.json, "expires_in")), 900);
	/* RFC 8693 2.2.1's members, and only those (the body is written by hand). */
	assert_string_equal(json_string_value(json_object_get(r.json, "scope")),
	                    "cloud:DescribeInstances");
	assert_int_equal(json_object_size(r.json), 5);
	assert_true(harness_resp_header(&r, "Content-Type", cc, sizeof(cc)));
	assert_string_equal(cc, "application/json");
	assert_true(harness_resp_header(&r, "Cache-Control", cc, sizeof(cc)));
	assert_string_equal(cc, "no-store");
	assert_true(harness_resp_header(&r, "Pragma", cc, sizeof(cc))); /* RFC 6749 5.1 */
	assert_string_equal(cc, "no-cache");
	c = world_verify(&s.w, json_string_value(json_object_get(r.json, "access_token")),
	                 ACCESS_TOKEN_TYP);
	assert_string_equal(json_string_value(json_object_get(c, "sub")), "cloud-agent");
	assert_string_equal(json_string_value(json_object_get(c, "task_id")), s.task_id);
	assert_string_equal(json_string_value(json_object_get(c, "aud")), WORLD_AWS);
	json_decref(c);
	harness_resp_free(&r);
	assert_int_equal(issued(&s), 1);
	setting_stop(&s);
}

/*
 * A granted scope of several kilobytes still goes out: the answer's buffer
 * was capped at 16 KiB while sized for six bytes per scope character, so
 * past about 2 KB of scope a token already issued and audited became a 500.
 */
static void
token_exchange_answers_a_long_scope(void **state)
{
	static char form[32768], scope[4096];
	struct setting s;
	struct http_resp r;
	char task_id[80];
	char *root = NULL, *deleg;
	size_t n = 0;

	(void)state;
	setting_start(&s, "t_access_exchange_long");
	world_task(&s.w, s.alice, "planning-agent", "[\"cloud:Describe*\"]", task_id, &root);
	deleg = world_delegate(&s.w, s.planner, root, "cloud-agent", "cloud:Describe*", "\"1h\"");
	assert_non_null(deleg);
	for (int i = 0; i < 12; i++) {
		n += (size_t)snprintf(scope + n, sizeof(scope) - n, "%scloud:Describe%02d",
		                      i ? " " : "", i);
		for (int k = 0; k < 180; k++)
			scope[n++] = 'x';
		scope[n] = '\0';
	}
	exchange_form(form, sizeof(form), deleg, "urn:idpd:params:oauth:token-type:delegation",
	              s.cloud, TT_JWT);
	form_add(form, sizeof(form), "audience", WORLD_AWS);
	form_add(form, sizeof(form), "scope", scope);
	world_form(&s.w, "/oauth2/token", NULL, form, &r);
	if (r.status != 200)
		fprintf(stderr, "exchange: %ld %s\n", r.status, r.body);
	assert_int_equal(r.status, 200);
	assert_string_equal(json_string_value(json_object_get(r.json, "scope")), scope);
	harness_resp_free(&r);
	free(deleg);
	free(root);
	setting_stop(&s);
}

/* Failures are RFC 6749 section 5.2 bodies, and issue nothing. */
static void
token_exchange_errors_are_oauth_bodies(void **state)
{
	static char form[16384];
	static char long_reason[1100];
	static const struct {
		const char *audience, *scope, *subject, *actor_type;
		long status;
		const char *error;
		const char *reason;
	} cases[] = {
	    /* RFC 8693 §2.2.2: a subject token invalid for any reason. */
	    {WORLD_AWS, "cloud:DescribeInstances", "garbage.token.here",
	     "urn:ietf:params:oauth:token-type:jwt", 400, "invalid_request", NULL},
	    {"https://evil.example.com", "cloud:DescribeInstances", NULL,
	     "urn:ietf:params:oauth:token-type:jwt", 400, "invalid_target", NULL},
	    {WORLD_AWS, "cloud:TerminateInstances", NULL, "urn:ietf:params:oauth:token-type:jwt",
	     400, "invalid_scope", NULL},
	    /* A policy DENY, as RFC 8628 §3.5 answers a denied grant. */
	    {WORLD_BILLING, "billing:read", NULL, "urn:ietf:params:oauth:token-type:jwt", 400,
	     "access_denied", NULL},
	    /* No scope: RFC 6749 §3.3, there is no default. */
	    {WORLD_AWS, NULL, NULL, "urn:ietf:params:oauth:token-type:jwt", 400, "invalid_scope",
	     NULL},
	    {WORLD_AWS, "cloud:DescribeInstances", NULL, "urn:x:unknown", 400, "invalid_request",
	     NULL},
	    /* A reason over 1024 bytes, as POST /v1/token refuses it. */
	    {WORLD_AWS, "cloud:DescribeInstances", NULL, "urn:ietf:params:oauth:token-type:jwt",
	     400, "invalid_request", long_reason},
	};
	struct setting s;
	struct http_resp r;

	(void)state;
	memset(long_reason, 'r', sizeof(long_reason) - 1);
	setting_start(&s, "t_access_exchange_err");
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		exchange_form(form, sizeof(form),
		              cases[i].subject ? cases[i].subject : s.cloud_token, TT_JWT, s.cloud,
		              cases[i].actor_type);
		form_add(form, sizeof(form), "resource", cases[i].audience);
		if (cases[i].scope != NULL)
			form_add(form, sizeof(form), "scope", cases[i].scope);
		if (cases[i].reason != NULL)
			form_add(form, sizeof(form), "reason", cases[i].reason);
		world_form(&s.w, "/oauth2/token", NULL, form, &r);
		if (r.status != cases[i].status)
			fprintf(stderr, "case %zu: %ld %s\n", i, r.status, r.body);
		assert_int_equal(r.status, cases[i].status);
		assert_string_equal(json_string_value(json_object_get(r.json, "error")),
		                    cases[i].error);
		assert_null(json_object_get(r.json, "access_token"));
		harness_resp_free(&r);
	}
	/* Another grant type; a parameter given twice. */
	world_form(&s.w, "/oauth2/token", NULL, "grant_type=client_credentials", &r);
	assert_int_equal(r.status, 400);
	assert_string_equal(json_string_value(json_object_get(r.json, "error")),
	                    "unsupported_grant_type");
	harness_resp_free(&r);
	world_form(&s.w, "/oauth2/token", NULL, "grant_type=a&grant_type=b", &r);
	assert_int_equal(r.status, 400);
	assert_string_equal(json_string_value(json_object_get(r.json, "error")), "invalid_request");
	harness_resp_free(&r);
	/* The description quotes the request, within RFC 6749's characters. */
	world_form(&s.w, "/oauth2/token", NULL, "%22q%5C%22=1&%22q%5C%22=2", &r);
	assert_int_equal(r.status, 400);
	assert_string_equal(json_string_value(json_object_get(r.json, "error_description")),
	                    "?q??: given more than once");
	harness_resp_free(&r);
	/* Several audiences (RFC 8693 allows them): one resource per token here. */
	world_form(&s.w, "/oauth2/token", NULL,
	           "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange&"
	           "audience=https%3A%2F%2Fa&audience=https%3A%2F%2Fb",
	           &r);
	assert_int_equal(r.status, 400);
	assert_string_equal(json_string_value(json_object_get(r.json, "error")), "invalid_target");
	harness_resp_free(&r);
	/* An actor token that is no credential: RFC 8693 §2.2.2 again. */
	exchange_form(form, sizeof(form), s.cloud_token, TT_JWT, "not.a.credential", TT_JWT);
	form_add(form, sizeof(form), "audience", WORLD_AWS);
	form_add(form, sizeof(form), "scope", "cloud:DescribeInstances");
	world_form(&s.w, "/oauth2/token", NULL, form, &r);
	assert_int_equal(r.status, 400);
	assert_string_equal(json_string_value(json_object_get(r.json, "error")), "invalid_request");
	harness_resp_free(&r);
	/* Client authentication is no way in: refused with its scheme's challenge. */
	{
		char www[128];

		world_post(&s.w, "/oauth2/token", "Basic Y2xpZW50OnNlY3JldA==", NULL, form, &r);
		assert_int_equal(r.status, 401);
		assert_string_equal(json_string_value(json_object_get(r.json, "error")),
		                    "invalid_client");
		assert_true(harness_resp_header(&r, "WWW-Authenticate", www, sizeof(www)));
		assert_string_equal(www, "Basic realm=\"idpd\"");
		harness_resp_free(&r);
	}
	assert_int_equal(issued(&s), 0);
	setting_stop(&s);
}

/*
 * A parameter sent without a value is treated as omitted (RFC 6749 section
 * 3.1): an empty audience beside a resource does not name a second
 * resource, an empty approval_id names no approval, an empty grant_type or
 * scope is a missing one, and /introspect and /revoke read an empty
 * token_type_hint or reason as none.
 */
static void
oauth_empty_parameters_are_omitted(void **state)
{
	static char form[16384];
	struct setting s;
	struct http_resp r;
	char auth[128], *at;

	(void)state;
	setting_start(&s, "t_access_form_empty");
	exchange_form(form, sizeof(form), s.cloud_token, TT_JWT, s.cloud, TT_JWT);
	strcat(form, "&audience=&reason=");
	form_add(form, sizeof(form), "resource", WORLD_AWS);
	form_add(form, sizeof(form), "scope", "cloud:DescribeInstances");
	world_form(&s.w, "/oauth2/token", NULL, form, &r);
	if (r.status != 200)
		fprintf(stderr, "exchange: %ld %s\n", r.status, r.body);
	assert_int_equal(r.status, 200);
	at = strdup(json_string_value(json_object_get(r.json, "access_token")));
	harness_resp_free(&r);
	exchange_form(form, sizeof(form), s.cloud_token, TT_JWT, s.cloud, TT_JWT);
	strcat(form, "&approval_id=");
	form_add(form, sizeof(form), "audience", WORLD_AWS);
	form_add(form, sizeof(form), "scope", "cloud:DescribeInstances");
	world_form(&s.w, "/oauth2/token", NULL, form, &r);
	if (r.status != 200)
		fprintf(stderr, "exchange: %ld %s\n", r.status, r.body);
	assert_int_equal(r.status, 200);
	harness_resp_free(&r);
	assert_int_equal(issued(&s), 2);

	exchange_form(form, sizeof(form), s.cloud_token, TT_JWT, s.cloud, TT_JWT);
	strcat(form, "&scope=");
	form_add(form, sizeof(form), "audience", WORLD_AWS);
	world_form(&s.w, "/oauth2/token", NULL, form, &r);
	assert_int_equal(r.status, 400);
	assert_string_equal(json_string_value(json_object_get(r.json, "error_description")),
	                    "scope is required: a token is for the scopes named");
	harness_resp_free(&r);
	world_form(&s.w, "/oauth2/token", NULL, "grant_type=", &r);
	assert_int_equal(r.status, 400);
	assert_string_equal(json_string_value(json_object_get(r.json, "error")), "invalid_request");
	harness_resp_free(&r);
	assert_int_equal(issued(&s), 2);

	world_introspect(&s.w, at, "", &r);
	assert_int_equal(r.status, 200);
	assert_true(json_is_true(json_object_get(r.json, "active")));
	harness_resp_free(&r);
	snprintf(form, sizeof(form), "token=%s&token_type_hint=&reason=", at);
	snprintf(auth, sizeof(auth), "Bearer %s", s.w.k.admin);
	world_post(&s.w, "/revoke", auth, NULL, form, &r);
	assert_int_equal(r.status, 200);
	harness_resp_free(&r);
	assert_false(world_active(&s.w, at, NULL));
	free(at);
	setting_stop(&s);
}

static void
metadata_names_the_endpoints(void **state)
{
	static const struct world_opts abs = {.issuer = "https://idp.example.com"};
	static const struct world_opts plain = {.issuer = "http://idp.example.com"};
	struct world w;
	struct http_resp r;
	char want[256], v[64];

	(void)state;
	world_start(&w, "t_access_metadata", NULL);
	/* RFC 8414 wants an https issuer: served anyway, with a warning at start. */
	assert_true(harness_log_contains(&w.p, "identity.issuer \"idpd\" is not an https URL"));
	world_call(&w, "GET", "/.well-known/oauth-authorization-server", NULL, NULL, &r);
	assert_int_equal(r.status, 200);
	assert_string_equal(json_string_value(json_object_get(r.json, "issuer")), "idpd");
	snprintf(want, sizeof(want), "%s/oauth2/token", w.p.base);
	assert_string_equal(json_string_value(json_object_get(r.json, "token_endpoint")), want);
	snprintf(want, sizeof(want), "%s/introspect", w.p.base);
	assert_string_equal(json_string_value(json_object_get(r.json, "introspection_endpoint")),
	                    want);
	snprintf(want, sizeof(want), "%s/.well-known/jwks.json", w.p.base);
	assert_string_equal(json_string_value(json_object_get(r.json, "jwks_uri")), want);
	assert_string_equal(
	    json_string_value(json_array_get(json_object_get(r.json, "grant_types_supported"), 0)),
	    "urn:ietf:params:oauth:grant-type:token-exchange");
	/* Endpoints made from the Host header are right for that Host only: a
	 * cache must not give them to a client that used another. */
	assert_true(harness_resp_header(&r, "Cache-Control", v, sizeof(v)));
	assert_string_equal(v, "no-store");
	assert_true(harness_resp_header(&r, "Vary", v, sizeof(v)));
	assert_string_equal(v, "Host");
	harness_resp_free(&r);
	world_stop(&w);

	/* Under an absolute issuer they are the same for everyone: cacheable. */
	world_start_opts(&w, "t_access_metadata_abs", &abs);
	assert_false(harness_log_contains(&w.p, "is not an https URL"));
	world_call(&w, "GET", "/.well-known/oauth-authorization-server", NULL, NULL, &r);
	assert_int_equal(r.status, 200);
	assert_string_equal(json_string_value(json_object_get(r.json, "token_endpoint")),
	                    "https://idp.example.com/oauth2/token");
	assert_true(harness_resp_header(&r, "Cache-Control", v, sizeof(v)));
	assert_string_equal(v, "max-age=300");
	assert_false(harness_resp_header(&r, "Vary", v, sizeof(v)));
	harness_resp_free(&r);
	world_stop(&w);

	/* An http URL is no RFC 8414 issuer either. */
	world_start_opts(&w, "t_access_metadata_http", &plain);
	assert_true(harness_log_contains(
	    &w.p, "identity.issuer \"http://idp.example.com\" is not an https URL"));
	world_stop(&w);
}

/* An expired delegation token, and a token of another kind, stand for nothing. */
static void
expired_or_other_kind_tokens_are_refused(void **state)
{
	struct setting s;
	struct http_resp r;
	char body[8192];
	char *short_deleg, *access;

	(void)state;
	setting_start(&s, "t_access_expired");
	snprintf(body, sizeof(body),
	         "{\"delegation_token\":\"%s\",\"to_agent\":\"cloud-agent\","
	         "\"scope\":\"cloud:DescribeInstances\",\"ttl\":2}",
	         s.root_token);
	world_call(&s.w, "POST", "/v1/delegations", s.planner, body, &r);
	assert_int_equal(r.status, 201);
	short_deleg = strdup(json_string_value(json_object_get(r.json, "delegation_token")));
	harness_resp_free(&r);
	token(&s, s.cloud, s.cloud_token, WORLD_AWS, "cloud:DescribeInstances", "", &r);
	assert_int_equal(r.status, 200);
	access = strdup(json_string_value(json_object_get(r.json, "access_token")));
	harness_resp_free(&r);
	sleep(3);
	expect_refusal(&s, s.cloud, short_deleg, WORLD_AWS, "cloud:DescribeInstances", "", 403,
	               "delegation_token_expired");
	/* An access token (typ at+jwt, aud a resource) is not a delegation token. */
	expect_refusal(&s, s.cloud, access, WORLD_AWS, "cloud:DescribeInstances", "", 403,
	               "delegation_token_invalid");
	free(short_deleg);
	free(access);
	setting_stop(&s);
}

/*
 * The token is written before its token.issued event commits and held
 * back until it does.  Here PostgreSQL refuses that one event (a trigger
 * of the test's), so the commit never comes: once audit.timeout (1 s here)
 * passes the request answers 503 and the token never leaves; the writer
 * then drops the event and goes on with the others.
 */
static void
token_is_withheld_when_its_event_cannot_commit(void **state)
{
	const struct world_opts o = {.extra_toml = "[audit]\ntimeout = \"1s\"\n"};
	struct setting s;
	struct http_resp r;
	char body[8192];

	(void)state;
	setting_start_with(&s, "t_access_withheld", &o);
	token(&s, s.cloud, s.cloud_token, WORLD_AWS, "cloud:DescribeInstances", "", &r);
	assert_int_equal(r.status, 200);
	harness_resp_free(&r);
	assert_int_equal(harness_sql("t_access_withheld",
	                             "CREATE FUNCTION refuse_marker() RETURNS trigger LANGUAGE "
	                             "plpgsql AS $$ BEGIN IF NEW.body LIKE '%withheld-marker%' "
	                             "THEN RAISE EXCEPTION 'refused by the test'; END IF; "
	                             "RETURN NEW; END $$; CREATE TRIGGER refuse_marker BEFORE "
	                             "INSERT ON audit_events FOR EACH ROW EXECUTE FUNCTION "
	                             "refuse_marker()"),
	                 0);
	snprintf(body, sizeof(body),
	         "{\"audience\":\"%s\",\"scope\":\"cloud:DescribeInstances\",\"task_id\":\"%s\","
	         "\"reason\":\"withheld-marker\",\"delegation_token\":\"%s\"}",
	         WORLD_AWS, s.task_id, s.cloud_token);
	world_call(&s.w, "POST", "/v1/token", s.cloud, body, &r);
	if (r.status != 503)
		fprintf(stderr, "withheld: %ld %s\n", r.status, r.body);
	assert_int_equal(r.status, 503);
	assert_string_equal(json_string_value(json_object_get(r.json, "code")), "unavailable");
	assert_null(strstr(r.body, "access_token"));
	assert_null(strstr(r.body, "eyJ"));
	harness_resp_free(&r);
	/* The same through token exchange: its 503 carries only its own headers,
	 * none left over from the answer taken back. */
	{
		static char form[16384];
		int n = 0;

		exchange_form(form, sizeof(form), s.cloud_token, TT_JWT, s.cloud, TT_JWT);
		form_add(form, sizeof(form), "audience", WORLD_AWS);
		form_add(form, sizeof(form), "scope", "cloud:DescribeInstances");
		form_add(form, sizeof(form), "reason", "withheld-marker");
		world_form(&s.w, "/oauth2/token", NULL, form, &r);
		assert_int_equal(r.status, 503);
		assert_string_equal(json_string_value(json_object_get(r.json, "error")),
		                    "temporarily_unavailable");
		for (const char *h = r.headers; (h = strcasestr(h, "\nPragma:")) != NULL; h++)
			n++;
		if (n != 1)
			fail_msg("withheld exchange: %d Pragma headers in\n%s", n, r.headers);
		harness_resp_free(&r);
	}
	/* The writer drops the given-up event at its next attempt and goes on. */
	for (int i = 0; i < 100; i++) {
		struct timespec ts = {0, 100 * 1000 * 1000};

		token(&s, s.cloud, s.cloud_token, WORLD_AWS, "cloud:DescribeInstances", "", &r);
		if (r.status == 200)
			break;
		harness_resp_free(&r);
		nanosleep(&ts, NULL);
	}
	assert_int_equal(r.status, 200);
	harness_resp_free(&r);
	world_call(&s.w, "GET", "/v1/audit/verify", s.w.k.auditor, NULL, &r);
	assert_int_equal(r.status, 200);
	assert_true(json_is_true(json_object_get(r.json, "ok")));
	harness_resp_free(&r);
	setting_stop(&s);
}

/*
 * A second instance starts with nothing cached: its first requests go to
 * the handler pool for what they must read from PostgreSQL (the agent, the
 * delegation chain), and are answered like any other.
 */
static void
a_fresh_instance_issues_from_cold_caches(void **state)
{
	struct setting s;
	struct world peer;
	struct http_resp r;

	(void)state;
	setting_start(&s, "t_access_cold");
	world_start_peer(&s.w, &peer);
	token(&s, s.cost, s.cost_token, WORLD_BILLING, "billing:read", "", &r);
	assert_int_equal(r.status, 200);
	harness_resp_free(&r);
	{
		char body[8192];

		snprintf(body, sizeof(body),
		         "{\"audience\":\"%s\",\"scope\":\"cloud:DescribeInstances\","
		         "\"task_id\":\"%s\",\"delegation_token\":\"%s\"}",
		         WORLD_AWS, s.task_id, s.cloud_token);
		world_call(&peer, "POST", "/v1/token", s.cloud, body, &r);
	}
	if (r.status != 200)
		fprintf(stderr, "cold: %ld %s\n", r.status, r.body);
	assert_int_equal(r.status, 200);
	assert_non_null(json_string_value(json_object_get(r.json, "access_token")));
	harness_resp_free(&r);
	world_stop(&peer);
	setting_stop(&s);
}

/* The introspection answer for tok with key (a form POST); whether active, and the body in out. */
static bool
introspect_as(struct setting *s, const char *key, const char *tok, char *out, size_t len)
{
	char form[9000];
	struct http_resp r;
	bool active;

	snprintf(form, sizeof(form), "token=%s", tok);
	world_form(&s->w, "/introspect", key, form, &r);
	assert_int_equal(r.status, 200);
	active = json_is_true(json_object_get(r.json, "active"));
	snprintf(out, len, "%s", r.body);
	harness_resp_free(&r);
	return active;
}

/*
 * An introspector key bound to audiences (a resource server's) sees only
 * access tokens for them: another resource's token and a delegation token
 * are exactly {"active":false} to it, while a key without audiences sees
 * every token as before.
 */
static void
an_introspector_bound_to_audiences_sees_only_their_tokens(void **state)
{
	struct setting s;
	struct http_resp r;
	struct world_opts o = {0};
	char key[64], hash[80], idpd_key[64], idpd_hash[80], extra[640], body[8192], url[256];
	char *aws, *billing;

	(void)state;
	assert_int_equal(auth_key_generate(key, hash), IDP_OK);
	assert_int_equal(auth_key_generate(idpd_key, idpd_hash), IDP_OK);
	/* The second key's audiences name idpd's own (identity.audience, the
	 * aud of delegation tokens): still no delegation token for it. */
	snprintf(extra, sizeof(extra),
	         "[[api_keys]]\nname = \"aws-api\"\nhash = \"%s\"\nroles = [\"introspector\"]\n"
	         "audiences = \"https://other.example.com %s\"\n"
	         "[[api_keys]]\nname = \"odd-api\"\nhash = \"%s\"\nroles = [\"introspector\"]\n"
	         "audiences = \"%s idpd\"\n",
	         hash, WORLD_AWS, idpd_hash, WORLD_AWS);
	o.extra_toml = extra;
	setting_start_with(&s, "t_access_bound", &o);
	token(&s, s.cloud, s.cloud_token, WORLD_AWS, "cloud:DescribeInstances", "", &r);
	assert_int_equal(r.status, 200);
	aws = strdup(json_string_value(json_object_get(r.json, "access_token")));
	harness_resp_free(&r);
	token(&s, s.cost, s.cost_token, WORLD_BILLING, "billing:read", "", &r);
	assert_int_equal(r.status, 200);
	billing = strdup(json_string_value(json_object_get(r.json, "access_token")));
	harness_resp_free(&r);

	assert_true(introspect_as(&s, key, aws, body, sizeof(body)));
	assert_false(introspect_as(&s, key, billing, body, sizeof(body)));
	assert_string_equal(body, "{\"active\":false}");
	assert_false(introspect_as(&s, key, s.cloud_token, body, sizeof(body)));
	assert_string_equal(body, "{\"active\":false}");
	assert_false(introspect_as(&s, idpd_key, s.cloud_token, body, sizeof(body)));
	assert_string_equal(body, "{\"active\":false}");
	assert_false(introspect_as(&s, idpd_key, s.root_token, body, sizeof(body)));
	assert_true(introspect_as(&s, idpd_key, aws, body, sizeof(body)));
	/* Asked again (now from the verified-token cache), the same. */
	assert_false(introspect_as(&s, key, billing, body, sizeof(body)));
	/* A key without audiences sees them all. */
	assert_true(introspect_as(&s, s.w.k.introspector, billing, body, sizeof(body)));
	assert_true(introspect_as(&s, s.w.k.introspector, s.cloud_token, body, sizeof(body)));
	assert_true(introspect_as(&s, key, aws, body, sizeof(body)));
	snprintf(url, sizeof(url), "%s/metrics", s.w.p.base);
	assert_int_equal(harness_http("GET", url, NULL, NULL, 0, &r), 0);
	assert_non_null(strstr(
	    r.body, "idpd_introspection_inactive_total{reason=\"audience_not_allowed\"} 5\n"));
	harness_resp_free(&r);
	free(aws);
	free(billing);
	setting_stop(&s);
}

/* POST /v1/token as a task's root agent (no delegation token); the answer in r. */
static void
root_token(struct setting *s, const char *cred, const char *task_id, const char *audience,
           const char *scope, struct http_resp *r)
{
	char body[512];

	snprintf(body, sizeof(body),
	         "{\"audience\":\"%s\",\"scope\":\"%s\",\"task_id\":\"%s\","
	         "\"reason\":\"inventory for the quarterly review\"}",
	         audience, scope, task_id);
	world_call(&s->w, "POST", "/v1/token", cred, body, r);
}

/* An AuthZEN question about agent, action on resource (JSON members after "id"), as key. */
static json_t *
ask(struct setting *s, const char *key, const char *agent, const char *action, const char *resource)
{
	char body[1024];
	struct http_resp r;
	json_t *answer;

	snprintf(body, sizeof(body),
	         "{\"subject\":{\"type\":\"agent\",\"id\":\"%s\"},\"action\":{\"name\":\"%s\"},"
	         "\"resource\":{\"type\":\"api\",\"id\":%s}}",
	         agent, action, resource);
	world_call(&s->w, "POST", "/access/v1/evaluation", key, body, &r);
	if (r.status != 200)
		fprintf(stderr, "authzen: %ld %s\n", r.status, r.body);
	assert_int_equal(r.status, 200);
	answer = json_incref(r.json);
	harness_resp_free(&r);
	return answer;
}

/*
 * AuthZEN questions read an agent's risk but never change it.  The reports
 * API's PEP (a key bound to that audience) asks about an agent again and
 * again with a scope it does not have, and in a burst: the agent's token
 * for another resource is decided as its twin's, which nobody asked about
 * (with the questions counted as denials, its risk would pass the test
 * rule's 60 and its token would wait for a human).  Its own denied token
 * requests do raise its risk, and a question then sees it.
 */
static void
authzen_questions_leave_the_risk_of_token_requests_alone(void **state)
{
	static const char *const ids[] = {"watched-agent", "twin-agent"};
	struct setting s;
	struct world_opts o = {0};
	struct http_resp r;
	char key[64], hash[80], extra[512], cred[2][4096], task[2][80], body[8192];
	char decision[2][32];
	char *root;
	json_t *a;

	(void)state;
	assert_int_equal(auth_key_generate(key, hash), IDP_OK);
	snprintf(extra, sizeof(extra),
	         "[[api_keys]]\nname = \"reports-pep\"\nhash = \"%s\"\n"
	         "roles = [\"introspector\"]\naudiences = \"" WORLD_REPORTS "\"\n",
	         hash);
	o.extra_toml = extra;
	setting_start_with(&s, "t_access_authzen_risk", &o);
	for (int i = 0; i < 2; i++) {
		agent(&s, ids[i], "risk-watched", "[\"cloud:Describe*\"]", "[\"cloud\"]", "[]");
		world_credential(&s.w, ids[i], cred[i], sizeof(cred[i]));
		world_task(&s.w, s.alice, ids[i], "[\"cloud:DescribeInstances\"]", task[i], &root);
		free(root);
	}

	for (int i = 0; i < 3; i++) {
		a = ask(&s, key, "watched-agent", "reports:write", "\"" WORLD_REPORTS "\"");
		assert_true(json_is_false(json_object_get(a, "decision")));
		json_decref(a);
	}
	{
		json_t *b =
		    json_pack("{s:{s:s,s:s},s:{s:s},s:{s:s,s:s},s:[]}", "subject", "type", "agent",
		              "id", "watched-agent", "action", "name", "reports:write", "resource",
		              "type", "api", "id", WORLD_REPORTS, "evaluations");
		char *text;

		for (int i = 0; i < 64; i++)
			json_array_append_new(json_object_get(b, "evaluations"), json_object());
		text = json_dumps(b, JSON_COMPACT);
		for (int i = 0; i < 4; i++) {
			world_call(&s.w, "POST", "/access/v1/evaluations", key, text, &r);
			assert_int_equal(r.status, 200);
			assert_int_equal(json_array_size(json_object_get(r.json, "evaluations")),
			                 64);
			harness_resp_free(&r);
		}
		free(text);
		json_decref(b);
	}

	for (int i = 0; i < 2; i++) {
		root_token(&s, cred[i], task[i], WORLD_AWS, "cloud:DescribeInstances", &r);
		if (r.status != 200)
			fprintf(stderr, "%s: %ld %s\n", ids[i], r.status, r.body);
		assert_int_equal(r.status, 200);
		assert_false(has_rule(r.json, "test-risk-watched"));
		snprintf(decision[i], sizeof(decision[i]), "%s",
		         json_string_value(json_object_get(r.json, "decision")));
		harness_resp_free(&r);
	}
	assert_string_equal(decision[0], decision[1]);

	/* Three denied token requests (cloud-only agent, finance resource) are
	 * the agent's own: 30 points.  A question about a scope and a resource
	 * new to both agents now finds the watched one at 65 or more, and its
	 * twin at 35 or 50 (off hours). */
	for (int i = 0; i < 3; i++) {
		root_token(&s, cred[0], task[0], WORLD_BILLING, "cloud:DescribeInstances", &r);
		assert_int_equal(r.status, 403);
		assert_string_equal(json_string_value(json_object_get(r.json, "code")),
		                    "policy_denied");
		harness_resp_free(&r);
	}
	snprintf(body, sizeof(body),
	         "\"https://inventory.example.com\",\"properties\":{\"domain\":\"cloud\","
	         "\"classification\":\"internal\",\"environment\":\"production\"}");
	a = ask(&s, s.w.k.introspector, "watched-agent", "cloud:DescribeVolumes", body);
	assert_true(json_is_false(json_object_get(a, "decision")));
	assert_string_equal(
	    json_string_value(json_object_get(json_object_get(a, "context"), "idpd_decision")),
	    "REQUIRE_APPROVAL");
	assert_true(has_rule(json_object_get(a, "context"), "test-risk-watched"));
	json_decref(a);
	a = ask(&s, s.w.k.introspector, "twin-agent", "cloud:DescribeVolumes", body);
	assert_true(json_is_true(json_object_get(a, "decision")));
	json_decref(a);
	setting_stop(&s);
}

/* An AuthZEN question about the agent's AWS access, as key; whether test-volume-watched applied. */
static bool
volume_rule_answers(struct setting *s, const char *key, const char *agent_id, bool decision)
{
	json_t *a = ask(s, key, agent_id, "cloud:DescribeInstances", "\"" WORLD_AWS "\"");
	bool applied = has_rule(json_object_get(a, "context"), "test-volume-watched");

	assert_int_equal(json_is_true(json_object_get(a, "decision")), decision);
	json_decref(a);
	return applied;
}

/*
 * AuthZEN questions read an agent's call count for a resource but never
 * raise it.  A key with no audiences (it may ask about anything) asks about
 * the agent's AWS access a dozen times and in a burst of 64: every answer
 * sees one call (the one asked about), and the agent's first token request
 * for AWS sees one too (with the questions counted, the test rule's "more
 * than 3" would make it wait for a human).  The agent's own token requests
 * do count, and a question then sees them: after three, a question answers
 * false by that rule, and the fourth request waits for a human.
 */
static void
authzen_questions_leave_the_call_count_of_token_requests_alone(void **state)
{
	struct setting s;
	struct http_resp r;
	char cred[4096], task[80];
	char *root;
	json_t *b;
	char *text;

	(void)state;
	setting_start(&s, "t_access_authzen_volume");
	agent(&s, "volume-agent", "volume-watched", "[\"cloud:Describe*\"]", "[\"cloud\"]", "[]");
	world_credential(&s.w, "volume-agent", cred, sizeof(cred));
	world_task(&s.w, s.alice, "volume-agent", "[\"cloud:DescribeInstances\"]", task, &root);
	free(root);

	for (int i = 0; i < 12; i++)
		assert_false(volume_rule_answers(&s, s.w.k.introspector, "volume-agent", true));
	b = json_pack("{s:{s:s,s:s},s:{s:s},s:{s:s,s:s},s:[]}", "subject", "type", "agent", "id",
	              "volume-agent", "action", "name", "cloud:DescribeInstances", "resource",
	              "type", "api", "id", WORLD_AWS, "evaluations");
	for (int i = 0; i < 64; i++)
		json_array_append_new(json_object_get(b, "evaluations"), json_object());
	text = json_dumps(b, JSON_COMPACT);
	world_call(&s.w, "POST", "/access/v1/evaluations", s.w.k.introspector, text, &r);
	assert_int_equal(r.status, 200);
	assert_int_equal(json_array_size(json_object_get(r.json, "evaluations")), 64);
	for (size_t i = 0; i < 64; i++)
		assert_true(json_is_true(json_object_get(
		    json_array_get(json_object_get(r.json, "evaluations"), i), "decision")));
	harness_resp_free(&r);
	free(text);
	json_decref(b);

	for (int i = 0; i < 3; i++) {
		root_token(&s, cred, task, WORLD_AWS, "cloud:DescribeInstances", &r);
		if (r.status != 200)
			fprintf(stderr, "token %d: %ld %s\n", i + 1, r.status, r.body);
		assert_int_equal(r.status, 200);
		assert_false(has_rule(r.json, "test-volume-watched"));
		harness_resp_free(&r);
	}
	/* Three token requests: a question sees a fourth call, and asking does
	 * not make it one. */
	for (int i = 0; i < 3; i++)
		assert_true(volume_rule_answers(&s, s.w.k.introspector, "volume-agent", false));
	root_token(&s, cred, task, WORLD_AWS, "cloud:DescribeInstances", &r);
	if (r.status != 202)
		fprintf(stderr, "token 4: %ld %s\n", r.status, r.body);
	assert_int_equal(r.status, 202);
	assert_true(has_rule(r.json, "test-volume-watched"));
	harness_resp_free(&r);
	setting_stop(&s);
}

/*
 * A key bound to the resource's audience is that resource server: its
 * questions report the API calls a token serves, and count for the pair
 * (the volume rule's view of API calls).  Three such questions, then the
 * agent's first token request is its fourth call and waits for a human.
 */
static void
authzen_questions_of_the_resource_server_count_as_its_calls(void **state)
{
	struct setting s;
	struct http_resp r;
	struct world_opts o = {0};
	char key[64], hash[80], extra[512], cred[4096], task[80];
	char *root;

	(void)state;
	assert_int_equal(auth_key_generate(key, hash), IDP_OK);
	snprintf(extra, sizeof(extra),
	         "[[api_keys]]\nname = \"aws-pep\"\nhash = \"%s\"\nroles = [\"introspector\"]\n"
	         "audiences = \"%s\"\n",
	         hash, WORLD_AWS);
	o.extra_toml = extra;
	setting_start_with(&s, "t_access_authzen_pep", &o);
	agent(&s, "volume-agent", "volume-watched", "[\"cloud:Describe*\"]", "[\"cloud\"]", "[]");
	world_credential(&s.w, "volume-agent", cred, sizeof(cred));
	world_task(&s.w, s.alice, "volume-agent", "[\"cloud:DescribeInstances\"]", task, &root);
	free(root);
	for (int i = 0; i < 3; i++)
		assert_false(volume_rule_answers(&s, key, "volume-agent", true));
	root_token(&s, cred, task, WORLD_AWS, "cloud:DescribeInstances", &r);
	if (r.status != 202)
		fprintf(stderr, "token: %ld %s\n", r.status, r.body);
	assert_int_equal(r.status, 202);
	assert_true(has_rule(r.json, "test-volume-watched"));
	harness_resp_free(&r);
	setting_stop(&s);
}

/* tok with its ES256 s replaced by n - s: the other valid spelling of its signature. */
static char *
high_s_twin(const char *tok)
{
	static const unsigned char order[32] = {
	    0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff,
	    0xff, 0xff, 0xff, 0xff, 0xff, 0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17,
	    0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51,
	};
	const char *dot = strrchr(tok, '.');
	unsigned char sig[64];
	size_t len = 0;
	BIGNUM *n = BN_bin2bn(order, 32, NULL), *sv;
	char *enc, *twin;

	assert_int_equal(idp_b64url_decode(dot + 1, strlen(dot + 1), sig, sizeof(sig), &len),
	                 IDP_OK);
	assert_int_equal(len, 64);
	sv = BN_bin2bn(sig + 32, 32, NULL);
	assert_int_equal(BN_sub(sv, n, sv), 1);
	assert_int_equal(BN_bn2binpad(sv, sig + 32, 32), 32);
	enc = idp_b64url_encode(sig, 64, NULL);
	twin = idp_xasprintf("%.*s.%s", (int)(dot - tok), tok, enc);
	free(enc);
	BN_free(n);
	BN_free(sv);
	return twin;
}

/*
 * Each ECDSA signature has a second valid spelling, (r, n - s).  idpd signs
 * only the one with the lower s.  By default the other is still accepted,
 * since versions before low-S signing issued either and their tokens live
 * up to a day; a twin names the same jti, so revoking it revokes the token.
 * With tokens.require_low_s, the twin is refused wherever idpd checks a
 * token of its own: an access or delegation token at introspection, an
 * identity credential.  A human IdP's token is accepted in either
 * spelling: its signer need not normalise.
 */
static void
the_high_s_twin_of_an_idpd_token_is_refused(void **state)
{
	struct setting s;
	struct world_opts strict = {.extra_toml = "[tokens]\nrequire_low_s = true\n"};
	struct http_resp r;
	char body[8192], task_id[80], auth[4200], *at, *twin, *human;

	(void)state;
	/* Default: a twin of a token issued before the upgrade still works,
	 * and revoking through it ends the token. */
	setting_start(&s, "t_access_high_s_compat");
	token(&s, s.cloud, s.cloud_token, WORLD_AWS, "cloud:DescribeInstances", "", &r);
	assert_int_equal(r.status, 200);
	at = strdup(json_string_value(json_object_get(r.json, "access_token")));
	harness_resp_free(&r);
	twin = high_s_twin(at);
	assert_true(introspect_as(&s, s.w.k.introspector, twin, body, sizeof(body)));
	snprintf(auth, sizeof(auth), "Bearer %s", s.cloud);
	assert_int_equal(world_revoke_as(&s.w, auth, twin, NULL), 200);
	assert_false(introspect_as(&s, s.w.k.introspector, at, body, sizeof(body)));
	free(twin);
	free(at);
	/* A twin introspected (and cached) before the setting is turned on by
	 * a reload is refused after it; the token itself stays active. */
	token(&s, s.cloud, s.cloud_token, WORLD_AWS, "cloud:DescribeInstances", "", &r);
	assert_int_equal(r.status, 200);
	at = strdup(json_string_value(json_object_get(r.json, "access_token")));
	harness_resp_free(&r);
	twin = high_s_twin(at);
	assert_true(introspect_as(&s, s.w.k.introspector, twin, body, sizeof(body)));
	{
		FILE *f = fopen(s.w.p.config, "a");

		assert_non_null(f);
		fputs("\n[tokens]\nrequire_low_s = true\n", f);
		fclose(f);
		assert_int_equal(kill(s.w.p.pid, SIGHUP), 0);
		for (int i = 0; i < 200 && !harness_log_contains(&s.w.p, "reload: done"); i++)
			usleep(10 * 1000);
		assert_true(harness_log_contains(&s.w.p, "reload: done"));
	}
	assert_false(introspect_as(&s, s.w.k.introspector, twin, body, sizeof(body)));
	assert_true(introspect_as(&s, s.w.k.introspector, at, body, sizeof(body)));
	free(twin);
	free(at);
	/* An identity credential is revoked through its twin too, setting on. */
	twin = high_s_twin(s.cost);
	snprintf(auth, sizeof(auth), "Bearer %s", s.cost);
	assert_int_equal(world_revoke_as(&s.w, auth, twin, NULL), 200);
	free(twin);
	world_call(&s.w, "GET", "/v1/me", s.cost, NULL, &r);
	assert_int_equal(r.status, 401);
	harness_resp_free(&r);
	setting_stop(&s);

	setting_start_with(&s, "t_access_high_s", &strict);
	token(&s, s.cloud, s.cloud_token, WORLD_AWS, "cloud:DescribeInstances", "", &r);
	assert_int_equal(r.status, 200);
	at = strdup(json_string_value(json_object_get(r.json, "access_token")));
	harness_resp_free(&r);
	assert_true(introspect_as(&s, s.w.k.introspector, at, body, sizeof(body)));
	twin = high_s_twin(at);
	assert_false(introspect_as(&s, s.w.k.introspector, twin, body, sizeof(body)));
	/* Revocation takes either spelling even so: it must never do nothing. */
	snprintf(auth, sizeof(auth), "Bearer %s", s.cloud);
	assert_int_equal(world_revoke_as(&s.w, auth, twin, NULL), 200);
	assert_false(introspect_as(&s, s.w.k.introspector, at, body, sizeof(body)));
	free(twin);
	twin = high_s_twin(s.cloud_token);
	assert_false(introspect_as(&s, s.w.k.introspector, twin, body, sizeof(body)));
	free(twin);
	twin = high_s_twin(s.cloud);
	world_call(&s.w, "GET", "/v1/me", twin, NULL, &r);
	assert_int_equal(r.status, 401);
	harness_resp_free(&r);
	free(twin);
	world_call(&s.w, "GET", "/v1/me", s.cloud, NULL, &r);
	assert_int_equal(r.status, 200);
	harness_resp_free(&r);
	/* Alice's IdP token in its other spelling still starts a task. */
	twin = world_human_token("alice@example.com");
	human = high_s_twin(twin);
	free(twin);
	world_task_body(&s.w, human,
	                "{\"root_agent\":\"planning-agent\",\"scope\":[\"billing:read\"],"
	                "\"description\":\"high-S spelling\"}",
	                task_id, NULL, &twin);
	free(twin);
	free(human);
	free(at);
	setting_stop(&s);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(a_refusal_goes_only_into_the_timeline_of_a_proven_task),
	    cmocka_unit_test(access_token_carries_the_seed_claims),
	    cmocka_unit_test(conditions_narrow_scope_and_lifetime),
	    cmocka_unit_test(policy_deny_answers_403_with_rules),
	    cmocka_unit_test(refusals_issue_nothing),
	    cmocka_unit_test(root_agent_needs_no_delegation_token),
	    cmocka_unit_test(completed_task_and_decommissioned_agent_get_nothing),
	    cmocka_unit_test(approval_is_bound_and_single_use),
	    cmocka_unit_test(an_approval_is_spent_only_by_an_issued_token),
	    cmocka_unit_test(a_withheld_token_gives_its_approval_back),
	    cmocka_unit_test(a_withheld_token_never_undoes_another_use),
	    cmocka_unit_test(revoking_a_credential_ends_the_access_tokens_it_obtained),
	    cmocka_unit_test(token_exchange_issues_the_same_token),
	    cmocka_unit_test(token_exchange_answers_a_long_scope),
	    cmocka_unit_test(token_exchange_errors_are_oauth_bodies),
	    cmocka_unit_test(oauth_empty_parameters_are_omitted),
	    cmocka_unit_test(metadata_names_the_endpoints),
	    cmocka_unit_test(expired_or_other_kind_tokens_are_refused),
	    cmocka_unit_test(token_is_withheld_when_its_event_cannot_commit),
	    cmocka_unit_test(a_fresh_instance_issues_from_cold_caches),
	    cmocka_unit_test(an_introspector_bound_to_audiences_sees_only_their_tokens),
	    cmocka_unit_test(authzen_questions_leave_the_risk_of_token_requests_alone),
	    cmocka_unit_test(authzen_questions_leave_the_call_count_of_token_requests_alone),
	    cmocka_unit_test(authzen_questions_of_the_resource_server_count_as_its_calls),
	    cmocka_unit_test(the_high_s_twin_of_an_idpd_token_is_refused),
	};

	return cmocka_run_group_tests(tests, NULL, world_teardown);
}
