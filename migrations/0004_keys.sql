-- 0004_keys: the ES256 keys idpd signs its tokens with.
--
-- A key moves next -> active -> retiring -> retired and never back:
--   next      published in the JWKS before it signs anything, so every
--             verifier (other instances, downstream caches) knows it first;
--   active    the one key that signs; at most one;
--   retiring  signs no more, still published until retire_after, when every
--             token it signed has expired;
--   retired   unpublished; its sealed private half is erased, the row stays
--             as the record of what was used when.
-- A key never signs at or after its not_after, whatever its state.
--
-- private_sealed is the PKCS#8 private key sealed with AES-256-GCM under the
-- key-encryption key (KEK) named by kek_id, with the kid as associated data
-- (see include/idpd/kek.h).  The KEK itself is never stored.  kek_id is a
-- non-secret fingerprint, so a process with the wrong KEK can say so before
-- it tries anything.
--
-- Every change is made by idpd under one advisory lock, so two instances
-- starting together, a CLI rotation and the cleanup job never interleave; the
-- partial unique indexes below are the last line if something else tries.

CREATE TABLE signing_keys (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kid             text NOT NULL UNIQUE CHECK (kid ~ '^[A-Za-z0-9_-]{1,128}$'),
    alg             text NOT NULL DEFAULT 'ES256' CHECK (alg = 'ES256'),
    state           text NOT NULL CHECK (state IN ('next', 'active', 'retiring', 'retired')),
    public_jwk      jsonb NOT NULL CHECK (jsonb_typeof(public_jwk) = 'object'
                                          AND public_jwk->>'kid' = kid
                                          AND NOT public_jwk ? 'd'),
    private_sealed  bytea CHECK (length(private_sealed) BETWEEN 30 AND 65565),
    kek_id          text NOT NULL CHECK (kek_id ~ '^kek-[0-9a-f]{16}$'),
    created_at      timestamptz NOT NULL,
    activated_at    timestamptz,
    retiring_at     timestamptz,
    retire_after    timestamptz,
    retired_at      timestamptz,
    not_after       timestamptz NOT NULL CHECK (not_after > created_at),
    CHECK (state = 'retired' OR private_sealed IS NOT NULL),
    CHECK (state <> 'active' OR activated_at IS NOT NULL),
    CHECK (state <> 'retiring' OR (retiring_at IS NOT NULL AND retire_after IS NOT NULL)),
    CHECK (state <> 'retired' OR (retired_at IS NOT NULL AND private_sealed IS NULL))
);

CREATE UNIQUE INDEX signing_keys_one_active ON signing_keys ((true)) WHERE state = 'active';
CREATE UNIQUE INDEX signing_keys_one_next ON signing_keys ((true)) WHERE state = 'next';
CREATE INDEX signing_keys_live ON signing_keys (id) WHERE state <> 'retired';

CREATE TRIGGER signing_keys_notify AFTER INSERT OR UPDATE OR DELETE ON signing_keys
    FOR EACH ROW EXECUTE FUNCTION idpd_notify('keys');
