-- Billing, second slice: one subscription per org, and the credit ledger.
--
-- Credits are an append-only, double-entry ledger. Every line of
-- `credit_ledger` moves `amount` (> 0) from one account to another, so each
-- line is its own balanced debit and credit:
--
--   issued    where granted credits come from (outside the org)
--   available credits of the org's grants not yet used (>= 0; per grant)
--   overage   spending beyond the grants, when the plan allows it (<= 0)
--   held      reserved by open holds
--   spent     used up
--   expired   grant remainders that ran out
--
-- The org's balance is available + overage; `credit_accounts`,
-- `credit_grants.remaining` and `credit_holds` are projections of the ledger
-- that the functions below keep in step in the same transaction, and that
-- `tenantry admin credits reconcile` (app.credit_reconcile) checks against it.
-- The functions run with the caller's rights (RLS confines them to the org
-- of the tenant context); the application role may insert ledger lines but
-- never update or delete them, and the floor of a balance is a constraint.

alter table plans
    add column credit_overage_limit bigint not null default 0,
    add constraint plans_overage check (credit_overage_limit >= 0);

-- ------------------------------------------------------------ subscriptions

create table subscriptions (
    org_id                   uuid primary key references organizations (id) on delete cascade,
    plan_code                text not null references plans (code),
    status                   text not null default 'active',
    current_period_start     timestamptz not null,
    current_period_end       timestamptz not null,
    trial_end                timestamptz,
    cancel_at_period_end     boolean not null default false,
    canceled_at              timestamptz,
    -- A downgrade that takes effect at the end of the period.
    pending_plan_code        text references plans (code),
    provider                 text not null default 'manual',
    -- The provider's id of the subscription (Stripe's sub_...).
    provider_subscription_id text,
    -- `created` of the newest provider event applied: older events change nothing.
    provider_state_at        timestamptz,
    trial_used               boolean not null default false,
    created_at               timestamptz not null default now(),
    updated_at               timestamptz not null default now(),
    constraint subscriptions_status
        check (status in ('trialing', 'active', 'past_due', 'canceled', 'incomplete')),
    constraint subscriptions_period check (current_period_end > current_period_start),
    constraint subscriptions_provider check (provider in ('manual', 'stripe'))
);

alter table subscriptions enable row level security;
alter table subscriptions force row level security;
create policy subscriptions_tenant on subscriptions
    using (org_id = (select app.current_org_id()))
    with check (org_id = (select app.current_org_id()));
grant select, insert, update on subscriptions to tenantry_app;

insert into subscriptions (org_id, plan_code, status, current_period_start, current_period_end)
select id, 'free', 'active', now(), now() + interval '1 month' from organizations;

-- ------------------------------------------------------------ credit tables

create table credit_accounts (
    org_id        uuid primary key references organizations (id) on delete cascade,
    -- Sum of the grants' remainders.
    available     bigint not null default 0,
    -- Spent beyond the grants (a debt, <= 0); new credit pays it back first.
    overage       bigint not null default 0,
    -- The plan's overage limit when overage was last drawn.
    overage_limit bigint not null default 0,
    held          bigint not null default 0,
    -- The soonest expiry of a grant with a remainder or of an open hold.
    next_event_at timestamptz,
    updated_at    timestamptz not null default now(),
    constraint credit_accounts_available check (available >= 0),
    constraint credit_accounts_held check (held >= 0),
    -- The balance (available + overage) never goes below zero, or below
    -- minus the plan's overage limit: enforced here, whatever the code does.
    constraint credit_accounts_overage check (overage <= 0 and overage >= -overage_limit),
    constraint credit_accounts_overage_limit check (overage_limit >= 0)
);
create index credit_accounts_due_idx on credit_accounts (next_event_at)
    where next_event_at is not null;

create table credit_grants (
    org_id      uuid not null references organizations (id) on delete cascade,
    id          uuid not null,
    source      text not null,
    amount      bigint not null,
    remaining   bigint not null,
    priority    int not null default 0,
    expires_at  timestamptz,
    -- Makes a grant once-only: a plan period, a checkout session.
    ref         text,
    description text,
    created_at  timestamptz not null default clock_timestamp(),
    primary key (org_id, id),
    constraint credit_grants_ref_key unique (org_id, ref),
    constraint credit_grants_source
        check (source in ('plan_period', 'purchase', 'promotion', 'adjustment')),
    constraint credit_grants_amount check (amount > 0),
    constraint credit_grants_remaining check (remaining >= 0 and remaining <= amount),
    constraint credit_grants_priority check (priority between -1000 and 1000)
);
-- Spending order: priority, then soonest expiry, then oldest.
create index credit_grants_draw_idx on credit_grants
    (org_id, priority desc, expires_at asc nulls last, created_at, id) where remaining > 0;
create index credit_grants_expiry_idx on credit_grants (org_id, expires_at)
    where remaining > 0 and expires_at is not null;

