//! The auth server (`/auth/v1`) and the access tokens Tenantry signs: the
//! key-encryption secret of the signing keys, token lifetime and issuer, the
//! links in auth emails, and the limits on sign-up and sign-in.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretBox};
use url::Url;

use super::parse::{ConfigError, malformed, parse_bool, parse_or, secs_in};

/// Tenantry's own access tokens: ES256 keys kept encrypted in the database.
#[derive(Clone, Debug)]
pub struct AuthConfig {
    /// Key-encryption key of the signing keys (`AUTH_KEYS_SECRET`). Unset:
    /// keys already in the database are published and verify, but nothing
    /// is signed and no key is created.
    pub keys_secret: Option<KeysSecret>,
    /// Lifetime of access tokens (`JWT_EXPIRY_SECS`).
    pub access_token_ttl: Duration,
    /// `iss` of the access tokens (`AUTH_ISSUER`).
    pub issuer: String,
    /// Sign-ups are confirmed at once, without an email (`AUTH_AUTOCONFIRM`;
    /// default: on under `dev`, off otherwise).
    pub autoconfirm: bool,
    /// Base URL of the links in auth emails (`AUTH_SITE_URL`, default `APP_URL`).
    pub site_url: Url,
    /// How long after a refresh token was rotated its parent still returns
    /// the same new token instead of revoking the session
    /// (`AUTH_REFRESH_REUSE_INTERVAL_SECS`, default 10).
    pub refresh_reuse_interval: Duration,
    /// `POST /auth/v1/signup` answers `signup_disabled` (`AUTH_DISABLE_SIGNUP`).
    pub disable_signup: bool,
    /// Where clients reach `/auth/v1`, for the links in auth emails
    /// (`AUTH_EXTERNAL_URL`, default `AUTH_ISSUER`); always ends in `/`.
    pub external_url: Url,
    /// Besides URLs under `site_url`, where `/verify` may redirect
    /// (`AUTH_REDIRECT_ALLOW_LIST`: comma-separated URL prefixes).
    pub redirect_allow_list: Vec<Url>,
    /// Requests a minute per client IP to sign-up, sign-in, verify and
    /// recover (`AUTH_IP_LIMIT_PER_MIN`, default 30; raise it where many
    /// users share an address).
    pub ip_limit_per_min: u32,
    /// How long after a session's sign-in `PUT /user` may change its email
    /// or password without a reauthentication nonce
    /// (`AUTH_REAUTH_WINDOW_SECS`, default 600).
    pub reauth_window: Duration,
    /// Password hashes that may wait for a free core; past it, requests that
    /// hash answer 503 `busy` at once (`AUTH_HASH_QUEUE`, default 64).
    pub hash_queue: usize,
}

/// 32 secret bytes: the key-encryption key of the signing keys. Clones
/// share one copy; `Debug` never shows it.
#[derive(Clone, Debug)]
pub struct KeysSecret(Arc<SecretBox<[u8; 32]>>);

impl KeysSecret {
    pub fn new(bytes: [u8; 32]) -> Self {
        KeysSecret(Arc::new(SecretBox::new(Box::new(bytes))))
    }

    /// Whether this is the public development value.
    pub fn is_dev(&self) -> bool {
        self.expose_secret() == dev_auth_keys_secret().expose_secret()
    }
}

impl ExposeSecret<[u8; 32]> for KeysSecret {
    fn expose_secret(&self) -> &[u8; 32] {
        self.0.expose_secret()
    }
}

/// Only used by `tenantry dev` when `AUTH_KEYS_SECRET` is unset: a fixed,
/// public value, so development keys survive restarts. Never in production.
pub fn dev_auth_keys_secret() -> KeysSecret {
    use sha2::Digest as _;
    KeysSecret::new(
        sha2::Sha256::digest(b"tenantry-dev-auth-keys-secret-do-not-use-in-production").into(),
    )
}

pub const DEFAULT_AUTH_ISSUER: &str = "http://127.0.0.1:8080/auth/v1";

