//! Tenantry's own access-token signing keys: ES256 (P-256) keys named by a
//! `kid`, kept in `app.auth_signing_keys` with the private key encrypted under
//! `AUTH_KEYS_SECRET`, and published as a JWKS.
//!
//! A key is `next` (published, so that relying parties learn it before it
//! signs), then `active` (the one key that signs), then `retired` (published
//! and verifying until `expires_at`, after the last token it signed has
//! expired), then pruned. [`KeyRing::rotate`] moves every key one step in one
//! transaction, so rotating never invalidates a token and never signs with a
//! key nobody has seen yet.
//!
//! Each process caches the keys and reloads them every 30 s, and at once
//! (at most once a second) when a token names a `kid` it does not know.

use crate::core::db::{SystemScope, system_tx};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use anyhow::Context as _;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use serde::Serialize;
use serde_json::{Value, json};
use sqlx::{PgPool, Postgres, Transaction};

use crate::config::{Config, KeysSecret};
use secrecy::ExposeSecret;

/// How often each process reloads the keys.
pub const REFRESH_EVERY: Duration = Duration::from_secs(30);
/// Least time between two reloads caused by an unknown `kid`.
const UNKNOWN_KID_REFRESH: Duration = Duration::from_secs(1);
/// A retired key stays published this long after the token lifetime: the
/// verifiers' 60 s leeway, plus the time another process may go on signing
/// with it before it reloads.
pub const RETIRE_GRACE: Duration = Duration::from_secs(60 + REFRESH_EVERY.as_secs());
const NONCE_LEN: usize = 12;

/// Where a key is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyState {
    Next,
    Active,
    Retired,
}

impl KeyState {
    fn parse(s: &str) -> anyhow::Result<Self> {
        Ok(match s {
            "next" => KeyState::Next,
            "active" => KeyState::Active,
            "retired" => KeyState::Retired,
            other => anyhow::bail!("unknown signing key state {other:?}"),
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Next => "next",
            KeyState::Active => "active",
            KeyState::Retired => "retired",
        }
    }
}

impl std::fmt::Display for KeyState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A key as an operator sees it: never any private material.
#[derive(Clone, Debug, Serialize)]
pub struct KeyInfo {
    pub kid: String,
    pub alg: String,
    pub state: KeyState,
    pub created_at: DateTime<Utc>,
    pub activated_at: Option<DateTime<Utc>>,
    pub retired_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
}

impl KeyInfo {
    /// Whether the key is in the JWKS and verifies tokens at `now`.
    pub fn is_published(&self, now: DateTime<Utc>) -> bool {
        self.state != KeyState::Retired || self.expires_at.is_some_and(|e| e > now)
    }
}

/// What [`KeyRing::rotate`] did.
#[derive(Clone, Debug, Serialize)]
pub struct RotateReport {
    /// The key that signed until now (None on an empty table).
    pub retired: Option<String>,
    /// When the retired key leaves the JWKS.
    pub retired_expires_at: Option<DateTime<Utc>>,
    /// The key that signs from now on.
    pub active: String,
    /// How long the new active key had been published as `next`; None if it
    /// was created active (no `next` key existed).
    pub active_published_secs: Option<i64>,
    /// The new key waiting to sign.
    pub next: String,
    /// Retired keys past their expiry, deleted.
    pub pruned: Vec<String>,
    /// The kids in the JWKS after the rotation.
    pub published: Vec<String>,
}

#[derive(sqlx::FromRow)]
struct Row {
    kid: String,
    alg: String,
    public_jwk: Value,
    private_key: Vec<u8>,
    state: String,
    created_at: DateTime<Utc>,
    activated_at: Option<DateTime<Utc>>,
    retired_at: Option<DateTime<Utc>>,
    expires_at: Option<DateTime<Utc>>,
}

impl Row {
    fn info(&self) -> anyhow::Result<KeyInfo> {
        Ok(KeyInfo {
            kid: self.kid.clone(),
            alg: self.alg.clone(),
            state: KeyState::parse(&self.state)?,
            created_at: self.created_at,
            activated_at: self.activated_at,
            retired_at: self.retired_at,
            expires_at: self.expires_at,
        })
    }
}

const ROW_COLUMNS: &str =
    "kid, alg, public_jwk, private_key, state, created_at, activated_at, retired_at, expires_at";

/// One cached key.
struct CachedKey {
    info: KeyInfo,
    x: String,
    y: String,
    decoding: Arc<DecodingKey>,
    /// Only for keys that may sign (`active`, `next`) when a secret is set.
    encoding: Option<EncodingKey>,
}

struct Cache {
    keys: HashMap<String, Arc<CachedKey>>,
    loaded_at: Instant,
}

struct Inner {
    pool: PgPool,
    secret: Option<KeysSecret>,
    issuer: String,
    ttl: Duration,
    cache: RwLock<Cache>,
    /// Serialises reloads; holds when the last unknown-`kid` reload started.
    reload: tokio::sync::Mutex<Option<Instant>>,
}

/// The signing keys could not be read (the database is unreachable).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeysUnavailable;

/// The signing keys, cached in memory. Cloning is cheap (one `Arc`).
#[derive(Clone)]
pub struct KeyRing {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing")
            .field("issuer", &self.inner.issuer)
            .field("can_sign", &self.inner.secret.is_some())
            .finish_non_exhaustive()
    }
}

