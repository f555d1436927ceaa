//! Where data lives: the two Postgres URLs (the API's login role and the
//! owner role for migrations) and Redis with its read cache. The URLs can
//! carry passwords: they are held as secrets.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use url::Url;

use super::parse::{ConfigError, Profile, malformed, non_blank, parse_or};

pub const DEV_DATABASE_URL: &str = "postgres://tenantry_api:tenantry_api@127.0.0.1:5432/tenantry";
pub const DEV_MIGRATION_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/tenantry";
pub const DEV_REDIS_URL: &str = "redis://127.0.0.1:6379/0";

/// The two database URLs: the API's login role and the owner role for migrations.
#[derive(Clone, Debug)]
pub struct DbConfig {
    pub database_url: SecretString,
    pub migration_database_url: SecretString,
}

impl DbConfig {
    pub fn from_env(profile: Profile) -> Result<Self, ConfigError> {
        Self::from_lookup(profile, &non_blank(|k: &str| std::env::var(k).ok()))
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
            database_url: database_url.into(),
            migration_database_url: migration_database_url.into(),
        })
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

/// `REDIS_URL`, checked; kept secret since it may carry a password.
pub(super) fn redis_url(
    get: &impl Fn(&str) -> Option<String>,
) -> Result<SecretString, ConfigError> {
    let redis_url = get("REDIS_URL").unwrap_or_else(|| DEV_REDIS_URL.to_owned());
    let parsed = Url::parse(&redis_url).map_err(|e| malformed("REDIS_URL", e))?;
    if !matches!(parsed.scheme(), "redis" | "rediss") {
        return Err(malformed(
            "REDIS_URL",
            "scheme must be redis:// or rediss://",
        ));
    }
    Ok(parsed.to_string().into())
}

/// The Redis URL `redis_url` checked at start.
pub(super) fn parse_redis_url(redis_url: &SecretString) -> Url {
    Url::parse(redis_url.expose_secret()).expect("REDIS_URL was checked at start")
}

/// `CACHE_TTL_SECS`: lifetime of cached reads (1-300 s).
pub(super) fn cache_ttl(get: &impl Fn(&str) -> Option<String>) -> Result<Duration, ConfigError> {
    let secs = parse_or::<u64>(get, "CACHE_TTL_SECS", 5)?;
    if !(1..=300).contains(&secs) {
        return Err(malformed("CACHE_TTL_SECS", "must be between 1 and 300"));
    }
    Ok(Duration::from_secs(secs))
}

/// `CACHE_PREFIX`: the prefix of every cache key.
pub(super) fn cache_prefix(get: &impl Fn(&str) -> Option<String>) -> Result<String, ConfigError> {
    let p = get("CACHE_PREFIX").unwrap_or_else(|| "tenantry".to_owned());
    if p.len() > 64
        || !p
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(malformed("CACHE_PREFIX", "use up to 64 of a-z A-Z 0-9 - _"));
    }
    Ok(p)
}
