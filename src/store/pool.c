/*
 * pool.c - a fixed-size libpq connection pool with lazily prepared
 * statements (see store.h).
 *
 * One mutex (store.lock) guards the slot table; connecting and querying
 * happen outside it, on a slot the caller has marked in use.  The pool never
 * holds the lock across network I/O.
 */
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "idpd/buf.h"
#include "idpd/clock.h"
#include "idpd/log.h"
#include "idpd/metrics.h"
#include "idpd/store.h"
#include "store_int.h"

#define MAX_STMTS 512

struct store_conn {
	PGconn *pg;
	bool in_use;
	uint64_t prepared[MAX_STMTS / 64];
	char sqlstate[6];
};

struct store {
	struct store_opts opts;
	char *url;
	pthread_mutex_t lock; /* guards conns[].in_use */
	pthread_cond_t freed;
	struct store_conn *conns;
	int n;
	_Atomic int connects;
	_Atomic int connect_failures;
	_Atomic int64_t last_fail_log_us;
};

struct store *
store_open(const struct store_opts *opts)
{
	struct store *s = idp_xcalloc(1, sizeof(*s));
	pthread_condattr_t ca;

	s->opts = *opts;
	s->url = idp_xstrdup(opts->url);
	s->opts.url = s->url;
	s->n = opts->pool_size > 0 ? opts->pool_size : 1;
	s->conns = idp_xcalloc((size_t)s->n, sizeof(*s->conns));
	pthread_mutex_init(&s->lock, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&s->freed, &ca);
	pthread_condattr_destroy(&ca);
	return s;
}

void
store_close(struct store *s)
{
	if (s == NULL)
		return;
	for (int i = 0; i < s->n; i++) {
		if (s->conns[i].in_use)
			log_error("bug: store_close with connection %d still borrowed", i);
		if (s->conns[i].pg != NULL)
			PQfinish(s->conns[i].pg);
	}
	pthread_cond_destroy(&s->freed);
	pthread_mutex_destroy(&s->lock);
	idp_wipe(s->url, strlen(s->url));
	free(s->url);
	free(s->conns);
	free(s);
}

/* Silence libpq's notices (they would go to stderr unformatted). */
static void
notice_sink(void *arg, const char *message)
{
	(void)arg;
	(void)message;
}

