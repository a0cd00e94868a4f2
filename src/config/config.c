/*
 * config.c - struct idpd_config from a TOML file, driven by one key table.
 *
 * config_keys[] below is the only place a key is described: its name, type,
 * range, default, whether a reload applies it, whether it is secret, its help
 * text and where it lives in struct idpd_config.  Parsing, defaults,
 * validation, the environment override, freeing, the reload check,
 * idpd_config_describe() and the documentation test all walk that table.
 *
 * An array of tables ([[api_keys]]) is a key of type K_TABLES whose element
 * layout is a section: its own table of keys over its own struct.  Adding
 * [[idp]] later is a new struct, a new key table, one section and one line
 * in config_keys[].
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "idpd/buf.h"
#include "idpd/clock.h"
#include "idpd/config.h"
#include "idpd/jws.h"
#include "idpd/scope.h"
#include "idpd/toml.h"

#define CONFIG_MAX_ERRORS 50

enum key_type {
	K_STRING,   /* char *; min/max bound the length in bytes */
	K_INT,      /* int; min/max bound the value */
	K_INT64,    /* int64_t; min/max bound the value */
	K_BOOL,     /* bool */
	K_DURATION, /* int64_t milliseconds, written as "30s"; min/max in ms */
	K_ENUM,     /* char *, one of choices */
	K_FLAGS,    /* unsigned bit set from an array of choices; the default is always empty */
	K_TABLES,   /* an array of tables: element pointer at off, count at count_off */
};

#define K_RELOAD 0x1u   /* a reload applies it; otherwise it needs a restart */
#define K_SECRET 0x2u   /* never printed; wiped on free */
#define K_REQUIRED 0x4u /* no default: the file must set it */
#define K_UNIQUE 0x8u   /* in an array of tables, no two elements share the value */
/* In an array of tables, named beside the element in a reload's audit event
 * (idpd_config_changes): only for values that are no secret and say what
 * the element may do or whom it trusts. */
#define K_SHOWN 0x10u
/* A file whose contents are trust (a jwks_file): idpd_config_load keeps
 * its bytes at bytes_off and their SHA-256 at sum_off, and a reload names
 * the element changed, under sum_field, when they differ, also when the
 * file's name does not. */
#define K_FILE_SUM 0x20u
/* In a section, exactly one of the keys with this flag must be set (an
 * [[idp]]'s jwks_file or jwks_uri): two ways to say one thing. */
#define K_ONE_OF 0x40u

struct section;

struct key {
	const char *name; /* dotted, relative to its section */
	enum key_type type;
	unsigned flags;
	size_t off;
	int64_t min, max;
	const char *def;                     /* as written in TOML, unquoted; NULL if required */
	const char *const *choices;          /* K_ENUM, K_FLAGS: NULL-terminated */
	const char *(*check)(const char *s); /* K_STRING: NULL if fine, else what was expected */
	const char *env;                     /* an environment variable that overrides the file */
	const struct section *sub;           /* K_TABLES: the layout of one element */
	size_t count_off;                    /* K_TABLES: where the element count goes */
	size_t sum_off;                      /* K_FILE_SUM: char[IDPD_CONFIG_SUM_LEN + 1] */
	size_t bytes_off;                    /* K_FILE_SUM: struct idpd_file_bytes */
	const char *sum_field;               /* K_FILE_SUM: its name in a reload's event */
	const char *help;
};

struct section {
	const struct key *keys;
	size_t n;
	size_t size; /* bytes of one element */
};

/*
 * Where field f of struct T is.  The unevaluated pointer comparison makes a
 * field whose C type is not CT a compile error, so the table cannot store an
 * int64_t through an int.
 */
#define AT(T, f, CT) .off = offsetof(T, f) + 0 * sizeof((CT *)0 == &((T *)0)->f)
#define STRING_AT(T, f) .type = K_STRING, AT(T, f, char *)
#define INT_AT(T, f) .type = K_INT, AT(T, f, int)
#define INT64_AT(T, f) .type = K_INT64, AT(T, f, int64_t)
#define BOOL_AT(T, f) .type = K_BOOL, AT(T, f, bool)
#define DURATION_AT(T, f) .type = K_DURATION, AT(T, f, int64_t)
#define ENUM_AT(T, f) .type = K_ENUM, AT(T, f, char *)
#define FLAGS_AT(T, f) .type = K_FLAGS, AT(T, f, unsigned)
#define TABLES_AT(T, f, count, ET, section)                                                        \
	.type = K_TABLES, AT(T, f, ET *), .count_off = offsetof(T, count), .sub = &(section)

#define SECONDS(n) ((int64_t)(n)*1000)
#define MINUTES(n) SECONDS((n)*60)
#define HOURS(n) MINUTES((n)*60)

static const char *check_ip(const char *s);
static const char *check_label(const char *s);
static const char *check_idp_name(const char *s);
static const char *check_verb(const char *s);
static const char *check_sha256(const char *s);
static const char *check_trust_domain(const char *s);
static const char *check_selector_map(const char *s);
static const char *check_visible(const char *s);
static const char *check_audiences(const char *s);
static const char *check_https_url(const char *s);

static const char *const log_levels[] = {"debug", "info", "warn", "error", NULL};
/* In the order of the IDPD_ROLE_* bits. */
static const char *const role_names[] = {"admin",    "registrar",   "auditor", "introspector",
                                         "approver", "maintenance", NULL};

static const struct key api_key_keys[] = {
    {.name = "name",
     STRING_AT(struct idpd_api_key_cfg, name),
     .flags = K_RELOAD | K_REQUIRED | K_UNIQUE,
     .min = 1,
     .max = 64,
     .check = check_label,
     .help = "label of the key; the principal named in audit events"},
    /* Secret: it is no key, but it is what a stolen key is checked
     * against, and nothing needs it shown. */
    {.name = "hash",
     STRING_AT(struct idpd_api_key_cfg, hash),
     .flags = K_RELOAD | K_REQUIRED | K_UNIQUE | K_SECRET,
     .min = 0,
     .max = 128,
     .check = check_sha256,
     .help = "\"sha256:\" and the lowercase hex SHA-256 of the key; the key itself is never "
             "stored"},
    {.name = "roles",
     FLAGS_AT(struct idpd_api_key_cfg, roles),
     .flags = K_RELOAD | K_SHOWN,
     .def = "[]",
     .choices = role_names,
     .help = "what the key may do"},
    {.name = "audiences",
     STRING_AT(struct idpd_api_key_cfg, audiences),
     .flags = K_RELOAD,
     .min = 1,
     .max = 1024,
     .check = check_audiences,
     .help = "space-separated [[resources]] audiences: introspection by this key answers "
             "active only for access tokens for one of them; unset, for any"},
};

static const struct section api_key_section = {api_key_keys, IDP_ARRAY_LEN(api_key_keys),
                                               sizeof(struct idpd_api_key_cfg)};

/*
 * The keys of a key set fetched from a jwks_uri (jwks_remote.h), the same in
 * [[idp]] and [[attestors]]: struct T has fields of these names.
 */
#define JWKS_URI_KEYS(T)                                                                           \
	{.name = "jwks_uri",                                                                       \
	 STRING_AT(T, jwks_uri),                                                                   \
	 .flags = K_RELOAD | K_ONE_OF | K_SHOWN,                                                   \
	 .min = 9,                                                                                 \
	 .max = 2048,                                                                              \
	 .check = check_https_url,                                                                 \
	 .help = "https:// URL of its JWKS (an OIDC provider's jwks_uri), fetched in the "         \
	         "background and refreshed; set this or jwks_file"},                               \
	    {.name = "ca_file",                                                                    \
	     STRING_AT(T, ca_file),                                                                \
	     .flags = K_RELOAD,                                                                    \
	     .min = 1,                                                                             \
	     .max = 4096,                                                                          \
	     .help = "PEM CA certificates that verify jwks_uri's server; unset, the system's "     \
	             "trust store"},                                                               \
	    {.name = "jwks_refresh",                                                               \
	     DURATION_AT(T, jwks_refresh_ms),                                                      \
	     .flags = K_RELOAD,                                                                    \
	     .min = SECONDS(10),                                                                   \
	     .max = HOURS(24),                                                                     \
	     .def = "5m",                                                                          \
	     .help = "how often jwks_uri is fetched again; a failed fetch is retried after "       \
	             "jwks_min_refresh"},                                                          \
	    {.name = "jwks_min_refresh",                                                           \
	     DURATION_AT(T, jwks_min_refresh_ms),                                                  \
	     .flags = K_RELOAD,                                                                    \
	     .min = SECONDS(1),                                                                    \
	     .max = HOURS(1),                                                                      \
	     .def = "30s",                                                                         \
	     .help = "shortest time between two fetches of jwks_uri: a token naming an unknown "   \
	             "key asks for a fetch at most this often"},                                   \
	{                                                                                          \
		.name = "jwks_max_stale", DURATION_AT(T, jwks_max_stale_ms), .flags = K_RELOAD,    \
		.min = SECONDS(10), .max = 30LL * 86400 * 1000, .def = "24h",                      \
		.help = "how old the last key set fetched from jwks_uri may grow while fetches "   \
		        "fail; past it its tokens answer 503"                                      \
	}

/* In the order of the attestor algs bits. */
static const char *const attestor_algs[] = {"ES256", "RS256", NULL};

static const struct key attestor_keys[] = {
    {.name = "name",
     STRING_AT(struct idpd_attestor_cfg, name),
     .flags = K_RELOAD | K_REQUIRED | K_UNIQUE,
     .min = 1,
     .max = 64,
     .check = check_label,
     .help = "label of the attestor; named in audit events"},
    {.name = "issuer",
     STRING_AT(struct idpd_attestor_cfg, issuer),
     .flags = K_RELOAD | K_REQUIRED | K_SHOWN,
     .min = 1,
     .max = 512,
     .check = check_visible,
     .help = "the exact \"iss\" claim of its workload tokens"},
    {.name = "audience",
     STRING_AT(struct idpd_attestor_cfg, audience),
     .flags = K_RELOAD | K_REQUIRED,
     .min = 1,
     .max = 512,
     .check = check_visible,
     .help = "a value the token's \"aud\" claim must hold"},
    {.name = "jwks_file",
     STRING_AT(struct idpd_attestor_cfg, jwks_file),
     .flags = K_RELOAD | K_ONE_OF | K_FILE_SUM,
     .sum_off = offsetof(struct idpd_attestor_cfg, jwks_sha256),
     .bytes_off = offsetof(struct idpd_attestor_cfg, jwks),
     .sum_field = "jwks",
     .min = 1,
     .max = 4096,
     .help = "JWKS file of the attestor's public keys; re-read on reload. Set this or "
             "jwks_uri"},
    JWKS_URI_KEYS(struct idpd_attestor_cfg),
    {.name = "algs",
     FLAGS_AT(struct idpd_attestor_cfg, algs),
     .flags = K_RELOAD,
     .def = "[]",
     .choices = attestor_algs,
     .help = "signature algorithms accepted from it; [] means ES256 and RS256"},
    {.name = "selectors",
     STRING_AT(struct idpd_attestor_cfg, selectors),
     .flags = K_RELOAD | K_REQUIRED,
     .min = 1,
     .max = 4096,
     .check = check_selector_map,
     .help = "space-separated \"prefix=claim/path\" mappings from selector prefixes to "
             "claims"},
    {.name = "max_token_age",
     DURATION_AT(struct idpd_attestor_cfg, max_token_age_ms),
     .flags = K_RELOAD,
     .min = SECONDS(60),
     .max = 30LL * 86400 * 1000,
     .def = "1h",
     .help = "longest lifetime (exp - iat, or exp - now without iat) of a workload token it "
             "accepts; a longer-lived token is refused"},
};

