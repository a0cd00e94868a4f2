/*
 * keys.c - the key manager (see keys.h): the rotation rules, the snapshot
 * readers share, and the changes made under the cluster-wide lock.
 *
 * Locks, in the order they may be taken:
 *   keys.reload_lock  one reload at a time in this process, so the newest
 *                     read is the one installed;
 *   keys.lock         guards the current snapshot pointer; held only to swap
 *                     it or to take a reference;
 *   keys.policy_lock  guards the policy and the JWKS max-age;
 *   keys.kid_lock     guards the state of keys_reload_for_kid (never held
 *                     across a read; taken after reload_lock by reload_on).
 * A change (keys_change) holds none of them during its transaction: the
 * PostgreSQL advisory lock serializes changes across every instance.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "idpd/audit_writer.h"
#include "idpd/b64.h"
#include "idpd/clock.h"
#include "idpd/kek.h"
#include "idpd/keys.h"
#include "idpd/log.h"
#include "idpd/store.h"
#include "keys_int.h"

/* How often the keys are read while the notifications are lost. */
#define KEYS_LOST_POLL_MS 5000

struct keys {
	struct store *store;
	const struct idp_clock *clock;
	struct idp_kek *kek;
	struct idp_kek *old_kek; /* the KEK being replaced ($IDPD_KEK_OLD), or NULL */
	char kek_id[21];
	char kek_source[192];

	pthread_mutex_t lock; /* keys.lock */
	struct keys_snapshot *current;

	pthread_mutex_t reload_lock; /* keys.reload_lock */

	pthread_mutex_t policy_lock; /* keys.policy_lock */
	struct keys_policy policy;
	int64_t jwks_max_age_ms;

	/*
	 * Set from subscription or the listener's loss until a reload that
	 * began while it was connected succeeds: keys published elsewhere
	 * meanwhile may be missing.  epoch counts the listener's losses and
	 * connections, so a reload that straddles one does not count.  A
	 * failed catch-up is retried by the refresher thread.
	 */
	_Atomic bool may_lack;
	_Atomic bool listening;
	_Atomic uint64_t epoch;
	pthread_mutex_t retry_lock; /* keys.retry_lock: the three below */
	pthread_cond_t retry_wake;
	bool retry_due, retry_stop;
	pthread_t retry_thread;
	bool has_retry; /* main thread only */

	/*
	 * keys.kid_lock guards what keys_reload_for_kid shares: a caller that
	 * finds a read for an unknown kid in flight waits on kid_done for it
	 * and takes its result; within KEYS_KID_RELOAD_MS of the end of the
	 * last one, its result stands.  No one holds the lock during a read.
	 * Such a result is told to a caller that came after the read began, so
	 * the wall-clock start of each read is kept to weigh the token's iat
	 * against (keys_kid_unknown_answer).
	 */
	pthread_mutex_t kid_lock;
	pthread_cond_t kid_done;
	bool kid_in_flight;
	uint64_t kid_gen;      /* reads finished */
	int64_t kid_reload_ms; /* CLOCK_MONOTONIC ms the last such read ended, 0: none yet */
	int64_t kid_began_ms;  /* wall-clock ms the last such read began */
	int64_t kid_flight_ms; /* wall-clock ms the read in flight began */
	int kid_reload_rc;     /* its result; IDP_OK again once any reload succeeds */
};

/* The process's manager (keys_start); written on the main thread before workers start. */
static struct keys *process_keys;

/* ---- names ---- */

static const char *const state_names[] = {"next", "active", "retiring", "retired"};

const char *
keys_state_name(enum keys_state s)
{
	return (unsigned)s < IDP_ARRAY_LEN(state_names) ? state_names[s] : NULL;
}

int
keys_state_parse(const char *s)
{
	for (size_t i = 0; s != NULL && i < IDP_ARRAY_LEN(state_names); i++)
		if (strcmp(s, state_names[i]) == 0)
			return (int)i;
	return -1;
}

const char *
keys_trigger_name(enum keys_trigger t)
{
	switch (t) {
	case KEYS_TRIGGER_START:
		return "start";
	case KEYS_TRIGGER_SCHEDULE:
		return "schedule";
	case KEYS_TRIGGER_DEMAND:
		return "demand";
	case KEYS_TRIGGER_FORCE:
		return "force";
	case KEYS_TRIGGER_COMPROMISE:
		return "compromise";
	}
	return "unknown";
}

/* ---- the rotation rules ---- */

static void
plan_retire(struct keys_plan *plan, size_t i)
{
	plan->retire[plan->n_retire++] = i;
}

bool
keys_plan_empty(const struct keys_plan *plan)
{
	return plan->n_retire == 0 && plan->demote < 0 && plan->promote < 0 &&
	       !plan->generate_active && !plan->generate_next;
}

int
keys_plan_make(const struct keys_info *live, size_t n, int64_t now_ms,
               const struct keys_policy *pol, enum keys_trigger trigger, struct keys_plan *plan,
               struct idp_diag *diag)
{
	int active = -1, next = -1;
	bool next_usable, next_ready, active_expired, rotate;
	int64_t earliest_retire = INT64_MAX;
	size_t after;

	memset(plan, 0, sizeof(*plan));
	plan->demote = plan->promote = -1;
	plan->why = "none";
	if (n > KEYS_MAX_LIVE) {
		idp_diag_add(diag, "%zu signing keys are live; at most %d can be", n,
		             KEYS_MAX_LIVE);
		return IDP_EINTERNAL;
	}
	for (size_t i = 0; i < n; i++) {
		switch (live[i].state) {
		case KEYS_NEXT:
		case KEYS_ACTIVE: {
			int *slot = live[i].state == KEYS_NEXT ? &next : &active;

			if (*slot >= 0) {
				idp_diag_add(diag, "two %s signing keys: %s and %s",
				             keys_state_name(live[i].state), live[*slot].kid,
				             live[i].kid);
				return IDP_EINTERNAL;
			}
			*slot = (int)i;
			break;
		}
		case KEYS_RETIRING:
			if (now_ms >= live[i].retire_after_ms)
				plan_retire(plan, i);
			else if (live[i].retire_after_ms < earliest_retire)
				earliest_retire = live[i].retire_after_ms;
			break;
		default:
			idp_diag_add(diag, "signing key %s is %s but was read as live", live[i].kid,
			             keys_state_name(live[i].state) ? keys_state_name(live[i].state)
			                                            : "in an unknown state");
			return IDP_EINTERNAL;
		}
	}

	/* A next key past its not-after never signed anything: retire it now. */
	next_usable = next >= 0 && now_ms < live[next].not_after_ms;
	if (next >= 0 && !next_usable)
		plan_retire(plan, (size_t)next);
	active_expired = active >= 0 && now_ms >= live[active].not_after_ms;
	/* Published long enough for every verifier's cached JWKS to hold it. */
	next_ready = next_usable && now_ms - live[next].created_ms >= pol->min_published_ms;

	switch (trigger) {
	case KEYS_TRIGGER_DEMAND:
		/* A key that cannot sign is replaced at once, ready or not. */
		if (!next_ready && active >= 0 && !active_expired) {
			char when[32];
			int64_t age;

			if (!next_usable) {
				idp_diag_add(
				    diag,
				    "no next key that can still sign is published; the cleanup "
				    "job or a restart makes one (or force the rotation)");
				return IDP_EPRECOND;
			}
			/* Ages come from the instances' clocks: a key made by a host whose
			 * clock runs ahead looks younger, never negative. */
			age = now_ms > live[next].created_ms ? now_ms - live[next].created_ms : 0;
			idp_time_format(now_ms + pol->min_published_ms - age, when);
			idp_diag_add(diag,
			             "the next key %s has been published for %llds, less than "
			             "keys.jwks_max_age (%llds): verifiers that cached the JWKS "
			             "before it would refuse its tokens; rotate at %s or later, or "
			             "force the rotation",
			             live[next].kid, (long long)(age / 1000),
			             (long long)(pol->min_published_ms / 1000), when);
			return IDP_EPRECOND;
		}
		rotate = true;
		break;
	case KEYS_TRIGGER_FORCE:
	case KEYS_TRIGGER_COMPROMISE:
		rotate = true;
		break;
	case KEYS_TRIGGER_SCHEDULE:
		/* When due, it waits for a next key verifiers already hold. */
		rotate = active < 0 || active_expired ||
		         (pol->rotate_every_ms > 0 && next_ready &&
		          now_ms - live[active].activated_ms >= pol->rotate_every_ms);
		break;
	default:
		rotate = active < 0 || active_expired;
		break;
	}

	if (active < 0)
		plan->why = n == 0 ? "first_key" : "no_active_key";
	else if (active_expired)
		plan->why = "expired";
	else if (trigger == KEYS_TRIGGER_DEMAND)
		plan->why = "on_demand";
	else if (trigger == KEYS_TRIGGER_FORCE)
		plan->why = "forced";
	else if (trigger == KEYS_TRIGGER_COMPROMISE)
		plan->why = "compromise";
	else if (rotate)
		plan->why = "scheduled";
	else if (!next_usable)
		plan->why = "no_next_key";
	else if (plan->n_retire > 0)
		plan->why = "served";

