-- Billing, first slice: the plan catalog. Not tenant data: every org sees
-- the same catalog (`GET /api/v1/plans` is public); only operators change it.

create table plans (
    code               text primary key,
    name               text not null,
    -- Price per interval in the currency's minor unit (cents).
    price_minor        bigint not null,
    currency           text not null,
    billing_interval   text not null,
    trial_days         int not null default 0,
    -- Credits granted at the start of each period.
    credits_per_period bigint not null default 0,
    -- Most members an org on this plan may have; null: no limit.
    seat_limit         int,
    -- Feature limits as data ({"reports_per_month": 10, ...}).
    features           jsonb not null default '{}',
    active             boolean not null default true,
    sort_order         int not null default 0,
    created_at         timestamptz not null default now(),
    updated_at         timestamptz not null default now(),
    constraint plans_code_format check (code ~ '^[a-z0-9][a-z0-9_-]{0,31}$'),
    constraint plans_price check (price_minor >= 0),
    constraint plans_currency check (currency ~ '^[A-Z]{3}$'),
    constraint plans_interval check (billing_interval in ('month', 'year')),
    constraint plans_trial check (trial_days between 0 and 365),
    constraint plans_credits check (credits_per_period >= 0),
    constraint plans_seats check (seat_limit is null or seat_limit >= 1),
    constraint plans_features check (jsonb_typeof(features) = 'object')
);

insert into plans (code, name, price_minor, currency, billing_interval, trial_days,
                   credits_per_period, seat_limit, features, sort_order) values
    ('free', 'Free', 0, 'USD', 'month', 0, 100, 3,
     '{"reports_per_month": 5, "api_keys": 2}', 0),
    ('pro', 'Pro', 2900, 'USD', 'month', 14, 5000, 20,
     '{"reports_per_month": 100, "api_keys": 20}', 1),
    ('business', 'Business', 9900, 'USD', 'month', 14, 25000, null,
     '{"reports_per_month": null, "api_keys": 100}', 2);

grant select on plans to tenantry_app;
