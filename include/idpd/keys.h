/*
 * keys.h - the ES256 keys idpd signs its own tokens with: stored in
 * PostgreSQL (migrations/0004_keys.sql) with their private halves sealed
 * under the KEK (kek.h), rotated next -> active -> retiring -> retired, and
 * served as the JWKS at GET /.well-known/jwks.json.
 *
 * A struct keys (the key manager) owns the KEK, a borrowed pool and the
 * current snapshot: an immutable, reference-counted object holding the
 * active key (with its private half) for signing, the key set of the next,
 * active and retiring keys for verifying, and the JWKS document already
 * rendered.  A reload builds a new snapshot beside the old one and swaps a
 * pointer under keys.lock, held only for that swap and for taking a
 * reference, so readers never wait for PostgreSQL or for a decryption, and a
 * request keeps the snapshot it started with.  Reloads come from the
 * listener (NOTIFY on channel "keys", and a full reload after a reconnect)
 * and from this instance's own changes; they are serialized by
 * keys.reload_lock, so the newest read is the one installed.
 *
 * Every change to the table (first key, rotation, retirement) runs in one
 * transaction under a PostgreSQL advisory lock (KEYS_LOCK_KEY), so instances
 * starting together, the CLI, the HTTP endpoint and the cleanup job
 * serialize across the cluster.  Before writing anything a change proves
 * that this process's KEK opens the next and active keys; with the wrong KEK
 * it changes nothing and says which KEK sealed the keys.
 *
 * What to do when is decided by keys_plan_make(), a pure function of the
 * rows, the time and the policy, so the rotation rules are unit-tested with a
 * fixed clock.  docs/tokens.md ("Keys") describes the life of a key.
 */
#ifndef IDPD_KEYS_H
#define IDPD_KEYS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "idpd/audit.h"
#include "idpd/common.h"
#include "idpd/jws.h"

struct idp_clock;
struct idp_kek;
struct idpd_app;
struct idpd_config;
struct http_router;
struct maintenance_run;
struct store;
struct store_conn;
struct store_listener;
struct keys;

/* The advisory lock every change to signing_keys holds: "idpdkey\0". */
#define KEYS_LOCK_KEY 0x696470646b657900LL
/* Keys not yet retired, at most; a rotation that would pass it is refused. */
#define KEYS_MAX_LIVE 32

enum keys_state {
	KEYS_NEXT,
	KEYS_ACTIVE,
	KEYS_RETIRING,
	KEYS_RETIRED,
};

/* "next", "active", "retiring", "retired"; NULL out of range. */
const char *keys_state_name(enum keys_state s);
/* The state named s, or -1. */
int keys_state_parse(const char *s);

/* The rotation rules' settings (keys.* in the configuration). */
struct keys_policy {
	int64_t rotate_every_ms; /* the active key is rotated when this old; 0: never scheduled */
	int64_t retire_after_ms; /* a key stays published this long after it last signed */
	int64_t max_age_ms;      /* a key's not-after is its creation plus this */
	/*
	 * A next key is promoted, on demand or on schedule, only once it has
	 * been published this long (keys.jwks_max_age, how long a verifier may
	 * cache the JWKS), so that verifiers hold it before it signs.  Set by
	 * the manager from its jwks_max_age; 0: at once.
	 */
	int64_t min_published_ms;
};

/*
 * One key's metadata as signing_keys holds it; no key material.  Times are
 * ms since the epoch, 0 when not set.
 */
struct keys_info {
	char kid[IDP_JWS_MAX_KID + 1];
	enum keys_state state;
	char kek_id[21];
	int64_t created_ms;
	int64_t activated_ms;
	int64_t retiring_ms;
	int64_t retire_after_ms;
	int64_t retired_ms;
	int64_t not_after_ms;
};

/* ---- the rotation rules (pure) ---- */

enum keys_trigger {
	KEYS_TRIGGER_START,      /* startup: make the set usable, rotate nothing that works */
	KEYS_TRIGGER_SCHEDULE,   /* the cleanup job: rotate when due, retire what has served */
	KEYS_TRIGGER_DEMAND,     /* an operator: rotate now to a next key verifiers already hold */
	KEYS_TRIGGER_FORCE,      /* an operator: rotate now, whatever the next key's age */
	KEYS_TRIGGER_COMPROMISE, /* keys_retire_now: a named key is retired at once */
};
/* "start", "schedule", "demand", "force", "compromise". */
const char *keys_trigger_name(enum keys_trigger t);

