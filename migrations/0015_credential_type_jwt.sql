-- 0015_credential_type_jwt: an agent's credential.type says what it gets.
--
-- "spiffe-x509-svid" used to be accepted and stored, but attestation has
-- only ever issued JWT credentials: the label promised what never happened.
-- Writes now take "spiffe-jwt-svid" alone, and a PATCH validates the whole
-- record, so a row still saying x509 could not be patched at all.  It is set
-- to what the agent actually receives, with a new version so every cache
-- and ETag moves on.
UPDATE agents SET credential_type = 'spiffe-jwt-svid', version = version + 1
 WHERE credential_type = 'spiffe-x509-svid';
