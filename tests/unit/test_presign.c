/*
 * Unit tests for src/token/presign.c: the pool of precomputed ECDSA nonces,
 * signatures made with them, and idpd's own tokens signed while it runs.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <cmocka.h>

#include <openssl/bn.h>
#include <openssl/ecdsa.h>
#include <openssl/evp.h>
#include <openssl/sha.h>
#include <openssl/x509.h>

#include "idpd/jws.h"
#include "idpd/presign.h"

#define POOL 8

/* Until the pool holds want pairs; fails after 30 s (a stuck refill thread). */
static void
wait_available(size_t want)
{
	struct timespec pause = {0, 5 * 1000 * 1000};

	for (int i = 0; i < 6000 && idp_presign_available() < want; i++)
		nanosleep(&pause, NULL);
	assert_true(idp_presign_available() >= want);
}

/* Does r || s verify over digest under pkey's public half? */
static bool
verifies(EVP_PKEY *pkey, const unsigned char digest[32], const unsigned char sig[64])
{
	ECDSA_SIG *s = ECDSA_SIG_new();
	unsigned char *der = NULL;
	EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_pkey(NULL, pkey, NULL);
	int len;
	bool ok;

	assert_non_null(s);
	assert_non_null(ctx);
	assert_int_equal(ECDSA_SIG_set0(s, BN_bin2bn(sig, 32, NULL), BN_bin2bn(sig + 32, 32, NULL)),
	                 1);
	len = i2d_ECDSA_SIG(s, &der);
	assert_true(len > 0);
	assert_int_equal(EVP_PKEY_verify_init(ctx), 1);
	ok = EVP_PKEY_verify(ctx, der, (size_t)len, digest, 32) == 1;
	OPENSSL_free(der);
	ECDSA_SIG_free(s);
	EVP_PKEY_CTX_free(ctx);
	return ok;
}

/*
 * A pooled signature, tried again while the pool holds pairs: a signer only
 * tries the lock, so the refill thread holding it for a moment makes one
 * attempt miss (counted as such) without the pool being empty.
 */
static int
pooled_sign(const struct idp_presign_key *k, const unsigned char digest[32], unsigned char sig[64])
{
	struct timespec pause = {0, 100 * 1000};
	int rc = IDP_EWOULDBLOCK;

	for (int i = 0; i < 1000 && rc == IDP_EWOULDBLOCK; i++) {
		rc = idp_presign_sign(k, digest, sig);
		if (rc == IDP_EWOULDBLOCK)
			nanosleep(&pause, NULL);
	}
	return rc;
}

static void
presign_start_refuses_bad_capacity_and_a_second_start(void **state)
{
	struct idp_diag d;

	(void)state;
	idp_diag_init(&d);
	assert_int_equal(idp_presign_start(0, &d), IDP_EINVAL);
	assert_int_equal(idp_presign_start(IDP_PRESIGN_MAX + 1, &d), IDP_EINVAL);
	idp_diag_init(&d);
	assert_int_equal(idp_presign_start(POOL, &d), IDP_OK);
	assert_int_equal(idp_presign_start(POOL, &d), IDP_ECONFLICT);
	idp_presign_stop();
	idp_presign_stop(); /* twice is harmless */
	assert_int_equal(idp_presign_available(), 0);
}

/*
 * Each pooled signature verifies and has its own r: a nonce handed out twice
 * would repeat r (and give away the key).  The pool is full before the
 * signatures, so each finds a pair (perhaps on a second try).
 */
static void
presign_signatures_verify_and_never_share_a_nonce(void **state)
{
	EVP_PKEY *pkey = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
	struct idp_presign_key *k;
	unsigned char digest[32], sigs[POOL][64];
	struct idp_diag d;

	(void)state;
	assert_non_null(pkey);
	k = idp_presign_key_new(pkey);
	assert_non_null(k);
	/* Not running: nothing to take, and no miss counted. */
	assert_int_equal(idp_presign_sign(k, digest, sigs[0]), IDP_EWOULDBLOCK);
	idp_diag_init(&d);
	assert_int_equal(idp_presign_start(POOL, &d), IDP_OK);
	wait_available(POOL);
	SHA256((const unsigned char *)"the same message", 16, digest);
	for (int i = 0; i < POOL; i++) {
		assert_int_equal(pooled_sign(k, digest, sigs[i]), IDP_OK);
		assert_true(verifies(pkey, digest, sigs[i]));
		for (int j = 0; j < i; j++)
			assert_memory_not_equal(sigs[i], sigs[j], 32);
	}
	assert_int_equal(idp_presign_hits(), POOL);
	/* The check can fail: a signature with one bit changed does not verify. */
	sigs[0][63] ^= 1;
	assert_false(verifies(pkey, digest, sigs[0]));
	idp_presign_stop();
	assert_int_equal(idp_presign_sign(k, digest, sigs[0]), IDP_EWOULDBLOCK);
	idp_presign_key_free(k);
	EVP_PKEY_free(pkey);
}