	if (rotate) {
		if (active >= 0) {
			/* The last token it signed was signed before now and before
			 * its not-after; it expires at most retire_after later. */
			int64_t last_signed =
			    now_ms < live[active].not_after_ms ? now_ms : live[active].not_after_ms;
			int64_t until = last_signed + pol->retire_after_ms;

			/* A compromised key is unpublished now: tokens it signed (and
			 * any forged with it) stop verifying. */
			if (until <= now_ms || trigger == KEYS_TRIGGER_COMPROMISE) {
				plan_retire(plan, (size_t)active);
			} else {
				plan->demote = active;
				plan->demote_retire_after_ms = until;
			}
		}
		if (next_usable)
			plan->promote = next;
		else
			plan->generate_active = true;
		plan->generate_next = true;
	} else if (!next_usable) {
		plan->generate_next = true;
	}

	after =
	    n - plan->n_retire + (plan->generate_active ? 1 : 0) + (plan->generate_next ? 1 : 0);
	if (after > KEYS_MAX_LIVE) {
		char when[32];

		idp_time_format(earliest_retire == INT64_MAX ? now_ms : earliest_retire, when);
		idp_diag_add(diag,
		             "%zu signing keys are still published; rotating now would pass the "
		             "limit of %d (the oldest retiring key may retire at %s)",
		             n - plan->n_retire, KEYS_MAX_LIVE, when);
		return IDP_ECONFLICT;
	}
	return IDP_OK;
}

/* ---- rows ---- */

void
keys_rows_free(struct keys_row *rows, size_t n)
{
	for (size_t i = 0; rows != NULL && i < n; i++) {
		free(rows[i].public_jwk);
		free(rows[i].sealed);
	}
	free(rows);
}

/* The public key a row publishes, checked against the row's kid. */
static int
row_public_key(const struct keys_row *row, struct idp_jws_key **out, struct idp_diag *diag)
{
	json_error_t jerr;
	json_t *jwk;
	int rc;

	*out = NULL;
	jwk = json_loads(row->public_jwk != NULL ? row->public_jwk : "", JSON_REJECT_DUPLICATES,
	                 &jerr);
	if (jwk == NULL) {
		idp_diag_add(diag, "signing key %s: the stored public JWK is not JSON",
		             row->info.kid);
		return IDP_EINTERNAL;
	}
	rc = idp_jws_key_from_jwk(jwk, out, diag);
	json_decref(jwk);
	if (rc != IDP_OK) {
		idp_diag_add(diag, "signing key %s: the stored public JWK is not a usable key",
		             row->info.kid);
		return IDP_EINTERNAL;
	}
	if (strcmp(idp_jws_key_kid(*out), row->info.kid) != 0 ||
	    idp_jws_key_alg(*out) != IDP_JWS_ALG_ES256) {
		idp_diag_add(diag, "signing key %s: the stored public JWK names another key",
		             row->info.kid);
		idp_jws_key_unref(*out);
		*out = NULL;
		return IDP_EINTERNAL;
	}
	return IDP_OK;
}

/*
 * Open a row's private half and check that it is the key the row publishes,
 * so a public JWK swapped behind idpd's back cannot make it sign with a key
 * nobody can verify (or the reverse).
 */
static int
row_private_key(const struct keys_row *row, const struct idp_jws_key *pub,
                const struct idp_kek *kek, struct idp_jws_key **out, struct idp_diag *diag)
{
	char a[44], b[44];
	int rc;

	*out = NULL;
	if (kek == NULL) {
		idp_diag_add(diag, "signing key %s: no key-encryption key to open it with",
		             row->info.kid);
		return IDP_EFORBIDDEN;
	}
	if (row->sealed == NULL) {
		idp_diag_add(diag, "signing key %s has no stored private key", row->info.kid);
		return IDP_EFORBIDDEN;
	}
	rc = idp_kek_open_key(kek, row->info.kid, row->sealed, row->sealed_len, out, diag);
	if (rc != IDP_OK)
		return IDP_EFORBIDDEN;
	idp_jws_key_thumbprint(*out, a);
	idp_jws_key_thumbprint(pub, b);
	if (strcmp(a, b) != 0) {
		idp_diag_add(diag,
		             "signing key %s: the stored private key does not match its public "
		             "JWK; the row was altered",
		             row->info.kid);
		idp_jws_key_unref(*out);
		*out = NULL;
		return IDP_EFORBIDDEN;
	}
	return IDP_OK;
}

int
keys_check_kek(const struct keys_row *rows, size_t n, const struct idp_kek *kek,
               const char *kek_source, struct idp_diag *diag)
{
	char mine[21];

	idp_kek_id(kek, mine);
	for (size_t i = 0; i < n; i++) {
		const struct keys_row *row = &rows[i];
		struct idp_jws_key *pub = NULL, *priv = NULL;
		int rc;

		if (row->info.state != KEYS_NEXT && row->info.state != KEYS_ACTIVE)
			continue;
		if (strcmp(row->info.kek_id, mine) != 0) {
			idp_diag_add(
			    diag,
			    "the %s signing key %s was sealed with key-encryption key %s, "
			    "but the KEK from %s is %s: start idpd with the KEK that sealed "
			    "its keys (nothing was changed)",
			    keys_state_name(row->info.state), row->info.kid, row->info.kek_id,
			    kek_source, mine);
			return IDP_EFORBIDDEN;
		}
		rc = row_public_key(row, &pub, diag);
		if (rc == IDP_OK)
			rc = row_private_key(row, pub, kek, &priv, diag);
		idp_jws_key_unref(pub);
		idp_jws_key_unref(priv);
		if (rc != IDP_OK) {
			idp_diag_add(
			    diag,
			    "the %s signing key %s does not open with the KEK from %s (%s) "
			    "although its id matches: the stored key is damaged or was "
			    "altered (nothing was changed)",
			    keys_state_name(row->info.state), row->info.kid, kek_source, mine);
			return IDP_EFORBIDDEN;
		}
	}
	return IDP_OK;
}

/* ---- snapshots ---- */

struct keys_snapshot *
keys_snapshot_ref(struct keys_snapshot *s)
{
	if (s != NULL)
		atomic_fetch_add_explicit(&s->refs, 1, memory_order_relaxed);
	return s;
}

void
keys_snapshot_unref(struct keys_snapshot *s)
{
	if (s == NULL || atomic_fetch_sub_explicit(&s->refs, 1, memory_order_acq_rel) != 1)
		return;
	idp_jws_key_unref(s->signing);
	idp_jws_keyset_unref(s->verify);
	free(s->jwks);
	free(s->info);
	free(s->held);
	free(s);
}

/* Whether two keys are the same key (their RFC 7638 thumbprints agree). */
static bool
same_key(const struct idp_jws_key *a, const struct idp_jws_key *b)
{
	char ta[44], tb[44];

	idp_jws_key_thumbprint(a, ta);
	idp_jws_key_thumbprint(b, tb);
	return strcmp(ta, tb) == 0;
}

/* Why a row was left out of a snapshot, or ROW_TRUSTED. */
enum row_verdict {
	ROW_TRUSTED,
	ROW_ALTERED,   /* it does not open, or its private half is not its public key */
	ROW_UNVOUCHED, /* sealed under a KEK this instance does not hold, and new to it */
};

/*
 * Whether the key row publishes is one this instance verified before: prev
 * trusted the same kid with the same public key.
 */
static bool
known_before(const struct keys_row *row, const struct idp_jws_key *pub,
             const struct keys_snapshot *prev)
{
	const struct idp_jws_key *had =
	    prev != NULL ? idp_jws_keyset_find(prev->verify, row->info.kid) : NULL;

	return had != NULL && same_key(had, pub);
}

/*
 * Whether a published row holds up: a row sealed under a KEK this instance
 * holds (its own, or the old one of a KEK change) must open, and its
 * private half must be the key its public JWK names.  Without that check a
 * public JWK swapped in the database under a known kid would be trusted by
 * every instance, and tokens signed with the swapper's key would verify.
 *
 * A row sealed under any other KEK cannot be checked here.  Anyone who can
 * write the table can write such a row, with a public key of their own and
 * junk for the sealed half, so it is trusted only as far as this instance
 * already vouched for it: the same kid with the same public key was in prev.
 * That keeps the keys of a running instance published and verifying after
 * `idpd keys reseal` moves them to a KEK it does not have yet, and leaves out
 * any key that is new to it, or changed, under a KEK it does not hold (an
 * instance that starts trusts no such row at all).
 *
 * A row prev found to hold up, byte for byte the same, is not opened again:
 * every reload would otherwise decrypt every key, and OpenSSL frees the
 * private keys it parses without wiping them.  Rows that held up are noted
 * in s.
 */
