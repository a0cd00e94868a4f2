/*
 * Unit tests of the revocation state without PostgreSQL: the chain walk
 * (root first, revoked ancestors, expiry, task state), joins that never
 * undo a revocation, the overlay merging into a new base, and failing
 * closed: before the first load, past revocation.max_staleness after the
 * listener is lost, and on a miss while the store cannot answer.  The
 * store points at a port nothing listens on; the staleness clock is a
 * variable the test moves.
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

#include "idpd/app.h"
#include "idpd/config.h"
#include "idpd/revocation.h"
#include "../../src/token/revocation_int.h"

/* Reached through IDP_STATIC in the test build. */
extern int64_t (*rev_mono_us)(void);
void on_lost(void *ctx);
void on_resync(void *ctx);
void rev_testing_load_empty(void);
void rev_testing_task(const char *id, const char *human, int64_t exp_s, bool closed);
uint64_t rev_testing_merges(void);
uint64_t rev_testing_gen(void);
bool settle(uint64_t g);
extern void (*rev_testing_settle_window)(void);

static int64_t fake_us;
static struct idpd_app app;

static int64_t
fake_mono(void)
{
	return fake_us;
}

/* The checks take the time as an argument; merges drop entries by the real clock. */
static int64_t NOW;
#define TASK "task_AAAAAAAAAAAAAAAAAAAAAA"
#define ROOT "rootjti-AAAAAAAAAAAAAA"
#define MID "midjti-AAAAAAAAAAAAAAA"
#define LEAF "leafjti-AAAAAAAAAAAAAA"

static int
group_setup(void **state)
{
	struct store_opts so = {.url = "postgresql://postgres@127.0.0.1:1/none",
	                        .pool_size = 1,
	                        .connect_timeout_ms = 1000,
	                        .acquire_timeout_ms = 200,
	                        .statement_timeout_ms = 1000};
	struct idp_diag d;

	(void)state;
	rev_mono_us = fake_mono;
	fake_us = 1000000;
	NOW = (int64_t)time(NULL);
	app.cfg = idpd_config_defaults();
	app.cfg->revocation.max_staleness_ms = 5000;
	app.store = store_open(&so);
	idp_diag_init(&d);
	/* The first load fails: nothing listens there. */
	if (revocation_init(&app, &d) != IDP_OK) {
		fprintf(stderr, "%s\n", idp_diag_str(&d));
		return -1;
	}
	return 0;
}

static int
group_teardown(void **state)
{
	(void)state;
	revocation_shutdown();
	store_close(app.store);
	idpd_config_free(app.cfg);
	return 0;
}

/* A task of alice's with a three-link chain: planner -> cloud -> sub. */
static void
three_links(void)
{
	rev_testing_load_empty();
	rev_testing_task(TASK, "alice@example.com", NOW + 3600, false);
	revocation_note_delegation(ROOT, NULL, TASK, "planner", "cloud:Describe* reports:write", 0,
	                           NOW - 60, NOW + 3600, false);
	revocation_note_delegation(MID, ROOT, TASK, "cloud", "cloud:Describe*", 1, NOW - 30,
	                           NOW + 1800, true);
	revocation_note_delegation(LEAF, MID, TASK, "sub", "cloud:DescribeInstances", 2, NOW - 10,
	                           NOW + 600, false);
}

static void
checks_fail_closed_before_the_first_load(void **state)
{
	const char *reason = NULL;

	(void)state;
	assert_int_equal(revocation_check_jti("somejti-AAAAAAAAAAAAAA"), IDP_EUNAVAIL);
	assert_int_equal(revocation_check_delegation(ROOT, TASK, NOW, true, NULL, &reason),
	                 IDP_EUNAVAIL);
}

static void
check_delegation_returns_the_chain_root_first(void **state)
{
	struct revocation_chain *c = NULL;
	const char *reason = NULL;

	(void)state;
	three_links();
	assert_int_equal(revocation_check_delegation(LEAF, TASK, NOW, true, &c, &reason), IDP_OK);
	assert_non_null(c);
	assert_string_equal(c->task_id, TASK);
	assert_string_equal(c->human, "alice@example.com");
	assert_int_equal(c->n, 3);
	assert_string_equal(c->links[0].jti, ROOT);
	assert_string_equal(c->links[0].agent_id, "planner");
	assert_int_equal(c->links[0].depth, 0);
	assert_string_equal(c->links[1].agent_id, "cloud");
	assert_string_equal(c->links[2].jti, LEAF);
	assert_string_equal(c->links[2].scope, "cloud:DescribeInstances");
	assert_int_equal(c->links[2].iat_s, NOW - 10);
	assert_int_equal(c->links[2].exp_s, NOW + 600);
	/* Which links a human approved (delegation.approvals counts them). */
	assert_false(c->links[0].approved);
	assert_true(c->links[1].approved);
	assert_false(c->links[2].approved);
	revocation_chain_free(c);
}

