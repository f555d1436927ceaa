//! Accounts: sign-up, password sign-in and changes to the signed-in user,
//! kept in `app.auth_accounts` beside the `users` profile row.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};
use sqlx::PgConnection;
use uuid::Uuid;

use super::errors::AuthError;
use super::sessions::{self, Caller, Origin, begin, sha256};
use crate::app::AppState;
use crate::auth::password::{self, PasswordError};
use crate::core::ratelimit::{Decision, Quota};
use crate::core::validate::Email;
use crate::jobs::tasks::email::SendEmail;
use crate::mail::templates::Template;

/// Sign-in attempts per email address, and per client IP.
pub const LOGIN_PER_EMAIL: Quota = Quota::per_minute(10);
pub const LOGIN_PER_IP: Quota = Quota::per_minute(30);
/// Lifetime of an email confirmation link.
const CONFIRMATION_TTL_HOURS: i64 = 24;
/// Least time between two confirmation emails to one address.
const CONFIRMATION_RESEND_SECS: i64 = 60;

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
}

const COLUMNS: &str = "user_id, email, encrypted_password, email_confirmed_at, confirmation_sent_at, \
     app_metadata, user_metadata, banned_until, last_sign_in_at, created_at, updated_at";

impl Account {
    pub fn is_banned(&self) -> bool {
        self.banned_until.is_some_and(|t| t > Utc::now())
    }

    /// The GoTrue user object.
    pub fn user_json(&self) -> Value {
        json!({
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
        })
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

async fn by_email(conn: &mut PgConnection, email: &str) -> Result<Option<Account>, AuthError> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "select {COLUMNS} from app.auth_accounts where email = $1"
    )))
    .bind(email)
    .fetch_optional(conn)
    .await?)
}

/// Makes `user_id` the user of the transaction, for the `users` row (RLS).
async fn act_as(conn: &mut PgConnection, user_id: Uuid) -> Result<(), AuthError> {
    sqlx::query("select set_config('app.user_id', $1, true)")
        .bind(user_id.to_string())
        .execute(conn)
        .await?;
    Ok(())
}

fn parse_email(raw: &str) -> Result<String, AuthError> {
    Email::parse("email", raw)
        .map(|e| e.as_str().to_owned())
        .map_err(|_| AuthError::validation("Unable to validate email address: invalid format"))
}

fn check_new_password(password: &str) -> Result<(), AuthError> {
    match password::check_policy(password) {
        Ok(()) => Ok(()),
        Err(PasswordError::Weak { .. }) => Err(AuthError::weak_password(format!(
            "Password should be at least {} characters.",
            password::MIN_PASSWORD_CHARS
        ))),
        Err(PasswordError::TooLong) => Err(AuthError::unprocessable(
            "validation_failed",
            format!(
                "Password cannot be longer than {} bytes",
                password::MAX_PASSWORD_BYTES
            ),
        )),
        Err(e) => Err(AuthError::internal(e)),
    }
}

async fn hash(state: &AppState, password: &str) -> Result<String, AuthError> {
    state
        .hasher
        .hash(password)
        .await
        .map_err(AuthError::internal)
}

fn user_metadata(data: Option<Value>) -> Result<Value, AuthError> {
    match data {
        None | Some(Value::Null) => Ok(json!({})),
        Some(Value::Object(m)) => Ok(Value::Object(m)),
        Some(_) => Err(AuthError::bad_request(
            "bad_json",
            "Could not parse request body as JSON: data must be an object",
        )),
    }
}

