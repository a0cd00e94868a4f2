/*
 * human_auth.c - bearer JWTs of the [[idp]] identity providers.
 *
 * The verifier is chosen by kid: each provider's key set is tried in
 * configuration order and the first that knows the token's kid decides, so
 * a token is never checked against the issuer or audience of a provider
 * whose key did not sign it.  The process's verifier sits behind
 * human_auth.lock with a reference count, like attestation's settings.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

#include "idpd/app.h"
#include "idpd/b64.h"
#include "idpd/clock.h"
#include "idpd/config.h"
#include "idpd/http.h"
#include "idpd/json_out.h"
#include "idpd/human_auth.h"
#include "idpd/jwks_remote.h"
#include "idpd/jws.h"
#include "idpd/log.h"
#include "idpd/revocation.h"
#include "idpd/tasks.h"

struct human_idp {
	char *name;
	char *issuer;
	char *audience;
	char *claim;
	bool vouches_for_owners;
	bool require_email_verified;
	unsigned algs;               /* IDP_JWS_ALLOW bits */
	struct idp_jws_keyset *keys; /* from jwks_file; NULL with remote */
	struct jwks_remote *remote;  /* from jwks_uri; NULL with keys */
};

struct human_verifier {
	_Atomic int refs;
	int64_t leeway_ms;
	char *own_issuer; /* identity.issuer: the iss of idpd's own tokens */
	struct human_idp *idps;
	size_t n_idps;
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER; /* human_auth.lock: guards current */
static struct human_verifier *current;

void
human_verifier_free(struct human_verifier *v)
{
	if (v == NULL)
		return;
	for (size_t i = 0; i < v->n_idps; i++) {
		free(v->idps[i].name);
		free(v->idps[i].issuer);
		free(v->idps[i].audience);
		free(v->idps[i].claim);
		idp_jws_keyset_unref(v->idps[i].keys);
		jwks_remote_unref(v->idps[i].remote);
	}
	free(v->idps);
	free(v->own_issuer);
	free(v);
}

/* Visible in test builds, as is verifier_current: a test looks at the verifier in force. */
IDP_STATIC void
verifier_unref(struct human_verifier *v)
{
	if (v != NULL && atomic_fetch_sub_explicit(&v->refs, 1, memory_order_acq_rel) == 1)
		human_verifier_free(v);
}

IDP_STATIC struct human_verifier *
verifier_current(void)
{
	struct human_verifier *v;

	pthread_mutex_lock(&lock);
	v = current;
	if (v != NULL)
		atomic_fetch_add_explicit(&v->refs, 1, memory_order_relaxed);
	pthread_mutex_unlock(&lock);
	return v;
}

static void
install(struct human_verifier *v)
{
	struct human_verifier *old;

	pthread_mutex_lock(&lock);
	old = current;
	current = v;
	pthread_mutex_unlock(&lock);
	verifier_unref(old);
}

/*
 * The key set of a jwks_file from the bytes the configuration loader read
 * (so that it is the set the reload's event hashed), or from the file
 * itself for a configuration not loaded from one.
 */
static int
keyset_load(const char *path, const struct idpd_file_bytes *b, struct idp_jws_keyset **out,
            struct idp_diag *diag)
{
	return idp_jws_keyset_from_read(path, b->data, b->len, b->error, out, diag);
}

struct human_verifier *
human_verifier_new(const struct idpd_config *cfg, struct idp_diag *diag)
{
	struct human_verifier *v = idp_xcalloc(1, sizeof(*v));

	atomic_init(&v->refs, 1);
	v->leeway_ms = cfg->identity.leeway_ms;
	v->own_issuer = idp_xstrdup(cfg->identity.issuer);
	v->idps = idp_xcalloc(cfg->n_idps ? cfg->n_idps : 1, sizeof(*v->idps));
	for (size_t i = 0; i < cfg->n_idps; i++) {
		const struct idpd_idp_cfg *ic = &cfg->idps[i];
		struct human_idp *h = &v->idps[v->n_idps++];
		struct idp_diag d;
		int rc;

		h->name = idp_xstrdup(ic->name);
		h->issuer = idp_xstrdup(ic->issuer);
		h->audience = idp_xstrdup(ic->audience);
		h->claim = idp_xstrdup(ic->principal_claim);
		h->vouches_for_owners = ic->vouches_for_owners;
		h->require_email_verified = ic->require_email_verified;
		/* Config bit i is the i-th name of ["ES256", "RS256"]. */
		h->algs = (ic->algs & 1u ? IDP_JWS_ALLOW_ES256 : 0) |
		          (ic->algs & 2u ? IDP_JWS_ALLOW_RS256 : 0);
		if (h->algs == 0)
			h->algs = IDP_JWS_ALLOW_ES256 | IDP_JWS_ALLOW_RS256;
		if (ic->jwks_uri != NULL) {
			struct jwks_remote_opts o = {
			    .kind = "idp",
			    .name = ic->name,
			    .uri = ic->jwks_uri,
			    .ca_file = ic->ca_file,
			    .refresh_ms = ic->jwks_refresh_ms,
			    .min_refresh_ms = ic->jwks_min_refresh_ms,
			    .max_stale_ms = ic->jwks_max_stale_ms,
			};

			rc = jwks_remote_new(&o, &h->remote, diag);
			if (rc != IDP_OK) {
				human_verifier_free(v);
				return NULL;
			}
			continue;
		}
		idp_diag_init(&d);
		if (ic->jwks_file == NULL ||
		    keyset_load(ic->jwks_file, &ic->jwks, &h->keys, &d) != IDP_OK) {
			idp_diag_add(diag, "idp \"%s\" (%s): %s", ic->name,
			             ic->jwks_file != NULL ? ic->jwks_file
			                                   : "no jwks_file or jwks_uri",
			             idp_diag_str(&d));
			human_verifier_free(v);
			return NULL;
		}
	}
	return v;
}

static bool
audience_holds(const json_t *aud, const char *want)
{
	size_t i;
	const json_t *e;

	if (json_is_string(aud))
		return strcmp(json_string_value(aud), want) == 0;
	if (!json_is_array(aud))
		return false;
	json_array_foreach(aud, i, e)
	{
		if (json_is_string(e) && strcmp(json_string_value(e), want) == 0)
			return true;
	}
	return false;
}

/*
 * Spaces (Zs but U+0020, which is refused as ASCII) and the code points
 * Unicode lists as Default_Ignorable_Code_Point (DerivedCoreProperties.txt):
 * characters a renderer shows as nothing, bidi controls among them, and
 * the unassigned code points reserved as such.  "alice@example.com"
 * followed by a U+200B, a U+00AD, a tag character or a variation selector
 * would display as alice and be someone else; a U+2066..U+2069 isolate or
 * a U+202E override reorders what follows it on screen.
 */
static const struct {
	uint32_t lo, hi;
} invisible_ranges[] = {
    {0x00A0, 0x00A0},   /* no-break space */
    {0x00AD, 0x00AD},   /* soft hyphen */
    {0x034F, 0x034F},   /* combining grapheme joiner */
    {0x061C, 0x061C},   /* Arabic letter mark (bidi) */
    {0x115F, 0x1160},   /* Hangul choseong and jungseong fillers */
    {0x1680, 0x1680},   /* Ogham space mark */
    {0x17B4, 0x17B5},   /* Khmer inherent vowels */
    {0x180B, 0x180F},   /* Mongolian variation selectors, vowel separator */
    {0x2000, 0x200F},   /* spaces, zero-width space and joiners, LRM, RLM */
    {0x2028, 0x202F},   /* separators, bidi embeddings and overrides, narrow space */
    {0x205F, 0x206F},   /* medium space, word joiner, invisible operators, isolates */
    {0x3000, 0x3000},   /* ideographic space */
    {0x3164, 0x3164},   /* Hangul filler */
    {0xFE00, 0xFE0F},   /* variation selectors */
    {0xFEFF, 0xFEFF},   /* zero-width no-break space (BOM) */
    {0xFFA0, 0xFFA0},   /* halfwidth Hangul filler */
    {0xFFF0, 0xFFF8},   /* reserved default-ignorable */
    {0x1BCA0, 0x1BCA3}, /* shorthand format controls */
    {0x1D173, 0x1D17A}, /* musical symbol format controls */
    {0xE0000, 0xE0FFF}, /* tag characters, variation selectors supplement, reserved */
};

/*
 * Whether the valid UTF-8 sequence u[0..len) (2 to 4 bytes) encodes a
 * space or a default-ignorable code point (invisible_ranges).
 */
static bool
invisible(const unsigned char *u, size_t len)
{
	uint32_t cp;

	if (len == 2)
		cp = (uint32_t)(u[0] & 0x1f) << 6 | (u[1] & 0x3f);
	else if (len == 3)
		cp = (uint32_t)(u[0] & 0x0f) << 12 | (uint32_t)(u[1] & 0x3f) << 6 | (u[2] & 0x3f);
	else if (len == 4)
		cp = (uint32_t)(u[0] & 0x07) << 18 | (uint32_t)(u[1] & 0x3f) << 12 |
		     (uint32_t)(u[2] & 0x3f) << 6 | (u[3] & 0x3f);
	else
		return false;
	for (size_t i = 0; i < IDP_ARRAY_LEN(invisible_ranges); i++)
		if (cp >= invisible_ranges[i].lo && cp <= invisible_ranges[i].hi)
			return true;
	return false;
}

/*
 * A principal is 1..HUMAN_PRINCIPAL_MAX bytes of UTF-8 (no overlongs, no
 * surrogates) without spaces, default-ignorable (invisible) characters or control
 * characters, C1 (U+0080..U+009F) included: it goes into logs, audit
 * events and tokens, where a NEL or an invalid byte could split or garble a
 * line, and it names a person, whom a lookalike must not pass for.  jansson
 * refuses invalid UTF-8 already; the check is repeated so this rule stands
 * on its own.  Nor "->": CEF and LEEF join a delegation chain's elements
 * with it, so a principal holding it would read as one hop more.
 */
static bool
principal_ok(const char *s)
{
	const unsigned char *u = (const unsigned char *)s;
	size_t n = strlen(s), i = 0;

	if (n == 0 || n > HUMAN_PRINCIPAL_MAX || strstr(s, "->") != NULL)
		return false;
	while (i < n) {
		size_t len = idp_utf8_seq(u + i, n - i);

		if (len == 0 || (len == 1 && (u[i] <= 0x20 || u[i] == 0x7f)))
			return false;
		/* C1: U+0080..U+009F, encoded C2 80..C2 9F. */
		if ((len == 2 && u[i] == 0xc2 && u[i + 1] <= 0x9f) || invisible(u + i, len))
			return false;
		i += len;
	}
	return true;
}

/*
 * Whether a verified token is one of idpd's own rather than a provider's:
 * its typ is a delegation token's or an identity credential's, or it is an
 * access token (at+jwt) whose iss is identity.issuer.  Such a token verifies
 * here only when a provider's JWKS holds idpd's key (idpd configured as its
 * own provider, or a provider fed idpd's key set); it names an agent, never
 * a human, and must not pass for one.  at+jwt alone decides nothing:
 * providers issue RFC 9068 access tokens with that typ too.
 */
static bool
idpd_own_token(const struct human_verifier *v, const struct idp_jws_verified *ver)
{
	const char *typ = json_string_value(json_object_get(ver->header, "typ"));
	const char *iss = json_string_value(json_object_get(ver->claims, "iss"));

	if (typ == NULL)
		return false;
	if (idp_jws_typ_matches(typ, TASK_TOKEN_TYP) ||
	    idp_jws_typ_matches(typ, IDP_JWS_TYP_IDENTITY))
		return true;
	return idp_jws_typ_matches(typ, ACCESS_TOKEN_TYP) && iss != NULL && v->own_issuer != NULL &&
	       strcmp(iss, v->own_issuer) == 0;
}

/*
 * The email_verified rule, for a provider whose principal claim is "email":
 * NULL if claims may name the human, else the reason to refuse.  An
 * address the provider has not verified may be one its user typed in (the
 * "nOAuth" mistake: set your email to a colleague's, become the colleague),
 * so email_verified must be true, the JSON boolean or the string "true" that
 * some providers send.  Absent, it is refused unless the provider is known
 * never to send it (require_email_verified = false); present and anything
 * else (false, "false", null, 1) it is always refused.
 */
static const char *
email_verified_refusal(const struct human_idp *h, const json_t *claims)
{
	const json_t *ev;

	if (strcmp(h->claim, "email") != 0)
		return NULL;
	ev = json_object_get(claims, "email_verified");
	if (ev == NULL)
		return h->require_email_verified ? "email_verified_missing" : NULL;
	if (json_is_true(ev))
		return NULL;
	if (json_is_string(ev) && json_string_length(ev) == 4 &&
	    memcmp(json_string_value(ev), "true", 4) == 0)
		return NULL;
	return "email_unverified";
}

/*
 * Copy the kid of token's header into kid.  false if the header cannot be
 * read or its kid is missing, too long or holds a NUL: such a kid names no
 * key of any provider.  Only called after idp_jws_verify has bounded len.
 */
static bool
token_kid(const char *token, size_t len, char kid[IDP_JWS_MAX_KID + 1])
{
	const char *dot = memchr(token, '.', len);
	unsigned char *text = NULL;
	size_t text_len;
	json_t *hdr = NULL, *v;
	bool ok = false;

	if (dot == NULL ||
	    idp_b64url_decode_alloc(token, (size_t)(dot - token), &text, &text_len) != IDP_OK)
		goto done;
	hdr = json_loadb((const char *)text, text_len, JSON_REJECT_DUPLICATES, NULL);
	v = json_object_get(hdr, "kid");
	if (!json_is_string(v) || json_string_length(v) > IDP_JWS_MAX_KID ||
	    json_string_length(v) != strlen(json_string_value(v)))
		goto done;
	memcpy(kid, json_string_value(v), json_string_length(v) + 1);
	ok = true;
done:
	json_decref(hdr);
	free(text);
	return ok;
}

/* The token's kid, read once on first need into buf; NULL if it has none that fits. */
static const char *
lazy_kid(const char *token, size_t len, bool *read, char buf[IDP_JWS_MAX_KID + 1])
{
	if (!*read) {
		*read = true;
		if (!token_kid(token, len, buf))
			buf[0] = '\0';
	}
	return buf[0] != '\0' ? buf : NULL;
}

/*
 * The key set to verify with for h: its file's, or the last good set of
 * its jwks_uri while that is usable (rv holds the reference; the caller
 * releases it).  NULL for a remote that has no usable set.
 */
static const struct idp_jws_keyset *
idp_keys(const struct human_idp *h, const struct idp_clock *clock, struct jwks_remote_view *rv)
{
	memset(rv, 0, sizeof(*rv));
	if (h->remote == NULL)
		return h->keys;
	jwks_remote_view(h->remote, clock, rv);
	return rv->usable ? rv->keys : NULL;
}

/*
 * A token whose kid no provider holds: if its (unverified) iss is that of a
 * jwks_uri provider, that provider decides whether the kid is definitely
 * unknown (IDP_EUNAUTH) or may be a key published since its set was
 * fetched (IDP_EUNAVAIL, a fetch asked for, *reason and out->retry_after_s
 * set): jwks_remote_kid_unknown.
 */
static int
remote_kid_unknown(const struct human_verifier *v, const char *token, size_t len,
                   const struct idp_clock *clock, struct human_principal *out, const char **reason)
{
	char iss[600];
	int64_t iat_ms;
	int rc = IDP_EUNAUTH;

	jwks_token_iss_iat(token, len, iss, sizeof(iss), &iat_ms);
	for (size_t i = 0; i < v->n_idps && rc == IDP_EUNAUTH && iss[0] != '\0'; i++)
		if (v->idps[i].remote != NULL && strcmp(v->idps[i].issuer, iss) == 0)
			rc = jwks_remote_kid_unknown(v->idps[i].remote, clock, iat_ms, reason,
			                             &out->retry_after_s);
	return rc;
}

int
human_token_verify(const struct human_verifier *v, const char *token, size_t len,
                   const struct idp_clock *clock, struct human_principal *out, const char **reason)
{
	struct idp_jws_verified ver = {0};
	enum idp_jws_reason why = IDP_JWS_KID_UNKNOWN;
	const struct human_idp *h = NULL, *stale = NULL;
	const char *r = NULL, *p, *kid;
	char kid_buf[IDP_JWS_MAX_KID + 1];
	bool kid_read = false;
	int rc = IDP_EUNAUTH;

	memset(out, 0, sizeof(*out));
	if (v == NULL || v->n_idps == 0) {
		r = "no_idp";
		goto done;
	}
	/* The bound idp_jws_verify applies, here first: a provider without a
	 * usable set reads the kid and iss without calling it. */
	if (len > IDP_JWS_MAX_TOKEN) {
		r = idp_jws_reason_name(IDP_JWS_TOO_LARGE);
		goto done;
	}
	for (size_t i = 0; i < v->n_idps; i++) {
		struct idp_jws_verify_opts o = {.typ = NULL, .algs = v->idps[i].algs};
		struct jwks_remote_view rv;
		const struct idp_jws_keyset *keys = idp_keys(&v->idps[i], clock, &rv);
		bool decided = true;

		if (keys == NULL) {
			/*
			 * A jwks_uri provider without a usable set verifies
			 * nothing.  If its stale set holds the kid, the token is
			 * its own, and whether that key still stands is unknown.
			 */
			kid = rv.keys != NULL ? lazy_kid(token, len, &kid_read, kid_buf) : NULL;
			if (kid != NULL && idp_jws_keyset_find(rv.keys, kid) != NULL &&
			    stale == NULL)
				stale = &v->idps[i];
			decided = false;
		} else if (idp_jws_verify(keys, token, len, &o, &ver, &why) == IDP_OK) {
			h = &v->idps[i];
		} else if (why == IDP_JWS_ALG_NOT_ALLOWED) {
			/*
			 * idp_jws_verify checks the alg pin before it looks the
			 * kid up, so "alg_not_allowed" may come from a provider
			 * that does not hold the kid, for a token of another
			 * provider with other pins: that is no verdict, move on,
			 * and if no provider holds the kid say so.  A provider
			 * that holds the kid keeps its pin and decides.
			 */
			kid = lazy_kid(token, len, &kid_read, kid_buf);
			if (kid == NULL) {
				decided = false; /* no kid to hold: the alg stays the reason */
			} else if (idp_jws_keyset_find(keys, kid) == NULL) {
				why = IDP_JWS_KID_UNKNOWN;
				decided = false;
			}
		} else if (why == IDP_JWS_KID_UNKNOWN) {
			/* Any other failure but an unknown kid is this provider's verdict. */
			decided = false;
		}
		jwks_remote_view_cleanup(&rv);
		if (decided)
			break;
	}
	if (h == NULL && stale != NULL) {
		jwks_remote_want(stale->remote);
		out->retry_after_s = 1;
		r = "jwks_stale";
		rc = IDP_EUNAVAIL;
		goto done;
	}
	if (h == NULL && why == IDP_JWS_KID_UNKNOWN &&
	    remote_kid_unknown(v, token, len, clock, out, &r) == IDP_EUNAVAIL) {
		rc = IDP_EUNAVAIL;
		goto done;
	}
	if (h == NULL) {
		r = idp_jws_reason_name(why);
		goto done;
	}
	if (idpd_own_token(v, &ver)) {
		r = "idpd_token";
		goto done;
	}
	p = json_string_value(json_object_get(ver.claims, "iss"));
	if (p == NULL || strcmp(p, h->issuer) != 0) {
		r = "issuer_mismatch";
		goto done;
	}
	if (!audience_holds(json_object_get(ver.claims, "aud"), h->audience)) {
		r = "audience_mismatch";
		goto done;
	}
	if (idp_jwt_check_time(ver.claims, clock, v->leeway_ms / 1000, IDP_JWT_REQUIRE_EXP, &why) !=
	    IDP_OK) {
		r = idp_jws_reason_name(why);
		goto done;
	}
	p = json_string_value(json_object_get(ver.claims, h->claim));
	if (p == NULL || !principal_ok(p)) {
		r = "principal_missing";
		goto done;
	}
	r = email_verified_refusal(h, ver.claims);
	if (r != NULL)
		goto done;
	snprintf(out->principal, sizeof(out->principal), "%s", p);
	snprintf(out->idp, sizeof(out->idp), "%s", h->name);
	/*
	 * Agent owners are email addresses: a provider stands for one only when
	 * its principal is the email it verified (email_verified_refusal).  With
	 * another claim (sub, upn, preferred_username) the principal may merely
	 * look like an address that the user chose.
	 */
	out->vouches_for_owners = h->vouches_for_owners && strcmp(h->claim, "email") == 0;
	out->expires_at_s = (int64_t)json_number_value(json_object_get(ver.claims, "exp"));
	rc = IDP_OK;
done:
	idp_jws_verified_cleanup(&ver);
	if (reason != NULL)
		*reason = r;
	return rc;
}

/*
 * The reload's check: the verifier of next, built from the bytes its load
 * read, its jwks_uri providers' remotes made but not yet fetched, so that a
 * refused reload leaves no trace.
 */
static int
reload_prepare(struct idpd_app *app, const struct idpd_config *next, void **staged,
               struct idp_diag *diag)
{
	struct human_verifier *v = human_verifier_new(next, diag);

