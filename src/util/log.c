/*
 * log.c - one write(2) per line on stderr (see log.h).
 */
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "idpd/clock.h"
#include "idpd/log.h"

static _Atomic int min_level = IDP_LOG_INFO;

static const char *const level_names[] = {"debug", "info", "warn", "error"};

void
idp_log_set_level(enum idp_log_level level)
{
	atomic_store(&min_level, (int)level);
}

int
idp_log_level_parse(const char *s)
{
	for (size_t i = 0; i < IDP_ARRAY_LEN(level_names); i++)
		if (strcmp(s, level_names[i]) == 0)
			return (int)i;
	return -1;
}

static void
write_all(const char *p, size_t n)
{
	while (n > 0) {
		ssize_t w = write(STDERR_FILENO, p, n);

		if (w <= 0)
			return; /* stderr is gone; logging must never fail the caller */
		p += w;
		n -= (size_t)w;
	}
}

void
idp_log(enum idp_log_level level, const char *fmt, ...)
{
	char line[2048], ts[32];
	va_list ap;
	int n, m;

	if ((int)level < atomic_load(&min_level))
		return;
	idp_time_format(idp_now_ms(idp_clock_system()), ts);
	n = snprintf(line, sizeof(line), "%s %s ", ts, level_names[level]);
	if (n < 0)
		return;
	va_start(ap, fmt);
	m = vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
	va_end(ap);
	if (m < 0)
		return;
	n += m;
	if ((size_t)n > sizeof(line) - 2)
		n = (int)sizeof(line) - 2;
	line[n++] = '\n';
	write_all(line, (size_t)n);
}

void
idp_log_raw(const char *line, size_t len)
{
	char small[4096];

	if (len < sizeof(small)) {
		memcpy(small, line, len);
		small[len] = '\n';
		write_all(small, len + 1);
	} else {
		write_all(line, len); /* too long for one atomic line; rare */
		write_all("\n", 1);
	}
}
