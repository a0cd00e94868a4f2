/*
 * Unit tests for src/token/b64.c: RFC 4648 vectors in both alphabets and the
 * strict decoder's refusals.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "idpd/b64.h"

/* RFC 4648 section 10. */
static const struct {
	const char *plain;
	const char *std;
	const char *url;
} rfc4648[] = {
    {"", "", ""},
    {"f", "Zg==", "Zg"},
    {"fo", "Zm8=", "Zm8"},
    {"foo", "Zm9v", "Zm9v"},
    {"foob", "Zm9vYg==", "Zm9vYg"},
    {"fooba", "Zm9vYmE=", "Zm9vYmE"},
    {"foobar", "Zm9vYmFy", "Zm9vYmFy"},
};

static int
url_decode_str(const char *s, unsigned char *out, size_t cap, size_t *n)
{
	return idp_b64url_decode(s, strlen(s), out, cap, n);
}

static void
b64url_encodes_rfc4648_vectors(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof(rfc4648) / sizeof(rfc4648[0]); i++) {
		size_t n, len = strlen(rfc4648[i].plain);
		char *s = idp_b64url_encode(rfc4648[i].plain, len, &n);

		assert_string_equal(s, rfc4648[i].url);
		assert_int_equal(n, strlen(rfc4648[i].url));
		assert_int_equal(idp_b64url_encoded_len(len), n);
		free(s);
	}
}

static void
b64url_decodes_rfc4648_vectors(void **state)
{
	unsigned char out[16];
	size_t n;

	(void)state;
	for (size_t i = 0; i < sizeof(rfc4648) / sizeof(rfc4648[0]); i++) {
		assert_int_equal(url_decode_str(rfc4648[i].url, out, sizeof(out), &n), IDP_OK);
		assert_int_equal(n, strlen(rfc4648[i].plain));
		assert_memory_equal(out, rfc4648[i].plain, n);
	}
}

static void
b64_standard_round_trips_rfc4648_vectors(void **state)
{
	unsigned char out[16];
	char enc[32];
	size_t n;

	(void)state;
	for (size_t i = 0; i < sizeof(rfc4648) / sizeof(rfc4648[0]); i++) {
		size_t len = strlen(rfc4648[i].plain);

		assert_int_equal(idp_b64_encode_to(rfc4648[i].plain, len, enc),
		                 strlen(rfc4648[i].std));
		assert_string_equal(enc, rfc4648[i].std);
		assert_int_equal(idp_b64_decode(enc, strlen(enc), out, sizeof(out), &n), IDP_OK);
		assert_int_equal(n, len);
		assert_memory_equal(out, rfc4648[i].plain, n);
	}
}

static void
b64url_uses_url_alphabet(void **state)
{
	const unsigned char bytes[] = {0xfb, 0xff, 0xbf};
	unsigned char out[4];
	size_t n;
	char *s;

	(void)state;
	s = idp_b64url_encode(bytes, sizeof(bytes), NULL);
	assert_string_equal(s, "-_-_");
	free(s);
	assert_int_equal(url_decode_str("-_-_", out, sizeof(out), &n), IDP_OK);
	assert_int_equal(n, 3);
	assert_memory_equal(out, bytes, 3);
	/* The standard alphabet's + and / are not base64url. */
	assert_int_equal(url_decode_str("+/+/", out, sizeof(out), &n), IDP_EINVAL);
	assert_int_equal(idp_b64_decode("-_-_", 4, out, sizeof(out), &n), IDP_EINVAL);
}

static void
b64url_round_trips_every_length(void **state)
{
	unsigned char in[70], out[70];
	size_t n;

	(void)state;
	for (size_t i = 0; i < sizeof(in); i++)
		in[i] = (unsigned char)(i * 37 + 11);
	for (size_t len = 0; len <= sizeof(in); len++) {
		char *s = idp_b64url_encode(in, len, NULL);

		assert_int_equal(idp_b64url_decode(s, strlen(s), out, sizeof(out), &n), IDP_OK);
		assert_int_equal(n, len);
		assert_memory_equal(out, in, len);
		assert_true(idp_b64url_decoded_max(strlen(s)) >= len);
		free(s);
	}
}

static void
b64url_rejects_padding(void **state)
{
	unsigned char out[16];
	size_t n;

	(void)state;
	assert_int_equal(url_decode_str("Zg==", out, sizeof(out), &n), IDP_EINVAL);
	assert_int_equal(url_decode_str("Zm8=", out, sizeof(out), &n), IDP_EINVAL);
	assert_int_equal(url_decode_str("Zg=", out, sizeof(out), &n), IDP_EINVAL);
}

static void
b64url_rejects_whitespace(void **state)
{
	unsigned char out[16];
	size_t n;

	(void)state;
	assert_int_equal(url_decode_str("Zm9v Yg", out, sizeof(out), &n), IDP_EINVAL);
	assert_int_equal(url_decode_str("Zm9v\nYg", out, sizeof(out), &n), IDP_EINVAL);
	assert_int_equal(url_decode_str(" Zm9v", out, sizeof(out), &n), IDP_EINVAL);
	assert_int_equal(url_decode_str("Zm9v\t", out, sizeof(out), &n), IDP_EINVAL);
	assert_int_equal(url_decode_str("Zm9v\r\n", out, sizeof(out), &n), IDP_EINVAL);
}

