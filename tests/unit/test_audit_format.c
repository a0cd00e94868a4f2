/*
 * Unit tests for the JSON, CEF and LEEF line formats.  Expected lines are the
 * hand-checked files in tests/golden/audit/.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "idpd/audit.h"

#define SEED_TIME 1774620923456LL /* 2026-03-27T14:15:23.456Z, the seed's example */

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

static void
set(struct audit_event *ev, enum audit_field f, const char *v)
{
	assert_int_equal(audit_event_set(ev, f, v), IDP_OK);
}

/* The seed's "Agent Audit Log Entry", field for field, built with the setters. */
static struct audit_event *
seed_event(void)
{
	struct audit_event *ev = audit_event_new(AUDIT_TOOL_INVOCATION, SEED_TIME);
	json_t *params = json_pack("{s:s,s:[{s:s,s:[s]}]}", "region", "us-east-1", "filters",
	                           "name", "instance-state-name", "values", "running");

	set(ev, AUDIT_F_ID, "7d3c9a4e-2b1f-4c8a-9e6d-5f4a3b2c1d0e");
	set(ev, AUDIT_F_AGENT_ID, "agent-planning-prod-001");
	set(ev, AUDIT_F_AGENT_TYPE, "planning-orchestrator");
	set(ev, AUDIT_F_HUMAN_PRINCIPAL, "alice@company.com");
	set(ev, AUDIT_F_TASK_ID, "infra-review-q1-2026");
	set(ev, AUDIT_F_REQUEST_ID, "req-42");
	set(ev, AUDIT_F_SOURCE_ADDRESS, "10.0.0.7");
	set(ev, AUDIT_F_INSTANCE_ID, "idpd-a:1234");
	set(ev, AUDIT_F_TOOL, "aws_ec2_describe_instances");
	set(ev, AUDIT_F_RESULT, "success (247 instances returned)");
	set(ev, AUDIT_F_TOKEN_ID, "tok_abc123");
	set(ev, AUDIT_F_GRANTED_SCOPE, "ec2:DescribeInstances");
	set(ev, AUDIT_F_POLICY_RULE, "agent-cloud-read-v2");
	set(ev, AUDIT_F_STEP, "3 of 12 in infrastructure review");
	set(ev, AUDIT_F_PREVIOUS_STEP, "Listed S3 buckets (success)");
	set(ev, AUDIT_F_NEXT_STEP, "Query cost data (pending)");
	assert_int_equal(audit_event_chain_append(ev, "alice@company.com"), IDP_OK);
	assert_int_equal(audit_event_chain_append(ev, "planning-agent"), IDP_OK);
	assert_int_equal(audit_event_chain_append(ev, "inventory-agent"), IDP_OK);
	assert_int_equal(audit_event_set_actor(ev, AUDIT_ACTOR_AGENT, "agent-planning-prod-001"),
	                 IDP_OK);
	audit_event_set_outcome(ev, AUDIT_OUTCOME_SUCCESS);
	audit_event_set_decision(ev, AUDIT_DECISION_ALLOW);
	assert_int_equal(audit_event_set_params(ev, params), IDP_OK);
	assert_int_equal(audit_event_put_detail(ev, "audience", json_string("cloud-inventory-api")),
	                 IDP_OK);
	json_decref(params);
	return ev;
}

/* Values full of what the formats must escape: | \ = LF CR tab, and UTF-8. */
static struct audit_event *
escape_event(void)
{
	struct audit_event *ev = audit_event_new(AUDIT_TOKEN_DENIED, SEED_TIME);

	set(ev, AUDIT_F_HUMAN_PRINCIPAL, "\xc3\xa5lice|ops@ex\xc3\xa4mple.com");
	set(ev, AUDIT_F_AGENT_ID, "agent=1");
	set(ev, AUDIT_F_TASK_ID, "C:\\tasks\\q1");
	set(ev, AUDIT_F_TOOL, "tool\tname");
	set(ev, AUDIT_F_RESULT, "line1\nline2\r\nend");
	set(ev, AUDIT_F_STEP, "a\tb");
	set(ev, AUDIT_F_POLICY_RULE, "rule=x|y\\z");
	set(ev, AUDIT_F_GRANTED_SCOPE, "s3:Get*");
	audit_event_set_outcome(ev, AUDIT_OUTCOME_DENIED);
	audit_event_set_decision(ev, AUDIT_DECISION_DENY);
	assert_int_equal(
	    audit_event_put_detail(ev, "reason", json_string("scope_outside_capabilities")),
	    IDP_OK);
	return ev;
}

