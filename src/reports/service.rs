//! Business rules of reports: what may be asked for, the record and job of a
//! request (created in one transaction), and access to the built file.

use bytes::Bytes;
use futures_util::stream::BoxStream;
use object_store::ObjectStore;
use serde::Deserialize;
use serde_json::json;
use utoipa::ToSchema;
use uuid::Uuid;

use super::build::{self, BuildReport, ReportKind};
use super::error::ReportError;
use crate::auth::rbac::PermSet;
use crate::core::db::TenantTx;
use crate::core::error::FieldError;
use crate::core::pagination::{Page, PageQuery};
use crate::core::validate::Fields;
use crate::jobs::records::{self, JobRecord, JobState};

/// The `kind` of every report record.
pub const RECORD_KIND: &str = "report";

/// Formats a report can be built in.
pub const FORMATS: [&str; 1] = ["csv"];

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateReport {
    /// `members`, `audit_log` (also needs `audit:read`) or `credit_usage`
    /// (also needs `credits:read`).
    #[schema(example = "members")]
    pub kind: String,
    /// `csv` (the default and only format).
    #[schema(example = "csv")]
    pub format: Option<String>,
}

/// Validates the request, checks the extra permission of its kind, and
/// writes the record and its job in the caller's transaction.
pub async fn create_report(
    tx: &mut TenantTx,
    perms: PermSet,
    input: CreateReport,
) -> Result<JobRecord, ReportError> {
    let mut f = Fields::default();
    let kind = f.check(ReportKind::parse(&input.kind).ok_or_else(|| {
        FieldError::new(
            "kind",
            "unknown_kind",
            format!(
                "must be one of: {}",
                ReportKind::ALL.map(|k| k.as_str()).join(", ")
            ),
        )
    }));
    let format = input.format.as_deref().unwrap_or("csv");
    f.check(if FORMATS.contains(&format) {
        Ok(())
    } else {
        Err(FieldError::new(
            "format",
            "unsupported_format",
            format!("must be one of: {}", FORMATS.join(", ")),
        ))
    });
    f.finish()?;
    let kind = kind.expect("checked");
    if let Some(p) = kind.extra_permission()
        && !perms.contains(p)
    {
        return Err(ReportError::KindNeeds {
            kind: kind.as_str(),
            permission: p,
        });
    }
    let params = json!({ "kind": kind.as_str(), "format": format });
    let job = BuildReport {
        org_id: tx.org_id(),
        requested_by: tx.user_id(),
        kind,
    };
    let record = records::start(tx, RECORD_KIND, &params, &job).await?;
    Ok(record)
}

/// The org's reports, newest first.
pub async fn list_reports(
    tx: &mut TenantTx,
    q: &PageQuery,
) -> Result<Page<JobRecord>, ReportError> {
    records::page(tx, RECORD_KIND, q).await
}

pub async fn get_report(tx: &mut TenantTx, id: Uuid) -> Result<JobRecord, ReportError> {
    let org_id = tx.org_id();
    records::get(tx.conn(), org_id, RECORD_KIND, id)
        .await?
        .ok_or(ReportError::NotFound)
}

/// A built report, ready to stream.
pub struct Download {
    pub filename: String,
    pub content_type: String,
    pub size: u64,
    pub body: BoxStream<'static, object_store::Result<Bytes>>,
}

/// Opens the file of a succeeded report (not ready before).
pub async fn open_download(
    store: &dyn ObjectStore,
    org_id: Uuid,
    record: &JobRecord,
) -> Result<Download, ReportError> {
    if record.state != JobState::Succeeded {
        return Err(ReportError::NotReady);
    }
    let result = record.result.as_ref();
    let path = result
        .and_then(|r| r["path"].as_str())
        .map(object_store::path::Path::from)
        .unwrap_or_else(|| build::object_path(org_id, record.id));
    // The stored path is the job's own; never follow one outside the org.
    if !path.as_ref().starts_with(&format!("reports/{org_id}/")) {
        return Err(ReportError::NotFound);
    }
    let content_type = result
        .and_then(|r| r["content_type"].as_str())
        .unwrap_or(build::CONTENT_TYPE)
        .to_owned();
    let kind = record.params["kind"].as_str().unwrap_or("report");
    let got = match store.get(&path).await {
        Ok(g) => g,
        Err(object_store::Error::NotFound { .. }) => return Err(ReportError::FileMissing),
        Err(e) => return Err(ReportError::Store(e)),
    };
    Ok(Download {
        filename: format!("{kind}-{}.csv", record.id),
        content_type,
        size: got.meta.size,
        body: got.into_stream(),
    })
}
