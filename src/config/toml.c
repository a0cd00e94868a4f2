/*
 * toml.c - the strict TOML subset reader (see toml.h).
 *
 * One pass over the text.  A scanner keeps line and column as it advances; a
 * recursive-descent parser reads keys and values; the table rules of TOML 1.0
 * (no key or table defined twice, dotted keys only extend tables they created
 * themselves, [[x]] appends to an array that only [[x]] may build) are kept by
 * recording how each table came to exist.
 *
 * Errors are collected, not just the first: after a syntax error the parser
 * skips to the next line and goes on, except inside an array, where no line
 * boundary can be trusted, and after a size limit, where going on would be
 * work an attacker chooses.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "idpd/buf.h"
#include "idpd/toml.h"

/* How a table or an array came to exist; decides what may extend it. */
enum origin {
	ORIGIN_ROOT,
	ORIGIN_IMPLICIT, /* parent named in an [a.b] header; may be defined by [a] later */
	ORIGIN_HEADER,   /* defined by its own [header] */
	ORIGIN_DOTTED,   /* created by a dotted key a.b = v; only dotted keys extend it */
	ORIGIN_ELEMENT,  /* one [[header]] section */
	ORIGIN_VALUE,    /* an array written as a value: a = [...] */
	ORIGIN_TABLES,   /* the array that [[header]] sections append to */
};

struct idp_toml_node {
	enum idp_toml_type type;
	enum origin origin;
	unsigned line, col;
	unsigned key_line, key_col;
	unsigned depth;
	char *key;
	struct idp_toml_node *parent;
	size_t index; /* position in the parent */
	union {
		struct {
			char *s;
			size_t len;
		} str;
		int64_t i;
		bool b;
		struct {
			struct idp_toml_node **v;
			size_t n, cap;
		} kids;
	} u;
};

/* Lines first..last may be quoted in an error (see struct idp_toml). */
struct line_range {
	unsigned first, last;
};

struct idp_toml {
	char *name;
	char *text;
	size_t len;
	struct idp_toml_node *root;
	/*
	 * With opts->is_secret (guarded), an error quotes only lines known to
	 * hold no secret: [headers] and the lines of key/values whose key
	 * is_secret cleared.  A line whose key could not be read, or whose key
	 * is unknown or secret, may hold anything, so it is never quoted.
	 * Without is_secret every line may be quoted.
	 */
	bool guarded;
	struct line_range *shown;
	size_t n_shown, cap_shown;
};

struct pos {
	unsigned line, col;
};

struct keypart {
	char *s;
	struct pos at;
};

struct parser {
	struct idp_toml *doc;
	const char *s;
	size_t len, pos;
	unsigned line, col;
	struct idp_diag *diag;
	const struct idp_toml_opts *opts;
	unsigned nerr;
	size_t nvalues;
	bool stop;                 /* a limit was hit, or no way to resynchronise */
	struct idp_toml_node *cur; /* where key/values go; NULL after a bad header */
	struct idp_buf path;       /* dotted path of cur, for opts->is_secret */
	unsigned shown_from;       /* first line of the cleared key or header being read, or 0 */
};

static const char escapes_help[] = "the escapes are \\b \\t \\n \\f \\r \\\" \\\\ \\uXXXX "
                                   "and \\UXXXXXXXX";

/* ---- UTF-8 ---- */

/*
 * Decode one UTF-8 sequence of at most n bytes.  Returns its length, or 0 if
 * it is malformed, overlong, a surrogate or beyond U+10FFFF.
 */
static size_t
utf8_decode(const unsigned char *s, size_t n, uint32_t *cp)
{
	size_t len;
	uint32_t c, min;

	if (n == 0)
		return 0;
	if (s[0] < 0x80) {
		*cp = s[0];
		return 1;
	} else if ((s[0] & 0xE0) == 0xC0) {
		len = 2;
		c = s[0] & 0x1F;
		min = 0x80;
	} else if ((s[0] & 0xF0) == 0xE0) {
		len = 3;
		c = s[0] & 0x0F;
		min = 0x800;
	} else if ((s[0] & 0xF8) == 0xF0) {
		len = 4;
		c = s[0] & 0x07;
		min = 0x10000;
	} else {
		return 0;
	}
	if (n < len)
		return 0;
	for (size_t i = 1; i < len; i++) {
		if ((s[i] & 0xC0) != 0x80)
			return 0;
		c = (c << 6) | (s[i] & 0x3F);
	}
	if (c < min || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF))
		return 0;
	*cp = c;
	return len;
}

static size_t
utf8_encode(uint32_t c, char out[4])
{
	if (c < 0x80) {
		out[0] = (char)c;
		return 1;
	} else if (c < 0x800) {
		out[0] = (char)(0xC0 | (c >> 6));
		out[1] = (char)(0x80 | (c & 0x3F));
		return 2;
	} else if (c < 0x10000) {
		out[0] = (char)(0xE0 | (c >> 12));
		out[1] = (char)(0x80 | ((c >> 6) & 0x3F));
		out[2] = (char)(0x80 | (c & 0x3F));
		return 3;
	}
	out[0] = (char)(0xF0 | (c >> 18));
	out[1] = (char)(0x80 | ((c >> 12) & 0x3F));
	out[2] = (char)(0x80 | ((c >> 6) & 0x3F));
	out[3] = (char)(0x80 | (c & 0x3F));
	return 4;
}

/* ---- error messages and excerpts ---- */

static bool
is_bare_key_char(int c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
	       c == '_' || c == '-';
}

/* Append key to b, quoted and escaped unless it is a bare key. */
static void
put_key(struct idp_buf *b, const char *key)
{
	bool bare = key[0] != '\0';
	int rc = 0;

	for (const char *k = key; *k != '\0'; k++)
		if (!is_bare_key_char((unsigned char)*k))
			bare = false;
	if (bare) {
		rc = idp_buf_puts(b, key);
	} else {
		rc = idp_buf_putc(b, '"');
		for (const unsigned char *k = (const unsigned char *)key; rc == 0 && *k; k++) {
			if (*k < 0x20 || *k == 0x7F)
				rc = idp_buf_printf(b, "\\u%04X", *k);
			else if (*k == '"' || *k == '\\')
				rc = idp_buf_printf(b, "\\%c", *k);
			else
				rc = idp_buf_putc(b, (char)*k);
		}
		if (rc == 0)
			rc = idp_buf_putc(b, '"');
	}
	/* A message key cut short by the buffer cap is still a fine message. */
	(void)rc;
}

/* Append the dotted path of n ("server.port", "api_keys[1].name") to b. */
static void
put_path(struct idp_buf *b, const struct idp_toml_node *n)
{
	const struct idp_toml_node *chain[IDP_TOML_MAX_DEPTH + 2];
	size_t depth = 0;

	for (; n != NULL && n->parent != NULL && depth < IDP_ARRAY_LEN(chain); n = n->parent)
		chain[depth++] = n;
	while (depth > 0) {
		n = chain[--depth];
		if (n->parent->type == IDP_TOML_ARRAY) {
			if (idp_buf_printf(b, "[%zu]", n->index) != 0)
				return;
		} else {
			if (b->len > 0 && idp_buf_putc(b, '.') != 0)
				return;
			put_key(b, n->key);
		}
	}
}

