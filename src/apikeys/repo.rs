//! SQL of API keys. Every function runs in the caller's tenant transaction.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use super::model::ApiKey;

const COLUMNS: &str =
    "id, name, role, prefix, created_by, created_at, expires_at, last_used_at, revoked_at";

pub struct NewKey<'a> {
    pub id: Uuid,
    pub org_id: Uuid,
    pub name: &'a str,
    pub role: &'a str,
    pub prefix: &'a str,
    pub secret_hash: &'a [u8],
    pub created_by: Option<Uuid>,
    pub expires_at: Option<DateTime<Utc>>,
}

pub async fn insert(conn: &mut PgConnection, k: NewKey<'_>) -> sqlx::Result<ApiKey> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "insert into api_keys (id, org_id, name, role, prefix, secret_hash, created_by, expires_at)
         values ($1, $2, $3, $4, $5, $6, $7, $8) returning {COLUMNS}"
    )))
    .bind(k.id)
    .bind(k.org_id)
    .bind(k.name)
    .bind(k.role)
    .bind(k.prefix)
    .bind(k.secret_hash)
    .bind(k.created_by)
    .bind(k.expires_at)
    .fetch_one(conn)
    .await
}

/// The org's keys (revoked ones too), oldest first.
pub async fn list(
    conn: &mut PgConnection,
    org_id: Uuid,
    after: Option<Uuid>,
    limit: i64,
) -> sqlx::Result<Vec<ApiKey>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "select {COLUMNS} from api_keys
         where org_id = $1 and ($2::uuid is null or id > $2)
         order by id limit $3"
    )))
    .bind(org_id)
    .bind(after)
    .bind(limit)
    .fetch_all(conn)
    .await
}

pub async fn get(conn: &mut PgConnection, org_id: Uuid, id: Uuid) -> sqlx::Result<Option<ApiKey>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "select {COLUMNS} from api_keys where org_id = $1 and id = $2"
    )))
    .bind(org_id)
    .bind(id)
    .fetch_optional(conn)
    .await
}

/// Revokes a live key; `None` if there is no such key or it was already revoked.
pub async fn revoke(
    conn: &mut PgConnection,
    org_id: Uuid,
    id: Uuid,
) -> sqlx::Result<Option<ApiKey>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "update api_keys set revoked_at = now()
         where org_id = $1 and id = $2 and revoked_at is null
         returning {COLUMNS}"
    )))
    .bind(org_id)
    .bind(id)
    .fetch_optional(conn)
    .await
}

/// Keys of the org that still work (not revoked, not expired).
pub async fn count_live(conn: &mut PgConnection, org_id: Uuid) -> sqlx::Result<i64> {
    sqlx::query_scalar(
        "select count(*) from api_keys
         where org_id = $1 and revoked_at is null and (expires_at is null or expires_at > now())",
    )
    .bind(org_id)
    .fetch_one(conn)
    .await
}
