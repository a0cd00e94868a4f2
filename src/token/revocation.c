/*
 * revocation.c - the revocation state: which tasks are open, how the live
 * delegation tokens descend from one another and which of them are revoked,
 * and which other jtis are revoked (include/idpd/revocation.h).
 *
 * DESIGN.  The state is an immutable snapshot: a large base table, rebuilt
 * whole, and a small overlay table holding what changed since the base was
 * built.  Both are open-addressing hash tables of immutable, reference-
 * counted entries keyed by a kind letter and a key ('t' task id, 'd'
 * delegation jti, 'r' revoked jti).  A patch (a notification, a write of
 * this instance, a row read on a miss) copies the overlay (at most
 * OVERLAY_MAX entries, a few microseconds), adds the new entry and swaps
 * the snapshot pointer; when the overlay grows past OVERLAY_MAX it is
 * merged into a new base.  Readers take revocation.lock (a mutex) only to
 * copy the pointer and take a reference, so they never wait on a writer's
 * work, let alone on PostgreSQL.  Writers build the next snapshot one at a
 * time under revocation.patch_lock.
 *
 * Every fact in the state only ever grows: tokens get recorded, tokens get
 * revoked, tasks get closed, and none of it is undone.  So a patch is a join
 * (revoked wins, closed wins) and may arrive in any order or twice.
 * Entries are dropped only once they have been expired for DROP_MARGIN_S,
 * when a base is built.
 *
 * Current or not.  The state is current while the listener is connected
 * and the last reload succeeded.  It stops being current when the listener
 * loses its session (on_lost) or a notification cannot be applied (the row
 * cannot be read); from then on checks answer from the snapshot for
 * revocation.max_staleness and then IDP_EUNAVAIL, until a reload succeeds
 * with the listener connected.  A reload runs on every (re)connect
 * (on_resync, listener thread) and, when that or a patch failed, on the
 * refresher thread, which retries with a backoff: a quiet instance whose
 * notifications carry nothing must still recover on its own.  Before the
 * first successful load every check is IDP_EUNAVAIL.
 *
 * Threads: init/shutdown on the main thread; on_* on the listener thread;
 * the refresher on its own; checks and notes on any worker.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/rand.h>

#include "idpd/clock.h"
#include "idpd/log.h"
#include "idpd/maintenance.h"
#include "idpd/metrics.h"
#include "idpd/registry.h"
#include "idpd/store.h"
#include "idpd/tasks.h"
#include "revocation_int.h"

/* Patches kept beside the base before they are merged into a new one. */
#define OVERLAY_MAX 512
/* An entry expired this long is dropped from the next base: well past the
 * largest identity.leeway (5 min) that a check may still add to exp. */
#define DROP_MARGIN_S 600
/* Rows per page of a full load. */
#define LOAD_PAGE "5000"
/* Attempts at a statement: after PostgreSQL restarts, each pooled session fails once. */
#define DB_ATTEMPTS 5
#define KEY_MAX 64

enum { K_TASK = 't', K_DELEG = 'd', K_REVOKED = 'r' };

struct rev_entry {
	_Atomic int refs;
	char kind;
	bool dead;     /* 'd': revoked; 't': completed; 'r': always */
	bool partial;  /* 't' made from a local note: exp and human unknown */
	bool approved; /* 'd': issued on a human's approval */
	int depth;     /* 'd' */
	int64_t iat_s; /* 'd' */
	int64_t exp_s;
	uint64_t seq; /* state.seq when made: a reload keeps what is newer than it */
	uint64_t hash;
	const char *key;      /* task id or jti */
	const char *parent;   /* 'd': the parent's jti, NULL for a task's root token */
	const char *task_id;  /* 'd' */
	const char *agent_id; /* 'd' */
	const char *scope;    /* 'd' */
	const char *human;    /* 't' */
	char buf[];
};

struct rev_table {
	_Atomic int refs;
	size_t cap; /* a power of two; at most half full */
	size_t n;
	struct rev_entry **slots;
};

struct rev_snap {
	_Atomic int refs;
	struct rev_table *base;
	struct rev_table *over;
};

static struct {
	pthread_mutex_t lock;       /* revocation.lock: guards snap */
	pthread_mutex_t patch_lock; /* revocation.patch_lock: one writer builds at a time */
	struct rev_snap *snap;      /* NULL until the first load */
	struct store *store;
	uint64_t seed;
	_Atomic uint64_t seq;
	_Atomic bool loaded;
	_Atomic bool listener_up;
	_Atomic uint64_t gen;           /* bumped by every event that may make the state stale */
	_Atomic int64_t stale_since_us; /* 0: current */
	_Atomic int64_t max_staleness_ms;
	_Atomic int64_t leeway_ms;
	struct rev_identity identity;
	bool initialised;

	struct {
		pthread_mutex_t lock; /* guards needed, stop */
		pthread_cond_t cond;
		bool needed, stop, started;
		pthread_t thread;
	} refresher;

	/* metrics */
	_Atomic uint64_t reloads, reload_failures, patches, patch_failures, merges, misses,
	    miss_failures;
	_Atomic int64_t last_reload_ms;
} state;

/* The monotonic clock of the staleness rule; a test may stand in for it. */
static int64_t
mono_us_system(void)
{
	return idp_mono_us();
}
IDP_STATIC int64_t (*rev_mono_us)(void) = mono_us_system;

/* ---- entries ---- */

static uint64_t
hash_key(char kind, const char *key)
{
	uint64_t h = 0xcbf29ce484222325ULL ^ state.seed;

	h ^= (unsigned char)kind;
	h *= 0x100000001b3ULL;
	for (; *key != '\0'; key++) {
		h ^= (unsigned char)*key;
		h *= 0x100000001b3ULL;
	}
	h ^= h >> 33;
	h *= 0xff51afd7ed558ccdULL;
	h ^= h >> 33;
	return h;
}

static const char *
put_str(struct rev_entry *e, size_t *at, const char *s)
{
	char *p;
	size_t n;

	if (s == NULL)
		return NULL;
	n = strlen(s) + 1;
	p = e->buf + *at;
	memcpy(p, s, n);
	*at += n;
	return p;
}

struct entry_fields {
	char kind;
	bool dead, partial;
	int depth;
	int64_t iat_s, exp_s;
	const char *key, *parent, *task_id, *agent_id, *scope, *human;
	bool approved;
};

/* A new entry with one reference; the strings are copied into it. */
static struct rev_entry *
entry_new(const struct entry_fields *f)
{
	const char *strs[] = {f->key, f->parent, f->task_id, f->agent_id, f->scope, f->human};
	size_t len = 0, at = 0;
	struct rev_entry *e;

	for (size_t i = 0; i < IDP_ARRAY_LEN(strs); i++)
		len += strs[i] != NULL ? strlen(strs[i]) + 1 : 0;
	e = idp_xcalloc(1, sizeof(*e) + len);
	atomic_init(&e->refs, 1);
	e->kind = f->kind;
	e->dead = f->dead || f->kind == K_REVOKED;
	e->partial = f->partial;
	e->approved = f->approved;
	e->depth = f->depth;
	e->iat_s = f->iat_s;
	e->exp_s = f->exp_s;
	e->seq = atomic_fetch_add(&state.seq, 1) + 1;
	e->key = put_str(e, &at, f->key);
	e->parent = put_str(e, &at, f->parent);
	e->task_id = put_str(e, &at, f->task_id);
	e->agent_id = put_str(e, &at, f->agent_id);
	e->scope = put_str(e, &at, f->scope);
	e->human = put_str(e, &at, f->human);
	e->hash = hash_key(e->kind, e->key);
	return e;
}

