//! The accept loop. `axum::serve` gives hyper no timer, so hyper's header-read timeout is never
//! armed and a client dribbling its headers would hold a connection forever; this serves the same
//! router with the timer set (the "serve with hyper" way of axum's own examples).
//!
//! It also bounds what connections can make the process hold: how many are open at once
//! (`INBOX_MAX_CONNECTIONS`; one more is answered 503 and closed), and what each holds before a
//! handler has taken it — an HTTP/1 connection's read buffer, an HTTP/2 connection's flow-control
//! windows (the body bytes a client may send before they are read) and header lists.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tower::ServiceExt;

use super::{App, Settings};

/// An HTTP/1 connection's read buffer: the longest request head, and the most of a body read ahead.
const H1_BUFFER: usize = 16 * 1024;
/// What an HTTP/2 client may send on one stream, and on the whole connection, before the service
/// has read it (hyper's defaults are 1 MiB each, and the window of the connection grows with use).
const H2_STREAM_WINDOW: u32 = 256 * 1024;
const H2_CONNECTION_WINDOW: u32 = 512 * 1024;
/// The largest header list of one HTTP/2 request.
const H2_HEADER_LIST: u32 = 16 * 1024;
/// Requests one HTTP/2 connection may have in flight at once (hyper's default, said here).
const H2_STREAMS: u32 = 200;
/// What a connection past `INBOX_MAX_CONNECTIONS` is told before it is closed: the answer of
/// HTTP/1 (a client that speaks HTTP/2 sees the connection close).
fn too_many_connections() -> Vec<u8> {
    let body = r#"{"title":"Service Unavailable","status":503,"detail":"too many connections are open; retry later"}"#;
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/problem+json\r\n\
         retry-after: 5\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}
/// Serves `app` on `listener` until `shutdown` completes, then stops accepting and waits for the
/// connections' in-flight requests to finish (idle keep-alive connections close at once).
///
/// The request timeout also bounds how long a client may take to send a request's headers; the
/// body and the answer are bounded by each route's own timeout.
pub async fn serve(
    listener: TcpListener,
    app: App,
    settings: &Settings,
    shutdown: impl Future<Output = ()>,
) {
    let header_timeout = settings.request_timeout;
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(H1_BUFFER);
    builder
        .http2()
        .timer(TokioTimer::new())
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONNECTION_WINDOW)
        .adaptive_window(false)
        .max_header_list_size(H2_HEADER_LIST)
        .max_concurrent_streams(H2_STREAMS);
    let open = Arc::new(Semaphore::new(settings.max_connections));
    let service = app.service();
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
        let Ok(permit) = open.clone().try_acquire_owned() else {
            crate::metrics::connection_refused();
            // Whatever it manages to write, the connection is closed as it is dropped.
            let _ = stream.try_write(&too_many_connections());
            continue;
        };
        let (builder, service, watcher) = (builder.clone(), service.clone(), graceful.watcher());
        tokio::spawn(async move {
            let _open = permit;
            // hyper's header timer starts only once it knows the protocol: bound that part here.
            if !matches!(
                tokio::time::timeout(header_timeout, protocol_known(&stream)).await,
                Ok(Ok(()))
            ) {
                return;
            }
            let service = TowerToHyperService::new(
                service.map_request(|request: Request<Incoming>| request.map(Body::new)),
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
