/*
 * Unit tests for src/token/tasks.c and src/token/human_auth.c: the
 * delegation hash chain against vectors computed with openssl, the claims
 * of a task's root delegation token, and human token verification against
 * an [[idp]] key set (pinned algorithms, issuer, audience, expiry,
 * principal claim) and against several providers with different pins.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include "idpd/b64.h"
#include "idpd/clock.h"
#include "idpd/config.h"
#include "idpd/human_auth.h"
#include "idpd/jws.h"
#include "idpd/delegation.h"
#include "idpd/tasks.h"

/*
 * h0 = SHA-256("idpd-chain-v1" || "alice@example.com"):
 *   printf 'idpd-chain-v1alice@example.com' | openssl dgst -sha256
 */
#define H0_HEX "508a88cb79e75f8734d2cbf2860102a40e4219556523d371838351c81fe2131b"
/*
 * h1 = SHA-256(h0 || "planning-agent" || "jti-0123456789abcdef" ||
 *              "cloud:read reports:write"):
 *   (printf 'idpd-chain-v1alice@example.com' | openssl dgst -sha256 -binary;
 *    printf 'planning-agentjti-0123456789abcdefcloud:read reports:write') |
 *   openssl dgst -sha256
 */
#define H1_HEX "05e33531e1694af72a3713758e3f5ea5ed92b5b4a319e22b2e1caa2a0593cfc2"

static void
chain_root_matches_openssl_vector(void **state)
{
	uint8_t h[TASK_CHAIN_HASH_LEN];
	char text[TASK_CHAIN_TEXT_LEN];

	(void)state;
	assert_int_equal(task_chain_root("alice@example.com", h), IDP_OK);
	task_chain_format(h, text);
	assert_string_equal(text, "sha256:" H0_HEX);
}

static void
chain_link_matches_openssl_vector(void **state)
{
	uint8_t h[TASK_CHAIN_HASH_LEN];
	char text[TASK_CHAIN_TEXT_LEN];

	(void)state;
	assert_int_equal(task_chain_root("alice@example.com", h), IDP_OK);
	/* out aliases prev. */
	assert_int_equal(task_chain_next(h, "planning-agent", "jti-0123456789abcdef",
	                                 "cloud:read reports:write", h),
	                 IDP_OK);
	task_chain_format(h, text);
	assert_string_equal(text, "sha256:" H1_HEX);
}

static void
chain_depends_on_every_input(void **state)
{
	uint8_t a[TASK_CHAIN_HASH_LEN], b[TASK_CHAIN_HASH_LEN], h0[TASK_CHAIN_HASH_LEN];

	(void)state;
	assert_int_equal(task_chain_root("alice@example.com", h0), IDP_OK);
	assert_int_equal(task_chain_next(h0, "a", "j", "x:read", a), IDP_OK);
	assert_int_equal(task_chain_next(h0, "b", "j", "x:read", b), IDP_OK);
	assert_memory_not_equal(a, b, sizeof(a));
	assert_int_equal(task_chain_next(h0, "a", "k", "x:read", b), IDP_OK);
	assert_memory_not_equal(a, b, sizeof(a));
	assert_int_equal(task_chain_next(h0, "a", "j", "x:write", b), IDP_OK);
	assert_memory_not_equal(a, b, sizeof(a));
	assert_int_equal(task_chain_root("bob@example.com", b), IDP_OK);
	assert_memory_not_equal(h0, b, sizeof(h0));
}

static struct task_root_token
sample_token(void)
{
	return (struct task_root_token){
	    .issuer = "idpd",
	    .audience = "idpd",
	    .agent_id = "planning-agent",
	    .jti = "jti-0123456789abcdef",
	    .task_id = "task_0123456789abcdefghij",
	    .scope = "cloud:read reports:write",
	    .human = "alice@example.com",
	    .idp = "corp",
	    .chain_hash = "sha256:" H1_HEX,
	    .iat_s = 1700000000,
	    .exp_s = 1700003600,
	};
}

