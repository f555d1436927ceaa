//! What reports can refuse or fail with: asking for a kind without its
//! permission, a report that is missing, not built yet or whose file is
//! gone, a report store that cannot be read, a requester who may no longer
//! have the report built, and the shared input, page and database errors.

use crate::auth::Permission;
use crate::core::error::Invalid;
use crate::core::pagination::PageError;

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error(transparent)]
    Page(#[from] PageError),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    /// A kind of report that needs a permission the caller lacks.
    #[error("a {kind} report needs {}", .permission.as_str())]
    KindNeeds {
        kind: &'static str,
        permission: Permission,
    },
    /// No such report in the org.
    #[error("report not found")]
    NotFound,
    /// The report has not succeeded (yet).
    #[error("the report has not been built yet; see its state")]
    NotReady,
    /// The report was built, but its file is no longer in the store.
    #[error("the report file no longer exists")]
    FileMissing,
    /// The report store failed.
    #[error("cannot read the report")]
    Store(#[source] object_store::Error),
}
