/*
 * Unit tests of the registry's pure parts: id and owner rules, validation of
 * registrations field by field, JSON merge patch, records built from
 * PostgreSQL rows and rendered as JSON, the cache (versions, deletion,
 * growth, full reloads, concurrent readers), keyset cursors and the
 * departed-owners list.  No database: rows are built with libpq's
 * client-side result constructors.
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>

#include "../../src/registry/registry_int.h"
#include "idpd/clock.h"

/* ---- ids and owners ---- */

static void
id_pattern_is_enforced_exactly(void **state)
{
	char id[200];

	(void)state;
	assert_true(registry_id_valid("agent-planning-prod-001"));
	assert_true(registry_id_valid("a"));
	assert_true(registry_id_valid("0.9_x-y"));
	assert_false(registry_id_valid(""));
	assert_false(registry_id_valid(NULL));
	assert_false(registry_id_valid("Agent"));
	assert_false(registry_id_valid("-a"));
	assert_false(registry_id_valid(".a"));
	assert_false(registry_id_valid("_a"));
	assert_false(registry_id_valid("a b"));
	assert_false(registry_id_valid("a/b"));
	assert_false(registry_id_valid("a:b"));
	assert_false(registry_id_valid("caf\xc3\xa9"));
	memset(id, 'a', 128);
	id[128] = '\0';
	assert_true(registry_id_valid(id));
	id[128] = 'a';
	id[129] = '\0';
	assert_false(registry_id_valid(id));
}

static void
owner_is_an_email_or_an_idp_subject(void **state)
{
	static const char *const good[] = {
	    "alice@company.com",
	    "Alice.Smith+agents@eu.company.co.uk",
	    "a@b.co",
	    "okta:00u1abcd2EFGH3ijk4x5",
	    "azure-ad:4f3c@tenant",
	    "google.workspace:1234567890",
	};
	static const char *const bad[] = {
	    "alice",
	    "alice@localhost",
	    "@company.com",
	    "alice@",
	    "alice@@company.com",
	    ".alice@company.com",
	    "alice.@company.com",
	    "al..ice@company.com",
	    "alice@-company.com",
	    "alice@company-.com",
	    "alice@company..com",
	    "alice smith@company.com",
	    ":subject",
	    "Okta:subject",
	    "okta:",
	    "okta:has space",
	    "okta:tab\tinside",
	    "",
	};
	const char *why;
	char big[400];

	(void)state;
	for (size_t i = 0; i < IDP_ARRAY_LEN(good); i++) {
		why = NULL;
		if (!registry_owner_valid(good[i], &why))
			fail_msg("%s refused: %s", good[i], why);
	}
	for (size_t i = 0; i < IDP_ARRAY_LEN(bad); i++) {
		why = NULL;
		if (registry_owner_valid(bad[i], &why))
			fail_msg("%s accepted", bad[i]);
		assert_non_null(why);
	}
	memset(big, 'a', sizeof(big));
	memcpy(big + 300, "@company.com", 13);
	assert_false(registry_owner_valid(big, NULL));
}

static void
email_owners_normalise_to_lower_case_subjects_do_not(void **state)
{
	char out[330];

	(void)state;
	registry_owner_normalize("Alice@Company.COM", out, sizeof(out));
	assert_string_equal(out, "alice@company.com");
	registry_owner_normalize("okta:00U1AbCd", out, sizeof(out));
	assert_string_equal(out, "okta:00U1AbCd");
}

/* ---- validation ---- */

static const char *valid_body =
    "{\"id\":\"agent-planning-prod-001\",\"agent_type\":\"planning-orchestrator\","
    "\"agent_version\":\"v2.4.1\",\"model\":\"claude-opus-4-20250514\","
    "\"deployment\":\"kubernetes/prod/ns-agents\",\"owner\":\"Alice@Company.com\","
    "\"team\":\"platform-engineering\",\"capabilities\":[\"cloud-inventory:read\","
    "\"reports:write\"],\"delegate_to\":[\"cloud-agent\",\"cost-agent\",\"report-agent\"],"
    "\"delegation_constraints\":{\"max_chain_depth\":3,\"max_scope_per_delegation\":\"read\","
    "\"requires_human_approval_for\":[\"admin\",\"write\",\"delete\"]}}";

static json_t *
parse(const char *s)
{
	json_error_t e;
	json_t *j = json_loads(s, JSON_REJECT_DUPLICATES, &e);

	if (j == NULL)
		fail_msg("test JSON does not parse: %s", e.text);
	return j;
}

/* Validate body text; returns the errors (and the result in *norm). */
static json_t *
validate(const char *body, json_t **norm)
{
	json_t *in = parse(body), *errors = json_array();

	*norm = agent_input_validate(in, errors);
	json_decref(in);
	return errors;
}

static bool
has_error(const json_t *errors, const char *field)
{
	size_t i;
	json_t *e;

	json_array_foreach(errors, i, e)
	{
		if (strcmp(json_string_value(json_object_get(e, "field")), field) == 0 &&
		    json_string_length(json_object_get(e, "message")) > 0)
			return true;
	}
	return false;
}