static void
root_claims_carry_task_chain_and_act(void **state)
{
	struct task_root_token t = sample_token();
	json_t *c = task_root_claims(&t), *act;

	(void)state;
	assert_non_null(c);
	assert_string_equal(json_string_value(json_object_get(c, "iss")), "idpd");
	assert_string_equal(json_string_value(json_object_get(c, "sub")), "planning-agent");
	assert_string_equal(json_string_value(json_object_get(c, "aud")), "idpd");
	assert_int_equal(json_integer_value(json_object_get(c, "iat")), 1700000000);
	assert_int_equal(json_integer_value(json_object_get(c, "exp")), 1700003600);
	assert_string_equal(json_string_value(json_object_get(c, "jti")), "jti-0123456789abcdef");
	assert_string_equal(json_string_value(json_object_get(c, "task_id")),
	                    "task_0123456789abcdefghij");
	assert_string_equal(json_string_value(json_object_get(c, "scope")),
	                    "cloud:read reports:write");
	assert_string_equal(json_string_value(json_object_get(c, "human_principal")),
	                    "alice@example.com");
	assert_string_equal(json_string_value(json_object_get(c, "delegation_chain_hash")),
	                    "sha256:" H1_HEX);
	assert_int_equal(json_integer_value(json_object_get(c, "depth")), 0);
	/* RFC 8693 4.1: the current actor outermost (the root agent), the human before it. */
	act = json_object_get(c, "act");
	assert_true(json_is_object(act));
	assert_string_equal(json_string_value(json_object_get(act, "sub")), "planning-agent");
	assert_string_equal(json_string_value(json_object_get(act, "sub_type")), "agent");
	act = json_object_get(act, "act");
	assert_true(json_is_object(act));
	assert_string_equal(json_string_value(json_object_get(act, "sub")), "alice@example.com");
	assert_string_equal(json_string_value(json_object_get(act, "sub_type")), "human");
	assert_null(json_object_get(act, "act"));
	json_decref(c);
}

static void
root_claims_refuse_empty_lifetime(void **state)
{
	struct task_root_token t = sample_token();

	(void)state;
	t.exp_s = t.iat_s;
	assert_null(task_root_claims(&t));
}

/* ---- human tokens ---- */

static struct idp_jws_key *idp_key, *other_key;
static struct human_verifier *verifier;
static char jwks_path[64];
static struct idp_clock clk;

#define NOW_S 1800000000LL

static int
setup(void **state)
{
	struct idpd_config *cfg = idpd_config_defaults();
	struct idpd_idp_cfg ic = {.name = "corp",
	                          .issuer = "https://sso.example.com",
	                          .audience = "idpd",
	                          .jwks_file = jwks_path,
	                          .algs = 1u,
	                          .principal_claim = "email",
	                          .vouches_for_owners = true,
	                          .require_email_verified = true};
	json_t *doc;
	struct idp_diag d;
	FILE *f;
	int fd;

	(void)state;
	assert_int_equal(idp_jws_key_generate("idp-1", &idp_key, NULL), IDP_OK);
	assert_int_equal(idp_jws_key_generate("idp-1", &other_key, NULL), IDP_OK);
	snprintf(jwks_path, sizeof(jwks_path), "/tmp/test_tasks_jwks_XXXXXX");
	fd = mkstemp(jwks_path);
	assert_true(fd >= 0);
	f = fdopen(fd, "w");
	doc = json_pack("{s:[o]}", "keys", idp_jws_key_public_jwk(idp_key));
	assert_int_equal(json_dumpf(doc, f, JSON_COMPACT), 0);
	json_decref(doc);
	assert_int_equal(fclose(f), 0);
	cfg->idps = &ic;
	cfg->n_idps = 1;
	idp_diag_init(&d);
	verifier = human_verifier_new(cfg, &d);
	cfg->idps = NULL;
	cfg->n_idps = 0;
	idpd_config_free(cfg);
	assert_non_null(verifier);
	idp_clock_fixed(&clk, NOW_S * 1000);
	return 0;
}

static int
teardown(void **state)
{
	(void)state;
	human_verifier_free(verifier);
	idp_jws_key_unref(idp_key);
	idp_jws_key_unref(other_key);
	unlink(jwks_path);
	return 0;
}

