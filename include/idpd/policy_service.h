/*
 * policy_service.h - the policy engine inside the running idpd: the current
 * set (loaded from policy.dir at start, reloaded on SIGHUP and on
 * POST /v1/policies/reload), the configured time zone, and the endpoints.
 */
#ifndef IDPD_POLICY_SERVICE_H
#define IDPD_POLICY_SERVICE_H

#include "idpd/app.h"
#include "idpd/policy.h"

/* Load policy.dir and policy.timezone; a set with errors stops start-up.  Main thread. */
int policy_service_start(struct idpd_app *app, struct idp_diag *diag) IDP_WUR;
void policy_service_stop(void);
/* The engine holding the current set (policy_engine_acquire on it); any thread. */
struct policy_engine *policy_service_engine(void);
const struct policy_tz *policy_service_tz(void);
/* POST /v1/policy/evaluate, /access/v1/evaluation(s), GET /v1/policies, reload. */
int policy_routes(struct http_router *r, struct idpd_app *app) IDP_WUR;

#endif /* IDPD_POLICY_SERVICE_H */
