/*
 * compile.c - checked rules to an immutable policy_set, and the set's life:
 * loading a directory, hashing, reference counting, the engine that swaps
 * sets atomically, and the description served by GET /v1/policies.
 *
 * A compiled set is a few flat arrays in one pool: rules, expression nodes
 * (children by index), constant lists, and the rule index.  The index keys a
 * rule by one top-level "attr == value" (or "attr in [values]") conjunct of
 * its when clauses on a string attribute such as resource.audience: when the
 * input's value differs, that conjunct is false, so the whole rule is false
 * and need not be evaluated.  Rules without such a conjunct are always
 * evaluated.  An action-class mask, taken from comparisons of
 * request.action_class with constants, filters the same way.
 */
#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <openssl/evp.h>

#include "policy_int.h"

struct comp {
	struct policy_set *set;
	struct cnode *nodes;
	size_t n, cap;
};

static const char *
pstr(struct policy_set *set, const char *s)
{
	return ppool_strndup(&set->pool, s, strlen(s));
}

static uint32_t
push(struct comp *cc, const struct cnode *n)
{
	if (cc->n == cc->cap) {
		cc->cap = cc->cap ? cc->cap * 2 : 256;
		cc->nodes = idp_xrealloc(cc->nodes, cc->cap * sizeof(*cc->nodes));
	}
	cc->nodes[cc->n] = *n;
	return (uint32_t)cc->n++;
}

static uint8_t
vt_of(enum ty t)
{
	switch (t) {
	case TY_STRING:
		return VT_STR;
	case TY_LIST:
	case TY_EMPTY:
		return VT_LIST;
	case TY_INTLIST:
		return VT_INTLIST;
	default:
		return VT_INT;
	}
}

static uint32_t
emit(struct comp *cc, const struct ast *a)
{
	struct policy_set *set = cc->set;
	struct cnode n;

	memset(&n, 0, sizeof(n));
	n.a = n.b = NO_NODE;
	n.vt = vt_of(a->type);
	switch (a->kind) {
	case A_INT:
	case A_BOOL:
		n.kind = K_CONST;
		n.vt = VT_INT;
		n.i = a->i;
		break;
	case A_STR:
		n.kind = K_CONST;
		n.s = pstr(set, a->s);
		break;
	case A_LIST:
		n.kind = K_CONST;
		n.n = (uint32_t)a->n;
		if (a->type == TY_INTLIST) {
			int64_t *v = ppool_alloc(&set->pool, (a->n ? a->n : 1) * sizeof(*v));

			for (size_t i = 0; i < a->n; i++)
				v[i] = a->items[i]->i;
			n.ilist = v;
		} else {
			const char **v = ppool_alloc(&set->pool, (a->n ? a->n : 1) * sizeof(*v));

			for (size_t i = 0; i < a->n; i++)
				v[i] = pstr(set, a->items[i]->s);
			n.slist = v;
			n.vt = VT_LIST;
		}
		break;
	case A_ATTR:
	case A_HAS:
		n.attr = (uint16_t)a->attr;
		if (a->key != NULL) {
			n.kind = a->kind == A_ATTR ? K_LABEL : K_HAS_LABEL;
			n.s = pstr(set, a->key);
			n.missing = ppool_alloc(&set->pool, strlen(a->key) + 64);
			snprintf((char *)n.missing, strlen(a->key) + 64, "%s[\"%s\"] is missing",
			         policy_attr_info(a->attr)->name, a->key);
		} else {
			n.kind = a->kind == A_ATTR ? K_ATTR : K_HAS;
			n.missing = policy_attr_info(a->attr)->missing;
		}
		if (a->kind == A_HAS)
			n.vt = VT_INT;
		break;
	case A_DURING:
		n.kind = K_DURING;
		n.vt = VT_INT;
		n.days = a->days;
		n.from = a->from;
		n.to = a->to;
		break;
	case A_NOT:
		n.kind = K_NOT;
		n.vt = VT_INT;
		n.a = emit(cc, a->a);
		break;
	case A_AND:
	case A_OR:
		n.kind = a->kind == A_AND ? K_AND : K_OR;
		n.vt = VT_INT;
		n.a = emit(cc, a->a);
		n.b = emit(cc, a->b);
		break;
	case A_BIN:
		n.kind = K_BIN;
		n.op = (uint8_t)a->op;
		n.vt = VT_INT;
		n.a = emit(cc, a->a);
		n.b = emit(cc, a->b);
		break;
	}
	return push(cc, &n);
}

