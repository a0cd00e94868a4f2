/*
 * Unit tests for src/config/config.c: defaults, every key type, every
 * validation error with its message and position, [[api_keys]], the
 * environment override, secrets kept out of messages, describe output, the
 * reload check, and the documentation test over config.example.toml and
 * docs/configuration.md.
 */
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "idpd/audit.h"
#include "idpd/buf.h"
#include "idpd/config.h"
#include "idpd/toml.h"

#define HASH_A "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
#define HASH_B "sha256:d479b3180985a397d3cc5bf641ca9628588344241f8a8a89c59062fc3a574f8d"

static int
clear_env(void **state)
{
	(void)state;
	unsetenv("IDPD_DATABASE_URL");
	return 0;
}

static struct idpd_config *
load_ok(const char *text)
{
	struct idpd_config *cfg = NULL;
	struct idp_diag d;
	int rc;

	idp_diag_init(&d);
	rc = idpd_config_parse("c.toml", text, strlen(text), &cfg, &d);
	if (rc != IDP_OK)
		print_error("unexpected errors:\n%s\n", idp_diag_str(&d));
	assert_int_equal(rc, IDP_OK);
	assert_non_null(cfg);
	assert_int_equal(d.count, 0);
	return cfg;
}

/* Expect failure with rc; return the diag text (valid until the next call). */
static const char *
load_fail(const char *text, int want_rc, unsigned *count)
{
	static struct idp_diag d;
	/* Any non-NULL value: a failed parse must reset it. */
	struct idpd_config *cfg = (struct idpd_config *)(void *)&d;

	idp_diag_init(&d);
	assert_int_equal(idpd_config_parse("c.toml", text, strlen(text), &cfg, &d), want_rc);
	assert_null(cfg);
	if (count != NULL)
		*count = d.count;
	return idp_diag_str(&d);
}

static const char *
first_line(const char *s)
{
	static char line[1024];
	size_t n = strcspn(s, "\n");

	if (n >= sizeof(line))
		n = sizeof(line) - 1;
	memcpy(line, s, n);
	line[n] = '\0';
	return line;
}

/* Exactly one validation error, whose message line is want. */
static void
expect_error(const char *text, const char *want)
{
	unsigned count = 0;
	const char *got = load_fail(text, IDP_EUNPROCESSABLE, &count);

	assert_string_equal(first_line(got), want);
	assert_int_equal(count, 1);
}

/* ---- defaults and the happy path ---- */

static void
assert_defaults(const struct idpd_config *c)
{
	assert_string_equal(c->server.listen, "127.0.0.1");
	assert_int_equal(c->server.port, 8080);
	assert_int_equal(c->server.threads, 0);
	assert_int_equal(c->server.max_body, 1024 * 1024);
	assert_int_equal(c->server.max_connections, 1024);
	assert_int_equal(c->server.connection_timeout_ms, 30000);
	assert_int_equal(c->server.shutdown_timeout_ms, 10000);
	assert_int_equal(c->server.json_max_depth, 32);
	assert_string_equal(c->database.url, "postgresql://postgres@127.0.0.1:54329/idpd");
	assert_int_equal(c->database.pool_size, 8);
	assert_int_equal(c->database.connect_timeout_ms, 5000);
	assert_int_equal(c->database.acquire_timeout_ms, 2000);
	assert_int_equal(c->database.statement_timeout_ms, 5000);
	assert_string_equal(c->log.level, "info");
	assert_true(c->log.access);
	assert_string_equal(c->node.instance_id, "");
	assert_string_equal(c->node.migrations_dir, "migrations");
	assert_null(c->api_keys);
	assert_int_equal(c->n_api_keys, 0);
}

/* An owner "idp:subject" ends the IdP's name at its first ':', so no name may hold one. */
static void
idp_name_holds_no_colon(void **state)
{
	static const char fmt[] = "[[idp]]\nname = \"%s\"\nissuer = \"https://idp.example\"\n"
	                          "audience = \"idpd\"\njwks_file = \"/etc/idpd/idp.jwks.json\"\n";
	char text[512];
	struct idpd_config *c;

	(void)state;
	snprintf(text, sizeof(text), fmt, "okta:eu");
	assert_non_null(strstr(load_fail(text, IDP_EUNPROCESSABLE, NULL), "idp:subject"));
	snprintf(text, sizeof(text), fmt, "okta-eu");
	c = load_ok(text);
	assert_string_equal(c->idps[0].name, "okta-eu");
	idpd_config_free(c);
}

static void
config_defaults_match_the_documented_values(void **state)
{
	struct idpd_config *c = idpd_config_defaults();

	(void)state;
	assert_defaults(c);
	assert_null(c->path);
	idpd_config_free(c);
	/* An empty file means every default. */
	c = load_ok("");
	assert_defaults(c);
	assert_string_equal(c->path, "c.toml");
	idpd_config_free(c);
}

static void
config_reads_every_key_type(void **state)
{
	struct idpd_config *c = load_ok("[server]\n"
	                                "listen = \"::1\"\n"
	                                "port = 9443\n"
	                                "threads = 4\n"
	                                "max_body = 2_097_152\n"
	                                "max_connections = 10\n"
	                                "connection_timeout = \"2m\"\n"
	                                "shutdown_timeout = \"0s\"\n"
	                                "json_max_depth = 8\n"
	                                "[database]\n"
	                                "url = 'postgresql://app@db.internal/idpd'\n"
	                                "pool_size = 16\n"
	                                "connect_timeout = \"500ms\"\n"
	                                "acquire_timeout = \"1s\"\n"
	                                "statement_timeout = \"1h\"\n"
	                                "[log]\n"
	                                "level = \"debug\"\n"
	                                "access = false\n"
	                                "[node]\n"
	                                "instance_id = \"node-1.eu:a\"\n"
	                                "migrations_dir = \"/usr/share/idpd/migrations\"\n");

	(void)state;
	assert_string_equal(c->server.listen, "::1");
	assert_int_equal(c->server.port, 9443);
	assert_int_equal(c->server.threads, 4);
	assert_int_equal(c->server.max_body, 2097152);
	assert_int_equal(c->server.max_connections, 10);
	assert_int_equal(c->server.connection_timeout_ms, 120000);
	assert_int_equal(c->server.shutdown_timeout_ms, 0);
	assert_int_equal(c->server.json_max_depth, 8);
	assert_string_equal(c->database.url, "postgresql://app@db.internal/idpd");
	assert_int_equal(c->database.pool_size, 16);
	assert_int_equal(c->database.connect_timeout_ms, 500);
	assert_int_equal(c->database.acquire_timeout_ms, 1000);
	assert_int_equal(c->database.statement_timeout_ms, 3600000);
	assert_string_equal(c->log.level, "debug");
	assert_false(c->log.access);
	assert_string_equal(c->node.instance_id, "node-1.eu:a");
	assert_string_equal(c->node.migrations_dir, "/usr/share/idpd/migrations");
	idpd_config_free(c);
}

