/*
 * approvals.c - the approvals the token service and delegation ask for and
 * spend: the row's SQL, the binding, and their audit events.  The HTTP
 * endpoints that list and decide them are in approvals_api.c.
 *
 * Requesting is one transaction: insert the approval (expiry by
 * PostgreSQL's clock), emit approval.requested, COMMIT.  Spending is one
 * UPDATE that sets status 'used' only where the approval is approved,
 * unexpired and bound to exactly the request (kind, agent, task, scope set,
 * target); concurrent attempts serialise on the row lock and the second
 * finds it used.  When the UPDATE takes no row, one SELECT of the approval
 * names the precise reason.  Both a use and a refused use are audited as
 * approval.used.  A use records the token it was spent on (used_by), so
 * that an access token withheld after the use gives its approval back
 * without ever undoing another's (approval_restore).
 */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "approvals_int.h"
#include "idpd/app.h"
#include "idpd/attest.h"
#include "idpd/audit_writer.h"
#include "idpd/buf.h"
#include "idpd/clock.h"
#include "idpd/log.h"
#include "idpd/maintenance.h"
#include "idpd/registry.h"
#include "idpd/scope.h"
#include "idpd/tasks.h"

static struct store *store;
static _Atomic int64_t ttl_ms;
static _Atomic int64_t retention_ms; /* audit.retention: 0 keeps them forever */

struct store *
approvals_store(void)
{
	return store;
}

const char *
approval_kind_name(enum approval_kind k)
{
	return k == APPROVAL_TOKEN ? "token" : "delegation";
}

/* ---- settings ---- */

static int
on_reload(struct idpd_app *app, const struct idpd_config *next, void *ctx, struct idp_diag *diag)
{
	(void)app;
	(void)ctx;
	(void)diag;
	atomic_store(&ttl_ms, next->approvals.ttl_ms);
	atomic_store(&retention_ms, next->audit.retention_ms);
	return IDP_OK;
}

/* ---- the cleanup job "approvals" ---- */

#define CLEANUP_BATCH "10000"

/*
 * Approvals whose expiry is older than audit.retention go: by then their
 * events are being deleted too, and the row can no longer serve anything.
 * One that a delegation token still names stays until that token's row is
 * pruned (the "revocations" job), since the token references it.
 */
static int
cleanup_job(const struct maintenance_run *run, void *ctx, json_t *counts, struct idp_diag *diag)
{
	static struct store_stmt st_delete = {
	    "apr_cleanup",
	    "DELETE FROM approvals WHERE id IN (SELECT a.id FROM approvals a WHERE a.expires_at < "
	    "now() - $1::bigint * interval '1 millisecond' AND NOT EXISTS (SELECT 1 FROM "
	    "delegation_tokens d "
	    "WHERE d.approval_id = a.id) LIMIT $2::int)",
	    2, 0};
	int64_t keep = atomic_load(&retention_ms);
	char cutoff[24];
	const char *params[2] = {cutoff, CLEANUP_BATCH};
	PGresult *r;
	int rc;

	(void)ctx;
	if (keep == 0) {
		json_object_set_new(counts, "approvals_deleted", json_integer(0));
		return IDP_OK;
	}
	/* PostgreSQL's clock, not this instance's (as every cleanup cutoff). */
	snprintf(cutoff, sizeof(cutoff), "%lld", (long long)keep);
	rc = store_exec(run->conn, &st_delete, params, &r);
	if (rc != IDP_OK) {
		idp_diag_add(diag, "deleting old approvals: %s", idp_err_name(rc));
		return rc;
	}
	json_object_set_new(counts, "approvals_deleted",
	                    json_integer(strtoll(PQcmdTuples(r), NULL, 10)));
	PQclear(r);
	return IDP_OK;
}

int
approvals_init(struct idpd_app *app, struct idp_diag *diag)
{
	store = app->store;
	atomic_store(&ttl_ms, app->cfg->approvals.ttl_ms);
	atomic_store(&retention_ms, app->cfg->audit.retention_ms);
	if (app_on_reload(on_reload, NULL) != IDP_OK) {
		idp_diag_add(diag, "approvals: cannot register the reload hook");
		return IDP_EINVAL;
	}
	if (maintenance_register("approvals", cleanup_job, NULL) != IDP_OK) {
		idp_diag_add(diag, "approvals: cannot register the cleanup job");
		return IDP_EINVAL;
	}
	return IDP_OK;
}