/*
 * What one change does, in the order it is applied: retire, demote, promote
 * (or make a new key active), make a new next key.
 */
struct keys_plan {
	size_t retire[KEYS_MAX_LIVE]; /* indexes of live keys that become retired */
	size_t n_retire;
	int demote; /* index of the active key that starts retiring, or -1 */
	int64_t demote_retire_after_ms;
	int promote;          /* index of the next key that becomes active, or -1 */
	bool generate_active; /* no usable next key: a new key becomes active at once */
	bool generate_next;
	const char *why; /* for logs and audit: "first_key", "scheduled", "expired", ... */
};

/*
 * Decide what trigger does to the live keys (every state but retired) at
 * now_ms under pol:
 *  - a retiring key whose retire_after has come is retired; so is a next key
 *    past its not-after (it never signed);
 *  - the active key rotates on demand; on schedule when it is missing, past
 *    its not-after, or rotate_every old; at start only when missing or past
 *    its not-after;
 *  - rotating promotes the next key if it can still sign, else makes a new
 *    key active; the old active key retires after min(now, its not-after) +
 *    retire_after, because that is when the last token it signed expires;
 *  - afterwards there is always a next key.
 * Returns 0 with *plan filled (possibly doing nothing: keys_plan_empty),
 * IDP_EINTERNAL with diag for rows that break the invariants (two active
 * keys, an unknown state), IDP_ECONFLICT when the change would leave more
 * than KEYS_MAX_LIVE live keys.  Any thread.
 */
int keys_plan_make(const struct keys_info *live, size_t n, int64_t now_ms,
                   const struct keys_policy *pol, enum keys_trigger trigger, struct keys_plan *plan,
                   struct idp_diag *diag) IDP_WUR;
bool keys_plan_empty(const struct keys_plan *plan);

/* ---- the key manager ---- */

struct keys_opts {
	struct store *store;           /* borrowed; must outlive the manager */
	const struct idp_clock *clock; /* borrowed; idp_clock_system() in production */
	struct keys_policy policy;
	int64_t jwks_max_age_ms; /* Cache-Control max-age of the JWKS */
	const char *kek_source;  /* where the KEK came from, for messages ("$IDPD_KEK") */
};

/*
 * A manager with no snapshot yet.  Takes ownership of kek (also on error;
 * it is wiped when the manager is freed).  Touches no database.  On failure
 * *out is NULL and diag says why (a policy out of range).  Main thread.
 */
int keys_open(const struct keys_opts *o, struct idp_kek *kek, struct keys **out,
              struct idp_diag *diag) IDP_WUR;
/* Free the manager and its snapshot (readers holding references keep theirs).  NULL is a no-op. */
void keys_free(struct keys *km);
/*
 * Hand the manager the KEK being replaced ($IDPD_KEK_OLD), which it owns
 * from then on (wiped when freed; NULL drops one it held).  Keys sealed
 * under it are then checked with it when loaded, as keys under the
 * manager's own KEK are, instead of being trusted only if already known.
 * It never seals, and changes still need every next and active key under
 * the manager's own KEK.  Main thread, before the first load.
 */
void keys_hold_old_kek(struct keys *km, struct idp_kek *old);

/*
 * Make the stored keys usable and load them: under the lock, check that
 * the KEK opens the next and active keys, generate the first pair on an
 * empty table, replace a missing next key or an active key past its
 * not-after; then install a snapshot.  Emits key.* audit events for what it
 * changed (actor: system).  Errors: IDP_EFORBIDDEN for the wrong KEK or a
 * damaged key (nothing written; diag names the kid and both KEK ids),
 * IDP_EUNAVAIL when PostgreSQL cannot be reached, IDP_EINTERNAL otherwise.
 * Any thread; serialized with every other change.
 */
int keys_ensure(struct keys *km, struct idp_diag *diag) IDP_WUR;

