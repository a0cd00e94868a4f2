/*
 * policy_int.h - what the stages of the policy pipeline share:
 *
 *   lexer.c   source text -> tokens
 *   parser.c  tokens -> rules with expression trees (struct ast)
 *   check.c   attributes resolved, types checked, literals coerced, ids unique
 *   compile.c trees -> a flat, immutable policy_set with a rule index
 *   eval.c    policy_set + policy_input -> policy_decision, allocating nothing
 *   input.c   attribute table, input setters, JSON -> policy_input
 *   context.c time zones, call counters, risk baseline
 *   cli.c     `idpd policy check|test`
 *
 * Nothing here is visible outside src/policy and its tests.
 */
#ifndef IDPD_POLICY_INT_H
#define IDPD_POLICY_INT_H

#include <stdbool.h>
#include <stdint.h>

#include "idpd/policy.h"

#define POLICY_MAX_DEPTH 64    /* parentheses and "not" nesting */
#define POLICY_MAX_HEIGHT 256  /* expression tree height, bounds every recursion */
#define POLICY_MAX_STRING 1024 /* bytes in one string literal */
#define POLICY_MAX_LIST 256    /* items in one list literal or JSON list */
#define POLICY_MAX_ID 64       /* bytes in a rule id */

/* ---- a bump allocator; everything is freed at once ---------------------- */

struct ppool_chunk;
struct ppool {
	struct ppool_chunk *head;
};
/* Zeroed memory that lives until ppool_free(); aborts on OOM. */
void *ppool_alloc(struct ppool *p, size_t n);
char *ppool_strndup(struct ppool *p, const char *s, size_t n);
void ppool_free(struct ppool *p);

/* ---- sources and collected errors --------------------------------------- */

struct pfile {
	const char *name;
	const char *text;
	size_t len;
};

struct perror_item {
	const struct pfile *file;
	uint32_t line, col, len;
	char *msg;
	size_t seq; /* keeps the order of errors at the same position */
};

struct perrors {
	struct perror_item *v;
	size_t n, cap;
};

/* Record an error at line:col, underlining len bytes (at least one). */
void perr_add(struct perrors *e, const struct pfile *f, uint32_t line, uint32_t col, uint32_t len,
              const char *fmt, ...) IDP_PRINTF(6, 7);
/*
 * Sort by file, line, column and append each error to diag as
 * "file:line:col: message", the source line and a "^^^" underline; at most
 * POLICY_MAX_ERRORS, then one line counting the rest.
 */
void perr_render(struct perrors *e, struct idp_diag *diag);
void perr_free(struct perrors *e);

/* ---- tokens --------------------------------------------------------------- */

enum tok_kind {
	T_EOF,
	T_ERROR, /* already reported */
	T_IDENT,
	T_STRING,
	T_INT,
	T_AT,
	T_LPAREN,
	T_RPAREN,
	T_LBRACE,
	T_RBRACE,
	T_LBRACK,
	T_RBRACK,
	T_COMMA,
	T_SEMI,
	T_DOT,
	T_COLON,
	T_PLUS,
	T_MINUS,
	T_EQ,
	T_NE,
	T_LT,
	T_LE,
	T_GT,
	T_GE,
	/* keywords */
	T_ALLOW,
	T_DENY,
	T_REQUIRE_APPROVAL,
	T_ALLOW_WITH_CONDITIONS,
	T_WHEN,
	T_UNLESS,
	T_WITH,
	T_AND,
	T_OR,
	T_NOT,
	T_IN,
	T_WITHIN,
	T_LIKE,
	T_STARTSWITH,
	T_HAS,
	T_DURING,
	T_TRUE,
	T_FALSE,
};

struct token {
	enum tok_kind kind;
	uint32_t line, col, len; /* len: bytes of source the token spans */
	const char *start;
	int64_t ival;     /* T_INT */
	const char *sval; /* T_STRING decoded (pool), T_IDENT NUL-terminated copy */
	size_t slen;
};

struct lexer {
	const struct pfile *file;
	struct perrors *errs;
	struct ppool *pool;
	size_t pos;
	uint32_t line, col;
};

