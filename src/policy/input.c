/*
 * input.c - the attribute table, the typed input's setters, and the JSON
 * reader that builds an input for the dry-run endpoint and `policy test`.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "policy_int.h"

#define ATTR(id, name, type, idx, rank) [id] = {name, name " is missing", type, idx, rank}

static const struct policy_attr_info attrs[POLICY_ATTR_COUNT] = {
    ATTR(POLICY_ATTR_AGENT_ID, "agent.id", POLICY_T_STRING, true, 2),
    ATTR(POLICY_ATTR_AGENT_TYPE, "agent.type", POLICY_T_STRING, true, 3),
    ATTR(POLICY_ATTR_AGENT_VERSION, "agent.version", POLICY_T_STRING, true, 9),
    ATTR(POLICY_ATTR_AGENT_MODEL, "agent.model", POLICY_T_STRING, true, 9),
    ATTR(POLICY_ATTR_AGENT_DEPLOYMENT, "agent.deployment", POLICY_T_STRING, true, 9),
    ATTR(POLICY_ATTR_AGENT_OWNER, "agent.owner", POLICY_T_STRING, true, 5),
    ATTR(POLICY_ATTR_AGENT_TEAM, "agent.team", POLICY_T_STRING, true, 4),
    ATTR(POLICY_ATTR_AGENT_STATUS, "agent.status", POLICY_T_STRING, true, 12),
    ATTR(POLICY_ATTR_AGENT_ENVIRONMENT, "agent.environment", POLICY_T_STRING, true, 10),
    ATTR(POLICY_ATTR_AGENT_CAPABILITIES, "agent.capabilities", POLICY_T_LIST, false, 0),
    ATTR(POLICY_ATTR_AGENT_DELEGATE_TO, "agent.delegate_to", POLICY_T_LIST, false, 0),
    ATTR(POLICY_ATTR_AGENT_DOMAINS, "agent.domains", POLICY_T_LIST, false, 0),
    ATTR(POLICY_ATTR_AGENT_APPROVAL_FOR, "agent.requires_human_approval_for", POLICY_T_LIST, false,
         0),
    ATTR(POLICY_ATTR_AGENT_MAX_CHAIN_DEPTH, "agent.max_chain_depth", POLICY_T_INT, false, 0),
    ATTR(POLICY_ATTR_AGENT_LABELS, "agent.labels", POLICY_T_MAP, false, 0),
    ATTR(POLICY_ATTR_REQUEST_SCOPES, "request.scopes", POLICY_T_LIST, false, 0),
    ATTR(POLICY_ATTR_REQUEST_ACTION_CLASS, "request.action_class", POLICY_T_ACTION, false, 0),
    ATTR(POLICY_ATTR_REQUEST_AUDIENCE, "request.audience", POLICY_T_STRING, true, 0),
    ATTR(POLICY_ATTR_REQUEST_TTL, "request.ttl", POLICY_T_INT, false, 0),
    ATTR(POLICY_ATTR_REQUEST_TASK_ID, "request.task_id", POLICY_T_STRING, true, 6),
    ATTR(POLICY_ATTR_REQUEST_HUMAN, "request.human", POLICY_T_STRING, true, 5),
    ATTR(POLICY_ATTR_RESOURCE_AUDIENCE, "resource.audience", POLICY_T_STRING, true, 0),
    ATTR(POLICY_ATTR_RESOURCE_DOMAIN, "resource.domain", POLICY_T_STRING, true, 7),
    ATTR(POLICY_ATTR_RESOURCE_CLASSIFICATION, "resource.classification", POLICY_T_STRING, true, 8),
    ATTR(POLICY_ATTR_RESOURCE_ENVIRONMENT, "resource.environment", POLICY_T_STRING, true, 11),
    ATTR(POLICY_ATTR_RESOURCE_LABELS, "resource.labels", POLICY_T_MAP, false, 0),
    ATTR(POLICY_ATTR_DELEGATION_DEPTH, "delegation.depth", POLICY_T_INT, false, 0),
    ATTR(POLICY_ATTR_DELEGATION_CHAIN, "delegation.chain", POLICY_T_LIST, false, 0),
    ATTR(POLICY_ATTR_DELEGATION_APPROVALS, "delegation.approvals", POLICY_T_INT, false, 0),
    ATTR(POLICY_ATTR_CONTEXT_HOUR, "context.hour", POLICY_T_INT, false, 0),
    ATTR(POLICY_ATTR_CONTEXT_MINUTE, "context.minute", POLICY_T_INT, false, 0),
    ATTR(POLICY_ATTR_CONTEXT_WEEKDAY, "context.weekday", POLICY_T_WEEKDAY, false, 0),
    ATTR(POLICY_ATTR_CONTEXT_CALLS, "context.calls_last_minute", POLICY_T_INT, false, 0),
    ATTR(POLICY_ATTR_CONTEXT_RISK, "context.risk", POLICY_T_INT, false, 0),
    ATTR(POLICY_ATTR_CONTEXT_APPROVAL, "context.approval", POLICY_T_BOOL, false, 0),
};

_Static_assert(POLICY_ATTR_COUNT <= 64, "presence is a 64-bit mask");

const struct policy_attr_info *
policy_attr_info(unsigned a)
{
	return a < POLICY_ATTR_COUNT ? &attrs[a] : NULL;
}

const char *
policy_attr_name(enum policy_attr a)
{
	return (unsigned)a < POLICY_ATTR_COUNT ? attrs[a].name : NULL;
}

enum policy_type
policy_attr_type(enum policy_attr a)
{
	return (unsigned)a < POLICY_ATTR_COUNT ? attrs[a].type : POLICY_T_STRING;
}

int
policy_attr_lookup(const char *name)
{
	for (int i = 0; i < POLICY_ATTR_COUNT; i++) {
		if (strcmp(attrs[i].name, name) == 0)
			return i;
	}
	return -1;
}

static const char *const weekdays[7] = {"mon", "tue", "wed", "thu", "fri", "sat", "sun"};

const char *
policy_weekday_name(int wd)
{
	return wd >= 0 && wd < 7 ? weekdays[wd] : "?";
}

int
policy_weekday_parse(const char *s)
{
	for (int i = 0; i < 7; i++) {
		if (strcmp(s, weekdays[i]) == 0)
			return i;
	}
	return -1;
}

/* ---- setters --------------------------------------------------------------- */