static void
b64url_rejects_characters_outside_alphabet(void **state)
{
	unsigned char out[16];
	size_t n;

	(void)state;
	assert_int_equal(url_decode_str("Zm9v.g", out, sizeof(out), &n), IDP_EINVAL);
	assert_int_equal(url_decode_str("Zm9v\xc3\xa9", out, sizeof(out), &n), IDP_EINVAL);
	/* An embedded NUL inside the given length is not skipped. */
	assert_int_equal(idp_b64url_decode("Zm\0v", 4, out, sizeof(out), &n), IDP_EINVAL);
}

static void
b64url_rejects_non_canonical_last_character(void **state)
{
	unsigned char out[16];
	size_t n;

	(void)state;
	/* "Zh" and "Zm9" spell "f" and "fo" only with the unused bits set. */
	assert_int_equal(url_decode_str("Zg", out, sizeof(out), &n), IDP_OK);
	assert_int_equal(url_decode_str("Zh", out, sizeof(out), &n), IDP_EINVAL);
	assert_int_equal(url_decode_str("Zv", out, sizeof(out), &n), IDP_EINVAL);
	assert_int_equal(url_decode_str("Zm8", out, sizeof(out), &n), IDP_OK);
	assert_int_equal(url_decode_str("Zm9", out, sizeof(out), &n), IDP_EINVAL);
	assert_int_equal(idp_b64_decode("Zh==", 4, out, sizeof(out), &n), IDP_EINVAL);
	assert_int_equal(idp_b64_decode("Zm9=", 4, out, sizeof(out), &n), IDP_EINVAL);
}

static void
b64url_rejects_impossible_length(void **state)
{
	unsigned char out[16];
	size_t n;

	(void)state;
	assert_int_equal(url_decode_str("Z", out, sizeof(out), &n), IDP_EINVAL);
	assert_int_equal(url_decode_str("Zm9vY", out, sizeof(out), &n), IDP_EINVAL);
}

static void
b64url_decode_respects_capacity(void **state)
{
	unsigned char out[3];
	size_t n;

	(void)state;
	assert_int_equal(url_decode_str("Zm9v", out, 3, &n), IDP_OK);
	assert_int_equal(url_decode_str("Zm9vYg", out, 3, &n), IDP_ETOOBIG);
}

static void
b64url_decode_alloc_terminates_and_fails_cleanly(void **state)
{
	unsigned char *p = (unsigned char *)"sentinel";
	size_t n;

	(void)state;
	assert_int_equal(idp_b64url_decode_alloc("Zm9vYmFy", 8, &p, &n), IDP_OK);
	assert_int_equal(n, 6);
	assert_string_equal((char *)p, "foobar");
	free(p);
	assert_int_equal(idp_b64url_decode_alloc("Zm9vYmF=", 8, &p, &n), IDP_EINVAL);
	assert_null(p);
}

static void
b64_standard_requires_exact_padding(void **state)
{
	unsigned char out[16];
	size_t n;

	(void)state;
	assert_int_equal(idp_b64_decode("Zg", 2, out, sizeof(out), &n), IDP_EINVAL);
	assert_int_equal(idp_b64_decode("Zg=", 3, out, sizeof(out), &n), IDP_EINVAL);
	assert_int_equal(idp_b64_decode("Zg===", 5, out, sizeof(out), &n), IDP_EINVAL);
	assert_int_equal(idp_b64_decode("Z===", 4, out, sizeof(out), &n), IDP_EINVAL);
	assert_int_equal(idp_b64_decode("====", 4, out, sizeof(out), &n), IDP_EINVAL);
	assert_int_equal(idp_b64_decode("Zg=a", 4, out, sizeof(out), &n), IDP_EINVAL);
	assert_int_equal(idp_b64_decode("Zg==Zg==", 8, out, sizeof(out), &n), IDP_EINVAL);
	assert_int_equal(idp_b64_decode("Zm8=\n", 5, out, sizeof(out), &n), IDP_EINVAL);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(b64url_encodes_rfc4648_vectors),
	    cmocka_unit_test(b64url_decodes_rfc4648_vectors),
	    cmocka_unit_test(b64_standard_round_trips_rfc4648_vectors),
	    cmocka_unit_test(b64url_uses_url_alphabet),
	    cmocka_unit_test(b64url_round_trips_every_length),
	    cmocka_unit_test(b64url_rejects_padding),
	    cmocka_unit_test(b64url_rejects_whitespace),
	    cmocka_unit_test(b64url_rejects_characters_outside_alphabet),
	    cmocka_unit_test(b64url_rejects_non_canonical_last_character),
	    cmocka_unit_test(b64url_rejects_impossible_length),
	    cmocka_unit_test(b64url_decode_respects_capacity),
	    cmocka_unit_test(b64url_decode_alloc_terminates_and_fails_cleanly),
	    cmocka_unit_test(b64_standard_requires_exact_padding),
	};
	return cmocka_run_group_tests_name("b64", tests, NULL, NULL);
}
