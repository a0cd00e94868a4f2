/*
 * Unit tests for src/token/jws.c: signing and verifying compact JWS, the
 * classic JWT attacks one by one, keys and key sets, JWKS parsing, time
 * claims, and a cross-check against libjwt as an independent implementation.
 *
 * Test keys are generated when the group starts, never committed.  Tokens for
 * the attack tests are forged here with OpenSSL directly, so the code under
 * test never helps build its own counterexamples.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <unistd.h>
#include <cmocka.h>

#include <jwt.h>
#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>

#include "idpd/b64.h"
#include "idpd/clock.h"
#include "idpd/jws.h"

/* Internal to jws.c, visible in test builds. */
enum idp_jws_reason jws_check_signature(const struct idp_jws_key *key, const char *input,
                                        size_t len, const unsigned char *sig, size_t sig_len);

struct fixture {
	struct idp_jws_key *ec1;  /* in every set */
	struct idp_jws_key *ec2;  /* in no set: an attacker's key */
	struct idp_jws_key *rsa1; /* RS256, in the foreign set */
	EVP_PKEY *ec1_pk, *ec2_pk, *rsa1_pk;
	struct idp_jws_keyset *own;     /* ec1 */
	struct idp_jws_keyset *foreign; /* ec1 and rsa1 */
};

static struct fixture *fx;

/* ---- helpers that do not use the code under test for signing ---- */

static EVP_PKEY *
pkey_from_private(const struct idp_jws_key *k)
{
	char *pem = NULL;
	size_t len = 0;
	BIO *bio;
	EVP_PKEY *pk;

	assert_int_equal(idp_jws_key_private_pem(k, &pem, &len), IDP_OK);
	bio = BIO_new_mem_buf(pem, (int)len);
	pk = PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL);
	assert_non_null(pk);
	BIO_free(bio);
	idp_wipe(pem, len);
	free(pem);
	return pk;
}

static char *
b64u(const void *p, size_t n)
{
	return idp_b64url_encode(p, n, NULL);
}

/* Sign input with pk the JOSE way: raw r||s for EC, PKCS#1 v1.5 for RSA. */
static size_t
ossl_sign(EVP_PKEY *pk, const char *input, unsigned char *sig)
{
	unsigned char der[1024];
	size_t der_len = sizeof(der);
	EVP_MD_CTX *m = EVP_MD_CTX_new();

	assert_int_equal(EVP_DigestSignInit(m, NULL, EVP_sha256(), NULL, pk), 1);
	assert_int_equal(
	    EVP_DigestSign(m, der, &der_len, (const unsigned char *)input, strlen(input)), 1);
	EVP_MD_CTX_free(m);
	if (EVP_PKEY_get_base_id(pk) == EVP_PKEY_EC) {
		const unsigned char *p = der;
		ECDSA_SIG *es = d2i_ECDSA_SIG(NULL, &p, (long)der_len);
		const BIGNUM *r, *s;

		assert_non_null(es);
		ECDSA_SIG_get0(es, &r, &s);
		assert_int_equal(BN_bn2binpad(r, sig, 32), 32);
		assert_int_equal(BN_bn2binpad(s, sig + 32, 32), 32);
		ECDSA_SIG_free(es);
		return 64;
	}
	memcpy(sig, der, der_len);
	return der_len;
}

/*
 * Build b64(header).b64(payload).b64(sig).  With pk, sig is a real signature
 * by pk; otherwise the given bytes (sig_len may be 0).
 */
static char *
forge(const char *header, const char *payload, EVP_PKEY *pk, const unsigned char *sig,
      size_t sig_len)
{
	unsigned char buf[1024];
	char *h = b64u(header, strlen(header)), *p = b64u(payload, strlen(payload));
	char *input = idp_xasprintf("%s.%s", h, p), *s, *tok;

	if (pk != NULL) {
		sig_len = ossl_sign(pk, input, buf);
		sig = buf;
	}
	s = b64u(sig, sig_len);
	tok = idp_xasprintf("%s.%s", input, s);
	free(h);
	free(p);
	free(input);
	free(s);
	return tok;
}

/* Verify and return the reason; on success the result is checked and released. */
static enum idp_jws_reason
verify_reason(const struct idp_jws_keyset *set, const char *tok,
              const struct idp_jws_verify_opts *opts, int *rc_out)
{
	struct idp_jws_verified v;
	enum idp_jws_reason r = IDP_JWS_BAD_SIGNATURE;
	int rc = idp_jws_verify(set, tok, strlen(tok), opts, &v, &r);

	if (rc == IDP_OK) {
		assert_int_equal(r, IDP_JWS_OK);
		assert_non_null(v.claims);
		idp_jws_verified_cleanup(&v);
	} else {
		assert_int_not_equal(r, IDP_JWS_OK);
		assert_null(v.claims);
		assert_null(v.header);
	}
	if (rc_out != NULL)
		*rc_out = rc;
	return r;
}

static char *
hdr_for(const char *alg, const struct idp_jws_key *k, const char *extra)
{
	return idp_xasprintf("{\"alg\":\"%s\",\"kid\":\"%s\"%s%s}", alg, idp_jws_key_kid(k),
	                     extra ? "," : "", extra ? extra : "");
}

static const char *payload = "{\"sub\":\"agent-1\",\"exp\":4102444800}";

static int
group_setup(void **state)
{
	struct idp_diag d;
	EVP_PKEY *rsa;
	BIO *bio;
	char *pem;
	long n;
	struct idp_jws_key *both[2];

	(void)state;
	idp_diag_init(&d);
	fx = calloc(1, sizeof(*fx));
	if (idp_jws_key_generate("ec-1", &fx->ec1, &d) != IDP_OK ||
	    idp_jws_key_generate(NULL, &fx->ec2, &d) != IDP_OK)
		return -1;
	rsa = EVP_RSA_gen(2048);
	bio = BIO_new(BIO_s_mem());
	if (rsa == NULL || bio == NULL ||
	    PEM_write_bio_PrivateKey(bio, rsa, NULL, NULL, 0, NULL, NULL) != 1)
		return -1;
	n = BIO_get_mem_data(bio, &pem);
	if (idp_jws_key_from_pem(pem, (size_t)n, "rsa-1", &fx->rsa1, &d) != IDP_OK)
		return -1;
	BIO_free(bio);
	EVP_PKEY_free(rsa);
	fx->ec1_pk = pkey_from_private(fx->ec1);
	fx->ec2_pk = pkey_from_private(fx->ec2);
	fx->rsa1_pk = pkey_from_private(fx->rsa1);
	if (idp_jws_keyset_new(&fx->ec1, 1, &fx->own, &d) != IDP_OK)
		return -1;
	both[0] = fx->ec1;
	both[1] = fx->rsa1;
	if (idp_jws_keyset_new(both, 2, &fx->foreign, &d) != IDP_OK)
		return -1;
	return 0;
}

static int
group_teardown(void **state)
{
	(void)state;
	idp_jws_keyset_unref(fx->own);
	idp_jws_keyset_unref(fx->foreign);
	idp_jws_key_unref(fx->ec1);
	idp_jws_key_unref(fx->ec2);
	idp_jws_key_unref(fx->rsa1);
	EVP_PKEY_free(fx->ec1_pk);
	EVP_PKEY_free(fx->ec2_pk);
	EVP_PKEY_free(fx->rsa1_pk);
	free(fx);
	return 0;
}

/* ---- round trips ---- */

static void
jws_sign_verify_round_trip(void **state)
{
	struct idp_jws_verify_opts opts = {.typ = IDP_JWS_TYP_ACCESS};
	struct idp_jws_verified v;
	struct idp_diag d;
	enum idp_jws_reason r;
	json_t *claims =
	    json_pack("{s:s, s:i, s:s}", "sub", "agent-1", "exp", 4102444800LL, "scope", "s3:read");
	char *tok = NULL;
	size_t len = 0;

	(void)state;
	idp_diag_init(&d);
	assert_int_equal(idp_jws_sign(fx->ec1, IDP_JWS_TYP_ACCESS, claims, &tok, &len, &d), IDP_OK);
	assert_int_equal(strlen(tok), len);
	assert_int_equal(idp_jws_verify(fx->own, tok, len, &opts, &v, &r), IDP_OK);
	assert_int_equal(r, IDP_JWS_OK);
	assert_true(json_equal(v.claims, claims));
	assert_string_equal(v.kid, "ec-1");
	assert_int_equal(v.alg, IDP_JWS_ALG_ES256);
	assert_string_equal(json_string_value(json_object_get(v.header, "alg")), "ES256");
	assert_string_equal(json_string_value(json_object_get(v.header, "typ")), "at+jwt");
	idp_jws_verified_cleanup(&v);
	assert_null(v.claims);
	json_decref(claims);
	free(tok);
}

static void
jws_signature_is_raw_r_s_of_64_bytes(void **state)
{
	unsigned char sig[128];
	struct idp_diag d;
	size_t n;
	char *tok;
	const char *dot;

	(void)state;
	idp_diag_init(&d);
	for (int i = 0; i < 20; i++) {
		assert_int_equal(
		    idp_jws_sign_payload(fx->ec1, NULL, payload, strlen(payload), &tok, NULL, &d),
		    IDP_OK);
		dot = strrchr(tok, '.');
		assert_int_equal(strlen(dot + 1), 86);
		assert_int_equal(idp_b64url_decode(dot + 1, 86, sig, sizeof(sig), &n), IDP_OK);
		assert_int_equal(n, 64);
		/* A DER signature would start with a SEQUENCE tag 0x30 and length. */
		assert_int_equal(verify_reason(fx->own, tok, NULL, NULL), IDP_JWS_OK);
		free(tok);
	}
}

static void
jws_sign_payload_signs_bytes_as_given(void **state)
{
	const char *pre = "{\"b\":1,\"a\":2}";
	struct idp_jws_verified v;
	struct idp_diag d;
	char *tok, *dot1, *part;

	(void)state;
	idp_diag_init(&d);
	assert_int_equal(idp_jws_sign_payload(fx->ec1, NULL, pre, strlen(pre), &tok, NULL, &d),
	                 IDP_OK);
	dot1 = strchr(tok, '.');
	part = b64u(pre, strlen(pre));
	assert_memory_equal(dot1 + 1, part, strlen(part));
	assert_int_equal(idp_jws_verify(fx->own, tok, strlen(tok), NULL, &v, NULL), IDP_OK);
	assert_int_equal(json_integer_value(json_object_get(v.claims, "a")), 2);
	assert_null(json_object_get(v.header, "typ"));
	idp_jws_verified_cleanup(&v);
	free(part);
	free(tok);
}

