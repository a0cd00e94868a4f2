/*
 * Unit tests for the policy language: every syntax and type error with its
 * message and position, the error format, combination order, fail-closed
 * evaluation (exhaustively and on random rules), conditions, the index,
 * JSON input and output, set lifecycle, the engine and the CLI.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>

#include "idpd/policy.h"
#include "idpd/scope.h"

#define P "@id(\"r\") @reason(\"r\") " /* the effect starts at column 23 */

static struct idp_diag diag;

/* Compile text as "t.policy"; the set or NULL with diag filled. */
static struct policy_set *
compile(const char *text)
{
	struct policy_source src = {"t.policy", text, strlen(text)};
	struct policy_set *set = NULL;
	int rc;

	idp_diag_init(&diag);
	rc = policy_set_compile(&src, 1, NULL, &set, &diag);
	assert_true((rc == IDP_OK) == (set != NULL));
	return set;
}

static struct policy_set *
compile_ok(const char *text)
{
	struct policy_set *set = compile(text);

	if (set == NULL)
		fail_msg("did not compile:\n%s", idp_diag_str(&diag));
	return set;
}

/* The first line of the errors text compiling text produces. */
static const char *
first_error(const char *text)
{
	static char line[512];
	struct policy_set *set = compile(text);
	const char *nl;

	if (set != NULL) {
		policy_set_unref(set);
		return "(compiled)";
	}
	nl = strchr(idp_diag_str(&diag), '\n');
	snprintf(line, sizeof(line), "%.*s", nl ? (int)(nl - idp_diag_str(&diag)) : 500,
	         idp_diag_str(&diag));
	return line;
}

/*
 * One bad source and the error it must produce: the message, at the position
 * of the first occurrence of the token "at" in src (NULL: the end of the
 * text), so each case names the token it blames.
 */
struct err_case {
	const char *src;
	const char *at;
	const char *msg;
};

static void
expect_errors(const struct err_case *c, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		const char *hit = c[i].at != NULL ? strstr(c[i].src, c[i].at) : NULL;
		const char *end = hit != NULL ? hit : c[i].src + strlen(c[i].src);
		unsigned line = 1, col = 1;
		char want[512];
		const char *got;

		if (c[i].at != NULL && hit == NULL)
			fail_msg("case %zu: \"%s\" is not in the source", i, c[i].at);
		for (const char *p = c[i].src; p < end; p++) {
			if (*p == '\n') {
				line++;
				col = 1;
			} else {
				col++;
			}
		}
		snprintf(want, sizeof(want), "t.policy:%u:%u: %s", line, col, c[i].msg);
		got = first_error(c[i].src);
		if (strcmp(got, want) != 0)
			fail_msg("case %zu: %s\n  want: %s\n  got:  %s", i, c[i].src, want, got);
	}
}

/* ---- syntax ----------------------------------------------------------------- */

static void
lexer_errors_name_position_and_cause(void **state)
{
	static char long_str[1100];
	static char long_src[1200];
	const struct err_case cases[] = {
	    {"@id(\"a)\n", "\"a)", "unterminated string"},
	    {"@id(\"a\\q\")", "\\q", "invalid escape \"\\q\" in string (use \\\" \\\\ \\n \\t)"},
	    {P "deny when { context.risk > 99999999999999999999 };", "999", "integer out of range"},
	    {P "deny when { context.risk > 12ab };", "12ab", "invalid number \"12ab\""},
	    {P "deny when { $ };", "$", "unexpected character '$'"},
	    {P "deny when { \x01 };", "\x01", "unexpected byte 0x01"},
	    {P "deny when { agent.id = \"x\" };", "= ", "unexpected \"=\" (comparison is \"==\")"},
	    {P "deny when { !context.approval };", "!", "unexpected \"!\" (negation is \"not\")"},
	    {P "deny when { true && true };", "&&", "unexpected \"&&\" (use \"and\")"},
	    {P "deny when { true || true };", "||", "unexpected \"||\" (use \"or\")"},
	    {"@id(\"a\x02\")", "\x02", "control character 0x02 in string"},
	    {"@id(\"a\x7f\")", "\x7f", "control character 0x7f in string"},
	    {P "deny when { agent.id == \"caf\xe9\" };", "\"caf",
	     "string is not valid UTF-8 (byte 0xe9)"},
	    {P "deny when { agent.id == \"\xc0\xaf\" };", "\"\xc0",
	     "string is not valid UTF-8 (byte 0xc0)"},
	    {long_src, "\"x", "string longer than 1024 bytes"},
	};

	(void)state;
	memset(long_str, 'x', 1025);
	long_str[1025] = '\0';
	snprintf(long_src, sizeof(long_src), "@id(\"%s\")", long_str);
	expect_errors(cases, IDP_ARRAY_LEN(cases));
}

static void
parser_errors_name_position_and_expectation(void **state)
{
	const struct err_case cases[] = {
	    {P "deny when { agent.id == \"x\" }", NULL,
	     "expected \"when\", \"unless\", \"with\" or \";\", found end of file"},
	    {"when { true };", "when",
	     "expected a rule (an annotation, or allow, deny, require_approval, "
	     "allow_with_conditions), found \"when\""},
	    {"@id \"x\" deny;", "\"x\"",
	     "expected \"(\" after the annotation name, found string \"x\""},
	    {"@id(x) deny;", "x)", "expected a string, found identifier \"x\""},
	    {"@ deny;", "deny", "expected an annotation name after \"@\", found \"deny\""},
	    {P "deny when agent.id == \"x\";", "agent",
	     "expected \"{\" after \"when\", found identifier \"agent\""},
	    {P "deny unless agent.id == \"x\";", "agent",
	     "expected \"{\" after \"unless\", found identifier \"agent\""},
	    {P "deny when { };", "}", "expected an expression, found \"}\""},
	    {P "deny when { (agent.id == \"x\" };", "}",
	     "expected \")\" to close the \"(\" at 1:35, found \"}\""},
	    {P "deny when { agent. == \"x\" };",
	     "==", "expected an attribute name after \".\", found \"==\""},
	    {P "deny when { agent.labels[1] == \"x\" };", "1]",
	     "expected a string key in \"[...]\", found integer 1"},
	    {P "deny when { agent.id in [\"a\" \"b\"] };", "\"b\"",
	     "expected \",\" or \"]\", found string \"b\""},
	    {P "deny when { agent.id in [agent.team] };", "agent.team",
	     "expected a string or integer in the list, found identifier \"agent\""},
	    {P "deny when { agent.id == \"a\" == \"b\" };", "== \"b\"",
	     "comparisons do not chain; use \"and\" or parentheses"},
	    {P "deny when { during(\"mon\", \"09:00\") };", ") }", "expected \",\", found \")\""},
	    {P "deny when { during(1, \"09:00\", \"10:00\") };", "1,",
	     "expected a day list such as \"mon-fri\", found integer 1"},
	    {P "deny when { has agent.id };", "agent",
	     "expected \"(\" after \"has\", found identifier \"agent\""},
	    {P "deny when { context.risk > -x };", "x }",
	     "expected an integer after \"-\", found identifier \"x\""},
	    {P "allow_with_conditions with { max_ttl 5 };", "5",
	     "expected \":\" after the condition name, found integer 5"},
	    {P "allow_with_conditions with { max_ttl: agent.id };", "agent",
	     "expected a value (integer, string, boolean or list), found identifier \"agent\""},
	    {P "allow_with_conditions with { 5: 1 };", "5",
	     "expected a condition name (max_ttl, scopes, enhanced_logging), found integer 5"},
	    {P "allow_with_conditions with { max_ttl: 5 } when { true };", "when",
	     "expected \";\" to end the rule, found \"when\""},
	};

	(void)state;
	expect_errors(cases, IDP_ARRAY_LEN(cases));
}

static void
nesting_and_size_limits_are_errors(void **state)
{
	static char deep[1024], tall[8192];
	size_t n = 0;

	(void)state;
	n += (size_t)snprintf(deep, sizeof(deep), P "deny when { ");
	for (int i = 0; i < 70; i++)
		deep[n++] = '(';
	snprintf(deep + n, sizeof(deep) - n, "true");
	assert_string_equal(first_error(deep),
	                    "t.policy:1:99: expression nested too deeply (more than 64 levels)");

	n = (size_t)snprintf(tall, sizeof(tall), P "deny when { true");
	for (int i = 0; i < 300; i++)
		n += (size_t)snprintf(tall + n, sizeof(tall) - n, " and true");
	snprintf(tall + n, sizeof(tall) - n, " };");
	/* The i-th "and" (from 0) makes a tree of height i + 2, so the one with
	 * i = 255 passes the limit; it starts at column 40 + 9 * i. */
	snprintf(deep, sizeof(deep),
	         "t.policy:1:%d: expression too large (more than 256 levels "
	         "of operators)",
	         40 + 9 * 255);
	assert_string_equal(first_error(tall), deep);
}

static void
errors_show_the_line_and_underline_the_token(void **state)
{
	struct policy_set *set;

	(void)state;
	set = compile("@id(\"r\")\n@reason(\"r\")\n\tdeny when { agent.nmae == \"x\" };\n");
	assert_null(set);
	assert_string_equal(idp_diag_str(&diag), "t.policy:3:14: unknown attribute \"agent.nmae\"\n"
	                                         "\tdeny when { agent.nmae == \"x\" };\n"
	                                         "\t            ^^^^^^^^^^");
}

static void
long_lines_show_a_window_around_the_error(void **state)
{
	char text[1024], want[1024];
	size_t n = (size_t)snprintf(text, sizeof(text), P "deny when { true");
	const char *p, *l2, *l3;

	(void)state;
	for (int i = 0; i < 40; i++)
		n += (size_t)snprintf(text + n, sizeof(text) - n, " and true");
	snprintf(text + n, sizeof(text) - n, " and agent.nope };");
	assert_null(compile(text));
	p = idp_diag_str(&diag);
	l2 = strchr(p, '\n') + 1;
	l3 = strchr(l2, '\n') + 1;
	/* "agent.nope" starts at byte 403 (column 404); the window starts 80
	 * bytes before it, behind "...". */
	snprintf(want, sizeof(want), "t.policy:1:404: unknown attribute \"agent.nope\"\n...%s\n",
	         text + 403 - 80);
	assert_memory_equal(p, want, strlen(want));
	/* The underline: spaces under "..." and the 80 bytes, then the token. */
	memset(want, ' ', 83);
	snprintf(want + 83, sizeof(want) - 83, "^^^^^^^^^^");
	assert_string_equal(l3, want);
}

