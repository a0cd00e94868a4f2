-- 0001_init: what every later table builds on.
--
-- idpd_notify() is the trigger function behind cross-instance cache
-- invalidation: a table that instances cache gets
--   CREATE TRIGGER ... AFTER INSERT OR UPDATE OR DELETE ... FOR EACH ROW
--   EXECUTE FUNCTION idpd_notify('channel');
-- and every idpd LISTENing on that channel hears the row's id.  The payload
-- is the id only: listeners re-read the row, so nothing sensitive travels
-- over NOTIFY and the 8000-byte payload limit is never near.

CREATE FUNCTION idpd_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    row_id text;
BEGIN
    IF TG_OP = 'DELETE' THEN
        row_id := OLD.id::text;
    ELSE
        row_id := NEW.id::text;
    END IF;
    PERFORM pg_notify(TG_ARGV[0], row_id);
    RETURN NULL;
END;
$$;

-- One row per running instance: its id, version and last heartbeat, so an
-- operator can see which instances share the database.
CREATE TABLE idpd_instances (
    id          text PRIMARY KEY CHECK (length(id) BETWEEN 1 AND 200),
    version     text NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT now(),
    seen_at     timestamptz NOT NULL DEFAULT now()
);
