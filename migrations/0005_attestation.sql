-- 0005_attestation: join tokens and the identity credentials attestation
-- issues.
--
-- A join token is a one-time secret an operator hands to a workload so it
-- can attest.  Only its SHA-256 (lowercase hex) is stored; the secret is
-- shown once, when it is made.  It is spent by one
--   UPDATE ... SET used_at = now() WHERE used_at IS NULL AND expires_at > now()
-- so two concurrent attempts cannot both succeed: the second waits for the
-- first's row lock and then finds used_at set.  Expiry uses the database's
-- clock on both sides (creation and use), so instances with skewed clocks
-- agree.
--
-- Every identity credential is recorded by its jti, with its agent, the key
-- that signed it and its lifetime, so it can be revoked one by one
-- (revoked_at).  A suspension or decommissioning revokes all of an agent's
-- credentials at once through agents.revocation_epoch instead.

CREATE TABLE agent_join_tokens (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    agent_id    text NOT NULL REFERENCES agents (id),
    token_hash  text NOT NULL UNIQUE CHECK (token_hash ~ '^[0-9a-f]{64}$'),
    created_at  timestamptz NOT NULL DEFAULT now(),
    created_by  text NOT NULL CHECK (length(created_by) BETWEEN 1 AND 256),
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz,
    CHECK (expires_at > created_at)
);

CREATE INDEX agent_join_tokens_agent ON agent_join_tokens (agent_id);
CREATE INDEX agent_join_tokens_expires ON agent_join_tokens (expires_at);

CREATE TABLE agent_credentials (
    jti         text PRIMARY KEY CHECK (jti ~ '^[A-Za-z0-9_-]{16,64}$'),
    agent_id    text NOT NULL REFERENCES agents (id),
    kid         text NOT NULL CHECK (kid ~ '^[A-Za-z0-9_-]{1,128}$'),
    method      text NOT NULL CHECK (method IN ('join_token', 'jwt')),
    attestor    text CHECK (length(attestor) BETWEEN 1 AND 64),
    issued_at   timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL,
    revoked_at  timestamptz,
    CHECK (expires_at > issued_at),
    CHECK ((method = 'jwt') = (attestor IS NOT NULL))
);

CREATE INDEX agent_credentials_agent ON agent_credentials (agent_id, issued_at);
CREATE INDEX agent_credentials_expires ON agent_credentials (expires_at);
