/*
 * Unit tests for the policy context providers: time zones (TZif tables and
 * POSIX rules), RFC 3339 and window parsing, the sliding-minute call
 * counters, the risk formula and the per-agent baseline.
 *
 * Expected local times come from an independent implementation (Python's
 * zoneinfo on the same tz database), not from this code.
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "idpd/policy.h"
#include "../../src/policy/policy_int.h"

#define MIN_MS (60 * 1000LL)
/* Monday 30 March 2026, 10:00:00 UTC. */
#define MONDAY_10_UTC 1774864800000LL

static void
expect_local(const char *zone, int64_t t, const char *want, int weekday, int32_t offset)
{
	struct policy_tz *tz = NULL;
	struct policy_localtime lt;
	struct idp_diag d;
	char got[40];

	idp_diag_init(&d);
	if (policy_tz_load(zone, NULL, &tz, &d) != IDP_OK)
		fail_msg("%s: %s", zone, idp_diag_str(&d));
	policy_tz_local(tz, t * 1000, &lt);
	snprintf(got, sizeof(got), "%04d-%02d-%02dT%02d:%02d:%02d", lt.year, lt.month, lt.day,
	         lt.hour, lt.minute, lt.second);
	if (strcmp(got, want) != 0 || lt.weekday != weekday || lt.utc_offset != offset)
		fail_msg("%s at %lld: got %s wd %d off %d, want %s wd %d off %d", zone,
		         (long long)t, got, lt.weekday, lt.utc_offset, want, weekday, offset);
	policy_tz_free(tz);
}

static void
zones_follow_the_tz_database_across_transitions(void **state)
{
	(void)state;
	expect_local("Europe/Berlin", 1774745999, "2026-03-29T01:59:59", 6, 3600);
	expect_local("Europe/Berlin", 1774746000, "2026-03-29T03:00:00", 6, 7200);
	expect_local("Europe/Berlin", 1792889999, "2026-10-25T02:59:59", 6, 7200);
	expect_local("Europe/Berlin", 1792890000, "2026-10-25T02:00:00", 6, 3600);
	expect_local("America/New_York", 1772953199, "2026-03-08T01:59:59", 6, -18000);
	expect_local("America/New_York", 1772953200, "2026-03-08T03:00:00", 6, -14400);
	expect_local("Australia/Sydney", 1775318399, "2026-04-05T02:59:59", 6, 39600);
	expect_local("Australia/Sydney", 1775318400, "2026-04-05T02:00:00", 6, 36000);
	expect_local("Asia/Kolkata", 1767225600, "2026-01-01T05:30:00", 3, 19800);
	expect_local("Europe/Berlin", -631152000, "1950-01-01T01:00:00", 6, 3600);
	/* Past the file's last transition the footer rule decides. */
	expect_local("Europe/Berlin", 2224756800, "2040-07-01T14:00:00", 6, 7200);
	expect_local("America/New_York", 2395742400, "2045-12-01T07:00:00", 4, -18000);
	expect_local("UTC", 0, "1970-01-01T00:00:00", 3, 0);
}

/* Write a TZif v2 file with no transitions, one type and a footer rule. */
static void
write_tzif(const char *path, int32_t std_off, const char *footer)
{
	unsigned char hdr[44], ttinfo[6];
	FILE *f = fopen(path, "wb");

	assert_non_null(f);
	memset(hdr, 0, sizeof(hdr));
	memcpy(hdr, "TZif2", 5);
	hdr[20 + 4 * 4 + 3] = 1; /* typecnt */
	hdr[20 + 5 * 4 + 3] = 4; /* charcnt */
	ttinfo[0] = (unsigned char)((uint32_t)std_off >> 24);
	ttinfo[1] = (unsigned char)((uint32_t)std_off >> 16);
	ttinfo[2] = (unsigned char)((uint32_t)std_off >> 8);
	ttinfo[3] = (unsigned char)std_off;
	ttinfo[4] = 0;
	ttinfo[5] = 0;
	for (int block = 0; block < 2; block++) {
		fwrite(hdr, 1, sizeof(hdr), f);
		fwrite(ttinfo, 1, sizeof(ttinfo), f);
		fwrite("XXX", 1, 4, f);
	}
	fprintf(f, "\n%s\n", footer);
	fclose(f);
}

