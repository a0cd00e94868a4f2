/*
 * jws_bench - single-threaded ES256 signs/s and verifies/s through idpd's
 * JWS code, with a typical access-token payload, next to the raw ECDSA rate
 * of the same EVP_PKEY on a precomputed digest (what `openssl speed
 * ecdsap256` measures).  Prints one line per figure; asserts nothing.
 *
 * Rates are per second of this process's CPU time, as `openssl speed`
 * reports by default (its -elapsed flag switches to wall-clock), so that a
 * machine shared with other work does not skew the comparison; the
 * wall-clock rate is printed beside it.
 *
 *   jws_bench [CPU seconds per figure, default 3]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/sha.h>

#include "idpd/clock.h"
#include "idpd/jws.h"

static const char claims[] =
    "{\"iss\":\"https://idpd.example\",\"sub\":\"agent-research-01\",\"aud\":\"s3.internal\","
    "\"iat\":1774621523,\"exp\":1774622423,\"jti\":\"01J9ZK3Q8W5M2N7R4T6V8X0Y2Z\","
    "\"scope\":\"s3:GetObject s3:ListBucket\",\"task_id\":\"task-42\","
    "\"human_principal\":\"alice@example.com\",\"agent_type\":\"research\","
    "\"agent_version\":\"1.4.2\",\"client_id\":\"agent-research-01\"}";

static int64_t
cpu_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static double
rate(long n, int64_t us)
{
	return us > 0 ? (double)n * 1e6 / (double)us : 0;
}

/* One measurement: CPU and wall time at the start, and the count. */
struct meter {
	int64_t cpu0, wall0, cpu, wall;
};

static void
meter_start(struct meter *m)
{
	m->cpu0 = cpu_us();
	m->wall0 = idp_mono_us();
	m->cpu = m->wall = 0;
}

/* True while the CPU budget lasts; records the elapsed times. */
static int
meter_running(struct meter *m, int64_t budget)
{
	m->cpu = cpu_us() - m->cpu0;
	m->wall = idp_mono_us() - m->wall0;
	return m->cpu < budget;
}

static void
report(const char *what, long n, const struct meter *m, const char *note)
{
	printf("%-24s %9.0f /s CPU  %9.0f /s wall  (%ld in %.2f s CPU)%s%s\n", what,
	       rate(n, m->cpu), rate(n, m->wall), n, (double)m->cpu / 1e6, note ? "  " : "",
	       note ? note : "");
}

int
main(int argc, char **argv)
{
	double secs = argc > 1 ? atof(argv[1]) : 3.0;
	int64_t budget = (int64_t)(secs * 1e6);
	struct meter m;
	struct idp_jws_key *key = NULL;
	struct idp_jws_keyset *set = NULL;
	struct idp_diag d;
	char *tok = NULL, *pem = NULL;
	size_t pem_len = 0;
	long n;
	EVP_PKEY *pk;
	EVP_PKEY_CTX *ctx;
	BIO *bio;
	unsigned char digest[32], sig[80];

	idp_diag_init(&d);
	if (secs <= 0 || idp_jws_key_generate("bench", &key, &d) != IDP_OK ||
	    idp_jws_keyset_new(&key, 1, &set, &d) != IDP_OK) {
		fprintf(stderr, "jws_bench: setup failed: %s\n", idp_diag_str(&d));
		return 1;
	}

	meter_start(&m);
	for (n = 0; meter_running(&m, budget); n++) {
		free(tok);
		if (idp_jws_sign_payload(key, IDP_JWS_TYP_ACCESS, claims, strlen(claims), &tok,
		                         NULL, &d) != IDP_OK) {
			fprintf(stderr, "jws_bench: sign failed: %s\n", idp_diag_str(&d));
			return 1;
		}
	}
	report("idpd jws ES256 sign", n, &m, "(typical access token)");

	meter_start(&m);
	for (n = 0; meter_running(&m, budget); n++) {
		struct idp_jws_verified v;
		struct idp_jws_verify_opts opts = {.typ = IDP_JWS_TYP_ACCESS};

		if (idp_jws_verify(set, tok, strlen(tok), &opts, &v, NULL) != IDP_OK) {
			fprintf(stderr, "jws_bench: verify failed\n");
			return 1;
		}
		idp_jws_verified_cleanup(&v);
	}
	report("idpd jws ES256 verify", n, &m, NULL);

	/* The floor under both: ECDSA alone, one context reused, digest given. */
	if (idp_jws_key_private_pem(key, &pem, &pem_len) != IDP_OK)
		return 1;
	bio = BIO_new_mem_buf(pem, (int)pem_len);
	pk = PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL);
	ctx = EVP_PKEY_CTX_new(pk, NULL);
	SHA256((const unsigned char *)claims, strlen(claims), digest);
	if (ctx == NULL || EVP_PKEY_sign_init(ctx) != 1)
		return 1;
	meter_start(&m);
	for (n = 0; meter_running(&m, budget); n++) {
		size_t sl = sizeof(sig);

		if (EVP_PKEY_sign(ctx, sig, &sl, digest, sizeof(digest)) != 1)
			return 1;
	}
	report("raw EVP_PKEY_sign", n, &m, "(digest given, context reused)");
	EVP_PKEY_CTX_free(ctx);
	ctx = EVP_PKEY_CTX_new(pk, NULL);
	{
		size_t sl = sizeof(sig);

		if (ctx == NULL || EVP_PKEY_sign_init(ctx) != 1 ||
		    EVP_PKEY_sign(ctx, sig, &sl, digest, sizeof(digest)) != 1 ||
		    EVP_PKEY_verify_init(ctx) != 1)
			return 1;
		meter_start(&m);
		for (n = 0; meter_running(&m, budget); n++) {
			if (EVP_PKEY_verify(ctx, sig, sl, digest, sizeof(digest)) != 1)
				return 1;
		}
	}
	report("raw EVP_PKEY_verify", n, &m, NULL);

	EVP_PKEY_CTX_free(ctx);
	EVP_PKEY_free(pk);
	BIO_free(bio);
	idp_wipe(pem, pem_len);
	free(pem);
	free(tok);
	idp_jws_keyset_unref(set);
	idp_jws_key_unref(key);
	return 0;
}
