/*
 * Unit tests for scope patterns: validation, glob match, exact containment,
 * overlap and action classes.  The containment, overlap and class functions
 * are also cross-checked against a brute-force enumeration over a small
 * alphabet, with a naive recursive matcher written here independently.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "idpd/scope.h"

static void
validate_accepts_well_formed_scopes(void **state)
{
	static const char *const good[] = {
	    "ec2:DescribeInstances",
	    "ec2:Describe*",
	    "*:*",
	    "s3:ListBuckets",
	    "cloud-inventory:read",
	    "reports/q1:write",
	    "a:b",
	    "a.b_c-d/e:*x*",
	    "*a*:*b*", /* four stars is the limit */
	};

	(void)state;
	for (size_t i = 0; i < IDP_ARRAY_LEN(good); i++)
		assert_int_equal(scope_validate(good[i], NULL), IDP_OK);
}

static void
validate_rejects_bad_scopes_with_reason(void **state)
{
	static const struct {
		const char *scope;
		const char *msg;
	} bad[] = {
	    {"ec2", "scope \"ec2\": no ':' between resource and verb"},
	    {"a:b:c", "scope \"a:b:c\": more than one ':'"},
	    {":read", "scope \":read\": empty part"},
	    {"ec2:", "scope \"ec2:\": empty part"},
	    {"", "scope \"\": no ':' between resource and verb"},
	    {"ec2:Desc ribe", "scope \"ec2:Desc ribe\": character not allowed (letters, digits, "
	                      "\"._-/\" and '*')"},
	    {"ec2:r?", "scope \"ec2:r?\": character not allowed (letters, digits, \"._-/\" and "
	               "'*')"},
	    {"*a*:*b**", "scope \"*a*:*b**\": more than 4 '*'"},
	};
	struct idp_diag d;

	(void)state;
	for (size_t i = 0; i < IDP_ARRAY_LEN(bad); i++) {
		idp_diag_init(&d);
		assert_int_equal(scope_validate(bad[i].scope, &d), IDP_EINVAL);
		assert_string_equal(idp_diag_str(&d), bad[i].msg);
	}
	assert_int_equal(scope_validate(NULL, NULL), IDP_EINVAL);
}

static void
validate_rejects_overlong_scope(void **state)
{
	char s[IDP_SCOPE_MAX_LEN + 2];

	(void)state;
	memset(s, 'a', sizeof(s) - 1);
	s[sizeof(s) - 1] = '\0';
	s[10] = ':';
	assert_int_equal(scope_validate(s, NULL), IDP_EINVAL);
	s[IDP_SCOPE_MAX_LEN] = '\0';
	assert_int_equal(scope_validate(s, NULL), IDP_OK);
}

static void
glob_match_star_matches_any_run(void **state)
{
	(void)state;
	assert_true(scope_glob_match("Describe*", "Describe"));
	assert_true(scope_glob_match("Describe*", "DescribeInstances"));
	assert_false(scope_glob_match("Describe*", "Describ"));
	assert_true(scope_glob_match("*Instances", "DescribeInstances"));
	assert_true(scope_glob_match("a*b*c", "aXbYc"));
	assert_true(scope_glob_match("a*b*c", "abc"));
	assert_false(scope_glob_match("a*b*c", "acb"));
	assert_true(scope_glob_match("*", ""));
	assert_false(scope_glob_match("", "a"));
	assert_true(scope_glob_match("a**b", "ab"));
	/* A '*' in the text is an ordinary character for a literal pattern. */
	assert_false(scope_glob_match("ab", "a*"));
	assert_true(scope_glob_match("a*", "a*"));
}

static void
within_matches_the_documented_examples(void **state)
{
	(void)state;
	assert_true(scope_pattern_within("ec2:Describe*", "ec2:*"));
	assert_false(scope_pattern_within("ec2:Describe*", "ec2:DescribeInstances"));
	assert_true(scope_pattern_within("ec2:*", "*:*"));
	assert_false(scope_pattern_within("*:*", "ec2:*"));
	assert_true(scope_pattern_within("ec2:DescribeInstances", "ec2:Describe*"));
	assert_true(scope_pattern_within("ec2:DescribeInstances", "ec2:DescribeInstances"));
	assert_false(scope_pattern_within("ec2:DescribeInstances", "ec2:describeInstances"));
	assert_false(scope_pattern_within("s3:ListBuckets", "ec2:*"));
	assert_true(scope_pattern_within("ec2:Describe*", "ec2:Desc*"));
	assert_false(scope_pattern_within("ec2:Desc*", "ec2:Describe*"));
	assert_true(scope_pattern_within("ec2:*Instances", "ec2:*"));
	assert_false(scope_pattern_within("ec2:*Instances", "ec2:Describe*"));
	assert_true(scope_pattern_within("ec2:a*b*c", "ec2:a*c"));
	assert_false(scope_pattern_within("ec2:a*c", "ec2:a*b*c"));
	/* A star never crosses ':' */
	assert_false(scope_pattern_within("ec2x:read", "ec2:*"));
	assert_true(scope_pattern_within("ec2-east:read", "ec2*:read"));
}

