/*
 * Integration tests of the Agent Identity Registry through idpd's HTTP API
 * and a real PostgreSQL: every endpoint, every status transition, operator
 * authentication, the bad input the API must refuse, keyset pagination, the
 * audit trail of each write, two instances on one database (propagation
 * and resync after the listener reconnects), and the cleanup endpoint.
 */
#include <pthread.h>
#include <glob.h>
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
#include "idpd/jws.h"
#include "idpd/maintenance.h"

static char registrar_key[64], auditor_key[64], maint_key[64], admin_key[64];
static char keys_toml[2048];

static void
make_keys(void)
{
	char h1[80], h2[80], h3[80], h4[80];

	if (keys_toml[0] != '\0')
		return;
	assert_int_equal(auth_key_generate(registrar_key, h1), IDP_OK);
	assert_int_equal(auth_key_generate(auditor_key, h2), IDP_OK);
	assert_int_equal(auth_key_generate(maint_key, h3), IDP_OK);
	assert_int_equal(auth_key_generate(admin_key, h4), IDP_OK);
	snprintf(keys_toml, sizeof(keys_toml),
	         "[[api_keys]]\nname = \"ci-registrar\"\nhash = \"%s\"\nroles = [\"registrar\"]\n"
	         "[[api_keys]]\nname = \"siem-reader\"\nhash = \"%s\"\nroles = [\"auditor\"]\n"
	         "[[api_keys]]\nname = \"cron\"\nhash = \"%s\"\nroles = [\"maintenance\"]\n"
	         "[[api_keys]]\nname = \"ops-admin\"\nhash = \"%s\"\nroles = [\"admin\"]\n",
	         h1, h2, h3, h4);
}

/*
 * An [[idp]] named "okta", so that owners "okta:<subject>" name a
 * configured provider (its key set: one fresh key, written once).
 */
static const char *
okta_idp_toml(void)
{
	static char toml[512];
	char path[] = "/tmp/idpd-okta-jwks-XXXXXX";
	struct idp_jws_key *key = NULL;
	json_t *doc;
	FILE *f;
	int fd;

	if (toml[0] != '\0')
		return toml;
	assert_int_equal(idp_jws_key_generate("okta-1", &key, NULL), IDP_OK);
	fd = mkstemp(path);
	assert_true(fd >= 0);
	f = fdopen(fd, "w");
	assert_non_null(f);
	doc = json_pack("{s:[o]}", "keys", idp_jws_key_public_jwk(key));
	assert_int_equal(json_dumpf(doc, f, JSON_COMPACT), 0);
	json_decref(doc);
	assert_int_equal(fclose(f), 0);
	idp_jws_key_unref(key);
	snprintf(toml, sizeof(toml),
	         "[[idp]]\nname = \"okta\"\nissuer = \"https://okta.example\"\n"
	         "audience = \"idpd\"\njwks_file = \"%s\"\nalgs = [\"ES256\"]\n"
	         "principal_claim = \"sub\"\n",
	         path);
	return toml;
}

static void
sleep_ms(int ms)
{
	struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};

	nanosleep(&ts, NULL);
}

static int64_t
mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/*
 * One request: method path as key (NULL: no Authorization), body (NULL:
 * none; sent as application/json), extra a header line or NULL.
 */
static void
call(const struct idpd_proc *p, const char *method, const char *path, const char *key,
     const char *body, const char *extra, struct http_resp *r)
{
	char url[1024], auth[128];
	const char *h[4];
	int n = 0;

	snprintf(auth, sizeof(auth), "Authorization: Bearer %s", key ? key : "");
	if (key != NULL)
		h[n++] = auth;
	if (body != NULL)
		h[n++] = "Content-Type: application/json";
	if (extra != NULL)
		h[n++] = extra;
	h[n] = NULL;
	snprintf(url, sizeof(url), "%s%s", p->base, path);
	assert_int_equal(harness_http(method, url, h, body, body ? strlen(body) : 0, r), 0);
}

static long
status_of(const struct idpd_proc *p, const char *method, const char *path, const char *key,
          const char *body, const char *extra)
{
	struct http_resp r;
	long st;

	call(p, method, path, key, body, extra, &r);
	st = r.status;
	harness_resp_free(&r);
	return st;
}

static const char *
jstr(json_t *o, const char *k)
{
	return json_string_value(json_object_get(o, k));
}

/* A valid registration for id with owner and capabilities (a JSON array text). */
static void
agent_body(char *out, size_t len, const char *id, const char *owner, const char *caps,
           const char *more)
{
	snprintf(
	    out, len,
	    "{\"id\":\"%s\",\"agent_type\":\"planning-orchestrator\",\"agent_version\":\"v2.4.1\","
	    "\"model\":\"claude-opus-4-20250514\",\"deployment\":\"kubernetes/prod/ns-agents\","
	    "\"owner\":\"%s\",\"capabilities\":%s,"
	    "\"delegation_constraints\":{\"max_chain_depth\":3,\"max_scope_per_delegation\":"
	    "\"read\",\"requires_human_approval_for\":[\"write\",\"delete\",\"admin\"]}%s}",
	    id, owner, caps, more ? more : "");
}

static void
register_agent(const struct idpd_proc *p, const char *id, const char *owner, const char *caps,
               const char *more)
{
	char body[4096];
	struct http_resp r;

	agent_body(body, sizeof(body), id, owner, caps, more);
	call(p, "POST", "/v1/agents", registrar_key, body, NULL, &r);
	if (r.status != 201)
		fprintf(stderr, "register %s: %ld %s\n", id, r.status, r.body);
	assert_int_equal(r.status, 201);
	harness_resp_free(&r);
}

static void
sql_value(const char *db, const char *sql, char *out, size_t len)
{
	assert_int_equal(harness_sql_value(db, sql, out, len), 0);
}

static void
start(struct idpd_proc *p, const char *db, const char *extra)
{
	char toml[4096];

	make_keys();
	snprintf(toml, sizeof(toml), "%s%s", extra ? extra : "", keys_toml);
	assert_int_equal(harness_idpd_start(p, db, NULL, toml), 0);
}

/* ---- register, read, list ---- */

static void
register_then_read_back_with_location_etag_and_audit(void **state)
{
	struct idpd_proc p;
	struct http_resp r;
	char body[4096], hv[256], n[512];
	json_t *dc;

	(void)state;
	assert_int_equal(harness_db_create("t_reg_basic"), 0);
	start(&p, "t_reg_basic", NULL);
	agent_body(body, sizeof(body), "agent-planning-prod-001", "Alice@Company.com",
	           "[\"cloud-inventory:read\",\"reports:write\"]",
	           ",\"delegate_to\":[\"cloud-agent\",\"cost-agent\"],\"credential\":{\"type\":"
	           "\"spiffe-jwt-svid\",\"rotation\":\"1h\"},"
	           "\"domains\":[\"cloud\"],\"environment\":\"production\","
	           "\"attestation_selectors\":[\"k8s:ns:agents\"],\"labels\":{\"tier\":\"gold\"}");
	call(&p, "POST", "/v1/agents", registrar_key, body, "X-Request-Id: reg-req-1", &r);
	assert_int_equal(r.status, 201);
	assert_true(harness_resp_header(&r, "Location", hv, sizeof(hv)));
	assert_string_equal(hv, "/v1/agents/agent-planning-prod-001");
	assert_true(harness_resp_header(&r, "ETag", hv, sizeof(hv)));
	assert_string_equal(hv, "\"1\"");
	assert_string_equal(jstr(r.json, "status"), "active");
	/* An email owner is stored in lower case. */
	assert_string_equal(jstr(r.json, "owner"), "alice@company.com");
	assert_non_null(jstr(r.json, "created_at"));
	assert_true(json_is_null(json_object_get(r.json, "last_active")));
	assert_true(json_is_null(json_object_get(r.json, "revocation_epoch")));
	dc = json_object_get(r.json, "delegation_constraints");
	assert_int_equal(json_integer_value(json_object_get(dc, "max_chain_depth")), 3);
	assert_string_equal(jstr(dc, "max_scope_per_delegation"), "read");
	assert_int_equal(json_array_size(json_object_get(dc, "requires_human_approval_for")), 3);
	assert_string_equal(jstr(json_object_get(r.json, "credential"), "rotation"), "1h");
	assert_string_equal(jstr(json_object_get(r.json, "labels"), "tier"), "gold");
	harness_resp_free(&r);

	call(&p, "GET", "/v1/agents/agent-planning-prod-001", auditor_key, NULL, NULL, &r);
	assert_int_equal(r.status, 200);
	assert_string_equal(jstr(r.json, "model"), "claude-opus-4-20250514");
	assert_string_equal(
	    json_string_value(json_array_get(json_object_get(r.json, "capabilities"), 1)),
	    "reports:write");
	assert_string_equal(
	    json_string_value(json_array_get(json_object_get(r.json, "attestation_selectors"), 0)),
	    "k8s:ns:agents");
	harness_resp_free(&r);

	/* A conditional GET with the current ETag is answered 304. */
	assert_int_equal(status_of(&p, "GET", "/v1/agents/agent-planning-prod-001", auditor_key,
	                           NULL, "If-None-Match: \"1\""),
	                 304);
	/* Compared weakly, and any tag of a list may match (RFC 9110 13.1.2). */
	assert_int_equal(status_of(&p, "GET", "/v1/agents/agent-planning-prod-001", auditor_key,
	                           NULL, "If-None-Match: W/\"1\""),
	                 304);
	assert_int_equal(status_of(&p, "GET", "/v1/agents/agent-planning-prod-001", auditor_key,
	                           NULL, "If-None-Match: \"0\", W/\"1\""),
	                 304);
	assert_int_equal(status_of(&p, "GET", "/v1/agents/agent-planning-prod-001", auditor_key,
	                           NULL, "If-None-Match: \"0\", \"11\""),
	                 200);
	assert_int_equal(status_of(&p, "GET", "/v1/agents/agent-planning-prod-001", auditor_key,
	                           NULL, "If-None-Match: 1"),
	                 200);
	assert_int_equal(status_of(&p, "GET", "/v1/agents/no-such-agent", auditor_key, NULL, NULL),
	                 404);
	assert_int_equal(status_of(&p, "GET", "/v1/agents/Not%20Valid", auditor_key, NULL, NULL),
	                 404);

	/* The registration's audit event: who, from where, in which request. */
	sql_value(
	    "t_reg_basic",
	    "SELECT concat_ws('|', type, agent_id, human_principal, outcome, "
	    "body::json->'actor'->>'name', body::json->>'request_id', "
	    "body::json->>'source_address') FROM audit_events WHERE type = 'agent.registered'",
	    n, sizeof(n));
	assert_string_equal(n, "agent.registered|agent-planning-prod-001|alice@company.com|success|"
	                       "ci-registrar|reg-req-1|127.0.0.1");
	assert_int_equal(harness_idpd_stop(&p, SIGTERM, 10000), 0);
}

static void
duplicate_id_is_a_conflict(void **state)
{
	struct idpd_proc p;
	struct http_resp r;
	char body[4096], n[16];

	(void)state;
	assert_int_equal(harness_db_create("t_reg_dup"), 0);
	start(&p, "t_reg_dup", NULL);
	register_agent(&p, "dup-agent", "bob@company.com", "[\"s3:ListBuckets\"]", NULL);
	agent_body(body, sizeof(body), "dup-agent", "carol@company.com", "[\"s3:GetObject\"]",
	           NULL);
	call(&p, "POST", "/v1/agents", registrar_key, body, NULL, &r);
	assert_int_equal(r.status, 409);
	assert_string_equal(jstr(r.json, "code"), "conflict");
	harness_resp_free(&r);
	sql_value("t_reg_dup", "SELECT owner FROM agents WHERE id = 'dup-agent'", n, sizeof(n));
	assert_string_equal(n, "bob@company.com");
	sql_value("t_reg_dup", "SELECT count(*) FROM audit_events WHERE type = 'agent.registered'",
	          n, sizeof(n));
	assert_string_equal(n, "1");
	assert_int_equal(harness_idpd_stop(&p, SIGTERM, 10000), 0);
}

