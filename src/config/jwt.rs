//! Verification of access tokens Tenantry did not sign (Supabase's): the
//! HS256 secret, a JWKS endpoint, and the claims required of them.

use std::net::SocketAddr;
use std::time::Duration;

use secrecy::SecretSlice;
use url::Url;

use super::parse::{ConfigError, malformed, parse_bool};

/// Only used by `tenantry dev` when `JWT_SECRET` is unset; never in production.
pub const DEV_JWT_SECRET: &str = "tenantry-dev-secret-do-not-use-in-production-0123456789";

#[derive(Clone, Debug)]
pub struct JwtConfig {
    /// HS256 secret (Supabase's "JWT secret").
    pub secret: Option<SecretSlice<u8>>,
    /// JWKS endpoint for ES256/RS256 keys.
    pub jwks_url: Option<Url>,
    pub issuer: Option<String>,
    pub audience: String,
    pub leeway: Duration,
    /// Tokens not signed by Tenantry count as email-verified only with an
    /// explicit top-level `email_verified: true` (`JWT_REQUIRE_EMAIL_VERIFIED`;
    /// default off: Supabase's rule, where a missing claim means verified).
    pub require_email_verified: bool,
}

impl JwtConfig {
    pub(super) fn from_lookup(
        dev: bool,
        bind_addr: SocketAddr,
        get: &impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let secret = match get("JWT_SECRET") {
            Some(s) if s.len() < 32 => {
                return Err(malformed("JWT_SECRET", "must be at least 32 characters"));
            }
            Some(s) => Some(s.into_bytes()),
            // The public development secret only where nothing else verifies
            // tokens and nobody but this machine can reach the server.
            None if dev && get("JWKS_URL").is_none() => {
                if !bind_addr.ip().is_loopback() {
                    return Err(ConfigError::Missing {
                        name: "JWT_SECRET",
                        hint: " when the dev server listens beyond loopback",
                    });
                }
                Some(DEV_JWT_SECRET.as_bytes().to_vec())
            }
            None => None,
        };
        let jwks_url = get("JWKS_URL")
            .map(|u| Url::parse(&u).map_err(|e| malformed("JWKS_URL", e)))
            .transpose()?;
        if let Some(u) = &jwks_url
            && !matches!(u.scheme(), "http" | "https")
        {
            return Err(malformed("JWKS_URL", "scheme must be http or https"));
        }
        if secret.is_none() && jwks_url.is_none() {
            return Err(ConfigError::Missing {
                name: "JWT_SECRET",
                hint: " (or JWKS_URL): no way to verify access tokens",
            });
        }
        Ok(JwtConfig {
            secret: secret.map(SecretSlice::from),
            jwks_url,
            issuer: get("JWT_ISSUER"),
            audience: get("JWT_AUDIENCE").unwrap_or_else(|| "authenticated".to_owned()),
            leeway: Duration::from_secs(30),
            require_email_verified: parse_bool(get, "JWT_REQUIRE_EMAIL_VERIFIED", false)?,
        })
    }
}