	(void)app;
	*staged = v;
	return v != NULL ? IDP_OK : IDP_EINVAL;
}

/*
 * Put v's jwks_uri remotes in force (jwks_remote_publish): a provider the
 * running verifier already has keeps its remote, keys and all; a new one is
 * fetched, and waited for (JWKS_REMOTE_START_WAIT_MS at most), so that its
 * first tokens find its keys when it answers.  Before v is installed: v is
 * still the caller's alone.  Main thread.
 */
static void
publish_remotes(struct human_verifier *v)
{
	for (size_t i = 0; i < v->n_idps; i++)
		if (v->idps[i].remote != NULL)
			v->idps[i].remote = jwks_remote_publish(v->idps[i].remote);
	jwks_remote_wait_tried(JWKS_REMOTE_START_WAIT_MS);
}

/* The reload's apply: exactly the verifier the check built.  Cannot fail. */
static int
reload_commit(struct idpd_app *app, void *staged, struct idp_diag *diag)
{
	struct human_verifier *v = staged;

	(void)app;
	(void)diag;
	publish_remotes(v);
	install(v);
	log_info("human_auth: %zu identity provider(s) loaded", v->n_idps);
	return IDP_OK;
}

static void
reload_discard(void *staged)
{
	verifier_unref(staged);
}

static const struct app_reload_stage reload_stage = {reload_prepare, reload_commit, reload_discard};

int
human_auth_init(struct idpd_app *app, struct idp_diag *diag)
{
	struct human_verifier *v;

	if (jwks_remote_init() != IDP_OK) {
		idp_diag_add(diag,
		             "human_auth: cannot register the jwks metrics or readiness check");
		return IDP_EINVAL;
	}
	v = human_verifier_new(app->cfg, diag);
	if (v == NULL)
		return IDP_EINVAL;
	/* Bounded: a provider that does not answer is not waited for, its
	 * tokens answer 503 and /readyz says so until a fetch succeeds. */
	publish_remotes(v);
	install(v);
	if (app_on_reload_staged(&reload_stage) != IDP_OK) {
		idp_diag_add(diag, "human_auth: cannot register the reload hook");
		return IDP_EINVAL;
	}
	return IDP_OK;
}

void
human_auth_shutdown(void)
{
	install(NULL);
}

int
authenticate_human(struct http_req *req, struct human_principal *out, const char **reason)
{
	struct human_verifier *v = verifier_current();
	const char *tok = http_req_bearer(req);
	int rc;

	memset(out, 0, sizeof(*out));
	if (v == NULL) {
		if (reason != NULL)
			*reason = "not_ready";
		return IDP_EUNAVAIL;
	}
	if (tok == NULL) {
		if (reason != NULL)
			*reason = "missing";
		verifier_unref(v);
		return IDP_EUNAUTH;
	}
	rc = human_token_verify(v, tok, strlen(tok), idp_clock_system(), out, reason);
	verifier_unref(v);
	if (rc == IDP_EUNAVAIL && out->retry_after_s > 0) {
		char ra[16];

		snprintf(ra, sizeof(ra), "%d", out->retry_after_s);
		http_add_header(req, "Retry-After", ra);
	}
	return rc;
}
