//! Cron schedules, fired once per tick however many workers run.
//!
//! Every worker runs this loop. At each tick of a schedule, each worker
//! tries to insert `(schedule, tick)` into `app.cron_ticks`; the one insert
//! that succeeds enqueues the tick's job in the same transaction (through
//! the outbox). The others find the row and do nothing. Ticks are claimed
//! in Postgres rather than Redis so that a tick and its job commit together:
//! neither a Redis outage nor a crash between claim and enqueue loses or
//! doubles a tick.

use crate::core::db::{SystemScope, system_tx};
use std::time::Duration;

use chrono::{DateTime, Utc};
use croner::Cron;
use sqlx::PgPool;
use uuid::Uuid;

use super::job::Job;
use super::outbox::{Envelope, Options, envelope_for, insert_outbox};
use super::worker::Shutdown;

/// A periodic job: a name, a cron expression (with seconds) and the job.
pub struct Schedule {
    pub name: String,
    pub cron: Cron,
    make: Box<dyn Fn(DateTime<Utc>) -> Result<Envelope, sqlx::Error> + Send + Sync>,
}

impl Schedule {
    /// `job(tick)` builds the job of each tick.
    pub fn new<J: Job>(
        name: &str,
        cron: Cron,
        job: impl Fn(DateTime<Utc>) -> J + Send + Sync + 'static,
    ) -> Schedule {
        Schedule {
            name: name.to_owned(),
            cron,
            make: Box::new(move |tick| envelope_for(&job(tick), &Options::default())),
        }
    }
}

pub async fn run(pool: PgPool, schedules: Vec<Schedule>, shutdown: Shutdown) {
    if schedules.is_empty() {
        return;
    }
    // Start from now: ticks that passed while no worker ran are not replayed.
    let mut next: Vec<Option<DateTime<Utc>>> = schedules
        .iter()
        .map(|s| next_tick(&s.cron, Utc::now()))
        .collect();
    loop {
        let Some(due) = next.iter().flatten().min().copied() else {
            return;
        };
        let wait = (due - Utc::now()).to_std().unwrap_or(Duration::ZERO);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {},
            _ = shutdown.wait() => return,
        }
        let now = Utc::now();
        let mut failed = false;
        for (i, s) in schedules.iter().enumerate() {
            let Some(tick) = next[i] else { continue };
            if tick > now {
                continue;
            }
            match fire(&pool, s, tick).await {
                Ok(Some(job)) => tracing::info!(schedule = %s.name, %tick, %job, "cron tick fired"),
                Ok(None) => {
                    tracing::debug!(schedule = %s.name, %tick, "cron tick fired by another worker")
                }
                Err(e) => {
                    // Keep the tick and try again shortly: claiming is idempotent.
                    tracing::warn!(schedule = %s.name, %tick, error = %e, "cannot fire cron tick; retrying");
                    failed = true;
                    continue;
                }
            }
            next[i] = next_tick(&s.cron, now);
        }
        if failed {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {},
                _ = shutdown.wait() => return,
            }
        }
    }
}

/// The next tick after `after`, in whole seconds: every worker computes the
/// same instant for the same tick, whatever its clock's sub-second part.
pub fn next_tick(cron: &Cron, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let t = cron.find_next_occurrence(&after, false).ok()?;
    chrono::DurationRound::duration_trunc(t, chrono::TimeDelta::seconds(1)).ok()
}

/// Claims `tick` of `s` and enqueues its job; `None` when already claimed.
pub async fn fire(
    pool: &PgPool,
    s: &Schedule,
    tick: DateTime<Utc>,
) -> Result<Option<Uuid>, sqlx::Error> {
    let envelope = (s.make)(tick)?;
    let mut tx = system_tx(pool, SystemScope::Jobs).await?;
    let claimed = sqlx::query(
        "insert into app.cron_ticks (name, tick, job_id) values ($1, $2, $3)
         on conflict do nothing",
    )
    .bind(&s.name)
    .bind(tick)
    .bind(envelope.id)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if !claimed {
        return Ok(None);
    }
    let id = envelope.id;
    insert_outbox(&mut tx, &[envelope]).await?;
    tx.commit().await?;
    Ok(Some(id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn ticks_are_whole_seconds_whatever_the_clock_says() {
        let cron: Cron = "* * * * * *".parse().unwrap();
        let after = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
            + chrono::Duration::milliseconds(123);
        let t = next_tick(&cron, after).unwrap();
        assert_eq!(t, Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 1).unwrap());
    }
}
