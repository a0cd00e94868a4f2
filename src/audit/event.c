/*
 * event.c - the audit event model: type table, validated setters, JSON in
 * and out, the canonical form and the hash chain (see audit.h).
 */
#include <arpa/inet.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "idpd/buf.h"
#include "idpd/clock.h"
#include "idpd/json_out.h"
#include "idpd/log.h"

#include "audit_int.h"

static const struct {
	const char *name;
	const char *category;
	const char *title;
	int severity;
} types[AUDIT_TYPE_COUNT] = {
    [AUDIT_AGENT_REGISTERED] = {"agent.registered", "agent", "Agent registered", 3},
    [AUDIT_AGENT_UPDATED] = {"agent.updated", "agent", "Agent updated", 3},
    [AUDIT_AGENT_SUSPENDED] = {"agent.suspended", "agent", "Agent suspended", 5},
    [AUDIT_AGENT_RESUMED] = {"agent.resumed", "agent", "Agent resumed", 4},
    [AUDIT_AGENT_DECOMMISSIONED] = {"agent.decommissioned", "agent", "Agent decommissioned", 5},
    [AUDIT_AGENT_ATTESTED] = {"agent.attested", "agent", "Agent attested", 2},
    [AUDIT_AGENT_ATTESTATION_FAILED] = {"agent.attestation_failed", "agent",
                                        "Agent attestation failed", 6},
    [AUDIT_AGENT_JOIN_TOKEN_CREATED] = {"agent.join_token_created", "agent", "Join token created",
                                        3},
    [AUDIT_AUTH_FAILED] = {"auth.failed", "auth", "Authentication failed", 6},
    [AUDIT_TOKEN_ISSUED] = {"token.issued", "token", "Token issued", 2},
    [AUDIT_TOKEN_DENIED] = {"token.denied", "token", "Token denied", 5},
    [AUDIT_TOKEN_REVOKED] = {"token.revoked", "token", "Token revoked", 4},
    [AUDIT_DELEGATION_CREATED] = {"delegation.created", "delegation", "Delegation created", 2},
    [AUDIT_DELEGATION_DENIED] = {"delegation.denied", "delegation", "Delegation denied", 5},
    [AUDIT_DELEGATION_REVOKED] = {"delegation.revoked", "delegation", "Delegation revoked", 4},
    [AUDIT_APPROVAL_REQUESTED] = {"approval.requested", "approval", "Approval requested", 3},
    [AUDIT_APPROVAL_GRANTED] = {"approval.granted", "approval", "Approval granted", 3},
    [AUDIT_APPROVAL_DENIED] = {"approval.denied", "approval", "Approval denied", 4},
    [AUDIT_APPROVAL_EXPIRED] = {"approval.expired", "approval", "Approval expired", 3},
    [AUDIT_APPROVAL_USED] = {"approval.used", "approval", "Approval used", 3},
    [AUDIT_APPROVAL_RESTORED] = {"approval.restored", "approval", "Approval restored", 4},
    [AUDIT_TASK_STARTED] = {"task.started", "task", "Task started", 2},
    [AUDIT_TASK_COMPLETED] = {"task.completed", "task", "Task completed", 2},
    [AUDIT_POLICY_RELOADED] = {"policy.reloaded", "policy", "Policies reloaded", 4},
    [AUDIT_POLICY_EVALUATED] = {"policy.evaluated", "policy", "Policy evaluated", 1},
    [AUDIT_KEY_GENERATED] = {"key.generated", "key", "Signing key generated", 4},
    [AUDIT_KEY_ROTATED] = {"key.rotated", "key", "Signing key rotated", 4},
    [AUDIT_KEY_RETIRED] = {"key.retired", "key", "Signing key retired", 3},
    [AUDIT_KEY_RESEALED] = {"key.resealed", "key", "Signing key resealed under a new KEK", 4},
    [AUDIT_TOOL_INVOCATION] = {"tool_invocation", "tool", "Tool invocation", 2},
    [AUDIT_ALERT] = {"alert", "alert", "Alert", 7},
    [AUDIT_CONFIG_RELOADED] = {"config.reloaded", "config", "Configuration reloaded", 4},
    [AUDIT_MAINTENANCE_CLEANUP] = {"maintenance.cleanup", "maintenance", "Maintenance cleanup", 2},
    [AUDIT_AUDIT_VERIFIED] = {"audit.verified", "audit", "Audit chain verified", 3},
    [AUDIT_AUDIT_WITHDRAWN] = {"audit.withdrawn", "audit", "Audit event withdrawn", 4},
    [AUDIT_AUDIT_EVENT_REFUSED] = {"audit.event_refused", "audit",
                                   "Audit event refused by the database", 7},
    [AUDIT_JWKS_CHANGED] = {"jwks.changed", "jwks", "Identity provider keys changed", 4},
};

static bool
type_ok(enum audit_type t)
{
	return (unsigned)t < AUDIT_TYPE_COUNT;
}

const char *
audit_type_name(enum audit_type t)
{
	return type_ok(t) ? types[t].name : NULL;
}

const char *
audit_type_category(enum audit_type t)
{
	return type_ok(t) ? types[t].category : NULL;
}

const char *
audit_type_title(enum audit_type t)
{
	return type_ok(t) ? types[t].title : NULL;
}

int
audit_type_default_severity(enum audit_type t)
{
	return type_ok(t) ? types[t].severity : 0;
}

int
audit_type_parse(const char *s, enum audit_type *out)
{
	for (int i = 0; i < AUDIT_TYPE_COUNT; i++) {
		if (strcmp(s, types[i].name) == 0) {
			*out = (enum audit_type)i;
			return IDP_OK;
		}
	}
	return IDP_EINVAL;
}

/* ---- small enums -------------------------------------------------------- */

static const char *const outcome_names[] = {NULL,     "success", "failure",
                                            "denied", "pending", "error"};
static const char *const decision_names[] = {NULL, "ALLOW", "DENY", "REQUIRE_APPROVAL",
                                             "ALLOW_WITH_CONDITIONS"};
static const char *const actor_names[] = {NULL, "operator", "agent", "human", "system"};

/* Index of s in names[1..n), which all enums above share: 0 means "not set". */
static int
name_index(const char *const *names, size_t n, const char *s)
{
	for (size_t i = 1; i < n; i++)
		if (strcmp(s, names[i]) == 0)
			return (int)i;
	return -1;
}

const char *
audit_outcome_name(enum audit_outcome o)
{
	return (unsigned)o < IDP_ARRAY_LEN(outcome_names) ? outcome_names[o] : NULL;
}

int
audit_outcome_parse(const char *s, enum audit_outcome *out)
{
	int i = name_index(outcome_names, IDP_ARRAY_LEN(outcome_names), s);

	if (i < 0)
		return IDP_EINVAL;
	*out = (enum audit_outcome)i;
	return IDP_OK;
}

const char *
audit_decision_name(enum audit_decision d)
{
	return (unsigned)d < IDP_ARRAY_LEN(decision_names) ? decision_names[d] : NULL;
}

