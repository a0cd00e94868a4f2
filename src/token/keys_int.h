/*
 * keys_int.h - what the key manager's files share: a stored row with its
 * key material, the snapshot, and the SQL of keys_db.c.  Not for other
 * modules: they use keys.h.
 */
#ifndef IDPD_KEYS_INT_H
#define IDPD_KEYS_INT_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "idpd/keys.h"

struct idp_kek;
struct store_conn;

/* One row of signing_keys: the metadata and what it stores of the key. */
struct keys_row {
	struct keys_info info;
	char *public_jwk;      /* JSON text of the public JWK */
	unsigned char *sealed; /* the sealed private key; NULL once erased */
	size_t sealed_len;
};

/* Free n rows and the array (wiping nothing: sealed blobs are not secret). */
void keys_rows_free(struct keys_row *rows, size_t n);

/*
 * The immutable view readers share.  Built whole by keys_snapshot_build,
 * never changed afterwards, freed by the last keys_snapshot_unref.
 */
struct keys_snapshot {
	atomic_int refs;
	struct idp_jws_key *signing; /* the active key with its private half, or NULL */
	int64_t signing_not_after_ms;
	struct idp_jws_keyset *verify; /* next, active and retiring public keys */
	char *jwks;                    /* the JWKS document, compact JSON */
	size_t jwks_len;
	struct keys_info *info; /* the live keys, active first, then next, then retiring */
	size_t n_info;
	/* SHA-256 of each row opened and found to hold up (its public JWK and
	 * sealed blob): the next build skips opening a row it finds here. */
	uint8_t (*held)[IDP_SHA256_LEN];
	size_t n_held;
	atomic_bool warned_expired; /* logged once that the active key is past its not-after */
};

/*
 * Build a snapshot from the live rows.  The active key's private half is
 * taken from prev when prev has the same active kid (no decryption),
 * otherwise opened with kek and checked against its public JWK.  If that
 * fails the snapshot has no signing key, *signing_diag (may be NULL) says
 * why, and the call still succeeds: verification must go on.  A row sealed
 * under kek or old_kek (either may be NULL) must open to the key it
 * publishes; a row sealed under any other KEK is trusted only if prev
 * trusted the same kid with the same public key.  A row that fails either
 * rule, or that idpd cannot have written (a public JWK that does not parse
 * or names another kid), is left out and logged, and the other keys load:
 * an active key left out means no signing key.  Fails (IDP_EINTERNAL,
 * diag) only when the key set or the JWKS cannot be made.  Any thread.
 */
int keys_snapshot_build(const struct keys_row *rows, size_t n, const struct idp_kek *kek,
                        const struct idp_kek *old_kek, const struct keys_snapshot *prev,
                        struct keys_snapshot **out, struct idp_diag *diag,
                        struct idp_diag *signing_diag) IDP_WUR;
struct keys_snapshot *keys_snapshot_ref(struct keys_snapshot *s);
void keys_snapshot_unref(struct keys_snapshot *s);

/* The manager's current snapshot as a new reference, or NULL. */
struct keys_snapshot *keys_current(struct keys *km);
/* Swap in s (the manager takes the caller's reference).  For reloads and tests. */
void keys_install(struct keys *km, struct keys_snapshot *s);

/* The Cache-Control max-age of the JWKS, and this process's KEK id ("kek-..."). */
int64_t keys_jwks_max_age_ms(struct keys *km);
const char *keys_kek_id(const struct keys *km);
/* The pool the manager was opened on. */
struct store *keys_store(const struct keys *km);
/* Make km the process's manager (keys_process); keys_free forgets it. */
void keys_set_process(struct keys *km);

/*
 * Prove that kek opens the next and active rows and that each private half
 * matches its public JWK.  IDP_EFORBIDDEN with diag naming the kid, the KEK
 * that sealed it and the one this process has (kek_source says where that
 * came from).  Any thread.
 */
int keys_check_kek(const struct keys_row *rows, size_t n, const struct idp_kek *kek,
                   const char *kek_source, struct idp_diag *diag) IDP_WUR;

/*
 * What a read of the keys that did not find a token's kid says of the
 * token: IDP_ENOTFOUND (none of the deployment's) when this caller made
 * the read (own_read: it began after the token came, so after it was
 * signed), or when the token's iat_ms (unverified; negative, as
 * KEYS_NO_IAT, for none) is older than read_began_ms, the wall-clock start
 * of the read, by more than KEYS_KID_SKEW_MS; IDP_EUNAVAIL (idpd cannot
 * know) otherwise: the read may have begun before the key that signed the
 * token was activated.  A forged iat can only turn a token whose payload
 * it changed (so whose signature fails anyway) into "invalid", or any
 * token into a 503.  Pure; any thread.
 */
int keys_kid_unknown_answer(bool own_read, int64_t read_began_ms, int64_t iat_ms) IDP_WUR;

/* ---- keys_db.c: every statement on signing_keys ---- */

/* pg_advisory_xact_lock(KEYS_LOCK_KEY); inside a transaction. */
int keys_db_lock(struct store_conn *c) IDP_WUR;
/* Every row not retired, ordered by id.  *rows is a new array (keys_rows_free). */
int keys_db_read_live(struct store_conn *c, struct keys_row **rows, size_t *n) IDP_WUR;
/* Every row's metadata, newest first, at most limit.  *out is a new array (free). */
int keys_db_list(struct store_conn *c, int limit, struct keys_info **out, size_t *n) IDP_WUR;
/* A new row in state next or active (activated_ms then set). */
int keys_db_insert(struct store_conn *c, const struct keys_info *info, const char *public_jwk,
                   const unsigned char *sealed, size_t sealed_len) IDP_WUR;
/* next -> active at now. */
int keys_db_promote(struct store_conn *c, const char *kid, int64_t now_ms) IDP_WUR;
/* active -> retiring at now, published until retire_after. */
int keys_db_demote(struct store_conn *c, const char *kid, int64_t now_ms,
                   int64_t retire_after_ms) IDP_WUR;
/* next or retiring (or an expired active) -> retired at now; the sealed key is erased. */
int keys_db_retire(struct store_conn *c, const char *kid, int64_t now_ms) IDP_WUR;
/* A live row sealed under old_kek_id gets sealed (under kek_id) instead. */
int keys_db_reseal(struct store_conn *c, const char *kid, const unsigned char *sealed,
                   size_t sealed_len, const char *kek_id, const char *old_kek_id) IDP_WUR;

#endif /* IDPD_KEYS_INT_H */
