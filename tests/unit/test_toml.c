/*
 * Unit tests for src/config/toml.c: every value type, the table rules, every
 * error with its message and position, the limits, and the excerpts that
 * must never show a secret.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "idpd/buf.h"
#include "idpd/toml.h"

static struct idp_toml *
parse_ok(const char *text)
{
	struct idp_toml *doc = NULL;
	struct idp_diag d;
	int rc;

	idp_diag_init(&d);
	rc = idp_toml_parse("t.toml", text, strlen(text), NULL, &doc, &d);
	if (rc != IDP_OK)
		print_error("unexpected errors:\n%s\n", idp_diag_str(&d));
	assert_int_equal(rc, IDP_OK);
	assert_non_null(doc);
	assert_int_equal(d.count, 0);
	return doc;
}

/* Parse text of length len, expect failure with rc; return the diag text (static). */
static const char *
parse_fail_n(const char *text, size_t len, const struct idp_toml_opts *opts, int want_rc,
             unsigned *count)
{
	static struct idp_diag d;
	/* Any non-NULL value: the parser must reset it on failure. */
	struct idp_toml *doc = (struct idp_toml *)(void *)&d;

	idp_diag_init(&d);
	assert_int_equal(idp_toml_parse("t.toml", text, len, opts, &doc, &d), want_rc);
	assert_null(doc);
	if (count != NULL)
		*count = d.count;
	return idp_diag_str(&d);
}

/* The first line of a diag: the error message without its excerpt. */
static const char *
first_line(const char *s)
{
	static char line[1024];
	size_t n = strcspn(s, "\n");

	if (n >= sizeof(line))
		n = sizeof(line) - 1;
	memcpy(line, s, n);
	line[n] = '\0';
	return line;
}

/* Expect exactly one error whose message line is want. */
static void
expect_error(const char *text, const char *want)
{
	unsigned count = 0;
	const char *got = parse_fail_n(text, strlen(text), NULL, IDP_EINVAL, &count);

	assert_string_equal(first_line(got), want);
	assert_int_equal(count, 1);
}

static const struct idp_toml_node *
at(const struct idp_toml_node *t, const char *key)
{
	const struct idp_toml_node *n = idp_toml_get(t, key);

	if (n == NULL)
		print_error("no key %s\n", key);
	assert_non_null(n);
	return n;
}

static void
assert_pos(const struct idp_toml_node *n, unsigned kl, unsigned kc, unsigned vl, unsigned vc)
{
	assert_int_equal(idp_toml_key_line(n), kl);
	assert_int_equal(idp_toml_key_col(n), kc);
	assert_int_equal(idp_toml_line(n), vl);
	assert_int_equal(idp_toml_col(n), vc);
}

/* ---- happy paths ---- */

static void
toml_reads_scalars_with_positions(void **state)
{
	struct idp_toml *doc = parse_ok("# leading comment\n"
	                                "title = \"idpd\"   # trailing comment\n"
	                                "port = 8080\n"
	                                "neg = -17\n"
	                                "big = 9_223_372_036_854_775_807\n"
	                                "small = -9223372036854775808\n"
	                                "plus = +0\n"
	                                "on = true\n"
	                                "off = false\n"
	                                "lit = 'C:\\path\\n'\n"
	                                "\t indented\t=\t2\n");
	const struct idp_toml_node *r = idp_toml_root(doc), *n;
	size_t len;

	(void)state;
	assert_int_equal(idp_toml_count(r), 10);
	n = at(r, "title");
	assert_int_equal(idp_toml_type(n), IDP_TOML_STRING);
	assert_string_equal(idp_toml_string(n, &len), "idpd");
	assert_int_equal(len, 4);
	assert_pos(n, 2, 1, 2, 9);
	n = at(r, "port");
	assert_int_equal(idp_toml_type(n), IDP_TOML_INT);
	assert_int_equal(idp_toml_int(n), 8080);
	assert_pos(n, 3, 1, 3, 8);
	assert_int_equal(idp_toml_int(at(r, "neg")), -17);
	assert_true(idp_toml_int(at(r, "big")) == INT64_MAX);
	assert_true(idp_toml_int(at(r, "small")) == INT64_MIN);
	assert_int_equal(idp_toml_int(at(r, "plus")), 0);
	assert_int_equal(idp_toml_type(at(r, "on")), IDP_TOML_BOOL);
	assert_true(idp_toml_bool(at(r, "on")));
	assert_false(idp_toml_bool(at(r, "off")));
	assert_string_equal(idp_toml_string(at(r, "lit"), NULL), "C:\\path\\n");
	/* A tab counts as one column. */
	assert_pos(at(r, "indented"), 11, 3, 11, 14);
	assert_null(idp_toml_key(r));
	assert_null(idp_toml_get(r, "missing"));
	assert_null(idp_toml_child(r, 10));
	idp_toml_free(doc);
}

