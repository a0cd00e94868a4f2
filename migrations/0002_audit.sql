-- 0002_audit: the audit log, which is also the outbox the SIEM sinks ship from.
--
-- Each idpd process writes through one writer thread, which keeps a hash
-- chain of its own: writer_id names the chain, seq numbers its events without
-- gaps, prev_hash is the previous event's hash (32 zero bytes for the first)
-- and hash = SHA-256(prev_hash || body).  body is the event's canonical JSON,
-- byte for byte what was hashed, so it is text and not jsonb (jsonb would
-- reorder keys).  The other columns copy fields of body for queries; verify
-- checks they still agree with it.

CREATE TABLE audit_events (
    id              bigserial PRIMARY KEY,
    event_id        text NOT NULL,
    writer_id       text NOT NULL,
    seq             bigint NOT NULL CHECK (seq >= 1),
    ts              timestamptz NOT NULL,
    type            text NOT NULL,
    agent_id        text,
    human_principal text,
    task_id         text,
    severity        smallint NOT NULL,
    outcome         text,
    body            text NOT NULL,
    prev_hash       bytea NOT NULL CHECK (length(prev_hash) = 32),
    hash            bytea NOT NULL CHECK (length(hash) = 32),
    UNIQUE (writer_id, seq)
);

CREATE INDEX audit_events_task ON audit_events (task_id, id) WHERE task_id IS NOT NULL;
CREATE INDEX audit_events_agent ON audit_events (agent_id, id) WHERE agent_id IS NOT NULL;
CREATE INDEX audit_events_human ON audit_events (human_principal, id)
    WHERE human_principal IS NOT NULL;
CREATE INDEX audit_events_type ON audit_events (type, id);
CREATE INDEX audit_events_ts ON audit_events (ts);
CREATE INDEX audit_events_event_id ON audit_events (event_id);

-- Where each sink is in each writer's chain.  Within one chain, seq order is
-- commit order (one writer thread, one transaction at a time), so a cursor
-- per (sink, chain) never skips a row that commits late.
CREATE TABLE audit_sink_cursors (
    sink        text NOT NULL,
    writer_id   text NOT NULL,
    last_seq    bigint NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (sink, writer_id)
);
