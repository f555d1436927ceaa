//! What the auth extractors ([`AuthUser`](super::AuthUser),
//! [`PlatformAdmin`](super::principal::PlatformAdmin), [`OrgContext`](super::OrgContext)
//! and its kin) need of the server: the token verifier, the ended sessions,
//! and the pool and cache to check memberships. A router whose handlers use
//! those extractors asks for `AuthState: FromRef<S>`; the composition root
//! provides it.

use std::sync::Arc;

use sqlx::PgPool;

use crate::auth::ended_sessions::EndedSessions;
use crate::auth::jwt::Verifier;
use crate::core::cache::Cache;

/// Cloned once per extraction: one `Arc`.
#[derive(Clone)]
pub struct AuthState(Arc<Inner>);

pub struct Inner {
    pub verifier: Arc<Verifier>,
    /// Sessions ended before their access tokens expire (refused at once).
    pub ended_sessions: EndedSessions,
    pub pool: PgPool,
    /// Memberships and first pages of org reads.
    pub cache: Cache,
    /// `JWT_REQUIRE_EMAIL_VERIFIED`: only tokens whose email is verified count
    /// as proof of that address (for tokens Tenantry did not sign).
    pub require_email_verified: bool,
}

impl AuthState {
    pub fn new(
        verifier: Arc<Verifier>,
        ended_sessions: EndedSessions,
        pool: PgPool,
        cache: Cache,
        require_email_verified: bool,
    ) -> Self {
        AuthState(Arc::new(Inner {
            verifier,
            ended_sessions,
            pool,
            cache,
            require_email_verified,
        }))
    }
}

impl std::ops::Deref for AuthState {
    type Target = Inner;

    fn deref(&self) -> &Inner {
        &self.0
    }
}