static void
jws_verifies_rfc7515_a3_vector(void **state)
{
	/* RFC 7515 appendix A.3: ES256 with the JWK of A.3.1. */
	static const char *x = "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU";
	static const char *y = "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0";
	static const char *input =
	    "eyJhbGciOiJFUzI1NiJ9."
	    "eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290"
	    "Ijp0cnVlfQ";
	static const char *sig64 =
	    "DtEhU3ljbEg8L38VWAfUAqOyKAM6-Xx-F4GawxaepmXFCgfTjDxw5djxLa8ISlSApmWQxfKTUJqPP3-"
	    "Kg6NU1Q";
	json_t *jwk =
	    json_pack("{s:s, s:s, s:s, s:s}", "kty", "EC", "crv", "P-256", "x", x, "y", y);
	struct idp_jws_key *k = NULL;
	struct idp_jws_keyset *set = NULL;
	unsigned char sig[64];
	struct idp_diag d;
	char *tok;
	size_t n;

	(void)state;
	idp_diag_init(&d);
	assert_int_equal(idp_jws_key_from_jwk(jwk, &k, &d), IDP_OK);
	assert_false(idp_jws_key_has_private(k));
	assert_int_equal(idp_b64url_decode(sig64, strlen(sig64), sig, sizeof(sig), &n), IDP_OK);
	assert_int_equal(n, 64);
	assert_int_equal(jws_check_signature(k, input, strlen(input), sig, 64), IDP_JWS_OK);
	sig[63] ^= 1;
	assert_int_equal(jws_check_signature(k, input, strlen(input), sig, 64),
	                 IDP_JWS_BAD_SIGNATURE);
	/* The vector's header has no kid, which idpd requires. */
	assert_int_equal(idp_jws_keyset_new(&k, 1, &set, &d), IDP_OK);
	tok = idp_xasprintf("%s.%s", input, sig64);
	assert_int_equal(verify_reason(set, tok, NULL, NULL), IDP_JWS_KID_MISSING);
	free(tok);
	idp_jws_keyset_unref(set);
	idp_jws_key_unref(k);
	json_decref(jwk);
}

/* ---- the classic attacks ---- */

static void
jws_rejects_alg_none(void **state)
{
	static const char *const nones[] = {"none", "None", "NONE", "nOnE"};
	int rc;

	(void)state;
	for (size_t i = 0; i < sizeof(nones) / sizeof(nones[0]); i++) {
		char *h = hdr_for(nones[i], fx->ec1, NULL);
		char *t1 = forge(h, payload, NULL, NULL, 0);
		char *t2 = forge(h, payload, fx->ec1_pk, NULL, 0);
		struct idp_jws_verify_opts all = {.algs = ~0u};

		/* "h.p." is the unsecured JWS form. */
		assert_int_equal(verify_reason(fx->own, t1, NULL, &rc), IDP_JWS_MALFORMED);
		assert_int_equal(verify_reason(fx->own, t2, NULL, &rc), IDP_JWS_ALG_NOT_ALLOWED);
		assert_int_equal(rc, IDP_EUNAUTH);
		assert_int_equal(verify_reason(fx->own, t2, &all, NULL), IDP_JWS_ALG_NOT_ALLOWED);
		free(h);
		free(t1);
		free(t2);
	}
}

static void
jws_rejects_hs256_with_public_key_as_secret(void **state)
{
	char *pem = idp_jws_key_public_pem(fx->ec1);
	json_t *jwk = idp_jws_key_public_jwk(fx->ec1);
	char *jwk_text = json_dumps(jwk, JSON_COMPACT);
	char *der_b64;
	unsigned char *der = NULL;
	int der_len;
	const struct {
		const void *secret;
		size_t len;
	} secrets[] = {
	    {pem, strlen(pem)},
	    {jwk_text, strlen(jwk_text)},
	    {NULL, 0},
	};
	struct idp_jws_verify_opts all = {.algs = ~0u};

	(void)state;
	/* Also the DER of the public key, as some confused verifiers would use it. */
	der_len = i2d_PUBKEY(fx->ec1_pk, &der);
	assert_true(der_len > 0);
	der_b64 = (char *)der;
	for (size_t i = 0; i < sizeof(secrets) / sizeof(secrets[0]); i++) {
		const void *sec = secrets[i].secret ? secrets[i].secret : der_b64;
		size_t sec_len = secrets[i].secret ? secrets[i].len : (size_t)der_len;
		char *h = hdr_for("HS256", fx->ec1, "\"typ\":\"at+jwt\"");
		char *hb = b64u(h, strlen(h)), *pb = b64u(payload, strlen(payload));
		char *input = idp_xasprintf("%s.%s", hb, pb), *sb, *tok;
		unsigned char mac[32];
		unsigned mac_len = 0;

		assert_non_null(HMAC(EVP_sha256(), sec, (int)sec_len, (const unsigned char *)input,
		                     strlen(input), mac, &mac_len));
		sb = b64u(mac, mac_len);
		tok = idp_xasprintf("%s.%s", input, sb);
		assert_int_equal(verify_reason(fx->own, tok, NULL, NULL), IDP_JWS_ALG_NOT_ALLOWED);
		assert_int_equal(verify_reason(fx->foreign, tok, &all, NULL),
		                 IDP_JWS_ALG_NOT_ALLOWED);
		free(h);
		free(hb);
		free(pb);
		free(input);
		free(sb);
		free(tok);
	}
	OPENSSL_free(der);
	free(pem);
	free(jwk_text);
	json_decref(jwk);
}

static void
jws_rejects_stripped_signature(void **state)
{
	struct idp_diag d;
	char *tok, *dot, *two;
	int rc;

	(void)state;
	idp_diag_init(&d);
	assert_int_equal(
	    idp_jws_sign_payload(fx->ec1, NULL, payload, strlen(payload), &tok, NULL, &d), IDP_OK);
	dot = strrchr(tok, '.');
	dot[1] = '\0'; /* header.payload. */
	assert_int_equal(verify_reason(fx->own, tok, NULL, &rc), IDP_JWS_MALFORMED);
	assert_int_equal(rc, IDP_EINVAL);
	two = idp_xstrndup(tok, (size_t)(dot - tok)); /* header.payload */
	assert_int_equal(verify_reason(fx->own, two, NULL, NULL), IDP_JWS_MALFORMED);
	free(two);
	free(tok);
}

static void
jws_rejects_zero_r_and_s(void **state)
{
	unsigned char zero[64] = {0};
	char *h = hdr_for("ES256", fx->ec1, NULL);
	char *tok = forge(h, payload, NULL, zero, sizeof(zero));
	int rc;

	(void)state;
	/* CVE-2022-21449: r = s = 0 "verifies" under a broken check. */
	assert_int_equal(verify_reason(fx->own, tok, NULL, &rc), IDP_JWS_BAD_SIGNATURE_FORMAT);
	assert_int_equal(rc, IDP_EUNAUTH);
	free(tok);
	free(h);
}

static void
jws_rejects_r_or_s_equal_to_group_order(void **state)
{
	static const unsigned char n[32] = {
	    0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff,
	    0xff, 0xff, 0xff, 0xff, 0xff, 0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17,
	    0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51,
	};
	char *h = hdr_for("ES256", fx->ec1, NULL);
	char *good = forge(h, payload, fx->ec1_pk, NULL, 0);
	unsigned char real[64], sig[64];
	size_t len;
	char *tok;

	(void)state;
	assert_int_equal(idp_b64url_decode(strrchr(good, '.') + 1, 86, real, 64, &len), IDP_OK);
	/* r = n, s real; r real, s = n; r = 0, s real; r = n + 1 (0xff.. > n). */
	for (int c = 0; c < 5; c++) {
		memcpy(sig, real, 64);
		if (c == 0)
			memcpy(sig, n, 32);
		else if (c == 1)
			memcpy(sig + 32, n, 32);
		else if (c == 2)
			memset(sig, 0, 32);
		else if (c == 3)
			memset(sig + 32, 0, 32);
		else
			memset(sig, 0xff, 32);
		tok = forge(h, payload, NULL, sig, 64);
		assert_int_equal(verify_reason(fx->own, tok, NULL, NULL),
		                 IDP_JWS_BAD_SIGNATURE_FORMAT);
		free(tok);
	}
	/* r = n - 1 is in range: refused by the arithmetic, not the range check. */
	memcpy(sig, real, 64);
	memcpy(sig, n, 32);
	sig[31]--;
	tok = forge(h, payload, NULL, sig, 64);
	assert_int_equal(verify_reason(fx->own, tok, NULL, NULL), IDP_JWS_BAD_SIGNATURE);
	free(tok);
	assert_int_equal(verify_reason(fx->own, good, NULL, NULL), IDP_JWS_OK);
	free(good);
	free(h);
}

static char *splice(const char *tok, int i, const char *part);

/* The s of an ES256 token (its last 32 signature bytes) as a new BIGNUM. */
static BIGNUM *
token_s(const char *tok)
{
	unsigned char sig[64];
	size_t len = 0;

	assert_int_equal(idp_b64url_decode(strrchr(tok, '.') + 1, 86, sig, 64, &len), IDP_OK);
	assert_int_equal(len, 64);
	return BN_bin2bn(sig + 32, 32, NULL);
}

/* tok with s replaced by n - s: the other valid spelling of its signature. */
static char *
high_s_twin(const char *tok)
{
	static const unsigned char order[32] = {
	    0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff,
	    0xff, 0xff, 0xff, 0xff, 0xff, 0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17,
	    0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51,
	};
	BIGNUM *n = BN_bin2bn(order, 32, NULL), *s = token_s(tok);
	unsigned char sig[64];
	size_t len = 0;
	char *enc, *twin;

	assert_int_equal(idp_b64url_decode(strrchr(tok, '.') + 1, 86, sig, 64, &len), IDP_OK);
	assert_int_equal(BN_sub(s, n, s), 1);
	assert_int_equal(BN_bn2binpad(s, sig + 32, 32), 32);
	enc = b64u(sig, 64);
	twin = splice(tok, 2, enc);
	free(enc);
	BN_free(n);
	BN_free(s);
	return twin;
}

/*
 * ECDSA's two spellings of one signature: idpd signs only the one with the
 * lower s, and with low_s (its own tokens) refuses the other, which
 * verifies as well; without it (foreign tokens) either is accepted.
 */