static void
within_rejects_invalid_input(void **state)
{
	static const char *const caps[] = {"*:*"};

	(void)state;
	assert_false(scope_pattern_within("ec2", "*:*"));
	assert_false(scope_pattern_within("ec2:read", "nocolon"));
	assert_false(scope_within("bad scope:read", caps, 1));
	assert_false(scope_within("a:b:c", caps, 1));
}

static void
within_set_needs_one_covering_pattern(void **state)
{
	static const char *const caps[] = {"cloud-inventory:read", "ec2:Describe*",
	                                   "s3:ListBuckets", "bad pattern"};

	(void)state;
	assert_true(scope_within("ec2:DescribeInstances", caps, 4));
	assert_true(scope_within("ec2:Describe*", caps, 4));
	assert_true(scope_within("s3:ListBuckets", caps, 4));
	assert_false(scope_within("s3:List*", caps, 4));
	assert_false(scope_within("ec2:*", caps, 4));
	assert_false(scope_within("billing:write", caps, 4));
	assert_false(scope_within("ec2:DescribeInstances", caps, 0));
	assert_false(scope_within("bad pattern", caps, 4));
}

static void
within_never_claims_a_union_cover(void **state)
{
	/* "a*" is covered by the union of these only over a two-letter alphabet;
	 * with the real charset "ac" escapes both, and a single pattern must cover. */
	static const char *const caps[] = {"x:a", "x:a*a", "x:a*b"};

	(void)state;
	assert_false(scope_within("x:a*", caps, 3));
	assert_true(scope_within("x:ab", caps, 3));
}

static void
overlap_examples(void **state)
{
	(void)state;
	assert_true(scope_glob_overlap("Describe*", "*Instances"));
	assert_false(scope_glob_overlap("Describe*", "Delete*"));
	assert_true(scope_glob_overlap("De*", "Delete*"));
	assert_true(scope_glob_overlap("*", "anything"));
	assert_false(scope_glob_overlap("a*b", "b*a"));
	assert_true(scope_glob_overlap("a*", "*a"));
	assert_true(scope_glob_overlap("", "*"));
	assert_false(scope_glob_overlap("", "a"));
}

static void
action_class_names_round_trip(void **state)
{
	(void)state;
	for (int c = 0; c < IDP_ACTION_COUNT; c++)
		assert_int_equal(idp_action_class_parse(idp_action_class_name(c)), c);
	assert_int_equal(idp_action_class_parse("Read"), -1);
	assert_int_equal(idp_action_class_parse(""), -1);
}

static void
default_verb_map_classifies_verbs(void **state)
{
	const struct scope_verb_map *m = scope_verb_map_default();

	(void)state;
	assert_int_equal(scope_verb_class(m, "DescribeInstances"), IDP_ACTION_READ);
	assert_int_equal(scope_verb_class(m, "Describe*"), IDP_ACTION_READ);
	assert_int_equal(scope_verb_class(m, "ListBuckets"), IDP_ACTION_READ);
	assert_int_equal(scope_verb_class(m, "read"), IDP_ACTION_READ);
	assert_int_equal(scope_verb_class(m, "GetObject"), IDP_ACTION_READ);
	assert_int_equal(scope_verb_class(m, "write"), IDP_ACTION_WRITE);
	assert_int_equal(scope_verb_class(m, "Frobnicate"), IDP_ACTION_WRITE);
	assert_int_equal(scope_verb_class(m, "DeleteBucket"), IDP_ACTION_DELETE);
	assert_int_equal(scope_verb_class(m, "delete"), IDP_ACTION_DELETE);
	assert_int_equal(scope_verb_class(m, "admin"), IDP_ACTION_ADMIN);
	assert_int_equal(scope_verb_class(m, "GrantRole"), IDP_ACTION_ADMIN);
	assert_int_equal(scope_verb_class(m, "DropTable"), IDP_ACTION_DELETE);
	assert_int_equal(scope_verb_class(m, "TruncateTable"), IDP_ACTION_DELETE);
	/* Unknown is write, never read, even if it looks harmless. */
	assert_int_equal(scope_verb_class(m, "describeinstances"), IDP_ACTION_WRITE);
	assert_int_equal(scope_verb_class(m, "view"), IDP_ACTION_WRITE);
	assert_int_equal(scope_verb_class(m, "ViewInstances"), IDP_ACTION_WRITE);
}

