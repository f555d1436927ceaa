//! Business rules of organizations, memberships, roles and invitations. Every
//! function takes the caller's transaction; changes and their audit rows
//! commit together or not at all.
//!
//! Invariants kept here, under the org row lock (functions that change
//! anything take an [`Actor`], which only `OrgContext::lock` makes) so that
//! concurrent requests decide on fresh state one at a time:
//! * an org always has at least one owner;
//! * nobody grants a role holding permissions they do not hold themselves;
//! * only an owner makes or unmakes owners.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::Utc;
use rand::RngCore;
use serde_json::json;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::model::*;
use super::repo;
use crate::auth::AuthUser;
use crate::auth::rbac::{Actor, OWNER, OWNER_ONLY, PermSet, Permission, builtin_permissions};
use crate::core::audit;
use crate::core::db::{TenantTx, UserTx};
use crate::core::error::{ApiError, FieldError, is_foreign_key_violation, is_unique_violation};
use crate::core::pagination::{Page, PageQuery};
use crate::core::validate::{self, Email, Fields, OrgName, OrgSlug, RoleName};

/// Most custom roles one org may define.
pub const MAX_CUSTOM_ROLES: i64 = 50;

async fn audit(
    tx: &mut TenantTx,
    action: &str,
    target_type: &str,
    target_id: Option<String>,
    before: Option<serde_json::Value>,
    after: Option<serde_json::Value>,
) -> Result<(), ApiError> {
    audit::record(
        tx,
        audit::Entry {
            action,
            target_type,
            target_id,
            before,
            after,
        },
    )
    .await?;
    Ok(())
}

// ---------------------------------------------------------------- orgs

/// Creates an org with the caller as its owner, its built-in roles, and an audit row.
pub async fn create_org(
    utx: UserTx,
    input: CreateOrganization,
) -> Result<(TenantTx, Organization), ApiError> {
    let mut f = Fields::default();
    let name = f.check(OrgName::parse("name", &input.name));
    let slug = match &input.slug {
        Some(s) => f.check(OrgSlug::parse("slug", s)).map(Some),
        None => Some(None),
    };
    f.finish()?;
    let (name, requested_slug) = (name.expect("checked"), slug.expect("checked"));

    let org_id = Uuid::now_v7();
    let mut tx = TenantTx::from_user_tx(utx, org_id).await?;
    let mut slug = requested_slug
        .clone()
        .unwrap_or_else(|| OrgSlug::from_name(&name));
    let mut org = None;
    for _ in 0..5 {
        org = repo::insert_org(tx.conn(), org_id, name.as_str(), slug.as_str()).await?;
        if org.is_some() || requested_slug.is_some() {
            break;
        }
        slug = slug.with_suffix();
    }
    let Some(org) = org else {
        return Err(ApiError::conflict(
            "slug_taken",
            "this slug is already in use",
        ));
    };
    repo::insert_builtin_roles(tx.conn(), org_id).await?;
    let user_id = tx.user_id();
    repo::insert_membership(tx.conn(), org_id, user_id, OWNER).await?;
    // Every org starts on the free plan, with its first period's credits.
    crate::billing::subscriptions::create_for_new_org(&mut tx).await?;
    audit(
        &mut tx,
        "org.created",
        "organization",
        Some(org_id.to_string()),
        None,
        Some(json!(org)),
    )
    .await?;
    Ok((tx, org))
}

pub async fn get_org(tx: &mut TenantTx) -> Result<Organization, ApiError> {
    let org_id = tx.org_id();
    repo::get_org(tx.conn(), org_id)
        .await?
        .ok_or(ApiError::NotFound("organization"))
}

pub async fn update_org(
    tx: &mut TenantTx,
    _actor: &Actor,
    input: UpdateOrganization,
) -> Result<Organization, ApiError> {
    let mut f = Fields::default();
    let name = input
        .name
        .as_deref()
        .map(|n| f.check(OrgName::parse("name", n)));
    let slug = input
        .slug
        .as_deref()
        .map(|s| f.check(OrgSlug::parse("slug", s)));
    f.finish()?;
    let name = name.flatten();
    let slug = slug.flatten();
    let org_id = tx.org_id();
    let before = repo::get_org(tx.conn(), org_id)
        .await?
        .ok_or(ApiError::NotFound("organization"))?;
    if name.is_none() && slug.is_none() {
        return Ok(before);
    }
    let after = repo::update_org(
        tx.conn(),
        org_id,
        name.as_ref().map(|n| n.as_str()),
        slug.as_ref().map(|s| s.as_str()),
    )
    .await
    .map_err(|e| {
        if is_unique_violation(&e, "organizations_slug_key") {
            ApiError::conflict("slug_taken", "this slug is already in use")
        } else {
            e.into()
        }
    })?;
    audit(
        tx,
        "org.updated",
        "organization",
        Some(org_id.to_string()),
        Some(json!(before)),
        Some(json!(after)),
    )
    .await?;
    Ok(after)
}

