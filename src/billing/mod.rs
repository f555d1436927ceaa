//! Billing: the plan catalog, subscriptions, payments and the credit ledger.

pub mod credits;
pub mod model;
pub mod payments;
pub mod plan_change;
pub mod plans_admin;
pub mod repo;
pub mod routes;
pub mod subscriptions;

use utoipa_axum::router::OpenApiRouter;

use crate::app::AppState;

/// Every billing route.
pub fn router() -> OpenApiRouter<AppState> {
    routes::router().merge(credits::routes::router())
}
