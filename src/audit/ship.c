/*
 * ship.c - one thread per SIEM sink, shipping audit_events from its cursor
 * (see audit_ship.h).
 *
 * The cursor is per (sink, chain) because ids of different chains commit
 * out of order, while within one chain seq order is commit order: a cursor
 * on a chain can never pass a row that is still to commit.
 */
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "idpd/audit.h"
#include "idpd/audit_ship.h"
#include "idpd/audit_sink.h"
#include "idpd/buf.h"
#include "idpd/clock.h"
#include "idpd/log.h"
#include "idpd/metrics.h"
#include "../store/store_int.h"

#define SHIP_BATCH 500
#define MAX_SHIPPERS 16

struct shipper {
	char name[80];
	struct audit_sink *sink;
	char *url;
	int64_t interval_ms;
	pthread_t thread;
	int wake[2];
	PGconn *pg;
	bool locked;
	_Atomic uint64_t shipped, errors, skipped;
	_Atomic int64_t last_ts_ms;
	_Atomic bool behind;
};

static struct shipper *shippers[MAX_SHIPPERS];
static size_t n_shippers;

/* Sleep up to ms; true when asked to stop. */
static bool
nap(struct shipper *sh, int64_t ms)
{
	struct pollfd p = {sh->wake[0], POLLIN, 0};

	return poll(&p, 1, (int)ms) > 0;
}

static void
drop_session(struct shipper *sh)
{
	if (sh->pg != NULL)
		PQfinish(sh->pg);
	sh->pg = NULL;
	sh->locked = false;
}

/* A session holding this sink's advisory lock, or false for "not now". */
static bool
ensure_session(struct shipper *sh)
{
	const char *p[1];
	char key[100];
	PGresult *r;

	if (sh->pg != NULL && PQstatus(sh->pg) != CONNECTION_OK)
		drop_session(sh);
	if (sh->pg == NULL) {
		char err[256];

		sh->pg = store_connect_url(sh->url, 5000, 30000, err, sizeof(err));
		if (sh->pg == NULL)
			return false;
	}
	if (sh->locked)
		return true;
	snprintf(key, sizeof(key), "idpd-sink:%s", sh->name);
	p[0] = key;
	r = PQexecParams(sh->pg, "SELECT pg_try_advisory_lock(hashtext($1))", 1, NULL, p, NULL,
			 NULL, 0);
	sh->locked = PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1 &&
		     strcmp(PQgetvalue(r, 0, 0), "t") == 0;
	PQclear(r);
	return sh->locked;
}

static bool
move_cursor(struct shipper *sh, const char *writer, const char *seq)
{
	const char *p[3] = {sh->name, writer, seq};
	PGresult *r = PQexecParams(
		sh->pg,
		"INSERT INTO audit_sink_cursors (sink, writer_id, last_seq) VALUES ($1, $2, $3) "
		"ON CONFLICT (sink, writer_id) DO UPDATE SET last_seq = excluded.last_seq, "
		"updated_at = now() WHERE audit_sink_cursors.last_seq < excluded.last_seq",
		3, NULL, p, NULL, NULL, 0);
	bool ok = PQresultStatus(r) == PGRES_COMMAND_OK;

	PQclear(r);
	return ok;
}

/*
 * Ship what one chain has past the sink's cursor, at most SHIP_BATCH rows:
 * write, flush, then move the cursor.  Returns the rows shipped, or -1 on
 * an error after which the same rows are sent again.
 */
static int
ship_chain(struct shipper *sh, const char *writer, const char *after)
{
	const char *p[3];
	char lim[16];
	PGresult *r;
	struct idp_diag diag;
	int n, rc;

	snprintf(lim, sizeof(lim), "%d", SHIP_BATCH);
	p[0] = writer;
	p[1] = after;
	p[2] = lim;
	r = PQexecParams(sh->pg,
			 "SELECT seq, body FROM audit_events WHERE writer_id = $1 AND seq > $2::bigint "
			 "ORDER BY seq LIMIT $3::int",
			 3, NULL, p, NULL, NULL, 0);
	if (PQresultStatus(r) != PGRES_TUPLES_OK) {
		PQclear(r);
		drop_session(sh);
		return -1;
	}
	n = PQntuples(r);
	for (int i = 0; i < n; i++) {
		const char *body = PQgetvalue(r, i, 1);
		struct audit_event *ev = NULL;

		idp_diag_init(&diag);
		if (audit_event_from_json(body, strlen(body), &ev, &diag) != IDP_OK) {
			/* Only a row written by another version, or by hand, can
			 * get here; skipping it is logged and counted, never silent. */
			log_error("audit sink %s: event %s/%s does not parse (%s); skipped", sh->name,
				  writer, PQgetvalue(r, i, 0), idp_diag_str(&diag));
			atomic_fetch_add(&sh->skipped, 1);
			continue;
		}
		idp_diag_init(&diag);
		rc = audit_sink_write_event(sh->sink, ev, &diag);
		if (rc == IDP_OK)
			atomic_store(&sh->last_ts_ms, audit_event_time(ev));
		audit_event_free(ev);
		if (rc == IDP_ETOOBIG || rc == IDP_EINVAL) {
			log_error("audit sink %s: event %s/%s cannot be carried (%s); skipped",
				  sh->name, writer, PQgetvalue(r, i, 0), idp_diag_str(&diag));
			atomic_fetch_add(&sh->skipped, 1);
			continue;
		}
		if (rc != IDP_OK) {
			log_warn("audit sink %s: %s; will send again from the cursor", sh->name,
				 idp_diag_str(&diag));
			PQclear(r);
			return -1;
		}
	}
	idp_diag_init(&diag);
	if (n > 0 && audit_sink_flush(sh->sink, &diag) != IDP_OK) {
		log_warn("audit sink %s: flush: %s; will send again from the cursor", sh->name,
			 idp_diag_str(&diag));
		PQclear(r);
		return -1;
	}
	/* Delivered: the cursor moves to the last row sent. */
	if (n > 0 && !move_cursor(sh, writer, PQgetvalue(r, n - 1, 0))) {
		PQclear(r);
		drop_session(sh);
		return -1;
	}
	atomic_fetch_add(&sh->shipped, (uint64_t)n);
	PQclear(r);
	return n;
}