/// Deletes the org and everything it holds. Owners only (checked by the route's type).
pub async fn delete_org(tx: &mut TenantTx, _actor: &Actor) -> Result<(), ApiError> {
    let org_id = tx.org_id();
    let org = repo::get_org(tx.conn(), org_id)
        .await?
        .ok_or(ApiError::NotFound("organization"))?;
    repo::delete_org(tx.conn(), org_id).await?;
    tracing::info!(org_id = %org.id, slug = %org.slug, actor = %tx.user_id(), "organization deleted");
    Ok(())
}

// ---------------------------------------------------------------- members

pub async fn list_members(tx: &mut TenantTx, q: &PageQuery) -> Result<Page<Member>, ApiError> {
    let limit = q.limit()?;
    let after = q.after()?;
    let org_id = tx.org_id();
    let rows = repo::list_members(tx.conn(), org_id, after, limit + 1).await?;
    Ok(Page::from_rows(rows, limit, |m| (m.joined_at, m.user_id)))
}

async fn role_perms(tx: &mut TenantTx, field: &str, name: &str) -> Result<PermSet, ApiError> {
    let org_id = tx.org_id();
    let role = repo::get_role(tx.conn(), org_id, name)
        .await?
        .ok_or_else(|| {
            ApiError::field(
                field,
                "unknown_role",
                format!("this organization has no role {name:?}"),
            )
        })?;
    Ok(PermSet::from_names(&role.permissions))
}

fn deny(detail: &str) -> ApiError {
    ApiError::forbidden(detail)
}

pub async fn change_member_role(
    tx: &mut TenantTx,
    locked: &Actor,
    target: Uuid,
    input: UpdateMember,
) -> Result<Member, ApiError> {
    let role = RoleName::parse("role", &input.role).map_err(|e| ApiError::Validation(vec![e]))?;
    let org_id = tx.org_id();
    let (actor_role, actor) = (locked.role(), locked.perms());
    let (current_role, current) = repo::member_role(tx.conn(), org_id, target)
        .await?
        .ok_or(ApiError::NotFound("member"))?;
    let current = PermSet::from_names(&current);
    let new = role_perms(tx, "role", role.as_str()).await?;
    if current_role == role.as_str() {
        return repo::get_member(tx.conn(), org_id, target)
            .await?
            .ok_or(ApiError::NotFound("member"));
    }
    if (current_role == OWNER || role.as_str() == OWNER) && actor_role != OWNER {
        return Err(deny("only an owner can make or unmake owners"));
    }
    if !current.is_subset_of(actor) || !new.is_subset_of(actor) {
        return Err(deny(
            "you cannot change a member to or from a role with permissions you do not hold",
        ));
    }
    if current_role == OWNER && repo::owner_count(tx.conn(), org_id).await? <= 1 {
        return Err(ApiError::conflict(
            "last_owner",
            "the organization must keep at least one owner",
        ));
    }
    let before = repo::get_member(tx.conn(), org_id, target).await?;
    repo::set_member_role(tx.conn(), org_id, target, role.as_str()).await?;
    let after = repo::get_member(tx.conn(), org_id, target)
        .await?
        .ok_or(ApiError::NotFound("member"))?;
    audit(
        tx,
        "member.role_changed",
        "member",
        Some(target.to_string()),
        before.map(|m| json!(m)),
        Some(json!(after)),
    )
    .await?;
    Ok(after)
}

