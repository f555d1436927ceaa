//! SQL of member imports: the uploaded files (`import_files`) and the
//! per-line results (`import_rows`).

use serde::Serialize;
use sqlx::PgConnection;
use utoipa::ToSchema;
use uuid::Uuid;

/// What the job decided about one line.
#[derive(Debug, Clone, Serialize, ToSchema, sqlx::FromRow)]
pub struct ImportRow {
    /// Line of the file (the header is line 1).
    pub line: i32,
    /// The address as read (lowercased when valid).
    pub email: Option<String>,
    pub role: Option<String>,
    /// `invited`, `skipped` (already a member, an open invitation, a
    /// duplicate line) or `error` (invalid address or role, a role the
    /// requester may not grant).
    #[schema(example = "invited")]
    pub status: String,
    /// Why the line was skipped or failed.
    pub error: Option<String>,
    pub invitation_id: Option<Uuid>,
}

pub async fn list_rows(
    conn: &mut PgConnection,
    org_id: Uuid,
    job_id: Uuid,
    after: Option<i32>,
    limit: i64,
) -> Result<Vec<ImportRow>, sqlx::Error> {
    sqlx::query_as(
        "select line, email, role, status, error, invitation_id from import_rows
         where org_id = $1 and job_id = $2 and ($3::int is null or line > $3)
         order by line limit $4",
    )
    .bind(org_id)
    .bind(job_id)
    .bind(after)
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// The uploaded file of an import, while its job has not finished.
pub async fn read_file(
    conn: &mut PgConnection,
    org_id: Uuid,
    job_id: Uuid,
) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("select content from import_files where org_id = $1 and job_id = $2")
        .bind(org_id)
        .bind(job_id)
        .fetch_optional(conn)
        .await
}

pub async fn delete_file(
    conn: &mut PgConnection,
    org_id: Uuid,
    job_id: Uuid,
) -> Result<(), sqlx::Error> {
    sqlx::query("delete from import_files where org_id = $1 and job_id = $2")
        .bind(org_id)
        .bind(job_id)
        .execute(conn)
        .await?;
    Ok(())
}

/// Which of `lines` already have a result (a retried job skips them).
pub async fn decided_lines(
    conn: &mut PgConnection,
    org_id: Uuid,
    job_id: Uuid,
    lines: &[i32],
) -> Result<Vec<i32>, sqlx::Error> {
    sqlx::query_scalar(
        "select line from import_rows where org_id = $1 and job_id = $2 and line = any($3)",
    )
    .bind(org_id)
    .bind(job_id)
    .bind(lines)
    .fetch_all(conn)
    .await
}

/// Stores results; a line decided twice fails the statement (and so the
/// whole batch, invitations included).
pub async fn insert_rows(
    conn: &mut PgConnection,
    org_id: Uuid,
    job_id: Uuid,
    rows: &[ImportRow],
) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut lines = Vec::with_capacity(rows.len());
    let mut emails = Vec::with_capacity(rows.len());
    let mut roles = Vec::with_capacity(rows.len());
    let mut statuses = Vec::with_capacity(rows.len());
    let mut errors = Vec::with_capacity(rows.len());
    let mut invitations = Vec::with_capacity(rows.len());
    for r in rows {
        lines.push(r.line);
        emails.push(r.email.clone());
        roles.push(r.role.clone());
        statuses.push(r.status.clone());
        errors.push(r.error.clone());
        invitations.push(r.invitation_id);
    }
    sqlx::query(
        "insert into import_rows (org_id, job_id, line, email, role, status, error, invitation_id)
         select $1, $2, * from unnest($3::int[], $4::text[], $5::text[], $6::text[], $7::text[], $8::uuid[])",
    )
    .bind(org_id)
    .bind(job_id)
    .bind(&lines)
    .bind(&emails)
    .bind(&roles)
    .bind(&statuses)
    .bind(&errors)
    .bind(&invitations)
    .execute(conn)
    .await?;
    Ok(())
}

/// Lines per status: `(invited, skipped, errors)`.
pub async fn status_counts(
    conn: &mut PgConnection,
    org_id: Uuid,
    job_id: Uuid,
) -> Result<(i64, i64, i64), sqlx::Error> {
    sqlx::query_as(
        "select count(*) filter (where status = 'invited'),
                count(*) filter (where status = 'skipped'),
                count(*) filter (where status = 'error')
         from import_rows where org_id = $1 and job_id = $2",
    )
    .bind(org_id)
    .bind(job_id)
    .fetch_one(conn)
    .await
}
