/*
 * Unit tests for the audit queue's room (src/audit/writer.c): the writer's
 * own events (withdrawals, alerts) have a reserve past what emitters may
 * fill, so a queue full of ordinary events still takes a withdrawal.  The
 * writer points at a port where nothing listens: it takes its first batch
 * and retries it for ever, so what is queued afterwards stays queued.
 * Writing to PostgreSQL is tested in tests/integration/test_audit_writer.c.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <cmocka.h>

#include "idpd/audit_writer.h"

/* writer.c's static functions, visible in test builds. */
int enqueue_own(struct audit_event *ev);
struct audit_event *withdrawal(const struct audit_event *ev);
struct audit_event *refusal(const struct audit_event *ev, const char *sqlstate);

#define QUEUE_MAX 16
#define BATCH_MAX 4 /* the reserve */

static struct audit_event *
ordinary(void)
{
	struct audit_event *ev = audit_event_new(AUDIT_TOOL_INVOCATION, AUDIT_TIME_UNSET);

	assert_non_null(ev);
	assert_int_equal(audit_event_set(ev, AUDIT_F_AGENT_ID, "queue-test-agent"), IDP_OK);
	assert_int_equal(audit_event_set(ev, AUDIT_F_TOOL, "aws_ec2_describe_instances"), IDP_OK);
	return ev;
}

/* The withdrawal of an ordinary event, as the writer makes one. */
static struct audit_event *
a_withdrawal(void)
{
	struct audit_event *ev = ordinary(), *w;

	assert_int_equal(audit_event_assign_id(ev), IDP_OK);
	w = withdrawal(ev);
	audit_event_free(ev);
	assert_non_null(w);
	assert_int_equal(audit_event_type(w), AUDIT_AUDIT_WITHDRAWN);
	return w;
}

static int
depth(void)
{
	struct audit_writer_stats st;

	audit_writer_get_stats(&st);
	return st.depth;
}

static uint64_t
refused(void)
{
	struct audit_writer_stats st;

	audit_writer_get_stats(&st);
	return st.refused;
}

/* Start a writer that can never connect, and wait until it holds one
 * event as its batch in hand: the ring is then empty and stays as filled. */
static void
start_stuck(void)
{
	struct audit_writer_opts o = {0};
	struct idp_diag d;

	o.url = "postgresql://postgres@127.0.0.1:1/none?connect_timeout=1";
	o.instance_id = "queue-test";
	o.queue_max = QUEUE_MAX;
	o.batch_max = BATCH_MAX;
	o.sync = false; /* queued is all an emitter waits for */
	o.fail_closed = true;
	o.timeout_ms = 1000;
	idp_diag_init(&d);
	if (audit_writer_start(&o, &d) != IDP_OK)
		fail_msg("audit_writer_start: %s", idp_diag_str(&d));
	assert_int_equal(audit_emit_nowait(ordinary()), IDP_OK);
	for (int i = 0; i < 500 && depth() != 0; i++) {
		struct timespec ts = {0, 10 * 1000 * 1000};

		nanosleep(&ts, NULL);
	}
	assert_int_equal(depth(), 0);
}

static void
a_full_queue_still_takes_a_withdrawal(void **state)
{
	uint64_t before;

	(void)state;
	start_stuck();
	for (int i = 0; i < QUEUE_MAX; i++)
		assert_int_equal(audit_emit_nowait(ordinary()), IDP_OK);
	assert_int_equal(depth(), QUEUE_MAX);
	/* Full for ordinary events, whichever way they come. */
	before = refused();
	assert_int_equal(audit_emit_nowait(ordinary()), IDP_EUNAVAIL);
	assert_int_equal(audit_emit(ordinary()), IDP_EUNAVAIL);
	assert_int_equal(refused(), before + 2);

	/* A withdrawal gets in... */
	assert_int_equal(enqueue_own(a_withdrawal()), IDP_OK);
	assert_int_equal(depth(), QUEUE_MAX + 1);
	/* ...and the room it used is no room for one more ordinary event. */
	assert_int_equal(audit_emit_nowait(ordinary()), IDP_EUNAVAIL);
	assert_int_equal(depth(), QUEUE_MAX + 1);

	/* The reserve is bounded: batch_max of the writer's own events. */
	for (int i = 1; i < BATCH_MAX; i++)
		assert_int_equal(enqueue_own(a_withdrawal()), IDP_OK);
	assert_int_equal(depth(), QUEUE_MAX + BATCH_MAX);
	before = refused();
	assert_int_equal(enqueue_own(a_withdrawal()), IDP_EUNAVAIL);
	assert_int_equal(refused(), before + 1);
	assert_int_equal(depth(), QUEUE_MAX + BATCH_MAX);

	/* Every one unwritten: the batch in hand and all that is queued. */
	assert_int_equal(audit_writer_stop(50), 1 + QUEUE_MAX + BATCH_MAX);
}

/*
 * The record of an event PostgreSQL refused names it by id and type and
 * gives the SQLSTATE, and copies none of its content: that is what was
 * refused (so copying it could have the record refused too), and it can
 * hold personal data.
 */
static void
a_refusal_names_the_event_and_copies_none_of_it(void **state)
{
	struct audit_event *ev = ordinary(), *r;
	struct idp_buf line;
	char *canon;

	(void)state;
	assert_int_equal(audit_event_assign_id(ev), IDP_OK);
	assert_int_equal(audit_event_set(ev, AUDIT_F_TASK_ID, "task-with-personal-data"), IDP_OK);
	r = refusal(ev, "23514");
	assert_non_null(r);
	assert_int_equal(audit_event_type(r), AUDIT_AUDIT_EVENT_REFUSED);
	assert_string_equal(audit_event_type_name(r), "audit.event_refused");
	assert_int_equal(audit_event_outcome(r), AUDIT_OUTCOME_ERROR);
	assert_int_equal(audit_event_severity(r), 7);
	assert_string_equal(audit_event_detail_str(r, "refused_event_id"),
	                    audit_event_get(ev, AUDIT_F_ID));
	assert_string_equal(audit_event_detail_str(r, "refused_type"), "tool_invocation");
	assert_string_equal(audit_event_detail_str(r, "sqlstate"), "23514");
	canon = audit_event_canonical(r, NULL);
	assert_null(strstr(canon, "queue-test-agent"));
	assert_null(strstr(canon, "task-with-personal-data"));
	assert_null(strstr(canon, "aws_ec2_describe_instances"));
	free(canon);
	/* The SIEM formats have a name for it. */
	idp_buf_init(&line, 0);
	assert_int_equal(audit_format_line(AUDIT_FORMAT_CEF, r, "1.0", &line), IDP_OK);
	assert_non_null(
	    strstr(line.data, "|audit.event_refused|Audit event refused by the database|7|"));
	idp_buf_cleanup(&line);
	audit_event_free(r);
	audit_event_free(ev);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(a_full_queue_still_takes_a_withdrawal),
	    cmocka_unit_test(a_refusal_names_the_event_and_copies_none_of_it),
	};

	return cmocka_run_group_tests_name("audit_queue", tests, NULL, NULL);
}
