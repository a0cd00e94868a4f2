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

static void
world_once(void)
{
	size_t used = 0;
	json_t *doc;
	FILE *f;
	int fd;

	if (idp_key != NULL)
		return;
	assert_int_equal(idp_jws_key_generate("sso-1", &idp_key, NULL), IDP_OK);
	snprintf(jwks_path, sizeof(jwks_path), "/tmp/idpd_world_idp_XXXXXX");
	fd = mkstemp(jwks_path);
	assert_true(fd >= 0);
	f = fdopen(fd, "w");
	assert_non_null(f);
	doc = json_pack("{s:[o]}", "keys", idp_jws_key_public_jwk(idp_key));
	assert_int_equal(json_dumpf(doc, f, JSON_COMPACT), 0);
	json_decref(doc);
	assert_int_equal(fclose(f), 0);
	key_section("ci-registrar", "registrar", keys.registrar, &used);
	key_section("ci-admin", "admin", keys.admin, &used);
	key_section("ci-introspector", "introspector", keys.introspector, &used);
	key_section("ci-approver", "approver", keys.approver, &used);
	key_section("ci-auditor", "auditor", keys.auditor, &used);
}

void
world_start(struct world *w, const char *db, const char *extra_toml)
{
	static char toml[16384];

	world_once();
	memset(w, 0, sizeof(*w));
	snprintf(w->db, sizeof(w->db), "%s", db);
	w->k = keys;
	assert_int_equal(harness_db_create(db), 0);
	snprintf(toml, sizeof(toml),
	         "[identity]\ntrust_domain = \"example.org\"\n"
	         "[tasks]\nmax_ttl = \"8h\"\n"
	         "[revocation]\nmax_staleness = \"2s\"\n"
	         "[registry]\nlast_active_flush = \"1s\"\n"
	         "[[resources]]\naudience = \"" WORLD_AWS "\"\ndomain = \"cloud\"\n"
	         "classification = \"internal\"\nenvironment = \"production\"\n"
	         "[[resources]]\naudience = \"" WORLD_BILLING "\"\ndomain = \"finance\"\n"
	         "classification = \"confidential\"\nenvironment = \"production\"\n"
	         "[[resources]]\naudience = \"" WORLD_REPORTS "\"\ndomain = \"reporting\"\n"
	         "classification = \"internal\"\n"
	         "[[idp]]\nname = \"corp\"\nissuer = \"" WORLD_IDP_ISS "\"\naudience = \"idpd\"\n"
	         "jwks_file = \"%s\"\nalgs = [\"ES256\"]\nprincipal_claim = \"email\"\n%s%s",
	         jwks_path, keys_toml, extra_toml != NULL ? extra_toml : "");
	if (harness_idpd_start(&w->p, db, NULL, toml) != 0) {
		harness_idpd_dump_log(&w->p);
		fail_msg("idpd did not start");
	}
}

void
world_stop(struct world *w)
{
	assert_int_equal(harness_idpd_stop(&w->p, SIGTERM, 10000), 0);
}

char *
world_human_token(const char *email)
{
	long long now = (long long)time(NULL);
	json_t *c = json_pack("{s:s,s:s,s:s,s:I,s:I,s:s}", "iss", WORLD_IDP_ISS, "sub", email,
	                      "aud", "idpd", "iat", (json_int_t)(now - 5), "exp",
	                      (json_int_t)(now + 600), "email", email);
	char *tok = NULL;

	world_once();
	assert_int_equal(idp_jws_sign(idp_key, NULL, c, &tok, NULL, NULL), IDP_OK);
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
world_form(struct world *w, const char *path, const char *bearer, const char *form,
           struct http_resp *r)
{
	char url[512], auth[4200];
	const char *headers[3];

	size_t n = 0;

	snprintf(url, sizeof(url), "%s%s", w->p.base, path);
	snprintf(auth, sizeof(auth), "Authorization: Bearer %s", bearer != NULL ? bearer : "");
	if (bearer != NULL)
		headers[n++] = auth;
	headers[n++] = "Content-Type: application/x-www-form-urlencoded";
	headers[n] = NULL;
	assert_int_equal(harness_http("POST", url, headers, form, strlen(form), r), 0);
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
world_task(struct world *w, const char *human, const char *root_agent, const char *scope_json,
           char task_id[80], char **root_token)
{
	char body[2048];
	struct http_resp r;

	snprintf(body, sizeof(body),
	         "{\"root_agent\":\"%s\",\"scope\":%s,\"description\":\"quarterly infrastructure "
	         "review\",\"ttl\":\"4h\"}",
	         root_agent, scope_json);
	world_call(w, "POST", "/v1/tasks", human, body, &r);
	if (r.status != 201)
		fprintf(stderr, "task: %ld %s\n", r.status, r.body);
	assert_int_equal(r.status, 201);
	snprintf(task_id, 80, "%s",
	         json_string_value(json_object_get(json_object_get(r.json, "task"), "id")));
	*root_token = strdup(json_string_value(json_object_get(r.json, "delegation_token")));
	assert_non_null(*root_token);
	harness_resp_free(&r);
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
