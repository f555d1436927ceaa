//! Business rules of member imports: the file's format (checked when it is
//! uploaded and read again by the job), the record, file and job created in
//! one transaction, and the per-line results.

use axum::http::StatusCode;
use serde::Serialize;
use serde_json::json;
use sqlx::PgConnection;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::core::db::TenantTx;
use crate::core::error::ApiError;
use crate::core::pagination::{Page, PageQuery};
use crate::jobs::records::{self, JobRecord};
use crate::jobs::tasks::import::ImportMembers;

/// The `kind` of every import record.
pub const RECORD_KIND: &str = "import";

/// Most data lines one file may hold.
pub const MAX_ROWS: usize = 10_000;

/// The header every file starts with (case and surrounding spaces aside).
pub const HEADER: [&str; 2] = ["email", "role"];

/// One data line of a file: its line number (the header is line 1) and its
/// fields, trimmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsvLine {
    pub line: i32,
    pub fields: Vec<String>,
}

fn invalid(code: &'static str, detail: impl Into<String>) -> ApiError {
    ApiError::Status {
        status: StatusCode::UNPROCESSABLE_ENTITY,
        code,
        detail: detail.into(),
    }
}

/// Parses an import file: UTF-8 (a leading BOM is dropped), CSV, the header
/// `email,role`, then 1 to [`MAX_ROWS`] data lines. Blank lines are ignored;
/// a line with the wrong number of fields is kept (it fails on its own).
pub fn parse(bytes: &[u8]) -> Result<Vec<CsvLine>, ApiError> {
    let text = std::str::from_utf8(bytes)
        .map_err(|e| invalid("invalid_csv", format!("the file is not UTF-8 text: {e}")))?;
    if text.contains('\0') {
        return Err(invalid("invalid_csv", "the file contains a NUL character"));
    }
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let mut records = reader.records();
    let header = loop {
        match records.next() {
            None => {
                return Err(invalid(
                    "invalid_header",
                    "the file is empty; its first line must be the header email,role",
                ));
            }
            Some(Err(e)) => return Err(invalid("invalid_csv", format!("not CSV: {e}"))),
            Some(Ok(r)) if r.iter().all(str::is_empty) => continue,
            Some(Ok(r)) => break r,
        }
    };
    let names: Vec<String> = header.iter().map(|h| h.trim().to_lowercase()).collect();
    if names != HEADER {
        return Err(invalid(
            "invalid_header",
            format!(
                "the first line must be the header email,role (found {:?})",
                header.iter().collect::<Vec<_>>().join(",")
            ),
        ));
    }
    let mut lines = Vec::new();
    for record in records {
        let record = record.map_err(|e| invalid("invalid_csv", format!("not CSV: {e}")))?;
        if record.iter().all(str::is_empty) {
            continue;
        }
        if lines.len() == MAX_ROWS {
            return Err(invalid(
                "too_many_rows",
                format!("a file may hold at most {MAX_ROWS} lines besides the header"),
            ));
        }
        let line = line_of(text, &record);
        lines.push(CsvLine {
            line,
            fields: record.iter().map(str::to_owned).collect(),
        });
    }
    if lines.is_empty() {
        return Err(invalid(
            "no_rows",
            "the file has a header but no lines to import",
        ));
    }
    Ok(lines)
}

/// The line a record starts on (the header is line 1). The reader reports a
/// record after blank lines at the first of them: those are counted here.
fn line_of(text: &str, record: &csv::StringRecord) -> i32 {
    let Some(p) = record.position() else {
        return 0;
    };
    let mut line = p.line();
    for b in text.as_bytes().iter().skip(p.byte() as usize) {
        match b {
            b'\n' => line += 1,
            b'\r' => {}
            _ => break,
        }
    }
    i32::try_from(line).unwrap_or(i32::MAX)
}

