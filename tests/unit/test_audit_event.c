/*
 * Unit tests for the audit event model: type names, validated setters, JSON
 * in and out, the canonical form, the hash chain and redaction.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "idpd/audit.h"
#include "idpd/audit_writer.h"
#include "idpd/clock.h"

/* redact.c, test builds: characters its token scan examined in this thread. */
extern _Thread_local size_t redact_scan_steps;

/* Read tests/golden/audit/<name> (from $IDPD_TEST_TOP or the current directory), minus its final
 * newline. */
static char *
golden(const char *name)
{
	const char *top = getenv("IDPD_TEST_TOP");
	char path[512];
	char *text;
	long n;
	FILE *f;

	snprintf(path, sizeof(path), "%s/tests/golden/audit/%s", top ? top : ".", name);
	f = fopen(path, "rb");
	assert_non_null(f);
	assert_int_equal(fseek(f, 0, SEEK_END), 0);
	n = ftell(f);
	assert_true(n > 0);
	rewind(f);
	text = malloc((size_t)n + 1);
	assert_non_null(text);
	assert_int_equal(fread(text, 1, (size_t)n, f), (size_t)n);
	fclose(f);
	if (text[n - 1] == '\n')
		n--;
	text[n] = '\0';
	return text;
}

static struct audit_event *
parse_ok(const char *text)
{
	struct audit_event *ev = NULL;
	struct idp_diag d;
	int rc;

	idp_diag_init(&d);
	rc = audit_event_from_json(text, strlen(text), &ev, &d);
	if (rc != IDP_OK)
		fail_msg("parse failed: %s", idp_diag_str(&d));
	return ev;
}

/* Parse text expecting failure rc; the diag must mention `mention`. */
static void
parse_fails(const char *text, int rc, const char *mention)
{
	struct audit_event *ev = (struct audit_event *)1;
	struct idp_diag d;

	idp_diag_init(&d);
	assert_int_equal(audit_event_from_json(text, strlen(text), &ev, &d), rc);
	assert_null(ev);
	if (strstr(idp_diag_str(&d), mention) == NULL)
		fail_msg("diag \"%s\" does not mention \"%s\"", idp_diag_str(&d), mention);
}

static void
type_names_round_trip_and_fit_syslog_msgid(void **state)
{
	(void)state;
	for (int t = 0; t < AUDIT_TYPE_COUNT; t++) {
		enum audit_type back;
		const char *name = audit_type_name((enum audit_type)t);

		assert_non_null(name);
		assert_true(strlen(name) <= 32);
		assert_non_null(audit_type_category((enum audit_type)t));
		assert_non_null(audit_type_title((enum audit_type)t));
		assert_int_equal(audit_type_parse(name, &back), IDP_OK);
		assert_int_equal(back, t);
		for (int u = 0; u < t; u++)
			assert_string_not_equal(name, audit_type_name((enum audit_type)u));
	}
	assert_null(audit_type_name(AUDIT_TYPE_COUNT));
}

static void
type_parse_rejects_unknown_and_case_variants(void **state)
{
	enum audit_type t = AUDIT_ALERT;

	(void)state;
	assert_int_equal(audit_type_parse("token.issued", &t), IDP_OK);
	assert_int_equal(t, AUDIT_TOKEN_ISSUED);
	assert_int_equal(audit_type_parse("Token.Issued", &t), IDP_EINVAL);
	assert_int_equal(audit_type_parse("token", &t), IDP_EINVAL);
	assert_int_equal(audit_type_parse("", &t), IDP_EINVAL);
	assert_int_equal(t, AUDIT_TOKEN_ISSUED);
	assert_string_equal(audit_type_category(AUDIT_TOKEN_ISSUED), "token");
	assert_string_equal(audit_type_category(AUDIT_TOOL_INVOCATION), "tool");
	assert_string_equal(audit_type_category(AUDIT_ALERT), "alert");
}

static void
enum_names_parse_back(void **state)
{
	enum audit_outcome o;
	enum audit_decision d;
	enum audit_actor_kind k;

	(void)state;
	assert_int_equal(audit_outcome_parse("denied", &o), IDP_OK);
	assert_int_equal(o, AUDIT_OUTCOME_DENIED);
	assert_int_equal(audit_outcome_parse("DENIED", &o), IDP_EINVAL);
	assert_null(audit_outcome_name(AUDIT_OUTCOME_NONE));
	assert_int_equal(audit_decision_parse("REQUIRE_APPROVAL", &d), IDP_OK);
	assert_int_equal(d, AUDIT_DECISION_REQUIRE_APPROVAL);
	assert_int_equal(audit_decision_parse("allow", &d), IDP_EINVAL);
	assert_int_equal(audit_actor_kind_parse("operator", &k), IDP_OK);
	assert_int_equal(k, AUDIT_ACTOR_OPERATOR);
	assert_int_equal(audit_actor_kind_parse("robot", &k), IDP_EINVAL);
}

static void
new_event_has_type_defaults_only(void **state)
{
	struct audit_event *ev;
	char *c;

	(void)state;
	assert_null(audit_event_new(AUDIT_TYPE_COUNT, 0));
	assert_null(audit_event_new(AUDIT_ALERT, AUDIT_TIME_MAX + 1));
	assert_null(audit_event_new(AUDIT_ALERT, -2));
	ev = audit_event_new(AUDIT_TOKEN_DENIED, AUDIT_TIME_UNSET);
	assert_non_null(ev);
	assert_int_equal(audit_event_severity(ev), audit_type_default_severity(AUDIT_TOKEN_DENIED));
	assert_int_equal(audit_event_time(ev), AUDIT_TIME_UNSET);
	c = audit_event_canonical(ev, NULL);
	assert_string_equal(c, "{\"severity\":5,\"type\":\"token.denied\"}");
	free(c);
	audit_event_free(ev);
	audit_event_free(NULL);
}

static void
setters_copy_their_strings(void **state)
{
	struct audit_event *ev = audit_event_new(AUDIT_TOOL_INVOCATION, 0);
	char buf[32];

	(void)state;
	snprintf(buf, sizeof(buf), "agent-1");
	assert_int_equal(audit_event_set(ev, AUDIT_F_AGENT_ID, buf), IDP_OK);
	assert_int_equal(audit_event_set_actor(ev, AUDIT_ACTOR_AGENT, buf), IDP_OK);
	assert_int_equal(audit_event_chain_append(ev, buf), IDP_OK);
	buf[0] = 'X';
	assert_string_equal(audit_event_get(ev, AUDIT_F_AGENT_ID), "agent-1");
	assert_string_equal(audit_event_actor_name(ev), "agent-1");
	assert_string_equal(audit_event_chain_at(ev, 0), "agent-1");
	assert_null(audit_event_chain_at(ev, 1));
	audit_event_free(ev);
}