/* ---- pure rules ---- */

bool
approval_id_valid(const char *s)
{
	size_t n;

	if (s == NULL || strncmp(s, "apr_", 4) != 0)
		return false;
	n = strlen(s + 4);
	if (n < 16 || n > 60)
		return false;
	for (size_t i = 4; s[i] != '\0'; i++) {
		char c = s[i];

		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '_' || c == '-'))
			return false;
	}
	return true;
}

static int
cmp_str(const void *a, const void *b)
{
	return strcmp(*(const char *const *)a, *(const char *const *)b);
}

char *
approval_scope_set(const char *scope)
{
	struct task_scopes *sc;
	struct idp_diag d;
	const char *v[TASK_MAX_SCOPES];
	char *out = NULL;
	json_t *j;

	if (scope == NULL)
		return NULL;
	j = json_string(scope);
	if (j == NULL)
		return NULL;
	/* Large (64 scopes of 256 bytes, twice): off the worker's stack. */
	sc = idp_xmalloc(sizeof(*sc));
	idp_diag_init(&d);
	if (task_scopes_parse(j, sc, &d)) {
		memcpy(v, sc->v, sc->n * sizeof(v[0]));
		qsort(v, sc->n, sizeof(v[0]), cmp_str);
		memcpy(sc->v, v, sc->n * sizeof(v[0]));
		out = task_scopes_pg_array(sc);
	}
	json_decref(j);
	free(sc);
	return out;
}

char *
approval_words_array(const char *s, size_t max)
{
	struct idp_buf b;
	size_t n = 0;
	int rc;
	char *out;

	idp_buf_init(&b, 1u << 20);
	rc = idp_buf_putc(&b, '{');
	while (rc == IDP_OK && s != NULL && *s != '\0') {
		size_t len;

		s += strspn(s, " ");
		len = strcspn(s, " ");
		if (len == 0)
			break;
		if (++n > max) {
			rc = IDP_ETOOBIG;
			break;
		}
		rc = idp_buf_puts(&b, n > 1 ? ",\"" : "\"");
		for (size_t i = 0; rc == IDP_OK && i < len; i++) {
			if (s[i] == '"' || s[i] == '\\')
				rc = idp_buf_putc(&b, '\\');
			if (rc == IDP_OK)
				rc = idp_buf_putc(&b, s[i]);
		}
		if (rc == IDP_OK)
			rc = idp_buf_putc(&b, '"');
		s += len;
	}
	if (rc == IDP_OK)
		rc = idp_buf_putc(&b, '}');
	out = rc == IDP_OK ? idp_buf_take(&b, NULL) : NULL;
	idp_buf_cleanup(&b);
	return out;
}

const char *
approval_refusal(bool found, bool bound, const char *status, bool live)
{
	if (!found)
		return "approval_unknown";
	if (!bound)
		return "approval_mismatch";
	if (strcmp(status, "used") == 0)
		return "approval_used";
	if (strcmp(status, "denied") == 0)
		return "approval_denied";
	if (!live)
		return "approval_expired";
	if (strcmp(status, "pending") == 0)
		return "approval_pending";
	/* Approved, bound and live, yet not taken: it was spent in between. */
	return "approval_used";
}

void
approval_owner_form(const char *principal, char *out, size_t len)
{
	size_t i;

	if (len == 0)
		return;
	if (strchr(principal, ':') != NULL) {
		snprintf(out, len, "%s", principal);
		return;
	}
	for (i = 0; principal[i] != '\0' && i + 1 < len; i++) {
		char c = principal[i];

		out[i] = c >= 'A' && c <= 'Z' ? (char)(c - 'A' + 'a') : c;
	}
	out[i] = '\0';
}

bool
approval_human_may_decide(const char *principal, const char *idp, bool vouches, const char *human,
                          const char *human_idp, const char *owner)
{
	char form[330];
	size_t n = strlen(idp);

	if (strcmp(principal, human) == 0 && strcmp(idp, human_idp) == 0)
		return true;
	if (strchr(owner, ':') == NULL) {
		/* An email owner, whom only a provider trusted for it stands for
		 * (idp[].vouches_for_owners); a principal with a colon never is one. */
		approval_owner_form(principal, form, sizeof(form));
		return vouches && strchr(principal, ':') == NULL && strcmp(form, owner) == 0;
	}
	/* An owner named by IdP subject: "corp:00u1abc" for principal 00u1abc of
	 * corp only, not for a principal "corp:00u1abc" of another provider. */
	return n > 0 && strncmp(owner, idp, n) == 0 && owner[n] == ':' &&
	       strcmp(owner + n + 1, principal) == 0;
}