static const struct section attestor_section = {attestor_keys, IDP_ARRAY_LEN(attestor_keys),
                                                sizeof(struct idpd_attestor_cfg)};

static const struct key idp_keys[] = {
    {.name = "name",
     STRING_AT(struct idpd_idp_cfg, name),
     .flags = K_RELOAD | K_REQUIRED | K_UNIQUE,
     .min = 1,
     .max = 64,
     .check = check_idp_name,
     .help = "label of the identity provider; named in audit events"},
    {.name = "issuer",
     STRING_AT(struct idpd_idp_cfg, issuer),
     .flags = K_RELOAD | K_REQUIRED | K_SHOWN,
     .min = 1,
     .max = 512,
     .check = check_visible,
     .help = "the exact \"iss\" claim of its tokens"},
    {.name = "audience",
     STRING_AT(struct idpd_idp_cfg, audience),
     .flags = K_RELOAD | K_REQUIRED,
     .min = 1,
     .max = 512,
     .check = check_visible,
     .help = "a value the token's \"aud\" claim must hold"},
    {.name = "jwks_file",
     STRING_AT(struct idpd_idp_cfg, jwks_file),
     .flags = K_RELOAD | K_ONE_OF | K_FILE_SUM,
     .sum_off = offsetof(struct idpd_idp_cfg, jwks_sha256),
     .bytes_off = offsetof(struct idpd_idp_cfg, jwks),
     .sum_field = "jwks",
     .min = 1,
     .max = 4096,
     .help = "JWKS file of the identity provider's public keys; re-read on reload. Set this "
             "or jwks_uri"},
    JWKS_URI_KEYS(struct idpd_idp_cfg),
    {.name = "algs",
     FLAGS_AT(struct idpd_idp_cfg, algs),
     .flags = K_RELOAD,
     .def = "[]",
     .choices = attestor_algs,
     .help = "signature algorithms accepted from it; [] means ES256 and RS256"},
    {.name = "principal_claim",
     STRING_AT(struct idpd_idp_cfg, principal_claim),
     .flags = K_RELOAD,
     .min = 1,
     .max = 64,
     .def = "email",
     .check = check_visible,
     .help = "the string claim that names the human (the task's human principal)"},
    {.name = "vouches_for_owners",
     BOOL_AT(struct idpd_idp_cfg, vouches_for_owners),
     .flags = K_RELOAD,
     .def = "true",
     .help = "whether a principal it asserts may act as the owner of an agent owned by that "
             "email address (approvals); false for a provider not trusted for the whole domain"},
    {.name = "require_email_verified",
     BOOL_AT(struct idpd_idp_cfg, require_email_verified),
     .flags = K_RELOAD,
     .def = "true",
     .help = "with principal_claim \"email\", refuse a token that does not carry "
             "email_verified true; false accepts one without the claim (a provider that never "
             "sends it). email_verified present and not true is always refused"},
};

static const struct section idp_section = {idp_keys, IDP_ARRAY_LEN(idp_keys),
                                           sizeof(struct idpd_idp_cfg)};

static const char *const classifications[] = {
    "public", "internal", "confidential", "restricted", "pii", "financial", NULL};

static const struct key resource_keys[] = {
    {.name = "audience",
     STRING_AT(struct idpd_resource_cfg, audience),
     .flags = K_RELOAD | K_REQUIRED | K_UNIQUE,
     .min = 1,
     .max = 512,
     .check = check_visible,
     .help = "the \"aud\" of access tokens for this resource; token requests name it"},
    {.name = "domain",
     STRING_AT(struct idpd_resource_cfg, domain),
     .flags = K_RELOAD | K_REQUIRED,
     .min = 1,
     .max = 64,
     .check = check_label,
     .help = "the business domain the resource belongs to (resource.domain in policies)"},
    {.name = "classification",
     ENUM_AT(struct idpd_resource_cfg, classification),
     .flags = K_RELOAD,
     .def = "internal",
     .choices = classifications,
     .help = "the sensitivity of its data (resource.classification in policies)"},
    {.name = "environment",
     STRING_AT(struct idpd_resource_cfg, environment),
     .flags = K_RELOAD,
     .min = 0,
     .max = 64,
     .def = "",
     .check = check_label,
     .help = "e.g. production (resource.environment in policies); \"\" means not set"},
    {.name = "description",
     STRING_AT(struct idpd_resource_cfg, description),
     .flags = K_RELOAD,
     .min = 0,
     .max = 256,
     .def = "",
     .help = "free text for operators"},
};

static const struct section resource_section = {resource_keys, IDP_ARRAY_LEN(resource_keys),
                                                sizeof(struct idpd_resource_cfg)};

static const char *const action_classes[] = {"read", "write", "delete", "admin", NULL};

static const struct key verb_keys[] = {
    {.name = "verb",
     STRING_AT(struct idpd_verb_cfg, verb),
     .flags = K_REQUIRED | K_UNIQUE,
     .min = 1,
     .max = 128,
     .check = check_verb,
     .help = "a verb or verb pattern, '*' a wildcard (\"Search*\", \"query\")"},
    {.name = "class",
     ENUM_AT(struct idpd_verb_cfg, class),
     .flags = K_REQUIRED,
     .choices = action_classes,
     .help = "the action class it implies: read, write, delete or admin"},
};

static const struct section verb_section = {verb_keys, IDP_ARRAY_LEN(verb_keys),
                                            sizeof(struct idpd_verb_cfg)};

static const char *const durabilities[] = {"sync", "async", NULL};
static const char *const on_full_modes[] = {"block", "fail_closed", NULL};
static const char *const sink_types[] = {"file", "syslog", "webhook", NULL};
static const char *const sink_formats[] = {"json", "cef", "leef", NULL};
static const char *const sink_protocols[] = {"tcp", "tls", "udp", NULL};
static const char *const cleanup_actions[] = {"report", "suspend", NULL};

static const struct key audit_sink_keys[] = {
    {.name = "name",
     STRING_AT(struct idpd_audit_sink_cfg, name),
     .flags = K_RELOAD | K_REQUIRED | K_UNIQUE,
     .min = 1,
     .max = 64,
     .check = check_label,
     .help = "names the sink and its cursor; renaming it ships everything again"},
    {.name = "type",
     ENUM_AT(struct idpd_audit_sink_cfg, type),
     .flags = K_RELOAD | K_REQUIRED,
     .choices = sink_types,
     .help = "file (append JSON/CEF/LEEF lines), syslog (RFC 5424) or webhook (HTTP POST of JSON)"},
    {.name = "format",
     ENUM_AT(struct idpd_audit_sink_cfg, format),
     .flags = K_RELOAD,
     .def = "json",
     .choices = sink_formats,
     .help = "line format: json, cef or leef"},
    {.name = "path",
     STRING_AT(struct idpd_audit_sink_cfg, path),
     .flags = K_RELOAD,
     .min = 0,
     .max = 4096,
     .def = "",
     .help = "file sinks: the file appended to"},
    {.name = "address",
     STRING_AT(struct idpd_audit_sink_cfg, address),
     .flags = K_RELOAD,
     .min = 0,
     .max = 300,
     .def = "",
     .help = "syslog sinks: \"host:port\" or \"[v6addr]:port\""},
    {.name = "url",
     STRING_AT(struct idpd_audit_sink_cfg, url),
     .flags = K_RELOAD,
     .min = 0,
     .max = 2048,
     .def = "",
     .help = "webhook sinks: \"http[s]://host[:port][/path]\", POSTed the events as JSON"},
    {.name = "bearer_env",
     STRING_AT(struct idpd_audit_sink_cfg, bearer_env),
     .flags = K_RELOAD,
     .min = 0,
     .max = 128,
     .def = "",
     .help = "webhook sinks: the environment variable holding the receiver's bearer token"},
    {.name = "types",
     STRING_AT(struct idpd_audit_sink_cfg, types),
     .flags = K_RELOAD,
     .min = 0,
     .max = 4096,
     .def = "",
     .help = "event types this sink carries, space-separated; empty means every type"},
    {.name = "protocol",
     ENUM_AT(struct idpd_audit_sink_cfg, protocol),
     .flags = K_RELOAD,
     .def = "tcp",
     .choices = sink_protocols,
     .help = "syslog sinks: tcp (octet-counted, acknowledged), tls (the same over TLS, RFC "
             "5425) or udp (may lose messages)"},
    {.name = "ca_file",
     STRING_AT(struct idpd_audit_sink_cfg, ca_file),
     .flags = K_RELOAD,
     .min = 0,
     .max = 4096,
     .def = "",
     .help = "TLS sinks: PEM file of the CAs the receiver's certificate must chain to; empty "
             "means OpenSSL's default CAs"},
    {.name = "server_name",
     STRING_AT(struct idpd_audit_sink_cfg, server_name),
     .flags = K_RELOAD,
     .min = 0,
     .max = 253,
     .def = "",
     .check = check_visible,
     .help = "TLS sinks: the name the receiver's certificate must hold, sent as SNI; empty "
             "means the host of address or url"},
    {.name = "cert_file",
     STRING_AT(struct idpd_audit_sink_cfg, cert_file),
     .flags = K_RELOAD,
     .min = 0,
     .max = 4096,
     .def = "",
     .help = "TLS sinks: PEM client certificate chain for mutual TLS; needs key_file"},
    {.name = "key_file",
     STRING_AT(struct idpd_audit_sink_cfg, key_file),
     .flags = K_RELOAD,
     .min = 0,
     .max = 4096,
     .def = "",
     .help = "TLS sinks: the unencrypted PEM private key of cert_file"},
    {.name = "hostname",
     STRING_AT(struct idpd_audit_sink_cfg, hostname),
     .flags = K_RELOAD,
     .min = 0,
     .max = 255,
     .def = "",
     .help = "syslog HOSTNAME field; empty means this machine's name"},
    {.name = "facility",
     INT_AT(struct idpd_audit_sink_cfg, facility),
     .flags = K_RELOAD,
     .min = 0,
     .max = 23,
     .def = "13",
     .help = "syslog facility (13 is log audit)"},
    {.name = "connect_timeout",
     DURATION_AT(struct idpd_audit_sink_cfg, connect_timeout_ms),
     .flags = K_RELOAD,
     .min = 100,
     .max = MINUTES(5),
     .def = "5s",
     .help = "bound on connecting to a syslog receiver"},
    {.name = "send_timeout",
     DURATION_AT(struct idpd_audit_sink_cfg, send_timeout_ms),
     .flags = K_RELOAD,
     .min = 100,
     .max = MINUTES(5),
     .def = "5s",
     .help = "bound on one send, and on waiting for TCP acknowledgement"},
    {.name = "udp_max",
     INT_AT(struct idpd_audit_sink_cfg, udp_max),
     .flags = K_RELOAD,
     .min = 480,
     .max = 65507,
     .def = "2048",
     .help = "largest UDP datagram; longer messages are cut on a character boundary"},
    {.name = "fsync",
     BOOL_AT(struct idpd_audit_sink_cfg, fsync),
     .flags = K_RELOAD,
     .def = "true",
     .help = "file sinks: fdatasync before the cursor moves past a line"},
};

static const struct section audit_sink_section = {audit_sink_keys, IDP_ARRAY_LEN(audit_sink_keys),
                                                  sizeof(struct idpd_audit_sink_cfg)};