/*
 * Classes ignore case: a resource server may read "terminateinstances" as
 * TerminateInstances (AWS IAM does), so another spelling must not lower
 * the class and slip past read-only delegation or an approval class.
 */
static void
verb_classes_ignore_case(void **state)
{
	const struct scope_verb_map *m = scope_verb_map_default();
	struct scope_verb_map *c = scope_verb_map_new();
	struct idp_diag d;

	(void)state;
	assert_int_equal(scope_verb_class(m, "terminateinstances"), IDP_ACTION_DELETE);
	assert_int_equal(scope_verb_class(m, "TERMINATEINSTANCES"), IDP_ACTION_DELETE);
	assert_int_equal(scope_verb_class(m, "deleteBucket"), IDP_ACTION_DELETE);
	assert_int_equal(scope_verb_class(m, "DELETE"), IDP_ACTION_DELETE);
	assert_int_equal(scope_verb_class(m, "grantrole"), IDP_ACTION_ADMIN);
	assert_int_equal(scope_verb_class(m, "ADMIN"), IDP_ACTION_ADMIN);
	assert_int_equal(scope_verb_class(m, "de*"), IDP_ACTION_DELETE);
	assert_int_equal(scope_action_class(m, "ec2:terminate*"), IDP_ACTION_DELETE);
	/* Only ever upward: what another case would make read stays write
	 * ("Read*" covers ReadBucket, not readwrite). */
	assert_int_equal(scope_verb_class(m, "describeinstances"), IDP_ACTION_WRITE);
	assert_int_equal(scope_verb_class(m, "DESCRIBEINSTANCES"), IDP_ACTION_WRITE);
	assert_int_equal(scope_verb_class(m, "readwrite"), IDP_ACTION_WRITE);
	assert_int_equal(scope_verb_class(m, "read_write"), IDP_ACTION_WRITE);
	assert_int_equal(scope_verb_class(m, "getorcreate"), IDP_ACTION_WRITE);
	assert_int_equal(scope_verb_class(m, "listen"), IDP_ACTION_WRITE);
	assert_int_equal(scope_verb_class(m, "READ"), IDP_ACTION_WRITE);
	assert_int_equal(scope_verb_class(m, "ReadBucket"), IDP_ACTION_READ);
	/* A compound verb takes the class of every word an entry names:
	 * spelling it like a read does not make a write one. */
	assert_int_equal(scope_verb_class(m, "ReadWrite"), IDP_ACTION_WRITE);
	assert_int_equal(scope_verb_class(m, "Read_Write"), IDP_ACTION_WRITE);
	assert_int_equal(scope_verb_class(m, "GetOrCreateUser"), IDP_ACTION_WRITE);
	assert_int_equal(scope_verb_class(m, "ListAndDeleteObjects"), IDP_ACTION_DELETE);
	assert_int_equal(scope_verb_class(m, "DescribeThenTerminateIt*"), IDP_ACTION_DELETE);
	assert_int_equal(scope_verb_class(m, "GetXMLWrite"), IDP_ACTION_WRITE);
	assert_int_equal(scope_verb_class(m, "GetV2write"), IDP_ACTION_WRITE);
	assert_int_equal(scope_verb_class(m, "ReadWrite2"), IDP_ACTION_WRITE);
	assert_int_equal(scope_verb_class(m, "DescribeEc2Instances"), IDP_ACTION_READ);
	/* A '*' inside a verb may stand for any words: the highest class. A
	 * trailing one ends the last word, which still counts. */
	assert_int_equal(scope_verb_class(m, "Describe*Terminate*"), IDP_ACTION_ADMIN);
	assert_int_equal(scope_verb_class(m, "Get*CreateUser"), IDP_ACTION_ADMIN);
	assert_int_equal(scope_verb_class(m, "Describe*erminate"), IDP_ACTION_ADMIN);
	assert_int_equal(scope_verb_class(m, "GetOrCreate*"), IDP_ACTION_WRITE);
	assert_int_equal(scope_verb_class(m, "Describe*"), IDP_ACTION_READ);
	/* A run of capitals that begins with a word: the humps miss it. */
	assert_int_equal(scope_verb_class(m, "GetDELETEitem"), IDP_ACTION_DELETE);
	assert_int_equal(scope_verb_class(m, "ReadWRITEs"), IDP_ACTION_WRITE);
	assert_int_equal(scope_verb_class(m, "DescribeDBInstances"), IDP_ACTION_READ);
	/* Odd capitals split a word into several, and a run of capitals hides
	 * words: a case-blind server reads them all the same. */
	{
		static const char *const raised[] = {
		    "GetObjectANDDELETE", "GetXMLDELETE", "GetIAMDELETE", "GetREADWRITE",
		    "ReadANDWRITE",       "GetXDELETE",   "GetDeLeTe",    "GetDeletE",
		    "ReadWrItE",          "GetAdMin",     "GetGrAnt",     "GetTerminaTE"};
		static const char *const reads[] = {"DescribeComputeEnvironments",
		                                    "GetDNSSEC",
		                                    "ListMFADevices",
		                                    "GetSAMLProvider",
		                                    "DescribeDBProxyTargets",
		                                    "GetIPSet",
		                                    "GetSSHPublicKey",
		                                    "ListAPIs",
		                                    "DescribeDRTAccess",
		                                    "GetOutput"};

		for (size_t i = 0; i < IDP_ARRAY_LEN(raised); i++)
			if (scope_verb_class(m, raised[i]) <= IDP_ACTION_READ)
				fail_msg("%s should be above read", raised[i]);
		for (size_t i = 0; i < IDP_ARRAY_LEN(reads); i++)
			if (scope_verb_class(m, reads[i]) != IDP_ACTION_READ)
				fail_msg("%s should be read", reads[i]);
	}
	/* Words no entry names, or names only as a part, change nothing. */
	assert_int_equal(scope_verb_class(m, "GetSettings"), IDP_ACTION_READ);
	assert_int_equal(scope_verb_class(m, "GetOutput"), IDP_ACTION_READ);
	assert_int_equal(scope_verb_class(m, "ListGrants"), IDP_ACTION_READ);
	assert_int_equal(scope_verb_class(m, "GetUpdatedRecords"), IDP_ACTION_READ);
	assert_int_equal(scope_verb_class(m, "DescribeInstances"), IDP_ACTION_READ);
	/* Whole-word classing raises some real reads; a deployment that
	 * names such a verb exactly has the last word on it. */
	assert_int_equal(scope_verb_class(m, "DescribeUpdateActions"), IDP_ACTION_WRITE);
	assert_int_equal(scope_verb_class(m, "ListOrganizationAdminAccounts"), IDP_ACTION_ADMIN);
	idp_diag_init(&d);
	assert_int_equal(scope_verb_map_add(c, "DescribeUpdateActions", IDP_ACTION_READ, &d),
	                 IDP_OK);
	assert_int_equal(scope_verb_class(c, "DescribeUpdateActions"), IDP_ACTION_READ);
	assert_int_equal(scope_verb_class(c, "DescribeUpdateActionsX"), IDP_ACTION_WRITE);
	/* A deployment's suffix or inner pattern is its word on what a verb
	 * does; stems with a digit or two words still count as words. */
	assert_int_equal(scope_verb_map_add(c, "*/read", IDP_ACTION_READ, &d), IDP_OK);
	assert_int_equal(scope_verb_map_add(c, "compute.*.get", IDP_ACTION_READ, &d), IDP_OK);
	assert_int_equal(scope_verb_map_add(c, "Get*", IDP_ACTION_READ, &d), IDP_OK);
	assert_int_equal(scope_verb_map_add(c, "Nuke2*", IDP_ACTION_DELETE, &d), IDP_OK);
	assert_int_equal(scope_verb_map_add(c, "ForceStop*", IDP_ACTION_ADMIN, &d), IDP_OK);
	assert_int_equal(scope_verb_map_add(c, "Kill_*", IDP_ACTION_DELETE, &d), IDP_OK);
	assert_int_equal(scope_verb_class(c, "Microsoft.Authorization/*/read"), IDP_ACTION_READ);
	assert_int_equal(scope_verb_class(c, "compute.*.get"), IDP_ACTION_READ);
	assert_int_equal(scope_verb_class(c, "compute.instances.get"), IDP_ACTION_READ);
	assert_int_equal(scope_verb_class(c, "GetNuke2"), IDP_ACTION_DELETE);
	assert_int_equal(scope_verb_class(c, "GetForceStop"), IDP_ACTION_ADMIN);
	assert_int_equal(scope_verb_class(c, "Get_Kill_now"), IDP_ACTION_DELETE);
	/* An entry a deployment adds is matched the same way. */
	idp_diag_init(&d);
	assert_int_equal(scope_verb_map_add(c, "Reboot*", IDP_ACTION_ADMIN, &d), IDP_OK);
	assert_int_equal(scope_verb_class(c, "rebootinstances"), IDP_ACTION_ADMIN);
	assert_int_equal(scope_verb_class(c, "REBOOTINSTANCES"), IDP_ACTION_ADMIN);
	scope_verb_map_free(c);
}

