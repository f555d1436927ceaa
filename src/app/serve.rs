//! The processes: the API server (with the in-process worker under `dev`),
//! the worker, the metrics listener, and shutdown on SIGTERM or SIGINT.

use std::sync::Arc;
use std::time::Duration;

use secrecy::ExposeSecret;

use super::http::{healthz, router};
use super::state::AppState;
use crate::auth::jwt::Verifier;
use crate::config::Config;
use crate::core::error::ApiError;

/// Serves until SIGTERM or SIGINT, then finishes in-flight requests. With
/// `with_worker` (`tenantry dev`), the job relay, worker and scheduler run in
/// the same process and stop with it.
pub async fn serve(config: Config, with_worker: bool) -> anyhow::Result<()> {
    let pool = crate::core::db::connect_pool(
        config.database_url.expose_secret(),
        config.db_max_connections,
        config.db_acquire_timeout,
    )
    .await?;
    let verifier = Verifier::new(&config.jwt)?;
    verifier.warm_up().await;
    let bind = config.bind_addr;
    let limits = server_limits(&config);
    let metrics_addr = config.metrics_addr;
    let state = AppState::new(pool.clone(), config, verifier).await?;
    let (stop, stopped) = crate::jobs::worker::Shutdown::new();
    let background = with_worker.then(|| {
        tokio::spawn(crate::app::background::run(
            state.jobs.clone(),
            stopped.clone(),
        ))
    });
    if let Some(addr) = metrics_addr {
        let token = state.config.jobs.metrics_token.clone();
        let engine = state.jobs.engine.clone();
        spawn_metrics_listener(addr, engine, token, limits, stopped.clone()).await?;
    }
    let app = router(state);
    let listener = tokio::net::TcpListener::bind(bind).await?;
    tracing::info!(addr = %listener.local_addr()?, "listening");
    crate::core::http_server::serve(listener, app, limits, async move {
        shutdown_signal().await;
        let _ = stop.send(true);
    })
    .await?;
    if let Some(bg) = background {
        let _ = bg.await;
    }
    pool.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// The connection limits of the HTTP listeners.
pub fn server_limits(config: &Config) -> crate::core::http_server::ServerLimits {
    crate::core::http_server::ServerLimits {
        header_read_timeout: config.header_read_timeout,
        shutdown_grace: config.request_timeout + Duration::from_secs(5),
    }
}

/// `/metrics` and `/healthz` on a listener of their own (`METRICS_ADDR`,
/// `WORKER_METRICS_ADDR`): meant for a private network, so open unless
/// `METRICS_TOKEN` is set.
async fn spawn_metrics_listener(
    addr: std::net::SocketAddr,
    engine: crate::jobs::Engine,
    token: Option<secrecy::SecretString>,
    limits: crate::core::http_server::ServerLimits,
    stopped: crate::jobs::worker::Shutdown,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "metrics listening");
    let app = axum::Router::new()
        .route("/healthz", axum::routing::get(healthz))
        .route(
            "/metrics",
            axum::routing::get(move |headers: axum::http::HeaderMap| {
                let engine = engine.clone();
                let token = token.clone();
                async move {
                    crate::jobs::routes::metrics_allowed(token.as_ref(), &headers, true)?;
                    Ok::<_, ApiError>(crate::jobs::routes::render_metrics(engine).await)
                }
            }),
        );
    tokio::spawn(async move {
        let stop = async move { stopped.wait().await };
        if let Err(e) = crate::core::http_server::serve(listener, app, limits, stop).await {
            tracing::warn!(error = %e, "metrics listener failed");
        }
    });
    Ok(())
}

/// `tenantry worker`: relay, worker and scheduler until SIGTERM or SIGINT;
/// then running jobs get the grace period to finish.
pub async fn work(config: Config) -> anyhow::Result<()> {
    let pool = crate::core::db::connect_pool(
        config.database_url.expose_secret(),
        config.db_max_connections,
        config.db_acquire_timeout,
    )
    .await?;
    let metrics_addr = config.jobs.worker_metrics_addr;
    let limits = server_limits(&config);
    let token = config.jobs.metrics_token.clone();
    let background = crate::app::background::Background::new(pool.clone(), Arc::new(config))?;
    let (stop, stopped) = crate::jobs::worker::Shutdown::new();
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop.send(true);
    });
    if let Some(addr) = metrics_addr {
        let engine = background.engine.clone();
        spawn_metrics_listener(addr, engine, token, limits, stopped.clone()).await?;
    }
    crate::app::background::run(background, stopped).await;
    pool.close().await;
    tracing::info!("stopped");
    Ok(())
}

pub(crate) async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutting down: finishing in-flight requests");
}
