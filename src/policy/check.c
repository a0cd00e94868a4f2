/*
 * check.c - the meaning of parsed rules: annotations, attribute names, types,
 * literal coercions (action classes, weekdays, time windows, scopes) and
 * unique rule ids.
 *
 * Every error is reported with the position of the offending node; a node
 * whose operand already failed gets TY_ERR and stays quiet, so one mistake
 * yields one message.  After a clean check every A_ATTR/A_HAS node has its
 * attr, every node its type, and every rule its id, reason and conditions.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "policy_int.h"

#define POLICY_MAX_TTL_S (366LL * 86400)

struct checker {
	struct perrors *errs;
	struct ppool *pool;
	const struct pfile *file;
};

#define ERR(c, n, ...) perr_add((c)->errs, (c)->file, (n)->line, (n)->col, (n)->len, __VA_ARGS__)

static const char *
ty_name(enum ty t, enum ty elem)
{
	switch (t) {
	case TY_BOOL:
		return "boolean";
	case TY_INT:
		return "integer";
	case TY_STRING:
		return "string";
	case TY_ACTION:
		return "action class";
	case TY_WEEKDAY:
		return "weekday";
	case TY_LIST:
		return "list of strings";
	case TY_INTLIST:
		return elem == TY_ACTION    ? "list of action classes"
		       : elem == TY_WEEKDAY ? "list of weekdays"
		                            : "list of integers";
	case TY_EMPTY:
		return "empty list";
	case TY_MAP:
		return "map";
	case TY_ERR:
		break;
	}
	return "invalid value";
}

static const char *
op_name(enum ast_op op)
{
	static const char *const names[] = {
	    "==", "!=", "<", "<=", ">", ">=", "in", "within", "like", "startswith", "+", "-"};

	return names[op];
}

static enum ty
ty_of_attr(enum policy_type t)
{
	switch (t) {
	case POLICY_T_STRING:
		return TY_STRING;
	case POLICY_T_INT:
		return TY_INT;
	case POLICY_T_BOOL:
		return TY_BOOL;
	case POLICY_T_ACTION:
		return TY_ACTION;
	case POLICY_T_WEEKDAY:
		return TY_WEEKDAY;
	case POLICY_T_LIST:
		return TY_LIST;
	case POLICY_T_MAP:
		return TY_MAP;
	}
	return TY_ERR;
}

/* Resolve a path; bare_map allows "agent.labels" without a key (for has()). */
static enum ty
resolve(struct checker *c, struct ast *n, bool bare_map)
{
	int a = policy_attr_lookup(n->s);
	enum ty t;

	if (a < 0) {
		ERR(c, n, "unknown attribute \"%s\"", n->s);
		return TY_ERR;
	}
	n->attr = a;
	t = ty_of_attr(policy_attr_type(a));
	if (n->key != NULL) {
		if (t != TY_MAP) {
			ERR(c, n, "\"%s\" is not a map; it cannot be indexed", n->s);
			return TY_ERR;
		}
		return TY_STRING;
	}
	if (t == TY_MAP && !bare_map) {
		ERR(c, n, "\"%s\" is a map; index it with [\"key\"]", n->s);
		return TY_ERR;
	}
	return t;
}

/* Turn the string literal n into an action class or weekday constant. */
static bool
coerce_literal(struct checker *c, struct ast *n, enum ty to)
{
	int v;

	if (to == TY_ACTION) {
		v = idp_action_class_parse(n->s);
		if (v < 0) {
			ERR(c, n,
			    "unknown action class \"%s\" (expected read, write, delete or admin)",
			    n->s);
			return false;
		}
	} else {
		v = policy_weekday_parse(n->s);
		if (v < 0) {
			ERR(c, n,
			    "unknown weekday \"%s\" (expected mon, tue, wed, thu, fri, sat or sun)",
			    n->s);
			return false;
		}
	}
	n->kind = A_INT;
	n->i = v;
	n->type = to;
	return true;
}

/* Coerce the other operand of a comparison with an action class or weekday. */
static enum ty
coerce_operand(struct checker *c, struct ast *other, enum ty to, enum ty cur)
{
	if (cur == TY_STRING && other->kind == A_STR)
		return coerce_literal(c, other, to) ? to : TY_ERR;
	if (cur == TY_LIST && other->kind == A_LIST) {
		for (size_t i = 0; i < other->n; i++) {
			if (!coerce_literal(c, other->items[i], to))
				return TY_ERR;
		}
		other->type = TY_INTLIST;
		other->elem = to;
		return TY_INTLIST;
	}
	return cur;
}