static void
wildcard_verb_takes_highest_class_it_could_match(void **state)
{
	const struct scope_verb_map *m = scope_verb_map_default();

	(void)state;
	assert_int_equal(scope_verb_class(m, "*"), IDP_ACTION_ADMIN);
	/* "De*" could be DeleteBucket (delete) or DescribeX (read). */
	assert_int_equal(scope_verb_class(m, "De*"), IDP_ACTION_DELETE);
	/* "Li*" could be ListX (read) or an unknown verb such as "Lint". */
	assert_int_equal(scope_verb_class(m, "Li*"), IDP_ACTION_WRITE);
	assert_int_equal(scope_verb_class(m, "Get*"), IDP_ACTION_READ);
	assert_int_equal(scope_verb_class(m, "*Bucket"), IDP_ACTION_ADMIN);
	assert_int_equal(scope_action_class(m, "ec2:*"), IDP_ACTION_ADMIN);
	assert_int_equal(scope_action_class(m, "ec2:Describe*"), IDP_ACTION_READ);
	assert_int_equal(scope_action_class(m, "not a scope"), IDP_ACTION_ADMIN);
}

#define BIT(c) (1u << (c))

/* Every class a pattern could do, not only its highest. */
static void
wildcard_verb_has_every_class_it_could_match(void **state)
{
	const struct scope_verb_map *m = scope_verb_map_default();

	(void)state;
	assert_int_equal(scope_action_classes(m, "cloud:*"), IDP_ACTION_MASK_ALL);
	assert_int_equal(scope_action_classes(m, "cloud:Put*"), BIT(IDP_ACTION_WRITE));
	assert_int_equal(scope_action_classes(m, "cloud:PutObject"), BIT(IDP_ACTION_WRITE));
	assert_int_equal(scope_action_classes(m, "cloud:Describe*"), BIT(IDP_ACTION_READ));
	assert_int_equal(scope_action_classes(m, "cloud:DeleteBucket"), BIT(IDP_ACTION_DELETE));
	/* DescribeX, DeleteX, or a verb no entry names. */
	assert_int_equal(scope_verb_classes(m, "De*"),
	                 BIT(IDP_ACTION_READ) | BIT(IDP_ACTION_WRITE) | BIT(IDP_ACTION_DELETE));
	/* A '*' inside may stand for words of any class. */
	assert_int_equal(scope_verb_classes(m, "Get*Object"), IDP_ACTION_MASK_ALL);
	assert_int_equal(scope_action_classes(m, "not a scope"), IDP_ACTION_MASK_ALL);
}

