//! HTTP layer of reports: start one (202), list, get, and download; and the
//! problem each [`ReportError`] is answered with.

use axum::Json;
use axum::body::Body;
use std::sync::Arc;

use axum::extract::{FromRef, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use object_store::ObjectStore;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ReportError;
use super::service::{self, CreateReport};
use crate::auth::{AuthState, OrgContext, perm};
use crate::core::error::{ApiError, Problem};
use crate::core::extract::{IdPath, ValidJson, ValidQuery};
use crate::core::pagination::{Page, PageQuery};
use crate::jobs::records::JobRecord;

/// Each report refusal as the problem clients have always received.
impl From<ReportError> for ApiError {
    fn from(e: ReportError) -> Self {
        match e {
            ReportError::Invalid(e) => e.into(),
            ReportError::Page(e) => e.into(),
            ReportError::Db(e) => e.into(),
            e @ ReportError::KindNeeds { .. } => ApiError::Forbidden {
                code: "permission_denied",
                detail: e.to_string(),
            },
            ReportError::NotFound => ApiError::NotFound("report"),
            e @ ReportError::NotReady => ApiError::conflict("report_not_ready", e.to_string()),
            e @ ReportError::FileMissing => ApiError::Gone {
                code: "report_missing",
                detail: e.to_string(),
            },
            ReportError::Store(e) => {
                ApiError::Internal(anyhow::Error::new(e).context("cannot read the report"))
            }
        }
    }
}

pub fn router<S>() -> OpenApiRouter<S>
where
    S: Clone + Send + Sync + 'static,
    AuthState: FromRef<S>,
    Arc<dyn ObjectStore>: FromRef<S>,
{
    OpenApiRouter::new()
        .routes(routes!(list_reports, create_report))
        .routes(routes!(get_report))
        .routes(routes!(download_report))
}

/// Starts building a report. The job runs in the background; follow its
/// record (`state`, `progress`, `total`) and download it once `succeeded`.
/// An `audit_log` report also needs `audit:read`; a `credit_usage` report, `credits:read`.
#[utoipa::path(post, path = "/api/v1/orgs/{org_id}/reports", tag = "reports",
    params(("org_id" = Uuid, Path)),
    request_body = CreateReport,
    responses(
        (status = 202, description = "Queued", body = JobRecord),
        (status = 403, description = "`permission_denied` (also without `audit:read` for `audit_log`, `credits:read` for `credit_usage`)", body = Problem),
        (status = 422, description = "`validation_failed`: `unknown_kind`, `unsupported_format`", body = Problem),
    ))]
async fn create_report(
    mut ctx: OrgContext<perm::ReportsCreate>,
    ValidJson(input): ValidJson<CreateReport>,
) -> Result<(StatusCode, Json<JobRecord>), ApiError> {
    let record = service::create_report(&mut ctx.tx, ctx.perms, input).await?;
    ctx.tx.commit().await?;
    Ok((StatusCode::ACCEPTED, Json(record)))
}

/// The org's reports, newest first.
#[utoipa::path(get, path = "/api/v1/orgs/{org_id}/reports", tag = "reports",
    params(("org_id" = Uuid, Path), PageQuery),
    responses((status = 200, body = Page<JobRecord>)))]
async fn list_reports(
    mut ctx: OrgContext<perm::ReportsRead>,
    ValidQuery(q): ValidQuery<PageQuery>,
) -> Result<Json<Page<JobRecord>>, ApiError> {
    let page = service::list_reports(&mut ctx.tx, &q).await?;
    ctx.tx.commit().await?;
    Ok(Json(page))
}

/// One report: state, progress and, once built, `result` (`rows`, `bytes`).
#[utoipa::path(get, path = "/api/v1/orgs/{org_id}/reports/{report_id}", tag = "reports",
    params(("org_id" = Uuid, Path), ("report_id" = Uuid, Path)),
    responses((status = 200, body = JobRecord)))]
async fn get_report(
    mut ctx: OrgContext<perm::ReportsRead>,
    ids: IdPath<2>,
) -> Result<Json<JobRecord>, ApiError> {
    let record = service::get_report(&mut ctx.tx, ids.0[1]).await?;
    ctx.tx.commit().await?;
    Ok(Json(record))
}

/// Downloads a built report (streamed from the report store).
#[utoipa::path(get, path = "/api/v1/orgs/{org_id}/reports/{report_id}/download", tag = "reports",
    params(("org_id" = Uuid, Path), ("report_id" = Uuid, Path)),
    responses(
        (status = 200, description = "The CSV file", content_type = "text/csv", body = String),
        (status = 403, description = "`permission_denied`: an audit log report also needs `audit:read`, a credit usage report `credits:read`", body = Problem),
        (status = 409, description = "`report_not_ready`", body = Problem),
        (status = 410, description = "`report_missing`: the file is gone", body = Problem),
    ))]
async fn download_report(
    State(store): State<Arc<dyn ObjectStore>>,
    mut ctx: OrgContext<perm::ReportsRead>,
    ids: IdPath<2>,
) -> Result<Response, ApiError> {
    let record = service::get_report(&mut ctx.tx, ids.0[1]).await?;
    ctx.tx.commit().await?;
    // What the report lists may need more than reports:read (an audit log
    // report needs audit:read), now as when it was started.
    if let Some(p) = record.params["kind"]
        .as_str()
        .and_then(super::build::ReportKind::parse)
        .and_then(|k| k.extra_permission())
        && !ctx.perms.contains(p)
    {
        return Err(ApiError::Forbidden {
            code: "permission_denied",
            detail: format!("downloading this report needs {}", p.as_str()),
        });
    }
    let dl = service::open_download(store.as_ref(), ctx.org_id, &record).await?;
    let header_value = |v: String| {
        HeaderValue::from_str(&v).map_err(|e| ApiError::Internal(anyhow::Error::new(e)))
    };
    let mut res = Body::from_stream(dl.body).into_response();
    let headers = res.headers_mut();
    headers.insert(header::CONTENT_TYPE, header_value(dl.content_type)?);
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(dl.size));
    headers.insert(
        header::CONTENT_DISPOSITION,
        header_value(format!("attachment; filename=\"{}\"", dl.filename))?,
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-store"),
    );
    Ok(res)
}
