//! Books expired grant remainders and expired holds of orgs nobody touched
//! (every credit operation books its own org's first). Each org's expiries
//! count from the instant they ran out, however late the sweep runs.

use serde::{Deserialize, Serialize};

use crate::jobs::{Job, JobContext, JobError};

/// Orgs settled per transaction.
const BATCH: i32 = 200;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreditsSweep {}

impl Job for CreditsSweep {
    const KIND: &'static str = "billing.credits_sweep";

    async fn run(self, ctx: JobContext) -> Result<(), JobError> {
        let mut total = 0;
        loop {
            let mut tx = ctx.pool().begin().await?;
            sqlx::query("select set_config('role', 'tenantry_app', true)")
                .execute(&mut *tx)
                .await?;
            let n: i32 = sqlx::query_scalar("select app.credit_sweep($1)")
                .bind(BATCH)
                .fetch_one(&mut *tx)
                .await?;
            tx.commit().await?;
            total += n;
            if n < BATCH {
                break;
            }
        }
        if total > 0 {
            tracing::info!(orgs = total, "credit expiries booked");
        }
        Ok(())
    }
}