/* The highest class in a mask, to compare scope_verb_classes with scope_verb_class. */
static int
top_of(unsigned mask)
{
	int top = -1;

	for (int c = 0; c < IDP_ACTION_COUNT; c++)
		if (mask & (1u << c))
			top = c;
	return top;
}

/*
 * A trailing '*' can finish a word: a fragment of a destructive word before
 * it takes that word's class, and a '*' after a separator may be any words.
 */
static void
trailing_star_takes_the_class_of_the_word_it_could_finish(void **state)
{
	const struct scope_verb_map *m = scope_verb_map_default();
	static const struct {
		const char *verb;
		enum idp_action_class cls;
	} cases[] = {
	    {"ListAndDel*", IDP_ACTION_DELETE},
	    {"GetOrCre*", IDP_ACTION_WRITE},
	    {"DescribeAndTerm*", IDP_ACTION_DELETE},
	    {"ReadWr*", IDP_ACTION_WRITE},
	    {"GetAdm*", IDP_ACTION_ADMIN},
	    {"GetDE*", IDP_ACTION_DELETE},
	    {"GETADM*", IDP_ACTION_ADMIN},
	    {"Get_*", IDP_ACTION_ADMIN},
	    {"Get.*", IDP_ACTION_ADMIN},
	    {"Get-*", IDP_ACTION_ADMIN},
	    {"instances.*", IDP_ACTION_ADMIN},
	    {"GetOrCreate*", IDP_ACTION_WRITE},
	    /* A star right after a whole word keeps the word's class. */
	    {"Describe*", IDP_ACTION_READ},
	    {"Get*", IDP_ACTION_READ},
	    {"List*", IDP_ACTION_READ},
	    {"Read*", IDP_ACTION_READ},
	    {"GetObject*", IDP_ACTION_READ},
	    {"DescribeVPC*", IDP_ACTION_READ},
	    {"Delete*", IDP_ACTION_DELETE},
	};
	static const char *const stems[] = {"Put",    "Create",   "Update",    "Modify",  "Write",
	                                    "Delete", "Remove",   "Terminate", "Destroy", "Purge",
	                                    "Drop",   "Truncate", "Admin",     "Grant",   "Revoke"};
	static const char *const leads[] = {"Get", "ListAnd", "Describe", "Read", "Get_", "x."};
	char verb[IDP_SCOPE_MAX_LEN + 1];

	(void)state;
	for (size_t i = 0; i < IDP_ARRAY_LEN(cases); i++) {
		if (scope_verb_class(m, cases[i].verb) != cases[i].cls)
			fail_msg("class(%s) is %d, should be %d", cases[i].verb,
			         scope_verb_class(m, cases[i].verb), cases[i].cls);
		if (top_of(scope_verb_classes(m, cases[i].verb)) != (int)cases[i].cls)
			fail_msg("classes(%s) top is %d, should be %d", cases[i].verb,
			         top_of(scope_verb_classes(m, cases[i].verb)), cases[i].cls);
	}
	assert_int_equal(scope_verb_classes(m, "Get_*"), IDP_ACTION_MASK_ALL);
	assert_int_equal(scope_action_classes(m, "compute:instances.*"), IDP_ACTION_MASK_ALL);
	/* Every proper prefix of every word above read, after any lead. */
	for (size_t s = 0; s < IDP_ARRAY_LEN(stems); s++) {
		size_t len = strlen(stems[s]);
		enum idp_action_class want = scope_verb_class(m, stems[s]);

		for (size_t l = 0; l < IDP_ARRAY_LEN(leads); l++) {
			for (size_t k = 1; k < len; k++) {
				snprintf(verb, sizeof(verb), "%s%.*s*", leads[l], (int)k, stems[s]);
				if (scope_verb_class(m, verb) < want)
					fail_msg("class(%s) is %d, below %s's %d", verb,
					         scope_verb_class(m, verb), stems[s], want);
				if ((scope_verb_classes(m, verb) & (1u << want)) == 0)
					fail_msg("classes(%s) lack %s's class %d", verb, stems[s],
					         want);
				if (top_of(scope_verb_classes(m, verb)) !=
				    (int)scope_verb_class(m, verb))
					fail_msg("classes(%s) and class(%s) disagree", verb, verb);
			}
		}
	}
}

