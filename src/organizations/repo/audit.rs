//! SQL of the audit log's read side (rows are written by `core::audit`).

use sqlx::PgConnection;
use uuid::Uuid;

use crate::organizations::model::AuditEntry;

pub async fn list_audit(
    conn: &mut PgConnection,
    org_id: Uuid,
    before: Option<Uuid>,
    limit: i64,
) -> sqlx::Result<Vec<AuditEntry>> {
    sqlx::query_as(
        "select id, actor_id, action, target_type, target_id, before, after, request_id, created_at
         from audit_log where org_id = $1 and ($2::uuid is null or id < $2)
         order by id desc limit $3",
    )
    .bind(org_id)
    .bind(before)
    .bind(limit)
    .fetch_all(conn)
    .await
}
