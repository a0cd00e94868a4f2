/*
 * format.c - one audit event -> one line of JSON, CEF:0 or LEEF:2.0.
 *
 * Each formatter is a pure function of the event and idpd's version.  The
 * key mapping is documented in docs/audit.md; the escaping rules are:
 *
 *   CEF header     \ -> \\   | -> \|
 *   CEF extension  \ -> \\   = -> \=   LF -> \n   CR -> \r
 *   LEEF header    \ -> \\   | -> \|
 *   LEEF attribute \ -> \\   = -> \=   LF -> \n   CR -> \r   tab -> \t
 *
 * Any other control character (which validated fields never hold, but
 * detail values may) becomes a space, and a CR or LF in a header too, so a
 * line never breaks.  Other bytes, UTF-8 included, pass unchanged.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "idpd/clock.h"

#include "audit_int.h"

#define VENDOR "idpd"
#define PRODUCT "idpd"
/* Java SimpleDateFormat for idp_time_format's output; X reads the 'Z'. */
#define LEEF_TIME_FORMAT "yyyy-MM-dd'T'HH:mm:ss.SSSX"

static const char *const format_names[] = {"json", "cef", "leef"};

const char *
audit_format_name(enum audit_format f)
{
	return (unsigned)f < IDP_ARRAY_LEN(format_names) ? format_names[f] : NULL;
}

int
audit_format_parse(const char *s, enum audit_format *out)
{
	for (size_t i = 0; i < IDP_ARRAY_LEN(format_names); i++) {
		if (strcmp(s, format_names[i]) == 0) {
			*out = (enum audit_format)i;
			return IDP_OK;
		}
	}
	return IDP_EINVAL;
}

enum esc {
	ESC_HEADER,     /* CEF and LEEF headers */
	ESC_CEF_VALUE,  /* CEF extension values */
	ESC_LEEF_VALUE, /* LEEF attribute values */
};

/* The escape for byte c in mode, or NULL if c passes as is. */
static const char *
escape_of(unsigned char c, enum esc mode)
{
	switch (c) {
	case '\\':
		return "\\\\";
	case '|':
		return mode == ESC_HEADER ? "\\|" : NULL;
	case '=':
		return mode == ESC_HEADER ? NULL : "\\=";
	case '\n':
		return mode == ESC_HEADER ? " " : "\\n";
	case '\r':
		return mode == ESC_HEADER ? " " : "\\r";
	case '\t':
		return mode == ESC_LEEF_VALUE ? "\\t" : mode == ESC_HEADER ? " " : NULL;
	}
	if (c < 0x20 || c == 0x7f)
		return " ";
	return NULL;
}

static int
put_escaped(struct idp_buf *b, const char *s, enum esc mode)
{
	const char *run = s;
	int rc = IDP_OK;

	for (; *s != '\0' && rc == IDP_OK; s++) {
		const char *e = escape_of((unsigned char)*s, mode);

		if (e == NULL)
			continue;
		rc = idp_buf_append(b, run, (size_t)(s - run));
		if (rc == IDP_OK)
			rc = idp_buf_puts(b, e);
		run = s + 1;
	}
	if (rc == IDP_OK)
		rc = idp_buf_append(b, run, (size_t)(s - run));
	return rc;
}

/* A list of key=value pairs, sep between pairs; absent values are skipped. */
struct pairs {
	struct idp_buf *b;
	enum esc mode;
	char sep;
	bool first;
	int rc;
};

static void
pair(struct pairs *p, const char *key, const char *value)
{
	if (value == NULL || value[0] == '\0' || p->rc != IDP_OK)
		return;
	if (!p->first)
		p->rc = idp_buf_putc(p->b, p->sep);
	p->first = false;
	if (p->rc == IDP_OK)
		p->rc = idp_buf_printf(p->b, "%s=", key);
	if (p->rc == IDP_OK)
		p->rc = put_escaped(p->b, value, p->mode);
}

/* A CEF custom string with its label, cs<n>Label=label cs<n>=value. */
static void
labelled(struct pairs *p, const char *key, const char *label, const char *value)
{
	char lkey[32];

	if (value == NULL || value[0] == '\0')
		return;
	snprintf(lkey, sizeof(lkey), "%sLabel", key);
	pair(p, lkey, label);
	pair(p, key, value);
}

