/*
 * keys_api.c - the key manager's faces: startup for `idpd serve`, the HTTP
 * endpoints (JWKS, listing, rotation), the cleanup job, and the
 * `idpd keys` command.
 */
#include <getopt.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "idpd/app.h"
#include "idpd/audit_writer.h"
#include "idpd/auth.h"
#include "idpd/clock.h"
#include "idpd/config.h"
#include "idpd/http.h"
#include "idpd/kek.h"
#include "idpd/keys.h"
#include "idpd/log.h"
#include "idpd/maintenance.h"
#include "idpd/store.h"
#include "keys_int.h"

#define REASON_MAX 256
#define LIST_MAX 1000

static void
policy_from(const struct idpd_config *cfg, struct keys_policy *pol)
{
	pol->rotate_every_ms = cfg->keys.rotate_every_ms;
	pol->retire_after_ms = cfg->keys.retire_after_ms;
	pol->max_age_ms = cfg->keys.max_age_ms;
}

/* Where the KEK comes from, as idp_kek_load decides it, for messages. */
static void
kek_source(const struct idpd_config *cfg, char *out, size_t len)
{
	const char *env = getenv(IDP_KEK_ENV);

	if (env != NULL && env[0] != '\0')
		snprintf(out, len, "$%s", IDP_KEK_ENV);
	else
		snprintf(out, len, "keys.kek_file (%s)", cfg->keys.kek_file);
}

/*
 * Load the KEK as idp_kek_load decides and scrub $IDPD_KEK, whether or not
 * it held a KEK; source gets where it came from.  Before other threads.
 */
static int
load_kek(const struct idpd_config *cfg, struct idp_kek **kek, char *source, size_t len,
         struct idp_diag *diag)
{
	int rc;

	kek_source(cfg, source, len);
	rc = idp_kek_load(cfg->keys.kek_file, kek, diag);
	idp_kek_scrub_env();
	if (rc != IDP_OK)
		idp_diag_add(diag, "keys: the signing keys are sealed with the key-encryption key; "
		                   "give idpd the one it was started with (under `make run`, "
		                   "IDPD_KEK=$(cat var/dev-kek))");
	return rc;
}

/* Open a manager on store with kek (taken, also on error).  Shared by serve and the CLI. */
static int
open_with(const struct idpd_config *cfg, struct store *store, struct idp_kek *kek,
          const char *source, struct keys **out, struct idp_diag *diag)
{
	struct keys_opts o;

	*out = NULL;
	memset(&o, 0, sizeof(o));
	o.store = store;
	o.clock = idp_clock_system();
	policy_from(cfg, &o.policy);
	o.jwks_max_age_ms = cfg->keys.jwks_max_age_ms;
	o.kek_source = source;
	return keys_open(&o, kek, out, diag);
}

int
keys_load_keks(const struct idpd_config *cfg, struct keys_keks *out, struct idp_diag *diag)
{
	const char *env;
	int rc;

	memset(out, 0, sizeof(*out));
	rc = load_kek(cfg, &out->kek, out->source, sizeof(out->source), diag);
	/* The KEK being replaced, if given: keys still sealed under it are
	 * checked with it rather than trusted only when already known. */
	env = getenv(IDP_KEK_OLD_ENV);
	if (rc == IDP_OK && env != NULL && env[0] != '\0') {
		rc = idp_kek_from_string(env, &out->old, diag);
		if (rc != IDP_OK)
			idp_diag_add(diag, "keys: $" IDP_KEK_OLD_ENV " is not a KEK");
	}
	idp_kek_scrub_env_var(IDP_KEK_OLD_ENV);
	if (rc != IDP_OK)
		keys_keks_cleanup(out);
	return rc;
}

void
keys_keks_cleanup(struct keys_keks *k)
{
	idp_kek_free(k->kek);
	idp_kek_free(k->old);
	k->kek = k->old = NULL;
}

static int
on_reload(struct idpd_app *app, const struct idpd_config *next, void *ctx, struct idp_diag *diag)
{
	struct keys_policy pol;

	(void)app;
	(void)diag;
	policy_from(next, &pol);
	keys_set_policy(ctx, &pol, next->keys.jwks_max_age_ms);
	return IDP_OK;
}