static enum ty check_expr(struct checker *c, struct ast *n);

static enum ty
check_list(struct checker *c, struct ast *n)
{
	enum ty t = TY_EMPTY;

	for (size_t i = 0; i < n->n; i++) {
		struct ast *it = n->items[i];
		enum ty it_t = it->kind == A_STR   ? TY_LIST
		               : it->kind == A_INT ? TY_INTLIST
		                                   : TY_ERR;

		if (it_t == TY_ERR) {
			ERR(c, it, "lists hold strings or integers, not booleans");
			return TY_ERR;
		}
		if (t != TY_EMPTY && it_t != t) {
			ERR(c, it, "list mixes strings and integers");
			return TY_ERR;
		}
		it->type = it_t == TY_LIST ? TY_STRING : TY_INT;
		t = it_t;
	}
	n->elem = TY_INT;
	return t;
}

/* Check a string literal (or each item of a list literal) is a scope pattern. */
static bool
check_scope_literals(struct checker *c, struct ast *n)
{
	struct idp_diag d;

	if (n->kind == A_LIST) {
		for (size_t i = 0; i < n->n; i++) {
			if (!check_scope_literals(c, n->items[i]))
				return false;
		}
		return true;
	}
	if (n->kind != A_STR)
		return true;
	idp_diag_init(&d);
	if (scope_validate(n->s, &d) == IDP_OK)
		return true;
	ERR(c, n, "invalid scope in \"within\": %s", idp_diag_str(&d));
	return false;
}

static bool
is_list(enum ty t)
{
	return t == TY_LIST || t == TY_INTLIST || t == TY_EMPTY;
}

static enum ty
check_bin(struct checker *c, struct ast *n)
{
	enum ty ta = check_expr(c, n->a), tb = check_expr(c, n->b);
	const char *op = op_name(n->op);

	if (ta == TY_ERR || tb == TY_ERR)
		return TY_ERR;
	switch (n->op) {
	case OP_ADD:
	case OP_SUB:
		if (ta != TY_INT || tb != TY_INT) {
			struct ast *bad = ta != TY_INT ? n->a : n->b;

			ERR(c, bad, "\"%s\" needs integers, found %s", op,
			    ty_name(bad->type, bad->elem));
			return TY_ERR;
		}
		return TY_INT;
	case OP_EQ:
	case OP_NE:
	case OP_LT:
	case OP_LE:
	case OP_GT:
	case OP_GE:
		if (ta == TY_ACTION || ta == TY_WEEKDAY)
			tb = coerce_operand(c, n->b, ta, tb);
		else if (tb == TY_ACTION || tb == TY_WEEKDAY)
			ta = coerce_operand(c, n->a, tb, ta);
		if (ta == TY_ERR || tb == TY_ERR)
			return TY_ERR;
		if (is_list(ta) || is_list(tb) || ta == TY_MAP || tb == TY_MAP) {
			ERR(c, n, "\"%s\" cannot compare lists (use \"in\" or \"within\")", op);
			return TY_ERR;
		}
		if (n->op == OP_EQ || n->op == OP_NE) {
			if (ta != tb) {
				ERR(c, n, "\"%s\" compares values of one type, found %s and %s", op,
				    ty_name(ta, TY_INT), ty_name(tb, TY_INT));
				return TY_ERR;
			}
			return TY_BOOL;
		}
		if (ta != tb || (ta != TY_INT && ta != TY_ACTION)) {
			ERR(c, n,
			    "\"%s\" needs two integers or two action classes, found %s and %s", op,
			    ty_name(ta, TY_INT), ty_name(tb, TY_INT));
			return TY_ERR;
		}
		return TY_BOOL;
	case OP_IN:
		if (!is_list(tb)) {
			ERR(c, n->b, "\"in\" needs a list on its right, found %s",
			    ty_name(tb, TY_INT));
			return TY_ERR;
		}
		if (ta == TY_ACTION || ta == TY_WEEKDAY) {
			tb = coerce_operand(c, n->b, ta, tb);
			if (tb == TY_ERR)
				return TY_ERR;
		}
		if (tb == TY_EMPTY && !is_list(ta) && ta != TY_MAP && ta != TY_BOOL)
			return TY_BOOL;
		if ((ta == TY_STRING && tb == TY_LIST) || (tb == TY_INTLIST && ta == n->b->elem))
			return TY_BOOL;
		ERR(c, n, "\"in\" cannot look for %s in %s", ty_name(ta, TY_INT),
		    ty_name(tb, n->b->elem));
		return TY_ERR;
	case OP_WITHIN:
		if (ta != TY_STRING && ta != TY_LIST && ta != TY_EMPTY) {
			ERR(c, n->a,
			    "\"within\" needs scopes (a string or a list of strings), found %s",
			    ty_name(ta, n->a->elem));
			return TY_ERR;
		}
		if (tb != TY_STRING && tb != TY_LIST && tb != TY_EMPTY) {
			ERR(c, n->b,
			    "\"within\" needs scopes (a string or a list of strings), found %s",
			    ty_name(tb, n->b->elem));
			return TY_ERR;
		}
		if (!check_scope_literals(c, n->a) || !check_scope_literals(c, n->b))
			return TY_ERR;
		return TY_BOOL;
	case OP_LIKE:
	case OP_STARTSWITH:
		if (ta != TY_STRING || tb != TY_STRING) {
			struct ast *bad = ta != TY_STRING ? n->a : n->b;

			ERR(c, bad, "\"%s\" needs strings, found %s", op,
			    ty_name(bad->type, bad->elem));
			return TY_ERR;
		}
		return TY_BOOL;
	}
	return TY_ERR;
}