/* Only a P-256 key with its private half has a pooled form. */
static void
presign_key_needs_a_p256_private_key(void **state)
{
	EVP_PKEY *p384 = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-384");
	EVP_PKEY *rsa = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
	EVP_PKEY *p256 = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256"), *pub = NULL;
	unsigned char *der = NULL;
	const unsigned char *p;
	int len;

	(void)state;
	assert_non_null(p384);
	assert_non_null(rsa);
	assert_non_null(p256);
	assert_null(idp_presign_key_new(p384));
	assert_null(idp_presign_key_new(rsa));
	len = i2d_PUBKEY(p256, &der);
	assert_true(len > 0);
	p = der;
	pub = d2i_PUBKEY(NULL, &p, len);
	assert_non_null(pub);
	assert_null(idp_presign_key_new(pub));
	OPENSSL_free(der);
	EVP_PKEY_free(pub);
	EVP_PKEY_free(p256);
	EVP_PKEY_free(rsa);
	EVP_PKEY_free(p384);
}

/*
 * idpd's tokens verify whether their signature took a pooled nonce or made
 * its own: twice the pool's size in a row, so both paths are taken when
 * the refill thread falls behind, and again once the pool has stopped.
 */
static void
presign_tokens_verify_with_and_without_the_pool(void **state)
{
	const struct idp_jws_verify_opts low_s = {.low_s = true};
	struct idp_jws_key *key = NULL;
	struct idp_jws_keyset *set = NULL;
	struct idp_diag d;
	uint64_t taken = 0;

	(void)state;
	idp_diag_init(&d);
	assert_int_equal(idp_jws_key_generate("presign-test", &key, &d), IDP_OK);
	assert_int_equal(idp_jws_keyset_new(&key, 1, &set, &d), IDP_OK);
	assert_int_equal(idp_presign_start(POOL, &d), IDP_OK);
	wait_available(POOL);
	for (int round = 0; round < 2; round++) {
		for (int i = 0; i < 2 * POOL; i++) {
			json_t *claims = json_pack("{s:s,s:i}", "sub", "agent", "n", i);
			struct idp_jws_verified v;
			char *tok = NULL;

			assert_int_equal(idp_jws_sign(key, NULL, claims, &tok, NULL, &d), IDP_OK);
			/* In the one spelling idpd signs, pooled nonce or not. */
			assert_int_equal(idp_jws_verify(set, tok, strlen(tok), &low_s, &v, NULL),
			                 IDP_OK);
			assert_int_equal(json_integer_value(json_object_get(v.claims, "n")), i);
			idp_jws_verified_cleanup(&v);
			free(tok);
			json_decref(claims);
		}
		if (round == 0) {
			/* Each signature took a nonce or counted a miss, and jws
			 * takes them: the pool was full. */
			taken = idp_presign_hits();
			assert_int_equal(taken + idp_presign_misses(), 2 * POOL);
			assert_true(taken >= 1);
			idp_presign_stop();
		}
	}
	/* Stopped: signatures are made inline and counted nowhere. */
	assert_int_equal(idp_presign_hits(), taken);
	assert_int_equal(idp_presign_misses(), 2 * POOL - taken);
	idp_jws_keyset_unref(set);
	idp_jws_key_unref(key);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(presign_start_refuses_bad_capacity_and_a_second_start),
	    cmocka_unit_test(presign_signatures_verify_and_never_share_a_nonce),
	    cmocka_unit_test(presign_key_needs_a_p256_private_key),
	    cmocka_unit_test(presign_tokens_verify_with_and_without_the_pool),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