/* Does the problem's errors list name field? */
static bool
names_field(json_t *problem, const char *field)
{
	json_t *errs = json_object_get(problem, "errors"), *e;
	size_t i;

	json_array_foreach(errs, i, e)
	{
		if (jstr(e, "field") != NULL && strcmp(jstr(e, "field"), field) == 0)
			return true;
	}
	return false;
}

static void
bad_input_gets_422_naming_the_field_and_writes_nothing(void **state)
{
	static const struct {
		const char *id, *owner, *caps, *more, *field;
	} cases[] = {
	    {"Agent_Upper", "a@b.co", "[\"s3:ListBuckets\"]", NULL, "id"},
	    {"-leading-dash", "a@b.co", "[\"s3:ListBuckets\"]", NULL, "id"},
	    {"ok-id-1", "a@b.co", "[\"s3:ListBuckets\"]", ",\"colour\":\"blue\"", "colour"},
	    {"ok-id-2", "a@b.co", "[\"s3:ListBuckets\"]", ",\"status\":\"active\"", "status"},
	    {"ok-id-3", "a@b.co", "[\"s3:ListBuckets\"]", ",\"environment\":7", "environment"},
	    {"ok-id-4", "a@b.co", "\"s3:ListBuckets\"", NULL, "capabilities"},
	    {"ok-id-5", "a@b.co", "[]", NULL, "capabilities"},
	    {"ok-id-6", "a@b.co", "[\"s3:ListBuckets\",\"ec2\"]", NULL, "capabilities[1]"},
	    {"ok-id-7", "a@b.co", "[\"s3:List Buckets\"]", NULL, "capabilities[0]"},
	    {"ok-id-8", "a@b.co", "[\"s3:**:x\"]", NULL, "capabilities[0]"},
	    {"ok-id-9", "bob", "[\"s3:ListBuckets\"]", NULL, "owner"},
	    {"ok-id-10", "bob@localhost", "[\"s3:ListBuckets\"]", NULL, "owner"},
	    {"ok-id-11", "a@b.co", "[\"s3:ListBuckets\"]",
	     ",\"credential\":{\"rotation\":\"forever\"}", "credential.rotation"},
	    {"ok-id-12", "a@b.co", "[\"s3:ListBuckets\"]", ",\"delegate_to\":[\"ok-id-12\"]",
	     "delegate_to[0]"},
	    {"ok-id-13", "a@b.co", "[\"s3:ListBuckets\"]", ",\"labels\":{\"Tier\":\"x\"}",
	     "labels.Tier"},
	    {"ok-id-14", "a@b.co", "[\"s3:ListBuckets\",\"s3:ListBuckets\"]", NULL,
	     "capabilities[1]"},
	};
	struct idpd_proc p;
	struct http_resp r;
	char body[4096], n[16], id[200];

	(void)state;
	assert_int_equal(harness_db_create("t_reg_bad"), 0);
	start(&p, "t_reg_bad", okta_idp_toml());
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		agent_body(body, sizeof(body), cases[i].id, cases[i].owner, cases[i].caps,
		           cases[i].more);
		call(&p, "POST", "/v1/agents", registrar_key, body, NULL, &r);
		if (r.status != 422 || !names_field(r.json, cases[i].field))
			fprintf(stderr, "case %zu: %ld %s\n", i, r.status, r.body);
		assert_int_equal(r.status, 422);
		assert_string_equal(jstr(r.json, "code"), "unprocessable");
		assert_true(names_field(r.json, cases[i].field));
		harness_resp_free(&r);
	}
	/* An id one character too long. */
	memset(id, 'a', 129);
	id[129] = '\0';
	agent_body(body, sizeof(body), id, "a@b.co", "[\"s3:ListBuckets\"]", NULL);
	call(&p, "POST", "/v1/agents", registrar_key, body, NULL, &r);
	assert_int_equal(r.status, 422);
	assert_true(names_field(r.json, "id"));
	harness_resp_free(&r);
	/* Missing sponsor and constraints: both named at once. */
	call(&p, "POST", "/v1/agents", registrar_key,
	     "{\"id\":\"x1\",\"agent_type\":\"t\",\"capabilities\":[\"a:b\"]}", NULL, &r);
	assert_int_equal(r.status, 422);
	assert_true(names_field(r.json, "owner"));
	assert_true(names_field(r.json, "delegation_constraints"));
	harness_resp_free(&r);
	/* Wrong types inside the constraints. */
	call(&p, "POST", "/v1/agents", registrar_key,
	     "{\"id\":\"x2\",\"agent_type\":\"t\",\"owner\":\"okta:00u1abcd\",\"capabilities\":"
	     "[\"a:b\"],\"delegation_constraints\":{\"max_chain_depth\":\"3\","
	     "\"max_scope_per_delegation\":\"read-only\",\"requires_human_approval_for\":"
	     "[\"write\",\"sometimes\"],\"extra\":true}}",
	     NULL, &r);
	assert_int_equal(r.status, 422);
	assert_true(names_field(r.json, "delegation_constraints.max_chain_depth"));
	assert_true(names_field(r.json, "delegation_constraints.max_scope_per_delegation"));
	assert_true(names_field(r.json, "delegation_constraints.requires_human_approval_for[1]"));
	assert_true(names_field(r.json, "delegation_constraints.extra"));
	harness_resp_free(&r);
	/* Malformed JSON is 400, another media type 415. */
	assert_int_equal(status_of(&p, "POST", "/v1/agents", registrar_key, "{\"id\":", NULL), 400);
	{
		char url[256];
		const char *h[] = {NULL, "Content-Type: text/plain", NULL};
		char auth[128];

		snprintf(auth, sizeof(auth), "Authorization: Bearer %s", registrar_key);
		h[0] = auth;
		snprintf(url, sizeof(url), "%s/v1/agents", p.base);
		assert_int_equal(harness_http("POST", url, h, "{}", 2, &r), 0);
		assert_int_equal(r.status, 415);
		harness_resp_free(&r);
	}

	sql_value("t_reg_bad", "SELECT count(*) FROM agents", n, sizeof(n));
	assert_string_equal(n, "0");
	sql_value("t_reg_bad", "SELECT count(*) FROM audit_events WHERE type LIKE 'agent.%'", n,
	          sizeof(n));
	assert_string_equal(n, "0");
	/* And an IdP subject is a valid owner. */
	register_agent(&p, "subject-owned", "okta:00u1abcd2EFGH3ijk4x5", "[\"a:b\"]", NULL);
	assert_int_equal(harness_idpd_stop(&p, SIGTERM, 10000), 0);
}

/* ---- authentication ---- */

static void
auth_failures_are_401_and_403(void **state)
{
	struct idpd_proc p;
	struct http_resp r;
	char body[4096], www[256];

	(void)state;
	assert_int_equal(harness_db_create("t_reg_auth"), 0);
	start(&p, "t_reg_auth", NULL);
	agent_body(body, sizeof(body), "auth-agent", "a@b.co", "[\"a:b\"]", NULL);

	call(&p, "POST", "/v1/agents", NULL, body, NULL, &r);
	assert_int_equal(r.status, 401);
	assert_true(harness_resp_header(&r, "WWW-Authenticate", www, sizeof(www)));
	assert_non_null(strstr(www, "Bearer"));
	harness_resp_free(&r);
	call(&p, "POST", "/v1/agents", "idpk_wrong-key-entirely", body, NULL, &r);
	assert_int_equal(r.status, 401);
	assert_true(harness_resp_header(&r, "WWW-Authenticate", www, sizeof(www)));
	harness_resp_free(&r);
	/* The auditor reads, never writes; maintenance does neither. */
	assert_int_equal(status_of(&p, "POST", "/v1/agents", auditor_key, body, NULL), 403);
	assert_int_equal(status_of(&p, "POST", "/v1/agents", maint_key, body, NULL), 403);
	assert_int_equal(status_of(&p, "POST", "/v1/agents", admin_key, body, NULL), 201);
	assert_int_equal(status_of(&p, "GET", "/v1/agents/auth-agent", maint_key, NULL, NULL), 403);
	assert_int_equal(status_of(&p, "GET", "/v1/agents", NULL, NULL, NULL), 401);
	assert_int_equal(status_of(&p, "GET", "/v1/agents/auth-agent", auditor_key, NULL, NULL),
	                 200);
	assert_int_equal(status_of(&p, "PATCH", "/v1/agents/auth-agent", auditor_key,
	                           "{\"team\":\"x\"}", "If-Match: \"1\""),
	                 403);
	assert_int_equal(
	    status_of(&p, "POST", "/v1/agents/auth-agent/suspend", auditor_key, NULL, NULL), 403);
	assert_int_equal(status_of(&p, "POST", "/v1/agents/auth-agent/decommission", NULL,
	                           "{\"reason\":\"x\"}", NULL),
	                 401);
	assert_int_equal(
	    status_of(&p, "POST", "/v1/maintenance/cleanup", registrar_key, NULL, NULL), 403);
	assert_int_equal(status_of(&p, "POST", "/v1/maintenance/cleanup", NULL, NULL, NULL), 401);
	/* Nothing the refused calls asked for happened. */
	call(&p, "GET", "/v1/agents/auth-agent", auditor_key, NULL, NULL, &r);
	assert_string_equal(jstr(r.json, "status"), "active");
	assert_int_equal(json_integer_value(json_object_get(r.json, "version")), 1);
	harness_resp_free(&r);
	assert_int_equal(harness_idpd_stop(&p, SIGTERM, 10000), 0);
}

/* ---- PATCH ---- */

