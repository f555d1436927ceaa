//! The worker: runs jobs from the broker with per-queue concurrency.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use secrecy::ExposeSecret;
use sqlx::PgPool;
use tokio::sync::{Semaphore, mpsc, watch};
use tracing::Instrument;
use uuid::Uuid;

use super::broker::{Broker, Delivery};
use super::{Envelope, Job, JobError, RetryPolicy, metrics, records};
use crate::config::Config;

/// What jobs need: the database, the broker, email and file storage.
#[derive(Clone)]
pub struct Services {
    pub pool: PgPool,
    pub broker: Broker,
    pub mailer: crate::mail::Mailer,
    pub store: Arc<dyn object_store::ObjectStore>,
    pub config: Arc<Config>,
}

impl Services {
    pub fn new(pool: PgPool, config: Arc<Config>) -> anyhow::Result<Services> {
        let broker = Broker::new(&config.redis_url(), &config.jobs.prefix)?;
        let mailer = crate::mail::Mailer::new(
            config.jobs.smtp_url.as_ref().map(|u| u.expose_secret()),
            &config.jobs.mail_from,
            config.create_database,
        )?;
        let store = super::tasks::report::open_store(&config.jobs.reports_store)?;
        Ok(Services {
            pool,
            broker,
            mailer,
            store,
            config,
        })
    }
}

/// One delivery of a job, as its handler sees it.
#[derive(Clone)]
pub struct JobContext {
    pub services: Services,
    pub id: Uuid,
    pub attempt: u32,
    pub max_attempts: u32,
    pub request_id: Option<String>,
    pub org_id: Option<Uuid>,
}

impl JobContext {
    pub fn pool(&self) -> &PgPool {
        &self.services.pool
    }

    /// Whether this is the last attempt the job gets.
    pub fn last_attempt(&self) -> bool {
        self.attempt >= self.max_attempts
    }
}

type Handler = Arc<
    dyn Fn(JobContext, serde_json::Value) -> BoxFuture<'static, Result<(), JobError>> + Send + Sync,
>;

/// The job kinds a worker can run.
#[derive(Clone, Default)]
pub struct Registry {
    handlers: HashMap<&'static str, (Handler, RetryPolicy, &'static str)>,
}

impl Registry {
    pub fn register<J: Job>(mut self) -> Self {
        let handler: Handler = Arc::new(|ctx, payload| {
            Box::pin(async move {
                let job: J = serde_json::from_value(payload).map_err(|e| {
                    JobError::Permanent(format!(
                        "the payload cannot be decoded as {}: {e}",
                        J::KIND
                    ))
                })?;
                job.run(ctx).await
            })
        });
        self.handlers
            .insert(J::KIND, (handler, J::policy(), J::QUEUE));
        self
    }

    /// Queues that registered kinds run on.
    pub fn queues(&self) -> Vec<&'static str> {
        let mut q: Vec<_> = self.handlers.values().map(|(_, _, q)| *q).collect();
        q.sort();
        q.dedup();
        q
    }

    pub fn policy(&self, kind: &str) -> Option<RetryPolicy> {
        self.handlers.get(kind).map(|(_, p, _)| *p)
    }
}

/// Stops the worker: fetching ends at once, running jobs get the grace period.
#[derive(Clone)]
pub struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    pub fn new() -> (watch::Sender<bool>, Shutdown) {
        let (tx, rx) = watch::channel(false);
        (tx, Shutdown(rx))
    }

    pub fn is_set(&self) -> bool {
        *self.0.borrow()
    }

    pub async fn wait(&self) {
        let mut rx = self.0.clone();
        let _ = rx.wait_for(|v| *v).await;
    }
}

/// Jobs running in this process, for lease renewal.
type Running = Arc<Mutex<HashMap<Uuid, u32>>>;

/// Most jobs one fetch takes.
const FETCH_BATCH: usize = 64;

