/*
 * Unit tests for JSON intake limits: depth, duplicates, trailing data, NULs.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "idpd/http.h"

static json_t *
parse(const char *s, int depth, char *err)
{
	return http_json_parse(s, strlen(s), depth, err, 256);
}

static void
json_accepts_a_plain_object(void **state)
{
	char err[256];
	json_t *j = parse("{\"a\": [1, {\"b\": \"c\"}], \"d\": null}", 8, err);

	(void)state;
	assert_non_null(j);
	assert_string_equal(json_string_value(json_object_get(
				    json_array_get(json_object_get(j, "a"), 1), "b")),
			    "c");
	json_decref(j);
}

static void
json_rejects_duplicate_keys(void **state)
{
	char err[256];

	(void)state;
	assert_null(parse("{\"scope\": \"a:read\", \"scope\": \"*:*\"}", 8, err));
	assert_non_null(strstr(err, "duplicate"));
	assert_non_null(strstr(err, "line 1"));
}

static void
json_rejects_nesting_past_the_limit(void **state)
{
	char err[256], deep[200];
	json_t *j;

	(void)state;
	memset(deep, 0, sizeof(deep));
	for (int i = 0; i < 5; i++)
		strcat(deep, "[");
	for (int i = 0; i < 5; i++)
		strcat(deep, "]");
	j = parse(deep, 5, err);
	assert_non_null(j);
	json_decref(j);
	assert_null(parse(deep, 4, err));
	assert_string_equal(err, "nesting deeper than 4 levels");
	/* Brackets inside strings do not count; escaped quotes do not end them. */
	j = parse("{\"a\": \"[[[[[[\\\"{{{{{{\"}", 2, err);
	assert_non_null(j);
	json_decref(j);
}

static void
json_rejects_garbage_trailing_data_and_nul(void **state)
{
	char err[256];

	(void)state;
	assert_null(parse("{\"a\":1} x", 8, err));
	assert_null(parse("{\"a\":", 8, err));
	assert_null(parse("", 8, err));
	assert_null(http_json_parse("{\"a\":1}\0", 8, 8, err, sizeof(err)));
	assert_string_equal(err, "NUL byte in body");
	assert_null(parse("{\"a\": \"\xff\"}", 8, err));
}

json_t *json_parse_flat(const char *s, size_t len);

/*
 * The flat-object fast path gives what json_loadb gives, or nothing (and
 * then json_loadb decides, with its own errors).
 */
static void
flat_objects_parse_as_jansson_parses_them(void **state)
{
	static const char *const same[] = {
	    "{}",
	    " { } ",
	    ("{\"audience\":\"https://aws.example.com\",\"scope\":\"cloud:Describe*\","
	     "\"ttl\":300,\"n\":-17,\"z\":0,\"t\":true,\"f\":false,\"x\":null}"),
	    "\r\n{ \"caf\xc3\xa9\" :\t\"\xe2\x82\xac\" ,\"big\":999999999999999999 }\n",
	};
	static const char *const left[] = {
	    "{\"a\":\"b\\n\"}",        /* an escape */
	    "{\"a\":{\"b\":1}}",         /* nesting */
	    "{\"a\":[1]}",
	    "{\"a\":1.5}",               /* a real */
	    "{\"a\":1e3}",
	    "{\"a\":01}",                /* jansson's error */
	    "{\"a\":-0}",
	    "{\"a\":1234567890123456789}", /* 19 digits */
	    "{\"a\":1,\"a\":2}",         /* a duplicate */
	    "{\"a\":\"\xff\"}",         /* bad UTF-8 */
	    "{\"\xc3\":1}",
	    "{\"a\":1} x",               /* trailing data */
	    "{\"a\":1,}",
	    "{\"a\" 1}",
	    "{\"a\":truex}",
	    "{\"a\":\"tab\there\"}",    /* a raw control character */
	    "[1]",
	    "\"s\"",
	    "{\"a\":1",
	};
	json_error_t je;

	(void)state;
	for (size_t i = 0; i < sizeof(same) / sizeof(same[0]); i++) {
		json_t *fast = json_parse_flat(same[i], strlen(same[i]));
		json_t *ref = json_loadb(same[i], strlen(same[i]), JSON_REJECT_DUPLICATES, &je);

		assert_non_null(fast);
		assert_non_null(ref);
		assert_true(json_equal(fast, ref));
		json_decref(fast);
		json_decref(ref);
	}
	for (size_t i = 0; i < sizeof(left) / sizeof(left[0]); i++) {
		json_t *fast = json_parse_flat(left[i], strlen(left[i]));

		if (fast != NULL)
			fail_msg("the fast path took %s", left[i]);
	}
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(json_accepts_a_plain_object),
		cmocka_unit_test(flat_objects_parse_as_jansson_parses_them),
		cmocka_unit_test(json_rejects_duplicate_keys),
		cmocka_unit_test(json_rejects_nesting_past_the_limit),
		cmocka_unit_test(json_rejects_garbage_trailing_data_and_nul),
	};
	return cmocka_run_group_tests_name("http_json", tests, NULL, NULL);
}
