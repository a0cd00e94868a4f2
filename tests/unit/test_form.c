/*
 * Unit tests for application/x-www-form-urlencoded bodies: decoding ('+',
 * percent escapes), duplicates refused (RFC 6749 section 3.2), limits, and
 * text that must never reach a handler (NUL, control characters, invalid
 * UTF-8).
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

struct fixture {
	struct idp_arena arena;
	struct http_form form;
	struct idp_diag diag;
};

static int
setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));

	if (f == NULL)
		return -1;
	idp_arena_init(&f->arena, 1u << 20);
	idp_diag_init(&f->diag);
	*state = f;
	return 0;
}

static int
teardown(void **state)
{
	struct fixture *f = *state;

	idp_arena_cleanup(&f->arena);
	free(f);
	return 0;
}

static int
parse(struct fixture *f, const char *body)
{
	idp_diag_init(&f->diag);
	return http_form_parse(body, strlen(body), &f->arena, &f->form, &f->diag);
}

static void
form_decodes_plus_and_percent_escapes(void **state)
{
	struct fixture *f = *state;

	assert_int_equal(parse(f, "token=a%2Bb%2fc+d&token_type_hint=access_token&x=%C3%A9"),
	                 IDP_OK);
	assert_int_equal(f->form.n, 3);
	assert_string_equal(http_form_get(&f->form, "token"), "a+b/c d");
	assert_string_equal(http_form_get(&f->form, "token_type_hint"), "access_token");
	assert_string_equal(http_form_get(&f->form, "x"), "\xc3\xa9");
	assert_null(http_form_get(&f->form, "missing"));
}

/*
 * A parameter without a value reads as omitted (RFC 6749 section 3.1), but
 * still counts as given: with a value as well it is a repetition.
 */
static void
form_empty_values_read_as_omitted(void **state)
{
	struct fixture *f = *state;

	assert_int_equal(parse(f, "a%5Fb=1&empty=&bare&&"), IDP_OK);
	assert_int_equal(f->form.n, 3);
	assert_string_equal(http_form_get(&f->form, "a_b"), "1");
	assert_null(http_form_get(&f->form, "empty"));
	assert_null(http_form_get(&f->form, "bare"));
	assert_int_equal(parse(f, ""), IDP_OK);
	assert_int_equal(f->form.n, 0);
	assert_int_equal(parse(f, "a=&a=1"), IDP_EINVAL);
	assert_int_equal(parse(f, "a=1&a"), IDP_EINVAL);
}

static void
form_rejects_a_parameter_given_twice(void **state)
{
	struct fixture *f = *state;

	assert_int_equal(parse(f, "token=a&token=b"), IDP_EINVAL);
	assert_non_null(strstr(idp_diag_str(&f->diag), "token: given more than once"));
	/* The same name spelled two ways is the same parameter. */
	assert_int_equal(parse(f, "token=a&t%6Fken=b"), IDP_EINVAL);
	assert_int_equal(parse(f, "token=a&token="), IDP_EINVAL);
}

static void
form_rejects_bad_percent_escapes(void **state)
{
	struct fixture *f = *state;

	assert_int_equal(parse(f, "token=abc%"), IDP_EINVAL);
	assert_int_equal(parse(f, "token=abc%4"), IDP_EINVAL);
	assert_int_equal(parse(f, "token=abc%zz"), IDP_EINVAL);
	assert_non_null(strstr(idp_diag_str(&f->diag), "two hex digits"));
	assert_int_equal(parse(f, "%g1=x"), IDP_EINVAL);
}

static void
form_rejects_nul_control_characters_and_invalid_utf8(void **state)
{
	struct fixture *f = *state;

	assert_int_equal(parse(f, "token=a%00b"), IDP_EINVAL);
	assert_int_equal(parse(f, "token=a%0Ab"), IDP_EINVAL);
	assert_int_equal(parse(f, "token=a%7Fb"), IDP_EINVAL);
	assert_int_equal(parse(f, "token=%C3"), IDP_EINVAL);       /* truncated */
	assert_int_equal(parse(f, "token=%C0%AF"), IDP_EINVAL);    /* overlong '/' */
	assert_int_equal(parse(f, "token=%ED%A0%80"), IDP_EINVAL); /* a surrogate */
	assert_int_equal(parse(f, "token=%C2%85"), IDP_EINVAL);    /* C1 control */
	assert_int_equal(parse(f, "=value"), IDP_EINVAL);
	assert_int_equal(parse(f, "%20=value"), IDP_OK); /* a space is a name */
}

