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

#include <jansson.h>

#include "idpd/common.h"

/* What an API key may do; bit i is the i-th name in the `roles` key's list. */
enum idpd_role {
	IDPD_ROLE_ADMIN = 1u << 0,
	IDPD_ROLE_REGISTRAR = 1u << 1,
	IDPD_ROLE_AUDITOR = 1u << 2,
	IDPD_ROLE_INTROSPECTOR = 1u << 3,
	IDPD_ROLE_APPROVER = 1u << 4,
	IDPD_ROLE_MAINTENANCE = 1u << 5,
};

#define IDPD_CONFIG_SUM_LEN 64 /* hex digits of a configuration's SHA-256 */

/*
 * A file the configuration names whose contents are trust (a jwks_file), as
 * idpd_config_load read it, once: its component builds from these bytes, so
 * that what it runs is what the hash beside them names, however the file
 * changes afterwards.  data is NULL when the file could not be read whole,
 * error then saying why ("PATH: No such file or directory"); both are NULL
 * in a configuration not loaded from a file (idpd_config_parse, one built
 * by hand), whose component reads the file itself.
 */
struct idpd_file_bytes {
	char *data;
	size_t len;
	char *error;
};

/* One [[api_keys]] section. */
struct idpd_api_key_cfg {
	char *name;      /* unique label, the principal in audit events */
	char *hash;      /* "sha256:" + 64 lowercase hex digits of the key */
	unsigned roles;  /* IDPD_ROLE_* bits; none by default */
	char *audiences; /* space-separated resource audiences; NULL: any */
};

/* One [[audit.sinks]] section: where the audit log is shipped. */
struct idpd_audit_sink_cfg {
	char *name;       /* names the sink's cursor; unique */
	char *type;       /* "file" | "syslog" | "webhook" */
	char *format;     /* "json" | "cef" | "leef" */
	char *path;       /* file */
	char *address;    /* syslog: "host:port" */
	char *url;        /* webhook: "http[s]://host[:port][/path]" */
	char *bearer_env; /* webhook: names the variable holding its bearer token; "" = none */
	char *types;      /* space-separated event types carried; "" = all */
	char *protocol;   /* syslog: "tcp" | "tls" | "udp" */
	char *hostname;   /* RFC 5424 HOSTNAME; "" = gethostname() */
	/* TLS (syslog over tls, https webhooks); each "" when unset. */
	char *ca_file;     /* PEM CAs the receiver must chain to; "" = OpenSSL's default */
	char *server_name; /* name verified and sent as SNI; "" = the address's host */
	char *cert_file;   /* client certificate chain for mutual TLS */
	char *key_file;    /* its private key; with cert_file */
	int facility;      /* 13 (log audit) */
	int64_t connect_timeout_ms;
	int64_t send_timeout_ms;
	int udp_max; /* bytes per datagram */
	bool fsync;  /* file: fdatasync before the cursor moves */
};

/*
 * One [[attestors]] section: an issuer of workload tokens (Kubernetes
 * service-account tokens, SPIRE JWT-SVIDs, ...) that attestation trusts.
 */
struct idpd_attestor_cfg {
	char *name;               /* unique label, named in audit events */
	char *issuer;             /* the exact "iss" of its tokens */
	char *audience;           /* an "aud" its tokens must carry */
	char *jwks_file;          /* its public keys, a JWKS document; NULL with jwks_uri */
	unsigned algs;            /* bit 0 ES256, bit 1 RS256; none set means both */
	char *selectors;          /* "prefix=claim/path ..." (docs/tokens.md) */
	int64_t max_token_age_ms; /* longest exp - iat of a token it vouches with */
	/* Hex SHA-256 of jwks_file as idpd_config_load read it, so that a
	 * reload names a changed key set; "" when it could not be read. */
	char jwks_sha256[IDPD_CONFIG_SUM_LEN + 1];
	struct idpd_file_bytes jwks; /* the bytes hashed, which the key set is built from */
	char *jwks_uri;          /* or an https:// URL to fetch them from; NULL with jwks_file */
	char *ca_file;           /* CAs for jwks_uri's server; NULL: the system's */
	int64_t jwks_refresh_ms; /* jwks_uri: fetched again this often */
	int64_t jwks_min_refresh_ms; /* jwks_uri: at most one fetch per this */
	int64_t jwks_max_stale_ms;   /* jwks_uri: a key set older than this is not used */
};