/* The path of n, with extra appended as one more key when not NULL. */
static char *
path_str(const struct idp_toml_node *n, const char *extra)
{
	struct idp_buf b;

	idp_buf_init(&b, 1024);
	put_path(&b, n);
	if (extra != NULL) {
		if (b.len > 0 && idp_buf_putc(&b, '.') != 0)
			return idp_buf_take(&b, NULL);
		put_key(&b, extra);
	}
	return idp_buf_take(&b, NULL);
}

/*
 * Whether an error may quote line: always when doc is not guarded, else
 * only a line of a cleared key/value or header, recorded (show_lines), or
 * the first line of one being read (shown_from; 0: none is).  Only its
 * first: a multi-line string or array left open swallows the lines after
 * it, which may be another key's secret.
 */
static bool
line_shown(const struct idp_toml *doc, unsigned line, unsigned shown_from)
{
	if (!doc->guarded)
		return true;
	if (shown_from != 0 && line == shown_from)
		return true;
	for (size_t i = 0; i < doc->n_shown; i++)
		if (line >= doc->shown[i].first && line <= doc->shown[i].last)
			return true;
	return false;
}

static void
show_lines(struct idp_toml *doc, unsigned first, unsigned last)
{
	struct line_range *h;

	if (doc->n_shown > 0) {
		h = &doc->shown[doc->n_shown - 1];
		if (first <= h->last + 1 && first >= h->first) {
			if (last > h->last)
				h->last = last;
			return;
		}
	}
	if (doc->n_shown == doc->cap_shown) {
		doc->cap_shown = doc->cap_shown ? doc->cap_shown * 2 : 4;
		doc->shown = idp_xrealloc(doc->shown, doc->cap_shown * sizeof(*doc->shown));
	}
	doc->shown[doc->n_shown].first = first;
	doc->shown[doc->n_shown].last = last;
	doc->n_shown++;
}

/* Byte length of the character group that starts at s (a lead byte and its continuations). */
static size_t
char_len(const char *s, const char *end)
{
	size_t n = 1;

	while (s + n < end && ((unsigned char)s[n] & 0xC0) == 0x80)
		n++;
	return n;
}

/* Where a key written at p ends: a quoted key to its closing quote, a bare key to its last char. */
static const char *
key_end(const char *p, const char *end)
{
	if (p < end && (*p == '"' || *p == '\'')) {
		char q = *p++;

		while (p < end && *p != q) {
			if (q == '"' && *p == '\\' && p + 1 < end)
				p++;
			p++;
		}
		return p < end ? p + 1 : p;
	}
	while (p < end && is_bare_key_char((unsigned char)*p))
		p++;
	return p;
}

/*
 * Whether the excerpt of a line no key cleared may still stop at the key
 * written at col: only when no '=' comes before that key's end on the
 * line, so that all it shows is key names, which the message names too.
 */
static bool
key_only_excerpt(const struct idp_toml *doc, unsigned line, unsigned col)
{
	const char *p = doc->text, *end = doc->text + doc->len, *eol, *c;
	unsigned l = 1, i;

	while (l < line && p < end) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));

		if (nl == NULL)
			return false;
		p = nl + 1;
		l++;
	}
	if (l != line || col == 0)
		return false;
	eol = memchr(p, '\n', (size_t)(end - p));
	if (eol == NULL)
		eol = end;
	for (c = p, i = 1; c < eol && i < col; i++) {
		if (*c == '=')
			return false;
		c += char_len(c, eol);
	}
	c = key_end(c, eol);
	return memchr(p, '=', (size_t)(c - p)) == NULL;
}

/*
 * Where the excerpt of the line p..eol stops: before a comment, which may
 * say anything (a key kept for later, say), and on a [header] line right
 * after the header, since only the header is known to hold no value.
 * Strings are stepped over, so a '#' or ']' inside one does not count.
 */
/* Past the quoted string opening at c (its quote included), or stop if it runs on. */
static const char *
skip_quoted(const char *c, const char *stop)
{
	char q = *c++;

	while (c < stop && *c != q) {
		if (q == '"' && *c == '\\' && c + 1 < stop)
			c++;
		c++;
	}
	return c < stop ? c + 1 : c;
}

static const char *
excerpt_end(const char *p, const char *eol, bool header)
{
	const char *c = p;

	while (c < eol) {
		if (*c == '"' || *c == '\'') {
			c = skip_quoted(c, eol);
			continue;
		}
		if (*c == '#')
			break;
		if (header && *c == ']') {
			c++;
			if (c < eol && *c == ']')
				c++;
			return c;
		}
		c++;
	}
	while (c > p && (c[-1] == ' ' || c[-1] == '\t'))
		c--;
	return c;
}

/*
 * Where the first key = value of the line p..eol ends (after a quoted
 * string, a bracketed array or inline table, or a bare word), or stop if
 * that is sooner.  A guarded excerpt ends there: what follows the value on
 * the same line (another key run onto it, say) may be a secret.
 */
static const char *
first_value_end(const char *p, const char *stop)
{
	const char *c = p;
	int depth = 0;

	while (c < stop && *c != '=') {
		if (*c == '"' || *c == '\'')
			return stop; /* a quoted key: no shortcut, excerpt_end's rules */
		c++;
	}
	if (c == stop)
		return stop;
	for (c++; c < stop && (*c == ' ' || *c == '\t'); c++)
		;
	while (c < stop) {
		if (*c == '"' || *c == '\'') {
			c = skip_quoted(c, stop);
		} else if (*c == '[' || *c == '{') {
			depth++;
			c++;
		} else if (*c == ']' || *c == '}') {
			depth--;
			c++;
		} else if (depth == 0 && (*c == ' ' || *c == '\t')) {
			break;
		} else {
			c++;
		}
		if (depth <= 0 && c > p &&
		    (c[-1] == '"' || c[-1] == '\'' || c[-1] == ']' || c[-1] == '}'))
			break;
	}
	return c;
}

/*
 * Append the source line (up to excerpt_end) and a caret under col.  Long
 * lines show a window around the column; bytes that would garble a
 * terminal show as '?'.
 */
static void
put_excerpt(struct idp_buf *b, const struct idp_toml *doc, unsigned line, unsigned col,
            enum idp_toml_excerpt ex)
{
	enum { WINDOW = 100, BEFORE = 50 };
	const char *p = doc->text, *end = doc->text + doc->len, *eol, *stop, *c;
	unsigned l = 1, i, first, width;
	struct idp_buf src, pad;
	int rc = 0;

