//! HTTP layer of the users domain: `/api/v1/me` and the permission catalog.

use axum::Json;
use axum::extract::{FromRef, State};
use sqlx::PgPool;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::UserError;
use super::model::MyOrganization;
use super::model::{UpdateMe, User};
use super::service;
use crate::auth::rbac::{PermissionInfo, permission_catalog};
use crate::auth::{AuthState, AuthUser};
use crate::core::cache::Cache;
use crate::core::db::UserTx;
use crate::core::error::ApiError;
use crate::core::extract::{ValidJson, ValidQuery};
use crate::core::pagination::{Page, PageQuery};

impl From<UserError> for ApiError {
    fn from(e: UserError) -> Self {
        match e {
            UserError::Invalid(e) => e.into(),
            UserError::Page(e) => e.into(),
            UserError::Db(e) => e.into(),
            UserError::NotFound => ApiError::NotFound("user"),
        }
    }
}

pub fn router<S>() -> OpenApiRouter<S>
where
    S: Clone + Send + Sync + 'static,
    AuthState: FromRef<S>,
    PgPool: FromRef<S>,
    Cache: FromRef<S>,
{
    OpenApiRouter::new()
        .routes(routes!(get_me, update_me))
        .routes(routes!(my_organizations))
        .routes(routes!(list_permissions))
}

/// The signed-in user's profile (created from the token on first sight).
#[utoipa::path(get, path = "/api/v1/me", tag = "users", responses((status = 200, body = User)))]
async fn get_me(
    State(pool): State<PgPool>,
    State(cache): State<Cache>,
    user: AuthUser,
) -> Result<Json<User>, ApiError> {
    let mut tx = UserTx::enter(&pool, user.id, None).await?;
    let (me, stale) = service::me(&mut tx, &user).await?;
    tx.commit().await?;
    cache.invalidate_orgs(&stale).await;
    Ok(Json(me))
}

#[utoipa::path(patch, path = "/api/v1/me", tag = "users", request_body = UpdateMe,
    responses((status = 200, body = User)))]
async fn update_me(
    State(pool): State<PgPool>,
    State(cache): State<Cache>,
    user: AuthUser,
    ValidJson(input): ValidJson<UpdateMe>,
) -> Result<Json<User>, ApiError> {
    let mut tx = UserTx::enter(&pool, user.id, None).await?;
    let (me, stale) = service::update_me(&mut tx, &user, input).await?;
    tx.commit().await?;
    // The profile shows in these orgs' member lists.
    cache.invalidate_orgs(&stale).await;
    Ok(Json(me))
}

/// The organizations the caller belongs to, each with the caller's role.
#[utoipa::path(get, path = "/api/v1/me/organizations", tag = "users", params(PageQuery),
    responses((status = 200, body = Page<MyOrganization>)))]
async fn my_organizations(
    State(pool): State<PgPool>,
    user: AuthUser,
    ValidQuery(q): ValidQuery<PageQuery>,
) -> Result<Json<Page<MyOrganization>>, ApiError> {
    let mut tx = UserTx::enter(&pool, user.id, None).await?;
    let page = service::my_organizations(&mut tx, &q).await?;
    tx.commit().await?;
    Ok(Json(page))
}

/// Every permission a role can hold.
#[utoipa::path(get, path = "/api/v1/permissions", tag = "roles",
    responses((status = 200, body = Vec<PermissionInfo>)))]
async fn list_permissions(_user: AuthUser) -> Json<Vec<PermissionInfo>> {
    Json(permission_catalog())
}
