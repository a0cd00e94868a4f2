/*
 * jws.h - JSON Web Signature (RFC 7515) compact serialization for idpd's own
 * ES256 tokens, and verification of foreign tokens (attestors, human IdPs)
 * that may also use RS256.
 *
 * Keys.  A struct idp_jws_key holds one public key or key pair, loaded once
 * into an EVP_PKEY, with its kid and its algorithm (ES256 for a P-256 key,
 * RS256 for an RSA key).  Keys are immutable after construction and
 * reference counted: a key set takes its own reference, so a caller may drop
 * its reference as soon as the key is in a set.  Concurrent signing and
 * verifying with one key from any number of threads is safe.
 *
 * Key sets.  A struct idp_jws_keyset is an immutable snapshot looked up by
 * kid, reference counted so a reload can swap in a new set while requests
 * still hold the old one.  Each entry's algorithm is fixed by its key, and a
 * token's alg must equal it: that pins the algorithm to the key and rules out
 * algorithm confusion.
 *
 * Verification rejects, before any signature arithmetic: anything but three
 * strict base64url parts within the size limit, a header that is not one JSON
 * object without duplicate members, an alg outside the caller's allowed set
 * (ES256 only unless the caller says otherwise; "none" and HMAC never), a
 * missing or unknown kid, the key-carrying headers jku, jwk, x5u, x5c, any
 * crit, and a typ other than the expected one.  ES256 signatures must be 64
 * bytes with r and s in [1, n-1], and s at most (n-1)/2 when the caller
 * asks (its own tokens: idpd signs only that form).  The payload must be a
 * JSON object without duplicate members.
 */
#ifndef IDPD_JWS_H
#define IDPD_JWS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "idpd/common.h"

struct idp_clock;
struct idp_jws_key;
struct idp_jws_keyset;

/* Signature algorithms; also bit positions in an allowed-algorithm mask. */
enum idp_jws_alg {
	IDP_JWS_ALG_ES256 = 1,
	IDP_JWS_ALG_RS256 = 2,
};
#define IDP_JWS_ALLOW(alg) (1u << (alg))
#define IDP_JWS_ALLOW_ES256 IDP_JWS_ALLOW(IDP_JWS_ALG_ES256)
#define IDP_JWS_ALLOW_RS256 IDP_JWS_ALLOW(IDP_JWS_ALG_RS256)

/* "ES256", "RS256". */
const char *idp_jws_alg_name(enum idp_jws_alg alg);

/* Token types ("typ") idpd issues and checks. */
#define IDP_JWS_TYP_ACCESS "at+jwt"           /* access tokens, RFC 9068 */
#define IDP_JWS_TYP_IDENTITY "idpd-agent+jwt" /* agent identity credentials */

/* Limits. */
#define IDP_JWS_MAX_TOKEN 8192     /* default bound on a compact token, bytes */
#define IDP_JWS_MAX_KID 128        /* bytes */
#define IDP_JWS_MAX_JWKS (1 << 20) /* a JWKS document, bytes */
#define IDP_JWS_MAX_JWKS_KEYS 64
#define IDP_JWS_MIN_RSA_BITS 2048
#define IDP_JWS_MAX_RSA_BITS 8192

/*
 * Why a token was refused.  Callers answer with a generic error and record
 * the precise reason (idp_jws_reason_name) in the audit event.
 */
enum idp_jws_reason {
	IDP_JWS_OK = 0,
	IDP_JWS_TOO_LARGE,  /* longer than the limit */
	IDP_JWS_MALFORMED,  /* not three dot-separated parts */
	IDP_JWS_BAD_BASE64, /* a part is not strict base64url */
	IDP_JWS_BAD_HEADER, /* header is not a JSON object (or has duplicates) */
	IDP_JWS_ALG_MISSING,
	IDP_JWS_ALG_NOT_ALLOWED, /* none, HS256, ES384, or outside the caller's list */
	IDP_JWS_KEY_IN_HEADER,   /* jku, jwk, x5u or x5c present */
	IDP_JWS_CRIT,            /* crit present: no extension is understood */
	IDP_JWS_TYP_MISMATCH,
	IDP_JWS_KID_MISSING,
	IDP_JWS_KID_UNKNOWN,
	IDP_JWS_ALG_KEY_MISMATCH,     /* the key named by kid has another algorithm */
	IDP_JWS_BAD_SIGNATURE_FORMAT, /* wrong length, or r/s outside [1, n-1] */
	IDP_JWS_BAD_SIGNATURE,
	IDP_JWS_BAD_PAYLOAD, /* payload is not a JSON object (or has duplicates) */
	IDP_JWS_EXPIRED,
	IDP_JWS_NOT_YET_VALID,    /* nbf in the future */
	IDP_JWS_ISSUED_IN_FUTURE, /* iat in the future */
	IDP_JWS_BAD_TIME_CLAIM,   /* exp, nbf or iat missing (when required) or not a number */
};