static enum row_verdict
row_holds_up(const struct keys_row *row, const struct idp_jws_key *pub, const struct idp_kek *kek,
             const struct idp_kek *old_kek, const struct keys_snapshot *prev,
             struct keys_snapshot *s, struct idp_diag *diag)
{
	const struct idp_kek *opener = NULL;
	struct idp_jws_key *priv = NULL;
	uint8_t fp[IDP_SHA256_LEN];
	char id[21];
	bool ok = false;

	for (int i = 0; i < 2 && opener == NULL; i++) {
		const struct idp_kek *k = i == 0 ? kek : old_kek;

		if (k == NULL)
			continue;
		idp_kek_id(k, id);
		if (strcmp(row->info.kek_id, id) == 0)
			opener = k;
	}
	if (opener == NULL)
		return known_before(row, pub, prev) ? ROW_TRUSTED : ROW_UNVOUCHED;
	if (row->sealed == NULL || idp_sha256(row->public_jwk, strlen(row->public_jwk), row->sealed,
	                                      row->sealed_len, fp) != IDP_OK) {
		ok = row_private_key(row, pub, opener, &priv, diag) == IDP_OK;
		idp_jws_key_unref(priv);
		return ok ? ROW_TRUSTED : ROW_ALTERED;
	}
	for (size_t i = 0; prev != NULL && i < prev->n_held && !ok; i++)
		ok = memcmp(prev->held[i], fp, sizeof(fp)) == 0;
	if (!ok) {
		ok = row_private_key(row, pub, opener, &priv, diag) == IDP_OK;
		idp_jws_key_unref(priv);
	}
	if (ok)
		memcpy(s->held[s->n_held++], fp, sizeof(fp));
	return ok ? ROW_TRUSTED : ROW_ALTERED;
}

/* d's lines joined with "; ", for one log line. */
static void
one_line(const struct idp_diag *d, char *out, size_t len)
{
	const char *p = idp_diag_str(d);
	size_t n = 0;

	for (; *p != '\0' && n + 3 < len; p++) {
		if (*p == '\n') {
			out[n++] = ';';
			out[n++] = ' ';
		} else {
			out[n++] = *p;
		}
	}
	out[n] = '\0';
}

int
keys_snapshot_build(const struct keys_row *rows, size_t n, const struct idp_kek *kek,
                    const struct idp_kek *old_kek, const struct keys_snapshot *prev,
                    struct keys_snapshot **out, struct idp_diag *diag,
                    struct idp_diag *signing_diag)
{
	static const enum keys_state order[] = {KEYS_ACTIVE, KEYS_NEXT, KEYS_RETIRING};
	struct idp_diag scratch;
	struct idp_jws_key **pubs;
	struct keys_snapshot *s;
	size_t np = 0;
	json_t *jwks;
	int rc = IDP_OK;

	*out = NULL;
	if (signing_diag == NULL) {
		idp_diag_init(&scratch);
		signing_diag = &scratch;
	}
	pubs = idp_xcalloc(n ? n : 1, sizeof(*pubs));
	s = idp_xcalloc(1, sizeof(*s));
	atomic_init(&s->refs, 1);
	atomic_init(&s->warned_expired, false);
	s->info = idp_xcalloc(n ? n : 1, sizeof(*s->info));
	s->held = idp_xcalloc(n ? n : 1, sizeof(*s->held));
	for (size_t o = 0; o < IDP_ARRAY_LEN(order); o++) {
		for (size_t i = 0; i < n; i++) {
			const struct keys_row *row = &rows[i];
			struct idp_jws_key *pub;
			struct idp_diag bad;

			if (row->info.state != order[o])
				continue;
			/*
			 * A row idpd cannot have written is left out, not fatal:
			 * failing the whole snapshot would keep the previous one,
			 * and with it a key retired meanwhile (compromised, say)
			 * trusted and signing on every instance.
			 */
			idp_diag_init(&bad);
			if (row_public_key(row, &pub, &bad) != IDP_OK) {
				char why[IDP_DIAG_MAX];

				one_line(&bad, why, sizeof(why));
				log_error("keys: %s; it is neither published nor trusted", why);
				if (row->info.state == KEYS_ACTIVE)
					idp_diag_add(signing_diag, "%s", why);
				continue;
			}
			switch (row_holds_up(row, pub, kek, old_kek, prev, s, signing_diag)) {
			case ROW_TRUSTED:
				break;
			case ROW_ALTERED:
				/* Left out, not fatal: the other keys stay usable. */
				log_error("keys: signing key %s does not match its sealed private "
				          "key (the row was altered); it is neither published nor "
				          "trusted",
				          row->info.kid);
				idp_jws_key_unref(pub);
				continue;
			case ROW_UNVOUCHED:
				log_error(
				    "keys: signing key %s is sealed under %s, a key-encryption "
				    "key this instance does not hold, and is new to it (or its "
				    "public key changed); it is neither published nor trusted "
				    "until this instance runs with that KEK",
				    row->info.kid, row->info.kek_id);
				if (row->info.state == KEYS_ACTIVE)
					idp_diag_add(
					    signing_diag,
					    "the active signing key %s is sealed under %s, "
					    "which this instance does not hold",
					    row->info.kid, row->info.kek_id);
				idp_jws_key_unref(pub);
				continue;
			}
			pubs[np++] = pub;
			s->info[s->n_info++] = row->info;
			if (row->info.state != KEYS_ACTIVE)
				continue;
			s->signing_not_after_ms = row->info.not_after_ms;
			/* The loaded key again, if the row still publishes it. */
			if (prev != NULL && prev->signing != NULL &&
			    strcmp(idp_jws_key_kid(prev->signing), row->info.kid) == 0 &&
			    same_key(prev->signing, pub))
				s->signing = idp_jws_key_ref(prev->signing);
			else if (row_private_key(row, pub, kek, &s->signing, signing_diag) !=
			         IDP_OK)
				s->signing = NULL;
		}
	}
	rc = idp_jws_keyset_new(pubs, np, &s->verify, diag);
	if (rc != IDP_OK) {
		rc = IDP_EINTERNAL;
		goto done;
	}
	jwks = idp_jws_keyset_to_jwks(s->verify);
	s->jwks = json_dumps(jwks, JSON_COMPACT);
	json_decref(jwks);
	if (s->jwks == NULL) {
		idp_diag_add(diag, "cannot render the JWKS");
		rc = IDP_EINTERNAL;
		goto done;
	}
	s->jwks_len = strlen(s->jwks);
done:
	for (size_t i = 0; i < np; i++)
		idp_jws_key_unref(pubs[i]);
	free(pubs);
	if (rc != IDP_OK) {
		keys_snapshot_unref(s);
		return rc;
	}
	*out = s;
	return IDP_OK;
}

struct keys_snapshot *
keys_current(struct keys *km)
{
	struct keys_snapshot *s;

	pthread_mutex_lock(&km->lock);
	s = keys_snapshot_ref(km->current);
	pthread_mutex_unlock(&km->lock);
	return s;
}

void
keys_install(struct keys *km, struct keys_snapshot *s)
{
	struct keys_snapshot *old;

	pthread_mutex_lock(&km->lock);
	old = km->current;
	km->current = s;
	pthread_mutex_unlock(&km->lock);
	keys_snapshot_unref(old);
}

/* ---- the manager ---- */

static int
policy_check(const struct keys_policy *pol, int64_t jwks_max_age_ms, struct idp_diag *diag)
{
	if (pol->rotate_every_ms < 0 || pol->retire_after_ms <= 0 || pol->max_age_ms <= 0 ||
	    jwks_max_age_ms < 0) {
		idp_diag_add(diag, "keys: rotate_every must be >= 0, retire_after and max_age > 0, "
		                   "jwks_max_age >= 0");
		return IDP_EINVAL;
	}
	if (pol->rotate_every_ms > 0 && pol->max_age_ms < 2 * pol->rotate_every_ms)
		log_warn("keys: keys.max_age is less than twice keys.rotate_every, so a key "
		         "made as next reaches its not-after before its scheduled rotation "
		         "ends; it is then rotated as expired");
	/* A next key must be published jwks_max_age before it signs. */
	if (pol->max_age_ms < 2 * jwks_max_age_ms)
		log_warn("keys: keys.max_age is less than twice keys.jwks_max_age, so a next key "
		         "may reach its not-after before it has been published long enough to "
		         "sign; rotations are then refused unless forced");
	return IDP_OK;
}