static char *
mint(const struct idp_jws_key *key, const char *iss, const char *aud, long long exp,
     const char *email)
{
	json_t *c = json_pack("{s:s,s:s,s:I,s:I,s:s}", "iss", iss, "aud", aud, "iat",
	                      (json_int_t)(NOW_S - 10), "exp", (json_int_t)exp, "sub", "u-1");
	char *tok = NULL;

	if (email != NULL) {
		json_object_set_new(c, "email", json_string(email));
		json_object_set_new(c, "email_verified", json_true());
	}
	assert_int_equal(idp_jws_sign(key, NULL, c, &tok, NULL, NULL), IDP_OK);
	json_decref(c);
	return tok;
}

static int
verify(const char *tok, const char **why, struct human_principal *p)
{
	return human_token_verify(verifier, tok, strlen(tok), &clk, p, why);
}

static void
human_token_valid_names_principal(void **state)
{
	struct human_principal p;
	const char *why = NULL;
	char *tok =
	    mint(idp_key, "https://sso.example.com", "idpd", NOW_S + 600, "alice@example.com");

	(void)state;
	assert_int_equal(verify(tok, &why, &p), IDP_OK);
	assert_string_equal(p.principal, "alice@example.com");
	assert_string_equal(p.idp, "corp");
	assert_int_equal(p.expires_at_s, NOW_S + 600);
	free(tok);
}

static void
human_token_refusals_name_their_reason(void **state)
{
	struct human_principal p;
	const char *why = NULL;
	char *tok;

	(void)state;
	tok = mint(idp_key, "https://evil.example.com", "idpd", NOW_S + 600, "a@example.com");
	assert_int_equal(verify(tok, &why, &p), IDP_EUNAUTH);
	assert_string_equal(why, "issuer_mismatch");
	free(tok);
	tok = mint(idp_key, "https://sso.example.com", "other", NOW_S + 600, "a@example.com");
	assert_int_equal(verify(tok, &why, &p), IDP_EUNAUTH);
	assert_string_equal(why, "audience_mismatch");
	free(tok);
	tok = mint(idp_key, "https://sso.example.com", "idpd", NOW_S - 60, "a@example.com");
	assert_int_equal(verify(tok, &why, &p), IDP_EUNAUTH);
	assert_string_equal(why, idp_jws_reason_name(IDP_JWS_EXPIRED));
	free(tok);
	tok = mint(idp_key, "https://sso.example.com", "idpd", NOW_S + 600, NULL);
	assert_int_equal(verify(tok, &why, &p), IDP_EUNAUTH);
	assert_string_equal(why, "principal_missing");
	free(tok);
	/* Same kid, another key: the signature does not verify. */
	tok = mint(other_key, "https://sso.example.com", "idpd", NOW_S + 600, "a@example.com");
	assert_int_equal(verify(tok, &why, &p), IDP_EUNAUTH);
	assert_string_equal(why, idp_jws_reason_name(IDP_JWS_BAD_SIGNATURE));
	free(tok);
}

/*
 * The email_verified rule binds a provider whose principal claim is email:
 * with another claim (an immutable sub) the email and its flag name nobody
 * and are not looked at.
 */
static void
human_token_email_rule_only_for_email_claim(void **state)
{
	struct idpd_config *cfg = idpd_config_defaults();
	struct idpd_idp_cfg ic = {.name = "corp",
	                          .issuer = "https://sso.example.com",
	                          .audience = "idpd",
	                          .jwks_file = jwks_path,
	                          .algs = 1u,
	                          .principal_claim = "sub",
	                          .vouches_for_owners = true,
	                          .require_email_verified = true};
	struct human_verifier *v;
	struct human_principal p;
	const char *why = NULL;
	json_t *c =
	    json_pack("{s:s,s:s,s:I,s:I,s:s,s:s,s:b}", "iss", "https://sso.example.com", "aud",
	              "idpd", "iat", (json_int_t)(NOW_S - 10), "exp", (json_int_t)(NOW_S + 600),
	              "sub", "u-1", "email", "a@example.com", "email_verified", 0);
	char *tok = NULL;
	struct idp_diag d;

	(void)state;
	cfg->idps = &ic;
	cfg->n_idps = 1;
	idp_diag_init(&d);
	v = human_verifier_new(cfg, &d);
	cfg->idps = NULL;
	cfg->n_idps = 0;
	idpd_config_free(cfg);
	assert_non_null(v);
	assert_int_equal(idp_jws_sign(idp_key, NULL, c, &tok, NULL, NULL), IDP_OK);
	if (human_token_verify(v, tok, strlen(tok), &clk, &p, &why) != IDP_OK)
		fail_msg("a sub-named token refused for its email_verified: %s", why);
	assert_string_equal(p.principal, "u-1");
	/* The same token is refused where email names the human. */
	assert_int_equal(verify(tok, &why, &p), IDP_EUNAUTH);
	assert_string_equal(why, "email_unverified");
	free(tok);
	json_decref(c);
	human_verifier_free(v);
}

