/*
 * lexer.c - policy source text to tokens.
 *
 * Positions are 1-based lines and byte columns (a tab is one column).
 * Comments run from "//" to the end of the line.  Strings are double-quoted,
 * on one line, with the escapes \" \\ \n \t.  Integers are decimal and fit
 * in 63 bits.  Every error is reported with its position and yields a
 * T_ERROR token, so the parser can recover.
 */
#include <stdio.h>
#include <string.h>

#include "idpd/json_out.h"
#include "policy_int.h"

static const struct {
	const char *word;
	enum tok_kind kind;
} keywords[] = {
    {"allow", T_ALLOW},
    {"deny", T_DENY},
    {"require_approval", T_REQUIRE_APPROVAL},
    {"allow_with_conditions", T_ALLOW_WITH_CONDITIONS},
    {"when", T_WHEN},
    {"unless", T_UNLESS},
    {"with", T_WITH},
    {"and", T_AND},
    {"or", T_OR},
    {"not", T_NOT},
    {"in", T_IN},
    {"within", T_WITHIN},
    {"like", T_LIKE},
    {"startswith", T_STARTSWITH},
    {"has", T_HAS},
    {"during", T_DURING},
    {"true", T_TRUE},
    {"false", T_FALSE},
};

void
lexer_init(struct lexer *lx, const struct pfile *f, struct perrors *errs, struct ppool *pool)
{
	lx->file = f;
	lx->errs = errs;
	lx->pool = pool;
	lx->pos = 0;
	lx->line = 1;
	lx->col = 1;
}

static int
peek(const struct lexer *lx, size_t ahead)
{
	size_t p = lx->pos + ahead;

	return p < lx->file->len ? (unsigned char)lx->file->text[p] : -1;
}

static void
advance(struct lexer *lx)
{
	if (lx->pos >= lx->file->len)
		return;
	if (lx->file->text[lx->pos] == '\n') {
		lx->line++;
		lx->col = 1;
	} else {
		lx->col++;
	}
	lx->pos++;
}

static bool
ident_start(int c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}

static bool
ident_char(int c)
{
	return ident_start(c) || (c >= '0' && c <= '9');
}

static void
lex_string(struct lexer *lx, struct token *t)
{
	char buf[POLICY_MAX_STRING + 1];
	size_t n = 0;
	bool too_long = false;
	int c;

	advance(lx); /* the opening quote */
	for (;;) {
		c = peek(lx, 0);
		if (c == -1 || c == '\n') {
			perr_add(lx->errs, lx->file, t->line, t->col, 1, "unterminated string");
			t->kind = T_ERROR;
			return;
		}
		if (c == '"') {
			advance(lx);
			break;
		}
		if (c == '\\') {
			int e = peek(lx, 1);
			char out;

			switch (e) {
			case '"':
				out = '"';
				break;
			case '\\':
				out = '\\';
				break;
			case 'n':
				out = '\n';
				break;
			case 't':
				out = '\t';
				break;
			default:
				if (e == -1 || e == '\n') {
					perr_add(lx->errs, lx->file, t->line, t->col, 1,
					         "unterminated string");
					t->kind = T_ERROR;
					return;
				}
				perr_add(
				    lx->errs, lx->file, lx->line, lx->col, 2,
				    "invalid escape \"\\%c\" in string (use \\\" \\\\ \\n \\t)",
				    (e >= 0x20 && e < 0x7f) ? e : '?');
				t->kind = T_ERROR;
				out = '?';
			}
			advance(lx);
			advance(lx);
			c = (unsigned char)out;
		} else {
			if ((c < 0x20 && c != '\t') || c == 0x7f) {
				perr_add(lx->errs, lx->file, lx->line, lx->col, 1,
				         "control character 0x%02x in string", (unsigned)c);
				t->kind = T_ERROR;
			}
			advance(lx);
		}
		if (n < POLICY_MAX_STRING)
			buf[n++] = (char)c;
		else
			too_long = true;
	}
	t->len = (uint32_t)(lx->pos - (size_t)(t->start - lx->file->text));
	if (too_long) {
		perr_add(lx->errs, lx->file, t->line, t->col, t->len, "string longer than %d bytes",
		         POLICY_MAX_STRING);
		t->kind = T_ERROR;
		return;
	}
	if (t->kind == T_ERROR)
		return;
	if (memchr(buf, '\0', n) != NULL) {
		perr_add(lx->errs, lx->file, t->line, t->col, t->len, "NUL byte in string");
		t->kind = T_ERROR;
		return;
	}
	/* Every value a rule is compared with, and every reason it gives,
	 * travels as JSON: text that is not UTF-8 could never match an input
	 * and could not be said in an answer or an audit event. */
	for (size_t i = 0; i < n;) {
		size_t k = idp_utf8_seq((const unsigned char *)buf + i, n - i);

		if (k == 0) {
			perr_add(lx->errs, lx->file, t->line, t->col, t->len,
			         "string is not valid UTF-8 (byte 0x%02x)", (unsigned char)buf[i]);
			t->kind = T_ERROR;
			return;
		}
		i += k;
	}
	t->kind = T_STRING;
	t->sval = ppool_strndup(lx->pool, buf, n);
	t->slen = n;
}