/*
 * One [[idp]] section: an identity provider whose bearer JWTs authenticate
 * humans (POST /v1/tasks and the endpoints a task's human may call).
 */
struct idpd_idp_cfg {
	char *name;              /* unique label, named in audit events */
	char *issuer;            /* the exact "iss" of its tokens */
	char *audience;          /* an "aud" its tokens must carry */
	char *jwks_file;         /* its public keys, a JWKS document; NULL with jwks_uri */
	unsigned algs;           /* bit 0 ES256, bit 1 RS256; none set means both */
	char *principal_claim;   /* the claim naming the human, e.g. "email" */
	bool vouches_for_owners; /* its principals may act as email-named agent owners */
	/* With principal_claim "email": a token without email_verified is refused. */
	bool require_email_verified;
	char jwks_sha256[IDPD_CONFIG_SUM_LEN + 1]; /* as in struct idpd_attestor_cfg */
	struct idpd_file_bytes jwks;               /* likewise */
	char *jwks_uri;          /* or an https:// URL to fetch them from; NULL with jwks_file */
	char *ca_file;           /* CAs for jwks_uri's server; NULL: the system's */
	int64_t jwks_refresh_ms; /* jwks_uri: fetched again this often */
	int64_t jwks_min_refresh_ms; /* jwks_uri: at most one fetch per this */
	int64_t jwks_max_stale_ms;   /* jwks_uri: a key set older than this is not used */
};

/* One [[policy.verbs]] entry: a verb pattern and the action class it implies. */
struct idpd_verb_cfg {
	char *verb;  /* "Search*", "query" */
	char *class; /* "read" | "write" | "delete" | "admin" */
};

/*
 * One [[resources]] section: an API that access tokens are issued for,
 * named by its audience.  Policies see it as resource.*.
 */
struct idpd_resource_cfg {
	char *audience;       /* the token's "aud"; unique */
	char *domain;         /* business domain, resource.domain */
	char *classification; /* "public" .. "financial", resource.classification */
	char *environment;    /* "" when not set */
	char *description;    /* "" when not set */
};

struct idpd_config {
	char *path; /* the file it was read from */
	/* Lower-case hex SHA-256 of the bytes parsed, so that an audit event
	 * can name the version of the file; "" for idpd_config_defaults(). */
	char sha256[IDPD_CONFIG_SUM_LEN + 1];

	struct {
		char *listen;                  /* "127.0.0.1" */
		int port;                      /* 8080 */
		int threads;                   /* 0 = number of cores */
		int handler_threads;           /* 32: handlers that may block */
		int64_t max_body;              /* bytes, 1 MiB */
		int64_t max_body_memory;       /* bytes of bodies held at once, 64 MiB */
		int max_connections;           /* 1024 */
		int64_t connection_timeout_ms; /* idle keep-alive, "30s" */
		int64_t shutdown_timeout_ms;   /* drain bound on SIGTERM, "10s" */
		int json_max_depth;            /* 32 */
	} server;

	struct {
		char *url;                    /* secret; IDPD_DATABASE_URL wins */
		int pool_size;                /* 8 */
		int64_t connect_timeout_ms;   /* "5s" */
		int64_t acquire_timeout_ms;   /* wait for a free connection, "2s" */
		int64_t statement_timeout_ms; /* "5s" */
	} database;

	struct {
		char *level; /* "info" */
		bool access; /* one JSON line per request, true */
	} log;

