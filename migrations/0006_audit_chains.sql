-- 0006_audit_chains: one row per writer chain with its highest seq, kept by a
-- statement-level trigger in the same transaction as the writer's COPY.
-- Sink shippers read this small table to find chains with unshipped events,
-- then read each chain by (writer_id, seq) through its unique index, so a
-- poll costs the same whatever the size of audit_events.

CREATE TABLE audit_chains (
    writer_id   text PRIMARY KEY,
    last_seq    bigint NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

INSERT INTO audit_chains (writer_id, last_seq)
    SELECT writer_id, max(seq) FROM audit_events GROUP BY writer_id;

CREATE FUNCTION audit_chains_note() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO audit_chains (writer_id, last_seq)
        SELECT writer_id, max(seq) FROM new_rows GROUP BY writer_id
    ON CONFLICT (writer_id) DO UPDATE
        SET last_seq = greatest(audit_chains.last_seq, excluded.last_seq),
            updated_at = now();
    RETURN NULL;
END;
$$;

CREATE TRIGGER audit_events_chain AFTER INSERT ON audit_events
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION audit_chains_note();
