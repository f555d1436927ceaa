//! Building a report: the `reports.build` job streams a query into a CSV
//! file in the report store.
//!
//! The job checks that the requester may still start the report, counts the
//! rows, then streams the query (never holding all rows) through a CSV
//! writer into a multipart upload at `reports/{org_id}/{id}.csv`, and marks
//! its record `succeeded` in the transaction that read the rows, after the
//! upload completed. A redelivered job whose record already succeeded does
//! nothing; a retried one overwrites the same object.
//!
//! Also here: what each kind of report lists ([`ReportKind`]) and how the
//! report store is opened ([`open_store`]).

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use futures_util::TryStreamExt;
use object_store::ObjectStore;
use object_store::buffered::BufWriter;
use object_store::path::Path;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::{PgConnection, PgPool};
use tokio::io::AsyncWriteExt;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::rbac::{PermSet, Permission, act_for, perm};
use crate::core::db::TenantTx;
use crate::jobs::records::{self, JobState};
use crate::jobs::{Job, JobContext, JobError, RetryPolicy};

/// Opens the report store: a directory (created if missing) or a
/// `file://`, `s3://` or `gs://` URL (credentials from the environment, as
/// the object_store crate reads them).
pub fn open_store(spec: &str) -> anyhow::Result<Arc<dyn ObjectStore>> {
    if spec.contains("://") {
        let url = url::Url::parse(spec)?;
        if url.scheme() == "file" {
            let path = url
                .to_file_path()
                .map_err(|_| anyhow::anyhow!("REPORTS_STORE: not a file path"))?;
            std::fs::create_dir_all(&path)?;
            return Ok(Arc::new(
                object_store::local::LocalFileSystem::new_with_prefix(path)?,
            ));
        }
        let (store, prefix) = object_store::parse_url_opts(&url, std::env::vars())?;
        let store: Arc<dyn ObjectStore> = Arc::from(store);
        if prefix.as_ref().is_empty() {
            return Ok(store);
        }
        return Ok(Arc::new(object_store::prefix::PrefixStore::new(
            store, prefix,
        )));
    }
    std::fs::create_dir_all(spec)?;
    let path = std::fs::canonicalize(spec)?;
    Ok(Arc::new(
        object_store::local::LocalFileSystem::new_with_prefix(path)?,
    ))
}

/// What a report lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReportKind {
    /// Every member: `user_id,email,display_name,role,joined_at`.
    Members,
    /// The audit log: `id,created_at,actor_id,action,target_type,target_id,request_id`
    /// (also needs `audit:read`).
    AuditLog,
    /// Credits used (spends and captured holds), oldest first:
    /// `id,effective_at,transaction_id,kind,amount,grant_id,hold_id,description,actor_user_id,actor_api_key_id`
    /// (also needs `credits:read`).
    CreditUsage,
}

impl ReportKind {
    pub const ALL: [ReportKind; 3] = [
        ReportKind::Members,
        ReportKind::AuditLog,
        ReportKind::CreditUsage,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ReportKind::Members => "members",
            ReportKind::AuditLog => "audit_log",
            ReportKind::CreditUsage => "credit_usage",
        }
    }

    pub fn parse(s: &str) -> Option<ReportKind> {
        ReportKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The permission this kind needs besides `reports:create`.
    pub fn extra_permission(self) -> Option<Permission> {
        match self {
            ReportKind::Members => None,
            ReportKind::AuditLog => Some(Permission::AuditRead),
            ReportKind::CreditUsage => Some(Permission::CreditsRead),
        }
    }

    pub fn columns(self) -> &'static [&'static str] {
        match self {
            ReportKind::Members => &["user_id", "email", "display_name", "role", "joined_at"],
            ReportKind::AuditLog => &[
                "id",
                "created_at",
                "actor_id",
                "action",
                "target_type",
                "target_id",
                "request_id",
            ],
            ReportKind::CreditUsage => &[
                "id",
                "effective_at",
                "transaction_id",
                "kind",
                "amount",
                "grant_id",
                "hold_id",
                "description",
                "actor_user_id",
                "actor_api_key_id",
            ],
        }
    }
}

/// The content type of every report (only CSV is built).
pub const CONTENT_TYPE: &str = "text/csv";

/// Where the report of job `id` is stored.
pub fn object_path(org_id: Uuid, id: Uuid) -> Path {
    Path::from(format!("reports/{org_id}/{id}.csv"))
}

/// Builds one report; the job id is the id of its record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BuildReport {
    pub org_id: Uuid,
    pub requested_by: Uuid,
    pub kind: ReportKind,
}

