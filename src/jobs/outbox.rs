//! The transactional outbox: [`enqueue`] writes a job into the caller's
//! transaction (`app.job_outbox`), so the job exists if and only if that
//! transaction commits; the relay moves it to the broker afterwards.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use uuid::Uuid;

use super::job::Job;

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
