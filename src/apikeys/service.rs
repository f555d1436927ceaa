//! Business rules of API keys. Creating and revoking take an [`Actor`] (the
//! org row lock), and write their audit rows in the same transaction.
//!
//! Nobody makes a key with a role holding permissions they do not hold, and
//! nobody makes an owner key.

use chrono::Utc;
use serde_json::json;
use uuid::Uuid;

use super::error::ApiKeyError;
use super::model::*;
use super::repo;
use crate::auth::rbac::{Actor, OWNER, PermSet};
use crate::core::audit;
use crate::core::db::TenantTx;
use crate::core::error::{FieldError, Invalid};
use crate::core::pagination::{Page, PageQuery};
use crate::core::validate::{self, Fields, RoleName};
use crate::organizations::service as orgs;

/// Most live (unrevoked, unexpired) keys one org may hold.
pub const MAX_LIVE_KEYS: i64 = 100;

async fn audit(
    tx: &mut TenantTx,
    action: &str,
    key_id: Uuid,
    before: Option<serde_json::Value>,
    after: Option<serde_json::Value>,
) -> Result<(), sqlx::Error> {
    audit::record(
        tx,
        audit::Entry {
            action,
            target_type: "api_key",
            target_id: Some(key_id.to_string()),
            before,
            after,
        },
    )
    .await
}

pub async fn create(
    tx: &mut TenantTx,
    locked: &Actor,
    input: CreateApiKey,
) -> Result<CreatedApiKey, ApiKeyError> {
    let mut f = Fields::default();
    let name = f.check(validate::display_name("name", &input.name));
    let role = f.check(RoleName::parse("role", &input.role));
    if input.expires_at.is_some_and(|t| t <= Utc::now()) {
        f.check::<()>(Err(FieldError::new(
            "expires_at",
            "in_past",
            "must be in the future",
        )));
    }
    f.finish()?;
    let (name, role) = (name.expect("checked"), role.expect("checked"));
    let org_id = tx.org_id();
    let stored = orgs::find_role(tx, role.as_str()).await?.ok_or_else(|| {
        Invalid::field(
            "role",
            "unknown_role",
            format!("this organization has no role {:?}", role.as_str()),
        )
    })?;
    if role.as_str() == OWNER {
        return Err(ApiKeyError::OwnerRole);
    }
    if !PermSet::from_names(&stored.permissions).is_subset_of(locked.perms()) {
        return Err(ApiKeyError::PermissionsNotHeld);
    }
    if repo::count_live(tx.conn(), org_id).await? >= MAX_LIVE_KEYS {
        return Err(ApiKeyError::KeyLimitReached {
            limit: MAX_LIVE_KEYS,
        });
    }
    let (key, prefix, hash) = crate::auth::api_key::generate(org_id);
    let created_by = Some(tx.user_id()).filter(|id| !id.is_nil());
    let row = repo::insert(
        tx.conn(),
        repo::NewKey {
            id: Uuid::now_v7(),
            org_id,
            name: &name,
            role: role.as_str(),
            prefix: &prefix,
            secret_hash: &hash,
            created_by,
            expires_at: input.expires_at,
        },
    )
    .await?;
    audit(tx, "api_key.created", row.id, None, Some(json!(row))).await?;
    Ok(CreatedApiKey {
        id: row.id,
        name: row.name,
        role: row.role,
        prefix: row.prefix,
        created_at: row.created_at,
        expires_at: row.expires_at,
        key,
    })
}

pub async fn list(tx: &mut TenantTx, q: &PageQuery) -> Result<Page<ApiKey>, ApiKeyError> {
    let limit = q.limit()?;
    let after: Option<Uuid> = q.after()?;
    let org_id = tx.org_id();
    let rows = repo::list(tx.conn(), org_id, after, limit + 1).await?;
    Ok(Page::from_rows(rows, limit, |k| k.id))
}

/// Revokes a key. Revoking a revoked key again changes nothing (and succeeds);
/// a key of another org, or none, is 404.
pub async fn revoke(tx: &mut TenantTx, _locked: &Actor, id: Uuid) -> Result<(), ApiKeyError> {
    let org_id = tx.org_id();
    let before = repo::get(tx.conn(), org_id, id)
        .await?
        .ok_or(ApiKeyError::NotFound)?;
    let Some(after) = repo::revoke(tx.conn(), org_id, id).await? else {
        return Ok(());
    };
    audit(
        tx,
        "api_key.revoked",
        id,
        Some(json!(before)),
        Some(json!(after)),
    )
    .await?;
    Ok(())
}
