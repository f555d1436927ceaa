//! Configuration from environment variables (12-factor). `.env` is read in
//! development. A missing or malformed setting stops the process at start with
//! one line naming it.

use std::net::SocketAddr;
use std::time::Duration;

use url::Url;

/// Which defaults apply: `dev` fills in everything for a local machine,
/// production roles (`serve`, `migrate`) require the essentials.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    Dev,
    Production,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Pretty,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub database_url: String,
    pub migration_database_url: String,
    pub redis_url: Url,
    pub bind_addr: SocketAddr,
    pub jwt: JwtConfig,
    /// The access tokens Tenantry signs itself.
    pub auth: AuthConfig,
    pub log_format: LogFormat,
    pub cors_allowed_origins: Vec<String>,
    pub db_max_connections: u32,
    pub request_timeout: Duration,
    pub max_body_bytes: usize,
    pub invitation_ttl: Duration,
    /// Lifetime of cached reads; also the longest a read can be stale when
    /// an invalidation cannot reach Redis.
    pub cache_ttl: Duration,
    /// Prefix of every cache key, so deployments can share one Redis.
    pub cache_prefix: String,
    /// Create the database named in `MIGRATION_DATABASE_URL` when it is missing.
    pub create_database: bool,
    pub jobs: JobsConfig,
    /// Payments: which provider, and Stripe's keys.
    pub billing: BillingConfig,
    /// Proxies whose `X-Forwarded-For` names the client (`TRUSTED_PROXIES`,
    /// CIDRs; default none: the peer address is the client).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// The longest a request waits for a database connection
    /// (`DB_ACQUIRE_TIMEOUT_SECS`, default 2); then 503 `unavailable`.
    pub db_acquire_timeout: Duration,
    /// The longest a client may take to send a request body
    /// (`BODY_READ_TIMEOUT_SECS`, default 10); then 408.
    pub body_read_timeout: Duration,
    /// The longest a client may take to send the request line and headers
    /// (`HEADER_READ_TIMEOUT_SECS`, default 10); then the connection closes.
    pub header_read_timeout: Duration,
    /// Where `/metrics` is served instead of the API's listener
    /// (`METRICS_ADDR`; default: on the API's listener).
    pub metrics_addr: Option<SocketAddr>,
    /// The API listener's `/metrics` answers without `METRICS_TOKEN` (only
    /// under `dev`; a separate `METRICS_ADDR` listener always does).
    pub metrics_open: bool,
}

/// Which payment provider takes payments (`PAYMENT_PROVIDER`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PaymentProviderKind {
    /// Tenantry issues invoices and a platform admin marks them paid.
    Manual,
    /// Stripe Checkout, Billing Portal and webhooks.
    Stripe,
}

impl PaymentProviderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PaymentProviderKind::Manual => "manual",
            PaymentProviderKind::Stripe => "stripe",
        }
    }
}

/// Payments configuration.
#[derive(Clone, Debug)]
pub struct BillingConfig {
    /// `PAYMENT_PROVIDER=manual|stripe` (default manual).
    pub provider: PaymentProviderKind,
    /// `STRIPE_SECRET_KEY` (required with stripe); `Debug` never shows it.
    pub stripe_secret_key: Option<Secret>,
    /// `STRIPE_WEBHOOK_SECRET`: comma-separated; several while rotating
    /// (required with stripe). A signature made with any of them is accepted.
    pub stripe_webhook_secrets: Vec<Secret>,
    /// `STRIPE_API_BASE` (default `https://api.stripe.com`); tests point it
    /// at a local server.
    pub stripe_api_base: Url,
}

/// A secret string; `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

pub const DEFAULT_STRIPE_API_BASE: &str = "https://api.stripe.com";

