//! Shapes of the credit API.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

/// Largest amount one operation may move (a trillion credits).
pub const MAX_AMOUNT: i64 = 1_000_000_000_000;
/// Longest and default life of a hold.
pub const MAX_HOLD_SECS: i64 = 7 * 24 * 3600;
pub const DEFAULT_HOLD_SECS: i64 = 15 * 60;
pub const MAX_DESCRIPTION: usize = 500;

/// Where a grant's credits came from.
pub const SOURCES: [&str; 4] = ["plan_period", "purchase", "promotion", "adjustment"];

/// The org's credits now (or at `as_of`, for `?at=`).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Credits {
    /// Credits left to spend: the grants' remainders, less any overage
    /// (negative only when the plan allows overage).
    pub balance: i64,
    /// Credits reserved by open holds (not part of `balance`).
    pub held: i64,
    /// How far below zero the plan lets the balance go.
    pub overage_limit: i64,
    /// The instant these figures are for.
    pub as_of: DateTime<Utc>,
    /// Grants with credit left, in spending order (empty for a past `at`).
    pub grants: Vec<Grant>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct Grant {
    pub id: Uuid,
    /// `plan_period`, `purchase`, `promotion` or `adjustment`.
    pub source: String,
    pub amount: i64,
    pub remaining: i64,
    /// Higher priorities are spent first.
    pub priority: i32,
    pub expires_at: Option<DateTime<Utc>>,
    pub description: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// One line of the double-entry ledger: `amount` moved from account `from`
/// to account `to` (`issued`, `available`, `overage`, `held`, `spent`, `expired`).
#[derive(Debug, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct LedgerLine {
    pub id: i64,
    /// The operation this line belongs to (a spend drawing two grants has two lines).
    pub transaction_id: Uuid,
    /// `grant`, `spend`, `hold`, `capture`, `release`, `expire` or `settle`.
    pub kind: String,
    pub from: String,
    pub to: String,
    pub amount: i64,
    pub grant_id: Option<Uuid>,
    pub hold_id: Option<Uuid>,
    /// When the movement counts (an expiry counts from the instant it ran out).
    pub effective_at: DateTime<Utc>,
    pub recorded_at: DateTime<Utc>,
    pub description: Option<String>,
    pub actor_user_id: Option<Uuid>,
    pub actor_api_key_id: Option<Uuid>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CreditsQuery {
    /// An instant in the past (RFC 3339): the balance and holds then.
    pub at: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SpendCredits {
    /// Credits to spend, 1 to 10^12.
    #[schema(example = 5)]
    pub amount: i64,
    #[schema(example = "image render")]
    pub description: Option<String>,
}

/// How much of an operation each grant paid (`grant_id` null: overage).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Draw {
    pub grant_id: Option<Uuid>,
    pub amount: i64,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Spent {
    /// The ledger transaction.
    pub id: Uuid,
    pub amount: i64,
    pub description: Option<String>,
    pub drawn: Vec<Draw>,
    /// The balance after this spend.
    pub balance: i64,
    pub held: i64,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateHold {
    /// Credits to reserve, 1 to 10^12.
    pub amount: i64,
    /// Seconds until the hold is released on its own (default 900, at most 7 days).
    pub ttl_seconds: Option<i64>,
    pub description: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CaptureHold {
    /// Credits to spend out of the hold (default: all of it); the rest is released.
    pub amount: Option<i64>,
    pub description: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct Hold {
    pub id: Uuid,
    pub amount: i64,
    pub captured: i64,
    /// `open`, `captured`, `released` or `expired`.
    pub status: String,
    pub description: Option<String>,
    pub expires_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub closed_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct HoldResult {
    pub hold: Hold,
    /// The grants the hold reserved from (on creation only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drawn: Option<Vec<Draw>>,
    pub balance: i64,
    pub held: i64,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateGrant {
    /// Credits to grant, 1 to 10^12.
    pub amount: i64,
    /// `plan_period`, `purchase`, `promotion` or `adjustment`.
    #[schema(example = "promotion")]
    pub source: String,
    /// -1000 to 1000 (default 0); higher is spent first.
    pub priority: Option<i32>,
    /// When the rest of the grant expires; never, when absent.
    pub expires_at: Option<DateTime<Utc>>,
    pub description: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Granted {
    pub grant: Grant,
    pub balance: i64,
    pub held: i64,
}