static void
toml_reads_tables_dotted_keys_and_table_arrays(void **state)
{
	struct idp_toml *doc = parse_ok("a.b.c = 1\n"
	                                "\"quoted key\" = 2\n"
	                                "'lit.key' = 3\n"
	                                "[server]\n"
	                                "listen = \"::1\"\n"
	                                "[ server . tls ]\n"
	                                "on = true\n"
	                                "[[api_keys]]\n"
	                                "name = \"x\"\n"
	                                "[[api_keys]]\n"
	                                "name = \"y\"\n"
	                                "[api_keys.extra]\n"
	                                "n = 1\n");
	const struct idp_toml_node *r = idp_toml_root(doc), *a, *e;

	(void)state;
	assert_int_equal(idp_toml_int(at(at(at(r, "a"), "b"), "c")), 1);
	assert_int_equal(idp_toml_type(at(r, "a")), IDP_TOML_TABLE);
	assert_int_equal(idp_toml_int(at(r, "quoted key")), 2);
	assert_int_equal(idp_toml_int(at(r, "lit.key")), 3);
	assert_string_equal(idp_toml_string(at(at(r, "server"), "listen"), NULL), "::1");
	assert_true(idp_toml_bool(at(at(at(r, "server"), "tls"), "on")));
	/* A table's position is its header; its key is the name in the header. */
	assert_pos(at(r, "server"), 4, 2, 4, 1);
	assert_pos(at(at(r, "server"), "tls"), 6, 12, 6, 1);

	a = at(r, "api_keys");
	assert_int_equal(idp_toml_type(a), IDP_TOML_ARRAY);
	assert_true(idp_toml_is_table_array(a));
	assert_int_equal(idp_toml_count(a), 2);
	e = idp_toml_child(a, 0);
	assert_int_equal(idp_toml_type(e), IDP_TOML_TABLE);
	assert_null(idp_toml_key(e));
	assert_int_equal(idp_toml_line(e), 8);
	assert_int_equal(idp_toml_col(e), 1);
	assert_string_equal(idp_toml_string(at(e, "name"), NULL), "x");
	e = idp_toml_child(a, 1);
	assert_string_equal(idp_toml_string(at(e, "name"), NULL), "y");
	assert_int_equal(idp_toml_int(at(at(e, "extra"), "n")), 1);
	assert_false(idp_toml_is_table_array(at(r, "server")));
	idp_toml_free(doc);
}

static void
toml_allows_defining_implicit_and_dotted_parents_by_rule(void **state)
{
	struct idp_toml *doc;

	(void)state;
	/* [a.b] makes a implicitly; [a] may still define it once. */
	doc = parse_ok("[a.b]\nx = 1\n[a]\ny = 2\n");
	assert_int_equal(idp_toml_int(at(at(idp_toml_root(doc), "a"), "y")), 2);
	assert_int_equal(idp_toml_int(at(at(at(idp_toml_root(doc), "a"), "b"), "x")), 1);
	idp_toml_free(doc);
	/* A sub-table may be defined below a table that dotted keys made. */
	doc = parse_ok("[a]\nb.c = 1\n[a.b.d]\ne = 1\n");
	assert_int_equal(idp_toml_int(at(at(at(at(idp_toml_root(doc), "a"), "b"), "d"), "e")), 1);
	idp_toml_free(doc);
}

static void
toml_decodes_basic_string_escapes(void **state)
{
	struct idp_toml *doc =
	    parse_ok("s = \"\\b\\t\\n\\f\\r\\\"\\\\\\u00e9\\U0001F600 \\u4e2D\"\n");
	size_t len;
	const char *s = idp_toml_string(at(idp_toml_root(doc), "s"), &len);

	(void)state;
	assert_string_equal(s, "\b\t\n\f\r\"\\\xC3\xA9\xF0\x9F\x98\x80 \xE4\xB8\xAD");
	assert_int_equal(len, 7 + 2 + 4 + 1 + 3);
	idp_toml_free(doc);
}

static void
toml_reads_multiline_strings(void **state)
{
	struct idp_toml *doc = parse_ok("a = \"\"\"\n"
	                                "line1\n"
	                                "line2\\\n"
	                                "    \n"
	                                "   continued\"\"\"\n"
	                                "b = '''\n"
	                                "raw \\n \"text\"'''\n"
	                                "c = \"\"\"two \"\" quotes and \"\"one more\"\"\"\"\"\n"
	                                "d = '''x''''\n"
	                                "e = \"\"\"\r\nx\r\ny\"\"\"\r\n"
	                                "f = \"\"\"\"\"\"\n");
	const struct idp_toml_node *r = idp_toml_root(doc);

	(void)state;
	assert_string_equal(idp_toml_string(at(r, "a"), NULL), "line1\nline2continued");
	assert_string_equal(idp_toml_string(at(r, "b"), NULL), "raw \\n \"text\"");
	assert_string_equal(idp_toml_string(at(r, "c"), NULL),
	                    "two \"\" quotes and \"\"one more\"\"");
	assert_string_equal(idp_toml_string(at(r, "d"), NULL), "x'");
	assert_string_equal(idp_toml_string(at(r, "e"), NULL), "x\ny");
	assert_string_equal(idp_toml_string(at(r, "f"), NULL), "");
	/* Positions after a multi-line value follow its line breaks. */
	assert_pos(at(r, "b"), 6, 1, 6, 5);
	assert_pos(at(r, "c"), 8, 1, 8, 5);
	idp_toml_free(doc);
}

