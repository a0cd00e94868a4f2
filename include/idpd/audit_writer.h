/*
 * audit_writer.h - the one entry point every component emits through, and
 * the writer thread behind it.
 *
 * audit_emit() puts an event on a bounded queue.  One writer thread per
 * process takes batches off it, extends this process's hash chain over them
 * and commits each batch in one transaction (COPY into audit_events): group
 * commit, so durability costs one commit per batch, not per event.  With
 * durability "sync" (the default) audit_emit() returns only once its event
 * is committed; a token is therefore never handed out before its audit
 * event is durable.  audit_emit_then() does the same without blocking:
 * the writer calls back once the event is committed.
 *
 * The writer owns its own PostgreSQL connection (not a pooled one), so a
 * saturated pool cannot stall auditing.  When PostgreSQL is away the writer
 * keeps its batch and retries; emitters waiting for it give up after
 * audit.timeout with IDP_EUNAVAIL (the request answers 503), and their
 * events are written once PostgreSQL is back.  An event PostgreSQL refuses
 * for good (SQLSTATE class 22 or 23) is dropped from its batch instead,
 * failing its waiting emitter, and recorded by audit.event_refused.
 */
#ifndef IDPD_AUDIT_WRITER_H
#define IDPD_AUDIT_WRITER_H

#include <stdbool.h>
#include <stdint.h>

#include "idpd/audit.h"
#include "idpd/audit_alerts.h"

struct audit_writer_opts {
	const char *url;         /* PostgreSQL; the writer connects on its own */
	const char *instance_id; /* stamped on every event */
	int queue_max;           /* events waiting at most; the writer's own: batch_max more */
	int batch_max;           /* events per transaction at most */
	int64_t batch_wait_ms;   /* how long a batch may wait to fill; 0 = never */
	bool sync;               /* durability "sync" (true) or "async" */
	bool fail_closed;        /* on_full "fail_closed" (true) or "block" */
	int64_t timeout_ms;      /* how long an emitter waits (space, commit) */
	/* Detection rules fed with every committed event; NULL turns them off.
	 * The alerts they raise are queued like any event. */
	const struct audit_alert_config *alerts;
};

/*
 * Start the process's writer.  Fails (IDP_EINVAL) if one is running, or if
 * the instance id, which names the chain in every row, is not text the
 * event model accepts (UTF-8, no control character) of at most 255 bytes.
 * Connects lazily, so it starts while PostgreSQL is down.  Main thread.
 */
int audit_writer_start(const struct audit_writer_opts *o, struct idp_diag *diag) IDP_WUR;

/*
 * Write what is queued (waiting up to timeout_ms), stop the thread, close
 * the connection.  Returns the number of events left unwritten: those still
 * queued and those of the batch the writer held, acknowledged or not (an
 * async emitter was answered at enqueue).  Main thread.
 */
int audit_writer_stop(int64_t timeout_ms);

/*
 * Emit one event.  ALWAYS takes ownership of ev, also when it fails.
 * Fills in what the emitter left unset: id (a UUID), time (now) and
 * instance id.  Returns IDP_OK once the event is committed (sync) or queued
 * (async); IDP_EUNAVAIL when no writer runs, the queue is full under
 * fail_closed, the wait passed audit.timeout, or (sync) PostgreSQL refused
 * the event for good and it was dropped.  IDP_EINVAL for NULL.
 * Any thread.
 */
int audit_emit(struct audit_event *ev) IDP_WUR;
/*
 * The same for an event no answer depends on (an introspection that found
 * a token inactive): queued without waiting for room or for the commit,
 * so a flood of such events can neither slow the requests nor block them.
 * IDP_EUNAVAIL when no writer runs or the queue is full: the event is
 * dropped and counted as refused.  Takes ownership.  Any thread.
 */
int audit_emit_nowait(struct audit_event *ev) IDP_WUR;

/*
 * Called once an event emitted with audit_emit_then is settled: rc is
 * IDP_OK when it is committed, IDP_EUNAVAIL when audit.timeout passed first
 * or the writer stopped without writing it (it may still be committed
 * later, as with audit_emit), or PostgreSQL refused it for good (dropped,
 * never committed).  Runs on the writer's thread, the audit
 * timer's, or the one calling audit_writer_stop, outside every audit lock:
 * keep it short and never emit from it.
 */
typedef void (*audit_done_fn)(void *arg, int rc);
#define AUDIT_PENDING 1
/*
 * audit_emit for a thread that must not wait (an HTTP I/O thread): the
 * event is queued and the call returns at once.  Returns AUDIT_PENDING when
 * done(arg, rc) will be called, exactly once, from another thread; IDP_OK
 * when there is nothing to wait for (durability "async": the event is
 * queued) and done is not called; IDP_EUNAVAIL when no writer runs or the
 * queue is full (never waits for room), IDP_EINVAL for NULL, and then done
 * is not called either.  ALWAYS takes ownership of ev.  Any thread.
 */
int audit_emit_then(struct audit_event *ev, audit_done_fn done, void *arg) IDP_WUR;
struct audit_writer_stats {
	uint64_t queued;    /* accepted onto the queue */
	uint64_t committed; /* written and committed */
	uint64_t refused;   /* refused: queue full (fail_closed) or no writer */
	uint64_t timeouts;  /* emitters that gave up waiting */
	uint64_t batches;
	uint64_t commit_us_total;
	uint64_t failures; /* attempts at a batch that failed */
	uint64_t dropped;  /* refused for good by PostgreSQL: not in the log */
	int depth;         /* waiting now */
	bool connected;
};
void audit_writer_get_stats(struct audit_writer_stats *st);

/* This process's chain id ("<instance>/<start ms>"); "" before start. */
const char *audit_writer_chain_id(void);

/*
 * A readiness check (app_on_ready): NULL while events can become durable;
 * "audit_writer_failing" while a batch is failing to commit (PostgreSQL
 * unreachable or refusing it), "audit_writer_stopped" when no writer runs.
 */
const char *audit_writer_unready(void *ctx);

#endif /* IDPD_AUDIT_WRITER_H */
