/*
 * jws.c - ES256 (and, for foreign tokens, RS256) compact JWS on OpenSSL 3.
 *
 * Keys are parsed once into an EVP_PKEY and never modified afterwards, which
 * is what makes concurrent use from many threads safe: each sign or verify
 * works on its own duplicate of an operation context prepared with the key,
 * so no call fetches an algorithm or takes a library lock for a lookup.
 * Verification orders its checks so that every
 * structural and policy check (size, encoding, header, alg, kid, key
 * headers, typ, signature shape) runs before any signature arithmetic.
 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <openssl/pem.h>
#include <openssl/sha.h>
#include <openssl/x509.h>

#include "idpd/b64.h"
#include "idpd/clock.h"
#include "idpd/jws.h"
#include "jws_cache_int.h"

#define ES256_SIG_LEN 64
#define P256_COORD_LEN 32
#define MAX_SIG_LEN (IDP_JWS_MAX_RSA_BITS / 8)

struct idp_jws_key {
	atomic_uint refs;
	EVP_PKEY *pkey;
	enum idp_jws_alg alg;
	bool has_private;
	size_t sig_len;
	char kid[IDP_JWS_MAX_KID + 1];
	/* Public members, base64url: x and y (EC) or n and e (RSA). */
	char *pub_a;
	char *pub_b;
	char thumbprint[44];
	/*
	 * Prepared once, so that signing and verifying look nothing up: the
	 * digest, and operation contexts each call duplicates (a context is
	 * not shared between threads; its duplicate is private to the call).
	 */
	EVP_MD *sha256;
	EVP_PKEY_CTX *sign_tpl; /* NULL without a private half */
	EVP_PKEY_CTX *verify_tpl;
	/* base64url headers for no typ, IDP_JWS_TYP_ACCESS, IDP_JWS_TYP_IDENTITY */
	char *hdr_b64[3];
};

struct idp_jws_keyset {
	atomic_uint refs;
	size_t n;
	struct idp_jws_key **keys;
};

/* The order n of the P-256 group, big-endian (FIPS 186-4 D.1.2.3). */
static const unsigned char p256_order[P256_COORD_LEN] = {
    0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51,
};

/* (n - 1) / 2: an s above it is the high-S twin of the signature with n - s. */
static const unsigned char p256_half_order[P256_COORD_LEN] = {
    0x7f, 0xff, 0xff, 0xff, 0x80, 0x00, 0x00, 0x00, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xde, 0x73, 0x7d, 0x56, 0xd3, 0x8b, 0xcf, 0x42, 0x79, 0xdc, 0xe5, 0x61, 0x7e, 0x31, 0x92, 0xa8,
};

const char *
idp_jws_alg_name(enum idp_jws_alg alg)
{
	switch (alg) {
	case IDP_JWS_ALG_ES256:
		return "ES256";
	case IDP_JWS_ALG_RS256:
		return "RS256";
	}
	return "unknown";
}

const char *
idp_jws_reason_name(enum idp_jws_reason reason)
{
	switch (reason) {
	case IDP_JWS_OK:
		return "ok";
	case IDP_JWS_TOO_LARGE:
		return "too_large";
	case IDP_JWS_MALFORMED:
		return "malformed";
	case IDP_JWS_BAD_BASE64:
		return "bad_base64";
	case IDP_JWS_BAD_HEADER:
		return "bad_header";
	case IDP_JWS_ALG_MISSING:
		return "alg_missing";
	case IDP_JWS_ALG_NOT_ALLOWED:
		return "alg_not_allowed";
	case IDP_JWS_KEY_IN_HEADER:
		return "key_in_header";
	case IDP_JWS_CRIT:
		return "crit_unsupported";
	case IDP_JWS_TYP_MISMATCH:
		return "typ_mismatch";
	case IDP_JWS_KID_MISSING:
		return "kid_missing";
	case IDP_JWS_KID_UNKNOWN:
		return "kid_unknown";
	case IDP_JWS_ALG_KEY_MISMATCH:
		return "alg_key_mismatch";
	case IDP_JWS_BAD_SIGNATURE_FORMAT:
		return "bad_signature_format";
	case IDP_JWS_BAD_SIGNATURE:
		return "bad_signature";
	case IDP_JWS_BAD_PAYLOAD:
		return "bad_payload";
	case IDP_JWS_EXPIRED:
		return "expired";
	case IDP_JWS_NOT_YET_VALID:
		return "not_yet_valid";
	case IDP_JWS_ISSUED_IN_FUTURE:
		return "issued_in_future";
	case IDP_JWS_BAD_TIME_CLAIM:
		return "bad_time_claim";
	}
	return "unknown";
}

/*
 * Move the first queued OpenSSL error into diag (prefixed with what) and
 * empty this thread's queue, so that a later call does not report a stale
 * error.
 */
static void
ossl_diag(struct idp_diag *diag, const char *what)
{
	unsigned long e = ERR_get_error();
	char buf[256];

	if (e != 0) {
		ERR_error_string_n(e, buf, sizeof(buf));
		idp_diag_add(diag, "%s: %s", what, buf);
	} else {
		idp_diag_add(diag, "%s", what);
	}
	ERR_clear_error();
}

/* A kid is 1..IDP_JWS_MAX_KID bytes without control characters (it is logged). */
static bool
kid_valid(const char *kid)
{
	size_t n = strlen(kid);

	if (n == 0 || n > IDP_JWS_MAX_KID)
		return false;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)kid[i];

		if (c < 0x20 || c == 0x7f)
			return false;
	}
	return true;
}

static char *
bn_b64url(const BIGNUM *bn, int pad_to)
{
	int n = pad_to > 0 ? pad_to : BN_num_bytes(bn);
	unsigned char *buf = idp_xmalloc((size_t)(n > 0 ? n : 1));
	char *s = NULL;

	if (pad_to > 0) {
		if (BN_bn2binpad(bn, buf, pad_to) == pad_to)
			s = idp_b64url_encode(buf, (size_t)n, NULL);
	} else if (n > 0) {
		BN_bn2bin(bn, buf);
		s = idp_b64url_encode(buf, (size_t)n, NULL);
	}
	free(buf);
	return s;
}

/* Fill pub_a, pub_b and the thumbprint of a key whose pkey and alg are set. */
static int
key_fill_public(struct idp_jws_key *k, struct idp_diag *diag)
{
	BIGNUM *a = NULL, *b = NULL;
	const char *na, *nb;
	char *canon = NULL;
	unsigned char digest[SHA256_DIGEST_LENGTH];
	int rc = IDP_EINTERNAL;

	if (k->alg == IDP_JWS_ALG_ES256) {
		na = OSSL_PKEY_PARAM_EC_PUB_X;
		nb = OSSL_PKEY_PARAM_EC_PUB_Y;
	} else {
		na = OSSL_PKEY_PARAM_RSA_N;
		nb = OSSL_PKEY_PARAM_RSA_E;
	}
	if (!EVP_PKEY_get_bn_param(k->pkey, na, &a) || !EVP_PKEY_get_bn_param(k->pkey, nb, &b)) {
		ossl_diag(diag, "reading the public key");
		goto done;
	}
	if (k->alg == IDP_JWS_ALG_ES256) {
		k->pub_a = bn_b64url(a, P256_COORD_LEN);
		k->pub_b = bn_b64url(b, P256_COORD_LEN);
		if (k->pub_a == NULL || k->pub_b == NULL) {
			idp_diag_add(diag, "EC coordinate does not fit in 32 bytes");
			goto done;
		}
		/* RFC 7638: required members only, lexicographic order, no spaces. */
		canon =
		    idp_xasprintf("{\"crv\":\"P-256\",\"kty\":\"EC\",\"x\":\"%s\",\"y\":\"%s\"}",
		                  k->pub_a, k->pub_b);
	} else {
		k->pub_a = bn_b64url(a, 0);
		k->pub_b = bn_b64url(b, 0);
		if (k->pub_a == NULL || k->pub_b == NULL) {
			idp_diag_add(diag, "RSA modulus or exponent is zero");
			goto done;
		}
		canon = idp_xasprintf("{\"e\":\"%s\",\"kty\":\"RSA\",\"n\":\"%s\"}", k->pub_b,
		                      k->pub_a);
	}
	if (idp_sha256(canon, strlen(canon), NULL, 0, digest) != IDP_OK) {
		ossl_diag(diag, "hashing the public key");
		goto done;
	}
	idp_b64url_encode_to(digest, sizeof(digest), k->thumbprint);
	rc = IDP_OK;
done:
	BN_free(a);
	BN_free(b);
	free(canon);
	return rc;
}

