/*
 * db.c - the registry's reads and writes in PostgreSQL, each write with its
 * audit event.
 *
 * A registry write never exists without its audit event.  Every write runs
 * in one transaction: the row is written (or locked and then written), the
 * audit event describing the result is emitted and waited for (audit.durability
 * "sync" makes it durable before audit_emit returns), and only then does the
 * transaction commit.  So:
 *   - if the event cannot be made durable, the transaction rolls back and
 *     the client gets 503: nothing changed, and nothing claims it did;
 *   - if the commit itself fails after the event is durable (PostgreSQL went
 *     away in between), the client gets 503 and a second event of the same
 *     type with outcome "error" and detail.commit_failed records that the
 *     change described just before may not have happened.
 * The audit log may therefore hold an event for a change that was rolled
 * back, flagged by the event after it; it never lacks the event of a change
 * that happened.  The row lock is held while the event commits, which costs
 * one audit group commit (milliseconds) per write and only blocks writers of
 * the same agent.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "idpd/attest.h"
#include "idpd/audit_writer.h"
#include "idpd/clock.h"
#include "idpd/log.h"
#include "registry_int.h"

#define WRITE_COLUMNS_INSERT                                                                       \
	"id, agent_type, agent_version, model, deployment, owner, team, capabilities, "            \
	"delegate_to, max_chain_depth, max_scope_per_delegation, requires_human_approval_for, "    \
	"credential_type, credential_rotation_ms, domains, environment, attestation_selectors, "   \
	"labels"

static struct store_stmt st_insert = {
    "registry_insert",
    "INSERT INTO agents (" WRITE_COLUMNS_INSERT ") VALUES ($1, $2, $3, $4, $5, $6, $7, "
    "$8::text[], $9::text[], $10::int, $11, $12::text[], $13, $14::bigint, $15::text[], $16, "
    "$17::text[], $18::jsonb) RETURNING " AGENT_COLUMNS,
    18, 0};

static struct store_stmt st_update = {
    "registry_update",
    "UPDATE agents SET agent_version = $3, model = $4, deployment = $5, owner = $6, team = $7, "
    "capabilities = $8::text[], delegate_to = $9::text[], max_chain_depth = $10::int, "
    "max_scope_per_delegation = $11, requires_human_approval_for = $12::text[], "
    "credential_type = $13, credential_rotation_ms = $14::bigint, domains = $15::text[], "
    "environment = $16, attestation_selectors = $17::text[], labels = $18::jsonb, "
    "version = version + 1, updated_at = now() WHERE id = $1 AND agent_type = $2 "
    "RETURNING " AGENT_COLUMNS,
    18, 0};

static struct store_stmt st_lock = {
    "registry_lock", "SELECT " AGENT_COLUMNS " FROM agents WHERE id = $1 FOR UPDATE", 1, 0};

static struct store_stmt st_get = {"registry_get",
                                   "SELECT " AGENT_COLUMNS " FROM agents WHERE id = $1", 1, 0};

static struct store_stmt st_page = {
    "registry_load_page",
    "SELECT " AGENT_COLUMNS " FROM agents WHERE id > $1 ORDER BY id LIMIT 5000", 1, 0};

#define STATUS_SET                                                                                 \
	"UPDATE agents SET status = $2, version = version + 1, updated_at = now(), "               \
	"status_changed_at = now(), status_changed_by = $3, status_reason = $4, "                  \
	"revocation_epoch = CASE WHEN $5::bool THEN clock_timestamp() + $6::bigint * "             \
	"interval '1 millisecond' ELSE revocation_epoch END "                                      \
	"WHERE id = $1"

static struct store_stmt st_status = {"registry_set_status", STATUS_SET " RETURNING " AGENT_COLUMNS,
                                      6, 0};

/* The cleanup jobs' transitions: the condition that found the agent, again (registry_guard). */
static struct store_stmt st_status_idle = {
    "registry_set_status_idle",
    STATUS_SET " AND status = 'active' AND " AGENT_LAST_SEEN_SQL
               " < now() - $7::bigint * interval '1 millisecond' RETURNING " AGENT_COLUMNS,
    7, 0};

static struct store_stmt st_status_owner = {
    "registry_set_status_owner",
    STATUS_SET " AND status = 'active' AND owner = $7 RETURNING " AGENT_COLUMNS, 7, 0};