impl BillingConfig {
    fn from_lookup(get: &impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let provider = match get("PAYMENT_PROVIDER").as_deref().map(str::trim) {
            None | Some("manual") => PaymentProviderKind::Manual,
            Some("stripe") => PaymentProviderKind::Stripe,
            Some(other) => {
                return Err(malformed(
                    "PAYMENT_PROVIDER",
                    format!("{other:?} is not manual or stripe"),
                ));
            }
        };
        // Secrets: name the setting, never echo the value.
        let stripe_secret_key = match get("STRIPE_SECRET_KEY").map(|v| v.trim().to_owned()) {
            Some(v) if v.chars().any(|c| c.is_whitespace() || c.is_control()) => {
                return Err(malformed(
                    "STRIPE_SECRET_KEY",
                    "must not contain spaces or control characters",
                ));
            }
            Some(v) => Some(Secret(v)),
            None => None,
        };
        let stripe_webhook_secrets: Vec<Secret> = get("STRIPE_WEBHOOK_SECRET")
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(|v| Secret(v.to_owned()))
            .collect();
        let base = get("STRIPE_API_BASE").unwrap_or_else(|| DEFAULT_STRIPE_API_BASE.to_owned());
        let stripe_api_base =
            Url::parse(base.trim()).map_err(|e| malformed("STRIPE_API_BASE", e))?;
        if !matches!(stripe_api_base.scheme(), "http" | "https")
            || stripe_api_base.cannot_be_a_base()
        {
            return Err(malformed("STRIPE_API_BASE", "scheme must be http or https"));
        }
        if provider == PaymentProviderKind::Stripe {
            if stripe_secret_key.is_none() {
                return Err(ConfigError::Missing {
                    name: "STRIPE_SECRET_KEY",
                    hint: " when PAYMENT_PROVIDER=stripe",
                });
            }
            if stripe_webhook_secrets.is_empty() {
                return Err(ConfigError::Missing {
                    name: "STRIPE_WEBHOOK_SECRET",
                    hint: " when PAYMENT_PROVIDER=stripe (comma-separated during rotation)",
                });
            }
        }
        Ok(BillingConfig {
            provider,
            stripe_secret_key,
            stripe_webhook_secrets,
            stripe_api_base,
        })
    }
}

/// Background jobs, email and report storage.
#[derive(Clone, Debug)]
pub struct JobsConfig {
    /// Prefix of the broker's Redis keys (`{prefix}:jobs:...`).
    pub prefix: String,
    /// Concurrency per queue (`WORKER_CONCURRENCY=default=16,email=8,...`).
    pub concurrency: Vec<(String, usize)>,
    /// A running job's lease; a job whose worker stops renewing it (killed)
    /// is delivered again this long after the last renewal.
    pub lease: Duration,
    /// After SIGTERM, how long running jobs may take to finish.
    pub shutdown_grace: Duration,
    /// Where email goes; unset: emails are written to the log.
    pub smtp_url: Option<String>,
    pub mail_from: String,
    /// Base URL of the web app, for links in emails.
    pub app_url: Url,
    /// Where reports are stored: a directory or `file://`, `s3://`, `gs://` URL.
    pub reports_store: String,
    /// Largest accepted member import file.
    pub max_import_bytes: usize,
    /// Cron expression of the probe job (a heartbeat of the job system).
    pub cron_probe: Option<String>,
    /// Run the relay and worker inside `tenantry dev`.
    pub in_process_worker: bool,
    /// Where `tenantry worker` serves `/metrics` and `/healthz` (unset: nowhere).
    pub worker_metrics_addr: Option<SocketAddr>,
    /// When set, `/metrics` needs `Authorization: Bearer <token>`.
    pub metrics_token: Option<String>,
}

impl JobsConfig {
    pub fn concurrency_of(&self, queue: &str) -> usize {
        self.concurrency
            .iter()
            .find(|(q, _)| q == queue)
            .map(|(_, n)| *n)
            .unwrap_or(4)
    }
}

#[derive(Clone, Debug)]
pub struct JwtConfig {
    /// HS256 secret (Supabase's "JWT secret").
    pub secret: Option<Vec<u8>>,
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

/// 32 secret bytes; `Debug` never shows them.
#[derive(Clone, PartialEq, Eq)]
pub struct KeysSecret([u8; 32]);

impl KeysSecret {
    pub fn new(bytes: [u8; 32]) -> Self {
        KeysSecret(bytes)
    }

    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }

    /// Whether this is the public development value.
    pub fn is_dev(&self) -> bool {
        *self == dev_auth_keys_secret()
    }
}

impl std::fmt::Debug for KeysSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeysSecret(<redacted>)")
    }
}

/// Only used by `tenantry dev` when `AUTH_KEYS_SECRET` is unset: a fixed,
/// public value, so development keys survive restarts. Never in production.
pub fn dev_auth_keys_secret() -> KeysSecret {
    use sha2::Digest as _;
    KeysSecret(
        sha2::Sha256::digest(b"tenantry-dev-auth-keys-secret-do-not-use-in-production").into(),
    )
}