static void
valid_registration_is_normalised_with_defaults(void **state)
{
	json_t *norm, *errors = validate(valid_body, &norm), *dc, *cred;

	(void)state;
	assert_int_equal(json_array_size(errors), 0);
	assert_non_null(norm);
	assert_string_equal(json_string_value(json_object_get(norm, "owner")), "alice@company.com");
	dc = json_object_get(norm, "delegation_constraints");
	/* approval classes come back in class order */
	assert_string_equal(json_string_value(json_array_get(
	                        json_object_get(dc, "requires_human_approval_for"), 0)),
	                    "write");
	assert_string_equal(json_string_value(json_array_get(
	                        json_object_get(dc, "requires_human_approval_for"), 2)),
	                    "admin");
	cred = json_object_get(norm, "credential");
	assert_string_equal(json_string_value(json_object_get(cred, "type")), "spiffe-jwt-svid");
	assert_string_equal(json_string_value(json_object_get(cred, "rotation")), "1h");
	assert_true(json_is_array(json_object_get(norm, "domains")));
	assert_int_equal(json_array_size(json_object_get(norm, "domains")), 0);
	assert_true(json_is_object(json_object_get(norm, "labels")));
	assert_true(json_is_null(json_object_get(norm, "environment")));
	json_decref(norm);
	json_decref(errors);
}

/* idpd signs JWT credentials only: a type it would not issue is refused, not stored. */
static void
credential_type_is_what_idpd_issues(void **state)
{
	json_t *in = parse(valid_body), *errors = json_array(), *norm;

	(void)state;
	json_object_set_new(in, "credential", json_pack("{s:s}", "type", "spiffe-x509-svid"));
	norm = agent_input_validate(in, errors);
	assert_null(norm);
	assert_true(has_error(errors, "credential.type"));
	json_decref(errors);
	errors = json_array();
	json_object_set_new(in, "credential", json_pack("{s:s}", "type", "spiffe-jwt-svid"));
	norm = agent_input_validate(in, errors);
	assert_non_null(norm);
	assert_int_equal(json_array_size(errors), 0);
	json_decref(norm);
	json_decref(errors);
	json_decref(in);
}

static void
every_problem_is_reported_with_its_field(void **state)
{
	json_t *norm, *errors;

	(void)state;
	errors = validate(
	    "{\"id\":\"Bad "
	    "Id\",\"agent_type\":5,\"owner\":\"nobody\",\"capabilities\":[\"ok:read\","
	    "\"no-colon\",7,\"ok:read\"],\"delegate_to\":[\"UP\"],\"delegation_constraints\":"
	    "{\"max_chain_depth\":-1,\"max_scope_per_delegation\":\"read-only\","
	    "\"requires_human_approval_for\":[\"write\",\"write\"],\"x\":1},\"labels\":"
	    "{\"ok\":\"v\",\"BAD\":\"v\",\"n\":3},\"environment\":\"Prod\","
	    "\"attestation_selectors\":[\"k8s\",\"k8s:ns:a\"],\"domains\":[\"a\",\"a\"],"
	    "\"credential\":{\"type\":\"x509\",\"rotation\":\"2d\",\"last_rotated\":\"now\"},"
	    "\"created_at\":\"2026-01-01T00:00:00Z\",\"nickname\":\"x\"}",
	    &norm);
	assert_null(norm);
	assert_true(has_error(errors, "id"));
	assert_true(has_error(errors, "agent_type"));
	assert_true(has_error(errors, "owner"));
	assert_true(has_error(errors, "capabilities[1]"));
	assert_true(has_error(errors, "capabilities[2]"));
	assert_true(has_error(errors, "capabilities[3]"));
	assert_false(has_error(errors, "capabilities[0]"));
	assert_true(has_error(errors, "delegate_to[0]"));
	assert_true(has_error(errors, "delegation_constraints.max_chain_depth"));
	assert_true(has_error(errors, "delegation_constraints.max_scope_per_delegation"));
	assert_true(has_error(errors, "delegation_constraints.requires_human_approval_for[1]"));
	assert_true(has_error(errors, "delegation_constraints.x"));
	assert_true(has_error(errors, "labels.BAD"));
	assert_true(has_error(errors, "labels.n"));
	assert_false(has_error(errors, "labels.ok"));
	assert_true(has_error(errors, "environment"));
	assert_true(has_error(errors, "attestation_selectors[0]"));
	assert_true(has_error(errors, "domains[1]"));
	assert_true(has_error(errors, "credential.type"));
	assert_true(has_error(errors, "credential.rotation"));
	assert_true(has_error(errors, "credential.last_rotated"));
	assert_true(has_error(errors, "created_at"));
	assert_true(has_error(errors, "nickname"));
	json_decref(errors);
}

static void
required_fields_and_empty_capabilities_are_refused(void **state)
{
	json_t *norm, *errors;

	(void)state;
	errors = validate("{\"capabilities\":[]}", &norm);
	assert_null(norm);
	assert_true(has_error(errors, "id"));
	assert_true(has_error(errors, "agent_type"));
	assert_true(has_error(errors, "owner"));
	assert_true(has_error(errors, "capabilities"));
	assert_true(has_error(errors, "delegation_constraints"));
	json_decref(errors);
	/* null is the same as absent */
	errors = validate("{\"id\":\"a\",\"agent_type\":\"t\",\"owner\":null,\"capabilities\":"
	                  "[\"a:b\"],\"delegation_constraints\":null}",
	                  &norm);
	assert_null(norm);
	assert_true(has_error(errors, "owner"));
	assert_true(has_error(errors, "delegation_constraints"));
	json_decref(errors);
	errors = validate("[1]", &norm);
	assert_null(norm);
	assert_int_equal(json_array_size(errors), 1);
	json_decref(errors);
}