static const struct key config_keys[] = {
    {.name = "server.listen",
     STRING_AT(struct idpd_config, server.listen),
     .min = 1,
     .max = 64,
     .def = "127.0.0.1",
     .check = check_ip,
     .help = "IP address to listen on (IPv4 or IPv6)"},
    {.name = "server.port",
     INT_AT(struct idpd_config, server.port),
     .min = 1,
     .max = 65535,
     .def = "8080",
     .help = "TCP port to listen on"},
    {.name = "server.threads",
     INT_AT(struct idpd_config, server.threads),
     .min = 0,
     .max = 1024,
     .def = "0",
     .help = "worker threads; 0 means one per core"},
    {.name = "server.handler_threads",
     INT_AT(struct idpd_config, server.handler_threads),
     .min = 1,
     .max = 4096,
     .def = "32",
     .help = "threads that run handlers which may wait on PostgreSQL or the audit commit"},
    {.name = "server.max_body",
     INT64_AT(struct idpd_config, server.max_body),
     .min = 1024,
     .max = 64 * 1024 * 1024,
     .def = "1048576",
     .help = "largest request body accepted, in bytes"},
    {.name = "server.max_body_memory",
     INT64_AT(struct idpd_config, server.max_body_memory),
     .min = 1024 * 1024,
     .max = 16LL * 1024 * 1024 * 1024,
     .def = "67108864",
     .help = "request bodies held in memory at once, all connections together, in bytes; "
             "a body past it gets 503 (one of server.max_body always fits)"},
    {.name = "server.max_connections",
     INT_AT(struct idpd_config, server.max_connections),
     .min = 1,
     .max = 100000,
     .def = "1024",
     .help = "open client connections at most"},
    {.name = "server.connection_timeout",
     DURATION_AT(struct idpd_config, server.connection_timeout_ms),
     .min = SECONDS(1),
     .max = HOURS(1),
     .def = "30s",
     .help = "an idle keep-alive connection is closed after this"},
    {.name = "server.shutdown_timeout",
     DURATION_AT(struct idpd_config, server.shutdown_timeout_ms),
     .flags = K_RELOAD,
     .min = 0,
     .max = MINUTES(10),
     .def = "10s",
     .help = "on SIGTERM, how long in-flight requests may take to finish"},
    {.name = "server.json_max_depth",
     INT_AT(struct idpd_config, server.json_max_depth),
     .min = 1,
     .max = 256,
     .def = "32",
     .help = "deepest nesting accepted in a JSON body"},
    {.name = "database.url",
     STRING_AT(struct idpd_config, database.url),
     .flags = K_SECRET,
     .min = 1,
     .max = 4096,
     .def = "postgresql://postgres@127.0.0.1:54329/idpd",
     .env = "IDPD_DATABASE_URL",
     .help = "PostgreSQL connection URI (libpq syntax)"},
    {.name = "database.pool_size",
     INT_AT(struct idpd_config, database.pool_size),
     .min = 1,
     .max = 256,
     .def = "8",
     .help = "connections kept open to PostgreSQL"},
    {.name = "database.connect_timeout",
     DURATION_AT(struct idpd_config, database.connect_timeout_ms),
     .min = 100,
     .max = MINUTES(5),
     .def = "5s",
     .help = "bound on opening one connection"},
    {.name = "database.acquire_timeout",
     DURATION_AT(struct idpd_config, database.acquire_timeout_ms),
     .min = 1,
     .max = MINUTES(5),
     .def = "2s",
     .help = "how long a request waits for a free connection before failing with 503"},
    {.name = "database.statement_timeout",
     DURATION_AT(struct idpd_config, database.statement_timeout_ms),
     .min = 1,
     .max = HOURS(1),
     .def = "5s",
     .help = "PostgreSQL statement_timeout on every connection"},
    {.name = "log.level",
     ENUM_AT(struct idpd_config, log.level),
     .flags = K_RELOAD,
     .def = "info",
     .choices = log_levels,
     .help = "least severe level written to stderr"},
    {.name = "log.access",
     BOOL_AT(struct idpd_config, log.access),
     .def = "true",
     .help = "one JSON line per request on stderr"},
    {.name = "node.instance_id",
     STRING_AT(struct idpd_config, node.instance_id),
     .min = 0,
     .max = 64,
     .def = "",
     .check = check_label,
     .help = "this instance's name in logs and audit events; empty means hostname:pid"},
    {.name = "node.migrations_dir",
     STRING_AT(struct idpd_config, node.migrations_dir),
     .min = 1,
     .max = 4096,
     .def = "migrations",
     .help = "directory of the SQL migrations"},
    {.name = "audit.durability",
     ENUM_AT(struct idpd_config, audit.durability),
     .def = "sync",
     .choices = durabilities,
     .help = "sync: a request waits until its audit event is committed; async: it does not"},
    {.name = "audit.on_full",
     ENUM_AT(struct idpd_config, audit.on_full),
     .def = "block",
     .choices = on_full_modes,
     .help = "when the queue is full, wait up to audit.timeout (block) or answer 503 at once"},
    {.name = "audit.queue_max",
     INT_AT(struct idpd_config, audit.queue_max),
     .min = 16,
     .max = 1 << 22,
     .def = "65536",
     .help = "events waiting for the writer at most"},
    {.name = "audit.batch_max",
     INT_AT(struct idpd_config, audit.batch_max),
     .min = 1,
     .max = 65536,
     .def = "512",
     .help = "events committed in one transaction at most (group commit)"},
    {.name = "audit.batch_wait",
     DURATION_AT(struct idpd_config, audit.batch_wait_ms),
     .min = 0,
     .max = SECONDS(1),
     .def = "0ms",
     .help = "how long the writer lets a batch fill before committing; 0 commits what is there"},
    {.name = "audit.timeout",
     DURATION_AT(struct idpd_config, audit.timeout_ms),
     .min = 10,
     .max = MINUTES(5),
     .def = "5s",
     .help = "how long a request waits for queue space or its commit before failing with 503"},
    {.name = "audit.retention",
     DURATION_AT(struct idpd_config, audit.retention_ms),
     .flags = K_RELOAD,
     .min = 0,
     .max = 36500LL * 86400 * 1000,
     .def = "365d",
     .help = "the cleanup job deletes older events; 0d keeps them forever"},
    {.name = "audit.ship_interval",
     DURATION_AT(struct idpd_config, audit.ship_interval_ms),
     .flags = K_RELOAD,
     .min = 10,
     .max = MINUTES(10),
     .def = "1s",
     .help = "how often an idle sink shipper looks for new events"},
    {.name = "audit.sinks",
     TABLES_AT(struct idpd_config, audit.sinks, audit.n_sinks, struct idpd_audit_sink_cfg,
               audit_sink_section),
     .flags = K_RELOAD,
     .help = "SIEM destinations, each shipping from its own cursor"},
    {.name = "audit.alerts.escalation_threshold",
     INT_AT(struct idpd_config, audit.alerts.escalation_threshold),
     .min = 0,
     .max = 1000,
     .def = "5",
     .help = "out-of-capability denials by one agent that raise an alert; 0 turns it off"},
    {.name = "audit.alerts.escalation_window",
     DURATION_AT(struct idpd_config, audit.alerts.escalation_window_ms),
     .min = SECONDS(1),
     .max = HOURS(24),
     .def = "10m",
     .help = "the window those denials are counted in"},
    {.name = "audit.alerts.escalation_severity",
     INT_AT(struct idpd_config, audit.alerts.escalation_severity),
     .min = 0,
     .max = 10,
     .def = "7",
     .help = "severity of a scope-escalation alert"},
    {.name = "audit.alerts.chain_violation",
     BOOL_AT(struct idpd_config, audit.alerts.chain_violation),
     .def = "true",
     .help = "alert on every delegation-chain violation"},
    {.name = "audit.alerts.chain_severity",
     INT_AT(struct idpd_config, audit.alerts.chain_severity),
     .min = 0,
     .max = 10,
     .def = "8",
     .help = "severity of a delegation-chain alert"},
    {.name = "audit.alerts.novelty",
     BOOL_AT(struct idpd_config, audit.alerts.novelty),
     .def = "true",
     .help = "alert when an agent uses a tool or audience for the first time"},
    {.name = "audit.alerts.novelty_min_events",
     INT_AT(struct idpd_config, audit.alerts.novelty_min_events),
     .min = 0,
     .max = 1000000,
     .def = "20",
     .help = "events an agent needs on record before novelty alerts fire for it"},
    {.name = "audit.alerts.novelty_max_items",
     INT_AT(struct idpd_config, audit.alerts.novelty_max_items),
     .min = 1,
     .max = 4096,
     .def = "64",
     .help = "tools and audiences remembered per agent"},
    {.name = "audit.alerts.novelty_severity",
     INT_AT(struct idpd_config, audit.alerts.novelty_severity),
     .min = 0,
     .max = 10,
     .def = "5",
     .help = "severity of a first-use alert"},
    {.name = "audit.alerts.max_agents",
     INT_AT(struct idpd_config, audit.alerts.max_agents),
     .min = 1,
     .max = 1000000,
     .def = "10000",
     .help = "agents the alert rules track at most (least recently seen are forgotten)"},
    {.name = "registry.departed_owners",
     STRING_AT(struct idpd_config, registry.departed_owners),
     .flags = K_RELOAD,
     .min = 0,
     .max = 4096,
     .def = "",
     .help = "file listing owners who have left, one per line (an HR feed can write it); "
             "\"\" means none"},
    {.name = "cleanup.stale_after",
     DURATION_AT(struct idpd_config, cleanup.stale_after_ms),
     .flags = K_RELOAD,
     .min = 0,
     .max = 36500LL * 86400 * 1000,
     .def = "30d",
     .help = "an active agent idle this long is stale; 0d turns the check off"},
    {.name = "cleanup.stale_action",
     ENUM_AT(struct idpd_config, cleanup.stale_action),
     .flags = K_RELOAD,
     .def = "report",
     .choices = cleanup_actions,
     .help = "what the cleanup job does with stale agents: report them or suspend them"},
    {.name = "cleanup.departed_action",
     ENUM_AT(struct idpd_config, cleanup.departed_action),
     .flags = K_RELOAD,
     .def = "report",
     .choices = cleanup_actions,
     .help = "what the cleanup job does with agents whose owner is in "
             "registry.departed_owners: report or suspend"},
    {.name = "cleanup.batch_size",
     INT_AT(struct idpd_config, cleanup.batch_size),
     .flags = K_RELOAD,
     .min = 10,
     .max = 100000,
     .def = "1000",
     .help = "rows one cleanup statement deletes, and agents one run suspends, at most"},
    {.name = "keys.kek_file",
     STRING_AT(struct idpd_config, keys.kek_file),
     .min = 0,
     .max = 4096,
     .def = "",
     .help = "file holding the key-encryption key of the signing keys (chmod 600); "
             "$IDPD_KEK wins when set"},
    {.name = "keys.rotate_every",
     DURATION_AT(struct idpd_config, keys.rotate_every_ms),
     .flags = K_RELOAD,
     .min = 0,
     .max = 3650LL * 86400 * 1000,
     .def = "30d",
     .help = "the cleanup job rotates the signing key when it is this old; 0d never"},
    {.name = "keys.retire_after",
     DURATION_AT(struct idpd_config, keys.retire_after_ms),
     .flags = K_RELOAD,
     .min = SECONDS(1),
     .max = 400LL * 86400 * 1000,
     .def = "24h",
     .help = "how long a key stays in the JWKS after it last signed; must cover the "
             "longest token lifetime"},
    {.name = "keys.max_age",
     DURATION_AT(struct idpd_config, keys.max_age_ms),
     .flags = K_RELOAD,
     .min = MINUTES(1),
     .max = 3650LL * 86400 * 1000,
     .def = "90d",
     .help = "a key never signs more than this after it was made (its not-after)"},
    {.name = "keys.jwks_max_age",
     DURATION_AT(struct idpd_config, keys.jwks_max_age_ms),
     .flags = K_RELOAD,
     .min = 0,
     .max = HOURS(24),
     .def = "5m",
     .help = "Cache-Control max-age of GET /.well-known/jwks.json"},
    {.name = "identity.trust_domain",
     STRING_AT(struct idpd_config, identity.trust_domain),
     .min = 1,
     .max = 255,
     .def = "idpd.local",
     .check = check_trust_domain,
     .help = "SPIFFE trust domain of agent identities: spiffe://<trust_domain>/agent/<id>"},
    {.name = "identity.issuer",
     STRING_AT(struct idpd_config, identity.issuer),
     .min = 1,
     .max = 512,
     .def = "idpd",
     .check = check_visible,
     .help = "\"iss\" of the identity credentials this service issues"},
    {.name = "identity.audience",
     STRING_AT(struct idpd_config, identity.audience),
     .min = 1,
     .max = 512,
     .def = "idpd",
     .check = check_visible,
     .help = "\"aud\" of identity credentials; only credentials for it authenticate"},
    {.name = "identity.leeway",
     DURATION_AT(struct idpd_config, identity.leeway_ms),
     .flags = K_RELOAD,
     .min = 0,
     .max = MINUTES(5),
     .def = "5s",
     .help = "clock skew tolerated on exp, nbf and iat of credentials and workload tokens"},
    {.name = "attestation.join_token_ttl",
     DURATION_AT(struct idpd_config, attestation.join_token_ttl_ms),
     .flags = K_RELOAD,
     .min = SECONDS(10),
     .max = 30LL * 86400 * 1000,
     .def = "1h",
     .help = "a join token expires this long after it is made"},
    {.name = "tasks.max_ttl",
     DURATION_AT(struct idpd_config, tasks.max_ttl_ms),
     .flags = K_RELOAD,
     .min = SECONDS(60),
     .max = 30LL * 86400 * 1000,
     .def = "24h",
     .help = "longest lifetime of a task and of its delegation tokens"},
    {.name = "tasks.default_ttl",
     DURATION_AT(struct idpd_config, tasks.default_ttl_ms),
     .flags = K_RELOAD,
     .min = SECONDS(60),
     .max = 30LL * 86400 * 1000,
     .def = "1h",
     .help = "lifetime of a task whose request gives no ttl (capped by tasks.max_ttl)"},
    {.name = "tokens.default_ttl",
     DURATION_AT(struct idpd_config, tokens.default_ttl_ms),
     .flags = K_RELOAD,
     .min = SECONDS(10),
     .max = HOURS(24),
     .def = "15m",
     .help = "lifetime of an access token whose request gives no ttl (capped by tokens.max_ttl)"},
    {.name = "tokens.max_ttl",
     DURATION_AT(struct idpd_config, tokens.max_ttl_ms),
     .flags = K_RELOAD,
     .min = SECONDS(10),
     /* REV_CREDENTIAL_SPAN_S and migration 0017 rely on this bound. */
     .max = HOURS(24),
     .def = "1h",
     .help = "longest lifetime of an access token; a longer ttl is cut to it"},
    {.name = "tokens.require_low_s",
     BOOL_AT(struct idpd_config, tokens.require_low_s),
     .flags = K_RELOAD,
     .def = "false",
     .help = "refuse the high-S twin of idpd's own tokens; turn on once tokens issued before "
             "low-S signing have expired"},
    {.name = "tokens.presign_pool",
     INT_AT(struct idpd_config, tokens.presign_pool),
     .min = 0,
     .max = 65536,
     .def = "0",
     .help = "ignored: precomputed ECDSA nonces were removed; accepted so that files "
             "written for earlier versions still load (docs/tokens.md)"},
    {.name = "approvals.ttl",
     DURATION_AT(struct idpd_config, approvals.ttl_ms),
     .flags = K_RELOAD,
     .min = MINUTES(1),
     .max = 7LL * 86400 * 1000,
     .def = "1h",
     .help = "an approval expires this long after it was requested, decided or not"},
    {.name = "revocation.max_staleness",
     DURATION_AT(struct idpd_config, revocation.max_staleness_ms),
     .flags = K_RELOAD,
     .min = 0,
     .max = MINUTES(10),
     .def = "5s",
     .help = "how long after losing its notification connection an instance still answers "
             "from its revocation state; past it, 503"},
    {.name = "introspection.cache_size",
     INT_AT(struct idpd_config, introspection.cache_size),
     .min = 0,
     .max = 10000000,
     .def = "65536",
     .help = "verified tokens (per kind) whose signature check may be skipped; 0 disables"},
    {.name = "registry.last_active_flush",
     DURATION_AT(struct idpd_config, registry.last_active_flush_ms),
     .flags = K_RELOAD,
     .min = SECONDS(1),
     .max = HOURS(1),
     .def = "10s",
     .help = "how often the agents' last_active times, kept in memory, are written"},
    {.name = "resources",
     TABLES_AT(struct idpd_config, resources, n_resources, struct idpd_resource_cfg,
               resource_section),
     .flags = K_RELOAD,
     .help = "the resources access tokens are for: audience, domain, classification"},
    {.name = "idp",
     TABLES_AT(struct idpd_config, idps, n_idps, struct idpd_idp_cfg, idp_section),
     .flags = K_RELOAD,
     .help = "identity providers whose bearer tokens authenticate humans"},
    {.name = "attestors",
     TABLES_AT(struct idpd_config, attestors, n_attestors, struct idpd_attestor_cfg,
               attestor_section),
     .flags = K_RELOAD,
     .help = "issuers of workload tokens that jwt attestation trusts"},
    {.name = "policy.dir",
     STRING_AT(struct idpd_config, policy.dir),
     .min = 1,
     .max = 4096,
     .def = "policies",
     .help = "directory of the *.policy files; SIGHUP and POST /v1/policies/reload re-read it"},
    {.name = "policy.timezone",
     STRING_AT(struct idpd_config, policy.timezone),
     .min = 1,
     .max = 64,
     .def = "UTC",
     .help = "IANA time zone in which policies see hours and weekdays (e.g. Europe/Paris)"},
    {.name = "policy.verbs",
     TABLES_AT(struct idpd_config, policy.verbs, policy.n_verbs, struct idpd_verb_cfg,
               verb_section),
     .help = "verbs added to the built-in verb classes (read-only delegation, approvals, "
             "request.action_class)"},
    {.name = "api_keys",
     TABLES_AT(struct idpd_config, api_keys, n_api_keys, struct idpd_api_key_cfg, api_key_section),
     .flags = K_RELOAD,
     .help = "API keys for operators and automation"},
};

