//! HTTP layer of the organizations domain: extract, call the service, map
//! the result. Each org route names its permission in its `OrgContext` type.

use axum::Json;
use std::sync::Arc;

use axum::extract::{FromRef, FromRequestParts, State};
use axum::http::{StatusCode, header, request::Parts};
use axum::response::{IntoResponse, Response};
use sqlx::PgPool;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::OrgError;
use super::model::*;
use super::service;
use crate::auth::rbac::OrgView;
use crate::auth::{AuthState, AuthUser, OrgContext, perm};
use crate::core::cache::Cache;
use crate::core::error::{ApiError, Problem};
use crate::core::extract::{IdPath, ValidJson, ValidQuery};
use crate::core::pagination::{Page, PageQuery};
use crate::core::validate::RoleName;

pub fn router<S>() -> OpenApiRouter<S>
where
    S: Clone + Send + Sync + 'static,
    AuthState: FromRef<S>,
    PgPool: FromRef<S>,
    Cache: FromRef<S>,
    Arc<service::InviteSettings>: FromRef<S>,
{
    OpenApiRouter::new()
        .routes(routes!(create_org))
        .routes(routes!(get_org, update_org, delete_org))
        .routes(routes!(list_members))
        .routes(routes!(update_member, remove_member))
        .routes(routes!(transfer_ownership))
        .routes(routes!(list_roles, create_role))
        .routes(routes!(update_role, delete_role))
        .routes(routes!(list_invitations, create_invitation))
        .routes(routes!(revoke_invitation))
        .routes(routes!(accept_invitation))
        .routes(routes!(list_audit_log))
}

impl From<OrgError> for ApiError {
    fn from(e: OrgError) -> Self {
        let detail = e.to_string();
        match e {
            OrgError::Invalid(e) => e.into(),
            OrgError::Page(e) => e.into(),
            OrgError::Db(e) => e.into(),
            OrgError::Seats(e) => e.into(),
            OrgError::OrgNotFound => ApiError::NotFound("organization"),
            OrgError::MemberNotFound => ApiError::NotFound("member"),
            OrgError::RoleNotFound => ApiError::NotFound("role"),
            OrgError::InvitationNotFound => ApiError::NotFound("invitation"),
            OrgError::OwnerOnly(_)
            | OrgError::PermissionsNotHeld(_)
            | OrgError::MissingPermission(_) => ApiError::forbidden(detail),
            OrgError::EmailMismatch => ApiError::Forbidden {
                code: "email_mismatch",
                detail,
            },
            OrgError::SlugTaken => ApiError::conflict("slug_taken", detail),
            OrgError::AlreadyMember | OrgError::AlreadyJoined => {
                ApiError::conflict("already_member", detail)
            }
            OrgError::InvitationExists => ApiError::conflict("invitation_exists", detail),
            OrgError::InvitationUsed => ApiError::conflict("invitation_used", detail),
            OrgError::InvitationExpired => ApiError::Gone {
                code: "invitation_expired",
                detail,
            },
            OrgError::InvitationRoleMissing => ApiError::conflict("role_missing", detail),
            OrgError::LastOwner | OrgError::LastOwnerLeaving => {
                ApiError::conflict("last_owner", detail)
            }
            OrgError::BuiltinRoleName | OrgError::RoleExists => {
                ApiError::conflict("role_exists", detail)
            }
            OrgError::RoleLimitReached { .. } => ApiError::conflict("role_limit", detail),
            OrgError::BuiltinRole => ApiError::conflict("builtin_role", detail),
            OrgError::RoleInUse => ApiError::conflict("role_in_use", detail),
        }
    }
}

/// Creates an organization; the caller becomes its owner.
#[utoipa::path(post, path = "/api/v1/orgs", tag = "organizations",
    request_body = CreateOrganization,
    responses(
        (status = 201, body = Organization),
        (status = 409, description = "`slug_taken`", body = Problem),
    ))]
