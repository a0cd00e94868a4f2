/*
 * Integration tests of the policy endpoints: the dry run, the AuthZEN
 * evaluation API, the loaded set, and reloads (HTTP and SIGHUP) that keep
 * the old set when the new one has errors.  Real idpd, real policy files.
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

static char admin_key[64], auditor_key[64], pep_key[64], cloud_pep_key[64], keys_toml[2560];
static char policy_dir[128];
static struct idpd_proc idpd;

static const char *input_ok =
	"{\"agent\":{\"id\":\"agent-cloud-inventory-001\",\"type\":\"cloud-inventory\","
	"\"owner\":\"alice@company.com\",\"status\":\"active\",\"environment\":\"production\","
	"\"domains\":[\"cloud\"],\"capabilities\":[\"ec2:Describe*\",\"s3:ListBuckets\"]},"
	"\"request\":{\"scopes\":[\"ec2:DescribeInstances\"],\"audience\":\"cloud-inventory-api\","
	"\"ttl\":900},\"resource\":{\"audience\":\"cloud-inventory-api\",\"domain\":\"cloud\","
	"\"classification\":\"internal\",\"environment\":\"production\"},"
	"\"delegation\":{\"depth\":0,\"chain\":[],\"approvals\":0},"
	"\"context\":{\"weekday\":\"mon\",\"hour\":10,\"minute\":0,\"calls_last_minute\":3,"
	"\"risk\":10,\"approval\":false}}";

static void
sleep_ms(int ms)
{
	struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};

	nanosleep(&ts, NULL);
}

/* Whether the JSON text of j contains s. */
static bool
json_has(const json_t *j, const char *s)
{
	char *text = json_dumps(j, JSON_ENCODE_ANY);
	bool found = text != NULL && strstr(text, s) != NULL;

	free(text);
	return found;
}

/*
 * The count sql answers in t_policy_api once it is want, or what it is after
 * 5 s (want < 0: at once): the events it counts are queued without waiting.
 */
static long
sql_count(const char *sql, long want)
{
	char v[32];
	long n = -1;

	for (int i = 0; i < 50; i++) {
		assert_int_equal(harness_sql_value("t_policy_api", sql, v, sizeof(v)), 0);
		n = atol(v);
		if (want < 0 || n == want)
			break;
		sleep_ms(100);
	}
	return n;
}

static long
call(const char *method, const char *path, const char *key, const char *body,
     struct http_resp *r)
{
	char url[256], auth[128];
	const char *h[] = {auth, "Content-Type: application/json", NULL};
	const char *noauth[] = {"Content-Type: application/json", NULL};

	snprintf(auth, sizeof(auth), "Authorization: Bearer %s", key ? key : "");
	snprintf(url, sizeof(url), "%s%s", idpd.base, path);
	assert_int_equal(harness_http(method, url, key ? h : noauth, body,
				      body ? strlen(body) : 0, r),
			 0);
	return r->status;
}

static int
group_setup(void **state)
{
	char h1[80], h2[80], h3[80], h4[80], cmd[512];

	(void)state;
	if (auth_key_generate(admin_key, h1) != IDP_OK || auth_key_generate(auditor_key, h2) != IDP_OK ||
	    auth_key_generate(pep_key, h3) != IDP_OK || auth_key_generate(cloud_pep_key, h4) != IDP_OK)
		return -1;
	/* A private copy of the shipped set, so the reload tests can edit it. */
	snprintf(policy_dir, sizeof(policy_dir), "/tmp/idpd-policies-XXXXXX");
	if (mkdtemp(policy_dir) == NULL)
		return -1;
	snprintf(cmd, sizeof(cmd), "cp '%s'/policies/*.policy '%s'/",
		 getenv("IDPD_TEST_TOP") ? getenv("IDPD_TEST_TOP") : ".", policy_dir);
	if (system(cmd) != 0)
		return -1;
	snprintf(keys_toml, sizeof(keys_toml),
		 "[[resources]]\naudience = \"billing-api\"\ndomain = \"finance\"\n"
		 "classification = \"confidential\"\n"
		 "[policy]\ndir = \"%s\"\n"
		 "[[api_keys]]\nname = \"ops\"\nhash = \"%s\"\nroles = [\"admin\"]\n"
		 "[[api_keys]]\nname = \"reader\"\nhash = \"%s\"\nroles = [\"auditor\"]\n"
		 "[[api_keys]]\nname = \"pep\"\nhash = \"%s\"\nroles = [\"introspector\"]\n"
		 "[[api_keys]]\nname = \"cloud-pep\"\nhash = \"%s\"\nroles = [\"introspector\"]\n"
		 "audiences = \"cloud-inventory-api\"\n",
		 policy_dir, h1, h2, h3, h4);
	if (harness_db_create("t_policy_api") != 0)
		return -1;
	return harness_idpd_start(&idpd, "t_policy_api", NULL, keys_toml);
}

static int
group_teardown(void **state)
{
	char cmd[256];

	(void)state;
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", policy_dir);
	if (system(cmd) != 0)
		return -1;
	return harness_idpd_stop(&idpd, SIGTERM, 10000) == 0 ? 0 : -1;
}

