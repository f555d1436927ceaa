//! Outgoing email.
//!
//! A [`Mailer`] sends [`Rendered`] emails (see [`templates`]) either over SMTP
//! (`SMTP_URL`: `smtp://host:port` in clear, `smtp://host?tls=required` with
//! STARTTLS, `smtps://host` with implicit TLS, credentials as
//! `smtp://user:pass@host`) or, when no URL is configured, to the log.
//!
//! Failures are classified for the job layer: a [`MailError::Permanent`] will
//! fail again however often it is tried (an invalid recipient, a 5xx answer),
//! a [`MailError::Transient`] is worth a retry (the server unreachable, a
//! timeout, a 4xx answer).
//!
//! Emails go out through the [`SendEmail`] job (`email.send`), enqueued in
//! the transaction that decides to send them.

pub mod templates;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail};
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::PoolConfig;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde::{Deserialize, Serialize};

use crate::jobs::{Job, JobContext, JobError, RetryPolicy};

pub use templates::{Rendered, Template};

/// Timeout for connecting to the SMTP server and for each of its answers.
const SMTP_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends emails. Cheap to clone (an `Arc`); SMTP connections are pooled.
#[derive(Clone)]
pub struct Mailer {
    inner: Arc<Inner>,
}

struct Inner {
    from: Mailbox,
    transport: Transport,
}

enum Transport {
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
    /// No SMTP server configured: emails are written to the log.
    Log {
        log_bodies: bool,
    },
}

impl fmt::Debug for Mailer {
    // Never shows the SMTP URL or the transport: they may carry a password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let transport = match self.inner.transport {
            Transport::Smtp(_) => "smtp",
            Transport::Log { .. } => "log",
        };
        f.debug_struct("Mailer")
            .field("from", &self.inner.from.to_string())
            .field("transport", &transport)
            .finish()
    }
}

/// Why an email was not sent.
#[derive(Debug, thiserror::Error)]
pub enum MailError {
    /// Will fail again: an invalid address or message, a permanent (5xx)
    /// SMTP answer.
    #[error("email rejected: {0}")]
    Permanent(String),
    /// Worth another attempt: connection refused or lost, a timeout, a
    /// transient (4xx) SMTP answer.
    #[error("email not sent (will retry): {0}")]
    Transient(String),
}

impl MailError {
    pub fn is_permanent(&self) -> bool {
        matches!(self, MailError::Permanent(_))
    }
}

impl Mailer {
    /// A mailer sending through `smtp_url`, or writing to the log when it is
    /// `None` (with the text bodies when `log_bodies`, for development).
    /// `from` is the sender mailbox (`MAIL_FROM`, like
    /// `Tenantry <no-reply@example.com>`).
    ///
    /// With an SMTP URL, must be called inside a Tokio runtime (the
    /// connection pool runs a background task).
    pub fn new(smtp_url: Option<&str>, from: &str, log_bodies: bool) -> anyhow::Result<Mailer> {
        let from: Mailbox = from.trim().parse().map_err(|e| {
            anyhow!(
                "MAIL_FROM {from:?} is not a valid mailbox \
                 (expected like `Tenantry <no-reply@example.com>`): {e}"
            )
        })?;
        let transport = match smtp_url {
            None => Transport::Log { log_bodies },
            Some(url) => {
                if tokio::runtime::Handle::try_current().is_err() {
                    bail!("the SMTP mailer must be created inside a Tokio runtime");
                }
                // lettre's errors here never contain the URL (nor its password).
                let builder = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
                    .map_err(|e| anyhow!("invalid SMTP_URL: {e}"))?;
                let pool = PoolConfig::new()
                    .max_size(10)
                    .idle_timeout(Duration::from_secs(60));
                Transport::Smtp(
                    builder
                        .timeout(Some(SMTP_TIMEOUT))
                        .pool_config(pool)
                        .build(),
                )
            }
        };
        Ok(Mailer {
            inner: Arc::new(Inner { from, transport }),
        })
    }

    /// The sender mailbox.
    pub fn sender(&self) -> &Mailbox {
        &self.inner.from
    }

    /// Sends `email` to `to` (an address, or a mailbox like `Ann <ann@x.org>`)
    /// as a multipart/alternative message (text and HTML).
    pub async fn send(&self, to: &str, email: &Rendered) -> Result<(), MailError> {
        let to_mailbox: Mailbox = to
            .trim()
            .parse()
            .map_err(|e| MailError::Permanent(format!("invalid recipient address {to:?}: {e}")))?;
        let message = self.message(to_mailbox, email)?;
        match &self.inner.transport {
            Transport::Log { log_bodies } => {
                if *log_bodies {
                    tracing::info!(
                        to,
                        subject = %email.subject,
                        body = %email.text,
                        "email (not sent: no SMTP_URL)"
                    );
                } else {
                    tracing::info!(to, subject = %email.subject, "email (not sent: no SMTP_URL)");
                }
                Ok(())
            }
            Transport::Smtp(smtp) => match smtp.send(message).await {
                Ok(_) => {
                    tracing::debug!(subject = %email.subject, "email sent");
                    Ok(())
                }
                Err(e) => Err(classify(&e)),
            },
        }
    }