pub const DEFAULT_AUTH_ISSUER: &str = "http://127.0.0.1:8080/auth/v1";

/// A setting that could not be used; its `Display` is the one line printed at start.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration error: {name} is required{hint}")]
    Missing {
        name: &'static str,
        hint: &'static str,
    },
    #[error("configuration error: {name} is malformed: {reason}")]
    Malformed { name: &'static str, reason: String },
}

pub const DEV_DATABASE_URL: &str = "postgres://tenantry_api:tenantry_api@127.0.0.1:5432/tenantry";
pub const DEV_MIGRATION_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/tenantry";
pub const DEV_REDIS_URL: &str = "redis://127.0.0.1:6379/0";
/// Only used by `tenantry dev` when `JWT_SECRET` is unset; never in production.
pub const DEV_JWT_SECRET: &str = "tenantry-dev-secret-do-not-use-in-production-0123456789";

impl Config {
    /// Reads the process environment.
    pub fn from_env(profile: Profile) -> Result<Self, ConfigError> {
        Self::from_lookup(profile, |k| std::env::var(k).ok())
    }

    /// Reads settings through `get`, so tests can supply their own.
    pub fn from_lookup(
        profile: Profile,
        get: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let get = |k: &str| get(k).filter(|v| !v.trim().is_empty());
        let dev = profile == Profile::Dev;

        let DbConfig {
            database_url,
            migration_database_url,
        } = DbConfig::from_lookup(profile, &get)?;

        let redis_url = get("REDIS_URL").unwrap_or_else(|| DEV_REDIS_URL.to_owned());
        let redis_url = Url::parse(&redis_url).map_err(|e| malformed("REDIS_URL", e))?;
        if !matches!(redis_url.scheme(), "redis" | "rediss") {
            return Err(malformed(
                "REDIS_URL",
                "scheme must be redis:// or rediss://",
            ));
        }

        let bind_addr = match (get("BIND_ADDR"), get("PORT")) {
            (Some(addr), _) => addr
                .parse::<SocketAddr>()
                .map_err(|e| malformed("BIND_ADDR", e))?,
            (None, port) => {
                let port = match port {
                    Some(p) => p.parse::<u16>().map_err(|e| malformed("PORT", e))?,
                    None => 8080,
                };
                let host = if dev { [127, 0, 0, 1] } else { [0, 0, 0, 0] };
                SocketAddr::from((host, port))
            }
        };

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
        let jwt = JwtConfig {
            secret,
            jwks_url,
            issuer: get("JWT_ISSUER"),
            audience: get("JWT_AUDIENCE").unwrap_or_else(|| "authenticated".to_owned()),
            leeway: Duration::from_secs(30),
            require_email_verified: parse_bool(&get, "JWT_REQUIRE_EMAIL_VERIFIED", false)?,
        };
        let auth = AuthConfig::from_lookup(dev, bind_addr, &get)?;

        let log_format = match get("LOG_FORMAT").as_deref() {
            None if dev => LogFormat::Pretty,
            None => LogFormat::Json,
            Some("json") => LogFormat::Json,
            Some("pretty") => LogFormat::Pretty,
            Some(other) => {
                return Err(malformed(
                    "LOG_FORMAT",
                    format!("{other:?} is not json or pretty"),
                ));
            }
        };

        let cors_allowed_origins = match get("CORS_ALLOWED_ORIGINS") {
            Some(v) => {
                let mut origins = Vec::new();
                for o in v.split(',').map(str::trim) {
                    if o == "*" {
                        origins.push(o.to_owned());
                        continue;
                    }
                    // Browsers send scheme://host[:port]; normalise what was configured.
                    match Url::parse(o).map(|u| u.origin()) {
                        Ok(origin) if origin.is_tuple() => {
                            origins.push(origin.ascii_serialization())
                        }
                        _ => {
                            return Err(malformed(
                                "CORS_ALLOWED_ORIGINS",
                                format!("{o:?} is not an origin"),
                            ));
                        }
                    }
                }
                origins
            }
            None if dev => vec!["*".to_owned()],
            None => Vec::new(),
        };

        Ok(Config {
            database_url,
            migration_database_url,
            redis_url,
            bind_addr,
            jwt,
            auth,
            log_format,
            cors_allowed_origins,
            db_max_connections: parse_or(&get, "DB_MAX_CONNECTIONS", 8)?,
            request_timeout: Duration::from_secs(parse_or(&get, "REQUEST_TIMEOUT_SECS", 30)?),
            max_body_bytes: parse_or(&get, "MAX_BODY_BYTES", 256 * 1024)?,
            invitation_ttl: Duration::from_secs(
                3600 * {
                    let hours = parse_or::<u64>(&get, "INVITATION_TTL_HOURS", 7 * 24)?;
                    if !(1..=8760).contains(&hours) {
                        return Err(malformed(
                            "INVITATION_TTL_HOURS",
                            "must be between 1 and 8760",
                        ));
                    }
                    hours
                },
            ),
            cache_ttl: Duration::from_secs({
                let secs = parse_or::<u64>(&get, "CACHE_TTL_SECS", 5)?;
                if !(1..=300).contains(&secs) {
                    return Err(malformed("CACHE_TTL_SECS", "must be between 1 and 300"));
                }
                secs
            }),
            cache_prefix: {
                let p = get("CACHE_PREFIX").unwrap_or_else(|| "tenantry".to_owned());
                if p.len() > 64
                    || !p
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                {
                    return Err(malformed("CACHE_PREFIX", "use up to 64 of a-z A-Z 0-9 - _"));
                }
                p
            },
            create_database: dev,
            jobs: JobsConfig::from_lookup(dev, &get)?,
            billing: BillingConfig::from_lookup(&get)?,
            trusted_proxies: match get("TRUSTED_PROXIES") {
                Some(list) => crate::core::client_ip::parse_trusted(&list)
                    .map_err(|e| malformed("TRUSTED_PROXIES", e))?,
                None => Vec::new(),
            },
            db_acquire_timeout: secs_in(&get, "DB_ACQUIRE_TIMEOUT_SECS", 2, 1..=60)?,
            body_read_timeout: secs_in(&get, "BODY_READ_TIMEOUT_SECS", 10, 1..=600)?,
            header_read_timeout: secs_in(&get, "HEADER_READ_TIMEOUT_SECS", 10, 1..=600)?,
            metrics_addr: get("METRICS_ADDR")
                .map(|a| a.parse().map_err(|e| malformed("METRICS_ADDR", e)))
                .transpose()?,
            metrics_open: dev,
        })
    }
}

