/*
 * Unit tests for the map behind registry_touch (src/registry/touch.c): it
 * keeps one entry per agent with the latest time, never an earlier one,
 * keeps every entry as it grows, and stops at TOUCH_MAX_ENTRIES agents.
 * Writing the map to PostgreSQL is tested in
 * tests/integration/test_last_active.c.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "../../src/registry/registry_int.h"

/* touch.c's static functions, visible in test builds. */
uint32_t touch_hash(const char *s);
bool map_put(struct touch_map *m, char *id, bool own, uint32_t hash, int64_t ms);
void map_free(struct touch_map *m);

static bool
put(struct touch_map *m, const char *id, int64_t ms)
{
	return map_put(m, (char *)id, false, touch_hash(id), ms);
}

/* What m holds for id, or -1. */
static int64_t
get(const struct touch_map *m, const char *id)
{
	for (size_t i = 0; i < m->cap; i++)
		if (m->slots[i].id != NULL && strcmp(m->slots[i].id, id) == 0)
			return m->slots[i].ms;
	return -1;
}

static void
touch_map_keeps_one_entry_per_agent_with_the_latest_time(void **state)
{
	struct touch_map m = {0};

	(void)state;
	assert_true(put(&m, "planner", 1000));
	assert_true(put(&m, "planner", 3000));
	assert_true(put(&m, "planner", 2000)); /* earlier: ignored */
	assert_true(put(&m, "cloud", 500));
	assert_int_equal(m.n, 2);
	assert_int_equal(get(&m, "planner"), 3000);
	assert_int_equal(get(&m, "cloud"), 500);
	map_free(&m);
	assert_int_equal(m.n, 0);
	assert_null(m.slots);
}

static void
touch_map_copies_or_takes_the_id(void **state)
{
	struct touch_map m = {0};
	char id[16] = "agent-a";
	char *taken = strdup("agent-b"), *dup = strdup("agent-b");

	(void)state;
	assert_non_null(taken);
	assert_non_null(dup);
	assert_true(put(&m, id, 1));
	/* The caller's buffer may change: the map holds its own copy. */
	memcpy(id, "agent-z", 8);
	assert_int_equal(get(&m, "agent-a"), 1);
	assert_int_equal(get(&m, "agent-z"), -1);
	/* Taken when new; freed when the agent is already there (ASan checks both). */
	assert_true(map_put(&m, taken, true, touch_hash("agent-b"), 5));
	assert_true(map_put(&m, dup, true, touch_hash("agent-b"), 7));
	assert_int_equal(get(&m, "agent-b"), 7);
	assert_int_equal(m.n, 2);
	map_free(&m);
}

static void
touch_map_keeps_every_entry_as_it_grows(void **state)
{
	struct touch_map m = {0};
	char id[32];

	(void)state;
	for (int i = 0; i < 5000; i++) {
		snprintf(id, sizeof(id), "agent-%d", i);
		assert_true(put(&m, id, 10000 + i));
	}
	assert_int_equal(m.n, 5000);
	assert_true(m.cap >= 2 * m.n);
	assert_int_equal(m.cap & (m.cap - 1), 0);
	for (int i = 0; i < 5000; i++) {
		snprintf(id, sizeof(id), "agent-%d", i);
		assert_int_equal(get(&m, id), 10000 + i);
	}
	map_free(&m);
}

static void
touch_map_is_bounded_but_still_updates_agents_it_holds(void **state)
{
	struct touch_map m = {0};
	char id[32];

	(void)state;
	for (int i = 0; i < TOUCH_MAX_ENTRIES; i++) {
		snprintf(id, sizeof(id), "a%d", i);
		assert_true(put(&m, id, 1));
	}
	assert_int_equal(m.n, TOUCH_MAX_ENTRIES);
	assert_false(put(&m, "one-too-many", 1));
	assert_false(map_put(&m, strdup("another"), true, touch_hash("another"), 1));
	assert_int_equal(m.n, TOUCH_MAX_ENTRIES);
	assert_int_equal(get(&m, "one-too-many"), -1);
	assert_true(put(&m, "a17", 99));
	assert_int_equal(get(&m, "a17"), 99);
	map_free(&m);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(touch_map_keeps_one_entry_per_agent_with_the_latest_time),
	    cmocka_unit_test(touch_map_copies_or_takes_the_id),
	    cmocka_unit_test(touch_map_keeps_every_entry_as_it_grows),
	    cmocka_unit_test(touch_map_is_bounded_but_still_updates_agents_it_holds),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
