/*
 * Unit tests for the key manager (src/token/keys.c): the rotation rules
 * under a fixed clock, including a simulated year of scheduled and demanded
 * rotations; snapshots built from sealed rows with the right and the wrong
 * KEK; the KEK check; and the signing key's not-after, reference counts and
 * swaps under concurrent readers.  Everything that needs PostgreSQL is in
 * tests/integration/test_keys.c.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <sys/socket.h>
#include <unistd.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "idpd/clock.h"
#include "idpd/jws.h"
#include "idpd/kek.h"
#include "idpd/keys.h"
#include "idpd/store.h"

#include "../../src/token/keys_int.h"

#define KEK_A "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
#define KEK_B "1f1e1d1c1b1a191817161514131211100f0e0d0c0b0a09080706050403020100"

#define SEC INT64_C(1000)
#define HOUR (3600 * SEC)
#define DAY (24 * HOUR)
#define T0 INT64_C(1774621523000) /* 2026-03-27T14:25:23Z */

static const struct keys_policy policy = {
    .rotate_every_ms = 30 * DAY,
    .retire_after_ms = 24 * HOUR,
    .max_age_ms = 90 * DAY,
};

static struct keys_info
info(const char *kid, enum keys_state st, int64_t created, int64_t not_after)
{
	struct keys_info k;

	memset(&k, 0, sizeof(k));
	snprintf(k.kid, sizeof(k.kid), "%s", kid);
	snprintf(k.kek_id, sizeof(k.kek_id), "kek-0000000000000000");
	k.state = st;
	k.created_ms = created;
	k.not_after_ms = not_after;
	if (st == KEYS_ACTIVE)
		k.activated_ms = created;
	return k;
}

static void
plan_ok(const struct keys_info *live, size_t n, int64_t now, enum keys_trigger t,
        struct keys_plan *p)
{
	struct idp_diag d;

	idp_diag_init(&d);
	if (keys_plan_make(live, n, now, &policy, t, p, &d) != IDP_OK)
		fail_msg("plan failed: %s", idp_diag_str(&d));
}

static void
state_names_round_trip(void **state)
{
	(void)state;
	for (int s = KEYS_NEXT; s <= KEYS_RETIRED; s++)
		assert_int_equal(keys_state_parse(keys_state_name((enum keys_state)s)), s);
	assert_int_equal(keys_state_parse("ACTIVE"), -1);
	assert_int_equal(keys_state_parse(NULL), -1);
	assert_null(keys_state_name((enum keys_state)9));
}

static void
plan_first_start_makes_an_active_and_a_next_key(void **state)
{
	struct keys_plan p;

	(void)state;
	plan_ok(NULL, 0, T0, KEYS_TRIGGER_START, &p);
	assert_true(p.generate_active);
	assert_true(p.generate_next);
	assert_int_equal(p.promote, -1);
	assert_int_equal(p.demote, -1);
	assert_int_equal(p.n_retire, 0);
	assert_string_equal(p.why, "first_key");
}

static void
plan_start_leaves_a_working_set_alone(void **state)
{
	struct keys_info live[2] = {info("a", KEYS_ACTIVE, T0, T0 + 90 * DAY),
	                            info("n", KEYS_NEXT, T0, T0 + 90 * DAY)};
	struct keys_plan p;

	(void)state;
	/* Even long past rotate_every: startup repairs, it does not rotate. */
	plan_ok(live, 2, T0 + 60 * DAY, KEYS_TRIGGER_START, &p);
	assert_true(keys_plan_empty(&p));
}

static void
plan_start_replaces_a_missing_next_key(void **state)
{
	struct keys_info live[1] = {info("a", KEYS_ACTIVE, T0, T0 + 90 * DAY)};
	struct keys_plan p;

	(void)state;
	plan_ok(live, 1, T0 + DAY, KEYS_TRIGGER_START, &p);
	assert_false(p.generate_active);
	assert_true(p.generate_next);
	assert_int_equal(p.demote, -1);
	assert_string_equal(p.why, "no_next_key");
}

static void
plan_schedule_rotates_only_when_rotate_every_has_passed(void **state)
{
	struct keys_info live[2] = {info("a", KEYS_ACTIVE, T0, T0 + 90 * DAY),
	                            info("n", KEYS_NEXT, T0, T0 + 90 * DAY)};
	struct keys_plan p;

	(void)state;
	plan_ok(live, 2, T0 + 30 * DAY - 1, KEYS_TRIGGER_SCHEDULE, &p);
	assert_true(keys_plan_empty(&p));

	plan_ok(live, 2, T0 + 30 * DAY, KEYS_TRIGGER_SCHEDULE, &p);
	assert_int_equal(p.promote, 1);
	assert_int_equal(p.demote, 0);
	assert_int_equal(p.demote_retire_after_ms, T0 + 30 * DAY + 24 * HOUR);
	assert_false(p.generate_active);
	assert_true(p.generate_next);
	assert_string_equal(p.why, "scheduled");
}

static void
plan_schedule_with_rotate_every_zero_waits_for_not_after(void **state)
{
	struct keys_info live[2] = {info("a", KEYS_ACTIVE, T0, T0 + 90 * DAY),
	                            info("n", KEYS_NEXT, T0 + DAY, T0 + 91 * DAY)};
	struct keys_policy manual = policy;
	struct keys_plan p;
	struct idp_diag d;

	(void)state;
	manual.rotate_every_ms = 0;
	idp_diag_init(&d);
	assert_int_equal(
	    keys_plan_make(live, 2, T0 + 89 * DAY, &manual, KEYS_TRIGGER_SCHEDULE, &p, &d), IDP_OK);
	assert_true(keys_plan_empty(&p));
	assert_int_equal(
	    keys_plan_make(live, 2, T0 + 90 * DAY, &manual, KEYS_TRIGGER_SCHEDULE, &p, &d), IDP_OK);
	assert_int_equal(p.promote, 1);
	assert_int_equal(p.demote, 0);
	assert_string_equal(p.why, "expired");
	/* It signed until its not-after, which was now. */
	assert_int_equal(p.demote_retire_after_ms, T0 + 90 * DAY + 24 * HOUR);
}

static void
plan_demand_rotates_at_once(void **state)
{
	struct keys_info live[2] = {info("a", KEYS_ACTIVE, T0, T0 + 90 * DAY),
	                            info("n", KEYS_NEXT, T0, T0 + 90 * DAY)};
	struct keys_plan p;

	(void)state;
	plan_ok(live, 2, T0 + 1, KEYS_TRIGGER_DEMAND, &p);
	assert_int_equal(p.promote, 1);
	assert_int_equal(p.demote, 0);
	assert_int_equal(p.demote_retire_after_ms, T0 + 1 + 24 * HOUR);
	assert_true(p.generate_next);
	assert_string_equal(p.why, "on_demand");
}

static void
plan_expired_active_retires_from_its_not_after_not_from_now(void **state)
{
	struct keys_info live[2] = {info("a", KEYS_ACTIVE, T0, T0 + 90 * DAY),
	                            info("n", KEYS_NEXT, T0 + 30 * DAY, T0 + 120 * DAY)};
	struct keys_plan p;

	(void)state;
	/* The job did not run for 20 hours after the key stopped signing. */
	plan_ok(live, 2, T0 + 90 * DAY + 20 * HOUR, KEYS_TRIGGER_START, &p);
	assert_int_equal(p.demote, 0);
	assert_int_equal(p.demote_retire_after_ms, T0 + 90 * DAY + 24 * HOUR);
	assert_int_equal(p.promote, 1);
	assert_string_equal(p.why, "expired");
}

static void
plan_long_expired_active_is_retired_at_once(void **state)
{
	struct keys_info live[2] = {info("a", KEYS_ACTIVE, T0, T0 + 90 * DAY),
	                            info("n", KEYS_NEXT, T0 + 30 * DAY, T0 + 120 * DAY)};
	struct keys_plan p;

	(void)state;
	plan_ok(live, 2, T0 + 91 * DAY, KEYS_TRIGGER_SCHEDULE, &p);
	assert_int_equal(p.demote, -1);
	assert_int_equal(p.n_retire, 1);
	assert_int_equal(p.retire[0], 0);
	assert_int_equal(p.promote, 1);
	assert_true(p.generate_next);
}