static const struct section config_section = {config_keys, IDP_ARRAY_LEN(config_keys),
                                              sizeof(struct idpd_config)};

/* ---- value checks ---- */

static const char *
check_ip(const char *s)
{
	unsigned char addr[16];

	if (inet_pton(AF_INET, s, addr) == 1 || inet_pton(AF_INET6, s, addr) == 1)
		return NULL;
	return "expected an IPv4 or IPv6 address such as 127.0.0.1 or ::1";
}

static const char *
check_verb(const char *s)
{
	return scope_verb_valid(s) ? NULL
	                           : "expected a verb: letters, digits, '.', '_', '-', '/', '*' "
	                             "(at most 4), no ':'";
}

static const char *
check_label(const char *s)
{
	for (; *s != '\0'; s++) {
		char c = *s;

		if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
		      c == '.' || c == '_' || c == '-' || c == ':'))
			return "expected only letters, digits, '.', '_', '-' and ':'";
	}
	return NULL;
}

/*
 * An owner "idp:subject" is split at its first ':', so an IdP named
 * "okta:eu" would make owner "okta:eu:00u1" the subject "eu:00u1" of IdP
 * "okta" and the subject "00u1" of "okta:eu" at once: two people.
 */
static const char *
check_idp_name(const char *s)
{
	if (strchr(s, ':') != NULL)
		return "expected only letters, digits, '.', '_' and '-' (an owner \"idp:subject\" "
		       "ends the IdP's name at the first ':')";
	return check_label(s);
}

const char *
idpd_config_label_problem(const char *s)
{
	size_t n = strlen(s);

	if (n == 0 || n > 64)
		return "expected 1 to 64 characters";
	return check_label(s);
}

static const char *
check_sha256(const char *s)
{
	static const char prefix[] = "sha256:";
	size_t n = sizeof(prefix) - 1;

	if (strncmp(s, prefix, n) != 0 || strlen(s) != n + 64)
		goto bad;
	for (s += n; *s != '\0'; s++)
		if (!((*s >= '0' && *s <= '9') || (*s >= 'a' && *s <= 'f')))
			goto bad;
	return NULL;
bad:
	return "expected \"sha256:\" followed by 64 lowercase hexadecimal digits";
}

/* A DNS-like name: lower-case letters, digits, '.', '-' and '_'. */
static const char *
check_trust_domain(const char *s)
{
	for (; *s != '\0'; s++)
		if (!((*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') || *s == '.' ||
		      *s == '-' || *s == '_'))
			return "expected lower-case letters, digits, '.', '-' and '_' "
			       "(a SPIFFE trust domain)";
	return NULL;
}

/* Printable ASCII without spaces. */
/* An https:// URL of visible ASCII: a key set over plain HTTP could be anyone's. */
static const char *
check_https_url(const char *s)
{
	if (strncmp(s, "https://", 8) != 0 || s[8] == '\0' || s[8] == '/')
		return "expected an https:// URL (key sets are never fetched over plain HTTP)";
	for (; *s != '\0'; s++)
		if (*s <= ' ' || *s >= 0x7f || *s == '#')
			return "expected printable characters without spaces or a fragment";
	return NULL;
}

static const char *
check_visible(const char *s)
{
	for (; *s != '\0'; s++)
		if (*s <= ' ' || *s >= 0x7f)
			return "expected printable characters without spaces";
	return NULL;
}

/* Audiences separated by single spaces: printable, none empty, none twice. */
static const char *
check_audiences(const char *s)
{
	size_t n = strlen(s);

	if (s[0] == ' ' || s[n - 1] == ' ' || strstr(s, "  ") != NULL)
		return "expected audiences separated by single spaces";
	for (const char *p = s; *p != '\0'; p++)
		if ((*p < ' ' || *p >= 0x7f))
			return "expected printable characters";
	for (const char *rest = s, *w; (w = idp_word_next(&rest, &n)) != NULL;)
		if (idp_word_listed(rest, w, n))
			return "an audience is listed twice";
	return NULL;
}

/*
 * "prefix=claim/path" mappings separated by spaces: a prefix of letters,
 * digits and '.', '_', '-', ':'; a path of '/'-separated claim names of
 * printable characters.  The attestation module reads the same syntax.
 */
static const char *
check_selector_map(const char *s)
{
	static const char *const bad =
	    "expected space-separated \"prefix=claim/path\" mappings, such as "
	    "\"k8s:ns=kubernetes.io/namespace spiffe_id=sub\"";
	bool any = false;

	while (*s != '\0') {
		size_t n = strcspn(s, " ");
		const char *eq = memchr(s, '=', n);
		size_t pn, cn;

		if (n == 0) {
			s++;
			continue;
		}
		if (eq == NULL)
			return bad;
		pn = (size_t)(eq - s);
		cn = n - pn - 1;
		if (pn == 0 || cn == 0 || eq[1] == '/' || eq[cn] == '/' ||
		    memchr(eq + 1, '=', cn) != NULL)
			return bad;
		for (size_t i = 0; i < pn; i++) {
			char c = s[i];

			if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
			      (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-' ||
			      c == ':'))
				return bad;
		}
		for (size_t i = 1; i < cn; i++)
			if (eq[i] == '/' && eq[i + 1] == '/')
				return bad;
		for (size_t i = 1; i <= cn; i++)
			if (eq[i] <= ' ' || eq[i] >= 0x7f)
				return bad;
		any = true;
		s += n;
	}
	return any ? NULL : bad;
}

