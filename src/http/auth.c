/*
 * auth.c - API keys for operators (see auth.h).
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/rand.h>
#include <openssl/sha.h>

#include "idpd/auth.h"
#include "idpd/log.h"

struct key {
	char name[128];
	uint8_t hash[SHA256_DIGEST_LENGTH];
	unsigned roles;
	char audiences[1025];
};

struct auth_keys {
	_Atomic int refs;
	size_t n;
	struct key keys[];
};

static const char *const role_names[] = {"admin",        "registrar", "auditor",
                                         "introspector", "approver",  "maintenance"};

const char *
auth_role_name(unsigned role_bit)
{
	for (size_t i = 0; i < IDP_ARRAY_LEN(role_names); i++)
		if (role_bit == 1u << i)
			return role_names[i];
	return NULL;
}

int
auth_roles_parse(const char *csv, unsigned *roles)
{
	const char *p = csv;

	*roles = 0;
	while (*p != '\0') {
		size_t n = strcspn(p, ",");
		bool found = false;

		for (size_t i = 0; i < IDP_ARRAY_LEN(role_names); i++) {
			if (strlen(role_names[i]) == n && strncmp(p, role_names[i], n) == 0) {
				*roles |= 1u << i;
				found = true;
			}
		}
		if (!found)
			return IDP_EINVAL;
		p += n;
		if (*p == ',')
			p++;
	}
	return *roles != 0 ? IDP_OK : IDP_EINVAL;
}

static int
hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

struct auth_keys *
auth_keys_new(const struct idpd_api_key_cfg *cfg, size_t n)
{
	struct auth_keys *k = idp_xcalloc(1, sizeof(*k) + n * sizeof(struct key));

	atomic_init(&k->refs, 1);
	for (size_t i = 0; i < n; i++) {
		const char *hex = cfg[i].hash;
		struct key *dst = &k->keys[k->n];
		bool ok = hex != NULL && strncmp(hex, "sha256:", 7) == 0 && strlen(hex) == 71;

		for (size_t j = 0; ok && j < SHA256_DIGEST_LENGTH; j++) {
			int hi = hexval(hex[7 + 2 * j]), lo = hexval(hex[8 + 2 * j]);

			if (hi < 0 || lo < 0)
				ok = false;
			else
				dst->hash[j] = (uint8_t)(hi * 16 + lo);
		}
		if (!ok) {
			/* The config reader validates hashes; this is a second line. */
			log_error("auth: api key %s has a malformed hash; ignored", cfg[i].name);
			continue;
		}
		snprintf(dst->name, sizeof(dst->name), "%s", cfg[i].name);
		dst->roles = cfg[i].roles;
		snprintf(dst->audiences, sizeof(dst->audiences), "%s",
		         cfg[i].audiences != NULL ? cfg[i].audiences : "");
		k->n++;
	}
	return k;
}

struct auth_keys *
auth_keys_ref(struct auth_keys *k)
{
	if (k != NULL)
		atomic_fetch_add(&k->refs, 1);
	return k;
}

void
auth_keys_unref(struct auth_keys *k)
{
	if (k != NULL && atomic_fetch_sub(&k->refs, 1) == 1) {
		idp_wipe(k, sizeof(*k) + k->n * sizeof(struct key));
		free(k);
	}
}

static pthread_mutex_t current_lock = PTHREAD_MUTEX_INITIALIZER; /* auth.lock */
static struct auth_keys *current;

void
auth_keys_install(struct auth_keys *k)
{
	struct auth_keys *old;

	pthread_mutex_lock(&current_lock);
	old = current;
	current = k;
	pthread_mutex_unlock(&current_lock);
	auth_keys_unref(old);
}

struct auth_keys *
auth_keys_current(void)
{
	struct auth_keys *k;

	pthread_mutex_lock(&current_lock);
	k = auth_keys_ref(current);
	pthread_mutex_unlock(&current_lock);
	return k;
}