static void
every_error_is_collected_in_position_order(void **state)
{
	const char *text = P "deny when { agent.nope };\n"            /* type error, line 1 */
	    P "deny when { agent.id == };\n"                          /* syntax error, line 2 */
	                     "@id(\"r\") deny when { 1 == \"a\" };\n" /* dup id, no reason, type */
	    P "allow when { \"x\" like 3 };\n";
	const char *want = "t.policy:1:35: unknown attribute \"agent.nope\"\n"
	                   "t.policy:2:47: expected an expression, found \"}\"\n"
	                   "t.policy:3:5: duplicate rule id \"r\" (first defined at t.policy:1:5)\n"
	                   "t.policy:3:10: rule has no @reason annotation\n"
	                   "t.policy:3:24: \"==\" compares values of one type, found integer and "
	                   "string\n"
	                   "t.policy:4:5: duplicate rule id \"r\" (first defined at t.policy:1:5)\n"
	                   "t.policy:4:45: \"like\" needs strings, found integer\n";
	char got[2048];
	size_t n = 0;
	const char *p;

	(void)state;
	assert_null(compile(text));
	/* Keep only the "file:line:col: message" lines. */
	p = idp_diag_str(&diag);
	for (int line = 0; *p != '\0'; line++) {
		const char *nl = strchr(p, '\n');
		size_t len = nl ? (size_t)(nl - p) : strlen(p);

		if (line % 3 == 0) {
			memcpy(got + n, p, len);
			n += len;
			got[n++] = '\n';
		}
		p += len + (nl != NULL);
	}
	got[n] = '\0';
	assert_string_equal(got, want);
	assert_int_equal(diag.count, 21);
}

/* ---- checking ----------------------------------------------------------------- */

static void
type_errors_name_position_and_types(void **state)
{
	const struct err_case cases[] = {
	    {P "deny when { agent.nmae == \"x\" };", "agent.nmae",
	     "unknown attribute \"agent.nmae\""},
	    {P "deny when { agent.id[\"k\"] == \"x\" };", "agent.id",
	     "\"agent.id\" is not a map; it cannot be indexed"},
	    {P "deny when { agent.labels == \"x\" };", "agent.labels",
	     "\"agent.labels\" is a map; index it with [\"key\"]"},
	    {P "deny when { agent.id == 3 };",
	     "==", "\"==\" compares values of one type, found string and integer"},
	    {P "deny when { agent.id < \"x\" };", "<",
	     "\"<\" needs two integers or two action classes, found string and string"},
	    {P "deny when { agent.domains == [\"a\"] };",
	     "==", "\"==\" cannot compare lists (use \"in\" or \"within\")"},
	    {P "deny when { agent.id in \"x\" };", "\"x\"",
	     "\"in\" needs a list on its right, found string"},
	    {P "deny when { context.risk in [\"a\"] };", "in",
	     "\"in\" cannot look for integer in list of strings"},
	    {P "deny when { context.approval in [] };", "in [",
	     "\"in\" cannot look for boolean in empty list"},
	    {P "deny when { context.risk within agent.capabilities };", "context",
	     "\"within\" needs scopes (a string or a list of strings), found integer"},
	    {P "deny when { request.scopes within \"ec2\" };", "\"ec2\"",
	     "invalid scope in \"within\": scope \"ec2\": no ':' between resource and verb"},
	    {P "deny when { request.scopes within [\"a:b\", \"c:d:e\"] };", "\"c:d:e\"",
	     "invalid scope in \"within\": scope \"c:d:e\": more than one ':'"},
	    {P "deny when { context.risk like \"a*\" };", "context",
	     "\"like\" needs strings, found integer"},
	    {P "deny when { agent.id startswith 1 };", "1 ",
	     "\"startswith\" needs strings, found integer"},
	    {P "deny when { agent.id and true };", "agent", "\"and\" needs booleans, found string"},
	    {P "deny when { true or context.risk };", "context",
	     "\"or\" needs booleans, found integer"},
	    {P "deny when { not agent.id };", "agent", "\"not\" needs a boolean, found string"},
	    {P "deny when { context.risk + \"1\" > 2 };", "\"1\"",
	     "\"+\" needs integers, found string"},
	    {P "deny when { agent.id };", "agent",
	     "the condition of \"when\" must be a boolean, found string"},
	    {P "deny unless { context.risk };", "context",
	     "the condition of \"unless\" must be a boolean, found integer"},
	    {P "deny when { request.action_class == \"wrte\" };", "\"wrte\"",
	     "unknown action class \"wrte\" (expected read, write, delete or admin)"},
	    {P "deny when { request.action_class in [\"read\", \"nuke\"] };", "\"nuke\"",
	     "unknown action class \"nuke\" (expected read, write, delete or admin)"},
	    {P "deny when { context.weekday == \"monday\" };", "\"monday\"",
	     "unknown weekday \"monday\" (expected mon, tue, wed, thu, fri, sat or sun)"},
	    {P "deny when { context.weekday < \"fri\" };", "<",
	     "\"<\" needs two integers or two action classes, found weekday and weekday"},
	    {P "deny when { request.action_class == agent.id };",
	     "==", "\"==\" compares values of one type, found action class and string"},
	    {P "deny when { agent.id in [\"a\", 1] };", "1]", "list mixes strings and integers"},
	    {P "deny when { agent.id in [true] };", "true",
	     "lists hold strings or integers, not booleans"},
	    {P "deny when { during(\"mon-fry\", \"09:00\", \"18:00\") };", "\"mon-fry\"",
	     "invalid day list \"mon-fry\": use mon..sun and ranges such as \"mon-fri\", "
	     "separated by \",\""},
	    {P "deny when { during(\"mon,\", \"09:00\", \"18:00\") };", "\"mon,\"",
	     "invalid day list \"mon,\": use mon..sun and ranges such as \"mon-fri\", "
	     "separated by \",\""},
	    {P "deny when { during(\"mon\", \"9:00\", \"18:00\") };", "\"9:00\"",
	     "invalid time \"9:00\": expected \"HH:MM\", 00:00 to 23:59"},
	    {P "deny when { during(\"mon\", \"24:00\", \"18:00\") };", "\"24:00\"",
	     "invalid time \"24:00\": expected \"HH:MM\", 00:00 to 23:59"},
	    {P "deny when { during(\"mon\", \"09:00\", \"18:60\") };", "\"18:60\"",
	     "invalid time \"18:60\": expected \"HH:MM\", 00:00 to 24:00"},
	    {P "deny when { during(\"mon\", \"09:00\", \"09:00\") };", "during",
	     "empty time window: it starts and ends at 09:00"},
	};

	(void)state;
	expect_errors(cases, IDP_ARRAY_LEN(cases));
}

static void
rule_errors_name_position(void **state)
{
	const struct err_case cases[] = {
	    {"@reason(\"r\") deny;", "deny", "rule has no @id annotation"},
	    {"@id(\"r\") deny;", "deny", "rule has no @reason annotation"},
	    {P "@owner(\"me\") deny;", "@owner",
	     "unknown annotation \"@owner\" (expected @id or @reason)"},
	    {P "@id(\"s\") deny;", "@id(\"s", "duplicate annotation \"@id\""},
	    {"@id(\"a b\") @reason(\"r\") deny;", "\"a b\"",
	     "invalid rule id \"a b\": use 1 to 64 letters, digits, '.', '_' or '-'"},
	    {"@id(\"\") @reason(\"r\") deny;", "\"\"",
	     "invalid rule id \"\": use 1 to 64 letters, digits, '.', '_' or '-'"},
	    {"@id(\"r\") @reason(\"\") deny;", "\"\")", "empty @reason"},
	    {"@id(\"r\") @reason(\"two\\nlines\") deny;", "\"two",
	     "@reason must be one line of printable text (no tab, newline or other control "
	     "character)"},
	    {"@id(\"r\") @reason(\"a\ttab\") deny;", "\"a\t",
	     "@reason must be one line of printable text (no tab, newline or other control "
	     "character)"},
	    {"@id(\"r\") @reason(\"c1 \xc2\x85\") deny;", "\"c1",
	     "@reason must be one line of printable text (no tab, newline or other control "
	     "character)"},
	    {"@id(\"r\") @reason(\"ls \xe2\x80\xa8\") deny;", "\"ls",
	     "@reason must be one line of printable text (no tab, newline or other control "
	     "character)"},
	    {"@id(\"r\") @reason(\"rlo \xe2\x80\xae\") deny;", "\"rlo",
	     "@reason must be one line of printable text (no tab, newline or other control "
	     "character)"},
	    {"@id(\"r\") @reason(\"fsi \xe2\x81\xa8\") deny;", "\"fsi",
	     "@reason must be one line of printable text (no tab, newline or other control "
	     "character)"},
	    {P "deny;\n" P "allow;", "\"r\") @reason(\"r\") allow",
	     "duplicate rule id \"r\" (first defined at t.policy:1:5)"},
	    {P "deny with { max_ttl: 5 };", "with",
	     "\"with\" conditions are only allowed on allow_with_conditions rules"},
	    {P "allow_with_conditions when { true };", "allow_with",
	     "allow_with_conditions needs a \"with\" block with at least one condition"},
	    {P "allow_with_conditions with { };", "allow_with",
	     "allow_with_conditions needs a \"with\" block with at least one condition"},
	    {P "allow_with_conditions with { ttl: 5 };", "ttl",
	     "unknown condition \"ttl\" (expected max_ttl, scopes or enhanced_logging)"},
	    {P "allow_with_conditions with { max_ttl: 5, max_ttl: 6 };", "max_ttl: 6",
	     "duplicate condition \"max_ttl\""},
	    {P "allow_with_conditions with { max_ttl: 0 };", "0",
	     "max_ttl must be a positive number of seconds or a duration such as \"5m\", at most "
	     "a year"},
	    {P "allow_with_conditions with { max_ttl: \"1500ms\" };", "\"1500ms\"",
	     "max_ttl must be a positive number of seconds or a duration such as \"5m\", at most "
	     "a year"},
	    {P "allow_with_conditions with { max_ttl: 9223372036854775807 };",
	     "9223372036854775807",
	     "max_ttl must be a positive number of seconds or a duration such as \"5m\", at most "
	     "a year"},
	    {P "allow_with_conditions with { max_ttl: \"9000h\" };", "\"9000h\"",
	     "max_ttl must be a positive number of seconds or a duration such as \"5m\", at most "
	     "a year"},
	    {P "allow_with_conditions with { scopes: \"a:b\" };", "\"a:b\"",
	     "scopes must be a non-empty list of scope patterns"},
	    {P "allow_with_conditions with { scopes: [] };", "[]",
	     "scopes must be a non-empty list of scope patterns"},
	    {P "allow_with_conditions with { scopes: [\"a:b\", \"nope\"] };", "\"nope\"",
	     "scope \"nope\": no ':' between resource and verb"},
	    {P "allow_with_conditions with { enhanced_logging: 1 };", "1 ",
	     "enhanced_logging must be true or false"},
	};

	(void)state;
	expect_errors(cases, IDP_ARRAY_LEN(cases));
}

