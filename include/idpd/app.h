/*
 * app.h - the running process: configuration, store, listener, HTTP server,
 * and the reload hooks that SIGHUP runs.
 *
 * main() owns the one struct idpd_app.  Components keep a pointer to it for
 * the process lifetime.  cfg is replaced only on the main thread, during a
 * reload, after every hook has accepted the new configuration; workers read
 * the values they need at start-up or take their own snapshots.
 */
#ifndef IDPD_APP_H
#define IDPD_APP_H

#include <jansson.h>

#include "idpd/config.h"
#include "idpd/http.h"
#include "idpd/store.h"

struct idpd_app {
	struct idpd_config *cfg;
	struct store *store;
	struct store_listener *listener;
	struct http_server *http;
	int schema_expected; /* latest migration shipped with this binary */
	int64_t started_ms;
	char instance_id[128];
};

/*
 * A reload hook gets the new configuration before it takes effect.  It
 * returns IDP_OK having switched to it, or an error with diag filled, in
 * which case it must keep its old state.  Hooks run on the main thread.
 */
typedef int (*app_reload_fn)(struct idpd_app *app, const struct idpd_config *next, void *ctx,
                             struct idp_diag *diag);

/* Register before the server starts; IDP_ETOOBIG past a fixed number. */
int app_on_reload(app_reload_fn fn, void *ctx) IDP_WUR;

/* Run every hook, and commit what the staged hooks prepared, in registration
 * order; returns the number that failed. */
int app_run_reload_hooks(struct idpd_app *app, const struct idpd_config *next,
                         struct idp_diag *diag);

/*
 * A reload check: builds what its component's reload hook would from next
 * (reading key files, compiling rules) and throws it away, changing
 * nothing.  Every check runs before any hook, so a file that cannot be read
 * stops the whole reload instead of leaving it half applied.  IDP_OK, or an
 * error with diag filled.  Main thread.
 */
int app_on_reload_check(app_reload_fn fn, void *ctx) IDP_WUR;

/*
 * A staged reload hook, for a component whose new state is built from
 * files (key sets, policy rules).  prepare builds that state from next in
 * the check phase, changing nothing, and hands it back in *staged; once the
 * reload is announced, commit makes exactly that object live, so that what
 * runs is what was checked and each file is read once per reload.  commit
 * takes staged whatever it returns and, failing, keeps the old state with
 * diag filled; discard frees a staged object that a refused reload will
 * not commit.  All three run on the main thread.
 */
struct app_reload_stage {
	int (*prepare)(struct idpd_app *app, const struct idpd_config *next, void **staged,
	               struct idp_diag *diag);
	int (*commit)(struct idpd_app *app, void *staged, struct idp_diag *diag);
	void (*discard)(void *staged);
};

/* Register before the server starts; stage must outlive the process.  IDP_ETOOBIG when full. */
int app_on_reload_staged(const struct app_reload_stage *stage) IDP_WUR;

/*
 * Run every check and every staged hook's prepare, in registration order;
 * returns the number that failed.  On a failure, everything staged is
 * discarded; otherwise it waits for app_run_reload_hooks or
 * app_reload_discard.
 */
int app_run_reload_checks(struct idpd_app *app, const struct idpd_config *next,
                          struct idp_diag *diag);

/* Discard what app_run_reload_checks staged, for a reload that will not apply.  Main thread. */
void app_reload_discard(void);

/*
 * A readiness check: NULL while its component can serve the requests that
 * need it, else a short reason (a static snake_case string) why they would
 * fail.  /readyz runs every check and answers 503 if any gives a reason, so
 * that a load balancer sends work only to instances that can do it.  Checks
 * run on I/O threads: they read state and never block.
 */
typedef const char *(*app_ready_fn)(void *ctx);

/* Register before the server starts; name labels the check in /readyz
 * (a static string).  IDP_ETOOBIG past a fixed number. */
int app_on_ready(const char *name, app_ready_fn fn, void *ctx) IDP_WUR;
/*
 * A check of something the instance does not need to serve everyone: its
 * reason shows in /readyz's checks (status "degraded"), and the answer
 * stays 200.  For state every instance shares (one identity provider's
 * keys out of reach): failing readiness would take every instance out of
 * the load balancer for what concerns only that provider's tokens, which
 * answer 503 on their own.
 */
int app_on_ready_degraded(const char *name, app_ready_fn fn, void *ctx) IDP_WUR;

/* Calls visit(name, reason, degraded, arg) for every check, in
 * registration order; returns how many that are not degraded-only gave a
 * reason. */
int app_run_ready_checks(void (*visit)(const char *name, const char *reason, bool degraded,
                                       void *arg),
                         void *arg);

/* Add the ops routes (/healthz, /readyz, /metrics) to r. */
int ops_routes(struct http_router *r, struct idpd_app *app) IDP_WUR;
/*
 * An agent reports its tool invocations with the access token it used:
 * the resolver (installed by the token service before the server starts)
 * answers whether token is an active access token and, if it is, gives
 * its introspection response (a new object: sub, agent_type, task_id,
 * human_principal, jti, scope, delegation_chain).  IDP_OK, IDP_EUNAUTH
 * for any token that is not active, IDP_EUNAVAIL when it cannot tell.
 */
typedef int (*audit_token_resolver)(const char *token, json_t **out);
void audit_set_token_resolver(audit_token_resolver fn);

/* Add the audit routes (/v1/audit/events, /v1/audit/verify) to r. */
int audit_routes(struct http_router *r, struct idpd_app *app) IDP_WUR;

#endif /* IDPD_APP_H */
