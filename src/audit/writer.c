/*
 * writer.c - the audit queue and its writer thread (see audit_writer.h).
 *
 * DESIGN
 *
 * State lives in one struct guarded by one lock, writer.lock: the ring of
 * queued events, the count of events enqueued (enq_seq) and committed
 * (committed_seq), and the stop flag.  Events leave the ring in FIFO order
 * and are committed in that order, so an emitter whose event was the k-th
 * enqueued knows it is durable once committed_seq >= k.  Three condition
 * variables: `work` wakes the writer, `space` wakes emitters waiting for
 * room in the ring, `done` wakes emitters waiting for their commit (they
 * re-check their own condition).  `done` is DONE_WAYS variables, the
 * emitter of event k waiting on done[k % DONE_WAYS], so that a commit wakes
 * the emitters whose events it made durable and not those already queued
 * for the next batch; and room has its own, so taking a batch wakes none of
 * them.
 *
 * An emitter that must not block (audit_emit_then, from an I/O thread)
 * leaves a waiter instead: its event's number, a function to call and a
 * deadline, in a FIFO that is in seq order and so also in deadline order.
 * The writer calls the waiters its commit made durable; the timer thread
 * sleeps until the oldest waiter's deadline and fails those whose time is
 * up, as a waiting emitter would fail itself.  Both call outside the lock.
 *
 * The chain: the writer numbers events 1, 2, ... (seq) and hashes each over
 * the previous hash, starting from 32 zero bytes.  Canonical form, hashes and
 * the COPY rows of a batch are computed once; if the transaction fails the
 * same rows are retried after a reconnect, skipping those that turn out to
 * have committed already (the COMMIT reply can be lost with the connection),
 * so the chain never forks and no event is written twice.  A batch that
 * PostgreSQL refuses for good instead (SQLSTATE class 22 or 23) is not
 * retried as it is: write_batch finds the refused rows by halves, drops
 * their events and chains the rest again (drop_refused), so one bad row
 * never holds up the queue behind it.  An event whose
 * emitter gave up (503) but which committed all the same (a lost COMMIT
 * reply, or an attempt slower than audit.timeout) is followed by an
 * audit.withdrawn event naming it.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "idpd/audit_writer.h"
#include "idpd/buf.h"
#include "idpd/clock.h"
#include "idpd/log.h"
#include "idpd/metrics.h"
#include "../store/store_int.h"

#define DONE_WAYS 64

struct row {
	size_t off, len; /* this row's bytes in the batch's COPY data */
	uint64_t seq;
	int slot;                     /* its event's place in the batch */
	uint8_t prev[AUDIT_HASH_LEN]; /* the chain's hash before it */
};

/*
 * A queued event with its canonical form.  The emitting thread serializes
 * (the costly part) before taking the lock, so that work spreads over the
 * emitters instead of piling up on the one writer thread.
 */
struct slot {
	struct audit_event *ev; /* NULL: cancelled by its emitter, or refused; nothing to write */
	char *canon;
	size_t clen;
	/* A waiting audit_emit's answer, on its stack: set (under writer.lock,
	 * unless the emitter gave up) when PostgreSQL refused the event. */
	bool *refused;
};

/* An emitter that did not wait: called once its event is durable, or not. */
struct waiter {
	uint64_t seq;
	audit_done_fn done;
	void *arg;
	int64_t deadline_us;
};

static struct {
	struct audit_writer_opts o;
	char *url;
	char instance[256];
	char chain_id[320];

	pthread_mutex_t lock; /* writer.lock: everything below up to `thread` */
	pthread_cond_t work;
	pthread_cond_t space;
	pthread_cond_t done[DONE_WAYS];
	struct slot *ring;
	int cap, head, count;
	int room; /* what emitters may fill: cap less the writer's own reserve */
	uint64_t enq_seq;
	uint64_t committed_seq;
	bool stop;
	int64_t stop_deadline_us;
	/* The batch the writer is writing: its first seq, its size, and the
	 * slots whose emitters have given up on it since. */
	uint64_t inflight_first;
	int inflight_n;
	bool *inflight_cancel;
	bool running;
	pthread_t thread;
	/* Events of the batch the writer held when it gave up at stop: set by
	 * the writer thread before it ends, read after it is joined. */
	int unwritten;
	/* The waiters of audit_emit_then, oldest first, and their timer. */
	struct waiter *waiters;
	int wcap, whead, wcount;
	pthread_cond_t timer_wake;
	bool timer_stop;
	pthread_t timer;

	/* writer thread only */
	struct audit_alerts *alerts;
	PGconn *pg;
	uint64_t chain_seq;
	uint8_t chain_hash[AUDIT_HASH_LEN];

	_Atomic uint64_t queued, committed, refused, timeouts, batches, commit_us, failures,
	    cancelled, dropped;
	_Atomic bool connected;
	_Atomic bool failing; /* the batch in hand has failed and is not yet written */
	/* Writer thread only: whether the table's refusal of every row was logged (write_batch). */
	bool refusing_logged;
} W = {
    .lock = PTHREAD_MUTEX_INITIALIZER,
};

static void
deadline_in(struct timespec *ts, int64_t ms)
{
	clock_gettime(CLOCK_MONOTONIC, ts);
	ts->tv_sec += ms / 1000;
	ts->tv_nsec += (ms % 1000) * 1000000;
	if (ts->tv_nsec >= 1000000000) {
		ts->tv_sec++;
		ts->tv_nsec -= 1000000000;
	}
}

/*
 * Rows travel in COPY's binary format: no escaping here, and PostgreSQL
 * parses no timestamp and decodes no hex per row.  Each row is a field
 * count, then per field a length (-1 for NULL) and the bytes, integers big
 * endian; the stream opens with copy_head and ends with copy_tail.
 */
static const char copy_head[19] = {'P',  'G', 'C', 'O', 'P', 'Y', '\n', '\377', '\r', '\n',
                                   '\0', 0,   0,   0,   0,   0,   0,    0,      0};
static const char copy_tail[2] = {'\377', '\377'};

/* Microseconds from the Unix epoch to PostgreSQL's, 2000-01-01T00:00:00Z. */
#define PG_EPOCH_US 946684800000000LL

static int
put_be(struct idp_buf *b, uint64_t v, int n)
{
	unsigned char x[8];

	for (int i = 0; i < n; i++)
		x[i] = (unsigned char)(v >> (8 * (n - 1 - i)));
	return idp_buf_append(b, x, (size_t)n);
}

/* One field: its length and bytes, or length -1 for NULL. */
static int
put_field(struct idp_buf *b, const void *p, size_t n)
{
	if (p == NULL)
		return put_be(b, 0xffffffffu, 4);
	if (n > INT32_MAX)
		return IDP_ETOOBIG;
	return put_be(b, n, 4) | idp_buf_append(b, p, n);
}

static int
put_text(struct idp_buf *b, const char *s)
{
	return put_field(b, s, s != NULL ? strlen(s) : 0);
}