PGconn *
store_connect_url(const char *url, int64_t connect_timeout_ms, int64_t stmt_timeout_ms, char *err,
                  size_t err_len)
{
	char ct[32], opt[96];
	const char *keys[] = {"dbname",
	                      "connect_timeout",
	                      "application_name",
	                      "options",
	                      "keepalives",
	                      "keepalives_idle",
	                      "keepalives_interval",
	                      "keepalives_count",
	                      "tcp_user_timeout",
	                      NULL};
	const char *vals[10];
	PGconn *pg;
	PQconninfoOption *parsed;
	char *why = NULL;
	int64_t secs = (connect_timeout_ms + 999) / 1000;

	/* libpq's message for a URL it cannot parse quotes the offending part,
	 * which may be the password: that message is not passed on. */
	/* A bare database name is no connection string to parse (libpq takes
	 * it as dbname); only a URI or key=value text can carry a password.
	 * One with an '@' is a URL mistyped ("postgresql//user:pw@host"): as a
	 * database name it would come back, password and all, in the server's
	 * "database ... does not exist". */
	if (strstr(url, "://") == NULL && strchr(url, '=') == NULL && strchr(url, '@') != NULL)
		parsed = NULL;
	else
		parsed = strstr(url, "://") != NULL || strchr(url, '=') != NULL
		             ? PQconninfoParse(url, &why)
		             : PQconninfoParse("", &why);
	if (parsed == NULL) {
		if (why != NULL) {
			idp_wipe(why, strlen(why));
			PQfreemem(why);
		}
		snprintf(err, err_len,
		         "the database URL does not parse (not shown: it may hold a password); "
		         "check its form, and percent-encode special characters in the password");
		return NULL;
	}
	PQconninfoFree(parsed);

	snprintf(ct, sizeof(ct), "%lld", (long long)(secs < 2 ? 2 : secs));
	snprintf(opt, sizeof(opt), "-c statement_timeout=%lld", (long long)stmt_timeout_ms);
	vals[0] = url;
	vals[1] = ct;
	vals[2] = "idpd";
	vals[3] = opt;
	vals[4] = "1";
	vals[5] = "10";
	vals[6] = "5";
	vals[7] = "3";
	vals[8] = "15000"; /* ms: data unacknowledged this long means the peer is gone */
	vals[9] = NULL;
	pg = PQconnectdbParams(keys, vals, 1);
	if (pg == NULL) {
		snprintf(err, err_len, "out of memory");
		return NULL;
	}
	if (PQstatus(pg) != CONNECTION_OK) {
		char *m = PQerrorMessage(pg);
		size_t n = strcspn(m, "\n");

		snprintf(err, err_len, "%.*s", (int)n, m);
		PQfinish(pg);
		return NULL;
	}
	PQsetNoticeProcessor(pg, notice_sink, NULL);
	/*
	 * synchronous_commit off (for the database or the role) would let a
	 * COMMIT return before its WAL is flushed, and the audit events (and
	 * the registry writes they accompany) that idpd then acknowledges as
	 * durable could vanish in a PostgreSQL crash: it is raised to on.  Any
	 * other value flushes locally, and a stronger one (remote_apply) is
	 * kept as the operator set it.
	 */
	{
		PGresult *r = PQexec(pg, "SELECT set_config('synchronous_commit', 'on', false) "
		                         "WHERE current_setting('synchronous_commit') = 'off'");
		bool ok = PQresultStatus(r) == PGRES_TUPLES_OK;

		PQclear(r);
		if (!ok) {
			snprintf(err, err_len, "cannot check synchronous_commit");
			PQfinish(pg);
			return NULL;
		}
	}
	return pg;
}

/*
 * Whether an idle connection is still usable.  A pooled connection listens
 * to nothing, so while idle it has nothing to read: a readable socket means
 * the server has ended the session (a restart, pg_terminate_backend:
 * PostgreSQL sends a FATAL message, then closes), or, rarely, sent a
 * notice; either way a fresh connection is the safe choice.  Without this,
 * the first statement on every pooled connection fails once after
 * PostgreSQL restarts, the reloads that follow a reconnect among them.
 */
static bool
idle_alive(PGconn *pg)
{
	struct pollfd p = {.fd = PQsocket(pg), .events = POLLIN};

	if (PQstatus(pg) != CONNECTION_OK || p.fd < 0)
		return false;
	/* Nothing arrived (a poll error is left to the statement to find). */
	return poll(&p, 1, 0) <= 0;
}

