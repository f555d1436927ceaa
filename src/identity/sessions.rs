//! Sessions, access tokens and rotating refresh tokens.
//!
//! A refresh token is `base64url(HMAC-SHA256(K, "refresh:<row id>:<session id>"))`
//! with `K` derived from `AUTH_KEYS_SECRET`; only its SHA-256 is stored. So
//! the server can recompute the token of any row (to hand the same new token
//! to a client that retries a refresh), while a database dump reveals none.
//!
//! Rotation (`grant_type=refresh_token`), under `FOR UPDATE` locks on the
//! token and its session (concurrent refreshes of one token are serialised):
//! * an unrevoked token is revoked and a child issued;
//! * a revoked token whose child is the session's active token (its newest
//!   unrevoked one), created within `AUTH_REFRESH_REUSE_INTERVAL_SECS`,
//!   returns that child again;
//! * any other revoked token is a replay: the session is revoked
//!   (`refresh_token_already_used`).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool, Postgres, Transaction};
use uuid::Uuid;

use super::errors::AuthError;
use super::state::IdentityState;
use super::store::{self, Account};
use crate::auth::ended_sessions::{Ending, end_sessions, record_ended};

/// A transaction of the auth server: the app role, with the auth tables visible.
pub async fn begin(pool: &PgPool) -> Result<Transaction<'static, Postgres>, AuthError> {
    Ok(crate::core::db::auth_tx(pool).await?)
}

/// HMAC-SHA256 (RFC 2104) of `msg` under `key`.
pub fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(msg);
    mac.finalize().into_bytes().into()
}

pub fn sha256(data: &[u8]) -> Vec<u8> {
    Sha256::digest(data).to_vec()
}

/// The key refresh tokens are derived with.
fn refresh_key(state: &IdentityState) -> Result<[u8; 32], AuthError> {
    let secret = state.config.auth.keys_secret.as_ref().ok_or_else(|| {
        AuthError::internal("AUTH_KEYS_SECRET is not set: this server cannot issue sessions")
    })?;
    Ok(hmac_sha256(
        secrecy::ExposeSecret::expose_secret(secret),
        b"tenantry auth refresh-token key v1",
    ))
}

fn refresh_token_of(key: &[u8; 32], id: i64, session_id: Uuid) -> String {
    URL_SAFE_NO_PAD.encode(hmac_sha256(
        key,
        format!("refresh:{id}:{session_id}").as_bytes(),
    ))
}

/// A new refresh token row in `session_id`; returns the plaintext token.
async fn insert_refresh_token(
    conn: &mut PgConnection,
    key: &[u8; 32],
    session_id: Uuid,
    user_id: Uuid,
    parent_id: Option<i64>,
) -> Result<String, AuthError> {
    let id: i64 = sqlx::query_scalar(
        "select nextval(pg_get_serial_sequence('app.auth_refresh_tokens', 'id'))",
    )
    .fetch_one(&mut *conn)
    .await?;
    let token = refresh_token_of(key, id, session_id);
    sqlx::query(
        "insert into app.auth_refresh_tokens (id, token_hash, session_id, user_id, parent_id)
         values ($1, $2, $3, $4, $5)",
    )
    .bind(id)
    .bind(sha256(token.as_bytes()))
    .bind(session_id)
    .bind(user_id)
    .bind(parent_id)
    .execute(&mut *conn)
    .await?;
    Ok(token)
}

/// Where a sign-in came from.
#[derive(Debug, Clone, Default)]
pub struct Origin {
    /// The client (see [`crate::core::client_ip`]).
    pub ip: Option<std::net::IpAddr>,
    pub user_agent: Option<String>,
}

impl Origin {
    /// The bucket the client's limits count in (its IPv6 /64, or its IPv4).
    pub fn limit_key(&self) -> String {
        crate::core::client_ip::limit_key(self.ip)
    }
}

/// Starts a session for `account` and returns the session response.
pub async fn start(
    state: &IdentityState,
    conn: &mut PgConnection,
    account: &Account,
    origin: &Origin,
) -> Result<Value, AuthError> {
    let key = refresh_key(state)?;
    let session_id = Uuid::new_v4();
    let created_at: DateTime<Utc> = sqlx::query_scalar(
        "insert into app.auth_sessions (id, user_id, user_agent, ip) values ($1, $2, $3, $4)
         returning created_at",
    )
    .bind(session_id)
    .bind(account.user_id)
    .bind(origin.user_agent.as_deref().map(|s| truncate(s, 512)))
    .bind(origin.ip.map(|ip| ip.to_string()))
    .fetch_one(&mut *conn)
    .await?;
    let refresh = insert_refresh_token(conn, &key, session_id, account.user_id, None).await?;
    response(state, account, session_id, created_at, refresh)
}

fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The session response: a fresh access token, the refresh token and the user.
pub fn response(
    state: &IdentityState,
    account: &Account,
    session_id: Uuid,
    session_started: DateTime<Utc>,
    refresh_token: String,
) -> Result<Value, AuthError> {
    let now = Utc::now().timestamp();
    let ttl = state.keys.access_token_ttl().as_secs() as i64;
    let claims = json!({
        "iss": state.keys.issuer(),
        "sub": account.user_id,
        "aud": "authenticated",
        "exp": now + ttl,
        "iat": now,
        "email": account.email,
        "phone": "",
        "app_metadata": account.app_metadata,
        "user_metadata": account.user_metadata,
        "role": "authenticated",
        "aal": "aal1",
        "amr": [{ "method": "password", "timestamp": session_started.timestamp() }],
        "session_id": session_id,
        "is_anonymous": false,
    });
    let access_token = state.keys.sign(&claims)?;
    Ok(json!({
        "access_token": access_token,
        "token_type": "bearer",
        "expires_in": ttl,
        "expires_at": now + ttl,
        "refresh_token": refresh_token,
        "user": account.user_json(),
    }))
}

#[derive(sqlx::FromRow)]
struct TokenRow {
    id: i64,
    session_id: Uuid,
    user_id: Uuid,
    revoked: bool,
    session_created_at: DateTime<Utc>,
    session_live: bool,
}

/// `grant_type=refresh_token`.
pub async fn refresh(state: &IdentityState, token: &str) -> Result<Value, AuthError> {
    let not_found = || {
        AuthError::bad_request(
            "refresh_token_not_found",
            "Invalid Refresh Token: Refresh Token Not Found",
        )
    };
    // Our tokens are 43 characters; anything far off cannot be one.
    if token.is_empty() || token.len() > 256 {
        return Err(not_found());
    }
    let key = refresh_key(state)?;
    let mut tx = begin(&state.pool).await?;
    // Locks the token and its session: refreshes of one session run one at a time.
    let row: Option<TokenRow> = sqlx::query_as(
        "select t.id, t.session_id, t.user_id, t.revoked,
                s.created_at as session_created_at,
                (s.not_after is null or s.not_after > now()) as session_live
         from app.auth_refresh_tokens t
         join app.auth_sessions s on s.id = t.session_id
         where t.token_hash = $1
         for update",
    )
    .bind(sha256(token.as_bytes()))
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else {
        return Err(not_found());
    };
    if !row.session_live {
        return Err(AuthError::bad_request(
            "session_not_found",
            "Invalid Refresh Token: Session Expired (Revoked by Newer Login)",
        ));
    }
    let account = store::by_id(&mut tx, row.user_id)
        .await?
        .ok_or_else(not_found)?;
    if account.is_banned() {
        return Err(AuthError::bad_request("user_banned", "User is banned"));
    }
    let new_token = if !row.revoked {
        sqlx::query(
            "update app.auth_refresh_tokens set revoked = true, updated_at = now() where id = $1",
        )
        .bind(row.id)
        .execute(&mut *tx)
        .await?;
        insert_refresh_token(&mut tx, &key, row.session_id, row.user_id, Some(row.id)).await?
    } else {
        // The session's active token: its newest unrevoked one.
        let active: Option<(i64, Option<i64>, bool)> = sqlx::query_as(
            "select id, parent_id, created_at > now() - make_interval(secs => $2)
             from app.auth_refresh_tokens
             where session_id = $1 and not revoked
             order by id desc limit 1",
        )
        .bind(row.session_id)
        .bind(state.config.auth.refresh_reuse_interval.as_secs_f64())
        .fetch_optional(&mut *tx)
        .await?;
        match active {
            Some((id, Some(parent), true)) if parent == row.id => {
                refresh_token_of(&key, id, row.session_id)
            }
            _ => {
                // A replay of a rotated token: someone else may hold the
                // session. Revoke all of it.
                sqlx::query(
                    "update app.auth_refresh_tokens set revoked = true, updated_at = now()
                     where session_id = $1 and not revoked",
                )
                .bind(row.session_id)
                .execute(&mut *tx)
                .await?;
                sqlx::query(
                    "update app.auth_sessions set not_after = now(), updated_at = now() where id = $1",
                )
                .bind(row.session_id)
                .execute(&mut *tx)
                .await?;
                let ended = record_ended(
                    &mut tx,
                    row.user_id,
                    row.session_id,
                    state.keys.access_token_ttl(),
                )
                .await?;
                tx.commit().await?;
                state.ended_sessions.announce(&[ended]).await;
                tracing::warn!(session_id = %row.session_id, "refresh token reused: session revoked");
                return Err(AuthError::bad_request(
                    "refresh_token_already_used",
                    "Invalid Refresh Token: Already Used",
                ));
            }
        }
    };
    sqlx::query(
        "update app.auth_sessions set refreshed_at = now(), updated_at = now() where id = $1",
    )
    .bind(row.session_id)
    .execute(&mut *tx)
    .await?;
    let res = response(
        state,
        &account,
        row.session_id,
        row.session_created_at,
        new_token,
    )?;
    tx.commit().await?;
    Ok(res)
}

