/*
 * Integration tests of registry_touch against a real PostgreSQL, through
 * the library as the token service calls it: the registry runs in this
 * process on a database cloned from the migrated template.  Touches are
 * written by one statement per flush (registry_touch_flushes counts them),
 * last_active never moves backwards, a flush changes no version and sends
 * no notification on the agents channel (checked against a version bump
 * that does, in commit order), the flusher thread writes on its period,
 * registry_shutdown writes what is left, a flush never waits for a row
 * another transaction holds (it writes the others and keeps the locked
 * agent's time for a later flush), and the stale-agents job counts such a
 * kept time as use, as it does a touch made while its suspension waits for
 * the agent's row.
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>
#include <jansson.h>
#include <libpq-fe.h>

#include "../../src/registry/registry_int.h"
#include "harness.h"
#include "idpd/app.h"
#include "idpd/clock.h"
#include "idpd/config.h"
#include "idpd/maintenance.h"
#include "idpd/registry.h"
#include "idpd/store.h"

struct world {
	const char *db;
	struct idpd_app app;
};

/* Static, so that teardown can still stop the world of a failed test. */
static struct world the_world;
static struct world *current;
/* A session holding a row lock, which teardown ends if a test failed first. */
static PGconn *holder;

/* The stale-agents cleanup job (jobs.c), reachable in test builds. */
int stale_agents(const struct maintenance_run *run, void *ctx, json_t *counts,
                 struct idp_diag *diag);

static void
add_agent(const char *db, const char *id)
{
	char sql[512];

	snprintf(sql, sizeof(sql),
	         "INSERT INTO agents (id, agent_type, owner, capabilities, max_chain_depth, "
	         "max_scope_per_delegation) VALUES ('%s', 'worker', 'alice@example.com', "
	         "'{cloud:Describe*}', 1, 'read')",
	         id);
	assert_int_equal(harness_sql(db, sql), 0);
}

/*
 * A world whose cleanup.stale_after is stale_after_ms (0: the default) and
 * cleanup.stale_action is action (NULL: the default).
 */
static void
world_start_stale(struct world *w, const char *db, int64_t flush_ms, int64_t stale_after_ms,
                  const char *action)
{
	char url[256];
	struct store_opts so = {.pool_size = 2,
	                        .connect_timeout_ms = 2000,
	                        .acquire_timeout_ms = 2000,
	                        .statement_timeout_ms = 5000};
	struct idp_diag d;

	memset(w, 0, sizeof(*w));
	w->db = db;
	assert_int_equal(harness_db_create(db), 0);
	add_agent(db, "planner");
	add_agent(db, "cloud");
	add_agent(db, "null"); /* a valid id that an unquoted array literal would read as NULL */
	harness_db_url(db, url, sizeof(url));
	so.url = url;
	w->app.cfg = idpd_config_defaults();
	assert_non_null(w->app.cfg);
	w->app.cfg->registry.last_active_flush_ms = flush_ms;
	if (stale_after_ms > 0)
		w->app.cfg->cleanup.stale_after_ms = stale_after_ms;
	if (action != NULL) {
		free(w->app.cfg->cleanup.stale_action);
		w->app.cfg->cleanup.stale_action = idp_xstrdup(action);
	}
	w->app.store = store_open(&so);
	w->app.listener = store_listener_new(url);
	idp_diag_init(&d);
	if (registry_init(&w->app, &d) != IDP_OK)
		fail_msg("registry_init: %s", idp_diag_str(&d));
	current = w;
}

static void
world_start(struct world *w, const char *db, int64_t flush_ms)
{
	world_start_stale(w, db, flush_ms, 0, NULL);
}

static void
world_stop(struct world *w)
{
	current = NULL;
	registry_shutdown();
	maintenance_reset();
	store_listener_free(w->app.listener);
	store_close(w->app.store);
	idpd_config_free(w->app.cfg);
}

