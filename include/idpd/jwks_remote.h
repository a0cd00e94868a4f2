/*
 * jwks_remote.h - foreign key sets fetched from a jwks_uri over HTTPS, as
 * an OAuth/OIDC relying party does: an [[idp]] whose keys rotate (Entra ID,
 * Okta) is followed without an operator copying files and sending SIGHUP.
 *
 * One background thread (the jwks thread) does every fetch: the first as
 * soon as a remote is published, then one every refresh_ms, a failed one
 * again after min_refresh_ms, and one when a verifier asks
 * (jwks_remote_want, for a token naming a kid the set lacks), never two
 * within min_refresh_ms, so made-up kids cannot make idpd hammer the
 * provider.
 * A fetch is HTTPS only with the server's certificate and name verified
 * (tls_client.h), JWKS_REMOTE_TIMEOUT_MS in all, redirects not followed,
 * only a 200 with a JSON body of at most JWKS_REMOTE_BODY_MAX bytes
 * taken, parsed by idp_jws_keyset_from_jwks.
 *
 * Each remote publishes its last good key set, an immutable reference-
 * counted idp_jws_keyset, with the wall-clock start of the fetch that last
 * succeeded.  jwks.lock (one mutex for the module) guards the list of
 * remotes and every remote's published set, reference count and schedule;
 * it is held only to copy or swap pointers, never across I/O.  A failed
 * fetch keeps the last good set.  A set older than max_stale_ms is not
 * used (jwks_remote_view says it is not usable).  A changed set is logged
 * and audited (jwks.changed: the provider and the kids added and removed);
 * a failure is logged once when fetches start failing and once when they
 * work again, not per attempt.
 */
#ifndef IDPD_JWKS_REMOTE_H
#define IDPD_JWKS_REMOTE_H

#include <stdbool.h>
#include <stdint.h>

#include "idpd/common.h"

struct idp_clock;
struct idp_jws_keyset;

#define JWKS_REMOTE_TIMEOUT_MS 10000      /* one fetch: connect to the last byte */
#define JWKS_REMOTE_BODY_MAX (512 * 1024) /* bytes of JWKS document */
#define JWKS_REMOTE_START_WAIT_MS 12000   /* startup and reloads wait this long at most */

/* One provider's remote key set; opaque, reference counted. */
struct jwks_remote;

struct jwks_remote_opts {
	const char *kind;    /* "idp" or "attestor": in logs, audit events and metrics */
	const char *name;    /* the provider's name */
	const char *uri;     /* https://... */
	const char *ca_file; /* PEM CAs; NULL or "": the system's trust store */
	int64_t refresh_ms;
	int64_t min_refresh_ms;
	int64_t max_stale_ms; /* longer than refresh_ms */
};

/*
 * Register the module's metrics collector and readiness check ("jwks").
 * Idempotent.  Main thread, before the server starts.
 */
int jwks_remote_init(void) IDP_WUR;
/* Stop the jwks thread (an ongoing fetch ends within its timeout).  Main thread. */
void jwks_remote_shutdown(void);

/*
 * A new remote for opts with one reference for the caller, not yet listed:
 * nothing is fetched for it until jwks_remote_publish.  Checks opts (an
 * https URL whose host can be verified, max_stale_ms > refresh_ms) and
 * loads ca_file now, so that everything that can fail fails here (a
 * reload's check).  IDP_EINVAL with diag naming the provider.  Any thread.
 */
int jwks_remote_new(const struct jwks_remote_opts *o, struct jwks_remote **out,
                    struct idp_diag *diag) IDP_WUR;
/*
 * List r (its reference taken) and return a reference to the remote in
 * force: an already listed one of the same kind, name, uri and ca_file,
 * which keeps its keys and state and takes r's timings (r is dropped), or r
 * itself, which the jwks thread (started if need be) fetches at once.  r
 * already listed is returned as it is.  Cannot fail.  Main thread (a
 * reload's apply, startup).
 */
struct jwks_remote *jwks_remote_publish(struct jwks_remote *r);
/* Drop a reference; the last one removes the remote.  NULL is a no-op.  Any thread. */
void jwks_remote_unref(struct jwks_remote *r);
/*
 * Wait until every remote has had its first fetch (good or not), at most
 * timeout_ms.  Main thread: startup and reloads, so that a provider's keys
 * are there before its first tokens when it answers quickly.
 */
void jwks_remote_wait_tried(int64_t timeout_ms);

/* What a verifier reads of a remote, at one moment. */
struct jwks_remote_view {
	struct idp_jws_keyset *keys; /* the last good set (a reference), or NULL: never fetched */
	int64_t began_ms;            /* wall-clock start of the fetch that last succeeded */
	bool usable;                 /* keys != NULL and began_ms within max_stale_ms of now */
	int retry_after_s;           /* seconds until a fetch asked for now may have ended */
};
/* Fill v for r at clock's time.  Never blocks (jwks.lock, briefly).  Any thread. */
void jwks_remote_view(struct jwks_remote *r, const struct idp_clock *clock,
                      struct jwks_remote_view *v);
/* Release v's reference. */
void jwks_remote_view_cleanup(struct jwks_remote_view *v);
/*
 * Ask the jwks thread to fetch r again: at once if its last fetch began
 * min_refresh_ms ago or more, else when that time has passed.  Never
 * blocks.  Any thread.
 */
void jwks_remote_want(struct jwks_remote *r);

/*
 * The answer for a token whose kid none of the caller's key sets holds and
 * whose (unverified) iss is remote r's provider: the key may have been
 * published after r's set was fetched.  IDP_EUNAUTH once that is ruled
 * out: r's last good fetch began more than KEYS_KID_SKEW_MS after the
 * token's iat_ms (the rule keys_verify_own applies to idpd's own kids read
 * by another thread).  Otherwise (no usable set, a token without iat, or a
 * fetch that may predate the key) a fetch of r is asked for and
 * IDP_EUNAVAIL, with *reason ("jwks_unavailable",
 * "kid_unknown_until_refresh") and *retry_after_s.  Never blocks.  Any
 * thread.
 */
int jwks_remote_kid_unknown(struct jwks_remote *r, const struct idp_clock *clock, int64_t iat_ms,
                            const char **reason, int *retry_after_s) IDP_WUR;

/*
 * The unverified iss (copied into iss, at most len - 1 bytes; "" when
 * absent or not a string) and iat (ms; KEYS_NO_IAT when absent or absurd)
 * of a compact token that idp_jws_verify has bounded.  They only choose
 * whom to ask and whether an unknown kid is definitive, never accept.
 */
void jwks_token_iss_iat(const char *token, size_t len, char *iss, size_t iss_len, int64_t *iat_ms);

#endif /* IDPD_JWKS_REMOTE_H */
