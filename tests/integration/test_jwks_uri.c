/*
 * Integration tests of an [[idp]] whose keys come from a jwks_uri: idpd
 * fetches them over real HTTPS on loopback (a test CA, a TLS server of the
 * harness answering what the test sets) and follows the provider's
 * rotation without a SIGHUP; a kid it does not know is definitive (401)
 * only against a fetch that began after the token was issued, otherwise
 * the answer is 503 with Retry-After and a fetch, at most one per
 * jwks_min_refresh whatever the tokens say; a provider whose keys could
 * not be fetched, or whose set is past jwks_max_stale, answers 503, never
 * 401, and /readyz says so (200, "degraded"); a bad certificate, an
 * oversize or non-200 answer fetch nothing and keep the last good set; a
 * definitely unknown kid still asks for a fetch; reloads add, keep and
 * remove such providers, and take a ca_file rewritten in place; a provider
 * whose fetches hang does not starve the others; a rotated-in key is
 * trusted only once its jwks.changed event is written; an [[attestors]]
 * with a jwks_uri follows rotation the same way, and without keys answers
 * 503 to evidence with a kid (evidence without one can never verify: 401);
 * an http:// jwks_uri is refused.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <setjmp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include "idpd/b64.h"
#include "idpd/jws.h"
#include "world.h"

#define REMOTE_ISS "https://login.remote.example"
#define SLOW_ISS "https://login.slow.example"

static void
sleep_ms(int ms)
{
	struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};

	nanosleep(&ts, NULL);
}

static struct idp_jws_key *
new_key(const char *kid)
{
	struct idp_jws_key *k = NULL;

	assert_int_equal(idp_jws_key_generate(kid, &k, NULL), IDP_OK);
	return k;
}

/* Serve the JWKS of keys (n of them) as application/json. */
static void
serve_keys(struct harness_tls *t, struct idp_jws_key **keys, size_t n)
{
	struct idp_jws_keyset *set = NULL;
	json_t *doc;
	char *text;

	assert_int_equal(idp_jws_keyset_new(keys, n, &set, NULL), IDP_OK);
	doc = idp_jws_keyset_to_jwks(set);
	text = json_dumps(doc, JSON_COMPACT);
	harness_tls_answer_200(t, "application/json", text);
	free(text);
	json_decref(doc);
	idp_jws_keyset_unref(set);
}

/* A token of the provider iss for alice, signed by key, issued iat_ago seconds ago. */
static char *
token_of(const char *iss, const struct idp_jws_key *key, long iat_ago)
{
	long long now = (long long)time(NULL);
	json_t *c =
	    json_pack("{s:s,s:s,s:s,s:I,s:I,s:s,s:b}", "iss", iss, "sub", "alice", "aud", "idpd",
	              "iat", (json_int_t)(now - iat_ago), "exp", (json_int_t)(now + 600), "email",
	              "alice@example.com", "email_verified", 1);
	char *tok = NULL;

	assert_int_equal(idp_jws_sign(key, NULL, c, &tok, NULL, NULL), IDP_OK);
	json_decref(c);
	return tok;
}

/* A token of the remote provider for alice, signed by key, issued iat_ago seconds ago. */
static char *
remote_token(const struct idp_jws_key *key, long iat_ago)
{
	return token_of(REMOTE_ISS, key, iat_ago);
}

/*
 * POST /v1/tasks with an empty body as bearer: 400 once the human is
 * authenticated (the body is then refused), 401 or 503 if not.  The
 * Retry-After header, if any, into retry_after.
 */
static long
try_token(struct world *w, const char *bearer, char *retry_after, size_t len)
{
	struct http_resp r;
	long status;

	world_call(w, "POST", "/v1/tasks", bearer, "{}", &r);
	status = r.status;
	if (retry_after != NULL && !harness_resp_header(&r, "Retry-After", retry_after, len))
		retry_after[0] = '\0';
	harness_resp_free(&r);
	return status;
}

/* Retry until the status is want, for up to timeout_ms; the last status. */
static long
until_status(struct world *w, const char *bearer, long want, int timeout_ms)
{
	long s = 0;

	for (int waited = 0; waited <= timeout_ms; waited += 250) {
		s = try_token(w, bearer, NULL, 0);
		if (s == want)
			break;
		sleep_ms(250);
	}
	return s;
}

static void
remote_toml(char *out, size_t len, const char *scheme, int port, const char *pki)
{
	snprintf(out, len,
	         "[[idp]]\nname = \"remote\"\nissuer = \"" REMOTE_ISS "\"\naudience = \"idpd\"\n"
	         "jwks_uri = \"%s://127.0.0.1:%d/keys/jwks.json\"\nca_file = \"%s/ca.pem\"\n"
	         "algs = [\"ES256\"]\njwks_min_refresh = \"2s\"\njwks_refresh = \"1h\"\n",
	         scheme, port, pki);
}

static void
pki_file(char *out, size_t len, const char *pki, const char *name)
{
	snprintf(out, len, "%s/%s", pki, name);
}

