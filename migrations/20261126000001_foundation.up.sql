-- Foundation: users, organizations, roles, memberships, invitations, audit log.
--
-- Tenancy rules (see README "How tenancy works"):
-- * every tenant table has `org_id uuid not null`, RLS enabled AND forced, and a
--   policy on `org_id = app.current_org_id()`;
-- * the API runs tenant queries as the NOLOGIN role `tenantry_app` (switched to
--   with SET LOCAL ROLE inside each transaction); it owns nothing and cannot
--   bypass RLS. The login role named by DATABASE_URL is made a member of it by
--   `tenantry migrate`.

do $$
begin
    create role tenantry_app nologin nosuperuser nobypassrls nocreatedb nocreaterole;
exception when duplicate_object or unique_violation then
    null;
end
$$;

create schema app;
grant usage on schema app to tenantry_app;
grant usage on schema public to tenantry_app;

-- The tenant context. An unset or empty setting means "no tenant": no rows, never an error.
create function app.current_org_id() returns uuid
    language sql stable parallel safe
    as $$ select nullif(current_setting('app.org_id', true), '')::uuid $$;

create function app.current_user_id() returns uuid
    language sql stable parallel safe
    as $$ select nullif(current_setting('app.user_id', true), '')::uuid $$;

-- The sha256 of an invitation token the caller presented; lets the accept flow
-- find exactly one invitation before it knows the org.
create function app.current_invite_token_hash() returns bytea
    language sql stable parallel safe
    as $$ select decode(nullif(current_setting('app.invite_token_hash', true), ''), 'hex') $$;

create table users (
    id           uuid primary key,
    email        text,
    display_name text,
    avatar_url   text,
    created_at   timestamptz not null default now(),
    updated_at   timestamptz not null default now()
);
create index users_email_idx on users (lower(email));

create table organizations (
    id         uuid primary key,
    name       text not null,
    slug       text not null,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    constraint organizations_slug_key unique (slug),
    constraint organizations_slug_format check (slug ~ '^[a-z0-9](?:[a-z0-9-]{1,46}[a-z0-9])$')
);

create table roles (
    org_id      uuid not null references organizations (id) on delete cascade,
    name        text not null,
    description text not null default '',
    permissions text[] not null,
    builtin     boolean not null default false,
    created_at  timestamptz not null default now(),
    updated_at  timestamptz not null default now(),
    primary key (org_id, name)
);

create table memberships (
    org_id     uuid not null references organizations (id) on delete cascade,
    user_id    uuid not null references users (id) on delete cascade,
    role       text not null,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    primary key (org_id, user_id),
    foreign key (org_id, role) references roles (org_id, name) on update cascade
);
create index memberships_org_page_idx on memberships (org_id, created_at, user_id);
create index memberships_user_idx on memberships (user_id);
create index memberships_org_role_idx on memberships (org_id, role);

create table invitations (
    id          uuid primary key,
    org_id      uuid not null references organizations (id) on delete cascade,
    email       text not null,
    role        text not null,
    token_hash  bytea not null,
    invited_by  uuid references users (id) on delete set null,
    created_at  timestamptz not null default now(),
    expires_at  timestamptz not null,
    accepted_at timestamptz,
    accepted_by uuid references users (id) on delete set null,
    revoked_at  timestamptz,
    -- No foreign key on (org_id, role): closed invitations keep the role name
    -- they were sent with after that role is deleted. Open ones are checked
    -- under the org lock when a role is deleted.
    constraint invitations_token_hash_key unique (token_hash),
    constraint invitations_email_lower check (email = lower(email))
);
create index invitations_org_page_idx on invitations (org_id, id);
create unique index invitations_one_open_per_email on invitations (org_id, email)
    where accepted_at is null and revoked_at is null;

create table audit_log (
    id          uuid primary key,
    org_id      uuid not null references organizations (id) on delete cascade,
    actor_id    uuid,
    action      text not null,
    target_type text not null,
    target_id   text,
    before      jsonb,
    after       jsonb,
    request_id  text,
    created_at  timestamptz not null default now()
);
create index audit_log_org_page_idx on audit_log (org_id, id desc);