int
audit_decision_parse(const char *s, enum audit_decision *out)
{
	int i = name_index(decision_names, IDP_ARRAY_LEN(decision_names), s);

	if (i < 0)
		return IDP_EINVAL;
	*out = (enum audit_decision)i;
	return IDP_OK;
}

const char *
audit_actor_kind_name(enum audit_actor_kind k)
{
	return (unsigned)k < IDP_ARRAY_LEN(actor_names) ? actor_names[k] : NULL;
}

int
audit_actor_kind_parse(const char *s, enum audit_actor_kind *out)
{
	int i = name_index(actor_names, IDP_ARRAY_LEN(actor_names), s);

	if (i < 0)
		return IDP_EINVAL;
	*out = (enum audit_actor_kind)i;
	return IDP_OK;
}

/* ---- string fields ------------------------------------------------------ */

enum field_kind {
	FK_TEXT, /* UTF-8, no control characters but tab, LF, CR */
	FK_ID,   /* [A-Za-z0-9._:-] */
	FK_IP,   /* an IPv4 or IPv6 literal */
};

static const struct {
	const char *group; /* the nested object it lives in, NULL for the top level */
	const char *key;
	const char *path; /* group.key, for messages */
	size_t max;
	enum field_kind kind;
} fields[AUDIT_F_COUNT] = {
    [AUDIT_F_ID] = {NULL, "id", "id", 64, FK_ID},
    [AUDIT_F_AGENT_ID] = {NULL, "agent_id", "agent_id", 256, FK_TEXT},
    [AUDIT_F_AGENT_TYPE] = {NULL, "agent_type", "agent_type", 128, FK_TEXT},
    [AUDIT_F_HUMAN_PRINCIPAL] = {NULL, "human_principal", "human_principal", 320, FK_TEXT},
    [AUDIT_F_TASK_ID] = {NULL, "task_id", "task_id", 256, FK_TEXT},
    [AUDIT_F_REQUEST_ID] = {NULL, "request_id", "request_id", 128, FK_TEXT},
    [AUDIT_F_SOURCE_ADDRESS] = {NULL, "source_address", "source_address", 64, FK_IP},
    [AUDIT_F_INSTANCE_ID] = {NULL, "instance_id", "instance_id", 256, FK_TEXT},
    [AUDIT_F_TOOL] = {"action", "tool", "action.tool", 256, FK_TEXT},
    [AUDIT_F_RESULT] = {"action", "result", "action.result", 1024, FK_TEXT},
    [AUDIT_F_TOKEN_ID] = {"authorization", "token_id", "authorization.token_id", 256, FK_TEXT},
    [AUDIT_F_GRANTED_SCOPE] = {"authorization", "granted_scope", "authorization.granted_scope",
                               4096, FK_TEXT},
    [AUDIT_F_POLICY_RULE] = {"authorization", "policy_rule", "authorization.policy_rule", 1024,
                             FK_TEXT},
    [AUDIT_F_STEP] = {"context", "step", "context.step", 1024, FK_TEXT},
    [AUDIT_F_PREVIOUS_STEP] = {"context", "previous_step", "context.previous_step", 1024, FK_TEXT},
    [AUDIT_F_NEXT_STEP] = {"context", "next_step", "context.next_step", 1024, FK_TEXT},
};

#define ACTOR_NAME_MAX 256

json_t *
audit_json_must(json_t *j)
{
	if (j == NULL) {
		log_error("audit: out of memory building JSON");
		abort();
	}
	return j;
}

bool
audit_utf8_valid(const char *s, size_t len)
{
	const unsigned char *p = (const unsigned char *)s, *end = p + len;

	while (p < end) {
		unsigned c = *p, need;
		uint32_t cp, min;

		if (c < 0x80) {
			p++;
			continue;
		} else if ((c & 0xe0) == 0xc0) {
			need = 1, cp = c & 0x1f, min = 0x80;
		} else if ((c & 0xf0) == 0xe0) {
			need = 2, cp = c & 0x0f, min = 0x800;
		} else if ((c & 0xf8) == 0xf0) {
			need = 3, cp = c & 0x07, min = 0x10000;
		} else {
			return false;
		}
		if ((size_t)(end - p) <= need)
			return false;
		for (unsigned i = 1; i <= need; i++) {
			if ((p[i] & 0xc0) != 0x80)
				return false;
			cp = (cp << 6) | (p[i] & 0x3f);
		}
		if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
			return false;
		p += need + 1;
	}
	return true;
}

/*
 * Check a text value against a bound.  Returns 0, or an error with *why set
 * to a phrase for messages.
 */
static int
text_check(const char *s, size_t len, size_t max, const char **why)
{
	if (len > max) {
		*why = "too long";
		return IDP_ETOOBIG;
	}
	if (!audit_utf8_valid(s, len)) {
		*why = "not valid UTF-8";
		return IDP_EINVAL;
	}
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];

		if ((c < 0x20 && c != '\t' && c != '\n' && c != '\r') || c == 0x7f) {
			*why = "contains a control character";
			return IDP_EINVAL;
		}
	}
	return IDP_OK;
}

static int
field_check(enum audit_field f, const char *s, size_t len, const char **why)
{
	int rc = text_check(s, len, fields[f].max, why);

	if (rc != IDP_OK)
		return rc;
	if (fields[f].kind == FK_ID) {
		for (size_t i = 0; i < len; i++) {
			unsigned char c = (unsigned char)s[i];

			if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
			      (c >= '0' && c <= '9') || c == '.' || c == '_' || c == ':' ||
			      c == '-')) {
				*why = "may only hold letters, digits and . _ : -";
				return IDP_EINVAL;
			}
		}
	} else if (fields[f].kind == FK_IP) {
		char ip[65];
		unsigned char addr[16];

		memcpy(ip, s, len);
		ip[len] = '\0';
		if (inet_pton(AF_INET, ip, addr) != 1 && inet_pton(AF_INET6, ip, addr) != 1) {
			*why = "not an IPv4 or IPv6 address";
			return IDP_EINVAL;
		}
	}
	return IDP_OK;
}

/* ---- lifecycle ---------------------------------------------------------- */

struct audit_event *
audit_event_new(enum audit_type type, int64_t ts_ms)
{
	struct audit_event *ev;

	if (!type_ok(type) || (ts_ms != AUDIT_TIME_UNSET && (ts_ms < 0 || ts_ms > AUDIT_TIME_MAX)))
		return NULL;
	ev = idp_xcalloc(1, sizeof(*ev));
	ev->type = type;
	ev->ts_ms = ts_ms;
	ev->severity = types[type].severity;
	return ev;
}

void
audit_event_free(struct audit_event *ev)
{
	if (ev == NULL)
		return;
	for (int i = 0; i < AUDIT_F_COUNT; i++)
		free(ev->str[i]);
	free(ev->actor_name);
	audit_event_chain_clear(ev);
	json_decref(ev->params);
	json_decref(ev->detail);
	free(ev->type_name);
	free(ev->type_category);
	free(ev->stored);
	free(ev);
}