impl KeyRing {
    /// Loads the keys and keeps them fresh in the background. With
    /// `AUTH_KEYS_SECRET`, creates the first `active` and `next` keys when
    /// there are none (once, however many processes start together) and
    /// fails if the secret cannot decrypt the keys that sign. Without it the
    /// ring publishes and verifies the keys in the table but cannot sign.
    pub async fn load(pool: &PgPool, config: &Config) -> anyhow::Result<KeyRing> {
        if let Some(secret) = &config.auth.keys_secret {
            ensure_keys(pool, secret).await?;
        }
        let ring = KeyRing {
            inner: Arc::new(Inner {
                pool: pool.clone(),
                secret: config.auth.keys_secret.clone(),
                issuer: config.auth.issuer.clone(),
                ttl: config.auth.access_token_ttl,
                cache: RwLock::new(Cache {
                    keys: HashMap::new(),
                    loaded_at: Instant::now(),
                }),
                reload: tokio::sync::Mutex::new(None),
            }),
        };
        ring.refresh().await?;
        if !ring.can_sign() {
            tracing::info!(
                "AUTH_KEYS_SECRET is unset: publishing the stored signing keys, signing nothing"
            );
        }
        // The task holds the ring weakly: it ends once the last clone is dropped.
        let weak = Arc::downgrade(&ring.inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(REFRESH_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { break };
                KeyRing { inner }.refresh_if_stale().await;
            }
        });
        Ok(ring)
    }

    /// `iss` of the tokens this ring signs and accepts (`AUTH_ISSUER`).
    pub fn issuer(&self) -> &str {
        &self.inner.issuer
    }

    /// Lifetime of access tokens (`JWT_EXPIRY_SECS`).
    pub fn access_token_ttl(&self) -> Duration {
        self.inner.ttl
    }

    /// Whether this ring has the secret to sign.
    pub fn can_sign(&self) -> bool {
        self.inner.secret.is_some()
    }

    /// Signs `claims` (ES256, header `kid` and `typ: JWT`) with the active key.
    /// The claims are signed as given: set `iss`, `aud`, `exp` yourself.
    pub fn sign(&self, claims: &impl Serialize) -> anyhow::Result<String> {
        if self.inner.secret.is_none() {
            anyhow::bail!("AUTH_KEYS_SECRET is not set: this server cannot sign access tokens");
        }
        let key = {
            let cache = self.inner.cache.read().expect("key cache lock");
            cache
                .keys
                .values()
                .find(|k| k.info.state == KeyState::Active)
                .cloned()
        };
        let key = key.context("there is no active signing key")?;
        let encoding = key
            .encoding
            .as_ref()
            .context("the active signing key is not decrypted")?;
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(key.info.kid.clone());
        header.typ = Some("JWT".to_owned());
        jsonwebtoken::encode(&header, claims, encoding).context("cannot sign the token")
    }

    /// The published keys (`next`, `active`, and retired keys until they
    /// expire) as a JWK set.
    pub fn jwks(&self) -> Value {
        let now = Utc::now();
        let cache = self.inner.cache.read().expect("key cache lock");
        let mut keys: Vec<&Arc<CachedKey>> = cache
            .keys
            .values()
            .filter(|k| k.info.is_published(now))
            .collect();
        // Active first, then next, then retired ones, newest first.
        keys.sort_by_key(|k| {
            let rank = match k.info.state {
                KeyState::Active => 0,
                KeyState::Next => 1,
                KeyState::Retired => 2,
            };
            (rank, std::cmp::Reverse(k.info.created_at))
        });
        let keys: Vec<Value> = keys
            .iter()
            .map(|k| public_jwk(&k.info.kid, &k.x, &k.y))
            .collect();
        json!({ "keys": keys })
    }

    /// The published key named `kid`, from the cache.
    pub fn decoding_key(&self, kid: &str) -> Option<Arc<DecodingKey>> {
        let cache = self.inner.cache.read().expect("key cache lock");
        cache
            .keys
            .get(kid)
            .filter(|k| k.info.is_published(Utc::now()))
            .map(|k| k.decoding.clone())
    }

    /// The published key named `kid`; an unknown `kid` reloads the keys
    /// first (at most once a second), in case another process rotated them.
    pub async fn decoding_key_fresh(
        &self,
        kid: &str,
    ) -> Result<Option<Arc<DecodingKey>>, KeysUnavailable> {
        if let Some(k) = self.decoding_key(kid) {
            return Ok(Some(k));
        }
        {
            let mut last = self.inner.reload.lock().await;
            // Another task may have reloaded while this one waited.
            if let Some(k) = self.decoding_key(kid) {
                return Ok(Some(k));
            }
            if last.is_some_and(|t| t.elapsed() < UNKNOWN_KID_REFRESH) {
                return Ok(None);
            }
            if let Err(e) = self.reload_locked().await {
                // Not counted as a reload: the next unknown kid tries again
                // (the token may well be good: the database is away).
                tracing::warn!(error = %format!("{e:#}"), "cannot reload the signing keys");
                return Err(KeysUnavailable);
            }
            *last = Some(Instant::now());
        }
        Ok(self.decoding_key(kid))
    }

    /// Reloads the keys if the cache is older than [`REFRESH_EVERY`]; a
    /// failure is logged and the cached keys stay.
    pub async fn refresh_if_stale(&self) {
        if self.loaded_at().elapsed() < REFRESH_EVERY {
            return;
        }
        let _guard = self.inner.reload.lock().await;
        if self.loaded_at().elapsed() < REFRESH_EVERY {
            return;
        }
        if let Err(e) = self.reload_locked().await {
            tracing::warn!(error = %format!("{e:#}"), "cannot reload the signing keys");
        }
    }

    /// Reloads the keys now.
    pub async fn refresh(&self) -> anyhow::Result<()> {
        let _guard = self.inner.reload.lock().await;
        self.reload_locked().await
    }

    fn loaded_at(&self) -> Instant {
        self.inner.cache.read().expect("key cache lock").loaded_at
    }

    async fn reload_locked(&self) -> anyhow::Result<()> {
        let mut tx = begin(&self.inner.pool).await?;
        let rows: Vec<Row> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "select {ROW_COLUMNS} from app.auth_signing_keys"
        )))
        .fetch_all(&mut *tx)
        .await
        .context("cannot read the signing keys")?;
        tx.rollback().await?;
        let mut keys = HashMap::with_capacity(rows.len());
        for row in rows {
            let key = cache_key(&row, self.inner.secret.as_ref())?;
            keys.insert(row.kid, Arc::new(key));
        }
        *self.inner.cache.write().expect("key cache lock") = Cache {
            keys,
            loaded_at: Instant::now(),
        };
        Ok(())
    }

    /// Retires the active key (published until the tokens it signed have
    /// expired), promotes the `next` key, creates a new `next` key and prunes
    /// expired retired keys, in one transaction. Processes pick the change up
    /// within [`REFRESH_EVERY`].
    pub async fn rotate(pool: &PgPool, config: &Config) -> anyhow::Result<RotateReport> {
        let secret = config
            .auth
            .keys_secret
            .as_ref()
            .context("AUTH_KEYS_SECRET is required to rotate the signing keys")?;
        let mut tx = begin_locked(pool).await?;
        // Nothing changes unless this secret opens the keys that sign.
        let current = signing_rows(&mut tx).await?;
        for row in &current {
            decrypt(secret, &row.kid, &row.private_key)?;
        }
        let grace = config.auth.access_token_ttl + RETIRE_GRACE;
        let retired: Option<(String, DateTime<Utc>)> = sqlx::query_as(
            "update app.auth_signing_keys
             set state = 'retired', retired_at = now(),
                 expires_at = now() + make_interval(secs => $1)
             where state = 'active'
             returning kid, expires_at",
        )
        .bind(grace.as_secs_f64())
        .fetch_optional(&mut *tx)
        .await?;
        let promoted: Option<(String, i64)> = sqlx::query_as(
            "update app.auth_signing_keys set state = 'active', activated_at = now()
             where state = 'next'
             returning kid, extract(epoch from now() - created_at)::bigint",
        )
        .fetch_optional(&mut *tx)
        .await?;
        let (active, active_published_secs) = match promoted {
            Some((kid, secs)) => (kid, Some(secs)),
            None => (insert_new(&mut tx, secret, KeyState::Active).await?, None),
        };
        let next = insert_new(&mut tx, secret, KeyState::Next).await?;
        let pruned = prune_in(&mut tx).await?;
        let published: Vec<String> = sqlx::query_scalar(
            "select kid from app.auth_signing_keys
             where state <> 'retired' or expires_at > now()
             order by state = 'active' desc, state = 'next' desc, created_at desc",
        )
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let (retired, retired_expires_at) = retired.unzip();
        Ok(RotateReport {
            retired,
            retired_expires_at,
            active,
            active_published_secs,
            next,
            pruned,
            published,
        })
    }

    /// Deletes retired keys past their expiry; returns their kids.
    pub async fn prune(pool: &PgPool) -> anyhow::Result<Vec<String>> {
        let mut tx = begin_locked(pool).await?;
        let pruned = prune_in(&mut tx).await?;
        tx.commit().await?;
        Ok(pruned)
    }

    /// Every key in the table, newest first (no private material).
    pub async fn list(pool: &PgPool) -> anyhow::Result<Vec<KeyInfo>> {
        let mut tx = begin(pool).await?;
        let rows: Vec<Row> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "select {ROW_COLUMNS} from app.auth_signing_keys order by created_at desc, kid"
        )))
        .fetch_all(&mut *tx)
        .await?;
        tx.rollback().await?;
        rows.iter().map(Row::info).collect()
    }
}

