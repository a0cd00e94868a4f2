/*
 * presign.c - the pool of precomputed ECDSA P-256 nonces (presign.h).
 *
 * OpenSSL offers precomputed nonces only through its EC_KEY interface
 * (ECDSA_sign_setup, ECDSA_do_sign_ex), deprecated in 3.0 with no EVP
 * equivalent; this file is the one place idpd uses it.
 */
#define OPENSSL_SUPPRESS_DEPRECATED

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/ecdsa.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/obj_mac.h>

#include "idpd/buf.h"
#include "idpd/log.h"
#include "idpd/metrics.h"
#include "idpd/presign.h"

struct idp_presign_key {
	EC_KEY *ec;
};

struct pair {
	BIGNUM *kinv; /* k^-1 mod n: secret */
	BIGNUM *r;
};

static struct {
	pthread_mutex_t lock; /* presign.lock: the members up to thread */
	pthread_cond_t room;  /* the pool has room, or the thread must stop */
	struct pair *pairs;   /* a stack of n pairs, cap long */
	size_t n, cap;
	bool running, stopping;
	pthread_t thread;
	/*
	 * A throwaway key, never used to sign: ECDSA_sign_setup insists on a
	 * private key, though without a digest it draws k at random and
	 * does not use it.
	 */
	EC_KEY *scratch;
	/* Readable without the lock: running and not stopping, and n. */
	atomic_bool on;
	atomic_size_t ready;
	atomic_uint_fast64_t hits, misses;
} P = {.lock = PTHREAD_MUTEX_INITIALIZER, .room = PTHREAD_COND_INITIALIZER};

static void
pair_wipe(struct pair *p)
{
	BN_clear_free(p->kinv);
	BN_clear_free(p->r);
	p->kinv = p->r = NULL;
}

static void *
refill(void *arg)
{
	struct sched_param sp = {0};
	BN_CTX *ctx = BN_CTX_new();

	(void)arg;
	pthread_setname_np(pthread_self(), "presign");
	/* Below every request: this thread only soaks up idle time. */
	if (pthread_setschedparam(pthread_self(), SCHED_IDLE, &sp) != 0)
		log_warn("presign: cannot run at idle priority; nonces are computed at normal "
		         "priority");
	for (;;) {
		struct pair p = {NULL, NULL};

		pthread_mutex_lock(&P.lock);
		while (P.n == P.cap && !P.stopping)
			pthread_cond_wait(&P.room, &P.lock);
		if (P.stopping) {
			pthread_mutex_unlock(&P.lock);
			break;
		}
		pthread_mutex_unlock(&P.lock);
		if (ctx == NULL || ECDSA_sign_setup(P.scratch, ctx, &p.kinv, &p.r) != 1) {
			/* Signatures go on inline; nothing is lost but speed. */
			ERR_clear_error();
			log_error("presign: cannot compute a nonce; signing computes its own from "
			          "now on");
			pair_wipe(&p);
			break;
		}
		pthread_mutex_lock(&P.lock);
		if (P.n < P.cap) {
			P.pairs[P.n++] = p;
			p.kinv = p.r = NULL;
			atomic_store(&P.ready, P.n);
		}
		pthread_mutex_unlock(&P.lock);
		pair_wipe(&p);
	}
	BN_CTX_free(ctx);
	return NULL;
}

static void
collect(struct idp_buf *out, void *ctx)
{
	(void)ctx;
	if (idp_buf_printf(
	        out,
	        "# HELP idpd_presign_nonces ECDSA nonces computed ahead and not yet used.\n"
	        "# TYPE idpd_presign_nonces gauge\nidpd_presign_nonces %zu\n"
	        "# HELP idpd_presign_signatures_total ES256 signatures by where their nonce came "
	        "from.\n"
	        "# TYPE idpd_presign_signatures_total counter\n"
	        "idpd_presign_signatures_total{nonce=\"pool\"} %llu\n"
	        "idpd_presign_signatures_total{nonce=\"inline\"} %llu\n",
	        idp_presign_available(), (unsigned long long)idp_presign_hits(),
	        (unsigned long long)idp_presign_misses()) != IDP_OK)
		log_warn("metrics: presign output truncated");
}

/*
 * A forked child must not inherit nonces its parent may also use.  idpd
 * does not fork, but a library it links might.  The lock is held across
 * fork so that the child finds the pool in one piece; the child has no
 * refill thread.
 */
static void
before_fork(void)
{
	pthread_mutex_lock(&P.lock);
}

static void
after_fork_parent(void)
{
	pthread_mutex_unlock(&P.lock);
}

static void
after_fork_child(void)
{
	while (P.n > 0)
		pair_wipe(&P.pairs[--P.n]);
	atomic_store(&P.ready, 0);
	atomic_store(&P.on, false);
	P.running = false; /* the child has no refill thread to join */
	pthread_mutex_unlock(&P.lock);
}

/* Once per process, from the first start (the main thread, before serving). */
static void
register_once(void)
{
	static bool done;

	if (done)
		return;
	done = true;
	if (pthread_atfork(before_fork, after_fork_parent, after_fork_child) != 0)
		log_warn("presign: cannot register the fork handlers");
	if (metrics_register(collect, NULL) != IDP_OK)
		log_warn("metrics: too many collectors; presign metrics not exported");
}