void
policy_input_init(struct policy_input *in)
{
	memset(in, 0, sizeof(*in));
}

void
policy_input_unset(struct policy_input *in, enum policy_attr a)
{
	if ((unsigned)a < POLICY_ATTR_COUNT)
		in->present &= ~(UINT64_C(1) << a);
}

static int
settable(struct policy_input *in, enum policy_attr a, bool ok)
{
	if ((unsigned)a >= POLICY_ATTR_COUNT)
		return IDP_EINVAL;
	if (!ok) {
		policy_input_unset(in, a);
		return IDP_EINVAL;
	}
	in->present |= UINT64_C(1) << a;
	return IDP_OK;
}

int
policy_input_set_str(struct policy_input *in, enum policy_attr a, const char *s)
{
	int rc = settable(in, a, s != NULL && policy_attr_type(a) == POLICY_T_STRING);

	if (rc == IDP_OK)
		in->slot[a].s = s;
	return rc;
}

int
policy_input_set_int(struct policy_input *in, enum policy_attr a, int64_t v)
{
	enum policy_type t = policy_attr_type(a);
	bool ok = t == POLICY_T_INT || (t == POLICY_T_ACTION && v >= 0 && v < IDP_ACTION_COUNT) ||
	          (t == POLICY_T_WEEKDAY && v >= 0 && v < 7);
	int rc = settable(in, a, ok);

	if (rc == IDP_OK)
		in->slot[a].i = v;
	return rc;
}

int
policy_input_set_bool(struct policy_input *in, enum policy_attr a, bool v)
{
	int rc = settable(in, a, policy_attr_type(a) == POLICY_T_BOOL);

	if (rc == IDP_OK)
		in->slot[a].i = v ? 1 : 0;
	return rc;
}

int
policy_input_set_list(struct policy_input *in, enum policy_attr a, const char *const *v, size_t n)
{
	int rc = settable(in, a, (v != NULL || n == 0) && policy_attr_type(a) == POLICY_T_LIST);

	if (rc == IDP_OK) {
		in->slot[a].list.v = v;
		in->slot[a].list.n = n;
	}
	return rc;
}

int
policy_input_set_map(struct policy_input *in, enum policy_attr a, const struct policy_kv *kv,
                     size_t n)
{
	int rc = settable(in, a, (kv != NULL || n == 0) && policy_attr_type(a) == POLICY_T_MAP);

	if (rc == IDP_OK) {
		in->slot[a].map.kv = kv;
		in->slot[a].map.n = n;
	}
	return rc;
}

