//! Operator actions on the job system, shared by `tenantry admin jobs` and
//! the platform-admin API routes.

use crate::core::db::{SystemScope, system_tx};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::broker::{Broker, DeadJob, QueueStats};
use super::engine::Engine;
use super::outbox::{Options, envelope_for, insert_outbox, now_ms};
use super::probe::{Noop, Probe};

/// Broker counts plus the outbox.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct JobStats {
    #[serde(flatten)]
    pub broker: QueueStats,
    /// Committed jobs not yet moved to the broker.
    pub outbox: i64,
}

pub async fn stats(engine: &Engine) -> anyhow::Result<JobStats> {
    Ok(JobStats {
        broker: engine.broker.stats().await?,
        outbox: super::relay::outbox_depth(&engine.pool).await?,
    })
}

pub async fn dead(
    broker: &Broker,
    limit: usize,
    before_ms: Option<i64>,
) -> anyhow::Result<Vec<DeadJob>> {
    Ok(broker.dead(limit, before_ms).await?)
}

/// Puts a dead job back on its queue (attempts reset) and its tenant record,
/// if any, back to `queued`. `false`: no such dead job.
pub async fn retry(engine: &Engine, id: Uuid) -> anyhow::Result<bool> {
    let job = engine.broker.dead_job(id).await?;
    if !engine.broker.revive(id).await? {
        return Ok(false);
    }
    if let Some(org) = job.and_then(|j| j.org_id)
        && let Err(e) = super::records::mark_requeued(&engine.pool, org, id).await
    {
        // The job is requeued; its record catches up when the job runs.
        tracing::warn!(job = %id, error = %e, "cannot mark the job record queued");
    }
    Ok(true)
}

/// Deletes a dead job for good; its tenant record, if any, becomes
/// `failed` (and an import's upload is deleted). `false`: no such dead job.
pub async fn discard(engine: &Engine, id: Uuid) -> anyhow::Result<bool> {
    let job = engine.broker.dead_job(id).await?;
    if !engine.broker.discard(id).await? {
        return Ok(false);
    }
    if let Some(org) = job.and_then(|j| j.org_id) {
        super::records::mark_discarded(&engine.pool, org, id).await?;
    }
    Ok(true)
}

/// Enqueues `count` probe jobs in one transaction; returns their ids.
pub async fn probe(
    engine: &Engine,
    count: usize,
    label: &str,
    sleep_ms: u64,
    fail_attempts: u32,
) -> anyhow::Result<Vec<Uuid>> {
    let job = Probe {
        label: label.to_owned(),
        sleep_ms,
        fail_attempts,
    };
    let envelopes = (0..count)
        .map(|_| envelope_for(&job, &Options::default()))
        .collect::<Result<Vec<_>, _>>()?;
    let ids = envelopes.iter().map(|e| e.id).collect();
    let mut tx = system_tx(&engine.pool, SystemScope::Jobs).await?;
    for chunk in envelopes.chunks(1000) {
        insert_outbox(&mut tx, chunk).await?;
    }
    tx.commit().await?;
    Ok(ids)
}

/// How many probes labelled `label` ran (each counted once).
pub async fn probes_done(pool: &sqlx::PgPool, label: &str) -> anyhow::Result<i64> {
    let mut tx = system_tx(pool, SystemScope::Jobs).await?;
    let (n,): (i64,) = sqlx::query_as("select count(*) from app.job_probes where label = $1")
        .bind(label)
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(n)
}

/// Figures of one benchmark run.
#[derive(Debug, Serialize)]
pub struct BenchReport {
    pub jobs: usize,
    /// From the first commit to the last job done.
    pub seconds: f64,
    pub jobs_per_second: f64,
    /// From each job's committed enqueue to its start, in milliseconds.
    pub start_latency_ms_p50: f64,
    pub start_latency_ms_p99: f64,
    pub start_latency_ms_max: f64,
}

/// Enqueues `count` no-op jobs, `batch` per committed transaction, as fast
/// as it can (or paced at `rate` jobs per second), then waits until the worker(s) ran them all. Latency is from
/// each transaction's commit to the job's start (the broker's done markers
/// keep start times).
pub async fn bench(
    engine: &Engine,
    count: usize,
    batch: usize,
    rate: Option<f64>,
) -> anyhow::Result<BenchReport> {
    let started = std::time::Instant::now();
    let mut committed_at: Vec<(Uuid, i64)> = Vec::with_capacity(count);
    let mut left = count;
    while left > 0 {
        let n = left.min(batch);
        let envelopes = (0..n)
            .map(|_| envelope_for(&Noop {}, &Options::default()))
            .collect::<Result<Vec<_>, _>>()?;
        let mut tx = system_tx(&engine.pool, SystemScope::Jobs).await?;
        insert_outbox(&mut tx, &envelopes).await?;
        tx.commit().await?;
        let t = now_ms();
        committed_at.extend(envelopes.iter().map(|e| (e.id, t)));
        left -= n;
        // Paced: hold the offered load at `rate` jobs per second.
        if let Some(rate) = rate {
            let due =
                started + std::time::Duration::from_secs_f64(committed_at.len() as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
        }
    }
    let ids: Vec<Uuid> = committed_at.iter().map(|(id, _)| *id).collect();
    let mut latencies = Vec::with_capacity(count);
    let mut pending: Vec<usize> = (0..count).collect();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(600);
    while !pending.is_empty() {
        let mut still = Vec::new();
        for chunk in pending.chunks(1000) {
            let chunk_ids: Vec<Uuid> = chunk.iter().map(|i| ids[*i]).collect();
            let starts = engine.broker.done_at(&chunk_ids).await?;
            for (i, s) in chunk.iter().zip(starts) {
                match s {
                    Some(start) => latencies.push((start - committed_at[*i].1).max(0) as f64),
                    None => still.push(*i),
                }
            }
        }
        pending = still;
        if pending.is_empty() {
            break;
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "{} of {count} jobs did not run within 10 minutes (is a worker running?)",
            pending.len()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    latencies.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| latencies[((latencies.len() as f64 - 1.0) * p).round() as usize];
    Ok(BenchReport {
        jobs: count,
        seconds,
        jobs_per_second: count as f64 / seconds,
        start_latency_ms_p50: pct(0.5),
        start_latency_ms_p99: pct(0.99),
        start_latency_ms_max: pct(1.0),
    })
}
