//! One-time tokens the identity server emails: confirmation, recovery,
//! magic-link and email-change links, and reauthentication nonces. Only
//! their hashes are stored; issuing a newer one voids the older ones of its
//! kind.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sqlx::PgConnection;
use url::Url;
use uuid::Uuid;

use super::errors::AuthError;
use super::sessions::sha256;
use super::state::IdentityState;

/// What a one-time token is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    Confirmation,
    Recovery,
    EmailChange,
}

/// The kind of the reauthentication nonces (never accepted by `/verify`).
pub(super) const REAUTHENTICATION: &str = "reauthentication";

/// How long a reauthentication nonce lives.
pub(super) const REAUTHENTICATION_TTL_SECS: f64 = 3600.0;

/// Least time between two reauthentication emails to one user.
pub(super) const REAUTHENTICATION_RESEND_SECS: i64 = 60;

impl TokenKind {
    pub(super) fn as_str(self) -> &'static str {
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
    AuthError::forbidden("otp_expired", "Email link is invalid or has expired")
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
    state: &IdentityState,
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
pub fn allowed_redirect(state: &IdentityState, candidate: &str) -> Option<Url> {
    let auth = &state.config.auth;
    let url = Url::parse(candidate.trim()).ok()?;
    (is_under(&url, &auth.site_url) || auth.redirect_allow_list.iter().any(|b| is_under(&url, b)))
        .then_some(url)
}

/// Where `/verify` sends the browser: an allowed `redirect_to`, else `AUTH_SITE_URL`.
pub fn redirect_target(state: &IdentityState, redirect_to: Option<&str>) -> Url {
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
pub(super) fn nonce_hash(user_id: Uuid, nonce: &str) -> Vec<u8> {
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
