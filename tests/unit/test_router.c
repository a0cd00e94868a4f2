/*
 * Unit tests for the router: patterns, parameters, 404 and 405, hostile
 * paths, and the error table.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "idpd/http.h"

static void
h_a(struct http_req *req, void *ctx)
{
	(void)req;
	(void)ctx;
}

static void
h_b(struct http_req *req, void *ctx)
{
	(void)req;
	(void)ctx;
}

static int
setup(void **state)
{
	struct http_router *r = http_router_new();

	if (http_router_add(r, HTTP_GET, "/healthz", h_a, NULL) != IDP_OK ||
	    http_router_add(r, HTTP_GET | HTTP_PATCH, "/v1/agents/{id}", h_a, NULL) != IDP_OK ||
	    http_router_add(r, HTTP_POST, "/v1/agents/{id}/attest", h_b, NULL) != IDP_OK ||
	    http_router_add(r, HTTP_GET, "/v1/agents/search", h_b, NULL) != IDP_OK ||
	    http_router_add(r, HTTP_POST, "/v1/agents", h_b, NULL) != IDP_OK ||
	    http_router_add(r, HTTP_GET, "/", h_b, NULL) != IDP_OK)
		return -1;
	*state = r;
	return 0;
}

static int
teardown(void **state)
{
	http_router_free(*state);
	return 0;
}

static void
match(struct http_router *r, unsigned m, const char *path, struct http_match *out)
{
	static char scratch[256];

	http_router_match(r, m, path, scratch, sizeof(scratch), out);
}

static void
router_matches_literal_routes(void **state)
{
	struct http_match m;

	match(*state, HTTP_GET, "/healthz", &m);
	assert_int_equal(m.status, 0);
	assert_string_equal(http_router_pattern(*state, m.route), "/healthz");
	assert_int_equal(m.n_params, 0);
	match(*state, HTTP_GET, "/", &m);
	assert_int_equal(m.status, 0);
	assert_string_equal(http_router_pattern(*state, m.route), "/");
}

static void
router_extracts_and_decodes_parameters(void **state)
{
	struct http_match m;

	match(*state, HTTP_POST, "/v1/agents/agent-planning-prod-001/attest", &m);
	assert_int_equal(m.status, 0);
	assert_string_equal(http_router_pattern(*state, m.route), "/v1/agents/{id}/attest");
	assert_int_equal(m.n_params, 1);
	assert_string_equal(m.params[0].name, "id");
	assert_string_equal(m.params[0].value, "agent-planning-prod-001");
	match(*state, HTTP_GET, "/v1/agents/a%40b", &m);
	assert_int_equal(m.status, 0);
	assert_string_equal(m.params[0].value, "a@b");
}

static void
router_prefers_literal_over_parameter(void **state)
{
	struct http_match m;

	match(*state, HTTP_GET, "/v1/agents/search", &m);
	assert_int_equal(m.status, 0);
	assert_string_equal(http_router_pattern(*state, m.route), "/v1/agents/search");
	/* HEAD is served by GET routes. */
	match(*state, HTTP_HEAD, "/v1/agents/x", &m);
	assert_int_equal(m.status, 0);
	assert_string_equal(http_router_pattern(*state, m.route), "/v1/agents/{id}");
}

static void
router_answers_405_with_the_allowed_methods(void **state)
{
	struct http_match m;
	char allow[64];

	match(*state, HTTP_DELETE, "/v1/agents/x", &m);
	assert_int_equal(m.status, 405);
	assert_int_equal(m.route, -1);
	http_allow_format(m.allow, allow, sizeof(allow));
	assert_string_equal(allow, "GET, HEAD, PATCH");
	match(*state, HTTP_POST, "/healthz", &m);
	assert_int_equal(m.status, 405);
	http_allow_format(m.allow, allow, sizeof(allow));
	assert_string_equal(allow, "GET, HEAD");
	/* An unknown method (0) on a known path is also 405. */
	match(*state, 0, "/healthz", &m);
	assert_int_equal(m.status, 405);
}

static void
router_rejects_hostile_paths_as_404(void **state)
{
	static const char *bad[] = {
		"",	       "healthz",	  "//healthz",	 "/healthz/",
		"/v1/agents/", "/v1/agents//attest", "/v1/agents/..", "/v1/agents/.",
		"/v1/agents/%2e%2e",		  "/v1/agents/a%2fb", "/v1/agents/a%00b",
		"/v1/agents/%zz", "/v1/agents/%4",  "/a/b/c/d/e/f/g/h/i/j/k/l/m/n",
	};
	struct http_match m;

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		match(*state, HTTP_GET, bad[i], &m);
		assert_int_equal(m.status, 404);
		assert_int_equal(m.route, -1);
	}
}