/* ---- index keys ------------------------------------------------------------ */

struct key {
	int attr;                 /* -1: none */
	const struct ast *values; /* A_STR or A_LIST of strings */
	size_t n;
};

static const struct ast *
plain_attr(const struct ast *n)
{
	if (n->kind == A_ATTR && n->key == NULL && n->attr >= 0 &&
	    policy_attr_info((unsigned)n->attr)->indexable)
		return n;
	return NULL;
}

static void
consider(const struct ast *c, struct key *best, uint8_t *mask)
{
	const struct ast *at, *lit;

	if (c->kind == A_AND) {
		consider(c->a, best, mask);
		consider(c->b, best, mask);
		return;
	}
	if (c->kind != A_BIN)
		return;
	/* Action classes: a comparison with a constant narrows the mask. */
	if (c->op <= OP_IN) {
		const struct ast *x = c->a, *k = c->b;
		bool swapped = false;
		uint8_t m = 0;

		if (k->kind == A_ATTR && k->attr == POLICY_ATTR_REQUEST_ACTION_CLASS) {
			x = c->b;
			k = c->a;
			swapped = true;
		}
		if (x->kind == A_ATTR && x->attr == POLICY_ATTR_REQUEST_ACTION_CLASS &&
		    x->key == NULL) {
			for (int64_t v = 0; v < IDP_ACTION_COUNT; v++) {
				bool hit = false;
				enum ast_op op = c->op;

				if (op == OP_IN && k->kind == A_LIST) {
					for (size_t i = 0; i < k->n; i++)
						hit |= k->items[i]->i == v;
				} else if (op != OP_IN && k->kind == A_INT) {
					int64_t l = swapped ? k->i : v, r = swapped ? v : k->i;

					hit = (op == OP_EQ && l == r) || (op == OP_NE && l != r) ||
					      (op == OP_LT && l < r) || (op == OP_LE && l <= r) ||
					      (op == OP_GT && l > r) || (op == OP_GE && l >= r);
				} else {
					hit = true;
				}
				if (hit)
					m |= (uint8_t)(1u << v);
			}
			*mask &= m;
			return;
		}
	}
	if (c->op == OP_EQ) {
		at = plain_attr(c->a) ? c->a : plain_attr(c->b) ? c->b : NULL;
		lit = at == c->a ? c->b : c->a;
		if (at == NULL || at->type != TY_STRING || lit->kind != A_STR)
			return;
	} else if (c->op == OP_IN) {
		at = plain_attr(c->a);
		lit = c->b;
		if (at == NULL || at->type != TY_STRING || lit->kind != A_LIST || lit->n == 0)
			return;
	} else {
		return;
	}
	{
		size_t n = lit->kind == A_LIST ? lit->n : 1;
		unsigned rank = policy_attr_info((unsigned)at->attr)->index_rank;

		if (best->attr < 0 || n < best->n ||
		    (n == best->n && rank < policy_attr_info((unsigned)best->attr)->index_rank)) {
			best->attr = at->attr;
			best->values = lit;
			best->n = n;
		}
	}
}

uint64_t
policy_index_hash(unsigned attr, const char *s)
{
	uint64_t h = 1469598103934665603ULL;

	h = (h ^ (attr & 0xff)) * 1099511628211ULL;
	for (; *s != '\0'; s++)
		h = (h ^ (unsigned char)*s) * 1099511628211ULL;
	return h;
}

struct triple {
	uint16_t attr;
	const char *value;
	uint32_t rule;
};

static int
triple_cmp(const void *pa, const void *pb)
{
	const struct triple *a = pa, *b = pb;
	int d;

	if (a->attr != b->attr)
		return a->attr < b->attr ? -1 : 1;
	d = strcmp(a->value, b->value);
	if (d != 0)
		return d;
	return a->rule < b->rule ? -1 : a->rule > b->rule;
}

