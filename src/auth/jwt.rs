//! Access-token verification (RFC 8725): the algorithm comes from the key,
//! never from the token. HS256 tokens are checked with `JWT_SECRET`;
//! ES256/RS256 tokens name a key by `kid` from the JWKS at `JWKS_URL`, cached
//! for at most ten minutes and refetched on an unknown `kid` at most once per
//! `min_refetch`. `jku`, `x5u` and embedded `jwk` headers are ignored.
//!
//! With a [`KeyRing`] attached, ES256 tokens whose `kid` names one of
//! Tenantry's own keys verify with that key, and must carry `iss` equal to
//! `AUTH_ISSUER`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use secrecy::ExposeSecret;
use serde::Deserialize;
use tokio::sync::{Mutex, RwLock};
use url::Url;

use crate::auth::keys::KeyRing;
use crate::config::JwtConfig;

/// Longest token accepted; Supabase tokens are around 1 KiB.
const MAX_TOKEN_LEN: usize = 8 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("malformed token")]
    Malformed,
    #[error("token signed with an unknown key")]
    UnknownKey,
    #[error("token algorithm does not match its key")]
    AlgorithmMismatch,
    #[error("token is expired")]
    Expired,
    #[error("token is not yet valid")]
    NotYetValid,
    #[error("token audience is not accepted")]
    Audience,
    #[error("token issuer is not accepted")]
    Issuer,
    #[error("invalid token signature")]
    Signature,
    #[error("invalid token: {0}")]
    Invalid(&'static str),
    /// The token names a key this process does not have and cannot load
    /// now (the database is unreachable): not the token's fault.
    #[error("the signing keys cannot be read right now")]
    KeysUnavailable,
}

/// The claims Tenantry reads from a Supabase access token.
#[derive(Debug, Clone, Deserialize)]
pub struct Claims {
    pub sub: Option<String>,
    pub email: Option<String>,
    pub role: Option<String>,
    pub exp: Option<i64>,
    pub session_id: Option<String>,
    #[serde(default)]
    pub is_anonymous: bool,
    pub email_verified: Option<bool>,
    #[serde(default)]
    pub user_metadata: serde_json::Value,
    /// Signed by one of Tenantry's own keys (set by [`Verifier::verify`],
    /// never read from the token).
    #[serde(skip)]
    pub own: bool,
}

impl Claims {
    /// Whether a token not signed by Tenantry vouches for its email. By
    /// default, Supabase's rule: Supabase issues sessions to email users only
    /// once the address is confirmed (or confirmation is off), so a missing
    /// claim means verified; an explicit `email_verified: false`, top-level
    /// or in `user_metadata`, and anonymous users count as unverified. With
    /// `require_explicit` (`JWT_REQUIRE_EMAIL_VERIFIED`), only a top-level
    /// `email_verified: true` counts: `user_metadata` is the user's to write.
    ///
    /// Tenantry's own tokens are never judged by their claims: their
    /// account's row says whether the address is confirmed.
    pub fn email_verified(&self, require_explicit: bool) -> bool {
        if self.is_anonymous || self.email.is_none() {
            return false;
        }
        if require_explicit {
            return self.email_verified == Some(true);
        }
        let meta = self
            .user_metadata
            .get("email_verified")
            .and_then(|v| v.as_bool());
        self.email_verified.or(meta).unwrap_or(true)
    }
}

pub struct Verifier {
    secret: Option<Arc<DecodingKey>>,
    jwks: Option<JwksCache>,
    /// Tenantry's own signing keys.
    keyring: Option<KeyRing>,
    validation_base: Validation,
}

/// A token's verification key, and whose it is.
struct TokenKey {
    key: Arc<DecodingKey>,
    alg: Algorithm,
    own: bool,
}

impl Verifier {
    pub fn new(cfg: &JwtConfig) -> anyhow::Result<Self> {
        Self::with_jwks_timing(cfg, Duration::from_secs(600), Duration::from_secs(30))
    }

    /// `max_age`: how long fetched keys are trusted; `min_refetch`: least time
    /// between two fetches triggered by unknown `kid`s.
    pub fn with_jwks_timing(
        cfg: &JwtConfig,
        max_age: Duration,
        min_refetch: Duration,
    ) -> anyhow::Result<Self> {
        let mut v = Validation::new(Algorithm::HS256);
        v.leeway = cfg.leeway.as_secs();
        v.validate_exp = true;
        v.validate_nbf = true;
        v.set_audience(&[&cfg.audience]);
        // jsonwebtoken checks `iss` only when present: require it when configured.
        if let Some(iss) = &cfg.issuer {
            v.set_issuer(&[iss]);
            v.set_required_spec_claims(&["exp", "aud", "iss"]);
        } else {
            v.set_required_spec_claims(&["exp", "aud"]);
        }
        let jwks = match &cfg.jwks_url {
            Some(url) => Some(JwksCache::new(url.clone(), max_age, min_refetch)?),
            None => None,
        };
        Ok(Verifier {
            secret: cfg
                .secret
                .as_ref()
                .map(|s| Arc::new(DecodingKey::from_secret(s.expose_secret()))),
            jwks,
            keyring: None,
            validation_base: v,
        })
    }