static void
router_overlong_parameter_does_not_overflow_scratch(void **state)
{
	char path[600], scratch[64];
	struct http_match m;

	memset(path, 'a', sizeof(path));
	memcpy(path, "/v1/agents/", 11);
	path[sizeof(path) - 1] = '\0';
	http_router_match(*state, HTTP_GET, path, scratch, sizeof(scratch), &m);
	assert_int_equal(m.status, 404);
}

static void
router_refuses_bad_patterns_and_duplicates(void **state)
{
	struct http_router *r = *state;

	assert_int_equal(http_router_add(r, HTTP_GET, "healthz", h_a, NULL), IDP_EINVAL);
	assert_int_equal(http_router_add(r, HTTP_GET, "/a//b", h_a, NULL), IDP_EINVAL);
	assert_int_equal(http_router_add(r, HTTP_GET, "/a/{}", h_a, NULL), IDP_EINVAL);
	assert_int_equal(http_router_add(r, HTTP_GET, "/a/{x y}", h_a, NULL), IDP_EINVAL);
	assert_int_equal(http_router_add(r, HTTP_GET, "/healthz", h_b, NULL), IDP_EINVAL);
	assert_int_equal(http_router_add(r, 0, "/x", h_b, NULL), IDP_EINVAL);
	/* A different method on an existing pattern is fine. */
	assert_int_equal(http_router_add(r, HTTP_DELETE, "/v1/agents/{id}", h_b, NULL), IDP_OK);
}

static void
error_table_maps_codes_to_statuses(void **state)
{
	(void)state;
	assert_int_equal(http_status_for(IDP_EINVAL), 400);
	assert_int_equal(http_status_for(IDP_EUNAUTH), 401);
	assert_int_equal(http_status_for(IDP_EFORBIDDEN), 403);
	assert_int_equal(http_status_for(IDP_ENOTFOUND), 404);
	assert_int_equal(http_status_for(IDP_ECONFLICT), 409);
	assert_int_equal(http_status_for(IDP_EPRECOND), 412);
	assert_int_equal(http_status_for(IDP_ETOOBIG), 413);
	assert_int_equal(http_status_for(IDP_EUNPROCESSABLE), 422);
	assert_int_equal(http_status_for(IDP_EUNAVAIL), 503);
	assert_int_equal(http_status_for(IDP_EINTERNAL), 500);
	assert_int_equal(http_status_for(12345), 500);
	assert_string_equal(http_code_for(IDP_EUNAVAIL), "unavailable");
	assert_string_equal(http_code_for(IDP_ENOTFOUND), "not_found");
	assert_string_equal(http_status_title(405), "Method Not Allowed");
}

static void
request_ids_are_validated_and_generated(void **state)
{
	char id[33], id2[33];

	(void)state;
	assert_true(http_request_id_valid("abc-123_X.y:z"));
	assert_false(http_request_id_valid(""));
	assert_false(http_request_id_valid(NULL));
	assert_false(http_request_id_valid("a b"));
	assert_false(http_request_id_valid("a\"b"));
	{
		char long_id[200];

		memset(long_id, 'a', sizeof(long_id) - 1);
		long_id[sizeof(long_id) - 1] = '\0';
		assert_false(http_request_id_valid(long_id));
		long_id[128] = '\0';
		assert_true(http_request_id_valid(long_id));
	}
	http_request_id_new(id);
	http_request_id_new(id2);
	assert_int_equal(strlen(id), 32);
	assert_true(http_request_id_valid(id));
	assert_string_not_equal(id, id2);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(router_matches_literal_routes, setup, teardown),
		cmocka_unit_test_setup_teardown(router_extracts_and_decodes_parameters, setup,
						teardown),
		cmocka_unit_test_setup_teardown(router_prefers_literal_over_parameter, setup,
						teardown),
		cmocka_unit_test_setup_teardown(router_answers_405_with_the_allowed_methods, setup,
						teardown),
		cmocka_unit_test_setup_teardown(router_rejects_hostile_paths_as_404, setup,
						teardown),
		cmocka_unit_test_setup_teardown(router_overlong_parameter_does_not_overflow_scratch,
						setup, teardown),
		cmocka_unit_test_setup_teardown(router_refuses_bad_patterns_and_duplicates, setup,
						teardown),
		cmocka_unit_test(error_table_maps_codes_to_statuses),
		cmocka_unit_test(request_ids_are_validated_and_generated),
	};
	return cmocka_run_group_tests_name("router", tests, NULL, NULL);
}
