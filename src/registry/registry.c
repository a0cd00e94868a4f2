/*
 * registry.c - the process's registry: its cache, kept fresh by the
 * listener, its settings, and the lookup other modules call.
 *
 * Threads: registry_init and the reload hook run on the main thread; the
 * listener callbacks on the listener thread; everything else on any worker.
 * The cache is complete once `ready` is set (after the first full load); a
 * lookup before that, or of an id whose refresh failed, reads PostgreSQL.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "idpd/clock.h"
#include "idpd/log.h"
#include "idpd/maintenance.h"
#include "idpd/metrics.h"
#include "registry_int.h"

struct registry {
	struct store *store;
	struct agent_cache *cache;
	_Atomic bool ready;
	/* Ids whose refresh failed: looked up in PostgreSQL until a later
	 * notification or resync succeeds.  Guarded by pending_lock. */
	pthread_mutex_t pending_lock;
	char **pending;
	size_t n_pending;
	_Atomic size_t n_pending_hint;

	pthread_mutex_t settings_lock; /* guards settings and idps */
	struct registry_settings settings;
	/* The names of the configured [[idp]] sections (a JSON array of
	 * strings), replaced whole by a reload: an owner "idp:subject" must
	 * name one of them. */
	json_t *idps;
};

static struct registry *reg;

/* ---- settings ---- */

static void
settings_from(struct registry_settings *s, const struct idpd_config *cfg)
{
	memset(s, 0, sizeof(*s));
	snprintf(s->departed_owners, sizeof(s->departed_owners), "%s",
	         cfg->registry.departed_owners ? cfg->registry.departed_owners : "");
	s->stale_after_ms = cfg->cleanup.stale_after_ms;
	s->stale_suspend =
	    cfg->cleanup.stale_action != NULL && strcmp(cfg->cleanup.stale_action, "suspend") == 0;
	s->departed_suspend = cfg->cleanup.departed_action != NULL &&
	                      strcmp(cfg->cleanup.departed_action, "suspend") == 0;
	s->batch_size = cfg->cleanup.batch_size > 0 ? cfg->cleanup.batch_size : 1000;
	s->audit_retention_ms = cfg->audit.retention_ms;
	s->last_active_flush_ms = cfg->registry.last_active_flush_ms;
}

static json_t *
idp_names_from(const struct idpd_config *cfg)
{
	json_t *names = json_array();

	for (size_t i = 0; i < cfg->n_idps; i++)
		json_array_append_new(names, json_string(cfg->idps[i].name));
	return names;
}

void
registry_settings_get(struct registry_settings *out)
{
	pthread_mutex_lock(&reg->settings_lock);
	*out = reg->settings;
	pthread_mutex_unlock(&reg->settings_lock);
}

static int
on_reload(struct idpd_app *app, const struct idpd_config *next, void *ctx, struct idp_diag *diag)
{
	struct registry_settings s;
	json_t *idps, *old;

	(void)app;
	(void)ctx;
	(void)diag;
	if (reg == NULL)
		return IDP_OK;
	settings_from(&s, next);
	idps = idp_names_from(next);
	pthread_mutex_lock(&reg->settings_lock);
	reg->settings = s;
	old = reg->idps;
	reg->idps = idps;
	pthread_mutex_unlock(&reg->settings_lock);
	json_decref(old);
	touch_set_interval(next->registry.last_active_flush_ms);
	return IDP_OK;
}

struct store *
registry_store(void)
{
	return reg->store;
}

/* Whether the [[idp]] named by the n bytes at name is configured.  Any thread. */
static bool
idp_configured(const char *name, size_t n)
{
	bool found = false;
	size_t i;
	json_t *v;

	pthread_mutex_lock(&reg->settings_lock);
	json_array_foreach(reg->idps, i, v)
	{
		if (json_string_length(v) == n && memcmp(json_string_value(v), name, n) == 0) {
			found = true;
			break;
		}
	}
	pthread_mutex_unlock(&reg->settings_lock);
	return found;
}

char *
registry_idp_names_pg(void)
{
	char *arr;

	pthread_mutex_lock(&reg->settings_lock);
	arr = pg_text_array_json(reg->idps);
	pthread_mutex_unlock(&reg->settings_lock);
	return arr;
}

