/*
 * Integration tests of signing-key management against a real PostgreSQL and
 * real idpd processes: the first start, rotation on demand (HTTP and CLI)
 * and on schedule (the cleanup job), retirement, two instances that start
 * together and follow each other's rotations, a wrong KEK, and the roles the
 * endpoints require.
 *
 * Tokens are signed here, in the test process, through the key manager's
 * own API (keys.h) on the same database and KEK, exactly as the token
 * service will sign them; they are verified against the JWKS that idpd
 * serves over HTTP.
 */
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include "harness.h"
#include "world.h"
#include "idpd/auth.h"
#include "idpd/b64.h"
#include "idpd/clock.h"
#include "idpd/jws.h"
#include "idpd/kek.h"
#include "idpd/keys.h"
#include "idpd/store.h"
#include "idpd/tasks.h"

/* This test's KEK, and another one. */
#define TEST_KEK "6b6579732d746573742d6b656b2d7468697274792d74776f2d62797465732121"
#define WRONG_KEK "612d77726f6e672d6b656b2d6f662d7468697274792d74776f2d627974657321"

static char admin_key[64], auditor_key[64], maint_key[64], roles_toml[2048];

static void
sleep_ms(int ms)
{
	struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};

	nanosleep(&ts, NULL);
}

static void
make_api_keys(void)
{
	char h1[80], h2[80], h3[80];

	if (roles_toml[0] != '\0')
		return;
	assert_int_equal(auth_key_generate(admin_key, h1), IDP_OK);
	assert_int_equal(auth_key_generate(auditor_key, h2), IDP_OK);
	assert_int_equal(auth_key_generate(maint_key, h3), IDP_OK);
	snprintf(roles_toml, sizeof(roles_toml),
	         "[[api_keys]]\nname = \"ops-admin\"\nhash = \"%s\"\nroles = [\"admin\"]\n"
	         "[[api_keys]]\nname = \"siem-reader\"\nhash = \"%s\"\nroles = [\"auditor\"]\n"
	         "[[api_keys]]\nname = \"cron\"\nhash = \"%s\"\nroles = [\"maintenance\"]\n",
	         h1, h2, h3);
}

/*
 * A [keys] table with the given lines (which may be NULL or start with
 * "[keys]"), then the API keys.  Unless the lines set it,
 * keys.jwks_max_age is 0, so that a rotation has no next key's age to wait
 * for; next_key_must_be_published_for_jwks_max_age is about that wait.
 */
static const char *
config_with(const char *keys_section)
{
	static char buf[4096];
	const char *ks = keys_section != NULL ? keys_section : "[keys]\n";

	make_api_keys();
	snprintf(buf, sizeof(buf), "%s%s%s", ks,
	         strstr(ks, "jwks_max_age") != NULL ? "" : "jwks_max_age = \"0s\"\n", roles_toml);
	return buf;
}

static void
start(struct idpd_proc *p, const char *db, const char *keys_section)
{
	if (harness_idpd_start(p, db, NULL, config_with(keys_section)) != 0) {
		harness_idpd_dump_log(p);
		fail_msg("idpd did not start on %s", db);
	}
}

static long
call(const char *method, const struct idpd_proc *p, const char *path, const char *key,
     const char *body, struct http_resp *r)
{
	char url[512], auth[128];
	const char *h[] = {auth, "Content-Type: application/json", NULL};
	const char *no_auth[] = {"Content-Type: application/json", NULL};

	snprintf(auth, sizeof(auth), "Authorization: Bearer %s", key ? key : "");
	snprintf(url, sizeof(url), "%s%s", p->base, path);
	assert_int_equal(
	    harness_http(method, url, key ? h : no_auth, body, body ? strlen(body) : 0, r), 0);
	return r->status;
}

/* Whether the JWKS comes with Cache-Control want within 5 s (polled). */
static bool
jwks_cache_becomes(const struct idpd_proc *p, const char *want)
{
	struct http_resp r;
	char cache[128];
	bool seen = false;

	for (int i = 0; i < 200 && !seen; i++) {
		assert_int_equal(call("GET", p, "/.well-known/jwks.json", NULL, NULL, &r), 200);
		assert_true(harness_resp_header(&r, "Cache-Control", cache, sizeof(cache)));
		seen = strcmp(cache, want) == 0;
		harness_resp_free(&r);
		if (!seen)
			sleep_ms(25);
	}
	return seen;
}

/* The served JWKS document, as text the caller frees. */
static char *
jwks_text(const struct idpd_proc *p)
{
	struct http_resp r;
	char *text;

	assert_int_equal(call("GET", p, "/.well-known/jwks.json", NULL, NULL, &r), 200);
	text = strdup(r.body);
	harness_resp_free(&r);
	return text;
}

static bool
jwks_has(const struct idpd_proc *p, const char *kid)
{
	char *t = jwks_text(p), want[200];
	bool found;

	snprintf(want, sizeof(want), "\"kid\":\"%s\"", kid);
	found = strstr(t, want) != NULL;
	free(t);
	return found;
}

static size_t
jwks_count(const struct idpd_proc *p)
{
	char *t = jwks_text(p);
	json_t *doc = json_loads(t, 0, NULL);
	size_t n = json_array_size(json_object_get(doc, "keys"));

	json_decref(doc);
	free(t);
	return n;
}

/* Verify token against the JWKS idpd serves now; returns the idp_jws_verify result. */
static int
verify_with_served_jwks(const struct idpd_proc *p, const char *token, enum idp_jws_reason *reason)
{
	char *t = jwks_text(p);
	struct idp_jws_keyset *set = NULL;
	struct idp_jws_verify_opts opts = {.typ = IDP_JWS_TYP_ACCESS};
	struct idp_jws_verified v;
	struct idp_diag d;
	int rc;

	idp_diag_init(&d);
	assert_int_equal(idp_jws_keyset_from_jwks(t, strlen(t), &set, &d), IDP_OK);
	free(t);
	*reason = IDP_JWS_OK;
	rc = idp_jws_verify(set, token, strlen(token), &opts, &v, reason);
	if (rc == IDP_OK)
		idp_jws_verified_cleanup(&v);
	idp_jws_keyset_unref(set);
	return rc;
}

static int
db_int(const char *db, const char *sql)
{
	char v[64];

	assert_int_equal(harness_sql_value(db, sql, v, sizeof(v)), 0);
	return atoi(v);
}

static void
db_text(const char *db, const char *sql, char *out, size_t len)
{
	assert_int_equal(harness_sql_value(db, sql, out, len), 0);
}

static void
active_kid(const char *db, char out[IDP_JWS_MAX_KID + 1])
{
	db_text(db, "SELECT kid FROM signing_keys WHERE state = 'active'", out,
	        IDP_JWS_MAX_KID + 1);
}

/* What a running idpd's keys look like from outside: a fingerprint of every row. */
static void
table_fingerprint(const char *db, char out[64])
{
	db_text(db,
	        "SELECT coalesce(md5(string_agg(t::text, '|' ORDER BY id)), 'empty') "
	        "FROM signing_keys t",
	        out, 64);
}

/* ---- a key manager in the test process, as the token service uses one ---- */

struct signer {
	struct store *store;
	struct keys *km;
};

static void
signer_open(struct signer *s, const char *db)
{
	char url[256];
	struct store_opts so = {.pool_size = 1,
	                        .connect_timeout_ms = 2000,
	                        .acquire_timeout_ms = 2000,
	                        .statement_timeout_ms = 5000};
	struct keys_opts o = {.clock = idp_clock_system(),
	                      .policy = {.rotate_every_ms = 0,
	                                 .retire_after_ms = 3600 * 1000,
	                                 .max_age_ms = 90LL * 86400 * 1000},
	                      .jwks_max_age_ms = 0,
	                      .kek_source = "the test"};
	struct idp_kek *k = NULL;
	struct idp_diag d;

	harness_db_url(db, url, sizeof(url));
	so.url = url;
	s->store = store_open(&so);
	o.store = s->store;
	idp_diag_init(&d);
	assert_int_equal(idp_kek_from_string(TEST_KEK, &k, &d), IDP_OK);
	assert_int_equal(keys_open(&o, k, &s->km, &d), IDP_OK);
	if (keys_reload(s->km, &d) != IDP_OK)
		fail_msg("%s", idp_diag_str(&d));
}

static void
signer_close(struct signer *s)
{
	keys_free(s->km);
	store_close(s->store);
}

/* Sign an access token with the current key; *kid gets the header's kid. */
static char *
sign_token(struct signer *s, char kid[IDP_JWS_MAX_KID + 1])
{
	struct idp_jws_key *key = NULL;
	struct idp_jws_verified v;
	struct idp_diag d;
	json_t *claims =
	    json_pack("{s:s,s:s,s:I,s:I}", "sub", "agent-research-01", "aud", "s3.internal", "iat",
	              (json_int_t)time(NULL), "exp", (json_int_t)time(NULL) + 300);
	char *tok = NULL;

	assert_int_equal(keys_signing_key(s->km, &key, NULL), IDP_OK);
	idp_diag_init(&d);
	assert_int_equal(idp_jws_sign(key, IDP_JWS_TYP_ACCESS, claims, &tok, NULL, &d), IDP_OK);
	json_decref(claims);
	idp_jws_key_unref(key);
	/* The kid as a verifier reads it: from the token's own header. */
	{
		struct idp_jws_keyset *set = keys_verify_set(s->km);

		assert_int_equal(idp_jws_verify(set, tok, strlen(tok), NULL, &v, NULL), IDP_OK);
		idp_jws_keyset_unref(set);
	}
	snprintf(kid, IDP_JWS_MAX_KID + 1, "%s", v.kid);
	idp_jws_verified_cleanup(&v);
	return tok;
}

/* ---- tests ---- */

static void
first_start_generates_a_key_and_jwks_serves_it(void **state)
{
	struct idpd_proc p;
	struct http_resp r;
	char kek_id[21], stored[32], active[IDP_JWS_MAX_KID + 1], *before, *after;
	struct idp_kek *k = NULL;
	struct idp_diag d;
	json_t *keys;

	(void)state;
	assert_int_equal(harness_db_create("t_keys_first"), 0);
	assert_int_equal(db_int("t_keys_first", "SELECT count(*) FROM signing_keys"), 0);
	start(&p, "t_keys_first", "[keys]\njwks_max_age = \"5m\"\n"); /* the default */

	/* One active and one next key, sealed with this KEK. */
	assert_int_equal(
	    db_int("t_keys_first", "SELECT count(*) FROM signing_keys WHERE state = 'active'"), 1);
	assert_int_equal(
	    db_int("t_keys_first", "SELECT count(*) FROM signing_keys WHERE state = 'next'"), 1);
	assert_int_equal(db_int("t_keys_first", "SELECT count(*) FROM signing_keys"), 2);
	idp_diag_init(&d);
	assert_int_equal(idp_kek_from_string(TEST_KEK, &k, &d), IDP_OK);
	idp_kek_id(k, kek_id);
	idp_kek_free(k);
	db_text("t_keys_first", "SELECT DISTINCT kek_id FROM signing_keys", stored, sizeof(stored));
	assert_string_equal(stored, kek_id);
	active_kid("t_keys_first", active);

	/* The JWKS serves both public keys, cacheable once the listener's first
	 * reload has run (no-store until then: keys may be missing). */
	assert_true(jwks_cache_becomes(&p, "public, max-age=300"));
	assert_int_equal(call("GET", &p, "/.well-known/jwks.json", NULL, NULL, &r), 200);
	keys = json_object_get(r.json, "keys");
	assert_int_equal(json_array_size(keys), 2);
	for (size_t i = 0; i < 2; i++) {
		json_t *jwk = json_array_get(keys, i);

		assert_string_equal(json_string_value(json_object_get(jwk, "kty")), "EC");
		assert_string_equal(json_string_value(json_object_get(jwk, "crv")), "P-256");
		assert_string_equal(json_string_value(json_object_get(jwk, "alg")), "ES256");
		assert_null(json_object_get(jwk, "d"));
	}
	assert_string_equal(json_string_value(json_object_get(json_array_get(keys, 0), "kid")),
	                    active);
	harness_resp_free(&r);

	/* Two key.generated events (a first key is no rotation), without the KEK or any
	 * private key in them. */
	assert_int_equal(db_int("t_keys_first",
	                        "SELECT count(*) FROM audit_events WHERE type = 'key.generated'"),
	                 2);
	assert_int_equal(
	    db_int("t_keys_first", "SELECT count(*) FROM audit_events WHERE type LIKE 'key.%'"), 2);
	assert_int_equal(db_int("t_keys_first", "SELECT count(*) FROM audit_events WHERE type "
	                                        "LIKE 'key.%' AND (body LIKE '%" TEST_KEK
	                                        "%' OR body LIKE '%\"d\"%')"),
	                 0);

	/* The cleanup job has nothing to rotate with the default schedule. */
	assert_int_equal(call("POST", &p, "/v1/maintenance/cleanup", maint_key, NULL, &r), 200);
	assert_int_equal(
	    json_integer_value(json_object_get(
	        json_object_get(json_object_get(r.json, "jobs"), "signing_keys"), "rotated")),
	    0);
	harness_resp_free(&r);

	/* A restart loads the same keys and generates nothing. */
	before = jwks_text(&p);
	assert_int_equal(harness_idpd_stop(&p, SIGTERM, 10000), 0);
	start(&p, "t_keys_first", "[keys]\njwks_max_age = \"5m\"\n"); /* the default */
	after = jwks_text(&p);
	assert_string_equal(before, after);
	assert_int_equal(db_int("t_keys_first", "SELECT count(*) FROM signing_keys"), 2);
	free(before);
	free(after);
	assert_int_equal(harness_idpd_stop(&p, SIGTERM, 10000), 0);
}

