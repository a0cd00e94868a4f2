/*
 * touch.c - agents' last_active, batched: registry_touch() notes in memory
 * when an agent was last issued a token or an identity credential, and one
 * background thread writes what was noted for every agent at once, in one
 * UPDATE, every registry.last_active_flush, and a last time at shutdown.
 *
 * DESIGN
 *
 * The hot path (token issuance, ~10,000/s on two cores) takes one short
 * mutex hold, registry.touch_lock, to find or add the agent in an
 * open-addressing hash map and keep the later of two times.  A flush swaps
 * the whole map for an empty one of the same capacity under that lock and
 * does the rest without it: the next touches fill the new map while the
 * old one is written.  The map holds at most TOUCH_MAX_ENTRIES agents; a
 * touch of another agent when it is full is dropped (counted) and wakes
 * the flusher early, so the map can never grow with input.
 *
 * The UPDATE never moves last_active backwards (greatest() of the stored
 * and the noted time, and only rows where the noted time is later), and
 * never waits for a row lock: it locks the rows it changes with SKIP
 * LOCKED.  A row another transaction holds (a delegation holds its chain's
 * agents FOR SHARE through its audit waits, a status change holds its row
 * until it commits) would otherwise stall the one statement that writes
 * every agent, while it holds the locks it already took: every request
 * touching those agents would queue behind it.  The statement returns the
 * agents it skipped (those it would have moved forward but found locked);
 * their times go back into the map, keeping any later touch made
 * meanwhile, and the next flush tries again.  Never waiting, two instances
 * flushing overlapping sets cannot deadlock either.  The UPDATE changes
 * neither version nor id, so the agents trigger
 * (migrations/0003_registry.sql) sends no notification and no instance
 * reloads a record for a touch.  When the statement fails (PostgreSQL
 * away), everything taken is merged back into the map, bounded as every
 * touch is, and the next flush tries again.
 *
 * So a noted time is either in PostgreSQL or still in the map: the
 * stale-agents job (jobs.c) flushes, then treats every agent still in the
 * map as in use (touch_pending_ids), and asks again for each agent under
 * its row lock, right before suspending it (touch_pending): a token issued
 * after the job's query lives only here until the next flush.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "idpd/buf.h"
#include "idpd/log.h"
#include "registry_int.h"

#define TOUCH_MIN_CAP 1024

static struct {
	/* registry.touch_lock: guards map, running, stop, wake and cond. */
	pthread_mutex_t lock;
	/*
	 * registry.touch_flush_lock: one flush at a time, taken before lock.
	 * A flush that finds another writing waits for it, so "flushed" means
	 * every touch made before the call is in PostgreSQL or, for an agent
	 * whose row was locked, back in the map (the stale-agents job reads
	 * both right after), not merely swapped out by someone else.
	 */
	pthread_mutex_t flush_lock;
	pthread_cond_t cond;
	struct touch_map map;
	bool running; /* touches are accepted (between touch_start and touch_stop) */
	bool stop;
	bool wake;
	pthread_t thread;
	struct store *store;
	_Atomic int64_t interval_ms;
	_Atomic size_t cap_hint;
	_Atomic uint64_t flushes;
	_Atomic uint64_t dropped;
	_Atomic uint64_t written;
	_Atomic uint64_t skipped;
} T = {.lock = PTHREAD_MUTEX_INITIALIZER, .flush_lock = PTHREAD_MUTEX_INITIALIZER};

IDP_STATIC uint32_t
touch_hash(const char *s)
{
	uint32_t h = 2166136261u;

	for (; *s != '\0'; s++) {
		h ^= (unsigned char)*s;
		h *= 16777619u;
	}
	return h;
}

/* The slot of id in m, or the free slot where it belongs.  m->cap > 0. */
static struct touch_entry *
map_slot(struct touch_map *m, const char *id, uint32_t hash)
{
	size_t mask = m->cap - 1;

	for (size_t i = hash & mask;; i = (i + 1) & mask) {
		struct touch_entry *e = &m->slots[i];

		if (e->id == NULL || (e->hash == hash && strcmp(e->id, id) == 0))
			return e;
	}
}

static void
map_grow(struct touch_map *m)
{
	struct touch_map bigger = {
	    .cap = m->cap == 0 ? TOUCH_MIN_CAP : m->cap * 2,
	};

	bigger.slots = idp_xcalloc(bigger.cap, sizeof(*bigger.slots));
	for (size_t i = 0; i < m->cap; i++) {
		struct touch_entry *e = &m->slots[i];

		if (e->id != NULL)
			*map_slot(&bigger, e->id, e->hash) = *e;
	}
	bigger.n = m->n;
	free(m->slots);
	*m = bigger;
}