/* ---- the row ---- */

static void
put_time(json_t *o, const char *key, const PGresult *r, int row, int col)
{
	char t[32];

	if (PQgetisnull(r, row, col))
		return;
	idp_time_format(strtoll(PQgetvalue(r, row, col), NULL, 10), t);
	json_object_set_new(o, key, json_string(t));
}

static void
put_text(json_t *o, const char *key, const PGresult *r, int row, int col)
{
	if (!PQgetisnull(r, row, col))
		json_object_set_new(o, key, json_string(PQgetvalue(r, row, col)));
}

static json_t *
json_array_col(const PGresult *r, int row, int col)
{
	json_t *a = json_loads(PQgetvalue(r, row, col), JSON_REJECT_DUPLICATES, NULL);

	if (!json_is_array(a)) {
		json_decref(a);
		a = json_array();
	}
	return a;
}

json_t *
approval_json(const PGresult *r, int row)
{
	json_t *o = json_pack(
	    "{s:s,s:s,s:s,s:s,s:s,s:s,s:s,s:o,s:s,s:s,s:o}", "id", PQgetvalue(r, row, APR_C_ID),
	    "kind", PQgetvalue(r, row, APR_C_KIND), "status", PQgetvalue(r, row, APR_C_STATUS),
	    "agent_id", PQgetvalue(r, row, APR_C_AGENT), "task_id", PQgetvalue(r, row, APR_C_TASK),
	    "human_principal", PQgetvalue(r, row, APR_C_HUMAN), "agent_owner",
	    PQgetvalue(r, row, APR_C_OWNER), "scope", json_array_col(r, row, APR_C_SCOPE), "target",
	    PQgetvalue(r, row, APR_C_TARGET), "reason", PQgetvalue(r, row, APR_C_REASON), "rules",
	    json_array_col(r, row, APR_C_RULES));

	if (o == NULL)
		return json_object();
	put_time(o, "created_at", r, row, APR_C_CREATED);
	put_time(o, "expires_at", r, row, APR_C_EXPIRES);
	put_time(o, "decided_at", r, row, APR_C_DECIDED);
	put_text(o, "decided_by", r, row, APR_C_DECIDED_BY);
	put_text(o, "decided_by_kind", r, row, APR_C_DECIDED_KIND);
	put_text(o, "decided_by_idp", r, row, APR_C_DECIDED_IDP);
	put_text(o, "note", r, row, APR_C_NOTE);
	put_time(o, "used_at", r, row, APR_C_USED);
	{
		const char *c = PQgetvalue(r, row, APR_C_CHAIN), *w;
		json_t *a = json_array();
		size_t n;

		while ((w = idp_word_next(&c, &n)) != NULL)
			json_array_append_new(a, json_stringn(w, n));
		json_object_set_new(o, "delegation_chain", a);
	}
	return o;
}

/* ---- audit ---- */

