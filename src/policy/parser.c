/*
 * parser.c - tokens to rules with expression trees (grammar in
 * docs/policy-language.md).
 *
 * Recursive descent, one function per grammar rule, nesting bounded by
 * POLICY_MAX_DEPTH so hostile input cannot exhaust the stack.  A syntax error
 * abandons the current rule: the parser skips to the next ';' (or to the
 * next '@', which can only start a rule) and carries on, so one run reports
 * the errors of every rule.  Meaning (attributes, types, ids) is left to the
 * checker.
 */
#include <stdlib.h>
#include <string.h>

#include "policy_int.h"

struct parser {
	struct lexer lx;
	struct token cur;
	const struct pfile *file;
	struct ppool *pool;
	struct perrors *errs;
	int depth;
};

static void
next(struct parser *p)
{
	lexer_next(&p->lx, &p->cur);
}

/* Report "expected what, found <token>" unless the lexer already reported it. */
static void
expected(struct parser *p, const char *what)
{
	char found[80];

	if (p->cur.kind == T_ERROR)
		return;
	token_describe(&p->cur, found, sizeof(found));
	perr_add(p->errs, p->file, p->cur.line, p->cur.col, p->cur.len, "expected %s, found %s",
	         what, found);
}

static bool
accept(struct parser *p, enum tok_kind k)
{
	if (p->cur.kind != k)
		return false;
	next(p);
	return true;
}

static bool
expect(struct parser *p, enum tok_kind k, const char *what)
{
	if (accept(p, k))
		return true;
	expected(p, what);
	return false;
}

static struct ast *
node(struct parser *p, enum ast_kind kind, const struct token *at)
{
	struct ast *n = ppool_alloc(p->pool, sizeof(*n));

	n->kind = kind;
	n->h = 1;
	n->line = at->line;
	n->col = at->col;
	n->len = at->len;
	n->attr = -1;
	return n;
}

static struct ast *parse_expr(struct parser *p);

/* Set n's height from its children; false (reported) when it is too tall. */
static bool
grown(struct parser *p, struct ast *n)
{
	unsigned h = n->a != NULL ? n->a->h : 0;

	if (n->b != NULL && n->b->h > h)
		h = n->b->h;
	n->h = (uint16_t)(h + 1);
	if (n->h <= POLICY_MAX_HEIGHT)
		return true;
	perr_add(p->errs, p->file, n->line, n->col, n->len,
	         "expression too large (more than %d levels of operators)", POLICY_MAX_HEIGHT);
	return false;
}

static struct ast *
parse_path(struct parser *p)
{
	struct ast *n;
	char buf[256];
	size_t len = 0;

	if (p->cur.kind != T_IDENT) {
		expected(p, "an attribute");
		return NULL;
	}
	n = node(p, A_ATTR, &p->cur);
	for (;;) {
		size_t add = p->cur.slen;

		if (len + add + 1 >= sizeof(buf)) {
			perr_add(p->errs, p->file, n->line, n->col, n->len,
			         "attribute name too long");
			return NULL;
		}
		memcpy(buf + len, p->cur.sval, add);
		len += add;
		n->len = p->cur.col + p->cur.len - n->col;
		next(p);
		if (p->cur.kind != T_DOT)
			break;
		buf[len++] = '.';
		next(p);
		if (p->cur.kind != T_IDENT) {
			expected(p, "an attribute name after \".\"");
			return NULL;
		}
	}
	n->s = ppool_strndup(p->pool, buf, len);
	n->slen = len;
	if (p->cur.kind == T_LBRACK) {
		next(p);
		if (p->cur.kind != T_STRING) {
			expected(p, "a string key in \"[...]\"");
			return NULL;
		}
		n->key = p->cur.sval;
		next(p);
		if (p->cur.kind != T_RBRACK) {
			expected(p, "\"]\"");
			return NULL;
		}
		n->len = p->cur.line == n->line ? p->cur.col + p->cur.len - n->col : n->len;
		next(p);
	}
	return n;
}