struct audit_event *
audit_event_clone(const struct audit_event *ev)
{
	struct audit_event *c = idp_xcalloc(1, sizeof(*c));

	*c = *ev;
	for (int i = 0; i < AUDIT_F_COUNT; i++)
		c->str[i] = ev->str[i] ? idp_xstrdup(ev->str[i]) : NULL;
	c->actor_name = ev->actor_name ? idp_xstrdup(ev->actor_name) : NULL;
	c->chain = NULL;
	if (ev->chain_len > 0) {
		c->chain = idp_xcalloc(ev->chain_len, sizeof(char *));
		for (size_t i = 0; i < ev->chain_len; i++)
			c->chain[i] = idp_xstrdup(ev->chain[i]);
	}
	c->params = ev->params ? audit_json_must(json_deep_copy(ev->params)) : NULL;
	c->detail = ev->detail ? audit_json_must(json_deep_copy(ev->detail)) : NULL;
	c->type_name = ev->type_name ? idp_xstrdup(ev->type_name) : NULL;
	c->type_category = ev->type_category ? idp_xstrdup(ev->type_category) : NULL;
	c->stored = ev->stored ? idp_xstrndup(ev->stored, ev->stored_len) : NULL;
	return c;
}

/* ---- setters ------------------------------------------------------------ */

int
audit_event_set(struct audit_event *ev, enum audit_field f, const char *value)
{
	const char *why;
	size_t len;
	int rc;

	if ((unsigned)f >= AUDIT_F_COUNT)
		return IDP_EINVAL;
	if (value == NULL || value[0] == '\0') {
		free(ev->str[f]);
		ev->str[f] = NULL;
		return IDP_OK;
	}
	len = strlen(value);
	rc = field_check(f, value, len, &why);
	if (rc != IDP_OK)
		return rc;
	/* Free text a reporter writes may carry a credential copied in. */
	if ((f == AUDIT_F_RESULT || f == AUDIT_F_STEP || f == AUDIT_F_PREVIOUS_STEP ||
	     f == AUDIT_F_NEXT_STEP) &&
	    audit_value_is_secret(value)) {
		value = AUDIT_REDACTED;
		len = strlen(value);
	}
	free(ev->str[f]);
	ev->str[f] = idp_xstrndup(value, len);
	return IDP_OK;
}

int
audit_event_set_time(struct audit_event *ev, int64_t ms)
{
	if (ms != AUDIT_TIME_UNSET && (ms < 0 || ms > AUDIT_TIME_MAX))
		return IDP_EINVAL;
	ev->ts_ms = ms;
	return IDP_OK;
}

int
audit_event_set_severity(struct audit_event *ev, int severity)
{
	if (severity < 0 || severity > AUDIT_SEVERITY_MAX)
		return IDP_EINVAL;
	ev->severity = severity;
	return IDP_OK;
}

void
audit_event_set_outcome(struct audit_event *ev, enum audit_outcome o)
{
	ev->outcome = audit_outcome_name(o) ? o : AUDIT_OUTCOME_NONE;
}

void
audit_event_set_decision(struct audit_event *ev, enum audit_decision d)
{
	ev->decision = audit_decision_name(d) ? d : AUDIT_DECISION_NONE;
}

struct audit_event *
audit_refusal_new(enum audit_actor_kind kind, const char *actor, const char *request_id,
                  const char *peer, const char *endpoint, const char *reason)
{
	struct audit_event *ev = audit_event_new(AUDIT_AUTH_FAILED, AUDIT_TIME_UNSET);

	if (ev == NULL)
		return NULL;
	audit_event_set_outcome(ev, AUDIT_OUTCOME_DENIED);
	if (audit_event_set_actor(ev, kind, actor) != IDP_OK ||
	    audit_event_set(ev, AUDIT_F_REQUEST_ID, request_id) != IDP_OK ||
	    audit_event_set(ev, AUDIT_F_SOURCE_ADDRESS, peer) != IDP_OK ||
	    audit_event_put_detail(ev, "endpoint", json_string(endpoint)) != IDP_OK ||
	    audit_event_put_detail(ev, "reason", json_string(reason)) != IDP_OK) {
		audit_event_free(ev);
		return NULL;
	}
	return ev;
}

int
audit_event_set_actor(struct audit_event *ev, enum audit_actor_kind kind, const char *name)
{
	const char *why;
	char *copy = NULL;
	int rc;

	if (kind != AUDIT_ACTOR_NONE && audit_actor_kind_name(kind) == NULL)
		return IDP_EINVAL;
	if (kind != AUDIT_ACTOR_NONE && name != NULL && name[0] != '\0') {
		rc = text_check(name, strlen(name), ACTOR_NAME_MAX, &why);
		if (rc != IDP_OK)
			return rc;
		copy = idp_xstrdup(name);
	}
	free(ev->actor_name);
	ev->actor_kind = kind;
	ev->actor_name = copy;
	return IDP_OK;
}

int
audit_event_chain_append(struct audit_event *ev, const char *principal)
{
	const char *why;
	int rc;

	if (principal == NULL || principal[0] == '\0')
		return IDP_EINVAL;
	if (ev->chain_len >= AUDIT_CHAIN_MAX)
		return IDP_ETOOBIG;
	rc = text_check(principal, strlen(principal), AUDIT_PRINCIPAL_MAX, &why);
	if (rc != IDP_OK)
		return rc;
	ev->chain = idp_xrealloc(ev->chain, (ev->chain_len + 1) * sizeof(char *));
	ev->chain[ev->chain_len++] = idp_xstrdup(principal);
	return IDP_OK;
}

void
audit_event_chain_clear(struct audit_event *ev)
{
	for (size_t i = 0; i < ev->chain_len; i++)
		free(ev->chain[i]);
	free(ev->chain);
	ev->chain = NULL;
	ev->chain_len = 0;
}

/*
 * Make v (an object nobody else holds; the reference is stolen) the value of
 * *slot, redacted in place and bounded (audit_redact_params); NULL or {}
 * clears.  *slot is untouched on error.
 */
static int
adopt_json_object(json_t **slot, json_t *v)
{
	int rc;

	if (v == NULL || (json_is_object(v) && json_object_size(v) == 0)) {
		json_decref(v);
		json_decref(*slot);
		*slot = NULL;
		return IDP_OK;
	}
	rc = json_is_object(v) ? audit_redact_params(v) : IDP_EINVAL;
	if (rc != IDP_OK) {
		json_decref(v);
		return rc;
	}
	json_decref(*slot);
	*slot = v;
	return IDP_OK;
}

/* The same for an object the caller keeps: a copy is adopted, once v's
 * depth is known to be sane (the copy recurses as deep as v goes). */
static int
set_json_object(json_t **slot, const json_t *v)
{
	if (v != NULL && (!json_is_object(v) ||
	                  audit_json_depth(v, AUDIT_JSON_MAX_DEPTH) > AUDIT_JSON_MAX_DEPTH))
		return IDP_EINVAL;
	return adopt_json_object(slot, v != NULL ? audit_json_must(json_deep_copy(v)) : NULL);
}

