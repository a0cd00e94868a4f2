/*
 * The audit writer in this process, against the test PostgreSQL: the
 * promise of audit_emit_then, which token issuance stands on.  done is
 * called exactly once per event: IDP_OK once its batch committed;
 * IDP_EUNAVAIL when audit.timeout passes first (and the event is then
 * dropped, never written), or when the writer stops without writing it.
 * In "async" durability there is nothing to wait for and done is not
 * called at all.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <dirent.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>
#include <cmocka.h>
#include <libpq-fe.h>

#include "idpd/audit_writer.h"
#include "idpd/clock.h"
#include "idpd/store.h"
#include "harness.h"

#define N_EVENTS 300

/* What each event's done saw: how often it was called, with which code. */
struct outcome {
	_Atomic int calls;
	_Atomic int rc;
};

static struct outcome outcomes[N_EVENTS];

static void
record(void *arg, int rc)
{
	struct outcome *o = arg;

	atomic_store(&o->rc, rc);
	atomic_fetch_add(&o->calls, 1);
}

static void
outcomes_reset(void)
{
	for (int i = 0; i < N_EVENTS; i++) {
		atomic_store(&outcomes[i].calls, 0);
		atomic_store(&outcomes[i].rc, 1);
	}
}

/* Wait (10 s at most) until the first n events have had their word. */
static void
sleep_ms(int ms)
{
	struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};

	nanosleep(&ts, NULL);
}

static void
wait_for_calls(int n)
{
	for (int tries = 0; tries < 1000; tries++) {
		int done = 0;
		struct timespec ts = {0, 10 * 1000 * 1000};

		for (int i = 0; i < n; i++)
			done += atomic_load(&outcomes[i].calls) > 0;
		if (done == n)
			return;
		nanosleep(&ts, NULL);
	}
	fail_msg("not every done was called");
}

static struct audit_event *
event(const char *task)
{
	struct audit_event *ev = audit_event_new(AUDIT_TOOL_INVOCATION, AUDIT_TIME_UNSET);

	assert_non_null(ev);
	assert_int_equal(audit_event_set(ev, AUDIT_F_AGENT_ID, "writer-test-agent"), IDP_OK);
	assert_int_equal(audit_event_set(ev, AUDIT_F_TASK_ID, task), IDP_OK);
	assert_int_equal(audit_event_set(ev, AUDIT_F_TOOL, "aws_ec2_describe_instances"), IDP_OK);
	return ev;
}

static void
start_batches(const char *url, bool sync, int64_t timeout_ms, int batch_max)
{
	struct audit_writer_opts o = {0};
	struct idp_diag d;

	o.url = url;
	o.instance_id = "writer-test";
	o.queue_max = 1024;
	o.batch_max = batch_max;
	o.sync = sync;
	o.timeout_ms = timeout_ms;
	idp_diag_init(&d);
	if (audit_writer_start(&o, &d) != IDP_OK)
		fail_msg("audit_writer_start: %s", idp_diag_str(&d));
}

static void
start(const char *url, bool sync, int64_t timeout_ms)
{
	start_batches(url, sync, timeout_ms, 64);
}

/* A URL where nothing listens: the writer can never connect. */
static void
dead_url(char *out, size_t len)
{
	snprintf(out, len, "postgresql://postgres@127.0.0.1:%d/none?connect_timeout=1",
	         harness_free_port());
}

static void
each_event_is_called_back_once_after_its_commit(void **state)
{
	char url[512], n[32], sql[256];

	(void)state;
	assert_int_equal(harness_db_create("t_writer_ok"), 0);
	harness_db_url("t_writer_ok", url, sizeof(url));
	outcomes_reset();
	start(url, true, 5000);
	for (int i = 0; i < N_EVENTS; i++)
		assert_int_equal(audit_emit_then(event("task-writer-ok"), record, &outcomes[i]),
		                 AUDIT_PENDING);
	wait_for_calls(N_EVENTS);
	/* Everything acknowledged is in the table, each done was called once. */
	snprintf(sql, sizeof(sql),
	         "SELECT count(*) FROM audit_events WHERE task_id = 'task-writer-ok' AND "
	         "writer_id = '%s'",
	         audit_writer_chain_id());
	assert_int_equal(harness_sql_value("t_writer_ok", sql, n, sizeof(n)), 0);
	assert_string_equal(n, "300");
	assert_int_equal(audit_writer_stop(5000), 0);
	for (int i = 0; i < N_EVENTS; i++) {
		assert_int_equal(atomic_load(&outcomes[i].calls), 1);
		assert_int_equal(atomic_load(&outcomes[i].rc), IDP_OK);
	}
}

