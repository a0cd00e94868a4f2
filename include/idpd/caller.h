/*
 * caller.h - who calls an endpoint that humans, agents and operators share
 * (tasks, approvals, revocation): a human with an [[idp]] bearer token, an
 * agent with its identity credential, or an operator with an API key.
 */
#ifndef IDPD_CALLER_H
#define IDPD_CALLER_H

#include <stdbool.h>

#include "idpd/audit.h"
#include "idpd/common.h"
#include "idpd/human_auth.h"

struct http_req;

enum caller_kind { CALLER_HUMAN, CALLER_AGENT, CALLER_OPERATOR };

struct caller {
	enum caller_kind kind;
	char name[HUMAN_PRINCIPAL_MAX + 1]; /* principal, agent id or API key name */
	char idp[65];                       /* a human's [[idp]] */
	bool vouches_for_owners;            /* a human's: that [[idp]] may vouch for owners */
	unsigned roles;                     /* an operator's */
};

/*
 * A human or an agent by req's bearer token (a human's IdP token first,
 * then an agent's credential).  IDP_OK with *c filled; IDP_EUNAUTH (the
 * reasons, for logs only, in *why_human and *why_agent); IDP_EUNAVAIL when
 * idpd cannot tell.  Does not answer the request.  Any worker thread.
 */
int caller_authenticate(struct http_req *req, struct caller *c, const char **why_human,
                        const char **why_agent) IDP_WUR;

/*
 * An operator API key holding one of op_roles (admin passes), else a human
 * or an agent.  On failure answers the request with a problem (401 with
 * WWW-Authenticate, 403, 503), logs why under the name what, and returns
 * false.
 */
bool caller_identify(struct http_req *req, unsigned op_roles, const char *what, struct caller *c);

/*
 * The reason a refused bearer token is recorded with (audit_refused), from
 * caller_authenticate's two: the agent's when no [[idp]] issued the token.
 */
const char *caller_refusal_reason(const char *why_human, const char *why_agent);

/* The audit actor kind of c. */
enum audit_actor_kind caller_actor_kind(const struct caller *c);

#endif /* IDPD_CALLER_H */
