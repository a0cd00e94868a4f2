/*
 * Unit tests for a reload's two phases (src/app.c and the staged reload
 * hooks of human_auth, attestation and the policy service): the check
 * builds each component's new state once, from the JWKS bytes the
 * configuration loader read and hashed and from the policy files as they
 * were then, and the apply makes exactly that state live.  A file rewritten
 * after the load or between the phases never goes live unchecked, nor
 * without its hash in the config.reloaded event.
 *
 * The policy service audits its reload (policy.reloaded): the audit writer
 * here points at a port where nothing listens and is asynchronous, so an
 * event is taken once queued.
 */
#include <setjmp.h>
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

#include "idpd/app.h"
#include "idpd/attest.h"
#include "idpd/audit_writer.h"
#include "idpd/clock.h"
#include "idpd/config.h"
#include "idpd/human_auth.h"
#include "idpd/jws.h"
#include "idpd/policy.h"
#include "idpd/policy_service.h"
#include "../../src/registry/attest_int.h"

/* human_auth.c's static functions, visible in test builds. */
struct human_verifier *verifier_current(void);
void verifier_unref(struct human_verifier *v);

static char dir[] = "/tmp/test_reload_XXXXXX";
static char config_path[256], idp_jwks[256], att_jwks[256], policy_dir[256], policy_file[256];

static void
write_file(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");

	assert_non_null(f);
	assert_true(fputs(text, f) >= 0);
	assert_int_equal(fclose(f), 0);
}

/* A JWKS file holding one new key named kid; the key in *key when asked for. */
static char *
write_jwks(const char *path, const char *kid, struct idp_jws_key **key)
{
	struct idp_jws_key *k = NULL;
	json_t *doc;
	char *text;

	assert_int_equal(idp_jws_key_generate(kid, &k, NULL), IDP_OK);
	doc = json_pack("{s:[o]}", "keys", idp_jws_key_public_jwk(k));
	text = json_dumps(doc, JSON_COMPACT);
	json_decref(doc);
	assert_non_null(text);
	write_file(path, text);
	if (key != NULL)
		*key = k;
	else
		idp_jws_key_unref(k);
	return text;
}

/* The policy directory holds one rule, whose id is id. */
static void
write_policy(const char *id)
{
	char text[256];

	snprintf(text, sizeof(text), "@id(\"%s\")\n@reason(\"test\")\nallow when { true };\n", id);
	write_file(policy_file, text);
}

/* Write the JWKS files (kids "<name>-idp" and "<name>-att") and the policy (rule name). */
static void
write_generation(const char *name, struct idp_jws_key **idp_key, char **idp_text)
{
	char kid[64];
	char *t;

	snprintf(kid, sizeof(kid), "%s-idp", name);
	t = write_jwks(idp_jwks, kid, idp_key);
	if (idp_text != NULL)
		*idp_text = t;
	else
		free(t);
	snprintf(kid, sizeof(kid), "%s-att", name);
	free(write_jwks(att_jwks, kid, NULL));
	write_policy(name);
}

static void
hex_sha256(const char *text, char out[65])
{
	uint8_t h[IDP_SHA256_LEN];

	assert_int_equal(idp_sha256(text, strlen(text), NULL, 0, h), IDP_OK);
	for (size_t i = 0; i < sizeof(h); i++)
		snprintf(out + 2 * i, 3, "%02x", h[i]);
}

static struct idpd_config *
load(void)
{
	struct idpd_config *cfg = NULL;
	struct idp_diag d;

	idp_diag_init(&d);
	if (idpd_config_load(config_path, &cfg, &d) != IDP_OK)
		fail_msg("%s", idp_diag_str(&d));
	return cfg;
}