/*
 * A committed event is called back without waiting for the batch after it.
 * One event per batch: the first commits; the second, which a trigger
 * refuses, fails and is retried until its timeout.  The first's done comes
 * while the second is still pending, not after the second's timeout.
 */
static void
a_commit_is_called_back_while_the_next_batch_fails(void **state)
{
	char url[512], n[32];

	(void)state;
	assert_int_equal(harness_db_create("t_writer_next"), 0);
	assert_int_equal(
	    harness_sql(
	        "t_writer_next",
	        "CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS "
	        "$$BEGIN RAISE EXCEPTION 'poison'; END$$; "
	        "CREATE TRIGGER refuse_poison BEFORE INSERT ON audit_events FOR EACH ROW "
	        "WHEN (NEW.task_id = 'task-writer-poison') EXECUTE FUNCTION refuse_poison()"),
	    0);
	harness_db_url("t_writer_next", url, sizeof(url));
	outcomes_reset();
	start_batches(url, true, 3000, 1);
	assert_int_equal(audit_emit_then(event("task-writer-next"), record, &outcomes[0]),
	                 AUDIT_PENDING);
	assert_int_equal(audit_emit_then(event("task-writer-poison"), record, &outcomes[1]),
	                 AUDIT_PENDING);
	wait_for_calls(1);
	assert_int_equal(atomic_load(&outcomes[0].rc), IDP_OK);
	assert_int_equal(atomic_load(&outcomes[1].calls), 0);
	/* The refused one fails at its timeout, and only it is in the table. */
	wait_for_calls(2);
	assert_int_equal(atomic_load(&outcomes[1].rc), IDP_EUNAVAIL);
	/* A refusal of class P0 (a trigger's plain RAISE) may pass: retried,
	 * never dropped. */
	{
		struct audit_writer_stats st;

		audit_writer_get_stats(&st);
		assert_int_equal(st.dropped, 0);
		assert_true(st.failures >= 2);
	}
	audit_writer_stop(0);
	assert_int_equal(harness_sql_value("t_writer_next",
	                                   "SELECT string_agg(task_id, ',') FROM audit_events "
	                                   "WHERE task_id LIKE 'task-writer-%'",
	                                   n, sizeof(n)),
	                 0);
	assert_string_equal(n, "task-writer-next");
	assert_int_equal(atomic_load(&outcomes[0].calls), 1);
	assert_int_equal(atomic_load(&outcomes[1].calls), 1);
}

static void
the_timeout_fails_an_event_postgresql_never_took(void **state)
{
	struct audit_writer_stats st;
	char url[512];
	int64_t t0;

	(void)state;
	dead_url(url, sizeof(url));
	outcomes_reset();
	start(url, true, 300);
	t0 = idp_mono_us();
	assert_int_equal(audit_emit_then(event("task-writer-dead"), record, &outcomes[0]),
	                 AUDIT_PENDING);
	wait_for_calls(1);
	assert_int_equal(atomic_load(&outcomes[0].rc), IDP_EUNAVAIL);
	/* Not before its time. */
	assert_true(idp_mono_us() - t0 >= 300 * 1000);
	audit_writer_get_stats(&st);
	assert_true(st.timeouts >= 1);
	audit_writer_stop(0);
	assert_int_equal(atomic_load(&outcomes[0].calls), 1);
}