create table credit_holds (
    org_id      uuid not null references organizations (id) on delete cascade,
    id          uuid not null,
    amount      bigint not null,
    captured    bigint not null default 0,
    status      text not null default 'open',
    description text,
    expires_at  timestamptz not null,
    created_at  timestamptz not null default clock_timestamp(),
    closed_at   timestamptz,
    primary key (org_id, id),
    constraint credit_holds_amount check (amount > 0),
    constraint credit_holds_captured check (captured >= 0 and captured <= amount),
    constraint credit_holds_status check (status in ('open', 'captured', 'released', 'expired'))
);
create index credit_holds_open_idx on credit_holds (org_id, expires_at) where status = 'open';

create table credit_ledger (
    org_id           uuid not null references organizations (id) on delete cascade,
    id               bigint generated always as identity,
    -- The operation this line belongs to (one spend may draw several grants).
    txn              uuid not null,
    kind             text not null,
    src              text not null,
    dst              text not null,
    amount           bigint not null,
    grant_id         uuid,
    hold_id          uuid,
    -- When the movement counts: expiries count from the instant the grant
    -- or hold ran out, even when booked later.
    effective_at     timestamptz not null,
    recorded_at      timestamptz not null default clock_timestamp(),
    description      text,
    actor_user_id    uuid,
    actor_api_key_id uuid,
    primary key (org_id, id),
    constraint credit_ledger_amount check (amount > 0),
    constraint credit_ledger_accounts check (
        src in ('issued', 'available', 'overage', 'held', 'spent', 'expired')
        and dst in ('issued', 'available', 'overage', 'held', 'spent', 'expired')
        and src <> dst),
    constraint credit_ledger_kind
        check (kind in ('grant', 'spend', 'hold', 'capture', 'release', 'expire', 'settle'))
);
create index credit_ledger_effective_idx on credit_ledger (org_id, effective_at);
create index credit_ledger_hold_idx on credit_ledger (org_id, hold_id, id) where hold_id is not null;

-- Idempotency keys of credit writes, recorded in the transaction of the effect.
create table idempotency_keys (
    org_id       uuid not null references organizations (id) on delete cascade,
    scope        text not null,
    key          text not null,
    request_hash bytea not null,
    status       int not null,
    response     jsonb not null,
    created_at   timestamptz not null default now(),
    primary key (org_id, scope, key)
);

