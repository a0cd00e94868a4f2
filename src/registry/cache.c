/*
 * cache.c - every agent record in memory, for lookups by id.
 *
 * Why a read-write lock and not an immutable snapshot of the whole table:
 * a snapshot makes every change copy the table, and registering 100,000
 * agents would then copy it 100,000 times.  Here only the slot array is
 * shared; records themselves are immutable and reference counted, so a
 * reader holds the lock for one probe and a reference increment, and a
 * writer (the listener thread, or a worker publishing its own write) holds
 * it for one slot update.  The lock prefers writers, so a steady stream of
 * readers cannot starve an invalidation.
 *
 * The table is open addressing with linear probing, at most half full, and
 * deletion by backward shift (no tombstones).  Hash: FNV-1a with a per-
 * process random seed, so ids chosen by clients cannot be made to collide
 * on purpose.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/rand.h>

#include "registry_int.h"

struct slot {
	uint64_t hash;
	uint64_t seq;               /* c->seq when installed */
	struct registry_agent *rec; /* NULL: empty */
};

struct agent_cache {
	pthread_rwlock_t lock; /* registry.lock: guards slots, cap, count */
	struct slot *slots;
	size_t cap; /* a power of two */
	size_t count;
	uint64_t seq; /* installs so far */
	uint64_t seed;
};

#define INITIAL_CAP 1024

static uint64_t
hash_id(const struct agent_cache *c, const char *id)
{
	uint64_t h = 0xcbf29ce484222325ULL ^ c->seed;

	for (; *id != '\0'; id++) {
		h ^= (unsigned char)*id;
		h *= 0x100000001b3ULL;
	}
	/* A final mix: FNV's low bits are weak and the mask keeps only those. */
	h ^= h >> 33;
	h *= 0xff51afd7ed558ccdULL;
	h ^= h >> 33;
	return h;
}

struct agent_cache *
agent_cache_new(void)
{
	struct agent_cache *c = idp_xcalloc(1, sizeof(*c));
	pthread_rwlockattr_t attr;

	pthread_rwlockattr_init(&attr);
	pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
	pthread_rwlock_init(&c->lock, &attr);
	pthread_rwlockattr_destroy(&attr);
	c->cap = INITIAL_CAP;
	c->slots = idp_xcalloc(c->cap, sizeof(*c->slots));
	if (RAND_bytes((unsigned char *)&c->seed, sizeof(c->seed)) != 1)
		c->seed = (uint64_t)(uintptr_t)c ^ 0x9e3779b97f4a7c15ULL;
	return c;
}

void
agent_cache_free(struct agent_cache *c)
{
	if (c == NULL)
		return;
	for (size_t i = 0; i < c->cap; i++)
		registry_agent_unref(c->slots[i].rec);
	free(c->slots);
	pthread_rwlock_destroy(&c->lock);
	free(c);
}

/* The slot holding id, or the empty slot where it would go.  Lock held. */
static size_t
probe(const struct agent_cache *c, uint64_t h, const char *id)
{
	size_t mask = c->cap - 1, i = (size_t)h & mask;

	while (c->slots[i].rec != NULL &&
	       (c->slots[i].hash != h || strcmp(c->slots[i].rec->id, id) != 0))
		i = (i + 1) & mask;
	return i;
}

/* Double the table.  Write lock held. */
static void
grow(struct agent_cache *c)
{
	struct slot *old = c->slots;
	size_t old_cap = c->cap;

	c->cap *= 2;
	c->slots = idp_xcalloc(c->cap, sizeof(*c->slots));
	for (size_t i = 0; i < old_cap; i++) {
		if (old[i].rec == NULL)
			continue;
		c->slots[probe(c, old[i].hash, old[i].rec->id)] = old[i];
	}
	free(old);
}

/* Remove slot i, shifting the rest of its cluster back.  Write lock held. */
static void
remove_at(struct agent_cache *c, size_t i)
{
	size_t mask = c->cap - 1, j = i;

	c->slots[i].rec = NULL;
	for (;;) {
		size_t home;

		j = (j + 1) & mask;
		if (c->slots[j].rec == NULL)
			break;
		home = (size_t)c->slots[j].hash & mask;
		/* Move j back into the hole at i unless its home lies
		 * cyclically in (i, j]. */
		if ((i <= j) ? (home <= i || home > j) : (home <= i && home > j)) {
			c->slots[i] = c->slots[j];
			c->slots[j].rec = NULL;
			i = j;
		}
	}
	c->count--;
}