static enum ty
check_during(struct checker *c, struct ast *n)
{
	int from, to;

	n->days = policy_parse_days(n->args[0]->s);
	if (n->days == 0) {
		ERR(c, n->args[0],
		    "invalid day list \"%s\": use mon..sun and ranges such as \"mon-fri\", "
		    "separated by \",\"",
		    n->args[0]->s);
		return TY_ERR;
	}
	from = policy_parse_hhmm(n->args[1]->s, false);
	if (from < 0) {
		ERR(c, n->args[1], "invalid time \"%s\": expected \"HH:MM\", 00:00 to 23:59",
		    n->args[1]->s);
		return TY_ERR;
	}
	to = policy_parse_hhmm(n->args[2]->s, true);
	if (to < 0) {
		ERR(c, n->args[2], "invalid time \"%s\": expected \"HH:MM\", 00:00 to 24:00",
		    n->args[2]->s);
		return TY_ERR;
	}
	if (from == to) {
		ERR(c, n, "empty time window: it starts and ends at %s", n->args[1]->s);
		return TY_ERR;
	}
	n->from = (uint16_t)from;
	n->to = (uint16_t)to;
	return TY_BOOL;
}

static enum ty
check_expr(struct checker *c, struct ast *n)
{
	enum ty t = TY_ERR, ta, tb;

	switch (n->kind) {
	case A_INT:
		t = n->type == TY_ACTION || n->type == TY_WEEKDAY ? n->type : TY_INT;
		break;
	case A_STR:
		t = TY_STRING;
		break;
	case A_BOOL:
		t = TY_BOOL;
		break;
	case A_LIST:
		t = n->type == TY_INTLIST ? TY_INTLIST : check_list(c, n);
		break;
	case A_ATTR:
		t = resolve(c, n, false);
		break;
	case A_HAS:
		t = resolve(c, n->a, true) == TY_ERR ? TY_ERR : TY_BOOL;
		n->attr = n->a->attr;
		n->key = n->a->key;
		break;
	case A_DURING:
		t = check_during(c, n);
		break;
	case A_NOT:
		ta = check_expr(c, n->a);
		if (ta == TY_BOOL) {
			t = TY_BOOL;
		} else if (ta != TY_ERR) {
			ERR(c, n->a, "\"not\" needs a boolean, found %s", ty_name(ta, n->a->elem));
		}
		break;
	case A_AND:
	case A_OR:
		ta = check_expr(c, n->a);
		tb = check_expr(c, n->b);
		if (ta == TY_ERR || tb == TY_ERR)
			break;
		if (ta != TY_BOOL || tb != TY_BOOL) {
			struct ast *bad = ta != TY_BOOL ? n->a : n->b;

			ERR(c, bad, "\"%s\" needs booleans, found %s",
			    n->kind == A_AND ? "and" : "or", ty_name(bad->type, bad->elem));
			break;
		}
		t = TY_BOOL;
		break;
	case A_BIN:
		t = check_bin(c, n);
		break;
	}
	n->type = t;
	return t;
}