static void
jwks_uri_keys_authenticate_and_follow_rotation(void **state)
{
	static struct harness_tls t; /* static: a failed test leaves its thread running */
	struct world w;
	struct idp_jws_key *a = new_key("key-a"), *b = new_key("key-b"), *made_up;
	struct idp_jws_key *both[2];
	char pki[64], cert[128], key[128], toml[1024], ra[32], sql[512];
	char *tok_a, *tok_b, *tok, *big;
	unsigned before;
	long s;
	size_t big_len = 600 * 1024;

	(void)state;
	assert_int_equal(harness_tls_pki(pki, sizeof(pki)), 0);
	pki_file(cert, sizeof(cert), pki, "server.pem");
	pki_file(key, sizeof(key), pki, "server.key");
	assert_int_equal(harness_tls_start(&t, true, cert, key, NULL), 0);
	serve_keys(&t, &a, 1);
	remote_toml(toml, sizeof(toml), "https", t.port, pki);
	world_start(&w, "t_jwks_rotation", toml);

	/* Fetched at start: a token under key-a authenticates. */
	tok_a = remote_token(a, 1);
	assert_int_equal(try_token(&w, tok_a, NULL, 0), 400);
	assert_true(harness_tls_wait(&t, "GET /keys/jwks.json HTTP/1.0", 100));
	snprintf(sql, sizeof(sql),
	         "SELECT count(*) FROM audit_events WHERE type = 'jwks.changed' AND "
	         "body::jsonb->'detail'->>'provider' = 'remote' AND "
	         "body::jsonb->'detail'->'added' = '[\"key-a\"]'::jsonb");
	assert_int_equal(world_count(&w, sql), 1);

	/* The provider rotates: a token under its new key works without a SIGHUP,
	 * after one 503 with Retry-After while the set is fetched again. */
	both[0] = a;
	both[1] = b;
	serve_keys(&t, both, 2);
	tok_b = remote_token(b, 0);
	assert_int_equal(try_token(&w, tok_b, ra, sizeof(ra)), 503);
	assert_true(atoi(ra) >= 1);
	assert_int_equal(until_status(&w, tok_b, 400, 8000), 400);
	assert_int_equal(try_token(&w, tok_a, NULL, 0), 400);
	snprintf(sql, sizeof(sql),
	         "SELECT count(*) FROM audit_events WHERE type = 'jwks.changed' AND "
	         "body::jsonb->'detail'->'added' = '[\"key-b\"]'::jsonb AND "
	         "body::jsonb->'detail'->'removed' = '[]'::jsonb");
	assert_int_equal(world_count(&w, sql), 1);

	/* Made-up kids, freshly issued: each is a 503, but they fetch at most
	 * once per jwks_min_refresh (2s) between them. */
	sleep_ms(2200);
	before = harness_tls_requests(&t);
	for (int i = 0; i < 20; i++) {
		char kid[32];

		snprintf(kid, sizeof(kid), "made-up-%d", i);
		made_up = new_key(kid);
		tok = remote_token(made_up, 0);
		assert_int_equal(try_token(&w, tok, NULL, 0), 503);
		free(tok);
		idp_jws_key_unref(made_up);
		sleep_ms(100);
	}
	sleep_ms(500);
	assert_true(harness_tls_requests(&t) - before >= 1);
	assert_true(harness_tls_requests(&t) - before <= 2);

	/* A made-up kid on a token issued before the last fetch began is
	 * definitively unknown: 401.  It still asks for a fetch (an IdP whose
	 * clock runs behind gets its new key within min_refresh), once. */
	sleep_ms(2200);
	before = harness_tls_requests(&t);
	made_up = new_key("made-up-old");
	tok = remote_token(made_up, 60);
	assert_int_equal(try_token(&w, tok, NULL, 0), 401);
	assert_int_equal(try_token(&w, tok, NULL, 0), 401);
	free(tok);
	idp_jws_key_unref(made_up);
	sleep_ms(300);
	assert_true(harness_tls_requests(&t) - before <= 1);

	/* An oversize answer, and a 500, fetch nothing: the last good set stays. */
	big = malloc(big_len + 1);
	memset(big, ' ', big_len);
	memcpy(big, "{\"keys\":[]", 10);
	big[big_len - 1] = '}';
	big[big_len] = '\0';
	harness_tls_answer_200(&t, "application/json", big);
	free(big);
	made_up = new_key("made-up-fresh");
	tok = remote_token(made_up, 0);
	assert_int_equal(try_token(&w, tok, NULL, 0), 503);
	for (int i = 0; i < 40 && !harness_log_contains(&w.p, "passes"); i++)
		sleep_ms(100);
	assert_true(harness_log_contains(&w.p, "the answer passes"));
	assert_int_equal(try_token(&w, tok_b, NULL, 0), 400);
	before = harness_tls_requests(&t);
	{
		static const char oops[] = "HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n";

		harness_tls_answer(&t, oops, strlen(oops));
	}
	sleep_ms(2200);
	assert_int_equal(try_token(&w, tok, NULL, 0), 503);
	for (int i = 0; i < 40 && harness_tls_requests(&t) == before; i++)
		sleep_ms(100);
	assert_int_equal(harness_tls_requests(&t), before + 1);
	sleep_ms(300);
	assert_int_equal(try_token(&w, tok_a, NULL, 0), 400);

	/* key-a withdrawn: once a fetch that began after its token was
	 * issued has dropped it, the token is refused. */
	serve_keys(&t, &b, 1);
	free(tok_a);
	tok_a = remote_token(a, 60);
	assert_int_equal(try_token(&w, tok_a, NULL, 0), 400);
	free(tok);
	idp_jws_key_unref(made_up);
	/* A fresh made-up kid asks for the fetch (a failed fetch's retry may
	 * have come first: then the kid is already known to be unknown). */
	sleep_ms(2200);
	made_up = new_key("made-up-trigger");
	tok = remote_token(made_up, 0);
	s = try_token(&w, tok, NULL, 0);
	assert_true(s == 503 || s == 401);
	free(tok);
	idp_jws_key_unref(made_up);
	assert_int_equal(until_status(&w, tok_a, 401, 8000), 401);
	assert_int_equal(try_token(&w, tok_b, NULL, 0), 400);
	snprintf(sql, sizeof(sql),
	         "SELECT count(*) FROM audit_events WHERE type = 'jwks.changed' AND "
	         "body::jsonb->'detail'->'removed' = '[\"key-a\"]'::jsonb");
	assert_int_equal(world_count(&w, sql), 1);

	free(tok_a);
	free(tok_b);
	world_stop(&w);
	harness_tls_stop(&t);
	harness_tls_pki_remove(pki);
	idp_jws_key_unref(a);
	idp_jws_key_unref(b);
}

/*
 * A provider whose clock runs behind issues a token under a key it has
 * just published, with an iat before idpd's last fetch: against that set
 * the kid is definitely unknown (401), but the token still asks for a
 * fetch, so the key is known within jwks_min_refresh, not at the next
 * scheduled refresh (an hour here).
 */