static void
config_accepts_dotted_keys_for_tables(void **state)
{
	struct idpd_config *c = load_ok("server.port = 1\nlog.level = \"error\"\n");

	(void)state;
	assert_int_equal(c->server.port, 1);
	assert_string_equal(c->log.level, "error");
	idpd_config_free(c);
}

static void
config_free_null_is_noop(void **state)
{
	(void)state;
	idpd_config_free(NULL);
}

/* ---- validation errors ---- */

static void
config_rejects_unknown_key_with_position(void **state)
{
	unsigned count;
	const char *d = load_fail("[server]\nprot = 80\n", IDP_EUNPROCESSABLE, &count);

	(void)state;
	assert_string_equal(d, "c.toml:2:1: server.prot: unknown key; did you mean server.port?\n"
	                       " 2 | prot\n"
	                       "   | ^");
	assert_int_equal(count, 1);
	expect_error("[server]\nbanana = 1\n", "c.toml:2:1: server.banana: unknown key");
	expect_error("verbose = true\n", "c.toml:1:1: verbose: unknown key");
	expect_error("[log]\n\"lev\\nel\" = 1\n",
	             "c.toml:2:1: log.lev?el: unknown key; did you mean log.level?");
}

static void
config_rejects_unknown_table(void **state)
{
	(void)state;
	expect_error("[databse]\npool_size = 3\n",
	             "c.toml:1:2: databse: unknown table; did you mean database?");
	expect_error("[tls]\ncert = \"x\"\n", "c.toml:1:2: tls: unknown table");
	expect_error("[server.tls]\ncert = \"x\"\n", "c.toml:1:9: server.tls: unknown table");
	expect_error("server = 1\n", "c.toml:1:10: server: expected a table, found an integer");
	expect_error("[[server]]\n", "c.toml:1:3: server: expected a table, found an array of "
	                             "tables");
}

static void
config_rejects_wrong_type(void **state)
{
	unsigned count;
	const char *d = load_fail("[server]\nport = \"8080\"\n", IDP_EUNPROCESSABLE, &count);

	(void)state;
	assert_string_equal(d, "c.toml:2:8: server.port: expected an integer from 1 to 65535, "
	                       "found a string\n"
	                       " 2 | port = \"8080\"\n"
	                       "   |        ^");
	expect_error("[log]\naccess = 1\n", "c.toml:2:10: log.access: expected true or false, "
	                                    "found an integer");
	expect_error("[log]\nlevel = [\"info\"]\n", "c.toml:2:9: log.level: expected one of "
	                                            "\"debug\", \"info\", \"warn\", \"error\", "
	                                            "found an array");
	expect_error("[node]\nmigrations_dir = 1\n", "c.toml:2:18: node.migrations_dir: expected "
	                                             "a string, found an integer");
	expect_error("[server.port]\n", "c.toml:1:1: server.port: expected an integer from 1 to "
	                                "65535, found a table");
}

static void
config_rejects_out_of_range(void **state)
{
	(void)state;
	expect_error("[server]\nport = 70000\n", "c.toml:2:8: server.port: 70000 is out of range: "
	                                         "expected an integer from 1 to 65535");
	expect_error("[server]\nport = 0\n", "c.toml:2:8: server.port: 0 is out of range: "
	                                     "expected an integer from 1 to 65535");
	expect_error("[server]\nmax_body = -1\n", "c.toml:2:12: server.max_body: -1 is out of "
	                                          "range: expected an integer from 1024 to "
	                                          "67108864");
	expect_error("[database]\npool_size = 9223372036854775807\n",
	             "c.toml:2:13: database.pool_size: 9223372036854775807 is out of range: "
	             "expected an integer from 1 to 256");
	expect_error("[server]\nconnection_timeout = \"2h\"\n",
	             "c.toml:2:22: server.connection_timeout: \"2h\" is out of range: expected a "
	             "duration from \"1s\" to \"1h\", such as \"30s\"");
	expect_error("[database]\nconnect_timeout = \"99ms\"\n",
	             "c.toml:2:19: database.connect_timeout: \"99ms\" is out of range: expected a "
	             "duration from \"100ms\" to \"5m\", such as \"30s\"");
}

static void
config_rejects_bad_duration(void **state)
{
	(void)state;
	expect_error(
	    "[server]\nconnection_timeout = \"30x\"\n",
	    "c.toml:2:22: server.connection_timeout: \"30x\" is not a duration: expected a "
	    "whole number followed by ms, s, m, h or d, such as \"30s\"");
	expect_error("[server]\nshutdown_timeout = \"-5s\"\n",
	             "c.toml:2:20: server.shutdown_timeout: \"-5s\" is not a duration: expected a "
	             "whole number followed by ms, s, m, h or d, such as \"30s\"");
	expect_error("[server]\nshutdown_timeout = \"1m30s\"\n",
	             "c.toml:2:20: server.shutdown_timeout: \"1m30s\" is not a duration: expected "
	             "a whole number followed by ms, s, m, h or d, such as \"30s\"");
	expect_error("[server]\nconnection_timeout = 30\n",
	             "c.toml:2:22: server.connection_timeout: expected a duration from \"1s\" to "
	             "\"1h\", such as \"30s\", found an integer");
}

static void
config_rejects_bad_enum(void **state)
{
	(void)state;
	expect_error("[log]\nlevel = \"verbose\"\n", "c.toml:2:9: log.level: \"verbose\" is not "
	                                             "one of \"debug\", \"info\", \"warn\", "
	                                             "\"error\"");
	/* Values are quoted with control characters escaped and long ones cut. */
	expect_error(
	    "[log]\nlevel = \"INFO\\n"
	    "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"\n",
	    "c.toml:2:9: log.level: \"INFO\\u000Axxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx...\" is "
	    "not one of \"debug\", \"info\", \"warn\", \"error\"");
}

static void
config_rejects_bad_strings(void **state)
{
	(void)state;
	expect_error("[server]\nlisten = \"localhost\"\n",
	             "c.toml:2:10: server.listen: expected an IPv4 or IPv6 address such as "
	             "127.0.0.1 or ::1");
	expect_error("[node]\nmigrations_dir = \"\"\n",
	             "c.toml:2:18: node.migrations_dir: must not be empty");
	expect_error("[node]\ninstance_id = \"has space\"\n",
	             "c.toml:2:15: node.instance_id: expected only letters, digits, '.', '_', '-' "
	             "and ':'");
	expect_error("[node]\ninstance_id = "
	             "\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"\n",
	             "c.toml:2:15: node.instance_id: must be at most 64 bytes long");
	expect_error("[[policy.verbs]]\nverb = \"cloud:Search\"\nclass = \"read\"\n",
	             "c.toml:2:8: policy.verbs[0].verb: expected a verb: letters, digits, '.', "
	             "'_', '-', '/', '*' (at most 4), no ':'");
	expect_error("[[policy.verbs]]\nverb = \"Search*\"\nclass = \"peek\"\n",
	             "c.toml:3:9: policy.verbs[0].class: \"peek\" is not one of \"read\", "
	             "\"write\", \"delete\", \"admin\"");
}