static void
human_token_alg_none_refused(void **state)
{
	struct human_principal p;
	const char *why = NULL;
	const char *hdr = "{\"alg\":\"none\",\"kid\":\"idp-1\"}";
	const char *body = "{\"iss\":\"https://sso.example.com\",\"aud\":\"idpd\","
	                   "\"exp\":1900000000,\"email\":\"a@example.com\"}";
	char *h = idp_b64url_encode(hdr, strlen(hdr), NULL);
	char *b = idp_b64url_encode(body, strlen(body), NULL);
	char tok[512];

	(void)state;
	snprintf(tok, sizeof(tok), "%s.%s.", h, b);
	assert_int_equal(verify(tok, &why, &p), IDP_EUNAUTH);
	assert_string_not_equal(why, "");
	assert_string_equal(p.principal, "");
	free(h);
	free(b);
}

/*
 * Verify a token of the corp provider (setup's verifier) whose email claim
 * is the JSON text email_json between quotes, as given: the payload is
 * written by hand so that bytes jansson would not serialize reach the
 * verifier.  On IDP_OK, *principal gets the principal.
 */
static int
verify_principal(const char *email_json, const char **why, char *principal, size_t cap)
{
	struct human_principal p;
	char payload[512], *tok = NULL;
	int rc;

	snprintf(payload, sizeof(payload),
	         "{\"iss\":\"https://sso.example.com\",\"aud\":\"idpd\",\"iat\":%lld,"
	         "\"exp\":%lld,\"email_verified\":true,\"email\":\"%s\"}",
	         NOW_S - 10, NOW_S + 600, email_json);
	assert_int_equal(
	    idp_jws_sign_payload(idp_key, NULL, payload, strlen(payload), &tok, NULL, NULL),
	    IDP_OK);
	rc = verify(tok, why, &p);
	if (rc != IDP_OK)
		assert_string_equal(p.principal, "");
	snprintf(principal, cap, "%s", p.principal);
	free(tok);
	return rc;
}

