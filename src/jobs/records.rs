//! Tenant-visible records of jobs an org started (reports, imports).
//!
//! A record shares its job's id and lives in `job_records` under RLS. The
//! request that starts the job inserts it (state `queued`) in the same
//! transaction as the enqueue; the worker moves it through `running` to
//! `succeeded`, `failed` (an error no retry can fix) or `dead` (out of
//! attempts); a failed attempt that will be retried puts it back to `queued`
//! with the error.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, PgPool};
use utoipa::ToSchema;
use uuid::Uuid;

use super::job::Job;
use super::outbox::{Envelope, Options, enqueue_with};
use crate::core::db::{SystemScope, TenantTx};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema, sqlx::Type)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Dead,
}

/// A job started by the org, with its state and progress.
#[derive(Debug, Clone, Serialize, ToSchema, sqlx::FromRow)]
pub struct JobRecord {
    pub id: Uuid,
    /// `report` or `import`.
    pub kind: String,
    pub state: JobState,
    /// What the job was asked to do.
    #[schema(value_type = Object)]
    pub params: serde_json::Value,
    /// Attempts so far.
    pub attempts: i32,
    /// Rows processed so far.
    pub progress: i64,
    /// Rows in all, once known.
    pub total: Option<i64>,
    /// What the job produced, once it succeeded.
    #[schema(value_type = Option<Object>)]
    pub result: Option<serde_json::Value>,
    /// Why the last attempt failed, in words fit for members (the full
    /// error is in the logs and the operator routes).
    pub error: Option<String>,
    /// A stable code for `error`: `internal_error`, `unavailable`,
    /// `job_failed`, or the reason the job was refused (`not_found`,
    /// `permission_denied`, `invalid_file`, ...).
    pub error_code: Option<String>,
    pub created_by: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

const COLUMNS: &str = "id, kind, state, params, attempts, progress, total, result, error, \
                       error_code, created_by, created_at, started_at, finished_at, updated_at";

/// What a failed attempt shows members.
#[derive(Debug, Clone, Copy)]
pub struct PublicError<'a> {
    pub code: &'static str,
    pub message: &'a str,
}

/// Starts a tenant job in the caller's transaction: its record (`queued`,
/// created by the caller) and the job itself, with the same id. Both exist
/// if and only if the transaction commits.
pub async fn start<J: Job>(
    tx: &mut TenantTx,
    kind: &str,
    params: &serde_json::Value,
    job: &J,
) -> Result<JobRecord, sqlx::Error> {
    let (org_id, user_id) = (tx.org_id(), tx.user_id());
    let id = Uuid::now_v7();
    let record = create(tx.conn(), id, org_id, kind, params, user_id).await?;
    let opts = Options {
        id: Some(id),
        record_org: Some(org_id),
        ..Default::default()
    };
    enqueue_with(tx.conn(), job, opts).await?;
    Ok(record)
}

/// A page of the org's records of `kind`, newest first, failing with the
/// caller's domain error (a bad page request, or the database).
pub async fn page<E>(
    tx: &mut TenantTx,
    kind: &str,
    q: &crate::core::pagination::PageQuery,
) -> Result<crate::core::pagination::Page<JobRecord>, E>
where
    E: From<crate::core::pagination::PageError> + From<sqlx::Error>,
{
    let limit = q.limit()?;
    let before: Option<Uuid> = q.after()?;
    let org_id = tx.org_id();
    let rows = list(tx.conn(), org_id, kind, before, limit + 1).await?;
    Ok(crate::core::pagination::Page::from_rows(rows, limit, |r| {
        r.id
    }))
}

/// Inserts the record of a job about to be enqueued in the same transaction.
async fn create(
    conn: &mut PgConnection,
    id: Uuid,
    org_id: Uuid,
    kind: &str,
    params: &serde_json::Value,
    created_by: Uuid,
) -> Result<JobRecord, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "insert into job_records (id, org_id, kind, params, created_by, request_id)
         values ($1, $2, $3, $4, $5, $6) returning {COLUMNS}"
    )))
    .bind(id)
    .bind(org_id)
    .bind(kind)
    .bind(params)
    .bind(created_by)
    .bind(crate::core::telemetry::current_request_id())
    .fetch_one(conn)
    .await
}

pub async fn get(
    conn: &mut PgConnection,
    org_id: Uuid,
    kind: &str,
    id: Uuid,
) -> Result<Option<JobRecord>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "select {COLUMNS} from job_records where org_id = $1 and kind = $2 and id = $3"
    )))
    .bind(org_id)
    .bind(kind)
    .bind(id)
    .fetch_optional(conn)
    .await
}

/// An org's records of one kind, newest first, after `before`.
async fn list(
    conn: &mut PgConnection,
    org_id: Uuid,
    kind: &str,
    before: Option<Uuid>,
    limit: i64,
) -> Result<Vec<JobRecord>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "select {COLUMNS} from job_records
         where org_id = $1 and kind = $2 and ($3::uuid is null or id < $3)
         order by id desc limit $4"
    )))
    .bind(org_id)
    .bind(kind)
    .bind(before)
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// A transaction in the org of a recorded job, as no user (RLS confines it
/// to the org; there is no membership to read).
pub(crate) async fn org_tx(pool: &PgPool, org_id: Uuid) -> Result<TenantTx, sqlx::Error> {
    TenantTx::enter_as_system(pool, org_id, SystemScope::Jobs).await
}

