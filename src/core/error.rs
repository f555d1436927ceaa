//! One error type at the HTTP edge, rendered as `application/problem+json`
//! (RFC 9457) with a stable machine `code`. Internal errors are logged once,
//! here, with their chain; the client only gets the request id.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::core::telemetry;

/// A problem document (RFC 9457).
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// A URI reference naming the problem type.
    #[schema(example = "https://tenantry.dev/problems/not_found")]
    pub r#type: String,
    /// Short human-readable summary.
    pub title: String,
    pub status: u16,
    /// Explanation specific to this occurrence.
    pub detail: String,
    /// Stable machine-readable code.
    #[schema(example = "not_found")]
    pub code: String,
    /// Id of the request, as in the `x-request-id` header.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Field-level validation errors (422 only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

#[derive(Debug, Clone, Serialize, ToSchema, PartialEq, Eq)]
pub struct FieldError {
    /// Path of the offending field, e.g. `slug` or `members[2].role`.
    pub field: String,
    pub code: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, code: &str, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            code: code.to_owned(),
            message: message.into(),
        }
    }
}

/// Input that failed validation, field by field: every domain's error has
/// it as a variant; 422 at the HTTP edge, one line per field in the CLI.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", describe(.0))]
pub struct Invalid(pub Vec<FieldError>);

impl Invalid {
    /// One field's failure.
    pub fn field(field: &str, code: &str, message: impl Into<String>) -> Self {
        Invalid(vec![FieldError::new(field, code, message)])
    }
}

