/*
 * Integration tests of the audit layer through idpd's HTTP API and a real
 * PostgreSQL: ingestion, query with pagination, the hash chain and its
 * verification (including a row edited behind idpd's back), durability
 * across a PostgreSQL outage and a kill -9.
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

#include "harness.h"
#include "idpd/auth.h"

static char auditor_key[64], reporter_key[64], keys_toml[1024];

static void
make_keys(void)
{
	char h1[80], h2[80];

	if (keys_toml[0] != '\0')
		return;
	assert_int_equal(auth_key_generate(auditor_key, h1), IDP_OK);
	assert_int_equal(auth_key_generate(reporter_key, h2), IDP_OK);
	snprintf(
	    keys_toml, sizeof(keys_toml),
	    "[audit]\ntimeout = \"1s\"\n"
	    "[[api_keys]]\nname = \"siem-reader\"\nhash = \"%s\"\nroles = [\"auditor\"]\n"
	    "[[api_keys]]\nname = \"billing-api\"\nhash = \"%s\"\nroles = [\"introspector\"]\n",
	    h1, h2);
}

static void
bearer(char *out, size_t len, const char *key)
{
	snprintf(out, len, "Authorization: Bearer %s", key != NULL ? key : "");
}

/* POST one tool_invocation; returns the HTTP status, and the event id in id. */
static long
report(const struct idpd_proc *p, const char *body, char *id, size_t id_len)
{
	char url[256], auth[128];
	const char *h[] = {auth, "Content-Type: application/json", NULL};
	struct http_resp r;
	long st;

	bearer(auth, sizeof(auth), reporter_key);
	snprintf(url, sizeof(url), "%s/v1/audit/events", p->base);
	if (harness_http("POST", url, h, body, strlen(body), &r) != 0) {
		harness_resp_free(&r);
		return -1;
	}
	st = r.status;
	if (id != NULL && r.json != NULL && json_string_value(json_object_get(r.json, "id")))
		snprintf(id, id_len, "%s", json_string_value(json_object_get(r.json, "id")));
	harness_resp_free(&r);
	return st;
}

static void
get_as(const struct idpd_proc *p, const char *key, const char *path, struct http_resp *r)
{
	char url[512], auth[128];
	const char *h[] = {auth, NULL};

	bearer(auth, sizeof(auth), key);
	snprintf(url, sizeof(url), "%s%s", p->base, path);
	assert_int_equal(harness_http("GET", url, key ? h : NULL, NULL, 0, r), 0);
}

static const char *tool_event =
    "{\"type\":\"tool_invocation\",\"agent_id\":\"agent-planning-prod-001\","
    "\"agent_type\":\"planning-orchestrator\",\"human_principal\":\"alice@company.com\","
    "\"task_id\":\"infra-review-q1-2026\",\"delegation_chain\":[\"alice@company.com\","
    "\"planning-agent\",\"inventory-agent\"],\"action\":{\"tool\":\"aws_ec2_describe_instances\","
    "\"parameters\":{\"region\":\"us-east-1\",\"db_password\":\"hunter2\"},"
    "\"result\":\"success (247 instances returned)\"},\"authorization\":{\"token_id\":"
    "\"tok_abc123\",\"granted_scope\":\"ec2:DescribeInstances\",\"policy_decision\":\"ALLOW\","
    "\"policy_rule\":\"agent-cloud-read-v2\"},\"context\":{\"step\":\"3 of 12\","
    "\"previous_step\":\"Listed S3 buckets (success)\",\"next_step\":\"Query cost data\"}}";

static void
reported_event_is_stored_redacted_and_attributed(void **state)
{
	struct idpd_proc p;
	struct http_resp r;
	char id[80] = "", path[256];
	json_t *ev;

	(void)state;
	make_keys();
	assert_int_equal(harness_db_create("t_audit_ingest"), 0);
	assert_int_equal(harness_idpd_start(&p, "t_audit_ingest", NULL, keys_toml), 0);
	assert_int_equal(report(&p, tool_event, id, sizeof(id)), 201);
	assert_int_equal(strlen(id), 36);

	snprintf(path, sizeof(path), "/v1/audit/events?task_id=infra-review-q1-2026");
	get_as(&p, auditor_key, path, &r);
	assert_int_equal(r.status, 200);
	assert_int_equal(json_array_size(json_object_get(r.json, "events")), 1);
	ev = json_array_get(json_object_get(r.json, "events"), 0);
	assert_string_equal(json_string_value(json_object_get(ev, "id")), id);
	assert_string_equal(json_string_value(json_object_get(ev, "type")), "tool_invocation");
	assert_string_equal(
	    json_string_value(json_object_get(json_object_get(ev, "actor"), "name")),
	    "billing-api");
	assert_string_equal(
	    json_string_value(json_object_get(
	        json_object_get(json_object_get(ev, "action"), "parameters"), "db_password")),
	    "[REDACTED]");
	assert_string_equal(
	    json_string_value(json_object_get(
	        json_object_get(json_object_get(ev, "action"), "parameters"), "region")),
	    "us-east-1");
	assert_int_equal(json_array_size(json_object_get(ev, "delegation_chain")), 3);
	assert_non_null(json_string_value(json_object_get(ev, "timestamp")));
	{
		char inst[32];

		snprintf(inst, sizeof(inst), "test-%d", p.port);
		assert_string_equal(json_string_value(json_object_get(ev, "instance_id")), inst);
	}
	harness_resp_free(&r);
	/* The secret never reached the database in any column. */
	{
		char n[16];

		assert_int_equal(harness_sql_value("t_audit_ingest",
		                                   "SELECT count(*) FROM audit_events WHERE body "
		                                   "LIKE '%hunter2%'",
		                                   n, sizeof(n)),
		                 0);
		assert_string_equal(n, "0");
	}
	assert_int_equal(harness_idpd_stop(&p, SIGTERM, 10000), 0);
}

static void
audit_endpoints_require_the_right_key(void **state)
{
	struct idpd_proc p;
	struct http_resp r;
	char www[128];

	(void)state;
	make_keys();
	assert_int_equal(harness_db_create("t_audit_auth"), 0);
	assert_int_equal(harness_idpd_start(&p, "t_audit_auth", NULL, keys_toml), 0);
	get_as(&p, NULL, "/v1/audit/events", &r);
	assert_int_equal(r.status, 401);
	assert_true(harness_resp_header(&r, "WWW-Authenticate", www, sizeof(www)));
	assert_non_null(strstr(www, "Bearer"));
	harness_resp_free(&r);
	get_as(&p, "idpk_not-a-real-key", "/v1/audit/verify", &r);
	assert_int_equal(r.status, 401);
	assert_true(harness_resp_header(&r, "WWW-Authenticate", www, sizeof(www)));
	assert_non_null(strstr(www, "invalid_token"));
	harness_resp_free(&r);
	/* The reporter may write events but not read them. */
	get_as(&p, reporter_key, "/v1/audit/events", &r);
	assert_int_equal(r.status, 403);
	assert_string_equal(json_string_value(json_object_get(r.json, "code")), "forbidden");
	harness_resp_free(&r);
	assert_int_equal(harness_idpd_stop(&p, SIGTERM, 10000), 0);
}