    /// Also accepts ES256 tokens signed by Tenantry's own keys.
    pub fn with_keyring(mut self, keyring: KeyRing) -> Self {
        self.keyring = Some(keyring);
        self
    }

    pub fn keyring(&self) -> Option<&KeyRing> {
        self.keyring.as_ref()
    }

    /// Fetches the JWKS once at start so the first requests need not wait.
    pub async fn warm_up(&self) {
        if let Some(jwks) = &self.jwks
            && let Err(e) = jwks.refresh(true).await
        {
            tracing::warn!(error = %e, "could not fetch JWKS at start; will retry on demand");
        }
    }

    /// Verifies a platform key: a Supabase-style `service_role` JWT (as in
    /// Supabase, signed with the JWT secret, HS256, usually without `aud`).
    /// Anything else, including a valid user token, is refused.
    pub fn verify_service(&self, token: &str) -> Result<Claims, TokenError> {
        self.verify_api_key_roles(token, &["service_role"])
    }

    /// Verifies a Supabase-style API key: an HS256 JWT signed with the JWT
    /// secret whose `role` is `anon` or `service_role` (the `apikey` header).
    pub fn verify_api_key(&self, token: &str) -> Result<Claims, TokenError> {
        self.verify_api_key_roles(token, &["anon", "service_role"])
    }

    fn verify_api_key_roles(&self, token: &str, roles: &[&str]) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN_LEN || token.split('.').count() != 3 {
            return Err(TokenError::Malformed);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        if header.alg != Algorithm::HS256 {
            return Err(TokenError::AlgorithmMismatch);
        }
        let Some(secret) = &self.secret else {
            return Err(TokenError::UnknownKey);
        };
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = self.validation_base.leeway;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp"]);
        let data = jsonwebtoken::decode::<Claims>(token, secret, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            match e.kind() {
                K::ExpiredSignature => TokenError::Expired,
                K::InvalidSignature => TokenError::Signature,
                _ => TokenError::Malformed,
            }
        })?;
        if !data
            .claims
            .role
            .as_deref()
            .is_some_and(|r| roles.contains(&r))
        {
            return Err(TokenError::Invalid(if roles == ["service_role"] {
                "the token's role is not service_role"
            } else {
                "the token's role is not anon or service_role"
            }));
        }
        Ok(data.claims)
    }

    pub async fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN_LEN || token.split('.').count() != 3 {
            return Err(TokenError::Malformed);
        }
        // Only `alg` and `kid` are read from the header; `jku`, `x5u` and `jwk`
        // are never followed or trusted.
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        // Asymmetric tokens name their key; HS256 tokens (which may also carry
        // a `kid` in Supabase) use the shared secret. Either way the key fixes
        // the one algorithm it verifies.
        let TokenKey { key, alg, own } = match (&header.kid, header.alg) {
            (_, Algorithm::HS256) => match &self.secret {
                Some(secret) => TokenKey {
                    key: secret.clone(),
                    alg: Algorithm::HS256,
                    own: false,
                },
                None => return Err(TokenError::UnknownKey),
            },
            (Some(kid), _) => self.asymmetric_key(kid).await?,
            _ => return Err(TokenError::UnknownKey),
        };
        if header.alg != alg {
            return Err(TokenError::AlgorithmMismatch);
        }
        let mut validation = self.validation_base.clone();
        validation.algorithms = vec![alg];
        if own && let Some(ring) = &self.keyring {
            // Our tokens name our issuer, whatever JWT_ISSUER says of Supabase's.
            validation.set_issuer(&[ring.issuer()]);
            validation.set_required_spec_claims(&["exp", "aud", "iss"]);
        }
        let data = jsonwebtoken::decode::<Claims>(token, &key, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            match e.kind() {
                K::ExpiredSignature => TokenError::Expired,
                K::ImmatureSignature => TokenError::NotYetValid,
                K::InvalidAudience => TokenError::Audience,
                K::InvalidIssuer => TokenError::Issuer,
                K::InvalidSignature => TokenError::Signature,
                K::InvalidAlgorithm => TokenError::AlgorithmMismatch,
                K::MissingRequiredClaim(_) => TokenError::Invalid("a required claim is missing"),
                _ => TokenError::Malformed,
            }
        })?;
        let mut claims = data.claims;
        claims.own = own;
        Ok(claims)
    }
}