static void
jwks_uri_definitely_unknown_kid_still_asks_for_a_fetch(void **state)
{
	static struct harness_tls t; /* static: a failed test leaves its thread running */
	struct world w;
	struct idp_jws_key *a = new_key("key-a"), *late = new_key("key-late"), *both[2];
	char pki[64], cert[128], key[128], toml[1024];
	char *tok;
	unsigned before;

	(void)state;
	assert_int_equal(harness_tls_pki(pki, sizeof(pki)), 0);
	pki_file(cert, sizeof(cert), pki, "server.pem");
	pki_file(key, sizeof(key), pki, "server.key");
	assert_int_equal(harness_tls_start(&t, true, cert, key, NULL), 0);
	serve_keys(&t, &a, 1);
	remote_toml(toml, sizeof(toml), "https", t.port, pki);
	world_start(&w, "t_jwks_behind", toml);
	before = harness_tls_requests(&t);

	both[0] = a;
	both[1] = late;
	serve_keys(&t, both, 2);
	tok = remote_token(late, 60);
	assert_int_equal(try_token(&w, tok, NULL, 0), 401);
	assert_int_equal(until_status(&w, tok, 400, 6000), 400);
	assert_int_equal(harness_tls_requests(&t), before + 1);

	free(tok);
	world_stop(&w);
	harness_tls_stop(&t);
	harness_tls_pki_remove(pki);
	idp_jws_key_unref(a);
	idp_jws_key_unref(late);
}

static void
jwks_uri_unverified_server_answers_503_until_it_is_fixed(void **state)
{
	static struct harness_tls t; /* static: a failed test leaves its thread running */
	struct world w;
	struct http_resp r;
	struct idp_jws_key *a = new_key("key-a");
	char pki[64], cert[128], key[128], rogue[128], rogue_key[128], toml[1024], ra[32];
	char *tok;

	(void)state;
	assert_int_equal(harness_tls_pki(pki, sizeof(pki)), 0);
	pki_file(cert, sizeof(cert), pki, "server.pem");
	pki_file(key, sizeof(key), pki, "server.key");
	pki_file(rogue, sizeof(rogue), pki, "rogue.pem");
	pki_file(rogue_key, sizeof(rogue_key), pki, "rogue.key");
	/* A server whose certificate the CA did not sign: no key is taken from it. */
	assert_int_equal(harness_tls_start(&t, true, rogue, rogue_key, NULL), 0);
	serve_keys(&t, &a, 1);
	remote_toml(toml, sizeof(toml), "https", t.port, pki);
	world_start(&w, "t_jwks_down", toml);
	assert_true(harness_log_contains(&w.p, "failed verification"));
	assert_int_equal(harness_tls_requests(&t), 0);

	/* Its tokens: 503 with Retry-After, never 401; /readyz names the reason
	 * but stays 200 ("degraded"): every instance shares the provider, and
	 * failing readiness would take all of them out for its tokens alone. */
	tok = remote_token(a, 0);
	assert_int_equal(try_token(&w, tok, ra, sizeof(ra)), 503);
	assert_true(atoi(ra) >= 1);
	world_call(&w, "GET", "/readyz", NULL, NULL, &r);
	assert_int_equal(r.status, 200);
	assert_non_null(r.json);
	assert_string_equal(json_string_value(json_object_get(r.json, "status")), "degraded");
	assert_string_equal(
	    json_string_value(json_object_get(json_object_get(r.json, "checks"), "jwks")),
	    "jwks_unavailable");
	harness_resp_free(&r);
	/* The world's other provider, from its file, is not held up. */
	{
		char *corp = world_human_token("bob@example.com");

		assert_int_equal(try_token(&w, corp, NULL, 0), 400);
		free(corp);
	}

	/* The server is fixed: the next fetch (asked for by a token) takes the keys. */
	assert_int_equal(harness_tls_use(&t, cert, key, NULL), 0);
	assert_int_equal(until_status(&w, tok, 400, 8000), 400);
	assert_true(harness_log_contains(&w.p, "its keys are fetched again"));
	world_call(&w, "GET", "/readyz", NULL, NULL, &r);
	assert_string_equal(
	    json_string_value(json_object_get(json_object_get(r.json, "checks"), "jwks")), "ok");
	assert_string_equal(json_string_value(json_object_get(r.json, "status")), "ready");
	harness_resp_free(&r);

	free(tok);
	world_stop(&w);
	harness_tls_stop(&t);
	harness_tls_pki_remove(pki);
	idp_jws_key_unref(a);
}

/* Write text to path (append or replace), send SIGHUP and wait for the reload's n-th "done". */
static void
reload_with(struct world *w, const char *text, bool append, int n)
{
	FILE *f = fopen(w->p.config, append ? "a" : "w");
	char *log;
	size_t len = 0;
	int done = 0;

	assert_non_null(f);
	fputs(text, f);
	fclose(f);
	assert_int_equal(kill(w->p.pid, SIGHUP), 0);
	for (int i = 0; i < 1500 && done < n; i++) {
		FILE *l = fopen(w->p.log, "r");

		sleep_ms(10);
		done = 0;
		if (l == NULL)
			continue;
		log = NULL;
		len = 0;
		while (getline(&log, &len, l) > 0)
			done += strstr(log, "reload: done") != NULL;
		free(log);
		fclose(l);
	}
	assert_int_equal(done, n);
}

static char *
read_file(const char *path)
{
	FILE *f = fopen(path, "r");
	char *text = calloc(1, 1 << 17);
	size_t n;

	assert_non_null(f);
	n = fread(text, 1, (1 << 17) - 1, f);
	text[n] = '\0';
	fclose(f);
	return text;
}