int
store_acquire(struct store *s, struct store_conn **out)
{
	struct timespec deadline;
	struct store_conn *c = NULL;
	int rc;

	*out = NULL;
	clock_gettime(CLOCK_MONOTONIC, &deadline);
	deadline.tv_sec += s->opts.acquire_timeout_ms / 1000;
	deadline.tv_nsec += (s->opts.acquire_timeout_ms % 1000) * 1000000;
	if (deadline.tv_nsec >= 1000000000) {
		deadline.tv_sec++;
		deadline.tv_nsec -= 1000000000;
	}
	pthread_mutex_lock(&s->lock);
	for (;;) {
		/* Prefer a slot with an open connection. */
		for (int i = 0; i < s->n && c == NULL; i++)
			if (!s->conns[i].in_use && s->conns[i].pg != NULL)
				c = &s->conns[i];
		for (int i = 0; i < s->n && c == NULL; i++)
			if (!s->conns[i].in_use)
				c = &s->conns[i];
		if (c != NULL)
			break;
		rc = pthread_cond_timedwait(&s->freed, &s->lock, &deadline);
		if (rc != 0) {
			pthread_mutex_unlock(&s->lock);
			return IDP_EUNAVAIL;
		}
	}
	c->in_use = true;
	pthread_mutex_unlock(&s->lock);

	if (c->pg != NULL && !idle_alive(c->pg)) {
		PQfinish(c->pg);
		c->pg = NULL;
	}
	if (c->pg == NULL) {
		char err[256];

		memset(c->prepared, 0, sizeof(c->prepared));
		c->pg = store_connect_url(s->url, s->opts.connect_timeout_ms,
		                          s->opts.statement_timeout_ms, err, sizeof(err));
		if (c->pg == NULL) {
			int64_t now = idp_mono_us(), last = atomic_load(&s->last_fail_log_us);

			atomic_fetch_add(&s->connect_failures, 1);
			/* At most one line a second while the database is away. */
			if (now - last > 1000000 &&
			    atomic_compare_exchange_strong(&s->last_fail_log_us, &last, now))
				log_warn("store: cannot connect to PostgreSQL: %s", err);
			pthread_mutex_lock(&s->lock);
			c->in_use = false;
			pthread_cond_signal(&s->freed);
			pthread_mutex_unlock(&s->lock);
			return IDP_EUNAVAIL;
		}
		atomic_fetch_add(&s->connects, 1);
	}
	c->sqlstate[0] = '\0';
	*out = c;
	return IDP_OK;
}

void
store_release(struct store *s, struct store_conn *c)
{
	if (c == NULL)
		return;
	/* (a discarded connection has pg == NULL and is reopened on demand) */
	if (c->pg != NULL && PQstatus(c->pg) == CONNECTION_OK &&
	    PQtransactionStatus(c->pg) != PQTRANS_IDLE) {
		/* A caller left a transaction open (an error path): undo it so
		 * the next borrower starts clean. */
		PGresult *r = PQexec(c->pg, "ROLLBACK");

		PQclear(r);
	}
	if (c->pg != NULL &&
	    (PQstatus(c->pg) != CONNECTION_OK || PQtransactionStatus(c->pg) != PQTRANS_IDLE)) {
		PQfinish(c->pg);
		c->pg = NULL;
	}
	pthread_mutex_lock(&s->lock);
	c->in_use = false;
	pthread_cond_signal(&s->freed);
	pthread_mutex_unlock(&s->lock);
}

void
store_discard(struct store_conn *c)
{
	if (c->pg != NULL)
		PQfinish(c->pg);
	c->pg = NULL;
}

PGconn *
store_pg(struct store_conn *c)
{
	return c->pg;
}

const char *
store_last_sqlstate(struct store_conn *c)
{
	return c->sqlstate;
}

static int
map_error(struct store_conn *c, PGresult *res, const char *what)
{
	const char *st = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
	const char *msg = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;

	snprintf(c->sqlstate, sizeof(c->sqlstate), "%s", st ? st : "");
	if (PQstatus(c->pg) != CONNECTION_OK || st == NULL || strncmp(st, "08", 2) == 0 ||
	    strncmp(st, "57P", 3) == 0) {
		log_warn("store: %s: connection lost", what);
		return IDP_EUNAVAIL;
	}
	if (strcmp(st, "23505") == 0 || strcmp(st, "23P01") == 0 || strcmp(st, "55P03") == 0)
		return IDP_ECONFLICT;
	if (strncmp(st, "23", 2) == 0 || strncmp(st, "22", 2) == 0)
		return IDP_EINVAL;
	if (strcmp(st, "57014") == 0 || strncmp(st, "40", 2) == 0 || strncmp(st, "53", 2) == 0) {
		log_warn("store: %s: %s (%s)", what, msg ? msg : "?", st);
		return IDP_EUNAVAIL;
	}
	log_error("store: %s: %s (%s)", what, msg ? msg : "?", st);
	return IDP_EINTERNAL;
}

