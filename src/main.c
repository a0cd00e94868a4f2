/*
 * main.c - idpd's command line: serve, migrate, check-config, version.
 *
 * serve: load the configuration, make sure the schema is current, open the
 * pool and the listener, start HTTP, then wait for signals on the main
 * thread.  Every other thread is started with SIGINT, SIGTERM and SIGHUP
 * blocked, so sigwaitinfo() here is the one place that sees them.
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "idpd/app.h"
#include "idpd/access.h"
#include "idpd/approvals.h"
#include "idpd/attest.h"
#include "idpd/audit.h"
#include "idpd/audit_refusal.h"
#include "idpd/audit_ship.h"
#include "idpd/audit_writer.h"
#include "idpd/auth.h"
#include "idpd/clock.h"
#include "idpd/config.h"
#include "idpd/delegation.h"
#include "idpd/http.h"
#include "idpd/human_auth.h"
#include "idpd/jwks_remote.h"
#include "idpd/kek.h"
#include "idpd/keys.h"
#include "idpd/log.h"
#include "idpd/maintenance.h"
#include "idpd/oauth.h"
#include "idpd/policy.h"
#include "idpd/policy_service.h"
#include "idpd/registry.h"
#include "idpd/revocation.h"
#include "idpd/scope.h"
#include "idpd/store.h"
#include "idpd/tasks.h"

#ifndef IDPD_VERSION
#define IDPD_VERSION "0.1.0"
#endif

static void
usage(FILE *f)
{
	fprintf(
	    f,
	    "usage: idpd serve --config FILE [--migrate]\n"
	    "       idpd migrate (--config FILE | --database-url URL) [--migrations DIR]\n"
	    "       idpd check-config FILE\n"
	    "       idpd api-key new --name NAME --roles ROLE[,ROLE...]\n"
	    "       idpd keys rotate|list --config FILE [--reason TEXT] [--force | --retire KID]\n"
	    "       idpd keys reseal --config FILE [--old-kek-file PATH] [--reason TEXT]\n"
	    "       idpd check-config --keys\n"
	    "       idpd policy check DIR | idpd policy test|eval ... (idpd policy --help)\n"
	    "       idpd version\n");
}

static struct idpd_config *
load_config(const char *path)
{
	struct idpd_config *cfg = NULL;
	struct idp_diag diag;

	idp_diag_init(&diag);
	if (idpd_config_load(path, &cfg, &diag) != IDP_OK) {
		fprintf(stderr, "%s\n", idp_diag_str(&diag));
		fprintf(stderr, "idpd: %u error(s) in %s\n", diag.count, path);
		return NULL;
	}
	return cfg;
}

/* idpd check-config FILE | --keys */
static int
cmd_check_config(int argc, char **argv)
{
	struct idpd_config *cfg;

	if (argc != 2) {
		usage(stderr);
		return 2;
	}
	if (strcmp(argv[1], "--keys") == 0) {
		idpd_config_describe(STDOUT_FILENO);
		return 0;
	}
	cfg = load_config(argv[1]);
	if (cfg == NULL)
		return 1;
	/* What serve would refuse past the file's syntax: the time zone. */
	if (strcmp(cfg->policy.timezone, "UTC") != 0) {
		struct policy_tz *tz = NULL;
		struct idp_diag diag;

		idp_diag_init(&diag);
		if (policy_tz_load(cfg->policy.timezone, NULL, &tz, &diag) != IDP_OK) {
			fprintf(stderr, "%s: policy.timezone: cannot load \"%s\": %s\n", argv[1],
			        cfg->policy.timezone, idp_diag_str(&diag));
			idpd_config_free(cfg);
			return 1;
		}
		policy_tz_free(tz);
	}
	printf("%s: ok\n", argv[1]);
	idpd_config_free(cfg);
	return 0;
}

/* run_migrations: a stop asked for while waiting for the migration lock. */
#define MIGRATE_STOPPED 3