static void
check_line(struct audit_event *ev, enum audit_format f, const char *version, const char *file)
{
	char *want = golden(file);
	struct idp_buf b;

	idp_buf_init(&b, 0);
	assert_int_equal(audit_format_line(f, ev, version, &b), IDP_OK);
	assert_string_equal(idp_buf_str(&b), want);
	assert_null(strchr(idp_buf_str(&b), '\n'));
	assert_null(strchr(idp_buf_str(&b), '\r'));
	idp_buf_cleanup(&b);
	free(want);
}

/* CEF's src takes IPv4 only: an IPv6 peer goes to c6a2, LEEF's src takes both. */
static void
ipv6_source_has_its_own_cef_key(void **state)
{
	struct audit_event *ev = audit_event_new(AUDIT_TOKEN_ISSUED, SEED_TIME);
	struct idp_buf b;

	(void)state;
	set(ev, AUDIT_F_SOURCE_ADDRESS, "2001:db8::7");
	idp_buf_init(&b, 0);
	assert_int_equal(audit_format_line(AUDIT_FORMAT_CEF, ev, "0.1.0", &b), IDP_OK);
	assert_non_null(strstr(idp_buf_str(&b), " c6a2Label=sourceIPv6Address c6a2=2001:db8::7"));
	assert_null(strstr(idp_buf_str(&b), "src="));
	idp_buf_reset(&b);
	assert_int_equal(audit_format_line(AUDIT_FORMAT_LEEF, ev, "0.1.0", &b), IDP_OK);
	assert_non_null(strstr(idp_buf_str(&b), "\tsrc=2001:db8::7"));
	idp_buf_cleanup(&b);
	audit_event_free(ev);
}

static void
json_line_is_the_canonical_form(void **state)
{
	struct audit_event *ev = seed_event();

	(void)state;
	check_line(ev, AUDIT_FORMAT_JSON, "0.1.0", "full.json");
	audit_event_free(ev);
}

static void
cef_line_maps_every_field(void **state)
{
	struct audit_event *ev = seed_event();

	(void)state;
	check_line(ev, AUDIT_FORMAT_CEF, "0.1.0", "full.cef");
	audit_event_free(ev);
}

static void
leef_line_maps_every_field(void **state)
{
	struct audit_event *ev = seed_event();

	(void)state;
	check_line(ev, AUDIT_FORMAT_LEEF, "0.1.0", "full.leef");
	audit_event_free(ev);
}

static void
json_line_escapes_control_characters(void **state)
{
	struct audit_event *ev = escape_event();

	(void)state;
	check_line(ev, AUDIT_FORMAT_JSON, "1.0|beta\\x", "escape.json");
	audit_event_free(ev);
}

static void
cef_escapes_header_and_extension(void **state)
{
	struct audit_event *ev = escape_event();

	(void)state;
	check_line(ev, AUDIT_FORMAT_CEF, "1.0|beta\\x", "escape.cef");
	audit_event_free(ev);
}

static void
leef_escapes_header_and_attributes(void **state)
{
	struct audit_event *ev = escape_event();

	(void)state;
	check_line(ev, AUDIT_FORMAT_LEEF, "1.0|beta\\x", "escape.leef");
	audit_event_free(ev);
}