int
approval_emit(struct approval_event *e)
{
	struct audit_event *ev = audit_event_new(e->type, AUDIT_TIME_UNSET);
	int rc = IDP_OK;

	if (ev == NULL) {
		json_decref(e->detail);
		e->detail = NULL;
		return IDP_EINTERNAL;
	}
	audit_event_set_outcome(ev, e->outcome);
	if (e->type == AUDIT_APPROVAL_REQUESTED)
		audit_event_set_decision(ev, AUDIT_DECISION_REQUIRE_APPROVAL);
	if (audit_event_set(ev, AUDIT_F_TASK_ID, e->task_id) != IDP_OK ||
	    audit_event_set(ev, AUDIT_F_HUMAN_PRINCIPAL, e->human) != IDP_OK ||
	    audit_event_set(ev, AUDIT_F_AGENT_ID, e->agent_id) != IDP_OK ||
	    audit_event_set(ev, AUDIT_F_GRANTED_SCOPE, e->granted_scope) != IDP_OK ||
	    audit_event_set(ev, AUDIT_F_TOKEN_ID, e->token_id) != IDP_OK ||
	    audit_event_set(ev, AUDIT_F_POLICY_RULE, e->rules) != IDP_OK ||
	    audit_event_set(ev, AUDIT_F_REQUEST_ID, e->request_id) != IDP_OK ||
	    (e->peer != NULL && e->peer[0] != '\0' &&
	     audit_event_set(ev, AUDIT_F_SOURCE_ADDRESS, e->peer) != IDP_OK) ||
	    audit_event_set_actor(ev, e->actor, e->actor_name) != IDP_OK ||
	    (e->severity > 0 && audit_event_set_severity(ev, e->severity) != IDP_OK))
		rc = IDP_EINTERNAL;
	/* The chain the approval belongs to: the task's human, then the agents
	 * from the root to the one that asked (that one alone when not known). */
	if (rc == IDP_OK && e->human != NULL && e->human[0] != '\0' &&
	    audit_event_chain_append(ev, e->human) != IDP_OK)
		rc = IDP_EINTERNAL;
	if (rc == IDP_OK && e->chain != NULL && e->chain[0] != '\0') {
		const char *c = e->chain, *w;
		char one[REGISTRY_ID_MAX + 1];
		size_t n;

		while (rc == IDP_OK && (w = idp_word_next(&c, &n)) != NULL) {
			if (n >= sizeof(one)) {
				rc = IDP_EINTERNAL;
				break;
			}
			memcpy(one, w, n);
			one[n] = '\0';
			if (audit_event_chain_append(ev, one) != IDP_OK)
				rc = IDP_EINTERNAL;
		}
	} else if (rc == IDP_OK && e->agent_id != NULL && e->agent_id[0] != '\0' &&
	           audit_event_chain_append(ev, e->agent_id) != IDP_OK) {
		rc = IDP_EINTERNAL;
	}
	if (rc == IDP_OK && e->detail != NULL && audit_event_set_detail(ev, e->detail) != IDP_OK)
		rc = IDP_EINTERNAL;
	json_decref(e->detail);
	e->detail = NULL;
	if (rc != IDP_OK) {
		log_error("approvals: bug: cannot build the %s event for %s",
		          audit_type_name(e->type), e->approval_id ? e->approval_id : "-");
		audit_event_free(ev);
		return rc;
	}
	return audit_emit(ev) == IDP_OK ? IDP_OK : IDP_EUNAVAIL;
}

/* ---- requesting ---- */

static struct store_stmt st_insert = {
    "apr_insert",
    "INSERT INTO approvals (id, kind, agent_id, task_id, human_principal, human_idp, "
    "agent_owner, scope, target, reason, rules, expires_at, request_id, delegation_chain) "
    "VALUES ($1, $2, $3, $4, $5, (SELECT idp FROM tasks WHERE id = $4), $6, $7::text[], $8, "
    "$9, $10::text[], now() + $11::bigint * interval '1 millisecond', $12, $13::text[]) "
    "RETURNING floor(extract(epoch FROM expires_at))::bigint",
    13, 0};

/* A pending approval for the same request, so that an agent retrying before the human decides
 * gets the same approval back instead of a new one each time. */
static struct store_stmt st_pending = {
    "apr_pending",
    "SELECT id, floor(extract(epoch FROM expires_at))::bigint FROM approvals WHERE kind = $1 "
    "AND agent_id = $2 AND task_id = $3 AND scope = $4::text[] AND target = $5 AND status = "
    "'pending' AND expires_at > now() ORDER BY created_at DESC LIMIT 1",
    5, 0};

/*
 * Requests for the same approval queue on one transaction-scoped lock, so
 * that two sent at once find one pending approval instead of each missing
 * the other's and inserting two.
 */
static struct store_stmt st_same_request = {
    "apr_same_request",
    "SELECT pg_advisory_xact_lock(hashtextextended($1 || chr(31) || $2 || chr(31) || $3 || "
    "chr(31) || $4 || chr(31) || $5, 0))",
    5, 0};

/* A printable string of 1..max bytes without control characters. */
static bool
text_ok(const char *s, size_t max)
{
	size_t n;

	if (s == NULL)
		return false;
	n = strlen(s);
	if (n == 0 || n > max)
		return false;
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
			return false;
	return true;
}

/* Whether chain (NULL: none) is agent ids, at most 64, ending with agent. */
static bool
chain_ok(const char *chain, const char *agent)
{
	const char *w = NULL, *last = NULL;
	char one[REGISTRY_ID_MAX + 1];
	size_t n, count = 0, last_n = 0;

	if (chain == NULL)
		return true;
	while ((w = idp_word_next(&chain, &n)) != NULL) {
		if (n >= sizeof(one) || ++count > 64)
			return false;
		memcpy(one, w, n);
		one[n] = '\0';
		if (!registry_id_valid(one))
			return false;
		last = w;
		last_n = n;
	}
	return last != NULL && last_n == strlen(agent) && memcmp(last, agent, last_n) == 0;
}

