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
#include <sys/stat.h>
#include <unistd.h>

#include "idpd/app.h"
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
	_Atomic bool locked; /* this instance holds the sink's lock: it is the one shipping */
	_Atomic uint64_t shipped, errors, skipped;
	_Atomic int64_t last_ts_ms;
	_Atomic int64_t
	    failing_since_ms; /* since the first failure in a row; 0 when the last batch went */
	_Atomic bool behind;
	char *fingerprint; /* the sink's configuration, to tell a reload what changed */
	bool filtered;     /* only the types marked in carries[] are sent */
	bool carries[AUDIT_TYPE_COUNT];
};

/*
 * ship.lock guards the list of running shippers: the metrics collector
 * reads it while a reload changes it.  Starting and stopping a shipper
 * (its thread) happens outside the lock.
 */
static pthread_mutex_t ship_lock = PTHREAD_MUTEX_INITIALIZER;
static struct shipper *shippers[MAX_SHIPPERS];
static size_t n_shippers;
static char ship_version[64]; /* main thread only */
/* The database the process started with: database.url is restart-only, so
 * a sink added at a reload ships from this one, not the file's new value.
 * Main thread only, written by audit_ship_start. */
static char *ship_url;
static bool hook_added; /* main thread only */

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
	atomic_store(&sh->locked, false);
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
	if (atomic_load(&sh->locked))
		return true;
	snprintf(key, sizeof(key), "idpd-sink:%s", sh->name);
	p[0] = key;
	r = PQexecParams(sh->pg, "SELECT pg_try_advisory_lock(hashtext($1))", 1, NULL, p, NULL,
	                 NULL, 0);
	atomic_store(&sh->locked, PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1 &&
	                              strcmp(PQgetvalue(r, 0, 0), "t") == 0);
	PQclear(r);
	return atomic_load(&sh->locked);
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

/* Rows from..upto of writer were deleted before this sink shipped them (none if upto < from). */
static void
note_gap(struct shipper *sh, const char *writer, long long from, long long upto)
{
	if (upto < from)
		return;
	log_error("audit sink %s: events %s/%lld..%lld were deleted before this sink shipped them",
	          sh->name, writer, from, upto);
	atomic_fetch_add(&sh->skipped, (uint64_t)(upto - from + 1));
}

/*
 * Ship what one chain has past the sink's cursor, at most SHIP_BATCH rows:
 * write, flush, then move the cursor.  Returns the rows shipped, or -1 on
 * an error after which the same rows are sent again.
 */