/* Stable lower-case name ("alg_not_allowed", ...), for audit events and logs. */
const char *idp_jws_reason_name(enum idp_jws_reason reason);

/* ---- keys ---- */

/*
 * Generate a new P-256 key pair.  kid NULL means the RFC 7638 thumbprint.
 * On success *out holds a key with one reference (idp_jws_key_unref).
 * On failure *out is NULL and diag says why.  Any thread.
 */
int idp_jws_key_generate(const char *kid, struct idp_jws_key **out, struct idp_diag *diag) IDP_WUR;

/*
 * Load a key from PEM: a private key (PKCS#8 or traditional) or a public key
 * (SubjectPublicKeyInfo).  Accepted types are EC P-256 (ES256) and RSA of
 * IDP_JWS_MIN_RSA_BITS to IDP_JWS_MAX_RSA_BITS bits (RS256).  kid NULL means
 * the thumbprint.  Same ownership and error contract as generate.
 */
int idp_jws_key_from_pem(const char *pem, size_t len, const char *kid, struct idp_jws_key **out,
                         struct idp_diag *diag) IDP_WUR;
/* The same from DER (PKCS#8, traditional private key, or SubjectPublicKeyInfo). */
int idp_jws_key_from_der(const unsigned char *der, size_t len, const char *kid,
                         struct idp_jws_key **out, struct idp_diag *diag) IDP_WUR;
/*
 * Load a public key from a JWK object: kty "EC" with crv "P-256", x and y
 * (32 bytes each, a point on the curve), or kty "RSA" with n and e.  The kid
 * is the JWK's "kid" member, else the thumbprint.  "alg", if present, must
 * match the key type; "use", if present, must be "sig".  A JWK carrying
 * private members (d, p, q, ...) is refused: it means a secret leaked into a
 * public key file.  Does not take ownership of jwk.
 */
int idp_jws_key_from_jwk(const json_t *jwk, struct idp_jws_key **out,
                         struct idp_diag *diag) IDP_WUR;

struct idp_jws_key *idp_jws_key_ref(struct idp_jws_key *key);
/* Drop a reference; the last one frees the key and wipes its private half.  NULL is a no-op. */
void idp_jws_key_unref(struct idp_jws_key *key);

const char *idp_jws_key_kid(const struct idp_jws_key *key);
enum idp_jws_alg idp_jws_key_alg(const struct idp_jws_key *key);
bool idp_jws_key_has_private(const struct idp_jws_key *key);

/*
 * RFC 7638 thumbprint (SHA-256, base64url): 43 characters and a NUL.
 * Cannot fail for a constructed key.
 */
void idp_jws_key_thumbprint(const struct idp_jws_key *key, char out[44]);

/*
 * The private key as PKCS#8 DER, for encryption at rest.  *der is a new
 * buffer the caller must idp_wipe() and free().  IDP_EINVAL if the key has
 * no private half.
 */
int idp_jws_key_private_der(const struct idp_jws_key *key, unsigned char **der,
                            size_t *len) IDP_WUR;
/* The private key as PKCS#8 PEM (NUL-terminated); same contract as the DER form. */
int idp_jws_key_private_pem(const struct idp_jws_key *key, char **pem, size_t *len) IDP_WUR;
/* The public key as SubjectPublicKeyInfo PEM, a new string the caller frees. */
char *idp_jws_key_public_pem(const struct idp_jws_key *key);
/*
 * The public JWK: {"kty","crv","x","y"} or {"kty","n","e"}, plus "kid",
 * "use":"sig" and "alg".  A new object the caller owns (json_decref).
 */
json_t *idp_jws_key_public_jwk(const struct idp_jws_key *key);

/* ---- key sets ---- */

/*
 * Build a set from n keys.  The set takes its own reference to each key; the
 * caller keeps its own.  Two keys with one kid: IDP_ECONFLICT.  On success
 * *out has one reference (idp_jws_keyset_unref); on failure it is NULL.
 */