static bool
subject_ok(const struct approval_subject *s)
{
	return s != NULL && registry_id_valid(s->agent_id) && text_ok(s->task_id, TASK_ID_MAX) &&
	       text_ok(s->human, 320) && text_ok(s->target, APPROVAL_TARGET_MAX) &&
	       (s->kind == APPROVAL_TOKEN || s->kind == APPROVAL_DELEGATION);
}

struct approval_subject *
approval_subject_dup(const struct approval_subject *s)
{
	const char *const *from[] = {&s->agent_id, &s->task_id,    &s->human,
	                             &s->scope,    &s->target,     &s->reason,
	                             &s->rules,    &s->request_id, &s->chain};
	struct approval_subject *c;
	size_t size = sizeof(*c);
	char *p;

	for (size_t i = 0; i < IDP_ARRAY_LEN(from); i++)
		size += *from[i] != NULL ? strlen(*from[i]) + 1 : 0;
	c = idp_xcalloc(1, size);
	c->kind = s->kind;
	p = (char *)(c + 1);
	{
		const char **to[] = {&c->agent_id, &c->task_id,    &c->human,
		                     &c->scope,    &c->target,     &c->reason,
		                     &c->rules,    &c->request_id, &c->chain};

		for (size_t i = 0; i < IDP_ARRAY_LEN(from); i++) {
			size_t n;

			if (*from[i] == NULL)
				continue;
			n = strlen(*from[i]) + 1;
			memcpy(p, *from[i], n);
			*to[i] = p;
			p += n;
		}
	}
	return c;
}