static void
dry_run_allows_and_names_the_rule(void **state)
{
	struct http_resp r;

	(void)state;
	assert_int_equal(call("POST", "/v1/policy/evaluate", auditor_key, input_ok, &r), 200);
	assert_string_equal(json_string_value(json_object_get(r.json, "decision")), "ALLOW");
	assert_string_equal(json_string_value(json_array_get(json_object_get(r.json, "rules"), 0)),
			    "base-allow");
	assert_int_equal(strncmp(json_string_value(json_object_get(r.json, "policy_hash")),
				 "sha256:", 7),
			 0);
	harness_resp_free(&r);
	/* A time given in part: the rest is filled in, the part given kept. */
	{
		json_t *b = json_loads(input_ok, 0, NULL);
		char *body;

		/* A write at 10:xx on a Monday: the business-hours rule reads the minute. */
		json_object_del(json_object_get(b, "context"), "minute");
		json_array_append_new(json_object_get(json_object_get(b, "agent"), "capabilities"),
				      json_string("ec2:StartInstances"));
		json_object_set_new(json_object_get(b, "request"), "scopes",
				    json_pack("[s]", "ec2:StartInstances"));
		body = json_dumps(b, JSON_COMPACT);
		assert_int_equal(call("POST", "/v1/policy/evaluate", auditor_key, body, &r), 200);
		if (json_has(r.json, "missing"))
			fail_msg("partial time: %s", r.body);
		harness_resp_free(&r);
		free(body);
		json_decref(b);
	}
}

static void
dry_run_denies_a_scope_outside_capabilities_with_the_reason(void **state)
{
	struct http_resp r;
	json_t *in = json_loads(input_ok, 0, NULL);
	char *body;

	(void)state;
	json_object_set_new(json_object_get(in, "request"), "scopes",
			    json_pack("[s]", "ec2:TerminateInstances"));
	body = json_dumps(in, JSON_COMPACT);
	assert_int_equal(call("POST", "/v1/policy/evaluate", auditor_key, body, &r), 200);
	assert_string_equal(json_string_value(json_object_get(r.json, "decision")), "DENY");
	assert_true(json_has(json_object_get(r.json, "rules"), "scope-boundary"));
	assert_non_null(json_string_value(json_object_get(r.json, "reason")));
	harness_resp_free(&r);
	free(body);
	json_decref(in);
}

static void
dry_run_rejects_bad_input_with_a_problem(void **state)
{
	struct http_resp r;

	(void)state;
	/* Not JSON at all: the 400 shape. */
	assert_int_equal(call("POST", "/v1/policy/evaluate", auditor_key, "{\"agent\":", &r), 400);
	assert_string_equal(json_string_value(json_object_get(r.json, "code")), "invalid_json");
	assert_non_null(strstr(json_string_value(json_object_get(r.json, "detail")), "line 1"));
	harness_resp_free(&r);
	/* Duplicate keys are refused, not silently resolved. */
	assert_int_equal(call("POST", "/v1/policy/evaluate", auditor_key,
			      "{\"agent\":{},\"agent\":{}}", &r),
			 400);
	harness_resp_free(&r);
	/* JSON, but not the input model: 422 naming the attribute. */
	assert_int_equal(call("POST", "/v1/policy/evaluate", auditor_key,
			      "{\"agent\":{\"name\":\"x\"}}", &r),
			 422);
	assert_true(json_has(json_object_get(r.json, "errors"), "agent.name"));
	harness_resp_free(&r);
	/* No key, or the wrong role. */
	assert_int_equal(call("POST", "/v1/policy/evaluate", NULL, input_ok, &r), 401);
	harness_resp_free(&r);
	assert_int_equal(call("POST", "/v1/policy/evaluate", pep_key, input_ok, &r), 403);
	harness_resp_free(&r);
}

static void
register_agent(const char *id, const char *caps, const char *domains)
{
	struct http_resp r;
	char body[1024];

	snprintf(body, sizeof(body),
		 "{\"id\":\"%s\",\"agent_type\":\"worker\",\"owner\":\"alice@company.com\","
		 "\"environment\":\"production\",\"domains\":%s,\"capabilities\":%s,"
		 "\"delegate_to\":[],\"delegation_constraints\":{\"max_chain_depth\":3,"
		 "\"max_scope_per_delegation\":\"read\",\"requires_human_approval_for\":[\"write\","
		 "\"delete\",\"admin\"]},\"credential\":{\"type\":\"spiffe-jwt-svid\","
		 "\"rotation\":\"1h\"}}",
		 id, domains, caps);
	assert_int_equal(call("POST", "/v1/agents", admin_key, body, &r), 201);
	harness_resp_free(&r);
}

