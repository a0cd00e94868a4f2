/*
 * Unit tests for src/token/kek.c: KEK loading from text, files and the
 * environment, and AES-256-GCM sealing of keys at rest.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>

#include <openssl/evp.h>

#include "idpd/b64.h"
#include "idpd/jws.h"
#include "idpd/kek.h"

/* 32 bytes 0x00..0x1f in the three accepted spellings. */
#define KEK_HEX "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
#define KEK_B64 "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
#define KEK_B64URL "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8"

static const char ad[] = "kid-2026-01";

static struct idp_kek *
kek_from(const char *text)
{
	struct idp_kek *k = NULL;
	struct idp_diag d;

	idp_diag_init(&d);
	assert_int_equal(idp_kek_from_string(text, &k, &d), IDP_OK);
	return k;
}

static char *
write_temp(const void *data, size_t n, mode_t mode)
{
	char *path = idp_xstrdup("/tmp/idpd-test-kek-XXXXXX");
	int fd = mkstemp(path);

	assert_true(fd >= 0);
	assert_int_equal(write(fd, data, n), (ssize_t)n);
	assert_int_equal(fchmod(fd, mode), 0);
	close(fd);
	return path;
}

static void
kek_seal_open_round_trip(void **state)
{
	static const size_t sizes[] = {0, 1, 121, 4096, IDP_KEK_MAX_PLAINTEXT};
	struct idp_kek *k = kek_from(KEK_HEX);

	(void)state;
	for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
		unsigned char *plain = malloc(sizes[i] + 1), *blob, *back;
		size_t blob_len, back_len;

		for (size_t j = 0; j < sizes[i]; j++)
			plain[j] = (unsigned char)(j * 7);
		assert_int_equal(idp_kek_seal(k, plain, sizes[i], ad, strlen(ad), &blob, &blob_len),
		                 IDP_OK);
		assert_int_equal(blob_len, sizes[i] + IDP_KEK_OVERHEAD);
		assert_int_equal(blob[0], IDP_KEK_VERSION);
		assert_int_equal(idp_kek_open(k, blob, blob_len, ad, strlen(ad), &back, &back_len),
		                 IDP_OK);
		assert_int_equal(back_len, sizes[i]);
		assert_memory_equal(back, plain, sizes[i]);
		idp_wipe(back, back_len);
		free(back);
		free(blob);
		free(plain);
	}
	idp_kek_free(k);
}

static void
kek_seal_uses_a_fresh_nonce_each_time(void **state)
{
	struct idp_kek *k = kek_from(KEK_HEX);
	unsigned char *a, *b;
	size_t al, bl;

	(void)state;
	assert_int_equal(idp_kek_seal(k, "secret", 6, NULL, 0, &a, &al), IDP_OK);
	assert_int_equal(idp_kek_seal(k, "secret", 6, NULL, 0, &b, &bl), IDP_OK);
	assert_int_equal(al, bl);
	assert_memory_not_equal(a + 1, b + 1, IDP_KEK_NONCE_LEN);
	assert_memory_not_equal(a, b, al);
	free(a);
	free(b);
	idp_kek_free(k);
}

static void
kek_sealed_blob_opens_with_plain_openssl(void **state)
{
	struct idp_kek *k = kek_from(KEK_HEX);
	unsigned char key[32], *blob, out[64], version = IDP_KEK_VERSION;
	size_t blob_len, pt_len;
	EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
	int n, total;

	(void)state;
	for (int i = 0; i < 32; i++)
		key[i] = (unsigned char)i;
	assert_int_equal(idp_kek_seal(k, "private key bytes", 17, ad, strlen(ad), &blob, &blob_len),
	                 IDP_OK);
	pt_len = blob_len - IDP_KEK_OVERHEAD;
	/* The documented format: version || nonce || ciphertext || tag, AD = version || ad. */
	assert_int_equal(EVP_DecryptInit_ex(c, EVP_aes_256_gcm(), NULL, key, blob + 1), 1);
	assert_int_equal(EVP_DecryptUpdate(c, NULL, &n, &version, 1), 1);
	assert_int_equal(EVP_DecryptUpdate(c, NULL, &n, (const unsigned char *)ad, (int)strlen(ad)),
	                 1);
	assert_int_equal(EVP_DecryptUpdate(c, out, &n, blob + 1 + IDP_KEK_NONCE_LEN, (int)pt_len),
	                 1);
	total = n;
	assert_int_equal(EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_TAG, IDP_KEK_TAG_LEN,
	                                     blob + 1 + IDP_KEK_NONCE_LEN + pt_len),
	                 1);
	assert_int_equal(EVP_DecryptFinal_ex(c, out + total, &n), 1);
	assert_int_equal(total + n, 17);
	assert_memory_equal(out, "private key bytes", 17);
	EVP_CIPHER_CTX_free(c);
	free(blob);
	idp_kek_free(k);
}

