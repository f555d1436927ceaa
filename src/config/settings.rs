//! The one table of settings: every environment variable the configuration
//! reads, with its default, one line of meaning, and whether it is a secret.
//! The parser asks only for names in it, `tenantry --help` prints it, and
//! tests hold `docs/configuration.md` and `.env.example` to it.

use std::fmt::Write as _;

/// One environment variable.
#[derive(Clone, Copy, Debug)]
pub struct Setting {
    /// The section of the configuration it belongs to (a heading in `--help`).
    pub section: &'static str,
    pub name: &'static str,
    pub default: DefaultValue,
    /// One line, for `--help`; `docs/configuration.md` says more.
    pub meaning: &'static str,
    /// Held in a secret type: `Debug` of the configuration never shows it.
    pub secret: bool,
}

/// What applies when a variable is unset.
#[derive(Clone, Copy, Debug)]
pub enum DefaultValue {
    /// This value, under every profile.
    Literal(&'static str),
    /// Depends on the profile or on other settings, or there is none.
    Described(&'static str),
}

impl DefaultValue {
    pub fn text(self) -> &'static str {
        match self {
            DefaultValue::Literal(v) | DefaultValue::Described(v) => v,
        }
    }
}

use DefaultValue::{Described, Literal};

const fn setting(
    section: &'static str,
    name: &'static str,
    default: DefaultValue,
    meaning: &'static str,
) -> Setting {
    Setting {
        section,
        name,
        default,
        meaning,
        secret: false,
    }
}

const fn secret(
    section: &'static str,
    name: &'static str,
    default: DefaultValue,
    meaning: &'static str,
) -> Setting {
    Setting {
        secret: true,
        ..setting(section, name, default, meaning)
    }
}

const DATA: &str = "Database and Redis";
const HTTP: &str = "HTTP server";
const TOKENS: &str = "Verifying Supabase tokens";
const AUTH: &str = "Auth server and Tenantry's own tokens";
const JOBS: &str = "Background jobs, email, reports and imports";
const BILLING: &str = "Billing";

/// Every environment variable the configuration reads, by section.
pub const SETTINGS: &[Setting] = &[
    secret(
        DATA,
        "DATABASE_URL",
        Described(
            "dev: postgres://tenantry_api:tenantry_api@127.0.0.1:5432/tenantry; required otherwise",
        ),
        "the API's login role (postgres://user:password@host:5432/db)",
    ),
    secret(
        DATA,
        "MIGRATION_DATABASE_URL",
        Described("DATABASE_URL (dev: postgres://postgres@127.0.0.1:5432/tenantry)"),
        "the owner role that runs migrations (required by `tenantry migrate`)",
    ),
    setting(
        DATA,
        "DB_MAX_CONNECTIONS",
        Literal("8"),
        "database pool size per process",
    ),
    setting(
        DATA,
        "DB_ACQUIRE_TIMEOUT_SECS",
        Literal("2"),
        "longest a request waits for a database connection, then 503 unavailable (1-60)",
    ),
    secret(
        DATA,
        "REDIS_URL",
        Literal("redis://127.0.0.1:6379/0"),
        "Redis: the read cache, rate limits and the job broker (redis:// or rediss://)",
    ),
    setting(
        DATA,
        "CACHE_TTL_SECS",
        Literal("5"),
        "lifetime of cached reads; bounds staleness when Redis is unreachable (1-300)",
    ),
    setting(
        DATA,
        "CACHE_PREFIX",
        Literal("tenantry"),
        "prefix of every cache key, so deployments can share one Redis",
    ),
    setting(
        HTTP,
        "PORT",
        Literal("8080"),
        "listen port, on 127.0.0.1 under dev and 0.0.0.0 otherwise",
    ),
    setting(
        HTTP,
        "BIND_ADDR",
        Described("from PORT"),
        "listen address (host:port); wins over PORT",
    ),
    setting(
        HTTP,
        "LOG_FORMAT",
        Described("dev: pretty; otherwise json"),
        "log format, json or pretty (RUST_LOG filters)",
    ),
    setting(
        HTTP,
        "CORS_ALLOWED_ORIGINS",
        Described("dev: *; otherwise none"),
        "comma-separated origins allowed by CORS, or *",
    ),
    setting(
        HTTP,
        "REQUEST_TIMEOUT_SECS",
        Literal("30"),
        "per-request timeout once the body is in (503 timeout)",
    ),
    setting(
        HTTP,
        "BODY_READ_TIMEOUT_SECS",
        Literal("10"),
        "a request body must arrive within this, else 408 (1-600)",
    ),
    setting(
        HTTP,
        "HEADER_READ_TIMEOUT_SECS",
        Literal("10"),
        "the request line and headers must arrive within this, else the connection closes (1-600)",
    ),
    setting(
        HTTP,
        "TRUSTED_PROXIES",
        Described("none: the peer address is the client"),
        "comma-separated CIDRs of load balancers whose X-Forwarded-For names the client",
    ),
    setting(
        HTTP,
        "MAX_BODY_BYTES",
        Literal("262144"),
        "request body limit (413)",
    ),
    setting(
        HTTP,
        "INVITATION_TTL_HOURS",
        Literal("168"),
        "lifetime of an invitation (1-8760)",
    ),
    setting(
        HTTP,
        "METRICS_ADDR",
        Described("none: /metrics on the API's listener"),
        "serve /metrics and /healthz on this separate listener instead",
    ),
    secret(
        HTTP,
        "METRICS_TOKEN",
        Described("none: /metrics is open only under dev or on METRICS_ADDR"),
        "bearer token /metrics requires",
    ),
    secret(
        TOKENS,
        "JWT_SECRET",
        Described("dev: a built-in development secret; otherwise it or JWKS_URL is required"),
        "HS256 secret of the Supabase project (at least 32 characters)",
    ),
    setting(
        TOKENS,
        "JWKS_URL",
        Described("none"),
        "JWKS endpoint of ES256/RS256 token keys",
    ),
    setting(
        TOKENS,
        "JWT_ISSUER",
        Described("none: not checked"),
        "required iss of tokens",
    ),
    setting(
        TOKENS,
        "JWT_AUDIENCE",
        Literal("authenticated"),
        "required aud of tokens",
    ),
    setting(
        TOKENS,
        "JWT_REQUIRE_EMAIL_VERIFIED",
        Literal("false"),
        "tokens Tenantry did not sign need a top-level email_verified: true",
    ),
    secret(
        AUTH,
        "AUTH_KEYS_SECRET",
        Described("dev: a built-in development value; otherwise none: nothing is signed"),
        "base64 of 32 bytes that encrypts the signing keys at rest",
    ),
    setting(
        AUTH,
        "AUTH_ISSUER",
        Literal("http://127.0.0.1:8080/auth/v1"),
        "iss of the access tokens Tenantry signs",
    ),
    setting(
        AUTH,
        "JWT_EXPIRY_SECS",
        Literal("3600"),
        "lifetime of the access tokens Tenantry signs (60-86400)",
    ),
    setting(
        AUTH,
        "AUTH_AUTOCONFIRM",
        Described("dev: true; otherwise false"),
        "sign-ups are confirmed at once, without an email",
    ),
    setting(
        AUTH,
        "AUTH_SITE_URL",
        Described("APP_URL"),
        "base URL of the links in auth emails; /verify redirects there",
    ),
    setting(
        AUTH,
        "AUTH_EXTERNAL_URL",
        Described("AUTH_ISSUER"),
        "where clients reach /auth/v1, for the links in auth emails",
    ),
    setting(
        AUTH,
        "AUTH_REDIRECT_ALLOW_LIST",
        Described("none"),
        "comma-separated URL prefixes /verify may also redirect to",
    ),
    setting(
        AUTH,
        "AUTH_REFRESH_REUSE_INTERVAL_SECS",
        Literal("10"),
        "how long a rotated refresh token still returns its successor (0-3600)",
    ),
    setting(
        AUTH,
        "AUTH_DISABLE_SIGNUP",
        Literal("false"),
        "POST /auth/v1/signup answers signup_disabled",
    ),
    setting(
        AUTH,
        "AUTH_IP_LIMIT_PER_MIN",
        Literal("30"),
        "sign-up, sign-in, verify and recover requests a minute per client IP",
    ),
    setting(
        AUTH,
        "AUTH_REAUTH_WINDOW_SECS",
        Literal("600"),
        "how recent a sign-in lets PUT /user change email or password without a nonce (0-86400)",
    ),
    setting(
        AUTH,
        "AUTH_HASH_QUEUE",
        Literal("64"),
        "password hashes that may wait for a core; past it 503 busy (1-100000)",
    ),
    setting(
        JOBS,
        "JOBS_PREFIX",
        Literal("tenantry"),
        "prefix of the job broker's Redis keys",
    ),
    setting(
        JOBS,
        "WORKER_CONCURRENCY",
        Literal("default=16,email=8,reports=2,imports=2"),
        "jobs at once per queue, per worker process (queue=N,...; others 4)",
    ),
    setting(
        JOBS,
        "JOB_LEASE_SECS",
        Literal("30"),
        "a killed worker's jobs run again this long after its last lease renewal (1-3600)",
    ),
    setting(
        JOBS,
        "WORKER_SHUTDOWN_GRACE_SECS",
        Literal("30"),
        "after SIGTERM, how long running jobs may take to finish",
    ),
    setting(
        JOBS,
        "WORKER_METRICS_ADDR",
        Described("none"),
        "where `tenantry worker` serves /metrics and /healthz",
    ),
    setting(
        JOBS,
        "CRON_PROBE",
        Described("none"),
        "cron expression (seconds optional) of a heartbeat probe job",
    ),
    setting(
        JOBS,
        "DEV_WORKER",
        Described("true"),
        "run the job relay, worker and scheduler inside `tenantry dev`",
    ),
    secret(
        JOBS,
        "SMTP_URL",
        Described("none: emails are written to the log"),
        "smtp:// or smtps:// URL of the mail server (user:password@ for AUTH)",
    ),
    setting(
        JOBS,
        "MAIL_FROM",
        Literal("Tenantry <no-reply@localhost>"),
        "sender of every email",
    ),
    setting(
        JOBS,
        "APP_URL",
        Literal("http://localhost:3000"),
        "base URL of the web app, for links in emails",
    ),
    setting(
        JOBS,
        "REPORTS_STORE",
        Literal("./var/reports"),
        "where reports are stored: a directory, file://, s3:// or gs:// URL",
    ),
    setting(
        JOBS,
        "MAX_IMPORT_BYTES",
        Literal("5242880"),
        "largest member import file (413 above it)",
    ),
    setting(
        BILLING,
        "PAYMENT_PROVIDER",
        Literal("manual"),
        "manual (a platform admin marks invoices paid) or stripe",
    ),
    secret(
        BILLING,
        "STRIPE_SECRET_KEY",
        Described("none; required with stripe"),
        "Stripe's secret API key",
    ),
    secret(
        BILLING,
        "STRIPE_WEBHOOK_SECRET",
        Described("none; required with stripe"),
        "webhook signing secrets, comma-separated while rotating",
    ),
    setting(
        BILLING,
        "STRIPE_API_BASE",
        Literal("https://api.stripe.com"),
        "Stripe's API",
    ),
];

/// The setting named `name`.
pub fn find(name: &str) -> Option<&'static Setting> {
    SETTINGS.iter().find(|s| s.name == name)
}

