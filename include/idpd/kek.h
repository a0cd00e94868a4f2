/*
 * kek.h - the key-encryption key that protects signing keys at rest.
 *
 * A struct idp_kek owns 32 bytes of AES-256 key material, loaded once at
 * startup from the environment (IDPD_KEK) or a file (keys.kek_file), and
 * wiped when freed.  It is immutable after loading, so any thread may seal
 * and open with it concurrently.
 *
 * Sealed format (version 1), all binary:
 *
 *     0x01 || nonce (12 bytes, random) || ciphertext || GCM tag (16 bytes)
 *
 * AES-256-GCM over the plaintext, with the version byte and the caller's
 * associated data (e.g. the kid) authenticated, so a blob moved to another
 * key's row or re-labelled as another version fails to open.  A wrong KEK and
 * a tampered blob look the same: IDP_EFORBIDDEN, and no plaintext.
 */
#ifndef IDPD_KEK_H
#define IDPD_KEK_H

#include <stddef.h>

#include "idpd/common.h"

struct idp_kek;
struct idp_jws_key;

#define IDP_KEK_LEN 32
#define IDP_KEK_VERSION 1
#define IDP_KEK_NONCE_LEN 12
#define IDP_KEK_TAG_LEN 16
#define IDP_KEK_OVERHEAD (1 + IDP_KEK_NONCE_LEN + IDP_KEK_TAG_LEN)
#define IDP_KEK_MAX_PLAINTEXT 65536
#define IDP_KEK_ENV "IDPD_KEK"
#define IDP_KEK_OLD_ENV "IDPD_KEK_OLD" /* the KEK being replaced, for `idpd keys reseal` */

/*
 * Build a KEK from text: 64 hex digits, standard base64 (44 characters,
 * padded) or base64url (43 characters, unpadded) of exactly 32 bytes.
 * Leading and trailing whitespace is ignored.  On success *out is a new KEK
 * the caller frees with idp_kek_free.  On failure *out is NULL, the return is
 * IDP_EINVAL and diag says which forms are accepted; the text itself is
 * never copied into diag.
 */
int idp_kek_from_string(const char *text, struct idp_kek **out, struct idp_diag *diag) IDP_WUR;

/*
 * Read a KEK from a file: either exactly 32 raw bytes, or one line of text in
 * a form idp_kek_from_string accepts.  The file must be a regular file with
 * no permission bits for group or others (chmod 600): otherwise IDP_EFORBIDDEN
 * with the mode in diag.  IDP_EIO if it cannot be read, IDP_EINVAL if its
 * contents are not a KEK.
 */
int idp_kek_from_file(const char *path, struct idp_kek **out, struct idp_diag *diag) IDP_WUR;

/*
 * The startup rule: IDPD_KEK from the environment if set (it overrides the
 * file, like every secret override), else kek_file if not NULL or empty,
 * else IDP_ENOTFOUND with a message naming both.  Call before any thread
 * that might change the environment starts.
 */
int idp_kek_load(const char *kek_file, struct idp_kek **out, struct idp_diag *diag) IDP_WUR;

/* Wipe and free; NULL is a no-op. */
void idp_kek_free(struct idp_kek *kek);
/*
 * Once the KEK is loaded: overwrite $IDPD_KEK in the environment block and
 * unset it, so it is neither readable in /proc/<pid>/environ nor inherited.
 * Main thread, before other threads read the environment.
 */
void idp_kek_scrub_env(void);

/*
 * Keep what the process holds out of core files and out of other processes'
 * reach: the KEK lives for the process's life, and OpenSSL frees the keys
 * it parses without wiping them.  Core files off (RLIMIT_CORE 0) and the
 * process undumpable (no core, no ptrace or /proc/<pid>/mem for the same
 * user); a sanitizer build stays dumpable, since LeakSanitizer attaches to
 * its threads.  IDPD_ALLOW_CORE_DUMPS=1 in the environment leaves both as
 * they are, for debugging.  Returns 0, or -1 when a step failed (reported
 * on stderr; the process still runs).
 */
int idp_kek_guard_process(void);
/* The same for another variable holding a KEK ($IDPD_KEK_OLD). */
void idp_kek_scrub_env_var(const char *name);

/*
 * A short non-secret identifier of the KEK ("kek-" and 16 hex digits, from
 * HMAC-SHA-256 of a fixed label), so logs and the key table can say which KEK
 * sealed a blob without revealing it.  Cannot fail.
 */
void idp_kek_id(const struct idp_kek *kek, char out[21]);

/*
 * Seal n bytes (at most IDP_KEK_MAX_PLAINTEXT) with ad_len bytes of
 * associated data (ad may be NULL when ad_len is 0).  *out is a new buffer
 * of n + IDP_KEK_OVERHEAD bytes the caller frees.  IDP_ETOOBIG past the
 * limit; IDP_EINTERNAL if the RNG or cipher fails.  Any thread.
 */
int idp_kek_seal(const struct idp_kek *kek, const void *plain, size_t n, const void *ad,
                 size_t ad_len, unsigned char **out, size_t *out_len) IDP_WUR;

/*
 * Open a sealed blob.  On success *out is a new buffer of *out_len bytes
 * (plus a NUL not counted) that the caller must idp_wipe() and free().
 * IDP_EINVAL for a blob too short or of an unknown version; IDP_EFORBIDDEN
 * when authentication fails (wrong KEK, wrong associated data, or any bit
 * changed).  On failure *out is NULL and no plaintext is left anywhere.
 */
int idp_kek_open(const struct idp_kek *kek, const unsigned char *blob, size_t blob_len,
                 const void *ad, size_t ad_len, unsigned char **out, size_t *out_len) IDP_WUR;

/*
 * Seal a signing key for storage: its private half as PKCS#8 DER, with its
 * kid as the associated data, so the blob opens only as that key.  *out is
 * as for idp_kek_seal.  IDP_EINVAL if the key has no private half.  The DER
 * is wiped before returning.  Any thread.
 */
int idp_kek_seal_key(const struct idp_kek *kek, const struct idp_jws_key *key, unsigned char **out,
                     size_t *out_len) IDP_WUR;

/*
 * Open a blob made by idp_kek_seal_key for the key kid and load the key.
 * On success *out holds a key with one reference (idp_jws_key_unref).
 * IDP_EFORBIDDEN for a wrong KEK, another kid or an altered blob;
 * IDP_EINVAL for a malformed blob or one that does not hold a usable key.
 * diag names the kid, never key material.  Plaintext is wiped.  Any thread.
 */
int idp_kek_open_key(const struct idp_kek *kek, const char *kid, const unsigned char *blob,
                     size_t len, struct idp_jws_key **out, struct idp_diag *diag) IDP_WUR;

#endif /* IDPD_KEK_H */