static void
kek_open_refuses_wrong_kek(void **state)
{
	struct idp_kek *k = kek_from(KEK_HEX);
	struct idp_kek *other =
	    kek_from("ff0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f");
	unsigned char *blob, *out = (unsigned char *)"x";
	size_t blob_len, out_len = 99;

	(void)state;
	assert_int_equal(idp_kek_seal(k, "secret", 6, ad, strlen(ad), &blob, &blob_len), IDP_OK);
	assert_int_equal(idp_kek_open(other, blob, blob_len, ad, strlen(ad), &out, &out_len),
	                 IDP_EFORBIDDEN);
	assert_null(out);
	assert_int_equal(out_len, 0);
	free(blob);
	idp_kek_free(k);
	idp_kek_free(other);
}

static void
kek_open_refuses_tampered_blob(void **state)
{
	struct idp_kek *k = kek_from(KEK_HEX);
	unsigned char *blob, *out;
	size_t blob_len, out_len;
	/* One byte in the nonce, the ciphertext and the tag. */
	size_t where[3];

	(void)state;
	assert_int_equal(idp_kek_seal(k, "0123456789", 10, ad, strlen(ad), &blob, &blob_len),
	                 IDP_OK);
	where[0] = 1 + 5;
	where[1] = 1 + IDP_KEK_NONCE_LEN + 3;
	where[2] = blob_len - 1;
	for (int i = 0; i < 3; i++) {
		blob[where[i]] ^= 0x40;
		out = (unsigned char *)"x";
		assert_int_equal(idp_kek_open(k, blob, blob_len, ad, strlen(ad), &out, &out_len),
		                 IDP_EFORBIDDEN);
		assert_null(out);
		blob[where[i]] ^= 0x40;
	}
	/* Another key's associated data, or none. */
	assert_int_equal(idp_kek_open(k, blob, blob_len, "kid-2026-02", 11, &out, &out_len),
	                 IDP_EFORBIDDEN);
	assert_int_equal(idp_kek_open(k, blob, blob_len, NULL, 0, &out, &out_len), IDP_EFORBIDDEN);
	/* An unknown version is refused before decryption. */
	blob[0] = 2;
	assert_int_equal(idp_kek_open(k, blob, blob_len, ad, strlen(ad), &out, &out_len),
	                 IDP_EINVAL);
	blob[0] = IDP_KEK_VERSION;
	assert_int_equal(idp_kek_open(k, blob, blob_len, ad, strlen(ad), &out, &out_len), IDP_OK);
	assert_memory_equal(out, "0123456789", 10);
	idp_wipe(out, out_len);
	free(out);
	free(blob);
	idp_kek_free(k);
}

static void
kek_open_refuses_truncated_blob(void **state)
{
	struct idp_kek *k = kek_from(KEK_HEX);
	unsigned char *blob, *out;
	size_t blob_len, out_len;

	(void)state;
	assert_int_equal(idp_kek_seal(k, "0123456789", 10, NULL, 0, &blob, &blob_len), IDP_OK);
	assert_int_equal(idp_kek_open(k, blob, blob_len - 1, NULL, 0, &out, &out_len),
	                 IDP_EFORBIDDEN);
	assert_int_equal(idp_kek_open(k, blob, IDP_KEK_OVERHEAD - 1, NULL, 0, &out, &out_len),
	                 IDP_EINVAL);
	assert_int_equal(idp_kek_open(k, blob, 0, NULL, 0, &out, &out_len), IDP_EINVAL);
	assert_null(out);
	free(blob);
	idp_kek_free(k);
}

static void
kek_seal_refuses_oversized_plaintext(void **state)
{
	struct idp_kek *k = kek_from(KEK_HEX);
	unsigned char *blob = (unsigned char *)"x";
	size_t blob_len;
	void *big = calloc(1, IDP_KEK_MAX_PLAINTEXT + 1);

	(void)state;
	assert_int_equal(idp_kek_seal(k, big, IDP_KEK_MAX_PLAINTEXT + 1, NULL, 0, &blob, &blob_len),
	                 IDP_ETOOBIG);
	assert_null(blob);
	free(big);
	idp_kek_free(k);
}