static void
duplicate_ids_across_files_name_both_files(void **state)
{
	struct policy_source src[2] = {
	    {"a.policy", P "deny;", strlen(P "deny;")},
	    {"b.policy", "\n" P "allow;", strlen("\n" P "allow;")},
	};
	struct policy_set *set = NULL;

	(void)state;
	idp_diag_init(&diag);
	assert_int_equal(policy_set_compile(src, 2, NULL, &set, &diag), IDP_EINVAL);
	assert_null(set);
	assert_string_equal(
	    idp_diag_str(&diag),
	    "b.policy:2:5: duplicate rule id \"r\" (first defined at a.policy:1:5)\n" P "allow;\n"
	    "    ^^^");
}

static void
valid_language_compiles(void **state)
{
	struct policy_set *set;

	(void)state;
	set = compile_ok(
	    "// comments run to the end of the line\n"
	    "@id(\"all-features\") @reason(\"every construct once\")\n"
	    "allow_with_conditions\n"
	    "\twhen { agent.id == \"a\" and agent.team in [\"x\", \"y\"] }\n"
	    "\twhen { request.scopes within agent.capabilities or request.scopes within "
	    "\"ec2:*\" }\n"
	    "\twhen { agent.id like \"agent-*\" and not (agent.owner startswith \"bob\") }\n"
	    "\twhen { request.action_class <= \"write\" and request.action_class in [\"read\"] }\n"
	    "\twhen { context.weekday in [\"sat\", \"sun\"] or during(\"mon-fri,sun\", \"22:00\", "
	    "\"06:00\") }\n"
	    "\twhen { has(agent.labels[\"tier\"]) and agent.labels[\"tier\"] != \"free\" }\n"
	    "\twhen { context.risk + 10 - -5 >= 20 and delegation.depth in [0, 1, 2] }\n"
	    "\twhen { context.approval == true and has(resource.labels) }\n"
	    "\tunless { \"x\" in [] }\n"
	    "\twith { max_ttl: 300, scopes: [\"ec2:Describe*\"], enhanced_logging: false, };\n");
	assert_int_equal(policy_set_rule_count(set), 1);
	assert_string_equal(policy_rule_id(policy_set_rule(set, 0)), "all-features");
	assert_int_equal(policy_rule_effect(policy_set_rule(set, 0)), POLICY_ALLOW_WITH_CONDITIONS);
	policy_set_unref(set);
}

/* ---- evaluation ---------------------------------------------------------------- */

static struct policy_input_doc *doc;

/* Evaluate set on a JSON input (kept in doc until the next call). */
static void
eval_json(const struct policy_set *set, const char *json, struct policy_decision *d)
{
	json_error_t jerr;
	json_t *j = json_loads(json, 0, &jerr);
	struct idp_diag dd;

	if (j == NULL)
		fail_msg("bad test JSON: %s: %s", json, jerr.text);
	policy_input_doc_free(doc);
	doc = NULL;
	idp_diag_init(&dd);
	if (policy_input_from_json(j, NULL, &doc, &dd) != IDP_OK)
		fail_msg("input refused: %s", idp_diag_str(&dd));
	json_decref(j);
	policy_eval(set, policy_input_doc_input(doc), d);
}

static int
doc_teardown(void **state)
{
	(void)state;
	policy_input_doc_free(doc);
	doc = NULL;
	return 0;
}

static bool
applied(const struct policy_decision *d, const char *id)
{
	for (size_t i = 0; i < d->n_matches; i++) {
		if (d->matches[i].applied && strcmp(policy_rule_id(d->matches[i].rule), id) == 0)
			return true;
	}
	return false;
}

static void
nothing_matching_is_deny_no_rule_allows(void **state)
{
	struct policy_set *set = compile_ok(P "allow when { agent.id == \"a\" };");
	struct policy_decision d;

	(void)state;
	eval_json(set, "{\"agent\": {\"id\": \"b\"}}", &d);
	assert_int_equal(d.effect, POLICY_DENY);
	assert_string_equal(d.reason, "no rule allows");
	assert_int_equal(d.n_matches, 0);
	eval_json(set, "{\"agent\": {\"id\": \"a\"}}", &d);
	assert_int_equal(d.effect, POLICY_ALLOW);
	assert_string_equal(d.reason, "r");
	policy_set_unref(set);
}

static void
effects_combine_deny_over_approval_over_conditions_over_allow(void **state)
{
	/* Each rule fires when its letter is in agent.domains. */
	struct policy_set *set = compile_ok(
	    "@id(\"allow\") @reason(\"ra\") allow when { \"a\" in agent.domains };\n"
	    "@id(\"awc\") @reason(\"rc\") allow_with_conditions when { \"c\" in agent.domains } "
	    "with { max_ttl: 60 };\n"
	    "@id(\"approval\") @reason(\"rq\") require_approval when { \"q\" in agent.domains };\n"
	    "@id(\"deny\") @reason(\"rd\") deny when { \"d\" in agent.domains };\n");
	static const struct {
		const char *domains;
		enum policy_effect want;
		const char *reason;
	} cases[] = {
	    {"[\"a\"]", POLICY_ALLOW, "ra"},
	    {"[\"a\", \"c\"]", POLICY_ALLOW_WITH_CONDITIONS, "rc"},
	    {"[\"c\"]", POLICY_ALLOW_WITH_CONDITIONS, "rc"},
	    {"[\"a\", \"c\", \"q\"]", POLICY_REQUIRE_APPROVAL, "rq"},
	    {"[\"q\"]", POLICY_REQUIRE_APPROVAL, "rq"},
	    {"[\"a\", \"c\", \"q\", \"d\"]", POLICY_DENY, "rd"},
	    {"[\"d\", \"a\"]", POLICY_DENY, "rd"},
	    {"[]", POLICY_DENY, "no rule allows"},
	};
	struct policy_decision d;
	char json[128];

	(void)state;
	for (size_t i = 0; i < IDP_ARRAY_LEN(cases); i++) {
		snprintf(json, sizeof(json), "{\"agent\": {\"domains\": %s}}", cases[i].domains);
		eval_json(set, json, &d);
		if (d.effect != cases[i].want || strcmp(d.reason, cases[i].reason) != 0)
			fail_msg("%s: got %s (%s)", cases[i].domains, policy_effect_name(d.effect),
			         d.reason);
	}
	/* Every applied rule is listed, in rule order. */
	eval_json(set, "{\"agent\": {\"domains\": [\"d\", \"q\", \"c\", \"a\"]}}", &d);
	assert_int_equal(d.n_matches, 4);
	assert_string_equal(policy_rule_id(d.matches[0].rule), "allow");
	assert_string_equal(policy_rule_id(d.matches[3].rule), "deny");
	policy_set_unref(set);
}

static void
deny_cannot_be_bypassed_by_leaving_attributes_out(void **state)
{
	struct policy_set *set = compile_ok(
	    "@id(\"prod\") @reason(\"r\") deny when { agent.environment == \"development\" and "
	    "resource.environment == \"production\" and request.action_class >= \"write\" and "
	    "not (context.hour in [9, 10, 11]) and agent.labels[\"x\"] startswith \"y\" };\n"
	    "@id(\"open\") @reason(\"r\") allow;\n");
	static const char *const parts[] = {
	    "\"agent\": {\"environment\": \"development\", \"labels\": {\"x\": \"yes\"}}",
	    "\"resource\": {\"environment\": \"production\"}",
	    "\"request\": {\"action_class\": \"delete\"}",
	    "\"context\": {\"hour\": 22}",
	    "\"agent\": {\"environment\": \"development\"}", /* labels left out */
	};
	struct policy_decision d;
	char json[512];

	(void)state;
	/* Every subset of the four sections (with labels or not) still denies. */
	for (unsigned mask = 0; mask < 32; mask++) {
		size_t n = (size_t)snprintf(json, sizeof(json), "{");
		bool first = true;

		if ((mask & 1) && (mask & 16))
			continue; /* both variants of the agent */
		for (unsigned b = 0; b < 5; b++) {
			if (!(mask >> b & 1))
				continue;
			n += (size_t)snprintf(json + n, sizeof(json) - n, "%s%s", first ? "" : ", ",
			                      parts[b]);
			first = false;
		}
		snprintf(json + n, sizeof(json) - n, "}");
		eval_json(set, json, &d);
		if (d.effect != POLICY_DENY || !applied(&d, "prod"))
			fail_msg("%s: got %s", json, policy_effect_name(d.effect));
		if (mask != 15 && d.matches[0].error == NULL)
			fail_msg("%s: the deny should be an error", json);
	}
	policy_set_unref(set);
}

static void
errors_follow_three_valued_logic(void **state)
{
	struct policy_set *set = compile_ok(
	    "@id(\"and\") @reason(\"r\") deny when { context.risk > 50 and agent.id == \"x\" };\n"
	    "@id(\"or\") @reason(\"r\") require_approval when { context.risk > 50 or agent.id == "
	    "\"x\" };\n"
	    "@id(\"allow\") @reason(\"r\") allow when { has(context.risk) and context.risk < 50 "
	    "};\n");
	struct policy_decision d;

	(void)state;
	/* false and missing is false; missing or true is true: no error. */
	eval_json(set, "{\"context\": {\"risk\": 10}, \"agent\": {\"id\": \"y\"}}", &d);
	assert_int_equal(d.effect, POLICY_ALLOW);
	eval_json(set, "{\"context\": {\"risk\": 10}}", &d);
	assert_int_equal(d.effect, POLICY_REQUIRE_APPROVAL);
	assert_int_equal(d.n_matches, 2);
	assert_string_equal(policy_rule_id(d.matches[0].rule), "or");
	assert_string_equal(d.matches[0].error, "agent.id is missing");
	assert_true(d.matches[0].applied);
	eval_json(set, "{\"context\": {\"risk\": 90}}", &d);
	assert_int_equal(d.effect, POLICY_DENY);
	assert_string_equal(d.matches[0].error, "agent.id is missing");
	assert_null(d.matches[1].error); /* "or" holds outright */
	/* "missing and false" is false; "missing or false" is an error. */
	eval_json(set, "{\"agent\": {\"id\": \"y\"}}", &d);
	assert_int_equal(d.effect, POLICY_REQUIRE_APPROVAL);
	assert_int_equal(d.n_matches, 1);
	assert_string_equal(d.matches[0].error, "context.risk is missing");
	policy_set_unref(set);

	set = compile_ok(P "allow when { context.risk < 50 };");
	eval_json(set, "{}", &d);
	assert_int_equal(d.effect, POLICY_DENY);
	assert_string_equal(d.reason, "no rule allows");
	assert_int_equal(d.n_matches, 1);
	assert_false(d.matches[0].applied);
	assert_string_equal(d.matches[0].error, "context.risk is missing");
	policy_set_unref(set);
}

