//! The org's subscription as it is now: created with the org, read with
//! its plans, what it entitles the org to, and the audit of its changes.

use serde_json::json;
use sqlx::PgConnection;
use uuid::Uuid;

use super::periods::{grant_period, now};
use super::plans::plan;
use crate::billing::model::{Entitlements, FREE_PLAN, Plan, Subscription, SubscriptionView};
use crate::billing::repo;
use crate::core::db::TenantTx;
use crate::core::error::ApiError;

pub(super) async fn audit(
    tx: &mut TenantTx,
    action: &str,
    before: Option<&Subscription>,
    after: Option<&Subscription>,
) -> Result<(), ApiError> {
    let target_id = Some(tx.org_id().to_string());
    crate::core::audit::record(
        tx,
        crate::core::audit::Entry {
            action,
            target_type: "subscription",
            target_id,
            before: before.map(|s| json!(s)),
            after: after.map(|s| json!(s)),
        },
    )
    .await?;
    Ok(())
}

/// Puts a new org on the free plan (status active, one period from now) and
/// grants the period's credits, in the org's creating transaction. (The
/// org's `org.created` audit row covers it: every org starts this way.)
pub async fn create_for_new_org(tx: &mut TenantTx) -> Result<Subscription, sqlx::Error> {
    let org_id = tx.org_id();
    // The free plan is seeded by the migrations: without it, no org can start.
    let (free, _) = repo::plan(tx.conn(), FREE_PLAN)
        .await?
        .ok_or(sqlx::Error::RowNotFound)?;
    let start = now();
    let end = free.period_end(start);
    let sub = repo::insert_subscription(tx.conn(), org_id, FREE_PLAN, start, end).await?;
    grant_period(tx.conn(), org_id, &free, start, end).await?;
    Ok(sub)
}

pub(super) async fn current(tx: &mut TenantTx, lock: bool) -> Result<Subscription, ApiError> {
    let org_id = tx.org_id();
    repo::get_subscription(tx.conn(), org_id, lock)
        .await?
        .ok_or(ApiError::NotFound("subscription"))
}

pub(super) async fn view(
    conn: &mut PgConnection,
    sub: Subscription,
) -> Result<SubscriptionView, ApiError> {
    let plan = plan(conn, &sub.plan_code).await?;
    let pending_plan = match &sub.pending_plan_code {
        Some(code) => Some(self::plan(conn, code).await?),
        None => None,
    };
    Ok(SubscriptionView {
        subscription: sub,
        plan,
        pending_plan,
    })
}

/// The org's subscription with its plan and pending plan.
pub async fn get(tx: &mut TenantTx) -> Result<SubscriptionView, ApiError> {
    let sub = current(tx, false).await?;
    view(tx.conn(), sub).await
}

/// Whether a subscription in this state keeps its plan's entitlements; a
/// canceled one (and one whose first payment is still open) gets the free
/// plan's.
pub(super) fn keeps_plan(status: &str) -> bool {
    !matches!(status, "canceled" | "incomplete")
}

/// The plan whose entitlements apply to the org now, and the subscription.
pub(super) async fn entitled_plan(
    conn: &mut PgConnection,
    org_id: Uuid,
) -> Result<(Option<Subscription>, Plan), ApiError> {
    let sub = repo::get_subscription(conn, org_id, false).await?;
    let code = match &sub {
        Some(s) if keeps_plan(&s.status) => s.plan_code.clone(),
        _ => FREE_PLAN.to_owned(),
    };
    let plan = plan(conn, &code).await?;
    Ok((sub, plan))
}

/// What the org may do now.
pub async fn entitlements(tx: &mut TenantTx) -> Result<Entitlements, ApiError> {
    let org_id = tx.org_id();
    let (sub, plan) = entitled_plan(tx.conn(), org_id).await?;
    let seats_used = repo::seats_used(tx.conn(), org_id).await?;
    Ok(Entitlements {
        plan: plan.code,
        status: sub.map(|s| s.status).unwrap_or_else(|| "active".to_owned()),
        seat_limit: plan.seat_limit,
        seats_used,
        features: plan.features,
        credits_per_period: plan.credits_per_period,
        credit_overage_limit: plan.credit_overage_limit,
    })
}