static void
bad_reports_are_rejected_and_nothing_is_written(void **state)
{
	struct idpd_proc p;
	char n[16], *big;
	size_t len = 80 * 1024;

	(void)state;
	make_keys();
	assert_int_equal(harness_db_create("t_audit_bad"), 0);
	assert_int_equal(harness_idpd_start(&p, "t_audit_bad", NULL, keys_toml), 0);
	assert_int_equal(report(&p, "{\"type\":\"tool_invocation\",\"bogus\":1}", NULL, 0), 422);
	assert_int_equal(report(&p, "{\"type\":\"token.issued\"}", NULL, 0), 422);
	assert_int_equal(
	    report(&p, "{\"type\":\"tool_invocation\",\"severity\":\"high\"}", NULL, 0), 422);
	assert_int_equal(report(&p, "{\"type\":", NULL, 0), 400);
	assert_int_equal(report(&p, "[1,2]", NULL, 0), 400);
	/* detail keys idpd gives meaning to (SIEM lines and alert rules read
	 * them as idpd's): refused, named. */
	{
		static const char *const owned[] = {"reason", "audience", "rule"};
		char url[256], auth[128], body[256], want[64];
		const char *h[] = {auth, "Content-Type: application/json", NULL};
		struct http_resp r;

		bearer(auth, sizeof(auth), reporter_key);
		snprintf(url, sizeof(url), "%s/v1/audit/events", p.base);
		for (size_t i = 0; i < sizeof(owned) / sizeof(owned[0]); i++) {
			snprintf(body, sizeof(body),
			         "{\"type\":\"tool_invocation\",\"action\":{\"tool\":\"t\"},"
			         "\"detail\":{\"%s\":\"x\"}}",
			         owned[i]);
			assert_int_equal(harness_http("POST", url, h, body, strlen(body), &r), 0);
			assert_int_equal(r.status, 422);
			snprintf(want, sizeof(want), "detail.%s: set by idpd, not reported", owned[i]);
			assert_string_equal(json_string_value(json_array_get(
			                        json_object_get(r.json, "errors"), 0)),
			                    want);
			harness_resp_free(&r);
		}
	}
	big = malloc(len + 64);
	snprintf(big, len + 64, "{\"type\":\"tool_invocation\",\"action\":{\"result\":\"");
	memset(big + strlen(big), 'r', len - strlen(big));
	big[len] = '\0';
	strcat(big, "\"}}");
	assert_true(report(&p, big, NULL, 0) == 413 || report(&p, big, NULL, 0) == 422);
	free(big);
	assert_int_equal(harness_sql_value("t_audit_bad",
	                                   "SELECT count(*) FROM audit_events WHERE type = "
	                                   "'tool_invocation'",
	                                   n, sizeof(n)),
	                 0);
	assert_string_equal(n, "0");
	assert_int_equal(harness_idpd_stop(&p, SIGTERM, 10000), 0);
}

/*
 * A query parameter an audit endpoint does not read is a 400 naming it: a
 * report with one is not written, and a misspelt filter is not an answer
 * of every event.
 */
static void
options_an_audit_endpoint_does_not_read_are_refused(void **state)
{
	struct idpd_proc p;
	struct http_resp r;
	char url[256], auth[128], n[16];
	const char *h[] = {auth, "Content-Type: application/json", NULL};

	(void)state;
	make_keys();
	assert_int_equal(harness_db_create("t_audit_opts"), 0);
	assert_int_equal(harness_idpd_start(&p, "t_audit_opts", NULL, keys_toml), 0);

	bearer(auth, sizeof(auth), reporter_key);
	snprintf(url, sizeof(url), "%s/v1/audit/events?dry_run=true", p.base);
	assert_int_equal(harness_http("POST", url, h, tool_event, strlen(tool_event), &r), 0);
	assert_int_equal(r.status, 400);
	assert_string_equal(
	    json_string_value(json_array_get(json_object_get(r.json, "parameters"), 0)), "dry_run");
	harness_resp_free(&r);
	assert_int_equal(harness_sql_value("t_audit_opts",
	                                   "SELECT count(*) FROM audit_events WHERE type = "
	                                   "'tool_invocation'",
	                                   n, sizeof(n)),
	                 0);
	assert_string_equal(n, "0");

	/* Two events of two tasks; "task=" is no filter, and does not answer both. */
	assert_int_equal(report(&p, tool_event, NULL, 0), 201);
	assert_int_equal(report(&p,
	                        "{\"type\":\"tool_invocation\",\"task_id\":\"another-task\","
	                        "\"action\":{\"tool\":\"x\"}}",
	                        NULL, 0),
	                 201);
	get_as(&p, auditor_key, "/v1/audit/events?task=infra-review-q1-2026&type=tool_invocation",
	       &r);
	assert_int_equal(r.status, 400);
	assert_null(json_object_get(r.json, "events"));
	assert_int_equal(json_array_size(json_object_get(r.json, "parameters")), 1);
	assert_non_null(strstr(json_string_value(json_object_get(r.json, "detail")), "\"task\""));
	harness_resp_free(&r);
	get_as(&p, auditor_key, "/v1/audit/verify?from=1", &r);
	assert_int_equal(r.status, 400);
	assert_null(json_object_get(r.json, "ok"));
	harness_resp_free(&r);

	/* The filters it reads still filter. */
	get_as(&p, auditor_key,
	       "/v1/audit/events?task_id=infra-review-q1-2026&type=tool_invocation&order=desc&"
	       "limit=5",
	       &r);
	assert_int_equal(r.status, 200);
	assert_int_equal(json_array_size(json_object_get(r.json, "events")), 1);
	harness_resp_free(&r);
	get_as(&p, auditor_key, "/v1/audit/verify", &r);
	assert_int_equal(r.status, 200);
	harness_resp_free(&r);
	assert_int_equal(harness_idpd_stop(&p, SIGTERM, 10000), 0);
}