/// A Supabase-style API key: an HS256 JWT signed with `JWT_SECRET` carrying
/// `iss` (`AUTH_ISSUER`), `role`, `iat` and an `exp` ten years on; no `sub`,
/// no `aud`. `role` is `anon` or `service_role`.
pub fn api_key(config: &Config, role: &str) -> anyhow::Result<String> {
    anyhow::ensure!(
        matches!(role, "anon" | "service_role"),
        "an API key's role is anon or service_role"
    );
    let secret = config
        .jwt
        .secret
        .as_ref()
        .map(|s| s.expose_secret())
        .context("JWT_SECRET is required to sign API keys")?;
    let iat = Utc::now().timestamp();
    let claims = json!({
        "iss": config.auth.issuer,
        "role": role,
        "iat": iat,
        // Ten years, leap days included.
        "exp": iat + 3652 * 24 * 3600,
    });
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .context("cannot sign the API key")
}

/// A transaction that may see the keys (`app.auth_keys = on`), as the app role.
async fn begin(pool: &PgPool) -> anyhow::Result<Transaction<'static, Postgres>> {
    system_tx(pool, SystemScope::SigningKeys)
        .await
        .context("cannot reach Postgres")
}

/// [`begin`], holding the lock that serialises every change to the keys.
async fn begin_locked(pool: &PgPool) -> anyhow::Result<Transaction<'static, Postgres>> {
    let mut tx = begin(pool).await?;
    sqlx::query("select pg_advisory_xact_lock(hashtext('tenantry.auth_signing_keys'))")
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

