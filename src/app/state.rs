//! `AppState`: the process's state, built once here. Routers and extractors
//! below the root never name it: each asks for the sub-states it needs, which
//! axum takes from here through the `FromRef` impls below.

use std::sync::Arc;

use axum::extract::FromRef;
use sqlx::PgPool;

use crate::auth::AuthState;
use crate::auth::jwt::Verifier;
use crate::config::Config;
use crate::identity::IdentityState;

/// The process's state, assembled here and nowhere else. Routers and
/// extractors below the root never see it: each asks for the small
/// sub-states it needs (`PgPool`, `Cache`, [`AuthState`], [`IdentityState`],
/// ...), which axum takes from here through the `FromRef` impls below.
/// Cloned for each route and middleware a request passes through, so it is
/// one `Arc`.
#[derive(Clone)]
pub struct AppState(Arc<AppStateInner>);

impl std::ops::Deref for AppState {
    type Target = AppStateInner;

    fn deref(&self) -> &AppStateInner {
        &self.0
    }
}

pub struct AppStateInner {
    pub pool: PgPool,
    pub cache: crate::core::cache::Cache,
    pub verifier: Arc<Verifier>,
    pub config: Arc<Config>,
    /// The job engine, mailer and report store (shared with in-process workers).
    pub jobs: crate::app::background::Background,
    /// The keys that sign Tenantry's own access tokens.
    pub keys: crate::auth::keys::KeyRing,
    /// What the auth extractors need.
    pub auth: AuthState,
    /// The GoTrue-compatible server's state.
    pub identity: IdentityState,
    /// Who may read `/metrics` on this listener.
    pub metrics: Arc<crate::jobs::routes::MetricsAccess>,
    /// Invitation links and their lifetime.
    pub invites: Arc<crate::organizations::service::InviteSettings>,
    /// Stops the background task that keeps the ended sessions current when
    /// the state is dropped.
    _follow: tokio::sync::watch::Sender<bool>,
    /// Billing's routes: the payment provider, the spend batcher.
    pub billing: crate::billing::BillingState,
}

impl AppState {
    /// The state of a server on `pool` with `config`. Loads the signing keys
    /// (creating the first ones when `AUTH_KEYS_SECRET` is set) and lets
    /// `verifier` accept tokens they signed.
    pub async fn new(pool: PgPool, config: Config, verifier: Verifier) -> anyhow::Result<AppState> {
        let keys = crate::auth::keys::KeyRing::load(&pool, &config).await?;
        let verifier = Arc::new(match verifier.keyring() {
            Some(_) => verifier,
            None => verifier.with_keyring(keys.clone()),
        });
        let cache = crate::core::cache::Cache::new(
            &config.redis_url(),
            &config.cache_prefix,
            config.cache_ttl,
        )?;
        let hasher = crate::auth::password::Hasher::with_queue(
            crate::auth::password::PasswordParams::default(),
            config.auth.hash_queue,
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        let limiter =
            crate::core::ratelimit::RateLimiter::new(&config.redis_url(), &config.cache_prefix)?
                .with_fail_mode(crate::core::ratelimit::FailMode::Local);
        // Every session ended so far, before the first request is served;
        // then kept current in the background.
        let ended_sessions = crate::auth::ended_sessions::EndedSessions::new(
            pool.clone(),
            Some(&config.redis_url()),
            &config.cache_prefix,
        )?;
        ended_sessions.load(None).await?;
        let (follow, following) = tokio::sync::watch::channel(false);
        tokio::spawn(ended_sessions.clone().follow(following));
        let payments = crate::billing::payments::provider_from_config(&config.billing)?;
        let invites = Arc::new(crate::organizations::service::InviteSettings::from_config(
            &config,
        ));
        let metrics = Arc::new(crate::jobs::routes::MetricsAccess {
            elsewhere: config.metrics_addr.is_some(),
            token: config.jobs.metrics_token.clone(),
            open: config.metrics_open,
        });
        let config = Arc::new(config);
        let jobs = crate::app::background::Background::new(pool.clone(), config.clone())?;
        let auth = AuthState::new(
            verifier.clone(),
            ended_sessions.clone(),
            pool.clone(),
            cache.clone(),
            config.jwt.require_email_verified,
        );
        let identity = IdentityState::new(crate::identity::state::Inner {
            pool: pool.clone(),
            cache: cache.clone(),
            config: config.clone(),
            keys: keys.clone(),
            verifier: verifier.clone(),
            hasher,
            limiter,
            ended_sessions,
        });
        let billing = crate::billing::BillingState::new(crate::billing::state::Inner {
            pool: pool.clone(),
            payments,
            spends: Default::default(),
            config: config.clone(),
        });
        Ok(AppState(Arc::new(AppStateInner {
            pool,
            cache,
            verifier,
            config,
            jobs,
            keys,
            auth,
            identity,
            invites,
            metrics,
            billing,
            _follow: follow,
        })))
    }
}

impl FromRef<AppState> for PgPool {
    fn from_ref(s: &AppState) -> PgPool {
        s.pool.clone()
    }
}

impl FromRef<AppState> for crate::core::cache::Cache {
    fn from_ref(s: &AppState) -> Self {
        s.cache.clone()
    }
}

impl FromRef<AppState> for AuthState {
    fn from_ref(s: &AppState) -> Self {
        s.auth.clone()
    }
}

impl FromRef<AppState> for IdentityState {
    fn from_ref(s: &AppState) -> Self {
        s.identity.clone()
    }
}

impl FromRef<AppState> for crate::billing::BillingState {
    fn from_ref(s: &AppState) -> Self {
        s.billing.clone()
    }
}

impl FromRef<AppState> for crate::jobs::Engine {
    fn from_ref(s: &AppState) -> Self {
        s.jobs.engine.clone()
    }
}

impl FromRef<AppState> for Arc<crate::jobs::routes::MetricsAccess> {
    fn from_ref(s: &AppState) -> Self {
        s.metrics.clone()
    }
}

impl FromRef<AppState> for Arc<dyn object_store::ObjectStore> {
    fn from_ref(s: &AppState) -> Self {
        s.jobs.report_store.clone()
    }
}

impl FromRef<AppState> for crate::imports::routes::ImportLimit {
    fn from_ref(s: &AppState) -> Self {
        crate::imports::routes::ImportLimit(s.config.jobs.max_import_bytes)
    }
}

impl FromRef<AppState> for Arc<crate::organizations::service::InviteSettings> {
    fn from_ref(s: &AppState) -> Self {
        s.invites.clone()
    }
}