static void
patch_needs_if_match_and_refuses_a_stale_version(void **state)
{
	struct idpd_proc p;
	struct http_resp r;
	char hv[64], n[1024];

	(void)state;
	assert_int_equal(harness_db_create("t_reg_patch"), 0);
	start(&p, "t_reg_patch", NULL);
	register_agent(&p, "patch-agent", "alice@company.com", "[\"reports:write\"]",
	               ",\"labels\":{\"tier\":\"gold\",\"cost\":\"c1\"}");

	assert_int_equal(status_of(&p, "PATCH", "/v1/agents/patch-agent", registrar_key,
	                           "{\"team\":\"sre\"}", NULL),
	                 428);
	assert_int_equal(status_of(&p, "PATCH", "/v1/agents/patch-agent", registrar_key,
	                           "{\"team\":\"sre\"}", "If-Match: \"7\""),
	                 412);
	/* If-Match compares strongly (RFC 9110 13.1.1): a weak tag, or one idpd
	 * never sends, fails the precondition; only a broken header is a 400. */
	assert_int_equal(status_of(&p, "PATCH", "/v1/agents/patch-agent", registrar_key,
	                           "{\"team\":\"sre\"}", "If-Match: W/\"1\""),
	                 412);
	assert_int_equal(status_of(&p, "PATCH", "/v1/agents/patch-agent", registrar_key,
	                           "{\"team\":\"sre\"}", "If-Match: \"0\""),
	                 412);
	assert_int_equal(status_of(&p, "PATCH", "/v1/agents/patch-agent", registrar_key,
	                           "{\"team\":\"sre\"}", "If-Match: \"7\", W/\"1\""),
	                 412);
	assert_int_equal(status_of(&p, "PATCH", "/v1/agents/patch-agent", registrar_key,
	                           "{\"team\":\"sre\"}", "If-Match: \"1"),
	                 400);
	assert_int_equal(status_of(&p, "PATCH", "/v1/agents/patch-agent", registrar_key,
	                           "{\"team\":\"sre\"}", "If-Match: 1"),
	                 400);
	/* A merge patch: one field set, one label removed, one added; the list
	 * holds the current version. */
	call(&p, "PATCH", "/v1/agents/patch-agent", registrar_key,
	     "{\"team\":\"sre\",\"owner\":\"dave@company.com\",\"labels\":{\"cost\":null,"
	     "\"region\":\"eu\"},\"delegation_constraints\":{\"max_chain_depth\":1}}",
	     "If-Match: \"5\", \"1\"", &r);
	assert_int_equal(r.status, 200);
	assert_true(harness_resp_header(&r, "ETag", hv, sizeof(hv)));
	assert_string_equal(hv, "\"2\"");
	assert_string_equal(jstr(r.json, "team"), "sre");
	assert_string_equal(jstr(r.json, "owner"), "dave@company.com");
	assert_null(json_object_get(json_object_get(r.json, "labels"), "cost"));
	assert_string_equal(jstr(json_object_get(r.json, "labels"), "region"), "eu");
	assert_string_equal(jstr(json_object_get(r.json, "labels"), "tier"), "gold");
	assert_int_equal(json_integer_value(json_object_get(
	                     json_object_get(r.json, "delegation_constraints"), "max_chain_depth")),
	                 1);
	/* the rest of the constraints stays */
	assert_string_equal(
	    jstr(json_object_get(r.json, "delegation_constraints"), "max_scope_per_delegation"),
	    "read");
	harness_resp_free(&r);
	/* The old ETag is now stale. */
	assert_int_equal(status_of(&p, "PATCH", "/v1/agents/patch-agent", registrar_key,
	                           "{\"team\":\"x\"}", "If-Match: \"1\""),
	                 412);

	/* Refused patches, each naming its field; nothing changes. */
	{
		static const struct {
			const char *body, *field;
		} bad[] = {
		    {"{\"status\":\"suspended\"}", "status"},
		    {"{\"agent_type\":\"other\"}", "agent_type"},
		    {"{\"id\":\"renamed\"}", "id"},
		    {"{\"owner\":null}", "owner"},
		    {"{\"owner\":\"not an owner\"}", "owner"},
		    {"{\"capabilities\":[]}", "capabilities"},
		    {"{\"nickname\":\"x\"}", "nickname"},
		    {"{\"version\":9}", "version"},
		    {"{\"credential\":{\"rotation\":\"1s\"}}", "credential.rotation"},
		};

		for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
			call(&p, "PATCH", "/v1/agents/patch-agent", registrar_key, bad[i].body,
			     "If-Match: \"2\"", &r);
			if (r.status != 422 || !names_field(r.json, bad[i].field))
				fprintf(stderr, "patch %zu: %ld %s\n", i, r.status, r.body);
			assert_int_equal(r.status, 422);
			assert_true(names_field(r.json, bad[i].field));
			harness_resp_free(&r);
		}
	}
	/* Every problem at once: an unknown member does not hide what is wrong
	 * with the merged record. */
	call(&p, "PATCH", "/v1/agents/patch-agent", registrar_key,
	     "{\"bogus\":1,\"status\":\"active\",\"labels\":{\"a\":5},\"capabilities\":[\"x\"]}",
	     "If-Match: \"2\"", &r);
	if (r.status != 422 || json_array_size(json_object_get(r.json, "errors")) != 4)
		fprintf(stderr, "patch with four problems: %ld %s\n", r.status, r.body);
	assert_int_equal(r.status, 422);
	assert_int_equal(json_array_size(json_object_get(r.json, "errors")), 4);
	assert_true(names_field(r.json, "bogus"));
	assert_true(names_field(r.json, "status"));
	assert_true(names_field(r.json, "capabilities[0]"));
	harness_resp_free(&r);
	/* A patch that changes nothing keeps the version and writes nothing. */
	call(&p, "PATCH", "/v1/agents/patch-agent", registrar_key, "{\"team\":\"sre\"}",
	     "If-Match: \"2\"", &r);
	assert_int_equal(r.status, 200);
	assert_int_equal(json_integer_value(json_object_get(r.json, "version")), 2);
	harness_resp_free(&r);
	assert_int_equal(status_of(&p, "PATCH", "/v1/agents/nobody", registrar_key,
	                           "{\"team\":\"x\"}", "If-Match: \"1\""),
	                 404);

	sql_value(
	    "t_reg_patch",
	    "SELECT count(*) || '|' || string_agg(body::json->'detail'->'changes'->'team'->>'to', "
	    "',') || '|' || string_agg(body::json->'detail'->'changes'->'owner'->>'from', ',') "
	    "FROM audit_events WHERE type = 'agent.updated'",
	    n, sizeof(n));
	assert_string_equal(n, "1|sre|alice@company.com");
	sql_value("t_reg_patch", "SELECT version || team FROM agents WHERE id = 'patch-agent'", n,
	          sizeof(n));
	assert_string_equal(n, "2sre");
	assert_int_equal(harness_idpd_stop(&p, SIGTERM, 10000), 0);
}

/* ---- status transitions ---- */

/*
 * An agent needing approval for all four action classes, with field lengths
 * that once made its in-memory record overrun its block (the approval list
 * was left out of the size): registering, suspending and decommissioning
 * it answer, and idpd lives on.
 */
static void
an_agent_needing_approval_for_every_class_is_served(void **state)
{
	struct idpd_proc p;
	struct http_resp r;
	char body[1024], path[128];

	(void)state;
	assert_int_equal(harness_db_create("t_reg_classes"), 0);
	start(&p, "t_reg_classes", NULL);
	/* Sixteen layouts: ids and owners of every length modulo 8 and more. */
	for (int i = 0; i < 16; i++) {
		snprintf(
		    body, sizeof(body),
		    "{\"id\":\"a%.*s\",\"agent_type\":\"b\",\"owner\":\"%.*s@example.co\","
		    "\"capabilities\":[\"abc:read\"],\"delegation_constraints\":{"
		    "\"max_chain_depth\":1,\"max_scope_per_delegation\":\"read\","
		    "\"requires_human_approval_for\":[\"read\",\"write\",\"delete\",\"admin\"]}}",
		    i, "bbbbbbbbbbbbbbbb", 1 + i % 8, "xxxxxxxx");
		call(&p, "POST", "/v1/agents", registrar_key, body, NULL, &r);
		assert_int_equal(r.status, 201);
		assert_int_equal(json_array_size(json_object_get(
		                     json_object_get(r.json, "delegation_constraints"),
		                     "requires_human_approval_for")),
		                 4);
		harness_resp_free(&r);
		/* Suspending adds who and why to the record: another layout. */
		snprintf(path, sizeof(path), "/v1/agents/a%.*s/suspend", i, "bbbbbbbbbbbbbbbb");
		call(&p, "POST", path, registrar_key, "{\"reason\":\"incident\"}", NULL, &r);
		assert_int_equal(r.status, 200);
		harness_resp_free(&r);
	}
	assert_int_equal(kill(p.pid, 0), 0);
	assert_int_equal(harness_idpd_stop(&p, SIGTERM, 10000), 0);
}

/*
 * A record stored as spiffe-x509-svid by an earlier version (writes now
 * refuse it) is set to the JWT credential it always got by migration 0015,
 * with a new version; then it can be patched like any other.
 */
static void
migration_0015_sets_legacy_credential_types_to_what_agents_get(void **state)
{
	struct idpd_proc p;
	char sql[16384], n[64];
	FILE *f;
	size_t len;
	const char *top = getenv("IDPD_TEST_TOP");

	(void)state;
	assert_int_equal(harness_db_create("t_reg_x509"), 0);
	start(&p, "t_reg_x509", NULL);
	register_agent(&p, "legacy", "a@b.co", "[\"a:b\"]", NULL);
	assert_int_equal(harness_idpd_stop(&p, SIGTERM, 10000), 0);
	/* The schema before 0015: x509 allowed. */
	assert_int_equal(
	    harness_sql("t_reg_x509",
	                "ALTER TABLE agents DROP CONSTRAINT agents_credential_type_check;"
	                "ALTER TABLE agents ADD CONSTRAINT agents_credential_type_check "
	                "CHECK (credential_type IN ('spiffe-jwt-svid', "
	                "'spiffe-x509-svid'));"
	                "UPDATE agents SET credential_type = 'spiffe-x509-svid' "
	                "WHERE id = 'legacy'"),
	    0);
	snprintf(sql, sizeof(sql), "%s/migrations/0015_credential_type_jwt.sql", top ? top : ".");
	f = fopen(sql, "r");
	assert_non_null(f);
	len = fread(sql, 1, sizeof(sql) - 1, f);
	fclose(f);
	sql[len] = '\0';
	assert_int_equal(harness_sql("t_reg_x509", sql), 0);
	sql_value("t_reg_x509",
	          "SELECT credential_type || '|' || version FROM agents WHERE id = 'legacy'", n,
	          sizeof(n));
	assert_string_equal(n, "spiffe-jwt-svid|2");
	/* And the column takes nothing else any more. */
	assert_int_not_equal(
	    harness_sql(
	        "t_reg_x509",
	        "UPDATE agents SET credential_type = 'spiffe-x509-svid' WHERE id = 'legacy'"),
	    0);
	start(&p, "t_reg_x509", NULL);
	assert_int_equal(status_of(&p, "PATCH", "/v1/agents/legacy", registrar_key,
	                           "{\"team\":\"sre\"}", "If-Match: \"2\""),
	                 200);
	assert_int_equal(harness_idpd_stop(&p, SIGTERM, 10000), 0);
}

static void
transitions_suspend_resume_and_decommission_is_terminal(void **state)
{
	struct idpd_proc p;
	struct http_resp r;
	char n[1024], epoch1[64];

	(void)state;
	assert_int_equal(harness_db_create("t_reg_status"), 0);
	start(&p, "t_reg_status", NULL);
	register_agent(&p, "cycle-agent", "alice@company.com", "[\"reports:write\"]", NULL);

	/* active -> suspended: the revocation epoch is set. */
	call(&p, "POST", "/v1/agents/cycle-agent/suspend", registrar_key,
	     "{\"reason\":\"investigating a leak\"}", NULL, &r);
	assert_int_equal(r.status, 200);
	assert_string_equal(jstr(r.json, "status"), "suspended");
	assert_non_null(jstr(r.json, "revocation_epoch"));
	snprintf(epoch1, sizeof(epoch1), "%s", jstr(r.json, "revocation_epoch"));
	assert_string_equal(jstr(json_object_get(r.json, "status_changed"), "by"), "ci-registrar");
	assert_string_equal(jstr(json_object_get(r.json, "status_changed"), "reason"),
	                    "investigating a leak");
	harness_resp_free(&r);
	call(&p, "POST", "/v1/agents/cycle-agent/suspend", registrar_key, NULL, NULL, &r);
	assert_int_equal(r.status, 409);
	assert_string_equal(jstr(r.json, "agent_status"), "suspended");
	harness_resp_free(&r);

	/* suspended -> active: the epoch stays, so old tokens stay dead. */
	call(&p, "POST", "/v1/agents/cycle-agent/resume", registrar_key, NULL, NULL, &r);
	assert_int_equal(r.status, 200);
	assert_string_equal(jstr(r.json, "status"), "active");
	assert_string_equal(jstr(r.json, "revocation_epoch"), epoch1);
	harness_resp_free(&r);
	assert_int_equal(
	    status_of(&p, "POST", "/v1/agents/cycle-agent/resume", registrar_key, NULL, NULL), 409);
	/* If-Match is honoured when given. */
	assert_int_equal(status_of(&p, "POST", "/v1/agents/cycle-agent/suspend", registrar_key,
	                           NULL, "If-Match: \"1\""),
	                 412);

	/* -> decommissioned needs a reason, then is final. */
	call(&p, "POST", "/v1/agents/cycle-agent/decommission", registrar_key, NULL, NULL, &r);
	assert_int_equal(r.status, 422);
	assert_true(names_field(r.json, "reason"));
	harness_resp_free(&r);
	assert_int_equal(status_of(&p, "POST", "/v1/agents/cycle-agent/decommission", registrar_key,
	                           "{\"reason\":\"x\",\"force\":true}", NULL),
	                 422);
	call(&p, "POST", "/v1/agents/cycle-agent/decommission", registrar_key,
	     "{\"reason\":\"replaced by planning v3\"}", NULL, &r);
	assert_int_equal(r.status, 200);
	assert_string_equal(jstr(r.json, "status"), "decommissioned");
	assert_true(strcmp(jstr(r.json, "revocation_epoch"), epoch1) > 0);
	harness_resp_free(&r);
	assert_int_equal(
	    status_of(&p, "POST", "/v1/agents/cycle-agent/resume", registrar_key, NULL, NULL), 409);
	assert_int_equal(
	    status_of(&p, "POST", "/v1/agents/cycle-agent/suspend", registrar_key, NULL, NULL),
	    409);
	assert_int_equal(status_of(&p, "POST", "/v1/agents/cycle-agent/decommission", registrar_key,
	                           "{\"reason\":\"again\"}", NULL),
	                 409);
	assert_int_equal(status_of(&p, "PATCH", "/v1/agents/cycle-agent", registrar_key,
	                           "{\"team\":\"x\"}", "If-Match: \"4\""),
	                 409);
	/* A stale ETag does not hide that it is final (RFC 9110 13.2.1). */
	assert_int_equal(status_of(&p, "PATCH", "/v1/agents/cycle-agent", registrar_key,
	                           "{\"team\":\"x\"}", "If-Match: \"1\""),
	                 409);
	assert_int_equal(status_of(&p, "POST", "/v1/agents/cycle-agent/resume", registrar_key, NULL,
	                           "If-Match: \"1\""),
	                 409);
	/* The id is never reused. */
	{
		char body[4096];

		agent_body(body, sizeof(body), "cycle-agent", "a@b.co", "[\"a:b\"]", NULL);
		assert_int_equal(status_of(&p, "POST", "/v1/agents", registrar_key, body, NULL),
		                 409);
	}
	/* Still readable, with its status. */
	call(&p, "GET", "/v1/agents/cycle-agent", auditor_key, NULL, NULL, &r);
	assert_int_equal(r.status, 200);
	assert_string_equal(jstr(r.json, "status"), "decommissioned");
	harness_resp_free(&r);
	assert_int_equal(
	    status_of(&p, "POST", "/v1/agents/ghost/suspend", registrar_key, NULL, NULL), 404);

	/* The trail: one event per transition, the decommission with who and why. */
	sql_value("t_reg_status",
	          "SELECT string_agg(type, ',' ORDER BY seq) FROM audit_events "
	          "WHERE agent_id = 'cycle-agent'",
	          n, sizeof(n));
	assert_string_equal(n, "agent.registered,agent.suspended,agent.resumed,"
	                       "agent.decommissioned");
	sql_value("t_reg_status",
	          "SELECT concat_ws('|', body::json->'actor'->>'name', "
	          "body::json->'detail'->>'reason', body::json->'detail'->>'from_status', "
	          "(body::json->'detail'->>'revocation_epoch') IS NOT NULL, "
	          "(body::json->>'timestamp') IS NOT NULL) "
	          "FROM audit_events WHERE type = 'agent.decommissioned'",
	          n, sizeof(n));
	assert_string_equal(n, "ci-registrar|replaced by planning v3|active|t|t");
	sql_value("t_reg_status",
	          "SELECT status_changed_by || '|' || status_reason FROM agents "
	          "WHERE id = 'cycle-agent'",
	          n, sizeof(n));
	assert_string_equal(n, "ci-registrar|replaced by planning v3");
	assert_int_equal(harness_idpd_stop(&p, SIGTERM, 10000), 0);
}