int
keys_start(struct idpd_app *app, struct keys_keks *keks, struct keys **out, struct idp_diag *diag)
{
	struct idp_kek *old = keks->old;
	struct keys *km;
	int rc;

	*out = NULL;
	keks->old = NULL;
	rc = open_with(app->cfg, app->store, keks->kek, keks->source, &km, diag);
	keks->kek = NULL;
	if (rc != IDP_OK) {
		idp_kek_free(old);
		return rc;
	}
	if (old != NULL)
		keys_hold_old_kek(km, old);
	rc = keys_ensure(km, diag);
	if (rc != IDP_OK) {
		keys_free(km);
		return rc;
	}
	if (keys_subscribe(km, app->listener) != IDP_OK || app_on_reload(on_reload, km) != IDP_OK) {
		idp_diag_add(diag, "keys: cannot subscribe to the listener or register the reload "
		                   "hook");
		keys_free(km);
		return IDP_EINVAL;
	}
	log_info("keys: signing keys sealed with %s", keys_kek_id(km));
	keys_set_process(km);
	*out = km;
	return IDP_OK;
}

/* ---- HTTP ---- */

static void
jwks(struct http_req *req, void *ctx)
{
	struct keys *km = ctx;
	char cache[64], *body;
	size_t len;

	if (keys_jwks(km, &body, &len) != IDP_OK) {
		http_reply_error(req, IDP_EUNAVAIL, "the signing keys are not loaded");
		return;
	}
	/*
	 * Missing the notification of a key published elsewhere, this set may
	 * lack it: not to be cached, or a verifier would keep it past the time
	 * a rotation waits for (keys.jwks_max_age) and refuse the new key.
	 */
	if (keys_may_lack_kid(km))
		snprintf(cache, sizeof(cache), "no-store");
	else
		snprintf(cache, sizeof(cache), "public, max-age=%lld",
		         (long long)(keys_jwks_max_age_ms(km) / 1000));
	http_add_header(req, "Cache-Control", cache);
	http_reply_data(req, 200, "application/json", body, len);
	free(body);
}

static json_t *
time_or_null(int64_t ms)
{
	char t[32];

	if (ms == 0)
		return json_null();
	idp_time_format(ms, t);
	return json_string(t);
}

static json_t *
info_json(const struct keys_info *k)
{
	return json_pack("{s:s,s:s,s:s,s:s,s:o,s:o,s:o,s:o,s:o,s:o}", "kid", k->kid, "alg", "ES256",
	                 "state", keys_state_name(k->state), "kek_id", k->kek_id, "created_at",
	                 time_or_null(k->created_ms), "activated_at", time_or_null(k->activated_ms),
	                 "retiring_at", time_or_null(k->retiring_ms), "retire_after",
	                 time_or_null(k->retire_after_ms), "retired_at",
	                 time_or_null(k->retired_ms), "not_after", time_or_null(k->not_after_ms));
}

static int
list_keys(struct store *store, json_t **out)
{
	struct store_conn *c;
	struct keys_info *infos;
	size_t n;
	int rc;

	*out = NULL;
	if (store_acquire(store, &c) != IDP_OK)
		return IDP_EUNAVAIL;
	rc = keys_db_list(c, LIST_MAX, &infos, &n);
	store_release(store, c);
	if (rc != IDP_OK)
		return rc;
	*out = json_array();
	for (size_t i = 0; i < n; i++)
		json_array_append_new(*out, info_json(&infos[i]));
	free(infos);
	return IDP_OK;
}

struct api_ctx {
	struct keys *km;
	struct store *store;
};

static void
list(struct http_req *req, void *ctx)
{
	struct api_ctx *a = ctx;
	struct auth_principal who;
	json_t *keys;

	if (!auth_require(req, IDPD_ROLE_AUDITOR, &who) || !http_req_query_only(req, NULL))
		return;
	if (list_keys(a->store, &keys) != IDP_OK) {
		http_reply_error(req, IDP_EUNAVAIL, "the signing keys cannot be read now");
		return;
	}
	http_reply_json(req, 200, json_pack("{s:o}", "keys", keys));
}