static void
jwks_uri_providers_come_stay_and_go_with_reloads(void **state)
{
	static struct harness_tls t; /* static: a failed test leaves its thread running */
	struct world w;
	struct idp_jws_key *a = new_key("key-a");
	char pki[64], cert[128], key[128], toml[1024];
	char *tok, *before;
	unsigned fetched;

	(void)state;
	assert_int_equal(harness_tls_pki(pki, sizeof(pki)), 0);
	pki_file(cert, sizeof(cert), pki, "server.pem");
	pki_file(key, sizeof(key), pki, "server.key");
	assert_int_equal(harness_tls_start(&t, true, cert, key, NULL), 0);
	serve_keys(&t, &a, 1);
	world_start(&w, "t_jwks_reload", NULL);
	tok = remote_token(a, 0);
	assert_int_equal(try_token(&w, tok, NULL, 0), 401);
	before = read_file(w.p.config);

	/* A refused reload (an attestor's JWKS file is no JSON) leaves no trace:
	 * nothing is fetched for the provider it would have added, though every
	 * other component's check still runs after human_auth's. */
	remote_toml(toml, sizeof(toml), "https", t.port, pki);
	{
		char bad[64] = "/tmp/idpd_jwks_bad_XXXXXX", broken[1536];
		int fd = mkstemp(bad);
		FILE *f;

		assert_true(fd >= 0);
		assert_int_equal(write(fd, "not json", 8), 8);
		close(fd);
		snprintf(broken, sizeof(broken),
		         "%s[[attestors]]\nname = \"broken\"\nissuer = \"https://broken.example\"\n"
		         "audience = \"idpd\"\njwks_file = \"%s\"\nselectors = \"br=sub\"\n",
		         toml, bad);
		f = fopen(w.p.config, "a");
		assert_non_null(f);
		fputs(broken, f);
		fclose(f);
		assert_int_equal(kill(w.p.pid, SIGHUP), 0);
		for (int i = 0; i < 500 && !harness_log_contains(&w.p, "nothing was changed"); i++)
			sleep_ms(10);
		assert_true(harness_log_contains(&w.p, "nothing was changed"));
		sleep_ms(500);
		assert_int_equal(harness_tls_requests(&t), 0);
		unlink(bad);
	}

	/* Added by a reload: fetched before it takes over, so its first token works. */
	{
		FILE *f = fopen(w.p.config, "w");

		assert_non_null(f);
		fputs(before, f);
		fclose(f);
	}
	reload_with(&w, toml, true, 1);
	assert_int_equal(harness_tls_requests(&t), 1);
	assert_int_equal(try_token(&w, tok, NULL, 0), 400);

	/* Reloaded unchanged: the provider keeps its keys, nothing is fetched. */
	fetched = harness_tls_requests(&t);
	reload_with(&w, "\n", true, 2);
	assert_int_equal(harness_tls_requests(&t), fetched);
	assert_int_equal(try_token(&w, tok, NULL, 0), 400);

	/* Removed by a reload: its tokens are no one's. */
	reload_with(&w, before, false, 3);
	assert_int_equal(try_token(&w, tok, NULL, 0), 401);

	free(before);
	free(tok);
	world_stop(&w);
	harness_tls_stop(&t);
	harness_tls_pki_remove(pki);
	idp_jws_key_unref(a);
}

static void
write_file(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");

	assert_non_null(f);
	fputs(text, f);
	assert_int_equal(fclose(f), 0);
}

/*
 * The operator fixes a provider's trust by writing the right CA into the
 * same ca_file and sending SIGHUP: the reload takes the file's new
 * contents, though its name did not change, and the next fetch succeeds.
 */
static void
jwks_uri_reload_takes_a_ca_file_rewritten_in_place(void **state)
{
	static struct harness_tls t; /* static: a failed test leaves its thread running */
	struct world w;
	struct idp_jws_key *a = new_key("key-a");
	char pki[64], cert[128], key[128], path[128], trust[128], toml[1024];
	char *tok, *pem;

	(void)state;
	assert_int_equal(harness_tls_pki(pki, sizeof(pki)), 0);
	pki_file(cert, sizeof(cert), pki, "server.pem");
	pki_file(key, sizeof(key), pki, "server.key");
	pki_file(trust, sizeof(trust), pki, "trust.pem");
	/* The wrong CA first: the server's certificate does not verify. */
	pki_file(path, sizeof(path), pki, "rogue-ca.pem");
	pem = read_file(path);
	write_file(trust, pem);
	free(pem);
	assert_int_equal(harness_tls_start(&t, true, cert, key, NULL), 0);
	serve_keys(&t, &a, 1);
	snprintf(toml, sizeof(toml),
	         "[[idp]]\nname = \"remote\"\nissuer = \"" REMOTE_ISS "\"\naudience = \"idpd\"\n"
	         "jwks_uri = \"https://127.0.0.1:%d/keys/jwks.json\"\nca_file = \"%s\"\n"
	         "algs = [\"ES256\"]\njwks_min_refresh = \"1s\"\njwks_refresh = \"1h\"\n",
	         t.port, trust);
	world_start(&w, "t_jwks_ca_file", toml);
	assert_true(harness_log_contains(&w.p, "failed verification"));
	tok = remote_token(a, 0);
	assert_int_equal(try_token(&w, tok, NULL, 0), 503);

	/* The right CA, written over the same file, then SIGHUP. */
	pki_file(path, sizeof(path), pki, "ca.pem");
	pem = read_file(path);
	write_file(trust, pem);
	free(pem);
	/* Fetches retried meanwhile (every jwks_min_refresh) still use the old trust. */
	sleep_ms(1500);
	assert_int_equal(try_token(&w, tok, NULL, 0), 503);
	reload_with(&w, "\n", true, 1);
	assert_int_equal(until_status(&w, tok, 400, 8000), 400);
	assert_true(harness_log_contains(&w.p, "its keys are fetched again"));

	free(tok);
	world_stop(&w);
	harness_tls_stop(&t);
	harness_tls_pki_remove(pki);
	idp_jws_key_unref(a);
}

/*
 * A TCP listener on 127.0.0.1 that never accepts: the kernel completes
 * each connection into its queue, where a TLS client waits for an answer
 * to its ClientHello until its own timeout.  Its port into *port.
 */