/* ---- list ---- */

static void
list_filters_and_pages_through_every_agent_once(void **state)
{
	struct idpd_proc p;
	struct http_resp r;
	char path[512], cursor[256] = "", id[32];
	const char *ids[] = {"a-01", "a-02", "a-03", "a-04", "a-05", "a-06", "a-07"};
	int seen = 0;

	(void)state;
	assert_int_equal(harness_db_create("t_reg_list"), 0);
	start(&p, "t_reg_list", NULL);
	/* Registered out of order: pages come back in id order. */
	for (int i = 6; i >= 0; i--) {
		char more[128];

		snprintf(more, sizeof(more), ",\"team\":\"%s\"", i % 2 ? "odd" : "even");
		register_agent(&p, ids[i], i < 3 ? "Alice@Company.com" : "bob@company.com",
		               i == 0   ? "[\"ec2:Describe*\"]"
		               : i == 1 ? "[\"ec2:DescribeInstances\"]"
		               : i == 2 ? "[\"ec2:*\",\"s3:ListBuckets\"]"
		                        : "[\"reports:write\"]",
		               more);
	}
	for (int page = 0; page < 10; page++) {
		json_t *agents;

		snprintf(path, sizeof(path), "/v1/agents?limit=3%s%s", cursor[0] ? "&cursor=" : "",
		         cursor);
		call(&p, "GET", path, auditor_key, NULL, NULL, &r);
		assert_int_equal(r.status, 200);
		agents = json_object_get(r.json, "agents");
		assert_true(json_array_size(agents) <= 3);
		for (size_t i = 0; i < json_array_size(agents); i++)
			assert_string_equal(jstr(json_array_get(agents, i), "id"), ids[seen++]);
		if (json_object_get(r.json, "next_cursor") == NULL) {
			harness_resp_free(&r);
			break;
		}
		snprintf(cursor, sizeof(cursor), "%s", jstr(r.json, "next_cursor"));
		harness_resp_free(&r);
	}
	assert_int_equal(seen, 7);

	/* Each filter, alone and combined. */
	{
		static const struct {
			const char *query;
			int count;
			const char *first;
		} f[] = {
		    {"owner=alice@company.com", 3, "a-01"},
		    {"owner=ALICE%40company.com", 3, "a-01"},
		    {"team=odd", 3, "a-02"},
		    {"team=odd&owner=bob@company.com", 2, "a-04"},
		    {"type=planning-orchestrator", 7, "a-01"},
		    {"type=nothing", 0, NULL},
		    {"status=active", 7, "a-01"},
		    {"status=suspended", 0, NULL},
		    /* capability: agents whose capabilities cover the scope */
		    {"capability=ec2:DescribeInstances", 3, "a-01"},
		    {"capability=ec2:Describe*", 2, "a-01"},
		    {"capability=ec2:TerminateInstances", 1, "a-03"},
		    {"capability=s3:ListBuckets", 1, "a-03"},
		    {"capability=reports:write&team=even", 2, "a-05"},
		};

		for (size_t i = 0; i < sizeof(f) / sizeof(f[0]); i++) {
			json_t *agents;

			snprintf(path, sizeof(path), "/v1/agents?%s", f[i].query);
			call(&p, "GET", path, auditor_key, NULL, NULL, &r);
			assert_int_equal(r.status, 200);
			agents = json_object_get(r.json, "agents");
			if ((int)json_array_size(agents) != f[i].count)
				fprintf(stderr, "filter %s: %s\n", f[i].query, r.body);
			assert_int_equal(json_array_size(agents), f[i].count);
			if (f[i].first != NULL)
				assert_string_equal(jstr(json_array_get(agents, 0), "id"),
				                    f[i].first);
			harness_resp_free(&r);
		}
	}
	assert_int_equal(status_of(&p, "GET", "/v1/agents?limit=501", auditor_key, NULL, NULL),
	                 400);
	assert_int_equal(status_of(&p, "GET", "/v1/agents?limit=0", auditor_key, NULL, NULL), 400);
	/* A number is digits: no sign, no space before it. */
	assert_int_equal(status_of(&p, "GET", "/v1/agents?limit=%201", auditor_key, NULL, NULL),
	                 400);
	assert_int_equal(status_of(&p, "GET", "/v1/agents?limit=%2B1", auditor_key, NULL, NULL),
	                 400);
	/* A filter that is not valid UTF-8 is the client's error. */
	assert_int_equal(status_of(&p, "GET", "/v1/agents?team=%FF%FE", auditor_key, NULL, NULL),
	                 400);
	assert_int_equal(status_of(&p, "GET", "/v1/agents?cursor=a-03", auditor_key, NULL, NULL),
	                 400);
	assert_int_equal(status_of(&p, "GET", "/v1/agents?status=gone", auditor_key, NULL, NULL),
	                 400);
	assert_int_equal(
	    status_of(&p, "GET", "/v1/agents?capability=not-a-scope", auditor_key, NULL, NULL),
	    400);
	/* limit 500 is allowed */
	call(&p, "GET", "/v1/agents?limit=500", auditor_key, NULL, NULL, &r);
	assert_int_equal(r.status, 200);
	assert_int_equal(json_array_size(json_object_get(r.json, "agents")), 7);
	assert_null(json_object_get(r.json, "next_cursor"));
	harness_resp_free(&r);
	snprintf(id, sizeof(id), "%s", ids[0]);
	assert_int_equal(harness_idpd_stop(&p, SIGTERM, 10000), 0);
}

/* ---- two instances ---- */

/* Poll b until GET path shows field == want; returns ms waited, or -1 after limit_ms. */
static int64_t
wait_visible(const struct idpd_proc *b, const char *path, const char *field, const char *want,
             int64_t limit_ms)
{
	int64_t t0 = mono_ms();

	for (;;) {
		struct http_resp r;
		bool ok;

		call(b, "GET", path, auditor_key, NULL, NULL, &r);
		ok = r.status == 200 && jstr(r.json, field) != NULL &&
		     strcmp(jstr(r.json, field), want) == 0;
		harness_resp_free(&r);
		if (ok)
			return mono_ms() - t0;
		if (mono_ms() - t0 > limit_ms)
			return -1;
		sleep_ms(1);
	}
}

static void
a_change_through_one_instance_shows_on_the_other_within_100ms(void **state)
{
	struct idpd_proc a, b;
	int64_t ms;

	(void)state;
	assert_int_equal(harness_db_create("t_reg_two"), 0);
	start(&a, "t_reg_two", NULL);
	start(&b, "t_reg_two", NULL);
	/* b reads from its cache: make sure it is loaded before measuring. */
	assert_int_equal(status_of(&b, "GET", "/v1/agents/two-agent", auditor_key, NULL, NULL),
	                 404);

	register_agent(&a, "two-agent", "alice@company.com", "[\"reports:write\"]", NULL);
	ms = wait_visible(&b, "/v1/agents/two-agent", "status", "active", 100);
	fprintf(stderr, "registration visible on the other instance after %lld ms\n",
	        (long long)ms);
	assert_true(ms >= 0);

	assert_int_equal(status_of(&a, "PATCH", "/v1/agents/two-agent", registrar_key,
	                           "{\"team\":\"moved\"}", "If-Match: \"1\""),
	                 200);
	ms = wait_visible(&b, "/v1/agents/two-agent", "team", "moved", 100);
	fprintf(stderr, "update visible after %lld ms\n", (long long)ms);
	assert_true(ms >= 0);

	assert_int_equal(
	    status_of(&a, "POST", "/v1/agents/two-agent/suspend", registrar_key, NULL, NULL), 200);
	ms = wait_visible(&b, "/v1/agents/two-agent", "status", "suspended", 100);
	fprintf(stderr, "suspension visible after %lld ms\n", (long long)ms);
	assert_true(ms >= 0);

	/* And the other way round. */
	assert_int_equal(status_of(&b, "POST", "/v1/agents/two-agent/decommission", registrar_key,
	                           "{\"reason\":\"done\"}", NULL),
	                 200);
	ms = wait_visible(&a, "/v1/agents/two-agent", "status", "decommissioned", 100);
	fprintf(stderr, "decommissioning visible after %lld ms\n", (long long)ms);
	assert_true(ms >= 0);
	assert_int_equal(harness_idpd_stop(&a, SIGTERM, 10000), 0);
	assert_int_equal(harness_idpd_stop(&b, SIGTERM, 10000), 0);
}

static void
cache_reloads_after_the_listener_reconnects(void **state)
{
	struct idpd_proc p;
	char n[32];

	(void)state;
	assert_int_equal(harness_db_create("t_reg_resync"), 0);
	start(&p, "t_reg_resync", NULL);
	register_agent(&p, "resync-agent", "alice@company.com", "[\"reports:write\"]", NULL);
	assert_true(wait_visible(&p, "/v1/agents/resync-agent", "status", "active", 1000) >= 0);
	/* Cut the listener's session and change the row in the same breath:
	 * the notification is sent while nobody listens, and is lost. */
	sql_value("t_reg_resync",
	          "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
	          "WHERE datname = 't_reg_resync' AND application_name = 'idpd listener'",
	          n, sizeof(n));
	assert_string_equal(n, "1");
	assert_int_equal(
	    harness_sql("t_reg_resync",
	                "UPDATE agents SET team = 'changed-behind', version = version + 1 "
	                "WHERE id = 'resync-agent'"),
	    0);
	/* The reconnect reloads the whole cache and finds the change.  Until
	 * then lookups read PostgreSQL, so the change may show first: wait for
	 * the reconnection itself too. */
	assert_true(wait_visible(&p, "/v1/agents/resync-agent", "team", "changed-behind", 10000) >=
	            0);
	for (int i = 0; i < 1000 && !harness_log_contains(&p, "listener: reconnected"); i++)
		sleep_ms(10);
	assert_true(harness_log_contains(&p, "listener: reconnected"));
	/* A row deleted behind idpd's back leaves the cache too (notified). */
	assert_int_equal(
	    harness_sql("t_reg_resync", "DELETE FROM agents WHERE id = 'resync-agent'"), 0);
	for (int i = 0; i < 200; i++) {
		if (status_of(&p, "GET", "/v1/agents/resync-agent", auditor_key, NULL, NULL) == 404)
			break;
		sleep_ms(10);
	}
	assert_int_equal(status_of(&p, "GET", "/v1/agents/resync-agent", auditor_key, NULL, NULL),
	                 404);
	assert_int_equal(harness_idpd_stop(&p, SIGTERM, 10000), 0);
}