static void
revoked_ancestor_makes_descendants_revoked(void **state)
{
	const char *reason = NULL;
	struct revocation_chain *c = (void *)1;

	(void)state;
	three_links();
	rev_note_revoked_delegation(MID);
	assert_int_equal(revocation_check_delegation(LEAF, TASK, NOW, true, &c, &reason),
	                 IDP_EFORBIDDEN);
	assert_null(c);
	assert_string_equal(reason, "token_revoked");
	assert_int_equal(revocation_check_delegation(MID, TASK, NOW, true, NULL, &reason),
	                 IDP_EFORBIDDEN);
	/* The parent is untouched. */
	assert_int_equal(revocation_check_delegation(ROOT, TASK, NOW, true, NULL, &reason), IDP_OK);
	/* A late fact saying the token is alive does not revive it. */
	revocation_note_delegation(MID, ROOT, TASK, "cloud", "cloud:Describe*", 1, NOW - 30,
	                           NOW + 1800, false);
	assert_int_equal(revocation_check_delegation(LEAF, TASK, NOW, true, NULL, &reason),
	                 IDP_EFORBIDDEN);
	assert_string_equal(reason, "token_revoked");
}

static void
a_revoked_jti_record_revokes_a_delegation_token_too(void **state)
{
	const char *reason = NULL;

	(void)state;
	three_links();
	assert_int_equal(revocation_check_jti(ROOT), IDP_OK);
	rev_note_revoked_jti(ROOT, NOW + 3600);
	assert_int_equal(revocation_check_jti(ROOT), IDP_EFORBIDDEN);
	assert_int_equal(revocation_check_delegation(LEAF, TASK, NOW, true, NULL, &reason),
	                 IDP_EFORBIDDEN);
	assert_string_equal(reason, "token_revoked");
}

static void
closed_or_expired_task_and_expired_links_are_refused(void **state)
{
	const char *reason = NULL;

	(void)state;
	three_links();
	/* Expired: the leaf at its exp, an ancestor past its own. */
	assert_int_equal(revocation_check_delegation(LEAF, TASK, NOW + 600, true, NULL, &reason),
	                 IDP_EFORBIDDEN);
	assert_string_equal(reason, "token_expired");
	assert_int_equal(revocation_check_delegation(MID, TASK, NOW + 1800, true, NULL, &reason),
	                 IDP_EFORBIDDEN);
	assert_string_equal(reason, "token_expired");
	/* Another task's id. */
	assert_int_equal(revocation_check_delegation(LEAF, "task_BBBBBBBBBBBBBBBBBBBBBB", NOW, true,
	                                             NULL, &reason),
	                 IDP_EFORBIDDEN);
	assert_string_equal(reason, "task_mismatch");
	/* Completed, by this instance's note and then by the row. */
	revocation_note_task_closed(TASK);
	assert_int_equal(revocation_check_delegation(LEAF, TASK, NOW, true, NULL, &reason),
	                 IDP_EFORBIDDEN);
	assert_string_equal(reason, "task_not_open");
	rev_testing_task(TASK, "alice@example.com", NOW + 3600, false);
	assert_int_equal(revocation_check_delegation(ROOT, TASK, NOW, true, NULL, &reason),
	                 IDP_EFORBIDDEN);
	assert_string_equal(reason, "task_not_open");

	/* A task past its own expiry. */
	rev_testing_load_empty();
	rev_testing_task(TASK, "alice@example.com", NOW + 100, false);
	revocation_note_delegation(ROOT, NULL, TASK, "planner", "cloud:Describe*", 0, NOW - 60,
	                           NOW + 3600, false);
	assert_int_equal(revocation_check_delegation(ROOT, TASK, NOW + 100, true, NULL, &reason),
	                 IDP_EFORBIDDEN);
	assert_string_equal(reason, "task_not_open");
}