static int
stalled_listener(int *port)
{
	struct sockaddr_in sa;
	socklen_t sl = sizeof(sa);
	int fd = socket(AF_INET, SOCK_STREAM, 0);

	assert_true(fd >= 0);
	memset(&sa, 0, sizeof(sa));
	sa.sin_family = AF_INET;
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	assert_int_equal(listen(fd, 64), 0);
	assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &sl), 0);
	*port = ntohs(sa.sin_port);
	return fd;
}

/*
 * Connections in the queue of a listener that never accepts, that is the
 * fetches begun against it (Linux gives a listener's queue length as
 * tcpi_unacked).
 */
static unsigned
connections_queued(int fd)
{
	struct tcp_info ti;
	socklen_t len = sizeof(ti);

	memset(&ti, 0, sizeof(ti));
	assert_int_equal(getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len), 0);
	return ti.tcpi_unacked;
}

static int64_t
now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/*
 * One provider whose server never answers (each fetch hangs until the
 * fetch timeout, then is due again after jwks_min_refresh) and a client
 * that keeps asking for it with made-up kids do not starve another
 * provider of fetches: the one due longest is fetched first, so a rotation
 * of the working provider is followed within about one hanging fetch.
 */
static void
jwks_uri_hanging_provider_does_not_starve_the_others(void **state)
{
	static struct harness_tls t; /* static: a failed test leaves its thread running */
	struct world w;
	struct idp_jws_key *a = new_key("key-a"), *b = new_key("key-b"), *made_up, *both[2];
	char pki[64], cert[128], key[128], toml[1024], slow[1024];
	char *tok_a, *tok_b, *tok_slow;
	int slow_fd, slow_port;
	unsigned before;
	int64_t rotated;
	long s = 0;

	(void)state;
	assert_int_equal(harness_tls_pki(pki, sizeof(pki)), 0);
	pki_file(cert, sizeof(cert), pki, "server.pem");
	pki_file(key, sizeof(key), pki, "server.key");
	assert_int_equal(harness_tls_start(&t, true, cert, key, NULL), 0);
	serve_keys(&t, &a, 1);
	snprintf(toml, sizeof(toml),
	         "[[idp]]\nname = \"remote\"\nissuer = \"" REMOTE_ISS "\"\naudience = \"idpd\"\n"
	         "jwks_uri = \"https://127.0.0.1:%d/keys/jwks.json\"\nca_file = \"%s/ca.pem\"\n"
	         "algs = [\"ES256\"]\njwks_min_refresh = \"1s\"\njwks_refresh = \"1h\"\n",
	         t.port, pki);
	world_start(&w, "t_jwks_fair", toml);
	tok_a = remote_token(a, 1);
	assert_int_equal(try_token(&w, tok_a, NULL, 0), 400);

	/* "slow", added by a reload, goes before "remote" in the fetch thread's
	 * list (as a provider listed later would at startup).  Its first fetch
	 * hangs for the whole timeout; the reload waits for it. */
	slow_fd = stalled_listener(&slow_port);
	snprintf(slow, sizeof(slow),
	         "[[idp]]\nname = \"slow\"\nissuer = \"" SLOW_ISS "\"\naudience = \"idpd\"\n"
	         "jwks_uri = \"https://127.0.0.1:%d/keys/jwks.json\"\nca_file = \"%s/ca.pem\"\n"
	         "algs = [\"ES256\"]\njwks_min_refresh = \"1s\"\njwks_refresh = \"1h\"\n",
	         slow_port, pki);
	reload_with(&w, slow, true, 1);
	assert_true(harness_log_contains(&w.p, "jwks: idp \"slow\": cannot fetch its keys"));
	made_up = new_key("made-up-slow");
	tok_slow = token_of(SLOW_ISS, made_up, 0);
	assert_int_equal(try_token(&w, tok_slow, NULL, 0), 503);
	/* Its second fetch is hanging now. */
	for (int i = 0; i < 50 && connections_queued(slow_fd) < 2; i++)
		sleep_ms(100);
	assert_int_equal(connections_queued(slow_fd), 2);

	/* "remote" rotates, and its new key's token asks for a fetch, while a
	 * client keeps "slow" wanted with made-up kids.  "remote" is fetched
	 * once slow's hanging fetch ends (about 10 s), not never. */
	both[0] = a;
	both[1] = b;
	serve_keys(&t, both, 2);
	tok_b = remote_token(b, 0);
	before = harness_tls_requests(&t);
	rotated = now_ms();
	while (now_ms() - rotated < 25000) {
		assert_int_equal(try_token(&w, tok_slow, NULL, 0), 503);
		s = try_token(&w, tok_b, NULL, 0);
		if (s != 503)
			break;
		sleep_ms(300);
	}
	assert_int_equal(s, 400);
	assert_int_equal(harness_tls_requests(&t) - before, 1);
	assert_int_equal(try_token(&w, tok_a, NULL, 0), 400);

	/* Closing the listener resets its queued connections: the hanging
	 * fetch ends, and idpd stops without waiting for its timeout. */
	close(slow_fd);
	free(tok_a);
	free(tok_b);
	free(tok_slow);
	world_stop(&w);
	harness_tls_stop(&t);
	harness_tls_pki_remove(pki);
	idp_jws_key_unref(made_up);
	idp_jws_key_unref(a);
	idp_jws_key_unref(b);
}

