//! Configuration from environment variables (12-factor). `.env` is read in
//! development. A missing or malformed setting stops the process at start with
//! one line naming it.
//!
//! This module holds [`Config`] and reads it section by section: each child
//! owns one section's settings and how they parse; `settings` is the one
//! table of every variable read (printed by `tenantry --help`).

mod auth_server;
mod billing;
mod database;
mod jobs;
mod jwt;
mod parse;
mod server;
pub mod settings;

use std::net::SocketAddr;
use std::time::Duration;

use secrecy::SecretString;
use url::Url;

pub use auth_server::{AuthConfig, DEFAULT_AUTH_ISSUER, KeysSecret, dev_auth_keys_secret};
pub use billing::{BillingConfig, DEFAULT_STRIPE_API_BASE, PaymentProviderKind};
pub use database::{DEV_DATABASE_URL, DEV_MIGRATION_DATABASE_URL, DEV_REDIS_URL, DbConfig};
pub use jobs::JobsConfig;
pub use jwt::{DEV_JWT_SECRET, JwtConfig};
pub use parse::{ConfigError, Profile};
pub use server::LogFormat;

use parse::{malformed, non_blank, parse_or, secs_in};

#[derive(Clone, Debug)]
pub struct Config {
    /// The API's login role; may carry a password.
    pub database_url: SecretString,
    /// The owner role migrations run as; may carry a password.
    pub migration_database_url: SecretString,
    /// May carry a password; [`Config::redis_url`] gives it as a URL.
    pub redis_url: SecretString,
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
        let get = non_blank(get);
        let dev = profile == Profile::Dev;

        let DbConfig {
            database_url,
            migration_database_url,
        } = DbConfig::from_lookup(profile, &get)?;
        let redis_url = database::redis_url(&get)?;
        let bind_addr = server::bind_addr(dev, &get)?;
        let jwt = JwtConfig::from_lookup(dev, bind_addr, &get)?;
        let auth = AuthConfig::from_lookup(dev, bind_addr, &get)?;
        let log_format = server::log_format(dev, &get)?;
        let cors_allowed_origins = server::cors_allowed_origins(dev, &get)?;

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
            cache_ttl: database::cache_ttl(&get)?,
            cache_prefix: database::cache_prefix(&get)?,
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

