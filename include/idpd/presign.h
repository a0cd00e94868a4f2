/*
 * presign.h - ECDSA P-256 nonces computed ahead of time, in idle CPU time.
 *
 * Almost all of an ECDSA signature's cost is the scalar multiplication k*G
 * for its fresh random nonce k, and that part depends on neither the message
 * nor the key.  This module keeps a bounded pool of precomputed pairs
 * (k^-1 mod n, r = x(k*G) mod n), refilled by one thread that runs under
 * SCHED_IDLE: it gets a core only when nothing else wants it, so the pool
 * turns idle time into signatures instead of taking CPU from requests.  A
 * signer takes a pair and finishes the signature in about a microsecond; when
 * the pool is empty it signs as it would without one (jws.c).
 *
 * A nonce used for two signatures reveals the private key, so a pair leaves
 * the pool exactly once, under the pool's one lock (presign.lock), and is
 * wiped by the signature that used it; signers only try the lock, never
 * wait on it.  Nonces are drawn from OpenSSL's private DRBG.  Unlike a
 * nonce made inline they do not depend on the message, so two copies of
 * a snapshotted or cloned process would share them: the pool is off unless
 * configured (tokens.presign_pool, docs/tokens.md).
 *
 * A struct idp_presign_key is the legacy EC_KEY form of a P-256 private key
 * that OpenSSL's precomputed-nonce signing takes; it is immutable and may be
 * used by any number of threads at once.
 */
#ifndef IDPD_PRESIGN_H
#define IDPD_PRESIGN_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/types.h>

#include "idpd/common.h"

struct idp_presign_key;

#define IDP_PRESIGN_MAX 65536

/*
 * Start the refill thread for a pool of capacity pairs (1 to
 * IDP_PRESIGN_MAX).  Without a call, or after idp_presign_stop, every
 * signature computes its own nonce.  Returns IDP_EINVAL for a bad capacity,
 * IDP_ECONFLICT if the pool is running, IDP_EINTERNAL if the thread cannot
 * start.
 */
int idp_presign_start(size_t capacity, struct idp_diag *diag);

/* Stop the thread and wipe every pair left.  Safe to call when not running. */
void idp_presign_stop(void);

/*
 * Pairs ready now; since the last start, signatures that took a pair (hits)
 * and those that found none while the pool ran (misses).  Any thread.
 */
size_t idp_presign_available(void);
uint64_t idp_presign_hits(void);
uint64_t idp_presign_misses(void);

/*
 * The EC_KEY form of pkey, or NULL when pkey is not a P-256 key with its
 * private half; the caller owns it.  pkey stays the caller's.
 */
struct idp_presign_key *idp_presign_key_new(const EVP_PKEY *pkey);
void idp_presign_key_free(struct idp_presign_key *k);

/*
 * Sign a SHA-256 digest with a pooled nonce: sig gets r || s, 64 bytes.
 * Returns IDP_OK, IDP_EWOULDBLOCK when the pool is empty or not running, or
 * IDP_EINTERNAL; on either error the caller signs inline.  A nonce taken is
 * spent, whatever the outcome.
 */
int idp_presign_sign(const struct idp_presign_key *k, const unsigned char digest[32],
                     unsigned char sig[64]);

#endif