static void
jws_signs_low_s_and_refuses_the_high_s_twin_of_its_own_tokens(void **state)
{
	static const unsigned char half[32] = {
	    0x7f, 0xff, 0xff, 0xff, 0x80, 0x00, 0x00, 0x00, 0x7f, 0xff, 0xff,
	    0xff, 0xff, 0xff, 0xff, 0xff, 0xde, 0x73, 0x7d, 0x56, 0xd3, 0x8b,
	    0xcf, 0x42, 0x79, 0xdc, 0xe5, 0x61, 0x7e, 0x31, 0x92, 0xa8,
	};
	const struct idp_jws_verify_opts own = {.typ = IDP_JWS_TYP_ACCESS, .low_s = true};
	const struct idp_jws_verify_opts any = {.typ = IDP_JWS_TYP_ACCESS};
	BIGNUM *h = BN_bin2bn(half, 32, NULL);
	char *tok = NULL, *twin;
	int rc;

	(void)state;
	/* Half of the raw signatures would have a high s: 64 in a row do not. */
	for (int i = 0; i < 64; i++) {
		json_t *claims = json_pack("{s:s,s:i}", "sub", "agent-1", "n", i);
		BIGNUM *s;

		free(tok);
		tok = NULL;
		assert_int_equal(
		    idp_jws_sign(fx->ec1, IDP_JWS_TYP_ACCESS, claims, &tok, NULL, NULL), IDP_OK);
		json_decref(claims);
		s = token_s(tok);
		assert_true(BN_cmp(s, h) <= 0);
		BN_free(s);
		assert_int_equal(verify_reason(fx->own, tok, &own, NULL), IDP_JWS_OK);
	}
	twin = high_s_twin(tok);
	assert_int_equal(verify_reason(fx->own, twin, &any, NULL), IDP_JWS_OK);
	assert_int_equal(verify_reason(fx->own, twin, &own, &rc), IDP_JWS_BAD_SIGNATURE_FORMAT);
	assert_int_equal(rc, IDP_EUNAUTH);
	free(twin);
	free(tok);
	BN_free(h);
}

static void
jws_rejects_wrong_signature_length(void **state)
{
	unsigned char sig[72];
	char *h = hdr_for("ES256", fx->ec1, NULL);
	char *good = forge(h, payload, fx->ec1_pk, NULL, 0), *tok;
	size_t len;

	(void)state;
	assert_int_equal(idp_b64url_decode(strrchr(good, '.') + 1, 86, sig, 64, &len), IDP_OK);
	tok = forge(h, payload, NULL, sig, 63);
	assert_int_equal(verify_reason(fx->own, tok, NULL, NULL), IDP_JWS_BAD_SIGNATURE_FORMAT);
	free(tok);
	sig[64] = 0;
	tok = forge(h, payload, NULL, sig, 65);
	assert_int_equal(verify_reason(fx->own, tok, NULL, NULL), IDP_JWS_BAD_SIGNATURE_FORMAT);
	free(tok);
	free(good);
	free(h);
}

/* Replace part i (0, 1, 2) of a token with new text. */
static char *
splice(const char *tok, int i, const char *part)
{
	const char *d1 = strchr(tok, '.'), *d2 = strchr(d1 + 1, '.');

	if (i == 0)
		return idp_xasprintf("%s%s", part, d1);
	if (i == 1)
		return idp_xasprintf("%.*s.%s%s", (int)(d1 - tok), tok, part, d2);
	return idp_xasprintf("%.*s.%s", (int)(d2 - tok), tok, part);
}

static void
jws_rejects_modified_payload(void **state)
{
	const char *evil = "{\"sub\":\"agent-1\",\"exp\":4102444800,\"scope\":\"admin\"}";
	struct idp_diag d;
	char *tok, *pb, *bad;

	(void)state;
	idp_diag_init(&d);
	assert_int_equal(
	    idp_jws_sign_payload(fx->ec1, NULL, payload, strlen(payload), &tok, NULL, &d), IDP_OK);
	pb = b64u(evil, strlen(evil));
	bad = splice(tok, 1, pb);
	assert_int_equal(verify_reason(fx->own, bad, NULL, NULL), IDP_JWS_BAD_SIGNATURE);
	free(bad);
	free(pb);
	free(tok);
}

static void
jws_rejects_modified_header(void **state)
{
	struct idp_jws_verify_opts opts = {.typ = IDP_JWS_TYP_IDENTITY};
	char *h = hdr_for("ES256", fx->ec1, "\"typ\":\"at+jwt\"");
	char *h2 = hdr_for("ES256", fx->ec1, "\"typ\":\"" IDP_JWS_TYP_IDENTITY "\"");
	char *tok = forge(h, payload, fx->ec1_pk, NULL, 0);
	char *hb = b64u(h2, strlen(h2));
	char *bad = splice(tok, 0, hb);

	(void)state;
	/* Relabelling an access token as an identity credential breaks the signature. */
	assert_int_equal(verify_reason(fx->own, bad, &opts, NULL), IDP_JWS_BAD_SIGNATURE);
	free(h);
	free(h2);
	free(tok);
	free(hb);
	free(bad);
}

static void
jws_rejects_unknown_kid(void **state)
{
	struct idp_diag d;
	char *tok;

	(void)state;
	idp_diag_init(&d);
	assert_int_equal(
	    idp_jws_sign_payload(fx->ec2, NULL, payload, strlen(payload), &tok, NULL, &d), IDP_OK);
	assert_int_equal(verify_reason(fx->own, tok, NULL, NULL), IDP_JWS_KID_UNKNOWN);
	free(tok);
}

static void
jws_rejects_missing_or_non_string_kid(void **state)
{
	static const char *const hdrs[] = {
	    "{\"alg\":\"ES256\"}",
	    "{\"alg\":\"ES256\",\"kid\":1}",
	    "{\"alg\":\"ES256\",\"kid\":null}",
	    "{\"alg\":\"ES256\",\"kid\":[\"ec-1\"]}",
	};

	(void)state;
	for (size_t i = 0; i < sizeof(hdrs) / sizeof(hdrs[0]); i++) {
		char *tok = forge(hdrs[i], payload, fx->ec1_pk, NULL, 0);

		assert_int_equal(verify_reason(fx->own, tok, NULL, NULL), IDP_JWS_KID_MISSING);
		free(tok);
	}
}

static void
jws_rejects_injected_key_headers(void **state)
{
	json_t *evil_jwk = idp_jws_key_public_jwk(fx->ec2);
	char *evil = json_dumps(evil_jwk, JSON_COMPACT);
	char *extras[4];

	(void)state;
	extras[0] = idp_xasprintf("\"jwk\":%s", evil);
	extras[1] = idp_xstrdup("\"jku\":\"https://attacker.example/jwks.json\"");
	extras[2] = idp_xstrdup("\"x5u\":\"https://attacker.example/cert.pem\"");
	extras[3] = idp_xstrdup("\"x5c\":[\"MIIBszCCAVmgAwIBAgIUQ\"]");
	for (int i = 0; i < 4; i++) {
		/* Signed by the trusted key: the header alone is the reason. */
		char *h = hdr_for("ES256", fx->ec1, extras[i]);
		char *t1 = forge(h, payload, fx->ec1_pk, NULL, 0);
		/* Signed by the attacker's key, naming it by kid and by the header. */
		char *h2 = hdr_for("ES256", fx->ec2, extras[i]);
		char *t2 = forge(h2, payload, fx->ec2_pk, NULL, 0);

		assert_int_equal(verify_reason(fx->own, t1, NULL, NULL), IDP_JWS_KEY_IN_HEADER);
		assert_int_equal(verify_reason(fx->own, t2, NULL, NULL), IDP_JWS_KEY_IN_HEADER);
		free(h);
		free(h2);
		free(t1);
		free(t2);
		free(extras[i]);
	}
	free(evil);
	json_decref(evil_jwk);
}

static void
jws_rejects_crit_header(void **state)
{
	char *h = hdr_for("ES256", fx->ec1, "\"crit\":[\"exp\"],\"exp\":1");
	char *tok = forge(h, payload, fx->ec1_pk, NULL, 0);

	(void)state;
	assert_int_equal(verify_reason(fx->own, tok, NULL, NULL), IDP_JWS_CRIT);
	free(tok);
	free(h);
}

static void
jws_rejects_duplicate_header_members(void **state)
{
	char *h = idp_xasprintf("{\"alg\":\"ES256\",\"kid\":\"ec-1\",\"alg\":\"none\"}");
	char *tok = forge(h, payload, fx->ec1_pk, NULL, 0);
	char *h2 = idp_xasprintf("{\"alg\":\"ES256\",\"kid\":\"other\",\"kid\":\"ec-1\"}");
	char *tok2 = forge(h2, payload, fx->ec1_pk, NULL, 0);
	int rc;

	(void)state;
	assert_int_equal(verify_reason(fx->own, tok, NULL, &rc), IDP_JWS_BAD_HEADER);
	assert_int_equal(rc, IDP_EINVAL);
	assert_int_equal(verify_reason(fx->own, tok2, NULL, NULL), IDP_JWS_BAD_HEADER);
	free(tok);
	free(h);
	free(tok2);
	free(h2);
}

static void
jws_rejects_duplicate_payload_members(void **state)
{
	const char *dup = "{\"sub\":\"agent-1\",\"scope\":\"read\",\"scope\":\"admin\"}";
	struct idp_diag d;
	char *tok;
	int rc;

	(void)state;
	idp_diag_init(&d);
	assert_int_equal(idp_jws_sign_payload(fx->ec1, NULL, dup, strlen(dup), &tok, NULL, &d),
	                 IDP_OK);
	assert_int_equal(verify_reason(fx->own, tok, NULL, &rc), IDP_JWS_BAD_PAYLOAD);
	assert_int_equal(rc, IDP_EINVAL);
	free(tok);
}

static void
jws_rejects_non_object_header_and_payload(void **state)
{
	char *t1 = forge("[\"ES256\"]", payload, fx->ec1_pk, NULL, 0);
	char *t2 = forge("not json", payload, fx->ec1_pk, NULL, 0);
	char *h = hdr_for("ES256", fx->ec1, NULL);
	char *t3 = forge(h, "[1,2]", fx->ec1_pk, NULL, 0);
	char *t4 = forge(h, "{\"a\":1} trailing", fx->ec1_pk, NULL, 0);

	(void)state;
	assert_int_equal(verify_reason(fx->own, t1, NULL, NULL), IDP_JWS_BAD_HEADER);
	assert_int_equal(verify_reason(fx->own, t2, NULL, NULL), IDP_JWS_BAD_HEADER);
	assert_int_equal(verify_reason(fx->own, t3, NULL, NULL), IDP_JWS_BAD_PAYLOAD);
	assert_int_equal(verify_reason(fx->own, t4, NULL, NULL), IDP_JWS_BAD_PAYLOAD);
	free(t1);
	free(t2);
	free(t3);
	free(t4);
	free(h);
}

