/*
 * audit_ship.h - ship the audit log to SIEMs from the audit_events outbox.
 *
 * One thread per configured sink, each with its own PostgreSQL session and
 * its own cursor per hash chain in audit_sink_cursors.  A shipper sends a
 * batch, flushes the sink (the file is synced, the TCP receiver has
 * acknowledged every byte) and only then moves its cursor, so delivery is at
 * least once: after a crash or a sink outage, lines since the last cursor
 * move are sent again, never skipped.  A session-level advisory lock per
 * sink makes one instance ship each sink when several share a database.
 */
#ifndef IDPD_AUDIT_SHIP_H
#define IDPD_AUDIT_SHIP_H

#include <jansson.h>

#include "idpd/config.h"

/*
 * Start a shipper for every [[audit.sinks]] of cfg.  Validates each sink
 * first; on any error nothing is started and diag says why.  Main thread.
 */
int audit_ship_start(const struct idpd_config *cfg, const char *version,
		     struct idp_diag *diag) IDP_WUR;
/* Stop every shipper (each finishes its current batch).  Main thread. */
void audit_ship_stop(void);
/*
 * The names of the sinks shipping now, as a new JSON array (json_decref it):
 * audit retention keeps what they have not shipped.  A reload that was
 * refused leaves the running sinks, and so this list, as they were.  Any
 * thread.
 */
json_t *audit_ship_names(void);

#endif /* IDPD_AUDIT_SHIP_H */