/// Bytes gathered before they go to the upload.
const CHUNK_BYTES: usize = 256 * 1024;
/// Rows between two progress updates.
const PROGRESS_EVERY: i64 = 10_000;

impl Job for BuildReport {
    const KIND: &'static str = "reports.build";
    const QUEUE: &'static str = "reports";
    /// The report store.
    type Deps = Arc<dyn ObjectStore>;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            backoff: Duration::from_secs(5),
            max_backoff: Duration::from_secs(300),
            timeout: Duration::from_secs(30 * 60),
        }
    }

    async fn run(self, store: &Arc<dyn ObjectStore>, ctx: JobContext) -> Result<(), JobError> {
        let pool = ctx.pool().clone();
        let (org_id, id) = (self.org_id, ctx.id);
        match records::state(&pool, org_id, id).await? {
            Some(JobState::Succeeded) => return Ok(()),
            Some(_) => {}
            None => return Err(JobError::Permanent("the report record is gone".into())),
        }
        check_requester(&pool, org_id, self.requested_by, self.kind).await?;

        // A read-only transaction as the requester (RLS confines it to the
        // org), without the org lock: a report changes nothing, and holding
        // the lock while streaming would stall every change to the org.
        let (mut tx, membership) = TenantTx::enter(&pool, org_id, self.requested_by).await?;
        let perms = membership
            .map(|m| PermSet::from_names(&m.permissions))
            .ok_or_else(|| JobError::Refused {
                code: "requester_left",
                message: "the member who asked for the report is no longer in the organization"
                    .into(),
            })?;
        if !allowed(perms, self.kind) {
            return Err(JobError::Refused {
                code: "permission_denied",
                message: format!(
                    "the requester may no longer create {} reports",
                    self.kind.as_str()
                ),
            });
        }
        // One long statement, and a pause while the upload completes.
        sqlx::query(
            "select set_config('statement_timeout', '30min', true),
                    set_config('idle_in_transaction_session_timeout', '5min', true)",
        )
        .execute(tx.conn())
        .await?;
        let total = count(tx.conn(), org_id, self.kind).await?;
        progress(&pool, org_id, id, 0, Some(total)).await;

        let path = object_path(org_id, id);
        let mut sink = CsvSink::new(store.clone(), path.clone());
        let streamed = match self.kind {
            ReportKind::Members => stream_members(tx.conn(), &pool, org_id, id, &mut sink).await,
            ReportKind::AuditLog => stream_audit(tx.conn(), &pool, org_id, id, &mut sink).await,
            ReportKind::CreditUsage => {
                stream_credit_usage(tx.conn(), &pool, org_id, id, &mut sink).await
            }
        };
        if let Err(e) = streamed {
            sink.abort().await;
            return Err(e);
        }
        let (rows, bytes) = sink.finish().await?;
        records::set_progress(tx.conn(), org_id, id, rows, Some(rows)).await?;
        records::succeed(
            tx.conn(),
            org_id,
            id,
            rows,
            &json!({
                "rows": rows,
                "bytes": bytes,
                "path": path.as_ref(),
                "content_type": CONTENT_TYPE,
            }),
        )
        .await?;
        tx.commit().await?;
        tracing::info!(%org_id, rows, bytes, kind = self.kind.as_str(), "report built");
        Ok(())
    }
}

fn allowed(perms: PermSet, kind: ReportKind) -> bool {
    perms.contains(Permission::ReportsCreate)
        && kind.extra_permission().is_none_or(|p| perms.contains(p))
}

/// Checks, under the org lock, that the requester still holds
/// `reports:create` (and the kind's own permission: `audit:read` for the
/// audit log, `credits:read` for credit usage); released at once. A
/// requester who left, or lost `reports:create`, ends the job with the
/// refusal of [`act_for`]; a database error is retried.
async fn check_requester(
    pool: &PgPool,
    org_id: Uuid,
    user_id: Uuid,
    kind: ReportKind,
) -> Result<(), JobError> {
    let (tx, actor) = act_for::<perm::ReportsCreate>(pool, org_id, user_id).await?;
    if !allowed(actor.perms(), kind) {
        return Err(JobError::Refused {
            code: "permission_denied",
            message: format!(
                "the requester no longer holds {}",
                kind.extra_permission()
                    .map_or("reports:create", |p| p.as_str())
            ),
        });
    }
    tx.commit().await?;
    Ok(())
}