static void
authzen_answers_a_pep_in_the_standard_shape(void **state)
{
	struct http_resp r;
	const char *allow =
		"{\"subject\":{\"type\":\"agent\",\"id\":\"agent-cloud-inventory-001\","
		"\"properties\":{\"status\":\"active\",\"environment\":\"production\","
		"\"domains\":[\"cloud\"],\"capabilities\":[\"ec2:Describe*\"]}},"
		"\"action\":{\"name\":\"ec2:DescribeInstances\"},"
		"\"resource\":{\"type\":\"api\",\"id\":\"cloud-inventory-api\",\"properties\":"
		"{\"domain\":\"cloud\",\"classification\":\"internal\",\"environment\":\"production\"}},"
		"\"context\":{\"weekday\":\"tue\",\"hour\":11,\"risk\":5,\"calls_last_minute\":1}}";
	const char *deny =
		"{\"subject\":{\"type\":\"agent\",\"id\":\"cost-agent\",\"properties\":{\"status\":"
		"\"active\",\"environment\":\"production\",\"domains\":[\"cloud\"],\"capabilities\":"
		"[\"billing:read\"]}},\"action\":{\"name\":\"billing:write\"},"
		"\"resource\":{\"type\":\"api\",\"id\":\"billing-api\",\"properties\":{\"domain\":"
		"\"cloud\",\"classification\":\"internal\",\"environment\":\"production\"}},"
		"\"context\":{\"weekday\":\"tue\",\"hour\":11,\"risk\":5,\"calls_last_minute\":1}}";

	(void)state;
	register_agent("agent-cloud-inventory-001", "[\"ec2:Describe*\"]", "[\"cloud\"]");
	register_agent("cost-agent", "[\"billing:read\"]", "[\"cloud\"]");
	assert_int_equal(call("POST", "/access/v1/evaluation", pep_key, allow, &r), 200);
	assert_true(json_is_true(json_object_get(r.json, "decision")));
	harness_resp_free(&r);
	assert_int_equal(call("POST", "/access/v1/evaluation", pep_key, deny, &r), 200);
	assert_true(json_is_false(json_object_get(r.json, "decision")));
	assert_non_null(json_string_value(
		json_object_get(json_object_get(r.json, "context"), "reason")));
	harness_resp_free(&r);
	assert_int_equal(call("POST", "/access/v1/evaluation", pep_key,
			      "{\"subject\":{\"id\":\"x\"}}", &r),
			 400);
	harness_resp_free(&r);
	/* The PEP cannot vouch for the agent: claimed capabilities and a claimed
	 * approval count for nothing, the registry's record decides. */
	{
		const char *claims =
			"{\"subject\":{\"type\":\"agent\",\"id\":\"cost-agent\",\"properties\":"
			"{\"capabilities\":[\"*:*\"],\"status\":\"active\"}},\"action\":{\"name\":"
			"\"billing:write\"},\"resource\":{\"type\":\"api\",\"id\":\"billing-api\","
			"\"properties\":{\"domain\":\"cloud\",\"classification\":\"internal\","
			"\"environment\":\"production\"}},\"context\":{\"approval\":true,\"risk\":0}}";

		assert_int_equal(call("POST", "/access/v1/evaluation", pep_key, claims, &r), 200);
		assert_true(json_is_false(json_object_get(r.json, "decision")));
		harness_resp_free(&r);
	}
	/* An agent the registry does not know gets a plain "no". */
	{
		json_t *b = json_loads(allow, 0, NULL);
		char *body;

		json_object_set_new(json_object_get(b, "subject"), "id", json_string("ghost-agent"));
		body = json_dumps(b, JSON_COMPACT);
		assert_int_equal(call("POST", "/access/v1/evaluation", pep_key, body, &r), 200);
		assert_true(json_is_false(json_object_get(r.json, "decision")));
		assert_string_equal(json_string_value(json_object_get(
					    json_object_get(r.json, "context"), "reason")),
				    "unknown agent");
		harness_resp_free(&r);
		free(body);
		json_decref(b);
		/* The answer is recorded like any evaluation: who asked about whom. */
		assert_int_equal(sql_count("SELECT count(*) FROM audit_events WHERE type = "
					   "'policy.evaluated' AND body::jsonb->'detail'->>'subject' = "
					   "'ghost-agent' AND body::jsonb->'detail'->>'decision' = 'DENY'",
					   1),
				 1);
	}
	/* A suspended agent is refused whatever the PEP says about it. */
	assert_int_equal(call("POST", "/v1/agents/agent-cloud-inventory-001/suspend", admin_key,
			      "{\"reason\":\"test\"}", &r),
			 200);
	harness_resp_free(&r);
	{
		struct timespec ts = {0, 200 * 1000 * 1000};

		nanosleep(&ts, NULL);
	}
	assert_int_equal(call("POST", "/access/v1/evaluation", pep_key, allow, &r), 200);
	assert_true(json_is_false(json_object_get(r.json, "decision")));
	harness_resp_free(&r);
	assert_int_equal(call("POST", "/v1/agents/agent-cloud-inventory-001/resume", admin_key, NULL,
			      &r),
			 200);
	harness_resp_free(&r);
	{
		struct timespec ts = {0, 200 * 1000 * 1000};

		nanosleep(&ts, NULL);
	}
	/* A PEP that sends no context: idpd fills in the time, this agent's call
	 * count and its risk score from its own live state (a first call has
	 * no history to raise the risk), so nothing is missing and the
	 * decision is a real one, not a fail-closed REQUIRE_APPROVAL.  Business
	 * hours decide between ALLOW and the time-of-day rule's answer for a
	 * read, which is ALLOW either way. */
	{
		json_t *b = json_loads(allow, 0, NULL);
		char *body;

		json_object_del(b, "context");
		body = json_dumps(b, JSON_COMPACT);
		assert_int_equal(call("POST", "/access/v1/evaluation", pep_key, body, &r), 200);
		assert_string_not_equal(json_string_value(json_object_get(
						json_object_get(r.json, "context"), "idpd_decision")),
					"REQUIRE_APPROVAL");
		harness_resp_free(&r);
		free(body);
		json_decref(b);
	}

	/* The batch form: defaults at the top, one override per item. */
	{
		json_t *b = json_loads(allow, 0, NULL);
		char *body;

		json_object_set_new(b, "evaluations",
				    json_pack("[{},{s:{s:s}}]", "action", "name", "ec2:RunInstances"));
		body = json_dumps(b, JSON_COMPACT);
		assert_int_equal(call("POST", "/access/v1/evaluations", pep_key, body, &r), 200);
		assert_int_equal(json_array_size(json_object_get(r.json, "evaluations")), 2);
		assert_true(json_is_true(json_object_get(
			json_array_get(json_object_get(r.json, "evaluations"), 0), "decision")));
		assert_true(json_is_false(json_object_get(
			json_array_get(json_object_get(r.json, "evaluations"), 1), "decision")));
		harness_resp_free(&r);
		free(body);
		json_decref(b);
	}
	assert_int_equal(call("GET", "/.well-known/authzen-configuration", NULL, NULL, &r), 200);
	assert_non_null(strstr(json_string_value(json_object_get(r.json,
							      "access_evaluation_endpoint")),
			       "/access/v1/evaluation"));
	/* URLs from the Host (identity.issuer is no URL here): never stored for another host. */
	{
		char v[64];

		assert_true(harness_resp_header(&r, "Cache-Control", v, sizeof(v)));
		assert_string_equal(v, "no-store");
		assert_true(harness_resp_header(&r, "Vary", v, sizeof(v)));
		assert_string_equal(v, "Host");
	}
	harness_resp_free(&r);
}