static void
key_free(struct idp_jws_key *k)
{
	if (k == NULL)
		return;
	/* EVP_PKEY_free clears the private scalar or exponents it holds. */
	EVP_PKEY_CTX_free(k->sign_tpl);
	EVP_PKEY_CTX_free(k->verify_tpl);
	EVP_MD_free(k->sha256);
	EVP_PKEY_free(k->pkey);
	free(k->pub_a);
	free(k->pub_b);
	for (size_t i = 0; i < IDP_ARRAY_LEN(k->hdr_b64); i++)
		free(k->hdr_b64[i]);
	free(k);
}

/*
 * Check a key's public half, and for an EC key pair that the halves match.
 * For RSA only the cheap structural rules are checked (odd modulus, odd
 * exponent between 3 and 2^64): OpenSSL's own RSA check tests the modulus for
 * primality, about 10 ms per key, and RSA keys come only from the operator's
 * attestor and IdP files, which that test would not make more trustworthy.
 */
static int
key_check(const struct idp_jws_key *k, struct idp_diag *diag)
{
	EVP_PKEY_CTX *cctx;
	BIGNUM *n = NULL, *e = NULL;
	int ok;

	if (k->alg == IDP_JWS_ALG_RS256) {
		ok = EVP_PKEY_get_bn_param(k->pkey, OSSL_PKEY_PARAM_RSA_N, &n) &&
		     EVP_PKEY_get_bn_param(k->pkey, OSSL_PKEY_PARAM_RSA_E, &e) && BN_is_odd(n) &&
		     BN_is_odd(e) && !BN_is_one(e) && BN_num_bits(e) <= 64;
		BN_free(n);
		BN_free(e);
		ERR_clear_error();
		if (!ok) {
			idp_diag_add(diag,
			             "RSA key has an even modulus, or an exponent that is even, "
			             "1, or longer than 64 bits");
			return IDP_EINVAL;
		}
		return IDP_OK;
	}
	cctx = EVP_PKEY_CTX_new_from_pkey(NULL, k->pkey, NULL);
	if (cctx == NULL) {
		ossl_diag(diag, "key check");
		return IDP_EINTERNAL;
	}
	ok = k->has_private ? EVP_PKEY_pairwise_check(cctx) : EVP_PKEY_public_check(cctx);
	EVP_PKEY_CTX_free(cctx);
	if (ok != 1) {
		ossl_diag(diag, k->has_private ? "private key does not match its public key"
		                               : "public key is not a point on P-256");
		return IDP_EINVAL;
	}
	return IDP_OK;
}

static char *header_b64(const struct idp_jws_key *key, const char *typ);

/* Fill a checked key's digest, operation contexts and signing headers. */
static int
key_prepare(struct idp_jws_key *k, struct idp_diag *diag)
{
	static const char *const typs[] = {NULL, IDP_JWS_TYP_ACCESS, IDP_JWS_TYP_IDENTITY};

	k->sha256 = EVP_MD_fetch(NULL, "SHA256", NULL);
	k->verify_tpl = EVP_PKEY_CTX_new_from_pkey(NULL, k->pkey, NULL);
	if (k->sha256 == NULL || k->verify_tpl == NULL ||
	    EVP_PKEY_verify_init(k->verify_tpl) != 1 ||
	    EVP_PKEY_CTX_set_signature_md(k->verify_tpl, k->sha256) != 1) {
		ossl_diag(diag, "preparing the key for verification");
		return IDP_EINTERNAL;
	}
	if (!k->has_private)
		return IDP_OK;
	k->sign_tpl = EVP_PKEY_CTX_new_from_pkey(NULL, k->pkey, NULL);
	if (k->sign_tpl == NULL || EVP_PKEY_sign_init(k->sign_tpl) != 1 ||
	    EVP_PKEY_CTX_set_signature_md(k->sign_tpl, k->sha256) != 1) {
		ossl_diag(diag, "preparing the key for signing");
		return IDP_EINTERNAL;
	}
	for (size_t i = 0; i < IDP_ARRAY_LEN(typs); i++) {
		k->hdr_b64[i] = header_b64(k, typs[i]);
		if (k->hdr_b64[i] == NULL) {
			idp_diag_add(diag, "cannot serialize a header");
			return IDP_EINTERNAL;
		}
	}
	return IDP_OK;
}

/*
 * Wrap pkey (ownership taken, also on failure) in a key after checking that
 * it is a P-256 or acceptable RSA key and that its public part is valid.
 */
static int
key_from_pkey(EVP_PKEY *pkey, bool priv, const char *kid, struct idp_jws_key **out,
              struct idp_diag *diag)
{
	struct idp_jws_key *k = idp_xcalloc(1, sizeof(*k));
	char group[64];
	size_t glen = 0;
	int bits, rc = IDP_EINVAL;

	*out = NULL;
	atomic_init(&k->refs, 1);
	k->pkey = pkey;
	k->has_private = priv;
	switch (EVP_PKEY_get_base_id(pkey)) {
	case EVP_PKEY_EC:
		if (!EVP_PKEY_get_utf8_string_param(pkey, OSSL_PKEY_PARAM_GROUP_NAME, group,
		                                    sizeof(group), &glen) ||
		    strcmp(group, "prime256v1") != 0) {
			ERR_clear_error();
			idp_diag_add(diag, "EC key is not on curve P-256");
			goto done;
		}
		k->alg = IDP_JWS_ALG_ES256;
		k->sig_len = ES256_SIG_LEN;
		break;
	case EVP_PKEY_RSA:
		bits = EVP_PKEY_get_bits(pkey);
		if (bits < IDP_JWS_MIN_RSA_BITS || bits > IDP_JWS_MAX_RSA_BITS) {
			idp_diag_add(diag, "RSA key has %d bits; %d to %d are accepted", bits,
			             IDP_JWS_MIN_RSA_BITS, IDP_JWS_MAX_RSA_BITS);
			goto done;
		}
		k->alg = IDP_JWS_ALG_RS256;
		k->sig_len = (size_t)EVP_PKEY_get_size(pkey);
		break;
	default:
		idp_diag_add(diag, "unsupported key type (EC P-256 or RSA expected)");
		goto done;
	}
	rc = key_check(k, diag);
	if (rc != IDP_OK)
		goto done;
	rc = key_fill_public(k, diag);
	if (rc != IDP_OK)
		goto done;
	if (kid == NULL)
		kid = k->thumbprint;
	if (!kid_valid(kid)) {
		idp_diag_add(diag, "kid must be 1 to %d bytes without control characters",
		             IDP_JWS_MAX_KID);
		rc = IDP_EINVAL;
		goto done;
	}
	snprintf(k->kid, sizeof(k->kid), "%s", kid);
	rc = key_prepare(k, diag);
	if (rc != IDP_OK)
		goto done;
	*out = k;
	k = NULL;
	rc = IDP_OK;
done:
	key_free(k);
	return rc;
}

int
idp_jws_key_generate(const char *kid, struct idp_jws_key **out, struct idp_diag *diag)
{
	EVP_PKEY *pkey = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");

	*out = NULL;
	if (pkey == NULL) {
		ossl_diag(diag, "generating a P-256 key");
		return IDP_EINTERNAL;
	}
	return key_from_pkey(pkey, true, kid, out, diag);
}

