/*
 * Unit tests for operator API keys: generation, hashing, matching, roles.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "idpd/auth.h"

static void
generated_keys_have_the_documented_shape(void **state)
{
	char key[64], hash[80], again[80], key2[64], hash2[80];

	(void)state;
	assert_int_equal(auth_key_generate(key, hash), IDP_OK);
	assert_int_equal(strncmp(key, "idpk_", 5), 0);
	assert_int_equal(strlen(key), 5 + 43);
	assert_int_equal(strspn(key + 5, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
	                                 "0123456789-_"),
	                 43);
	assert_int_equal(strncmp(hash, "sha256:", 7), 0);
	assert_int_equal(strlen(hash), 71);
	auth_key_hash(key, again);
	assert_string_equal(hash, again);
	assert_int_equal(auth_key_generate(key2, hash2), IDP_OK);
	assert_string_not_equal(key, key2);
}

static void
known_vector_hashes_as_sha256(void **state)
{
	char hash[80];

	(void)state;
	auth_key_hash("abc", hash);
	assert_string_equal(
	    hash, "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

static void
check_key_matches_only_a_configured_key(void **state)
{
	char k1[64], h1[80], k2[64], h2[80], k3[64], h3[80];
	struct idpd_api_key_cfg cfg[2];
	struct auth_principal p;
	struct auth_keys *keys;

	(void)state;
	assert_int_equal(auth_key_generate(k1, h1), IDP_OK);
	assert_int_equal(auth_key_generate(k2, h2), IDP_OK);
	assert_int_equal(auth_key_generate(k3, h3), IDP_OK);
	cfg[0] = (struct idpd_api_key_cfg){"ops", h1, IDPD_ROLE_REGISTRAR, NULL};
	cfg[1] =
	    (struct idpd_api_key_cfg){"siem", h2, IDPD_ROLE_AUDITOR | IDPD_ROLE_INTROSPECTOR, NULL};
	keys = auth_keys_new(cfg, 2);

	assert_int_equal(auth_check_key(keys, k1, &p), IDP_OK);
	assert_string_equal(p.name, "ops");
	assert_int_equal(p.roles, IDPD_ROLE_REGISTRAR);
	assert_int_equal(auth_check_key(keys, k2, &p), IDP_OK);
	assert_string_equal(p.name, "siem");
	assert_int_equal(auth_check_key(keys, k3, &p), IDP_EUNAUTH);
	/* A hash presented as if it were the key does not pass. */
	assert_int_equal(auth_check_key(keys, h1, &p), IDP_EUNAUTH);
	/* Nor does a key one character short, or without its prefix. */
	k1[strlen(k1) - 1] = '\0';
	assert_int_equal(auth_check_key(keys, k1, &p), IDP_EUNAUTH);
	assert_int_equal(auth_check_key(keys, k2 + 5, &p), IDP_EUNAUTH);
	assert_int_equal(auth_check_key(keys, "", &p), IDP_EUNAUTH);
	assert_int_equal(auth_check_key(keys, NULL, &p), IDP_EUNAUTH);
	assert_int_equal(auth_check_key(NULL, k2, &p), IDP_EUNAUTH);
	auth_keys_unref(keys);
}

static void
malformed_configured_hash_is_ignored(void **state)
{
	struct idpd_api_key_cfg cfg[1] = {{"bad", "sha256:zz", IDPD_ROLE_ADMIN, NULL}};
	struct auth_keys *keys = auth_keys_new(cfg, 1);
	struct auth_principal p;

	(void)state;
	assert_int_equal(auth_check_key(keys, "idpk_anything", &p), IDP_EUNAUTH);
	auth_keys_unref(keys);
}

static void
roles_parse_names_and_rejects_unknown(void **state)
{
	unsigned r;

	(void)state;
	assert_int_equal(auth_roles_parse("admin", &r), IDP_OK);
	assert_int_equal(r, IDPD_ROLE_ADMIN);
	assert_int_equal(auth_roles_parse("auditor,maintenance", &r), IDP_OK);
	assert_int_equal(r, IDPD_ROLE_AUDITOR | IDPD_ROLE_MAINTENANCE);
	assert_int_equal(auth_roles_parse("auditor,root", &r), IDP_EINVAL);
	assert_int_equal(auth_roles_parse("", &r), IDP_EINVAL);
	assert_int_equal(auth_roles_parse("admi", &r), IDP_EINVAL);
	assert_string_equal(auth_role_name(IDPD_ROLE_APPROVER), "approver");
	assert_null(auth_role_name(3));
}