static void
human_principal_refuses_controls_and_bad_utf8(void **state)
{
	/* Valid UTF-8 that holds a control or a space: principal_ok refuses it. */
	static const char *const controls[] = {
	    "a\xc2\x85\x62@example.com", /* U+0085 NEL, a C1 control ("\x62" is b) */
	    "a\\u0085b@example.com",     /* the same, escaped */
	    "a\xc2\x80@example.com",     /* U+0080, the first C1 */
	    "a\xc2\x9f@example.com",     /* U+009F, the last C1 */
	    "a\x7f@example.com",         /* DEL */
	    "a\\u0007@example.com",      /* BEL */
	    "a b@example.com",
	    /* Spaces and invisible format characters: lookalikes of another principal. */
	    "alice@example.com\xc2\xa0",        /* U+00A0 no-break space */
	    "alice@example.com\xe2\x80\x8b",    /* U+200B zero-width space */
	    "alice\xe2\x80\x8d@example.com",    /* U+200D zero-width joiner */
	    "alice@example.com\xe2\x80\xa8",    /* U+2028 line separator */
	    "alice@example.com\xe2\x80\xaf",    /* U+202F narrow no-break space */
	    "alice@example.com\xe2\x81\xa0",    /* U+2060 word joiner */
	    "alice@example.com\xe3\x80\x80",    /* U+3000 ideographic space */
	    "\xef\xbb\xbf\x61lice@example.com", /* U+FEFF byte order mark ("\x61" is a) */
	    /* The other default-ignorable code points, bidi controls among them. */
	    "ali\xc2\xad\x63\x65@example.com",   /* U+00AD soft hyphen ("\x63\x65" is ce) */
	    "alice\xcd\x8f@example.com",         /* U+034F combining grapheme joiner */
	    "alice\xd8\x9c@example.com",         /* U+061C Arabic letter mark */
	    "alice\xe1\x85\x9f@example.com",     /* U+115F Hangul choseong filler */
	    "alice\xe1\x85\xa0@example.com",     /* U+1160 Hangul jungseong filler */
	    "alice\xe1\x9a\x80@example.com",     /* U+1680 Ogham space mark */
	    "alice\xe1\x9e\xb4@example.com",     /* U+17B4 Khmer vowel inherent aq */
	    "alice\xe1\x9e\xb5@example.com",     /* U+17B5 Khmer vowel inherent aa */
	    "alice\xe1\xa0\x8b@example.com",     /* U+180B Mongolian variation selector */
	    "alice\xe1\xa0\x8e@example.com",     /* U+180E Mongolian vowel separator */
	    "alice@example.com\xe2\x80\xae",     /* U+202E right-to-left override */
	    "alice\xe2\x81\xa6@example.com",     /* U+2066 left-to-right isolate */
	    "alice\xe2\x81\xa9@example.com",     /* U+2069 pop directional isolate */
	    "alice\xe3\x85\xa4@example.com",     /* U+3164 Hangul filler */
	    "alice\xef\xb8\x80@example.com",     /* U+FE00 variation selector-1 */
	    "alice\xef\xb8\x8f@example.com",     /* U+FE0F variation selector-16 */
	    "alice\xef\xbe\xa0@example.com",     /* U+FFA0 halfwidth Hangul filler */
	    "alice\xef\xbf\xb0@example.com",     /* U+FFF0, reserved default-ignorable */
	    "alice\xef\xbf\xb8@example.com",     /* U+FFF8, reserved default-ignorable */
	    "alice\xf0\x9b\xb2\xa0@example.com", /* U+1BCA0 shorthand format letter overlap */
	    "alice\xf0\x9d\x85\xb3@example.com", /* U+1D173 musical symbol begin beam */
	    "alice\xf0\x9d\x85\xba@example.com", /* U+1D17A musical symbol end phrase */
	    "alice@example.com\xf3\xa0\x80\x81", /* U+E0001 language tag */
	    "alice@example.com\xf3\xa0\x81\xbf", /* U+E007F cancel tag */
	    "alice\xf3\xa0\x84\x80@example.com", /* U+E0100 variation selector-17 */
	    "alice\xf3\xa0\x87\xaf@example.com", /* U+E01EF variation selector-256 */
	    /* The chain separator of CEF and LEEF: one hop more in a SIEM. */
	    "alice@example.com->mallory@example.com",
	};
	/*
	 * Not UTF-8.  jansson already refuses these when it parses the
	 * payload (bad_payload); principal_ok checks again, so the rule does
	 * not hang on the JSON parser's.
	 */
	static const char *const not_utf8[] = {
	    "a\x85@example.com",             /* a lone continuation byte */
	    "a\xc3@example.com",             /* a truncated sequence */
	    "a\xc0\xaf@example.com",         /* an overlong '/' */
	    "a\xed\xa0\x80@example.com",     /* a UTF-16 surrogate */
	    "a\xf4\x90\x80\x80@example.com", /* past U+10FFFF */
	    "a\xff@example.com",             /* never in UTF-8 */
	};
	static const char *const good[] = {
	    "alice@example.com", "zo\xc3\xab@example.com", /* U+00EB */
	    "\xe7\x94\xb0\xe4\xb8\xad@example.com",        /* three-byte characters */
	    "a\xf0\x9f\x94\x91@example.com",               /* a four-byte character */
	    "a\xe2\x80\x90\x62@example.com",               /* U+2010 hyphen, visible; "\x62" is b */
	    "a-b>c@example.com",                           /* '-' and '>' apart */
	    /* Visible neighbours of the invisible ranges. */
	    "a\xc2\xac@example.com",         /* U+00AC not sign */
	    "a\xe1\x85\xa1@example.com",     /* U+1161 Hangul jungseong a */
	    "a\xe1\xa0\x8a@example.com",     /* U+180A Mongolian nirugu */
	    "a\xe2\x81\xb0@example.com",     /* U+2070 superscript zero */
	    "a\xef\xb8\x90@example.com",     /* U+FE10 presentation form comma */
	    "a\xf0\x9d\x85\xbb@example.com", /* U+1D17B musical symbol combining accent */
	};
	char principal[HUMAN_PRINCIPAL_MAX + 1];
	const char *why = NULL;

	(void)state;
	for (size_t i = 0; i < sizeof(controls) / sizeof(controls[0]); i++) {
		if (verify_principal(controls[i], &why, principal, sizeof(principal)) !=
		    IDP_EUNAUTH)
			fail_msg("principal with a control (%zu) accepted", i);
		assert_string_equal(why, "principal_missing");
	}
	for (size_t i = 0; i < sizeof(not_utf8) / sizeof(not_utf8[0]); i++) {
		if (verify_principal(not_utf8[i], &why, principal, sizeof(principal)) !=
		    IDP_EUNAUTH)
			fail_msg("principal not in UTF-8 (%zu) accepted", i);
	}
	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
		if (verify_principal(good[i], &why, principal, sizeof(principal)) != IDP_OK)
			fail_msg("principal %zu refused: %s", i, why);
		assert_string_equal(principal, good[i]);
	}
}