	while (l < line && p < end) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));

		if (nl == NULL)
			return;
		p = nl + 1;
		l++;
	}
	if (l != line)
		return;
	eol = memchr(p, '\n', (size_t)(end - p));
	if (eol == NULL)
		eol = end;
	/*
	 * A line with a URL that carries credentials ("scheme://user:pw@host")
	 * is never quoted, whatever its key: the secret-key check goes by the
	 * key's name, and an inline table or a misplaced value names another.
	 */
	{
		const char *scheme = memmem(p, (size_t)(eol - p), "://", 3);

		if (scheme != NULL && memchr(scheme, '@', (size_t)(eol - scheme)) != NULL) {
			rc |= idp_buf_printf(b, "\n    (the line is not shown: it holds a URL with "
			                        "credentials)");
			(void)rc;
			return;
		}
	}
	if (eol > p && eol[-1] == '\r')
		eol--;
	/* A [header] holds no value, so all of it may be shown. */
	for (c = p; c < eol && (*c == ' ' || *c == '\t'); c++)
		;
	if (c < eol && *c == '[')
		ex = IDP_TOML_EXCERPT_LINE;
	stop = excerpt_end(p, eol, c < eol && *c == '[');
	if (doc->guarded && !(c < eol && *c == '['))
		stop = first_value_end(p, stop);
	first = col > BEFORE ? col - 1 - BEFORE : 0;
	idp_buf_init(&src, 4 * WINDOW + 16);
	idp_buf_init(&pad, 4 * WINDOW + 16);
	if (first > 0)
		rc |= idp_buf_puts(&src, "...");
	if (first > 0)
		rc |= idp_buf_puts(&pad, "   ");
	for (c = p, i = 0; c < stop && i < first + WINDOW; i++) {
		size_t n = char_len(c, stop);
		uint32_t cp;

		if (ex == IDP_TOML_EXCERPT_KEY && i == col - 1)
			stop = key_end(c, stop);
		if (i >= first) {
			if (*c == '\t')
				rc |= idp_buf_putc(&src, '\t');
			else if (utf8_decode((const unsigned char *)c, n, &cp) == n && cp >= 0x20 &&
			         cp != 0x7F)
				rc |= idp_buf_append(&src, c, n);
			else
				rc |= idp_buf_putc(&src, '?');
			if (i < col - 1)
				rc |= idp_buf_putc(&pad, *c == '\t' ? '\t' : ' ');
		}
		c += n;
	}
	if (c < stop)
		rc |= idp_buf_puts(&src, "...");
	for (; i < col - 1 && i < first + WINDOW; i++)
		rc |= idp_buf_putc(&pad, ' ');
	width = (unsigned)snprintf(NULL, 0, "%u", line);
	if (rc == 0)
		rc = idp_buf_printf(b, "\n %u | %s\n %*s | %s^", line, idp_buf_str(&src),
		                    (int)width, "", idp_buf_str(&pad));
	idp_wipe(src.data, src.cap);
	idp_buf_cleanup(&src);
	idp_buf_cleanup(&pad);
	(void)rc;
}

static void add_error_v(const struct idp_toml *doc, struct idp_diag *diag, unsigned line,
                        unsigned col, enum idp_toml_excerpt ex, unsigned shown_from,
                        const char *fmt, va_list ap) IDP_PRINTF(7, 0);

static void
add_error_v(const struct idp_toml *doc, struct idp_diag *diag, unsigned line, unsigned col,
            enum idp_toml_excerpt ex, unsigned shown_from, const char *fmt, va_list ap)
{
	char msg[768];
	struct idp_buf b;

	/* A full diag only counts further errors; do not format what it would drop. */
	if (diag->len + 2 >= sizeof(diag->text)) {
		idp_diag_add(diag, "%s", "");
		return;
	}
	vsnprintf(msg, sizeof(msg), fmt, ap);
	idp_buf_init(&b, sizeof(msg) + 1024);
	if (ex != IDP_TOML_EXCERPT_NONE && !line_shown(doc, line, shown_from))
		ex = ex == IDP_TOML_EXCERPT_KEY && key_only_excerpt(doc, line, col)
		         ? IDP_TOML_EXCERPT_KEY
		         : IDP_TOML_EXCERPT_NONE;
	if (idp_buf_printf(&b, "%s:%u:%u: %s", doc->name, line, col, msg) == 0 &&
	    ex != IDP_TOML_EXCERPT_NONE)
		put_excerpt(&b, doc, line, col, ex);
	idp_diag_add(diag, "%s", idp_buf_str(&b));
	idp_buf_cleanup(&b);
}

void
idp_toml_error(const struct idp_toml *doc, struct idp_diag *diag, unsigned line, unsigned col,
               enum idp_toml_excerpt excerpt, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	add_error_v(doc, diag, line, col, excerpt, 0, fmt, ap);
	va_end(ap);
}

static void perr(struct parser *p, struct pos at, const char *fmt, ...) IDP_PRINTF(3, 4);

/* Record a parse error at `at`; past IDP_TOML_MAX_ERRORS, stop parsing. */
static void
perr(struct parser *p, struct pos at, const char *fmt, ...)
{
	va_list ap;

	if (p->nerr >= IDP_TOML_MAX_ERRORS) {
		p->stop = true;
		return;
	}
	va_start(ap, fmt);
	add_error_v(p->doc, p->diag, at.line, at.col, IDP_TOML_EXCERPT_LINE, p->shown_from, fmt,
	            ap);
	va_end(ap);
	if (++p->nerr == IDP_TOML_MAX_ERRORS) {
		idp_diag_add(p->diag, "%s: too many errors; stopped reading", p->doc->name);
		p->stop = true;
	}
}

/* ---- nodes ---- */

static void
node_free(struct idp_toml_node *n)
{
	if (n == NULL)
		return;
	if (n->type == IDP_TOML_TABLE || n->type == IDP_TOML_ARRAY) {
		for (size_t i = 0; i < n->u.kids.n; i++)
			node_free(n->u.kids.v[i]);
		free(n->u.kids.v);
	} else if (n->type == IDP_TOML_STRING) {
		idp_wipe(n->u.str.s, n->u.str.len);
		free(n->u.str.s);
	}
	free(n->key);
	free(n);
}

static struct idp_toml_node *
node_new(struct parser *p, enum idp_toml_type type, enum origin origin, struct pos at)
{
	struct idp_toml_node *n;

	if (p->nvalues >= IDP_TOML_MAX_VALUES) {
		perr(p, at, "more than %d values in one document", IDP_TOML_MAX_VALUES);
		p->stop = true;
		return NULL;
	}
	p->nvalues++;
	n = idp_xcalloc(1, sizeof(*n));
	n->type = type;
	n->origin = origin;
	n->line = n->key_line = at.line;
	n->col = n->key_col = at.col;
	return n;
}

static struct idp_toml_node *
table_find(const struct idp_toml_node *t, const char *key)
{
	for (size_t i = 0; i < t->u.kids.n; i++)
		if (strcmp(t->u.kids.v[i]->key, key) == 0)
			return t->u.kids.v[i];
	return NULL;
}

static void
kids_push(struct idp_toml_node *parent, struct idp_toml_node *n)
{
	if (parent->u.kids.n == parent->u.kids.cap) {
		parent->u.kids.cap = parent->u.kids.cap ? parent->u.kids.cap * 2 : 4;
		parent->u.kids.v =
		    idp_xrealloc(parent->u.kids.v, parent->u.kids.cap * sizeof(*parent->u.kids.v));
	}
	n->parent = parent;
	n->index = parent->u.kids.n;
	n->depth = parent->depth + 1;
	parent->u.kids.v[parent->u.kids.n++] = n;
}

