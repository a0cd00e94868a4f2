/*
 * auth.h - operator authentication: API keys sent as "Authorization: Bearer
 * idpk_...", each with a name and a set of roles.
 *
 * Keys are configured as SHA-256 hashes, never in clear.  The set of keys is
 * an immutable, reference-counted snapshot; a reload builds a new one and
 * swaps it under auth.lock, so a request in flight keeps the set it started
 * with.  Verification hashes the presented key and compares it with every
 * configured hash in constant time, without stopping at a match.
 */
#ifndef IDPD_AUTH_H
#define IDPD_AUTH_H

#include <stdbool.h>

#include "idpd/config.h"
#include "idpd/http.h"

#define AUTH_KEY_PREFIX "idpk_"

struct auth_keys;

/* The role names, in the bit order of enum idpd_role. */
const char *auth_role_name(unsigned role_bit);
/* "admin,auditor" -> bits; IDP_EINVAL for an unknown name. */
int auth_roles_parse(const char *csv, unsigned *roles) IDP_WUR;

/* Build a snapshot from the configuration's keys.  Cannot fail. */
struct auth_keys *auth_keys_new(const struct idpd_api_key_cfg *keys, size_t n);
struct auth_keys *auth_keys_ref(struct auth_keys *k);
void auth_keys_unref(struct auth_keys *k);

/* The process-wide current set: set at start-up and on reload (main thread). */
void auth_keys_install(struct auth_keys *k); /* takes the caller's reference */
struct auth_keys *auth_keys_current(void);   /* a new reference; any thread */

struct auth_principal {
	char name[128]; /* the key's configured name: the actor in audit events */
	unsigned roles;
	char audiences[1025]; /* the key's audiences, space-separated; "" for any */
};

/*
 * Whether p may see a token for auds (one audience, or several separated by
 * spaces): always for a key without audiences, else when one of auds is
 * one of the key's.
 */
bool auth_audience_allowed(const struct auth_principal *p, const char *auds);
/*
 * Whether p may ask about the one resource aud (an AuthZEN resource.id):
 * always for a key without audiences, else when aud, whole, is one of the
 * key's.  aud is never split: "billing x" is no audience of a key bound to
 * "x", as it would be to auth_audience_allowed.
 */
bool auth_resource_allowed(const struct auth_principal *p, const char *aud);

/*
 * Check the presented key against k.  IDP_OK and *out filled on a match;
 * IDP_EUNAUTH otherwise.  Any thread.
 */
int auth_check_key(const struct auth_keys *k, const char *key, struct auth_principal *out) IDP_WUR;

/*
 * Authenticate req with the current key set and require at least one of
 * any_of roles (admin always passes).  On success fills *out and returns
 * true.  Otherwise answers the request -- 401 with WWW-Authenticate for a
 * missing or unknown key, 403 for a key without the role -- and returns
 * false; the handler just returns.
 */
bool auth_require(struct http_req *req, unsigned any_of, struct auth_principal *out);

/*
 * What auth_require calls for a key it refuses (one was sent, and no
 * configured key matches), reason a stable code: the audit layer's
 * recorder, set by main before the server starts (this module stays free
 * of the audit writer).  NULL: nothing is called.
 */
void auth_on_refusal(void (*fn)(struct http_req *req, const char *reason));

/*
 * A new random key "idpk_" + 43 base64url characters (256 bits) and its
 * config hash "sha256:<hex>".  IDP_EINTERNAL if the CSPRNG fails.
 */
int auth_key_generate(char key[64], char hash[80]) IDP_WUR;
/* "sha256:<hex>" of key. */
void auth_key_hash(const char *key, char hash[80]);

#endif /* IDPD_AUTH_H */