/// `POST /signup`.
pub async fn signup(
    state: &AppState,
    email: &str,
    password: &str,
    data: Option<Value>,
    origin: &Origin,
) -> Result<Value, AuthError> {
    let auth = &state.config.auth;
    if auth.disable_signup {
        return Err(AuthError::unprocessable(
            "signup_disabled",
            "Signups not allowed for this instance",
        ));
    }
    if email.trim().is_empty() {
        return Err(AuthError::validation(
            "To signup, please provide your email",
        ));
    }
    let email = parse_email(email)?;
    if password.is_empty() {
        return Err(AuthError::validation("Signup requires a valid password"));
    }
    check_new_password(password)?;
    let metadata = user_metadata(data)?;
    // Hash before the transaction: it is slow, and every path pays for it.
    let phc = hash(state, password).await?;

    let mut tx = begin(&state.pool).await?;
    if let Some(existing) = by_email(&mut tx, &email).await? {
        if auth.autoconfirm || existing.email_confirmed_at.is_some() {
            tx.rollback().await?;
            if auth.autoconfirm {
                return Err(AuthError::unprocessable(
                    "user_already_exists",
                    "User already registered",
                ));
            }
            // No enumeration: the answer looks like a fresh sign-up.
            return Ok(fake_user(&email, metadata));
        }
        // Not confirmed yet: send the confirmation again (at most once a minute).
        let recent = existing
            .confirmation_sent_at
            .is_some_and(|t| (Utc::now() - t).num_seconds() < CONFIRMATION_RESEND_SECS);
        let account = if recent {
            existing
        } else {
            send_confirmation(state, &mut tx, &existing).await?
        };
        tx.commit().await?;
        return Ok(account.user_json());
    }

    let user_id = Uuid::new_v4();
    act_as(&mut tx, user_id).await?;
    sqlx::query("insert into users (id, email) values ($1, $2)")
        .bind(user_id)
        .bind(&email)
        .execute(&mut *tx)
        .await?;
    let inserted = sqlx::query_as::<_, Account>(sqlx::AssertSqlSafe(format!(
        "insert into app.auth_accounts (user_id, email, encrypted_password, user_metadata,
                                        email_confirmed_at)
         values ($1, $2, $3, $4, case when $5 then now() end)
         on conflict (email) do nothing
         returning {COLUMNS}"
    )))
    .bind(user_id)
    .bind(&email)
    .bind(&phc)
    .bind(&metadata)
    .bind(auth.autoconfirm)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(account) = inserted else {
        // A concurrent sign-up of the same address won.
        tx.rollback().await?;
        if auth.autoconfirm {
            return Err(AuthError::unprocessable(
                "user_already_exists",
                "User already registered",
            ));
        }
        return Ok(fake_user(&email, json!({})));
    };
    if auth.autoconfirm {
        let account = mark_signed_in(&mut tx, account.user_id).await?;
        let session = sessions::start(state, &mut tx, &account, origin).await?;
        tx.commit().await?;
        return Ok(session);
    }
    let account = send_confirmation(state, &mut tx, &account).await?;
    tx.commit().await?;
    Ok(account.user_json())
}

/// What an already-registered address gets back when confirmations are on:
/// indistinguishable from a new, unconfirmed user.
fn fake_user(email: &str, metadata: Value) -> Value {
    let now = Utc::now();
    json!({
        "id": Uuid::new_v4(),
        "aud": "authenticated",
        "role": "authenticated",
        "email": email,
        "email_confirmed_at": null,
        "phone": "",
        "confirmation_sent_at": now,
        "confirmed_at": null,
        "last_sign_in_at": null,
        "app_metadata": { "provider": "email", "providers": ["email"] },
        "user_metadata": metadata,
        "identities": [],
        "created_at": now,
        "updated_at": now,
        "is_anonymous": false,
    })
}

/// A confirmation token (hashed, 24 h) and its email, in the transaction.
async fn send_confirmation(
    state: &AppState,
    conn: &mut PgConnection,
    account: &Account,
) -> Result<Account, AuthError> {
    use base64::Engine as _;
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
    sqlx::query(
        "delete from app.auth_one_time_tokens where user_id = $1 and kind = 'confirmation'",
    )
    .bind(account.user_id)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "insert into app.auth_one_time_tokens (id, user_id, kind, token_hash, expires_at)
         values ($1, $2, 'confirmation', $3, now() + make_interval(hours => $4))",
    )
    .bind(Uuid::new_v4())
    .bind(account.user_id)
    .bind(sha256(token.as_bytes()))
    .bind(CONFIRMATION_TTL_HOURS as i32)
    .execute(&mut *conn)
    .await?;
    let mut url = state
        .config
        .auth
        .site_url
        .join("auth/confirm")
        .map_err(AuthError::internal)?;
    url.query_pairs_mut()
        .append_pair("token_hash", &token)
        .append_pair("type", "signup");
    crate::jobs::enqueue(
        conn,
        &SendEmail {
            to: account.email.clone(),
            template: Template::ConfirmEmail {
                confirm_url: url.to_string(),
            },
        },
    )
    .await?;
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "update app.auth_accounts set confirmation_sent_at = now(), updated_at = now()
         where user_id = $1 returning {COLUMNS}"
    )))
    .bind(account.user_id)
    .fetch_one(conn)
    .await?)
}

