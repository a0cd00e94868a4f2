/*
 * jobs.c - the cleanup jobs the registry brings: stale agents, agents of
 * departed owners, and audit retention.  Each is idempotent: running it
 * twice in a row changes nothing the second time (report mode reports the
 * same agents again, since they still need a human's attention).
 *
 * Every cutoff is computed in SQL from PostgreSQL's now(), never from this
 * instance's clock: the timestamps it is compared with are PostgreSQL's,
 * and an instance whose clock runs ahead would otherwise suspend agents
 * and delete audit events early.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "idpd/audit_ship.h"
#include "idpd/clock.h"
#include "idpd/log.h"
#include "idpd/maintenance.h"
#include "registry_int.h"

/* Agent ids a report lists at most; counts are always complete. */
#define REPORT_IDS 100
/* Batches audit retention deletes per run at most; the next run goes on. */
#define RETENTION_BATCHES 1000

/*
 * The running sinks' names as a text[] literal (free it): retention keeps
 * what they have not shipped.
 */
static char *
sink_names(void)
{
	json_t *names = audit_ship_names();
	char *pg = pg_text_array_json(names);

	json_decref(names);
	return pg;
}

static void
add_id(json_t *counts, const char *key, const char *id)
{
	json_t *a = json_object_get(counts, key);

	if (a == NULL) {
		a = json_array();
		json_object_set_new(counts, key, a);
	}
	if (json_array_size(a) < REPORT_IDS)
		json_array_append_new(a, json_string(id));
}

static void
actor_of(const struct maintenance_run *run, struct registry_actor *a)
{
	a->name = run->actor;
	a->request_id = run->request_id;
	a->source_address = run->source_address;
}

/*
 * Suspend each agent of ids (a result's column 0) that still meets the
 * condition that found it: still active and, for REGISTRY_GUARD_IDLE, idle
 * for idle_ms and not touched on this instance since the job's flush; for
 * REGISTRY_GUARD_OWNER, still owned by the owner in column 1.  With
 * reason; counts "suspended" and lists them.  Stops at the first database
 * failure.
 */
static int
suspend_each(const struct maintenance_run *run, PGresult *ids, enum registry_guard_kind kind,
             const char *idle_ms, const char *reason, json_t *counts, struct idp_diag *diag)
{
	struct registry_actor actor;
	json_int_t done = 0;

	actor_of(run, &actor);
	for (int i = 0; i < PQntuples(ids); i++) {
		struct registry_agent *a = NULL;
		enum registry_status from;
		struct registry_guard g = {
		    kind, kind == REGISTRY_GUARD_OWNER ? PQgetvalue(ids, i, 1) : idle_ms};
		int rc =
		    registry_db_transition(run->conn, PQgetvalue(ids, i, 0), REGISTRY_SUSPENDED,
		                           NULL, reason, &actor, &g, NULL, &from, &a);

		if (rc == IDP_OK) {
			add_id(counts, "suspended_ids", a->id);
			registry_publish(a);
			done++;
		} else if (rc != IDP_ECONFLICT && rc != IDP_ENOTFOUND) {
			/* Changed meanwhile is fine; anything else ends the job. */
			json_object_set_new(counts, "suspended", json_integer(done));
			idp_diag_add(diag, "suspending %s: %s", PQgetvalue(ids, i, 0),
			             idp_err_name(rc));
			return rc;
		}
	}
	json_object_set_new(counts, "suspended", json_integer(done));
	return IDP_OK;
}

/* ---- stale agents ---- */

/*
 * An agent is stale when nothing shows it in use for cleanup.stale_after:
 * no token (last_active), no attestation (credential_last_rotated), no
 * registration or resume.  last_active is batched in memory: this
 * instance's touches are written before the job reads, except those of
 * agents whose rows another transaction held (the flush skips a locked row
 * rather than wait, touch.c): every agent still noted in memory after the
 * flush is in use, and left out; so is one touched after the query, which
 * each suspension asks the map about again under the row lock
 * (registry_db_transition).  The idle period is widened by
 * registry.last_active_flush for the touches other instances have not
 * written yet.  An agent that wakes on another instance within that last
 * period after being idle for the whole of stale_after is still covered
 * whenever stale_after passes 24h: a token needs an identity credential,
 * which lives 24h at most, and attesting writes credential_last_rotated at
 * once.
 */
