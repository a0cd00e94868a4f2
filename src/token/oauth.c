/*
 * oauth.c - the standards surface of the token service: RFC 8693 token
 * exchange at POST /oauth2/token and RFC 8414 metadata at
 * /.well-known/oauth-authorization-server (docs/tokens.md "OAuth").
 *
 * Token exchange reaches the same core as POST /v1/token (access_issue):
 * the subject_token is the agent's delegation token (it names the task),
 * the actor_token is the agent's identity credential (it authenticates the
 * agent), audience or resource names the resource, scope the scopes.  The
 * answers are RFC 6749 §5 bodies; the mapping of idpd's outcomes to OAuth
 * error codes is in docs/tokens.md.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "idpd/access.h"
#include "idpd/audit_refusal.h"
#include "idpd/agent_auth.h"
#include "idpd/app.h"
#include "idpd/buf.h"
#include "idpd/config.h"
#include "idpd/http.h"
#include "idpd/json_out.h"
#include "idpd/jws.h"
#include "idpd/log.h"
#include "idpd/oauth.h"
#include "idpd/revocation.h"
#include "idpd/tasks.h"

#define GRANT_TOKEN_EXCHANGE "urn:ietf:params:oauth:grant-type:token-exchange"
#define TT_JWT "urn:ietf:params:oauth:token-type:jwt"
#define TT_ACCESS "urn:ietf:params:oauth:token-type:access_token"
/* idpd's own type for delegation tokens; a plain jwt type is accepted too. */
#define TT_DELEGATION "urn:idpd:params:oauth:token-type:delegation"

static char issuer[513];

/*
 * RFC 8414 section 2: the issuer is an https URL without query or fragment,
 * and section 3.3: a client checks that it equals the URL it fetched the
 * metadata under, less the well-known suffix.  A client that checks refuses
 * metadata naming "idpd"; the document is served anyway (the endpoint URLs
 * in it are right, and clients that do not check use them), with a warning
 * at start.  identity.issuer is restart-only, so one warning is enough.
 */
static bool
issuer_is_rfc8414(const char *s)
{
	return strncmp(s, "https://", 8) == 0 && s[8] != '\0' && strpbrk(s, "?#") == NULL;
}

int
oauth_init(struct idpd_app *app, struct idp_diag *diag)
{
	(void)diag;
	snprintf(issuer, sizeof(issuer), "%s", app->cfg->identity.issuer);
	if (!issuer_is_rfc8414(issuer))
		log_warn(
		    "oauth: identity.issuer \"%s\" is not an https URL: the metadata at "
		    "/.well-known/oauth-authorization-server will not satisfy RFC 8414 clients, "
		    "which require an https issuer equal to the URL they fetch it under; set "
		    "identity.issuer to idpd's public https URL (docs/tokens.md, \"OAuth\")",
		    issuer);
	return IDP_OK;
}

/*
 * RFC 6749 §5.2 codes for access_issue's refusals, all 400 but idpd's own
 * failures.  The approval a REQUIRE_APPROVAL waits on is answered as RFC
 * 8628 §3.5 answers a device grant (authorization_pending, access_denied,
 * expired_token); an approval id that is no approval of this request is an
 * invalid grant; anything wrong with the subject token is RFC 8693
 * §2.2.2's invalid_request.
 */
static const char *
oauth_error_for(const struct access_grant *g, int *status)
{
	const char *c = g->code != NULL ? g->code : "";

	*status = 400;
	if (g->status == 202 || strcmp(c, "approval_pending") == 0)
		return "authorization_pending";
	if (g->status >= 500) {
		*status = g->status;
		return g->status == 503 ? "temporarily_unavailable" : "server_error";
	}
	if (strcmp(c, "invalid_target") == 0)
		return "invalid_target";
	if (strcmp(c, "scope_outside_capabilities") == 0 ||
	    strcmp(c, "scope_outside_chain_capabilities") == 0 ||
	    strcmp(c, "scope_exceeds_max_per_delegation") == 0 ||
	    strcmp(c, "scope_not_within_delegation") == 0)
		return "invalid_scope";
	if (strcmp(c, "policy_denied") == 0 || strcmp(c, "approval_insufficient") == 0 ||
	    strcmp(c, "approval_denied") == 0)
		return "access_denied";
	if (strcmp(c, "approval_expired") == 0)
		return "expired_token";
	if (strncmp(c, "approval_", 9) == 0)
		return "invalid_grant";
	return "invalid_request";
}

