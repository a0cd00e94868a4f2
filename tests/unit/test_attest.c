/*
 * Unit tests of attestation's pure parts: attestors' selector mappings and
 * matching against Kubernetes- and SPIRE-shaped claims, join token and jti
 * generation, the identity credential's claims (lifetime cut by the key's
 * not-after), and agent_credential_verify under a fixed clock (valid,
 * expired, wrong audience, issuer, typ, subject and key).  What needs
 * PostgreSQL and HTTP is in tests/integration/test_attest.c.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "idpd/agent_auth.h"
#include "idpd/attest.h"
#include "idpd/clock.h"
#include "idpd/jws.h"

#define T0 INT64_C(1774621523000) /* 2026-03-27T14:25:23Z */
#define HOUR INT64_C(3600000)

static const char k8s_map[] = "k8s:ns=kubernetes.io/namespace "
                              "k8s:sa=kubernetes.io/serviceaccount/name "
                              "k8s:pod-uid=kubernetes.io/pod/uid image:digest=image_digest "
                              "spiffe_id=sub";

static json_t *
k8s_claims(void)
{
	return json_pack(
	    "{s:s,s:s,s:[s],s:{s:s,s:{s:s,s:s},s:{s:s,s:s}},s:s}", "iss",
	    "https://kubernetes.default.svc", "sub", "system:serviceaccount:agents:planner", "aud",
	    "idpd", "kubernetes.io", "namespace", "agents", "serviceaccount", "name", "planner",
	    "uid", "3c1f0f5e-5c55-4d2b-9a43-8f7c0f0d1a11", "pod", "name", "planner-7d9f", "uid",
	    "a0d2b1c4-1111-2222-3333-444455556666", "image_digest", "sha256:4f1e");
}

static struct attest_selector_map *
map_ok(const char *s)
{
	struct idp_diag d;
	struct attest_selector_map *m;

	idp_diag_init(&d);
	m = attest_selector_map_parse(s, &d);
	if (m == NULL)
		fail_msg("%s", idp_diag_str(&d));
	return m;
}

static void
map_bad(const char *s, const char *want)
{
	struct idp_diag d;

	idp_diag_init(&d);
	assert_null(attest_selector_map_parse(s, &d));
	if (strstr(idp_diag_str(&d), want) == NULL)
		fail_msg("\"%s\": expected \"%s\" in \"%s\"", s, want, idp_diag_str(&d));
}

/* ---- selector mappings ---- */

static void
selector_map_rejects_malformed_entries(void **state)
{
	(void)state;
	map_bad("", "no mapping");
	map_bad("k8s:ns", "is not prefix=claim/path");
	map_bad("=sub", "is not prefix=claim/path");
	map_bad("k8s:ns=", "is not prefix=claim/path");
	map_bad("k8s ns=sub", "is not prefix=claim/path");
	map_bad("k8s:n$=sub", "prefix");
	map_bad("k8s:ns=a//b", "non-empty names");
	map_bad("k8s:ns=a/b/", "ends with '/'");
	map_bad("a=b a=c", "mapped twice");
	map_bad("a=b/c/d/e/f/g/h/i/j", "non-empty names");
}

/* Two attestors may not read the same selectors: which one vouches would be unsaid. */
static void
selector_maps_of_two_attestors_must_not_overlap(void **state)
{
	struct attest_selector_map *prod = map_ok("k8s:ns=ns k8s:sa=sa");
	struct attest_selector_map *same = map_ok("k8s:ns=ns k8s:sa=sa");
	struct attest_selector_map *wider = map_ok("k8s=ns");
	struct attest_selector_map *longer = map_ok("k8s:sa:x=sa");
	struct attest_selector_map *own = map_ok("k8s-staging:ns=ns k8s-staging:sa=sa");
	struct attest_selector_map *spire = map_ok("spiffe_id=sub");

	(void)state;
	assert_non_null(attest_selector_maps_overlap(prod, same));
	assert_string_equal(attest_selector_maps_overlap(prod, wider), "k8s:ns");
	assert_string_equal(attest_selector_maps_overlap(wider, prod), "k8s");
	assert_string_equal(attest_selector_maps_overlap(prod, longer), "k8s:sa");
	assert_null(attest_selector_maps_overlap(prod, own));
	assert_null(attest_selector_maps_overlap(own, prod));
	assert_null(attest_selector_maps_overlap(prod, spire));
	attest_selector_map_free(prod);
	attest_selector_map_free(same);
	attest_selector_map_free(wider);
	attest_selector_map_free(longer);
	attest_selector_map_free(own);
	attest_selector_map_free(spire);
}