IDP_STATIC int
stale_agents(const struct maintenance_run *run, void *ctx, json_t *counts, struct idp_diag *diag)
{
	static struct store_stmt find = {
	    "cleanup_stale_find",
	    "SELECT id, count(*) OVER () FROM agents WHERE status = 'active' "
	    "AND id <> ALL($3::text[]) AND " AGENT_LAST_SEEN_SQL
	    " < now() - $1::bigint * interval '1 millisecond' ORDER BY id LIMIT $2::int",
	    3, 0};
	struct registry_settings s;
	char idle[24], limit[16], after[32], reason[160];
	char *pending;
	const char *params[3] = {idle, limit, NULL};
	PGresult *r;
	int rc;

	(void)ctx;
	registry_settings_get(&s);
	json_object_set_new(counts, "action", json_string(s.stale_suspend ? "suspend" : "report"));
	if (s.stale_after_ms == 0) {
		json_object_set_new(counts, "skipped", json_true());
		return IDP_OK;
	}
	rc = registry_touch_flush();
	if (rc != IDP_OK) {
		/* Without them an agent in use could look idle: fail closed. */
		idp_diag_add(diag, "writing this instance's last_active times first: %s",
		             idp_err_name(rc));
		return rc;
	}
	/* Taken after the flush: what it skipped, and what was touched since. */
	pending = touch_pending_ids();
	if (pending == NULL) {
		idp_diag_add(diag, "listing the agents with unwritten last_active times: %s",
		             idp_err_name(IDP_EINTERNAL));
		return IDP_EINTERNAL;
	}
	snprintf(idle, sizeof(idle), "%lld",
	         (long long)(s.stale_after_ms + s.last_active_flush_ms));
	snprintf(limit, sizeof(limit), "%d", s.stale_suspend ? s.batch_size : REPORT_IDS);
	params[2] = pending;
	rc = store_exec(run->conn, &find, params, &r);
	free(pending);
	if (rc != IDP_OK) {
		idp_diag_add(diag, "finding stale agents: %s", idp_err_name(rc));
		return rc;
	}
	json_object_set_new(
	    counts, "stale",
	    json_integer(PQntuples(r) > 0 ? strtoll(PQgetvalue(r, 0, 1), NULL, 10) : 0));
	if (!s.stale_suspend) {
		for (int i = 0; i < PQntuples(r); i++)
			add_id(counts, "stale_ids", PQgetvalue(r, i, 0));
		PQclear(r);
		return IDP_OK;
	}
	registry_duration_format(s.stale_after_ms, after);
	snprintf(reason, sizeof(reason), "stale: no activity for %s (cleanup.stale_after)", after);
	rc = suspend_each(run, r, REGISTRY_GUARD_IDLE, idle, reason, counts, diag);
	PQclear(r);
	return rc;
}

/* ---- departed owners ---- */

/*
 * Report the agents not yet decommissioned whose owner "idp:subject" names
 * no configured [[idp]] (one removed since they were registered): no human
 * can act as their owner.  Counted whole ("owner_idp_unknown"), listed up
 * to REPORT_IDS; never suspended, since removing a provider by mistake
 * must not stop its owners' agents.
 */
static int
owners_of_unknown_idps(const struct maintenance_run *run, json_t *counts, struct idp_diag *diag)
{
	static struct store_stmt find = {
	    "cleanup_owner_idp_unknown",
	    "SELECT id, count(*) OVER () FROM agents WHERE status <> 'decommissioned' "
	    "AND strpos(owner, ':') > 0 AND split_part(owner, ':', 1) <> ALL($1::text[]) "
	    "ORDER BY id LIMIT $2::int",
	    2, 0};
	char *names = registry_idp_names_pg(), limit[16];
	const char *params[2] = {names, limit};
	PGresult *r;
	int rc;

	snprintf(limit, sizeof(limit), "%d", REPORT_IDS);
	rc = store_exec(run->conn, &find, params, &r);
	free(names);
	if (rc != IDP_OK) {
		idp_diag_add(diag, "finding agents whose owner names no configured [[idp]]: %s",
		             idp_err_name(rc));
		return rc;
	}
	json_object_set_new(
	    counts, "owner_idp_unknown",
	    json_integer(PQntuples(r) > 0 ? strtoll(PQgetvalue(r, 0, 1), NULL, 10) : 0));
	for (int i = 0; i < PQntuples(r); i++)
		add_id(counts, "owner_idp_unknown_ids", PQgetvalue(r, i, 0));
	PQclear(r);
	return IDP_OK;
}

