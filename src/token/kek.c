/*
 * kek.c - loading the key-encryption key and AES-256-GCM sealing with it.
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include "idpd/b64.h"
#include "idpd/jws.h"
#include "idpd/kek.h"

/* Longest KEK text accepted (base64/hex of 32 bytes, with room for whitespace). */
#define KEK_TEXT_MAX 256

struct idp_kek {
	unsigned char key[IDP_KEK_LEN];
};

static int
hex_value(unsigned char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	c = (unsigned char)tolower(c);
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

/* Decode the trimmed text t (length n) into key; 0 or IDP_EINVAL. */
static int
decode_text(const char *t, size_t n, unsigned char key[IDP_KEK_LEN])
{
	size_t got = 0;

	if (n == 2 * IDP_KEK_LEN) {
		for (size_t i = 0; i < IDP_KEK_LEN; i++) {
			int hi = hex_value((unsigned char)t[2 * i]);
			int lo = hex_value((unsigned char)t[2 * i + 1]);

			if (hi < 0 || lo < 0)
				return IDP_EINVAL;
			key[i] = (unsigned char)(hi << 4 | lo);
		}
		return IDP_OK;
	}
	if (n == idp_b64_encoded_len(IDP_KEK_LEN)) {
		if (idp_b64_decode(t, n, key, IDP_KEK_LEN, &got) == IDP_OK && got == IDP_KEK_LEN)
			return IDP_OK;
		return IDP_EINVAL;
	}
	if (n == idp_b64url_encoded_len(IDP_KEK_LEN)) {
		if (idp_b64url_decode(t, n, key, IDP_KEK_LEN, &got) == IDP_OK && got == IDP_KEK_LEN)
			return IDP_OK;
		return IDP_EINVAL;
	}
	return IDP_EINVAL;
}

static int
kek_from_text(const char *text, size_t len, const char *source, struct idp_kek **out,
              struct idp_diag *diag)
{
	struct idp_kek *k;
	size_t a = 0, b = len;

	while (a < b && isspace((unsigned char)text[a]))
		a++;
	while (b > a && isspace((unsigned char)text[b - 1]))
		b--;
	k = idp_xmalloc(sizeof(*k));
	if (decode_text(text + a, b - a, k->key) != IDP_OK) {
		idp_kek_free(k);
		idp_diag_add(diag,
		             "%s: not a 32-byte key (give 64 hex digits, or 32 bytes in base64 or "
		             "base64url; e.g. `openssl rand -hex 32`)",
		             source);
		return IDP_EINVAL;
	}
	*out = k;
	return IDP_OK;
}

int
idp_kek_from_string(const char *text, struct idp_kek **out, struct idp_diag *diag)
{
	*out = NULL;
	return kek_from_text(text, strlen(text), "KEK", out, diag);
}

int
idp_kek_from_file(const char *path, struct idp_kek **out, struct idp_diag *diag)
{
	char buf[KEK_TEXT_MAX + 1], ebuf[128];
	struct stat st;
	size_t got = 0;
	int fd, rc = IDP_EIO;

	*out = NULL;
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0) {
		idp_diag_add(diag, "keys.kek_file %s: %s", path,
		             idp_strerror(errno, ebuf, sizeof(ebuf)));
		return IDP_EIO;
	}
	/* fstat on the open descriptor: the file checked is the file read. */
	if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
		idp_diag_add(diag, "keys.kek_file %s: not a regular file", path);
		goto done;
	}
	if ((st.st_mode & (S_IRWXG | S_IRWXO)) != 0) {
		idp_diag_add(diag,
		             "keys.kek_file %s: mode %04o gives access to group or others; "
		             "refusing to use it (chmod 600 %s)",
		             path, (unsigned)(st.st_mode & 07777), path);
		rc = IDP_EFORBIDDEN;
		goto done;
	}
	for (;;) {
		ssize_t n = read(fd, buf + got, sizeof(buf) - got);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			idp_diag_add(diag, "keys.kek_file %s: %s", path,
			             idp_strerror(errno, ebuf, sizeof(ebuf)));
			goto done;
		}
		if (n == 0)
			break;
		got += (size_t)n;
		if (got == sizeof(buf)) {
			idp_diag_add(diag, "keys.kek_file %s: too large to be a KEK", path);
			rc = IDP_EINVAL;
			goto done;
		}
	}
	if (got == IDP_KEK_LEN) {
		struct idp_kek *k = idp_xmalloc(sizeof(*k));

		memcpy(k->key, buf, IDP_KEK_LEN);
		*out = k;
		rc = IDP_OK;
	} else {
		rc = kek_from_text(buf, got, "keys.kek_file", out, diag);
	}