/* The token endpoint's answer to an outcome: RFC 8693 §2.2. */
/*
 * The RFC 8693 §2.2.1 success body, written into one buffer sized up front
 * (so that no realloc leaves a copy of the token behind) and handed to
 * http_reply_take_secret, which wipes it once sent or withdrawn: the token
 * passes through no jansson string or dump that would be freed unwiped.
 */
static void
answer_issued(struct http_req *req, const struct access_grant *g)
{
	struct idp_buf b;
	size_t len, need;
	char *body;
	int rc;

	/*
	 * A scope character escapes to at most 6 bytes (\u00XX).  The cap is
	 * that bound, not a fixed size: a 16 KiB cap refused the reserve for a
	 * granted scope past about 2 KB, and a token already issued (and
	 * audited) went out as a 500.
	 */
	need = strlen(g->token) + 6 * strlen(g->scope) + 256;
	idp_buf_init(&b, need + 1);
	rc = idp_buf_reserve(&b, need);
	if (rc == IDP_OK)
		rc = idp_buf_puts(&b, "{\"access_token\":");
	if (rc == IDP_OK)
		rc = idp_json_put_str(&b, g->token);
	if (rc == IDP_OK)
		rc = idp_buf_printf(&b,
		                    ",\"issued_token_type\":\"" TT_ACCESS
		                    "\",\"token_type\":\"Bearer\",\"expires_in\":%lld,\"scope\":",
		                    (long long)g->expires_in);
	if (rc == IDP_OK)
		rc = idp_json_put_str(&b, g->scope);
	if (rc == IDP_OK)
		rc = idp_buf_putc(&b, '}');
	if (rc != IDP_OK) {
		log_error("oauth: bug: cannot write the token answer");
		if (b.data != NULL)
			idp_wipe(b.data, b.len);
		idp_buf_cleanup(&b);
		http_reply_oauth_error(req, 500, "server_error", "the token cannot be issued");
		return;
	}
	body = idp_buf_take(&b, &len);
	http_reply_take_secret(req, 200, "application/json", body, len);
}

static void
answer(struct http_req *req, struct access_grant *g)
{
	const char *err, *desc;
	char named[IDP_SCOPE_MAX_LEN + 96];
	json_t *body;
	int status;

	/* RFC 6749 5.1: both, on every answer of the token endpoint. */
	http_add_header(req, "Cache-Control", "no-store");
	http_add_header(req, "Pragma", "no-cache");
	if (g->status == 200) {
		answer_issued(req, g);
		return;
	}
	err = oauth_error_for(g, &status);
	desc = g->decided ? g->decision.reason : (g->code != NULL ? g->code : "refused");
	if (g->refused_scope[0] != '\0') {
		snprintf(named, sizeof(named), "%s (%s)", desc, g->refused_scope);
		desc = named;
	}
	body = json_pack("{s:s,s:o,s:s?}", "error", err, "error_description",
	                 http_oauth_description(desc), "idpd_code", g->code);
	if (body != NULL && g->status == 202) {
		json_object_set_new(body, "approval_id", json_string(g->approval_id));
		json_object_set_new(body, "approval_expires_at",
		                    json_integer((json_int_t)g->approval_expires_s));
	}
	if (body != NULL && g->decided)
		json_object_set_new(body, "rules", policy_outcome_rules_json(&g->decision));
	http_reply_json(req, status, body);
}

