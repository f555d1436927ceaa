//! Business rules of member imports: the record, file and job created in
//! one transaction, and the imports with their per-line results.

use serde::Serialize;
use serde_json::json;
use utoipa::ToSchema;
use uuid::Uuid;

use super::error::ImportError;
use super::file::parse;
use super::job::ImportMembers;
use super::repo::{ImportRow, list_rows};
use crate::core::db::TenantTx;
use crate::core::pagination::{Page, PageQuery};
use crate::jobs::records::{self, JobRecord};

/// The `kind` of every import record.
pub const RECORD_KIND: &str = "import";

/// Writes the record, the file and the job in the caller's transaction.
pub async fn create_import(tx: &mut TenantTx, body: &[u8]) -> Result<JobRecord, ImportError> {
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
pub async fn list_imports(
    tx: &mut TenantTx,
    q: &PageQuery,
) -> Result<Page<JobRecord>, ImportError> {
    records::page(tx, RECORD_KIND, q).await
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
) -> Result<ImportDetail, ImportError> {
    let limit = q.limit()?;
    let after: Option<i32> = q.after()?;
    let org_id = tx.org_id();
    let record = records::get(tx.conn(), org_id, RECORD_KIND, id)
        .await?
        .ok_or(ImportError::NotFound)?;
    let rows = list_rows(tx.conn(), org_id, id, after, limit + 1).await?;
    let page = Page::from_rows(rows, limit, |r| r.line);
    Ok(ImportDetail {
        record,
        rows: page.data,
        next_cursor: page.next_cursor,
    })
}