static void
plan_retiring_key_retires_exactly_at_retire_after(void **state)
{
	struct keys_info live[3] = {info("a", KEYS_ACTIVE, T0, T0 + 90 * DAY),
	                            info("n", KEYS_NEXT, T0, T0 + 90 * DAY),
	                            info("r", KEYS_RETIRING, T0 - 30 * DAY, T0 + 60 * DAY)};
	struct keys_plan p;

	(void)state;
	live[2].retiring_ms = T0;
	live[2].retire_after_ms = T0 + 24 * HOUR;
	plan_ok(live, 3, T0 + 24 * HOUR - 1, KEYS_TRIGGER_SCHEDULE, &p);
	assert_true(keys_plan_empty(&p));
	plan_ok(live, 3, T0 + 24 * HOUR, KEYS_TRIGGER_SCHEDULE, &p);
	assert_int_equal(p.n_retire, 1);
	assert_int_equal(p.retire[0], 2);
	assert_int_equal(p.demote, -1);
	assert_int_equal(p.promote, -1);
	assert_false(p.generate_next);
	assert_string_equal(p.why, "served");
	/* Startup retires it too. */
	plan_ok(live, 3, T0 + 25 * HOUR, KEYS_TRIGGER_START, &p);
	assert_int_equal(p.n_retire, 1);
}

static void
plan_expired_next_is_retired_and_a_fresh_key_becomes_active_when_forced(void **state)
{
	struct keys_info live[2] = {info("a", KEYS_ACTIVE, T0, T0 + 90 * DAY),
	                            info("n", KEYS_NEXT, T0 - 10 * DAY, T0 + 80 * DAY)};
	struct keys_plan p;

	struct idp_diag d;

	(void)state;
	/* No next key to rotate to: an operator must force it. */
	idp_diag_init(&d);
	assert_int_equal(
	    keys_plan_make(live, 2, T0 + 80 * DAY, &policy, KEYS_TRIGGER_DEMAND, &p, &d),
	    IDP_EPRECOND);
	assert_non_null(strstr(idp_diag_str(&d), "no next key"));
	plan_ok(live, 2, T0 + 80 * DAY, KEYS_TRIGGER_FORCE, &p);
	assert_string_equal(p.why, "forced");
	assert_int_equal(p.n_retire, 1);
	assert_int_equal(p.retire[0], 1);
	assert_int_equal(p.promote, -1);
	assert_true(p.generate_active);
	assert_true(p.generate_next);
	assert_int_equal(p.demote, 0);
}

/* An active key 40 days into its life, a next key made at T0, keys published for 5 min. */
static void
aged_setting(struct keys_policy *aged, struct keys_info live[2], struct idp_diag *d)
{
	*aged = policy;
	aged->min_published_ms = 300 * SEC;
	live[0] = info("a", KEYS_ACTIVE, T0 - 40 * DAY, T0 + 50 * DAY);
	live[1] = info("n", KEYS_NEXT, T0, T0 + 90 * DAY);
	idp_diag_init(d);
}

/*
 * A next key signs only once every verifier's cached JWKS holds it: on
 * demand, a younger one is refused unless forced; on schedule, a due
 * rotation waits for it; a key that can no longer sign is replaced anyway.
 */
static void
plan_promotes_only_a_next_key_published_for_jwks_max_age(void **state)
{
	struct keys_policy aged;
	struct keys_info live[2];
	struct keys_plan p;
	struct idp_diag d;

	(void)state;
	aged_setting(&aged, live, &d);
	assert_int_equal(
	    keys_plan_make(live, 2, T0 + 299 * SEC, &aged, KEYS_TRIGGER_DEMAND, &p, &d),
	    IDP_EPRECOND);
	assert_non_null(strstr(idp_diag_str(&d), "has been published for 299s"));
	assert_true(keys_plan_empty(&p));
	/* Forced: promoted all the same. */
	idp_diag_init(&d);
	assert_int_equal(keys_plan_make(live, 2, T0 + 299 * SEC, &aged, KEYS_TRIGGER_FORCE, &p, &d),
	                 IDP_OK);
	assert_int_equal(p.promote, 1);
	assert_string_equal(p.why, "forced");
	/* Old enough: on demand. */
	assert_int_equal(
	    keys_plan_make(live, 2, T0 + 300 * SEC, &aged, KEYS_TRIGGER_DEMAND, &p, &d), IDP_OK);
	assert_int_equal(p.promote, 1);
	assert_string_equal(p.why, "on_demand");
	/* The active key is 40 days into a 30-day period: due, but the job waits. */
	assert_int_equal(
	    keys_plan_make(live, 2, T0 + 299 * SEC, &aged, KEYS_TRIGGER_SCHEDULE, &p, &d), IDP_OK);
	assert_true(keys_plan_empty(&p));
	assert_int_equal(
	    keys_plan_make(live, 2, T0 + 300 * SEC, &aged, KEYS_TRIGGER_SCHEDULE, &p, &d), IDP_OK);
	assert_int_equal(p.promote, 1);
	assert_string_equal(p.why, "scheduled");
	/* An active key past its not-after cannot sign: replaced by a young one. */
	live[1].created_ms = T0 + 50 * DAY - SEC;
	live[1].not_after_ms = T0 + 140 * DAY;
	assert_int_equal(
	    keys_plan_make(live, 2, T0 + 50 * DAY, &aged, KEYS_TRIGGER_SCHEDULE, &p, &d), IDP_OK);
	assert_int_equal(p.promote, 1);
	assert_string_equal(p.why, "expired");
	assert_int_equal(keys_plan_make(live, 2, T0 + 50 * DAY, &aged, KEYS_TRIGGER_DEMAND, &p, &d),
	                 IDP_OK);
	assert_int_equal(p.promote, 1);
}

/* A compromised active key is retired at once, not demoted, even for a young next key. */
static void
plan_compromise_retires_the_active_key_at_once(void **state)
{
	struct keys_policy aged;
	struct keys_info live[2];
	struct keys_plan p;
	struct idp_diag d;

	(void)state;
	aged_setting(&aged, live, &d);
	assert_int_equal(keys_plan_make(live, 2, T0 + SEC, &aged, KEYS_TRIGGER_COMPROMISE, &p, &d),
	                 IDP_OK);
	assert_int_equal(p.n_retire, 1);
	assert_int_equal(p.retire[0], 0);
	assert_int_equal(p.demote, -1);
	assert_int_equal(p.promote, 1);
	assert_true(p.generate_next);
	assert_string_equal(p.why, "compromise");
	assert_string_equal(keys_trigger_name(KEYS_TRIGGER_COMPROMISE), "compromise");
}

int compromise_plan(const struct keys_info *live, size_t n, size_t i, int64_t now,
                    const struct keys_policy *pol, struct keys_plan *plan, struct idp_diag *diag);

/*
 * A compromised next or retiring key is retired without a rotation, a next
 * key replaced; and when the active key has expired too, the retired next
 * key is not the one promoted: a fresh key becomes active.
 */
static void
plan_compromise_of_a_next_key_replaces_it(void **state)
{
	struct keys_policy aged;
	struct keys_info live[2];
	struct keys_plan p;
	struct idp_diag d;

	(void)state;
	aged_setting(&aged, live, &d);
	assert_int_equal(compromise_plan(live, 2, 1, T0 + SEC, &aged, &p, &d), IDP_OK);
	assert_int_equal(p.n_retire, 1);
	assert_int_equal(p.retire[0], 1);
	assert_int_equal(p.promote, -1);
	assert_int_equal(p.demote, -1);
	assert_false(p.generate_active);
	assert_true(p.generate_next);
	assert_string_equal(p.why, "compromise");
	/* The active key is past its not-after as well. */
	assert_int_equal(compromise_plan(live, 2, 1, T0 + 50 * DAY, &aged, &p, &d), IDP_OK);
	assert_int_equal(p.promote, -1);
	assert_true(p.generate_active);
	assert_true(p.generate_next);
	for (size_t r = 0; r < p.n_retire; r++)
		assert_true(p.retire[r] == 1 || (int)p.retire[r] != p.promote);
	assert_true(p.retire[0] == 1 || (p.n_retire > 1 && p.retire[1] == 1));
}

static void
plan_refuses_broken_tables(void **state)
{
	struct keys_info two_active[2] = {info("a", KEYS_ACTIVE, T0, T0 + DAY),
	                                  info("b", KEYS_ACTIVE, T0, T0 + DAY)};
	struct keys_info retired[1] = {info("r", KEYS_RETIRED, T0, T0 + DAY)};
	struct keys_plan p;
	struct idp_diag d;

	(void)state;
	idp_diag_init(&d);
	assert_int_equal(keys_plan_make(two_active, 2, T0, &policy, KEYS_TRIGGER_START, &p, &d),
	                 IDP_EINTERNAL);
	assert_non_null(strstr(idp_diag_str(&d), "two active signing keys: a and b"));
	idp_diag_init(&d);
	assert_int_equal(keys_plan_make(retired, 1, T0, &policy, KEYS_TRIGGER_START, &p, &d),
	                 IDP_EINTERNAL);
}