/*
 * Add n to table t under key (copied), written at `at`.  Takes ownership of
 * n; on failure (the per-table limit) n is freed and parsing stops.
 */
static int
table_add(struct parser *p, struct idp_toml_node *t, const char *key, struct pos at,
          struct idp_toml_node *n)
{
	if (t->u.kids.n >= IDP_TOML_MAX_KEYS) {
		char *path = path_str(t, NULL);

		if (path[0] == '\0')
			perr(p, at, "the top-level table has more than %d keys", IDP_TOML_MAX_KEYS);
		else
			perr(p, at, "table '%s' has more than %d keys", path, IDP_TOML_MAX_KEYS);
		free(path);
		node_free(n);
		p->stop = true;
		return -1;
	}
	n->key = idp_xstrdup(key);
	n->key_line = at.line;
	n->key_col = at.col;
	kids_push(t, n);
	return 0;
}

/* "a string", "an integer", ... for messages. */
static const char *
what_is(const struct idp_toml_node *n)
{
	switch (n->type) {
	case IDP_TOML_TABLE:
		return n->origin == ORIGIN_ELEMENT ? "an array-of-tables element" : "a table";
	case IDP_TOML_ARRAY:
		return n->origin == ORIGIN_TABLES ? "an array of tables" : "an array";
	case IDP_TOML_STRING:
		return "a string";
	case IDP_TOML_INT:
		return "an integer";
	case IDP_TOML_BOOL:
		return "a boolean";
	}
	return "a value";
}

/* ---- scanner ---- */

static int
peek(const struct parser *p)
{
	return p->pos < p->len ? (unsigned char)p->s[p->pos] : -1;
}

static int
peek_at(const struct parser *p, size_t k)
{
	return p->pos + k < p->len ? (unsigned char)p->s[p->pos + k] : -1;
}

/* Advance one byte; a column is a character, so continuation bytes do not count. */
static void
adv(struct parser *p)
{
	unsigned char c = (unsigned char)p->s[p->pos++];

	if (c == '\n') {
		p->line++;
		p->col = 1;
	} else if ((c & 0xC0) != 0x80) {
		p->col++;
	}
}

static struct pos
here(const struct parser *p)
{
	struct pos at = {p->line, p->col};

	return at;
}

static void
skip_ws(struct parser *p)
{
	while (peek(p) == ' ' || peek(p) == '\t')
		adv(p);
}

/* Describe the character at the cursor for a message: 'x', end of line, byte 0x01. */
static const char *
found(const struct parser *p, char buf[24])
{
	int c = peek(p);

	if (c < 0)
		return "end of file";
	if (c == '\n' || (c == '\r' && peek_at(p, 1) == '\n'))
		return "end of line";
	if (c > 0x20 && c < 0x7F)
		snprintf(buf, 24, "'%c'", c);
	else
		snprintf(buf, 24, "byte 0x%02X", (unsigned)c);
	return buf;
}

/* Step over a malformed UTF-8 sequence: its first byte and any continuation bytes. */
static void
skip_bad_utf8(struct parser *p)
{
	adv(p);
	while (p->pos < p->len && ((unsigned char)p->s[p->pos] & 0xC0) == 0x80)
		adv(p);
}

/*
 * Skip a comment up to (not over) the end of its line.  Bad characters in it
 * are errors, but the comment still ends where it ends, so no resync is due.
 */
static void
skip_comment(struct parser *p)
{
	while (p->pos < p->len && peek(p) != '\n') {
		int c = peek(p);
		uint32_t cp;
		size_t n;

		if (c == '\r' && peek_at(p, 1) == '\n')
			return;
		if ((c < 0x20 && c != '\t') || c == 0x7F) {
			perr(p, here(p), "control character (byte 0x%02X) in a comment",
			     (unsigned)c);
			adv(p);
			continue;
		}
		if (c < 0x80) {
			adv(p);
			continue;
		}
		n = utf8_decode((const unsigned char *)p->s + p->pos, p->len - p->pos, &cp);
		if (n == 0) {
			perr(p, here(p), "invalid UTF-8 in a comment");
			skip_bad_utf8(p);
			continue;
		}
		while (n-- > 0)
			adv(p);
	}
}

/* Consume one line break (LF or CRLF) if there is one. */
static bool
eat_newline(struct parser *p)
{
	if (peek(p) == '\n') {
		adv(p);
		return true;
	}
	if (peek(p) == '\r' && peek_at(p, 1) == '\n') {
		adv(p);
		adv(p);
		return true;
	}
	return false;
}

/* Whitespace, comments and line breaks, as allowed between array elements. */
static void
skip_blank(struct parser *p)
{
	for (;;) {
		skip_ws(p);
		if (peek(p) == '#')
			skip_comment(p);
		if (!eat_newline(p))
			return;
	}
}

/* ---- strings ---- */

struct strscan {
	struct idp_buf *out;
	struct pos open;
	const char *what; /* "string" or "key" */
	size_t limit;
	bool bad;
	bool too_long;
};

static void
put_bytes(struct parser *p, struct strscan *ss, const char *b, size_t n)
{
	if (ss->too_long)
		return;
	if (idp_buf_append(ss->out, b, n) != 0) {
		perr(p, ss->open, "%s is longer than %zu bytes", ss->what, ss->limit);
		ss->too_long = true;
		ss->bad = true;
	}
}

/* A character that is neither a quote nor a backslash nor a line break. */
static void
scan_plain_char(struct parser *p, struct strscan *ss)
{
	int c = peek(p);
	uint32_t cp;
	size_t n;

	if ((c < 0x20 && c != '\t') || c == 0x7F) {
		perr(p, here(p), "control character (byte 0x%02X) in a %s; write it as an escape",
		     (unsigned)c, ss->what);
		ss->bad = true;
		adv(p);
		return;
	}
	if (c < 0x80) {
		char ch = (char)c;

		put_bytes(p, ss, &ch, 1);
		adv(p);
		return;
	}
	n = utf8_decode((const unsigned char *)p->s + p->pos, p->len - p->pos, &cp);
	if (n == 0) {
		perr(p, here(p), "invalid UTF-8 in a %s", ss->what);
		ss->bad = true;
		skip_bad_utf8(p);
		return;
	}
	put_bytes(p, ss, p->s + p->pos, n);
	while (n-- > 0)
		adv(p);
}

