//! [`ImportError`]: what the imports domain answers when an import cannot
//! be started or read. The HTTP layer maps it to problems (`routes.rs`).

use super::file::FileError;
use crate::core::pagination::PageError;

/// Why an imports service refused, or failed.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The uploaded file is not an import file.
    #[error(transparent)]
    File(#[from] FileError),
    #[error(transparent)]
    Page(#[from] PageError),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error("import not found")]
    NotFound,
}
