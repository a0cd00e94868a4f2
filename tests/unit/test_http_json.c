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

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(json_accepts_a_plain_object),
		cmocka_unit_test(json_rejects_duplicate_keys),
		cmocka_unit_test(json_rejects_nesting_past_the_limit),
		cmocka_unit_test(json_rejects_garbage_trailing_data_and_nul),
	};
	return cmocka_run_group_tests_name("http_json", tests, NULL, NULL);
}
