/*
 * app.c - the hooks components register at start: what SIGHUP refreshes and
 * what /readyz asks.  Both tables are written on the main thread before the
 * server starts and only read afterwards.
 */
#include "idpd/app.h"
#include "idpd/log.h"

#define MAX_HOOKS 16

static struct {
	app_reload_fn fn;
	void *ctx;
} hooks[MAX_HOOKS];
static size_t n_hooks;

int
app_on_reload(app_reload_fn fn, void *ctx)
{
	if (n_hooks == MAX_HOOKS)
		return IDP_ETOOBIG;
	hooks[n_hooks].fn = fn;
	hooks[n_hooks].ctx = ctx;
	n_hooks++;
	return IDP_OK;
}

static struct {
	app_reload_fn fn;
	void *ctx;
} reload_checks[MAX_HOOKS];
static size_t n_reload_checks;

int
app_on_reload_check(app_reload_fn fn, void *ctx)
{
	if (n_reload_checks == MAX_HOOKS)
		return IDP_ETOOBIG;
	reload_checks[n_reload_checks].fn = fn;
	reload_checks[n_reload_checks].ctx = ctx;
	n_reload_checks++;
	return IDP_OK;
}

int
app_run_reload_checks(struct idpd_app *app, const struct idpd_config *next, struct idp_diag *diag)
{
	int failed = 0;

	for (size_t i = 0; i < n_reload_checks; i++)
		if (reload_checks[i].fn(app, next, reload_checks[i].ctx, diag) != IDP_OK)
			failed++;
	return failed;
}

int
app_run_reload_hooks(struct idpd_app *app, const struct idpd_config *next, struct idp_diag *diag)
{
	int failed = 0;

	for (size_t i = 0; i < n_hooks; i++)
		if (hooks[i].fn(app, next, hooks[i].ctx, diag) != IDP_OK)
			failed++;
	return failed;
}

static struct {
	const char *name;
	app_ready_fn fn;
	void *ctx;
} checks[MAX_HOOKS];
static size_t n_checks;

int
app_on_ready(const char *name, app_ready_fn fn, void *ctx)
{
	if (n_checks == MAX_HOOKS)
		return IDP_ETOOBIG;
	checks[n_checks].name = name;
	checks[n_checks].fn = fn;
	checks[n_checks].ctx = ctx;
	n_checks++;
	return IDP_OK;
}

int
app_run_ready_checks(void (*visit)(const char *name, const char *reason, void *arg), void *arg)
{
	int failed = 0;

	for (size_t i = 0; i < n_checks; i++) {
		const char *why = checks[i].fn(checks[i].ctx);

		if (why != NULL)
			failed++;
		visit(checks[i].name, why, arg);
	}
	return failed;
}