static void
custom_verb_map_replaces_defaults(void **state)
{
	struct scope_verb_map *m = scope_verb_map_new();
	struct idp_diag d;

	(void)state;
	idp_diag_init(&d);
	assert_int_equal(scope_verb_map_add(m, "view", IDP_ACTION_READ, &d), IDP_OK);
	assert_int_equal(scope_verb_map_add(m, "nuke*", IDP_ACTION_ADMIN, &d), IDP_OK);
	assert_int_equal(scope_verb_map_add(m, "bad verb", IDP_ACTION_READ, &d), IDP_EINVAL);
	assert_string_equal(idp_diag_str(&d), "verb \"bad verb\": not a valid verb pattern");
	assert_int_equal(scope_verb_class(m, "view"), IDP_ACTION_READ);
	assert_int_equal(scope_verb_class(m, "DescribeInstances"), IDP_ACTION_WRITE);
	assert_int_equal(scope_verb_class(m, "nukeAll"), IDP_ACTION_ADMIN);
	assert_int_equal(scope_verb_class(m, "v*"), IDP_ACTION_WRITE);
	scope_verb_map_free(m);
	scope_verb_map_free(NULL);
}

/* ---- brute force -------------------------------------------------------- */

/* Naive recursive glob matcher, independent of the one under test. */
static int
naive_match(const char *p, const char *t)
{
	if (*p == '\0')
		return *t == '\0';
	if (*p == '*')
		return naive_match(p + 1, t) || (*t != '\0' && naive_match(p, t + 1));
	return *t != '\0' && *p == *t && naive_match(p + 1, t + 1);
}