done:
	idp_wipe(buf, sizeof(buf));
	close(fd);
	return rc;
}

int
idp_kek_load(const char *kek_file, struct idp_kek **out, struct idp_diag *diag)
{
	const char *env = getenv(IDP_KEK_ENV);

	*out = NULL;
	if (env != NULL && env[0] != '\0')
		return kek_from_text(env, strlen(env), IDP_KEK_ENV, out, diag);
	if (kek_file != NULL && kek_file[0] != '\0')
		return idp_kek_from_file(kek_file, out, diag);
	idp_diag_add(diag, "no key-encryption key: set %s or keys.kek_file", IDP_KEK_ENV);
	return IDP_ENOTFOUND;
}

void
idp_kek_scrub_env(void)
{
	idp_kek_scrub_env_var(IDP_KEK_ENV);
}

void
idp_kek_scrub_env_var(const char *name)
{
	char *env = getenv(name);

	/* getenv points into the process's environment block, which is what
	 * /proc/<pid>/environ shows: overwrite it there, then drop the name. */
	if (env != NULL)
		idp_wipe(env, strlen(env));
	unsetenv(name);
}

void
idp_kek_free(struct idp_kek *kek)
{
	if (kek == NULL)
		return;
	idp_wipe(kek, sizeof(*kek));
	free(kek);
}

void
idp_kek_id(const struct idp_kek *kek, char out[21])
{
	static const char label[] = "idpd kek id v1";
	unsigned char mac[EVP_MAX_MD_SIZE];
	unsigned int mac_len = 0;

	if (HMAC(EVP_sha256(), kek->key, IDP_KEK_LEN, (const unsigned char *)label,
	         sizeof(label) - 1, mac, &mac_len) == NULL) {
		ERR_clear_error();
		memset(mac, 0, sizeof(mac));
	}
	snprintf(out, 21, "kek-%02x%02x%02x%02x%02x%02x%02x%02x", mac[0], mac[1], mac[2], mac[3],
	         mac[4], mac[5], mac[6], mac[7]);
}

/* Authenticate the version byte, then the caller's associated data. */
static int
gcm_aad(EVP_CIPHER_CTX *ctx, unsigned char version, const void *ad, size_t ad_len)
{
	int n;

	if (EVP_CipherUpdate(ctx, NULL, &n, &version, 1) != 1)
		return -1;
	if (ad_len > 0 &&
	    (ad_len > INT32_MAX || EVP_CipherUpdate(ctx, NULL, &n, ad, (int)ad_len) != 1))
		return -1;
	return 0;
}

int
idp_kek_seal(const struct idp_kek *kek, const void *plain, size_t n, const void *ad, size_t ad_len,
             unsigned char **out, size_t *out_len)
{
	EVP_CIPHER_CTX *ctx = NULL;
	unsigned char *blob, *nonce, *ct;
	int len, rc = IDP_EINTERNAL;

	*out = NULL;
	*out_len = 0;
	if (n > IDP_KEK_MAX_PLAINTEXT)
		return IDP_ETOOBIG;
	blob = idp_xmalloc(n + IDP_KEK_OVERHEAD);
	blob[0] = IDP_KEK_VERSION;
	nonce = blob + 1;
	ct = nonce + IDP_KEK_NONCE_LEN;
	if (RAND_bytes(nonce, IDP_KEK_NONCE_LEN) != 1)
		goto done;
	ctx = EVP_CIPHER_CTX_new();
	if (ctx == NULL || EVP_EncryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, kek->key, nonce) != 1 ||
	    gcm_aad(ctx, IDP_KEK_VERSION, ad, ad_len) != 0 ||
	    EVP_EncryptUpdate(ctx, ct, &len, plain, (int)n) != 1 || (size_t)len != n ||
	    EVP_EncryptFinal_ex(ctx, ct + n, &len) != 1 ||
	    EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, IDP_KEK_TAG_LEN, ct + n) != 1)
		goto done;
	*out = blob;
	*out_len = n + IDP_KEK_OVERHEAD;
	blob = NULL;
	rc = IDP_OK;
done:
	ERR_clear_error();
	EVP_CIPHER_CTX_free(ctx);
	if (blob != NULL) {
		idp_wipe(blob, n + IDP_KEK_OVERHEAD);
		free(blob);
	}
	return rc;
}

