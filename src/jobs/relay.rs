//! The relay: moves committed outbox rows to the broker.
//!
//! Woken by `NOTIFY tenantry_jobs` (sent when a transaction that enqueued
//! jobs commits), and every second regardless, so a lost notification or a
//! Redis outage only delays jobs. Each batch is claimed with
//! `FOR UPDATE SKIP LOCKED`, so several relays share the work without
//! waiting on each other, and deleted in the same transaction only after
//! Redis accepted it. A relay that dies between the two leaves the rows in
//! place; the next push of the same ids is a no-op in the broker.

use crate::core::db::{SystemScope, system_tx};
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use uuid::Uuid;

use super::broker::Broker;
use super::metrics;
use super::outbox::Envelope;
use super::worker::Shutdown;

/// Rows moved per transaction.
pub const BATCH: i64 = 500;
const CHANNEL: &str = "tenantry_jobs";

pub async fn run(pool: PgPool, broker: Broker, shutdown: Shutdown) {
    let mut listener: Option<PgListener> = None;
    let mut backoff = Duration::from_millis(100);
    loop {
        if shutdown.is_set() {
            break;
        }
        if listener.is_none() {
            listener = match PgListener::connect_with(&pool).await {
                Ok(mut l) => match l.listen(CHANNEL).await {
                    Ok(()) => Some(l),
                    Err(e) => {
                        tracing::warn!(error = %e, "relay cannot LISTEN; polling");
                        None
                    }
                },
                Err(e) => {
                    tracing::warn!(error = %e, "relay cannot connect to LISTEN; polling");
                    None
                }
            };
        }
        // Drain everything committed so far.
        let mut failed = false;
        loop {
            match relay_batch(&pool, &broker).await {
                Ok(n) => {
                    backoff = Duration::from_millis(100);
                    if n < BATCH as usize {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "relay cannot move jobs to the broker; they wait in the outbox");
                    failed = true;
                    break;
                }
            }
        }
        let wait = if failed {
            backoff = (backoff * 2).min(Duration::from_secs(2));
            backoff
        } else {
            Duration::from_secs(1)
        };
        match listener.as_mut() {
            Some(l) if !failed => {
                tokio::select! {
                    r = l.recv() => if let Err(e) = r {
                        tracing::warn!(error = %e, "relay lost its LISTEN connection");
                        listener = None;
                    },
                    _ = tokio::time::sleep(wait) => {},
                    _ = shutdown.wait() => break,
                }
            }
            _ => tokio::select! {
                _ = tokio::time::sleep(wait) => {},
                _ = shutdown.wait() => break,
            },
        }
    }
}

/// Moves up to [`BATCH`] rows; returns how many.
pub async fn relay_batch(pool: &PgPool, broker: &Broker) -> anyhow::Result<usize> {
    let mut tx = system_tx(pool, SystemScope::JobRelay).await?;
    let rows: Vec<(Uuid, String, Option<chrono::DateTime<chrono::Utc>>, String)> = sqlx::query_as(
        "select id, queue, run_at, envelope from app.job_outbox
         order by seq limit $1 for update skip locked",
    )
    .bind(BATCH)
    .fetch_all(&mut *tx)
    .await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let jobs: Vec<(Uuid, String, Option<i64>, String, u32)> = rows
        .iter()
        .map(|(id, queue, run_at, env)| {
            // An envelope that does not parse still goes to the broker, with
            // one attempt: the worker sends it to the dead letters with the reason.
            let max = serde_json::from_str::<Envelope>(env)
                .map(|e| e.max_attempts)
                .unwrap_or(1);
            (
                *id,
                queue.clone(),
                run_at.map(|t| t.timestamp_millis()),
                env.clone(),
                max,
            )
        })
        .collect();
    broker.push(&jobs).await?;
    let ids: Vec<Uuid> = rows.iter().map(|r| r.0).collect();
    sqlx::query("delete from app.job_outbox where id = any($1)")
        .bind(&ids)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    metrics::relayed(ids.len());
    Ok(ids.len())
}

/// Rows waiting in the outbox (for metrics and `admin jobs stats`).
pub async fn outbox_depth(pool: &PgPool) -> Result<i64, sqlx::Error> {
    let mut tx = system_tx(pool, SystemScope::JobRelay).await?;
    let (n,): (i64,) = sqlx::query_as("select count(*) from app.job_outbox")
        .fetch_one(&mut *tx)
        .await?;
    tx.rollback().await?;
    Ok(n)
}