static void
config_reports_toml_errors_unchanged(void **state)
{
	unsigned count;

	(void)state;
	assert_string_equal(
	    first_line(load_fail("[server]\nport = 1\nport = 2\n", IDP_EINVAL, &count)),
	    "c.toml:3:1: duplicate key 'server.port' (first defined at line 2, "
	    "column 1)");
	assert_string_equal(
	    first_line(load_fail("[log]\n[log]\n", IDP_EINVAL, &count)),
	    "c.toml:2:1: duplicate table [log] (first defined at line 1, column 1)");
	assert_string_equal(first_line(load_fail("[server]\nmax_body = 99999999999999999999\n",
	                                         IDP_EINVAL, &count)),
	                    "c.toml:2:12: integer does not fit in 64 bits (9223372036854775807 is "
	                    "the largest)");
	assert_string_equal(first_line(load_fail("[server]\nport = 80.5\n", IDP_EINVAL, &count)),
	                    "c.toml:2:8: floating-point numbers are not supported");
	assert_string_equal(first_line(load_fail("[log]\nlevel = \"info\n", IDP_EINVAL, &count)),
	                    "c.toml:2:9: unterminated string");
	assert_string_equal(first_line(load_fail("[log]\nlevel = \"\\x41\"\n", IDP_EINVAL, &count)),
	                    "c.toml:2:10: invalid escape sequence; the escapes are \\b \\t \\n \\f "
	                    "\\r \\\" \\\\ \\uXXXX and \\UXXXXXXXX");
}

static void
config_collects_every_error(void **state)
{
	unsigned count;
	const char *d = load_fail("[server]\n"
	                          "port = 0\n"
	                          "listen = 1\n"
	                          "colour = \"blue\"\n"
	                          "[log]\n"
	                          "level = \"loud\"\n"
	                          "[[api_keys]]\n"
	                          "name = \"x\"\n",
	                          IDP_EUNPROCESSABLE, &count);

	(void)state;
	assert_int_equal(count, 5);
	assert_non_null(strstr(d, "c.toml:2:8: server.port: 0 is out of range"));
	assert_non_null(strstr(d, "c.toml:3:10: server.listen: expected a string, found an "
	                          "integer"));
	assert_non_null(strstr(d, "c.toml:4:1: server.colour: unknown key"));
	assert_non_null(strstr(d, "c.toml:6:9: log.level: \"loud\" is not one of"));
	assert_non_null(strstr(d, "c.toml:7:1: api_keys[0].hash: required key is missing"));
}

/* An API key's audiences: single spaces between them, printable, none twice. */
static void
config_checks_api_key_audiences(void **state)
{
	static const char head[] =
	    "[[api_keys]]\nname = \"rs\"\nhash = \"sha256:"
	    "d479b3180985a397d3cc5bf641ca9628588344241f8a8a89c59062fc3a574f8d\"\n";
	static const struct {
		const char *value, *why;
	} bad[] = {
	    {"a  b", "expected audiences separated by single spaces"},
	    {" a", "expected audiences separated by single spaces"},
	    {"a ", "expected audiences separated by single spaces"},
	    {"https://a https://b https://a", "an audience is listed twice"},
	    {"a\\tb", "expected printable characters"},
	};
	char text[512];
	struct idpd_config *c;

	(void)state;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		snprintf(text, sizeof(text), "%saudiences = \"%s\"\n", head, bad[i].value);
		if (strstr(load_fail(text, IDP_EUNPROCESSABLE, NULL), bad[i].why) == NULL)
			fail_msg("%s: %s", bad[i].value, load_fail(text, IDP_EUNPROCESSABLE, NULL));
	}
	snprintf(text, sizeof(text), "%saudiences = \"https://a https://ab\"\n", head);
	c = load_ok(text);
	assert_string_equal(c->api_keys[0].audiences, "https://a https://ab");
	idpd_config_free(c);
}

static void
config_stops_reporting_after_fifty_errors(void **state)
{
	struct idp_buf b;
	unsigned count;
	const char *d;

	(void)state;
	idp_buf_init(&b, 0);
	for (int i = 0; i < 60; i++)
		assert_int_equal(idp_buf_printf(&b, "k%d = 1\n", i), IDP_OK);
	d = load_fail(idp_buf_str(&b), IDP_EUNPROCESSABLE, &count);
	assert_int_equal(count, 51);
	assert_non_null(strstr(d, "c.toml:50:1: k49: unknown key"));
	assert_null(strstr(d, "c.toml:51:1:"));
	assert_non_null(strstr(d, "c.toml: too many errors; not reporting more"));
	idp_buf_cleanup(&b);
}

/* ---- [[api_keys]] ---- */

static void
config_reads_api_keys(void **state)
{
	struct idpd_config *c =
	    load_ok("[[api_keys]]\n"
	            "name = \"ops\"\n"
	            "hash = \"" HASH_A "\"\n"
	            "roles = [\"admin\", \"auditor\"]\n"
	            "\n"
	            "[[api_keys]]\n"
	            "name = \"gateway.introspect\"\n"
	            "hash = \"" HASH_B "\"\n"
	            "roles = [\"introspector\"]\n"
	            "\n"
	            "[[api_keys]]\n"
	            "name = \"nobody\"\n"
	            "hash = \"sha256:" /* 64 zeros */
	            "0000000000000000000000000000000000000000000000000000000000000000"
	            "\"\n");

	(void)state;
	assert_int_equal(c->n_api_keys, 3);
	assert_string_equal(c->api_keys[0].name, "ops");
	assert_string_equal(c->api_keys[0].hash, HASH_A);
	assert_int_equal(c->api_keys[0].roles, IDPD_ROLE_ADMIN | IDPD_ROLE_AUDITOR);
	assert_string_equal(c->api_keys[1].name, "gateway.introspect");
	assert_int_equal(c->api_keys[1].roles, IDPD_ROLE_INTROSPECTOR);
	assert_int_equal(c->api_keys[2].roles, 0);
	idpd_config_free(c);
}

static void
config_role_names_map_to_their_bits(void **state)
{
	static const struct {
		const char *name;
		unsigned bit;
	} roles[] = {
	    {"admin", IDPD_ROLE_ADMIN},       {"registrar", IDPD_ROLE_REGISTRAR},
	    {"auditor", IDPD_ROLE_AUDITOR},   {"introspector", IDPD_ROLE_INTROSPECTOR},
	    {"approver", IDPD_ROLE_APPROVER}, {"maintenance", IDPD_ROLE_MAINTENANCE},
	};

	(void)state;
	for (size_t i = 0; i < sizeof(roles) / sizeof(roles[0]); i++) {
		char *text = NULL;
		struct idpd_config *c;

		assert_true(asprintf(&text,
		                     "[[api_keys]]\nname = \"k\"\nhash = \"" HASH_A
		                     "\"\nroles = [\"%s\", \"%s\"]\n",
		                     roles[i].name, roles[i].name) > 0);
		c = load_ok(text);
		assert_int_equal(c->api_keys[0].roles, roles[i].bit);
		idpd_config_free(c);
		free(text);
	}
}