/*
 * An allow_with_conditions that cannot be evaluated grants nothing, yet its
 * conditions restrict what another rule grants: with the attribute it
 * reads missing, the grant is not wider than with it present.
 */
static void
conditions_of_an_errored_rule_still_restrict(void **state)
{
	struct policy_set *set = compile_ok(
	    "@id(\"base\") @reason(\"within capabilities\") allow when { request.scopes within "
	    "agent.capabilities };\n"
	    "@id(\"prod\") @reason(\"production is read-only and short\") allow_with_conditions "
	    "when { agent.environment == \"production\" } with { max_ttl: \"5m\", scopes: "
	    "[\"ec2:Describe*\"], enhanced_logging: true };\n"
	    "@id(\"only\") @reason(\"r\") allow_with_conditions when { agent.environment == "
	    "\"lab\" } with { max_ttl: 60 };\n");
	struct policy_decision d;

	(void)state;
	eval_json(set,
	          "{\"agent\": {\"environment\": \"production\", \"capabilities\": "
	          "[\"ec2:*\"]}, \"request\": {\"scopes\": [\"ec2:*\"]}}",
	          &d);
	assert_int_equal(d.effect, POLICY_ALLOW_WITH_CONDITIONS);
	assert_int_equal(d.cond.max_ttl, 300);
	/* The environment missing: the same restrictions, not a full ALLOW. */
	eval_json(set,
	          "{\"agent\": {\"capabilities\": [\"ec2:*\"]}, \"request\": {\"scopes\": "
	          "[\"ec2:*\"]}}",
	          &d);
	assert_int_equal(d.effect, POLICY_ALLOW_WITH_CONDITIONS);
	assert_true(d.cond.has_max_ttl);
	assert_int_equal(d.cond.max_ttl, 60);
	assert_true(d.cond.enhanced_logging);
	assert_true(d.cond.narrowed);
	assert_int_equal(d.cond.n_scopes, 1);
	assert_string_equal(d.cond.scopes[0], "ec2:Describe*");
	assert_true(d.matches[1].applied);
	assert_non_null(d.matches[1].error);
	/* Nothing else grants: an errored condition rule grants nothing. */
	eval_json(set, "{\"request\": {\"scopes\": [\"ec2:*\"]}}", &d);
	assert_int_equal(d.effect, POLICY_DENY);
	for (size_t i = 0; i < d.n_matches; i++)
		assert_false(d.matches[i].applied);
	policy_set_unref(set);
}

static void
integer_overflow_fails_closed(void **state)
{
	struct policy_set *set = compile_ok(
	    "@id(\"d\") @reason(\"r\") deny when { delegation.depth + 9223372036854775807 > 0 };\n"
	    "@id(\"a\") @reason(\"r\") allow;");
	struct policy_decision d;

	(void)state;
	eval_json(set, "{\"delegation\": {\"depth\": 0}}", &d);
	assert_int_equal(d.effect, POLICY_DENY);
	assert_null(d.matches[0].error);
	eval_json(set, "{\"delegation\": {\"depth\": 1}}", &d);
	assert_int_equal(d.effect, POLICY_DENY);
	assert_string_equal(d.matches[0].error, "integer overflow");
	policy_set_unref(set);
}

static void
operators_evaluate_as_documented(void **state)
{
	static const struct {
		const char *cond, *input;
		bool want;
	} cases[] = {
	    {"agent.id like \"agent-*-prod\"", "{\"agent\": {\"id\": \"agent-x-prod\"}}", true},
	    {"agent.id like \"agent-*-prod\"", "{\"agent\": {\"id\": \"agent-x-dev\"}}", false},
	    {"agent.owner startswith \"alice@\"", "{\"agent\": {\"owner\": \"alice@co\"}}", true},
	    {"agent.owner startswith \"alice@\"", "{\"agent\": {\"owner\": \"alic\"}}", false},
	    {"\"ec2:*\" in agent.capabilities", "{\"agent\": {\"capabilities\": [\"ec2:*\"]}}",
	     true},
	    {"delegation.depth in [1, 3]", "{\"delegation\": {\"depth\": 3}}", true},
	    {"delegation.depth in [1, 3]", "{\"delegation\": {\"depth\": 2}}", false},
	    {"request.scopes within [\"ec2:*\", \"s3:List*\"]",
	     "{\"request\": {\"scopes\": [\"ec2:Describe*\", \"s3:ListBuckets\"]}}", true},
	    {"request.scopes within [\"ec2:*\", \"s3:List*\"]",
	     "{\"request\": {\"scopes\": [\"ec2:Describe*\", \"s3:*\"]}}", false},
	    {"request.scopes within agent.capabilities",
	     "{\"request\": {\"scopes\": []}, \"agent\": {\"capabilities\": []}}", true},
	    {"\"ec2:Describe*\" within agent.capabilities",
	     "{\"agent\": {\"capabilities\": [\"ec2:*\"]}}", true},
	    {"request.action_class > \"read\"", "{\"request\": {\"action_class\": \"write\"}}",
	     true},
	    {"request.action_class > \"read\"", "{\"request\": {\"scopes\": [\"ec2:Describe*\"]}}",
	     false},
	    {"request.action_class == \"admin\"", "{\"request\": {\"scopes\": [\"ec2:*\"]}}", true},
	    {"context.weekday in [\"sat\", \"sun\"]", "{\"context\": {\"weekday\": \"sun\"}}",
	     true},
	    {"during(\"fri-mon\", \"22:00\", \"06:00\")",
	     "{\"context\": {\"weekday\": \"sun\", \"hour\": 3, \"minute\": 0}}", true},
	    {"during(\"fri-mon\", \"22:00\", \"06:00\")",
	     "{\"context\": {\"weekday\": \"sun\", \"hour\": 6, \"minute\": 0}}", false},
	    {"during(\"fri-mon\", \"22:00\", \"06:00\")",
	     "{\"context\": {\"weekday\": \"tue\", \"hour\": 23, \"minute\": 0}}", false},
	    {"during(\"mon\", \"00:00\", \"24:00\")",
	     "{\"context\": {\"weekday\": \"mon\", \"hour\": 23, \"minute\": 59}}", true},
	    {"has(agent.labels[\"k\"])", "{\"agent\": {\"labels\": {\"k\": \"v\"}}}", true},
	    {"has(agent.labels[\"k\"])", "{\"agent\": {\"labels\": {}}}", false},
	    {"has(agent.labels)", "{\"agent\": {\"labels\": {}}}", true},
	    {"has(agent.team)", "{\"agent\": {\"team\": null}}", false},
	    {"context.risk - 100 < -50", "{\"context\": {\"risk\": 49}}", true},
	    {"not context.approval", "{\"context\": {\"approval\": false}}", true},
	    {"context.approval != false", "{\"context\": {\"approval\": true}}", true},
	};
	struct policy_decision d;
	char text[512];

	(void)state;
	for (size_t i = 0; i < IDP_ARRAY_LEN(cases); i++) {
		struct policy_set *set;

		snprintf(text, sizeof(text), P "allow when { %s };", cases[i].cond);
		set = compile_ok(text);
		eval_json(set, cases[i].input, &d);
		if ((d.effect == POLICY_ALLOW) != cases[i].want)
			fail_msg("%s on %s: got %s (%s)", cases[i].cond, cases[i].input,
			         policy_effect_name(d.effect),
			         d.n_matches ? d.matches[0].error : "no match");
		policy_set_unref(set);
	}
}

static void
conditions_combine_to_the_strictest(void **state)
{
	struct policy_set *set = compile_ok(
	    "@id(\"a\") @reason(\"r\") allow_with_conditions with { max_ttl: \"10m\", scopes: "
	    "[\"ec2:Describe*\", \"s3:*\"] };\n"
	    "@id(\"b\") @reason(\"r\") allow_with_conditions with { max_ttl: 120, "
	    "enhanced_logging: true, scopes: [\"ec2:DescribeInstances\", \"s3:List*\", "
	    "\"s3:GetObject\"] };\n"
	    "@id(\"c\") @reason(\"r\") allow_with_conditions when { \"c\" in agent.domains } "
	    "with { enhanced_logging: false, max_ttl: 900 };\n");
	struct policy_decision d;
	json_t *j, *want;

	(void)state;
	eval_json(set,
	          "{\"agent\": {\"domains\": [\"c\"]}, \"request\": {\"scopes\": [\"ec2:*\", "
	          "\"s3:ListBuckets\", \"iam:ListUsers\"]}}",
	          &d);
	assert_int_equal(d.effect, POLICY_ALLOW_WITH_CONDITIONS);
	assert_true(d.cond.has_max_ttl);
	assert_int_equal(d.cond.max_ttl, 120);
	assert_true(d.cond.enhanced_logging);
	assert_true(d.cond.narrowed);
	/* ec2:* narrows to ec2:Describe*, then to ec2:DescribeInstances; s3:ListBuckets
	 * stays; iam:ListUsers is in neither set. */
	assert_int_equal(d.cond.n_scopes, 2);
	assert_string_equal(d.cond.scopes[0], "ec2:DescribeInstances");
	assert_string_equal(d.cond.scopes[1], "s3:ListBuckets");
	j = policy_decision_json(&d);
	want = json_loads("{\"decision\": \"ALLOW_WITH_CONDITIONS\", \"reason\": \"r\", "
	                  "\"rules\": [\"a\", \"b\", \"c\"], \"conditions\": {\"max_ttl\": 120, "
	                  "\"scopes\": [\"ec2:DescribeInstances\", \"s3:ListBuckets\"], "
	                  "\"enhanced_logging\": true}}",
	                  0, NULL);
	json_object_del(j, "matches");
	assert_true(json_equal(j, want));
	json_decref(j);
	json_decref(want);

	/* A pattern admits no scope above its own class, whatever the spelling:
	 * "ec2:Describe*" spells ec2:DescribeAndTerminate, which deletes. */
	{
		struct policy_set *one =
		    compile_ok("@id(\"n\") @reason(\"r\") allow_with_conditions "
		               "with { scopes: [\"ec2:Describe*\"] };\n");

		eval_json(one,
		          "{\"request\": {\"scopes\": [\"ec2:DescribeAndTerminate\", "
		          "\"ec2:DescribeInstances\"]}}",
		          &d);
		assert_int_equal(d.effect, POLICY_ALLOW_WITH_CONDITIONS);
		assert_int_equal(d.cond.n_scopes, 1);
		assert_string_equal(d.cond.scopes[0], "ec2:DescribeInstances");
		policy_set_unref(one);
	}

	/* Nothing left to grant: the allow becomes a deny. */
	eval_json(set, "{\"request\": {\"scopes\": [\"iam:ListUsers\"]}}", &d);
	assert_int_equal(d.effect, POLICY_DENY);
	assert_string_equal(d.reason, "the scope conditions leave no requested scope to grant");
	policy_set_unref(set);
}