int
audit_event_set_params(struct audit_event *ev, const json_t *params)
{
	return set_json_object(&ev->params, params);
}

int
audit_event_set_detail(struct audit_event *ev, const json_t *detail)
{
	return set_json_object(&ev->detail, detail);
}

int
audit_event_take_detail(struct audit_event *ev, json_t *detail)
{
	return adopt_json_object(&ev->detail, detail);
}

int
audit_event_put_detail(struct audit_event *ev, const char *key, json_t *value)
{
	json_t *d;
	int rc;

	if (value == NULL)
		return IDP_EINVAL;
	if (key == NULL || !audit_utf8_valid(key, strlen(key))) {
		json_decref(value);
		return IDP_EINVAL;
	}
	d = ev->detail ? audit_json_must(json_deep_copy(ev->detail))
	               : audit_json_must(json_object());
	if (json_object_set_new(d, key, value) != 0) {
		json_decref(d);
		return IDP_EINVAL;
	}
	rc = set_json_object(&ev->detail, d);
	json_decref(d);
	return rc;
}

/*
 * The (ms << 12 | counter) of the last version-7 id this process made.  The
 * next id takes the clock's millisecond, or one more than the last when the
 * clock has not moved past it (same millisecond, or stepped back): ids from
 * one process strictly increase, and a burst of more than 4096 in one
 * millisecond borrows from the next one, as RFC 9562 section 6.2 allows.
 */
static _Atomic uint64_t uuid7_last;

/* The 60-bit stamp of the next version-7 id at now_ms, updating *last.  Any thread. */
IDP_STATIC uint64_t
audit_uuid7_stamp(_Atomic uint64_t *last_stamp, int64_t now_ms)
{
	uint64_t want = (uint64_t)now_ms << 12, last = atomic_load(last_stamp), next;

	do {
		next = want > last ? want : last + 1;
	} while (!atomic_compare_exchange_weak(last_stamp, &last, next));
	return next;
}

/*
 * A version-7 UUID (RFC 9562): 48 bits of Unix time in milliseconds, the
 * version, 12 bits that order ids within the millisecond, the variant and
 * 62 random bits.  Time-ordered so that the audit_events.event_id index
 * grows at its right edge instead of at a random leaf per row.
 */
int
audit_event_assign_id(struct audit_event *ev)
{
	static const char hex[] = "0123456789abcdef";
	uint64_t stamp = audit_uuid7_stamp(&uuid7_last, idp_now_ms(idp_clock_system()));
	unsigned char b[16];
	char id[37];
	size_t o = 0;

	if (idp_random_id_bytes(b + 8, 8) != IDP_OK)
		return IDP_EINTERNAL;
	for (int i = 0; i < 6; i++)
		b[i] = (unsigned char)(stamp >> (12 + 8 * (5 - i)));
	b[6] = (unsigned char)(0x70 | ((stamp >> 8) & 0x0f)); /* version 7 */
	b[7] = (unsigned char)(stamp & 0xff);
	b[8] = (unsigned char)((b[8] & 0x3f) | 0x80); /* RFC 9562 variant */
	for (int i = 0; i < 16; i++) {
		if (i == 4 || i == 6 || i == 8 || i == 10)
			id[o++] = '-';
		id[o++] = hex[b[i] >> 4];
		id[o++] = hex[b[i] & 0x0f];
	}
	id[o] = '\0';
	return audit_event_set(ev, AUDIT_F_ID, id);
}

/* ---- getters ------------------------------------------------------------ */

enum audit_type
audit_event_type(const struct audit_event *ev)
{
	return ev->type;
}

const char *
audit_event_type_name(const struct audit_event *ev)
{
	return ev->type == AUDIT_TYPE_UNKNOWN ? ev->type_name : types[ev->type].name;
}

const char *
audit_event_type_title(const struct audit_event *ev)
{
	return ev->type == AUDIT_TYPE_UNKNOWN ? ev->type_name : types[ev->type].title;
}

const char *
audit_event_type_category(const struct audit_event *ev)
{
	return ev->type == AUDIT_TYPE_UNKNOWN ? ev->type_category : types[ev->type].category;
}

int64_t
audit_event_time(const struct audit_event *ev)
{
	return ev->ts_ms;
}

int
audit_event_severity(const struct audit_event *ev)
{
	return ev->severity;
}

enum audit_outcome
audit_event_outcome(const struct audit_event *ev)
{
	return ev->outcome;
}

enum audit_decision
audit_event_decision(const struct audit_event *ev)
{
	return ev->decision;
}

enum audit_actor_kind
audit_event_actor_kind(const struct audit_event *ev)
{
	return ev->actor_kind;
}

const char *
audit_event_actor_name(const struct audit_event *ev)
{
	return ev->actor_name;
}

const char *
audit_event_get(const struct audit_event *ev, enum audit_field f)
{
	return (unsigned)f < AUDIT_F_COUNT ? ev->str[f] : NULL;
}

size_t
audit_event_chain_len(const struct audit_event *ev)
{
	return ev->chain_len;
}

const char *
audit_event_chain_at(const struct audit_event *ev, size_t i)
{
	return i < ev->chain_len ? ev->chain[i] : NULL;
}

const json_t *
audit_event_params(const struct audit_event *ev)
{
	return ev->params;
}

const json_t *
audit_event_detail(const struct audit_event *ev)
{
	return ev->detail;
}

const char *
audit_event_detail_str(const struct audit_event *ev, const char *key)
{
	json_t *v;

	if (ev->detail == NULL)
		return NULL;
	v = json_object_get(ev->detail, key);
	return json_is_string(v) ? json_string_value(v) : NULL;
}

/* ---- timestamps --------------------------------------------------------- */

/* Days since 1970-01-01 of a proleptic Gregorian date (month 1-12). */
static int64_t
days_from_civil(int64_t y, int m, int d)
{
	int64_t era, yoe, doy, doe;

	y -= m <= 2;
	era = (y >= 0 ? y : y - 399) / 400;
	yoe = y - era * 400;
	doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
	doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
	return era * 146097 + doe - 719468;
}

static int
digits(const char *s, int n)
{
	int v = 0;

	for (int i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return -1;
		v = v * 10 + (s[i] - '0');
	}
	return v;
}

/* Exactly "YYYY-MM-DDTHH:MM:SS.mmmZ", the form idp_time_format writes. */
static int
parse_time(const char *s, int64_t *ms)
{
	static const int mdays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
	int y, mo, d, h, mi, sec, frac, dim;

	if (strlen(s) != 24 || s[4] != '-' || s[7] != '-' || s[10] != 'T' || s[13] != ':' ||
	    s[16] != ':' || s[19] != '.' || s[23] != 'Z')
		return IDP_EINVAL;
	y = digits(s, 4), mo = digits(s + 5, 2), d = digits(s + 8, 2);
	h = digits(s + 11, 2), mi = digits(s + 14, 2), sec = digits(s + 17, 2);
	frac = digits(s + 20, 3);
	if (y < 1970 || mo < 1 || mo > 12 || d < 1 || h < 0 || h > 23 || mi < 0 || mi > 59 ||
	    sec < 0 || sec > 59 || frac < 0)
		return IDP_EINVAL;
	dim = mdays[mo - 1];
	if (mo == 2 && ((y % 4 == 0 && y % 100 != 0) || y % 400 == 0))
		dim = 29;
	if (d > dim)
		return IDP_EINVAL;
	*ms = ((days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + sec) * 1000) + frac;
	return IDP_OK;
}

