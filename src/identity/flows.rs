//! Email flows: one-time tokens and their links, `/verify` (confirmation,
//! recovery, email change) and `/recover`.
//!
//! A one-time token is 32 random bytes (base64url); only its SHA-256 is
//! stored. The emailed link is `GET {AUTH_EXTERNAL_URL}/verify?token=..&type=..`
//! (and `redirect_to` when one was asked for); `POST /verify` takes the same
//! token as `token_hash` (supabase-js `verifyOtp({token_hash, type})`), or as
//! `token` with the `email`. A token is used at most once: the update that
//! marks it used is the check.

use std::time::Duration;

use axum::http::StatusCode;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;
use sqlx::PgConnection;
use url::Url;
use uuid::Uuid;

use super::accounts::{self, Account, COLUMNS};
use super::errors::AuthError;
use super::sessions::{self, Origin, begin, sha256};
use crate::app::AppState;
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

/// What a one-time token is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    Confirmation,
    Recovery,
    EmailChange,
}

/// The kind of the reauthentication nonces (never accepted by `/verify`).
const REAUTHENTICATION: &str = "reauthentication";
/// How long a reauthentication nonce lives.
const REAUTHENTICATION_TTL_SECS: f64 = 3600.0;
/// Least time between two reauthentication emails to one user.
const REAUTHENTICATION_RESEND_SECS: i64 = 60;

impl TokenKind {
    fn as_str(self) -> &'static str {
        match self {
            TokenKind::Confirmation => "confirmation",
            TokenKind::Recovery => "recovery",
            TokenKind::EmailChange => "email_change",
        }
    }

    /// Lifetime of the token.
    fn ttl_secs(self) -> f64 {
        match self {
            TokenKind::Confirmation | TokenKind::EmailChange => 24.0 * 3600.0,
            TokenKind::Recovery => 3600.0,
        }
    }

    /// GoTrue's verification `type`.
    pub fn from_type(t: &str) -> Option<Self> {
        match t {
            "signup" | "email" => Some(TokenKind::Confirmation),
            "recovery" => Some(TokenKind::Recovery),
            "email_change" => Some(TokenKind::EmailChange),
            _ => None,
        }
    }
}

pub fn otp_expired() -> AuthError {
    AuthError::new(
        StatusCode::FORBIDDEN,
        "otp_expired",
        "Email link is invalid or has expired",
    )
}

/// A new token of `kind` for the user, in the transaction; returns the
/// plaintext token. A confirmation or email-change token voids the user's
/// earlier ones of its kind (only the newest request counts). Recovery
/// tokens do not: anyone may ask for a recovery email, and a stranger's
/// request must not kill the link the owner is about to use; all of them
/// die when the password changes ([`void_tokens`]).
pub async fn issue_token(
    conn: &mut PgConnection,
    user_id: Uuid,
    kind: TokenKind,
    new_email: Option<&str>,
) -> Result<String, AuthError> {
    let token = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
    sqlx::query(
        "delete from app.auth_one_time_tokens
         where user_id = $1 and kind = $2
           and ($3 or used_at is not null or expires_at <= now())",
    )
    .bind(user_id)
    .bind(kind.as_str())
    .bind(kind != TokenKind::Recovery)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "insert into app.auth_one_time_tokens (id, user_id, kind, token_hash, expires_at, new_email)
         values ($1, $2, $3, $4, now() + make_interval(secs => $5), $6)",
    )
    .bind(Uuid::new_v4())
    .bind(user_id)
    .bind(kind.as_str())
    .bind(sha256(token.as_bytes()))
    .bind(kind.ttl_secs())
    .bind(new_email)
    .execute(&mut *conn)
    .await?;
    Ok(token)
}