static struct rev_entry *
entry_ref(struct rev_entry *e)
{
	if (e != NULL)
		atomic_fetch_add_explicit(&e->refs, 1, memory_order_relaxed);
	return e;
}

static void
entry_unref(struct rev_entry *e)
{
	if (e != NULL && atomic_fetch_sub_explicit(&e->refs, 1, memory_order_acq_rel) == 1)
		free(e);
}

/* A copy of e with dead set. */
static struct rev_entry *
entry_killed(const struct rev_entry *e)
{
	struct entry_fields f = {.kind = e->kind,
	                         .dead = true,
	                         .partial = e->partial,
	                         .depth = e->depth,
	                         .iat_s = e->iat_s,
	                         .exp_s = e->exp_s,
	                         .key = e->key,
	                         .parent = e->parent,
	                         .task_id = e->task_id,
	                         .agent_id = e->agent_id,
	                         .scope = e->scope,
	                         .human = e->human,
	                         .approved = e->approved};

	return entry_new(&f);
}

/*
 * The join of what the state has (old, may be NULL) and a new fact (e):
 * NULL when e adds nothing, else the entry to install (a new reference).
 * e's reference is consumed either way.  Deadness is or-ed; the data come
 * from a full row rather than from a local note (partial).
 */
static struct rev_entry *
entry_join(const struct rev_entry *old, struct rev_entry *e)
{
	bool dead, upgrade;
	struct rev_entry *j;

	if (old == NULL)
		return e;
	dead = old->dead || e->dead;
	upgrade = old->partial && !e->partial;
	if (e->kind == K_REVOKED || (dead == old->dead && !upgrade)) {
		entry_unref(e);
		return NULL;
	}
	if (!e->partial || old->partial) {
		if (e->dead == dead)
			return e;
		j = entry_killed(e);
	} else {
		j = entry_killed(old);
	}
	entry_unref(e);
	return j;
}

/* ---- tables ---- */

static struct rev_table *
table_new(size_t want)
{
	struct rev_table *t = idp_xcalloc(1, sizeof(*t));
	size_t cap = 16;

	while (cap < want * 2 + 2)
		cap *= 2;
	atomic_init(&t->refs, 1);
	t->cap = cap;
	t->slots = idp_xcalloc(cap, sizeof(*t->slots));
	return t;
}

static struct rev_table *
table_ref(struct rev_table *t)
{
	atomic_fetch_add(&t->refs, 1);
	return t;
}

static void
table_unref(struct rev_table *t)
{
	if (t == NULL || atomic_fetch_sub(&t->refs, 1) != 1)
		return;
	for (size_t i = 0; i < t->cap; i++)
		entry_unref(t->slots[i]);
	free(t->slots);
	free(t);
}

static size_t
probe(const struct rev_table *t, char kind, const char *key, uint64_t h)
{
	size_t mask = t->cap - 1, i = (size_t)h & mask;

	while (t->slots[i] != NULL && (t->slots[i]->hash != h || t->slots[i]->kind != kind ||
	                               strcmp(t->slots[i]->key, key) != 0))
		i = (i + 1) & mask;
	return i;
}

static struct rev_entry *
table_get(const struct rev_table *t, char kind, const char *key, uint64_t h)
{
	return t->slots[probe(t, kind, key, h)];
}

/* Double an unpublished table. */
static void
table_grow(struct rev_table *t)
{
	struct rev_entry **old = t->slots;
	size_t old_cap = t->cap;

	t->cap *= 2;
	t->slots = idp_xcalloc(t->cap, sizeof(*t->slots));
	for (size_t i = 0; i < old_cap; i++)
		if (old[i] != NULL)
			t->slots[probe(t, old[i]->kind, old[i]->key, old[i]->hash)] = old[i];
	free(old);
}

/* Put e (the table takes the reference) into an unpublished table, replacing its key. */
static void
table_put(struct rev_table *t, struct rev_entry *e)
{
	size_t i = probe(t, e->kind, e->key, e->hash);

	if (t->slots[i] != NULL) {
		entry_unref(t->slots[i]);
	} else {
		t->n++;
	}
	t->slots[i] = e;
	if (t->n * 2 > t->cap) {
		table_grow(t);
	}
}

static struct rev_table *
table_copy(const struct rev_table *src, size_t extra)
{
	struct rev_table *t = table_new(src->n + extra);

	for (size_t i = 0; i < src->cap; i++)
		if (src->slots[i] != NULL)
			table_put(t, entry_ref(src->slots[i]));
	return t;
}

/* ---- snapshots ---- */

static struct rev_snap *
snap_new(struct rev_table *base, struct rev_table *over)
{
	struct rev_snap *s = idp_xcalloc(1, sizeof(*s));

	atomic_init(&s->refs, 1);
	s->base = base;
	s->over = over;
	return s;
}

static void
snap_unref(struct rev_snap *s)
{
	if (s == NULL || atomic_fetch_sub(&s->refs, 1) != 1)
		return;
	table_unref(s->base);
	table_unref(s->over);
	free(s);
}

/* The current snapshot with a reference, or NULL before the first load. */
static struct rev_snap *
snap_get(void)
{
	struct rev_snap *s;

	pthread_mutex_lock(&state.lock);
	s = state.snap;
	if (s != NULL)
		atomic_fetch_add(&s->refs, 1);
	pthread_mutex_unlock(&state.lock);
	return s;
}

/* Publish s (taking the caller's reference).  patch_lock held. */
static void
snap_publish(struct rev_snap *s)
{
	struct rev_snap *old;

	pthread_mutex_lock(&state.lock);
	old = state.snap;
	state.snap = s;
	pthread_mutex_unlock(&state.lock);
	snap_unref(old);
}

static const struct rev_entry *
snap_lookup(const struct rev_snap *s, char kind, const char *key)
{
	uint64_t h = hash_key(kind, key);
	const struct rev_entry *e = table_get(s->over, kind, key, h);

	return e != NULL ? e : table_get(s->base, kind, key, h);
}

/* Whether e may be dropped from a base built at now_s. */
static bool
droppable(const struct rev_entry *e, int64_t now_s)
{
	return e->exp_s < now_s - DROP_MARGIN_S;
}