/* ---- JSON out ----------------------------------------------------------- */

static void
put(json_t *o, const char *key, json_t *v)
{
	if (json_object_set_new(o, key, audit_json_must(v)) != 0)
		audit_json_must(NULL);
}

/* The nested object named group inside o, created on first use. */
static json_t *
group(json_t *o, const char *name)
{
	json_t *g = json_object_get(o, name);

	if (g == NULL) {
		g = audit_json_must(json_object());
		put(o, name, g);
	}
	return g;
}

json_t *
audit_event_to_json(const struct audit_event *ev)
{
	json_t *o = audit_json_must(json_object());
	char ts[32];

	put(o, "type", json_string(audit_event_type_name(ev)));
	put(o, "severity", json_integer(ev->severity));
	if (ev->ts_ms != AUDIT_TIME_UNSET) {
		idp_time_format(ev->ts_ms, ts);
		put(o, "timestamp", json_string(ts));
	}
	if (ev->outcome != AUDIT_OUTCOME_NONE)
		put(o, "outcome", json_string(outcome_names[ev->outcome]));
	for (int f = 0; f < AUDIT_F_COUNT; f++) {
		if (ev->str[f] == NULL)
			continue;
		put(fields[f].group ? group(o, fields[f].group) : o, fields[f].key,
		    json_string(ev->str[f]));
	}
	if (ev->actor_kind != AUDIT_ACTOR_NONE) {
		json_t *a = group(o, "actor");

		put(a, "kind", json_string(actor_names[ev->actor_kind]));
		if (ev->actor_name != NULL)
			put(a, "name", json_string(ev->actor_name));
	}
	if (ev->chain_len > 0) {
		json_t *c = audit_json_must(json_array());

		for (size_t i = 0; i < ev->chain_len; i++)
			if (json_array_append_new(c, audit_json_must(json_string(ev->chain[i]))))
				audit_json_must(NULL);
		put(o, "delegation_chain", c);
	}
	if (ev->params != NULL)
		put(group(o, "action"), "parameters", json_deep_copy(ev->params));
	if (ev->decision != AUDIT_DECISION_NONE)
		put(group(o, "authorization"), "policy_decision",
		    json_string(decision_names[ev->decision]));
	if (ev->detail != NULL)
		put(o, "detail", json_deep_copy(ev->detail));
	return o;
}

/*
 * The canonical form is written directly rather than by building the tree
 * of audit_event_to_json and serializing it with sorted keys: it is the
 * costliest step of every emit.  The bytes are the same (a unit test holds
 * the two to each other); each level's members are collected, sorted by key
 * and written.
 */
enum centry_kind { CE_STR, CE_INT, CE_JSON, CE_CHAIN, CE_GROUP };

struct centry {
	const char *key;
	enum centry_kind kind;
	const char *s;
	int64_t i;
	const json_t *j;
	char *const *chain;       /* CE_CHAIN, i strings */
	const struct centry *sub; /* CE_GROUP */
	size_t n_sub;
};

/* Members of one nested object ("actor", "action", ...). */
struct cgroup {
	const char *name;
	struct centry e[8];
	size_t n;
};

static int
centry_cmp(const void *a, const void *b)
{
	return strcmp(((const struct centry *)a)->key, ((const struct centry *)b)->key);
}

static int
canon_level(struct idp_buf *b, struct centry *e, size_t n)
{
	int rc = idp_buf_putc(b, '{');

	qsort(e, n, sizeof(*e), centry_cmp);
	for (size_t k = 0; rc == IDP_OK && k < n; k++) {
		rc = idp_json_put_key(b, e[k].key, k == 0);
		if (rc != IDP_OK)
			break;
		switch (e[k].kind) {
		case CE_STR:
			rc = idp_json_put_str(b, e[k].s);
			break;
		case CE_INT:
			rc = idp_json_put_int(b, e[k].i);
			break;
		case CE_JSON:
			rc = idp_json_put_value(b, e[k].j, true);
			break;
		case CE_CHAIN:
			rc = idp_buf_putc(b, '[');
			for (int64_t c = 0; rc == IDP_OK && c < e[k].i; c++) {
				if (c > 0)
					rc = idp_buf_putc(b, ',');
				if (rc == IDP_OK)
					rc = idp_json_put_str(b, e[k].chain[c]);
			}
			if (rc == IDP_OK)
				rc = idp_buf_putc(b, ']');
			break;
		case CE_GROUP:
			rc = canon_level(b, (struct centry *)(uintptr_t)e[k].sub, e[k].n_sub);
			break;
		}
	}
	return rc == IDP_OK ? idp_buf_putc(b, '}') : rc;
}

static struct centry *
cgroup_add(struct cgroup *groups, size_t *n_groups, const char *name)
{
	size_t g = 0;

	while (g < *n_groups && strcmp(groups[g].name, name) != 0)
		g++;
	if (g == *n_groups) {
		groups[g].name = name;
		groups[g].n = 0;
		(*n_groups)++;
	}
	return &groups[g].e[groups[g].n++];
}

