/*
 * world.h - the setting of the token-service integration tests: an IdP
 * whose tokens authenticate humans, API keys for every operator role, the
 * [[resources]] of the walkthrough, and helpers to register agents, attest
 * them and start tasks.  Each helper asserts (cmocka) that its step worked,
 * so a test reads as the story it tells.
 */
#ifndef IDPD_TEST_WORLD_H
#define IDPD_TEST_WORLD_H

#include <stddef.h>

#include "harness.h"

#define WORLD_IDP_ISS "https://sso.example.com"
#define WORLD_AWS "https://aws.example.com"
#define WORLD_BILLING "https://billing.example.com"
#define WORLD_REPORTS "https://reports.example.com"

/* API keys (the secrets), one per role. */
struct world_keys {
	char registrar[64], admin[64], introspector[64], approver[64], auditor[64];
};

struct world {
	struct idpd_proc p;
	char db[64];
	struct world_keys k;
};

/*
 * Start idpd on a fresh database db with the world's config and extra_toml
 * appended (may be NULL; a [policy] table there replaces the shipped
 * policy directory).
 */
void world_start(struct world *w, const char *db, const char *extra_toml);
void world_stop(struct world *w);

/* A bearer token of the world's IdP for email, valid 10 minutes; free() it. */
char *world_human_token(const char *email);

/* POST /v1/agents with body (JSON); asserts 201. */
void world_register(struct world *w, const char *body);
/* A join token, then join-token attestation: the agent's identity credential into out. */
void world_credential(struct world *w, const char *id, char *out, size_t len);
/* POST /v1/tasks as human for root_agent with scope_json; the task id and root token (free()). */
void world_task(struct world *w, const char *human, const char *root_agent, const char *scope_json,
                char task_id[80], char **root_token);

/* method path with bearer and a JSON body (either may be NULL); asserts the transport worked. */
void world_call(struct world *w, const char *method, const char *path, const char *bearer,
                const char *body, struct http_resp *r);
/* POST path with a form body, and bearer (NULL: none) as the Authorization. */
void world_form(struct world *w, const char *path, const char *bearer, const char *form,
                struct http_resp *r);
/* Verify token against the served JWKS (ES256, typ); its claims, a new reference. */
json_t *world_verify(struct world *w, const char *token, const char *typ);
/* The integer a one-value query returns. */
long world_count(struct world *w, const char *sql);

#endif /* IDPD_TEST_WORLD_H */
