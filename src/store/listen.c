/*
 * listen.c - the LISTEN/NOTIFY thread (see store.h).
 *
 * One dedicated connection, outside the pool, LISTENs on every subscribed
 * channel.  When the connection drops, notifications sent meanwhile are
 * gone, so after every (re)connect each subscriber's on_resync runs and it
 * reloads what it caches.  The thread sleeps in poll() on the connection's
 * socket and a pipe the owner writes to when it wants the thread to stop.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "idpd/buf.h"
#include "idpd/clock.h"
#include "idpd/log.h"
#include "idpd/metrics.h"
#include "idpd/store.h"
#include "store_int.h"

#define MAX_SUBS 32

struct store_listener {
	char *url;
	struct store_subscription subs[MAX_SUBS];
	size_t n_subs;
	pthread_t thread;
	bool started;
	int wake[2];
	_Atomic bool connected;
	_Atomic uint64_t reconnects;
	_Atomic uint64_t notifications;
};

struct store_listener *
store_listener_new(const char *url)
{
	struct store_listener *l = idp_xcalloc(1, sizeof(*l));

	l->url = idp_xstrdup(url);
	l->wake[0] = l->wake[1] = -1;
	return l;
}

static bool
channel_ok(const char *c)
{
	if (c == NULL || !((*c >= 'a' && *c <= 'z') || *c == '_'))
		return false;
	for (size_t i = 0; c[i] != '\0'; i++) {
		if (i >= 63)
			return false;
		if (!((c[i] >= 'a' && c[i] <= 'z') || (c[i] >= '0' && c[i] <= '9') || c[i] == '_'))
			return false;
	}
	return true;
}

int
store_listener_subscribe(struct store_listener *l, const struct store_subscription *sub)
{
	if (l->started || !channel_ok(sub->channel) || sub->on_notify == NULL)
		return IDP_EINVAL;
	if (l->n_subs == MAX_SUBS)
		return IDP_ETOOBIG;
	l->subs[l->n_subs++] = *sub;
	return IDP_OK;
}

/* Sleep up to ms, returning true early if asked to stop. */
static bool
sleep_or_stop(struct store_listener *l, int ms)
{
	struct pollfd p = {l->wake[0], POLLIN, 0};

	return poll(&p, 1, ms) > 0;
}

static PGconn *
connect_and_listen(struct store_listener *l)
{
	char err[256];
	PGconn *pg = store_connect_url(l->url, 5000, 0, err, sizeof(err));

	if (pg == NULL)
		return NULL;
	/* Named, so an operator (or a test) can tell this session from the pool's. */
	{
		PGresult *r = PQexec(pg, "SET application_name = 'idpd listener'");

		PQclear(r);
	}
	for (size_t i = 0; i < l->n_subs; i++) {
		char sql[96];
		PGresult *r;

		/* channel names are validated identifiers; quoting is belt and braces */
		snprintf(sql, sizeof(sql), "LISTEN \"%s\"", l->subs[i].channel);
		r = PQexec(pg, sql);
		if (PQresultStatus(r) != PGRES_COMMAND_OK) {
			log_warn("listener: LISTEN %s failed", l->subs[i].channel);
			PQclear(r);
			PQfinish(pg);
			return NULL;
		}
		PQclear(r);
	}
	if (PQsetnonblocking(pg, 1) != 0) {
		PQfinish(pg);
		return NULL;
	}
	return pg;
}

#define PROBE_TIMEOUT_MS 5000

/*
 * One "SELECT 1" on the idle session, answered within PROBE_TIMEOUT_MS:
 * 1 when it was, 0 when the session is gone or silent (a stalled backend or
 * a proxy that still holds the TCP connection would otherwise block the
 * thread, keep "connected" true while nothing can arrive, and hold up
 * shutdown), -1 when woken to stop.  Notifications that arrive meanwhile
 * stay queued in libpq for the caller.
 */