static char zdir[64];

static int
zdir_setup(void **state)
{
	(void)state;
	snprintf(zdir, sizeof(zdir), "/tmp/idpd-zones-XXXXXX");
	return mkdtemp(zdir) != NULL ? 0 : -1;
}

static int
zdir_teardown(void **state)
{
	char cmd[128];

	(void)state;
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", zdir);
	return system(cmd) == 0 ? 0 : -1;
}

static void
posix_rules_cover_both_hemispheres(void **state)
{
	struct policy_tz *tz = NULL;
	struct policy_localtime lt;
	struct idp_diag d;
	char path[128];

	(void)state;
	snprintf(path, sizeof(path), "%s/North", zdir);
	write_tzif(path, 3600, "CET-1CEST,M3.5.0,M10.5.0/3");
	snprintf(path, sizeof(path), "%s/South", zdir);
	write_tzif(path, 36000, "AEST-10AEDT,M10.1.0,M4.1.0/3");
	snprintf(path, sizeof(path), "%s/Angle", zdir);
	write_tzif(path, 19800, "<+0530>-5:30");
	snprintf(path, sizeof(path), "%s/Bad", zdir);
	write_tzif(path, 0, "CET-1CEST,M13.5.0,M10.5.0");

	idp_diag_init(&d);
	assert_int_equal(policy_tz_load("North", zdir, &tz, &d), IDP_OK);
	policy_tz_local(tz, 1774745999000LL, &lt); /* the same instants as Europe/Berlin */
	assert_int_equal(lt.utc_offset, 3600);
	policy_tz_local(tz, 1774746000000LL, &lt);
	assert_int_equal(lt.utc_offset, 7200);
	assert_int_equal(lt.hour, 3);
	policy_tz_local(tz, 1792889999000LL, &lt);
	assert_int_equal(lt.utc_offset, 7200);
	policy_tz_local(tz, 1792890000000LL, &lt);
	assert_int_equal(lt.utc_offset, 3600);
	policy_tz_free(tz);

	assert_int_equal(policy_tz_load("South", zdir, &tz, &d), IDP_OK);
	policy_tz_local(tz, 1775318399000LL, &lt); /* the same instants as Australia/Sydney */
	assert_int_equal(lt.utc_offset, 39600);
	policy_tz_local(tz, 1775318400000LL, &lt);
	assert_int_equal(lt.utc_offset, 36000);
	policy_tz_local(tz, MONDAY_10_UTC - 120LL * 86400000, &lt); /* 30 Nov 2025: summer */
	assert_int_equal(lt.utc_offset, 39600);
	policy_tz_free(tz);

	assert_int_equal(policy_tz_load("Angle", zdir, &tz, &d), IDP_OK);
	policy_tz_local(tz, MONDAY_10_UTC, &lt);
	assert_int_equal(lt.hour, 15);
	assert_int_equal(lt.minute, 30);
	policy_tz_free(tz);

	assert_int_equal(policy_tz_load("Bad", zdir, &tz, &d), IDP_EINVAL);
	assert_null(tz);
}

static void
zone_names_are_checked_and_missing_zones_reported(void **state)
{
	struct policy_tz *tz = NULL;
	struct idp_diag d;

	(void)state;
	idp_diag_init(&d);
	assert_int_equal(policy_tz_load("../etc/passwd", NULL, &tz, &d), IDP_EINVAL);
	assert_string_equal(
	    idp_diag_str(&d),
	    "time zone \"../etc/passwd\": not a zone name such as \"Europe/Berlin\"");
	idp_diag_init(&d);
	assert_int_equal(policy_tz_load("Mars/Olympus", NULL, &tz, &d), IDP_ENOTFOUND);
	assert_null(tz);
	assert_non_null(strstr(idp_diag_str(&d), "No such file or directory"));
	tz = policy_tz_fixed("Test", -3600);
	assert_string_equal(policy_tz_name(tz), "Test");
	policy_tz_free(tz);
}