static void
set_rejects_bad_values_and_keeps_the_old_one(void **state)
{
	struct audit_event *ev = audit_event_new(AUDIT_TOOL_INVOCATION, 0);
	char long_tool[258];

	(void)state;
	assert_int_equal(audit_event_set(ev, AUDIT_F_TOOL, "good"), IDP_OK);
	memset(long_tool, 'a', 257);
	long_tool[257] = '\0';
	assert_int_equal(audit_event_set(ev, AUDIT_F_TOOL, long_tool), IDP_ETOOBIG);
	long_tool[256] = '\0';
	assert_int_equal(audit_event_set(ev, AUDIT_F_TASK_ID, long_tool), IDP_OK);
	assert_int_equal(audit_event_set(ev, AUDIT_F_TOOL, "bad\xc3("), IDP_EINVAL);
	assert_int_equal(audit_event_set(ev, AUDIT_F_TOOL, "over\xc0\xaflong"), IDP_EINVAL);
	assert_int_equal(audit_event_set(ev, AUDIT_F_TOOL, "surrogate\xed\xa0\x80"), IDP_EINVAL);
	assert_int_equal(audit_event_set(ev, AUDIT_F_TOOL, "bell\a"), IDP_EINVAL);
	assert_int_equal(audit_event_set(ev, AUDIT_F_TOOL, "del\x7f"), IDP_EINVAL);
	assert_string_equal(audit_event_get(ev, AUDIT_F_TOOL), "good");
	/* Tab, LF and CR are text; other fields may hold them. */
	assert_int_equal(audit_event_set(ev, AUDIT_F_RESULT, "a\tb\r\nc \xe2\x9c\x93"), IDP_OK);
	assert_int_equal(audit_event_set(ev, AUDIT_F_ID, "has space"), IDP_EINVAL);
	assert_int_equal(audit_event_set(ev, AUDIT_F_ID, "evt_1.2:3-x"), IDP_OK);
	assert_int_equal(audit_event_set(ev, AUDIT_F_SOURCE_ADDRESS, "example.com"), IDP_EINVAL);
	assert_int_equal(audit_event_set(ev, AUDIT_F_SOURCE_ADDRESS, "10.0.0.1:80"), IDP_EINVAL);
	assert_int_equal(audit_event_set(ev, AUDIT_F_SOURCE_ADDRESS, "2001:db8::1"), IDP_OK);
	assert_int_equal(audit_event_set(ev, AUDIT_F_SOURCE_ADDRESS, "192.0.2.7"), IDP_OK);
	assert_int_equal(audit_event_set(ev, AUDIT_F_COUNT, "x"), IDP_EINVAL);
	assert_int_equal(audit_event_set_actor(ev, AUDIT_ACTOR_HUMAN, "nl\x01"), IDP_EINVAL);
	audit_event_free(ev);
}

static void
empty_string_clears_a_field(void **state)
{
	struct audit_event *ev = audit_event_new(AUDIT_TOOL_INVOCATION, 0);

	(void)state;
	assert_int_equal(audit_event_set(ev, AUDIT_F_TASK_ID, "t1"), IDP_OK);
	assert_int_equal(audit_event_set(ev, AUDIT_F_TASK_ID, ""), IDP_OK);
	assert_null(audit_event_get(ev, AUDIT_F_TASK_ID));
	assert_int_equal(audit_event_set(ev, AUDIT_F_TASK_ID, "t2"), IDP_OK);
	assert_int_equal(audit_event_set(ev, AUDIT_F_TASK_ID, NULL), IDP_OK);
	assert_null(audit_event_get(ev, AUDIT_F_TASK_ID));
	audit_event_free(ev);
}

static void
severity_and_time_are_bounded(void **state)
{
	struct audit_event *ev = audit_event_new(AUDIT_ALERT, 5);

	(void)state;
	assert_int_equal(audit_event_set_severity(ev, 11), IDP_EINVAL);
	assert_int_equal(audit_event_set_severity(ev, -1), IDP_EINVAL);
	assert_int_equal(audit_event_set_severity(ev, 10), IDP_OK);
	assert_int_equal(audit_event_severity(ev), 10);
	assert_int_equal(audit_event_set_time(ev, AUDIT_TIME_MAX + 1), IDP_EINVAL);
	assert_int_equal(audit_event_time(ev), 5);
	assert_int_equal(audit_event_set_time(ev, AUDIT_TIME_MAX), IDP_OK);
	assert_int_equal(audit_event_set_time(ev, AUDIT_TIME_UNSET), IDP_OK);
	audit_event_free(ev);
}

static void
delegation_chain_is_bounded(void **state)
{
	struct audit_event *ev = audit_event_new(AUDIT_DELEGATION_CREATED, 0);
	char name[16];

	(void)state;
	for (int i = 0; i < AUDIT_CHAIN_MAX; i++) {
		snprintf(name, sizeof(name), "agent-%d", i);
		assert_int_equal(audit_event_chain_append(ev, name), IDP_OK);
	}
	assert_int_equal(audit_event_chain_append(ev, "one-more"), IDP_ETOOBIG);
	assert_int_equal(audit_event_chain_len(ev), AUDIT_CHAIN_MAX);
	audit_event_chain_clear(ev);
	assert_int_equal(audit_event_chain_len(ev), 0);
	assert_int_equal(audit_event_chain_append(ev, ""), IDP_EINVAL);
	audit_event_free(ev);
}

static void
golden_event_parses_and_reserialises_byte_for_byte(void **state)
{
	char *text = golden("full.json"), *canon;
	struct audit_event *ev;
	size_t len;

	(void)state;
	ev = parse_ok(text);
	assert_int_equal(audit_event_type(ev), AUDIT_TOOL_INVOCATION);
	assert_int_equal(audit_event_time(ev), 1774620923456LL);
	assert_int_equal(audit_event_decision(ev), AUDIT_DECISION_ALLOW);
	assert_int_equal(audit_event_outcome(ev), AUDIT_OUTCOME_SUCCESS);
	assert_int_equal(audit_event_actor_kind(ev), AUDIT_ACTOR_AGENT);
	assert_int_equal(audit_event_chain_len(ev), 3);
	assert_string_equal(audit_event_get(ev, AUDIT_F_STEP), "3 of 12 in infrastructure review");
	assert_string_equal(audit_event_detail_str(ev, "audience"), "cloud-inventory-api");
	canon = audit_event_canonical(ev, &len);
	assert_string_equal(canon, text);
	assert_int_equal(len, strlen(text));
	free(canon);
	audit_event_free(ev);
	free(text);
}

static void
canonical_sorts_keys_and_drops_whitespace(void **state)
{
	const char *in = "{ \"type\" : \"tool_invocation\", \"action\": {\"tool\": \"t\", "
	                 "\"parameters\": {\"z\": 1.5, \"a\": [true, null, \"\\u00e9\"]}}, "
	                 "\"severity\": 3 }";
	struct audit_event *ev = parse_ok(in);
	char *c = audit_event_canonical(ev, NULL);

	(void)state;
	assert_string_equal(
	    c, "{\"action\":{\"parameters\":{\"a\":[true,null,\"\xc3\xa9\"],\"z\":1.5},"
	       "\"tool\":\"t\"},\"severity\":3,\"type\":\"tool_invocation\"}");
	free(c);
	audit_event_free(ev);
}

/*
 * The canonical form is written directly; it must stay byte for byte what
 * jansson writes for audit_event_to_json with sorted keys, or the hash
 * chains of events already stored would no longer verify.
 */
