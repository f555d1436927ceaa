//! Accounts: sign-up, password sign-in and changes to the signed-in user,
//! kept in `app.auth_accounts` beside the `users` profile row.

use std::time::Duration;

use chrono::Utc;
use serde_json::{Map, Value, json};
use sqlx::PgConnection;
use uuid::Uuid;

use super::errors::AuthError;
use super::limits::{limit, per_ip};
use super::links::{self, TokenKind};
use super::sessions::{self, Caller, Origin, begin};
use super::state::IdentityState;
use super::store::{Account, COLUMNS, act_as, by_email, by_id, parse_email};
use crate::auth::ended_sessions::{Ending, end_sessions};
use crate::auth::password::{self, PasswordError};
use crate::core::ratelimit::{Decision, Quota};
use crate::mail::SendEmail;
use crate::mail::templates::Template;

/// Failed sign-ins per (address, client): past it that client waits, while
/// the owner signing in from elsewhere is not affected.
pub const LOGIN_FAILURES_PER_CLIENT: Quota = Quota::per_minute(10);
/// Failed sign-ins per address from all clients, against guessing spread
/// over many addresses: past it only clients with no failures of their own
/// for the address may try.
pub const LOGIN_FAILURES_PER_ADDRESS: Quota = Quota::new(100, Duration::from_secs(3600));
/// Sign-ups (each sends a confirmation email) per (address, client), and per
/// address: against filling someone's mailbox.
pub const SIGNUP_EMAILS_PER_CLIENT: Quota = Quota::new(5, Duration::from_secs(3600));
pub const SIGNUP_EMAILS_PER_ADDRESS: Quota = Quota::new(20, Duration::from_secs(3600));
/// Changes of password or email address per user.
pub const SENSITIVE_CHANGES_PER_USER: Quota = Quota::new(5, Duration::from_secs(600));
/// Least time between two confirmation (or email change) emails to one address.
pub(super) const CONFIRMATION_RESEND_SECS: i64 = 60;

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

async fn hash(state: &IdentityState, password: &str) -> Result<String, AuthError> {
    state.hasher.hash(password).await.map_err(hashing_failed)
}

/// A full hashing queue is 503 `busy` (retry shortly); anything else a 500.
pub(super) fn hashing_failed(e: PasswordError) -> AuthError {
    match e {
        PasswordError::Busy => AuthError::busy(),
        other => AuthError::internal(other),
    }
}

fn user_metadata(data: Option<Value>) -> Result<Value, AuthError> {
    match data {
        None | Some(Value::Null) => Ok(json!({})),
        Some(Value::Object(m)) => Ok(Value::Object(storable_metadata(m)?)),
        Some(_) => Err(AuthError::bad_request(
            "bad_json",
            "Could not parse request body as JSON: data must be an object",
        )),
    }
}

/// `data` for `user_metadata`, refused (400 `validation_failed`) when a key
/// or a string holds U+0000, which Postgres's jsonb cannot store.
fn storable_metadata(data: Map<String, Value>) -> Result<Map<String, Value>, AuthError> {
    fn storable(v: &Value) -> bool {
        match v {
            Value::String(s) => !s.contains('\0'),
            Value::Array(items) => items.iter().all(storable),
            Value::Object(m) => m.iter().all(|(k, v)| !k.contains('\0') && storable(v)),
            _ => true,
        }
    }
    if data.iter().all(|(k, v)| !k.contains('\0') && storable(v)) {
        Ok(data)
    } else {
        Err(AuthError::validation(
            "data cannot contain the NUL character (\\u0000)",
        ))
    }
}