static void
query_pages_through_events_in_order_both_ways(void **state)
{
	struct idpd_proc p;
	char ids[7][80], path[512], cursor[64] = "";
	int seen = 0;

	(void)state;
	make_keys();
	assert_int_equal(harness_db_create("t_audit_page"), 0);
	assert_int_equal(harness_idpd_start(&p, "t_audit_page", NULL, keys_toml), 0);
	for (int i = 0; i < 7; i++)
		assert_int_equal(report(&p, tool_event, ids[i], sizeof(ids[i])), 201);
	for (int page = 0; page < 10; page++) {
		struct http_resp r;
		json_t *evs;

		snprintf(path, sizeof(path), "/v1/audit/events?type=tool_invocation&limit=3%s%s",
		         cursor[0] ? "&cursor=" : "", cursor);
		get_as(&p, auditor_key, path, &r);
		assert_int_equal(r.status, 200);
		evs = json_object_get(r.json, "events");
		for (size_t i = 0; i < json_array_size(evs); i++)
			assert_string_equal(
			    json_string_value(json_object_get(json_array_get(evs, i), "id")),
			    ids[seen++]);
		if (json_object_get(r.json, "next_cursor") == NULL) {
			harness_resp_free(&r);
			break;
		}
		snprintf(cursor, sizeof(cursor), "%s",
		         json_string_value(json_object_get(r.json, "next_cursor")));
		harness_resp_free(&r);
	}
	assert_int_equal(seen, 7);
	{
		struct http_resp r;

		get_as(&p, auditor_key, "/v1/audit/events?order=desc&limit=2", &r);
		assert_string_equal(
		    json_string_value(json_object_get(
		        json_array_get(json_object_get(r.json, "events"), 0), "id")),
		    ids[6]);
		harness_resp_free(&r);
		get_as(&p, auditor_key, "/v1/audit/events?limit=0", &r);
		assert_int_equal(r.status, 400);
		harness_resp_free(&r);
		get_as(&p, auditor_key, "/v1/audit/events?cursor=zzz", &r);
		assert_int_equal(r.status, 400);
		harness_resp_free(&r);
		get_as(&p, auditor_key, "/v1/audit/events?since=yesterday", &r);
		assert_int_equal(r.status, 400);
		harness_resp_free(&r);
		/* Well formed, but no such day: PostgreSQL refuses it (SQLSTATE 22008). */
		get_as(&p, auditor_key, "/v1/audit/events?since=2026-02-30T00:00:00Z", &r);
		assert_int_equal(r.status, 400);
		harness_resp_free(&r);
		get_as(&p, auditor_key,
		       "/v1/audit/events?type=tool_invocation&since=2000-01-01T00:00:00Z"
		       "&until=2999-01-01T00:00:00.5%2B01:00",
		       &r);
		assert_int_equal(r.status, 200);
		assert_int_equal(json_array_size(json_object_get(r.json, "events")), 7);
		harness_resp_free(&r);
		get_as(&p, auditor_key, "/v1/audit/events?until=2000-01-01T00:00:00Z", &r);
		assert_int_equal(r.status, 200);
		assert_int_equal(json_array_size(json_object_get(r.json, "events")), 0);
		harness_resp_free(&r);
	}
	assert_int_equal(harness_idpd_stop(&p, SIGTERM, 10000), 0);
}

static void
verify_names_the_row_edited_behind_idpds_back(void **state)
{
	struct idpd_proc p;
	struct http_resp r;
	char victim[80], rowid[32];
	json_int_t before;

	(void)state;
	make_keys();
	assert_int_equal(harness_db_create("t_audit_tamper"), 0);
	assert_int_equal(harness_idpd_start(&p, "t_audit_tamper", NULL, keys_toml), 0);
	for (int i = 0; i < 5; i++)
		assert_int_equal(report(&p, tool_event, i == 2 ? victim : NULL, sizeof(victim)),
		                 201);
	get_as(&p, auditor_key, "/v1/audit/verify", &r);
	assert_int_equal(r.status, 200);
	assert_true(json_is_true(json_object_get(r.json, "ok")));
	/* idpd's own events (key generation at start) share the chain. */
	before = json_integer_value(json_object_get(r.json, "events_verified"));
	assert_true(before >= 5);
	harness_resp_free(&r);

	/* Someone with SQL access rewrites what the agent did. */
	{
		char sql[512];

		snprintf(sql, sizeof(sql),
		         "UPDATE audit_events SET body = replace(body, '247 instances', "
		         "'0 instances') WHERE event_id = '%s'",
		         victim);
		assert_int_equal(harness_sql("t_audit_tamper", sql), 0);
		snprintf(sql, sizeof(sql), "SELECT id FROM audit_events WHERE event_id = '%s'",
		         victim);
		assert_int_equal(harness_sql_value("t_audit_tamper", sql, rowid, sizeof(rowid)), 0);
	}
	get_as(&p, auditor_key, "/v1/audit/verify", &r);
	assert_int_equal(r.status, 200);
	assert_true(json_is_false(json_object_get(r.json, "ok")));
	assert_string_equal(
	    json_string_value(json_object_get(json_object_get(r.json, "broken_at"), "event_id")),
	    victim);
	assert_int_equal(
	    json_integer_value(json_object_get(json_object_get(r.json, "broken_at"), "row")),
	    atoll(rowid));
	/* Everything before the edited row verified; the row itself did not. */
	assert_int_equal(json_integer_value(json_object_get(r.json, "events_verified")),
	                 before - 5 + 2);
	harness_resp_free(&r);
	assert_int_equal(harness_idpd_stop(&p, SIGTERM, 10000), 0);
}

/* GET /v1/audit/verify; returns the answer's broken_at.reason, or "ok" (static storage). */
static const char *
verify_says(const struct idpd_proc *p)
{
	static char said[256];
	struct http_resp r;
	json_t *b;

	get_as(p, auditor_key, "/v1/audit/verify", &r);
	assert_int_equal(r.status, 200);
	b = json_object_get(r.json, "broken_at");
	snprintf(said, sizeof(said), "%s",
	         json_is_true(json_object_get(r.json, "ok"))
	             ? "ok"
	             : json_string_value(json_object_get(b, "reason")));
	harness_resp_free(&r);
	return said;
}

/*
 * The columns queries filter on (ts, severity, outcome too) must agree with
 * the hashed body, and a chain must reach its audit_chains.last_seq: rows
 * deleted from its end are a break, not a shorter log.
 */