static void
lex_int(struct lexer *lx, struct token *t)
{
	int64_t v = 0;
	bool overflow = false;

	while (peek(lx, 0) >= '0' && peek(lx, 0) <= '9') {
		int d = peek(lx, 0) - '0';

		if (v > (INT64_MAX - d) / 10)
			overflow = true;
		else
			v = v * 10 + d;
		advance(lx);
	}
	t->len = (uint32_t)(lx->pos - (size_t)(t->start - lx->file->text));
	if (ident_char(peek(lx, 0))) {
		while (ident_char(peek(lx, 0)))
			advance(lx);
		t->len = (uint32_t)(lx->pos - (size_t)(t->start - lx->file->text));
		perr_add(lx->errs, lx->file, t->line, t->col, t->len, "invalid number \"%.*s\"",
		         (int)(t->len > 64 ? 64 : t->len), t->start);
		t->kind = T_ERROR;
		return;
	}
	if (overflow) {
		perr_add(lx->errs, lx->file, t->line, t->col, t->len, "integer out of range");
		t->kind = T_ERROR;
		return;
	}
	t->kind = T_INT;
	t->ival = v;
}

void
lexer_next(struct lexer *lx, struct token *t)
{
	int c;

	for (;;) {
		c = peek(lx, 0);
		if (c == ' ' || c == '\t' || c == '\n' || c == '\r') {
			advance(lx);
		} else if (c == '/' && peek(lx, 1) == '/') {
			while (peek(lx, 0) != -1 && peek(lx, 0) != '\n')
				advance(lx);
		} else {
			break;
		}
	}
	memset(t, 0, sizeof(*t));
	t->line = lx->line;
	t->col = lx->col;
	t->start = lx->file->text + lx->pos;
	t->len = 1;
	if (c == -1) {
		t->kind = T_EOF;
		t->len = 1;
		return;
	}
	if (ident_start(c)) {
		size_t n;

		while (ident_char(peek(lx, 0)))
			advance(lx);
		n = lx->pos - (size_t)(t->start - lx->file->text);
		t->len = (uint32_t)n;
		t->kind = T_IDENT;
		for (size_t i = 0; i < IDP_ARRAY_LEN(keywords); i++) {
			if (strlen(keywords[i].word) == n &&
			    memcmp(keywords[i].word, t->start, n) == 0) {
				t->kind = keywords[i].kind;
				break;
			}
		}
		t->sval = ppool_strndup(lx->pool, t->start, n);
		t->slen = n;
		return;
	}
	if (c >= '0' && c <= '9') {
		lex_int(lx, t);
		return;
	}
	if (c == '"') {
		lex_string(lx, t);
		return;
	}
	advance(lx);
	switch (c) {
	case '@':
		t->kind = T_AT;
		return;
	case '(':
		t->kind = T_LPAREN;
		return;
	case ')':
		t->kind = T_RPAREN;
		return;
	case '{':
		t->kind = T_LBRACE;
		return;
	case '}':
		t->kind = T_RBRACE;
		return;
	case '[':
		t->kind = T_LBRACK;
		return;
	case ']':
		t->kind = T_RBRACK;
		return;
	case ',':
		t->kind = T_COMMA;
		return;
	case ';':
		t->kind = T_SEMI;
		return;
	case '.':
		t->kind = T_DOT;
		return;
	case ':':
		t->kind = T_COLON;
		return;
	case '+':
		t->kind = T_PLUS;
		return;
	case '-':
		t->kind = T_MINUS;
		return;
	case '=':
		if (peek(lx, 0) == '=') {
			advance(lx);
			t->kind = T_EQ;
			t->len = 2;
			return;
		}
		perr_add(lx->errs, lx->file, t->line, t->col, 1,
		         "unexpected \"=\" (comparison is \"==\")");
		t->kind = T_ERROR;
		return;
	case '!':
		if (peek(lx, 0) == '=') {
			advance(lx);
			t->kind = T_NE;
			t->len = 2;
			return;
		}
		perr_add(lx->errs, lx->file, t->line, t->col, 1,
		         "unexpected \"!\" (negation is \"not\")");
		t->kind = T_ERROR;
		return;
	case '<':
	case '>':
		if (peek(lx, 0) == '=') {
			advance(lx);
			t->kind = c == '<' ? T_LE : T_GE;
			t->len = 2;
		} else {
			t->kind = c == '<' ? T_LT : T_GT;
		}
		return;
	case '&':
	case '|':
		if (peek(lx, 0) == c) {
			advance(lx);
			t->len = 2;
		}
		perr_add(lx->errs, lx->file, t->line, t->col, t->len,
		         "unexpected \"%.*s\" (use \"%s\")", (int)t->len, t->start,
		         c == '&' ? "and" : "or");
		t->kind = T_ERROR;
		return;
	default:
		break;
	}
	if (c >= 0x21 && c < 0x7f)
		perr_add(lx->errs, lx->file, t->line, t->col, 1, "unexpected character '%c'", c);
	else
		perr_add(lx->errs, lx->file, t->line, t->col, 1, "unexpected byte 0x%02x",
		         (unsigned)c);
	t->kind = T_ERROR;
}

void
token_describe(const struct token *t, char *buf, size_t len)
{
	switch (t->kind) {
	case T_EOF:
		snprintf(buf, len, "end of file");
		return;
	case T_IDENT:
		snprintf(buf, len, "identifier \"%.40s\"", t->sval);
		return;
	case T_STRING:
		snprintf(buf, len, "string \"%.40s\"", t->sval);
		return;
	case T_INT:
		snprintf(buf, len, "integer %lld", (long long)t->ival);
		return;
	default:
		snprintf(buf, len, "\"%.*s\"", (int)(t->len > 40 ? 40 : t->len), t->start);
		return;
	}
}
