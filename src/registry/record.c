/*
 * record.c - the immutable agent record: built from a PostgreSQL row in one
 * allocation, shared by reference count, rendered as the API's JSON.
 *
 * The JSON is written by hand rather than through jansson: GET by id is the
 * registry's hot path, and building a jansson tree for every response would
 * cost more than the rest of the request.  Every string in a record passed
 * validation (no control characters), but the writer escapes as if it had
 * not, since a row can also be written by hand.
 */
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "idpd/clock.h"
#include "idpd/log.h"
#include "registry_int.h"

struct agent_box {
	_Atomic int refs;
	struct registry_agent a;
	/* strings and pointer arrays follow in the same allocation */
	max_align_t data[];
};

static struct agent_box *
box_of(const struct registry_agent *a)
{
	return (struct agent_box *)(void *)((char *)(uintptr_t)a - offsetof(struct agent_box, a));
}

const struct registry_agent *
registry_agent_ref(const struct registry_agent *a)
{
	if (a != NULL)
		atomic_fetch_add_explicit(&box_of(a)->refs, 1, memory_order_relaxed);
	return a;
}

void
registry_agent_unref(const struct registry_agent *a)
{
	struct agent_box *b;

	if (a == NULL)
		return;
	b = box_of(a);
	if (atomic_fetch_sub_explicit(&b->refs, 1, memory_order_acq_rel) == 1)
		free(b);
}

bool
registry_issued_before_revocation(const struct registry_agent *a, int64_t issued_at_s)
{
	if (a->revocation_epoch_ms <= 0)
		return false;
	/* iat has whole seconds: a token from the revocation's own second
	 * may predate it, so it is treated as revoked. */
	return issued_at_s <= a->revocation_epoch_ms / 1000;
}

bool
registry_agent_can(const struct registry_agent *a, const char *scope)
{
	return scope_within(scope, a->capabilities, a->n_capabilities);
}

/* ---- building from a row ---- */

/* A bump allocator over the record's single block. */
struct bump {
	char *p, *end;
};

static void *
bump_alloc(struct bump *b, size_t n, size_t align)
{
	uintptr_t at = ((uintptr_t)b->p + (align - 1)) & ~(uintptr_t)(align - 1);

	if (at + n > (uintptr_t)b->end)
		abort(); /* the size computation below is wrong: a bug */
	b->p = (char *)at + n;
	return (void *)at;
}

static const char *
bump_str(struct bump *b, const char *s)
{
	size_t n = strlen(s) + 1;
	char *d = bump_alloc(b, n, 1);

	memcpy(d, s, n);
	return d;
}

static size_t
count_lines(const char *s)
{
	size_t n = 1;

	if (*s == '\0')
		return 0;
	for (; *s != '\0'; s++)
		if (*s == '\n')
			n++;
	return n;
}

/* Split the '\n'-joined array text s into a pointer array in the block. */
static const char *const *
bump_lines(struct bump *b, const char *s, size_t *n_out)
{
	size_t n = count_lines(s), i = 0;
	const char **v = bump_alloc(b, (n + 1) * sizeof(char *), sizeof(char *));
	char *copy = bump_alloc(b, strlen(s) + 1, 1), *p = copy;

	memcpy(copy, s, strlen(s) + 1);
	while (i < n) {
		char *nl = strchr(p, '\n');

		v[i++] = p;
		if (nl == NULL)
			break;
		*nl = '\0';
		p = nl + 1;
	}
	v[n] = NULL;
	*n_out = n;
	return v;
}

static const char *
col(const PGresult *r, int row, int c)
{
	return PQgetisnull(r, row, c) ? NULL : PQgetvalue(r, row, c);
}

static int64_t
col_i64(const PGresult *r, int row, int c)
{
	return PQgetisnull(r, row, c) ? 0 : strtoll(PQgetvalue(r, row, c), NULL, 10);
}