async fn signing_rows(tx: &mut Transaction<'static, Postgres>) -> anyhow::Result<Vec<Row>> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "select {ROW_COLUMNS} from app.auth_signing_keys where state in ('active', 'next')"
    )))
    .fetch_all(&mut **tx)
    .await?)
}

/// Creates the `active` and `next` keys that are missing (a missing active
/// key is the `next` one promoted if there is one).
async fn ensure_keys(pool: &PgPool, secret: &KeysSecret) -> anyhow::Result<()> {
    let mut tx = begin_locked(pool).await?;
    let rows = signing_rows(&mut tx).await?;
    // Never add a key beside keys this secret cannot open: the other
    // processes could not read one or the other.
    for row in &rows {
        decrypt(secret, &row.kid, &row.private_key)?;
    }
    let has = |s: &str| rows.iter().any(|r| r.state == s);
    if has("active") && has("next") {
        return Ok(());
    }
    if !has("active") {
        if has("next") {
            sqlx::query(
                "update app.auth_signing_keys set state = 'active', activated_at = now()
                 where state = 'next'",
            )
            .execute(&mut *tx)
            .await?;
        } else {
            insert_new(&mut tx, secret, KeyState::Active).await?;
        }
    }
    // Either way there is no `next` key now.
    insert_new(&mut tx, secret, KeyState::Next).await?;
    tx.commit().await?;
    tracing::info!("created the access-token signing keys that were missing");
    Ok(())
}