static void
config_rejects_api_key_missing_required_keys(void **state)
{
	unsigned count;
	const char *d = load_fail("[[api_keys]]\n"
	                          "name = \"a\"\n"
	                          "hash = \"" HASH_A "\"\n"
	                          "  [[api_keys]]\n"
	                          "roles = [\"admin\"]\n",
	                          IDP_EUNPROCESSABLE, &count);

	(void)state;
	assert_string_equal(d, "c.toml:4:3: api_keys[1].name: required key is missing\n"
	                       " 4 |   [[api_keys]]\n"
	                       "   |   ^\n"
	                       "c.toml:4:3: api_keys[1].hash: required key is missing\n"
	                       " 4 |   [[api_keys]]\n"
	                       "   |   ^");
	assert_int_equal(count, 2);
}

static void
config_rejects_bad_role(void **state)
{
	(void)state;
	expect_error("[[api_keys]]\nname = \"a\"\nhash = \"" HASH_A "\"\n"
	             "roles = [\"admin\", \"root\"]\n",
	             "c.toml:4:19: api_keys[0].roles[1]: \"root\" is not one of \"admin\", "
	             "\"registrar\", \"auditor\", \"introspector\", \"approver\", \"maintenance\"");
	expect_error("[[api_keys]]\nname = \"a\"\nhash = \"" HASH_A "\"\nroles = \"admin\"\n",
	             "c.toml:4:9: api_keys[0].roles: expected an array of strings, each one of "
	             "\"admin\", \"registrar\", \"auditor\", \"introspector\", \"approver\", "
	             "\"maintenance\", found a string");
	expect_error("[[api_keys]]\nname = \"a\"\nhash = \"" HASH_A "\"\nroles = [1, 2]\n",
	             "c.toml:4:10: api_keys[0].roles[0]: expected one of \"admin\", \"registrar\", "
	             "\"auditor\", \"introspector\", \"approver\", \"maintenance\", found an "
	             "integer");
}

static void
config_rejects_bad_hash(void **state)
{
	static const char *const bad[] = {
	    "sha256:abc",
	    "md5:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
	    "sha256:9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08",
	    "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a0g",
	    "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a080",
	    "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
	};

	(void)state;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		char *text = NULL;

		assert_true(asprintf(&text, "[[api_keys]]\nname = \"a\"\nhash = \"%s\"\n", bad[i]) >
		            0);
		expect_error(text, "c.toml:3:8: api_keys[0].hash: expected \"sha256:\" followed by "
		                   "64 lowercase hexadecimal digits");
		free(text);
	}
	expect_error("[[api_keys]]\nname = \"a b\"\nhash = \"" HASH_A "\"\n",
	             "c.toml:2:8: api_keys[0].name: expected only letters, digits, '.', '_', '-' "
	             "and ':'");
}

static void
config_rejects_repeated_api_key_name_or_hash(void **state)
{
	unsigned count;
	const char *d = load_fail("[[api_keys]]\nname = \"a\"\nhash = \"" HASH_A "\"\n"
	                          "[[api_keys]]\nname = \"b\"\nhash = \"" HASH_B "\"\n"
	                          "[[api_keys]]\nname = \"a\"\nhash = \"" HASH_A "\"\n",
	                          IDP_EUNPROCESSABLE, &count);

	(void)state;
	assert_int_equal(count, 2);
	assert_non_null(strstr(d, "c.toml:8:8: api_keys[2].name: the same value as "
	                          "api_keys[0].name; each must be unique\n"));
	/* A hash is secret: its line is not quoted. */
	assert_non_null(strstr(d, "c.toml:9:8: api_keys[2].hash: the same value as "
	                          "api_keys[0].hash; each must be unique"));
	assert_null(strstr(d, HASH_A));
}

/*
 * No error quotes the value of a line whose key is secret (an API key's
 * hash) or unknown (a misspelt secret), nor a line whose key cannot be
 * read: a malformed line may hold any secret.  Other lines still are.
 */
static void
config_errors_never_quote_a_line_that_may_hold_a_secret(void **state)
{
	static const char *const hexes[] = {
	    "1111111111111111111111111111111111111111111111111111111111111111",
	    "2222222222222222222222222222222222222222222222222222222222222222",
	    "3333333333333333333333333333333333333333333333333333333333333333",
	    "4444444444444444444444444444444444444444444444444444444444444444",
	    "5555555555555555555555555555555555555555555555555555555555555555",
	    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
	};
	const char *d;
	char *text = NULL;
	unsigned count;

	(void)state;
	/* The TOML reader: an unterminated hash, a bad escape under a
	 * misspelt key, a hash where a key should be, a key without '='. */
	assert_true(asprintf(&text,
	                     "[[api_keys]]\nname = \"a\"\nhash = \"sha256:%s\n"
	                     "hsah = \"sha256:%s\\q\"\n\"sha256:%s\"\nhash2 \"sha256:%s\"\n"
	                     "[[api_keys]]\nname = \"b\\q\"\n[[api_keys]\n",
	                     hexes[0], hexes[1], hexes[2], hexes[3]) > 0);
	d = load_fail(text, IDP_EINVAL, &count);
	free(text);
	assert_int_equal(count, 6);
	for (size_t i = 0; i < IDP_ARRAY_LEN(hexes); i++)
		assert_null(strstr(d, hexes[i]));
	assert_null(strstr(d, " 3 | "));
	assert_null(strstr(d, " 4 | "));
	assert_null(strstr(d, " 5 | "));
	assert_null(strstr(d, " 6 | "));
	/* A known key that is no secret, and a header, are still quoted. */
	assert_non_null(strstr(d, " 8 | name = \"b\\q\""));
	assert_non_null(strstr(d, " 9 | [[api_keys]"));

	/* The key table: a hash that is not one, a misspelt key. */
	assert_true(asprintf(&text,
	                     "[[api_keys]]\nname = \"a\"\nhash = \"sha256:%s\"\n"
	                     "hsah = \"sha256:%s\"\n[server]\nport = \"80\"\n",
	                     hexes[5], hexes[4]) > 0);
	d = load_fail(text, IDP_EUNPROCESSABLE, &count);
	free(text);
	assert_int_equal(count, 3);
	for (size_t i = 0; i < IDP_ARRAY_LEN(hexes); i++)
		assert_null(strstr(d, hexes[i]));
	assert_non_null(strstr(d, "c.toml:3:8: api_keys[0].hash: expected \"sha256:\""));
	assert_null(strstr(d, " 3 | "));
	/* Up to the key only, which the message names anyway. */
	assert_non_null(strstr(d, " 4 | hsah\n"));
	assert_non_null(strstr(d, " 6 | port = \"80\""));
}

/* A quoted key spelling a dotted path is refused, not taken for the path:
 * it would replace what was set before unseen. */
static void
config_rejects_quoted_keys_with_a_dot(void **state)
{
	unsigned count;
	const char *d =
	    load_fail("[server]\nport = 80\n\"server.port\" = 9090\n", IDP_EUNPROCESSABLE, &count);

	(void)state;
	assert_int_equal(count, 1);
	assert_non_null(strstr(d, "a key may not contain '.'"));
	d = load_fail("[[policy.verbs]]\nverb = \"Purge*\"\nclass = \"admin\"\n"
	              "[[\"policy.verbs\"]]\nverb = \"Search*\"\nclass = \"read\"\n",
	              IDP_EUNPROCESSABLE, &count);
	assert_int_equal(count, 1);
	assert_non_null(strstr(d, "a key may not contain '.'"));
}

