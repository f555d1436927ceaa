//! SQL of billing: plans and subscriptions. Subscription queries run in a
//! tenant transaction and still filter by `org_id`: RLS is the second wall.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use super::model::{AdminPlan, Plan, PlanInput, Subscription};

macro_rules! plan_columns {
    () => {
        "code, name, price_minor, currency, billing_interval as interval, trial_days,
         credits_per_period, seat_limit, features, credit_overage_limit, updated_at"
    };
}

macro_rules! admin_plan_columns {
    () => {
        concat!(plan_columns!(), ", active, sort_order, created_at")
    };
}

macro_rules! subscription_columns {
    () => {
        "org_id, plan_code, status, current_period_start, current_period_end, trial_end,
         cancel_at_period_end, canceled_at, pending_plan_code, provider,
         provider_subscription_id, trial_used, created_at, updated_at"
    };
}

// ---------------------------------------------------------------- plans

/// The active plans, in catalog order.
pub async fn active_plans(conn: &mut PgConnection) -> sqlx::Result<Vec<Plan>> {
    sqlx::query_as(concat!(
        "select ",
        plan_columns!(),
        " from plans where active order by sort_order, price_minor, code"
    ))
    .fetch_all(conn)
    .await
}

/// Every plan, active or not, in catalog order.
pub async fn all_plans(conn: &mut PgConnection) -> sqlx::Result<Vec<AdminPlan>> {
    sqlx::query_as(concat!(
        "select ",
        admin_plan_columns!(),
        " from plans order by sort_order, price_minor, code"
    ))
    .fetch_all(conn)
    .await
}

/// One plan, active or not.
pub async fn admin_plan(
    conn: &mut PgConnection,
    code: &str,
    lock: bool,
) -> sqlx::Result<Option<AdminPlan>> {
    let sql = if lock {
        concat!(
            "select ",
            admin_plan_columns!(),
            " from plans where code = $1 for update"
        )
    } else {
        concat!(
            "select ",
            admin_plan_columns!(),
            " from plans where code = $1"
        )
    };
    sqlx::query_as(sql).bind(code).fetch_optional(conn).await
}

/// One plan with whether it is active.
pub async fn plan(conn: &mut PgConnection, code: &str) -> sqlx::Result<Option<(Plan, bool)>> {
    Ok(admin_plan(conn, code, false)
        .await?
        .map(|p| (p.plan, p.active)))
}

/// Inserts or replaces a plan (the transaction must be the plan admin's).
/// Returns the plan and whether it was created.
pub async fn upsert_plan(
    conn: &mut PgConnection,
    code: &str,
    p: &PlanInput,
) -> sqlx::Result<(AdminPlan, bool)> {
    let row: AdminPlanCreated = sqlx::query_as(concat!(
        "insert into plans (code, name, price_minor, currency, billing_interval, trial_days,
                            credits_per_period, seat_limit, features, credit_overage_limit,
                            active, sort_order)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
         on conflict (code) do update set
            name = excluded.name, price_minor = excluded.price_minor,
            currency = excluded.currency, billing_interval = excluded.billing_interval,
            trial_days = excluded.trial_days, credits_per_period = excluded.credits_per_period,
            seat_limit = excluded.seat_limit, features = excluded.features,
            credit_overage_limit = excluded.credit_overage_limit, active = excluded.active,
            sort_order = excluded.sort_order, updated_at = now()
         returning ",
        admin_plan_columns!(),
        ", (xmax = 0) as created"
    ))
    .bind(code)
    .bind(&p.name)
    .bind(p.price_minor)
    .bind(&p.currency)
    .bind(&p.interval)
    .bind(p.trial_days)
    .bind(p.credits_per_period)
    .bind(p.seat_limit)
    .bind(&p.features)
    .bind(p.credit_overage_limit)
    .bind(p.active)
    .bind(p.sort_order)
    .fetch_one(conn)
    .await?;
    Ok((row.plan, row.created))
}

#[derive(sqlx::FromRow)]
struct AdminPlanCreated {
    #[sqlx(flatten)]
    plan: AdminPlan,
    created: bool,
}