fn describe(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(|f| {
            if f.field.is_empty() {
                f.message.clone()
            } else {
                format!("{}: {}", f.field, f.message)
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

impl From<Invalid> for ApiError {
    fn from(e: Invalid) -> Self {
        ApiError::Validation(e.0)
    }
}

impl From<crate::core::pagination::PageError> for ApiError {
    fn from(e: crate::core::pagination::PageError) -> Self {
        ApiError::bad_request(e.code(), e.to_string())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 401: no or bad credentials.
    #[error("{0}")]
    Unauthorized(String),
    /// 403: authenticated member, but the role lacks what the action needs.
    #[error("{detail}")]
    Forbidden { code: &'static str, detail: String },
    /// 404: missing, or belonging to another org.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// 400: a request that cannot be understood.
    #[error("{detail}")]
    BadRequest { code: &'static str, detail: String },
    /// 409: conflicts with current state.
    #[error("{detail}")]
    Conflict { code: &'static str, detail: String },
    /// 410: existed, but no longer usable (expired invitation).
    #[error("{detail}")]
    Gone { code: &'static str, detail: String },
    /// 422: the body is well-formed but its fields are not valid.
    #[error("request body failed validation")]
    Validation(Vec<FieldError>),
    /// Any status with a code and detail (413, 415, 405, 503 ...).
    #[error("{detail}")]
    Status {
        status: StatusCode,
        code: &'static str,
        detail: String,
    },
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// A database error that is a passing condition, not a fault of the
/// request or a bug: answered 503 with `Retry-After`, never 500.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbTrouble {
    /// A lock or a statement took too long (`lock_timeout`, `statement_timeout`).
    Busy,
    /// No connection: refused, reset, closed mid-query, the server shutting
    /// down or starting, too many connections, or none free in the pool in
    /// time (`DB_ACQUIRE_TIMEOUT_SECS`).
    Unavailable,
}

impl DbTrouble {
    pub fn of(e: &sqlx::Error) -> Option<DbTrouble> {
        match e {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed => Some(DbTrouble::Unavailable),
            sqlx::Error::Database(db) => match db.code().as_deref() {
                // lock_not_available (lock_timeout), query_canceled (statement_timeout)
                Some("55P03" | "57014") => Some(DbTrouble::Busy),
                // connection exceptions (08xxx, but a protocol violation
                // is a bug), admin/crash shutdown, cannot_connect_now
                // (starting up), too_many_connections, read-only during a
                // failover.
                Some(c)
                    if (c.starts_with("08") && c != "08P01")
                        || matches!(c, "57P01" | "57P02" | "57P03" | "53300" | "25006") =>
                {
                    Some(DbTrouble::Unavailable)
                }
                _ => None,
            },
            _ => None,
        }
    }

    /// The first database trouble in an error's chain.
    pub fn in_chain(e: &anyhow::Error) -> Option<DbTrouble> {
        e.chain()
            .find_map(|c| c.downcast_ref::<sqlx::Error>().and_then(DbTrouble::of))
    }

    fn into_api_error(self) -> ApiError {
        match self {
            DbTrouble::Busy => ApiError::Status {
                status: StatusCode::SERVICE_UNAVAILABLE,
                code: "busy",
                detail: "the service is busy; retry shortly".into(),
            },
            DbTrouble::Unavailable => ApiError::Status {
                status: StatusCode::SERVICE_UNAVAILABLE,
                code: "unavailable",
                detail: "the database is unavailable; retry shortly".into(),
            },
        }
    }
}

impl From<DbTrouble> for ApiError {
    fn from(trouble: DbTrouble) -> Self {
        trouble.into_api_error()
    }
}

/// What a 503 asks the client to wait, in seconds.
pub const RETRY_AFTER_SECS: u64 = 1;

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        if let Some(trouble) = DbTrouble::of(&e) {
            tracing::warn!(error = %e, ?trouble, "database trouble");
            return trouble.into_api_error();
        }
        ApiError::Internal(anyhow::Error::new(e))
    }
}

impl ApiError {
    pub fn forbidden(detail: impl Into<String>) -> Self {
        ApiError::Forbidden {
            code: "forbidden",
            detail: detail.into(),
        }
    }
    pub fn conflict(code: &'static str, detail: impl Into<String>) -> Self {
        ApiError::Conflict {
            code,
            detail: detail.into(),
        }
    }
    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> Self {
        ApiError::BadRequest {
            code,
            detail: detail.into(),
        }
    }
    pub fn field(field: &str, code: &str, message: impl Into<String>) -> Self {
        ApiError::Validation(vec![FieldError::new(field, code, message)])
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden { .. } => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::Gone { .. } => StatusCode::GONE,
            ApiError::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Status { status, .. } => *status,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable machine code of the problem.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden { code, .. } => code,
            ApiError::NotFound(_) => "not_found",
            ApiError::BadRequest { code, .. } => code,
            ApiError::Conflict { code, .. } => code,
            ApiError::Gone { code, .. } => code,
            ApiError::Validation(_) => "validation_failed",
            ApiError::Status { code, .. } => code,
            ApiError::Internal(_) => "internal_error",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // A database outage that reached here inside another error (a
        // service's anyhow chain) is still an outage, not a bug.
        if let ApiError::Internal(e) = &self
            && let Some(trouble) = DbTrouble::in_chain(e)
        {
            tracing::warn!(error = %format!("{e:#}"), ?trouble, "database trouble");
            return trouble.into_api_error().into_response();
        }
        let status = self.status();
        let request_id = telemetry::current_request_id();
        let detail = match &self {
            ApiError::Internal(e) => {
                tracing::error!(error = ?e, "internal error");
                "an internal error occurred; quote the request id when reporting it".to_owned()
            }
            other => other.to_string(),
        };
        let code = self.code();
        let errors = match self {
            ApiError::Validation(errors) => errors,
            _ => Vec::new(),
        };
        let problem = Problem {
            r#type: format!("https://tenantry.dev/problems/{code}"),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail,
            code: code.to_owned(),
            request_id,
            errors,
        };
        let mut res = (status, axum::Json(problem)).into_response();
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if status == StatusCode::UNAUTHORIZED {
            res.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer error=\"invalid_token\""),
            );
        }
        if status == StatusCode::SERVICE_UNAVAILABLE
            && !res.headers().contains_key(header::RETRY_AFTER)
        {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        }
        res
    }
}

/// Postgres error codes the services translate into conflicts.
pub fn is_unique_violation(e: &sqlx::Error, constraint: &str) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some("23505")
        && db.constraint() == Some(constraint))
}

pub fn is_foreign_key_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some("23503"))
}
