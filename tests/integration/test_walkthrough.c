/*
 * The seed's "A Day in the Life of an Agent Identity", step by step, against
 * idpd with the shipped policy set, a real PostgreSQL and HTTP over
 * loopback.  docs/walkthrough.md is the same flow as a curl script.
 *
 * The shipped policies look at the clock: a write outside business hours
 * (Monday to Friday, 08:00-18:00 in policy.timezone, UTC here) needs a human
 * approval, and the risk score counts off-hours (08:00-19:00).  The test
 * reads the clock once and expects what the policies say for that moment:
 * in office hours the report is written straight away; outside them Alice
 * approves it first.  Both paths assert every answer.  Alice's portal is a
 * webhook receiver, told when the task completes.
 */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include "idpd/revocation.h"
#include "idpd/tasks.h"
#include "world.h"

struct day {
	struct world w;
	char planner[4096], inventory[4096], cost[4096], reporter[4096];
	char task_id[80];
	char *alice, *root, *inv_deleg, *cost_deleg, *rep_deleg;
	char *tokens[16]; /* every token handed out, for the last introspection */
	size_t n_tokens;
};

static void
keep(struct day *d, const char *tok)
{
	assert_true(d->n_tokens < sizeof(d->tokens) / sizeof(d->tokens[0]));
	d->tokens[d->n_tokens] = strdup(tok);
	assert_non_null(d->tokens[d->n_tokens]);
	d->n_tokens++;
}

static void
agent(struct day *d, const char *id, const char *type, const char *caps, const char *domains,
      const char *delegate_to, const char *max_scope)
{
	const struct world_agent a = {
	    .id = id,
	    .type = type,
	    .owner = "alice@example.com",
	    .version = "v1.0.0",
	    .environment = "production",
	    .caps = caps,
	    .domains = domains,
	    .delegate_to = delegate_to,
	    .max_depth = 2,
	    .max_scope = max_scope,
	    .approvals = "[\"delete\",\"admin\"]",
	    .rotation = "1h",
	    .extra =
	        ",\"model\":\"claude-sonnet-4-20250514\",\"deployment\":\"k8s-prod-us-east-1\","
	        "\"team\":\"platform-engineering\""};

	world_agent(&d->w, &a);
}

static char *
delegate(struct day *d, const char *to, const char *scope)
{
	struct http_resp r;
	char *tok;

	world_delegation(&d->w, d->planner, d->root, to, scope, "\"1h\"", NULL, &r);
	if (r.status != 201)
		fprintf(stderr, "delegate to %s: %ld %s\n", to, r.status, r.body);
	assert_int_equal(r.status, 201);
	assert_int_equal(json_integer_value(json_object_get(r.json, "expires_in")), 3600);
	tok = strdup(json_string_value(json_object_get(r.json, "delegation_token")));
	assert_non_null(tok);
	harness_resp_free(&r);
	keep(d, tok);
	return tok;
}

static void
ask(struct day *d, const char *cred, const char *dtoken, const char *aud, const char *scope,
    const char *extra, struct http_resp *r)
{
	char body[8192];

	snprintf(body, sizeof(body),
	         "{\"audience\":\"%s\",\"scope\":\"%s\",\"task_id\":\"%s\",\"delegation_token\":"
	         "\"%s\",\"reason\":\"quarterly infrastructure review\"%s}",
	         aud, scope, d->task_id, dtoken, extra);
	world_call(&d->w, "POST", "/v1/token", cred, body, r);
}

/* POST /introspect; whether the token is active (asserting the inactive shape). */
static bool
active(struct day *d, const char *tok, json_t **claims)
{
	return world_active(&d->w, tok, claims);
}

static struct harness_hook portal;