/* last_active of agent id in ms since the epoch, or -1 when NULL. */
static long long
last_active(const char *db, const char *id)
{
	char sql[256], v[64];

	snprintf(sql, sizeof(sql),
	         "SELECT coalesce(floor(extract(epoch FROM last_active) * 1000)::bigint, -1) "
	         "FROM agents WHERE id = '%s'",
	         id);
	assert_int_equal(harness_sql_value(db, sql, v, sizeof(v)), 0);
	return strtoll(v, NULL, 10);
}

static long long
value(const char *db, const char *sql)
{
	char v[64];

	assert_int_equal(harness_sql_value(db, sql, v, sizeof(v)), 0);
	return strtoll(v, NULL, 10);
}

static void
touches_are_written_in_one_statement_and_never_backwards(void **state)
{
	struct world *w = &the_world;
	int64_t now = idp_now_ms(idp_clock_system());
	int64_t later = now + 86400000; /* cloud was seen "tomorrow" already */
	uint64_t before;
	char sql[256];

	(void)state;
	world_start(w, "t_last_active_batch", 3600 * 1000);
	snprintf(sql, sizeof(sql),
	         "UPDATE agents SET last_active = to_timestamp(%lld / 1000.0) WHERE id = 'cloud'",
	         (long long)later);
	assert_int_equal(harness_sql(w->db, sql), 0);
	before = registry_touch_flushes();

	/* Nothing noted: no statement at all. */
	assert_int_equal(registry_touch_flush(), IDP_OK);
	assert_int_equal(registry_touch_flushes(), before);

	/* A thousand touches of three agents (and one unknown): one statement. */
	for (int i = 0; i < 1000; i++)
		registry_touch("planner", now - 1000 + i);
	registry_touch("null", now - 5000);
	registry_touch("cloud", now);
	registry_touch("no-such-agent", now);
	registry_touch("Not A Valid Id", now);
	assert_int_equal(last_active(w->db, "planner"), -1);
	assert_int_equal(registry_touch_flush(), IDP_OK);
	assert_int_equal(registry_touch_flushes(), before + 1);
	assert_int_equal(last_active(w->db, "planner"), now - 1);
	assert_int_equal(last_active(w->db, "null"), now - 5000);
	/* cloud's stored time is later than the touch: kept. */
	assert_int_equal(last_active(w->db, "cloud"), later);
	assert_int_equal(value(w->db, "SELECT count(*) FROM agents WHERE id = 'no-such-agent'"), 0);

	/* An older touch does not move planner back. */
	registry_touch("planner", now - 60000);
	assert_int_equal(registry_touch_flush(), IDP_OK);
	assert_int_equal(registry_touch_flushes(), before + 2);
	assert_int_equal(last_active(w->db, "planner"), now - 1);
	/* A newer one moves it forward. */
	registry_touch("planner", now + 2000);
	assert_int_equal(registry_touch_flush(), IDP_OK);
	assert_int_equal(last_active(w->db, "planner"), now + 2000);

	/* Touches are not record changes: no version moved. */
	assert_int_equal(value(w->db, "SELECT max(version) FROM agents"), 1);
	world_stop(w);
}

/* Wait for the next notification on pg; its payload into out.  false after ~10 s. */
static bool
next_notification(PGconn *pg, char *out, size_t len)
{
	for (int i = 0; i < 500; i++) {
		PGnotify *n;
		PGresult *r = PQexec(pg, "SELECT 1");

		PQclear(r);
		assert_int_equal(PQconsumeInput(pg), 1);
		n = PQnotifies(pg);
		if (n != NULL) {
			snprintf(out, len, "%s", n->extra);
			PQfreemem(n);
			return true;
		}
		usleep(20000);
	}
	return false;
}