/// `POST /signup`.
pub async fn signup(
    state: &IdentityState,
    email: &str,
    password: &str,
    data: Option<Value>,
    redirect_to: Option<&str>,
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
    if !auth.autoconfirm {
        // Every sign-up counts, whatever the address's state: the limit
        // tells nothing of whether it is registered.
        let client = origin.limit_key();
        limit_sends(
            state,
            &format!("auth:signup:email:{email}|{client}"),
            SIGNUP_EMAILS_PER_CLIENT,
        )
        .await?;
        limit_sends(
            state,
            &format!("auth:signup:email:{email}"),
            SIGNUP_EMAILS_PER_ADDRESS,
        )
        .await?;
    }
    // Hash before the transaction: it is slow, and every path pays for it.
    let phc = hash(state, password).await?;

    let mut tx = begin(&state.pool).await?;
    // Locked: a concurrent sign-up or confirmation of this address waits.
    let existing = sqlx::query_as::<_, Account>(sqlx::AssertSqlSafe(format!(
        "select {COLUMNS} from app.auth_accounts where email = $1 for update"
    )))
    .bind(&email)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(existing) = existing {
        if auth.autoconfirm || existing.email_confirmed_at.is_some() {
            tx.rollback().await?;
            if auth.autoconfirm {
                return Err(AuthError::unprocessable(
                    "user_already_exists",
                    "User already registered",
                ));
            }
            // No enumeration: the answer looks like a fresh sign-up.
            return Ok(obfuscated_user(&email, metadata));
        }
        // Not confirmed yet: nobody has proved they own the address, so this
        // sign-up's password and metadata replace the earlier ones, and a new
        // link (voiding the earlier ones) goes to the address. Whoever uses
        // it confirms the password of the sign-up that sent it: an earlier
        // sign-up by someone else (an attacker waiting for the owner to
        // confirm) keeps nothing.
        sqlx::query(
            "update app.auth_accounts
             set encrypted_password = $2, user_metadata = $3, updated_at = now()
             where user_id = $1",
        )
        .bind(existing.user_id)
        .bind(&phc)
        .bind(&metadata)
        .execute(&mut *tx)
        .await?;
        send_confirmation(state, &mut tx, &existing, redirect_to).await?;
        tx.commit().await?;
        // Nothing of the earlier sign-up (its id, metadata or timestamps).
        return Ok(obfuscated_user(&email, metadata));
    }

    let user_id = Uuid::new_v4();
    act_as(&mut tx, user_id).await?;
    crate::users::service::create_for_account(&mut tx, user_id, &email).await?;
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
        return Ok(obfuscated_user(&email, metadata));
    };
    if auth.autoconfirm {
        let account = mark_signed_in(&mut tx, account.user_id).await?;
        let session = sessions::start(state, &mut tx, &account, origin).await?;
        tx.commit().await?;
        return Ok(session);
    }
    let account = send_confirmation(state, &mut tx, &account, redirect_to).await?;
    tx.commit().await?;
    Ok(account.user_json())
}

/// What an already-registered address (confirmed or not) gets back when
/// confirmations are on: the shape of a new, unconfirmed user, with a fresh
/// random id, this request's metadata and the current time, so the answer
/// tells nothing of an earlier sign-up.
fn obfuscated_user(email: &str, metadata: Value) -> Value {
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

/// A confirmation token (hashed, 24 h) and its email (a link to
/// `GET /verify`), in the transaction.
async fn send_confirmation(
    state: &IdentityState,
    conn: &mut PgConnection,
    account: &Account,
    redirect_to: Option<&str>,
) -> Result<Account, AuthError> {
    let token =
        links::issue_token(&mut *conn, account.user_id, TokenKind::Confirmation, None).await?;
    let url = links::verify_link(state, &token, "signup", redirect_to)?;
    crate::jobs::enqueue(
        &mut *conn,
        &SendEmail {
            to: account.email.clone(),
            template: Template::ConfirmEmail { confirm_url: url },
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

pub(super) async fn mark_signed_in(
    conn: &mut PgConnection,
    user_id: Uuid,
) -> Result<Account, AuthError> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "update app.auth_accounts set last_sign_in_at = now(), updated_at = now()
         where user_id = $1 returning {COLUMNS}"
    )))
    .bind(user_id)
    .fetch_one(conn)
    .await?)
}

/// As [`limit`], for limits on emails sent (`over_email_send_rate_limit`).
async fn limit_sends(state: &IdentityState, key: &str, quota: Quota) -> Result<(), AuthError> {
    match state.limiter.check(key, quota).await {
        Decision::Allowed { .. } => Ok(()),
        Decision::Limited { retry_after } => {
            let wait = retry_after.as_secs_f64().ceil().max(1.0) as u64;
            Err(AuthError::email_too_soon(wait))
        }
    }
}

