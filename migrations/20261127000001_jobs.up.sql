-- Background jobs: the transactional outbox, cron claims, tenant job records
-- (reports and member imports) and the per-row results of imports.

-- The outbox. `jobs::enqueue` inserts a row inside the caller's transaction, so
-- a job exists if and only if that transaction commits. The relay moves rows
-- to the Redis broker and deletes them only after Redis accepted them.
-- The envelope is the job exactly as the broker stores it (JSON text).
create table app.job_outbox (
    id         uuid primary key,
    seq        bigint generated always as identity,
    queue      text not null,
    run_at     timestamptz,
    envelope   text not null,
    created_at timestamptz not null default now()
);
create index job_outbox_seq_idx on app.job_outbox (seq);

-- Wake the relays when a transaction that enqueued jobs commits (NOTIFY is
-- delivered at commit and folded to one per transaction).
create function app.job_outbox_notify() returns trigger
    language plpgsql
as $$
begin
    perform pg_notify('tenantry_jobs', '');
    return null;
end
$$;
create trigger job_outbox_notify after insert on app.job_outbox
    for each statement execute function app.job_outbox_notify();

-- Tenant code may add to the outbox but never read it: only a transaction
-- that declared itself the relay (`app.job_relay = on`) sees or deletes rows.
alter table app.job_outbox enable row level security;
alter table app.job_outbox force row level security;
create policy job_outbox_insert on app.job_outbox for insert with check (true);
create policy job_outbox_relay on app.job_outbox for select
    using (current_setting('app.job_relay', true) = 'on');
create policy job_outbox_relay_delete on app.job_outbox for delete
    using (current_setting('app.job_relay', true) = 'on');
-- Claiming rows (SELECT ... FOR UPDATE SKIP LOCKED) needs UPDATE rights.
create policy job_outbox_relay_lock on app.job_outbox for update
    using (current_setting('app.job_relay', true) = 'on');
grant select, insert, update, delete on app.job_outbox to tenantry_app;

-- One row per (schedule, tick): the scheduler that inserts it enqueues the
-- tick's job in the same transaction, so a tick fires once however many
-- workers run.
create table app.cron_ticks (
    name     text not null,
    tick     timestamptz not null,
    fired_at timestamptz not null default now(),
    job_id   uuid not null,
    primary key (name, tick)
);
grant select, insert, delete on app.cron_ticks to tenantry_app;

-- Jobs a tenant started (reports, imports): state, progress and result,
-- readable by the org's members with the right permission.
create table job_records (
    id            uuid primary key,
    org_id        uuid not null references organizations (id) on delete cascade,
    kind          text not null,
    state         text not null default 'queued',
    params        jsonb not null default '{}',
    attempts      int not null default 0,
    progress      bigint not null default 0,
    total         bigint,
    result        jsonb,
    error         text,
    created_by    uuid references users (id) on delete set null,
    request_id    text,
    created_at    timestamptz not null default now(),
    started_at    timestamptz,
    finished_at   timestamptz,
    updated_at    timestamptz not null default now(),
    constraint job_records_kind check (kind in ('report', 'import')),
    constraint job_records_state check (state in ('queued', 'running', 'succeeded', 'failed', 'dead'))
);
create index job_records_org_page_idx on job_records (org_id, kind, id desc);

-- Per-row results of a member import. (org_id, job_id, line) is unique: a
-- retried import skips the lines it already decided.
create table import_rows (
    org_id        uuid not null references organizations (id) on delete cascade,
    job_id        uuid not null references job_records (id) on delete cascade,
    line          int not null,
    email         text,
    role          text,
    status        text not null,
    error         text,
    invitation_id uuid,
    constraint import_rows_pkey primary key (org_id, job_id, line),
    constraint import_rows_status check (status in ('invited', 'skipped', 'error'))
);

-- Uploaded import files wait here for their job (bounded by MAX_IMPORT_BYTES).
create table import_files (
    org_id  uuid not null references organizations (id) on delete cascade,
    job_id  uuid not null references job_records (id) on delete cascade,
    content text not null,
    constraint import_files_pkey primary key (org_id, job_id)
);

alter table job_records enable row level security;
alter table job_records force row level security;
alter table import_rows enable row level security;
alter table import_rows force row level security;
alter table import_files enable row level security;
alter table import_files force row level security;

create policy job_records_tenant on job_records
    using (org_id = (select app.current_org_id()))
    with check (org_id = (select app.current_org_id()));
create policy import_rows_tenant on import_rows
    using (org_id = (select app.current_org_id()))
    with check (org_id = (select app.current_org_id()));
create policy import_files_tenant on import_files
    using (org_id = (select app.current_org_id()))
    with check (org_id = (select app.current_org_id()));

grant select, insert, update on job_records to tenantry_app;
grant select, insert on import_rows to tenantry_app;
grant select, insert, delete on import_files to tenantry_app;

-- Operator probe jobs (`tenantry admin jobs probe`): each run records its job
-- once, however often the job is delivered; `runs` counts deliveries.
create table app.job_probes (
    job_id      uuid primary key,
    label       text not null,
    runs        int not null default 1,
    finished_at timestamptz not null default now()
);
grant select, insert, update, delete on app.job_probes to tenantry_app;
