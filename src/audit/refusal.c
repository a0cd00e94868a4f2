/*
 * refusal.c - auth.failed events for refused credentials (audit_refusal.h).
 */
#include "idpd/audit_refusal.h"
#include "idpd/audit_writer.h"
#include "idpd/http.h"
#include "idpd/log.h"

void
audit_refused(struct http_req *req, enum audit_actor_kind kind, const char *actor,
              const char *endpoint, const char *reason)
{
	const char *where = endpoint != NULL ? endpoint : http_req_route(req);
	struct audit_event *ev =
	    audit_refusal_new(kind, actor, http_req_id(req), http_req_peer(req), where,
	                      reason != NULL ? reason : "unknown");

	if (ev == NULL) {
		log_debug("audit: a refusal on %s could not be recorded (%s)", where,
		          reason != NULL ? reason : "unknown");
		return;
	}
	if (audit_emit_nowait(ev) != IDP_OK)
		log_debug("audit: a refusal on %s was not recorded (audit queue full)", where);
}

void
audit_refused_key(struct http_req *req, const char *reason)
{
	audit_refused(req, AUDIT_ACTOR_NONE, NULL, NULL, reason);
}
