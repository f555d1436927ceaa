//! What a job is: the [`Job`] trait, its [`RetryPolicy`], how an attempt
//! fails ([`JobError`]) and what a handler sees of its delivery
//! ([`JobContext`]).

use std::time::Duration;

use serde::{Serialize, de::DeserializeOwned};
use sqlx::PgPool;
use uuid::Uuid;

/// A kind of job: its payload type, queue, retry policy and handler.
pub trait Job: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// Stable name stored with each job (`"email.send"`).
    const KIND: &'static str;
    /// The queue it runs on; each queue has its own concurrency.
    const QUEUE: &'static str = "default";

    /// What the handler needs besides the database (a mailer, a file
    /// store, settings): given once, when the kind is registered with the
    /// worker. Enqueuing a job needs none of it.
    type Deps: Clone + Send + Sync + 'static;

    fn policy() -> RetryPolicy {
        RetryPolicy::default()
    }

    fn run(
        self,
        deps: &Self::Deps,
        ctx: JobContext,
    ) -> impl Future<Output = Result<(), JobError>> + Send;
}

/// One delivery of a job, as its handler sees it.
#[derive(Clone)]
pub struct JobContext {
    pub pool: PgPool,
    pub id: Uuid,
    pub attempt: u32,
    pub max_attempts: u32,
    pub request_id: Option<String>,
    pub org_id: Option<Uuid>,
}

impl JobContext {
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Whether this is the last attempt the job gets.
    pub fn last_attempt(&self) -> bool {
        self.attempt >= self.max_attempts
    }
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
            JobError::Retry(e) if is_outage(e) => (
                "unavailable",
                format!("a service the job needs was unavailable; {outcome}"),
            ),
            JobError::Retry(_) => ("internal_error", format!("the job failed; {outcome}")),
        }
    }
}

/// A requester who left the org, or whose role lost the permission, is a
/// refusal members see on the job's record; a database error is retried.
impl From<crate::auth::rbac::ActForError> for JobError {
    fn from(e: crate::auth::rbac::ActForError) -> Self {
        use crate::auth::rbac::ActForError;
        match e {
            ActForError::NotMember => JobError::Refused {
                code: "not_found",
                message: e.to_string(),
            },
            ActForError::Lacks(_) => JobError::Refused {
                code: "permission_denied",
                message: e.to_string(),
            },
            ActForError::Db(e) => e.into(),
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
