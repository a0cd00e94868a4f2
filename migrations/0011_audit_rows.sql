-- 0011_audit_rows: less work for PostgreSQL per audit row, same queries.
--
-- audit_chains is kept by the writer itself: each batch's COPY and its
-- upsert of the chain's last_seq go in one query string, which PostgreSQL
-- runs as one implicit transaction (all or nothing, one commit, one round
-- trip).  The statement trigger of 0006 copied every inserted row into a
-- transition table to find the same number; it goes.  A writer of an older
-- idpd still running against this database would no longer advance its
-- chain's row, so upgrade every idpd before (or while) this migration runs.
DROP TRIGGER IF EXISTS audit_events_chain ON audit_events;
DROP FUNCTION IF EXISTS audit_chains_note();

-- Whatever committed before the trigger went is counted (a no-op unless a
-- row escaped the trigger).
INSERT INTO audit_chains (writer_id, last_seq)
    SELECT writer_id, max(seq) FROM audit_events GROUP BY writer_id
ON CONFLICT (writer_id) DO UPDATE
    SET last_seq = greatest(audit_chains.last_seq, excluded.last_seq);

-- ts grows with the table (the writers stamp events as they queue them), so
-- a block-range index answers since/until and the retention cut-off for a
-- fraction of a btree's upkeep: one summary per 128 pages instead of one
-- entry per row.  autosummarize covers new ranges without waiting for a
-- VACUUM.
DROP INDEX IF EXISTS audit_events_ts;
CREATE INDEX IF NOT EXISTS audit_events_ts_brin ON audit_events
    USING brin (ts) WITH (autosummarize = on);