/* ---- several providers ---- */

/*
 * Provider "a" pins ES256 and holds a-es; provider "b" pins RS256 and holds
 * b-rs and, if asked, the same RSA key under the kid "a-es" too.  With that
 * second entry a token of b's key with a's kid would pass b, so a refusal
 * by a shows that a kept it.
 */
struct two_idps {
	struct idp_jws_key *a_es, *b_rs, *b_rs_as_a;
	char jwks_a[64], jwks_b[64];
};

static void
write_jwks(char path[64], struct idp_jws_key *const *keys, size_t n)
{
	json_t *doc = json_pack("{s:[]}", "keys");
	FILE *f;
	int fd;

	for (size_t i = 0; i < n; i++)
		json_array_append_new(json_object_get(doc, "keys"),
		                      idp_jws_key_public_jwk(keys[i]));
	snprintf(path, 64, "/tmp/test_tasks_jwks_XXXXXX");
	fd = mkstemp(path);
	assert_true(fd >= 0);
	f = fdopen(fd, "w");
	assert_non_null(f);
	assert_int_equal(json_dumpf(doc, f, JSON_COMPACT), 0);
	assert_int_equal(fclose(f), 0);
	json_decref(doc);
}

static void
two_idps_init(struct two_idps *t, bool b_holds_a_kid)
{
	EVP_PKEY *rsa = EVP_RSA_gen(2048);
	BIO *bio = BIO_new(BIO_s_mem());
	struct idp_jws_key *b_keys[2];
	char *pem;
	long n;

	assert_non_null(rsa);
	assert_non_null(bio);
	assert_int_equal(PEM_write_bio_PrivateKey(bio, rsa, NULL, NULL, 0, NULL, NULL), 1);
	n = BIO_get_mem_data(bio, &pem);
	assert_int_equal(idp_jws_key_from_pem(pem, (size_t)n, "b-rs", &t->b_rs, NULL), IDP_OK);
	assert_int_equal(idp_jws_key_from_pem(pem, (size_t)n, "a-es", &t->b_rs_as_a, NULL), IDP_OK);
	BIO_free(bio);
	EVP_PKEY_free(rsa);
	assert_int_equal(idp_jws_key_generate("a-es", &t->a_es, NULL), IDP_OK);
	write_jwks(t->jwks_a, &t->a_es, 1);
	b_keys[0] = t->b_rs;
	b_keys[1] = t->b_rs_as_a;
	write_jwks(t->jwks_b, b_keys, b_holds_a_kid ? 2 : 1);
}

static void
two_idps_cleanup(struct two_idps *t)
{
	idp_jws_key_unref(t->a_es);
	idp_jws_key_unref(t->b_rs);
	idp_jws_key_unref(t->b_rs_as_a);
	unlink(t->jwks_a);
	unlink(t->jwks_b);
}

