/*
 * jws_cache_int.h - what idp_jws_verify uses of the verified-token cache.
 */
#ifndef IDPD_JWS_CACHE_INT_H
#define IDPD_JWS_CACHE_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "idpd/jws.h"

bool jws_cache_key(const char *token, size_t len, uint8_t key[32]);
/*
 * Whether the cache can remember what opts checked (its expected typ
 * fits an entry); when not, the caller verifies without the cache.
 */
bool jws_cache_can_hold(const struct idp_jws_verify_opts *opts);
/*
 * A hit (the token under key, verified with the same expected typ,
 * allowed algorithms and low_s as opts) fills *out with references to the
 * cached header and claims.
 */
bool jws_cache_get(struct idp_jws_cache *c, const uint8_t key[32],
                   const struct idp_jws_verify_opts *opts, struct idp_jws_verified *out);
/* Remember v (references are taken), verified under opts, under key, replacing the slot's entry. */
void jws_cache_put(struct idp_jws_cache *c, const uint8_t key[32],
                   const struct idp_jws_verify_opts *opts, const struct idp_jws_verified *v);

#endif /* IDPD_JWS_CACHE_INT_H */