static bool
valid_id(const char *s)
{
	size_t n = strlen(s);

	if (n == 0 || n > POLICY_MAX_ID)
		return false;
	for (size_t i = 0; i < n; i++) {
		unsigned char ch = (unsigned char)s[i];

		if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
		      (ch >= '0' && ch <= '9') || ch == '.' || ch == '_' || ch == '-'))
			return false;
	}
	return true;
}

/*
 * A reason is shown to people and stored with approvals, which take one
 * printable line: no C0 control (a \t or \n escape included), DEL or C1
 * control (U+0080..U+009F, UTF-8 0xc2 0x80..0x9f), no line or paragraph
 * separator (U+2028, U+2029) and no bidirectional control (U+202A..U+202E,
 * U+2066..U+2069), which would let a reason shown to an approver read
 * otherwise than it is stored.  The lexer checked the rest of the encoding.
 */
static bool
reason_printable(const char *s)
{
	for (const unsigned char *p = (const unsigned char *)s; *p != '\0'; p++) {
		if (*p < 0x20 || *p == 0x7f || (p[0] == 0xc2 && p[1] >= 0x80 && p[1] <= 0x9f))
			return false;
		if (p[0] == 0xe2 && p[1] == 0x80 && p[2] >= 0xa8 && p[2] <= 0xae)
			return false; /* U+2028..U+202E */
		if (p[0] == 0xe2 && p[1] == 0x81 && p[2] >= 0xa6 && p[2] <= 0xa9)
			return false; /* U+2066..U+2069 */
	}
	return true;
}

static void
check_annotations(struct checker *c, struct ast_rule *r)
{
	bool seen_id = false, seen_reason = false;

	for (size_t i = 0; i < r->n_annots; i++) {
		struct ast_annot *a = &r->annots[i];
		bool is_id = strcmp(a->name, "id") == 0;

		if (!is_id && strcmp(a->name, "reason") != 0) {
			perr_add(c->errs, c->file, a->line, a->col, a->len,
			         "unknown annotation \"@%s\" (expected @id or @reason)", a->name);
			continue;
		}
		if (is_id ? seen_id : seen_reason) {
			perr_add(c->errs, c->file, a->line, a->col, a->len,
			         "duplicate annotation \"@%s\"", a->name);
			continue;
		}
		if (is_id) {
			seen_id = true;
			if (!valid_id(a->value)) {
				perr_add(c->errs, c->file, a->vline, a->vcol, a->vlen,
				         "invalid rule id \"%.80s\": use 1 to %d letters, digits, "
				         "'.', '_' or '-'",
				         a->value, POLICY_MAX_ID);
				continue;
			}
			r->id = a->value;
			r->id_line = a->vline;
			r->id_col = a->vcol;
		} else {
			seen_reason = true;
			if (a->value[0] == '\0') {
				perr_add(c->errs, c->file, a->vline, a->vcol, a->vlen,
				         "empty @reason");
				continue;
			}
			if (!reason_printable(a->value)) {
				perr_add(c->errs, c->file, a->vline, a->vcol, a->vlen,
				         "@reason must be one line of printable text (no tab, "
				         "newline or other control character)");
				continue;
			}
			r->reason = a->value;
		}
	}
	if (!seen_id)
		perr_add(c->errs, c->file, r->line, r->col, r->len, "rule has no @id annotation");
	if (!seen_reason)
		perr_add(c->errs, c->file, r->line, r->col, r->len,
		         "rule has no @reason annotation");
}

