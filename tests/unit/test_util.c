/*
 * Unit tests for src/util: buffers, diagnostics, durations, time format,
 * constant-time comparison.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "idpd/arena.h"
#include "idpd/buf.h"
#include "idpd/clock.h"
#include "idpd/common.h"

static void
buf_append_respects_cap(void **state)
{
	struct idp_buf b;

	(void)state;
	idp_buf_init(&b, 8);
	assert_int_equal(idp_buf_puts(&b, "abcd"), IDP_OK);
	assert_int_equal(idp_buf_printf(&b, "%d", 1234), IDP_OK);
	assert_string_equal(idp_buf_str(&b), "abcd1234");
	assert_int_equal(idp_buf_putc(&b, 'x'), IDP_ETOOBIG);
	/* A refused append leaves the contents unchanged. */
	assert_string_equal(idp_buf_str(&b), "abcd1234");
	assert_int_equal(b.len, 8);
	idp_buf_cleanup(&b);
}

static void
buf_take_hands_over_storage(void **state)
{
	struct idp_buf b;
	size_t len;
	char *s;

	(void)state;
	idp_buf_init(&b, 0);
	s = idp_buf_take(&b, &len);
	assert_string_equal(s, "");
	assert_int_equal(len, 0);
	free(s);
	assert_int_equal(idp_buf_puts(&b, "hello"), IDP_OK);
	s = idp_buf_take(&b, &len);
	assert_string_equal(s, "hello");
	assert_int_equal(len, 5);
	assert_null(b.data);
	free(s);
	idp_buf_cleanup(&b);
}

static void
diag_joins_lines_and_bounds_size(void **state)
{
	struct idp_diag d;

	(void)state;
	idp_diag_init(&d);
	assert_string_equal(idp_diag_str(&d), "");
	idp_diag_add(&d, "a:%d", 1);
	idp_diag_add(&d, "b");
	assert_string_equal(idp_diag_str(&d), "a:1\nb");
	assert_int_equal(d.count, 2);
	for (int i = 0; i < 5000; i++)
		idp_diag_add(&d, "line %d is here", i);
	assert_true(d.len < IDP_DIAG_MAX);
	assert_int_equal(strlen(d.text), d.len);
	assert_int_equal(d.count, 5002);
}

static void
duration_parse_accepts_units_only(void **state)
{
	int64_t ms = -1;

	(void)state;
	assert_int_equal(idp_duration_parse("15m", &ms), IDP_OK);
	assert_int_equal(ms, 15 * 60 * 1000);
	assert_int_equal(idp_duration_parse("1h", &ms), IDP_OK);
	assert_int_equal(ms, 3600000);
	assert_int_equal(idp_duration_parse("250ms", &ms), IDP_OK);
	assert_int_equal(ms, 250);
	assert_int_equal(idp_duration_parse("7d", &ms), IDP_OK);
	assert_int_equal(ms, 7LL * 86400000);
	assert_int_equal(idp_duration_parse("15", &ms), IDP_EINVAL);
	assert_int_equal(idp_duration_parse("-1s", &ms), IDP_EINVAL);
	assert_int_equal(idp_duration_parse("1h30m", &ms), IDP_EINVAL);
	assert_int_equal(idp_duration_parse("", &ms), IDP_EINVAL);
	assert_int_equal(idp_duration_parse("m", &ms), IDP_EINVAL);
	assert_int_equal(idp_duration_parse("99999999999999999999s", &ms), IDP_EINVAL);
}

static void
time_format_is_rfc3339_utc_ms(void **state)
{
	char out[32];

	(void)state;
	idp_time_format(1774621523456LL, out);
	assert_string_equal(out, "2026-03-27T14:25:23.456Z");
}

