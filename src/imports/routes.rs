//! HTTP layer of member imports: upload a CSV (202), list, and get one with
//! its per-line results.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{FromRef, FromRequest, Request};
use axum::http::{StatusCode, header};
use bytes::BytesMut;
use futures_util::TryStreamExt;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ImportError;
use super::file::FileError;
use super::service::{self, ImportDetail};
use crate::auth::{AuthState, OrgContext, perm};
use crate::core::error::{ApiError, Problem};
use crate::core::extract::{IdPath, ValidQuery};
use crate::core::pagination::{Page, PageQuery};
use crate::jobs::records::JobRecord;

pub fn router<S>() -> OpenApiRouter<S>
where
    S: Clone + Send + Sync + 'static,
    AuthState: FromRef<S>,
    ImportLimit: FromRef<S>,
{
    OpenApiRouter::new()
        .routes(routes!(list_imports, create_import))
        .routes(routes!(get_import))
}

impl From<ImportError> for ApiError {
    fn from(e: ImportError) -> Self {
        match e {
            ImportError::File(e) => {
                let code = match e {
                    FileError::NotUtf8(_) | FileError::NulCharacter | FileError::NotCsv(_) => {
                        "invalid_csv"
                    }
                    FileError::Empty | FileError::WrongHeader(_) => "invalid_header",
                    FileError::TooManyRows => "too_many_rows",
                    FileError::NoRows => "no_rows",
                };
                ApiError::Status {
                    status: StatusCode::UNPROCESSABLE_ENTITY,
                    code,
                    detail: e.to_string(),
                }
            }
            ImportError::Page(e) => e.into(),
            ImportError::Db(e) => e.into(),
            ImportError::NotFound => ApiError::NotFound("import"),
        }
    }
}

fn too_large(limit: usize) -> ApiError {
    ApiError::Status {
        status: StatusCode::PAYLOAD_TOO_LARGE,
        code: "payload_too_large",
        detail: format!("an import file may be at most {limit} bytes"),
    }
}

/// `MAX_IMPORT_BYTES`: the largest import file, in bytes.
#[derive(Debug, Clone, Copy)]
pub struct ImportLimit(pub usize);

/// A `text/csv` body of at most `MAX_IMPORT_BYTES` (its own limit, not the
/// global body limit: the body is read here, not by a `Bytes` extractor).
struct CsvBody(Bytes);

impl<S> FromRequest<S> for CsvBody
where
    S: Send + Sync,
    ImportLimit: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let is_csv = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|m| m.trim().eq_ignore_ascii_case("text/csv"));
        if !is_csv {
            return Err(ApiError::Status {
                status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
                code: "unsupported_media_type",
                detail: "expected a body with Content-Type: text/csv".into(),
            });
        }
        let ImportLimit(limit) = ImportLimit::from_ref(state);
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(too_large(limit));
        }
        let mut body = req.into_body().into_data_stream();
        let mut buf = BytesMut::with_capacity(declared.map_or(8192, |n| n as usize));
        while let Some(chunk) = body
            .try_next()
            .await
            .map_err(|e| ApiError::bad_request("invalid_body", e.to_string()))?
        {
            if buf.len() + chunk.len() > limit {
                return Err(too_large(limit));
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(CsvBody(buf.freeze()))
    }
}

/// Imports members from a CSV file (`Content-Type: text/csv`) with the
/// header `email,role` and up to 10,000 lines: each address is invited to
/// its role by a background job, which records a result per line.
#[utoipa::path(post, path = "/api/v1/orgs/{org_id}/imports", tag = "imports",
    params(("org_id" = Uuid, Path)),
    request_body(content = String, content_type = "text/csv",
        description = "`email,role` header, then one line per address"),
    responses(
        (status = 202, description = "Queued", body = JobRecord),
        (status = 413, description = "`payload_too_large`: over `MAX_IMPORT_BYTES`", body = Problem),
        (status = 415, description = "`unsupported_media_type`: not text/csv", body = Problem),
        (status = 422, description = "`invalid_csv`, `invalid_header`, `no_rows`, `too_many_rows`", body = Problem),
    ))]
async fn create_import(
    mut ctx: OrgContext<perm::InvitationsManage>,
    CsvBody(body): CsvBody,
) -> Result<(StatusCode, Json<JobRecord>), ApiError> {
    let record = service::create_import(&mut ctx.tx, &body).await?;
    ctx.tx.commit().await?;
    Ok((StatusCode::ACCEPTED, Json(record)))
}

/// The org's imports, newest first.
#[utoipa::path(get, path = "/api/v1/orgs/{org_id}/imports", tag = "imports",
    params(("org_id" = Uuid, Path), PageQuery),
    responses((status = 200, body = Page<JobRecord>)))]
async fn list_imports(
    mut ctx: OrgContext<perm::InvitationsManage>,
    ValidQuery(q): ValidQuery<PageQuery>,
) -> Result<Json<Page<JobRecord>>, ApiError> {
    let page = service::list_imports(&mut ctx.tx, &q).await?;
    ctx.tx.commit().await?;
    Ok(Json(page))
}

/// One import with its per-line results in line order; `limit` and
/// `cursor` page through the lines (`result` counts them once finished).
#[utoipa::path(get, path = "/api/v1/orgs/{org_id}/imports/{import_id}", tag = "imports",
    params(("org_id" = Uuid, Path), ("import_id" = Uuid, Path), PageQuery),
    responses((status = 200, body = ImportDetail)))]
async fn get_import(
    mut ctx: OrgContext<perm::InvitationsManage>,
    ids: IdPath<2>,
    ValidQuery(q): ValidQuery<PageQuery>,
) -> Result<Json<ImportDetail>, ApiError> {
    let detail = service::get_import(&mut ctx.tx, ids.0[1], &q).await?;
    ctx.tx.commit().await?;
    Ok(Json(detail))
}