/*
 * Keep the later of ms and what m holds for id; id is copied, or taken
 * when own is set (and freed if not kept).  false when the map holds
 * TOUCH_MAX_ENTRIES agents and id is not one of them.  Under touch_lock
 * (for the process's map).
 */
IDP_STATIC bool
map_put(struct touch_map *m, char *id, bool own, uint32_t hash, int64_t ms)
{
	struct touch_entry *e;

	if (m->cap > 0) {
		e = map_slot(m, id, hash);
		if (e->id != NULL) {
			if (ms > e->ms)
				e->ms = ms;
			if (own)
				free(id);
			return true;
		}
	}
	if (m->n >= TOUCH_MAX_ENTRIES) {
		if (own)
			free(id);
		return false;
	}
	if ((m->n + 1) * 2 > m->cap)
		map_grow(m);
	e = map_slot(m, id, hash);
	e->id = own ? id : idp_xstrdup(id);
	e->hash = hash;
	e->ms = ms;
	m->n++;
	return true;
}

IDP_STATIC void
map_free(struct touch_map *m)
{
	for (size_t i = 0; i < m->cap; i++)
		free(m->slots[i].id);
	free(m->slots);
	memset(m, 0, sizeof(*m));
}

void
registry_touch(const char *id, int64_t now_ms)
{
	uint32_t hash;

	/* Only ids that could be stored: no quote or backslash reaches the literal. */
	if (id == NULL || !registry_id_valid(id) || now_ms <= 0)
		return;
	hash = touch_hash(id);
	pthread_mutex_lock(&T.lock);
	if (T.running && !map_put(&T.map, (char *)id, false, hash, now_ms)) {
		atomic_fetch_add(&T.dropped, 1);
		T.wake = true;
		pthread_cond_signal(&T.cond);
	}
	pthread_mutex_unlock(&T.lock);
}

/* ---- flushing ---- */

/*
 * One statement for every agent touched.  t: the agents whose stored time
 * the noted one would move forward, as of the statement's snapshot.  l:
 * those of them whose rows are free now, locked; a row another transaction
 * holds is skipped, never waited for.  u: each locked row set to the later
 * of the two times (the condition again: the row may have moved since the
 * snapshot).  The result: one row (NULL, rows written), and one row (id,
 * NULL) per agent of t that l skipped.
 */
static struct store_stmt st_flush = {
    "registry_touch_flush",
    "WITH t AS MATERIALIZED ("
    " SELECT a.id, t.ms FROM agents a JOIN unnest($1::text[], $2::bigint[]) AS t(id, ms)"
    " ON a.id = t.id"
    " WHERE a.last_active IS NULL OR a.last_active < to_timestamp(t.ms / 1000.0)),"
    " l AS MATERIALIZED ("
    " SELECT a.id, t.ms FROM agents a JOIN t ON a.id = t.id"
    " FOR NO KEY UPDATE OF a SKIP LOCKED),"
    " u AS ("
    " UPDATE agents a SET last_active = greatest(a.last_active, to_timestamp(l.ms / 1000.0))"
    " FROM l WHERE a.id = l.id"
    " AND (a.last_active IS NULL OR a.last_active < to_timestamp(l.ms / 1000.0))"
    " RETURNING a.id)"
    " SELECT NULL::text, count(*) FROM u"
    " UNION ALL"
    " SELECT t.id, NULL FROM t WHERE NOT EXISTS (SELECT 1 FROM l WHERE l.id = t.id)",
    2, 0};

/*
 * The ids of m, and their times unless times is NULL, as PostgreSQL array
 * literals; false past the buffer caps.
 */
static bool
literals(const struct touch_map *m, struct idp_buf *ids, struct idp_buf *times)
{
	int rc = idp_buf_putc(ids, '{');
	size_t k = 0;

	if (times != NULL)
		rc |= idp_buf_putc(times, '{');
	for (size_t i = 0; rc == IDP_OK && i < m->cap; i++) {
		const struct touch_entry *e = &m->slots[i];

		if (e->id == NULL)
			continue;
		/* Quoted: an agent may be called "null". */
		rc |= idp_buf_printf(ids, "%s\"%s\"", k > 0 ? "," : "", e->id);
		if (times != NULL)
			rc |= idp_buf_printf(times, "%s%lld", k > 0 ? "," : "", (long long)e->ms);
		k++;
	}
	rc |= idp_buf_putc(ids, '}');
	if (times != NULL)
		rc |= idp_buf_putc(times, '}');
	return rc == IDP_OK;
}

/* Put what a failed flush took back, keeping later touches. */
static void
merge_back(struct touch_map *m)
{
	uint64_t lost = 0;

	pthread_mutex_lock(&T.lock);
	for (size_t i = 0; i < m->cap; i++) {
		struct touch_entry *e = &m->slots[i];

		if (e->id == NULL)
			continue;
		if (!T.running || !map_put(&T.map, e->id, true, e->hash, e->ms))
			lost++;
		e->id = NULL;
	}
	pthread_mutex_unlock(&T.lock);
	if (lost > 0)
		atomic_fetch_add(&T.dropped, lost);
	map_free(m);
}