static void
stopping_fails_the_events_left_unwritten(void **state)
{
	char url[512];

	(void)state;
	dead_url(url, sizeof(url));
	outcomes_reset();
	start(url, true, 60000);
	for (int i = 0; i < 3; i++)
		assert_int_equal(audit_emit_then(event("task-writer-stop"), record, &outcomes[i]),
		                 AUDIT_PENDING);
	for (int i = 0; i < 3; i++)
		assert_int_equal(atomic_load(&outcomes[i].calls), 0);
	audit_writer_stop(100);
	for (int i = 0; i < 3; i++) {
		assert_int_equal(atomic_load(&outcomes[i].calls), 1);
		assert_int_equal(atomic_load(&outcomes[i].rc), IDP_EUNAVAIL);
	}
	/* No writer: refused at once, and done is not called. */
	assert_int_equal(audit_emit_then(event("task-writer-stop"), record, &outcomes[3]),
	                 IDP_EUNAVAIL);
	assert_int_equal(atomic_load(&outcomes[3].calls), 0);
}

/*
 * Stopping with PostgreSQL away counts every event left unwritten, those
 * of the batch the writer holds too: in async durability their emitters
 * were answered, so they are lost, and the caller (main) must say so.
 */
static void
stopping_counts_the_batch_in_hand(void **state)
{
	char url[512];
	struct timespec ts = {0, 200 * 1000 * 1000};

	(void)state;
	dead_url(url, sizeof(url));
	start(url, false, 60000);
	for (int i = 0; i < 3; i++)
		assert_int_equal(audit_emit(event("task-writer-lost")), IDP_OK);
	nanosleep(&ts, NULL); /* the writer takes them and fails to connect */
	assert_int_equal(audit_writer_stop(100), 3);
}

static void
async_durability_has_nothing_to_wait_for(void **state)
{
	char url[512], n[32];

	(void)state;
	assert_int_equal(harness_db_create("t_writer_async"), 0);
	harness_db_url("t_writer_async", url, sizeof(url));
	outcomes_reset();
	start(url, false, 5000);
	assert_int_equal(audit_emit_then(event("task-writer-async"), record, &outcomes[0]), IDP_OK);
	assert_int_equal(audit_writer_stop(5000), 0);
	assert_int_equal(atomic_load(&outcomes[0].calls), 0);
	/* Queued all the same, and written by the time the writer stopped. */
	assert_int_equal(harness_sql_value("t_writer_async",
	                                   "SELECT count(*) FROM audit_events WHERE task_id = "
	                                   "'task-writer-async'",
	                                   n, sizeof(n)),
	                 0);
	assert_string_equal(n, "1");
}

/* shutdown() this process's sockets to PostgreSQL's port but keep: a session
 * lost on this side only, its transaction still alive on the server. */
static int
cut_pg_sockets(int port, int keep)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *e;
	int cut = 0;

	assert_non_null(d);
	while ((e = readdir(d)) != NULL) {
		int fd = atoi(e->d_name);
		struct sockaddr_storage ss;
		socklen_t sl = sizeof(ss);

		if (fd <= 2 || fd == keep || fd == dirfd(d) ||
		    getpeername(fd, (struct sockaddr *)&ss, &sl) != 0)
			continue;
		if (ss.ss_family == AF_INET &&
		    ntohs(((struct sockaddr_in *)&ss)->sin_port) == port) {
			shutdown(fd, SHUT_RDWR);
			cut++;
		}
	}
	closedir(d);
	return cut;
}

/*
 * A batch whose session is lost while its transaction waits on a lock, and
 * commits later: the retry must wait for it, not drop or renumber what it
 * commits.  Otherwise an event acknowledged afterwards is missing and the
 * chain forks.
 */
