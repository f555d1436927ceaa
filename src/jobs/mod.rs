//! Background jobs: a transactional outbox in Postgres, a broker in Redis and
//! worker processes.
//!
//! * [`enqueue`] writes the job into the caller's transaction (`app.job_outbox`),
//!   so a job exists if and only if that transaction commits.
//! * The [`relay`] (in `tenantry worker` and `tenantry dev`) moves committed
//!   rows to Redis, woken by `LISTEN/NOTIFY`, claiming rows with `SKIP LOCKED`,
//!   and deletes them only after Redis accepted them.
//! * The [`broker`] keeps ready lists per queue, a schedule (delays and retry
//!   backoff), leases of running jobs and the dead letters, changed only by
//!   Lua scripts, so every transition is atomic.
//! * The [`worker`] runs jobs with per-queue concurrency, renews the leases
//!   of the jobs it runs, retries failures with exponential backoff and
//!   jitter, and moves jobs that used up their attempts to the dead letters.
//!   A job whose worker dies is delivered again when its lease runs out.
//! * The [`scheduler`] fires cron schedules once per tick, whatever the
//!   number of workers, by claiming the tick in Postgres in the same
//!   transaction that enqueues its job.
//!
//! Delivery is at least once: handlers are written to be idempotent.

pub mod admin;
pub mod broker;
pub mod metrics;
pub mod records;
pub mod relay;
pub mod routes;
pub mod scheduler;
pub mod tasks;
pub mod worker;

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use sqlx::PgConnection;
use uuid::Uuid;

pub use worker::JobContext;

/// A kind of job: its payload type, queue, retry policy and handler.
pub trait Job: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// Stable name stored with each job (`"email.send"`).
    const KIND: &'static str;
    /// The queue it runs on; each queue has its own concurrency.
    const QUEUE: &'static str = "default";

    fn policy() -> RetryPolicy {
        RetryPolicy::default()
    }

    fn run(self, ctx: JobContext) -> impl Future<Output = Result<(), JobError>> + Send;
}

/// How often and how long a job kind is tried.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts in all, the first included; after the last the job is dead.
    pub max_attempts: u32,
    /// Backoff before the second attempt; doubles each time, with jitter.
    pub backoff: Duration,
    pub max_backoff: Duration,
    /// One attempt taking longer fails with a timeout.
    pub timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            backoff: Duration::from_secs(2),
            max_backoff: Duration::from_secs(600),
            timeout: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// The delay before attempt `attempt + 1`, after `attempt` failed:
    /// `backoff * 2^(attempt-1)`, capped, with "equal jitter" (half fixed,
    /// half random) so that failures of many jobs do not retry in lockstep.
    pub fn delay_after(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(30);
        let base = self
            .backoff
            .saturating_mul(1u32 << exp.min(20))
            .min(self.max_backoff);
        let half = base / 2;
        let jitter = rand::random_range(0..=half.as_millis() as u64);
        half + Duration::from_millis(jitter)
    }
}

/// Why an attempt failed. The full text goes to the logs and the operator
/// routes (`/api/v1/admin/jobs/dead`); members reading a job record see only
/// [`JobError::public`]: a stable code and a message fit for them.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// Worth another attempt (I/O, a busy database, a timeout).
    #[error("{0:#}")]
    Retry(anyhow::Error),
    /// Will fail again however often it is tried (an undecodable payload, a
    /// lost record): dead at once, with this reason (for operators).
    #[error("{0}")]
    Permanent(String),
    /// Will fail again, for a reason the org can see and act on (the
    /// requester lost the permission, the uploaded file is invalid): dead
    /// at once, and members see this code and message.
    #[error("{message}")]
    Refused { code: &'static str, message: String },
}

impl JobError {
    /// What members see of the error: a stable code and a safe message.
    /// `gave_up`: no attempt follows.
    pub fn public(&self, gave_up: bool) -> (&'static str, String) {
        let outcome = if gave_up {
            "the job gave up"
        } else {
            "it will be retried"
        };
        match self {
            JobError::Refused { code, message } => (code, message.clone()),
            JobError::Permanent(_) => (
                "job_failed",
                "the job failed and cannot succeed; an operator can see why".to_owned(),
            ),
            JobError::Retry(e) if crate::jobs::worker::is_outage(e) => (
                "unavailable",
                format!("a service the job needs was unavailable; {outcome}"),
            ),
            JobError::Retry(_) => ("internal_error", format!("the job failed; {outcome}")),
        }
    }
}

impl From<anyhow::Error> for JobError {
    fn from(e: anyhow::Error) -> Self {
        JobError::Retry(e)
    }
}

impl From<sqlx::Error> for JobError {
    fn from(e: sqlx::Error) -> Self {
        JobError::Retry(e.into())
    }
}

