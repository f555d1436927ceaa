//! Platform-admin routes over the job system (a `service_role` key), and
//! the Prometheus metrics.

use axum::Json;
use std::sync::Arc;

use axum::extract::{FromRef, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::admin::{self, JobStats};
use super::broker::DeadJob;
use super::engine::Engine;
use crate::auth::AuthState;
use crate::auth::principal::PlatformAdmin;
use crate::core::error::{ApiError, Problem};
use crate::core::extract::{IdPath, ValidQuery};
use crate::core::pagination::Page;

pub fn router<S>() -> OpenApiRouter<S>
where
    S: Clone + Send + Sync + 'static,
    AuthState: FromRef<S>,
    Engine: FromRef<S>,
    Arc<MetricsAccess>: FromRef<S>,
{
    OpenApiRouter::new()
        .routes(routes!(job_stats))
        .routes(routes!(list_dead))
        .routes(routes!(get_dead, discard_dead))
        .routes(routes!(retry_dead))
        .routes(routes!(metrics))
}

/// Who may read `/metrics` on the API's listener.
#[derive(Debug, Clone, Default)]
pub struct MetricsAccess {
    /// Metrics are served on a listener of their own (`METRICS_ADDR`), not here.
    pub elsewhere: bool,
    /// `METRICS_TOKEN`: the scraper presents it as a bearer token.
    pub token: Option<SecretString>,
    /// Served without a token (under `dev`).
    pub open: bool,
}

fn unavailable(e: anyhow::Error) -> ApiError {
    tracing::warn!(error = %e, "job broker unavailable");
    ApiError::Status {
        status: StatusCode::SERVICE_UNAVAILABLE,
        code: "broker_unavailable",
        detail: "the job broker is not reachable; retry shortly".into(),
    }
}

/// Queue depths, scheduled, running and dead jobs, and the outbox.
#[utoipa::path(get, path = "/api/v1/admin/jobs", tag = "admin",
    responses((status = 200, body = JobStats)))]
async fn job_stats(
    _: PlatformAdmin,
    State(engine): State<Engine>,
) -> Result<Json<JobStats>, ApiError> {
    admin::stats(&engine).await.map(Json).map_err(unavailable)
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct DeadQuery {
    /// Page size, 1 to 200 (default 50).
    limit: Option<i64>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// The dead letters, most recent first.
#[utoipa::path(get, path = "/api/v1/admin/jobs/dead", tag = "admin",
    params(DeadQuery),
    responses((status = 200, body = Page<DeadJob>)))]
async fn list_dead(
    _: PlatformAdmin,
    State(engine): State<Engine>,
    ValidQuery(q): ValidQuery<DeadQuery>,
) -> Result<Json<Page<DeadJob>>, ApiError> {
    let page = crate::core::pagination::PageQuery {
        limit: q.limit,
        cursor: q.cursor,
    };
    let limit = page.limit()?;
    let before: Option<i64> = page.after()?;
    let rows = admin::dead(&engine.broker, limit as usize + 1, before)
        .await
        .map_err(unavailable)?;
    Ok(Json(Page::from_rows(rows, limit, |j| {
        j.died_at.timestamp_millis()
    })))
}

/// One dead job: its payload, attempts and the error it died of.
#[utoipa::path(get, path = "/api/v1/admin/jobs/dead/{job_id}", tag = "admin",
    params(("job_id" = Uuid, Path)),
    responses((status = 200, body = DeadJob), (status = 404, body = Problem)))]
async fn get_dead(
    _: PlatformAdmin,
    State(engine): State<Engine>,
    path: IdPath<1>,
) -> Result<Json<DeadJob>, ApiError> {
    let [id] = path.0;
    engine
        .broker
        .dead_job(id)
        .await
        .map_err(|e| unavailable(e.into()))?
        .map(Json)
        .ok_or(ApiError::NotFound("dead job"))
}

#[derive(Debug, Serialize, ToSchema)]
struct Requeued {
    id: Uuid,
    requeued: bool,
}