int
idp_jws_key_from_pem(const char *pem, size_t len, const char *kid, struct idp_jws_key **out,
                     struct idp_diag *diag)
{
	EVP_PKEY *pkey = NULL;
	BIO *bio;
	bool priv = false;

	*out = NULL;
	if (len > INT32_MAX) {
		idp_diag_add(diag, "PEM key too large");
		return IDP_ETOOBIG;
	}
	bio = BIO_new_mem_buf(pem, (int)len);
	if (bio == NULL) {
		ossl_diag(diag, "PEM buffer");
		return IDP_EINTERNAL;
	}
	pkey = PEM_read_bio_PrivateKey(bio, NULL, idp_pem_no_passphrase, NULL);
	if (pkey != NULL) {
		priv = true;
	} else {
		ERR_clear_error();
		BIO_free(bio);
		bio = BIO_new_mem_buf(pem, (int)len);
		if (bio == NULL) {
			ossl_diag(diag, "PEM buffer");
			return IDP_EINTERNAL;
		}
		pkey = PEM_read_bio_PUBKEY(bio, NULL, idp_pem_no_passphrase, NULL);
	}
	BIO_free(bio);
	if (pkey == NULL) {
		ossl_diag(diag, "not a PEM private key or public key");
		return IDP_EINVAL;
	}
	return key_from_pkey(pkey, priv, kid, out, diag);
}

int
idp_jws_key_from_der(const unsigned char *der, size_t len, const char *kid,
                     struct idp_jws_key **out, struct idp_diag *diag)
{
	const unsigned char *p = der;
	EVP_PKEY *pkey;
	bool priv = true;

	*out = NULL;
	if (len > INT32_MAX) {
		idp_diag_add(diag, "DER key too large");
		return IDP_ETOOBIG;
	}
	pkey = d2i_AutoPrivateKey(NULL, &p, (long)len);
	if (pkey == NULL || p != der + len) {
		EVP_PKEY_free(pkey);
		ERR_clear_error();
		priv = false;
		p = der;
		pkey = d2i_PUBKEY(NULL, &p, (long)len);
		if (pkey != NULL && p != der + len) {
			EVP_PKEY_free(pkey);
			pkey = NULL;
		}
	}
	if (pkey == NULL) {
		ossl_diag(diag, "not a DER private key or public key");
		return IDP_EINVAL;
	}
	return key_from_pkey(pkey, priv, kid, out, diag);
}

/* Decode a base64url JWK member; exact_len 0 means any non-zero length up to cap. */
static int
jwk_member(const json_t *jwk, const char *name, unsigned char *buf, size_t cap, size_t exact_len,
           size_t *out_len, struct idp_diag *diag)
{
	const json_t *v = json_object_get(jwk, name);
	const char *s;

	if (!json_is_string(v)) {
		idp_diag_add(diag, "JWK member \"%s\" missing or not a string", name);
		return IDP_EINVAL;
	}
	s = json_string_value(v);
	if (idp_b64url_decode(s, json_string_length(v), buf, cap, out_len) != IDP_OK) {
		idp_diag_add(diag, "JWK member \"%s\" is not strict base64url or too long", name);
		return IDP_EINVAL;
	}
	if (*out_len == 0 || (exact_len != 0 && *out_len != exact_len)) {
		idp_diag_add(diag, "JWK member \"%s\" has %zu bytes, expected %zu", name, *out_len,
		             exact_len);
		return IDP_EINVAL;
	}
	return IDP_OK;
}

static EVP_PKEY *
pkey_from_params(const char *type, OSSL_PARAM_BLD *bld, struct idp_diag *diag)
{
	OSSL_PARAM *params = OSSL_PARAM_BLD_to_param(bld);
	EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, type, NULL);
	EVP_PKEY *pkey = NULL;

	if (params == NULL || ctx == NULL || EVP_PKEY_fromdata_init(ctx) != 1 ||
	    EVP_PKEY_fromdata(ctx, &pkey, EVP_PKEY_PUBLIC_KEY, params) != 1) {
		ossl_diag(diag, "JWK is not a valid public key");
		pkey = NULL;
	}
	OSSL_PARAM_free(params);
	EVP_PKEY_CTX_free(ctx);
	return pkey;
}

static EVP_PKEY *
jwk_ec(const json_t *jwk, struct idp_diag *diag)
{
	unsigned char point[1 + 2 * P256_COORD_LEN];
	OSSL_PARAM_BLD *bld;
	EVP_PKEY *pkey = NULL;
	size_t n;

	point[0] = 0x04; /* uncompressed: 04 || x || y */
	if (jwk_member(jwk, "x", point + 1, P256_COORD_LEN, P256_COORD_LEN, &n, diag) != IDP_OK ||
	    jwk_member(jwk, "y", point + 1 + P256_COORD_LEN, P256_COORD_LEN, P256_COORD_LEN, &n,
	               diag) != IDP_OK)
		return NULL;
	bld = OSSL_PARAM_BLD_new();
	if (bld == NULL ||
	    !OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, "prime256v1", 0) ||
	    !OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, point, sizeof(point))) {
		ossl_diag(diag, "building an EC key");
	} else {
		pkey = pkey_from_params("EC", bld, diag);
	}
	OSSL_PARAM_BLD_free(bld);
	return pkey;
}

static EVP_PKEY *
jwk_rsa(const json_t *jwk, struct idp_diag *diag)
{
	unsigned char nbuf[IDP_JWS_MAX_RSA_BITS / 8 + 1], ebuf[16];
	size_t nlen, elen;
	BIGNUM *n = NULL, *e = NULL;
	OSSL_PARAM_BLD *bld = NULL;
	EVP_PKEY *pkey = NULL;

	if (jwk_member(jwk, "n", nbuf, sizeof(nbuf), 0, &nlen, diag) != IDP_OK ||
	    jwk_member(jwk, "e", ebuf, sizeof(ebuf), 0, &elen, diag) != IDP_OK)
		return NULL;
	n = BN_bin2bn(nbuf, (int)nlen, NULL);
	e = BN_bin2bn(ebuf, (int)elen, NULL);
	bld = OSSL_PARAM_BLD_new();
	if (n == NULL || e == NULL || bld == NULL) {
		ossl_diag(diag, "building an RSA key");
		goto done;
	}
	if (!OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, n) ||
	    !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, e)) {
		ossl_diag(diag, "building an RSA key");
		goto done;
	}
	pkey = pkey_from_params("RSA", bld, diag);
done:
	OSSL_PARAM_BLD_free(bld);
	BN_free(n);
	BN_free(e);
	return pkey;
}

/*
 * Parse one JWK.  *unsupported is set (and IDP_EINVAL returned) when the key
 * is well-formed but of a kind idpd does not verify with, so a JWKS reader can
 * skip it instead of failing.
 */
