//! Background jobs, email and report storage: the broker's keys and queues,
//! worker leases and shutdown, SMTP (its URL can carry a password: a
//! secret), reports and imports, and the worker's metrics.

use std::net::SocketAddr;
use std::time::Duration;

use secrecy::SecretString;
use url::Url;

use super::parse::{ConfigError, malformed, parse_or};

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
    pub smtp_url: Option<SecretString>,
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
    pub metrics_token: Option<SecretString>,
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

impl JobsConfig {
    pub(super) fn from_lookup(
        dev: bool,
        get: &impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
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
            smtp_url: smtp_url.map(SecretString::from),
            mail_from: get("MAIL_FROM")
                .unwrap_or_else(|| "Tenantry <no-reply@localhost>".to_owned()),
            app_url,
            reports_store: get("REPORTS_STORE").unwrap_or_else(|| "./var/reports".to_owned()),
            max_import_bytes: parse_or(get, "MAX_IMPORT_BYTES", 5 * 1024 * 1024)?,
            cron_probe,
            metrics_token: get("METRICS_TOKEN").map(SecretString::from),
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