	struct {
		char *instance_id;    /* "" = hostname:pid */
		char *migrations_dir; /* "migrations" */
	} node;

	struct {
		char *durability;         /* "sync" | "async" */
		char *on_full;            /* "block" | "fail_closed" */
		int queue_max;            /* 65536 */
		int batch_max;            /* 512 */
		int64_t batch_wait_ms;    /* "0ms" */
		int64_t timeout_ms;       /* "5s" */
		int64_t retention_ms;     /* "365d"; 0 keeps everything */
		int64_t ship_interval_ms; /* "1s": how often an idle shipper looks again */
		struct idpd_audit_sink_cfg *sinks;
		size_t n_sinks;
		struct {
			int escalation_threshold;
			int64_t escalation_window_ms;
			int escalation_severity;
			bool chain_violation;
			int chain_severity;
			bool novelty;
			int novelty_min_events;
			int novelty_max_items;
			int novelty_severity;
			int max_agents;
		} alerts;
	} audit;

	struct {
		char *departed_owners;        /* file of owners who left; "" = none */
		int64_t last_active_flush_ms; /* "10s": writes of the batched last_active */
	} registry;

	struct {
		int64_t stale_after_ms; /* "30d"; 0 = never stale */
		char *stale_action;     /* "report" | "suspend" */
		char *departed_action;  /* "report" | "suspend" */
		int batch_size;         /* rows per statement, and agents per run at most */
	} cleanup;

	struct {
		char *kek_file;          /* file holding the KEK; "" = $IDPD_KEK only */
		int64_t rotate_every_ms; /* "30d"; 0 = no scheduled rotation */
		int64_t retire_after_ms; /* "24h": publication after a key last signed */
		int64_t max_age_ms;      /* "90d": a key's not-after, from its creation */
		int64_t jwks_max_age_ms; /* "5m": Cache-Control max-age of the JWKS */
	} keys;

	struct {
		char *trust_domain; /* SPIFFE trust domain of agent ids, "idpd.local" */
		char *issuer;       /* "iss" of identity credentials, "idpd" */
		char *audience;     /* "aud" of identity credentials, "idpd" */
		int64_t leeway_ms;  /* clock skew tolerated on time claims, "5s" */
	} identity;

	struct {
		int64_t join_token_ttl_ms; /* "1h" */
	} attestation;

	struct {
		char *dir;                   /* "policies": the *.policy files */
		char *timezone;              /* "UTC": IANA zone for hours and weekdays */
		struct idpd_verb_cfg *verbs; /* [[policy.verbs]], added to the built-in map */
		size_t n_verbs;
	} policy;

	struct {
		int64_t max_ttl_ms;     /* "24h": longest task and task delegation token */
		int64_t default_ttl_ms; /* "1h": a task's ttl when the request gives none */
	} tasks;

	struct {
		int64_t default_ttl_ms; /* "15m": an access token's ttl when none is asked */
		int64_t max_ttl_ms;     /* "1h": longest access token */
		int presign_pool;   /* ignored; read so that older files load (docs/tokens.md) */
		bool require_low_s; /* refuse the high-S twin of idpd's own tokens */
	} tokens;

	struct {
		int64_t ttl_ms; /* "1h": an approval expires this long after the request */
	} approvals;

	struct {
		int64_t max_staleness_ms; /* "5s": answer from the state this long after losing
		                             NOTIFY */
	} revocation;

	struct {
		int cache_size; /* 65536 verified tokens; 0 = no cache */
	} introspection;

	struct idpd_resource_cfg *resources; /* [[resources]], in file order */
	size_t n_resources;

	struct idpd_idp_cfg *idps; /* [[idp]], in file order */
	size_t n_idps;

	struct idpd_attestor_cfg *attestors; /* [[attestors]], in file order */
	size_t n_attestors;

	struct idpd_api_key_cfg *api_keys; /* [[api_keys]], in file order */
	size_t n_api_keys;
};