static void
jws_rejects_padding_and_whitespace_in_parts(void **state)
{
	struct idp_diag d;
	char *tok, *bad;
	size_t len;
	const char *d1;

	(void)state;
	idp_diag_init(&d);
	/* A payload of 3n+1 bytes makes the parts need padding in padded base64. */
	assert_int_equal(idp_jws_sign_payload(fx->ec1, NULL, "{\"a\":1}", 7, &tok, &len, &d),
	                 IDP_OK);
	d1 = strchr(tok, '.');
	bad = idp_xasprintf("%.*s==.%s", (int)(d1 - tok), tok, d1 + 1);
	assert_int_equal(verify_reason(fx->own, bad, NULL, NULL), IDP_JWS_BAD_BASE64);
	free(bad);
	bad = idp_xasprintf("%s=", tok);
	assert_int_equal(verify_reason(fx->own, bad, NULL, NULL), IDP_JWS_BAD_BASE64);
	free(bad);
	bad = idp_xasprintf("%s\n", tok);
	assert_int_equal(verify_reason(fx->own, bad, NULL, NULL), IDP_JWS_BAD_BASE64);
	free(bad);
	bad = idp_xasprintf(" %s", tok);
	assert_int_equal(verify_reason(fx->own, bad, NULL, NULL), IDP_JWS_BAD_BASE64);
	free(bad);
	bad = idp_xasprintf("%.*s .%s", (int)(d1 - tok), tok, d1 + 1);
	assert_int_equal(verify_reason(fx->own, bad, NULL, NULL), IDP_JWS_BAD_BASE64);
	free(bad);
	/* Standard-alphabet characters are not base64url. */
	bad = idp_xstrdup(tok);
	bad[len - 1] = '+';
	assert_int_equal(verify_reason(fx->own, bad, NULL, NULL), IDP_JWS_BAD_BASE64);
	free(bad);
	assert_int_equal(verify_reason(fx->own, tok, NULL, NULL), IDP_JWS_OK);
	free(tok);
}

static void
jws_rejects_wrong_number_of_parts(void **state)
{
	static const char *const bad[] = {
	    "", ".", "..", "...", "abc", "abc.def", "a.b.c.d", "a.b.c.d.e", ".b.c", "a..c",
	};

	(void)state;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		assert_int_equal(verify_reason(fx->own, bad[i], NULL, NULL), IDP_JWS_MALFORMED);
}

static void
jws_checks_typ(void **state)
{
	struct idp_jws_verify_opts at = {.typ = IDP_JWS_TYP_ACCESS};
	struct idp_jws_verify_opts id = {.typ = IDP_JWS_TYP_IDENTITY};
	static const char *const same[] = {"at+jwt", "AT+JWT", "application/at+jwt",
	                                   "Application/At+Jwt"};
	char *h, *tok;

	(void)state;
	for (size_t i = 0; i < sizeof(same) / sizeof(same[0]); i++) {
		char *extra = idp_xasprintf("\"typ\":\"%s\"", same[i]);

		h = hdr_for("ES256", fx->ec1, extra);
		tok = forge(h, payload, fx->ec1_pk, NULL, 0);
		assert_int_equal(verify_reason(fx->own, tok, &at, NULL), IDP_JWS_OK);
		assert_int_equal(verify_reason(fx->own, tok, &id, NULL), IDP_JWS_TYP_MISMATCH);
		free(extra);
		free(h);
		free(tok);
	}
	/* No typ where one is expected; a non-string typ; a JWT. */
	h = hdr_for("ES256", fx->ec1, NULL);
	tok = forge(h, payload, fx->ec1_pk, NULL, 0);
	assert_int_equal(verify_reason(fx->own, tok, &at, NULL), IDP_JWS_TYP_MISMATCH);
	assert_int_equal(verify_reason(fx->own, tok, NULL, NULL), IDP_JWS_OK);
	free(h);
	free(tok);
	h = hdr_for("ES256", fx->ec1, "\"typ\":7");
	tok = forge(h, payload, fx->ec1_pk, NULL, 0);
	assert_int_equal(verify_reason(fx->own, tok, NULL, NULL), IDP_JWS_TYP_MISMATCH);
	free(h);
	free(tok);
	h = hdr_for("ES256", fx->ec1, "\"typ\":\"JWT\"");
	tok = forge(h, payload, fx->ec1_pk, NULL, 0);
	assert_int_equal(verify_reason(fx->own, tok, &at, NULL), IDP_JWS_TYP_MISMATCH);
	free(h);
	free(tok);
	assert_false(idp_jws_typ_matches("text/at+jwt", "at+jwt"));
	assert_false(idp_jws_typ_matches("application/at+jwt/x", "at+jwt"));
	assert_true(idp_jws_typ_matches(NULL, NULL));
}

static void
jws_rejects_oversized_token(void **state)
{
	struct idp_jws_verify_opts small = {.max_len = 100};
	char *big = malloc(IDP_JWS_MAX_TOKEN + 2);
	json_t *claims = json_object();
	struct idp_diag d;
	char *tok = NULL, *filler;
	int rc;

	(void)state;
	idp_diag_init(&d);
	memset(big, 'A', IDP_JWS_MAX_TOKEN + 1);
	big[10] = '.';
	big[20] = '.';
	big[IDP_JWS_MAX_TOKEN + 1] = '\0';
	assert_int_equal(verify_reason(fx->own, big, NULL, &rc), IDP_JWS_TOO_LARGE);
	assert_int_equal(rc, IDP_ETOOBIG);
	/* The signer will not produce what the verifier refuses. */
	filler = calloc(1, 7000);
	memset(filler, 'x', 6999);
	json_object_set_new(claims, "pad", json_string(filler));
	assert_int_equal(idp_jws_sign(fx->ec1, NULL, claims, &tok, NULL, &d), IDP_ETOOBIG);
	assert_null(tok);
	/* A caller may lower the bound. */
	assert_int_equal(
	    idp_jws_sign_payload(fx->ec1, NULL, payload, strlen(payload), &tok, NULL, &d), IDP_OK);
	assert_int_equal(verify_reason(fx->own, tok, &small, NULL), IDP_JWS_TOO_LARGE);
	assert_int_equal(verify_reason(fx->own, tok, NULL, NULL), IDP_JWS_OK);
	free(tok);
	free(filler);
	free(big);
	json_decref(claims);
}

static void
jws_rejects_rs256_where_only_es256_allowed(void **state)
{
	struct idp_jws_verify_opts rs = {.algs = IDP_JWS_ALLOW_ES256 | IDP_JWS_ALLOW_RS256};
	struct idp_diag d;
	char *tok;

	(void)state;
	idp_diag_init(&d);
	assert_int_equal(
	    idp_jws_sign_payload(fx->rsa1, NULL, payload, strlen(payload), &tok, NULL, &d), IDP_OK);
	assert_int_equal(verify_reason(fx->foreign, tok, NULL, NULL), IDP_JWS_ALG_NOT_ALLOWED);
	assert_int_equal(verify_reason(fx->foreign, tok, &rs, NULL), IDP_JWS_OK);
	free(tok);
}

static void
jws_rejects_es256_where_only_rs256_allowed(void **state)
{
	struct idp_jws_verify_opts rs = {.algs = IDP_JWS_ALLOW_RS256};
	struct idp_diag d;
	char *tok;

	(void)state;
	idp_diag_init(&d);
	assert_int_equal(
	    idp_jws_sign_payload(fx->ec1, NULL, payload, strlen(payload), &tok, NULL, &d), IDP_OK);
	assert_int_equal(verify_reason(fx->foreign, tok, &rs, NULL), IDP_JWS_ALG_NOT_ALLOWED);
	assert_int_equal(verify_reason(fx->foreign, tok, NULL, NULL), IDP_JWS_OK);
	free(tok);
}

static void
jws_pins_alg_to_key(void **state)
{
	struct idp_jws_verify_opts both = {.algs = IDP_JWS_ALLOW_ES256 | IDP_JWS_ALLOW_RS256};
	char *h1 = hdr_for("RS256", fx->ec1, NULL);
	char *t1 = forge(h1, payload, fx->rsa1_pk, NULL, 0);
	char *h2 = hdr_for("ES256", fx->rsa1, NULL);
	char *t2 = forge(h2, payload, fx->ec1_pk, NULL, 0);

	(void)state;
	assert_int_equal(verify_reason(fx->foreign, t1, &both, NULL), IDP_JWS_ALG_KEY_MISMATCH);
	assert_int_equal(verify_reason(fx->foreign, t2, &both, NULL), IDP_JWS_ALG_KEY_MISMATCH);
	free(h1);
	free(t1);
	free(h2);
	free(t2);
}

static void
jws_rejects_other_algorithms_and_spellings(void **state)
{
	static const char *const algs[] = {"ES384", "ES512",  "PS256", "RS512",
	                                   "es256", "ES256 ", "EdDSA", ""};
	struct idp_jws_verify_opts all = {.algs = ~0u};

	(void)state;
	for (size_t i = 0; i < sizeof(algs) / sizeof(algs[0]); i++) {
		char *h = hdr_for(algs[i], fx->ec1, NULL);
		char *tok = forge(h, payload, fx->ec1_pk, NULL, 0);

		assert_int_equal(verify_reason(fx->own, tok, &all, NULL), IDP_JWS_ALG_NOT_ALLOWED);
		free(h);
		free(tok);
	}
	{
		char *tok = forge("{\"kid\":\"ec-1\"}", payload, fx->ec1_pk, NULL, 0);

		assert_int_equal(verify_reason(fx->own, tok, NULL, NULL), IDP_JWS_ALG_MISSING);
		free(tok);
		tok = forge("{\"alg\":256,\"kid\":\"ec-1\"}", payload, fx->ec1_pk, NULL, 0);
		assert_int_equal(verify_reason(fx->own, tok, NULL, NULL), IDP_JWS_ALG_NOT_ALLOWED);
		free(tok);
	}
}

/* ---- libjwt as an independent implementation ---- */

/*
 * libjwt 1.10 refuses on decode any typ other than "JWT", so it checks
 * tokens signed without a typ or with "JWT"; at+jwt tokens are checked with
 * OpenSSL directly in the next test.
 */
static void
jws_token_verifies_with_libjwt(void **state)
{
	static const char *const typs[] = {NULL, "JWT"};
	char *pub = idp_jws_key_public_pem(fx->ec1);
	json_t *claims = json_pack("{s:s, s:s}", "sub", "agent-7", "iss", "https://idpd.test");
	struct idp_diag d;

	(void)state;
	idp_diag_init(&d);
	for (size_t i = 0; i < sizeof(typs) / sizeof(typs[0]); i++) {
		jwt_t *j = NULL;
		char *tok;

		assert_int_equal(idp_jws_sign(fx->ec1, typs[i], claims, &tok, NULL, &d), IDP_OK);
		assert_int_equal(jwt_decode(&j, tok, (const unsigned char *)pub, (int)strlen(pub)),
		                 0);
		assert_int_equal(jwt_get_alg(j), JWT_ALG_ES256);
		assert_string_equal(jwt_get_grant(j, "sub"), "agent-7");
		assert_string_equal(jwt_get_header(j, "kid"), "ec-1");
		jwt_free(j);
		/* And libjwt sees a forgery for what it is. */
		tok[strlen(tok) - 2] = tok[strlen(tok) - 2] == 'A' ? 'B' : 'A';
		j = NULL;
		assert_int_not_equal(
		    jwt_decode(&j, tok, (const unsigned char *)pub, (int)strlen(pub)), 0);
		jwt_free(j);
		free(tok);
	}
	free(pub);
	json_decref(claims);
}