static void
rotation_keeps_old_tokens_verifiable_and_new_tokens_carry_the_new_kid(void **state)
{
	struct idpd_proc p;
	struct http_resp r;
	struct signer s;
	enum idp_jws_reason why;
	char k1[IDP_JWS_MAX_KID + 1], k2[IDP_JWS_MAX_KID + 1], k2_signed[IDP_JWS_MAX_KID + 1];
	char q[512], *t1, *t2;
	json_t *job;

	(void)state;
	assert_int_equal(harness_db_create("t_keys_rotate"), 0);
	start(&p, "t_keys_rotate", "[keys]\nretire_after = \"1s\"\n");
	signer_open(&s, "t_keys_rotate");
	t1 = sign_token(&s, k1);
	assert_int_equal(verify_with_served_jwks(&p, t1, &why), IDP_OK);

	assert_int_equal(
	    call("POST", &p, "/v1/keys/rotate", admin_key, "{\"reason\":\"quarterly drill\"}", &r),
	    200);
	assert_true(json_is_true(json_object_get(r.json, "rotated")));
	assert_string_equal(json_string_value(json_object_get(r.json, "previous")), k1);
	snprintf(k2, sizeof(k2), "%s", json_string_value(json_object_get(r.json, "active")));
	assert_string_not_equal(k2, k1);
	harness_resp_free(&r);

	/* While k1 is retiring: published, and its token still verifies. */
	snprintf(q, sizeof(q), "SELECT state FROM signing_keys WHERE kid = '%s'", k1);
	{
		char st[32];

		db_text("t_keys_rotate", q, st, sizeof(st));
		assert_string_equal(st, "retiring");
	}
	assert_true(jwks_has(&p, k1));
	assert_true(jwks_has(&p, k2));
	assert_int_equal(jwks_count(&p), 3);
	assert_int_equal(verify_with_served_jwks(&p, t1, &why), IDP_OK);

	/* New tokens carry the new kid. */
	{
		struct idp_diag d;

		idp_diag_init(&d);
		assert_int_equal(keys_reload(s.km, &d), IDP_OK);
	}
	t2 = sign_token(&s, k2_signed);
	assert_string_equal(k2_signed, k2);
	assert_int_equal(verify_with_served_jwks(&p, t2, &why), IDP_OK);

	/* The rotation is audited with its operator and reason. */
	assert_int_equal(db_int("t_keys_rotate",
	                        "SELECT count(*) FROM audit_events WHERE type = 'key.rotated' AND "
	                        "body LIKE '%\"name\":\"ops-admin\"%' AND "
	                        "body LIKE '%quarterly drill%'"),
	                 1);

	/* Past retire_after, the cleanup job retires k1: gone from the JWKS. */
	sleep_ms(1500);
	assert_int_equal(call("POST", &p, "/v1/maintenance/cleanup", maint_key, NULL, &r), 200);
	job = json_object_get(json_object_get(r.json, "jobs"), "signing_keys");
	assert_int_equal(json_integer_value(json_object_get(job, "retired")), 1);
	assert_int_equal(json_integer_value(json_object_get(job, "rotated")), 0);
	harness_resp_free(&r);
	assert_false(jwks_has(&p, k1));
	assert_int_equal(verify_with_served_jwks(&p, t1, &why), IDP_EUNAUTH);
	assert_int_equal(why, IDP_JWS_KID_UNKNOWN);
	assert_int_equal(verify_with_served_jwks(&p, t2, &why), IDP_OK);
	snprintf(q, sizeof(q),
	         "SELECT count(*) FROM signing_keys WHERE kid = '%s' AND state = 'retired' AND "
	         "private_sealed IS NULL AND retired_at IS NOT NULL",
	         k1);
	assert_int_equal(db_int("t_keys_rotate", q), 1);
	assert_int_equal(
	    db_int("t_keys_rotate", "SELECT count(*) FROM audit_events WHERE type = 'key.retired'"),
	    1);
	free(t1);
	free(t2);
	signer_close(&s);
	assert_int_equal(harness_idpd_stop(&p, SIGTERM, 10000), 0);
}

static void
scheduled_rotation_runs_in_the_cleanup_job_when_due(void **state)
{
	struct idpd_proc p;
	struct http_resp r;
	char before[IDP_JWS_MAX_KID + 1], next[IDP_JWS_MAX_KID + 1], after[IDP_JWS_MAX_KID + 1];
	json_t *job;

	(void)state;
	assert_int_equal(harness_db_create("t_keys_schedule"), 0);
	start(&p, "t_keys_schedule", "[keys]\nrotate_every = \"1s\"\n");
	active_kid("t_keys_schedule", before);
	db_text("t_keys_schedule", "SELECT kid FROM signing_keys WHERE state = 'next'", next,
	        sizeof(next));
	sleep_ms(1500);
	assert_int_equal(call("POST", &p, "/v1/maintenance/cleanup", maint_key, NULL, &r), 200);
	job = json_object_get(json_object_get(r.json, "jobs"), "signing_keys");
	assert_int_equal(json_integer_value(json_object_get(job, "rotated")), 1);
	assert_int_equal(json_integer_value(json_object_get(job, "generated")), 1);
	/* The key published as next is the one that now signs. */
	assert_string_equal(json_string_value(json_object_get(job, "active")), next);
	harness_resp_free(&r);
	active_kid("t_keys_schedule", after);
	assert_string_equal(after, next);
	assert_true(jwks_has(&p, before));
	assert_int_equal(db_int("t_keys_schedule",
	                        "SELECT count(*) FROM audit_events WHERE type = 'key.rotated' AND "
	                        "body LIKE '%\"trigger\":\"schedule\"%'"),
	                 1);
	assert_int_equal(harness_idpd_stop(&p, SIGTERM, 10000), 0);
}

/* An idpd started without waiting for it, so two can start together. */
struct spawned {
	pid_t pid;
	char base[64];
	char config[128];
	char log[128];
};

static void
spawn(struct spawned *s, const char *db, const char *name)
{
	int port = harness_free_port();
	const char *top = getenv("IDPD_TEST_TOP");
	char url[256];
	FILE *f;

	harness_db_url(db, url, sizeof(url));
	snprintf(s->base, sizeof(s->base), "http://127.0.0.1:%d", port);
	snprintf(s->config, sizeof(s->config), "/tmp/idpd-test-keys-%s.toml", name);
	snprintf(s->log, sizeof(s->log), "/tmp/idpd-test-keys-%s.log", name);
	f = fopen(s->config, "w");
	assert_non_null(f);
	fprintf(f,
	        "[server]\nport = %d\nthreads = 2\n[database]\nurl = \"%s\"\npool_size = 4\n"
	        "[node]\nmigrations_dir = \"%s/migrations\"\ninstance_id = \"test-%s\"\n%s",
	        port, url, top ? top : ".", name, config_with(NULL));
	fclose(f);
	{
		const char *args[] = {"serve", "--config", s->config, NULL};

		s->pid = harness_idpd_spawn(args, s->log);
	}
	assert_true(s->pid > 0);
}

static void
wait_up(const struct spawned *s)
{
	for (int i = 0; i < 200; i++) {
		struct http_resp r;
		char url[128];

		snprintf(url, sizeof(url), "%s/healthz", s->base);
		if (harness_http("GET", url, NULL, NULL, 0, &r) == 0 && r.status == 200) {
			harness_resp_free(&r);
			return;
		}
		harness_resp_free(&r);
		sleep_ms(50);
	}
	fail_msg("idpd (%s) did not come up; see %s", s->base, s->log);
}

static void
as_proc(const struct spawned *s, struct idpd_proc *p)
{
	memset(p, 0, sizeof(*p));
	snprintf(p->base, sizeof(p->base), "%s", s->base);
}

static void
stop_spawned(struct spawned *s)
{
	kill(s->pid, SIGTERM);
	assert_int_equal(harness_wait(s->pid), 0);
}

/* Poll b's JWKS until it equals a's, for up to 10 s; true if it did. */
static bool
jwks_converge(const struct idpd_proc *a, const struct idpd_proc *b)
{
	char *want = jwks_text(a);
	bool same = false;

	for (int i = 0; i < 200 && !same; i++) {
		char *got = jwks_text(b);

		same = strcmp(want, got) == 0;
		free(got);
		if (!same)
			sleep_ms(50);
	}
	free(want);
	return same;
}

static void
two_instances_start_together_and_agree_on_keys_after_a_rotation(void **state)
{
	struct spawned sa, sb;
	struct idpd_proc a, b;
	struct http_resp r;
	char *ja, *jb, active[IDP_JWS_MAX_KID + 1];

	(void)state;
	assert_int_equal(harness_db_create("t_keys_two"), 0);
	spawn(&sa, "t_keys_two", "a");
	spawn(&sb, "t_keys_two", "b");
	wait_up(&sa);
	wait_up(&sb);
	as_proc(&sa, &a);
	as_proc(&sb, &b);

	/* One first key pair for both, not two. */
	assert_int_equal(db_int("t_keys_two", "SELECT count(*) FROM signing_keys"), 2);
	assert_int_equal(
	    db_int("t_keys_two", "SELECT count(*) FROM audit_events WHERE type = 'key.generated'"),
	    2);
	ja = jwks_text(&a);
	jb = jwks_text(&b);
	assert_string_equal(ja, jb);
	free(ja);
	free(jb);

	/* A rotation on a reaches b through NOTIFY. */
	assert_int_equal(call("POST", &a, "/v1/keys/rotate", admin_key, NULL, &r), 200);
	snprintf(active, sizeof(active), "%s",
	         json_string_value(json_object_get(r.json, "active")));
	harness_resp_free(&r);
	assert_true(jwks_converge(&a, &b));
	assert_true(jwks_has(&b, active));
	assert_int_equal(jwks_count(&b), 3);
	/* And one on b reaches a. */
	assert_int_equal(call("POST", &b, "/v1/keys/rotate", admin_key, NULL, &r), 200);
	harness_resp_free(&r);
	assert_true(jwks_converge(&b, &a));
	assert_int_equal(jwks_count(&a), 4);

	stop_spawned(&sa);
	stop_spawned(&sb);
}

/*
 * A next key signs only once verifiers that cache the JWKS for
 * keys.jwks_max_age hold it.  Until then a rotation is refused with 409 (the
 * CLI exits 3), is audited as a failure and changes nothing, unless forced;
 * the key made by a forced rotation must age in turn.  Ageing is simulated
 * by moving the next key's creation back an hour.
 */