/* A new base: base's entries, then over's on top, the long expired left out. */
static struct rev_table *
base_merge(const struct rev_table *base, const struct rev_table *over, int64_t now_s)
{
	struct rev_table *t = table_new(base->n + over->n);

	for (size_t i = 0; i < base->cap; i++) {
		struct rev_entry *e = base->slots[i];

		if (e != NULL && !droppable(e, now_s) &&
		    table_get(over, e->kind, e->key, e->hash) == NULL)
			table_put(t, entry_ref(e));
	}
	for (size_t i = 0; i < over->cap; i++) {
		struct rev_entry *e = over->slots[i];

		if (e != NULL && !droppable(e, now_s))
			table_put(t, entry_ref(e));
	}
	return t;
}

static int64_t
now_s(void)
{
	return idp_now_ms(idp_clock_system()) / 1000;
}

/*
 * Join es[0..n) (references consumed) into the state and publish the
 * result.  Before the first load there is nothing to patch: the load will
 * read the same rows.  Any thread.
 */
static void
apply(struct rev_entry **es, size_t n)
{
	struct rev_snap *cur;
	struct rev_table *over;
	size_t installed = 0;

	pthread_mutex_lock(&state.patch_lock);
	cur = state.snap; /* stable: only patch_lock holders replace it */
	if (cur == NULL) {
		pthread_mutex_unlock(&state.patch_lock);
		for (size_t i = 0; i < n; i++)
			entry_unref(es[i]);
		return;
	}
	over = table_copy(cur->over, n);
	for (size_t i = 0; i < n; i++) {
		const struct rev_entry *old = table_get(over, es[i]->kind, es[i]->key, es[i]->hash);
		struct rev_entry *j;

		if (old == NULL)
			old = table_get(cur->base, es[i]->kind, es[i]->key, es[i]->hash);
		j = entry_join(old, es[i]);
		if (j != NULL) {
			table_put(over, j);
			installed++;
		}
	}
	if (installed == 0) {
		table_unref(over);
	} else if (over->n > OVERLAY_MAX) {
		struct rev_table *base = base_merge(cur->base, over, now_s());

		table_unref(over);
		snap_publish(snap_new(base, table_new(0)));
		atomic_fetch_add(&state.merges, 1);
	} else {
		snap_publish(snap_new(table_ref(cur->base), over));
	}
	atomic_fetch_add(&state.patches, installed);
	pthread_mutex_unlock(&state.patch_lock);
}

/* ---- PostgreSQL ---- */

#define DELEG_COLUMNS                                                                              \
	"jti, parent_jti, task_id, agent_id, array_to_string(scope, ' '), depth, "                 \
	"floor(extract(epoch FROM issued_at))::bigint, "                                           \
	"floor(extract(epoch FROM expires_at))::bigint, revoked_at IS NOT NULL, "                  \
	"approval_id IS NOT NULL"
#define TASK_COLUMNS_REV                                                                           \
	"id, human_principal, status <> 'open', floor(extract(epoch FROM expires_at))::bigint"
#define REVOKED_COLUMNS "jti, floor(extract(epoch FROM expires_at))::bigint"

static struct store_stmt st_load_deleg = {
    "rev_load_deleg",
    "SELECT " DELEG_COLUMNS " FROM delegation_tokens WHERE expires_at > to_timestamp($1::bigint) "
    "AND jti > $2 ORDER BY jti LIMIT " LOAD_PAGE,
    2, 0};
static struct store_stmt st_load_tasks = {"rev_load_tasks",
                                          "SELECT " TASK_COLUMNS_REV
                                          " FROM tasks WHERE expires_at > to_timestamp($1::bigint) "
                                          "AND id > $2 ORDER BY id LIMIT " LOAD_PAGE,
                                          2, 0};
static struct store_stmt st_load_revoked = {
    "rev_load_revoked",
    "SELECT " REVOKED_COLUMNS " FROM revoked_tokens WHERE expires_at > to_timestamp($1::bigint) "
    "AND jti > $2 ORDER BY jti LIMIT " LOAD_PAGE,
    2, 0};
static struct store_stmt st_get_deleg = {
    "rev_get_deleg", "SELECT " DELEG_COLUMNS " FROM delegation_tokens WHERE jti = $1", 1, 0};
static struct store_stmt st_get_task = {
    "rev_get_task", "SELECT " TASK_COLUMNS_REV " FROM tasks WHERE id = $1", 1, 0};
static struct store_stmt st_get_revoked = {
    "rev_get_revoked", "SELECT " REVOKED_COLUMNS " FROM revoked_tokens WHERE jti = $1", 1, 0};
/* A token and its ancestors, nearest first. */
static struct store_stmt st_get_chain = {
    "rev_get_chain",
    "WITH RECURSIVE c AS (SELECT d.*, 0 AS n FROM delegation_tokens d WHERE jti = $1 "
    "UNION ALL SELECT d.*, c.n + 1 FROM delegation_tokens d JOIN c ON d.jti = c.parent_jti "
    "WHERE c.n < 64) SELECT " DELEG_COLUMNS " FROM c ORDER BY n",
    1, 0};

static int64_t
col_i64(PGresult *r, int row, int col)
{
	return strtoll(PQgetvalue(r, row, col), NULL, 10);
}

static struct rev_entry *
deleg_from_row(PGresult *r, int i)
{
	struct entry_fields f = {
	    .kind = K_DELEG,
	    .key = PQgetvalue(r, i, 0),
	    .parent = PQgetisnull(r, i, 1) ? NULL : PQgetvalue(r, i, 1),
	    .task_id = PQgetvalue(r, i, 2),
	    .agent_id = PQgetvalue(r, i, 3),
	    .scope = PQgetvalue(r, i, 4),
	    .depth = (int)col_i64(r, i, 5),
	    .iat_s = col_i64(r, i, 6),
	    .exp_s = col_i64(r, i, 7),
	    .dead = strcmp(PQgetvalue(r, i, 8), "t") == 0,
	    .approved = strcmp(PQgetvalue(r, i, 9), "t") == 0,
	};

	return entry_new(&f);
}

static struct rev_entry *
task_from_row(PGresult *r, int i)
{
	struct entry_fields f = {
	    .kind = K_TASK,
	    .key = PQgetvalue(r, i, 0),
	    .human = PQgetvalue(r, i, 1),
	    .dead = strcmp(PQgetvalue(r, i, 2), "t") == 0,
	    .exp_s = col_i64(r, i, 3),
	};

	return entry_new(&f);
}

static struct rev_entry *
revoked_from_row(PGresult *r, int i)
{
	struct entry_fields f = {
	    .kind = K_REVOKED, .key = PQgetvalue(r, i, 0), .exp_s = col_i64(r, i, 1)};

	return entry_new(&f);
}

/*
 * Run st on a pooled connection, trying again while the failure is a dead
 * session: after PostgreSQL restarts, every idle connection of the pool
 * fails once before it is reopened.  IDP_EUNAVAIL when no attempt worked.
 */