char *
audit_event_canonical(const struct audit_event *ev, size_t *len)
{
	struct centry top[AUDIT_F_COUNT + 12];
	struct cgroup groups[6];
	size_t n = 0, n_groups = 0;
	struct idp_buf b;
	char ts[32];
	char *s;

	if (ev->stored != NULL) {
		if (len != NULL)
			*len = ev->stored_len;
		return idp_xstrndup(ev->stored, ev->stored_len);
	}
	top[n++] = (struct centry){.key = "type", .kind = CE_STR, .s = audit_event_type_name(ev)};
	top[n++] = (struct centry){.key = "severity", .kind = CE_INT, .i = ev->severity};
	if (ev->ts_ms != AUDIT_TIME_UNSET) {
		idp_time_format(ev->ts_ms, ts);
		top[n++] = (struct centry){.key = "timestamp", .kind = CE_STR, .s = ts};
	}
	if (ev->outcome != AUDIT_OUTCOME_NONE)
		top[n++] = (struct centry){
		    .key = "outcome", .kind = CE_STR, .s = outcome_names[ev->outcome]};
	for (int f = 0; f < AUDIT_F_COUNT; f++) {
		struct centry e = {.key = fields[f].key, .kind = CE_STR, .s = ev->str[f]};

		if (ev->str[f] == NULL)
			continue;
		if (fields[f].group != NULL)
			*cgroup_add(groups, &n_groups, fields[f].group) = e;
		else
			top[n++] = e;
	}
	if (ev->actor_kind != AUDIT_ACTOR_NONE) {
		*cgroup_add(groups, &n_groups, "actor") = (struct centry){
		    .key = "kind", .kind = CE_STR, .s = actor_names[ev->actor_kind]};
		if (ev->actor_name != NULL)
			*cgroup_add(groups, &n_groups, "actor") =
			    (struct centry){.key = "name", .kind = CE_STR, .s = ev->actor_name};
	}
	if (ev->chain_len > 0)
		top[n++] = (struct centry){.key = "delegation_chain",
		                           .kind = CE_CHAIN,
		                           .chain = ev->chain,
		                           .i = (int64_t)ev->chain_len};
	if (ev->params != NULL)
		*cgroup_add(groups, &n_groups, "action") =
		    (struct centry){.key = "parameters", .kind = CE_JSON, .j = ev->params};
	if (ev->decision != AUDIT_DECISION_NONE)
		*cgroup_add(groups, &n_groups, "authorization") = (struct centry){
		    .key = "policy_decision", .kind = CE_STR, .s = decision_names[ev->decision]};
	if (ev->detail != NULL)
		top[n++] = (struct centry){.key = "detail", .kind = CE_JSON, .j = ev->detail};
	for (size_t g = 0; g < n_groups; g++)
		top[n++] = (struct centry){.key = groups[g].name,
		                           .kind = CE_GROUP,
		                           .sub = groups[g].e,
		                           .n_sub = groups[g].n};
	idp_buf_init(&b, 0);
	if (idp_buf_reserve(&b, 1000) != IDP_OK || canon_level(&b, top, n) != IDP_OK) {
		/* Only a bug (a value that bypassed the setters' checks) gets here. */
		log_error("audit: bug: an event cannot be written in canonical form");
		abort();
	}
	s = idp_buf_take(&b, len);
	return s;
}

/* ---- JSON in ------------------------------------------------------------ */

struct parse_state {
	struct idp_diag *diag;
	int rc;      /* the first error, 0 while none */
	bool stored; /* audit_event_from_stored: members not known here pass */
};

static void fail(struct parse_state *st, int rc, const char *fmt, ...) IDP_PRINTF(3, 4);

static void
fail(struct parse_state *st, int rc, const char *fmt, ...)
{
	va_list ap;

	if (st->rc == IDP_OK)
		st->rc = rc;
	if (st->diag == NULL)
		return;
	va_start(ap, fmt);
	idp_diag_vadd(st->diag, fmt, ap);
	va_end(ap);
}

/* A client-chosen key, shortened and made printable, for a message. */
static void
printable(const char *s, char out[68])
{
	size_t i;

	for (i = 0; s[i] != '\0' && i < 64; i++)
		out[i] = (s[i] >= 0x20 && s[i] < 0x7f) ? s[i] : '?';
	if (s[i] != '\0') {
		out[i++] = '.';
		out[i++] = '.';
	}
	out[i] = '\0';
}

static bool
in_list(const char *key, const char *const *list, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (strcmp(key, list[i]) == 0)
			return true;
	return false;
}

static void
check_keys(struct parse_state *st, const json_t *o, const char *path, const char *const *allowed,
           size_t n)
{
	const char *key;
	json_t *v;
	char shown[68];

	if (st->stored)
		return;
	json_object_foreach((json_t *)o, key, v)
	{
		if (!in_list(key, allowed, n)) {
			printable(key, shown);
			fail(st, IDP_EINVAL, "%s%s%s: unknown key", path, *path ? "." : "", shown);
		}
	}
}

static const char *const top_keys[] = {
    "id",          "timestamp",        "type",    "severity",      "outcome", "agent_id",
    "agent_type",  "human_principal",  "task_id", "request_id",    "actor",   "source_address",
    "instance_id", "delegation_chain", "action",  "authorization", "context", "detail",
};
static const char *const action_keys[] = {"tool", "parameters", "result"};
static const char *const authz_keys[] = {"token_id", "granted_scope", "policy_decision",
                                         "policy_rule"};
static const char *const context_keys[] = {"step", "previous_step", "next_step"};
static const char *const actor_keys[] = {"kind", "name"};

/* The member key of the nested object grp (NULL: the top level); NULL if either is absent. */
static const json_t *
member(const json_t *top, const char *grp, const char *key)
{
	const json_t *g = grp ? json_object_get(top, grp) : top;

	/* A group that is not an object is reported once, by parse_group. */
	return json_is_object(g) ? json_object_get(g, key) : NULL;
}

static void
parse_strings(struct parse_state *st, const json_t *j, struct audit_event *ev)
{
	for (int f = 0; f < AUDIT_F_COUNT; f++) {
		const json_t *v = member(j, fields[f].group, fields[f].key);
		const char *why;
		int rc;

		if (v == NULL)
			continue;
		if (!json_is_string(v)) {
			fail(st, IDP_EINVAL, "%s: expected a string", fields[f].path);
			continue;
		}
		if (json_string_length(v) == 0)
			continue;
		rc = field_check(f, json_string_value(v), json_string_length(v), &why);
		if (rc == IDP_ETOOBIG)
			fail(st, rc, "%s: longer than %zu bytes", fields[f].path, fields[f].max);
		else if (rc != IDP_OK)
			fail(st, rc, "%s: %s", fields[f].path, why);
		else if (audit_event_set(ev, (enum audit_field)f, json_string_value(v)) != IDP_OK)
			fail(st, IDP_EINTERNAL, "%s: rejected", fields[f].path);
	}
}

static void
parse_group(struct parse_state *st, const json_t *j, const char *name, const char *const *keys,
            size_t n)
{
	const json_t *g = json_object_get(j, name);

	if (g == NULL)
		return;
	if (!json_is_object(g)) {
		fail(st, IDP_EINVAL, "%s: expected an object", name);
		return;
	}
	check_keys(st, g, name, keys, n);
}

static void
parse_object_field(struct parse_state *st, const json_t *v, const char *path,
                   int (*set)(struct audit_event *, const json_t *), struct audit_event *ev)
{
	int rc;

	if (v == NULL)
		return;
	if (!json_is_object(v)) {
		fail(st, IDP_EINVAL, "%s: expected an object", path);
		return;
	}
	rc = set(ev, v);
	if (rc == IDP_ETOOBIG)
		fail(st, rc, "%s: larger than %d bytes", path, AUDIT_JSON_MAX_BYTES);
	else if (rc != IDP_OK)
		fail(st, rc, "%s: nested deeper than %d levels", path, AUDIT_JSON_MAX_DEPTH);
}

