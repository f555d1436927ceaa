//! `/auth/v1` routes.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(jwks))
}

/// A JWK set (RFC 7517).
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
struct Jwks {
    keys: Vec<Jwk>,
}

/// A public P-256 signing key.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
struct Jwk {
    #[schema(example = "EC")]
    kty: String,
    #[schema(example = "P-256")]
    crv: String,
    /// base64url of the x coordinate.
    x: String,
    /// base64url of the y coordinate.
    y: String,
    /// The `kid` that tokens signed with this key carry in their header.
    kid: String,
    #[schema(example = "ES256")]
    alg: String,
    #[serde(rename = "use")]
    #[schema(example = "sig")]
    use_: String,
}

/// The public keys that verify Tenantry's access tokens: the active key, the
/// next one (published before it signs) and retired keys until the tokens
/// they signed have expired. Cache it for at most five minutes.
#[utoipa::path(get, path = "/auth/v1/.well-known/jwks.json", tag = "auth",
    responses((status = 200, body = Jwks,
        headers(("cache-control" = String, description = "public, max-age=300")))))]
async fn jwks(State(state): State<AppState>) -> Response {
    state.keys.refresh_if_stale().await;
    let mut res = Json(state.keys.jwks()).into_response();
    res.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    res
}
