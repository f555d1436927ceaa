//! The period rollover of manual subscriptions (the `billing.rollover`
//! job): a due period ends, a cancellation or a pending downgrade applies,
//! a trial ends, the period advances and its credits are granted, once per
//! period (the grant's reference names the period) however many workers
//! run it. Stripe's subscriptions are advanced by its webhooks instead.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use uuid::Uuid;

use super::current::audit;
use super::error::SubscriptionError;
use super::periods::{grant_period, invoice_period, now};
use super::plans::{keeps_plan, plan};
use crate::billing::model::FREE_PLAN;
use crate::billing::repo;
use crate::config::PaymentProviderKind;
use crate::core::db::{SystemScope, TenantTx, system_tx};
use crate::jobs::{Job, JobContext, JobError, RetryPolicy};

/// Orgs per discovery query of the rollover.
const ROLLOVER_BATCH: i32 = 200;

/// What one rollover pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RolloverReport {
    /// Subscriptions moved into their current period.
    pub advanced: u64,
    /// Due subscriptions left for the next pass (their org was busy, or
    /// another worker had them).
    pub skipped: u64,
    /// Orgs whose rollover failed (logged).
    pub failed: u64,
}

/// What happened to one org's subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rolled {
    Advanced,
    /// Not due (any more), Stripe's, or gone.
    NotDue,
    /// Another transaction holds the org.
    Busy,
}

/// Ends every due period (batches of orgs, each in its own tenant transaction).
pub async fn rollover_due(
    pool: &PgPool,
    provider: PaymentProviderKind,
) -> Result<RolloverReport, sqlx::Error> {
    let mut report = RolloverReport::default();
    let mut after: Option<Uuid> = None;
    loop {
        let ids = {
            let mut tx = system_tx(pool, SystemScope::Billing).await?;
            let ids = repo::due_orgs(&mut tx, after, ROLLOVER_BATCH).await?;
            tx.commit().await?;
            ids
        };
        let Some(last) = ids.last().copied() else {
            break;
        };
        after = Some(last);
        for org_id in &ids {
            match rollover_org(pool, *org_id, provider).await {
                Ok(Rolled::Advanced) => report.advanced += 1,
                Ok(Rolled::NotDue) => {}
                Ok(Rolled::Busy) => report.skipped += 1,
                Err(e) => {
                    report.failed += 1;
                    tracing::warn!(org_id = %org_id, error = %e, "subscription rollover failed");
                }
            }
        }
        if ids.len() < ROLLOVER_BATCH as usize {
            break;
        }
    }
    Ok(report)
}

/// Ends the org's due period, in its own tenant transaction as the system.
pub async fn rollover_org(
    pool: &PgPool,
    org_id: Uuid,
    provider: PaymentProviderKind,
) -> Result<Rolled, SubscriptionError> {
    let mut tx = TenantTx::enter_as_system(pool, org_id, SystemScope::Billing).await?;
    if !repo::try_lock_org(tx.conn(), org_id).await? {
        return Ok(Rolled::Busy);
    }
    let Some(before) = repo::get_subscription(tx.conn(), org_id, true).await? else {
        return Ok(Rolled::NotDue);
    };
    let now = now();
    if before.current_period_end > now || before.provider == "stripe" {
        return Ok(Rolled::NotDue);
    }
    let mut next = before.clone();
    let mut events = Vec::new();
    if before.cancel_at_period_end {
        next.plan_code = FREE_PLAN.to_owned();
        next.status = "canceled".to_owned();
        next.canceled_at = Some(before.current_period_end);
        next.cancel_at_period_end = false;
        next.pending_plan_code = None;
        events.push("subscription.canceled");
    } else if let Some(pending) = before.pending_plan_code.clone() {
        next.plan_code = pending;
        next.pending_plan_code = None;
        if next.status == "trialing" {
            next.status = "active".to_owned();
        }
        events.push("subscription.downgraded");
    }
    if next.status == "trialing" && next.trial_end.is_none_or(|t| t <= now) {
        next.status = "active".to_owned();
        events.push("subscription.trial_ended");
    }
    let plan = plan(tx.conn(), &next.plan_code).await?;
    // Whole periods from the old end; the credits only for the current one.
    let (mut start, mut end) = (
        before.current_period_end,
        plan.period_end(before.current_period_end),
    );
    let mut steps = 0;
    while end <= now && steps < 100_000 {
        (start, end) = (end, plan.period_end(end));
        steps += 1;
    }
    next.current_period_start = start;
    next.current_period_end = end;
    let after = repo::update_subscription(tx.conn(), &next).await?;
    let entitled = if keeps_plan(&after.status) {
        plan
    } else {
        self::plan(tx.conn(), FREE_PLAN).await?
    };
    grant_period(tx.conn(), org_id, &entitled, start, end).await?;
    if matches!(after.status.as_str(), "active" | "past_due") {
        invoice_period(tx.conn(), provider, org_id, &entitled, start, end).await?;
    }
    for action in events {
        audit(&mut tx, action, Some(&before), Some(&after)).await?;
    }
    audit(&mut tx, "subscription.renewed", Some(&before), Some(&after)).await?;
    tx.commit().await?;
    tracing::info!(
        %org_id,
        plan = %after.plan_code,
        status = %after.status,
        period_start = %start,
        period_end = %end,
        "subscription period advanced"
    );
    Ok(Rolled::Advanced)
}

/// The job the scheduler enqueues every minute: ends every period that is
/// due. Running it twice, or on several workers at once, grants each
/// period's credits once.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Rollover {}

impl Job for Rollover {
    const KIND: &'static str = "billing.rollover";
    /// The payment provider that takes payments.
    type Deps = PaymentProviderKind;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 3,
            backoff: Duration::from_secs(5),
            max_backoff: Duration::from_secs(60),
            timeout: Duration::from_secs(10 * 60),
        }
    }

    async fn run(self, provider: &PaymentProviderKind, ctx: JobContext) -> Result<(), JobError> {
        let report = rollover_due(ctx.pool(), *provider).await?;
        if report.advanced > 0 || report.skipped > 0 || report.failed > 0 {
            tracing::info!(
                advanced = report.advanced,
                skipped = report.skipped,
                failed = report.failed,
                "billing rollover"
            );
        }
        if report.failed > 0 {
            // The orgs that advanced are no longer due; a retry takes the rest.
            return Err(JobError::Retry(anyhow::anyhow!(
                "the rollover of {} subscription(s) failed",
                report.failed
            )));
        }
        Ok(())
    }
}