#define MAX_WORDS 4096

/* Every string over alphabet of length lo..hi, stored in words[][8]. */
static size_t
enumerate(const char *alphabet, size_t lo, size_t hi, char words[][8])
{
	size_t k = strlen(alphabet), n = 0;

	for (size_t len = lo; len <= hi; len++) {
		size_t total = 1;

		for (size_t i = 0; i < len; i++)
			total *= k;
		for (size_t v = 0; v < total; v++) {
			size_t x = v;

			assert_true(n < MAX_WORDS);
			for (size_t i = 0; i < len; i++) {
				words[n][i] = alphabet[x % k];
				x /= k;
			}
			words[n][len] = '\0';
			n++;
		}
	}
	return n;
}

static char (*patterns)[8];
static size_t n_patterns;
static char (*texts)[8];
static size_t n_texts;

static int
brute_setup(void **state)
{
	(void)state;
	patterns = calloc(MAX_WORDS, 8);
	texts = calloc(MAX_WORDS, 8);
	/* Patterns up to 4 symbols over {a, b, *}; texts up to 5 over {a, b, c},
	 * where 'c' never occurs in a pattern: long enough to hold the
	 * counterexample any non-containment has (see scope.c). */
	n_patterns = enumerate("ab*", 1, 4, patterns);
	n_texts = enumerate("abc", 0, 5, texts);
	return 0;
}

static int
brute_teardown(void **state)
{
	(void)state;
	free(patterns);
	free(texts);
	return 0;
}

static void
within_agrees_with_brute_force(void **state)
{
	char q[16], p[16];
	size_t checked = 0, within = 0;

	(void)state;
	for (size_t i = 0; i < n_patterns; i++) {
		for (size_t j = 0; j < n_patterns; j++) {
			int expect = 1;

			for (size_t t = 0; t < n_texts && expect; t++) {
				if (naive_match(patterns[i], texts[t]) &&
				    !naive_match(patterns[j], texts[t]))
					expect = 0;
			}
			/* Exercise both parts of a scope. */
			snprintf(q, sizeof(q), "r:%s", patterns[i]);
			snprintf(p, sizeof(p), "r:%s", patterns[j]);
			if (scope_pattern_within(q, p) != expect)
				fail_msg("within(%s, %s) should be %d", q, p, expect);
			snprintf(q, sizeof(q), "%s:v", patterns[i]);
			snprintf(p, sizeof(p), "%s:v", patterns[j]);
			if (scope_pattern_within(q, p) != expect)
				fail_msg("within(%s, %s) should be %d", q, p, expect);
			checked++;
			within += (size_t)expect;
		}
	}
	/* The enumeration must have seen both answers many times. */
	assert_true(checked == n_patterns * n_patterns);
	assert_true(within > 1000);
	assert_true(checked - within > 1000);
}

static void
overlap_agrees_with_brute_force(void **state)
{
	char(*witness)[8] = calloc(MAX_WORDS, 8);
	size_t n_witness = enumerate("ab", 0, 7, witness);
	size_t yes = 0;

	(void)state;
	for (size_t i = 0; i < n_patterns; i++) {
		for (size_t j = 0; j < n_patterns; j++) {
			int expect = 0;

			for (size_t t = 0; t < n_witness && !expect; t++) {
				if (naive_match(patterns[i], witness[t]) &&
				    naive_match(patterns[j], witness[t]))
					expect = 1;
			}
			if (scope_glob_overlap(patterns[i], patterns[j]) != expect)
				fail_msg("overlap(%s, %s) should be %d", patterns[i], patterns[j],
				         expect);
			yes += (size_t)expect;
		}
	}
	assert_true(yes > 1000 && yes < n_patterns * n_patterns);
	free(witness);
}