static void
plan_refuses_a_rotation_past_the_live_limit(void **state)
{
	struct keys_info live[KEYS_MAX_LIVE];
	struct keys_plan p;
	struct idp_diag d;

	(void)state;
	live[0] = info("a", KEYS_ACTIVE, T0, T0 + 90 * DAY);
	live[1] = info("n", KEYS_NEXT, T0, T0 + 90 * DAY);
	for (size_t i = 2; i < KEYS_MAX_LIVE; i++) {
		char kid[16];

		snprintf(kid, sizeof(kid), "r%zu", i);
		live[i] = info(kid, KEYS_RETIRING, T0 - DAY, T0 + 89 * DAY);
		live[i].retire_after_ms = T0 + (int64_t)i * HOUR;
	}
	idp_diag_init(&d);
	assert_int_equal(
	    keys_plan_make(live, KEYS_MAX_LIVE, T0, &policy, KEYS_TRIGGER_DEMAND, &p, &d),
	    IDP_ECONFLICT);
	assert_non_null(strstr(idp_diag_str(&d), "2026-03-27T16:25:23.000Z"));
	/* Once the first retiring key has served, there is room again. */
	idp_diag_init(&d);
	assert_int_equal(keys_plan_make(live, KEYS_MAX_LIVE, T0 + 2 * HOUR, &policy,
	                                KEYS_TRIGGER_DEMAND, &p, &d),
	                 IDP_OK);
	assert_int_equal(p.n_retire, 1);
}

/* ---- a simulated year ---- */

struct sim_key {
	struct keys_info info;
	bool retired;
};

struct sim {
	struct sim_key keys[256];
	size_t n;
	unsigned made;
	const struct keys_policy *pol;
	unsigned refused; /* demands refused for a next key too young */
};

static void
sim_new_key(struct sim *s, enum keys_state st, int64_t now)
{
	char kid[16];

	assert_true(s->n < IDP_ARRAY_LEN(s->keys));
	snprintf(kid, sizeof(kid), "k%u", s->made++);
	s->keys[s->n].info = info(kid, st, now, now + s->pol->max_age_ms);
	s->keys[s->n].retired = false;
	s->n++;
}

/* Run trigger at now and apply the plan as keys_change would. */
static void
sim_step(struct sim *s, int64_t now, enum keys_trigger t)
{
	struct keys_info live[KEYS_MAX_LIVE];
	size_t map[KEYS_MAX_LIVE], n = 0;
	struct keys_plan p;
	struct idp_diag d;
	int rc;

	for (size_t i = 0; i < s->n; i++) {
		if (s->keys[i].retired)
			continue;
		map[n] = i;
		live[n++] = s->keys[i].info;
	}
	idp_diag_init(&d);
	rc = keys_plan_make(live, n, now, s->pol, t, &p, &d);
	/* An operator's rotation refused for a young next key changes nothing. */
	if (rc == IDP_EPRECOND && t == KEYS_TRIGGER_DEMAND) {
		s->refused++;
		return;
	}
	if (rc != IDP_OK)
		fail_msg("plan failed: %s", idp_diag_str(&d));
	for (size_t i = 0; i < p.n_retire; i++) {
		s->keys[map[p.retire[i]]].retired = true;
		s->keys[map[p.retire[i]]].info.state = KEYS_RETIRED;
	}
	if (p.demote >= 0) {
		struct keys_info *k = &s->keys[map[p.demote]].info;

		k->state = KEYS_RETIRING;
		k->retiring_ms = now;
		k->retire_after_ms = p.demote_retire_after_ms;
	}
	if (p.promote >= 0) {
		struct keys_info *k = &s->keys[map[p.promote]].info;

		k->state = KEYS_ACTIVE;
		k->activated_ms = now;
	}
	if (p.generate_active)
		sim_new_key(s, KEYS_ACTIVE, now);
	if (p.generate_next)
		sim_new_key(s, KEYS_NEXT, now);
}

static const struct keys_info *
sim_find(const struct sim *s, enum keys_state st, unsigned *count)
{
	const struct keys_info *found = NULL;

	*count = 0;
	for (size_t i = 0; i < s->n; i++) {
		if (s->keys[i].info.state == st) {
			found = &s->keys[i].info;
			(*count)++;
		}
	}
	return found;
}

static bool
sim_published(const struct sim *s, const char *kid)
{
	for (size_t i = 0; i < s->n; i++)
		if (strcmp(s->keys[i].info.kid, kid) == 0)
			return !s->keys[i].retired;
	return false;
}

/*
 * The cleanup job runs every 6 hours; an operator rotates every 45 days.
 * Every token stays verifiable while it lives, no key signs past its
 * not-after, and a key that becomes active on schedule or on demand was
 * published for pol->min_published_ms first.
 */
static unsigned
lifecycle(const struct keys_policy *pol)
{
	struct sim *s = calloc(1, sizeof(*s));
	struct {
		char kid[IDP_JWS_MAX_KID + 1];
		int64_t exp;
	} tokens[64];
	size_t n_tokens = 0;
	unsigned rotations = 0, retirements = 0;
	char last_active[IDP_JWS_MAX_KID + 1] = "";
	unsigned refused;

	assert_non_null(s);
	s->pol = pol;
	sim_step(s, T0, KEYS_TRIGGER_START);
	for (int64_t now = T0; now < T0 + 400 * DAY; now += 6 * HOUR) {
		const struct keys_info *active, *next;
		unsigned n_active, n_next;
		size_t kept = 0;

		sim_step(s, now,
		         ((now - T0) / (6 * HOUR)) % 180 == 179 ? KEYS_TRIGGER_DEMAND
		                                                : KEYS_TRIGGER_SCHEDULE);
		active = sim_find(s, KEYS_ACTIVE, &n_active);
		next = sim_find(s, KEYS_NEXT, &n_next);
		assert_int_equal(n_active, 1);
		assert_int_equal(n_next, 1);
		/* Never signs at or past its not-after; the next key can still sign. */
		assert_true(now < active->not_after_ms);
		assert_true(now < next->not_after_ms);
		if (strcmp(last_active, active->kid) != 0) {
			/* Published long enough before it signs (none expire here). */
			if (last_active[0] != '\0')
				assert_true(now - active->created_ms >= pol->min_published_ms);
			rotations++;
			snprintf(last_active, sizeof(last_active), "%s", active->kid);
		}
		/* A token signed now with the longest lifetime the keys cover. */
		snprintf(tokens[n_tokens].kid, sizeof(tokens[0].kid), "%s", active->kid);
		tokens[n_tokens++].exp = now + pol->retire_after_ms;
		/* Every unexpired token still has its key published. */
		for (size_t i = 0; i < n_tokens; i++) {
			if (tokens[i].exp <= now)
				continue;
			if (!sim_published(s, tokens[i].kid))
				fail_msg("token signed by %s (exp %lld) unverifiable at %lld",
				         tokens[i].kid, (long long)tokens[i].exp, (long long)now);
			tokens[kept++] = tokens[i];
		}
		n_tokens = kept;
		assert_true(n_tokens < IDP_ARRAY_LEN(tokens));
	}
	for (size_t i = 0; i < s->n; i++)
		retirements += s->keys[i].retired;
	/* 400 days of 30-day rotations plus the demanded ones. */
	assert_true(rotations >= 14);
	assert_true(retirements >= 12);
	refused = s->refused;
	free(s);
	return refused;
}

static void
lifecycle_keeps_every_token_verifiable_and_never_signs_past_not_after(void **state)
{
	(void)state;
	assert_int_equal(lifecycle(&policy), 0);
}

/*
 * The same year with a next key that must be published for 20 days: the
 * operator's rotations that come earlier are refused, and every key that
 * becomes active was published that long (a scheduled rotation's wait is
 * plan_promotes_only_a_next_key_published_for_jwks_max_age's).
 */
static void
lifecycle_waits_for_next_keys_published_long_enough(void **state)
{
	struct keys_policy aged = policy;

	(void)state;
	aged.min_published_ms = 20 * DAY;
	assert_true(lifecycle(&aged) > 0);
}