static void
toml_reads_arrays_with_comments_and_trailing_comma(void **state)
{
	struct idp_toml *doc = parse_ok("a = [ 1, 2, 3, ]\n"
	                                "b = [\n"
	                                "  \"x\", # first\n"
	                                "\n"
	                                "  \"y\",\n"
	                                "]\n"
	                                "c = [[1, 2], [\"s\"], []]\n"
	                                "d = []\n");
	const struct idp_toml_node *r = idp_toml_root(doc), *n;

	(void)state;
	n = at(r, "a");
	assert_int_equal(idp_toml_count(n), 3);
	assert_int_equal(idp_toml_int(idp_toml_child(n, 2)), 3);
	assert_false(idp_toml_is_table_array(n));
	n = at(r, "b");
	assert_int_equal(idp_toml_count(n), 2);
	assert_string_equal(idp_toml_string(idp_toml_child(n, 1), NULL), "y");
	assert_int_equal(idp_toml_line(idp_toml_child(n, 1)), 5);
	assert_int_equal(idp_toml_col(idp_toml_child(n, 1)), 3);
	assert_null(idp_toml_key(idp_toml_child(n, 1)));
	n = at(r, "c");
	assert_int_equal(idp_toml_count(n), 3);
	assert_int_equal(idp_toml_count(idp_toml_child(n, 0)), 2);
	assert_string_equal(idp_toml_string(idp_toml_child(idp_toml_child(n, 1), 0), NULL), "s");
	assert_int_equal(idp_toml_count(at(r, "d")), 0);
	idp_toml_free(doc);
}

static void
toml_accepts_crlf_bom_and_empty_input(void **state)
{
	struct idp_toml *doc;

	(void)state;
	doc = parse_ok("\xEF\xBB\xBF# c\r\na = 1\r\n[t]\r\nb = 'x' # c\r\n");
	assert_int_equal(idp_toml_int(at(idp_toml_root(doc), "a")), 1);
	assert_pos(at(idp_toml_root(doc), "a"), 2, 1, 2, 5);
	assert_string_equal(idp_toml_string(at(at(idp_toml_root(doc), "t"), "b"), NULL), "x");
	idp_toml_free(doc);
	doc = parse_ok("");
	assert_int_equal(idp_toml_count(idp_toml_root(doc)), 0);
	idp_toml_free(doc);
	doc = parse_ok("\n\n   # only comments\n\t\n");
	assert_int_equal(idp_toml_count(idp_toml_root(doc)), 0);
	idp_toml_free(doc);
}

static void
toml_free_null_is_noop(void **state)
{
	(void)state;
	idp_toml_free(NULL);
	assert_string_equal(idp_toml_type_name(IDP_TOML_INT), "integer");
	assert_string_equal(idp_toml_type_name(IDP_TOML_TABLE), "table");
}

/* ---- strings ---- */

static void
toml_rejects_unterminated_string_with_excerpt(void **state)
{
	unsigned count;
	const char *d = parse_fail_n("a = \"abc\nb = 1\n", 15, NULL, IDP_EINVAL, &count);

	(void)state;
	assert_string_equal(d, "t.toml:1:5: unterminated string\n"
	                       " 1 | a = \"abc\n"
	                       "   |     ^");
	assert_int_equal(count, 1);
	expect_error("a = 'abc", "t.toml:1:5: unterminated string");
	expect_error("x = 1\na = \"\"\"abc\n\n", "t.toml:2:5: unterminated string");
	expect_error("a = '''abc''", "t.toml:1:5: unterminated string");
	expect_error("\"key = 1", "t.toml:1:1: unterminated key");
}

static void
toml_rejects_bad_escape(void **state)
{
	(void)state;
	expect_error(
	    "a = \"x\\qy\"",
	    "t.toml:1:7: invalid escape sequence; the escapes are \\b \\t \\n \\f \\r \\\" "
	    "\\\\ \\uXXXX and \\UXXXXXXXX");
	/* \e and \x are TOML 1.1 and not accepted. */
	expect_error("a = \"\\e\"", "t.toml:1:6: invalid escape sequence; the escapes are \\b \\t "
	                            "\\n \\f \\r \\\" \\\\ \\uXXXX and \\UXXXXXXXX");
	/* A line-ending backslash is only for multi-line strings. */
	expect_error("a = \"x\\ \"", "t.toml:1:7: invalid escape sequence; the escapes are \\b "
	                             "\\t \\n \\f \\r \\\" \\\\ \\uXXXX and \\UXXXXXXXX");
	expect_error("a = \"\\u12\"", "t.toml:1:6: \\u escape needs 4 hexadecimal digits");
	expect_error("a = \"\\U0001F60\"", "t.toml:1:6: \\U escape needs 8 hexadecimal digits");
}