static void
minimal_event_gives_minimal_lines(void **state)
{
	struct audit_event *ev = audit_event_new(AUDIT_POLICY_RELOADED, AUDIT_TIME_UNSET);
	struct idp_buf b;

	(void)state;
	assert_int_equal(audit_event_set_severity(ev, 0), IDP_OK);
	idp_buf_init(&b, 0);
	assert_int_equal(audit_format_line(AUDIT_FORMAT_CEF, ev, "2", &b), IDP_OK);
	assert_string_equal(idp_buf_str(&b),
	                    "CEF:0|idpd|idpd|2|policy.reloaded|Policies reloaded|0|cat=policy");
	idp_buf_reset(&b);
	/* LEEF severities start at 1. */
	assert_int_equal(audit_format_line(AUDIT_FORMAT_LEEF, ev, "2", &b), IDP_OK);
	assert_string_equal(idp_buf_str(&b),
	                    "LEEF:2.0|idpd|idpd|2|policy.reloaded|x09|cat=policy\tsev=1");
	idp_buf_reset(&b);
	assert_int_equal(audit_format_line(AUDIT_FORMAT_JSON, ev, "2", &b), IDP_OK);
	assert_string_equal(idp_buf_str(&b), "{\"severity\":0,\"type\":\"policy.reloaded\"}");
	idp_buf_cleanup(&b);
	audit_event_free(ev);
}

/* A row of a newer version: its type is carried by name, its unknown member in JSON only. */
static void
newer_type_is_carried_in_every_format(void **state)
{
	static const char row[] = "{\"agent_id\":\"planner\",\"future\":1,\"severity\":6,"
	                          "\"type\":\"session.resumed\"}";
	struct audit_event *ev = NULL;
	struct idp_diag d;
	struct idp_buf b;

	(void)state;
	idp_diag_init(&d);
	assert_int_equal(audit_event_from_stored(row, strlen(row), &ev, &d), IDP_OK);
	idp_buf_init(&b, 0);
	assert_int_equal(audit_format_line(AUDIT_FORMAT_CEF, ev, "2", &b), IDP_OK);
	assert_string_equal(idp_buf_str(&b), "CEF:0|idpd|idpd|2|session.resumed|session.resumed|6|"
	                                     "cat=session duser=planner");
	idp_buf_reset(&b);
	assert_int_equal(audit_format_line(AUDIT_FORMAT_LEEF, ev, "2", &b), IDP_OK);
	assert_string_equal(idp_buf_str(&b), "LEEF:2.0|idpd|idpd|2|session.resumed|x09|"
	                                     "cat=session\tsev=6\tagentId=planner");
	idp_buf_reset(&b);
	assert_int_equal(audit_format_line(AUDIT_FORMAT_JSON, ev, "2", &b), IDP_OK);
	assert_string_equal(idp_buf_str(&b), row);
	idp_buf_cleanup(&b);
	audit_event_free(ev);
}

static void
alert_name_carries_its_rule(void **state)
{
	struct audit_event *ev = audit_event_new(AUDIT_ALERT, 1000);
	struct idp_buf b;

	(void)state;
	assert_int_equal(audit_event_put_detail(ev, "rule", json_string("scope_escalation")),
	                 IDP_OK);
	assert_int_equal(audit_event_set_actor(ev, AUDIT_ACTOR_SYSTEM, NULL), IDP_OK);
	idp_buf_init(&b, 0);
	assert_int_equal(audit_format_line(AUDIT_FORMAT_CEF, ev, "1", &b), IDP_OK);
	assert_string_equal(idp_buf_str(&b), "CEF:0|idpd|idpd|1|alert|Alert: scope_escalation|7|"
	                                     "rt=1000 cat=alert suid=system");
	idp_buf_reset(&b);
	assert_int_equal(audit_format_line(AUDIT_FORMAT_LEEF, ev, "1", &b), IDP_OK);
	assert_string_equal(idp_buf_str(&b),
	                    "LEEF:2.0|idpd|idpd|1|alert|x09|devTime=1970-01-01T00:00:01.000Z\t"
	                    "devTimeFormat=yyyy-MM-dd'T'HH:mm:ss.SSSX\tcat=alert\tsev=7\t"
	                    "actor=system\trule=scope_escalation");
	idp_buf_cleanup(&b);
	audit_event_free(ev);
}

/* LEEF's rule is an alert's detection rule: any other event's detail.rule is not shipped as one. */
static void
only_an_alert_carries_a_rule(void **state)
{
	struct audit_event *ev = audit_event_new(AUDIT_TOOL_INVOCATION, 1000);
	struct idp_buf b;

	(void)state;
	assert_int_equal(audit_event_put_detail(ev, "rule", json_string("scope_escalation")),
	                 IDP_OK);
	idp_buf_init(&b, 0);
	assert_int_equal(audit_format_line(AUDIT_FORMAT_LEEF, ev, "1", &b), IDP_OK);
	assert_null(strstr(idp_buf_str(&b), "rule="));
	idp_buf_cleanup(&b);
	audit_event_free(ev);
}

