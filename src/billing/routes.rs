//! HTTP layer of billing.

use axum::Json;
use axum::extract::State;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::model::Plan;
use super::repo;
use crate::app::AppState;
use crate::core::error::ApiError;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_plans))
}

/// The plan catalog: every active plan with its price, interval, trial,
/// credits per period, seat limit and feature limits. Public.
#[utoipa::path(get, path = "/api/v1/plans", tag = "billing",
    security(()),
    responses((status = 200, body = Vec<Plan>)))]
async fn list_plans(State(state): State<AppState>) -> Result<Json<Vec<Plan>>, ApiError> {
    let mut conn = state.pool.acquire().await?;
    Ok(Json(repo::active_plans(&mut conn).await?))
}