/// Writes the record, the file and the job in the caller's transaction.
pub async fn create_import(tx: &mut TenantTx, body: &[u8]) -> Result<JobRecord, ApiError> {
    let lines = parse(body)?;
    let content = std::str::from_utf8(body).expect("parse checked UTF-8");
    let params = json!({ "rows": lines.len(), "bytes": body.len() });
    let job = ImportMembers {
        org_id: tx.org_id(),
        requested_by: tx.user_id(),
    };
    let record = records::start(tx, RECORD_KIND, &params, &job).await?;
    sqlx::query("insert into import_files (org_id, job_id, content) values ($1, $2, $3)")
        .bind(tx.org_id())
        .bind(record.id)
        .bind(content)
        .execute(tx.conn())
        .await?;
    Ok(record)
}

/// The org's imports, newest first.
pub async fn list_imports(tx: &mut TenantTx, q: &PageQuery) -> Result<Page<JobRecord>, ApiError> {
    records::page(tx, RECORD_KIND, q).await
}

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

/// An import with one page of its per-line results, in line order.
#[derive(Debug, Serialize, ToSchema)]
pub struct ImportDetail {
    #[serde(flatten)]
    pub record: JobRecord,
    /// Results decided so far, by line; `limit`/`cursor` page through them.
    pub rows: Vec<ImportRow>,
    /// Pass as `cursor` for the next page of `rows`; absent on the last.
    pub next_cursor: Option<String>,
}

pub async fn get_import(
    tx: &mut TenantTx,
    id: Uuid,
    q: &PageQuery,
) -> Result<ImportDetail, ApiError> {
    let limit = q.limit()?;
    let after: Option<i32> = q.after()?;
    let org_id = tx.org_id();
    let record = records::get(tx.conn(), org_id, RECORD_KIND, id)
        .await?
        .ok_or(ApiError::NotFound("import"))?;
    let rows = list_rows(tx.conn(), org_id, id, after, limit + 1).await?;
    let page = Page::from_rows(rows, limit, |r| r.line);
    Ok(ImportDetail {
        record,
        rows: page.data,
        next_cursor: page.next_cursor,
    })
}

// ---------------------------------------------------------------- storage

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

#[cfg(test)]
mod tests {
    use super::*;

    fn code(e: ApiError) -> &'static str {
        match e {
            ApiError::Status { code, .. } => code,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn files_are_checked_up_front() {
        let lines = parse(
            b"\xef\xbb\xbf Email , ROLE \r\na@x.io,member\n\n\r\nb@x.io , admin ,x\n\"c\n@x.io\",viewer\n  \nd@x.io,member",
        )
        .unwrap();
        let line = |line: i32, fields: &[&str]| CsvLine {
            line,
            fields: fields.iter().map(|f| f.to_string()).collect(),
        };
        assert_eq!(
            lines,
            vec![
                line(2, &["a@x.io", "member"]),
                line(5, &["b@x.io", "admin", "x"]),
                line(6, &["c\n@x.io", "viewer"]),
                line(9, &["d@x.io", "member"]),
            ]
        );
        assert_eq!(code(parse(b"").unwrap_err()), "invalid_header");
        assert_eq!(
            code(parse(b"mail,role\na@x.io,member").unwrap_err()),
            "invalid_header"
        );
        assert_eq!(
            code(parse(b"email,role,extra\n").unwrap_err()),
            "invalid_header"
        );
        assert_eq!(code(parse(b"email,role\n").unwrap_err()), "no_rows");
        assert_eq!(
            code(parse(b"email,role\n\xff,member").unwrap_err()),
            "invalid_csv"
        );
        assert_eq!(
            code(parse(b"email,role\na\0@x.io,member").unwrap_err()),
            "invalid_csv"
        );
        let mut big = String::from("email,role\n");
        for i in 0..=MAX_ROWS {
            big.push_str(&format!("u{i}@x.io,member\n"));
        }
        assert_eq!(code(parse(big.as_bytes()).unwrap_err()), "too_many_rows");
    }
}
