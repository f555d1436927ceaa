//! HTTP layer of API keys: `apikeys:manage` on every route.

use axum::Json;
use axum::extract::FromRef;
use axum::http::StatusCode;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ApiKeyError;
use super::model::*;
use super::service;
use crate::auth::{AuthState, OrgContext, perm};
use crate::core::error::{ApiError, Problem};
use crate::core::extract::{IdPath, ValidJson, ValidQuery};
use crate::core::pagination::{Page, PageQuery};

pub fn router<S>() -> OpenApiRouter<S>
where
    S: Clone + Send + Sync + 'static,
    AuthState: FromRef<S>,
{
    OpenApiRouter::new()
        .routes(routes!(list_api_keys, create_api_key))
        .routes(routes!(revoke_api_key))
}

impl From<ApiKeyError> for ApiError {
    fn from(e: ApiKeyError) -> Self {
        let detail = e.to_string();
        match e {
            ApiKeyError::Invalid(e) => e.into(),
            ApiKeyError::Page(e) => e.into(),
            ApiKeyError::Db(e) => e.into(),
            ApiKeyError::Orgs(e) => e.into(),
            ApiKeyError::OwnerRole | ApiKeyError::PermissionsNotHeld => ApiError::forbidden(detail),
            ApiKeyError::KeyLimitReached { .. } => ApiError::conflict("api_key_limit", detail),
            ApiKeyError::NotFound => ApiError::NotFound("API key"),
        }
    }
}

/// Creates an API key acting in this org with `role`. The response carries
/// the secret `key`, shown only here; only its hash is stored.
#[utoipa::path(post, path = "/api/v1/orgs/{org_id}/api-keys", tag = "api-keys",
    params(("org_id" = Uuid, Path)),
    request_body = CreateApiKey,
    responses((status = 201, body = CreatedApiKey),
        (status = 403, description = "`forbidden`: an owner key, or a role with permissions the caller lacks", body = Problem),
        (status = 409, description = "`api_key_limit`", body = Problem)))]
async fn create_api_key(
    mut ctx: OrgContext<perm::ApikeysManage>,
    ValidJson(input): ValidJson<CreateApiKey>,
) -> Result<(StatusCode, Json<CreatedApiKey>), ApiError> {
    let actor = ctx.lock().await?;
    let key = service::create(&mut ctx.tx, &actor, input).await?;
    ctx.tx.commit().await?;
    Ok((StatusCode::CREATED, Json(key)))
}

/// The org's API keys, revoked ones included (never their secrets).
#[utoipa::path(get, path = "/api/v1/orgs/{org_id}/api-keys", tag = "api-keys",
    params(("org_id" = Uuid, Path), PageQuery),
    responses((status = 200, body = Page<ApiKey>)))]
async fn list_api_keys(
    mut ctx: OrgContext<perm::ApikeysManage>,
    ValidQuery(q): ValidQuery<PageQuery>,
) -> Result<Json<Page<ApiKey>>, ApiError> {
    let page = service::list(&mut ctx.tx, &q).await?;
    ctx.tx.commit().await?;
    Ok(Json(page))
}

/// Revokes an API key; it stops working at once. Revoking it again is a no-op.
#[utoipa::path(delete, path = "/api/v1/orgs/{org_id}/api-keys/{key_id}", tag = "api-keys",
    params(("org_id" = Uuid, Path), ("key_id" = Uuid, Path)),
    responses((status = 204, description = "Revoked")))]
async fn revoke_api_key(
    mut ctx: OrgContext<perm::ApikeysManage>,
    ids: IdPath<2>,
) -> Result<StatusCode, ApiError> {
    let actor = ctx.lock().await?;
    service::revoke(&mut ctx.tx, &actor, ids.0[1]).await?;
    ctx.tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}
