-- Billing, payments: invoices per org, the credit pack catalog, the payment
-- provider's customer of each org, and the webhook events already applied.

-- Invoices and one-off payments of an org. Manual invoices are issued by
-- Tenantry (one per org and period) and marked paid by a platform admin;
-- Stripe's are mirrored from its webhooks (keyed by Stripe's id).
create table invoices (
    id                  uuid primary key,
    org_id              uuid not null references organizations (id) on delete cascade,
    number              text not null,
    status              text not null default 'open',
    amount_due_minor    bigint not null,
    amount_paid_minor   bigint not null default 0,
    currency            text not null,
    period_start        timestamptz,
    period_end          timestamptz,
    description         text not null default '',
    provider            text not null,
    provider_invoice_id text,
    hosted_url          text,
    created_at          timestamptz not null default now(),
    paid_at             timestamptz,
    due_at              timestamptz,
    constraint invoices_status check (status in ('draft', 'open', 'paid', 'void', 'uncollectible')),
    constraint invoices_provider check (provider in ('manual', 'stripe')),
    constraint invoices_amounts check (amount_due_minor >= 0 and amount_paid_minor >= 0),
    constraint invoices_currency check (currency ~ '^[A-Z]{3}$'),
    constraint invoices_period check (period_end is null or period_start is null or period_end > period_start),
    constraint invoices_paid_at check (status <> 'paid' or paid_at is not null),
    constraint invoices_number_key unique (org_id, number),
    constraint invoices_provider_invoice_key unique (org_id, provider_invoice_id)
);
-- Newest first, per org (the list's keyset).
create index invoices_org_page_idx on invoices (org_id, created_at desc, id desc);
-- A manual invoice is issued once per org and period.
create unique index invoices_manual_period_key on invoices (org_id, period_start)
    where provider = 'manual' and period_start is not null;

-- Credit packs on sale (one-off purchases). Not tenant data: the same
-- catalog for every org (`GET /api/v1/credit-packs` is public).
create table credit_packs (
    code        text primary key,
    name        text not null,
    credits     bigint not null,
    price_minor bigint not null,
    currency    text not null,
    active      boolean not null default true,
    sort_order  int not null default 0,
    created_at  timestamptz not null default now(),
    updated_at  timestamptz not null default now(),
    constraint credit_packs_code_format check (code ~ '^[a-z0-9][a-z0-9_-]{0,31}$'),
    constraint credit_packs_credits check (credits > 0),
    constraint credit_packs_price check (price_minor > 0),
    constraint credit_packs_currency check (currency ~ '^[A-Z]{3}$')
);
insert into credit_packs (code, name, credits, price_minor, currency, sort_order) values
    ('credits_1000', '1,000 credits', 1000, 1000, 'USD', 0),
    ('credits_10000', '10,000 credits', 10000, 9000, 'USD', 1);
grant select on credit_packs to tenantry_app;

-- The payment provider's customer of an org (Stripe's cus_...), created on
-- the org's first checkout and reused afterwards.
create table billing_customers (
    org_id      uuid primary key references organizations (id) on delete cascade,
    provider    text not null,
    customer_id text not null,
    created_at  timestamptz not null default now(),
    constraint billing_customers_provider check (provider in ('stripe'))
);

alter table invoices enable row level security;
alter table invoices force row level security;
alter table billing_customers enable row level security;
alter table billing_customers force row level security;
create policy invoices_tenant on invoices
    using (org_id = (select app.current_org_id()))
    with check (org_id = (select app.current_org_id()));
create policy billing_customers_tenant on billing_customers
    using (org_id = (select app.current_org_id()))
    with check (org_id = (select app.current_org_id()));
grant select, insert, update on invoices to tenantry_app;
grant select, insert, update on billing_customers to tenantry_app;

-- Which org a provider's customer belongs to, for webhooks that name only
-- the customer: they arrive with no tenant context. An org writes its own
-- rows; only a transaction that declared itself the webhook handler
-- (`app.webhooks = on`) reads across orgs.
create table app.billing_customer_orgs (
    provider    text not null,
    customer_id text not null,
    org_id      uuid not null references organizations (id) on delete cascade,
    primary key (provider, customer_id)
);
create index billing_customer_orgs_org_idx on app.billing_customer_orgs (org_id);
alter table app.billing_customer_orgs enable row level security;
alter table app.billing_customer_orgs force row level security;
create policy billing_customer_orgs_insert on app.billing_customer_orgs for insert
    with check (org_id = (select app.current_org_id()));
create policy billing_customer_orgs_read on app.billing_customer_orgs for select
    using (current_setting('app.webhooks', true) = 'on'
           or org_id = (select app.current_org_id()));
grant select, insert on app.billing_customer_orgs to tenantry_app;

-- Provider events already processed. The handler inserts the event's id in
-- the same transaction as its effect: a replay finds it and does nothing,
-- and a crash before commit leaves neither. Only the webhook handler
-- (`app.webhooks = on`) sees or writes rows.
create table app.webhook_events (
    provider     text not null,
    event_id     text not null,
    type         text not null,
    -- Stripe's `created` of the event.
    created      timestamptz not null,
    -- The org the event was applied in; null: no such org.
    org_id       uuid,
    -- The id of the event's object (sub_..., in_..., cs_...).
    object_id    text,
    processed_at timestamptz not null default now(),
    primary key (provider, event_id)
);
-- A deleted subscription stays deleted whatever older events arrive later.
create index webhook_events_object_idx on app.webhook_events (provider, object_id, type);
alter table app.webhook_events enable row level security;
alter table app.webhook_events force row level security;
create policy webhook_events_handler on app.webhook_events
    using (current_setting('app.webhooks', true) = 'on')
    with check (current_setting('app.webhooks', true) = 'on');
grant select, insert on app.webhook_events to tenantry_app;