static void
verify_sees_edited_columns_and_a_missing_tail(void **state)
{
	static const char *const edits[] = {
	    "ts = '2000-01-01T00:00:00Z'",
	    "severity = 1",
	    "outcome = 'failure'",
	};
	struct idpd_proc p;
	char victim[80], sql[512];

	(void)state;
	make_keys();
	assert_int_equal(harness_db_create("t_audit_columns"), 0);
	assert_int_equal(harness_idpd_start(&p, "t_audit_columns", NULL, keys_toml), 0);
	for (int i = 0; i < 3; i++)
		assert_int_equal(report(&p, tool_event, victim, sizeof(victim)), 201);
	assert_string_equal(verify_says(&p), "ok");
	snprintf(sql, sizeof(sql),
	         "CREATE TABLE saved AS SELECT ts, severity, outcome FROM audit_events WHERE "
	         "event_id = '%s'",
	         victim);
	assert_int_equal(harness_sql("t_audit_columns", sql), 0);
	for (size_t i = 0; i < sizeof(edits) / sizeof(edits[0]); i++) {
		snprintf(sql, sizeof(sql), "UPDATE audit_events SET %s WHERE event_id = '%s'",
		         edits[i], victim);
		assert_int_equal(harness_sql("t_audit_columns", sql), 0);
		assert_string_equal(verify_says(&p),
		                    "an indexed column disagrees with the hashed body");
		/* Put it back. */
		snprintf(sql, sizeof(sql),
		         "UPDATE audit_events e SET ts = s.ts, severity = s.severity, outcome = "
		         "s.outcome FROM saved s WHERE e.event_id = '%s'",
		         victim);
		assert_int_equal(harness_sql("t_audit_columns", sql), 0);
		assert_string_equal(verify_says(&p), "ok");
	}
	/* The chain's newest row deleted, idpd stopped so that nothing follows it. */
	assert_int_equal(harness_idpd_stop(&p, SIGTERM, 10000), 0);
	assert_int_equal(
	    harness_sql("t_audit_columns",
	                "DELETE FROM audit_events WHERE id = (SELECT max(id) FROM audit_events)"),
	    0);
	assert_int_equal(harness_idpd_start(&p, "t_audit_columns", NULL, keys_toml), 0);
	assert_string_equal(verify_says(&p), "rows are missing at the end of the chain "
	                                     "(audit_chains.last_seq is beyond its last row)");
	/* The same with the chain's audit_chains row deleted too: verify cannot
	 * tell that from a chain a version before 0011 is still writing during
	 * an upgrade, so it does not call it broken, but it names it. */
	assert_int_equal(harness_idpd_stop(&p, SIGTERM, 10000), 0);
	assert_int_equal(harness_sql("t_audit_columns", "DELETE FROM audit_chains"), 0);
	assert_int_equal(harness_idpd_start(&p, "t_audit_columns", NULL, keys_toml), 0);
	{
		struct http_resp r;
		json_t *names;

		get_as(&p, auditor_key, "/v1/audit/verify", &r);
		assert_int_equal(r.status, 200);
		assert_true(json_is_true(json_object_get(r.json, "ok")));
		names = json_object_get(r.json, "unanchored_chains");
		assert_true(json_array_size(names) >= 1);
		assert_int_equal(json_integer_value(json_object_get(r.json, "unanchored_count")),
		                 (json_int_t)json_array_size(names));
		harness_resp_free(&r);
	}
	assert_int_equal(harness_idpd_stop(&p, SIGTERM, 10000), 0);
}

/*
 * Every walk of the chain is itself recorded (audit.verified): who walked
 * it, whether it held, and where it broke.
 */
static void
verification_is_audited(void **state)
{
	struct idpd_proc p;
	char victim[80], sql[512], v[512];

	(void)state;
	make_keys();
	assert_int_equal(harness_db_create("t_audit_verified"), 0);
	assert_int_equal(harness_idpd_start(&p, "t_audit_verified", NULL, keys_toml), 0);
	assert_int_equal(report(&p, tool_event, victim, sizeof(victim)), 201);
	assert_string_equal(verify_says(&p), "ok");
	snprintf(sql, sizeof(sql), "UPDATE audit_events SET severity = 1 WHERE event_id = '%s'",
	         victim);
	assert_int_equal(harness_sql("t_audit_verified", sql), 0);
	assert_string_equal(verify_says(&p), "an indexed column disagrees with the hashed body");
	/* Stopping flushes the queue. */
	assert_int_equal(harness_idpd_stop(&p, SIGTERM, 10000), 0);
	assert_int_equal(
	    harness_sql_value(
	        "t_audit_verified",
	        "SELECT string_agg(concat_ws(' ', outcome, severity, b->'actor'->>'kind', "
	        "b->'actor'->>'name', b->'detail'->>'result', b->'detail'->'broken_at'->>'event_id', "
	        "b->'detail'->'broken_at'->>'reason'), ' | ' ORDER BY seq) FROM (SELECT outcome, "
	        "severity, seq, body::jsonb AS b FROM audit_events WHERE type = 'audit.verified') x",
	        v, sizeof(v)),
	    0);
	snprintf(sql, sizeof(sql),
	         "success 3 operator siem-reader ok | failure 8 operator siem-reader broken %s an "
	         "indexed column disagrees with the hashed body",
	         victim);
	assert_string_equal(v, sql);
}

/* Run a migration file's SQL against db (as an operator re-running it would). */
static void
run_migration(const char *db, const char *file)
{
	char path[1024], *mig;
	FILE *f;

	snprintf(path, sizeof(path), "%s/migrations/%s", getenv("IDPD_TEST_TOP"), file);
	f = fopen(path, "r");
	assert_non_null(f);
	mig = calloc(1, 65536);
	assert_non_null(mig);
	assert_true(fread(mig, 1, 65535, f) > 0);
	fclose(f);
	assert_int_equal(harness_sql(db, mig), 0);
	free(mig);
}

/*
 * A chain must begin where retention says it ends (0016): at seq 1 after
 * the genesis hash, or just after the last row retention removed, with
 * that row's hash.  Rows deleted from the start of a chain, or a whole
 * chain deleted, behind idpd's back are a break; a prefix retention
 * removed is not.
 */