async fn update(
    pool: &PgPool,
    env: &Envelope,
    sql: &'static str,
    attempt: u32,
    error: Option<PublicError<'_>>,
) -> Result<(), sqlx::Error> {
    let Some(org) = env.org_id else { return Ok(()) };
    let mut tx = org_tx(pool, org).await?;
    sqlx::query(sql)
        .bind(env.id)
        .bind(org)
        .bind(attempt as i32)
        .bind(error.map(|e| e.message))
        .bind(error.map(|e| e.code))
        .execute(tx.conn())
        .await?;
    tx.commit().await
}

/// An attempt starts. A record that already succeeded stays so (a repeated
/// delivery of a finished job).
pub async fn mark_running(pool: &PgPool, env: &Envelope, attempt: u32) -> Result<(), sqlx::Error> {
    update(
        pool,
        env,
        "update job_records set state = 'running', attempts = $3,
             started_at = coalesce(started_at, now()), updated_at = now(),
             error = coalesce($4, error), error_code = coalesce($5, error_code)
         where id = $1 and org_id = $2 and state <> 'succeeded'",
        attempt,
        None,
    )
    .await
}

/// An attempt failed and will be retried.
pub async fn mark_retrying(
    pool: &PgPool,
    env: &Envelope,
    attempt: u32,
    error: PublicError<'_>,
) -> Result<(), sqlx::Error> {
    update(
        pool,
        env,
        "update job_records set state = 'queued', attempts = $3, error = $4, error_code = $5,
             updated_at = now()
         where id = $1 and org_id = $2 and state <> 'succeeded'",
        attempt,
        Some(error),
    )
    .await
}

/// The job gave up: `dead` when it ran out of attempts, else `failed`.
pub async fn finish_failed(
    pool: &PgPool,
    env: &Envelope,
    attempt: u32,
    dead: bool,
    error: PublicError<'_>,
) -> Result<(), sqlx::Error> {
    let sql = if dead {
        "update job_records set state = 'dead', attempts = $3, error = $4, error_code = $5,
             finished_at = now(), updated_at = now()
         where id = $1 and org_id = $2 and state <> 'succeeded'"
    } else {
        "update job_records set state = 'failed', attempts = $3, error = $4, error_code = $5,
             finished_at = now(), updated_at = now()
         where id = $1 and org_id = $2 and state <> 'succeeded'"
    };
    // An import's upload stays while its job is in the dead letters (an
    // operator may retry it); discarding the job deletes it.
    update(pool, env, sql, attempt, Some(error)).await
}

/// An operator discarded the dead job: its record is final (`failed`) and
/// an import's upload is deleted.
pub async fn mark_discarded(pool: &PgPool, org_id: Uuid, id: Uuid) -> Result<(), sqlx::Error> {
    let mut tx = org_tx(pool, org_id).await?;
    sqlx::query(
        "update job_records set state = 'failed', error_code = 'discarded',
             error = coalesce(error || '; ', '') || 'discarded by an operator',
             finished_at = coalesce(finished_at, now()), updated_at = now()
         where id = $1 and org_id = $2 and state <> 'succeeded'",
    )
    .bind(id)
    .bind(org_id)
    .execute(tx.conn())
    .await?;
    delete_upload(tx.conn(), org_id, id).await?;
    tx.commit().await
}

/// Deletes an import's uploaded file (a no-op for other jobs).
async fn delete_upload(conn: &mut PgConnection, org_id: Uuid, id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("delete from import_files where org_id = $1 and job_id = $2")
        .bind(org_id)
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}

/// A dead job was put back on its queue by an operator.
pub async fn mark_requeued(pool: &PgPool, org_id: Uuid, id: Uuid) -> Result<(), sqlx::Error> {
    let mut tx = org_tx(pool, org_id).await?;
    sqlx::query(
        "update job_records set state = 'queued', finished_at = null, updated_at = now()
         where id = $1 and org_id = $2 and state in ('dead', 'failed')",
    )
    .bind(id)
    .bind(org_id)
    .execute(tx.conn())
    .await?;
    tx.commit().await
}

/// Progress of a running job (rows done, and the total once known).
pub async fn set_progress(
    conn: &mut PgConnection,
    org_id: Uuid,
    id: Uuid,
    progress: i64,
    total: Option<i64>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "update job_records set progress = $3, total = coalesce($4, total), updated_at = now()
         where id = $1 and org_id = $2",
    )
    .bind(id)
    .bind(org_id)
    .bind(progress)
    .bind(total)
    .execute(conn)
    .await?;
    Ok(())
}

/// The job succeeded with `result`; call in the transaction of its last effect.
pub async fn succeed(
    conn: &mut PgConnection,
    org_id: Uuid,
    id: Uuid,
    progress: i64,
    result: &serde_json::Value,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "update job_records set state = 'succeeded', progress = $3, total = coalesce(total, $3),
             result = $4, error = null, finished_at = now(), updated_at = now()
         where id = $1 and org_id = $2",
    )
    .bind(id)
    .bind(org_id)
    .bind(progress)
    .bind(result)
    .execute(conn)
    .await?;
    Ok(())
}

/// The record's state, read in the job's org (None: the org or record is gone).
pub async fn state(pool: &PgPool, org_id: Uuid, id: Uuid) -> Result<Option<JobState>, sqlx::Error> {
    let mut tx = org_tx(pool, org_id).await?;
    let row: Option<(JobState,)> =
        sqlx::query_as("select state from job_records where id = $1 and org_id = $2")
            .bind(id)
            .bind(org_id)
            .fetch_optional(tx.conn())
            .await?;
    tx.commit().await?;
    Ok(row.map(|r| r.0))
}
