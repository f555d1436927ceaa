//! What a credit operation can refuse or fail with: the ledger's own
//! refusals (insufficient credits, a hold that is gone, expired or closed,
//! an idempotency key in use or reused), the spend queue being full, and
//! the shared input, page and database errors.

use serde::Deserialize;

use crate::core::db::MembershipRow;
use crate::core::error::{DbTrouble, Invalid};
use crate::core::pagination::PageError;

#[derive(Debug, thiserror::Error)]
pub enum CreditError {
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error(transparent)]
    Page(#[from] PageError),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    /// `?at=` in the future or before 1970.
    #[error("`at` must be an instant between 1970 and now")]
    InvalidAt,
    /// The balance (with the plan's overage) does not cover the amount; the
    /// ledger says by how much when it can.
    #[error(
        "insufficient credits{}",
        .0.map(|s| format!(": {s}")).unwrap_or_default()
    )]
    InsufficientCredits(Option<Shortfall>),
    /// No such hold in the org.
    #[error("hold not found")]
    HoldNotFound,
    /// The hold expired before it was captured or released.
    #[error("{0}")]
    HoldExpired(String),
    /// The hold was captured or released already.
    #[error("{0}")]
    HoldClosed(String),
    /// A capture of more than the hold holds.
    #[error("{0}")]
    ExceedsHold(String),
    /// Another request with the same idempotency key is still running.
    #[error("{0}")]
    KeyInUse(String),
    /// The idempotency key was used for another request.
    #[error("{0}")]
    KeyReused(String),
    /// Too many spends are queued in this process.
    #[error("too many spends are waiting; retry shortly")]
    SpendQueueFull,
    /// The spend batch met a passing database condition (busy, a deadlock
    /// between batches, the database unreachable): retry.
    #[error("the spend batch met {0:?} database trouble")]
    SpendBatchTrouble(DbTrouble),
    /// The spend statement refused the caller: `Some` is the membership it
    /// read (a role without the permission), `None` no membership or no live
    /// key. The HTTP layer answers it with the caller's own authorisation
    /// rules (`OrgCall::refused`).
    #[error("the caller may not spend the org's credits")]
    SpendRefused(Option<MembershipRow>),
    /// A fault of the ledger functions or the spend batcher (a bug, not a
    /// refusal).
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// What a spend or hold was short of, as the ledger reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Shortfall {
    /// The balance, overage included.
    pub balance: i64,
    pub requested: i64,
    pub overage_limit: i64,
}

impl std::fmt::Display for Shortfall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the balance is {}, {} requested (overage limit {})",
            self.balance, self.requested, self.overage_limit
        )
    }
}
