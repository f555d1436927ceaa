//! The org's subscription as it is now: created with the org, read with
//! its plans, what it entitles the org to (see `plans` for the plan that
//! applies), and the audit of its changes.

use serde_json::json;
use sqlx::PgConnection;

use super::error::SubscriptionError;
use super::periods::{grant_period, now};
use super::plans::{entitled_plan, plan};
use crate::billing::model::{Entitlements, FREE_PLAN, Subscription, SubscriptionView};
use crate::billing::repo;
use crate::core::db::TenantTx;

pub(super) async fn audit(
    tx: &mut TenantTx,
    action: &str,
    before: Option<&Subscription>,
    after: Option<&Subscription>,
) -> Result<(), sqlx::Error> {
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
    .await
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

pub(super) async fn current(
    tx: &mut TenantTx,
    lock: bool,
) -> Result<Subscription, SubscriptionError> {
    let org_id = tx.org_id();
    repo::get_subscription(tx.conn(), org_id, lock)
        .await?
        .ok_or(SubscriptionError::NotFound)
}

pub(super) async fn view(
    conn: &mut PgConnection,
    sub: Subscription,
) -> Result<SubscriptionView, sqlx::Error> {
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
pub async fn get(tx: &mut TenantTx) -> Result<SubscriptionView, SubscriptionError> {
    let sub = current(tx, false).await?;
    Ok(view(tx.conn(), sub).await?)
}

/// What the org may do now.
pub async fn entitlements(tx: &mut TenantTx) -> Result<Entitlements, sqlx::Error> {
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
