-- Round-two hardening of the auth server and the job records.
--
-- * `reauthentication` one-time tokens: the nonce `GET /auth/v1/reauthenticate`
--   emails, which `PUT /auth/v1/user` takes in place of a recent sign-in.
-- * `app.auth_ended_sessions`: every session ended by sign-out, a ban, a
--   password change or a refresh-token replay, kept until the last access
--   token it issued has expired. The API replicas keep these ids in memory
--   (fed by Redis pub/sub, caught up from this table) and refuse those tokens.
-- * `job_records.error_code`: the stable code members see beside a safe
--   message; the full error chain goes to the logs and the operator routes.

alter table app.auth_one_time_tokens drop constraint auth_one_time_tokens_kind;
alter table app.auth_one_time_tokens add constraint auth_one_time_tokens_kind
    check (kind in ('confirmation', 'recovery', 'email_change', 'reauthentication'));

create table app.auth_ended_sessions (
    id         bigint generated always as identity primary key,
    session_id uuid not null,
    user_id    uuid not null,
    ended_at   timestamptz not null default now(),
    -- Past this, no access token of the session can still verify.
    expires_at timestamptz not null
);
create index auth_ended_sessions_expires_idx on app.auth_ended_sessions (expires_at);
-- Each replica reads the newly ended ones every second.
create index auth_ended_sessions_ended_idx on app.auth_ended_sessions (ended_at);

alter table app.auth_ended_sessions enable row level security;
alter table app.auth_ended_sessions force row level security;
create policy auth_ended_sessions_server on app.auth_ended_sessions
    using (current_setting('app.auth', true) = 'on')
    with check (current_setting('app.auth', true) = 'on');
grant select, insert, delete on app.auth_ended_sessions to tenantry_app;

alter table job_records add column error_code text;