int
auth_check_key(const struct auth_keys *k, const char *key, struct auth_principal *out)
{
	uint8_t h[SHA256_DIGEST_LENGTH];
	const struct key *match = NULL;

	if (k == NULL || key == NULL || strncmp(key, AUTH_KEY_PREFIX, 5) != 0 || strlen(key) > 256)
		return IDP_EUNAUTH;
	if (idp_sha256(key, strlen(key), NULL, 0, h) != IDP_OK)
		return IDP_EUNAUTH; /* fail closed */
	/* Compare with every key, whatever matched, so timing says nothing
	 * about which key (or whether a prefix of one) was close. */
	for (size_t i = 0; i < k->n; i++)
		if (idp_ct_equal(h, k->keys[i].hash, sizeof(h)))
			match = &k->keys[i];
	idp_wipe(h, sizeof(h));
	if (match == NULL)
		return IDP_EUNAUTH;
	snprintf(out->name, sizeof(out->name), "%s", match->name);
	out->roles = match->roles;
	memcpy(out->audiences, match->audiences, sizeof(out->audiences));
	return IDP_OK;
}

bool
auth_audience_allowed(const struct auth_principal *p, const char *auds)
{
	const char *w;
	size_t n;

	if (p->audiences[0] == '\0')
		return true;
	while (auds != NULL && (w = idp_word_next(&auds, &n)) != NULL)
		if (idp_word_listed(p->audiences, w, n))
			return true;
	return false;
}

bool
auth_resource_allowed(const struct auth_principal *p, const char *aud)
{
	if (p->audiences[0] == '\0')
		return true;
	return aud != NULL && aud[0] != '\0' && idp_word_listed(p->audiences, aud, strlen(aud));
}

static void (*_Atomic refusal_hook)(struct http_req *req, const char *reason);

void
auth_on_refusal(void (*fn)(struct http_req *req, const char *reason))
{
	atomic_store(&refusal_hook, fn);
}

bool
auth_require(struct http_req *req, unsigned any_of, struct auth_principal *out)
{
	struct auth_keys *k = auth_keys_current();
	const char *key = http_req_bearer(req);
	int rc = key != NULL ? auth_check_key(k, key, out) : IDP_EUNAUTH;

	auth_keys_unref(k);
	if (rc != IDP_OK) {
		void (*hook)(struct http_req *, const char *) = atomic_load(&refusal_hook);

		if (key != NULL && hook != NULL)
			hook(req, "unknown_key");
		http_add_header(req, "WWW-Authenticate",
		                key == NULL ? "Bearer realm=\"idpd\""
		                            : "Bearer realm=\"idpd\", error=\"invalid_token\"");
		http_reply_problem(req, 401, "unauthorized", NULL,
		                   key == NULL ? "an API key is required (Authorization: Bearer)"
		                               : "the API key is not valid");
		return false;
	}
	if (!(out->roles & (any_of | IDPD_ROLE_ADMIN))) {
		char need[128] = "";

		for (unsigned bit = 1; bit <= IDPD_ROLE_MAINTENANCE; bit <<= 1) {
			if (!(any_of & bit))
				continue;
			if (need[0] != '\0')
				strncat(need, " or ", sizeof(need) - strlen(need) - 1);
			strncat(need, auth_role_name(bit), sizeof(need) - strlen(need) - 1);
		}
		http_reply_problem(req, 403, "forbidden", NULL, "this needs the %s role", need);
		return false;
	}
	return true;
}

void
auth_key_hash(const char *key, char hash[80])
{
	static const char hex[] = "0123456789abcdef";
	uint8_t h[SHA256_DIGEST_LENGTH];

	SHA256((const unsigned char *)key, strlen(key), h);
	memcpy(hash, "sha256:", 7);
	for (int i = 0; i < SHA256_DIGEST_LENGTH; i++) {
		hash[7 + 2 * i] = hex[h[i] >> 4];
		hash[8 + 2 * i] = hex[h[i] & 15];
	}
	hash[71] = '\0';
}

int
auth_key_generate(char key[64], char hash[80])
{
	static const char b64[] =
	    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
	uint8_t r[32];
	size_t o = 5;
	uint32_t acc = 0;
	int bits = 0;

	if (RAND_bytes(r, sizeof(r)) != 1)
		return IDP_EINTERNAL;
	memcpy(key, AUTH_KEY_PREFIX, 5);
	for (size_t i = 0; i < sizeof(r); i++) {
		acc = (acc << 8) | r[i];
		bits += 8;
		while (bits >= 6) {
			key[o++] = b64[(acc >> (bits - 6)) & 63];
			bits -= 6;
		}
	}
	if (bits > 0)
		key[o++] = b64[(acc << (6 - bits)) & 63];
	key[o] = '\0';
	idp_wipe(r, sizeof(r));
	auth_key_hash(key, hash);
	return IDP_OK;
}
