-- Billing, third slice: plan administration and the subscription rollover.

-- Plans are written only by platform admins (`GET|PUT /api/v1/admin/plans`,
-- `tenantry admin plans`): a transaction that declared itself the plan
-- administrator (`app.plan_admin = on`, src/billing/plans_admin.rs) inserts
-- and updates plans; everyone reads them; nobody deletes them (a plan in use
-- is deactivated instead, and subscriptions reference it).
alter table plans enable row level security;
alter table plans force row level security;
create policy plans_read on plans for select using (true);
create policy plans_admin_insert on plans for insert
    with check (current_setting('app.plan_admin', true) = 'on');
create policy plans_admin_update on plans for update
    using (current_setting('app.plan_admin', true) = 'on')
    with check (current_setting('app.plan_admin', true) = 'on');
grant insert, update on plans to tenantry_app;

-- Two questions need a look across orgs' subscriptions, outside any tenant
-- context: which subscriptions are due for their period rollover (the
-- `billing.rollover` job), and whether orgs subscribe to a plan (a plan's
-- currency cannot change under its subscribers). The functions below answer
-- them and nothing more: each turns on `app.billing_scan` for the one query
-- it runs, and the policy shows that query only the rows it is about (due
-- and not managed by Stripe; on the plan). Only org ids or a count leave.
create policy subscriptions_scan on subscriptions for select
    using (
        (select app.current_org_id()) is null
        and (
            (current_setting('app.billing_scan', true) = 'due'
             and current_period_end <= now() and provider <> 'stripe')
            or current_setting('app.billing_scan', true) = 'plan:' || plan_code
            or current_setting('app.billing_scan', true) = 'plan:' || pending_plan_code
        )
    );

create index subscriptions_due_idx on subscriptions (current_period_end)
    where provider <> 'stripe';

-- Org ids of subscriptions whose period ended (not Stripe's, which its
-- webhooks advance), in org id order after p_after, at most p_limit.
create function app.billing_due_orgs(p_after uuid, p_limit int) returns setof uuid
    language plpgsql volatile
as $$
begin
    perform set_config('app.billing_scan', 'due', true);
    return query
        select s.org_id from subscriptions s
        where s.current_period_end <= now() and s.provider <> 'stripe'
          and (p_after is null or s.org_id > p_after)
        order by s.org_id
        limit greatest(p_limit, 0);
    perform set_config('app.billing_scan', '', true);
end
$$;

-- How many orgs are on the plan or have a downgrade to it pending.
create function app.plan_subscriber_count(p_code text) returns bigint
    language plpgsql volatile
as $$
declare n bigint;
begin
    perform set_config('app.billing_scan', 'plan:' || p_code, true);
    select count(*) into n from subscriptions s
        where s.plan_code = p_code or s.pending_plan_code = p_code;
    perform set_config('app.billing_scan', '', true);
    return n;
end
$$;

grant execute on function app.billing_due_orgs(uuid, int), app.plan_subscriber_count(text)
    to tenantry_app;