impl Verifier {
    /// The key a `kid` names: ours (cached), then the JWKS's (which may
    /// refetch), then ours again after a reload (another process may have
    /// rotated the keys).
    async fn asymmetric_key(&self, kid: &str) -> Result<TokenKey, TokenError> {
        let own = |key| TokenKey {
            key,
            alg: Algorithm::ES256,
            own: true,
        };
        if let Some(ring) = &self.keyring
            && let Some(key) = ring.decoding_key(kid)
        {
            return Ok(own(key));
        }
        if let Some(jwks) = &self.jwks
            && let Some(k) = jwks.key(kid).await
        {
            return Ok(TokenKey {
                key: k.key.clone(),
                alg: k.alg,
                own: false,
            });
        }
        match &self.keyring {
            Some(ring) => match ring.decoding_key_fresh(kid).await {
                Ok(key) => key.map(own).ok_or(TokenError::UnknownKey),
                Err(_) => Err(TokenError::KeysUnavailable),
            },
            None => Err(TokenError::UnknownKey),
        }
    }
}

struct JwkKey {
    alg: Algorithm,
    key: Arc<DecodingKey>,
}

#[derive(Default)]
struct JwksState {
    keys: HashMap<String, Arc<JwkKey>>,
    fetched_at: Option<Instant>,
    last_attempt: Option<Instant>,
}

struct JwksCache {
    url: Url,
    client: reqwest::Client,
    state: RwLock<JwksState>,
    fetch_lock: Mutex<()>,
    max_age: Duration,
    min_refetch: Duration,
}

impl JwksCache {
    fn new(url: Url, max_age: Duration, min_refetch: Duration) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(JwksCache {
            url,
            client,
            state: RwLock::default(),
            fetch_lock: Mutex::new(()),
            max_age,
            min_refetch,
        })
    }

    async fn key(&self, kid: &str) -> Option<Arc<JwkKey>> {
        {
            let s = self.state.read().await;
            let fresh = s.fetched_at.is_some_and(|t| t.elapsed() < self.max_age);
            if fresh && let Some(k) = s.keys.get(kid) {
                return Some(k.clone());
            }
        }
        // Stale cache or unknown kid: one rate-limited refetch.
        if let Err(e) = self.refresh(false).await {
            tracing::warn!(error = %e, "JWKS refresh failed");
        }
        let s = self.state.read().await;
        let fresh = s.fetched_at.is_some_and(|t| t.elapsed() < self.max_age);
        if fresh {
            s.keys.get(kid).cloned()
        } else {
            None
        }
    }

    async fn refresh(&self, force: bool) -> anyhow::Result<()> {
        let _guard = self.fetch_lock.lock().await;
        {
            let s = self.state.read().await;
            if !force
                && let Some(t) = s.last_attempt
                && t.elapsed() < self.min_refetch
            {
                return Ok(());
            }
        }
        self.state.write().await.last_attempt = Some(Instant::now());
        let mut res = self
            .client
            .get(self.url.clone())
            .send()
            .await?
            .error_for_status()?;
        // A JWKS is a few KiB; refuse to buffer more than 1 MiB of it.
        let mut bytes = Vec::new();
        while let Some(chunk) = res.chunk().await? {
            if bytes.len() + chunk.len() > 1024 * 1024 {
                anyhow::bail!("JWKS response is larger than 1 MiB");
            }
            bytes.extend_from_slice(&chunk);
        }
        let body: JwkSet = serde_json::from_slice(&bytes)?;
        let keys = body
            .keys
            .iter()
            .filter_map(|k| Some((k.kid.clone()?, Arc::new(k.decoding_key()?))))
            .collect();
        let mut s = self.state.write().await;
        s.keys = keys;
        s.fetched_at = Some(Instant::now());
        Ok(())
    }
}

#[derive(Deserialize)]
struct JwkSet {
    keys: Vec<RawJwk>,
}

#[derive(Deserialize)]
struct RawJwk {
    kty: String,
    kid: Option<String>,
    alg: Option<String>,
    #[serde(rename = "use")]
    use_: Option<String>,
    crv: Option<String>,
    x: Option<String>,
    y: Option<String>,
    n: Option<String>,
    e: Option<String>,
}

impl RawJwk {
    /// The key and the one algorithm it may verify; keys of other kinds,
    /// curves or uses are skipped.
    fn decoding_key(&self) -> Option<JwkKey> {
        if self.use_.as_deref().is_some_and(|u| u != "sig") {
            return None;
        }
        let (alg, key) = match (self.kty.as_str(), self.crv.as_deref()) {
            ("EC", Some("P-256")) => (
                Algorithm::ES256,
                DecodingKey::from_ec_components(self.x.as_deref()?, self.y.as_deref()?).ok()?,
            ),
            ("RSA", _) => (
                Algorithm::RS256,
                DecodingKey::from_rsa_components(self.n.as_deref()?, self.e.as_deref()?).ok()?,
            ),
            _ => return None,
        };
        let declared = self.alg.as_deref();
        let matches = match alg {
            Algorithm::ES256 => declared.is_none_or(|a| a == "ES256"),
            _ => declared.is_none_or(|a| a == "RS256"),
        };
        matches.then(|| JwkKey {
            alg,
            key: Arc::new(key),
        })
    }
}
