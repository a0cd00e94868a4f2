-- 0020_approval_used_by: which token spent an approval.
--
-- An access token spends its approval once it is signed, in a transaction
-- of its own, and only then is its token.issued event made durable; when
-- that does not happen within audit.timeout the token is withheld (503,
-- it never leaves) and the approval is given back.  used_by names the
-- token that spent it (its jti), so that giving it back is a compare and
-- set: it undoes that token's use and never another's.  NULL for a use
-- made before this migration.
ALTER TABLE approvals
    ADD COLUMN used_by text
    CHECK (used_by IS NULL OR (status = 'used' AND length(used_by) BETWEEN 1 AND 128));
