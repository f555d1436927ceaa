//! The HTTP/1.1 server loop: hyper's connection builder (for the header
//! read timeout `axum::serve` does not expose), the peer address as
//! `ConnectInfo`, and a graceful shutdown that lets in-flight requests end.

use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tower::ServiceExt as _;

/// How the server treats its connections.
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    /// A client that has not sent the request line and headers within this
    /// loses its connection (slow-header clients hold no resources for long).
    pub header_read_timeout: Duration,
    /// After shutdown starts, how long in-flight requests may take.
    pub shutdown_grace: Duration,
}

/// Serves `app` on `listener` until `shutdown` completes, then stops
/// accepting and waits (up to the grace period) for open connections.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ServerLimits,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    // Tells open connections to finish their request and close.
    let (closing, close) = watch::channel(false);
    // Each connection holds a sender; all dropped: all connections ended.
    let (open, mut all_closed) = mpsc::channel::<()>(1);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: wait, do not spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            app.clone().oneshot(req)
        });
        // Upgrades stay possible (WebSockets).
        let conn = http
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        let (mut close, open) = (close.clone(), open.clone());
        tokio::spawn(async move {
            let mut conn = std::pin::pin!(conn);
            let ended = tokio::select! {
                ended = conn.as_mut() => ended,
                _ = close.changed() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = ended {
                tracing::debug!(error = %e, %peer, "connection ended with an error");
            }
            drop(open);
        });
    }
    drop(listener);
    let _ = closing.send(true);
    drop(open);
    tokio::select! {
        _ = all_closed.recv() => {}
        _ = tokio::time::sleep(limits.shutdown_grace) => {
            tracing::warn!("shutdown grace period over; closing the remaining connections");
        }
    }
    Ok(())
}