int
keys_open(const struct keys_opts *o, struct idp_kek *kek, struct keys **out, struct idp_diag *diag)
{
	struct keys *km;

	*out = NULL;
	if (o->store == NULL || o->clock == NULL || kek == NULL) {
		idp_diag_add(diag, "keys: a store, a clock and a KEK are required");
		idp_kek_free(kek);
		return IDP_EINVAL;
	}
	if (policy_check(&o->policy, o->jwks_max_age_ms, diag) != IDP_OK) {
		idp_kek_free(kek);
		return IDP_EINVAL;
	}
	km = idp_xcalloc(1, sizeof(*km));
	km->store = o->store;
	km->clock = o->clock;
	km->kek = kek;
	idp_kek_id(kek, km->kek_id);
	snprintf(km->kek_source, sizeof(km->kek_source), "%s",
	         o->kek_source != NULL ? o->kek_source : "the configuration");
	km->policy = o->policy;
	km->jwks_max_age_ms = o->jwks_max_age_ms;
	pthread_mutex_init(&km->lock, NULL);
	pthread_mutex_init(&km->reload_lock, NULL);
	pthread_mutex_init(&km->kid_lock, NULL);
	pthread_cond_init(&km->kid_done, NULL);
	pthread_mutex_init(&km->policy_lock, NULL);
	pthread_mutex_init(&km->retry_lock, NULL);
	{
		pthread_condattr_t ca;

		pthread_condattr_init(&ca);
		pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
		pthread_cond_init(&km->retry_wake, &ca);
		pthread_condattr_destroy(&ca);
	}
	*out = km;
	return IDP_OK;
}

void
keys_free(struct keys *km)
{
	if (km == NULL)
		return;
	if (process_keys == km)
		process_keys = NULL;
	if (km->has_retry) {
		pthread_mutex_lock(&km->retry_lock);
		km->retry_stop = true;
		pthread_cond_signal(&km->retry_wake);
		pthread_mutex_unlock(&km->retry_lock);
		pthread_join(km->retry_thread, NULL);
	}
	pthread_cond_destroy(&km->retry_wake);
	pthread_mutex_destroy(&km->retry_lock);
	keys_snapshot_unref(km->current);
	idp_kek_free(km->kek);
	idp_kek_free(km->old_kek);
	pthread_mutex_destroy(&km->lock);
	pthread_mutex_destroy(&km->reload_lock);
	pthread_mutex_destroy(&km->kid_lock);
	pthread_cond_destroy(&km->kid_done);
	pthread_mutex_destroy(&km->policy_lock);
	free(km);
}

void
keys_hold_old_kek(struct keys *km, struct idp_kek *old)
{
	idp_kek_free(km->old_kek);
	km->old_kek = old;
}

void
keys_set_policy(struct keys *km, const struct keys_policy *pol, int64_t jwks_max_age_ms)
{
	struct idp_diag d;

	idp_diag_init(&d);
	if (policy_check(pol, jwks_max_age_ms, &d) != IDP_OK) {
		log_error("%s; keeping the key policy in force", idp_diag_str(&d));
		return;
	}
	pthread_mutex_lock(&km->policy_lock);
	km->policy = *pol;
	km->jwks_max_age_ms = jwks_max_age_ms;
	pthread_mutex_unlock(&km->policy_lock);
}

void
keys_get_policy(struct keys *km, struct keys_policy *pol)
{
	pthread_mutex_lock(&km->policy_lock);
	*pol = km->policy;
	pol->min_published_ms = km->jwks_max_age_ms;
	pthread_mutex_unlock(&km->policy_lock);
}

int64_t
keys_jwks_max_age_ms(struct keys *km)
{
	int64_t v;

	pthread_mutex_lock(&km->policy_lock);
	v = km->jwks_max_age_ms;
	pthread_mutex_unlock(&km->policy_lock);
	return v;
}

int64_t
keys_max_token_lifetime_ms(struct keys *km)
{
	struct keys_policy pol;

	keys_get_policy(km, &pol);
	return pol.retire_after_ms;
}

const char *
keys_kek_id(const struct keys *km)
{
	return km->kek_id;
}

struct store *
keys_store(const struct keys *km)
{
	return km->store;
}

void
keys_set_process(struct keys *km)
{
	process_keys = km;
}

struct keys *
keys_process(void)
{
	return process_keys;
}

/* Read the live rows on c and install a snapshot built from them. */
static int
reload_on(struct keys *km, struct store_conn *c, struct idp_diag *diag)
{
	struct keys_snapshot *prev, *snap = NULL;
	struct keys_row *rows = NULL;
	struct idp_diag sdiag;
	size_t n = 0;
	int rc;

	pthread_mutex_lock(&km->reload_lock);
	rc = keys_db_read_live(c, &rows, &n);
	if (rc != IDP_OK) {
		idp_diag_add(diag, "keys: cannot read the signing keys (%s)", idp_err_name(rc));
		pthread_mutex_unlock(&km->reload_lock);
		return rc;
	}
	prev = keys_current(km);
	idp_diag_init(&sdiag);
	rc = keys_snapshot_build(rows, n, km->kek, km->old_kek, prev, &snap, diag, &sdiag);
	if (rc == IDP_OK) {
		const char *was =
		    prev != NULL && prev->signing ? idp_jws_key_kid(prev->signing) : "";
		const char *now = snap->signing != NULL ? idp_jws_key_kid(snap->signing) : "";

		if (snap->signing == NULL && n > 0)
			log_error("keys: no usable signing key: %s%s",
			          sdiag.len ? idp_diag_str(&sdiag) : "no key is active",
			          "; this instance cannot sign until it is fixed");
		else if (strcmp(was, now) != 0)
			log_info("keys: signing with %s%s%s; %zu key(s) published", now,
			         was[0] ? ", was " : "", was, snap->n_info);
		keys_install(km, snap);
		/* The keys are current: a failed kid read's 503 no longer holds. */
		pthread_mutex_lock(&km->kid_lock);
		km->kid_reload_rc = IDP_OK;
		pthread_mutex_unlock(&km->kid_lock);
	}
	keys_snapshot_unref(prev);
	keys_rows_free(rows, n);
	pthread_mutex_unlock(&km->reload_lock);
	return rc;
}

int
keys_reload(struct keys *km, struct idp_diag *diag)
{
	struct store_conn *c;
	int rc;

	if (store_acquire(km->store, &c) != IDP_OK) {
		idp_diag_add(diag, "keys: PostgreSQL is unavailable");
		return IDP_EUNAVAIL;
	}
	rc = reload_on(km, c, diag);
	store_release(km->store, c);
	return rc;
}

/*
 * A full reload; if it began and ended within one connection of the
 * listener, the keys are as current as the notifications will keep them,
 * and may_lack is cleared.  IDP_OK when the reload succeeded.
 */
static int
catch_up(struct keys *km, struct idp_diag *diag)
{
	uint64_t e0 = atomic_load(&km->epoch);
	int rc;

	if (!atomic_load(&km->listening))
		return keys_reload(km, diag);
	rc = keys_reload(km, diag);
	if (rc == IDP_OK && atomic_load(&km->listening) && atomic_load(&km->epoch) == e0)
		atomic_store(&km->may_lack, false);
	return rc;
}

/* Ask the refresher to retry until a catch-up succeeds. */
static void
retry_later(struct keys *km)
{
	pthread_mutex_lock(&km->retry_lock);
	km->retry_due = true;
	pthread_cond_signal(&km->retry_wake);
	pthread_mutex_unlock(&km->retry_lock);
}

/*
 * Catch up now; if that fails, a key may be missing (503 for unknown key
 * ids) until the refresher's retry succeeds.
 */
static void
catch_up_or_retry(struct keys *km)
{
	struct idp_diag d;

	idp_diag_init(&d);
	if (catch_up(km, &d) == IDP_OK)
		return;
	atomic_store(&km->may_lack, true);
	log_warn("%s; keeping the keys loaded before and retrying; meanwhile unknown key ids "
	         "answer 503",
	         idp_diag_str(&d));
	retry_later(km);
}

static void
on_notify(const char *channel, const char *payload, void *ctx)
{
	(void)channel;
	(void)payload;
	catch_up_or_retry(ctx);
}

/* After the listener (re)connects: the reload catches up on what it missed. */
static void
on_resync(void *ctx)
{
	struct keys *km = ctx;

	atomic_store(&km->listening, true);
	atomic_fetch_add(&km->epoch, 1);
	catch_up_or_retry(km);
}

static void
on_lost(void *ctx)
{
	struct keys *km = ctx;

	atomic_store(&km->listening, false);
	atomic_fetch_add(&km->epoch, 1);
	if (!atomic_exchange(&km->may_lack, true))
		log_warn(
		    "keys: lost the notifications; until they are back a token signed with a key "
		    "this instance does not know answers 503, and the keys are read again every "
		    "%d s",
		    KEYS_LOST_POLL_MS / 1000);
	retry_later(km);
}

/*
 * The refresher: after a failed catch-up, retry (200 ms, doubling to 5 s)
 * while the listener is connected and the keys may lack one, so an idle
 * instance recovers without waiting for a notification.  While the
 * listener is lost, read the keys every KEYS_LOST_POLL_MS: a rotation or a
 * retirement made elsewhere then reaches this instance's signing within
 * that bound instead of whenever the notifications come back (the pool
 * may well reach PostgreSQL while the listening session cannot).
 */