static void
control_characters_in_detail_become_spaces(void **state)
{
	struct audit_event *ev = audit_event_new(AUDIT_TOKEN_ISSUED, AUDIT_TIME_UNSET);
	struct idp_buf b;

	(void)state;
	/* detail values are not held to the text rules of the fields. */
	assert_int_equal(audit_event_put_detail(ev, "audience", json_string("api\x01\x1b[0m\x7f")),
	                 IDP_OK);
	idp_buf_init(&b, 0);
	assert_int_equal(audit_format_line(AUDIT_FORMAT_CEF, ev, "1", &b), IDP_OK);
	assert_string_equal(idp_buf_str(&b), "CEF:0|idpd|idpd|1|token.issued|Token issued|2|"
	                                     "cat=token destinationServiceName=api  [0m ");
	idp_buf_cleanup(&b);
	audit_event_free(ev);
}

static void
format_line_appends_and_undoes_on_overflow(void **state)
{
	struct audit_event *ev = seed_event();
	struct idp_buf b;

	(void)state;
	for (int f = AUDIT_FORMAT_JSON; f <= AUDIT_FORMAT_LEEF; f++) {
		idp_buf_init(&b, 64);
		assert_int_equal(idp_buf_puts(&b, "prefix:"), IDP_OK);
		assert_int_equal(audit_format_line((enum audit_format)f, ev, "1", &b), IDP_ETOOBIG);
		assert_string_equal(idp_buf_str(&b), "prefix:");
		assert_int_equal(b.len, 7);
		idp_buf_cleanup(&b);
	}
	idp_buf_init(&b, 0);
	assert_int_equal(idp_buf_puts(&b, "prefix:"), IDP_OK);
	assert_int_equal(audit_format_line(AUDIT_FORMAT_CEF, ev, "1", &b), IDP_OK);
	assert_int_equal(strncmp(idp_buf_str(&b), "prefix:CEF:0|", 13), 0);
	assert_int_equal(audit_format_line((enum audit_format)7, ev, "1", &b), IDP_EINVAL);
	idp_buf_cleanup(&b);
	audit_event_free(ev);
}

static void
format_names_parse_back(void **state)
{
	enum audit_format f;

	(void)state;
	assert_int_equal(audit_format_parse("cef", &f), IDP_OK);
	assert_int_equal(f, AUDIT_FORMAT_CEF);
	assert_int_equal(audit_format_parse("leef", &f), IDP_OK);
	assert_int_equal(f, AUDIT_FORMAT_LEEF);
	assert_int_equal(audit_format_parse("json", &f), IDP_OK);
	assert_int_equal(f, AUDIT_FORMAT_JSON);
	assert_int_equal(audit_format_parse("CEF", &f), IDP_EINVAL);
	assert_int_equal(audit_format_parse("syslog", &f), IDP_EINVAL);
	assert_string_equal(audit_format_name(AUDIT_FORMAT_LEEF), "leef");
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(json_line_is_the_canonical_form),
	    cmocka_unit_test(cef_line_maps_every_field),
	    cmocka_unit_test(ipv6_source_has_its_own_cef_key),
	    cmocka_unit_test(leef_line_maps_every_field),
	    cmocka_unit_test(json_line_escapes_control_characters),
	    cmocka_unit_test(cef_escapes_header_and_extension),
	    cmocka_unit_test(leef_escapes_header_and_attributes),
	    cmocka_unit_test(minimal_event_gives_minimal_lines),
	    cmocka_unit_test(newer_type_is_carried_in_every_format),
	    cmocka_unit_test(alert_name_carries_its_rule),
	    cmocka_unit_test(only_an_alert_carries_a_rule),
	    cmocka_unit_test(control_characters_in_detail_become_spaces),
	    cmocka_unit_test(format_line_appends_and_undoes_on_overflow),
	    cmocka_unit_test(format_names_parse_back),
	};
	return cmocka_run_group_tests_name("audit_format", tests, NULL, NULL);
}