/* A literal inside a list or a with block: string, [-]integer, true, false. */
static struct ast *
parse_literal(struct parser *p, const char *what)
{
	struct ast *n;

	switch (p->cur.kind) {
	case T_STRING:
		n = node(p, A_STR, &p->cur);
		n->s = p->cur.sval;
		n->slen = p->cur.slen;
		next(p);
		return n;
	case T_INT:
		n = node(p, A_INT, &p->cur);
		n->i = p->cur.ival;
		next(p);
		return n;
	case T_MINUS:
		n = node(p, A_INT, &p->cur);
		next(p);
		if (p->cur.kind != T_INT) {
			expected(p, "an integer after \"-\"");
			return NULL;
		}
		n->i = -p->cur.ival;
		n->len = p->cur.col + p->cur.len - n->col;
		next(p);
		return n;
	case T_TRUE:
	case T_FALSE:
		n = node(p, A_BOOL, &p->cur);
		n->i = p->cur.kind == T_TRUE;
		next(p);
		return n;
	default:
		expected(p, what);
		return NULL;
	}
}

static struct ast *
parse_list(struct parser *p)
{
	struct ast *n = node(p, A_LIST, &p->cur), **items = NULL;
	size_t cap = 0;

	next(p); /* [ */
	while (p->cur.kind != T_RBRACK) {
		struct ast *it;

		if (n->n == POLICY_MAX_LIST) {
			perr_add(p->errs, p->file, p->cur.line, p->cur.col, p->cur.len,
			         "list longer than %d items", POLICY_MAX_LIST);
			goto fail;
		}
		it = parse_literal(p, "a string or integer in the list");
		if (it == NULL)
			goto fail;
		if (n->n == cap) {
			cap = cap ? cap * 2 : 8;
			items = idp_xrealloc(items, cap * sizeof(*items));
		}
		items[n->n++] = it;
		if (p->cur.kind == T_COMMA) {
			next(p);
		} else if (p->cur.kind != T_RBRACK) {
			expected(p, "\",\" or \"]\"");
			goto fail;
		}
	}
	if (p->cur.line == n->line)
		n->len = p->cur.col + p->cur.len - n->col;
	next(p); /* ] */
	n->items = ppool_alloc(p->pool, (n->n ? n->n : 1) * sizeof(*items));
	if (n->n)
		memcpy(n->items, items, n->n * sizeof(*items));
	free(items);
	return n;
fail:
	free(items);
	return NULL;
}

static struct ast *
parse_during(struct parser *p)
{
	struct ast *n = node(p, A_DURING, &p->cur);

	next(p);
	if (!expect(p, T_LPAREN, "\"(\" after \"during\""))
		return NULL;
	for (int i = 0; i < 3; i++) {
		if (p->cur.kind != T_STRING) {
			expected(p, i == 0 ? "a day list such as \"mon-fri\""
			                   : "a time such as \"09:00\"");
			return NULL;
		}
		n->args[i] = node(p, A_STR, &p->cur);
		n->args[i]->s = p->cur.sval;
		n->args[i]->slen = p->cur.slen;
		next(p);
		if (i < 2 && !expect(p, T_COMMA, "\",\""))
			return NULL;
	}
	if (p->cur.kind != T_RPAREN) {
		expected(p, "\")\"");
		return NULL;
	}
	if (p->cur.line == n->line)
		n->len = p->cur.col + 1 - n->col;
	next(p);
	return n;
}