static void
a_flush_sends_no_notification(void **state)
{
	struct world *w = &the_world;
	char url[256], payload[256];
	int64_t now = idp_now_ms(idp_clock_system());
	PGconn *pg;
	PGresult *r;

	(void)state;
	world_start(w, "t_last_active_notify", 3600 * 1000);
	harness_db_url(w->db, url, sizeof(url));
	pg = PQconnectdb(url);
	assert_int_equal(PQstatus(pg), CONNECTION_OK);
	r = PQexec(pg, "LISTEN agents");
	assert_int_equal(PQresultStatus(r), PGRES_COMMAND_OK);
	PQclear(r);

	registry_touch("cloud", now);
	registry_touch("null", now);
	assert_int_equal(registry_touch_flush(), IDP_OK);
	assert_int_equal(last_active(w->db, "cloud"), now);
	/* A change that does notify, committed after the flush: notifications
	 * arrive in commit order, so the first one heard must be this one. */
	assert_int_equal(harness_sql(w->db, "UPDATE agents SET version = version + 1 "
	                                    "WHERE id = 'planner'"),
	                 0);
	assert_true(next_notification(pg, payload, sizeof(payload)));
	assert_string_equal(payload, "planner");
	PQfinish(pg);
	world_stop(w);
}

static void
the_flusher_writes_on_its_period(void **state)
{
	struct world *w = &the_world;
	int64_t now = idp_now_ms(idp_clock_system());
	uint64_t before = registry_touch_flushes();
	int waited = 0;

	(void)state;
	world_start(w, "t_last_active_period", 1000);
	registry_touch("planner", now);
	/* No flush is asked for: the thread writes within its period. */
	while (last_active(w->db, "planner") == -1 && waited++ < 200)
		usleep(50000);
	assert_int_equal(last_active(w->db, "planner"), now);
	assert_true(registry_touch_flushes() > before);
	world_stop(w);
}

static void
shutdown_writes_what_is_left(void **state)
{
	struct world *w = &the_world;
	int64_t now = idp_now_ms(idp_clock_system());
	uint64_t before;

	(void)state;
	world_start(w, "t_last_active_shutdown", 3600 * 1000);
	before = registry_touch_flushes();
	registry_touch("cloud", now);
	assert_int_equal(last_active(w->db, "cloud"), -1);
	world_stop(w);
	assert_int_equal(last_active(w->db, "cloud"), now);
	assert_int_equal(registry_touch_flushes(), before + 1);
	/* After shutdown a touch is a no-op, not a leak. */
	registry_touch("cloud", now + 1);
}

/*
 * With the cache not loaded (this world never starts the listener), a
 * lookup that must not wait says so instead of reading PostgreSQL, and one
 * that may wait reads it.
 */
static void
a_lookup_that_must_not_wait_never_reads_postgres(void **state)
{
	struct world w;
	const struct registry_agent *a = NULL;

	(void)state;
	world_start(&w, "t_la_lookup", 0);
	assert_false(registry_cache_ready());
	assert_int_equal(registry_lookup("planner", false, &a), IDP_EWOULDBLOCK);
	assert_null(a);
	assert_int_equal(registry_lookup("nobody", false, &a), IDP_EWOULDBLOCK);
	assert_int_equal(registry_lookup("planner", true, &a), IDP_OK);
	assert_non_null(a);
	assert_string_equal(a->id, "planner");
	registry_agent_unref(a);
	assert_int_equal(registry_lookup("nobody", true, &a), IDP_ENOTFOUND);
	assert_int_equal(registry_lookup("not an id!", false, &a), IDP_EINVAL);
	world_stop(&w);
}

/*
 * A cleanup job's suspension repeats, in its UPDATE, the condition that
 * found the agent: one used or given a new owner since is left alone.
 * This world has no audit writer, so a suspension the guard lets through
 * stops at its event (IDP_EUNAVAIL, rolled back); one it stops never gets
 * that far (IDP_ECONFLICT).
 */