int idp_jws_keyset_new(struct idp_jws_key *const *keys, size_t n, struct idp_jws_keyset **out,
                       struct idp_diag *diag) IDP_WUR;
/*
 * Parse a JWKS document ({"keys":[...]}) of public keys for verifying foreign
 * tokens.  Entries of an unsupported type (kty "OKP", crv "P-384", alg "PS256",
 * use "enc", ...) are skipped; a supported entry that is malformed, weak, has
 * no kid or repeats one fails the whole document, as does a set left empty.
 * Errors: IDP_ETOOBIG past IDP_JWS_MAX_JWKS bytes or IDP_JWS_MAX_JWKS_KEYS
 * entries, IDP_EINVAL otherwise, with every reason in diag.
 */
int idp_jws_keyset_from_jwks(const char *json, size_t len, struct idp_jws_keyset **out,
                             struct idp_diag *diag) IDP_WUR;
/* Read and parse a JWKS file; IDP_EIO if it cannot be read. */
int idp_jws_keyset_load_jwks_file(const char *path, struct idp_jws_keyset **out,
                                  struct idp_diag *diag) IDP_WUR;
/*
 * The key set of the JWKS file path from what a loader already read: its
 * bytes (data, len) when not NULL, so that the set is the one the loader
 * hashed; else error (the read's failure, IDP_EIO) when not NULL; else the
 * file itself, read now.  diag names path.
 */
int idp_jws_keyset_from_read(const char *path, const char *data, size_t len, const char *error,
                             struct idp_jws_keyset **out, struct idp_diag *diag) IDP_WUR;

struct idp_jws_keyset *idp_jws_keyset_ref(struct idp_jws_keyset *set);
void idp_jws_keyset_unref(struct idp_jws_keyset *set);

size_t idp_jws_keyset_count(const struct idp_jws_keyset *set);
/* The i-th key (borrowed, valid while the caller holds the set). */
const struct idp_jws_key *idp_jws_keyset_key(const struct idp_jws_keyset *set, size_t i);
/* The key with this kid (borrowed), or NULL. */
const struct idp_jws_key *idp_jws_keyset_find(const struct idp_jws_keyset *set, const char *kid);
/* The set as a public JWKS document {"keys":[...]}, in set order; caller owns it. */
json_t *idp_jws_keyset_to_jwks(const struct idp_jws_keyset *set);

/* ---- signing ---- */

/*
 * Sign claims (a JSON object) with key, whose algorithm goes into the header
 * with its kid and typ (1 to 64 bytes; NULL leaves it out; the headers for
 * no typ and the two IDP_JWS_TYP_ values are prepared with the key).  *out
 * is a new NUL-terminated compact token the caller frees; *out_len (if not
 * NULL) gets its length.  An ES256 signature is always the one with the
 * lower s of its two valid forms.
 * IDP_EINVAL if the key has no private half or claims is not an object;
 * IDP_ETOOBIG if the token would pass IDP_JWS_MAX_TOKEN; IDP_EINTERNAL if
 * OpenSSL fails.  Any thread, concurrently with one key.
 */
int idp_jws_sign(const struct idp_jws_key *key, const char *typ, const json_t *claims, char **out,
                 size_t *out_len, struct idp_diag *diag) IDP_WUR;
/*
 * The same with a payload the caller already serialized.  It is signed as
 * given: the caller promises it is one JSON object.
 */
int idp_jws_sign_payload(const struct idp_jws_key *key, const char *typ, const char *payload,
                         size_t payload_len, char **out, size_t *out_len,
                         struct idp_diag *diag) IDP_WUR;

/* ---- verification ---- */

/*
 * A cache of tokens that verified, keyed by the SHA-256 of the token's
 * bytes: a token seen again skips the signature check (the costly part)
 * as long as the key that signed it is still in the set it is checked
 * against.  It holds the parsed header and claims, shared read-only.  Only
 * the signature is skipped: every caller still checks the time claims,
 * revocation and status itself.  An entry records the expected typ, the
 * allowed algorithms and low_s it was verified with, and a hit needs the
 * same: a token cached for one kind is verified again when asked for as
 * another.  Direct-mapped, bounded, striped locks; any thread.  One cache
 * still best serves one kind of token (pass it with the same verify
 * options), or the kinds evict each other.
 */