static json_t *
result_json(const struct keys_result *res)
{
	json_t *o = json_pack("{s:b,s:s,s:s,s:s,s:i,s:i}", "rotated", res->rotated, "active",
	                      res->active, "next", res->next, "why", res->why ? res->why : "none",
	                      "generated", (int)res->generated, "retired", (int)res->retired);

	json_object_set_new(o, "previous",
	                    res->previous[0] ? json_string(res->previous) : json_null());
	return o;
}

/*
 * The optional body {"reason": "...", "force": bool, "retire": "<kid>"}:
 * NULL reason and retire when absent.  retire names a compromised key to
 * retire at once; it implies force.
 */
static bool
read_rotate_body(struct http_req *req, json_t **holder, const char **reason, bool *force,
                 const char **retire)
{
	const char *k;
	json_t *v;
	size_t len;

	*holder = NULL;
	*reason = NULL;
	*force = false;
	*retire = NULL;
	(void)http_req_body(req, &len);
	if (len == 0)
		return true;
	*holder = http_req_json_object(req);
	if (*holder == NULL)
		return false;
	json_object_foreach(*holder, k, v)
	{
		if (strcmp(k, "force") == 0) {
			if (!json_is_boolean(v)) {
				http_reply_problem(req, 422, "unprocessable", NULL,
				                   "force must be true or false");
				return false;
			}
			*force = json_is_true(v);
			continue;
		}
		if (strcmp(k, "retire") == 0) {
			if (!json_is_string(v) || json_string_length(v) == 0 ||
			    json_string_length(v) > IDP_JWS_MAX_KID) {
				http_reply_problem(req, 422, "unprocessable", NULL,
				                   "retire must be the kid of a signing key");
				return false;
			}
			*retire = json_string_value(v);
			continue;
		}
		if (strcmp(k, "reason") != 0) {
			http_reply_problem(
			    req, 422, "unprocessable", NULL,
			    "unknown member \"%.64s\": only \"reason\", \"force\" and "
			    "\"retire\" are accepted",
			    k);
			return false;
		}
		if (!json_is_string(v) || json_string_length(v) == 0 ||
		    json_string_length(v) > REASON_MAX) {
			http_reply_problem(req, 422, "unprocessable", NULL,
			                   "reason must be a string of 1 to %d bytes", REASON_MAX);
			return false;
		}
		*reason = json_string_value(v);
	}
	return true;
}

static void
rotate(struct http_req *req, void *ctx)
{
	struct api_ctx *a = ctx;
	struct auth_principal who;
	struct keys_origin origin;
	struct keys_result res;
	struct idp_diag diag;
	json_t *holder;
	const char *reason, *retire;
	bool force;
	int rc;

	/* Its options are the body's: ?force=1 would rotate without force. */
	if (!auth_require(req, IDPD_ROLE_ADMIN, &who) || !http_req_query_only(req, NULL))
		return;
	if (!read_rotate_body(req, &holder, &reason, &force, &retire)) {
		json_decref(holder);
		return;
	}
	origin.actor_kind = AUDIT_ACTOR_OPERATOR;
	origin.actor = who.name;
	origin.request_id = http_req_id(req);
	origin.source_address = http_req_peer(req);
	origin.reason = reason;
	idp_diag_init(&diag);
	rc = retire != NULL ? keys_retire_now(a->km, retire, &origin, &res, &diag)
	                    : keys_rotate(a->km, force, &origin, &res, &diag);
	json_decref(holder);
	if (rc == IDP_ENOTFOUND) {
		http_reply_problem(req, 409, "key_not_live", NULL, "%s", idp_diag_str(&diag));
		return;
	}
	if (rc == IDP_EPRECOND) {
		log_warn("keys: rotation asked by %s refused: %s", who.name, idp_diag_str(&diag));
		http_reply_problem(req, 409, "next_key_not_ready", NULL, "%s", idp_diag_str(&diag));
		return;
	}
	if (rc != IDP_OK) {
		log_error("keys: rotation asked by %s failed: %s", who.name, idp_diag_str(&diag));
		if (rc == IDP_ECONFLICT)
			http_reply_problem(req, 409, "too_many_keys", NULL, "%s",
			                   idp_diag_str(&diag));
		else if (rc == IDP_EFORBIDDEN)
			http_reply_error(
			    req, IDP_EUNAVAIL,
			    "this instance cannot open the signing keys (see its log)");
		else
			http_reply_error(req, IDP_EUNAVAIL,
			                 "the signing keys cannot be changed now");
		return;
	}
	if (res.audit_failures > 0) {
		http_reply_problem(
		    req, 503, "unavailable", json_pack("{s:o}", "result", result_json(&res)),
		    "the keys were rotated, but the audit event could not be written");
		return;
	}
	http_reply_json(req, 200, result_json(&res));
}