static void
config_rejects_malformed_api_keys(void **state)
{
	(void)state;
	expect_error("api_keys = \"x\"\n", "c.toml:1:12: api_keys: expected [[api_keys]] sections, "
	                                   "found a string");
	expect_error("[api_keys]\n", "c.toml:1:1: api_keys: expected [[api_keys]] sections, found "
	                             "a table");
	expect_error("[[api_keys]]\nname = \"a\"\nhash = \"" HASH_A "\"\nrole = [\"admin\"]\n",
	             "c.toml:4:1: api_keys[0].role: unknown key; did you mean api_keys[0].roles?");
}

/* ---- environment and secrets ---- */

static void
config_env_overrides_database_url(void **state)
{
	struct idpd_config *c;
	unsigned count;
	const char *d;

	(void)state;
	setenv("IDPD_DATABASE_URL", "postgresql://app:s3cret@db/idpd", 1);
	c = load_ok("[database]\nurl = \"postgresql://file@h/db\"\n");
	assert_string_equal(c->database.url, "postgresql://app:s3cret@db/idpd");
	idpd_config_free(c);
	c = load_ok("");
	assert_string_equal(c->database.url, "postgresql://app:s3cret@db/idpd");
	idpd_config_free(c);
	setenv("IDPD_DATABASE_URL", "", 1);
	d = load_fail("", IDP_EUNPROCESSABLE, &count);
	assert_string_equal(d, "$IDPD_DATABASE_URL: database.url: must not be empty");
	unsetenv("IDPD_DATABASE_URL");
	c = load_ok("[database]\nurl = \"postgresql://file@h/db\"\n");
	assert_string_equal(c->database.url, "postgresql://file@h/db");
	idpd_config_free(c);
}

static void
config_never_prints_secrets(void **state)
{
	unsigned count;
	const char *d;
	char *big;

	(void)state;
	d = load_fail("[database]\nurl = 5\n", IDP_EUNPROCESSABLE, &count);
	assert_string_equal(d, "c.toml:2:7: database.url: expected a string, found an integer");
	d = load_fail("[database]\nurl = \"postgresql://u:hunter2@h/\\q\"\n", IDP_EINVAL, &count);
	assert_null(strstr(d, "hunter2"));
	assert_string_equal(first_line(d), "c.toml:2:33: invalid escape sequence; the escapes are "
	                                   "\\b \\t \\n \\f \\r \\\" \\\\ \\uXXXX and \\UXXXXXXXX");
	d = load_fail("[database]\nurl = \"postgresql://u:hunter2@h\" junk\n", IDP_EINVAL, &count);
	assert_null(strstr(d, "hunter2"));
	/* A typo in the table name must not expose the URL either. */
	d = load_fail("[databse]\nurl = \"postgresql://u:hunter2@h/\\q\"\n", IDP_EINVAL, &count);
	assert_null(strstr(d, "hunter2"));
	d = load_fail("[databse]\nurl = \"postgresql://u:hunter2@h\"\n", IDP_EUNPROCESSABLE,
	              &count);
	assert_null(strstr(d, "hunter2"));
	assert_string_equal(first_line(d), "c.toml:1:2: databse: unknown table; did you mean "
	                                   "database?");
	assert_int_equal(
	    asprintf(&big, "[database]\nurl = \"postgresql://u:hunter2@h/%04100d\"\n", 0) > 0, 1);
	d = load_fail(big, IDP_EUNPROCESSABLE, &count);
	assert_string_equal(d, "c.toml:2:7: database.url: must be at most 4096 bytes long");
	free(big);
}

/* ---- describe and the reload check ---- */

static char *
describe_text(void)
{
	FILE *f = tmpfile();
	char *text;
	long n;

	assert_non_null(f);
	idpd_config_describe(fileno(f));
	n = lseek(fileno(f), 0, SEEK_END);
	assert_true(n > 0);
	text = calloc(1, (size_t)n + 1);
	assert_non_null(text);
	assert_int_equal(pread(fileno(f), text, (size_t)n, 0), n);
	fclose(f);
	return text;
}

/* The line of describe output for key, copied into line. */
static void
describe_line(const char *text, const char *key, char *line, size_t len)
{
	size_t kl = strlen(key);

	for (const char *p = text; *p != '\0'; p += strcspn(p, "\n") + 1) {
		size_t n = strcspn(p, "\n");

		if (strncmp(p, key, kl) == 0 && p[kl] == ' ') {
			assert_true(n < len);
			memcpy(line, p, n);
			line[n] = '\0';
			return;
		}
		if (p[n] == '\0')
			break;
	}
	fail_msg("no describe line for %s", key);
}

static void
config_describe_lists_keys_and_hides_secrets(void **state)
{
	char *text = describe_text(), line[512];

	(void)state;
	describe_line(text, "server.port", line, sizeof(line));
	assert_non_null(strstr(line, "  integer 1..65535  "));
	assert_non_null(strstr(line, "  8080 "));
	assert_non_null(strstr(line, "  restart  TCP port to listen on"));
	describe_line(text, "server.connection_timeout", line, sizeof(line));
	assert_non_null(strstr(line, "  duration 1s..1h  "));
	assert_non_null(strstr(line, "  \"30s\" "));
	describe_line(text, "log.level", line, sizeof(line));
	assert_non_null(strstr(line, "  debug|info|warn|error  "));
	assert_non_null(strstr(line, "  reload "));
	describe_line(text, "database.url", line, sizeof(line));
	assert_non_null(strstr(line, "  <secret>  "));
	assert_non_null(strstr(line, "$IDPD_DATABASE_URL overrides it"));
	describe_line(text, "api_keys", line, sizeof(line));
	assert_non_null(strstr(line, "  array of tables  "));
	describe_line(text, "api_keys[].name", line, sizeof(line));
	assert_non_null(strstr(line, "  (required)  "));
	describe_line(text, "api_keys[].roles", line, sizeof(line));
	assert_non_null(strstr(line, "[admin|registrar|auditor|introspector|approver|maintenance, "
	                             "...]"));
	assert_null(strstr(text, "postgresql"));
	free(text);
}

static void
config_restart_keys_names_changed_restart_only_keys(void **state)
{
	struct idpd_config *a = idpd_config_defaults(), *b = idpd_config_defaults();
	struct idp_diag d;

	(void)state;
	idp_diag_init(&d);
	assert_int_equal(idpd_config_restart_keys(a, b, &d), 0);
	assert_string_equal(idp_diag_str(&d), "");
	idpd_config_free(b);
	b = load_ok("[server]\nport = 9000\nmax_body = 4096\n"
	            "[database]\nurl = \"postgresql://other/db\"\n"
	            "[log]\nlevel = \"warn\"\n"
	            "[[api_keys]]\nname = \"a\"\nhash = \"" HASH_A "\"\n");
	assert_int_equal(idpd_config_restart_keys(a, b, &d), 3);
	assert_string_equal(idp_diag_str(&d), "server.port: changed; takes effect after a restart\n"
	                                      "server.max_body: changed; takes effect after a "
	                                      "restart\n"
	                                      "database.url: changed; takes effect after a "
	                                      "restart");
	idpd_config_free(a);
	idpd_config_free(b);
}