static int
hexval(int c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* \uXXXX or \UXXXXXXXX, the cursor on the u or U. */
static void
scan_unicode_escape(struct parser *p, struct strscan *ss, struct pos esc)
{
	size_t digits = peek(p) == 'u' ? 4 : 8;
	uint32_t v = 0;
	char enc[4];

	adv(p);
	for (size_t i = 0; i < digits; i++) {
		int h = hexval(peek(p));

		if (h < 0) {
			perr(p, esc, "\\%c escape needs %zu hexadecimal digits",
			     digits == 4 ? 'u' : 'U', digits);
			ss->bad = true;
			return;
		}
		v = (v << 4) | (uint32_t)h;
		adv(p);
	}
	if (v >= 0xD800 && v <= 0xDFFF) {
		perr(p, esc,
		     "escape names a surrogate (U+D800 to U+DFFF), which is not a character");
		ss->bad = true;
	} else if (v > 0x10FFFF) {
		perr(p, esc, "escape is beyond U+10FFFF, the last Unicode character");
		ss->bad = true;
	} else if (v == 0) {
		perr(p, esc, "NUL characters are not supported in a %s", ss->what);
		ss->bad = true;
	} else {
		put_bytes(p, ss, enc, utf8_encode(v, enc));
	}
}

/* The cursor is on a backslash in a basic string. */
static void
scan_escape(struct parser *p, struct strscan *ss, bool multi)
{
	struct pos esc = here(p);
	int c;
	char ch;

	adv(p);
	c = peek(p);
	switch (c) {
	case 'b':
		ch = '\b';
		break;
	case 't':
		ch = '\t';
		break;
	case 'n':
		ch = '\n';
		break;
	case 'f':
		ch = '\f';
		break;
	case 'r':
		ch = '\r';
		break;
	case '"':
		ch = '"';
		break;
	case '\\':
		ch = '\\';
		break;
	case 'u':
	case 'U':
		scan_unicode_escape(p, ss, esc);
		return;
	default:
		if (multi && (c == ' ' || c == '\t' || c == '\n' || c == '\r')) {
			/* A line-ending backslash eats the break and the blanks after it. */
			size_t k = 0;

			while (peek_at(p, k) == ' ' || peek_at(p, k) == '\t')
				k++;
			c = peek_at(p, k);
			if (c == '\n' || (c == '\r' && peek_at(p, k + 1) == '\n')) {
				for (;;) {
					skip_ws(p);
					if (!eat_newline(p))
						break;
				}
				return;
			}
		}
		perr(p, esc, "invalid escape sequence; %s", escapes_help);
		ss->bad = true;
		return;
	}
	put_bytes(p, ss, &ch, 1);
	adv(p);
}

/*
 * Read a string whose opening quote is at the cursor, into ss->out.  Keys
 * pass multi_ok = false.  Errors inside the string are reported and the scan
 * goes on to the closing quote, so one line can show several; the return is
 * -1 if there was any error, and the cursor is after the string unless it was
 * unterminated.
 */
static int
scan_string(struct parser *p, struct strscan *ss, bool multi_ok)
{
	char q = (char)peek(p);
	bool basic = q == '"';
	bool multi = peek_at(p, 1) == q && peek_at(p, 2) == q;

	ss->open = here(p);
	if (multi && !multi_ok) {
		perr(p, ss->open, "a multi-line string cannot be a key");
		return -1;
	}
	adv(p);
	if (multi) {
		adv(p);
		adv(p);
		eat_newline(p); /* a break right after the opening quotes is not content */
	}
	for (;;) {
		int c = peek(p);

		if (c < 0 || (!multi && (c == '\n' || (c == '\r' && peek_at(p, 1) == '\n')))) {
			perr(p, ss->open, "unterminated %s", ss->what);
			return -1;
		}
		if (c == q) {
			size_t nq = 1;

			if (!multi) {
				adv(p);
				break;
			}
			while (nq < 6 && peek_at(p, nq) == q)
				nq++;
			if (nq < 3) {
				for (size_t i = 0; i < nq; i++) {
					put_bytes(p, ss, &q, 1);
					adv(p);
				}
				continue;
			}
			if (nq == 6) {
				perr(p, here(p),
				     "more than two quotes before the end of a multi-line "
				     "string");
				ss->bad = true;
				while (peek(p) == q)
					adv(p);
				break;
			}
			for (size_t i = 3; i < nq; i++)
				put_bytes(p, ss, &q, 1);
			for (size_t i = 0; i < nq; i++)
				adv(p);
			break;
		}
		if (basic && c == '\\') {
			scan_escape(p, ss, multi);
			continue;
		}
		if (multi && eat_newline(p)) {
			put_bytes(p, ss, "\n", 1);
			continue;
		}
		scan_plain_char(p, ss);
	}
	return ss->bad ? -1 : 0;
}

/* ---- keys ---- */

static void
keyparts_free(struct keypart *parts, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(parts[i].s);
}

static int
parse_simple_key(struct parser *p, struct keypart *kp)
{
	struct idp_buf b;
	struct strscan ss = {&b, {0, 0}, "key", IDP_TOML_MAX_KEY, false, false};
	char fb[24];
	int c = peek(p);

	kp->at = here(p);
	ss.open = kp->at;
	idp_buf_init(&b, IDP_TOML_MAX_KEY);
	if (c == '"' || c == '\'') {
		if (scan_string(p, &ss, false) != 0) {
			idp_buf_cleanup(&b);
			return -1;
		}
	} else if (is_bare_key_char(c)) {
		while (is_bare_key_char(peek(p))) {
			char ch = (char)peek(p);

			put_bytes(p, &ss, &ch, 1);
			adv(p);
		}
		if (ss.bad) {
			idp_buf_cleanup(&b);
			return -1;
		}
	} else {
		perr(p, here(p), "expected a key, found %s", found(p, fb));
		idp_buf_cleanup(&b);
		return -1;
	}
	kp->s = idp_buf_take(&b, NULL);
	return 0;
}

/* key ( '.' key )*, into parts[0..*n). The caller frees the parts, also on failure. */
static int
parse_keypath(struct parser *p, struct keypart parts[IDP_TOML_MAX_DEPTH], size_t *n)
{
	*n = 0;
	for (;;) {
		if (*n == IDP_TOML_MAX_DEPTH) {
			perr(p, here(p), "nesting deeper than %d levels", IDP_TOML_MAX_DEPTH);
			p->stop = true;
			return -1;
		}
		if (parse_simple_key(p, &parts[*n]) != 0)
			return -1;
		(*n)++;
		skip_ws(p);
		if (peek(p) != '.')
			return 0;
		adv(p);
		skip_ws(p);
	}
}

/* ---- values ---- */

static int parse_value(struct parser *p, unsigned depth, struct idp_toml_node **out);

static bool
is_value_char(int c)
{
	return is_bare_key_char(c) || c == '+' || c == '.' || c == ':';
}

/* Digits with single underscores between them, after an optional sign. */
static int
parse_int(struct parser *p, const char *t, size_t n, struct pos at, int64_t *out)
{
	bool neg = false;
	uint64_t v = 0, limit;
	size_t i = 0;

	if (t[0] == '+' || t[0] == '-') {
		neg = t[0] == '-';
		i = 1;
	}
	if (n - i > 1 && t[i] == '0') {
		perr(p, at, "leading zeros are not allowed in an integer");
		return -1;
	}
	limit = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
	for (size_t k = i; k < n; k++) {
		unsigned d;

		if (t[k] == '_') {
			if (k == i || k + 1 == n || t[k + 1] == '_') {
				perr(p, at, "'_' in an integer must stand between two digits");
				return -1;
			}
			continue;
		}
		d = (unsigned)(t[k] - '0');
		if (v > (limit - d) / 10) {
			perr(p, at, "integer does not fit in 64 bits (%s%s)", neg ? "-" : "",
			     neg ? "9223372036854775808 is the smallest"
			         : "9223372036854775807 is "
			           "the largest");
			return -1;
		}
		v = v * 10 + d;
	}
	if (neg)
		*out = v == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)v;
	else
		*out = (int64_t)v;
	return 0;
}