static void
toml_rejects_surrogates_and_out_of_range_escapes(void **state)
{
	(void)state;
	expect_error("a = \"\\uD800\"",
	             "t.toml:1:6: escape names a surrogate (U+D800 to U+DFFF), which is not a "
	             "character");
	expect_error("a = \"\\uDFFF\"",
	             "t.toml:1:6: escape names a surrogate (U+D800 to U+DFFF), which is not a "
	             "character");
	expect_error("a = \"\\U00110000\"",
	             "t.toml:1:6: escape is beyond U+10FFFF, the last Unicode character");
	expect_error("a = \"\\u0000\"", "t.toml:1:6: NUL characters are not supported in a string");
	/* A surrogate written as raw UTF-8 bytes is invalid UTF-8. */
	expect_error("a = \"\xED\xA0\x80\"", "t.toml:1:6: invalid UTF-8 in a string");
}

static void
toml_rejects_control_characters_and_bad_utf8(void **state)
{
	const char nul[] = "a = \"x\0y\"";
	unsigned count;

	(void)state;
	expect_error(
	    "a = \"x\x01y\"",
	    "t.toml:1:7: control character (byte 0x01) in a string; write it as an escape");
	expect_error(
	    "a = 'x\x7Fy'",
	    "t.toml:1:7: control character (byte 0x7F) in a string; write it as an escape");
	assert_string_equal(
	    first_line(parse_fail_n(nul, sizeof(nul) - 1, NULL, IDP_EINVAL, &count)),
	    "t.toml:1:7: control character (byte 0x00) in a string; write it as an "
	    "escape");
	expect_error("a = \"\xFF\"", "t.toml:1:6: invalid UTF-8 in a string");
	expect_error("a = \"\xC0\xAF\"", "t.toml:1:6: invalid UTF-8 in a string"); /* overlong */
	expect_error("# a\x01z\n", "t.toml:1:4: control character (byte 0x01) in a comment");
	expect_error("a = 1 # \xFE\n", "t.toml:1:9: invalid UTF-8 in a comment");
	expect_error(
	    "a = \"\"\"x\ry\"\"\"",
	    "t.toml:1:9: control character (byte 0x0D) in a string; write it as an escape");
	/* Columns count characters: the escape after é is at column 7. */
	expect_error("a = \"\xC3\xA9\\q\"", "t.toml:1:7: invalid escape sequence; the escapes are "
	                                    "\\b \\t \\n \\f \\r \\\" \\\\ \\uXXXX and "
	                                    "\\UXXXXXXXX");
}

static void
toml_rejects_too_many_quotes_closing_multiline(void **state)
{
	(void)state;
	expect_error("a = \"\"\"x\"\"\"\"\"\"",
	             "t.toml:1:9: more than two quotes before the end of a multi-line string");
}

/* ---- keys and tables ---- */

static void
toml_rejects_duplicate_keys(void **state)
{
	(void)state;
	expect_error("a = 1\nb = 2\na = 3\n",
	             "t.toml:3:1: duplicate key 'a' (first defined at line 1, column 1)");
	expect_error("[s]\nx.y = 1\nx.y = 2\n",
	             "t.toml:3:3: duplicate key 's.x.y' (first defined at line 2, column 3)");
	expect_error("\"a\" = 1\n'a' = 2\n",
	             "t.toml:2:1: duplicate key 'a' (first defined at line 1, column 1)");
	expect_error(
	    "[[t]]\n\"k k\" = 1\n\"k k\" = 2\n",
	    "t.toml:3:1: duplicate key 't[0].\"k k\"' (first defined at line 2, column 1)");
}

static void
toml_rejects_duplicate_tables(void **state)
{
	(void)state;
	expect_error("[s]\na = 1\n[s]\n",
	             "t.toml:3:1: duplicate table [s] (first defined at line 1, column 1)");
	expect_error("[a.b]\n[a]\n[a]\n",
	             "t.toml:3:1: duplicate table [a] (first defined at line 2, column 1)");
	/* A table made by dotted keys cannot be opened again with a header... */
	expect_error("a.b = 1\n[a]\n",
	             "t.toml:2:1: duplicate table [a] (first defined at line 1, column 1)");
	/* ...and a header-made table cannot be extended by dotted keys. */
	expect_error("[a.b]\nx = 1\n[a]\nb.y = 2\n",
	             "t.toml:4:1: a dotted key cannot add to table 'a.b', defined at line 1, "
	             "column 1");
	expect_error("a = 1\n[a.b]\n",
	             "t.toml:2:2: 'a' is already an integer (line 1, column 5), not a table");
	expect_error("a = 1\na.b = 2\n",
	             "t.toml:2:1: 'a' is already an integer (line 1, column 5), not a table");
	expect_error("[a]\n[[a]]\n",
	             "t.toml:2:1: cannot define [[a]]: 'a' is already a table (line 1, column 1)");
	expect_error("a = []\n[[a]]\n",
	             "t.toml:2:1: cannot define [[a]]: 'a' is already an array (line 1, column 5)");
	expect_error("[[a]]\n[a]\n", "t.toml:2:1: cannot define table [a]: it is already an array "
	                             "of tables (line 1, column 3)");
}