async fn mark_signed_in(conn: &mut PgConnection, user_id: Uuid) -> Result<Account, AuthError> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "update app.auth_accounts set last_sign_in_at = now(), updated_at = now()
         where user_id = $1 returning {COLUMNS}"
    )))
    .bind(user_id)
    .fetch_one(conn)
    .await?)
}

async fn limit(state: &AppState, key: &str, quota: Quota) -> Result<(), AuthError> {
    match state.limiter.check(key, quota).await {
        Decision::Allowed { .. } => Ok(()),
        Decision::Limited { retry_after } => Err(AuthError::rate_limited(retry_after)),
    }
}

/// `POST /token?grant_type=password`.
pub async fn password_grant(
    state: &AppState,
    email: &str,
    password: &str,
    origin: &Origin,
) -> Result<Value, AuthError> {
    if email.is_empty() || password.is_empty() {
        return Err(AuthError::validation("missing email or password"));
    }
    let ip = origin.ip.as_deref().unwrap_or("unknown");
    limit(state, &format!("auth:login:ip:{ip}"), LOGIN_PER_IP).await?;
    let normalized = email.trim().to_lowercase();
    limit(
        state,
        &format!("auth:login:email:{normalized}"),
        LOGIN_PER_EMAIL,
    )
    .await?;

    // Neither a malformed address nor an overlong password can match an
    // account, whether or not it exists: no work, no difference.
    let Ok(email) = parse_email(email) else {
        return Err(AuthError::invalid_credentials());
    };
    if password.len() > password::MAX_PASSWORD_BYTES {
        return Err(AuthError::invalid_credentials());
    }
    let account = {
        let mut tx = begin(&state.pool).await?;
        let a = by_email(&mut tx, &email).await?;
        tx.rollback().await?;
        a
    };
    let (account, phc) = match account {
        Some(a) => match a.encrypted_password.clone() {
            Some(phc) => (a, phc),
            None => {
                state.hasher.verify_dummy(password).await;
                return Err(AuthError::invalid_credentials());
            }
        },
        None => {
            state.hasher.verify_dummy(password).await;
            return Err(AuthError::invalid_credentials());
        }
    };
    let verified = match state.hasher.verify(password, &phc).await {
        Ok(v) => v,
        Err(PasswordError::Malformed) => {
            tracing::warn!(user_id = %account.user_id, "stored password hash is malformed");
            return Err(AuthError::invalid_credentials());
        }
        Err(e) => return Err(AuthError::internal(e)),
    };
    if !verified.ok {
        return Err(AuthError::invalid_credentials());
    }
    if account.email_confirmed_at.is_none() {
        return Err(AuthError::bad_request(
            "email_not_confirmed",
            "Email not confirmed",
        ));
    }
    if account.is_banned() {
        return Err(AuthError::bad_request("user_banned", "User is banned"));
    }
    let rehash = if verified.needs_rehash {
        Some(hash(state, password).await?)
    } else {
        None
    };
    let mut tx = begin(&state.pool).await?;
    if let Some(new_phc) = rehash {
        // Only if the hash is still the one verified (no password change since).
        sqlx::query(
            "update app.auth_accounts set encrypted_password = $2
             where user_id = $1 and encrypted_password = $3",
        )
        .bind(account.user_id)
        .bind(new_phc)
        .bind(&phc)
        .execute(&mut *tx)
        .await?;
    }
    let account = mark_signed_in(&mut tx, account.user_id).await?;
    let session = sessions::start(state, &mut tx, &account, origin).await?;
    tx.commit().await?;
    Ok(session)
}

/// `GET /user`.
pub async fn get_user(state: &AppState, caller: Caller) -> Result<Value, AuthError> {
    let mut tx = begin(&state.pool).await?;
    let account = by_id(&mut tx, caller.user_id)
        .await?
        .ok_or_else(sessions::session_not_found)?;
    tx.rollback().await?;
    Ok(account.user_json())
}