/* A verifier over a and b, in that order or (b_first) the other. */
static struct human_verifier *
two_idps_verifier(struct two_idps *t, bool b_first)
{
	struct idpd_config *cfg = idpd_config_defaults();
	struct idpd_idp_cfg ics[2] = {
	    {.name = "a",
	     .issuer = "https://a.example.com",
	     .audience = "idpd",
	     .jwks_file = t->jwks_a,
	     .algs = 1u,
	     .principal_claim = "email",
	     .vouches_for_owners = true,
	     .require_email_verified = true},
	    {.name = "b",
	     .issuer = "https://b.example.com",
	     .audience = "idpd",
	     .jwks_file = t->jwks_b,
	     .algs = 2u,
	     .principal_claim = "email",
	     .vouches_for_owners = false,
	     .require_email_verified = true},
	};
	struct idpd_idp_cfg swapped[2] = {ics[1], ics[0]};
	struct human_verifier *v;
	struct idp_diag d;

	cfg->idps = b_first ? swapped : ics;
	cfg->n_idps = 2;
	idp_diag_init(&d);
	v = human_verifier_new(cfg, &d);
	cfg->idps = NULL;
	cfg->n_idps = 0;
	idpd_config_free(cfg);
	assert_non_null(v);
	return v;
}

static void
human_token_each_provider_accepted_in_either_order(void **state)
{
	struct two_idps t = {0};
	char *tok_a, *tok_b;

	(void)state;
	two_idps_init(&t, false);
	tok_a = mint(t.a_es, "https://a.example.com", "idpd", NOW_S + 600, "ann@a.example.com");
	tok_b = mint(t.b_rs, "https://b.example.com", "idpd", NOW_S + 600, "bob@b.example.com");
	for (int b_first = 0; b_first <= 1; b_first++) {
		struct human_verifier *v = two_idps_verifier(&t, b_first);
		struct human_principal p;
		const char *why = NULL;

		if (human_token_verify(v, tok_a, strlen(tok_a), &clk, &p, &why) != IDP_OK)
			fail_msg("a's ES256 token refused (b_first=%d): %s", b_first, why);
		assert_string_equal(p.idp, "a");
		assert_string_equal(p.principal, "ann@a.example.com");
		assert_true(p.vouches_for_owners);
		if (human_token_verify(v, tok_b, strlen(tok_b), &clk, &p, &why) != IDP_OK)
			fail_msg("b's RS256 token refused (b_first=%d): %s", b_first, why);
		assert_string_equal(p.idp, "b");
		assert_string_equal(p.principal, "bob@b.example.com");
		/* Each principal carries its own provider's vouches_for_owners. */
		assert_false(p.vouches_for_owners);
		human_verifier_free(v);
	}
	free(tok_a);
	free(tok_b);
	two_idps_cleanup(&t);
}

static void
human_token_kid_holder_enforces_its_alg_pin(void **state)
{
	struct two_idps t = {0};
	struct human_verifier *v;
	struct human_principal p;
	const char *why = NULL;
	char *tok;

	(void)state;
	two_idps_init(&t, false);
	/* RS256 under a's kid: a holds the kid and does not allow RS256. */
	tok = mint(t.b_rs_as_a, "https://a.example.com", "idpd", NOW_S + 600, "ann@a.example.com");
	for (int b_first = 0; b_first <= 1; b_first++) {
		v = two_idps_verifier(&t, b_first);
		assert_int_equal(human_token_verify(v, tok, strlen(tok), &clk, &p, &why),
		                 IDP_EUNAUTH);
		assert_string_equal(why, idp_jws_reason_name(IDP_JWS_ALG_NOT_ALLOWED));
		human_verifier_free(v);
	}
	free(tok);
	/* A kid no provider holds is refused. */
	v = two_idps_verifier(&t, false);
	tok = mint(idp_key, "https://a.example.com", "idpd", NOW_S + 600, "ann@a.example.com");
	assert_int_equal(human_token_verify(v, tok, strlen(tok), &clk, &p, &why), IDP_EUNAUTH);
	assert_string_equal(why, idp_jws_reason_name(IDP_JWS_KID_UNKNOWN));
	free(tok);
	human_verifier_free(v);
	two_idps_cleanup(&t);

	/* b would take this one (its key, its claims); a, first, must not pass it on. */
	two_idps_init(&t, true);
	v = two_idps_verifier(&t, false);
	tok = mint(t.b_rs_as_a, "https://b.example.com", "idpd", NOW_S + 600, "bob@b.example.com");
	assert_int_equal(human_token_verify(v, tok, strlen(tok), &clk, &p, &why), IDP_EUNAUTH);
	assert_string_equal(why, idp_jws_reason_name(IDP_JWS_ALG_NOT_ALLOWED));
	assert_string_equal(p.principal, "");
	free(tok);
	human_verifier_free(v);
	two_idps_cleanup(&t);
}