static void
toml_rejects_malformed_lines(void **state)
{
	(void)state;
	expect_error("a 1", "t.toml:1:3: expected '=' after the key, found '1'");
	expect_error("a =", "t.toml:1:4: expected a value, found end of file");
	expect_error("= 1", "t.toml:1:1: expected a key, found '='");
	expect_error("a. = 1", "t.toml:1:4: expected a key, found '='");
	expect_error("a = 1 b = 2", "t.toml:1:7: expected the end of the line, found 'b'");
	expect_error("a = 1\rb = 2", "t.toml:1:6: carriage return not followed by a line feed");
	expect_error("[a\n", "t.toml:1:3: expected ']' to close the header, found end of line");
	expect_error("[[a]\n", "t.toml:1:4: expected ']]' to close the header, found ']'");
	expect_error("[]\n", "t.toml:1:2: expected a key, found ']'");
	expect_error("\"\"\"a\"\"\" = 1", "t.toml:1:1: a multi-line string cannot be a key");
	expect_error("a = { b = 1 }",
	             "t.toml:1:5: inline tables are not supported; use a [table] section");
	expect_error("a = yes", "t.toml:1:5: invalid value: expected a \"string\", an integer, "
	                        "true, false or an [array]");
	expect_error("a = True", "t.toml:1:5: invalid value: expected a \"string\", an integer, "
	                         "true, false or an [array]");
}

/* ---- numbers and unsupported types ---- */

static void
toml_rejects_integer_overflow(void **state)
{
	(void)state;
	expect_error("a = 9223372036854775808",
	             "t.toml:1:5: integer does not fit in 64 bits (9223372036854775807 is the "
	             "largest)");
	expect_error("a = -9223372036854775809",
	             "t.toml:1:5: integer does not fit in 64 bits (-9223372036854775808 is the "
	             "smallest)");
	expect_error("a = 99999999999999999999999",
	             "t.toml:1:5: integer does not fit in 64 bits (9223372036854775807 is the "
	             "largest)");
}

static void
toml_rejects_malformed_integers(void **state)
{
	(void)state;
	expect_error("a = 012", "t.toml:1:5: leading zeros are not allowed in an integer");
	expect_error("a = -00", "t.toml:1:5: leading zeros are not allowed in an integer");
	expect_error("a = 1__0", "t.toml:1:5: '_' in an integer must stand between two digits");
	expect_error("a = 1_", "t.toml:1:5: '_' in an integer must stand between two digits");
	expect_error("a = _1", "t.toml:1:5: '_' in an integer must stand between two digits");
	expect_error("a = 0xff", "t.toml:1:5: only decimal integers are supported");
	expect_error("a = 0o17", "t.toml:1:5: only decimal integers are supported");
	expect_error("a = 0b1", "t.toml:1:5: only decimal integers are supported");
}

static void
toml_rejects_floats_and_dates_with_clear_message(void **state)
{
	(void)state;
	expect_error("a = 3.14", "t.toml:1:5: floating-point numbers are not supported");
	expect_error("a = 1e6", "t.toml:1:5: floating-point numbers are not supported");
	expect_error("a = -2.5E-3", "t.toml:1:5: floating-point numbers are not supported");
	expect_error("a = inf", "t.toml:1:5: floating-point numbers are not supported");
	expect_error("a = -nan", "t.toml:1:5: floating-point numbers are not supported");
	expect_error("a = 1979-05-27", "t.toml:1:5: dates and times are not supported");
	expect_error("a = 1979-05-27T07:32:00Z", "t.toml:1:5: dates and times are not supported");
	expect_error("a = 07:32:00", "t.toml:1:5: dates and times are not supported");
	expect_error("a = [1, 2.5]", "t.toml:1:9: floating-point numbers are not supported");
}

/* ---- arrays ---- */

static void
toml_rejects_bad_arrays(void **state)
{
	(void)state;
	expect_error("a = [1, \"x\"]", "t.toml:1:9: array elements must all have one type: this "
	                               "is a string, the first is an integer");
	expect_error("a = [[1], 2]", "t.toml:1:11: array elements must all have one type: this is "
	                             "an integer, the first is an array");
	expect_error("a = [1, 2\n", "t.toml:1:5: unterminated array");
	expect_error("a = [1 2]", "t.toml:1:8: expected ',' or ']' in an array, found '2'");
	expect_error("a = [,]", "t.toml:1:6: expected a value, found ','");
}

/* ---- limits ---- */

static char *
repeat(const char *head, const char *unit, size_t n, const char *tail)
{
	size_t hl = strlen(head), ul = strlen(unit), tl = strlen(tail);
	char *s = malloc(hl + ul * n + tl + 1), *p = s;

	assert_non_null(s);
	memcpy(p, head, hl);
	p += hl;
	for (size_t i = 0; i < n; i++, p += ul)
		memcpy(p, unit, ul);
	memcpy(p, tail, tl + 1);
	return s;
}

