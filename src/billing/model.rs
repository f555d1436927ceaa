use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// The code of the plan every org starts on, and falls back to when a
/// subscription is canceled.
pub const FREE_PLAN: &str = "free";

/// A plan of the catalog.
#[derive(Debug, Clone, Serialize, ToSchema, sqlx::FromRow)]
pub struct Plan {
    #[schema(example = "pro")]
    pub code: String,
    #[schema(example = "Pro")]
    pub name: String,
    /// Price per interval in the currency's minor unit (cents).
    #[schema(example = 2900)]
    pub price_minor: i64,
    #[schema(example = "USD")]
    pub currency: String,
    /// `month` or `year`.
    #[schema(example = "month")]
    pub interval: String,
    pub trial_days: i32,
    /// Credits granted at the start of each period.
    pub credits_per_period: i64,
    /// Most members an org on this plan may have; absent: no limit.
    pub seat_limit: Option<i32>,
    /// Feature limits (a null limit: unlimited).
    #[schema(value_type = Object)]
    pub features: serde_json::Value,
    /// How far below zero the credit balance of an org on this plan may go
    /// (0: no overage).
    pub credit_overage_limit: i64,
    pub updated_at: DateTime<Utc>,
}

impl Plan {
    /// Seats as a number that compares: no limit is more than any limit.
    pub fn seats(&self) -> i64 {
        self.seat_limit.map(i64::from).unwrap_or(i64::MAX)
    }

    /// The end of a period of this plan that starts at `start`.
    pub fn period_end(&self, start: DateTime<Utc>) -> DateTime<Utc> {
        let months = if self.interval == "year" { 12 } else { 1 };
        start
            .checked_add_months(chrono::Months::new(months))
            .unwrap_or(start + chrono::Duration::days(30 * months as i64))
    }
}

/// A plan as platform admins see it: the catalog entry with its state.
#[derive(Debug, Clone, Serialize, ToSchema, sqlx::FromRow)]
pub struct AdminPlan {
    #[serde(flatten)]
    #[sqlx(flatten)]
    pub plan: Plan,
    /// Inactive plans are hidden from the catalog and cannot be chosen;
    /// orgs already on them keep them.
    pub active: bool,
    /// Position in the catalog (ascending).
    pub sort_order: i32,
    pub created_at: DateTime<Utc>,
}

/// A plan as `PUT /api/v1/admin/plans/{code}` (and `tenantry admin plans
/// set`) creates or replaces it.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanInput {
    /// 1-100 characters.
    #[schema(example = "Pro")]
    pub name: String,
    /// Price per interval in the currency's minor unit, >= 0.
    #[schema(example = 2900)]
    pub price_minor: i64,
    /// ISO 4217 code in capitals.
    #[schema(example = "USD")]
    pub currency: String,
    /// `month` or `year`.
    #[schema(example = "month")]
    pub interval: String,
    /// 0-365 (default 0).
    #[serde(default)]
    pub trial_days: i32,
    /// Credits granted each period, >= 0 (default 0).
    #[serde(default)]
    pub credits_per_period: i64,
    /// >= 1, or null for no limit (the default).
    #[serde(default)]
    pub seat_limit: Option<i32>,
    /// An object of feature limits: each a non-negative integer, a boolean,
    /// or null (unlimited). Default `{}`.
    #[serde(default = "empty_object")]
    #[schema(value_type = Object)]
    pub features: serde_json::Value,
    /// >= 0 (default 0: no overage).
    #[serde(default)]
    pub credit_overage_limit: i64,
    /// Default true.
    #[serde(default = "yes")]
    pub active: bool,
    /// Default 0.
    #[serde(default)]
    pub sort_order: i32,
}

fn empty_object() -> serde_json::Value {
    serde_json::json!({})
}

fn yes() -> bool {
    true
}

/// An org's subscription as stored.
#[derive(Debug, Clone, Serialize, ToSchema, sqlx::FromRow)]
pub struct Subscription {
    pub org_id: Uuid,
    #[schema(example = "pro")]
    pub plan_code: String,
    /// `trialing`, `active`, `past_due`, `canceled` or `incomplete`.
    #[schema(example = "active")]
    pub status: String,
    pub current_period_start: DateTime<Utc>,
    pub current_period_end: DateTime<Utc>,
    pub trial_end: Option<DateTime<Utc>>,
    /// The subscription ends (back to the free plan) at the end of the period.
    pub cancel_at_period_end: bool,
    pub canceled_at: Option<DateTime<Utc>>,
    /// A downgrade that takes effect at the end of the period.
    pub pending_plan_code: Option<String>,
    /// `manual` or `stripe`.
    pub provider: String,
    pub provider_subscription_id: Option<String>,
    /// Whether the org has had a trial (one per org).
    pub trial_used: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The subscription with its plan and the pending plan embedded.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SubscriptionView {
    #[serde(flatten)]
    pub subscription: Subscription,
    pub plan: Plan,
    pub pending_plan: Option<Plan>,
}

/// `PUT /api/v1/orgs/{org_id}/subscription`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangePlan {
    /// The code of an active plan.
    #[schema(example = "pro")]
    pub plan: String,
}

/// What an org may do now, by its plan and the state of its subscription.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Entitlements {
    /// The plan whose entitlements apply (`free` for a canceled subscription).
    #[schema(example = "pro")]
    pub plan: String,
    /// The subscription's status.
    #[schema(example = "active")]
    pub status: String,
    /// Most seats (members and open invitations); null: no limit.
    pub seat_limit: Option<i32>,
    /// Members plus open invitations.
    pub seats_used: i64,
    #[schema(value_type = Object)]
    pub features: serde_json::Value,
    pub credits_per_period: i64,
    pub credit_overage_limit: i64,
}