/* ---- snapshots ---- */

static struct idp_kek *
kek(const char *hex)
{
	struct idp_kek *k = NULL;
	struct idp_diag d;

	idp_diag_init(&d);
	assert_int_equal(idp_kek_from_string(hex, &k, &d), IDP_OK);
	return k;
}

/* A stored row for a fresh key sealed with k; *key (if not NULL) gets the key. */
static void
make_row(struct keys_row *row, const struct idp_kek *k, enum keys_state st,
         struct idp_jws_key **key)
{
	struct idp_jws_key *jk = NULL;
	struct idp_diag d;
	json_t *jwk;

	memset(row, 0, sizeof(*row));
	idp_diag_init(&d);
	assert_int_equal(idp_jws_key_generate(NULL, &jk, &d), IDP_OK);
	assert_int_equal(idp_kek_seal_key(k, jk, &row->sealed, &row->sealed_len), IDP_OK);
	jwk = idp_jws_key_public_jwk(jk);
	row->public_jwk = json_dumps(jwk, JSON_COMPACT);
	json_decref(jwk);
	row->info = info(idp_jws_key_kid(jk), st, T0, T0 + 90 * DAY);
	idp_kek_id(k, row->info.kek_id);
	if (key != NULL)
		*key = jk;
	else
		idp_jws_key_unref(jk);
}

static struct keys_row *
make_rows(const struct idp_kek *k)
{
	struct keys_row *rows = calloc(3, sizeof(*rows));

	assert_non_null(rows);
	make_row(&rows[0], k, KEYS_NEXT, NULL);
	make_row(&rows[1], k, KEYS_RETIRING, NULL);
	make_row(&rows[2], k, KEYS_ACTIVE, NULL);
	rows[1].info.retire_after_ms = T0 + DAY;
	return rows;
}

static struct keys_snapshot *
build(const struct keys_row *rows, size_t n, const struct idp_kek *k,
      const struct keys_snapshot *prev, struct idp_diag *sd)
{
	struct keys_snapshot *s = NULL;
	struct idp_diag d;

	idp_diag_init(&d);
	if (sd != NULL)
		idp_diag_init(sd);
	if (keys_snapshot_build(rows, n, k, NULL, prev, &s, &d, sd) != IDP_OK)
		fail_msg("%s", idp_diag_str(&d));
	return s;
}

static void
snapshot_signs_with_active_and_publishes_next_active_retiring(void **state)
{
	struct idp_kek *k = kek(KEK_A);
	struct keys_row *rows = make_rows(k);
	struct keys_snapshot *s = build(rows, 3, k, NULL, NULL);
	json_t *doc, *keys;
	char *tok = NULL;
	struct idp_jws_verified v;
	struct idp_diag d;
	json_t *claims = json_pack("{s:s}", "sub", "agent-1");

	(void)state;
	assert_non_null(s->signing);
	assert_string_equal(idp_jws_key_kid(s->signing), rows[2].info.kid);
	assert_true(idp_jws_key_has_private(s->signing));
	assert_int_equal(s->signing_not_after_ms, T0 + 90 * DAY);
	assert_int_equal(idp_jws_keyset_count(s->verify), 3);
	assert_int_equal(s->n_info, 3);
	assert_int_equal(s->info[0].state, KEYS_ACTIVE);
	assert_int_equal(s->info[1].state, KEYS_NEXT);
	assert_int_equal(s->info[2].state, KEYS_RETIRING);
	/* The JWKS lists the three public keys and nothing private. */
	doc = json_loads(s->jwks, 0, NULL);
	assert_non_null(doc);
	keys = json_object_get(doc, "keys");
	assert_int_equal(json_array_size(keys), 3);
	for (size_t i = 0; i < 3; i++) {
		assert_null(json_object_get(json_array_get(keys, i), "d"));
		assert_string_equal(
		    json_string_value(json_object_get(json_array_get(keys, i), "kid")),
		    s->info[i].kid);
	}
	json_decref(doc);
	/* What the signing key signs, the verify set accepts. */
	idp_diag_init(&d);
	assert_int_equal(idp_jws_sign(s->signing, IDP_JWS_TYP_ACCESS, claims, &tok, NULL, &d),
	                 IDP_OK);
	assert_int_equal(idp_jws_verify(s->verify, tok, strlen(tok), NULL, &v, NULL), IDP_OK);
	assert_string_equal(v.kid, rows[2].info.kid);
	idp_jws_verified_cleanup(&v);
	free(tok);
	json_decref(claims);
	keys_snapshot_unref(s);
	keys_rows_free(rows, 3);
	idp_kek_free(k);
}

static void
snapshot_with_the_wrong_kek_trusts_only_the_keys_it_knew(void **state)
{
	struct idp_kek *a = kek(KEK_A), *b = kek(KEK_B);
	struct keys_row *rows = make_rows(a);
	struct idp_diag sd;
	struct keys_snapshot *s = build(rows, 3, b, NULL, &sd), *known, *again;

	(void)state;
	/* Starting with the wrong KEK: no row can be checked, none is trusted. */
	assert_null(s->signing);
	assert_int_equal(idp_jws_keyset_count(s->verify), 0);
	assert_non_null(strstr(idp_diag_str(&sd), rows[2].info.kid));
	assert_null(strstr(idp_diag_str(&sd), KEK_B));
	/* Keys it verified under its own KEK stay trusted when they move to
	 * another (a reseal before this instance has the new KEK). */
	known = build(rows, 3, a, NULL, NULL);
	again = build(rows, 3, b, known, NULL);
	assert_int_equal(idp_jws_keyset_count(again->verify), 3);
	assert_ptr_equal(again->signing, known->signing);
	keys_snapshot_unref(s);
	keys_snapshot_unref(known);
	keys_snapshot_unref(again);
	keys_rows_free(rows, 3);
	idp_kek_free(a);
	idp_kek_free(b);
}

static void
snapshot_reuses_the_loaded_active_key_without_decrypting(void **state)
{
	struct idp_kek *a = kek(KEK_A);
	struct keys_row *rows = make_rows(a);
	struct keys_snapshot *first = build(rows, 3, a, NULL, NULL), *second;

	(void)state;
	/* No KEK at all: the key can only come from the previous snapshot. */
	second = build(rows, 3, NULL, first, NULL);
	assert_ptr_equal(second->signing, first->signing);
	keys_snapshot_unref(first);
	/* The reference it took keeps the key alive. */
	assert_true(idp_jws_key_has_private(second->signing));
	keys_snapshot_unref(second);
	keys_rows_free(rows, 3);
	idp_kek_free(a);
}

static void
snapshot_leaves_out_a_public_jwk_that_names_another_key(void **state)
{
	struct idp_kek *a = kek(KEK_A);
	struct keys_row *rows = make_rows(a);
	struct keys_snapshot *s;

	(void)state;
	free(rows[1].public_jwk);
	rows[1].public_jwk = idp_xstrdup(rows[0].public_jwk);
	s = build(rows, 3, a, NULL, NULL);
	assert_int_equal(idp_jws_keyset_count(s->verify), 2);
	assert_null(idp_jws_keyset_find(s->verify, rows[1].info.kid));
	assert_null(strstr(s->jwks, rows[1].info.kid));
	assert_non_null(idp_jws_keyset_find(s->verify, rows[0].info.kid));
	assert_non_null(s->signing);
	keys_snapshot_unref(s);
	keys_rows_free(rows, 3);
	idp_kek_free(a);
}

/*
 * One unreadable row does not freeze the keys: the active key is retired
 * as compromised while a retiring row's public JWK is unreadable, and the
 * next snapshot still drops the retired key and signs with its successor.
 * With the active row itself unreadable nothing signs.
 */