bool
agent_cache_install(struct agent_cache *c, struct registry_agent *rec)
{
	uint64_t h = hash_id(c, rec->id);
	struct registry_agent *old = NULL;
	bool installed = false;
	size_t i;

	pthread_rwlock_wrlock(&c->lock);
	i = probe(c, h, rec->id);
	if (c->slots[i].rec == NULL) {
		c->slots[i].hash = h;
		c->slots[i].seq = ++c->seq;
		c->slots[i].rec = rec;
		c->count++;
		installed = true;
		if (c->count * 2 > c->cap)
			grow(c);
	} else if (c->slots[i].rec->version < rec->version) {
		old = c->slots[i].rec;
		c->slots[i].rec = rec;
		c->slots[i].seq = ++c->seq;
		installed = true;
	}
	pthread_rwlock_unlock(&c->lock);
	/* Released outside the lock: freeing may take a while. */
	registry_agent_unref(installed ? old : rec);
	return installed;
}

void
agent_cache_remove(struct agent_cache *c, const char *id)
{
	uint64_t h = hash_id(c, id);
	struct registry_agent *old = NULL;
	size_t i;

	pthread_rwlock_wrlock(&c->lock);
	i = probe(c, h, id);
	if (c->slots[i].rec != NULL) {
		old = c->slots[i].rec;
		remove_at(c, i);
	}
	pthread_rwlock_unlock(&c->lock);
	registry_agent_unref(old);
}

const struct registry_agent *
agent_cache_get(struct agent_cache *c, const char *id)
{
	uint64_t h = hash_id(c, id);
	const struct registry_agent *a;

	pthread_rwlock_rdlock(&c->lock);
	a = registry_agent_ref(c->slots[probe(c, h, id)].rec);
	pthread_rwlock_unlock(&c->lock);
	return a;
}

uint64_t
agent_cache_seq(struct agent_cache *c)
{
	uint64_t s;

	pthread_rwlock_rdlock(&c->lock);
	s = c->seq;
	pthread_rwlock_unlock(&c->lock);
	return s;
}

void
agent_cache_replace(struct agent_cache *c, struct registry_agent **recs, size_t n, uint64_t since)
{
	struct slot *fresh, *old;
	size_t cap = INITIAL_CAP, old_cap, count = 0;

	while (cap < n * 2 + 2)
		cap *= 2;
	/* Build the new table outside the lock; readers go on meanwhile. */
	fresh = idp_xcalloc(cap, sizeof(*fresh));
	for (size_t k = 0; k < n; k++) {
		uint64_t h = hash_id(c, recs[k]->id);
		size_t i = (size_t)h & (cap - 1);

		while (fresh[i].rec != NULL && strcmp(fresh[i].rec->id, recs[k]->id) != 0)
			i = (i + 1) & (cap - 1);
		if (fresh[i].rec != NULL) {
			registry_agent_unref(recs[k]); /* the same id twice: keep the first */
			continue;
		}
		fresh[i].hash = h;
		fresh[i].rec = recs[k];
		count++;
	}
	free(recs);

	pthread_rwlock_wrlock(&c->lock);
	old = c->slots;
	old_cap = c->cap;
	c->slots = fresh;
	c->cap = cap;
	c->count = count;
	/* A record installed while the load ran may be newer than what the
	 * load read, or missing from it: carry it over so the write does not
	 * vanish.  Records older than the load are dropped with the old table,
	 * which is how rows deleted behind idpd's back leave the cache. */
	for (size_t i = 0; i < old_cap; i++) {
		size_t j;

		if (old[i].rec == NULL || old[i].seq <= since)
			continue;
		j = probe(c, old[i].hash, old[i].rec->id);
		if (c->slots[j].rec == NULL) {
			c->slots[j] = old[i];
			old[i].rec = NULL;
			if (++c->count * 2 > c->cap)
				grow(c);
		} else if (c->slots[j].rec->version < old[i].rec->version) {
			struct registry_agent *t = c->slots[j].rec;

			c->slots[j].rec = old[i].rec;
			old[i].rec = t;
		}
	}
	pthread_rwlock_unlock(&c->lock);
	for (size_t i = 0; i < old_cap; i++)
		registry_agent_unref(old[i].rec);
	free(old);
}

size_t
agent_cache_count(struct agent_cache *c)
{
	size_t n;

	pthread_rwlock_rdlock(&c->lock);
	n = c->count;
	pthread_rwlock_unlock(&c->lock);
	return n;
}