/* Verify a compact ES256 token with OpenSSL alone (raw r||s -> DER here). */
static int
ossl_verify_es256(EVP_PKEY *pk, const char *tok)
{
	const char *dot = strrchr(tok, '.');
	unsigned char raw[64], *der = NULL;
	size_t n;
	ECDSA_SIG *es = ECDSA_SIG_new();
	EVP_MD_CTX *m = EVP_MD_CTX_new();
	int der_len, ok;

	assert_int_equal(idp_b64url_decode(dot + 1, strlen(dot + 1), raw, sizeof(raw), &n), IDP_OK);
	assert_int_equal(n, 64);
	assert_int_equal(
	    ECDSA_SIG_set0(es, BN_bin2bn(raw, 32, NULL), BN_bin2bn(raw + 32, 32, NULL)), 1);
	der_len = i2d_ECDSA_SIG(es, &der);
	assert_true(der_len > 0);
	assert_int_equal(EVP_DigestVerifyInit(m, NULL, EVP_sha256(), NULL, pk), 1);
	ok = EVP_DigestVerify(m, der, (size_t)der_len, (const unsigned char *)tok,
	                      (size_t)(dot - tok));
	EVP_MD_CTX_free(m);
	ECDSA_SIG_free(es);
	OPENSSL_free(der);
	return ok;
}

static void
jws_access_token_verifies_with_openssl_directly(void **state)
{
	char *pub = idp_jws_key_public_pem(fx->ec1);
	BIO *bio = BIO_new_mem_buf(pub, -1);
	EVP_PKEY *pk = PEM_read_bio_PUBKEY(bio, NULL, NULL, NULL);
	struct idp_diag d;
	char *tok;

	(void)state;
	idp_diag_init(&d);
	assert_non_null(pk);
	assert_int_equal(idp_jws_sign_payload(fx->ec1, IDP_JWS_TYP_ACCESS, payload, strlen(payload),
	                                      &tok, NULL, &d),
	                 IDP_OK);
	assert_int_equal(ossl_verify_es256(pk, tok), 1);
	tok[3] = tok[3] == 'A' ? 'B' : 'A';
	assert_int_not_equal(ossl_verify_es256(pk, tok), 1);
	free(tok);
	EVP_PKEY_free(pk);
	BIO_free(bio);
	free(pub);
}

/*
 * r or s with a leading zero byte (1 in 128 signatures) is where hand-written
 * DER conversion goes wrong.  Sign until both directions have met one:
 * idpd's tokens checked by OpenSSL, and OpenSSL's checked by idpd.
 */
static void
jws_signatures_with_leading_zero_convert_both_ways(void **state)
{
	char *h = hdr_for("ES256", fx->ec1, NULL), *pub = idp_jws_key_public_pem(fx->ec1);
	BIO *bio = BIO_new_mem_buf(pub, -1);
	EVP_PKEY *pk = PEM_read_bio_PUBKEY(bio, NULL, NULL, NULL);
	int seen_ours = 0, seen_theirs = 0;
	struct idp_diag d;

	(void)state;
	idp_diag_init(&d);
	for (int i = 0; i < 20000 && (seen_ours < 3 || seen_theirs < 3); i++) {
		unsigned char sig[64];
		size_t n;
		char *ours, *theirs;

		assert_int_equal(
		    idp_jws_sign_payload(fx->ec1, NULL, payload, strlen(payload), &ours, NULL, &d),
		    IDP_OK);
		assert_int_equal(idp_b64url_decode(strrchr(ours, '.') + 1, 86, sig, 64, &n),
		                 IDP_OK);
		if (sig[0] == 0 || sig[32] == 0) {
			assert_int_equal(ossl_verify_es256(pk, ours), 1);
			seen_ours++;
		}
		theirs = forge(h, payload, fx->ec1_pk, NULL, 0);
		assert_int_equal(idp_b64url_decode(strrchr(theirs, '.') + 1, 86, sig, 64, &n),
		                 IDP_OK);
		if (sig[0] == 0 || sig[32] == 0) {
			assert_int_equal(verify_reason(fx->own, theirs, NULL, NULL), IDP_JWS_OK);
			seen_theirs++;
		}
		free(ours);
		free(theirs);
	}
	assert_true(seen_ours >= 3);
	assert_true(seen_theirs >= 3);
	EVP_PKEY_free(pk);
	BIO_free(bio);
	free(pub);
	free(h);
}

static void
libjwt_token_verifies_with_idpd(void **state)
{
	struct idp_jws_verified v;
	unsigned char sig[128];
	char *priv = NULL, *tok;
	size_t priv_len = 0, n;
	jwt_t *j = NULL;

	(void)state;
	assert_int_equal(idp_jws_key_private_pem(fx->ec1, &priv, &priv_len), IDP_OK);
	assert_int_equal(jwt_new(&j), 0);
	assert_int_equal(jwt_add_grant(j, "sub", "agent-9"), 0);
	assert_int_equal(jwt_add_grant_int(j, "exp", 4102444800L), 0);
	assert_int_equal(jwt_add_header(j, "kid", "ec-1"), 0);
	assert_int_equal(jwt_set_alg(j, JWT_ALG_ES256, (const unsigned char *)priv, (int)priv_len),
	                 0);
	tok = jwt_encode_str(j);
	assert_non_null(tok);
	/* libjwt 1.10 emits the JOSE form, raw r || s; a DER signature would be 70-72 bytes. */
	assert_int_equal(idp_b64url_decode(strrchr(tok, '.') + 1, strlen(strrchr(tok, '.') + 1),
	                                   sig, sizeof(sig), &n),
	                 IDP_OK);
	assert_int_equal(n, 64);
	assert_int_equal(idp_jws_verify(fx->own, tok, strlen(tok), NULL, &v, NULL), IDP_OK);
	assert_string_equal(json_string_value(json_object_get(v.claims, "sub")), "agent-9");
	idp_jws_verified_cleanup(&v);
	/* libjwt's default typ is "JWT", which is not an access token. */
	{
		struct idp_jws_verify_opts at = {.typ = IDP_JWS_TYP_ACCESS};

		assert_int_equal(verify_reason(fx->own, tok, &at, NULL), IDP_JWS_TYP_MISMATCH);
	}
	free(tok);
	jwt_free(j);
	idp_wipe(priv, priv_len);
	free(priv);
}

/* ---- keys ---- */

static void
jws_key_der_and_pem_round_trip(void **state)
{
	unsigned char *der = NULL;
	size_t der_len = 0;
	char *pem = NULL, *pub;
	size_t pem_len = 0;
	struct idp_jws_key *a = NULL, *b = NULL, *c = NULL;
	char t0[44], t1[44];
	struct idp_diag d;

	(void)state;
	idp_diag_init(&d);
	assert_int_equal(idp_jws_key_private_der(fx->ec1, &der, &der_len), IDP_OK);
	assert_int_equal(idp_jws_key_from_der(der, der_len, "again", &a, &d), IDP_OK);
	assert_true(idp_jws_key_has_private(a));
	assert_string_equal(idp_jws_key_kid(a), "again");
	idp_jws_key_thumbprint(fx->ec1, t0);
	idp_jws_key_thumbprint(a, t1);
	assert_string_equal(t0, t1);
	assert_int_equal(strlen(t0), 43);
	assert_int_equal(idp_jws_key_private_pem(fx->ec1, &pem, &pem_len), IDP_OK);
	assert_non_null(strstr(pem, "BEGIN PRIVATE KEY"));
	assert_int_equal(idp_jws_key_from_pem(pem, pem_len, NULL, &b, &d), IDP_OK);
	/* Without a kid, the thumbprint is the kid. */
	assert_string_equal(idp_jws_key_kid(b), t0);
	pub = idp_jws_key_public_pem(fx->ec1);
	assert_int_equal(idp_jws_key_from_pem(pub, strlen(pub), NULL, &c, &d), IDP_OK);
	assert_false(idp_jws_key_has_private(c));
	assert_int_equal(idp_jws_key_alg(c), IDP_JWS_ALG_ES256);
	idp_wipe(der, der_len);
	free(der);
	idp_wipe(pem, pem_len);
	free(pem);
	assert_int_equal(idp_jws_key_private_der(c, &der, &der_len), IDP_EINVAL);
	assert_null(der);
	free(pub);
	idp_jws_key_unref(a);
	idp_jws_key_unref(b);
	idp_jws_key_unref(c);
}

static void
jws_public_key_cannot_sign(void **state)
{
	char *pub = idp_jws_key_public_pem(fx->ec1), *tok = (char *)"x";
	struct idp_jws_key *k = NULL;
	struct idp_diag d;

	(void)state;
	idp_diag_init(&d);
	assert_int_equal(idp_jws_key_from_pem(pub, strlen(pub), "pub", &k, &d), IDP_OK);
	assert_int_equal(idp_jws_sign_payload(k, NULL, payload, strlen(payload), &tok, NULL, &d),
	                 IDP_EINVAL);
	assert_null(tok);
	assert_non_null(strstr(idp_diag_str(&d), "no private half"));
	idp_jws_key_unref(k);
	free(pub);
}

static void
jws_key_loading_rejects_bad_input(void **state)
{
	struct idp_jws_key *k = (struct idp_jws_key *)1;
	EVP_PKEY *weak = EVP_RSA_gen(1024), *p384 = EVP_EC_gen("P-384");
	BIO *bio = BIO_new(BIO_s_mem());
	unsigned char junk[40];
	struct idp_diag d;
	char *pem;
	long n;

	(void)state;
	idp_diag_init(&d);
	assert_int_equal(idp_jws_key_from_pem("nope", 4, NULL, &k, &d), IDP_EINVAL);
	assert_null(k);
	memset(junk, 0x30, sizeof(junk));
	assert_int_equal(idp_jws_key_from_der(junk, sizeof(junk), NULL, &k, &d), IDP_EINVAL);
	assert_non_null(weak);
	assert_int_equal(PEM_write_bio_PUBKEY(bio, weak), 1);
	n = BIO_get_mem_data(bio, &pem);
	assert_int_equal(idp_jws_key_from_pem(pem, (size_t)n, NULL, &k, &d), IDP_EINVAL);
	assert_non_null(strstr(idp_diag_str(&d), "1024 bits"));
	(void)BIO_reset(bio);
	assert_int_equal(PEM_write_bio_PUBKEY(bio, p384), 1);
	n = BIO_get_mem_data(bio, &pem);
	assert_int_equal(idp_jws_key_from_pem(pem, (size_t)n, NULL, &k, &d), IDP_EINVAL);
	assert_non_null(strstr(idp_diag_str(&d), "P-256"));
	/* kid with a control character. */
	assert_int_equal(idp_jws_key_generate("bad\nkid", &k, &d), IDP_EINVAL);
	assert_null(k);
	BIO_free(bio);
	EVP_PKEY_free(weak);
	EVP_PKEY_free(p384);
}