int
approval_request(const struct approval_subject *s, char id[APPROVAL_ID_MAX + 1], int64_t *expires_s)
{
	const struct registry_agent *a = NULL;
	struct store_conn *c = NULL;
	char jti[ATTEST_JTI_LEN + 1], ttl[24], exp_text[32];
	char *scopes = NULL, *rules = NULL, *chain = NULL;
	const char *params[13];
	PGresult *r = NULL;
	int rc;

	id[0] = '\0';
	*expires_s = 0;
	if (!subject_ok(s) || !text_ok(s->reason, APPROVAL_TEXT_MAX) ||
	    (s->rules != NULL && strlen(s->rules) > APPROVAL_TEXT_MAX) ||
	    (s->request_id != NULL && strlen(s->request_id) > 128) ||
	    !chain_ok(s->chain, s->agent_id))
		return IDP_EINVAL;
	scopes = approval_scope_set(s->scope);
	rules = approval_words_array(s->rules, APPROVAL_RULES_MAX);
	chain = approval_words_array(s->chain, 64);
	if (scopes == NULL || rules == NULL || chain == NULL) {
		rc = IDP_EINVAL;
		goto done;
	}
	rc = registry_get(s->agent_id, &a);
	if (rc != IDP_OK) {
		rc = rc == IDP_EUNAVAIL ? IDP_EUNAVAIL : IDP_EINVAL;
		goto done;
	}
	if (attest_jti_new(jti) != IDP_OK) {
		rc = IDP_EINTERNAL;
		goto done;
	}
	snprintf(id, APPROVAL_ID_MAX + 1, "apr_%s", jti);
	snprintf(ttl, sizeof(ttl), "%lld", (long long)atomic_load(&ttl_ms));
	params[0] = id;
	params[1] = approval_kind_name(s->kind);
	params[2] = s->agent_id;
	params[3] = s->task_id;
	params[4] = s->human;
	params[5] = a->owner;
	params[6] = scopes;
	params[7] = s->target;
	params[8] = s->reason;
	params[9] = rules;
	params[10] = ttl;
	params[11] = s->request_id != NULL && s->request_id[0] != '\0' ? s->request_id : NULL;
	params[12] = chain;

	if (store == NULL || store_acquire(store, &c) != IDP_OK) {
		rc = IDP_EUNAVAIL;
		goto done;
	}
	rc = store_cmd(c, "BEGIN");
	if (rc != IDP_OK)
		goto done;
	{
		const char *p5[5] = {params[1], params[2], params[3], params[6], params[7]};

		rc = store_exec(c, &st_same_request, p5, &r);
		PQclear(r);
		r = NULL;
		if (rc == IDP_OK)
			rc = store_exec(c, &st_pending, p5, &r);
		if (rc != IDP_OK)
			goto done;
		if (PQntuples(r) == 1) {
			snprintf(id, APPROVAL_ID_MAX + 1, "%s", PQgetvalue(r, 0, 0));
			*expires_s = strtoll(PQgetvalue(r, 0, 1), NULL, 10);
			log_debug("approvals: %s asked again by %s", id, s->agent_id);
			/* Nothing written: end the transaction, and its lock. */
			rc = store_cmd(c, "COMMIT");
			goto done;
		}
		PQclear(r);
		r = NULL;
	}
	/* A task or agent that does not exist fails its foreign key: IDP_EINVAL. */
	rc = store_exec(c, &st_insert, params, &r);
	if (rc != IDP_OK)
		goto done;
	*expires_s = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
	idp_time_format(*expires_s * 1000, exp_text);

	struct approval_event e = {
	    .type = AUDIT_APPROVAL_REQUESTED,
	    .outcome = AUDIT_OUTCOME_PENDING,
	    .approval_id = id,
	    .task_id = s->task_id,
	    .human = s->human,
	    .agent_id = s->agent_id,
	    .chain = s->chain,
	    .actor = AUDIT_ACTOR_AGENT,
	    .actor_name = s->agent_id,
	    .rules = s->rules,
	    .request_id = s->request_id,
	    .detail = json_pack("{s:s,s:s,s:s,s:s,s:s,s:s,s:s?,s:s}", "approval_id", id, "kind",
	                        approval_kind_name(s->kind), "requested_scope", s->scope, "target",
	                        s->target, "reason", s->reason, "agent_owner", a->owner, "rules",
	                        s->rules, "expires_at", exp_text),
	};
	rc = approval_emit(&e);
	if (rc != IDP_OK)
		goto done;
	rc = store_cmd(c, "COMMIT");
	if (rc != IDP_OK) {
		log_error("approvals: COMMIT failed after approval.requested for %s was written",
		          id);
		rc = IDP_EUNAVAIL;
	} else {
		log_debug("approvals: %s requested by %s for %s", id, s->agent_id, s->target);
	}
done:
	PQclear(r);
	if (c != NULL) {
		if (rc != IDP_OK && store_cmd(c, "ROLLBACK") != IDP_OK)
			store_discard(c);
		store_release(store, c);
	}
	registry_agent_unref(a);
	free(scopes);
	free(rules);
	free(chain);
	if (rc != IDP_OK) {
		id[0] = '\0';
		*expires_s = 0;
		if (rc != IDP_EINVAL)
			rc = IDP_EUNAVAIL;
	}
	return rc;
}

/* ---- spending ---- */

static struct store_stmt st_use = {
    "apr_use",
    "UPDATE approvals SET status = 'used', used_at = now(), used_by = $7 WHERE id = $1 AND "
    "status = 'approved' AND expires_at > now() AND kind = $2 AND agent_id = $3 AND "
    "task_id = $4 AND scope = $5::text[] AND target = $6 RETURNING decided_by, "
    "decided_by_kind, decided_by_idp",
    7, 0};

static struct store_stmt st_why = {
    "apr_why",
    "SELECT kind = $2 AND agent_id = $3 AND task_id = $4 AND scope = $5::text[] AND target = $6, "
    "status, expires_at > now() FROM approvals WHERE id = $1",
    6, 0};

/* Record a refused use, best effort: the refusal stands either way. */
static void
refused(const char *id, const struct approval_subject *s, const char *reason)
{
	struct approval_event e = {
	    .type = AUDIT_APPROVAL_USED,
	    .outcome = AUDIT_OUTCOME_DENIED,
	    .approval_id = id,
	    .task_id = s->task_id,
	    .human = s->human,
	    .agent_id = s->agent_id,
	    .chain = s->chain,
	    .actor = AUDIT_ACTOR_AGENT,
	    .actor_name = s->agent_id,
	    .request_id = s->request_id,
	    .severity = 5,
	    .detail = json_pack("{s:s?,s:s,s:s?,s:s?,s:s}", "approval_id", id, "kind",
	                        approval_kind_name(s->kind), "requested_scope", s->scope, "target",
	                        s->target, "reason", reason),
	};

	if (approval_emit(&e) != IDP_OK)
		log_warn("approvals: cannot record the refused use (%s) of an approval", reason);
}

