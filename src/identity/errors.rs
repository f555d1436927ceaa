//! GoTrue-shaped errors: `{code, error_code, msg, message}` with the HTTP
//! status GoTrue uses, so `@supabase/supabase-js` reads the error code (it
//! reads `code` when the response says `X-Supabase-Api-Version: 2024-01-01`,
//! `error_code` otherwise, and the message from `msg`).

use std::time::Duration;

use axum::Json;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::core::error::{DbTrouble, RETRY_AFTER_SECS};

/// The API version GoTrue announces (and supabase-js looks for).
pub const API_VERSION: &str = "2024-01-01";
pub static API_VERSION_HEADER: HeaderName = HeaderName::from_static("x-supabase-api-version");

#[derive(Debug)]
pub struct AuthError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// `Retry-After` in seconds (429s).
    pub retry_after: Option<u64>,
    /// Extra top-level fields (`weak_password`).
    pub extra: Option<(&'static str, Value)>,
}

impl AuthError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        AuthError {
            status,
            code,
            message: message.into(),
            retry_after: None,
            extra: None,
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn unprocessable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }

    /// 401: no credentials where the endpoint needs them.
    pub fn unauthorized(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, code, message)
    }

    /// 403: credentials that do not (or no longer) hold: a bad JWT, a gone
    /// session or user, a used or expired link.
    pub fn forbidden(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, code, message)
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }

    /// 429 `over_email_send_rate_limit`: the next email to this address may
    /// go out in `wait_secs`.
    pub fn email_too_soon(wait_secs: u64) -> Self {
        let mut e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "over_email_send_rate_limit",
            format!("For security purposes, you can only request this after {wait_secs} seconds."),
        );
        e.retry_after = Some(wait_secs);
        e
    }

    /// 503 `unavailable` with `Retry-After`: a dependency (the signing keys,
    /// the database) is down for a moment.
    pub fn unavailable() -> Self {
        let mut e = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "The service is temporarily unavailable, please retry after a moment.",
        );
        e.retry_after = Some(RETRY_AFTER_SECS);
        e
    }

    pub fn validation(message: impl Into<String>) -> Self {
        Self::bad_request("validation_failed", message)
    }

    pub fn invalid_credentials() -> Self {
        Self::bad_request("invalid_credentials", "Invalid login credentials")
    }

    pub fn rate_limited(retry_after: Duration) -> Self {
        let mut e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "over_request_rate_limit",
            "Request rate limit reached",
        );
        e.retry_after = Some(retry_after.as_secs_f64().ceil().max(1.0) as u64);
        e
    }

    pub fn weak_password(message: impl Into<String>) -> Self {
        let mut e = Self::unprocessable("weak_password", message);
        e.extra = Some(("weak_password", json!({ "reasons": ["length"] })));
        e
    }

    /// 503 `busy`: too much work waiting (password hashing); retry shortly.
    pub fn busy() -> Self {
        let mut e = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            "The server is busy, please retry after a moment.",
        );
        e.retry_after = Some(RETRY_AFTER_SECS);
        e
    }

    /// 503 for a slow or unreachable database, with `Retry-After`.
    fn db_trouble(trouble: DbTrouble, cause: &dyn std::fmt::Display) -> Self {
        tracing::warn!(error = %cause, ?trouble, "database trouble");
        match trouble {
            DbTrouble::Busy => {
                let mut e = Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "request_timeout",
                    "Processing this request timed out, please retry after a moment.",
                );
                e.retry_after = Some(RETRY_AFTER_SECS);
                e
            }
            DbTrouble::Unavailable => Self::unavailable(),
        }
    }

    /// 500, logged with its cause; the client learns nothing more.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "auth server internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "unexpected_failure",
            "Unexpected failure, please check server logs for more information",
        )
    }
}

impl From<sqlx::Error> for AuthError {
    fn from(e: sqlx::Error) -> Self {
        match DbTrouble::of(&e) {
            Some(trouble) => AuthError::db_trouble(trouble, &e),
            None => AuthError::internal(format!("{e:#}")),
        }
    }
}

impl From<anyhow::Error> for AuthError {
    fn from(e: anyhow::Error) -> Self {
        match DbTrouble::in_chain(&e) {
            Some(trouble) => AuthError::db_trouble(trouble, &format!("{e:#}")),
            None => AuthError::internal(format!("{e:#}")),
        }
    }
}

impl std::fmt::Display for AuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl IntoResponse for AuthError {
    fn into_response(self) -> Response {
        let mut body = json!({
            "code": self.code,
            "error_code": self.code,
            "msg": self.message,
            "message": self.message,
        });
        if let Some((k, v)) = self.extra {
            body[k] = v;
        }
        let mut res = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        res
    }
}

/// Adds `X-Supabase-Api-Version` to every `/auth/v1` response.
pub async fn api_version_header(mut res: Response) -> Response {
    res.headers_mut().insert(
        API_VERSION_HEADER.clone(),
        HeaderValue::from_static(API_VERSION),
    );
    res
}