static void
limits_on_list_sizes_and_lengths_hold(void **state)
{
	const size_t cap = 70000;
	char *body = malloc(cap), *p;
	size_t n;
	json_t *norm, *errors;

	(void)state;
	/* 257 capabilities: one too many. */
	n = (size_t)snprintf(body, cap,
	                     "{\"id\":\"a\",\"agent_type\":\"t\",\"owner\":\"a@b.co\","
	                     "\"delegation_constraints\":{\"max_chain_depth\":0,"
	                     "\"max_scope_per_delegation\":\"admin\","
	                     "\"requires_human_approval_for\":[]},\"capabilities\":[");
	for (int i = 0; i < 257; i++)
		n += (size_t)snprintf(body + n, cap - n, "%s\"r%d:read\"", i ? "," : "", i);
	snprintf(body + n, cap - n, "]}");
	errors = validate(body, &norm);
	assert_null(norm);
	assert_true(has_error(errors, "capabilities"));
	json_decref(errors);
	/* 256 is fine, and so is depth 0 with no approvals. */
	p = strstr(body, ",\"r256:read\"");
	snprintf(p, 3, "]}");
	errors = validate(body, &norm);
	assert_int_equal(json_array_size(errors), 0);
	json_decref(norm);
	json_decref(errors);
	/* A team name past 128 bytes, a control character in deployment. */
	errors =
	    validate("{\"id\":\"a\",\"agent_type\":\"t\",\"owner\":\"a@b.co\",\"capabilities\":"
	             "[\"a:b\"],\"delegation_constraints\":{\"max_chain_depth\":0,"
	             "\"max_scope_per_delegation\":\"read\",\"requires_human_approval_for\":[]},"
	             "\"deployment\":\"k8s\\u0007x\",\"team\":\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
	             "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
	             "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"}",
	             &norm);
	assert_null(norm);
	assert_true(has_error(errors, "deployment"));
	assert_true(has_error(errors, "team"));
	json_decref(errors);
	free(body);
}

static void
self_delegation_is_refused(void **state)
{
	json_t *norm, *errors;

	(void)state;
	errors =
	    validate("{\"id\":\"me\",\"agent_type\":\"t\",\"owner\":\"a@b.co\",\"capabilities\":"
	             "[\"a:b\"],\"delegate_to\":[\"other\",\"me\"],\"delegation_constraints\":"
	             "{\"max_chain_depth\":1,\"max_scope_per_delegation\":\"read\","
	             "\"requires_human_approval_for\":[]}}",
	             &norm);
	assert_null(norm);
	assert_true(has_error(errors, "delegate_to[1]"));
	assert_false(has_error(errors, "delegate_to[0]"));
	json_decref(errors);
}

static void
error_field_with_broken_utf8_is_still_reported(void **state)
{
	json_t *errors = json_array();
	/* a label name cut in the middle of a two-byte character */
	char field[] = {'l', 'a', 'b', 'e', 'l', 's', '.', (char)0xc3, '\0'};

	(void)state;
	agent_error(errors, field, "bad");
	assert_int_equal(json_array_size(errors), 1);
	assert_string_equal(json_string_value(json_object_get(json_array_get(errors, 0), "field")),
	                    "labels.?");
	json_decref(errors);
}

/* ---- merge patch ---- */

static void
merge_patch_follows_rfc7396(void **state)
{
	/* The examples of RFC 7396, appendix A. */
	static const char *const cases[][3] = {
	    {"{\"a\":\"b\"}", "{\"a\":\"c\"}", "{\"a\":\"c\"}"},
	    {"{\"a\":\"b\"}", "{\"b\":\"c\"}", "{\"a\":\"b\",\"b\":\"c\"}"},
	    {"{\"a\":\"b\"}", "{\"a\":null}", "{}"},
	    {"{\"a\":\"b\",\"b\":\"c\"}", "{\"a\":null}", "{\"b\":\"c\"}"},
	    {"{\"a\":[\"b\"]}", "{\"a\":\"c\"}", "{\"a\":\"c\"}"},
	    {"{\"a\":\"c\"}", "{\"a\":[\"b\"]}", "{\"a\":[\"b\"]}"},
	    {"{\"a\":{\"b\":\"c\"}}", "{\"a\":{\"b\":\"d\",\"c\":null}}", "{\"a\":{\"b\":\"d\"}}"},
	    {"{\"a\":[{\"b\":\"c\"}]}", "{\"a\":[1]}", "{\"a\":[1]}"},
	    {"[\"a\",\"b\"]", "[\"c\",\"d\"]", "[\"c\",\"d\"]"},
	    {"{\"a\":\"b\"}", "[\"c\"]", "[\"c\"]"},
	    {"{\"e\":null}", "{\"a\":1}", "{\"e\":null,\"a\":1}"},
	    {"[1,2]", "{\"a\":\"b\",\"c\":null}", "{\"a\":\"b\"}"},
	    {"{}", "{\"a\":{\"bb\":{\"ccc\":null}}}", "{\"a\":{\"bb\":{}}}"},
	};

	(void)state;
	for (size_t i = 0; i < IDP_ARRAY_LEN(cases); i++) {
		json_t *t = parse(cases[i][0]), *p = parse(cases[i][1]), *want = parse(cases[i][2]);
		json_t *orig = parse(cases[i][0]), *got = json_merge_patch(t, p);

		if (!json_equal(got, want))
			fail_msg("case %zu: got %s", i, json_dumps(got, JSON_COMPACT));
		/* the target is not modified */
		assert_true(json_equal(t, orig));
		json_decref(orig);
		json_decref(t);
		json_decref(p);
		json_decref(want);
		json_decref(got);
	}
}