/* Whether the human verifier in force takes a token signed by key. */
static bool
idp_takes(const struct idp_jws_key *key)
{
	struct human_verifier *v = verifier_current();
	json_t *c = json_pack("{s:s,s:s,s:I,s:s,s:b}", "iss", "https://sso.example.com", "aud",
	                      "idpd", "exp", (json_int_t)time(NULL) + 600, "email", "a@example.com",
	                      "email_verified", 1);
	struct human_principal p;
	const char *why = NULL;
	char *tok = NULL;
	int rc;

	assert_non_null(v);
	assert_int_equal(idp_jws_sign(key, NULL, c, &tok, NULL, NULL), IDP_OK);
	json_decref(c);
	rc = human_token_verify(v, tok, strlen(tok), idp_clock_system(), &p, &why);
	free(tok);
	verifier_unref(v);
	return rc == IDP_OK;
}

/* Whether the attestor in force holds a key named kid. */
static bool
attestor_holds(const char *kid)
{
	struct attest_conf *c = attest_conf_current();
	bool held;

	assert_non_null(c);
	assert_int_equal(c->n_attestors, 1);
	held = idp_jws_keyset_find(c->attestors[0].keys, kid) != NULL;
	attest_conf_unref(c);
	return held;
}

/* Whether the policy set in force has a rule with this id. */
static bool
policy_has(const char *id)
{
	struct policy_set *set = policy_engine_acquire(policy_service_engine());
	bool has;

	assert_non_null(set);
	has = policy_set_find(set, id) != NULL;
	policy_set_unref(set);
	return has;
}

static struct idpd_app app;

static int
setup(void **state)
{
	struct audit_writer_opts o = {0};
	struct idp_diag d;
	char text[2048];

	(void)state;
	assert_non_null(mkdtemp(dir));
	snprintf(config_path, sizeof(config_path), "%s/idpd.toml", dir);
	snprintf(idp_jwks, sizeof(idp_jwks), "%s/idp.jwks", dir);
	snprintf(att_jwks, sizeof(att_jwks), "%s/att.jwks", dir);
	snprintf(policy_dir, sizeof(policy_dir), "%s/policies", dir);
	snprintf(policy_file, sizeof(policy_file), "%s/policies/test.policy", dir);
	assert_int_equal(mkdir(policy_dir, 0700), 0);
	snprintf(text, sizeof(text),
	         "[policy]\ndir = \"%s\"\n"
	         "[[idp]]\nname = \"corp\"\nissuer = \"https://sso.example.com\"\n"
	         "audience = \"idpd\"\njwks_file = \"%s\"\n"
	         "[[attestors]]\nname = \"k8s\"\nissuer = \"https://k8s.example.com\"\n"
	         "audience = \"idpd\"\njwks_file = \"%s\"\n"
	         "selectors = \"k8s:ns=kubernetes.io/namespace\"\n",
	         policy_dir, idp_jwks, att_jwks);
	write_file(config_path, text);
	write_generation("first", NULL, NULL);

	o.url = "postgresql://postgres@127.0.0.1:1/none?connect_timeout=1";
	o.instance_id = "reload-test";
	o.queue_max = 1024;
	o.batch_max = 16;
	o.sync = false;
	o.timeout_ms = 1000;
	idp_diag_init(&d);
	if (audit_writer_start(&o, &d) != IDP_OK)
		fail_msg("audit_writer_start: %s", idp_diag_str(&d));

	memset(&app, 0, sizeof(app));
	app.cfg = load();
	idp_diag_init(&d);
	if (human_auth_init(&app, &d) != IDP_OK || attest_init(&app, &d) != IDP_OK ||
	    policy_service_start(&app, &d) != IDP_OK)
		fail_msg("%s", idp_diag_str(&d));
	assert_true(attestor_holds("first-att"));
	assert_true(policy_has("first"));
	return 0;
}

static int
teardown(void **state)
{
	char path[300];

	(void)state;
	policy_service_stop();
	attest_shutdown();
	human_auth_shutdown();
	(void)audit_writer_stop(0);
	idpd_config_free(app.cfg);
	unlink(policy_file);
	rmdir(policy_dir);
	unlink(idp_jwks);
	unlink(att_jwks);
	unlink(config_path);
	snprintf(path, sizeof(path), "%s", dir);
	rmdir(path);
	return 0;
}