static int
jwk_parse(const json_t *jwk, struct idp_jws_key **out, bool *unsupported, struct idp_diag *diag)
{
	static const char *const private_members[] = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"};
	const char *kty, *alg, *use, *kid = NULL;
	const json_t *v, *ops;
	enum idp_jws_alg want;
	EVP_PKEY *pkey;
	struct idp_jws_key *k = NULL;
	int rc;

	*out = NULL;
	*unsupported = false;
	if (!json_is_object(jwk)) {
		idp_diag_add(diag, "JWK is not a JSON object");
		return IDP_EINVAL;
	}
	for (size_t i = 0; i < IDP_ARRAY_LEN(private_members); i++) {
		if (json_object_get(jwk, private_members[i]) != NULL) {
			idp_diag_add(diag,
			             "JWK has private member \"%s\"; only public keys belong here",
			             private_members[i]);
			return IDP_EINVAL;
		}
	}
	kty = json_string_value(json_object_get(jwk, "kty"));
	if (kty == NULL) {
		idp_diag_add(diag, "JWK has no \"kty\"");
		return IDP_EINVAL;
	}
	v = json_object_get(jwk, "use");
	use = json_string_value(v);
	if (v != NULL && use == NULL) {
		idp_diag_add(diag, "JWK \"use\" is not a string");
		return IDP_EINVAL;
	}
	ops = json_object_get(jwk, "key_ops");
	if (ops != NULL && !json_is_array(ops)) {
		idp_diag_add(diag, "JWK \"key_ops\" is not an array");
		return IDP_EINVAL;
	}
	if (strcmp(kty, "EC") == 0) {
		const char *crv = json_string_value(json_object_get(jwk, "crv"));

		if (crv == NULL) {
			idp_diag_add(diag, "EC JWK has no \"crv\"");
			return IDP_EINVAL;
		}
		if (strcmp(crv, "P-256") != 0) {
			idp_diag_add(diag, "EC curve \"%s\" is not supported", crv);
			*unsupported = true;
			return IDP_EINVAL;
		}
		want = IDP_JWS_ALG_ES256;
	} else if (strcmp(kty, "RSA") == 0) {
		want = IDP_JWS_ALG_RS256;
	} else {
		idp_diag_add(diag, "key type \"%s\" is not supported", kty);
		*unsupported = true;
		return IDP_EINVAL;
	}
	v = json_object_get(jwk, "alg");
	alg = json_string_value(v);
	if (v != NULL && alg == NULL) {
		idp_diag_add(diag, "JWK \"alg\" is not a string");
		return IDP_EINVAL;
	}
	if (alg != NULL && strcmp(alg, idp_jws_alg_name(want)) != 0) {
		idp_diag_add(diag, "JWK alg \"%s\" is not supported for kty \"%s\"", alg, kty);
		*unsupported = true;
		return IDP_EINVAL;
	}
	if (use != NULL && strcmp(use, "sig") != 0) {
		idp_diag_add(diag, "JWK use \"%s\" is not \"sig\"", use);
		*unsupported = true;
		return IDP_EINVAL;
	}
	if (ops != NULL) {
		bool verify = false;
		size_t i;

		json_array_foreach(ops, i, v)
		{
			if (json_is_string(v) && strcmp(json_string_value(v), "verify") == 0)
				verify = true;
		}
		if (!verify) {
			idp_diag_add(diag, "JWK key_ops does not include \"verify\"");
			*unsupported = true;
			return IDP_EINVAL;
		}
	}
	v = json_object_get(jwk, "kid");
	if (v != NULL) {
		kid = json_string_value(v);
		if (kid == NULL || strlen(kid) != json_string_length(v)) {
			idp_diag_add(diag, "JWK \"kid\" is not a string");
			return IDP_EINVAL;
		}
	}
	pkey = want == IDP_JWS_ALG_ES256 ? jwk_ec(jwk, diag) : jwk_rsa(jwk, diag);
	if (pkey == NULL)
		return IDP_EINVAL;
	rc = key_from_pkey(pkey, false, kid, &k, diag);
	if (rc != IDP_OK)
		return rc;
	*out = k;
	return IDP_OK;
}

int
idp_jws_key_from_jwk(const json_t *jwk, struct idp_jws_key **out, struct idp_diag *diag)
{
	bool unsupported;

	return jwk_parse(jwk, out, &unsupported, diag);
}

struct idp_jws_key *
idp_jws_key_ref(struct idp_jws_key *key)
{
	atomic_fetch_add_explicit(&key->refs, 1, memory_order_relaxed);
	return key;
}

void
idp_jws_key_unref(struct idp_jws_key *key)
{
	if (key == NULL)
		return;
	if (atomic_fetch_sub_explicit(&key->refs, 1, memory_order_acq_rel) == 1)
		key_free(key);
}

const char *
idp_jws_key_kid(const struct idp_jws_key *key)
{
	return key->kid;
}

enum idp_jws_alg
idp_jws_key_alg(const struct idp_jws_key *key)
{
	return key->alg;
}

bool
idp_jws_key_has_private(const struct idp_jws_key *key)
{
	return key->has_private;
}

void
idp_jws_key_thumbprint(const struct idp_jws_key *key, char out[44])
{
	memcpy(out, key->thumbprint, 44);
}

int
idp_jws_key_private_der(const struct idp_jws_key *key, unsigned char **der, size_t *len)
{
	PKCS8_PRIV_KEY_INFO *p8;
	unsigned char *tmp = NULL;
	int n;

	*der = NULL;
	*len = 0;
	if (!key->has_private)
		return IDP_EINVAL;
	p8 = EVP_PKEY2PKCS8(key->pkey);
	if (p8 == NULL) {
		ERR_clear_error();
		return IDP_EINTERNAL;
	}
	n = i2d_PKCS8_PRIV_KEY_INFO(p8, &tmp);
	PKCS8_PRIV_KEY_INFO_free(p8);
	if (n <= 0) {
		ERR_clear_error();
		return IDP_EINTERNAL;
	}
	*der = idp_xmalloc((size_t)n);
	memcpy(*der, tmp, (size_t)n);
	*len = (size_t)n;
	OPENSSL_clear_free(tmp, (size_t)n);
	return IDP_OK;
}

/* Copy a memory BIO's contents into a new NUL-terminated string. */
static char *
bio_take(BIO *bio, size_t *len)
{
	char *data;
	long n = BIO_get_mem_data(bio, &data);
	char *s;

	if (n < 0)
		return NULL;
	s = idp_xstrndup(data, (size_t)n);
	if (len != NULL)
		*len = (size_t)n;
	return s;
}

int
idp_jws_key_private_pem(const struct idp_jws_key *key, char **pem, size_t *len)
{
	/* Secure memory BIO: its buffer is cleansed when freed. */
	BIO *bio;
	int rc = IDP_EINTERNAL;

	*pem = NULL;
	if (len != NULL)
		*len = 0;
	if (!key->has_private)
		return IDP_EINVAL;
	bio = BIO_new(BIO_s_secmem());
	if (bio == NULL)
		goto done;
	if (PEM_write_bio_PKCS8PrivateKey(bio, key->pkey, NULL, NULL, 0, NULL, NULL) != 1)
		goto done;
	*pem = bio_take(bio, len);
	if (*pem != NULL)
		rc = IDP_OK;
done:
	ERR_clear_error();
	BIO_free(bio);
	return rc;
}

char *
idp_jws_key_public_pem(const struct idp_jws_key *key)
{
	BIO *bio = BIO_new(BIO_s_mem());
	char *s = NULL;

	if (bio != NULL && PEM_write_bio_PUBKEY(bio, key->pkey) == 1)
		s = bio_take(bio, NULL);
	BIO_free(bio);
	ERR_clear_error();
	if (s == NULL) {
		/* Only a broken OpenSSL gets here: the key was valid when built. */
		s = idp_xstrdup("");
	}
	return s;
}

json_t *
idp_jws_key_public_jwk(const struct idp_jws_key *key)
{
	json_t *o = json_object();

	if (key->alg == IDP_JWS_ALG_ES256) {
		json_object_set_new(o, "kty", json_string("EC"));
		json_object_set_new(o, "crv", json_string("P-256"));
		json_object_set_new(o, "x", json_string(key->pub_a));
		json_object_set_new(o, "y", json_string(key->pub_b));
	} else {
		json_object_set_new(o, "kty", json_string("RSA"));
		json_object_set_new(o, "n", json_string(key->pub_a));
		json_object_set_new(o, "e", json_string(key->pub_b));
	}
	json_object_set_new(o, "kid", json_string(key->kid));
	json_object_set_new(o, "use", json_string("sig"));
	json_object_set_new(o, "alg", json_string(idp_jws_alg_name(key->alg)));
	return o;
}

/* ---- key sets ---- */

int
idp_jws_keyset_new(struct idp_jws_key *const *keys, size_t n, struct idp_jws_keyset **out,
                   struct idp_diag *diag)
{
	struct idp_jws_keyset *set;

