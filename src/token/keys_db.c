/*
 * keys_db.c - every statement on signing_keys (migrations/0004_keys.sql).
 *
 * Times cross the boundary as integer milliseconds since the epoch and are
 * converted in SQL without floating point, so what the injected clock said
 * is exactly what is stored and read back.  The sealed private key travels
 * as hex text; it is ciphertext, not a secret.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "idpd/log.h"
#include "idpd/store.h"
#include "keys_int.h"

/* The statements read better laid out as SQL than as clang-format wraps them. */
/* clang-format off */
#define MS(col) "(extract(epoch FROM " col ") * 1000)::bigint"
#define TS(p) "('epoch'::timestamptz + " p "::bigint * interval '1 millisecond')"
#define INFO_COLUMNS \
	"kid, state, kek_id, " MS("created_at") ", " MS("activated_at") ", " \
	MS("retiring_at") ", " MS("retire_after") ", " MS("retired_at") ", " MS("not_after")
#define N_INFO_COLUMNS 9

static struct store_stmt st_lock = {
	"keys_lock",
	"SELECT pg_advisory_xact_lock($1::bigint)",
	1, 0};
static struct store_stmt st_live = {
	"keys_live",
	"SELECT " INFO_COLUMNS ", public_jwk::text, encode(private_sealed, 'hex') "
	"FROM signing_keys WHERE state <> 'retired' ORDER BY id",
	0, 0};
static struct store_stmt st_list = {
	"keys_list",
	"SELECT " INFO_COLUMNS " FROM signing_keys ORDER BY id DESC LIMIT $1::integer",
	1, 0};
static struct store_stmt st_insert = {
	"keys_insert",
	"INSERT INTO signing_keys (kid, state, public_jwk, private_sealed, kek_id, "
	"created_at, activated_at, not_after) "
	"VALUES ($1, $2, $3::jsonb, decode($4, 'hex'), $5, " TS("$6") ", "
	"CASE WHEN $7::bigint = 0 THEN NULL ELSE " TS("$7") " END, " TS("$8") ")",
	8, 0};
static struct store_stmt st_promote = {
	"keys_promote",
	"UPDATE signing_keys SET state = 'active', activated_at = " TS("$2") " "
	"WHERE kid = $1 AND state = 'next'",
	2, 0};
static struct store_stmt st_demote = {
	"keys_demote",
	"UPDATE signing_keys SET state = 'retiring', retiring_at = " TS("$2") ", "
	"retire_after = " TS("$3") " WHERE kid = $1 AND state = 'active'",
	3, 0};
static struct store_stmt st_reseal = {
	"keys_reseal",
	"UPDATE signing_keys SET private_sealed = decode($2, 'hex'), kek_id = $3 "
	"WHERE kid = $1 AND kek_id = $4 AND state <> 'retired'",
	4, 0};
static struct store_stmt st_retire = {
	"keys_retire",
	"UPDATE signing_keys SET state = 'retired', retired_at = " TS("$2") ", "
	"private_sealed = NULL WHERE kid = $1 AND state <> 'retired'",
	2, 0};
/* clang-format on */

int
keys_db_lock(struct store_conn *c)
{
	char key[32];
	const char *params[1] = {key};
	PGresult *r;
	int rc;

	snprintf(key, sizeof(key), "%lld", (long long)KEYS_LOCK_KEY);
	rc = store_exec(c, &st_lock, params, &r);
	PQclear(r);
	return rc;
}

static int64_t
get_ms(const PGresult *r, int row, int col)
{
	if (PQgetisnull(r, row, col))
		return 0;
	return strtoll(PQgetvalue(r, row, col), NULL, 10);
}

/* The first N_INFO_COLUMNS columns of row into info; IDP_EINTERNAL for a value idpd never writes.
 */
static int
get_info(const PGresult *r, int row, struct keys_info *info)
{
	const char *kid = PQgetvalue(r, row, 0), *kek = PQgetvalue(r, row, 2);
	int state = keys_state_parse(PQgetvalue(r, row, 1));

	memset(info, 0, sizeof(*info));
	if (state < 0 || strlen(kid) >= sizeof(info->kid) || strlen(kek) >= sizeof(info->kek_id)) {
		log_error("keys: signing_keys holds a row idpd cannot have written");
		return IDP_EINTERNAL;
	}
	snprintf(info->kid, sizeof(info->kid), "%s", kid);
	snprintf(info->kek_id, sizeof(info->kek_id), "%s", kek);
	info->state = (enum keys_state)state;
	info->created_ms = get_ms(r, row, 3);
	info->activated_ms = get_ms(r, row, 4);
	info->retiring_ms = get_ms(r, row, 5);
	info->retire_after_ms = get_ms(r, row, 6);
	info->retired_ms = get_ms(r, row, 7);
	info->not_after_ms = get_ms(r, row, 8);
	return IDP_OK;
}