static void
jwks_uri_set_past_max_stale_answers_503(void **state)
{
	static struct harness_tls t; /* static: a failed test leaves its thread running */
	static const char oops[] = "HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n";
	struct world w;
	struct http_resp r;
	struct idp_jws_key *a = new_key("key-a");
	char pki[64], cert[128], key[128], toml[1024], ra[32];
	char *tok;
	long s = 0;

	(void)state;
	assert_int_equal(harness_tls_pki(pki, sizeof(pki)), 0);
	pki_file(cert, sizeof(cert), pki, "server.pem");
	pki_file(key, sizeof(key), pki, "server.key");
	assert_int_equal(harness_tls_start(&t, true, cert, key, NULL), 0);
	serve_keys(&t, &a, 1);
	snprintf(toml, sizeof(toml),
	         "[[idp]]\nname = \"remote\"\nissuer = \"" REMOTE_ISS "\"\naudience = \"idpd\"\n"
	         "jwks_uri = \"https://127.0.0.1:%d/keys/jwks.json\"\nca_file = \"%s/ca.pem\"\n"
	         "jwks_min_refresh = \"2s\"\njwks_refresh = \"10s\"\njwks_max_stale = \"11s\"\n",
	         t.port, pki);
	world_start(&w, "t_jwks_stale", toml);
	tok = remote_token(a, 0);
	assert_int_equal(try_token(&w, tok, NULL, 0), 400);

	/* The provider fails from now on: its set serves until jwks_max_stale... */
	harness_tls_answer(&t, oops, strlen(oops));
	sleep_ms(3000);
	assert_int_equal(try_token(&w, tok, NULL, 0), 400);
	/* ...and past it, its tokens answer 503, even under a key it held. */
	for (int i = 0; i < 40 && (s = try_token(&w, tok, ra, sizeof(ra))) != 503; i++)
		sleep_ms(250);
	assert_int_equal(s, 503);
	assert_true(atoi(ra) >= 1);
	world_call(&w, "GET", "/readyz", NULL, NULL, &r);
	assert_int_equal(r.status, 200);
	assert_string_equal(json_string_value(json_object_get(r.json, "status")), "degraded");
	harness_resp_free(&r);
	assert_true(
	    harness_log_contains(&w.p, "the last good set stays in use until jwks_max_stale"));

	/* Back: the next fetch makes the set fresh again. */
	serve_keys(&t, &a, 1);
	assert_int_equal(until_status(&w, tok, 400, 8000), 400);

	free(tok);
	world_stop(&w);
	harness_tls_stop(&t);
	harness_tls_pki_remove(pki);
	idp_jws_key_unref(a);
}

/*
 * A rotated-in key is trusted only once its jwks.changed event is written:
 * while the audit log refuses that event, the fetched set is not taken and
 * tokens under the new key answer 503, never pass; once the log takes it
 * again, the next fetch trusts the key and its event is there.
 */
static void
jwks_uri_added_key_is_trusted_only_once_audited(void **state)
{
	static struct harness_tls t; /* static: a failed test leaves its thread running */
	struct world w;
	struct idp_jws_key *a = new_key("key-a"), *b = new_key("key-b"), *both[2];
	char pki[64], cert[128], key[128], toml[1024], sql[512];
	char *tok_a, *tok_b;
	unsigned before;

	(void)state;
	assert_int_equal(harness_tls_pki(pki, sizeof(pki)), 0);
	pki_file(cert, sizeof(cert), pki, "server.pem");
	pki_file(key, sizeof(key), pki, "server.key");
	assert_int_equal(harness_tls_start(&t, true, cert, key, NULL), 0);
	serve_keys(&t, &a, 1);
	remote_toml(toml, sizeof(toml), "https", t.port, pki);
	/* How long the fetch thread waits for the event's commit. */
	strncat(toml, "[audit]\ntimeout = \"2s\"\n", sizeof(toml) - strlen(toml) - 1);
	world_start(&w, "t_jwks_audit_first", toml);
	tok_a = remote_token(a, 1);
	assert_int_equal(try_token(&w, tok_a, NULL, 0), 400);

	/* The audit log refuses jwks.changed events, for good (a trigger's
	 * check_violation: the writer drops the row and tells its emitter),
	 * and takes every other event. */
	assert_int_equal(harness_sql(w.db, "CREATE FUNCTION refuse_jwks() RETURNS trigger "
	                                   "LANGUAGE plpgsql AS $$BEGIN RAISE EXCEPTION "
	                                   "'refused by the test' USING ERRCODE = "
	                                   "'check_violation'; END$$; CREATE TRIGGER "
	                                   "refuse_jwks BEFORE INSERT ON audit_events FOR EACH "
	                                   "ROW WHEN (NEW.type = 'jwks.changed') EXECUTE "
	                                   "FUNCTION refuse_jwks()"),
	                 0);

	/* The provider rotates: the set holding key-b is fetched, more than
	 * once, but key-b is not trusted. */
	both[0] = a;
	both[1] = b;
	serve_keys(&t, both, 2);
	tok_b = remote_token(b, 0);
	before = harness_tls_requests(&t);
	for (int i = 0; i < 22; i++) {
		assert_int_equal(try_token(&w, tok_b, NULL, 0), 503);
		sleep_ms(250);
	}
	assert_true(harness_tls_requests(&t) - before >= 2);
	assert_true(harness_log_contains(&w.p, "its new keys are not trusted until their "
	                                       "jwks.changed event can be written"));
	assert_int_equal(try_token(&w, tok_a, NULL, 0), 400);
	snprintf(sql, sizeof(sql),
	         "SELECT count(*) FROM audit_events WHERE type = 'audit.event_refused' AND "
	         "body::jsonb->'detail'->>'refused_type' = 'jwks.changed'");
	assert_true(world_count(&w, sql) >= 1);
	snprintf(sql, sizeof(sql),
	         "SELECT count(*) FROM audit_events WHERE type = 'jwks.changed' AND "
	         "body::jsonb->'detail'->'added' = '[\"key-b\"]'::jsonb");
	assert_int_equal(world_count(&w, sql), 0);

	/* The log takes the event again: the next fetch trusts key-b, once written. */
	assert_int_equal(harness_sql(w.db, "DROP TRIGGER refuse_jwks ON audit_events"), 0);
	assert_int_equal(until_status(&w, tok_b, 400, 8000), 400);
	assert_int_equal(world_count(&w, sql), 1);

	free(tok_a);
	free(tok_b);
	world_stop(&w);
	harness_tls_stop(&t);
	harness_tls_pki_remove(pki);
	idp_jws_key_unref(a);
	idp_jws_key_unref(b);
}