static void
build_index(struct policy_set *set, struct triple *t, size_t nt)
{
	size_t cap = 16, groups = 0;
	bool keyed[POLICY_ATTR_COUNT] = {false};

	if (nt > 0)
		qsort(t, nt, sizeof(*t), triple_cmp);
	for (size_t i = 0; i < nt; i++) {
		if (i == 0 || triple_cmp(&(struct triple){t[i].attr, t[i].value, 0},
		                         &(struct triple){t[i - 1].attr, t[i - 1].value, 0}) != 0)
			groups++;
	}
	while (cap < groups * 2)
		cap *= 2;
	set->itab = ppool_alloc(&set->pool, cap * sizeof(*set->itab));
	set->itab_mask = cap - 1;
	set->irules = ppool_alloc(&set->pool, (nt ? nt : 1) * sizeof(*set->irules));
	for (size_t i = 0; i < nt;) {
		size_t j = i;
		uint64_t h = policy_index_hash(t[i].attr, t[i].value);
		struct idx_slot *s;

		while (j < nt && t[j].attr == t[i].attr && strcmp(t[j].value, t[i].value) == 0) {
			set->irules[j] = t[j].rule;
			j++;
		}
		for (size_t k = h & set->itab_mask;; k = (k + 1) & set->itab_mask) {
			s = &set->itab[k];
			if (s->value == NULL)
				break;
		}
		s->hash = h;
		s->value = t[i].value;
		s->attr = t[i].attr;
		s->first = (uint32_t)i;
		s->n = (uint32_t)(j - i);
		keyed[t[i].attr] = true;
		i = j;
	}
	for (unsigned a = 0; a < POLICY_ATTR_COUNT; a++) {
		if (!keyed[a])
			continue;
		set->keyed[set->n_keyed++] = (uint16_t)a;
		set->missing_bits[a] = ppool_alloc(&set->pool, set->nwords * sizeof(uint64_t));
	}
	/*
	 * When the key attribute is missing the key conjunct is an error, so a
	 * rule keyed on it may be an error too: deny and require_approval rules
	 * must run (their error counts as a match), and allow rules run as well
	 * so the decision lists the same errors with or without the index.
	 */
	for (size_t i = 0; i < nt; i++) {
		uint32_t ri = t[i].rule;

		set->missing_bits[t[i].attr][ri / 64] |= UINT64_C(1) << (ri % 64);
	}
}

void
compile_rules(struct ast_rule **rules, size_t n, struct policy_set *set)
{
	struct comp cc = {set, NULL, 0, 0};
	struct triple *t = NULL;
	size_t nt = 0, tcap = 0;

	set->n_rules = n;
	set->rules = ppool_alloc(&set->pool, (n ? n : 1) * sizeof(*set->rules));
	set->nwords = (n + 63) / 64 ? (n + 63) / 64 : 1;
	set->always = ppool_alloc(&set->pool, set->nwords * sizeof(uint64_t));
	for (size_t i = 0; i < n; i++) {
		const struct ast_rule *a = rules[i];
		struct policy_rule *r = &set->rules[i];
		struct key best = {-1, NULL, 0};
		uint32_t cond = NO_NODE;

		r->index = (uint32_t)i;
		r->id = pstr(set, a->id);
		r->reason = pstr(set, a->reason);
		r->effect = a->effect;
		r->file = pstr(set, a->file->name);
		r->line = a->line;
		r->col = a->col;
		r->has_ttl = a->has_ttl;
		r->ttl = a->ttl;
		r->logging = a->logging;
		if (a->n_scopes > 0) {
			const char **sc = ppool_alloc(&set->pool, a->n_scopes * sizeof(*sc));

			for (size_t j = 0; j < a->n_scopes; j++)
				sc[j] = pstr(set, a->scopes[j]);
			r->scopes = sc;
			r->n_scopes = a->n_scopes;
		}
		r->action_mask = (1u << IDP_ACTION_COUNT) - 1;
		for (size_t j = 0; j < a->n_clauses; j++) {
			uint32_t e = emit(&cc, a->clauses[j].expr);
			struct cnode k;

			if (a->clauses[j].unless) {
				memset(&k, 0, sizeof(k));
				k.kind = K_NOT;
				k.a = e;
				k.b = NO_NODE;
				e = push(&cc, &k);
			} else {
				consider(a->clauses[j].expr, &best, &r->action_mask);
			}
			if (cond == NO_NODE) {
				cond = e;
			} else {
				memset(&k, 0, sizeof(k));
				k.kind = K_AND;
				k.a = cond;
				k.b = e;
				cond = push(&cc, &k);
			}
		}
		r->cond = cond;
		if (best.attr < 0) {
			set->always[i / 64] |= UINT64_C(1) << (i % 64);
			continue;
		}
		for (size_t j = 0; j < best.n; j++) {
			const struct ast *v =
			    best.values->kind == A_LIST ? best.values->items[j] : best.values;

			if (nt == tcap) {
				tcap = tcap ? tcap * 2 : 64;
				t = idp_xrealloc(t, tcap * sizeof(*t));
			}
			t[nt].attr = (uint16_t)best.attr;
			t[nt].value = pstr(set, v->s);
			t[nt].rule = (uint32_t)i;
			nt++;
		}
	}
	set->nodes = ppool_alloc(&set->pool, (cc.n ? cc.n : 1) * sizeof(*set->nodes));
	if (cc.n)
		memcpy(set->nodes, cc.nodes, cc.n * sizeof(*cc.nodes));
	set->n_nodes = cc.n;
	free(cc.nodes);
	build_index(set, t, nt);
	free(t);
}

