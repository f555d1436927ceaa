//! Logging setup and the request id carried through each request's task, so
//! that errors rendered anywhere can name it.

use tracing_subscriber::EnvFilter;

/// How log lines are written: JSON (production) or human-readable (`dev`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Pretty,
}

tokio::task_local! {
    static REQUEST_ID: String;
}

pub fn init(format: LogFormat) {
    init_to(format, false)
}

/// Logs to stderr, for commands whose stdout is their output (`admin ...`).
pub fn init_stderr(format: LogFormat) {
    init_to(format, true)
}

fn init_to(format: LogFormat, stderr: bool) {
    let filter = EnvFilter::try_from_env("RUST_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,tower_http=info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(move || -> Box<dyn std::io::Write> {
            if stderr {
                Box::new(std::io::stderr())
            } else {
                Box::new(std::io::stdout())
            }
        });
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
}

/// Runs `fut` with `id` as the current request id.
pub async fn with_request_id<F: Future>(id: String, fut: F) -> F::Output {
    REQUEST_ID.scope(id, fut).await
}

pub fn current_request_id() -> Option<String> {
    REQUEST_ID.try_with(|id| id.clone()).ok()
}