async fn insert_new(
    tx: &mut Transaction<'static, Postgres>,
    secret: &KeysSecret,
    state: KeyState,
) -> anyhow::Result<String> {
    let key = generate(secret)?;
    let inserted: Option<String> = sqlx::query_scalar(
        "insert into app.auth_signing_keys (kid, public_jwk, private_key, state, activated_at)
         values ($1, $2, $3, $4, case when $4 = 'active' then now() end)
         on conflict do nothing
         returning kid",
    )
    .bind(&key.kid)
    .bind(&key.public_jwk)
    .bind(&key.private_key)
    .bind(state.as_str())
    .fetch_optional(&mut **tx)
    .await?;
    inserted.with_context(|| format!("a {state} signing key already exists"))
}

async fn prune_in(tx: &mut Transaction<'static, Postgres>) -> anyhow::Result<Vec<String>> {
    Ok(sqlx::query_scalar(
        "delete from app.auth_signing_keys where state = 'retired' and expires_at <= now()
         returning kid",
    )
    .fetch_all(&mut **tx)
    .await?)
}

/// A new key: its kid, public JWK, and encrypted PKCS#8 DER.
struct NewKey {
    kid: String,
    public_jwk: Value,
    private_key: Vec<u8>,
}

fn generate(secret: &KeysSecret) -> anyhow::Result<NewKey> {
    let sk = p256::SecretKey::random(&mut p256::elliptic_curve::rand_core::OsRng);
    let der = sk
        .to_pkcs8_der()
        .map_err(|e| anyhow::anyhow!("cannot encode a signing key: {e}"))?;
    let kid = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 16]>());
    let (x, y) = coordinates(&sk.public_key());
    Ok(NewKey {
        public_jwk: public_jwk(&kid, &x, &y),
        private_key: encrypt(secret, &kid, der.as_bytes())?,
        kid,
    })
}