/*
 * The revocation epoch once more, right before the COMMIT: the first stamp
 * preceded the audit wait (up to audit.timeout), and tokens that other
 * instances issue until the committed change reaches them must still fall
 * before it.  Never moves the epoch back.
 */
static struct store_stmt st_epoch = {
    "registry_epoch_restamp",
    "UPDATE agents SET revocation_epoch = greatest(revocation_epoch, clock_timestamp() + "
    "$2::bigint * interval '1 millisecond') WHERE id = $1 RETURNING " AGENT_COLUMNS,
    2, 0};

#define LOAD_PAGE 5000

/* ---- parameters ---- */

char *
pg_text_array_json(const json_t *arr)
{
	struct idp_buf b;
	size_t i;
	json_t *v;
	int rc;

	idp_buf_init(&b, 0);
	rc = idp_buf_putc(&b, '{');
	json_array_foreach(arr, i, v)
	{
		rc |= idp_buf_puts(&b, i > 0 ? ",\"" : "\"");
		for (const char *c = json_string_value(v); c != NULL && *c != '\0'; c++) {
			if (*c == '"' || *c == '\\')
				rc |= idp_buf_putc(&b, '\\');
			rc |= idp_buf_putc(&b, *c);
		}
		rc |= idp_buf_putc(&b, '"');
	}
	rc |= idp_buf_putc(&b, '}');
	if (rc != 0)
		abort(); /* an uncapped buffer fails only on OOM, which aborts first */
	return idp_buf_take(&b, NULL);
}

/* The 18 write parameters from a normalised record, in WRITE_COLUMNS order. */
struct write_params {
	const char *v[18];
	char *owned[8];
	size_t n_owned;
	char depth[16], rotation[24];
};

static const char *
own(struct write_params *p, char *s)
{
	p->owned[p->n_owned++] = s;
	return s;
}

static const char *
opt_str(const json_t *norm, const char *key)
{
	return json_string_value(json_object_get(norm, key)); /* NULL for null */
}

static void
write_params_init(struct write_params *p, const json_t *norm)
{
	const json_t *dc = json_object_get(norm, "delegation_constraints");
	const json_t *cred = json_object_get(norm, "credential");
	int64_t rot = REGISTRY_ROTATION_DEFAULT_MS;

	memset(p, 0, sizeof(*p));
	if (idp_duration_parse(json_string_value(json_object_get(cred, "rotation")), &rot) !=
	    IDP_OK)
		rot = REGISTRY_ROTATION_DEFAULT_MS;
	snprintf(p->depth, sizeof(p->depth), "%lld",
	         (long long)json_integer_value(json_object_get(dc, "max_chain_depth")));
	snprintf(p->rotation, sizeof(p->rotation), "%lld", (long long)rot);
	p->v[0] = opt_str(norm, "id");
	p->v[1] = opt_str(norm, "agent_type");
	p->v[2] = opt_str(norm, "agent_version");
	p->v[3] = opt_str(norm, "model");
	p->v[4] = opt_str(norm, "deployment");
	p->v[5] = opt_str(norm, "owner");
	p->v[6] = opt_str(norm, "team");
	p->v[7] = own(p, pg_text_array_json(json_object_get(norm, "capabilities")));
	p->v[8] = own(p, pg_text_array_json(json_object_get(norm, "delegate_to")));
	p->v[9] = p->depth;
	p->v[10] = json_string_value(json_object_get(dc, "max_scope_per_delegation"));
	p->v[11] = own(p, pg_text_array_json(json_object_get(dc, "requires_human_approval_for")));
	p->v[12] = json_string_value(json_object_get(cred, "type"));
	p->v[13] = p->rotation;
	p->v[14] = own(p, pg_text_array_json(json_object_get(norm, "domains")));
	p->v[15] = opt_str(norm, "environment");
	p->v[16] = own(p, pg_text_array_json(json_object_get(norm, "attestation_selectors")));
	p->v[17] =
	    own(p, json_dumps(json_object_get(norm, "labels"), JSON_COMPACT | JSON_SORT_KEYS));
}

static void
write_params_cleanup(struct write_params *p)
{
	for (size_t i = 0; i < p->n_owned; i++)
		free(p->owned[i]);
}

/* ---- audit ---- */

/*
 * Emit one agent.* event about a, by who, with detail (stolen).  Waits for
 * durability under audit.durability "sync".  IDP_EUNAVAIL when the audit
 * log cannot take it, IDP_EINTERNAL if a field is refused (a bug).
 */