int
keys_routes(struct http_router *r, struct keys *km)
{
	/* One per process, like the routes; freed with the router's process. */
	static struct api_ctx a;

	a.km = km;
	a.store = keys_store(km);
	if (http_router_add_ex(r, HTTP_GET, "/.well-known/jwks.json", jwks, km,
	                       HTTP_ROUTE_INLINE) != IDP_OK ||
	    http_router_add(r, HTTP_GET, "/v1/keys", list, &a) != IDP_OK ||
	    http_router_add(r, HTTP_POST, "/v1/keys/rotate", rotate, &a) != IDP_OK)
		return IDP_EINVAL;
	return IDP_OK;
}

/* ---- the cleanup job ---- */

int
keys_maintenance_job(const struct maintenance_run *run, void *ctx, json_t *counts,
                     struct idp_diag *diag)
{
	struct keys_origin origin = {
	    .actor_kind = AUDIT_ACTOR_OPERATOR,
	    .actor = run->actor,
	    .request_id = run->request_id,
	    .source_address = run->source_address,
	};
	struct keys_result res;
	int rc;

	rc = keys_rotate_if_due(ctx, run->conn, &origin, &res, diag);
	if (rc != IDP_OK)
		return rc;
	json_object_set_new(counts, "rotated", json_integer(res.rotated ? 1 : 0));
	json_object_set_new(counts, "generated", json_integer(res.generated));
	json_object_set_new(counts, "retired", json_integer(res.retired));
	json_object_set_new(counts, "active", json_string(res.active));
	return IDP_OK;
}

/* ---- idpd keys ---- */

static void
cli_usage(void)
{
	fprintf(stderr,
	        "usage: idpd keys rotate --config FILE [--reason TEXT] [--force | --retire KID]\n"
	        "       idpd keys list --config FILE\n"
	        "       idpd keys reseal --config FILE [--old-kek-file PATH] [--reason TEXT]\n"
	        "         (the new KEK as for idpd serve; the old one from $" IDP_KEK_OLD_ENV
	        " or --old-kek-file)\n");
}

/* "cli:<login>" for the audit actor. */
static void
cli_actor(char *out, size_t len)
{
	struct passwd pw, *found = NULL;
	char buf[1024];

	if (getpwuid_r(geteuid(), &pw, buf, sizeof(buf), &found) == 0 && found != NULL)
		snprintf(out, len, "cli:%.100s", found->pw_name);
	else
		snprintf(out, len, "cli:uid-%u", (unsigned)geteuid());
}

/*
 * A key change from the command line: its own audit writer (the change is
 * audited like any other) and the operator it acts for, in *origin (which
 * points into actor).  0, or 1 after saying why.
 */
static int
cli_begin(const struct idpd_config *cfg, const char *reason, char actor[128],
          struct keys_origin *origin)
{
	struct audit_writer_opts ao = {
	    .url = cfg->database.url,
	    .queue_max = 64,
	    .batch_max = 16,
	    .sync = true,
	    .timeout_ms = cfg->audit.timeout_ms,
	};
	struct idp_diag diag;
	char instance[128];

