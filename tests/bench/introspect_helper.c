/*
 * introspect_helper - what tests/bench/introspect.sh cannot do with curl:
 *
 *   introspect_helper idp DIR
 *       make an ES256 identity provider key, write DIR/idp.jwks.json and
 *       print a bearer token for alice@example.com (iss https://sso.bench,
 *       aud idpd, one hour)
 *   introspect_helper access DB_URL DELEGATION_TOKEN AUDIENCE
 *       print an access token (typ at+jwt) issued under the delegation
 *       token, signed with idpd's active key read from DB_URL with the KEK
 *       in $IDPD_KEK: the shape docs/tokens.md gives access tokens
 *   introspect_helper propagate DB_URL DELEGATION_TOKEN PORT_A PORT_B ADMIN_KEY
 *                               INTROSPECTOR_KEY ROUNDS
 *       per round: mint an access token, see it active on B, revoke it on
 *       A, and poll B until it is inactive; print the median and maximum
 *       delay from sending the revocation, and from its answer
 *
 * HTTP is spoken over one keep-alive socket per instance, so a poll costs
 * a round trip, not a process or a connection.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "idpd/attest.h"
#include "idpd/clock.h"
#include "idpd/jws.h"
#include "idpd/kek.h"
#include "idpd/keys.h"
#include "idpd/revocation.h"
#include "idpd/store.h"
#include "idpd/tasks.h"

static int
die(const char *what)
{
	fprintf(stderr, "introspect_helper: %s\n", what);
	return 1;
}

static int
cmd_idp(const char *dir)
{
	struct idp_jws_key *k = NULL;
	char path[512], *tok = NULL;
	long long now = (long long)time(NULL);
	json_t *doc, *c;
	FILE *f;

	if (idp_jws_key_generate("bench-idp", &k, NULL) != IDP_OK)
		return die("cannot make a key");
	snprintf(path, sizeof(path), "%s/idp.jwks.json", dir);
	f = fopen(path, "w");
	if (f == NULL)
		return die("cannot write the JWKS");
	doc = json_pack("{s:[o]}", "keys", idp_jws_key_public_jwk(k));
	json_dumpf(doc, f, JSON_COMPACT);
	json_decref(doc);
	fclose(f);
	c = json_pack("{s:s,s:s,s:s,s:I,s:I,s:s,s:b}", "iss", "https://sso.bench", "sub", "alice",
	              "aud", "idpd", "iat", (json_int_t)now, "exp", (json_int_t)(now + 3600),
	              "email", "alice@example.com", "email_verified", 1);
	if (idp_jws_sign(k, NULL, c, &tok, NULL, NULL) != IDP_OK)
		return die("cannot sign");
	printf("%s\n", tok);
	free(tok);
	json_decref(c);
	idp_jws_key_unref(k);
	return 0;
}

struct signer {
	struct store *store;
	struct keys *km;
};

static int
signer_open(struct signer *s, const char *url)
{
	struct store_opts so = {.url = url,
	                        .pool_size = 1,
	                        .connect_timeout_ms = 2000,
	                        .acquire_timeout_ms = 2000,
	                        .statement_timeout_ms = 5000};
	struct keys_opts o = {.clock = idp_clock_system(),
	                      .policy = {.rotate_every_ms = 0,
	                                 .retire_after_ms = 24 * 3600 * 1000LL,
	                                 .max_age_ms = 90LL * 86400 * 1000},
	                      .kek_source = "$IDPD_KEK"};
	struct idp_kek *k = NULL;
	struct idp_diag d;
	const char *kek = getenv("IDPD_KEK");

	idp_diag_init(&d);
	if (kek == NULL || idp_kek_from_string(kek, &k, &d) != IDP_OK)
		return die("IDPD_KEK must hold idpd's KEK");
	s->store = store_open(&so);
	o.store = s->store;
	if (keys_open(&o, k, &s->km, &d) != IDP_OK || keys_reload(s->km, &d) != IDP_OK) {
		fprintf(stderr, "%s\n", idp_diag_str(&d));
		return die("cannot load idpd's keys");
	}
	return 0;
}

static char *
mint(struct signer *s, const char *deleg, const char *aud)
{
	struct idp_jws_keyset *set = keys_verify_set(s->km);
	struct idp_jws_verify_opts vo = {.typ = TASK_TOKEN_TYP};
	struct idp_jws_verified v;
	struct idp_jws_key *key = NULL;
	long long now = (long long)time(NULL);
	char jti[ATTEST_JTI_LEN + 1], *tok = NULL;
	const json_t *dc;
	json_t *c;

	if (idp_jws_verify(set, deleg, strlen(deleg), &vo, &v, NULL) != IDP_OK ||
	    attest_jti_new(jti) != IDP_OK) {
		idp_jws_keyset_unref(set);
		return NULL;
	}
	idp_jws_keyset_unref(set);
	dc = v.claims;
	c = json_pack("{s:O,s:O,s:s,s:I,s:I,s:s,s:O,s:O,s:O,s:O,s:s,s:s,s:O,s:O,s:O}", "iss",
	              json_object_get(dc, "iss"), "sub", json_object_get(dc, "sub"), "aud", aud,
	              "iat", (json_int_t)now, "exp", (json_int_t)(now + 900), "jti", jti, "scope",
	              json_object_get(dc, "scope"), "task_id", json_object_get(dc, "task_id"),
	              "human_principal", json_object_get(dc, "human_principal"),
	              "delegation_chain_hash", json_object_get(dc, "delegation_chain_hash"),
	              "agent_type", "cloud-inventory", "agent_version", "v1.2.0", "client_id",
	              json_object_get(dc, "sub"), ACCESS_CLAIM_DELEGATION_JTI,
	              json_object_get(dc, "jti"), "act", json_object_get(dc, "act"));
	if (c != NULL && keys_signing_key(s->km, &key, NULL) == IDP_OK &&
	    idp_jws_sign(key, IDP_JWS_TYP_ACCESS, c, &tok, NULL, NULL) != IDP_OK)
		tok = NULL;
	idp_jws_key_unref(key);
	json_decref(c);
	idp_jws_verified_cleanup(&v);
	return tok;
}

/* ---- a minimal keep-alive HTTP/1.1 client ---- */

