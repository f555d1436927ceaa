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
pub mod job;
pub mod metrics;
pub mod outbox;
pub mod records;
pub mod relay;
pub mod routes;
pub mod scheduler;
pub mod tasks;
pub mod worker;

pub use job::{Job, JobContext, JobError, RetryPolicy};
pub use outbox::{Envelope, Options, enqueue, enqueue_with, envelope_for, insert_outbox};

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