/// `POST /token?grant_type=password`.
pub async fn password_grant(
    state: &IdentityState,
    email: &str,
    password: &str,
    origin: &Origin,
) -> Result<Value, AuthError> {
    if email.is_empty() || password.is_empty() {
        return Err(AuthError::validation("missing email or password"));
    }
    let client = origin.limit_key();
    limit(state, &format!("auth:login:ip:{client}"), per_ip(state)).await?;
    // Only failures count, per (address, client) and per address: a
    // stranger's wrong guesses neither lock the owner out nor are unlimited.
    let normalized = email.trim().to_lowercase();
    let per_client = format!("auth:login:fail:{normalized}|{client}");
    let per_address = format!("auth:login:fail:{normalized}");
    let mine = state
        .limiter
        .peek(&per_client, LOGIN_FAILURES_PER_CLIENT)
        .await;
    if let Decision::Limited { retry_after } = mine.decision {
        return Err(AuthError::rate_limited(retry_after));
    }
    let all = state
        .limiter
        .peek(&per_address, LOGIN_FAILURES_PER_ADDRESS)
        .await;
    if let Decision::Limited { retry_after } = all.decision
        && !mine.pristine
    {
        return Err(AuthError::rate_limited(retry_after));
    }
    let outcome = check_password(state, email, password, origin).await;
    if outcome
        .as_ref()
        .is_err_and(|e| e.code == "invalid_credentials")
    {
        state
            .limiter
            .check(&per_client, LOGIN_FAILURES_PER_CLIENT)
            .await;
        state
            .limiter
            .check(&per_address, LOGIN_FAILURES_PER_ADDRESS)
            .await;
    }
    outcome
}

