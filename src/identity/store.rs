//! The identity server's account rows (`app.auth_accounts`): the `Account`
//! type, reading it by id or address, and acting as its user.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::PgConnection;
use uuid::Uuid;

use super::errors::AuthError;
use crate::core::validate::Email;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Account {
    pub user_id: Uuid,
    pub email: String,
    pub encrypted_password: Option<String>,
    pub email_confirmed_at: Option<DateTime<Utc>>,
    pub confirmation_sent_at: Option<DateTime<Utc>>,
    pub app_metadata: Value,
    pub user_metadata: Value,
    pub banned_until: Option<DateTime<Utc>>,
    pub last_sign_in_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub recovery_sent_at: Option<DateTime<Utc>>,
    /// The address a pending (unconfirmed) email change switches to.
    pub email_change: Option<String>,
    pub email_change_sent_at: Option<DateTime<Utc>>,
}

pub(super) const COLUMNS: &str = "user_id, email, encrypted_password, email_confirmed_at, \
     confirmation_sent_at, app_metadata, user_metadata, banned_until, last_sign_in_at, \
     created_at, updated_at, recovery_sent_at, email_change, email_change_sent_at";

impl Account {
    pub fn is_banned(&self) -> bool {
        self.banned_until.is_some_and(|t| t > Utc::now())
    }

    /// The GoTrue user object (`new_email`, `email_change_sent_at` and
    /// `recovery_sent_at` only when set, as GoTrue omits them).
    pub fn user_json(&self) -> Value {
        let mut user = json!({
            "id": self.user_id,
            "aud": "authenticated",
            "role": "authenticated",
            "email": self.email,
            "email_confirmed_at": self.email_confirmed_at,
            "phone": "",
            "confirmation_sent_at": self.confirmation_sent_at,
            "confirmed_at": self.email_confirmed_at,
            "last_sign_in_at": self.last_sign_in_at,
            "app_metadata": self.app_metadata,
            "user_metadata": self.user_metadata,
            "identities": [],
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "is_anonymous": false,
        });
        if let Some(e) = &self.email_change {
            user["new_email"] = json!(e);
        }
        if let Some(t) = self.email_change_sent_at {
            user["email_change_sent_at"] = json!(t);
        }
        if let Some(t) = self.recovery_sent_at {
            user["recovery_sent_at"] = json!(t);
        }
        user
    }
}

pub async fn by_id(conn: &mut PgConnection, id: Uuid) -> Result<Option<Account>, AuthError> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "select {COLUMNS} from app.auth_accounts where user_id = $1"
    )))
    .bind(id)
    .fetch_optional(conn)
    .await?)
}

pub(super) async fn by_email(
    conn: &mut PgConnection,
    email: &str,
) -> Result<Option<Account>, AuthError> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "select {COLUMNS} from app.auth_accounts where email = $1"
    )))
    .bind(email)
    .fetch_optional(conn)
    .await?)
}

/// Makes `user_id` the user of the transaction, for the `users` row (RLS).
pub(super) async fn act_as(conn: &mut PgConnection, user_id: Uuid) -> Result<(), AuthError> {
    sqlx::query("select set_config('app.user_id', $1, true)")
        .bind(user_id.to_string())
        .execute(conn)
        .await?;
    Ok(())
}

pub(super) fn parse_email(raw: &str) -> Result<String, AuthError> {
    Email::parse("email", raw)
        .map(|e| e.as_str().to_owned())
        .map_err(|_| AuthError::validation("Unable to validate email address: invalid format"))
}