static int
departed_owners(const struct maintenance_run *run, void *ctx, json_t *counts, struct idp_diag *diag)
{
	static struct store_stmt find = {
	    "cleanup_departed_find",
	    "SELECT id, owner, count(*) OVER () FROM agents WHERE owner = ANY($1::text[]) "
	    "AND status <> 'decommissioned' ORDER BY id LIMIT $2::int",
	    2, 0};
	static struct store_stmt active = {
	    "cleanup_departed_active",
	    "SELECT id, owner FROM agents WHERE owner = ANY($1::text[]) AND status = 'active' "
	    "ORDER BY id LIMIT $2::int",
	    2, 0};
	struct registry_settings s;
	struct owner_set *set = NULL;
	char *arr = NULL, limit[16];
	const char *params[2];
	PGresult *r = NULL;
	int rc;

	(void)ctx;
	registry_settings_get(&s);
	json_object_set_new(counts, "action",
	                    json_string(s.departed_suspend ? "suspend" : "report"));
	/* With or without a departed-owners file. */
	rc = owners_of_unknown_idps(run, counts, diag);
	if (rc != IDP_OK)
		return rc;
	if (s.departed_owners[0] == '\0') {
		json_object_set_new(counts, "skipped", json_true());
		return IDP_OK;
	}
	rc = departed_owners_load(s.departed_owners, &set, diag);
	if (rc != IDP_OK)
		return rc;
	json_object_set_new(counts, "departed_owners",
	                    json_integer((json_int_t)owner_set_count(set)));
	arr = owner_set_pg_array(set);
	owner_set_free(set);
	params[0] = arr;
	if (s.departed_suspend) {
		snprintf(limit, sizeof(limit), "%d", s.batch_size);
		params[1] = limit;
		rc = store_exec(run->conn, &active, params, &r);
		if (rc != IDP_OK) {
			idp_diag_add(diag, "finding agents of departed owners: %s",
			             idp_err_name(rc));
			goto done;
		}
		rc = suspend_each(run, r, REGISTRY_GUARD_OWNER, NULL,
		                  "owner departed: reassign the agent to an accountable "
		                  "human (registry.departed_owners)",
		                  counts, diag);
		PQclear(r);
		r = NULL;
		if (rc != IDP_OK)
			goto done;
	}
	/* Every agent still owned by someone who left, suspended or not: each
	 * needs a new accountable human.  Counted whole, listed up to REPORT_IDS. */
	snprintf(limit, sizeof(limit), "%d", REPORT_IDS);
	params[1] = limit;
	rc = store_exec(run->conn, &find, params, &r);
	if (rc != IDP_OK) {
		idp_diag_add(diag, "finding agents of departed owners: %s", idp_err_name(rc));
		goto done;
	}
	json_object_set_new(
	    counts, "unowned",
	    json_integer(PQntuples(r) > 0 ? strtoll(PQgetvalue(r, 0, 2), NULL, 10) : 0));
	for (int i = 0; i < PQntuples(r) && i < REPORT_IDS; i++)
		add_id(counts, "unowned_ids", PQgetvalue(r, i, 0));
done:
	PQclear(r);
	free(arr);
	return rc;
}

/* ---- audit retention ---- */

/*
 * Deletes audit events older than audit.retention, as a prefix of each
 * writer's hash chain (GET /v1/audit/verify starts at the anchor it
 * records in audit_chains), and never past what a configured sink has
 * shipped: a sink that has been down keeps its backlog.  The prefix ends at
 * the last event older than the cutoff; events a few seconds younger that a
 * writer committed before it go with it, which retention can afford and
 * the chain requires.
 */
