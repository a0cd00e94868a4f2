/*
 * Fuzz target: application/x-www-form-urlencoded bodies.  Parsing may not
 * crash, leak or read out of bounds; an accepted form has distinct names,
 * and every name and value is NUL-free text without control characters
 * that fits the limits.  The refusal's text, made an error_description,
 * keeps to RFC 6749's characters, and a refused repeat names a parameter.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "idpd/http.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void
check_text(const char *s, size_t max)
{
	size_t n = strlen(s);

	if (n > max)
		abort();
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
			abort();
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct idp_arena arena;
	struct http_form f;
	struct idp_diag d;

	idp_arena_init(&arena, 1u << 20);
	idp_diag_init(&d);
	if (http_form_parse((const char *)data, size, &arena, &f, &d) != IDP_OK) {
		json_t *desc = http_oauth_description(idp_diag_str(&d));
		const char *t = json_string_value(desc);

		if (t == NULL)
			abort();
		for (; *t != '\0'; t++)
			if (*t < 0x20 || *t > 0x7e || *t == '"' || *t == '\\')
				abort();
		json_decref(desc);
		if (f.repeated != NULL && strstr(idp_diag_str(&d), f.repeated) == NULL)
			abort();
	} else {
		if (f.n > HTTP_FORM_MAX_PARAMS)
			abort();
		for (size_t i = 0; i < f.n; i++) {
			check_text(f.p[i].name, HTTP_FORM_MAX_NAME);
			check_text(f.p[i].value, HTTP_FORM_MAX_VALUE);
			/* Each name once, an empty value read as omitted. */
			if (f.p[i].name[0] == '\0' ||
			    http_form_get(&f, f.p[i].name) !=
			        (f.p[i].value[0] != '\0' ? f.p[i].value : NULL))
				abort();
		}
	}
	idp_arena_cleanup(&arena);
	return 0;
}