static int
emit(enum audit_type type, enum audit_outcome outcome, const struct registry_agent *a,
     const struct registry_actor *who, json_t *detail)
{
	struct audit_event *ev = audit_event_new(type, AUDIT_TIME_UNSET);
	int rc = IDP_OK;

	if (ev == NULL) {
		json_decref(detail);
		return IDP_EINTERNAL;
	}
	audit_event_set_outcome(ev, outcome);
	if (audit_event_set(ev, AUDIT_F_AGENT_ID, a->id) != IDP_OK ||
	    audit_event_set(ev, AUDIT_F_AGENT_TYPE, a->agent_type) != IDP_OK ||
	    audit_event_set(ev, AUDIT_F_HUMAN_PRINCIPAL, a->owner) != IDP_OK ||
	    audit_event_set(ev, AUDIT_F_REQUEST_ID, who->request_id) != IDP_OK ||
	    audit_event_set_actor(ev, AUDIT_ACTOR_OPERATOR, who->name) != IDP_OK)
		rc = IDP_EINTERNAL;
	if (rc == IDP_OK && who->source_address != NULL && who->source_address[0] != '\0' &&
	    audit_event_set(ev, AUDIT_F_SOURCE_ADDRESS, who->source_address) != IDP_OK)
		rc = IDP_EINTERNAL;
	if (rc == IDP_OK && detail != NULL && audit_event_set_detail(ev, detail) == IDP_ETOOBIG) {
		/* A huge capability list: keep the event, name what it left out. */
		json_t *small = json_pack("{s:I,s:b}", "version", (json_int_t)a->version,
		                          "detail_truncated", 1);

		if (audit_event_set_detail(ev, small) != IDP_OK)
			rc = IDP_EINTERNAL;
		json_decref(small);
	}
	json_decref(detail);
	if (rc != IDP_OK) {
		log_error("registry: bug: cannot build the %s event for %s", audit_type_name(type),
		          a->id);
		audit_event_free(ev);
		return rc;
	}
	return audit_emit(ev) == IDP_OK ? IDP_OK : IDP_EUNAVAIL;
}

/*
 * COMMIT; on failure answer 503 and record in the audit log that the event
 * emitted just before describes a change that may not have happened.
 */
static int
commit_or_flag(struct store_conn *c, enum audit_type type, const struct registry_agent *a,
               const struct registry_actor *who)
{
	if (store_cmd(c, "COMMIT") == IDP_OK)
		return IDP_OK;
	log_error("registry: COMMIT failed after the %s event for %s was written",
	          audit_type_name(type), a->id);
	if (emit(type, AUDIT_OUTCOME_ERROR, a, who,
	         json_pack("{s:b,s:s}", "commit_failed", 1, "message",
	                   "the database commit failed after this change was audited; the "
	                   "change may not have been applied")) != IDP_OK)
		log_error("registry: cannot record the failed commit of %s for %s in the audit log",
		          audit_type_name(type), a->id);
	return IDP_EUNAVAIL;
}

static json_t *
strings_json(const char *const *v, size_t n)
{
	json_t *a = json_array();

	for (size_t i = 0; i < n; i++)
		json_array_append_new(a, json_string(v[i]));
	return a;
}

/* ---- reads ---- */

/* Run st with one parameter and build the single record it returns. */
static int
read_one(struct store_conn *c, struct store_stmt *st, const char *id, struct registry_agent **out)
{
	const char *params[1] = {id};
	PGresult *r;
	int rc;

	*out = NULL;
	rc = store_exec(c, st, params, &r);
	if (rc != IDP_OK)
		return rc == IDP_EINVAL ? IDP_ENOTFOUND : rc;
	if (PQntuples(r) == 0) {
		PQclear(r);
		return IDP_ENOTFOUND;
	}
	*out = agent_from_row(r, 0);
	PQclear(r);
	return *out != NULL ? IDP_OK : IDP_EINTERNAL;
}

int
registry_db_get(struct store *st, const char *id, struct registry_agent **out)
{
	struct store_conn *c;
	int rc;

	*out = NULL;
	if (store_acquire(st, &c) != IDP_OK)
		return IDP_EUNAVAIL;
	rc = read_one(c, &st_get, id, out);
	store_release(st, c);
	return rc;
}