enum {
	C_ID,
	C_TYPE,
	C_VERSION_S,
	C_MODEL,
	C_DEPLOYMENT,
	C_OWNER,
	C_TEAM,
	C_CREATED,
	C_LAST_ACTIVE,
	C_STATUS,
	C_CAPS,
	C_DELEGATE_TO,
	C_DEPTH,
	C_MAX_SCOPE,
	C_APPROVAL,
	C_CRED_TYPE,
	C_ROTATION,
	C_LAST_ROTATED,
	C_DOMAINS,
	C_ENV,
	C_SELECTORS,
	C_LABELS,
	C_VERSION,
	C_UPDATED,
	C_EPOCH,
	C_CHANGED_AT,
	C_CHANGED_BY,
	C_REASON,
};

struct registry_agent *
agent_from_row(const PGresult *r, int row)
{
	static const int strs[] = {C_ID,         C_TYPE,       C_VERSION_S, C_MODEL,
	                           C_DEPLOYMENT, C_OWNER,      C_TEAM,      C_CRED_TYPE,
	                           C_ENV,        C_CHANGED_BY, C_REASON};
	/* Every array bump_lines copies below: one left out here overruns the
	 * block (bump_alloc aborts) once its size passes the slack. */
	static const int arrays[] = {C_CAPS, C_DELEGATE_TO, C_DOMAINS, C_SELECTORS, C_APPROVAL};
	const char *id = col(r, row, C_ID), *labels_text = col(r, row, C_LABELS);
	json_t *labels = NULL;
	size_t size = sizeof(struct agent_box) + 64, n;
	struct agent_box *box;
	struct registry_agent *a;
	struct bump b;
	int st, cls;
	const char *k;
	json_t *v;

	if (PQnfields(r) != AGENT_NCOLUMNS || id == NULL)
		return NULL;
	st = registry_status_parse(col(r, row, C_STATUS));
	cls = idp_action_class_parse(col(r, row, C_MAX_SCOPE) ? col(r, row, C_MAX_SCOPE) : "");
	if (labels_text != NULL && strcmp(labels_text, "{}") != 0)
		labels = json_loads(labels_text, 0, NULL);
	if (st < 0 || cls < 0 || col(r, row, C_TYPE) == NULL || col(r, row, C_OWNER) == NULL ||
	    col(r, row, C_CAPS) == NULL ||
	    (labels_text != NULL && strcmp(labels_text, "{}") != 0 && !json_is_object(labels))) {
		log_warn("registry: agent %.128s has a row idpd cannot read; it is left out", id);
		json_decref(labels);
		return NULL;
	}

	/* Size every piece first, then copy into one block. */
	for (size_t i = 0; i < IDP_ARRAY_LEN(strs); i++)
		if (col(r, row, strs[i]) != NULL)
			size += strlen(col(r, row, strs[i])) + 1;
	for (size_t i = 0; i < IDP_ARRAY_LEN(arrays); i++) {
		const char *s = col(r, row, arrays[i]) ? col(r, row, arrays[i]) : "";

		size += strlen(s) + 1 + (count_lines(s) + 1) * sizeof(char *) + sizeof(char *);
	}
	json_object_foreach(labels, k, v)
	{
		size += sizeof(struct registry_label) + strlen(k) + 1 +
		        strlen(json_string_value(v) ? json_string_value(v) : "") + 1;
	}
	size += sizeof(struct registry_label) + sizeof(char *); /* the terminator, the alignment */

	box = idp_xcalloc(1, size);
	atomic_init(&box->refs, 1);
	a = &box->a;
	b.p = (char *)box->data;
	b.end = (char *)box + size;

#define STR(c) (col(r, row, c) != NULL ? bump_str(&b, col(r, row, c)) : NULL)
	a->id = STR(C_ID);
	a->agent_type = STR(C_TYPE);
	a->agent_version = STR(C_VERSION_S);
	a->model = STR(C_MODEL);
	a->deployment = STR(C_DEPLOYMENT);
	a->owner = STR(C_OWNER);
	a->team = STR(C_TEAM);
	a->credential_type = STR(C_CRED_TYPE);
	a->environment = STR(C_ENV);
	a->status_changed_by = STR(C_CHANGED_BY);
	a->status_reason = STR(C_REASON);
#undef STR
	a->capabilities = bump_lines(&b, col(r, row, C_CAPS), &a->n_capabilities);
	a->delegate_to = bump_lines(
	    &b, col(r, row, C_DELEGATE_TO) ? col(r, row, C_DELEGATE_TO) : "", &a->n_delegate_to);
	a->domains =
	    bump_lines(&b, col(r, row, C_DOMAINS) ? col(r, row, C_DOMAINS) : "", &a->n_domains);
	a->attestation_selectors =
	    bump_lines(&b, col(r, row, C_SELECTORS) ? col(r, row, C_SELECTORS) : "",
	               &a->n_attestation_selectors);
	{
		struct registry_label *l =
		    bump_alloc(&b, (json_object_size(labels) + 1) * sizeof(*l), sizeof(char *));

		n = 0;
		json_object_foreach(labels, k, v)
		{
			l[n].key = bump_str(&b, k);
			l[n].value = bump_str(&b, json_string_value(v) ? json_string_value(v) : "");
			n++;
		}
		a->labels = l;
		a->n_labels = n;
	}
	json_decref(labels);

	a->created_ms = col_i64(r, row, C_CREATED);
	a->last_active_ms = col_i64(r, row, C_LAST_ACTIVE);
	a->status = (enum registry_status)st;
	a->max_chain_depth = (int)col_i64(r, row, C_DEPTH);
	a->max_scope_per_delegation = (enum idp_action_class)cls;
	{
		size_t na;
		const char *const *ap =
		    bump_lines(&b, col(r, row, C_APPROVAL) ? col(r, row, C_APPROVAL) : "", &na);

		for (size_t i = 0; i < na; i++) {
			int c = idp_action_class_parse(ap[i]);

			if (c >= 0)
				a->requires_human_approval_for |= 1u << c;
		}
	}
	a->credential_rotation_ms = col_i64(r, row, C_ROTATION);
	a->credential_last_rotated_ms = col_i64(r, row, C_LAST_ROTATED);
	a->version = col_i64(r, row, C_VERSION);
	a->updated_ms = col_i64(r, row, C_UPDATED);
	a->revocation_epoch_ms = col_i64(r, row, C_EPOCH);
	a->status_changed_ms = col_i64(r, row, C_CHANGED_AT);
	return a;
}