/// Removes a member; removing oneself is leaving, which any member may do
/// unless they are the last owner.
pub async fn remove_member(
    tx: &mut TenantTx,
    locked: &Actor,
    target: Uuid,
) -> Result<(), ApiError> {
    let org_id = tx.org_id();
    let (actor_role, actor) = (locked.role(), locked.perms());
    let leaving = target == tx.user_id();
    // Permission before lookup, as on every route with an object id.
    if !leaving && !actor.contains(Permission::MembersManage) {
        return Err(deny("this action needs members:manage"));
    }
    let (target_role, target_perms) = repo::member_role(tx.conn(), org_id, target)
        .await?
        .ok_or(ApiError::NotFound("member"))?;
    if !leaving {
        if target_role == OWNER && actor_role != OWNER {
            return Err(deny("only an owner can remove an owner"));
        }
        if !PermSet::from_names(&target_perms).is_subset_of(actor) {
            return Err(deny(
                "you cannot remove a member whose role has permissions you do not hold",
            ));
        }
    }
    if target_role == OWNER && repo::owner_count(tx.conn(), org_id).await? <= 1 {
        return Err(ApiError::conflict(
            "last_owner",
            "the last owner cannot leave; transfer ownership or delete the organization",
        ));
    }
    let before = repo::get_member(tx.conn(), org_id, target).await?;
    repo::delete_member(tx.conn(), org_id, target).await?;
    let action = if leaving {
        "member.left"
    } else {
        "member.removed"
    };
    audit(
        tx,
        action,
        "member",
        Some(target.to_string()),
        before.map(|m| json!(m)),
        None,
    )
    .await?;
    Ok(())
}

/// Makes `input.user_id` an owner and the calling owner an admin.
pub async fn transfer_ownership(
    tx: &mut TenantTx,
    locked: &Actor,
    input: TransferOwnership,
) -> Result<Member, ApiError> {
    if !locked.is_owner() {
        return Err(deny("only an owner can transfer ownership"));
    }
    let org_id = tx.org_id();
    let me = tx.user_id();
    if input.user_id == me {
        return Err(ApiError::field(
            "user_id",
            "self_transfer",
            "you already own this organization",
        ));
    }
    let before = repo::get_member(tx.conn(), org_id, input.user_id)
        .await?
        .ok_or_else(|| {
            ApiError::field("user_id", "not_a_member", "the new owner must be a member")
        })?;
    repo::set_member_role(tx.conn(), org_id, input.user_id, OWNER).await?;
    repo::set_member_role(tx.conn(), org_id, me, crate::auth::rbac::ADMIN).await?;
    let after = repo::get_member(tx.conn(), org_id, input.user_id)
        .await?
        .ok_or(ApiError::NotFound("member"))?;
    audit(
        tx,
        "org.ownership_transferred",
        "member",
        Some(input.user_id.to_string()),
        Some(json!({ "owner": me, "new_owner_role": before.role })),
        Some(json!({ "owner": input.user_id, "previous_owner_role": crate::auth::rbac::ADMIN })),
    )
    .await?;
    Ok(after)
}

// ---------------------------------------------------------------- roles

fn parse_permissions(field: &str, names: &[String]) -> Result<PermSet, FieldError> {
    let mut set = Vec::new();
    for (i, n) in names.iter().enumerate() {
        let p = Permission::parse(n).ok_or_else(|| {
            FieldError::new(
                format!("{field}[{i}]"),
                "unknown_permission",
                format!("{n:?} is not a permission"),
            )
        })?;
        if OWNER_ONLY.contains(&p) {
            return Err(FieldError::new(
                format!("{field}[{i}]"),
                "owner_only_permission",
                format!("{n} belongs to the owner role alone"),
            ));
        }
        set.push(p);
    }
    if names.len() > Permission::ALL.len() * 2 {
        return Err(FieldError::new(field, "too_many", "too many permissions"));
    }
    Ok(set.into_iter().collect())
}

/// The org's role named `name` (built-in or custom), if there is one.
pub async fn find_role(tx: &mut TenantTx, name: &str) -> Result<Option<Role>, ApiError> {
    let org_id = tx.org_id();
    Ok(repo::get_role(tx.conn(), org_id, name).await?)
}

pub async fn list_roles(tx: &mut TenantTx, q: &PageQuery) -> Result<Page<Role>, ApiError> {
    let limit = q.limit()?;
    let after: Option<String> = q.after()?;
    let org_id = tx.org_id();
    let rows = repo::list_roles(tx.conn(), org_id, after, limit + 1).await?;
    Ok(Page::from_rows(rows, limit, |r| r.name.clone()))
}