static void
installed_set_is_reference_counted(void **state)
{
	char k[64], h[80];
	struct idpd_api_key_cfg cfg[1];
	struct auth_keys *a, *held;
	struct auth_principal p;

	(void)state;
	assert_int_equal(auth_key_generate(k, h), IDP_OK);
	cfg[0] = (struct idpd_api_key_cfg){"one", h, IDPD_ROLE_ADMIN, NULL};
	a = auth_keys_new(cfg, 1);
	auth_keys_install(a);
	held = auth_keys_current();
	/* A reload replaces the set; a reader holding the old one keeps it. */
	auth_keys_install(auth_keys_new(NULL, 0));
	assert_int_equal(auth_check_key(held, k, &p), IDP_OK);
	auth_keys_unref(held);
	held = auth_keys_current();
	assert_int_equal(auth_check_key(held, k, &p), IDP_EUNAUTH);
	auth_keys_unref(held);
	auth_keys_install(NULL);
}

/* A key's audiences match whole words only; a key without any sees every audience. */
static void
audiences_match_whole_words(void **state)
{
	struct auth_principal p = {.name = "rs", .roles = IDPD_ROLE_INTROSPECTOR};

	(void)state;
	assert_true(auth_audience_allowed(&p, "https://anything"));
	assert_true(auth_audience_allowed(&p, NULL));
	snprintf(p.audiences, sizeof(p.audiences), "https://a https://b");
	assert_true(auth_audience_allowed(&p, "https://a"));
	assert_true(auth_audience_allowed(&p, "https://b"));
	assert_true(auth_audience_allowed(&p, "https://x https://b"));
	assert_false(auth_audience_allowed(&p, "https://ab"));
	assert_false(auth_audience_allowed(&p, "https://"));
	assert_false(auth_audience_allowed(&p, "https://a/"));
	assert_false(auth_audience_allowed(&p, "idpd"));
	assert_false(auth_audience_allowed(&p, ""));
	assert_false(auth_audience_allowed(&p, NULL));
}

/* An AuthZEN resource is one audience, matched whole: no list of them is split. */
static void
a_resource_matches_one_audience_whole(void **state)
{
	struct auth_principal p = {.name = "rs", .roles = IDPD_ROLE_INTROSPECTOR};

	(void)state;
	assert_true(auth_resource_allowed(&p, "billing x"));
	snprintf(p.audiences, sizeof(p.audiences), "x https://b");
	assert_true(auth_resource_allowed(&p, "x"));
	assert_true(auth_resource_allowed(&p, "https://b"));
	assert_false(auth_resource_allowed(&p, "billing x"));
	assert_false(auth_resource_allowed(&p, "x billing"));
	assert_false(auth_resource_allowed(&p, "x "));
	assert_false(auth_resource_allowed(&p, " x"));
	assert_false(auth_resource_allowed(&p, "x https://b"));
	assert_false(auth_resource_allowed(&p, "xx"));
	assert_false(auth_resource_allowed(&p, ""));
	assert_false(auth_resource_allowed(&p, NULL));
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(generated_keys_have_the_documented_shape),
	    cmocka_unit_test(known_vector_hashes_as_sha256),
	    cmocka_unit_test(check_key_matches_only_a_configured_key),
	    cmocka_unit_test(malformed_configured_hash_is_ignored),
	    cmocka_unit_test(roles_parse_names_and_rejects_unknown),
	    cmocka_unit_test(installed_set_is_reference_counted),
	    cmocka_unit_test(audiences_match_whole_words),
	    cmocka_unit_test(a_resource_matches_one_audience_whole),
	};
	return cmocka_run_group_tests_name("auth", tests, NULL, NULL);
}