/*
 * Put back the times of the agents the flush skipped (the rows of r with an
 * id), looked up in old, keeping later touches made meanwhile.  Copies the
 * ids: old is still probed, and its owner frees it.  The count of rows
 * written (the row without an id) into *written.
 */
static void
keep_skipped(struct touch_map *old, PGresult *r, uint64_t *written)
{
	uint64_t skipped = 0, lost = 0;

	*written = 0;
	pthread_mutex_lock(&T.lock);
	for (int i = 0; i < PQntuples(r); i++) {
		const char *id = PQgetvalue(r, i, 0);
		const struct touch_entry *e;

		if (PQgetisnull(r, i, 0)) {
			*written += strtoull(PQgetvalue(r, i, 1), NULL, 10);
			continue;
		}
		e = map_slot(old, id, touch_hash(id));
		if (e->id == NULL)
			continue; /* not an id this flush sent: nothing to keep */
		skipped++;
		if (!T.running || !map_put(&T.map, e->id, false, e->hash, e->ms))
			lost++;
	}
	pthread_mutex_unlock(&T.lock);
	atomic_fetch_add(&T.skipped, skipped);
	if (lost > 0)
		atomic_fetch_add(&T.dropped, lost);
}

static int flush_locked(void);

/* One flush, after any in progress; see registry_touch_flush.  A failure is logged here. */
static int
flush_now(void)
{
	int rc;

	pthread_mutex_lock(&T.flush_lock);
	rc = flush_locked();
	pthread_mutex_unlock(&T.flush_lock);
	return rc;
}

static int
flush_locked(void)
{
	struct touch_map old;
	struct touch_map fresh = {0};
	struct store_conn *c = NULL;
	struct idp_buf ids, times;
	const char *params[2];
	PGresult *r = NULL;
	size_t cap = atomic_load(&T.cap_hint);
	int rc;

	if (cap < TOUCH_MIN_CAP)
		cap = TOUCH_MIN_CAP;
	/* Allocated before the lock, so the swap is all the hot path waits for. */
	fresh.slots = idp_xcalloc(cap, sizeof(*fresh.slots));
	fresh.cap = cap;
	pthread_mutex_lock(&T.lock);
	old = T.map;
	T.map = fresh;
	pthread_mutex_unlock(&T.lock);
	if (old.cap > cap)
		atomic_store(&T.cap_hint, old.cap);
	if (old.n == 0) {
		map_free(&old);
		return IDP_OK;
	}

	/* 64k ids of at most 128 bytes, and their times: within the caps. */
	idp_buf_init(&ids, 16u << 20);
	idp_buf_init(&times, 4u << 20);
	if (!literals(&old, &ids, &times)) {
		log_error("registry: bug: cannot format %zu last_active times", old.n);
		rc = IDP_EINTERNAL;
		goto done;
	}
	params[0] = idp_buf_str(&ids);
	params[1] = idp_buf_str(&times);
	if (T.store == NULL || store_acquire(T.store, &c) != IDP_OK) {
		rc = IDP_EUNAVAIL;
		goto done;
	}
	rc = store_exec(c, &st_flush, params, &r);
	store_release(T.store, c);
	if (rc == IDP_OK) {
		uint64_t written;

		keep_skipped(&old, r, &written);
		atomic_fetch_add(&T.flushes, 1);
		atomic_fetch_add(&T.written, written);
	}
done:
	PQclear(r);
	idp_buf_cleanup(&ids);
	idp_buf_cleanup(&times);
	if (rc != IDP_OK) {
		log_warn("registry: cannot write last_active for %zu agent(s) now; will retry",
		         old.n);
		merge_back(&old);
		return rc == IDP_EINTERNAL ? rc : IDP_EUNAVAIL;
	}
	map_free(&old);
	return IDP_OK;
}

int
registry_touch_flush(void)
{
	return flush_now();
}

uint64_t
registry_touch_flushes(void)
{
	return atomic_load(&T.flushes);
}

void
touch_stats(struct touch_stats *out)
{
	pthread_mutex_lock(&T.lock);
	out->pending = T.map.n;
	pthread_mutex_unlock(&T.lock);
	out->flushes = atomic_load(&T.flushes);
	out->dropped = atomic_load(&T.dropped);
	out->written = atomic_load(&T.written);
	out->skipped = atomic_load(&T.skipped);
}

char *
touch_pending_ids(void)
{
	struct idp_buf ids;
	bool ok;

	/* As the flush's literal: 64k ids of at most 128 bytes fit. */
	idp_buf_init(&ids, 16u << 20);
	pthread_mutex_lock(&T.lock);
	ok = literals(&T.map, &ids, NULL);
	pthread_mutex_unlock(&T.lock);
	if (!ok) {
		idp_buf_cleanup(&ids);
		return NULL;
	}
	return idp_buf_take(&ids, NULL);
}

