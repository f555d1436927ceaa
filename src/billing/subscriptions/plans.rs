//! The plans a change moves between: read from the catalog, compared
//! (which way a change goes), and checked (one currency).

use sqlx::PgConnection;

use crate::billing::model::Plan;
use crate::billing::repo;
use crate::core::error::ApiError;

pub(super) fn unknown_plan(code: &str) -> ApiError {
    ApiError::Status {
        status: axum::http::StatusCode::UNPROCESSABLE_ENTITY,
        code: "unknown_plan",
        detail: format!("there is no active plan {code:?} (see GET /api/v1/plans)"),
    }
}

fn missing_plan(code: &str) -> ApiError {
    ApiError::Internal(anyhow::anyhow!(
        "plan {code:?} of a subscription is missing"
    ))
}

/// The plan `code` a subscription names (active or not; missing is a bug).
pub(super) async fn plan(conn: &mut PgConnection, code: &str) -> Result<Plan, ApiError> {
    Ok(repo::plan(conn, code)
        .await?
        .ok_or_else(|| missing_plan(code))?
        .0)
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

/// 422 `currency_mismatch` between two paid plans.
pub(super) fn ensure_same_currency(current: &Plan, target: &Plan) -> Result<(), ApiError> {
    if current.price_minor > 0 && target.price_minor > 0 && current.currency != target.currency {
        return Err(ApiError::Status {
            status: axum::http::StatusCode::UNPROCESSABLE_ENTITY,
            code: "currency_mismatch",
            detail: format!(
                "the {} plan is billed in {}, the current plan in {}",
                target.name, target.currency, current.currency
            ),
        });
    }
    Ok(())
}