static int
audit_retention(const struct maintenance_run *run, void *ctx, json_t *counts, struct idp_diag *diag)
{
	/*
	 * The sinks whose backlog is kept: this process's, and every sink of
	 * any instance that has shipped since the cut-off (its cursor moved;
	 * another instance's sinks are not configured here).  A sink silent
	 * for a whole retention period no longer holds retention back.
	 */
	static struct store_stmt bounds = {
	    "cleanup_audit_bounds",
	    "SELECT o.writer_id, LEAST(o.upto, coalesce((SELECT min(coalesce(k.last_seq, 0)) "
	    "FROM (SELECT unnest($2::text[]) UNION SELECT sink FROM audit_sink_cursors "
	    "WHERE updated_at >= now() - $1::bigint * interval '1 millisecond') AS s(name) "
	    "LEFT JOIN audit_sink_cursors k ON k.sink = s.name AND k.writer_id = o.writer_id), "
	    "o.upto)) "
	    "FROM (SELECT writer_id, max(seq) AS upto FROM audit_events "
	    "WHERE ts < now() - $1::bigint * interval '1 millisecond' GROUP BY writer_id) o",
	    2, 0};
	/*
	 * The delete and the chain's new anchor (the seq and hash of the last
	 * row removed) in one statement, so one commits with the other: verify
	 * then tells a prefix retention removed from one removed behind its
	 * back.  A chain an instance older than 0011 wrote may have no row yet.
	 */
	static struct store_stmt del = {
	    "cleanup_audit_delete",
	    "WITH d AS (DELETE FROM audit_events WHERE id IN (SELECT id FROM audit_events "
	    "WHERE writer_id = $1 AND seq <= $2::bigint ORDER BY seq LIMIT $3::int) "
	    "RETURNING seq, hash), "
	    "m AS (SELECT seq, hash FROM d ORDER BY seq DESC LIMIT 1), "
	    "a AS (INSERT INTO audit_chains AS c (writer_id, last_seq, pruned_seq, pruned_hash) "
	    "SELECT $1, m.seq, m.seq, m.hash FROM m ON CONFLICT (writer_id) DO UPDATE "
	    "SET pruned_seq = excluded.pruned_seq, pruned_hash = excluded.pruned_hash, "
	    "last_seq = greatest(c.last_seq, excluded.last_seq) "
	    "WHERE c.pruned_seq < excluded.pruned_seq) "
	    "SELECT count(*) FROM d",
	    3, 0};
	struct registry_settings s;
	char keep[24], limit[16], *sinks;
	const char *params[3];
	json_int_t deleted = 0;
	int batches = 0, rc;
	PGresult *b;

	(void)ctx;
	registry_settings_get(&s);
	if (s.audit_retention_ms == 0) {
		json_object_set_new(counts, "skipped", json_true());
		json_object_set_new(counts, "deleted", json_integer(0));
		return IDP_OK;
	}
	snprintf(keep, sizeof(keep), "%lld", (long long)s.audit_retention_ms);
	params[0] = keep;
	sinks = sink_names();
	params[1] = sinks;
	rc = store_exec(run->conn, &bounds, params, &b);
	free(sinks);
	if (rc != IDP_OK) {
		idp_diag_add(diag, "finding expired audit events: %s", idp_err_name(rc));
		return rc;
	}
	snprintf(limit, sizeof(limit), "%d", s.batch_size);
	for (int i = 0; i < PQntuples(b) && rc == IDP_OK; i++) {
		for (;;) {
			PGresult *r;
			json_int_t n;

			if (batches == RETENTION_BATCHES) {
				json_object_set_new(counts, "more", json_true());
				break;
			}
			params[0] = PQgetvalue(b, i, 0);
			params[1] = PQgetvalue(b, i, 1);
			params[2] = limit;
			rc = store_exec(run->conn, &del, params, &r);
			if (rc != IDP_OK) {
				idp_diag_add(diag, "deleting expired audit events: %s",
				             idp_err_name(rc));
				break;
			}
			batches++;
			n = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
			PQclear(r);
			deleted += n;
			if (n < s.batch_size)
				break;
		}
	}
	PQclear(b);
	json_object_set_new(counts, "deleted", json_integer(deleted));
	return rc;
}

/*
 * audit_chains tells the sinks how far each chain goes.  Each writer
 * advances its own row in the transaction of its batch; an idpd older than
 * migration 0011 (a rolling upgrade) writes rows without doing so, and its
 * chain would never be shipped.  This job brings every chain's row up to
 * the chain's highest seq: one index probe per chain (a loose scan of the
 * (writer_id, seq) index), never lowering a row.
 */
static int
audit_chains_resync(const struct maintenance_run *run, void *ctx, json_t *counts,
                    struct idp_diag *diag)
{
	static struct store_stmt resync = {
	    "cleanup_audit_chains",
	    "WITH RECURSIVE w AS ("
	    " (SELECT writer_id FROM audit_events ORDER BY writer_id LIMIT 1)"
	    " UNION ALL"
	    " SELECT (SELECT e.writer_id FROM audit_events e WHERE e.writer_id > w.writer_id"
	    "  ORDER BY e.writer_id LIMIT 1) FROM w WHERE w.writer_id IS NOT NULL)"
	    " INSERT INTO audit_chains (writer_id, last_seq)"
	    " SELECT w.writer_id, (SELECT max(e.seq) FROM audit_events e"
	    "  WHERE e.writer_id = w.writer_id) FROM w WHERE w.writer_id IS NOT NULL"
	    " ON CONFLICT (writer_id) DO UPDATE SET last_seq = excluded.last_seq,"
	    "  updated_at = now() WHERE audit_chains.last_seq < excluded.last_seq",
	    0, 0};
	PGresult *r;
	int rc;

	(void)ctx;
	rc = store_exec(run->conn, &resync, NULL, &r);
	if (rc != IDP_OK) {
		idp_diag_add(diag, "bringing audit_chains up to date: %s", idp_err_name(rc));
		return rc;
	}
	json_object_set_new(counts, "advanced", json_integer(strtoll(PQcmdTuples(r), NULL, 10)));
	PQclear(r);
	return IDP_OK;
}

int
registry_register_jobs(void)
{
	int rc = 0;

	rc |= maintenance_register("stale_agents", stale_agents, NULL);
	rc |= maintenance_register("departed_owners", departed_owners, NULL);
	rc |= maintenance_register("audit_retention", audit_retention, NULL);
	rc |= maintenance_register("audit_chains", audit_chains_resync, NULL);
	return rc == 0 ? IDP_OK : IDP_EINVAL;
}