/* ---- field access ---- */

static void *
field(void *base, size_t off)
{
	return (char *)base + off;
}

static const void *
cfield(const void *base, size_t off)
{
	return (const char *)base + off;
}

static char **
str_field(void *base, const struct key *k)
{
	return field(base, k->off);
}

static void
str_free(char **p, const struct key *k)
{
	if (*p != NULL && (k->flags & K_SECRET))
		idp_wipe(*p, strlen(*p));
	free(*p);
	*p = NULL;
}

/* ---- small formatting helpers ---- */

static void
format_duration(int64_t ms, char out[32])
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
	snprintf(out, 32, ms == 0 ? "0s" : "%lldms", (long long)ms);
}

/* A value quoted for a message: escaped, at most 40 bytes of it (6 bytes each when escaped). */
static void
quote_value(const char *s, char out[300])
{
	size_t o = 0, i;

	out[o++] = '"';
	for (i = 0; s[i] != '\0' && i < 40; i++) {
		unsigned char c = (unsigned char)s[i];

		if (c < 0x20 || c == 0x7F) {
			snprintf(out + o, 7, "\\u%04X", c);
			o += 6;
		} else if (c == '"' || c == '\\') {
			out[o++] = '\\';
			out[o++] = (char)c;
		} else {
			out[o++] = (char)c;
		}
	}
	if (s[i] != '\0') {
		memcpy(out + o, "...", 3);
		o += 3;
	}
	out[o++] = '"';
	out[o] = '\0';
}

/* The choices joined by sep, each in double quotes if quote. */
static void
put_choices(struct idp_buf *b, const char *const *choices, const char *sep, bool quote)
{
	int rc = 0;

	for (size_t i = 0; choices[i] != NULL; i++) {
		if (i > 0)
			rc |= idp_buf_puts(b, sep);
		rc |= idp_buf_printf(b, quote ? "\"%s\"" : "%s", choices[i]);
	}
	(void)rc;
}

/* What a key accepts, for "expected ..." in messages. */
static void
put_expected(struct idp_buf *b, const struct key *k)
{
	char lo[32], hi[32];
	int rc = 0;

	switch (k->type) {
	case K_STRING:
		rc = idp_buf_puts(b, "a string");
		break;
	case K_INT:
	case K_INT64:
		rc = idp_buf_printf(b, "an integer from %lld to %lld", (long long)k->min,
		                    (long long)k->max);
		break;
	case K_BOOL:
		rc = idp_buf_puts(b, "true or false");
		break;
	case K_DURATION:
		format_duration(k->min, lo);
		format_duration(k->max, hi);
		rc = idp_buf_printf(b, "a duration from \"%s\" to \"%s\", such as \"30s\"", lo, hi);
		break;
	case K_ENUM:
		rc = idp_buf_puts(b, "one of ");
		put_choices(b, k->choices, ", ", true);
		break;
	case K_FLAGS:
		rc = idp_buf_puts(b, "an array of strings, each one of ");
		put_choices(b, k->choices, ", ", true);
		break;
	case K_TABLES:
		rc = idp_buf_printf(b, "[[%s]] sections", k->name);
		break;
	}
	(void)rc;
}

static const char *
found_what(const struct idp_toml_node *n)
{
	switch (idp_toml_type(n)) {
	case IDP_TOML_TABLE:
		return "a table";
	case IDP_TOML_ARRAY:
		return idp_toml_is_table_array(n) ? "an array of tables" : "an array";
	case IDP_TOML_STRING:
		return "a string";
	case IDP_TOML_INT:
		return "an integer";
	case IDP_TOML_BOOL:
		return "a boolean";
	}
	return "a value";
}

/* ---- defaults and freeing ---- */

static void
bad_default(const struct key *k)
{
	/* The table is wrong: a bug that the unit tests exist to catch. */
	fprintf(stderr, "idpd: config key %s has an invalid default\n", k->name);
	abort();
}

static void
set_defaults(const struct section *sec, void *base)
{
	for (size_t i = 0; i < sec->n; i++) {
		const struct key *k = &sec->keys[i];
		void *f = field(base, k->off);
		int64_t ms;
		char *end;
		long long v;

		if (k->def == NULL)
			continue;
		switch (k->type) {
		case K_STRING:
		case K_ENUM:
			*(char **)f = idp_xstrdup(k->def);
			break;
		case K_INT:
		case K_INT64:
			errno = 0;
			v = strtoll(k->def, &end, 10);
			if (errno != 0 || *end != '\0' || v < k->min || v > k->max)
				bad_default(k);
			if (k->type == K_INT)
				*(int *)f = (int)v;
			else
				*(int64_t *)f = v;
			break;
		case K_BOOL:
			*(bool *)f = strcmp(k->def, "true") == 0;
			break;
		case K_DURATION:
			if (idp_duration_parse(k->def, &ms) != 0 || ms < k->min || ms > k->max)
				bad_default(k);
			*(int64_t *)f = ms;
			break;
		case K_FLAGS:
			*(unsigned *)f = 0;
			break;
		case K_TABLES:
			break;
		}
	}
}

static void
free_section(const struct section *sec, void *base)
{
	for (size_t i = 0; i < sec->n; i++) {
		const struct key *k = &sec->keys[i];

		if (k->flags & K_FILE_SUM) {
			struct idpd_file_bytes *fb = field(base, k->bytes_off);

			free(fb->data);
			free(fb->error);
			memset(fb, 0, sizeof(*fb));
		}
		if (k->type == K_STRING || k->type == K_ENUM) {
			str_free(str_field(base, k), k);
		} else if (k->type == K_TABLES) {
			char **elems = field(base, k->off);
			size_t *count = field(base, k->count_off);

			for (size_t e = 0; *elems != NULL && e < *count; e++)
				free_section(k->sub, *elems + e * k->sub->size);
			free(*elems);
			*elems = NULL;
			*count = 0;
		}
	}
}

struct idpd_config *
idpd_config_defaults(void)
{
	struct idpd_config *cfg = idp_xcalloc(1, sizeof(*cfg));

	set_defaults(&config_section, cfg);
	return cfg;
}

void
idpd_config_free(struct idpd_config *cfg)
{
	if (cfg == NULL)
		return;
	free_section(&config_section, cfg);
	free(cfg->path);
	free(cfg);
}

/* ---- loading ---- */

/* out = lower-case hex SHA-256 of data, or "" if OpenSSL fails (no version is then named). */
static void
sha256_hex(const char *data, size_t len, char out[IDPD_CONFIG_SUM_LEN + 1])
{
	static const char hex[] = "0123456789abcdef";
	uint8_t h[IDP_SHA256_LEN];

	out[0] = '\0';
	if (idp_sha256(data, len, NULL, 0, h) != IDP_OK)
		return;
	for (size_t i = 0; i < IDP_SHA256_LEN; i++) {
		out[2 * i] = hex[h[i] >> 4];
		out[2 * i + 1] = hex[h[i] & 0xf];
	}
	out[IDPD_CONFIG_SUM_LEN] = '\0';
}

/*
 * Read the file at path whole, once, into out, and its hex SHA-256 into
 * sum.  A file that cannot be read whole or is larger than a JWKS may be
 * leaves out->data NULL and sum "", with out->error saying why: the
 * component that needs the file then refuses it with that message.
 */
static void
read_named_file(const char *path, struct idpd_file_bytes *out, char sum[IDPD_CONFIG_SUM_LEN + 1])
{
	char ebuf[128];
	struct stat st;
	char *data = NULL;
	size_t got = 0;
	int fd;

	sum[0] = '\0';
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		out->error = idp_xasprintf("%s: %s", path, idp_strerror(errno, ebuf, sizeof(ebuf)));
		return;
	}
	if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
		out->error = idp_xasprintf("%s: not a regular file", path);
		goto done;
	}
	if (st.st_size > IDP_JWS_MAX_JWKS) {
		out->error = idp_xasprintf("%s: larger than %d bytes", path, IDP_JWS_MAX_JWKS);
		goto done;
	}
	data = idp_xmalloc((size_t)st.st_size + 1);
	while (got < (size_t)st.st_size) {
		ssize_t n = read(fd, data + got, (size_t)st.st_size - got);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			out->error = idp_xasprintf("%s: short read", path);
			goto done;
		}
		got += (size_t)n;
	}
	data[got] = '\0';
	sha256_hex(data, got, sum);
	out->data = data;
	out->len = got;
	data = NULL;
done:
	free(data);
	close(fd);
}

/* Reads every file a K_FILE_SUM key of sec (and its arrays of tables) names in obj. */
static void
read_named_files(const struct section *sec, void *obj)
{
	for (size_t i = 0; i < sec->n; i++) {
		const struct key *k = &sec->keys[i];

		if (k->type == K_TABLES) {
			char *elems = *(char **)field(obj, k->off);
			size_t n = *(const size_t *)cfield(obj, k->count_off);

			for (size_t e = 0; e < n; e++)
				read_named_files(k->sub, elems + e * k->sub->size);
		} else if ((k->flags & K_FILE_SUM) && *(char **)field(obj, k->off) != NULL) {
			read_named_file(*(char **)field(obj, k->off), field(obj, k->bytes_off),
			                field(obj, k->sum_off));
		}
	}
}

struct loader {
	const struct idp_toml *doc;
	struct idp_diag *diag;
	unsigned nerr;
};

static void lerr(struct loader *l, unsigned line, unsigned col, enum idp_toml_excerpt ex,
                 const char *fmt, ...) IDP_PRINTF(5, 6);

static void
lerr(struct loader *l, unsigned line, unsigned col, enum idp_toml_excerpt ex, const char *fmt, ...)
{
	char msg[1024];
	va_list ap;

	if (l->nerr++ >= CONFIG_MAX_ERRORS) {
		if (l->nerr == CONFIG_MAX_ERRORS + 1)
			idp_diag_add(l->diag, "%s: too many errors; not reporting more",
			             idp_toml_name(l->doc));
		return;
	}
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	idp_toml_error(l->doc, l->diag, line, col, ex, "%s", msg);
}

/* A key name fit for a message: label + name, control characters as '?'. */
static char *
display_name(const char *label, const char *name)
{
	char *s = idp_xasprintf("%s%s", label, name);

	for (char *c = s; *c != '\0'; c++)
		if ((unsigned char)*c < 0x20 || *c == 0x7F)
			*c = '?';
	return s;
}

static const struct key *
find_key(const struct section *sec, const char *name)
{
	for (size_t i = 0; i < sec->n; i++)
		if (strcmp(sec->keys[i].name, name) == 0)
			return &sec->keys[i];
	return NULL;
}