/* ---- sets ------------------------------------------------------------------ */

/*
 * "sha256:<hex>" over each source's base name, length and text, in the given
 * order.  Only the base name: the same files loaded as "policies",
 * "policies/" or an absolute path are the same set and hash alike.
 */
static void
hash_sources(struct policy_set *set, const struct policy_source *src, size_t n)
{
	static const char hex[] = "0123456789abcdef";
	unsigned char md[32];
	unsigned int mdlen = 0;
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	bool ok = ctx != NULL && EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) == 1;

	for (size_t i = 0; ok && i < n; i++) {
		unsigned char len[8];
		uint64_t l = src[i].len;
		const char *slash = strrchr(src[i].name, '/');
		const char *name = slash != NULL ? slash + 1 : src[i].name;

		for (int b = 0; b < 8; b++)
			len[b] = (unsigned char)(l >> (56 - 8 * b));
		ok = EVP_DigestUpdate(ctx, name, strlen(name) + 1) == 1 &&
		     EVP_DigestUpdate(ctx, len, sizeof(len)) == 1 &&
		     EVP_DigestUpdate(ctx, src[i].text, src[i].len) == 1;
	}
	ok = ok && EVP_DigestFinal_ex(ctx, md, &mdlen) == 1 && mdlen == 32;
	EVP_MD_CTX_free(ctx);
	if (!ok) {
		snprintf(set->hash, sizeof(set->hash), "sha256:unavailable");
		return;
	}
	memcpy(set->hash, "sha256:", 7);
	for (int i = 0; i < 32; i++) {
		set->hash[7 + 2 * i] = hex[md[i] >> 4];
		set->hash[8 + 2 * i] = hex[md[i] & 15];
	}
	set->hash[71] = '\0';
}

int
policy_set_compile(const struct policy_source *src, size_t n, const struct idp_clock *clock,
                   struct policy_set **out, struct idp_diag *diag)
{
	struct ppool tmp = {NULL};
	struct perrors errs = {NULL, 0, 0};
	struct pfile *files = NULL;
	struct ast_rule **all = NULL;
	size_t nall = 0;
	struct policy_set *set = NULL;
	int rc = IDP_OK;