int
registry_owner_check(const char *owner, json_t *errors)
{
	struct registry_settings s;
	struct owner_set *departed = NULL;
	struct idp_diag d;
	const char *colon = strchr(owner, ':');
	int rc = IDP_OK;

	/* An owner "idp:subject" is the principal subject of that [[idp]] and
	 * no one else (docs/tokens.md, "Who decides"): without the provider,
	 * no human can ever act as the owner. */
	if (colon != NULL && !idp_configured(owner, (size_t)(colon - owner))) {
		agent_error(errors, "owner",
		            "names the identity provider \"%.*s\", which no [[idp]] configures: no "
		            "one could act as this owner",
		            (int)(colon - owner < 64 ? colon - owner : 64), owner);
		rc = IDP_EUNPROCESSABLE;
	}
	registry_settings_get(&s);
	if (s.departed_owners[0] == '\0')
		return rc;
	idp_diag_init(&d);
	if (departed_owners_load(s.departed_owners, &departed, &d) != IDP_OK) {
		/* The HR feed being broken must not stop registrations; the
		 * cleanup job reports it, so it does not go unnoticed. */
		log_warn("registry: cannot check owners against the departed list: %s",
		         idp_diag_str(&d));
		return rc;
	}
	if (owner_set_contains(departed, owner)) {
		agent_error(errors, "owner",
		            "is listed in registry.departed_owners: choose an owner who is still "
		            "accountable");
		rc = IDP_EUNPROCESSABLE;
	}
	owner_set_free(departed);
	return rc;
}

/* ---- pending ids ---- */

static void
pending_add(const char *id)
{
	pthread_mutex_lock(&reg->pending_lock);
	for (size_t i = 0; i < reg->n_pending; i++) {
		if (strcmp(reg->pending[i], id) == 0) {
			pthread_mutex_unlock(&reg->pending_lock);
			return;
		}
	}
	reg->pending = idp_xrealloc(reg->pending, (reg->n_pending + 1) * sizeof(char *));
	reg->pending[reg->n_pending++] = idp_xstrdup(id);
	atomic_store(&reg->n_pending_hint, reg->n_pending);
	pthread_mutex_unlock(&reg->pending_lock);
}

static void
pending_del(const char *id)
{
	pthread_mutex_lock(&reg->pending_lock);
	for (size_t i = 0; i < reg->n_pending; i++) {
		if (strcmp(reg->pending[i], id) == 0) {
			free(reg->pending[i]);
			reg->pending[i] = reg->pending[--reg->n_pending];
			break;
		}
	}
	atomic_store(&reg->n_pending_hint, reg->n_pending);
	pthread_mutex_unlock(&reg->pending_lock);
}

static bool
pending_has(const char *id)
{
	bool found = false;

	if (atomic_load(&reg->n_pending_hint) == 0)
		return false;
	pthread_mutex_lock(&reg->pending_lock);
	for (size_t i = 0; i < reg->n_pending && !found; i++)
		found = strcmp(reg->pending[i], id) == 0;
	pthread_mutex_unlock(&reg->pending_lock);
	return found;
}

static void
pending_clear(void)
{
	pthread_mutex_lock(&reg->pending_lock);
	for (size_t i = 0; i < reg->n_pending; i++)
		free(reg->pending[i]);
	reg->n_pending = 0;
	atomic_store(&reg->n_pending_hint, 0);
	pthread_mutex_unlock(&reg->pending_lock);
}

/* ---- refreshing (listener thread) ---- */

/* Re-read one agent; on failure its lookups go to PostgreSQL. */
static void
refresh_one(const char *id)
{
	struct registry_agent *a = NULL;
	int rc = registry_db_get(reg->store, id, &a);

	if (rc == IDP_OK) {
		agent_cache_install(reg->cache, a);
		pending_del(id);
	} else if (rc == IDP_ENOTFOUND) {
		agent_cache_remove(reg->cache, id);
		pending_del(id);
	} else {
		log_warn("registry: cannot refresh agent %s; reading it from PostgreSQL until a "
		         "refresh succeeds",
		         id);
		pending_add(id);
	}
}

