//! Daily housekeeping of the engine's own tables: cron claims and probe
//! runs older than a week.

use crate::core::db::{SystemScope, system_tx};
use serde::{Deserialize, Serialize};

use super::job::{Job, JobContext, JobError};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Cleanup {}

impl Job for Cleanup {
    const KIND: &'static str = "jobs.cleanup";
    type Deps = ();

    async fn run(self, _: &(), ctx: JobContext) -> Result<(), JobError> {
        let mut tx = system_tx(ctx.pool(), SystemScope::Jobs).await?;
        let ticks =
            sqlx::query("delete from app.cron_ticks where tick < now() - interval '7 days'")
                .execute(&mut *tx)
                .await?
                .rows_affected();
        let probes =
            sqlx::query("delete from app.job_probes where finished_at < now() - interval '7 days'")
                .execute(&mut *tx)
                .await?
                .rows_affected();
        tx.commit().await?;
        tracing::info!(ticks, probes, "cleanup done");
        Ok(())
    }
}