static int
ship_chain(struct shipper *sh, const char *writer, const char *after, const char *last_seq)
{
	const char *p[3];
	char lim[16];
	PGresult *r;
	struct idp_diag diag;
	long long gap_from, gap_upto;
	uint64_t skipped = 0; /* counted once the cursor has moved past them */
	uint64_t written = 0; /* sent: not skipped, nor passed by for its type */
	int n, rc;

	snprintf(lim, sizeof(lim), "%d", SHIP_BATCH);
	p[0] = writer;
	p[1] = after;
	p[2] = lim;
	r = PQexecParams(
	    sh->pg,
	    "SELECT seq, body FROM audit_events WHERE writer_id = $1 AND seq > $2::bigint "
	    "ORDER BY seq LIMIT $3::int",
	    3, NULL, p, NULL, NULL, 0);
	if (PQresultStatus(r) != PGRES_TUPLES_OK) {
		PQclear(r);
		drop_session(sh);
		return -1;
	}
	n = PQntuples(r);
	/*
	 * Rows past the cursor that are gone: audit_chains says the chain goes
	 * on (its rows commit with it), so retention, or someone, removed them
	 * before this sink shipped them.  Never silent: logged with the range
	 * and counted as skipped, once the cursor has moved past them (a retry
	 * would otherwise say it again).
	 */
	gap_from = strtoll(after, NULL, 10) + 1;
	gap_upto = n > 0 ? strtoll(PQgetvalue(r, 0, 0), NULL, 10) - 1 : strtoll(last_seq, NULL, 10);
	if (n == 0) {
		/* The cursor moves past them, or a sink that never saw this
		 * chain would ask for it forever (and, with 64 such chains,
		 * ship nothing). */
		PQclear(r);
		if (!move_cursor(sh, writer, last_seq)) {
			drop_session(sh);
			return -1;
		}
		note_gap(sh, writer, gap_from, gap_upto);
		return 0;
	}
	for (int i = 0; i < n; i++) {
		const char *body = PQgetvalue(r, i, 1);
		struct audit_event *ev = NULL;

		idp_diag_init(&diag);
		if (audit_event_from_stored(body, strlen(body), &ev, &diag) != IDP_OK) {
			/* A newer version's new types and members pass (see
			 * audit_event_from_stored), so only a row written by hand,
			 * or one whose known fields a later version changed, gets
			 * here; skipping it is logged and counted, never silent. */
			log_error("audit sink %s: event %s/%s does not parse (%s); skipped",
			          sh->name, writer, PQgetvalue(r, i, 0), idp_diag_str(&diag));
			skipped++;
			continue;
		}
		if (sh->filtered && (audit_event_type(ev) >= AUDIT_TYPE_COUNT ||
		                     !sh->carries[audit_event_type(ev)])) {
			/* Not for this sink: the cursor passes it by. */
			audit_event_free(ev);
			continue;
		}
		idp_diag_init(&diag);
		rc = audit_sink_write_event(sh->sink, ev, &diag);
		if (rc == IDP_OK) {
			atomic_store(&sh->last_ts_ms, audit_event_time(ev));
			written++;
		}
		audit_event_free(ev);
		if (rc == IDP_ETOOBIG || rc == IDP_EINVAL) {
			log_error("audit sink %s: event %s/%s cannot be carried (%s); skipped",
			          sh->name, writer, PQgetvalue(r, i, 0), idp_diag_str(&diag));
			skipped++;
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
	note_gap(sh, writer, gap_from, gap_upto);
	atomic_fetch_add(&sh->skipped, skipped);
	atomic_fetch_add(&sh->shipped, written);
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

	r = PQexecParams(
	    sh->pg,
	    "SELECT ch.writer_id, coalesce(c.last_seq, 0), ch.last_seq FROM audit_chains ch "
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
		int k =
		    ship_chain(sh, PQgetvalue(r, i, 0), PQgetvalue(r, i, 1), PQgetvalue(r, i, 2));

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
			int64_t none = 0;

			atomic_fetch_add(&sh->errors, 1);
			atomic_compare_exchange_strong(&sh->failing_since_ms, &none,
			                               idp_now_ms(idp_clock_system()));
			if (nap(sh, backoff))
				break;
			backoff = backoff < 5000 ? backoff * 2 : 5000;
			continue;
		}
		backoff = 100;
		atomic_store(&sh->failing_since_ms, 0);
		if (n == SHIP_BATCH) {
			/* More waiting: no nap, but a stop is heard between batches. */
			if (nap(sh, 0))
				break;
			continue;
		}
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
	pthread_mutex_lock(&ship_lock);
	rc |= idp_buf_puts(out, "# HELP idpd_audit_sink_shipped_total Events delivered per sink.\n"
	                        "# TYPE idpd_audit_sink_shipped_total counter\n");
	for (size_t i = 0; i < n_shippers; i++)
		rc |= idp_buf_printf(out, "idpd_audit_sink_shipped_total{sink=\"%s\"} %llu\n",
		                     shippers[i]->name,
		                     (unsigned long long)atomic_load(&shippers[i]->shipped));
	rc |= idp_buf_puts(out, "# HELP idpd_audit_sink_active Whether this instance is the one "
	                        "shipping the sink (holds its lock); across instances, exactly one "
	                        "should.\n# TYPE idpd_audit_sink_active gauge\n");
	for (size_t i = 0; i < n_shippers; i++)
		rc |= idp_buf_printf(out, "idpd_audit_sink_active{sink=\"%s\"} %d\n",
		                     shippers[i]->name, atomic_load(&shippers[i]->locked) ? 1 : 0);
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
	rc |= idp_buf_puts(
	    out, "# HELP idpd_audit_sink_lag_seconds While a sink is behind or failing: the "
	         "age of the newest event it delivered or the time since it began failing, "
	         "whichever is larger; 0 when caught up.\n"
	         "# TYPE idpd_audit_sink_lag_seconds gauge\n");
	for (size_t i = 0; i < n_shippers; i++) {
		int64_t last = atomic_load(&shippers[i]->last_ts_ms);
		int64_t failing = atomic_load(&shippers[i]->failing_since_ms);
		int64_t now = idp_now_ms(idp_clock_system()), lag_ms = 0;
		double lag;

		/* A sink that failed once and caught up since is not behind; one
		 * failing since it started (nothing delivered) is. */
		if (atomic_load(&shippers[i]->behind) || failing > 0) {
			if (last > 0)
				lag_ms = now - last;
			if (failing > 0 && now - failing > lag_ms)
				lag_ms = now - failing;
		}
		lag = lag_ms > 0 ? (double)lag_ms / 1000.0 : 0;
		rc |= idp_buf_printf(out, "idpd_audit_sink_lag_seconds{sink=\"%s\"} %.3f\n",
		                     shippers[i]->name, lag);
	}
	pthread_mutex_unlock(&ship_lock);
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
	free(sh->fingerprint);
	free(sh);
}

/*
 * Which file path names now: a TLS sink reads its certificate files once,
 * when it is made, so a reload after a certificate was replaced at the
 * same path must make the sink again.  "-" for no file or none readable.
 */
static int
file_identity(struct idp_buf *b, const char *path)
{
	struct stat st;

	if (path[0] == '\0' || stat(path, &st) != 0)
		return idp_buf_puts(b, "-|");
	return idp_buf_printf(b, "%llu:%llu:%lld:%lld.%09ld|", (unsigned long long)st.st_dev,
	                      (unsigned long long)st.st_ino, (long long)st.st_size,
	                      (long long)st.st_mtim.tv_sec, st.st_mtim.tv_nsec);
}

/* Everything a shipper is made from, as one string; equal strings, same shipper. */
static char *
fingerprint(const struct idpd_config *cfg, const struct idpd_audit_sink_cfg *sc)
{
	struct idp_buf b;

	const char *text[] = {sc->name,       sc->type,     sc->format,   sc->path,
	                      sc->address,    sc->protocol, sc->hostname, sc->url,
	                      sc->bearer_env, sc->types,    sc->ca_file,  sc->server_name,
	                      sc->cert_file,  sc->key_file};
	int rc = 0;

	idp_buf_init(&b, 0);
	/* Each string with its length first, so no field can pass for another. */
	for (size_t i = 0; i < IDP_ARRAY_LEN(text); i++)
		rc |= idp_buf_printf(&b, "%zu:%s|", strlen(text[i]), text[i]);
	rc |= file_identity(&b, sc->ca_file);
	rc |= file_identity(&b, sc->cert_file);
	rc |= file_identity(&b, sc->key_file);
	rc |=
	    idp_buf_printf(&b, "%d|%lld|%lld|%d|%d|%lld", sc->facility,
	                   (long long)sc->connect_timeout_ms, (long long)sc->send_timeout_ms,
	                   sc->udp_max, sc->fsync ? 1 : 0, (long long)cfg->audit.ship_interval_ms);
	if (rc != IDP_OK) {
		idp_buf_cleanup(&b);
		return idp_xstrdup("?");
	}
	return idp_buf_take(&b, NULL);
}

/* sh->carries from a space-separated list of type names; false (diag) for an unknown one. */
static bool
parse_types(struct shipper *sh, const char *list, struct idp_diag *diag)
{
	const char *p = list;

	sh->filtered = false;
	while (*p != '\0') {
		size_t n;
		char name[64];
		enum audit_type t;

		p += strspn(p, " ");
		n = strcspn(p, " ");
		if (n == 0)
			break;
		snprintf(name, sizeof(name), "%.*s", (int)n, p);
		if (n >= sizeof(name) || audit_type_parse(name, &t) != IDP_OK) {
			idp_diag_add(diag, "audit sink %s: types: \"%.*s\" is not an event type",
			             sh->name, (int)(n > 64 ? 64 : n), p);
			return false;
		}
		sh->carries[t] = true;
		sh->filtered = true;
		p += n;
	}
	/* Blanks only: a sink that silently carries nothing is a mistake. */
	if (list[0] != '\0' && !sh->filtered) {
		idp_diag_add(diag,
		             "audit sink %s: types names no event type (leave it out for all)",
		             sh->name);
		return false;
	}
	return true;
}

/* A shipper for sink i of cfg, not started; NULL with diag when the sink is not usable. */
static struct shipper *
make_shipper(const struct idpd_config *cfg, size_t i, struct idp_diag *diag)
{
	const struct idpd_audit_sink_cfg *sc = &cfg->audit.sinks[i];
	struct audit_sink_config c;
	struct shipper *sh = idp_xcalloc(1, sizeof(*sh));
	int rc = 0;

	sh->wake[0] = sh->wake[1] = -1;
	audit_sink_config_defaults(&c);
	rc |= audit_sink_type_parse(sc->type, &c.type);
	rc |= audit_format_parse(sc->format, &c.format);
	rc |= audit_sink_proto_parse(sc->protocol, &c.protocol);
	c.path = sc->path[0] ? sc->path : NULL;
	c.address = sc->address[0] ? sc->address : NULL;
	c.hostname = sc->hostname[0] ? sc->hostname : NULL;
	c.version = ship_version;
	c.facility = sc->facility;
	c.connect_timeout_ms = sc->connect_timeout_ms;
	c.send_timeout_ms = sc->send_timeout_ms;
	c.udp_max = (size_t)sc->udp_max;
	c.fsync = sc->fsync;
	c.url = sc->url[0] ? sc->url : NULL;
	c.ca_file = sc->ca_file[0] ? sc->ca_file : NULL;
	c.server_name = sc->server_name[0] ? sc->server_name : NULL;
	c.cert_file = sc->cert_file[0] ? sc->cert_file : NULL;
	c.key_file = sc->key_file[0] ? sc->key_file : NULL;
	snprintf(sh->name, sizeof(sh->name), "%s", sc->name);
	if (sc->bearer_env[0] != '\0') {
		/* The token stays out of the file; a variable named but unset is
		 * a mistake, not "no token". */
		c.bearer = getenv(sc->bearer_env);
		if (c.bearer == NULL || c.bearer[0] == '\0') {
			idp_diag_add(diag, "audit sink %s: bearer_env: %s is not set", sc->name,
			             sc->bearer_env);
			rc = -1;
		}
	}
	if (rc != 0 || !parse_types(sh, sc->types, diag) ||
	    audit_sink_new(&c, &sh->sink, diag) != IDP_OK) {
		idp_diag_add(diag, "audit.sinks[%zu] (%s) is not usable", i, sc->name);
		free_shipper(sh);
		return NULL;
	}
	sh->url = idp_xstrdup(ship_url != NULL ? ship_url : cfg->database.url);
	sh->interval_ms = cfg->audit.ship_interval_ms;
	sh->fingerprint = fingerprint(cfg, sc);
	if (pipe(sh->wake) != 0) {
		idp_diag_add(diag, "audit sink %s: cannot make a pipe", sc->name);
		free_shipper(sh);
		return NULL;
	}
	/* A stop (reload, shutdown) cuts a slow receiver's flush short. */
	audit_sink_stop_fd(sh->sink, sh->wake[0]);
	return sh;
}

/* Ask a running shipper to stop, wait for it (it finishes its batch), free it. */
static void
stop_shipper(struct shipper *sh)
{
	if (write(sh->wake[1], "x", 1) != 1)
		log_warn("audit sink %s: cannot wake", sh->name);
	pthread_join(sh->thread, NULL);
	free_shipper(sh);
}

/* Start the shippers of made[0..n) and list them; a failure is logged and that one freed. */
static size_t
start_shippers(struct shipper **made, size_t n, struct idp_diag *diag)
{
	size_t started = 0;

	for (size_t i = 0; i < n; i++) {
		if (pthread_create(&made[i]->thread, NULL, run, made[i]) != 0) {
			idp_diag_add(diag, "audit sink %s: cannot start its thread", made[i]->name);
			free_shipper(made[i]);
			continue;
		}
		log_info("audit sink %s: shipping to %s", made[i]->name,
		         audit_sink_describe(made[i]->sink));
		pthread_mutex_lock(&ship_lock);
		shippers[n_shippers++] = made[i];
		pthread_mutex_unlock(&ship_lock);
		started++;
	}
	return started;
}

/* Whether a running shipper has configuration fp.  Main thread (reloads). */
static bool
running(const char *fp)
{
	bool found = false;

	pthread_mutex_lock(&ship_lock);
	for (size_t j = 0; j < n_shippers && !found; j++)
		found = strcmp(shippers[j]->fingerprint, fp) == 0;
	pthread_mutex_unlock(&ship_lock);
	return found;
}

/*
 * Before any component takes a reload: every sink it adds or changes must
 * be usable (its address parses, its file opens), so that a bad sink
 * leaves the whole running configuration as it was, API keys and policy
 * included.  The shippers built here are thrown away; on_reload builds
 * them again.
 */
static int
check_reload(struct idpd_app *app, const struct idpd_config *next, void *ctx, struct idp_diag *diag)
{
	(void)app;
	(void)ctx;
	if (next->audit.n_sinks > MAX_SHIPPERS) {
		idp_diag_add(diag, "audit.sinks: at most %d sinks; sinks unchanged", MAX_SHIPPERS);
		return IDP_EINVAL;
	}
	for (size_t i = 0; i < next->audit.n_sinks; i++) {
		char *fp = fingerprint(next, &next->audit.sinks[i]);
		bool same = running(fp);
		struct shipper *sh;

		free(fp);
		if (same)
			continue;
		if ((sh = make_shipper(next, i, diag)) == NULL) {
			idp_diag_add(diag, "audit sinks unchanged");
			return IDP_EINVAL;
		}
		free_shipper(sh);
	}
	return IDP_OK;
}

/*
 * A reload: sinks whose configuration is unchanged keep shipping without a
 * pause; removed and changed ones stop (each finishes its batch, its cursor
 * stays where it got to), then new and changed ones start from their
 * cursors.  If any new sink is not usable, nothing changes.
 */
static int
on_reload(struct idpd_app *app, const struct idpd_config *next, void *ctx, struct idp_diag *diag)
{
	struct shipper *made[MAX_SHIPPERS], *gone[MAX_SHIPPERS], *kept[MAX_SHIPPERS];
	size_t n_made = 0, n_gone = 0, n_kept = 0, n_need;

	(void)app;
	(void)ctx;
	if (next->audit.n_sinks > MAX_SHIPPERS) {
		idp_diag_add(diag, "audit.sinks: at most %d sinks; sinks unchanged", MAX_SHIPPERS);
		return IDP_EINVAL;
	}
	n_need = next->audit.n_sinks;
	for (size_t i = 0; i < n_need; i++) {
		char *fp = fingerprint(next, &next->audit.sinks[i]);
		bool same = running(fp);

		free(fp);
		if (same)
			continue;
		if ((made[n_made] = make_shipper(next, i, diag)) == NULL) {
			for (size_t k = 0; k < n_made; k++)
				free_shipper(made[k]);
			idp_diag_add(diag, "audit sinks unchanged");
			return IDP_EINVAL;
		}
		n_made++;
	}
	pthread_mutex_lock(&ship_lock);
	for (size_t j = 0; j < n_shippers; j++) {
		bool wanted = false;

		for (size_t i = 0; i < n_need && !wanted; i++) {
			char *fp = fingerprint(next, &next->audit.sinks[i]);

			wanted = strcmp(shippers[j]->fingerprint, fp) == 0;
			free(fp);
		}
		if (wanted)
			kept[n_kept++] = shippers[j];
		else
			gone[n_gone++] = shippers[j];
	}
	pthread_mutex_unlock(&ship_lock);
	/*
	 * The new ones start first, so that a failure changes nothing: a
	 * changed sink's new shipper waits for the sink's advisory lock until
	 * the old one, stopped next, lets go of it.
	 */
	for (size_t i = 0; i < n_made; i++) {
		if (pthread_create(&made[i]->thread, NULL, run, made[i]) != 0) {
			idp_diag_add(diag,
			             "audit sink %s: cannot start its thread; sinks unchanged",
			             made[i]->name);
			for (size_t k = 0; k < i; k++)
				stop_shipper(made[k]);
			for (size_t k = i; k < n_made; k++)
				free_shipper(made[k]);
			return IDP_EINTERNAL;
		}
	}
	pthread_mutex_lock(&ship_lock);
	memcpy(shippers, kept, n_kept * sizeof(*kept));
	memcpy(shippers + n_kept, made, n_made * sizeof(*made));
	n_shippers = n_kept + n_made;
	pthread_mutex_unlock(&ship_lock);
	for (size_t i = 0; i < n_made; i++)
		log_info("audit sink %s: shipping to %s", made[i]->name,
		         audit_sink_describe(made[i]->sink));
	for (size_t j = 0; j < n_gone; j++) {
		log_info("audit sink %s: stopped (reload)", gone[j]->name);
		stop_shipper(gone[j]);
	}
	if (n_made + n_gone > 0)
		log_info("reload: audit sinks: %zu kept, %zu stopped, %zu started", n_kept, n_gone,
		         n_made);
	return IDP_OK;
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
	snprintf(ship_version, sizeof(ship_version), "%s", version);
	if (ship_url != NULL)
		idp_wipe(ship_url, strlen(ship_url));
	free(ship_url);
	ship_url = idp_xstrdup(cfg->database.url);
	for (size_t i = 0; i < cfg->audit.n_sinks; i++) {
		if ((made[n] = make_shipper(cfg, i, diag)) == NULL) {
			for (size_t k = 0; k < n; k++)
				free_shipper(made[k]);
			return IDP_EINVAL;
		}
		n++;
	}
	if (start_shippers(made, n, diag) != n) {
		audit_ship_stop();
		return IDP_EINVAL;
	}
	if (!hook_added) {
		if (app_on_reload_check(check_reload, NULL) != IDP_OK ||
		    app_on_reload(on_reload, NULL) != IDP_OK)
			log_warn("audit sinks: cannot register the reload hooks; sinks change on "
			         "restart only");
		if (metrics_register(collect, NULL) != IDP_OK)
			log_warn("metrics: too many collectors; sink metrics not exported");
		hook_added = true;
	}
	return IDP_OK;
}

json_t *
audit_ship_names(void)
{
	json_t *a = json_array();

	pthread_mutex_lock(&ship_lock);
	for (size_t i = 0; i < n_shippers; i++)
		json_array_append_new(a, json_string(shippers[i]->name));
	pthread_mutex_unlock(&ship_lock);
	return a;
}

void
audit_ship_stop(void)
{
	struct shipper *all[MAX_SHIPPERS];
	size_t n;

	pthread_mutex_lock(&ship_lock);
	n = n_shippers;
	memcpy(all, shippers, n * sizeof(*all));
	n_shippers = 0;
	pthread_mutex_unlock(&ship_lock);
	for (size_t i = 0; i < n; i++)
		if (write(all[i]->wake[1], "x", 1) != 1)
			log_warn("audit sink %s: cannot wake", all[i]->name);
	for (size_t i = 0; i < n; i++) {
		pthread_join(all[i]->thread, NULL);
		free_shipper(all[i]);
	}
	if (ship_url != NULL)
		idp_wipe(ship_url, strlen(ship_url));
	free(ship_url);
	ship_url = NULL;
}