struct idp_jws_cache;
/* A cache of slots entries (rounded up to a power of two); 0 means NULL: no cache. */
struct idp_jws_cache *idp_jws_cache_new(size_t slots);
void idp_jws_cache_free(struct idp_jws_cache *c);
/* Hits and misses so far, for metrics. */
void idp_jws_cache_stats(const struct idp_jws_cache *c, uint64_t *hits, uint64_t *misses);

struct idp_jws_verify_opts {
	/*
	 * Expected typ, compared as RFC 7515 says (case-insensitive, an
	 * "application/" prefix optional).  NULL: typ is not checked, for
	 * foreign tokens that carry none.
	 */
	const char *typ;
	/* Allowed algorithms, IDP_JWS_ALLOW(...) bits; 0 means ES256 only. */
	unsigned algs;
	/* Size bound in bytes; 0 means IDP_JWS_MAX_TOKEN. */
	size_t max_len;
	/* Verified tokens to consult and fill; NULL: verify every time. */
	struct idp_jws_cache *cache;
	/*
	 * Refuse an ES256 signature whose s is in the upper half
	 * (IDP_JWS_BAD_SIGNATURE_FORMAT): the twin (r, n - s) of a valid
	 * signature verifies too, and idpd signs only the lower one.  Set it
	 * for idpd's own tokens, never for foreign ones, whose signers need
	 * not normalise.
	 */
	bool low_s;
};

/*
 * Whether idpd's own verifiers set low_s (tokens.require_low_s).  Off by
 * default: versions before low-S signing issued tokens with either s, and
 * those live up to a day.  Any thread; the setting is one atomic flag.
 */
bool idp_jws_own_low_s(void);
void idp_jws_own_low_s_set(bool on);

/* What a successful verification hands back; idp_jws_verified_cleanup() releases it. */
struct idp_jws_verified {
	json_t *header;  /* the protected header object */
	json_t *claims;  /* the payload object */
	const char *kid; /* points into header */
	enum idp_jws_alg alg;
};

/*
 * Verify a compact token of len bytes against set.  On success returns 0 and
 * fills *out (the caller owns it).  On failure returns IDP_ETOOBIG
 * (too large), IDP_EINVAL (malformed encoding or JSON) or IDP_EUNAUTH
 * (everything else), leaves *out empty, and sets *reason (if not NULL).
 * opts NULL means: ES256 only, typ unchecked, default size.
 * Time claims are not checked here: see idp_jwt_check_time.  Any thread.
 */
int idp_jws_verify(const struct idp_jws_keyset *set, const char *token, size_t len,
                   const struct idp_jws_verify_opts *opts, struct idp_jws_verified *out,
                   enum idp_jws_reason *reason) IDP_WUR;
void idp_jws_verified_cleanup(struct idp_jws_verified *v);

/* Does the header typ value (NULL = absent) match expected, per RFC 7515 section 4.1.9? */
bool idp_jws_typ_matches(const char *typ, const char *expected);

/* ---- time claims ---- */

/*
 * The payload of a compact token (len bytes) as a JSON object, NOT
 * verified: for choosing whom to ask or how to answer a token that failed,
 * never for accepting one.  A new reference, or NULL if it is not a JSON
 * object.  Any thread.
 */
json_t *idp_jws_peek_claims(const char *token, size_t len);
/*
 * Read the NumericDate claim name of claims as milliseconds: 1 if present
 * and valid, 0 if absent, -1 if present but not a number in [0,
 * 9999-12-31T23:59:59Z].
 */
int idp_jwt_numeric_date_ms(const json_t *claims, const char *name, int64_t *ms) IDP_WUR;

#define IDP_JWT_REQUIRE_EXP 0x1u
#define IDP_JWT_REQUIRE_IAT 0x2u

/*
 * Check exp, nbf and iat (RFC 7519 NumericDate, seconds) against clock with
 * leeway_s seconds of tolerance: the token is expired once now >= exp +
 * leeway, not yet valid while now < nbf - leeway, and refused if iat > now +
 * leeway.  flags says which claims must be present.  A claim present with a
 * non-numeric or absurd value is refused.  Returns 0 or IDP_EUNAUTH with
 * *reason set (if not NULL).  Any thread.
 */
int idp_jwt_check_time(const json_t *claims, const struct idp_clock *clock, int64_t leeway_s,
                       unsigned flags, enum idp_jws_reason *reason) IDP_WUR;

#endif /* IDPD_JWS_H */