impl JobsConfig {
    fn from_lookup(dev: bool, get: &impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let prefix = get("JOBS_PREFIX").unwrap_or_else(|| "tenantry".to_owned());
        if prefix.len() > 64
            || !prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(malformed("JOBS_PREFIX", "use up to 64 of a-z A-Z 0-9 - _"));
        }
        let mut concurrency: Vec<(String, usize)> = [
            ("default", 16),
            ("email", 8),
            ("reports", 2),
            ("imports", 2),
        ]
        .into_iter()
        .map(|(q, n)| (q.to_owned(), n))
        .collect();
        if let Some(spec) = get("WORKER_CONCURRENCY") {
            for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                let (q, n) = part
                    .split_once('=')
                    .and_then(|(q, n)| Some((q.trim(), n.trim().parse::<usize>().ok()?)))
                    .filter(|(q, n)| !q.is_empty() && (1..=1024).contains(n))
                    .ok_or_else(|| {
                        malformed(
                            "WORKER_CONCURRENCY",
                            format!("{part:?} is not queue=N with N in 1..=1024"),
                        )
                    })?;
                concurrency.retain(|(existing, _)| existing != q);
                concurrency.push((q.to_owned(), n));
            }
        }
        let lease = parse_or::<u64>(get, "JOB_LEASE_SECS", 30)?;
        if !(1..=3600).contains(&lease) {
            return Err(malformed("JOB_LEASE_SECS", "must be between 1 and 3600"));
        }
        let app_url = get("APP_URL").unwrap_or_else(|| "http://localhost:3000".to_owned());
        let app_url = Url::parse(&app_url).map_err(|e| malformed("APP_URL", e))?;
        if !matches!(app_url.scheme(), "http" | "https") {
            return Err(malformed("APP_URL", "scheme must be http or https"));
        }
        let smtp_url = get("SMTP_URL");
        if let Some(u) = &smtp_url
            && !matches!(
                Url::parse(u).map(|u| u.scheme().to_owned()).as_deref(),
                Ok("smtp" | "smtps")
            )
        {
            // The value may hold a password: name the setting, not the value.
            return Err(malformed("SMTP_URL", "must be an smtp:// or smtps:// URL"));
        }
        let cron_probe = get("CRON_PROBE");
        if let Some(c) = &cron_probe {
            c.parse::<croner::Cron>()
                .map_err(|e| malformed("CRON_PROBE", e))?;
        }
        Ok(JobsConfig {
            prefix,
            concurrency,
            lease: Duration::from_secs(lease),
            shutdown_grace: Duration::from_secs(parse_or(get, "WORKER_SHUTDOWN_GRACE_SECS", 30)?),
            smtp_url,
            mail_from: get("MAIL_FROM")
                .unwrap_or_else(|| "Tenantry <no-reply@localhost>".to_owned()),
            app_url,
            reports_store: get("REPORTS_STORE").unwrap_or_else(|| "./var/reports".to_owned()),
            max_import_bytes: parse_or(get, "MAX_IMPORT_BYTES", 5 * 1024 * 1024)?,
            cron_probe,
            metrics_token: get("METRICS_TOKEN"),
            worker_metrics_addr: get("WORKER_METRICS_ADDR")
                .map(|a| a.parse().map_err(|e| malformed("WORKER_METRICS_ADDR", e)))
                .transpose()?,
            in_process_worker: match get("DEV_WORKER").as_deref() {
                None => dev,
                Some("true" | "1") => true,
                Some("false" | "0") => false,
                Some(_) => return Err(malformed("DEV_WORKER", "must be true or false")),
            },
        })
    }
}