/*
 * Read and validate the file at path.  On success *out is a new config the
 * caller owns (idpd_config_free).  On failure *out is NULL and diag holds
 * every error found, each as "file:line:column: key: message" (a TOML syntax
 * error has no key), most followed by the source line and a caret.  Returns
 * IDP_EIO if the file cannot be read, IDP_ETOOBIG past 1 MiB, IDP_EINVAL for
 * TOML errors, IDP_EUNPROCESSABLE for keys or values the table rejects.
 * Reads the environment for secret overrides, and reads every jwks_file it
 * names once, keeping its bytes (jwks) and their hash (jwks_sha256) without
 * parsing them; touches no other global state.  Any thread may call it.
 */
int idpd_config_load(const char *path, struct idpd_config **out, struct idp_diag *diag) IDP_WUR;
/*
 * The same, and sum (if not NULL) gets the hex SHA-256 of the file's bytes
 * whenever they could be read, also when they do not load; "" when the
 * file could not be read.  A reload audits a refused file by it.
 */
int idpd_config_load_ex(const char *path, struct idpd_config **out,
                        char sum[IDPD_CONFIG_SUM_LEN + 1], struct idp_diag *diag) IDP_WUR;

/* Parse len bytes from memory; name is used in messages.  Same contract as load. */
int idpd_config_parse(const char *name, const char *text, size_t len, struct idpd_config **out,
                      struct idp_diag *diag) IDP_WUR;

/* A config with every default; for tests and for `idpd migrate`.  Cannot fail; any thread. */
struct idpd_config *idpd_config_defaults(void);

/* Wipes secrets and frees everything; NULL is a no-op. */
void idpd_config_free(struct idpd_config *cfg);

/*
 * Why s cannot be a label such as an API key's name (1..64 letters,
 * digits, '.', '_', '-', ':'), or NULL when it can: what the configuration
 * accepts, so that a tool printing a config block prints one that loads.
 */
const char *idpd_config_label_problem(const char *s);

/*
 * For a reload: add one diag line naming each restart-only key whose value
 * differs between old and cur ("server.port: changed; takes effect after a
 * restart") and return how many there are.  Values are never printed.
 * Reads both configs only; any thread.
 */
unsigned idpd_config_restart_keys(const struct idpd_config *old, const struct idpd_config *cur,
                                  struct idp_diag *diag);

/*
 * What a reload from running to next changes, by name only, for the
 * config.reloaded audit event (docs/audit.md): a new object with
 *   "settings": reloadable keys outside arrays of tables whose value
 *       differs from running's ("log.level");
 *   "restart_pending": restart-only keys whose value differs from
 *       started's, the configuration serve started with (they do not take
 *       effect);
 *   "sections": one object per reloadable array of tables that changed:
 *       {"section": "api_keys", "added": [...], "removed": [...],
 *        "changed": [...]}, empty lists left out.  An element is named by
 *       its first unique key ({"name": "ops"}, a resource by "audience")
 *       with the keys the table marks as shown (an API key's roles, an
 *       IdP's and an attestor's issuer); a changed one also has "fields",
 *       the names of its keys that differ.
 * With compact, added, removed and changed are counts instead of lists,
 * for a change too large to list in one event.  No value of any other key
 * is ever in it: no hash, no URL, no path to a key file.  NULL only when
 * memory runs out; reads the three configs only; any thread.
 */
json_t *idpd_config_changes(const struct idpd_config *started, const struct idpd_config *running,
                            const struct idpd_config *next, bool compact);

/*
 * Print each key with its type, default and help, one per line; used by
 * `idpd check-config --keys` and by the documentation test.  Secrets print
 * as "<secret>".  Each line is
 *   NAME  TYPE  DEFAULT  reload|restart  HELP
 * in aligned columns; keys of an array of tables are named "api_keys[].name".
 * Write errors end the output silently: it is a listing, not a duty.  Any thread.
 */
void idpd_config_describe(int fd);

#endif /* IDPD_CONFIG_H */