/// The emailed link: `GET /verify` with the token, and `redirect_to` when
/// one was asked for and is allowed.
pub fn verify_link(
    state: &AppState,
    token: &str,
    kind: &str,
    redirect_to: Option<&str>,
) -> Result<String, AuthError> {
    let mut url = state
        .config
        .auth
        .external_url
        .join("verify")
        .map_err(AuthError::internal)?;
    {
        let mut q = url.query_pairs_mut();
        q.append_pair("token", token).append_pair("type", kind);
        if let Some(r) = redirect_to.and_then(|r| allowed_redirect(state, r)) {
            q.append_pair("redirect_to", r.as_str());
        }
    }
    Ok(url.into())
}

/// `candidate` when it is under `AUTH_SITE_URL` or an entry of
/// `AUTH_REDIRECT_ALLOW_LIST` (same scheme, host and port, path below).
pub fn allowed_redirect(state: &AppState, candidate: &str) -> Option<Url> {
    let auth = &state.config.auth;
    let url = Url::parse(candidate.trim()).ok()?;
    (is_under(&url, &auth.site_url) || auth.redirect_allow_list.iter().any(|b| is_under(&url, b)))
        .then_some(url)
}

/// Where `/verify` sends the browser: an allowed `redirect_to`, else `AUTH_SITE_URL`.
pub fn redirect_target(state: &AppState, redirect_to: Option<&str>) -> Url {
    redirect_to
        .and_then(|r| allowed_redirect(state, r))
        .unwrap_or_else(|| state.config.auth.site_url.clone())
}

fn is_under(url: &Url, base: &Url) -> bool {
    if url.cannot_be_a_base()
        || !url.username().is_empty()
        || url.password().is_some()
        || url.scheme() != base.scheme()
        || url.host_str().is_none()
        || url.host_str() != base.host_str()
        || url.port_or_known_default() != base.port_or_known_default()
    {
        return false;
    }
    let prefix = base.path().trim_end_matches('/');
    let path = url.path();
    path == prefix
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// What `/verify` was given.
pub struct VerifyRequest<'a> {
    pub kind: TokenKind,
    /// The plaintext token (`token_hash`, or `token` with `email`).
    pub token: &'a str,
    pub email: Option<&'a str>,
}