	cli_actor(actor, 128);
	snprintf(instance, sizeof(instance), "idpd-keys:%d", (int)getpid());
	ao.instance_id = instance; /* copied by the writer */
	*origin = (struct keys_origin){
	    .actor_kind = AUDIT_ACTOR_OPERATOR, .actor = actor, .reason = reason};
	idp_diag_init(&diag);
	if (audit_writer_start(&ao, &diag) != IDP_OK) {
		fprintf(stderr, "idpd: %s\n", idp_diag_str(&diag));
		return 1;
	}
	return 0;
}

static int
cli_rotate(const struct idpd_config *cfg, struct keys *km, bool force, const char *retire,
           const char *reason)
{
	struct keys_origin origin;
	struct keys_result res;
	struct idp_diag diag;
	char actor[128], *text;
	json_t *out;
	int rc, left;

	if (cli_begin(cfg, reason, actor, &origin) != 0)
		return 1;
	idp_diag_init(&diag);
	rc = retire != NULL ? keys_retire_now(km, retire, &origin, &res, &diag)
	                    : keys_rotate(km, force, &origin, &res, &diag);
	left = audit_writer_stop(cfg->audit.timeout_ms);
	if (rc != IDP_OK) {
		fprintf(stderr, "idpd: keys rotate: %s\n", idp_diag_str(&diag));
		/* Not yet, rather than broken: a script may retry later. */
		return rc == IDP_EPRECOND || rc == IDP_ENOTFOUND ? 3 : 1;
	}
	out = result_json(&res);
	text = json_dumps(out, JSON_COMPACT);
	json_decref(out);
	printf("%s\n", text != NULL ? text : "{}");
	free(text);
	if (res.audit_failures > 0 || left > 0) {
		fprintf(stderr,
		        "idpd: keys rotate: the keys were rotated, but %u audit event(s) "
		        "could not be written\n",
		        res.audit_failures + (unsigned)left);
		return 1;
	}
	return 0;
}

/* The KEK being replaced: $IDPD_KEK_OLD (scrubbed once read) or the file. */
static int
old_kek_load(const char *file, struct idp_kek **out, struct idp_diag *diag)
{
	const char *env = getenv(IDP_KEK_OLD_ENV);
	int rc;

	if (env != NULL && env[0] != '\0' && file != NULL) {
		idp_kek_scrub_env_var(IDP_KEK_OLD_ENV);
		idp_diag_add(diag, "keys reseal: the old KEK from $" IDP_KEK_OLD_ENV
		                   " or --old-kek-file, not both");
		return IDP_EINVAL;
	}
	if (env != NULL && env[0] != '\0') {
		rc = idp_kek_from_string(env, out, diag);
		idp_kek_scrub_env_var(IDP_KEK_OLD_ENV);
		return rc;
	}
	if (file != NULL)
		return idp_kek_from_file(file, out, diag);
	idp_diag_add(diag,
	             "keys reseal: the old KEK comes from $" IDP_KEK_OLD_ENV " or --old-kek-file");
	return IDP_EINVAL;
}

static int
cli_reseal(const struct idpd_config *cfg, struct keys *km, struct idp_kek *old, const char *reason)
{
	struct keys_origin origin;
	struct idp_diag diag;
	char actor[128], old_id[21];
	size_t n = 0;
	int rc, left;

	if (cli_begin(cfg, reason, actor, &origin) != 0)
		return 1;
	idp_diag_init(&diag);
	rc = keys_reseal(km, old, &origin, &n, &diag);
	left = audit_writer_stop(cfg->audit.timeout_ms);
	if (rc != IDP_OK) {
		fprintf(stderr, "idpd: keys reseal: %s\n", idp_diag_str(&diag));
		return 1;
	}
	idp_kek_id(old, old_id);
	printf("{\"resealed\":%zu,\"from_kek_id\":\"%s\",\"kek_id\":\"%s\"}\n", n, old_id,
	       keys_kek_id(km));
	if (left > 0) {
		fprintf(stderr, "idpd: keys reseal: %d audit event(s) could not be written\n",
		        left);
		return 1;
	}
	return 0;
}