static void *
retry_main(void *arg)
{
	struct keys *km = arg;
	int64_t wait_ms = 200;
	bool poll_failing = false;

	pthread_mutex_lock(&km->retry_lock);
	while (!km->retry_stop) {
		struct timespec ts;
		struct idp_diag d;

		int64_t this_wait;
		bool lost;

		if (!km->retry_due) {
			pthread_cond_wait(&km->retry_wake, &km->retry_lock);
			wait_ms = 200;
			continue;
		}
		lost = !atomic_load(&km->listening);
		this_wait = lost ? KEYS_LOST_POLL_MS : wait_ms;
		clock_gettime(CLOCK_MONOTONIC, &ts);
		ts.tv_sec += this_wait / 1000;
		ts.tv_nsec += (this_wait % 1000) * 1000000L;
		if (ts.tv_nsec >= 1000000000L) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000L;
		}
		pthread_cond_timedwait(&km->retry_wake, &km->retry_lock, &ts);
		if (km->retry_stop)
			break;
		pthread_mutex_unlock(&km->retry_lock);
		idp_diag_init(&d);
		if (!atomic_load(&km->listening)) {
			/* Said once per failing stretch, not every 5 s. */
			if (keys_reload(km, &d) != IDP_OK) {
				if (!poll_failing)
					log_warn("%s; the keys are read again every %d s",
					         idp_diag_str(&d), KEYS_LOST_POLL_MS / 1000);
				poll_failing = true;
			} else {
				poll_failing = false;
			}
		} else if (atomic_load(&km->may_lack)) {
			(void)catch_up(km, &d);
		}
		pthread_mutex_lock(&km->retry_lock);
		if (atomic_load(&km->listening) && !atomic_load(&km->may_lack))
			km->retry_due = false;
		else if (!lost && wait_ms < 5000)
			wait_ms *= 2;
	}
	pthread_mutex_unlock(&km->retry_lock);
	return NULL;
}

int
keys_subscribe(struct keys *km, struct store_listener *l)
{
	struct store_subscription sub = {.channel = "keys",
	                                 .on_notify = on_notify,
	                                 .on_resync = on_resync,
	                                 .on_lost = on_lost,
	                                 .ctx = km};

	atomic_store(&km->may_lack, true); /* until the first connection's reload */
	if (store_listener_subscribe(l, &sub) != IDP_OK)
		return IDP_EINVAL;
	if (!km->has_retry) {
		if (pthread_create(&km->retry_thread, NULL, retry_main, km) != 0)
			return IDP_EINTERNAL;
		km->has_retry = true;
	}
	/* Until the listener's first connection the keys are polled too: one
	 * that never connects (a pooler without LISTEN) must not leave them
	 * unread for good. */
	retry_later(km);
	return IDP_OK;
}

bool
keys_may_lack_kid(struct keys *km)
{
	return km == NULL || atomic_load(&km->may_lack);
}

static int64_t
monotonic_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Whether the current snapshot's verify set holds kid. */
static bool
kid_loaded(struct keys *km, const char *kid)
{
	struct idp_jws_keyset *set = keys_verify_set(km);
	bool found = set != NULL && idp_jws_keyset_find(set, kid) != NULL;

	idp_jws_keyset_unref(set);
	return found;
}

int
keys_kid_unknown_answer(bool own_read, int64_t read_began_ms, int64_t iat_ms)
{
	if (own_read)
		return IDP_ENOTFOUND;
	if (iat_ms >= 0 && read_began_ms - iat_ms > KEYS_KID_SKEW_MS)
		return IDP_ENOTFOUND;
	return IDP_EUNAVAIL;
}

int
keys_reload_for_kid(struct keys *km, const char *kid, int64_t iat_ms)
{
	struct idp_diag d;
	bool own = false;
	int64_t began;
	int rc;

	if (kid_loaded(km, kid))
		return IDP_OK;
	pthread_mutex_lock(&km->kid_lock);
	if (km->kid_in_flight) {
		/* Someone is reading: its result is ours. */
		uint64_t gen = km->kid_gen;

		while (km->kid_in_flight && km->kid_gen == gen)
			pthread_cond_wait(&km->kid_done, &km->kid_lock);
		rc = km->kid_reload_rc;
	} else if (km->kid_reload_ms != 0 &&
	           monotonic_ms() - km->kid_reload_ms < KEYS_KID_RELOAD_MS) {
		/* Rate-limited: the last read's word stands, a failure included. */
		rc = km->kid_reload_rc;
	} else {
		own = true;
		km->kid_in_flight = true;
		/* Taken before the read waits for a connection or reload_lock:
		 * the read itself begins no earlier, so this errs toward 503. */
		km->kid_flight_ms = idp_now_ms(km->clock);
		pthread_mutex_unlock(&km->kid_lock);
		idp_diag_init(&d);
		rc = keys_reload(km, &d);
		if (rc != IDP_OK)
			log_warn("%s; a token naming the unknown key %s answers 503",
			         idp_diag_str(&d), kid);
		pthread_mutex_lock(&km->kid_lock);
		km->kid_reload_rc = rc;
		/* From the end of the read: a slow one does not open the window
		 * to every caller that waited for it. */
		km->kid_reload_ms = monotonic_ms();
		km->kid_began_ms = km->kid_flight_ms;
		km->kid_in_flight = false;
		km->kid_gen++;
		pthread_cond_broadcast(&km->kid_done);
	}
	/*
	 * The read that answered, or a later one.  A reload made since for
	 * another reason (which resets kid_reload_rc) began after it, as
	 * reload_lock orders them: the snapshot is no older than this start.
	 */
	began = km->kid_began_ms;
	pthread_mutex_unlock(&km->kid_lock);
	if (rc != IDP_OK)
		return IDP_EUNAVAIL;
	if (kid_loaded(km, kid))
		return IDP_OK;
	rc = keys_kid_unknown_answer(own, began, iat_ms);
	if (rc == IDP_EUNAVAIL)
		log_debug("keys: %s is unknown to a read that may predate its token; "
		          "the token answers 503",
		          kid);
	return rc;
}

bool
keys_kid_plausible(const char *kid)
{
	size_t n = 0;

	for (; kid[n] != '\0'; n++)
		if (!(kid[n] >= 'A' && kid[n] <= 'Z') && !(kid[n] >= 'a' && kid[n] <= 'z') &&
		    !(kid[n] >= '0' && kid[n] <= '9') && kid[n] != '-' && kid[n] != '_')
			return false;
	return n == 43;
}

/*
 * The kid in token's protected header, into kid, when it has the shape of
 * one idpd makes; false otherwise.  Only for a token idp_jws_verify has
 * bounded (len) and parsed as far as its kid.
 */
static bool
token_kid_plausible(const char *token, size_t len, char kid[IDP_JWS_MAX_KID + 1])
{
	const char *dot = memchr(token, '.', len);
	unsigned char *text = NULL;
	size_t tlen = 0;
	json_t *hdr = NULL;
	const json_t *v;
	bool ok = false;

	if (dot == NULL ||
	    idp_b64url_decode_alloc(token, (size_t)(dot - token), &text, &tlen) != IDP_OK)
		return false;
	hdr = json_loadb((const char *)text, tlen, JSON_REJECT_DUPLICATES, NULL);
	v = json_object_get(hdr, "kid");
	if (json_is_string(v) && json_string_length(v) <= IDP_JWS_MAX_KID &&
	    keys_kid_plausible(json_string_value(v))) {
		memcpy(kid, json_string_value(v), json_string_length(v) + 1);
		ok = true;
	}
	json_decref(hdr);
	free(text);
	return ok;
}

/*
 * The iat claim in token's payload as ms, not verified, or KEYS_NO_IAT when
 * it has none of a NumericDate's shape (a number from 0 to 9999-12-31).
 * Only for a token idp_jws_verify has bounded (len) and split.
 */
static int64_t
token_iat_ms(const char *token, size_t len)
{
	json_t *claims = idp_jws_peek_claims(token, len);
	int64_t ms = KEYS_NO_IAT;

	if (idp_jwt_numeric_date_ms(claims, "iat", &ms) != 1)
		ms = KEYS_NO_IAT;
	json_decref(claims);
	return ms;
}

int
keys_verify_own(struct keys *km, const char *token, size_t len,
                const struct idp_jws_verify_opts *opts, size_t nopts, bool may_block,
                struct idp_jws_verified *out, size_t *which, enum idp_jws_reason *why)
{
	char kid[IDP_JWS_MAX_KID + 1];
	int rc = IDP_EUNAUTH;