static int
run_migrations(const char *url, const char *dir)
{
	struct idp_diag diag;
	int applied = 0, rc;

	idp_diag_init(&diag);
	rc = store_migrate(url, dir, &applied, &diag);
	if (rc == IDP_EWOULDBLOCK)
		return MIGRATE_STOPPED;
	if (rc != IDP_OK) {
		fprintf(stderr, "idpd: migrate: %s\n", idp_diag_str(&diag));
		return 1;
	}
	log_info("migrate: %d migration(s) applied; schema is current", applied);
	return 0;
}

/*
 * idpd api-key new --name NAME --roles a,b: print a fresh key once, with the
 * [[api_keys]] lines that configure it.  Only the hash goes into the config.
 */
static int
cmd_api_key(int argc, char **argv)
{
	static const struct option opts[] = {{"name", required_argument, NULL, 'n'},
	                                     {"roles", required_argument, NULL, 'r'},
	                                     {NULL, 0, NULL, 0}};
	const char *name = NULL, *roles_csv = NULL;
	char key[64], hash[80];
	unsigned roles;
	int c;

	if (argc < 2 || strcmp(argv[1], "new") != 0) {
		usage(stderr);
		return 2;
	}
	optind = 2;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 'n':
			name = optarg;
			break;
		case 'r':
			roles_csv = optarg;
			break;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (name == NULL || roles_csv == NULL || optind != argc) {
		usage(stderr);
		return 2;
	}
	if (idpd_config_label_problem(name) != NULL) {
		/* As [[api_keys]] name: the block printed below must load. */
		fprintf(stderr, "idpd: --name: %s\n", idpd_config_label_problem(name));
		return 2;
	}
	if (auth_roles_parse(roles_csv, &roles) != IDP_OK) {
		fprintf(stderr, "idpd: --roles: use a comma-separated list of admin, registrar, "
		                "auditor, introspector, approver, maintenance\n");
		return 2;
	}
	if (auth_key_generate(key, hash) != IDP_OK) {
		fprintf(stderr, "idpd: the random number generator failed\n");
		return 1;
	}
	/* Line 1 is the key alone, so a script can take it with head -n 1. */
	printf("%s\n# the key above is shown once; idpd keeps only this hash:\n"
	       "[[api_keys]]\nname = \"%s\"\nhash = \"%s\"\nroles = [",
	       key, name, hash);
	for (unsigned bit = 1, first = 1; bit <= IDPD_ROLE_MAINTENANCE; bit <<= 1) {
		if (!(roles & bit))
			continue;
		printf("%s\"%s\"", first ? "" : ", ", auth_role_name(bit));
		first = 0;
	}
	printf("]\n");
	idp_wipe(key, sizeof(key));
	return 0;
}

/* idpd migrate (--config FILE | --database-url URL) [--migrations DIR] */
static int
cmd_migrate(int argc, char **argv)
{
	static const struct option opts[] = {{"config", required_argument, NULL, 'c'},
	                                     {"database-url", required_argument, NULL, 'd'},
	                                     {"migrations", required_argument, NULL, 'm'},
	                                     {NULL, 0, NULL, 0}};
	const char *config = NULL, *url = NULL, *dir = NULL;
	struct idpd_config *cfg = NULL;
	int c, rc;

	optind = 1;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 'c':
			config = optarg;
			break;
		case 'd':
			url = optarg;
			break;
		case 'm':
			dir = optarg;
			break;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind != argc || (config == NULL) == (url == NULL)) {
		usage(stderr);
		return 2;
	}
	if (config != NULL) {
		cfg = load_config(config);
		if (cfg == NULL)
			return 1;
		url = cfg->database.url;
		if (dir == NULL)
			dir = cfg->node.migrations_dir;
	}
	rc = run_migrations(url, dir ? dir : "migrations");
	if (rc == MIGRATE_STOPPED)
		rc = 1; /* not reached: this command does not block signals */
	idpd_config_free(cfg);
	return rc;
}

