/*
 * store.h - PostgreSQL: a connection pool with prepared statements,
 * the migrations runner, and the LISTEN/NOTIFY listener.
 *
 * The pool owns its connections; a caller borrows one with store_acquire()
 * and gives it back with store_release() on the same thread.  A connection
 * that failed at the connection level is closed on release and reopened on a
 * later acquire, so the pool heals itself when PostgreSQL comes back.  When
 * no connection can be had within the acquire timeout, callers get
 * IDP_EUNAVAIL and answer 503: idpd never guesses what the database would
 * have said.
 *
 * Every query is parameterized.  Statements are declared once as static
 * struct store_stmt and prepared lazily on each connection.
 */
#ifndef IDPD_STORE_H
#define IDPD_STORE_H

#include <stdbool.h>
#include <stdint.h>

#include <libpq-fe.h>

#include "idpd/common.h"

struct store;
struct store_conn;

struct store_opts {
	const char *url;
	int pool_size;
	int64_t connect_timeout_ms;
	int64_t acquire_timeout_ms;
	int64_t statement_timeout_ms;
};

/*
 * A statement declared once, e.g.
 *   static struct store_stmt get_agent = {"agent_get", "SELECT ... WHERE id = $1", 1};
 * It gets a process-wide id on first use; the struct must outlive the pool.
 */
struct store_stmt {
	const char *name;
	const char *sql;
	int n_params;
	int id; /* 0 until first use; then set once, atomically */
};

/*
 * Create the pool.  Connections are opened lazily, so this succeeds while
 * PostgreSQL is down; store_ping() tells whether it is up.  Copies opts.
 */
struct store *store_open(const struct store_opts *opts);
/* Close every connection.  No connection may be borrowed. */
void store_close(struct store *s);

/*
 * Borrow a connection, waiting up to the acquire timeout for a free one and
 * connecting if needed.  Returns IDP_OK, or IDP_EUNAVAIL with *out NULL when
 * no connection could be had (pool exhausted, or PostgreSQL unreachable).
 * Any thread.
 */
int store_acquire(struct store *s, struct store_conn **out) IDP_WUR;
/* Give it back.  A connection whose session is broken is closed here. */
void store_release(struct store *s, struct store_conn *c);

PGconn *store_pg(struct store_conn *c);
/*
 * End this connection's session now (it still must be released): for a
 * session left holding state that must not reach the next borrower, such
 * as an advisory lock that would not unlock.
 */
void store_discard(struct store_conn *c);

/*
 * Execute a prepared statement with text parameters (NULL for SQL NULL).
 * *res receives the result on success (PQclear it) and NULL on failure.
 * Errors: IDP_ECONFLICT for a unique or exclusion violation, IDP_EUNAVAIL
 * when the connection is lost or a statement timeout hits, IDP_EINVAL for
 * a check / foreign-key / invalid text representation violation (bad input
 * that passed validation), IDP_EINTERNAL otherwise.  The SQL error text is
 * logged, never returned to a client.
 */
int store_exec(struct store_conn *c, struct store_stmt *st, const char *const *params,
               PGresult **res) IDP_WUR;

/*
 * One statement built at run time (a list query whose filters vary), on a
 * connection of s taken and given back here; parameters as text.  Same
 * results and errors as store_exec: IDP_EINVAL is a value PostgreSQL
 * refuses (class 22 or 23), i.e. the client's error.  Use store_exec for
 * anything fixed: this one is planned every time.
 */
int store_query(struct store *s, const char *sql, int n, const char *const *params,
                PGresult **res) IDP_WUR;

/* A plain command without parameters (BEGIN, COMMIT, ROLLBACK). */
int store_cmd(struct store_conn *c, const char *sql) IDP_WUR;

/* SQLSTATE of the last failure on this connection, "" if none. */
const char *store_last_sqlstate(struct store_conn *c);

/* Round trip to PostgreSQL through the pool; IDP_OK or IDP_EUNAVAIL. */
int store_ping(struct store *s) IDP_WUR;

struct store_stats {
	int size, in_use, idle_open, connects, connect_failures;
};
void store_get_stats(struct store *s, struct store_stats *st);

/* ---- migrations ---- */

/*
 * Apply every migrations/NNNN_name.sql not yet recorded in
 * schema_migrations, in order, each in its own transaction, holding a
 * session advisory lock so concurrent runners serialize.  An applied
 * migration whose file changed since is an error.  Connects on its own.
 * diag explains failures; *applied counts what was applied (may be NULL).
 * IDP_EWOULDBLOCK when a pending SIGTERM or SIGINT ended the wait for the
 * lock (the caller blocks them to sigwait: idpd serve).
 */
int store_migrate(const char *url, const char *dir, int *applied, struct idp_diag *diag) IDP_WUR;

/* Highest migration version present in dir (0 if none); -1 + diag on error. */
int store_migrations_latest(const char *dir, struct idp_diag *diag);

/* Highest applied version (0 for an empty database), or a negative idp_err. */
int store_schema_version(struct store_conn *c) IDP_WUR;

/* ---- LISTEN/NOTIFY ---- */

struct store_listener;

/*
 * Callbacks run on the listener thread and must not block for long.
 * on_notify gets each notification of the channel; on_resync is called
 * after every (re)connect, because notifications sent while the listener
 * was away are lost: the subscriber must reload what it caches.  on_lost
 * (may be NULL) is called as soon as the connection is found gone: from
 * then until the next on_resync, a cache cannot know it is current and
 * must not answer as if it were.
 */
struct store_subscription {
	const char *channel; /* an SQL identifier: [a-z_][a-z0-9_]* */
	void (*on_notify)(const char *channel, const char *payload, void *ctx);
	void (*on_resync)(void *ctx);
	void (*on_lost)(void *ctx);
	void *ctx;
};

struct store_listener *store_listener_new(const char *url);
/* Before store_listener_start; IDP_EINVAL for a bad channel name. */
int store_listener_subscribe(struct store_listener *l,
                             const struct store_subscription *sub) IDP_WUR;
/* Start the thread; it connects (and reconnects) on its own. */
int store_listener_start(struct store_listener *l) IDP_WUR;
/* Stop the thread and free everything. */
void store_listener_free(struct store_listener *l);
bool store_listener_connected(const struct store_listener *l);
uint64_t store_listener_reconnects(const struct store_listener *l);

/* Register pool and listener gauges with the metrics module. */
void store_register_metrics(struct store *s, struct store_listener *l);

#endif /* IDPD_STORE_H */