#define WL_ISS "https://spire.remote.example"

/* A workload token of the jwks_uri attestor for the planner, signed by key, issued iat_ago s ago.
 */
static char *
workload_token(const struct idp_jws_key *key, long iat_ago)
{
	long long now = (long long)time(NULL);
	json_t *c = json_pack("{s:s,s:[s],s:s,s:I,s:I}", "iss", WL_ISS, "aud", "idpd", "sub",
	                      "spiffe://example.org/planner", "iat", (json_int_t)(now - iat_ago),
	                      "exp", (json_int_t)(now + 600));
	char *tok = NULL;

	assert_int_equal(idp_jws_sign(key, NULL, c, &tok, NULL, NULL), IDP_OK);
	json_decref(c);
	return tok;
}

/* POST /v1/agents/wl-agent/attest with jwt evidence tok: the status, Retry-After into ra. */
static long
attest_jwt(struct world *w, const char *tok, char *ra, size_t len)
{
	struct http_resp r;
	char body[4096];
	long status;

	snprintf(body, sizeof(body), "{\"method\":\"jwt\",\"token\":\"%s\"}", tok);
	world_call(w, "POST", "/v1/agents/wl-agent/attest", NULL, body, &r);
	status = r.status;
	if (ra != NULL && !harness_resp_header(&r, "Retry-After", ra, len))
		ra[0] = '\0';
	harness_resp_free(&r);
	return status;
}

/* Register wl-agent, attested by the "wl" attestor's planner workload. */
static void
register_wl_agent(struct world *w)
{
	world_register(w, "{\"id\":\"wl-agent\",\"agent_type\":\"planner\",\"owner\":"
	                  "\"alice@example.com\",\"capabilities\":[\"reports:read\"],"
	                  "\"delegation_constraints\":{\"max_chain_depth\":1,"
	                  "\"max_scope_per_delegation\":\"read\","
	                  "\"requires_human_approval_for\":[]},"
	                  "\"credential\":{\"rotation\":\"30m\"},"
	                  "\"attestation_selectors\":[\"wl:spiffe://example.org/planner\"]}");
}

static void
jwks_uri_attestor_follows_rotation(void **state)
{
	static struct harness_tls t; /* static: a failed test leaves its thread running */
	struct world w;
	struct idp_jws_key *a = new_key("wl-a"), *b = new_key("wl-b"), *both[2], *made_up;
	char pki[64], cert[128], key[128], toml[1024], ra[32], sql[512];
	char *tok;
	long s = 0;

	(void)state;
	assert_int_equal(harness_tls_pki(pki, sizeof(pki)), 0);
	pki_file(cert, sizeof(cert), pki, "server.pem");
	pki_file(key, sizeof(key), pki, "server.key");
	assert_int_equal(harness_tls_start(&t, true, cert, key, NULL), 0);
	serve_keys(&t, &a, 1);
	snprintf(toml, sizeof(toml),
	         "[[attestors]]\nname = \"wl\"\nissuer = \"" WL_ISS "\"\naudience = \"idpd\"\n"
	         "jwks_uri = \"https://127.0.0.1:%d/keys/jwks.json\"\nca_file = \"%s/ca.pem\"\n"
	         "algs = [\"ES256\"]\njwks_min_refresh = \"2s\"\nselectors = \"wl=sub\"\n",
	         t.port, pki);
	world_start(&w, "t_jwks_attestor", toml);
	register_wl_agent(&w);

	/* Fetched at start: evidence under wl-a attests. */
	tok = workload_token(a, 0);
	assert_int_equal(attest_jwt(&w, tok, NULL, 0), 200);
	free(tok);

	/* Rotated: evidence under wl-b is a 503 with Retry-After, then attests. */
	both[0] = a;
	both[1] = b;
	serve_keys(&t, both, 2);
	tok = workload_token(b, 0);
	assert_int_equal(attest_jwt(&w, tok, ra, sizeof(ra)), 503);
	assert_true(atoi(ra) >= 1);
	for (int i = 0; i < 32 && (s = attest_jwt(&w, tok, NULL, 0)) != 200; i++)
		sleep_ms(250);
	assert_int_equal(s, 200);
	free(tok);
	snprintf(sql, sizeof(sql),
	         "SELECT count(*) FROM audit_events WHERE type = 'agent.attestation_failed' AND "
	         "agent_id = 'wl-agent' AND body::jsonb->'detail'->>'reason' = "
	         "'kid_unknown_until_refresh'");
	assert_true(world_count(&w, sql) >= 1);
	snprintf(sql, sizeof(sql),
	         "SELECT count(*) FROM audit_events WHERE type = 'jwks.changed' AND "
	         "body::jsonb->'detail'->>'kind' = 'attestor' AND "
	         "body::jsonb->'detail'->'added' = '[\"wl-b\"]'::jsonb");
	assert_int_equal(world_count(&w, sql), 1);

	/* A made-up kid on evidence issued before the last fetch: 401. */
	made_up = new_key("wl-made-up");
	tok = workload_token(made_up, 60);
	assert_int_equal(attest_jwt(&w, tok, NULL, 0), 401);
	free(tok);
	idp_jws_key_unref(made_up);

	world_stop(&w);
	harness_tls_stop(&t);
	harness_tls_pki_remove(pki);
	idp_jws_key_unref(a);
	idp_jws_key_unref(b);
}

/*
 * A planner workload token with no kid in its header.  Its signature is
 * junk: no attestor has a set to check it with, and the answer must not
 * depend on it.
 */
