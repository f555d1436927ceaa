//! The `billing.credits_sweep` job: books expired grant remainders and
//! expired holds of orgs nobody touched (every credit operation books its
//! own org's first). Each org's expiries count from the instant they ran
//! out, however late the sweep runs.

use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use uuid::Uuid;

use crate::core::db::{SystemScope, TenantTx, system_tx};
use crate::jobs::{Job, JobContext, JobError};

/// Orgs looked up per query.
const BATCH: i32 = 200;
/// Most orgs one run books (the next run goes on).
const MAX_PER_RUN: usize = 10_000;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreditsSweep {}

impl Job for CreditsSweep {
    const KIND: &'static str = "billing.credits_sweep";
    type Deps = ();

    async fn run(self, _: &(), ctx: JobContext) -> Result<(), JobError> {
        let booked = sweep(ctx.pool()).await?;
        if booked > 0 {
            tracing::info!(orgs = booked, "credit expiries booked");
        }
        Ok(())
    }
}

/// Books what ran out in every org with something due, each org in a
/// transaction of its own (one org's failure holds up no other; it is
/// logged and tried again next run). Returns how many orgs were booked.
pub async fn sweep(pool: &PgPool) -> Result<usize, sqlx::Error> {
    let mut booked = 0;
    let mut failed: Vec<Uuid> = Vec::new();
    while booked + failed.len() < MAX_PER_RUN {
        let mut tx = system_tx(pool, SystemScope::Jobs).await?;
        let due: Vec<Uuid> = sqlx::query_scalar("select app.credit_due_orgs($1)")
            .bind(BATCH + failed.len() as i32)
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        let due: Vec<Uuid> = due.into_iter().filter(|o| !failed.contains(o)).collect();
        if due.is_empty() {
            break;
        }
        for org_id in due {
            match book(pool, org_id).await {
                Ok(()) => booked += 1,
                Err(e) => {
                    tracing::warn!(error = %e, %org_id, "cannot book an org's credit expiries");
                    failed.push(org_id);
                }
            }
        }
    }
    Ok(booked)
}

async fn book(pool: &PgPool, org_id: Uuid) -> Result<(), sqlx::Error> {
    let mut tx = TenantTx::enter_as_system(pool, org_id, SystemScope::Jobs).await?;
    sqlx::query("select app.credit_refresh()")
        .execute(tx.conn())
        .await?;
    tx.commit().await
}
