/*
 * metrics.h - Prometheus text exposition.
 *
 * Modules register a collector at start-up; GET /metrics calls each in turn
 * to append its families to one buffer.  Collectors read atomics or take
 * their module's own lock briefly; they never block on I/O.  Registration
 * happens before the server starts (main thread), so the list needs no lock.
 */
#ifndef IDPD_METRICS_H
#define IDPD_METRICS_H

#include "idpd/buf.h"

typedef void (*metrics_collector)(struct idp_buf *out, void *ctx);

/* Returns IDP_ETOOBIG past a small fixed number of collectors. */
int metrics_register(metrics_collector fn, void *ctx) IDP_WUR;
void metrics_clear(void);
/* Render every family; the caller owns out. */
void metrics_render(struct idp_buf *out);

#endif /* IDPD_METRICS_H */