/* ---- cleanup ---- */

static json_t *
cleanup_job(struct http_resp *r, const char *job)
{
	return json_object_get(json_object_get(r->json, "jobs"), job);
}

static json_int_t
jint(json_t *o, const char *k)
{
	return json_integer_value(json_object_get(o, k));
}

static void
cleanup_reports_or_suspends_stale_agents_idempotently(void **state)
{
	struct idpd_proc p;
	struct http_resp r;
	char n[64];

	(void)state;
	assert_int_equal(harness_db_create("t_reg_stale"), 0);
	start(&p, "t_reg_stale", "[cleanup]\nstale_after = \"30d\"\nstale_action = \"report\"\n");
	register_agent(&p, "fresh", "a@b.co", "[\"a:b\"]", NULL);
	register_agent(&p, "idle-old", "a@b.co", "[\"a:b\"]", NULL);
	register_agent(&p, "never-used", "a@b.co", "[\"a:b\"]", NULL);
	register_agent(&p, "active-long-ago", "a@b.co", "[\"a:b\"]", NULL);
	assert_int_equal(harness_sql("t_reg_stale",
	                             "UPDATE agents SET created_at = now() - interval '90 days' "
	                             "WHERE id <> 'fresh';"
	                             "UPDATE agents SET last_active = now() - interval '40 days' "
	                             "WHERE id IN ('idle-old', 'active-long-ago')"),
	                 0);
	/* never-used: created 90 days ago, never active: stale too. */
	call(&p, "POST", "/v1/maintenance/cleanup", maint_key, NULL, NULL, &r);
	assert_int_equal(r.status, 200);
	assert_string_equal(jstr(cleanup_job(&r, "stale_agents"), "action"), "report");
	assert_int_equal(jint(cleanup_job(&r, "stale_agents"), "stale"), 3);
	assert_int_equal(
	    json_array_size(json_object_get(cleanup_job(&r, "stale_agents"), "stale_ids")), 3);
	harness_resp_free(&r);
	sql_value("t_reg_stale", "SELECT count(*) FROM agents WHERE status = 'active'", n,
	          sizeof(n));
	assert_string_equal(n, "4");
	assert_int_equal(harness_idpd_stop(&p, SIGTERM, 10000), 0);

	/* The same agents with stale_action = "suspend". */
	start(&p, "t_reg_stale", "[cleanup]\nstale_after = \"30d\"\nstale_action = \"suspend\"\n");
	call(&p, "POST", "/v1/maintenance/cleanup", maint_key, NULL, NULL, &r);
	assert_int_equal(r.status, 200);
	assert_int_equal(jint(cleanup_job(&r, "stale_agents"), "suspended"), 3);
	harness_resp_free(&r);
	call(&p, "GET", "/v1/agents/idle-old", auditor_key, NULL, NULL, &r);
	assert_string_equal(jstr(r.json, "status"), "suspended");
	assert_string_equal(jstr(json_object_get(r.json, "status_changed"), "by"), "cron");
	assert_non_null(strstr(jstr(json_object_get(r.json, "status_changed"), "reason"), "stale"));
	harness_resp_free(&r);
	call(&p, "GET", "/v1/agents/fresh", auditor_key, NULL, NULL, &r);
	assert_string_equal(jstr(r.json, "status"), "active");
	harness_resp_free(&r);
	/* Idempotent: the second run finds nothing more to do. */
	call(&p, "POST", "/v1/maintenance/cleanup", maint_key, NULL, NULL, &r);
	assert_int_equal(r.status, 200);
	assert_int_equal(jint(cleanup_job(&r, "stale_agents"), "suspended"), 0);
	assert_int_equal(jint(cleanup_job(&r, "stale_agents"), "stale"), 0);
	harness_resp_free(&r);
	sql_value("t_reg_stale",
	          "SELECT count(*) FILTER (WHERE type = 'agent.suspended') || '|' || "
	          "count(*) FILTER (WHERE type = 'maintenance.cleanup') FROM audit_events",
	          n, sizeof(n));
	assert_string_equal(n, "3|3");
	/* A resume restarts the idle clock: the next run leaves the agent be. */
	call(&p, "POST", "/v1/agents/idle-old/resume", registrar_key, NULL, NULL, &r);
	assert_int_equal(r.status, 200);
	harness_resp_free(&r);
	call(&p, "POST", "/v1/maintenance/cleanup", maint_key, NULL, NULL, &r);
	assert_int_equal(r.status, 200);
	assert_int_equal(jint(cleanup_job(&r, "stale_agents"), "suspended"), 0);
	harness_resp_free(&r);
	call(&p, "GET", "/v1/agents/idle-old", auditor_key, NULL, NULL, &r);
	assert_string_equal(jstr(r.json, "status"), "active");
	harness_resp_free(&r);
	assert_int_equal(harness_idpd_stop(&p, SIGTERM, 10000), 0);
}

static void
options_an_endpoint_does_not_read_are_refused_and_nothing_changes(void **state)
{
	struct idpd_proc p;
	struct http_resp r;
	char n[64];

	(void)state;
	assert_int_equal(harness_db_create("t_reg_opts"), 0);
	start(&p, "t_reg_opts", "[cleanup]\nstale_after = \"30d\"\nstale_action = \"suspend\"\n");
	register_agent(&p, "idle", "a@b.co", "[\"a:b\"]", NULL);
	assert_int_equal(harness_sql("t_reg_opts", "UPDATE agents SET created_at = now() - "
	                                           "interval '90 days'"),
	                 0);

	/* A cleanup asked for a dry run, in the body or the query, runs nothing. */
	call(&p, "POST", "/v1/maintenance/cleanup", maint_key, "{\"dry_run\":true}", NULL, &r);
	assert_int_equal(r.status, 400);
	assert_string_equal(jstr(r.json, "code"), "bad_request");
	assert_non_null(strstr(jstr(r.json, "detail"), "no body"));
	harness_resp_free(&r);
	call(&p, "POST", "/v1/maintenance/cleanup?dry_run=true", maint_key, NULL, NULL, &r);
	assert_int_equal(r.status, 400);
	assert_string_equal(
	    json_string_value(json_array_get(json_object_get(r.json, "parameters"), 0)), "dry_run");
	harness_resp_free(&r);
	sql_value("t_reg_opts",
	          "SELECT (SELECT status FROM agents WHERE id = 'idle') || '|' || "
	          "(SELECT count(*) FROM audit_events WHERE type = 'maintenance.cleanup')",
	          n, sizeof(n));
	assert_string_equal(n, "active|0");

	/* A join token with a ttl of its own is not made with the default one. */
	call(&p, "POST", "/v1/agents/idle/join-tokens", registrar_key, "{\"ttl\":\"1m\"}", NULL,
	     &r);
	assert_int_equal(r.status, 400);
	assert_null(json_object_get(r.json, "join_token"));
	harness_resp_free(&r);
	assert_int_equal(
	    status_of(&p, "POST", "/v1/agents/idle/join-tokens?ttl=1m", registrar_key, NULL, NULL),
	    400);
	sql_value("t_reg_opts", "SELECT count(*) FROM agent_join_tokens", n, sizeof(n));
	assert_string_equal(n, "0");

	/* A misspelt filter does not list every agent; each unknown name is given. */
	call(&p, "GET", "/v1/agents?statu=decommissioned&limit=5&colour=red", auditor_key, NULL,
	     NULL, &r);
	assert_int_equal(r.status, 400);
	assert_null(json_object_get(r.json, "agents"));
	assert_int_equal(json_array_size(json_object_get(r.json, "parameters")), 2);
	assert_non_null(strstr(jstr(r.json, "detail"), "\"statu\""));
	assert_non_null(strstr(jstr(r.json, "detail"), "\"colour\""));
	harness_resp_free(&r);
	assert_int_equal(status_of(&p, "GET", "/v1/agents?status=active&limit=5&owner=a@b.co",
	                           auditor_key, NULL, NULL),
	                 200);

	/* The other registry endpoints read no query at all. */
	assert_int_equal(
	    status_of(&p, "POST", "/v1/agents/idle/suspend?reason=x", registrar_key, NULL, NULL),
	    400);
	assert_int_equal(status_of(&p, "GET", "/v1/agents/idle?fields=id", auditor_key, NULL, NULL),
	                 400);
	assert_int_equal(status_of(&p, "PATCH", "/v1/agents/idle?force=1", registrar_key,
	                           "{\"team\":\"x\"}", "If-Match: \"1\""),
	                 400);
	call(&p, "GET", "/v1/agents/idle", auditor_key, NULL, NULL, &r);
	assert_string_equal(jstr(r.json, "status"), "active");
	assert_null(jstr(r.json, "team"));
	harness_resp_free(&r);

	/* Without the options, the same calls do their work. */
	call(&p, "POST", "/v1/maintenance/cleanup", maint_key, NULL, NULL, &r);
	assert_int_equal(r.status, 200);
	assert_int_equal(jint(cleanup_job(&r, "stale_agents"), "suspended"), 1);
	harness_resp_free(&r);
	assert_int_equal(harness_idpd_stop(&p, SIGTERM, 10000), 0);
}

/*
 * A GET that carries a body asks for something no GET reads: refused, once
 * the caller is authenticated, and nothing is done.  An empty body
 * (Content-Length: 0) is no body.  The probes and the /.well-known
 * documents still ignore one.
 */
static void
a_body_sent_with_a_get_is_refused_and_nothing_is_done(void **state)
{
	struct idpd_proc p;
	struct http_resp r;
	char n[64];

	(void)state;
	assert_int_equal(harness_db_create("t_reg_get_body"), 0);
	start(&p, "t_reg_get_body", NULL);
	register_agent(&p, "reader", "a@b.co", "[\"a:b\"]", NULL);

	/* A filter in the body is not applied, and no unfiltered list comes back. */
	call(&p, "GET", "/v1/agents", auditor_key, "{\"status\":\"suspended\"}", NULL, &r);
	assert_int_equal(r.status, 400);
	assert_string_equal(jstr(r.json, "code"), "bad_request");
	assert_non_null(strstr(jstr(r.json, "detail"), "no body"));
	assert_null(json_object_get(r.json, "agents"));
	harness_resp_free(&r);
	/* The same on a route served on the I/O thread. */
	call(&p, "GET", "/v1/agents/reader", auditor_key, "{}", NULL, &r);
	assert_int_equal(r.status, 400);
	assert_string_equal(jstr(r.json, "code"), "bad_request");
	assert_null(jstr(r.json, "owner"));
	harness_resp_free(&r);
	/* A verification asked with a body walks nothing and records nothing. */
	call(&p, "GET", "/v1/audit/verify", auditor_key, "{\"from\":1}", NULL, &r);
	assert_int_equal(r.status, 400);
	assert_string_equal(jstr(r.json, "code"), "bad_request");
	assert_null(json_object_get(r.json, "ok"));
	harness_resp_free(&r);
	sql_value("t_reg_get_body",
	          "SELECT count(*) FROM audit_events WHERE type = 'audit.verified'", n, sizeof(n));
	assert_string_equal(n, "0");
	/* Authentication comes first: without a key it is a 401, body or not. */
	assert_int_equal(status_of(&p, "GET", "/v1/agents", NULL, "{}", NULL), 401);

	/* An empty body is none: the same calls are answered. */
	call(&p, "GET", "/v1/agents/reader", auditor_key, "", NULL, &r);
	assert_int_equal(r.status, 200);
	assert_string_equal(jstr(r.json, "id"), "reader");
	harness_resp_free(&r);
	call(&p, "GET", "/v1/audit/verify", auditor_key, "", NULL, &r);
	assert_int_equal(r.status, 200);
	assert_true(json_is_true(json_object_get(r.json, "ok")));
	harness_resp_free(&r);
	/* Recorded without waiting: it may land just after the answer. */
	for (int i = 0; i < 100; i++) {
		sql_value("t_reg_get_body",
		          "SELECT count(*) FROM audit_events WHERE type = 'audit.verified'", n,
		          sizeof(n));
		if (strcmp(n, "0") != 0)
			break;
		sleep_ms(50);
	}
	assert_string_equal(n, "1");

	/* The probes and the published documents take a GET as they always did. */
	assert_int_equal(status_of(&p, "GET", "/healthz", NULL, "{}", NULL), 200);
	assert_int_equal(status_of(&p, "GET", "/.well-known/jwks.json", NULL, "{}", NULL), 200);
	assert_int_equal(harness_idpd_stop(&p, SIGTERM, 10000), 0);
}