/* ---- JSON ------------------------------------------------------------------ */

struct policy_input_doc {
	struct policy_input in;
	json_t *json;
	struct ppool pool;
};

struct policy_input *
policy_input_doc_input(struct policy_input_doc *doc)
{
	return &doc->in;
}

void
policy_input_doc_free(struct policy_input_doc *doc)
{
	if (doc == NULL)
		return;
	json_decref(doc->json);
	ppool_free(&doc->pool);
	free(doc);
}

static const char *const sections[] = {"agent", "request", "resource", "delegation", "context"};

/* Integer ranges the reader enforces, so a rule never sees hour 25. */
static void
int_bounds(int a, int64_t *lo, int64_t *hi)
{
	*lo = 0;
	*hi = INT64_MAX;
	switch (a) {
	case POLICY_ATTR_CONTEXT_HOUR:
		*hi = 23;
		break;
	case POLICY_ATTR_CONTEXT_MINUTE:
		*hi = 59;
		break;
	case POLICY_ATTR_CONTEXT_RISK:
		*hi = 100;
		break;
	default:
		break;
	}
}

static bool
scope_list(int a)
{
	return a == POLICY_ATTR_AGENT_CAPABILITIES || a == POLICY_ATTR_REQUEST_SCOPES;
}

/* Read one attribute value; false (with a diag line) when its shape is wrong. */
static bool
read_value(struct policy_input_doc *doc, int a, const json_t *v, struct idp_diag *diag)
{
	const char *name = attrs[a].name;
	struct policy_input *in = &doc->in;
	int64_t lo, hi;
	int k;

	switch (attrs[a].type) {
	case POLICY_T_STRING:
		if (!json_is_string(v)) {
			idp_diag_add(diag, "%s: expected a string", name);
			return false;
		}
		if (json_string_length(v) > POLICY_MAX_STRING ||
		    strlen(json_string_value(v)) != json_string_length(v)) {
			idp_diag_add(diag, "%s: string too long or holds a NUL byte", name);
			return false;
		}
		return policy_input_set_str(in, a, json_string_value(v)) == IDP_OK;
	case POLICY_T_INT:
		int_bounds(a, &lo, &hi);
		if (!json_is_integer(v) || (int64_t)json_integer_value(v) < lo ||
		    (int64_t)json_integer_value(v) > hi) {
			if (hi == INT64_MAX)
				idp_diag_add(diag, "%s: expected a non-negative integer", name);
			else
				idp_diag_add(diag, "%s: expected an integer from %lld to %lld",
				             name, (long long)lo, (long long)hi);
			return false;
		}
		return policy_input_set_int(in, a, (int64_t)json_integer_value(v)) == IDP_OK;
	case POLICY_T_BOOL:
		if (!json_is_boolean(v)) {
			idp_diag_add(diag, "%s: expected true or false", name);
			return false;
		}
		return policy_input_set_bool(in, a, json_is_true(v)) == IDP_OK;
	case POLICY_T_ACTION:
		k = json_is_string(v) ? idp_action_class_parse(json_string_value(v)) : -1;
		if (k < 0) {
			idp_diag_add(diag,
			             "%s: expected \"read\", \"write\", \"delete\" or \"admin\"",
			             name);
			return false;
		}
		return policy_input_set_int(in, a, k) == IDP_OK;
	case POLICY_T_WEEKDAY:
		k = json_is_string(v) ? policy_weekday_parse(json_string_value(v)) : -1;
		if (k < 0) {
			idp_diag_add(diag, "%s: expected a weekday, \"mon\" to \"sun\"", name);
			return false;
		}
		return policy_input_set_int(in, a, k) == IDP_OK;
	case POLICY_T_LIST: {
		size_t n = json_is_array(v) ? json_array_size(v) : 0;
		const char **items;

		if (!json_is_array(v) || n > POLICY_MAX_LIST) {
			idp_diag_add(diag, "%s: expected a list of at most %d strings", name,
			             POLICY_MAX_LIST);
			return false;
		}
		items = ppool_alloc(&doc->pool, (n ? n : 1) * sizeof(*items));
		for (size_t i = 0; i < n; i++) {
			const json_t *it = json_array_get(v, i);
			struct idp_diag d;

			if (!json_is_string(it) || json_string_length(it) > POLICY_MAX_STRING ||
			    strlen(json_string_value(it)) != json_string_length(it)) {
				idp_diag_add(diag, "%s[%zu]: expected a string", name, i);
				return false;
			}
			idp_diag_init(&d);
			if (scope_list(a) && scope_validate(json_string_value(it), &d) != IDP_OK) {
				idp_diag_add(diag, "%s[%zu]: %s", name, i, idp_diag_str(&d));
				return false;
			}
			items[i] = json_string_value(it);
		}
		return policy_input_set_list(in, a, items, n) == IDP_OK;
	}
	case POLICY_T_MAP: {
		size_t n = json_is_object(v) ? json_object_size(v) : 0, i = 0;
		struct policy_kv *kv;
		const char *key;
		json_t *it;

		if (!json_is_object(v) || n > POLICY_MAX_LIST) {
			idp_diag_add(diag, "%s: expected an object of at most %d strings", name,
			             POLICY_MAX_LIST);
			return false;
		}
		kv = ppool_alloc(&doc->pool, (n ? n : 1) * sizeof(*kv));
		json_object_foreach((json_t *)v, key, it)
		{
			if (!json_is_string(it) || json_string_length(it) > POLICY_MAX_STRING ||
			    strlen(json_string_value(it)) != json_string_length(it)) {
				idp_diag_add(diag, "%s[\"%.64s\"]: expected a string", name, key);
				return false;
			}
			kv[i].key = key;
			kv[i].value = json_string_value(it);
			i++;
		}
		return policy_input_set_map(in, a, kv, n) == IDP_OK;
	}
	}
	return false;
}