static int
check_schema(struct idpd_app *app)
{
	struct store_conn *c;
	int v;

	if (store_acquire(app->store, &c) != IDP_OK) {
		log_error("cannot reach PostgreSQL; not starting (check database.url)");
		return -1;
	}
	v = store_schema_version(c);
	store_release(app->store, c);
	if (v < 0) {
		log_error("cannot read the schema version; not starting");
		return -1;
	}
	if (v < app->schema_expected) {
		log_error("the database schema is at version %d but this idpd needs %d: run "
		          "`idpd migrate --config FILE`, or start with --migrate",
		          v, app->schema_expected);
		return -1;
	}
	if (v > app->schema_expected)
		log_warn("the database schema (%d) is newer than this idpd (%d)", v,
		         app->schema_expected);
	return 0;
}

static int
reload_api_keys(struct idpd_app *app, const struct idpd_config *next, void *ctx,
                struct idp_diag *diag)
{
	(void)app;
	(void)ctx;
	(void)diag;
	auth_keys_install(auth_keys_new(next->api_keys, next->n_api_keys));
	log_info("reload: %zu API key(s)", next->n_api_keys);
	return IDP_OK;
}

/*
 * The configuration serve started with, once a reload has replaced
 * app->cfg: the restart-only keys still have its values, so each reload
 * compares against it (not against the previous reload's file).  Main
 * thread only.
 */
static struct idpd_config *started_cfg;

/* How much of a diagnostic a config.reloaded event quotes. */
#define RELOAD_ERRORS_MAX 20
#define RELOAD_ERROR_BYTES 512

/*
 * The message lines of diag, at most RELOAD_ERRORS_MAX of them, each cut
 * to RELOAD_ERROR_BYTES: not the source lines quoted under a message
 * (indented).  Those never quote a line that may hold a secret (the loader
 * quotes only lines of known keys that are not secret), but they show the
 * file's other values, which an event has no need of.  The messages
 * themselves never hold a secret's value.
 */
static json_t *
reload_errors(const struct idp_diag *diag)
{
	json_t *a = json_array();
	const char *p = idp_diag_str(diag);

	while (*p != '\0' && json_array_size(a) < RELOAD_ERRORS_MAX) {
		size_t n = strcspn(p, "\n");

		if (n > 0 && p[0] != ' ' && p[0] != '\t') {
			char *line = idp_xstrndup(p, n);

			json_array_append_new(a, audit_json_clip(line, RELOAD_ERROR_BYTES));
			free(line);
		}
		p += n;
		if (*p == '\n')
			p++;
	}
	return a;
}

/* Sets o[k] to v, which it steals; a NULL v (a path that is not UTF-8) is left out. */
static void
set_member(json_t *o, const char *k, json_t *v)
{
	if (v != NULL)
		json_object_set_new(o, k, v);
}

/* The detail every config.reloaded event starts from: the file and its SHA-256. */
static json_t *
reload_detail(const char *path, const char *sum)
{
	json_t *d = json_object();

	set_member(d, "path", json_string(path));
	if (sum != NULL && sum[0] != '\0')
		set_member(d, "sha256", json_string(sum));
	return d;
}

/*
 * A new config.reloaded event by idpd itself (actor system "sighup", as
 * policy.reloaded on SIGHUP), with outcome and detail, which it steals.
 * The process that sent the signal, when the kernel names one (kill(2),
 * sigqueue(3)), goes in detail.sent_by.  NULL when detail is too large
 * for an event.  Main thread.
 */
static struct audit_event *
reload_event(enum audit_outcome outcome, json_t *detail, const siginfo_t *si)
{
	struct audit_event *ev = audit_event_new(AUDIT_CONFIG_RELOADED, AUDIT_TIME_UNSET);

	if (ev == NULL) {
		json_decref(detail);
		return NULL;
	}
	audit_event_set_outcome(ev, outcome);
	if (si != NULL && (si->si_code == SI_USER || si->si_code == SI_QUEUE))
		set_member(detail, "sent_by",
		           json_pack("{s:I,s:I}", "pid", (json_int_t)si->si_pid, "uid",
		                     (json_int_t)si->si_uid));
	if (audit_event_set_actor(ev, AUDIT_ACTOR_SYSTEM, "sighup") != IDP_OK ||
	    audit_event_take_detail(ev, detail) != IDP_OK) {
		audit_event_free(ev);
		return NULL;
	}
	return ev;
}