static void
canonical_equals_the_sorted_dump_of_the_json_form(void **state)
{
	static const char *const docs[] = {
	    ("{\"type\":\"token.issued\",\"severity\":2,\"timestamp\":\"2026-03-30T10:00:00.123Z\","
	     "\"outcome\":\"success\",\"id\":\"e1\",\"agent_id\":\"planner\",\"agent_type\":\"p\","
	     "\"human_principal\":\"alice@example.com\",\"task_id\":\"t-1\",\"request_id\":\"r\","
	     "\"source_address\":\"127.0.0.1\",\"instance_id\":\"i\",\"actor\":{\"kind\":\"agent\","
	     "\"name\":\"planner\"},\"authorization\":{\"token_id\":\"j\",\"granted_scope\":\"a:B "
	     "c:D\",\"policy_rule\":\"r1 r2\",\"policy_decision\":\"ALLOW_WITH_CONDITIONS\"},"
	     "\"delegation_chain\":[\"alice@example.com\",\"planner\",\"helper\"],"
	     "\"detail\":{\"audience\":\"https://aws.example.com\",\"exp\":1774864800,"
	     "\"conditions\":{\"max_ttl\":300,\"scopes\":[\"a:B\"],\"enhanced_logging\":true},"
	     "\"stated_reason\":\"tab\\there \\\"quoted\\\" \\u0001 caf\\u00e9 \\ud83d\\ude00\"}}"),
	    ("{\"type\":\"tool_invocation\",\"action\":{\"tool\":\"t\",\"result\":\"ok\","
	     "\"parameters\":{\"z\":1.5,\"a\":[true,null,{\"y\":[],\"x\":{}}],\"m\":-0.0}},"
	     "\"context\":{\"step\":\"s2\",\"previous_step\":\"s1\",\"next_step\":\"s3\"}}"),
	    "{\"type\":\"alert\"}",
	};

	(void)state;
	for (size_t i = 0; i < sizeof(docs) / sizeof(docs[0]); i++) {
		struct audit_event *ev = parse_ok(docs[i]);
		json_t *j = audit_event_to_json(ev);
		char *want = json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS | JSON_REAL_PRECISION(17));
		size_t len = 0;
		char *got = audit_event_canonical(ev, &len);

		assert_non_null(want);
		assert_string_equal(got, want);
		assert_int_equal(len, strlen(want));
		free(want);
		free(got);
		json_decref(j);
		audit_event_free(ev);
	}
}

static void
canonical_is_stable_across_a_round_trip(void **state)
{
	const char *in = "{\"type\":\"alert\",\"detail\":{\"x\":0.1,\"y\":1e300,\"k\":-0.0,"
	                 "\"n\":12345678901234567}}";
	struct audit_event *a = parse_ok(in), *b;
	char *ca = audit_event_canonical(a, NULL), *cb;

	(void)state;
	b = parse_ok(ca);
	cb = audit_event_canonical(b, NULL);
	assert_string_equal(ca, cb);
	free(ca);
	free(cb);
	audit_event_free(a);
	audit_event_free(b);
}

