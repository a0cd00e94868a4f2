-- 0014_human_idp_fill: an approval inserted without human_idp takes its
-- task's provider.
--
-- An idpd older than 0013, still running during a rolling upgrade, inserts
-- approvals without the column 0013 made NOT NULL; filled in here, its
-- approval requests keep working.  idpd itself names the provider.
CREATE OR REPLACE FUNCTION approvals_human_idp() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.human_idp IS NULL THEN
        SELECT idp INTO NEW.human_idp FROM tasks WHERE id = NEW.task_id;
    END IF;
    RETURN NEW;
END
$$;
DROP TRIGGER IF EXISTS approvals_human_idp ON approvals;
CREATE TRIGGER approvals_human_idp BEFORE INSERT ON approvals
    FOR EACH ROW EXECUTE FUNCTION approvals_human_idp();