static void
decision_json_lists_matches_and_errors(void **state)
{
	struct policy_set *set = compile_ok(
	    "@id(\"d\") @reason(\"no prod\") deny when { resource.environment == \"prod\" };\n"
	    "@id(\"a\") @reason(\"ok\") allow when { context.risk < 50 };\n");
	struct policy_decision d;
	json_t *j, *want;

	(void)state;
	eval_json(set, "{}", &d);
	j = policy_decision_json(&d);
	want = json_loads(
	    "{\"decision\": \"DENY\", \"reason\": \"no prod\", \"rules\": [\"d\"], \"matches\": "
	    "[{\"id\": \"d\", \"effect\": \"DENY\", \"reason\": \"no prod\", \"applied\": true, "
	    "\"error\": \"resource.environment is missing\"}, {\"id\": \"a\", \"effect\": "
	    "\"ALLOW\", \"reason\": \"ok\", \"applied\": false, \"error\": \"context.risk is "
	    "missing\"}]}",
	    0, NULL);
	if (!json_equal(j, want))
		fail_msg("got %s", json_dumps(j, 0));
	json_decref(j);
	json_decref(want);
	policy_set_unref(set);
}

/* ---- the index -------------------------------------------------------------------- */

static char *
many_rules(size_t n, bool indexable)
{
	size_t cap = n * 200 + 64, len = 0;
	char *text = malloc(cap);

	for (size_t i = 0; i < n; i++) {
		/* Indexable: a top-level "attr == literal"; not: the same test under "or". */
		len += (size_t)snprintf(
		    text + len, cap - len,
		    "@id(\"r%zu\") @reason(\"rule %zu\") %s when { %sresource.audience == "
		    "\"api-%zu\"%s and request.scopes within [\"svc%zu:*\"] };\n",
		    i, i, i % 3 == 0 ? "deny" : "allow", indexable ? "" : "(",
		    i % (n / 2 ? n / 2 : 1), indexable ? "" : " or false)", i % 7);
	}
	return text;
}

static void
index_evaluates_only_candidate_rules(void **state)
{
	char *text = many_rules(1000, true);
	struct policy_set *set = compile_ok(text);
	struct policy_decision d;

	(void)state;
	eval_json(set,
	          "{\"resource\": {\"audience\": \"api-7\"}, \"request\": {\"scopes\": "
	          "[\"svc0:read\"]}}",
	          &d);
	/* api-7 keys r7 and r507 only. */
	assert_int_equal(d.n_evaluated, 2);
	assert_int_equal(d.effect, POLICY_ALLOW);
	assert_true(applied(&d, "r7"));
	eval_json(set, "{\"resource\": {\"audience\": \"nobody\"}}", &d);
	assert_int_equal(d.n_evaluated, 0);
	/* A missing key attribute runs every rule keyed on it; the denies fail closed. */
	eval_json(set, "{\"request\": {\"scopes\": [\"svc0:read\"]}}", &d);
	assert_int_equal(d.n_evaluated, 1000);
	assert_int_equal(d.effect, POLICY_DENY);
	policy_set_unref(set);
	free(text);
}

static void
action_class_filter_skips_rules_that_cannot_hold(void **state)
{
	struct policy_set *set = compile_ok(
	    "@id(\"w\") @reason(\"r\") deny when { request.action_class >= \"delete\" };\n"
	    "@id(\"x\") @reason(\"r\") deny when { \"admin\" == request.action_class };\n"
	    "@id(\"y\") @reason(\"r\") deny when { request.action_class in [\"read\"] };\n"
	    "@id(\"a\") @reason(\"r\") allow;\n");
	struct policy_decision d;

	(void)state;
	eval_json(set, "{\"request\": {\"action_class\": \"write\"}}", &d);
	assert_int_equal(d.effect, POLICY_ALLOW);
	assert_int_equal(d.n_evaluated, 1);
	eval_json(set, "{\"request\": {\"action_class\": \"admin\"}}", &d);
	assert_int_equal(d.effect, POLICY_DENY);
	assert_int_equal(d.n_matches, 3);
	eval_json(set, "{\"request\": {\"action_class\": \"read\"}}", &d);
	assert_true(applied(&d, "y"));
	eval_json(set, "{}", &d);
	assert_int_equal(d.n_evaluated, 4);
	assert_int_equal(d.effect, POLICY_DENY);
	policy_set_unref(set);
}

/* A small deterministic generator, so failures reproduce. */
static uint64_t rng = 0x9e3779b97f4a7c15ULL;

static unsigned
rnd(unsigned n)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return (unsigned)(rng % n);
}

static const char *const atoms[] = {
    "agent.team == \"a\"",
    "agent.team != \"b\"",
    "agent.team in [\"a\", \"c\"]",
    "resource.audience == \"x\"",
    "resource.audience in [\"x\", \"y\"]",
    "context.risk > 50",
    "context.risk + 10 <= 40",
    "request.scopes within agent.capabilities",
    "request.scopes within [\"ec2:*\"]",
    "resource.environment startswith \"prod\"",
    "agent.labels[\"k\"] == \"v\"",
    "during(\"mon-fri\", \"08:00\", \"18:00\")",
    "request.action_class >= \"write\"",
    "context.approval",
    "agent.id like \"a*\"",
};

static size_t
gen_expr(char *out, size_t cap, int depth)
{
	unsigned k = depth <= 0 ? 0 : rnd(4);

	switch (k) {
	case 1: {
		size_t n = (size_t)snprintf(out, cap, "not (");

		n += gen_expr(out + n, cap - n, depth - 1);
		n += (size_t)snprintf(out + n, cap - n, ")");
		return n;
	}
	case 2:
	case 3: {
		size_t n = (size_t)snprintf(out, cap, "(");

		n += gen_expr(out + n, cap - n, depth - 1);
		n += (size_t)snprintf(out + n, cap - n, k == 2 ? " and " : " or ");
		n += gen_expr(out + n, cap - n, depth - 1);
		n += (size_t)snprintf(out + n, cap - n, ")");
		return n;
	}
	default:
		return (size_t)snprintf(out, cap, "%s", atoms[rnd(IDP_ARRAY_LEN(atoms))]);
	}
}

/*
 * A random input from seed; bit i of keep says whether attribute group i is
 * present.  Every value is drawn before any is left out, so the same seed
 * with fewer bits gives the same input minus those attributes.
 */
static void
gen_input(char *out, size_t cap, unsigned keep, unsigned seed)
{
	static const char *const teams[] = {"a", "b", "c"}, *auds[] = {"x", "y", "z"};
	static const char *const scopes[] = {"[\"ec2:Describe*\"]", "[\"ec2:*\"]",
	                                     "[\"s3:ListBuckets\", \"ec2:Get\"]"};
	static const char *const caps[] = {"[\"ec2:*\"]", "[\"ec2:Describe*\", \"s3:*\"]", "[]"};
	static const char *const envs[] = {"production", "staging"};
	static const char *const days[] = {"mon", "sat"};
	unsigned v[12];
	size_t n = 0;

	for (size_t i = 0; i < IDP_ARRAY_LEN(v); i++) {
		seed = seed * 1103515245u + 12345u;
		v[i] = seed >> 16;
	}
#define ADD(bit, ...)                                                                              \
	do {                                                                                       \
		if (keep >> (bit)&1)                                                               \
			n += (size_t)snprintf(out + n, cap - n, __VA_ARGS__);                      \
	} while (0)
	n += (size_t)snprintf(out + n, cap - n, "{\"agent\": {\"id\": \"ab\"");
	ADD(0, ", \"team\": \"%s\"", teams[v[0] % 3]);
	ADD(1, ", \"capabilities\": %s", caps[v[1] % 3]);
	ADD(2, ", \"labels\": {\"k\": \"%s\"}", v[2] & 1 ? "v" : "w");
	n += (size_t)snprintf(out + n, cap - n, "}, \"resource\": {\"domain\": \"d\"");
	ADD(3, ", \"audience\": \"%s\"", auds[v[3] % 3]);
	ADD(4, ", \"environment\": \"%s\"", envs[v[4] % 2]);
	n += (size_t)snprintf(out + n, cap - n, "}, \"request\": {\"ttl\": 1");
	ADD(5, ", \"scopes\": %s", scopes[v[5] % 3]);
	/* No explicit action class: the reader derives it from the scopes (read
	 * or admin here), so it goes missing exactly when they do. */
	n += (size_t)snprintf(out + n, cap - n, "}, \"context\": {\"minute\": 0");
	ADD(7, ", \"risk\": %u", v[7] % 100);
	ADD(8, ", \"approval\": %s", v[8] & 1 ? "true" : "false");
	ADD(9, ", \"weekday\": \"%s\", \"hour\": %u", days[v[9] % 2], 6 + v[10] % 14);
	snprintf(out + n, cap - n, "}}");
#undef ADD
}

