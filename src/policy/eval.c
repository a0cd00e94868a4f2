/*
 * eval.c - a compiled set and a typed input to a decision, allocating nothing.
 *
 * Conditions use three-valued (Kleene) logic: a missing attribute or an
 * integer overflow makes a comparison ERR; "false and ERR" is false and
 * "true or ERR" is true, because those hold whatever the missing value is;
 * otherwise ERR propagates, and "not ERR" is ERR.  A rule whose condition
 * ends ERR is an error: a deny or require_approval rule counts as matched, an
 * allow or allow_with_conditions rule as not matched.  So leaving an
 * attribute out can only make a decision stricter, except through has(),
 * which asks about presence on purpose.
 */
#include <string.h>

#include "policy_int.h"

enum tv { TV_FALSE = 0, TV_TRUE = 1, TV_ERR = 2 };

struct rv {
	int64_t i;
	const char *s;
	const char *const *lv;
	const int64_t *iv;
	size_t n;
	uint8_t vt;
};

static const char *const effect_names[] = {"ALLOW", "ALLOW_WITH_CONDITIONS", "REQUIRE_APPROVAL",
                                           "DENY"};

const char *
policy_effect_name(enum policy_effect e)
{
	return (unsigned)e < IDP_ARRAY_LEN(effect_names) ? effect_names[e] : "DENY";
}

int
policy_effect_parse(const char *s)
{
	for (size_t i = 0; i < IDP_ARRAY_LEN(effect_names); i++) {
		if (strcmp(s, effect_names[i]) == 0)
			return (int)i;
	}
	return -1;
}

const char *
policy_rule_id(const struct policy_rule *r)
{
	return r->id;
}

const char *
policy_rule_reason(const struct policy_rule *r)
{
	return r->reason;
}

enum policy_effect
policy_rule_effect(const struct policy_rule *r)
{
	return r->effect;
}

static const char *
label(const struct policy_input *in, unsigned attr, const char *key)
{
	const union policy_slot *s = &in->slot[attr];

	if (!policy_input_has(in, attr))
		return NULL;
	for (size_t i = 0; i < s->map.n; i++) {
		if (s->map.kv[i].key != NULL && strcmp(s->map.kv[i].key, key) == 0)
			return s->map.kv[i].value;
	}
	return NULL;
}

static enum tv ev_bool(const struct policy_set *set, uint32_t idx, const struct policy_input *in,
                       const char **err);

/* The value of a node; false with *err set when it cannot be had. */
static bool
ev_value(const struct policy_set *set, uint32_t idx, const struct policy_input *in, struct rv *v,
         const char **err)
{
	const struct cnode *n = &set->nodes[idx];
	const union policy_slot *s;
	struct rv a, b;
	enum tv t;

	v->vt = n->vt;
	switch (n->kind) {
	case K_CONST:
		v->i = n->i;
		v->s = n->s;
		v->lv = n->slist;
		v->iv = n->ilist;
		v->n = n->n;
		return true;
	case K_ATTR:
		if (!policy_input_has(in, n->attr)) {
			*err = n->missing;
			return false;
		}
		s = &in->slot[n->attr];
		if (n->vt == VT_STR) {
			v->s = s->s;
		} else if (n->vt == VT_LIST) {
			v->lv = s->list.v;
			v->n = s->list.n;
		} else {
			v->i = s->i;
		}
		return true;
	case K_LABEL:
		v->s = label(in, n->attr, n->s);
		if (v->s == NULL) {
			*err = n->missing;
			return false;
		}
		return true;
	case K_BIN:
		if (n->op == OP_ADD || n->op == OP_SUB) {
			if (!ev_value(set, n->a, in, &a, err) || !ev_value(set, n->b, in, &b, err))
				return false;
			if (n->op == OP_ADD ? __builtin_add_overflow(a.i, b.i, &v->i)
			                    : __builtin_sub_overflow(a.i, b.i, &v->i)) {
				*err = "integer overflow";
				return false;
			}
			return true;
		}
		break;
	default:
		break;
	}
	t = ev_bool(set, idx, in, err);
	if (t == TV_ERR)
		return false;
	v->vt = VT_INT;
	v->i = t == TV_TRUE;
	return true;
}

