/*
 * world.h - the setting of the token-service integration tests: an IdP
 * whose tokens authenticate humans, API keys for every operator role, the
 * [[resources]] of the walkthrough, and helpers to register agents, attest
 * them, start tasks, delegate, introspect and revoke.  Each helper asserts
 * (cmocka) that its step worked, so a test reads as the story it tells.
 */
#ifndef IDPD_TEST_WORLD_H
#define IDPD_TEST_WORLD_H

#include <stdbool.h>
#include <stddef.h>

#include "harness.h"

struct idp_jws_key;

#define WORLD_IDP_ISS "https://sso.example.com"
#define WORLD_PARTNER_ISS "https://sso.partner.example"
#define WORLD_AWS "https://aws.example.com"
#define WORLD_BILLING "https://billing.example.com"
#define WORLD_REPORTS "https://reports.example.com"

/*
 * API keys (the secrets), one per role.  Their names, which answers and
 * audit events give: ci-registrar, ci-admin, resource-api (introspector),
 * ops-approver, ci-auditor, ci-cron (maintenance).
 */
struct world_keys {
	char registrar[64], admin[64], introspector[64], approver[64], auditor[64], maintenance[64];
};

struct world {
	struct idpd_proc p;
	char db[64];
	struct world_keys k;
	char *toml; /* the config it was started with, for a peer */
};

/* What a test may change in the world's config; NULL fields keep the default. */
struct world_opts {
	const char *issuer;        /* identity.issuer (default: idpd's own) */
	const char *max_ttl;       /* tasks.max_ttl (default "8h") */
	const char *max_staleness; /* revocation.max_staleness (default "2s") */
	const char *leeway;        /* identity.leeway (default idpd's) */
	const char *idp_toml;      /* lines appended to the world IdP's [[idp]] table */
	const char *extra_toml;    /* appended; a [policy] table replaces the shipped policies */
};

/* Start idpd on a fresh database db with the world's config and o (may be NULL). */
void world_start_opts(struct world *w, const char *db, const struct world_opts *o);
/* The same with only extra_toml (may be NULL) appended. */
void world_start(struct world *w, const char *db, const char *extra_toml);
/*
 * A second idpd on w's database with w's config: another instance of the
 * same deployment.  Every helper works on it; stop it with world_stop.
 */
void world_start_peer(const struct world *w, struct world *peer);
void world_stop(struct world *w);
/* A cmocka group teardown: removes the IdP's JWKS file and frees its key. */
int world_teardown(void **state);

/*
 * A bearer token of the world's IdP for email (email_verified true), valid
 * 10 minutes; free() it.
 */
char *world_human_token(const char *email);
/*
 * An IdP token for email (email_verified true) with audience aud, expiring
 * exp_in seconds from now (negative: already expired), signed by key (NULL:
 * the world's IdP key); free() it.
 */
char *world_idp_token(const struct idp_jws_key *key, const char *email, const char *aud,
                      long exp_in);

/*
 * A second identity provider, "partners", with its own key: the [[idp]]
 * table to add to a world's configuration (static storage), and a bearer
 * token of it for email (free() it).  Its principals may spell the same
 * strings as the world's "corp" for other people.
 */
/*
 * A token of the world's IdP with header typ (NULL: none) and the claims of
 * the JSON object text claims, to which iss, aud ("idpd"), iat and exp (10
 * minutes) are added when claims lacks them; nothing else is added
 * (email_verified neither).  free() it.
 */
char *world_idp_token_claims(const char *typ, const char *claims);

const char *world_partner_toml(void);
/* The partners' principal_claim in world_partner_toml (default "email"). */
extern const char *world_partner_claim;
char *world_partner_token(const char *email);

/*
 * An agent to register.  id, type, owner and caps are required; the other
 * fields are left out of the request when NULL (or 0 for max_depth, which
 * then is 2).  Arrays are JSON text.
 */
struct world_agent {
	const char *id, *type, *owner;
	const char *caps;        /* capabilities */
	const char *version;     /* agent_version */
	const char *environment; /* production, ... */
	const char *domains;
	const char *delegate_to;
	int max_depth;         /* delegation_constraints.max_chain_depth */
	const char *max_scope; /* max_scope_per_delegation (default "read") */
	const char *approvals; /* requires_human_approval_for (default []) */
	const char *rotation;  /* credential.rotation (default "30m") */
	const char *extra;     /* more members, ",\"k\":v,..." (may be NULL) */
};

/* POST /v1/agents with body (JSON); asserts 201. */
void world_register(struct world *w, const char *body);
/* Register a; asserts 201. */
void world_agent(struct world *w, const struct world_agent *a);
/* A join token, then join-token attestation: the agent's identity credential into out. */
void world_credential(struct world *w, const char *id, char *out, size_t len);
/* POST /v1/tasks as human for root_agent with scope_json; the task id and root token (free()). */
void world_task(struct world *w, const char *human, const char *root_agent, const char *scope_json,
                char task_id[80], char **root_token);
/* The same with the task's ttl (a duration); the root token's jti into jti (may be NULL). */
void world_task_ttl(struct world *w, const char *human, const char *root_agent,
                    const char *scope_json, const char *ttl, char task_id[80], char jti[80],
                    char **root_token);
/*
 * POST /v1/tasks as human with body; asserts 201.  The task id, the root
 * token's jti (jti may be NULL) and the root token (free()).
 */
void world_task_body(struct world *w, const char *human, const char *body, char task_id[80],
                     char jti[80], char **root_token);

/*
 * POST /v1/delegations as bearer: token delegated to `to` for scope, with
 * ttl (JSON text, NULL: none) and approval_id (NULL: none); the answer in r.
 */
void world_delegation(struct world *w, const char *bearer, const char *token, const char *to,
                      const char *scope, const char *ttl, const char *approval,
                      struct http_resp *r);
/* The same without an approval, asserting 201; the new delegation token (free()). */
char *world_delegate(struct world *w, const char *bearer, const char *token, const char *to,
                     const char *scope, const char *ttl);

/* method path with bearer and a JSON body (either may be NULL); asserts the transport worked. */
void world_call(struct world *w, const char *method, const char *path, const char *bearer,
                const char *body, struct http_resp *r);
/* POST path with a form body, and bearer (NULL: none) as the Authorization. */
void world_form(struct world *w, const char *path, const char *bearer, const char *form,
                struct http_resp *r);
/*
 * POST path with body, the whole Authorization value auth ("Bearer x",
 * "Basic y"; NULL: none) and Content-Type ctype (NULL: a form).
 */
void world_post(struct world *w, const char *path, const char *auth, const char *ctype,
                const char *body, struct http_resp *r);
/* POST /introspect as the introspector, with token_type_hint hint (NULL: none). */
void world_introspect(struct world *w, const char *tok, const char *hint, struct http_resp *r);
/*
 * Whether tok is active (introspected without a hint); asserts a 200 and,
 * when inactive, an answer of one member.  The answer into claims when
 * active (may be NULL; a new reference), else NULL.
 */
bool world_active(struct world *w, const char *tok, json_t **claims);
/* POST /revoke with auth ("Bearer x", "Basic y"); the status; the answer in out (may be NULL). */
long world_revoke_as(struct world *w, const char *auth, const char *tok, struct http_resp *out);
/* Verify token against the served JWKS (ES256, typ); its claims, a new reference. */
json_t *world_verify(struct world *w, const char *token, const char *typ);
/* The integer a one-value query returns. */
long world_count(struct world *w, const char *sql);

#endif /* IDPD_TEST_WORLD_H */