int
keys_cli(int argc, char **argv)
{
	static const struct option opts[] = {{"config", required_argument, NULL, 'c'},
	                                     {"reason", required_argument, NULL, 'r'},
	                                     {"old-kek-file", required_argument, NULL, 'o'},
	                                     {"force", no_argument, NULL, 'f'},
	                                     {"retire", required_argument, NULL, 'x'},
	                                     {NULL, 0, NULL, 0}};
	const char *config = NULL, *reason = NULL, *old_file = NULL, *sub;
	bool force = false;
	const char *retire = NULL;
	struct idp_kek *old = NULL;
	struct idpd_config *cfg = NULL;
	struct store *store = NULL;
	struct keys *km = NULL;
	struct idp_diag diag;
	struct store_opts so;
	int c, rc = 1;

	if (argc < 2 || (strcmp(argv[1], "rotate") != 0 && strcmp(argv[1], "list") != 0 &&
	                 strcmp(argv[1], "reseal") != 0)) {
		cli_usage();
		return 2;
	}
	sub = argv[1];
	optind = 2;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 'c':
			config = optarg;
			break;
		case 'r':
			reason = optarg;
			break;
		case 'o':
			old_file = optarg;
			break;
		case 'f':
			force = true;
			break;
		case 'x':
			retire = optarg;
			break;
		default:
			cli_usage();
			return 2;
		}
	}
	if (config == NULL || optind != argc || (reason != NULL && strcmp(sub, "list") == 0) ||
	    (old_file != NULL && strcmp(sub, "reseal") != 0) ||
	    (force && strcmp(sub, "rotate") != 0) ||
	    (retire != NULL && (strcmp(sub, "rotate") != 0 || retire[0] == '\0')) ||
	    (reason != NULL && (reason[0] == '\0' || strlen(reason) > REASON_MAX))) {
		cli_usage();
		return 2;
	}
	idp_diag_init(&diag);
	if (idpd_config_load(config, &cfg, &diag) != IDP_OK) {
		fprintf(stderr, "%s\nidpd: %u error(s) in %s\n", idp_diag_str(&diag), diag.count,
		        config);
		return 1;
	}
	{
		int lvl = idp_log_level_parse(cfg->log.level);

		idp_log_set_level(lvl > IDP_LOG_WARN ? (enum idp_log_level)lvl : IDP_LOG_WARN);
	}
	so.url = cfg->database.url;
	so.pool_size = 2;
	so.connect_timeout_ms = cfg->database.connect_timeout_ms;
	so.acquire_timeout_ms = cfg->database.connect_timeout_ms;
	so.statement_timeout_ms = cfg->database.statement_timeout_ms;
	store = store_open(&so);
	if (strcmp(sub, "list") == 0) {
		json_t *keys;
		char *text;

		rc = list_keys(store, &keys);
		if (rc != IDP_OK) {
			fprintf(stderr, "idpd: keys list: cannot read the signing keys (%s)\n",
			        idp_err_name(rc));
			rc = 1;
			goto done;
		}
		text = json_dumps(keys, JSON_INDENT(2));
		json_decref(keys);
		printf("%s\n", text != NULL ? text : "[]");
		free(text);
		rc = 0;
		goto done;
	}
	if (strcmp(sub, "reseal") == 0 && old_kek_load(old_file, &old, &diag) != IDP_OK) {
		fprintf(stderr, "idpd: %s\n", idp_diag_str(&diag));
		rc = 1;
		goto done;
	}
	{
		struct idp_kek *kek = NULL;
		char source[160];

		if (load_kek(cfg, &kek, source, sizeof(source), &diag) != IDP_OK ||
		    open_with(cfg, store, kek, source, &km, &diag) != IDP_OK) {
			fprintf(stderr, "idpd: %s\n", idp_diag_str(&diag));
			rc = 1;
			goto done;
		}
	}
	rc = old != NULL ? cli_reseal(cfg, km, old, reason)
	                 : cli_rotate(cfg, km, force, retire, reason);
done:
	idp_kek_free(old);
	keys_free(km);
	store_close(store);
	idpd_config_free(cfg);
	return rc;
}