static char *
current_hash(void)
{
	struct http_resp r;
	char *h;

	assert_int_equal(call("GET", "/v1/policies", auditor_key, NULL, &r), 200);
	assert_true(json_array_size(json_object_get(r.json, "rules")) >= 7);
	h = strdup(json_string_value(json_object_get(r.json, "hash")));
	harness_resp_free(&r);
	return h;
}

/* POST /access/v1/evaluations with body; the answer's decisions as a string ("tf..."). */
static void
batch(const char *body, long want_status, char *decisions, size_t len, struct http_resp *keep)
{
	struct http_resp r;
	json_t *list;
	size_t i;

	assert_int_equal(call("POST", "/access/v1/evaluations", pep_key, body, &r), want_status);
	decisions[0] = '\0';
	list = json_object_get(r.json, "evaluations");
	for (i = 0; i < json_array_size(list) && i + 1 < len; i++)
		decisions[i] = json_is_true(json_object_get(json_array_get(list, i), "decision"))
				       ? 't'
				       : 'f';
	decisions[i] = '\0';
	if (keep != NULL)
		*keep = r;
	else
		harness_resp_free(&r);
}

/* Count of policy.evaluated events, once the queue has written them. */
static long
evaluated_events(void)
{
	char v[32];

	sleep_ms(300);
	assert_int_equal(harness_sql_value("t_policy_api",
					   "SELECT count(*) FROM audit_events WHERE type = "
					   "'policy.evaluated'",
					   v, sizeof(v)),
			 0);
	return atol(v);
}

/*
 * AuthZEN 1.0 as a PEP library sends it: evaluation semantics (7.1.2), an
 * empty list as one evaluation (7.1), required types (5.1, 5.3), unknown
 * members ignored (10.1.1).  A batch with a bad item is refused whole and
 * counts nothing; a resource idpd knows is judged as configured, whatever
 * the PEP says of it; every evaluation is recorded.
 */