/* What a reload's audit event says changed: names, roles, issuers; never a hash. */
static void
config_changes_name_what_a_reload_changes(void **state)
{
	struct idpd_config *started, *running, *next;
	json_t *got, *want, *copy;
	char *text;

	(void)state;
	started = load_ok("[[api_keys]]\nname = \"ops\"\nhash = \"" HASH_A "\"\n"
	                  "roles = [\"admin\"]\n");
	running = load_ok("[log]\nlevel = \"info\"\n"
	                  "[[api_keys]]\nname = \"ops\"\nhash = \"" HASH_A "\"\n"
	                  "roles = [\"admin\"]\n"
	                  "[[api_keys]]\nname = \"old\"\nhash = \"" HASH_B "\"\n"
	                  "roles = [\"auditor\"]\n"
	                  "[[idp]]\nname = \"corp\"\nissuer = \"https://corp\"\n"
	                  "audience = \"idpd\"\njwks_file = \"/j\"\n"
	                  "[[resources]]\naudience = \"billing\"\ndomain = \"finance\"\n");
	/* ops rotated under its name with fewer roles, old gone, a new admin
	 * key with old's hash, a second IdP, billing moved domain; the
	 * elements are reordered, which changes nothing by itself. */
	next = load_ok("[server]\nport = 9000\n[log]\nlevel = \"warn\"\n"
	               "[[resources]]\naudience = \"billing\"\ndomain = \"sales\"\n"
	               "[[idp]]\nname = \"second\"\nissuer = \"https://second\"\n"
	               "audience = \"idpd\"\njwks_file = \"/k\"\n"
	               "[[idp]]\nname = \"corp\"\nissuer = \"https://corp\"\n"
	               "audience = \"idpd\"\njwks_file = \"/j\"\n"
	               "[[api_keys]]\nname = \"late-admin\"\nhash = \"" HASH_B "\"\n"
	               "roles = [\"admin\", \"auditor\"]\n"
	               "[[api_keys]]\nname = \"ops\"\nhash = \"" HASH_A "\"\n"
	               "roles = [\"registrar\"]\naudiences = \"billing\"\n");

	got = idpd_config_changes(started, running, next, false);
	want = json_loads(
	    "{\"settings\": [\"log.level\"], \"restart_pending\": [\"server.port\"],"
	    " \"sections\": ["
	    "  {\"section\": \"resources\", \"changed\": [{\"audience\": \"billing\","
	    "   \"fields\": [\"domain\"]}]},"
	    "  {\"section\": \"idp\", \"added\": [{\"name\": \"second\","
	    "   \"issuer\": \"https://second\"}]},"
	    "  {\"section\": \"api_keys\","
	    "   \"added\": [{\"name\": \"late-admin\", \"roles\": [\"admin\", \"auditor\"]}],"
	    "   \"removed\": [{\"name\": \"old\", \"roles\": [\"auditor\"]}],"
	    "   \"changed\": [{\"name\": \"ops\", \"roles\": [\"registrar\"],"
	    "    \"fields\": [\"roles\", \"audiences\"]}]}]}",
	    0, NULL);
	assert_non_null(want);
	text = json_dumps(got, JSON_SORT_KEYS);
	if (!json_equal(got, want))
		fail_msg("got %s", text);
	/* Names only: no key hash, no JWKS path; and nothing the audit log
	 * would take for a secret and hide. */
	assert_null(strstr(text, "sha256:"));
	assert_null(strstr(text, "/k"));
	copy = json_deep_copy(got);
	assert_int_equal(audit_redact_params(copy), IDP_OK);
	assert_true(json_equal(copy, got));
	json_decref(copy);
	free(text);
	json_decref(got);
	json_decref(want);

	/* Too much to list: the lists become counts. */
	got = idpd_config_changes(started, running, next, true);
	text = json_dumps(json_object_get(got, "sections"), JSON_SORT_KEYS);
	assert_string_equal(text, "[{\"changed\": 1, \"section\": \"resources\"}, "
	                          "{\"added\": 1, \"section\": \"idp\"}, "
	                          "{\"added\": 1, \"changed\": 1, \"removed\": 1, "
	                          "\"section\": \"api_keys\"}]");
	free(text);
	json_decref(got);

	/* No change: empty lists, still there for a SIEM to read. */
	got = idpd_config_changes(running, running, running, false);
	text = json_dumps(got, JSON_SORT_KEYS | JSON_COMPACT);
	assert_string_equal(text, "{\"restart_pending\":[],\"sections\":[],\"settings\":[]}");
	free(text);
	json_decref(got);
	idpd_config_free(started);
	idpd_config_free(running);
	idpd_config_free(next);
}

/* ---- files ---- */

static char *
temp_file(const char *text, size_t len)
{
	char *path = strdup("/tmp/idpd-config-test-XXXXXX");
	int fd;

	assert_non_null(path);
	fd = mkstemp(path);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, text, len), (ssize_t)len);
	close(fd);
	return path;
}

static void
config_load_reads_file_and_reports_io_errors(void **state)
{
	const char text[] = "[server]\nport = 1234\n";
	char *path = temp_file(text, sizeof(text) - 1), *want, *big;
	struct idpd_config *c = (struct idpd_config *)(void *)path;
	struct idp_diag d;

	(void)state;
	idp_diag_init(&d);
	assert_int_equal(idpd_config_load(path, &c, &d), IDP_OK);
	assert_int_equal(c->server.port, 1234);
	assert_string_equal(c->path, path);
	/* The SHA-256 of the bytes read, which an audit event names. */
	assert_string_equal(c->sha256,
	                    "1c1559ad67eed6545d3007a218776ea72273341769bc181efabe51c3df9d5b26");
	idpd_config_free(c);
	unlink(path);
	assert_int_equal(idpd_config_load(path, &c, &d), IDP_EIO);
	assert_null(c);
	want = NULL;
	assert_true(asprintf(&want, "%s: cannot open: No such file or directory", path) > 0);
	assert_string_equal(idp_diag_str(&d), want);
	free(want);
	free(path);

	/* A file that does not load still has its hash taken; one that cannot
	 * be read has none. */
	{
		const char bad[] = "[server]\nport = \n";
		char sum[IDPD_CONFIG_SUM_LEN + 1];

		path = temp_file(bad, sizeof(bad) - 1);
		idp_diag_init(&d);
		assert_int_equal(idpd_config_load_ex(path, &c, sum, &d), IDP_EINVAL);
		assert_null(c);
		assert_string_equal(
		    sum, "6abca688b3afcf831312c2789a0bf4b4e82b2ef0372769f8281cff4e14e40dbf");
		unlink(path);
		idp_diag_init(&d);
		assert_int_equal(idpd_config_load_ex(path, &c, sum, &d), IDP_EIO);
		assert_string_equal(sum, "");
		free(path);
	}

	big = malloc(IDP_TOML_MAX_INPUT + 10);
	assert_non_null(big);
	memset(big, '#', IDP_TOML_MAX_INPUT + 10);
	path = temp_file(big, IDP_TOML_MAX_INPUT + 10);
	idp_diag_init(&d);
	assert_int_equal(idpd_config_load(path, &c, &d), IDP_ETOOBIG);
	assert_null(c);
	assert_true(
	    asprintf(&want, "%s:1:1: file is larger than the limit of 1048576 bytes", path) > 0);
	assert_string_equal(idp_diag_str(&d), want);
	free(want);
	unlink(path);
	free(path);
	free(big);
}

