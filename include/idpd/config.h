/*
 * config.h - idpd's configuration: a strict TOML subset mapped onto
 * struct idpd_config through one key table (name, type, default, reloadable,
 * secret, help) that also drives validation, `idpd check-config` and the test
 * that every key is documented in config.example.toml.
 *
 * A loaded config is immutable.  Reloads build a new one; a failed reload
 * keeps the old values.  Secrets (database URL, KEK) may come from the
 * environment: IDPD_DATABASE_URL overrides database.url.
 */
#ifndef IDPD_CONFIG_H
#define IDPD_CONFIG_H

#include <stdbool.h>
#include <stdint.h>

#include "idpd/common.h"

struct idpd_config {
	char *path; /* the file it was read from */

	struct {
		char *listen;                /* "127.0.0.1" */
		int port;                    /* 8080 */
		int threads;                 /* 0 = number of cores */
		int64_t max_body;            /* bytes, 1 MiB */
		int max_connections;         /* 1024 */
		int64_t connection_timeout_ms; /* idle keep-alive, "30s" */
		int64_t shutdown_timeout_ms;   /* drain bound on SIGTERM, "10s" */
		int json_max_depth;          /* 32 */
	} server;

	struct {
		char *url;                   /* secret; IDPD_DATABASE_URL wins */
		int pool_size;               /* 8 */
		int64_t connect_timeout_ms;  /* "5s" */
		int64_t acquire_timeout_ms;  /* wait for a free connection, "2s" */
		int64_t statement_timeout_ms;/* "5s" */
	} database;

	struct {
		char *level;                 /* "info" */
		bool access;                 /* one JSON line per request, true */
	} log;

	struct {
		char *instance_id;           /* "" = hostname:pid */
		char *migrations_dir;        /* "migrations" */
	} node;
};

/*
 * Read and validate the file at path.  On success *out is a new config the
 * caller owns (idpd_config_free).  On failure *out is NULL and diag holds
 * every error found, each as "file:line:column: key: message".  Reads the
 * environment for secret overrides; touches no other global state.
 */
int idpd_config_load(const char *path, struct idpd_config **out, struct idp_diag *diag) IDP_WUR;

/* Parse from memory; name is used in messages.  Same contract as load. */
int idpd_config_parse(const char *name, const char *text, size_t len, struct idpd_config **out,
		      struct idp_diag *diag) IDP_WUR;

/* A config with every default; for tests and for `idpd migrate`. */
struct idpd_config *idpd_config_defaults(void);

void idpd_config_free(struct idpd_config *cfg);

/*
 * Print each key with its type, default and help, one per line; used by
 * `idpd check-config --keys` and by the documentation test.  Secrets print
 * as "<secret>".
 */
void idpd_config_describe(int fd);

#endif /* IDPD_CONFIG_H */