static void
authzen_batches_follow_the_spec(void **state)
{
	static const char head[] =
		"{\"subject\":{\"type\":\"agent\",\"id\":\"agent-cloud-inventory-001\"},"
		"\"resource\":{\"type\":\"api\",\"id\":\"cloud-inventory-api\",\"properties\":"
		"{\"domain\":\"cloud\",\"classification\":\"internal\",\"environment\":"
		"\"production\",\"library_record\":{\"title\":\"x\"}}},"
		"\"context\":{\"schema\":\"urn:example\"}";
	static const char three[] =
		"\"evaluations\":[{\"action\":{\"name\":\"ec2:DescribeInstances\"}},"
		"{\"action\":{\"name\":\"ec2:TerminateInstances\"}},"
		"{\"action\":{\"name\":\"ec2:DescribeVpcs\",\"properties\":{\"method\":\"GET\"}}}]}";
	char body[2048], d[80];
	long before;
	struct http_resp r;

	(void)state;
	before = evaluated_events();
	snprintf(body, sizeof(body), "%s,%s", head, three);
	batch(body, 200, d, sizeof(d), NULL);
	assert_string_equal(d, "tft");
	snprintf(body, sizeof(body), "%s,\"options\":{\"evaluations_semantic\":"
				     "\"deny_on_first_deny\"},%s",
		 head, three);
	batch(body, 200, d, sizeof(d), NULL);
	assert_string_equal(d, "tf");
	snprintf(body, sizeof(body), "%s,\"options\":{\"evaluations_semantic\":"
				     "\"permit_on_first_permit\"},%s",
		 head, three);
	batch(body, 200, d, sizeof(d), NULL);
	assert_string_equal(d, "t");
	assert_int_equal(evaluated_events(), before + 6);
	snprintf(body, sizeof(body), "%s,\"options\":{\"evaluations_semantic\":\"bogus\"},%s",
		 head, three);
	batch(body, 400, d, sizeof(d), NULL);
	/* An empty list: the top level is the one question. */
	snprintf(body, sizeof(body),
		 "%s,\"action\":{\"name\":\"ec2:DescribeInstances\"},\"evaluations\":[]}", head);
	batch(body, 200, d, sizeof(d), NULL);
	assert_string_equal(d, "t");
	before = evaluated_events();
	/* A bad third item: refused whole, naming it, and nothing evaluated. */
	snprintf(body, sizeof(body),
		 "%s,\"evaluations\":[{\"action\":{\"name\":\"ec2:DescribeInstances\"}},"
		 "{\"action\":{\"name\":\"ec2:DescribeVpcs\"}},{\"action\":{\"name\":123}}]}",
		 head);
	batch(body, 400, d, sizeof(d), &r);
	assert_non_null(strstr(json_string_value(json_object_get(r.json, "detail")),
			       "evaluations[2]"));
	harness_resp_free(&r);
	assert_int_equal(evaluated_events(), before);
	/* subject.type and resource.type are required. */
	assert_int_equal(call("POST", "/access/v1/evaluation", pep_key,
			      "{\"subject\":{\"id\":\"agent-cloud-inventory-001\"},\"action\":"
			      "{\"name\":\"ec2:DescribeInstances\"},\"resource\":{\"type\":\"api\","
			      "\"id\":\"cloud-inventory-api\"}}",
			      &r),
			 400);
	harness_resp_free(&r);
	assert_int_equal(call("POST", "/access/v1/evaluation", pep_key,
			      "{\"subject\":{\"type\":\"agent\",\"id\":\"agent-cloud-inventory-001\"},"
			      "\"action\":{\"name\":\"ec2:DescribeInstances\"},\"resource\":{\"id\":"
			      "\"cloud-inventory-api\"}}",
			      &r),
			 400);
	harness_resp_free(&r);
	/* billing-api is configured (finance, confidential): a PEP calling it a
	 * cloud resource does not make cost-agent (cloud only) allowed there. */
	assert_int_equal(call("POST", "/access/v1/evaluation", pep_key,
			      "{\"subject\":{\"type\":\"agent\",\"id\":\"cost-agent\"},\"action\":"
			      "{\"name\":\"billing:read\"},\"resource\":{\"type\":\"api\",\"id\":"
			      "\"billing-api\",\"properties\":{\"domain\":\"cloud\","
			      "\"classification\":\"public\"}}}",
			      &r),
			 200);
	assert_true(json_is_false(json_object_get(r.json, "decision")));
	assert_true(json_has(json_object_get(r.json, "context"), "cross-domain"));
	harness_resp_free(&r);
	/* Nor may it add what the configuration leaves out: billing-api has no
	 * environment, so a development agent is kept from it (fail closed),
	 * whatever environment the PEP claims for it. */
	assert_int_equal(call("POST", "/v1/agents", admin_key,
			      "{\"id\":\"dev-biller\",\"agent_type\":\"worker\",\"owner\":"
			      "\"alice@company.com\",\"environment\":\"development\",\"domains\":"
			      "[\"finance\"],\"capabilities\":[\"billing:read\"],\"delegate_to\":[],"
			      "\"delegation_constraints\":{\"max_chain_depth\":1,"
			      "\"max_scope_per_delegation\":\"read\",\"requires_human_approval_for\":"
			      "[]},\"credential\":{\"type\":\"spiffe-jwt-svid\",\"rotation\":\"1h\"}}",
			      &r),
			 201);
	harness_resp_free(&r);
	assert_int_equal(call("POST", "/access/v1/evaluation", pep_key,
			      "{\"subject\":{\"type\":\"agent\",\"id\":\"dev-biller\"},\"action\":"
			      "{\"name\":\"billing:read\"},\"resource\":{\"type\":\"api\",\"id\":"
			      "\"billing-api\",\"properties\":{\"environment\":\"staging\"}}}",
			      &r),
			 200);
	assert_true(json_is_false(json_object_get(r.json, "decision")));
	assert_true(json_has(json_object_get(r.json, "context"),
			     "development-agent-production-data"));
	harness_resp_free(&r);
	/* A key bound to an audience asks about that resource only. */
	assert_int_equal(call("POST", "/access/v1/evaluation", cloud_pep_key,
			      "{\"subject\":{\"type\":\"agent\",\"id\":\"agent-cloud-inventory-001\"},"
			      "\"action\":{\"name\":\"ec2:DescribeInstances\"},\"resource\":{\"type\":"
			      "\"api\",\"id\":\"cloud-inventory-api\"}}",
			      &r),
			 200);
	harness_resp_free(&r);
	before = evaluated_events();
	assert_int_equal(call("POST", "/access/v1/evaluation", cloud_pep_key,
			      "{\"subject\":{\"type\":\"agent\",\"id\":\"cost-agent\"},\"action\":"
			      "{\"name\":\"billing:read\"},\"resource\":{\"type\":\"api\",\"id\":"
			      "\"billing-api\"}}",
			      &r),
			 403);
	harness_resp_free(&r);
	assert_int_equal(evaluated_events(), before);
}

/* An AuthZEN question about action on narrow-api for narrowed-agent. */
static void
narrow_question(char *body, size_t len, const char *action)
{
	snprintf(body, len,
		 "{\"subject\":{\"type\":\"agent\",\"id\":\"narrowed-agent\"},"
		 "\"action\":{\"name\":\"%s\"},"
		 "\"resource\":{\"type\":\"api\",\"id\":\"narrow-api\",\"properties\":"
		 "{\"domain\":\"cloud\",\"classification\":\"internal\","
		 "\"environment\":\"production\"}}}",
		 action);
}

