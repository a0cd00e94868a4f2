/*
 * toml.h - a strict subset of TOML 1.0 read into a small document tree.
 *
 * The document owns every node and a copy of the source text, which it keeps
 * so that later stages (config validation) can quote the offending line in
 * their own errors.  Every key and every value records its 1-based line and
 * column; columns count characters (UTF-8 code points), not bytes.
 *
 * Supported: comments; bare, "basic" and 'literal' keys; dotted keys;
 * [tables]; [[arrays.of.tables]]; basic strings with the TOML escapes;
 * literal strings; multi-line basic and literal strings; decimal integers
 * (sign, `_` separators, 64-bit); booleans; arrays whose elements share one
 * type.  Not supported, and rejected with a message saying so: floats,
 * dates and times, hexadecimal/octal/binary integers, inline tables, and
 * NUL characters in strings.
 *
 * Everything is bounded: input size, nesting depth, string and key length,
 * keys per table and values per document (the IDP_TOML_MAX_* below).
 * A parsed document is immutable and may be read from any thread.
 */
#ifndef IDPD_TOML_H
#define IDPD_TOML_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "idpd/common.h"

#define IDP_TOML_MAX_INPUT (1024 * 1024) /* bytes of source text */
#define IDP_TOML_MAX_DEPTH 16            /* tables and arrays nested below the root */
#define IDP_TOML_MAX_STRING 65536        /* bytes of one decoded string value */
#define IDP_TOML_MAX_KEY 256             /* bytes of one key (one part of a dotted key) */
#define IDP_TOML_MAX_KEYS 1024           /* keys in one table */
#define IDP_TOML_MAX_VALUES 65536        /* values (tables included) in one document */
#define IDP_TOML_MAX_ERRORS 20           /* syntax errors reported before giving up */

struct idp_toml;      /* a parsed document */
struct idp_toml_node; /* one value in it: a table, an array or a scalar */

enum idp_toml_type {
	IDP_TOML_TABLE,
	IDP_TOML_ARRAY,
	IDP_TOML_STRING,
	IDP_TOML_INT,
	IDP_TOML_BOOL,
};

struct idp_toml_opts {
	/*
	 * Optional.  Called with the dotted path of each key before its value
	 * is read ("database.url"; array-of-tables elements carry no index).
	 * When it is set, an error excerpt quotes only [header] lines and the
	 * lines, from key to end of value, of keys for which it returned
	 * false: never a line whose key it flagged (a secret, or a key it
	 * does not know, which may be a misspelt secret) nor one whose key
	 * could not be read.  An excerpt asked to stop at a key may still show
	 * such a line up to that key when no '=' comes before it.  Unset,
	 * every line may be quoted.
	 */
	bool (*is_secret)(const char *path, void *arg);
	void *arg;
};

/*
 * Parse len bytes of text; name is the file name used in messages.  opts
 * may be NULL.  On success *out is a new document the caller owns
 * (idp_toml_free).  On failure *out is NULL, the return is IDP_EINVAL (or
 * IDP_ETOOBIG for an input over IDP_TOML_MAX_INPUT) and diag holds one
 * entry per error, each "name:line:column: message" followed, where it
 * helps, by the source line and a caret under the column.  Error messages
 * never contain the contents of a string.  Touches no global state.
 */
int idp_toml_parse(const char *name, const char *text, size_t len, const struct idp_toml_opts *opts,
                   struct idp_toml **out, struct idp_diag *diag) IDP_WUR;

/* Wipes the source text and every string, then frees.  NULL is a no-op. */
void idp_toml_free(struct idp_toml *doc);

/* The root table; never NULL.  Valid while the document lives. */
const struct idp_toml_node *idp_toml_root(const struct idp_toml *doc);
/* The name given to idp_toml_parse. */
const char *idp_toml_name(const struct idp_toml *doc);

/* "table", "array", "string", "integer" or "boolean". */
const char *idp_toml_type_name(enum idp_toml_type type);

/* Node accessors.  Each takes a non-NULL node of the right type. */
enum idp_toml_type idp_toml_type(const struct idp_toml_node *n);
/* The key naming n in its table; NULL for the root and array elements. */
const char *idp_toml_key(const struct idp_toml_node *n);
/* Where that key is written (for a table, its name in the header). */
unsigned idp_toml_key_line(const struct idp_toml_node *n);
unsigned idp_toml_key_col(const struct idp_toml_node *n);
/* Where the value starts; for a table, its [header] or [[header]]. */
unsigned idp_toml_line(const struct idp_toml_node *n);
unsigned idp_toml_col(const struct idp_toml_node *n);
/* Entries of a table or elements of an array, in source order. */
size_t idp_toml_count(const struct idp_toml_node *n);
const struct idp_toml_node *idp_toml_child(const struct idp_toml_node *n, size_t i);
/* The value of key in table t, or NULL. */
const struct idp_toml_node *idp_toml_get(const struct idp_toml_node *t, const char *key);
/* True for an array built from [[header]] sections. */
bool idp_toml_is_table_array(const struct idp_toml_node *n);
/* String contents (UTF-8, never containing NUL) and their length. */
const char *idp_toml_string(const struct idp_toml_node *n, size_t *len);
int64_t idp_toml_int(const struct idp_toml_node *n);
bool idp_toml_bool(const struct idp_toml_node *n);

/* How much of the source line an error shows under its message. */
enum idp_toml_excerpt {
	IDP_TOML_EXCERPT_NONE, /* the message alone */
	IDP_TOML_EXCERPT_LINE, /* the whole line (only where opts->is_secret allows) */
	IDP_TOML_EXCERPT_KEY,  /* the line only up to the end of the key at the column */
};

/*
 * Append one error about doc to diag: "name:line:column: message", then the
 * excerpt asked for, where opts->is_secret allows one (see there).
 */
void idp_toml_error(const struct idp_toml *doc, struct idp_diag *diag, unsigned line, unsigned col,
                    enum idp_toml_excerpt excerpt, const char *fmt, ...) IDP_PRINTF(6, 7);

#endif /* IDPD_TOML_H */
