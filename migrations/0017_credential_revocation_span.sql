-- 0017_credential_revocation_span: a revoked identity credential stays in
-- the revocation state as long as a token it obtained can live.
--
-- Access tokens now name the credential that asked for them
-- (identity_jti), and introspection refuses one whose credential was
-- revoked.  Such a token may outlive its credential by up to
-- tokens.max_ttl (at most 24 hours), so the revocation's record is kept
-- until the credential's exp plus 24 hours instead of its exp alone.
CREATE OR REPLACE FUNCTION idpd_credential_revoked() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO revoked_tokens (jti, kind, agent_id, expires_at, revoked_at, revoked_by, reason)
    VALUES (NEW.jti, 'identity', NEW.agent_id, NEW.expires_at + interval '24 hours',
            NEW.revoked_at, 'idpd', 'identity credential revoked')
    ON CONFLICT (jti) DO NOTHING;
    RETURN NULL;
END;
$$;

-- Revocations recorded before, including those cleanup already removed
-- though a token of theirs may still be alive.
INSERT INTO revoked_tokens (jti, kind, agent_id, expires_at, revoked_at, revoked_by, reason)
SELECT jti, 'identity', agent_id, expires_at + interval '24 hours', revoked_at, 'idpd',
       'identity credential revoked'
  FROM agent_credentials
 WHERE revoked_at IS NOT NULL AND expires_at + interval '24 hours' > now()
ON CONFLICT (jti) DO UPDATE SET expires_at = excluded.expires_at
 WHERE revoked_tokens.kind = 'identity' AND revoked_tokens.expires_at < excluded.expires_at;