static struct ast *
parse_term(struct parser *p)
{
	struct ast *n;
	struct token open;

	switch (p->cur.kind) {
	case T_STRING:
	case T_INT:
	case T_MINUS:
	case T_TRUE:
	case T_FALSE:
		return parse_literal(p, "an expression");
	case T_LBRACK:
		return parse_list(p);
	case T_IDENT:
		return parse_path(p);
	case T_HAS:
		n = node(p, A_HAS, &p->cur);
		next(p);
		if (!expect(p, T_LPAREN, "\"(\" after \"has\""))
			return NULL;
		n->a = parse_path(p);
		if (n->a == NULL)
			return NULL;
		if (p->cur.kind != T_RPAREN) {
			expected(p, "\")\"");
			return NULL;
		}
		if (p->cur.line == n->line)
			n->len = p->cur.col + 1 - n->col;
		next(p);
		return n;
	case T_DURING:
		return parse_during(p);
	case T_LPAREN:
		open = p->cur;
		next(p);
		n = parse_expr(p);
		if (n == NULL)
			return NULL;
		if (p->cur.kind != T_RPAREN) {
			char what[64];

			snprintf(what, sizeof(what), "\")\" to close the \"(\" at %u:%u", open.line,
			         open.col);
			expected(p, what);
			return NULL;
		}
		next(p);
		return n;
	default:
		expected(p, "an expression");
		return NULL;
	}
}

static struct ast *
parse_sum(struct parser *p)
{
	struct ast *l = parse_term(p);

	while (l != NULL && (p->cur.kind == T_PLUS || p->cur.kind == T_MINUS)) {
		struct ast *n = node(p, A_BIN, &p->cur);

		n->op = p->cur.kind == T_PLUS ? OP_ADD : OP_SUB;
		next(p);
		n->a = l;
		n->b = parse_term(p);
		if (n->b == NULL || !grown(p, n))
			return NULL;
		l = n;
	}
	return l;
}

static bool
relop(enum tok_kind k, enum ast_op *op)
{
	switch (k) {
	case T_EQ:
		*op = OP_EQ;
		return true;
	case T_NE:
		*op = OP_NE;
		return true;
	case T_LT:
		*op = OP_LT;
		return true;
	case T_LE:
		*op = OP_LE;
		return true;
	case T_GT:
		*op = OP_GT;
		return true;
	case T_GE:
		*op = OP_GE;
		return true;
	case T_IN:
		*op = OP_IN;
		return true;
	case T_WITHIN:
		*op = OP_WITHIN;
		return true;
	case T_LIKE:
		*op = OP_LIKE;
		return true;
	case T_STARTSWITH:
		*op = OP_STARTSWITH;
		return true;
	default:
		return false;
	}
}

static struct ast *
parse_relation(struct parser *p)
{
	struct ast *l = parse_sum(p), *n;
	enum ast_op op;

	if (l == NULL || !relop(p->cur.kind, &op))
		return l;
	n = node(p, A_BIN, &p->cur);
	n->op = op;
	next(p);
	n->a = l;
	n->b = parse_sum(p);
	if (n->b == NULL || !grown(p, n))
		return NULL;
	if (relop(p->cur.kind, &op)) {
		perr_add(p->errs, p->file, p->cur.line, p->cur.col, p->cur.len,
		         "comparisons do not chain; use \"and\" or parentheses");
		return NULL;
	}
	return n;
}

static struct ast *
parse_unary(struct parser *p)
{
	struct ast *n, *inner;

	if (p->cur.kind != T_NOT)
		return parse_relation(p);
	n = node(p, A_NOT, &p->cur);
	next(p);
	if (++p->depth > POLICY_MAX_DEPTH) {
		perr_add(p->errs, p->file, n->line, n->col, n->len,
		         "expression nested too deeply (more than %d levels)", POLICY_MAX_DEPTH);
		return NULL;
	}
	inner = parse_unary(p);
	p->depth--;
	if (inner == NULL)
		return NULL;
	n->a = inner;
	return grown(p, n) ? n : NULL;
}

static struct ast *
parse_and(struct parser *p)
{
	struct ast *l = parse_unary(p);

	while (l != NULL && p->cur.kind == T_AND) {
		struct ast *n = node(p, A_AND, &p->cur);

		next(p);
		n->a = l;
		n->b = parse_unary(p);
		if (n->b == NULL || !grown(p, n))
			return NULL;
		l = n;
	}
	return l;
}

