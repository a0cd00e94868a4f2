/*
 * Unit tests for src/token/tasks.c and src/token/human_auth.c: the
 * delegation hash chain against vectors computed with openssl, the claims
 * of a task's root delegation token, and human token verification against
 * an [[idp]] key set (pinned algorithms, issuer, audience, expiry,
 * principal claim).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "idpd/b64.h"
#include "idpd/clock.h"
#include "idpd/config.h"
#include "idpd/human_auth.h"
#include "idpd/jws.h"
#include "idpd/tasks.h"

/*
 * h0 = SHA-256("idpd-chain-v1" || "alice@example.com"):
 *   printf 'idpd-chain-v1alice@example.com' | openssl dgst -sha256
 */
#define H0_HEX "508a88cb79e75f8734d2cbf2860102a40e4219556523d371838351c81fe2131b"
/*
 * h1 = SHA-256(h0 || "planning-agent" || "jti-0123456789abcdef" ||
 *              "cloud:read reports:write"):
 *   (printf 'idpd-chain-v1alice@example.com' | openssl dgst -sha256 -binary;
 *    printf 'planning-agentjti-0123456789abcdefcloud:read reports:write') |
 *   openssl dgst -sha256
 */
#define H1_HEX "05e33531e1694af72a3713758e3f5ea5ed92b5b4a319e22b2e1caa2a0593cfc2"

static void
chain_root_matches_openssl_vector(void **state)
{
	uint8_t h[TASK_CHAIN_HASH_LEN];
	char text[TASK_CHAIN_TEXT_LEN];

	(void)state;
	assert_int_equal(task_chain_root("alice@example.com", h), IDP_OK);
	task_chain_format(h, text);
	assert_string_equal(text, "sha256:" H0_HEX);
}

static void
chain_link_matches_openssl_vector(void **state)
{
	uint8_t h[TASK_CHAIN_HASH_LEN];
	char text[TASK_CHAIN_TEXT_LEN];

	(void)state;
	assert_int_equal(task_chain_root("alice@example.com", h), IDP_OK);
	/* out aliases prev. */
	assert_int_equal(task_chain_next(h, "planning-agent", "jti-0123456789abcdef",
	                                 "cloud:read reports:write", h),
	                 IDP_OK);
	task_chain_format(h, text);
	assert_string_equal(text, "sha256:" H1_HEX);
}

static void
chain_depends_on_every_input(void **state)
{
	uint8_t a[TASK_CHAIN_HASH_LEN], b[TASK_CHAIN_HASH_LEN], h0[TASK_CHAIN_HASH_LEN];

	(void)state;
	assert_int_equal(task_chain_root("alice@example.com", h0), IDP_OK);
	assert_int_equal(task_chain_next(h0, "a", "j", "x:read", a), IDP_OK);
	assert_int_equal(task_chain_next(h0, "b", "j", "x:read", b), IDP_OK);
	assert_memory_not_equal(a, b, sizeof(a));
	assert_int_equal(task_chain_next(h0, "a", "k", "x:read", b), IDP_OK);
	assert_memory_not_equal(a, b, sizeof(a));
	assert_int_equal(task_chain_next(h0, "a", "j", "x:write", b), IDP_OK);
	assert_memory_not_equal(a, b, sizeof(a));
	assert_int_equal(task_chain_root("bob@example.com", b), IDP_OK);
	assert_memory_not_equal(h0, b, sizeof(h0));
}

static struct task_root_token
sample_token(void)
{
	return (struct task_root_token){
	    .issuer = "idpd",
	    .audience = "idpd",
	    .agent_id = "planning-agent",
	    .jti = "jti-0123456789abcdef",
	    .task_id = "task_0123456789abcdefghij",
	    .scope = "cloud:read reports:write",
	    .human = "alice@example.com",
	    .idp = "corp",
	    .chain_hash = "sha256:" H1_HEX,
	    .iat_s = 1700000000,
	    .exp_s = 1700003600,
	};
}