static void
verify_sees_rows_missing_at_the_start_of_a_chain(void **state)
{
	const char *db = "t_audit_head";
	struct idpd_proc p;
	char chain[320], sql[2048], v[128];

	(void)state;
	make_keys();
	assert_int_equal(harness_db_create(db), 0);
	assert_int_equal(harness_idpd_start(&p, db, NULL, keys_toml), 0);
	for (int i = 0; i < 6; i++)
		assert_int_equal(report(&p, tool_event, NULL, 0), 201);
	assert_string_equal(verify_says(&p), "ok");
	assert_int_equal(harness_sql_value(db,
	                                   "SELECT writer_id FROM audit_events ORDER BY id DESC "
	                                   "LIMIT 1",
	                                   chain, sizeof(chain)),
	                 0);

	/* The chain's first row deleted behind idpd's back. */
	assert_int_equal(harness_sql(db, "CREATE TABLE saved AS SELECT * FROM audit_events"), 0);
	snprintf(sql, sizeof(sql), "DELETE FROM audit_events WHERE writer_id = '%s' AND seq = 1",
	         chain);
	assert_int_equal(harness_sql(db, sql), 0);
	assert_string_equal(verify_says(&p), "rows are missing at the start of the chain (after "
	                                     "the last row retention removed)");

	/* As retention removes it: the anchor names seq 1 and its hash. */
	snprintf(sql, sizeof(sql),
	         "UPDATE audit_chains SET pruned_seq = 1, pruned_hash = (SELECT hash FROM saved "
	         "WHERE writer_id = '%s' AND seq = 1) WHERE writer_id = '%s'",
	         chain, chain);
	assert_int_equal(harness_sql(db, sql), 0);
	assert_string_equal(verify_says(&p), "ok");
	/* An anchor that does not match the next row's prev_hash. */
	snprintf(sql, sizeof(sql),
	         "UPDATE audit_chains SET pruned_hash = decode(repeat('ab', 32), 'hex') "
	         "WHERE writer_id = '%s'",
	         chain);
	assert_int_equal(harness_sql(db, sql), 0);
	assert_string_equal(verify_says(&p), "prev_hash does not match the chain's retention "
	                                     "anchor");
	/* A row put back below the anchor. */
	snprintf(sql, sizeof(sql),
	         "UPDATE audit_chains SET pruned_hash = (SELECT hash FROM saved WHERE writer_id "
	         "= '%s' AND seq = 1) WHERE writer_id = '%s'; INSERT INTO audit_events SELECT * "
	         "FROM saved WHERE writer_id = '%s' AND seq = 1",
	         chain, chain, chain);
	assert_int_equal(harness_sql(db, sql), 0);
	assert_string_equal(verify_says(&p), "the row is older than the chain's retention anchor");
	snprintf(sql, sizeof(sql),
	         "UPDATE audit_chains SET pruned_seq = 0, pruned_hash = NULL "
	         "WHERE writer_id = '%s'",
	         chain);
	assert_int_equal(harness_sql(db, sql), 0);
	assert_string_equal(verify_says(&p), "ok");

	/* Before 0016 nothing recorded an anchor: the migration takes the first
	 * remaining row of a pruned chain as one, and an emptied chain as
	 * pruned to its end. */
	assert_int_equal(harness_idpd_stop(&p, SIGTERM, 10000), 0);
	snprintf(sql, sizeof(sql), "DELETE FROM audit_events WHERE writer_id = '%s' AND seq <= 2",
	         chain);
	assert_int_equal(harness_sql(db, sql), 0);
	run_migration(db, "0016_audit_chain_anchor.sql");
	snprintf(sql, sizeof(sql), "SELECT pruned_seq FROM audit_chains WHERE writer_id = '%s'",
	         chain);
	assert_int_equal(harness_sql_value(db, sql, v, sizeof(v)), 0);
	assert_string_equal(v, "2");
	assert_int_equal(harness_idpd_start(&p, db, NULL, keys_toml), 0);
	assert_string_equal(verify_says(&p), "ok");

	/* A whole chain deleted, its audit_chains row left: a break naming it. */
	snprintf(sql, sizeof(sql), "DELETE FROM audit_events WHERE writer_id = '%s'", chain);
	assert_int_equal(harness_sql(db, sql), 0);
	{
		struct http_resp r;
		json_t *b;

		get_as(&p, auditor_key, "/v1/audit/verify", &r);
		assert_int_equal(r.status, 200);
		assert_true(json_is_false(json_object_get(r.json, "ok")));
		b = json_object_get(r.json, "broken_at");
		assert_string_equal(json_string_value(json_object_get(b, "chain")), chain);
		assert_int_equal(json_integer_value(json_object_get(b, "seq")), 3);
		assert_string_equal(json_string_value(json_object_get(b, "reason")),
		                    "every row of the chain is missing (audit_chains.last_seq is "
		                    "beyond what retention removed)");
		harness_resp_free(&r);
	}
	/* The same chain emptied by a migration's reading (pre-0016 retention). */
	snprintf(sql, sizeof(sql), "UPDATE audit_chains SET pruned_seq = 0 WHERE writer_id = '%s'",
	         chain);
	assert_int_equal(harness_sql(db, sql), 0);
	run_migration(db, "0016_audit_chain_anchor.sql");
	assert_string_equal(verify_says(&p), "ok");
	assert_int_equal(harness_idpd_stop(&p, SIGTERM, 10000), 0);
}

struct held_report {
	const struct idpd_proc *p;
	long status;
};

static void *
held_report_main(void *arg)
{
	struct held_report *h = arg;

	h->status = report(h->p, tool_event, NULL, 0);
	return NULL;
}

/*
 * A request held for its audit commit past server.shutdown_timeout is still
 * answered (the HTTP layer waits for held requests): the shutdown log must
 * not count it as cut off.
 */
static void
a_request_answered_after_the_drain_deadline_is_not_counted_as_cut_off(void **state)
{
	const char *db = "t_audit_drain";
	struct idpd_proc p;
	struct held_report h;
	pthread_t th;
	char url[512];
	PGconn *pg;
	PGresult *r;
	struct timespec ts = {0, 50 * 1000 * 1000};

	(void)state;
	make_keys();
	assert_int_equal(harness_db_create(db), 0);
	assert_int_equal(harness_idpd_start(&p, db, "shutdown_timeout = \"200ms\"\n", keys_toml),
	                 0);
	assert_int_equal(report(&p, tool_event, NULL, 0), 201);
	/* The writer's commit waits on this lock. */
	harness_db_url(db, url, sizeof(url));
	pg = PQconnectdb(url);
	assert_int_equal(PQstatus(pg), CONNECTION_OK);
	r = PQexec(pg, "BEGIN; LOCK TABLE audit_chains IN EXCLUSIVE MODE");
	assert_int_equal(PQresultStatus(r), PGRES_COMMAND_OK);
	PQclear(r);
	h.p = &p;
	h.status = 0;
	pthread_create(&th, NULL, held_report_main, &h);
	/* Held: in flight with the metrics request that sees it. */
	for (int i = 0; i < 100; i++) {
		struct http_resp m;
		const char *at;

		get_as(&p, NULL, "/metrics", &m);
		at = strstr(m.body, "\nidpd_http_in_flight ");
		if (at != NULL && atoi(at + strlen("\nidpd_http_in_flight ")) >= 2) {
			harness_resp_free(&m);
			break;
		}
		harness_resp_free(&m);
		nanosleep(&ts, NULL);
	}
	assert_int_equal(kill(p.pid, SIGTERM), 0);
	/* Past the 200 ms drain deadline, within the 1 s audit.timeout. */
	ts.tv_nsec = 350 * 1000 * 1000;
	nanosleep(&ts, NULL);
	r = PQexec(pg, "COMMIT");
	PQclear(r);
	PQfinish(pg);
	pthread_join(th, NULL);
	if (h.status != 201)
		harness_idpd_dump_log(&p);
	assert_int_equal(h.status, 201);
	assert_int_equal(harness_idpd_stop(&p, 0, 10000), 0);
	assert_true(harness_log_contains(&p, "SIGTERM: draining"));
	assert_false(harness_log_contains(&p, "without their answer"));
}

/*
 * The writer keeps audit_chains itself (no trigger since 0011), in the same
 * transaction as its rows; the binary COPY stores the body's own time,
 * severity and outcome; event ids are version-7 UUIDs that grow with seq.
 * Running 0011 again over the data changes nothing and the chain verifies.
 */
