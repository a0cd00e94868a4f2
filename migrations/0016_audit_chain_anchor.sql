-- 0016_audit_chain_anchor: where each chain's remaining rows begin.
--
-- Retention deletes a chain's oldest rows.  Until now verification started
-- at whatever row came first, so rows deleted from the start of a chain
-- behind idpd's back went unnoticed.  Retention now records, in the same
-- statement as its delete, the seq and hash of the last row it removed;
-- GET /v1/audit/verify requires a chain's first row to follow that anchor
-- (or to be seq 1 after the genesis hash when nothing was pruned).
ALTER TABLE audit_chains
    ADD COLUMN IF NOT EXISTS pruned_seq bigint NOT NULL DEFAULT 0
        CHECK (pruned_seq >= 0),
    ADD COLUMN IF NOT EXISTS pruned_hash bytea
        CHECK (pruned_hash IS NULL OR length(pruned_hash) = 32);

-- Upgrade every instance before the next cleanup run: an older idpd's
-- retention deletes without moving the anchor, and verify then reports
-- those chains broken at their start.
--
-- Chains pruned before this migration: their first remaining row is the
-- anchor, the most that can be known now (so running this file again by
-- hand would also take rows deleted since as pruned).  One index probe per
-- chain.
UPDATE audit_chains c
   SET pruned_seq = f.seq - 1, pruned_hash = f.prev_hash
  FROM audit_chains c2
       CROSS JOIN LATERAL (SELECT seq, prev_hash FROM audit_events e
                            WHERE e.writer_id = c2.writer_id
                            ORDER BY seq LIMIT 1) f
 WHERE c.writer_id = c2.writer_id AND c.pruned_seq = 0 AND f.seq > 1;

-- Chains retention emptied: every row is gone on purpose.  Their last hash
-- is not known; a chain never resumes (each process starts a new one), so
-- no row will ever have to follow it.
UPDATE audit_chains c
   SET pruned_seq = c.last_seq
 WHERE c.pruned_seq = 0
   AND NOT EXISTS (SELECT 1 FROM audit_events e WHERE e.writer_id = c.writer_id);