static json_t *
ec_jwk(const char *x, const char *y)
{
	return json_pack("{s:s, s:s, s:s, s:s}", "kty", "EC", "crv", "P-256", "x", x, "y", y);
}

static void
jws_jwk_rejects_point_off_curve(void **state)
{
	json_t *good = idp_jws_key_public_jwk(fx->ec1), *bad;
	const char *x = json_string_value(json_object_get(good, "x"));
	const char *y = json_string_value(json_object_get(good, "y"));
	unsigned char yb[32];
	struct idp_jws_key *k = NULL;
	struct idp_diag d;
	size_t n;
	char *y2;

	(void)state;
	idp_diag_init(&d);
	assert_int_equal(idp_b64url_decode(y, strlen(y), yb, sizeof(yb), &n), IDP_OK);
	yb[31] ^= 1;
	y2 = b64u(yb, 32);
	bad = ec_jwk(x, y2);
	assert_int_equal(idp_jws_key_from_jwk(bad, &k, &d), IDP_EINVAL);
	assert_null(k);
	json_decref(bad);
	/* The point at "zero" and short coordinates. */
	memset(yb, 0, sizeof(yb));
	free(y2);
	y2 = b64u(yb, 32);
	bad = ec_jwk(y2, y2);
	assert_int_equal(idp_jws_key_from_jwk(bad, &k, &d), IDP_EINVAL);
	json_decref(bad);
	free(y2);
	y2 = b64u(yb, 31);
	bad = ec_jwk(x, y2);
	assert_int_equal(idp_jws_key_from_jwk(bad, &k, &d), IDP_EINVAL);
	json_decref(bad);
	free(y2);
	/* Unmodified, the same JWK loads. */
	bad = ec_jwk(x, y);
	assert_int_equal(idp_jws_key_from_jwk(bad, &k, &d), IDP_OK);
	idp_jws_key_unref(k);
	json_decref(bad);
	json_decref(good);
}

static void
jws_jwk_rejects_private_members_and_wrong_types(void **state)
{
	json_t *jwk = idp_jws_key_public_jwk(fx->ec1);
	struct idp_jws_key *k = NULL;
	struct idp_diag d;

	(void)state;
	idp_diag_init(&d);
	json_object_set_new(jwk, "d", json_string("jpsQnnGQmL-YBIffH1136cspYG6-0iY7X1fCE9-E9LI"));
	assert_int_equal(idp_jws_key_from_jwk(jwk, &k, &d), IDP_EINVAL);
	assert_non_null(strstr(idp_diag_str(&d), "private member"));
	json_object_del(jwk, "d");
	json_object_set_new(jwk, "alg", json_string("ES384"));
	assert_int_equal(idp_jws_key_from_jwk(jwk, &k, &d), IDP_EINVAL);
	json_object_set_new(jwk, "alg", json_string("ES256"));
	json_object_set_new(jwk, "use", json_string("enc"));
	assert_int_equal(idp_jws_key_from_jwk(jwk, &k, &d), IDP_EINVAL);
	json_object_set_new(jwk, "use", json_string("sig"));
	json_object_set_new(jwk, "crv", json_string("P-384"));
	assert_int_equal(idp_jws_key_from_jwk(jwk, &k, &d), IDP_EINVAL);
	json_object_set_new(jwk, "crv", json_string("P-256"));
	json_object_set_new(jwk, "kty", json_string("oct"));
	assert_int_equal(idp_jws_key_from_jwk(jwk, &k, &d), IDP_EINVAL);
	json_object_set_new(jwk, "kty", json_string("EC"));
	assert_int_equal(idp_jws_key_from_jwk(jwk, &k, &d), IDP_OK);
	assert_string_equal(idp_jws_key_kid(k), "ec-1");
	idp_jws_key_unref(k);
	json_decref(jwk);
}

static void
jws_jwk_rejects_unsound_rsa_parameters(void **state)
{
	json_t *jwk = idp_jws_key_public_jwk(fx->rsa1);
	const char *n64 = json_string_value(json_object_get(jwk, "n"));
	unsigned char n[1024];
	struct idp_jws_key *k = NULL;
	struct idp_diag d;
	size_t len;
	char *even;

	(void)state;
	idp_diag_init(&d);
	assert_int_equal(idp_b64url_decode(n64, strlen(n64), n, sizeof(n), &len), IDP_OK);
	/* e = 1, e = 2, e of 72 bits. */
	json_object_set_new(jwk, "e", json_string("AQ"));
	assert_int_equal(idp_jws_key_from_jwk(jwk, &k, &d), IDP_EINVAL);
	json_object_set_new(jwk, "e", json_string("Ag"));
	assert_int_equal(idp_jws_key_from_jwk(jwk, &k, &d), IDP_EINVAL);
	json_object_set_new(jwk, "e", json_string("AQAAAAAAAAAB"));
	assert_int_equal(idp_jws_key_from_jwk(jwk, &k, &d), IDP_EINVAL);
	assert_null(k);
	/* An even modulus. */
	json_object_set_new(jwk, "e", json_string("AQAB"));
	n[len - 1] &= 0xfe;
	even = b64u(n, len);
	json_object_set_new(jwk, "n", json_string(even));
	assert_int_equal(idp_jws_key_from_jwk(jwk, &k, &d), IDP_EINVAL);
	assert_non_null(strstr(idp_diag_str(&d), "even modulus"));
	free(even);
	json_decref(jwk);
}

static void
jws_thumbprint_matches_rfc7638_vector(void **state)
{
	/* RFC 7638 section 3.1. */
	json_t *jwk = json_pack(
	    "{s:s, s:s, s:s, s:s, s:s}", "kty", "RSA", "n",
	    "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc"
	    "_"
	    "BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-"
	    "65YGjQR0_"
	    "FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-"
	    "bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-"
	    "kEgU8awapJzKnqDKgw",
	    "e", "AQAB", "alg", "RS256", "kid", "2011-04-29");
	struct idp_jws_key *k = NULL;
	struct idp_diag d;
	char t[44];
	json_t *back;

	(void)state;
	idp_diag_init(&d);
	assert_int_equal(idp_jws_key_from_jwk(jwk, &k, &d), IDP_OK);
	idp_jws_key_thumbprint(k, t);
	assert_string_equal(t, "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs");
	assert_string_equal(idp_jws_key_kid(k), "2011-04-29");
	assert_int_equal(idp_jws_key_alg(k), IDP_JWS_ALG_RS256);
	/* Exported members equal the input members. */
	back = idp_jws_key_public_jwk(k);
	assert_true(json_equal(json_object_get(back, "n"), json_object_get(jwk, "n")));
	assert_string_equal(json_string_value(json_object_get(back, "e")), "AQAB");
	json_decref(back);
	idp_jws_key_unref(k);
	json_decref(jwk);
}

static void
jws_public_jwk_has_expected_shape_and_round_trips(void **state)
{
	json_t *jwk = idp_jws_key_public_jwk(fx->ec1);
	struct idp_jws_key *k = NULL;
	struct idp_diag d;
	char t0[44], t1[44];

	(void)state;
	idp_diag_init(&d);
	assert_int_equal(json_object_size(jwk), 7);
	assert_string_equal(json_string_value(json_object_get(jwk, "kty")), "EC");
	assert_string_equal(json_string_value(json_object_get(jwk, "crv")), "P-256");
	assert_string_equal(json_string_value(json_object_get(jwk, "kid")), "ec-1");
	assert_string_equal(json_string_value(json_object_get(jwk, "use")), "sig");
	assert_string_equal(json_string_value(json_object_get(jwk, "alg")), "ES256");
	assert_int_equal(strlen(json_string_value(json_object_get(jwk, "x"))), 43);
	assert_int_equal(strlen(json_string_value(json_object_get(jwk, "y"))), 43);
	assert_null(json_object_get(jwk, "d"));
	assert_int_equal(idp_jws_key_from_jwk(jwk, &k, &d), IDP_OK);
	idp_jws_key_thumbprint(fx->ec1, t0);
	idp_jws_key_thumbprint(k, t1);
	assert_string_equal(t0, t1);
	idp_jws_key_unref(k);
	json_decref(jwk);
}

/* ---- key sets and JWKS ---- */

static void
jws_keyset_refuses_duplicate_kid_and_finds_by_kid(void **state)
{
	struct idp_jws_key *keys[2] = {fx->ec1, fx->ec1};
	struct idp_jws_keyset *set = (struct idp_jws_keyset *)1;
	struct idp_diag d;
	json_t *jwks;

	(void)state;
	idp_diag_init(&d);
	assert_int_equal(idp_jws_keyset_new(keys, 2, &set, &d), IDP_ECONFLICT);
	assert_null(set);
	assert_ptr_equal(idp_jws_keyset_find(fx->foreign, "rsa-1"), fx->rsa1);
	assert_ptr_equal(idp_jws_keyset_find(fx->foreign, "ec-1"), fx->ec1);
	assert_null(idp_jws_keyset_find(fx->foreign, "ec-2"));
	assert_int_equal(idp_jws_keyset_count(fx->foreign), 2);
	assert_null(idp_jws_keyset_key(fx->foreign, 2));
	jwks = idp_jws_keyset_to_jwks(fx->foreign);
	assert_int_equal(json_array_size(json_object_get(jwks, "keys")), 2);
	assert_string_equal(json_string_value(json_object_get(
	                        json_array_get(json_object_get(jwks, "keys"), 1), "kty")),
	                    "RSA");
	json_decref(jwks);
}