static void
form_enforces_its_limits(void **state)
{
	struct fixture *f = *state;
	char body[HTTP_FORM_MAX_VALUE + 64], name[HTTP_FORM_MAX_NAME + 8];
	size_t at = 0;

	/* HTTP_FORM_MAX_PARAMS parameters pass, one more does not. */
	for (int i = 0; i < HTTP_FORM_MAX_PARAMS; i++)
		at += (size_t)snprintf(body + at, sizeof(body) - at, "%sp%d=v", i ? "&" : "", i);
	assert_int_equal(parse(f, body), IDP_OK);
	assert_int_equal(f->form.n, HTTP_FORM_MAX_PARAMS);
	snprintf(body + at, sizeof(body) - at, "&one=more");
	assert_int_equal(parse(f, body), IDP_ETOOBIG);

	/* A value of exactly the limit passes; one byte more does not. */
	memcpy(body, "token=", 6);
	memset(body + 6, 'a', HTTP_FORM_MAX_VALUE);
	body[6 + HTTP_FORM_MAX_VALUE] = '\0';
	assert_int_equal(parse(f, body), IDP_OK);
	body[6 + HTTP_FORM_MAX_VALUE] = 'a';
	body[7 + HTTP_FORM_MAX_VALUE] = '\0';
	assert_int_equal(parse(f, body), IDP_ETOOBIG);

	/* The limits count decoded bytes: escapes do not smuggle length past them. */
	memset(name, 'n', sizeof(name));
	name[HTTP_FORM_MAX_NAME + 1] = '\0';
	snprintf(body, sizeof(body), "%s=1", name);
	assert_int_equal(parse(f, body), IDP_ETOOBIG);
	name[HTTP_FORM_MAX_NAME] = '\0';
	snprintf(body, sizeof(body), "%s=1", name);
	assert_int_equal(parse(f, body), IDP_OK);

	/* The whole body is bounded before anything is decoded. */
	assert_int_equal(
	    http_form_parse("a=b", HTTP_FORM_MAX_BODY + 1, &f->arena, &f->form, &f->diag),
	    IDP_ETOOBIG);
}

/* One component into the caller's buffer (HTTP Basic credentials), with the parser's rules. */
static void
form_decode_one_component_into_a_buffer(void **state)
{
	char out[8];
	size_t len = 99;

	(void)state;
	assert_int_equal(http_form_decode("svc%3Aa+b", 9, out, sizeof(out), &len), IDP_OK);
	assert_string_equal(out, "svc:a b");
	assert_int_equal(len, 7);
	assert_int_equal(http_form_decode("", 0, out, sizeof(out), &len), IDP_OK);
	assert_string_equal(out, "");
	assert_int_equal(len, 0);
	/* Only n bytes are read: no NUL needed. */
	assert_int_equal(http_form_decode("ab%41zz", 5, out, sizeof(out), &len), IDP_OK);
	assert_string_equal(out, "abA");
	/* Bad escapes, a NUL or control character, bad UTF-8. */
	assert_int_equal(http_form_decode("a%4", 3, out, sizeof(out), &len), IDP_EINVAL);
	assert_string_equal(out, "");
	assert_int_equal(http_form_decode("a%zz", 4, out, sizeof(out), &len), IDP_EINVAL);
	assert_int_equal(http_form_decode("a%00", 4, out, sizeof(out), &len), IDP_EINVAL);
	assert_int_equal(http_form_decode("a\nb", 3, out, sizeof(out), &len), IDP_EINVAL);
	assert_int_equal(http_form_decode("%C3%28", 6, out, sizeof(out), &len), IDP_EINVAL);
	/* The result and its NUL must fit; an escape counts as one byte. */
	assert_int_equal(http_form_decode("1234567", 7, out, sizeof(out), &len), IDP_OK);
	assert_int_equal(http_form_decode("12345678", 8, out, sizeof(out), &len), IDP_ETOOBIG);
	assert_int_equal(http_form_decode("123456%37", 9, out, sizeof(out), &len), IDP_OK);
	assert_string_equal(out, "1234567");
	assert_int_equal(http_form_decode("a", 1, out, 0, &len), IDP_ETOOBIG);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(form_decodes_plus_and_percent_escapes, setup, teardown),
	    cmocka_unit_test_setup_teardown(form_empty_values_read_as_omitted, setup, teardown),
	    cmocka_unit_test_setup_teardown(form_rejects_a_parameter_given_twice, setup, teardown),
	    cmocka_unit_test_setup_teardown(form_rejects_bad_percent_escapes, setup, teardown),
	    cmocka_unit_test_setup_teardown(form_rejects_nul_control_characters_and_invalid_utf8,
	                                    setup, teardown),
	    cmocka_unit_test_setup_teardown(form_enforces_its_limits, setup, teardown),
	    cmocka_unit_test(form_decode_one_component_into_a_buffer),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
