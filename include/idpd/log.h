/*
 * log.h - process log on stderr.
 *
 * Each line is formatted into a local buffer and written with one write(2),
 * so lines from different threads never interleave.  Safe from any thread.
 * Never pass a secret to these functions.
 */
#ifndef IDPD_LOG_H
#define IDPD_LOG_H

#include "idpd/common.h"

enum idp_log_level { IDP_LOG_DEBUG, IDP_LOG_INFO, IDP_LOG_WARN, IDP_LOG_ERROR };

void idp_log_set_level(enum idp_log_level level);
/* Parse "debug", "info", "warn", "error"; -1 if unknown. */
int idp_log_level_parse(const char *s);
void idp_log(enum idp_log_level level, const char *fmt, ...) IDP_PRINTF(2, 3);
/* Write one pre-formatted line (a newline is added) as is, e.g. a JSON access log. */
void idp_log_raw(const char *line, size_t len);

#define log_debug(...) idp_log(IDP_LOG_DEBUG, __VA_ARGS__)
#define log_info(...) idp_log(IDP_LOG_INFO, __VA_ARGS__)
#define log_warn(...) idp_log(IDP_LOG_WARN, __VA_ARGS__)
#define log_error(...) idp_log(IDP_LOG_ERROR, __VA_ARGS__)

#endif /* IDPD_LOG_H */