static void
exchange(struct http_req *req, void *ctx)
{
	struct http_form form, *f = &form;
	struct agent_principal who;
	struct access_grant g;
	static _Thread_local struct task_scopes scopes; /* 16 KiB: per thread, not per request */
	struct task_scopes *sc = &scopes;
	struct access_ask a = {.req = req, .who = &who};
	const char *grant, *subject, *stt, *actor, *att, *aud, *res, *scope, *rtt, *why = NULL;
	struct idp_diag d;
	int rc;

	(void)ctx;
	memset(&g, 0, sizeof(g));
	memset(&who, 0, sizeof(who));
	f->repeated = NULL;
	idp_diag_init(&d);
	/*
	 * The agent authenticates with its actor_token; there are no OAuth
	 * clients here (token_endpoint_auth_methods_supported is "none").
	 * Client authentication offered anyway is refused rather than ignored,
	 * with the challenge of the scheme the client used (RFC 6749 §5.2).
	 */
	{
		const char *authz = http_req_header(req, "Authorization");

		if (authz != NULL) {
			http_add_header(req, "WWW-Authenticate",
			                strncasecmp(authz, "Basic", 5) == 0
			                    ? "Basic realm=\"idpd\""
			                    : "Bearer realm=\"idpd\"");
			http_reply_oauth_error(req, 401, "invalid_client",
			                       "no client authentication is taken here: the agent "
			                       "authenticates with its actor_token");
			return;
		}
	}
	if (!http_req_is_form(req) || http_req_form(req, f, &d) != IDP_OK) {
		/* RFC 8693 §2.1 allows several; one token names one resource here. */
		if (f->repeated != NULL &&
		    (strcmp(f->repeated, "audience") == 0 || strcmp(f->repeated, "resource") == 0))
			http_reply_oauth_error(req, 400, "invalid_target",
			                       "one audience or resource per token");
		else
			http_reply_oauth_error(
			    req, 400, "invalid_request",
			    d.count > 0 ? idp_diag_str(&d)
			                : "the body must be application/x-www-form-urlencoded");
		return;
	}
	/* http_form_get reads a parameter without a value as omitted (RFC 6749 §3.1). */
	grant = http_form_get(f, "grant_type");
	if (grant == NULL || strcmp(grant, GRANT_TOKEN_EXCHANGE) != 0) {
		http_reply_oauth_error(req, 400,
		                       grant ? "unsupported_grant_type" : "invalid_request",
		                       "grant_type must be " GRANT_TOKEN_EXCHANGE);
		goto done;
	}
	subject = http_form_get(f, "subject_token");
	stt = http_form_get(f, "subject_token_type");
	actor = http_form_get(f, "actor_token");
	att = http_form_get(f, "actor_token_type");
	aud = http_form_get(f, "audience");
	res = http_form_get(f, "resource");
	scope = http_form_get(f, "scope");
	rtt = http_form_get(f, "requested_token_type");
	if (subject == NULL || stt == NULL || actor == NULL || att == NULL ||
	    (aud == NULL && res == NULL)) {
		http_reply_oauth_error(req, 400, "invalid_request",
		                       "subject_token, subject_token_type, actor_token, "
		                       "actor_token_type and audience or resource are required");
		goto done;
	}
	/* RFC 6749 §3.3: without a default scope, its absence is invalid_scope. */
	if (scope == NULL) {
		http_reply_oauth_error(req, 400, "invalid_scope",
		                       "scope is required: a token is for the scopes named");
		goto done;
	}
	if ((strcmp(stt, TT_JWT) != 0 && strcmp(stt, TT_DELEGATION) != 0) ||
	    strcmp(att, TT_JWT) != 0) {
		http_reply_oauth_error(req, 400, "invalid_request",
		                       "subject_token_type must be " TT_DELEGATION " or " TT_JWT
		                       ", actor_token_type " TT_JWT);
		goto done;
	}
	if (rtt != NULL && strcmp(rtt, TT_ACCESS) != 0 && strcmp(rtt, TT_JWT) != 0) {
		http_reply_oauth_error(req, 400, "invalid_request",
		                       "requested_token_type: only access tokens are issued here");
		goto done;
	}
	if (aud != NULL && res != NULL && strcmp(aud, res) != 0) {
		http_reply_oauth_error(req, 400, "invalid_target",
		                       "audience and resource name different resources");
		goto done;
	}
	{
		const char *stated = http_form_get(f, "reason");

		/* As POST /v1/token: the reason is echoed in the audit events. */
		if (stated != NULL && strlen(stated) > 1024) {
			http_reply_oauth_error(req, 400, "invalid_request",
			                       "reason: at most 1024 bytes");
			goto done;
		}
	}
	rc = authenticate_agent_token(actor, &who, &why);
	if (rc != IDP_OK) {
		log_info("oauth: actor token refused: %s", why ? why : "unknown");
		if (rc == IDP_EUNAUTH)
			audit_refused(req, AUDIT_ACTOR_NONE, NULL, NULL, why);
		if (rc == IDP_EUNAUTH) /* RFC 8693 §2.2.2 */
			http_reply_oauth_error(req, 400, "invalid_request",
			                       "the actor_token is not a valid agent credential");
		else
			http_reply_oauth_error(req, 503, "temporarily_unavailable",
			                       "idpd cannot authenticate now");
		goto done;
	}
	idp_diag_init(&d);
	{
		json_t *js = json_string(scope);

		if (js == NULL || !task_scopes_parse(js, sc, &d)) {
			json_decref(js);
			http_reply_oauth_error(req, 400, "invalid_scope",
			                       d.count > 0 ? idp_diag_str(&d) : "invalid scope");
			goto done;
		}
		json_decref(js);
	}
	a.audience = aud != NULL ? aud : res;
	a.scopes = sc;
	a.task_id = NULL; /* the subject token names it */
	a.delegation_token = subject;
	a.approval_id = http_form_get(f, "approval_id");
	a.reason = http_form_get(f, "reason");
	a.may_block = true; /* a pooled route */
	access_issue(&a, &g);
	access_finish(req, &g, answer);
done:
	access_grant_cleanup(&g);
	agent_principal_cleanup(&who);
}