static bool
str_in(const char *s, const char *const *v, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (v[i] != NULL && strcmp(s, v[i]) == 0)
			return true;
	}
	return false;
}

/*
 * Every scope of lhs within some pattern of rhs.  Requested scopes are
 * checked 64 at a time against each pattern, scanning each string once per
 * round, so nothing is allocated whatever the list sizes.  An invalid
 * requested scope is never within; an invalid pattern covers nothing.
 */
static bool
within(const struct rv *l, const struct rv *r)
{
	const char *const *lv = l->vt == VT_STR ? &l->s : l->lv;
	const char *const *rv = r->vt == VT_STR ? &r->s : r->lv;
	size_t ln = l->vt == VT_STR ? 1 : l->n, rn = r->vt == VT_STR ? 1 : r->n;
	struct scope_split req[64], pat;

	for (size_t base = 0; base < ln; base += 64) {
		size_t k = ln - base < 64 ? ln - base : 64;
		uint64_t want = k == 64 ? UINT64_MAX : (UINT64_C(1) << k) - 1, covered = 0;

		for (size_t j = 0; j < k; j++) {
			if (lv[base + j] == NULL || !scope_scan(lv[base + j], &req[j]))
				return false;
		}
		for (size_t p = 0; p < rn && covered != want; p++) {
			if (rv[p] == NULL || !scope_scan(rv[p], &pat))
				continue;
			for (size_t j = 0; j < k; j++) {
				if (!(covered >> j & 1) && scope_within_split(&req[j], &pat))
					covered |= UINT64_C(1) << j;
			}
		}
		if (covered != want)
			return false;
	}
	return true;
}

static enum tv
compare(const struct cnode *n, const struct rv *a, const struct rv *b)
{
	bool r = false;

	switch (n->op) {
	case OP_EQ:
	case OP_NE:
		r = a->vt == VT_STR ? strcmp(a->s, b->s) == 0 : a->i == b->i;
		if (n->op == OP_NE)
			r = !r;
		break;
	case OP_LT:
		r = a->i < b->i;
		break;
	case OP_LE:
		r = a->i <= b->i;
		break;
	case OP_GT:
		r = a->i > b->i;
		break;
	case OP_GE:
		r = a->i >= b->i;
		break;
	case OP_IN:
		if (b->n == 0)
			r = false;
		else if (a->vt == VT_STR)
			r = b->vt == VT_LIST && str_in(a->s, b->lv, b->n);
		else if (b->vt == VT_INTLIST)
			for (size_t i = 0; i < b->n && !r; i++)
				r = b->iv[i] == a->i;
		break;
	case OP_WITHIN:
		r = within(a, b);
		break;
	case OP_LIKE:
		r = scope_glob_match(b->s, a->s);
		break;
	case OP_STARTSWITH:
		r = strncmp(a->s, b->s, strlen(b->s)) == 0;
		break;
	default:
		break;
	}
	return r ? TV_TRUE : TV_FALSE;
}

static enum tv
during(const struct cnode *n, const struct policy_input *in, const char **err)
{
	static const unsigned need[] = {POLICY_ATTR_CONTEXT_WEEKDAY, POLICY_ATTR_CONTEXT_HOUR,
	                                POLICY_ATTR_CONTEXT_MINUTE};
	int64_t wd, m;

	for (size_t i = 0; i < IDP_ARRAY_LEN(need); i++) {
		if (!policy_input_has(in, need[i])) {
			*err = policy_attr_info(need[i])->missing;
			return TV_ERR;
		}
	}
	wd = in->slot[POLICY_ATTR_CONTEXT_WEEKDAY].i;
	m = in->slot[POLICY_ATTR_CONTEXT_HOUR].i * 60 + in->slot[POLICY_ATTR_CONTEXT_MINUTE].i;
	if (wd < 0 || wd > 6 || !(n->days >> wd & 1))
		return TV_FALSE;
	if (n->from < n->to)
		return m >= n->from && m < n->to ? TV_TRUE : TV_FALSE;
	return m >= n->from || m < n->to ? TV_TRUE : TV_FALSE; /* across midnight */
}

