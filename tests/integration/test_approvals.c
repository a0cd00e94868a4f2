/*
 * Integration tests of approvals through idpd's HTTP API and a real
 * PostgreSQL.  alice starts a task for planning-agent (owned by bob), whose
 * delegations of read-class scopes need a human's approval.  A delegation
 * request leaves a pending approval (202 with its id and Location); alice,
 * bob or an operator with the approver role decides it; the agent retries
 * with approval_id and gets its token once.  A replay, an approval used for
 * another scope or another delegate, a pending, denied or expired one, and
 * an unknown id are refused with their reason, audited, and issue nothing.
 * Who may read, list and decide is checked for every kind of caller.
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

#include "world.h"

/* alice's task for planning-agent (owned by bob), which needs approval for reads. */
struct setting {
	struct world w;
	char planner[4096], cloud[4096];
	char task_id[80];
	char *root_token;
	char *alice, *bob, *mallory;
};

/* Static, so that teardown can still stop the setting of a failed test. */
static struct setting the_setting;
static struct setting *current;

static void
register_agent(struct world *w, const char *id, const char *owner, const char *caps,
               const char *delegate_to, const char *approvals)
{
	const struct world_agent a = {.id = id,
	                              .type = "worker",
	                              .owner = owner,
	                              .caps = caps,
	                              .delegate_to = delegate_to,
	                              .max_depth = 2,
	                              .approvals = approvals};

	world_agent(w, &a);
}

/* The setting on database db, with more appended to the partners' [[idp]] table (may be ""). */
static void
setting_start_with(struct setting *s, const char *db, const char *partners_more)
{
	char extra[1024];
	const struct world_opts o = {.max_ttl = "2h", .extra_toml = extra};

	snprintf(extra, sizeof(extra), "%s%s", world_partner_toml(), partners_more);

	memset(s, 0, sizeof(*s));
	world_start_opts(&s->w, db, &o);
	current = s;
	register_agent(&s->w, "cloud-agent", "carol@example.com", "[\"cloud:Describe*\"]", "[]",
	               "[]");
	register_agent(&s->w, "cloud-agent-2", "carol@example.com", "[\"cloud:Describe*\"]", "[]",
	               "[]");
	register_agent(&s->w, "planning-agent", "Bob@Example.com",
	               "[\"cloud:Describe*\",\"reports:write\"]",
	               "[\"cloud-agent\",\"cloud-agent-2\"]", "[\"read\"]");
	world_credential(&s->w, "planning-agent", s->planner, sizeof(s->planner));
	world_credential(&s->w, "cloud-agent", s->cloud, sizeof(s->cloud));
	s->alice = world_human_token("alice@example.com");
	s->bob = world_human_token("bob@example.com");
	s->mallory = world_human_token("mallory@example.com");
	world_task_body(&s->w, s->alice,
	                "{\"root_agent\":\"planning-agent\",\"scope\":[\"cloud:DescribeInstances\","
	                "\"cloud:DescribeVolumes\",\"reports:write\"],\"description\":\"quarterly "
	                "review\",\"ttl\":\"1h\"}",
	                s->task_id, NULL, &s->root_token);
}

static void
setting_start(struct setting *s, const char *db)
{
	setting_start_with(s, db, "");
}

static void
setting_stop(struct setting *s)
{
	current = NULL;
	free(s->root_token);
	free(s->alice);
	free(s->bob);
	free(s->mallory);
	world_stop(&s->w);
}

static int
teardown(void **state)
{
	(void)state;
	if (current != NULL) {
		harness_idpd_dump_log(&current->w.p);
		setting_stop(current);
	}
	return 0;
}

/* POST /v1/delegations from planning-agent; approval may be NULL. */
static void
delegate(struct setting *s, const char *to, const char *scope, const char *approval,
         struct http_resp *r)
{
	world_delegation(&s->w, s->planner, s->root_token, to, scope, NULL, approval, r);
}

/* A delegation that needs approval: 202, and the new approval's id into id. */
static void
request_approval(struct setting *w, const char *to, const char *scope, char *id, size_t len)
{
	struct http_resp r;
	char location[128], want[128];

	delegate(w, to, scope, NULL, &r);
	if (r.status != 202)
		fprintf(stderr, "POST /v1/delegations: %ld %s\n", r.status, r.body);
	assert_int_equal(r.status, 202);
	assert_string_equal(json_string_value(json_object_get(r.json, "decision")),
	                    "REQUIRE_APPROVAL");
	assert_string_equal(json_string_value(json_object_get(r.json, "status")), "pending");
	assert_non_null(json_string_value(json_object_get(r.json, "expires_at")));
	assert_null(json_object_get(r.json, "delegation_token"));
	snprintf(id, len, "%s", json_string_value(json_object_get(r.json, "approval_id")));
	assert_int_equal(strncmp(id, "apr_", 4), 0);
	assert_true(harness_resp_header(&r, "Location", location, sizeof(location)));
	snprintf(want, sizeof(want), "/v1/approvals/%s", id);
	assert_string_equal(location, want);
	harness_resp_free(&r);
}

/* POST /v1/approvals/{id}/{verb} as bearer; returns the status, the answer in r. */
static long
decide(struct setting *w, const char *id, const char *verb, const char *bearer, const char *body,
       struct http_resp *r)
{
	char path[160];

	snprintf(path, sizeof(path), "/v1/approvals/%s/%s", id, verb);
	world_call(&w->w, "POST", path, bearer, body, r);
	return r->status;
}

