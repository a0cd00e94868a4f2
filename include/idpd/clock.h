/*
 * clock.h - the one way idpd reads the time.
 *
 * The policy engine and the token service take a struct idp_clock so unit
 * tests can pass a fixed clock.  Production code only ever uses
 * idp_clock_system(); there is no switch, variable or endpoint that changes
 * a running idpd's clock.
 */
#ifndef IDPD_CLOCK_H
#define IDPD_CLOCK_H

#include <stdint.h>

struct idp_clock {
	/* Wall-clock milliseconds since the Unix epoch (UTC). */
	int64_t (*now_ms)(const struct idp_clock *c);
	int64_t fixed_ms; /* used by idp_clock_fixed() */
	/* Milliseconds from an arbitrary origin that never steps back: for
	 * windows and durations, which a wall clock set back would stretch. */
	int64_t (*elapsed_ms)(const struct idp_clock *c);
};

/* The real clock: a static object, safe from any thread. */
const struct idp_clock *idp_clock_system(void);
/* A clock stuck at ms; for tests.  Fills caller storage. */
void idp_clock_fixed(struct idp_clock *c, int64_t ms);

static inline int64_t
idp_now_ms(const struct idp_clock *c)
{
	return c->now_ms(c);
}

/* The clock's monotonic reading (elapsed_ms); a fixed clock gives fixed_ms. */
static inline int64_t
idp_elapsed_ms(const struct idp_clock *c)
{
	return c->elapsed_ms(c);
}

/* Monotonic microseconds, for durations only. */
int64_t idp_mono_us(void);

/* Format ms since epoch as RFC 3339 UTC with milliseconds ("2026-03-27T14:15:23.456Z"). */
void idp_time_format(int64_t ms, char out[32]);

/*
 * Parse a duration string ("500ms", "15s", "15m", "1h", "7d") into ms.
 * Returns 0, or IDP_EINVAL for anything else (no sign, no mixed units).
 */
int idp_duration_parse(const char *s, int64_t *ms);

#endif /* IDPD_CLOCK_H */
