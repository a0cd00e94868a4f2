/*
 * Unit tests for the pure rules of src/token/approvals.c: the form of an
 * approval id, the scope set an approval is bound to (order and duplicates
 * do not matter), the PostgreSQL array literals, the reason a use is
 * refused (binding before state, so nothing leaks about another agent's
 * approval), and which humans may decide.  The database side is in
 * tests/integration/test_approvals.c.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "../../src/token/approvals_int.h"

static void
approval_ids_are_apr_and_base64url(void **state)
{
	char id[80];

	(void)state;
	assert_true(approval_id_valid("apr_0123456789abcdefABCDEF"));
	assert_true(approval_id_valid("apr_-_-_-_-_-_-_-_-_-_"));
	assert_false(approval_id_valid(NULL));
	assert_false(approval_id_valid(""));
	assert_false(approval_id_valid("apr_"));
	assert_false(approval_id_valid("apr_short"));
	assert_false(approval_id_valid("task_0123456789abcdefABCDEF"));
	assert_false(approval_id_valid("APR_0123456789abcdefABCDEF"));
	assert_false(approval_id_valid("apr_0123456789abcdef/ABCDEF"));
	assert_false(approval_id_valid("apr_0123456789abcdef ABCDEF"));
	assert_false(approval_id_valid("apr_0123456789abcdef'ABCDEF"));
	memset(id, 'x', sizeof(id));
	memcpy(id, "apr_", 4);
	id[4 + 60] = '\0';
	assert_true(approval_id_valid(id));
	id[4 + 60] = 'x';
	id[4 + 61] = '\0';
	assert_false(approval_id_valid(id));
}

static void
scope_set_ignores_order_and_duplicates(void **state)
{
	char *a, *b, *c;

	(void)state;
	a = approval_scope_set("reports:write cloud:DescribeInstances");
	b = approval_scope_set("cloud:DescribeInstances  reports:write cloud:DescribeInstances");
	c = approval_scope_set("cloud:DescribeInstances");
	assert_non_null(a);
	assert_non_null(b);
	assert_non_null(c);
	assert_string_equal(a, "{\"cloud:DescribeInstances\",\"reports:write\"}");
	assert_string_equal(a, b);
	assert_string_equal(c, "{\"cloud:DescribeInstances\"}");
	free(a);
	free(b);
	free(c);
	/* Bytewise: upper case sorts before lower case, as COLLATE "C" does. */
	a = approval_scope_set("s3:get S3:get");
	assert_string_equal(a, "{\"S3:get\",\"s3:get\"}");
	free(a);
}

static void
scope_set_refuses_empty_invalid_and_too_many(void **state)
{
	char many[64 * 12 + 32];
	size_t at = 0;

	(void)state;
	assert_null(approval_scope_set(NULL));
	assert_null(approval_scope_set(""));
	assert_null(approval_scope_set("   "));
	assert_null(approval_scope_set("no-colon"));
	assert_null(approval_scope_set("a:b \"c:d\""));
	assert_null(approval_scope_set("a:b c:d,e:f"));
	for (int i = 0; i < 65; i++)
		at += (size_t)snprintf(many + at, sizeof(many) - at, "%sr%d:x", i ? " " : "", i);
	assert_null(approval_scope_set(many));
}

static void
words_array_quotes_and_escapes_every_element(void **state)
{
	char *s;

	(void)state;
	s = approval_words_array(NULL, 4);
	assert_string_equal(s, "{}");
	free(s);
	s = approval_words_array("", 4);
	assert_string_equal(s, "{}");
	free(s);
	s = approval_words_array("  sensitive-data  off-hours ", 4);
	assert_string_equal(s, "{\"sensitive-data\",\"off-hours\"}");
	free(s);
	/* "NULL" stays a string; quotes and backslashes are escaped. */
	s = approval_words_array("NULL a\"b c\\d {e,f}", 8);
	assert_string_equal(s, "{\"NULL\",\"a\\\"b\",\"c\\\\d\",\"{e,f}\"}");
	free(s);
	assert_null(approval_words_array("a b c", 2));
}