/*
 * Audit a reload that failed at stage ("load": the file does not load;
 * "check": a component cannot use it; "apply": a component failed to take
 * it after the reload was announced, reload_id naming that event, and
 * running_sum naming the configuration the next reload is compared with).
 * Best effort: the reload has failed already, so an audit log that cannot
 * take this is only logged.  Main thread.
 */
static void
reload_failed(const char *path, const char *sum, const char *stage, const char *reload_id,
              const char *running_sum, const struct idp_diag *diag, const siginfo_t *si)
{
	json_t *d = reload_detail(path, sum);
	struct audit_event *ev;

	set_member(d, "stage", json_string(stage));
	if (reload_id != NULL)
		set_member(d, "reload_event_id", json_string(reload_id));
	if (running_sum != NULL && running_sum[0] != '\0')
		set_member(d, "running_sha256", json_string(running_sum));
	set_member(d, "errors", reload_errors(diag));
	set_member(d, "error_count", json_integer((json_int_t)diag->count));
	ev = reload_event(AUDIT_OUTCOME_FAILURE, d, si);
	if (ev == NULL || audit_emit(ev) != IDP_OK)
		log_warn("reload: the failed reload could not be audited (config.reloaded)");
}

/*
 * Audit the reload to next before any component takes it: the
 * config.reloaded event names what changes (idpd_config_changes), the file
 * and its SHA-256, and the hash of the configuration it replaces.  A change
 * too large to list in one event is counted instead (detail.truncated).
 * IDP_OK once the event is written as audit.durability says, its id in id;
 * otherwise the reload must change nothing, as a policy reload that cannot
 * be audited does.  Main thread.
 */
static int
reload_announce(const struct idpd_app *app, const struct idpd_config *next, const siginfo_t *si,
                char id[65])
{
	const struct idpd_config *started = started_cfg != NULL ? started_cfg : app->cfg;
	struct audit_event *ev = NULL;

	for (int compact = 0; compact <= 1 && ev == NULL; compact++) {
		json_t *d = reload_detail(next->path, next->sha256);

		if (app->cfg->sha256[0] != '\0')
			set_member(d, "previous_sha256", json_string(app->cfg->sha256));
		json_object_update_new(d, idpd_config_changes(started, app->cfg, next, compact));
		if (compact)
			set_member(d, "truncated", json_true());
		ev = reload_event(AUDIT_OUTCOME_SUCCESS, d, si);
	}
	if (ev == NULL || audit_event_assign_id(ev) != IDP_OK) {
		audit_event_free(ev);
		return IDP_EINTERNAL;
	}
	snprintf(id, 65, "%s", audit_event_get(ev, AUDIT_F_ID));
	return audit_emit(ev);
}

/*
 * SIGHUP: load the file again, check it with every component, audit it,
 * then apply it.  Every failure before the apply leaves the running
 * configuration as it was and is audited too (config.reloaded, outcome
 * failure).  A component that fails to apply keeps its state while the
 * others switch; app->cfg then stays the configuration before the reload,
 * the one every component last took, so that the next reload's event names
 * every change that component has yet to take (and again those the others
 * took, which this reload's event named).  si is the signal's information.
 * Main thread.
 */
