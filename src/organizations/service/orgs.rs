//! The org itself: creation (with its owner, built-in roles and plan),
//! reading, renaming and deletion.

use serde_json::json;
use uuid::Uuid;

use super::audit::audit;
use crate::auth::rbac::{Actor, OWNER};
use crate::core::db::{TenantTx, UserTx};
use crate::core::error::is_unique_violation;
use crate::core::validate::{Fields, OrgName, OrgSlug};
use crate::organizations::error::OrgError;
use crate::organizations::model::{CreateOrganization, Organization, UpdateOrganization};
use crate::organizations::repo;

/// Creates an org with the caller as its owner, its built-in roles, and an audit row.
pub async fn create_org(
    utx: UserTx,
    input: CreateOrganization,
) -> Result<(TenantTx, Organization), OrgError> {
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
        return Err(OrgError::SlugTaken);
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

pub async fn get_org(tx: &mut TenantTx) -> Result<Organization, OrgError> {
    let org_id = tx.org_id();
    repo::get_org(tx.conn(), org_id)
        .await?
        .ok_or(OrgError::OrgNotFound)
}

pub async fn update_org(
    tx: &mut TenantTx,
    _actor: &Actor,
    input: UpdateOrganization,
) -> Result<Organization, OrgError> {
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
        .ok_or(OrgError::OrgNotFound)?;
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
            OrgError::SlugTaken
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
pub async fn delete_org(tx: &mut TenantTx, _actor: &Actor) -> Result<(), OrgError> {
    let org_id = tx.org_id();
    let org = repo::get_org(tx.conn(), org_id)
        .await?
        .ok_or(OrgError::OrgNotFound)?;
    repo::delete_org(tx.conn(), org_id).await?;
    tracing::info!(org_id = %org.id, slug = %org.slug, actor = %tx.user_id(), "organization deleted");
    Ok(())
}
