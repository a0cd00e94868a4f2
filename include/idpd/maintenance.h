/*
 * maintenance.h - the cleanup that a cron job triggers with
 * POST /v1/maintenance/cleanup, and the registry of jobs it runs.
 *
 * A module with rows to expire (join tokens, approvals, revocation entries)
 * registers a job at start-up with maintenance_register().  A cleanup run
 * takes a PostgreSQL session advisory lock, so one run at a time exists
 * across every instance sharing the database; a second call while one runs
 * is answered 409 at once rather than queued, because the next cron tick
 * will do the work and a queue of waiting runs would hold pool connections.
 * Each job runs in turn on the locked connection and reports counts per
 * kind; every job must be idempotent (a second run right after the first
 * finds nothing left to do, or reports the same thing again).
 */
#ifndef IDPD_MAINTENANCE_H
#define IDPD_MAINTENANCE_H

#include <jansson.h>

#include "idpd/app.h"
#include "idpd/common.h"
#include "idpd/store.h"

#define MAINTENANCE_MAX_JOBS 16
/* The key of the session advisory lock a cleanup run holds. */
#define MAINTENANCE_LOCK_KEY 0x69647064636c6e00LL /* "idpdcln\0" */

/* What a job gets while it runs.  Borrowed for the duration of the call. */
struct maintenance_run {
	struct store *store;
	/* Holds the advisory lock.  A job may run its own transactions on it,
	 * and must leave it outside a transaction when it returns. */
	struct store_conn *conn;
	/* This instance's clock when the run started.  A cutoff compared with
	 * PostgreSQL's timestamps is computed in SQL from now() instead: the
	 * two clocks may differ. */
	int64_t now_ms;
	const char *actor;      /* the API key that asked for the run */
	const char *request_id; /* for the audit events the job emits */
	const char *source_address;
};

/*
 * A job.  It adds its counts to counts (a JSON object it owns the keys of,
 * e.g. {"deleted": 120}) and returns IDP_OK, or an error with one line in
 * diag; the run goes on with the next job either way.  Runs on an HTTP
 * worker thread, one job at a time.
 */
typedef int (*maintenance_fn)(const struct maintenance_run *run, void *ctx, json_t *counts,
                              struct idp_diag *diag);

/*
 * Register a job under name (unique; [a-z_]+, the key of its counts in the
 * response).  Main thread, before the server starts.  IDP_EINVAL for a bad
 * or duplicate name, IDP_ETOOBIG past MAINTENANCE_MAX_JOBS.
 */
int maintenance_register(const char *name, maintenance_fn fn, void *ctx) IDP_WUR;

/* Forget every job (for tests and shutdown).  Main thread. */
void maintenance_reset(void);

/* Add POST /v1/maintenance/cleanup (role maintenance) to r. */
int maintenance_routes(struct http_router *r, struct idpd_app *app) IDP_WUR;

#endif /* IDPD_MAINTENANCE_H */