static void
patch_check_refuses_identity_and_read_only_fields(void **state)
{
	json_t *cur = parse(valid_body), *errors = json_array(), *p, *acc;

	(void)state;
	p = parse("{\"id\":\"agent-planning-prod-001\",\"team\":\"x\"}");
	assert_int_equal(agent_patch_check(p, cur, errors, NULL), 0); /* same id: a no-op */
	json_decref(p);
	p = parse("{\"id\":\"other\",\"agent_type\":\"x\",\"status\":\"active\",\"owner\":null,"
	          "\"version\":3,\"colour\":\"red\"}");
	assert_int_equal(agent_patch_check(p, cur, errors, NULL), 6);
	assert_true(has_error(errors, "id"));
	assert_true(has_error(errors, "agent_type"));
	assert_true(has_error(errors, "status"));
	assert_true(has_error(errors, "owner"));
	assert_true(has_error(errors, "version"));
	assert_true(has_error(errors, "colour"));
	json_decref(p);
	/* What passes is handed on, for the merged record's own checks. */
	acc = json_object();
	p = parse("{\"team\":\"sre\",\"bogus\":1,\"status\":\"active\",\"labels\":{\"a\":5}}");
	assert_int_equal(agent_patch_check(p, cur, errors, acc), 2);
	assert_int_equal(json_object_size(acc), 2);
	assert_string_equal(json_string_value(json_object_get(acc, "team")), "sre");
	assert_non_null(json_object_get(acc, "labels"));
	json_decref(acc);
	json_decref(p);
	json_decref(cur);
	json_decref(errors);
}

/* ---- records ---- */

static const char *row_values[AGENT_NCOLUMNS] = {
    "agent-planning-prod-001",
    "planning-orchestrator",
    "v2.4.1",
    "claude-opus-4-20250514",
    "kubernetes/prod/ns-agents",
    "alice@company.com",
    "platform-engineering",
    "1768471200000", /* 2026-01-15T10:00:00Z */
    "0",
    "active",
    "cloud-inventory:read\nreports:write",
    "cloud-agent\ncost-agent\nreport-agent",
    "3",
    "read",
    "write\ndelete\nadmin",
    "spiffe-jwt-svid",
    "3600000",
    "0",
    "cloud",
    "production",
    "k8s:ns:agents",
    "{\"tier\": \"gold\", \"note\": \"say \\\"hi\\\"\"}",
    "7",
    "1768471200123",
    "0",
    "0",
    NULL,
    NULL,
};

/* A one-row result like the one PostgreSQL returns for AGENT_COLUMNS. */
static PGresult *
make_row(const char *const *values)
{
	PGresult *r = PQmakeEmptyPGresult(NULL, PGRES_TUPLES_OK);
	PGresAttDesc attrs[AGENT_NCOLUMNS];
	char names[AGENT_NCOLUMNS][8];

	memset(attrs, 0, sizeof(attrs));
	for (int i = 0; i < AGENT_NCOLUMNS; i++) {
		snprintf(names[i], sizeof(names[i]), "c%d", i);
		attrs[i].name = names[i];
		attrs[i].format = 0;
		attrs[i].typlen = -1;
		attrs[i].atttypmod = -1;
	}
	assert_int_equal(PQsetResultAttrs(r, AGENT_NCOLUMNS, attrs), 1);
	for (int i = 0; i < AGENT_NCOLUMNS; i++)
		assert_int_equal(
		    PQsetvalue(r, 0, i, (char *)values[i], values[i] ? (int)strlen(values[i]) : -1),
		    1);
	return r;
}

static struct registry_agent *
make_agent(const char *id, int64_t version)
{
	const char *v[AGENT_NCOLUMNS];
	char ver[24];
	PGresult *r;
	struct registry_agent *a;

	memcpy(v, row_values, sizeof(v));
	snprintf(ver, sizeof(ver), "%lld", (long long)version);
	v[0] = id;
	v[22] = ver;
	r = make_row(v);
	a = agent_from_row(r, 0);
	PQclear(r);
	assert_non_null(a);
	return a;
}

static void
record_from_row_holds_every_field(void **state)
{
	PGresult *r = make_row(row_values);
	struct registry_agent *a = agent_from_row(r, 0);

	(void)state;
	PQclear(r);
	assert_non_null(a);
	assert_string_equal(a->id, "agent-planning-prod-001");
	assert_string_equal(a->owner, "alice@company.com");
	assert_int_equal(a->created_ms, 1768471200000LL);
	assert_int_equal(a->last_active_ms, 0);
	assert_int_equal(a->status, REGISTRY_ACTIVE);
	assert_int_equal(a->n_capabilities, 2);
	assert_string_equal(a->capabilities[1], "reports:write");
	assert_null(a->capabilities[2]);
	assert_int_equal(a->n_delegate_to, 3);
	assert_string_equal(a->delegate_to[2], "report-agent");
	assert_int_equal(a->max_chain_depth, 3);
	assert_int_equal(a->max_scope_per_delegation, IDP_ACTION_READ);
	assert_int_equal(a->requires_human_approval_for, (1u << IDP_ACTION_WRITE) |
	                                                     (1u << IDP_ACTION_DELETE) |
	                                                     (1u << IDP_ACTION_ADMIN));
	assert_int_equal(a->credential_rotation_ms, 3600000);
	assert_int_equal(a->n_domains, 1);
	assert_int_equal(a->n_attestation_selectors, 1);
	assert_int_equal(a->n_labels, 2);
	assert_int_equal(a->version, 7);
	assert_null(a->status_reason);
	assert_true(registry_agent_can(a, "reports:write"));
	assert_false(registry_agent_can(a, "reports:delete"));
	assert_false(registry_agent_can(a, "cloud-inventory:*"));
	registry_agent_unref(a);
}

static void
record_with_unreadable_row_is_refused(void **state)
{
	const char *v[AGENT_NCOLUMNS];
	PGresult *r;

	(void)state;
	memcpy(v, row_values, sizeof(v));
	v[9] = "retired"; /* no such status */
	r = make_row(v);
	assert_null(agent_from_row(r, 0));
	PQclear(r);
	memcpy(v, row_values, sizeof(v));
	v[21] = "[1,2]"; /* labels not an object */
	r = make_row(v);
	assert_null(agent_from_row(r, 0));
	PQclear(r);
}