static void
selectors_match_kubernetes_service_account_claims(void **state)
{
	struct attest_selector_map *m = map_ok(k8s_map);
	json_t *c = k8s_claims();
	const char *sel[] = {"k8s:ns:agents", "k8s:sa:planner", "image:digest:sha256:4f1e"};
	const char *reason = "unset", *failed = "unset";

	(void)state;
	assert_true(attest_selectors_match(m, c, sel, 3, &reason, &failed));
	assert_null(reason);
	assert_null(failed);
	json_decref(c);
	attest_selector_map_free(m);
}

static void
selectors_match_spire_jwt_svid_subject(void **state)
{
	struct attest_selector_map *m = map_ok("spiffe_id=sub");
	json_t *c = json_pack("{s:s,s:[s,s]}", "sub", "spiffe://example.org/ns/agents/sa/planner",
	                      "aud", "idpd", "other");
	const char *ok[] = {"spiffe_id:spiffe://example.org/ns/agents/sa/planner"};
	const char *bad[] = {"spiffe_id:spiffe://example.org/ns/agents/sa/other"};
	const char *reason, *failed;

	(void)state;
	assert_true(attest_selectors_match(m, c, ok, 1, &reason, &failed));
	assert_false(attest_selectors_match(m, c, bad, 1, &reason, &failed));
	assert_string_equal(reason, "selector_mismatch");
	assert_string_equal(failed, bad[0]);
	json_decref(c);
	attest_selector_map_free(m);
}

static void
selectors_refuse_mismatch_missing_unmapped_and_none(void **state)
{
	struct attest_selector_map *m = map_ok(k8s_map);
	json_t *c = k8s_claims();
	const char *mismatch[] = {"k8s:ns:agents", "k8s:sa:intruder"};
	const char *unmapped[] = {"k8s:ns:agents", "aws:account:1234"};
	const char *missing[] = {"k8s:pod-uid:x"};
	const char *reason, *failed;

	(void)state;
	assert_false(attest_selectors_match(m, c, mismatch, 2, &reason, &failed));
	assert_string_equal(reason, "selector_mismatch");
	assert_string_equal(failed, "k8s:sa:intruder");
	assert_false(attest_selectors_match(m, c, unmapped, 2, &reason, &failed));
	assert_string_equal(reason, "selector_unmapped");
	/* The pod uid lives under pod/uid in the claims, but the token has
	 * no pod uid claim at that path when the pod object is removed. */
	json_object_del(json_object_get(c, "kubernetes.io"), "pod");
	assert_false(attest_selectors_match(m, c, missing, 1, &reason, &failed));
	assert_string_equal(reason, "selector_claim_missing");
	/* No selector registered: jwt attestation fails closed. */
	assert_false(attest_selectors_match(m, c, NULL, 0, &reason, &failed));
	assert_string_equal(reason, "no_selectors");
	json_decref(c);
	attest_selector_map_free(m);
}

static void
selectors_use_the_longest_prefix_and_exact_values(void **state)
{
	struct attest_selector_map *m = map_ok("k8s=cluster k8s:ns=kubernetes.io/namespace");
	json_t *c = k8s_claims();
	const char *sel[] = {"k8s:ns:agents"};
	const char *prefix_only[] = {"k8s:ns:agent"};
	const char *reason, *failed;

	(void)state;
	assert_true(attest_selectors_match(m, c, sel, 1, &reason, &failed));
	/* A value is compared whole, never as a prefix. */
	assert_false(attest_selectors_match(m, c, prefix_only, 1, &reason, &failed));
	assert_string_equal(reason, "selector_mismatch");
	json_decref(c);
	attest_selector_map_free(m);
}