/*
 * An ALLOW_WITH_CONDITIONS whose scope conditions put other scopes in place
 * of the asked action is a "no" to a PEP: true would grant the action asked.
 */
static void
authzen_says_no_when_conditions_replace_the_action(void **state)
{
	struct http_resp r;
	char path[256];
	FILE *f;
	char body[512];
	json_t *ctx;

	(void)state;
	register_agent("narrowed-agent", "[\"ec2:Describe*\"]", "[\"cloud\"]");
	snprintf(path, sizeof(path), "%s/zz-narrow.policy", policy_dir);
	f = fopen(path, "w");
	assert_non_null(f);
	fputs("@id(\"narrow-test\")\n@reason(\"only instances here\")\n"
	      "allow_with_conditions when { resource.audience == \"narrow-api\" }\n"
	      "\twith { scopes: [\"ec2:DescribeInstances\"] };\n",
	      f);
	fclose(f);
	assert_int_equal(call("POST", "/v1/policies/reload", admin_key, NULL, &r), 200);
	harness_resp_free(&r);

	/* "ec2:Describe*" narrowed to "ec2:DescribeInstances": not a yes to "ec2:Describe*". */
	narrow_question(body, sizeof(body), "ec2:Describe*");
	assert_int_equal(call("POST", "/access/v1/evaluation", pep_key, body, &r), 200);
	assert_true(json_is_false(json_object_get(r.json, "decision")));
	ctx = json_object_get(r.json, "context");
	assert_string_equal(json_string_value(json_object_get(ctx, "idpd_decision")),
			    "ALLOW_WITH_CONDITIONS");
	assert_true(json_has(json_object_get(json_object_get(ctx, "conditions"), "scopes"),
			     "ec2:DescribeInstances"));
	harness_resp_free(&r);
	/* The scope the conditions keep is a yes. */
	narrow_question(body, sizeof(body), "ec2:DescribeInstances");
	assert_int_equal(call("POST", "/access/v1/evaluation", pep_key, body, &r), 200);
	assert_true(json_is_true(json_object_get(r.json, "decision")));
	harness_resp_free(&r);

	assert_int_equal(unlink(path), 0);
	assert_int_equal(call("POST", "/v1/policies/reload", admin_key, NULL, &r), 200);
	harness_resp_free(&r);
}

/*
 * What a PEP may not say: that the subject is something other than an
 * agent (400), who the human or the task behind a request is (ignored: the
 * token path takes both from a verified task), or a resource id that spells
 * its key's audience among other words (403, as any other resource).
 * Nothing refused is evaluated.
 */
static void
authzen_takes_from_a_pep_only_what_it_may_say(void **state)
{
	static const char claims_rules[] =
		"@id(\"claimed-task\")\n@reason(\"the PEP named a task or a human\")\n"
		"deny when { has(request.human) or has(request.task_id) };\n"
		"@id(\"ttl-601\")\n@reason(\"a ttl of 601 seconds\")\n"
		"deny when { has(request.ttl) and request.ttl == 601 };\n";
	static const char user[] =
		"{\"subject\":{\"type\":\"user\",\"id\":\"agent-cloud-inventory-001\"},"
		"\"action\":{\"name\":\"ec2:DescribeInstances\"},\"resource\":{\"type\":\"api\","
		"\"id\":\"cloud-inventory-api\"}}";
	static const char refused_sql[] =
		"SELECT count(*) FROM audit_events WHERE type = 'auth.failed' AND "
		"body::jsonb->'detail'->>'endpoint' = 'authzen' AND "
		"body::jsonb->'detail'->>'reason' = 'audience_not_allowed'";
	struct http_resp r;
	char path[256], body[1024], d[8];
	long before, refused;
	FILE *f;

	(void)state;
	snprintf(path, sizeof(path), "%s/zz-claims.policy", policy_dir);
	f = fopen(path, "w");
	assert_non_null(f);
	fputs(claims_rules, f);
	fclose(f);
	assert_int_equal(call("POST", "/v1/policies/reload", admin_key, NULL, &r), 200);
	harness_resp_free(&r);

	/* action.properties may set the ttl, but not the human nor the task. */
	for (int ttl = 600; ttl <= 601; ttl++) {
		snprintf(body, sizeof(body),
			 "{\"subject\":{\"type\":\"agent\",\"id\":\"agent-cloud-inventory-001\"},"
			 "\"action\":{\"name\":\"ec2:DescribeInstances\",\"properties\":"
			 "{\"human\":\"boss@company.com\",\"task_id\":\"task-1\",\"ttl\":%d}},"
			 "\"resource\":{\"type\":\"api\",\"id\":\"cloud-inventory-api\",\"properties\":"
			 "{\"domain\":\"cloud\",\"classification\":\"internal\","
			 "\"environment\":\"production\"}}}",
			 ttl);
		assert_int_equal(call("POST", "/access/v1/evaluation", pep_key, body, &r), 200);
		assert_false(json_has(json_object_get(r.json, "context"), "claimed-task"));
		assert_true(json_has(json_object_get(r.json, "context"), "ttl-601") == (ttl == 601));
		assert_true(json_is_true(json_object_get(r.json, "decision")) == (ttl == 600));
		harness_resp_free(&r);
	}

	before = evaluated_events();
	/* The subjects idpd decides for are agents. */
	assert_int_equal(call("POST", "/access/v1/evaluation", pep_key, user, &r), 400);
	assert_non_null(strstr(json_string_value(json_object_get(r.json, "detail")),
			       "subject.type"));
	harness_resp_free(&r);
	batch("{\"subject\":{\"type\":\"agent\",\"id\":\"agent-cloud-inventory-001\"},"
	      "\"action\":{\"name\":\"ec2:DescribeInstances\"},\"resource\":{\"type\":\"api\","
	      "\"id\":\"cloud-inventory-api\"},\"evaluations\":[{},{\"subject\":{\"type\":"
	      "\"Agent\",\"id\":\"agent-cloud-inventory-001\"}}]}",
	      400, d, sizeof(d), &r);
	assert_non_null(strstr(json_string_value(json_object_get(r.json, "detail")),
			       "evaluations[1]"));
	harness_resp_free(&r);
	/* A key bound to cloud-inventory-api: a resource id is that audience
	 * whole or another resource. */
	refused = sql_count(refused_sql, -1); /* as it is: nothing is pending */
	snprintf(body, sizeof(body),
		 "{\"subject\":{\"type\":\"agent\",\"id\":\"cost-agent\"},\"action\":"
		 "{\"name\":\"billing:read\"},\"resource\":{\"type\":\"api\",\"id\":"
		 "\"billing-api cloud-inventory-api\"}}");
	assert_int_equal(call("POST", "/access/v1/evaluation", cloud_pep_key, body, &r), 403);
	assert_string_equal(json_string_value(json_object_get(r.json, "code")), "forbidden");
	harness_resp_free(&r);
	snprintf(body, sizeof(body),
		 "{\"subject\":{\"type\":\"agent\",\"id\":\"cost-agent\"},\"action\":"
		 "{\"name\":\"billing:read\"},\"resource\":{\"type\":\"api\",\"id\":"
		 "\"cloud-inventory-api \"}}");
	assert_int_equal(call("POST", "/access/v1/evaluation", cloud_pep_key, body, &r), 403);
	harness_resp_free(&r);
	assert_int_equal(evaluated_events(), before);
	/* Both refusals are recorded, as introspection records a token of
	 * another audience. */
	assert_int_equal(sql_count(refused_sql, refused + 2), refused + 2);

	assert_int_equal(unlink(path), 0);
	assert_int_equal(call("POST", "/v1/policies/reload", admin_key, NULL, &r), 200);
	harness_resp_free(&r);
}