static void
snapshot_skips_an_unreadable_row_and_still_drops_a_retired_key(void **state)
{
	struct idp_kek *a = kek(KEK_A);
	struct keys_row *rows = make_rows(a);
	struct keys_snapshot *first = build(rows, 3, a, NULL, NULL), *second, *third;
	char retired[IDP_JWS_MAX_KID + 1], junk[256];
	struct idp_diag sd;

	(void)state;
	snprintf(retired, sizeof(retired), "%s", rows[2].info.kid);
	/* The active key retired (no longer read as live), the next one active. */
	free(rows[2].public_jwk);
	free(rows[2].sealed);
	rows[2].public_jwk = NULL;
	rows[2].sealed = NULL;
	rows[0].info.state = KEYS_ACTIVE;
	rows[0].info.activated_ms = T0 + HOUR;
	snprintf(junk, sizeof(junk), "{\"kid\":\"%s\",\"kty\":\"EC\"}", rows[1].info.kid);
	free(rows[1].public_jwk);
	rows[1].public_jwk = idp_xstrdup(junk);
	second = build(rows, 2, a, first, NULL);
	assert_null(idp_jws_keyset_find(second->verify, retired));
	assert_null(idp_jws_keyset_find(second->verify, rows[1].info.kid));
	assert_int_equal(idp_jws_keyset_count(second->verify), 1);
	assert_non_null(second->signing);
	assert_string_equal(idp_jws_key_kid(second->signing), rows[0].info.kid);
	/* The active row unreadable too: nothing signs, and the reason names it. */
	free(rows[0].public_jwk);
	rows[0].public_jwk = idp_xstrdup("not json");
	third = build(rows, 2, a, second, &sd);
	assert_null(third->signing);
	assert_int_equal(idp_jws_keyset_count(third->verify), 0);
	assert_non_null(strstr(idp_diag_str(&sd), rows[0].info.kid));
	keys_snapshot_unref(first);
	keys_snapshot_unref(second);
	keys_snapshot_unref(third);
	keys_rows_free(rows, 3);
	idp_kek_free(a);
}

/* Replace row's public JWK with a new key's under the same kid, as someone
 * with write access to the table could. */
static void
swap_public_jwk(struct keys_row *row)
{
	struct idp_jws_key *other = NULL;
	json_t *jwk;

	assert_int_equal(idp_jws_key_generate(row->info.kid, &other, NULL), IDP_OK);
	jwk = idp_jws_key_public_jwk(other);
	free(row->public_jwk);
	row->public_jwk = json_dumps(jwk, JSON_COMPACT);
	json_decref(jwk);
	idp_jws_key_unref(other);
}

static void
snapshot_leaves_out_a_row_whose_public_jwk_was_swapped(void **state)
{
	struct idp_kek *a = kek(KEK_A);
	struct keys_row *rows = make_rows(a);
	struct keys_snapshot *first = build(rows, 3, a, NULL, NULL), *second, *third;

	(void)state;
	assert_int_equal(idp_jws_keyset_count(first->verify), 3);
	/* A retiring key swapped: left out, the others stay. */
	swap_public_jwk(&rows[1]);
	second = build(rows, 3, a, first, NULL);
	assert_int_equal(idp_jws_keyset_count(second->verify), 2);
	assert_null(strstr(second->jwks, rows[1].info.kid));
	assert_non_null(second->signing);
	/* The active key swapped: the loaded private key is not reused under
	 * another public key; nothing signs (503), nothing trusts the swap. */
	swap_public_jwk(&rows[2]);
	third = build(rows, 3, a, second, NULL);
	assert_null(third->signing);
	assert_int_equal(idp_jws_keyset_count(third->verify), 1);
	assert_null(strstr(third->jwks, rows[2].info.kid));
	keys_snapshot_unref(first);
	keys_snapshot_unref(second);
	keys_snapshot_unref(third);
	keys_rows_free(rows, 3);
	idp_kek_free(a);
}

/*
 * A row written behind idpd's back under a KEK it does not hold: someone's
 * own public key, junk for the sealed half, state retiring.  It is neither
 * published nor trusted, and a token signed with its key does not verify;
 * nor is a known kid whose public key is swapped under such a KEK.  The rows
 * idpd verified before stay trusted when relabelled with that KEK.
 */
static void
snapshot_leaves_out_a_new_key_under_a_kek_it_does_not_hold(void **state)
{
	struct idp_kek *a = kek(KEK_A);
	struct keys_row *rows = make_rows(a), *more;
	struct keys_snapshot *first = build(rows, 3, a, NULL, NULL), *second, *third;
	struct idp_jws_key *forger = NULL;
	struct idp_jws_verified v;
	enum idp_jws_reason why = IDP_JWS_OK;
	json_t *claims = json_pack("{s:s}", "sub", "spiffe://idpd.local/agent/victim");
	char *tok = NULL;

	(void)state;
	more = calloc(4, sizeof(*more));
	assert_non_null(more);
	memcpy(more, rows, 3 * sizeof(*rows));
	free(rows);
	make_row(&more[3], a, KEYS_RETIRING, &forger);
	more[3].info.retire_after_ms = T0 + DAY;
	snprintf(more[3].info.kek_id, sizeof(more[3].info.kek_id), "kek-0123456789abcdef");
	memset(more[3].sealed, 0x5a, more[3].sealed_len);
	second = build(more, 4, a, first, NULL);
	assert_int_equal(idp_jws_keyset_count(second->verify), 3);
	assert_null(idp_jws_keyset_find(second->verify, more[3].info.kid));
	assert_null(strstr(second->jwks, more[3].info.kid));
	assert_int_equal(second->n_info, 3);
	assert_int_equal(idp_jws_sign(forger, IDP_JWS_TYP_IDENTITY, claims, &tok, NULL, NULL),
	                 IDP_OK);
	assert_int_equal(idp_jws_verify(second->verify, tok, strlen(tok), NULL, &v, &why),
	                 IDP_EUNAUTH);
	assert_int_equal(why, IDP_JWS_KID_UNKNOWN);
	/* The known rows relabelled with that KEK stay; the next key, its public
	 * key swapped at the same time, does not. */
	for (size_t i = 0; i < 3; i++)
		snprintf(more[i].info.kek_id, sizeof(more[i].info.kek_id), "kek-0123456789abcdef");
	swap_public_jwk(&more[0]);
	third = build(more, 4, a, second, NULL);
	assert_int_equal(idp_jws_keyset_count(third->verify), 2);
	assert_null(idp_jws_keyset_find(third->verify, more[0].info.kid));
	assert_null(idp_jws_keyset_find(third->verify, more[3].info.kid));
	assert_ptr_equal(third->signing, first->signing);
	free(tok);
	json_decref(claims);
	idp_jws_key_unref(forger);
	keys_snapshot_unref(first);
	keys_snapshot_unref(second);
	keys_snapshot_unref(third);
	keys_rows_free(more, 4);
	idp_kek_free(a);
}

/* With the old KEK of a KEK change at hand, rows under it are opened and
 * checked as rows under idpd's own KEK are, even on a first load. */
static void
snapshot_checks_keys_under_the_old_kek_with_it(void **state)
{
	struct idp_kek *a = kek(KEK_A), *b = kek(KEK_B);
	struct keys_row *rows = make_rows(b);
	struct keys_snapshot *s = NULL;
	struct idp_diag d;

	(void)state;
	swap_public_jwk(&rows[0]);
	idp_diag_init(&d);
	assert_int_equal(keys_snapshot_build(rows, 3, a, b, NULL, &s, &d, NULL), IDP_OK);
	/* The retiring and active keys check out under b; the swapped next key does not. */
	assert_int_equal(idp_jws_keyset_count(s->verify), 2);
	assert_non_null(idp_jws_keyset_find(s->verify, rows[1].info.kid));
	assert_non_null(idp_jws_keyset_find(s->verify, rows[2].info.kid));
	assert_null(idp_jws_keyset_find(s->verify, rows[0].info.kid));
	keys_snapshot_unref(s);
	keys_rows_free(rows, 3);
	idp_kek_free(a);
	idp_kek_free(b);
}

static void
check_kek_accepts_the_kek_that_sealed_the_keys(void **state)
{
	struct idp_kek *a = kek(KEK_A);
	struct keys_row *rows = make_rows(a);
	struct idp_diag d;

	(void)state;
	idp_diag_init(&d);
	assert_int_equal(keys_check_kek(rows, 3, a, "$IDPD_KEK", &d), IDP_OK);
	assert_int_equal(d.count, 0);
	keys_rows_free(rows, 3);
	idp_kek_free(a);
}

static void
check_kek_names_both_kek_ids_and_no_secret(void **state)
{
	struct idp_kek *a = kek(KEK_A), *b = kek(KEK_B);
	struct keys_row *rows = make_rows(a);
	char ida[21], idb[21];
	struct idp_diag d;

	(void)state;
	idp_kek_id(a, ida);
	idp_kek_id(b, idb);
	idp_diag_init(&d);
	assert_int_equal(keys_check_kek(rows, 3, b, "keys.kek_file (/etc/idpd/kek)", &d),
	                 IDP_EFORBIDDEN);
	assert_non_null(strstr(idp_diag_str(&d), ida));
	assert_non_null(strstr(idp_diag_str(&d), idb));
	assert_non_null(strstr(idp_diag_str(&d), "keys.kek_file (/etc/idpd/kek)"));
	assert_non_null(strstr(idp_diag_str(&d), "nothing was changed"));
	assert_null(strstr(idp_diag_str(&d), KEK_A));
	assert_null(strstr(idp_diag_str(&d), KEK_B));
	keys_rows_free(rows, 3);
	idp_kek_free(a);
	idp_kek_free(b);
}