static long
decide_status(struct setting *w, const char *id, const char *verb, const char *bearer)
{
	struct http_resp r;
	long s = decide(w, id, verb, bearer, NULL, &r);

	harness_resp_free(&r);
	return s;
}

static long
get_status(struct setting *w, const char *path, const char *bearer)
{
	return harness_status(&w->w.p, "GET", path, bearer, NULL);
}

/* A delegation refused with reason; checks its events and that nothing was issued. */
static void
expect_refusal(struct setting *w, const char *to, const char *scope, const char *approval,
               const char *reason)
{
	struct http_resp r;
	long tokens = world_count(&w->w, "SELECT count(*) FROM delegation_tokens");
	char sql[512];

	delegate(w, to, scope, approval, &r);
	if (r.status != 403)
		fprintf(stderr, "expected %s: %ld %s\n", reason, r.status, r.body);
	assert_int_equal(r.status, 403);
	assert_string_equal(json_string_value(json_object_get(r.json, "reason")), reason);
	harness_resp_free(&r);
	assert_int_equal(world_count(&w->w, "SELECT count(*) FROM delegation_tokens"), tokens);
	snprintf(sql, sizeof(sql),
	         "SELECT count(*) FROM audit_events WHERE type = 'delegation.denied' AND "
	         "body::json->'detail'->>'reason' = '%s'",
	         reason);
	assert_true(world_count(&w->w, sql) >= 1);
	snprintf(sql, sizeof(sql),
	         "SELECT count(*) FROM audit_events WHERE type = 'approval.used' AND outcome = "
	         "'denied' AND body::json->'detail'->>'reason' = '%s' AND agent_id = "
	         "'planning-agent'",
	         reason);
	assert_true(world_count(&w->w, sql) >= 1);
}

static void
an_approved_delegation_is_issued_once(void **state)
{
	struct setting *w = &the_setting;
	struct http_resp r;
	char id[80], sql[1024], path[160], jti[80];

	(void)state;
	setting_start(w, "t_apr_once");
	request_approval(w, "cloud-agent", "cloud:DescribeInstances", id, sizeof(id));

	/* Stored bound to the request, with the owner as registered (lower case). */
	snprintf(sql, sizeof(sql),
	         "SELECT count(*) FROM approvals WHERE id = '%s' AND status = 'pending' AND "
	         "kind = 'delegation' AND agent_id = 'planning-agent' AND task_id = '%s' AND "
	         "human_principal = 'alice@example.com' AND agent_owner = 'bob@example.com' AND "
	         "scope = '{cloud:DescribeInstances}' AND target = 'cloud-agent' AND "
	         "expires_at > now() + interval '50 minutes'",
	         id, w->task_id);
	assert_int_equal(world_count(&w->w, sql), 1);
	snprintf(sql, sizeof(sql),
	         "SELECT count(*) FROM audit_events WHERE type = 'approval.requested' AND "
	         "outcome = 'pending' AND task_id = '%s' AND "
	         "body::json->'authorization'->>'policy_decision' = 'REQUIRE_APPROVAL' AND "
	         "body::json->'detail'->>'approval_id' = '%s' AND "
	         "body::json->'detail'->>'target' = 'cloud-agent'",
	         w->task_id, id);
	assert_int_equal(world_count(&w->w, sql), 1);
	assert_int_equal(world_count(&w->w, "SELECT count(*) FROM audit_events WHERE type = "
	                                    "'delegation.denied' AND outcome = 'pending'"),
	                 1);

	/* Not yet decided. */
	expect_refusal(w, "cloud-agent", "cloud:DescribeInstances", id, "approval_pending");

	/* alice, the task's human, approves with a note. */
	assert_int_equal(decide(w, id, "approve", w->alice, "{\"note\":\"ok for the review\"}", &r),
	                 200);
	assert_string_equal(json_string_value(json_object_get(r.json, "status")), "approved");
	assert_string_equal(json_string_value(json_object_get(r.json, "decided_by")),
	                    "alice@example.com");
	assert_string_equal(json_string_value(json_object_get(r.json, "decided_by_kind")), "human");
	assert_string_equal(json_string_value(json_object_get(r.json, "note")),
	                    "ok for the review");
	harness_resp_free(&r);
	snprintf(sql, sizeof(sql),
	         "SELECT count(*) FROM audit_events WHERE type = 'approval.granted' AND "
	         "body::json->'actor'->>'kind' = 'human' AND "
	         "body::json->'actor'->>'name' = 'alice@example.com' AND "
	         "body::json->'detail'->>'approval_id' = '%s'",
	         id);
	assert_int_equal(world_count(&w->w, sql), 1);

	/* The retry is issued, and its token's row names the approval. */
	delegate(w, "cloud-agent", "cloud:DescribeInstances", id, &r);
	if (r.status != 201)
		fprintf(stderr, "retry: %ld %s\n", r.status, r.body);
	assert_int_equal(r.status, 201);
	snprintf(jti, sizeof(jti), "%s", json_string_value(json_object_get(r.json, "jti")));
	harness_resp_free(&r);
	snprintf(sql, sizeof(sql),
	         "SELECT count(*) FROM delegation_tokens WHERE jti = '%s' AND approval_id = '%s'",
	         jti, id);
	assert_int_equal(world_count(&w->w, sql), 1);
	snprintf(sql, sizeof(sql),
	         "SELECT count(*) FROM approvals WHERE id = '%s' AND status = 'used' AND "
	         "used_at IS NOT NULL",
	         id);
	assert_int_equal(world_count(&w->w, sql), 1);
	snprintf(sql, sizeof(sql),
	         "SELECT count(*) FROM audit_events WHERE type = 'approval.used' AND "
	         "outcome = 'success' AND body::json->'detail'->>'approval_id' = '%s'",
	         id);
	assert_int_equal(world_count(&w->w, sql), 1);
	snprintf(sql, sizeof(sql),
	         "SELECT count(*) FROM audit_events WHERE type = 'delegation.created' AND "
	         "body::json->'detail'->>'approval_id' = '%s'",
	         id);
	assert_int_equal(world_count(&w->w, sql), 1);

	/* A replay: refused, nothing issued. */
	expect_refusal(w, "cloud-agent", "cloud:DescribeInstances", id, "approval_used");
	assert_int_equal(world_count(&w->w, "SELECT count(*) FROM delegation_tokens"), 2);

	/* The record shows it used; it cannot be decided again. */
	snprintf(path, sizeof(path), "/v1/approvals/%s", id);
	world_call(&w->w, "GET", path, w->alice, NULL, &r);
	assert_int_equal(r.status, 200);
	assert_string_equal(json_string_value(json_object_get(r.json, "status")), "used");
	assert_non_null(json_object_get(r.json, "used_at"));
	assert_string_equal(json_string_value(json_array_get(json_object_get(r.json, "scope"), 0)),
	                    "cloud:DescribeInstances");
	harness_resp_free(&r);
	assert_int_equal(decide(w, id, "deny", w->bob, NULL, &r), 409);
	assert_string_equal(json_string_value(json_object_get(r.json, "code")),
	                    "approval_already_decided");
	assert_int_equal(json_integer_value(json_object_get(r.json, "status")), 409);
	assert_string_equal(json_string_value(json_object_get(r.json, "approval_status")), "used");
	harness_resp_free(&r);
	setting_stop(w);
}