static struct ast *
parse_expr(struct parser *p)
{
	struct ast *l;

	if (++p->depth > POLICY_MAX_DEPTH) {
		perr_add(p->errs, p->file, p->cur.line, p->cur.col, p->cur.len,
		         "expression nested too deeply (more than %d levels)", POLICY_MAX_DEPTH);
		return NULL;
	}
	l = parse_and(p);
	while (l != NULL && p->cur.kind == T_OR) {
		struct ast *n = node(p, A_OR, &p->cur);

		next(p);
		n->a = l;
		n->b = parse_and(p);
		if (n->b == NULL || !grown(p, n)) {
			l = NULL;
			break;
		}
		l = n;
	}
	p->depth--;
	return l;
}

/* Append one element to a pool-less growing array (copied to the pool later). */
#define GROW(arr, n, cap)                                                                          \
	do {                                                                                       \
		if ((n) == (cap)) {                                                                \
			(cap) = (cap) ? (cap)*2 : 4;                                               \
			(arr) = idp_xrealloc((arr), (cap) * sizeof(*(arr)));                       \
		}                                                                                  \
	} while (0)

static void *
to_pool(struct parser *p, void *arr, size_t n, size_t size)
{
	void *out = ppool_alloc(p->pool, n ? n * size : 1);

	if (n)
		memcpy(out, arr, n * size);
	free(arr);
	return out;
}

static bool
is_effect(enum tok_kind k, enum policy_effect *e)
{
	switch (k) {
	case T_ALLOW:
		*e = POLICY_ALLOW;
		return true;
	case T_DENY:
		*e = POLICY_DENY;
		return true;
	case T_REQUIRE_APPROVAL:
		*e = POLICY_REQUIRE_APPROVAL;
		return true;
	case T_ALLOW_WITH_CONDITIONS:
		*e = POLICY_ALLOW_WITH_CONDITIONS;
		return true;
	default:
		return false;
	}
}

static bool
parse_with(struct parser *p, struct ast_rule *r)
{
	struct ast_cond *conds = NULL;
	size_t cap = 0;

	r->has_with = true;
	r->wline = p->cur.line;
	r->wcol = p->cur.col;
	r->wlen = p->cur.len;
	next(p);
	if (!expect(p, T_LBRACE, "\"{\" after \"with\""))
		goto fail;
	while (p->cur.kind != T_RBRACE) {
		struct ast_cond c;

		if (p->cur.kind != T_IDENT) {
			expected(p, "a condition name (max_ttl, scopes, enhanced_logging)");
			goto fail;
		}
		c.name = p->cur.sval;
		c.line = p->cur.line;
		c.col = p->cur.col;
		c.len = p->cur.len;
		next(p);
		if (!expect(p, T_COLON, "\":\" after the condition name"))
			goto fail;
		c.value = p->cur.kind == T_LBRACK ? parse_list(p)
		                                  : parse_literal(p, "a value (integer, string, "
		                                                     "boolean or list)");
		if (c.value == NULL)
			goto fail;
		if (r->n_conds >= 16) {
			perr_add(p->errs, p->file, c.line, c.col, c.len, "too many conditions");
			goto fail;
		}
		GROW(conds, r->n_conds, cap);
		conds[r->n_conds++] = c;
		if (p->cur.kind == T_COMMA) {
			next(p);
		} else if (p->cur.kind != T_RBRACE) {
			expected(p, "\",\" or \"}\"");
			goto fail;
		}
	}
	next(p);
	r->conds = to_pool(p, conds, r->n_conds, sizeof(*conds));
	return true;
fail:
	free(conds);
	return false;
}