static void
toml_enforces_depth_limit(void **state)
{
	char *ok = repeat("a = ", "[", IDP_TOML_MAX_DEPTH, "");
	char *bad = repeat("a = ", "[", IDP_TOML_MAX_DEPTH + 1, "");
	char *full, *hdr, *dotted;
	struct idp_toml *doc;

	(void)state;
	full = repeat(ok, "]", IDP_TOML_MAX_DEPTH, "\n");
	doc = parse_ok(full);
	idp_toml_free(doc);
	free(full);
	full = repeat(bad, "]", IDP_TOML_MAX_DEPTH + 1, "\n");
	/* The 17th '[' is at column 5 + 16. */
	expect_error(full, "t.toml:1:21: nesting deeper than 16 levels");
	free(full);
	hdr = repeat("[a", ".a", IDP_TOML_MAX_DEPTH, "]\n");
	expect_error(hdr, "t.toml:1:34: nesting deeper than 16 levels");
	dotted = repeat("[t]\na", ".a", IDP_TOML_MAX_DEPTH - 1, " = 1\n");
	expect_error(dotted, "t.toml:2:1: nesting deeper than 16 levels");
	free(ok);
	free(bad);
	free(hdr);
	free(dotted);
}

static void
toml_enforces_size_limit(void **state)
{
	size_t n = IDP_TOML_MAX_INPUT + 1;
	char *big = malloc(n);
	unsigned count;
	const char *d;

	(void)state;
	assert_non_null(big);
	memset(big, '\n', n);
	d = parse_fail_n(big, n, NULL, IDP_ETOOBIG, &count);
	assert_string_equal(d,
	                    "t.toml:1:1: input is 1048577 bytes, more than the limit of 1048576");
	assert_int_equal(count, 1);
	/* Exactly at the limit is fine. */
	{
		struct idp_toml *doc = NULL;
		struct idp_diag dg;

		idp_diag_init(&dg);
		assert_int_equal(idp_toml_parse("t.toml", big, n - 1, NULL, &doc, &dg), IDP_OK);
		idp_toml_free(doc);
	}
	free(big);
}

static void
toml_enforces_string_and_key_length_limits(void **state)
{
	char *ok = repeat("a = \"", "x", IDP_TOML_MAX_STRING, "\"");
	char *bad = repeat("a = \"", "x", IDP_TOML_MAX_STRING + 1, "\"");
	char *longkey = repeat("", "k", IDP_TOML_MAX_KEY + 1, " = 1");
	char *okkey = repeat("", "k", IDP_TOML_MAX_KEY, " = 1");
	struct idp_toml *doc;
	size_t len;

	(void)state;
	doc = parse_ok(ok);
	idp_toml_string(at(idp_toml_root(doc), "a"), &len);
	assert_int_equal(len, IDP_TOML_MAX_STRING);
	idp_toml_free(doc);
	expect_error(bad, "t.toml:1:5: string is longer than 65536 bytes");
	expect_error(longkey, "t.toml:1:1: key is longer than 256 bytes");
	doc = parse_ok(okkey);
	idp_toml_free(doc);
	free(ok);
	free(bad);
	free(longkey);
	free(okkey);
}

static void
toml_enforces_key_and_value_count_limits(void **state)
{
	struct idp_buf b;
	char *many;

	(void)state;
	idp_buf_init(&b, 0);
	for (int i = 0; i <= IDP_TOML_MAX_KEYS; i++)
		assert_int_equal(idp_buf_printf(&b, "k%d = %d\n", i, i), IDP_OK);
	expect_error(idp_buf_str(&b), "t.toml:1025:1: the top-level table has more than 1024 keys");
	idp_buf_reset(&b);
	assert_int_equal(idp_buf_puts(&b, "[t]\n"), IDP_OK);
	for (int i = 0; i <= IDP_TOML_MAX_KEYS; i++)
		assert_int_equal(idp_buf_printf(&b, "k%d = %d\n", i, i), IDP_OK);
	expect_error(idp_buf_str(&b), "t.toml:1026:1: table 't' has more than 1024 keys");
	idp_buf_cleanup(&b);
	/* Root and array are two values; the 65535th element is one too many. */
	many = repeat("a = [", "1,", IDP_TOML_MAX_VALUES, "]");
	expect_error(many, "t.toml:1:131074: more than 65536 values in one document");
	free(many);
}

/* ---- error collection and excerpts ---- */

static void
toml_collects_errors_from_several_lines(void **state)
{
	unsigned count;
	const char *text = "a = 1.5\nb = 2\nc = \"\\q\"\nd = yes\n[e\nf = 1\nf = 2\n";
	const char *d = parse_fail_n(text, strlen(text), NULL, IDP_EINVAL, &count);

	(void)state;
	assert_int_equal(count, 4);
	assert_non_null(strstr(d, "t.toml:1:5: floating-point numbers are not supported\n"));
	assert_non_null(strstr(d, "t.toml:3:6: invalid escape sequence"));
	assert_non_null(strstr(d, "t.toml:4:5: invalid value"));
	assert_non_null(strstr(d, "t.toml:5:3: expected ']' to close the header"));
	/* Keys after a bad header are checked but stored nowhere, so no duplicate. */
	assert_null(strstr(d, "duplicate"));
}

