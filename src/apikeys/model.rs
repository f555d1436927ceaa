//! Request and response types of API keys.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// An API key as listed: never its secret.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct ApiKey {
    pub id: Uuid,
    pub name: String,
    /// The role the key acts with (never `owner`).
    #[schema(example = "member")]
    pub role: String,
    /// The first 12 characters of the key, to tell keys apart.
    #[schema(example = "tnt_Ab12Cd34")]
    pub prefix: String,
    pub created_by: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    /// When the key was last used (updated at most once a minute).
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A new API key; `key` is shown only here, once.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreatedApiKey {
    pub id: Uuid,
    pub name: String,
    pub role: String,
    pub prefix: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    /// The secret key (`tnt_...`), for `Authorization: Bearer`; stored only as a hash.
    pub key: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateApiKey {
    /// 1-100 characters.
    #[schema(example = "CI deploys")]
    pub name: String,
    /// A role of this org other than `owner`, with no permission the caller lacks.
    #[schema(example = "member")]
    pub role: String,
    /// When the key stops working (in the future); none: it works until revoked.
    pub expires_at: Option<DateTime<Utc>>,
}
