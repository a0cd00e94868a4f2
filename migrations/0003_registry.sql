-- 0003_registry: the Agent Identity Registry.
--
-- One row per agent, with every field of the seed's Agent Identity Record
-- plus what the policies need (domains, environment, attestation selectors,
-- labels) and a version for optimistic concurrency (ETag / If-Match).
-- idpd validates every value before it gets here; the CHECK constraints are
-- the last line, so a bug or a hand-made INSERT cannot store what idpd would
-- refuse to read.
--
-- Agents are never deleted: decommissioned is a terminal status, kept so the
-- id cannot be reused and the record stays explainable.
--
-- revocation_epoch: every identity credential and token of the agent issued
-- at or before this instant is invalid.  Suspension and decommissioning set
-- it to the moment of the change; resuming does not clear it, so a token
-- from before a suspension stays dead.

CREATE TABLE agents (
    id                          text PRIMARY KEY
                                CHECK (id ~ '^[a-z0-9][a-z0-9._-]{0,127}$'),
    agent_type                  text NOT NULL
                                CHECK (agent_type ~ '^[a-z0-9][a-z0-9._-]{0,127}$'),
    agent_version               text CHECK (length(agent_version) BETWEEN 1 AND 64),
    model                       text CHECK (length(model) BETWEEN 1 AND 128),
    deployment                  text CHECK (length(deployment) BETWEEN 1 AND 256),
    owner                       text NOT NULL CHECK (length(owner) BETWEEN 3 AND 320),
    team                        text CHECK (length(team) BETWEEN 1 AND 128),
    created_at                  timestamptz NOT NULL DEFAULT now(),
    last_active                 timestamptz,
    status                      text NOT NULL DEFAULT 'active'
                                CHECK (status IN ('active', 'suspended', 'decommissioned')),
    capabilities                text[] NOT NULL CHECK (cardinality(capabilities) BETWEEN 1 AND 256),
    delegate_to                 text[] NOT NULL DEFAULT '{}'
                                CHECK (cardinality(delegate_to) <= 64),
    max_chain_depth             integer NOT NULL CHECK (max_chain_depth BETWEEN 0 AND 16),
    max_scope_per_delegation    text NOT NULL
                                CHECK (max_scope_per_delegation IN ('read', 'write', 'delete', 'admin')),
    requires_human_approval_for text[] NOT NULL DEFAULT '{}'
                                CHECK (requires_human_approval_for <@ ARRAY['read', 'write', 'delete', 'admin']),
    credential_type             text NOT NULL DEFAULT 'spiffe-jwt-svid'
                                CHECK (credential_type IN ('spiffe-jwt-svid', 'spiffe-x509-svid')),
    credential_rotation_ms      bigint NOT NULL DEFAULT 3600000
                                CHECK (credential_rotation_ms BETWEEN 300000 AND 86400000),
    credential_last_rotated     timestamptz,
    domains                     text[] NOT NULL DEFAULT '{}' CHECK (cardinality(domains) <= 32),
    environment                 text CHECK (environment ~ '^[a-z0-9][a-z0-9._-]{0,63}$'),
    attestation_selectors       text[] NOT NULL DEFAULT '{}'
                                CHECK (cardinality(attestation_selectors) <= 32),
    labels                      jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(labels) = 'object'),
    version                     bigint NOT NULL DEFAULT 1 CHECK (version >= 1),
    updated_at                  timestamptz NOT NULL DEFAULT now(),
    revocation_epoch            timestamptz,
    -- the last status change: when, by whom (an API key's name), why
    status_changed_at           timestamptz,
    status_changed_by           text,
    status_reason               text CHECK (length(status_reason) <= 1024),
    -- a decommissioned agent has its whole trail
    CHECK (status <> 'decommissioned'
           OR (revocation_epoch IS NOT NULL AND status_changed_at IS NOT NULL
               AND status_changed_by IS NOT NULL AND status_reason IS NOT NULL))
);

-- Filters of GET /v1/agents, each paired with id for keyset pagination.
CREATE INDEX agents_owner ON agents (owner, id);
CREATE INDEX agents_team ON agents (team, id) WHERE team IS NOT NULL;
CREATE INDEX agents_type ON agents (agent_type, id);
CREATE INDEX agents_status ON agents (status, id);

-- Exact scope containment, the same rule as scope_within() in C: requested
-- is within a set when one pattern alone matches every string requested can
-- match.  Patterns hold only letters, digits, "._-/" and '*', so the
-- containment test is one LIKE of requested (read literally) against the
-- pattern with '*' as '%' and '_' escaped.  Used by the capability filter.
CREATE FUNCTION idpd_scope_within(requested text, patterns text[]) RETURNS boolean
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT EXISTS (
        SELECT 1 FROM unnest(patterns) AS p
        WHERE requested LIKE replace(replace(p, '_', '\_'), '*', '%') ESCAPE '\'
    )
$$;

-- Cache invalidation: every instance LISTENs on 'agents' and re-reads the
-- row whose id it hears.  Only changes that bump the version notify, so a
-- last_active touch does not make every instance reload the record.
CREATE TRIGGER agents_notify_insert_delete AFTER INSERT OR DELETE ON agents
    FOR EACH ROW EXECUTE FUNCTION idpd_notify('agents');
CREATE TRIGGER agents_notify_update AFTER UPDATE ON agents
    FOR EACH ROW WHEN (OLD.version IS DISTINCT FROM NEW.version OR OLD.id IS DISTINCT FROM NEW.id)
    EXECUTE FUNCTION idpd_notify('agents');
