//! Email flows: `/verify` (confirmation, recovery, email change),
//! `/recover` and `/reauthenticate`, over the one-time tokens of [`super::links`].
//!
//! A one-time token is 32 random bytes (base64url); only its SHA-256 is
//! stored. The emailed link is `GET {AUTH_EXTERNAL_URL}/verify?token=..&type=..`
//! (and `redirect_to` when one was asked for); `POST /verify` takes the same
//! token as `token_hash` (supabase-js `verifyOtp({token_hash, type})`), or as
//! `token` with the `email`. A token is used at most once: the update that
//! marks it used is the check.

use std::time::Duration;

use serde_json::Value;
use uuid::Uuid;

use super::errors::AuthError;
use super::limits;
use super::links::{
    REAUTHENTICATION, REAUTHENTICATION_RESEND_SECS, REAUTHENTICATION_TTL_SECS, TokenKind,
    issue_token, nonce_hash, otp_expired, verify_link,
};
use super::sessions::{self, Origin, begin, sha256};
use super::state::IdentityState;
use super::store::{self, Account, COLUMNS};
use crate::core::ratelimit::Quota;
use crate::mail::SendEmail;
use crate::mail::templates::Template;

/// `/verify` guesses per client IP. The limiter cannot refund, so every
/// attempt counts (a valid token is one per email: few successes).
pub const VERIFY_ATTEMPTS_PER_IP: Quota = Quota::new(20, Duration::from_secs(600));
/// `/recover` requests per (address, client).
pub const RECOVER_PER_EMAIL: Quota = Quota::new(5, Duration::from_secs(3600));
/// Least time between two recovery emails to one address.
const RECOVERY_RESEND_SECS: i64 = 60;

/// What `/verify` was given.
pub struct VerifyRequest<'a> {
    pub kind: TokenKind,
    /// The plaintext token (`token_hash`, or `token` with `email`).
    pub token: &'a str,
    pub email: Option<&'a str>,
}

/// `/verify`: uses the token and returns a session.
pub async fn verify(
    state: &IdentityState,
    req: VerifyRequest<'_>,
    origin: &Origin,
) -> Result<Value, AuthError> {
    let ip = origin.limit_key();
    limits::limit(
        state,
        &format!("auth:verify:ip:{ip}"),
        limits::per_ip(state),
    )
    .await?;
    limits::limit(
        state,
        &format!("auth:verify:attempts:ip:{ip}"),
        VERIFY_ATTEMPTS_PER_IP,
    )
    .await?;
    // Our tokens are 43 characters.
    if req.token.is_empty() || req.token.len() > 256 {
        return Err(otp_expired());
    }
    let email = match req.email.map(str::trim).filter(|e| !e.is_empty()) {
        Some(e) => Some(store::parse_email(e).map_err(|_| otp_expired())?),
        None => None,
    };

    let mut tx = begin(&state.pool).await?;
    let token_hash = sha256(req.token.as_bytes());
    let owner: Option<Uuid> = sqlx::query_scalar(
        "select user_id from app.auth_one_time_tokens
         where token_hash = $1 and kind = $2 and used_at is null and expires_at > now()",
    )
    .bind(&token_hash)
    .bind(req.kind.as_str())
    .fetch_optional(&mut *tx)
    .await?;
    let Some(owner) = owner else {
        return Err(otp_expired());
    };
    // The account first, as a sign-up of the address locks it before it
    // replaces the tokens: the two wait for each other, never deadlock.
    let account: Account = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "select {COLUMNS} from app.auth_accounts where user_id = $1 for update"
    )))
    .bind(owner)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(otp_expired)?;
    // Used up only now, under the lock: a token a concurrent sign-up voided
    // meanwhile is gone. Dropping the transaction rolls the use back on
    // every early return.
    let used: Option<(Uuid, Option<String>)> = sqlx::query_as(
        "update app.auth_one_time_tokens set used_at = now()
         where token_hash = $1 and kind = $2 and user_id = $3
           and used_at is null and expires_at > now()
         returning user_id, new_email",
    )
    .bind(&token_hash)
    .bind(req.kind.as_str())
    .bind(owner)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((user_id, new_email)) = used else {
        return Err(otp_expired());
    };
    if let Some(e) = &email
        && *e != account.email
        && Some(e) != new_email.as_ref()
    {
        return Err(otp_expired());
    }
    if account.is_banned() {
        return Err(AuthError::bad_request("user_banned", "User is banned"));
    }
    let mut stale_orgs = Vec::new();
    let account: Account = match req.kind {
        TokenKind::Confirmation | TokenKind::Recovery => {
            // A recovery link proves the address as well.
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "update app.auth_accounts set
                    email_confirmed_at = coalesce(email_confirmed_at, now()),
                    last_sign_in_at = now(), updated_at = now()
                 where user_id = $1 returning {COLUMNS}"
            )))
            .bind(user_id)
            .fetch_one(&mut *tx)
            .await?
        }
        TokenKind::EmailChange => {
            let Some(new_email) = new_email else {
                return Err(AuthError::internal("email_change token without new_email"));
            };
            let email_exists = || {
                AuthError::unprocessable(
                    "email_exists",
                    "A user with this email address has already been registered",
                )
            };
            if store::by_email(&mut tx, &new_email)
                .await?
                .is_some_and(|a| a.user_id != user_id)
            {
                return Err(email_exists());
            }
            store::act_as(&mut tx, user_id).await?;
            stale_orgs = crate::users::service::change_email(&mut tx, user_id, &new_email).await?;
            let updated = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "update app.auth_accounts set
                    email = $2, email_change = null, email_change_sent_at = null,
                    email_confirmed_at = coalesce(email_confirmed_at, now()),
                    last_sign_in_at = now(), updated_at = now()
                 where user_id = $1 returning {COLUMNS}"
            )))
            .bind(user_id)
            .bind(&new_email)
            .fetch_one(&mut *tx)
            .await;
            match updated {
                Err(e)
                    if crate::core::error::is_unique_violation(&e, "auth_accounts_email_key") =>
                {
                    return Err(email_exists());
                }
                other => other?,
            }
        }
    };
    let session = sessions::start(state, &mut tx, &account, origin).await?;
    tx.commit().await?;
    state.cache.invalidate_orgs(&stale_orgs).await;
    Ok(session)
}

