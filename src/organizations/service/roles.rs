//! Roles: built-in and custom, their permissions, and the rule that nobody
//! grants permissions they do not hold.

use serde_json::json;

use super::audit::audit;
use crate::auth::rbac::{Actor, OWNER_ONLY, PermSet, Permission, builtin_permissions};
use crate::core::db::TenantTx;
use crate::core::error::{FieldError, Invalid};
use crate::core::pagination::{Page, PageQuery};
use crate::core::validate::{self, Fields, RoleName};
use crate::organizations::error::OrgError;
use crate::organizations::model::{CreateRole, Role, UpdateRole};
use crate::organizations::repo;

/// Most custom roles one org may define.
pub const MAX_CUSTOM_ROLES: i64 = 50;

pub(super) async fn role_perms(
    tx: &mut TenantTx,
    field: &str,
    name: &str,
) -> Result<PermSet, OrgError> {
    let org_id = tx.org_id();
    let role = repo::get_role(tx.conn(), org_id, name)
        .await?
        .ok_or_else(|| {
            Invalid::field(
                field,
                "unknown_role",
                format!("this organization has no role {name:?}"),
            )
        })?;
    Ok(PermSet::from_names(&role.permissions))
}

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
pub async fn find_role(tx: &mut TenantTx, name: &str) -> Result<Option<Role>, OrgError> {
    let org_id = tx.org_id();
    Ok(repo::get_role(tx.conn(), org_id, name).await?)
}

pub async fn list_roles(tx: &mut TenantTx, q: &PageQuery) -> Result<Page<Role>, OrgError> {
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
) -> Result<Role, OrgError> {
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
        return Err(OrgError::BuiltinRoleName);
    }
    if !perms.is_subset_of(locked.perms()) {
        return Err(OrgError::PermissionsNotHeld(
            "a role cannot hold permissions you do not hold",
        ));
    }
    let org_id = tx.org_id();
    if repo::count_custom_roles(tx.conn(), org_id).await? >= MAX_CUSTOM_ROLES {
        return Err(OrgError::RoleLimitReached {
            limit: MAX_CUSTOM_ROLES,
        });
    }
    let role = repo::insert_role(
        tx.conn(),
        org_id,
        name.as_str(),
        &description,
        &perms.names(),
    )
    .await?
    .ok_or(OrgError::RoleExists)?;
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

async fn custom_role(tx: &mut TenantTx, name: &str) -> Result<Role, OrgError> {
    let org_id = tx.org_id();
    let role = repo::get_role(tx.conn(), org_id, name)
        .await?
        .ok_or(OrgError::RoleNotFound)?;
    if role.builtin {
        return Err(OrgError::BuiltinRole);
    }
    Ok(role)
}

pub async fn update_role(
    tx: &mut TenantTx,
    locked: &Actor,
    name: &str,
    input: UpdateRole,
) -> Result<Role, OrgError> {
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
        return Err(OrgError::PermissionsNotHeld(
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

pub async fn delete_role(tx: &mut TenantTx, locked: &Actor, name: &str) -> Result<(), OrgError> {
    let org_id = tx.org_id();
    let before = custom_role(tx, name).await?;
    if !PermSet::from_names(&before.permissions).is_subset_of(locked.perms()) {
        return Err(OrgError::PermissionsNotHeld(
            "you cannot delete a role with permissions you do not hold",
        ));
    }
    if repo::role_usage(tx.conn(), org_id, name).await? > 0 {
        return Err(OrgError::RoleInUse);
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
