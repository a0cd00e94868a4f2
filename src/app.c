/*
 * app.c - reload hooks: the components that SIGHUP refreshes register here.
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

int
app_run_reload_hooks(struct idpd_app *app, const struct idpd_config *next, struct idp_diag *diag)
{
	int failed = 0;

	for (size_t i = 0; i < n_hooks; i++)
		if (hooks[i].fn(app, next, hooks[i].ctx, diag) != IDP_OK)
			failed++;
	return failed;
}