static void
jws_keyset_outlives_caller_references(void **state)
{
	struct idp_jws_keyset *set = NULL, *extra;
	struct idp_jws_key *k = NULL;
	struct idp_diag d;
	char *tok;

	(void)state;
	idp_diag_init(&d);
	assert_int_equal(idp_jws_key_generate("short-lived", &k, &d), IDP_OK);
	assert_int_equal(idp_jws_sign_payload(k, NULL, payload, strlen(payload), &tok, NULL, &d),
	                 IDP_OK);
	assert_int_equal(idp_jws_keyset_new(&k, 1, &set, &d), IDP_OK);
	idp_jws_key_unref(k); /* the set keeps its own reference */
	extra = idp_jws_keyset_ref(set);
	idp_jws_keyset_unref(set);
	assert_int_equal(verify_reason(extra, tok, NULL, NULL), IDP_JWS_OK);
	idp_jws_keyset_unref(extra);
	free(tok);
}

static char *
jwks_text(const json_t *a, const json_t *b, const char *extra)
{
	char *sa = json_dumps(a, JSON_COMPACT), *sb = b ? json_dumps(b, JSON_COMPACT) : NULL;
	char *s = idp_xasprintf("{\"keys\":[%s%s%s%s%s]}", sa, sb ? "," : "", sb ? sb : "",
	                        extra ? "," : "", extra ? extra : "");

	free(sa);
	free(sb);
	return s;
}

static void
jwks_loads_ec_and_rsa_and_skips_unsupported(void **state)
{
	json_t *ec = idp_jws_key_public_jwk(fx->ec1), *rsa = idp_jws_key_public_jwk(fx->rsa1);
	const char *skip = "{\"kty\":\"OKP\",\"crv\":\"Ed25519\",\"kid\":\"ed\",\"x\":\"AAAA\"},"
	                   "{\"kty\":\"EC\",\"crv\":\"P-384\",\"kid\":\"p384\",\"x\":\"AA\",\"y\":"
	                   "\"AA\"},"
	                   "{\"kty\":\"RSA\",\"kid\":\"enc\",\"use\":\"enc\",\"n\":\"AQAB\",\"e\":"
	                   "\"AQAB\"}";
	struct idp_jws_keyset *set = NULL;
	struct idp_jws_verify_opts rs = {.algs = IDP_JWS_ALLOW_RS256};
	struct idp_diag d;
	char *text = jwks_text(ec, rsa, skip), *tok;
	char path[] = "/tmp/idpd-test-jwks-XXXXXX";
	int fd;

	(void)state;
	idp_diag_init(&d);
	assert_int_equal(idp_jws_keyset_from_jwks(text, strlen(text), &set, &d), IDP_OK);
	assert_int_equal(idp_jws_keyset_count(set), 2);
	assert_int_equal(idp_jws_key_alg(idp_jws_keyset_find(set, "rsa-1")), IDP_JWS_ALG_RS256);
	assert_false(idp_jws_key_has_private(idp_jws_keyset_find(set, "rsa-1")));
	assert_int_equal(
	    idp_jws_sign_payload(fx->rsa1, NULL, payload, strlen(payload), &tok, NULL, &d), IDP_OK);
	assert_int_equal(verify_reason(set, tok, &rs, NULL), IDP_JWS_OK);
	free(tok);
	idp_jws_keyset_unref(set);
	/* The same through a file. */
	fd = mkstemp(path);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
	close(fd);
	assert_int_equal(idp_jws_keyset_load_jwks_file(path, &set, &d), IDP_OK);
	assert_int_equal(idp_jws_keyset_count(set), 2);
	idp_jws_keyset_unref(set);
	unlink(path);
	assert_int_equal(idp_jws_keyset_load_jwks_file(path, &set, &d), IDP_EIO);
	free(text);
	json_decref(ec);
	json_decref(rsa);
}

static void
jwks_rejects_bad_documents(void **state)
{
	json_t *ec = idp_jws_key_public_jwk(fx->ec1), *ec2 = idp_jws_key_public_jwk(fx->ec2);
	json_t *nokid = json_deep_copy(ec);
	struct idp_jws_keyset *set = (struct idp_jws_keyset *)1;
	struct idp_diag d;
	char *text;

	(void)state;
	idp_diag_init(&d);
	json_object_del(nokid, "kid");
	/* No kid. */
	text = jwks_text(nokid, NULL, NULL);
	assert_int_equal(idp_jws_keyset_from_jwks(text, strlen(text), &set, &d), IDP_EINVAL);
	assert_null(set);
	assert_non_null(strstr(idp_diag_str(&d), "no \"kid\""));
	free(text);
	/* Two keys, one kid. */
	json_object_set_new(ec2, "kid", json_string("ec-1"));
	text = jwks_text(ec, ec2, NULL);
	assert_int_equal(idp_jws_keyset_from_jwks(text, strlen(text), &set, &d), IDP_EINVAL);
	free(text);
	/* Only unsupported keys. */
	text = idp_xstrdup("{\"keys\":[{\"kty\":\"OKP\",\"crv\":\"Ed25519\",\"x\":\"AA\"}]}");
	assert_int_equal(idp_jws_keyset_from_jwks(text, strlen(text), &set, &d), IDP_EINVAL);
	free(text);
	/* Duplicate members, wrong shapes, weak RSA. */
	text = idp_xstrdup("{\"keys\":[],\"keys\":[]}");
	assert_int_equal(idp_jws_keyset_from_jwks(text, strlen(text), &set, &d), IDP_EINVAL);
	free(text);
	text = idp_xstrdup("[]");
	assert_int_equal(idp_jws_keyset_from_jwks(text, strlen(text), &set, &d), IDP_EINVAL);
	free(text);
	text = idp_xstrdup("{\"keys\":[{\"kty\":\"RSA\",\"kid\":\"w\",\"n\":\"AQAB\",\"e\":"
	                   "\"AQAB\"}]}");
	assert_int_equal(idp_jws_keyset_from_jwks(text, strlen(text), &set, &d), IDP_EINVAL);
	free(text);
	json_decref(ec);
	json_decref(ec2);
	json_decref(nokid);
}

static void
jwks_refuses_too_many_keys(void **state)
{
	json_t *ec = idp_jws_key_public_jwk(fx->ec1);
	json_t *doc = json_object(), *arr = json_array();
	struct idp_jws_keyset *set = NULL;
	struct idp_diag d;
	char *text;

	(void)state;
	idp_diag_init(&d);
	for (int i = 0; i <= IDP_JWS_MAX_JWKS_KEYS; i++)
		json_array_append(arr, ec);
	json_object_set_new(doc, "keys", arr);
	text = json_dumps(doc, JSON_COMPACT);
	assert_int_equal(idp_jws_keyset_from_jwks(text, strlen(text), &set, &d), IDP_ETOOBIG);
	free(text);
	json_decref(doc);
	json_decref(ec);
}

/* ---- time claims ---- */

static void
jwt_time_claims_honour_leeway(void **state)
{
	struct idp_clock c;
	enum idp_jws_reason r;
	json_t *cl = json_pack("{s:i, s:i, s:i}", "iat", 1000, "nbf", 1000, "exp", 2000);

	(void)state;
	idp_clock_fixed(&c, 1500 * 1000LL);
	assert_int_equal(idp_jwt_check_time(cl, &c, 0, IDP_JWT_REQUIRE_EXP, &r), IDP_OK);
	assert_int_equal(r, IDP_JWS_OK);
	/* exp is exclusive: at exp the token is expired. */
	idp_clock_fixed(&c, 2000 * 1000LL);
	assert_int_equal(idp_jwt_check_time(cl, &c, 0, 0, &r), IDP_EUNAUTH);
	assert_int_equal(r, IDP_JWS_EXPIRED);
	assert_int_equal(idp_jwt_check_time(cl, &c, 30, 0, &r), IDP_OK);
	idp_clock_fixed(&c, 2030 * 1000LL);
	assert_int_equal(idp_jwt_check_time(cl, &c, 30, 0, &r), IDP_EUNAUTH);
	assert_int_equal(r, IDP_JWS_EXPIRED);
	/* Before nbf. */
	idp_clock_fixed(&c, 900 * 1000LL);
	assert_int_equal(idp_jwt_check_time(cl, &c, 30, 0, &r), IDP_EUNAUTH);
	assert_int_equal(r, IDP_JWS_NOT_YET_VALID);
	idp_clock_fixed(&c, 980 * 1000LL);
	assert_int_equal(idp_jwt_check_time(cl, &c, 30, 0, &r), IDP_OK);
	json_decref(cl);
}

static void
jwt_time_claims_reject_future_iat_and_bad_values(void **state)
{
	struct idp_clock c;
	enum idp_jws_reason r;
	json_t *cl = json_pack("{s:i, s:i}", "iat", 1100, "exp", 2000);

	(void)state;
	idp_clock_fixed(&c, 1000 * 1000LL);
	assert_int_equal(idp_jwt_check_time(cl, &c, 60, 0, &r), IDP_EUNAUTH);
	assert_int_equal(r, IDP_JWS_ISSUED_IN_FUTURE);
	json_object_set_new(cl, "iat", json_integer(1000));
	assert_int_equal(idp_jwt_check_time(cl, &c, 60, IDP_JWT_REQUIRE_IAT, &r), IDP_OK);
	json_object_set_new(cl, "exp", json_string("2000"));
	assert_int_equal(idp_jwt_check_time(cl, &c, 60, 0, &r), IDP_EUNAUTH);
	assert_int_equal(r, IDP_JWS_BAD_TIME_CLAIM);
	json_object_set_new(cl, "exp", json_integer(-5));
	assert_int_equal(idp_jwt_check_time(cl, &c, 60, 0, &r), IDP_EUNAUTH);
	json_object_set_new(cl, "exp", json_integer(INT64_MAX));
	assert_int_equal(idp_jwt_check_time(cl, &c, 60, 0, &r), IDP_EUNAUTH);
	assert_int_equal(r, IDP_JWS_BAD_TIME_CLAIM);
	json_object_set_new(cl, "exp", json_real(1000.5));
	assert_int_equal(idp_jwt_check_time(cl, &c, 0, 0, &r), IDP_OK);
	json_object_set_new(cl, "exp", json_real(999.9));
	assert_int_equal(idp_jwt_check_time(cl, &c, 0, 0, &r), IDP_EUNAUTH);
	assert_int_equal(r, IDP_JWS_EXPIRED);
	json_object_del(cl, "exp");
	assert_int_equal(idp_jwt_check_time(cl, &c, 0, 0, &r), IDP_OK);
	assert_int_equal(idp_jwt_check_time(cl, &c, 0, IDP_JWT_REQUIRE_EXP, &r), IDP_EUNAUTH);
	assert_int_equal(r, IDP_JWS_BAD_TIME_CLAIM);
	json_decref(cl);
}

/* ---- concurrency and names ---- */