impl From<redis::RedisError> for JobError {
    fn from(e: redis::RedisError) -> Self {
        JobError::Retry(e.into())
    }
}

/// A job as the broker stores it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope {
    pub id: Uuid,
    pub kind: String,
    pub queue: String,
    pub payload: serde_json::Value,
    pub max_attempts: u32,
    /// Milliseconds since the epoch when the enqueuing transaction wrote it.
    pub enqueued_at_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_at_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// The org whose job record (if any) follows this job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org_id: Option<Uuid>,
    /// Set when the job has a tenant-visible record (`job_records`).
    #[serde(default)]
    pub recorded: bool,
}

/// Options of one enqueue.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The job's id; a new UUIDv7 when absent. An id already in the outbox
    /// is a unique violation; one the broker still holds or finished within
    /// the hour is not run again.
    pub id: Option<Uuid>,
    /// Run at this time instead of now.
    pub run_at: Option<DateTime<Utc>>,
    /// Tie the job to a tenant record in `job_records` (same id).
    pub record_org: Option<Uuid>,
}

impl Options {
    pub fn delay(d: Duration) -> Self {
        Options {
            run_at: Some(Utc::now() + chrono::Duration::from_std(d).unwrap_or_default()),
            ..Default::default()
        }
    }
}

/// Adds `job` to the outbox inside the caller's transaction: it is sent to
/// the broker once that transaction commits, and never if it rolls back.
pub async fn enqueue<J: Job>(conn: &mut PgConnection, job: &J) -> Result<Uuid, sqlx::Error> {
    enqueue_with(conn, job, Options::default()).await
}

pub async fn enqueue_with<J: Job>(
    conn: &mut PgConnection,
    job: &J,
    opts: Options,
) -> Result<Uuid, sqlx::Error> {
    let envelope = envelope_for(job, &opts)?;
    let id = envelope.id;
    insert_outbox(conn, std::slice::from_ref(&envelope)).await?;
    Ok(id)
}

/// The envelope `enqueue_with` would write: the job's payload and policy,
/// the current request id, and the enqueue time.
pub fn envelope_for<J: Job>(job: &J, opts: &Options) -> Result<Envelope, sqlx::Error> {
    let payload = serde_json::to_value(job).map_err(|e| sqlx::Error::Encode(e.into()))?;
    Ok(Envelope {
        id: opts.id.unwrap_or_else(Uuid::now_v7),
        kind: J::KIND.to_owned(),
        queue: J::QUEUE.to_owned(),
        payload,
        max_attempts: J::policy().max_attempts.max(1),
        enqueued_at_ms: Utc::now().timestamp_millis(),
        run_at_ms: opts.run_at.map(|t| t.timestamp_millis()),
        request_id: crate::core::telemetry::current_request_id(),
        org_id: opts.record_org,
        recorded: opts.record_org.is_some(),
    })
}

/// Writes envelopes to the outbox in one statement (the relay is woken when
/// the transaction commits).
pub async fn insert_outbox(
    conn: &mut PgConnection,
    envelopes: &[Envelope],
) -> Result<(), sqlx::Error> {
    if envelopes.is_empty() {
        return Ok(());
    }
    let mut ids = Vec::with_capacity(envelopes.len());
    let mut queues = Vec::with_capacity(envelopes.len());
    let mut run_ats = Vec::with_capacity(envelopes.len());
    let mut bodies = Vec::with_capacity(envelopes.len());
    for e in envelopes {
        ids.push(e.id);
        queues.push(e.queue.clone());
        run_ats.push(e.run_at_ms.and_then(DateTime::<Utc>::from_timestamp_millis));
        bodies.push(serde_json::to_string(e).map_err(|e| sqlx::Error::Encode(e.into()))?);
    }
    sqlx::query(
        "insert into app.job_outbox (id, queue, run_at, envelope)
         select * from unnest($1::uuid[], $2::text[], $3::timestamptz[], $4::text[])",
    )
    .bind(&ids)
    .bind(&queues)
    .bind(&run_ats)
    .bind(&bodies)
    .execute(conn)
    .await?;
    Ok(())
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// Runs the relay, the worker and the scheduler until `shutdown`; returns
/// once running jobs finished (or the grace period ended).
pub async fn run_background(services: worker::Services, shutdown: worker::Shutdown) {
    let relay = tokio::spawn(relay::run(
        services.pool.clone(),
        services.broker.clone(),
        shutdown.clone(),
    ));
    let scheduler = tokio::spawn(scheduler::run(
        services.pool.clone(),
        scheduler::schedules(&services.config),
        shutdown.clone(),
    ));
    worker::run(services, worker::registry(), shutdown).await;
    let _ = relay.await;
    let _ = scheduler.await;
}