/*
 * One round: every chain with events past this sink's cursor gets up to
 * SHIP_BATCH of them shipped.  Returns the events shipped (0: caught up),
 * or -1 on an error.
 */
static int
ship_batch(struct shipper *sh)
{
	const char *p[1] = {sh->name};
	PGresult *r;
	int total = 0, n;
	bool full = false;

	r = PQexecParams(sh->pg,
			 "SELECT ch.writer_id, coalesce(c.last_seq, 0) FROM audit_chains ch "
			 "LEFT JOIN audit_sink_cursors c ON c.sink = $1 AND c.writer_id = ch.writer_id "
			 "WHERE ch.last_seq > coalesce(c.last_seq, 0) ORDER BY ch.updated_at LIMIT 64",
			 1, NULL, p, NULL, NULL, 0);
	if (PQresultStatus(r) != PGRES_TUPLES_OK) {
		PQclear(r);
		drop_session(sh);
		return -1;
	}
	n = PQntuples(r);
	for (int i = 0; i < n; i++) {
		int k = ship_chain(sh, PQgetvalue(r, i, 0), PQgetvalue(r, i, 1));

		if (k < 0) {
			PQclear(r);
			return -1;
		}
		total += k;
		full |= k == SHIP_BATCH;
	}
	PQclear(r);
	atomic_store(&sh->behind, full || n == 64);
	return full || n == 64 ? SHIP_BATCH : total;
}

static void *
run(void *arg)
{
	struct shipper *sh = arg;
	int64_t backoff = 100;

	for (;;) {
		int n;

		if (!ensure_session(sh)) {
			if (nap(sh, sh->interval_ms > 1000 ? sh->interval_ms : 1000))
				break;
			continue;
		}
		n = ship_batch(sh);
		if (n < 0) {
			atomic_fetch_add(&sh->errors, 1);
			if (nap(sh, backoff))
				break;
			backoff = backoff < 5000 ? backoff * 2 : 5000;
			continue;
		}
		backoff = 100;
		if (n == SHIP_BATCH)
			continue; /* more waiting: no nap */
		if (nap(sh, sh->interval_ms))
			break;
	}
	drop_session(sh);
	audit_sink_close(sh->sink);
	return NULL;
}

static void
collect(struct idp_buf *out, void *ctx)
{
	int rc = 0;

	(void)ctx;
	rc |= idp_buf_puts(out, "# HELP idpd_audit_sink_shipped_total Events delivered per sink.\n"
				"# TYPE idpd_audit_sink_shipped_total counter\n");
	for (size_t i = 0; i < n_shippers; i++)
		rc |= idp_buf_printf(out, "idpd_audit_sink_shipped_total{sink=\"%s\"} %llu\n",
				     shippers[i]->name,
				     (unsigned long long)atomic_load(&shippers[i]->shipped));
	rc |= idp_buf_puts(out, "# HELP idpd_audit_sink_errors_total Failed sends (retried).\n"
				"# TYPE idpd_audit_sink_errors_total counter\n");
	for (size_t i = 0; i < n_shippers; i++)
		rc |= idp_buf_printf(out, "idpd_audit_sink_errors_total{sink=\"%s\"} %llu\n",
				     shippers[i]->name,
				     (unsigned long long)atomic_load(&shippers[i]->errors));
	rc |= idp_buf_puts(out, "# HELP idpd_audit_sink_skipped_total Events a sink cannot carry "
				"(logged).\n# TYPE idpd_audit_sink_skipped_total counter\n");
	for (size_t i = 0; i < n_shippers; i++)
		rc |= idp_buf_printf(out, "idpd_audit_sink_skipped_total{sink=\"%s\"} %llu\n",
				     shippers[i]->name,
				     (unsigned long long)atomic_load(&shippers[i]->skipped));
	rc |= idp_buf_puts(out,
			   "# HELP idpd_audit_sink_lag_seconds Age of the newest event delivered, "
			   "when the sink is behind; 0 when caught up.\n"
			   "# TYPE idpd_audit_sink_lag_seconds gauge\n");
	for (size_t i = 0; i < n_shippers; i++) {
		int64_t last = atomic_load(&shippers[i]->last_ts_ms);
		double lag = 0;

		if (atomic_load(&shippers[i]->behind) || atomic_load(&shippers[i]->errors) > 0)
			lag = last > 0 ? (double)(idp_now_ms(idp_clock_system()) - last) / 1000.0
				       : 0;
		rc |= idp_buf_printf(out, "idpd_audit_sink_lag_seconds{sink=\"%s\"} %.3f\n",
				     shippers[i]->name, lag);
	}
	if (rc != 0)
		log_warn("metrics: sink output truncated");
}

