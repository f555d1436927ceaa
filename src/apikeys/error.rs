//! [`ApiKeyError`]: what the API keys domain answers when a key cannot be
//! made or revoked. The HTTP layer maps it to problems (`routes.rs`).

use crate::core::error::Invalid;
use crate::core::pagination::PageError;
use crate::organizations::error::OrgError;

/// Why an API keys service refused, or failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiKeyError {
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error(transparent)]
    Page(#[from] PageError),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    /// Reading the org's roles failed (organizations).
    #[error(transparent)]
    Orgs(#[from] OrgError),
    /// No key acts as an owner.
    #[error("an API key cannot have the owner role")]
    OwnerRole,
    /// The role holds permissions the caller does not hold.
    #[error("you cannot create a key with a role holding permissions you do not hold")]
    PermissionsNotHeld,
    #[error("an organization may hold at most {limit} live API keys")]
    KeyLimitReached { limit: i64 },
    #[error("API key not found")]
    NotFound,
}