/*
 * RFC 8414.  The endpoints are absolute URLs: under identity.issuer when it
 * is one (the recommended setting behind an ingress), else under the host
 * the client used (http_req_public_base, which sets the caching).
 */
static void
metadata(struct http_req *req, void *ctx)
{
	char base[600];
	json_t *m;

	(void)ctx;
	if (http_req_public_base(req, issuer, 300, base, sizeof(base)) != IDP_OK) {
		http_reply_problem(req, 400, "bad_request", NULL, "a Host header is required");
		return;
	}
	m = json_pack("{s:s,s:s+,s:s+,s:s+,s:s+}", "issuer", issuer, "token_endpoint", base,
	              "/oauth2/token", "introspection_endpoint", base, "/introspect",
	              "revocation_endpoint", base, "/revoke", "jwks_uri", base,
	              "/.well-known/jwks.json");
	if (m != NULL) {
		/* No authorization endpoint: no response types (RFC 8414 §2 asks for the member).
		 */
		json_object_set_new(m, "response_types_supported", json_array());
		json_object_set_new(m, "grant_types_supported",
		                    json_pack("[s]", GRANT_TOKEN_EXCHANGE));
		/* The agent authenticates with its actor_token, not as an OAuth client. */
		json_object_set_new(m, "token_endpoint_auth_methods_supported",
		                    json_pack("[s]", "none"));
		json_object_set_new(m, "introspection_endpoint_auth_methods_supported",
		                    json_pack("[s,s]", "client_secret_basic", "bearer"));
		json_object_set_new(m, "revocation_endpoint_auth_methods_supported",
		                    json_pack("[s,s]", "client_secret_basic", "bearer"));
		json_object_set_new(m, "subject_token_types_supported",
		                    json_pack("[s,s]", TT_DELEGATION, TT_JWT));
		json_object_set_new(m, "actor_token_types_supported", json_pack("[s]", TT_JWT));
		json_object_set_new(m, "issued_token_types_supported", json_pack("[s]", TT_ACCESS));
		json_object_set_new(m, "token_signing_alg_values_supported",
		                    json_pack("[s]", "ES256"));
	}
	http_reply_json(req, 200, m);
}

int
oauth_routes(struct http_router *r, struct idpd_app *app)
{
	(void)app;
	if (http_router_add(r, HTTP_POST, "/oauth2/token", exchange, NULL) != IDP_OK)
		return IDP_EINVAL;
	return http_router_add_ex(r, HTTP_GET, "/.well-known/oauth-authorization-server", metadata,
	                          NULL, HTTP_ROUTE_INLINE);
}
