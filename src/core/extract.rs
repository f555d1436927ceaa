//! Request extractors whose rejections are problem+json: JSON bodies (415,
//! 413, 400 for syntax, 422 with field paths for shape), query strings and
//! path ids.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::{StatusCode, header, request::Parts};
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::core::error::{ApiError, FieldError, Invalid};

/// A JSON body that must be `application/json`, within the body limit, and
/// match `T` exactly (write DTOs deny unknown fields).
pub struct ValidJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ValidJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|m| {
                let m = m.trim().to_ascii_lowercase();
                m == "application/json" || (m.starts_with("application/") && m.ends_with("+json"))
            })
            .unwrap_or(false);
        if !is_json {
            return Err(ApiError::Status {
                status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
                code: "unsupported_media_type",
                detail: "expected a body with Content-Type: application/json".into(),
            });
        }
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(body_rejection)?;
        Ok(ValidJson(parse_json(&bytes)?))
    }
}

/// A body that could not be read: 413 past the limit, else 400.
pub fn body_rejection(e: BytesRejection) -> ApiError {
    match e {
        BytesRejection::FailedToBufferBody(inner)
            if inner.status() == StatusCode::PAYLOAD_TOO_LARGE =>
        {
            ApiError::Status {
                status: StatusCode::PAYLOAD_TOO_LARGE,
                code: "payload_too_large",
                detail: "request body is larger than the limit".into(),
            }
        }
        other => ApiError::bad_request("invalid_body", other.body_text()),
    }
}

/// Why a JSON object could not be read.
#[derive(Debug, thiserror::Error)]
pub enum JsonError {
    /// Not JSON at all (400 `invalid_json` at the HTTP edge).
    #[error("{0}")]
    Syntax(String),
    /// JSON of the wrong shape, with the field (422).
    #[error(transparent)]
    Invalid(Invalid),
}

impl From<JsonError> for ApiError {
    fn from(e: JsonError) -> Self {
        match e {
            JsonError::Syntax(detail) => ApiError::bad_request("invalid_json", detail),
            JsonError::Invalid(invalid) => invalid.into(),
        }
    }
}

/// Parses a JSON object into `T`, reporting where it failed: 400 when the
/// body is not JSON at all, 422 (with the field) when it is JSON of the wrong
/// shape. Only objects are accepted: serde would otherwise read a struct from
/// an array of its fields.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, JsonError> {
    // A full parse first, so that every syntax error (including bad escapes
    // and invalid UTF-8 inside strings) is a 400 whatever the target type.
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| JsonError::Syntax(format!("body is not valid JSON: {e}")))?;
    if !value.is_object() {
        return Err(JsonError::Invalid(Invalid::field(
            "",
            "invalid_type",
            "the body must be a JSON object",
        )));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut de).map_err(|err| {
        let path = err.path().to_string();
        let path = if path == "." { String::new() } else { path };
        let inner = err.into_inner();
        let msg = inner.to_string();
        let msg = msg.split(" at line ").next().unwrap_or(&msg).to_owned();
        let (field, code) = if let Some(name) = backticked(&msg, "unknown field `") {
            // The path already ends at the unknown field.
            let field = if path.is_empty() { name } else { path };
            (field, "unknown_field")
        } else if let Some(name) = backticked(&msg, "missing field `") {
            (join_path(&path, &name), "missing_field")
        } else {
            (path, "invalid_type")
        };
        JsonError::Invalid(Invalid(vec![FieldError::new(field, code, msg)]))
    })
}

fn backticked(msg: &str, prefix: &str) -> Option<String> {
    let rest = msg.strip_prefix(prefix)?;
    Some(rest.split('`').next()?.to_owned())
}

fn join_path(path: &str, name: &str) -> String {
    if path.is_empty() || path == "." {
        name.to_owned()
    } else {
        format!("{path}.{name}")
    }
}

/// A query string parsed into `T`; a malformed one is a 400.
pub struct ValidQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ValidQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let q = parts.uri.query().unwrap_or_default();
        serde_urlencoded::from_str(q).map(ValidQuery).map_err(|e| {
            ApiError::bad_request("invalid_query", format!("invalid query string: {e}"))
        })
    }
}

/// Reads a UUID path parameter by name; anything else is a 400.
pub async fn path_uuid(parts: &mut Parts, name: &str) -> Result<Uuid, ApiError> {
    let params = axum::extract::RawPathParams::from_request_parts(parts, &())
        .await
        .map_err(|_| ApiError::bad_request("invalid_path", "missing path parameters"))?;
    let raw = params
        .iter()
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
        .ok_or_else(|| {
            ApiError::bad_request("invalid_path", format!("missing path parameter {name}"))
        })?;
    Uuid::parse_str(&raw).map_err(|_| {
        ApiError::bad_request(
            "invalid_path",
            format!("path parameter {name} must be a UUID"),
        )
    })
}

/// The last `N` path parameters as UUIDs, with a problem+json rejection.
pub struct IdPath<const N: usize>(pub [Uuid; N]);

impl<S: Send + Sync, const N: usize> FromRequestParts<S> for IdPath<N> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let params = axum::extract::RawPathParams::from_request_parts(parts, &())
            .await
            .map_err(|_| ApiError::bad_request("invalid_path", "missing path parameters"))?;
        let values: Vec<(String, String)> = params
            .iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        if values.len() < N {
            return Err(ApiError::bad_request(
                "invalid_path",
                "missing path parameters",
            ));
        }
        let mut out = [Uuid::nil(); N];
        for (slot, (name, raw)) in out.iter_mut().zip(values[values.len() - N..].iter()) {
            *slot = Uuid::parse_str(raw).map_err(|_| {
                ApiError::bad_request(
                    "invalid_path",
                    format!("path parameter {name} must be a UUID"),
                )
            })?;
        }
        Ok(IdPath(out))
    }
}