/* One COPY row for a queued event; extends the chain held in W. */
static int
build_row(const struct slot *sl, struct idp_buf *b, struct row *r)
{
	const struct audit_event *ev = sl->ev;
	uint8_t *prev = r->prev;
	int64_t ts_us = audit_event_time(ev) * 1000 - PG_EPOCH_US;
	int rc = 0;

	memcpy(prev, W.chain_hash, AUDIT_HASH_LEN);
	if (audit_chain_hash(prev, sl->canon, sl->clen, W.chain_hash) != IDP_OK)
		return IDP_EINTERNAL;
	W.chain_seq++;
	r->seq = W.chain_seq;
	r->off = b->len;

	/* The columns of COPY_SQL, in its order. */
	rc |= put_be(b, 13, 2);
	rc |= put_text(b, audit_event_get(ev, AUDIT_F_ID));
	rc |= put_text(b, W.chain_id);
	rc |= put_be(b, 8, 4) | put_be(b, r->seq, 8);
	rc |= put_be(b, 8, 4) | put_be(b, (uint64_t)ts_us, 8);
	rc |= put_text(b, audit_event_type_name(ev));
	rc |= put_text(b, audit_event_get(ev, AUDIT_F_AGENT_ID));
	rc |= put_text(b, audit_event_get(ev, AUDIT_F_HUMAN_PRINCIPAL));
	rc |= put_text(b, audit_event_get(ev, AUDIT_F_TASK_ID));
	rc |= put_be(b, 2, 4) | put_be(b, (uint64_t)audit_event_severity(ev), 2);
	rc |= put_text(b, audit_outcome_name(audit_event_outcome(ev)));
	rc |= put_field(b, sl->canon, sl->clen);
	rc |= put_field(b, prev, AUDIT_HASH_LEN);
	rc |= put_field(b, W.chain_hash, AUDIT_HASH_LEN);
	r->len = b->len - r->off;
	return rc == 0 ? IDP_OK : IDP_ETOOBIG;
}

static bool
exec_ok(PGconn *pg, const char *sql, ExecStatusType want)
{
	PGresult *r = PQexec(pg, sql);
	bool ok = PQresultStatus(r) == want;

	if (!ok)
		log_warn("audit: %s: %s", sql, PQresultErrorMessage(r));
	PQclear(r);
	return ok;
}

/* The writer's own session, opened when missing.  Writer thread only. */
static bool
writer_connect(void)
{
	char err[256];

	if (W.pg != NULL)
		return true;
	W.pg = store_connect_url(W.url, 5000, 0, err, sizeof(err));
	if (W.pg == NULL) {
		log_warn("audit: cannot connect to PostgreSQL: %s", err);
		return false;
	}
	atomic_store(&W.connected, true);
	return true;
}

/*
 * Every batch's transaction holds this chain's lock (an advisory lock of
 * class CHAIN_LOCK_CLASS, keyed by the chain id's hash) until it commits.
 * A session lost on this side may leave its transaction alive on the
 * server, waiting on a lock and committing later; reading the chain's
 * height without waiting for it would drop or renumber events it then
 * commits (an acknowledged event missing, a fork in the chain).
 */
#define CHAIN_LOCK_CLASS 1635083369 /* "audi" */

/*
 * Highest seq of this chain already committed, once no earlier batch's
 * transaction can still commit (it takes the chain's lock, so it waits for
 * one); -1 if it cannot be known.
 */
static int64_t
committed_max(void)
{
	char cls[16];
	const char *p[2] = {W.chain_id, cls};
	PGresult *r;
	int64_t v = -1;

	snprintf(cls, sizeof(cls), "%d", CHAIN_LOCK_CLASS);
	if (!exec_ok(W.pg, "BEGIN", PGRES_COMMAND_OK))
		return -1;
	r = PQexecParams(W.pg, "SELECT pg_advisory_xact_lock($2::int, hashtext($1))", 2, NULL, p,
	                 NULL, NULL, 0);
	if (PQresultStatus(r) == PGRES_TUPLES_OK) {
		PQclear(r);
		r = PQexecParams(
		    W.pg, "SELECT coalesce(max(seq), 0) FROM audit_events WHERE writer_id = $1", 1,
		    NULL, p, NULL, NULL, 0);
		if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1)
			v = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
	}
	PQclear(r);
	if (!exec_ok(W.pg, v >= 0 ? "COMMIT" : "ROLLBACK", PGRES_COMMAND_OK))
		return -1;
	return v;
}

#define COPY_SQL                                                                                   \
	"COPY audit_events (event_id, writer_id, seq, ts, type, agent_id, human_principal, "       \
	"task_id, severity, outcome, body, prev_hash, hash) FROM STDIN (FORMAT binary)"
#define CHAIN_SQL_HEAD "INSERT INTO audit_chains AS c (writer_id, last_seq) VALUES"
#define CHAIN_SQL_TAIL                                                                             \
	"ON CONFLICT (writer_id) DO UPDATE SET last_seq = greatest(c.last_seq, "                   \
	"excluded.last_seq), updated_at = now()"

/* What PostgreSQL said when it refused rows: its code and the names it gave. */
struct refused {
	char sqlstate[6];
	char where[160]; /* ", constraint c, column x" or "": names, never values */
};

/*
 * Whether a failed COPY was PostgreSQL refusing what it was sent, for good:
 * a data exception (SQLSTATE class 22: bad encoding, a value out of range)
 * or an integrity violation (class 23: a CHECK, NOT NULL, a trigger's
 * refusal), which sending the same rows again would only repeat.  Every
 * other failure (connection, 08; a conflict or deadlock, 40; resources, 53;
 * an administrator, 57) may pass and is retried.  One exception: a
 * duplicate (writer_id, seq) means another process writes under this
 * chain's id, no fault of a row.  *why gets the code and names.
 */
static bool
refused_for_good(const PGresult *r, struct refused *why)
{
	const char *st = PQresultErrorField(r, PG_DIAG_SQLSTATE);
	const char *con = PQresultErrorField(r, PG_DIAG_CONSTRAINT_NAME);
	const char *col = PQresultErrorField(r, PG_DIAG_COLUMN_NAME);

	if (st == NULL || strlen(st) != 5 ||
	    (strncmp(st, "22", 2) != 0 && strncmp(st, "23", 2) != 0))
		return false;
	if (strcmp(st, "23505") == 0 && con != NULL &&
	    strcmp(con, "audit_events_writer_id_seq_key") == 0)
		return false;
	memcpy(why->sqlstate, st, 6);
	snprintf(why->where, sizeof(why->where), "%s%.64s%s%.64s",
	         con != NULL ? ", constraint " : "", con != NULL ? con : "",
	         col != NULL ? ", column " : "", col != NULL ? col : "");
	return true;
}

/*
 * One attempt to commit rows [0, n), consecutive in b.  IDP_OK when all of
 * them are durable.  IDP_EINVAL when PostgreSQL refused the COPY for good
 * (refused_for_good, described in *why): then none of them committed
 * and the session is kept.  IDP_EUNAVAIL for any other failure: the
 * session is closed, and whether the rows committed is for the next
 * attempt (retry) to find out.  Logs a refusal by its code and names only,
 * never PostgreSQL's message: its detail can quote the row.
 */