static void
from_json_rejects_malformed_events(void **state)
{
	char big[AUDIT_EVENT_JSON_MAX + 16];
	struct audit_event *ev;

	(void)state;
	parse_fails("[1]", IDP_EINVAL, "expected a JSON object");
	parse_fails("{\"type\":\"alert\"} x", IDP_EINVAL, "event: line 1");
	parse_fails("{\"type\":\"alert\",\"type\":\"alert\"}", IDP_EINVAL, "duplicate");
	parse_fails("{}", IDP_EINVAL, "type: missing");
	parse_fails("{\"type\":\"alert.unknown\"}", IDP_EINVAL, "type: not a known");
	parse_fails("{\"type\":\"alert\",\"colour\":1}", IDP_EINVAL, "colour: unknown key");
	parse_fails("{\"type\":\"alert\",\"action\":{\"tool\":\"t\",\"x\":1}}", IDP_EINVAL,
	            "action.x: unknown key");
	parse_fails("{\"type\":\"alert\",\"action\":[]}", IDP_EINVAL, "action: expected an object");
	parse_fails("{\"type\":\"alert\",\"task_id\":7}", IDP_EINVAL, "task_id: expected a string");
	parse_fails("{\"type\":\"alert\",\"severity\":11}", IDP_EINVAL, "severity");
	parse_fails("{\"type\":\"alert\",\"severity\":5.0}", IDP_EINVAL, "severity");
	parse_fails("{\"type\":\"alert\",\"outcome\":\"ok\"}", IDP_EINVAL, "outcome");
	parse_fails("{\"type\":\"alert\",\"timestamp\":\"2026-02-30T00:00:00.000Z\"}", IDP_EINVAL,
	            "timestamp");
	parse_fails("{\"type\":\"alert\",\"timestamp\":\"2026-03-27T14:15:23Z\"}", IDP_EINVAL,
	            "timestamp");
	parse_fails("{\"type\":\"alert\",\"timestamp\":1774620923456}", IDP_EINVAL, "timestamp");
	parse_fails("{\"type\":\"alert\",\"authorization\":{\"policy_decision\":\"MAYBE\"}}",
	            IDP_EINVAL, "authorization.policy_decision");
	parse_fails("{\"type\":\"alert\",\"actor\":{\"name\":\"x\"}}", IDP_EINVAL, "actor.kind");
	parse_fails("{\"type\":\"alert\",\"delegation_chain\":[\"a\",3]}", IDP_EINVAL,
	            "delegation_chain[1]");
	/* A hop CEF and LEEF would show that the chain never had. */
	parse_fails("{\"type\":\"alert\",\"delegation_chain\":[\"alice\",\"bob -> eve\"]}",
	            IDP_EINVAL, "delegation_chain[1]: may not contain");
	parse_fails("{\"type\":\"alert\",\"source_address\":\"localhost\"}", IDP_EINVAL,
	            "source_address: not an IPv4 or IPv6");
	parse_fails("{\"type\":\"alert\",\"action\":{\"parameters\":[1]}}", IDP_EINVAL,
	            "action.parameters: expected an object");
	/* detail and eight objects inside it: nine levels. */
	parse_fails("{\"type\":\"alert\",\"detail\":{\"a\":{\"b\":{\"c\":{\"d\":{\"e\":{\"f\":{"
	            "\"g\":{\"h\":{\"i\":1}}}}}}}}}}",
	            IDP_EINVAL, "detail: nested deeper than 8");
	ev = parse_ok("{\"type\":\"alert\",\"detail\":{\"a\":{\"b\":{\"c\":{\"d\":{\"e\":{\"f\":{"
	              "\"g\":{\"h\":1}}}}}}}}}");
	audit_event_free(ev);
	parse_fails("{\"type\":\"alert\",\"task_id\":\"nul\\u0000\"}", IDP_EINVAL, "event: line 1");

	memset(big, ' ', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	memcpy(big, "{\"type\":\"alert\"}", 16);
	parse_fails(big, IDP_ETOOBIG, "larger than 65536 bytes");
}

/* "<head><n times fill><tail>" in a new string. */
static char *
padded(const char *head, char fill, size_t n, const char *tail)
{
	size_t h = strlen(head), t = strlen(tail);
	char *s = malloc(h + n + t + 1);

	assert_non_null(s);
	memcpy(s, head, h);
	memset(s + h, fill, n);
	memcpy(s + h + n, tail, t + 1);
	return s;
}

static void
from_json_reports_size_bounds_as_too_big(void **state)
{
	char *text;

	(void)state;
	text = padded("{\"type\":\"tool_invocation\",\"action\":{\"tool\":\"", 'x', 300, "\"}}");
	parse_fails(text, IDP_ETOOBIG, "action.tool: longer than 256 bytes");
	free(text);
	text = padded("{\"type\":\"tool_invocation\",\"action\":{\"parameters\":{\"q\":\"", 'y',
	              AUDIT_JSON_MAX_BYTES, "\"}}}");
	parse_fails(text, IDP_ETOOBIG, "action.parameters: larger than 16384 bytes");
	free(text);
	text = padded("{\"type\":\"tool_invocation\",\"delegation_chain\":[\"", 'z', 321, "\"]}");
	parse_fails(text, IDP_ETOOBIG, "delegation_chain[0]: longer than 320 bytes");
	free(text);
}

static void
from_json_collects_every_error(void **state)
{
	const char *in = "{\"type\":\"nope\",\"task_id\":1,\"severity\":\"high\",\"extra\":0}";
	struct audit_event *ev;
	struct idp_diag d;

	(void)state;
	idp_diag_init(&d);
	assert_int_equal(audit_event_from_json(in, strlen(in), &ev, &d), IDP_EINVAL);
	assert_int_equal(d.count, 4);
	assert_non_null(strstr(idp_diag_str(&d), "type:"));
	assert_non_null(strstr(idp_diag_str(&d), "task_id:"));
	assert_non_null(strstr(idp_diag_str(&d), "severity:"));
	assert_non_null(strstr(idp_diag_str(&d), "extra: unknown key"));
}

static void
from_json_redacts_parameters_and_detail(void **state)
{
	const char *in =
	    "{\"type\":\"tool_invocation\",\"action\":{\"tool\":\"db_query\",\"parameters\":{"
	    "\"db_password\":\"hunter2\",\"query\":\"select 1\",\"headers\":{\"Authorization\":"
	    "\"Bearer abc\",\"Accept\":\"*/*\"},\"list\":[{\"client_secret\":{\"k\":1}},"
	    "\"Bearer xyz\",\"plain\"],\"note\":\"eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln\"}},"
	    "\"detail\":{\"session\":\"s1\",\"count\":2}}";
	struct audit_event *ev = parse_ok(in);
	char *c = audit_event_canonical(ev, NULL);

	(void)state;
	assert_string_equal(
	    c, "{\"action\":{\"parameters\":{\"db_password\":\"[REDACTED]\",\"headers\":{"
	       "\"Accept\":\"*/*\",\"Authorization\":\"[REDACTED]\"},\"list\":[{\"client_secret\":"
	       "\"[REDACTED]\"},\"[REDACTED]\",\"plain\"],\"note\":\"[REDACTED]\",\"query\":"
	       "\"select 1\"},\"tool\":\"db_query\"},\"detail\":{\"count\":2,\"session\":"
	       "\"[REDACTED]\"},\"severity\":2,\"type\":\"tool_invocation\"}");
	assert_null(strstr(c, "hunter2"));
	free(c);
	audit_event_free(ev);
}

/* A credential inside free text, or under a key the words miss, is hidden too. */
static void
credentials_anywhere_in_a_value_are_redacted(void **state)
{
	const char *in =
	    "{\"type\":\"tool_invocation\",\"action\":{\"tool\":\"sh\",\"parameters\":{"
	    "\"cmd\":\"curl -H 'Authorization: Bearer abcdef0123456789' https://x\","
	    "\"k\":\"eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.sig\\n\",\"pwd\":\"hunter2\","
	    "\"access_key\":\"AKIA1234\",\"ok\":\"basic usage of the API\"},"
	    "\"result\":\"got eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.sig and "
	    "idpk_0123456789abcdef\"},"
	    "\"context\":{\"step\":\"used Bearer abcdef0123456789\"}}";
	struct audit_event *ev = parse_ok(in);
	char *c = audit_event_canonical(ev, NULL);

	(void)state;
	assert_null(strstr(c, "abcdef0123456789"));
	assert_null(strstr(c, "eyJhbGciOiJIUzI1NiJ9"));
	assert_null(strstr(c, "hunter2"));
	assert_null(strstr(c, "AKIA1234"));
	assert_null(strstr(c, "idpk_0123456789abcdef"));
	assert_string_equal(audit_event_get(ev, AUDIT_F_RESULT), AUDIT_REDACTED);
	assert_string_equal(audit_event_get(ev, AUDIT_F_STEP), AUDIT_REDACTED);
	/* Ordinary text stays. */
	assert_non_null(strstr(c, "basic usage of the API"));
	assert_false(audit_value_is_secret("a token bucket of 10 per second"));
	assert_false(audit_value_is_secret("Bearer"));
	assert_true(audit_value_is_secret("  Basic dXNlcjpwdw==  "));
	free(c);
	audit_event_free(ev);
}

/*
 * Every compact token shape is a secret wherever it sits: empty segments
 * (a JWE with alg "dir", a detached-payload JWS), dots after it (as
 * audit_json_clip leaves), and anything before it ("Bearer%20").
 */
static void
every_token_shape_is_secret(void **state)
{
	static const char *const secret[] = {
	    "eyJhbGciOiJkaXIiLCJlbmMiOiJBMjU2R0NNIn0..aXZpdml2aXY.Y2lwaGVydGV4dA.dGFndGFndGFn",
	    "eyJhbGciOiJFUzI1NiJ9..c2lnbmF0dXJlc2lnbmF0dXJl",
	    "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln..",
	    "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln...",
	    "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln...[120 more bytes]",
	    "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.",
	    "curl -H Authorization:%20Bearer%20eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln",
	    "key=xidpk_0123456789abcdef",
	};
	static const char *const plain[] = {
	    "eyJ",
	    "eyJhbGciOiJFUzI1NiJ9",
	    "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0",
	    "eyJhbGci...",
	    "the eyJ prefix is base64 for {\"",
	};

	(void)state;
	for (size_t i = 0; i < sizeof(secret) / sizeof(secret[0]); i++)
		if (!audit_value_is_secret(secret[i]))
			fail_msg("not a secret: %s", secret[i]);
	for (size_t i = 0; i < sizeof(plain) / sizeof(plain[0]); i++)
		if (audit_value_is_secret(plain[i]))
			fail_msg("a secret: %s", plain[i]);
}

/*
 * A value made of token starts that are no token ("eyJ-eyJ-...") costs a
 * scan of each character a bounded number of times, not one scan per
 * start; and a real token after them is still found.
 */
static void
token_scan_is_linear(void **state)
{
	size_t n = 60000, steps;
	char *v = malloc(n + 64);

	(void)state;
	assert_non_null(v);
	for (size_t i = 0; i < n; i += 4)
		memcpy(v + i, "eyJ-", 4);
	v[n] = '\0';
	redact_scan_steps = 0;
	assert_false(audit_value_is_secret(v));
	steps = redact_scan_steps;
	assert_true(steps <= 2 * n);
	strcpy(v + n, " eyJhbGci.eyJz.c2ln");
	assert_true(audit_value_is_secret(v));
	/* The same in a parameters object, larger than any event, refused unscanned. */
	{
		json_t *p = json_object();
		char *big = malloc(2 * AUDIT_EVENT_JSON_MAX);

		assert_non_null(big);
		memset(big, 'a', 2 * AUDIT_EVENT_JSON_MAX - 1);
		big[2 * AUDIT_EVENT_JSON_MAX - 1] = '\0';
		memcpy(big, "eyJ-", 4);
		json_object_set_new(p, "q", json_string(big));
		redact_scan_steps = 0;
		assert_int_equal(audit_redact_params(p), IDP_ETOOBIG);
		assert_int_equal(redact_scan_steps, 0);
		json_decref(p);
		free(big);
	}
	free(v);
}

static void
secret_keys_match_case_and_separators(void **state)
{
	static const char *const secret[] = {
	    "password",        "DB_PASSWORD",   "passwd",       "pass-phrase",
	    "client_secret",   "token",         "access_token", "refreshToken",
	    "id_token",        "Authorization", "api_key",      "X-Api-Key",
	    "apikey",          "private_key",   "privateKey",   "credential",
	    "aws_credentials", "Cookie",        "set-cookie",   "session",
	    "session_id",      "jwt",
	};
	static const char *const plain[] = {"region", "filters", "author", "user", "query",
	                                    "path",   "count",   "key",    "pass", ""};

	(void)state;
	for (size_t i = 0; i < sizeof(secret) / sizeof(secret[0]); i++)
		if (!audit_key_is_secret(secret[i]))
			fail_msg("\"%s\" should count as secret", secret[i]);
	for (size_t i = 0; i < sizeof(plain) / sizeof(plain[0]); i++)
		if (audit_key_is_secret(plain[i]))
			fail_msg("\"%s\" should not count as secret", plain[i]);
}

static json_t *
nested(int depth)
{
	json_t *j = json_pack("{s:i}", "leaf", 1);

	for (int i = 1; i < depth; i++)
		j = json_pack("{s:o}", "n", j);
	return j;
}

static void
redact_bounds_depth_and_size(void **state)
{
	json_t *ok = nested(AUDIT_JSON_MAX_DEPTH), *deep = nested(AUDIT_JSON_MAX_DEPTH + 1);
	json_t *big = json_object();
	char *before = json_dumps(deep, JSON_COMPACT), *after;
	char filler[1025];

	(void)state;
	assert_int_equal(audit_redact_params(ok), IDP_OK);
	assert_int_equal(audit_redact_params(deep), IDP_EINVAL);
	after = json_dumps(deep, JSON_COMPACT);
	assert_string_equal(before, after);
	memset(filler, 'f', 1024);
	filler[1024] = '\0';
	for (int i = 0; i < 15; i++) {
		char key[8];

		snprintf(key, sizeof(key), "k%d", i);
		json_object_set_new(big, key, json_string(filler));
	}
	assert_int_equal(audit_redact_params(big), IDP_OK);
	json_object_set_new(big, "k15", json_string(filler));
	assert_int_equal(audit_redact_params(big), IDP_ETOOBIG);
	assert_int_equal(audit_redact_params(NULL), IDP_EINVAL);
	free(before);
	free(after);
	json_decref(ok);
	json_decref(deep);
	json_decref(big);
}

/* A detail handed over is checked and redacted like a copied one, and
 * belongs to the event from then on, also when it is refused. */
static void
take_detail_redacts_like_set_detail(void **state)
{
	struct audit_event *a = audit_event_new(AUDIT_TOKEN_ISSUED, 1764000000000);
	struct audit_event *b = audit_event_new(AUDIT_TOKEN_ISSUED, 1764000000000);
	json_t *d = json_pack("{s:s,s:s,s:{s:s}}", "audience", "https://aws.example.com",
	                      "client_secret", "hunter2", "inner", "note", "Bearer abc");
	char *ca, *cb;

	(void)state;
	assert_non_null(a);
	assert_non_null(b);
	assert_int_equal(audit_event_set(a, AUDIT_F_ID, "11111111-2222-4333-8444-555555555555"),
	                 IDP_OK);
	assert_int_equal(audit_event_set(b, AUDIT_F_ID, "11111111-2222-4333-8444-555555555555"),
	                 IDP_OK);
	assert_int_equal(audit_event_set_detail(a, d), IDP_OK);
	assert_int_equal(audit_event_take_detail(b, d), IDP_OK); /* d is b's now */
	ca = audit_event_canonical(a, NULL);
	cb = audit_event_canonical(b, NULL);
	assert_non_null(ca);
	assert_string_equal(ca, cb);
	assert_null(strstr(cb, "hunter2"));
	assert_null(strstr(cb, "Bearer abc"));
	/* Refused (too deep), and still consumed: ASan would report a leak. */
	assert_int_equal(audit_event_take_detail(b, nested(AUDIT_JSON_MAX_DEPTH + 1)), IDP_EINVAL);
	free(ca);
	free(cb);
	audit_event_free(a);
	audit_event_free(b);
}

static void
redact_twice_changes_nothing_more(void **state)
{
	json_t *p = json_pack("{s:s,s:[s,{s:i}],s:{s:s}}", "token", "t", "xs", "Basic dXNlcjpw",
	                      "cookie", 5, "o", "k", "v");
	char *once, *twice;

	(void)state;
	assert_int_equal(audit_redact_params(p), IDP_OK);
	once = json_dumps(p, JSON_COMPACT | JSON_SORT_KEYS);
	assert_string_equal(once,
	                    "{\"o\":{\"k\":\"v\"},\"token\":\"[REDACTED]\",\"xs\":[\"[REDACTED]\","
	                    "{\"cookie\":\"[REDACTED]\"}]}");
	assert_int_equal(audit_redact_params(p), IDP_OK);
	twice = json_dumps(p, JSON_COMPACT | JSON_SORT_KEYS);
	assert_string_equal(once, twice);
	free(once);
	free(twice);
	json_decref(p);
}

static void
set_params_copies_and_redacts(void **state)
{
	struct audit_event *ev = audit_event_new(AUDIT_TOOL_INVOCATION, 0);
	json_t *p = json_pack("{s:s,s:s}", "region", "eu", "secret", "s3cr3t");
	json_t *empty = json_object(), *one = json_integer(1);

	(void)state;
	assert_int_equal(audit_event_set_params(ev, p), IDP_OK);
	/* The caller's object is neither changed nor shared. */
	assert_string_equal(json_string_value(json_object_get(p, "secret")), "s3cr3t");
	json_object_set_new(p, "region", json_string("us"));
	assert_string_equal(json_string_value(json_object_get(audit_event_params(ev), "region")),
	                    "eu");
	assert_string_equal(json_string_value(json_object_get(audit_event_params(ev), "secret")),
	                    "[REDACTED]");
	assert_int_equal(audit_event_set_params(ev, one), IDP_EINVAL);
	assert_non_null(audit_event_params(ev));
	assert_int_equal(audit_event_set_params(ev, empty), IDP_OK);
	assert_null(audit_event_params(ev));
	json_decref(p);
	json_decref(empty);
	json_decref(one);
	audit_event_free(ev);
}

static void
put_detail_adds_keys_and_redacts(void **state)
{
	struct audit_event *ev = audit_event_new(AUDIT_TOKEN_DENIED, 0);

	(void)state;
	assert_int_equal(audit_event_put_detail(ev, "reason", json_string("chain_depth_exceeded")),
	                 IDP_OK);
	assert_int_equal(audit_event_put_detail(ev, "refresh_token", json_string("r")), IDP_OK);
	assert_int_equal(audit_event_put_detail(ev, "n", json_integer(3)), IDP_OK);
	assert_string_equal(audit_event_detail_str(ev, "reason"), "chain_depth_exceeded");
	assert_string_equal(audit_event_detail_str(ev, "refresh_token"), "[REDACTED]");
	assert_null(audit_event_detail_str(ev, "n"));
	assert_int_equal(audit_event_put_detail(ev, "bad\xff", json_integer(1)), IDP_EINVAL);
	assert_int_equal(audit_event_put_detail(ev, "x", NULL), IDP_EINVAL);
	assert_int_equal(json_object_size(audit_event_detail(ev)), 3);
	audit_event_free(ev);
}

static void
clone_is_independent(void **state)
{
	struct audit_event *ev = parse_ok("{\"type\":\"delegation.created\",\"task_id\":\"t\","
	                                  "\"delegation_chain\":[\"alice\",\"planner\"],"
	                                  "\"detail\":{\"depth\":1}}");
	struct audit_event *c = audit_event_clone(ev);
	char *a = audit_event_canonical(ev, NULL), *b;

	(void)state;
	assert_int_equal(audit_event_set(ev, AUDIT_F_TASK_ID, "changed"), IDP_OK);
	assert_int_equal(audit_event_chain_append(ev, "more"), IDP_OK);
	assert_int_equal(audit_event_put_detail(ev, "depth", json_integer(2)), IDP_OK);
	audit_event_free(ev);
	b = audit_event_canonical(c, NULL);
	assert_string_equal(a, b);
	free(a);
	free(b);
	audit_event_free(c);
}

/* A row as a newer idpd might write it: a type and members unknown here. */
static const char newer_row[] =
    "{\"agent_id\":\"planner\",\"authorization\":{\"granted_scope\":\"cloud:Describe*\","
    "\"scope_hash\":\"ab12\"},\"future\":{\"depth\":[1,2]},\"id\":"
    "\"01a24401-44d4-7004-8265-857ac3cb9e05\",\"severity\":6,\"task_id\":\"task-1\","
    "\"timestamp\":\"2026-12-05T10:00:00.000Z\",\"type\":\"session.resumed\"}";

static struct audit_event *
stored_ok(const char *text)
{
	struct audit_event *ev = NULL;
	struct idp_diag d;

	idp_diag_init(&d);
	if (audit_event_from_stored(text, strlen(text), &ev, &d) != IDP_OK)
		fail_msg("stored row refused: %s", idp_diag_str(&d));
	return ev;
}

/*
 * A row stored before free text was redacted: what a JSON sink ships of it
 * (its stored text) is redacted as CEF and LEEF show it.
 */
static void
stored_free_text_is_redacted_for_every_format(void **state)
{
	static const char row[] =
	    "{\"action\":{\"result\":\"curl -H 'Authorization: Bearer sk_live_abcdefghijklmnop' "
	    "ok\",\"tool\":\"http\"},\"context\":{\"step\":\"used idpk_"
	    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\"},\"id\":"
	    "\"01a24401-44d4-7004-8265-857ac3cb9e05\",\"severity\":2,\"timestamp\":"
	    "\"2026-12-05T10:00:00.000Z\",\"type\":\"tool_invocation\"}";
	struct audit_event *ev;
	char *canon;

	(void)state;
	ev = stored_ok(row);
	assert_string_equal(audit_event_get(ev, AUDIT_F_RESULT), AUDIT_REDACTED);
	canon = audit_event_canonical(ev, NULL);
	assert_null(strstr(canon, "sk_live"));
	assert_null(strstr(canon, "idpk_"));
	assert_non_null(strstr(canon, "\"result\":\"[REDACTED]\""));
	assert_non_null(strstr(canon, "\"step\":\"[REDACTED]\""));
	free(canon);
	audit_event_free(ev);
}

static void
stored_rows_of_a_newer_version_are_read(void **state)
{
	struct audit_event *ev, *c;
	char *canon;
	size_t len;
	json_t *j;

	(void)state;
	/* What an ingested event may not be... */
	parse_fails(newer_row, IDP_EINVAL, "type: not a known event type");
	parse_fails(newer_row, IDP_EINVAL, "future: unknown key");
	parse_fails(newer_row, IDP_EINVAL, "authorization.scope_hash: unknown key");
	/* ...a stored row may be. */
	ev = stored_ok(newer_row);
	assert_int_equal(audit_event_type(ev), AUDIT_TYPE_UNKNOWN);
	assert_string_equal(audit_event_type_name(ev), "session.resumed");
	assert_string_equal(audit_event_type_title(ev), "session.resumed");
	assert_string_equal(audit_event_type_category(ev), "session");
	assert_int_equal(audit_event_severity(ev), 6);
	assert_int_equal(audit_event_time(ev), 1796464800000LL);
	assert_string_equal(audit_event_get(ev, AUDIT_F_AGENT_ID), "planner");
	assert_string_equal(audit_event_get(ev, AUDIT_F_TASK_ID), "task-1");
	assert_string_equal(audit_event_get(ev, AUDIT_F_GRANTED_SCOPE), "cloud:Describe*");
	/* The row's own text is its canonical form, unknown members and all. */
	canon = audit_event_canonical(ev, &len);
	assert_string_equal(canon, newer_row);
	assert_int_equal(len, strlen(newer_row));
	free(canon);
	j = audit_event_to_json(ev);
	assert_string_equal(json_string_value(json_object_get(j, "type")), "session.resumed");
	json_decref(j);
	c = audit_event_clone(ev);
	audit_event_free(ev);
	assert_string_equal(audit_event_type_name(c), "session.resumed");
	assert_string_equal(audit_event_type_category(c), "session");
	canon = audit_event_canonical(c, NULL);
	assert_string_equal(canon, newer_row);
	free(canon);
	audit_event_free(c);
}

/* A body with line breaks (not one idpd wrote) comes back compact, so a sink's lines stay lines. */
static void
stored_row_with_line_breaks_comes_back_compact(void **state)
{
	struct audit_event *ev = stored_ok("{\"type\": \"session.resumed\",\r\n \"zeta\": [1, 2],\n"
	                                   " \"agent_id\": \"a\\nb\"}");
	char *canon;

	(void)state;
	canon = audit_event_canonical(ev, NULL);
	assert_string_equal(canon,
	                    "{\"type\":\"session.resumed\",\"zeta\":[1,2],\"agent_id\":\"a\\nb\"}");
	free(canon);
	audit_event_free(ev);
}

/*
 * A row that holds what this version redacts (written by hand, or by a
 * version with other rules) ships redacted, also in JSON; members this
 * version does not know are kept.
 */
static void
stored_row_is_redacted_as_this_version_would(void **state)
{
	struct audit_event *ev =
	    stored_ok("{\"type\":\"tool_invocation\",\"future\":1,\"action\":{\"tool\":\"db\","
	              "\"parameters\":{\"db_password\":\"hunter2\",\"query\":\"select 1\"}},"
	              "\"detail\":{\"session\":\"s1\",\"count\":2}}");
	char *c = audit_event_canonical(ev, NULL);

	(void)state;
	assert_string_equal(c,
	                    "{\"type\":\"tool_invocation\",\"future\":1,\"action\":{\"tool\":"
	                    "\"db\",\"parameters\":{\"db_password\":\"[REDACTED]\",\"query\":"
	                    "\"select 1\"}},\"detail\":{\"session\":\"[REDACTED]\",\"count\":2}}");
	free(c);
	audit_event_free(ev);
	/* Only the parameters need it: the detail is kept as written. */
	ev =
	    stored_ok("{\"type\":\"tool_invocation\",\"action\":{\"parameters\":{\"token\":\"t\"}},"
	              "\"detail\":{\"count\":2}}");
	c = audit_event_canonical(ev, NULL);
	assert_string_equal(c,
	                    "{\"type\":\"tool_invocation\",\"action\":{\"parameters\":{\"token\":"
	                    "\"[REDACTED]\"}},\"detail\":{\"count\":2}}");
	free(c);
	audit_event_free(ev);
}

/* An event read back is never written again: its text is the old row's. */
static void
stored_event_is_not_emitted(void **state)
{
	struct audit_event *ev = stored_ok("{\"type\":\"session.resumed\"}");

	(void)state;
	assert_true(audit_event_is_stored(ev));
	assert_int_equal(audit_emit(ev), IDP_EINVAL);
	ev = stored_ok("{\"type\":\"token.issued\"}");
	assert_int_equal(audit_emit(ev), IDP_EINVAL);
	/* The same event from intake gets past that check (to "no writer"). */
	ev = parse_ok("{\"type\":\"token.issued\"}");
	assert_false(audit_event_is_stored(ev));
	assert_int_not_equal(audit_emit(ev), IDP_EINVAL);
}

/* A type without a '.' is its own category, as with the known ones. */
static void
stored_type_without_a_dot_is_its_own_category(void **state)
{
	struct audit_event *ev = stored_ok("{\"type\":\"heartbeat\"}");

	(void)state;
	assert_int_equal(audit_event_type(ev), AUDIT_TYPE_UNKNOWN);
	assert_string_equal(audit_event_type_category(ev), "heartbeat");
	assert_int_equal(audit_event_severity(ev), 5);
	audit_event_free(ev);
}

static void
stored_fails(const char *text, int rc, const char *mention)
{
	struct audit_event *ev = (struct audit_event *)1;
	struct idp_diag d;

	idp_diag_init(&d);
	assert_int_equal(audit_event_from_stored(text, strlen(text), &ev, &d), rc);
	assert_null(ev);
	if (strstr(idp_diag_str(&d), mention) == NULL)
		fail_msg("diag \"%s\" does not mention \"%s\"", idp_diag_str(&d), mention);
}

/* Only newness passes: what this version knows is checked as on ingestion. */
static void
stored_rows_are_checked_like_ingested_ones(void **state)
{
	char big[AUDIT_EVENT_JSON_MAX + 64], name[80];

	(void)state;
	stored_fails("{\"type\":\"Session Resumed\"}", IDP_EINVAL, "type: not a known");
	stored_fails("{\"type\":\"session|resumed\"}", IDP_EINVAL, "type: not a known");
	stored_fails("{\"type\":\"9lives\"}", IDP_EINVAL, "type: not a known");
	stored_fails("{\"type\":\"\"}", IDP_EINVAL, "type: not a known");
	stored_fails("{\"type\":7}", IDP_EINVAL, "type: not a known");
	stored_fails("{\"agent_id\":\"a\"}", IDP_EINVAL, "type: missing");
	memset(name, 'a', 65);
	name[65] = '\0';
	snprintf(big, sizeof(big), "{\"type\":\"%s\"}", name);
	stored_fails(big, IDP_EINVAL, "type: not a known");
	stored_fails("{\"type\":\"session.resumed\",\"agent_id\":5}", IDP_EINVAL,
	             "agent_id: expected a string");
	stored_fails("{\"type\":\"token.issued\",\"outcome\":\"maybe\"}", IDP_EINVAL, "outcome:");
	stored_fails("{\"type\":\"token.issued\",\"severity\":11}", IDP_EINVAL, "severity:");
	stored_fails("[\"token.issued\"]", IDP_EINVAL, "expected a JSON object");
	stored_fails("{\"type\":", IDP_EINVAL, "event: line 1");
	stored_fails("{\"type\":\"a\",\"type\":\"b\"}", IDP_EINVAL, "event: line 1");
	{
		static const char nul[] = "{\"type\":\"heartbeat\",\"severity\":1\0}";
		struct audit_event *ev = (struct audit_event *)1;
		struct idp_diag d;

		idp_diag_init(&d);
		assert_int_equal(audit_event_from_stored(nul, sizeof(nul) - 1, &ev, &d),
		                 IDP_EINVAL);
		assert_null(ev);
		assert_non_null(strstr(idp_diag_str(&d), "NUL byte"));
	}
	memset(big, ' ', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	stored_fails(big, IDP_ETOOBIG, "larger than");
}

/* A row of this version reads back as the event that was written. */
static void
stored_row_of_this_version_reads_back_whole(void **state)
{
	char *text = golden("full.json"), *canon;
	struct audit_event *ev = stored_ok(text);

	(void)state;
	assert_int_equal(audit_event_type(ev), AUDIT_TOOL_INVOCATION);
	assert_string_equal(audit_event_type_name(ev), "tool_invocation");
	assert_string_equal(audit_event_type_title(ev), "Tool invocation");
	assert_string_equal(audit_event_type_category(ev), "tool");
	assert_int_equal(audit_event_chain_len(ev), 3);
	canon = audit_event_canonical(ev, NULL);
	assert_string_equal(canon, text);
	free(canon);
	audit_event_free(ev);
	free(text);
}

uint64_t audit_uuid7_stamp(_Atomic uint64_t *last_stamp, int64_t now_ms);

/* The 48-bit millisecond field of a version-7 id. */
static int64_t
uuid7_ms(const char *id)
{
	char hex[13];

	memcpy(hex, id, 8);
	memcpy(hex + 8, id + 9, 4);
	hex[12] = '\0';
	return strtoll(hex, NULL, 16);
}

static void
assigned_ids_are_uuid_v7_of_now(void **state)
{
	struct audit_event *a = audit_event_new(AUDIT_ALERT, 0),
	                   *b = audit_event_new(AUDIT_ALERT, 0);
	int64_t before = idp_now_ms(idp_clock_system()), after;
	const char *id;

	(void)state;
	assert_int_equal(audit_event_assign_id(a), IDP_OK);
	assert_int_equal(audit_event_assign_id(b), IDP_OK);
	after = idp_now_ms(idp_clock_system());
	id = audit_event_get(a, AUDIT_F_ID);
	assert_int_equal(strlen(id), 36);
	for (int i = 0; i < 36; i++) {
		if (i == 8 || i == 13 || i == 18 || i == 23)
			assert_int_equal(id[i], '-');
		else
			assert_non_null(strchr("0123456789abcdef", id[i]));
	}
	assert_int_equal(id[14], '7');
	assert_non_null(strchr("89ab", id[19]));
	assert_true(uuid7_ms(id) >= before && uuid7_ms(id) <= after);
	assert_string_not_equal(id, audit_event_get(b, AUDIT_F_ID));
	audit_event_free(a);
	audit_event_free(b);
}

/* Byte order is time order: what makes the event_id index grow at its end. */
static void
assigned_ids_strictly_increase(void **state)
{
	char prev[37] = "";

	(void)state;
	for (int i = 0; i < 20000; i++) {
		struct audit_event *ev = audit_event_new(AUDIT_ALERT, 0);
		const char *id;

		assert_int_equal(audit_event_assign_id(ev), IDP_OK);
		id = audit_event_get(ev, AUDIT_F_ID);
		assert_true(strcmp(id, prev) > 0);
		memcpy(prev, id, sizeof(prev));
		audit_event_free(ev);
	}
}

static void
uuid7_stamp_counts_within_a_millisecond_and_survives_a_clock_step_back(void **state)
{
	const int64_t t = 1774620923456;
	_Atomic uint64_t last = 0;
	uint64_t s0, s1, s2, s3;

	(void)state;
	s0 = audit_uuid7_stamp(&last, t);
	s1 = audit_uuid7_stamp(&last, t);
	s2 = audit_uuid7_stamp(&last, t - 5000); /* the clock stepped back */
	s3 = audit_uuid7_stamp(&last, t + 1);
	assert_true(s0 == (uint64_t)t << 12);
	assert_true(s1 == s0 + 1);
	assert_true(s2 == s1 + 1);
	assert_true(s3 == (uint64_t)(t + 1) << 12);
	/* 4096 ids in one millisecond: the next borrows the next millisecond. */
	for (int i = 0; i < 4095; i++)
		s3 = audit_uuid7_stamp(&last, t + 1);
	assert_true(s3 == ((uint64_t)(t + 1) << 12) + 4095);
	assert_true(audit_uuid7_stamp(&last, t + 1) == (uint64_t)(t + 2) << 12);
}

static void
chain_hash_is_sha256_of_prev_and_canonical(void **state)
{
	uint8_t h[AUDIT_HASH_LEN], back[AUDIT_HASH_LEN];
	char hex[AUDIT_HASH_HEX_LEN + 1];

	(void)state;
	for (int i = 0; i < AUDIT_HASH_LEN; i++)
		assert_int_equal(audit_genesis_hash[i], 0);
	/* Vectors from an independent SHA-256 (Python's hashlib). */
	assert_int_equal(audit_chain_hash(audit_genesis_hash, "abc", 3, h), IDP_OK);
	audit_hash_to_hex(h, hex);
	assert_string_equal(hex,
	                    "365aa7d8f7f9402c4b9434502b4cc89ddb09fe50d7cd95b493b834c62d5a5370");
	assert_int_equal(audit_hash_from_hex(hex, back), IDP_OK);
	assert_memory_equal(h, back, AUDIT_HASH_LEN);
}

static void
chain_links_events_and_exposes_a_change(void **state)
{
	struct audit_event *ev = audit_event_new(AUDIT_TOOL_INVOCATION, AUDIT_TIME_UNSET);
	uint8_t h1[AUDIT_HASH_LEN], h2[AUDIT_HASH_LEN], t[AUDIT_HASH_LEN];
	char hex[AUDIT_HASH_HEX_LEN + 1];
	size_t len;
	char *c = audit_event_canonical(ev, &len);

	(void)state;
	assert_int_equal(audit_chain_hash(audit_genesis_hash, c, len, h1), IDP_OK);
	audit_hash_to_hex(h1, hex);
	assert_string_equal(hex,
	                    "2e9185a6859bfa7328aa8990bf6ba1be4260ea6ca6d1eeae6dadf96e1742b24c");
	assert_int_equal(audit_chain_hash(h1, c, len, h2), IDP_OK);
	audit_hash_to_hex(h2, hex);
	assert_string_equal(hex,
	                    "2ae8ad938122e63527860285bcfcbd65b44ac2ce7d13bf62f0ecdee6e611a622");
	/* out may alias prev. */
	memcpy(t, h1, sizeof(t));
	assert_int_equal(audit_chain_hash(t, c, len, t), IDP_OK);
	assert_memory_equal(t, h2, AUDIT_HASH_LEN);
	free(c);
	/* Any edit of the event changes its link. */
	assert_int_equal(audit_event_set_severity(ev, 3), IDP_OK);
	c = audit_event_canonical(ev, &len);
	assert_int_equal(audit_chain_hash(audit_genesis_hash, c, len, t), IDP_OK);
	assert_memory_not_equal(t, h1, AUDIT_HASH_LEN);
	free(c);
	audit_event_free(ev);
}

static void
hash_from_hex_rejects_bad_input(void **state)
{
	uint8_t h[AUDIT_HASH_LEN];
	char hex[AUDIT_HASH_HEX_LEN + 2];

	(void)state;
	memset(hex, 'A', AUDIT_HASH_HEX_LEN);
	hex[AUDIT_HASH_HEX_LEN] = '\0';
	assert_int_equal(audit_hash_from_hex(hex, h), IDP_OK);
	assert_int_equal(h[0], 0xaa);
	hex[10] = 'g';
	assert_int_equal(audit_hash_from_hex(hex, h), IDP_EINVAL);
	hex[10] = 'a';
	hex[AUDIT_HASH_HEX_LEN] = 'a';
	hex[AUDIT_HASH_HEX_LEN + 1] = '\0';
	assert_int_equal(audit_hash_from_hex(hex, h), IDP_EINVAL);
	assert_int_equal(audit_hash_from_hex("", h), IDP_EINVAL);
}

static void
clip_cuts_echoed_text_on_a_character_boundary(void **state)
{
	char big[600];
	json_t *v;

	(void)state;
	v = audit_json_clip("short", 16);
	assert_string_equal(json_string_value(v), "short");
	json_decref(v);
	assert_null(audit_json_clip(NULL, 16));
	/* 300 two-byte characters: a cut at 101 bytes falls inside one. */
	for (int i = 0; i < 300; i++)
		memcpy(big + 2 * i, "\xc3\xa9", 2);
	big[600 - 1] = '\0';
	big[598] = '\0';
	v = audit_json_clip(big, 101);
	assert_non_null(v); /* valid UTF-8, or jansson would refuse it */
	assert_int_equal(strncmp(json_string_value(v), big, 100), 0);
	assert_string_equal(json_string_value(v) + 100, "...[498 more bytes]");
	json_decref(v);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(type_names_round_trip_and_fit_syslog_msgid),
	    cmocka_unit_test(type_parse_rejects_unknown_and_case_variants),
	    cmocka_unit_test(enum_names_parse_back),
	    cmocka_unit_test(new_event_has_type_defaults_only),
	    cmocka_unit_test(credentials_anywhere_in_a_value_are_redacted),
	    cmocka_unit_test(setters_copy_their_strings),
	    cmocka_unit_test(set_rejects_bad_values_and_keeps_the_old_one),
	    cmocka_unit_test(empty_string_clears_a_field),
	    cmocka_unit_test(severity_and_time_are_bounded),
	    cmocka_unit_test(delegation_chain_is_bounded),
	    cmocka_unit_test(golden_event_parses_and_reserialises_byte_for_byte),
	    cmocka_unit_test(canonical_sorts_keys_and_drops_whitespace),
	    cmocka_unit_test(canonical_is_stable_across_a_round_trip),
	    cmocka_unit_test(canonical_equals_the_sorted_dump_of_the_json_form),
	    cmocka_unit_test(from_json_rejects_malformed_events),
	    cmocka_unit_test(from_json_reports_size_bounds_as_too_big),
	    cmocka_unit_test(from_json_collects_every_error),
	    cmocka_unit_test(from_json_redacts_parameters_and_detail),
	    cmocka_unit_test(every_token_shape_is_secret),
	    cmocka_unit_test(token_scan_is_linear),
	    cmocka_unit_test(secret_keys_match_case_and_separators),
	    cmocka_unit_test(redact_bounds_depth_and_size),
	    cmocka_unit_test(redact_twice_changes_nothing_more),
	    cmocka_unit_test(take_detail_redacts_like_set_detail),
	    cmocka_unit_test(set_params_copies_and_redacts),
	    cmocka_unit_test(put_detail_adds_keys_and_redacts),
	    cmocka_unit_test(clone_is_independent),
	    cmocka_unit_test(stored_rows_of_a_newer_version_are_read),
	    cmocka_unit_test(stored_free_text_is_redacted_for_every_format),
	    cmocka_unit_test(stored_type_without_a_dot_is_its_own_category),
	    cmocka_unit_test(stored_row_is_redacted_as_this_version_would),
	    cmocka_unit_test(stored_event_is_not_emitted),
	    cmocka_unit_test(stored_row_with_line_breaks_comes_back_compact),
	    cmocka_unit_test(stored_rows_are_checked_like_ingested_ones),
	    cmocka_unit_test(stored_row_of_this_version_reads_back_whole),
	    cmocka_unit_test(assigned_ids_are_uuid_v7_of_now),
	    cmocka_unit_test(assigned_ids_strictly_increase),
	    cmocka_unit_test(
	        uuid7_stamp_counts_within_a_millisecond_and_survives_a_clock_step_back),
	    cmocka_unit_test(chain_hash_is_sha256_of_prev_and_canonical),
	    cmocka_unit_test(chain_links_events_and_exposes_a_change),
	    cmocka_unit_test(hash_from_hex_rejects_bad_input),
	    cmocka_unit_test(clip_cuts_echoed_text_on_a_character_boundary),
	};
	return cmocka_run_group_tests_name("audit_event", tests, NULL, NULL);
}
