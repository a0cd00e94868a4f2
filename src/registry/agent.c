/*
 * agent.c - validation of agent records as clients send them, field by
 * field, and the JSON merge patch that PATCH applies.
 *
 * Everything here is a pure function of its arguments.  Validation collects
 * every problem rather than stopping at the first, so a client fixes its
 * request in one round: each problem names its field as a path
 * ("delegation_constraints.max_chain_depth", "capabilities[2]").  Unknown
 * fields are errors, never ignored, so a misspelt optional field cannot
 * silently fall back to its default.
 */
#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "idpd/clock.h"
#include "idpd/scope.h"
#include "registry_int.h"

/* ---- names ---- */

static const char *const status_names[] = {"active", "suspended", "decommissioned"};

const char *
registry_status_name(enum registry_status s)
{
	return (unsigned)s < IDP_ARRAY_LEN(status_names) ? status_names[s] : NULL;
}

int
registry_status_parse(const char *s)
{
	for (size_t i = 0; s != NULL && i < IDP_ARRAY_LEN(status_names); i++)
		if (strcmp(s, status_names[i]) == 0)
			return (int)i;
	return -1;
}

/* ---- character classes ---- */

static bool
lower_alnum(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

/* ^[a-z0-9][a-z0-9<extra>]{0,max-1}$ */
static bool
label_ok(const char *s, size_t max, const char *extra)
{
	size_t n = 0;

	if (s == NULL || !lower_alnum(s[0]))
		return false;
	for (n = 1; s[n] != '\0'; n++) {
		if (n >= max)
			return false;
		if (!lower_alnum(s[n]) && strchr(extra, s[n]) == NULL)
			return false;
	}
	return true;
}

bool
registry_id_valid(const char *s)
{
	return label_ok(s, REGISTRY_ID_MAX, "._-");
}

/* 1..max bytes of [A-Za-z0-9] plus extra. */
static bool
token_ok(const char *s, size_t max, const char *extra)
{
	size_t n;

	for (n = 0; s[n] != '\0'; n++) {
		if (n >= max)
			return false;
		if (!isalnum((unsigned char)s[n]) && strchr(extra, s[n]) == NULL)
			return false;
	}
	return n > 0;
}

/* Printable ASCII without space: '!' .. '~'. */
static bool
visible_ok(const char *s, size_t min, size_t max)
{
	size_t n;

	for (n = 0; s[n] != '\0'; n++) {
		if (n >= max || s[n] < '!' || s[n] > '~')
			return false;
	}
	return n >= min;
}

/* Free text: 1..max bytes (UTF-8, checked by the JSON parser), no control characters. */
static const char *
text_problem(const char *s, size_t max)
{
	size_t n = strlen(s);

	if (n == 0)
		return "must not be empty";
	if (n > max)
		return "is too long";
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
			return "must not contain control characters";
	return NULL;
}

/* ---- owners ---- */

static bool
email_local_char(char c)
{
	return isalnum((unsigned char)c) ||
	       (c != '\0' && strchr(".!#$%&'*+/=?^_`{|}~-", c) != NULL);
}

static bool
email_ok(const char *s)
{
	const char *at = strchr(s, '@'), *d, *label;
	size_t local = at != NULL ? (size_t)(at - s) : 0, labels = 0;

	if (at == NULL || local == 0 || local > 64 || strchr(at + 1, '@') != NULL)
		return false;
	if (s[0] == '.' || at[-1] == '.')
		return false;
	for (size_t i = 0; i < local; i++) {
		if (!email_local_char(s[i]) || (s[i] == '.' && s[i + 1] == '.'))
			return false;
	}
	d = at + 1;
	if (strlen(d) == 0 || strlen(d) > 253)
		return false;
	for (label = d;; label++) {
		size_t n = strcspn(label, ".");

		if (n == 0 || n > 63 || label[0] == '-' || label[n - 1] == '-')
			return false;
		for (size_t i = 0; i < n; i++)
			if (!isalnum((unsigned char)label[i]) && label[i] != '-')
				return false;
		labels++;
		label += n;
		if (*label == '\0')
			break;
	}
	return labels >= 2;
}

bool
registry_owner_valid(const char *s, const char **why)
{
	const char *colon;
	static const char expected[] = "must be an email address (alice@company.com) or an IdP "
	                               "subject \"idp:subject\" (okta:00u1abcd)";

	if (s == NULL || strlen(s) > 320) {
		if (why != NULL)
			*why = s == NULL ? expected : "is longer than 320 bytes";
		return false;
	}
	colon = strchr(s, ':');
	if (colon != NULL) {
		char idp[65];
		size_t n = (size_t)(colon - s);

		if (n == 0 || n >= sizeof(idp))
			goto bad;
		memcpy(idp, s, n);
		idp[n] = '\0';
		if (!label_ok(idp, 64, "._-") || !visible_ok(colon + 1, 1, 255))
			goto bad;
		return true;
	}
	if (email_ok(s))
		return true;
bad:
	if (why != NULL)
		*why = expected;
	return false;
}

void
registry_owner_normalize(const char *in, char *out, size_t len)
{
	size_t i;

	if (len == 0)
		return;
	/* Email addresses compare case-insensitively in practice; subjects
	 * are opaque strings an IdP chose, compared exactly. */
	if (strchr(in, ':') != NULL) {
		snprintf(out, len, "%s", in);
		return;
	}
	for (i = 0; in[i] != '\0' && i + 1 < len; i++)
		out[i] = (char)tolower((unsigned char)in[i]);
	out[i] = '\0';
}

/* ---- errors ---- */

void
agent_error(json_t *errors, const char *field, const char *fmt, ...)
{
	char msg[512], safe[256];
	va_list ap;
	json_t *e;
	size_t i;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	e = json_pack("{s:s,s:s}", "field", field, "message", msg);
	if (e == NULL) {
		/* A field path cut inside a UTF-8 sequence, or a message echoing
		 * one: fall back to ASCII so the error is never lost. */
		for (i = 0; field[i] != '\0' && i + 1 < sizeof(safe); i++)
			safe[i] = (unsigned char)field[i] < 0x80 ? field[i] : '?';
		safe[i] = '\0';
		e = json_pack("{s:s,s:s}", "field", safe, "message", "is not valid");
	}
	if (e == NULL)
		abort(); /* both strings are ASCII: only OOM gets here */
	json_array_append_new(errors, e);
}

static const char *
type_name(const json_t *v)
{
	switch (json_typeof(v)) {
	case JSON_OBJECT:
		return "an object";
	case JSON_ARRAY:
		return "an array";
	case JSON_STRING:
		return "a string";
	case JSON_INTEGER:
		return "an integer";
	case JSON_REAL:
		return "a number";
	case JSON_TRUE:
	case JSON_FALSE:
		return "a boolean";
	case JSON_NULL:
		return "null";
	}
	return "a value";
}

/* ---- the fields ---- */

enum field_kind {
	F_ID,      /* registry_id_valid */
	F_VERSION, /* [A-Za-z0-9._+-]{1,64} */
	F_MODEL,   /* [A-Za-z0-9._:/@+-]{1,128} */
	F_TEXT,    /* free text, max bytes */
	F_OWNER,
	F_LABEL,     /* ^[a-z0-9][a-z0-9._-]{0,63}$ */
	F_SCOPES,    /* array of scope patterns */
	F_IDS,       /* array of agent ids */
	F_LABELS,    /* array of F_LABEL */
	F_SELECTORS, /* array of "type:value" */
	F_LABEL_MAP, /* object of label -> text */
	F_CONSTRAINTS,
	F_CREDENTIAL,
};

struct field {
	const char *name;
	enum field_kind kind;
	bool required;
	size_t max; /* bytes for strings, items for arrays */
};

static const struct field fields[] = {
    {"id", F_ID, true, REGISTRY_ID_MAX},
    {"agent_type", F_ID, true, REGISTRY_ID_MAX},
    {"agent_version", F_VERSION, false, 64},
    {"model", F_MODEL, false, 128},
    {"deployment", F_TEXT, false, 256},
    {"owner", F_OWNER, true, 320},
    {"team", F_TEXT, false, 128},
    {"capabilities", F_SCOPES, true, REGISTRY_CAPABILITIES_MAX},
    {"delegate_to", F_IDS, false, REGISTRY_DELEGATE_TO_MAX},
    {"delegation_constraints", F_CONSTRAINTS, true, 0},
    {"credential", F_CREDENTIAL, false, 0},
    {"domains", F_LABELS, false, REGISTRY_DOMAINS_MAX},
    {"environment", F_LABEL, false, 64},
    {"attestation_selectors", F_SELECTORS, false, REGISTRY_SELECTORS_MAX},
    {"labels", F_LABEL_MAP, false, REGISTRY_LABELS_MAX},
};

/* Fields a client reads but never writes. */
static const char *const read_only[] = {
    "created_at", "last_active",      "status",         "version",
    "updated_at", "revocation_epoch", "status_changed",
};

static const struct field *
find_field(const char *name)
{
	for (size_t i = 0; i < IDP_ARRAY_LEN(fields); i++)
		if (strcmp(fields[i].name, name) == 0)
			return &fields[i];
	return NULL;
}

static bool
is_read_only(const char *name)
{
	for (size_t i = 0; i < IDP_ARRAY_LEN(read_only); i++)
		if (strcmp(read_only[i], name) == 0)
			return true;
	return false;
}

/* A string field; returns its normalised value or NULL (an error added). */
static json_t *
check_string(const struct field *f, const char *path, const json_t *v, json_t *errors)
{
	const char *s, *why = NULL;
	char norm[330];

	if (!json_is_string(v)) {
		agent_error(errors, path, "expected a string, found %s", type_name(v));
		return NULL;
	}
	s = json_string_value(v);
	if (strlen(s) != json_string_length(v)) {
		agent_error(errors, path, "must not contain NUL characters");
		return NULL;
	}
	switch (f->kind) {
	case F_ID:
		if (!registry_id_valid(s))
			why = "must match ^[a-z0-9][a-z0-9._-]{0,127}$";
		break;
	case F_VERSION:
		if (!token_ok(s, f->max, "._+-"))
			why = "must be 1 to 64 of letters, digits and \"._+-\"";
		break;
	case F_MODEL:
		if (!token_ok(s, f->max, "._:/@+-"))
			why = "must be 1 to 128 of letters, digits and \"._:/@+-\"";
		break;
	case F_TEXT:
		why = text_problem(s, f->max);
		break;
	case F_LABEL:
		if (!label_ok(s, f->max, "._-"))
			why = "must match ^[a-z0-9][a-z0-9._-]{0,63}$";
		break;
	case F_OWNER:
		if (!registry_owner_valid(s, &why))
			break;
		registry_owner_normalize(s, norm, sizeof(norm));
		return json_string(norm);
	default:
		why = "is not a string field";
		break;
	}
	if (why != NULL) {
		agent_error(errors, path, "%s", why);
		return NULL;
	}
	return json_string(s);
}

static bool
selector_ok(const char *s)
{
	const char *colon = strchr(s, ':');
	char type[33];
	size_t n;

	if (colon == NULL)
		return false;
	n = (size_t)(colon - s);
	if (n == 0 || n >= sizeof(type))
		return false;
	memcpy(type, s, n);
	type[n] = '\0';
	return label_ok(type, 32, "._-") && visible_ok(colon + 1, 1, 256);
}

/* An array of unique strings, each checked by kind; NULL on error. */
static json_t *
check_string_array(const struct field *f, const char *path, const json_t *v, json_t *errors)
{
	json_t *out, *item;
	size_t i;
	bool bad = false;

	if (!json_is_array(v)) {
		agent_error(errors, path, "expected an array of strings, found %s", type_name(v));
		return NULL;
	}
	if (json_array_size(v) > f->max) {
		agent_error(errors, path, "has %zu items; at most %zu are allowed",
		            json_array_size(v), f->max);
		return NULL;
	}
	if (f->kind == F_SCOPES && json_array_size(v) == 0) {
		agent_error(errors, path, "must hold at least one scope pattern");
		return NULL;
	}
	out = json_array();
	json_array_foreach(v, i, item)
	{
		char ip[96];
		const char *s;
		struct idp_diag d;

		snprintf(ip, sizeof(ip), "%s[%zu]", path, i);
		if (!json_is_string(item) ||
		    strlen(json_string_value(item)) != json_string_length(item)) {
			agent_error(errors, ip, "expected a string, found %s", type_name(item));
			bad = true;
			continue;
		}
		s = json_string_value(item);
		switch (f->kind) {
		case F_SCOPES:
			idp_diag_init(&d);
			if (scope_validate(s, &d) != IDP_OK) {
				agent_error(errors, ip, "is not a valid scope pattern: %s",
				            idp_diag_str(&d));
				bad = true;
				continue;
			}
			break;
		case F_IDS:
			if (!registry_id_valid(s)) {
				agent_error(errors, ip,
				            "is not an agent id: must match "
				            "^[a-z0-9][a-z0-9._-]{0,127}$");
				bad = true;
				continue;
			}
			break;
		case F_LABELS:
			if (!label_ok(s, 64, "._-")) {
				agent_error(errors, ip, "must match ^[a-z0-9][a-z0-9._-]{0,63}$");
				bad = true;
				continue;
			}
			break;
		case F_SELECTORS:
			if (!selector_ok(s)) {
				agent_error(
				    errors, ip,
				    "must be \"type:value\": a type of [a-z0-9._-] (at most 32) "
				    "and a value of 1 to 256 visible ASCII characters");
				bad = true;
				continue;
			}
			break;
		default:
			break;
		}
		for (size_t j = 0; j < i; j++) {
			if (json_equal(json_array_get(v, j), item)) {
				agent_error(errors, ip, "repeats %s[%zu]", path, j);
				bad = true;
				break;
			}
		}
		json_array_append(out, item);
	}
	if (bad) {
		json_decref(out);
		return NULL;
	}
	return out;
}

static json_t *
check_label_map(const struct field *f, const char *path, const json_t *v, json_t *errors)
{
	const char *k;
	json_t *item, *out;
	bool bad = false;

	if (!json_is_object(v)) {
		agent_error(errors, path, "expected an object of strings, found %s", type_name(v));
		return NULL;
	}
	if (json_object_size(v) > f->max) {
		agent_error(errors, path, "has %zu labels; at most %zu are allowed",
		            json_object_size(v), f->max);
		return NULL;
	}
	out = json_object();
	json_object_foreach((json_t *)v, k, item)
	{
		char kp[128];
		const char *why;

		snprintf(kp, sizeof(kp), "%s.%.64s", path, k);
		if (!label_ok(k, 63, "._/-")) {
			agent_error(errors, kp,
			            "label names must match ^[a-z0-9][a-z0-9._/-]{0,62}$");
			bad = true;
			continue;
		}
		if (!json_is_string(item)) {
			agent_error(errors, kp, "expected a string, found %s", type_name(item));
			bad = true;
			continue;
		}
		why = strlen(json_string_value(item)) != json_string_length(item)
		          ? "must not contain NUL characters"
		          : text_problem(json_string_value(item), 256);
		if (why != NULL) {
			agent_error(errors, kp, "%s", why);
			bad = true;
			continue;
		}
		json_object_set(out, k, item);
	}
	if (bad) {
		json_decref(out);
		return NULL;
	}
	return out;
}

static bool
unknown_keys(const json_t *obj, const char *path, const char *const *known, size_t n,
             json_t *errors)
{
	const char *k;
	json_t *v;
	bool bad = false;

	json_object_foreach((json_t *)obj, k, v)
	{
		bool found = false;
		char kp[160];

		for (size_t i = 0; i < n && !found; i++)
			found = strcmp(known[i], k) == 0;
		if (!found) {
			snprintf(kp, sizeof(kp), "%s.%.100s", path, k);
			agent_error(errors, kp, "unknown field");
			bad = true;
		}
	}
	return bad;
}

static json_t *
check_constraints(const char *path, const json_t *v, json_t *errors)
{
	static const char *const known[] = {"max_chain_depth", "max_scope_per_delegation",
	                                    "requires_human_approval_for"};
	const json_t *depth, *maxs, *appr;
	json_t *classes;
	char p[96];
	bool bad;
	size_t i;

	if (!json_is_object(v)) {
		agent_error(errors, path, "expected an object, found %s", type_name(v));
		return NULL;
	}
	bad = unknown_keys(v, path, known, IDP_ARRAY_LEN(known), errors);
	depth = json_object_get(v, "max_chain_depth");
	maxs = json_object_get(v, "max_scope_per_delegation");
	appr = json_object_get(v, "requires_human_approval_for");

	snprintf(p, sizeof(p), "%s.max_chain_depth", path);
	if (depth == NULL || json_is_null(depth)) {
		agent_error(errors, p, "is required");
		bad = true;
	} else if (!json_is_integer(depth)) {
		agent_error(errors, p, "expected an integer, found %s", type_name(depth));
		bad = true;
	} else if (json_integer_value(depth) < 0 ||
	           json_integer_value(depth) > REGISTRY_CHAIN_DEPTH_MAX) {
		agent_error(errors, p, "must be from 0 to %d", REGISTRY_CHAIN_DEPTH_MAX);
		bad = true;
	}
	snprintf(p, sizeof(p), "%s.max_scope_per_delegation", path);
	if (maxs == NULL || json_is_null(maxs)) {
		agent_error(errors, p, "is required");
		bad = true;
	} else if (!json_is_string(maxs) || idp_action_class_parse(json_string_value(maxs)) < 0) {
		agent_error(errors, p, "must be one of \"read\", \"write\", \"delete\", \"admin\"");
		bad = true;
	}
	snprintf(p, sizeof(p), "%s.requires_human_approval_for", path);
	classes = json_array();
	if (appr == NULL || json_is_null(appr)) {
		agent_error(errors, p, "is required (an empty list means no approval is needed)");
		bad = true;
	} else if (!json_is_array(appr)) {
		agent_error(errors, p, "expected an array of action classes, found %s",
		            type_name(appr));
		bad = true;
	} else {
		unsigned seen = 0;
		json_t *item;

		json_array_foreach(appr, i, item)
		{
			char ip[128];
			int c = json_is_string(item)
			            ? idp_action_class_parse(json_string_value(item))
			            : -1;

			snprintf(ip, sizeof(ip), "%s[%zu]", p, i);
			if (c < 0) {
				agent_error(
				    errors, ip,
				    "must be one of \"read\", \"write\", \"delete\", \"admin\"");
				bad = true;
			} else if (seen & (1u << c)) {
				agent_error(errors, ip, "repeats an action class");
				bad = true;
			} else {
				seen |= 1u << c;
			}
		}
		/* Stored in class order, whatever order the client used. */
		for (int c = 0; c < IDP_ACTION_COUNT; c++)
			if (seen & (1u << c))
				json_array_append_new(classes, json_string(idp_action_class_name(
				                                   (enum idp_action_class)c)));
	}
	if (bad) {
		json_decref(classes);
		return NULL;
	}
	return json_pack("{s:I,s:s,s:o}", "max_chain_depth", (json_int_t)json_integer_value(depth),
	                 "max_scope_per_delegation", json_string_value(maxs),
	                 "requires_human_approval_for", classes);
}

static json_t *
check_credential(const char *path, const json_t *v, json_t *errors)
{
	static const char *const known[] = {"type", "rotation", "last_rotated"};
	const json_t *type, *rot;
	const char *tname = "spiffe-jwt-svid";
	int64_t ms = REGISTRY_ROTATION_DEFAULT_MS;
	char p[96], rs[32];
	bool bad = false;

	if (v == NULL || json_is_null(v))
		goto done;
	if (!json_is_object(v)) {
		agent_error(errors, path, "expected an object, found %s", type_name(v));
		return NULL;
	}
	bad = unknown_keys(v, path, known, IDP_ARRAY_LEN(known), errors);
	if (json_object_get(v, "last_rotated") != NULL &&
	    !json_is_null(json_object_get(v, "last_rotated"))) {
		/* A record read back and sent again carries it: accept the
		 * value idpd wrote only by ignoring it would hide a mistake. */
		snprintf(p, sizeof(p), "%s.last_rotated", path);
		agent_error(errors, p, "is read-only: attestation sets it");
		bad = true;
	}
	type = json_object_get(v, "type");
	if (type != NULL && !json_is_null(type)) {
		snprintf(p, sizeof(p), "%s.type", path);
		/* What attestation issues: a record must not promise X.509. */
		if (!json_is_string(type) ||
		    strcmp(json_string_value(type), "spiffe-jwt-svid") != 0) {
			agent_error(
			    errors, p,
			    "must be \"spiffe-jwt-svid\": idpd issues identity credentials as "
			    "JWTs, not X.509 SVIDs");
			bad = true;
		} else {
			tname = json_string_value(type);
		}
	}
	rot = json_object_get(v, "rotation");
	if (rot != NULL && !json_is_null(rot)) {
		snprintf(p, sizeof(p), "%s.rotation", path);
		if (!json_is_string(rot) ||
		    idp_duration_parse(json_string_value(rot), &ms) != IDP_OK) {
			agent_error(errors, p, "must be a duration such as \"1h\" or \"30m\"");
			bad = true;
		} else if (ms < REGISTRY_ROTATION_MIN_MS || ms > REGISTRY_ROTATION_MAX_MS) {
			agent_error(errors, p, "must be from \"5m\" to \"24h\"");
			bad = true;
		}
	}
	if (bad)
		return NULL;
done:
	registry_duration_format(ms, rs);
	return json_pack("{s:s,s:s}", "type", tname, "rotation", rs);
}

json_t *
agent_input_validate(const json_t *body, json_t *errors)
{
	size_t before = json_array_size(errors);
	const char *k;
	json_t *v, *out;

	if (!json_is_object(body)) {
		agent_error(errors, "", "expected a JSON object");
		return NULL;
	}
	json_object_foreach((json_t *)body, k, v)
	{
		if (find_field(k) != NULL)
			continue;
		if (is_read_only(k))
			agent_error(errors, k, "is read-only%s",
			            strcmp(k, "status") == 0
			                ? "; use the suspend, resume and decommission endpoints"
			                : "");
		else
			agent_error(errors, k, "unknown field");
	}
	out = json_object();
	for (size_t i = 0; i < IDP_ARRAY_LEN(fields); i++) {
		const struct field *f = &fields[i];
		json_t *in = json_object_get(body, f->name), *nv = NULL;

		if (in == NULL || json_is_null(in)) {
			if (f->required) {
				agent_error(errors, f->name, "is required%s",
				            f->kind == F_OWNER
				                ? ": every agent needs an accountable "
				                  "human sponsor"
				                : "");
				continue;
			}
			switch (f->kind) {
			case F_IDS:
			case F_LABELS:
			case F_SELECTORS:
				nv = json_array();
				break;
			case F_LABEL_MAP:
				nv = json_object();
				break;
			case F_CREDENTIAL:
				nv = check_credential(f->name, NULL, errors);
				break;
			default:
				nv = json_null();
				break;
			}
			json_object_set_new(out, f->name, nv);
			continue;
		}
		switch (f->kind) {
		case F_SCOPES:
		case F_IDS:
		case F_LABELS:
		case F_SELECTORS:
			nv = check_string_array(f, f->name, in, errors);
			break;
		case F_LABEL_MAP:
			nv = check_label_map(f, f->name, in, errors);
			break;
		case F_CONSTRAINTS:
			nv = check_constraints(f->name, in, errors);
			break;
		case F_CREDENTIAL:
			nv = check_credential(f->name, in, errors);
			break;
		default:
			nv = check_string(f, f->name, in, errors);
			break;
		}
		if (nv != NULL)
			json_object_set_new(out, f->name, nv);
	}
	/* An agent delegating to itself would let a chain grow without a new party. */
	{
		const json_t *id = json_object_get(out, "id"),
		             *dt = json_object_get(out, "delegate_to");
		size_t i;
		json_t *item;

		if (json_is_string(id) && json_is_array(dt)) {
			json_array_foreach(dt, i, item)
			{
				if (json_equal(item, id)) {
					char p[64];

					snprintf(p, sizeof(p), "delegate_to[%zu]", i);
					agent_error(errors, p,
					            "an agent cannot delegate to itself");
				}
			}
		}
	}
	if (json_array_size(errors) != before) {
		json_decref(out);
		return NULL;
	}
	return out;
}

size_t
agent_patch_check(const json_t *patch, const json_t *current, json_t *errors, json_t *accepted)
{
	size_t before = json_array_size(errors), had;
	const char *k;
	json_t *v;

	if (!json_is_object(patch)) {
		agent_error(errors, "", "expected a JSON object (a JSON merge patch)");
		return 1;
	}
	json_object_foreach((json_t *)patch, k, v)
	{
		had = json_array_size(errors);
		if (strcmp(k, "id") == 0 || strcmp(k, "agent_type") == 0) {
			if (!json_equal(v, json_object_get(current, k)))
				agent_error(errors, k, "cannot be changed; register a new agent");
		} else if (strcmp(k, "owner") == 0 && json_is_null(v)) {
			agent_error(errors, k,
			            "cannot be removed: every agent needs an "
			            "accountable human; set a new owner instead");
		} else if (is_read_only(k)) {
			agent_error(errors, k, "is read-only%s",
			            strcmp(k, "status") == 0
			                ? "; use the suspend, resume and decommission endpoints"
			                : "");
		} else if (find_field(k) == NULL) {
			agent_error(errors, k, "unknown field");
		}
		if (accepted != NULL && json_array_size(errors) == had)
			json_object_set(accepted, k, v);
	}
	return json_array_size(errors) - before;
}

json_t *
json_merge_patch(const json_t *target, const json_t *patch)
{
	json_t *out;
	const char *k;
	json_t *v;

	if (!json_is_object(patch))
		return json_deep_copy(patch);
	out = json_is_object(target) ? json_deep_copy(target) : json_object();
	json_object_foreach((json_t *)patch, k, v)
	{
		if (json_is_null(v)) {
			json_object_del(out, k);
		} else {
			json_t *merged = json_merge_patch(json_object_get(out, k), v);

			json_object_set_new(out, k, merged);
		}
	}
	return out;
}