/* True if t is [+-]? then digits and underscores only, with at least one digit. */
static bool
looks_like_int(const char *t, size_t n)
{
	size_t i = (n > 0 && (t[0] == '+' || t[0] == '-')) ? 1 : 0;
	bool digit = false;

	for (; i < n; i++) {
		if (t[i] >= '0' && t[i] <= '9')
			digit = true;
		else if (t[i] != '_')
			return false;
	}
	return digit;
}

static bool
token_is(const char *t, size_t n, const char *word)
{
	return strlen(word) == n && memcmp(t, word, n) == 0;
}

/* Name what an unsupported bare value looks like, for a message that says so. */
static const char *
unsupported_kind(const char *t, size_t n)
{
	size_t i = (t[0] == '+' || t[0] == '-') ? 1 : 0, digits = 0;

	if (token_is(t + i, n - i, "inf") || token_is(t + i, n - i, "nan"))
		return "floating-point numbers are not supported";
	if (n - i > 1 && t[i] == '0' && (t[i + 1] == 'x' || t[i + 1] == 'o' || t[i + 1] == 'b'))
		return "only decimal integers are supported";
	while (i + digits < n && t[i + digits] >= '0' && t[i + digits] <= '9')
		digits++;
	if (digits == 0)
		return NULL;
	if ((digits == 4 && i + digits < n && t[i + digits] == '-') ||
	    (digits == 2 && i + digits < n && t[i + digits] == ':'))
		return "dates and times are not supported";
	for (size_t k = i; k < n; k++)
		if (t[k] == '.' || t[k] == 'e' || t[k] == 'E')
			return "floating-point numbers are not supported";
	return NULL;
}

/* true, false, or an integer; anything else bare is an error that says what it is. */
static int
parse_bare(struct parser *p, struct idp_toml_node **out)
{
	struct pos at = here(p);
	size_t start = p->pos, n;
	const char *t = p->s + start, *why;
	struct idp_toml_node *v;
	char fb[24];
	int64_t i;

	while (is_value_char(peek(p)))
		adv(p);
	n = p->pos - start;
	if (n == 0) {
		if (peek(p) == '{')
			perr(p, at, "inline tables are not supported; use a [table] section");
		else
			perr(p, at, "expected a value, found %s", found(p, fb));
		return -1;
	}
	if (token_is(t, n, "true") || token_is(t, n, "false")) {
		if ((v = node_new(p, IDP_TOML_BOOL, ORIGIN_VALUE, at)) == NULL)
			return -1;
		v->u.b = t[0] == 't';
		*out = v;
		return 0;
	}
	if (looks_like_int(t, n)) {
		if (parse_int(p, t, n, at, &i) != 0)
			return -1;
		if ((v = node_new(p, IDP_TOML_INT, ORIGIN_VALUE, at)) == NULL)
			return -1;
		v->u.i = i;
		*out = v;
		return 0;
	}
	why = unsupported_kind(t, n);
	if (why != NULL)
		perr(p, at, "%s", why);
	else
		perr(p, at,
		     "invalid value: expected a \"string\", an integer, true, false or an "
		     "[array]");
	return -1;
}

static int
parse_string_value(struct parser *p, struct idp_toml_node **out)
{
	struct idp_buf b;
	struct strscan ss = {&b, {0, 0}, "string", IDP_TOML_MAX_STRING, false, false};
	struct pos at = here(p);
	struct idp_toml_node *v;
	int rc;

	idp_buf_init(&b, IDP_TOML_MAX_STRING);
	rc = scan_string(p, &ss, true);
	if (rc == 0 && (v = node_new(p, IDP_TOML_STRING, ORIGIN_VALUE, at)) != NULL) {
		v->u.str.s = idp_buf_take(&b, &v->u.str.len);
		*out = v;
		return 0;
	}
	idp_wipe(b.data, b.cap);
	idp_buf_cleanup(&b);
	return -1;
}

/*
 * [ value, value, ... ] with line breaks and comments between elements and
 * an optional trailing comma.  A failure stops the whole parse: inside an
 * array the next line is no safe place to resume.
 */
static int
parse_array(struct parser *p, unsigned depth, struct idp_toml_node **out)
{
	struct pos open = here(p);
	struct idp_toml_node *a, *e = NULL;
	char fb[24];

	if (depth > IDP_TOML_MAX_DEPTH) {
		perr(p, open, "nesting deeper than %d levels", IDP_TOML_MAX_DEPTH);
		p->stop = true;
		return -1;
	}
	if ((a = node_new(p, IDP_TOML_ARRAY, ORIGIN_VALUE, open)) == NULL)
		return -1;
	adv(p);
	for (;;) {
		skip_blank(p);
		if (p->stop)
			goto fail;
		if (peek(p) == ']') {
			adv(p);
			break;
		}
		if (peek(p) < 0) {
			perr(p, open, "unterminated array");
			goto fail;
		}
		if (parse_value(p, depth + 1, &e) != 0)
			goto fail;
		if (a->u.kids.n > 0 && e->type != a->u.kids.v[0]->type) {
			perr(p, (struct pos){e->line, e->col},
			     "array elements must all have one type: this is %s, the first is %s",
			     what_is(e), what_is(a->u.kids.v[0]));
			node_free(e);
			goto fail;
		}
		kids_push(a, e);
		skip_blank(p);
		if (p->stop)
			goto fail;
		if (peek(p) == ',') {
			adv(p);
			continue;
		}
		if (peek(p) == ']') {
			adv(p);
			break;
		}
		if (peek(p) < 0)
			perr(p, open, "unterminated array");
		else
			perr(p, here(p), "expected ',' or ']' in an array, found %s", found(p, fb));
		goto fail;
	}
	*out = a;
	return 0;
fail:
	node_free(a);
	p->stop = true;
	return -1;
}

static int
parse_value(struct parser *p, unsigned depth, struct idp_toml_node **out)
{
	int c = peek(p);

	*out = NULL;
	if (c == '"' || c == '\'')
		return parse_string_value(p, out);
	if (c == '[')
		return parse_array(p, depth, out);
	return parse_bare(p, out);
}

/* ---- tables and key/values ---- */

/* Join the parts with dots, after prefix (which may be empty). */
static void
join_path(struct idp_buf *b, const char *prefix, const struct keypart *parts, size_t n)
{
	int rc = 0;

	idp_buf_reset(b);
	rc |= idp_buf_puts(b, prefix);
	for (size_t i = 0; i < n; i++) {
		if (b->len > 0)
			rc |= idp_buf_putc(b, '.');
		rc |= idp_buf_puts(b, parts[i].s);
	}
	/* A path cut at the buffer cap only weakens the secret check, never the parse. */
	(void)rc;
}