static void
toml_stops_after_too_many_errors(void **state)
{
	char *text = repeat("", "a = yes\n", IDP_TOML_MAX_ERRORS + 5, "");
	unsigned count;
	const char *d = parse_fail_n(text, strlen(text), NULL, IDP_EINVAL, &count);

	(void)state;
	assert_int_equal(count, IDP_TOML_MAX_ERRORS + 1);
	assert_non_null(strstr(d, "t.toml: too many errors; stopped reading"));
	assert_null(strstr(d, "t.toml:21:"));
	free(text);
}

static void
toml_stops_at_first_error_inside_an_array(void **state)
{
	/* Resuming at the next line inside an array would report nonsense. */
	expect_error("a = [1, 1.5,\n2]\nb = yes\n",
	             "t.toml:1:9: floating-point numbers are not supported");
	(void)state;
}

static void
toml_excerpt_marks_tabs_and_long_lines(void **state)
{
	unsigned count;
	const char *d;
	char *line;

	(void)state;
	d = parse_fail_n("a =\t\"\\q\"", 8, NULL, IDP_EINVAL, &count);
	assert_non_null(strstr(d, "\n 1 | a =\t\"\\q\"\n   |    \t ^"));
	/* A long line shows a window around the column, marked with "...". */
	line = repeat("a = [", "1, ", 100, "x]");
	d = parse_fail_n(line, strlen(line), NULL, IDP_EINVAL, &count);
	assert_string_equal(first_line(d), "t.toml:1:306: invalid value: expected a \"string\", an "
	                                   "integer, true, false or an [array]");
	assert_non_null(strstr(d, "\n 1 | ..., 1, 1, "));
	assert_non_null(strstr(d, "x]\n   |    "));
	free(line);
	/* Unprintable bytes in the quoted line show as '?'. */
	d = parse_fail_n("a = \"\x01\"", 7, NULL, IDP_EINVAL, &count);
	assert_non_null(strstr(d, "\n 1 | a = \"?\"\n   |      ^"));
}

static bool
url_is_secret(const char *path, void *arg)
{
	(*(int *)arg)++;
	return strcmp(path, "db.url") == 0;
}

static void
toml_never_quotes_secret_lines(void **state)
{
	struct idp_toml_opts opts = {url_is_secret, NULL};
	const char *text, *d;
	unsigned count;
	int calls = 0;

	(void)state;
	opts.arg = &calls;
	text = "[db]\nurl = \"postgresql://u:hunter2@h/\\q\"\n";
	d = parse_fail_n(text, strlen(text), &opts, IDP_EINVAL, &count);
	assert_string_equal(d, "t.toml:2:33: invalid escape sequence; the escapes are \\b \\t \\n "
	                       "\\f \\r \\\" \\\\ \\uXXXX and \\UXXXXXXXX");
	assert_true(calls > 0);
	text = "[db]\nurl = \"postgresql://u:hunter2@h\" junk\n";
	d = parse_fail_n(text, strlen(text), &opts, IDP_EINVAL, &count);
	assert_string_equal(d, "t.toml:2:34: expected the end of the line, found 'j'");
	text = "[db]\nurl \"postgresql://u:hunter2@h\"\n";
	d = parse_fail_n(text, strlen(text), &opts, IDP_EINVAL, &count);
	assert_string_equal(d, "t.toml:2:5: expected '=' after the key, found '\"'");
	text = "[db]\nurl = \"\"\"\npostgresql://u:hunter2@h\n\\q\"\"\"\n";
	d = parse_fail_n(text, strlen(text), &opts, IDP_EINVAL, &count);
	assert_null(strstr(d, "hunter2"));
	assert_null(strstr(d, " | "));
	/* The same error on a key that is not secret shows its line ... */
	text = "[db]\nname = \"postgres-main\\q\"\n";
	d = parse_fail_n(text, strlen(text), &opts, IDP_EINVAL, &count);
	assert_non_null(strstr(d, " 2 | name = "));
	/* ... unless the line holds a URL with credentials, whatever its key. */
	text = "[db]\nname = \"postgresql://u:hunter2@h/\\q\"\n";
	d = parse_fail_n(text, strlen(text), &opts, IDP_EINVAL, &count);
	assert_null(strstr(d, "hunter2"));
	assert_non_null(strstr(d, "not shown"));
	/* A line whose key cannot be read may hold anything: not shown either
	 * (a quote left open, a value where a key goes), but a header is. */
	text = "[db]\n\"hunter2\n= \"hunter2\"\n[db\n";
	d = parse_fail_n(text, strlen(text), &opts, IDP_EINVAL, &count);
	assert_int_equal(count, 3);
	assert_null(strstr(d, "hunter2"));
	assert_non_null(strstr(d, " 4 | [db\n"));
	/* Nor is a comment, or what follows a header on its line. */
	text = "[db] junk = \"hunter2\"\nname = \"x\\q\" # hunter2\n";
	d = parse_fail_n(text, strlen(text), &opts, IDP_EINVAL, &count);
	assert_int_equal(count, 2);
	assert_null(strstr(d, "hunter2"));
	assert_non_null(strstr(d, " 1 | [db]\n"));
	assert_non_null(strstr(d, " 2 | name = \"x\\q\"\n"));
	/* A multi-line string of a key that is not secret, left open, swallows
	 * a secret line: an error inside it quotes only the value's first line. */
	text = "[log]\nlevel = \"\"\"\n[db]\nurl = \"hunter2\\q\"\n";
	d = parse_fail_n(text, strlen(text), &opts, IDP_EINVAL, &count);
	assert_null(strstr(d, "hunter2"));
	text = "[log]\nlevels = [\"a\",\n\"hunter2\\q\"]\n";
	d = parse_fail_n(text, strlen(text), &opts, IDP_EINVAL, &count);
	assert_null(strstr(d, "hunter2"));
	/* A secret key run onto a harmless key's line is not quoted with it. */
	text = "[db]\nname = \"x\" url = \"s3cr3t-hunter2\"\n";
	d = parse_fail_n(text, strlen(text), &opts, IDP_EINVAL, &count);
	assert_null(strstr(d, "hunter2"));
	assert_non_null(strstr(d, " 2 | name = \"x\"\n"));
	text = "[db]\nports = [1, 2] url = \"s3cr3t-hunter2\"\n";
	d = parse_fail_n(text, strlen(text), &opts, IDP_EINVAL, &count);
	assert_null(strstr(d, "hunter2"));
	text = "[db]\n\"hunter2\n= \"hunter2\"\n[db\n";
	/* Without is_secret, every line may be quoted. */
	d = parse_fail_n(text, strlen(text), NULL, IDP_EINVAL, &count);
	assert_non_null(strstr(d, "hunter2"));
}

