//! Brute-force limits of the identity server (per client IP and per key).

use super::errors::AuthError;
use super::state::IdentityState;
use crate::core::ratelimit::{Decision, Quota};

pub(super) async fn limit(state: &IdentityState, key: &str, quota: Quota) -> Result<(), AuthError> {
    match state.limiter.check(key, quota).await {
        Decision::Allowed { .. } => Ok(()),
        Decision::Limited { retry_after } => Err(AuthError::rate_limited(retry_after)),
    }
}

/// The per-client-IP quota of sign-up, sign-in, verify and recover.
pub fn per_ip(state: &IdentityState) -> Quota {
    Quota::per_minute(state.config.auth.ip_limit_per_min)
}