pub async fn create_role(
    tx: &mut TenantTx,
    locked: &Actor,
    input: CreateRole,
) -> Result<Role, ApiError> {
    let mut f = Fields::default();
    let name = f.check(RoleName::parse("name", &input.name));
    let description = f.check(validate::description(
        "description",
        input.description.as_deref().unwrap_or(""),
    ));
    let perms = f.check(parse_permissions("permissions", &input.permissions));
    f.finish()?;
    let (name, description, perms) = (
        name.expect("checked"),
        description.expect("checked"),
        perms.expect("checked"),
    );
    if builtin_permissions(name.as_str()).is_some() {
        return Err(ApiError::conflict(
            "role_exists",
            "a built-in role has this name",
        ));
    }
    if !perms.is_subset_of(locked.perms()) {
        return Err(deny("a role cannot hold permissions you do not hold"));
    }
    let org_id = tx.org_id();
    if repo::count_custom_roles(tx.conn(), org_id).await? >= MAX_CUSTOM_ROLES {
        return Err(ApiError::conflict(
            "role_limit",
            format!("an organization may define at most {MAX_CUSTOM_ROLES} roles"),
        ));
    }
    let role = repo::insert_role(
        tx.conn(),
        org_id,
        name.as_str(),
        &description,
        &perms.names(),
    )
    .await?
    .ok_or_else(|| ApiError::conflict("role_exists", "a role with this name exists"))?;
    audit(
        tx,
        "role.created",
        "role",
        Some(role.name.clone()),
        None,
        Some(json!(role)),
    )
    .await?;
    Ok(role)
}

async fn custom_role(tx: &mut TenantTx, name: &str) -> Result<Role, ApiError> {
    let org_id = tx.org_id();
    let role = repo::get_role(tx.conn(), org_id, name)
        .await?
        .ok_or(ApiError::NotFound("role"))?;
    if role.builtin {
        return Err(ApiError::conflict(
            "builtin_role",
            "built-in roles cannot be changed or deleted",
        ));
    }
    Ok(role)
}

pub async fn update_role(
    tx: &mut TenantTx,
    locked: &Actor,
    name: &str,
    input: UpdateRole,
) -> Result<Role, ApiError> {
    let mut f = Fields::default();
    let description = input
        .description
        .as_deref()
        .map(|d| f.check(validate::description("description", d)));
    let perms = input
        .permissions
        .as_deref()
        .map(|p| f.check(parse_permissions("permissions", p)));
    f.finish()?;
    let (description, perms) = (description.flatten(), perms.flatten());
    let org_id = tx.org_id();
    let before = custom_role(tx, name).await?;
    if !PermSet::from_names(&before.permissions).is_subset_of(locked.perms())
        || perms.is_some_and(|p| !p.is_subset_of(locked.perms()))
    {
        return Err(deny(
            "you cannot change a role with permissions you do not hold",
        ));
    }
    let names = perms.map(|p| p.names());
    let after = repo::update_role(
        tx.conn(),
        org_id,
        name,
        description.as_deref(),
        names.as_deref(),
    )
    .await?;
    audit(
        tx,
        "role.updated",
        "role",
        Some(name.to_owned()),
        Some(json!(before)),
        Some(json!(after)),
    )
    .await?;
    Ok(after)
}

pub async fn delete_role(tx: &mut TenantTx, locked: &Actor, name: &str) -> Result<(), ApiError> {
    let org_id = tx.org_id();
    let before = custom_role(tx, name).await?;
    if !PermSet::from_names(&before.permissions).is_subset_of(locked.perms()) {
        return Err(deny(
            "you cannot delete a role with permissions you do not hold",
        ));
    }
    if repo::role_usage(tx.conn(), org_id, name).await? > 0 {
        return Err(ApiError::conflict(
            "role_in_use",
            "members, open invitations or live API keys still have this role",
        ));
    }
    repo::delete_role(tx.conn(), org_id, name).await?;
    audit(
        tx,
        "role.deleted",
        "role",
        Some(name.to_owned()),
        Some(json!(before)),
        None,
    )
    .await?;
    Ok(())
}

// ---------------------------------------------------------------- invitations

fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// What creating an invitation needs from the configuration.
#[derive(Debug, Clone)]
pub struct InviteSettings {
    pub ttl: std::time::Duration,
    /// The web app's base URL; the email links to `{app_url}/invitations/accept?token=...`.
    pub app_url: url::Url,
}

impl InviteSettings {
    pub fn from_config(c: &crate::config::Config) -> Self {
        InviteSettings {
            ttl: c.invitation_ttl,
            app_url: c.jobs.app_url.clone(),
        }
    }