int
registry_db_load_all(struct store *st, struct registry_agent ***out, size_t *n)
{
	struct registry_agent **v = NULL;
	size_t len = 0, cap = 0;
	char last[REGISTRY_ID_MAX + 1] = "";
	struct store_conn *c;
	int rc = IDP_OK;

	*out = NULL;
	*n = 0;
	if (store_acquire(st, &c) != IDP_OK)
		return IDP_EUNAVAIL;
	/* Keyset pages, so a large registry never sits in one result.  Pages
	 * are separate snapshots: a row changed between two pages is read in
	 * its newer form or is followed by a notification. */
	for (;;) {
		const char *params[1] = {last};
		PGresult *r;
		int rows;

		rc = store_exec(c, &st_page, params, &r);
		if (rc != IDP_OK)
			break;
		rows = PQntuples(r);
		for (int i = 0; i < rows; i++) {
			struct registry_agent *a = agent_from_row(r, i);

			if (a == NULL)
				continue;
			if (len == cap) {
				cap = cap ? cap * 2 : 1024;
				v = idp_xrealloc(v, cap * sizeof(*v));
			}
			v[len++] = a;
		}
		if (rows > 0)
			snprintf(last, sizeof(last), "%s", PQgetvalue(r, rows - 1, 0));
		PQclear(r);
		if (rows < LOAD_PAGE)
			break;
	}
	store_release(st, c);
	if (rc != IDP_OK) {
		for (size_t i = 0; i < len; i++)
			registry_agent_unref(v[i]);
		free(v);
		return IDP_EUNAVAIL;
	}
	*out = v;
	*n = len;
	return IDP_OK;
}

/* ---- writes ---- */

int
registry_db_create(struct store *st, const json_t *norm, const struct registry_actor *who,
                   struct registry_agent **out)
{
	struct write_params p;
	struct store_conn *c = NULL;
	struct registry_agent *a = NULL;
	PGresult *r = NULL;
	int rc;

	*out = NULL;
	write_params_init(&p, norm);
	if (store_acquire(st, &c) != IDP_OK) {
		rc = IDP_EUNAVAIL;
		goto done;
	}
	rc = store_cmd(c, "BEGIN");
	if (rc != IDP_OK)
		goto done;
	rc = store_exec(c, &st_insert, p.v, &r);
	if (rc != IDP_OK)
		goto done;
	a = agent_from_row(r, 0);
	PQclear(r);
	if (a == NULL) {
		rc = IDP_EINTERNAL;
		goto done;
	}
	rc = emit(AUDIT_AGENT_REGISTERED, AUDIT_OUTCOME_SUCCESS, a, who,
	          json_pack("{s:I,s:o,s:o,s:{s:i,s:s,s:O}}", "version", (json_int_t)a->version,
	                    "capabilities", strings_json(a->capabilities, a->n_capabilities),
	                    "delegate_to", strings_json(a->delegate_to, a->n_delegate_to),
	                    "delegation_constraints", "max_chain_depth", a->max_chain_depth,
	                    "max_scope_per_delegation",
	                    idp_action_class_name(a->max_scope_per_delegation),
	                    "requires_human_approval_for",
	                    json_object_get(json_object_get(norm, "delegation_constraints"),
	                                    "requires_human_approval_for")));
	if (rc != IDP_OK)
		goto done;
	rc = commit_or_flag(c, AUDIT_AGENT_REGISTERED, a, who);
done:
	if (c != NULL)
		store_release(st, c); /* rolls back whatever did not commit */
	write_params_cleanup(&p);
	if (rc != IDP_OK) {
		registry_agent_unref(a);
		return rc;
	}
	*out = a;
	return IDP_OK;
}

/* What a PATCH changed, field by field, for the audit event. */
static json_t *
diff_json(const json_t *before, const json_t *after)
{
	json_t *changes = json_object();
	const char *k;
	json_t *v;

	json_object_foreach((json_t *)after, k, v)
	{
		json_t *old = json_object_get(before, k);

		if (old != NULL && json_equal(old, v))
			continue;
		json_object_set_new(
		    changes, k, json_pack("{s:O,s:O}", "from", old ? old : json_null(), "to", v));
	}
	return changes;
}

int
registry_db_patch(struct store *st, const char *id, const struct registry_if_match *if_match,
                  const json_t *patch, const struct registry_actor *who, json_t *errors,
                  struct registry_agent **out)
{
	struct store_conn *c = NULL;
	struct registry_agent *cur = NULL, *a = NULL;
	json_t *base = NULL, *accepted = NULL, *merged = NULL, *norm = NULL, *changes = NULL;
	size_t refused;
	struct write_params p;
	bool have_params = false;
	PGresult *r;
	int rc;