static void
an_approval_serves_only_its_own_request(void **state)
{
	struct setting *w = &the_setting;
	struct http_resp r;
	char id[80], sql[256];

	(void)state;
	setting_start(w, "t_apr_binding");
	request_approval(w, "cloud-agent", "cloud:DescribeVolumes cloud:DescribeInstances", id,
	                 sizeof(id));
	/* An operator with the approver role decides. */
	assert_int_equal(decide(w, id, "approve", w->w.k.approver, NULL, &r), 200);
	assert_string_equal(json_string_value(json_object_get(r.json, "decided_by")),
	                    "ops-approver");
	assert_string_equal(json_string_value(json_object_get(r.json, "decided_by_kind")),
	                    "operator");
	harness_resp_free(&r);

	expect_refusal(w, "cloud-agent", "cloud:DescribeInstances", id, "approval_mismatch");
	expect_refusal(w, "cloud-agent-2", "cloud:DescribeInstances cloud:DescribeVolumes", id,
	               "approval_mismatch");
	expect_refusal(w, "cloud-agent", "cloud:DescribeInstances cloud:DescribeVolumes",
	               "apr_doesnotexist0000000000", "approval_unknown");
	expect_refusal(w, "cloud-agent", "cloud:DescribeInstances cloud:DescribeVolumes",
	               "not-an-approval", "approval_unknown");
	/* Refusals spend nothing. */
	snprintf(sql, sizeof(sql),
	         "SELECT count(*) FROM approvals WHERE id = '%s' AND "
	         "status = 'approved'",
	         id);
	assert_int_equal(world_count(&w->w, sql), 1);
	/* Every other check still runs first, and spends nothing. */
	delegate(w, "cloud-agent", "cloud:DescribeInstances cloud:DescribeSnapshots", id, &r);
	assert_int_equal(r.status, 403);
	assert_string_equal(json_string_value(json_object_get(r.json, "reason")),
	                    "scope_not_within_parent");
	harness_resp_free(&r);
	assert_int_equal(world_count(&w->w, sql), 1);
	/* approval_id must be a string. */
	assert_int_equal(
	    harness_status(&w->w.p, "POST", "/v1/delegations", w->planner,
	                   "{\"delegation_token\":\"x\",\"to_agent\":\"cloud-agent\","
	                   "\"scope\":\"cloud:DescribeInstances\",\"approval_id\":42}"),
	    400);
	/* The same set in another order, with a duplicate: issued. */
	delegate(w, "cloud-agent",
	         "cloud:DescribeVolumes cloud:DescribeInstances cloud:DescribeVolumes", id, &r);
	if (r.status != 201)
		fprintf(stderr, "retry: %ld %s\n", r.status, r.body);
	assert_int_equal(r.status, 201);
	harness_resp_free(&r);
	assert_int_equal(world_count(&w->w, "SELECT count(*) FROM approvals WHERE status = 'used'"),
	                 1);
	setting_stop(w);
}

