/*
 * maintenance.c - POST /v1/maintenance/cleanup and its job registry (see
 * maintenance.h).
 *
 * The run holds a session advisory lock on one pooled connection for its
 * whole duration: pg_try_advisory_lock, never the blocking form, so a second
 * caller anywhere in the cluster of instances gets 409 at once.  A session
 * lock survives the transactions the jobs run, and PostgreSQL drops it by
 * itself if the connection dies, so a crashed run never blocks the next.
 * The connection goes back to the pool only after pg_advisory_unlock.
 */
#include <stdio.h>
#include <string.h>

#include "idpd/audit_writer.h"
#include "idpd/auth.h"
#include "idpd/clock.h"
#include "idpd/log.h"
#include "idpd/maintenance.h"

static struct {
	char name[32];
	maintenance_fn fn;
	void *ctx;
} jobs[MAINTENANCE_MAX_JOBS];
static size_t n_jobs;

static bool
job_name_ok(const char *s)
{
	size_t n = strlen(s);

	if (n == 0 || n >= sizeof(jobs[0].name))
		return false;
	for (size_t i = 0; i < n; i++)
		if (!((s[i] >= 'a' && s[i] <= 'z') || s[i] == '_'))
			return false;
	return true;
}

int
maintenance_register(const char *name, maintenance_fn fn, void *ctx)
{
	if (name == NULL || fn == NULL || !job_name_ok(name))
		return IDP_EINVAL;
	for (size_t i = 0; i < n_jobs; i++)
		if (strcmp(jobs[i].name, name) == 0)
			return IDP_EINVAL;
	if (n_jobs == MAINTENANCE_MAX_JOBS)
		return IDP_ETOOBIG;
	snprintf(jobs[n_jobs].name, sizeof(jobs[n_jobs].name), "%s", name);
	jobs[n_jobs].fn = fn;
	jobs[n_jobs].ctx = ctx;
	n_jobs++;
	return IDP_OK;
}

void
maintenance_reset(void)
{
	n_jobs = 0;
}

/* End any transaction left open; harmless (a warning) when there is none. */
static void
rollback(struct store_conn *c)
{
	if (store_cmd(c, "ROLLBACK") != IDP_OK)
		log_debug("maintenance: ROLLBACK failed; the connection is gone");
}

/* 1 when the lock was taken, 0 when another run holds it, <0 on error. */
static int
try_lock(struct store_conn *c)
{
	static struct store_stmt lock = {"maintenance_try_lock",
	                                 "SELECT pg_try_advisory_lock($1::bigint)", 1, 0};
	char key[32];
	const char *params[1] = {key};
	PGresult *r;
	int rc;

	snprintf(key, sizeof(key), "%lld", (long long)MAINTENANCE_LOCK_KEY);
	rc = store_exec(c, &lock, params, &r);
	if (rc != IDP_OK)
		return rc;
	rc = strcmp(PQgetvalue(r, 0, 0), "t") == 0 ? 1 : 0;
	PQclear(r);
	return rc;
}

static void
unlock(struct store_conn *c)
{
	static struct store_stmt unlock_st = {"maintenance_unlock",
	                                      "SELECT pg_advisory_unlock($1::bigint)", 1, 0};
	char key[32];
	const char *params[1] = {key};
	PGresult *r;

	snprintf(key, sizeof(key), "%lld", (long long)MAINTENANCE_LOCK_KEY);
	/* Leave any transaction a failed job left open, then unlock.  If the
	 * connection is gone, so is the lock. */
	rollback(c);
	if (store_exec(c, &unlock_st, params, &r) == IDP_OK) {
		PQclear(r);
	} else {
		/* A session still holding the lock must not go back to the pool,
		 * or every later cleanup would get 409: end the session, and the
		 * lock goes with it. */
		log_warn("maintenance: cannot release the cleanup lock; closing its connection");
		store_discard(c);
	}
}