int
idp_kek_open(const struct idp_kek *kek, const unsigned char *blob, size_t blob_len, const void *ad,
             size_t ad_len, unsigned char **out, size_t *out_len)
{
	EVP_CIPHER_CTX *ctx = NULL;
	const unsigned char *nonce, *ct, *tag;
	unsigned char *plain = NULL, tagbuf[IDP_KEK_TAG_LEN];
	size_t n;
	int len, rc = IDP_EFORBIDDEN;

	*out = NULL;
	*out_len = 0;
	if (blob_len < IDP_KEK_OVERHEAD || blob[0] != IDP_KEK_VERSION)
		return IDP_EINVAL;
	n = blob_len - IDP_KEK_OVERHEAD;
	if (n > IDP_KEK_MAX_PLAINTEXT)
		return IDP_ETOOBIG;
	nonce = blob + 1;
	ct = nonce + IDP_KEK_NONCE_LEN;
	tag = ct + n;
	/* The tag ctrl takes a non-const pointer; hand it a copy. */
	memcpy(tagbuf, tag, IDP_KEK_TAG_LEN);
	plain = idp_xmalloc(n + 1);
	ctx = EVP_CIPHER_CTX_new();
	if (ctx == NULL) {
		rc = IDP_EINTERNAL;
		goto done;
	}
	if (EVP_DecryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, kek->key, nonce) != 1 ||
	    gcm_aad(ctx, IDP_KEK_VERSION, ad, ad_len) != 0 ||
	    EVP_DecryptUpdate(ctx, plain, &len, ct, (int)n) != 1 || (size_t)len != n ||
	    EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, IDP_KEK_TAG_LEN, tagbuf) != 1 ||
	    EVP_DecryptFinal_ex(ctx, plain + n, &len) != 1)
		goto done;
	plain[n] = '\0';
	*out = plain;
	*out_len = n;
	plain = NULL;
	rc = IDP_OK;
done:
	ERR_clear_error();
	EVP_CIPHER_CTX_free(ctx);
	if (plain != NULL) {
		/* Unauthenticated plaintext never leaves this function. */
		idp_wipe(plain, n + 1);
		free(plain);
	}
	return rc;
}

int
idp_kek_seal_key(const struct idp_kek *kek, const struct idp_jws_key *key, unsigned char **out,
                 size_t *out_len)
{
	const char *kid = idp_jws_key_kid(key);
	unsigned char *der = NULL;
	size_t der_len = 0;
	int rc;

	*out = NULL;
	*out_len = 0;
	rc = idp_jws_key_private_der(key, &der, &der_len);
	if (rc != IDP_OK)
		return rc;
	rc = idp_kek_seal(kek, der, der_len, kid, strlen(kid), out, out_len);
	idp_wipe(der, der_len);
	free(der);
	return rc;
}

int
idp_kek_open_key(const struct idp_kek *kek, const char *kid, const unsigned char *blob, size_t len,
                 struct idp_jws_key **out, struct idp_diag *diag)
{
	unsigned char *der = NULL;
	size_t der_len = 0;
	int rc;

	*out = NULL;
	rc = idp_kek_open(kek, blob, len, kid, strlen(kid), &der, &der_len);
	if (rc == IDP_EFORBIDDEN) {
		idp_diag_add(diag,
		             "signing key \"%s\" does not open: wrong key-encryption key, or the "
		             "stored key was altered",
		             kid);
		return rc;
	}
	if (rc != IDP_OK) {
		idp_diag_add(diag, "signing key \"%s\": stored blob is malformed (%s)", kid,
		             idp_err_name(rc));
		return rc;
	}
	rc = idp_jws_key_from_der(der, der_len, kid, out, diag);
	if (rc == IDP_OK && !idp_jws_key_has_private(*out)) {
		idp_jws_key_unref(*out);
		*out = NULL;
		rc = IDP_EINVAL;
	}
	if (rc != IDP_OK)
		idp_diag_add(diag, "signing key \"%s\": stored blob does not hold a private key",
		             kid);
	idp_wipe(der, der_len);
	free(der);
	return rc;
}

#if defined(__SANITIZE_ADDRESS__)
#define IDP_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define IDP_SANITIZED 1
#endif
#endif

int
idp_kek_guard_process(void)
{
	const char *allow = getenv("IDPD_ALLOW_CORE_DUMPS");
	struct rlimit none = {0, 0};
	char eb[128];
	int rc = 0;

	if (allow != NULL && strcmp(allow, "1") == 0)
		return 0;
	if (setrlimit(RLIMIT_CORE, &none) != 0) {
		fprintf(stderr, "idpd: cannot turn core files off: %s\n",
		        idp_strerror(errno, eb, sizeof(eb)));
		rc = -1;
	}
#ifndef IDP_SANITIZED
	if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0) {
		fprintf(stderr, "idpd: cannot make the process undumpable: %s\n",
		        idp_strerror(errno, eb, sizeof(eb)));
		rc = -1;
	}
#endif
	return rc;
}