static void
a_transaction_left_behind_is_waited_for(void **state)
{
	char url[512], v[256];
	const char *port_at;
	PGconn *lk;
	PGresult *r;
	struct timespec ts = {0, 600 * 1000 * 1000};

	(void)state;
	assert_int_equal(harness_db_create("t_writer_behind"), 0);
	harness_db_url("t_writer_behind", url, sizeof(url));
	port_at = strrchr(url, ':');
	assert_non_null(port_at);
	start(url, true, 500);
	assert_int_equal(audit_emit(event("t-e0")), IDP_OK);
	lk = PQconnectdb(url);
	assert_int_equal(PQstatus(lk), CONNECTION_OK);
	r = PQexec(lk, "BEGIN; LOCK TABLE audit_chains IN ACCESS EXCLUSIVE MODE");
	assert_int_equal(PQresultStatus(r), PGRES_COMMAND_OK);
	PQclear(r);
	/* Its batch waits on the lock; the emitter gives up. */
	assert_int_not_equal(audit_emit(event("t-e1")), IDP_OK);
	assert_true(cut_pg_sockets(atoi(port_at + 1), PQsocket(lk)) >= 1);
	nanosleep(&ts, NULL); /* the writer reconnects and retries meanwhile */
	r = PQexec(lk, "COMMIT");
	PQclear(r);
	PQfinish(lk);
	/* Acknowledged, so stored; and the chain links up. */
	assert_int_equal(audit_emit(event("t-e2")), IDP_OK);
	assert_int_equal(audit_emit(event("t-e3")), IDP_OK);
	audit_writer_stop(5000);
	assert_int_equal(harness_sql_value("t_writer_behind",
	                                   "SELECT count(*) FROM audit_events WHERE task_id IN "
	                                   "('t-e2', 't-e3')",
	                                   v, sizeof(v)),
	                 0);
	assert_string_equal(v, "2");
	assert_int_equal(
	    harness_sql_value(
	        "t_writer_behind",
	        "SELECT count(*) = max(a.seq) AND bool_and(b.prev_hash = a.hash) IS NOT "
	        "FALSE FROM audit_events a LEFT JOIN audit_events b ON b.writer_id = "
	        "a.writer_id AND b.seq = a.seq + 1",
	        v, sizeof(v)),
	    0);
	assert_string_equal(v, "t");
}

/*
 * A database that turns synchronous_commit off does not turn it off for
 * idpd: the writer's batches (seen by a trigger inside the writer's own
 * transaction) and the pool's sessions, which commit registry writes
 * together with their events, both run with it on.
 */
static void
commits_are_synchronous_whatever_the_database_sets(void **state)
{
	char url[512], v[64];
	struct store_opts so = {0};
	struct store *s;
	PGresult *r = NULL;

	(void)state;
	assert_int_equal(harness_db_create("t_writer_sync"), 0);
	assert_int_equal(harness_sql("t_writer_sync",
	                             "ALTER DATABASE t_writer_sync SET synchronous_commit = off; "
	                             "CREATE TABLE seen (setting text); "
	                             "CREATE FUNCTION note_setting() RETURNS trigger LANGUAGE "
	                             "plpgsql AS $$BEGIN INSERT INTO seen VALUES "
	                             "(current_setting('synchronous_commit')); RETURN NEW; END$$; "
	                             "CREATE TRIGGER note AFTER INSERT ON audit_events FOR EACH "
	                             "ROW EXECUTE FUNCTION note_setting()"),
	                 0);
	/* The setting reaches new sessions: a plain one sees it off. */
	assert_int_equal(
	    harness_sql_value("t_writer_sync", "SHOW synchronous_commit", v, sizeof(v)), 0);
	assert_string_equal(v, "off");
	harness_db_url("t_writer_sync", url, sizeof(url));
	start(url, false, 5000);
	assert_int_equal(audit_emit(event("t-sync")), IDP_OK);
	assert_int_equal(audit_writer_stop(5000), 0);
	assert_int_equal(harness_sql_value("t_writer_sync",
	                                   "SELECT string_agg(DISTINCT setting, ',') FROM seen", v,
	                                   sizeof(v)),
	                 0);
	assert_string_equal(v, "on");

	so.url = url;
	so.pool_size = 1;
	so.connect_timeout_ms = 5000;
	so.acquire_timeout_ms = 5000;
	so.statement_timeout_ms = 5000;
	s = store_open(&so);
	assert_int_equal(store_query(s, "SHOW synchronous_commit", 0, NULL, &r), IDP_OK);
	assert_string_equal(PQgetvalue(r, 0, 0), "on");
	PQclear(r);
	store_close(s);

	/* A stronger setting is the operator's to keep: not lowered to on. */
	assert_int_equal(harness_sql("t_writer_sync",
	                             "ALTER DATABASE t_writer_sync SET synchronous_commit = "
	                             "remote_apply"),
	                 0);
	s = store_open(&so);
	assert_int_equal(store_query(s, "SHOW synchronous_commit", 0, NULL, &r), IDP_OK);
	assert_string_equal(PQgetvalue(r, 0, 0), "remote_apply");
	PQclear(r);
	store_close(s);
}