impl AuthConfig {
    pub(super) fn from_lookup(
        dev: bool,
        bind_addr: SocketAddr,
        get: &impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let keys_secret = match get("AUTH_KEYS_SECRET") {
            // The decoder's error would quote the offending character: name
            // the setting only.
            Some(v) => Some(parse_keys_secret(&v).ok_or_else(|| {
                malformed(
                    "AUTH_KEYS_SECRET",
                    "must be the base64 of 32 bytes (openssl rand -base64 32)",
                )
            })?),
            None if dev => {
                if !bind_addr.ip().is_loopback() {
                    return Err(ConfigError::Missing {
                        name: "AUTH_KEYS_SECRET",
                        hint: " when the dev server listens beyond loopback",
                    });
                }
                Some(dev_auth_keys_secret())
            }
            None => None,
        };
        let ttl = parse_or::<u64>(get, "JWT_EXPIRY_SECS", 3600)?;
        if !(60..=86400).contains(&ttl) {
            return Err(malformed("JWT_EXPIRY_SECS", "must be between 60 and 86400"));
        }
        let issuer = get("AUTH_ISSUER").unwrap_or_else(|| DEFAULT_AUTH_ISSUER.to_owned());
        if issuer.len() > 1024 || issuer.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(malformed(
                "AUTH_ISSUER",
                "must be at most 1024 characters without spaces",
            ));
        }
        // Defaults to APP_URL: a bad value is named as the setting it came from.
        let (site_name, site_url) = match get("AUTH_SITE_URL") {
            Some(v) => ("AUTH_SITE_URL", v),
            None => (
                "APP_URL",
                get("APP_URL").unwrap_or_else(|| "http://localhost:3000".to_owned()),
            ),
        };
        let site_url = Url::parse(&site_url).map_err(|e| malformed(site_name, e))?;
        if !matches!(site_url.scheme(), "http" | "https") {
            return Err(malformed(site_name, "scheme must be http or https"));
        }
        let reuse = parse_or::<u64>(get, "AUTH_REFRESH_REUSE_INTERVAL_SECS", 10)?;
        if reuse > 3600 {
            return Err(malformed(
                "AUTH_REFRESH_REUSE_INTERVAL_SECS",
                "must be between 0 and 3600",
            ));
        }
        let (external_name, external) = match get("AUTH_EXTERNAL_URL") {
            Some(v) => ("AUTH_EXTERNAL_URL", v),
            None => ("AUTH_ISSUER", issuer.clone()),
        };
        let mut external_url = Url::parse(&external).map_err(|e| {
            malformed(
                external_name,
                format!("{e} (set AUTH_EXTERNAL_URL to where clients reach /auth/v1)"),
            )
        })?;
        if !matches!(external_url.scheme(), "http" | "https") {
            return Err(malformed(external_name, "scheme must be http or https"));
        }
        if !external_url.path().ends_with('/') {
            let path = format!("{}/", external_url.path());
            external_url.set_path(&path);
        }
        let redirect_allow_list = get("AUTH_REDIRECT_ALLOW_LIST")
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(|v| {
                let u = Url::parse(v).map_err(|e| malformed("AUTH_REDIRECT_ALLOW_LIST", e))?;
                if u.cannot_be_a_base() {
                    return Err(malformed(
                        "AUTH_REDIRECT_ALLOW_LIST",
                        "entries must be URL prefixes like https://app.example.com/callback",
                    ));
                }
                Ok(u)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(AuthConfig {
            keys_secret,
            access_token_ttl: Duration::from_secs(ttl),
            issuer,
            autoconfirm: parse_bool(get, "AUTH_AUTOCONFIRM", dev)?,
            site_url,
            refresh_reuse_interval: Duration::from_secs(reuse),
            disable_signup: parse_bool(get, "AUTH_DISABLE_SIGNUP", false)?,
            external_url,
            redirect_allow_list,
            ip_limit_per_min: {
                let n = parse_or::<u32>(get, "AUTH_IP_LIMIT_PER_MIN", 30)?;
                if !(1..=1_000_000).contains(&n) {
                    return Err(malformed(
                        "AUTH_IP_LIMIT_PER_MIN",
                        "must be between 1 and 1000000",
                    ));
                }
                n
            },
            reauth_window: secs_in(get, "AUTH_REAUTH_WINDOW_SECS", 600, 0..=86_400)?,
            hash_queue: {
                let n = parse_or::<usize>(get, "AUTH_HASH_QUEUE", 64)?;
                if !(1..=100_000).contains(&n) {
                    return Err(malformed("AUTH_HASH_QUEUE", "must be between 1 and 100000"));
                }
                n
            },
        })
    }
}

/// Standard or URL-safe base64, padded or not, of exactly 32 bytes.
fn parse_keys_secret(value: &str) -> Option<KeysSecret> {
    use base64::Engine as _;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE};
    let v = value.trim().trim_end_matches('=');
    let padded = format!("{v}{}", "=".repeat((4 - v.len() % 4) % 4));
    let bytes = STANDARD
        .decode(&padded)
        .or_else(|_| URL_SAFE.decode(&padded))
        .ok()?;
    Some(KeysSecret::new(bytes.try_into().ok()?))
}