static int
dial(int port)
{
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
	int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;

	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
		if (fd >= 0)
			close(fd);
		return -1;
	}
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	return fd;
}

/* POST a form; returns the status and copies the body into out.  -1 on I/O failure. */
static int
post(int fd, const char *path, const char *key, const char *body, char *out, size_t out_len)
{
	char req[16384], buf[32768];
	size_t have = 0, need;
	char *eoh, *cl;
	int n, status;

	n = snprintf(
	    req, sizeof(req),
	    "POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer %s\r\n"
	    "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: %zu\r\n\r\n"
	    "%s",
	    path, key, strlen(body), body);
	if (n <= 0 || (size_t)n >= sizeof(req) || write(fd, req, (size_t)n) != n)
		return -1;
	for (;;) {
		ssize_t r = read(fd, buf + have, sizeof(buf) - 1 - have);

		if (r <= 0)
			return -1;
		have += (size_t)r;
		buf[have] = '\0';
		eoh = strstr(buf, "\r\n\r\n");
		if (eoh == NULL)
			continue;
		cl = strcasestr(buf, "\r\nContent-Length:");
		need = (size_t)(eoh + 4 - buf) + (cl != NULL ? strtoul(cl + 17, NULL, 10) : 0);
		if (have >= need)
			break;
	}
	status = atoi(buf + 9);
	snprintf(out, out_len, "%s", eoh + 4);
	return status;
}

static int
cmp_ll(const void *a, const void *b)
{
	long long x = *(const long long *)a, y = *(const long long *)b;

	return x < y ? -1 : x > y;
}

static int
cmd_propagate(char **argv)
{
	struct signer s;
	int rounds = atoi(argv[7]), fa, fb;
	long long *total, *after;
	char resp[8192], body[9000];

	if (rounds < 1 || signer_open(&s, argv[1]) != 0)
		return die("bad arguments");
	fa = dial(atoi(argv[3]));
	fb = dial(atoi(argv[4]));
	if (fa < 0 || fb < 0)
		return die("cannot connect to idpd");
	total = calloc((size_t)rounds, sizeof(*total));
	after = calloc((size_t)rounds, sizeof(*after));
	for (int i = 0; i < rounds; i++) {
		char *at = mint(&s, argv[2], "https://s3.internal");
		int64_t t0, t1, t2;

		if (at == NULL)
			return die("cannot mint an access token");
		snprintf(body, sizeof(body), "token=%s", at);
		if (post(fb, "/introspect", argv[6], body, resp, sizeof(resp)) != 200 ||
		    strstr(resp, "\"active\":true") == NULL)
			return die("the fresh token is not active on B");
		t0 = idp_mono_us();
		if (post(fa, "/revoke", argv[5], body, resp, sizeof(resp)) != 200)
			return die("revocation on A failed");
		t1 = idp_mono_us();
		for (;;) {
			if (post(fb, "/introspect", argv[6], body, resp, sizeof(resp)) != 200)
				return die("introspection on B failed");
			if (strcmp(resp, "{\"active\":false}") == 0)
				break;
			if (idp_mono_us() - t0 > 5000000)
				return die("B still says active after 5 s");
		}
		t2 = idp_mono_us();
		total[i] = t2 - t0;
		after[i] = t2 - t1;
		free(at);
	}
	qsort(total, (size_t)rounds, sizeof(*total), cmp_ll);
	qsort(after, (size_t)rounds, sizeof(*after), cmp_ll);
	printf("rounds=%d total_median_us=%lld total_max_us=%lld after_answer_median_us=%lld "
	       "after_answer_max_us=%lld\n",
	       rounds, total[rounds / 2], total[rounds - 1], after[rounds / 2], after[rounds - 1]);
	free(total);
	free(after);
	close(fa);
	close(fb);
	keys_free(s.km);
	store_close(s.store);
	return 0;
}

int
main(int argc, char **argv)
{
	if (argc == 3 && strcmp(argv[1], "idp") == 0)
		return cmd_idp(argv[2]);
	if (argc == 5 && strcmp(argv[1], "access") == 0) {
		struct signer s;
		char *tok;

		if (signer_open(&s, argv[2]) != 0)
			return 1;
		tok = mint(&s, argv[3], argv[4]);
		if (tok == NULL)
			return die("cannot mint an access token");
		printf("%s\n", tok);
		free(tok);
		keys_free(s.km);
		store_close(s.store);
		return 0;
	}
	if (argc == 9 && strcmp(argv[1], "propagate") == 0)
		return cmd_propagate(argv + 1);
	fprintf(stderr,
	        "usage: introspect_helper idp DIR | access DB_URL DELEGATION_TOKEN AUDIENCE |"
	        " propagate DB_URL DELEGATION_TOKEN PORT_A PORT_B ADMIN_KEY INTRO_KEY "
	        "ROUNDS\n");
	return 2;
}