static void
check_kek_refuses_a_blob_that_does_not_open_under_a_matching_id(void **state)
{
	struct idp_kek *a = kek(KEK_A);
	struct keys_row *rows = make_rows(a);
	struct idp_diag d;

	(void)state;
	rows[2].sealed[rows[2].sealed_len / 2] ^= 1;
	idp_diag_init(&d);
	assert_int_equal(keys_check_kek(rows, 3, a, "$IDPD_KEK", &d), IDP_EFORBIDDEN);
	assert_non_null(strstr(idp_diag_str(&d), "damaged or was altered"));
	keys_rows_free(rows, 3);
	idp_kek_free(a);
}

static void
check_kek_refuses_a_private_key_that_does_not_match_its_jwk(void **state)
{
	struct idp_kek *a = kek(KEK_A);
	struct keys_row *rows = make_rows(a), other;
	struct idp_jws_key *ok = NULL;
	struct idp_diag d;

	(void)state;
	/* The active row's blob, re-sealed for its kid but holding another key. */
	make_row(&other, a, KEYS_ACTIVE, &ok);
	free(rows[2].sealed);
	{
		unsigned char *der;
		size_t len;

		assert_int_equal(idp_jws_key_private_der(ok, &der, &len), IDP_OK);
		assert_int_equal(idp_kek_seal(a, der, len, rows[2].info.kid,
		                              strlen(rows[2].info.kid), &rows[2].sealed,
		                              &rows[2].sealed_len),
		                 IDP_OK);
		idp_wipe(der, len);
		free(der);
	}
	idp_diag_init(&d);
	assert_int_equal(keys_check_kek(rows, 3, a, "$IDPD_KEK", &d), IDP_EFORBIDDEN);
	assert_non_null(strstr(idp_diag_str(&d), "does not match its public JWK"));
	idp_jws_key_unref(ok);
	free(other.public_jwk);
	free(other.sealed);
	keys_rows_free(rows, 3);
	idp_kek_free(a);
}

/* ---- the manager without a database ---- */

struct fixture {
	struct store *store;
	struct idp_clock clock;
	struct keys *km;
	struct keys_row *rows;
	struct idp_kek *kek;
};

static int
setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));
	struct store_opts so = {.url = "postgresql://nobody@127.0.0.1:1/none",
	                        .pool_size = 1,
	                        .connect_timeout_ms = 100,
	                        .acquire_timeout_ms = 100,
	                        .statement_timeout_ms = 100};
	struct keys_opts o = {.policy = policy, .jwks_max_age_ms = 300 * SEC};
	struct idp_diag d;

	assert_non_null(f);
	f->store = store_open(&so);
	idp_clock_fixed(&f->clock, T0);
	o.store = f->store;
	o.clock = &f->clock;
	f->kek = kek(KEK_A);
	f->rows = make_rows(f->kek);
	idp_diag_init(&d);
	assert_int_equal(keys_open(&o, kek(KEK_A), &f->km, &d), IDP_OK);
	*state = f;
	return 0;
}

static int
teardown(void **state)
{
	struct fixture *f = *state;

	keys_free(f->km);
	store_close(f->store);
	keys_rows_free(f->rows, 3);
	idp_kek_free(f->kek);
	free(f);
	return 0;
}

static void
open_refuses_a_policy_out_of_range(void **state)
{
	struct fixture *f = *state;
	struct keys_opts o = {.store = f->store, .clock = &f->clock, .policy = policy};
	struct keys *km = NULL;
	struct idp_diag d;

	o.policy.retire_after_ms = 0;
	idp_diag_init(&d);
	assert_int_equal(keys_open(&o, kek(KEK_A), &km, &d), IDP_EINVAL);
	assert_null(km);
	o.policy = policy;
	o.store = NULL;
	assert_int_equal(keys_open(&o, kek(KEK_A), &km, &d), IDP_EINVAL);
	assert_null(km);
}

static void
signing_key_is_unavailable_before_the_first_load(void **state)
{
	struct fixture *f = *state;
	struct idp_jws_key *k = (struct idp_jws_key *)1;
	char *jwks;
	size_t len;

	assert_int_equal(keys_signing_key(f->km, &k, NULL), IDP_EUNAVAIL);
	assert_null(k);
	assert_null(keys_verify_set(f->km));
	assert_int_equal(keys_jwks(f->km, &jwks, &len), IDP_EUNAVAIL);
}

static void
signing_key_is_refused_from_its_not_after(void **state)
{
	struct fixture *f = *state;
	struct idp_jws_key *k = NULL;
	int64_t not_after = 0;

	keys_install(f->km, build(f->rows, 3, f->kek, NULL, NULL));
	f->clock.fixed_ms = T0 + 90 * DAY - 1;
	assert_int_equal(keys_signing_key(f->km, &k, &not_after), IDP_OK);
	assert_string_equal(idp_jws_key_kid(k), f->rows[2].info.kid);
	assert_int_equal(not_after, T0 + 90 * DAY);
	idp_jws_key_unref(k);
	f->clock.fixed_ms = T0 + 90 * DAY;
	assert_int_equal(keys_signing_key(f->km, &k, NULL), IDP_EUNAVAIL);
	assert_null(k);
	f->clock.fixed_ms = T0 + 91 * DAY;
	assert_int_equal(keys_signing_key(f->km, &k, NULL), IDP_EUNAVAIL);
	/* Verification does not depend on the clock. */
	{
		struct idp_jws_keyset *set = keys_verify_set(f->km);

		assert_int_equal(idp_jws_keyset_count(set), 3);
		idp_jws_keyset_unref(set);
	}
}

/*
 * An unknown kid reads the keys at most once a second: here PostgreSQL is
 * unreachable, so the read that is made answers "cannot know", and the
 * next ask within the second reads nothing and keeps that answer (idpd
 * still cannot know), rather than calling the kid unknown.
 */
static void
unknown_kid_reads_the_keys_at_most_once_a_second(void **state)
{
	struct fixture *f = *state;
	const char *made_up = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

	keys_install(f->km, build(f->rows, 3, f->kek, NULL, NULL));
	assert_true(keys_kid_plausible(made_up));
	assert_true(keys_kid_plausible(f->rows[0].info.kid));
	assert_false(keys_kid_plausible("short"));
	assert_false(keys_kid_plausible("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="));
	/* A kid already loaded needs no read. */
	assert_int_equal(keys_reload_for_kid(f->km, f->rows[2].info.kid, KEYS_NO_IAT), IDP_OK);
	assert_int_equal(keys_reload_for_kid(f->km, made_up, KEYS_NO_IAT), IDP_EUNAVAIL);
	/* Within the second: no read, and the failed read's word stands
	 * (idpd still cannot know), not "unknown". */
	assert_int_equal(keys_reload_for_kid(f->km, made_up, KEYS_NO_IAT), IDP_EUNAVAIL);
	assert_int_equal(keys_reload_for_kid(f->km, f->rows[1].info.kid, KEYS_NO_IAT), IDP_OK);
}

/*
 * keys_verify_own, every verifier's way to idpd's own tokens: a token
 * signed with a loaded key verifies (under the second typ offered when the
 * first is not its), and one whose kid is unknown but of the shape idpd
 * makes is not called invalid before the keys are read: on a thread that
 * must not wait the answer is "would block" (nothing read), elsewhere the
 * read is made, and here it fails (PostgreSQL is unreachable), so the
 * answer is "cannot know".  A kid of another shape, or a bad signature
 * under a known kid, is invalid at once, with no read to wait for.
 */
