/*
 * world.c - the token-service test setting; see world.h.
 */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include "idpd/auth.h"
#include "idpd/jws.h"
#include "world.h"

/* Made once per test binary: the IdP's key and JWKS file, the API keys. */
static struct idp_jws_key *idp_key;
static char jwks_path[64];
static struct idp_jws_key *partner_key;
static char partner_jwks[64];
static struct world_keys keys;
static char keys_toml[2048];

static void
key_section(const char *name, const char *role, char secret[64], size_t *used)
{
	char hash[80];
	int n;

	assert_int_equal(auth_key_generate(secret, hash), IDP_OK);
	n = snprintf(keys_toml + *used, sizeof(keys_toml) - *used,
	             "[[api_keys]]\nname = \"%s\"\nhash = \"%s\"\nroles = [\"%s\"]\n", name, hash,
	             role);
	assert_true(n > 0 && (size_t)n < sizeof(keys_toml) - *used);
	*used += (size_t)n;
}

/* A JWKS of key's public half into a new file named from the mkstemp template path. */
static void
write_jwks(const struct idp_jws_key *key, char *path)
{
	json_t *doc;
	FILE *f;
	int fd;

	fd = mkstemp(path);
	assert_true(fd >= 0);
	f = fdopen(fd, "w");
	assert_non_null(f);
	doc = json_pack("{s:[o]}", "keys", idp_jws_key_public_jwk(key));
	assert_int_equal(json_dumpf(doc, f, JSON_COMPACT), 0);
	json_decref(doc);
	assert_int_equal(fclose(f), 0);
}

static void
world_once(void)
{
	size_t used = 0;

	if (idp_key != NULL)
		return;
	assert_int_equal(idp_jws_key_generate("sso-1", &idp_key, NULL), IDP_OK);
	snprintf(jwks_path, sizeof(jwks_path), "/tmp/idpd_world_idp_XXXXXX");
	write_jwks(idp_key, jwks_path);
	key_section("ci-registrar", "registrar", keys.registrar, &used);
	key_section("ci-admin", "admin", keys.admin, &used);
	key_section("resource-api", "introspector", keys.introspector, &used);
	key_section("ops-approver", "approver", keys.approver, &used);
	key_section("ci-auditor", "auditor", keys.auditor, &used);
	key_section("ci-cron", "maintenance", keys.maintenance, &used);
}

static void
start_on(struct world *w, const char *db)
{
	if (harness_idpd_start(&w->p, db, NULL, w->toml) != 0) {
		harness_idpd_dump_log(&w->p);
		fail_msg("idpd did not start");
	}
}

void
world_start_opts(struct world *w, const char *db, const struct world_opts *o)
{
	static const struct world_opts none;
	char issuer[256] = "";
	size_t len = 16384;
	int n;

	if (o == NULL)
		o = &none;
	world_once();
	memset(w, 0, sizeof(*w));
	snprintf(w->db, sizeof(w->db), "%s", db);
	w->k = keys;
	assert_int_equal(harness_db_create(db), 0);
	snprintf(issuer, sizeof(issuer), "%s%s%s%s%s%s", o->issuer != NULL ? "issuer = \"" : "",
	         o->issuer != NULL ? o->issuer : "", o->issuer != NULL ? "\"\n" : "",
	         o->leeway != NULL ? "leeway = \"" : "", o->leeway != NULL ? o->leeway : "",
	         o->leeway != NULL ? "\"\n" : "");
	w->toml = malloc(len);
	assert_non_null(w->toml);
	n = snprintf(w->toml, len,
	             "[identity]\ntrust_domain = \"example.org\"\n%s"
	             "[tasks]\nmax_ttl = \"%s\"\n"
	             "[revocation]\nmax_staleness = \"%s\"\n"
	             "[registry]\nlast_active_flush = \"1s\"\n"
	             "[[resources]]\naudience = \"" WORLD_AWS "\"\ndomain = \"cloud\"\n"
	             "classification = \"internal\"\nenvironment = \"production\"\n"
	             "[[resources]]\naudience = \"" WORLD_BILLING "\"\ndomain = \"finance\"\n"
	             "classification = \"confidential\"\nenvironment = \"production\"\n"
	             "[[resources]]\naudience = \"" WORLD_REPORTS "\"\ndomain = \"reporting\"\n"
	             "classification = \"internal\"\n"
	             "[[idp]]\nname = \"corp\"\nissuer = \"" WORLD_IDP_ISS
	             "\"\naudience = \"idpd\"\n"
	             "jwks_file = \"%s\"\nalgs = [\"ES256\"]\nprincipal_claim = \"email\"\n%s%s%s",
	             issuer, o->max_ttl != NULL ? o->max_ttl : "8h",
	             o->max_staleness != NULL ? o->max_staleness : "2s", jwks_path,
	             o->idp_toml != NULL ? o->idp_toml : "", keys_toml,
	             o->extra_toml != NULL ? o->extra_toml : "");
	assert_true(n > 0 && (size_t)n < len);
	start_on(w, db);
}