static void
random_rules_never_loosen_when_attributes_go_missing(void **state)
{
	char expr[4096], text[8192], input[1024];
	unsigned denies = 0, undecided = 0;

	(void)state;
	for (int round = 0; round < 400; round++) {
		struct policy_set *dset, *aset;
		struct policy_decision d;

		gen_expr(expr, sizeof(expr), 3);
		snprintf(text, sizeof(text),
		         "@id(\"d\") @reason(\"r\") deny when { %s };\n" P "allow;", expr);
		dset = compile_ok(text);
		snprintf(text, sizeof(text), P "allow when { %s };", expr);
		aset = compile_ok(text);
		for (int k = 0; k < 8; k++) {
			unsigned seed = rnd(1u << 30), drop = rnd(1u << 10);
			bool denied, allowed;

			gen_input(input, sizeof(input), 0x3ff, seed);
			eval_json(dset, input, &d);
			denied = d.effect == POLICY_DENY;
			eval_json(aset, input, &d);
			allowed = d.effect == POLICY_ALLOW;
			denies += denied;
			undecided += !allowed;
			/* The same input with some attributes left out. */
			gen_input(input, sizeof(input), 0x3ff & ~drop, seed);
			eval_json(dset, input, &d);
			if (denied && d.effect != POLICY_DENY)
				fail_msg("deny bypassed: %s\non %s", expr, input);
			eval_json(aset, input, &d);
			if (!allowed && d.effect == POLICY_ALLOW)
				fail_msg("allow gained: %s\non %s", expr, input);
		}
		policy_set_unref(dset);
		policy_set_unref(aset);
	}
	/* Both outcomes came up often enough for the property to mean something. */
	assert_true(denies > 300 && denies < 3000);
	assert_true(undecided > 300 && undecided < 3000);
}

static void
index_never_changes_a_decision(void **state)
{
	char expr[4096], input[1024];
	static const char *const effects[] = {"allow", "deny", "require_approval"};
	char *plain = malloc(200000), *hidden = malloc(200000);

	(void)state;
	for (int round = 0; round < 20; round++) {
		struct policy_set *a, *b;
		size_t np = 0, nh = 0;

		for (int i = 0; i < 30; i++) {
			const char *eff = effects[rnd(3)];
			const char *key =
			    rnd(2) ? "resource.audience == \"x\"" : "agent.team in [\"a\", \"b\"]";

			gen_expr(expr, sizeof(expr), 2);
			np += (size_t)snprintf(plain + np, 200000 - np,
			                       "@id(\"r%d\") @reason(\"%d\") %s when { %s and %s "
			                       "};\n",
			                       i, i, eff, key, expr);
			/* The same rule, its key hidden from the index under "or false". */
			nh += (size_t)snprintf(hidden + nh, 200000 - nh,
			                       "@id(\"r%d\") @reason(\"%d\") %s when { (%s and %s) "
			                       "or false };\n",
			                       i, i, eff, key, expr);
		}
		a = compile_ok(plain);
		b = compile_ok(hidden);
		for (int k = 0; k < 30; k++) {
			struct policy_decision da, db;
			json_t *ja, *jb;

			gen_input(input, sizeof(input), rnd(1u << 10), rnd(1u << 30));
			eval_json(a, input, &da);
			eval_json(b, input, &db);
			ja = policy_decision_json(&da);
			jb = policy_decision_json(&db);
			if (!json_equal(ja, jb))
				fail_msg("index changed the decision on %s", input);
			assert_true(da.n_evaluated <= db.n_evaluated);
			json_decref(ja);
			json_decref(jb);
		}
		policy_set_unref(a);
		policy_set_unref(b);
	}
	free(plain);
	free(hidden);
}

/* ---- input ---------------------------------------------------------------------------- */

static void
json_input_rejects_bad_shapes_with_clear_errors(void **state)
{
	static const struct {
		const char *json, *want;
	} cases[] = {
	    {"[]", "input: expected an object"},
	    {"{\"agent\": []}", "agent: expected an object"},
	    {"{\"agnet\": {}}", "agnet: unknown section (expected agent, request, resource, "
	                        "delegation or context)"},
	    {"{\"agent\": {\"name\": \"x\"}}", "agent.name: unknown attribute"},
	    {"{\"agent\": {\"id\": 5}}", "agent.id: expected a string"},
	    {"{\"agent\": {\"capabilities\": \"ec2:*\"}}",
	     "agent.capabilities: expected a list of at most 256 strings"},
	    {"{\"agent\": {\"capabilities\": [\"ec2:*\", 1]}}",
	     "agent.capabilities[1]: expected a string"},
	    {"{\"request\": {\"scopes\": [\"ec2\"]}}",
	     "request.scopes[0]: scope \"ec2\": no ':' between resource and verb"},
	    {"{\"agent\": {\"labels\": {\"k\": 1}}}", "agent.labels[\"k\"]: expected a string"},
	    {"{\"agent\": {\"labels\": []}}",
	     "agent.labels: expected an object of at most 256 strings"},
	    {"{\"context\": {\"hour\": 24}}", "context.hour: expected an integer from 0 to 23"},
	    {"{\"context\": {\"risk\": 101}}", "context.risk: expected an integer from 0 to 100"},
	    {"{\"delegation\": {\"depth\": -1}}",
	     "delegation.depth: expected a non-negative integer"},
	    {"{\"request\": {\"ttl\": 1.5}}", "request.ttl: expected a non-negative integer"},
	    {"{\"context\": {\"approval\": \"yes\"}}", "context.approval: expected true or false"},
	    {"{\"context\": {\"weekday\": \"Monday\"}}",
	     "context.weekday: expected a weekday, \"mon\" to \"sun\""},
	    {"{\"request\": {\"action_class\": \"modify\"}}",
	     "request.action_class: expected \"read\", \"write\", \"delete\" or \"admin\""},
	    {"{\"context\": {\"time\": \"yesterday\"}}",
	     "context.time: expected an RFC 3339 time such as \"2026-03-30T10:00:00Z\""},
	};
	struct policy_input_doc *d = NULL;
	struct idp_diag dd;

	(void)state;
	for (size_t i = 0; i < IDP_ARRAY_LEN(cases); i++) {
		json_t *j = json_loads(cases[i].json, 0, NULL);

		assert_non_null(j);
		idp_diag_init(&dd);
		assert_int_equal(policy_input_from_json(j, NULL, &d, &dd), IDP_EINVAL);
		assert_null(d);
		if (strcmp(idp_diag_str(&dd), cases[i].want) != 0)
			fail_msg("%s\n  want: %s\n  got:  %s", cases[i].json, cases[i].want,
			         idp_diag_str(&dd));
		json_decref(j);
	}
}

static void
json_input_reads_every_type_and_derives_the_action_class(void **state)
{
	json_t *j = json_loads(
	    "{\"agent\": {\"id\": \"a\", \"capabilities\": [\"ec2:*\"], \"labels\": {\"k\": "
	    "\"v\"}, "
	    "\"max_chain_depth\": 3, \"team\": null},"
	    " \"request\": {\"scopes\": [\"ec2:Describe*\", \"ec2:DeleteVolume\"]},"
	    " \"context\": {\"time\": \"2026-03-29T23:30:00+02:00\", \"approval\": true},"
	    " \"extra\": 1}",
	    0, NULL);
	struct policy_json_opts opts = {NULL, NULL, true};
	struct policy_input_doc *d = NULL;
	struct policy_input *in;
	struct idp_diag dd;

	(void)state;
	idp_diag_init(&dd);
	assert_int_equal(policy_input_from_json(j, &opts, &d, &dd), IDP_OK);
	in = policy_input_doc_input(d);
	assert_string_equal(in->slot[POLICY_ATTR_AGENT_ID].s, "a");
	assert_false(policy_input_has(in, POLICY_ATTR_AGENT_TEAM));
	assert_int_equal(in->slot[POLICY_ATTR_AGENT_MAX_CHAIN_DEPTH].i, 3);
	assert_int_equal(in->slot[POLICY_ATTR_AGENT_LABELS].map.n, 1);
	assert_int_equal(in->slot[POLICY_ATTR_REQUEST_ACTION_CLASS].i, IDP_ACTION_DELETE);
	/* 21:30 UTC on Sunday 29 March 2026. */
	assert_int_equal(in->slot[POLICY_ATTR_CONTEXT_HOUR].i, 21);
	assert_int_equal(in->slot[POLICY_ATTR_CONTEXT_MINUTE].i, 30);
	assert_int_equal(in->slot[POLICY_ATTR_CONTEXT_WEEKDAY].i, 6);
	assert_int_equal(in->slot[POLICY_ATTR_CONTEXT_APPROVAL].i, 1);
	policy_input_doc_free(d);
	json_decref(j);
}

/* An input built with the setters passes or fails exactly where the JSON reader does. */
static void
set_input_is_validated_like_json_input(void **state)
{
	static char long_str[1100];
	static const char *many[300];
	const char *caps[] = {"ec2:*"}, *bad_caps[] = {"ec2:Describe Instances"};
	const char *scopes[] = {"ec2:Describe*", "ec2:DeleteVolume"};
	struct policy_input in;
	struct idp_diag dd;
	json_t *j;
	struct policy_input_doc *jd = NULL;

	(void)state;
	memset(long_str, 'a', sizeof(long_str) - 1);
	for (size_t i = 0; i < IDP_ARRAY_LEN(many); i++)
		many[i] = "x";

	/* Valid: accepted, and the action class derived as from JSON. */
	policy_input_init(&in);
	assert_int_equal(policy_input_set_str(&in, POLICY_ATTR_AGENT_ID, "a"), IDP_OK);
	assert_int_equal(policy_input_set_list(&in, POLICY_ATTR_AGENT_CAPABILITIES, caps, 1),
	                 IDP_OK);
	assert_int_equal(policy_input_set_list(&in, POLICY_ATTR_REQUEST_SCOPES, scopes, 2), IDP_OK);
	idp_diag_init(&dd);
	assert_int_equal(policy_input_validate(&in, &dd), IDP_OK);
	policy_input_derive_action_class(&in, NULL);
	j = json_loads("{\"agent\": {\"id\": \"a\", \"capabilities\": [\"ec2:*\"]}, \"request\":"
	               " {\"scopes\": [\"ec2:Describe*\", \"ec2:DeleteVolume\"]}}",
	               0, NULL);
	assert_int_equal(policy_input_from_json(j, NULL, &jd, &dd), IDP_OK);
	assert_int_equal(in.slot[POLICY_ATTR_REQUEST_ACTION_CLASS].i,
	                 policy_input_doc_input(jd)->slot[POLICY_ATTR_REQUEST_ACTION_CLASS].i);
	assert_int_equal(in.slot[POLICY_ATTR_REQUEST_ACTION_CLASS].i, IDP_ACTION_DELETE);
	policy_input_doc_free(jd);
	json_decref(j);

	/* A string past the limit. */
	policy_input_init(&in);
	(void)policy_input_set_str(&in, POLICY_ATTR_AGENT_TEAM, long_str);
	idp_diag_init(&dd);
	assert_int_equal(policy_input_validate(&in, &dd), IDP_EINVAL);
	assert_non_null(strstr(idp_diag_str(&dd), "agent.team"));
	/* A capability that is not a scope pattern. */
	policy_input_init(&in);
	(void)policy_input_set_list(&in, POLICY_ATTR_AGENT_CAPABILITIES, bad_caps, 1);
	idp_diag_init(&dd);
	assert_int_equal(policy_input_validate(&in, &dd), IDP_EINVAL);
	assert_non_null(strstr(idp_diag_str(&dd), "agent.capabilities[0]"));
	/* Too many items. */
	policy_input_init(&in);
	(void)policy_input_set_list(&in, POLICY_ATTR_DELEGATION_CHAIN, many, IDP_ARRAY_LEN(many));
	idp_diag_init(&dd);
	assert_int_equal(policy_input_validate(&in, &dd), IDP_EINVAL);
	assert_non_null(strstr(idp_diag_str(&dd), "delegation.chain"));
	/* Integers out of the reader's ranges. */
	policy_input_init(&in);
	(void)policy_input_set_int(&in, POLICY_ATTR_CONTEXT_HOUR, 24);
	(void)policy_input_set_int(&in, POLICY_ATTR_AGENT_MAX_CHAIN_DEPTH, -1);
	idp_diag_init(&dd);
	assert_int_equal(policy_input_validate(&in, &dd), IDP_EINVAL);
	assert_int_equal(dd.count, 2);
}

