/*
 * attest_int.h - what the attestation files share: the service's snapshot
 * of settings and attestors, and the SQL of join tokens and credentials.
 * Not for other modules: they use attest.h and agent_auth.h.
 */
#ifndef IDPD_ATTEST_INT_H
#define IDPD_ATTEST_INT_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "idpd/attest.h"
#include "idpd/jws.h"
#include "registry_int.h"

struct jwks_remote;

struct attestor {
	char *name;
	char *issuer;
	char *audience;
	unsigned algs;               /* IDP_JWS_ALLOW bits */
	struct idp_jws_keyset *keys; /* from jwks_file; NULL with remote */
	struct jwks_remote *remote;  /* from jwks_uri; NULL with keys */
	struct attest_selector_map *map;
	int64_t max_token_age_ms; /* a token living longer than this is refused */
};

/* The settings in force: immutable once published, reference counted. */
struct attest_conf {
	_Atomic int refs;
	char *trust_domain, *issuer, *audience;
	int64_t leeway_ms;
	int64_t join_token_ttl_ms;
	struct attestor *attestors;
	size_t n_attestors;
};

/* A new reference to the current settings, or NULL before attest_init.  Any thread. */
struct attest_conf *attest_conf_current(void);
void attest_conf_unref(struct attest_conf *c);

/* Whether aud (a string, or an array of strings) holds want (RFC 7519 4.1.3). */
bool attest_audience_holds(const json_t *aud, const char *want);

/* ---- SQL (attest_db.c); any worker thread ---- */

/*
 * Emit one attestation event (every pointer may be NULL but type): a gives
 * the agent's type and owner, detail is stolen.  Waits for durability under
 * audit.durability "sync".  IDP_EUNAVAIL when the audit log cannot take
 * it, IDP_EINTERNAL when a field is refused (a bug).
 */
int attest_emit(enum audit_type type, enum audit_outcome outcome, const struct registry_agent *a,
                const char *agent_id, enum audit_actor_kind actor, const char *actor_name,
                const char *request_id, const char *source_address, const char *token_id,
                json_t *detail) IDP_WUR;
/*
 * The same, queued without waiting for room or the commit (audit_emit_nowait):
 * for an event no answer depends on, sent by callers anyone can be, so a
 * flood of them holds no worker.  IDP_EUNAVAIL when the queue is full (the
 * event is dropped and counted as refused).
 */
int attest_emit_nowait(enum audit_type type, enum audit_outcome outcome,
                       const struct registry_agent *a, const char *agent_id,
                       enum audit_actor_kind actor, const char *actor_name, const char *request_id,
                       const char *source_address, const char *token_id, json_t *detail) IDP_WUR;

/*
 * Make a join token for agent id: under a share lock on the agent row
 * (IDP_ENOTFOUND; IDP_ECONFLICT when decommissioned), insert its hash,
 * emit agent.join_token_created (no secret), commit.  *token_id and
 * *expires_ms describe it.  IDP_EUNAVAIL when PostgreSQL or the audit log
 * cannot take it, or with *retry_after_s > 0 while the agent's revocation
 * epoch is still ahead (just after a suspension): a token made then would
 * be dead at birth.
 */
int attest_db_join_token_create(const char *id, const char *hash, int64_t ttl_ms,
                                const struct registry_actor *who, int64_t *token_id,
                                int64_t *expires_ms, int64_t *retry_after_s) IDP_WUR;

/* The evidence an attempt presents, and what becomes of it. */
struct attest_attempt {
	const char *agent_id;
	const char *method;        /* "join_token" | "jwt" */
	const char *join_hash;     /* join_token: the presented token's hash */
	const struct attestor *at; /* jwt: the attestor that verified the token */
	const json_t *claims;      /* jwt: the verified claims */
	/* jwt: the workload token's exp (ms); the credential ends no later */
	int64_t evidence_exp_ms;
	const char *request_id;
	const char *source_address;
	/* results */
	const char *reason;   /* failure code for the audit event */
	char failed_sel[300]; /* the selector that failed, if one did ("" if none) */
	json_t *matched;      /* jwt: the selectors matched (array), owned by the attempt */
	int64_t join_token_id;
	/* > 0: an IDP_EUNAVAIL that passes by then (a revocation epoch ahead) */
	int64_t retry_after_s;
};

/*
 * The issuing half of an attestation, in one transaction: spend the join
 * token (join_token), lock the agent row, check its status and (jwt) its
 * selectors, sign the credential with the active key (its exp cut back to
 * a->evidence_exp_ms when set), record its jti, set
 * credential_last_rotated, emit agent.attested, commit, publish the new
 * record.  Returns IDP_OK with *credential (caller frees), *jti_out,
 * *exp_s; IDP_EUNAUTH (a->reason set) for wrong evidence, or evidence that
 * expires before a credential of one second could be cut; IDP_EFORBIDDEN
 * (a->reason "agent_suspended" / "agent_decommissioned"); IDP_EUNAVAIL, with
 * a->retry_after_s set when it is the agent's revocation epoch, still ahead
 * just after a resume (a->reason "revocation_epoch_ahead"); nothing is
 * spent then.
 * Emits nothing on failure: the caller records agent.attestation_failed.
 */
int attest_db_issue(const struct attest_conf *conf, const struct idp_clock *clock,
                    struct attest_attempt *a, char **credential, char jti_out[ATTEST_JTI_LEN + 1],
                    int64_t *exp_s) IDP_WUR;

/*
 * Whether credential jti of agent id is recorded and unrevoked: IDP_OK,
 * IDP_EUNAUTH with *reason "jti_unknown" or "jti_revoked", IDP_EUNAVAIL.
 */
int attest_db_credential_check(const char *jti, const char *agent_id, const char **reason) IDP_WUR;

#endif /* IDPD_ATTEST_INT_H */