static void
unknown_jti_with_store_down_is_unavailable_never_unknown(void **state)
{
	struct rev_view v;
	const char *reason = NULL;

	(void)state;
	three_links();
	/* Inline (may not block): the caller is told to move off the I/O thread. */
	assert_int_equal(
	    rev_view_delegation("otherjti-AAAAAAAAAAAAA", TASK, NOW, false, &v, &reason),
	    REV_WOULD_BLOCK);
	/* Allowed to read PostgreSQL, which cannot answer: 503, not "inactive". */
	assert_int_equal(
	    revocation_check_delegation("otherjti-AAAAAAAAAAAAA", TASK, NOW, true, NULL, &reason),
	    IDP_EUNAVAIL);
	/* A missing ancestor is a miss too. */
	revocation_note_delegation("orphanjti-AAAAAAAAAAAA", "gonejti-AAAAAAAAAAAAAA", TASK, "x",
	                           "a:b", 1, NOW, NOW + 60, false);
	assert_int_equal(
	    revocation_check_delegation("orphanjti-AAAAAAAAAAAA", TASK, NOW, true, NULL, &reason),
	    IDP_EUNAVAIL);
	/* Malformed ids never reach the store. */
	assert_int_equal(revocation_check_delegation("bad jti", TASK, NOW, true, NULL, &reason),
	                 IDP_EFORBIDDEN);
	assert_string_equal(reason, "token_unknown");
}

static void
state_answers_until_max_staleness_after_the_listener_is_lost(void **state)
{
	const char *reason = NULL;

	(void)state;
	three_links();
	on_lost(NULL);
	fake_us += 4900 * 1000;
	assert_int_equal(revocation_check_delegation(LEAF, TASK, NOW, true, NULL, &reason), IDP_OK);
	assert_int_equal(revocation_check_jti(LEAF), IDP_OK);
	fake_us += 200 * 1000;
	assert_int_equal(revocation_check_delegation(LEAF, TASK, NOW, true, NULL, &reason),
	                 IDP_EUNAVAIL);
	assert_int_equal(revocation_check_jti(LEAF), IDP_EUNAVAIL);
	/* Reconnected, but the reload cannot read the store: still stale. */
	on_resync(NULL);
	assert_int_equal(revocation_check_jti(LEAF), IDP_EUNAVAIL);
	/* A reload that succeeds makes it current again. */
	rev_testing_load_empty();
	assert_int_equal(revocation_check_jti(LEAF), IDP_OK);
}

static void
lose_the_listener(void)
{
	on_lost(NULL);
}

/*
 * A reload settling the state current while the listener is lost between
 * its check and its write: the loss's own marking finds the state stale
 * already, so settling must not then call it current.  It stays stale, and
 * past max_staleness every check fails closed.
 */
static void
a_loss_while_settling_leaves_the_state_stale(void **state)
{
	(void)state;
	three_links();
	on_lost(NULL);
	/* Reconnected; its reload fails here, so the state is still stale. */
	on_resync(NULL);
	rev_testing_settle_window = lose_the_listener;
	assert_false(settle(rev_testing_gen()));
	rev_testing_settle_window = NULL;
	fake_us += 5100 * 1000;
	assert_int_equal(revocation_check_jti(LEAF), IDP_EUNAVAIL);
	/* Reconnected and settled with nothing in between: current again. */
	on_resync(NULL);
	assert_true(settle(rev_testing_gen()));
	assert_int_equal(revocation_check_jti(LEAF), IDP_OK);
}

static void
overlay_merges_into_a_new_base_and_loses_nothing(void **state)
{
	const char *reason = NULL;
	uint64_t merges;
	char jti[32];

	(void)state;
	three_links();
	merges = rev_testing_merges();
	for (int i = 0; i < 1500; i++) {
		snprintf(jti, sizeof(jti), "bulkjti-%014d", i);
		revocation_note_delegation(jti, ROOT, TASK, "cloud", "cloud:Describe*", 1, NOW,
		                           NOW + 60, false);
		if (i % 3 == 0)
			rev_note_revoked_delegation(jti);
	}
	assert_true(rev_testing_merges() >= merges + 2);
	for (int i = 0; i < 1500; i++) {
		snprintf(jti, sizeof(jti), "bulkjti-%014d", i);
		assert_int_equal(revocation_check_delegation(jti, TASK, NOW, true, NULL, &reason),
		                 i % 3 == 0 ? IDP_EFORBIDDEN : IDP_OK);
	}
	assert_int_equal(revocation_check_delegation(LEAF, TASK, NOW, true, NULL, &reason), IDP_OK);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(checks_fail_closed_before_the_first_load),
	    cmocka_unit_test(check_delegation_returns_the_chain_root_first),
	    cmocka_unit_test(revoked_ancestor_makes_descendants_revoked),
	    cmocka_unit_test(a_revoked_jti_record_revokes_a_delegation_token_too),
	    cmocka_unit_test(closed_or_expired_task_and_expired_links_are_refused),
	    cmocka_unit_test(unknown_jti_with_store_down_is_unavailable_never_unknown),
	    cmocka_unit_test(state_answers_until_max_staleness_after_the_listener_is_lost),
	    cmocka_unit_test(overlay_merges_into_a_new_base_and_loses_nothing),
	    cmocka_unit_test(a_loss_while_settling_leaves_the_state_stale),
	};

	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