static void
reload(struct idpd_app *app, const siginfo_t *si)
{
	struct idpd_config *next = NULL;
	struct idp_diag diag;
	char sum[IDPD_CONFIG_SUM_LEN + 1], id[65];

	idp_diag_init(&diag);
	if (idpd_config_load_ex(app->cfg->path, &next, sum, &diag) != IDP_OK) {
		log_error("reload: %s; keeping the running configuration", idp_diag_str(&diag));
		reload_failed(app->cfg->path, sum, "load", NULL, NULL, &diag, si);
		return;
	}
	{
		struct idp_diag rd;

		/* Read at start only: said, so that nobody waits for them. */
		idp_diag_init(&rd);
		if (idpd_config_restart_keys(started_cfg != NULL ? started_cfg : app->cfg, next,
		                             &rd) > 0)
			log_warn("reload: %s", idp_diag_str(&rd));
	}
	/* Everything that reads a file or compiles first: a failure there
	 * leaves the whole running configuration as it was. */
	if (app_run_reload_checks(app, next, &diag) != 0) {
		log_error("reload: %s; nothing was changed, the running configuration stays",
		          idp_diag_str(&diag));
		reload_failed(next->path, next->sha256, "check", NULL, NULL, &diag, si);
		idpd_config_free(next);
		return;
	}
	/* A new API key or trust anchor is live only once its event is
	 * written: a reload the audit log cannot take changes nothing. */
	if (reload_announce(app, next, si, id) != IDP_OK) {
		log_error("reload: the audit log cannot take its config.reloaded event; nothing "
		          "was changed, the running configuration stays");
		app_reload_discard();
		idpd_config_free(next);
		return;
	}
	if (app_run_reload_hooks(app, next, &diag) != 0) {
		log_error(
		    "reload: %s; components that failed keep their state, the others switched; "
		    "the next reload is compared with the configuration before this one",
		    idp_diag_str(&diag));
		reload_failed(next->path, next->sha256, "apply", id, app->cfg->sha256, &diag, si);
		idpd_config_free(next);
		return;
	}
	{
		int lvl = idp_log_level_parse(next->log.level);

		if (lvl >= 0)
			idp_log_set_level((enum idp_log_level)lvl);
	}
	/* Components copied what they need, so the old config can go, except
	 * the one serve started with. */
	if (started_cfg == NULL)
		started_cfg = app->cfg;
	else
		idpd_config_free(app->cfg);
	app->cfg = next;
	log_info("reload: done");
}

/* The verb classes: the built-in map plus [[policy.verbs]].  0, or -1 (logged). */
static int
install_verbs(const struct idpd_config *cfg)
{
	struct idp_diag diag;
	struct scope_verb_map *m;

	idp_diag_init(&diag);
	m = scope_verb_map_from_config(cfg, &diag);
	if (m == NULL) {
		log_error("policy.verbs: %s", idp_diag_str(&diag));
		return -1;
	}
	scope_verb_map_install(m);
	if (cfg->policy.n_verbs > 0)
		log_info("policy: %zu verb(s) added to the built-in verb classes",
		         cfg->policy.n_verbs);
	return 0;
}