static void
fixed_clock_does_not_move(void **state)
{
	struct idp_clock c;

	(void)state;
	idp_clock_fixed(&c, 42);
	assert_int_equal(idp_now_ms(&c), 42);
	assert_int_equal(idp_now_ms(&c), 42);
	assert_true(idp_now_ms(idp_clock_system()) > 1700000000000LL);
}

static void
ct_equal_compares_bytes(void **state)
{
	(void)state;
	assert_true(idp_ct_equal("abc", "abc", 3));
	assert_false(idp_ct_equal("abc", "abd", 3));
	assert_true(idp_ct_equal("", "", 0));
}

static void
random_id_bytes_differ_across_refills_and_refuse_oversize(void **state)
{
	unsigned char ids[100][16], big[65];

	(void)state;
	/* 1,600 bytes: the per-thread pool is refilled along the way. */
	for (size_t i = 0; i < IDP_ARRAY_LEN(ids); i++)
		assert_int_equal(idp_random_id_bytes(ids[i], sizeof(ids[i])), IDP_OK);
	for (size_t i = 0; i < IDP_ARRAY_LEN(ids); i++)
		for (size_t j = i + 1; j < IDP_ARRAY_LEN(ids); j++)
			assert_memory_not_equal(ids[i], ids[j], sizeof(ids[i]));
	assert_int_equal(idp_random_id_bytes(big, sizeof(big)), IDP_EINVAL);
}

/* Words of a space-separated list: runs of spaces separate as one, none is empty. */
static void
words_walk_a_space_separated_list(void **state)
{
	const char *s = "  a bc   def ", *w;
	const char *want[] = {"a", "bc", "def"};
	size_t n, i = 0;

	(void)state;
	while ((w = idp_word_next(&s, &n)) != NULL) {
		assert_true(i < 3);
		assert_int_equal(n, strlen(want[i]));
		assert_memory_equal(w, want[i], n);
		i++;
	}
	assert_int_equal(i, 3);
	s = "";
	assert_null(idp_word_next(&s, &n));
	assert_true(idp_word_listed("x https://a  https://b", "https://b", 9));
	assert_false(idp_word_listed("x https://ab", "https://a", 9));
	assert_false(idp_word_listed("", "x", 1));
}

/*
 * A request's arena holds what its form decoded (subject and actor tokens):
 * cleanup wipes the bytes it handed out before the memory goes back, the
 * inline first block (freed later with the request) included.
 */
static void
arena_cleanup_wipes_what_it_handed_out(void **state)
{
	static const char zero[sizeof(((struct idp_arena *)0)->first)];
	struct idp_arena a;
	char *big;

	(void)state;
	memset(&a, 0, sizeof(a)); /* the unused rest of first is not the arena's to wipe */
	idp_arena_init(&a, 0);
	assert_non_null(idp_arena_strdup(&a, "eyJhbGciOiJFUzI1NiJ9.secret.sig"));
	big = idp_arena_alloc(&a, 20000); /* past the first block: a chunk of its own */
	assert_non_null(big);
	memset(big, 'x', 20000);
	idp_arena_cleanup(&a);
	assert_memory_equal(a.first, zero, sizeof(zero));
	assert_null(a.head);
	assert_int_equal(a.first_used, 0);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(words_walk_a_space_separated_list),
	    cmocka_unit_test(buf_append_respects_cap),
	    cmocka_unit_test(random_id_bytes_differ_across_refills_and_refuse_oversize),
	    cmocka_unit_test(buf_take_hands_over_storage),
	    cmocka_unit_test(diag_joins_lines_and_bounds_size),
	    cmocka_unit_test(duration_parse_accepts_units_only),
	    cmocka_unit_test(time_format_is_rfc3339_utc_ms),
	    cmocka_unit_test(fixed_clock_does_not_move),
	    cmocka_unit_test(ct_equal_compares_bytes),
	    cmocka_unit_test(arena_cleanup_wipes_what_it_handed_out),
	};
	return cmocka_run_group_tests_name("util", tests, NULL, NULL);
}
