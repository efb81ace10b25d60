//! The HTTP edge: routes grouped by resource, the state they share, and the middleware every
//! answer passes through. Handlers extract and answer; decisions live in `verify`, `ingest` and
//! `store`.

mod auth;
mod error;
mod health;
mod metrics;
mod openapi;
mod predictions;
mod server;
mod webhooks;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::middleware::map_response;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::changes::Changes;
use crate::ingest::Writer;
use crate::store::Store;
use crate::verify::Verifier;

pub use auth::ApiTokens;
pub use error::ApiError;
pub use server::serve;

/// What every handler shares, behind one `Arc`: axum clones the state for each request, and one
/// reference count to bump is cheaper than one per field (each an atomic the two cores contend for).
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

pub struct Shared {
    store: Store,
    /// Group commit for deliveries (see `ingest::Writer`).
    writer: Writer,
    changes: Changes,
    verifier: Verifier,
    tokens: ApiTokens,
    last_count: metrics::LastCount,
    /// The bound of routes that enforce it themselves rather than through a layer.
    request_timeout: Duration,
    /// Base of the absolute URLs the service hands out (`next`, `previous`); from the request's
    /// `Host` when unset.
    public_url: Option<String>,
}

impl AppState {
    pub fn new(
        store: Store,
        changes: Changes,
        verifier: Verifier,
        tokens: ApiTokens,
        public_url: Option<String>,
        request_timeout: Duration,
    ) -> Self {
        Self(Arc::new(Shared {
            writer: Writer::start(store.clone()),
            store,
            changes,
            verifier,
            tokens,
            last_count: metrics::LastCount::default(),
            request_timeout,
            public_url: public_url.map(|url| url.trim_end_matches('/').to_owned()),
        }))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

pub struct Limits {
    pub max_body_bytes: usize,
    pub request_timeout: Duration,
}

pub fn router(state: AppState, limits: &Limits) -> Router {
    let (router, description) = openapi::router()
        .merge(webhooks::router(limits))
        .merge(predictions::router(limits))
        .merge(health::router(limits))
        .merge(metrics::router(limits))
        .split_for_parts();
    openapi::publish(&description);
    router
        .fallback(|| async { ApiError::NotFound("there is no such route".into()) })
        .with_state(state)
        // One stack, so a parked request carries one boxed future for all of it. `Router::layer`
        // wraps each route and the fallback after routing, so the metrics see the matched route.
        .layer(
            ServiceBuilder::new()
                .layer(map_response(error::problem_for_bare_errors))
                // A caller's `x-request-id` is kept; otherwise one is made. It goes back in the
                // answer and into the span every log line of the request is written in.
                .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
                .layer(PropagateRequestIdLayer::x_request_id())
                .layer(TraceLayer::new_for_http().make_span_with(request_span))
                .layer(tower::layer::layer_fn(metrics::CountRequests))
                .layer(CatchPanicLayer::new()),
        )
}

fn request_span(request: &Request<Body>) -> tracing::Span {
    let request_id = request
        .headers()
        .get("x-request-id")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    // The path, never the query or headers: those may carry cursors or credentials.
    tracing::info_span!(
        "request",
        request_id,
        method = %request.method(),
        path = request.uri().path(),
    )
}

/// The bound on a route's whole answer; each route sets its own, since a wait or a stream is
/// meant to outlast an ordinary request. 503 rather than 408: a sender should retry, and the
/// problem layer adds `Retry-After`.
fn timeout(duration: Duration) -> TimeoutLayer {
    TimeoutLayer::with_status_code(StatusCode::SERVICE_UNAVAILABLE, duration)
}