/// What `PUT /user` may change.
pub struct UserUpdate {
    pub email: Option<String>,
    pub password: Option<String>,
    pub data: Option<Value>,
}

/// `PUT /user`: `data` merges into `user_metadata` (a null value removes a
/// key); a new password revokes the user's other sessions; a new email is
/// taken at once with autoconfirm (otherwise `email_change_not_supported`).
pub async fn update_user(
    state: &AppState,
    caller: Caller,
    update: UserUpdate,
) -> Result<Value, AuthError> {
    let data = match update.data {
        None | Some(Value::Null) => None,
        Some(Value::Object(m)) => Some(m),
        Some(_) => {
            return Err(AuthError::bad_request(
                "bad_json",
                "Could not parse request body as JSON: data must be an object",
            ));
        }
    };
    let new_email = match update.email.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(e) => Some(parse_email(e)?),
    };
    if let Some(p) = &update.password {
        check_new_password(p)?;
    }
    let current = {
        let mut tx = begin(&state.pool).await?;
        let a = by_id(&mut tx, caller.user_id).await?;
        tx.rollback().await?;
        a.ok_or_else(sessions::session_not_found)?
    };
    let new_email = new_email.filter(|e| *e != current.email);
    if new_email.is_some() && !state.config.auth.autoconfirm {
        return Err(AuthError::unprocessable(
            "email_change_not_supported",
            "Changing the email address needs a confirmation email, which this server does not send yet",
        ));
    }
    let new_phc = match &update.password {
        Some(p) => {
            if let Some(old) = &current.encrypted_password
                && state.hasher.verify(p, old).await.is_ok_and(|v| v.ok)
            {
                return Err(AuthError::unprocessable(
                    "same_password",
                    "New password should be different from the old password.",
                ));
            }
            Some(hash(state, p).await?)
        }
        None => None,
    };

    let mut tx = begin(&state.pool).await?;
    // Lock the account: concurrent updates merge one after the other.
    let account = sqlx::query_as::<_, Account>(sqlx::AssertSqlSafe(format!(
        "select {COLUMNS} from app.auth_accounts where user_id = $1 for update"
    )))
    .bind(caller.user_id)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(sessions::session_not_found)?;
    let mut stale_orgs = Vec::new();
    let mut metadata = match account.user_metadata.clone() {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    if let Some(data) = data {
        for (k, v) in data {
            if v.is_null() {
                metadata.remove(&k);
            } else {
                metadata.insert(k, v);
            }
        }
    }
    if let Some(email) = &new_email {
        if by_email(&mut tx, email).await?.is_some() {
            return Err(AuthError::unprocessable(
                "email_exists",
                "A user with this email address has already been registered",
            ));
        }
        act_as(&mut tx, caller.user_id).await?;
        sqlx::query("update users set email = $2, updated_at = now() where id = $1")
            .bind(caller.user_id)
            .bind(email)
            .execute(&mut *tx)
            .await?;
        // The member lists of the user's orgs show the email: refresh them.
        stale_orgs = crate::users::repo::org_ids(&mut tx, caller.user_id).await?;
    }
    let updated = sqlx::query_as::<_, Account>(sqlx::AssertSqlSafe(format!(
        "update app.auth_accounts set
            user_metadata = $2,
            encrypted_password = coalesce($3, encrypted_password),
            email = coalesce($4, email),
            updated_at = now()
         where user_id = $1
         returning {COLUMNS}"
    )))
    .bind(caller.user_id)
    .bind(Value::Object(metadata))
    .bind(new_phc.as_deref())
    .bind(new_email.as_deref())
    .fetch_one(&mut *tx)
    .await;
    let updated = match updated {
        Err(e) if crate::core::error::is_unique_violation(&e, "auth_accounts_email_key") => {
            return Err(AuthError::unprocessable(
                "email_exists",
                "A user with this email address has already been registered",
            ));
        }
        other => other?,
    };
    if new_phc.is_some() {
        sqlx::query("delete from app.auth_sessions where user_id = $1 and id <> $2")
            .bind(caller.user_id)
            .bind(caller.session_id)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    state.cache.invalidate_orgs(&stale_orgs).await;
    Ok(updated.user_json())
}