static void
rfc3339_times_parse_with_offsets(void **state)
{
	int64_t ms = 0;

	(void)state;
	assert_int_equal(policy_parse_rfc3339("2026-03-30T10:00:00Z", &ms), IDP_OK);
	assert_int_equal(ms, MONDAY_10_UTC);
	assert_int_equal(policy_parse_rfc3339("2026-03-30T12:00:00.250+02:00", &ms), IDP_OK);
	assert_int_equal(ms, MONDAY_10_UTC + 250);
	assert_int_equal(policy_parse_rfc3339("1969-12-31T23:59:59Z", &ms), IDP_OK);
	assert_int_equal(ms, -1000);
	assert_int_equal(policy_parse_rfc3339("2024-02-29T00:00:00Z", &ms), IDP_OK);
	assert_int_equal(policy_parse_rfc3339("2026-02-29T00:00:00Z", &ms), IDP_EINVAL);
	assert_int_equal(policy_parse_rfc3339("2026-03-30 10:00:00Z", &ms), IDP_EINVAL);
	assert_int_equal(policy_parse_rfc3339("2026-03-30T10:00:00", &ms), IDP_EINVAL);
	assert_int_equal(policy_parse_rfc3339("2026-03-30T24:00:00Z", &ms), IDP_EINVAL);
	assert_int_equal(policy_parse_rfc3339("2026-03-30T10:00:00+2:00", &ms), IDP_EINVAL);
	assert_int_equal(policy_parse_rfc3339("2026-03-30T10:00:00Zjunk", &ms), IDP_EINVAL);
}

static void
day_lists_and_clock_times_parse(void **state)
{
	(void)state;
	assert_int_equal(policy_parse_days("mon-fri"), 0x1f);
	assert_int_equal(policy_parse_days("sat,sun"), 0x60);
	assert_int_equal(policy_parse_days("fri-mon"), 0x71);
	assert_int_equal(policy_parse_days("mon-sun"), 0x7f);
	assert_int_equal(policy_parse_days("wed"), 0x04);
	assert_int_equal(policy_parse_days("mon-fri,sun"), 0x5f);
	assert_int_equal(policy_parse_days(""), 0);
	assert_int_equal(policy_parse_days("mon,"), 0);
	assert_int_equal(policy_parse_days("Mon"), 0);
	assert_int_equal(policy_parse_days("mon--fri"), 0);
	assert_int_equal(policy_parse_hhmm("00:00", false), 0);
	assert_int_equal(policy_parse_hhmm("23:59", false), 23 * 60 + 59);
	assert_int_equal(policy_parse_hhmm("24:00", true), 24 * 60);
	assert_int_equal(policy_parse_hhmm("24:00", false), -1);
	assert_int_equal(policy_parse_hhmm("24:01", true), -1);
	assert_int_equal(policy_parse_hhmm("9:00", false), -1);
	assert_int_equal(policy_parse_hhmm("09:60", false), -1);
}

/* ---- counters ------------------------------------------------------------------ */

static void
counters_count_calls_in_a_sliding_minute(void **state)
{
	struct policy_counters *c = policy_counters_new(1024);
	int64_t t0 = MONDAY_10_UTC;

	(void)state;
	for (int i = 0; i < 3; i++)
		assert_int_equal(policy_counters_hit(c, "a", "db", t0), (uint32_t)i + 1);
	assert_int_equal(policy_counters_hit(c, "a", "db", t0 + 30000), 4);
	assert_int_equal(policy_counters_hit(c, "a", "db", t0 + 30500), 5);
	/* Per agent and per resource. */
	assert_int_equal(policy_counters_hit(c, "a", "api", t0 + 30500), 1);
	assert_int_equal(policy_counters_hit(c, "b", "db", t0 + 30500), 1);
	/* get does not count. */
	assert_int_equal(policy_counters_get(c, "a", "db", t0 + 59999), 5);
	assert_int_equal(policy_counters_get(c, "a", "db", t0 + 59999), 5);
	/* At +60 s the calls of second 0 leave the window. */
	assert_int_equal(policy_counters_get(c, "a", "db", t0 + 60000), 2);
	assert_int_equal(policy_counters_get(c, "a", "db", t0 + 90999), 0);
	assert_int_equal(policy_counters_get(c, "nobody", "db", t0), 0);
	/* "ab" + "c" and "a" + "bc" are different keys. */
	assert_int_equal(policy_counters_hit(c, "ab", "c", t0), 1);
	assert_int_equal(policy_counters_hit(c, "a", "bc", t0), 1);
	policy_counters_free(c);
	policy_counters_free(NULL);
}