/* ---- random values ---- */

static void
join_tokens_are_random_and_hash_to_what_is_stored(void **state)
{
	char t1[ATTEST_JOIN_TOKEN_LEN + 1], t2[ATTEST_JOIN_TOKEN_LEN + 1], h1[65], h2[65], h[65];

	(void)state;
	assert_int_equal(attest_join_token_new(t1, h1), IDP_OK);
	assert_int_equal(attest_join_token_new(t2, h2), IDP_OK);
	assert_int_equal(strlen(t1), ATTEST_JOIN_TOKEN_LEN);
	assert_int_equal(strncmp(t1, ATTEST_JOIN_TOKEN_PREFIX, 5), 0);
	assert_string_not_equal(t1, t2);
	assert_string_not_equal(h1, h2);
	assert_int_equal(strlen(h1), 64);
	assert_true(attest_join_token_hash(t1, h));
	assert_string_equal(h, h1);
	/* Anything not shaped like a join token is refused before hashing. */
	assert_false(attest_join_token_hash("idpk_abc", h));
	t2[10] = '!';
	assert_false(attest_join_token_hash(t2, h));
	assert_false(attest_join_token_hash(NULL, h));
}

/* ---- the credential ---- */

static const struct attest_identity ident = {"example.org", "https://idpd.example.org", "idpd"};

struct fixture {
	struct idp_jws_key *key;
	struct idp_jws_keyset *set;
};

static void
fixture_init(struct fixture *f)
{
	struct idp_diag d;

	idp_diag_init(&d);
	assert_int_equal(idp_jws_key_generate("k1", &f->key, &d), IDP_OK);
	assert_int_equal(idp_jws_keyset_new(&f->key, 1, &f->set, &d), IDP_OK);
}

static void
fixture_cleanup(struct fixture *f)
{
	idp_jws_keyset_unref(f->set);
	idp_jws_key_unref(f->key);
}

static char *
sign(const struct fixture *f, const char *typ, json_t *claims)
{
	char *tok = NULL;

	assert_non_null(claims);
	assert_int_equal(idp_jws_sign(f->key, typ, claims, &tok, NULL, NULL), IDP_OK);
	json_decref(claims);
	return tok;
}

static int
verify_at(const struct fixture *f, const char *tok, int64_t now, const struct attest_identity *id,
          struct agent_credential *out, const char **reason)
{
	struct idp_clock c;

	idp_clock_fixed(&c, now);
	return agent_credential_verify(f->set, tok, strlen(tok), id, 0, &c, out, reason);
}

static void
credential_claims_have_spiffe_subject_and_rotation_lifetime(void **state)
{
	json_t *c =
	    attest_credential_claims(&ident, "agent-a", "jti-0123456789abcdef", T0, HOUR, 0, 0);

	(void)state;
	assert_non_null(c);
	assert_string_equal(json_string_value(json_object_get(c, "sub")),
	                    "spiffe://example.org/agent/agent-a");
	assert_string_equal(json_string_value(json_object_get(c, "aud")), "idpd");
	assert_string_equal(json_string_value(json_object_get(c, "iss")),
	                    "https://idpd.example.org");
	assert_int_equal(json_integer_value(json_object_get(c, "iat")), T0 / 1000);
	assert_int_equal(json_integer_value(json_object_get(c, "exp")), (T0 + HOUR) / 1000);
	json_decref(c);
}