pub async fn deactivate_plan(
    conn: &mut PgConnection,
    code: &str,
) -> sqlx::Result<Option<AdminPlan>> {
    sqlx::query_as(concat!(
        "update plans set active = false,
                updated_at = case when active then now() else updated_at end
         where code = $1 returning ",
        admin_plan_columns!()
    ))
    .bind(code)
    .fetch_optional(conn)
    .await
}

/// Orgs on the plan or with a downgrade to it pending (across orgs, through
/// `app.plan_subscriber_count`).
pub async fn plan_subscriber_count(conn: &mut PgConnection, code: &str) -> sqlx::Result<i64> {
    sqlx::query_scalar("select app.plan_subscriber_count($1)")
        .bind(code)
        .fetch_one(conn)
        .await
}

// ---------------------------------------------------------------- subscriptions

pub async fn get_subscription(
    conn: &mut PgConnection,
    org_id: Uuid,
    lock: bool,
) -> sqlx::Result<Option<Subscription>> {
    let sql = if lock {
        concat!(
            "select ",
            subscription_columns!(),
            " from subscriptions where org_id = $1 for update"
        )
    } else {
        concat!(
            "select ",
            subscription_columns!(),
            " from subscriptions where org_id = $1"
        )
    };
    sqlx::query_as(sql).bind(org_id).fetch_optional(conn).await
}