static void
free_shipper(struct shipper *sh)
{
	if (sh == NULL)
		return;
	audit_sink_free(sh->sink);
	if (sh->wake[0] >= 0) {
		close(sh->wake[0]);
		close(sh->wake[1]);
	}
	if (sh->url != NULL) {
		idp_wipe(sh->url, strlen(sh->url));
		free(sh->url);
	}
	free(sh);
}

int
audit_ship_start(const struct idpd_config *cfg, const char *version, struct idp_diag *diag)
{
	struct shipper *made[MAX_SHIPPERS];
	size_t n = 0;

	if (cfg->audit.n_sinks > MAX_SHIPPERS) {
		idp_diag_add(diag, "audit.sinks: at most %d sinks", MAX_SHIPPERS);
		return IDP_EINVAL;
	}
	for (size_t i = 0; i < cfg->audit.n_sinks; i++) {
		const struct idpd_audit_sink_cfg *sc = &cfg->audit.sinks[i];
		struct audit_sink_config c;
		struct shipper *sh = idp_xcalloc(1, sizeof(*sh));
		int rc = 0;

		sh->wake[0] = sh->wake[1] = -1;
		made[n++] = sh;
		audit_sink_config_defaults(&c);
		rc |= audit_sink_type_parse(sc->type, &c.type);
		rc |= audit_format_parse(sc->format, &c.format);
		rc |= audit_sink_proto_parse(sc->protocol, &c.protocol);
		c.path = sc->path[0] ? sc->path : NULL;
		c.address = sc->address[0] ? sc->address : NULL;
		c.hostname = sc->hostname[0] ? sc->hostname : NULL;
		c.version = version;
		c.facility = sc->facility;
		c.connect_timeout_ms = sc->connect_timeout_ms;
		c.send_timeout_ms = sc->send_timeout_ms;
		c.udp_max = (size_t)sc->udp_max;
		c.fsync = sc->fsync;
		if (rc != 0 || audit_sink_new(&c, &sh->sink, diag) != IDP_OK) {
			idp_diag_add(diag, "audit.sinks[%zu] (%s) is not usable", i, sc->name);
			goto fail;
		}
		snprintf(sh->name, sizeof(sh->name), "%s", sc->name);
		sh->url = idp_xstrdup(cfg->database.url);
		sh->interval_ms = cfg->audit.ship_interval_ms;
		if (pipe(sh->wake) != 0) {
			idp_diag_add(diag, "audit sink %s: cannot make a pipe", sc->name);
			goto fail;
		}
	}
	for (size_t i = 0; i < n; i++) {
		if (pthread_create(&made[i]->thread, NULL, run, made[i]) != 0) {
			idp_diag_add(diag, "audit sink %s: cannot start its thread", made[i]->name);
			/* Stop the ones already running. */
			for (size_t j = 0; j < i; j++) {
				if (write(made[j]->wake[1], "x", 1) != 1)
					log_warn("audit sink %s: cannot wake", made[j]->name);
				pthread_join(made[j]->thread, NULL);
			}
			goto fail;
		}
		shippers[n_shippers++] = made[i];
		log_info("audit sink %s: shipping to %s", made[i]->name,
			 audit_sink_describe(made[i]->sink));
	}
	if (n > 0 && metrics_register(collect, NULL) != IDP_OK)
		log_warn("metrics: too many collectors; sink metrics not exported");
	return IDP_OK;
fail:
	n_shippers = 0;
	for (size_t i = 0; i < n; i++)
		free_shipper(made[i]);
	return IDP_EINVAL;
}

void
audit_ship_stop(void)
{
	for (size_t i = 0; i < n_shippers; i++)
		if (write(shippers[i]->wake[1], "x", 1) != 1)
			log_warn("audit sink %s: cannot wake", shippers[i]->name);
	for (size_t i = 0; i < n_shippers; i++) {
		pthread_join(shippers[i]->thread, NULL);
		free_shipper(shippers[i]);
		shippers[i] = NULL;
	}
	n_shippers = 0;
}