/*
 * Read the live keys and install a new snapshot, reusing the keys already
 * loaded.  On failure the old snapshot stays and diag says why; a snapshot
 * whose active key cannot be opened is installed without a signing key
 * (signing answers IDP_EUNAVAIL; verification still works).  Any thread.
 */
int keys_reload(struct keys *km, struct idp_diag *diag) IDP_WUR;

/* Listen on channel "keys" (before store_listener_start).  IDP_EINVAL if the listener refuses. */
int keys_subscribe(struct keys *km, struct store_listener *l) IDP_WUR;

/* Replace the policy and JWKS max-age (a reload).  Applies to the next change.  Any thread. */
void keys_set_policy(struct keys *km, const struct keys_policy *pol, int64_t jwks_max_age_ms);
void keys_get_policy(struct keys *km, struct keys_policy *pol);

/* ---- for the token service (any thread) ---- */

/*
 * The active key, with its private half, as a new reference the caller
 * drops with idp_jws_key_unref.  *not_after_ms (if not NULL) gets the
 * instant from which the key must not sign.  IDP_EUNAVAIL with *out NULL
 * when there is no usable key: none loaded, the active one could not be
 * opened, or it is at or past its not-after.
 */
int keys_signing_key(struct keys *km, struct idp_jws_key **out, int64_t *not_after_ms) IDP_WUR;

/*
 * The next, active and retiring public keys as a new reference
 * (idp_jws_keyset_unref), or NULL before the first load.
 */
struct idp_jws_keyset *keys_verify_set(struct keys *km);

/*
 * Whether a key id missing from keys_verify_set may still be one this
 * deployment signs with: true from keys_subscribe, from each loss of the
 * listener and from each notification whose reload failed, until a reload
 * made while it is connected succeeds (retried until one does); another
 * instance may have published a key meanwhile.  A verifier then answers 503 rather than
 * calling the token invalid: idpd cannot know.
 */
bool keys_may_lack_kid(struct keys *km);
/*
 * For a token whose kid keys_verify_set lacks while keys_may_lack_kid is
 * false: a key another instance activated a moment ago is in the table
 * before its notification reaches this instance.  Reload the keys now,
 * unless a reload for this reason ran within the last KEYS_KID_RELOAD_MS
 * (a caller that comes while one is in flight waits for it; within the
 * window, the last reload's result stands), so that tokens naming made-up
 * kids cost at most one read a second.
 *
 * A read that did not find kid proves the token none of the deployment's
 * only if it began after the token was signed (the key was active, its
 * row committed, before that).  A read this caller made did, since the
 * token came first; one made before this caller came (in flight, or within
 * the window) counts only if iat_ms, the token's iat claim in ms
 * (KEYS_NO_IAT: none), is older than that read's wall-clock start by more
 * than KEYS_KID_SKEW_MS.  The iat is not verified: it only chooses between
 * "invalid" and "cannot know".
 *
 * IDP_OK when kid is known afterwards, IDP_ENOTFOUND when it is not and
 * that is definite, IDP_EUNAVAIL when the reload failed or the read that
 * answered may have begun before the token was signed (idpd cannot know).
 * Reads PostgreSQL: not on an I/O thread.
 */
#define KEYS_KID_RELOAD_MS 1000
/*
 * How much older than the start of a read of the keys a token's iat must
 * be for that read's "not found" to hold for it: the iat is stamped by
 * another instance's clock and rounded down to the second, the read's start
 * by this one's, so this allows up to 4 s of difference between the clocks
 * of a deployment's instances.
 */