static int
write_rows(const struct idp_buf *b, const struct row *rows, int n, bool retry, struct refused *why)
{
	PGresult *r;
	char
	    sql[sizeof(COPY_SQL) + sizeof(CHAIN_SQL_HEAD) + sizeof(CHAIN_SQL_TAIL) + 3 * 320 + 128];
	char *lit;
	size_t from = 0, to;
	int first = 0, nth = 0;
	bool ok = true, refused = false;

	if (!writer_connect())
		return IDP_EUNAVAIL;
	if (retry) {
		int64_t max = committed_max();

		if (max < 0)
			goto lost;
		while (first < n && (int64_t)rows[first].seq <= max)
			first++;
		if (first == n)
			return IDP_OK;
	}
	from = rows[first].off;
	to = rows[n - 1].off + rows[n - 1].len;
	/*
	 * The COPY and the chain's upsert in one query string: PostgreSQL runs
	 * the statements of one simple query as one implicit transaction, so
	 * the rows and audit_chains commit together or not at all, in one
	 * round trip, committed (and flushed, with synchronous_commit) when
	 * the last result has arrived.  The chain's lock first, held to the
	 * commit (see CHAIN_LOCK_CLASS).
	 */
	lit = PQescapeLiteral(W.pg, W.chain_id, strlen(W.chain_id));
	if (lit == NULL)
		goto lost;
	snprintf(sql, sizeof(sql),
	         "SELECT pg_advisory_xact_lock(%d, hashtext(%s)); %s; %s (%s, %llu) %s",
	         CHAIN_LOCK_CLASS, lit, COPY_SQL, CHAIN_SQL_HEAD, lit,
	         (unsigned long long)rows[n - 1].seq, CHAIN_SQL_TAIL);
	PQfreemem(lit);
	if (!exec_ok(W.pg, sql, PGRES_COPY_IN))
		goto lost;
	if (PQputCopyData(W.pg, copy_head, sizeof(copy_head)) != 1 ||
	    PQputCopyData(W.pg, b->data + from, (int)(to - from)) != 1 ||
	    PQputCopyData(W.pg, copy_tail, sizeof(copy_tail)) != 1 || PQputCopyEnd(W.pg, NULL) != 1)
		goto lost;
	/* The COPY's result first, then the upsert's: only the COPY's rows
	 * can be at fault. */
	while ((r = PQgetResult(W.pg)) != NULL) {
		if (PQresultStatus(r) != PGRES_COMMAND_OK) {
			if (ok && nth == 0 && refused_for_good(r, why)) {
				refused = true;
				log_debug(
				    "audit: PostgreSQL refused %d row(s) of a batch: SQLSTATE %s%s",
				    n - first, why->sqlstate, why->where);
			} else if (ok) {
				log_warn("audit: writing a batch: %s", PQresultErrorMessage(r));
			}
			ok = false;
		}
		nth++;
		PQclear(r);
	}
	if (ok)
		return IDP_OK;
	/* PostgreSQL answered, and the session is idle again. */
	if (refused && PQstatus(W.pg) == CONNECTION_OK && PQtransactionStatus(W.pg) == PQTRANS_IDLE)
		return IDP_EINVAL;
lost:
	/* Start over on a fresh session: whatever state this one is in. */
	PQfinish(W.pg);
	W.pg = NULL;
	atomic_store(&W.connected, false);
	return refused ? IDP_EINVAL : IDP_EUNAVAIL;
}

/*
 * What every emitter does before taking the lock: fill in what the emitter
 * left unset and serialize.  On failure the event is freed.
 */
static int
prepare(struct audit_event *ev, struct slot *sl)
{
	if (ev == NULL)
		return IDP_EINVAL;
	/* Its canonical form is the row it came from, not what a setter changes. */
	if (audit_event_is_stored(ev)) {
		log_error("audit: bug: an event read back from a row was emitted again");
		audit_event_free(ev);
		return IDP_EINVAL;
	}
	if (audit_event_get(ev, AUDIT_F_ID) == NULL && audit_event_assign_id(ev) != IDP_OK) {
		audit_event_free(ev);
		return IDP_EINTERNAL;
	}
	if (audit_event_time(ev) == AUDIT_TIME_UNSET &&
	    audit_event_set_time(ev, idp_now_ms(idp_clock_system())) != IDP_OK) {
		audit_event_free(ev);
		return IDP_EINTERNAL;
	}
	/* W.instance is written once, before the writer runs, and read only. */
	if (audit_event_get(ev, AUDIT_F_INSTANCE_ID) == NULL && W.instance[0] != '\0' &&
	    audit_event_set(ev, AUDIT_F_INSTANCE_ID, W.instance) != IDP_OK)
		log_warn("audit: instance id rejected by the event model");
	sl->ev = ev;
	sl->canon = audit_event_canonical(ev, &sl->clen);
	sl->refused = NULL;
	return IDP_OK;
}

/* Put sl on the ring (caller holds W.lock and checked for room); its seq. */
static uint64_t
enqueue(const struct slot *sl)
{
	W.ring[(W.head + W.count) % W.cap] = *sl;
	W.count++;
	atomic_fetch_add(&W.queued, 1);
	pthread_cond_signal(&W.work);
	return ++W.enq_seq;
}

/* A refusal under W.lock: released, the event dropped and counted. */
static int
refuse_locked(struct slot *sl)
{
	pthread_mutex_unlock(&W.lock);
	audit_event_free(sl->ev);
	free(sl->canon);
	atomic_fetch_add(&W.refused, 1);
	return IDP_EUNAVAIL;
}

/*
 * Queue an event raised by the writer itself (a withdrawal, an alert).  The
 * writer cannot wait for its own commit or for space; it may use the
 * reserve past the emitters' room (see DESIGN), and only when that too is
 * full is the event refused: counted and logged, never silent.  IDP_OK
 * once queued, IDP_EUNAVAIL when refused.  Takes ownership of ev.  Writer
 * thread only (a test in a test build).
 */
IDP_STATIC int
enqueue_own(struct audit_event *ev)
{
	struct slot sl;

	if (prepare(ev, &sl) != IDP_OK)
		return IDP_EUNAVAIL;
	pthread_mutex_lock(&W.lock);
	if (W.count == W.cap) {
		log_error("audit: queue full, %s %s refused", audit_event_type_name(ev),
		          audit_event_detail_str(ev, "rule") ? audit_event_detail_str(ev, "rule")
		                                             : "event");
		return refuse_locked(&sl);
	}
	(void)enqueue(&sl);
	pthread_mutex_unlock(&W.lock);
	return IDP_OK;
}

/*
 * The event that says ev, just committed, records a request that was
 * answered 503 and undone: its emitter gave up waiting (audit.timeout)
 * while the batch's attempt was slow, not failed, so the event could not
 * be withdrawn from the batch.  NULL only on a bug.
 */