static void
rendered_json_round_trips_and_escapes(void **state)
{
	struct registry_agent *a = make_agent("agent-1", 7);
	struct idp_buf b;
	json_t *j, *w;

	(void)state;
	idp_buf_init(&b, 0);
	assert_int_equal(agent_render(a, &b), IDP_OK);
	j = parse(idp_buf_str(&b));
	assert_string_equal(json_string_value(json_object_get(j, "created_at")),
	                    "2026-01-15T10:00:00.000Z");
	assert_true(json_is_null(json_object_get(j, "last_active")));
	assert_true(json_is_null(json_object_get(j, "status_changed")));
	assert_string_equal(
	    json_string_value(json_object_get(json_object_get(j, "labels"), "note")), "say \"hi\"");
	assert_int_equal(json_integer_value(json_object_get(j, "version")), 7);
	assert_string_equal(
	    json_string_value(json_object_get(json_object_get(j, "credential"), "rotation")), "1h");
	/* The writable form validates as it is: a GET can be edited and sent back. */
	w = agent_writable_json(a);
	{
		json_t *errors = json_array(), *norm = agent_input_validate(w, errors);

		if (norm == NULL)
			fail_msg("%s", json_dumps(errors, 0));
		json_decref(norm);
		json_decref(errors);
	}
	assert_null(json_object_get(w, "version"));
	assert_null(json_object_get(json_object_get(w, "credential"), "last_rotated"));
	json_decref(w);
	json_decref(j);
	/* A cap too small for the record is an error, not a truncated document. */
	idp_buf_cleanup(&b);
	idp_buf_init(&b, 64);
	assert_int_equal(agent_render(a, &b), IDP_ETOOBIG);
	idp_buf_cleanup(&b);
	registry_agent_unref(a);
}

static void
control_characters_in_a_row_are_escaped(void **state)
{
	const char *v[AGENT_NCOLUMNS];
	struct registry_agent *a;
	struct idp_buf b;
	PGresult *r;
	json_t *j;

	(void)state;
	memcpy(v, row_values, sizeof(v));
	v[4] = "line1\x01\"\\";
	r = make_row(v);
	a = agent_from_row(r, 0);
	PQclear(r);
	idp_buf_init(&b, 0);
	assert_int_equal(agent_render(a, &b), IDP_OK);
	assert_non_null(strstr(idp_buf_str(&b), "line1\\u0001\\\"\\\\"));
	j = parse(idp_buf_str(&b));
	assert_string_equal(json_string_value(json_object_get(j, "deployment")), "line1\x01\"\\");
	json_decref(j);
	idp_buf_cleanup(&b);
	registry_agent_unref(a);
}

static void
durations_render_in_the_largest_whole_unit(void **state)
{
	char out[32];

	(void)state;
	registry_duration_format(3600000, out);
	assert_string_equal(out, "1h");
	registry_duration_format(5400000, out);
	assert_string_equal(out, "90m");
	registry_duration_format(86400000, out);
	assert_string_equal(out, "1d");
	registry_duration_format(45000, out);
	assert_string_equal(out, "45s");
	registry_duration_format(1500, out);
	assert_string_equal(out, "1500ms");
}

/* record.c's fast formatter, visible in test builds. */
void registry_format_time(int64_t ms, char out[25]);

static void
fast_time_format_agrees_with_the_shared_one(void **state)
{
	static const int64_t fixed[] = {
	    1,
	    999,
	    86399999,
	    86400000,
	    951782400000LL /* 2000-02-29 */,
	    1709164800000LL,
	    4107542399999LL /* 2100-02-28T23:59:59.999 */,
	    4107542400000LL,
	    253402300799999LL,
	};
	char a[32], b[32];
	uint64_t x = 88172645463325252ULL;

	(void)state;
	for (size_t i = 0; i < IDP_ARRAY_LEN(fixed); i++) {
		idp_time_format(fixed[i], a);
		registry_format_time(fixed[i], b);
		assert_string_equal(a, b);
	}
	for (int i = 0; i < 100000; i++) {
		int64_t ms;

		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		ms = (int64_t)(x % 253402300799999ULL) + 1;
		idp_time_format(ms, a);
		registry_format_time(ms, b);
		if (strcmp(a, b) != 0)
			fail_msg("%lld: %s != %s", (long long)ms, a, b);
	}
}

static void
revocation_epoch_never_errs_towards_valid(void **state)
{
	struct registry_agent *a = make_agent("agent-1", 1);

	(void)state;
	assert_false(registry_issued_before_revocation(a, 1768471200));
	((struct registry_agent *)a)->revocation_epoch_ms = 1768471200500LL;
	assert_true(registry_issued_before_revocation(a, 1768471199));
	/* the same second: it may predate the revocation, so it is revoked */
	assert_true(registry_issued_before_revocation(a, 1768471200));
	assert_false(registry_issued_before_revocation(a, 1768471201));
	registry_agent_unref(a);
}

/* ---- cache ---- */

static void
cache_keeps_the_newest_version(void **state)
{
	struct agent_cache *c = agent_cache_new();
	const struct registry_agent *got;

	(void)state;
	assert_true(agent_cache_install(c, make_agent("a", 2)));
	assert_false(agent_cache_install(c, make_agent("a", 1))); /* older: dropped */
	assert_false(agent_cache_install(c, make_agent("a", 2))); /* same: dropped */
	got = agent_cache_get(c, "a");
	assert_int_equal(got->version, 2);
	assert_true(agent_cache_install(c, make_agent("a", 3)));
	/* a reader's reference outlives the replacement */
	assert_int_equal(got->version, 2);
	registry_agent_unref(got);
	got = agent_cache_get(c, "a");
	assert_int_equal(got->version, 3);
	registry_agent_unref(got);
	assert_null(agent_cache_get(c, "b"));
	assert_int_equal(agent_cache_count(c), 1);
	agent_cache_free(c);
}

