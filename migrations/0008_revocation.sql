-- 0008_revocation: revoked tokens, and the notifications that keep every
-- instance's revocation state current (docs/tokens.md, "Revocation").
--
-- revoked_tokens records each revocation made through POST /revoke: an
-- access token by its jti (the only record that it is dead), a delegation
-- token by the jti it was asked for (the token and its subtree are also
-- marked in delegation_tokens.revoked_at; this row says who asked and why).
-- A row lives until the token's own expiry has passed: past it the token is
-- refused as expired anyway, and the cleanup job "revocations" deletes it.
--
-- Channel "tokens" carries a kind letter and a key, never a row:
--   r:<jti>      a row was inserted into revoked_tokens
--   d:<jti>      a delegation token was recorded, or its revoked_at changed
--   t:<task_id>  a task was opened, or its status changed
-- Each instance re-reads the row by its key, so a payload stays small and
-- nothing but ids travels over NOTIFY.

CREATE TABLE revoked_tokens (
    jti         text PRIMARY KEY CHECK (jti ~ '^[A-Za-z0-9_-]{16,64}$'),
    kind        text NOT NULL CHECK (kind IN ('access', 'delegation')),
    task_id     text CHECK (length(task_id) BETWEEN 1 AND 64),
    agent_id    text CHECK (length(agent_id) BETWEEN 1 AND 128),
    expires_at  timestamptz NOT NULL,
    revoked_at  timestamptz NOT NULL DEFAULT now(),
    revoked_by  text NOT NULL CHECK (length(revoked_by) BETWEEN 1 AND 400),
    reason      text CHECK (length(reason) <= 256)
);

CREATE INDEX revoked_tokens_expires ON revoked_tokens (expires_at);

CREATE FUNCTION idpd_notify_tokens() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_TABLE_NAME = 'revoked_tokens' THEN
        PERFORM pg_notify('tokens', 'r:' || NEW.jti);
    ELSIF TG_TABLE_NAME = 'delegation_tokens' THEN
        PERFORM pg_notify('tokens', 'd:' || NEW.jti);
    ELSE
        PERFORM pg_notify('tokens', 't:' || NEW.id);
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER revoked_tokens_notify AFTER INSERT ON revoked_tokens
    FOR EACH ROW EXECUTE FUNCTION idpd_notify_tokens();
CREATE TRIGGER delegation_tokens_notify_insert AFTER INSERT ON delegation_tokens
    FOR EACH ROW EXECUTE FUNCTION idpd_notify_tokens();
CREATE TRIGGER delegation_tokens_notify_revoked AFTER UPDATE OF revoked_at ON delegation_tokens
    FOR EACH ROW WHEN (OLD.revoked_at IS DISTINCT FROM NEW.revoked_at)
    EXECUTE FUNCTION idpd_notify_tokens();
CREATE TRIGGER tasks_notify_insert AFTER INSERT ON tasks
    FOR EACH ROW EXECUTE FUNCTION idpd_notify_tokens();
CREATE TRIGGER tasks_notify_status AFTER UPDATE OF status ON tasks
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION idpd_notify_tokens();

-- A reload reads the tasks that have not expired.
CREATE INDEX tasks_expires ON tasks (expires_at);
