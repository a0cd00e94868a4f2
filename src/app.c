/*
 * app.c - the hooks components register at start: what SIGHUP refreshes and
 * what /readyz asks.  Both tables are written on the main thread before the
 * server starts and only read afterwards.
 */
#include <stdbool.h>

#include "idpd/app.h"
#include "idpd/log.h"

#define MAX_HOOKS 16
#define MAX_RELOAD (3 * MAX_HOOKS)

/*
 * Everything a reload runs, in registration order: a check (fn in the
 * check phase), a hook (fn in the apply phase) or a staged hook (prepare in
 * the check phase, commit of what it staged in the apply phase).  staged
 * holds a prepared object between the phases; main thread only.
 */
static struct {
	enum { RELOAD_CHECK, RELOAD_HOOK, RELOAD_STAGED } kind;
	app_reload_fn fn;
	void *ctx;
	const struct app_reload_stage *stage;
	void *staged;
	bool prepared;
} reloads[MAX_RELOAD];
static size_t n_reloads, n_hooks, n_reload_checks;

static int
add_reload(int kind, app_reload_fn fn, void *ctx, const struct app_reload_stage *stage)
{
	if (n_reloads == MAX_RELOAD)
		return IDP_ETOOBIG;
	reloads[n_reloads].kind = kind;
	reloads[n_reloads].fn = fn;
	reloads[n_reloads].ctx = ctx;
	reloads[n_reloads].stage = stage;
	n_reloads++;
	return IDP_OK;
}

int
app_on_reload(app_reload_fn fn, void *ctx)
{
	if (n_hooks == MAX_HOOKS)
		return IDP_ETOOBIG;
	if (add_reload(RELOAD_HOOK, fn, ctx, NULL) != IDP_OK)
		return IDP_ETOOBIG;
	n_hooks++;
	return IDP_OK;
}

int
app_on_reload_check(app_reload_fn fn, void *ctx)
{
	if (n_reload_checks == MAX_HOOKS)
		return IDP_ETOOBIG;
	if (add_reload(RELOAD_CHECK, fn, ctx, NULL) != IDP_OK)
		return IDP_ETOOBIG;
	n_reload_checks++;
	return IDP_OK;
}

int
app_on_reload_staged(const struct app_reload_stage *stage)
{
	return add_reload(RELOAD_STAGED, NULL, NULL, stage);
}

void
app_reload_discard(void)
{
	for (size_t i = 0; i < n_reloads; i++) {
		if (reloads[i].kind == RELOAD_STAGED && reloads[i].prepared)
			reloads[i].stage->discard(reloads[i].staged);
		reloads[i].staged = NULL;
		reloads[i].prepared = false;
	}
}

int
app_run_reload_checks(struct idpd_app *app, const struct idpd_config *next, struct idp_diag *diag)
{
	int failed = 0;

	app_reload_discard(); /* a previous reload's leftovers, if any */
	for (size_t i = 0; i < n_reloads; i++) {
		if (reloads[i].kind == RELOAD_CHECK) {
			if (reloads[i].fn(app, next, reloads[i].ctx, diag) != IDP_OK)
				failed++;
		} else if (reloads[i].kind == RELOAD_STAGED) {
			void *staged = NULL;

			if (reloads[i].stage->prepare(app, next, &staged, diag) != IDP_OK) {
				failed++;
				continue;
			}
			reloads[i].staged = staged;
			reloads[i].prepared = true;
		}
	}
	/* Nothing is committed of a reload that does not pass. */
	if (failed > 0)
		app_reload_discard();
	return failed;
}

int
app_run_reload_hooks(struct idpd_app *app, const struct idpd_config *next, struct idp_diag *diag)
{
	int failed = 0;

	for (size_t i = 0; i < n_reloads; i++) {
		if (reloads[i].kind == RELOAD_HOOK) {
			if (reloads[i].fn(app, next, reloads[i].ctx, diag) != IDP_OK)
				failed++;
		} else if (reloads[i].kind == RELOAD_STAGED) {
			if (!reloads[i].prepared) {
				idp_diag_add(diag,
				             "bug: a staged reload hook ran without its check");
				failed++;
				continue;
			}
			reloads[i].prepared = false;
			if (reloads[i].stage->commit(app, reloads[i].staged, diag) != IDP_OK)
				failed++;
			reloads[i].staged = NULL;
		}
	}
	return failed;
}

static struct {
	const char *name;
	app_ready_fn fn;
	void *ctx;
	bool degraded; /* its reason does not fail /readyz */
} checks[MAX_HOOKS];
static size_t n_checks;

static int
add_check(const char *name, app_ready_fn fn, void *ctx, bool degraded)
{
	if (n_checks == MAX_HOOKS)
		return IDP_ETOOBIG;
	checks[n_checks].name = name;
	checks[n_checks].fn = fn;
	checks[n_checks].ctx = ctx;
	checks[n_checks].degraded = degraded;
	n_checks++;
	return IDP_OK;
}

int
app_on_ready(const char *name, app_ready_fn fn, void *ctx)
{
	return add_check(name, fn, ctx, false);
}

int
app_on_ready_degraded(const char *name, app_ready_fn fn, void *ctx)
{
	return add_check(name, fn, ctx, true);
}

int
app_run_ready_checks(void (*visit)(const char *name, const char *reason, bool degraded, void *arg),
                     void *arg)
{
	int failed = 0;

	for (size_t i = 0; i < n_checks; i++) {
		const char *why = checks[i].fn(checks[i].ctx);

		if (why != NULL && !checks[i].degraded)
			failed++;
		visit(checks[i].name, why, checks[i].degraded, arg);
	}
	return failed;
}