#define KEYS_KID_SKEW_MS 5000
/* A token without an iat claim of a NumericDate's shape. */
#define KEYS_NO_IAT INT64_MIN
int keys_reload_for_kid(struct keys *km, const char *kid, int64_t iat_ms) IDP_WUR;
/* Whether kid has the shape of the kids idpd makes (an RFC 7638 thumbprint). */
bool keys_kid_plausible(const char *kid);
/*
 * Verify token (len bytes), one of idpd's own, against km's verify set:
 * with opts[0], then opts[1] and so on while the typ is the wrong one
 * (nopts >= 1).  Every verifier of idpd's own tokens goes through here, so
 * that each treats a key another instance activated a moment ago alike: a
 * kid the set lacks, of the shape idpd makes (keys_kid_plausible), is
 * looked up once more with keys_reload_for_kid before the token is called
 * invalid.
 *
 * IDP_OK with *out filled (idp_jws_verified_cleanup) and *which (if not
 * NULL) the index of the opts it verified with.  IDP_EUNAUTH with *why
 * the reason it does not verify (IDP_JWS_KID_UNKNOWN: signed with no key of
 * this deployment's, as far as idpd can tell).  IDP_EUNAVAIL when idpd
 * cannot tell: no key set loaded (km NULL included), the kid unknown while
 * keys_may_lack_kid, the read for it failed, or the only read that answered
 * may have begun before the token was signed (keys_reload_for_kid: the
 * token's iat is recent or missing); fail closed (503).
 * IDP_EWOULDBLOCK when !may_block and the keys would be read: nothing was
 * read, and the caller hands the request to the handler pool
 * (http_req_defer) and calls again there.  *out is empty on every failure.
 * Any thread; reads PostgreSQL only when may_block.
 */
int keys_verify_own(struct keys *km, const char *token, size_t len,
                    const struct idp_jws_verify_opts *opts, size_t nopts, bool may_block,
                    struct idp_jws_verified *out, size_t *which, enum idp_jws_reason *why) IDP_WUR;

/*
 * The longest lifetime a token signed now may have and still verify until
 * it expires: keys.retire_after.  A signer caps exp at now plus this.
 */
int64_t keys_max_token_lifetime_ms(struct keys *km);

/*
 * The served JWKS document, copied into a new string the caller frees.
 * IDP_EUNAVAIL before the first load.
 */
int keys_jwks(struct keys *km, char **json, size_t *len) IDP_WUR;

/* ---- changes ---- */

/* Who asked for a change, for its audit events.  Borrowed for the call. */
struct keys_origin {
	enum audit_actor_kind actor_kind; /* AUDIT_ACTOR_SYSTEM for the job and startup */
	const char *actor;                /* API key name, "cli:<user>", or NULL */
	const char *request_id;           /* NULL when none */
	const char *source_address;       /* NULL when none */
	const char *reason;               /* free text from the operator, or NULL */
};

/* What a change did. */
struct keys_result {
	bool changed;
	bool rotated;                       /* the active key changed */
	char active[IDP_JWS_MAX_KID + 1];   /* the active kid afterwards */
	char next[IDP_JWS_MAX_KID + 1];     /* the next kid afterwards */
	char previous[IDP_JWS_MAX_KID + 1]; /* the kid that started retiring; "" if none */
	unsigned generated;                 /* new keys */
	unsigned retired;                   /* keys retired */
	unsigned audit_failures;            /* key.* events that could not be written */
	const char *why;                    /* keys_plan.why */
};

/*
 * Apply trigger's plan in one transaction under the lock, on conn if not
 * NULL (which must be outside a transaction, and is left so) or on a pooled
 * connection.  Then install a new snapshot and emit key.generated,
 * key.rotated and key.retired events.  res (may be NULL) says what changed.
 * Errors as keys_ensure, plus IDP_ECONFLICT when too many keys are live to
 * rotate (diag says when the oldest retires).  Any thread.
 */
int keys_change(struct keys *km, struct store_conn *conn, enum keys_trigger trigger,
                const struct keys_origin *who, struct keys_result *res,
                struct idp_diag *diag) IDP_WUR;

/*
 * KEK rotation (`idpd keys reseal`): every live key sealed under old is
 * opened with it, checked against its public JWK, sealed under km's KEK,
 * opened again with that and checked, and stored, all in one transaction
 * under the keys lock; audited (key.resealed) before COMMIT.  Keys already
 * under km's KEK are left as they are, so running it again changes
 * nothing; so is a retiring key under a third KEK (it signs no more).  A
 * next or active key under any other KEK, or a key old does not open, stops
 * it with nothing changed (IDP_EFORBIDDEN, diag names the kid and KEK ids).
 * *n_resealed gets the count.  Instances still running with the old KEK go
 * on signing with the key they hold; restart them with the new KEK before
 * the next key becomes active (they cannot open it).  Any thread.
 */
