/*
 * oauth.h - the OAuth surface of the token service: RFC 8693 token exchange
 * (POST /oauth2/token, the same core as POST /v1/token, see access.h) and
 * RFC 8414 authorization server metadata
 * (GET /.well-known/oauth-authorization-server).
 */
#ifndef IDPD_OAUTH_H
#define IDPD_OAUTH_H

#include "idpd/common.h"

struct http_router;
struct idpd_app;

/*
 * Copy identity.issuer, and log a warning when it is not an https URL
 * (the metadata then falls short of RFC 8414).  Main thread.
 */
int oauth_init(struct idpd_app *app, struct idp_diag *diag) IDP_WUR;
int oauth_routes(struct http_router *r, struct idpd_app *app) IDP_WUR;

#endif /* IDPD_OAUTH_H */