static void
cache_grows_and_removes_without_losing_neighbours(void **state)
{
	struct agent_cache *c = agent_cache_new();
	char id[32];

	(void)state;
	for (int i = 0; i < 5000; i++) {
		snprintf(id, sizeof(id), "agent-%d", i);
		assert_true(agent_cache_install(c, make_agent(id, 1)));
	}
	assert_int_equal(agent_cache_count(c), 5000);
	for (int i = 0; i < 5000; i += 2) {
		snprintf(id, sizeof(id), "agent-%d", i);
		agent_cache_remove(c, id);
	}
	agent_cache_remove(c, "not-there");
	assert_int_equal(agent_cache_count(c), 2500);
	for (int i = 0; i < 5000; i++) {
		const struct registry_agent *a;

		snprintf(id, sizeof(id), "agent-%d", i);
		a = agent_cache_get(c, id);
		if ((i % 2 == 0) != (a == NULL))
			fail_msg("%s: %s", id, a ? "still there" : "lost");
		if (a != NULL)
			assert_string_equal(a->id, id);
		registry_agent_unref(a);
	}
	agent_cache_free(c);
}

static void
full_reload_keeps_writes_made_while_it_ran(void **state)
{
	struct agent_cache *c = agent_cache_new();
	struct registry_agent **recs = malloc(3 * sizeof(*recs));
	const struct registry_agent *a;
	uint64_t since;

	(void)state;
	assert_true(agent_cache_install(c, make_agent("deleted-behind", 1)));
	assert_true(agent_cache_install(c, make_agent("updated", 1)));
	since = agent_cache_seq(c);
	/* While the load runs: one agent is updated, one registered. */
	assert_true(agent_cache_install(c, make_agent("updated", 5)));
	assert_true(agent_cache_install(c, make_agent("registered-meanwhile", 1)));
	/* The load read the rows before those writes. */
	recs[0] = make_agent("updated", 4);
	recs[1] = make_agent("loaded", 1);
	recs[2] = make_agent("loaded", 2); /* a duplicate id: the first wins */
	agent_cache_replace(c, recs, 3, since);

	a = agent_cache_get(c, "updated");
	assert_int_equal(a->version, 5);
	registry_agent_unref(a);
	a = agent_cache_get(c, "registered-meanwhile");
	assert_non_null(a);
	registry_agent_unref(a);
	a = agent_cache_get(c, "loaded");
	assert_int_equal(a->version, 1);
	registry_agent_unref(a);
	/* Not in the load and older than it: gone. */
	assert_null(agent_cache_get(c, "deleted-behind"));
	assert_int_equal(agent_cache_count(c), 3);
	agent_cache_free(c);
}

struct race {
	struct agent_cache *c;
	bool stop;
	bool monotonic;
	long reads;
};

static void *
reader(void *arg)
{
	struct race *r = arg;
	int64_t last = 0;

	while (!__atomic_load_n(&r->stop, __ATOMIC_ACQUIRE)) {
		const struct registry_agent *a = agent_cache_get(r->c, "hot");

		if (a != NULL) {
			if (a->version < last || strcmp(a->id, "hot") != 0)
				r->monotonic = false;
			last = a->version;
			registry_agent_unref(a);
		}
		r->reads++;
	}
	return NULL;
}

static void
concurrent_readers_see_versions_only_move_forward(void **state)
{
	struct race r[2];
	pthread_t t[2];
	struct agent_cache *c = agent_cache_new();

	(void)state;
	for (int i = 0; i < 2; i++) {
		r[i] = (struct race){.c = c, .stop = false, .monotonic = true, .reads = 0};
		assert_int_equal(pthread_create(&t[i], NULL, reader, &r[i]), 0);
	}
	for (int v = 1; v <= 3000; v++) {
		char id[32];

		assert_true(agent_cache_install(c, make_agent("hot", v)));
		/* and some churn that makes the table grow under the readers */
		snprintf(id, sizeof(id), "cold-%d", v);
		assert_true(agent_cache_install(c, make_agent(id, 1)));
	}
	for (int i = 0; i < 2; i++) {
		__atomic_store_n(&r[i].stop, true, __ATOMIC_RELEASE);
		pthread_join(t[i], NULL);
		assert_true(r[i].monotonic);
	}
	{
		const struct registry_agent *a = agent_cache_get(c, "hot");

		assert_int_equal(a->version, 3000);
		registry_agent_unref(a);
	}
	agent_cache_free(c);
}

/* ---- cursors ---- */

static void
cursor_round_trips_and_refuses_forgeries(void **state)
{
	static const char *const ids[] = {"a", "ab", "abc", "agent-planning-prod-001", "0.9_x"};
	char cur[256], back[200];

	(void)state;
	for (size_t i = 0; i < IDP_ARRAY_LEN(ids); i++) {
		registry_cursor_encode(ids[i], cur, sizeof(cur));
		assert_non_null(strchr(cur, 'a'));
		assert_true(registry_cursor_decode(cur, back, sizeof(back)));
		assert_string_equal(back, ids[i]);
	}
	assert_false(registry_cursor_decode(NULL, back, sizeof(back)));
	assert_false(registry_cursor_decode("", back, sizeof(back)));
	assert_false(registry_cursor_decode("agent-1", back, sizeof(back)));
	assert_false(registry_cursor_decode("a1", back, sizeof(back)));
	assert_false(registry_cursor_decode("a1!!!!", back, sizeof(back)));
	/* decodes, but to something that is not an id */
	registry_cursor_encode("Not An Id", cur, sizeof(cur));
	assert_false(registry_cursor_decode(cur, back, sizeof(back)));
}