static void
root_claims_carry_task_chain_and_act(void **state)
{
	struct task_root_token t = sample_token();
	json_t *c = task_root_claims(&t), *act;

	(void)state;
	assert_non_null(c);
	assert_string_equal(json_string_value(json_object_get(c, "iss")), "idpd");
	assert_string_equal(json_string_value(json_object_get(c, "sub")), "planning-agent");
	assert_string_equal(json_string_value(json_object_get(c, "aud")), "idpd");
	assert_int_equal(json_integer_value(json_object_get(c, "iat")), 1700000000);
	assert_int_equal(json_integer_value(json_object_get(c, "exp")), 1700003600);
	assert_string_equal(json_string_value(json_object_get(c, "jti")), "jti-0123456789abcdef");
	assert_string_equal(json_string_value(json_object_get(c, "task_id")),
	                    "task_0123456789abcdefghij");
	assert_string_equal(json_string_value(json_object_get(c, "scope")),
	                    "cloud:read reports:write");
	assert_string_equal(json_string_value(json_object_get(c, "human_principal")),
	                    "alice@example.com");
	assert_string_equal(json_string_value(json_object_get(c, "delegation_chain_hash")),
	                    "sha256:" H1_HEX);
	assert_int_equal(json_integer_value(json_object_get(c, "depth")), 0);
	act = json_object_get(c, "act");
	assert_true(json_is_object(act));
	assert_string_equal(json_string_value(json_object_get(act, "sub")), "alice@example.com");
	assert_string_equal(json_string_value(json_object_get(act, "sub_type")), "human");
	assert_null(json_object_get(act, "act"));
	json_decref(c);
}

static void
root_claims_refuse_empty_lifetime(void **state)
{
	struct task_root_token t = sample_token();

	(void)state;
	t.exp_s = t.iat_s;
	assert_null(task_root_claims(&t));
}

/* ---- human tokens ---- */

static struct idp_jws_key *idp_key, *other_key;
static struct human_verifier *verifier;
static char jwks_path[64];
static struct idp_clock clk;

#define NOW_S 1800000000LL

static int
setup(void **state)
{
	struct idpd_config *cfg = idpd_config_defaults();
	struct idpd_idp_cfg ic = {"corp", "https://sso.example.com", "idpd", jwks_path, 1u,
	                          "email"};
	json_t *doc;
	struct idp_diag d;
	FILE *f;
	int fd;

	(void)state;
	assert_int_equal(idp_jws_key_generate("idp-1", &idp_key, NULL), IDP_OK);
	assert_int_equal(idp_jws_key_generate("idp-1", &other_key, NULL), IDP_OK);
	snprintf(jwks_path, sizeof(jwks_path), "/tmp/test_tasks_jwks_XXXXXX");
	fd = mkstemp(jwks_path);
	assert_true(fd >= 0);
	f = fdopen(fd, "w");
	doc = json_pack("{s:[o]}", "keys", idp_jws_key_public_jwk(idp_key));
	assert_int_equal(json_dumpf(doc, f, JSON_COMPACT), 0);
	json_decref(doc);
	assert_int_equal(fclose(f), 0);
	cfg->idps = &ic;
	cfg->n_idps = 1;
	idp_diag_init(&d);
	verifier = human_verifier_new(cfg, &d);
	cfg->idps = NULL;
	cfg->n_idps = 0;
	idpd_config_free(cfg);
	assert_non_null(verifier);
	idp_clock_fixed(&clk, NOW_S * 1000);
	return 0;
}

static int
teardown(void **state)
{
	(void)state;
	human_verifier_free(verifier);
	idp_jws_key_unref(idp_key);
	idp_jws_key_unref(other_key);
	unlink(jwks_path);
	return 0;
}