/* ---- JSON ---- */

void
registry_duration_format(int64_t ms, char out[32])
{
	static const struct {
		int64_t ms;
		const char *unit;
	} units[] = {{86400000, "d"}, {3600000, "h"}, {60000, "m"}, {1000, "s"}};

	for (size_t i = 0; i < IDP_ARRAY_LEN(units); i++) {
		if (ms != 0 && ms % units[i].ms == 0) {
			snprintf(out, 32, "%lld%s", (long long)(ms / units[i].ms), units[i].unit);
			return;
		}
	}
	snprintf(out, 32, "%lldms", (long long)ms);
}

static int
put_str(struct idp_buf *o, const char *s)
{
	static const char hex[] = "0123456789abcdef";
	const char *run = s;
	int rc = 0;

	if (s == NULL)
		return idp_buf_puts(o, "null");
	rc |= idp_buf_putc(o, '"');
	for (; *s != '\0'; s++) {
		unsigned char c = (unsigned char)*s;

		if (c >= 0x20 && c != '"' && c != '\\')
			continue;
		rc |= idp_buf_append(o, run, (size_t)(s - run));
		if (c == '"' || c == '\\') {
			char esc[2] = {'\\', (char)c};

			rc |= idp_buf_append(o, esc, 2);
		} else {
			char esc[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};

			rc |= idp_buf_append(o, esc, 6);
		}
		run = s + 1;
	}
	rc |= idp_buf_append(o, run, (size_t)(s - run));
	rc |= idp_buf_putc(o, '"');
	return rc;
}

/*
 * "2026-03-27T14:15:23.456Z" for ms since the epoch, the same text as
 * idp_time_format() but without gmtime_r and strftime: GET by id renders four
 * of these per response.  Days to a civil date by the inverse of H. Hinnant's
 * days_from_civil, exact for every date idpd stores (1970..9999).
 */