static enum tv
ev_bool(const struct policy_set *set, uint32_t idx, const struct policy_input *in, const char **err)
{
	const struct cnode *n = &set->nodes[idx];
	const char *el = NULL, *er = NULL;
	struct rv a, b;
	enum tv l, r;

	switch (n->kind) {
	case K_CONST:
		return n->i ? TV_TRUE : TV_FALSE;
	case K_ATTR:
		if (!policy_input_has(in, n->attr)) {
			*err = n->missing;
			return TV_ERR;
		}
		return in->slot[n->attr].i ? TV_TRUE : TV_FALSE;
	case K_HAS:
		return policy_input_has(in, n->attr) ? TV_TRUE : TV_FALSE;
	case K_HAS_LABEL:
		return label(in, n->attr, n->s) != NULL ? TV_TRUE : TV_FALSE;
	case K_DURING:
		return during(n, in, err);
	case K_NOT:
		l = ev_bool(set, n->a, in, err);
		return l == TV_ERR ? TV_ERR : l == TV_TRUE ? TV_FALSE : TV_TRUE;
	case K_AND:
	case K_OR: {
		/* The value that decides alone: false for "and", true for "or". */
		enum tv decisive = n->kind == K_AND ? TV_FALSE : TV_TRUE;

		l = ev_bool(set, n->a, in, &el);
		if (l == decisive)
			return l;
		r = ev_bool(set, n->b, in, &er);
		if (r == decisive)
			return r;
		if (l == TV_ERR || r == TV_ERR) {
			*err = l == TV_ERR ? el : er;
			return TV_ERR;
		}
		return l;
	}
	case K_BIN:
		if (!ev_value(set, n->a, in, &a, err) || !ev_value(set, n->b, in, &b, err))
			return TV_ERR;
		return compare(n, &a, &b);
	default:
		*err = "internal: not a condition";
		return TV_ERR;
	}
}

static bool
granted_has(const char *const *v, size_t n, const char *s)
{
	for (size_t i = 0; i < n; i++) {
		if (strcmp(v[i], s) == 0)
			return true;
	}
	return false;
}

/*
 * Whether one of r's patterns admits scope: scope within it, and of no
 * higher action class.  A pattern names verbs by their spelling, a class
 * by what they do: "*:Read*" spells "db:ReadWrite" too, which writes.
 */
static bool
admitted(const char *scope, const struct policy_rule *r)
{
	const struct scope_verb_map *vm = scope_verb_map_current();
	enum idp_action_class c = scope_action_class(vm, scope);

	for (size_t j = 0; j < r->n_scopes; j++) {
		if (scope_within_valid(scope, r->scopes[j]) &&
		    c <= scope_action_class(vm, r->scopes[j]))
			return true;
	}
	return false;
}

/*
 * Intersect the granted scopes with rule r's scope set.  A scope one of r's
 * patterns admits stays; otherwise each of r's patterns within it takes its
 * place (the request "ec2:*" under "ec2:Describe*" becomes "ec2:Describe*").
 * Partial overlaps are dropped: the grant may only shrink.
 */