static int
probe(PGconn *pg, int wake)
{
	int64_t deadline = idp_mono_us() + PROBE_TIMEOUT_MS * 1000LL;
	PGresult *r;
	bool ok = true;

	if (PQsetnonblocking(pg, 1) != 0 || !PQsendQuery(pg, "SELECT 1"))
		return 0;
	for (;;) {
		int flush = PQflush(pg);
		int64_t left_ms = (deadline - idp_mono_us()) / 1000;
		struct pollfd p[2] = {
		    {PQsocket(pg), (short)(POLLIN | (flush == 1 ? POLLOUT : 0)), 0},
		    {wake, POLLIN, 0}};

		if (flush < 0 || !PQconsumeInput(pg))
			return 0;
		if (flush == 0 && !PQisBusy(pg))
			break;
		if (left_ms <= 0) {
			log_warn("listener: no answer to the idle probe within %d ms",
			         PROBE_TIMEOUT_MS);
			return 0;
		}
		if (poll(p, 2, (int)left_ms) < 0 && errno != EINTR)
			return 0;
		if (p[1].revents)
			return -1;
	}
	while ((r = PQgetResult(pg)) != NULL) {
		ok &= PQresultStatus(r) == PGRES_TUPLES_OK;
		PQclear(r);
	}
	return ok && PQstatus(pg) == CONNECTION_OK ? 1 : 0;
}

static void *
run(void *arg)
{
	struct store_listener *l = arg;
	PGconn *pg = NULL;
	int backoff = 100;
	bool ever = false, warned = false;

	for (;;) {
		struct pollfd p[2];
		PGnotify *n;

		if (pg == NULL) {
			pg = connect_and_listen(l);
			if (pg == NULL) {
				if (!warned)
					log_warn("listener: cannot connect; retrying");
				warned = true;
				if (sleep_or_stop(l, backoff))
					break;
				backoff = backoff < 5000 ? backoff * 2 : 5000;
				continue;
			}
			if (ever)
				atomic_fetch_add(&l->reconnects, 1);
			log_info("listener: %s on %zu channel(s)",
			         ever ? "reconnected" : "listening", l->n_subs);
			ever = true;
			warned = false;
			backoff = 100;
			atomic_store(&l->connected, true);
			for (size_t i = 0; i < l->n_subs; i++)
				if (l->subs[i].on_resync != NULL)
					l->subs[i].on_resync(l->subs[i].ctx);
		}
		p[0].fd = PQsocket(pg);
		p[0].events = POLLIN;
		p[0].revents = 0;
		p[1].fd = l->wake[0];
		p[1].events = POLLIN;
		p[1].revents = 0;
		/* Idle for 10 s: probe the session, so a half-open connection is
		 * noticed in seconds, not when TCP gives up. */
		if (poll(p, 2, 10000) < 0) {
			if (errno == EINTR)
				continue;
			log_warn("listener: poll failed; reconnecting");
			goto lost;
		}
		if (p[1].revents)
			break;
		if (p[0].revents == 0) {
			/* Idle for a while: make sure the session is still there. */
			int alive = probe(pg, l->wake[0]);

			if (alive < 0)
				break;
			if (alive == 0)
				goto lost;
		}
		if (!PQconsumeInput(pg) || PQstatus(pg) != CONNECTION_OK)
			goto lost;
		while ((n = PQnotifies(pg)) != NULL) {
			atomic_fetch_add(&l->notifications, 1);
			for (size_t i = 0; i < l->n_subs; i++)
				if (strcmp(l->subs[i].channel, n->relname) == 0)
					l->subs[i].on_notify(n->relname, n->extra, l->subs[i].ctx);
			PQfreemem(n);
		}
		continue;
	lost:
		log_warn("listener: connection lost; notifications may be missed until it is back");
		atomic_store(&l->connected, false);
		PQfinish(pg);
		pg = NULL;
		for (size_t i = 0; i < l->n_subs; i++)
			if (l->subs[i].on_lost != NULL)
				l->subs[i].on_lost(l->subs[i].ctx);
	}
	atomic_store(&l->connected, false);
	if (pg != NULL)
		PQfinish(pg);
	return NULL;
}

