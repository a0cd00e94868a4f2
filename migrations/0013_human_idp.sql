-- 0013_human_idp: a task's human is a principal of one [[idp]], so an
-- approval records which one.
--
-- Two identity providers may both assert the same principal (an email
-- claim, say) for different people.  A task already stores the provider of
-- its human (tasks.idp); an approval did not, and deciding one compared the
-- principal alone, so a user of another provider with the same principal
-- could decide it.  Existing approvals take their task's provider.
ALTER TABLE approvals ADD COLUMN human_idp text CHECK (length(human_idp) BETWEEN 1 AND 64);
UPDATE approvals a SET human_idp = t.idp FROM tasks t WHERE t.id = a.task_id;
ALTER TABLE approvals ALTER COLUMN human_idp SET NOT NULL;

-- An idpd older than this migration, still running during a rolling
-- upgrade, inserts approvals without human_idp: the task's provider is
-- filled in for it, so its approval requests keep working.
CREATE FUNCTION approvals_human_idp() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.human_idp IS NULL THEN
        SELECT idp INTO NEW.human_idp FROM tasks WHERE id = NEW.task_id;
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER approvals_human_idp BEFORE INSERT ON approvals
    FOR EACH ROW EXECUTE FUNCTION approvals_human_idp();