void
world_start(struct world *w, const char *db, const char *extra_toml)
{
	const struct world_opts o = {.extra_toml = extra_toml};

	world_start_opts(w, db, &o);
}

void
world_start_peer(const struct world *w, struct world *peer)
{
	memset(peer, 0, sizeof(*peer));
	snprintf(peer->db, sizeof(peer->db), "%s", w->db);
	peer->k = w->k;
	peer->toml = strdup(w->toml);
	assert_non_null(peer->toml);
	start_on(peer, peer->db);
}

void
world_stop(struct world *w)
{
	free(w->toml);
	w->toml = NULL;
	assert_int_equal(harness_idpd_stop(&w->p, SIGTERM, 10000), 0);
}

int
world_teardown(void **state)
{
	(void)state;
	if (jwks_path[0] != '\0')
		unlink(jwks_path);
	if (partner_jwks[0] != '\0')
		unlink(partner_jwks);
	idp_jws_key_unref(partner_key);
	partner_key = NULL;
	idp_jws_key_unref(idp_key);
	idp_key = NULL;
	return 0;
}

char *
world_idp_token(const struct idp_jws_key *key, const char *email, const char *aud, long exp_in)
{
	long long now = (long long)time(NULL);
	json_t *c;
	char *tok = NULL;

	world_once();
	c = json_pack("{s:s,s:s,s:s,s:I,s:I,s:s,s:b}", "iss", WORLD_IDP_ISS, "sub", email, "aud",
	              aud, "iat", (json_int_t)(now - 5), "exp", (json_int_t)(now + exp_in), "email",
	              email, "email_verified", 1);
	assert_int_equal(idp_jws_sign(key != NULL ? key : idp_key, NULL, c, &tok, NULL, NULL),
	                 IDP_OK);
	json_decref(c);
	return tok;
}

char *
world_human_token(const char *email)
{
	return world_idp_token(NULL, email, "idpd", 600);
}

char *
world_idp_token_claims(const char *typ, const char *claims)
{
	long long now = (long long)time(NULL);
	json_t *c, *defaults;
	char *tok = NULL;

	world_once();
	c = json_loads(claims, 0, NULL);
	assert_true(json_is_object(c));
	defaults = json_pack("{s:s,s:s,s:I,s:I}", "iss", WORLD_IDP_ISS, "aud", "idpd", "iat",
	                     (json_int_t)(now - 5), "exp", (json_int_t)(now + 600));
	assert_int_equal(json_object_update_missing(c, defaults), 0);
	json_decref(defaults);
	assert_int_equal(idp_jws_sign(idp_key, typ, c, &tok, NULL, NULL), IDP_OK);
	json_decref(c);
	return tok;
}

const char *world_partner_claim = "email";

const char *
world_partner_toml(void)
{
	static char toml[512];

	if (partner_key == NULL) {
		assert_int_equal(idp_jws_key_generate("partner-1", &partner_key, NULL), IDP_OK);
		snprintf(partner_jwks, sizeof(partner_jwks), "/tmp/idpd_world_partner_XXXXXX");
		write_jwks(partner_key, partner_jwks);
	}
	snprintf(toml, sizeof(toml),
	         "[[idp]]\nname = \"partners\"\nissuer = \"" WORLD_PARTNER_ISS "\"\n"
	         "audience = \"idpd\"\njwks_file = \"%s\"\nalgs = [\"ES256\"]\n"
	         "principal_claim = \"%s\"\n",
	         partner_jwks, world_partner_claim);
	return toml;
}

char *
world_partner_token(const char *email)
{
	long long now = (long long)time(NULL);
	char *tok = NULL;
	json_t *c;

	assert_non_null(partner_key); /* world_partner_toml() first */
	c = json_pack("{s:s,s:s,s:s,s:I,s:I,s:s,s:b}", "iss", WORLD_PARTNER_ISS, "sub", email,
	              "aud", "idpd", "iat", (json_int_t)(now - 5), "exp", (json_int_t)(now + 600),
	              "email", email, "email_verified", 1);
	assert_int_equal(idp_jws_sign(partner_key, NULL, c, &tok, NULL, NULL), IDP_OK);
	json_decref(c);
	return tok;
}