fn coordinates(pk: &p256::PublicKey) -> (String, String) {
    let point = pk.to_encoded_point(false);
    let x = point.x().expect("an uncompressed point has x");
    let y = point.y().expect("an uncompressed point has y");
    (URL_SAFE_NO_PAD.encode(x), URL_SAFE_NO_PAD.encode(y))
}

fn public_jwk(kid: &str, x: &str, y: &str) -> Value {
    json!({
        "kty": "EC",
        "crv": "P-256",
        "x": x,
        "y": y,
        "kid": kid,
        "alg": "ES256",
        "use": "sig",
    })
}

/// The cached form of a row: its public key, and for a key that may sign
/// (with a secret) its decrypted private key, checked against the public one.
fn cache_key(row: &Row, secret: Option<&KeysSecret>) -> anyhow::Result<CachedKey> {
    let info = row.info()?;
    anyhow::ensure!(
        info.alg == "ES256",
        "signing key {} has algorithm {:?}, not ES256",
        info.kid,
        info.alg
    );
    let field = |name: &str| {
        row.public_jwk
            .get(name)
            .and_then(Value::as_str)
            .with_context(|| format!("signing key {}'s public JWK has no {name}", info.kid))
    };
    anyhow::ensure!(
        field("kty")? == "EC" && field("crv")? == "P-256",
        "signing key {}'s public JWK is not a P-256 key",
        info.kid
    );
    let (x, y) = (field("x")?.to_owned(), field("y")?.to_owned());
    let decoding = DecodingKey::from_ec_components(&x, &y)
        .with_context(|| format!("signing key {}'s public JWK is malformed", info.kid))?;
    let encoding = match secret {
        Some(secret) if info.state != KeyState::Retired => {
            let der = decrypt(secret, &info.kid, &row.private_key)?;
            let sk = p256::SecretKey::from_pkcs8_der(&der)
                .map_err(|_| anyhow::anyhow!("signing key {} is not a P-256 key", info.kid))?;
            anyhow::ensure!(
                coordinates(&sk.public_key()) == (x.clone(), y.clone()),
                "signing key {}'s private key does not match its public JWK",
                info.kid
            );
            Some(EncodingKey::from_ec_der(&der))
        }
        _ => None,
    };
    Ok(CachedKey {
        info,
        x,
        y,
        decoding: Arc::new(decoding),
        encoding,
    })
}

fn cipher(secret: &KeysSecret) -> Aes256Gcm {
    Aes256Gcm::new(&Key::<Aes256Gcm>::from(*secret.expose_secret()))
}

/// AES-256-GCM under `secret` with a random nonce and `kid` as associated
/// data: nonce (12 bytes) || ciphertext and tag.
fn encrypt(secret: &KeysSecret, kid: &str, plaintext: &[u8]) -> anyhow::Result<Vec<u8>> {
    let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
    let ciphertext = cipher(secret)
        .encrypt(
            &nonce,
            Payload {
                msg: plaintext,
                aad: kid.as_bytes(),
            },
        )
        .map_err(|_| anyhow::anyhow!("cannot encrypt signing key {kid}"))?;
    let mut out = Vec::with_capacity(NONCE_LEN + ciphertext.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ciphertext);
    Ok(out)
}