    pub fn accept_url(&self, token: &str) -> String {
        let mut url = self.app_url.clone();
        let path = format!("{}/invitations/accept", url.path().trim_end_matches('/'));
        url.set_path(&path);
        url.query_pairs_mut().clear().append_pair("token", token);
        url.to_string()
    }
}

/// Creates an invitation and, in the same transaction, the job that emails
/// its link: the email goes out if and only if the invitation is committed.
pub async fn create_invitation(
    tx: &mut TenantTx,
    locked: &Actor,
    settings: &InviteSettings,
    input: CreateInvitation,
) -> Result<CreatedInvitation, ApiError> {
    let mut f = Fields::default();
    let email = f.check(Email::parse("email", &input.email));
    let role = f.check(RoleName::parse("role", &input.role));
    f.finish()?;
    let (email, role) = (email.expect("checked"), role.expect("checked"));
    let org_id = tx.org_id();
    let perms = role_perms(tx, "role", role.as_str()).await?;
    if role.as_str() == OWNER && !locked.is_owner() {
        return Err(deny("only an owner can invite owners"));
    }
    if !perms.is_subset_of(locked.perms()) {
        return Err(deny(
            "you cannot invite to a role with permissions you do not hold",
        ));
    }
    if repo::is_member_email(tx.conn(), org_id, email.as_str()).await? {
        return Err(ApiError::conflict(
            "already_member",
            "a member has this email",
        ));
    }
    repo::close_expired_invitation(tx.conn(), org_id, email.as_str()).await?;
    if repo::has_open_invitation(tx.conn(), org_id, email.as_str()).await? {
        return Err(ApiError::conflict(
            "invitation_exists",
            "an open invitation to this email exists; revoke it first",
        ));
    }
    // An open invitation holds a seat of the plan (the caller holds the org lock).
    crate::billing::subscriptions::ensure_seat_for_invitation(tx).await?;
    let mut raw = [0u8; 32];
    rand::rng().fill_bytes(&mut raw);
    let token = format!("inv_{}", URL_SAFE_NO_PAD.encode(raw));
    let expires_at =
        Utc::now() + chrono::Duration::from_std(settings.ttl).unwrap_or(chrono::Duration::days(7));
    let user_id = tx.user_id();
    let inv = repo::insert_invitation(
        tx.conn(),
        Uuid::now_v7(),
        org_id,
        email.as_str(),
        role.as_str(),
        &token_hash(&token),
        user_id,
        expires_at,
    )
    .await?;
    audit(
        tx,
        "invitation.created",
        "invitation",
        Some(inv.id.to_string()),
        None,
        Some(json!(inv)),
    )
    .await?;
    let org = repo::get_org(tx.conn(), org_id)
        .await?
        .ok_or(ApiError::NotFound("organization"))?;
    let inviter = repo::user_label(tx.conn(), user_id).await?;
    crate::jobs::enqueue(
        tx.conn(),
        &crate::mail::SendEmail {
            to: inv.email.clone(),
            template: crate::mail::templates::Template::Invitation {
                org_name: org.name,
                inviter,
                role: inv.role.clone(),
                accept_url: settings.accept_url(&token),
                expires_at: inv.expires_at,
            },
        },
    )
    .await?;
    Ok(CreatedInvitation {
        id: inv.id,
        email: inv.email,
        role: inv.role,
        invited_by: inv.invited_by,
        created_at: inv.created_at,
        expires_at: inv.expires_at,
        token,
    })
}

pub async fn list_invitations(
    tx: &mut TenantTx,
    q: &PageQuery,
) -> Result<Page<Invitation>, ApiError> {
    let limit = q.limit()?;
    let after: Option<Uuid> = q.after()?;
    let org_id = tx.org_id();
    let rows = repo::list_open_invitations(tx.conn(), org_id, after, limit + 1).await?;
    Ok(Page::from_rows(rows, limit, |i| i.id))
}

pub async fn revoke_invitation(
    tx: &mut TenantTx,
    _locked: &Actor,
    id: Uuid,
) -> Result<(), ApiError> {
    let org_id = tx.org_id();
    let inv = repo::revoke_invitation(tx.conn(), org_id, id)
        .await?
        .ok_or(ApiError::NotFound("invitation"))?;
    audit(
        tx,
        "invitation.revoked",
        "invitation",
        Some(id.to_string()),
        Some(json!(inv)),
        None,
    )
    .await?;
    Ok(())
}