static void
narrow(struct policy_decision *d, const struct policy_input *in, const struct policy_rule *r)
{
	const char *next[POLICY_MAX_GRANTED];
	const char *const *cur = d->cond.scopes;
	size_t nc = d->cond.n_scopes, nn = 0;

	if (!d->cond.narrowed) {
		bool has = policy_input_has(in, POLICY_ATTR_REQUEST_SCOPES);

		cur = has ? in->slot[POLICY_ATTR_REQUEST_SCOPES].list.v : NULL;
		nc = has ? in->slot[POLICY_ATTR_REQUEST_SCOPES].list.n : 0;
	}
	for (size_t i = 0; i < nc; i++) {
		if (cur[i] == NULL || scope_validate(cur[i], NULL) != IDP_OK)
			continue;
		if (admitted(cur[i], r)) {
			if (nn < POLICY_MAX_GRANTED && !granted_has(next, nn, cur[i]))
				next[nn++] = cur[i];
			continue;
		}
		for (size_t j = 0; j < r->n_scopes; j++) {
			if (scope_within_valid(r->scopes[j], cur[i]) && nn < POLICY_MAX_GRANTED &&
			    !granted_has(next, nn, r->scopes[j]))
				next[nn++] = r->scopes[j];
		}
	}
	memcpy(d->cond.scopes, next, nn * sizeof(*next));
	d->cond.n_scopes = nn;
	d->cond.narrowed = true;
}

static void
apply_conditions(struct policy_decision *d, const struct policy_input *in,
                 const struct policy_rule *r)
{
	if (r->has_ttl && (!d->cond.has_max_ttl || r->ttl < d->cond.max_ttl)) {
		d->cond.has_max_ttl = true;
		d->cond.max_ttl = r->ttl;
	}
	d->cond.enhanced_logging |= r->logging;
	if (r->n_scopes > 0)
		narrow(d, in, r);
}

/* Mark the rules worth evaluating: unkeyed ones, and those the index finds. */
static void
candidates(const struct policy_set *set, const struct policy_input *in, uint64_t *bits)
{
	memcpy(bits, set->always, set->nwords * sizeof(*bits));
	for (size_t k = 0; k < set->n_keyed; k++) {
		unsigned a = set->keyed[k];
		const char *v;
		uint64_t h;

		if (!policy_input_has(in, a) || in->slot[a].s == NULL) {
			for (size_t w = 0; w < set->nwords; w++)
				bits[w] |= set->missing_bits[a][w];
			continue;
		}
		v = in->slot[a].s;
		h = policy_index_hash(a, v);
		for (size_t i = h & set->itab_mask;; i = (i + 1) & set->itab_mask) {
			const struct idx_slot *s = &set->itab[i];

			if (s->value == NULL)
				break;
			if (s->hash != h || s->attr != a || strcmp(s->value, v) != 0)
				continue;
			for (uint32_t j = 0; j < s->n; j++) {
				uint32_t ri = set->irules[s->first + j];

				bits[ri / 64] |= UINT64_C(1) << (ri % 64);
			}
			break;
		}
	}
}

void
policy_eval(const struct policy_set *set, const struct policy_input *in,
            struct policy_decision *out)
{
	uint64_t bits[(POLICY_MAX_RULES + 63) / 64];
	bool has_action = policy_input_has(in, POLICY_ATTR_REQUEST_ACTION_CLASS);
	unsigned action_bit =
	    has_action ? 1u << (in->slot[POLICY_ATTR_REQUEST_ACTION_CLASS].i & 3) : 0;
	int best = -1;
	const char *restricted_by = NULL;

	out->effect = POLICY_DENY;
	out->reason = "no rule allows";
	out->n_matches = 0;
	out->n_matches_total = 0;
	out->n_evaluated = 0;
	out->cond.has_max_ttl = false;
	out->cond.max_ttl = 0;
	out->cond.enhanced_logging = false;
	out->cond.narrowed = false;
	out->cond.n_scopes = 0;