static void
denied_and_expired_approvals_issue_nothing(void **state)
{
	struct setting *w = &the_setting;
	struct http_resp r;
	char denied[80], stale[80], late[80], sql[1024];

	(void)state;
	setting_start(w, "t_apr_denied");

	/* bob, the agent's owner, denies. */
	request_approval(w, "cloud-agent", "cloud:DescribeInstances", denied, sizeof(denied));
	assert_int_equal(decide(w, denied, "deny", w->bob, "{\"note\":\"not this week\"}", &r),
	                 200);
	assert_string_equal(json_string_value(json_object_get(r.json, "status")), "denied");
	assert_string_equal(json_string_value(json_object_get(r.json, "decided_by")),
	                    "bob@example.com");
	harness_resp_free(&r);
	snprintf(sql, sizeof(sql),
	         "SELECT count(*) FROM audit_events WHERE type = 'approval.denied' AND "
	         "body::json->'actor'->>'name' = 'bob@example.com' AND "
	         "body::json->'detail'->>'note' = 'not this week'");
	assert_int_equal(world_count(&w->w, sql), 1);
	expect_refusal(w, "cloud-agent", "cloud:DescribeInstances", denied, "approval_denied");
	assert_int_equal(decide_status(w, denied, "approve", w->alice), 409);

	/* Nobody answered in time: deciding is refused and recorded. */
	request_approval(w, "cloud-agent", "cloud:DescribeInstances", stale, sizeof(stale));
	snprintf(sql, sizeof(sql),
	         "UPDATE approvals SET created_at = now() - interval '2 hours', expires_at = now() "
	         "- interval '1 hour' WHERE id = '%s'",
	         stale);
	assert_int_equal(harness_sql(w->w.db, sql), 0);
	assert_int_equal(decide(w, stale, "approve", w->alice, NULL, &r), 409);
	assert_string_equal(json_string_value(json_object_get(r.json, "code")), "approval_expired");
	assert_string_equal(json_string_value(json_object_get(r.json, "approval_status")),
	                    "expired");
	harness_resp_free(&r);
	snprintf(sql, sizeof(sql),
	         "SELECT count(*) FROM audit_events WHERE type = 'approval.expired' AND "
	         "body::json->'actor'->>'name' = 'alice@example.com' AND "
	         "body::json->'detail'->>'approval_id' = '%s'",
	         stale);
	assert_int_equal(world_count(&w->w, sql), 1);
	snprintf(sql, sizeof(sql),
	         "SELECT count(*) FROM approvals WHERE id = '%s' AND "
	         "status = 'pending' AND decided_at IS NULL",
	         stale);
	assert_int_equal(world_count(&w->w, sql), 1);
	expect_refusal(w, "cloud-agent", "cloud:DescribeInstances", stale, "approval_expired");

	/* Approved, then expired before the retry. */
	request_approval(w, "cloud-agent", "cloud:DescribeInstances", late, sizeof(late));
	assert_int_equal(decide_status(w, late, "approve", w->alice), 200);
	snprintf(sql, sizeof(sql),
	         "UPDATE approvals SET created_at = now() - interval '2 hours', decided_at = now() "
	         "- interval '90 minutes', expires_at = now() - interval '1 hour' WHERE id = '%s'",
	         late);
	assert_int_equal(harness_sql(w->w.db, sql), 0);
	expect_refusal(w, "cloud-agent", "cloud:DescribeInstances", late, "approval_expired");
	/* Deciding it again is refused as expired, as GET reads it, not as still approved. */
	{
		char path[128];

		snprintf(path, sizeof(path), "/v1/approvals/%s/deny", late);
		world_call(&w->w, "POST", path, w->w.k.approver, NULL, &r);
		assert_int_equal(r.status, 409);
		assert_string_equal(json_string_value(json_object_get(r.json, "code")),
		                    "approval_expired");
		harness_resp_free(&r);
	}

	/* Listed as expired, not as pending or approved. */
	world_call(&w->w, "GET", "/v1/approvals?status=expired", w->w.k.approver, NULL, &r);
	assert_int_equal(r.status, 200);
	assert_int_equal(json_array_size(json_object_get(r.json, "approvals")), 2);
	harness_resp_free(&r);
	world_call(&w->w, "GET", "/v1/approvals?status=pending", w->w.k.approver, NULL, &r);
	assert_int_equal(r.status, 200);
	assert_int_equal(json_array_size(json_object_get(r.json, "approvals")), 0);
	harness_resp_free(&r);
	world_call(&w->w, "GET", "/v1/approvals?status=denied", w->w.k.approver, NULL, &r);
	assert_int_equal(json_array_size(json_object_get(r.json, "approvals")), 1);
	harness_resp_free(&r);
	assert_int_equal(world_count(&w->w, "SELECT count(*) FROM delegation_tokens"), 1);

	/* The cleanup job deletes an approval once its expiry is older than
	 * audit.retention (365d here), and only then. */
	snprintf(
	    sql, sizeof(sql),
	    "UPDATE approvals SET created_at = now() - interval '401 days', expires_at = now() "
	    "- interval '400 days' WHERE id = '%s'",
	    stale);
	assert_int_equal(harness_sql(w->w.db, sql), 0);
	world_call(&w->w, "POST", "/v1/maintenance/cleanup", w->w.k.maintenance, NULL, &r);
	assert_int_equal(r.status, 200);
	assert_int_equal(json_integer_value(json_object_get(
	                     json_object_get(json_object_get(r.json, "jobs"), "approvals"),
	                     "approvals_deleted")),
	                 1);
	harness_resp_free(&r);
	snprintf(sql, sizeof(sql), "SELECT count(*) FROM approvals WHERE id = '%s'", stale);
	assert_int_equal(world_count(&w->w, sql), 0);
	snprintf(sql, sizeof(sql), "SELECT count(*) FROM approvals WHERE id IN ('%s', '%s')",
	         denied, late);
	assert_int_equal(world_count(&w->w, sql), 2);
	setting_stop(w);
}

/* The ids listed by GET path as bearer, joined with spaces, into out; returns how many. */
static size_t
listed(struct setting *w, const char *path, const char *bearer, char *out, size_t len)
{
	struct http_resp r;
	json_t *a, *e;
	size_t i, at = 0;

	world_call(&w->w, "GET", path, bearer, NULL, &r);
	if (r.status != 200)
		fprintf(stderr, "GET %s: %ld %s\n", path, r.status, r.body);
	assert_int_equal(r.status, 200);
	a = json_object_get(r.json, "approvals");
	out[0] = '\0';
	json_array_foreach(a, i, e)
	{
		at += (size_t)snprintf(out + at, len - at, "%s%s", at > 0 ? " " : "",
		                       json_string_value(json_object_get(e, "id")));
	}
	i = json_array_size(a);
	harness_resp_free(&r);
	return i;
}

