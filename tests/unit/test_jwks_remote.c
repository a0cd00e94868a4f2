/*
 * Unit tests for src/token/jwks_remote.c: what an answer from a jwks_uri
 * must be for its body to be read as a key set (jwks_parse_answer, reached
 * through IDP_STATIC), and the unverified iss and iat a verifier reads.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "idpd/buf.h"
#include "idpd/jwks_remote.h"
#include "idpd/jws.h"
#include "idpd/keys.h"

int jwks_parse_answer(const char *uri, const struct idp_buf *ans, bool clean, const char **body,
                      size_t *body_len, struct idp_diag *diag);

#define URI "https://idp.example/keys"

/* jwks_parse_answer on text; the diag's text into why (if not NULL). */
static int
parse(const char *text, bool clean, const char **body, size_t *len, char *why, size_t why_len)
{
	struct idp_buf b;
	struct idp_diag d;
	int rc;

	idp_buf_init(&b, 0);
	idp_diag_init(&d);
	assert_int_equal(idp_buf_puts(&b, text), IDP_OK);
	rc = jwks_parse_answer(URI, &b, clean, body, len, &d);
	if (why != NULL)
		snprintf(why, why_len, "%s", idp_diag_str(&d));
	/* body points into the buffer: copy it out for the caller. */
	if (rc == IDP_OK) {
		static char copy[256];

		snprintf(copy, sizeof(copy), "%.*s", (int)*len, *body);
		*body = copy;
	}
	idp_buf_cleanup(&b);
	return rc;
}

static void
answer_200_json_with_its_length_is_taken(void **state)
{
	const char *body;
	size_t len;

	(void)state;
	assert_int_equal(
	    parse("HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\n"
	          "Content-Length: 11\r\n\r\n{\"keys\":[]}",
	          false, &body, &len, NULL, 0),
	    IDP_OK);
	assert_int_equal(len, 11);
	assert_string_equal(body, "{\"keys\":[]}");
	/* A +json type, HTTP/1.0, no length but a clean close. */
	assert_int_equal(
	    parse("HTTP/1.0 200 OK\r\ncontent-type: application/jwk-set+json\r\n\r\n{}", true,
	          &body, &len, NULL, 0),
	    IDP_OK);
	assert_string_equal(body, "{}");
}

static void
answer_not_a_whole_json_200_is_refused(void **state)
{
	const char *body;
	size_t len;
	char why[512];

	(void)state;
	assert_int_equal(parse("HTTP/1.1 302 Found\r\nLocation: https://evil.example/keys\r\n"
	                       "Content-Length: 0\r\n\r\n",
	                       true, &body, &len, why, sizeof(why)),
	                 IDP_EUNAVAIL);
	assert_non_null(strstr(why, "redirects are not followed"));
	assert_int_equal(parse("HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n", true, &body, &len,
	                       why, sizeof(why)),
	                 IDP_EUNAVAIL);
	assert_non_null(strstr(why, "answered 500"));
	assert_int_equal(parse("HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 2\r\n"
	                       "\r\n{}",
	                       true, &body, &len, why, sizeof(why)),
	                 IDP_EUNAVAIL);
	assert_non_null(strstr(why, "not JSON"));
	assert_int_equal(parse("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}", true, &body, &len,
	                       why, sizeof(why)),
	                 IDP_EUNAVAIL);
	assert_non_null(strstr(why, "no Content-Type"));
	assert_int_equal(parse("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
	                       "Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
	                       true, &body, &len, why, sizeof(why)),
	                 IDP_EUNAVAIL);
	assert_non_null(strstr(why, "transfer coding"));
	/* Cut short: fewer bytes than Content-Length says, or no length and no close_notify. */
	assert_int_equal(parse("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
	                       "Content-Length: 20\r\n\r\n{\"keys\":[",
	                       true, &body, &len, why, sizeof(why)),
	                 IDP_EUNAVAIL);
	assert_int_equal(
	    parse("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{\"keys\":[]}", false,
	          &body, &len, why, sizeof(why)),
	    IDP_EUNAVAIL);
	assert_non_null(strstr(why, "cut"));
	assert_int_equal(parse("SSH-2.0-OpenSSH\r\n\r\n", true, &body, &len, why, sizeof(why)),
	                 IDP_EUNAVAIL);
	assert_non_null(strstr(why, "not HTTP/1"));
}

static void
answer_body_past_the_cap_is_refused(void **state)
{
	size_t n = JWKS_REMOTE_BODY_MAX + 1;
	char *text = malloc(n + 128), why[512];
	int h = snprintf(text, 128, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n");
	const char *body;
	size_t len;

	(void)state;
	memset(text + h, ' ', n);
	text[h + (int)n] = '\0';
	assert_int_equal(parse(text, true, &body, &len, why, sizeof(why)), IDP_ETOOBIG);
	assert_non_null(strstr(why, "passes"));
	free(text);
}

static void
token_iss_and_iat_are_read_unverified(void **state)
{
	struct idp_jws_key *k = NULL;
	json_t *c =
	    json_pack("{s:s,s:I}", "iss", "https://idp.example", "iat", (json_int_t)1700000000);
	char *tok = NULL, iss[64];
	int64_t iat;

	(void)state;
	assert_int_equal(idp_jws_key_generate("k1", &k, NULL), IDP_OK);
	assert_int_equal(idp_jws_sign(k, NULL, c, &tok, NULL, NULL), IDP_OK);
	jwks_token_iss_iat(tok, strlen(tok), iss, sizeof(iss), &iat);
	assert_string_equal(iss, "https://idp.example");
	assert_int_equal(iat, 1700000000LL * 1000);
	/* An iss that does not fit is no iss; garbage has neither. */
	jwks_token_iss_iat(tok, strlen(tok), iss, 8, &iat);
	assert_string_equal(iss, "");
	jwks_token_iss_iat("a.b.c", 5, iss, sizeof(iss), &iat);
	assert_string_equal(iss, "");
	assert_true(iat == KEYS_NO_IAT);
	free(tok);
	json_decref(c);
	idp_jws_key_unref(k);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(answer_200_json_with_its_length_is_taken),
	    cmocka_unit_test(answer_not_a_whole_json_200_is_refused),
	    cmocka_unit_test(answer_body_past_the_cap_is_refused),
	    cmocka_unit_test(token_iss_and_iat_are_read_unverified),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