fn decrypt(secret: &KeysSecret, kid: &str, blob: &[u8]) -> anyhow::Result<Vec<u8>> {
    let err = || anyhow::anyhow!("cannot decrypt signing key {kid}: is AUTH_KEYS_SECRET right?");
    if blob.len() <= NONCE_LEN {
        return Err(err());
    }
    let (nonce, ciphertext) = blob.split_at(NONCE_LEN);
    let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| err())?;
    cipher(secret)
        .decrypt(
            &Nonce::from(nonce),
            Payload {
                msg: ciphertext,
                aad: kid.as_bytes(),
            },
        )
        .map_err(|_| err())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(b: u8) -> KeysSecret {
        KeysSecret::new([b; 32])
    }

    #[test]
    fn encryption_round_trips_with_a_fresh_nonce() {
        let plain = b"pkcs8 der bytes";
        let a = encrypt(&secret(1), "kid-a", plain).unwrap();
        let b = encrypt(&secret(1), "kid-a", plain).unwrap();
        assert_ne!(a, b, "each encryption draws its own nonce");
        assert_eq!(a.len(), NONCE_LEN + plain.len() + 16);
        assert_eq!(decrypt(&secret(1), "kid-a", &a).unwrap(), plain);
        assert_eq!(decrypt(&secret(1), "kid-a", &b).unwrap(), plain);
    }

    #[test]
    fn a_wrong_secret_is_a_clear_error() {
        let blob = encrypt(&secret(1), "kid-a", b"x").unwrap();
        let err = decrypt(&secret(2), "kid-a", &blob).unwrap_err().to_string();
        assert_eq!(
            err,
            "cannot decrypt signing key kid-a: is AUTH_KEYS_SECRET right?"
        );
        // Truncated or tampered data fails the same way, without a panic.
        for bad in [&blob[..0], &blob[..NONCE_LEN], &blob[..blob.len() - 1]] {
            assert!(decrypt(&secret(1), "kid-a", bad).is_err());
        }
        let mut flipped = blob.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(decrypt(&secret(1), "kid-a", &flipped).is_err());
    }

    #[test]
    fn a_ciphertext_is_bound_to_its_kid() {
        let a = encrypt(&secret(1), "kid-a", b"key a").unwrap();
        let b = encrypt(&secret(1), "kid-b", b"key b").unwrap();
        // Swapped between rows, neither opens.
        let err = decrypt(&secret(1), "kid-b", &a).unwrap_err().to_string();
        assert!(err.contains("kid-b"), "{err}");
        assert!(decrypt(&secret(1), "kid-a", &b).is_err());
    }

    #[test]
    fn generated_keys_decrypt_match_and_sign() {
        let s = secret(7);
        let key = generate(&s).unwrap();
        assert_eq!(URL_SAFE_NO_PAD.decode(&key.kid).unwrap().len(), 16);
        assert_eq!(key.public_jwk["kid"], key.kid.as_str());
        assert_eq!(key.public_jwk["crv"], "P-256");
        let row = Row {
            kid: key.kid.clone(),
            alg: "ES256".into(),
            public_jwk: key.public_jwk.clone(),
            private_key: key.private_key.clone(),
            state: "active".into(),
            created_at: Utc::now(),
            activated_at: Some(Utc::now()),
            retired_at: None,
            expires_at: None,
        };
        let cached = cache_key(&row, Some(&s)).unwrap();
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::ES256),
            &json!({"exp": Utc::now().timestamp() + 60}),
            cached.encoding.as_ref().unwrap(),
        )
        .unwrap();
        let mut v = jsonwebtoken::Validation::new(Algorithm::ES256);
        v.validate_aud = false;
        jsonwebtoken::decode::<Value>(&token, &cached.decoding, &v).unwrap();

        // The wrong secret is refused at load; without a secret only the public key is read.
        let err = cache_key(&row, Some(&secret(8))).err().unwrap().to_string();
        assert!(err.contains("is AUTH_KEYS_SECRET right?"), "{err}");
        assert!(cache_key(&row, None).unwrap().encoding.is_none());

        // A public JWK that is not the private key's is refused.
        let other = generate(&s).unwrap();
        let swapped = Row {
            public_jwk: other.public_jwk,
            ..row
        };
        let err = cache_key(&swapped, Some(&s)).err().unwrap().to_string();
        assert!(err.contains("does not match"), "{err}");
    }
}
