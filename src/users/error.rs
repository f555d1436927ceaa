//! [`UserError`]: what the users domain answers when a profile cannot be
//! read or changed. The HTTP layer maps it to problems (`routes.rs`).

use crate::core::error::Invalid;
use crate::core::pagination::PageError;

/// Why a users service refused, or failed.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error(transparent)]
    Page(#[from] PageError),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    /// The signed-in user has no profile (it was just provisioned, so a bug
    /// or a concurrent deletion).
    #[error("user not found")]
    NotFound,
}