IDP_STATIC struct audit_event *
withdrawal(const struct audit_event *ev)
{
	static const enum audit_field copied[] = {
	    AUDIT_F_AGENT_ID, AUDIT_F_AGENT_TYPE, AUDIT_F_HUMAN_PRINCIPAL,
	    AUDIT_F_TASK_ID,  AUDIT_F_REQUEST_ID, AUDIT_F_SOURCE_ADDRESS,
	};
	struct audit_event *w = audit_event_new(AUDIT_AUDIT_WITHDRAWN, AUDIT_TIME_UNSET);
	int rc = IDP_OK;

	if (w == NULL)
		return NULL;
	audit_event_set_outcome(w, AUDIT_OUTCOME_ERROR);
	for (size_t i = 0; i < IDP_ARRAY_LEN(copied) && rc == IDP_OK; i++)
		rc = audit_event_set(w, copied[i], audit_event_get(ev, copied[i]));
	if (rc == IDP_OK)
		rc = audit_event_set_actor(w, AUDIT_ACTOR_SYSTEM, "audit");
	if (rc == IDP_OK)
		rc = audit_event_put_detail(w, "withdrawn_event_id",
		                            json_string(audit_event_get(ev, AUDIT_F_ID)));
	if (rc == IDP_OK)
		rc = audit_event_put_detail(w, "withdrawn_type",
		                            json_string(audit_event_type_name(ev)));
	if (rc == IDP_OK)
		rc = audit_event_put_detail(
		    w, "message",
		    json_string("committed after its emitter gave up waiting: the request it "
		                "records was answered 503; where that request was a change made "
		                "with its event, the change was rolled back, and this event "
		                "did not happen"));
	if (rc != IDP_OK) {
		log_error("audit: bug: cannot build the withdrawal of event %s",
		          audit_event_get(ev, AUDIT_F_ID));
		audit_event_free(w);
		return NULL;
	}
	return w;
}

/*
 * The event that records the loss of ev, which PostgreSQL refused for good
 * with SQLSTATE sqlstate: its id and type, nothing of its content (that is
 * what was refused, and it can hold personal data).  NULL only on a bug.
 */
IDP_STATIC struct audit_event *
refusal(const struct audit_event *ev, const char *sqlstate)
{
	struct audit_event *w = audit_event_new(AUDIT_AUDIT_EVENT_REFUSED, AUDIT_TIME_UNSET);
	int rc = IDP_OK;

	if (w == NULL)
		return NULL;
	audit_event_set_outcome(w, AUDIT_OUTCOME_ERROR);
	rc = audit_event_set_actor(w, AUDIT_ACTOR_SYSTEM, "audit");
	if (rc == IDP_OK)
		rc = audit_event_put_detail(w, "refused_event_id",
		                            json_string(audit_event_get(ev, AUDIT_F_ID)));
	if (rc == IDP_OK)
		rc = audit_event_put_detail(w, "refused_type",
		                            json_string(audit_event_type_name(ev)));
	if (rc == IDP_OK)
		rc = audit_event_put_detail(w, "sqlstate", json_string(sqlstate));
	if (rc == IDP_OK)
		rc = audit_event_put_detail(
		    w, "message",
		    json_string("PostgreSQL refused this event for good; it was dropped from its "
		                "batch and is not in the log. A request that waited for it was "
		                "answered 503"));
	if (rc != IDP_OK) {
		log_error("audit: bug: cannot build the refusal of event %s",
		          audit_event_get(ev, AUDIT_F_ID));
		audit_event_free(w);
		return NULL;
	}
	return w;
}

static bool
stopping_past_deadline(void)
{
	bool past;

	pthread_mutex_lock(&W.lock);
	past = W.stop && idp_mono_us() > W.stop_deadline_us;
	pthread_mutex_unlock(&W.lock);
	return past;
}

/*
 * Rows m, m+1, ... for the live events of batch[from, n), appended to b,
 * extending the chain from where it is.  Returns the new row count.
 */
static int
build_rows_from(struct slot *batch, int from, int n, struct idp_buf *b, struct row *rows, int m)
{
	for (int i = from; i < n; i++) {
		if (batch[i].ev == NULL)
			continue; /* its emitter gave up and cancelled it, or it was refused */
		rows[m].slot = i;
		if (build_row(&batch[i], b, &rows[m++]) != IDP_OK) {
			/* Only a bug can get here: valid events always serialize. */
			log_error("audit: cannot serialize an event; aborting to keep the chain "
			          "honest");
			abort();
		}
	}
	return m;
}

/* Rows of the batch's live events, extending the chain from where it is. */
static int
build_rows(struct slot *batch, int n, struct idp_buf *b, struct row *rows)
{
	idp_buf_reset(b);
	return build_rows_from(batch, 0, n, b, rows, 0);
}

/*
 * PostgreSQL refused row lo for good (as *why says) and rows [0, lo)
 * are committed: drop its event from the batch, as a cancellation would,
 * and number and chain the rows after it again from the row before it, so
 * the chain stays without a gap.  The loss is logged (id, type and code,
 * never the body), counted, marked in dropped[] for the emitter's answer,
 * and its audit.event_refused goes into *record (NULL when the refused
 * event was such a record itself: that one is only logged, so a refusal
 * that every row meets cannot feed itself).  Returns the new row count.
 * Writer thread only.
 */
static int
drop_refused(struct slot *batch, int n, struct idp_buf *b, struct row *rows, int lo,
             const struct refused *why, bool *dropped, struct audit_event **record)
{
	struct slot *sl = &batch[rows[lo].slot];
	const char *sqlstate = why->sqlstate;

	log_error("audit: PostgreSQL refused event %s (%s) for good, SQLSTATE %s%s: dropped, it is "
	          "not in the log",
	          audit_event_get(sl->ev, AUDIT_F_ID), audit_event_type_name(sl->ev), sqlstate,
	          why->where);
	atomic_fetch_add(&W.dropped, 1);
	dropped[rows[lo].slot] = true;
	*record = audit_event_type(sl->ev) == AUDIT_AUDIT_EVENT_REFUSED ? NULL
	                                                                : refusal(sl->ev, sqlstate);
	audit_event_free(sl->ev);
	free(sl->canon);
	sl->ev = NULL;
	sl->canon = NULL;
	W.chain_seq = rows[lo].seq - 1;
	memcpy(W.chain_hash, rows[lo].prev, AUDIT_HASH_LEN);
	b->len = rows[lo].off;
	if (b->data != NULL)
		b->data[b->len] = '\0';
	return build_rows_from(batch, rows[lo].slot + 1, n, b, rows, lo);
}

/*
 * Before each new attempt at a batch: drop the events whose emitters gave
 * up meanwhile, but only when PostgreSQL confirms none of the batch
 * committed (a lost COMMIT reply would otherwise make the rebuilt rows
 * differ from what is stored).  Then rebuild the rows from the chain state
 * before the batch.  Returns the new row count; -1 when there are events to
 * drop and PostgreSQL cannot say yet: then the batch is not written either
 * (PostgreSQL coming back between this check and the write would otherwise
 * let a given-up event through).
 */
static int
apply_cancellations(struct slot *batch, int n, int m, struct idp_buf *b, struct row *rows,
                    uint64_t chain_seq0, const uint8_t hash0[AUDIT_HASH_LEN])
{
	bool any = false;
	int64_t max;

	pthread_mutex_lock(&W.lock);
	for (int i = 0; i < n; i++)
		any |= W.inflight_cancel[i] && batch[i].ev != NULL;
	pthread_mutex_unlock(&W.lock);
	if (!any || m == 0)
		return m;
	if (!writer_connect())
		return -1;
	max = committed_max();
	if (max < 0)
		return -1;
	if ((uint64_t)max >= rows[0].seq)
		return m;
	pthread_mutex_lock(&W.lock);
	for (int i = 0; i < n; i++) {
		if (W.inflight_cancel[i] && batch[i].ev != NULL) {
			audit_event_free(batch[i].ev);
			free(batch[i].canon);
			batch[i].ev = NULL;
			batch[i].canon = NULL;
			atomic_fetch_add(&W.cancelled, 1);
		}
	}
	pthread_mutex_unlock(&W.lock);
	W.chain_seq = chain_seq0;
	memcpy(W.chain_hash, hash0, AUDIT_HASH_LEN);
	return build_rows(batch, n, b, rows);
}