/// Runs the worker until `shutdown`, then lets running jobs finish within
/// the configured grace period.
pub async fn run(services: Services, registry: Registry, shutdown: Shutdown) {
    let running: Running = Default::default();
    let (ack_tx, ack_rx) = mpsc::channel::<(Uuid, u32, i64)>(4096);
    let acker = tokio::spawn(acker(services.broker.clone(), ack_rx));
    let renewer = tokio::spawn(renewer(
        services.broker.clone(),
        running.clone(),
        services.config.jobs.lease,
    ));
    let registry = Arc::new(registry);
    let mut loops = Vec::new();
    for queue in registry.queues() {
        let concurrency = services.config.jobs.concurrency_of(queue);
        loops.push(tokio::spawn(queue_loop(
            services.clone(),
            registry.clone(),
            queue,
            concurrency,
            shutdown.clone(),
            running.clone(),
            ack_tx.clone(),
        )));
    }
    drop(ack_tx);
    tracing::info!(queues = ?registry.queues(), "worker started");
    if services.config.jobs.smtp_url.is_none() && !services.config.create_database {
        tracing::warn!("SMTP_URL is unset: emails are written to the log, not sent");
    }
    for l in loops {
        let _ = l.await;
    }
    // Every job task has ended (or was given up after the grace period):
    // the acker drains what is left, then the renewer stops.
    let _ = acker.await;
    renewer.abort();
    tracing::info!("worker stopped");
}

async fn queue_loop(
    services: Services,
    registry: Arc<Registry>,
    queue: &'static str,
    concurrency: usize,
    shutdown: Shutdown,
    running: Running,
    ack: mpsc::Sender<(Uuid, u32, i64)>,
) {
    let sem = Arc::new(Semaphore::new(concurrency));
    let lease = services.config.jobs.lease;
    let mut tasks = tokio::task::JoinSet::new();
    let mut waiter = None;
    let mut error_backoff = Duration::from_millis(200);
    loop {
        if shutdown.is_set() {
            break;
        }
        // Reap finished job tasks.
        while tasks.try_join_next().is_some() {}
        let first = tokio::select! {
            p = sem.clone().acquire_owned() => p.expect("semaphore open"),
            _ = shutdown.wait() => break,
        };
        let mut permits = vec![first];
        while permits.len() < FETCH_BATCH {
            match sem.clone().try_acquire_owned() {
                Ok(p) => permits.push(p),
                Err(_) => break,
            }
        }
        let fetched = match services.broker.fetch(queue, permits.len(), lease).await {
            Ok(f) => {
                error_backoff = Duration::from_millis(200);
                f
            }
            Err(e) => {
                drop(permits);
                tracing::warn!(queue, error = %e, "cannot fetch jobs; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(error_backoff) => {},
                    _ = shutdown.wait() => break,
                }
                error_backoff = (error_backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        for lost in fetched.lost {
            metrics::job_dead(kind_of(&lost));
            if let Ok(env) = &lost.envelope
                && env.recorded
            {
                let err = records::PublicError {
                    code: "worker_lost",
                    message: "the worker running it stopped on its last attempt; the job gave up",
                };
                if let Err(e) =
                    records::finish_failed(&services.pool, env, lost.attempt, true, err).await
                {
                    tracing::warn!(job = %lost.id, error = %e, "cannot update the job record");
                }
            }
        }
        if fetched.taken.is_empty() {
            drop(permits);
            let wait = fetched
                .next_in
                .unwrap_or(Duration::from_secs(1))
                .clamp(Duration::from_millis(5), Duration::from_secs(1));
            if waiter.is_none() {
                waiter = services.broker.blocking_connection().await.ok();
            }
            match waiter.as_mut() {
                Some(conn) => {
                    // The blocking call has no response timeout of its own: a
                    // connection dropped silently must not stall the queue.
                    let r = tokio::select! {
                        r = tokio::time::timeout(wait + Duration::from_secs(2), services.broker.wait(conn, queue, wait)) => r,
                        _ = shutdown.wait() => break,
                    };
                    if !matches!(r, Ok(Ok(()))) {
                        waiter = None;
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_millis(200)) => {},
                            _ = shutdown.wait() => break,
                        }
                    }
                }
                None => tokio::select! {
                    _ = tokio::time::sleep(wait) => {},
                    _ = shutdown.wait() => break,
                },
            }
            continue;
        }
        let mut permits = permits.into_iter();
        for delivery in fetched.taken {
            let permit = permits.next().expect("no more jobs than permits");
            running
                .lock()
                .unwrap()
                .insert(delivery.id, delivery.attempt);
            let services = services.clone();
            let registry = registry.clone();
            let running = running.clone();
            let ack = ack.clone();
            tasks.spawn(async move {
                let (id, attempt) = (delivery.id, delivery.attempt);
                run_one(services, &registry, delivery, &ack).await;
                // Only this attempt's entry: a newer delivery of the same job
                // in this process keeps its own.
                let mut running = running.lock().unwrap();
                if running.get(&id) == Some(&attempt) {
                    running.remove(&id);
                }
                drop(permit);
            });
        }
    }
    // Let this queue's running jobs finish, at most the grace period; then
    // stop them (their leases expire and they run again elsewhere).
    let grace = services.config.jobs.shutdown_grace;
    let drained =
        tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!(
            queue,
            n = tasks.len(),
            "jobs still running after the grace period are stopped; they will run again when their leases expire"
        );
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }
}

