//! Who is calling: a verified bearer token of a signed-in user.

use axum::extract::FromRequestParts;
use axum::http::{header, request::Parts};
use uuid::Uuid;

use crate::app::AppState;
use crate::core::error::ApiError;

/// A user authenticated by an access token with `role: authenticated`.
#[derive(Debug, Clone)]
pub struct AuthUser {
    pub id: Uuid,
    /// Lowercased email from the token, if any.
    pub email: Option<String>,
    pub email_verified: bool,
}

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if let Some(user) = parts.extensions.get::<AuthUser>() {
            return Ok(user.clone());
        }
        let token = bearer_token(parts)?;
        if crate::auth::apikeys::is_api_key(token) {
            return Err(ApiError::Unauthorized(
                "API keys only work on organization routes; this route needs a user's access token"
                    .into(),
            ));
        }
        let claims = state
            .verifier
            .verify(token)
            .await
            .map_err(|e| ApiError::Unauthorized(e.to_string()))?;
        if claims.role.as_deref() != Some("authenticated") {
            return Err(ApiError::Unauthorized(
                "token role is not allowed on user routes".into(),
            ));
        }
        let id = claims
            .sub
            .as_deref()
            .and_then(|s| Uuid::parse_str(s).ok())
            .ok_or_else(|| ApiError::Unauthorized("token subject is not a user id".into()))?;
        if claims
            .email
            .as_deref()
            .is_some_and(|e| e.len() > 320 || e.chars().any(char::is_control))
        {
            return Err(ApiError::Unauthorized("token email is malformed".into()));
        }
        let user = AuthUser {
            id,
            email_verified: claims.email_verified(),
            email: claims
                .email
                .map(|e| e.trim().to_lowercase())
                .filter(|e| !e.is_empty()),
        };
        parts.extensions.insert(user.clone());
        Ok(user)
    }
}

/// A platform administrator: the caller presented a `service_role` key.
/// Only operator routes take it; it is never a member of any org.
#[derive(Debug, Clone)]
pub struct PlatformAdmin;

impl FromRequestParts<AppState> for PlatformAdmin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer_token(parts)?;
        match state.verifier.verify_service(token) {
            Ok(_) => Ok(PlatformAdmin),
            // A valid user token is authenticated but not allowed here.
            Err(_) if state.verifier.verify(token).await.is_ok() => Err(ApiError::forbidden(
                "operator routes need a service_role key",
            )),
            Err(e) => Err(ApiError::Unauthorized(e.to_string())),
        }
    }
}

pub(crate) fn bearer_token(parts: &Parts) -> Result<&str, ApiError> {
    let value = parts
        .headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| ApiError::Unauthorized("missing bearer token".into()))?
        .to_str()
        .map_err(|_| ApiError::Unauthorized("malformed authorization header".into()))?;
    let (scheme, token) = value
        .split_once(' ')
        .ok_or_else(|| ApiError::Unauthorized("malformed authorization header".into()))?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(ApiError::Unauthorized("expected a bearer token".into()));
    }
    Ok(token.trim())
}
