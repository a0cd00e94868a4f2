-- 0019_approval_decider_idp: an approval records which identity provider
-- vouched for the human who decided it.
--
-- A principal names a person only together with its provider: two [[idp]]
-- may assert the same address for two people.  decided_by keeps the
-- principal; decided_by_idp is the [[idp]] that authenticated it (NULL for
-- an operator's decision, and for decisions made before this migration).
ALTER TABLE approvals
    ADD COLUMN decided_by_idp text
    CHECK (decided_by_idp IS NULL OR (decided_by_kind = 'human'
                                      AND length(decided_by_idp) BETWEEN 1 AND 64));