	memset(out, 0, sizeof(*out));
	*why = IDP_JWS_OK;
	if (which != NULL)
		*which = 0;
	for (int attempt = 0;; attempt++) {
		struct idp_jws_keyset *set = km != NULL ? keys_verify_set(km) : NULL;

		if (set == NULL)
			return IDP_EUNAVAIL;
		for (size_t i = 0; i < nopts; i++) {
			rc = idp_jws_verify(set, token, len, &opts[i], out, why);
			if (which != NULL)
				*which = i;
			if (rc == IDP_OK || *why != IDP_JWS_TYP_MISMATCH)
				break;
		}
		idp_jws_keyset_unref(set);
		if (rc == IDP_OK)
			return IDP_OK;
		if (*why != IDP_JWS_KID_UNKNOWN)
			return IDP_EUNAUTH;
		/* Missing notifications, the set may lack a key published
		 * elsewhere at any time: idpd cannot know. */
		if (keys_may_lack_kid(km))
			return IDP_EUNAVAIL;
		/*
		 * Notifications flowing, a kid unknown may still be a key
		 * another instance activated a moment ago, its NOTIFY not yet
		 * handled here: read the keys once (rate-limited) before
		 * calling the token invalid.  A kid of another shape is not one
		 * idpd made: no read for it.
		 */
		if (attempt > 0 || !token_kid_plausible(token, len, kid))
			return IDP_EUNAUTH;
		if (!may_block)
			return IDP_EWOULDBLOCK;
		rc = keys_reload_for_kid(km, kid, token_iat_ms(token, len));
		if (rc == IDP_EUNAVAIL)
			return IDP_EUNAVAIL;
		if (rc != IDP_OK)
			return keys_may_lack_kid(km) ? IDP_EUNAVAIL : IDP_EUNAUTH;
	}
}

/* ---- for the token service ---- */

int
keys_signing_key(struct keys *km, struct idp_jws_key **out, int64_t *not_after_ms)
{
	struct keys_snapshot *s = keys_current(km);
	int rc = IDP_EUNAVAIL;

	*out = NULL;
	if (s == NULL || s->signing == NULL)
		goto done;
	if (idp_now_ms(km->clock) >= s->signing_not_after_ms) {
		if (!atomic_exchange(&s->warned_expired, true))
			log_error(
			    "keys: the active key %s is past its not-after and signs no more; "
			    "rotate (POST /v1/keys/rotate, idpd keys rotate, or the cleanup job)",
			    idp_jws_key_kid(s->signing));
		goto done;
	}
	*out = idp_jws_key_ref(s->signing);
	if (not_after_ms != NULL)
		*not_after_ms = s->signing_not_after_ms;
	rc = IDP_OK;
done:
	keys_snapshot_unref(s);
	return rc;
}

struct idp_jws_keyset *
keys_verify_set(struct keys *km)
{
	struct keys_snapshot *s = keys_current(km);
	struct idp_jws_keyset *set = s != NULL ? idp_jws_keyset_ref(s->verify) : NULL;

	keys_snapshot_unref(s);
	return set;
}

int
keys_jwks(struct keys *km, char **json, size_t *len)
{
	struct keys_snapshot *s = keys_current(km);

	*json = NULL;
	*len = 0;
	if (s == NULL)
		return IDP_EUNAVAIL;
	*json = idp_xstrndup(s->jwks, s->jwks_len);
	*len = s->jwks_len;
	keys_snapshot_unref(s);
	return IDP_OK;
}

/* ---- changes ---- */

/* A key made during a change, before and after it is stored. */
struct new_key {
	struct idp_jws_key *key;
	struct keys_info info;
	char *jwk;
	unsigned char *sealed;
	size_t sealed_len;
};

static void
new_key_cleanup(struct new_key *k)
{
	idp_jws_key_unref(k->key);
	free(k->jwk);
	free(k->sealed);
	memset(k, 0, sizeof(*k));
}

static int
new_key_make(struct keys *km, enum keys_state state, int64_t now_ms, const struct keys_policy *pol,
             struct new_key *k, struct idp_diag *diag)
{
	json_t *jwk;
	int rc;

	memset(k, 0, sizeof(*k));
	rc = idp_jws_key_generate(NULL, &k->key, diag);
	if (rc != IDP_OK)
		return rc;
	rc = idp_kek_seal_key(km->kek, k->key, &k->sealed, &k->sealed_len);
	if (rc != IDP_OK) {
		idp_diag_add(diag, "keys: cannot seal a new key (%s)", idp_err_name(rc));
		return rc;
	}
	jwk = idp_jws_key_public_jwk(k->key);
	k->jwk = jwk != NULL ? json_dumps(jwk, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
	json_decref(jwk);
	if (k->jwk == NULL) {
		idp_diag_add(diag, "keys: cannot render a new key's JWK");
		return IDP_EINTERNAL;
	}
	snprintf(k->info.kid, sizeof(k->info.kid), "%s", idp_jws_key_kid(k->key));
	snprintf(k->info.kek_id, sizeof(k->info.kek_id), "%s", km->kek_id);
	k->info.state = state;
	k->info.created_ms = now_ms;
	k->info.activated_ms = state == KEYS_ACTIVE ? now_ms : 0;
	k->info.not_after_ms = now_ms + pol->max_age_ms;
	return IDP_OK;
}

static void
put_time(json_t *o, const char *key, int64_t ms)
{
	char t[32];

	idp_time_format(ms, t);
	json_object_set_new(o, key, json_string(t));
}

/* Emit one key.* event; takes detail.  Returns 0, or 1 if it could not be written. */
static unsigned
emit(enum audit_type type, enum audit_outcome outcome, const struct keys_origin *who,
     json_t *detail)
{
	struct audit_event *ev = audit_event_new(type, AUDIT_TIME_UNSET);
	int rc;

	if (ev == NULL) {
		json_decref(detail);
		return 1;
	}
	audit_event_set_outcome(ev, outcome);
	if (who->reason != NULL && who->reason[0] != '\0')
		json_object_set_new(detail, "reason", json_string(who->reason));
	if (audit_event_set_actor(ev, who->actor_kind, who->actor) != IDP_OK ||
	    (who->request_id != NULL &&
	     audit_event_set(ev, AUDIT_F_REQUEST_ID, who->request_id) != IDP_OK) ||
	    (who->source_address != NULL && who->source_address[0] != '\0' &&
	     audit_event_set(ev, AUDIT_F_SOURCE_ADDRESS, who->source_address) != IDP_OK) ||
	    audit_event_set_detail(ev, detail) != IDP_OK) {
		log_error("keys: cannot build the %s audit event", audit_type_name(type));
		json_decref(detail);
		audit_event_free(ev);
		return 1;
	}
	json_decref(detail);
	rc = audit_emit(ev);
	if (rc != IDP_OK) {
		log_error("keys: the %s audit event could not be written (%s)",
		          audit_type_name(type), idp_err_name(rc));
		return 1;
	}
	return 0;
}

static unsigned
emit_generated(const struct new_key *k, const struct keys_plan *plan, enum keys_trigger t,
               const struct keys_origin *who)
{
	json_t *d = json_pack("{s:s,s:s,s:s,s:s,s:s,s:s}", "kid", k->info.kid, "alg", "ES256",
	                      "state", keys_state_name(k->info.state), "kek_id", k->info.kek_id,
	                      "why", plan->why, "trigger", keys_trigger_name(t));

	put_time(d, "not_after", k->info.not_after_ms);
	return emit(AUDIT_KEY_GENERATED, AUDIT_OUTCOME_SUCCESS, who, d);
}

/*
 * Apply plan on c inside the caller's transaction.  Keys to generate are
 * made first, so a failure to make one writes nothing.
 */
static int
apply_plan(struct keys *km, struct store_conn *c, const struct keys_row *rows,
           const struct keys_plan *plan, int64_t now_ms, const struct keys_policy *pol,
           struct new_key *made, size_t *n_made, struct idp_diag *diag)
{
	int rc;