do $$
declare t text;
begin
    foreach t in array array['credit_accounts', 'credit_grants', 'credit_holds',
                             'credit_ledger', 'idempotency_keys'] loop
        execute format('alter table %I enable row level security', t);
        execute format('alter table %I force row level security', t);
        execute format('create policy %I on %I using (org_id = (select app.current_org_id()))
                        with check (org_id = (select app.current_org_id()))', t || '_tenant', t);
    end loop;
end
$$;
grant select, insert, update on credit_accounts, credit_grants, credit_holds to tenantry_app;
-- The ledger is append-only, and idempotency keys are never rewritten.
grant select, insert on credit_ledger, idempotency_keys to tenantry_app;
grant delete on idempotency_keys to tenantry_app;

-- Maintenance across orgs, only in a transaction that asks for it: the
-- expiry sweep finds the orgs with something due (it then settles each in
-- that org's own context), and the daily cleanup forgets week-old keys.
create policy credit_accounts_sweep on credit_accounts for select
    using (current_setting('app.credit_sweep', true) = 'on');
create policy idempotency_keys_prune on idempotency_keys for delete
    using (current_setting('app.idempotency_prune', true) = 'on');
-- (A DELETE with a WHERE reads the rows too, under the SELECT policies.)
create policy idempotency_keys_prune_read on idempotency_keys for select
    using (current_setting('app.idempotency_prune', true) = 'on');

-- The floor of the balance comes from the org's plan: whenever overage
-- grows, the row takes the plan's limit, which the check constraint enforces.
create function app.credit_accounts_floor() returns trigger
    language plpgsql
as $$
begin
    new.overage_limit := app.credit_overage_limit(new.org_id);
    return new;
end
$$;

-- The ledger is append-only for everyone. Its rows go only with their org.
create function app.credit_ledger_append_only() returns trigger
    language plpgsql
as $$
begin
    if tg_op = 'DELETE' and not exists (select 1 from organizations where id = old.org_id) then
        return old;
    end if;
    raise exception using errcode = '42501', message = 'the credit ledger is append-only';
end
$$;
create trigger credit_ledger_append_only before update or delete on credit_ledger
    for each row execute function app.credit_ledger_append_only();
create trigger credit_ledger_no_truncate before truncate on credit_ledger
    for each statement execute function app.credit_ledger_append_only();

-- ------------------------------------------------------------ functions
--
-- Business errors carry their own SQLSTATEs, mapped to HTTP by the API:
--   TC402 insufficient credits   TC404 no such hold     TC409 key in use
--   TC410 hold expired           TC411 hold closed      TC413 capture > hold
--   TC422 key reused with another request               TC400 bad argument

create function app.credit_org() returns uuid
    language plpgsql stable
as $$
declare v uuid := app.current_org_id();
begin
    if v is null then
        raise exception using errcode = '42501', message = 'no tenant context';
    end if;
    return v;
end
$$;

-- The response recorded for this idempotency key, or null (go on); or
-- {"conflict": SQLSTATE, "message"}: TC409 while another transaction holds
-- the same key, TC422 when the key was used for another request.
create function app.idem_lookup(p_org uuid, p_scope text, p_key text, p_hash bytea)
    returns jsonb
    language plpgsql
as $$
declare r record;
begin
    if p_key is null then
        return null;
    end if;
    if not pg_try_advisory_xact_lock(hashtextextended(p_org::text || '/' || p_scope || '/' || p_key, 7)) then
        return jsonb_build_object('conflict', 'TC409',
            'message', 'a request with this Idempotency-Key is in progress');
    end if;
    select request_hash, status, response into r
    from idempotency_keys where org_id = p_org and scope = p_scope and key = p_key;
    if not found then
        return null;
    end if;
    if r.request_hash <> p_hash then
        return jsonb_build_object('conflict', 'TC422',
            'message', 'this Idempotency-Key was used with a different request');
    end if;
    return jsonb_build_object('status', r.status, 'body', r.response, 'replayed', true);
end
$$;

-- As app.idem_lookup, raising the conflicts.
create function app.idem_check(p_org uuid, p_scope text, p_key text, p_hash bytea)
    returns jsonb
    language plpgsql
as $$
declare v jsonb := app.idem_lookup(p_org, p_scope, p_key, p_hash);
begin
    if v ? 'conflict' then
        raise exception using errcode = v->>'conflict', message = v->>'message';
    end if;
    return v;
end
$$;

create function app.idem_record(p_org uuid, p_scope text, p_key text, p_hash bytea,
                                p_status int, p_body jsonb)
    returns jsonb
    language plpgsql
as $$
begin
    if p_key is not null then
        insert into idempotency_keys (org_id, scope, key, request_hash, status, response)
        values (p_org, p_scope, p_key, p_hash, p_status, p_body);
    end if;
    return jsonb_build_object('status', p_status, 'body', p_body, 'replayed', false);
end
$$;

-- Books every grant remainder and open hold of the org that ran out by now,
-- effective at the instant it ran out. The caller holds the account lock.
create function app.credit_settle_due(p_org uuid) returns void
    language plpgsql
as $$
declare
    v_now timestamptz := clock_timestamp();
    -- Expiries are the system's doing, not the caller's who happens to book them.
    v_user text := current_setting('app.user_id', true);
    v_key text := current_setting('app.api_key_id', true);
    r record;
begin
    perform set_config('app.user_id', '', true);
    perform set_config('app.api_key_id', '', true);
    for r in select id, expires_at from credit_holds
             where org_id = p_org and status = 'open' and expires_at <= v_now
             order by expires_at, id for update loop
        perform app.credit_hold_close(p_org, r.id, 0, 'expired', r.expires_at, 'hold expired');
    end loop;
    for r in select id, remaining, expires_at from credit_grants
             where org_id = p_org and remaining > 0 and expires_at <= v_now
             order by expires_at, id for update loop
        insert into credit_ledger (org_id, txn, kind, src, dst, amount, grant_id, effective_at, description)
        values (p_org, gen_random_uuid(), 'expire', 'available', 'expired', r.remaining, r.id,
                r.expires_at, 'grant expired');
        update credit_grants set remaining = 0 where org_id = p_org and id = r.id;
        update credit_accounts set available = available - r.remaining where org_id = p_org;
    end loop;
    perform set_config('app.user_id', coalesce(v_user, ''), true);
    perform set_config('app.api_key_id', coalesce(v_key, ''), true);
    update credit_accounts
    set next_event_at = (
            select min(t) from (
                select min(expires_at) as t from credit_grants
                where org_id = p_org and remaining > 0 and expires_at is not null
                union all
                select min(expires_at) from credit_holds where org_id = p_org and status = 'open'
            ) due),
        updated_at = v_now
    where org_id = p_org;
end
$$;

-- Locks the org's account (creating it on first use) after settling what ran out.
create function app.credit_lock(p_org uuid) returns credit_accounts
    language plpgsql
as $$
declare a credit_accounts;
begin
    select * into a from credit_accounts where org_id = p_org for update;
    if not found then
        insert into credit_accounts (org_id) values (p_org) on conflict do nothing;
        select * into a from credit_accounts where org_id = p_org for update;
    end if;
    if a.next_event_at is not null and a.next_event_at <= clock_timestamp() then
        perform app.credit_settle_due(p_org);
        select * into a from credit_accounts where org_id = p_org;
    end if;
    return a;
end
$$;

-- The overage the org's plan allows (0 without a subscription).
create function app.credit_overage_limit(p_org uuid) returns bigint
    language sql stable
as $$
    -- An org whose subscription is canceled or still unpaid (incomplete)
    -- has the free plan's entitlements.
    select coalesce((
        select case when s.status in ('canceled', 'incomplete')
                    then (select f.credit_overage_limit from plans f where f.code = 'free')
                    else p.credit_overage_limit end
        from subscriptions s join plans p on p.code = s.plan_code
        where s.org_id = p_org), 0)
$$;

create trigger credit_accounts_floor before update on credit_accounts
    for each row when (new.overage < 0 and new.overage < old.overage)
    execute function app.credit_accounts_floor();
create trigger credit_accounts_floor_insert before insert on credit_accounts
    for each row when (new.overage < 0)
    execute function app.credit_accounts_floor();

-- Null when the org may draw p_amount now; else what stands in the way
-- ({balance, overage_limit, requested}). The caller holds the account lock.
create function app.credit_shortfall(p_org uuid, p_amount bigint) returns jsonb
    language plpgsql
as $$
declare
    a credit_accounts;
    v_limit bigint;
begin
    select * into a from credit_accounts where org_id = p_org;
    -- Only a draw past the grants needs the plan's overage limit.
    if a.available >= p_amount then
        return null;
    end if;
    v_limit := app.credit_overage_limit(p_org);
    if a.available + a.overage - p_amount >= -v_limit then
        return null;
    end if;
    return jsonb_build_object('balance', a.available + a.overage, 'overage_limit', v_limit,
                              'requested', p_amount);
end
$$;

-- Moves p_amount of the org's balance to p_dst ('spent' or 'held'): from the
-- grants in spending order, then into overage. The caller holds the
-- account lock and has checked the floor (app.credit_shortfall, or for a
-- hold the grants alone); the check constraint on the account is the
-- backstop. Returns the draw: [{grant_id, amount}], grant_id null for overage.
create function app.credit_draw(p_org uuid, p_txn uuid, p_kind text, p_dst text, p_amount bigint,
                                p_hold uuid, p_desc text, p_now timestamptz)
    returns jsonb
    language plpgsql
as $$
declare
    a credit_accounts;
    v_left bigint := p_amount;
    v_take bigint;
    v_drawn jsonb := '[]';
    v_user uuid := nullif(app.current_user_id(), '00000000-0000-0000-0000-000000000000');
    v_key uuid := app.current_api_key_id();
    g record;
begin
    select * into a from credit_accounts where org_id = p_org;
    if a.available > 0 then
        -- The account lock (held by the caller) serialises every change to
        -- the org's grants: no row locks needed here.
        for g in select id, remaining from credit_grants
                 where org_id = p_org and remaining > 0
                 order by priority desc, expires_at asc nulls last, created_at, id loop
            v_take := least(g.remaining, v_left);
            update credit_grants set remaining = remaining - v_take
            where org_id = p_org and id = g.id;
            insert into credit_ledger (org_id, txn, kind, src, dst, amount, grant_id, hold_id,
                                       effective_at, description, actor_user_id, actor_api_key_id)
            values (p_org, p_txn, p_kind, 'available', p_dst, v_take, g.id, p_hold,
                    p_now, p_desc, v_user, v_key);
            v_drawn := v_drawn || jsonb_build_object('grant_id', g.id, 'amount', v_take);
            v_left := v_left - v_take;
            exit when v_left = 0;
        end loop;
    end if;
    if v_left > 0 then
        insert into credit_ledger (org_id, txn, kind, src, dst, amount, hold_id,
                                   effective_at, description, actor_user_id, actor_api_key_id)
        values (p_org, p_txn, p_kind, 'overage', p_dst, v_left, p_hold,
                p_now, p_desc, v_user, v_key);
        v_drawn := v_drawn || jsonb_build_object('grant_id', null, 'amount', v_left);
    end if;
    update credit_accounts
    set available = available - (p_amount - v_left),
        overage = overage - v_left,
        held = held + case when p_dst = 'held' then p_amount else 0 end,
        updated_at = p_now
    where org_id = p_org;
    return v_drawn;
end
$$;

-- Puts p_amount back on grant p_grant (null: back into overage), from p_src
-- ('issued' for a new grant, 'held' for a release). Credit returning to a
-- grant first pays back overage debt; credit returning to a grant that has
-- expired is booked as expired at once.
create function app.credit_return(p_org uuid, p_txn uuid, p_kind text, p_src text, p_amount bigint,
                                  p_grant uuid, p_hold uuid, p_desc text, p_at timestamptz)
    returns void
    language plpgsql
as $$
declare
    v_user uuid := nullif(app.current_user_id(), '00000000-0000-0000-0000-000000000000');
    v_key uuid := app.current_api_key_id();
    v_expires timestamptz;
    v_debt bigint;
    v_settle bigint;
begin
    if p_grant is null then
        insert into credit_ledger (org_id, txn, kind, src, dst, amount, hold_id, effective_at,
                                   description, actor_user_id, actor_api_key_id)
        values (p_org, p_txn, p_kind, p_src, 'overage', p_amount, p_hold, p_at, p_desc, v_user, v_key);
        update credit_accounts set overage = overage + p_amount,
                                   held = held - case when p_src = 'held' then p_amount else 0 end
        where org_id = p_org;
        return;
    end if;
    insert into credit_ledger (org_id, txn, kind, src, dst, amount, grant_id, hold_id, effective_at,
                               description, actor_user_id, actor_api_key_id)
    values (p_org, p_txn, p_kind, p_src, 'available', p_amount, p_grant, p_hold, p_at, p_desc,
            v_user, v_key);
    select expires_at into v_expires from credit_grants where org_id = p_org and id = p_grant;
    if v_expires is not null and v_expires <= p_at then
        insert into credit_ledger (org_id, txn, kind, src, dst, amount, grant_id, hold_id,
                                   effective_at, description)
        values (p_org, p_txn, 'expire', 'available', 'expired', p_amount, p_grant, p_hold, p_at,
                'grant expired');
        update credit_accounts
        set held = held - case when p_src = 'held' then p_amount else 0 end
        where org_id = p_org;
        return;
    end if;
    select -overage into v_debt from credit_accounts where org_id = p_org;
    v_settle := least(v_debt, p_amount);
    if v_settle > 0 then
        insert into credit_ledger (org_id, txn, kind, src, dst, amount, grant_id, effective_at,
                                   description)
        values (p_org, p_txn, 'settle', 'available', 'overage', v_settle, p_grant, p_at,
                'pays back overage');
    end if;
    update credit_grants set remaining = remaining + p_amount - v_settle
    where org_id = p_org and id = p_grant;
    update credit_accounts
    set available = available + p_amount - v_settle,
        overage = overage + v_settle,
        held = held - case when p_src = 'held' then p_amount else 0 end,
        next_event_at = case when v_expires is null then next_event_at
                             else least(coalesce(next_event_at, v_expires), v_expires) end
    where org_id = p_org;
end
$$;

-- Closes an open hold: captures p_capture of it (in the order it was drawn)
-- and returns the rest. The caller holds the account lock.
create function app.credit_hold_close(p_org uuid, p_hold uuid, p_capture bigint, p_status text,
                                      p_at timestamptz, p_desc text)
    returns void
    language plpgsql
as $$
declare
    v_txn uuid := gen_random_uuid();
    v_left bigint := p_capture;
    v_take bigint;
    v_user uuid := nullif(app.current_user_id(), '00000000-0000-0000-0000-000000000000');
    v_key uuid := app.current_api_key_id();
    al record;
begin
    for al in select grant_id, sum(amount)::bigint as amount, min(id) as first
              from credit_ledger
              where org_id = p_org and hold_id = p_hold and kind = 'hold'
              group by grant_id order by min(id) loop
        v_take := least(al.amount, v_left);
        if v_take > 0 then
            insert into credit_ledger (org_id, txn, kind, src, dst, amount, grant_id, hold_id,
                                       effective_at, description, actor_user_id, actor_api_key_id)
            values (p_org, v_txn, 'capture', 'held', 'spent', v_take, al.grant_id, p_hold, p_at,
                    p_desc, v_user, v_key);
            update credit_accounts set held = held - v_take where org_id = p_org;
            v_left := v_left - v_take;
        end if;
        if al.amount > v_take then
            perform app.credit_return(p_org, v_txn, 'release', 'held', al.amount - v_take,
                                      al.grant_id, p_hold, p_desc, p_at);
        end if;
    end loop;
    update credit_holds set status = p_status, captured = p_capture, closed_at = p_at
    where org_id = p_org and id = p_hold;
end
$$;

create function app.credit_view(p_org uuid) returns jsonb
    language sql stable
as $$
    select jsonb_build_object('balance', available + overage, 'held', held)
    from credit_accounts where org_id = p_org
$$;

-- ---------------------------------------------------- operations (the API)

-- The spend itself: its key checked, the account locked and the floor
-- checked (app.credit_shortfall) by the caller, app.credit_spend_batch.
create function app.credit_spend_locked(p_org uuid, p_amount bigint, p_desc text, p_key text,
                                        p_hash bytea)
    returns jsonb
    language plpgsql
as $$
declare
    v_txn uuid := gen_random_uuid();
    v_now timestamptz := clock_timestamp();
    v_drawn jsonb;
begin
    if p_amount is null or p_amount <= 0 then
        raise exception using errcode = 'TC400', message = 'amount must be positive';
    end if;
    v_drawn := app.credit_draw(p_org, v_txn, 'spend', 'spent', p_amount, null, p_desc, v_now);
    return app.idem_record(p_org, 'spend', p_key, p_hash, 200,
        jsonb_build_object('id', v_txn, 'amount', p_amount, 'description', p_desc,
                           'drawn', v_drawn, 'created_at', v_now) || app.credit_view(p_org));
end
$$;

-- A batch of spend requests in one statement (see `OrgCall` in
-- src/auth/rbac.rs and the batcher in src/billing/credits/batch.rs): for
-- each request in order, enter its org as its caller (a user, or an API key
-- by its hash) as `TenantTx` does, check its permission, and spend. The
-- statement's transaction commits as it ends, so an org's account lock is
-- taken once per batch and never waits on the client. The caller orders the
-- requests by org, so concurrent batches lock accounts in one order and
-- cannot deadlock. One result per request: the spend's {status, body,
-- replayed, key_id, touch}; or {"refused": {role, permissions} | null}
-- (null: not a member, or no live key), for the caller's error; or
-- {"error": {code, message, detail}} for a refusal of the ledger's
-- (insufficient credits, an idempotency conflict), decided before the
-- request writes anything (no subtransactions: a batch of hundreds would
-- overflow Postgres's per-backend subtransaction cache).
create function app.credit_spend_batch(p_orgs uuid[], p_users uuid[], p_key_hashes bytea[],
                                       p_perms text[], p_amounts bigint[], p_descs text[],
                                       p_keys text[], p_hashes bytea[])
    returns setof jsonb
    language plpgsql
as $$
declare
    i int;
    v_role text;
    v_perms text[];
    v_key uuid;
    v_touch boolean;
    v_seen text[] := '{}';
    v_prior jsonb;
    v_short jsonb;
    v_org uuid;
    v_locked uuid[] := '{}';
begin
    for i in 1 .. coalesce(array_length(p_amounts, 1), 0) loop
        v_org := p_orgs[i];
        v_role := null;
        v_key := null;
        v_touch := false;
        if p_key_hashes[i] is null then
            perform set_config('app.api_key_id', '', true);
            select e.role, e.permissions into v_role, v_perms
            from app.enter_org(v_org, p_users[i]) e;
        else
            select e.key_id, e.role, e.permissions, e.touch into v_key, v_role, v_perms, v_touch
            from app.enter_api_key(v_org, p_key_hashes[i]) e;
        end if;
        if v_role is null or not (p_perms[i] = any(v_perms))
           or (v_key is not null and v_role = 'owner') then
            return next jsonb_build_object('refused', case when v_role is null then null
                else jsonb_build_object('role', v_role, 'permissions', to_jsonb(v_perms)) end);
            continue;
        end if;
        -- A duplicate in the same batch is as concurrent as one in another
        -- transaction: 409, as there (the advisory lock is ours already).
        if v_org || '/' || p_keys[i] = any(v_seen) then
            return next jsonb_build_object('error', jsonb_build_object('code', 'TC409',
                'message', 'a request with this Idempotency-Key is in progress'));
            continue;
        end if;
        v_seen := v_seen || (v_org || '/' || p_keys[i]);
        v_prior := app.idem_lookup(v_org, 'spend', p_keys[i], p_hashes[i]);
        if v_prior ? 'conflict' then
            return next jsonb_build_object('error', jsonb_build_object(
                'code', v_prior->>'conflict', 'message', v_prior->>'message'));
            continue;
        end if;
        if v_prior is not null then
            return next v_prior || jsonb_build_object('key_id', v_key, 'touch', v_touch);
            continue;
        end if;
        -- Once per org and batch (the requests come grouped by org).
        if not v_org = any(v_locked) then
            perform app.credit_lock(v_org);
            v_locked := v_locked || v_org;
        end if;
        v_short := app.credit_shortfall(v_org, p_amounts[i]);
        if v_short is not null then
            return next jsonb_build_object('error', jsonb_build_object(
                'code', 'TC402', 'message', 'insufficient credits', 'detail', v_short::text));
            continue;
        end if;
        return next app.credit_spend_locked(v_org, p_amounts[i], p_descs[i], p_keys[i],
                                            p_hashes[i])
            || jsonb_build_object('key_id', v_key, 'touch', v_touch);
    end loop;
end
$$;

-- Grants credit to the org of the tenant context; once per p_ref (a second
-- grant with the same ref writes nothing and returns the first grant's id).
create function app.credit_grant(p_amount bigint, p_source text, p_priority int,
                                 p_expires_at timestamptz, p_ref text, p_description text)
    returns uuid
    language plpgsql
as $$
declare
    v_org uuid := app.credit_org();
    v_id uuid;
    v_now timestamptz;
begin
    if p_amount is null or p_amount <= 0 then
        raise exception using errcode = 'TC400', message = 'amount must be positive';
    end if;
    perform app.credit_lock(v_org);
    if p_ref is not null then
        select id into v_id from credit_grants where org_id = v_org and ref = p_ref;
        if found then
            return v_id;
        end if;
    end if;
    v_now := clock_timestamp();
    if p_expires_at is not null and p_expires_at <= v_now then
        raise exception using errcode = 'TC400', message = 'expires_at must be in the future';
    end if;
    v_id := gen_random_uuid();
    insert into credit_grants (org_id, id, source, amount, remaining, priority, expires_at, ref,
                               description, created_at)
    values (v_org, v_id, p_source, p_amount, 0, coalesce(p_priority, 0), p_expires_at, p_ref,
            p_description, v_now);
    perform app.credit_return(v_org, gen_random_uuid(), 'grant', 'issued', p_amount, v_id, null,
                              p_description, v_now);
    return v_id;
end
$$;

-- The grant operation of the API (platform admins), with its idempotency key.
create function app.credit_grant_api(p_amount bigint, p_source text, p_priority int,
                                     p_expires_at timestamptz, p_desc text, p_key text,
                                     p_hash bytea)
    returns jsonb
    language plpgsql
as $$
declare
    v_org uuid := app.credit_org();
    v_prior jsonb := app.idem_check(v_org, 'grant', p_key, p_hash);
    v_id uuid;
begin
    if v_prior is not null then
        return v_prior;
    end if;
    v_id := app.credit_grant(p_amount, p_source, p_priority, p_expires_at, null, p_desc);
    return app.idem_record(v_org, 'grant', p_key, p_hash, 201,
        (select jsonb_build_object('grant', jsonb_build_object(
                    'id', id, 'source', source, 'amount', amount, 'remaining', remaining,
                    'priority', priority, 'expires_at', expires_at, 'description', description,
                    'created_at', created_at))
         from credit_grants where org_id = v_org and id = v_id) || app.credit_view(v_org));
end
$$;

create function app.credit_hold_json(p_org uuid, p_hold uuid) returns jsonb
    language sql stable
as $$
    select jsonb_build_object('id', id, 'amount', amount, 'captured', captured, 'status', status,
                              'description', description, 'expires_at', expires_at,
                              'created_at', created_at, 'closed_at', closed_at)
    from credit_holds where org_id = p_org and id = p_hold
$$;

-- Reserves p_amount until p_expires_at.
create function app.credit_hold(p_id uuid, p_amount bigint, p_expires_at timestamptz, p_desc text,
                                p_key text, p_hash bytea)
    returns jsonb
    language plpgsql
as $$
declare
    v_org uuid := app.credit_org();
    v_prior jsonb := app.idem_check(v_org, 'hold', p_key, p_hash);
    a credit_accounts;
    v_now timestamptz;
    v_drawn jsonb;
begin
    if v_prior is not null then
        return v_prior;
    end if;
    if p_amount is null or p_amount <= 0 then
        raise exception using errcode = 'TC400', message = 'amount must be positive';
    end if;
    a := app.credit_lock(v_org);
    v_now := clock_timestamp();
    if p_expires_at <= v_now then
        raise exception using errcode = 'TC400', message = 'the hold would expire at once';
    end if;
    -- A hold reserves granted credits only, never overage: what it holds
    -- always goes back to a grant.
    if a.available < p_amount then
        raise exception using errcode = 'TC402', message = 'insufficient credits',
            detail = jsonb_build_object('balance', a.available + a.overage, 'overage_limit', 0,
                                        'requested', p_amount)::text;
    end if;
    insert into credit_holds (org_id, id, amount, description, expires_at, created_at)
    values (v_org, p_id, p_amount, p_desc, p_expires_at, v_now);
    v_drawn := app.credit_draw(v_org, gen_random_uuid(), 'hold', 'held', p_amount, p_id, p_desc, v_now);
    update credit_accounts
    set next_event_at = least(coalesce(next_event_at, p_expires_at), p_expires_at)
    where org_id = v_org;
    return app.idem_record(v_org, 'hold', p_key, p_hash, 201,
        jsonb_build_object('hold', app.credit_hold_json(v_org, p_id), 'drawn', v_drawn)
        || app.credit_view(v_org));
end
$$;

-- Captures p_amount (null: all) of an open hold and returns the rest, or
-- (p_release) returns all of it.
create function app.credit_settle_hold(p_hold uuid, p_amount bigint, p_release boolean,
                                       p_desc text, p_key text, p_hash bytea)
    returns jsonb
    language plpgsql
as $$
declare
    v_org uuid := app.credit_org();
    v_scope text := case when p_release then 'release' else 'capture' end;
    v_prior jsonb := app.idem_check(v_org, v_scope, p_key, p_hash);
    h credit_holds;
    v_capture bigint;
begin
    if v_prior is not null then
        return v_prior;
    end if;
    perform app.credit_lock(v_org);
    select * into h from credit_holds where org_id = v_org and id = p_hold;
    if not found then
        raise exception using errcode = 'TC404', message = 'hold not found';
    end if;
    if h.status = 'expired' then
        raise exception using errcode = 'TC410', message = 'the hold has expired';
    end if;
    if h.status <> 'open' then
        raise exception using errcode = 'TC411', message = 'the hold is already ' || h.status;
    end if;
    v_capture := case when p_release then 0 else coalesce(p_amount, h.amount) end;
    if v_capture < 0 or (not p_release and v_capture = 0) then
        raise exception using errcode = 'TC400', message = 'amount must be positive';
    end if;
    if v_capture > h.amount then
        raise exception using errcode = 'TC413',
            message = format('the hold is for %s credits', h.amount);
    end if;
    perform app.credit_hold_close(v_org, p_hold, v_capture,
                                  case when p_release then 'released' else 'captured' end,
                                  clock_timestamp(), coalesce(p_desc, h.description));
    return app.idem_record(v_org, v_scope, p_key, p_hash, 200,
        jsonb_build_object('hold', app.credit_hold_json(v_org, p_hold)) || app.credit_view(v_org));
end
$$;

-- The orgs with a grant or hold that ran out and is not booked yet (ids
-- only), for the sweep job, which books each in a transaction of its own.
create function app.credit_due_orgs(p_limit int) returns uuid[]
    language plpgsql
as $$
declare v_orgs uuid[];
begin
    perform set_config('app.credit_sweep', 'on', true);
    select array_agg(org_id) into v_orgs from (
        select org_id from credit_accounts
        where next_event_at <= clock_timestamp()
        order by next_event_at limit p_limit) due;
    perform set_config('app.credit_sweep', '', true);
    return coalesce(v_orgs, '{}');
end
$$;

-- Every difference between the projections and the ledger (none: consistent).
create function app.credit_reconcile()
    returns table (org_id uuid, item text, stored bigint, ledger bigint)
    language sql stable
as $$
    with sums as (
        select l.org_id,
               sum(case when dst = 'available' then amount when src = 'available' then -amount else 0 end)::bigint as available,
               sum(case when dst = 'overage' then amount when src = 'overage' then -amount else 0 end)::bigint as overage,
               sum(case when dst = 'held' then amount when src = 'held' then -amount else 0 end)::bigint as held
        from credit_ledger l group by l.org_id
    ), accounts as (
        select coalesce(a.org_id, s.org_id) as org_id,
               coalesce(a.available, 0) as a_available, coalesce(s.available, 0) as l_available,
               coalesce(a.overage, 0) as a_overage, coalesce(s.overage, 0) as l_overage,
               coalesce(a.held, 0) as a_held, coalesce(s.held, 0) as l_held
        from credit_accounts a full join sums s on s.org_id = a.org_id
    ), grant_sums as (
        select g.org_id, g.id, g.remaining,
               coalesce((select sum(case when dst = 'available' then amount else -amount end)::bigint
                         from credit_ledger l
                         where l.org_id = g.org_id and l.grant_id = g.id
                           and 'available' in (l.src, l.dst)), 0) as ledger
        from credit_grants g
    ), hold_sums as (
        select h.org_id, h.id, h.status,
               case when h.status = 'open' then h.amount else 0 end as open_amount,
               coalesce((select sum(case when dst = 'held' then amount else -amount end)::bigint
                         from credit_ledger l
                         where l.org_id = h.org_id and l.hold_id = h.id
                           and 'held' in (l.src, l.dst)), 0) as ledger
        from credit_holds h
    )
    select org_id, 'available', a_available, l_available from accounts where a_available <> l_available
    union all
    select org_id, 'overage', a_overage, l_overage from accounts where a_overage <> l_overage
    union all
    select org_id, 'held', a_held, l_held from accounts where a_held <> l_held
    union all
    select org_id, 'grant ' || id || ' remaining', remaining, ledger from grant_sums where remaining <> ledger
    union all
    select org_id, 'hold ' || id || ' held', open_amount, ledger from hold_sums where open_amount <> ledger
    order by 1, 2
$$;

-- Forgets idempotency keys older than p_age (they are kept a week).
create function app.idempotency_prune(p_age interval) returns bigint
    language plpgsql
as $$
declare n bigint;
begin
    perform set_config('app.idempotency_prune', 'on', true);
    delete from idempotency_keys where created_at < now() - p_age;
    get diagnostics n = row_count;
    perform set_config('app.idempotency_prune', '', true);
    return n;
end
$$;

-- The ledger's functions are for the application role (and the owner) only.
do $$
declare f regprocedure;
begin
    for f in select p.oid::regprocedure from pg_proc p join pg_namespace n on n.oid = p.pronamespace
             where n.nspname = 'app'
               and (p.proname like 'credit\_%' or p.proname like 'idem%') loop
        execute format('revoke execute on function %s from public', f);
        if f <> 'app.credit_reconcile()'::regprocedure then
            execute format('grant execute on function %s to tenantry_app', f);
        end if;
    end loop;
end
$$;

-- Before a read: books what ran out in the org of the tenant context, if
-- anything has (a cheap check otherwise).
create function app.credit_refresh() returns void
    language plpgsql
as $$
declare v_org uuid := app.credit_org();
begin
    if exists (select 1 from credit_accounts
               where org_id = v_org and next_event_at <= clock_timestamp()) then
        perform app.credit_lock(v_org);
    end if;
end
$$;