/*
 * The files are rewritten after the configuration is loaded and again
 * between the check and the apply: what goes live is what the load read
 * (the JWKS files, whose hashes config.reloaded names) and what the check
 * compiled (the policy files), never the later versions.
 */
static void
a_reload_applies_what_its_load_read_and_its_check_built(void **state)
{
	struct idp_jws_key *loaded_key = NULL, *checked_key = NULL, *late_key = NULL;
	struct idpd_config *next;
	struct idp_diag d;
	char *loaded_text = NULL, sum[65];

	(void)state;
	write_generation("loaded", &loaded_key, &loaded_text);
	next = load();
	hex_sha256(loaded_text, sum);
	assert_string_equal(next->idps[0].jwks_sha256, sum);

	write_generation("checked", &checked_key, NULL);
	idp_diag_init(&d);
	if (app_run_reload_checks(&app, next, &d) != 0)
		fail_msg("%s", idp_diag_str(&d));

	write_generation("late", &late_key, NULL);
	if (app_run_reload_hooks(&app, next, &d) != 0)
		fail_msg("%s", idp_diag_str(&d));

	assert_true(idp_takes(loaded_key));
	assert_false(idp_takes(checked_key));
	assert_false(idp_takes(late_key));
	assert_true(attestor_holds("loaded-att"));
	assert_false(attestor_holds("checked-att"));
	assert_false(attestor_holds("late-att"));
	assert_true(policy_has("checked"));
	assert_false(policy_has("late"));

	idpd_config_free(app.cfg);
	app.cfg = next;
	free(loaded_text);
	idp_jws_key_unref(loaded_key);
	idp_jws_key_unref(checked_key);
	idp_jws_key_unref(late_key);
}

/* A reload whose check fails commits nothing, not even what other checks staged. */
static void
a_reload_whose_check_fails_changes_nothing(void **state)
{
	struct idp_jws_key *key = NULL;
	struct idpd_config *next;
	struct idp_diag d;

	(void)state;
	write_generation("refused", &key, NULL);
	/* The policy does not compile: the check stops there. */
	write_file(policy_file, "@id(\"broken\")\nallow when {\n");
	next = load();
	idp_diag_init(&d);
	assert_int_not_equal(app_run_reload_checks(&app, next, &d), 0);
	/* Were anything still staged, this apply would make it live. */
	write_policy("refused");
	assert_int_equal(app_run_reload_hooks(&app, next, &d), 3);
	assert_false(idp_takes(key));
	assert_true(attestor_holds("loaded-att"));
	assert_true(policy_has("checked"));
	idpd_config_free(next);
	idp_jws_key_unref(key);
}

/*
 * A policy set installed by the API between a SIGHUP's check and its apply
 * was read after the check: the apply leaves it in force.
 */
static void
a_policy_set_reloaded_between_the_phases_stays(void **state)
{
	struct policy_set *set = NULL;
	struct idpd_config *next;
	struct idp_diag d;

	(void)state;
	write_generation("sighup", NULL, NULL);
	next = load();
	idp_diag_init(&d);
	if (app_run_reload_checks(&app, next, &d) != 0)
		fail_msg("%s", idp_diag_str(&d));
	write_policy("api");
	assert_int_equal(policy_service_reload("tester", NULL, &d, &set), IDP_OK);
	policy_set_unref(set);
	if (app_run_reload_hooks(&app, next, &d) != 0)
		fail_msg("%s", idp_diag_str(&d));
	assert_true(policy_has("api"));
	assert_false(policy_has("sighup"));
	assert_true(attestor_holds("sighup-att"));
	idpd_config_free(app.cfg);
	app.cfg = next;
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(a_reload_applies_what_its_load_read_and_its_check_built),
	    cmocka_unit_test(a_reload_whose_check_fails_changes_nothing),
	    cmocka_unit_test(a_policy_set_reloaded_between_the_phases_stays),
	};
	return cmocka_run_group_tests_name("reload", tests, setup, teardown);
}