/// `POST /recover`: for an existing, confirmed account (and at most once a
/// minute per address), a recovery link by email. The caller answers `{}`
/// whatever happened here, short of a rate limit or a malformed address.
pub async fn recover(
    state: &IdentityState,
    email: &str,
    redirect_to: Option<&str>,
    origin: &Origin,
) -> Result<(), AuthError> {
    let ip = origin.limit_key();
    limits::limit(
        state,
        &format!("auth:recover:ip:{ip}"),
        limits::per_ip(state),
    )
    .await?;
    if email.trim().is_empty() {
        return Err(AuthError::validation("Password recovery requires an email"));
    }
    // Per (address, client): a stranger asking for the owner's address
    // does not block the owner's own request. Emails to one address are
    // spaced a minute apart below whoever asks.
    let normalized = email.trim().to_lowercase();
    limits::limit(
        state,
        &format!("auth:recover:email:{normalized}|{ip}"),
        RECOVER_PER_EMAIL,
    )
    .await?;
    let email = store::parse_email(email)?;

    let mut tx = begin(&state.pool).await?;
    // Claims the send: concurrent requests for one address send one email.
    let account: Option<Account> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "update app.auth_accounts set recovery_sent_at = now(), updated_at = now()
         where email = $1 and email_confirmed_at is not null
           and (banned_until is null or banned_until <= now())
           and (recovery_sent_at is null
                or recovery_sent_at <= now() - make_interval(secs => $2))
         returning {COLUMNS}"
    )))
    .bind(&email)
    .bind(RECOVERY_RESEND_SECS as f64)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(account) = account {
        let token = issue_token(&mut tx, account.user_id, TokenKind::Recovery, None).await?;
        let url = verify_link(state, &token, "recovery", redirect_to)?;
        crate::jobs::enqueue(
            &mut tx,
            &SendEmail {
                to: account.email.clone(),
                template: Template::PasswordReset { reset_url: url },
            },
        )
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// `GET /reauthenticate`: emails the signed-in user a six-digit nonce (an
/// hour, once) that `PUT /user` takes as `nonce` for a new password or
/// email when the sign-in is older than `AUTH_REAUTH_WINDOW_SECS`. At most
/// one email a minute per user (429 `over_email_send_rate_limit`); a new
/// nonce voids the earlier one.
pub async fn reauthenticate(
    state: &IdentityState,
    caller: sessions::Caller,
) -> Result<(), AuthError> {
    let mut tx = begin(&state.pool).await?;
    // The account's lock serialises concurrent requests: one email.
    let account: Account = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "select {COLUMNS} from app.auth_accounts where user_id = $1 for update"
    )))
    .bind(caller.user_id)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(sessions::session_not_found)?;
    if account.email_confirmed_at.is_none() {
        return Err(AuthError::unprocessable(
            "email_not_confirmed",
            "Please verify your email first.",
        ));
    }
    let last_sent: Option<f64> = sqlx::query_scalar(
        "select extract(epoch from now() - max(created_at))::float8
         from app.auth_one_time_tokens where user_id = $1 and kind = $2",
    )
    .bind(caller.user_id)
    .bind(REAUTHENTICATION)
    .fetch_one(&mut *tx)
    .await?;
    if let Some(ago) = last_sent {
        let wait = REAUTHENTICATION_RESEND_SECS - ago.floor() as i64;
        if wait > 0 {
            return Err(AuthError::email_too_soon(wait as u64));
        }
    }
    let nonce = format!("{:06}", rand::random_range(0..1_000_000u32));
    sqlx::query("delete from app.auth_one_time_tokens where user_id = $1 and kind = $2")
        .bind(caller.user_id)
        .bind(REAUTHENTICATION)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "insert into app.auth_one_time_tokens (id, user_id, kind, token_hash, expires_at)
         values ($1, $2, $3, $4, now() + make_interval(secs => $5))",
    )
    .bind(Uuid::new_v4())
    .bind(caller.user_id)
    .bind(REAUTHENTICATION)
    .bind(nonce_hash(caller.user_id, &nonce))
    .bind(REAUTHENTICATION_TTL_SECS)
    .execute(&mut *tx)
    .await?;
    crate::jobs::enqueue(
        &mut tx,
        &SendEmail {
            to: account.email.clone(),
            template: Template::Reauthentication { nonce },
        },
    )
    .await?;
    tx.commit().await?;
    Ok(())
}