static void
who_may_read_and_decide(void **state)
{
	struct setting *w = &the_setting;
	struct http_resp r;
	char id[80], path[160], ids[1024], want[1024];

	(void)state;
	setting_start(w, "t_apr_access");
	request_approval(w, "cloud-agent", "cloud:DescribeInstances", id, sizeof(id));
	snprintf(path, sizeof(path), "/v1/approvals/%s", id);

	/* Reading. */
	assert_int_equal(get_status(w, path, w->alice), 200);
	assert_int_equal(get_status(w, path, w->bob), 200);
	assert_int_equal(get_status(w, path, w->w.k.approver), 200);
	assert_int_equal(get_status(w, path, w->w.k.auditor), 200);
	assert_int_equal(get_status(w, path, w->planner), 200);
	assert_int_equal(get_status(w, path, w->mallory), 404);
	assert_int_equal(get_status(w, path, w->cloud), 404);
	assert_int_equal(get_status(w, path, w->w.k.registrar), 403);
	assert_int_equal(get_status(w, path, NULL), 401);
	assert_int_equal(get_status(w, path, "not-a-token"), 401);
	assert_int_equal(get_status(w, "/v1/approvals/apr_doesnotexist0000000000", w->w.k.approver),
	                 404);
	assert_int_equal(get_status(w, "/v1/approvals/nope", w->w.k.approver), 404);

	/* Deciding: neither a stranger, an agent, an auditor nor a registrar. */
	assert_int_equal(decide_status(w, id, "approve", w->mallory), 404);
	assert_int_equal(decide_status(w, id, "approve", w->planner), 403);
	assert_int_equal(decide_status(w, id, "approve", w->cloud), 403);
	assert_int_equal(decide_status(w, id, "approve", w->w.k.auditor), 403);
	assert_int_equal(decide_status(w, id, "approve", w->w.k.registrar), 403);
	assert_int_equal(decide_status(w, id, "approve", NULL), 401);
	/* A bad body changes nothing. */
	assert_int_equal(decide(w, id, "approve", w->alice, "{\"reason\":\"x\"}", &r), 422);
	harness_resp_free(&r);
	assert_int_equal(decide(w, id, "approve", w->alice, "{\"note\":\"\"}", &r), 422);
	harness_resp_free(&r);
	assert_int_equal(decide(w, id, "approve", w->alice, "[]", &r), 400);
	harness_resp_free(&r);
	assert_int_equal(
	    world_count(&w->w, "SELECT count(*) FROM approvals WHERE status = 'pending'"), 1);
	assert_int_equal(world_count(&w->w, "SELECT count(*) FROM audit_events WHERE type IN "
	                                    "('approval.granted', 'approval.denied')"),
	                 0);

	/* Listing: what each caller may see. */
	snprintf(want, sizeof(want), "%s", id);
	assert_int_equal(listed(w, "/v1/approvals?status=pending", w->alice, ids, sizeof(ids)), 1);
	assert_string_equal(ids, want);
	assert_int_equal(listed(w, "/v1/approvals", w->bob, ids, sizeof(ids)), 1);
	assert_int_equal(listed(w, "/v1/approvals", w->mallory, ids, sizeof(ids)), 0);
	assert_int_equal(listed(w, "/v1/approvals", w->planner, ids, sizeof(ids)), 1);
	assert_int_equal(listed(w, "/v1/approvals", w->cloud, ids, sizeof(ids)), 0);
	assert_int_equal(listed(w, "/v1/approvals?approver=alice@example.com", w->w.k.approver, ids,
	                        sizeof(ids)),
	                 1);
	assert_int_equal(
	    listed(w, "/v1/approvals?approver=BOB@example.com", w->w.k.auditor, ids, sizeof(ids)),
	    1);
	assert_int_equal(listed(w, "/v1/approvals?approver=carol@example.com", w->w.k.approver, ids,
	                        sizeof(ids)),
	                 0);
	snprintf(path, sizeof(path), "/v1/approvals?task_id=%s&agent_id=planning-agent",
	         w->task_id);
	assert_int_equal(listed(w, path, w->w.k.approver, ids, sizeof(ids)), 1);
	assert_int_equal(
	    listed(w, "/v1/approvals?agent_id=cloud-agent", w->w.k.approver, ids, sizeof(ids)), 0);
	assert_int_equal(get_status(w, "/v1/approvals?approver=bob@example.com", w->alice), 403);
	assert_int_equal(get_status(w, "/v1/approvals?agent_id=cloud-agent", w->planner), 403);
	assert_int_equal(get_status(w, "/v1/approvals?status=maybe", w->w.k.approver), 400);
	assert_int_equal(get_status(w, "/v1/approvals?agent_id=Bad%20Id", w->w.k.approver), 400);
	assert_int_equal(get_status(w, "/v1/approvals?task_id=nope", w->w.k.approver), 400);
	assert_int_equal(get_status(w, "/v1/approvals?limit=0", w->w.k.approver), 400);
	assert_int_equal(get_status(w, "/v1/approvals", w->w.k.registrar), 403);
	assert_int_equal(get_status(w, "/v1/approvals", NULL), 401);
	setting_stop(w);
}

/*
 * "partners" asserts alice@example.com too, for someone else: a human is a
 * principal of one provider, so that user is neither the task's human nor
 * anyone's owner, and sees, decides, completes and revokes nothing of alice's.
 */