/* ---- departed owners ---- */

static void
departed_list_parses_comments_blanks_and_case(void **state)
{
	static const char text[] = "# HR export\n\n  Bob@Company.com  \r\nokta:00u-gone\n"
	                           "bob@company.com\n\t# indented comment\ncarol@company.com";
	struct idp_diag d;
	struct owner_set *s;
	char *arr;

	(void)state;
	idp_diag_init(&d);
	s = owner_set_parse(text, sizeof(text) - 1, &d);
	assert_non_null(s);
	assert_int_equal(owner_set_count(s), 3); /* bob once */
	assert_true(owner_set_contains(s, "BOB@company.com"));
	assert_true(owner_set_contains(s, "okta:00u-gone"));
	assert_false(owner_set_contains(s, "okta:00U-GONE")); /* subjects are exact */
	assert_true(owner_set_contains(s, "carol@company.com"));
	assert_false(owner_set_contains(s, "alice@company.com"));
	arr = owner_set_pg_array(s);
	assert_string_equal(arr, "{\"bob@company.com\",\"carol@company.com\",\"okta:00u-gone\"}");
	free(arr);
	owner_set_free(s);
}

static void
departed_list_with_a_bad_line_names_it(void **state)
{
	static const char text[] = "alice@company.com\nnot an owner\nbob@company.com\nx\n";
	struct idp_diag d;

	(void)state;
	idp_diag_init(&d);
	assert_null(owner_set_parse(text, sizeof(text) - 1, &d));
	assert_non_null(strstr(idp_diag_str(&d), "line 2"));
	assert_non_null(strstr(idp_diag_str(&d), "line 4"));
	assert_int_equal(d.count, 2);
}