/*
 * An emitter that gave up (503, its change undone) while its batch's
 * attempt was merely slow, not failed: the attempt commits the event all
 * the same, and the writer follows it with audit.withdrawn naming it, so
 * the log does not leave the undone action standing.
 */
static void
an_event_committed_after_its_emitter_gave_up_is_withdrawn(void **state)
{
	char url[512], v[256], sql[512];
	PGconn *lk;
	PGresult *r;
	struct timespec ts = {0, 600 * 1000 * 1000};

	(void)state;
	assert_int_equal(harness_db_create("t_writer_slow"), 0);
	harness_db_url("t_writer_slow", url, sizeof(url));
	start(url, true, 300);
	assert_int_equal(audit_emit(event("t-slow-0")), IDP_OK);
	lk = PQconnectdb(url);
	assert_int_equal(PQstatus(lk), CONNECTION_OK);
	r = PQexec(lk, "BEGIN; LOCK TABLE audit_chains IN ACCESS EXCLUSIVE MODE");
	assert_int_equal(PQresultStatus(r), PGRES_COMMAND_OK);
	PQclear(r);
	/* Its batch waits on the lock past audit.timeout: the emitter gives up. */
	assert_int_equal(audit_emit(event("t-slow-1")), IDP_EUNAVAIL);
	nanosleep(&ts, NULL);
	r = PQexec(lk, "COMMIT");
	PQclear(r);
	PQfinish(lk);
	assert_int_equal(audit_emit(event("t-slow-2")), IDP_OK);
	assert_int_equal(audit_writer_stop(5000), 0);
	assert_int_equal(harness_sql_value("t_writer_slow",
	                                   "SELECT event_id FROM audit_events WHERE task_id = "
	                                   "'t-slow-1'",
	                                   v, sizeof(v)),
	                 0);
	assert_true(v[0] != '\0');
	snprintf(
	    sql, sizeof(sql),
	    "SELECT count(*) FROM audit_events WHERE type = 'audit.withdrawn' AND task_id = "
	    "'t-slow-1' AND outcome = 'error' AND body::jsonb->'detail'->>'withdrawn_event_id' "
	    "= '%s' AND body::jsonb->'detail'->>'withdrawn_type' = 'tool_invocation'",
	    v);
	assert_int_equal(harness_sql_value("t_writer_slow", sql, v, sizeof(v)), 0);
	assert_string_equal(v, "1");
	/* Only the one whose emitter gave up. */
	assert_int_equal(harness_sql_value("t_writer_slow",
	                                   "SELECT count(*) FROM audit_events WHERE type = "
	                                   "'audit.withdrawn'",
	                                   v, sizeof(v)),
	                 0);
	assert_string_equal(v, "1");
}

/*
 * The chain of every writer in db is whole: seq 1.. without a gap, each row
 * linked to the one before, and each hash SHA-256(prev_hash || body).
 */
static void
assert_chains_verify(const char *db)
{
	char v[64];

	assert_int_equal(
	    harness_sql_value(
	        db,
	        "SELECT bool_and(ok) FROM (SELECT count(*) = max(a.seq) AND "
	        "bool_and(a.hash = sha256(a.prev_hash || convert_to(a.body, 'UTF8'))) "
	        "AND bool_and(a.prev_hash = coalesce(p.hash, "
	        "decode(repeat('00', 32), 'hex'))) AS ok FROM audit_events a LEFT JOIN "
	        "audit_events p ON p.writer_id = a.writer_id AND p.seq = a.seq - 1 "
	        "GROUP BY a.writer_id) c",
	        v, sizeof(v)),
	    0);
	assert_string_equal(v, "t");
}

/* An event with a known id, so that its refusal can be found. */
static struct audit_event *
event_with_id(const char *task, char *id, size_t id_len)
{
	struct audit_event *ev = event(task);

	assert_int_equal(audit_event_assign_id(ev), IDP_OK);
	snprintf(id, id_len, "%s", audit_event_get(ev, AUDIT_F_ID));
	return ev;
}