/// The table as text for `tenantry --help`.
pub fn help() -> String {
    let mut out = String::from(
        "Environment variables (a .env file is read when present; docs/configuration.md has the details):\n",
    );
    let mut section = "";
    for s in SETTINGS {
        if s.section != section {
            section = s.section;
            let _ = write!(out, "\n{section}:\n");
        }
        let secret = if s.secret { " [secret]" } else { "" };
        let _ = writeln!(
            out,
            "  {}{secret} [default: {}]\n      {}",
            s.name,
            s.default.text(),
            s.meaning
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique() {
        for (i, s) in SETTINGS.iter().enumerate() {
            assert!(
                SETTINGS[..i].iter().all(|earlier| earlier.name != s.name),
                "{} is listed twice",
                s.name
            );
        }
    }

    #[test]
    fn help_lists_every_setting_with_its_default() {
        let help = help();
        for s in SETTINGS {
            assert!(help.contains(&format!("  {}", s.name)), "{}", s.name);
            assert!(help.contains(s.default.text()), "{}", s.name);
            assert!(help.contains(s.meaning), "{}", s.name);
        }
    }

    #[test]
    fn the_configuration_doc_mentions_every_setting() {
        let doc = include_str!("../../docs/configuration.md");
        for s in SETTINGS {
            assert!(
                doc.contains(&format!("`{}`", s.name)),
                "docs/configuration.md does not mention {}",
                s.name
            );
        }
    }

    #[test]
    fn the_env_example_mentions_every_setting() {
        let example = include_str!("../../.env.example");
        for s in SETTINGS {
            let set = example.lines().any(|line| {
                line.trim_start_matches(['#', ' '])
                    .starts_with(&format!("{}=", s.name))
            });
            assert!(set, ".env.example does not show {}=", s.name);
        }
    }
}