/*
 * An entry with calls in its minute is never evicted: a new key that finds
 * no idle slot gets an unknown count, never a fresh zero for a busy one.
 */
static void
live_counters_are_never_evicted(void **state)
{
	struct policy_counters *c = policy_counters_new(64);
	int64_t t0 = MONDAY_10_UTC;
	uint32_t got[1000];
	int unknown = 0;
	char name[32];

	(void)state;
	for (int i = 0; i < 1000; i++) {
		snprintf(name, sizeof(name), "agent-%d", i);
		got[i] = policy_counters_hit(c, name, "db", t0 + i);
		assert_true(got[i] == 1 || got[i] == POLICY_COUNT_UNKNOWN);
		unknown += got[i] == POLICY_COUNT_UNKNOWN;
	}
	assert_true(unknown > 0);
	assert_int_equal(policy_counters_live(c, t0 + 1000), 1000 - unknown);
	/* Every counted agent keeps its count; the others stay unknown. */
	for (int i = 0; i < 1000; i++) {
		snprintf(name, sizeof(name), "agent-%d", i);
		assert_int_equal(policy_counters_get(c, name, "db", t0 + 1000), got[i]);
	}
	/* A minute later they are all idle, and the slots free again. */
	assert_int_equal(policy_counters_hit(c, "agent-999", "db", t0 + 61000), 1);
	policy_counters_free(c);
}

/*
 * Reading a count takes no slot: AuthZEN questions read counts for pairs
 * anyone may make up, and a flood of them must leave room for the token
 * requests that do count.
 */
static void
reading_counts_takes_no_slot(void **state)
{
	struct policy_counters *c = policy_counters_new(64);
	int64_t t0 = MONDAY_10_UTC;
	char name[32];

	(void)state;
	for (int i = 0; i < 10000; i++) {
		snprintf(name, sizeof(name), "made-up-%d", i);
		assert_int_equal(policy_counters_get(c, "agent", name, t0), 0);
	}
	assert_int_equal(policy_counters_live(c, t0), 0);
	for (int i = 0; i < 3; i++)
		assert_int_equal(policy_counters_hit(c, "agent", "db", t0), (uint32_t)i + 1);
	assert_int_equal(policy_counters_get(c, "agent", "db", t0), 3);
	assert_int_equal(policy_counters_live(c, t0), 1);
	policy_counters_free(c);
}

/*
 * A table under half full of live keys counts every new one: a key looks for
 * room in its whole stripe, not only in a few slots next to its hash.
 */
static void
a_half_full_table_counts_every_key(void **state)
{
	struct policy_counters *c = policy_counters_new(65536);
	int64_t t0 = MONDAY_10_UTC;
	char name[32];
	int unknown = 0;

	(void)state;
	for (int i = 0; i < 30000; i++) {
		snprintf(name, sizeof(name), "agent-%d", i);
		unknown += policy_counters_hit(c, name, "db", t0) == POLICY_COUNT_UNKNOWN;
	}
	assert_int_equal(unknown, 0);
	assert_int_equal(policy_counters_live(c, t0), 30000);
	policy_counters_free(c);
}