static struct ast_rule *
parse_rule(struct parser *p)
{
	struct ast_rule *r = ppool_alloc(p->pool, sizeof(*r));
	struct ast_annot *annots = NULL;
	struct ast_clause *clauses = NULL;
	size_t acap = 0, ccap = 0;

	r->file = p->file;
	while (p->cur.kind == T_AT) {
		struct ast_annot a;

		a.line = p->cur.line;
		a.col = p->cur.col;
		next(p);
		if (p->cur.kind != T_IDENT) {
			expected(p, "an annotation name after \"@\"");
			goto fail;
		}
		a.name = p->cur.sval;
		a.len = p->cur.col + p->cur.len - a.col;
		next(p);
		if (!expect(p, T_LPAREN, "\"(\" after the annotation name"))
			goto fail;
		if (p->cur.kind != T_STRING) {
			expected(p, "a string");
			goto fail;
		}
		a.value = p->cur.sval;
		a.vline = p->cur.line;
		a.vcol = p->cur.col;
		a.vlen = p->cur.len;
		next(p);
		if (!expect(p, T_RPAREN, "\")\""))
			goto fail;
		if (r->n_annots >= 16) {
			perr_add(p->errs, p->file, a.line, a.col, a.len, "too many annotations");
			goto fail;
		}
		GROW(annots, r->n_annots, acap);
		annots[r->n_annots++] = a;
	}
	if (!is_effect(p->cur.kind, &r->effect)) {
		expected(p, "a rule (an annotation, or allow, deny, require_approval, "
		            "allow_with_conditions)");
		goto fail;
	}
	r->line = p->cur.line;
	r->col = p->cur.col;
	r->len = p->cur.len;
	next(p);
	while (p->cur.kind == T_WHEN || p->cur.kind == T_UNLESS) {
		struct ast_clause c;

		c.unless = p->cur.kind == T_UNLESS;
		c.line = p->cur.line;
		c.col = p->cur.col;
		c.len = p->cur.len;
		next(p);
		if (!expect(p, T_LBRACE,
		            c.unless ? "\"{\" after \"unless\"" : "\"{\" after \"when\""))
			goto fail;
		p->depth = 0;
		c.expr = parse_expr(p);
		if (c.expr == NULL)
			goto fail;
		if (!expect(p, T_RBRACE, "\"}\" to end the condition"))
			goto fail;
		if (r->n_clauses >= 64) {
			perr_add(p->errs, p->file, c.line, c.col, c.len, "too many clauses");
			goto fail;
		}
		GROW(clauses, r->n_clauses, ccap);
		clauses[r->n_clauses++] = c;
	}
	if (p->cur.kind == T_WITH && !parse_with(p, r))
		goto fail;
	if (p->cur.kind != T_SEMI) {
		expected(p, r->has_with ? "\";\" to end the rule"
		                        : "\"when\", \"unless\", \"with\" or \";\"");
		goto fail;
	}
	next(p);
	r->annots = to_pool(p, annots, r->n_annots, sizeof(*annots));
	r->clauses = to_pool(p, clauses, r->n_clauses, sizeof(*clauses));
	return r;
fail:
	free(annots);
	free(clauses);
	return NULL;
}

void
parse_file(const struct pfile *f, struct ppool *pool, struct perrors *errs, struct ast_file *out)
{
	struct parser p;
	struct ast_rule **rules = NULL;
	size_t cap = 0;

	memset(&p, 0, sizeof(p));
	p.file = f;
	p.pool = pool;
	p.errs = errs;
	out->n_rules = 0;
	lexer_init(&p.lx, f, errs, pool);
	next(&p);
	while (p.cur.kind != T_EOF) {
		struct ast_rule *r = parse_rule(&p);

		if (r != NULL) {
			if (out->n_rules >= POLICY_MAX_RULES) {
				perr_add(errs, f, r->line, r->col, r->len, "more than %d rules",
				         POLICY_MAX_RULES);
				break;
			}
			GROW(rules, out->n_rules, cap);
			rules[out->n_rules++] = r;
			continue;
		}
		/* Recover: skip the rest of this rule. */
		while (p.cur.kind != T_SEMI && p.cur.kind != T_EOF && p.cur.kind != T_AT)
			next(&p);
		if (p.cur.kind == T_SEMI)
			next(&p);
	}
	out->rules = to_pool(&p, rules, out->n_rules, sizeof(*rules));
}
