/*
 * Unit tests for src/util/json_out.c: the writer's output is what jansson's
 * json_dumps writes for the same value, escapes included, and bad UTF-8 is
 * refused.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "idpd/json_out.h"

static void
assert_same_as_jansson(const json_t *v, bool sorted)
{
	char *want = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY | (sorted ? JSON_SORT_KEYS : 0));
	struct idp_buf b;

	assert_non_null(want);
	idp_buf_init(&b, 0);
	assert_int_equal(idp_json_put_value(&b, v, sorted), IDP_OK);
	if (strcmp(idp_buf_str(&b), want) != 0)
		fail_msg("want %s\n got  %s", want, idp_buf_str(&b));
	free(want);
	idp_buf_cleanup(&b);
}

static void
json_out_escapes_strings_as_jansson_does(void **state)
{
	char all[128];
	json_t *v;

	(void)state;
	/* Every ASCII byte but NUL, then some multi-byte characters. */
	for (int i = 1; i < 128; i++)
		all[i - 1] = (char)i;
	all[127] = '\0';
	v = json_string(all);
	assert_same_as_jansson(v, false);
	json_decref(v);
	v = json_string("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 / \\ \"q\"");
	assert_same_as_jansson(v, false);
	json_decref(v);
}

static void
json_out_writes_values_as_jansson_does(void **state)
{
	static const char *const docs[] = {
	    "{}",
	    "[]",
	    ("{\"b\":1,\"a\":[true,false,null,-9223372036854775808,9223372036854775807],"
	     "\"c\":{\"z\":\"\\u0001\\t\",\"y\":[{},[]]}}"),
	    "[0.1,1e300,-2.5e-7,100.0,1e20,3.0,1.7976931348623157e308,5e-324]",
	    "{\"sub\":\"alice\",\"act\":{\"sub\":\"planner\",\"act\":{\"sub\":\"helper\"}}}",
	};
	(void)state;
	for (size_t i = 0; i < sizeof(docs) / sizeof(docs[0]); i++) {
		json_t *v = json_loads(docs[i], JSON_DECODE_ANY, NULL);

		assert_non_null(v);
		assert_same_as_jansson(v, false);
		assert_same_as_jansson(v, true);
		json_decref(v);
	}
}

static void
json_out_matches_jansson_on_random_objects(void **state)
{
	static const char alphabet[] = "abAB09 \"\\\n\t\x01\x1f/\x7f";
	unsigned seed = 12345;

	(void)state;
	for (int round = 0; round < 300; round++) {
		json_t *o = json_object();
		int n = (int)(rand_r(&seed) % 12);

		for (int i = 0; i < n; i++) {
			char key[8], val[16];
			int kl = 1 + (int)(rand_r(&seed) % 6), vl = (int)(rand_r(&seed) % 15);

			for (int k = 0; k < kl; k++)
				key[k] = alphabet[rand_r(&seed) % (sizeof(alphabet) - 1)];
			key[kl] = '\0';
			for (int k = 0; k < vl; k++)
				val[k] = alphabet[rand_r(&seed) % (sizeof(alphabet) - 1)];
			val[vl] = '\0';
			switch (rand_r(&seed) % 4) {
			case 0:
				json_object_set_new(o, key, json_string(val));
				break;
			case 1:
				json_object_set_new(
				    o, key, json_integer((json_int_t)rand_r(&seed) - RAND_MAX / 2));
				break;
			case 2:
				json_object_set_new(o, key, json_real((double)rand_r(&seed) / 7.0));
				break;
			default:
				json_object_set_new(o, key, json_pack("[s,{s:b}]", val, key, 1));
				break;
			}
		}
		assert_same_as_jansson(o, true);
		assert_same_as_jansson(o, false);
		json_decref(o);
	}
}

static void
json_out_refuses_invalid_utf8(void **state)
{
	static const char *const bad[] = {"\xc3", "\xc0\xaf", "\xed\xa0\x80", "\xf4\x90\x80\x80",
	                                  "a\xff"};
	struct idp_buf b;

	(void)state;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		idp_buf_init(&b, 0);
		assert_int_equal(idp_json_put_str(&b, bad[i]), IDP_EINVAL);
		idp_buf_cleanup(&b);
	}
}

