//! The HTTP/1.1 server loop: hyper with a header read timeout, a cap on open connections and
//! graceful shutdown. The router's request timeout (see [`crate::GatewayConfig`]) bounds the
//! rest of a request, a body sent too slowly included.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt;

/// Limits of the connection layer.
#[derive(Debug, Clone)]
pub struct ServeLimits {
    /// A connection must deliver a request's complete head (request line and headers) within
    /// this time of the server starting to wait for it, whether the connection is new or idle
    /// between keep-alive requests; otherwise it is closed. Stops clients that open a
    /// connection and send the head slowly, or nothing.
    pub header_read_timeout: Duration,
    /// Connections served at once. When all are in use, the server stops accepting: further
    /// connections wait in the kernel's listen backlog (and are accepted as slots free up)
    /// rather than being refused. Each slot is held at most for a request's lifetime plus the
    /// header read timeout, so slow or idle clients cannot keep them.
    pub max_connections: usize,
}

impl Default for ServeLimits {
    fn default() -> ServeLimits {
        ServeLimits {
            header_read_timeout: Duration::from_secs(10),
            max_connections: 1024,
        }
    }
}

/// Is an `accept` error about one connection (go on at once) rather than the process (e.g. out
/// of file descriptors: pause before trying again)?
fn is_connection_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}

/// Serves `app` on `listener` until `shutdown` completes, then stops accepting, lets the
/// requests in flight finish (idle connections are closed at once) and returns.
///
/// HTTP/1.1 only. Errors accepting one connection are logged and do not stop the server.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ServeLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(x) => x,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    tracing::error!(error = %e, "accepting a connection failed; retrying in 1 s");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        () = &mut shutdown => break,
                    }
                }
            },
            () = &mut shutdown => break,
        };
        let app = app.clone();
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let app = app.clone();
            async move { app.oneshot(req.map(axum::body::Body::new)).await }
        });
        let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    tracing::info!("stopped accepting; waiting for requests in flight");
    graceful.shutdown().await;
    Ok(())
}