	*out = NULL;
	if (store_acquire(st, &c) != IDP_OK)
		return IDP_EUNAVAIL;
	rc = store_cmd(c, "BEGIN");
	if (rc != IDP_OK)
		goto done;
	rc = read_one(c, &st_lock, id, &cur);
	if (rc != IDP_OK)
		goto done;
	/* A request that fails without its precondition fails so with it
	 * (RFC 9110 13.2.1): a stale ETag does not hide that the agent is
	 * decommissioned for good. */
	if (cur->status == REGISTRY_DECOMMISSIONED) {
		rc = IDP_ECONFLICT;
		goto done;
	}
	if (!registry_if_match_holds(if_match, cur->version)) {
		rc = IDP_EPRECOND;
		goto done;
	}
	base = agent_writable_json(cur);
	if (base == NULL) {
		rc = IDP_EINTERNAL;
		goto done;
	}
	/* Every problem at once: the members the check refuses are left out
	 * of the merge, and the merged record is validated all the same. */
	accepted = json_object();
	refused = agent_patch_check(patch, base, errors, accepted);
	merged = json_merge_patch(base, accepted);
	norm = agent_input_validate(merged, errors);
	if (refused > 0 || norm == NULL) {
		rc = IDP_EUNPROCESSABLE;
		goto done;
	}
	if (strcmp(json_string_value(json_object_get(norm, "owner")), cur->owner) != 0 &&
	    registry_owner_check(json_string_value(json_object_get(norm, "owner")), errors) !=
	        IDP_OK) {
		rc = json_array_size(errors) > 0 ? IDP_EUNPROCESSABLE : IDP_EUNAVAIL;
		goto done;
	}
	changes = diff_json(base, norm);
	if (json_object_size(changes) == 0) {
		/* Nothing to change: no write, no event, the same version. */
		*out = cur;
		cur = NULL;
		goto done;
	}
	write_params_init(&p, norm);
	have_params = true;
	rc = store_exec(c, &st_update, p.v, &r);
	if (rc != IDP_OK)
		goto done;
	a = PQntuples(r) == 1 ? agent_from_row(r, 0) : NULL;
	PQclear(r);
	if (a == NULL) {
		rc = IDP_EINTERNAL;
		goto done;
	}
	rc = emit(AUDIT_AGENT_UPDATED, AUDIT_OUTCOME_SUCCESS, a, who,
	          json_pack("{s:I,s:I,s:O}", "from_version", (json_int_t)cur->version, "version",
	                    (json_int_t)a->version, "changes", changes));
	if (rc != IDP_OK)
		goto done;
	rc = commit_or_flag(c, AUDIT_AGENT_UPDATED, a, who);
	if (rc == IDP_OK) {
		*out = a;
		a = NULL;
	}
done:
	store_release(st, c);
	if (have_params)
		write_params_cleanup(&p);
	registry_agent_unref(cur);
	registry_agent_unref(a);
	json_decref(base);
	json_decref(accepted);
	json_decref(merged);
	json_decref(norm);
	json_decref(changes);
	return rc;
}

static bool
transition_allowed(enum registry_status from, enum registry_status to)
{
	switch (to) {
	case REGISTRY_SUSPENDED:
		return from == REGISTRY_ACTIVE;
	case REGISTRY_ACTIVE:
		return from == REGISTRY_SUSPENDED;
	case REGISTRY_DECOMMISSIONED:
		return from != REGISTRY_DECOMMISSIONED;
	}
	return false;
}