	*out = NULL;
	for (size_t i = 0; i < n; i++) {
		for (size_t j = 0; j < i; j++) {
			if (strcmp(keys[i]->kid, keys[j]->kid) == 0) {
				idp_diag_add(diag, "two keys have kid \"%s\"", keys[i]->kid);
				return IDP_ECONFLICT;
			}
		}
	}
	set = idp_xcalloc(1, sizeof(*set));
	atomic_init(&set->refs, 1);
	set->n = n;
	set->keys = idp_xcalloc(n ? n : 1, sizeof(*set->keys));
	for (size_t i = 0; i < n; i++)
		set->keys[i] = idp_jws_key_ref(keys[i]);
	*out = set;
	return IDP_OK;
}

int
idp_jws_keyset_from_jwks(const char *json, size_t len, struct idp_jws_keyset **out,
                         struct idp_diag *diag)
{
	struct idp_jws_key *keys[IDP_JWS_MAX_JWKS_KEYS];
	size_t nkeys = 0, i;
	json_error_t jerr;
	json_t *root = NULL, *arr, *jwk;
	int rc = IDP_EINVAL;

	*out = NULL;
	if (len > IDP_JWS_MAX_JWKS) {
		idp_diag_add(diag, "JWKS is larger than %d bytes", IDP_JWS_MAX_JWKS);
		return IDP_ETOOBIG;
	}
	root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &jerr);
	if (root == NULL) {
		idp_diag_add(diag, "JWKS line %d column %d: %s", jerr.line, jerr.column, jerr.text);
		return IDP_EINVAL;
	}
	arr = json_object_get(root, "keys");
	if (!json_is_object(root) || !json_is_array(arr)) {
		idp_diag_add(diag, "JWKS is not an object with a \"keys\" array");
		goto done;
	}
	if (json_array_size(arr) > IDP_JWS_MAX_JWKS_KEYS) {
		idp_diag_add(diag, "JWKS has %zu keys; at most %d are accepted",
		             json_array_size(arr), IDP_JWS_MAX_JWKS_KEYS);
		rc = IDP_ETOOBIG;
		goto done;
	}
	rc = IDP_OK;
	json_array_foreach(arr, i, jwk)
	{
		struct idp_diag one;
		bool unsupported;

		idp_diag_init(&one);
		if (jwk_parse(jwk, &keys[nkeys], &unsupported, &one) == IDP_OK) {
			if (json_object_get(jwk, "kid") == NULL) {
				idp_diag_add(diag, "keys[%zu]: no \"kid\"", i);
				idp_jws_key_unref(keys[nkeys]);
				rc = IDP_EINVAL;
				continue;
			}
			nkeys++;
		} else if (!unsupported) {
			idp_diag_add(diag, "keys[%zu]: %s", i, idp_diag_str(&one));
			rc = IDP_EINVAL;
		}
	}
	if (rc == IDP_OK && nkeys == 0) {
		idp_diag_add(diag, "JWKS has no usable key (EC P-256 or RSA, use sig)");
		rc = IDP_EINVAL;
	}
	if (rc == IDP_OK)
		rc = idp_jws_keyset_new(keys, nkeys, out, diag) == IDP_OK ? IDP_OK : IDP_EINVAL;
done:
	for (i = 0; i < nkeys; i++)
		idp_jws_key_unref(keys[i]);
	json_decref(root);
	return rc;
}

int
idp_jws_keyset_from_read(const char *path, const char *data, size_t len, const char *error,
                         struct idp_jws_keyset **out, struct idp_diag *diag)
{
	int rc;

	if (data != NULL) {
		rc = idp_jws_keyset_from_jwks(data, len, out, diag);
		if (rc != IDP_OK)
			idp_diag_add(diag, "in %s", path);
		return rc;
	}
	if (error != NULL) {
		*out = NULL;
		idp_diag_add(diag, "%s", error);
		return IDP_EIO;
	}
	return idp_jws_keyset_load_jwks_file(path, out, diag);
}

int
idp_jws_keyset_load_jwks_file(const char *path, struct idp_jws_keyset **out, struct idp_diag *diag)
{
	char ebuf[128];
	struct stat st;
	char *data = NULL;
	size_t got = 0;
	int fd, rc = IDP_EIO;

	*out = NULL;
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		idp_diag_add(diag, "%s: %s", path, idp_strerror(errno, ebuf, sizeof(ebuf)));
		return IDP_EIO;
	}
	if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
		idp_diag_add(diag, "%s: not a regular file", path);
		goto done;
	}
	if (st.st_size > IDP_JWS_MAX_JWKS) {
		idp_diag_add(diag, "%s: larger than %d bytes", path, IDP_JWS_MAX_JWKS);
		rc = IDP_ETOOBIG;
		goto done;
	}
	data = idp_xmalloc((size_t)st.st_size + 1);
	while (got < (size_t)st.st_size) {
		ssize_t n = read(fd, data + got, (size_t)st.st_size - got);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			idp_diag_add(diag, "%s: short read", path);
			goto done;
		}
		got += (size_t)n;
	}
	rc = idp_jws_keyset_from_jwks(data, got, out, diag);
	if (rc != IDP_OK)
		idp_diag_add(diag, "in %s", path);
done:
	free(data);
	close(fd);
	return rc;
}

struct idp_jws_keyset *
idp_jws_keyset_ref(struct idp_jws_keyset *set)
{
	atomic_fetch_add_explicit(&set->refs, 1, memory_order_relaxed);
	return set;
}

void
idp_jws_keyset_unref(struct idp_jws_keyset *set)
{
	if (set == NULL)
		return;
	if (atomic_fetch_sub_explicit(&set->refs, 1, memory_order_acq_rel) != 1)
		return;
	for (size_t i = 0; i < set->n; i++)
		idp_jws_key_unref(set->keys[i]);
	free(set->keys);
	free(set);
}

size_t
idp_jws_keyset_count(const struct idp_jws_keyset *set)
{
	return set->n;
}

const struct idp_jws_key *
idp_jws_keyset_key(const struct idp_jws_keyset *set, size_t i)
{
	return i < set->n ? set->keys[i] : NULL;
}

const struct idp_jws_key *
idp_jws_keyset_find(const struct idp_jws_keyset *set, const char *kid)
{
	/* Sets hold a handful of keys; a scan beats a hash here. */
	for (size_t i = 0; i < set->n; i++) {
		if (strcmp(set->keys[i]->kid, kid) == 0)
			return set->keys[i];
	}
	return NULL;
}

json_t *
idp_jws_keyset_to_jwks(const struct idp_jws_keyset *set)
{
	json_t *arr = json_array();

	for (size_t i = 0; i < set->n; i++)
		json_array_append_new(arr, idp_jws_key_public_jwk(set->keys[i]));
	return json_pack("{s:o}", "keys", arr);
}

/* ---- signatures ---- */

static bool
p256_scalar_in_range(const unsigned char s[P256_COORD_LEN])
{
	unsigned char any = 0;

	for (size_t i = 0; i < P256_COORD_LEN; i++)
		any |= s[i];
	/* Big-endian byte strings of equal length compare like the integers. */
	return any != 0 && memcmp(s, p256_order, P256_COORD_LEN) < 0;
}

/* Whether s (in [1, n-1]) is in the lower half: s <= (n - 1) / 2. */
static bool
p256_scalar_low(const unsigned char s[P256_COORD_LEN])
{
	return memcmp(s, p256_half_order, P256_COORD_LEN) <= 0;
}

/*
 * ECDSA signatures are malleable: (r, s) and (r, n - s) both verify.  idpd
 * signs only the form with the lower s, so each of its tokens has one
 * spelling (its hash keys the caches; a second spelling would be a token
 * nobody issued).  s is in [1, n-1], so n - s is too.
 */