static int
hex_value(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

/* Lower-case hex (as encode(..., 'hex') writes it) into a new buffer. */
static int
hex_decode(const char *hex, unsigned char **out, size_t *len)
{
	size_t n = strlen(hex);

	*out = NULL;
	*len = 0;
	if (n % 2 != 0)
		return IDP_EINTERNAL;
	*out = idp_xmalloc(n / 2 + 1);
	for (size_t i = 0; i < n / 2; i++) {
		int hi = hex_value(hex[2 * i]), lo = hex_value(hex[2 * i + 1]);

		if (hi < 0 || lo < 0) {
			free(*out);
			*out = NULL;
			return IDP_EINTERNAL;
		}
		(*out)[i] = (unsigned char)(hi << 4 | lo);
	}
	*len = n / 2;
	return IDP_OK;
}

static char *
hex_encode(const unsigned char *p, size_t n)
{
	static const char digits[] = "0123456789abcdef";
	char *s = idp_xmalloc(2 * n + 1);

	for (size_t i = 0; i < n; i++) {
		s[2 * i] = digits[p[i] >> 4];
		s[2 * i + 1] = digits[p[i] & 15];
	}
	s[2 * n] = '\0';
	return s;
}

int
keys_db_read_live(struct store_conn *c, struct keys_row **rows, size_t *n)
{
	struct keys_row *out;
	PGresult *r;
	int rc, nt;

	*rows = NULL;
	*n = 0;
	rc = store_exec(c, &st_live, NULL, &r);
	if (rc != IDP_OK)
		return rc;
	nt = PQntuples(r);
	out = idp_xcalloc(nt > 0 ? (size_t)nt : 1, sizeof(*out));
	for (int i = 0; i < nt; i++) {
		rc = get_info(r, i, &out[i].info);
		if (rc != IDP_OK)
			break;
		out[i].public_jwk = idp_xstrdup(PQgetvalue(r, i, N_INFO_COLUMNS));
		if (!PQgetisnull(r, i, N_INFO_COLUMNS + 1)) {
			rc = hex_decode(PQgetvalue(r, i, N_INFO_COLUMNS + 1), &out[i].sealed,
			                &out[i].sealed_len);
			if (rc != IDP_OK)
				break;
		}
	}
	PQclear(r);
	if (rc != IDP_OK) {
		keys_rows_free(out, (size_t)nt);
		return rc;
	}
	*rows = out;
	*n = (size_t)nt;
	return IDP_OK;
}

int
keys_db_list(struct store_conn *c, int limit, struct keys_info **out, size_t *n)
{
	char lim[16];
	const char *params[1] = {lim};
	PGresult *r;
	int rc, nt;

	*out = NULL;
	*n = 0;
	snprintf(lim, sizeof(lim), "%d", limit);
	rc = store_exec(c, &st_list, params, &r);
	if (rc != IDP_OK)
		return rc;
	nt = PQntuples(r);
	*out = idp_xcalloc(nt > 0 ? (size_t)nt : 1, sizeof(**out));
	for (int i = 0; i < nt && rc == IDP_OK; i++)
		rc = get_info(r, i, &(*out)[i]);
	PQclear(r);
	if (rc != IDP_OK) {
		free(*out);
		*out = NULL;
		return rc;
	}
	*n = (size_t)nt;
	return IDP_OK;
}

/* An UPDATE that must touch exactly one row: anything else means the table moved under us. */
static int
exec_one(struct store_conn *c, struct store_stmt *st, const char *const *params)
{
	PGresult *r;
	int rc = store_exec(c, st, params, &r);

	if (rc != IDP_OK)
		return rc;
	if (strcmp(PQcmdTuples(r), "1") != 0) {
		log_error("keys: %s changed %s row(s) instead of one", st->name, PQcmdTuples(r));
		rc = IDP_ECONFLICT;
	}
	PQclear(r);
	return rc;
}

int
keys_db_insert(struct store_conn *c, const struct keys_info *info, const char *public_jwk,
               const unsigned char *sealed, size_t sealed_len)
{
	char created[24], activated[24], not_after[24];
	char *hex = hex_encode(sealed, sealed_len);
	const char *params[8] = {info->kid,    keys_state_name(info->state),
	                         public_jwk,   hex,
	                         info->kek_id, created,
	                         activated,    not_after};
	int rc;

	snprintf(created, sizeof(created), "%lld", (long long)info->created_ms);
	snprintf(activated, sizeof(activated), "%lld", (long long)info->activated_ms);
	snprintf(not_after, sizeof(not_after), "%lld", (long long)info->not_after_ms);
	rc = exec_one(c, &st_insert, params);
	free(hex);
	return rc;
}

int
keys_db_promote(struct store_conn *c, const char *kid, int64_t now_ms)
{
	char now[24];
	const char *params[2] = {kid, now};

	snprintf(now, sizeof(now), "%lld", (long long)now_ms);
	return exec_one(c, &st_promote, params);
}

int
keys_db_demote(struct store_conn *c, const char *kid, int64_t now_ms, int64_t retire_after_ms)
{
	char now[24], until[24];
	const char *params[3] = {kid, now, until};

	snprintf(now, sizeof(now), "%lld", (long long)now_ms);
	snprintf(until, sizeof(until), "%lld", (long long)retire_after_ms);
	return exec_one(c, &st_demote, params);
}

int
keys_db_reseal(struct store_conn *c, const char *kid, const unsigned char *sealed,
               size_t sealed_len, const char *kek_id, const char *old_kek_id)
{
	char *hex = hex_encode(sealed, sealed_len);
	const char *params[4] = {kid, hex, kek_id, old_kek_id};
	int rc = exec_one(c, &st_reseal, params);

	free(hex);
	return rc;
}

int
keys_db_retire(struct store_conn *c, const char *kid, int64_t now_ms)
{
	char now[24];
	const char *params[2] = {kid, now};

	snprintf(now, sizeof(now), "%lld", (long long)now_ms);
	return exec_one(c, &st_retire, params);
}
