use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

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
    pub updated_at: DateTime<Utc>,
}
