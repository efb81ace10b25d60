//! The accept loop. `axum::serve` gives hyper no timer, so hyper's header-read timeout is never
//! armed and a client dribbling its headers would hold a connection forever; this serves the same
//! router with the timer set (the "serve with hyper" way of axum's own examples).

use std::future::Future;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceExt;

/// Serves `router` on `listener` until `shutdown` completes, then stops accepting and waits for the
/// connections' in-flight requests to finish (idle keep-alive connections close at once).
///
/// `header_timeout` bounds how long a client may take to send a request's headers; the body and
/// the answer are bounded by each route's own timeout.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    header_timeout: Duration,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    builder.http2().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Usually out of file descriptors: back off rather than spin.
                    tracing::warn!(%error, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Answers are small and often latency-bound (a woken wait); do not let Nagle hold them.
        let _ = stream.set_nodelay(true);
        let (builder, router, watcher) = (builder.clone(), router.clone(), graceful.watcher());
        tokio::spawn(async move {
            // hyper's header timer starts only once it knows the protocol: bound that part here.
            if !matches!(
                tokio::time::timeout(header_timeout, protocol_known(&stream)).await,
                Ok(Ok(()))
            ) {
                return;
            }
            let service = TowerToHyperService::new(
                router.map_request(|request: Request<Incoming>| request.map(Body::new)),
            );
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            if let Err(error) = watcher.watch(connection.into_owned()).await {
                tracing::debug!(%error, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Resolves once the client has sent enough to tell HTTP/1 from HTTP/2 (what hyper's protocol
/// detection waits for), without consuming it; an error if it hangs up first.
async fn protocol_known(stream: &TcpStream) -> std::io::Result<()> {
    const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let mut buffer = [0u8; H2_PREFACE.len()];
    loop {
        let read = stream.peek(&mut buffer).await?;
        if read == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if read == H2_PREFACE.len() || buffer[..read] != H2_PREFACE[..read] {
            return Ok(());
        }
        // A prefix of the HTTP/2 preface so far; peeking again at once would see the same bytes.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