static void
p256_low_s(unsigned char s[P256_COORD_LEN])
{
	unsigned borrow = 0;

	if (p256_scalar_low(s))
		return;
	for (size_t i = P256_COORD_LEN; i-- > 0;) {
		unsigned d = (unsigned)p256_order[i] - s[i] - borrow;

		s[i] = (unsigned char)d;
		borrow = (d >> 8) & 1;
	}
}

/*
 * DER ECDSA-Sig-Value (as OpenSSL produces it) -> 64-byte r || s.  For P-256
 * each INTEGER is at most 33 bytes, so every DER length is in short form.
 */
static int
ecdsa_der_to_raw(const unsigned char *der, size_t len, unsigned char raw[ES256_SIG_LEN])
{
	size_t pos = 2;

	if (len < 8 || der[0] != 0x30 || der[1] != len - 2)
		return IDP_EINTERNAL;
	for (int i = 0; i < 2; i++) {
		const unsigned char *p;
		size_t n;

		if (pos + 2 > len || der[pos] != 0x02)
			return IDP_EINTERNAL;
		n = der[pos + 1];
		pos += 2;
		if (n == 0 || n > len - pos)
			return IDP_EINTERNAL;
		p = der + pos;
		pos += n;
		/* Drop leading zero bytes (the sign byte, or a short value's). */
		while (n > 0 && *p == 0) {
			p++;
			n--;
		}
		if (n > P256_COORD_LEN)
			return IDP_EINTERNAL;
		memset(raw + i * P256_COORD_LEN, 0, P256_COORD_LEN - n);
		memcpy(raw + (i + 1) * P256_COORD_LEN - n, p, n);
	}
	return pos == len ? IDP_OK : IDP_EINTERNAL;
}

/*
 * 64-byte r || s, both already checked to be in [1, n-1] -> DER, at most
 * ECDSA_DER_MAX bytes.  Returns the length.
 */
#define ECDSA_DER_MAX (2 + 2 * (2 + 1 + P256_COORD_LEN))
static size_t
ecdsa_raw_to_der(const unsigned char raw[ES256_SIG_LEN], unsigned char der[ECDSA_DER_MAX])
{
	size_t pos = 2;

	for (int i = 0; i < 2; i++) {
		const unsigned char *p = raw + i * P256_COORD_LEN;
		size_t n = P256_COORD_LEN;

		/* Minimal encoding: no leading zeros, but a zero before a high bit. */
		while (n > 1 && *p == 0) {
			p++;
			n--;
		}
		der[pos++] = 0x02;
		der[pos++] = (unsigned char)(n + (*p & 0x80 ? 1 : 0));
		if (*p & 0x80)
			der[pos++] = 0x00;
		memcpy(der + pos, p, n);
		pos += n;
	}
	der[0] = 0x30;
	der[1] = (unsigned char)(pos - 2);
	return pos;
}

/*
 * Sign input with key into sig (room for MAX_SIG_LEN); *sig_len gets the
 * JOSE signature length.  The digest is computed here with the key's
 * pre-fetched SHA-256 and the signature made on a duplicate of the key's
 * prepared context, so nothing is looked up per call.  OpenSSL errors go to
 * diag.
 */
static int
sign_input(const struct idp_jws_key *key, const char *input, size_t len, unsigned char *sig,
           size_t *sig_len, struct idp_diag *diag)
{
	unsigned char digest[SHA256_DIGEST_LENGTH], der[MAX_SIG_LEN + 16];
	size_t der_len = sizeof(der);
	EVP_PKEY_CTX *ctx = NULL;
	int rc = IDP_EINTERNAL;

	if (idp_sha256(input, len, NULL, 0, digest) != IDP_OK) {
		ossl_diag(diag, "signing");
		goto done;
	}
	if ((ctx = EVP_PKEY_CTX_dup(key->sign_tpl)) == NULL ||
	    EVP_PKEY_sign(ctx, der, &der_len, digest, sizeof(digest)) != 1) {
		ossl_diag(diag, "signing");
		goto done;
	}
	if (key->alg == IDP_JWS_ALG_ES256) {
		if (ecdsa_der_to_raw(der, der_len, sig) != IDP_OK) {
			idp_diag_add(diag, "unexpected ECDSA signature encoding");
			goto done;
		}
		p256_low_s(sig + P256_COORD_LEN);
		*sig_len = ES256_SIG_LEN;
	} else {
		memcpy(sig, der, der_len);
		*sig_len = der_len;
	}
	rc = IDP_OK;
done:
	EVP_PKEY_CTX_free(ctx);
	idp_wipe(digest, sizeof(digest));
	return rc;
}

/*
 * Check a JOSE signature over input with key.  Returns IDP_JWS_OK,
 * IDP_JWS_BAD_SIGNATURE_FORMAT (length, or r/s outside [1, n-1]) or
 * IDP_JWS_BAD_SIGNATURE.  The range check is explicit so that correctness
 * never rests on the crypto library refusing r = s = 0 (CVE-2022-21449).
 * Visible to tests, which feed it the RFC 7515 vectors.
 */
IDP_STATIC enum idp_jws_reason
jws_check_signature(const struct idp_jws_key *key, const char *input, size_t len,
                    const unsigned char *sig, size_t sig_len)
{
	unsigned char digest[SHA256_DIGEST_LENGTH], der[ECDSA_DER_MAX];
	const unsigned char *vsig = sig;
	size_t vlen = sig_len;
	EVP_PKEY_CTX *ctx;
	enum idp_jws_reason reason = IDP_JWS_BAD_SIGNATURE;

	if (sig_len != key->sig_len)
		return IDP_JWS_BAD_SIGNATURE_FORMAT;
	if (key->alg == IDP_JWS_ALG_ES256) {
		if (!p256_scalar_in_range(sig) || !p256_scalar_in_range(sig + P256_COORD_LEN))
			return IDP_JWS_BAD_SIGNATURE_FORMAT;
		vlen = ecdsa_raw_to_der(sig, der);
		vsig = der;
	}
	if (idp_sha256(input, len, NULL, 0, digest) == IDP_OK) {
		ctx = EVP_PKEY_CTX_dup(key->verify_tpl);
		if (ctx != NULL && EVP_PKEY_verify(ctx, vsig, vlen, digest, sizeof(digest)) == 1)
			reason = IDP_JWS_OK;
		EVP_PKEY_CTX_free(ctx);
	}
	ERR_clear_error();
	return reason;
}

static json_t *
header_json(const struct idp_jws_key *key, const char *typ)
{
	json_t *h = json_object();

	json_object_set_new(h, "alg", json_string(idp_jws_alg_name(key->alg)));
	json_object_set_new(h, "kid", json_string(key->kid));
	if (typ != NULL)
		json_object_set_new(h, "typ", json_string(typ));
	return h;
}

/* The base64url header for typ, a new string; NULL if it cannot be serialized. */
static char *
header_b64(const struct idp_jws_key *key, const char *typ)
{
	json_t *h = header_json(key, typ);
	char *text = json_dumps(h, JSON_COMPACT | JSON_PRESERVE_ORDER), *b64 = NULL;

	if (text != NULL)
		b64 = idp_b64url_encode(text, strlen(text), NULL);
	free(text);
	json_decref(h);
	return b64;
}

/* Index into hdr_b64 of a typ whose header is prepared, or -1. */
static int
prepared_typ(const char *typ)
{
	if (typ == NULL)
		return 0;
	if (strcmp(typ, IDP_JWS_TYP_ACCESS) == 0)
		return 1;
	if (strcmp(typ, IDP_JWS_TYP_IDENTITY) == 0)
		return 2;
	return -1;
}