	candidates(set, in, bits);
	for (size_t w = 0; w < set->nwords; w++) {
		uint64_t x = bits[w];

		while (x != 0) {
			const struct policy_rule *r =
			    &set->rules[w * 64 + (size_t)__builtin_ctzll(x)];
			const char *err = NULL;
			enum tv t;
			bool applied, restricts;

			x &= x - 1;
			if (has_action && !(r->action_mask & action_bit))
				continue;
			out->n_evaluated++;
			t = r->cond == NO_NODE ? TV_TRUE : ev_bool(set, r->cond, in, &err);
			if (t == TV_FALSE)
				continue;
			applied = t == TV_TRUE || r->effect == POLICY_DENY ||
			          r->effect == POLICY_REQUIRE_APPROVAL;
			/* An allow_with_conditions that cannot be evaluated grants
			 * nothing, but its conditions are restrictions: they hold
			 * for whatever another rule grants (missing data never
			 * loosens). */
			restricts = t == TV_ERR && r->effect == POLICY_ALLOW_WITH_CONDITIONS;
			if (out->n_matches < POLICY_MAX_MATCHES) {
				struct policy_match *m = &out->matches[out->n_matches++];

				m->rule = r;
				m->error = t == TV_ERR ? (err != NULL ? err : "cannot be evaluated")
				                       : NULL;
				m->applied = applied || restricts;
			}
			out->n_matches_total++;
			if (restricts) {
				apply_conditions(out, in, r);
				if (restricted_by == NULL)
					restricted_by = r->reason;
				continue;
			}
			if (!applied)
				continue;
			if ((int)r->effect > best) {
				best = (int)r->effect;
				out->reason = r->reason;
			}
			if (r->effect == POLICY_ALLOW_WITH_CONDITIONS)
				apply_conditions(out, in, r);
		}
	}
	if (best == POLICY_ALLOW && restricted_by != NULL) {
		best = POLICY_ALLOW_WITH_CONDITIONS;
		out->reason = restricted_by;
	}
	if (best != POLICY_ALLOW_WITH_CONDITIONS) {
		/* Not a conditional grant: no errored condition rule took part. */
		for (size_t i = 0; i < out->n_matches; i++)
			if (out->matches[i].error != NULL &&
			    out->matches[i].rule->effect == POLICY_ALLOW_WITH_CONDITIONS)
				out->matches[i].applied = false;
	}
	if (best < 0)
		return;
	out->effect = (enum policy_effect)best;
	if (out->effect == POLICY_ALLOW_WITH_CONDITIONS && out->cond.narrowed &&
	    out->cond.n_scopes == 0) {
		out->effect = POLICY_DENY;
		out->reason = "the scope conditions leave no requested scope to grant";
	}
}

json_t *
policy_decision_json(const struct policy_decision *d)
{
	json_t *o = json_object(), *rules = json_array(), *matches = json_array();

	json_object_set_new(o, "decision", json_string(policy_effect_name(d->effect)));
	json_object_set_new(o, "reason", json_string(d->reason));
	for (size_t i = 0; i < d->n_matches; i++) {
		const struct policy_match *m = &d->matches[i];
		json_t *j = json_pack("{s:s, s:s, s:s, s:b}", "id", m->rule->id, "effect",
		                      policy_effect_name(m->rule->effect), "reason",
		                      m->rule->reason, "applied", m->applied);

		if (m->error != NULL)
			json_object_set_new(j, "error", json_string(m->error));
		json_array_append_new(matches, j);
		if (m->applied)
			json_array_append_new(rules, json_string(m->rule->id));
	}
	json_object_set_new(o, "rules", rules);
	json_object_set_new(o, "matches", matches);
	if (d->n_matches_total > d->n_matches)
		json_object_set_new(o, "matches_total",
		                    json_integer((json_int_t)d->n_matches_total));
	if (d->effect == POLICY_ALLOW_WITH_CONDITIONS) {
		json_t *c = json_object();

		if (d->cond.has_max_ttl)
			json_object_set_new(c, "max_ttl",
			                    json_integer((json_int_t)d->cond.max_ttl));
		if (d->cond.narrowed) {
			json_t *sc = json_array();

			for (size_t i = 0; i < d->cond.n_scopes; i++)
				json_array_append_new(sc, json_string(d->cond.scopes[i]));
			json_object_set_new(c, "scopes", sc);
		}
		json_object_set_new(c, "enhanced_logging", json_boolean(d->cond.enhanced_logging));
		json_object_set_new(o, "conditions", c);
	}
	return o;
}
