/*
 * libFuzzer target for the JWS verifier and the JWKS/JWK parsers.
 *
 * The first input byte picks what the rest is fed to (modulo 4):
 *   0  idp_jws_verify against idpd's own set (ES256 only, typ at+jwt)
 *   1  idp_jws_verify against a foreign set (ES256 and RS256, any typ)
 *   2  idp_jws_keyset_from_jwks
 *   3  the base64url decoder and idp_jws_key_from_jwk on one JWK
 * The fixed keys are the public halves of tests/support/keys/test-only-*.pem,
 * so seeds signed with those keys reach the signature check and beyond.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "idpd/b64.h"
#include "idpd/clock.h"
#include "idpd/jws.h"

static const char fixed_jwks[] =
    "{\"keys\":[{\"kty\":\"EC\",\"crv\":\"P-256\","
    "\"x\":\"TOnE1WwWK0tpP2qj_vp1fH3jyyG6hXWE5K_0umh8nJs\","
    "\"y\":\"oLR6bLf38FRNyorl0JJfq7jjEo-3XyjKPdd7ngfiOvw\","
    "\"kid\":\"fuzz-es256\",\"use\":\"sig\",\"alg\":\"ES256\"},"
    "{\"kty\":\"RSA\",\"n\":\"v4zH8PciJYFQqXVSaqXFMIumcIYpd0ZzWl2nmpIuxcno84XPsW19iD40An7RLn26N2"
    "DDr2Ez4OGzHTeseSrAgQeKJQ27YXwO-_L_5oxoJTaTl89A0eMQkGH3zu1krxlwtPW__wak7HEWhN0uLBscXzxN-eAoo"
    "rdNMin-8SeTgB-qulM3v7rirm5L-r_JU3qtxB9EvCt_w-hFGWVk_LlWfNG99tWPWv0IpUXdcHTnNfHdnsqYstqBxxcY"
    "mJ82qFM8uk43AzBQsv8FCUvN_MnRk57EAOL-9E7VTM9glDwf_iyLEMWDnr0bFSrWkcKKFHpe94DwIywZXZ5wOdN1dnwp"
    "RQ\",\"e\":\"AQAB\",\"kid\":\"fuzz-rs256\",\"use\":\"sig\",\"alg\":\"RS256\"}]}";

static struct idp_jws_keyset *own;
static struct idp_jws_keyset *foreign;

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	struct idp_diag d;
	struct idp_jws_key *ec;

	(void)argc;
	(void)argv;
	idp_diag_init(&d);
	if (idp_jws_keyset_from_jwks(fixed_jwks, strlen(fixed_jwks), &foreign, &d) != IDP_OK)
		abort();
	ec = (struct idp_jws_key *)idp_jws_keyset_find(foreign, "fuzz-es256");
	if (ec == NULL || idp_jws_keyset_new(&ec, 1, &own, &d) != IDP_OK)
		abort();
	return 0;
}

static void
verify(const struct idp_jws_keyset *set, const struct idp_jws_verify_opts *opts, const char *tok,
       size_t len)
{
	struct idp_jws_verified v;
	enum idp_jws_reason r;
	struct idp_clock c;

	if (idp_jws_verify(set, tok, len, opts, &v, &r) != IDP_OK) {
		/* A failure must say why, with a name. */
		if (r == IDP_JWS_OK || v.claims != NULL || v.header != NULL)
			abort();
		(void)idp_jws_reason_name(r);
		return;
	}
	idp_clock_fixed(&c, 1700000100000LL);
	(void)idp_jwt_check_time(v.claims, &c, 30, IDP_JWT_REQUIRE_EXP, &r);
	free(json_dumps(v.claims, JSON_COMPACT));
	idp_jws_verified_cleanup(&v);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct idp_jws_verify_opts own_opts = {.typ = IDP_JWS_TYP_ACCESS, .low_s = true};
	struct idp_jws_verify_opts foreign_opts = {.algs =
	                                               IDP_JWS_ALLOW_ES256 | IDP_JWS_ALLOW_RS256};
	const char *text = (const char *)data + 1;
	struct idp_jws_keyset *set = NULL;
	struct idp_jws_key *key = NULL;
	struct idp_diag d;

	if (size < 1)
		return 0;
	size--;
	switch (data[0] % 4) {
	case 0:
		verify(own, &own_opts, text, size);
		break;
	case 1:
		verify(foreign, &foreign_opts, text, size);
		break;
	case 2:
		idp_diag_init(&d);
		if (idp_jws_keyset_from_jwks(text, size, &set, &d) == IDP_OK) {
			json_t *out = idp_jws_keyset_to_jwks(set);

			free(json_dumps(out, JSON_COMPACT));
			json_decref(out);
			idp_jws_keyset_unref(set);
		}
		break;
	default: {
		unsigned char *bytes;
		size_t n;
		json_t *jwk;

		if (idp_b64url_decode_alloc(text, size, &bytes, &n) == IDP_OK) {
			char *again = idp_b64url_encode(bytes, n, NULL);

			/* Strict decoding means exactly one spelling: it must round-trip. */
			if (strlen(again) != size || memcmp(again, text, size) != 0)
				abort();
			free(again);
			free(bytes);
		}
		jwk = json_loadb(text, size, JSON_REJECT_DUPLICATES, NULL);
		idp_diag_init(&d);
		if (jwk != NULL && idp_jws_key_from_jwk(jwk, &key, &d) == IDP_OK) {
			json_t *back = idp_jws_key_public_jwk(key);

			json_decref(back);
			idp_jws_key_unref(key);
		}
		json_decref(jwk);
		break;
	}
	}
	return 0;
}