static char *
kidless_workload_token(void)
{
	const char *header = "{\"alg\":\"ES256\",\"typ\":\"JWT\"}";
	long long now = (long long)time(NULL);
	char payload[512], *h64, *p64, *out;
	unsigned char sig[64];
	size_t n;

	snprintf(payload, sizeof(payload),
	         "{\"iss\":\"" WL_ISS "\",\"aud\":[\"idpd\"],"
	         "\"sub\":\"spiffe://example.org/planner\",\"iat\":%lld,\"exp\":%lld}",
	         now, now + 600);
	memset(sig, 0x5a, sizeof(sig));
	h64 = idp_b64url_encode(header, strlen(header), NULL);
	p64 = idp_b64url_encode(payload, strlen(payload), NULL);
	n = strlen(h64) + strlen(p64) + 100;
	out = malloc(n);
	assert_non_null(out);
	snprintf(out, n, "%s.%s.", h64, p64);
	idp_b64url_encode_to(sig, sizeof(sig), out + strlen(out));
	free(h64);
	free(p64);
	return out;
}

/*
 * An [[attestors]] entry whose jwks_uri server is down has no set: evidence
 * under a kid answers 503 with Retry-After (try again once its keys are
 * fetched), never 401.  Evidence without a kid can never verify, whatever
 * the sets: 401, not a 503 that tells it to retry.
 */
static void
jwks_uri_attestor_without_keys_answers_503_but_not_without_a_kid(void **state)
{
	struct world w;
	struct idp_jws_key *a = new_key("wl-a");
	char toml[1024], ra[32], sql[512];
	char *tok;

	(void)state;
	/* Nothing listens on the port: each fetch is refused at once. */
	snprintf(toml, sizeof(toml),
	         "[[attestors]]\nname = \"wl\"\nissuer = \"" WL_ISS "\"\naudience = \"idpd\"\n"
	         "jwks_uri = \"https://127.0.0.1:%d/keys/jwks.json\"\n"
	         "algs = [\"ES256\"]\njwks_min_refresh = \"2s\"\nselectors = \"wl=sub\"\n",
	         harness_free_port());
	world_start(&w, "t_jwks_attestor_down", toml);
	assert_true(harness_log_contains(&w.p, "jwks: attestor \"wl\": cannot fetch its keys"));
	register_wl_agent(&w);

	tok = kidless_workload_token();
	assert_int_equal(attest_jwt(&w, tok, ra, sizeof(ra)), 401);
	free(tok);
	/* With a kid: 503. */
	tok = workload_token(a, 0);
	assert_int_equal(attest_jwt(&w, tok, ra, sizeof(ra)), 503);
	assert_true(atoi(ra) >= 1);
	free(tok);
	snprintf(sql, sizeof(sql),
	         "SELECT count(*) FROM audit_events WHERE type = 'agent.attestation_failed' AND "
	         "agent_id = 'wl-agent' AND body::jsonb->'detail'->>'reason' = "
	         "'jwks_unavailable'");
	/* Queued without waiting: give the writer a moment. */
	for (int i = 0; i < 40 && world_count(&w, sql) < 1; i++)
		sleep_ms(50);
	sleep_ms(200);
	assert_int_equal(world_count(&w, sql), 1);

	world_stop(&w);
	idp_jws_key_unref(a);
}

/* idpd check-config on toml; its exit status, its output in out. */
static int
check_config(const char *toml, const char *out)
{
	char path[64] = "/tmp/idpd_jwks_cfg_XXXXXX";
	char *full;
	int fd = mkstemp(path), rc;
	const char *args[] = {"check-config", path, NULL};
	FILE *f;

	assert_true(fd >= 0);
	f = fdopen(fd, "w");
	full = malloc(strlen(toml) + 512);
	sprintf(full,
	        "[database]\nurl = \"postgresql:///x\"\n[identity]\ntrust_domain = "
	        "\"example.org\"\n%s",
	        toml);
	fputs(full, f);
	fclose(f);
	free(full);
	rc = harness_idpd_run(args, out);
	unlink(path);
	return rc;
}

static void
jwks_uri_must_be_https_and_alone(void **state)
{
	char toml[1024];
	const char *out = "/tmp/idpd_jwks_check.out";

	(void)state;
	remote_toml(toml, sizeof(toml), "http", 8443, "/tmp");
	assert_int_not_equal(check_config(toml, out), 0);
	assert_true(harness_file_contains(out, "expected an https:// URL"));

	snprintf(
	    toml, sizeof(toml),
	    "[[idp]]\nname = \"remote\"\nissuer = \"" REMOTE_ISS "\"\naudience = \"idpd\"\n"
	    "jwks_uri = \"https://127.0.0.1:8443/jwks.json\"\njwks_file = \"/etc/jwks.json\"\n");
	assert_int_not_equal(check_config(toml, out), 0);
	assert_true(harness_file_contains(out, "set one of the two, not both"));

	snprintf(toml, sizeof(toml),
	         "[[idp]]\nname = \"remote\"\nissuer = \"" REMOTE_ISS "\"\naudience = \"idpd\"\n");
	assert_int_not_equal(check_config(toml, out), 0);
	assert_true(harness_file_contains(out, "one of the two is required"));
	unlink(out);
}

static int
teardown(void **state)
{
	return world_teardown(state);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(jwks_uri_keys_authenticate_and_follow_rotation),
	    cmocka_unit_test(jwks_uri_definitely_unknown_kid_still_asks_for_a_fetch),
	    cmocka_unit_test(jwks_uri_unverified_server_answers_503_until_it_is_fixed),
	    cmocka_unit_test(jwks_uri_set_past_max_stale_answers_503),
	    cmocka_unit_test(jwks_uri_added_key_is_trusted_only_once_audited),
	    cmocka_unit_test(jwks_uri_providers_come_stay_and_go_with_reloads),
	    cmocka_unit_test(jwks_uri_reload_takes_a_ca_file_rewritten_in_place),
	    cmocka_unit_test(jwks_uri_hanging_provider_does_not_starve_the_others),
	    cmocka_unit_test(jwks_uri_attestor_follows_rotation),
	    cmocka_unit_test(jwks_uri_attestor_without_keys_answers_503_but_not_without_a_kid),
	    cmocka_unit_test(jwks_uri_must_be_https_and_alone),
	};

	return cmocka_run_group_tests(tests, NULL, teardown);
}
