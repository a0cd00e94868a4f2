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