static void
a_cleanup_suspension_rechecks_what_found_the_agent(void **state)
{
	struct world *w = &the_world;
	const struct registry_actor who = {"cron", "req-1", ""};
	const struct registry_guard idle_1d = {REGISTRY_GUARD_IDLE, "86400000"};
	const struct registry_guard bob = {REGISTRY_GUARD_OWNER, "bob@example.com"};
	const struct registry_guard alice = {REGISTRY_GUARD_OWNER, "alice@example.com"};
	struct registry_agent *a = NULL;
	enum registry_status from;
	struct store_conn *c;

	(void)state;
	world_start(w, "t_la_guard", 3600 * 1000);
	assert_int_equal(harness_sql(w->db, "UPDATE agents SET created_at = now() - interval "
	                                    "'3 days', last_active = now() WHERE id = 'planner';"
	                                    "UPDATE agents SET created_at = now() - interval "
	                                    "'3 days' WHERE id = 'cloud'"),
	                 0);
	assert_int_equal(store_acquire(w->app.store, &c), IDP_OK);
	/* planner was used just now; cloud has been idle for three days. */
	assert_int_equal(registry_db_transition(c, "planner", REGISTRY_SUSPENDED, NULL, "stale",
	                                        &who, &idle_1d, NULL, &from, &a),
	                 IDP_ECONFLICT);
	assert_int_equal(registry_db_transition(c, "cloud", REGISTRY_SUSPENDED, NULL, "stale", &who,
	                                        &idle_1d, NULL, &from, &a),
	                 IDP_EUNAVAIL);
	/* Both are alice's, not bob's. */
	assert_int_equal(registry_db_transition(c, "cloud", REGISTRY_SUSPENDED, NULL, "departed",
	                                        &who, &bob, NULL, &from, &a),
	                 IDP_ECONFLICT);
	assert_int_equal(registry_db_transition(c, "cloud", REGISTRY_SUSPENDED, NULL, "departed",
	                                        &who, &alice, NULL, &from, &a),
	                 IDP_EUNAVAIL);
	assert_null(a);
	store_release(w->app.store, c);
	assert_int_equal(value(w->db, "SELECT count(*) FROM agents WHERE status <> 'active'"), 0);
	world_stop(w);
}

/*
 * Open a session on db that holds agent id's row FOR SHARE, as a delegation
 * does through its audit waits, until release_row().
 */
static void
hold_row(const char *db, const char *id)
{
	char url[256], sql[256];
	PGresult *r;

	harness_db_url(db, url, sizeof(url));
	holder = PQconnectdb(url);
	assert_int_equal(PQstatus(holder), CONNECTION_OK);
	snprintf(sql, sizeof(sql), "BEGIN; SELECT 1 FROM agents WHERE id = '%s' FOR SHARE", id);
	r = PQexec(holder, sql);
	assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
	assert_int_equal(PQntuples(r), 1);
	PQclear(r);
}

static void
release_row(void)
{
	PGresult *r;

	/* Still in its transaction: nothing waited for the lock and gave up on it. */
	assert_int_equal(PQtransactionStatus(holder), PQTRANS_INTRANS);
	r = PQexec(holder, "COMMIT");
	assert_int_equal(PQresultStatus(r), PGRES_COMMAND_OK);
	PQclear(r);
	PQfinish(holder);
	holder = NULL;
}

static int64_t
elapsed_ms(const struct timespec *since)
{
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	return (int64_t)(now.tv_sec - since->tv_sec) * 1000 +
	       (now.tv_nsec - since->tv_nsec) / 1000000;
}

/*
 * A flush asked for while another session holds planner's row FOR SHARE
 * returns at once (well within the 5 s statement_timeout it would
 * otherwise wait out), having written cloud ("cloud" sorts before
 * "planner": an UPDATE that waited for planner would hold cloud's lock and
 * write neither).  planner's time stays noted, an older touch does not
 * replace it, and the first flush after the lock goes writes it.
 */
