//! Periods of a subscription: the instant a period starts, the reference
//! that makes its credit grant once-only, and what each new period brings
//! (its credits, and a manual invoice when the plan is paid).

use chrono::{DateTime, DurationRound, SecondsFormat, TimeDelta, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::billing::model::Plan;
use crate::billing::payments::invoices::issue_invoice;
use crate::billing::repo;
use crate::config::PaymentProviderKind;
use crate::core::error::ApiError;

/// Priority of plan-period grants: spent before purchases (priority 0).
pub const PERIOD_GRANT_PRIORITY: i32 = 10;

/// Now, to the microsecond Postgres stores, so that a period start written
/// and read back names the same grant reference.
pub fn now() -> DateTime<Utc> {
    let t = Utc::now();
    t.duration_trunc(TimeDelta::microseconds(1)).unwrap_or(t)
}

/// The reference that makes a period's grant once-only:
/// `period:<org_id>:<period_start, RFC 3339 UTC>`.
pub fn period_ref(org_id: Uuid, start: DateTime<Utc>) -> String {
    format!(
        "period:{org_id}:{}",
        start.to_rfc3339_opts(SecondsFormat::AutoSi, true)
    )
}

/// Grants the credits of a period of `plan`, once per period.
pub(super) async fn grant_period(
    conn: &mut PgConnection,
    org_id: Uuid,
    plan: &Plan,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    if plan.credits_per_period <= 0 || end <= Utc::now() {
        return Ok(());
    }
    let description = format!(
        "{} plan: credits of the period {} to {}",
        plan.name,
        start.format("%Y-%m-%d"),
        end.format("%Y-%m-%d")
    );
    repo::grant_credits(
        conn,
        plan.credits_per_period,
        "plan_period",
        PERIOD_GRANT_PRIORITY,
        Some(end),
        &period_ref(org_id, start),
        &description,
    )
    .await?;
    Ok(())
}

/// Issues the manual invoice of a paid period (idempotent per org and period).
pub(super) async fn invoice_period(
    conn: &mut PgConnection,
    provider: PaymentProviderKind,
    org_id: Uuid,
    plan: &Plan,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> Result<(), ApiError> {
    if provider != PaymentProviderKind::Manual || plan.price_minor <= 0 {
        return Ok(());
    }
    issue_invoice(conn, org_id, plan, start, end).await?;
    Ok(())
}