    /// The Redis URL (`REDIS_URL`, checked at start). It may carry a
    /// password: keep it out of logs.
    pub fn redis_url(&self) -> Url {
        database::parse_redis_url(&self.redis_url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;
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
        assert_eq!(c.database_url.expose_secret(), DEV_DATABASE_URL);
        assert_eq!(
            c.migration_database_url.expose_secret(),
            DEV_MIGRATION_DATABASE_URL
        );
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
        let debug = format!("{dev:?}");
        assert!(
            debug.starts_with("KeysSecret(") && debug.contains("REDACTED"),
            "{debug}"
        );
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
            assert_eq!(secret.expose_secret()[..3], [0xfb, 0xff, 0xbf]);
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
        assert_eq!(
            c.jwt.secret.as_ref().map(|s| s.expose_secret()),
            Some(DEV_JWT_SECRET.as_bytes())
        );
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
            .map(|s| s.expose_secret())
            .collect();
        assert_eq!(secrets, ["whsec_one", "whsec_two"]);
        assert_eq!(
            c.billing
                .stripe_secret_key
                .as_ref()
                .unwrap()
                .expose_secret(),
            "sk_test_hunter2"
        );
        let debug = format!("{c:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(!debug.contains("whsec_one"), "{debug}");
    }

    #[test]
    fn migration_url_defaults_to_database_url_when_that_is_set() {
        let c = cfg(Profile::Dev, &[("DATABASE_URL", "postgres://u:p@h/db")]).unwrap();
        assert_eq!(
            c.migration_database_url.expose_secret(),
            "postgres://u:p@h/db"
        );
    }

    /// Names read by the parser under `profile` with `vars` set.
    fn names_read(profile: Profile, vars: &[(&str, &str)]) -> Vec<String> {
        let read = std::cell::RefCell::new(Vec::new());
        let map: HashMap<&str, &str> = vars.iter().copied().collect();
        let _ = Config::from_lookup(profile, |k| {
            read.borrow_mut().push(k.to_owned());
            map.get(k).map(|v| v.to_string())
        });
        read.into_inner()
    }

    #[test]
    fn every_variable_read_is_in_the_settings_table() {
        let secret = "x".repeat(32);
        let production = [
            ("JWT_SECRET", secret.as_str()),
            ("DATABASE_URL", "postgres://u:p@h/db"),
        ];
        let mut read = Vec::new();
        for (profile, vars) in [
            (Profile::Dev, &[][..]),
            (Profile::Production, &production[..]),
            (
                Profile::Dev,
                &[
                    ("AUTH_SITE_URL", "https://app.example.com"),
                    ("AUTH_EXTERNAL_URL", "https://api.example.com/auth/v1"),
                    ("BIND_ADDR", "127.0.0.1:8080"),
                    ("PAYMENT_PROVIDER", "stripe"),
                    ("STRIPE_SECRET_KEY", "sk_test"),
                    ("STRIPE_WEBHOOK_SECRET", "whsec"),
                ][..],
            ),
        ] {
            read.extend(names_read(profile, vars));
        }
        for name in &read {
            assert!(settings::find(name).is_some(), "{name} is not in the table");
        }
        for s in settings::SETTINGS {
            assert!(read.iter().any(|n| n == s.name), "{} is never read", s.name);
        }
        // Names the parser only reads on some paths: every name written in
        // the parser's sources is in the table.
        for source in [
            include_str!("mod.rs"),
            include_str!("auth_server.rs"),
            include_str!("billing.rs"),
            include_str!("database.rs"),
            include_str!("jobs.rs"),
            include_str!("jwt.rs"),
            include_str!("server.rs"),
        ] {
            let parser = source.split("#[cfg(test)]").next().unwrap();
            for literal in parser.split('"').skip(1).step_by(2) {
                let looks_like_a_name = literal.len() >= 4
                    && literal.starts_with(|c: char| c.is_ascii_uppercase())
                    && literal
                        .chars()
                        .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
                if looks_like_a_name {
                    assert!(
                        settings::find(literal).is_some(),
                        "{literal} is not in the table"
                    );
                }
            }
        }
    }

    #[test]
    fn literal_defaults_in_the_table_are_the_defaults() {
        let secret = "x".repeat(32);
        let production = [
            ("JWT_SECRET", secret.as_str()),
            ("DATABASE_URL", "postgres://u:p@h/db"),
        ];
        for (profile, base) in [
            (Profile::Dev, &[][..]),
            (Profile::Production, &production[..]),
        ] {
            let unset = cfg(profile, base).unwrap();
            for s in settings::SETTINGS {
                let settings::DefaultValue::Literal(value) = s.default else {
                    continue;
                };
                let mut vars = base.to_vec();
                vars.push((s.name, value));
                let set = cfg(profile, &vars).unwrap();
                assert_eq!(format!("{set:?}"), format!("{unset:?}"), "{}", s.name);
                assert_eq!(set.redis_url(), unset.redis_url(), "{}", s.name);
            }
        }
    }

    #[test]
    fn debug_never_shows_a_secret() {
        // A value for every secret in the table, each holding "hunter2".
        let values = [
            ("DATABASE_URL", "postgres://api:hunter2@h/db"),
            ("MIGRATION_DATABASE_URL", "postgres://owner:hunter2@h/db"),
            ("REDIS_URL", "redis://:hunter2@h:6379/0"),
            ("METRICS_TOKEN", "hunter2-metrics"),
            ("JWT_SECRET", "hunter2-hunter2-hunter2-hunter2-hunter2"),
            (
                "AUTH_KEYS_SECRET",
                "aHVudGVyMi1odW50ZXIyLWh1bnRlcjItaHVudGVyMi0=",
            ),
            ("SMTP_URL", "smtp://user:hunter2@mail.example.com:587"),
            ("STRIPE_SECRET_KEY", "sk_test_hunter2"),
            ("STRIPE_WEBHOOK_SECRET", "whsec_hunter2,whsec_hunter2_next"),
        ];
        for s in settings::SETTINGS.iter().filter(|s| s.secret) {
            assert!(
                values.iter().any(|(name, _)| *name == s.name),
                "add a value for {}",
                s.name
            );
        }
        let mut vars = values.to_vec();
        vars.push(("PAYMENT_PROVIDER", "stripe"));
        for profile in [Profile::Dev, Profile::Production] {
            let c = cfg(profile, &vars).unwrap();
            assert_eq!(c.redis_url().password(), Some("hunter2"));
            let debug = format!("{c:?}");
            assert!(!debug.contains("hunter2"), "{debug}");
            assert!(!debug.contains("aHVud"), "{debug}");
            let bytes = c.auth.keys_secret.as_ref().unwrap().expose_secret();
            assert!(!debug.contains(&format!("{bytes:?}")), "{debug}");
        }
        let db = DbConfig::from_lookup(Profile::Production, &|k: &str| {
            values
                .iter()
                .find(|(name, _)| *name == k)
                .map(|(_, v)| v.to_string())
        })
        .unwrap();
        assert!(!format!("{db:?}").contains("hunter2"));
    }
}