/* The brute-force class of a concrete verb under the map below. */
static int
brute_concrete_class(const char *verb)
{
	static const struct {
		const char *p;
		int c;
	} map[] = {{"a*", IDP_ACTION_READ}, {"ab", IDP_ACTION_DELETE}, {"b*a", IDP_ACTION_ADMIN}};
	int best = -1;

	for (size_t i = 0; i < IDP_ARRAY_LEN(map); i++) {
		if (naive_match(map[i].p, verb) && map[i].c > best)
			best = map[i].c;
	}
	return best < 0 ? IDP_ACTION_WRITE : best;
}

static void
verb_class_agrees_with_brute_force(void **state)
{
	struct scope_verb_map *m = scope_verb_map_new();
	int seen[IDP_ACTION_COUNT] = {0};

	(void)state;
	assert_int_equal(scope_verb_map_add(m, "a*", IDP_ACTION_READ, NULL), IDP_OK);
	assert_int_equal(scope_verb_map_add(m, "ab", IDP_ACTION_DELETE, NULL), IDP_OK);
	assert_int_equal(scope_verb_map_add(m, "b*a", IDP_ACTION_ADMIN, NULL), IDP_OK);
	for (size_t i = 0; i < n_patterns; i++) {
		int expect = -1;

		for (size_t t = 0; t < n_texts; t++) {
			int c;

			if (texts[t][0] == '\0' || !naive_match(patterns[i], texts[t]))
				continue;
			c = brute_concrete_class(texts[t]);
			if (c > expect)
				expect = c;
		}
		/* A '*' inside a verb may stand for whole words of any class
		 * (docs/policy-language.md): never below what brute force finds
		 * here, where no text has words; exact for every other verb. */
		if (strchr(patterns[i], '*') != NULL && strchr(patterns[i], '*')[1] != '\0') {
			if ((int)scope_verb_class(m, patterns[i]) < expect)
				fail_msg("class(%s) should be at least %d", patterns[i], expect);
		} else if ((int)scope_verb_class(m, patterns[i]) != expect) {
			fail_msg("class(%s) should be %d", patterns[i], expect);
		}
		/* The set of classes holds the class of every verb it matches. */
		for (size_t t = 0; t < n_texts; t++) {
			if (texts[t][0] == '\0' || !naive_match(patterns[i], texts[t]))
				continue;
			if ((scope_verb_classes(m, patterns[i]) &
			     (1u << brute_concrete_class(texts[t]))) == 0)
				fail_msg("classes(%s) should hold %d, the class of %s", patterns[i],
				         brute_concrete_class(texts[t]), texts[t]);
		}
		seen[expect]++;
	}
	/* Each class comes up. */
	assert_true(seen[IDP_ACTION_READ] > 0 && seen[IDP_ACTION_WRITE] > 0 &&
	            seen[IDP_ACTION_DELETE] > 0 && seen[IDP_ACTION_ADMIN] > 0);
	scope_verb_map_free(m);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(validate_accepts_well_formed_scopes),
	    cmocka_unit_test(validate_rejects_bad_scopes_with_reason),
	    cmocka_unit_test(validate_rejects_overlong_scope),
	    cmocka_unit_test(glob_match_star_matches_any_run),
	    cmocka_unit_test(within_matches_the_documented_examples),
	    cmocka_unit_test(within_rejects_invalid_input),
	    cmocka_unit_test(within_set_needs_one_covering_pattern),
	    cmocka_unit_test(within_never_claims_a_union_cover),
	    cmocka_unit_test(overlap_examples),
	    cmocka_unit_test(action_class_names_round_trip),
	    cmocka_unit_test(default_verb_map_classifies_verbs),
	    cmocka_unit_test(verb_classes_ignore_case),
	    cmocka_unit_test(wildcard_verb_takes_highest_class_it_could_match),
	    cmocka_unit_test(wildcard_verb_has_every_class_it_could_match),
	    cmocka_unit_test(trailing_star_takes_the_class_of_the_word_it_could_finish),
	    cmocka_unit_test(custom_verb_map_replaces_defaults),
	    cmocka_unit_test_setup_teardown(within_agrees_with_brute_force, brute_setup,
	                                    brute_teardown),
	    cmocka_unit_test_setup_teardown(overlap_agrees_with_brute_force, brute_setup,
	                                    brute_teardown),
	    cmocka_unit_test_setup_teardown(verb_class_agrees_with_brute_force, brute_setup,
	                                    brute_teardown),
	};
	return cmocka_run_group_tests_name("scope", tests, NULL, NULL);
}