int
idp_presign_start(size_t capacity, struct idp_diag *diag)
{
	int rc = IDP_EINTERNAL;

	if (capacity < 1 || capacity > IDP_PRESIGN_MAX) {
		idp_diag_add(diag, "presign: capacity must be 1 to %d", IDP_PRESIGN_MAX);
		return IDP_EINVAL;
	}
	pthread_mutex_lock(&P.lock);
	if (P.running) {
		pthread_mutex_unlock(&P.lock);
		idp_diag_add(diag, "presign: already running");
		return IDP_ECONFLICT;
	}
	P.scratch = EC_KEY_new_by_curve_name(NID_X9_62_prime256v1);
	if (P.scratch == NULL || EC_KEY_generate_key(P.scratch) != 1) {
		ERR_clear_error();
		idp_diag_add(diag, "presign: cannot make a P-256 key");
		goto fail;
	}
	P.pairs = idp_xcalloc(capacity, sizeof(*P.pairs));
	P.cap = capacity;
	P.n = 0;
	P.stopping = false;
	atomic_store(&P.ready, 0);
	atomic_store(&P.hits, 0);
	atomic_store(&P.misses, 0);
	if (pthread_create(&P.thread, NULL, refill, NULL) != 0) {
		idp_diag_add(diag, "presign: cannot start its thread");
		goto fail;
	}
	P.running = true;
	atomic_store(&P.on, true);
	pthread_mutex_unlock(&P.lock);
	register_once();
	return IDP_OK;
fail:
	free(P.pairs);
	P.pairs = NULL;
	P.cap = 0;
	EC_KEY_free(P.scratch);
	P.scratch = NULL;
	pthread_mutex_unlock(&P.lock);
	return rc;
}

void
idp_presign_stop(void)
{
	pthread_mutex_lock(&P.lock);
	if (!P.running || P.stopping) { /* not started, or another caller is stopping it */
		pthread_mutex_unlock(&P.lock);
		return;
	}
	P.stopping = true;
	atomic_store(&P.on, false);
	pthread_cond_signal(&P.room);
	pthread_mutex_unlock(&P.lock);
	pthread_join(P.thread, NULL);

	pthread_mutex_lock(&P.lock);
	while (P.n > 0)
		pair_wipe(&P.pairs[--P.n]);
	atomic_store(&P.ready, 0);
	free(P.pairs);
	P.pairs = NULL;
	P.cap = 0;
	EC_KEY_free(P.scratch);
	P.scratch = NULL;
	P.running = false;
	pthread_mutex_unlock(&P.lock);
}

size_t
idp_presign_available(void)
{
	return atomic_load(&P.ready);
}

uint64_t
idp_presign_hits(void)
{
	return atomic_load(&P.hits);
}

uint64_t
idp_presign_misses(void)
{
	return atomic_load(&P.misses);
}

/*
 * Move one pair out of the pool into *out; false if there is none.  A
 * signer never waits for the lock: the refill thread, at idle priority,
 * may hold it and then not run for as long as the machine is busy, so a
 * lock held elsewhere counts as an empty pool.
 */
static bool
take(struct pair *out)
{
	bool got = false;

	if (!atomic_load(&P.on))
		return false;
	if (atomic_load(&P.ready) > 0 && pthread_mutex_trylock(&P.lock) == 0) {
		if (P.running && !P.stopping && P.n > 0) {
			*out = P.pairs[--P.n];
			P.pairs[P.n] = (struct pair){NULL, NULL};
			atomic_store(&P.ready, P.n);
			got = true;
			/* The thread waits only on a full pool. */
			if (P.n + 1 == P.cap)
				pthread_cond_signal(&P.room);
		}
		pthread_mutex_unlock(&P.lock);
	}
	atomic_fetch_add(got ? &P.hits : &P.misses, 1);
	return got;
}

struct idp_presign_key *
idp_presign_key_new(const EVP_PKEY *pkey)
{
	struct idp_presign_key *k;
	EC_KEY *ec;
	const EC_GROUP *g;

	/* A copy in the legacy form, made once per key; pkey is not changed. */
	ec = EVP_PKEY_get1_EC_KEY((EVP_PKEY *)pkey);
	if (ec == NULL) {
		ERR_clear_error();
		return NULL;
	}
	g = EC_KEY_get0_group(ec);
	if (g == NULL || EC_GROUP_get_curve_name(g) != NID_X9_62_prime256v1 ||
	    EC_KEY_get0_private_key(ec) == NULL) {
		EC_KEY_free(ec);
		return NULL;
	}
	k = idp_xmalloc(sizeof(*k));
	k->ec = ec;
	return k;
}

void
idp_presign_key_free(struct idp_presign_key *k)
{
	if (k == NULL)
		return;
	EC_KEY_free(k->ec); /* clears the private scalar */
	free(k);
}

int
idp_presign_sign(const struct idp_presign_key *k, const unsigned char digest[32],
                 unsigned char sig[64])
{
	struct pair p;
	ECDSA_SIG *s;
	const BIGNUM *r, *sv;
	int rc = IDP_EINTERNAL;

	if (!take(&p))
		return IDP_EWOULDBLOCK;
	s = ECDSA_do_sign_ex(digest, 32, p.kinv, p.r, k->ec);
	if (s != NULL) {
		ECDSA_SIG_get0(s, &r, &sv);
		if (BN_bn2binpad(r, sig, 32) == 32 && BN_bn2binpad(sv, sig + 32, 32) == 32)
			rc = IDP_OK;
		ECDSA_SIG_free(s);
	}
	ERR_clear_error();
	pair_wipe(&p);
	return rc;
}