static void
another_provider_asserting_the_same_principal_is_someone_else(void **state)
{
	struct setting *w = &the_setting;
	struct http_resp r;
	char id[80], path[160], ids[1024], auth[4200];
	char *eve, *bobp, *carol;

	(void)state;
	setting_start(w, "t_apr_idps");
	request_approval(w, "cloud-agent", "cloud:DescribeInstances", id, sizeof(id));
	snprintf(path, sizeof(path), "/v1/approvals/%s", id);
	eve = world_partner_token("alice@example.com");
	bobp = world_partner_token("bob@example.com");
	carol = world_partner_token("carol@example.com");

	/* The partner's users authenticate: what follows is not a 401. */
	assert_int_equal(listed(w, "/v1/approvals", carol, ids, sizeof(ids)), 0);
	assert_int_equal(get_status(w, path, eve), 404);
	assert_int_equal(decide_status(w, id, "approve", eve), 404);
	assert_int_equal(listed(w, "/v1/approvals", eve, ids, sizeof(ids)), 0);
	assert_int_equal(
	    listed(w, "/v1/approvals?approver=alice@example.com", eve, ids, sizeof(ids)), 0);
	/* An email owner is a person's address, whichever provider vouches for
	 * it: bob of partners decides for bob@example.com's agent. */
	assert_int_equal(get_status(w, path, bobp), 200);
	assert_int_equal(
	    world_count(&w->w, "SELECT count(*) FROM approvals WHERE status = 'pending'"), 1);

	snprintf(path, sizeof(path), "/v1/tasks/%s", w->task_id);
	assert_int_equal(get_status(w, path, eve), 403);
	assert_int_equal(get_status(w, path, w->alice), 200);
	snprintf(path, sizeof(path), "/v1/tasks/%s/timeline", w->task_id);
	assert_int_equal(get_status(w, path, eve), 403);
	snprintf(path, sizeof(path), "/v1/tasks/%s/complete", w->task_id);
	world_call(&w->w, "POST", path, eve, NULL, &r);
	assert_int_equal(r.status, 403);
	harness_resp_free(&r);
	snprintf(auth, sizeof(auth), "Bearer %s", eve);
	assert_int_equal(world_revoke_as(&w->w, auth, w->root_token, NULL), 400);
	assert_true(world_active(&w->w, w->root_token, NULL));
	assert_int_equal(world_count(&w->w, "SELECT count(*) FROM tasks WHERE status = 'open'"), 1);

	/* An approval inserted without its human's provider, as an idpd older
	 * than migration 0013 would, takes its task's (0014's trigger). */
	{
		char sql[512], v[64];

		snprintf(
		    sql, sizeof(sql),
		    "INSERT INTO approvals (id, kind, agent_id, task_id, human_principal, "
		    "agent_owner, scope, target, reason, expires_at) VALUES "
		    "('apr_0123456789abcdefXYZ', 'token', 'cloud-agent', '%s', "
		    "'alice@example.com', "
		    "'carol@example.com', '{cloud:DescribeInstances}', 'x', 'r', now() + interval "
		    "'1 hour')",
		    w->task_id);
		assert_int_equal(harness_sql(w->w.db, sql), 0);
		assert_int_equal(harness_sql_value(w->w.db,
		                                   "SELECT human_idp FROM approvals WHERE id = "
		                                   "'apr_0123456789abcdefXYZ'",
		                                   v, sizeof(v)),
		                 0);
		assert_string_equal(v, "corp");
	}

	/* alice of corp still may. */
	snprintf(auth, sizeof(auth), "Bearer %s", w->alice);
	assert_int_equal(world_revoke_as(&w->w, auth, w->root_token, NULL), 200);
	free(eve);
	free(bobp);
	free(carol);
	setting_stop(w);
}

/*
 * With vouches_for_owners = false, the partners' bob@example.com is not the
 * owner of bob@example.com's agent: he neither sees nor decides its
 * approval, while the corporate bob and the task's own human still may.  A
 * decision records the provider that vouched for its human.
 */
static void
a_provider_that_does_not_vouch_for_owners_decides_nothing_as_owner(void **state)
{
	struct setting *w = &the_setting;
	struct http_resp r;
	char id[80], path[160], ids[1024], sql[512];
	char *bobp;

	(void)state;
	setting_start_with(w, "t_apr_vouch", "vouches_for_owners = false\n");
	request_approval(w, "cloud-agent", "cloud:DescribeInstances", id, sizeof(id));
	snprintf(path, sizeof(path), "/v1/approvals/%s", id);
	bobp = world_partner_token("bob@example.com");
	assert_int_equal(get_status(w, path, bobp), 404);
	assert_int_equal(decide_status(w, id, "approve", bobp), 404);
	assert_int_equal(listed(w, "/v1/approvals", bobp, ids, sizeof(ids)), 0);
	assert_int_equal(
	    world_count(&w->w, "SELECT count(*) FROM approvals WHERE status = 'pending'"), 1);
	/* The corporate bob is still the owner. */
	assert_int_equal(get_status(w, path, w->bob), 200);
	assert_int_equal(listed(w, "/v1/approvals", w->bob, ids, sizeof(ids)), 1);

	/* alice, the task's human, approves; the decision names her provider. */
	assert_int_equal(decide(w, id, "approve", w->alice, NULL, &r), 200);
	assert_string_equal(json_string_value(json_object_get(r.json, "decided_by")),
	                    "alice@example.com");
	assert_string_equal(json_string_value(json_object_get(r.json, "decided_by_idp")), "corp");
	harness_resp_free(&r);
	snprintf(sql, sizeof(sql),
	         "SELECT count(*) FROM approvals WHERE id = '%s' AND decided_by_idp = 'corp'", id);
	assert_int_equal(world_count(&w->w, sql), 1);
	snprintf(sql, sizeof(sql),
	         "SELECT count(*) FROM audit_events WHERE type = 'approval.granted' AND "
	         "body::json->'detail'->>'decided_by_idp' = 'corp' AND "
	         "body::json->'detail'->>'approval_id' = '%s'",
	         id);
	assert_int_equal(world_count(&w->w, sql), 1);
	delegate(w, "cloud-agent", "cloud:DescribeInstances", id, &r);
	assert_int_equal(r.status, 201);
	harness_resp_free(&r);
	snprintf(sql, sizeof(sql),
	         "SELECT count(*) FROM audit_events WHERE type = 'approval.used' AND outcome = "
	         "'success' AND body::json->'detail'->>'approved_by_idp' = 'corp' AND "
	         "body::json->'detail'->>'approval_id' = '%s'",
	         id);
	assert_int_equal(world_count(&w->w, sql), 1);
	free(bobp);
	setting_stop(w);
}