impl AuthConfig {
    fn from_lookup(
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
    Some(KeysSecret(bytes.try_into().ok()?))
}

/// The two database URLs: the API's login role and the owner role for migrations.
#[derive(Clone, Debug)]
pub struct DbConfig {
    pub database_url: String,
    pub migration_database_url: String,
}

impl DbConfig {
    pub fn from_env(profile: Profile) -> Result<Self, ConfigError> {
        Self::from_lookup(profile, &|k: &str| {
            std::env::var(k).ok().filter(|v| !v.trim().is_empty())
        })
    }

    pub fn from_lookup(
        profile: Profile,
        get: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let dev = profile == Profile::Dev;
        let database_url = match get("DATABASE_URL") {
            Some(v) => v,
            None if dev => DEV_DATABASE_URL.to_owned(),
            None => {
                return Err(ConfigError::Missing {
                    name: "DATABASE_URL",
                    hint: " (postgres://user:password@host:5432/db, the API's login role)",
                });
            }
        };
        check_postgres_url("DATABASE_URL", &database_url)?;
        let migration_database_url = match get("MIGRATION_DATABASE_URL") {
            Some(v) => v,
            None if dev && get("DATABASE_URL").is_none() => DEV_MIGRATION_DATABASE_URL.to_owned(),
            None => database_url.clone(),
        };
        check_postgres_url("MIGRATION_DATABASE_URL", &migration_database_url)?;

        Ok(DbConfig {
            database_url,
            migration_database_url,
        })
    }
}

fn malformed(name: &'static str, reason: impl ToString) -> ConfigError {
    ConfigError::Malformed {
        name,
        reason: reason.to_string(),
    }
}

fn parse_or<T: std::str::FromStr>(
    get: &impl Fn(&str) -> Option<String>,
    name: &'static str,
    default: T,
) -> Result<T, ConfigError>
where
    T::Err: std::fmt::Display,
{
    match get(name) {
        Some(v) => v.trim().parse().map_err(|e| malformed(name, e)),
        None => Ok(default),
    }
}

/// A number of seconds within `range`.
fn secs_in(
    get: &impl Fn(&str) -> Option<String>,
    name: &'static str,
    default: u64,
    range: std::ops::RangeInclusive<u64>,
) -> Result<Duration, ConfigError> {
    let secs = parse_or::<u64>(get, name, default)?;
    if !range.contains(&secs) {
        return Err(malformed(
            name,
            format!("must be between {} and {}", range.start(), range.end()),
        ));
    }
    Ok(Duration::from_secs(secs))
}

fn parse_bool(
    get: &impl Fn(&str) -> Option<String>,
    name: &'static str,
    default: bool,
) -> Result<bool, ConfigError> {
    match get(name).as_deref().map(str::trim) {
        None => Ok(default),
        Some("true" | "1") => Ok(true),
        Some("false" | "0") => Ok(false),
        Some(_) => Err(malformed(name, "must be true or false")),
    }
}

fn check_postgres_url(name: &'static str, value: &str) -> Result<(), ConfigError> {
    let url = Url::parse(value).map_err(|e| malformed(name, e))?;
    if !matches!(url.scheme(), "postgres" | "postgresql") {
        return Err(malformed(name, "scheme must be postgres://"));
    }
    if url.path().trim_start_matches('/').is_empty() {
        return Err(malformed(name, "names no database"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cfg(profile: Profile, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(profile, |k| map.get(k).cloned())
    }

    #[test]
    fn dev_needs_no_configuration() {
        let c = cfg(Profile::Dev, &[]).unwrap();
        assert_eq!(c.database_url, DEV_DATABASE_URL);
        assert_eq!(c.migration_database_url, DEV_MIGRATION_DATABASE_URL);
        assert_eq!(c.bind_addr.port(), 8080);
        assert_eq!(c.jwt.audience, "authenticated");
        assert!(c.create_database);
    }

    #[test]
    fn production_names_the_missing_setting() {
        let err = cfg(Profile::Production, &[]).unwrap_err().to_string();
        assert!(err.contains("DATABASE_URL is required"), "{err}");
        let err = cfg(
            Profile::Production,
            &[("DATABASE_URL", "postgres://a:b@h/db")],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("JWT_SECRET"), "{err}");
    }

    #[test]
    fn malformed_settings_are_named() {
        for (name, value) in [
            ("PORT", "eighty"),
            ("DATABASE_URL", "mysql://x/y"),
            ("LOG_FORMAT", "xml"),
            ("JWT_SECRET", "short"),
            ("REDIS_URL", "http://x"),
            ("JWKS_URL", "not a url"),
            ("WORKER_CONCURRENCY", "email=lots"),
            ("WORKER_CONCURRENCY", "email=0"),
            ("JOB_LEASE_SECS", "0"),
            ("JOBS_PREFIX", "has space"),
            ("APP_URL", "ftp://x"),
            ("CRON_PROBE", "every minute"),
            ("WORKER_METRICS_ADDR", "nowhere"),
            ("DEV_WORKER", "maybe"),
            ("AUTH_KEYS_SECRET", "c2hvcnQ="),
            ("JWT_EXPIRY_SECS", "59"),
            ("JWT_EXPIRY_SECS", "86401"),
            ("JWT_EXPIRY_SECS", "an hour"),
            ("AUTH_ISSUER", "https://auth.example.com/ auth/v1"),
            ("AUTH_AUTOCONFIRM", "yes"),
            ("AUTH_DISABLE_SIGNUP", "nope"),
            ("AUTH_SITE_URL", "ftp://x"),
            ("AUTH_REFRESH_REUSE_INTERVAL_SECS", "3601"),
            ("TRUSTED_PROXIES", "10.0.0.0/8,proxy.internal"),
            ("DB_ACQUIRE_TIMEOUT_SECS", "0"),
            ("BODY_READ_TIMEOUT_SECS", "ten"),
            ("HEADER_READ_TIMEOUT_SECS", "601"),
            ("METRICS_ADDR", "nowhere"),
            ("AUTH_REAUTH_WINDOW_SECS", "86401"),
            ("AUTH_HASH_QUEUE", "0"),
            ("JWT_REQUIRE_EMAIL_VERIFIED", "sometimes"),
            ("AUTH_EXTERNAL_URL", "not a url"),
            ("AUTH_REDIRECT_ALLOW_LIST", "https://ok.example, nope"),
        ] {
            let err = cfg(Profile::Dev, &[(name, value)]).unwrap_err().to_string();
            assert!(err.contains(name), "{name}: {err}");
            assert!(!err.contains('\n'));
        }
    }

    #[test]
    fn a_bad_smtp_url_is_named_without_echoing_its_password() {
        let err = cfg(Profile::Dev, &[("SMTP_URL", "http://user:hunter2@mail")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("SMTP_URL"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn a_bad_auth_keys_secret_is_named_without_echoing_it() {
        // Not base64 (the decoder would quote the symbol), base64 of 31 and 33 bytes.
        for value in [
            "hunter2-hunter2-hunter2-hunter2-hunter2-hunt$r",
            "aHVudGVyMi1odW50ZXIyLWh1bnRlcjItaHVudGVyMg==",
            "aHVudGVyMi1odW50ZXIyLWh1bnRlcjItaHVudGVyMi1o",
        ] {
            let err = cfg(Profile::Dev, &[("AUTH_KEYS_SECRET", value)])
                .unwrap_err()
                .to_string();
            assert!(err.contains("AUTH_KEYS_SECRET is malformed"), "{err}");
            assert!(!err.contains("hunter2") && !err.contains("aHVud"), "{err}");
            assert!(!err.contains('$'), "{err}");
        }
    }

    #[test]
    fn auth_settings_have_defaults_and_parse() {
        let c = cfg(Profile::Dev, &[]).unwrap();
        assert_eq!(c.auth.issuer, DEFAULT_AUTH_ISSUER);
        assert_eq!(c.auth.access_token_ttl, Duration::from_secs(3600));
        assert!(c.auth.autoconfirm, "dev confirms sign-ups at once");
        assert!(!c.auth.disable_signup);
        assert_eq!(c.auth.refresh_reuse_interval, Duration::from_secs(10));
        assert_eq!(c.auth.site_url.as_str(), "http://localhost:3000/");
        let c2 = cfg(Profile::Dev, &[("APP_URL", "https://app.example.com")]).unwrap();
        assert_eq!(c2.auth.site_url.as_str(), "https://app.example.com/");
        // Email links go to /verify under the issuer unless told otherwise.
        assert_eq!(
            c.auth.external_url.as_str(),
            "http://127.0.0.1:8080/auth/v1/"
        );
        assert!(c.auth.redirect_allow_list.is_empty());
        let c3 = cfg(
            Profile::Dev,
            &[
                ("AUTH_EXTERNAL_URL", "https://api.example.com/auth/v1"),
                (
                    "AUTH_REDIRECT_ALLOW_LIST",
                    " https://m.example.com/cb ,, com.example.app://login ",
                ),
            ],
        )
        .unwrap();
        assert_eq!(
            c3.auth.external_url.as_str(),
            "https://api.example.com/auth/v1/"
        );
        let allowed: Vec<&str> = c3
            .auth
            .redirect_allow_list
            .iter()
            .map(|u| u.as_str())
            .collect();
        assert_eq!(
            allowed,
            ["https://m.example.com/cb", "com.example.app://login"]
        );
        let dev = c.auth.keys_secret.expect("dev derives a keys secret");
        assert!(dev.is_dev());
        assert_eq!(format!("{dev:?}"), "KeysSecret(<redacted>)");
        let err = cfg(
            Profile::Dev,
            &[
                ("BIND_ADDR", "0.0.0.0:8080"),
                ("JWT_SECRET", &"x".repeat(32)),
            ],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("AUTH_KEYS_SECRET is required"), "{err}");

        let prod = [
            ("JWT_SECRET", "x".repeat(32)),
            ("DATABASE_URL", "postgres://u:p@h/db".to_owned()),
        ];
        let with = |extra: &[(&str, &str)]| {
            let mut vars: Vec<(&str, &str)> = prod.iter().map(|(k, v)| (*k, v.as_str())).collect();
            vars.extend_from_slice(extra);
            cfg(Profile::Production, &vars)
        };
        let c = with(&[]).unwrap();
        assert!(c.auth.keys_secret.is_none(), "production never derives one");
        assert!(!c.auth.autoconfirm, "production confirms by email");
        // Standard and URL-safe alphabets, with or without padding.
        for value in [
            "+/+/+/+/+/+/+/+/+/+/+/+/+/+/+/+/+/+/+/+/+/8=",
            "-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_8",
        ] {
            let c = with(&[
                ("AUTH_KEYS_SECRET", value),
                ("JWT_EXPIRY_SECS", "600"),
                ("AUTH_ISSUER", "https://auth.example.com/auth/v1"),
            ])
            .unwrap();
            let secret = c.auth.keys_secret.unwrap();
            assert_eq!(secret.expose()[..3], [0xfb, 0xff, 0xbf]);
            assert!(!secret.is_dev());
            assert_eq!(c.auth.access_token_ttl, Duration::from_secs(600));
            assert_eq!(c.auth.issuer, "https://auth.example.com/auth/v1");
        }
    }

    #[test]
    fn worker_concurrency_overrides_per_queue() {
        let c = cfg(Profile::Dev, &[("WORKER_CONCURRENCY", "email=2, custom=7")]).unwrap();
        assert_eq!(c.jobs.concurrency_of("email"), 2);
        assert_eq!(c.jobs.concurrency_of("custom"), 7);
        assert_eq!(c.jobs.concurrency_of("default"), 16);
        assert_eq!(c.jobs.concurrency_of("unnamed"), 4);
        assert!(c.jobs.in_process_worker, "dev runs the worker");
        let secret = "x".repeat(32);
        let c = cfg(
            Profile::Production,
            &[
                ("JWT_SECRET", &secret),
                ("DATABASE_URL", "postgres://u:p@h/db"),
            ],
        )
        .unwrap();
        assert!(!c.jobs.in_process_worker);
    }

    #[test]
    fn the_dev_secret_is_only_for_a_loopback_server_without_other_keys() {
        let c = cfg(
            Profile::Dev,
            &[("JWKS_URL", "https://auth.example.com/jwks")],
        )
        .unwrap();
        assert!(c.jwt.secret.is_none());
        let err = cfg(Profile::Dev, &[("BIND_ADDR", "0.0.0.0:8080")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("JWT_SECRET"), "{err}");
        let c = cfg(Profile::Dev, &[]).unwrap();
        assert_eq!(c.jwt.secret.as_deref(), Some(DEV_JWT_SECRET.as_bytes()));
    }

    #[test]
    fn bounded_and_normalised_settings() {
        for hours in ["0", "8761", "99999999999999"] {
            let err = cfg(Profile::Dev, &[("INVITATION_TTL_HOURS", hours)]).unwrap_err();
            assert!(err.to_string().contains("INVITATION_TTL_HOURS"), "{hours}");
        }
        let c = cfg(
            Profile::Dev,
            &[(
                "CORS_ALLOWED_ORIGINS",
                "https://app.example.com/, http://localhost:3000/x",
            )],
        )
        .unwrap();
        assert_eq!(
            c.cors_allowed_origins,
            vec!["https://app.example.com", "http://localhost:3000"]
        );
        assert!(cfg(Profile::Dev, &[("CORS_ALLOWED_ORIGINS", "not an origin")]).is_err());
    }

    #[test]
    fn payment_settings_parse_and_keep_secrets_out_of_debug() {
        let c = cfg(Profile::Dev, &[]).unwrap();
        assert_eq!(c.billing.provider, PaymentProviderKind::Manual);
        assert_eq!(
            c.billing.stripe_api_base.as_str(),
            "https://api.stripe.com/"
        );
        assert!(c.billing.stripe_webhook_secrets.is_empty());
        let err = cfg(Profile::Dev, &[("PAYMENT_PROVIDER", "paypal")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("PAYMENT_PROVIDER"), "{err}");
        let err = cfg(Profile::Dev, &[("PAYMENT_PROVIDER", "stripe")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("STRIPE_SECRET_KEY is required"), "{err}");
        let err = cfg(
            Profile::Dev,
            &[
                ("PAYMENT_PROVIDER", "stripe"),
                ("STRIPE_SECRET_KEY", "sk_test_hunter2"),
            ],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("STRIPE_WEBHOOK_SECRET is required"), "{err}");
        let err = cfg(Profile::Dev, &[("STRIPE_API_BASE", "ftp://x")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("STRIPE_API_BASE"), "{err}");
        let c = cfg(
            Profile::Dev,
            &[
                ("PAYMENT_PROVIDER", "stripe"),
                ("STRIPE_SECRET_KEY", "sk_test_hunter2"),
                ("STRIPE_WEBHOOK_SECRET", " whsec_one, ,whsec_two "),
                ("STRIPE_API_BASE", "http://127.0.0.1:9999"),
            ],
        )
        .unwrap();
        assert_eq!(c.billing.provider, PaymentProviderKind::Stripe);
        let secrets: Vec<&str> = c
            .billing
            .stripe_webhook_secrets
            .iter()
            .map(|s| s.expose())
            .collect();
        assert_eq!(secrets, ["whsec_one", "whsec_two"]);
        assert_eq!(
            c.billing.stripe_secret_key.as_ref().unwrap().expose(),
            "sk_test_hunter2"
        );
        let debug = format!("{c:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(!debug.contains("whsec_one"), "{debug}");
    }

    #[test]
    fn migration_url_defaults_to_database_url_when_that_is_set() {
        let c = cfg(Profile::Dev, &[("DATABASE_URL", "postgres://u:p@h/db")]).unwrap();
        assert_eq!(c.migration_database_url, "postgres://u:p@h/db");
    }
}