static void
kek_accepts_hex_base64_and_base64url(void **state)
{
	struct idp_kek *a = kek_from(KEK_HEX), *b = kek_from(KEK_B64), *c = kek_from(KEK_B64URL);
	struct idp_kek *d =
	    kek_from("  000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F\n");
	char ia[21], ib[21], ic[21], id[21];
	unsigned char *blob, *out;
	size_t blob_len, out_len;

	(void)state;
	idp_kek_id(a, ia);
	idp_kek_id(b, ib);
	idp_kek_id(c, ic);
	idp_kek_id(d, id);
	assert_int_equal(strlen(ia), 20);
	assert_memory_equal(ia, "kek-", 4);
	assert_string_equal(ia, ib);
	assert_string_equal(ia, ic);
	assert_string_equal(ia, id);
	/* Same bytes, so what one seals the other opens. */
	assert_int_equal(idp_kek_seal(a, "s", 1, NULL, 0, &blob, &blob_len), IDP_OK);
	assert_int_equal(idp_kek_open(c, blob, blob_len, NULL, 0, &out, &out_len), IDP_OK);
	free(out);
	free(blob);
	idp_kek_free(a);
	idp_kek_free(b);
	idp_kek_free(c);
	idp_kek_free(d);
}

static void
kek_rejects_bad_text_without_echoing_it(void **state)
{
	static const char *const bad[] = {
	    "",
	    "00010203",
	    KEK_HEX "00",
	    "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1",
	    "zz0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
	    "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHg==", /* 31 bytes */
	    "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8g", /* 33 bytes, unpadded */
	    "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh9=", /* non-canonical */
	    "AAECAwQFBgcICQoLDA0ODxAR EhMUFRYXGBkaGxwdHh8",
	    "correct horse battery staple",
	};
	struct idp_kek *k = (struct idp_kek *)1;
	struct idp_diag d;

	(void)state;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		idp_diag_init(&d);
		assert_int_equal(idp_kek_from_string(bad[i], &k, &d), IDP_EINVAL);
		assert_null(k);
		assert_non_null(strstr(idp_diag_str(&d), "64 hex digits"));
		if (strlen(bad[i]) > 8)
			assert_null(strstr(idp_diag_str(&d), bad[i]));
	}
}

static void
kek_file_with_permissive_mode_is_refused(void **state)
{
	static const mode_t modes[] = {0644, 0640, 0604, 0660, 0610, 0601};
	struct idp_kek *k = (struct idp_kek *)1;
	struct idp_diag d;

	(void)state;
	for (size_t i = 0; i < sizeof(modes) / sizeof(modes[0]); i++) {
		char *path = write_temp(KEK_HEX "\n", strlen(KEK_HEX) + 1, modes[i]);

		idp_diag_init(&d);
		assert_int_equal(idp_kek_from_file(path, &k, &d), IDP_EFORBIDDEN);
		assert_null(k);
		assert_non_null(strstr(idp_diag_str(&d), "chmod 600"));
		unlink(path);
		free(path);
	}
}

static void
kek_file_accepts_text_and_raw_bytes(void **state)
{
	unsigned char raw[32];
	struct idp_kek *a = NULL, *b = NULL, *c = kek_from(KEK_HEX);
	char ia[21], ib[21], ic[21];
	struct idp_diag d;
	char *p1, *p2;

	(void)state;
	idp_diag_init(&d);
	for (int i = 0; i < 32; i++)
		raw[i] = (unsigned char)i;
	p1 = write_temp(KEK_B64 "\n", strlen(KEK_B64) + 1, 0600);
	p2 = write_temp(raw, sizeof(raw), 0400);
	assert_int_equal(idp_kek_from_file(p1, &a, &d), IDP_OK);
	assert_int_equal(idp_kek_from_file(p2, &b, &d), IDP_OK);
	idp_kek_id(a, ia);
	idp_kek_id(b, ib);
	idp_kek_id(c, ic);
	assert_string_equal(ia, ic);
	assert_string_equal(ib, ic);
	unlink(p1);
	unlink(p2);
	free(p1);
	free(p2);
	idp_kek_free(a);
	idp_kek_free(b);
	idp_kek_free(c);
}

