//! Background work, composed: what each job kind depends on (built from the
//! configuration), the registry of every kind Tenantry runs, the cron
//! schedules, and the relay, worker and scheduler running together.
//!
//! The engine in [`crate::jobs`] knows no domain; the domains own their
//! jobs. This module is where the two meet.

use std::collections::HashMap;
use std::sync::Arc;

use croner::Cron;
use object_store::ObjectStore;
use sqlx::PgPool;

use crate::billing::credits::prune::IdempotencyPrune;
use crate::billing::credits::sweep::CreditsSweep;
use crate::billing::subscriptions::Rollover;
use crate::config::Config;
use crate::imports::job::ImportMembers;
use crate::jobs::cleanup::Cleanup;
use crate::jobs::probe::{Noop, Probe};
use crate::jobs::scheduler::{self, Schedule};
use crate::jobs::worker::{self, Registry, Shutdown};
use crate::jobs::{Engine, relay};
use crate::mail::{Mailer, SendEmail};
use crate::organizations::service::InviteSettings;
use crate::reports::build::{BuildReport, open_store};

/// What background jobs are built from: the engine (database and broker),
/// the mailer and the report store, shared by the server (which enqueues
/// and serves reports) and the workers in its process.
#[derive(Clone)]
pub struct Background {
    pub engine: Engine,
    pub mailer: Mailer,
    /// Where built reports are stored (`REPORTS_STORE`).
    pub report_store: Arc<dyn ObjectStore>,
    pub config: Arc<Config>,
}

impl Background {
    pub fn new(pool: PgPool, config: Arc<Config>) -> anyhow::Result<Background> {
        let engine = engine(pool, &config)?;
        let mailer = Mailer::new(
            config
                .jobs
                .smtp_url
                .as_ref()
                .map(secrecy::ExposeSecret::expose_secret),
            &config.jobs.mail_from,
            config.create_database,
        )?;
        let report_store = open_store(&config.jobs.reports_store)?;
        Ok(Background {
            engine,
            mailer,
            report_store,
            config,
        })
    }
}

/// The job engine on `pool`, with the broker `config` names.
pub fn engine(pool: PgPool, config: &Config) -> anyhow::Result<Engine> {
    Engine::new(pool, &config.redis_url(), &config.jobs.prefix)
}

/// Every job kind Tenantry runs, each with what its handler needs.
pub fn registry(bg: &Background) -> Registry {
    Registry::default()
        .register::<SendEmail>(bg.mailer.clone())
        .register::<Probe>(())
        .register::<Noop>(())
        .register::<Cleanup>(())
        .register::<CreditsSweep>(())
        .register::<IdempotencyPrune>(())
        .register::<BuildReport>(bg.report_store.clone())
        .register::<ImportMembers>(InviteSettings::from_config(&bg.config))
        .register::<Rollover>(bg.config.billing.provider)
}

/// The schedules Tenantry runs.
pub fn schedules(config: &Config) -> Vec<Schedule> {
    let mut out = vec![
        Schedule::new(
            "jobs.cleanup",
            "0 17 3 * * *".parse().expect("valid cron"),
            |_| Cleanup {},
        ),
        Schedule::new(
            "billing.idempotency_prune",
            "0 17 3 * * *".parse().expect("valid cron"),
            |_| IdempotencyPrune {},
        ),
        Schedule::new(
            "billing.credits_sweep",
            "30 * * * * *".parse().expect("valid cron"),
            |_| CreditsSweep {},
        ),
        Schedule::new(
            "billing.rollover",
            "0 * * * * *".parse().expect("valid cron"),
            |_| Rollover {},
        ),
    ];
    if let Some(expr) = &config.jobs.cron_probe
        && let Ok(cron) = expr.parse::<Cron>()
    {
        out.push(Schedule::new("jobs.probe", cron, |tick| Probe {
            label: format!("cron:{}", tick.to_rfc3339()),
            sleep_ms: 0,
            fail_attempts: 0,
        }));
    }
    out
}

/// The worker's settings: the concurrency of each queue `registry` uses,
/// the lease and the grace period.
pub fn worker_settings(config: &Config, registry: &Registry) -> worker::Settings {
    let concurrency: HashMap<&'static str, usize> = registry
        .queues()
        .into_iter()
        .map(|queue| (queue, config.jobs.concurrency_of(queue)))
        .collect();
    worker::Settings {
        concurrency,
        lease: config.jobs.lease,
        shutdown_grace: config.jobs.shutdown_grace,
    }
}

/// Runs the relay, the worker and the scheduler until `shutdown`; returns
/// once running jobs finished (or the grace period ended).
pub async fn run(bg: Background, shutdown: Shutdown) {
    let registry = registry(&bg);
    let settings = worker_settings(&bg.config, &registry);
    if bg.config.jobs.smtp_url.is_none() && !bg.config.create_database {
        tracing::warn!("SMTP_URL is unset: emails are written to the log, not sent");
    }
    let relay = tokio::spawn(relay::run(
        bg.engine.pool.clone(),
        bg.engine.broker.clone(),
        shutdown.clone(),
    ));
    let scheduler = tokio::spawn(scheduler::run(
        bg.engine.pool.clone(),
        schedules(&bg.config),
        shutdown.clone(),
    ));
    worker::run(bg.engine, registry, settings, shutdown).await;
    let _ = relay.await;
    let _ = scheduler.await;
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};

    use super::*;
    use crate::jobs::scheduler::next_tick;

    #[test]
    fn cleanup_runs_daily_at_03_17() {
        let config =
            crate::config::Config::from_lookup(crate::config::Profile::Dev, |_| None).unwrap();
        let s = schedules(&config);
        assert!(
            s.iter().all(|s| s.name != "jobs.probe"),
            "no probe schedule unless CRON_PROBE is set"
        );
        let cleanup = s.iter().find(|s| s.name == "jobs.cleanup").unwrap();
        let after = Utc.with_ymd_and_hms(2026, 1, 1, 4, 0, 0).unwrap();
        let first = next_tick(&cleanup.cron, after).unwrap();
        let second = next_tick(&cleanup.cron, first).unwrap();
        assert_eq!(first, Utc.with_ymd_and_hms(2026, 1, 2, 3, 17, 0).unwrap());
        assert_eq!(second - first, chrono::Duration::days(1));
    }

    #[test]
    fn idempotency_keys_are_pruned_daily() {
        let config =
            crate::config::Config::from_lookup(crate::config::Profile::Dev, |_| None).unwrap();
        let s = schedules(&config);
        let prune = s
            .iter()
            .find(|s| s.name == "billing.idempotency_prune")
            .unwrap();
        let after = Utc.with_ymd_and_hms(2026, 1, 1, 4, 0, 0).unwrap();
        let first = next_tick(&prune.cron, after).unwrap();
        let second = next_tick(&prune.cron, first).unwrap();
        assert_eq!(second - first, chrono::Duration::days(1));
    }

    #[test]
    fn billing_rollover_runs_every_minute() {
        let config =
            crate::config::Config::from_lookup(crate::config::Profile::Dev, |_| None).unwrap();
        let s = schedules(&config);
        let rollover = s.iter().find(|s| s.name == "billing.rollover").unwrap();
        let after = Utc.with_ymd_and_hms(2026, 1, 1, 4, 0, 30).unwrap();
        let first = next_tick(&rollover.cron, after).unwrap();
        assert_eq!(first, Utc.with_ymd_and_hms(2026, 1, 1, 4, 1, 0).unwrap());
        let second = next_tick(&rollover.cron, first).unwrap();
        assert_eq!(second - first, chrono::Duration::minutes(1));
    }
}
