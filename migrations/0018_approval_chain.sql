-- 0018_approval_chain: an approval records the delegation chain of the
-- request it approves.
--
-- The agents from the task's root agent down to the one that asked (the
-- delegator of a delegation, the requester of an access token), root
-- first.  The approval events carry it as their delegation chain after the
-- task's human, so approval.granted names the whole chain a human decided
-- for, not only the last agent.  Not part of the binding: the request is
-- bound by kind, agent, task, scope set and target as before.  Rows from
-- before this migration have none and their events name the agent alone.
ALTER TABLE approvals
    ADD COLUMN delegation_chain text[] NOT NULL DEFAULT '{}'
    CHECK (cardinality(delegation_chain) <= 64);