static void
reload_refuses_a_broken_set_and_keeps_the_old_one(void **state)
{
	struct http_resp r;
	char path[256], *before, *after;
	FILE *f;

	(void)state;
	before = current_hash();
	snprintf(path, sizeof(path), "%s/zz-extra.policy", policy_dir);
	f = fopen(path, "w");
	fputs("@id(\"broken\")\n@reason(\"x\")\ndeny when { agent.nonexistent == 1 };\n", f);
	fclose(f);
	assert_int_equal(call("POST", "/v1/policies/reload", admin_key, NULL, &r), 422);
	assert_true(json_has(json_object_get(r.json, "errors"), "zz-extra.policy:3:"));
	harness_resp_free(&r);
	after = current_hash();
	assert_string_equal(before, after);
	free(after);
	/* Only admins reload. */
	assert_int_equal(call("POST", "/v1/policies/reload", auditor_key, NULL, &r), 403);
	harness_resp_free(&r);

	/* Fixed, it loads: a new hash, and the new rule decides. */
	f = fopen(path, "w");
	fputs("@id(\"no-mondays\")\n@reason(\"closed on mondays\")\n"
	      "deny when { context.weekday == \"mon\" };\n",
	      f);
	fclose(f);
	assert_int_equal(call("POST", "/v1/policies/reload", admin_key, NULL, &r), 200);
	harness_resp_free(&r);
	after = current_hash();
	assert_string_not_equal(before, after);
	free(after);
	assert_int_equal(call("POST", "/v1/policy/evaluate", auditor_key, input_ok, &r), 200);
	assert_string_equal(json_string_value(json_object_get(r.json, "decision")), "DENY");
	assert_true(json_has(json_object_get(r.json, "rules"), "no-mondays"));
	harness_resp_free(&r);
	free(before);
}

/* The policy.reloaded events so far. */
static long
reload_events(void)
{
	char v[32];

	assert_int_equal(harness_sql_value("t_policy_api",
					   "SELECT count(*) FROM audit_events WHERE type = "
					   "'policy.reloaded'",
					   v, sizeof(v)),
			 0);
	return atol(v);
}

/*
 * A query parameter a policy endpoint does not read, or a body sent to the
 * reload, which reads none, is a 400: no reload, no decision.
 */