static void
kek_file_errors_are_clear(void **state)
{
	struct idp_kek *k = NULL;
	struct idp_diag d;
	char *path = write_temp("not a key\n", 10, 0600);
	char link[64];

	(void)state;
	idp_diag_init(&d);
	assert_int_equal(idp_kek_from_file(path, &k, &d), IDP_EINVAL);
	assert_null(k);
	idp_diag_init(&d);
	assert_int_equal(idp_kek_from_file("/nonexistent/idpd.kek", &k, &d), IDP_EIO);
	assert_non_null(strstr(idp_diag_str(&d), "/nonexistent/idpd.kek"));
	assert_int_equal(idp_kek_from_file("/tmp", &k, &d), IDP_EIO);
	/* A symlink is not followed: the mode checked must be the file's own. */
	snprintf(link, sizeof(link), "%s.lnk", path);
	assert_int_equal(symlink(path, link), 0);
	assert_int_equal(idp_kek_from_file(link, &k, &d), IDP_EIO);
	unlink(link);
	unlink(path);
	free(path);
}

static void
kek_load_prefers_environment_over_file(void **state)
{
	const char *other = "ff0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
	struct idp_kek *k = NULL, *want_env = kek_from(other), *want_file = kek_from(KEK_HEX);
	char path_id[21], env_id[21], got[21];
	char *path = write_temp(KEK_HEX, strlen(KEK_HEX), 0600);
	struct idp_diag d;

	(void)state;
	idp_diag_init(&d);
	idp_kek_id(want_env, env_id);
	idp_kek_id(want_file, path_id);
	assert_int_equal(setenv(IDP_KEK_ENV, other, 1), 0);
	assert_int_equal(idp_kek_load(path, &k, &d), IDP_OK);
	idp_kek_id(k, got);
	assert_string_equal(got, env_id);
	idp_kek_free(k);
	assert_int_equal(setenv(IDP_KEK_ENV, "bad", 1), 0);
	assert_int_equal(idp_kek_load(path, &k, &d), IDP_EINVAL);
	assert_non_null(strstr(idp_diag_str(&d), IDP_KEK_ENV));
	assert_int_equal(unsetenv(IDP_KEK_ENV), 0);
	assert_int_equal(idp_kek_load(path, &k, &d), IDP_OK);
	idp_kek_id(k, got);
	assert_string_equal(got, path_id);
	idp_kek_free(k);
	assert_int_equal(idp_kek_load(NULL, &k, &d), IDP_ENOTFOUND);
	assert_int_equal(idp_kek_load("", &k, &d), IDP_ENOTFOUND);
	assert_null(k);
	unlink(path);
	free(path);
	idp_kek_free(want_env);
	idp_kek_free(want_file);
}

static void
kek_sealed_signing_key_reopens_and_signs(void **state)
{
	struct idp_kek *k = kek_from(KEK_HEX);
	struct idp_jws_key *key = NULL, *back = NULL;
	struct idp_jws_keyset *set = NULL;
	struct idp_jws_verified v;
	unsigned char *blob = NULL;
	size_t blob_len = 0;
	struct idp_diag d;
	char *tok;

	(void)state;
	idp_diag_init(&d);
	assert_int_equal(idp_jws_key_generate("k-2026-01", &key, &d), IDP_OK);
	assert_int_equal(idp_kek_seal_key(k, key, &blob, &blob_len), IDP_OK);
	assert_int_equal(idp_kek_open_key(k, "k-2026-01", blob, blob_len, &back, &d), IDP_OK);
	assert_true(idp_jws_key_has_private(back));
	assert_string_equal(idp_jws_key_kid(back), "k-2026-01");
	/* The reopened key signs what the original's public half verifies. */
	assert_int_equal(idp_jws_sign_payload(back, NULL, "{}", 2, &tok, NULL, &d), IDP_OK);
	assert_int_equal(idp_jws_keyset_new(&key, 1, &set, &d), IDP_OK);
	assert_int_equal(idp_jws_verify(set, tok, strlen(tok), NULL, &v, NULL), IDP_OK);
	idp_jws_verified_cleanup(&v);
	free(tok);
	idp_jws_keyset_unref(set);
	idp_jws_key_unref(back);
	free(blob);
	idp_jws_key_unref(key);
	idp_kek_free(k);
}

