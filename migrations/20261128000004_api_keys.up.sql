-- Org-scoped API keys for machines (scripts, integrations).
--
-- A key is `tnt_<secret>_<org>`: 43 base64url characters of secret (32 random
-- bytes) and the org id as 32 hex digits. The org is read from the key, so
-- the lookup runs inside that org's tenant context under RLS like every other
-- tenant query; only the key's SHA-256 is stored.

create table api_keys (
    id           uuid primary key,
    org_id       uuid not null references organizations (id) on delete cascade,
    name         text not null,
    -- No foreign key on (org_id, role): a revoked key keeps the name of a role
    -- deleted since. A live key whose role is gone stops authenticating.
    role         text not null,
    -- The first 12 characters of the key (`tnt_` and 8 of the secret), shown to users.
    prefix       text not null,
    secret_hash  bytea not null,
    created_by   uuid references users (id) on delete set null,
    created_at   timestamptz not null default now(),
    expires_at   timestamptz,
    last_used_at timestamptz,
    revoked_at   timestamptz,
    constraint api_keys_secret_hash_key unique (org_id, secret_hash),
    constraint api_keys_secret_hash_len check (octet_length(secret_hash) = 32)
);
create index api_keys_org_page_idx on api_keys (org_id, id);

alter table api_keys enable row level security;
alter table api_keys force row level security;
create policy api_keys_tenant on api_keys
    using (org_id = (select app.current_org_id()))
    with check (org_id = (select app.current_org_id()));

-- Keys are revoked, never deleted by the application.
grant select, insert, update on api_keys to tenantry_app;

-- The key a transaction acts as (set by app.enter_api_key), or null.
create function app.current_api_key_id() returns uuid
    language sql stable parallel safe
    as $$ select nullif(current_setting('app.api_key_id', true), '')::uuid $$;

-- Enter an org as an API key, in the current transaction only: switch to the
-- restricted role, set the org context (no user), find the live key by its
-- hash under RLS, remember it in `app.api_key_id`, and return its role and
-- permissions (no row: unknown, revoked, expired, or its role is gone), and
-- whether `last_used_at` is due (null or over a minute old).
--
-- `last_used_at` is moved by app.touch_api_key in a transaction of its own:
-- a request holding the key row while it waits for the org row lock would
-- deadlock with a revocation (or an org deletion) holding the org row lock
-- and waiting for the key row.
create function app.enter_api_key(p_org uuid, p_hash bytea)
    returns table (key_id uuid, role text, permissions text[], touch boolean)
    language plpgsql volatile
as $$
#variable_conflict use_column
declare
    v_id uuid;
    v_role text;
    v_permissions text[];
    v_last_used timestamptz;
begin
    perform set_config('role', 'tenantry_app', true);
    perform set_config('app.org_id', coalesce(p_org::text, ''), true);
    perform set_config('app.user_id', '', true);
    perform set_config('app.api_key_id', '', true);
    select k.id, k.role, r.permissions, k.last_used_at
        into v_id, v_role, v_permissions, v_last_used
        from api_keys k
        join roles r on r.org_id = k.org_id and r.name = k.role
        where k.org_id = p_org and k.secret_hash = p_hash
          and k.revoked_at is null
          and (k.expires_at is null or k.expires_at > now());
    if v_id is null then
        return;
    end if;
    perform set_config('app.api_key_id', v_id::text, true);
    key_id := v_id;
    role := v_role;
    permissions := v_permissions;
    touch := v_last_used is null or v_last_used < now() - interval '1 minute';
    return next;
end
$$;

-- Records the use of a key (at most once a minute), in the org's context.
-- Never waits: a key row locked by a revocation is skipped.
create function app.touch_api_key(p_org uuid, p_key uuid)
    returns void
    language plpgsql volatile
as $$
begin
    perform set_config('role', 'tenantry_app', true);
    perform set_config('app.org_id', coalesce(p_org::text, ''), true);
    perform set_config('app.user_id', '', true);
    perform set_config('app.api_key_id', '', true);
    update api_keys k set last_used_at = now()
        where k.id = (select u.id from api_keys u
                      where u.org_id = p_org and u.id = p_key and u.revoked_at is null
                        and (u.last_used_at is null or u.last_used_at < now() - interval '1 minute')
                      for update skip locked);
end
$$;

-- The audit log names the key that acted; the key id comes from the
-- transaction's context, never from the application.
alter table audit_log add column actor_api_key_id uuid;

create function app.audit_log_actor() returns trigger
    language plpgsql
as $$
begin
    new.actor_api_key_id := app.current_api_key_id();
    if new.actor_api_key_id is not null then
        new.actor_id := null;
    end if;
    return new;
end
$$;

create trigger audit_log_actor before insert on audit_log
    for each row execute function app.audit_log_actor();

grant execute on function app.current_api_key_id(), app.enter_api_key(uuid, bytea),
    app.touch_api_key(uuid, uuid)
    to tenantry_app;