static void
credential_lifetime_never_passes_the_key_not_after(void **state)
{
	/* The key may sign until T0 + 10 min + 500 ms: exp is cut to it, in
	 * whole seconds rounded down. */
	json_t *c = attest_credential_claims(&ident, "agent-a", "jti-0123456789abcdef", T0, HOUR,
	                                     T0 + 600500, 0);

	(void)state;
	assert_int_equal(json_integer_value(json_object_get(c, "exp")), (T0 + 600000) / 1000);
	json_decref(c);
	/* And by the longest token lifetime the keys allow. */
	c = attest_credential_claims(&ident, "agent-a", "jti-0123456789abcdef", T0, HOUR, 0,
	                             HOUR / 2);
	assert_int_equal(json_integer_value(json_object_get(c, "exp")), (T0 + HOUR / 2) / 1000);
	json_decref(c);
	/* No lifetime left: no credential. */
	assert_null(attest_credential_claims(&ident, "agent-a", "jti-0123456789abcdef", T0, HOUR,
	                                     T0 + 999, 0));
}

static void
credential_verifies_with_its_claims(void **state)
{
	struct fixture f;
	struct agent_credential out;
	const char *reason = "unset";
	char *tok;

	(void)state;
	fixture_init(&f);
	tok = sign(
	    &f, IDP_JWS_TYP_IDENTITY,
	    attest_credential_claims(&ident, "agent-a", "jti-0123456789abcdef", T0, HOUR, 0, 0));
	assert_int_equal(verify_at(&f, tok, T0 + 1000, &ident, &out, &reason), IDP_OK);
	assert_null(reason);
	assert_string_equal(out.agent_id, "agent-a");
	assert_string_equal(out.jti, "jti-0123456789abcdef");
	assert_string_equal(out.kid, "k1");
	assert_int_equal(out.issued_at_s, T0 / 1000);
	assert_int_equal(out.expires_at_s, (T0 + HOUR) / 1000);
	free(tok);
	fixture_cleanup(&f);
}

static void
credential_expired_is_refused(void **state)
{
	struct fixture f;
	struct agent_credential out;
	const char *reason;
	char *tok;

	(void)state;
	fixture_init(&f);
	tok = sign(
	    &f, IDP_JWS_TYP_IDENTITY,
	    attest_credential_claims(&ident, "agent-a", "jti-0123456789abcdef", T0, HOUR, 0, 0));
	assert_int_equal(verify_at(&f, tok, T0 + HOUR - 1000, &ident, &out, &reason), IDP_OK);
	assert_int_equal(verify_at(&f, tok, T0 + HOUR, &ident, &out, &reason), IDP_EUNAUTH);
	assert_string_equal(reason, "expired");
	assert_string_equal(out.agent_id, "");
	free(tok);
	fixture_cleanup(&f);
}

static void
credential_for_another_audience_or_issuer_is_refused(void **state)
{
	struct attest_identity other_aud = ident, other_iss = ident, other_td = ident;
	struct fixture f;
	struct agent_credential out;
	const char *reason;
	char *tok;

	(void)state;
	other_aud.audience = "idpd-staging";
	other_iss.issuer = "https://evil.example";
	other_td.trust_domain = "example.com";
	fixture_init(&f);
	tok = sign(
	    &f, IDP_JWS_TYP_IDENTITY,
	    attest_credential_claims(&ident, "agent-a", "jti-0123456789abcdef", T0, HOUR, 0, 0));
	assert_int_equal(verify_at(&f, tok, T0, &other_aud, &out, &reason), IDP_EUNAUTH);
	assert_string_equal(reason, "audience_mismatch");
	assert_int_equal(verify_at(&f, tok, T0, &other_iss, &out, &reason), IDP_EUNAUTH);
	assert_string_equal(reason, "issuer_mismatch");
	assert_int_equal(verify_at(&f, tok, T0, &other_td, &out, &reason), IDP_EUNAUTH);
	assert_string_equal(reason, "subject_invalid");
	free(tok);
	fixture_cleanup(&f);
}