fn kind_of(d: &Delivery) -> &str {
    d.envelope
        .as_ref()
        .map(|e| e.kind.as_str())
        .unwrap_or("undecodable")
}

async fn run_one(
    services: Services,
    registry: &Registry,
    delivery: Delivery,
    ack: &mpsc::Sender<(Uuid, u32, i64)>,
) {
    let started = super::now_ms();
    let kind = kind_of(&delivery).to_owned();
    let span = tracing::info_span!(
        "job",
        job.id = %delivery.id,
        job.kind = %kind,
        job.attempt = delivery.attempt,
        request_id = tracing::field::Empty,
    );
    if let Ok(env) = &delivery.envelope
        && let Some(rid) = &env.request_id
    {
        span.record("request_id", rid.as_str());
    }
    async {
        metrics::job_started(&kind);
        if let Ok(env) = &delivery.envelope
            && delivery.attempt == 1
        {
            let since = env
                .run_at_ms
                .unwrap_or(env.enqueued_at_ms)
                .max(env.enqueued_at_ms);
            metrics::observe_start_latency(&kind, (started - since).max(0) as f64 / 1000.0);
        }
        let result = execute(&services, registry, &delivery).await;
        let secs = (super::now_ms() - started) as f64 / 1000.0;
        metrics::observe_run_time(&kind, secs);
        match result {
            Ok(()) => {
                metrics::job_succeeded(&kind);
                tracing::debug!(secs, "job succeeded");
                if ack
                    .send((delivery.id, delivery.attempt, started))
                    .await
                    .is_err()
                {
                    tracing::warn!("acker stopped; the job will run again when its lease expires");
                }
            }
            Err(err) => fail(&services, registry, &delivery, &kind, err).await,
        }
    }
    .instrument(span)
    .await
}

async fn execute(services: &Services, registry: &Registry, d: &Delivery) -> Result<(), JobError> {
    let env: &Envelope = d
        .envelope
        .as_ref()
        .map_err(|e| JobError::Permanent(e.clone()))?;
    let Some((handler, policy, _)) = registry.handlers.get(env.kind.as_str()) else {
        return Err(JobError::Permanent(format!(
            "unknown job kind {:?}",
            env.kind
        )));
    };
    if env.recorded
        && let Err(e) = records::mark_running(&services.pool, env, d.attempt).await
    {
        return Err(JobError::Retry(e.into()));
    }
    let ctx = JobContext {
        services: services.clone(),
        id: env.id,
        attempt: d.attempt,
        max_attempts: env.max_attempts,
        request_id: env.request_id.clone(),
        org_id: env.org_id,
    };
    // Its own task: a panicking handler fails its attempt, nothing else.
    let task = tokio::spawn(handler(ctx, env.payload.clone()).instrument(tracing::Span::current()));
    let abort = task.abort_handle();
    // If this attempt is stopped (shutdown after the grace period), so is its handler.
    let _guard = AbortOnDrop(abort.clone());
    match tokio::time::timeout(policy.timeout, task).await {
        Ok(Ok(r)) => r,
        Ok(Err(join)) => Err(JobError::Retry(anyhow::anyhow!("the job panicked: {join}"))),
        Err(_) => {
            abort.abort();
            Err(JobError::Retry(anyhow::anyhow!(
                "timed out after {} s",
                policy.timeout.as_secs_f64()
            )))
        }
    }
}