static void
load_all(void)
{
	struct registry_agent **recs;
	size_t n;
	uint64_t since = agent_cache_seq(reg->cache);
	int64_t t0 = idp_mono_us();

	if (registry_db_load_all(reg->store, &recs, &n) != IDP_OK) {
		/* Not ready (or no longer sure): lookups read PostgreSQL, and the
		 * next notification tries the load again. */
		log_warn("registry: cannot load the agents; lookups read PostgreSQL meanwhile");
		atomic_store(&reg->ready, false);
		return;
	}
	agent_cache_replace(reg->cache, recs, n, since);
	pending_clear();
	atomic_store(&reg->ready, true);
	log_info("registry: %zu agent(s) loaded in %lld ms", n,
	         (long long)((idp_mono_us() - t0) / 1000));
}

static void
on_notify(const char *channel, const char *payload, void *ctx)
{
	(void)channel;
	(void)ctx;
	if (!atomic_load(&reg->ready)) {
		load_all();
		return;
	}
	if (payload == NULL || !registry_id_valid(payload)) {
		log_warn("registry: ignoring a notification with a malformed id");
		return;
	}
	refresh_one(payload);
	/* Retry earlier failures while the database answers again. */
	if (atomic_load(&reg->n_pending_hint) > 0) {
		char id[REGISTRY_ID_MAX + 1] = "";

		pthread_mutex_lock(&reg->pending_lock);
		if (reg->n_pending > 0)
			snprintf(id, sizeof(id), "%s", reg->pending[0]);
		pthread_mutex_unlock(&reg->pending_lock);
		if (id[0] != '\0')
			refresh_one(id);
	}
}

/* After a (re)connect of the listener: notifications may have been lost. */
static void
on_resync(void *ctx)
{
	(void)ctx;
	load_all();
}

/*
 * The listener lost its session: changes made elsewhere are no longer
 * heard, so the cache stops answering alone and lookups read PostgreSQL
 * (or fail with 503 when it is down) until the next resync reloads it.
 */
static void
on_lost(void *ctx)
{
	(void)ctx;
	atomic_store(&reg->ready, false);
}

/* ---- metrics ---- */

static void
collect(struct idp_buf *out, void *ctx)
{
	struct touch_stats ts;

	(void)ctx;
	if (reg == NULL)
		return;
	touch_stats(&ts);
	if (idp_buf_printf(
	        out,
	        "# HELP idpd_registry_last_active_pending Agents whose last_active is noted in "
	        "memory, not yet written.\n"
	        "# TYPE idpd_registry_last_active_pending gauge\n"
	        "idpd_registry_last_active_pending %zu\n"
	        "# HELP idpd_registry_last_active_flushes_total Statements that wrote the noted "
	        "last_active times.\n"
	        "# TYPE idpd_registry_last_active_flushes_total counter\n"
	        "idpd_registry_last_active_flushes_total %llu\n"
	        "# HELP idpd_registry_last_active_dropped_total last_active touches dropped "
	        "(map full, or unwritten at exit).\n"
	        "# TYPE idpd_registry_last_active_dropped_total counter\n"
	        "idpd_registry_last_active_dropped_total %llu\n"
	        "# HELP idpd_registry_last_active_skipped_total last_active times a flush left "
	        "for the next one: another transaction held the agent's row.\n"
	        "# TYPE idpd_registry_last_active_skipped_total counter\n"
	        "idpd_registry_last_active_skipped_total %llu\n",
	        ts.pending, (unsigned long long)ts.flushes, (unsigned long long)ts.dropped,
	        (unsigned long long)ts.skipped) != IDP_OK)
		log_warn("metrics: registry output truncated");
	if (idp_buf_printf(
	        out,
	        "# HELP idpd_registry_agents Agents in this instance's in-memory registry.\n"
	        "# TYPE idpd_registry_agents gauge\nidpd_registry_agents %zu\n"
	        "# HELP idpd_registry_cache_ready 1 once the registry is loaded; 0 while "
	        "lookups read PostgreSQL.\n"
	        "# TYPE idpd_registry_cache_ready gauge\nidpd_registry_cache_ready %d\n"
	        "# HELP idpd_registry_refresh_pending Agents whose refresh failed and are "
	        "read from PostgreSQL.\n"
	        "# TYPE idpd_registry_refresh_pending gauge\nidpd_registry_refresh_pending %zu\n",
	        agent_cache_count(reg->cache), atomic_load(&reg->ready) ? 1 : 0,
	        atomic_load(&reg->n_pending_hint)) != IDP_OK)
		log_warn("metrics: registry output truncated");
}