static void
options_a_policy_endpoint_does_not_read_are_refused(void **state)
{
	static const char *const nobody =
		"{\"subject\":{\"type\":\"agent\",\"id\":\"nobody-here\"},\"action\":{\"name\":"
		"\"ec2:DescribeInstances\"},\"resource\":{\"type\":\"api\",\"id\":"
		"\"cloud-inventory-api\"}}";
	struct http_resp r;
	char path[256], *before, *after;
	long reloads;
	FILE *f;

	(void)state;
	before = current_hash();
	reloads = reload_events();
	snprintf(path, sizeof(path), "%s/zz-options.policy", policy_dir);
	f = fopen(path, "w");
	fputs("@id(\"options\")\n@reason(\"x\")\ndeny when { context.hour == 99 };\n", f);
	fclose(f);
	assert_int_equal(call("POST", "/v1/policies/reload", admin_key, "{\"dry_run\":true}", &r),
			 400);
	assert_non_null(strstr(json_string_value(json_object_get(r.json, "detail")), "no body"));
	harness_resp_free(&r);
	assert_int_equal(call("POST", "/v1/policies/reload?dry_run=true", admin_key, NULL, &r), 400);
	assert_string_equal(
		json_string_value(json_array_get(json_object_get(r.json, "parameters"), 0)),
		"dry_run");
	harness_resp_free(&r);
	after = current_hash();
	assert_string_equal(before, after);
	free(after);
	assert_int_equal(reload_events(), reloads);
	unlink(path);

	assert_int_equal(call("GET", "/v1/policies?verbose=1", auditor_key, NULL, &r), 400);
	assert_null(json_object_get(r.json, "rules"));
	harness_resp_free(&r);
	assert_int_equal(call("POST", "/v1/policy/evaluate?explain=1", auditor_key, input_ok, &r),
			 400);
	assert_null(json_object_get(r.json, "decision"));
	harness_resp_free(&r);
	assert_int_equal(call("POST", "/access/v1/evaluation?trace=1", pep_key, nobody, &r), 400);
	assert_null(json_object_get(r.json, "decision"));
	harness_resp_free(&r);
	assert_int_equal(call("POST", "/access/v1/evaluations?trace=1", pep_key, nobody, &r), 400);
	assert_null(json_object_get(r.json, "evaluations"));
	harness_resp_free(&r);
	/* Without them, the same calls answer. */
	assert_int_equal(call("POST", "/access/v1/evaluation", pep_key, nobody, &r), 200);
	harness_resp_free(&r);
	assert_int_equal(call("POST", "/v1/policy/evaluate", auditor_key, input_ok, &r), 200);
	harness_resp_free(&r);
	free(before);
}

/* A reload that cannot be audited changes nothing: 503, the old set stays. */
static void
a_reload_that_cannot_be_audited_changes_nothing(void **state)
{
	struct http_resp r;
	char path[256], *before, *after;
	FILE *f;

	(void)state;
	before = current_hash();
	assert_int_equal(harness_sql("t_policy_api",
				     "CREATE FUNCTION refuse_reload() RETURNS trigger LANGUAGE plpgsql "
				     "AS $$ BEGIN IF NEW.type = 'policy.reloaded' THEN RAISE "
				     "EXCEPTION 'refused by the test'; END IF; RETURN NEW; END $$; "
				     "CREATE TRIGGER refuse_reload BEFORE INSERT ON audit_events FOR "
				     "EACH ROW EXECUTE FUNCTION refuse_reload()"),
			 0);
	snprintf(path, sizeof(path), "%s/zz-unaudited.policy", policy_dir);
	f = fopen(path, "w");
	fputs("@id(\"unaudited\")\n@reason(\"x\")\ndeny when { context.hour == 99 };\n", f);
	fclose(f);
	assert_int_equal(call("POST", "/v1/policies/reload", admin_key, NULL, &r), 503);
	harness_resp_free(&r);
	after = current_hash();
	assert_string_equal(before, after);
	free(after);
	assert_int_equal(harness_sql("t_policy_api", "DROP TRIGGER refuse_reload ON audit_events; "
						     "DROP FUNCTION refuse_reload()"),
			 0);
	unlink(path);
	free(before);
}

static void
sighup_reloads_the_set(void **state)
{
	char path[256], *before, *after = NULL;

	(void)state;
	before = current_hash();
	snprintf(path, sizeof(path), "%s/zz-extra.policy", policy_dir);
	unlink(path);
	assert_int_equal(kill(idpd.pid, SIGHUP), 0);
	for (int i = 0; i < 100; i++) {
		free(after);
		after = current_hash();
		if (strcmp(before, after) != 0)
			break;
		sleep_ms(50);
	}
	assert_string_not_equal(before, after);
	free(before);
	free(after);
	/* And the Monday rule is gone again. */
	{
		struct http_resp r;

		assert_int_equal(call("POST", "/v1/policy/evaluate", auditor_key, input_ok, &r),
				 200);
		assert_string_equal(json_string_value(json_object_get(r.json, "decision")),
				    "ALLOW");
		harness_resp_free(&r);
	}
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(dry_run_allows_and_names_the_rule),
		cmocka_unit_test(dry_run_denies_a_scope_outside_capabilities_with_the_reason),
		cmocka_unit_test(dry_run_rejects_bad_input_with_a_problem),
		cmocka_unit_test(authzen_answers_a_pep_in_the_standard_shape),
		cmocka_unit_test(authzen_batches_follow_the_spec),
		cmocka_unit_test(authzen_says_no_when_conditions_replace_the_action),
		cmocka_unit_test(authzen_takes_from_a_pep_only_what_it_may_say),
		cmocka_unit_test(reload_refuses_a_broken_set_and_keeps_the_old_one),
		cmocka_unit_test(a_reload_that_cannot_be_audited_changes_nothing),
		cmocka_unit_test(options_a_policy_endpoint_does_not_read_are_refused),
		cmocka_unit_test(sighup_reloads_the_set),
	};
	return cmocka_run_group_tests_name("policy_api", tests, group_setup, group_teardown);
}