IDP_STATIC void
registry_format_time(int64_t ms, char out[25])
{
	int64_t days = ms / 86400000, rem = ms % 86400000, z, era, doe, yoe, y, doy, mp, d, m;
	int hh = (int)(rem / 3600000), mm = (int)(rem / 60000 % 60), ss = (int)(rem / 1000 % 60),
	    mss = (int)(rem % 1000);

	z = days + 719468;
	era = z / 146097;
	doe = z - era * 146097;
	yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
	y = yoe + era * 400;
	doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
	mp = (5 * doy + 2) / 153;
	d = doy - (153 * mp + 2) / 5 + 1;
	m = mp < 10 ? mp + 3 : mp - 9;
	y += m <= 2;
	out[0] = (char)('0' + y / 1000 % 10);
	out[1] = (char)('0' + y / 100 % 10);
	out[2] = (char)('0' + y / 10 % 10);
	out[3] = (char)('0' + y % 10);
	out[4] = '-';
	out[5] = (char)('0' + m / 10);
	out[6] = (char)('0' + m % 10);
	out[7] = '-';
	out[8] = (char)('0' + d / 10);
	out[9] = (char)('0' + d % 10);
	out[10] = 'T';
	out[11] = (char)('0' + hh / 10);
	out[12] = (char)('0' + hh % 10);
	out[13] = ':';
	out[14] = (char)('0' + mm / 10);
	out[15] = (char)('0' + mm % 10);
	out[16] = ':';
	out[17] = (char)('0' + ss / 10);
	out[18] = (char)('0' + ss % 10);
	out[19] = '.';
	out[20] = (char)('0' + mss / 100);
	out[21] = (char)('0' + mss / 10 % 10);
	out[22] = (char)('0' + mss % 10);
	out[23] = 'Z';
	out[24] = '\0';
}

static int
put_time(struct idp_buf *o, int64_t ms)
{
	char t[27];

	if (ms <= 0 || ms > INT64_C(253402300799999))
		return idp_buf_puts(o, "null");
	t[0] = '"';
	registry_format_time(ms, t + 1);
	t[25] = '"';
	t[26] = '\0';
	return idp_buf_append(o, t, 26);
}

static int
put_int(struct idp_buf *o, int64_t v)
{
	char d[24];
	size_t i = sizeof(d);
	uint64_t u = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;

	do {
		d[--i] = (char)('0' + u % 10);
		u /= 10;
	} while (u != 0);
	if (v < 0)
		d[--i] = '-';
	return idp_buf_append(o, d + i, sizeof(d) - i);
}

static int
put_list(struct idp_buf *o, const char *const *v, size_t n)
{
	int rc = idp_buf_putc(o, '[');

	for (size_t i = 0; i < n; i++) {
		if (i > 0)
			rc |= idp_buf_putc(o, ',');
		rc |= put_str(o, v[i]);
	}
	return rc | idp_buf_putc(o, ']');
}

static int
put_classes(struct idp_buf *o, unsigned mask)
{
	int rc = idp_buf_putc(o, '[');
	bool first = true;

	for (int c = 0; c < IDP_ACTION_COUNT; c++) {
		if (!(mask & (1u << c)))
			continue;
		if (!first)
			rc |= idp_buf_putc(o, ',');
		rc |= put_str(o, idp_action_class_name((enum idp_action_class)c));
		first = false;
	}
	return rc | idp_buf_putc(o, ']');
}