bool
touch_pending(const char *id)
{
	bool found = false;

	if (id == NULL || !registry_id_valid(id))
		return false;
	/* After any flush in progress: it may hold id's time outside the map
	 * and put it back (a locked row) only when its statement ends. */
	pthread_mutex_lock(&T.flush_lock);
	pthread_mutex_lock(&T.lock);
	if (T.map.cap > 0)
		found = map_slot(&T.map, id, touch_hash(id))->id != NULL;
	pthread_mutex_unlock(&T.lock);
	pthread_mutex_unlock(&T.flush_lock);
	return found;
}

/* ---- the flusher thread ---- */

static void
deadline_after(struct timespec *ts, int64_t ms)
{
	clock_gettime(CLOCK_MONOTONIC, ts);
	ts->tv_sec += (time_t)(ms / 1000);
	ts->tv_nsec += (long)(ms % 1000) * 1000000L;
	if (ts->tv_nsec >= 1000000000L) {
		ts->tv_sec++;
		ts->tv_nsec -= 1000000000L;
	}
}

static void *
flusher(void *arg)
{
	struct timespec due;

	(void)arg;
	pthread_mutex_lock(&T.lock);
	deadline_after(&due, atomic_load(&T.interval_ms));
	while (!T.stop) {
		int w = 0;

		while (!T.stop && !T.wake && w != ETIMEDOUT)
			w = pthread_cond_timedwait(&T.cond, &T.lock, &due);
		if (T.stop)
			break;
		if (T.wake && w != ETIMEDOUT && T.map.n < TOUCH_MAX_ENTRIES) {
			/* Woken by a change of interval: wait the new one from now. */
			T.wake = false;
			deadline_after(&due, atomic_load(&T.interval_ms));
			continue;
		}
		T.wake = false;
		pthread_mutex_unlock(&T.lock);
		/* A failure is logged, and the times wait for the next period. */
		(void)flush_now();
		pthread_mutex_lock(&T.lock);
		deadline_after(&due, atomic_load(&T.interval_ms));
	}
	pthread_mutex_unlock(&T.lock);
	/* The last flush, of every touch made before touch_stop. */
	if (flush_now() != IDP_OK) {
		log_warn("registry: last_active times noted since the last flush are lost");
	} else {
		size_t left;

		/* Skipped rows (locked elsewhere) have no next flush: say so. */
		pthread_mutex_lock(&T.lock);
		left = T.map.n;
		pthread_mutex_unlock(&T.lock);
		if (left > 0)
			log_warn("registry: last_active of %zu agent(s) not written at exit "
			         "(rows locked, or touched during the last flush)",
			         left);
	}
	return NULL;
}

int
touch_start(struct store *st, int64_t interval_ms)
{
	pthread_condattr_t ca;
	int rc;

	pthread_mutex_lock(&T.lock);
	if (T.running) {
		pthread_mutex_unlock(&T.lock);
		return IDP_EINVAL;
	}
	T.store = st;
	atomic_store(&T.interval_ms, interval_ms > 0 ? interval_ms : 10000);
	atomic_store(&T.cap_hint, TOUCH_MIN_CAP);
	T.stop = false;
	T.wake = false;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&T.cond, &ca);
	pthread_condattr_destroy(&ca);
	rc = pthread_create(&T.thread, NULL, flusher, NULL);
	if (rc != 0) {
		pthread_cond_destroy(&T.cond);
		pthread_mutex_unlock(&T.lock);
		return IDP_EINTERNAL;
	}
	T.running = true;
	pthread_mutex_unlock(&T.lock);
	return IDP_OK;
}

void
touch_set_interval(int64_t interval_ms)
{
	if (interval_ms <= 0)
		return;
	atomic_store(&T.interval_ms, interval_ms);
	pthread_mutex_lock(&T.lock);
	if (T.running) {
		T.wake = true;
		pthread_cond_signal(&T.cond);
	}
	pthread_mutex_unlock(&T.lock);
}

void
touch_stop(void)
{
	pthread_mutex_lock(&T.lock);
	if (!T.running) {
		pthread_mutex_unlock(&T.lock);
		return;
	}
	T.stop = true;
	pthread_cond_signal(&T.cond);
	pthread_mutex_unlock(&T.lock);
	pthread_join(T.thread, NULL);
	pthread_mutex_lock(&T.lock);
	/* Touches made while the last flush ran have nowhere to go. */
	T.running = false;
	map_free(&T.map);
	pthread_cond_destroy(&T.cond);
	T.store = NULL;
	pthread_mutex_unlock(&T.lock);
}