/// Puts a dead job back on its queue with fresh attempts.
#[utoipa::path(post, path = "/api/v1/admin/jobs/dead/{job_id}/retry", tag = "admin",
    params(("job_id" = Uuid, Path)),
    responses((status = 200, body = Requeued), (status = 404, body = Problem)))]
async fn retry_dead(
    _: PlatformAdmin,
    State(engine): State<Engine>,
    path: IdPath<1>,
) -> Result<Json<Requeued>, ApiError> {
    let [id] = path.0;
    if admin::retry(&engine, id).await.map_err(unavailable)? {
        Ok(Json(Requeued { id, requeued: true }))
    } else {
        Err(ApiError::NotFound("dead job"))
    }
}

/// Deletes a dead job for good.
#[utoipa::path(delete, path = "/api/v1/admin/jobs/dead/{job_id}", tag = "admin",
    params(("job_id" = Uuid, Path)),
    responses((status = 204), (status = 404, body = Problem)))]
async fn discard_dead(
    _: PlatformAdmin,
    State(engine): State<Engine>,
    path: IdPath<1>,
) -> Result<StatusCode, ApiError> {
    let [id] = path.0;
    if admin::discard(&engine, id).await.map_err(unavailable)? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound("dead job"))
    }
}

/// Prometheus metrics: jobs started, succeeded, failed and dead, run time
/// and start latency per kind (this process), and queue depths. Send
/// `METRICS_TOKEN` as a bearer token. Without a token configured, this
/// listener serves metrics only under `dev`; elsewhere set `METRICS_TOKEN`,
/// or `METRICS_ADDR` to serve them on a separate (private) listener instead.
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, content_type = "text/plain", body = String),
              (status = 401, description = "`METRICS_TOKEN` is set and was not sent", body = Problem),
              (status = 404, description = "Metrics are not served on this listener (`metrics_disabled`)", body = Problem)))]
async fn metrics(
    State(engine): State<Engine>,
    State(access): State<Arc<MetricsAccess>>,
    headers: axum::http::HeaderMap,
) -> Result<axum::response::Response, ApiError> {
    if access.elsewhere {
        return Err(metrics_disabled("metrics are served on METRICS_ADDR"));
    }
    metrics_allowed(access.token.as_ref(), &headers, access.open)?;
    Ok(render_metrics(engine).await.into_response())
}

fn metrics_disabled(why: &str) -> ApiError {
    ApiError::Status {
        status: axum::http::StatusCode::NOT_FOUND,
        code: "metrics_disabled",
        detail: why.to_owned(),
    }
}

/// With `token` (`METRICS_TOKEN`) set, the scraper must present it as a
/// bearer token. Without it, metrics are served only where
/// `open_without_token` (under `dev`, and on a separate metrics listener).
pub fn metrics_allowed(
    token: Option<&SecretString>,
    headers: &axum::http::HeaderMap,
    open_without_token: bool,
) -> Result<(), ApiError> {
    let Some(expected) = token else {
        if open_without_token {
            return Ok(());
        }
        return Err(metrics_disabled(
            "metrics are off on this listener: set METRICS_TOKEN, or METRICS_ADDR for a separate listener",
        ));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    // Compare digests: constant time whatever the lengths.
    use sha2::Digest;
    let (a, b) = (
        sha2::Sha256::digest(given),
        sha2::Sha256::digest(expected.expose_secret()),
    );
    if a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
    {
        Ok(())
    } else {
        Err(ApiError::Unauthorized(
            "metrics need the METRICS_TOKEN".into(),
        ))
    }
}

/// The Prometheus text of this process, with queue depths when Redis and
/// Postgres answer within a second.
pub async fn render_metrics(engine: Engine) -> impl IntoResponse {
    let depths = tokio::time::timeout(std::time::Duration::from_secs(1), admin::stats(&engine))
        .await
        .ok()
        .and_then(Result::ok);
    let body = super::metrics::render(depths.as_ref().map(|s| (&s.broker, s.outbox)));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}