/// A new org's subscription.
pub async fn insert_subscription(
    conn: &mut PgConnection,
    org_id: Uuid,
    plan_code: &str,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> sqlx::Result<Subscription> {
    sqlx::query_as(concat!(
        "insert into subscriptions (org_id, plan_code, status, current_period_start, current_period_end)
         values ($1, $2, 'active', $3, $4) returning ",
        subscription_columns!()
    ))
    .bind(org_id)
    .bind(plan_code)
    .bind(start)
    .bind(end)
    .fetch_one(conn)
    .await
}

/// Writes the changeable state of a subscription.
pub async fn update_subscription(
    conn: &mut PgConnection,
    s: &Subscription,
) -> sqlx::Result<Subscription> {
    sqlx::query_as(concat!(
        "update subscriptions set plan_code = $2, status = $3, current_period_start = $4,
                current_period_end = $5, trial_end = $6, cancel_at_period_end = $7,
                canceled_at = $8, pending_plan_code = $9, trial_used = $10, updated_at = now()
         where org_id = $1 returning ",
        subscription_columns!()
    ))
    .bind(s.org_id)
    .bind(&s.plan_code)
    .bind(&s.status)
    .bind(s.current_period_start)
    .bind(s.current_period_end)
    .bind(s.trial_end)
    .bind(s.cancel_at_period_end)
    .bind(s.canceled_at)
    .bind(&s.pending_plan_code)
    .bind(s.trial_used)
    .fetch_one(conn)
    .await
}

/// Members of the org.
pub async fn member_count(conn: &mut PgConnection, org_id: Uuid) -> sqlx::Result<i64> {
    sqlx::query_scalar("select count(*) from memberships where org_id = $1")
        .bind(org_id)
        .fetch_one(conn)
        .await
}

/// Members plus open (unaccepted, unrevoked, unexpired) invitations.
pub async fn seats_used(conn: &mut PgConnection, org_id: Uuid) -> sqlx::Result<i64> {
    sqlx::query_scalar(
        "select (select count(*) from memberships where org_id = $1)
              + (select count(*) from invitations
                 where org_id = $1 and accepted_at is null and revoked_at is null
                   and expires_at > now())",
    )
    .bind(org_id)
    .fetch_one(conn)
    .await
}

/// Takes the org's row lock, skipping an org whose row another transaction
/// holds (`false`), or that is gone.
pub async fn try_lock_org(conn: &mut PgConnection, org_id: Uuid) -> sqlx::Result<bool> {
    let row: Option<(Uuid,)> =
        sqlx::query_as("select id from organizations where id = $1 for update skip locked")
            .bind(org_id)
            .fetch_optional(conn)
            .await?;
    Ok(row.is_some())
}

/// Org ids whose subscription period has ended, after `after` (across orgs,
/// through `app.billing_due_orgs`; the transaction must have no tenant context).
pub async fn due_orgs(
    conn: &mut PgConnection,
    after: Option<Uuid>,
    limit: i32,
) -> sqlx::Result<Vec<Uuid>> {
    sqlx::query_scalar("select app.billing_due_orgs($1, $2)")
        .bind(after)
        .bind(limit)
        .fetch_all(conn)
        .await
}

/// Grants the credits of a plan period, once per `reference` in the org
/// (`app.credit_grant`, in the tenant context of the transaction).
pub async fn grant_credits(
    conn: &mut PgConnection,
    amount: i64,
    source: &str,
    priority: i32,
    expires_at: Option<DateTime<Utc>>,
    reference: &str,
    description: &str,
) -> sqlx::Result<Uuid> {
    sqlx::query_scalar("select app.credit_grant($1, $2, $3, $4, $5, $6)")
        .bind(amount)
        .bind(source)
        .bind(priority)
        .bind(expires_at)
        .bind(reference)
        .bind(description)
        .fetch_one(conn)
        .await
}

/// Whether a change of the org's subscription is being made at the payment
/// provider (its lease has not run out).
pub async fn provider_change_in_flight(
    conn: &mut PgConnection,
    org_id: Uuid,
) -> sqlx::Result<bool> {
    sqlx::query_scalar(
        "select coalesce(provider_change_until > now(), false) from subscriptions
         where org_id = $1",
    )
    .bind(org_id)
    .fetch_optional(conn)
    .await
    .map(|v: Option<bool>| v.unwrap_or(false))
}

/// Takes the org's lease on subscription changes for `seconds` (by the
/// database's clock, which also judges it); returns until when.
pub async fn set_provider_change(
    conn: &mut PgConnection,
    org_id: Uuid,
    seconds: i64,
) -> sqlx::Result<DateTime<Utc>> {
    sqlx::query_scalar(
        "update subscriptions set provider_change_until = now() + make_interval(secs => $2)
         where org_id = $1 returning provider_change_until",
    )
    .bind(org_id)
    .bind(seconds as f64)
    .fetch_one(conn)
    .await
}

/// Releases the lease taken until `until` (not one a later change took).
pub async fn release_provider_change(
    conn: &mut PgConnection,
    org_id: Uuid,
    until: DateTime<Utc>,
) -> sqlx::Result<()> {
    sqlx::query(
        "update subscriptions set provider_change_until = null
         where org_id = $1 and provider_change_until = $2",
    )
    .bind(org_id)
    .bind(until)
    .execute(conn)
    .await?;
    Ok(())
}

/// Ends the plan-period grants a period starting at `start` supersedes:
/// every other plan-period grant of the org still running after `start`
/// (an upgrade started a new period mid-way through the old one). What is
/// left of them is booked as expired, under the account lock (taken first,
/// as every credit write does); credits they lent to open holds expire when
/// those are released. A renewal (`start` = the old end) ends nothing.
pub async fn end_superseded_period_grants(
    conn: &mut PgConnection,
    org_id: Uuid,
    start: DateTime<Utc>,
    current_ref: &str,
) -> sqlx::Result<u64> {
    const SUPERSEDED: &str = "org_id = $1 and source = 'plan_period' and ref like 'period:%'
         and ref <> $3 and expires_at > $2 and expires_at > clock_timestamp()";
    let any: bool = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "select exists (select 1 from credit_grants where {SUPERSEDED})"
    )))
    .bind(org_id)
    .bind(start)
    .bind(current_ref)
    .fetch_one(&mut *conn)
    .await?;
    if !any {
        return Ok(0);
    }
    sqlx::query("select 1 from app.credit_lock($1)")
        .bind(org_id)
        .execute(&mut *conn)
        .await?;
    let ended = sqlx::query(sqlx::AssertSqlSafe(format!(
        "update credit_grants set expires_at = clock_timestamp() where {SUPERSEDED}"
    )))
    .bind(org_id)
    .bind(start)
    .bind(current_ref)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    sqlx::query("select app.credit_settle_due($1)")
        .bind(org_id)
        .execute(conn)
        .await?;
    Ok(ended)
}

/// Takes the org's row in KEY SHARE mode: first, in a transaction that
/// writes rows referencing the org after locking its subscription, so that
/// it waits for a request holding the org lock instead of deadlocking with
/// it (that request takes the org, then the subscription).
pub async fn key_share_org(conn: &mut PgConnection, org_id: Uuid) -> sqlx::Result<()> {
    sqlx::query("select 1 from organizations where id = $1 for key share")
        .bind(org_id)
        .execute(conn)
        .await?;
    Ok(())
}