static void
err_not_table(struct parser *p, struct pos at, const struct idp_toml_node *n)
{
	char *path = path_str(n, NULL);

	perr(p, at, "'%s' is already %s (line %u, column %u), not a table", path, what_is(n),
	     n->line, n->col);
	free(path);
}

/*
 * Store val under the dotted key parts in the current table, creating the
 * intermediate tables.  Takes ownership of val.  Redefinitions are reported
 * and val dropped; the line itself was fine, so the return is still 0
 * unless parsing must stop.
 */
static int
insert_dotted(struct parser *p, struct keypart *parts, size_t n, struct idp_toml_node *val)
{
	struct idp_toml_node *t = p->cur, *child;
	char *path;

	for (size_t i = 0; i + 1 < n; i++) {
		child = table_find(t, parts[i].s);
		if (child == NULL) {
			if ((child = node_new(p, IDP_TOML_TABLE, ORIGIN_DOTTED, parts[i].at)) ==
			    NULL)
				goto drop;
			if (table_add(p, t, parts[i].s, parts[i].at, child) != 0)
				goto drop;
		} else if (child->type != IDP_TOML_TABLE) {
			err_not_table(p, parts[i].at, child);
			goto drop;
		} else if (child->origin != ORIGIN_DOTTED) {
			path = path_str(child, NULL);
			perr(p, parts[i].at,
			     "a dotted key cannot add to table '%s', defined at line %u, column %u",
			     path, child->line, child->col);
			free(path);
			goto drop;
		}
		t = child;
	}
	child = table_find(t, parts[n - 1].s);
	if (child != NULL) {
		path = path_str(child, NULL);
		perr(p, parts[n - 1].at, "duplicate key '%s' (first defined at line %u, column %u)",
		     path, child->key_line, child->key_col);
		free(path);
		goto drop;
	}
	return table_add(p, t, parts[n - 1].s, parts[n - 1].at, val);
drop:
	node_free(val);
	return p->stop ? -1 : 0;
}

static int
parse_keyval(struct parser *p)
{
	struct keypart parts[IDP_TOML_MAX_DEPTH];
	struct idp_toml_node *val = NULL;
	size_t n = 0;
	unsigned depth;
	char fb[24];
	int rc = -1;

	if (parse_keypath(p, parts, &n) != 0)
		goto done;
	if (p->opts != NULL && p->opts->is_secret != NULL) {
		struct idp_buf full;

		idp_buf_init(&full, 8192);
		join_path(&full, idp_buf_str(&p->path), parts, n);
		if (!p->opts->is_secret(idp_buf_str(&full), p->opts->arg))
			p->shown_from = parts[0].at.line;
		idp_buf_cleanup(&full);
	}
	skip_ws(p);
	if (peek(p) != '=') {
		perr(p, here(p), "expected '=' after the key, found %s", found(p, fb));
		goto done;
	}
	adv(p);
	skip_ws(p);
	depth = (p->cur != NULL ? p->cur->depth : 0) + (unsigned)n;
	if (depth > IDP_TOML_MAX_DEPTH) {
		perr(p, parts[0].at, "nesting deeper than %d levels", IDP_TOML_MAX_DEPTH);
		p->stop = true;
		goto done;
	}
	if (parse_value(p, depth, &val) != 0)
		goto done;
	/* After a bad [header] the values are checked but have nowhere to go. */
	if (p->cur == NULL) {
		node_free(val);
		rc = 0;
		goto done;
	}
	rc = insert_dotted(p, parts, n, val);
done:
	if (p->shown_from != 0) {
		show_lines(p->doc, p->shown_from, p->line);
		p->shown_from = 0;
	}
	keyparts_free(parts, n);
	return rc;
}

/* Find or create the parent tables named by a header, all parts but the last. */
static struct idp_toml_node *
header_parent(struct parser *p, struct keypart *parts, size_t n)
{
	struct idp_toml_node *t = p->doc->root, *child;

	for (size_t i = 0; i + 1 < n; i++) {
		child = table_find(t, parts[i].s);
		if (child == NULL) {
			if ((child = node_new(p, IDP_TOML_TABLE, ORIGIN_IMPLICIT, parts[i].at)) ==
			    NULL)
				return NULL;
			if (table_add(p, t, parts[i].s, parts[i].at, child) != 0)
				return NULL;
		} else if (child->type == IDP_TOML_ARRAY && child->origin == ORIGIN_TABLES) {
			/* [a.b] after [[a]] is a table in the last element of a. */
			child = child->u.kids.v[child->u.kids.n - 1];
		} else if (child->type != IDP_TOML_TABLE) {
			err_not_table(p, parts[i].at, child);
			return NULL;
		}
		if (child->depth >= IDP_TOML_MAX_DEPTH) {
			perr(p, parts[i].at, "nesting deeper than %d levels", IDP_TOML_MAX_DEPTH);
			p->stop = true;
			return NULL;
		}
		t = child;
	}
	return t;
}

/* [a.b] or [[a.b]]; on success the section's key/values go to the new table. */
static int
parse_header(struct parser *p)
{
	struct keypart parts[IDP_TOML_MAX_DEPTH];
	struct pos open = here(p);
	bool aot = peek_at(p, 1) == '[';
	struct idp_toml_node *t, *old, *n;
	struct keypart *last;
	size_t nparts = 0;
	char fb[24], *path = NULL;
	int rc = -1;

	p->cur = NULL;
	idp_buf_reset(&p->path);
	/* A [header] names tables and holds no value: its line may be quoted. */
	p->shown_from = open.line;
	adv(p);
	if (aot)
		adv(p);
	skip_ws(p);
	if (parse_keypath(p, parts, &nparts) != 0)
		goto done;
	if (peek(p) != ']' || (aot && peek_at(p, 1) != ']')) {
		perr(p, here(p), "expected '%s' to close the header, found %s", aot ? "]]" : "]",
		     found(p, fb));
		goto done;
	}
	adv(p);
	if (aot)
		adv(p);
	join_path(&p->path, "", parts, nparts);
	rc = 0;
	if ((t = header_parent(p, parts, nparts)) == NULL)
		goto done;
	if (t->depth + (aot ? 2 : 1) > IDP_TOML_MAX_DEPTH) {
		perr(p, parts[nparts - 1].at, "nesting deeper than %d levels", IDP_TOML_MAX_DEPTH);
		p->stop = true;
		goto done;
	}
	last = &parts[nparts - 1];
	old = table_find(t, last->s);
	if (aot) {
		if (old == NULL) {
			if ((old = node_new(p, IDP_TOML_ARRAY, ORIGIN_TABLES, last->at)) == NULL)
				goto done;
			if (table_add(p, t, last->s, last->at, old) != 0)
				goto done;
		} else if (old->type != IDP_TOML_ARRAY || old->origin != ORIGIN_TABLES) {
			path = path_str(old, NULL);
			perr(p, open,
			     "cannot define [[%s]]: '%s' is already %s (line %u, column %u)", path,
			     path, what_is(old), old->line, old->col);
			goto done;
		}
		if ((n = node_new(p, IDP_TOML_TABLE, ORIGIN_ELEMENT, open)) == NULL)
			goto done;
		n->key_line = last->at.line;
		n->key_col = last->at.col;
		kids_push(old, n);
		p->cur = n;
		goto done;
	}
	if (old == NULL) {
		if ((n = node_new(p, IDP_TOML_TABLE, ORIGIN_HEADER, open)) == NULL)
			goto done;
		if (table_add(p, t, last->s, last->at, n) != 0)
			goto done;
		p->cur = n;
	} else if (old->type == IDP_TOML_TABLE && old->origin == ORIGIN_IMPLICIT) {
		old->origin = ORIGIN_HEADER;
		old->line = open.line;
		old->col = open.col;
		p->cur = old;
	} else if (old->type == IDP_TOML_TABLE) {
		path = path_str(old, NULL);
		perr(p, open, "duplicate table [%s] (first defined at line %u, column %u)", path,
		     old->line, old->col);
	} else {
		path = path_str(old, NULL);
		perr(p, open, "cannot define table [%s]: it is already %s (line %u, column %u)",
		     path, what_is(old), old->line, old->col);
	}
done:
	show_lines(p->doc, p->shown_from, p->line);
	p->shown_from = 0;
	free(path);
	keyparts_free(parts, nparts);
	if (p->stop)
		rc = -1;
	return rc;
}

