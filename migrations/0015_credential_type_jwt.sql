-- 0015_credential_type_jwt: an agent's credential.type says what it gets.
--
-- "spiffe-x509-svid" used to be accepted and stored, but attestation has
-- only ever issued JWT credentials: the label promised what never happened.
-- Writes now take "spiffe-jwt-svid" alone, and a PATCH validates the whole
-- record, so a row still saying x509 could not be patched at all.  It is set
-- to what the agent actually receives, with a new version so every cache
-- and ETag moves on, and the column takes nothing else from here on (an
-- older idpd still running in a rolling upgrade cannot store x509 again).
UPDATE agents SET credential_type = 'spiffe-jwt-svid', version = version + 1,
       updated_at = now()
 WHERE credential_type = 'spiffe-x509-svid';
ALTER TABLE agents DROP CONSTRAINT IF EXISTS agents_credential_type_check;
ALTER TABLE agents ADD CONSTRAINT agents_credential_type_check
    CHECK (credential_type = 'spiffe-jwt-svid');
