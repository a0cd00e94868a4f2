/*
 * migrate.c - apply migrations/NNNN_name.sql in order, once each.
 *
 * Each file runs in its own transaction together with its row in
 * schema_migrations, so a migration is either wholly applied and recorded
 * or not at all.  A session-level advisory lock serializes runners: two
 * idpd instances starting together apply each file once.  Files are the
 * project's own SQL, run with the simple query protocol (several statements
 * per file); nothing from a request ever reaches this path.
 */
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/sha.h>

#include "idpd/log.h"
#include "idpd/store.h"
#include "store_int.h"

/* pg_advisory_lock key: "idpd" as a 32-bit integer. */
#define MIGRATION_LOCK_KEY "1768189796"
#define MAX_MIGRATIONS 1000
#define MAX_FILE (1 << 20)

struct migration {
	int version;
	char name[256];
};

static int
cmp_migration(const void *a, const void *b)
{
	return ((const struct migration *)a)->version - ((const struct migration *)b)->version;
}

/* "0001_init.sql" -> version 1; -1 for names that are not migrations. */
static int
parse_name(const char *name)
{
	size_t n = strlen(name);
	int v = 0;

	if (n < 10 || strcmp(name + n - 4, ".sql") != 0 || name[4] != '_')
		return -1;
	for (int i = 0; i < 4; i++) {
		if (name[i] < '0' || name[i] > '9')
			return -1;
		v = v * 10 + (name[i] - '0');
	}
	for (size_t i = 5; i < n - 4; i++) {
		char c = name[i];

		if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_'))
			return -1;
	}
	return v > 0 ? v : -1;
}

static int
list_migrations(const char *dir, struct migration **out, int *n_out, struct idp_diag *diag)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	struct migration *m;
	int n = 0;

	*out = NULL;
	*n_out = 0;
	if (d == NULL) {
		char eb[128];

		idp_diag_add(diag, "%s: %s", dir, idp_strerror(errno, eb, sizeof(eb)));
		return IDP_EIO;
	}
	m = idp_xcalloc(MAX_MIGRATIONS, sizeof(*m));
	while ((e = readdir(d)) != NULL) {
		int v = parse_name(e->d_name);
		size_t len = strlen(e->d_name);

		/* A .sql file that is not named as a migration would be skipped
		 * without a word, and the schema reported current without it. */
		if (v < 0 && len >= 4 && strcmp(e->d_name + len - 4, ".sql") == 0) {
			idp_diag_add(
			    diag, "%s: %s is not named as a migration (NNNN_lower_case_name.sql)",
			    dir, e->d_name);
			closedir(d);
			free(m);
			return IDP_EINVAL;
		}
		if (v < 0)
			continue;
		if (n == MAX_MIGRATIONS) {
			idp_diag_add(diag, "%s: more than %d migrations", dir, MAX_MIGRATIONS);
			closedir(d);
			free(m);
			return IDP_ETOOBIG;
		}
		m[n].version = v;
		snprintf(m[n].name, sizeof(m[n].name), "%s", e->d_name);
		n++;
	}
	closedir(d);
	qsort(m, (size_t)n, sizeof(*m), cmp_migration);
	for (int i = 1; i < n; i++) {
		if (m[i].version == m[i - 1].version) {
			idp_diag_add(diag, "%s: %s and %s have the same version", dir,
			             m[i - 1].name, m[i].name);
			free(m);
			return IDP_EINVAL;
		}
	}
	*out = m;
	*n_out = n;
	return IDP_OK;
}

int
store_migrations_latest(const char *dir, struct idp_diag *diag)
{
	struct migration *m;
	int n, v;

	if (list_migrations(dir, &m, &n, diag) != IDP_OK)
		return -1;
	v = n > 0 ? m[n - 1].version : 0;
	free(m);
	return v;
}

