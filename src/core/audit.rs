//! The audit log's one writer. Every domain records its changes here, in
//! the transaction of the change, so a row commits with what it describes
//! or not at all. The acting API key, if one acts, is filled in by the
//! database from the transaction's context (never by the application).

use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::core::db::TenantTx;

/// One change to record.
pub struct Entry<'a> {
    /// `org.updated`, `member.role_changed`, `subscription.changed`, ...
    pub action: &'a str,
    /// What changed: `organization`, `member`, `api_key`, `invoice`, ...
    pub target_type: &'a str,
    pub target_id: Option<String>,
    pub before: Option<Value>,
    pub after: Option<Value>,
}

/// Records `entry` in the org of `tx`, by its acting user (none when the
/// system or an API key acts).
pub async fn record(tx: &mut TenantTx, entry: Entry<'_>) -> sqlx::Result<()> {
    let (org_id, user_id) = (tx.org_id(), tx.user_id());
    write(
        tx.conn(),
        org_id,
        (!user_id.is_nil()).then_some(user_id),
        entry,
    )
    .await
}

/// [`record`] for code that holds the org's connection rather than its
/// `TenantTx`. The row's org must be the transaction's: RLS refuses any
/// other.
pub async fn write(
    conn: &mut PgConnection,
    org_id: Uuid,
    actor_id: Option<Uuid>,
    entry: Entry<'_>,
) -> sqlx::Result<()> {
    sqlx::query(
        "insert into audit_log (id, org_id, actor_id, action, target_type, target_id, before, after,
                                request_id)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(Uuid::now_v7())
    .bind(org_id)
    .bind(actor_id)
    .bind(entry.action)
    .bind(entry.target_type)
    .bind(entry.target_id)
    .bind(entry.before)
    .bind(entry.after)
    .bind(crate::core::telemetry::current_request_id())
    .execute(conn)
    .await?;
    Ok(())
}