/* The maintenance.cleanup event: who ran it and what each job did. */
static int
emit_summary(const struct maintenance_run *run, const json_t *result, bool ok)
{
	struct audit_event *ev = audit_event_new(AUDIT_MAINTENANCE_CLEANUP, AUDIT_TIME_UNSET);
	json_t *detail = json_deep_copy(result), *job;
	const char *name;
	int rc;

	if (ev == NULL) {
		json_decref(detail);
		return IDP_EINTERNAL;
	}
	/* Counts only: the lists of agent ids in the response can pass the
	 * audit detail's size bound, and each suspension has its own event. */
	json_object_foreach(json_object_get(detail, "jobs"), name, job)
	{
		const char *k;
		json_t *v;
		void *tmp;

		json_object_foreach_safe(job, tmp, k, v)
		{
			if (json_is_array(v))
				json_object_del(job, k);
		}
	}
	audit_event_set_outcome(ev, ok ? AUDIT_OUTCOME_SUCCESS : AUDIT_OUTCOME_FAILURE);
	if (audit_event_set_actor(ev, AUDIT_ACTOR_OPERATOR, run->actor) != IDP_OK ||
	    audit_event_set(ev, AUDIT_F_REQUEST_ID, run->request_id) != IDP_OK ||
	    (run->source_address[0] != '\0' &&
	     audit_event_set(ev, AUDIT_F_SOURCE_ADDRESS, run->source_address) != IDP_OK) ||
	    audit_event_set_detail(ev, detail) != IDP_OK) {
		json_decref(detail);
		audit_event_free(ev);
		return IDP_EINTERNAL;
	}
	json_decref(detail);
	rc = audit_emit(ev);
	return rc;
}

static void
cleanup(struct http_req *req, void *ctx)
{
	struct idpd_app *app = ctx;
	struct auth_principal who;
	struct maintenance_run run;
	struct store_conn *c;
	json_t *result, *jobs_out;
	int64_t t0 = idp_mono_us();
	bool all_ok = true;
	int locked;

	/* No options: a "dry_run" in a body or query would be ignored, and every
	 * job run for real. */
	if (!auth_require(req, IDPD_ROLE_MAINTENANCE, &who) || !http_req_query_only(req, NULL) ||
	    !http_req_no_body(req))
		return;
	if (store_acquire(app->store, &c) != IDP_OK) {
		http_reply_error(req, IDP_EUNAVAIL, "the database is unavailable");
		return;
	}
	locked = try_lock(c);
	if (locked <= 0) {
		store_release(app->store, c);
		if (locked == 0)
			http_reply_problem(req, 409, "cleanup_running", NULL,
			                   "another cleanup run holds the lock; this call did "
			                   "nothing (the next scheduled run will do the work)");
		else
			http_reply_error(req, IDP_EUNAVAIL, "the database is unavailable");
		return;
	}
	run.store = app->store;
	run.conn = c;
	run.now_ms = idp_now_ms(idp_clock_system());
	run.actor = who.name;
	run.request_id = http_req_id(req);
	run.source_address = http_req_peer(req);

	jobs_out = json_object();
	for (size_t i = 0; i < n_jobs; i++) {
		json_t *counts = json_object();
		struct idp_diag diag;
		int rc;

		idp_diag_init(&diag);
		rc = jobs[i].fn(&run, jobs[i].ctx, counts, &diag);
		if (rc != IDP_OK) {
			all_ok = false;
			json_object_set_new(
			    counts, "error",
			    json_string(diag.len ? idp_diag_str(&diag) : idp_err_name(rc)));
			log_warn("maintenance: job %s failed: %s", jobs[i].name,
			         diag.len ? idp_diag_str(&diag) : idp_err_name(rc));
		}
		json_object_set_new(counts, "status", json_string(rc == IDP_OK ? "ok" : "error"));
		json_object_set_new(jobs_out, jobs[i].name, counts);
		/* A job must not leave a transaction open for the next one. */
		rollback(c);
	}
	unlock(c);
	store_release(app->store, c);

	result = json_pack("{s:o,s:I}", "jobs", jobs_out, "duration_ms",
	                   (json_int_t)((idp_mono_us() - t0) / 1000));
	if (emit_summary(&run, result, all_ok) != IDP_OK) {
		json_decref(result);
		http_reply_error(req, IDP_EUNAVAIL,
		                 "the cleanup ran, but its audit event could not be written");
		return;
	}
	if (!all_ok) {
		http_reply_problem(req, 500, "cleanup_failed", result,
		                   "one or more cleanup jobs failed; see jobs");
		return;
	}
	http_reply_json(req, 200, result);
}

int
maintenance_routes(struct http_router *r, struct idpd_app *app)
{
	return http_router_add(r, HTTP_POST, "/v1/maintenance/cleanup", cleanup, app) == IDP_OK
	           ? IDP_OK
	           : IDP_EINVAL;
}
