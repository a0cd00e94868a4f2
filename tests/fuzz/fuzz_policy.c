/*
 * fuzz_policy - the policy language from source text to decision: lexer,
 * parser, checker and compiler on the input as one file, then, when it
 * compiles, evaluation on fixed inputs (complete, partial and empty) and the
 * JSON renderings.  Seeds: tests/fuzz/corpus/policy/, the shipped policies
 * and a file using every construct.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "idpd/policy.h"

static struct policy_input full, partial, empty;

static void
setup(void)
{
	static const char *const caps[] = {"ec2:Describe*", "s3:ListBuckets", "reports:write"};
	static const char *const scopes[] = {"ec2:DescribeInstances", "reports:write"};
	static const char *const domains[] = {"cloud", "reporting"};
	static const char *const chain[] = {"agent-a", "agent-b"};
	static const struct policy_kv labels[] = {{"clearance", "pii"}, {"tier", "gold"}};

	policy_input_init(&full);
	(void)policy_input_set_str(&full, POLICY_ATTR_AGENT_ID, "agent-cloud-inventory-001");
	(void)policy_input_set_str(&full, POLICY_ATTR_AGENT_TYPE, "cloud-inventory");
	(void)policy_input_set_str(&full, POLICY_ATTR_AGENT_STATUS, "active");
	(void)policy_input_set_str(&full, POLICY_ATTR_AGENT_TEAM, "platform");
	(void)policy_input_set_str(&full, POLICY_ATTR_AGENT_ENVIRONMENT, "production");
	(void)policy_input_set_list(&full, POLICY_ATTR_AGENT_CAPABILITIES, caps, 3);
	(void)policy_input_set_list(&full, POLICY_ATTR_AGENT_DOMAINS, domains, 2);
	(void)policy_input_set_map(&full, POLICY_ATTR_AGENT_LABELS, labels, 2);
	(void)policy_input_set_int(&full, POLICY_ATTR_AGENT_MAX_CHAIN_DEPTH, 3);
	(void)policy_input_set_list(&full, POLICY_ATTR_REQUEST_SCOPES, scopes, 2);
	(void)policy_input_set_int(&full, POLICY_ATTR_REQUEST_ACTION_CLASS, IDP_ACTION_WRITE);
	(void)policy_input_set_str(&full, POLICY_ATTR_REQUEST_AUDIENCE, "cloud-inventory-api");
	(void)policy_input_set_int(&full, POLICY_ATTR_REQUEST_TTL, 900);
	(void)policy_input_set_str(&full, POLICY_ATTR_RESOURCE_AUDIENCE, "cloud-inventory-api");
	(void)policy_input_set_str(&full, POLICY_ATTR_RESOURCE_DOMAIN, "cloud");
	(void)policy_input_set_str(&full, POLICY_ATTR_RESOURCE_CLASSIFICATION, "pii");
	(void)policy_input_set_str(&full, POLICY_ATTR_RESOURCE_ENVIRONMENT, "production");
	(void)policy_input_set_int(&full, POLICY_ATTR_DELEGATION_DEPTH, 2);
	(void)policy_input_set_list(&full, POLICY_ATTR_DELEGATION_CHAIN, chain, 2);
	(void)policy_input_set_int(&full, POLICY_ATTR_DELEGATION_APPROVALS, 0);
	(void)policy_input_set_int(&full, POLICY_ATTR_CONTEXT_HOUR, 22);
	(void)policy_input_set_int(&full, POLICY_ATTR_CONTEXT_MINUTE, 30);
	(void)policy_input_set_int(&full, POLICY_ATTR_CONTEXT_WEEKDAY, 5);
	(void)policy_input_set_int(&full, POLICY_ATTR_CONTEXT_CALLS, 150);
	(void)policy_input_set_int(&full, POLICY_ATTR_CONTEXT_RISK, 55);
	(void)policy_input_set_bool(&full, POLICY_ATTR_CONTEXT_APPROVAL, false);
	partial = full;
	for (int a = 0; a < POLICY_ATTR_COUNT; a += 2)
		policy_input_unset(&partial, a);
	policy_input_init(&empty);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct idp_diag diag;
	static int ready;
	const struct policy_input *inputs[] = {&full, &partial, &empty};
	struct policy_source src = {"fuzz.policy", (const char *)data, size};
	struct policy_set *set = NULL;

	if (!ready) {
		setup();
		ready = 1;
	}
	idp_diag_init(&diag);
	if (policy_set_compile(&src, 1, NULL, &set, &diag) != IDP_OK) {
		/* A refused file must say why. */
		if (diag.count == 0)
			abort();
		return 0;
	}
	for (size_t i = 0; i < sizeof(inputs) / sizeof(inputs[0]); i++) {
		struct policy_decision d;
		json_t *j;

		policy_eval(set, inputs[i], &d);
		if (d.n_matches > POLICY_MAX_MATCHES || d.cond.n_scopes > POLICY_MAX_GRANTED ||
		    (unsigned)d.effect > POLICY_DENY || d.reason == NULL)
			abort();
		j = policy_decision_json(&d);
		json_decref(j);
	}
	json_decref(policy_set_describe(set));
	policy_set_unref(set);
	return 0;
}