	*n_made = 0;
	if (plan->generate_active) {
		rc = new_key_make(km, KEYS_ACTIVE, now_ms, pol, &made[(*n_made)++], diag);
		if (rc != IDP_OK)
			return rc;
	}
	if (plan->generate_next) {
		rc = new_key_make(km, KEYS_NEXT, now_ms, pol, &made[(*n_made)++], diag);
		if (rc != IDP_OK)
			return rc;
	}
	for (size_t i = 0; i < plan->n_retire; i++) {
		rc = keys_db_retire(c, rows[plan->retire[i]].info.kid, now_ms);
		if (rc != IDP_OK)
			goto failed;
	}
	/* Demote before promoting: at most one key is active at any moment. */
	if (plan->demote >= 0) {
		rc = keys_db_demote(c, rows[plan->demote].info.kid, now_ms,
		                    plan->demote_retire_after_ms);
		if (rc != IDP_OK)
			goto failed;
	}
	if (plan->promote >= 0) {
		rc = keys_db_promote(c, rows[plan->promote].info.kid, now_ms);
		if (rc != IDP_OK)
			goto failed;
	}
	for (size_t i = 0; i < *n_made; i++) {
		rc = keys_db_insert(c, &made[i].info, made[i].jwk, made[i].sealed,
		                    made[i].sealed_len);
		if (rc != IDP_OK)
			goto failed;
	}
	return IDP_OK;
failed:
	idp_diag_add(diag, "keys: storing the change failed (%s)", idp_err_name(rc));
	return rc;
}

/* Index of the row that was active before the change, or -1. */
static int
old_active(const struct keys_row *rows, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (rows[i].info.state == KEYS_ACTIVE)
			return (int)i;
	return -1;
}

/* What the table holds after plan: the active, next and demoted kids. */
static void
fill_result(struct keys_result *res, const struct keys_row *rows, size_t n,
            const struct keys_plan *plan, const struct new_key *made, size_t n_made)
{
	for (size_t i = 0; i < n; i++) {
		bool retired = false;

		for (size_t r = 0; r < plan->n_retire; r++)
			retired |= plan->retire[r] == i;
		if (retired && rows[i].info.state == KEYS_ACTIVE)
			snprintf(res->previous, sizeof(res->previous), "%s", rows[i].info.kid);
		if (retired || (int)i == plan->demote)
			continue;
		if ((int)i == plan->promote || (rows[i].info.state == KEYS_ACTIVE))
			snprintf(res->active, sizeof(res->active), "%s", rows[i].info.kid);
		else if (rows[i].info.state == KEYS_NEXT)
			snprintf(res->next, sizeof(res->next), "%s", rows[i].info.kid);
	}
	for (size_t i = 0; i < n_made; i++) {
		char *slot = made[i].info.state == KEYS_ACTIVE ? res->active : res->next;

		snprintf(slot, sizeof(res->active), "%s", made[i].info.kid);
	}
	if (plan->demote >= 0)
		snprintf(res->previous, sizeof(res->previous), "%s", rows[plan->demote].info.kid);
	/* The active key changed from one key to another; a first key is no rotation. */
	res->rotated = plan->demote >= 0 || plan->promote >= 0 ||
	               (plan->generate_active && old_active(rows, n) >= 0);
	res->generated = (unsigned)n_made;
	res->retired = (unsigned)plan->n_retire;
	res->changed = !keys_plan_empty(plan);
	res->why = plan->why;
}

static unsigned
emit_change(const struct keys_row *rows, size_t n_rows, const struct keys_plan *plan,
            const struct new_key *made, size_t n_made, enum keys_trigger t,
            const struct keys_origin *who, const struct keys_result *res)
{
	unsigned failures = 0;

	for (size_t i = 0; i < n_made; i++)
		failures += emit_generated(&made[i], plan, t, who);
	if (res->rotated) {
		json_t *d = json_pack("{s:s,s:s,s:s}", "kid", res->active, "why", plan->why,
		                      "trigger", keys_trigger_name(t));

		int was = old_active(rows, n_rows);

		if (plan->demote >= 0) {
			json_object_set_new(d, "previous_kid", json_string(res->previous));
			put_time(d, "previous_retire_after", plan->demote_retire_after_ms);
		} else if (was >= 0) {
			/* Retired at once: past its not-after long enough that nothing it
			 * signed is still valid, or compromised. */
			json_object_set_new(d, "previous_kid", json_string(rows[was].info.kid));
			json_object_set_new(d, "previous_retired", json_true());
		}
		failures += emit(AUDIT_KEY_ROTATED, AUDIT_OUTCOME_SUCCESS, who, d);
	}
	for (size_t i = 0; i < plan->n_retire; i++) {
		const struct keys_info *info = &rows[plan->retire[i]].info;
		json_t *d =
		    json_pack("{s:s,s:s,s:s}", "kid", info->kid, "was",
		              keys_state_name(info->state), "trigger", keys_trigger_name(t));

		if (info->retire_after_ms > 0)
			put_time(d, "retire_after", info->retire_after_ms);
		failures += emit(AUDIT_KEY_RETIRED, AUDIT_OUTCOME_SUCCESS, who, d);
	}
	return failures;
}

/* Install what was just committed (or found); on failure the listener's reload will. */
static void
reload_after_change(struct keys *km, struct store_conn *c)
{
	struct idp_diag d;

	idp_diag_init(&d);
	if (reload_on(km, c, &d) != IDP_OK)
		log_warn("%s", idp_diag_str(&d));
}

static void
rollback(struct store_conn *c)
{
	if (store_cmd(c, "ROLLBACK") != IDP_OK)
		log_debug("keys: ROLLBACK failed; the connection is gone");
}

/*
 * The private half of row under kek, checked against the row's public JWK;
 * the caller unrefs *out.
 */
static int
open_row(const struct keys_row *row, const struct idp_kek *kek, struct idp_jws_key **out,
         struct idp_diag *diag)
{
	struct idp_jws_key *pub = NULL;
	int rc = row_public_key(row, &pub, diag);

