/*
 * ops.c - the endpoints an orchestrator and a monitoring system call:
 * liveness, readiness and Prometheus metrics.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "idpd/app.h"
#include "idpd/buf.h"
#include "idpd/clock.h"
#include "idpd/metrics.h"

#ifndef IDPD_VERSION
#define IDPD_VERSION "0.1.0"
#endif

/* GET /healthz: the process is alive and serving HTTP; nothing else. */
static void
healthz(struct http_req *req, void *ctx)
{
	struct idpd_app *app = ctx;

	http_reply_json(req, 200,
	                json_pack("{s:s,s:s,s:s,s:I}", "status", "ok", "version", IDPD_VERSION,
	                          "instance", app->instance_id, "uptime_ms",
	                          (json_int_t)(idp_now_ms(idp_clock_system()) - app->started_ms)));
}

/* One check's entry in /readyz's "checks", the first failing reason, and whether any is degraded.
 */
struct ready_walk {
	json_t *checks;
	const char *first;
	bool degraded;
};

static void
ready_visit(const char *name, const char *reason, bool degraded, void *arg)
{
	struct ready_walk *w = arg;

	json_object_set_new(w->checks, name, json_string(reason != NULL ? reason : "ok"));
	if (reason != NULL && degraded)
		w->degraded = true;
	else if (reason != NULL && w->first == NULL)
		w->first = reason;
}

/*
 * GET /readyz: PostgreSQL answers through the pool, the schema is at least
 * what this binary ships, and every registered component can serve (the
 * audit writer is writing, the revocation state is current enough to
 * answer from).  503 with the reason otherwise, so a load balancer stops
 * sending work that would fail.
 */
static void
readyz(struct http_req *req, void *ctx)
{
	struct idpd_app *app = ctx;
	struct store_conn *c;
	struct ready_walk w = {NULL, NULL, false};
	int v;

	if (store_acquire(app->store, &c) != IDP_OK) {
		http_reply_problem(req, 503, "not_ready",
		                   json_pack("{s:s}", "reason", "database_unreachable"),
		                   "PostgreSQL is unreachable or the pool is exhausted");
		return;
	}
	v = store_schema_version(c);
	store_release(app->store, c);
	if (v < 0) {
		http_reply_problem(req, 503, "not_ready",
		                   json_pack("{s:s}", "reason", "database_unreachable"),
		                   "PostgreSQL did not answer the schema query");
		return;
	}
	if (v < app->schema_expected) {
		http_reply_problem(
		    req, 503, "not_ready",
		    json_pack("{s:s,s:i,s:i}", "reason", "schema_behind", "schema_version", v,
		              "schema_expected", app->schema_expected),
		    "the schema is at version %d; this idpd needs %d", v, app->schema_expected);
		return;
	}
	w.checks = json_object();
	if (w.checks == NULL) {
		http_reply_problem(req, 500, "internal", NULL, "out of memory");
		return;
	}
	if (app_run_ready_checks(ready_visit, &w) > 0) {
		http_reply_problem(req, 503, "not_ready",
		                   json_pack("{s:s,s:o}", "reason", w.first, "checks", w.checks),
		                   "a component cannot serve: %s", w.first);
		return;
	}
	http_reply_json(req, 200,
	                json_pack("{s:s,s:i,s:o}", "status", w.degraded ? "degraded" : "ready",
	                          "schema_version", v, "checks", w.checks));
}

static void
metrics(struct http_req *req, void *ctx)
{
	struct idpd_app *app = ctx;
	struct idp_buf out;
	char *text;
	size_t len;

	idp_buf_init(&out, 8u << 20);
	if (idp_buf_printf(&out,
	                   "# HELP idpd_build_info Build and instance of this process.\n"
	                   "# TYPE idpd_build_info gauge\n"
	                   "idpd_build_info{version=\"%s\",instance=\"%s\"} 1\n"
	                   "# HELP idpd_start_time_seconds Start time since the epoch.\n"
	                   "# TYPE idpd_start_time_seconds gauge\nidpd_start_time_seconds %.3f\n",
	                   IDPD_VERSION, app->instance_id,
	                   (double)app->started_ms / 1000.0) != IDP_OK) {
		idp_buf_cleanup(&out);
		http_reply_error(req, IDP_EINTERNAL, "metrics output too large");
		return;
	}
	metrics_render(&out);
	text = idp_buf_take(&out, &len);
	http_reply_data(req, 200, "text/plain; version=0.0.4; charset=utf-8", text, len);
	free(text);
}

int
ops_routes(struct http_router *r, struct idpd_app *app)
{
	int rc = 0;

	rc |= http_router_add_ex(r, HTTP_GET, "/healthz", healthz, app, HTTP_ROUTE_INLINE);
	rc |= http_router_add(r, HTTP_GET, "/readyz", readyz, app);
	rc |= http_router_add_ex(r, HTTP_GET, "/metrics", metrics, app, HTTP_ROUTE_INLINE);
	return rc == 0 ? IDP_OK : IDP_EINVAL;
}
