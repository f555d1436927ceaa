//! Who is calling: a verified bearer token of a signed-in user.

use axum::extract::{FromRef, FromRequestParts};
use axum::http::{header, request::Parts};
use uuid::Uuid;

use super::AuthState;
use crate::core::error::ApiError;

/// A user authenticated by an access token with `role: authenticated`.
#[derive(Debug, Clone)]
pub struct AuthUser {
    pub id: Uuid,
    /// Lowercased email from the token, if any.
    pub email: Option<String>,
    /// What the token says of its email: only for tokens Tenantry did not
    /// sign (see [`Claims::email_verified`](crate::auth::jwt::Claims::email_verified)).
    /// For Tenantry's own users the account row decides (`own`).
    pub email_verified: bool,
    /// The token was signed by Tenantry: the user has an account here, whose
    /// row (not the token) says which address is confirmed.
    pub own: bool,
}

impl<S> FromRequestParts<S> for AuthUser
where
    S: Send + Sync,
    AuthState: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        AuthUser::authenticate(parts, &AuthState::from_ref(state)).await
    }
}

impl AuthUser {
    /// The signed-in user of a request (once per request: the result is kept
    /// in the request's extensions).
    pub(crate) async fn authenticate(
        parts: &mut Parts,
        state: &AuthState,
    ) -> Result<AuthUser, ApiError> {
        if let Some(user) = parts.extensions.get::<AuthUser>() {
            return Ok(user.clone());
        }
        let token = bearer_token(parts)?;
        if crate::auth::api_key::is_api_key(token) {
            return Err(ApiError::Unauthorized(
                "API keys only work on organization routes; this route needs a user's access token"
                    .into(),
            ));
        }
        let claims = state.verifier.verify(token).await.map_err(token_rejected)?;
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
        // Tenantry's own sessions end for real: a token of a session that was
        // signed out, banned or cut by a password change is refused at once
        // (an in-memory check; see `auth::ended_sessions`).
        if claims.own
            && claims
                .session_id
                .as_deref()
                .and_then(|s| Uuid::parse_str(s).ok())
                .is_some_and(|s| state.ended_sessions.is_ended(s))
        {
            return Err(ApiError::Status {
                status: axum::http::StatusCode::UNAUTHORIZED,
                code: "session_ended",
                detail:
                    "this session has ended (signed out, password changed or banned); sign in again"
                        .into(),
            });
        }
        let user = AuthUser {
            id,
            email_verified: !claims.own && claims.email_verified(state.require_email_verified),
            own: claims.own,
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

impl<S> FromRequestParts<S> for PlatformAdmin
where
    S: Send + Sync,
    AuthState: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let state = AuthState::from_ref(state);
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

/// A token that does not verify is 401; one whose key cannot be loaded
/// right now (an outage) is 503, to retry.
fn token_rejected(e: crate::auth::jwt::TokenError) -> ApiError {
    match e {
        crate::auth::jwt::TokenError::KeysUnavailable => ApiError::Status {
            status: axum::http::StatusCode::SERVICE_UNAVAILABLE,
            code: "unavailable",
            detail: e.to_string(),
        },
        e => ApiError::Unauthorized(e.to_string()),
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