int
idp_jws_sign_payload(const struct idp_jws_key *key, const char *typ, const char *payload,
                     size_t payload_len, char **out, size_t *out_len, struct idp_diag *diag)
{
	unsigned char sig[MAX_SIG_LEN];
	size_t sig_len = 0, hlen, total, pos;
	const char *hdr;
	char *own_hdr = NULL, *tok = NULL;
	int slot, rc = IDP_EINVAL;

	*out = NULL;
	if (out_len != NULL)
		*out_len = 0;
	if (!key->has_private) {
		idp_diag_add(diag, "key \"%s\" has no private half", key->kid);
		return IDP_EINVAL;
	}
	if (typ != NULL && (typ[0] == '\0' || strlen(typ) > 64)) {
		idp_diag_add(diag, "typ must be 1 to 64 bytes");
		return IDP_EINVAL;
	}
	slot = prepared_typ(typ);
	if (slot >= 0) {
		hdr = key->hdr_b64[slot];
	} else {
		own_hdr = header_b64(key, typ);
		if (own_hdr == NULL) {
			idp_diag_add(diag, "cannot serialize the header");
			rc = IDP_EINTERNAL;
			goto done;
		}
		hdr = own_hdr;
	}
	hlen = strlen(hdr);
	/* A token idpd's own verifier would refuse is not worth producing. */
	if (payload_len > IDP_JWS_MAX_TOKEN ||
	    (total = hlen + 1 + idp_b64url_encoded_len(payload_len) + 1 +
	             idp_b64url_encoded_len(key->sig_len)) > IDP_JWS_MAX_TOKEN) {
		idp_diag_add(diag, "token would exceed %d bytes", IDP_JWS_MAX_TOKEN);
		rc = IDP_ETOOBIG;
		goto done;
	}
	tok = idp_xmalloc(total + 1);
	memcpy(tok, hdr, hlen);
	pos = hlen;
	tok[pos++] = '.';
	pos += idp_b64url_encode_to(payload, payload_len, tok + pos);
	rc = sign_input(key, tok, pos, sig, &sig_len, diag);
	if (rc != IDP_OK)
		goto done;
	tok[pos++] = '.';
	pos += idp_b64url_encode_to(sig, sig_len, tok + pos);
	*out = tok;
	tok = NULL;
	if (out_len != NULL)
		*out_len = pos;
done:
	free(own_hdr);
	free(tok);
	return rc;
}

int
idp_jws_sign(const struct idp_jws_key *key, const char *typ, const json_t *claims, char **out,
             size_t *out_len, struct idp_diag *diag)
{
	char *payload;
	int rc;

	*out = NULL;
	if (out_len != NULL)
		*out_len = 0;
	if (!json_is_object(claims)) {
		idp_diag_add(diag, "claims must be a JSON object");
		return IDP_EINVAL;
	}
	payload = json_dumps(claims, JSON_COMPACT);
	if (payload == NULL) {
		idp_diag_add(diag, "claims cannot be serialized");
		return IDP_EINVAL;
	}
	rc = idp_jws_sign_payload(key, typ, payload, strlen(payload), out, out_len, diag);
	free(payload);
	return rc;
}

/* ---- verification ---- */

/*
 * RFC 7515 4.1.9: typ is a media type, compared case-insensitively, and a
 * value without '/' stands for "application/" + value.  So "at+jwt" and
 * "application/at+jwt" are the same type (RFC 9068 section 2.1).
 */
static const char *
typ_short(const char *t)
{
	if (strncasecmp(t, "application/", 12) == 0 && strchr(t + 12, '/') == NULL)
		return t + 12;
	return t;
}

bool
idp_jws_typ_matches(const char *typ, const char *expected)
{
	if (expected == NULL)
		return true;
	if (typ == NULL)
		return false;
	return strcasecmp(typ_short(typ), typ_short(expected)) == 0;
}

static int
parse_alg(const char *s, enum idp_jws_alg *alg)
{
	/* Algorithm names are case-sensitive (RFC 7518 section 3.1). */
	if (strcmp(s, "ES256") == 0)
		*alg = IDP_JWS_ALG_ES256;
	else if (strcmp(s, "RS256") == 0)
		*alg = IDP_JWS_ALG_RS256;
	else
		return IDP_EINVAL;
	return IDP_OK;
}

static int
fail(enum idp_jws_reason r, enum idp_jws_reason *reason)
{
	if (reason != NULL)
		*reason = r;
	switch (r) {
	case IDP_JWS_TOO_LARGE:
		return IDP_ETOOBIG;
	case IDP_JWS_MALFORMED:
	case IDP_JWS_BAD_BASE64:
	case IDP_JWS_BAD_HEADER:
	case IDP_JWS_BAD_PAYLOAD:
		return IDP_EINVAL;
	default:
		return IDP_EUNAUTH;
	}
}

/* Parse JSON text that must be exactly one object with no duplicate member names. */
static json_t *
parse_object(const unsigned char *text, size_t len)
{
	json_t *v = json_loadb((const char *)text, len, JSON_REJECT_DUPLICATES, NULL);

	if (v != NULL && !json_is_object(v)) {
		json_decref(v);
		v = NULL;
	}
	return v;
}

/*
 * Apply the header rules; *alg_out gets the token's algorithm and *key_out
 * the key its kid names.  No signature arithmetic happens here.
 */
static enum idp_jws_reason
check_header(const json_t *hdr, const struct idp_jws_keyset *set,
             const struct idp_jws_verify_opts *opts, enum idp_jws_alg *alg_out,
             const struct idp_jws_key **key_out)
{
	static const char *const key_headers[] = {"jku", "jwk", "x5u", "x5c"};
	unsigned allowed = opts->algs ? opts->algs : IDP_JWS_ALLOW_ES256;
	const json_t *v;
	const char *kid;
	const struct idp_jws_key *key;
	enum idp_jws_alg alg;

	v = json_object_get(hdr, "alg");
	if (v == NULL)
		return IDP_JWS_ALG_MISSING;
	if (!json_is_string(v) || parse_alg(json_string_value(v), &alg) != IDP_OK ||
	    (allowed & IDP_JWS_ALLOW(alg)) == 0)
		return IDP_JWS_ALG_NOT_ALLOWED;
	for (size_t i = 0; i < IDP_ARRAY_LEN(key_headers); i++) {
		if (json_object_get(hdr, key_headers[i]) != NULL)
			return IDP_JWS_KEY_IN_HEADER;
	}
	if (json_object_get(hdr, "crit") != NULL)
		return IDP_JWS_CRIT;
	v = json_object_get(hdr, "typ");
	if (v != NULL && !json_is_string(v))
		return IDP_JWS_TYP_MISMATCH;
	if (!idp_jws_typ_matches(json_string_value(v), opts->typ))
		return IDP_JWS_TYP_MISMATCH;
	v = json_object_get(hdr, "kid");
	if (!json_is_string(v))
		return IDP_JWS_KID_MISSING;
	kid = json_string_value(v);
	if (json_string_length(v) != strlen(kid) || !kid_valid(kid))
		return IDP_JWS_KID_UNKNOWN;
	key = idp_jws_keyset_find(set, kid);
	if (key == NULL)
		return IDP_JWS_KID_UNKNOWN;
	if (key->alg != alg)
		return IDP_JWS_ALG_KEY_MISMATCH;
	*alg_out = alg;
	*key_out = key;
	return IDP_JWS_OK;
}

static int
verify_token(const struct idp_jws_keyset *set, const char *token, size_t len,
             const struct idp_jws_verify_opts *opts, struct idp_jws_verified *out,
             enum idp_jws_reason *reason)
{
	static const struct idp_jws_verify_opts defaults = {0};
	unsigned char sig[MAX_SIG_LEN];
	unsigned char *hbytes = NULL, *pbytes = NULL;
	size_t hlen, plen, slen, max;
	const char *d1, *d2;
	const struct idp_jws_key *key = NULL;
	enum idp_jws_alg alg = IDP_JWS_ALG_ES256;
	enum idp_jws_reason r;
	json_t *hdr = NULL, *claims = NULL;

