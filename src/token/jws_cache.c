/*
 * jws_cache.c - the verified-token cache of idp_jws_verify (jws.h).
 *
 * Direct-mapped: the token's SHA-256 picks one slot, and a newer token
 * simply replaces what was there.  No LRU bookkeeping, no allocation on a
 * hit, bounded memory (slots x the parsed header and claims of one token).
 * Each slot is guarded by one of JWS_CACHE_STRIPES mutexes
 * (jws_cache.stripe[i]); a hit holds it for a compare and two reference
 * increments.  jansson's reference counts are atomic, and the cached JSON is
 * never modified, so the objects are shared with the callers as they are.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/sha.h>

#include "idpd/common.h"
#include "idpd/jws.h"
#include "jws_cache_int.h"

#define JWS_CACHE_STRIPES 64

/* The longest expected typ an entry records (idp_jws_sign's limit). */
#define TYP_MAX 64

/*
 * One verified token, and what it was verified against: a hit must have
 * been checked as strictly as the caller asks now, so a token that passed
 * for one typ, algorithm list or signature form is not taken for another.
 */
struct slot {
	uint8_t key[SHA256_DIGEST_LENGTH];
	json_t *header; /* NULL: empty */
	json_t *claims;
	enum idp_jws_alg alg;
	bool has_typ;          /* opts->typ was not NULL */
	char typ[TYP_MAX + 1]; /* opts->typ */
	unsigned algs;         /* opts->algs, 0 made ES256 */
	bool low_s;            /* opts->low_s */
};

struct idp_jws_cache {
	size_t mask;
	struct slot *slots;
	pthread_mutex_t stripe[JWS_CACHE_STRIPES];
	_Atomic uint64_t hits, misses;
};

struct idp_jws_cache *
idp_jws_cache_new(size_t slots)
{
	struct idp_jws_cache *c;
	size_t n = 1;

	if (slots == 0)
		return NULL;
	while (n < slots && n < ((size_t)1 << 30))
		n <<= 1;
	c = idp_xcalloc(1, sizeof(*c));
	c->slots = idp_xcalloc(n, sizeof(*c->slots));
	c->mask = n - 1;
	for (size_t i = 0; i < JWS_CACHE_STRIPES; i++)
		pthread_mutex_init(&c->stripe[i], NULL);
	return c;
}

void
idp_jws_cache_free(struct idp_jws_cache *c)
{
	if (c == NULL)
		return;
	for (size_t i = 0; i <= c->mask; i++) {
		json_decref(c->slots[i].header);
		json_decref(c->slots[i].claims);
	}
	for (size_t i = 0; i < JWS_CACHE_STRIPES; i++)
		pthread_mutex_destroy(&c->stripe[i]);
	free(c->slots);
	free(c);
}

void
idp_jws_cache_stats(const struct idp_jws_cache *c, uint64_t *hits, uint64_t *misses)
{
	*hits = c != NULL ? atomic_load(&c->hits) : 0;
	*misses = c != NULL ? atomic_load(&c->misses) : 0;
}

static size_t
slot_of(const struct idp_jws_cache *c, const uint8_t key[SHA256_DIGEST_LENGTH])
{
	uint64_t h;

	memcpy(&h, key, sizeof(h));
	return (size_t)h & c->mask;
}

bool
jws_cache_key(const char *token, size_t len, uint8_t key[SHA256_DIGEST_LENGTH])
{
	return idp_sha256(token, len, NULL, 0, key) == IDP_OK;
}

bool
jws_cache_can_hold(const struct idp_jws_verify_opts *opts)
{
	return opts->typ == NULL || strlen(opts->typ) <= TYP_MAX;
}

static unsigned
algs_of(const struct idp_jws_verify_opts *opts)
{
	return opts->algs ? opts->algs : IDP_JWS_ALLOW_ES256;
}

/* Whether s was filled under the same checks as opts ask for. */
static bool
same_checks(const struct slot *s, const struct idp_jws_verify_opts *opts)
{
	if (s->has_typ != (opts->typ != NULL) ||
	    (opts->typ != NULL && strcmp(s->typ, opts->typ) != 0))
		return false;
	return s->algs == algs_of(opts) && s->low_s == opts->low_s;
}

bool
jws_cache_get(struct idp_jws_cache *c, const uint8_t key[SHA256_DIGEST_LENGTH],
              const struct idp_jws_verify_opts *opts, struct idp_jws_verified *out)
{
	size_t i = slot_of(c, key);
	pthread_mutex_t *m = &c->stripe[i % JWS_CACHE_STRIPES];
	struct slot *s = &c->slots[i];
	bool hit = false;

	pthread_mutex_lock(m);
	if (s->header != NULL && CRYPTO_memcmp(s->key, key, SHA256_DIGEST_LENGTH) == 0 &&
	    same_checks(s, opts)) {
		out->header = json_incref(s->header);
		out->claims = json_incref(s->claims);
		out->alg = s->alg;
		hit = true;
	}
	pthread_mutex_unlock(m);
	if (hit)
		out->kid = json_string_value(json_object_get(out->header, "kid"));
	atomic_fetch_add_explicit(hit ? &c->hits : &c->misses, 1, memory_order_relaxed);
	return hit;
}

void
jws_cache_put(struct idp_jws_cache *c, const uint8_t key[SHA256_DIGEST_LENGTH],
              const struct idp_jws_verify_opts *opts, const struct idp_jws_verified *v)
{
	size_t i = slot_of(c, key);
	pthread_mutex_t *m = &c->stripe[i % JWS_CACHE_STRIPES];
	struct slot *s = &c->slots[i];
	json_t *old_h, *old_c;

	pthread_mutex_lock(m);
	old_h = s->header;
	old_c = s->claims;
	memcpy(s->key, key, SHA256_DIGEST_LENGTH);
	s->header = json_incref(v->header);
	s->claims = json_incref(v->claims);
	s->alg = v->alg;
	s->has_typ = opts->typ != NULL;
	snprintf(s->typ, sizeof(s->typ), "%s", opts->typ != NULL ? opts->typ : "");
	s->algs = algs_of(opts);
	s->low_s = opts->low_s;
	pthread_mutex_unlock(m);
	json_decref(old_h);
	json_decref(old_c);
}