/* Hands a PostgreSQL session holding a lock back after hold_ms. */
struct lock_holder {
	PGconn *pg;
	int hold_ms;
};

static void *
release_after(void *arg)
{
	struct lock_holder *h = arg;

	sleep_ms(h->hold_ms);
	PQclear(PQexec(h->pg, "ROLLBACK"));
	return NULL;
}

/*
 * A suspension whose audit event takes long to commit stamps its
 * revocation epoch when it commits, not when it began: other instances
 * issue tokens until the change reaches them, and those must fall before
 * the epoch whatever the audit wait was.
 */
static void
revocation_epoch_is_stamped_after_the_audit_wait(void **state)
{
	struct idpd_proc p;
	struct lock_holder h = {NULL, 1500};
	pthread_t t;
	char url[256], v[64];
	PGresult *res;

	(void)state;
	assert_int_equal(harness_db_create("t_reg_epoch"), 0);
	start(&p, "t_reg_epoch", "[identity]\nleeway = \"0s\"\n[audit]\ntimeout = \"10s\"\n");
	register_agent(&p, "slow", "a@b.co", "[\"a:b\"]", NULL);
	harness_db_url("t_reg_epoch", url, sizeof(url));
	h.pg = PQconnectdb(url);
	assert_int_equal(PQstatus(h.pg), CONNECTION_OK);
	res = PQexec(h.pg, "BEGIN; LOCK TABLE audit_events IN ACCESS EXCLUSIVE MODE");
	assert_int_equal(PQresultStatus(res), PGRES_COMMAND_OK);
	PQclear(res);
	assert_int_equal(pthread_create(&t, NULL, release_after, &h), 0);
	assert_int_equal(
	    status_of(&p, "POST", "/v1/agents/slow/suspend", registrar_key, NULL, NULL), 200);
	pthread_join(t, NULL);
	PQfinish(h.pg);
	sql_value("t_reg_epoch",
	          "SELECT revocation_epoch >= status_changed_at + interval '1400 milliseconds' "
	          "FROM agents WHERE id = 'slow'",
	          v, sizeof(v));
	assert_string_equal(v, "t");
	/* The event says when the change was stamped first: never later. */
	sql_value("t_reg_epoch",
	          "SELECT (e.body::json->'detail'->>'revocation_epoch')::timestamptz <= "
	          "a.revocation_epoch FROM audit_events e, agents a WHERE a.id = 'slow' AND "
	          "e.type = 'agent.suspended'",
	          v, sizeof(v));
	assert_string_equal(v, "t");
	assert_int_equal(harness_idpd_stop(&p, SIGTERM, 10000), 0);
}

/* A join token for id, spent at once: the agent attests. */
static void
attest_now(const struct idpd_proc *p, const char *id)
{
	char path[160], body[256];
	struct http_resp r;

	snprintf(path, sizeof(path), "/v1/agents/%s/join-tokens", id);
	call(p, "POST", path, registrar_key, NULL, NULL, &r);
	assert_int_equal(r.status, 201);
	snprintf(body, sizeof(body), "{\"method\":\"join_token\",\"join_token\":\"%s\"}",
	         jstr(r.json, "join_token"));
	harness_resp_free(&r);
	snprintf(path, sizeof(path), "/v1/agents/%s/attest", id);
	assert_int_equal(status_of(p, "POST", path, NULL, body, NULL), 200);
}

static const char *
status_in_db(const char *db, const char *id, char *out, size_t len)
{
	char sql[256];

	snprintf(sql, sizeof(sql), "SELECT status FROM agents WHERE id = '%s'", id);
	sql_value(db, sql, out, len);
	return out;
}

/*
 * Every agent here was registered three days ago; stale_after is one day.
 * What counts as use: an attestation (credential_last_rotated), a touch
 * still in this instance's memory (written before the job reads), and a
 * use within one last_active_flush of the cutoff (another instance may not
 * have written it yet).
 */
static void
cleanup_does_not_suspend_an_agent_in_use(void **state)
{
	struct idpd_proc p;
	struct http_resp r;
	char v[64];

	(void)state;
	assert_int_equal(harness_db_create("t_reg_in_use"), 0);
	start(&p, "t_reg_in_use",
	      "[cleanup]\nstale_after = \"1d\"\nstale_action = \"suspend\"\n"
	      "[registry]\nlast_active_flush = \"1h\"\n");
	register_agent(&p, "idle", "a@b.co", "[\"a:b\"]", NULL);
	register_agent(&p, "attested", "a@b.co", "[\"a:b\"]", NULL);
	register_agent(&p, "rotated", "a@b.co", "[\"a:b\"]", NULL);
	register_agent(&p, "touched", "a@b.co", "[\"a:b\"]", NULL);
	register_agent(&p, "recent", "a@b.co", "[\"a:b\"]", NULL);
	register_agent(&p, "long-gone", "a@b.co", "[\"a:b\"]", NULL);
	assert_int_equal(harness_sql("t_reg_in_use", "UPDATE agents SET created_at = now() - "
	                                             "interval '3 days'"),
	                 0);
	attest_now(&p, "attested");
	attest_now(&p, "touched");
	/* rotated attested an hour ago, on whichever instance: only the column says so. */
	assert_int_equal(harness_sql("t_reg_in_use",
	                             "UPDATE agents SET credential_last_rotated = now() - interval "
	                             "'1 hour' WHERE id = 'rotated';"
	                             /* touched: only its touch, unwritten, says so */
	                             "UPDATE agents SET credential_last_rotated = now() - interval "
	                             "'3 days' WHERE id = 'touched';"
	                             /* within one flush period (1h) of the cutoff */
	                             "UPDATE agents SET last_active = now() - interval '1 day 30 "
	                             "minutes' WHERE id = 'recent';"
	                             "UPDATE agents SET last_active = now() - interval '1 day 2 "
	                             "hours' WHERE id = 'long-gone'"),
	                 0);
	call(&p, "POST", "/v1/maintenance/cleanup", maint_key, NULL, NULL, &r);
	assert_int_equal(r.status, 200);
	assert_int_equal(jint(cleanup_job(&r, "stale_agents"), "suspended"), 2);
	harness_resp_free(&r);
	assert_string_equal(status_in_db("t_reg_in_use", "idle", v, sizeof(v)), "suspended");
	assert_string_equal(status_in_db("t_reg_in_use", "long-gone", v, sizeof(v)), "suspended");
	assert_string_equal(status_in_db("t_reg_in_use", "attested", v, sizeof(v)), "active");
	assert_string_equal(status_in_db("t_reg_in_use", "rotated", v, sizeof(v)), "active");
	assert_string_equal(status_in_db("t_reg_in_use", "touched", v, sizeof(v)), "active");
	assert_string_equal(status_in_db("t_reg_in_use", "recent", v, sizeof(v)), "active");
	/* The attestation's touch was written by the job, not by the flusher. */
	sql_value(
	    "t_reg_in_use",
	    "SELECT last_active > now() - interval '1 minute' FROM agents WHERE id = 'touched'", v,
	    sizeof(v));
	assert_string_equal(v, "t");
	assert_int_equal(harness_idpd_stop(&p, SIGTERM, 10000), 0);
}

/* Where Debian's libfaketime is, for this machine's architecture; false if nowhere. */
static bool
faketime_lib(char *out, size_t len)
{
	glob_t g;
	bool found;

	if (glob("/usr/lib/*/faketime/libfaketimeMT.so.1", 0, NULL, &g) != 0)
		return false;
	found = g.gl_pathc > 0 && access(g.gl_pathv[0], R_OK) == 0;
	if (found)
		snprintf(out, len, "%s", g.gl_pathv[0]);
	globfree(&g);
	return found;
}

/*
 * An instance whose clock runs two days ahead of PostgreSQL's (libfaketime,
 * a real clock fault) cuts nothing early: the cutoffs are PostgreSQL's.
 */
static void
cleanup_cutoffs_follow_postgres_clock_not_the_instance_clock(void **state)
{
	char bin[4096] = "", lib[512];
	struct idpd_proc p;
	struct http_resp r;
	char n[64];
	int rc;

	(void)state;
	/* make deps installs it; without it this test cannot run, and says so by failing. */
	if (!faketime_lib(lib, sizeof(lib)))
		fail_msg("libfaketimeMT.so.1 is missing: run make deps (package libfaketime)");
	assert_int_equal(harness_db_create("t_reg_skew"), 0);
	start(&p, "t_reg_skew", NULL);
	register_agent(&p, "fresh", "a@b.co", "[\"a:b\"]", NULL);
	call(&p, "POST", "/v1/agents/fresh/join-tokens", registrar_key, NULL, NULL, &r);
	assert_int_equal(r.status, 201);
	harness_resp_free(&r);
	assert_int_equal(harness_idpd_stop(&p, SIGTERM, 10000), 0);
	/* An approval expired an hour ago (kept for the 1d retention below), and
	 * the record of a revoked token that expires in an hour. */
	assert_int_equal(
	    harness_sql(
	        "t_reg_skew",
	        "INSERT INTO tasks (id, human_principal, idp, root_agent, scope, expires_at) "
	        "VALUES ('task_skew0123456789abcdef', 'a@b.co', 'corp', 'fresh', '{a:b}', "
	        "now() + interval '1 hour');"
	        "INSERT INTO approvals (id, kind, agent_id, task_id, human_principal, "
	        "agent_owner, scope, target, reason, human_idp, created_at, expires_at) "
	        "VALUES ('apr_skew0123456789abcdef', 'token', 'fresh', "
	        "'task_skew0123456789abcdef', 'a@b.co', 'a@b.co', '{a:b}', 'https://x', 'r', "
	        "'corp', now() - interval '2 hours', now() - interval '1 hour');"
	        "INSERT INTO revoked_tokens (jti, kind, expires_at, revoked_by) VALUES "
	        "('skew0123456789abcdef', 'access', now() + interval '1 hour', 'test')"),
	    0);

	/* libfaketime hangs a process that ASan instruments: under make sanitize
	 * this one idpd is the plain build (IDPD_PLAIN_BIN); the question here
	 * is which clock the SQL uses, not memory safety. */
	if (getenv("IDPD_PLAIN_BIN") != NULL) {
		snprintf(bin, sizeof(bin), "%s", getenv("IDPD_BIN") ? getenv("IDPD_BIN") : "");
		assert_int_equal(access(getenv("IDPD_PLAIN_BIN"), X_OK), 0);
		setenv("IDPD_BIN", getenv("IDPD_PLAIN_BIN"), 1);
	}
	setenv("LD_PRELOAD", lib, 1);
	setenv("FAKETIME", "+2d", 1);
	make_keys();
	{
		char toml[4096];

		snprintf(toml, sizeof(toml),
		         "[audit]\nretention = \"1d\"\n"
		         "[cleanup]\nstale_after = \"1d\"\nstale_action = \"suspend\"\n%s",
		         keys_toml);
		rc = harness_idpd_start(&p, "t_reg_skew", NULL, toml);
	}
	unsetenv("LD_PRELOAD");
	unsetenv("FAKETIME");
	if (bin[0] != '\0')
		setenv("IDPD_BIN", bin, 1);
	assert_int_equal(rc, 0);
	call(&p, "POST", "/v1/maintenance/cleanup", maint_key, NULL, NULL, &r);
	if (r.status != 200) {
		fprintf(stderr, "cleanup: %ld %s\n", r.status, r.body);
		harness_idpd_dump_log(&p);
	}
	assert_int_equal(r.status, 200);
	assert_int_equal(jint(cleanup_job(&r, "stale_agents"), "stale"), 0);
	assert_int_equal(jint(cleanup_job(&r, "attestation"), "join_tokens_deleted"), 0);
	assert_int_equal(jint(cleanup_job(&r, "approvals"), "approvals_deleted"), 0);
	assert_int_equal(jint(cleanup_job(&r, "revocations"), "revoked_tokens_deleted"), 0);
	harness_resp_free(&r);
	sql_value(
	    "t_reg_skew",
	    "SELECT (SELECT status FROM agents WHERE id = 'fresh') || '|' || "
	    "(SELECT count(*) FROM agent_join_tokens) || '|' || "
	    "(SELECT count(*) FROM approvals) || '|' || (SELECT count(*) FROM revoked_tokens)",
	    n, sizeof(n));
	assert_string_equal(n, "active|1|1|1");
	assert_int_equal(harness_idpd_stop(&p, SIGTERM, 10000), 0);
}