static void cancel_queued(uint64_t seq);

static void
waiter_pop(struct waiter *out)
{
	*out = W.waiters[W.whead];
	W.whead = (W.whead + 1) % W.wcap;
	W.wcount--;
}

/* The waiters whose events are committed now, into out (room for max).
 * Caller holds W.lock. */
static int
waiters_committed(struct waiter *out, int max)
{
	int n = 0;

	while (n < max && W.wcount > 0 && W.waiters[W.whead].seq <= W.committed_seq)
		waiter_pop(&out[n++]);
	return n;
}

/*
 * The timer thread: fails the waiters whose deadline has passed, the
 * oldest first, and drops their events if still queued (cancel_queued), as
 * an emitter that waited would.  It sleeps until the oldest deadline; with
 * no waiter, for audit.timeout, since a waiter arriving meanwhile has a
 * deadline no earlier than that.  So no emitter has to wake it (a wake-up
 * per batch, measurable on the token path).
 */
static void *
timer_main(void *arg)
{
	struct waiter *due = idp_xcalloc((size_t)W.wcap, sizeof(*due));

	(void)arg;
	pthread_mutex_lock(&W.lock);
	while (!W.timer_stop) {
		int64_t now = idp_mono_us();
		int n = 0;

		while (W.wcount > 0 && W.waiters[W.whead].deadline_us <= now) {
			waiter_pop(&due[n]);
			cancel_queued(due[n].seq);
			n++;
		}
		if (n == 0) {
			int64_t at = W.wcount > 0 ? W.waiters[W.whead].deadline_us
			                          : now + W.o.timeout_ms * 1000;
			struct timespec ts = {(time_t)(at / 1000000), (long)(at % 1000000) * 1000};

			pthread_cond_timedwait(&W.timer_wake, &W.lock, &ts);
			continue;
		}
		atomic_fetch_add(&W.timeouts, (uint64_t)n);
		pthread_mutex_unlock(&W.lock);
		for (int i = 0; i < n; i++)
			due[i].done(due[i].arg, IDP_EUNAVAIL);
		pthread_mutex_lock(&W.lock);
	}
	pthread_mutex_unlock(&W.lock);
	free(due);
	return NULL;
}

/*
 * Whether audit_events takes a row at all, asked when the row at has just
 * been refused alone: the audit.event_refused record that would replace
 * it, at its place in the chain, is copied in a transaction that is rolled
 * back, so nothing is written.  1: taken, so the refused row is at fault;
 * 0: refused for good too, so the table refuses every row; -1: the session
 * failed (closed: the caller's retry reconnects).  Writer thread only.
 */
static int
probe_table(const struct slot *refused_sl, const struct row *at)
{
	struct audit_event *ev = refusal(refused_sl->ev, "00000");
	uint8_t hash[AUDIT_HASH_LEN];
	uint64_t seq = W.chain_seq;
	struct slot sl = {0};
	struct refused why;
	struct idp_buf b;
	struct row r;
	PGresult *res;
	int verdict = -1;

	if (ev == NULL || prepare(ev, &sl) != IDP_OK || sl.canon == NULL)
		goto out;
	/* Chained as the refused row was, then the chain put back. */
	memcpy(hash, W.chain_hash, sizeof(hash));
	W.chain_seq = at->seq - 1;
	memcpy(W.chain_hash, at->prev, sizeof(hash));
	idp_buf_init(&b, 0);
	verdict = build_row(&sl, &b, &r) == IDP_OK ? 1 : -1;
	W.chain_seq = seq;
	memcpy(W.chain_hash, hash, sizeof(hash));
	if (verdict != 1 || !writer_connect()) {
		verdict = -1;
		goto done;
	}
	verdict = -1;
	if (!exec_ok(W.pg, "BEGIN; " COPY_SQL, PGRES_COPY_IN))
		goto lost;
	if (PQputCopyData(W.pg, copy_head, sizeof(copy_head)) != 1 ||
	    PQputCopyData(W.pg, b.data + r.off, (int)r.len) != 1 ||
	    PQputCopyData(W.pg, copy_tail, sizeof(copy_tail)) != 1 || PQputCopyEnd(W.pg, NULL) != 1)
		goto lost;
	while ((res = PQgetResult(W.pg)) != NULL) {
		if (verdict == -1)
			verdict = PQresultStatus(res) == PGRES_COMMAND_OK ? 1
			          : refused_for_good(res, &why)           ? 0
			                                                  : -2;
		PQclear(res);
	}
	if (verdict == -2 || !exec_ok(W.pg, "ROLLBACK", PGRES_COMMAND_OK))
		goto lost;
	goto done;
lost:
	verdict = -1;
	PQfinish(W.pg);
	W.pg = NULL;
	atomic_store(&W.connected, false);
done:
	idp_buf_cleanup(&b);
out:
	if (sl.ev != NULL) {
		audit_event_free(sl.ev);
		free(sl.canon);
	}
	return verdict;
}

/*
 * Write the batch's rows (*m of them, in b) until all are committed:
 * returns true then, false when stopping past the deadline first, with
 * *lo the rows known committed.  A failure PostgreSQL may get over is
 * retried with back-off, dropping cancelled events first (see
 * apply_cancellations).  A refusal for good is looked for instead: the rows
 * are tried in halves, each committed piece moving on, until one row alone
 * is refused; it is dropped (drop_refused) and the rest written on.  So a
 * batch with k such rows costs about k * log2(batch) more transactions,
 * and one row PostgreSQL refuses for good cannot hold the writer up.  A
 * second row refused alone before any row commits is the table refusing
 * all (see below): that waits and fails closed.  Writer thread only.
 */
static bool
write_batch(struct slot *batch, int n, struct idp_buf *b, struct row *rows, int *m, int *lo,
            uint64_t chain_seq0, const uint8_t hash0[AUDIT_HASH_LEN], bool *dropped,
            struct audit_event **records)
{
	int backoff_ms = 50, span = *m;
	bool retry = false, again = false;