static void *
sign_verify_worker(void *arg)
{
	int *failures = arg;
	struct idp_diag d;

	idp_diag_init(&d);
	for (int i = 0; i < 200; i++) {
		struct idp_jws_verified v;
		char *tok;

		if (idp_jws_sign_payload(fx->ec1, IDP_JWS_TYP_ACCESS, payload, strlen(payload),
		                         &tok, NULL, &d) != IDP_OK) {
			(*failures)++;
			continue;
		}
		if (idp_jws_verify(fx->own, tok, strlen(tok), NULL, &v, NULL) != IDP_OK)
			(*failures)++;
		else
			idp_jws_verified_cleanup(&v);
		free(tok);
	}
	return NULL;
}

static void
jws_concurrent_sign_and_verify_with_one_key(void **state)
{
	pthread_t th[4];
	int failures[4] = {0};

	(void)state;
	for (int i = 0; i < 4; i++)
		assert_int_equal(pthread_create(&th[i], NULL, sign_verify_worker, &failures[i]), 0);
	for (int i = 0; i < 4; i++) {
		assert_int_equal(pthread_join(th[i], NULL), 0);
		assert_int_equal(failures[i], 0);
	}
}

static void
jws_reason_names_are_stable(void **state)
{
	(void)state;
	assert_string_equal(idp_jws_reason_name(IDP_JWS_ALG_NOT_ALLOWED), "alg_not_allowed");
	assert_string_equal(idp_jws_reason_name(IDP_JWS_KID_UNKNOWN), "kid_unknown");
	assert_string_equal(idp_jws_reason_name(IDP_JWS_BAD_SIGNATURE), "bad_signature");
	assert_string_equal(idp_jws_reason_name(IDP_JWS_EXPIRED), "expired");
	for (int r = IDP_JWS_OK; r <= IDP_JWS_BAD_TIME_CLAIM; r++)
		assert_string_not_equal(idp_jws_reason_name((enum idp_jws_reason)r), "unknown");
}

/* ---- the verified-token cache ---- */

static void
jws_cache_skips_only_what_it_verified(void **state)
{
	struct idp_jws_cache *c = idp_jws_cache_new(4);
	struct idp_jws_verify_opts opts = {.typ = IDP_JWS_TYP_ACCESS, .cache = c};
	struct idp_jws_keyset *other = NULL;
	struct idp_jws_verified v;
	enum idp_jws_reason r;
	json_t *claims = json_pack("{s:s}", "sub", "agent-1");
	char *tok = NULL, *forged;
	size_t len = 0;
	uint64_t hits, misses;

	(void)state;
	assert_non_null(c);
	assert_null(idp_jws_cache_new(0));
	assert_int_equal(idp_jws_sign(fx->ec1, IDP_JWS_TYP_ACCESS, claims, &tok, &len, NULL),
	                 IDP_OK);
	/* The first verification fills the cache, the second is served from it. */
	for (int i = 0; i < 2; i++) {
		assert_int_equal(idp_jws_verify(fx->own, tok, len, &opts, &v, &r), IDP_OK);
		assert_true(json_equal(v.claims, claims));
		assert_string_equal(v.kid, "ec-1");
		idp_jws_verified_cleanup(&v);
	}
	idp_jws_cache_stats(c, &hits, &misses);
	assert_int_equal(hits, 1);
	assert_int_equal(misses, 1);
	/* A changed byte is another key: verified, and refused. */
	forged = strdup(tok);
	forged[len - 3] = forged[len - 3] == 'A' ? 'B' : 'A';
	assert_int_equal(idp_jws_verify(fx->own, forged, len, &opts, &v, &r), IDP_EUNAUTH);
	assert_null(v.claims);
	/* A hit counts only while the signing key is still in the set. */
	assert_int_equal(idp_jws_keyset_new(&fx->ec2, 1, &other, NULL), IDP_OK);
	assert_int_equal(idp_jws_verify(other, tok, len, &opts, &v, &r), IDP_EUNAUTH);
	assert_null(v.claims);
	idp_jws_keyset_unref(other);
	idp_jws_cache_free(c);
	json_decref(claims);
	free(forged);
	free(tok);
}

/*
 * A hit is taken only under the checks the entry was verified with: a
 * token cached for one typ, algorithm list or signature form is verified
 * again, and refused, when the same cache is asked with stricter ones.
 */
static void
jws_cache_hit_needs_the_checks_it_was_filled_with(void **state)
{
	struct idp_jws_cache *c = idp_jws_cache_new(4);
	struct idp_jws_verify_opts access = {.typ = IDP_JWS_TYP_ACCESS, .cache = c};
	struct idp_jws_verify_opts identity = {.typ = IDP_JWS_TYP_IDENTITY, .cache = c};
	struct idp_jws_verify_opts any_typ = {.cache = c};
	struct idp_jws_verify_opts both = {.algs = IDP_JWS_ALLOW_ES256 | IDP_JWS_ALLOW_RS256,
	                                   .cache = c};
	struct idp_jws_verify_opts es_only = {.cache = c};
	struct idp_jws_verify_opts low = {.typ = IDP_JWS_TYP_ACCESS, .cache = c, .low_s = true};
	json_t *claims = json_pack("{s:s}", "sub", "agent-1");
	char *tok = NULL, *rs = NULL, *twin;

	(void)state;
	assert_int_equal(idp_jws_sign(fx->ec1, IDP_JWS_TYP_ACCESS, claims, &tok, NULL, NULL),
	                 IDP_OK);
	/* typ: an access token cached without a typ, then asked for as a credential. */
	assert_int_equal(verify_reason(fx->own, tok, &any_typ, NULL), IDP_JWS_OK);
	assert_int_equal(verify_reason(fx->own, tok, &identity, NULL), IDP_JWS_TYP_MISMATCH);
	assert_int_equal(verify_reason(fx->own, tok, &access, NULL), IDP_JWS_OK);
	assert_int_equal(verify_reason(fx->own, tok, &identity, NULL), IDP_JWS_TYP_MISMATCH);
	/* algs: an RS256 token cached for a caller that allows it, then asked ES256-only. */
	assert_int_equal(idp_jws_sign(fx->rsa1, NULL, claims, &rs, NULL, NULL), IDP_OK);
	assert_int_equal(verify_reason(fx->foreign, rs, &both, NULL), IDP_JWS_OK);
	assert_int_equal(verify_reason(fx->foreign, rs, &es_only, NULL), IDP_JWS_ALG_NOT_ALLOWED);
	/* low_s: the high-S twin cached where either s goes, then asked for as idpd's own. */
	twin = high_s_twin(tok);
	assert_int_equal(verify_reason(fx->own, twin, &access, NULL), IDP_JWS_OK);
	assert_int_equal(verify_reason(fx->own, twin, &low, NULL), IDP_JWS_BAD_SIGNATURE_FORMAT);
	free(twin);
	free(rs);
	free(tok);
	json_decref(claims);
	idp_jws_cache_free(c);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(jws_sign_verify_round_trip),
	    cmocka_unit_test(jws_signature_is_raw_r_s_of_64_bytes),
	    cmocka_unit_test(jws_sign_payload_signs_bytes_as_given),
	    cmocka_unit_test(jws_verifies_rfc7515_a3_vector),
	    cmocka_unit_test(jws_rejects_alg_none),
	    cmocka_unit_test(jws_rejects_hs256_with_public_key_as_secret),
	    cmocka_unit_test(jws_rejects_stripped_signature),
	    cmocka_unit_test(jws_rejects_zero_r_and_s),
	    cmocka_unit_test(jws_rejects_r_or_s_equal_to_group_order),
	    cmocka_unit_test(jws_signs_low_s_and_refuses_the_high_s_twin_of_its_own_tokens),
	    cmocka_unit_test(jws_rejects_wrong_signature_length),
	    cmocka_unit_test(jws_rejects_modified_payload),
	    cmocka_unit_test(jws_rejects_modified_header),
	    cmocka_unit_test(jws_rejects_unknown_kid),
	    cmocka_unit_test(jws_rejects_missing_or_non_string_kid),
	    cmocka_unit_test(jws_rejects_injected_key_headers),
	    cmocka_unit_test(jws_rejects_crit_header),
	    cmocka_unit_test(jws_rejects_duplicate_header_members),
	    cmocka_unit_test(jws_rejects_duplicate_payload_members),
	    cmocka_unit_test(jws_rejects_non_object_header_and_payload),
	    cmocka_unit_test(jws_rejects_padding_and_whitespace_in_parts),
	    cmocka_unit_test(jws_rejects_wrong_number_of_parts),
	    cmocka_unit_test(jws_checks_typ),
	    cmocka_unit_test(jws_rejects_oversized_token),
	    cmocka_unit_test(jws_rejects_rs256_where_only_es256_allowed),
	    cmocka_unit_test(jws_rejects_es256_where_only_rs256_allowed),
	    cmocka_unit_test(jws_pins_alg_to_key),
	    cmocka_unit_test(jws_rejects_other_algorithms_and_spellings),
	    cmocka_unit_test(jws_token_verifies_with_libjwt),
	    cmocka_unit_test(jws_access_token_verifies_with_openssl_directly),
	    cmocka_unit_test(jws_signatures_with_leading_zero_convert_both_ways),
	    cmocka_unit_test(libjwt_token_verifies_with_idpd),
	    cmocka_unit_test(jws_key_der_and_pem_round_trip),
	    cmocka_unit_test(jws_public_key_cannot_sign),
	    cmocka_unit_test(jws_key_loading_rejects_bad_input),
	    cmocka_unit_test(jws_jwk_rejects_point_off_curve),
	    cmocka_unit_test(jws_jwk_rejects_private_members_and_wrong_types),
	    cmocka_unit_test(jws_jwk_rejects_unsound_rsa_parameters),
	    cmocka_unit_test(jws_thumbprint_matches_rfc7638_vector),
	    cmocka_unit_test(jws_public_jwk_has_expected_shape_and_round_trips),
	    cmocka_unit_test(jws_keyset_refuses_duplicate_kid_and_finds_by_kid),
	    cmocka_unit_test(jws_keyset_outlives_caller_references),
	    cmocka_unit_test(jwks_loads_ec_and_rsa_and_skips_unsupported),
	    cmocka_unit_test(jwks_rejects_bad_documents),
	    cmocka_unit_test(jwks_refuses_too_many_keys),
	    cmocka_unit_test(jwt_time_claims_honour_leeway),
	    cmocka_unit_test(jwt_time_claims_reject_future_iat_and_bad_values),
	    cmocka_unit_test(jws_concurrent_sign_and_verify_with_one_key),
	    cmocka_unit_test(jws_reason_names_are_stable),
	    cmocka_unit_test(jws_cache_skips_only_what_it_verified),
	    cmocka_unit_test(jws_cache_hit_needs_the_checks_it_was_filled_with),
	};
	return cmocka_run_group_tests_name("jws", tests, group_setup, group_teardown);
}