void
world_call(struct world *w, const char *method, const char *path, const char *bearer,
           const char *body, struct http_resp *r)
{
	assert_int_equal(harness_call(&w->p, method, path, bearer, body, r), 0);
}

void
world_post(struct world *w, const char *path, const char *auth, const char *ctype, const char *body,
           struct http_resp *r)
{
	char url[512], a[4200], ct[128];
	const char *headers[3];
	size_t n = 0;

	snprintf(url, sizeof(url), "%s%s", w->p.base, path);
	if (auth != NULL) {
		snprintf(a, sizeof(a), "Authorization: %s", auth);
		headers[n++] = a;
	}
	snprintf(ct, sizeof(ct), "Content-Type: %s",
	         ctype != NULL ? ctype : "application/x-www-form-urlencoded");
	headers[n++] = ct;
	headers[n] = NULL;
	assert_int_equal(harness_http("POST", url, headers, body, strlen(body), r), 0);
}

void
world_form(struct world *w, const char *path, const char *bearer, const char *form,
           struct http_resp *r)
{
	char auth[4200];

	if (bearer != NULL)
		snprintf(auth, sizeof(auth), "Bearer %s", bearer);
	world_post(w, path, bearer != NULL ? auth : NULL, NULL, form, r);
}

void
world_introspect(struct world *w, const char *tok, const char *hint, struct http_resp *r)
{
	char form[9000];

	snprintf(form, sizeof(form), "token=%s%s%s", tok, hint != NULL ? "&token_type_hint=" : "",
	         hint != NULL ? hint : "");
	world_form(w, "/introspect", w->k.introspector, form, r);
}

bool
world_active(struct world *w, const char *tok, json_t **claims)
{
	struct http_resp r;
	bool on;

	world_introspect(w, tok, NULL, &r);
	if (r.status != 200)
		fprintf(stderr, "POST /introspect: %ld %s\n", r.status, r.body);
	assert_int_equal(r.status, 200);
	on = json_is_true(json_object_get(r.json, "active"));
	if (!on)
		assert_int_equal(json_object_size(r.json), 1);
	if (claims != NULL)
		*claims = on ? json_incref(r.json) : NULL;
	harness_resp_free(&r);
	return on;
}

long
world_revoke_as(struct world *w, const char *auth, const char *tok, struct http_resp *out)
{
	char form[9000];
	struct http_resp r;
	long st;

	snprintf(form, sizeof(form), "token=%s", tok);
	world_post(w, "/revoke", auth, NULL, form, &r);
	st = r.status;
	if (out != NULL)
		*out = r;
	else
		harness_resp_free(&r);
	return st;
}

void
world_register(struct world *w, const char *body)
{
	struct http_resp r;

	world_call(w, "POST", "/v1/agents", w->k.registrar, body, &r);
	if (r.status != 201)
		fprintf(stderr, "register: %ld %s\n", r.status, r.body);
	assert_int_equal(r.status, 201);
	harness_resp_free(&r);
}

void
world_credential(struct world *w, const char *id, char *out, size_t len)
{
	char path[256], body[512];
	struct http_resp r;

	snprintf(path, sizeof(path), "/v1/agents/%s/join-tokens", id);
	world_call(w, "POST", path, w->k.registrar, NULL, &r);
	assert_int_equal(r.status, 201);
	snprintf(body, sizeof(body), "{\"method\":\"join_token\",\"join_token\":\"%s\"}",
	         json_string_value(json_object_get(r.json, "join_token")));
	harness_resp_free(&r);
	snprintf(path, sizeof(path), "/v1/agents/%s/attest", id);
	world_call(w, "POST", path, NULL, body, &r);
	assert_int_equal(r.status, 200);
	snprintf(out, len, "%s", json_string_value(json_object_get(r.json, "credential")));
	harness_resp_free(&r);
}

void
world_agent(struct world *w, const struct world_agent *a)
{
	char body[4096];
	char opt[2048];
	size_t at = 0;

	opt[0] = '\0';
#define OPT(fmt, v)                                                                                \
	do {                                                                                       \
		if ((v) != NULL)                                                                   \
			at += (size_t)snprintf(opt + at, sizeof(opt) - at, fmt, (v));              \
		assert_true(at < sizeof(opt));                                                     \
	} while (0)
	OPT(",\"agent_version\":\"%s\"", a->version);
	OPT(",\"environment\":\"%s\"", a->environment);
	OPT(",\"domains\":%s", a->domains);
	OPT(",\"delegate_to\":%s", a->delegate_to);
	OPT("%s", a->extra);
#undef OPT
	snprintf(body, sizeof(body),
	         "{\"id\":\"%s\",\"agent_type\":\"%s\",\"owner\":\"%s\",\"capabilities\":%s%s,"
	         "\"delegation_constraints\":{\"max_chain_depth\":%d,"
	         "\"max_scope_per_delegation\":\"%s\",\"requires_human_approval_for\":%s},"
	         "\"credential\":{\"rotation\":\"%s\"}}",
	         a->id, a->type, a->owner, a->caps, opt, a->max_depth != 0 ? a->max_depth : 2,
	         a->max_scope != NULL ? a->max_scope : "read",
	         a->approvals != NULL ? a->approvals : "[]",
	         a->rotation != NULL ? a->rotation : "30m");
	world_register(w, body);
}