static char *
read_file(const char *path, size_t *len, struct idp_diag *diag)
{
	FILE *f = fopen(path, "rb");
	char *buf;
	size_t n;

	if (f == NULL) {
		char eb[128];

		idp_diag_add(diag, "%s: %s", path, idp_strerror(errno, eb, sizeof(eb)));
		return NULL;
	}
	buf = idp_xmalloc(MAX_FILE + 1);
	n = fread(buf, 1, MAX_FILE + 1, f);
	fclose(f);
	if (n > MAX_FILE) {
		idp_diag_add(diag, "%s: larger than %d bytes", path, MAX_FILE);
		free(buf);
		return NULL;
	}
	buf[n] = '\0';
	*len = n;
	return buf;
}

static void
sha256_hex(const char *data, size_t len, char out[65])
{
	static const char hex[] = "0123456789abcdef";
	unsigned char md[SHA256_DIGEST_LENGTH];

	SHA256((const unsigned char *)data, len, md);
	for (int i = 0; i < SHA256_DIGEST_LENGTH; i++) {
		out[2 * i] = hex[md[i] >> 4];
		out[2 * i + 1] = hex[md[i] & 15];
	}
	out[64] = '\0';
}

static bool
exec_ok(PGconn *pg, const char *sql, const char *what, struct idp_diag *diag)
{
	PGresult *r = PQexec(pg, sql);
	ExecStatusType st = PQresultStatus(r);
	bool ok = st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK;

	if (!ok) {
		const char *msg = PQresultErrorMessage(r);

		idp_diag_add(diag, "%s: %.*s", what, (int)strcspn(msg, "\n"), msg);
	}
	PQclear(r);
	return ok;
}

/* Whether SIGTERM or SIGINT waits for this thread (idpd serve blocks them). */
static bool
stop_pending(void)
{
	sigset_t p;

	return sigpending(&p) == 0 &&
	       (sigismember(&p, SIGTERM) == 1 || sigismember(&p, SIGINT) == 1);
}

/*
 * The migration lock, tried every 200 ms rather than waited for in one
 * call: a stop asked for meanwhile (idpd serve --migrate under systemctl
 * stop, another instance migrating for long) ends the wait instead of
 * being ignored until the lock comes.
 */
static int
lock_or_stop(PGconn *pg, struct idp_diag *diag)
{
	for (int tries = 0;; tries++) {
		PGresult *r = PQexec(pg, "SELECT pg_try_advisory_lock(" MIGRATION_LOCK_KEY ")");
		bool ok = PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1;
		bool got = ok && strcmp(PQgetvalue(r, 0, 0), "t") == 0;

		if (!ok) {
			const char *msg = PQresultErrorMessage(r);

			idp_diag_add(diag, "advisory lock: %.*s", (int)strcspn(msg, "\n"), msg);
		}
		PQclear(r);
		if (!ok)
			return IDP_EINTERNAL;
		if (got)
			return IDP_OK;
		if (stop_pending()) {
			idp_diag_add(diag, "stopped while waiting for another migration to finish");
			return IDP_EWOULDBLOCK;
		}
		if (tries % 50 == 0)
			log_info("migrate: another idpd holds the migration lock; waiting");
		nanosleep(&(struct timespec){0, 200 * 1000000L}, NULL);
	}
}

