//! Sends one email over SMTP.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::jobs::{Job, JobContext, JobError, RetryPolicy};
use crate::mail::templates::Template;

/// Product name shown in emails.
pub const PRODUCT: &str = "Tenantry";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SendEmail {
    pub to: String,
    #[serde(flatten)]
    pub template: Template,
}

impl Job for SendEmail {
    const KIND: &'static str = "email.send";
    const QUEUE: &'static str = "email";

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 8,
            backoff: Duration::from_secs(5),
            max_backoff: Duration::from_secs(900),
            timeout: Duration::from_secs(60),
        }
    }

    async fn run(self, ctx: JobContext) -> Result<(), JobError> {
        let rendered = self.template.render(PRODUCT);
        match ctx.services.mailer.send(&self.to, &rendered).await {
            Ok(()) => Ok(()),
            Err(e) if e.is_permanent() => Err(JobError::Permanent(e.to_string())),
            Err(e) => Err(JobError::Retry(anyhow::anyhow!(e.to_string()))),
        }
    }
}