async fn create_org(
    State(pool): State<PgPool>,
    State(cache): State<Cache>,
    user: AuthUser,
    ValidJson(input): ValidJson<CreateOrganization>,
) -> Result<(StatusCode, Json<Organization>), ApiError> {
    let mut utx = crate::core::db::UserTx::enter(&pool, user.id, None).await?;
    let stale = crate::users::service::provision(&mut utx, &user).await?;
    let (tx, org) = service::create_org(utx, input).await?;
    tx.commit().await?;
    cache.invalidate_orgs(&stale).await;
    Ok((StatusCode::CREATED, Json(org)))
}

#[utoipa::path(get, path = "/api/v1/orgs/{org_id}", tag = "organizations",
    params(("org_id" = Uuid, Path)),
    responses((status = 200, body = Organization)))]
async fn get_org(mut ctx: OrgContext<perm::OrgRead>) -> Result<Json<Organization>, ApiError> {
    let org = service::get_org(&mut ctx.tx).await?;
    ctx.tx.commit().await?;
    Ok(Json(org))
}

#[utoipa::path(patch, path = "/api/v1/orgs/{org_id}", tag = "organizations",
    params(("org_id" = Uuid, Path)),
    request_body = UpdateOrganization,
    responses((status = 200, body = Organization), (status = 409, description = "`slug_taken`", body = Problem)))]
async fn update_org(
    mut ctx: OrgContext<perm::OrgUpdate>,
    ValidJson(input): ValidJson<UpdateOrganization>,
) -> Result<Json<Organization>, ApiError> {
    let actor = ctx.lock().await?;
    let org = service::update_org(&mut ctx.tx, &actor, input).await?;
    ctx.commit_changes().await?;
    Ok(Json(org))
}

/// Deletes the organization and all its data. Owners only.
#[utoipa::path(delete, path = "/api/v1/orgs/{org_id}", tag = "organizations",
    params(("org_id" = Uuid, Path)),
    responses((status = 204, description = "Deleted")))]
async fn delete_org(mut ctx: OrgContext<perm::OrgDelete>) -> Result<StatusCode, ApiError> {
    let actor = ctx.lock().await?;
    service::delete_org(&mut ctx.tx, &actor).await?;
    ctx.commit_changes().await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/v1/orgs/{org_id}/members", tag = "members",
    params(("org_id" = Uuid, Path), PageQuery),
    responses((status = 200, body = Page<Member>)))]
async fn list_members(
    view: OrgView<perm::MembersRead>,
    ValidQuery(q): ValidQuery<PageQuery>,
) -> Result<Response, ApiError> {
    let body = match view {
        OrgView::Cached(body) => body,
        OrgView::Fresh { mut ctx, fill } => {
            let page = service::list_members(&mut ctx.tx, &q).await?;
            ctx.tx.commit().await?;
            let body = serde_json::to_vec(&page).map_err(anyhow::Error::from)?;
            fill.store(body.clone());
            body
        }
    };
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// Changes a member's role. Only owners make or unmake owners; nobody grants
/// a role with permissions they lack; the last owner cannot be demoted.
#[utoipa::path(patch, path = "/api/v1/orgs/{org_id}/members/{user_id}", tag = "members",
    params(("org_id" = Uuid, Path), ("user_id" = Uuid, Path)),
    request_body = UpdateMember,
    responses((status = 200, body = Member), (status = 409, description = "`last_owner`", body = Problem)))]
async fn update_member(
    mut ctx: OrgContext<perm::MembersManage>,
    ids: IdPath<2>,
    ValidJson(input): ValidJson<UpdateMember>,
) -> Result<Json<Member>, ApiError> {
    let actor = ctx.lock().await?;
    let member = service::change_member_role(&mut ctx.tx, &actor, ids.0[1], input).await?;
    ctx.commit_changes().await?;
    Ok(Json(member))
}

/// Removes a member, or leaves when `user_id` is the caller (any member may
/// leave; removing others needs `members:manage`).
#[utoipa::path(delete, path = "/api/v1/orgs/{org_id}/members/{user_id}", tag = "members",
    params(("org_id" = Uuid, Path), ("user_id" = Uuid, Path)),
    responses((status = 204, description = "Removed"), (status = 409, description = "`last_owner`", body = Problem)))]