int
store_listener_start(struct store_listener *l)
{
	if (pipe2(l->wake, O_CLOEXEC) != 0)
		return IDP_EIO;
	if (pthread_create(&l->thread, NULL, run, l) != 0) {
		close(l->wake[0]);
		close(l->wake[1]);
		l->wake[0] = l->wake[1] = -1;
		return IDP_EINTERNAL;
	}
	l->started = true;
	return IDP_OK;
}

void
store_listener_free(struct store_listener *l)
{
	if (l == NULL)
		return;
	if (l->started) {
		if (write(l->wake[1], "x", 1) != 1)
			log_warn("listener: cannot wake the thread");
		pthread_join(l->thread, NULL);
	}
	if (l->wake[0] >= 0) {
		close(l->wake[0]);
		close(l->wake[1]);
	}
	idp_wipe(l->url, strlen(l->url));
	free(l->url);
	free(l);
}

bool
store_listener_connected(const struct store_listener *l)
{
	return atomic_load(&((struct store_listener *)l)->connected);
}

uint64_t
store_listener_reconnects(const struct store_listener *l)
{
	return atomic_load(&((struct store_listener *)l)->reconnects);
}

/* ---- metrics ---- */

static struct store *metrics_pool;
static struct store_listener *metrics_listener;

static void
collect(struct idp_buf *out, void *ctx)
{
	struct store_stats st;
	int rc = 0;

	(void)ctx;
	if (metrics_pool != NULL) {
		store_get_stats(metrics_pool, &st);
		rc |= idp_buf_printf(
		    out,
		    "# HELP idpd_db_pool_connections Pool connections by state.\n"
		    "# TYPE idpd_db_pool_connections gauge\n"
		    "idpd_db_pool_connections{state=\"in_use\"} %d\n"
		    "idpd_db_pool_connections{state=\"idle\"} %d\n"
		    "# HELP idpd_db_pool_size Configured pool size.\n"
		    "# TYPE idpd_db_pool_size gauge\nidpd_db_pool_size %d\n"
		    "# HELP idpd_db_connects_total Connections opened.\n"
		    "# TYPE idpd_db_connects_total counter\nidpd_db_connects_total %d\n"
		    "# HELP idpd_db_connect_failures_total Failed connection attempts.\n"
		    "# TYPE idpd_db_connect_failures_total counter\n"
		    "idpd_db_connect_failures_total %d\n",
		    st.in_use, st.idle_open, st.size, st.connects, st.connect_failures);
	}
	if (metrics_listener != NULL) {
		rc |= idp_buf_printf(
		    out,
		    "# HELP idpd_listener_connected 1 when the LISTEN/NOTIFY connection is up.\n"
		    "# TYPE idpd_listener_connected gauge\nidpd_listener_connected %d\n"
		    "# HELP idpd_listener_reconnects_total Reconnects of the listener.\n"
		    "# TYPE idpd_listener_reconnects_total counter\n"
		    "idpd_listener_reconnects_total %llu\n"
		    "# HELP idpd_listener_notifications_total Notifications received.\n"
		    "# TYPE idpd_listener_notifications_total counter\n"
		    "idpd_listener_notifications_total %llu\n",
		    store_listener_connected(metrics_listener) ? 1 : 0,
		    (unsigned long long)store_listener_reconnects(metrics_listener),
		    (unsigned long long)atomic_load(&metrics_listener->notifications));
	}
	if (rc != 0)
		log_warn("metrics: store output truncated");
}

void
store_register_metrics(struct store *s, struct store_listener *l)
{
	metrics_pool = s;
	metrics_listener = l;
	if (metrics_register(collect, NULL) != IDP_OK)
		log_warn("metrics: too many collectors; store metrics not exported");
}