static void
next_key_must_be_published_for_jwks_max_age(void **state)
{
	static const char *const age_next =
	    "UPDATE signing_keys SET created_at = created_at - interval '61 minutes' "
	    "WHERE state = 'next'";
	struct idpd_proc p;
	struct http_resp r;
	char fp[64], fp2[64], next[IDP_JWS_MAX_KID + 1];

	(void)state;
	assert_int_equal(harness_db_create("t_keys_age"), 0);
	start(&p, "t_keys_age", "[keys]\njwks_max_age = \"1h\"\nmax_age = \"90d\"\n");
	table_fingerprint("t_keys_age", fp);
	assert_int_equal(call("POST", &p, "/v1/keys/rotate", admin_key, NULL, &r), 409);
	assert_string_equal(json_string_value(json_object_get(r.json, "code")),
	                    "next_key_not_ready");
	assert_non_null(strstr(json_string_value(json_object_get(r.json, "detail")), "force"));
	harness_resp_free(&r);
	assert_int_equal(call("POST", &p, "/v1/keys/rotate", admin_key, "{\"force\":\"yes\"}", &r),
	                 422);
	harness_resp_free(&r);
	/* force is a body member: in the query it is refused, not read as a plain rotation. */
	assert_int_equal(call("POST", &p, "/v1/keys/rotate?force=1", admin_key, NULL, &r), 400);
	assert_string_equal(
	    json_string_value(json_array_get(json_object_get(r.json, "parameters"), 0)), "force");
	harness_resp_free(&r);
	assert_int_equal(call("GET", &p, "/v1/keys?state=next", admin_key, NULL, &r), 400);
	assert_null(json_object_get(r.json, "keys"));
	harness_resp_free(&r);
	{
		const char *args[] = {"keys", "rotate", "--config", p.config, NULL};

		assert_int_equal(harness_idpd_run(args, "/tmp/idpd-test-keys-age.out"), 3);
		assert_true(harness_file_contains("/tmp/idpd-test-keys-age.out", "force"));
	}
	table_fingerprint("t_keys_age", fp2);
	assert_string_equal(fp, fp2);
	assert_int_equal(db_int("t_keys_age", "SELECT count(*) FROM audit_events WHERE type = "
	                                      "'key.rotated' AND outcome = 'failure' AND body LIKE "
	                                      "'%\"trigger\":\"demand\"%'"),
	                 2);

	/* Forced, it rotates; the new next key is as young as can be. */
	db_text("t_keys_age", "SELECT kid FROM signing_keys WHERE state = 'next'", next,
	        sizeof(next));
	assert_int_equal(call("POST", &p, "/v1/keys/rotate", admin_key,
	                      "{\"force\":true,\"reason\":\"key compromised\"}", &r),
	                 200);
	assert_string_equal(json_string_value(json_object_get(r.json, "active")), next);
	assert_string_equal(json_string_value(json_object_get(r.json, "why")), "forced");
	snprintf(next, sizeof(next), "%s", json_string_value(json_object_get(r.json, "next")));
	harness_resp_free(&r);
	assert_int_equal(call("POST", &p, "/v1/keys/rotate", admin_key, NULL, &r), 409);
	harness_resp_free(&r);
	/* Published an hour ago: verifiers have had time to fetch it. */
	assert_int_equal(harness_sql("t_keys_age", age_next), 0);
	/* A rotation asking for what the endpoint does not read rotates nothing. */
	assert_int_equal(call("POST", &p, "/v1/keys/rotate?dry_run=true", admin_key, NULL, &r),
	                 400);
	harness_resp_free(&r);
	assert_int_equal(call("POST", &p, "/v1/keys/rotate", admin_key, NULL, &r), 200);
	assert_string_equal(json_string_value(json_object_get(r.json, "active")), next);
	assert_string_equal(json_string_value(json_object_get(r.json, "why")), "on_demand");
	harness_resp_free(&r);
	assert_int_equal(db_int("t_keys_age", "SELECT count(*) FROM audit_events WHERE type = "
	                                      "'key.rotated' AND outcome = 'success' AND body "
	                                      "LIKE '%\"trigger\":\"force\"%'"),
	                 1);
	/* And from the shell: refused, then forced. */
	{
		const char *args[] = {"keys", "rotate", "--config", p.config, "--force", NULL};
		const char *plain[] = {"keys", "rotate", "--config", p.config, NULL};

		assert_int_equal(harness_idpd_run(plain, "/tmp/idpd-test-keys-age.out"), 3);
		assert_int_equal(harness_idpd_run(args, "/tmp/idpd-test-keys-age.out"), 0);
		assert_true(
		    harness_file_contains("/tmp/idpd-test-keys-age.out", "\"why\":\"forced\""));
	}
	harness_idpd_stop(&p, SIGTERM, 5000);
}

/*
 * A compromised key, named by its kid, is retired at once: the active key is
 * rotated out and unpublished (its private half erased), so that tokens it
 * signed, and any forged with it, stop verifying.  A retried request finds
 * it retired and changes nothing (409 key_not_live; the CLI exits 3), where
 * "retire the active key" would retire its healthy successor.  A leaked next
 * key is retired and replaced without a rotation.
 */
static void
a_compromised_key_is_unpublished_at_once(void **state)
{
	struct idpd_proc p;
	struct http_resp r;
	struct signer s;
	enum idp_jws_reason why;
	char k1[IDP_JWS_MAX_KID + 1], k2[IDP_JWS_MAX_KID + 1], next[IDP_JWS_MAX_KID + 1];
	char fp[64], fp2[64], q[512], body[256], *t1;

	(void)state;
	assert_int_equal(harness_db_create("t_keys_compromise"), 0);
	start(&p, "t_keys_compromise", "[keys]\njwks_max_age = \"1h\"\n");
	signer_open(&s, "t_keys_compromise");
	t1 = sign_token(&s, k1);
	assert_true(jwks_cache_becomes(&p, "public, max-age=3600"));
	assert_int_equal(verify_with_served_jwks(&p, t1, &why), IDP_OK);
	table_fingerprint("t_keys_compromise", fp);
	assert_int_equal(call("POST", &p, "/v1/keys/rotate", admin_key, "{\"retire\":5}", &r), 422);
	harness_resp_free(&r);
	assert_int_equal(
	    call("POST", &p, "/v1/keys/rotate", admin_key, "{\"retire\":\"no-such-kid\"}", &r),
	    409);
	assert_string_equal(json_string_value(json_object_get(r.json, "code")), "key_not_live");
	harness_resp_free(&r);
	table_fingerprint("t_keys_compromise", fp2);
	assert_string_equal(fp, fp2);

	snprintf(body, sizeof(body), "{\"retire\":\"%s\",\"reason\":\"key leaked\"}", k1);
	assert_int_equal(call("POST", &p, "/v1/keys/rotate", admin_key, body, &r), 200);
	assert_string_equal(json_string_value(json_object_get(r.json, "previous")), k1);
	assert_string_equal(json_string_value(json_object_get(r.json, "why")), "compromise");
	assert_int_equal(json_integer_value(json_object_get(r.json, "retired")), 1);
	snprintf(k2, sizeof(k2), "%s", json_string_value(json_object_get(r.json, "active")));
	harness_resp_free(&r);
	assert_false(jwks_has(&p, k1));
	assert_int_equal(jwks_count(&p), 2);
	assert_int_equal(verify_with_served_jwks(&p, t1, &why), IDP_EUNAUTH);
	assert_int_equal(why, IDP_JWS_KID_UNKNOWN);
	snprintf(q, sizeof(q),
	         "SELECT count(*) FROM signing_keys WHERE kid = '%s' AND state = 'retired' AND "
	         "private_sealed IS NULL",
	         k1);
	assert_int_equal(db_int("t_keys_compromise", q), 1);
	assert_int_equal(db_int("t_keys_compromise",
	                        "SELECT count(*) FROM audit_events WHERE type = 'key.rotated' AND "
	                        "outcome = 'success' AND body LIKE '%\"trigger\":\"compromise\"%' "
	                        "AND body LIKE '%key leaked%'"),
	                 1);

	/* The same request again: the key is retired, its successor untouched. */
	table_fingerprint("t_keys_compromise", fp);
	assert_int_equal(call("POST", &p, "/v1/keys/rotate", admin_key, body, &r), 409);
	assert_string_equal(json_string_value(json_object_get(r.json, "code")), "key_not_live");
	harness_resp_free(&r);
	{
		const char *args[] = {"keys", "rotate", "--config", p.config, "--retire", k1, NULL};

		assert_int_equal(harness_idpd_run(args, "/tmp/idpd-test-keys-compromise.out"), 3);
	}
	table_fingerprint("t_keys_compromise", fp2);
	assert_string_equal(fp, fp2);
	assert_true(jwks_has(&p, k2));

	/* A leaked next key, from the shell: retired and replaced; k2 still signs. */
	db_text("t_keys_compromise", "SELECT kid FROM signing_keys WHERE state = 'next'", next,
	        sizeof(next));
	{
		const char *args[] = {"keys",     "rotate", "--config", p.config,
		                      "--retire", next,     NULL};

		assert_int_equal(harness_idpd_run(args, "/tmp/idpd-test-keys-compromise.out"), 0);
	}
	for (int i = 0; i < 200 && jwks_has(&p, next); i++)
		sleep_ms(25);
	assert_false(jwks_has(&p, next));
	active_kid("t_keys_compromise", q);
	assert_string_equal(q, k2);
	assert_int_equal(
	    db_int("t_keys_compromise", "SELECT count(*) FROM signing_keys WHERE state = 'next'"),
	    1);
	assert_int_equal(db_int("t_keys_compromise",
	                        "SELECT count(*) FROM audit_events WHERE type = 'key.retired'"),
	                 2);
	free(t1);
	signer_close(&s);
	harness_idpd_stop(&p, SIGTERM, 5000);
}

/*
 * An instance that may have missed a key published elsewhere (its listener
 * lost and the reload failing) serves its JWKS with no-store, so that no
 * verifier keeps a set that lacks the next key past the time a rotation
 * waits for; once it has reloaded, the JWKS is cacheable again.
 */
static void
jwks_is_not_cached_while_keys_may_be_missing(void **state)
{
	struct idpd_proc p;
	struct http_resp r;
	char cache[128], n[16];

	(void)state;
	assert_int_equal(harness_db_create("t_keys_lack"), 0);
	start(&p, "t_keys_lack", "[keys]\njwks_max_age = \"5m\"\n");
	assert_true(jwks_cache_becomes(&p, "public, max-age=300"));
	/* The keys cannot be read, and the listener's session is cut. */
	assert_int_equal(
	    harness_sql("t_keys_lack", "ALTER TABLE signing_keys RENAME TO signing_keys_away"), 0);
	assert_int_equal(harness_sql_value("t_keys_lack",
	                                   "SELECT count(pg_terminate_backend(pid)) FROM "
	                                   "pg_stat_activity WHERE datname = 't_keys_lack' AND "
	                                   "application_name = 'idpd listener'",
	                                   n, sizeof(n)),
	                 0);
	assert_string_equal(n, "1");
	assert_true(jwks_cache_becomes(&p, "no-store"));
	/* Reconnected, reloads failing: still not cacheable, a second later too. */
	sleep_ms(1000);
	assert_int_equal(call("GET", &p, "/.well-known/jwks.json", NULL, NULL, &r), 200);
	assert_true(harness_resp_header(&r, "Cache-Control", cache, sizeof(cache)));
	assert_string_equal(cache, "no-store");
	harness_resp_free(&r);
	/* Readable again: the refresher's next reload makes it cacheable. */
	assert_int_equal(
	    harness_sql("t_keys_lack", "ALTER TABLE signing_keys_away RENAME TO signing_keys"), 0);
	assert_true(jwks_cache_becomes(&p, "public, max-age=300"));
	harness_idpd_stop(&p, SIGTERM, 5000);
}

/*
 * An instance whose notifications are lost (its listening session cut and
 * unable to come back, its pool still connected) reads the keys every 5 s:
 * a key retired as compromised elsewhere leaves its JWKS, and its signing,
 * within that bound, not whenever the notifications return.
 */
static void
a_retirement_reaches_an_instance_whose_notifications_are_lost(void **state)
{
	const char *db = "t_keys_lost";
	struct idpd_proc a, b;
	struct http_resp r;
	char k1[IDP_JWS_MAX_KID + 1], body[256], n[16];
	int i;

	(void)state;
	assert_int_equal(harness_db_create(db), 0);
	start(&a, db, NULL);
	/* b connects as a role of its own, so that its new sessions can be refused. */
	assert_int_equal(harness_sql(db, "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles "
	                                 "WHERE rolname = 'idpd_b') THEN CREATE ROLE idpd_b "
	                                 "LOGIN; END IF; END $$; ALTER ROLE idpd_b CONNECTION "
	                                 "LIMIT -1; GRANT ALL ON SCHEMA public TO idpd_b; GRANT "
	                                 "ALL ON ALL TABLES IN SCHEMA public TO idpd_b; GRANT ALL "
	                                 "ON ALL SEQUENCES IN SCHEMA public TO idpd_b"),
	                 0);
	start(&b, "t_keys_lost?user=idpd_b", NULL);
	active_kid(db, k1);
	assert_true(jwks_has(&b, k1));
	/* b's pool holds its sessions; no new one may open, its listener's is cut. */
	for (i = 0; i < 4; i++) {
		assert_int_equal(call("GET", &b, "/v1/keys", admin_key, NULL, &r), 200);
		harness_resp_free(&r);
	}
	assert_int_equal(harness_sql(db, "ALTER ROLE idpd_b CONNECTION LIMIT 0"), 0);
	assert_int_equal(harness_sql_value(db,
	                                   "SELECT count(pg_terminate_backend(pid)) FROM "
	                                   "pg_stat_activity WHERE usename = 'idpd_b' AND "
	                                   "application_name = 'idpd listener'",
	                                   n, sizeof(n)),
	                 0);
	assert_string_equal(n, "1");
	sleep_ms(500);
	assert_true(harness_log_contains(&b, "keys: lost the notifications"));

	/* Retired as compromised through a. */
	snprintf(body, sizeof(body), "{\"retire\":\"%s\",\"reason\":\"key leaked\"}", k1);
	assert_int_equal(call("POST", &a, "/v1/keys/rotate", admin_key, body, &r), 200);
	harness_resp_free(&r);
	assert_false(jwks_has(&a, k1));
	for (i = 0; i < 160 && jwks_has(&b, k1); i++)
		sleep_ms(50);
	assert_false(jwks_has(&b, k1));
	assert_int_equal(harness_sql(db, "ALTER ROLE idpd_b CONNECTION LIMIT -1"), 0);
	harness_idpd_stop(&b, SIGTERM, 5000);
	harness_idpd_stop(&a, SIGTERM, 5000);
}

