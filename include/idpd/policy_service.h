/*
 * policy_service.h - the policy engine inside the running idpd: the current
 * set (loaded from policy.dir at start, reloaded on SIGHUP and on
 * POST /v1/policies/reload), the configured time zone, and the endpoints.
 */
#ifndef IDPD_POLICY_SERVICE_H
#define IDPD_POLICY_SERVICE_H

#include "idpd/app.h"
#include "idpd/policy.h"

struct registry_agent;

/* Load policy.dir and policy.timezone; a set with errors stops start-up.  Main thread. */
int policy_service_start(struct idpd_app *app, struct idp_diag *diag) IDP_WUR;
void policy_service_stop(void);
/* The engine holding the current set (policy_engine_acquire on it); any thread. */
struct policy_engine *policy_service_engine(void);
const struct policy_tz *policy_service_tz(void);
/*
 * Evaluate input, the JSON shape of docs/policy-language.md, against the
 * current set.  What only idpd may know and the caller left out is filled
 * in: the local time, the agent's calls to the resource in the last minute
 * and its risk score.  live: a real request (counted, and the behavioural
 * baseline learns from it), not a dry run.  IDP_OK with *out a new decision
 * object (policy_decision_json plus "policy_hash"); IDP_EUNPROCESSABLE
 * with diag when input does not fit the model; IDP_EUNAVAIL when no set
 * is loaded.  Any thread.
 */
int policy_service_decide(const json_t *input, bool live, json_t **out,
                          struct idp_diag *diag) IDP_WUR;
/* The agent section of a policy input from the registry's record; a new object. */
json_t *policy_agent_json(const struct registry_agent *a);
/* POST /v1/policy/evaluate, /access/v1/evaluation(s), GET /v1/policies, reload. */
int policy_routes(struct http_router *r, struct idpd_app *app) IDP_WUR;

#endif /* IDPD_POLICY_SERVICE_H */