static char *
mint(const struct idp_jws_key *key, const char *iss, const char *aud, long long exp,
     const char *email)
{
	json_t *c = json_pack("{s:s,s:s,s:I,s:I,s:s}", "iss", iss, "aud", aud, "iat",
	                      (json_int_t)(NOW_S - 10), "exp", (json_int_t)exp, "sub", "u-1");
	char *tok = NULL;

	if (email != NULL)
		json_object_set_new(c, "email", json_string(email));
	assert_int_equal(idp_jws_sign(key, NULL, c, &tok, NULL, NULL), IDP_OK);
	json_decref(c);
	return tok;
}

static int
verify(const char *tok, const char **why, struct human_principal *p)
{
	return human_token_verify(verifier, tok, strlen(tok), &clk, p, why);
}

static void
human_token_valid_names_principal(void **state)
{
	struct human_principal p;
	const char *why = NULL;
	char *tok =
	    mint(idp_key, "https://sso.example.com", "idpd", NOW_S + 600, "alice@example.com");

	(void)state;
	assert_int_equal(verify(tok, &why, &p), IDP_OK);
	assert_string_equal(p.principal, "alice@example.com");
	assert_string_equal(p.idp, "corp");
	assert_int_equal(p.expires_at_s, NOW_S + 600);
	free(tok);
}

static void
human_token_refusals_name_their_reason(void **state)
{
	struct human_principal p;
	const char *why = NULL;
	char *tok;

	(void)state;
	tok = mint(idp_key, "https://evil.example.com", "idpd", NOW_S + 600, "a@example.com");
	assert_int_equal(verify(tok, &why, &p), IDP_EUNAUTH);
	assert_string_equal(why, "issuer_mismatch");
	free(tok);
	tok = mint(idp_key, "https://sso.example.com", "other", NOW_S + 600, "a@example.com");
	assert_int_equal(verify(tok, &why, &p), IDP_EUNAUTH);
	assert_string_equal(why, "audience_mismatch");
	free(tok);
	tok = mint(idp_key, "https://sso.example.com", "idpd", NOW_S - 60, "a@example.com");
	assert_int_equal(verify(tok, &why, &p), IDP_EUNAUTH);
	assert_string_equal(why, idp_jws_reason_name(IDP_JWS_EXPIRED));
	free(tok);
	tok = mint(idp_key, "https://sso.example.com", "idpd", NOW_S + 600, NULL);
	assert_int_equal(verify(tok, &why, &p), IDP_EUNAUTH);
	assert_string_equal(why, "principal_missing");
	free(tok);
	/* Same kid, another key: the signature does not verify. */
	tok = mint(other_key, "https://sso.example.com", "idpd", NOW_S + 600, "a@example.com");
	assert_int_equal(verify(tok, &why, &p), IDP_EUNAUTH);
	assert_string_equal(why, idp_jws_reason_name(IDP_JWS_BAD_SIGNATURE));
	free(tok);
}

static void
human_token_alg_none_refused(void **state)
{
	struct human_principal p;
	const char *why = NULL;
	const char *hdr = "{\"alg\":\"none\",\"kid\":\"idp-1\"}";
	const char *body = "{\"iss\":\"https://sso.example.com\",\"aud\":\"idpd\","
	                   "\"exp\":1900000000,\"email\":\"a@example.com\"}";
	char *h = idp_b64url_encode(hdr, strlen(hdr), NULL);
	char *b = idp_b64url_encode(body, strlen(body), NULL);
	char tok[512];

	(void)state;
	snprintf(tok, sizeof(tok), "%s.%s.", h, b);
	assert_int_equal(verify(tok, &why, &p), IDP_EUNAUTH);
	assert_string_not_equal(why, "");
	assert_string_equal(p.principal, "");
	free(h);
	free(b);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(chain_root_matches_openssl_vector),
	    cmocka_unit_test(chain_link_matches_openssl_vector),
	    cmocka_unit_test(chain_depends_on_every_input),
	    cmocka_unit_test(root_claims_carry_task_chain_and_act),
	    cmocka_unit_test(root_claims_refuse_empty_lifetime),
	    cmocka_unit_test(human_token_valid_names_principal),
	    cmocka_unit_test(human_token_refusals_name_their_reason),
	    cmocka_unit_test(human_token_alg_none_refused),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