static void
a_day_in_the_life(void **state)
{
	struct day d;
	struct http_resp r;
	json_t *c;
	char path[256], sql[1024];
	time_t now = time(NULL);
	struct tm utc;
	bool office, risk_off;
	const char *inv_tok;
	char *report_tok;

	(void)state;
	gmtime_r(&now, &utc);
	/* time-of-day.policy: Monday to Friday, [08:00, 18:00); risk: [08:00, 19:00). */
	office = utc.tm_wday >= 1 && utc.tm_wday <= 5 && utc.tm_hour >= 8 && utc.tm_hour < 18;
	risk_off = !(utc.tm_wday >= 1 && utc.tm_wday <= 5 && utc.tm_hour >= 8 && utc.tm_hour < 19);
	memset(&d, 0, sizeof(d));
	/* Alice's agent portal: told by a webhook sink when a task completes. */
	{
		static const int ok[] = {204};
		char sink[512];

		assert_int_equal(harness_hook_start(&portal, ok, 1), 0);
		snprintf(sink, sizeof(sink),
		         "[audit]\nship_interval = \"50ms\"\n"
		         "[[audit.sinks]]\nname = \"portal\"\ntype = \"webhook\"\n"
		         "url = \"http://127.0.0.1:%d/notify\"\ntypes = \"task.completed\"\n",
		         portal.port);
		world_start(&d.w, "t_walkthrough", sink);
	}

	/* The agents, registered by an operator, each accountable to alice. */
	agent(&d, "planning-agent", "planner",
	      "[\"cloud:Describe*\",\"cloud:List*\",\"billing:read\",\"reports:write\"]",
	      "[\"cloud\",\"finance\",\"reporting\"]",
	      "[\"cloud-inventory\",\"cost-analysis\",\"report-generator\"]", "write");
	agent(&d, "inventory-agent", "cloud-inventory", "[\"cloud:Describe*\",\"cloud:List*\"]",
	      "[\"cloud\"]", "[]", "read");
	agent(&d, "cost-agent", "cost-analysis", "[\"billing:read\"]", "[\"finance\"]", "[]",
	      "read");
	agent(&d, "report-agent", "report-generator", "[\"reports:write\"]", "[\"reporting\"]",
	      "[]", "read");

	/* 1. Alice starts the quarterly infrastructure review with her IdP token.
	 * 2. The Planning Agent is verified (attestation gives it its identity
	 *    credential) and gets the task's delegation token. */
	world_credential(&d.w, "planning-agent", d.planner, sizeof(d.planner));
	d.alice = world_human_token("alice@example.com");
	world_task(&d.w, d.alice, "planning-agent",
	           "[\"cloud:Describe*\",\"cloud:List*\",\"billing:read\",\"reports:write\"]",
	           d.task_id, &d.root);
	keep(&d, d.root);
	assert_true(active(&d, d.root, &c));
	assert_string_equal(json_string_value(json_object_get(c, "sub")), "planning-agent");
	assert_string_equal(json_string_value(json_object_get(c, "human_principal")),
	                    "alice@example.com");
	json_decref(c);

	/* 3. It delegates narrower one-hour tokens to the three specialists. */
	world_credential(&d.w, "inventory-agent", d.inventory, sizeof(d.inventory));
	world_credential(&d.w, "cost-agent", d.cost, sizeof(d.cost));
	world_credential(&d.w, "report-agent", d.reporter, sizeof(d.reporter));
	d.inv_deleg = delegate(&d, "inventory-agent", "cloud:Describe* cloud:List*");
	d.cost_deleg = delegate(&d, "cost-agent", "billing:read");
	d.rep_deleg = delegate(&d, "report-agent", "reports:write");

	/* 4. The Cloud Inventory Agent gets a 15-minute JIT token for the AWS API
	 *    (10 minutes off-hours: the risk score narrows first uses then). */
	ask(&d, d.inventory, d.inv_deleg, WORLD_AWS, "cloud:DescribeInstances", "", &r);
	if (r.status != 200)
		fprintf(stderr, "inventory: %ld %s\n", r.status, r.body);
	assert_int_equal(r.status, 200);
	assert_int_equal(json_integer_value(json_object_get(r.json, "expires_in")),
	                 risk_off ? 600 : 900);
	inv_tok = json_string_value(json_object_get(r.json, "access_token"));
	keep(&d, inv_tok);
	assert_true(active(&d, inv_tok, &c));
	assert_string_equal(json_string_value(json_object_get(c, "aud")), WORLD_AWS);
	assert_string_equal(json_string_value(json_object_get(c, "task_id")), d.task_id);
	/* The chain: the planner's root token, then the inventory agent's. */
	assert_int_equal(json_array_size(json_object_get(c, "delegation_chain")), 2);
	json_decref(c);
	harness_resp_free(&r);
	/*    The token expires, and a new one is granted (a 2-second one here,
	 *    so the test need not wait a quarter of an hour). */
	ask(&d, d.inventory, d.inv_deleg, WORLD_AWS, "cloud:DescribeInstances", ",\"ttl\":2", &r);
	assert_int_equal(r.status, 200);
	assert_int_equal(json_integer_value(json_object_get(r.json, "expires_in")), 2);
	{
		char *short_tok =
		    strdup(json_string_value(json_object_get(r.json, "access_token")));

		assert_non_null(short_tok);
		harness_resp_free(&r);
		sleep(3);
		assert_false(active(&d, short_tok, NULL));
		free(short_tok);
	}
	ask(&d, d.inventory, d.inv_deleg, WORLD_AWS, "cloud:DescribeInstances", "", &r);
	assert_int_equal(r.status, 200);
	keep(&d, json_string_value(json_object_get(r.json, "access_token")));
	harness_resp_free(&r);

	/* 5. The Cost Analysis Agent's write request to the billing API is denied
	 *    with a reason; it goes on read-only. */
	ask(&d, d.cost, d.cost_deleg, WORLD_BILLING, "billing:write", "", &r);
	assert_int_equal(r.status, 403);
	assert_string_equal(json_string_value(json_object_get(r.json, "code")),
	                    "scope_outside_capabilities");
	assert_non_null(json_string_value(json_object_get(r.json, "detail")));
	harness_resp_free(&r);
	ask(&d, d.cost, d.cost_deleg, WORLD_BILLING, "billing:read", "", &r);
	if (r.status != 200)
		fprintf(stderr, "cost read: %ld %s\n", r.status, r.body);
	assert_int_equal(r.status, 200);
	assert_string_equal(json_string_value(json_object_get(r.json, "scope")), "billing:read");
	keep(&d, json_string_value(json_object_get(r.json, "access_token")));
	harness_resp_free(&r);

	/* 6. The report is written: in office hours at once; outside them the
	 *    shipped time-of-day policy asks Alice first. */
	ask(&d, d.reporter, d.rep_deleg, WORLD_REPORTS, "reports:write", "", &r);
	if (!office) {
		char approval[128], extra[256];

		if (r.status != 202)
			fprintf(stderr, "report: %ld %s\n", r.status, r.body);
		assert_int_equal(r.status, 202);
		snprintf(approval, sizeof(approval), "%s",
		         json_string_value(json_object_get(r.json, "approval_id")));
		harness_resp_free(&r);
		snprintf(path, sizeof(path), "/v1/approvals/%s/approve", approval);
		world_call(&d.w, "POST", path, d.alice, "{\"note\":\"go ahead\"}", &r);
		assert_int_equal(r.status, 200);
		harness_resp_free(&r);
		snprintf(extra, sizeof(extra), ",\"approval_id\":\"%s\"", approval);
		ask(&d, d.reporter, d.rep_deleg, WORLD_REPORTS, "reports:write", extra, &r);
	}
	if (r.status != 200)
		fprintf(stderr, "report: %ld %s\n", r.status, r.body);
	assert_int_equal(r.status, 200);
	assert_string_equal(json_string_value(json_object_get(r.json, "scope")), "reports:write");
	keep(&d, json_string_value(json_object_get(r.json, "access_token")));
	report_tok = strdup(json_string_value(json_object_get(r.json, "access_token")));
	assert_non_null(report_tok);
	harness_resp_free(&r);
	/*    The report generator records what it did, with the token it used:
	 *    the event takes its agent, task, human and chain from the token. */
	world_call(&d.w, "POST", "/v1/audit/events", report_tok,
	           "{\"type\":\"tool_invocation\",\"agent_id\":\"someone-else\","
	           "\"action\":{\"tool\":\"s3.put_object\",\"parameters\":{\"key\":"
	           "\"reports/q3-infra.pdf\"},\"result\":\"success\"}}",
	           &r);
	if (r.status != 201)
		fprintf(stderr, "tool report: %ld %s\n", r.status, r.body);
	assert_int_equal(r.status, 201);
	harness_resp_free(&r);
	snprintf(
	    sql, sizeof(sql),
	    "SELECT count(*) FROM audit_events WHERE type = 'tool_invocation' AND task_id = '%s'"
	    " AND agent_id = 'report-agent' AND body::json->'delegation_chain'->>0 = "
	    "'alice@example.com' AND body::json->'delegation_chain'->>2 = 'report-agent'",
	    d.task_id);
	assert_int_equal(world_count(&d.w, sql), 1);

	/* 7. The planning agent marks the task complete, and every token of it
	 *    is inactive on introspection. */
	snprintf(path, sizeof(path), "/v1/tasks/%s/complete", d.task_id);
	world_call(&d.w, "POST", path, d.planner, NULL, &r);
	assert_int_equal(r.status, 200);
	assert_string_equal(json_string_value(json_object_get(r.json, "status")), "completed");
	harness_resp_free(&r);
	/*    10:31: Alice receives a notification that the review is complete. */
	{
		char want[160], *note;

		snprintf(want, sizeof(want), "\"task_id\":\"%s\"", d.task_id);
		assert_true(harness_hook_wait(&portal, want, 5000));
		note = harness_hook_request(&portal, harness_hook_count(&portal) - 1);
		assert_non_null(note);
		assert_non_null(strstr(note, "\"type\":\"task.completed\""));
		assert_non_null(strstr(note, "\"human_principal\":\"alice@example.com\""));
		assert_non_null(strstr(note, "\"completed_by\":\"planning-agent\""));
		/* Nothing but completions: the sink names its types. */
		for (size_t i = 0; i < harness_hook_count(&portal); i++) {
			char *req = harness_hook_request(&portal, i);

			assert_null(strstr(req, "\"type\":\"token."));
			free(req);
		}
		free(note);
	}
	for (size_t i = 0; i < d.n_tokens; i++)
		assert_false(active(&d, d.tokens[i], NULL));
	/*    Each inactive answer is in the audit log (queued without waiting:
	 *    poll), as auth.failed from the introspector, with its reason. */
	{
		long want = (long)d.n_tokens + 1; /* and the 2-second token */
		const char *q = "SELECT count(*) FROM audit_events WHERE type = 'auth.failed' AND "
		                "body::json->'detail'->>'endpoint' = 'introspect'";

		for (int i = 0; i < 200 && world_count(&d.w, q) < want; i++)
			usleep(10 * 1000);
		assert_int_equal(world_count(&d.w, q), want);
		assert_int_equal(
		    world_count(&d.w,
		                "SELECT count(*) FROM audit_events WHERE type = 'auth.failed' "
		                "AND body::json->'detail'->>'reason' = 'expired'"),
		    1);
	}
	/*    A dead token cannot report either. */
	world_call(&d.w, "POST", "/v1/audit/events", report_tok,
	           "{\"type\":\"tool_invocation\",\"action\":{\"tool\":\"s3.put_object\"}}", &r);
	assert_int_equal(r.status, 401);
	harness_resp_free(&r);
	free(report_tok);

	/* 8. The audit log tells the whole story back to Alice's request, with
	 *    the task id on every event and the delegation chain on every
	 *    token and delegation event. */
	snprintf(path, sizeof(path), "/v1/tasks/%s/timeline", d.task_id);
	world_call(&d.w, "GET", path, d.alice, NULL, &r);
	assert_int_equal(r.status, 200);
	{
		json_t *events = json_object_get(r.json, "events"), *ev;
		size_t i, issued = 0, denied = 0, delegations = 0;

		assert_true(json_array_size(events) >= 10);
		assert_string_equal(
		    json_string_value(json_object_get(json_array_get(events, 0), "type")),
		    "task.started");
		json_array_foreach(events, i, ev)
		{
			const char *type = json_string_value(json_object_get(ev, "type"));
			json_t *chain = json_object_get(ev, "delegation_chain");

			assert_string_equal(json_string_value(json_object_get(ev, "task_id")),
			                    d.task_id);
			if (strncmp(type, "token.", 6) == 0 ||
			    strncmp(type, "delegation.", 11) == 0) {
				if (json_array_size(chain) < 2) {
					char *txt = json_dumps(ev, JSON_COMPACT);

					fprintf(stderr, "no chain: %s\n", txt ? txt : "?");
					free(txt);
				}
				assert_true(json_array_size(chain) >= 2);
				assert_string_equal(json_string_value(json_array_get(chain, 0)),
				                    "alice@example.com");
			}
			issued += strcmp(type, "token.issued") == 0;
			denied += strcmp(type, "token.denied") == 0;
			delegations += strcmp(type, "delegation.created") == 0;
		}
		assert_int_equal(delegations, 3);
		assert_int_equal(issued, 5);
		assert_int_equal(denied, 1);
		assert_string_equal(
		    json_string_value(json_object_get(
		        json_array_get(events, json_array_size(events) - 1), "type")),
		    "task.completed");
	}
	harness_resp_free(&r);
	snprintf(sql, sizeof(sql),
	         "SELECT count(*) FROM audit_events WHERE task_id = '%s' AND type = 'token.denied'"
	         " AND body::json->'detail'->>'reason' = 'scope_outside_capabilities'",
	         d.task_id);
	assert_int_equal(world_count(&d.w, sql), 1);

	for (size_t i = 0; i < d.n_tokens; i++)
		free(d.tokens[i]);
	free(d.root);
	free(d.inv_deleg);
	free(d.cost_deleg);
	free(d.rep_deleg);
	free(d.alice);
	world_stop(&d.w);
	harness_hook_stop(&portal);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(a_day_in_the_life),
	};

	return cmocka_run_group_tests(tests, NULL, world_teardown);
}
