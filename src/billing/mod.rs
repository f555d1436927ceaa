//! Billing: the plan catalog, subscriptions, payments and the credit ledger.

pub mod credits;
pub mod model;
pub mod payments;
pub mod plan_change;
pub mod plans_admin;
pub mod repo;
pub mod routes;
pub mod state;
pub mod subscriptions;

use axum::extract::FromRef;
use utoipa_axum::router::OpenApiRouter;

use crate::auth::AuthState;

pub use state::BillingState;

/// Every billing route.
pub fn router<S>() -> OpenApiRouter<S>
where
    S: Clone + Send + Sync + 'static,
    AuthState: FromRef<S>,
    BillingState: FromRef<S>,
{
    routes::router().merge(credits::routes::router())
}