static void
verify_own_reads_the_keys_for_an_unknown_kid_and_fails_closed(void **state)
{
	struct fixture *f = *state;
	const struct idp_jws_verify_opts opts[2] = {{.typ = "idpd-delegation+jwt"},
	                                            {.typ = "at+jwt"}};
	struct idp_jws_key *active = NULL, *stranger = NULL, *odd = NULL, *forger = NULL;
	struct idp_jws_verified v;
	enum idp_jws_reason why;
	json_t *claims = json_pack("{s:s}", "sub", "agent-1");
	char *good, *unknown, *odd_kid, *forged;
	size_t which = 9;

	assert_int_equal(keys_verify_own(NULL, "a.b.c", 5, opts, 2, true, &v, &which, &why),
	                 IDP_EUNAVAIL);
	/* Before the first load: no keys, nothing can be told. */
	assert_int_equal(keys_verify_own(f->km, "a.b.c", 5, opts, 2, true, &v, &which, &why),
	                 IDP_EUNAVAIL);
	keys_install(f->km, build(f->rows, 3, f->kek, NULL, NULL));
	assert_int_equal(keys_signing_key(f->km, &active, NULL), IDP_OK);
	assert_int_equal(idp_jws_key_generate(NULL, &stranger, NULL), IDP_OK);
	assert_true(keys_kid_plausible(idp_jws_key_kid(stranger)));
	assert_int_equal(idp_jws_key_generate("published-elsewhere", &odd, NULL), IDP_OK);
	assert_int_equal(idp_jws_key_generate(idp_jws_key_kid(active), &forger, NULL), IDP_OK);
	assert_int_equal(idp_jws_sign(active, "at+jwt", claims, &good, NULL, NULL), IDP_OK);
	assert_int_equal(idp_jws_sign(stranger, "at+jwt", claims, &unknown, NULL, NULL), IDP_OK);
	assert_int_equal(idp_jws_sign(odd, "at+jwt", claims, &odd_kid, NULL, NULL), IDP_OK);
	assert_int_equal(idp_jws_sign(forger, "at+jwt", claims, &forged, NULL, NULL), IDP_OK);

	assert_int_equal(
	    keys_verify_own(f->km, good, strlen(good), opts, 2, false, &v, &which, &why), IDP_OK);
	assert_int_equal(which, 1);
	assert_string_equal(json_string_value(json_object_get(v.claims, "sub")), "agent-1");
	idp_jws_verified_cleanup(&v);

	assert_int_equal(
	    keys_verify_own(f->km, unknown, strlen(unknown), opts, 2, false, &v, &which, &why),
	    IDP_EWOULDBLOCK);
	assert_null(v.claims);
	assert_int_equal(
	    keys_verify_own(f->km, unknown, strlen(unknown), opts, 2, true, &v, &which, &why),
	    IDP_EUNAVAIL);
	assert_null(v.claims);

	assert_int_equal(
	    keys_verify_own(f->km, odd_kid, strlen(odd_kid), opts, 2, false, &v, &which, &why),
	    IDP_EUNAUTH);
	assert_int_equal(why, IDP_JWS_KID_UNKNOWN);
	assert_int_equal(
	    keys_verify_own(f->km, forged, strlen(forged), opts, 2, false, &v, &which, &why),
	    IDP_EUNAUTH);
	assert_int_equal(why, IDP_JWS_BAD_SIGNATURE);

	free(good);
	free(unknown);
	free(odd_kid);
	free(forged);
	json_decref(claims);
	idp_jws_key_unref(active);
	idp_jws_key_unref(stranger);
	idp_jws_key_unref(odd);
	idp_jws_key_unref(forger);
}

/*
 * A read of the keys that did not find a token's kid calls the token
 * invalid only when the read began after the token was signed: when the
 * caller made it itself, or when the token's iat is older than the read's
 * start by more than KEYS_KID_SKEW_MS.  A token signed around or after
 * the start of the read that answered (the key that signed it may have
 * been activated just after the read), or one without an iat, cannot be
 * told: 503.
 */
static void
kid_not_found_is_definite_only_for_a_read_begun_after_the_token(void **state)
{
	const int64_t began = T0;

	(void)state;
	/* This caller's own read: whatever the iat says. */
	assert_int_equal(keys_kid_unknown_answer(true, began, began + 60 * SEC), IDP_ENOTFOUND);
	assert_int_equal(keys_kid_unknown_answer(true, began, KEYS_NO_IAT), IDP_ENOTFOUND);
	/* Another caller's read (in flight or within the window). */
	assert_int_equal(keys_kid_unknown_answer(false, began, began - 3600 * SEC), IDP_ENOTFOUND);
	assert_int_equal(keys_kid_unknown_answer(false, began, began - KEYS_KID_SKEW_MS - 1),
	                 IDP_ENOTFOUND);
	assert_int_equal(keys_kid_unknown_answer(false, began, 0), IDP_ENOTFOUND);
	assert_int_equal(keys_kid_unknown_answer(false, began, began - KEYS_KID_SKEW_MS),
	                 IDP_EUNAVAIL);
	assert_int_equal(keys_kid_unknown_answer(false, began, began - 1000), IDP_EUNAVAIL);
	assert_int_equal(keys_kid_unknown_answer(false, began, began), IDP_EUNAVAIL);
	assert_int_equal(keys_kid_unknown_answer(false, began, began + 1000), IDP_EUNAVAIL);
	assert_int_equal(keys_kid_unknown_answer(false, began, KEYS_NO_IAT), IDP_EUNAVAIL);
	assert_int_equal(keys_kid_unknown_answer(false, began, -1), IDP_EUNAVAIL);
}

struct kid_caller {
	struct keys *km;
	int rc;
};

static void *
ask_unknown_kid(void *arg)
{
	struct kid_caller *c = arg;

	c->rc =
	    keys_reload_for_kid(c->km, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", KEYS_NO_IAT);
	return NULL;
}

/*
 * Callers that come while a read for an unknown kid is in flight wait for
 * it and take its result: one read, however long it takes.  "PostgreSQL"
 * here accepts TCP and never answers, so the read lasts the connect
 * timeout (past KEYS_KID_RELOAD_MS); each read is a connection attempt,
 * which the listener counts.
 */
static void
callers_during_a_slow_kid_read_wait_for_it(void **state)
{
	struct sockaddr_in a = {.sin_family = AF_INET};
	socklen_t alen = sizeof(a);
	int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), conns = 0;
	char url[128];
	struct store_opts so = {.url = url,
	                        .pool_size = 8,
	                        .connect_timeout_ms = 1500,
	                        .acquire_timeout_ms = 100,
	                        .statement_timeout_ms = 100};
	struct idp_clock clock;
	struct keys_opts o = {.policy = policy, .jwks_max_age_ms = 300 * SEC, .clock = &clock};
	struct kid_caller callers[4];
	pthread_t t[4];
	struct keys *km;
	struct idp_diag d;

	(void)state;
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_true(lfd >= 0);
	assert_int_equal(bind(lfd, (struct sockaddr *)&a, sizeof(a)), 0);
	assert_int_equal(listen(lfd, 64), 0);
	assert_int_equal(getsockname(lfd, (struct sockaddr *)&a, &alen), 0);
	snprintf(url, sizeof(url), "postgresql://nobody@127.0.0.1:%d/none", ntohs(a.sin_port));
	o.store = store_open(&so);
	idp_clock_fixed(&clock, T0);
	idp_diag_init(&d);
	assert_int_equal(keys_open(&o, kek(KEK_A), &km, &d), IDP_OK);
	for (int i = 0; i < 4; i++) {
		struct timespec gap = {0, 20 * 1000 * 1000};

		callers[i] = (struct kid_caller){km, IDP_OK};
		assert_int_equal(pthread_create(&t[i], NULL, ask_unknown_kid, &callers[i]), 0);
		nanosleep(&gap, NULL);
	}
	for (int i = 0; i < 4; i++) {
		pthread_join(t[i], NULL);
		assert_int_equal(callers[i].rc, IDP_EUNAVAIL);
	}
	for (;;) {
		struct pollfd p = {lfd, POLLIN, 0};
		int fd;

		if (poll(&p, 1, 0) <= 0 || (fd = accept(lfd, NULL, NULL)) < 0)
			break;
		close(fd);
		conns++;
	}
	assert_int_equal(conns, 1);
	keys_free(km);
	store_close(o.store);
	close(lfd);
}

