/*
 * refusal.c - auth.failed events for refused credentials (audit_refusal.h).
 *
 * Anyone can send a bad credential, so the events are rate limited: a
 * token bucket of REFUSAL_BURST events refilled at REFUSAL_RATE a second,
 * process wide.  A refusal the bucket has no room for is counted, and the
 * next event recorded says how many went unrecorded before it
 * (detail.suppressed), so a SIEM still sees the size of a flood while the
 * log grows by at most REFUSAL_RATE rows a second from it.
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>

#include "idpd/audit_refusal.h"
#include "idpd/audit_writer.h"
#include "idpd/clock.h"
#include "idpd/http.h"
#include "idpd/log.h"
#include "idpd/metrics.h"

#define REFUSAL_RATE 20  /* events a second, sustained */
#define REFUSAL_BURST 50 /* events at once after a quiet spell */

static struct {
	/* audit.refusal_lock: guards tokens, last_us and unrecorded. */
	pthread_mutex_t lock;
	double tokens;
	int64_t last_us;
	uint64_t unrecorded; /* suppressed since the last recorded event */
	_Atomic uint64_t recorded_total, suppressed_total;
} R = {.lock = PTHREAD_MUTEX_INITIALIZER, .tokens = REFUSAL_BURST};

/*
 * Take one token.  true with *suppressed the refusals left unrecorded
 * since the last one taken (and reset), or false (counted).
 */
static bool
take(uint64_t *suppressed)
{
	int64_t now = idp_mono_us();
	bool ok;

	pthread_mutex_lock(&R.lock);
	if (R.last_us != 0 && now > R.last_us) {
		R.tokens += (double)(now - R.last_us) * REFUSAL_RATE / 1e6;
		if (R.tokens > REFUSAL_BURST)
			R.tokens = REFUSAL_BURST;
	}
	R.last_us = now;
	ok = R.tokens >= 1.0;
	if (ok) {
		R.tokens -= 1.0;
		*suppressed = R.unrecorded;
		R.unrecorded = 0;
	} else {
		R.unrecorded++;
	}
	pthread_mutex_unlock(&R.lock);
	atomic_fetch_add(ok ? &R.recorded_total : &R.suppressed_total, 1);
	return ok;
}

/* n refusals taken as recorded that were not: counted as suppressed. */
static void
give_back(uint64_t n)
{
	pthread_mutex_lock(&R.lock);
	R.unrecorded += n;
	pthread_mutex_unlock(&R.lock);
	atomic_fetch_sub(&R.recorded_total, 1);
	atomic_fetch_add(&R.suppressed_total, 1);
}

void
audit_refused(struct http_req *req, enum audit_actor_kind kind, const char *actor,
              const char *endpoint, const char *reason)
{
	const char *where = endpoint != NULL ? endpoint : http_req_route(req);
	struct audit_event *ev;
	uint64_t suppressed = 0;

	if (!take(&suppressed))
		return;
	ev = audit_refusal_new(kind, actor, http_req_id(req), http_req_peer(req), where,
	                       reason != NULL ? reason : "unknown");
	if (ev != NULL && suppressed > 0 &&
	    audit_event_put_detail(ev, "suppressed", json_integer((json_int_t)suppressed)) !=
	        IDP_OK) {
		audit_event_free(ev);
		ev = NULL;
	}
	if (ev == NULL || audit_emit_nowait(ev) != IDP_OK) {
		/* Not recorded after all (the queue full, as in a flood): it and
		 * the count it carried go to the next one. */
		give_back(suppressed + 1);
		log_debug("audit: a refusal on %s was not recorded (%s)", where,
		          reason != NULL ? reason : "unknown");
	}
}

void
audit_refused_key(struct http_req *req, const char *reason)
{
	audit_refused(req, AUDIT_ACTOR_NONE, NULL, NULL, reason);
}

static void
collect(struct idp_buf *out, void *ctx)
{
	(void)ctx;
	if (idp_buf_printf(
	        out,
	        "# HELP idpd_audit_refusals_total refused credentials, by whether an auth.failed "
	        "event was queued or the rate limit left it out\n"
	        "# TYPE idpd_audit_refusals_total counter\n"
	        "idpd_audit_refusals_total{state=\"recorded\"} %" PRIu64 "\n"
	        "idpd_audit_refusals_total{state=\"suppressed\"} %" PRIu64 "\n",
	        atomic_load(&R.recorded_total), atomic_load(&R.suppressed_total)) != IDP_OK)
		log_warn("metrics: refusal counts truncated");
}

int
audit_refusal_init(void)
{
	return metrics_register(collect, NULL);
}