static void
check_conditions(struct checker *c, struct ast_rule *r)
{
	bool seen[3] = {false, false, false};
	static const char *const names[3] = {"max_ttl", "scopes", "enhanced_logging"};

	if (r->has_with && r->effect != POLICY_ALLOW_WITH_CONDITIONS) {
		perr_add(c->errs, c->file, r->wline, r->wcol, r->wlen,
		         "\"with\" conditions are only allowed on allow_with_conditions rules");
		return;
	}
	if (r->effect == POLICY_ALLOW_WITH_CONDITIONS && r->n_conds == 0) {
		perr_add(c->errs, c->file, r->line, r->col, r->len,
		         "allow_with_conditions needs a \"with\" block with at least one "
		         "condition");
		return;
	}
	for (size_t i = 0; i < r->n_conds; i++) {
		struct ast_cond *k = &r->conds[i];
		struct ast *v = k->value;
		int which = -1;

		for (int j = 0; j < 3; j++) {
			if (strcmp(k->name, names[j]) == 0)
				which = j;
		}
		if (which < 0) {
			perr_add(c->errs, c->file, k->line, k->col, k->len,
			         "unknown condition \"%s\" (expected max_ttl, scopes or "
			         "enhanced_logging)",
			         k->name);
			continue;
		}
		if (seen[which]) {
			perr_add(c->errs, c->file, k->line, k->col, k->len,
			         "duplicate condition \"%s\"", k->name);
			continue;
		}
		seen[which] = true;
		if (which == 0) {
			int64_t ms = -1;

			/* Bounded (a year) so that the token service's arithmetic on it
			 * cannot overflow; no token lives that long anyway. */
			if (v->kind == A_INT && v->i > 0 && v->i <= POLICY_MAX_TTL_S) {
				r->ttl = v->i;
			} else if (v->kind == A_STR && idp_duration_parse(v->s, &ms) == IDP_OK &&
			           ms >= 1000 && ms % 1000 == 0 && ms / 1000 <= POLICY_MAX_TTL_S) {
				r->ttl = ms / 1000;
			} else {
				ERR(c, v,
				    "max_ttl must be a positive number of seconds or a duration "
				    "such as \"5m\", at most a year");
				continue;
			}
			r->has_ttl = true;
		} else if (which == 1) {
			bool ok = true;

			if (v->kind != A_LIST || v->n == 0) {
				ERR(c, v, "scopes must be a non-empty list of scope patterns");
				continue;
			}
			for (size_t j = 0; j < v->n && ok; j++) {
				struct idp_diag d;

				idp_diag_init(&d);
				if (v->items[j]->kind != A_STR) {
					ERR(c, v->items[j],
					    "scopes must be a non-empty list of "
					    "scope patterns");
					ok = false;
				} else if (scope_validate(v->items[j]->s, &d) != IDP_OK) {
					ERR(c, v->items[j], "%s", idp_diag_str(&d));
					ok = false;
				}
			}
			if (!ok)
				continue;
			r->scopes = ppool_alloc(c->pool, v->n * sizeof(*r->scopes));
			for (size_t j = 0; j < v->n; j++)
				r->scopes[j] = v->items[j]->s;
			r->n_scopes = v->n;
		} else {
			if (v->kind != A_BOOL) {
				ERR(c, v, "enhanced_logging must be true or false");
				continue;
			}
			r->logging = v->i != 0;
		}
	}
}

struct id_ref {
	struct ast_rule *rule;
	size_t order; /* load order: the first definition is the one kept */
};

static int
id_cmp(const void *pa, const void *pb)
{
	const struct id_ref *a = pa, *b = pb;
	int d = strcmp(a->rule->id, b->rule->id);

	if (d != 0)
		return d;
	return a->order < b->order ? -1 : a->order > b->order;
}

void
check_rules(struct ast_rule **rules, size_t n, struct ppool *pool, struct perrors *errs)
{
	struct checker c = {errs, pool, NULL};
	struct id_ref *byid;
	size_t nid = 0;

	for (size_t i = 0; i < n; i++) {
		struct ast_rule *r = rules[i];

		c.file = r->file;
		check_annotations(&c, r);
		for (size_t j = 0; j < r->n_clauses; j++) {
			struct ast_clause *cl = &r->clauses[j];
			enum ty t = check_expr(&c, cl->expr);

			if (t != TY_BOOL && t != TY_ERR)
				ERR(&c, cl->expr,
				    "the condition of \"%s\" must be a boolean, found %s",
				    cl->unless ? "unless" : "when", ty_name(t, cl->expr->elem));
		}
		check_conditions(&c, r);
	}
	/* Duplicate ids, across files: sort by id, report each later twin. */
	byid = idp_xcalloc(n ? n : 1, sizeof(*byid));
	for (size_t i = 0; i < n; i++) {
		if (rules[i]->id != NULL) {
			byid[nid].rule = rules[i];
			byid[nid].order = i;
			nid++;
		}
	}
	qsort(byid, nid, sizeof(*byid), id_cmp);
	for (size_t i = 1, first = 0; i < nid; i++) {
		const struct ast_rule *r = byid[i].rule, *f;

		if (strcmp(byid[first].rule->id, r->id) != 0) {
			first = i;
			continue;
		}
		f = byid[first].rule;
		perr_add(errs, r->file, r->id_line, r->id_col, (uint32_t)strlen(r->id) + 2,
		         "duplicate rule id \"%s\" (first defined at %s:%u:%u)", r->id,
		         f->file->name, f->id_line, f->id_col);
	}
	free(byid);
}
