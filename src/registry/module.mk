# The Agent Identity Registry: input validation, records, the in-memory
# cache, PostgreSQL reads and writes, the HTTP API, the departed-owners list,
# and the cleanup endpoint with its job registry.  Scope patterns come from
# the policy module (scope.h), so MODULES must include policy.
LIB_SRCS += src/registry/agent.c src/registry/record.c src/registry/cache.c \
	src/registry/owners.c src/registry/db.c src/registry/registry.c src/registry/api.c \
	src/registry/maintenance.c src/registry/jobs.c src/registry/touch.c
# Attestation: selector mappings, the identity credential and agent
# authentication, join tokens and credentials in SQL, the endpoints.  Signs
# with the token module's keys (keys.h), so MODULES must include token.
LIB_SRCS += src/registry/attest_jwt.c src/registry/attest_credential.c \
	src/registry/attest_db.c src/registry/attest.c
UNIT_TESTS += registry attest touch
