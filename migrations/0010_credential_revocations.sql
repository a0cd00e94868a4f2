-- 0010_credential_revocations: identity credentials join the revocation
-- state, so an agent's credential is checked in memory on every request
-- instead of by a query.
--
-- A credential revoked one by one (agent_credentials.revoked_at, set by
-- POST /revoke or by hand) is copied into revoked_tokens as kind
-- 'identity'; the insert notifies channel "tokens" like every revocation,
-- and every instance adds the jti to its revoked set.  Suspension and
-- decommissioning keep using agents.revocation_epoch.

ALTER TABLE revoked_tokens DROP CONSTRAINT revoked_tokens_kind_check;
ALTER TABLE revoked_tokens ADD CONSTRAINT revoked_tokens_kind_check
    CHECK (kind IN ('access', 'delegation', 'identity'));

CREATE FUNCTION idpd_credential_revoked() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO revoked_tokens (jti, kind, agent_id, expires_at, revoked_at, revoked_by, reason)
    VALUES (NEW.jti, 'identity', NEW.agent_id, NEW.expires_at, NEW.revoked_at, 'idpd',
            'identity credential revoked')
    ON CONFLICT (jti) DO NOTHING;
    RETURN NULL;
END;
$$;

CREATE TRIGGER agent_credentials_revoked AFTER UPDATE OF revoked_at ON agent_credentials
    FOR EACH ROW WHEN (OLD.revoked_at IS NULL AND NEW.revoked_at IS NOT NULL)
    EXECUTE FUNCTION idpd_credential_revoked();

-- Credentials revoked before this migration.
INSERT INTO revoked_tokens (jti, kind, agent_id, expires_at, revoked_at, revoked_by, reason)
SELECT jti, 'identity', agent_id, expires_at, revoked_at, 'idpd', 'identity credential revoked'
FROM agent_credentials
WHERE revoked_at IS NOT NULL AND expires_at > now()
ON CONFLICT (jti) DO NOTHING;