	*out = NULL;
	if (n > POLICY_MAX_FILES) {
		idp_diag_add(diag, "policy set: more than %d files", POLICY_MAX_FILES);
		return IDP_ETOOBIG;
	}
	files = idp_xcalloc(n ? n : 1, sizeof(*files));
	for (size_t i = 0; i < n; i++) {
		struct ast_file af;

		files[i].name = src[i].name;
		files[i].text = src[i].text;
		files[i].len = src[i].len;
		if (src[i].len > POLICY_MAX_FILE_BYTES) {
			idp_diag_add(diag, "%s: larger than %d bytes", src[i].name,
			             POLICY_MAX_FILE_BYTES);
			rc = IDP_ETOOBIG;
			continue;
		}
		parse_file(&files[i], &tmp, &errs, &af);
		if (nall + af.n_rules > POLICY_MAX_RULES) {
			idp_diag_add(diag, "%s: the set has more than %d rules", src[i].name,
			             POLICY_MAX_RULES);
			rc = IDP_ETOOBIG;
			continue;
		}
		all = idp_xrealloc(all, (nall + af.n_rules + 1) * sizeof(*all));
		memcpy(all + nall, af.rules, af.n_rules * sizeof(*all));
		nall += af.n_rules;
	}
	check_rules(all, nall, &tmp, &errs);
	if (errs.n > 0) {
		perr_render(&errs, diag);
		rc = IDP_EINVAL;
	}
	if (rc != IDP_OK)
		goto done;
	set = idp_xcalloc(1, sizeof(*set));
	set->refs = 1;
	compile_rules(all, nall, set);
	hash_sources(set, src, n);
	set->loaded_at_ms = idp_now_ms(clock != NULL ? clock : idp_clock_system());
	*out = set;
done:
	free(all);
	free(files);
	perr_free(&errs);
	ppool_free(&tmp);
	return rc;
}