void lexer_init(struct lexer *lx, const struct pfile *f, struct perrors *errs, struct ppool *pool);
/* The next token; errors are reported to lx->errs and yield T_ERROR. */
void lexer_next(struct lexer *lx, struct token *t);
/* How a token reads in a message: "\"{\"", "identifier \"foo\"", "end of file". */
void token_describe(const struct token *t, char *buf, size_t len);

/* ---- syntax trees ----------------------------------------------------------- */

enum ast_kind {
	A_INT,
	A_STR,
	A_BOOL,
	A_LIST,
	A_ATTR, /* path, optional ["key"] */
	A_HAS,  /* has(path) */
	A_DURING,
	A_NOT,
	A_AND,
	A_OR,
	A_BIN,
};

enum ast_op {
	OP_EQ,
	OP_NE,
	OP_LT,
	OP_LE,
	OP_GT,
	OP_GE,
	OP_IN,
	OP_WITHIN,
	OP_LIKE,
	OP_STARTSWITH,
	OP_ADD,
	OP_SUB,
};

/* Types the checker gives nodes. */
enum ty {
	TY_ERR, /* an error was reported below; do not report again */
	TY_BOOL,
	TY_INT,
	TY_STRING,
	TY_ACTION,
	TY_WEEKDAY,
	TY_LIST,    /* strings */
	TY_INTLIST, /* integers, action classes or weekdays */
	TY_EMPTY,   /* the literal [] */
	TY_MAP,
};

struct ast {
	enum ast_kind kind;
	enum ast_op op;
	enum ty type;
	uint16_t h;              /* tree height */
	uint32_t line, col, len; /* what an error about this node underlines */
	struct ast *a, *b;
	int64_t i;     /* A_INT, A_BOOL */
	const char *s; /* A_STR value; A_ATTR/A_HAS path text ("agent.id") */
	size_t slen;
	struct ast **items; /* A_LIST */
	size_t n;
	const char *key; /* A_ATTR/A_HAS map key, or NULL */
	int attr;        /* A_ATTR/A_HAS after checking; -1 before */
	enum ty elem;    /* A_LIST of TY_INTLIST: what the ints are */
	/* A_DURING: the three string arguments, then the checked window */
	struct ast *args[3];
	uint8_t days;
	uint16_t from, to;
};

struct ast_annot {
	const char *name;
	const char *value;
	uint32_t line, col, len;    /* the "@name" */
	uint32_t vline, vcol, vlen; /* the value */
};

struct ast_clause {
	bool unless;
	struct ast *expr;
	uint32_t line, col, len; /* the keyword */
};

struct ast_cond {
	const char *name;
	uint32_t line, col, len;
	struct ast *value; /* a literal or list literal */
};

struct ast_rule {
	const struct pfile *file;
	enum policy_effect effect;
	uint32_t line, col, len; /* the effect keyword */
	struct ast_annot *annots;
	size_t n_annots;
	struct ast_clause *clauses;
	size_t n_clauses;
	bool has_with;
	uint32_t wline, wcol, wlen; /* "with" */
	struct ast_cond *conds;
	size_t n_conds;
	/* filled by the checker */
	const char *id, *reason;
	uint32_t id_line, id_col;
	bool has_ttl, logging;
	int64_t ttl;
	const char **scopes;
	size_t n_scopes;
};

struct ast_file {
	struct ast_rule **rules;
	size_t n_rules;
};

/*
 * Parse one file.  Rules with syntax errors are reported and left out, and
 * parsing resumes after the next ';', so one load reports every error.
 */
void parse_file(const struct pfile *f, struct ppool *pool, struct perrors *errs,
                struct ast_file *out);

/* Check every rule of every file; ids must be unique across files. */
void check_rules(struct ast_rule **rules, size_t n, struct ppool *pool, struct perrors *errs);

/* ---- the compiled set ----------------------------------------------------- */

enum ckind {
	K_CONST, /* i, s, or a list in ilist / slist */
	K_ATTR,
	K_LABEL, /* map attr with key */
	K_HAS,
	K_HAS_LABEL,
	K_DURING,
	K_NOT,
	K_AND,
	K_OR,
	K_BIN,
};

