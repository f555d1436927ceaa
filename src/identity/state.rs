//! What the identity server needs of the process: the pool, the signing
//! keys and the verifier, password hashing, brute-force limits, the ended
//! sessions it announces, the org cache it invalidates, and the settings.
//! The composition root builds it; the server's router asks for
//! `IdentityState: FromRef<S>`.

use std::sync::Arc;

use sqlx::PgPool;

use crate::auth::ended_sessions::EndedSessions;
use crate::auth::jwt::Verifier;
use crate::auth::keys::KeyRing;
use crate::auth::password::Hasher;
use crate::config::Config;
use crate::core::cache::Cache;
use crate::core::ratelimit::RateLimiter;

/// Cloned once per request: one `Arc`.
#[derive(Clone)]
pub struct IdentityState(Arc<Inner>);

pub struct Inner {
    pub pool: PgPool,
    pub cache: Cache,
    pub config: Arc<Config>,
    /// The keys that sign Tenantry's own access tokens.
    pub keys: KeyRing,
    pub verifier: Arc<Verifier>,
    /// Password hashing (argon2id on a bounded pool).
    pub hasher: Hasher,
    /// Brute-force limits (Redis; in this process's memory while Redis is down).
    pub limiter: RateLimiter,
    /// Sessions ended before their access tokens expire.
    pub ended_sessions: EndedSessions,
}

impl IdentityState {
    pub fn new(inner: Inner) -> Self {
        IdentityState(Arc::new(inner))
    }
}

impl std::ops::Deref for IdentityState {
    type Target = Inner;

    fn deref(&self) -> &Inner {
        &self.0
    }
}