static void
setters_refuse_the_wrong_type(void **state)
{
	struct policy_input in;
	static const char *const v[] = {"a:b"};

	(void)state;
	policy_input_init(&in);
	assert_int_equal(policy_input_set_str(&in, POLICY_ATTR_AGENT_ID, "x"), IDP_OK);
	assert_int_equal(policy_input_set_int(&in, POLICY_ATTR_AGENT_ID, 1), IDP_EINVAL);
	/* The mistake leaves the attribute missing, so it fails closed. */
	assert_false(policy_input_has(&in, POLICY_ATTR_AGENT_ID));
	assert_int_equal(policy_input_set_list(&in, POLICY_ATTR_REQUEST_SCOPES, v, 1), IDP_OK);
	assert_int_equal(policy_input_set_int(&in, POLICY_ATTR_REQUEST_ACTION_CLASS, 4),
	                 IDP_EINVAL);
	assert_int_equal(policy_input_set_int(&in, POLICY_ATTR_CONTEXT_WEEKDAY, 6), IDP_OK);
	assert_int_equal(policy_input_set_bool(&in, POLICY_ATTR_CONTEXT_RISK, true), IDP_EINVAL);
	assert_int_equal(policy_input_set_str(&in, POLICY_ATTR_COUNT, "x"), IDP_EINVAL);
	assert_int_equal(policy_attr_lookup("context.calls_last_minute"),
	                 POLICY_ATTR_CONTEXT_CALLS);
	assert_int_equal(policy_attr_lookup("agent.nope"), -1);
	assert_string_equal(policy_attr_name(POLICY_ATTR_AGENT_APPROVAL_FOR),
	                    "agent.requires_human_approval_for");
}

/* ---- sets, engine, CLI ------------------------------------------------------------------ */

static void
set_hash_covers_names_and_texts(void **state)
{
	struct policy_source a = {"a.policy", P "allow;", strlen(P "allow;")};
	struct policy_source b = {"b.policy", P "allow;", strlen(P "allow;")};
	struct policy_set *s1, *s2, *s3;
	struct idp_clock clk;
	json_t *j;

	(void)state;
	idp_clock_fixed(&clk, 1774621523456LL);
	idp_diag_init(&diag);
	assert_int_equal(policy_set_compile(&a, 1, &clk, &s1, &diag), IDP_OK);
	assert_int_equal(policy_set_compile(&a, 1, &clk, &s2, &diag), IDP_OK);
	assert_int_equal(policy_set_compile(&b, 1, &clk, &s3, &diag), IDP_OK);
	assert_string_equal(policy_set_hash(s1), policy_set_hash(s2));
	assert_string_not_equal(policy_set_hash(s1), policy_set_hash(s3));
	assert_int_equal(strlen(policy_set_hash(s1)), 7 + 64);
	assert_int_equal(policy_set_loaded_at_ms(s1), 1774621523456LL);
	assert_non_null(policy_set_find(s1, "r"));
	assert_null(policy_set_find(s1, "x"));
	j = policy_set_describe(s1);
	assert_string_equal(json_string_value(json_object_get(j, "loaded_at")),
	                    "2026-03-27T14:25:23.456Z");
	assert_string_equal(json_string_value(json_object_get(
	                        json_array_get(json_object_get(j, "rules"), 0), "effect")),
	                    "ALLOW");
	json_decref(j);
	policy_set_unref(s1);
	policy_set_unref(s2);
	policy_set_unref(s3);
	policy_set_unref(NULL);
}

static char tmpdir[64];

static void
write_file(const char *dir, const char *name, const char *text)
{
	char path[256];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	f = fopen(path, "w");
	assert_non_null(f);
	fputs(text, f);
	fclose(f);
}

static int
tmp_setup(void **state)
{
	char sub[128];

	(void)state;
	snprintf(tmpdir, sizeof(tmpdir), "/tmp/idpd-policy-XXXXXX");
	if (mkdtemp(tmpdir) == NULL)
		return -1;
	snprintf(sub, sizeof(sub), "%s/tests", tmpdir);
	return mkdir(sub, 0700);
}

static int
tmp_teardown(void **state)
{
	char cmd[128];

	(void)state;
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
	return system(cmd) == 0 ? 0 : -1;
}

static void
engine_keeps_the_old_set_when_a_reload_fails(void **state)
{
	struct policy_engine *e = policy_engine_new();
	struct policy_set *held, *now;
	struct policy_decision d;
	struct policy_input in;

	(void)state;
	assert_null(policy_engine_acquire(e));
	write_file(tmpdir, "a.policy", P "allow;");
	idp_diag_init(&diag);
	assert_int_equal(policy_engine_reload(e, tmpdir, NULL, &diag), IDP_OK);
	held = policy_engine_acquire(e);
	assert_non_null(held);

	write_file(tmpdir, "b.policy", P "deny when { oops };");
	idp_diag_init(&diag);
	assert_int_equal(policy_engine_reload(e, tmpdir, NULL, &diag), IDP_EINVAL);
	assert_non_null(strstr(idp_diag_str(&diag), "/b.policy:1:35: unknown attribute \"oops\""));
	now = policy_engine_acquire(e);
	assert_ptr_equal(now, held);
	policy_set_unref(now);

	/* A good reload swaps; the reader keeps evaluating its own set. */
	write_file(tmpdir, "b.policy", "@id(\"s\") @reason(\"r\") deny;");
	idp_diag_init(&diag);
	assert_int_equal(policy_engine_reload(e, tmpdir, NULL, &diag), IDP_OK);
	now = policy_engine_acquire(e);
	assert_ptr_not_equal(now, held);
	policy_input_init(&in);
	policy_eval(held, &in, &d);
	assert_int_equal(d.effect, POLICY_ALLOW);
	policy_eval(now, &in, &d);
	assert_int_equal(d.effect, POLICY_DENY);
	policy_set_unref(held);
	policy_set_unref(now);
	policy_engine_free(e);
}

/* The set's hash names the files, not the spelling of their directory. */
static void
set_hash_ignores_how_the_directory_is_spelled(void **state)
{
	const char *const tails[] = {"", "/", "//", "/../"};
	char first[80] = "", dir[160];

	(void)state;
	write_file(tmpdir, "a.policy", P "allow;");
	for (size_t i = 0; i < sizeof(tails) / sizeof(tails[0]); i++) {
		struct policy_set *set = NULL;

		/* "/tmp/idpd-policy-X/../idpd-policy-X" names the same directory. */
		snprintf(dir, sizeof(dir), "%s%s%s", tmpdir, tails[i],
		         i == 3 ? strrchr(tmpdir, '/') + 1 : "");
		idp_diag_init(&diag);
		assert_int_equal(policy_set_load_dir(dir, NULL, &set, &diag), IDP_OK);
		if (i == 0)
			snprintf(first, sizeof(first), "%s", policy_set_hash(set));
		else
			assert_string_equal(policy_set_hash(set), first);
		policy_set_unref(set);
	}
}

static void
load_dir_reports_missing_and_empty_directories(void **state)
{
	struct policy_set *set = (struct policy_set *)1;

	(void)state;
	idp_diag_init(&diag);
	assert_int_equal(policy_set_load_dir("/nonexistent/policies", NULL, &set, &diag), IDP_EIO);
	assert_null(set);
	assert_string_equal(idp_diag_str(&diag),
	                    "/nonexistent/policies: No such file or directory");
	idp_diag_init(&diag);
	assert_int_equal(policy_set_load_dir(tmpdir, NULL, &set, &diag), IDP_EINVAL);
	assert_non_null(strstr(idp_diag_str(&diag), ": no *.policy files"));
}

static int
run_cli(const char *a1, const char *a2)
{
	char *argv[] = {"policy", (char *)a1, (char *)a2, NULL};
	int rc;

	fflush(stdout);
	rc = policy_cli_main(3, argv);
	fflush(stdout);
	return rc;
}