/* Plain runs are skipped 8 bytes at a time: a byte that needs care is seen
 * wherever it falls in or across a word. */
static void
json_out_sees_special_bytes_at_every_offset(void **state)
{
	static const char *const specials[] = {
	    "\x01", "\x1f", "\"", "\\", "\x7f", "\xc3\xa9", "\xe2\x82\xac", "\xf0\x9f\x98\x80"};
	static const char *const bad[] = {"\xc3", "\xff", "\xed\xa0\x80"};
	char text[64];

	(void)state;
	for (size_t k = 0; k < sizeof(specials) / sizeof(specials[0]); k++) {
		for (size_t off = 0; off < 24; off++) {
			json_t *v;

			memset(text, 'a', 24);
			memcpy(text + off, specials[k], strlen(specials[k]));
			text[24 + strlen(specials[k])] = '\0';
			memset(text + off + strlen(specials[k]), 'b', 24 - off);
			v = json_string(text);
			assert_non_null(v);
			assert_same_as_jansson(v, false);
			json_decref(v);
		}
	}
	for (size_t k = 0; k < sizeof(bad) / sizeof(bad[0]); k++) {
		for (size_t off = 0; off < 24; off++) {
			struct idp_buf b;

			memset(text, 'a', 32);
			memcpy(text + off, bad[k], strlen(bad[k]));
			text[32] = '\0';
			idp_buf_init(&b, 0);
			assert_int_equal(idp_json_put_str(&b, text), IDP_EINVAL);
			idp_buf_cleanup(&b);
		}
	}
}

static void
json_out_writes_integers_as_printf_does(void **state)
{
	static const int64_t v[] = {0, 7, -1, 10, -10, 1234567890123, INT64_MAX, INT64_MIN};

	(void)state;
	for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
		struct idp_buf b;
		char want[32];

		snprintf(want, sizeof(want), "%lld", (long long)v[i]);
		idp_buf_init(&b, 0);
		assert_int_equal(idp_json_put_int(&b, v[i]), IDP_OK);
		assert_string_equal(idp_buf_str(&b), want);
		idp_buf_cleanup(&b);
	}
}

static void
json_out_keys_and_ints_compose_an_object(void **state)
{
	struct idp_buf b;

	(void)state;
	idp_buf_init(&b, 0);
	assert_int_equal(idp_buf_putc(&b, '{'), IDP_OK);
	assert_int_equal(idp_json_put_key(&b, "exp", true), IDP_OK);
	assert_int_equal(idp_json_put_int(&b, -42), IDP_OK);
	assert_int_equal(idp_json_put_key(&b, "s\"", false), IDP_OK);
	assert_int_equal(idp_json_put_str(&b, "x"), IDP_OK);
	assert_int_equal(idp_buf_putc(&b, '}'), IDP_OK);
	assert_string_equal(idp_buf_str(&b), "{\"exp\":-42,\"s\\\"\":\"x\"}");
	idp_buf_cleanup(&b);
	/* The buffer's cap holds. */
	idp_buf_init(&b, 4);
	assert_int_equal(idp_json_put_str(&b, "abcdef"), IDP_ETOOBIG);
	idp_buf_cleanup(&b);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(json_out_escapes_strings_as_jansson_does),
	    cmocka_unit_test(json_out_writes_values_as_jansson_does),
	    cmocka_unit_test(json_out_matches_jansson_on_random_objects),
	    cmocka_unit_test(json_out_refuses_invalid_utf8),
	    cmocka_unit_test(json_out_keys_and_ints_compose_an_object),
	    cmocka_unit_test(json_out_sees_special_bytes_at_every_offset),
	    cmocka_unit_test(json_out_writes_integers_as_printf_does),
	};
	return cmocka_run_group_tests_name("json_out", tests, NULL, NULL);
}