static void
counters_stay_bounded_and_evict_idle_agents_first(void **state)
{
	struct policy_counters *c = policy_counters_new(10); /* rounds up to 64 */
	int64_t t0 = MONDAY_10_UTC;
	char name[32];

	(void)state;
	/* One a minute: each finds the one before idle. */
	for (int i = 0; i < 1000; i++) {
		snprintf(name, sizeof(name), "agent-%d", i);
		assert_int_equal(policy_counters_hit(c, name, "db", t0 + i * 60000), 1);
	}
	assert_int_equal(policy_counters_live(c, t0 + 999 * 60000), 1);
	t0 += 1000 * 60000;
	/* A busy agent keeps its count while idle ones come and go. */
	for (int i = 0; i < 50; i++)
		(void)policy_counters_hit(c, "busy", "db", t0 + 2000);
	for (int i = 0; i < 20; i++) {
		snprintf(name, sizeof(name), "late-%d", i);
		(void)policy_counters_hit(c, name, "db", t0 + 2001);
	}
	assert_int_equal(policy_counters_get(c, "busy", "db", t0 + 2001), 50);
	/* A minute later every entry is idle. */
	assert_int_equal(policy_counters_live(c, t0 + 2001 + 60000), 0);
	policy_counters_free(c);
}

struct hammer {
	struct policy_counters *c;
	int64_t t;
};

static void *
hammer(void *arg)
{
	struct hammer *h = arg;

	for (int i = 0; i < 20000; i++)
		(void)policy_counters_hit(h->c, "shared", "db", h->t);
	return NULL;
}

static void
counters_are_exact_under_two_threads(void **state)
{
	struct hammer h = {policy_counters_new(256), MONDAY_10_UTC};
	pthread_t a, b;

	(void)state;
	assert_int_equal(pthread_create(&a, NULL, hammer, &h), 0);
	assert_int_equal(pthread_create(&b, NULL, hammer, &h), 0);
	pthread_join(a, NULL);
	pthread_join(b, NULL);
	assert_int_equal(policy_counters_get(h.c, "shared", "db", h.t), 40000);
	policy_counters_free(h.c);
}

/* ---- risk --------------------------------------------------------------------- */

static void
risk_formula_adds_its_factors(void **state)
{
	static const struct {
		struct policy_risk_factors f;
		int rate, novelty, denials, hours, score;
	} cases[] = {
	    {{1, 0, 0, false, false, 0, false}, 0, 0, 0, 0, 0},
	    {{20, 10, 10, false, false, 0, false}, 0, 0, 0, 0, 0},   /* twice the average */
	    {{40, 10, 10, false, false, 0, false}, 13, 0, 0, 0, 13}, /* 4x: 40 * 1/3 */
	    {{80, 10, 10, false, false, 0, false}, 27, 0, 0, 0, 27}, /* 8x: 40 * 2/3 */
	    {{160, 10, 10, false, false, 0, false}, 40, 0, 0, 0, 40},
	    {{9999, 10, 10, false, false, 0, false}, 40, 0, 0, 0, 40},
	    {{80, 10, 4, false, false, 0, false}, 0, 0, 0, 0, 0},    /* still warming up */
	    {{8, 0.2, 10, false, false, 0, false}, 27, 0, 0, 0, 27}, /* average below 1 is 1 */
	    {{1, 0, 0, true, false, 0, false}, 0, 20, 0, 0, 20},
	    {{1, 0, 0, false, true, 0, false}, 0, 15, 0, 0, 15},
	    {{1, 0, 0, true, true, 0, false}, 0, 35, 0, 0, 35},
	    {{1, 0, 0, false, false, 1, false}, 0, 0, 10, 0, 10},
	    {{1, 0, 0, false, false, 2, false}, 0, 0, 20, 0, 20},
	    {{1, 0, 0, false, false, 7, false}, 0, 0, 30, 0, 30},
	    {{1, 0, 0, false, false, 0, true}, 0, 0, 0, 15, 15},
	    {{500, 5, 60, true, true, 4, true}, 40, 35, 30, 15, 100},
	};
	struct policy_risk_breakdown b;

	(void)state;
	for (size_t i = 0; i < IDP_ARRAY_LEN(cases); i++) {
		policy_risk_compute(&cases[i].f, &b);
		if (b.rate != cases[i].rate || b.novelty != cases[i].novelty ||
		    b.denials != cases[i].denials || b.hours != cases[i].hours ||
		    b.score != cases[i].score)
			fail_msg("case %zu: got %d %d %d %d = %d", i, b.rate, b.novelty, b.denials,
			         b.hours, b.score);
	}
}