static void
credential_with_another_typ_or_key_is_refused(void **state)
{
	struct fixture f, g;
	struct agent_credential out;
	const char *reason;
	char *tok;

	(void)state;
	fixture_init(&f);
	fixture_init(&g);
	/* An access token is not an identity credential, though idpd signed it. */
	tok = sign(
	    &f, IDP_JWS_TYP_ACCESS,
	    attest_credential_claims(&ident, "agent-a", "jti-0123456789abcdef", T0, HOUR, 0, 0));
	assert_int_equal(verify_at(&f, tok, T0, &ident, &out, &reason), IDP_EUNAUTH);
	assert_string_equal(reason, idp_jws_reason_name(IDP_JWS_TYP_MISMATCH));
	free(tok);
	/* Same kid, another key: the signature fails. */
	tok = sign(
	    &g, IDP_JWS_TYP_IDENTITY,
	    attest_credential_claims(&ident, "agent-a", "jti-0123456789abcdef", T0, HOUR, 0, 0));
	assert_int_equal(verify_at(&f, tok, T0, &ident, &out, &reason), IDP_EUNAUTH);
	assert_string_equal(reason, idp_jws_reason_name(IDP_JWS_BAD_SIGNATURE));
	free(tok);
	fixture_cleanup(&f);
	fixture_cleanup(&g);
}

static void
credential_with_bad_subject_or_jti_is_refused(void **state)
{
	struct fixture f;
	struct agent_credential out;
	const char *reason;
	char *tok;

	(void)state;
	fixture_init(&f);
	tok = sign(&f, IDP_JWS_TYP_IDENTITY,
	           json_pack("{s:s,s:s,s:s,s:I,s:I,s:s}", "iss", ident.issuer, "sub",
	                     "spiffe://example.org/agent/Not_Valid", "aud", "idpd", "iat",
	                     (json_int_t)(T0 / 1000), "exp", (json_int_t)(T0 / 1000 + 60), "jti",
	                     "jti-0123456789abcdef"));
	assert_int_equal(verify_at(&f, tok, T0, &ident, &out, &reason), IDP_EUNAUTH);
	assert_string_equal(reason, "subject_invalid");
	free(tok);
	tok = sign(&f, IDP_JWS_TYP_IDENTITY,
	           json_pack("{s:s,s:s,s:s,s:I,s:I,s:s}", "iss", ident.issuer, "sub",
	                     "spiffe://example.org/agent/agent-a", "aud", "idpd", "iat",
	                     (json_int_t)(T0 / 1000), "exp", (json_int_t)(T0 / 1000 + 60), "jti",
	                     "short"));
	assert_int_equal(verify_at(&f, tok, T0, &ident, &out, &reason), IDP_EUNAUTH);
	assert_string_equal(reason, "jti_invalid");
	free(tok);
	fixture_cleanup(&f);
}

static void
jti_is_random_base64url(void **state)
{
	char a[ATTEST_JTI_LEN + 1], b[ATTEST_JTI_LEN + 1];

	(void)state;
	assert_int_equal(attest_jti_new(a), IDP_OK);
	assert_int_equal(attest_jti_new(b), IDP_OK);
	assert_int_equal(strlen(a), ATTEST_JTI_LEN);
	assert_string_not_equal(a, b);
	assert_int_equal(
	    strspn(a, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"),
	    ATTEST_JTI_LEN);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(selector_map_rejects_malformed_entries),
	    cmocka_unit_test(selector_maps_of_two_attestors_must_not_overlap),
	    cmocka_unit_test(selectors_match_kubernetes_service_account_claims),
	    cmocka_unit_test(selectors_match_spire_jwt_svid_subject),
	    cmocka_unit_test(selectors_refuse_mismatch_missing_unmapped_and_none),
	    cmocka_unit_test(selectors_use_the_longest_prefix_and_exact_values),
	    cmocka_unit_test(join_tokens_are_random_and_hash_to_what_is_stored),
	    cmocka_unit_test(credential_claims_have_spiffe_subject_and_rotation_lifetime),
	    cmocka_unit_test(credential_lifetime_never_passes_the_key_not_after),
	    cmocka_unit_test(credential_verifies_with_its_claims),
	    cmocka_unit_test(credential_expired_is_refused),
	    cmocka_unit_test(credential_for_another_audience_or_issuer_is_refused),
	    cmocka_unit_test(credential_with_another_typ_or_key_is_refused),
	    cmocka_unit_test(credential_with_bad_subject_or_jti_is_refused),
	    cmocka_unit_test(jti_is_random_base64url),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
