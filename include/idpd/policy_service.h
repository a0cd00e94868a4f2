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
/*
 * POST /v1/policies/reload: read policy.dir, audit (policy.reloaded, actor
 * the operator actor_name) and install it.  IDP_OK with *loaded (if not
 * NULL; unref it) the set now in force; IDP_EUNAVAIL when the audit log
 * cannot take the event; IDP_EINVAL with diag when the files have errors.
 * The old set stays on failure.  Any worker thread.
 */
int policy_service_reload(const char *actor_name, const char *request_id, struct idp_diag *diag,
                          struct policy_set **loaded) IDP_WUR;
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
/*
 * What a caller inside idpd needs of a decision, copied out of the set so
 * that it outlives it.  Strings point into text, which the outcome owns;
 * policy_outcome_cleanup() frees it.
 */
struct policy_outcome {
	enum policy_effect effect;
	const char *reason;
	const char *rules[POLICY_MAX_MATCHES]; /* ids of the applied rules, in order */
	size_t n_rules;
	/* ALLOW_WITH_CONDITIONS only: the combined conditions. */
	bool has_conditions;
	bool has_max_ttl;
	int64_t max_ttl; /* seconds */
	bool enhanced_logging;
	bool narrowed; /* scopes below replace the requested ones */
	const char *scopes[POLICY_MAX_GRANTED];
	size_t n_scopes;
	char *text;
};
/*
 * policy_service_decide for an input built with the setters: the same
 * checks as the JSON reader (policy_input_validate), request.action_class
 * derived, the same context filled in and, when live, the same counting
 * and learning; in is completed in place.  IDP_OK with *out filled (release
 * it with policy_outcome_cleanup); IDP_EUNPROCESSABLE with diag when the
 * input breaks a limit; IDP_EUNAVAIL when no set is loaded (out is then
 * empty and needs no cleanup).  Any thread.
 */
int policy_service_decide_input(struct policy_input *in, bool live, struct policy_outcome *out,
                                struct idp_diag *diag) IDP_WUR;
void policy_outcome_cleanup(struct policy_outcome *o);
/* ["rule", ...]: a new array. */
json_t *policy_outcome_rules_json(const struct policy_outcome *o);
/*
 * {"max_ttl"?, "scopes"?, "enhanced_logging"} as policy_decision_json
 * writes "conditions"; NULL unless the effect is ALLOW_WITH_CONDITIONS.
 */
json_t *policy_outcome_conditions_json(const struct policy_outcome *o);
/* The agent section of a policy input from the registry's record; a new object. */
json_t *policy_agent_json(const struct registry_agent *a);
/* POST /v1/policy/evaluate, /access/v1/evaluation(s), GET /v1/policies, reload. */
int policy_routes(struct http_router *r, struct idpd_app *app) IDP_WUR;

#endif /* IDPD_POLICY_SERVICE_H */