static void
cli_rotation_is_followed_by_a_running_instance(void **state)
{
	struct idpd_proc p;
	char fp[64], fp2[64], out[4096], *json_start, next[IDP_JWS_MAX_KID + 1];
	json_t *res;
	FILE *f;
	size_t n;

	(void)state;
	assert_int_equal(harness_db_create("t_keys_cli"), 0);
	start(&p, "t_keys_cli", NULL);
	{
		const char *args[] = {"keys",     "rotate",       "--config", p.config,
		                      "--reason", "key ceremony", NULL};

		assert_int_equal(harness_idpd_run(args, "/tmp/idpd-test-keys-cli.out"), 0);
	}
	f = fopen("/tmp/idpd-test-keys-cli.out", "r");
	assert_non_null(f);
	n = fread(out, 1, sizeof(out) - 1, f);
	fclose(f);
	out[n] = '\0';
	json_start = strstr(out, "{\"rotated\"");
	assert_non_null(json_start);
	res = json_loads(json_start, JSON_DISABLE_EOF_CHECK, NULL);
	assert_non_null(res);
	assert_true(json_is_true(json_object_get(res, "rotated")));
	snprintf(next, sizeof(next), "%s", json_string_value(json_object_get(res, "next")));
	json_decref(res);

	/* The running instance publishes the key the CLI made. */
	for (int i = 0; i < 200 && !jwks_has(&p, next); i++)
		sleep_ms(50);
	assert_true(jwks_has(&p, next));
	assert_int_equal(db_int("t_keys_cli",
	                        "SELECT count(*) FROM audit_events WHERE type = 'key.rotated' AND "
	                        "body LIKE '%\"name\":\"cli:%' AND body LIKE '%key ceremony%'"),
	                 1);

	/* With the wrong KEK the CLI changes nothing. */
	table_fingerprint("t_keys_cli", fp);
	setenv("IDPD_KEK", WRONG_KEK, 1);
	{
		const char *args[] = {"keys", "rotate", "--config", p.config, NULL};

		assert_int_equal(harness_idpd_run(args, "/tmp/idpd-test-keys-cli2.out"), 1);
	}
	setenv("IDPD_KEK", TEST_KEK, 1);
	assert_true(harness_file_contains("/tmp/idpd-test-keys-cli2.out", "nothing was changed"));
	table_fingerprint("t_keys_cli", fp2);
	assert_string_equal(fp, fp2);

	/* keys list shows every key, retired or not, without key material. */
	{
		const char *args[] = {"keys", "list", "--config", p.config, NULL};

		assert_int_equal(harness_idpd_run(args, "/tmp/idpd-test-keys-cli3.out"), 0);
		assert_true(harness_file_contains("/tmp/idpd-test-keys-cli3.out",
		                                  "\"state\": \"retiring\""));
		assert_false(harness_file_contains("/tmp/idpd-test-keys-cli3.out", "sealed"));
	}
	assert_int_equal(harness_idpd_stop(&p, SIGTERM, 10000), 0);
}

static void
wrong_kek_refuses_to_start_and_changes_nothing(void **state)
{
	struct idpd_proc p;
	char fp[64], fp2[64], *jwks_before, *jwks_after, kek_toml[256];
	const char *path = "/tmp/idpd-test-keys-wrong.kek";
	int events;
	FILE *f;

	(void)state;
	assert_int_equal(harness_db_create("t_keys_wrong"), 0);
	start(&p, "t_keys_wrong", NULL);
	jwks_before = jwks_text(&p);
	assert_int_equal(harness_idpd_stop(&p, SIGTERM, 10000), 0);
	table_fingerprint("t_keys_wrong", fp);
	events = db_int("t_keys_wrong", "SELECT count(*) FROM audit_events");

	/* From the environment. */
	setenv("IDPD_KEK", WRONG_KEK, 1);
	assert_int_equal(harness_idpd_start(&p, "t_keys_wrong", NULL, config_with(NULL)), -1);
	assert_int_equal(p.exit_status, 1);
	assert_true(harness_log_contains(&p, "was sealed with key-encryption key kek-"));
	assert_true(harness_log_contains(&p, "the KEK from $IDPD_KEK is kek-"));
	assert_true(harness_log_contains(&p, "nothing was changed"));
	assert_false(harness_log_contains(&p, WRONG_KEK));

	/* From keys.kek_file. */
	f = fopen(path, "w");
	assert_non_null(f);
	fprintf(f, "%s\n", WRONG_KEK);
	fclose(f);
	assert_int_equal(chmod(path, 0600), 0);
	setenv("IDPD_KEK", "", 1);
	snprintf(kek_toml, sizeof(kek_toml), "[keys]\nkek_file = \"%s\"\n", path);
	assert_int_equal(harness_idpd_start(&p, "t_keys_wrong", NULL, config_with(kek_toml)), -1);
	assert_int_equal(p.exit_status, 1);
	assert_true(harness_log_contains(&p, "the KEK from keys.kek_file (/tmp/idpd-test-keys-"));

	/* A KEK file others can read is refused even with the right key in it. */
	f = fopen(path, "w");
	assert_non_null(f);
	fprintf(f, "%s\n", TEST_KEK);
	fclose(f);
	assert_int_equal(chmod(path, 0644), 0);
	assert_int_equal(harness_idpd_start(&p, "t_keys_wrong", NULL, config_with(kek_toml)), -1);
	assert_int_equal(p.exit_status, 1);
	assert_true(harness_log_contains(&p, "chmod 600"));

	/* No KEK at all. */
	assert_int_equal(harness_idpd_start(&p, "t_keys_wrong", NULL, config_with(NULL)), -1);
	assert_int_equal(p.exit_status, 1);
	assert_true(harness_log_contains(&p, "no key-encryption key"));

	/* Nothing was written by any of them. */
	table_fingerprint("t_keys_wrong", fp2);
	assert_string_equal(fp, fp2);
	assert_int_equal(db_int("t_keys_wrong", "SELECT count(*) FROM audit_events"), events);

	/* The right KEK, from the file this time, still opens everything. */
	assert_int_equal(chmod(path, 0600), 0);
	start(&p, "t_keys_wrong", kek_toml);
	jwks_after = jwks_text(&p);
	assert_string_equal(jwks_before, jwks_after);
	assert_int_equal(harness_idpd_stop(&p, SIGTERM, 10000), 0);
	setenv("IDPD_KEK", TEST_KEK, 1);
	unlink(path);
	free(jwks_before);
	free(jwks_after);
}

#define NEW_KEK "6e65772d6b656b2d616674657a2d726f746174696f6e2d6f662d6b656b732121"

/* Run idpd keys reseal with the config of p; its exit status, output in path. */
/* Whether the environment block of process pid (/proc/<pid>/environ) holds text. */
static bool
environ_holds(pid_t pid, const char *text)
{
	char path[64], buf[65536];
	size_t n, tlen = strlen(text);
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/environ", (int)pid);
	f = fopen(path, "rb");
	assert_non_null(f);
	n = fread(buf, 1, sizeof(buf), f);
	fclose(f);
	for (size_t i = 0; i + tlen <= n; i++)
		if (memcmp(buf + i, text, tlen) == 0)
			return true;
	return false;
}

static int
reseal(const struct idpd_proc *p, const char *path)
{
	const char *args[] = {"keys", "reseal", "--config", p->config, NULL};

	return harness_idpd_run(args, path);
}

/*
 * KEK rotation: with the new KEK as idpd's and the old one in
 * $IDPD_KEK_OLD, `idpd keys reseal` seals every live key again, audited,
 * in one step; a second run finds nothing to do; an old KEK that is not
 * the one that sealed the keys changes nothing.  Afterwards idpd starts
 * with the new KEK only, publishes the same keys and rotates under it.
 */
static void
kek_rotation_reseals_every_live_key(void **state)
{
	struct idpd_proc p;
	struct http_resp r;
	char fp[64], fp2[64], new_id[32], *jwks_before, *jwks_after;
	const char *out = "/tmp/idpd-test-keys-reseal.out";

	(void)state;
	assert_int_equal(harness_db_create("t_keys_reseal"), 0);
	start(&p, "t_keys_reseal", NULL);
	/* active, next and retiring: three live keys. */
	assert_int_equal(call("POST", &p, "/v1/keys/rotate", admin_key, NULL, &r), 200);
	harness_resp_free(&r);
	assert_int_equal(
	    db_int("t_keys_reseal", "SELECT count(*) FROM signing_keys WHERE state <> 'retired'"),
	    3);
	jwks_before = jwks_text(&p);
	table_fingerprint("t_keys_reseal", fp);

	/* Refusals first: none changes anything. */
	setenv("IDPD_KEK", NEW_KEK, 1);
	unsetenv("IDPD_KEK_OLD");
	assert_int_equal(reseal(&p, out), 1);
	assert_true(harness_file_contains(out, "IDPD_KEK_OLD or --old-kek-file"));
	setenv("IDPD_KEK_OLD", WRONG_KEK, 1);
	assert_int_equal(reseal(&p, out), 1);
	assert_true(harness_file_contains(out, "neither the old KEK"));
	assert_false(harness_file_contains(out, WRONG_KEK));
	assert_false(harness_file_contains(out, NEW_KEK));
	setenv("IDPD_KEK_OLD", NEW_KEK, 1);
	assert_int_equal(reseal(&p, out), 1);
	assert_true(harness_file_contains(out, "are the same"));
	table_fingerprint("t_keys_reseal", fp2);
	assert_string_equal(fp, fp2);

	/* Both sources of the old KEK at once. */
	{
		const char *args[] = {"keys",           "reseal",    "--config", p.config,
		                      "--old-kek-file", "/dev/null", NULL};

		setenv("IDPD_KEK_OLD", TEST_KEK, 1);
		assert_int_equal(harness_idpd_run(args, out), 1);
		assert_true(harness_file_contains(out, "not both"));
	}
	/* A key that does not open stops the run midway: no key changed, no event written. */
	{
		char blob[4096];

		db_text(
		    "t_keys_reseal",
		    "SELECT encode(private_sealed, 'hex') FROM signing_keys WHERE state = 'next'",
		    blob, sizeof(blob));
		assert_int_equal(
		    harness_sql(
		        "t_keys_reseal",
		        "UPDATE signing_keys SET private_sealed = set_byte(private_sealed, 19, "
		        "get_byte(private_sealed, 19) # 255) WHERE state = 'next'"),
		    0);
		table_fingerprint("t_keys_reseal", fp);
		setenv("IDPD_KEK_OLD", TEST_KEK, 1);
		assert_int_equal(reseal(&p, out), 1);
		assert_true(harness_file_contains(out, "was not resealed; nothing was changed"));
		table_fingerprint("t_keys_reseal", fp2);
		assert_string_equal(fp, fp2);
		assert_int_equal(db_int("t_keys_reseal", "SELECT count(*) FROM audit_events WHERE "
		                                         "type = 'key.resealed'"),
		                 0);
		{
			char sql[4300];

			snprintf(
			    sql, sizeof(sql),
			    "UPDATE signing_keys SET private_sealed = decode('%s', 'hex') WHERE "
			    "state = 'next'",
			    blob);
			assert_int_equal(harness_sql("t_keys_reseal", sql), 0);
		}
	}

	/* The real thing. */
	setenv("IDPD_KEK_OLD", TEST_KEK, 1);
	assert_int_equal(reseal(&p, out), 0);
	assert_true(harness_file_contains(out, "\"resealed\":3"));
	db_text("t_keys_reseal",
	        "SELECT DISTINCT kek_id FROM signing_keys WHERE state <> 'retired'", new_id,
	        sizeof(new_id));
	assert_true(harness_file_contains(out, new_id));
	assert_int_equal(db_int("t_keys_reseal",
	                        "SELECT count(*) FROM signing_keys WHERE state <> 'retired' "
	                        "AND kek_id <> (SELECT kek_id FROM signing_keys WHERE state = "
	                        "'active')"),
	                 0);
	assert_int_equal(db_int("t_keys_reseal",
	                        "SELECT count(*) FROM audit_events WHERE type = 'key.resealed' AND "
	                        "body LIKE '%\"from_kek_id\":\"kek-%' AND "
	                        "body LIKE '%\"name\":\"cli:%'"),
	                 3);
	/* Again: nothing left under the old KEK. */
	setenv("IDPD_KEK_OLD", TEST_KEK, 1);
	assert_int_equal(reseal(&p, out), 0);
	assert_true(harness_file_contains(out, "\"resealed\":0"));
	/* The running instance (old KEK) still serves: it keeps the key it opened. */
	assert_int_equal(call("GET", &p, "/readyz", NULL, NULL, &r), 200);
	harness_resp_free(&r);
	assert_int_equal(harness_idpd_stop(&p, SIGTERM, 10000), 0);

	/* The old KEK no longer starts idpd; the new one does, with the same keys. */
	setenv("IDPD_KEK", TEST_KEK, 1);
	assert_int_equal(harness_idpd_start(&p, "t_keys_reseal", NULL, config_with(NULL)), -1);
	assert_true(harness_log_contains(&p, "was sealed with key-encryption key kek-"));
	setenv("IDPD_KEK", NEW_KEK, 1);
	start(&p, "t_keys_reseal", NULL);
	/* Both KEKs were read, then wiped from what /proc shows of its environment. */
	assert_false(environ_holds(p.pid, NEW_KEK));
	assert_false(environ_holds(p.pid, TEST_KEK));
	jwks_after = jwks_text(&p);
	assert_string_equal(jwks_before, jwks_after);
	assert_int_equal(call("POST", &p, "/v1/keys/rotate", admin_key, NULL, &r), 200);
	harness_resp_free(&r);
	assert_int_equal(db_int("t_keys_reseal",
	                        "SELECT count(DISTINCT kek_id) FROM signing_keys WHERE state <> "
	                        "'retired'"),
	                 1);
	assert_int_equal(harness_idpd_stop(&p, SIGTERM, 10000), 0);
	setenv("IDPD_KEK", TEST_KEK, 1);
	unsetenv("IDPD_KEK_OLD");
	unlink(out);
	free(jwks_before);
	free(jwks_after);
}

