//! Billing periods: the `billing.rollover` job, enqueued every minute by the
//! scheduler, ends every subscription period that is due (see
//! [`crate::billing::subscriptions::rollover_due`]). Running it twice, or on
//! several workers at once, grants each period's credits once.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::subscriptions;
use crate::config::PaymentProviderKind;
use crate::jobs::{Job, JobContext, JobError, RetryPolicy};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Rollover {}

impl Job for Rollover {
    const KIND: &'static str = "billing.rollover";
    /// The payment provider that takes payments.
    type Deps = PaymentProviderKind;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 3,
            backoff: Duration::from_secs(5),
            max_backoff: Duration::from_secs(60),
            timeout: Duration::from_secs(10 * 60),
        }
    }

    async fn run(self, provider: &PaymentProviderKind, ctx: JobContext) -> Result<(), JobError> {
        let report = subscriptions::rollover_due(ctx.pool(), *provider).await?;
        if report.advanced > 0 || report.skipped > 0 || report.failed > 0 {
            tracing::info!(
                advanced = report.advanced,
                skipped = report.skipped,
                failed = report.failed,
                "billing rollover"
            );
        }
        if report.failed > 0 {
            // The orgs that advanced are no longer due; a retry takes the rest.
            return Err(JobError::Retry(anyhow::anyhow!(
                "the rollover of {} subscription(s) failed",
                report.failed
            )));
        }
        Ok(())
    }
}