static void
readers_keep_their_snapshot_across_a_swap(void **state)
{
	struct fixture *f = *state;
	struct keys_row other[1];
	struct idp_jws_keyset *old_set, *new_set;
	struct idp_jws_key *old_key = NULL, *new_key = NULL;
	char *jwks;
	size_t len;

	keys_install(f->km, build(f->rows, 3, f->kek, NULL, NULL));
	old_set = keys_verify_set(f->km);
	assert_int_equal(keys_signing_key(f->km, &old_key, NULL), IDP_OK);
	make_row(&other[0], f->kek, KEYS_ACTIVE, NULL);
	keys_install(f->km, build(other, 1, f->kek, NULL, NULL));
	new_set = keys_verify_set(f->km);
	assert_int_equal(keys_signing_key(f->km, &new_key, NULL), IDP_OK);
	/* The old references still work after the swap dropped the old snapshot. */
	assert_int_equal(idp_jws_keyset_count(old_set), 3);
	assert_true(idp_jws_key_has_private(old_key));
	assert_int_equal(idp_jws_keyset_count(new_set), 1);
	assert_string_not_equal(idp_jws_key_kid(old_key), idp_jws_key_kid(new_key));
	assert_string_equal(idp_jws_key_kid(new_key), other[0].info.kid);
	assert_int_equal(keys_jwks(f->km, &jwks, &len), IDP_OK);
	assert_non_null(strstr(jwks, other[0].info.kid));
	assert_null(strstr(jwks, f->rows[2].info.kid));
	free(jwks);
	idp_jws_key_unref(old_key);
	idp_jws_key_unref(new_key);
	idp_jws_keyset_unref(old_set);
	idp_jws_keyset_unref(new_set);
	free(other[0].public_jwk);
	free(other[0].sealed);
}

struct race {
	struct keys *km;
	const char *kids[2];
	_Atomic bool stop;
	_Atomic int bad;
};

static void *
reader(void *arg)
{
	struct race *r = arg;

	while (!atomic_load(&r->stop)) {
		struct idp_jws_key *k = NULL;
		struct idp_jws_keyset *set;

		if (keys_signing_key(r->km, &k, NULL) != IDP_OK) {
			r->bad++;
			continue;
		}
		if (strcmp(idp_jws_key_kid(k), r->kids[0]) != 0 &&
		    strcmp(idp_jws_key_kid(k), r->kids[1]) != 0)
			r->bad++;
		/* A whole set of either snapshot, not necessarily the one k came from. */
		set = keys_verify_set(r->km);
		if (set == NULL || !((idp_jws_keyset_count(set) == 3 &&
		                      idp_jws_keyset_find(set, r->kids[0]) != NULL) ||
		                     (idp_jws_keyset_count(set) == 1 &&
		                      idp_jws_keyset_find(set, r->kids[1]) != NULL)))
			r->bad++;
		idp_jws_keyset_unref(set);
		idp_jws_key_unref(k);
	}
	return NULL;
}

static void
concurrent_readers_see_whole_snapshots_while_they_swap(void **state)
{
	struct fixture *f = *state;
	struct keys_row other[1];
	struct keys_snapshot *a, *b;
	struct race r = {.km = f->km};
	pthread_t t[2];

	make_row(&other[0], f->kek, KEYS_ACTIVE, NULL);
	a = build(f->rows, 3, f->kek, NULL, NULL);
	b = build(other, 1, f->kek, NULL, NULL);
	r.kids[0] = f->rows[2].info.kid;
	r.kids[1] = other[0].info.kid;
	keys_install(f->km, keys_snapshot_ref(a));
	for (int i = 0; i < 2; i++)
		assert_int_equal(pthread_create(&t[i], NULL, reader, &r), 0);
	for (int i = 0; i < 20000; i++)
		keys_install(f->km, keys_snapshot_ref(i % 2 ? a : b));
	atomic_store(&r.stop, true);
	for (int i = 0; i < 2; i++)
		pthread_join(t[i], NULL);
	assert_int_equal(r.bad, 0);
	keys_snapshot_unref(a);
	keys_snapshot_unref(b);
	free(other[0].public_jwk);
	free(other[0].sealed);
}

static void
max_token_lifetime_follows_the_policy(void **state)
{
	struct fixture *f = *state;
	struct keys_policy p = policy, got;

	assert_int_equal(keys_max_token_lifetime_ms(f->km), 24 * HOUR);
	p.retire_after_ms = 2 * HOUR;
	keys_set_policy(f->km, &p, 60 * SEC);
	assert_int_equal(keys_max_token_lifetime_ms(f->km), 2 * HOUR);
	assert_int_equal(keys_jwks_max_age_ms(f->km), 60 * SEC);
	/* A policy out of range is refused and the old one stays. */
	p.max_age_ms = -1;
	keys_set_policy(f->km, &p, 0);
	keys_get_policy(f->km, &got);
	assert_int_equal(got.max_age_ms, policy.max_age_ms);
	assert_int_equal(keys_jwks_max_age_ms(f->km), 60 * SEC);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(state_names_round_trip),
	    cmocka_unit_test(plan_first_start_makes_an_active_and_a_next_key),
	    cmocka_unit_test(plan_start_leaves_a_working_set_alone),
	    cmocka_unit_test(plan_start_replaces_a_missing_next_key),
	    cmocka_unit_test(plan_schedule_rotates_only_when_rotate_every_has_passed),
	    cmocka_unit_test(plan_schedule_with_rotate_every_zero_waits_for_not_after),
	    cmocka_unit_test(plan_demand_rotates_at_once),
	    cmocka_unit_test(plan_expired_active_retires_from_its_not_after_not_from_now),
	    cmocka_unit_test(plan_long_expired_active_is_retired_at_once),
	    cmocka_unit_test(plan_retiring_key_retires_exactly_at_retire_after),
	    cmocka_unit_test(
	        plan_expired_next_is_retired_and_a_fresh_key_becomes_active_when_forced),
	    cmocka_unit_test(plan_promotes_only_a_next_key_published_for_jwks_max_age),
	    cmocka_unit_test(plan_compromise_retires_the_active_key_at_once),
	    cmocka_unit_test(plan_compromise_of_a_next_key_replaces_it),
	    cmocka_unit_test(plan_refuses_broken_tables),
	    cmocka_unit_test(plan_refuses_a_rotation_past_the_live_limit),
	    cmocka_unit_test(lifecycle_keeps_every_token_verifiable_and_never_signs_past_not_after),
	    cmocka_unit_test(lifecycle_waits_for_next_keys_published_long_enough),
	    cmocka_unit_test(snapshot_signs_with_active_and_publishes_next_active_retiring),
	    cmocka_unit_test(snapshot_with_the_wrong_kek_trusts_only_the_keys_it_knew),
	    cmocka_unit_test(snapshot_leaves_out_a_new_key_under_a_kek_it_does_not_hold),
	    cmocka_unit_test(snapshot_checks_keys_under_the_old_kek_with_it),
	    cmocka_unit_test(snapshot_reuses_the_loaded_active_key_without_decrypting),
	    cmocka_unit_test(snapshot_leaves_out_a_public_jwk_that_names_another_key),
	    cmocka_unit_test(snapshot_skips_an_unreadable_row_and_still_drops_a_retired_key),
	    cmocka_unit_test(snapshot_leaves_out_a_row_whose_public_jwk_was_swapped),
	    cmocka_unit_test(check_kek_accepts_the_kek_that_sealed_the_keys),
	    cmocka_unit_test(check_kek_names_both_kek_ids_and_no_secret),
	    cmocka_unit_test(check_kek_refuses_a_blob_that_does_not_open_under_a_matching_id),
	    cmocka_unit_test(check_kek_refuses_a_private_key_that_does_not_match_its_jwk),
	    cmocka_unit_test_setup_teardown(open_refuses_a_policy_out_of_range, setup, teardown),
	    cmocka_unit_test_setup_teardown(signing_key_is_unavailable_before_the_first_load, setup,
	                                    teardown),
	    cmocka_unit_test_setup_teardown(signing_key_is_refused_from_its_not_after, setup,
	                                    teardown),
	    cmocka_unit_test_setup_teardown(unknown_kid_reads_the_keys_at_most_once_a_second, setup,
	                                    teardown),
	    cmocka_unit_test_setup_teardown(
	        verify_own_reads_the_keys_for_an_unknown_kid_and_fails_closed, setup, teardown),
	    cmocka_unit_test(kid_not_found_is_definite_only_for_a_read_begun_after_the_token),
	    cmocka_unit_test(callers_during_a_slow_kid_read_wait_for_it),
	    cmocka_unit_test_setup_teardown(readers_keep_their_snapshot_across_a_swap, setup,
	                                    teardown),
	    cmocka_unit_test_setup_teardown(concurrent_readers_see_whole_snapshots_while_they_swap,
	                                    setup, teardown),
	    cmocka_unit_test_setup_teardown(max_token_lifetime_follows_the_policy, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