static int
db_exec(struct store_stmt *st, const char *const *params, PGresult **r)
{
	int rc = IDP_EUNAVAIL;

	*r = NULL;
	for (int i = 0; i < DB_ATTEMPTS && rc == IDP_EUNAVAIL; i++) {
		struct store_conn *c;

		if (store_acquire(state.store, &c) != IDP_OK)
			return IDP_EUNAVAIL;
		rc = store_exec(c, st, params, r);
		store_release(state.store, c);
	}
	return rc;
}

/* Page through st (key in column 0) into t with make. */
static int
load_table(struct rev_table *t, struct store_stmt *st, struct rev_entry *(*make)(PGresult *, int),
           int64_t cutoff_s, size_t *count)
{
	char cutoff[24], last[KEY_MAX + 2] = "";
	const char *params[2] = {cutoff, last};

	snprintf(cutoff, sizeof(cutoff), "%lld", (long long)cutoff_s);
	for (;;) {
		PGresult *r;
		int rc = db_exec(st, params, &r), n;

		if (rc != IDP_OK)
			return rc;
		n = PQntuples(r);
		for (int i = 0; i < n; i++)
			table_put(t, make(r, i));
		*count += (size_t)n;
		if (n > 0)
			snprintf(last, sizeof(last), "%s", PQgetvalue(r, n - 1, 0));
		PQclear(r);
		if (n < atoi(LOAD_PAGE))
			return IDP_OK;
	}
}

/*
 * Read the live part of the three tables into a new base and publish it,
 * keeping every entry installed since the read began (a write of this
 * instance, a patch) on top.  IDP_EUNAVAIL when PostgreSQL cannot answer;
 * the old snapshot then stays.  Listener or refresher thread.
 */
static int
reload(void)
{
	uint64_t since = atomic_load(&state.seq);
	int64_t t0 = idp_mono_us(), now = now_s();
	struct rev_table *base = table_new(1024);
	size_t n_deleg = 0, n_tasks = 0, n_revoked = 0;
	struct rev_snap *cur;
	int rc;

	rc = load_table(base, &st_load_deleg, deleg_from_row, now - DROP_MARGIN_S, &n_deleg);
	if (rc == IDP_OK)
		rc = load_table(base, &st_load_tasks, task_from_row, now - DROP_MARGIN_S, &n_tasks);
	if (rc == IDP_OK)
		rc = load_table(base, &st_load_revoked, revoked_from_row, now - DROP_MARGIN_S,
		                &n_revoked);
	if (rc != IDP_OK) {
		table_unref(base);
		atomic_fetch_add(&state.reload_failures, 1);
		log_warn("revocation: cannot load the revocation state: %s", idp_err_name(rc));
		return IDP_EUNAVAIL;
	}
	pthread_mutex_lock(&state.patch_lock);
	cur = state.snap;
	if (cur != NULL) {
		const struct rev_table *ts[2] = {cur->base, cur->over};

		for (size_t k = 0; k < 2; k++) {
			for (size_t i = 0; i < ts[k]->cap; i++) {
				struct rev_entry *e = ts[k]->slots[i], *j;

				if (e == NULL || e->seq <= since)
					continue;
				j = entry_join(table_get(base, e->kind, e->key, e->hash),
				               entry_ref(e));
				if (j != NULL)
					table_put(base, j);
			}
		}
	}
	snap_publish(snap_new(base, table_new(0)));
	atomic_store(&state.loaded, true);
	pthread_mutex_unlock(&state.patch_lock);
	atomic_fetch_add(&state.reloads, 1);
	atomic_store(&state.last_reload_ms, idp_now_ms(idp_clock_system()));
	log_info("revocation: loaded %zu delegation token(s), %zu task(s), %zu revoked jti(s) in "
	         "%lld ms",
	         n_deleg, n_tasks, n_revoked, (long long)((idp_mono_us() - t0) / 1000));
	return IDP_OK;
}

/* Mark the state stale from now (if it was current) and ask for a reload. */
static void
became_stale(bool want_reload)
{
	int64_t zero = 0;

	atomic_fetch_add(&state.gen, 1);
	atomic_compare_exchange_strong(&state.stale_since_us, &zero, rev_mono_us());
	if (want_reload && state.refresher.started) {
		pthread_mutex_lock(&state.refresher.lock);
		state.refresher.needed = true;
		pthread_cond_signal(&state.refresher.cond);
		pthread_mutex_unlock(&state.refresher.lock);
	}
}

#ifdef IDP_TESTING
/* Unit tests: run between settle's check and its swap, where on_lost may come. */
void (*rev_testing_settle_window)(void);
#endif

/*
 * Call the state current if the listener is connected and nothing that
 * could make it stale happened since state.gen was g; whether it is
 * current.  on_lost may run at any moment, and its became_stale finds the
 * state already stale and leaves it: so the staleness is cleared by a
 * compare-and-swap from the value seen, and the conditions are read again
 * after it; if they no longer hold, the staleness is put back as it was.
 * A plain store after the check could call the state current with no
 * listener.  Listener or refresher thread.
 */
IDP_STATIC bool
settle(uint64_t g)
{
	int64_t since = atomic_load(&state.stale_since_us), zero = 0;

	if (!atomic_load(&state.listener_up) || atomic_load(&state.gen) != g)
		return false;
	if (since == 0)
		return true;
#ifdef IDP_TESTING
	if (rev_testing_settle_window != NULL)
		rev_testing_settle_window();
#endif
	/* Fails only when another settle got there first: it checked too. */
	if (!atomic_compare_exchange_strong(&state.stale_since_us, &since, 0))
		return false;
	if (atomic_load(&state.listener_up) && atomic_load(&state.gen) == g)
		return true;
	/* Lost meanwhile; a loss after the swap has marked it stale itself. */
	(void)atomic_compare_exchange_strong(&state.stale_since_us, &zero, since);
	return false;
}

/*
 * Reload, and call the state current if nothing that could make it stale
 * happened meanwhile and the listener is connected (settle).  Returns
 * whether the reload itself succeeded.
 */
static bool
reload_and_settle(void)
{
	uint64_t g = atomic_load(&state.gen);

	if (reload() != IDP_OK)
		return false;
	if (settle(g))
		log_debug("revocation: the state is current");
	return true;
}

static void *
refresher_main(void *arg)
{
	int backoff_ms = 200;

	(void)arg;
	pthread_mutex_lock(&state.refresher.lock);
	while (!state.refresher.stop) {
		struct timespec ts;
		bool ok;

		if (!state.refresher.needed) {
			pthread_cond_wait(&state.refresher.cond, &state.refresher.lock);
			continue;
		}
		state.refresher.needed = false;
		pthread_mutex_unlock(&state.refresher.lock);
		ok = reload_and_settle();
		pthread_mutex_lock(&state.refresher.lock);
		if (ok) {
			backoff_ms = 200;
			continue;
		}
		state.refresher.needed = true;
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_sec += backoff_ms / 1000;
		ts.tv_nsec += (long)(backoff_ms % 1000) * 1000000L;
		if (ts.tv_nsec >= 1000000000L) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000L;
		}
		pthread_cond_timedwait(&state.refresher.cond, &state.refresher.lock, &ts);
		backoff_ms = backoff_ms < 2000 ? backoff_ms * 2 : 2000;
	}
	pthread_mutex_unlock(&state.refresher.lock);
	return NULL;
}

