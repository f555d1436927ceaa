//! The plans of subscriptions: read from the catalog, the one whose
//! entitlements apply to an org now, compared (which way a change goes),
//! and checked (one currency). Nothing here depends on the rest of
//! subscriptions, so the seat checks can read the plan too.

use sqlx::PgConnection;
use uuid::Uuid;

use crate::billing::model::{FREE_PLAN, Plan, Subscription};
use crate::billing::repo;

/// The plan `code` a subscription names (active or not). Subscriptions
/// reference their plans and a plan is never deleted: missing is a bug,
/// reported as the row not found.
pub(super) async fn plan(conn: &mut PgConnection, code: &str) -> Result<Plan, sqlx::Error> {
    match repo::plan(conn, code).await? {
        Some((plan, _)) => Ok(plan),
        None => {
            tracing::error!(plan = code, "the plan of a subscription is missing");
            Err(sqlx::Error::RowNotFound)
        }
    }
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
) -> Result<(Option<Subscription>, Plan), sqlx::Error> {
    let sub = repo::get_subscription(conn, org_id, false).await?;
    let code = match &sub {
        Some(s) if keeps_plan(&s.status) => s.plan_code.clone(),
        _ => FREE_PLAN.to_owned(),
    };
    let plan = plan(conn, &code).await?;
    Ok((sub, plan))
}

/// Whether moving from `current` to `target` is an upgrade: a higher price
/// per month (a yearly price counts a twelfth), or the same with more seats.
pub fn is_upgrade(current: &Plan, target: &Plan) -> bool {
    let months = |p: &Plan| if p.interval == "year" { 12 } else { 1 };
    // Cross-multiplied, in i128: prices are up to i64.
    let cur = i128::from(current.price_minor) * months(target);
    let new = i128::from(target.price_minor) * months(current);
    new > cur || (new == cur && target.seats() > current.seats())
}

/// Two paid plans billed in different currencies: an org pays in one.
#[derive(Debug, thiserror::Error)]
#[error("the {plan} plan is billed in {currency}, the current plan in {current_currency}")]
pub struct CurrencyMismatch {
    pub plan: String,
    pub currency: String,
    pub current_currency: String,
}

/// Refuses a change between two paid plans of different currencies.
pub(super) fn ensure_same_currency(current: &Plan, target: &Plan) -> Result<(), CurrencyMismatch> {
    if current.price_minor > 0 && target.price_minor > 0 && current.currency != target.currency {
        return Err(CurrencyMismatch {
            plan: target.name.clone(),
            currency: target.currency.clone(),
            current_currency: current.currency.clone(),
        });
    }
    Ok(())
}
