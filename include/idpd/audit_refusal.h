/*
 * audit_refusal.h - a request refused for a bad credential, recorded.
 *
 * Every endpoint that authenticates its caller (an API key, an agent's
 * identity credential, a human's IdP token) records a credential it
 * refused as an auth.failed event: a replayed credential of a suspended
 * agent, a forged token or a guessed API key is a security event, and
 * the SIEM sees it next to everything else.  A request that sent no
 * credential at all is not recorded (health probes and scanners would
 * fill the log with nothing).  The events are queued without waiting, so
 * recording never slows an answer, and rate limited (20 a second, bursts
 * of 50, process wide; the next event recorded counts those left out in
 * detail.suppressed): a flood of bad credentials adds a bounded number of
 * rows and cannot fill the audit queue that durable events need.
 */
#ifndef IDPD_AUDIT_REFUSAL_H
#define IDPD_AUDIT_REFUSAL_H

#include "idpd/audit.h"

struct http_req;

/*
 * Record that req was refused: actor (kind NONE and NULL when nobody was
 * authenticated), endpoint (NULL: req's route) and reason, a stable code
 * such as "bad_signature" or "unknown_key", never the credential.  Best
 * effort: an event the queue cannot take is counted there, and logged at
 * debug level.  Any thread; never blocks.
 */
void audit_refused(struct http_req *req, enum audit_actor_kind kind, const char *actor,
                   const char *endpoint, const char *reason);
/* Register the refusal counters with /metrics.  Main thread, before serving. */
int audit_refusal_init(void) IDP_WUR;
/* audit_refused for an API key auth_require refused (auth_on_refusal). */
void audit_refused_key(struct http_req *req, const char *reason);

#endif /* IDPD_AUDIT_REFUSAL_H */