/* ---- public ---- */

void
registry_publish(struct registry_agent *rec)
{
	agent_cache_install(reg->cache, rec);
}

int
registry_get(const char *id, const struct registry_agent **out)
{
	return registry_lookup(id, true, out);
}

int
registry_lookup(const char *id, bool may_block, const struct registry_agent **out)
{
	struct registry_agent *a;
	int rc;

	*out = NULL;
	if (!registry_id_valid(id))
		return IDP_EINVAL;
	if (reg == NULL)
		return IDP_EUNAVAIL;
	if (atomic_load_explicit(&reg->ready, memory_order_acquire) && !pending_has(id)) {
		*out = agent_cache_get(reg->cache, id);
		return *out != NULL ? IDP_OK : IDP_ENOTFOUND;
	}
	if (!may_block)
		return IDP_EWOULDBLOCK;
	rc = registry_db_get(reg->store, id, &a);
	if (rc == IDP_OK) {
		*out = registry_agent_ref(a);
		agent_cache_install(reg->cache, a);
		return IDP_OK;
	}
	return rc == IDP_ENOTFOUND ? IDP_ENOTFOUND : IDP_EUNAVAIL;
}

size_t
registry_cached_count(void)
{
	return reg != NULL ? agent_cache_count(reg->cache) : 0;
}

bool
registry_cache_ready(void)
{
	return reg != NULL && atomic_load(&reg->ready);
}

int
registry_init(struct idpd_app *app, struct idp_diag *diag)
{
	struct store_subscription sub = {.channel = "agents",
	                                 .on_notify = on_notify,
	                                 .on_resync = on_resync,
	                                 .on_lost = on_lost,
	                                 .ctx = NULL};

	if (reg != NULL) {
		idp_diag_add(diag, "registry: already initialised");
		return IDP_EINVAL;
	}
	reg = idp_xcalloc(1, sizeof(*reg));
	reg->store = app->store;
	reg->cache = agent_cache_new();
	pthread_mutex_init(&reg->pending_lock, NULL);
	pthread_mutex_init(&reg->settings_lock, NULL);
	settings_from(&reg->settings, app->cfg);
	reg->idps = idp_names_from(app->cfg);
	if (store_listener_subscribe(app->listener, &sub) != IDP_OK) {
		idp_diag_add(diag, "registry: cannot subscribe to the agents channel");
		registry_shutdown();
		return IDP_EINVAL;
	}
	if (app_on_reload(on_reload, NULL) != IDP_OK) {
		idp_diag_add(diag, "registry: cannot register its reload hook");
		registry_shutdown();
		return IDP_EINVAL;
	}
	if (metrics_register(collect, NULL) != IDP_OK)
		log_warn("metrics: too many collectors; registry metrics not exported");
	if (registry_register_jobs() != IDP_OK) {
		idp_diag_add(diag, "registry: cannot register the cleanup jobs");
		registry_shutdown();
		return IDP_EINVAL;
	}
	if (touch_start(app->store, app->cfg->registry.last_active_flush_ms) != IDP_OK) {
		idp_diag_add(diag, "registry: cannot start the last_active flusher");
		registry_shutdown();
		return IDP_EINVAL;
	}
	return IDP_OK;
}

void
registry_shutdown(void)
{
	if (reg == NULL)
		return;
	/* First: its last flush needs the store, which outlives the registry. */
	touch_stop();
	pending_clear();
	free(reg->pending);
	agent_cache_free(reg->cache);
	pthread_mutex_destroy(&reg->pending_lock);
	pthread_mutex_destroy(&reg->settings_lock);
	json_decref(reg->idps);
	free(reg);
	reg = NULL;
}