/* After a key/value or header: blanks, an optional comment, then a line break or the end. */
static int
end_of_line(struct parser *p)
{
	char fb[24];

	skip_ws(p);
	if (peek(p) == '#')
		skip_comment(p);
	if (peek(p) < 0 || eat_newline(p))
		return 0;
	if (peek(p) == '\r')
		perr(p, here(p), "carriage return not followed by a line feed");
	else
		perr(p, here(p), "expected the end of the line, found %s", found(p, fb));
	return -1;
}

/* Skip the rest of the line after a syntax error. */
static void
resync(struct parser *p)
{
	while (p->pos < p->len && peek(p) != '\n')
		adv(p);
	if (p->pos < p->len)
		adv(p);
}

static void
parse_document(struct parser *p)
{
	/* A byte order mark is tolerated, as editors on some systems write one. */
	if (p->len >= 3 && memcmp(p->s, "\xEF\xBB\xBF", 3) == 0)
		p->pos = 3;
	while (!p->stop && p->pos < p->len) {
		int c, rc = 0;

		skip_ws(p);
		c = peek(p);
		if (c == '[')
			rc = parse_header(p);
		else if (c >= 0 && c != '#' && c != '\n' && c != '\r')
			rc = parse_keyval(p);
		if (rc == 0 && !p->stop)
			rc = end_of_line(p);
		if (rc != 0 && !p->stop)
			resync(p);
	}
}

int
idp_toml_parse(const char *name, const char *text, size_t len, const struct idp_toml_opts *opts,
               struct idp_toml **out, struct idp_diag *diag)
{
	struct idp_toml *doc;
	struct parser p;
	struct pos start = {1, 1};

	*out = NULL;
	doc = idp_xcalloc(1, sizeof(*doc));
	doc->name = idp_xstrdup(name != NULL ? name : "<input>");
	memset(&p, 0, sizeof(p));
	p.doc = doc;
	p.diag = diag;
	if (len > IDP_TOML_MAX_INPUT) {
		doc->text = idp_xstrdup("");
		idp_toml_error(doc, diag, 1, 1, IDP_TOML_EXCERPT_NONE,
		               "input is %zu bytes, more than the limit of %d", len,
		               IDP_TOML_MAX_INPUT);
		idp_toml_free(doc);
		return IDP_ETOOBIG;
	}
	doc->text = idp_xmalloc(len + 1);
	if (len > 0)
		memcpy(doc->text, text, len);
	doc->text[len] = '\0';
	doc->len = len;
	p.s = doc->text;
	p.len = len;
	p.line = 1;
	p.col = 1;
	p.opts = opts;
	doc->guarded = opts != NULL && opts->is_secret != NULL;
	idp_buf_init(&p.path, 8192);
	doc->root = node_new(&p, IDP_TOML_TABLE, ORIGIN_ROOT, start);
	p.cur = doc->root;
	parse_document(&p);
	idp_buf_cleanup(&p.path);
	if (p.nerr > 0) {
		idp_toml_free(doc);
		return IDP_EINVAL;
	}
	*out = doc;
	return IDP_OK;
}

void
idp_toml_free(struct idp_toml *doc)
{
	if (doc == NULL)
		return;
	node_free(doc->root);
	idp_wipe(doc->text, doc->len);
	free(doc->text);
	free(doc->name);
	free(doc->shown);
	free(doc);
}

/* ---- accessors ---- */

const struct idp_toml_node *
idp_toml_root(const struct idp_toml *doc)
{
	return doc->root;
}

const char *
idp_toml_name(const struct idp_toml *doc)
{
	return doc->name;
}

const char *
idp_toml_type_name(enum idp_toml_type type)
{
	switch (type) {
	case IDP_TOML_TABLE:
		return "table";
	case IDP_TOML_ARRAY:
		return "array";
	case IDP_TOML_STRING:
		return "string";
	case IDP_TOML_INT:
		return "integer";
	case IDP_TOML_BOOL:
		return "boolean";
	}
	return "value";
}

enum idp_toml_type
idp_toml_type(const struct idp_toml_node *n)
{
	return n->type;
}

const char *
idp_toml_key(const struct idp_toml_node *n)
{
	return n->key;
}

unsigned
idp_toml_key_line(const struct idp_toml_node *n)
{
	return n->key_line;
}

unsigned
idp_toml_key_col(const struct idp_toml_node *n)
{
	return n->key_col;
}

unsigned
idp_toml_line(const struct idp_toml_node *n)
{
	return n->line;
}

unsigned
idp_toml_col(const struct idp_toml_node *n)
{
	return n->col;
}

size_t
idp_toml_count(const struct idp_toml_node *n)
{
	if (n->type != IDP_TOML_TABLE && n->type != IDP_TOML_ARRAY)
		return 0;
	return n->u.kids.n;
}

const struct idp_toml_node *
idp_toml_child(const struct idp_toml_node *n, size_t i)
{
	if (i >= idp_toml_count(n))
		return NULL;
	return n->u.kids.v[i];
}

const struct idp_toml_node *
idp_toml_get(const struct idp_toml_node *t, const char *key)
{
	if (t->type != IDP_TOML_TABLE)
		return NULL;
	return table_find(t, key);
}

bool
idp_toml_is_table_array(const struct idp_toml_node *n)
{
	return n->type == IDP_TOML_ARRAY && n->origin == ORIGIN_TABLES;
}

const char *
idp_toml_string(const struct idp_toml_node *n, size_t *len)
{
	if (n->type != IDP_TOML_STRING) {
		if (len != NULL)
			*len = 0;
		return "";
	}
	if (len != NULL)
		*len = n->u.str.len;
	return n->u.str.s;
}

int64_t
idp_toml_int(const struct idp_toml_node *n)
{
	return n->type == IDP_TOML_INT ? n->u.i : 0;
}

bool
idp_toml_bool(const struct idp_toml_node *n)
{
	return n->type == IDP_TOML_BOOL && n->u.b;
}