static void
baseline_learns_scopes_audiences_rate_and_denials(void **state)
{
	struct policy_tz *utc = policy_tz_fixed("UTC", 0);
	struct policy_baseline *b = policy_baseline_new(1024, utc, NULL);
	static const char *const read[] = {"ec2:DescribeInstances"};
	static const char *const other[] = {"s3:ListBuckets"};
	struct policy_risk_breakdown r;
	int64_t t = MONDAY_10_UTC;

	(void)state;
	/* A stranger: everything is new. */
	assert_int_equal(policy_baseline_score(b, "a", read, 1, "api", t, &r), 35);
	policy_baseline_record(b, "a", read, 1, "api", false, t);
	assert_int_equal(policy_baseline_score(b, "a", read, 1, "api", t, &r), 0);
	assert_int_equal(policy_baseline_score(b, "a", other, 1, "api", t, &r), 20);
	assert_int_equal(policy_baseline_score(b, "a", read, 1, "db", t, &r), 15);
	/* Eleven steady minutes of 10 calls (the first one's 10 include the call
	 * above), so the moving average is exactly 10; then 80 in one minute. */
	for (int i = 0; i < 9; i++)
		policy_baseline_record(b, "a", read, 1, "api", false, t);
	for (int m = 1; m <= 10; m++)
		for (int i = 0; i < 10; i++)
			policy_baseline_record(b, "a", read, 1, "api", false, t + m * MIN_MS);
	for (int i = 0; i < 79; i++)
		policy_baseline_record(b, "a", read, 1, "api", false, t + 11 * MIN_MS);
	assert_int_equal(policy_baseline_score(b, "a", read, 1, "api", t + 11 * MIN_MS, &r), 27);
	assert_int_equal(r.rate, 27);
	/* Denials count for 15 minutes. */
	policy_baseline_record(b, "a", read, 1, "api", true, t + 12 * MIN_MS);
	policy_baseline_record(b, "a", read, 1, "api", true, t + 12 * MIN_MS);
	policy_baseline_score(b, "a", read, 1, "api", t + 13 * MIN_MS, &r);
	assert_int_equal(r.denials, 20);
	policy_baseline_score(b, "a", read, 1, "api", t + 28 * MIN_MS, &r);
	assert_int_equal(r.denials, 0);
	/* Saturday is off hours. */
	policy_baseline_score(b, "a", read, 1, "api", t + 5 * 86400000LL, &r);
	assert_int_equal(r.hours, 15);
	policy_baseline_free(b);
	policy_tz_free(utc);
}

static void
context_fill_sets_time_calls_and_risk(void **state)
{
	struct policy_tz *utc = policy_tz_fixed("UTC", 0);
	struct policy_counters *c = policy_counters_new(64);
	struct policy_baseline *b = policy_baseline_new(64, utc, NULL);
	static const char *const scopes[] = {"ec2:DescribeInstances"};
	struct idp_clock clk;
	struct policy_context ctx = {&clk, utc, c, b};
	struct policy_input in;

	(void)state;
	idp_clock_fixed(&clk, MONDAY_10_UTC + 90 * MIN_MS + 59000);
	policy_input_init(&in);
	policy_context_fill(&ctx, &in);
	assert_int_equal(in.slot[POLICY_ATTR_CONTEXT_HOUR].i, 11);
	assert_int_equal(in.slot[POLICY_ATTR_CONTEXT_MINUTE].i, 30);
	assert_int_equal(in.slot[POLICY_ATTR_CONTEXT_WEEKDAY].i, 0);
	/* No agent: no counter and no risk. */
	assert_false(policy_input_has(&in, POLICY_ATTR_CONTEXT_CALLS));
	assert_false(policy_input_has(&in, POLICY_ATTR_CONTEXT_RISK));
	assert_int_equal(policy_input_set_str(&in, POLICY_ATTR_AGENT_ID, "a"), IDP_OK);
	assert_int_equal(policy_input_set_str(&in, POLICY_ATTR_RESOURCE_AUDIENCE, "db"), IDP_OK);
	assert_int_equal(policy_input_set_list(&in, POLICY_ATTR_REQUEST_SCOPES, scopes, 1), IDP_OK);
	policy_context_fill(&ctx, &in);
	assert_int_equal(in.slot[POLICY_ATTR_CONTEXT_CALLS].i, 1);
	assert_int_equal(in.slot[POLICY_ATTR_CONTEXT_RISK].i, 35);
	policy_context_fill(&ctx, &in);
	assert_int_equal(in.slot[POLICY_ATTR_CONTEXT_CALLS].i, 2);
	policy_baseline_free(b);
	policy_counters_free(c);
	policy_tz_free(utc);
}