static void
parse_enums(struct parse_state *st, const json_t *j, struct audit_event *ev)
{
	const json_t *v;
	const json_t *authz = json_object_get(j, "authorization");

	if ((v = json_object_get(j, "timestamp")) != NULL) {
		int64_t ms;

		if (!json_is_string(v) || parse_time(json_string_value(v), &ms) != IDP_OK ||
		    audit_event_set_time(ev, ms) != IDP_OK)
			fail(st, IDP_EINVAL, "timestamp: expected \"YYYY-MM-DDThh:mm:ss.sssZ\"");
	}
	if ((v = json_object_get(j, "severity")) != NULL) {
		if (!json_is_integer(v) || json_integer_value(v) < 0 ||
		    json_integer_value(v) > AUDIT_SEVERITY_MAX)
			fail(st, IDP_EINVAL, "severity: expected an integer from 0 to %d",
			     AUDIT_SEVERITY_MAX);
		else
			ev->severity = (int)json_integer_value(v);
	}
	if ((v = json_object_get(j, "outcome")) != NULL) {
		enum audit_outcome o;

		if (!json_is_string(v) || audit_outcome_parse(json_string_value(v), &o) != IDP_OK)
			fail(st, IDP_EINVAL,
			     "outcome: expected success, failure, denied, pending or error");
		else
			ev->outcome = o;
	}
	if (json_is_object(authz) && (v = json_object_get(authz, "policy_decision")) != NULL) {
		enum audit_decision d;

		if (!json_is_string(v) || audit_decision_parse(json_string_value(v), &d) != IDP_OK)
			fail(st, IDP_EINVAL,
			     "authorization.policy_decision: expected ALLOW, DENY, "
			     "REQUIRE_APPROVAL or ALLOW_WITH_CONDITIONS");
		else
			ev->decision = d;
	}
}

static void
parse_actor(struct parse_state *st, const json_t *j, struct audit_event *ev)
{
	const json_t *a = json_object_get(j, "actor"), *kind, *name;
	enum audit_actor_kind k;
	int rc;

	if (a == NULL)
		return;
	if (!json_is_object(a)) {
		fail(st, IDP_EINVAL, "actor: expected an object");
		return;
	}
	check_keys(st, a, "actor", actor_keys, IDP_ARRAY_LEN(actor_keys));
	kind = json_object_get(a, "kind");
	name = json_object_get(a, "name");
	if (!json_is_string(kind) ||
	    audit_actor_kind_parse(json_string_value(kind), &k) != IDP_OK) {
		fail(st, IDP_EINVAL, "actor.kind: expected operator, agent, human or system");
		return;
	}
	if (name != NULL && !json_is_string(name)) {
		fail(st, IDP_EINVAL, "actor.name: expected a string");
		return;
	}
	rc = audit_event_set_actor(ev, k, name ? json_string_value(name) : NULL);
	if (rc == IDP_ETOOBIG)
		fail(st, rc, "actor.name: longer than %d bytes", ACTOR_NAME_MAX);
	else if (rc != IDP_OK)
		fail(st, rc, "actor.name: not valid UTF-8 or contains a control character");
}

static void
parse_chain(struct parse_state *st, const json_t *j, struct audit_event *ev)
{
	const json_t *c = json_object_get(j, "delegation_chain"), *v;
	size_t i;

	if (c == NULL)
		return;
	if (!json_is_array(c)) {
		fail(st, IDP_EINVAL, "delegation_chain: expected an array of strings");
		return;
	}
	if (json_array_size(c) > AUDIT_CHAIN_MAX) {
		fail(st, IDP_ETOOBIG, "delegation_chain: more than %d principals", AUDIT_CHAIN_MAX);
		return;
	}
	json_array_foreach(c, i, v)
	{
		int rc;

		if (!json_is_string(v)) {
			fail(st, IDP_EINVAL, "delegation_chain[%zu]: expected a string", i);
			continue;
		}
		/* CEF and LEEF join the chain with " -> ": a principal holding
		 * it would add a hop the chain never had (rows already stored
		 * pass, as they were accepted). */
		if (!st->stored && strstr(json_string_value(v), "->") != NULL) {
			fail(st, IDP_EINVAL,
			     "delegation_chain[%zu]: may not contain \"->\" (the chain's separator "
			     "in "
			     "CEF and LEEF)",
			     i);
			continue;
		}
		rc = audit_event_chain_append(ev, json_string_value(v));
		if (rc == IDP_ETOOBIG)
			fail(st, rc, "delegation_chain[%zu]: longer than %d bytes", i,
			     AUDIT_PRINCIPAL_MAX);
		else if (rc != IDP_OK)
			fail(st, rc,
			     "delegation_chain[%zu]: empty, not valid UTF-8 or contains a "
			     "control character",
			     i);
	}
}

/*
 * The shape of every type name idpd has used: a lower-case letter, then
 * lower-case letters, digits, '_' and '.'.  A name from a newer version is
 * held to it, so what a sink puts in a CEF or LEEF header stays plain.
 */
static bool
type_name_plain(const char *s)
{
	size_t n = strlen(s);

	if (n == 0 || n > 64 || s[0] < 'a' || s[0] > 'z')
		return false;
	for (size_t i = 1; i < n; i++) {
		if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '_' ||
		      s[i] == '.'))
			return false;
	}
	return true;
}

/* The severity of an event of a type unknown here, unless the row says (every version's rows do).
 */
#define UNKNOWN_TYPE_SEVERITY 5

static int
parse_event(struct parse_state *st, const json_t *j, struct audit_event **out)
{
	struct audit_event *ev;
	enum audit_type type = AUDIT_TOOL_INVOCATION;
	const json_t *v, *action;
	const char *unknown = NULL;

	*out = NULL;
	if (!json_is_object(j)) {
		fail(st, IDP_EINVAL, "event: expected a JSON object");
		return st->rc;
	}
	check_keys(st, j, "", top_keys, IDP_ARRAY_LEN(top_keys));
	v = json_object_get(j, "type");
	if (v == NULL)
		fail(st, IDP_EINVAL, "type: missing");
	else if (!json_is_string(v))
		fail(st, IDP_EINVAL, "type: not a known event type");
	else if (audit_type_parse(json_string_value(v), &type) != IDP_OK) {
		if (st->stored && type_name_plain(json_string_value(v)))
			unknown = json_string_value(v);
		else
			fail(st, IDP_EINVAL, "type: not a known event type");
	}
	/* Go on with a stand-in type so that every other problem is reported too. */
	ev = audit_event_new(type, AUDIT_TIME_UNSET);
	if (unknown != NULL) {
		ev->type = AUDIT_TYPE_UNKNOWN;
		ev->type_name = idp_xstrdup(unknown);
		ev->type_category = idp_xstrndup(unknown, strcspn(unknown, "."));
		ev->severity = UNKNOWN_TYPE_SEVERITY;
	}
	parse_group(st, j, "action", action_keys, IDP_ARRAY_LEN(action_keys));
	parse_group(st, j, "authorization", authz_keys, IDP_ARRAY_LEN(authz_keys));
	parse_group(st, j, "context", context_keys, IDP_ARRAY_LEN(context_keys));
	parse_strings(st, j, ev);
	parse_enums(st, j, ev);
	parse_actor(st, j, ev);
	parse_chain(st, j, ev);
	action = json_object_get(j, "action");
	if (json_is_object(action))
		parse_object_field(st, json_object_get(action, "parameters"), "action.parameters",
		                   audit_event_set_params, ev);
	parse_object_field(st, json_object_get(j, "detail"), "detail", audit_event_set_detail, ev);
	if (st->rc != IDP_OK) {
		audit_event_free(ev);
		return st->rc;
	}
	*out = ev;
	return IDP_OK;
}