	*lo = 0;
	for (;;) {
		/* Cancellations only while none of the batch is committed. */
		int k = again && *lo == 0
		            ? apply_cancellations(batch, n, *m, b, rows, chain_seq0, hash0)
		            : *m;
		struct refused why = {"", ""};

		if (k >= 0) {
			int len, rc, probe;

			if (k != *m)
				span = k;
			*m = k;
			if (*lo == *m)
				return true;
			len = span < *m - *lo ? span : *m - *lo;
			rc = write_rows(b, rows + *lo, len, retry, &why);
			if (rc == IDP_OK) {
				*lo += len;
				span = *m - *lo;
				retry = false;
				W.refusing_logged = false;
				continue;
			}
			if (rc == IDP_EINVAL) {
				/* An answer: nothing of this attempt committed (retry
				 * stays as it was: an earlier attempt's rows may have). */
				again = true;
				atomic_fetch_add(&W.failures, 1);
				atomic_store(&W.failing, true);
				if (len > 1) {
					span = len / 2;
					continue;
				}
				/*
				 * A row is at fault only if the table takes others
				 * (probe_table): one refusing every row (a NOT NULL
				 * column added, no partition for today) drops
				 * nothing; the batch waits, as for PostgreSQL away,
				 * /readyz says so, and its emitters get 503.
				 */
				probe = probe_table(&batch[rows[*lo].slot], &rows[*lo]);
				if (probe == 1) {
					*m = drop_refused(batch, n, b, rows, *lo, &why, dropped,
					                  &records[rows[*lo].slot]);
					span = *m - *lo;
					continue;
				}
				if (probe == 0 && !W.refusing_logged) {
					log_error(
					    "audit: PostgreSQL refuses every row (SQLSTATE %s%s), "
					    "not one: no event is dropped; retrying until "
					    "audit_events takes rows again",
					    why.sqlstate, why.where);
					W.refusing_logged = true;
				}
			}
		}
		atomic_fetch_add(&W.failures, 1);
		atomic_store(&W.failing, true);
		retry = again = true;
		if (stopping_past_deadline())
			return false;
		{
			struct timespec ts = {backoff_ms / 1000,
			                      (long)(backoff_ms % 1000) * 1000000L};

			nanosleep(&ts, NULL);
		}
		backoff_ms = backoff_ms < 2000 ? backoff_ms * 2 : 2000;
	}
}

static void *
run(void *arg)
{
	struct slot *batch = idp_xcalloc((size_t)W.o.batch_max, sizeof(*batch));
	struct row *rows = idp_xcalloc((size_t)W.o.batch_max, sizeof(*rows));
	struct waiter *wake = idp_xcalloc((size_t)W.o.batch_max, sizeof(*wake));
	bool *gave_up = idp_xcalloc((size_t)W.o.batch_max, sizeof(*gave_up));
	bool *dropped = idp_xcalloc((size_t)W.o.batch_max, sizeof(*dropped));
	struct audit_event **records = idp_xcalloc((size_t)W.o.batch_max, sizeof(*records));
	struct idp_buf b;

	(void)arg;
	idp_buf_init(&b, 0);
	for (;;) {
		int n = 0, m, lo, n_wake = 0;
		bool written;
		uint8_t hash0[AUDIT_HASH_LEN];
		uint64_t chain_seq0, first;
		int64_t t0;

		pthread_mutex_lock(&W.lock);
		while (!W.stop && W.count == 0)
			pthread_cond_wait(&W.work, &W.lock);
		if (W.count == 0 && W.stop) {
			pthread_mutex_unlock(&W.lock);
			break;
		}
		if (W.o.batch_wait_ms > 0) {
			/* Let the batch fill, up to batch_max or the deadline: each
			 * emit wakes us, so wait again until one of the two. */
			struct timespec ts;

			deadline_in(&ts, W.o.batch_wait_ms);
			while (W.count < W.o.batch_max && !W.stop &&
			       pthread_cond_timedwait(&W.work, &W.lock, &ts) != ETIMEDOUT)
				;
		}
		W.inflight_first = W.enq_seq - (uint64_t)W.count + 1;
		while (n < W.o.batch_max && W.count > 0) {
			batch[n] = W.ring[W.head];
			W.inflight_cancel[n] = false;
			dropped[n] = false;
			records[n] = NULL;
			n++;
			memset(&W.ring[W.head], 0, sizeof(W.ring[W.head]));
			W.head = (W.head + 1) % W.cap;
			W.count--;
		}
		W.inflight_n = n;
		pthread_cond_broadcast(&W.space); /* room for blocked emitters */
		pthread_mutex_unlock(&W.lock);

		chain_seq0 = W.chain_seq;
		memcpy(hash0, W.chain_hash, sizeof(hash0));
		m = build_rows(batch, n, &b, rows);
		t0 = idp_mono_us();
		written =
		    write_batch(batch, n, &b, rows, &m, &lo, chain_seq0, hash0, dropped, records);
		if (written) {
			atomic_store(&W.failing, false);
			atomic_fetch_add(&W.commit_us, (uint64_t)(idp_mono_us() - t0));
			atomic_fetch_add(&W.batches, 1);
			atomic_fetch_add(&W.committed, (uint64_t)m);
			pthread_mutex_lock(&W.lock);
			for (uint64_t q = W.committed_seq + 1;
			     q <= W.committed_seq + (uint64_t)n && q <= W.committed_seq + DONE_WAYS;
			     q++)
				pthread_cond_broadcast(&W.done[q % DONE_WAYS]);
			W.committed_seq += (uint64_t)n;
			/* Emitters that gave up before this commit answered 503:
			 * their events, written all the same, are withdrawn below.
			 * Those still waiting for a refused event learn it failed. */
			for (int i = 0; i < n; i++) {
				gave_up[i] = W.inflight_cancel[i] && batch[i].ev != NULL;
				if (dropped[i] && !W.inflight_cancel[i] && batch[i].refused != NULL)
					*batch[i].refused = true;
			}
			W.inflight_n = 0;
			first = W.inflight_first;
			n_wake = waiters_committed(wake, W.o.batch_max);
			pthread_mutex_unlock(&W.lock);
			for (int i = 0; i < n_wake; i++) {
				bool lost = wake[i].seq >= first &&
				            wake[i].seq < first + (uint64_t)n &&
				            dropped[wake[i].seq - first];

				wake[i].done(wake[i].arg, lost ? IDP_EUNAVAIL : IDP_OK);
			}
		} else {
			/* Not cancelled ones: their emitters were answered 503, so
			 * nothing acknowledged is lost with them.  The others (an
			 * async emitter was acknowledged at enqueue) are lost
			 * events, which audit_writer_stop reports; those of rows
			 * [0, lo) are committed, and refused ones were counted
			 * when dropped. */
			pthread_mutex_lock(&W.lock);
			for (int j = lo; j < m; j++)
				W.unwritten += !W.inflight_cancel[rows[j].slot];
			pthread_mutex_unlock(&W.lock);
			log_error("audit: shutting down with %d event(s) of the batch in hand "
			          "unwritten (PostgreSQL unreachable)",
			          W.unwritten);
		}
		/* The withdrawals and refusals first, so that alerts never take
		 * the reserved room they need (see DESIGN): an event is one or
		 * the other, never both. */
		for (int i = 0; written && i < n; i++) {
			if (batch[i].ev != NULL && gave_up[i]) {
				struct audit_event *w = withdrawal(batch[i].ev);

				if (w != NULL)
					(void)enqueue_own(w);
			}
			if (records[i] != NULL)
				(void)enqueue_own(records[i]);
			records[i] = NULL;
		}
		for (int i = 0; !written && i < n; i++) {
			audit_event_free(records[i]); /* logged when dropped */
			records[i] = NULL;
		}
		for (int i = 0; i < n; i++) {
			if (batch[i].ev == NULL)
				continue;
			/* An event whose emitter gave up is withdrawn: no rule counts it. */
			if (written && W.alerts != NULL && !gave_up[i]) {
				struct audit_event *raised[AUDIT_ALERTS_MAX_PER_EVENT];
				size_t k = audit_alerts_feed(W.alerts, batch[i].ev, raised);

				for (size_t j = 0; j < k; j++)
					(void)enqueue_own(raised[j]);
			}
			audit_event_free(batch[i].ev);
			free(batch[i].canon);
		}
		if (!written)
			break;
	}
	idp_buf_cleanup(&b);
	free(batch);
	free(rows);
	free(wake);
	free(gave_up);
	free(dropped);
	free(records);
	if (W.pg != NULL)
		PQfinish(W.pg);
	W.pg = NULL;
	atomic_store(&W.connected, false);
	audit_alerts_free(W.alerts);
	W.alerts = NULL;
	return NULL;
}