/*
 * A provider whose principal is not the email it verified (here its sub,
 * which users of some providers choose) stands for no email owner, even
 * with vouches_for_owners left on: the partners' "bob@example.com" is not
 * the owner of bob@example.com's agent.
 */
static void
a_provider_whose_principal_is_not_its_email_decides_nothing_as_owner(void **state)
{
	struct setting *w = &the_setting;
	char id[80], path[160], ids[1024];
	char *bobp;

	(void)state;
	world_partner_claim = "sub";
	setting_start_with(w, "t_apr_vouch_sub", "");
	world_partner_claim = "email";
	request_approval(w, "cloud-agent", "cloud:DescribeInstances", id, sizeof(id));
	snprintf(path, sizeof(path), "/v1/approvals/%s", id);
	bobp = world_partner_token("bob@example.com");
	assert_int_equal(get_status(w, path, bobp), 404);
	assert_int_equal(decide_status(w, id, "approve", bobp), 404);
	assert_int_equal(listed(w, "/v1/approvals", bobp, ids, sizeof(ids)), 0);
	assert_int_equal(
	    world_count(&w->w, "SELECT count(*) FROM approvals WHERE status = 'pending'"), 1);
	/* The corporate bob (principal: his verified email) still is. */
	assert_int_equal(get_status(w, path, w->bob), 200);
	free(bobp);
	setting_stop(w);
}

struct asker {
	struct setting *s;
	const char *scope;
	long status;
	char id[80];
};

/* One delegation request needing approval; no cmocka here (another thread). */
static void *
ask(void *arg)
{
	struct asker *a = arg;
	struct http_resp r;
	char body[8192];

	snprintf(body, sizeof(body),
	         "{\"delegation_token\":\"%s\",\"to_agent\":\"cloud-agent\",\"scope\":\"%s\"}",
	         a->s->root_token, a->scope);
	if (harness_call(&a->s->w.p, "POST", "/v1/delegations", a->s->planner, body, &r) != 0)
		return NULL;
	a->status = r.status;
	if (json_string_value(json_object_get(r.json, "approval_id")) != NULL)
		snprintf(a->id, sizeof(a->id), "%s",
		         json_string_value(json_object_get(r.json, "approval_id")));
	harness_resp_free(&r);
	return NULL;
}

/* The same request sent eight times at once waits on one approval. */
static void
the_same_request_at_once_waits_on_one_approval(void **state)
{
	struct setting *w = &the_setting;
	const char *scopes[] = {"cloud:DescribeInstances", "cloud:DescribeVolumes"};
	struct asker as[8];
	pthread_t th[8];

	(void)state;
	setting_start(w, "t_apr_race");
	for (size_t k = 0; k < sizeof(scopes) / sizeof(scopes[0]); k++) {
		char sql[256];

		for (int i = 0; i < 8; i++) {
			as[i] = (struct asker){.s = w, .scope = scopes[k]};
			assert_int_equal(pthread_create(&th[i], NULL, ask, &as[i]), 0);
		}
		for (int i = 0; i < 8; i++) {
			assert_int_equal(pthread_join(th[i], NULL), 0);
			assert_int_equal(as[i].status, 202);
			assert_string_equal(as[i].id, as[0].id);
		}
		snprintf(sql, sizeof(sql),
		         "SELECT count(*) FROM approvals WHERE status = 'pending' AND scope = "
		         "ARRAY['%s']",
		         scopes[k]);
		assert_int_equal(world_count(&w->w, sql), 1);
	}
	assert_int_equal(
	    world_count(&w->w,
	                "SELECT count(*) FROM audit_events WHERE type = 'approval.requested'"),
	    2);
	setting_stop(w);
}