enum vt { VT_INT, VT_STR, VT_LIST, VT_INTLIST };

struct cnode {
	uint8_t kind;
	uint8_t op;
	uint8_t vt; /* value type of the node */
	uint16_t attr;
	uint32_t a, b;
	int64_t i;
	const char *s;            /* K_CONST string; K_LABEL key */
	const char *const *slist; /* K_CONST VT_LIST */
	const int64_t *ilist;     /* K_CONST VT_INTLIST */
	uint32_t n;
	uint8_t days;
	uint16_t from, to;
	const char *missing; /* "agent.labels[\"x\"] is missing" */
};

#define NO_NODE UINT32_MAX

struct policy_rule {
	const char *id;
	const char *reason;
	enum policy_effect effect;
	uint32_t cond; /* root node, NO_NODE: always true */
	const char *file;
	uint32_t line, col;
	uint8_t action_mask; /* bit c: the rule can hold for action class c */
	bool has_ttl, logging;
	int64_t ttl;
	const char *const *scopes;
	size_t n_scopes;
	uint32_t index;
};

struct idx_slot {
	uint64_t hash;
	const char *value; /* NULL: empty slot */
	uint16_t attr;
	uint32_t first, n; /* into set->irules */
};

struct policy_set {
	int refs; /* atomic */
	struct ppool pool;
	char hash[7 + 64 + 1];
	int64_t loaded_at_ms;

	struct policy_rule *rules;
	size_t n_rules;
	struct cnode *nodes;
	size_t n_nodes;

	/* The index: rules keyed by one "attr == value" conjunct. */
	size_t nwords;    /* bitmap words for n_rules */
	uint64_t *always; /* rules with no key */
	struct idx_slot *itab;
	size_t itab_mask;
	uint32_t *irules;
	uint16_t keyed[POLICY_ATTR_COUNT]; /* attributes some rule is keyed on */
	size_t n_keyed;
	/* Per keyed attribute: deny / require_approval rules to run when it is missing. */
	uint64_t *missing_bits[POLICY_ATTR_COUNT];
};

/* Compile checked rules into set (whose pool holds everything). */
void compile_rules(struct ast_rule **rules, size_t n, struct policy_set *set);

/* FNV-1a over the attribute number and the value. */
uint64_t policy_index_hash(unsigned attr, const char *s);

/* ---- attribute table, shared by the checker and the JSON reader --------- */

struct policy_attr_info {
	const char *name;    /* "agent.id" */
	const char *missing; /* "agent.id is missing" */
	enum policy_type type;
	bool indexable;
	uint8_t index_rank; /* lower is preferred as an index key */
};
const struct policy_attr_info *policy_attr_info(unsigned a);

/* ---- time helpers (context.c) ----------------------------------------------- */

/* Days since 1970-01-01 for a proleptic Gregorian date. */
int64_t policy_days_from_civil(int64_t y, unsigned m, unsigned d);
/* Parse RFC 3339 ("2026-03-30T10:00:00Z", fraction and offset optional) to ms. */
int policy_parse_rfc3339(const char *s, int64_t *ms);
/* Day list ("mon-fri,sun") to a bit set, 0 when invalid. */
uint8_t policy_parse_days(const char *s);
/* "HH:MM" to minutes; allow_24 admits "24:00".  -1 when invalid. */
int policy_parse_hhmm(const char *s, bool allow_24);

/* Scope containment for the evaluator: both already known valid. */
bool scope_within_valid(const char *requested, const char *pattern);

/* A valid scope and where its parts are, from one pass over it. */
struct scope_split {
	const char *s;
	size_t colon, len;
};
/* Validate s as scope_validate() does, filling out; false when invalid. */
bool scope_scan(const char *s, struct scope_split *out);
/* requested within pattern, both split by scope_scan(). */
bool scope_within_split(const struct scope_split *requested, const struct scope_split *pattern);

#endif /* IDPD_POLICY_INT_H */