int
audit_event_from_jsonv(const json_t *j, struct audit_event **out, struct idp_diag *diag)
{
	struct parse_state st = {diag, IDP_OK, false};

	return parse_event(&st, j, out);
}

/* text as JSON into *j, under the size bound; IDP_OK or st's error. */
static int
load_text(struct parse_state *st, const char *text, size_t len, json_t **j)
{
	json_error_t err;
	char shown[68];

	*j = NULL;
	if (len > AUDIT_EVENT_JSON_MAX) {
		fail(st, IDP_ETOOBIG, "event: larger than %d bytes", AUDIT_EVENT_JSON_MAX);
		return st->rc;
	}
	/* JSON has no raw NUL, yet jansson accepted one right after a number
	 * (a fuzzer found it), and a copy of the text would stop there. */
	if (memchr(text, '\0', len) != NULL) {
		fail(st, IDP_EINVAL, "event: contains a NUL byte");
		return st->rc;
	}
	*j = json_loadb(text, len, JSON_REJECT_DUPLICATES, &err);
	if (*j == NULL) {
		printable(err.text, shown);
		fail(st, IDP_EINVAL, "event: line %d, column %d: %s", err.line, err.column, shown);
		return st->rc;
	}
	return IDP_OK;
}

int
audit_event_from_json(const char *text, size_t len, struct audit_event **out, struct idp_diag *diag)
{
	struct parse_state st = {diag, IDP_OK, false};
	json_t *j;
	int rc;

	*out = NULL;
	if (load_text(&st, text, len, &j) != IDP_OK)
		return st.rc;
	rc = parse_event(&st, j, out);
	json_decref(j);
	return rc;
}

/* Whether a (the member as parsed) is what ev kept of it: NULL and {} are both "none". */
static bool
same_object(const json_t *a, const json_t *kept)
{
	if (kept == NULL)
		return a == NULL || (json_is_object(a) && json_object_size(a) == 0);
	return a != NULL && json_equal(a, kept);
}

/*
 * Put ev's parameters and detail, which the parse redacted, into j where
 * they differ from what j has; whether any did.
 */
static bool
redact_stored(json_t *j, const struct audit_event *ev)
{
	json_t *action = json_object_get(j, "action");
	json_t *params = json_is_object(action) ? json_object_get(action, "parameters") : NULL;
	bool changed = false;

	if (!same_object(params, ev->params)) {
		json_object_set(action, "parameters", ev->params);
		changed = true;
	}
	if (!same_object(json_object_get(j, "detail"), ev->detail)) {
		json_object_set(j, "detail", ev->detail);
		changed = true;
	}
	/* The free text the setters redact (rows older than that redaction). */
	{
		static const enum audit_field text[] = {AUDIT_F_RESULT, AUDIT_F_STEP,
		                                        AUDIT_F_PREVIOUS_STEP, AUDIT_F_NEXT_STEP};

		for (size_t i = 0; i < IDP_ARRAY_LEN(text); i++) {
			json_t *group = json_object_get(j, fields[text[i]].group);
			const char *was =
			    json_string_value(json_object_get(group, fields[text[i]].key));

			if (was != NULL && ev->str[text[i]] != NULL &&
			    strcmp(was, ev->str[text[i]]) != 0) {
				json_object_set_new(group, fields[text[i]].key,
				                    json_string(ev->str[text[i]]));
				changed = true;
			}
		}
	}
	return changed;
}

bool
audit_event_is_stored(const struct audit_event *ev)
{
	return ev->stored != NULL;
}

int
audit_event_from_stored(const char *text, size_t len, struct audit_event **out,
                        struct idp_diag *diag)
{
	struct parse_state st = {diag, IDP_OK, true};
	json_t *j;
	int rc;

	*out = NULL;
	if (load_text(&st, text, len, &j) != IDP_OK)
		return st.rc;
	rc = parse_event(&st, j, out);
	if (rc == IDP_OK) {
		/* Every idpd writes a body without line breaks (its canonical
		 * form, which the chain hashes), and redacts it on the way in.
		 * One written otherwise, by hand say, is made compact, or it
		 * would break a sink's lines, and redacted as this version
		 * would, or a JSON sink would ship what CEF and LEEF hide. */
		bool redacted = redact_stored(j, *out);

		if (!redacted && memchr(text, '\n', len) == NULL &&
		    memchr(text, '\r', len) == NULL) {
			(*out)->stored = idp_xstrndup(text, len);
			(*out)->stored_len = len;
		} else {
			(*out)->stored = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER);
			if ((*out)->stored == NULL) {
				log_error("audit: out of memory serialising an event");
				abort();
			}
			(*out)->stored_len = strlen((*out)->stored);
		}
	}
	json_decref(j);
	return rc;
}

/* ---- hash chain --------------------------------------------------------- */

const uint8_t audit_genesis_hash[AUDIT_HASH_LEN] = {0};

int
audit_chain_hash(const uint8_t prev[AUDIT_HASH_LEN], const char *canonical, size_t len,
                 uint8_t out[AUDIT_HASH_LEN])
{
	return idp_sha256(prev, AUDIT_HASH_LEN, canonical, len, out);
}

void
audit_hash_to_hex(const uint8_t h[AUDIT_HASH_LEN], char out[AUDIT_HASH_HEX_LEN + 1])
{
	static const char hex[] = "0123456789abcdef";

	for (int i = 0; i < AUDIT_HASH_LEN; i++) {
		out[2 * i] = hex[h[i] >> 4];
		out[2 * i + 1] = hex[h[i] & 0x0f];
	}
	out[AUDIT_HASH_HEX_LEN] = '\0';
}

static int
hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

int
audit_hash_from_hex(const char *hex, uint8_t out[AUDIT_HASH_LEN])
{
	uint8_t tmp[AUDIT_HASH_LEN];

	if (strlen(hex) != AUDIT_HASH_HEX_LEN)
		return IDP_EINVAL;
	for (int i = 0; i < AUDIT_HASH_LEN; i++) {
		int hi = hexval(hex[2 * i]), lo = hexval(hex[2 * i + 1]);

		if (hi < 0 || lo < 0)
			return IDP_EINVAL;
		tmp[i] = (uint8_t)(hi << 4 | lo);
	}
	memcpy(out, tmp, sizeof(tmp));
	return IDP_OK;
}

json_t *
audit_json_clip(const char *s, size_t max)
{
	size_t n, cut;
	char *t;
	json_t *v;

	if (s == NULL)
		return NULL;
	n = strlen(s);
	if (n <= max)
		return json_stringn(s, n);
	cut = max;
	while (cut > 0 && ((unsigned char)s[cut] & 0xc0) == 0x80)
		cut--; /* not inside a character */
	t = idp_xmalloc(cut + 48);
	memcpy(t, s, cut);
	snprintf(t + cut, 48, "...[%zu more bytes]", n - cut);
	v = json_string(t);
	free(t);
	return v;
}