int
registry_db_transition(struct store_conn *c, const char *id, enum registry_status to,
                       const struct registry_if_match *if_match, const char *reason,
                       const struct registry_actor *who, const struct registry_guard *guard,
                       json_t *errors, enum registry_status *from, struct registry_agent **out)
{
	static const enum audit_type types[] = {
	    [REGISTRY_ACTIVE] = AUDIT_AGENT_RESUMED,
	    [REGISTRY_SUSPENDED] = AUDIT_AGENT_SUSPENDED,
	    [REGISTRY_DECOMMISSIONED] = AUDIT_AGENT_DECOMMISSIONED,
	};
	struct registry_agent *cur = NULL, *a = NULL;
	struct attest_identity_copy idc;
	const char *params[7];
	struct store_stmt *st = &st_status;
	PGresult *r;
	char epoch[32], margin[24];
	int rc;

	*out = NULL;
	rc = store_cmd(c, "BEGIN");
	if (rc != IDP_OK)
		return rc;
	rc = read_one(c, &st_lock, id, &cur);
	if (rc != IDP_OK)
		goto done;
	*from = cur->status;
	/* The conflict first, as in a patch (RFC 9110 13.2.1). */
	if (!transition_allowed(cur->status, to)) {
		rc = IDP_ECONFLICT;
		goto done;
	}
	if (!registry_if_match_holds(if_match, cur->version)) {
		rc = IDP_EPRECOND;
		goto done;
	}
	/* Active again only with someone accountable: the owner a
	 * registration or an owner change would refuse is refused here too. */
	if (to == REGISTRY_ACTIVE) {
		json_t *scratch = errors == NULL ? json_array() : NULL;

		rc = registry_owner_check(cur->owner, errors != NULL ? errors : scratch);
		json_decref(scratch);
		if (rc != IDP_OK)
			goto done;
	}
	/* Used on this instance since the job's flush: the time is only in
	 * memory, which the idle guard's SQL cannot see.  Asked under the row
	 * lock; a token issued after this is cut by the revocation epoch. */
	if (guard != NULL && guard->kind == REGISTRY_GUARD_IDLE && touch_pending(id)) {
		rc = IDP_ECONFLICT;
		goto done;
	}
	params[0] = id;
	params[1] = registry_status_name(to);
	params[2] = who->name;
	params[3] = reason;
	/* Suspending or decommissioning cuts every credential issued so far;
	 * resuming does not bring them back. */
	params[4] = to == REGISTRY_ACTIVE ? "false" : "true";
	/*
	 * The epoch is this statement's time (not the transaction's start:
	 * the row lock may have been waited for) plus identity.leeway, and is
	 * stamped again right before the COMMIT (st_epoch), after the audit
	 * wait.  Until the commit has reached every instance's cache, and
	 * across the skew between PostgreSQL's clock and the iat of idpd's,
	 * tokens may still be issued: stamped before the epoch, they die with
	 * the rest and do not come back on a resume.  The cost: tokens issued
	 * within the leeway after a quick resume are born revoked.
	 */
	attest_identity_get(&idc);
	snprintf(margin, sizeof(margin), "%lld", (long long)idc.leeway_ms);
	params[5] = margin;
	if (guard != NULL) {
		st = guard->kind == REGISTRY_GUARD_IDLE ? &st_status_idle : &st_status_owner;
		params[6] = guard->arg;
	}
	rc = store_exec(c, st, params, &r);
	if (rc != IDP_OK)
		goto done;
	if (guard != NULL && PQntuples(r) == 0) {
		/* Used, or given a new owner, since the job found it. */
		PQclear(r);
		rc = IDP_ECONFLICT;
		goto done;
	}
	a = PQntuples(r) == 1 ? agent_from_row(r, 0) : NULL;
	PQclear(r);
	if (a == NULL) {
		rc = IDP_EINTERNAL;
		goto done;
	}
	idp_time_format(a->revocation_epoch_ms, epoch);
	rc =
	    emit(types[to], AUDIT_OUTCOME_SUCCESS, a, who,
	         json_pack("{s:s,s:s,s:s?,s:I,s:s?}", "from_status",
	                   registry_status_name(cur->status), "to_status", registry_status_name(to),
	                   "reason", reason, "version", (json_int_t)a->version, "revocation_epoch",
	                   a->revocation_epoch_ms > 0 ? epoch : NULL));
	if (rc != IDP_OK)
		goto done;
	if (to != REGISTRY_ACTIVE) {
		/* The event keeps the first stamp, a lower bound of the final one. */
		struct registry_agent *restamped;
		const char *ep[2] = {id, margin};

		rc = store_exec(c, &st_epoch, ep, &r);
		if (rc != IDP_OK)
			goto done;
		restamped = PQntuples(r) == 1 ? agent_from_row(r, 0) : NULL;
		PQclear(r);
		if (restamped == NULL) {
			rc = IDP_EINTERNAL;
			goto done;
		}
		registry_agent_unref(a);
		a = restamped;
	}
	rc = commit_or_flag(c, types[to], a, who);
	if (rc == IDP_OK) {
		*out = a;
		a = NULL;
	}
done:
	if (rc != IDP_OK && store_cmd(c, "ROLLBACK") != IDP_OK)
		log_debug("registry: ROLLBACK failed; the connection is gone");
	registry_agent_unref(cur);
	registry_agent_unref(a);
	return rc;
}