static void
cleanup_handles_departed_owners_and_refuses_them_as_sponsors(void **state)
{
	struct idpd_proc p;
	struct http_resp r;
	char dir[] = "/tmp/idpd-departed-XXXXXX", path[256], toml[1024], body[4096];
	FILE *f;

	(void)state;
	assert_non_null(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/departed.txt", dir);
	f = fopen(path, "w");
	assert_non_null(f);
	fputs("# left the company\n\nBob@Company.com\n  okta:00u-gone  \n", f);
	fclose(f);
	assert_int_equal(harness_db_create("t_reg_departed"), 0);
	snprintf(toml, sizeof(toml),
	         "[registry]\ndeparted_owners = \"%s\"\n[cleanup]\nstale_after = \"0d\"\n%s", path,
	         okta_idp_toml());
	start(&p, "t_reg_departed", toml);
	register_agent(&p, "kept", "alice@company.com", "[\"a:b\"]", NULL);
	/* Registered before bob left. */
	assert_int_equal(harness_sql("t_reg_departed",
	                             "INSERT INTO agents (id, agent_type, owner, capabilities, "
	                             "max_chain_depth, max_scope_per_delegation) VALUES "
	                             "('orphan-1', 't', 'bob@company.com', '{a:b}', 1, 'read'), "
	                             "('orphan-2', 't', 'okta:00u-gone', '{a:b}', 1, 'read')"),
	                 0);
	/* A departed owner cannot sponsor a new agent, nor take one over. */
	agent_body(body, sizeof(body), "new-for-bob", "BOB@company.com", "[\"a:b\"]", NULL);
	call(&p, "POST", "/v1/agents", registrar_key, body, NULL, &r);
	assert_int_equal(r.status, 422);
	assert_true(names_field(r.json, "owner"));
	harness_resp_free(&r);
	call(&p, "PATCH", "/v1/agents/kept", registrar_key, "{\"owner\":\"okta:00u-gone\"}",
	     "If-Match: \"1\"", &r);
	assert_int_equal(r.status, 422);
	assert_true(names_field(r.json, "owner"));
	harness_resp_free(&r);

	call(&p, "POST", "/v1/maintenance/cleanup", maint_key, NULL, NULL, &r);
	assert_int_equal(r.status, 200);
	assert_string_equal(jstr(cleanup_job(&r, "departed_owners"), "action"), "report");
	assert_int_equal(jint(cleanup_job(&r, "departed_owners"), "departed_owners"), 2);
	assert_int_equal(jint(cleanup_job(&r, "departed_owners"), "unowned"), 2);
	assert_true(json_is_true(json_object_get(cleanup_job(&r, "stale_agents"), "skipped")));
	harness_resp_free(&r);
	assert_int_equal(harness_idpd_stop(&p, SIGTERM, 10000), 0);

	snprintf(
	    toml, sizeof(toml),
	    "[registry]\ndeparted_owners = \"%s\"\n[cleanup]\ndeparted_action = \"suspend\"\n%s",
	    path, okta_idp_toml());
	start(&p, "t_reg_departed", toml);
	call(&p, "POST", "/v1/maintenance/cleanup", maint_key, NULL, NULL, &r);
	assert_int_equal(r.status, 200);
	assert_int_equal(jint(cleanup_job(&r, "departed_owners"), "suspended"), 2);
	/* Suspended, and still reported until someone takes them over. */
	assert_int_equal(jint(cleanup_job(&r, "departed_owners"), "unowned"), 2);
	harness_resp_free(&r);
	call(&p, "GET", "/v1/agents/orphan-1", auditor_key, NULL, NULL, &r);
	assert_string_equal(jstr(r.json, "status"), "suspended");
	harness_resp_free(&r);
	call(&p, "GET", "/v1/agents/kept", auditor_key, NULL, NULL, &r);
	assert_string_equal(jstr(r.json, "status"), "active");
	harness_resp_free(&r);
	/* Nor can an agent of someone who left be resumed (422 on owner, as an
	 * owner change to them), with or without If-Match; nothing changes. */
	call(&p, "POST", "/v1/agents/orphan-1/resume", registrar_key, NULL, NULL, &r);
	assert_int_equal(r.status, 422);
	assert_string_equal(jstr(r.json, "code"), "unprocessable");
	assert_true(names_field(r.json, "owner"));
	harness_resp_free(&r);
	call(&p, "POST", "/v1/agents/orphan-2/resume", registrar_key,
	     "{\"reason\":\"back from leave\"}", "If-Match: *", &r);
	assert_int_equal(r.status, 422);
	assert_true(names_field(r.json, "owner"));
	harness_resp_free(&r);
	call(&p, "GET", "/v1/agents/orphan-1", auditor_key, NULL, NULL, &r);
	assert_string_equal(jstr(r.json, "status"), "suspended");
	harness_resp_free(&r);
	{
		char n[64];

		sql_value("t_reg_departed",
		          "SELECT count(*) FROM agents WHERE status = 'suspended' AND id LIKE "
		          "'orphan-%'",
		          n, sizeof(n));
		assert_string_equal(n, "2");
		sql_value("t_reg_departed",
		          "SELECT count(*) FROM audit_events WHERE type = 'agent.resumed'", n,
		          sizeof(n));
		assert_string_equal(n, "0");
	}
	/* Reassigning the owner clears the report; a second run suspends nothing. */
	assert_int_equal(status_of(&p, "PATCH", "/v1/agents/orphan-1", registrar_key,
	                           "{\"owner\":\"carol@company.com\"}", NULL),
	                 428);
	call(&p, "GET", "/v1/agents/orphan-1", auditor_key, NULL, NULL, &r);
	{
		char im[64];

		snprintf(im, sizeof(im), "If-Match: \"%lld\"",
		         (long long)json_integer_value(json_object_get(r.json, "version")));
		harness_resp_free(&r);
		assert_int_equal(status_of(&p, "PATCH", "/v1/agents/orphan-1", registrar_key,
		                           "{\"owner\":\"carol@company.com\"}", im),
		                 200);
	}
	call(&p, "POST", "/v1/maintenance/cleanup", maint_key, NULL, NULL, &r);
	assert_int_equal(r.status, 200);
	assert_int_equal(jint(cleanup_job(&r, "departed_owners"), "suspended"), 0);
	assert_int_equal(jint(cleanup_job(&r, "departed_owners"), "unowned"), 1);
	harness_resp_free(&r);
	/* With an accountable owner it resumes, and the next run leaves it active. */
	assert_int_equal(
	    status_of(&p, "POST", "/v1/agents/orphan-1/resume", registrar_key, NULL, NULL), 200);
	call(&p, "POST", "/v1/maintenance/cleanup", maint_key, NULL, NULL, &r);
	assert_int_equal(r.status, 200);
	assert_int_equal(jint(cleanup_job(&r, "departed_owners"), "suspended"), 0);
	harness_resp_free(&r);
	call(&p, "GET", "/v1/agents/orphan-1", auditor_key, NULL, NULL, &r);
	assert_string_equal(jstr(r.json, "status"), "active");
	harness_resp_free(&r);
	/* A broken HR file fails its job (500, named), not the others. */
	f = fopen(path, "w");
	assert_non_null(f);
	fputs("not an owner at all\n", f);
	fclose(f);
	call(&p, "POST", "/v1/maintenance/cleanup", maint_key, NULL, NULL, &r);
	assert_int_equal(r.status, 500);
	assert_string_equal(jstr(cleanup_job(&r, "departed_owners"), "status"), "error");
	assert_non_null(strstr(jstr(cleanup_job(&r, "departed_owners"), "error"), "line 1"));
	assert_string_equal(jstr(cleanup_job(&r, "audit_retention"), "status"), "ok");
	harness_resp_free(&r);
	assert_int_equal(harness_idpd_stop(&p, SIGTERM, 10000), 0);
	unlink(path);
	rmdir(dir);
}

/* Whether an error of problem on field has a message containing s. */
static bool
field_message_has(json_t *problem, const char *field, const char *s)
{
	json_t *e;
	size_t i;

	json_array_foreach(json_object_get(problem, "errors"), i, e)
	{
		if (jstr(e, "field") != NULL && strcmp(jstr(e, "field"), field) == 0 &&
		    jstr(e, "message") != NULL && strstr(jstr(e, "message"), s) != NULL)
			return true;
	}
	return false;
}

/*
 * An owner "idp:subject" is that provider's principal subject and no one
 * else (docs/tokens.md, "Who decides"): one naming no configured [[idp]]
 * could never act as the owner.  It is refused at registration and in an
 * owner change (422 on owner, naming the label; nothing written); an agent
 * registered before its provider was removed from the configuration is
 * reported by the departed_owners job (with no departed-owners file, too),
 * may still change its owner, and is not resumed once suspended.
 */
static void
an_owner_naming_no_configured_idp_is_refused_and_reported(void **state)
{
	struct idpd_proc p;
	struct http_resp r;
	char body[4096], n[64];
	json_t *ids;

	(void)state;
	assert_int_equal(harness_db_create("t_reg_owner_idp"), 0);
	start(&p, "t_reg_owner_idp", okta_idp_toml());
	register_agent(&p, "okta-owned", "okta:00u1abcd", "[\"a:b\"]", NULL);
	agent_body(body, sizeof(body), "nowhere-owned", "nowhere:00u1abcd", "[\"a:b\"]", NULL);
	call(&p, "POST", "/v1/agents", registrar_key, body, NULL, &r);
	assert_int_equal(r.status, 422);
	assert_true(field_message_has(r.json, "owner", "\"nowhere\""));
	harness_resp_free(&r);
	call(&p, "PATCH", "/v1/agents/okta-owned", registrar_key, "{\"owner\":\"nowhere:00u1\"}",
	     "If-Match: \"1\"", &r);
	assert_int_equal(r.status, 422);
	assert_true(field_message_has(r.json, "owner", "\"nowhere\""));
	harness_resp_free(&r);
	sql_value("t_reg_owner_idp",
	          "SELECT count(*) || '|' || max(version) || '|' || max(owner) || '|' || "
	          "(SELECT count(*) FROM audit_events WHERE type LIKE 'agent.%') FROM agents",
	          n, sizeof(n));
	assert_string_equal(n, "1|1|okta:00u1abcd|1");

	/* Registered while a provider "gone" was configured. */
	assert_int_equal(
	    harness_sql("t_reg_owner_idp",
	                "INSERT INTO agents (id, agent_type, owner, capabilities, "
	                "max_chain_depth, max_scope_per_delegation) VALUES "
	                "('legacy', 't', 'gone:00u9', '{a:b}', 1, 'read'), "
	                "('legacy-retired', 't', 'gone:00u8', '{a:b}', 1, 'read');"
	                "UPDATE agents SET status = 'decommissioned', revocation_epoch "
	                "= now(), status_changed_at = now(), status_changed_by = 'ops', "
	                "status_reason = 'retired' WHERE id = 'legacy-retired'"),
	    0);
	call(&p, "POST", "/v1/maintenance/cleanup", maint_key, NULL, NULL, &r);
	assert_int_equal(r.status, 200);
	assert_string_equal(jstr(cleanup_job(&r, "departed_owners"), "status"), "ok");
	assert_true(json_is_true(json_object_get(cleanup_job(&r, "departed_owners"), "skipped")));
	assert_int_equal(jint(cleanup_job(&r, "departed_owners"), "owner_idp_unknown"), 1);
	ids = json_object_get(cleanup_job(&r, "departed_owners"), "owner_idp_unknown_ids");
	assert_int_equal(json_array_size(ids), 1);
	assert_string_equal(json_string_value(json_array_get(ids, 0)), "legacy");
	harness_resp_free(&r);
	/* Reported, never suspended by the job; suspended by hand, it stays so. */
	assert_int_equal(
	    status_of(&p, "POST", "/v1/agents/legacy/suspend", registrar_key, NULL, NULL), 200);
	call(&p, "POST", "/v1/agents/legacy/resume", registrar_key, NULL, NULL, &r);
	assert_int_equal(r.status, 422);
	assert_true(field_message_has(r.json, "owner", "\"gone\""));
	harness_resp_free(&r);
	/* Given an owner someone can act as, it resumes and is no longer reported. */
	assert_int_equal(status_of(&p, "PATCH", "/v1/agents/legacy", registrar_key,
	                           "{\"owner\":\"okta:00u9\"}", "If-Match: \"2\""),
	                 200);
	assert_int_equal(
	    status_of(&p, "POST", "/v1/agents/legacy/resume", registrar_key, NULL, NULL), 200);
	call(&p, "POST", "/v1/maintenance/cleanup", maint_key, NULL, NULL, &r);
	assert_int_equal(r.status, 200);
	assert_int_equal(jint(cleanup_job(&r, "departed_owners"), "owner_idp_unknown"), 0);
	assert_null(json_object_get(cleanup_job(&r, "departed_owners"), "owner_idp_unknown_ids"));
	harness_resp_free(&r);
	assert_int_equal(harness_idpd_stop(&p, SIGTERM, 10000), 0);
}

/*
 * An idpd older than migration 0011 writes audit rows without advancing its
 * chain in audit_chains (the table the sinks read to find work): the
 * cleanup brings such a chain up to date, and a second run finds nothing.
 */
static void
cleanup_brings_chains_written_by_older_instances_up_to_date(void **state)
{
	struct idpd_proc p;
	struct http_resp r;
	char n[64];

	(void)state;
	assert_int_equal(harness_db_create("t_reg_chains"), 0);
	start(&p, "t_reg_chains", NULL);
	register_agent(&p, "chains-1", "a@b.co", "[\"a:b\"]", NULL);
	/* Three rows as an older instance writes them: no audit_chains upsert. */
	assert_int_equal(
	    harness_sql("t_reg_chains",
	                "INSERT INTO audit_events (event_id, writer_id, seq, ts, type, "
	                "severity, body, prev_hash, hash) SELECT event_id || '-old', "
	                "'older-instance/1', seq, ts, type, severity, body, prev_hash, "
	                "hash FROM audit_events ORDER BY id LIMIT 3"),
	    0);
	call(&p, "POST", "/v1/maintenance/cleanup", maint_key, NULL, NULL, &r);
	assert_int_equal(r.status, 200);
	assert_int_equal(jint(cleanup_job(&r, "audit_chains"), "advanced"), 1);
	harness_resp_free(&r);
	assert_int_equal(harness_sql_value("t_reg_chains",
	                                   "SELECT last_seq FROM audit_chains WHERE writer_id = "
	                                   "'older-instance/1'",
	                                   n, sizeof(n)),
	                 0);
	assert_string_equal(n, "3");
	/* This instance's own chain was current all along; nothing is left. */
	call(&p, "POST", "/v1/maintenance/cleanup", maint_key, NULL, NULL, &r);
	assert_int_equal(r.status, 200);
	assert_int_equal(jint(cleanup_job(&r, "audit_chains"), "advanced"), 0);
	harness_resp_free(&r);
	assert_int_equal(harness_idpd_stop(&p, SIGTERM, 10000), 0);
}

static void
cleanup_deletes_expired_audit_events_keeping_chains_verifiable(void **state)
{
	struct idpd_proc p;
	struct http_resp r;
	char n[64], toml[512];

	(void)state;
	assert_int_equal(harness_db_create("t_reg_retention"), 0);
	/* A sink that can never ship: its backlog must survive retention. */
	snprintf(toml, sizeof(toml),
	         "[[audit.sinks]]\nname = \"down\"\ntype = \"syslog\"\naddress = \"127.0.0.1:%d\"\n"
	         "connect_timeout = \"100ms\"\n",
	         harness_free_port());
	start(&p, "t_reg_retention", toml);
	for (int i = 0; i < 5; i++) {
		char id[32];

		snprintf(id, sizeof(id), "ret-%d", i);
		register_agent(&p, id, "a@b.co", "[\"a:b\"]", NULL);
	}
	assert_int_equal(harness_sql("t_reg_retention",
	                             "UPDATE audit_events SET ts = ts - interval '400 days' "
	                             "WHERE seq <= 3"),
	                 0);
	call(&p, "POST", "/v1/maintenance/cleanup", maint_key, NULL, NULL, &r);
	assert_int_equal(r.status, 200);
	assert_int_equal(jint(cleanup_job(&r, "audit_retention"), "deleted"), 0);
	harness_resp_free(&r);
	assert_int_equal(harness_idpd_stop(&p, SIGTERM, 10000), 0);

	/* Without the sink, the three old events go, as a prefix of the chain. */
	start(&p, "t_reg_retention", "[cleanup]\nbatch_size = 10\n");
	call(&p, "POST", "/v1/maintenance/cleanup", maint_key, NULL, NULL, &r);
	assert_int_equal(r.status, 200);
	assert_int_equal(jint(cleanup_job(&r, "audit_retention"), "deleted"), 3);
	harness_resp_free(&r);
	sql_value("t_reg_retention",
	          "SELECT min(seq) FROM audit_events WHERE type = 'agent.registered'", n,
	          sizeof(n));
	assert_string_equal(n, "4");
	/* The anchor verify starts from: the last row removed, its hash next in line. */
	sql_value("t_reg_retention",
	          "SELECT c.pruned_seq || ' ' || (c.pruned_hash = e.prev_hash) FROM audit_chains c "
	          "JOIN audit_events e ON e.writer_id = c.writer_id AND e.seq = 4 "
	          "WHERE e.type = 'agent.registered'",
	          n, sizeof(n));
	assert_string_equal(n, "3 true");
	call(&p, "GET", "/v1/audit/verify", admin_key, NULL, NULL, &r);
	assert_int_equal(r.status, 200);
	assert_true(json_is_true(json_object_get(r.json, "ok")));
	harness_resp_free(&r);
	/* Idempotent. */
	call(&p, "POST", "/v1/maintenance/cleanup", maint_key, NULL, NULL, &r);
	assert_int_equal(jint(cleanup_job(&r, "audit_retention"), "deleted"), 0);
	harness_resp_free(&r);
	/* The next row deleted behind retention's back is a break. */
	assert_int_equal(harness_sql("t_reg_retention",
	                             "DELETE FROM audit_events WHERE seq = 4 AND type = "
	                             "'agent.registered'"),
	                 0);
	call(&p, "GET", "/v1/audit/verify", admin_key, NULL, NULL, &r);
	assert_int_equal(r.status, 200);
	assert_true(json_is_false(json_object_get(r.json, "ok")));
	assert_string_equal(jstr(json_object_get(r.json, "broken_at"), "reason"),
	                    "rows are missing at the start of the chain (after the last row "
	                    "retention removed)");
	harness_resp_free(&r);
	assert_int_equal(harness_idpd_stop(&p, SIGTERM, 10000), 0);

	/* retention "0d" keeps everything. */
	assert_int_equal(harness_sql("t_reg_retention",
	                             "UPDATE audit_events SET ts = ts - interval '4000 days'"),
	                 0);
	start(&p, "t_reg_retention", "[audit]\nretention = \"0d\"\n");
	call(&p, "POST", "/v1/maintenance/cleanup", maint_key, NULL, NULL, &r);
	assert_int_equal(jint(cleanup_job(&r, "audit_retention"), "deleted"), 0);
	assert_true(json_is_true(json_object_get(cleanup_job(&r, "audit_retention"), "skipped")));
	harness_resp_free(&r);
	assert_int_equal(harness_idpd_stop(&p, SIGTERM, 10000), 0);
}

static void
a_second_cleanup_while_one_runs_gets_409(void **state)
{
	struct idpd_proc p;
	struct http_resp r;
	char url[256];
	PGconn *pg;
	PGresult *res;

	(void)state;
	assert_int_equal(harness_db_create("t_reg_lock"), 0);
	start(&p, "t_reg_lock", NULL);
	/* Hold the cleanup lock as a running cleanup (on any instance) would. */
	harness_db_url("t_reg_lock", url, sizeof(url));
	pg = PQconnectdb(url);
	assert_int_equal(PQstatus(pg), CONNECTION_OK);
	{
		char sql[96];

		snprintf(sql, sizeof(sql), "SELECT pg_advisory_lock(%lld)",
		         (long long)MAINTENANCE_LOCK_KEY);
		res = PQexec(pg, sql);
	}
	assert_int_equal(PQresultStatus(res), PGRES_TUPLES_OK);
	PQclear(res);
	call(&p, "POST", "/v1/maintenance/cleanup", maint_key, NULL, NULL, &r);
	assert_int_equal(r.status, 409);
	assert_string_equal(jstr(r.json, "code"), "cleanup_running");
	harness_resp_free(&r);
	PQfinish(pg); /* the lock goes with the session, once its backend has exited */
	for (int i = 0; i < 200; i++) {
		call(&p, "POST", "/v1/maintenance/cleanup", maint_key, NULL, NULL, &r);
		if (r.status != 409)
			break;
		harness_resp_free(&r);
		sleep_ms(10);
	}
	assert_int_equal(r.status, 200);
	assert_non_null(cleanup_job(&r, "stale_agents"));
	assert_non_null(cleanup_job(&r, "departed_owners"));
	assert_non_null(cleanup_job(&r, "audit_retention"));
	harness_resp_free(&r);
	/* The run released its lock: another run can start right away. */
	assert_int_equal(status_of(&p, "POST", "/v1/maintenance/cleanup", maint_key, NULL, NULL),
	                 200);
	assert_int_equal(harness_idpd_stop(&p, SIGTERM, 10000), 0);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(register_then_read_back_with_location_etag_and_audit),
	    cmocka_unit_test(duplicate_id_is_a_conflict),
	    cmocka_unit_test(bad_input_gets_422_naming_the_field_and_writes_nothing),
	    cmocka_unit_test(auth_failures_are_401_and_403),
	    cmocka_unit_test(patch_needs_if_match_and_refuses_a_stale_version),
	    cmocka_unit_test(an_agent_needing_approval_for_every_class_is_served),
	    cmocka_unit_test(transitions_suspend_resume_and_decommission_is_terminal),
	    cmocka_unit_test(migration_0015_sets_legacy_credential_types_to_what_agents_get),
	    cmocka_unit_test(list_filters_and_pages_through_every_agent_once),
	    cmocka_unit_test(a_change_through_one_instance_shows_on_the_other_within_100ms),
	    cmocka_unit_test(cache_reloads_after_the_listener_reconnects),
	    cmocka_unit_test(cleanup_reports_or_suspends_stale_agents_idempotently),
	    cmocka_unit_test(options_an_endpoint_does_not_read_are_refused_and_nothing_changes),
	    cmocka_unit_test(a_body_sent_with_a_get_is_refused_and_nothing_is_done),
	    cmocka_unit_test(revocation_epoch_is_stamped_after_the_audit_wait),
	    cmocka_unit_test(cleanup_does_not_suspend_an_agent_in_use),
	    cmocka_unit_test(cleanup_cutoffs_follow_postgres_clock_not_the_instance_clock),
	    cmocka_unit_test(cleanup_handles_departed_owners_and_refuses_them_as_sponsors),
	    cmocka_unit_test(an_owner_naming_no_configured_idp_is_refused_and_reported),
	    cmocka_unit_test(cleanup_deletes_expired_audit_events_keeping_chains_verifiable),
	    cmocka_unit_test(cleanup_brings_chains_written_by_older_instances_up_to_date),
	    cmocka_unit_test(a_second_cleanup_while_one_runs_gets_409),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