async fn remove_member(
    mut ctx: OrgContext<perm::AnyMember>,
    ids: IdPath<2>,
) -> Result<StatusCode, ApiError> {
    let actor = ctx.lock().await?;
    service::remove_member(&mut ctx.tx, &actor, ids.0[1]).await?;
    ctx.commit_changes().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Makes another member the owner; the caller becomes admin. Owners only.
#[utoipa::path(post, path = "/api/v1/orgs/{org_id}/transfer-ownership", tag = "members",
    params(("org_id" = Uuid, Path)),
    request_body = TransferOwnership,
    responses((status = 200, description = "The new owner", body = Member)))]
async fn transfer_ownership(
    mut ctx: OrgContext<perm::Owner>,
    ValidJson(input): ValidJson<TransferOwnership>,
) -> Result<Json<Member>, ApiError> {
    let actor = ctx.lock().await?;
    let member = service::transfer_ownership(&mut ctx.tx, &actor, input).await?;
    ctx.commit_changes().await?;
    Ok(Json(member))
}

#[utoipa::path(get, path = "/api/v1/orgs/{org_id}/roles", tag = "roles",
    params(("org_id" = Uuid, Path), PageQuery),
    responses((status = 200, body = Page<Role>)))]
async fn list_roles(
    mut ctx: OrgContext<perm::MembersRead>,
    ValidQuery(q): ValidQuery<PageQuery>,
) -> Result<Json<Page<Role>>, ApiError> {
    let page = service::list_roles(&mut ctx.tx, &q).await?;
    ctx.tx.commit().await?;
    Ok(Json(page))
}

#[utoipa::path(post, path = "/api/v1/orgs/{org_id}/roles", tag = "roles",
    params(("org_id" = Uuid, Path)),
    request_body = CreateRole,
    responses((status = 201, body = Role), (status = 409, description = "`role_exists`, `role_limit`", body = Problem)))]
async fn create_role(
    mut ctx: OrgContext<perm::RolesManage>,
    ValidJson(input): ValidJson<CreateRole>,
) -> Result<(StatusCode, Json<Role>), ApiError> {
    let actor = ctx.lock().await?;
    let role = service::create_role(&mut ctx.tx, &actor, input).await?;
    ctx.commit_changes().await?;
    Ok((StatusCode::CREATED, Json(role)))
}

/// The `{role}` path segment, validated as a role name.
struct RolePath(RoleName);

impl<S: Send + Sync> FromRequestParts<S> for RolePath {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let params = axum::extract::RawPathParams::from_request_parts(parts, &())
            .await
            .map_err(|_| ApiError::bad_request("invalid_path", "missing path parameters"))?;
        let raw = params
            .iter()
            .find(|(k, _)| *k == "role")
            .map(|(_, v)| v.to_owned())
            .unwrap_or_default();
        RoleName::parse("role", &raw).map(RolePath).map_err(|_| {
            ApiError::bad_request("invalid_path", "path parameter role is not a role name")
        })
    }
}

#[utoipa::path(patch, path = "/api/v1/orgs/{org_id}/roles/{role}", tag = "roles",
    params(("org_id" = Uuid, Path), ("role" = String, Path)),
    request_body = UpdateRole,
    responses((status = 200, body = Role), (status = 409, description = "`builtin_role`", body = Problem)))]
async fn update_role(
    mut ctx: OrgContext<perm::RolesManage>,
    RolePath(name): RolePath,
    ValidJson(input): ValidJson<UpdateRole>,
) -> Result<Json<Role>, ApiError> {
    let actor = ctx.lock().await?;
    let role = service::update_role(&mut ctx.tx, &actor, name.as_str(), input).await?;
    ctx.commit_changes().await?;
    Ok(Json(role))
}

#[utoipa::path(delete, path = "/api/v1/orgs/{org_id}/roles/{role}", tag = "roles",
    params(("org_id" = Uuid, Path), ("role" = String, Path)),
    responses((status = 204, description = "Deleted"), (status = 409, description = "`builtin_role`, `role_in_use`", body = Problem)))]