/*
 * Statements are static objects shared by every thread and connection: the
 * first use gives one a process-wide id with a compare-and-swap, so no lock
 * is needed.  A lost race wastes one id, which MAX_STMTS leaves room for.
 */
static _Atomic int next_stmt_id;

static int
stmt_id(struct store_stmt *st)
{
	int id = __atomic_load_n(&st->id, __ATOMIC_ACQUIRE), fresh, expected = 0;

	if (id != 0)
		return id;
	fresh = atomic_fetch_add(&next_stmt_id, 1) + 1;
	if (fresh >= MAX_STMTS)
		return 0;
	if (__atomic_compare_exchange_n(&st->id, &expected, fresh, false, __ATOMIC_ACQ_REL,
	                                __ATOMIC_ACQUIRE))
		return fresh;
	return expected;
}

int
store_exec(struct store_conn *c, struct store_stmt *st, const char *const *params, PGresult **res)
{
	PGresult *r;
	int id;
	ExecStatusType es;

	*res = NULL;
	id = stmt_id(st);
	if (id == 0) {
		log_error("store: more than %d prepared statements", MAX_STMTS - 1);
		return IDP_EINTERNAL;
	}
	if (!(c->prepared[id / 64] & (1ull << (id % 64)))) {
		r = PQprepare(c->pg, st->name, st->sql, st->n_params, NULL);
		if (PQresultStatus(r) != PGRES_COMMAND_OK) {
			int rc = map_error(c, r, st->name);

			PQclear(r);
			return rc;
		}
		PQclear(r);
		c->prepared[id / 64] |= 1ull << (id % 64);
	}
	r = PQexecPrepared(c->pg, st->name, st->n_params, params, NULL, NULL, 0);
	es = PQresultStatus(r);
	if (es != PGRES_COMMAND_OK && es != PGRES_TUPLES_OK) {
		int rc = map_error(c, r, st->name);

		PQclear(r);
		return rc;
	}
	*res = r;
	return IDP_OK;
}

int
store_cmd(struct store_conn *c, const char *sql)
{
	PGresult *r = PQexec(c->pg, sql);
	int rc = IDP_OK;

	if (PQresultStatus(r) != PGRES_COMMAND_OK && PQresultStatus(r) != PGRES_TUPLES_OK)
		rc = map_error(c, r, sql);
	PQclear(r);
	return rc;
}

int
store_query(struct store *s, const char *sql, int n, const char *const *params, PGresult **res)
{
	struct store_conn *c;
	PGresult *r;
	int rc = store_acquire(s, &c);

	*res = NULL;
	if (rc != IDP_OK)
		return rc;
	r = PQexecParams(c->pg, sql, n, NULL, params, NULL, NULL, 0);
	if (PQresultStatus(r) == PGRES_TUPLES_OK || PQresultStatus(r) == PGRES_COMMAND_OK) {
		*res = r;
	} else {
		rc = map_error(c, r, "query");
		PQclear(r);
	}
	store_release(s, c);
	return rc;
}

int
store_ping(struct store *s)
{
	struct store_conn *c;
	int rc = store_acquire(s, &c);

	if (rc != IDP_OK)
		return rc;
	rc = store_cmd(c, "SELECT 1");
	store_release(s, c);
	return rc == IDP_OK ? IDP_OK : IDP_EUNAVAIL;
}

void
store_get_stats(struct store *s, struct store_stats *st)
{
	memset(st, 0, sizeof(*st));
	st->size = s->n;
	pthread_mutex_lock(&s->lock);
	for (int i = 0; i < s->n; i++) {
		if (s->conns[i].in_use)
			st->in_use++;
		else if (s->conns[i].pg != NULL)
			st->idle_open++;
	}
	pthread_mutex_unlock(&s->lock);
	st->connects = atomic_load(&s->connects);
	st->connect_failures = atomic_load(&s->connect_failures);
}