/* Whether s is a key a notification or a lookup may carry. */
static bool
key_ok(const char *s)
{
	size_t n = 0;

	for (; s[n] != '\0'; n++) {
		char c = s[n];

		if (n >= KEY_MAX || !((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
		                      (c >= '0' && c <= '9') || c == '_' || c == '-'))
			return false;
	}
	return n > 0;
}

bool
rev_jti_ok(const char *s)
{
	return s != NULL && strlen(s) >= 16 && key_ok(s);
}

/* Read one row named by a notification; IDP_ENOTFOUND when it is gone. */
static int
fetch_one(char kind, const char *key, struct rev_entry **out)
{
	const char *params[1] = {key};
	struct store_stmt *st = kind == K_DELEG  ? &st_get_deleg
	                        : kind == K_TASK ? &st_get_task
	                                         : &st_get_revoked;
	PGresult *r;
	int rc = db_exec(st, params, &r);

	*out = NULL;
	if (rc != IDP_OK)
		return rc == IDP_EINVAL ? IDP_ENOTFOUND : IDP_EUNAVAIL;
	if (PQntuples(r) == 1)
		*out = kind == K_DELEG  ? deleg_from_row(r, 0)
		       : kind == K_TASK ? task_from_row(r, 0)
		                        : revoked_from_row(r, 0);
	PQclear(r);
	return *out != NULL ? IDP_OK : IDP_ENOTFOUND;
}

/*
 * Whether the state already holds the last word on kind/key, so that its
 * row need not be read: a revoked jti, a revoked token, a closed task with
 * its row.  Nothing that changes such a row is ever notified again.
 */
static bool
known_final(char kind, const char *key)
{
	struct rev_snap *s = snap_get();
	const struct rev_entry *e;
	bool final;

	if (s == NULL)
		return false;
	e = snap_lookup(s, kind, key);
	final = e != NULL && e->dead && !e->partial;
	snap_unref(s);
	return final;
}

IDP_STATIC void
on_notify(const char *channel, const char *payload, void *ctx)
{
	struct rev_entry *e;
	int rc;

	(void)channel;
	(void)ctx;
	if (payload == NULL || strlen(payload) < 3 || payload[1] != ':' ||
	    (payload[0] != K_TASK && payload[0] != K_DELEG && payload[0] != K_REVOKED) ||
	    !key_ok(payload + 2)) {
		log_warn("revocation: ignoring a malformed notification");
		return;
	}
	if (!atomic_load(&state.loaded)) {
		(void)reload_and_settle();
		return;
	}
	if (known_final(payload[0], payload + 2))
		return;
	rc = fetch_one(payload[0], payload + 2, &e);
	if (rc == IDP_OK) {
		apply(&e, 1);
	} else if (rc != IDP_ENOTFOUND) {
		/* A change this instance could not read: it cannot know what it
		 * missed, so it is stale until a reload succeeds. */
		atomic_fetch_add(&state.patch_failures, 1);
		log_warn("revocation: cannot read the row of notification %.2s...; the state is "
		         "stale until it is reloaded",
		         payload);
		became_stale(true);
	}
}

IDP_STATIC void
on_resync(void *ctx)
{
	(void)ctx;
	atomic_store(&state.listener_up, true);
	atomic_fetch_add(&state.gen, 1);
	if (!reload_and_settle())
		became_stale(true);
}

IDP_STATIC void
on_lost(void *ctx)
{
	(void)ctx;
	atomic_store(&state.listener_up, false);
	became_stale(false);
	log_warn("revocation: notifications lost; answering from the state for at most %lld ms",
	         (long long)atomic_load(&state.max_staleness_ms));
}

/* ---- checks ---- */

/* IDP_OK while the state may be answered from, IDP_EUNAVAIL otherwise. */
static int
usable(void)
{
	int64_t since;

	if (!atomic_load_explicit(&state.loaded, memory_order_acquire))
		return IDP_EUNAVAIL;
	since = atomic_load(&state.stale_since_us);
	if (since != 0 && rev_mono_us() - since > atomic_load(&state.max_staleness_ms) * 1000)
		return IDP_EUNAVAIL;
	return IDP_OK;
}

/* The readiness check: what every check below would answer 503 for. */
static const char *
unready(void *ctx)
{
	(void)ctx;
	if (!atomic_load_explicit(&state.loaded, memory_order_acquire))
		return "revocation_state_not_loaded";
	return usable() == IDP_OK ? NULL : "revocation_state_stale";
}

/*
 * Read a delegation token's chain and its task from PostgreSQL into the
 * state: a token made on another instance whose notification has not
 * arrived, or a task opened there.  IDP_OK, IDP_ENOTFOUND (no such token),
 * IDP_EUNAVAIL.
 */
static int
fetch_chain(const char *jti, const char *task_id)
{
	struct rev_entry *es[REV_CHAIN_MAX + 1];
	const char *params[1] = {jti};
	size_t n = 0;
	PGresult *r;
	int rc, rows;

	atomic_fetch_add(&state.misses, 1);
	if (jti != NULL) {
		rc = db_exec(&st_get_chain, params, &r);
		if (rc != IDP_OK) {
			atomic_fetch_add(&state.miss_failures, 1);
			return rc == IDP_EINVAL ? IDP_ENOTFOUND : IDP_EUNAVAIL;
		}
		rows = PQntuples(r);
		for (int i = 0; i < rows && n < REV_CHAIN_MAX; i++)
			es[n++] = deleg_from_row(r, i);
		PQclear(r);
		if (rows == 0)
			return IDP_ENOTFOUND;
	}
	params[0] = task_id != NULL ? task_id : n > 0 ? es[0]->task_id : NULL;
	rc = params[0] != NULL ? db_exec(&st_get_task, params, &r) : IDP_EINVAL;
	if (rc != IDP_OK && rc != IDP_EINVAL) {
		for (size_t i = 0; i < n; i++)
			entry_unref(es[i]);
		atomic_fetch_add(&state.miss_failures, 1);
		return IDP_EUNAVAIL;
	}
	if (rc == IDP_OK) {
		if (PQntuples(r) == 1)
			es[n++] = task_from_row(r, 0);
		PQclear(r);
	}
	apply(es, n);
	return IDP_OK;
}

enum walk { W_OK, W_DENY, W_MISS };

/* The task's part of a walk: known, open, unexpired. */
static enum walk
walk_task(const struct rev_snap *s, const char *task_id, int64_t now, struct rev_view *v,
          const char **reason)
{
	const struct rev_entry *t = snap_lookup(s, K_TASK, task_id);

	if (t == NULL)
		return W_MISS;
	/* A partial entry (a local note) is always a closed task. */
	if (t->dead || t->exp_s <= now) {
		*reason = "task_not_open";
		return W_DENY;
	}
	v->task_id = t->key;
	v->human = t->human;
	return W_OK;
}

static enum walk
walk(const struct rev_snap *s, const char *jti, const char *task_id, int64_t now,
     struct rev_view *v, const char **reason)
{
	const struct rev_entry *chain[REV_CHAIN_MAX];
	const struct rev_entry *e = snap_lookup(s, K_DELEG, jti);
	size_t n = 0;
	enum walk w;

	if (e == NULL)
		return W_MISS;
	if (task_id != NULL && strcmp(e->task_id, task_id) != 0) {
		*reason = "task_mismatch";
		return W_DENY;
	}
	for (;;) {
		const struct rev_entry *p;

		chain[n++] = e;
		if (e->dead || snap_lookup(s, K_REVOKED, e->key) != NULL) {
			*reason = "token_revoked";
			return W_DENY;
		}
		if (e->exp_s <= now) {
			*reason = "token_expired";
			return W_DENY;
		}
		if (e->parent == NULL)
			break;
		p = snap_lookup(s, K_DELEG, e->parent);
		if (p == NULL)
			return W_MISS;
		if (n == REV_CHAIN_MAX || p->depth != e->depth - 1 ||
		    strcmp(p->task_id, e->task_id) != 0) {
			log_error("revocation: the stored chain of %s is corrupt", jti);
			*reason = "token_unknown";
			return W_DENY;
		}
		e = p;
	}
	if (e->depth != 0) {
		*reason = "token_unknown";
		return W_DENY;
	}
	w = walk_task(s, chain[0]->task_id, now, v, reason);
	if (w != W_OK)
		return w;
	v->n = n;
	for (size_t i = 0; i < n; i++) {
		const struct rev_entry *l = chain[n - 1 - i];

		v->links[i] = (struct rev_link_view){l->key,   l->agent_id, l->scope,   l->depth,
		                                     l->iat_s, l->exp_s,    l->approved};
	}
	return W_OK;
}

int
rev_view_delegation(const char *jti, const char *task_id, int64_t now, bool may_block,
                    struct rev_view *v, const char **reason)
{
	static const char *unused;

	if (reason == NULL)
		reason = &unused;
	memset(v, 0, sizeof(*v));
	if (jti == NULL || !key_ok(jti) || (task_id != NULL && !key_ok(task_id))) {
		*reason = "token_unknown";
		return IDP_EFORBIDDEN;
	}
	for (int attempt = 0; attempt < 2; attempt++) {
		struct rev_snap *s;
		enum walk w;
		int rc;

		if (usable() != IDP_OK)
			return IDP_EUNAVAIL;
		s = snap_get();
		if (s == NULL)
			return IDP_EUNAVAIL;
		w = walk(s, jti, task_id, now, v, reason);
		if (w == W_OK) {
			v->snap = s;
			return IDP_OK;
		}
		memset(v, 0, sizeof(*v));
		snap_unref(s);
		if (w == W_DENY)
			return IDP_EFORBIDDEN;
		if (!may_block)
			return REV_WOULD_BLOCK;
		if (attempt == 1)
			break;
		rc = fetch_chain(jti, task_id);
		if (rc == IDP_ENOTFOUND)
			break;
		if (rc != IDP_OK)
			return IDP_EUNAVAIL;
	}
	*reason = "token_unknown";
	return IDP_EFORBIDDEN;
}

int
rev_view_task(const char *task_id, int64_t now, bool may_block, struct rev_view *v,
              const char **reason)
{
	static const char *unused;

	if (reason == NULL)
		reason = &unused;
	memset(v, 0, sizeof(*v));
	if (task_id == NULL || !key_ok(task_id)) {
		*reason = "token_unknown";
		return IDP_EFORBIDDEN;
	}
	for (int attempt = 0; attempt < 2; attempt++) {
		struct rev_snap *s;
		enum walk w;

		if (usable() != IDP_OK)
			return IDP_EUNAVAIL;
		s = snap_get();
		if (s == NULL)
			return IDP_EUNAVAIL;
		w = walk_task(s, task_id, now, v, reason);
		if (w == W_OK) {
			v->snap = s;
			return IDP_OK;
		}
		memset(v, 0, sizeof(*v));
		snap_unref(s);
		if (w == W_DENY)
			return IDP_EFORBIDDEN;
		if (!may_block)
			return REV_WOULD_BLOCK;
		if (attempt == 1)
			break;
		if (fetch_chain(NULL, task_id) != IDP_OK)
			return IDP_EUNAVAIL;
	}
	*reason = "token_unknown";
	return IDP_EFORBIDDEN;
}

void
rev_view_release(struct rev_view *v)
{
	snap_unref(v->snap);
	memset(v, 0, sizeof(*v));
}

int
revocation_check_delegation(const char *jti, const char *task_id, int64_t now, bool may_block,
                            struct revocation_chain **out, const char **reason)
{
	struct rev_view v;
	struct revocation_chain *c;
	int rc;

	if (out != NULL)
		*out = NULL;
	rc = rev_view_delegation(jti, task_id, now, may_block, &v, reason);
	if (rc == REV_WOULD_BLOCK)
		return IDP_EWOULDBLOCK;
	if (rc != IDP_OK)
		return rc;
	if (out != NULL) {
		c = idp_xcalloc(1, sizeof(*c));
		c->task_id = idp_xstrdup(v.task_id);
		c->human = idp_xstrdup(v.human);
		c->n = v.n;
		c->links = idp_xcalloc(v.n, sizeof(*c->links));
		for (size_t i = 0; i < v.n; i++) {
			c->links[i].jti = idp_xstrdup(v.links[i].jti);
			c->links[i].agent_id = idp_xstrdup(v.links[i].agent_id);
			c->links[i].scope = idp_xstrdup(v.links[i].scope);
			c->links[i].depth = v.links[i].depth;
			c->links[i].iat_s = v.links[i].iat_s;
			c->links[i].exp_s = v.links[i].exp_s;
			c->links[i].approved = v.links[i].approved;
		}
		*out = c;
	}
	rev_view_release(&v);
	return IDP_OK;
}

void
revocation_chain_free(struct revocation_chain *c)
{
	if (c == NULL)
		return;
	for (size_t i = 0; i < c->n; i++) {
		free(c->links[i].jti);
		free(c->links[i].agent_id);
		free(c->links[i].scope);
	}
	free(c->links);
	free(c->task_id);
	free(c->human);
	free(c);
}

int
revocation_check_jti(const char *jti)
{
	struct rev_snap *s;
	bool revoked;

	if (usable() != IDP_OK)
		return IDP_EUNAVAIL;
	if (jti == NULL || !key_ok(jti))
		return IDP_OK; /* no such jti was ever revoked */
	s = snap_get();
	if (s == NULL)
		return IDP_EUNAVAIL;
	revoked = snap_lookup(s, K_REVOKED, jti) != NULL;
	snap_unref(s);
	return revoked ? IDP_EFORBIDDEN : IDP_OK;
}

/* ---- notes from this instance's own writes ---- */

void
revocation_note_delegation(const char *jti, const char *parent_jti, const char *task_id,
                           const char *agent_id, const char *scope, int depth, int64_t iat_s,
                           int64_t exp_s, bool approved)
{
	struct entry_fields f = {.kind = K_DELEG,
	                         .approved = approved,
	                         .key = jti,
	                         .parent = parent_jti,
	                         .task_id = task_id,
	                         .agent_id = agent_id,
	                         .scope = scope,
	                         .depth = depth,
	                         .iat_s = iat_s,
	                         .exp_s = exp_s};
	struct rev_entry *e;

	if (!state.initialised || jti == NULL || task_id == NULL || agent_id == NULL ||
	    scope == NULL || !key_ok(jti) || !key_ok(task_id) ||
	    (parent_jti != NULL && !key_ok(parent_jti)))
		return;
	e = entry_new(&f);
	apply(&e, 1);
}

void
revocation_note_task_closed(const char *task_id)
{
	struct entry_fields f = {
	    .kind = K_TASK, .key = task_id, .dead = true, .partial = true, .exp_s = INT64_MAX};
	struct rev_entry *e;

	if (!state.initialised || task_id == NULL || !key_ok(task_id))
		return;
	e = entry_new(&f);
	apply(&e, 1);
}

void
rev_note_revoked_jti(const char *jti, int64_t exp_s)
{
	struct entry_fields f = {.kind = K_REVOKED, .key = jti, .exp_s = exp_s};
	struct rev_entry *e;

	if (!state.initialised || jti == NULL || !key_ok(jti))
		return;
	e = entry_new(&f);
	apply(&e, 1);
}

void
rev_note_revoked_delegation(const char *jti)
{
	struct rev_snap *s;
	const struct rev_entry *e;
	struct rev_entry *k = NULL;

	if (!state.initialised || jti == NULL || !key_ok(jti))
		return;
	s = snap_get();
	if (s == NULL)
		return;
	e = snap_lookup(s, K_DELEG, jti);
	if (e != NULL && !e->dead)
		k = entry_killed(e);
	snap_unref(s);
	if (k != NULL)
		apply(&k, 1);
}

const struct rev_identity *
rev_identity(void)
{
	return &state.identity;
}

int64_t
rev_leeway_s(void)
{
	return atomic_load(&state.leeway_ms) / 1000;
}

#ifdef IDP_TESTING
/* Unit tests: an empty state, loaded and current, as if PostgreSQL had answered. */
void
rev_testing_load_empty(void)
{
	pthread_mutex_lock(&state.patch_lock);
	snap_publish(snap_new(table_new(0), table_new(0)));
	atomic_store(&state.loaded, true);
	atomic_store(&state.listener_up, true);
	atomic_store(&state.stale_since_us, 0);
	pthread_mutex_unlock(&state.patch_lock);
}

/* Unit tests: a task row as a notification would bring it. */
void
rev_testing_task(const char *id, const char *human, int64_t exp_s, bool closed)
{
	struct entry_fields f = {
	    .kind = K_TASK, .key = id, .human = human, .exp_s = exp_s, .dead = closed};
	struct rev_entry *e = entry_new(&f);

	apply(&e, 1);
}

uint64_t
rev_testing_merges(void)
{
	return atomic_load(&state.merges);
}

/* Unit tests: the staleness generation settle compares against. */
uint64_t
rev_testing_gen(void)
{
	return atomic_load(&state.gen);
}
#endif

/* ---- the cleanup job ---- */

/*
 * Delete revocation records and delegation tokens whose expiry passed more
 * than DROP_MARGIN_S ago: the tokens are refused as expired everywhere.  A
 * child never outlives its parent, so when a parent has expired so have its
 * children; deleting the deepest first keeps every batch closed under
 * "child of", and the foreign key (parent_jti, checked at the end of each
 * statement) holds.  Bounded batches; the next run goes on.
 */
#define CLEANUP_BATCH "10000"

static int
cleanup_job(const struct maintenance_run *run, void *ctx, json_t *counts, struct idp_diag *diag)
{
	static struct store_stmt revoked = {
	    "rev_cleanup_revoked",
	    "DELETE FROM revoked_tokens WHERE jti IN (SELECT jti FROM revoked_tokens WHERE "
	    "expires_at < now() - make_interval(secs => $1::int) LIMIT $2::int)",
	    2, 0};
	static struct store_stmt deleg = {
	    "rev_cleanup_delegations",
	    "DELETE FROM delegation_tokens WHERE jti IN (SELECT jti FROM delegation_tokens WHERE "
	    "expires_at < now() - make_interval(secs => $1::int) ORDER BY depth DESC LIMIT "
	    "$2::int)",
	    2, 0};
	char cutoff[24];
	const char *params[2] = {cutoff, CLEANUP_BATCH};
	PGresult *r;
	int rc;

	(void)ctx;
	/*
	 * PostgreSQL's clock, not this instance's: one running fast would drop
	 * the record of a token the others still accept (within their margin),
	 * and an instance reloading its state would then call it active.
	 */
	snprintf(cutoff, sizeof(cutoff), "%d", DROP_MARGIN_S);
	rc = store_exec(run->conn, &revoked, params, &r);
	if (rc != IDP_OK) {
		idp_diag_add(diag, "deleting expired revocation records: %s", idp_err_name(rc));
		return rc;
	}
	json_object_set_new(counts, "revoked_tokens_deleted",
	                    json_integer(strtoll(PQcmdTuples(r), NULL, 10)));
	PQclear(r);
	rc = store_exec(run->conn, &deleg, params, &r);
	if (rc != IDP_OK) {
		idp_diag_add(diag, "deleting expired delegation tokens: %s", idp_err_name(rc));
		return rc;
	}
	json_object_set_new(counts, "delegation_tokens_deleted",
	                    json_integer(strtoll(PQcmdTuples(r), NULL, 10)));
	PQclear(r);
	return IDP_OK;
}

/* ---- metrics ---- */

static void
collect(struct idp_buf *out, void *ctx)
{
	struct rev_snap *s = snap_get();
	size_t counts[3] = {0, 0, 0};
	int64_t since = atomic_load(&state.stale_since_us);

	(void)ctx;
	if (s != NULL) {
		const struct rev_table *ts[2] = {s->base, s->over};

		for (size_t k = 0; k < 2; k++)
			for (size_t i = 0; i < ts[k]->cap; i++) {
				const struct rev_entry *e = ts[k]->slots[i];

				if (e == NULL || (k == 0 && table_get(s->over, e->kind, e->key,
				                                      e->hash) != NULL))
					continue;
				counts[e->kind == K_TASK ? 0 : e->kind == K_DELEG ? 1 : 2]++;
			}
		snap_unref(s);
	}
	if (idp_buf_printf(
	        out,
	        "# HELP idpd_revocation_entries Entries of the in-memory revocation state.\n"
	        "# TYPE idpd_revocation_entries gauge\n"
	        "idpd_revocation_entries{kind=\"task\"} %zu\n"
	        "idpd_revocation_entries{kind=\"delegation_token\"} %zu\n"
	        "idpd_revocation_entries{kind=\"revoked_jti\"} %zu\n"
	        "# HELP idpd_revocation_current 1 while the state is current (listener up, "
	        "last reload good).\n"
	        "# TYPE idpd_revocation_current gauge\nidpd_revocation_current %d\n"
	        "# HELP idpd_revocation_stale_seconds How long the state has not been current.\n"
	        "# TYPE idpd_revocation_stale_seconds gauge\nidpd_revocation_stale_seconds %.3f\n"
	        "# HELP idpd_revocation_reloads_total Full loads of the state, by result.\n"
	        "# TYPE idpd_revocation_reloads_total counter\n"
	        "idpd_revocation_reloads_total{result=\"ok\"} %llu\n"
	        "idpd_revocation_reloads_total{result=\"failed\"} %llu\n"
	        "# HELP idpd_revocation_patches_total Entries installed by notifications and "
	        "this instance's writes.\n"
	        "# TYPE idpd_revocation_patches_total counter\nidpd_revocation_patches_total %llu\n"
	        "# HELP idpd_revocation_patch_failures_total Notifications whose row could not "
	        "be read.\n"
	        "# TYPE idpd_revocation_patch_failures_total counter\n"
	        "idpd_revocation_patch_failures_total %llu\n"
	        "# HELP idpd_revocation_merges_total Overlays merged into a new base.\n"
	        "# TYPE idpd_revocation_merges_total counter\nidpd_revocation_merges_total %llu\n"
	        "# HELP idpd_revocation_misses_total Checks that read PostgreSQL for a token or "
	        "task the state did not hold, by result.\n"
	        "# TYPE idpd_revocation_misses_total counter\n"
	        "idpd_revocation_misses_total{result=\"read\"} %llu\n"
	        "idpd_revocation_misses_total{result=\"failed\"} %llu\n",
	        counts[0], counts[1], counts[2], atomic_load(&state.loaded) && since == 0 ? 1 : 0,
	        since == 0 ? 0.0 : (double)(rev_mono_us() - since) / 1e6,
	        (unsigned long long)atomic_load(&state.reloads),
	        (unsigned long long)atomic_load(&state.reload_failures),
	        (unsigned long long)atomic_load(&state.patches),
	        (unsigned long long)atomic_load(&state.patch_failures),
	        (unsigned long long)atomic_load(&state.merges),
	        (unsigned long long)(atomic_load(&state.misses) -
	                             atomic_load(&state.miss_failures)),
	        (unsigned long long)atomic_load(&state.miss_failures)) != IDP_OK)
		log_warn("metrics: revocation output truncated");
}

/* ---- lifecycle ---- */

static int
on_reload(struct idpd_app *app, const struct idpd_config *next, void *ctx, struct idp_diag *diag)
{
	(void)app;
	(void)ctx;
	(void)diag;
	atomic_store(&state.max_staleness_ms, next->revocation.max_staleness_ms);
	atomic_store(&state.leeway_ms, next->identity.leeway_ms);
	return IDP_OK;
}

int
revocation_init(struct idpd_app *app, struct idp_diag *diag)
{
	struct store_subscription sub = {.channel = "tokens",
	                                 .on_notify = on_notify,
	                                 .on_resync = on_resync,
	                                 .on_lost = on_lost};

	if (state.initialised) {
		idp_diag_add(diag, "revocation: already initialised");
		return IDP_EINVAL;
	}
	pthread_mutex_init(&state.lock, NULL);
	pthread_mutex_init(&state.patch_lock, NULL);
	pthread_mutex_init(&state.refresher.lock, NULL);
	pthread_cond_init(&state.refresher.cond, NULL);
	if (RAND_bytes((unsigned char *)&state.seed, sizeof(state.seed)) != 1)
		state.seed = (uint64_t)(uintptr_t)&state ^ 0x9e3779b97f4a7c15ULL;
	state.store = app->store;
	revoke_set_store(app->store);
	snprintf(state.identity.issuer, sizeof(state.identity.issuer), "%s",
	         app->cfg->identity.issuer);
	snprintf(state.identity.audience, sizeof(state.identity.audience), "%s",
	         app->cfg->identity.audience);
	atomic_store(&state.max_staleness_ms, app->cfg->revocation.max_staleness_ms);
	atomic_store(&state.leeway_ms, app->cfg->identity.leeway_ms);
	/* Not current until the listener has connected and reloaded. */
	atomic_store(&state.stale_since_us, rev_mono_us());
	state.initialised = true;
	if (app->listener != NULL && store_listener_subscribe(app->listener, &sub) != IDP_OK) {
		idp_diag_add(diag, "revocation: cannot subscribe to the tokens channel");
		return IDP_EINVAL;
	}
	if (app_on_reload(on_reload, NULL) != IDP_OK ||
	    app_on_ready("revocation", unready, NULL) != IDP_OK ||
	    maintenance_register("revocations", cleanup_job, NULL) != IDP_OK) {
		idp_diag_add(diag,
		             "revocation: cannot register the reload hook, the readiness check "
		             "or the cleanup job");
		return IDP_EINVAL;
	}
	if (metrics_register(collect, NULL) != IDP_OK)
		log_warn("metrics: too many collectors; revocation metrics not exported");
	/* A first load now, so the first requests after start need not wait for
	 * the listener; answering from it is bounded by max_staleness like any
	 * state the listener has not confirmed. */
	if (reload() != IDP_OK)
		log_warn("revocation: the first load failed; checks answer 503 until one succeeds");
	if (pthread_create(&state.refresher.thread, NULL, refresher_main, NULL) != 0) {
		idp_diag_add(diag, "revocation: cannot start the refresher thread");
		return IDP_EINTERNAL;
	}
	state.refresher.started = true;
	if (!atomic_load(&state.loaded))
		became_stale(true);
	return introspect_init(app, diag);
}

void
revocation_shutdown(void)
{
	struct rev_snap *s;

	if (!state.initialised)
		return;
	if (state.refresher.started) {
		pthread_mutex_lock(&state.refresher.lock);
		state.refresher.stop = true;
		pthread_cond_signal(&state.refresher.cond);
		pthread_mutex_unlock(&state.refresher.lock);
		pthread_join(state.refresher.thread, NULL);
		state.refresher.started = false;
	}
	introspect_shutdown();
	pthread_mutex_lock(&state.lock);
	s = state.snap;
	state.snap = NULL;
	pthread_mutex_unlock(&state.lock);
	snap_unref(s);
	atomic_store(&state.loaded, false);
	state.initialised = false;
	pthread_cond_destroy(&state.refresher.cond);
	pthread_mutex_destroy(&state.refresher.lock);
	pthread_mutex_destroy(&state.patch_lock);
	pthread_mutex_destroy(&state.lock);
}

int
revocation_routes(struct http_router *r, struct idpd_app *app)
{
	(void)app;
	if (introspect_routes(r) != IDP_OK || revoke_routes(r) != IDP_OK)
		return IDP_EINVAL;
	return IDP_OK;
}
