//! The audit log: the one helper every change records its row with (in the
//! change's transaction), and the read side.

use uuid::Uuid;

use crate::core::audit;
use crate::core::db::TenantTx;
use crate::core::pagination::{Page, PageQuery};
use crate::organizations::error::OrgError;
use crate::organizations::model::AuditEntry;
use crate::organizations::repo;

pub(super) async fn audit(
    tx: &mut TenantTx,
    action: &str,
    target_type: &str,
    target_id: Option<String>,
    before: Option<serde_json::Value>,
    after: Option<serde_json::Value>,
) -> Result<(), sqlx::Error> {
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
    .await
}

pub async fn list_audit(tx: &mut TenantTx, q: &PageQuery) -> Result<Page<AuditEntry>, OrgError> {
    let limit = q.limit()?;
    let before: Option<Uuid> = q.after()?;
    let org_id = tx.org_id();
    let rows = repo::list_audit(tx.conn(), org_id, before, limit + 1).await?;
    Ok(Page::from_rows(rows, limit, |e| e.id))
}