static void
a_flush_skips_a_locked_agent_and_writes_it_later(void **state)
{
	struct world *w = &the_world;
	int64_t now = idp_now_ms(idp_clock_system());
	struct touch_stats before, after;
	struct timespec t0;

	(void)state;
	world_start(w, "t_la_skip", 3600 * 1000);
	hold_row(w->db, "planner");
	touch_stats(&before);
	registry_touch("planner", now);
	registry_touch("cloud", now);
	clock_gettime(CLOCK_MONOTONIC, &t0);
	assert_int_equal(registry_touch_flush(), IDP_OK);
	assert_true(elapsed_ms(&t0) < 2000);
	assert_int_equal(last_active(w->db, "cloud"), now);
	assert_int_equal(last_active(w->db, "planner"), -1);
	touch_stats(&after);
	assert_int_equal(after.pending, 1);
	assert_int_equal(after.skipped, before.skipped + 1);
	assert_int_equal(after.written, before.written + 1);

	/* Skipped again while the lock is held; an older touch keeps the later time. */
	registry_touch("planner", now - 5000);
	assert_int_equal(registry_touch_flush(), IDP_OK);
	assert_int_equal(last_active(w->db, "planner"), -1);
	touch_stats(&after);
	assert_int_equal(after.pending, 1);
	assert_int_equal(after.skipped, before.skipped + 2);

	release_row();
	assert_int_equal(registry_touch_flush(), IDP_OK);
	assert_int_equal(last_active(w->db, "planner"), now);
	touch_stats(&after);
	assert_int_equal(after.pending, 0);
	assert_int_equal(after.skipped, before.skipped + 2);
	world_stop(w);
}

/* Wait up to ms for id's last_active to be written; its value, or -1. */
static long long
wait_written(const char *db, const char *id, int ms)
{
	long long v;

	for (int waited = 0; (v = last_active(db, id)) == -1 && waited < ms; waited += 50)
		usleep(50000);
	return v;
}

/*
 * The same through the flusher thread (registry.last_active_flush 1 s), as
 * in production: while planner's row is held, cloud is written by the
 * period's flush; once it is released, a later flush writes planner.
 */
static void
the_flusher_writes_around_a_locked_agent(void **state)
{
	struct world *w = &the_world;
	int64_t now = idp_now_ms(idp_clock_system());

	(void)state;
	world_start(w, "t_la_skip_period", 1000);
	hold_row(w->db, "planner");
	registry_touch("planner", now);
	registry_touch("cloud", now);
	/* Within 3 s: before a flush that waited would have met its 5 s statement_timeout. */
	assert_int_equal(wait_written(w->db, "cloud", 3000), now);
	assert_int_equal(last_active(w->db, "planner"), -1);
	release_row();
	assert_int_equal(wait_written(w->db, "planner", 5000), now);
	world_stop(w);
}

/*
 * All three agents were registered three days ago; stale_after is one day.
 * planner and cloud were just used, but planner's row is held by another
 * session, so the job's flush writes only cloud: planner's time, still in
 * memory, must count as use, and only "null" is stale.
 */
static void
the_stale_agents_job_counts_an_unwritten_touch_as_use(void **state)
{
	struct world *w = &the_world;
	int64_t now = idp_now_ms(idp_clock_system());
	struct maintenance_run run = {.actor = "cron", .request_id = "req-1", .source_address = ""};
	struct idp_diag d;
	json_t *counts = json_object();
	json_t *ids;
	int rc;

	(void)state;
	world_start_stale(w, "t_la_skip_stale", 3600 * 1000, 86400000, NULL);
	assert_int_equal(
	    harness_sql(w->db, "UPDATE agents SET created_at = now() - interval '3 days'"), 0);
	hold_row(w->db, "planner");
	registry_touch("planner", now);
	registry_touch("cloud", now);
	run.store = w->app.store;
	run.now_ms = now;
	assert_int_equal(store_acquire(w->app.store, &run.conn), IDP_OK);
	idp_diag_init(&d);
	rc = stale_agents(&run, NULL, counts, &d);
	store_release(w->app.store, run.conn);
	if (rc != IDP_OK)
		fail_msg("stale_agents: %s", idp_diag_str(&d));
	assert_int_equal(last_active(w->db, "cloud"), now);
	assert_int_equal(last_active(w->db, "planner"), -1);
	assert_string_equal(json_string_value(json_object_get(counts, "action")), "report");
	assert_int_equal(json_integer_value(json_object_get(counts, "stale")), 1);
	ids = json_object_get(counts, "stale_ids");
	assert_int_equal(json_array_size(ids), 1);
	assert_string_equal(json_string_value(json_array_get(ids, 0)), "null");
	json_decref(counts);
	release_row();
	world_stop(w);
}

struct stale_run {
	struct maintenance_run run;
	json_t *counts;
	struct idp_diag d;
	int rc;
};