-- Row Level Security: enabled and forced on every tenant table, and on users.
-- Policies read the context through `(select app.current_...())`: an InitPlan
-- evaluated once per statement instead of once per row.
-- Users:
-- a user's profile is visible to themselves and to members of an org they share.
alter table users enable row level security;
alter table users force row level security;
alter table organizations enable row level security;
alter table organizations force row level security;
alter table roles enable row level security;
alter table roles force row level security;
alter table memberships enable row level security;
alter table memberships force row level security;
alter table invitations enable row level security;
alter table invitations force row level security;
alter table audit_log enable row level security;
alter table audit_log force row level security;

-- Writes (FOR ALL policies) are confined to the org in context. The wider
-- read-only views of a user context (its own memberships and orgs, or the one
-- invitation whose token it presented) are FOR SELECT policies, so a user
-- context can never change or delete anything through them.

-- Users: a profile is readable by its owner and by members of an org in
-- context that the user belongs to; only its owner writes it.
create policy users_read on users for select
    using (
        id = (select app.current_user_id())
        or exists (select 1 from memberships m
                   where m.user_id = users.id and m.org_id = (select app.current_org_id()))
    );
create policy users_insert_self on users for insert
    with check (id = (select app.current_user_id()));
create policy users_update_self on users for update
    using (id = (select app.current_user_id()))
    with check (id = (select app.current_user_id()));

create policy organizations_tenant on organizations
    using (id = (select app.current_org_id()))
    with check (id = (select app.current_org_id()));
create policy organizations_member_read on organizations for select
    using ((select app.current_org_id()) is null and exists (
        select 1 from memberships m
        where m.org_id = organizations.id and m.user_id = (select app.current_user_id())));

create policy roles_tenant on roles
    using (org_id = (select app.current_org_id()))
    with check (org_id = (select app.current_org_id()));
create policy roles_member_read on roles for select
    using ((select app.current_org_id()) is null and exists (
        select 1 from memberships m
        where m.org_id = roles.org_id and m.user_id = (select app.current_user_id())
          and m.role = roles.name));

create policy memberships_tenant on memberships
    using (org_id = (select app.current_org_id()))
    with check (org_id = (select app.current_org_id()));
create policy memberships_self_read on memberships for select
    using ((select app.current_org_id()) is null and user_id = (select app.current_user_id()));

create policy invitations_tenant on invitations
    using (org_id = (select app.current_org_id()))
    with check (org_id = (select app.current_org_id()));
create policy invitations_token_read on invitations for select
    using ((select app.current_org_id()) is null
           and token_hash = (select app.current_invite_token_hash()));

create policy audit_log_tenant on audit_log
    using (org_id = (select app.current_org_id()))
    with check (org_id = (select app.current_org_id()));

-- Enter an org as a user, in the current transaction only: switch to the
-- restricted role, set the tenant context, and return the caller's role and
-- permissions there (no row: not a member). One round trip for context and
-- authorization.
create function app.enter_org(p_org uuid, p_user uuid)
    returns table (role text, permissions text[])
    language plpgsql volatile
as $$
begin
    perform set_config('role', 'tenantry_app', true);
    perform set_config('app.org_id', coalesce(p_org::text, ''), true);
    perform set_config('app.user_id', coalesce(p_user::text, ''), true);
    return query
        select m.role, r.permissions
        from memberships m
        join roles r on r.org_id = m.org_id and r.name = m.role
        where m.org_id = p_org and m.user_id = p_user;
end
$$;

-- Enter as a user with no org (their own profile and memberships only).
create function app.enter_user(p_user uuid, p_invite_token_hash text default null)
    returns void
    language plpgsql volatile
as $$
begin
    perform set_config('role', 'tenantry_app', true);
    perform set_config('app.org_id', '', true);
    perform set_config('app.user_id', coalesce(p_user::text, ''), true);
    perform set_config('app.invite_token_hash', coalesce(p_invite_token_hash, ''), true);
end
$$;

grant execute on function app.current_org_id(), app.current_user_id(),
    app.current_invite_token_hash(), app.enter_org(uuid, uuid), app.enter_user(uuid, text)
    to tenantry_app;

grant select, insert, update on users to tenantry_app;
grant select, insert, update, delete on organizations to tenantry_app;
grant select, insert, update, delete on roles to tenantry_app;
grant select, insert, update, delete on memberships to tenantry_app;
grant select, insert, update on invitations to tenantry_app;
-- The audit log is append-only for the application.
grant select, insert on audit_log to tenantry_app;