static void
approvals_list_in_keyset_pages(void **state)
{
	struct setting *w = &the_setting;
	struct http_resp r;
	char ids[3][80], path[256], cursor[200], page[1024];
	json_t *a;

	(void)state;
	setting_start(w, "t_apr_pages");
	/* Three different requests: asking twice for the same one waits on one approval. */
	request_approval(w, "cloud-agent", "cloud:DescribeInstances", ids[0], sizeof(ids[0]));
	request_approval(w, "cloud-agent", "cloud:DescribeVolumes", ids[1], sizeof(ids[1]));
	request_approval(w, "cloud-agent-2", "cloud:DescribeInstances", ids[2], sizeof(ids[2]));
	world_call(&w->w, "GET", "/v1/approvals?limit=2", w->w.k.approver, NULL, &r);
	assert_int_equal(r.status, 200);
	a = json_object_get(r.json, "approvals");
	assert_int_equal(json_array_size(a), 2);
	/* Oldest first. */
	assert_string_equal(json_string_value(json_object_get(json_array_get(a, 0), "id")), ids[0]);
	assert_string_equal(json_string_value(json_object_get(json_array_get(a, 1), "id")), ids[1]);
	assert_non_null(json_string_value(json_object_get(r.json, "next_cursor")));
	snprintf(cursor, sizeof(cursor), "%s",
	         json_string_value(json_object_get(r.json, "next_cursor")));
	harness_resp_free(&r);
	snprintf(path, sizeof(path), "/v1/approvals?limit=2&cursor=%s", cursor);
	assert_int_equal(listed(w, path, w->w.k.approver, page, sizeof(page)), 1);
	assert_string_equal(page, ids[2]);
	world_call(&w->w, "GET", path, w->w.k.approver, NULL, &r);
	assert_null(json_object_get(r.json, "next_cursor"));
	harness_resp_free(&r);
	/* The row the cursor stopped at, deleted meanwhile (as cleanup does):
	 * the next page is still the rest, not an empty end. */
	snprintf(page, sizeof(page), "DELETE FROM approvals WHERE id = '%s'", ids[1]);
	assert_int_equal(harness_sql(w->w.db, page), 0);
	assert_int_equal(listed(w, path, w->w.k.approver, page, sizeof(page)), 1);
	assert_string_equal(page, ids[2]);
	assert_int_equal(get_status(w, "/v1/approvals?cursor=garbage", w->w.k.approver), 400);
	setting_stop(w);
}

/*
 * A query parameter an approval endpoint does not read is a 400 naming it,
 * and nothing is decided; a misspelt filter is not an unfiltered list.
 */
static void
options_an_approval_endpoint_does_not_read_are_refused(void **state)
{
	struct setting *w = &the_setting;
	struct http_resp r;
	char id[80], path[200];

	(void)state;
	setting_start(w, "t_apr_opts");
	request_approval(w, "cloud-agent", "cloud:DescribeInstances", id, sizeof(id));

	snprintf(path, sizeof(path), "/v1/approvals/%s/approve?note=ok", id);
	world_call(&w->w, "POST", path, w->alice, NULL, &r);
	assert_int_equal(r.status, 400);
	assert_string_equal(json_string_value(json_object_get(r.json, "code")), "bad_request");
	assert_string_equal(
	    json_string_value(json_array_get(json_object_get(r.json, "parameters"), 0)), "note");
	harness_resp_free(&r);
	snprintf(path, sizeof(path), "/v1/approvals/%s/deny?force=1", id);
	assert_int_equal(harness_status(&w->w.p, "POST", path, w->w.k.approver, NULL), 400);
	/* A body's unknown member is named too. */
	assert_int_equal(decide(w, id, "approve", w->alice, "{\"notes\":\"ok\"}", &r), 422);
	assert_string_equal(json_string_value(json_object_get(
	                        json_array_get(json_object_get(r.json, "errors"), 0), "field")),
	                    "notes");
	harness_resp_free(&r);
	assert_int_equal(
	    world_count(&w->w, "SELECT count(*) FROM approvals WHERE status = 'pending'"), 1);
	assert_int_equal(world_count(&w->w, "SELECT count(*) FROM audit_events WHERE type IN "
	                                    "('approval.granted', 'approval.denied')"),
	                 0);

	/* A misspelt filter lists nothing rather than every approval. */
	world_call(&w->w, "GET", "/v1/approvals?statu=approved&limit=5", w->w.k.approver, NULL, &r);
	assert_int_equal(r.status, 400);
	assert_null(json_object_get(r.json, "approvals"));
	assert_int_equal(json_array_size(json_object_get(r.json, "parameters")), 1);
	assert_non_null(strstr(json_string_value(json_object_get(r.json, "detail")), "\"statu\""));
	harness_resp_free(&r);
	snprintf(path, sizeof(path), "/v1/approvals/%s?fields=id", id);
	assert_int_equal(get_status(w, path, w->w.k.approver), 400);

	/* Without them, the same calls do their work. */
	assert_int_equal(get_status(w, "/v1/approvals?status=pending&limit=5", w->w.k.approver),
	                 200);
	assert_int_equal(decide(w, id, "approve", w->alice, "{\"note\":\"ok\"}", &r), 200);
	harness_resp_free(&r);
	setting_stop(w);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_teardown(an_approved_delegation_is_issued_once, teardown),
	    cmocka_unit_test_teardown(an_approval_serves_only_its_own_request, teardown),
	    cmocka_unit_test_teardown(denied_and_expired_approvals_issue_nothing, teardown),
	    cmocka_unit_test_teardown(who_may_read_and_decide, teardown),
	    cmocka_unit_test_teardown(options_an_approval_endpoint_does_not_read_are_refused,
	                              teardown),
	    cmocka_unit_test_teardown(approvals_list_in_keyset_pages, teardown),
	    cmocka_unit_test_teardown(the_same_request_at_once_waits_on_one_approval, teardown),
	    cmocka_unit_test_teardown(another_provider_asserting_the_same_principal_is_someone_else,
	                              teardown),
	    cmocka_unit_test_teardown(
	        a_provider_that_does_not_vouch_for_owners_decides_nothing_as_owner, teardown),
	    cmocka_unit_test_teardown(
	        a_provider_whose_principal_is_not_its_email_decides_nothing_as_owner, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, world_teardown);
}