/*
 * A count the table cannot keep (every slot live) is unknown: the fill
 * leaves context.calls_last_minute missing, so a rule on it fails closed,
 * rather than saying 4294967295 calls.
 */
static void
context_fill_leaves_an_unknown_count_missing(void **state)
{
	struct policy_counters *c = policy_counters_new(64);
	struct idp_clock clk;
	struct policy_context ctx = {&clk, NULL, c, NULL};
	struct policy_input in;
	char name[32];
	int i;

	(void)state;
	idp_clock_fixed(&clk, MONDAY_10_UTC);
	for (i = 0; i < 1000; i++) {
		snprintf(name, sizeof(name), "agent-%d", i);
		if (policy_counters_hit(c, name, "db", MONDAY_10_UTC) == POLICY_COUNT_UNKNOWN)
			break;
	}
	assert_true(i < 1000); /* the table is full of live entries */
	policy_input_init(&in);
	assert_int_equal(policy_input_set_str(&in, POLICY_ATTR_AGENT_ID, name), IDP_OK);
	assert_int_equal(policy_input_set_str(&in, POLICY_ATTR_RESOURCE_AUDIENCE, "db"), IDP_OK);
	policy_context_fill(&ctx, &in);
	assert_false(policy_input_has(&in, POLICY_ATTR_CONTEXT_CALLS));
	/* A counted agent still gets its count. */
	policy_input_init(&in);
	assert_int_equal(policy_input_set_str(&in, POLICY_ATTR_AGENT_ID, "agent-0"), IDP_OK);
	assert_int_equal(policy_input_set_str(&in, POLICY_ATTR_RESOURCE_AUDIENCE, "db"), IDP_OK);
	policy_context_fill(&ctx, &in);
	assert_int_equal(in.slot[POLICY_ATTR_CONTEXT_CALLS].i, 2);
	policy_counters_free(c);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(zones_follow_the_tz_database_across_transitions),
	    cmocka_unit_test_setup_teardown(posix_rules_cover_both_hemispheres, zdir_setup,
	                                    zdir_teardown),
	    cmocka_unit_test(zone_names_are_checked_and_missing_zones_reported),
	    cmocka_unit_test(rfc3339_times_parse_with_offsets),
	    cmocka_unit_test(day_lists_and_clock_times_parse),
	    cmocka_unit_test(counters_count_calls_in_a_sliding_minute),
	    cmocka_unit_test(reading_counts_takes_no_slot),
	    cmocka_unit_test(counters_stay_bounded_and_evict_idle_agents_first),
	    cmocka_unit_test(live_counters_are_never_evicted),
	    cmocka_unit_test(a_half_full_table_counts_every_key),
	    cmocka_unit_test(counters_are_exact_under_two_threads),
	    cmocka_unit_test(risk_formula_adds_its_factors),
	    cmocka_unit_test(baseline_learns_scopes_audiences_rate_and_denials),
	    cmocka_unit_test(context_fill_sets_time_calls_and_risk),
	    cmocka_unit_test(context_fill_leaves_an_unknown_count_missing),
	};
	return cmocka_run_group_tests_name("policy_context", tests, NULL, NULL);
}