/*
 * The action class is at least what the scopes imply: derived when the
 * caller gives none, raised when the caller's is lower.
 */
void
policy_input_derive_action_class(struct policy_input *in, const struct scope_verb_map *verbs)
{
	const struct scope_verb_map *m = verbs != NULL ? verbs : scope_verb_map_current();
	const union policy_slot *s = &in->slot[POLICY_ATTR_REQUEST_SCOPES];
	enum idp_action_class c = IDP_ACTION_READ;

	if (!policy_input_has(in, POLICY_ATTR_REQUEST_SCOPES) || s->list.n == 0)
		return;
	if (policy_input_has(in, POLICY_ATTR_REQUEST_ACTION_CLASS))
		c = (enum idp_action_class)in->slot[POLICY_ATTR_REQUEST_ACTION_CLASS].i;
	for (size_t i = 0; i < s->list.n; i++) {
		enum idp_action_class k = scope_action_class(m, s->list.v[i]);

		if (k > c)
			c = k;
	}
	(void)policy_input_set_int(in, POLICY_ATTR_REQUEST_ACTION_CLASS, c);
}

/* One string of a set input: as the JSON reader would take it. */
static bool
string_ok(const char *name, const char *s, struct idp_diag *diag)
{
	if (s == NULL || strlen(s) > POLICY_MAX_STRING) {
		idp_diag_add(diag, "%s: string too long or missing", name);
		return false;
	}
	return true;
}

int
policy_input_validate(const struct policy_input *in, struct idp_diag *diag)
{
	unsigned before = diag->count;

	for (int a = 0; a < POLICY_ATTR_COUNT; a++) {
		const union policy_slot *v = &in->slot[a];
		const char *name = attrs[a].name;
		int64_t lo, hi;

		if (!policy_input_has(in, (enum policy_attr)a))
			continue;
		switch (attrs[a].type) {
		case POLICY_T_STRING:
			(void)string_ok(name, v->s, diag);
			break;
		case POLICY_T_INT:
			int_bounds(a, &lo, &hi);
			if (v->i < lo || v->i > hi)
				idp_diag_add(diag, "%s: %lld is out of range", name,
				             (long long)v->i);
			break;
		case POLICY_T_BOOL:
		case POLICY_T_ACTION:
		case POLICY_T_WEEKDAY:
			break; /* the setters admit only valid values */
		case POLICY_T_LIST:
			if (v->list.n > POLICY_MAX_LIST) {
				idp_diag_add(diag, "%s: more than %d items", name, POLICY_MAX_LIST);
				break;
			}
			for (size_t i = 0; i < v->list.n; i++) {
				struct idp_diag d;

				if (!string_ok(name, v->list.v[i], diag))
					break;
				idp_diag_init(&d);
				if (scope_list(a) && scope_validate(v->list.v[i], &d) != IDP_OK) {
					idp_diag_add(diag, "%s[%zu]: %s", name, i,
					             idp_diag_str(&d));
					break;
				}
			}
			break;
		case POLICY_T_MAP:
			if (v->map.n > POLICY_MAX_LIST) {
				idp_diag_add(diag, "%s: more than %d items", name, POLICY_MAX_LIST);
				break;
			}
			for (size_t i = 0; i < v->map.n; i++)
				if (!string_ok(name, v->map.kv[i].key, diag) ||
				    !string_ok(name, v->map.kv[i].value, diag))
					break;
			break;
		}
	}
	return diag->count == before ? IDP_OK : IDP_EINVAL;
}

