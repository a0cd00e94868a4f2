/*
 * clock.c - the system clock, the fixed test clock, and time formatting.
 */
#include <ctype.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "idpd/clock.h"
#include "idpd/common.h"

static int64_t
system_now(const struct idp_clock *c)
{
	struct timespec ts;

	(void)c;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t
system_elapsed(const struct idp_clock *c)
{
	(void)c;
	return idp_mono_us() / 1000;
}

static const struct idp_clock system_clock = {system_now, 0, system_elapsed};

const struct idp_clock *
idp_clock_system(void)
{
	return &system_clock;
}

static int64_t
fixed_now(const struct idp_clock *c)
{
	return c->fixed_ms;
}

void
idp_clock_fixed(struct idp_clock *c, int64_t ms)
{
	c->now_ms = fixed_now;
	c->fixed_ms = ms;
	c->elapsed_ms = fixed_now;
}

int64_t
idp_mono_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

void
idp_time_format(int64_t ms, char out[32])
{
	time_t secs = (time_t)(ms / 1000);
	struct tm tm;

	if (ms < 0 || gmtime_r(&secs, &tm) == NULL) {
		snprintf(out, 32, "1970-01-01T00:00:00.000Z");
		return;
	}
	if (strftime(out, 32, "%Y-%m-%dT%H:%M:%S", &tm) != 19) {
		snprintf(out, 32, "1970-01-01T00:00:00.000Z");
		return;
	}
	snprintf(out + 19, 32 - 19, ".%03uZ", (unsigned)(ms % 1000));
}

int
idp_duration_parse(const char *s, int64_t *ms)
{
	static const struct {
		const char *suffix;
		int64_t ms;
	} units[] = {{"ms", 1}, {"s", 1000}, {"m", 60000}, {"h", 3600000}, {"d", 86400000}};
	int64_t v = 0;
	const char *p = s;

	if (!isdigit((unsigned char)*p))
		return IDP_EINVAL;
	while (isdigit((unsigned char)*p)) {
		if (v > (INT64_MAX - 9) / 10)
			return IDP_EINVAL;
		v = v * 10 + (*p++ - '0');
	}
	for (size_t i = 0; i < IDP_ARRAY_LEN(units); i++) {
		if (strcmp(p, units[i].suffix) == 0) {
			if (v > INT64_MAX / units[i].ms)
				return IDP_EINVAL;
			*ms = v * units[i].ms;
			return IDP_OK;
		}
	}
	return IDP_EINVAL;
}
