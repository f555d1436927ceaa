//! Job metrics of this process, in the Prometheus text format.
//!
//! Counters and histograms per job kind live in process memory (each worker
//! reports its own, as Prometheus expects); queue depths are read from Redis
//! and the outbox when scraped, since they belong to no single process.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::{LazyLock, Mutex};

const BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0, 300.0,
];

#[derive(Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, v: f64) {
        for (i, b) in BUCKETS.iter().enumerate() {
            if v <= *b {
                self.counts[i] += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }
}

#[derive(Default)]
struct PerKind {
    started: u64,
    succeeded: u64,
    failed: u64,
    dead: u64,
    run_time: Histogram,
    start_latency: Histogram,
}

#[derive(Default)]
struct Registry {
    kinds: BTreeMap<String, PerKind>,
    relayed: u64,
}

static REGISTRY: LazyLock<Mutex<Registry>> = LazyLock::new(Default::default);

fn with_kind(kind: &str, f: impl FnOnce(&mut PerKind)) {
    let mut r = REGISTRY.lock().unwrap_or_else(|p| p.into_inner());
    f(r.kinds.entry(kind.to_owned()).or_default());
}

pub fn job_started(kind: &str) {
    with_kind(kind, |k| k.started += 1);
}

pub fn job_succeeded(kind: &str) {
    with_kind(kind, |k| k.succeeded += 1);
}

/// An attempt failed and the job will be retried.
pub fn job_failed(kind: &str) {
    with_kind(kind, |k| k.failed += 1);
}

pub fn job_dead(kind: &str) {
    with_kind(kind, |k| k.dead += 1);
}

pub fn observe_run_time(kind: &str, secs: f64) {
    with_kind(kind, |k| k.run_time.observe(secs));
}

/// From the commit of `enqueue` (or the job's scheduled time) to its start.
pub fn observe_start_latency(kind: &str, secs: f64) {
    with_kind(kind, |k| k.start_latency.observe(secs));
}

pub fn relayed(n: usize) {
    REGISTRY.lock().unwrap_or_else(|p| p.into_inner()).relayed += n as u64;
}

/// Counters of one kind: (started, succeeded, failed, dead).
pub fn counts(kind: &str) -> (u64, u64, u64, u64) {
    let r = REGISTRY.lock().unwrap_or_else(|p| p.into_inner());
    r.kinds
        .get(kind)
        .map(|k| (k.started, k.succeeded, k.failed, k.dead))
        .unwrap_or_default()
}

/// The process's job metrics, plus queue depths when given.
pub fn render(depths: Option<(&super::broker::QueueStats, i64)>) -> String {
    let r = REGISTRY.lock().unwrap_or_else(|p| p.into_inner());
    let mut out = String::new();
    let counter = |out: &mut String, name: &str, help: &str, get: &dyn Fn(&PerKind) -> u64| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for (kind, k) in &r.kinds {
            let _ = writeln!(out, "{name}{{kind=\"{kind}\"}} {}", get(k));
        }
    };
    counter(
        &mut out,
        "tenantry_jobs_started_total",
        "Job attempts started.",
        &|k| k.started,
    );
    counter(
        &mut out,
        "tenantry_jobs_succeeded_total",
        "Jobs that succeeded.",
        &|k| k.succeeded,
    );
    counter(
        &mut out,
        "tenantry_jobs_failed_total",
        "Attempts that failed and will be retried.",
        &|k| k.failed,
    );
    counter(
        &mut out,
        "tenantry_jobs_dead_total",
        "Jobs moved to the dead letters.",
        &|k| k.dead,
    );
    let histogram =
        |out: &mut String, name: &str, help: &str, get: &dyn Fn(&PerKind) -> &Histogram| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
            for (kind, k) in &r.kinds {
                let h = get(k);
                for (i, b) in BUCKETS.iter().enumerate() {
                    let _ = writeln!(
                        out,
                        "{name}_bucket{{kind=\"{kind}\",le=\"{b}\"}} {}",
                        h.counts[i]
                    );
                }
                let _ = writeln!(
                    out,
                    "{name}_bucket{{kind=\"{kind}\",le=\"+Inf\"}} {}",
                    h.count
                );
                let _ = writeln!(out, "{name}_sum{{kind=\"{kind}\"}} {}", h.sum);
                let _ = writeln!(out, "{name}_count{{kind=\"{kind}\"}} {}", h.count);
            }
        };
    histogram(
        &mut out,
        "tenantry_job_run_seconds",
        "Time one attempt ran.",
        &|k| &k.run_time,
    );
    histogram(
        &mut out,
        "tenantry_job_start_latency_seconds",
        "From the commit that enqueued a job (or its scheduled time) to its first start.",
        &|k| &k.start_latency,
    );
    let _ = writeln!(
        out,
        "# HELP tenantry_jobs_relayed_total Outbox rows moved to the broker.\n# TYPE tenantry_jobs_relayed_total counter\ntenantry_jobs_relayed_total {}",
        r.relayed
    );
    if let Some((stats, outbox)) = depths {
        let _ = writeln!(
            out,
            "# HELP tenantry_jobs_queue_depth Jobs ready to run, per queue.\n# TYPE tenantry_jobs_queue_depth gauge"
        );
        for q in &stats.queues {
            let _ = writeln!(
                out,
                "tenantry_jobs_queue_depth{{queue=\"{}\"}} {}",
                q.queue, q.ready
            );
        }
        for (name, help, v) in [
            (
                "tenantry_jobs_scheduled",
                "Jobs waiting for their time or a retry.",
                stats.scheduled as i64,
            ),
            (
                "tenantry_jobs_running",
                "Jobs running (holding a lease).",
                stats.running as i64,
            ),
            (
                "tenantry_jobs_dead",
                "Jobs in the dead letters.",
                stats.dead as i64,
            ),
            (
                "tenantry_jobs_outbox",
                "Committed jobs not yet moved to the broker.",
                outbox,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
    }
    out
}