	memset(out, 0, sizeof(*out));
	if (reason != NULL)
		*reason = IDP_JWS_OK;
	if (opts == NULL)
		opts = &defaults;
	max = opts->max_len ? opts->max_len : IDP_JWS_MAX_TOKEN;
	if (len > max) {
		r = IDP_JWS_TOO_LARGE;
		goto done;
	}
	r = IDP_JWS_MALFORMED;
	d1 = len ? memchr(token, '.', len) : NULL;
	if (d1 == NULL)
		goto done;
	d2 = memchr(d1 + 1, '.', len - (size_t)(d1 + 1 - token));
	if (d2 == NULL || memchr(d2 + 1, '.', len - (size_t)(d2 + 1 - token)) != NULL)
		goto done;
	if (d1 == token || d2 == d1 + 1 || d2 + 1 == token + len)
		goto done; /* an empty header, payload or signature */

	r = IDP_JWS_BAD_BASE64;
	if (idp_b64url_decode_alloc(token, (size_t)(d1 - token), &hbytes, &hlen) != IDP_OK ||
	    idp_b64url_decode_alloc(d1 + 1, (size_t)(d2 - d1 - 1), &pbytes, &plen) != IDP_OK)
		goto done;
	slen = (size_t)(token + len - d2 - 1);
	if (slen > idp_b64url_encoded_len(sizeof(sig))) {
		r = IDP_JWS_BAD_SIGNATURE_FORMAT;
		goto done;
	}
	if (idp_b64url_decode(d2 + 1, slen, sig, sizeof(sig), &slen) != IDP_OK)
		goto done;

	r = IDP_JWS_BAD_HEADER;
	hdr = parse_object(hbytes, hlen);
	if (hdr == NULL)
		goto done;
	r = check_header(hdr, set, opts, &alg, &key);
	if (r != IDP_JWS_OK)
		goto done;

	/* idpd's own tokens come in their one spelling, with the lower s. */
	r = IDP_JWS_BAD_SIGNATURE_FORMAT;
	if (opts->low_s && alg == IDP_JWS_ALG_ES256 && slen == ES256_SIG_LEN &&
	    !p256_scalar_low(sig + P256_COORD_LEN))
		goto done;

	/* Only now does any signature arithmetic run. */
	r = jws_check_signature(key, token, (size_t)(d2 - token), sig, slen);
	if (r != IDP_JWS_OK)
		goto done;

	claims = parse_object(pbytes, plen);
	if (claims == NULL) {
		r = IDP_JWS_BAD_PAYLOAD;
		goto done;
	}
	out->header = hdr;
	out->claims = claims;
	out->kid = json_string_value(json_object_get(hdr, "kid"));
	out->alg = alg;
	hdr = NULL;
done:
	json_decref(hdr);
	free(hbytes);
	free(pbytes);
	if (r != IDP_JWS_OK)
		return fail(r, reason);
	return IDP_OK;
}

int
idp_jws_verify(const struct idp_jws_keyset *set, const char *token, size_t len,
               const struct idp_jws_verify_opts *opts, struct idp_jws_verified *out,
               enum idp_jws_reason *reason)
{
	uint8_t key[32];
	int rc;

	/* Without a key (OpenSSL failing) the cache is left alone. */
	if (opts == NULL || opts->cache == NULL ||
	    len > (opts->max_len ? opts->max_len : IDP_JWS_MAX_TOKEN) ||
	    !jws_cache_can_hold(opts) || !jws_cache_key(token, len, key))
		return verify_token(set, token, len, opts, out, reason);
	memset(out, 0, sizeof(*out));
	/* A hit counts only while the key that signed it is still trusted, and
	 * only if it was verified with the checks asked for now. */
	if (jws_cache_get(opts->cache, key, opts, out)) {
		const struct idp_jws_key *k =
		    out->kid != NULL ? idp_jws_keyset_find(set, out->kid) : NULL;

		if (k != NULL && idp_jws_key_alg(k) == out->alg) {
			if (reason != NULL)
				*reason = IDP_JWS_OK;
			return IDP_OK;
		}
		idp_jws_verified_cleanup(out);
	}
	rc = verify_token(set, token, len, opts, out, reason);
	if (rc == IDP_OK)
		jws_cache_put(opts->cache, key, opts, out);
	return rc;
}

void
idp_jws_verified_cleanup(struct idp_jws_verified *v)
{
	json_decref(v->header);
	json_decref(v->claims);
	memset(v, 0, sizeof(*v));
}

/* ---- time claims ---- */

json_t *
idp_jws_peek_claims(const char *token, size_t len)
{
	const char *d1 = memchr(token, '.', len), *d2 = NULL;
	unsigned char *text = NULL;
	size_t tlen = 0;
	json_t *claims;

	if (d1 != NULL)
		d2 = memchr(d1 + 1, '.', len - (size_t)(d1 + 1 - token));
	if (d2 == NULL ||
	    idp_b64url_decode_alloc(d1 + 1, (size_t)(d2 - d1 - 1), &text, &tlen) != IDP_OK)
		return NULL;
	claims = json_loadb((const char *)text, tlen, JSON_REJECT_DUPLICATES, NULL);
	free(text);
	if (claims != NULL && !json_is_object(claims)) {
		json_decref(claims);
		claims = NULL;
	}
	return claims;
}

/* 9999-12-31T23:59:59Z: later NumericDates are nonsense, and bounding keeps ms arithmetic exact. */
#define MAX_NUMERIC_DATE 253402300799LL

int
idp_jwt_numeric_date_ms(const json_t *claims, const char *name, int64_t *ms)
{
	const json_t *v = json_object_get(claims, name);

	if (v == NULL)
		return 0;
	if (json_is_integer(v)) {
		json_int_t s = json_integer_value(v);

		if (s < 0 || s > MAX_NUMERIC_DATE)
			return -1;
		*ms = (int64_t)s * 1000;
		return 1;
	}
	if (json_is_real(v)) {
		double s = json_real_value(v);

		if (!isfinite(s) || s < 0 || s > (double)MAX_NUMERIC_DATE)
			return -1;
		*ms = (int64_t)floor(s * 1000.0);
		return 1;
	}
	return -1;
}

int
idp_jwt_check_time(const json_t *claims, const struct idp_clock *clock, int64_t leeway_s,
                   unsigned flags, enum idp_jws_reason *reason)
{
	int64_t now = idp_now_ms(clock), leeway, exp = 0, nbf = 0, iat = 0;
	enum idp_jws_reason r = IDP_JWS_OK;
	int has_exp, has_nbf, has_iat;

	if (leeway_s < 0)
		leeway_s = 0;
	if (leeway_s > 86400)
		leeway_s = 86400;
	leeway = leeway_s * 1000;
	has_exp = idp_jwt_numeric_date_ms(claims, "exp", &exp);
	has_nbf = idp_jwt_numeric_date_ms(claims, "nbf", &nbf);
	has_iat = idp_jwt_numeric_date_ms(claims, "iat", &iat);
	if (has_exp < 0 || has_nbf < 0 || has_iat < 0 ||
	    (has_exp == 0 && (flags & IDP_JWT_REQUIRE_EXP)) ||
	    (has_iat == 0 && (flags & IDP_JWT_REQUIRE_IAT)))
		r = IDP_JWS_BAD_TIME_CLAIM;
	else if (has_exp && now >= exp + leeway)
		r = IDP_JWS_EXPIRED;
	else if (has_nbf && now < nbf - leeway)
		r = IDP_JWS_NOT_YET_VALID;
	else if (has_iat && iat > now + leeway)
		r = IDP_JWS_ISSUED_IN_FUTURE;
	if (reason != NULL)
		*reason = r;
	return r == IDP_JWS_OK ? IDP_OK : IDP_EUNAUTH;
}

static _Atomic bool own_low_s;

bool
idp_jws_own_low_s(void)
{
	return atomic_load_explicit(&own_low_s, memory_order_relaxed);
}

void
idp_jws_own_low_s_set(bool on)
{
	atomic_store_explicit(&own_low_s, on, memory_order_relaxed);
}