/*
 * The parameters of st_use and st_why for a use of id by s; *scopes (the
 * caller frees it) holds the scope set.  IDP_EFORBIDDEN, recorded, with
 * *reason for an id or a request no approval can be bound to.
 */
static int
use_params(const char *id, const struct approval_subject *s, const char *params[6], char **scopes,
           const char **reason)
{
	/* The id goes into the event only once it is known to be well formed. */
	if (!approval_id_valid(id)) {
		*reason = "approval_unknown";
		refused(NULL, s, *reason);
		return IDP_EFORBIDDEN;
	}
	/* No approval is bound to a request that is not well formed. */
	*scopes = subject_ok(s) ? approval_scope_set(s->scope) : NULL;
	if (*scopes == NULL) {
		*reason = "approval_mismatch";
		refused(id, s, *reason);
		return IDP_EFORBIDDEN;
	}
	params[0] = id;
	params[1] = approval_kind_name(s->kind);
	params[2] = s->agent_id;
	params[3] = s->task_id;
	params[4] = *scopes;
	params[5] = s->target;
	return IDP_OK;
}

/* The refusal st_why's answer r gives (recorded); IDP_EFORBIDDEN. */
static int
refuse_use(const char *id, const struct approval_subject *s, const PGresult *r, const char **reason)
{
	*reason = PQntuples(r) == 1
	              ? approval_refusal(true, strcmp(PQgetvalue(r, 0, 0), "t") == 0,
	                                 PQgetvalue(r, 0, 1), strcmp(PQgetvalue(r, 0, 2), "t") == 0)
	              : approval_refusal(false, false, "", false);
	refused(id, s, *reason);
	return IDP_EFORBIDDEN;
}

int
approval_check(const char *id, const struct approval_subject *s, const char **reason)
{
	const char *params[6];
	struct store_conn *c = NULL;
	char *scopes = NULL;
	PGresult *r = NULL;
	int rc;

	*reason = NULL;
	rc = use_params(id, s, params, &scopes, reason);
	if (rc != IDP_OK)
		return rc;
	if (store == NULL || store_acquire(store, &c) != IDP_OK) {
		free(scopes);
		return IDP_EUNAVAIL;
	}
	rc = store_exec(c, &st_why, params, &r);
	store_release(store, c);
	if (rc != IDP_OK)
		rc = IDP_EUNAVAIL;
	else if (PQntuples(r) == 1 && strcmp(PQgetvalue(r, 0, 0), "t") == 0 &&
	         strcmp(PQgetvalue(r, 0, 1), "approved") == 0 &&
	         strcmp(PQgetvalue(r, 0, 2), "t") == 0)
		rc = IDP_OK;
	else
		rc = refuse_use(id, s, r, reason);
	PQclear(r);
	free(scopes);
	return rc;
}

int
approval_consume_in(struct store_conn *c, const char *id, const struct approval_subject *s,
                    const char *used_by, const char **reason)
{
	const char *params[7];
	char *scopes = NULL;
	PGresult *r = NULL;
	int rc;

	*reason = NULL;
	rc = use_params(id, s, params, &scopes, reason);
	if (rc != IDP_OK)
		return rc;
	params[6] = used_by;
	rc = store_exec(c, &st_use, params, &r);
	if (rc != IDP_OK) {
		rc = IDP_EUNAVAIL;
		goto done;
	}
	if (PQntuples(r) == 1) {
		struct approval_event e = {
		    .type = AUDIT_APPROVAL_USED,
		    .outcome = AUDIT_OUTCOME_SUCCESS,
		    .approval_id = id,
		    .task_id = s->task_id,
		    .human = s->human,
		    .agent_id = s->agent_id,
		    .chain = s->chain,
		    .actor = AUDIT_ACTOR_AGENT,
		    .actor_name = s->agent_id,
		    .granted_scope = s->scope,
		    .token_id = used_by,
		    .request_id = s->request_id,
		    .detail = json_pack("{s:s,s:s,s:s,s:s,s:s,s:s?}", "approval_id", id, "kind",
		                        approval_kind_name(s->kind), "target", s->target,
		                        "approved_by", PQgetvalue(r, 0, 0), "approved_by_kind",
		                        PQgetvalue(r, 0, 1), "approved_by_idp",
		                        PQgetisnull(r, 0, 2) ? NULL : PQgetvalue(r, 0, 2)),
		};

		rc = approval_emit(&e);
		if (rc != IDP_OK)
			rc = IDP_EUNAVAIL;
		goto done;
	}
	PQclear(r);
	r = NULL;
	rc = store_exec(c, &st_why, params, &r);
	if (rc != IDP_OK) {
		rc = IDP_EUNAVAIL;
		goto done;
	}
	rc = refuse_use(id, s, r, reason);
done:
	PQclear(r);
	free(scopes);
	return rc;
}