int keys_reseal(struct keys *km, const struct idp_kek *old, const struct keys_origin *who,
                size_t *n_resealed, struct idp_diag *diag) IDP_WUR;

/*
 * Rotate now (POST /v1/keys/rotate, `idpd keys rotate`).  Without force,
 * IDP_EPRECOND (and nothing changes) when there is no next key or it has
 * been published for less than keys.jwks_max_age: a verifier that cached
 * the JWKS before it appeared would refuse its tokens.
 */
int keys_rotate(struct keys *km, bool force, const struct keys_origin *who, struct keys_result *res,
                struct idp_diag *diag) IDP_WUR;

/*
 * A compromised key, kid, is retired at once (POST /v1/keys/rotate with
 * "retire", `idpd keys rotate --retire KID`): unpublished and its private
 * half erased.  The active key is rotated out first, whatever the next
 * key's age; a next key is replaced.  IDP_ENOTFOUND (nothing changes) when
 * kid is not live, as on a retry.
 */
int keys_retire_now(struct keys *km, const char *kid, const struct keys_origin *who,
                    struct keys_result *res, struct idp_diag *diag) IDP_WUR;

/*
 * Rotate if keys.rotate_every says so and retire what has served: the
 * scheduled rotation, run by the cleanup job.  conn as for keys_change.
 */
int keys_rotate_if_due(struct keys *km, struct store_conn *conn, const struct keys_origin *who,
                       struct keys_result *res, struct idp_diag *diag) IDP_WUR;

/*
 * The cleanup job (maintenance.h's maintenance_fn), ctx being the manager:
 * keys_rotate_if_due on the run's connection; adds "rotated", "generated"
 * and "retired" to counts.  HTTP worker, one job at a time.
 */
int keys_maintenance_job(const struct maintenance_run *run, void *ctx, json_t *counts,
                         struct idp_diag *diag);

/* ---- the process's manager ---- */

/*
 * The key-encryption keys of `idpd serve`, read before any thread starts:
 * the environment is scrubbed of them at once, and unsetenv while another
 * thread (libpq's, say) calls getenv is a race.
 */
struct keys_keks {
	struct idp_kek *kek; /* $IDPD_KEK, else keys.kek_file */
	struct idp_kek *old; /* $IDPD_KEK_OLD when set, else NULL */
	char source[160];    /* where kek came from, for messages ("$IDPD_KEK") */
};

/*
 * Fill *out from the environment and cfg, then overwrite and unset
 * $IDPD_KEK and $IDPD_KEK_OLD, also on failure.  On failure nothing is
 * held and diag says why (no KEK, or one that is not a KEK).  Main thread,
 * before any other thread exists.
 */
int keys_load_keks(const struct idpd_config *cfg, struct keys_keks *out,
                   struct idp_diag *diag) IDP_WUR;
/* Wipe and free what *k still holds; harmless when keys_start took it. */
void keys_keks_cleanup(struct keys_keks *k);

/*
 * For `idpd serve`, after the store is open and before the listener and
 * HTTP start: open a manager with the KEKs of keys_load_keks (taken, also
 * on failure) and app->cfg's keys.* settings, keys_ensure, subscribe to
 * app->listener, and register the reload hook.  On success *out is the
 * process's manager (keys_process() returns it too); free it with
 * keys_free after the HTTP server and the listener stop.  Any failure is
 * fatal for startup: diag says why.  Main thread.
 */
int keys_start(struct idpd_app *app, struct keys_keks *keks, struct keys **out,
               struct idp_diag *diag) IDP_WUR;
/* The manager keys_start made, or NULL. */
struct keys *keys_process(void);

/*
 * GET /.well-known/jwks.json (no authentication), GET /v1/keys (admin or
 * auditor) and POST /v1/keys/rotate (admin).
 */
int keys_routes(struct http_router *r, struct keys *km) IDP_WUR;

/* `idpd keys rotate|list --config FILE`; argv[0] is "keys".  Returns the exit status. */
int keys_cli(int argc, char **argv);

#endif /* IDPD_KEYS_H */