int
store_migrate(const char *url, const char *dir, int *applied, struct idp_diag *diag)
{
	struct migration *m = NULL;
	PGconn *pg = NULL;
	PGresult *r = NULL;
	char err[256];
	int n = 0, rc = IDP_EINTERNAL, count = 0;
	bool locked = false;

	if (applied != NULL)
		*applied = 0;
	rc = list_migrations(dir, &m, &n, diag);
	if (rc != IDP_OK)
		return rc;
	pg = store_connect_url(url, 5000, 0, err, sizeof(err));
	if (pg == NULL) {
		idp_diag_add(diag, "cannot connect to PostgreSQL: %s", err);
		rc = IDP_EUNAVAIL;
		goto done;
	}
	rc = IDP_EINTERNAL;
	rc = lock_or_stop(pg, diag);
	if (rc != IDP_OK)
		goto done;
	rc = IDP_EINTERNAL;
	locked = true;
	if (!exec_ok(pg,
	             "CREATE TABLE IF NOT EXISTS schema_migrations ("
	             " version integer PRIMARY KEY,"
	             " name text NOT NULL,"
	             " checksum text NOT NULL,"
	             " applied_at timestamptz NOT NULL DEFAULT now())",
	             "schema_migrations", diag))
		goto done;

	for (int i = 0; i < n; i++) {
		char path[4096], sum[65], ver[16];
		const char *params[3];
		size_t len;
		char *sql;

		snprintf(path, sizeof(path), "%s/%s", dir, m[i].name);
		sql = read_file(path, &len, diag);
		if (sql == NULL)
			goto done;
		sha256_hex(sql, len, sum);
		snprintf(ver, sizeof(ver), "%d", m[i].version);
		params[0] = ver;
		r = PQexecParams(pg, "SELECT checksum FROM schema_migrations WHERE version = $1", 1,
		                 NULL, params, NULL, NULL, 0);
		if (PQresultStatus(r) != PGRES_TUPLES_OK) {
			idp_diag_add(diag, "%s: %s", m[i].name, PQresultErrorMessage(r));
			free(sql);
			goto done;
		}
		if (PQntuples(r) == 1) {
			if (strcmp(PQgetvalue(r, 0, 0), sum) != 0) {
				idp_diag_add(diag,
				             "%s was changed after it was applied (checksum %s, "
				             "recorded %s); write a new migration instead",
				             m[i].name, sum, PQgetvalue(r, 0, 0));
				free(sql);
				goto done;
			}
			PQclear(r);
			r = NULL;
			free(sql);
			continue;
		}
		PQclear(r);
		r = NULL;
		if (!exec_ok(pg, "BEGIN", m[i].name, diag) || !exec_ok(pg, sql, m[i].name, diag)) {
			free(sql);
			goto done;
		}
		free(sql);
		params[1] = m[i].name;
		params[2] = sum;
		r = PQexecParams(pg,
		                 "INSERT INTO schema_migrations (version, name, checksum) "
		                 "VALUES ($1, $2, $3)",
		                 3, NULL, params, NULL, NULL, 0);
		if (PQresultStatus(r) != PGRES_COMMAND_OK) {
			idp_diag_add(diag, "%s: %s", m[i].name, PQresultErrorMessage(r));
			goto done;
		}
		PQclear(r);
		r = NULL;
		if (!exec_ok(pg, "COMMIT", m[i].name, diag))
			goto done;
		log_info("migrate: applied %s", m[i].name);
		count++;
	}
	rc = IDP_OK;
done:
	PQclear(r);
	if (pg != NULL) {
		if (PQtransactionStatus(pg) != PQTRANS_IDLE) {
			PGresult *rb = PQexec(pg, "ROLLBACK");

			PQclear(rb);
		}
		if (locked) {
			PGresult *ul =
			    PQexec(pg, "SELECT pg_advisory_unlock(" MIGRATION_LOCK_KEY ")");

			PQclear(ul);
		}
		PQfinish(pg);
	}
	free(m);
	if (applied != NULL)
		*applied = count;
	return rc;
}

int
store_schema_version(struct store_conn *c)
{
	static struct store_stmt st = {
	    "schema_version", "SELECT coalesce(max(version), 0) FROM schema_migrations", 0, 0};
	PGresult *r;
	int rc = store_exec(c, &st, NULL, &r);

	if (rc != IDP_OK) {
		/* 42P01: the table does not exist yet, i.e. version 0. */
		if (strcmp(store_last_sqlstate(c), "42P01") == 0)
			return 0;
		return rc;
	}
	rc = atoi(PQgetvalue(r, 0, 0));
	PQclear(r);
	return rc;
}