int
agent_render(const struct registry_agent *a, struct idp_buf *o)
{
	char rot[32];
	int rc = 0;

	rc |= idp_buf_puts(o, "{\"id\":");
	rc |= put_str(o, a->id);
	rc |= idp_buf_puts(o, ",\"agent_type\":");
	rc |= put_str(o, a->agent_type);
	rc |= idp_buf_puts(o, ",\"agent_version\":");
	rc |= put_str(o, a->agent_version);
	rc |= idp_buf_puts(o, ",\"model\":");
	rc |= put_str(o, a->model);
	rc |= idp_buf_puts(o, ",\"deployment\":");
	rc |= put_str(o, a->deployment);
	rc |= idp_buf_puts(o, ",\"owner\":");
	rc |= put_str(o, a->owner);
	rc |= idp_buf_puts(o, ",\"team\":");
	rc |= put_str(o, a->team);
	rc |= idp_buf_puts(o, ",\"created_at\":");
	rc |= put_time(o, a->created_ms);
	rc |= idp_buf_puts(o, ",\"last_active\":");
	rc |= put_time(o, a->last_active_ms);
	rc |= idp_buf_puts(o, ",\"status\":");
	rc |= put_str(o, registry_status_name(a->status));
	rc |= idp_buf_puts(o, ",\"capabilities\":");
	rc |= put_list(o, a->capabilities, a->n_capabilities);
	rc |= idp_buf_puts(o, ",\"delegate_to\":");
	rc |= put_list(o, a->delegate_to, a->n_delegate_to);
	rc |= idp_buf_puts(o, ",\"delegation_constraints\":{\"max_chain_depth\":");
	rc |= put_int(o, a->max_chain_depth);
	rc |= idp_buf_puts(o, ",\"max_scope_per_delegation\":");
	rc |= put_str(o, idp_action_class_name(a->max_scope_per_delegation));
	rc |= idp_buf_puts(o, ",\"requires_human_approval_for\":");
	rc |= put_classes(o, a->requires_human_approval_for);
	registry_duration_format(a->credential_rotation_ms, rot);
	rc |= idp_buf_puts(o, "},\"credential\":{\"type\":");
	rc |= put_str(o, a->credential_type);
	rc |= idp_buf_puts(o, ",\"rotation\":");
	rc |= put_str(o, rot);
	rc |= idp_buf_puts(o, ",\"last_rotated\":");
	rc |= put_time(o, a->credential_last_rotated_ms);
	rc |= idp_buf_puts(o, "},\"domains\":");
	rc |= put_list(o, a->domains, a->n_domains);
	rc |= idp_buf_puts(o, ",\"environment\":");
	rc |= put_str(o, a->environment);
	rc |= idp_buf_puts(o, ",\"attestation_selectors\":");
	rc |= put_list(o, a->attestation_selectors, a->n_attestation_selectors);
	rc |= idp_buf_puts(o, ",\"labels\":{");
	for (size_t i = 0; i < a->n_labels; i++) {
		if (i > 0)
			rc |= idp_buf_putc(o, ',');
		rc |= put_str(o, a->labels[i].key);
		rc |= idp_buf_putc(o, ':');
		rc |= put_str(o, a->labels[i].value);
	}
	rc |= idp_buf_puts(o, "},\"version\":");
	rc |= put_int(o, a->version);
	rc |= idp_buf_puts(o, ",\"updated_at\":");
	rc |= put_time(o, a->updated_ms);
	rc |= idp_buf_puts(o, ",\"revocation_epoch\":");
	rc |= put_time(o, a->revocation_epoch_ms);
	rc |= idp_buf_puts(o, ",\"status_changed\":");
	if (a->status_changed_ms > 0) {
		rc |= idp_buf_puts(o, "{\"at\":");
		rc |= put_time(o, a->status_changed_ms);
		rc |= idp_buf_puts(o, ",\"by\":");
		rc |= put_str(o, a->status_changed_by);
		rc |= idp_buf_puts(o, ",\"reason\":");
		rc |= put_str(o, a->status_reason);
		rc |= idp_buf_putc(o, '}');
	} else {
		rc |= idp_buf_puts(o, "null");
	}
	rc |= idp_buf_putc(o, '}');
	return rc != 0 ? IDP_ETOOBIG : IDP_OK;
}

json_t *
agent_writable_json(const struct registry_agent *a)
{
	static const char *const drop[] = {"created_at",    "last_active", "status",
	                                   "version",       "updated_at",  "revocation_epoch",
	                                   "status_changed"};
	struct idp_buf b;
	json_t *j, *cred;

	idp_buf_init(&b, 0);
	if (agent_render(a, &b) != IDP_OK) {
		idp_buf_cleanup(&b);
		return NULL;
	}
	j = json_loads(idp_buf_str(&b), 0, NULL);
	idp_buf_cleanup(&b);
	if (j == NULL)
		return NULL;
	for (size_t i = 0; i < IDP_ARRAY_LEN(drop); i++)
		json_object_del(j, drop[i]);
	cred = json_object_get(j, "credential");
	if (cred != NULL)
		json_object_del(cred, "last_rotated");
	return j;
}
