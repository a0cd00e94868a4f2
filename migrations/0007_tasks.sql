-- 0007_tasks: tasks started by humans, and the delegation tokens issued
-- within them.
--
-- A task is opened by a human (authenticated by an [[idp]]) for one root
-- agent and a scope within that agent's capabilities.  Completing it is
-- final: every delegation token of the task gets revoked_at in the same
-- transaction, and the task's status makes every later check fail even for
-- a token that escaped the UPDATE.
--
-- Each delegation token is recorded by its jti with its parent's jti (NULL
-- for the root token a task starts with), so revoking one token can reach
-- every token derived from it, and with the hash-chain value it carries
-- (docs/tokens.md, "Tasks").

CREATE TABLE tasks (
    id              text PRIMARY KEY CHECK (id ~ '^task_[A-Za-z0-9_-]{16,64}$'),
    human_principal text NOT NULL CHECK (length(human_principal) BETWEEN 1 AND 320),
    idp             text NOT NULL CHECK (length(idp) BETWEEN 1 AND 64),
    root_agent      text NOT NULL REFERENCES agents (id),
    scope           text[] NOT NULL CHECK (cardinality(scope) BETWEEN 1 AND 64),
    description     text NOT NULL DEFAULT '' CHECK (length(description) <= 1024),
    status          text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'completed')),
    created_at      timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL,
    completed_at    timestamptz,
    completed_by    text CHECK (length(completed_by) BETWEEN 1 AND 320),
    CHECK (expires_at > created_at),
    CHECK ((status = 'completed') = (completed_at IS NOT NULL))
);

CREATE INDEX tasks_human ON tasks (human_principal, created_at);
CREATE INDEX tasks_root_agent ON tasks (root_agent, created_at);

CREATE TABLE delegation_tokens (
    jti         text PRIMARY KEY CHECK (jti ~ '^[A-Za-z0-9_-]{16,64}$'),
    task_id     text NOT NULL REFERENCES tasks (id),
    parent_jti  text REFERENCES delegation_tokens (jti),
    agent_id    text NOT NULL REFERENCES agents (id),
    scope       text[] NOT NULL CHECK (cardinality(scope) BETWEEN 1 AND 64),
    depth       integer NOT NULL CHECK (depth >= 0),
    chain_hash  text NOT NULL CHECK (chain_hash ~ '^sha256:[0-9a-f]{64}$'),
    kid         text NOT NULL CHECK (kid ~ '^[A-Za-z0-9_-]{1,128}$'),
    issued_at   timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL,
    revoked_at  timestamptz,
    CHECK (expires_at > issued_at),
    CHECK ((parent_jti IS NULL) = (depth = 0))
);

CREATE INDEX delegation_tokens_task ON delegation_tokens (task_id);
CREATE INDEX delegation_tokens_parent ON delegation_tokens (parent_jti) WHERE parent_jti IS NOT NULL;
CREATE INDEX delegation_tokens_expires ON delegation_tokens (expires_at);