/* context.time: the local hour, minute and weekday, unless given explicitly. */
static bool
read_time(struct policy_input_doc *doc, const json_t *v, const struct policy_json_opts *opts,
          bool explicit_fields[3], struct idp_diag *diag)
{
	struct policy_localtime lt;
	struct policy_tz *utc = NULL;
	int64_t ms;

	if (!json_is_string(v) || policy_parse_rfc3339(json_string_value(v), &ms) != IDP_OK) {
		idp_diag_add(diag, "context.time: expected an RFC 3339 time such as "
		                   "\"2026-03-30T10:00:00Z\"");
		return false;
	}
	if (opts->tz == NULL)
		utc = policy_tz_fixed("UTC", 0);
	policy_tz_local(opts->tz != NULL ? opts->tz : utc, ms, &lt);
	policy_tz_free(utc);
	if (!explicit_fields[0])
		(void)policy_input_set_int(&doc->in, POLICY_ATTR_CONTEXT_HOUR, lt.hour);
	if (!explicit_fields[1])
		(void)policy_input_set_int(&doc->in, POLICY_ATTR_CONTEXT_MINUTE, lt.minute);
	if (!explicit_fields[2])
		(void)policy_input_set_int(&doc->in, POLICY_ATTR_CONTEXT_WEEKDAY, lt.weekday);
	return true;
}

int
policy_input_from_json(const json_t *obj, const struct policy_json_opts *opts,
                       struct policy_input_doc **out, struct idp_diag *diag)
{
	static const struct policy_json_opts defaults = {NULL, NULL, false};
	struct policy_input_doc *doc;
	const json_t *time_v = NULL;
	bool explicit_time[3] = {false, false, false};
	unsigned before = diag->count;
	const char *skey;
	json_t *sec;

	*out = NULL;
	if (opts == NULL)
		opts = &defaults;
	if (!json_is_object(obj)) {
		idp_diag_add(diag, "input: expected an object");
		return IDP_EINVAL;
	}
	doc = idp_xcalloc(1, sizeof(*doc));
	policy_input_init(&doc->in);
	doc->json = json_incref((json_t *)obj);
	json_object_foreach((json_t *)obj, skey, sec)
	{
		const char *key;
		json_t *v;
		bool known = false;

		for (size_t i = 0; i < IDP_ARRAY_LEN(sections); i++)
			known |= strcmp(skey, sections[i]) == 0;
		if (!known) {
			if (!opts->lenient)
				idp_diag_add(diag,
				             "%.64s: unknown section (expected agent, request, "
				             "resource, delegation or context)",
				             skey);
			continue;
		}
		if (json_is_null(sec))
			continue;
		if (!json_is_object(sec)) {
			idp_diag_add(diag, "%s: expected an object", skey);
			continue;
		}
		json_object_foreach(sec, key, v)
		{
			char name[128];
			int a;

			snprintf(name, sizeof(name), "%s.%.64s", skey, key);
			if (strcmp(name, "context.time") == 0) {
				time_v = v;
				continue;
			}
			a = policy_attr_lookup(name);
			if (a < 0) {
				if (!opts->lenient)
					idp_diag_add(diag, "%s: unknown attribute", name);
				continue;
			}
			if (json_is_null(v))
				continue; /* explicitly missing */
			if (!read_value(doc, a, v, diag))
				continue;
			if (a == POLICY_ATTR_CONTEXT_HOUR)
				explicit_time[0] = true;
			else if (a == POLICY_ATTR_CONTEXT_MINUTE)
				explicit_time[1] = true;
			else if (a == POLICY_ATTR_CONTEXT_WEEKDAY)
				explicit_time[2] = true;
		}
	}
	if (time_v != NULL && !json_is_null(time_v))
		(void)read_time(doc, time_v, opts, explicit_time, diag);
	policy_input_derive_action_class(&doc->in, opts->verbs);
	if (diag->count != before) {
		policy_input_doc_free(doc);
		return IDP_EINVAL;
	}
	*out = doc;
	return IDP_OK;
}