/// Best-effort progress in its own short transaction (the report's own
/// connection is busy streaming).
async fn progress(pool: &PgPool, org_id: Uuid, id: Uuid, done: i64, total: Option<i64>) {
    let r = async {
        let mut tx = records::org_tx(pool, org_id).await?;
        records::set_progress(tx.conn(), org_id, id, done, total).await?;
        tx.commit().await
    }
    .await;
    if let Err(e) = r {
        tracing::warn!(error = %e, "cannot update the report's progress");
    }
}

const MEMBERS_FROM: &str =
    "from memberships m join users u on u.id = m.user_id where m.org_id = $1";
const AUDIT_FROM: &str = "from audit_log a where a.org_id = $1";
const CREDIT_USAGE_FROM: &str = "from credit_ledger l where l.org_id = $1 and l.dst = 'spent'";

async fn count(
    conn: &mut PgConnection,
    org_id: Uuid,
    kind: ReportKind,
) -> Result<i64, sqlx::Error> {
    let from = match kind {
        ReportKind::Members => MEMBERS_FROM,
        ReportKind::AuditLog => AUDIT_FROM,
        ReportKind::CreditUsage => CREDIT_USAGE_FROM,
    };
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("select count(*) {from}")))
        .bind(org_id)
        .fetch_one(conn)
        .await
}

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

type MemberRow = (Uuid, Option<String>, Option<String>, String, DateTime<Utc>);

async fn stream_members(
    conn: &mut PgConnection,
    pool: &PgPool,
    org_id: Uuid,
    id: Uuid,
    sink: &mut CsvSink,
) -> Result<(), JobError> {
    sink.header(ReportKind::Members.columns())?;
    let sql = format!(
        "select m.user_id, u.email, u.display_name, m.role, m.created_at {MEMBERS_FROM}
         order by m.created_at, m.user_id"
    );
    let mut rows = sqlx::query_as::<_, MemberRow>(sqlx::AssertSqlSafe(sql))
        .bind(org_id)
        .fetch(conn);
    while let Some((user_id, email, name, role, joined)) = rows.try_next().await? {
        sink.row(&[
            &user_id.to_string(),
            email.as_deref().unwrap_or(""),
            name.as_deref().unwrap_or(""),
            &role,
            &ts(joined),
        ])
        .await?;
        if sink.rows % PROGRESS_EVERY == 0 {
            progress(pool, org_id, id, sink.rows, None).await;
        }
    }
    Ok(())
}

type AuditRow = (
    Uuid,
    DateTime<Utc>,
    Option<Uuid>,
    String,
    String,
    Option<String>,
    Option<String>,
);

async fn stream_audit(
    conn: &mut PgConnection,
    pool: &PgPool,
    org_id: Uuid,
    id: Uuid,
    sink: &mut CsvSink,
) -> Result<(), JobError> {
    sink.header(ReportKind::AuditLog.columns())?;
    let sql = format!(
        "select a.id, a.created_at, a.actor_id, a.action, a.target_type, a.target_id, a.request_id
         {AUDIT_FROM} order by a.id"
    );
    let mut rows = sqlx::query_as::<_, AuditRow>(sqlx::AssertSqlSafe(sql))
        .bind(org_id)
        .fetch(conn);
    while let Some((aid, at, actor, action, target_type, target_id, request_id)) =
        rows.try_next().await?
    {
        sink.row(&[
            &aid.to_string(),
            &ts(at),
            &actor.map(|a| a.to_string()).unwrap_or_default(),
            &action,
            &target_type,
            target_id.as_deref().unwrap_or(""),
            request_id.as_deref().unwrap_or(""),
        ])
        .await?;
        if sink.rows % PROGRESS_EVERY == 0 {
            progress(pool, org_id, id, sink.rows, None).await;
        }
    }
    Ok(())
}

type UsageRow = (
    i64,
    DateTime<Utc>,
    Uuid,
    String,
    i64,
    Option<Uuid>,
    Option<Uuid>,
    Option<String>,
    Option<Uuid>,
    Option<Uuid>,
);

