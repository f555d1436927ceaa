//! Operator probes of the job system itself.
//!
//! `Probe` records its run in `app.job_probes` once per job, however often
//! it is delivered (the insert is idempotent; `runs` counts deliveries), so
//! operators can check the pipeline end to end (`tenantry admin jobs probe`)
//! or run it on a schedule as a heartbeat (`CRON_PROBE`). It can sleep and
//! fail its first attempts on purpose to exercise leases and retries.
//! `Noop` does nothing; it measures the pipeline's own cost.

use crate::core::db::{SystemScope, system_tx};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::job::{Job, JobContext, JobError, RetryPolicy};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Probe {
    /// Free text stored with the run (a batch name, the cron tick).
    pub label: String,
    /// Sleep this long before finishing (at most 10 minutes).
    #[serde(default)]
    pub sleep_ms: u64,
    /// Fail this many attempts before succeeding.
    #[serde(default)]
    pub fail_attempts: u32,
}

impl Job for Probe {
    const KIND: &'static str = "jobs.probe";
    type Deps = ();

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 3,
            backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(5),
            timeout: Duration::from_secs(660),
        }
    }

    async fn run(self, _: &(), ctx: JobContext) -> Result<(), JobError> {
        if self.sleep_ms > 0 {
            tokio::time::sleep(Duration::from_millis(self.sleep_ms.min(600_000))).await;
        }
        if ctx.attempt <= self.fail_attempts {
            return Err(JobError::Retry(anyhow::anyhow!(
                "probe fails attempt {} of the first {} on purpose",
                ctx.attempt,
                self.fail_attempts
            )));
        }
        let mut tx = system_tx(ctx.pool(), SystemScope::Jobs).await?;
        sqlx::query(
            "insert into app.job_probes (job_id, label) values ($1, $2)
             on conflict (job_id) do update set runs = app.job_probes.runs + 1",
        )
        .bind(ctx.id)
        .bind(&self.label)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }
}

/// Does nothing (benchmarks of the pipeline).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Noop {}

impl Job for Noop {
    const KIND: &'static str = "jobs.noop";
    type Deps = ();

    async fn run(self, _: &(), _ctx: JobContext) -> Result<(), JobError> {
        Ok(())
    }
}