/*
 * A row written behind idpd's back, as anyone who can write the table
 * could: state retiring, the writer's own public key, junk for the sealed
 * private half and the id of a KEK no instance holds.  It is neither
 * published nor trusted, so an identity credential forged with that key
 * does not authenticate the agent it names.
 */
static void
a_key_under_a_kek_no_instance_holds_is_not_trusted(void **state)
{
	struct world w;
	struct http_resp r;
	struct idp_jws_key *forger = NULL;
	char cred[4096], sql[4096], *jwk_text, *forged = NULL;
	json_t *claims, *jwk;

	(void)state;
	world_start(&w, "t_keys_forged_row", NULL);
	world_agent(&w, &(struct world_agent){.id = "victim",
	                                      .type = "helper",
	                                      .owner = "alice@example.com",
	                                      .caps = "[\"cloud:Describe*\"]"});
	world_credential(&w, "victim", cred, sizeof(cred));
	world_call(&w, "GET", "/v1/me", cred, NULL, &r);
	assert_int_equal(r.status, 200);
	harness_resp_free(&r);
	claims = world_verify(&w, cred, IDP_JWS_TYP_IDENTITY);

	assert_int_equal(idp_jws_key_generate(NULL, &forger, NULL), IDP_OK);
	jwk = idp_jws_key_public_jwk(forger);
	jwk_text = json_dumps(jwk, JSON_COMPACT);
	json_decref(jwk);
	snprintf(sql, sizeof(sql),
	         "INSERT INTO signing_keys (kid, state, public_jwk, private_sealed, kek_id, "
	         "created_at, retiring_at, retire_after, not_after) VALUES ('%s', 'retiring', "
	         "'%s', decode(repeat('5a', 64), 'hex'), 'kek-0123456789abcdef', now(), now(), "
	         "now() + interval '1 hour', now() + interval '90 days')",
	         idp_jws_key_kid(forger), jwk_text);
	free(jwk_text);
	assert_int_equal(harness_sql(w.db, sql), 0);
	/* A rotation reloads the keys before it answers, the forged row among them. */
	world_call(&w, "POST", "/v1/keys/rotate", w.k.admin, "{\"force\":true}", &r);
	assert_int_equal(r.status, 200);
	harness_resp_free(&r);

	world_call(&w, "GET", "/.well-known/jwks.json", NULL, NULL, &r);
	assert_int_equal(r.status, 200);
	assert_null(strstr(r.body, idp_jws_key_kid(forger)));
	harness_resp_free(&r);
	assert_int_equal(idp_jws_sign(forger, IDP_JWS_TYP_IDENTITY, claims, &forged, NULL, NULL),
	                 IDP_OK);
	world_call(&w, "GET", "/v1/me", forged, NULL, &r);
	assert_int_equal(r.status, 401);
	harness_resp_free(&r);
	/* The real credential, signed by a key idpd made, still works. */
	world_call(&w, "GET", "/v1/me", cred, NULL, &r);
	assert_int_equal(r.status, 200);
	harness_resp_free(&r);
	assert_true(harness_log_contains(&w.p, "a key-encryption key this instance does not hold"));
	free(forged);
	json_decref(claims);
	idp_jws_key_unref(forger);
	world_stop(&w);
}

/* The kid in a compact token's header, into kid. */
static void
token_kid(const char *tok, char kid[IDP_JWS_MAX_KID + 1])
{
	unsigned char *text = NULL;
	size_t len = 0;
	json_t *hdr;

	assert_int_equal(
	    idp_b64url_decode_alloc(tok, (size_t)(strchr(tok, '.') - tok), &text, &len), IDP_OK);
	hdr = json_loadb((const char *)text, len, 0, NULL);
	assert_non_null(hdr);
	snprintf(kid, IDP_JWS_MAX_KID + 1, "%s", json_string_value(json_object_get(hdr, "kid")));
	json_decref(hdr);
	free(text);
}

/*
 * A key activated on one instance reaches another by NOTIFY, a few
 * milliseconds later.  Until then a token it signed must not be called
 * inactive there: introspection reads the keys once (at most once a
 * second) for a kid it does not know.  Here the notification never comes
 * (the trigger is disabled), so only that read can find the key.  A kid
 * no instance made stays unknown.
 */
static void
introspection_reads_the_keys_again_for_an_unknown_kid(void **state)
{
	struct world w, peer;
	struct http_resp r;
	struct idp_jws_key *stranger = NULL;
	char task_id[80], kid[IDP_JWS_MAX_KID + 1], *human, *root, *forged = NULL;
	json_t *claims;

	(void)state;
	world_start(&w, "t_keys_unknown_kid", NULL);
	world_start_peer(&w, &peer);
	world_agent(&w, &(struct world_agent){.id = "planner",
	                                      .type = "planner",
	                                      .owner = "alice@example.com",
	                                      .caps = "[\"cloud:Describe*\"]"});
	assert_int_equal(
	    harness_sql(w.db, "ALTER TABLE signing_keys DISABLE TRIGGER signing_keys_notify"), 0);
	/* Twice: the first promotes the next key, which the peer already has. */
	for (int i = 0; i < 2; i++) {
		world_call(&w, "POST", "/v1/keys/rotate", w.k.admin, "{\"force\":true}", &r);
		assert_int_equal(r.status, 200);
		harness_resp_free(&r);
	}
	human = world_human_token("alice@example.com");
	world_task(&w, human, "planner", "[\"cloud:DescribeInstances\"]", task_id, &root);
	token_kid(root, kid);
	world_call(&peer, "GET", "/.well-known/jwks.json", NULL, NULL, &r);
	assert_null(strstr(r.body, kid));
	harness_resp_free(&r);
	assert_true(world_active(&peer, root, NULL));
	world_call(&peer, "GET", "/.well-known/jwks.json", NULL, NULL, &r);
	assert_non_null(strstr(r.body, kid));
	harness_resp_free(&r);

	/* The same claims under a key of nobody's: inactive, after a look of
	 * its own (past the second of the read above, whose "not found" could
	 * not tell for a token signed about when it began). */
	claims = world_verify(&w, root, TASK_TOKEN_TYP);
	assert_int_equal(idp_jws_key_generate(NULL, &stranger, NULL), IDP_OK);
	assert_int_equal(idp_jws_sign(stranger, TASK_TOKEN_TYP, claims, &forged, NULL, NULL),
	                 IDP_OK);
	sleep_ms(1100);
	assert_false(world_active(&peer, forged, NULL));
	assert_int_equal(
	    harness_sql(w.db, "ALTER TABLE signing_keys ENABLE TRIGGER signing_keys_notify"), 0);
	json_decref(claims);
	idp_jws_key_unref(stranger);
	free(forged);
	free(root);
	free(human);
	world_stop(&peer);
	world_stop(&w);
}

/* One introspection of many at once: *active set from the answer, *status the HTTP status. */
struct racer {
	struct world *w;
	const char *token;
	pthread_barrier_t *start;
	long status;
	bool active;
};

static void *
race_introspect(void *arg)
{
	struct racer *rc = arg;
	char url[256], auth[256], *form;
	const char *h[] = {auth, "Content-Type: application/x-www-form-urlencoded", NULL};
	struct http_resp r;

	snprintf(url, sizeof(url), "%s/introspect", rc->w->p.base);
	snprintf(auth, sizeof(auth), "Authorization: Bearer %s", rc->w->k.introspector);
	form = malloc(strlen(rc->token) + 8);
	if (form == NULL)
		return NULL;
	sprintf(form, "token=%s", rc->token);
	pthread_barrier_wait(rc->start);
	if (harness_http("POST", url, h, form, strlen(form), &r) == 0) {
		rc->status = r.status;
		rc->active = json_is_true(json_object_get(r.json, "active"));
		harness_resp_free(&r);
	}
	free(form);
	return NULL;
}

/*
 * Many introspections at once of a good token whose key the instance has
 * not loaded yet: one reads the keys, the others wait for that read
 * instead of calling the token inactive meanwhile.
 */
static void
concurrent_introspections_of_a_new_key_wait_for_one_read(void **state)
{
	enum { RACERS = 24 };
	struct world w, peer;
	struct http_resp r;
	char task_id[80], *human, *root;

	(void)state;
	world_start(&w, "t_keys_kid_race", NULL);
	world_start_peer(&w, &peer);
	world_agent(&w, &(struct world_agent){.id = "planner",
	                                      .type = "planner",
	                                      .owner = "alice@example.com",
	                                      .caps = "[\"cloud:Describe*\"]"});
	assert_int_equal(
	    harness_sql(w.db, "ALTER TABLE signing_keys DISABLE TRIGGER signing_keys_notify"), 0);
	human = world_human_token("alice@example.com");
	for (int round = 0; round < 3; round++) {
		struct racer racers[RACERS];
		pthread_t t[RACERS];
		pthread_barrier_t start;

		for (int i = 0; i < 2; i++) {
			world_call(&w, "POST", "/v1/keys/rotate", w.k.admin, "{\"force\":true}",
			           &r);
			assert_int_equal(r.status, 200);
			harness_resp_free(&r);
		}
		world_task(&w, human, "planner", "[\"cloud:DescribeInstances\"]", task_id, &root);
		sleep(2); /* past the one-read-a-second limit of the round before */
		assert_int_equal(pthread_barrier_init(&start, NULL, RACERS), 0);
		for (int i = 0; i < RACERS; i++) {
			racers[i] = (struct racer){&peer, root, &start, 0, false};
			assert_int_equal(pthread_create(&t[i], NULL, race_introspect, &racers[i]),
			                 0);
		}
		for (int i = 0; i < RACERS; i++)
			pthread_join(t[i], NULL);
		pthread_barrier_destroy(&start);
		for (int i = 0; i < RACERS; i++) {
			if (racers[i].status != 200 || !racers[i].active)
				fail_msg("round %d, racer %d: status %ld, active %d", round, i,
				         racers[i].status, racers[i].active);
		}
		free(root);
	}
	assert_int_equal(
	    harness_sql(w.db, "ALTER TABLE signing_keys ENABLE TRIGGER signing_keys_notify"), 0);
	free(human);
	world_stop(&peer);
	world_stop(&w);
}

/* ---- every verifier of idpd's own tokens, not only introspection ---- */

/* The agents of the tests below: a planner that delegates to an inventory agent. */
static void
kid_agents(struct world *w)
{
	world_agent(w, &(struct world_agent){.id = "planning-agent",
	                                     .type = "planner",
	                                     .owner = "alice@example.com",
	                                     .environment = "production",
	                                     .domains = "[\"cloud\"]",
	                                     .caps = "[\"cloud:Describe*\"]",
	                                     .delegate_to = "[\"cloud-inventory\"]"});
	world_agent(w, &(struct world_agent){.id = "inventory-agent",
	                                     .type = "cloud-inventory",
	                                     .owner = "alice@example.com",
	                                     .environment = "production",
	                                     .domains = "[\"cloud\"]",
	                                     .caps = "[\"cloud:Describe*\"]"});
}

/*
 * Two forced rotations on w while the keys' notifications are off: w signs
 * with a key its peers have not loaded.  Then past the one-read-a-second
 * limit of a peer's last read for an unknown kid.
 */
static void
activate_unseen_key(struct world *w)
{
	struct http_resp r;

	for (int i = 0; i < 2; i++) {
		world_call(w, "POST", "/v1/keys/rotate", w->k.admin, "{\"force\":true}", &r);
		assert_int_equal(r.status, 200);
		harness_resp_free(&r);
	}
	sleep_ms(1100);
}

/* Whether w serves the key that signed tok. */
static bool
serves_key_of(struct world *w, const char *tok)
{
	struct http_resp r;
	char kid[IDP_JWS_MAX_KID + 1];
	bool found;

	token_kid(tok, kid);
	world_call(w, "GET", "/.well-known/jwks.json", NULL, NULL, &r);
	assert_int_equal(r.status, 200);
	found = strstr(r.body, kid) != NULL;
	harness_resp_free(&r);
	return found;
}