/* True if some key of sec lives in the table named prefix ("server" for server.port). */
static bool
is_table_prefix(const struct section *sec, const char *prefix)
{
	size_t n = strlen(prefix);

	for (size_t i = 0; i < sec->n; i++)
		if (strncmp(sec->keys[i].name, prefix, n) == 0 && sec->keys[i].name[n] == '.')
			return true;
	return false;
}

/* Edit distance, for "did you mean"; names longer than 63 bytes get none. */
static size_t
distance(const char *a, const char *b)
{
	size_t la = strlen(a), lb = strlen(b), row[64], prev, tmp;

	if (la >= 64 || lb >= 64)
		return SIZE_MAX;
	for (size_t j = 0; j <= lb; j++)
		row[j] = j;
	for (size_t i = 1; i <= la; i++) {
		prev = row[0];
		row[0] = i;
		for (size_t j = 1; j <= lb; j++) {
			size_t best = prev + (a[i - 1] != b[j - 1]);

			if (row[j] + 1 < best)
				best = row[j] + 1;
			if (row[j - 1] + 1 < best)
				best = row[j - 1] + 1;
			tmp = row[j];
			row[j] = best;
			prev = tmp;
		}
	}
	return row[lb];
}

/* The key or table name of sec closest to name, if it is close enough to be a typo. */
static const char *
suggest(const struct section *sec, const char *name, char out[64])
{
	size_t best = 3;

	out[0] = '\0';
	for (size_t i = 0; i < sec->n; i++) {
		const char *k = sec->keys[i].name;

		/* Every dotted prefix of a key names a table that may be meant. */
		for (const char *dot = k;; dot++) {
			if (*dot == '.' || *dot == '\0') {
				size_t len = (size_t)(dot - k);
				char cand[64];
				size_t d;

				if (len < sizeof(cand)) {
					memcpy(cand, k, len);
					cand[len] = '\0';
					d = distance(name, cand);
					if (d < best && d < strlen(name)) {
						best = d;
						memcpy(out, cand, len + 1);
					}
				}
			}
			if (*dot == '\0')
				break;
		}
	}
	return out[0] != '\0' ? out : NULL;
}

/*
 * Convert the string s for key k into the field at base.  Returns NULL, or
 * what went wrong (in why) when it is invalid; the value is never in why
 * for a secret key.
 */
static const char *
convert_string(const struct key *k, const char *s, size_t len, void *base, char *why, size_t whylen)
{
	struct idp_buf b;
	char q[300];
	const char *msg;
	int64_t ms;

	if (k->flags & K_SECRET)
		snprintf(q, sizeof(q), "the value");
	else
		quote_value(s, q);
	switch (k->type) {
	case K_STRING:
		if ((int64_t)len < k->min) {
			snprintf(why, whylen, "must not be %s",
			         k->min == 1 ? "empty" : "this short");
			return why;
		}
		if ((int64_t)len > k->max) {
			snprintf(why, whylen, "must be at most %lld bytes long", (long long)k->max);
			return why;
		}
		if (k->check != NULL && (msg = k->check(s)) != NULL) {
			snprintf(why, whylen, "%s", msg);
			return why;
		}
		str_free(str_field(base, k), k);
		*str_field(base, k) = idp_xstrndup(s, len);
		return NULL;
	case K_DURATION:
		if (idp_duration_parse(s, &ms) != 0) {
			snprintf(why, whylen,
			         "%s is not a duration: expected a whole number followed by ms, s, "
			         "m, h or d, such as \"30s\"",
			         q);
			return why;
		}
		if (ms < k->min || ms > k->max) {
			idp_buf_init(&b, 512);
			put_expected(&b, k);
			snprintf(why, whylen, "%s is out of range: expected %s", q,
			         idp_buf_str(&b));
			idp_buf_cleanup(&b);
			return why;
		}
		*(int64_t *)field(base, k->off) = ms;
		return NULL;
	case K_ENUM:
		for (size_t i = 0; k->choices[i] != NULL; i++) {
			if (strcmp(s, k->choices[i]) == 0) {
				str_free(str_field(base, k), k);
				*str_field(base, k) = idp_xstrdup(s);
				return NULL;
			}
		}
		idp_buf_init(&b, 512);
		put_choices(&b, k->choices, ", ", true);
		snprintf(why, whylen, "%s is not one of %s", q, idp_buf_str(&b));
		idp_buf_cleanup(&b);
		return why;
	default:
		snprintf(why, whylen, "not a string key");
		return why;
	}
}

static void
wrong_type(struct loader *l, const struct key *k, const struct idp_toml_node *v, const char *name)
{
	struct idp_buf b;

	idp_buf_init(&b, 512);
	put_expected(&b, k);
	lerr(l, idp_toml_line(v), idp_toml_col(v),
	     (k->flags & K_SECRET) ? IDP_TOML_EXCERPT_NONE : IDP_TOML_EXCERPT_LINE,
	     "%s: expected %s, found %s", name, idp_buf_str(&b), found_what(v));
	idp_buf_cleanup(&b);
}

static void
apply_flags(struct loader *l, const struct key *k, const struct idp_toml_node *v, void *base,
            const char *name)
{
	unsigned bits = 0;
	bool ok = true;

	if (idp_toml_type(v) != IDP_TOML_ARRAY || idp_toml_is_table_array(v)) {
		wrong_type(l, k, v, name);
		return;
	}
	for (size_t i = 0; i < idp_toml_count(v); i++) {
		const struct idp_toml_node *e = idp_toml_child(v, i);
		const char *s = idp_toml_string(e, NULL);
		size_t c;
		char q[300];
		struct idp_buf b;

		if (idp_toml_type(e) != IDP_TOML_STRING) {
			/* Arrays are homogeneous: the first element speaks for all. */
			idp_buf_init(&b, 512);
			put_choices(&b, k->choices, ", ", true);
			lerr(l, idp_toml_line(e), idp_toml_col(e), IDP_TOML_EXCERPT_LINE,
			     "%s[%zu]: expected one of %s, found %s", name, i, idp_buf_str(&b),
			     found_what(e));
			idp_buf_cleanup(&b);
			return;
		}
		for (c = 0; k->choices[c] != NULL && strcmp(k->choices[c], s) != 0; c++)
			;
		if (k->choices[c] != NULL) {
			bits |= 1u << c;
			continue;
		}
		quote_value(s, q);
		idp_buf_init(&b, 512);
		put_choices(&b, k->choices, ", ", true);
		lerr(l, idp_toml_line(e), idp_toml_col(e), IDP_TOML_EXCERPT_LINE,
		     "%s[%zu]: %s is not one of %s", name, i, q, idp_buf_str(&b));
		idp_buf_cleanup(&b);
		ok = false;
	}
	if (ok)
		*(unsigned *)field(base, k->off) = bits;
}

static void
apply_value(struct loader *l, const struct key *k, const struct idp_toml_node *v, void *base,
            const char *name)
{
	enum idp_toml_excerpt ex =
	    (k->flags & K_SECRET) ? IDP_TOML_EXCERPT_NONE : IDP_TOML_EXCERPT_LINE;
	enum idp_toml_type t = idp_toml_type(v);
	char why[1024];
	int64_t i;
	size_t len;
	const char *s;

	switch (k->type) {
	case K_STRING:
	case K_DURATION:
	case K_ENUM:
		if (t != IDP_TOML_STRING) {
			wrong_type(l, k, v, name);
			return;
		}
		s = idp_toml_string(v, &len);
		if (convert_string(k, s, len, base, why, sizeof(why)) != NULL)
			lerr(l, idp_toml_line(v), idp_toml_col(v), ex, "%s: %s", name, why);
		return;
	case K_INT:
	case K_INT64:
		if (t != IDP_TOML_INT) {
			wrong_type(l, k, v, name);
			return;
		}
		i = idp_toml_int(v);
		if (i < k->min || i > k->max) {
			lerr(l, idp_toml_line(v), idp_toml_col(v), ex,
			     "%s: %lld is out of range: expected an integer from %lld to %lld",
			     name, (long long)i, (long long)k->min, (long long)k->max);
			return;
		}
		if (k->type == K_INT)
			*(int *)field(base, k->off) = (int)i;
		else
			*(int64_t *)field(base, k->off) = i;
		return;
	case K_BOOL:
		if (t != IDP_TOML_BOOL) {
			wrong_type(l, k, v, name);
			return;
		}
		*(bool *)field(base, k->off) = idp_toml_bool(v);
		return;
	case K_FLAGS:
		apply_flags(l, k, v, base, name);
		return;
	case K_TABLES:
		return; /* apply_tables */
	}
}

static void apply_table(struct loader *l, const struct idp_toml_node *t, const struct section *sec,
                        const char *prefix, void *base, const char *label, bool *seen);

/* The node at a dotted path below table t, or NULL. */
static const struct idp_toml_node *
lookup(const struct idp_toml_node *t, const char *path)
{
	char part[IDP_TOML_MAX_KEY + 1];

	while (t != NULL && *path != '\0') {
		size_t n = strcspn(path, ".");

		if (n > IDP_TOML_MAX_KEY)
			return NULL;
		memcpy(part, path, n);
		part[n] = '\0';
		t = idp_toml_get(t, part);
		path += n + (path[n] == '.');
	}
	return t;
}

struct uniq {
	const char *s;
	size_t elem;
};

static int
uniq_cmp(const void *a, const void *b)
{
	const struct uniq *x = a, *y = b;
	int c = strcmp(x->s, y->s);

	if (c != 0)
		return c;
	return x->elem < y->elem ? -1 : x->elem > y->elem;
}

/* Report elements of an array of tables that repeat a K_UNIQUE value of an earlier one. */
static void
check_unique(struct loader *l, const struct key *tk, const struct idp_toml_node *arr, char *elems,
             size_t n)
{
	const struct section *sec = tk->sub;
	struct uniq *u = idp_xcalloc(n, sizeof(*u));

	for (size_t i = 0; i < sec->n; i++) {
		const struct key *k = &sec->keys[i];
		size_t m = 0;

		if (!(k->flags & K_UNIQUE) || k->type != K_STRING)
			continue;
		for (size_t e = 0; e < n; e++) {
			const char *s = *str_field(elems + e * sec->size, k);

			if (s != NULL) {
				u[m].s = s;
				u[m++].elem = e;
			}
		}
		qsort(u, m, sizeof(*u), uniq_cmp);
		for (size_t j = 1, first = 0; j < m; j++) {
			const struct idp_toml_node *v;

			if (strcmp(u[j].s, u[first].s) != 0) {
				first = j;
				continue;
			}
			v = lookup(idp_toml_child(arr, u[j].elem), k->name);
			if (v == NULL)
				continue;
			lerr(l, idp_toml_line(v), idp_toml_col(v),
			     (k->flags & K_SECRET) ? IDP_TOML_EXCERPT_NONE : IDP_TOML_EXCERPT_LINE,
			     "%s[%zu].%s: the same value as %s[%zu].%s; each must be unique",
			     tk->name, u[j].elem, k->name, tk->name, u[first].elem, k->name);
		}
	}
	free(u);
}