static void
collect(struct idp_buf *out, void *ctx)
{
	struct audit_writer_stats st;

	(void)ctx;
	audit_writer_get_stats(&st);
	if (idp_buf_printf(
	        out,
	        "# HELP idpd_audit_events_total Audit events by fate (dropped: refused for good by "
	        "PostgreSQL, not in the log).\n"
	        "# TYPE idpd_audit_events_total counter\n"
	        "idpd_audit_events_total{state=\"queued\"} %llu\n"
	        "idpd_audit_events_total{state=\"committed\"} %llu\n"
	        "idpd_audit_events_total{state=\"refused\"} %llu\n"
	        "idpd_audit_events_total{state=\"timed_out\"} %llu\n"
	        "idpd_audit_events_total{state=\"cancelled\"} %llu\n"
	        "idpd_audit_events_total{state=\"dropped\"} %llu\n"
	        "# HELP idpd_audit_queue_depth Events waiting for the writer.\n"
	        "# TYPE idpd_audit_queue_depth gauge\nidpd_audit_queue_depth %d\n"
	        "# HELP idpd_audit_batches_total Transactions committed by the writer.\n"
	        "# TYPE idpd_audit_batches_total counter\nidpd_audit_batches_total %llu\n"
	        "# HELP idpd_audit_batch_failures_total Batches that failed and were retried.\n"
	        "# TYPE idpd_audit_batch_failures_total counter\n"
	        "idpd_audit_batch_failures_total %llu\n"
	        "# HELP idpd_audit_commit_seconds_total Time spent writing batches.\n"
	        "# TYPE idpd_audit_commit_seconds_total counter\n"
	        "idpd_audit_commit_seconds_total %.6f\n"
	        "# HELP idpd_audit_writer_connected 1 when the writer has a session.\n"
	        "# TYPE idpd_audit_writer_connected gauge\nidpd_audit_writer_connected %d\n",
	        (unsigned long long)st.queued, (unsigned long long)st.committed,
	        (unsigned long long)st.refused, (unsigned long long)st.timeouts,
	        (unsigned long long)atomic_load(&W.cancelled), (unsigned long long)st.dropped,
	        st.depth, (unsigned long long)st.batches, (unsigned long long)st.failures,
	        (double)st.commit_us_total / 1e6, st.connected ? 1 : 0) != IDP_OK)
		log_warn("metrics: audit output truncated");
}

/* What audit_writer_start allocated; the URL (it may hold a password) wiped. */
static void
free_buffers(void)
{
	free(W.ring);
	W.ring = NULL;
	free(W.waiters);
	W.waiters = NULL;
	free(W.inflight_cancel);
	W.inflight_cancel = NULL;
	if (W.url != NULL)
		idp_wipe(W.url, strlen(W.url));
	free(W.url);
	W.url = NULL;
}

static void
timer_stop(void)
{
	pthread_mutex_lock(&W.lock);
	W.timer_stop = true;
	pthread_cond_signal(&W.timer_wake);
	pthread_mutex_unlock(&W.lock);
	pthread_join(W.timer, NULL);
}

/*
 * Whether id can name the chain: it is in every row's writer_id, so text
 * PostgreSQL refuses (a host name of bytes that are not UTF-8) would have
 * every event refused; and it must fit W.instance whole.  The event model's
 * rules for text decide.  NULL is the empty id.
 */
static bool
instance_ok(const char *id)
{
	struct audit_event *probe;
	bool ok;

	if (id == NULL)
		return true;
	if (strlen(id) >= sizeof(W.instance))
		return false;
	probe = audit_event_new(AUDIT_AUDIT_VERIFIED, AUDIT_TIME_UNSET);
	ok = probe != NULL && audit_event_set(probe, AUDIT_F_INSTANCE_ID, id) == IDP_OK;
	audit_event_free(probe);
	return ok;
}

int
audit_writer_start(const struct audit_writer_opts *o, struct idp_diag *diag)
{
	pthread_condattr_t ca;

	if (W.running) {
		idp_diag_add(diag, "audit writer already running");
		return IDP_EINVAL;
	}
	if (o->queue_max < 1 || o->batch_max < 1 || o->timeout_ms < 1 || o->url == NULL) {
		idp_diag_add(diag, "audit: queue_max, batch_max and timeout_ms must be positive");
		return IDP_EINVAL;
	}
	if (!instance_ok(o->instance_id)) {
		idp_diag_add(diag,
		             "audit: the instance id (node.instance_id, else hostname:pid) is "
		             "not valid UTF-8 text of at most 255 bytes; set node.instance_id");
		return IDP_EINVAL;
	}
	W.o = *o;
	W.url = idp_xstrdup(o->url);
	W.o.url = W.url;
	snprintf(W.instance, sizeof(W.instance), "%s", o->instance_id ? o->instance_id : "");
	W.o.instance_id = W.instance;
	snprintf(W.chain_id, sizeof(W.chain_id), "%s/%lld", W.instance,
	         (long long)idp_now_ms(idp_clock_system()));
	W.alerts = NULL;
	if (o->alerts != NULL &&
	    audit_alerts_new(o->alerts, idp_clock_system(), &W.alerts, diag) != IDP_OK) {
		free(W.url);
		return IDP_EINVAL;
	}
	W.o.alerts = NULL; /* borrowed only for the constructor */
	W.room = o->queue_max;
	W.cap = o->queue_max + o->batch_max;
	W.ring = idp_xcalloc((size_t)W.cap, sizeof(*W.ring));
	/* A waiter's event is queued or in the batch being written. */
	W.wcap = o->queue_max + o->batch_max;
	W.waiters = idp_xcalloc((size_t)W.wcap, sizeof(*W.waiters));
	W.whead = W.wcount = 0;
	W.timer_stop = false;
	W.inflight_cancel = idp_xcalloc((size_t)o->batch_max, sizeof(*W.inflight_cancel));
	W.inflight_first = 0;
	W.inflight_n = 0;
	W.head = W.count = 0;
	W.enq_seq = W.committed_seq = 0;
	W.stop = false;
	W.unwritten = 0;
	W.chain_seq = 0;
	memcpy(W.chain_hash, audit_genesis_hash, sizeof(W.chain_hash));
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&W.work, &ca);
	pthread_cond_init(&W.space, &ca);
	for (int i = 0; i < DONE_WAYS; i++)
		pthread_cond_init(&W.done[i], &ca);
	pthread_cond_init(&W.timer_wake, &ca);
	pthread_condattr_destroy(&ca);
	if (pthread_create(&W.timer, NULL, timer_main, NULL) != 0) {
		idp_diag_add(diag, "audit: cannot start the timer thread");
		goto fail;
	}
	if (pthread_create(&W.thread, NULL, run, NULL) != 0) {
		idp_diag_add(diag, "audit: cannot start the writer thread");
		timer_stop();
		goto fail;
	}
	pthread_mutex_lock(&W.lock);
	W.running = true;
	pthread_mutex_unlock(&W.lock);
	if (metrics_register(collect, NULL) != IDP_OK)
		log_warn("metrics: too many collectors; audit metrics not exported");
	return IDP_OK;