static void
toml_error_excerpt_can_stop_at_the_key(void **state)
{
	struct idp_toml *doc = parse_ok("server.prot = \"x\" # secret-ish\n[\"we ird\"]\n");
	struct idp_diag d;

	(void)state;
	idp_diag_init(&d);
	idp_toml_error(doc, &d, 1, 1, IDP_TOML_EXCERPT_KEY, "%s: unknown", "server.prot");
	assert_string_equal(idp_diag_str(&d), "t.toml:1:1: server.prot: unknown\n"
	                                      " 1 | server\n"
	                                      "   | ^");
	idp_diag_init(&d);
	idp_toml_error(doc, &d, 2, 2, IDP_TOML_EXCERPT_KEY, "odd");
	assert_string_equal(idp_diag_str(&d), "t.toml:2:2: odd\n"
	                                      " 2 | [\"we ird\"]\n"
	                                      "   |  ^");
	idp_diag_init(&d);
	idp_toml_error(doc, &d, 2, 1, IDP_TOML_EXCERPT_NONE, "plain");
	assert_string_equal(idp_diag_str(&d), "t.toml:2:1: plain");
	idp_toml_free(doc);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(toml_reads_scalars_with_positions),
	    cmocka_unit_test(toml_reads_tables_dotted_keys_and_table_arrays),
	    cmocka_unit_test(toml_allows_defining_implicit_and_dotted_parents_by_rule),
	    cmocka_unit_test(toml_decodes_basic_string_escapes),
	    cmocka_unit_test(toml_reads_multiline_strings),
	    cmocka_unit_test(toml_reads_arrays_with_comments_and_trailing_comma),
	    cmocka_unit_test(toml_accepts_crlf_bom_and_empty_input),
	    cmocka_unit_test(toml_free_null_is_noop),
	    cmocka_unit_test(toml_rejects_unterminated_string_with_excerpt),
	    cmocka_unit_test(toml_rejects_bad_escape),
	    cmocka_unit_test(toml_rejects_surrogates_and_out_of_range_escapes),
	    cmocka_unit_test(toml_rejects_control_characters_and_bad_utf8),
	    cmocka_unit_test(toml_rejects_too_many_quotes_closing_multiline),
	    cmocka_unit_test(toml_rejects_duplicate_keys),
	    cmocka_unit_test(toml_rejects_duplicate_tables),
	    cmocka_unit_test(toml_rejects_malformed_lines),
	    cmocka_unit_test(toml_rejects_integer_overflow),
	    cmocka_unit_test(toml_rejects_malformed_integers),
	    cmocka_unit_test(toml_rejects_floats_and_dates_with_clear_message),
	    cmocka_unit_test(toml_rejects_bad_arrays),
	    cmocka_unit_test(toml_enforces_depth_limit),
	    cmocka_unit_test(toml_enforces_size_limit),
	    cmocka_unit_test(toml_enforces_string_and_key_length_limits),
	    cmocka_unit_test(toml_enforces_key_and_value_count_limits),
	    cmocka_unit_test(toml_collects_errors_from_several_lines),
	    cmocka_unit_test(toml_stops_after_too_many_errors),
	    cmocka_unit_test(toml_stops_at_first_error_inside_an_array),
	    cmocka_unit_test(toml_excerpt_marks_tabs_and_long_lines),
	    cmocka_unit_test(toml_never_quotes_secret_lines),
	    cmocka_unit_test(toml_error_excerpt_can_stop_at_the_key),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