static void
kek_sealed_signing_key_refuses_wrong_kek_and_kid(void **state)
{
	struct idp_kek *k = kek_from(KEK_HEX);
	struct idp_kek *other =
	    kek_from("ff0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f");
	struct idp_jws_key *key = NULL, *back = (struct idp_jws_key *)1;
	unsigned char *blob = NULL;
	size_t blob_len = 0;
	struct idp_diag d;
	char *pub;

	(void)state;
	idp_diag_init(&d);
	assert_int_equal(idp_jws_key_generate("k-2026-01", &key, &d), IDP_OK);
	assert_int_equal(idp_kek_seal_key(k, key, &blob, &blob_len), IDP_OK);
	assert_int_equal(idp_kek_open_key(other, "k-2026-01", blob, blob_len, &back, &d),
	                 IDP_EFORBIDDEN);
	assert_null(back);
	assert_non_null(strstr(idp_diag_str(&d), "wrong key-encryption key"));
	/* A blob moved to another key's row does not open either. */
	assert_int_equal(idp_kek_open_key(k, "k-2026-02", blob, blob_len, &back, &d),
	                 IDP_EFORBIDDEN);
	assert_int_equal(idp_kek_open_key(k, "k-2026-01", blob, 5, &back, &d), IDP_EINVAL);
	free(blob);
	/* A public key has nothing to seal. */
	pub = idp_jws_key_public_pem(key);
	idp_jws_key_unref(key);
	assert_int_equal(idp_jws_key_from_pem(pub, strlen(pub), "pub", &key, &d), IDP_OK);
	assert_int_equal(idp_kek_seal_key(k, key, &blob, &blob_len), IDP_EINVAL);
	assert_null(blob);
	free(pub);
	idp_jws_key_unref(key);
	idp_kek_free(k);
	idp_kek_free(other);
}

#if defined(__SANITIZE_ADDRESS__)
#define SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SANITIZED 1
#endif
#endif
#ifdef SANITIZED
#define DUMPABLE_AFTER 1 /* LeakSanitizer needs it */
#else
#define DUMPABLE_AFTER 0
#endif

/* In a child: with core files allowed, what the guard leaves; the exit status says. */
static int
guarded_child(const char *allow)
{
	pid_t pid = fork();
	int status = -1;

	assert_true(pid >= 0);
	if (pid == 0) {
		struct rlimit any = {RLIM_INFINITY, RLIM_INFINITY}, got;

		if (setrlimit(RLIMIT_CORE, &any) != 0) {
			getrlimit(RLIMIT_CORE, &any);
			any.rlim_cur = any.rlim_max;
			(void)setrlimit(RLIMIT_CORE, &any);
		}
		if (allow != NULL)
			setenv("IDPD_ALLOW_CORE_DUMPS", allow, 1);
		else
			unsetenv("IDPD_ALLOW_CORE_DUMPS");
		if (idp_kek_guard_process() != 0)
			_exit(10);
		getrlimit(RLIMIT_CORE, &got);
		_exit((got.rlim_cur == 0 ? 1 : 0) | (prctl(PR_GET_DUMPABLE) == 1 ? 2 : 0));
	}
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status));
	return WEXITSTATUS(status);
}

static void
guard_keeps_core_files_and_other_processes_out(void **state)
{
	struct rlimit now;

	(void)state;
	/* Core files off; undumpable (but for LeakSanitizer's sake). */
	assert_int_equal(guarded_child(NULL), 1 | (DUMPABLE_AFTER ? 2 : 0));
	/* Lifted for debugging: dumpable, and the limit as it was. */
	getrlimit(RLIMIT_CORE, &now);
	assert_int_equal(guarded_child("1"), 2 | (now.rlim_max == 0 ? 1 : 0));
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(guard_keeps_core_files_and_other_processes_out),
	    cmocka_unit_test(kek_seal_open_round_trip),
	    cmocka_unit_test(kek_seal_uses_a_fresh_nonce_each_time),
	    cmocka_unit_test(kek_sealed_blob_opens_with_plain_openssl),
	    cmocka_unit_test(kek_open_refuses_wrong_kek),
	    cmocka_unit_test(kek_open_refuses_tampered_blob),
	    cmocka_unit_test(kek_open_refuses_truncated_blob),
	    cmocka_unit_test(kek_seal_refuses_oversized_plaintext),
	    cmocka_unit_test(kek_accepts_hex_base64_and_base64url),
	    cmocka_unit_test(kek_rejects_bad_text_without_echoing_it),
	    cmocka_unit_test(kek_file_with_permissive_mode_is_refused),
	    cmocka_unit_test(kek_file_accepts_text_and_raw_bytes),
	    cmocka_unit_test(kek_file_errors_are_clear),
	    cmocka_unit_test(kek_load_prefers_environment_over_file),
	    cmocka_unit_test(kek_sealed_signing_key_reopens_and_signs),
	    cmocka_unit_test(kek_sealed_signing_key_refuses_wrong_kek_and_kid),
	};
	return cmocka_run_group_tests_name("kek", tests, NULL, NULL);
}
