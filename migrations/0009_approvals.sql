-- 0009_approvals: human approvals of token and delegation requests.
--
-- A request that needs a human's approval (REQUIRE_APPROVAL) leaves one
-- row here, bound to exactly what was asked: the kind of request, the agent
-- that asked, its task, the set of scopes and the target (the audience of an
-- access token, the delegate of a delegation).  The task's human principal,
-- or the agent's owner (copied at request time, so an owner changed later
-- does not gain or lose the decision), or an operator with the approver
-- role decides it; the agent then retries its request with the approval's
-- id, and the approval is spent by one
--   UPDATE ... SET status = 'used' WHERE id = $1 AND status = 'approved'
--              AND expires_at > now() AND <the binding matches>
-- so it serves at most once.  Expiry is measured by PostgreSQL's clock on
-- both sides, so instances with skewed clocks agree.  An approval past its
-- expires_at keeps its stored status (pending or approved) and reads as
-- "expired": nothing has to run for it to stop working.
--
-- The scope is stored as a set: sorted bytewise (the C collation) without
-- duplicates, the form idpd builds on both sides, so equality of the arrays
-- is equality of the sets.

CREATE FUNCTION idpd_text_set(a text[]) RETURNS text[]
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT coalesce(array_agg(DISTINCT x COLLATE "C" ORDER BY x COLLATE "C"), '{}')
    FROM unnest(a) AS x
$$;

CREATE TABLE approvals (
    id              text PRIMARY KEY CHECK (id ~ '^apr_[A-Za-z0-9_-]{16,60}$'),
    kind            text NOT NULL CHECK (kind IN ('token', 'delegation')),
    agent_id        text NOT NULL REFERENCES agents (id),
    task_id         text NOT NULL REFERENCES tasks (id),
    human_principal text NOT NULL CHECK (length(human_principal) BETWEEN 1 AND 320),
    agent_owner     text NOT NULL CHECK (length(agent_owner) BETWEEN 3 AND 320),
    scope           text[] NOT NULL
                    CHECK (cardinality(scope) BETWEEN 1 AND 64 AND scope = idpd_text_set(scope)),
    target          text NOT NULL CHECK (length(target) BETWEEN 1 AND 512),
    reason          text NOT NULL CHECK (length(reason) BETWEEN 1 AND 1024),
    rules           text[] NOT NULL DEFAULT '{}' CHECK (cardinality(rules) <= 64),
    status          text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'approved', 'denied', 'used')),
    created_at      timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL,
    decided_at      timestamptz,
    decided_by      text CHECK (length(decided_by) BETWEEN 1 AND 320),
    decided_by_kind text CHECK (decided_by_kind IN ('human', 'operator')),
    decision_note   text CHECK (length(decision_note) BETWEEN 1 AND 1024),
    used_at         timestamptz,
    request_id      text CHECK (length(request_id) BETWEEN 1 AND 128),
    CHECK (expires_at > created_at),
    -- decided exactly when no longer pending, with the whole trail
    CHECK ((status = 'pending') = (decided_at IS NULL)),
    CHECK ((decided_at IS NULL) = (decided_by IS NULL)),
    CHECK ((decided_at IS NULL) = (decided_by_kind IS NULL)),
    CHECK (decision_note IS NULL OR decided_at IS NOT NULL),
    CHECK (decided_at IS NULL OR decided_at >= created_at),
    -- used exactly once, and only what was approved
    CHECK ((status = 'used') = (used_at IS NOT NULL)),
    CHECK (used_at IS NULL OR used_at >= decided_at)
);

-- The filters of GET /v1/approvals, each with (created_at, id) for keyset
-- pagination: by status (the approvers' queue), by who may decide (the
-- task's human, the agent's owner), by task and by agent.
CREATE INDEX approvals_status ON approvals (status, created_at, id);
CREATE INDEX approvals_human ON approvals (human_principal, created_at, id);
CREATE INDEX approvals_owner ON approvals (agent_owner, created_at, id);
CREATE INDEX approvals_task ON approvals (task_id, created_at, id);
CREATE INDEX approvals_agent ON approvals (agent_id, created_at, id);
CREATE INDEX approvals_created ON approvals (created_at, id);

-- A delegation token issued on an approval names it, so the links of a
-- chain that a human approved can be counted (the policy input
-- delegation.approvals) and traced back to the decision.
ALTER TABLE delegation_tokens ADD COLUMN approval_id text REFERENCES approvals (id);
CREATE UNIQUE INDEX delegation_tokens_approval ON delegation_tokens (approval_id)
    WHERE approval_id IS NOT NULL;