/* Refused in the test database: a CHECK (class 23) and a trigger (class 22). */
static void
refusing_db(const char *db)
{
	assert_int_equal(harness_db_create(db), 0);
	assert_int_equal(
	    harness_sql(db, "ALTER TABLE audit_events ADD CONSTRAINT no_refused_task CHECK "
	                    "(task_id IS DISTINCT FROM 'task-refused-23'); "
	                    "CREATE FUNCTION refuse_22() RETURNS trigger LANGUAGE plpgsql AS "
	                    "$$BEGIN RAISE EXCEPTION 'refused' USING ERRCODE = '22023'; END$$; "
	                    "CREATE TRIGGER refuse_22 BEFORE INSERT ON audit_events FOR EACH ROW "
	                    "WHEN (NEW.task_id = 'task-refused-22') EXECUTE FUNCTION refuse_22()"),
	    0);
}

/* The audit.event_refused rows naming id with sqlstate, as a count. */
static void
assert_refusal_recorded(const char *db, const char *id, const char *sqlstate)
{
	char sql[512], v[32];

	snprintf(sql, sizeof(sql),
	         "SELECT count(*) FROM audit_events WHERE type = 'audit.event_refused' AND "
	         "outcome = 'error' AND task_id IS NULL AND agent_id IS NULL AND "
	         "body::jsonb->'detail'->>'refused_event_id' = '%s' AND "
	         "body::jsonb->'detail'->>'refused_type' = 'tool_invocation' AND "
	         "body::jsonb->'detail'->>'sqlstate' = '%s'",
	         id, sqlstate);
	assert_int_equal(harness_sql_value(db, sql, v, sizeof(v)), 0);
	assert_string_equal(v, "1");
}

/*
 * Rows PostgreSQL refuses for good (a data exception, an integrity
 * violation) in the middle of a batch: only they are dropped; the rest of
 * the batch commits, chained without a gap; the refused events' waiters
 * fail (their requests answer 503, as with the audit log down), and the
 * loss is counted and recorded by an audit.event_refused of its own.  The
 * writer goes on with the next batch.
 */
static void
rows_refused_for_good_are_dropped_from_their_batch(void **state)
{
	const char *db = "t_writer_refused";
	char url[512], v[64], id22[64], id23[64];
	struct audit_writer_stats st;
	struct audit_writer_opts o = {0};
	struct idp_diag d;

	(void)state;
	refusing_db(db);
	harness_db_url(db, url, sizeof(url));
	outcomes_reset();
	o.url = url;
	o.instance_id = "writer-test";
	o.queue_max = 1024;
	o.batch_max = 64;
	o.batch_wait_ms = 300; /* all ten in one batch */
	o.sync = true;
	o.timeout_ms = 10000;
	idp_diag_init(&d);
	assert_int_equal(audit_writer_start(&o, &d), IDP_OK);
	for (int i = 0; i < 10; i++) {
		struct audit_event *ev =
		    i == 3   ? event_with_id("task-refused-23", id23, sizeof(id23))
		    : i == 7 ? event_with_id("task-refused-22", id22, sizeof(id22))
		             : event("task-batch-kept");

		assert_int_equal(audit_emit_then(ev, record, &outcomes[i]), AUDIT_PENDING);
	}
	wait_for_calls(10);
	for (int i = 0; i < 10; i++)
		assert_int_equal(atomic_load(&outcomes[i].rc),
		                 i == 3 || i == 7 ? IDP_EUNAVAIL : IDP_OK);
	/* A waiting emitter learns it too, long before audit.timeout. */
	{
		int64_t t0 = idp_mono_us();

		assert_int_equal(audit_emit(event("task-refused-23")), IDP_EUNAVAIL);
		assert_true(idp_mono_us() - t0 < 5000 * 1000);
	}
	/* And the writer goes on. */
	assert_int_equal(audit_emit(event("task-after")), IDP_OK);
	audit_writer_get_stats(&st);
	assert_int_equal(st.dropped, 3);
	assert_int_equal(audit_writer_stop(5000), 0);
	assert_int_equal(harness_sql_value(db,
	                                   "SELECT count(*) FROM audit_events WHERE task_id = "
	                                   "'task-batch-kept'",
	                                   v, sizeof(v)),
	                 0);
	assert_string_equal(v, "8");
	assert_int_equal(harness_sql_value(db,
	                                   "SELECT count(*) FROM audit_events WHERE task_id LIKE "
	                                   "'task-refused-%'",
	                                   v, sizeof(v)),
	                 0);
	assert_string_equal(v, "0");
	assert_refusal_recorded(db, id23, "23514");
	assert_refusal_recorded(db, id22, "22023");
	assert_int_equal(harness_sql_value(db,
	                                   "SELECT count(*) FROM audit_events WHERE type = "
	                                   "'audit.event_refused'",
	                                   v, sizeof(v)),
	                 0);
	assert_string_equal(v, "3");
	assert_chains_verify(db);
	/* The unique key the writer tells apart from a refused row (another
	 * process on this chain id) still has the name it looks for. */
	assert_int_equal(harness_sql_value(db,
	                                   "SELECT count(*) FROM pg_constraint WHERE conname = "
	                                   "'audit_events_writer_id_seq_key'",
	                                   v, sizeof(v)),
	                 0);
	assert_string_equal(v, "1");
}