/* idpd serve --config FILE [--migrate] */
static int
cmd_serve(int argc, char **argv)
{
	static const struct option opts[] = {{"config", required_argument, NULL, 'c'},
	                                     {"migrate", no_argument, NULL, 'm'},
	                                     {NULL, 0, NULL, 0}};
	struct idpd_app app;
	struct http_server_opts ho;
	struct http_router *router;
	struct keys *keys = NULL;
	struct keys_keks keks = {0};
	struct idp_diag diag;
	struct store_opts so;
	const char *config = NULL;
	bool migrate = false;
	sigset_t sigs;
	int c, sig, rc = 1, left;
	char host[64];

	memset(&app, 0, sizeof(app));
	optind = 1;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 'c':
			config = optarg;
			break;
		case 'm':
			migrate = true;
			break;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (config == NULL || optind != argc) {
		usage(stderr);
		return 2;
	}
	app.cfg = load_config(config);
	if (app.cfg == NULL)
		return 1;
	{
		int lvl = idp_log_level_parse(app.cfg->log.level);

		idp_log_set_level(lvl >= 0 ? (enum idp_log_level)lvl : IDP_LOG_INFO);
	}
	if (install_verbs(app.cfg) != 0) {
		idpd_config_free(app.cfg);
		return 1;
	}
	/*
	 * The KEKs now, while this is the only thread: reading them scrubs
	 * them from the environment, and unsetenv racing a getenv in another
	 * thread (libpq reads PG* variables) is undefined.  A missing or bad
	 * KEK is refused here, before anything is started.
	 */
	idp_diag_init(&diag);
	if (keys_load_keks(app.cfg, &keks, &diag) != IDP_OK) {
		log_error("%s", idp_diag_str(&diag));
		idpd_config_free(app.cfg);
		return 1;
	}
	app.started_ms = idp_now_ms(idp_clock_system());
	if (app.cfg->node.instance_id[0] != '\0') {
		snprintf(app.instance_id, sizeof(app.instance_id), "%s", app.cfg->node.instance_id);
	} else {
		if (gethostname(host, sizeof(host)) != 0)
			snprintf(host, sizeof(host), "localhost");
		host[sizeof(host) - 1] = '\0';
		snprintf(app.instance_id, sizeof(app.instance_id), "%s:%d", host, (int)getpid());
	}

	/* Block the signals before any thread exists, so all threads inherit
	 * the mask and only sigwaitinfo() below sees them. */
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGINT);
	sigaddset(&sigs, SIGTERM);
	sigaddset(&sigs, SIGHUP);
	pthread_sigmask(SIG_BLOCK, &sigs, NULL);
	signal(SIGPIPE, SIG_IGN);

	idp_diag_init(&diag);
	app.schema_expected = store_migrations_latest(app.cfg->node.migrations_dir, &diag);
	if (app.schema_expected < 0) {
		log_error("migrations: %s", idp_diag_str(&diag));
		goto done;
	}
	if (migrate) {
		int m = run_migrations(app.cfg->database.url, app.cfg->node.migrations_dir);

		/* Asked to stop while waiting for another instance's migration:
		 * a clean stop before serving, not a failure. */
		if (m == MIGRATE_STOPPED) {
			log_info("stopped before serving");
			rc = 0;
		}
		if (m != 0)
			goto done;
	}

	so.url = app.cfg->database.url;
	so.pool_size = app.cfg->database.pool_size;
	so.connect_timeout_ms = app.cfg->database.connect_timeout_ms;
	so.acquire_timeout_ms = app.cfg->database.acquire_timeout_ms;
	so.statement_timeout_ms = app.cfg->database.statement_timeout_ms;
	app.store = store_open(&so);
	auth_keys_install(auth_keys_new(app.cfg->api_keys, app.cfg->n_api_keys));
	auth_on_refusal(audit_refused_key);
	if (audit_refusal_init() != IDP_OK)
		log_warn("bug: cannot register the refusal metrics");
	if (app_on_reload(reload_api_keys, NULL) != IDP_OK)
		log_warn("bug: cannot register the API key reload hook");
	if (check_schema(&app) != 0)
		goto done;
	{
		struct audit_alert_config alerts;
		struct audit_writer_opts ao = {
		    .url = app.cfg->database.url,
		    .instance_id = app.instance_id,
		    .queue_max = app.cfg->audit.queue_max,
		    .batch_max = app.cfg->audit.batch_max,
		    .batch_wait_ms = app.cfg->audit.batch_wait_ms,
		    .sync = strcmp(app.cfg->audit.durability, "sync") == 0,
		    .fail_closed = strcmp(app.cfg->audit.on_full, "fail_closed") == 0,
		    .timeout_ms = app.cfg->audit.timeout_ms,
		    .alerts = &alerts,
		};

		audit_alert_config_defaults(&alerts);
		alerts.escalation_threshold = (unsigned)app.cfg->audit.alerts.escalation_threshold;
		alerts.escalation_window_ms = app.cfg->audit.alerts.escalation_window_ms;
		alerts.escalation_severity = app.cfg->audit.alerts.escalation_severity;
		alerts.chain_violation = app.cfg->audit.alerts.chain_violation;
		alerts.chain_severity = app.cfg->audit.alerts.chain_severity;
		alerts.novelty = app.cfg->audit.alerts.novelty;
		alerts.novelty_min_events = (unsigned)app.cfg->audit.alerts.novelty_min_events;
		alerts.novelty_max_items = (unsigned)app.cfg->audit.alerts.novelty_max_items;
		alerts.novelty_severity = app.cfg->audit.alerts.novelty_severity;
		alerts.max_agents = (unsigned)app.cfg->audit.alerts.max_agents;

		idp_diag_init(&diag);
		if (audit_writer_start(&ao, &diag) != IDP_OK) {
			log_error("%s", idp_diag_str(&diag));
			goto done;
		}
		if (app_on_ready("audit", audit_writer_unready, NULL) != IDP_OK)
			log_warn("bug: cannot register the audit writer's readiness check");
		idp_diag_init(&diag);
		if (audit_ship_start(app.cfg, IDPD_VERSION, &diag) != IDP_OK) {
			log_error("%s", idp_diag_str(&diag));
			goto done;
		}
	}
	app.listener = store_listener_new(app.cfg->database.url);
	store_register_metrics(app.store, app.listener);
	idp_diag_init(&diag);
	if (registry_init(&app, &diag) != IDP_OK) {
		log_error("%s", idp_diag_str(&diag));
		goto done;
	}
	/* A KEK that does not open the keys ends startup here, before anything is served. */
	idp_diag_init(&diag);
	if (keys_start(&app, &keks, &keys, &diag) != IDP_OK) {
		log_error("%s", idp_diag_str(&diag));
		goto done;
	}
	idp_diag_init(&diag);
	if (app.cfg->tokens.presign_pool > 0)
		log_warn("config: tokens.presign_pool is ignored: precomputed ECDSA nonces were "
		         "removed (docs/tokens.md, \"Signing\")");
	idp_diag_init(&diag);
	if (attest_init(&app, &diag) != IDP_OK) {
		log_error("%s", idp_diag_str(&diag));
		goto done;
	}
	idp_diag_init(&diag);
	if (human_auth_init(&app, &diag) != IDP_OK || tasks_init(&app, &diag) != IDP_OK ||
	    delegation_init(&app, &diag) != IDP_OK || approvals_init(&app, &diag) != IDP_OK) {
		log_error("%s", idp_diag_str(&diag));
		goto done;
	}
	idp_diag_init(&diag);
	if (revocation_init(&app, &diag) != IDP_OK || access_init(&app, &diag) != IDP_OK ||
	    oauth_init(&app, &diag) != IDP_OK) {
		log_error("%s", idp_diag_str(&diag));
		goto done;
	}
	audit_set_token_resolver(revocation_introspect_access);
	if (maintenance_register("signing_keys", keys_maintenance_job, keys) != IDP_OK)
		log_warn("bug: cannot register the key rotation job");
	/* A policy set with errors ends startup here: idpd never runs without one. */
	idp_diag_init(&diag);
	if (policy_service_start(&app, &diag) != IDP_OK) {
		log_error("%s", idp_diag_str(&diag));
		goto done;
	}

	router = http_router_new();
	if (ops_routes(router, &app) != IDP_OK || audit_routes(router, &app) != IDP_OK ||
	    registry_routes(router, &app) != IDP_OK || maintenance_routes(router, &app) != IDP_OK ||
	    keys_routes(router, keys) != IDP_OK || policy_routes(router, &app) != IDP_OK ||
	    attest_routes(router, &app) != IDP_OK || tasks_routes(router, &app) != IDP_OK ||
	    delegation_routes(router, &app) != IDP_OK || approvals_routes(router, &app) != IDP_OK ||
	    revocation_routes(router, &app) != IDP_OK || access_routes(router, &app) != IDP_OK ||
	    oauth_routes(router, &app) != IDP_OK) {
		log_error("bug: cannot register routes");
		http_router_free(router);
		goto done;
	}
	if (store_listener_start(app.listener) != IDP_OK) {
		log_error("cannot start the listener thread");
		http_router_free(router);
		goto done;
	}

	ho.listen = app.cfg->server.listen;
	ho.port = app.cfg->server.port;
	ho.threads = app.cfg->server.threads > 0 ? app.cfg->server.threads
	                                         : (int)sysconf(_SC_NPROCESSORS_ONLN);
	if (ho.threads < 1)
		ho.threads = 1;
	ho.handler_threads = app.cfg->server.handler_threads;
	ho.max_body = (size_t)app.cfg->server.max_body;
	ho.max_body_memory = (size_t)app.cfg->server.max_body_memory;
	ho.max_connections = app.cfg->server.max_connections;
	ho.connection_timeout_s = (int)(app.cfg->server.connection_timeout_ms / 1000);
	ho.json_max_depth = app.cfg->server.json_max_depth;
	ho.access_log = app.cfg->log.access;
	idp_diag_init(&diag);
	app.http = http_server_start(&ho, router, &diag);
	if (app.http == NULL) {
		log_error("%s", idp_diag_str(&diag));
		goto done;
	}
	log_info("idpd %s listening on %s:%d with %d I/O and %d handler thread(s), instance %s",
	         IDPD_VERSION, ho.listen, ho.port, ho.threads, ho.handler_threads, app.instance_id);

	for (;;) {
		siginfo_t si;

		/* sigwaitinfo, not sigwait: a reload's audit event names who sent it. */
		sig = sigwaitinfo(&sigs, &si);
		if (sig < 0)
			continue;
		if (sig == SIGHUP) {
			log_info("SIGHUP: reloading %s", app.cfg->path);
			reload(&app, &si);
			continue;
		}
		log_info("%s: draining (up to %lld ms)", sig == SIGINT ? "SIGINT" : "SIGTERM",
		         (long long)app.cfg->server.shutdown_timeout_ms);
		break;
	}
	left = http_server_stop(app.http, app.cfg->server.shutdown_timeout_ms);
	app.http = NULL;
	if (left > 0)
		log_warn("shutdown: %d request(s) ended without their answer", left);
	rc = 0;
