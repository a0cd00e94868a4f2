/*
 * caller.c - who is calling; see caller.h.
 */
#include <stdio.h>
#include <string.h>

#include "idpd/agent_auth.h"
#include "idpd/audit_refusal.h"
#include "idpd/auth.h"
#include "idpd/caller.h"
#include "idpd/http.h"
#include "idpd/log.h"
#include "idpd/registry.h"

int
caller_authenticate(struct http_req *req, struct caller *c, const char **why_human,
                    const char **why_agent)
{
	struct human_principal h;
	struct agent_principal ap;
	int rc;

	memset(c, 0, sizeof(*c));
	*why_human = *why_agent = NULL;
	rc = authenticate_human(req, &h, why_human);
	if (rc == IDP_OK) {
		c->kind = CALLER_HUMAN;
		snprintf(c->name, sizeof(c->name), "%s", h.principal);
		snprintf(c->idp, sizeof(c->idp), "%s", h.idp);
		c->vouches_for_owners = h.vouches_for_owners;
		return IDP_OK;
	}
	if (rc != IDP_EUNAUTH)
		return rc;
	rc = authenticate_agent(req, &ap, why_agent);
	if (rc == IDP_OK) {
		c->kind = CALLER_AGENT;
		snprintf(c->name, sizeof(c->name), "%s", ap.agent->id);
		agent_principal_cleanup(&ap);
	}
	return rc;
}

bool
caller_identify(struct http_req *req, unsigned op_roles, const char *what, struct caller *c)
{
	const char *bearer = http_req_bearer(req), *why = NULL, *why_agent = NULL;
	int rc;

	memset(c, 0, sizeof(*c));
	if (bearer != NULL && strncmp(bearer, AUTH_KEY_PREFIX, strlen(AUTH_KEY_PREFIX)) == 0) {
		struct auth_principal op;

		if (!auth_require(req, op_roles, &op))
			return false;
		c->kind = CALLER_OPERATOR;
		c->roles = op.roles;
		snprintf(c->name, sizeof(c->name), "%s", op.name);
		return true;
	}
	rc = caller_authenticate(req, c, &why, &why_agent);
	if (rc == IDP_OK)
		return true;
	log_info("%s: caller not authenticated (human: %s, agent: %s)", what, why ? why : "-",
	         why_agent ? why_agent : "-");
	if (rc == IDP_EUNAUTH && bearer != NULL)
		audit_refused(req, AUDIT_ACTOR_NONE, NULL, NULL,
		              caller_refusal_reason(why, why_agent));
	if (rc == IDP_EUNAUTH)
		http_add_header(req, "WWW-Authenticate", "Bearer");
	http_reply_error(req, rc == IDP_EUNAUTH ? IDP_EUNAUTH : IDP_EUNAVAIL,
	                 rc == IDP_EUNAUTH ? "a valid bearer token is required"
	                                   : "cannot authenticate now");
	return false;
}

const char *
caller_refusal_reason(const char *why_human, const char *why_agent)
{
	/* A token no [[idp]] issued (or one of idpd's own) was meant as an
	 * agent's credential: the agent check says why it failed. */
	if (why_human == NULL || strcmp(why_human, "no_idp") == 0 ||
	    strcmp(why_human, "kid_unknown") == 0 || strcmp(why_human, "idpd_token") == 0)
		return why_agent != NULL ? why_agent : why_human;
	return why_human;
}

enum audit_actor_kind
caller_actor_kind(const struct caller *c)
{
	return c->kind == CALLER_HUMAN   ? AUDIT_ACTOR_HUMAN
	       : c->kind == CALLER_AGENT ? AUDIT_ACTOR_AGENT
	                                 : AUDIT_ACTOR_OPERATOR;
}