async fn stream_credit_usage(
    conn: &mut PgConnection,
    pool: &PgPool,
    org_id: Uuid,
    id: Uuid,
    sink: &mut CsvSink,
) -> Result<(), JobError> {
    sink.header(ReportKind::CreditUsage.columns())?;
    let sql = format!(
        "select l.id, l.effective_at, l.txn, l.kind, l.amount, l.grant_id, l.hold_id,
                l.description, l.actor_user_id, l.actor_api_key_id
         {CREDIT_USAGE_FROM} order by l.id"
    );
    let mut rows = sqlx::query_as::<_, UsageRow>(sqlx::AssertSqlSafe(sql))
        .bind(org_id)
        .fetch(conn);
    let opt = |u: Option<Uuid>| u.map(|u| u.to_string()).unwrap_or_default();
    while let Some((lid, at, txn, kind, amount, grant, hold, desc, user, key)) =
        rows.try_next().await?
    {
        sink.row(&[
            &lid.to_string(),
            &ts(at),
            &txn.to_string(),
            &kind,
            &amount.to_string(),
            &opt(grant),
            &opt(hold),
            desc.as_deref().unwrap_or(""),
            &opt(user),
            &opt(key),
        ])
        .await?;
        if sink.rows % PROGRESS_EVERY == 0 {
            progress(pool, org_id, id, sink.rows, None).await;
        }
    }
    Ok(())
}

/// A cell that a spreadsheet would read as a formula (`=`, `+`, `-`, `@`,
/// or a leading tab or carriage return) gets a leading `'`.
pub fn escape_cell(s: &str) -> Cow<'_, str> {
    match s.as_bytes().first() {
        Some(b'=' | b'+' | b'-' | b'@' | b'\t' | b'\r') => Cow::Owned(format!("'{s}")),
        _ => Cow::Borrowed(s),
    }
}

/// CSV rows into an object-store upload, in chunks of [`CHUNK_BYTES`].
struct CsvSink {
    csv: csv::Writer<Vec<u8>>,
    upload: BufWriter,
    rows: i64,
    bytes: u64,
}

fn csv_error(e: csv::Error) -> JobError {
    JobError::Retry(anyhow::Error::new(e).context("cannot write CSV"))
}

fn store_error(e: impl Into<anyhow::Error>) -> JobError {
    JobError::Retry(e.into().context("cannot upload the report"))
}

/// A CSV writer into a buffer of about one chunk.
fn new_csv() -> csv::Writer<Vec<u8>> {
    csv::Writer::from_writer(Vec::with_capacity(CHUNK_BYTES + 64 * 1024))
}

impl CsvSink {
    fn new(store: Arc<dyn ObjectStore>, path: Path) -> Self {
        CsvSink {
            csv: new_csv(),
            // 5 MiB parts (the smallest S3 accepts), at most two in flight:
            // memory stays bounded whatever the report's size.
            upload: BufWriter::with_capacity(store, path, 5 * 1024 * 1024).with_max_concurrency(2),
            rows: 0,
            bytes: 0,
        }
    }

    fn header(&mut self, columns: &[&str]) -> Result<(), JobError> {
        self.csv.write_record(columns).map_err(csv_error)
    }

    async fn row(&mut self, cells: &[&str]) -> Result<(), JobError> {
        self.csv
            .write_record(cells.iter().map(|c| escape_cell(c).into_owned()))
            .map_err(csv_error)?;
        self.rows += 1;
        if self.csv.get_ref().len() >= CHUNK_BYTES {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), JobError> {
        let full = std::mem::replace(&mut self.csv, new_csv());
        let chunk = full
            .into_inner()
            .map_err(|e| JobError::Retry(anyhow::anyhow!("cannot write CSV: {}", e.error())))?;
        if chunk.is_empty() {
            return Ok(());
        }
        self.bytes += chunk.len() as u64;
        self.upload
            .put(Bytes::from(chunk))
            .await
            .map_err(store_error)
    }

    /// Completes the upload; returns the rows and bytes written.
    async fn finish(mut self) -> Result<(i64, u64), JobError> {
        self.flush().await?;
        self.upload.shutdown().await.map_err(store_error)?;
        Ok((self.rows, self.bytes))
    }

    /// Drops a partial upload.
    async fn abort(mut self) {
        if let Err(e) = self.upload.abort().await {
            tracing::warn!(error = %e, "cannot abort the report upload");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formulas_are_escaped() {
        assert_eq!(escape_cell("=1+1"), "'=1+1");
        assert_eq!(escape_cell("+x"), "'+x");
        assert_eq!(escape_cell("-x"), "'-x");
        assert_eq!(escape_cell("@SUM(A1)"), "'@SUM(A1)");
        assert_eq!(escape_cell("ann@example.com"), "ann@example.com");
        assert_eq!(escape_cell(""), "");
    }

    #[test]
    fn kinds_round_trip() {
        for k in ReportKind::ALL {
            assert_eq!(ReportKind::parse(k.as_str()), Some(k));
        }
        assert_eq!(ReportKind::parse("nope"), None);
    }
}