done:
	if (app.http != NULL)
		http_server_stop(app.http, 0);
	store_listener_free(app.listener);
	revocation_shutdown(); /* after HTTP and the listener, its users */
	access_shutdown();
	registry_shutdown();      /* after HTTP and the listener, its two users */
	keys_free(keys);          /* likewise */
	keys_keks_cleanup(&keks); /* if startup ended before keys_start took them */
	attest_shutdown();
	human_auth_shutdown();
	jwks_remote_shutdown(); /* after its users, attest and human_auth */
	policy_service_stop();
	/* After HTTP: every request that emitted has been answered. */
	audit_ship_stop();
	left = audit_writer_stop(app.cfg ? app.cfg->server.shutdown_timeout_ms : 0);
	if (left > 0) {
		log_error("audit: %d event(s) could not be written before exit", left);
		/* Audit events lost: not a clean stop, whatever systemd expects. */
		if (rc == 0)
			rc = 1;
	}
	store_close(app.store);
	auth_keys_install(NULL);
	scope_verb_map_install(NULL); /* frees the installed map */
	idpd_config_free(app.cfg);
	idpd_config_free(started_cfg);
	started_cfg = NULL;
	if (rc == 0)
		log_info("stopped");
	return rc;
}

static int
dispatch(int argc, char **argv)
{
	if (argc < 2) {
		usage(stderr);
		return 2;
	}
	if (strcmp(argv[1], "serve") == 0)
		return cmd_serve(argc - 1, argv + 1);
	if (strcmp(argv[1], "migrate") == 0)
		return cmd_migrate(argc - 1, argv + 1);
	if (strcmp(argv[1], "check-config") == 0)
		return cmd_check_config(argc - 1, argv + 1);
	if (strcmp(argv[1], "keys") == 0)
		return keys_cli(argc - 1, argv + 1);
	if (strcmp(argv[1], "policy") == 0)
		return policy_cli_main(argc - 1, argv + 1);
	if (strcmp(argv[1], "api-key") == 0)
		return cmd_api_key(argc - 1, argv + 1);
	if (strcmp(argv[1], "version") == 0 || strcmp(argv[1], "--version") == 0) {
		printf("idpd %s\n", IDPD_VERSION);
		return 0;
	}
	if (strcmp(argv[1], "help") == 0 || strcmp(argv[1], "--help") == 0) {
		usage(stdout);
		return 0;
	}
	fprintf(stderr, "idpd: unknown command \"%s\"\n", argv[1]);
	usage(stderr);
	return 2;
}

int
main(int argc, char **argv)
{
	int rc;

	(void)idp_kek_guard_process();
	rc = dispatch(argc, argv);

	/* What a command printed may be all there is of its result (a new API
	 * key is shown once): output that did not reach its file is a failure,
	 * not an exit 0 with an empty file. */
	if (fflush(stdout) != 0 || ferror(stdout)) {
		fprintf(stderr, "idpd: cannot write to standard output\n");
		return rc != 0 ? rc : 1;
	}
	return rc;
}