fail:
	audit_alerts_free(W.alerts);
	W.alerts = NULL;
	free_buffers();
	return IDP_EINTERNAL;
}

int
audit_writer_stop(int64_t timeout_ms)
{
	struct waiter *failed;
	int left, n_failed;

	pthread_mutex_lock(&W.lock);
	if (!W.running) {
		pthread_mutex_unlock(&W.lock);
		return 0;
	}
	W.stop = true;
	W.running = false; /* new emits are refused from here on */
	W.stop_deadline_us = idp_mono_us() + timeout_ms * 1000;
	pthread_cond_signal(&W.work);
	pthread_mutex_unlock(&W.lock);
	pthread_join(W.thread, NULL);
	timer_stop();

	pthread_mutex_lock(&W.lock);
	/* The batch the writer gave up on, and what it never took. */
	left = W.unwritten + W.count;
	while (W.count > 0) {
		audit_event_free(W.ring[W.head].ev);
		free(W.ring[W.head].canon);
		W.head = (W.head + 1) % W.cap;
		W.count--;
	}
	/* Wake emitters still waiting: they will see the writer is gone. */
	pthread_cond_broadcast(&W.space);
	for (int i = 0; i < DONE_WAYS; i++)
		pthread_cond_broadcast(&W.done[i]);
	/* And tell those that did not wait: their events were not written. */
	n_failed = W.wcount;
	failed = idp_xcalloc((size_t)(n_failed > 0 ? n_failed : 1), sizeof(*failed));
	for (int i = 0; i < n_failed; i++)
		waiter_pop(&failed[i]);
	pthread_mutex_unlock(&W.lock);
	for (int i = 0; i < n_failed; i++)
		failed[i].done(failed[i].arg, IDP_EUNAVAIL);
	free(failed);
	pthread_cond_destroy(&W.timer_wake);
	free_buffers();
	return left;
}

/*
 * The emitter of event number seq gave up waiting (its request answers 503
 * and undoes its change): if the event is still queued, drop it, so the log
 * never records an action that did not happen.  If the writer already took
 * it, it may still be committed; docs/audit.md says what that means.
 * Caller holds W.lock.
 */
static void
cancel_queued(uint64_t seq)
{
	uint64_t first = W.enq_seq - (uint64_t)W.count + 1; /* seq of the slot at head */
	struct slot *sl;

	if (seq < first) {
		/* Already with the writer: flag it; the writer drops it before
		 * its next attempt if none of the batch has committed yet. */
		if (seq >= W.inflight_first && seq < W.inflight_first + (uint64_t)W.inflight_n)
			W.inflight_cancel[seq - W.inflight_first] = true;
		return;
	}
	sl = &W.ring[(W.head + (int)(seq - first)) % W.cap];
	audit_event_free(sl->ev);
	free(sl->canon);
	sl->ev = NULL;
	sl->canon = NULL;
	atomic_fetch_add(&W.cancelled, 1);
}

/* audit_emit and audit_emit_nowait: wait says whether to wait for room and, if sync, the commit. */
static int
emit(struct audit_event *ev, bool wait)
{
	struct slot sl;
	struct timespec deadline;
	uint64_t mine;
	bool refused = false;
	int rc;

	if ((rc = prepare(ev, &sl)) != IDP_OK)
		return rc;
	if (W.o.sync && wait)
		sl.refused = &refused;
	pthread_mutex_lock(&W.lock);
	if (!W.running)
		return refuse_locked(&sl);
	deadline_in(&deadline, W.o.timeout_ms);
	while (W.count >= W.room) {
		if (!wait || W.o.fail_closed || !W.running ||
		    pthread_cond_timedwait(&W.space, &W.lock, &deadline) == ETIMEDOUT)
			return refuse_locked(&sl);
	}
	mine = enqueue(&sl);
	if (W.o.sync && wait) {
		/* A stopped writer leaves committed_seq where it is; the
		 * deadline ends the wait either way. */
		while (W.committed_seq < mine) {
			if (pthread_cond_timedwait(&W.done[mine % DONE_WAYS], &W.lock, &deadline) ==
			    ETIMEDOUT) {
				if (W.committed_seq >= mine)
					break;
				atomic_fetch_add(&W.timeouts, 1);
				cancel_queued(mine);
				rc = IDP_EUNAVAIL;
				break;
			}
		}
		/* Settled, but PostgreSQL refused it: not in the log. */
		if (refused)
			rc = IDP_EUNAVAIL;
	}
	pthread_mutex_unlock(&W.lock);
	return rc;
}

int
audit_emit(struct audit_event *ev)
{
	return emit(ev, true);
}

int
audit_emit_nowait(struct audit_event *ev)
{
	return emit(ev, false);
}

int
audit_emit_then(struct audit_event *ev, audit_done_fn done, void *arg)
{
	struct slot sl;
	uint64_t mine;
	int rc;

	if (done == NULL) {
		audit_event_free(ev);
		return IDP_EINVAL;
	}
	if ((rc = prepare(ev, &sl)) != IDP_OK)
		return rc;
	pthread_mutex_lock(&W.lock);
	/* Never waits for room: a full queue is refused, as under fail_closed.
	 * The waiters ring holds every queued and in-flight event, so it has
	 * room whenever the queue has. */
	if (!W.running || W.count >= W.room || W.wcount == W.wcap)
		return refuse_locked(&sl);
	mine = enqueue(&sl);
	if (!W.o.sync) {
		pthread_mutex_unlock(&W.lock);
		return IDP_OK;
	}
	W.waiters[(W.whead + W.wcount) % W.wcap] =
	    (struct waiter){mine, done, arg, idp_mono_us() + W.o.timeout_ms * 1000};
	W.wcount++;
	pthread_mutex_unlock(&W.lock);
	return AUDIT_PENDING;
}

void
audit_writer_get_stats(struct audit_writer_stats *st)
{
	st->queued = atomic_load(&W.queued);
	st->committed = atomic_load(&W.committed);
	st->refused = atomic_load(&W.refused);
	st->timeouts = atomic_load(&W.timeouts);
	st->batches = atomic_load(&W.batches);
	st->commit_us_total = atomic_load(&W.commit_us);
	st->failures = atomic_load(&W.failures);
	st->dropped = atomic_load(&W.dropped);
	st->connected = atomic_load(&W.connected);
	pthread_mutex_lock(&W.lock);
	st->depth = W.count;
	pthread_mutex_unlock(&W.lock);
}

/*
 * Not "connected": the writer connects when it has something to write, so
 * an idle writer whose session dropped is still ready.  What stops events
 * from becoming durable is a batch that has failed and is being retried.
 */
const char *
audit_writer_unready(void *ctx)
{
	bool running;

	(void)ctx;
	pthread_mutex_lock(&W.lock);
	running = W.running && !W.stop;
	pthread_mutex_unlock(&W.lock);
	if (!running)
		return "audit_writer_stopped";
	return atomic_load(&W.failing) ? "audit_writer_failing" : NULL;
}

const char *
audit_writer_chain_id(void)
{
	return W.chain_id;
}