int
approval_consume(const char *id, const struct approval_subject *s, const char *used_by,
                 const char **reason)
{
	struct store_conn *c = NULL;
	int rc;

	*reason = NULL;
	if (store == NULL || store_acquire(store, &c) != IDP_OK)
		return IDP_EUNAVAIL;
	rc = store_cmd(c, "BEGIN");
	if (rc == IDP_OK)
		rc = approval_consume_in(c, id, s, used_by, reason);
	if (rc == IDP_OK) {
		rc = store_cmd(c, "COMMIT");
		if (rc != IDP_OK) {
			log_error("approvals: COMMIT failed after approval.used for %s was written",
			          id);
			rc = IDP_EUNAVAIL;
		}
	} else if (store_cmd(c, "ROLLBACK") != IDP_OK) {
		store_discard(c);
	}
	store_release(store, c);
	if (rc != IDP_OK && rc != IDP_EFORBIDDEN)
		rc = IDP_EUNAVAIL;
	return rc;
}

/* ---- giving back ---- */

static struct store_stmt st_restore = {
    "apr_restore",
    "UPDATE approvals SET status = 'approved', used_at = NULL, used_by = NULL WHERE id = $1 "
    "AND status = 'used' AND used_by = $2 RETURNING kind",
    2, 0};

int
approval_restore(const char *id, const struct approval_subject *s, const char *used_by,
                 const char *withheld_event)
{
	const char *params[2] = {id, used_by};
	struct store_conn *c = NULL;
	PGresult *r = NULL;
	int rc;

	if (!approval_id_valid(id) || used_by == NULL || used_by[0] == '\0' || !subject_ok(s))
		return IDP_EINVAL;
	if (store == NULL || store_acquire(store, &c) != IDP_OK)
		return IDP_EUNAVAIL;
	rc = store_cmd(c, "BEGIN");
	if (rc == IDP_OK)
		rc = store_exec(c, &st_restore, params, &r);
	if (rc != IDP_OK) {
		rc = IDP_EUNAVAIL;
		goto done;
	}
	if (PQntuples(r) != 1) {
		/* Spent on another token, or given back already: not ours to touch. */
		rc = IDP_ENOTFOUND;
		goto done;
	}

	struct approval_event e = {
	    .type = AUDIT_APPROVAL_RESTORED,
	    .outcome = AUDIT_OUTCOME_SUCCESS,
	    .approval_id = id,
	    .task_id = s->task_id,
	    .human = s->human,
	    .agent_id = s->agent_id,
	    .chain = s->chain,
	    .actor = AUDIT_ACTOR_SYSTEM,
	    .actor_name = "approvals",
	    .token_id = used_by,
	    .request_id = s->request_id,
	    /* The token is authorization.token_id: a detail key naming a token
	     * would be redacted. */
	    .detail = json_pack(
	        "{s:s,s:s,s:s,s:s,s:s?,s:s}", "approval_id", id, "kind",
	        approval_kind_name(s->kind), "target", s->target, "reason", "token_withheld",
	        "withheld_event_id", withheld_event, "message",
	        "the token this approval was spent on was withheld (its token.issued event was not "
	        "durable within audit.timeout; the request was answered 503 and the token never "
	        "left): the approval is approved again, for the agent's retry"),
	};
	rc = approval_emit(&e);
	if (rc != IDP_OK) {
		rc = IDP_EUNAVAIL;
		goto done;
	}
	rc = store_cmd(c, "COMMIT");
	if (rc != IDP_OK) {
		log_error("approvals: COMMIT failed after approval.restored for %s was written",
		          id);
		rc = IDP_EUNAVAIL;
	}
done:
	PQclear(r);
	if (rc != IDP_OK && store_cmd(c, "ROLLBACK") != IDP_OK)
		store_discard(c);
	store_release(store, c);
	return rc;
}