static void
writer_rows_match_their_bodies_and_keep_audit_chains(void **state)
{
	const char *db = "t_audit_rows";
	struct idpd_proc p;
	struct http_resp r;
	char v[64];
	long n;

	(void)state;
	make_keys();
	assert_int_equal(harness_db_create(db), 0);
	assert_int_equal(harness_idpd_start(&p, db, NULL, keys_toml), 0);
	for (int i = 0; i < 6; i++)
		assert_int_equal(report(&p, tool_event, NULL, 0), 201);

	assert_int_equal(harness_sql_value(db,
	                                   "SELECT count(*) FROM pg_trigger WHERE tgrelid = "
	                                   "'audit_events'::regclass AND NOT tgisinternal",
	                                   v, sizeof(v)),
	                 0);
	assert_string_equal(v, "0");
	assert_int_equal(harness_sql_value(db,
	                                   "SELECT count(*) FROM (SELECT writer_id, max(seq) AS m "
	                                   "FROM audit_events GROUP BY writer_id) e LEFT JOIN "
	                                   "audit_chains c USING (writer_id) "
	                                   "WHERE c.last_seq IS DISTINCT FROM e.m",
	                                   v, sizeof(v)),
	                 0);
	assert_string_equal(v, "0");
	assert_int_equal(harness_sql_value(db,
	                                   "SELECT count(*) FROM audit_events WHERE "
	                                   "ts <> (body::json->>'timestamp')::timestamptz OR "
	                                   "severity <> (body::json->>'severity')::int OR "
	                                   "outcome IS DISTINCT FROM body::json->>'outcome'",
	                                   v, sizeof(v)),
	                 0);
	assert_string_equal(v, "0");
	assert_int_equal(
	    harness_sql_value(db,
	                      "SELECT count(*) FROM audit_events WHERE event_id !~ "
	                      "'^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-"
	                      "[0-9a-f]{12}$'",
	                      v, sizeof(v)),
	    0);
	assert_string_equal(v, "0");
	assert_int_equal(
	    harness_sql_value(db,
	                      "SELECT count(*) FROM (SELECT event_id >= lead(event_id) "
	                      "OVER (PARTITION BY writer_id ORDER BY seq) AS down "
	                      "FROM audit_events) s WHERE down",
	                      v, sizeof(v)),
	    0);
	assert_string_equal(v, "0");
	assert_int_equal(harness_sql_value(db, "SELECT count(*) FROM audit_events", v, sizeof(v)),
	                 0);
	n = atol(v);
	assert_true(n >= 6);

	/* 0011 once more, over the rows written: idempotent, nothing lost. */
	run_migration(db, "0011_audit_rows.sql");
	assert_int_equal(report(&p, tool_event, NULL, 0), 201);
	get_as(&p, auditor_key, "/v1/audit/verify", &r);
	assert_int_equal(r.status, 200);
	assert_true(json_is_true(json_object_get(r.json, "ok")));
	assert_int_equal(json_integer_value(json_object_get(r.json, "events_verified")), n + 1);
	harness_resp_free(&r);
	assert_int_equal(harness_idpd_stop(&p, SIGTERM, 10000), 0);
}

/* The plan of sql with sequential scans disabled, one line per plan row. */
static void
plan_of(const char *db, const char *sql, char *out, size_t len)
{
	char url[512], q[2048];
	PGconn *pg;
	PGresult *r;
	size_t o = 0;

	harness_db_url(db, url, sizeof(url));
	pg = PQconnectdb(url);
	assert_int_equal(PQstatus(pg), CONNECTION_OK);
	r = PQexec(pg, "SET enable_seqscan = off");
	assert_int_equal(PQresultStatus(r), PGRES_COMMAND_OK);
	PQclear(r);
	snprintf(q, sizeof(q), "EXPLAIN (COSTS OFF) %s", sql);
	r = PQexec(pg, q);
	if (PQresultStatus(r) != PGRES_TUPLES_OK)
		fail_msg("EXPLAIN %s: %s", sql, PQerrorMessage(pg));
	out[0] = '\0';
	for (int i = 0; i < PQntuples(r) && o < len; i++)
		o += (size_t)snprintf(out + o, len - o, "%s\n", PQgetvalue(r, i, 0));
	PQclear(r);
	PQfinish(pg);
}

/*
 * Every query idpd runs on audit_events has an index to use, with the
 * indexes 0011 left: with sequential scans disabled PostgreSQL still picks
 * a sequential scan when no index fits, so a missing index shows up here.
 * The table holds enough rows, in time order, for the planner to prefer
 * the selective index.
 */