/*
 * New keys in an IdP's or attestor's jwks_file are a change of trust even
 * when the TOML is the same: the loader hashes the files it names, and a
 * reload names the element changed under "jwks", with both hashes.
 */
static void
config_changes_name_a_changed_jwks_file(void **state)
{
	const char one[] = "{\"keys\": []}", two[] = "{\"keys\": [{}]}";
	char *jwks = temp_file(one, sizeof(one) - 1), *toml, *path, *text;
	struct idpd_config *running, *next;
	struct idp_diag d;
	json_t *got, *e;

	(void)state;
	assert_true(asprintf(&toml,
	                     "[[idp]]\nname = \"corp\"\nissuer = \"https://corp\"\n"
	                     "audience = \"idpd\"\njwks_file = \"%s\"\n"
	                     "[[attestors]]\nname = \"k8s\"\nissuer = \"https://k8s\"\n"
	                     "audience = \"idpd\"\njwks_file = \"%s\"\n"
	                     "selectors = \"k8s:sa=sub\"\n",
	                     jwks, jwks) > 0);
	path = temp_file(toml, strlen(toml));
	idp_diag_init(&d);
	assert_int_equal(idpd_config_load(path, &running, &d), IDP_OK);
	/* sha256 of {"keys": []} */
	assert_string_equal(running->idps[0].jwks_sha256,
	                    "59dfe0420a79fab3b3016213dac9bc743393cd9204d028e496a5184651385fcc");
	assert_string_equal(running->attestors[0].jwks_sha256, running->idps[0].jwks_sha256);

	/* No change: nothing named. */
	assert_int_equal(idpd_config_load(path, &next, &d), IDP_OK);
	got = idpd_config_changes(running, running, next, false);
	assert_int_equal(json_array_size(json_object_get(got, "sections")), 0);
	json_decref(got);
	idpd_config_free(next);

	/* One more key in the same file, the TOML untouched. */
	unlink(jwks);
	{
		int fd = open(jwks, O_WRONLY | O_CREAT | O_EXCL, 0600);

		assert_true(fd >= 0);
		assert_int_equal(write(fd, two, sizeof(two) - 1), (ssize_t)(sizeof(two) - 1));
		close(fd);
	}
	assert_int_equal(idpd_config_load(path, &next, &d), IDP_OK);
	assert_string_not_equal(next->idps[0].jwks_sha256, running->idps[0].jwks_sha256);
	got = idpd_config_changes(running, running, next, false);
	text = json_dumps(got, JSON_SORT_KEYS);
	assert_int_equal(json_array_size(json_object_get(got, "sections")), 2);
	for (size_t i = 0; i < 2; i++) {
		json_t *s = json_array_get(json_object_get(got, "sections"), i);

		assert_int_equal(json_array_size(json_object_get(s, "changed")), 1);
		e = json_array_get(json_object_get(s, "changed"), 0);
		assert_string_equal(
		    json_string_value(json_array_get(json_object_get(e, "fields"), 0)), "jwks");
		assert_int_equal(json_array_size(json_object_get(e, "fields")), 1);
		assert_string_equal(json_string_value(json_object_get(e, "jwks_sha256")),
		                    next->idps[0].jwks_sha256);
		assert_string_equal(json_string_value(json_object_get(e, "previous_jwks_sha256")),
		                    running->idps[0].jwks_sha256);
	}
	/* The file's name stays out of the event. */
	assert_null(strstr(text, jwks));
	free(text);
	json_decref(got);

	/* A removed IdP carries the hash of the file it trusted. */
	got = idpd_config_changes(running, next, running, false);
	e = json_array_get(
	    json_object_get(json_array_get(json_object_get(got, "sections"), 0), "changed"), 0);
	assert_string_equal(json_string_value(json_object_get(e, "previous_jwks_sha256")),
	                    next->idps[0].jwks_sha256);
	json_decref(got);
	{
		struct idpd_config *none = load_ok("");

		got = idpd_config_changes(running, running, none, false);
		e = json_array_get(
		    json_object_get(json_array_get(json_object_get(got, "sections"), 0), "removed"),
		    0);
		assert_string_equal(json_string_value(json_object_get(e, "jwks_sha256")),
		                    running->idps[0].jwks_sha256);
		json_decref(got);
		got = idpd_config_changes(running, none, running, false);
		e = json_array_get(
		    json_object_get(json_array_get(json_object_get(got, "sections"), 0), "added"),
		    0);
		assert_string_equal(json_string_value(json_object_get(e, "jwks_sha256")),
		                    running->idps[0].jwks_sha256);
		json_decref(got);
		idpd_config_free(none);
	}

	/* A file that cannot be read has no hash; the component refuses it. */
	unlink(jwks);
	idpd_config_free(next);
	assert_int_equal(idpd_config_load(path, &next, &d), IDP_OK);
	assert_string_equal(next->idps[0].jwks_sha256, "");
	idpd_config_free(next);
	idpd_config_free(running);
	unlink(path);
	free(path);
	free(toml);
	free(jwks);
}

/* ---- the documentation test ---- */

static char *
read_top_file(const char *rel)
{
	const char *top = getenv("IDPD_TOP");
	char *path = NULL, *text;
	FILE *f;
	long n;

	assert_true(asprintf(&path, "%s/%s", top != NULL && *top != '\0' ? top : ".", rel) > 0);
	f = fopen(path, "rb");
	if (f == NULL)
		fail_msg("cannot open %s (set IDPD_TOP to the repository root)", path);
	assert_int_equal(fseek(f, 0, SEEK_END), 0);
	n = ftell(f);
	assert_true(n > 0);
	rewind(f);
	text = calloc(1, (size_t)n + 1);
	assert_non_null(text);
	assert_int_equal(fread(text, 1, (size_t)n, f), (size_t)n);
	fclose(f);
	free(path);
	return text;
}

/* The key names in describe output, in order; the caller frees each and the array. */
static char **
described_keys(size_t *n)
{
	char *text = describe_text(), **keys = NULL;

	*n = 0;
	for (char *p = text; *p != '\0';) {
		size_t len = strcspn(p, " ");

		keys = realloc(keys, (*n + 1) * sizeof(*keys));
		assert_non_null(keys);
		keys[(*n)++] = strndup(p, len);
		p += strcspn(p, "\n");
		if (*p == '\n')
			p++;
	}
	free(text);
	assert_true(*n >= 19);
	return keys;
}

/*
 * Uncomment lines that hold commented-out TOML ("# [[x]]", "# key = v"), so
 * the example's [[api_keys]] block is checked like the rest of the file.
 */