static void
cli_check_and_test_report_and_exit(void **state)
{
	char path[160];

	(void)state;
	write_file(tmpdir, "a.policy",
	           P "allow when { agent.team == \"a\" };\n"
	             "@id(\"d\") @reason(\"no b\") deny when { agent.team == \"b\" };\n");
	assert_int_equal(run_cli("check", tmpdir), 0);
	write_file(
	    tmpdir, "tests/a.json",
	    "{\"base\": {\"agent\": {\"team\": \"a\"}}, \"cases\": ["
	    "{\"name\": \"a is allowed\", \"input\": {}, \"expect\": {\"decision\": "
	    "\"ALLOW\", \"rules\": [\"r\"]}},"
	    "{\"name\": \"b is denied\", \"input\": {\"agent\": {\"team\": \"b\"}}, "
	    "\"expect\": {\"decision\": \"DENY\", \"rules\": [\"d\"], \"reason\": \"no b\"}},"
	    "{\"name\": \"no team fails closed\", \"input\": {\"agent\": {\"team\": null}}, "
	    "\"expect\": {\"decision\": \"DENY\", \"errored\": [\"r\", \"d\"]}}]}");
	assert_int_equal(run_cli("test", tmpdir), 0);
	/* A wrong expectation fails the run. */
	write_file(tmpdir, "tests/b.json",
	           "{\"cases\": [{\"name\": \"wrong\", \"input\": {\"agent\": {\"team\": \"a\"}}, "
	           "\"expect\": {\"decision\": \"DENY\"}}]}");
	assert_int_equal(run_cli("test", tmpdir), 1);
	/* Conditions expected of a decision that applies none fail it: a DENY
	 * enforces no max_ttl, whatever the engine computed. */
	write_file(tmpdir, "tests/b.json",
	           "{\"cases\": [{\"name\": \"no conditions on a deny\", \"input\": {\"agent\": "
	           "{\"team\": \"b\"}}, \"expect\": {\"decision\": \"DENY\", \"conditions\": "
	           "{\"enhanced_logging\": false}}}]}");
	assert_int_equal(run_cli("test", tmpdir), 1);
	write_file(tmpdir, "tests/b.json", "{\"cases\": []}");
	assert_int_equal(run_cli("test", tmpdir), 1);
	write_file(tmpdir, "tests/b.json", "{not json");
	assert_int_equal(run_cli("test", tmpdir), 1);
	write_file(tmpdir, "tests/b.json",
	           "{\"cases\": [{\"name\": \"bad input\", \"input\": {\"agent\": {\"team\": 1}}, "
	           "\"expect\": {\"decision\": \"DENY\"}}]}");
	assert_int_equal(run_cli("test", tmpdir), 1);
	snprintf(path, sizeof(path), "%s/tests/b.json", tmpdir);
	assert_int_equal(unlink(path), 0);
	assert_int_equal(run_cli("test", tmpdir), 0);
	/* A set that does not compile fails check and test. */
	write_file(tmpdir, "a.policy", P "allow when { agent.team == 1 };\n");
	assert_int_equal(run_cli("check", tmpdir), 1);
	assert_int_equal(run_cli("test", tmpdir), 1);
	assert_int_equal(run_cli("frobnicate", tmpdir), 2);
}

/*
 * `policy test --config` sees the verbs a deployment adds: "Query" is a
 * write for the built-in map and a read once [[policy.verbs]] says so.
 */
static void
cli_test_uses_the_deployments_verbs_with_config(void **state)
{
	char cfg[160];
	char *argv[] = {"policy", "test", tmpdir, "--config", cfg, NULL};
	int rc;

	(void)state;
	write_file(
	    tmpdir, "a.policy",
	    "@id(\"w\") @reason(\"writes\") deny when { request.action_class >= \"write\" };\n"
	    "@id(\"a\") @reason(\"ok\") allow when { true };\n");
	write_file(tmpdir, "tests/a.json",
	           "{\"cases\": [{\"name\": \"query is a read\", \"input\": {\"request\": "
	           "{\"scopes\": [\"search:Query\"]}}, \"expect\": {\"decision\": \"ALLOW\"}}]}");
	write_file(tmpdir, "c.toml", "[[policy.verbs]]\nverb = \"Query\"\nclass = \"read\"\n");
	snprintf(cfg, sizeof(cfg), "%s/c.toml", tmpdir);
	assert_int_equal(run_cli("test", tmpdir), 1);
	fflush(stdout);
	rc = policy_cli_main(5, argv);
	fflush(stdout);
	assert_int_equal(rc, 0);
	/* The installed map is the built-in one again afterwards. */
	assert_int_equal(scope_action_class(scope_verb_map_current(), "search:Query"),
	                 IDP_ACTION_WRITE);
	/* A config that does not load stops the run. */
	write_file(tmpdir, "c.toml", "[[policy.verbs]]\nverb = \"a:b\"\nclass = \"read\"\n");
	fflush(stdout);
	rc = policy_cli_main(5, argv);
	fflush(stdout);
	assert_int_equal(rc, 1);
}

/* A shipped policy file copied into the test directory. */
static void
copy_shipped(const char *name)
{
	char path[160], text[8192];
	FILE *f;
	size_t n;

	snprintf(path, sizeof(path), "policies/%s", name);
	f = fopen(path, "r");
	assert_non_null(f);
	n = fread(text, 1, sizeof(text) - 1, f);
	assert_true(n > 0 && n < sizeof(text) - 1);
	text[n] = '\0';
	fclose(f);
	write_file(tmpdir, name, text);
}

/*
 * The shipped allow_with_conditions rules grant no more than base-allow:
 * without scope-boundary.policy, scopes outside the capabilities are still
 * denied at an elevated risk and on sensitive data.
 */
static void
shipped_conditions_grant_nothing_beyond_base_allow(void **state)
{
	static const char *const files[] = {
	    "base.policy",  "cross-domain.policy",   "delegation-depth.policy",
	    "risk.policy",  "sensitive-data.policy", "time-of-day.policy",
	    "volume.policy"};
	json_t *risk = json_load_file("policies/tests/risk.json", 0, NULL);
	json_t *cases = json_loads(
	    "[{\"name\": \"elevated risk, scopes outside the capabilities\", \"input\": "
	    "{\"request\": {\"scopes\": [\"billing:GetInvoices\", \"hr:ListEmployees\"]}, "
	    "\"context\": {\"risk\": 45}}, \"expect\": {\"decision\": \"DENY\"}},"
	    "{\"name\": \"cleared pii, scopes outside the capabilities\", \"input\": "
	    "{\"request\": {\"scopes\": [\"billing:GetInvoices\"]}, \"agent\": {\"labels\": "
	    "{\"clearance\": \"pii\"}}, \"resource\": {\"classification\": \"pii\"}}, "
	    "\"expect\": {\"decision\": \"DENY\"}},"
	    "{\"name\": \"elevated risk, scopes within\", \"input\": {\"context\": "
	    "{\"risk\": 45}}, \"expect\": {\"decision\": \"ALLOW_WITH_CONDITIONS\"}}]",
	    0, NULL);
	char path[160];

	(void)state;
	assert_non_null(risk);
	assert_non_null(cases);
	for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++)
		copy_shipped(files[i]);
	assert_int_equal(json_object_set_new(risk, "cases", cases), 0);
	snprintf(path, sizeof(path), "%s/tests/x.json", tmpdir);
	assert_int_equal(json_dump_file(risk, path, 0), 0);
	json_decref(risk);
	assert_int_equal(run_cli("test", tmpdir), 0);
}

static void
shipped_policies_pass_their_tests(void **state)
{
	(void)state;
	/* Run from the repository root, as `make test` does. */
	assert_int_equal(run_cli("check", "policies"), 0);
	assert_int_equal(run_cli("test", "policies"), 0);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(lexer_errors_name_position_and_cause),
	    cmocka_unit_test(parser_errors_name_position_and_expectation),
	    cmocka_unit_test(nesting_and_size_limits_are_errors),
	    cmocka_unit_test(errors_show_the_line_and_underline_the_token),
	    cmocka_unit_test(long_lines_show_a_window_around_the_error),
	    cmocka_unit_test(every_error_is_collected_in_position_order),
	    cmocka_unit_test(type_errors_name_position_and_types),
	    cmocka_unit_test(rule_errors_name_position),
	    cmocka_unit_test(duplicate_ids_across_files_name_both_files),
	    cmocka_unit_test(valid_language_compiles),
	    cmocka_unit_test_teardown(nothing_matching_is_deny_no_rule_allows, doc_teardown),
	    cmocka_unit_test_teardown(effects_combine_deny_over_approval_over_conditions_over_allow,
	                              doc_teardown),
	    cmocka_unit_test_teardown(deny_cannot_be_bypassed_by_leaving_attributes_out,
	                              doc_teardown),
	    cmocka_unit_test_teardown(errors_follow_three_valued_logic, doc_teardown),
	    cmocka_unit_test_teardown(conditions_of_an_errored_rule_still_restrict, doc_teardown),
	    cmocka_unit_test_teardown(integer_overflow_fails_closed, doc_teardown),
	    cmocka_unit_test_teardown(operators_evaluate_as_documented, doc_teardown),
	    cmocka_unit_test_teardown(conditions_combine_to_the_strictest, doc_teardown),
	    cmocka_unit_test_teardown(decision_json_lists_matches_and_errors, doc_teardown),
	    cmocka_unit_test_teardown(index_evaluates_only_candidate_rules, doc_teardown),
	    cmocka_unit_test_teardown(action_class_filter_skips_rules_that_cannot_hold,
	                              doc_teardown),
	    cmocka_unit_test_teardown(random_rules_never_loosen_when_attributes_go_missing,
	                              doc_teardown),
	    cmocka_unit_test_teardown(index_never_changes_a_decision, doc_teardown),
	    cmocka_unit_test(json_input_rejects_bad_shapes_with_clear_errors),
	    cmocka_unit_test(json_input_reads_every_type_and_derives_the_action_class),
	    cmocka_unit_test(setters_refuse_the_wrong_type),
	    cmocka_unit_test(set_input_is_validated_like_json_input),
	    cmocka_unit_test(set_hash_covers_names_and_texts),
	    cmocka_unit_test_setup_teardown(set_hash_ignores_how_the_directory_is_spelled,
	                                    tmp_setup, tmp_teardown),
	    cmocka_unit_test_setup_teardown(engine_keeps_the_old_set_when_a_reload_fails, tmp_setup,
	                                    tmp_teardown),
	    cmocka_unit_test_setup_teardown(load_dir_reports_missing_and_empty_directories,
	                                    tmp_setup, tmp_teardown),
	    cmocka_unit_test_setup_teardown(cli_check_and_test_report_and_exit, tmp_setup,
	                                    tmp_teardown),
	    cmocka_unit_test_setup_teardown(cli_test_uses_the_deployments_verbs_with_config,
	                                    tmp_setup, tmp_teardown),
	    cmocka_unit_test(shipped_policies_pass_their_tests),
	    cmocka_unit_test_setup_teardown(shipped_conditions_grant_nothing_beyond_base_allow,
	                                    tmp_setup, tmp_teardown),
	};
	return cmocka_run_group_tests_name("policy", tests, NULL, NULL);
}