/* The delegation chain as "alice -> planner -> inventory", or NULL; caller frees. */
static char *
chain_text(const struct audit_event *ev)
{
	struct idp_buf b;

	if (ev->chain_len == 0)
		return NULL;
	idp_buf_init(&b, 0);
	for (size_t i = 0; i < ev->chain_len; i++) {
		/* Unbounded buffer: only OOM could fail, and that aborts. */
		if ((i > 0 && idp_buf_puts(&b, " -> ") != IDP_OK) ||
		    idp_buf_puts(&b, ev->chain[i]) != IDP_OK)
			abort();
	}
	return idp_buf_take(&b, NULL);
}

/* "kind:name", "kind", or NULL; caller frees. */
static char *
actor_text(const struct audit_event *ev)
{
	const char *kind = audit_actor_kind_name(ev->actor_kind);

	if (kind == NULL)
		return NULL;
	if (ev->actor_name == NULL)
		return idp_xstrdup(kind);
	return idp_xasprintf("%s:%s", kind, ev->actor_name);
}

static int
header_field(struct idp_buf *b, const char *s)
{
	int rc = put_escaped(b, s, ESC_HEADER);

	return rc == IDP_OK ? idp_buf_putc(b, '|') : rc;
}

static int
format_cef(const struct audit_event *ev, const char *version, struct idp_buf *b)
{
	struct pairs p = {b, ESC_CEF_VALUE, ' ', true, IDP_OK};
	const char *rule = audit_event_detail_str(ev, "rule");
	const char *src = ev->str[AUDIT_F_SOURCE_ADDRESS];
	char *chain = chain_text(ev), *actor = actor_text(ev), *name, num[24];
	int rc;

	if (ev->type == AUDIT_ALERT && rule != NULL)
		name = idp_xasprintf("%s: %s", audit_event_type_title(ev), rule);
	else
		name = idp_xstrdup(audit_event_type_title(ev));
	rc = idp_buf_puts(b, "CEF:0|");
	if (rc == IDP_OK)
		rc = header_field(b, VENDOR);
	if (rc == IDP_OK)
		rc = header_field(b, PRODUCT);
	if (rc == IDP_OK)
		rc = header_field(b, version);
	if (rc == IDP_OK)
		rc = header_field(b, audit_event_type_name(ev));
	if (rc == IDP_OK)
		rc = header_field(b, name);
	if (rc == IDP_OK)
		rc = idp_buf_printf(b, "%d|", ev->severity);
	p.rc = rc;
	if (ev->ts_ms != AUDIT_TIME_UNSET) {
		snprintf(num, sizeof(num), "%lld", (long long)ev->ts_ms);
		pair(&p, "rt", num);
	}
	pair(&p, "externalId", ev->str[AUDIT_F_ID]);
	pair(&p, "deviceExternalId", ev->str[AUDIT_F_INSTANCE_ID]);
	pair(&p, "cat", audit_event_type_category(ev));
	pair(&p, "act", ev->str[AUDIT_F_TOOL]);
	pair(&p, "outcome", audit_outcome_name(ev->outcome));
	pair(&p, "suser", ev->str[AUDIT_F_HUMAN_PRINCIPAL]);
	pair(&p, "duser", ev->str[AUDIT_F_AGENT_ID]);
	pair(&p, "suid", actor);
	/* CEF's src is an IPv4 address; an IPv6 one has its own key. */
	if (src != NULL && strchr(src, ':') != NULL)
		labelled(&p, "c6a2", "sourceIPv6Address", src);
	else
		pair(&p, "src", src);
	pair(&p, "msg", ev->str[AUDIT_F_RESULT]);
	pair(&p, "reason", audit_event_detail_str(ev, "reason"));
	pair(&p, "destinationServiceName", audit_event_detail_str(ev, "audience"));
	labelled(&p, "cs1", "taskId", ev->str[AUDIT_F_TASK_ID]);
	labelled(&p, "cs2", "delegationChain", chain);
	labelled(&p, "cs3", "policyRule", ev->str[AUDIT_F_POLICY_RULE]);
	labelled(&p, "cs4", "tokenId", ev->str[AUDIT_F_TOKEN_ID]);
	labelled(&p, "cs5", "grantedScope", ev->str[AUDIT_F_GRANTED_SCOPE]);
	labelled(&p, "cs6", "policyDecision", audit_decision_name(ev->decision));
	labelled(&p, "flexString1", "agentType", ev->str[AUDIT_F_AGENT_TYPE]);
	labelled(&p, "flexString2", "requestId", ev->str[AUDIT_F_REQUEST_ID]);
	free(name);
	free(chain);
	free(actor);
	return p.rc;
}