	*out = NULL;
	if (rc == IDP_OK)
		rc = row_private_key(row, pub, kek, out, diag);
	idp_jws_key_unref(pub);
	return rc;
}

/* Seal key under km's KEK and prove the blob opens to the same key. */
static int
seal_checked(struct keys *km, const struct keys_row *row, const struct idp_jws_key *key,
             unsigned char **sealed, size_t *len, struct idp_diag *diag)
{
	struct keys_row again = *row;
	struct idp_jws_key *back = NULL;
	int rc;

	*sealed = NULL;
	if (idp_kek_seal_key(km->kek, key, sealed, len) != IDP_OK) {
		idp_diag_add(diag, "keys: cannot seal key %s", row->info.kid);
		return IDP_EINTERNAL;
	}
	again.sealed = *sealed;
	again.sealed_len = *len;
	rc = open_row(&again, km->kek, &back, diag);
	idp_jws_key_unref(back);
	if (rc != IDP_OK) {
		free(*sealed);
		*sealed = NULL;
		return IDP_EINTERNAL;
	}
	return IDP_OK;
}

int
keys_reseal(struct keys *km, const struct idp_kek *old, const struct keys_origin *who,
            size_t *n_resealed, struct idp_diag *diag)
{
	struct keys_row *rows = NULL;
	struct store_conn *c = NULL;
	char old_id[21];
	bool *resealed = NULL;
	size_t n = 0, done_n = 0;
	unsigned failures = 0;
	int rc;

	*n_resealed = 0;
	idp_kek_id(old, old_id);
	if (strcmp(old_id, km->kek_id) == 0) {
		idp_diag_add(diag, "keys: the old and the new KEK are the same (%s)", old_id);
		return IDP_EINVAL;
	}
	if (store_acquire(km->store, &c) != IDP_OK) {
		idp_diag_add(diag, "keys: PostgreSQL is unavailable");
		return IDP_EUNAVAIL;
	}
	rc = store_cmd(c, "BEGIN");
	if (rc == IDP_OK)
		rc = keys_db_lock(c);
	if (rc == IDP_OK)
		rc = keys_db_read_live(c, &rows, &n);
	if (rc != IDP_OK) {
		idp_diag_add(diag, "keys: the signing keys could not be read (%s)",
		             idp_err_name(rc));
		goto done;
	}
	/*
	 * First every check, so that a key nobody here can open changes
	 * nothing.  A retiring key signs no more: one under a third KEK (the
	 * KEK changed once before, while it was retiring) is left as it is.
	 */
	for (size_t i = 0; i < n; i++) {
		const char *kek = rows[i].info.kek_id;

		if (strcmp(kek, km->kek_id) != 0 && strcmp(kek, old_id) != 0 &&
		    rows[i].info.state != KEYS_RETIRING) {
			idp_diag_add(
			    diag,
			    "keys: the %s key %s is sealed with %s, neither the old KEK (%s) "
			    "nor the new one (%s from %s); nothing was changed",
			    keys_state_name(rows[i].info.state), rows[i].info.kid, kek, old_id,
			    km->kek_id, km->kek_source);
			rc = IDP_EFORBIDDEN;
			goto done;
		}
	}
	resealed = idp_xcalloc(n ? n : 1, sizeof(*resealed));
	for (size_t i = 0; i < n; i++) {
		struct keys_row *row = &rows[i];
		struct idp_jws_key *key = NULL;
		unsigned char *sealed = NULL;
		size_t len = 0;

		if (strcmp(row->info.kek_id, old_id) != 0)
			continue;
		rc = open_row(row, old, &key, diag);
		if (rc == IDP_OK)
			rc = seal_checked(km, row, key, &sealed, &len, diag);
		idp_jws_key_unref(key);
		if (rc == IDP_OK)
			rc = keys_db_reseal(c, row->info.kid, sealed, len, km->kek_id, old_id);
		free(sealed);
		if (rc != IDP_OK) {
			idp_diag_add(diag, "keys: key %s was not resealed; nothing was changed",
			             row->info.kid);
			goto done;
		}
		resealed[i] = true;
		done_n++;
	}
	/* Every key done: now the events, before COMMIT, as every change. */
	for (size_t i = 0; i < n; i++) {
		if (resealed[i])
			failures += emit(AUDIT_KEY_RESEALED, AUDIT_OUTCOME_SUCCESS, who,
			                 json_pack("{s:s,s:s,s:s,s:s}", "kid", rows[i].info.kid,
			                           "state", keys_state_name(rows[i].info.state),
			                           "from_kek_id", old_id, "kek_id", km->kek_id));
	}
	if (failures > 0) {
		idp_diag_add(diag, "keys: the change could not be audited, so it was not made");
		rc = IDP_EUNAVAIL;
		goto done;
	}
	rc = store_cmd(c, "COMMIT");
	if (rc != IDP_OK) {
		idp_diag_add(
		    diag,
		    "keys: COMMIT failed (%s); the change and the key.resealed events just "
		    "written may not have happened: run it again to be sure",
		    idp_err_name(rc));
		goto done;
	}
	*n_resealed = done_n;
	log_info("keys: %zu key(s) resealed from %s to %s", done_n, old_id, km->kek_id);
	reload_after_change(km, c);
	store_release(km->store, c);
	keys_rows_free(rows, n);
	free(resealed);
	return IDP_OK;
done:
	rollback(c);
	store_release(km->store, c);
	keys_rows_free(rows, n);
	free(resealed);
	return rc;
}

static int change(struct keys *km, struct store_conn *conn, enum keys_trigger trigger,
                  const char *retire_kid, const struct keys_origin *who, struct keys_result *res,
                  struct idp_diag *diag);

int
keys_change(struct keys *km, struct store_conn *conn, enum keys_trigger trigger,
            const struct keys_origin *who, struct keys_result *res, struct idp_diag *diag)
{
	return change(km, conn, trigger, NULL, who, res, diag);
}

/*
 * The plan for a compromised key, kid, found at live[i]: the active key is
 * rotated out and retired at once; a next or retiring key is retired at once
 * (a next key replaced), and the rest of the table changes as it would at a
 * start.  Naming the key makes a retried request harmless: the second finds
 * it retired (IDP_ENOTFOUND), where "retire the active key" would retire
 * the key that replaced it.
 */
IDP_STATIC int
compromise_plan(const struct keys_info *live, size_t n, size_t i, int64_t now,
                const struct keys_policy *pol, struct keys_plan *plan, struct idp_diag *diag)
{
	bool listed = false;
	int rc;

	if (live[i].state == KEYS_ACTIVE)
		rc = keys_plan_make(live, n, now, pol, KEYS_TRIGGER_COMPROMISE, plan, diag);
	else
		rc = keys_plan_make(live, n, now, pol, KEYS_TRIGGER_START, plan, diag);
	if (rc != IDP_OK)
		return rc;
	for (size_t r = 0; r < plan->n_retire; r++)
		listed |= plan->retire[r] == i;
	if (!listed)
		plan_retire(plan, i);
	/* A start-time plan may promote the next key being retired (its active
	 * key expired): a fresh key becomes active instead. */
	if (plan->promote == (int)i) {
		plan->promote = -1;
		plan->generate_active = true;
	}
	if (live[i].state == KEYS_NEXT)
		plan->generate_next = true;
	plan->why = "compromise";
	return IDP_OK;
}

static int
change(struct keys *km, struct store_conn *conn, enum keys_trigger trigger, const char *retire_kid,
       const struct keys_origin *who, struct keys_result *res, struct idp_diag *diag)
{
	static const struct keys_origin system_origin = {.actor_kind = AUDIT_ACTOR_SYSTEM};
	struct store_conn *c = conn;
	struct keys_row *rows = NULL;
	struct keys_result local;
	struct keys_plan plan;
	struct keys_policy pol;
	struct new_key made[2];
	size_t n = 0, n_made = 0;
	struct keys_info *infos = NULL;
	bool in_tx = false;
	int64_t now;
	int rc;

	if (who == NULL)
		who = &system_origin;
	if (res == NULL)
		res = &local;
	memset(res, 0, sizeof(*res));
	memset(made, 0, sizeof(made));
	keys_get_policy(km, &pol);
	if (c == NULL && store_acquire(km->store, &c) != IDP_OK) {
		idp_diag_add(diag, "keys: PostgreSQL is unavailable");
		c = NULL;
		rc = IDP_EUNAVAIL;
		goto done;
	}
	rc = store_cmd(c, "BEGIN");
	if (rc != IDP_OK)
		goto db_failed;
	in_tx = true;
	rc = keys_db_lock(c);
	if (rc == IDP_OK)
		rc = keys_db_read_live(c, &rows, &n);
	if (rc != IDP_OK)
		goto db_failed;
	rc = keys_check_kek(rows, n, km->kek, km->kek_source, diag);
	if (rc != IDP_OK)
		goto done;
	/* Read after the lock: a change that waited must plan on the table it will change. */
	now = idp_now_ms(km->clock);
	infos = idp_xcalloc(n ? n : 1, sizeof(*infos));
	for (size_t i = 0; i < n; i++)
		infos[i] = rows[i].info;
	if (trigger == KEYS_TRIGGER_COMPROMISE) {
		size_t i = 0;

		while (i < n && (retire_kid == NULL || strcmp(infos[i].kid, retire_kid) != 0))
			i++;
		if (i == n) {
			idp_diag_add(
			    diag,
			    "keys: %s is not a live signing key (unknown, or already retired)",
			    retire_kid != NULL ? retire_kid : "(none)");
			rc = IDP_ENOTFOUND;
			goto done;
		}
		rc = compromise_plan(infos, n, i, now, &pol, &plan, diag);
	} else {
		rc = keys_plan_make(infos, n, now, &pol, trigger, &plan, diag);
	}
	if (rc != IDP_OK)
		goto done;
	if (keys_plan_empty(&plan)) {
		struct keys_snapshot *cur;

		rollback(c);
		in_tx = false;
		fill_result(res, rows, n, &plan, made, 0);
		cur = keys_current(km);
		keys_snapshot_unref(cur);
		if (cur == NULL)
			reload_after_change(km, c);
		goto done;
	}
	rc = apply_plan(km, c, rows, &plan, now, &pol, made, &n_made, diag);
	if (rc != IDP_OK)
		goto done;
	/*
	 * Audit before COMMIT, as every write in idpd does: a key change that
	 * cannot be recorded is not made.  (If COMMIT then fails, the events
	 * describe a change that did not happen; the error below says so.)
	 */
	fill_result(res, rows, n, &plan, made, n_made);
	res->audit_failures = emit_change(rows, n, &plan, made, n_made, trigger, who, res);
	if (res->audit_failures > 0) {
		idp_diag_add(diag, "keys: the change could not be audited, so it was not made");
		rc = IDP_EUNAVAIL;
		goto done;
	}
	rc = store_cmd(c, "COMMIT");
	in_tx = false;
	if (rc != IDP_OK) {
		log_error("keys: COMMIT failed after the key change was audited; the key.* events "
		          "just written describe a change that did not happen");
		goto db_failed;
	}
	log_info("keys: %s (%s): active %s, next %s%s%s; %u generated, %u retired",
	         res->rotated ? "rotated" : "changed", plan.why, res->active, res->next,
	         res->previous[0] ? ", previous " : "", res->previous, res->generated,
	         res->retired);
	reload_after_change(km, c);
	goto done;
db_failed:
	idp_diag_add(diag, "keys: the signing keys could not be read or changed (%s)",
	             idp_err_name(rc));
	if (rc == IDP_EINTERNAL)
		idp_diag_add(diag, "keys: is the schema current? (idpd migrate)");
done:
	if (in_tx)
		rollback(c);
	if (c != NULL && conn == NULL)
		store_release(km->store, c);
	for (size_t i = 0; i < IDP_ARRAY_LEN(made); i++)
		new_key_cleanup(&made[i]);
	free(infos);
	keys_rows_free(rows, n);
	if (rc != IDP_OK && (trigger == KEYS_TRIGGER_DEMAND || trigger == KEYS_TRIGGER_FORCE ||
	                     trigger == KEYS_TRIGGER_COMPROMISE)) {
		json_t *d = json_pack("{s:s,s:s}", "error", idp_err_name(rc), "trigger",
		                      keys_trigger_name(trigger));

		res->audit_failures += emit(AUDIT_KEY_ROTATED, AUDIT_OUTCOME_FAILURE, who, d);
	}
	return rc;
}

int
keys_ensure(struct keys *km, struct idp_diag *diag)
{
	struct keys_snapshot *s;
	int rc;

	rc = keys_change(km, NULL, KEYS_TRIGGER_START, NULL, NULL, diag);
	if (rc != IDP_OK)
		return rc;
	s = keys_current(km);
	if (s == NULL) {
		rc = keys_reload(km, diag);
		if (rc != IDP_OK)
			return rc;
		s = keys_current(km);
	}
	if (s == NULL || s->signing == NULL) {
		idp_diag_add(diag, "keys: no usable signing key after loading");
		rc = IDP_EINTERNAL;
	}
	keys_snapshot_unref(s);
	return rc;
}

int
keys_rotate(struct keys *km, bool force, const struct keys_origin *who, struct keys_result *res,
            struct idp_diag *diag)
{
	return keys_change(km, NULL, force ? KEYS_TRIGGER_FORCE : KEYS_TRIGGER_DEMAND, who, res,
	                   diag);
}

int
keys_retire_now(struct keys *km, const char *kid, const struct keys_origin *who,
                struct keys_result *res, struct idp_diag *diag)
{
	return change(km, NULL, KEYS_TRIGGER_COMPROMISE, kid, who, res, diag);
}

int
keys_rotate_if_due(struct keys *km, struct store_conn *conn, const struct keys_origin *who,
                   struct keys_result *res, struct idp_diag *diag)
{
	return keys_change(km, conn, KEYS_TRIGGER_SCHEDULE, who, res, diag);
}