static int
name_cmp(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Read a whole file of at most POLICY_MAX_FILE_BYTES. */
static int
read_file(const char *path, char **text, size_t *len, struct idp_diag *diag)
{
	char ebuf[128];
	FILE *f = fopen(path, "rb");
	char *buf;
	size_t n = 0;

	*text = NULL;
	if (f == NULL) {
		idp_diag_add(diag, "%s: %s", path, idp_strerror(errno, ebuf, sizeof(ebuf)));
		return IDP_EIO;
	}
	buf = idp_xmalloc(POLICY_MAX_FILE_BYTES + 2);
	n = fread(buf, 1, POLICY_MAX_FILE_BYTES + 1, f);
	if (ferror(f)) {
		idp_diag_add(diag, "%s: read error", path);
		fclose(f);
		free(buf);
		return IDP_EIO;
	}
	fclose(f);
	if (n > POLICY_MAX_FILE_BYTES) {
		idp_diag_add(diag, "%s: larger than %d bytes", path, POLICY_MAX_FILE_BYTES);
		free(buf);
		return IDP_ETOOBIG;
	}
	buf[n] = '\0';
	*text = buf;
	*len = n;
	return IDP_OK;
}

int
policy_set_load_dir(const char *dir, const struct idp_clock *clock, struct policy_set **out,
                    struct idp_diag *diag)
{
	char ebuf[128];
	DIR *d;
	struct dirent *e;
	char **names = NULL;
	struct policy_source *src = NULL;
	size_t n = 0;
	int rc = IDP_OK;

	*out = NULL;
	d = opendir(dir);
	if (d == NULL) {
		idp_diag_add(diag, "%s: %s", dir, idp_strerror(errno, ebuf, sizeof(ebuf)));
		return IDP_EIO;
	}
	while ((e = readdir(d)) != NULL) {
		size_t l = strlen(e->d_name);

		if (e->d_name[0] == '.' || l < 8 || strcmp(e->d_name + l - 7, ".policy") != 0)
			continue;
		if (n == POLICY_MAX_FILES) {
			idp_diag_add(diag, "%s: more than %d policy files", dir, POLICY_MAX_FILES);
			rc = IDP_ETOOBIG;
			break;
		}
		names = idp_xrealloc(names, (n + 1) * sizeof(*names));
		names[n++] = idp_xasprintf("%s/%s", dir, e->d_name);
	}
	closedir(d);
	if (rc == IDP_OK && n == 0) {
		idp_diag_add(diag, "%s: no *.policy files", dir);
		rc = IDP_EINVAL;
	}
	if (rc != IDP_OK)
		goto done;
	qsort(names, n, sizeof(*names), name_cmp);
	src = idp_xcalloc(n, sizeof(*src));
	for (size_t i = 0; i < n; i++) {
		char *text;
		int r = read_file(names[i], &text, &src[i].len, diag);

		if (r != IDP_OK) {
			rc = r;
			continue;
		}
		src[i].name = names[i];
		src[i].text = text;
	}
	if (rc == IDP_OK)
		rc = policy_set_compile(src, n, clock, out, diag);
done:
	for (size_t i = 0; i < n; i++) {
		free(names[i]);
		if (src != NULL)
			free((char *)src[i].text);
	}
	free(names);
	free(src);
	return rc;
}

struct policy_set *
policy_set_ref(struct policy_set *set)
{
	if (set != NULL)
		__atomic_fetch_add(&set->refs, 1, __ATOMIC_RELAXED);
	return set;
}

void
policy_set_unref(struct policy_set *set)
{
	if (set == NULL || __atomic_sub_fetch(&set->refs, 1, __ATOMIC_ACQ_REL) != 0)
		return;
	ppool_free(&set->pool);
	free(set);
}

const char *
policy_set_hash(const struct policy_set *set)
{
	return set->hash;
}

int64_t
policy_set_loaded_at_ms(const struct policy_set *set)
{
	return set->loaded_at_ms;
}

size_t
policy_set_rule_count(const struct policy_set *set)
{
	return set->n_rules;
}

const struct policy_rule *
policy_set_rule(const struct policy_set *set, size_t i)
{
	return i < set->n_rules ? &set->rules[i] : NULL;
}

const struct policy_rule *
policy_set_find(const struct policy_set *set, const char *id)
{
	for (size_t i = 0; i < set->n_rules; i++) {
		if (strcmp(set->rules[i].id, id) == 0)
			return &set->rules[i];
	}
	return NULL;
}

json_t *
policy_set_describe(const struct policy_set *set)
{
	json_t *rules = json_array();
	char when[32];

	idp_time_format(set->loaded_at_ms, when);
	for (size_t i = 0; i < set->n_rules; i++) {
		const struct policy_rule *r = &set->rules[i];

		json_array_append_new(rules,
		                      json_pack("{s:s, s:s, s:s, s:s, s:i}", "id", r->id, "effect",
		                                policy_effect_name(r->effect), "reason", r->reason,
		                                "file", r->file, "line", (json_int_t)r->line));
	}
	return json_pack("{s:s, s:s, s:I, s:o}", "hash", set->hash, "loaded_at", when, "rule_count",
	                 (json_int_t)set->n_rules, "rules", rules);
}

/* ---- the engine ------------------------------------------------------------ */

struct policy_engine {
	pthread_mutex_t lock;        /* covers cur: pointer read + ref, or swap */
	pthread_mutex_t reload_lock; /* one reload at a time */
	struct policy_set *cur;
};

struct policy_engine *
policy_engine_new(void)
{
	struct policy_engine *e = idp_xcalloc(1, sizeof(*e));

	pthread_mutex_init(&e->lock, NULL);
	pthread_mutex_init(&e->reload_lock, NULL);
	return e;
}

void
policy_engine_free(struct policy_engine *e)
{
	if (e == NULL)
		return;
	policy_set_unref(e->cur);
	pthread_mutex_destroy(&e->lock);
	pthread_mutex_destroy(&e->reload_lock);
	free(e);
}

struct policy_set *
policy_engine_acquire(struct policy_engine *e)
{
	struct policy_set *s;

	pthread_mutex_lock(&e->lock);
	s = policy_set_ref(e->cur);
	pthread_mutex_unlock(&e->lock);
	return s;
}

void
policy_engine_swap(struct policy_engine *e, struct policy_set *set)
{
	struct policy_set *old;

	pthread_mutex_lock(&e->lock);
	old = e->cur;
	e->cur = set;
	pthread_mutex_unlock(&e->lock);
	/* Outside the lock: the last reader may free it later instead. */
	policy_set_unref(old);
}

int
policy_engine_reload(struct policy_engine *e, const char *dir, const struct idp_clock *clock,
                     struct idp_diag *diag)
{
	struct policy_set *set = NULL;
	int rc;

	pthread_mutex_lock(&e->reload_lock);
	rc = policy_set_load_dir(dir, clock, &set, diag);
	if (rc == IDP_OK)
		policy_engine_swap(e, set);
	pthread_mutex_unlock(&e->reload_lock);
	return rc;
}