static void
refusal_names_the_binding_before_the_state(void **state)
{
	(void)state;
	assert_string_equal(approval_refusal(false, false, "", false), "approval_unknown");
	/* Another agent's approval: whatever its state, only "mismatch". */
	assert_string_equal(approval_refusal(true, false, "used", false), "approval_mismatch");
	assert_string_equal(approval_refusal(true, false, "approved", true), "approval_mismatch");
	assert_string_equal(approval_refusal(true, false, "pending", true), "approval_mismatch");
	assert_string_equal(approval_refusal(true, true, "used", true), "approval_used");
	assert_string_equal(approval_refusal(true, true, "used", false), "approval_used");
	assert_string_equal(approval_refusal(true, true, "denied", true), "approval_denied");
	assert_string_equal(approval_refusal(true, true, "denied", false), "approval_denied");
	assert_string_equal(approval_refusal(true, true, "approved", false), "approval_expired");
	assert_string_equal(approval_refusal(true, true, "pending", false), "approval_expired");
	assert_string_equal(approval_refusal(true, true, "pending", true), "approval_pending");
	/* Approved, bound and live but not taken: spent by a concurrent use. */
	assert_string_equal(approval_refusal(true, true, "approved", true), "approval_used");
}

static void
task_human_or_agent_owner_may_decide(void **state)
{
	(void)state;
	/* The task's human, exactly, of the task's provider. */
	assert_true(approval_human_may_decide("alice@example.com", "corp", true,
	                                      "alice@example.com", "corp", "bob@example.com"));
	assert_false(approval_human_may_decide("Alice@example.com", "corp", true,
	                                       "alice@example.com", "corp", "bob@example.com"));
	/* Another provider asserting the same principal is someone else. */
	assert_false(approval_human_may_decide("alice@example.com", "partners", true,
	                                       "alice@example.com", "corp", "bob@example.com"));
	/* The owner: an email owner without case, a subject owner as idp:principal. */
	assert_true(approval_human_may_decide("Bob@Example.com", "corp", true, "alice@example.com",
	                                      "corp", "bob@example.com"));
	assert_true(approval_human_may_decide("00u1abc", "okta", true, "alice@example.com", "corp",
	                                      "okta:00u1abc"));
	assert_false(approval_human_may_decide("00u1abc", "corp", true, "alice@example.com", "corp",
	                                       "okta:00u1abc"));
	assert_false(approval_human_may_decide("00u1ab", "okta", true, "alice@example.com", "corp",
	                                       "okta:00u1abc"));
	/* A principal that spells a subject owner whole, from any provider, is
	 * not that subject. */
	assert_false(approval_human_may_decide("okta:00u1abc", "partners", true,
	                                       "alice@example.com", "corp", "okta:00u1abc"));
	assert_false(approval_human_may_decide("okta:00u1abc", "okta", true, "alice@example.com",
	                                       "corp", "okta:00u1abc"));
	/* A provider that does not vouch for owners stands for no email owner,
	 * yet its principal is still the task's human of a task it opened, and
	 * a subject owner that names it. */
	assert_false(approval_human_may_decide("Bob@Example.com", "partners", false,
	                                       "alice@example.com", "corp", "bob@example.com"));
	assert_true(approval_human_may_decide("alice@example.com", "partners", false,
	                                      "alice@example.com", "partners", "bob@example.com"));
	assert_true(approval_human_may_decide("00u1abc", "okta", false, "alice@example.com", "corp",
	                                      "okta:00u1abc"));
	/* Anyone else. */
	assert_false(approval_human_may_decide("mallory@example.com", "corp", true,
	                                       "alice@example.com", "corp", "bob@example.com"));
	assert_false(approval_human_may_decide("", "corp", true, "alice@example.com", "corp",
	                                       "bob@example.com"));
}

static void
owner_form_lowers_emails_only(void **state)
{
	char out[64];

	(void)state;
	approval_owner_form("Bob@Example.COM", out, sizeof(out));
	assert_string_equal(out, "bob@example.com");
	approval_owner_form("okta:00U1ABC", out, sizeof(out));
	assert_string_equal(out, "okta:00U1ABC");
	approval_owner_form("ABCDEFGHIJ", out, 5);
	assert_string_equal(out, "abcd");
}

static void
kind_names_are_the_stored_ones(void **state)
{
	(void)state;
	assert_string_equal(approval_kind_name(APPROVAL_TOKEN), "token");
	assert_string_equal(approval_kind_name(APPROVAL_DELEGATION), "delegation");
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(approval_ids_are_apr_and_base64url),
	    cmocka_unit_test(scope_set_ignores_order_and_duplicates),
	    cmocka_unit_test(scope_set_refuses_empty_invalid_and_too_many),
	    cmocka_unit_test(words_array_quotes_and_escapes_every_element),
	    cmocka_unit_test(refusal_names_the_binding_before_the_state),
	    cmocka_unit_test(task_human_or_agent_owner_may_decide),
	    cmocka_unit_test(owner_form_lowers_emails_only),
	    cmocka_unit_test(kind_names_are_the_stored_ones),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