    fn message(&self, to: Mailbox, email: &Rendered) -> Result<Message, MailError> {
        let from = &self.inner.from;
        let message_id = format!(
            "<{}@{}>",
            uuid::Uuid::new_v4().simple(),
            from.email.domain()
        );
        // A subject is one line whatever the template interpolated.
        let subject: String = email
            .subject
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        Message::builder()
            .from(from.clone())
            .to(to)
            .subject(subject)
            .date_now()
            .message_id(Some(message_id))
            .multipart(MultiPart::alternative_plain_html(
                email.text.clone(),
                email.html.clone(),
            ))
            .map_err(|e| MailError::Permanent(format!("invalid message: {e}")))
    }
}

/// Permanent: a 5xx answer, or a client-side refusal that depends only on
/// the message (non-ASCII content or address the server cannot take).
/// Everything else (network, timeouts, TLS, 4xx, unparsable answers) is
/// transient.
fn classify(e: &lettre::transport::smtp::Error) -> MailError {
    let msg = e.to_string();
    if e.is_permanent() || e.is_client() {
        MailError::Permanent(msg)
    } else {
        MailError::Transient(msg)
    }
}

/// Product name shown in emails.
pub const PRODUCT: &str = "Tenantry";

/// The `email.send` job: sends one email with the [`Mailer`] it was
/// registered with.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SendEmail {
    pub to: String,
    #[serde(flatten)]
    pub template: Template,
}

impl Job for SendEmail {
    const KIND: &'static str = "email.send";
    const QUEUE: &'static str = "email";
    type Deps = Mailer;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 8,
            backoff: Duration::from_secs(5),
            max_backoff: Duration::from_secs(900),
            timeout: Duration::from_secs(60),
        }
    }

    async fn run(self, mailer: &Mailer, _: JobContext) -> Result<(), JobError> {
        let rendered = self.template.render(PRODUCT);
        match mailer.send(&self.to, &rendered).await {
            Ok(()) => Ok(()),
            Err(e) if e.is_permanent() => Err(JobError::Permanent(e.to_string())),
            Err(e) => Err(JobError::Retry(anyhow::anyhow!(e.to_string()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    fn rendered() -> Rendered {
        Template::PasswordReset {
            reset_url: "https://x.test/reset".into(),
        }
        .render("Tenantry")
    }

    /// A server that greets every connection with `greeting` and hangs up.
    async fn greeting_server(greeting: &'static str) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let _ = s.write_all(greeting.as_bytes()).await;
                let mut buf = [0u8; 512];
                let _ = tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await;
            }
        });
        format!("smtp://127.0.0.1:{port}")
    }

    #[test]
    fn rejects_a_bad_from() {
        for bad in ["", "not an address", "Tenantry <no-reply>", "a@b@c"] {
            let err = Mailer::new(None, bad, false).unwrap_err().to_string();
            assert!(err.contains("MAIL_FROM"), "{bad:?}: {err}");
        }
        let m = Mailer::new(None, "Tenantry <no-reply@localhost>", false).unwrap();
        assert_eq!(m.sender().email.to_string(), "no-reply@localhost");
    }

    #[tokio::test]
    async fn rejects_a_bad_smtp_url_without_echoing_it() {
        let err = Mailer::new(Some("ftp://user:hunter2@x.test"), "a@b.test", false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("SMTP_URL"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
        let m = Mailer::new(Some("smtp://user:hunter2@x.test:2525"), "a@b.test", false).unwrap();
        assert!(!format!("{m:?}").contains("hunter2"));
    }

    #[test]
    fn smtp_mailer_needs_a_runtime() {
        let err = Mailer::new(Some("smtp://127.0.0.1:2525"), "a@b.test", false).unwrap_err();
        assert!(err.to_string().contains("Tokio"), "{err}");
    }

    #[test]
    fn classification() {
        assert!(MailError::Permanent("x".into()).is_permanent());
        assert!(!MailError::Transient("x".into()).is_permanent());
    }

    #[tokio::test]
    async fn log_mailer_sends_and_rejects_invalid_recipients() {
        let m = Mailer::new(None, "Tenantry <no-reply@localhost>", true).unwrap();
        m.send("ann@example.com", &rendered()).await.unwrap();
        m.send("Ann <ann@example.com>", &rendered()).await.unwrap();
        for bad in ["", "ann", "ann@", "<ann@example.com", "a\r\nBcc: x@y.z"] {
            let err = m.send(bad, &rendered()).await.unwrap_err();
            assert!(err.is_permanent(), "{bad:?}: {err}");
        }
    }

    #[tokio::test]
    async fn smtp_answers_are_classified() {
        let from = "Tenantry <no-reply@localhost>";
        let url = greeting_server("554 5.3.2 no service\r\n").await;
        let err = Mailer::new(Some(&url), from, false)
            .unwrap()
            .send("ann@example.com", &rendered())
            .await
            .unwrap_err();
        assert!(err.is_permanent(), "{err}");

        let url = greeting_server("421 4.3.2 busy, try later\r\n").await;
        let err = Mailer::new(Some(&url), from, false)
            .unwrap()
            .send("ann@example.com", &rendered())
            .await
            .unwrap_err();
        assert!(!err.is_permanent(), "{err}");

        // Connection refused: a port nobody listens on any more.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let err = Mailer::new(Some(&format!("smtp://127.0.0.1:{port}")), from, false)
            .unwrap()
            .send("ann@example.com", &rendered())
            .await
            .unwrap_err();
        assert!(!err.is_permanent(), "{err}");
    }
}