async fn fail(services: &Services, registry: &Registry, d: &Delivery, kind: &str, err: JobError) {
    let max = d.envelope.as_ref().map(|e| e.max_attempts).unwrap_or(1);
    // An outage of Postgres or Redis is retried without using up attempts,
    // so a database restart does not send every queued job to the dead letters.
    let outage = matches!(&err, JobError::Retry(e) if is_outage(e));
    let (dead, permanent) = match &err {
        JobError::Permanent(_) | JobError::Refused { .. } => (true, true),
        JobError::Retry(_) => (!outage && d.attempt >= max, false),
    };
    let message = err.to_string();
    let (public_code, public_message) = err.public(dead);
    let retry_in = (!dead).then(|| {
        registry
            .policy(kind)
            .unwrap_or_default()
            .delay_after(d.attempt)
    });
    match services
        .broker
        .fail(d.id, d.attempt, retry_in, &message, !outage)
        .await
    {
        Ok(true) => {}
        Ok(false) => {
            tracing::info!(error = %message, "attempt failed after losing its lease; the job was already handed on");
            return;
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot record the failure; the job will run again when its lease expires");
            return;
        }
    }
    if dead {
        metrics::job_dead(kind);
        tracing::warn!(error = %message, "job failed; it is dead");
    } else {
        metrics::job_failed(kind);
        tracing::info!(error = %message, outage, "job failed; it will be retried");
    }
    if let Ok(env) = &d.envelope
        && env.recorded
    {
        let public = records::PublicError {
            code: public_code,
            message: &public_message,
        };
        let r = if dead {
            records::finish_failed(&services.pool, env, d.attempt, !permanent, public).await
        } else {
            records::mark_retrying(&services.pool, env, d.attempt, public).await
        };
        if let Err(e) = r {
            tracing::warn!(error = %e, "cannot update the job record");
        }
    }
}

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Whether an error is an outage of the database or the broker rather than
/// the job's own failure: such attempts are retried without being counted.
pub(crate) fn is_outage(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        if let Some(db) = cause.downcast_ref::<sqlx::Error>() {
            return crate::core::error::DbTrouble::of(db)
                == Some(crate::core::error::DbTrouble::Unavailable);
        }
        if let Some(r) = cause.downcast_ref::<redis::RedisError>() {
            return r.is_io_error() || r.is_connection_dropped() || r.is_timeout();
        }
        false
    })
}

/// Acknowledges finished jobs in batches (one script call for many).
async fn acker(broker: Broker, mut rx: mpsc::Receiver<(Uuid, u32, i64)>) {
    let mut batch = Vec::with_capacity(512);
    while rx.recv_many(&mut batch, 512).await > 0 {
        let mut delay = Duration::from_millis(100);
        for _ in 0..6 {
            match broker.ack(&batch).await {
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(error = %e, n = batch.len(), "cannot acknowledge jobs; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        }
        batch.clear();
    }
}

/// Renews the leases of running jobs every third of the lease.
async fn renewer(broker: Broker, running: Running, lease: Duration) {
    let mut tick = tokio::time::interval(lease / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let jobs: Vec<(Uuid, u32)> = running
            .lock()
            .unwrap()
            .iter()
            .map(|(id, a)| (*id, *a))
            .collect();
        // Renewing goes on through the grace period; `run` stops it last.
        if let Err(e) = broker.renew(&jobs, lease).await {
            tracing::warn!(error = %e, "cannot renew job leases");
        }
    }
}

/// Every job kind Tenantry runs.
pub fn registry() -> Registry {
    super::tasks::register(Registry::default())
}