/* POST /v1/token on w for the inventory agent (credential cred) on dtoken. */
static void
ask_token(struct world *w, const char *cred, const char *task_id, const char *dtoken,
          struct http_resp *r)
{
	static char body[16384];

	snprintf(body, sizeof(body),
	         "{\"audience\":\"%s\",\"scope\":\"cloud:DescribeInstances\",\"task_id\":\"%s\","
	         "\"delegation_token\":\"%s\",\"reason\":\"inventory\"}",
	         WORLD_AWS, task_id, dtoken);
	world_call(w, "POST", "/v1/token", cred, body, r);
	if (r->status != 200 && r->status != 503)
		fprintf(stderr, "POST /v1/token: %ld %s\n", r->status, r->body);
}

/* value, form-encoded, appended to form (len bytes) as name=value. */
static void
form_add(char *form, size_t len, const char *name, const char *value)
{
	size_t at = strlen(form);

	snprintf(form + at, len - at, "%s%s=", at > 0 ? "&" : "", name);
	at = strlen(form);
	for (const char *p = value; *p != '\0' && at + 4 < len; p++) {
		if ((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') ||
		    (*p >= '0' && *p <= '9') || *p == '-' || *p == '_' || *p == '.' || *p == '~')
			form[at++] = *p;
		else
			at += (size_t)snprintf(form + at, len - at, "%%%02X", (unsigned char)*p);
	}
	form[at] = '\0';
}

/* RFC 8693 token exchange on w: subject, a delegation token, by actor, a credential. */
static void
exchange(struct world *w, const char *subject, const char *actor, struct http_resp *r)
{
	static char form[16384];

	form[0] = '\0';
	form_add(form, sizeof(form), "grant_type",
	         "urn:ietf:params:oauth:grant-type:token-exchange");
	form_add(form, sizeof(form), "subject_token", subject);
	form_add(form, sizeof(form), "subject_token_type",
	         "urn:idpd:params:oauth:token-type:delegation");
	form_add(form, sizeof(form), "actor_token", actor);
	form_add(form, sizeof(form), "actor_token_type", "urn:ietf:params:oauth:token-type:jwt");
	form_add(form, sizeof(form), "audience", WORLD_AWS);
	form_add(form, sizeof(form), "scope", "cloud:DescribeInstances");
	world_form(w, "/oauth2/token", NULL, form, r);
	if (r->status != 200 && r->status != 503)
		fprintf(stderr, "POST /oauth2/token: %ld %s\n", r->status, r->body);
}

/* The jti of tok (of typ), as w verifies it, into jti. */
static void
jti_of(struct world *w, const char *tok, const char *typ, char jti[80])
{
	json_t *c = world_verify(w, tok, typ);

	snprintf(jti, 80, "%s", json_string_value(json_object_get(c, "jti")));
	json_decref(c);
}

/*
 * What introspection does for a key another instance activated a moment
 * ago (introspection_reads_the_keys_again_for_an_unknown_kid), every other
 * verifier of idpd's own tokens does too: GET /v1/me, POST /v1/token (the
 * identity credential, and the delegation token, whose check runs on the
 * I/O thread and hands the read to the handler pool), POST
 * /v1/delegations, POST /revoke (a delegation token and a credential: "nothing
 * to revoke" would have left them live) and POST /oauth2/token.  Each
 * step signs with a key the peer has never loaded, its notification never
 * sent (the trigger is disabled), so only the read for the kid can find it.
 */
static void
every_verifier_reads_the_keys_for_a_key_activated_elsewhere(void **state)
{
	struct world w, peer;
	struct http_resp r;
	char planner[4096], inventory[4096], fresh[4096], task_id[80], task2[80], jti[80];
	char sql[256], admin[128];
	char *human, *root, *inv, *tok, *root2;

	(void)state;
	world_start(&w, "t_keys_kid_everywhere", NULL);
	world_start_peer(&w, &peer);
	kid_agents(&w);
	world_credential(&w, "planning-agent", planner, sizeof(planner));
	world_credential(&w, "inventory-agent", inventory, sizeof(inventory));
	human = world_human_token("alice@example.com");
	world_task(&w, human, "planning-agent", "[\"cloud:DescribeInstances\"]", task_id, &root);
	inv = world_delegate(&w, planner, root, "inventory-agent", "cloud:DescribeInstances", NULL);
	/* Keys the peer knows: it answers, and has the agents cached. */
	ask_token(&peer, inventory, task_id, inv, &r);
	assert_int_equal(r.status, 200);
	harness_resp_free(&r);
	snprintf(admin, sizeof(admin), "Bearer %s", w.k.admin);
	assert_int_equal(
	    harness_sql(w.db, "ALTER TABLE signing_keys DISABLE TRIGGER signing_keys_notify"), 0);

	/* GET /v1/me. */
	activate_unseen_key(&w);
	world_credential(&w, "planning-agent", fresh, sizeof(fresh));
	assert_false(serves_key_of(&peer, fresh));
	world_call(&peer, "GET", "/v1/me", fresh, NULL, &r);
	assert_int_equal(r.status, 200);
	harness_resp_free(&r);
	assert_true(serves_key_of(&peer, fresh));

	/* POST /v1/token, the credential new. */
	activate_unseen_key(&w);
	world_credential(&w, "inventory-agent", fresh, sizeof(fresh));
	assert_false(serves_key_of(&peer, fresh));
	ask_token(&peer, fresh, task_id, inv, &r);
	assert_int_equal(r.status, 200);
	harness_resp_free(&r);

	/* POST /v1/token, the delegation token new. */
	activate_unseen_key(&w);
	tok = world_delegate(&w, planner, root, "inventory-agent", "cloud:DescribeInstances", NULL);
	assert_false(serves_key_of(&peer, tok));
	ask_token(&peer, inventory, task_id, tok, &r);
	assert_int_equal(r.status, 200);
	harness_resp_free(&r);
	free(tok);

	/* POST /v1/delegations, the delegator's token new. */
	activate_unseen_key(&w);
	world_task(&w, human, "planning-agent", "[\"cloud:DescribeInstances\"]", task2, &root2);
	assert_false(serves_key_of(&peer, root2));
	world_delegation(&peer, planner, root2, "inventory-agent", "cloud:DescribeInstances", NULL,
	                 NULL, &r);
	assert_int_equal(r.status, 201);
	harness_resp_free(&r);

	/* POST /revoke of a delegation token: revoked, not "nothing to revoke". */
	activate_unseen_key(&w);
	tok = world_delegate(&w, planner, root, "inventory-agent", "cloud:DescribeInstances", NULL);
	assert_false(serves_key_of(&peer, tok));
	jti_of(&w, tok, TASK_TOKEN_TYP, jti);
	assert_int_equal(world_revoke_as(&peer, admin, tok, NULL), 200);
	snprintf(sql, sizeof(sql),
	         "SELECT count(*) FROM delegation_tokens WHERE jti = '%s' AND revoked_at IS NOT "
	         "NULL",
	         jti);
	assert_int_equal(world_count(&w, sql), 1);
	free(tok);

	/* POST /revoke of an identity credential. */
	activate_unseen_key(&w);
	world_credential(&w, "inventory-agent", fresh, sizeof(fresh));
	assert_false(serves_key_of(&peer, fresh));
	jti_of(&w, fresh, IDP_JWS_TYP_IDENTITY, jti);
	assert_int_equal(world_revoke_as(&peer, admin, fresh, NULL), 200);
	snprintf(sql, sizeof(sql),
	         "SELECT count(*) FROM agent_credentials WHERE jti = '%s' AND revoked_at IS NOT "
	         "NULL",
	         jti);
	assert_int_equal(world_count(&w, sql), 1);

	/* POST /oauth2/token, the actor's credential new. */
	activate_unseen_key(&w);
	world_credential(&w, "inventory-agent", fresh, sizeof(fresh));
	assert_false(serves_key_of(&peer, fresh));
	exchange(&peer, inv, fresh, &r);
	assert_int_equal(r.status, 200);
	harness_resp_free(&r);

	assert_int_equal(
	    harness_sql(w.db, "ALTER TABLE signing_keys ENABLE TRIGGER signing_keys_notify"), 0);
	free(root2);
	free(inv);
	free(root);
	free(human);
	world_stop(&peer);
	world_stop(&w);
}

/*
 * tok's claims (of typ) signed by key, as a new token (free() it), its iat
 * moved age_s seconds back (0: kept; -1: no iat at all).
 */
static char *
resign(struct world *w, const char *tok, const char *typ, const struct idp_jws_key *key, long age_s)
{
	json_t *c = world_verify(w, tok, typ);
	char *out = NULL;

	if (age_s < 0)
		assert_int_equal(json_object_del(c, "iat"), 0);
	else if (age_s > 0)
		json_object_set_new(c, "iat",
		                    json_integer(json_integer_value(json_object_get(c, "iat")) -
		                                 (json_int_t)age_s));
	assert_int_equal(idp_jws_sign(key, typ, c, &out, NULL, NULL), IDP_OK);
	json_decref(c);
	return out;
}

/*
 * The read for an unknown kid fails (the keys' table cannot be read, the
 * listener still connected): idpd cannot tell whether another instance
 * activated that key, so every verifier answers 503, never "invalid".
 * Once the keys are readable again (and a second has passed), the same
 * tokens, signed with a key of nobody's, get each endpoint's usual answer
 * for an invalid token: the first after a read of its own, the others
 * within that read's second because their iat is an hour old (a key
 * removed long ago, which no read could have missed).
 */
static void
a_failed_read_for_an_unknown_kid_answers_503_everywhere(void **state)
{
	struct world w;
	struct http_resp r;
	struct idp_jws_key *stranger = NULL;
	char planner[4096], inventory[4096], task_id[80], admin[128], ra[16];
	char *human, *root, *inv, *f_cred, *f_root, *f_inv;

	(void)state;
	world_start(&w, "t_keys_kid_503", NULL);
	kid_agents(&w);
	world_credential(&w, "planning-agent", planner, sizeof(planner));
	world_credential(&w, "inventory-agent", inventory, sizeof(inventory));
	human = world_human_token("alice@example.com");
	world_task(&w, human, "planning-agent", "[\"cloud:DescribeInstances\"]", task_id, &root);
	inv = world_delegate(&w, planner, root, "inventory-agent", "cloud:DescribeInstances", NULL);
	snprintf(admin, sizeof(admin), "Bearer %s", w.k.admin);
	/* A key of nobody's, with a kid of the shape idpd makes (a thumbprint). */
	assert_int_equal(idp_jws_key_generate(NULL, &stranger, NULL), IDP_OK);
	f_cred = resign(&w, inventory, IDP_JWS_TYP_IDENTITY, stranger, 3600);
	f_root = resign(&w, root, TASK_TOKEN_TYP, stranger, 3600);
	f_inv = resign(&w, inv, TASK_TOKEN_TYP, stranger, 3600);

	assert_int_equal(harness_sql(w.db, "ALTER TABLE signing_keys RENAME TO signing_keys_away"),
	                 0);
	world_call(&w, "GET", "/v1/me", f_cred, NULL, &r);
	assert_int_equal(r.status, 503);
	/* Every 503 tells the client when to come back. */
	assert_true(harness_resp_header(&r, "Retry-After", ra, sizeof(ra)));
	assert_string_equal(ra, "1");
	harness_resp_free(&r);
	ask_token(&w, f_cred, task_id, inv, &r);
	assert_int_equal(r.status, 503);
	harness_resp_free(&r);
	ask_token(&w, inventory, task_id, f_inv, &r);
	assert_int_equal(r.status, 503);
	harness_resp_free(&r);
	world_delegation(&w, planner, f_root, "inventory-agent", "cloud:DescribeInstances", NULL,
	                 NULL, &r);
	assert_int_equal(r.status, 503);
	harness_resp_free(&r);
	assert_int_equal(world_revoke_as(&w, admin, f_inv, NULL), 503);
	assert_int_equal(world_revoke_as(&w, admin, f_cred, NULL), 503);
	exchange(&w, inv, f_cred, &r);
	assert_int_equal(r.status, 503);
	assert_true(harness_resp_header(&r, "Retry-After", ra, sizeof(ra)));
	harness_resp_free(&r);
	exchange(&w, f_inv, inventory, &r);
	assert_int_equal(r.status, 503);
	harness_resp_free(&r);

	/* Readable again: the kid is looked up, unknown, and the tokens invalid. */
	assert_int_equal(harness_sql(w.db, "ALTER TABLE signing_keys_away RENAME TO signing_keys"),
	                 0);
	sleep_ms(1100);
	world_call(&w, "GET", "/v1/me", f_cred, NULL, &r);
	assert_int_equal(r.status, 401);
	harness_resp_free(&r);
	ask_token(&w, inventory, task_id, f_inv, &r);
	assert_int_equal(r.status, 403);
	assert_string_equal(json_string_value(json_object_get(r.json, "reason")),
	                    "delegation_token_invalid");
	harness_resp_free(&r);
	world_delegation(&w, planner, f_root, "inventory-agent", "cloud:DescribeInstances", NULL,
	                 NULL, &r);
	assert_int_equal(r.status, 403);
	assert_string_equal(json_string_value(json_object_get(r.json, "reason")),
	                    "delegation_token_invalid");
	harness_resp_free(&r);
	assert_int_equal(world_revoke_as(&w, admin, f_inv, NULL), 200);
	/* The real tokens were never affected. */
	ask_token(&w, inventory, task_id, inv, &r);
	assert_int_equal(r.status, 200);
	harness_resp_free(&r);
	free(f_cred);
	free(f_root);
	free(f_inv);
	idp_jws_key_unref(stranger);
	free(inv);
	free(root);
	free(human);
	world_stop(&w);
}

/* ---- a read's second does not speak for keys activated after it began ---- */

static int64_t
test_mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/*
 * On peer, GET /v1/me with a credential re-signed by stranger (a made-up
 * kid of the shape idpd makes, as any client may send, no valid
 * credential needed): peer reads the keys for it, and for
 * KEYS_KID_RELOAD_MS that read answers every kid peer does not know.  The
 * 401 shows peer made the read then: within an earlier read's second this
 * recent token would get 503.
 */
static void
prime_kid_read(struct world *w, struct world *peer, const char *cred,
               const struct idp_jws_key *stranger)
{
	struct http_resp r;
	char *forged = resign(w, cred, IDP_JWS_TYP_IDENTITY, stranger, 0);

	world_call(peer, "GET", "/v1/me", forged, NULL, &r);
	assert_int_equal(r.status, 401);
	harness_resp_free(&r);
	free(forged);
}

/*
 * A rotation on w that makes a brand-new key active at once: its next key,
 * which every instance may have read, is retired first behind their backs
 * (the keys' notifications are off), so no read made before the rotation
 * can hold the key that signs after it.
 */
static void
rotate_to_a_brand_new_key(struct world *w)
{
	struct http_resp r;

	assert_int_equal(harness_sql(w->db, "UPDATE signing_keys SET state = 'retired', "
	                                    "retired_at = now(), private_sealed = NULL "
	                                    "WHERE state = 'next'"),
	                 0);
	world_call(w, "POST", "/v1/keys/rotate", w->k.admin, "{\"force\":true}", &r);
	assert_int_equal(r.status, 200);
	harness_resp_free(&r);
}

/* The access token of a POST /v1/token on w (free() it). */
static char *
access_token(struct world *w, const char *cred, const char *task_id, const char *dtoken)
{
	struct http_resp r;
	char *tok;

	ask_token(w, cred, task_id, dtoken, &r);
	assert_int_equal(r.status, 200);
	tok = strdup(json_string_value(json_object_get(r.json, "access_token")));
	assert_non_null(tok);
	harness_resp_free(&r);
	return tok;
}

/*
 * Any client can make the peer read the keys once a second (a token with a
 * made-up kid); for that second the read's "not found" answers every kid
 * the peer does not know.  It must not speak for a key activated after the
 * read began: a token under such a key gets 503 (idpd cannot know), never
 * "invalid", and above all /revoke must not answer 200 without revoking.
 * A second later the peer reads again and finds the key.  Within the
 * second a token with an hour-old iat (a key removed long ago) still gets
 * each endpoint's usual answer; one without an iat, or a recent one, 503.
 * Each step must land within the second after the priming read; a slow
 * machine that misses it tries again.
 */
static void
a_read_begun_before_a_key_was_activated_does_not_call_its_tokens_invalid(void **state)
{
	struct world w, peer;
	struct http_resp r;
	struct idp_jws_key *stranger = NULL;
	char planner[4096], inventory[4096], task_id[80], admin[128], jti[80], sql[256];
	char *human, *root, *inv, *access, *old_cred, *old_inv, *old_access, *new_access;
	char *no_iat, *tok = NULL;
	long me = 0, rev = 0, st_old = 0, st_new = 0, st_none = 0;
	bool old_active = true;
	int64_t t0, took = 0;

	(void)state;
	world_start(&w, "t_keys_kid_window", NULL);
	world_start_peer(&w, &peer);
	kid_agents(&w);
	world_credential(&w, "planning-agent", planner, sizeof(planner));
	world_credential(&w, "inventory-agent", inventory, sizeof(inventory));
	human = world_human_token("alice@example.com");
	world_task(&w, human, "planning-agent", "[\"cloud:DescribeInstances\"]", task_id, &root);
	inv = world_delegate(&w, planner, root, "inventory-agent", "cloud:DescribeInstances", NULL);
	access = access_token(&w, inventory, task_id, inv);
	snprintf(admin, sizeof(admin), "Bearer %s", w.k.admin);
	assert_int_equal(idp_jws_key_generate(NULL, &stranger, NULL), IDP_OK);
	old_cred = resign(&w, inventory, IDP_JWS_TYP_IDENTITY, stranger, 3600);
	old_inv = resign(&w, inv, TASK_TOKEN_TYP, stranger, 3600);
	old_access = resign(&w, access, IDP_JWS_TYP_ACCESS, stranger, 3600);
	new_access = resign(&w, access, IDP_JWS_TYP_ACCESS, stranger, 0);
	no_iat = resign(&w, access, IDP_JWS_TYP_ACCESS, stranger, -1);
	assert_int_equal(
	    harness_sql(w.db, "ALTER TABLE signing_keys DISABLE TRIGGER signing_keys_notify"), 0);

	/* Within a read's second: an old iat is told, a recent or no iat is not. */
	for (int attempt = 0;; attempt++) {
		sleep_ms(1100);
		t0 = test_mono_ms();
		prime_kid_read(&w, &peer, inventory, stranger);
		world_call(&peer, "GET", "/v1/me", old_cred, NULL, &r);
		me = r.status;
		harness_resp_free(&r);
		world_introspect(&peer, old_access, NULL, &r);
		st_old = r.status;
		old_active = json_is_true(json_object_get(r.json, "active"));
		harness_resp_free(&r);
		world_introspect(&peer, new_access, NULL, &r);
		st_new = r.status;
		harness_resp_free(&r);
		world_introspect(&peer, no_iat, NULL, &r);
		st_none = r.status;
		harness_resp_free(&r);
		rev = world_revoke_as(&peer, admin, old_inv, NULL);
		took = test_mono_ms() - t0;
		if (took < KEYS_KID_RELOAD_MS)
			break;
		if (attempt == 4)
			fail_msg("never within a second of the priming read (last: %lld ms)",
			         (long long)took);
	}
	assert_int_equal(me, 401);
	assert_int_equal(st_old, 200);
	assert_false(old_active);
	assert_int_equal(rev, 200);
	assert_int_equal(st_new, 503);
	assert_int_equal(st_none, 503);

	/* POST /revoke of a delegation token under a key activated after the read. */
	for (int attempt = 0;; attempt++) {
		free(tok);
		sleep_ms(1100);
		t0 = test_mono_ms();
		prime_kid_read(&w, &peer, inventory, stranger);
		rotate_to_a_brand_new_key(&w);
		tok = world_delegate(&w, planner, root, "inventory-agent",
		                     "cloud:DescribeInstances", NULL);
		rev = world_revoke_as(&peer, admin, tok, NULL);
		took = test_mono_ms() - t0;
		if (took < KEYS_KID_RELOAD_MS)
			break;
		if (attempt == 4)
			fail_msg("never within a second of the priming read (last: %lld ms)",
			         (long long)took);
	}
	assert_int_equal(rev, 503);
	jti_of(&w, tok, TASK_TOKEN_TYP, jti);
	snprintf(sql, sizeof(sql),
	         "SELECT count(*) FROM delegation_tokens WHERE jti = '%s' AND revoked_at IS NULL",
	         jti);
	assert_int_equal(world_count(&w, sql), 1);
	/* A second later the peer reads the keys itself: revoked. */
	sleep_ms(1100);
	assert_int_equal(world_revoke_as(&peer, admin, tok, NULL), 200);
	snprintf(sql, sizeof(sql),
	         "SELECT count(*) FROM delegation_tokens WHERE jti = '%s' AND revoked_at IS NOT "
	         "NULL",
	         jti);
	assert_int_equal(world_count(&w, sql), 1);
	free(tok);
	tok = NULL;

	/* POST /introspect of an access token under a key activated after the read. */
	for (int attempt = 0;; attempt++) {
		free(tok);
		sleep_ms(1100);
		t0 = test_mono_ms();
		prime_kid_read(&w, &peer, inventory, stranger);
		rotate_to_a_brand_new_key(&w);
		tok = access_token(&w, inventory, task_id, inv);
		world_introspect(&peer, tok, NULL, &r);
		st_new = r.status;
		harness_resp_free(&r);
		took = test_mono_ms() - t0;
		if (took < KEYS_KID_RELOAD_MS)
			break;
		if (attempt == 4)
			fail_msg("never within a second of the priming read (last: %lld ms)",
			         (long long)took);
	}
	assert_int_equal(st_new, 503);
	sleep_ms(1100);
	assert_true(world_active(&peer, tok, NULL));

	assert_int_equal(
	    harness_sql(w.db, "ALTER TABLE signing_keys ENABLE TRIGGER signing_keys_notify"), 0);
	free(tok);
	free(no_iat);
	free(new_access);
	free(old_access);
	free(old_inv);
	free(old_cred);
	idp_jws_key_unref(stranger);
	free(access);
	free(inv);
	free(root);
	free(human);
	world_stop(&peer);
	world_stop(&w);
}

static void
rotation_and_listing_require_the_right_roles(void **state)
{
	struct idpd_proc p;
	struct http_resp r;
	char fp[64], fp2[64];

	(void)state;
	assert_int_equal(harness_db_create("t_keys_roles"), 0);
	start(&p, "t_keys_roles", NULL);
	table_fingerprint("t_keys_roles", fp);

	assert_int_equal(call("POST", &p, "/v1/keys/rotate", NULL, NULL, &r), 401);
	harness_resp_free(&r);
	assert_int_equal(call("POST", &p, "/v1/keys/rotate", "idpk_not-a-key", NULL, &r), 401);
	harness_resp_free(&r);
	assert_int_equal(call("POST", &p, "/v1/keys/rotate", auditor_key, NULL, &r), 403);
	harness_resp_free(&r);
	assert_int_equal(call("POST", &p, "/v1/keys/rotate", maint_key, NULL, &r), 403);
	harness_resp_free(&r);
	/* Bad bodies from an admin change nothing either. */
	assert_int_equal(call("POST", &p, "/v1/keys/rotate", admin_key, "{\"reason\":5}", &r), 422);
	harness_resp_free(&r);
	assert_int_equal(call("POST", &p, "/v1/keys/rotate", admin_key, "{\"kid\":\"mine\"}", &r),
	                 422);
	harness_resp_free(&r);
	assert_int_equal(call("POST", &p, "/v1/keys/rotate", admin_key, "[1,2]", &r), 400);
	harness_resp_free(&r);
	table_fingerprint("t_keys_roles", fp2);
	assert_string_equal(fp, fp2);

	assert_int_equal(call("GET", &p, "/v1/keys", NULL, NULL, &r), 401);
	harness_resp_free(&r);
	assert_int_equal(call("GET", &p, "/v1/keys", maint_key, NULL, &r), 403);
	harness_resp_free(&r);
	assert_int_equal(call("GET", &p, "/v1/keys", auditor_key, NULL, &r), 200);
	assert_int_equal(json_array_size(json_object_get(r.json, "keys")), 2);
	assert_null(strstr(r.body, "sealed"));
	assert_null(strstr(r.body, "\"d\""));
	harness_resp_free(&r);

	assert_int_equal(call("POST", &p, "/v1/keys/rotate", admin_key, NULL, &r), 200);
	harness_resp_free(&r);
	assert_int_equal(call("GET", &p, "/v1/keys", admin_key, NULL, &r), 200);
	assert_int_equal(json_array_size(json_object_get(r.json, "keys")), 3);
	harness_resp_free(&r);
	/* The JWKS needs no credentials. */
	assert_int_equal(call("GET", &p, "/.well-known/jwks.json", NULL, NULL, &r), 200);
	harness_resp_free(&r);
	assert_int_equal(harness_idpd_stop(&p, SIGTERM, 10000), 0);
}

/* The "code" member of a problem or OAuth error body (or "error"), into out. */
static void
body_code(const struct http_resp *r, const char *member, char *out, size_t len)
{
	json_t *b = json_loads(r->body != NULL ? r->body : "", 0, NULL);

	snprintf(out, len, "%s",
	         b != NULL && json_is_string(json_object_get(b, member))
	             ? json_string_value(json_object_get(b, member))
	             : "");
	json_decref(b);
}

/*
 * Every token idpd signs is signed with the same key; only its typ says
 * what it is.  Each verifier pins the typ it accepts: a delegation or
 * access token is no identity credential, an identity credential or access
 * token no delegation token, and an exchange takes each in its own place
 * only.  Nothing is issued for any of them.
 */
static void
a_token_of_another_kind_is_refused_everywhere(void **state)
{
	struct world w;
	struct http_resp r;
	char planner[4096], inventory[4096], task_id[80], code[64], sql[256];
	char *human, *root, *inv, *acc;
	json_t *b;

	(void)state;
	world_start(&w, "t_keys_wrong_typ", NULL);
	kid_agents(&w);
	world_credential(&w, "planning-agent", planner, sizeof(planner));
	world_credential(&w, "inventory-agent", inventory, sizeof(inventory));
	human = world_human_token("alice@example.com");
	world_task(&w, human, "planning-agent", "[\"cloud:DescribeInstances\"]", task_id, &root);
	inv = world_delegate(&w, planner, root, "inventory-agent", "cloud:DescribeInstances", NULL);
	ask_token(&w, inventory, task_id, inv, &r);
	assert_int_equal(r.status, 200);
	b = json_loads(r.body, 0, NULL);
	assert_non_null(b);
	acc = strdup(json_string_value(json_object_get(b, "access_token")));
	json_decref(b);
	harness_resp_free(&r);
	snprintf(sql, sizeof(sql), "SELECT count(*) FROM audit_events WHERE type = 'token.issued'");
	assert_int_equal(world_count(&w, sql), 1);

	/* As the agent's identity credential. */
	const char *not_credentials[] = {root, inv, acc};
	for (size_t i = 0; i < IDP_ARRAY_LEN(not_credentials); i++) {
		world_call(&w, "GET", "/v1/me", not_credentials[i], NULL, &r);
		assert_int_equal(r.status, 401);
		harness_resp_free(&r);
		ask_token(&w, not_credentials[i], task_id, inv, &r);
		assert_int_equal(r.status, 401);
		harness_resp_free(&r);
		world_delegation(&w, not_credentials[i], root, "inventory-agent",
		                 "cloud:DescribeInstances", NULL, NULL, &r);
		assert_int_equal(r.status, 401);
		harness_resp_free(&r);
		/* RFC 8693 2.2.2: either token invalid is an invalid_request. */
		exchange(&w, inv, not_credentials[i], &r);
		assert_int_equal(r.status, 400);
		body_code(&r, "error", code, sizeof(code));
		assert_string_equal(code, "invalid_request");
		harness_resp_free(&r);
	}
	/* As a delegation token. */
	const char *not_delegations[] = {inventory, acc};
	for (size_t i = 0; i < IDP_ARRAY_LEN(not_delegations); i++) {
		ask_token(&w, inventory, task_id, not_delegations[i], &r);
		assert_int_equal(r.status, 403);
		body_code(&r, "code", code, sizeof(code));
		assert_string_equal(code, "delegation_token_invalid");
		harness_resp_free(&r);
		world_delegation(&w, planner, not_delegations[i], "inventory-agent",
		                 "cloud:DescribeInstances", NULL, NULL, &r);
		assert_int_equal(r.status, 403);
		body_code(&r, "code", code, sizeof(code));
		assert_string_equal(code, "delegation_token_invalid");
		harness_resp_free(&r);
		exchange(&w, not_delegations[i], inventory, &r);
		assert_int_equal(r.status, 400);
		body_code(&r, "error", code, sizeof(code));
		assert_string_equal(code, "invalid_request");
		body_code(&r, "idpd_code", code, sizeof(code));
		assert_string_equal(code, "delegation_token_invalid");
		harness_resp_free(&r);
	}
	/* Nothing more was issued, and the right tokens still work. */
	assert_int_equal(world_count(&w, sql), 1);
	assert_int_equal(world_count(&w, "SELECT count(*) FROM delegation_tokens"), 2);
	ask_token(&w, inventory, task_id, inv, &r);
	assert_int_equal(r.status, 200);
	harness_resp_free(&r);
	free(acc);
	free(inv);
	free(root);
	free(human);
	world_stop(&w);
}

/*
 * The auth.failed events with this endpoint and a reason among reasons (a
 * SQL list of literals), once the queue has written them: they are queued
 * without waiting, so the count is read until it is above zero and the
 * same twice (5 s at most).
 */
static long
refusals(struct world *w, const char *endpoint, const char *reasons)
{
	char sql[512];
	long n = -1, prev;

	snprintf(sql, sizeof(sql),
	         "SELECT count(*) FROM audit_events WHERE type = 'auth.failed' AND "
	         "body::jsonb->'detail'->>'endpoint' = '%s' AND "
	         "body::jsonb->'detail'->>'reason' IN (%s)",
	         endpoint, reasons);
	for (int i = 0; i < 25; i++) {
		prev = n;
		sleep_ms(200);
		n = world_count(w, sql);
		if (n > 0 && n == prev)
			break;
	}
	return n;
}

/*
 * A refused credential is a security event: a guessed API key, a forged
 * token, a suspended agent's credential replayed.  Each is recorded as
 * auth.failed with the endpoint and a reason; the credential never is.  A
 * request without any credential (a probe) records nothing.
 */
static void
every_refused_credential_is_audited(void **state)
{
	struct world w;
	struct http_resp r;
	struct idp_jws_key *stranger = NULL;
	char inventory[4096], task_id[80], body[256];
	char *human, *root, *forged;
	long before;

	(void)state;
	world_start(&w, "t_keys_refusals", NULL);
	kid_agents(&w);
	world_credential(&w, "inventory-agent", inventory, sizeof(inventory));
	human = world_human_token("alice@example.com");
	world_task(&w, human, "planning-agent", "[\"cloud:DescribeInstances\"]", task_id, &root);
	assert_int_equal(idp_jws_key_generate(NULL, &stranger, NULL), IDP_OK);
	forged = resign(&w, inventory, IDP_JWS_TYP_IDENTITY, stranger, 3600);

	/* Nothing sent: nothing recorded. */
	before = world_count(&w, "SELECT count(*) FROM audit_events WHERE type = 'auth.failed'");
	world_call(&w, "GET", "/v1/agents", NULL, NULL, &r);
	assert_int_equal(r.status, 401);
	harness_resp_free(&r);
	world_call(&w, "GET", "/v1/me", NULL, NULL, &r);
	assert_int_equal(r.status, 401);
	harness_resp_free(&r);
	sleep_ms(300);
	assert_int_equal(
	    world_count(&w, "SELECT count(*) FROM audit_events WHERE type = 'auth.failed'"),
	    before);

	/* A guessed API key. */
	world_call(&w, "GET", "/v1/agents", "idpk_guessed", NULL, &r);
	assert_int_equal(r.status, 401);
	harness_resp_free(&r);
	assert_int_equal(refusals(&w, "/v1/agents", "'unknown_key'"), 1);
	/* A forged credential, on /v1/me and on /v1/token. */
	world_call(&w, "GET", "/v1/me", forged, NULL, &r);
	assert_int_equal(r.status, 401);
	harness_resp_free(&r);
	ask_token(&w, forged, task_id, root, &r);
	assert_int_equal(r.status, 401);
	harness_resp_free(&r);
	assert_int_equal(refusals(&w, "/v1/me", "'kid_unknown'"), 1);
	assert_int_equal(refusals(&w, "/v1/token", "'kid_unknown'"), 1);
	/* A suspended agent's credential, replayed. */
	snprintf(body, sizeof(body), "{\"reason\":\"compromised\"}");
	world_call(&w, "POST", "/v1/agents/inventory-agent/suspend", w.k.admin, body, &r);
	assert_int_equal(r.status, 200);
	harness_resp_free(&r);
	sleep_ms(200);
	world_call(&w, "GET", "/v1/me", inventory, NULL, &r);
	assert_int_equal(r.status, 401);
	harness_resp_free(&r);
	assert_int_equal(refusals(&w, "/v1/me", "'agent_revoked', 'agent_suspended'"), 1);
	/* A token no IdP issued, where a human is expected. */
	world_call(&w, "POST", "/v1/tasks", "not-a-jwt",
	           "{\"root_agent\":\"planning-agent\",\"scope\":[\"cloud:DescribeInstances\"]}",
	           &r);
	assert_int_equal(r.status, 401);
	harness_resp_free(&r);
	/* Queued without waiting: poll for it. */
	{
		static const char tasks_sql[] =
		    "SELECT count(*) FROM audit_events WHERE type = 'auth.failed' AND "
		    "body::jsonb->'detail'->>'endpoint' = '/v1/tasks'";

		for (int i = 0; i < 100 && world_count(&w, tasks_sql) == 0; i++)
			sleep_ms(50);
		assert_int_equal(world_count(&w, tasks_sql), 1);
	}
	/* The credentials themselves are in no event. */
	assert_int_equal(world_count(&w, "SELECT count(*) FROM audit_events WHERE "
	                                 "body LIKE '%idpk_guessed%' OR body LIKE '%not-a-jwt%'"),
	                 0);
	idp_jws_key_unref(stranger);
	free(forged);
	free(root);
	free(human);
	world_stop(&w);
}

/*
 * Anyone can send bad credentials: their auth.failed events are rate
 * limited (20 a second, bursts of 50), and the next event recorded counts
 * those left out, so the log grows boundedly and still tells the flood's
 * size: recorded events plus the counts they carry are every refusal.
 */
static void
a_flood_of_bad_credentials_is_recorded_at_a_bounded_rate(void **state)
{
	struct world w;
	struct http_resp r;
	long recorded, carried;
	const int sent = 150;

	(void)state;
	world_start(&w, "t_keys_refusal_flood", NULL);
	for (int i = 0; i < sent; i++) {
		world_call(&w, "GET", "/v1/agents", "idpk_flood", NULL, &r);
		assert_int_equal(r.status, 401);
		harness_resp_free(&r);
	}
	recorded = refusals(&w, "/v1/agents", "'unknown_key'");
	assert_true(recorded >= 50);
	assert_true(recorded < sent);
	/* After a pause, the next one is recorded with the count left out. */
	sleep_ms(1100);
	world_call(&w, "GET", "/v1/agents", "idpk_flood", NULL, &r);
	assert_int_equal(r.status, 401);
	harness_resp_free(&r);
	for (int i = 0; i < 50 && refusals(&w, "/v1/agents", "'unknown_key'") < recorded + 1; i++)
		;
	assert_int_equal(refusals(&w, "/v1/agents", "'unknown_key'"), recorded + 1);
	carried =
	    world_count(&w, "SELECT coalesce(sum((body::jsonb->'detail'->>'suppressed')::int), "
	                    "0) FROM audit_events WHERE type = 'auth.failed'");
	assert_int_equal(recorded + 1 + carried, sent + 1);
	world_call(&w, "GET", "/metrics", NULL, NULL, &r);
	assert_int_equal(r.status, 200);
	assert_non_null(strstr(r.body, "idpd_audit_refusals_total{state=\"suppressed\"}"));
	harness_resp_free(&r);
	world_stop(&w);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(first_start_generates_a_key_and_jwks_serves_it),
	    cmocka_unit_test(rotation_keeps_old_tokens_verifiable_and_new_tokens_carry_the_new_kid),
	    cmocka_unit_test(scheduled_rotation_runs_in_the_cleanup_job_when_due),
	    cmocka_unit_test(two_instances_start_together_and_agree_on_keys_after_a_rotation),
	    cmocka_unit_test(next_key_must_be_published_for_jwks_max_age),
	    cmocka_unit_test(jwks_is_not_cached_while_keys_may_be_missing),
	    cmocka_unit_test(a_retirement_reaches_an_instance_whose_notifications_are_lost),
	    cmocka_unit_test(a_compromised_key_is_unpublished_at_once),
	    cmocka_unit_test(cli_rotation_is_followed_by_a_running_instance),
	    cmocka_unit_test(wrong_kek_refuses_to_start_and_changes_nothing),
	    cmocka_unit_test(kek_rotation_reseals_every_live_key),
	    cmocka_unit_test(a_key_under_a_kek_no_instance_holds_is_not_trusted),
	    cmocka_unit_test(introspection_reads_the_keys_again_for_an_unknown_kid),
	    cmocka_unit_test(concurrent_introspections_of_a_new_key_wait_for_one_read),
	    cmocka_unit_test(every_verifier_reads_the_keys_for_a_key_activated_elsewhere),
	    cmocka_unit_test(a_failed_read_for_an_unknown_kid_answers_503_everywhere),
	    cmocka_unit_test(
	        a_read_begun_before_a_key_was_activated_does_not_call_its_tokens_invalid),
	    cmocka_unit_test(rotation_and_listing_require_the_right_roles),
	    cmocka_unit_test(a_token_of_another_kind_is_refused_everywhere),
	    cmocka_unit_test(every_refused_credential_is_audited),
	    cmocka_unit_test(a_flood_of_bad_credentials_is_recorded_at_a_bounded_rate),
	};

	/* Every idpd this test starts gets this KEK unless a test says otherwise. */
	setenv("IDPD_KEK", TEST_KEK, 1);
	return cmocka_run_group_tests(tests, NULL, world_teardown);
}
