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
//!
//! This is the engine only: it knows no domain. Each domain owns its job
//! kinds (a [`Job`] with the dependencies its handler needs, given when the
//! kind is registered); [`crate::app::background`] registers them and names the
//! cron schedules. The engine's own kinds are the [`probe`]s and the
//! [`cleanup`] of its tables.

pub mod admin;
pub mod broker;
pub mod cleanup;
pub mod engine;
pub mod job;
pub mod metrics;
pub mod outbox;
pub mod probe;
pub mod records;
pub mod relay;
pub mod routes;
pub mod scheduler;
pub mod worker;

pub use engine::Engine;
pub use job::{Job, JobContext, JobError, RetryPolicy};
pub use outbox::{Envelope, Options, enqueue, enqueue_with, envelope_for, insert_outbox};