static int
format_leef(const struct audit_event *ev, const char *version, struct idp_buf *b)
{
	struct pairs p = {b, ESC_LEEF_VALUE, '\t', true, IDP_OK};
	char *chain = chain_text(ev), *actor = actor_text(ev), ts[32], sev[12];
	int rc;

	rc = idp_buf_puts(b, "LEEF:2.0|");
	if (rc == IDP_OK)
		rc = header_field(b, VENDOR);
	if (rc == IDP_OK)
		rc = header_field(b, PRODUCT);
	if (rc == IDP_OK)
		rc = header_field(b, version);
	if (rc == IDP_OK)
		rc = header_field(b, audit_event_type_name(ev));
	/* LEEF 2.0 names the attribute delimiter in hex: a tab. */
	if (rc == IDP_OK)
		rc = idp_buf_puts(b, "x09|");
	p.rc = rc;
	if (ev->ts_ms != AUDIT_TIME_UNSET) {
		idp_time_format(ev->ts_ms, ts);
		pair(&p, "devTime", ts);
		pair(&p, "devTimeFormat", LEEF_TIME_FORMAT);
	}
	pair(&p, "cat", audit_event_type_category(ev));
	/* LEEF severities run from 1 to 10. */
	snprintf(sev, sizeof(sev), "%d", ev->severity > 0 ? ev->severity : 1);
	pair(&p, "sev", sev);
	pair(&p, "usrName", ev->str[AUDIT_F_HUMAN_PRINCIPAL]);
	pair(&p, "src", ev->str[AUDIT_F_SOURCE_ADDRESS]);
	pair(&p, "eventId", ev->str[AUDIT_F_ID]);
	pair(&p, "instanceId", ev->str[AUDIT_F_INSTANCE_ID]);
	pair(&p, "outcome", audit_outcome_name(ev->outcome));
	pair(&p, "agentId", ev->str[AUDIT_F_AGENT_ID]);
	pair(&p, "agentType", ev->str[AUDIT_F_AGENT_TYPE]);
	pair(&p, "actor", actor);
	pair(&p, "taskId", ev->str[AUDIT_F_TASK_ID]);
	pair(&p, "delegationChain", chain);
	pair(&p, "requestId", ev->str[AUDIT_F_REQUEST_ID]);
	pair(&p, "tool", ev->str[AUDIT_F_TOOL]);
	pair(&p, "result", ev->str[AUDIT_F_RESULT]);
	pair(&p, "tokenId", ev->str[AUDIT_F_TOKEN_ID]);
	pair(&p, "grantedScope", ev->str[AUDIT_F_GRANTED_SCOPE]);
	pair(&p, "policyDecision", audit_decision_name(ev->decision));
	pair(&p, "policyRule", ev->str[AUDIT_F_POLICY_RULE]);
	pair(&p, "step", ev->str[AUDIT_F_STEP]);
	pair(&p, "previousStep", ev->str[AUDIT_F_PREVIOUS_STEP]);
	pair(&p, "nextStep", ev->str[AUDIT_F_NEXT_STEP]);
	pair(&p, "reason", audit_event_detail_str(ev, "reason"));
	pair(&p, "audience", audit_event_detail_str(ev, "audience"));
	/* Only an alert's rule is a detection rule of idpd's. */
	if (ev->type == AUDIT_ALERT)
		pair(&p, "rule", audit_event_detail_str(ev, "rule"));
	free(chain);
	free(actor);
	return p.rc;
}

static int
format_json(const struct audit_event *ev, struct idp_buf *b)
{
	size_t len;
	char *s = audit_event_canonical(ev, &len);
	int rc = idp_buf_append(b, s, len);

	free(s);
	return rc;
}

int
audit_format_line(enum audit_format f, const struct audit_event *ev, const char *version,
                  struct idp_buf *out)
{
	size_t mark = out->len;
	int rc;

	if (version == NULL)
		version = "";
	switch (f) {
	case AUDIT_FORMAT_JSON:
		rc = format_json(ev, out);
		break;
	case AUDIT_FORMAT_CEF:
		rc = format_cef(ev, version, out);
		break;
	case AUDIT_FORMAT_LEEF:
		rc = format_leef(ev, version, out);
		break;
	default:
		rc = IDP_EINVAL;
		break;
	}
	if (rc != IDP_OK && out->data != NULL) {
		out->len = mark;
		out->data[mark] = '\0';
	}
	return rc;
}