/*
 * In "async" durability the refused event's emitter was answered at
 * enqueue: the writer must not hold the queue up behind it (every later
 * durable action would answer 503 until a restart, which loses the queue).
 */
static void
an_async_event_refused_for_good_does_not_block_the_writer(void **state)
{
	const char *db = "t_writer_refused_async";
	char url[512], v[64], id[64];

	(void)state;
	refusing_db(db);
	harness_db_url(db, url, sizeof(url));
	start_batches(url, false, 2000, 4);
	assert_int_equal(audit_emit(event("task-async-kept")), IDP_OK);
	assert_int_equal(audit_emit(event_with_id("task-refused-22", id, sizeof(id))), IDP_OK);
	for (int i = 0; i < 9; i++)
		assert_int_equal(audit_emit(event("task-async-kept")), IDP_OK);
	/* Nothing left unwritten: the refused one is dropped, not pending. */
	assert_int_equal(audit_writer_stop(5000), 0);
	assert_int_equal(harness_sql_value(db,
	                                   "SELECT count(*) FROM audit_events WHERE task_id = "
	                                   "'task-async-kept'",
	                                   v, sizeof(v)),
	                 0);
	assert_string_equal(v, "10");
	assert_refusal_recorded(db, id, "22023");
	assert_chains_verify(db);
}

/*
 * A change that makes the table refuse every row (a NOT NULL column added
 * without a default) is no bad row: the writer asks whether the table
 * takes any row (a probe, rolled back) before it drops one, and drops
 * nothing.  It waits as for PostgreSQL away and says so (/readyz), and
 * once the table takes rows again everything queued is written, chained
 * without a gap.
 */
static void
a_table_that_refuses_every_row_fails_closed(void **state)
{
	const char *db = "t_writer_refuses_all";
	struct audit_writer_stats st0, st;
	char url[512], v[64];

	(void)state;
	audit_writer_get_stats(&st0); /* the process's counts so far */
	assert_int_equal(harness_db_create(db), 0);
	assert_int_equal(
	    harness_sql(db, "ALTER TABLE audit_events ADD COLUMN tenant text NOT NULL"), 0);
	harness_db_url(db, url, sizeof(url));
	start_batches(url, false, 2000, 4);
	for (int i = 0; i < 20; i++)
		assert_int_equal(audit_emit(event("task-refused-all")), IDP_OK);
	for (int i = 0; i < 100 && audit_writer_unready(NULL) == NULL; i++)
		sleep_ms(50);
	assert_non_null(audit_writer_unready(NULL));
	sleep_ms(500);
	audit_writer_get_stats(&st);
	assert_int_equal(st.dropped - st0.dropped, 0);
	assert_int_equal(harness_sql_value(db, "SELECT count(*) FROM audit_events", v, sizeof(v)),
	                 0);
	assert_string_equal(v, "0");
	/* The table takes rows again: what waited is written. */
	assert_int_equal(harness_sql(db, "ALTER TABLE audit_events DROP COLUMN tenant"), 0);
	assert_int_equal(audit_writer_stop(10000), 0);
	assert_int_equal(harness_sql_value(db,
	                                   "SELECT count(*) FROM audit_events WHERE task_id = "
	                                   "'task-refused-all'",
	                                   v, sizeof(v)),
	                 0);
	assert_int_equal(atol(v), 20);
	assert_chains_verify(db);
}