/* Report required keys of sec that were not set, at line:col (the table's header). */
static void
check_required(struct loader *l, const struct section *sec, const bool *seen, const char *label,
               unsigned line, unsigned col, enum idp_toml_excerpt ex)
{
	const char *one_of[2] = {NULL, NULL};
	size_t n_one_of = 0, n_set = 0;

	for (size_t i = 0; i < sec->n; i++) {
		char *name;

		if (sec->keys[i].flags & K_ONE_OF) {
			if (n_one_of < 2)
				one_of[n_one_of] = sec->keys[i].name;
			n_one_of++;
			n_set += seen[i];
		}
		if (!(sec->keys[i].flags & K_REQUIRED) || seen[i])
			continue;
		name = display_name(label, sec->keys[i].name);
		lerr(l, line, col, ex, "%s: required key is missing", name);
		free(name);
	}
	if (n_one_of == 2 && n_set != 1)
		lerr(l, line, col, ex, "%s%s, %s%s: %s", label, one_of[0], label, one_of[1],
		     n_set == 0 ? "one of the two is required" : "set one of the two, not both");
}

static void
apply_tables(struct loader *l, const struct key *k, const struct idp_toml_node *v, void *base,
             const char *name)
{
	const struct section *sec = k->sub;
	char **elems = field(base, k->off);
	size_t *count = field(base, k->count_off);
	size_t n;

	if (!idp_toml_is_table_array(v)) {
		wrong_type(l, k, v, name);
		return;
	}
	n = idp_toml_count(v);
	*elems = idp_xcalloc(n, sec->size);
	*count = n;
	for (size_t e = 0; e < n; e++) {
		const struct idp_toml_node *t = idp_toml_child(v, e);
		char *label = idp_xasprintf("%s[%zu].", name, e);
		bool *seen = idp_xcalloc(sec->n, sizeof(*seen));
		void *elem = *elems + e * sec->size;

		set_defaults(sec, elem);
		apply_table(l, t, sec, "", elem, label, seen);
		check_required(l, sec, seen, label, idp_toml_line(t), idp_toml_col(t),
		               IDP_TOML_EXCERPT_LINE);
		free(seen);
		free(label);
	}
	check_unique(l, k, v, *elems, n);
}

/*
 * Apply every entry of table t to the struct at base.  prefix is t's dotted
 * name within sec ("" or "server"); label goes before names in messages
 * ("" or "api_keys[2].").  seen[i] is set for each key of sec that was set.
 */
static void
apply_table(struct loader *l, const struct idp_toml_node *t, const struct section *sec,
            const char *prefix, void *base, const char *label, bool *seen)
{
	for (size_t i = 0; i < idp_toml_count(t); i++) {
		const struct idp_toml_node *c = idp_toml_child(t, i);
		char *name = prefix[0] != '\0' ? idp_xasprintf("%s.%s", prefix, idp_toml_key(c))
		                               : idp_xstrdup(idp_toml_key(c));
		char *shown = display_name(label, name);
		const struct key *k = find_key(sec, name);
		char hint[64];

		if (strchr(idp_toml_key(c), '.') != NULL) {
			/* A quoted key holding a dot ("server.port" = 1) would pass
			 * for the dotted path it spells and slip past the duplicate
			 * checks (the later value winning unseen); no key of idpd's
			 * has a dot, so it is refused. */
			lerr(l, idp_toml_key_line(c), idp_toml_key_col(c), IDP_TOML_EXCERPT_KEY,
			     "%s: a key may not contain '.'; write the table or the dotted key "
			     "unquoted",
			     shown);
		} else if (k != NULL) {
			seen[k - sec->keys] = true;
			if (k->type == K_TABLES)
				apply_tables(l, k, c, base, shown);
			else
				apply_value(l, k, c, base, shown);
		} else if (is_table_prefix(sec, name)) {
			if (idp_toml_type(c) == IDP_TOML_TABLE)
				apply_table(l, c, sec, name, base, label, seen);
			else
				lerr(l, idp_toml_line(c), idp_toml_col(c), IDP_TOML_EXCERPT_LINE,
				     "%s: expected a table, found %s", shown, found_what(c));
		} else if (suggest(sec, name, hint) != NULL) {
			lerr(l, idp_toml_key_line(c), idp_toml_key_col(c), IDP_TOML_EXCERPT_KEY,
			     "%s: unknown %s; did you mean %s%s?", shown,
			     idp_toml_type(c) == IDP_TOML_TABLE ? "table" : "key", label, hint);
		} else {
			lerr(l, idp_toml_key_line(c), idp_toml_key_col(c), IDP_TOML_EXCERPT_KEY,
			     "%s: unknown %s", shown,
			     idp_toml_type(c) == IDP_TOML_TABLE ? "table" : "key");
		}
		free(shown);
		free(name);
	}
}

/* Environment overrides: only string-typed keys carry one. */
static void
apply_env(struct loader *l, const struct section *sec, void *base)
{
	char why[1024];

	for (size_t i = 0; i < sec->n; i++) {
		const struct key *k = &sec->keys[i];
		const char *s;

		if (k->env == NULL || (s = getenv(k->env)) == NULL)
			continue;
		if (convert_string(k, s, strlen(s), base, why, sizeof(why)) != NULL) {
			idp_diag_add(l->diag, "$%s: %s: %s", k->env, k->name, why);
			l->nerr++;
		}
	}
}

/* The key of sec at the dotted path ("server.port", "api_keys.hash"), or NULL. */
static const struct key *
key_at(const struct section *sec, const char *path)
{
	for (size_t i = 0; i < sec->n; i++) {
		const struct key *k = &sec->keys[i];
		size_t n = strlen(k->name);

		if (strcmp(k->name, path) == 0)
			return k;
		if (k->type == K_TABLES && strncmp(path, k->name, n) == 0 && path[n] == '.')
			return key_at(k->sub, path + n + 1);
	}
	return NULL;
}

/*
 * To the TOML reader, every key is secret but the known keys that are not:
 * an error excerpt then never quotes a secret's line, nor the line of a key
 * idpd does not know, which may be a secret under a misspelt name
 * ("[databse] url = ...", "hsah = ...").  An array of tables written
 * inline may hold any of its keys.
 */
static bool
is_secret(const char *path, void *arg)
{
	const struct key *k = key_at(&config_section, path);

	(void)arg;
	return k == NULL || k->type == K_TABLES || (k->flags & K_SECRET);
}

int
idpd_config_parse(const char *name, const char *text, size_t len, struct idpd_config **out,
                  struct idp_diag *diag)
{
	struct idp_toml_opts opts = {is_secret, NULL};
	struct idp_toml *doc = NULL;
	struct idpd_config *cfg;
	struct loader l;
	bool *seen;
	int rc;

	*out = NULL;
	rc = idp_toml_parse(name, text, len, &opts, &doc, diag);
	if (rc != IDP_OK)
		return rc;
	cfg = idpd_config_defaults();
	cfg->path = idp_xstrdup(idp_toml_name(doc));
	sha256_hex(text, len, cfg->sha256);
	l.doc = doc;
	l.diag = diag;
	l.nerr = 0;
	seen = idp_xcalloc(config_section.n, sizeof(*seen));
	apply_table(&l, idp_toml_root(doc), &config_section, "", cfg, "", seen);
	check_required(&l, &config_section, seen, "", 1, 1, IDP_TOML_EXCERPT_NONE);
	free(seen);
	apply_env(&l, &config_section, cfg);
	idp_toml_free(doc);
	if (l.nerr > 0) {
		idpd_config_free(cfg);
		return IDP_EUNPROCESSABLE;
	}
	*out = cfg;
	return IDP_OK;
}

int
idpd_config_load(const char *path, struct idpd_config **out, struct idp_diag *diag)
{
	return idpd_config_load_ex(path, out, NULL, diag);
}

int
idpd_config_load_ex(const char *path, struct idpd_config **out, char sum[IDPD_CONFIG_SUM_LEN + 1],
                    struct idp_diag *diag)
{
	char ebuf[128];
	size_t cap = IDP_TOML_MAX_INPUT + 1, len = 0;
	char *data = NULL;
	int fd, rc;

	*out = NULL;
	if (sum != NULL)
		sum[0] = '\0';
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		idp_diag_add(diag, "%s: cannot open: %s", path,
		             idp_strerror(errno, ebuf, sizeof(ebuf)));
		return IDP_EIO;
	}
	/* Read one byte past the limit, so an oversized file is told apart. */
	data = idp_xmalloc(cap);
	while (len < cap) {
		ssize_t r = read(fd, data + len, cap - len);

		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			idp_diag_add(diag, "%s: cannot read: %s", path,
			             idp_strerror(errno, ebuf, sizeof(ebuf)));
			rc = IDP_EIO;
			goto done;
		}
		if (r == 0)
			break;
		len += (size_t)r;
	}
	if (len > IDP_TOML_MAX_INPUT) {
		idp_diag_add(diag, "%s:1:1: file is larger than the limit of %d bytes", path,
		             IDP_TOML_MAX_INPUT);
		rc = IDP_ETOOBIG;
		goto done;
	}
	/* Only of a whole file: the hash of a prefix would match no version. */
	if (sum != NULL)
		sha256_hex(data, len, sum);
	rc = idpd_config_parse(path, data, len, out, diag);
	/* Read here, where the TOML is, and only here: the reload's event
	 * names the hashes of these bytes, and the components build their key
	 * sets from the same bytes, never from the file again. */
	if (rc == IDP_OK)
		read_named_files(&config_section, *out);
done:
	idp_wipe(data, len);
	free(data);
	close(fd);
	return rc;
}

/* ---- reload check ---- */

static bool section_equal(const struct section *sec, const void *a, const void *b);

/* The hex SHA-256 of the file the K_FILE_SUM key k names in obj; "" if none. */
static const char *
elem_sum(const struct key *k, const void *obj)
{
	return cfield(obj, k->sum_off);
}

static bool
str_equal(const char *a, const char *b)
{
	if (a == NULL || b == NULL)
		return a == b;
	return strcmp(a, b) == 0;
}

/* Whether the files k names in a and b hashed the same; true if k names none. */
static bool
sum_equal(const struct key *k, const void *a, const void *b)
{
	return !(k->flags & K_FILE_SUM) || strcmp(elem_sum(k, a), elem_sum(k, b)) == 0;
}

static bool
key_equal(const struct key *k, const void *a, const void *b)
{
	const void *fa = cfield(a, k->off), *fb = cfield(b, k->off);

	switch (k->type) {
	case K_STRING:
	case K_ENUM:
		return str_equal(*(char *const *)fa, *(char *const *)fb) && sum_equal(k, a, b);
	case K_INT:
		return *(const int *)fa == *(const int *)fb;
	case K_INT64:
	case K_DURATION:
		return *(const int64_t *)fa == *(const int64_t *)fb;
	case K_BOOL:
		return *(const bool *)fa == *(const bool *)fb;
	case K_FLAGS:
		return *(const unsigned *)fa == *(const unsigned *)fb;
	case K_TABLES: {
		const char *ea = *(char *const *)fa, *eb = *(char *const *)fb;
		size_t na = *(const size_t *)cfield(a, k->count_off);
		size_t nb = *(const size_t *)cfield(b, k->count_off);

		if (na != nb)
			return false;
		for (size_t e = 0; e < na; e++)
			if (!section_equal(k->sub, ea + e * k->sub->size, eb + e * k->sub->size))
				return false;
		return true;
	}
	}
	return false;
}

static bool
section_equal(const struct section *sec, const void *a, const void *b)
{
	for (size_t i = 0; i < sec->n; i++) {
		if (!key_equal(&sec->keys[i], a, b))
			return false;
	}
	return true;
}

unsigned
idpd_config_restart_keys(const struct idpd_config *old, const struct idpd_config *cur,
                         struct idp_diag *diag)
{
	unsigned n = 0;