/// `/verify`: uses the token and returns a session.
pub async fn verify(
    state: &AppState,
    req: VerifyRequest<'_>,
    origin: &Origin,
) -> Result<Value, AuthError> {
    let ip = origin.limit_key();
    accounts::limit(
        state,
        &format!("auth:verify:ip:{ip}"),
        accounts::per_ip(state),
    )
    .await?;
    accounts::limit(
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
        Some(e) => Some(accounts::parse_email(e).map_err(|_| otp_expired())?),
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
            if accounts::by_email(&mut tx, &new_email)
                .await?
                .is_some_and(|a| a.user_id != user_id)
            {
                return Err(email_exists());
            }
            accounts::act_as(&mut tx, user_id).await?;
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
    state: &AppState,
    email: &str,
    redirect_to: Option<&str>,
    origin: &Origin,
) -> Result<(), AuthError> {
    let ip = origin.limit_key();
    accounts::limit(
        state,
        &format!("auth:recover:ip:{ip}"),
        accounts::per_ip(state),
    )
    .await?;
    if email.trim().is_empty() {
        return Err(AuthError::validation("Password recovery requires an email"));
    }
    // Per (address, client): a stranger asking for the owner's address
    // does not block the owner's own request. Emails to one address are
    // spaced a minute apart below whoever asks.
    let normalized = email.trim().to_lowercase();
    accounts::limit(
        state,
        &format!("auth:recover:email:{normalized}|{ip}"),
        RECOVER_PER_EMAIL,
    )
    .await?;
    let email = accounts::parse_email(email)?;

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

/// Deletes the user's tokens of `kind` (used or not).
pub async fn void_tokens(
    conn: &mut PgConnection,
    user_id: Uuid,
    kind: TokenKind,
) -> Result<(), AuthError> {
    sqlx::query("delete from app.auth_one_time_tokens where user_id = $1 and kind = $2")
        .bind(user_id)
        .bind(kind.as_str())
        .execute(conn)
        .await?;
    Ok(())
}

/// 422 `reauthentication_not_valid`: a wrong, used or expired nonce.
pub fn nonce_not_valid() -> AuthError {
    AuthError::unprocessable(
        "reauthentication_not_valid",
        "Nonce has expired or is invalid",
    )
}

/// A nonce is six digits; it is stored as the SHA-256 of the user and the
/// digits (so equal nonces of two users never collide).
fn nonce_hash(user_id: Uuid, nonce: &str) -> Vec<u8> {
    sha256(format!("reauthentication:{user_id}:{nonce}").as_bytes())
}

/// Uses the user's live reauthentication nonce up; false when it is not
/// (or no longer) live.
pub async fn use_reauthentication_nonce(
    conn: &mut PgConnection,
    user_id: Uuid,
    nonce: &str,
) -> Result<bool, AuthError> {
    if nonce.len() > 16 {
        return Ok(false);
    }
    let used = sqlx::query(
        "update app.auth_one_time_tokens set used_at = now()
         where token_hash = $1 and user_id = $2 and kind = $3
           and used_at is null and expires_at > now()",
    )
    .bind(nonce_hash(user_id, nonce))
    .bind(user_id)
    .bind(REAUTHENTICATION)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(used == 1)
}

/// `GET /reauthenticate`: emails the signed-in user a six-digit nonce (an
/// hour, once) that `PUT /user` takes as `nonce` for a new password or
/// email when the sign-in is older than `AUTH_REAUTH_WINDOW_SECS`. At most
/// one email a minute per user (429 `over_email_send_rate_limit`); a new
/// nonce voids the earlier one.
pub async fn reauthenticate(state: &AppState, caller: sessions::Caller) -> Result<(), AuthError> {
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
            let mut e = AuthError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "over_email_send_rate_limit",
                format!("For security purposes, you can only request this after {wait} seconds."),
            );
            e.retry_after = Some(wait as u64);
            return Err(e);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn under(url: &str, base: &str) -> bool {
        is_under(&Url::parse(url).unwrap(), &Url::parse(base).unwrap())
    }

    #[test]
    fn redirects_stay_under_their_base() {
        assert!(under("https://app.example.com/", "https://app.example.com"));
        assert!(under(
            "https://app.example.com/a/b?x=1",
            "https://app.example.com/"
        ));
        assert!(under(
            "https://app.example.com/app",
            "https://app.example.com/app"
        ));
        assert!(under(
            "https://app.example.com/app/x",
            "https://app.example.com/app"
        ));
        assert!(!under(
            "https://app.example.com/appx",
            "https://app.example.com/app"
        ));
        assert!(!under("https://evil.example/", "https://app.example.com"));
        assert!(!under(
            "https://app.example.com.evil.example/",
            "https://app.example.com"
        ));
        assert!(!under(
            "https://user@app.example.com/",
            "https://app.example.com"
        ));
        assert!(!under("http://app.example.com/", "https://app.example.com"));
        assert!(!under(
            "https://app.example.com:8443/",
            "https://app.example.com"
        ));
        assert!(under(
            "https://app.example.com:443/",
            "https://app.example.com"
        ));
        assert!(!under(
            "https://app.example.com/appx",
            "https://app.example.com/app/"
        ));
        assert!(!under("javascript:alert(1)", "https://app.example.com"));
    }

    #[test]
    fn verification_types() {
        assert_eq!(
            TokenKind::from_type("signup"),
            Some(TokenKind::Confirmation)
        );
        assert_eq!(TokenKind::from_type("email"), Some(TokenKind::Confirmation));
        assert_eq!(TokenKind::from_type("recovery"), Some(TokenKind::Recovery));
        assert_eq!(
            TokenKind::from_type("email_change"),
            Some(TokenKind::EmailChange)
        );
        assert_eq!(TokenKind::from_type("magiclink"), None);
    }
}
