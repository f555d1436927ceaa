-- Signing keys of the access tokens Tenantry issues (ES256, published as a
-- JWKS). A key is `next` (published, not signing yet), then `active` (the one
-- that signs), then `retired` (published and verifying until `expires_at`,
-- when the last token it signed has expired; then pruned).
--
-- `private_key` is the PKCS#8 DER of the P-256 key encrypted with
-- AES-256-GCM under AUTH_KEYS_SECRET: a 12-byte nonce || ciphertext, with the
-- kid as associated data so a ciphertext cannot be moved to another row.
create table app.auth_signing_keys (
    kid          text primary key,
    alg          text not null default 'ES256',
    public_jwk   jsonb not null,
    private_key  bytea not null,
    state        text not null,
    created_at   timestamptz not null default now(),
    activated_at timestamptz,
    retired_at   timestamptz,
    expires_at   timestamptz,
    constraint auth_signing_keys_state check (state in ('next', 'active', 'retired')),
    constraint auth_signing_keys_alg check (alg = 'ES256'),
    constraint auth_signing_keys_retired check (
        (state = 'retired') = (retired_at is not null and expires_at is not null)
    )
);
-- At most one key signs and at most one waits to.
create unique index auth_signing_keys_one_active on app.auth_signing_keys (state)
    where state = 'active';
create unique index auth_signing_keys_one_next on app.auth_signing_keys (state)
    where state = 'next';

-- Not tenant data, but never visible from a tenant transaction: only a
-- transaction that declared itself the key ring (`app.auth_keys = on`, set by
-- `auth::keys`) sees or changes rows.
alter table app.auth_signing_keys enable row level security;
alter table app.auth_signing_keys force row level security;
create policy auth_signing_keys_keyring on app.auth_signing_keys
    using (current_setting('app.auth_keys', true) = 'on')
    with check (current_setting('app.auth_keys', true) = 'on');
grant select, insert, update, delete on app.auth_signing_keys to tenantry_app;