static void *
stale_job_thread(void *arg)
{
	struct stale_run *s = arg;

	s->rc = stale_agents(&s->run, NULL, s->counts, &s->d);
	return NULL;
}

/*
 * planner has been idle for three days; cloud and null were used just now.
 * The job (stale_action "suspend") finds planner, then waits for its row,
 * which another session holds; meanwhile a token is issued to planner,
 * noted only in memory (registry_touch, as the token service does).  The
 * suspension asks the touch map again under the row lock and leaves
 * planner active.  (This world has no audit writer: a suspension that went
 * ahead would stop at its event and fail the job with IDP_EUNAVAIL.)
 */
static void
a_token_issued_after_the_stale_query_keeps_the_agent_active(void **state)
{
	struct world *w = &the_world;
	struct stale_run s = {
	    .run = {.actor = "cron", .request_id = "req-1", .source_address = ""}};
	pthread_t t;
	int waited;

	(void)state;
	world_start_stale(w, "t_la_stale_race", 3600 * 1000, 86400000, "suspend");
	assert_int_equal(harness_sql(w->db, "UPDATE agents SET created_at = now() - interval "
	                                    "'3 days';"
	                                    "UPDATE agents SET last_active = now() "
	                                    "WHERE id IN ('cloud', 'null')"),
	                 0);
	hold_row(w->db, "planner");
	s.counts = json_object();
	idp_diag_init(&s.d);
	s.run.store = w->app.store;
	s.run.now_ms = idp_now_ms(idp_clock_system());
	assert_int_equal(store_acquire(w->app.store, &s.run.conn), IDP_OK);
	assert_int_equal(pthread_create(&t, NULL, stale_job_thread, &s), 0);
	/* The job is past its query once it waits for planner's row lock. */
	for (waited = 0; waited < 4000; waited += 20) {
		if (value(w->db, "SELECT count(*) FROM pg_stat_activity WHERE datname = "
		                 "current_database() AND wait_event_type = 'Lock'") > 0)
			break;
		usleep(20000);
	}
	assert_true(waited < 4000);
	registry_touch("planner", idp_now_ms(idp_clock_system()));
	release_row();
	assert_int_equal(pthread_join(t, NULL), 0);
	store_release(w->app.store, s.run.conn);
	if (s.rc != IDP_OK)
		fail_msg("stale_agents: %s (%s)", idp_err_name(s.rc), idp_diag_str(&s.d));
	assert_string_equal(json_string_value(json_object_get(s.counts, "action")), "suspend");
	assert_int_equal(json_integer_value(json_object_get(s.counts, "stale")), 1);
	assert_int_equal(json_integer_value(json_object_get(s.counts, "suspended")), 0);
	assert_int_equal(value(w->db, "SELECT count(*) FROM agents WHERE status <> 'active'"), 0);
	json_decref(s.counts);
	world_stop(w);
}

static int
teardown(void **state)
{
	(void)state;
	if (holder != NULL) {
		PQfinish(holder);
		holder = NULL;
	}
	if (current != NULL)
		world_stop(current);
	return 0;
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_teardown(touches_are_written_in_one_statement_and_never_backwards,
	                              teardown),
	    cmocka_unit_test_teardown(a_flush_sends_no_notification, teardown),
	    cmocka_unit_test_teardown(the_flusher_writes_on_its_period, teardown),
	    cmocka_unit_test_teardown(shutdown_writes_what_is_left, teardown),
	    cmocka_unit_test_teardown(a_lookup_that_must_not_wait_never_reads_postgres, teardown),
	    cmocka_unit_test_teardown(a_cleanup_suspension_rechecks_what_found_the_agent, teardown),
	    cmocka_unit_test_teardown(a_flush_skips_a_locked_agent_and_writes_it_later, teardown),
	    cmocka_unit_test_teardown(the_flusher_writes_around_a_locked_agent, teardown),
	    cmocka_unit_test_teardown(the_stale_agents_job_counts_an_unwritten_touch_as_use,
	                              teardown),
	    cmocka_unit_test_teardown(a_token_issued_after_the_stale_query_keeps_the_agent_active,
	                              teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