void
world_task_body(struct world *w, const char *human, const char *body, char task_id[80],
                char jti[80], char **root_token)
{
	struct http_resp r;

	world_call(w, "POST", "/v1/tasks", human, body, &r);
	if (r.status != 201)
		fprintf(stderr, "task: %ld %s\n", r.status, r.body);
	assert_int_equal(r.status, 201);
	snprintf(task_id, 80, "%s",
	         json_string_value(json_object_get(json_object_get(r.json, "task"), "id")));
	if (jti != NULL)
		snprintf(jti, 80, "%s", json_string_value(json_object_get(r.json, "jti")));
	*root_token = strdup(json_string_value(json_object_get(r.json, "delegation_token")));
	assert_non_null(*root_token);
	harness_resp_free(&r);
}

void
world_task_ttl(struct world *w, const char *human, const char *root_agent, const char *scope_json,
               const char *ttl, char task_id[80], char jti[80], char **root_token)
{
	char body[2048];

	snprintf(body, sizeof(body),
	         "{\"root_agent\":\"%s\",\"scope\":%s,\"description\":\"quarterly infrastructure "
	         "review\",\"ttl\":\"%s\"}",
	         root_agent, scope_json, ttl);
	world_task_body(w, human, body, task_id, jti, root_token);
}

void
world_task(struct world *w, const char *human, const char *root_agent, const char *scope_json,
           char task_id[80], char **root_token)
{
	world_task_ttl(w, human, root_agent, scope_json, "4h", task_id, NULL, root_token);
}

void
world_delegation(struct world *w, const char *bearer, const char *token, const char *to,
                 const char *scope, const char *ttl, const char *approval, struct http_resp *r)
{
	char body[8192];

	snprintf(body, sizeof(body),
	         "{\"delegation_token\":\"%s\",\"to_agent\":\"%s\",\"scope\":\"%s\"%s%s%s%s%s}",
	         token, to, scope, ttl != NULL ? ",\"ttl\":" : "", ttl != NULL ? ttl : "",
	         approval != NULL ? ",\"approval_id\":\"" : "", approval != NULL ? approval : "",
	         approval != NULL ? "\"" : "");
	world_call(w, "POST", "/v1/delegations", bearer, body, r);
}

char *
world_delegate(struct world *w, const char *bearer, const char *token, const char *to,
               const char *scope, const char *ttl)
{
	struct http_resp r;
	char *tok;

	world_delegation(w, bearer, token, to, scope, ttl, NULL, &r);
	if (r.status != 201)
		fprintf(stderr, "delegate to %s: %ld %s\n", to, r.status, r.body);
	assert_int_equal(r.status, 201);
	tok = strdup(json_string_value(json_object_get(r.json, "delegation_token")));
	assert_non_null(tok);
	harness_resp_free(&r);
	return tok;
}

long
world_count(struct world *w, const char *sql)
{
	char v[64];

	assert_int_equal(harness_sql_value(w->db, sql, v, sizeof(v)), 0);
	return strtol(v, NULL, 10);
}

json_t *
world_verify(struct world *w, const char *token, const char *typ)
{
	struct idp_jws_verify_opts o = {.typ = typ};
	struct idp_jws_keyset *set = NULL;
	struct idp_jws_verified v;
	enum idp_jws_reason why;
	struct http_resp jw;
	json_t *claims;

	world_call(w, "GET", "/.well-known/jwks.json", NULL, NULL, &jw);
	assert_int_equal(jw.status, 200);
	assert_int_equal(idp_jws_keyset_from_jwks(jw.body, jw.len, &set, NULL), IDP_OK);
	harness_resp_free(&jw);
	memset(&v, 0, sizeof(v));
	assert_int_equal(idp_jws_verify(set, token, strlen(token), &o, &v, &why), IDP_OK);
	claims = json_incref(v.claims);
	idp_jws_verified_cleanup(&v);
	idp_jws_keyset_unref(set);
	return claims;
}