pub fn session_not_found() -> AuthError {
    AuthError::forbidden(
        "session_not_found",
        "Session from session_id claim in JWT does not exist",
    )
}

/// A caller signed in with an access token whose user and session exist.
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    pub user_id: Uuid,
    pub session_id: Uuid,
    /// When the session began: the sign-in (password, or an emailed link)
    /// that created it. Refreshes do not move it.
    pub signed_in_at: DateTime<Utc>,
}

/// Checks `Authorization: Bearer <access token>` as GoTrue does: 401
/// `no_authorization` without one, 403 `bad_jwt` when it does not verify,
/// 403 `user_not_found` / `session_not_found` when they are gone.
pub async fn authenticate(
    state: &IdentityState,
    headers: &axum::http::HeaderMap,
) -> Result<Caller, AuthError> {
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, t)| scheme.eq_ignore_ascii_case("bearer") && !t.trim().is_empty())
        .map(|(_, t)| t.trim());
    let Some(token) = token else {
        return Err(AuthError::unauthorized(
            "no_authorization",
            "This endpoint requires a valid Bearer token",
        ));
    };
    let bad_jwt = |why: String| AuthError::forbidden("bad_jwt", format!("invalid JWT: {why}"));
    let claims = state.verifier.verify(token).await.map_err(|e| match e {
        crate::auth::jwt::TokenError::KeysUnavailable => AuthError::unavailable(),
        e => bad_jwt(e.to_string()),
    })?;
    let user_id = claims
        .sub
        .as_deref()
        .and_then(|s| s.parse::<Uuid>().ok())
        .ok_or_else(|| bad_jwt("sub claim must be a UUID".into()))?;
    let session_id = claims
        .session_id
        .as_deref()
        .and_then(|s| s.parse::<Uuid>().ok());
    let mut tx = begin(&state.pool).await?;
    let (user_exists, signed_in_at): (bool, Option<DateTime<Utc>>) = sqlx::query_as(
        "select exists (select 1 from app.auth_accounts where user_id = $1),
                (select created_at from app.auth_sessions
                 where id = $2 and user_id = $1
                   and (not_after is null or not_after > now()))",
    )
    .bind(user_id)
    .bind(session_id)
    .fetch_one(&mut *tx)
    .await?;
    tx.rollback().await?;
    if !user_exists {
        return Err(AuthError::forbidden(
            "user_not_found",
            "User from sub claim in JWT does not exist",
        ));
    }
    match (session_id, signed_in_at) {
        (Some(session_id), Some(signed_in_at)) => Ok(Caller {
            user_id,
            session_id,
            signed_in_at,
        }),
        _ => Err(session_not_found()),
    }
}

/// `POST /logout?scope=`: ends sessions (their refresh tokens go with
/// them, and their access tokens stop working on `/api/v1` too).
pub async fn logout(state: &IdentityState, caller: Caller, scope: &str) -> Result<(), AuthError> {
    let ending = match scope {
        "local" => Ending::One(caller.session_id),
        "global" => Ending::All,
        "others" => Ending::AllBut(caller.session_id),
        _ => {
            return Err(AuthError::validation(
                "Unsupported logout scope: use local, global or others",
            ));
        }
    };
    let mut tx = begin(&state.pool).await?;
    let ended = end_sessions(
        &mut tx,
        caller.user_id,
        ending,
        state.keys.access_token_ttl(),
    )
    .await?;
    tx.commit().await?;
    state.ended_sessions.announce(&ended).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231() {
        // Test case 2.
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn refresh_tokens_are_deterministic_per_row_and_session() {
        let k = [7u8; 32];
        let s = Uuid::new_v4();
        let t = refresh_token_of(&k, 1, s);
        assert_eq!(t, refresh_token_of(&k, 1, s));
        assert_eq!(t.len(), 43);
        assert_ne!(t, refresh_token_of(&k, 2, s));
        assert_ne!(t, refresh_token_of(&k, 1, Uuid::new_v4()));
        assert_ne!(t, refresh_token_of(&[8u8; 32], 1, s));
    }
}
