//! Memberships: the member list, role changes, removal and leaving, and
//! ownership transfer; an org always keeps an owner.

use serde_json::json;
use uuid::Uuid;

use super::audit::audit;
use super::roles::role_perms;
use crate::auth::rbac::{Actor, OWNER, PermSet, Permission};
use crate::core::db::TenantTx;
use crate::core::error::Invalid;
use crate::core::pagination::{Page, PageQuery};
use crate::core::validate::RoleName;
use crate::organizations::error::OrgError;
use crate::organizations::model::{Member, TransferOwnership, UpdateMember};
use crate::organizations::repo;

pub async fn list_members(tx: &mut TenantTx, q: &PageQuery) -> Result<Page<Member>, OrgError> {
    let limit = q.limit()?;
    let after = q.after()?;
    let org_id = tx.org_id();
    let rows = repo::list_members(tx.conn(), org_id, after, limit + 1).await?;
    Ok(Page::from_rows(rows, limit, |m| (m.joined_at, m.user_id)))
}

pub async fn change_member_role(
    tx: &mut TenantTx,
    locked: &Actor,
    target: Uuid,
    input: UpdateMember,
) -> Result<Member, OrgError> {
    let role = RoleName::parse("role", &input.role).map_err(|e| Invalid(vec![e]))?;
    let org_id = tx.org_id();
    let (actor_role, actor) = (locked.role(), locked.perms());
    let (current_role, current) = repo::member_role(tx.conn(), org_id, target)
        .await?
        .ok_or(OrgError::MemberNotFound)?;
    let current = PermSet::from_names(&current);
    let new = role_perms(tx, "role", role.as_str()).await?;
    if current_role == role.as_str() {
        return repo::get_member(tx.conn(), org_id, target)
            .await?
            .ok_or(OrgError::MemberNotFound);
    }
    if (current_role == OWNER || role.as_str() == OWNER) && actor_role != OWNER {
        return Err(OrgError::OwnerOnly("make or unmake owners"));
    }
    if !current.is_subset_of(actor) || !new.is_subset_of(actor) {
        return Err(OrgError::PermissionsNotHeld(
            "you cannot change a member to or from a role with permissions you do not hold",
        ));
    }
    if current_role == OWNER && repo::owner_count(tx.conn(), org_id).await? <= 1 {
        return Err(OrgError::LastOwner);
    }
    let before = repo::get_member(tx.conn(), org_id, target).await?;
    repo::set_member_role(tx.conn(), org_id, target, role.as_str()).await?;
    let after = repo::get_member(tx.conn(), org_id, target)
        .await?
        .ok_or(OrgError::MemberNotFound)?;
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
) -> Result<(), OrgError> {
    let org_id = tx.org_id();
    let (actor_role, actor) = (locked.role(), locked.perms());
    let leaving = target == tx.user_id();
    // Permission before lookup, as on every route with an object id.
    if !leaving && !actor.contains(Permission::MembersManage) {
        return Err(OrgError::MissingPermission(Permission::MembersManage));
    }
    let (target_role, target_perms) = repo::member_role(tx.conn(), org_id, target)
        .await?
        .ok_or(OrgError::MemberNotFound)?;
    if !leaving {
        if target_role == OWNER && actor_role != OWNER {
            return Err(OrgError::OwnerOnly("remove an owner"));
        }
        if !PermSet::from_names(&target_perms).is_subset_of(actor) {
            return Err(OrgError::PermissionsNotHeld(
                "you cannot remove a member whose role has permissions you do not hold",
            ));
        }
    }
    if target_role == OWNER && repo::owner_count(tx.conn(), org_id).await? <= 1 {
        return Err(OrgError::LastOwnerLeaving);
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
) -> Result<Member, OrgError> {
    if !locked.is_owner() {
        return Err(OrgError::OwnerOnly("transfer ownership"));
    }
    let org_id = tx.org_id();
    let me = tx.user_id();
    if input.user_id == me {
        return Err(Invalid::field(
            "user_id",
            "self_transfer",
            "you already own this organization",
        )
        .into());
    }
    let before = repo::get_member(tx.conn(), org_id, input.user_id)
        .await?
        .ok_or_else(|| {
            Invalid::field("user_id", "not_a_member", "the new owner must be a member")
        })?;
    repo::set_member_role(tx.conn(), org_id, input.user_id, OWNER).await?;
    repo::set_member_role(tx.conn(), org_id, me, crate::auth::rbac::ADMIN).await?;
    let after = repo::get_member(tx.conn(), org_id, input.user_id)
        .await?
        .ok_or(OrgError::MemberNotFound)?;
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
