//! The `billing.idempotency_prune` job, daily: forgets the idempotency keys
//! of credit writes once they are a week old (a repeat of the same request
//! within the week replays its first response; after it, the key is new).

use serde::{Deserialize, Serialize};

use crate::core::db::{SystemScope, system_tx};
use crate::jobs::{Job, JobContext, JobError};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IdempotencyPrune {}

impl Job for IdempotencyPrune {
    const KIND: &'static str = "billing.idempotency_prune";
    type Deps = ();

    async fn run(self, _: &(), ctx: JobContext) -> Result<(), JobError> {
        let mut tx = system_tx(ctx.pool(), SystemScope::Jobs).await?;
        // Idempotency keys of credit writes are honoured for a week.
        let keys: i64 = sqlx::query_scalar("select app.idempotency_prune(interval '7 days')")
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        tracing::info!(keys, "idempotency keys pruned");
        Ok(())
    }
}