async fn delete_role(
    mut ctx: OrgContext<perm::RolesManage>,
    RolePath(name): RolePath,
) -> Result<StatusCode, ApiError> {
    let actor = ctx.lock().await?;
    service::delete_role(&mut ctx.tx, &actor, name.as_str()).await?;
    ctx.commit_changes().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Open (pending, unexpired) invitations.
#[utoipa::path(get, path = "/api/v1/orgs/{org_id}/invitations", tag = "invitations",
    params(("org_id" = Uuid, Path), PageQuery),
    responses((status = 200, body = Page<Invitation>)))]
async fn list_invitations(
    mut ctx: OrgContext<perm::InvitationsManage>,
    ValidQuery(q): ValidQuery<PageQuery>,
) -> Result<Json<Page<Invitation>>, ApiError> {
    let page = service::list_invitations(&mut ctx.tx, &q).await?;
    ctx.tx.commit().await?;
    Ok(Json(page))
}

/// Invites an email address to a role. The response carries the one-time
/// `token` for the invite link; only its hash is stored.
#[utoipa::path(post, path = "/api/v1/orgs/{org_id}/invitations", tag = "invitations",
    params(("org_id" = Uuid, Path)),
    request_body = CreateInvitation,
    responses((status = 201, body = CreatedInvitation),
        (status = 409, description = "`already_member`, `invitation_exists`", body = Problem)))]
async fn create_invitation(
    State(settings): State<Arc<service::InviteSettings>>,
    mut ctx: OrgContext<perm::InvitationsManage>,
    ValidJson(input): ValidJson<CreateInvitation>,
) -> Result<(StatusCode, Json<CreatedInvitation>), ApiError> {
    let actor = ctx.lock().await?;
    let inv = service::create_invitation(&mut ctx.tx, &actor, &settings, input).await?;
    ctx.commit_changes().await?;
    Ok((StatusCode::CREATED, Json(inv)))
}

#[utoipa::path(delete, path = "/api/v1/orgs/{org_id}/invitations/{invitation_id}", tag = "invitations",
    params(("org_id" = Uuid, Path), ("invitation_id" = Uuid, Path)),
    responses((status = 204, description = "Revoked")))]
async fn revoke_invitation(
    mut ctx: OrgContext<perm::InvitationsManage>,
    ids: IdPath<2>,
) -> Result<StatusCode, ApiError> {
    let actor = ctx.lock().await?;
    service::revoke_invitation(&mut ctx.tx, &actor, ids.0[1]).await?;
    ctx.commit_changes().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Accepts an invitation sent to the caller's verified email address.
#[utoipa::path(post, path = "/api/v1/invitations/accept", tag = "invitations",
    request_body = AcceptInvitation,
    responses((status = 200, body = AcceptedInvitation),
        (status = 403, description = "`email_mismatch`", body = Problem),
        (status = 404, body = Problem),
        (status = 409, description = "`invitation_used`, `already_member`", body = Problem),
        (status = 410, description = "`invitation_expired`", body = Problem)))]
async fn accept_invitation(
    State(pool): State<PgPool>,
    State(cache): State<Cache>,
    user: AuthUser,
    ValidJson(input): ValidJson<AcceptInvitation>,
) -> Result<Json<AcceptedInvitation>, ApiError> {
    let (accepted, mut stale) = service::accept_invitation(&pool, &user, input).await?;
    stale.push(accepted.organization.id);
    cache.invalidate_orgs(&stale).await;
    Ok(Json(accepted))
}

/// Changes to the organization, newest first.
#[utoipa::path(get, path = "/api/v1/orgs/{org_id}/audit-log", tag = "audit",
    params(("org_id" = Uuid, Path), PageQuery),
    responses((status = 200, body = Page<AuditEntry>)))]
async fn list_audit_log(
    mut ctx: OrgContext<perm::AuditRead>,
    ValidQuery(q): ValidQuery<PageQuery>,
) -> Result<Json<Page<AuditEntry>>, ApiError> {
    let page = service::list_audit(&mut ctx.tx, &q).await?;
    ctx.tx.commit().await?;
    Ok(Json(page))
}