/// The sign-in itself, once the limits allow it.
async fn check_password(
    state: &IdentityState,
    email: &str,
    password: &str,
    origin: &Origin,
) -> Result<Value, AuthError> {
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
                state
                    .hasher
                    .verify_dummy(password)
                    .await
                    .map_err(hashing_failed)?;
                return Err(AuthError::invalid_credentials());
            }
        },
        None => {
            state
                .hasher
                .verify_dummy(password)
                .await
                .map_err(hashing_failed)?;
            return Err(AuthError::invalid_credentials());
        }
    };
    let verified = match state.hasher.verify(password, &phc).await {
        Ok(v) => v,
        Err(PasswordError::Malformed) => {
            tracing::warn!(user_id = %account.user_id, "stored password hash is malformed");
            return Err(AuthError::invalid_credentials());
        }
        Err(e) => return Err(hashing_failed(e)),
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
pub async fn get_user(state: &IdentityState, caller: Caller) -> Result<Value, AuthError> {
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
    /// The code `GET /reauthenticate` emailed, for a sensitive change when
    /// the session's sign-in is older than `AUTH_REAUTH_WINDOW_SECS`.
    pub nonce: Option<String>,
}

/// `PUT /user`: `data` merges into `user_metadata` (a null value removes a
/// key); a new password ends the user's other sessions; a new email is
/// taken at once with autoconfirm, otherwise a link to confirm it is sent to
/// the new address (`POST`/`GET /verify`, type `email_change`, switches it).
///
/// A new password or email is a sensitive change: at most
/// [`SENSITIVE_CHANGES_PER_USER`], and only within `AUTH_REAUTH_WINDOW_SECS`
/// of the session's sign-in, or with the nonce of `GET /reauthenticate`
/// (else 400 `reauthentication_needed`; a wrong or used nonce is 422
/// `reauthentication_not_valid`). A stolen access token alone cannot take
/// the account over.
pub async fn update_user(
    state: &IdentityState,
    caller: Caller,
    update: UserUpdate,
    redirect_to: Option<&str>,
) -> Result<Value, AuthError> {
    let data = match update.data {
        None | Some(Value::Null) => None,
        Some(Value::Object(m)) => Some(storable_metadata(m)?),
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
    let confirm_email = !state.config.auth.autoconfirm;
    let sensitive = new_email.is_some() || update.password.is_some();
    let nonce = if sensitive {
        let nonce = reauthentication_needed(state, &caller, update.nonce.as_deref())?;
        // Every attempt counts from here: changes and nonce guesses alike.
        limit(
            state,
            &format!("auth:sensitive:user:{}", caller.user_id),
            SENSITIVE_CHANGES_PER_USER,
        )
        .await?;
        nonce
    } else {
        None
    };
    let new_phc = match &update.password {
        Some(p) => {
            let same = match &current.encrypted_password {
                Some(old) => match state.hasher.verify(p, old).await {
                    Ok(v) => v.ok,
                    Err(PasswordError::Busy) => return Err(AuthError::busy()),
                    Err(_) => false,
                },
                None => false,
            };
            if same {
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
    // The nonce is used up here, in the change's transaction: a wrong, used
    // or expired one changes nothing.
    if let Some(nonce) = &nonce
        && !links::use_reauthentication_nonce(&mut tx, caller.user_id, nonce).await?
    {
        return Err(links::nonce_not_valid());
    }
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
    // The address to confirm (a link is sent to it), or to take at once.
    let mut pending_email = None;
    let mut switch_email = None;
    if let Some(email) = &new_email {
        if by_email(&mut tx, email).await?.is_some() {
            return Err(AuthError::unprocessable(
                "email_exists",
                "A user with this email address has already been registered",
            ));
        }
        if confirm_email {
            if let Some(sent) = account.email_change_sent_at {
                let wait = CONFIRMATION_RESEND_SECS - (Utc::now() - sent).num_seconds();
                if wait > 0 {
                    return Err(AuthError::email_too_soon(wait as u64));
                }
            }
            let token =
                links::issue_token(&mut tx, caller.user_id, TokenKind::EmailChange, Some(email))
                    .await?;
            let url = links::verify_link(state, &token, "email_change", redirect_to)?;
            crate::jobs::enqueue(
                &mut tx,
                &SendEmail {
                    to: email.clone(),
                    template: Template::EmailChange {
                        confirm_url: url,
                        new_email: email.clone(),
                    },
                },
            )
            .await?;
            pending_email = Some(email.clone());
        } else {
            switch_email = Some(email.clone());
        }
    }
    if let Some(email) = &switch_email {
        act_as(&mut tx, caller.user_id).await?;
        // The member lists of the user's orgs show the email: refresh them.
        stale_orgs = crate::users::service::change_email(&mut tx, caller.user_id, email).await?;
    }
    let updated = sqlx::query_as::<_, Account>(sqlx::AssertSqlSafe(format!(
        "update app.auth_accounts set
            user_metadata = $2,
            encrypted_password = coalesce($3, encrypted_password),
            email = coalesce($4, email),
            email_change = case when $4 is not null then null
                                else coalesce($5, email_change) end,
            email_change_sent_at = case when $4 is not null then null
                                        when $5 is not null then now()
                                        else email_change_sent_at end,
            updated_at = now()
         where user_id = $1
         returning {COLUMNS}"
    )))
    .bind(caller.user_id)
    .bind(Value::Object(metadata))
    .bind(new_phc.as_deref())
    .bind(switch_email.as_deref())
    .bind(pending_email.as_deref())
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
    let mut ended = Vec::new();
    if new_phc.is_some() {
        // Whoever else held a session (or a recovery link) is out.
        ended = end_sessions(
            &mut tx,
            caller.user_id,
            Ending::AllBut(caller.session_id),
            state.keys.access_token_ttl(),
        )
        .await?;
        links::void_tokens(&mut tx, caller.user_id, TokenKind::Recovery).await?;
    }
    tx.commit().await?;
    state.ended_sessions.announce(&ended).await;
    state.cache.invalidate_orgs(&stale_orgs).await;
    Ok(updated.user_json())
}

/// Whether a sensitive change needs the reauthentication nonce: `None`
/// within the window of the session's sign-in; else the nonce to use up (in
/// the change's transaction), or 400 `reauthentication_needed` without one.
fn reauthentication_needed(
    state: &IdentityState,
    caller: &Caller,
    nonce: Option<&str>,
) -> Result<Option<String>, AuthError> {
    let window = chrono::Duration::from_std(state.config.auth.reauth_window)
        .unwrap_or(chrono::Duration::zero());
    if Utc::now() - caller.signed_in_at <= window {
        return Ok(None);
    }
    match nonce.map(str::trim).filter(|n| !n.is_empty()) {
        Some(nonce) => Ok(Some(nonce.to_owned())),
        None => Err(AuthError::bad_request(
            "reauthentication_needed",
            "Password update requires reauthentication",
        )),
    }
}

/// A Go-style duration as GoTrue's admin API takes it (`"24h"`, `"90m"`,
/// `"1h30m"`, `"876000h"`), or `"none"` (lift the ban): `Some(None)` for
/// none, `None` when it does not parse.
pub fn parse_ban_duration(s: &str) -> Option<Option<chrono::Duration>> {
    if s == "none" {
        return Some(None);
    }
    let mut total_ms: i64 = 0;
    let mut digits = String::new();
    let mut chars = s.chars().peekable();
    if s.is_empty() {
        return None;
    }
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match (c, chars.peek()) {
            ('m', Some('s')) => {
                chars.next();
                1
            }
            ('h', _) => 3_600_000,
            ('m', _) => 60_000,
            ('s', _) => 1_000,
            _ => return None,
        };
        let n: i64 = digits.parse().ok()?;
        digits.clear();
        total_ms = total_ms.checked_add(n.checked_mul(unit)?)?;
    }
    // Trailing digits without a unit, zero, or more than 100 years: refused.
    if !digits.is_empty() || total_ms <= 0 || total_ms > 100 * 365 * 86_400_000 {
        return None;
    }
    Some(Some(chrono::Duration::milliseconds(total_ms)))
}

/// `PUT /admin/users/{id}` `{ban_duration}` (platform administrators): bans
/// the user until now + the duration and ends all their sessions (their
/// refresh tokens stop working, their access tokens are refused by `/user`
/// and, within seconds on every replica, by `/api/v1`),
/// or lifts the ban with `"none"`.
pub async fn set_ban(
    state: &IdentityState,
    user_id: Uuid,
    ban: Option<chrono::Duration>,
) -> Result<Value, AuthError> {
    let mut tx = begin(&state.pool).await?;
    let until = ban.map(|d| Utc::now() + d);
    let updated = sqlx::query(
        "update app.auth_accounts set banned_until = $2, updated_at = now() where user_id = $1",
    )
    .bind(user_id)
    .bind(until)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if updated == 0 {
        return Err(AuthError::not_found("user_not_found", "User not found"));
    }
    let mut ended = Vec::new();
    if until.is_some() {
        ended = end_sessions(&mut tx, user_id, Ending::All, state.keys.access_token_ttl()).await?;
    }
    let account = by_id(&mut tx, user_id)
        .await?
        .ok_or_else(sessions::session_not_found)?;
    tx.commit().await?;
    state.ended_sessions.announce(&ended).await;
    tracing::info!(user = %user_id, banned_until = ?until, "user ban changed by a platform administrator");
    let mut user = account.user_json();
    user["banned_until"] = serde_json::json!(until);
    Ok(user)
}

#[cfg(test)]
mod tests {
    use super::parse_ban_duration;

    #[test]
    fn ban_durations_parse_like_go_durations() {
        let h = |n| Some(Some(chrono::Duration::hours(n)));
        assert_eq!(parse_ban_duration("24h"), h(24));
        assert_eq!(parse_ban_duration("876000h"), h(876_000));
        assert_eq!(
            parse_ban_duration("1h30m"),
            Some(Some(chrono::Duration::minutes(90)))
        );
        assert_eq!(
            parse_ban_duration("1500ms"),
            Some(Some(chrono::Duration::milliseconds(1500)))
        );
        assert_eq!(parse_ban_duration("none"), Some(None));
        for bad in ["", "24", "h", "0h", "-1h", "1d", "forever", "999999999999h"] {
            assert_eq!(parse_ban_duration(bad), None, "{bad}");
        }
    }
}