/*
 * Two bad rows with nothing committed between them (the last of one batch,
 * the first of the next): each is at fault, since the table takes other
 * rows, and each is dropped; the writer never stops.
 */
static void
bad_rows_in_a_row_are_each_dropped(void **state)
{
	const char *db = "t_writer_refused_row";
	struct audit_writer_stats st0, st;
	struct audit_writer_opts o = {0};
	struct idp_diag d;
	char url[512], v[64], id1[64], id2[64];

	(void)state;
	audit_writer_get_stats(&st0);
	refusing_db(db);
	harness_db_url(db, url, sizeof(url));
	o.url = url;
	o.instance_id = "writer-test";
	o.queue_max = 1024;
	o.batch_max = 4;
	o.batch_wait_ms = 300; /* batches of four: [k, k, k, bad] [bad, k, k, k] */
	o.sync = false;
	o.timeout_ms = 5000;
	idp_diag_init(&d);
	assert_int_equal(audit_writer_start(&o, &d), IDP_OK);
	for (int i = 0; i < 8; i++) {
		struct audit_event *ev = i == 3 ? event_with_id("task-refused-23", id1, sizeof(id1))
		                         : i == 4
		                             ? event_with_id("task-refused-22", id2, sizeof(id2))
		                             : event("task-row-kept");

		assert_int_equal(audit_emit(ev), IDP_OK);
	}
	assert_int_equal(audit_writer_stop(10000), 0);
	audit_writer_get_stats(&st);
	assert_int_equal(st.dropped - st0.dropped, 2);
	assert_int_equal(harness_sql_value(db,
	                                   "SELECT count(*) FROM audit_events WHERE task_id = "
	                                   "'task-row-kept'",
	                                   v, sizeof(v)),
	                 0);
	assert_string_equal(v, "6");
	assert_refusal_recorded(db, id1, "23514");
	assert_refusal_recorded(db, id2, "22023");
	assert_chains_verify(db);
}

/* An instance id that is not text would name a chain every row of which
 * PostgreSQL refuses: the writer does not start with it. */
static void
an_instance_id_that_is_not_text_is_refused(void **state)
{
	struct audit_writer_opts o = {0};
	struct idp_diag d;
	char url[512];

	(void)state;
	dead_url(url, sizeof(url));
	o.url = url;
	o.queue_max = 16;
	o.batch_max = 4;
	o.timeout_ms = 1000;
	idp_diag_init(&d);
	o.instance_id = "host-\xff\xfe:42";
	assert_int_equal(audit_writer_start(&o, &d), IDP_EINVAL);
	assert_non_null(strstr(idp_diag_str(&d), "instance id"));
	o.instance_id = "host-\x01:42";
	assert_int_equal(audit_writer_start(&o, &d), IDP_EINVAL);
	o.instance_id = "h\xc3\xb4te:42";
	assert_int_equal(audit_writer_start(&o, &d), IDP_OK);
	assert_int_equal(audit_writer_stop(100), 0);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(each_event_is_called_back_once_after_its_commit),
	    cmocka_unit_test(a_transaction_left_behind_is_waited_for),
	    cmocka_unit_test(a_commit_is_called_back_while_the_next_batch_fails),
	    cmocka_unit_test(the_timeout_fails_an_event_postgresql_never_took),
	    cmocka_unit_test(stopping_fails_the_events_left_unwritten),
	    cmocka_unit_test(stopping_counts_the_batch_in_hand),
	    cmocka_unit_test(async_durability_has_nothing_to_wait_for),
	    cmocka_unit_test(commits_are_synchronous_whatever_the_database_sets),
	    cmocka_unit_test(an_event_committed_after_its_emitter_gave_up_is_withdrawn),
	    cmocka_unit_test(rows_refused_for_good_are_dropped_from_their_batch),
	    cmocka_unit_test(an_async_event_refused_for_good_does_not_block_the_writer),
	    cmocka_unit_test(an_instance_id_that_is_not_text_is_refused),
	    cmocka_unit_test(a_table_that_refuses_every_row_fails_closed),
	    cmocka_unit_test(bad_rows_in_a_row_are_each_dropped),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
