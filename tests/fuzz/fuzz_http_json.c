/*
 * Fuzz target: request intake.  The input is split at its first NUL: the
 * part before is matched as a request path by the router, the part after is
 * parsed as a JSON body with the server's limits.  Neither may crash, leak
 * or read out of bounds, an accepted body must survive a round trip, and
 * what the fast path for flat bodies accepts jansson accepts as the same value.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "idpd/http.h"

static void
nop(struct http_req *req, void *ctx)
{
	(void)req;
	(void)ctx;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct http_router *r;
	const uint8_t *nul = memchr(data, 0, size);
	size_t path_len = nul ? (size_t)(nul - data) : size;
	char err[256], scratch[1024], *path;
	struct http_match m;
	json_t *j;

	if (r == NULL) {
		r = http_router_new();
		if (http_router_add(r, HTTP_GET, "/v1/agents/{id}", nop, NULL) != IDP_OK ||
		    http_router_add(r, HTTP_POST, "/v1/agents/{id}/attest", nop, NULL) != IDP_OK ||
		    http_router_add(r, HTTP_GET, "/v1/agents/search", nop, NULL) != IDP_OK ||
		    http_router_add(r, HTTP_GET, "/healthz", nop, NULL) != IDP_OK)
			abort();
	}
	path = malloc(path_len + 1);
	memcpy(path, data, path_len);
	path[path_len] = '\0';
	http_router_match(r, HTTP_GET, path, scratch, sizeof(scratch), &m);
	if (m.status == 0) {
		/* Parameters never contain a '/' or a NUL and fit the scratch. */
		for (size_t i = 0; i < m.n_params; i++)
			if (strchr(m.params[i].value, '/') != NULL)
				abort();
	}
	free(path);

	if (nul != NULL) {
		const char *body = (const char *)nul + 1;
		size_t len = size - path_len - 1;

		j = http_json_parse(body, len, 32, err, sizeof(err));
		/*
		 * The flat fast path must agree with jansson: whatever the server
		 * accepts, jansson (same flags) accepts as the same value.
		 */
		if (j != NULL) {
			json_t *ref =
			    json_loadb(body, len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, NULL);

			if (ref == NULL || !json_equal(j, ref))
				abort();
			json_decref(ref);
		}
		if (j != NULL) {
			char *again = json_dumps(j, JSON_COMPACT | JSON_ENCODE_ANY);
			json_t *k;

			if (again == NULL)
				abort();
			k = http_json_parse(again, strlen(again), 32, err, sizeof(err));
			if (k == NULL || !json_equal(j, k))
				abort();
			json_decref(k);
			free(again);
			json_decref(j);
		}
	}
	return 0;
}
