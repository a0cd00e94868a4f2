/*
 * json.c - JSON intake with limits.
 *
 * jansson bounds nesting only at a compile-time depth far above what idpd
 * accepts, so the depth is checked first by a byte scan that tracks strings
 * and escapes; the parse itself rejects duplicate keys and trailing data.
 */
#include <stdio.h>
#include <string.h>

#include "idpd/http.h"

/* Deepest nesting of [ and { outside strings; -1 if it passes max_depth. */
static int
scan_depth(const char *s, size_t len, int max_depth)
{
	int depth = 0;
	bool in_str = false, esc = false;

	for (size_t i = 0; i < len; i++) {
		char c = s[i];

		if (in_str) {
			if (esc)
				esc = false;
			else if (c == '\\')
				esc = true;
			else if (c == '"')
				in_str = false;
			continue;
		}
		if (c == '"') {
			in_str = true;
		} else if (c == '[' || c == '{') {
			if (++depth > max_depth)
				return -1;
		} else if (c == ']' || c == '}') {
			depth--;
		}
	}
	return 0;
}

json_t *
http_json_parse(const char *text, size_t len, int max_depth, char *err, size_t err_len)
{
	json_error_t je;
	json_t *j;

	if (scan_depth(text, len, max_depth) < 0) {
		snprintf(err, err_len, "nesting deeper than %d levels", max_depth);
		return NULL;
	}
	if (memchr(text, '\0', len) != NULL) {
		snprintf(err, err_len, "NUL byte in body");
		return NULL;
	}
	j = json_loadb(text, len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &je);
	if (j == NULL) {
		snprintf(err, err_len, "line %d, column %d: %s", je.line, je.column, je.text);
		return NULL;
	}
	return j;
}