static char *
uncomment_examples(const char *text)
{
	struct idp_buf out;

	idp_buf_init(&out, 0);
	for (const char *p = text; *p != '\0';) {
		size_t n = strcspn(p, "\n");
		const char *body = p;
		size_t k = 0;

		if (strncmp(p, "# ", 2) == 0) {
			body = p + 2;
			while (body[k] != '\0' && strchr("abcdefghijklmnopqrstuvwxyz_.", body[k]))
				k++;
			if (!(body[0] == '[' || (k > 0 && strncmp(body + k, " = ", 3) == 0)))
				body = p;
		}
		assert_int_equal(idp_buf_append(&out, body, n - (size_t)(body - p)), IDP_OK);
		assert_int_equal(idp_buf_putc(&out, '\n'), IDP_OK);
		p += n;
		if (*p == '\n')
			p++;
	}
	return idp_buf_take(&out, NULL);
}

/* Find "a.b" or "t[].k" in a document: for an array of tables, in its first element that sets it.
 */
static const struct idp_toml_node *
find_key(const struct idp_toml_node *t, const char *name)
{
	char part[128];

	while (t != NULL && *name != '\0') {
		size_t n = strcspn(name, ".[");

		assert_true(n < sizeof(part));
		memcpy(part, name, n);
		part[n] = '\0';
		t = idp_toml_get(t, part);
		name += n;
		if (strncmp(name, "[]", 2) == 0) {
			/* Any element may set it: keys that exclude each other
			 * ([[idp]]'s jwks_file and jwks_uri) are shown in two. */
			const struct idp_toml_node *found = NULL;

			if (t == NULL || !idp_toml_is_table_array(t))
				return NULL;
			name += 2;
			if (*name == '.')
				name++;
			for (size_t e = 0; e < idp_toml_count(t) && found == NULL; e++)
				found = find_key(idp_toml_child(t, e), name);
			return found;
		}
		if (*name == '.')
			name++;
	}
	return t;
}

static void
config_example_documents_every_key_and_loads(void **state)
{
	char *text = read_top_file("config.example.toml"), *full, **keys;
	const char *top = getenv("IDPD_TOP");
	struct idpd_config *c = NULL;
	struct idp_toml *doc = NULL;
	struct idp_diag d;
	char *path = NULL;
	size_t n;

	(void)state;
	/* The example as shipped loads and holds the development defaults. */
	assert_true(
	    asprintf(&path, "%s/config.example.toml", top != NULL && *top != '\0' ? top : ".") > 0);
	idp_diag_init(&d);
	if (idpd_config_load(path, &c, &d) != IDP_OK)
		fail_msg("%s", idp_diag_str(&d));
	assert_defaults(c);
	idpd_config_free(c);
	free(path);

	/* With its commented-out examples enabled it still loads... */
	full = uncomment_examples(text);
	c = load_ok(full);
	assert_int_equal(c->n_api_keys, 1);
	assert_int_equal(c->api_keys[0].roles, IDPD_ROLE_ADMIN | IDPD_ROLE_AUDITOR);
	idpd_config_free(c);

	/* ...and sets every key the table describes, each with a comment beside it. */
	assert_int_equal(idp_toml_parse("example", full, strlen(full), NULL, &doc, &d), IDP_OK);
	keys = described_keys(&n);
	for (size_t i = 0; i < n; i++) {
		const struct idp_toml_node *v = find_key(idp_toml_root(doc), keys[i]);
		const char *line = full;

		if (v == NULL)
			fail_msg("config.example.toml does not set %s", keys[i]);
		if (idp_toml_type(v) != IDP_TOML_TABLE && idp_toml_type(v) != IDP_TOML_ARRAY) {
			for (unsigned l = 1; l < idp_toml_key_line(v); l++)
				line = strchr(line, '\n') + 1;
			if (strcspn(line, "#") > strcspn(line, "\n"))
				fail_msg("config.example.toml: %s has no comment beside it",
				         keys[i]);
		}
		free(keys[i]);
	}
	free(keys);
	idp_toml_free(doc);
	free(full);
	free(text);
}

static void
config_reference_documents_every_key(void **state)
{
	char *text = read_top_file("docs/configuration.md"), **keys, *want = NULL;
	size_t n;

	(void)state;
	keys = described_keys(&n);
	for (size_t i = 0; i < n; i++) {
		/* Each key is a row of the key table: "| `name` |". */
		assert_true(asprintf(&want, "| `%s` |", keys[i]) > 0);
		if (strstr(text, want) == NULL)
			fail_msg("docs/configuration.md has no row for %s", keys[i]);
		free(want);
		free(keys[i]);
	}
	free(keys);
	free(text);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(config_defaults_match_the_documented_values),
	    cmocka_unit_test(idp_name_holds_no_colon),
	    cmocka_unit_test(config_reads_every_key_type),
	    cmocka_unit_test(config_accepts_dotted_keys_for_tables),
	    cmocka_unit_test(config_free_null_is_noop),
	    cmocka_unit_test(config_rejects_unknown_key_with_position),
	    cmocka_unit_test(config_rejects_unknown_table),
	    cmocka_unit_test(config_rejects_wrong_type),
	    cmocka_unit_test(config_rejects_out_of_range),
	    cmocka_unit_test(config_rejects_bad_duration),
	    cmocka_unit_test(config_rejects_bad_enum),
	    cmocka_unit_test(config_rejects_bad_strings),
	    cmocka_unit_test(config_reports_toml_errors_unchanged),
	    cmocka_unit_test(config_collects_every_error),
	    cmocka_unit_test(config_checks_api_key_audiences),
	    cmocka_unit_test(config_stops_reporting_after_fifty_errors),
	    cmocka_unit_test(config_reads_api_keys),
	    cmocka_unit_test(config_role_names_map_to_their_bits),
	    cmocka_unit_test(config_rejects_api_key_missing_required_keys),
	    cmocka_unit_test(config_rejects_bad_role),
	    cmocka_unit_test(config_rejects_bad_hash),
	    cmocka_unit_test(config_rejects_repeated_api_key_name_or_hash),
	    cmocka_unit_test(config_errors_never_quote_a_line_that_may_hold_a_secret),
	    cmocka_unit_test(config_rejects_quoted_keys_with_a_dot),
	    cmocka_unit_test(config_rejects_malformed_api_keys),
	    cmocka_unit_test(config_env_overrides_database_url),
	    cmocka_unit_test(config_never_prints_secrets),
	    cmocka_unit_test(config_describe_lists_keys_and_hides_secrets),
	    cmocka_unit_test(config_restart_keys_names_changed_restart_only_keys),
	    cmocka_unit_test(config_changes_name_what_a_reload_changes),
	    cmocka_unit_test(config_load_reads_file_and_reports_io_errors),
	    cmocka_unit_test(config_changes_name_a_changed_jwks_file),
	    cmocka_unit_test(config_example_documents_every_key_and_loads),
	    cmocka_unit_test(config_reference_documents_every_key),
	};

	return cmocka_run_group_tests(tests, clear_env, NULL);
}