static void
departed_file_is_reread_when_it_changes(void **state)
{
	char dir[] = "/tmp/idpd-owners-XXXXXX", path[128];
	struct owner_set *s;
	struct idp_diag d;
	FILE *f;

	(void)state;
	assert_non_null(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/departed", dir);
	idp_diag_init(&d);
	assert_int_equal(departed_owners_load(path, &s, &d), IDP_EIO);
	assert_null(s);
	f = fopen(path, "w");
	fputs("bob@company.com\n", f);
	fclose(f);
	assert_int_equal(departed_owners_load(path, &s, &d), IDP_OK);
	assert_true(owner_set_contains(s, "bob@company.com"));
	owner_set_free(s);
	f = fopen(path, "w");
	fputs("bob@company.com\ncarol@company.com\n", f);
	fclose(f);
	assert_int_equal(departed_owners_load(path, &s, &d), IDP_OK);
	assert_true(owner_set_contains(s, "carol@company.com"));
	owner_set_free(s);
	assert_int_equal(departed_owners_load("", &s, &d), IDP_OK);
	assert_int_equal(owner_set_count(s), 0);
	owner_set_free(s);
	unlink(path);
	rmdir(dir);
}

/* Write text to path. */
static void
write_text(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");

	assert_non_null(f);
	assert_true(fputs(text, f) >= 0);
	assert_int_equal(fclose(f), 0);
}

/*
 * An HR feed that replaces the file with mv, and keeps the old size and
 * modification time (cp -p, rsync -t): the cache must not take it for the
 * file it read.
 */
static void
departed_file_replaced_with_the_same_size_and_mtime_is_reread(void **state)
{
	char dir[] = "/tmp/idpd-owners-XXXXXX", path[128], next[128];
	struct owner_set *s;
	struct idp_diag d;
	struct stat st;
	struct timespec times[2];

	(void)state;
	assert_non_null(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/departed", dir);
	snprintf(next, sizeof(next), "%s/departed.new", dir);
	idp_diag_init(&d);
	write_text(path, "alice@company.com\n");
	assert_int_equal(departed_owners_load(path, &s, &d), IDP_OK);
	assert_true(owner_set_contains(s, "alice@company.com"));
	owner_set_free(s);

	write_text(next, "carol@company.com\n");
	assert_int_equal(stat(path, &st), 0);
	times[0] = st.st_atim;
	times[1] = st.st_mtim;
	assert_int_equal(utimensat(AT_FDCWD, next, times, 0), 0);
	assert_int_equal(rename(next, path), 0);
	assert_int_equal(departed_owners_load(path, &s, &d), IDP_OK);
	assert_true(owner_set_contains(s, "carol@company.com"));
	assert_false(owner_set_contains(s, "alice@company.com"));
	owner_set_free(s);

	/* Rewritten in place, then given its old mtime back: the change time moved. */
	assert_int_equal(stat(path, &st), 0);
	times[0] = st.st_atim;
	times[1] = st.st_mtim;
	write_text(path, "dave1@company.com\n");
	assert_int_equal(utimensat(AT_FDCWD, path, times, 0), 0);
	assert_int_equal(departed_owners_load(path, &s, &d), IDP_OK);
	assert_true(owner_set_contains(s, "dave1@company.com"));
	owner_set_free(s);
	unlink(path);
	rmdir(dir);
}

/* ---- If-Match ---- */

static void
if_match_takes_star_or_a_list_and_matches_strong_tags_only(void **state)
{
	static const char *const broken[] = {
	    "",         "  ",  ",",       "1",       "\"1",    "\"1\" \"2\"",
	    "*, \"1\"", "W/1", "\"a b\"", "w/\"1\"", "\"1\"x",
	};
	struct registry_if_match m;
	char many[512] = "";

	(void)state;
	assert_true(registry_if_match_holds(NULL, 3));
	assert_int_equal(registry_if_match_parse("*", &m), IDP_OK);
	assert_true(m.any && registry_if_match_holds(&m, 42));
	assert_int_equal(registry_if_match_parse("\"1\"", &m), IDP_OK);
	assert_true(registry_if_match_holds(&m, 1));
	assert_false(registry_if_match_holds(&m, 2));
	assert_int_equal(registry_if_match_parse("\"1\", \"5\"", &m), IDP_OK);
	assert_true(registry_if_match_holds(&m, 5));
	assert_false(registry_if_match_holds(&m, 2));
	assert_int_equal(registry_if_match_parse(" , \"3\" ,,\t\"4\" ,", &m), IDP_OK);
	assert_true(registry_if_match_holds(&m, 3) && registry_if_match_holds(&m, 4));
	/* Valid, but never a match: weak, zero, leading zero, not a version. */
	assert_int_equal(registry_if_match_parse("W/\"1\"", &m), IDP_OK);
	assert_false(registry_if_match_holds(&m, 1));
	assert_int_equal(registry_if_match_parse("\"0\", \"01\", \"abc\", \"\"", &m), IDP_OK);
	assert_false(registry_if_match_holds(&m, 0) || registry_if_match_holds(&m, 1));
	assert_int_equal(registry_if_match_parse("\"99999999999999999999\"", &m), IDP_OK);
	assert_int_equal(m.n, 0);
	for (size_t i = 0; i < IDP_ARRAY_LEN(broken); i++)
		if (registry_if_match_parse(broken[i], &m) != IDP_EINVAL)
			fail_msg("If-Match [%s] was taken", broken[i]);
	/* A bounded list. */
	for (int i = 0; i < REGISTRY_IF_MATCH_MAX; i++)
		snprintf(many + strlen(many), sizeof(many) - strlen(many), "\"%d\",", i + 1);
	assert_int_equal(registry_if_match_parse(many, &m), IDP_OK);
	assert_true(registry_if_match_holds(&m, REGISTRY_IF_MATCH_MAX));
	strcat(many, "\"99\"");
	assert_int_equal(registry_if_match_parse(many, &m), IDP_EINVAL);
}

/* ---- PostgreSQL literals ---- */

static void
text_array_literal_escapes_quotes_and_backslashes(void **state)
{
	json_t *a = parse("[\"plain\",\"with \\\"quote\\\"\",\"back\\\\slash\",\"a,b\",\"{x}\"]");
	char *s = pg_text_array_json(a);

	(void)state;
	assert_string_equal(s,
	                    "{\"plain\",\"with \\\"quote\\\"\",\"back\\\\slash\",\"a,b\",\"{x}\"}");
	free(s);
	json_decref(a);
	a = json_array();
	s = pg_text_array_json(a);
	assert_string_equal(s, "{}");
	free(s);
	json_decref(a);
}

static void
status_names_round_trip(void **state)
{
	(void)state;
	for (int s = REGISTRY_ACTIVE; s <= REGISTRY_DECOMMISSIONED; s++)
		assert_int_equal(
		    registry_status_parse(registry_status_name((enum registry_status)s)), s);
	assert_int_equal(registry_status_parse("Active"), -1);
	assert_int_equal(registry_status_parse(NULL), -1);
	assert_null(registry_status_name((enum registry_status)7));
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(id_pattern_is_enforced_exactly),
	    cmocka_unit_test(owner_is_an_email_or_an_idp_subject),
	    cmocka_unit_test(email_owners_normalise_to_lower_case_subjects_do_not),
	    cmocka_unit_test(valid_registration_is_normalised_with_defaults),
	    cmocka_unit_test(every_problem_is_reported_with_its_field),
	    cmocka_unit_test(credential_type_is_what_idpd_issues),
	    cmocka_unit_test(required_fields_and_empty_capabilities_are_refused),
	    cmocka_unit_test(limits_on_list_sizes_and_lengths_hold),
	    cmocka_unit_test(self_delegation_is_refused),
	    cmocka_unit_test(error_field_with_broken_utf8_is_still_reported),
	    cmocka_unit_test(merge_patch_follows_rfc7396),
	    cmocka_unit_test(patch_check_refuses_identity_and_read_only_fields),
	    cmocka_unit_test(record_from_row_holds_every_field),
	    cmocka_unit_test(record_with_unreadable_row_is_refused),
	    cmocka_unit_test(rendered_json_round_trips_and_escapes),
	    cmocka_unit_test(control_characters_in_a_row_are_escaped),
	    cmocka_unit_test(durations_render_in_the_largest_whole_unit),
	    cmocka_unit_test(fast_time_format_agrees_with_the_shared_one),
	    cmocka_unit_test(revocation_epoch_never_errs_towards_valid),
	    cmocka_unit_test(cache_keeps_the_newest_version),
	    cmocka_unit_test(cache_grows_and_removes_without_losing_neighbours),
	    cmocka_unit_test(full_reload_keeps_writes_made_while_it_ran),
	    cmocka_unit_test(concurrent_readers_see_versions_only_move_forward),
	    cmocka_unit_test(cursor_round_trips_and_refuses_forgeries),
	    cmocka_unit_test(departed_list_parses_comments_blanks_and_case),
	    cmocka_unit_test(departed_list_with_a_bad_line_names_it),
	    cmocka_unit_test(departed_file_is_reread_when_it_changes),
	    cmocka_unit_test(departed_file_replaced_with_the_same_size_and_mtime_is_reread),
	    cmocka_unit_test(if_match_takes_star_or_a_list_and_matches_strong_tags_only),
	    cmocka_unit_test(text_array_literal_escapes_quotes_and_backslashes),
	    cmocka_unit_test(status_names_round_trip),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