	for (size_t i = 0; i < config_section.n; i++) {
		const struct key *k = &config_section.keys[i];

		if ((k->flags & K_RELOAD) || key_equal(k, old, cur))
			continue;
		idp_diag_add(diag, "%s: changed; takes effect after a restart", k->name);
		n++;
	}
	return n;
}

/* ---- what a reload changes ---- */

/* What names an element of sec: its first unique string key, never a secret. */
static const struct key *
identity_key(const struct section *sec)
{
	for (size_t i = 0; i < sec->n; i++) {
		const struct key *k = &sec->keys[i];

		if ((k->flags & K_UNIQUE) && !(k->flags & K_SECRET) && k->type == K_STRING)
			return k;
	}
	return NULL;
}

static const char *
elem_str(const struct key *k, const void *elem)
{
	return *(char *const *)cfield(elem, k->off);
}

/* Sets o[name] to v, which it steals; a NULL v (no memory, bad UTF-8) is left out. */
static void
put(json_t *o, const char *name, json_t *v)
{
	if (v != NULL)
		json_object_set_new(o, name, v);
}

/* o[prefix + name + "_sha256"] = sum. */
static void
put_sum(json_t *o, const char *prefix, const char *name, const char *sum)
{
	char key[64];

	snprintf(key, sizeof(key), "%s%s_sha256", prefix, name);
	put(o, key, json_string(sum));
}

/*
 * One element, named by idk and its K_SHOWN keys; with before (the same
 * element in the running configuration), also the names of the keys that
 * differ.
 */
static json_t *
elem_json(const struct section *sec, const struct key *idk, const void *elem, const void *before)
{
	json_t *o = json_object(), *fields;

	put(o, idk->name, json_string(elem_str(idk, elem)));
	for (size_t i = 0; i < sec->n; i++) {
		const struct key *k = &sec->keys[i];

		/* The hash of a public key set is no secret, and tells which
		 * version of the file was trusted; the file's name is not shown. */
		if ((k->flags & K_FILE_SUM) && *elem_sum(k, elem) != '\0')
			put_sum(o, "", k->sum_field, elem_sum(k, elem));
		if ((k->flags & K_FILE_SUM) && before != NULL && !sum_equal(k, before, elem) &&
		    *elem_sum(k, before) != '\0')
			put_sum(o, "previous_", k->sum_field, elem_sum(k, before));
		if (!(k->flags & K_SHOWN) || (k->flags & K_SECRET))
			continue;
		if ((k->type == K_STRING || k->type == K_ENUM) && elem_str(k, elem) != NULL) {
			put(o, k->name, json_string(elem_str(k, elem)));
		} else if (k->type == K_FLAGS) {
			unsigned bits = *(const unsigned *)cfield(elem, k->off);
			json_t *a = json_array();

			for (size_t c = 0; k->choices[c] != NULL; c++)
				if (bits & (1u << c))
					json_array_append_new(a, json_string(k->choices[c]));
			put(o, k->name, a);
		}
	}
	if (before == NULL)
		return o;
	fields = json_array();
	for (size_t i = 0; i < sec->n; i++) {
		const struct key *k = &sec->keys[i];

		if (!(k->flags & K_FILE_SUM)) {
			if (!key_equal(k, before, elem))
				json_array_append_new(fields, json_string(k->name));
			continue;
		}
		/* The file's name and its contents are told apart: new keys
		 * in the same file are a change of trust of their own. */
		if (!str_equal(elem_str(k, before), elem_str(k, elem)))
			json_array_append_new(fields, json_string(k->name));
		if (!sum_equal(k, before, elem))
			json_array_append_new(fields, json_string(k->sum_field));
	}
	put(o, "fields", fields);
	return o;
}

/* The index of the element of elems (n of them) whose identity is id, or n. */
static size_t
find_elem(const struct section *sec, const struct key *idk, const char *elems, size_t n,
          const char *id)
{
	for (size_t i = 0; i < n; i++) {
		const char *s = elem_str(idk, elems + i * sec->size);

		if (s != NULL && id != NULL && strcmp(s, id) == 0)
			return i;
	}
	return n;
}

/* Adds a (stolen) list, or its length when compact, to o unless it is empty. */
static void
put_list(json_t *o, const char *name, json_t *a, bool compact)
{
	size_t n = json_array_size(a);

	if (n > 0)
		put(o, name, compact ? json_integer((json_int_t)n) : json_incref(a));
	json_decref(a);
}

/*
 * The changes to the array of tables k between running and next, or NULL
 * when there are none.  Elements are matched by identity, so a reordered
 * file changes nothing; the search is quadratic, which the 1 MiB bound on
 * the file keeps to a fraction of a second.
 */
static json_t *
section_changes(const struct key *k, const void *running, const void *next, bool compact)
{
	const struct section *sec = k->sub;
	const struct key *idk = identity_key(sec);
	const char *ea = *(char *const *)cfield(running, k->off);
	const char *eb = *(char *const *)cfield(next, k->off);
	size_t na = *(const size_t *)cfield(running, k->count_off);
	size_t nb = *(const size_t *)cfield(next, k->count_off);
	json_t *o, *added, *removed, *changed;

	if (key_equal(k, running, next))
		return NULL;
	o = json_object();
	put(o, "section", json_string(k->name));
	if (idk == NULL)
		return o; /* nothing names its elements: that it changed is all there is to say */
	added = json_array();
	removed = json_array();
	changed = json_array();
	for (size_t j = 0; j < nb; j++) {
		const char *b = eb + j * sec->size;
		size_t i = find_elem(sec, idk, ea, na, elem_str(idk, b));

		if (i == na)
			json_array_append_new(added, elem_json(sec, idk, b, NULL));
		else if (!section_equal(sec, ea + i * sec->size, b))
			json_array_append_new(changed, elem_json(sec, idk, b, ea + i * sec->size));
	}
	for (size_t i = 0; i < na; i++) {
		const char *a = ea + i * sec->size;

		if (find_elem(sec, idk, eb, nb, elem_str(idk, a)) == nb)
			json_array_append_new(removed, elem_json(sec, idk, a, NULL));
	}
	put_list(o, "added", added, compact);
	put_list(o, "removed", removed, compact);
	put_list(o, "changed", changed, compact);
	return o;
}

json_t *
idpd_config_changes(const struct idpd_config *started, const struct idpd_config *running,
                    const struct idpd_config *next, bool compact)
{
	json_t *out = json_object(), *settings = json_array(), *pending = json_array();
	json_t *sections = json_array();

	for (size_t i = 0; i < config_section.n; i++) {
		const struct key *k = &config_section.keys[i];

		if (!(k->flags & K_RELOAD)) {
			if (!key_equal(k, started, next))
				json_array_append_new(pending, json_string(k->name));
		} else if (k->type == K_TABLES) {
			json_t *s = section_changes(k, running, next, compact);

			if (s != NULL)
				json_array_append_new(sections, s);
		} else if (!key_equal(k, running, next)) {
			json_array_append_new(settings, json_string(k->name));
		}
	}
	put(out, "settings", settings);
	put(out, "restart_pending", pending);
	put(out, "sections", sections);
	return out;
}

/* ---- describe ---- */

static void
put_type(struct idp_buf *b, const struct key *k)
{
	char lo[32], hi[32];
	int rc = 0;

	switch (k->type) {
	case K_STRING:
		rc = idp_buf_puts(b, "string");
		break;
	case K_INT:
	case K_INT64:
		rc = idp_buf_printf(b, "integer %lld..%lld", (long long)k->min, (long long)k->max);
		break;
	case K_BOOL:
		rc = idp_buf_puts(b, "boolean");
		break;
	case K_DURATION:
		format_duration(k->min, lo);
		format_duration(k->max, hi);
		rc = idp_buf_printf(b, "duration %s..%s", lo, hi);
		break;
	case K_ENUM:
		put_choices(b, k->choices, "|", false);
		break;
	case K_FLAGS:
		rc = idp_buf_puts(b, "[");
		put_choices(b, k->choices, "|", false);
		rc |= idp_buf_puts(b, ", ...]");
		break;
	case K_TABLES:
		rc = idp_buf_puts(b, "array of tables");
		break;
	}
	(void)rc;
}

static void
put_default(struct idp_buf *b, const struct key *k)
{
	int rc;

	/* A required key has no default to hide. */
	if (k->flags & K_REQUIRED)
		rc = idp_buf_puts(b, "(required)");
	else if (k->flags & K_SECRET)
		rc = idp_buf_puts(b, "<secret>");
	else if (k->type == K_TABLES || k->def == NULL)
		rc = idp_buf_puts(b, "(none)"); /* an optional key unset: no printf of NULL */
	else if (k->type == K_STRING || k->type == K_DURATION || k->type == K_ENUM)
		rc = idp_buf_printf(b, "\"%s\"", k->def);
	else
		rc = idp_buf_puts(b, k->def);
	(void)rc;
}

struct row {
	char *name, *type, *def;
	const struct key *k;
};

static void
collect_rows(const struct section *sec, const char *prefix, struct row *rows, size_t *n)
{
	for (size_t i = 0; i < sec->n; i++) {
		const struct key *k = &sec->keys[i];
		struct idp_buf b;

		rows[*n].k = k;
		rows[*n].name = idp_xasprintf("%s%s", prefix, k->name);
		idp_buf_init(&b, 0);
		put_type(&b, k);
		rows[*n].type = idp_buf_take(&b, NULL);
		put_default(&b, k);
		rows[*n].def = idp_buf_take(&b, NULL);
		(*n)++;
		if (k->type == K_TABLES) {
			char *sub = idp_xasprintf("%s%s[].", prefix, k->name);

			collect_rows(k->sub, sub, rows, n);
			free(sub);
		}
	}
}

static size_t
count_rows(const struct section *sec)
{
	size_t n = sec->n;

	for (size_t i = 0; i < sec->n; i++)
		if (sec->keys[i].type == K_TABLES)
			n += count_rows(sec->keys[i].sub);
	return n;
}

static void
write_all(int fd, const char *p, size_t n)
{
	while (n > 0) {
		ssize_t w = write(fd, p, n);

		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return; /* describe is best effort: a closed pipe ends it */
		p += w;
		n -= (size_t)w;
	}
}

void
idpd_config_describe(int fd)
{
	size_t n = 0, total = count_rows(&config_section), wn = 0, wt = 0, wd = 0;
	struct row *rows = idp_xcalloc(total, sizeof(*rows));
	struct idp_buf out;
	int rc = 0;

	collect_rows(&config_section, "", rows, &n);
	for (size_t i = 0; i < n; i++) {
		if (strlen(rows[i].name) > wn)
			wn = strlen(rows[i].name);
		if (strlen(rows[i].type) > wt)
			wt = strlen(rows[i].type);
		if (strlen(rows[i].def) > wd)
			wd = strlen(rows[i].def);
	}
	idp_buf_init(&out, 0);
	for (size_t i = 0; i < n; i++) {
		const struct key *k = rows[i].k;

		rc |= idp_buf_printf(&out, "%-*s  %-*s  %-*s  %-7s  %s", (int)wn, rows[i].name,
		                     (int)wt, rows[i].type, (int)wd, rows[i].def,
		                     (k->flags & K_RELOAD) ? "reload" : "restart", k->help);
		if (k->env != NULL)
			rc |= idp_buf_printf(&out, "; $%s overrides it", k->env);
		rc |= idp_buf_putc(&out, '\n');
		free(rows[i].name);
		free(rows[i].type);
		free(rows[i].def);
	}
	if (rc == 0)
		write_all(fd, out.data, out.len);
	idp_buf_cleanup(&out);
	free(rows);
}