/// Accepts an invitation: the token finds it, the caller's verified email must
/// match, and it works once, before it expires. Also returns the other orgs
/// whose cached member lists show the caller, if provisioning changed them.
pub async fn accept_invitation(
    pool: &sqlx::PgPool,
    user: &AuthUser,
    input: AcceptInvitation,
) -> Result<(AcceptedInvitation, Vec<Uuid>), ApiError> {
    let token = input.token.trim();
    if token.is_empty() || token.len() > 256 {
        return Err(ApiError::field(
            "token",
            "invalid_token",
            "not an invitation token",
        ));
    }
    let hash = token_hash(token);
    // Tenantry's own users: the account row says which address is
    // confirmed (a token's claims are not evidence). Others: the token.
    let verified_email = if user.own {
        crate::identity::store::confirmed_email(pool, user.id).await?
    } else {
        user.email.clone().filter(|_| user.email_verified)
    };
    let mut utx = UserTx::enter(pool, user.id, Some(&hash)).await?;
    let stale = crate::users::service::provision(&mut utx, user).await?;
    let found = repo::find_invitation_by_token(utx.conn(), &hash)
        .await?
        .ok_or(ApiError::NotFound("invitation"))?;
    let mut tx = TenantTx::from_user_tx(utx, found.org_id).await?;
    let org_id = tx.org_id();
    // The org row lock first (as every change to the org takes it), so the
    // seat count below cannot move under concurrent acceptances or invitations.
    if repo::lock_org(tx.conn(), org_id).await?.is_none() {
        return Err(ApiError::NotFound("invitation"));
    }
    let inv = repo::lock_invitation(tx.conn(), org_id, found.id)
        .await?
        .ok_or(ApiError::NotFound("invitation"))?;
    if inv.revoked_at.is_some() {
        return Err(ApiError::NotFound("invitation"));
    }
    if inv.accepted_at.is_some() {
        return Err(ApiError::conflict(
            "invitation_used",
            "this invitation was already accepted",
        ));
    }
    if inv.expires_at <= Utc::now() {
        return Err(ApiError::Gone {
            code: "invitation_expired",
            detail: "this invitation has expired".into(),
        });
    }
    if verified_email.as_deref() != Some(inv.email.as_str()) {
        return Err(ApiError::Forbidden {
            code: "email_mismatch",
            detail: "this invitation was sent to another email address (or yours is not verified)"
                .into(),
        });
    }
    let role_exists = repo::get_role(tx.conn(), org_id, &inv.role)
        .await?
        .is_some();
    if !role_exists {
        return Err(ApiError::conflict(
            "role_missing",
            "the role of this invitation no longer exists",
        ));
    }
    crate::billing::subscriptions::ensure_seat_for_member(&mut tx).await?;
    let inserted = repo::insert_membership(tx.conn(), org_id, user.id, &inv.role)
        .await
        .map_err(|e| {
            // The role went away between the check and the insert.
            if is_foreign_key_violation(&e) {
                ApiError::conflict(
                    "role_missing",
                    "the role of this invitation no longer exists",
                )
            } else {
                e.into()
            }
        })?;
    if !inserted {
        return Err(ApiError::conflict(
            "already_member",
            "you are already a member of this organization",
        ));
    }
    repo::mark_invitation_accepted(tx.conn(), org_id, inv.id, user.id).await?;
    let member = repo::get_member(tx.conn(), org_id, user.id).await?;
    audit(
        &mut tx,
        "invitation.accepted",
        "invitation",
        Some(inv.id.to_string()),
        None,
        None,
    )
    .await?;
    audit(
        &mut tx,
        "member.added",
        "member",
        Some(user.id.to_string()),
        None,
        member.map(|m| json!(m)),
    )
    .await?;
    let organization = repo::get_org(tx.conn(), org_id)
        .await?
        .ok_or(ApiError::NotFound("organization"))?;
    tx.commit().await?;
    Ok((
        AcceptedInvitation {
            organization,
            role: inv.role,
        },
        stale,
    ))
}

// ---------------------------------------------------------------- audit

pub async fn list_audit(tx: &mut TenantTx, q: &PageQuery) -> Result<Page<AuditEntry>, ApiError> {
    let limit = q.limit()?;
    let before: Option<Uuid> = q.after()?;
    let org_id = tx.org_id();
    let rows = repo::list_audit(tx.conn(), org_id, before, limit + 1).await?;
    Ok(Page::from_rows(rows, limit, |e| e.id))
}