/*
 * A delegated token's act: the delegate outermost, then the parent's act
 * with its holder (the delegator) outermost, whether the parent was issued
 * with that nesting or with the earlier one (its delegator outermost).
 */
static void
delegated_act_nests_the_current_actor_outermost(void **state)
{
	struct delegation_token t = {.issuer = "idpd",
	                             .audience = "idpd",
	                             .agent_id = "cloud-agent",
	                             .delegator = "planning-agent",
	                             .jti = "jti-1",
	                             .task_id = "task_1",
	                             .scope = "cloud:read",
	                             .human = "alice@example.com",
	                             .chain_hash = "sha256:" H1_HEX,
	                             .depth = 1,
	                             .iat_s = 1700000000,
	                             .exp_s = 1700003600};
	json_t *now_form =
	    json_pack("{s:s,s:s,s:{s:s,s:s}}", "sub", "planning-agent", "sub_type", "agent", "act",
	              "sub", "alice@example.com", "sub_type", "human");
	json_t *old_form = json_pack("{s:s,s:s}", "sub", "alice@example.com", "sub_type", "human");
	json_t *want =
	    json_pack("{s:s,s:s,s:O}", "sub", "cloud-agent", "sub_type", "agent", "act", now_form);
	json_t *c, *a;

	(void)state;
	c = delegation_claims(&t, now_form);
	assert_non_null(c);
	assert_true(json_equal(json_object_get(c, "act"), want));
	json_decref(c);
	/* A root token of the earlier nesting named only the human. */
	c = delegation_claims(&t, old_form);
	assert_non_null(c);
	assert_true(json_equal(json_object_get(c, "act"), want));
	json_decref(c);
	/* As the holder's: unchanged when it is outermost, wrapped when not. */
	a = delegation_act_of(now_form, "planning-agent");
	assert_ptr_equal(a, now_form);
	json_decref(a);
	a = delegation_act_of(now_form, "cloud-agent");
	assert_true(json_equal(a, want));
	json_decref(a);
	assert_null(delegation_act_of(NULL, "cloud-agent"));
	/* Its agents, root first and the holder last, whichever the nesting. */
	{
		const char *agents[8];

		assert_int_equal(delegation_act_agents(want, "cloud-agent", agents, 8), 2);
		assert_string_equal(agents[0], "planning-agent");
		assert_string_equal(agents[1], "cloud-agent");
		assert_int_equal(delegation_act_agents(now_form, "cloud-agent", agents, 8), 2);
		assert_string_equal(agents[0], "planning-agent");
		assert_string_equal(agents[1], "cloud-agent");
		assert_int_equal(delegation_act_agents(old_form, "planning-agent", agents, 8), 1);
		assert_string_equal(agents[0], "planning-agent");
		assert_int_equal(delegation_act_agents(want, "cloud-agent", agents, 1), 1);
	}
	json_decref(want);
	json_decref(old_form);
	json_decref(now_form);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(chain_root_matches_openssl_vector),
	    cmocka_unit_test(chain_link_matches_openssl_vector),
	    cmocka_unit_test(chain_depends_on_every_input),
	    cmocka_unit_test(root_claims_carry_task_chain_and_act),
	    cmocka_unit_test(delegated_act_nests_the_current_actor_outermost),
	    cmocka_unit_test(root_claims_refuse_empty_lifetime),
	    cmocka_unit_test(human_token_valid_names_principal),
	    cmocka_unit_test(human_token_refusals_name_their_reason),
	    cmocka_unit_test(human_token_alg_none_refused),
	    cmocka_unit_test(human_token_email_rule_only_for_email_claim),
	    cmocka_unit_test(human_principal_refuses_controls_and_bad_utf8),
	    cmocka_unit_test(human_token_each_provider_accepted_in_either_order),
	    cmocka_unit_test(human_token_kid_holder_enforces_its_alg_pin),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