static void
audit_queries_have_an_index_path(void **state)
{
	static const struct {
		const char *sql;
		const char *index;
	} q[] = {
	    /* GET /v1/tasks/{id}/timeline */
	    {"SELECT body FROM audit_events WHERE task_id = 'task-7' ORDER BY ts, id LIMIT 1000",
	     "audit_events_task"},
	    /* GET /v1/audit/events by agent, human, type, time; a page after a cursor */
	    {"SELECT id, body FROM audit_events WHERE true AND agent_id = 'agent-7' "
	     "ORDER BY id ASC LIMIT 101",
	     "audit_events_agent"},
	    {"SELECT id, body FROM audit_events WHERE true AND human_principal = 'h7@example.com' "
	     "ORDER BY id DESC LIMIT 101",
	     "audit_events_human"},
	    {"SELECT id, body FROM audit_events WHERE true AND type = 'type-7' "
	     "ORDER BY id ASC LIMIT 101",
	     "audit_events_type"},
	    {"SELECT id, body FROM audit_events WHERE true AND "
	     "ts >= '2026-01-05T00:00:00Z'::timestamptz AND ts < "
	     "'2026-01-05T01:00:00Z'::timestamptz "
	     "ORDER BY id ASC LIMIT 101",
	     "audit_events_ts_brin"},
	    {"SELECT id, body FROM audit_events WHERE true AND id > 19000::bigint "
	     "ORDER BY id ASC LIMIT 101",
	     "audit_events_pkey"},
	    /* an event by its id */
	    {"SELECT id FROM audit_events WHERE event_id = 'ev-77'", "audit_events_event_id"},
	    /* GET /v1/audit/verify, one page */
	    {"SELECT id, writer_id, seq, body FROM audit_events WHERE (writer_id, seq) > "
	     "('w-1', 100::bigint) ORDER BY writer_id, seq LIMIT 2000",
	     "audit_events_writer_id_seq_key"},
	    /* a sink shipping one chain */
	    {"SELECT seq, body FROM audit_events WHERE writer_id = 'w-1' AND seq > 100::bigint "
	     "ORDER BY seq LIMIT 500",
	     "audit_events_writer_id_seq_key"},
	    /* retention: the cut-off per chain, then a batch of a chain's prefix */
	    {"SELECT writer_id, max(seq) FROM audit_events "
	     "WHERE ts < '2026-01-01T02:00:00Z'::timestamptz GROUP BY writer_id",
	     "audit_events_ts_brin"},
	    {"DELETE FROM audit_events WHERE id IN (SELECT id FROM audit_events "
	     "WHERE writer_id = 'w-1' AND seq <= 50::bigint ORDER BY seq LIMIT 500)",
	     "audit_events_writer_id_seq_key"},
	};
	const char *db = "t_audit_plans";
	char plan[8192];

	(void)state;
	assert_int_equal(harness_db_create(db), 0);
	/* 20000 events, one a minute from 2026-01-01, over 4 chains. */
	assert_int_equal(
	    harness_sql(db,
	                "INSERT INTO audit_events (event_id, writer_id, seq, ts, type, agent_id, "
	                "human_principal, task_id, severity, outcome, body, prev_hash, hash) "
	                "SELECT 'ev-' || i, 'w-' || (i % 4), i / 4 + 1, "
	                "'2026-01-01T00:00:00Z'::timestamptz + i * interval '1 minute', "
	                "'type-' || (i % 2000), 'agent-' || (i % 200), 'h' || (i % 300) || "
	                "'@example.com', 'task-' || (i % 500), 2, 'success', '{}', "
	                "decode(repeat('00', 32), 'hex'), decode(repeat('00', 32), 'hex') "
	                "FROM generate_series(0, 19999) AS i"),
	    0);
	assert_int_equal(harness_sql(db, "VACUUM ANALYZE audit_events"), 0);
	for (size_t i = 0; i < sizeof(q) / sizeof(q[0]); i++) {
		plan_of(db, q[i].sql, plan, sizeof(plan));
		if (strstr(plan, "Seq Scan on audit_events") != NULL ||
		    strstr(plan, q[i].index) == NULL)
			fail_msg("%s\nexpected %s, got:\n%s", q[i].sql, q[i].index, plan);
	}
	/* The BRIN index asks autovacuum for nothing per filled range (0012):
	 * the VACUUM above summarized every full range, only the table's
	 * partial last one (if any) is left. */
	assert_int_equal(harness_sql_value(db,
	                                   "SELECT coalesce(array_to_string(reloptions, ','), '') "
	                                   "FROM pg_class WHERE relname = 'audit_events_ts_brin'",
	                                   plan, sizeof(plan)),
	                 0);
	assert_null(strstr(plan, "autosummarize=on"));
	assert_int_equal(
	    harness_sql_value(db, "SELECT brin_summarize_new_values('audit_events_ts_brin')", plan,
	                      sizeof(plan)),
	    0);
	assert_true(atoi(plan) <= 1);
}

static struct idpd_proc outage;

static int
outage_teardown(void **state)
{
	(void)state;
	harness_pg_start();
	if (outage.pid > 0)
		harness_idpd_stop(&outage, SIGKILL, 2000);
	return 0;
}

static void
sync_emit_fails_closed_while_postgres_is_down_then_resumes(void **state)
{
	char before[80], after[80], n[16], sql[256];
	long st = 0;

	(void)state;
	make_keys();
	assert_int_equal(harness_db_create("t_audit_outage"), 0);
	assert_int_equal(harness_idpd_start(&outage, "t_audit_outage", NULL, keys_toml), 0);
	assert_int_equal(report(&outage, tool_event, before, sizeof(before)), 201);
	assert_int_equal(harness_pg_stop("immediate"), 0);
	/* audit.timeout is 1 s here: the emitter gets 503, never a false 201.
	 * And since it was told "not recorded", the event must not turn up
	 * later either: the writer drops it before writing again. */
	st = report(&outage,
	            "{\"type\":\"tool_invocation\",\"task_id\":\"task-given-up\","
	            "\"action\":{\"tool\":\"x\"}}",
	            NULL, 0);
	assert_int_equal(st, 503);
	assert_int_equal(harness_pg_start(), 0);
	for (int i = 0; i < 100; i++) {
		st = report(&outage, tool_event, after, sizeof(after));
		if (st == 201)
			break;
		struct timespec ts = {0, 100 * 1000 * 1000};
		nanosleep(&ts, NULL);
	}
	assert_int_equal(st, 201);
	snprintf(sql, sizeof(sql),
	         "SELECT count(*) FROM audit_events WHERE event_id IN ('%s', '%s')", before, after);
	assert_int_equal(harness_sql_value("t_audit_outage", sql, n, sizeof(n)), 0);
	assert_string_equal(n, "2");
	assert_int_equal(harness_sql_value("t_audit_outage",
	                                   "SELECT count(*) FROM audit_events WHERE task_id = "
	                                   "'task-given-up'",
	                                   n, sizeof(n)),
	                 0);
	assert_string_equal(n, "0");
	assert_int_equal(harness_idpd_stop(&outage, SIGTERM, 10000), 0);
}

/* ---- kill -9 under load ---- */

#define LOADERS 8
#define PER_LOADER 400

struct loader {
	const struct idpd_proc *p;
	char (*acked)[40];
	int n_acked;
};

static void *
load(void *arg)
{
	struct loader *l = arg;

	for (int i = 0; i < PER_LOADER; i++) {
		char id[80];

		if (report(l->p, tool_event, id, sizeof(id)) != 201)
			break; /* idpd is gone */
		snprintf(l->acked[l->n_acked++], 40, "%.36s", id);
	}
	return NULL;
}

static void
kill_9_under_load_loses_no_acknowledged_event(void **state)
{
	struct idpd_proc p;
	struct loader ls[LOADERS];
	pthread_t th[LOADERS];
	struct http_resp r;
	int total = 0;

	(void)state;
	make_keys();
	assert_int_equal(harness_db_create("t_audit_kill"), 0);
	assert_int_equal(harness_idpd_start(&p, "t_audit_kill", NULL, keys_toml), 0);
	for (int i = 0; i < LOADERS; i++) {
		ls[i].p = &p;
		ls[i].acked = calloc(PER_LOADER, 40);
		ls[i].n_acked = 0;
		pthread_create(&th[i], NULL, load, &ls[i]);
	}
	{
		struct timespec ts = {0, 700 * 1000 * 1000};

		nanosleep(&ts, NULL);
	}
	assert_int_equal(harness_idpd_stop(&p, SIGKILL, 5000), 128 + SIGKILL);
	for (int i = 0; i < LOADERS; i++) {
		pthread_join(th[i], NULL);
		total += ls[i].n_acked;
	}
	assert_true(total > 0);
	for (int i = 0; i < LOADERS; i++) {
		for (int j = 0; j < ls[i].n_acked; j++) {
			char sql[256], n[16];

			snprintf(sql, sizeof(sql),
			         "SELECT count(*) FROM audit_events WHERE event_id = '%s'",
			         ls[i].acked[j]);
			assert_int_equal(harness_sql_value("t_audit_kill", sql, n, sizeof(n)), 0);
			assert_string_equal(n, "1");
		}
		free(ls[i].acked);
	}
	/* A new idpd on the same database finds an intact chain. */
	assert_int_equal(harness_idpd_start(&p, "t_audit_kill", NULL, keys_toml), 0);
	get_as(&p, auditor_key, "/v1/audit/verify", &r);
	assert_true(json_is_true(json_object_get(r.json, "ok")));
	assert_true(json_integer_value(json_object_get(r.json, "events_verified")) >= total);
	harness_resp_free(&r);
	assert_int_equal(harness_idpd_stop(&p, SIGTERM, 10000), 0);
}

/* Poll SQL (5 s at most) until it answers want. */
static void
wait_for_value(const char *db, const char *sql, const char *want)
{
	char v[64] = "";

	for (int i = 0; i < 100; i++) {
		struct timespec ts = {0, 50 * 1000 * 1000};

		assert_int_equal(harness_sql_value(db, sql, v, sizeof(v)), 0);
		if (strcmp(v, want) == 0)
			return;
		nanosleep(&ts, NULL);
	}
	fail_msg("%s: %s, not %s", sql, v, want);
}

static const char *refused_event = "{\"type\":\"tool_invocation\",\"agent_id\":\"agent-x\","
                                   "\"task_id\":\"task-refused-http\",\"action\":{\"tool\":\"x\"}}";

/*
 * An event PostgreSQL refuses for good (here a CHECK an operator added) is
 * dropped from the writer's batch instead of being retried for ever: its
 * request answers 503 as when the audit log is down, the loss is counted
 * and recorded by audit.event_refused, and the events after it are written
 * and the chain verifies.  The log names the event and the SQLSTATE, never
 * its content.
 */
static void
an_event_postgresql_refuses_fails_its_request_and_is_recorded(void **state)
{
	const char *db = "t_audit_refused";
	struct idpd_proc p;
	struct http_resp m;
	char id[80] = "", sql[256];

	(void)state;
	make_keys();
	assert_int_equal(harness_db_create(db), 0);
	assert_int_equal(harness_idpd_start(&p, db, NULL, keys_toml), 0);
	assert_int_equal(harness_sql(db, "ALTER TABLE audit_events ADD CONSTRAINT no_refused CHECK "
	                                 "(task_id IS DISTINCT FROM 'task-refused-http')"),
	                 0);
	assert_int_equal(report(&p, refused_event, NULL, 0), 503);
	assert_int_equal(report(&p, tool_event, id, sizeof(id)), 201);
	snprintf(sql, sizeof(sql), "SELECT count(*) FROM audit_events WHERE event_id = '%s'", id);
	wait_for_value(db, sql, "1");
	wait_for_value(db,
	               "SELECT count(*) FROM audit_events WHERE type = 'audit.event_refused' AND "
	               "body::jsonb->'detail'->>'sqlstate' = '23514' AND "
	               "body::jsonb->'detail'->>'refused_type' = 'tool_invocation'",
	               "1");
	wait_for_value(db, "SELECT count(*) FROM audit_events WHERE task_id = 'task-refused-http'",
	               "0");
	get_as(&p, NULL, "/metrics", &m);
	assert_non_null(strstr(m.body, "idpd_audit_events_total{state=\"dropped\"} 1\n"));
	harness_resp_free(&m);
	assert_string_equal(verify_says(&p), "ok");
	assert_int_equal(harness_idpd_stop(&p, SIGTERM, 10000), 0);
	assert_true(harness_log_contains(&p, "SQLSTATE 23514, constraint no_refused: dropped"));
	assert_false(harness_log_contains(&p, "task-refused-http"));
}

/*
 * With durability "async" the refused event was acknowledged (201) at
 * enqueue; before, the writer retried it for ever and nothing after it was
 * ever written.
 */
static void
an_async_event_postgresql_refuses_does_not_stop_the_log(void **state)
{
	const char *db = "t_audit_refused_async";
	struct idpd_proc p;
	char toml[1200], id[80] = "", sql[256];
	const char *tail;

	(void)state;
	make_keys();
	tail = strstr(keys_toml, "[[api_keys]]");
	assert_non_null(tail);
	snprintf(toml, sizeof(toml), "[audit]\ntimeout = \"1s\"\ndurability = \"async\"\n%s", tail);
	assert_int_equal(harness_db_create(db), 0);
	assert_int_equal(harness_idpd_start(&p, db, NULL, toml), 0);
	assert_int_equal(harness_sql(db, "ALTER TABLE audit_events ADD CONSTRAINT no_refused CHECK "
	                                 "(task_id IS DISTINCT FROM 'task-refused-http')"),
	                 0);
	assert_int_equal(report(&p, refused_event, NULL, 0), 201);
	assert_int_equal(report(&p, tool_event, id, sizeof(id)), 201);
	snprintf(sql, sizeof(sql), "SELECT count(*) FROM audit_events WHERE event_id = '%s'", id);
	wait_for_value(db, sql, "1");
	wait_for_value(db, "SELECT count(*) FROM audit_events WHERE type = 'audit.event_refused'",
	               "1");
	assert_string_equal(verify_says(&p), "ok");
	assert_int_equal(harness_idpd_stop(&p, SIGTERM, 10000), 0);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(reported_event_is_stored_redacted_and_attributed),
	    cmocka_unit_test(audit_endpoints_require_the_right_key),
	    cmocka_unit_test(bad_reports_are_rejected_and_nothing_is_written),
	    cmocka_unit_test(options_an_audit_endpoint_does_not_read_are_refused),
	    cmocka_unit_test(query_pages_through_events_in_order_both_ways),
	    cmocka_unit_test(verify_names_the_row_edited_behind_idpds_back),
	    cmocka_unit_test(verify_sees_edited_columns_and_a_missing_tail),
	    cmocka_unit_test(verify_sees_rows_missing_at_the_start_of_a_chain),
	    cmocka_unit_test(verification_is_audited),
	    cmocka_unit_test(a_request_answered_after_the_drain_deadline_is_not_counted_as_cut_off),
	    cmocka_unit_test(writer_rows_match_their_bodies_and_keep_audit_chains),
	    cmocka_unit_test(an_event_postgresql_refuses_fails_its_request_and_is_recorded),
	    cmocka_unit_test(an_async_event_postgresql_refuses_does_not_stop_the_log),
	    cmocka_unit_test(audit_queries_have_an_index_path),
	    cmocka_unit_test_teardown(sync_emit_fails_closed_while_postgres_is_down_then_resumes,
	                              outage_teardown),
	    cmocka_unit_test(kill_9_under_load_loses_no_acknowledged_event),
	};
	return cmocka_run_group_tests_name("audit", tests, NULL, NULL);
}
