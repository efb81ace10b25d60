//! The HTTP edge: routes grouped by resource, the state they share, and the middleware every
//! answer passes through. Handlers extract and answer; decisions live in `verify`, `ingest` and
//! `store`.

mod archive;
mod auth;
mod body;
mod error;
mod gateway;
mod health;
mod openapi;
mod predictions;
mod reads;
mod scrape;
mod server;
mod webhooks;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::archive::Archive;
use crate::ingest::Writer;
use crate::store::Store;
use crate::supervisor::Health;
use crate::verify::Verifier;
use crate::waiters::Waiters;

pub use auth::ApiTokens;
pub use body::BodyBudget;
pub use error::ApiError;
pub use gateway::{AllowedModels, Gateway};
pub use server::serve;

/// How the HTTP edge is set up: everything it takes from the settings, in one value.
#[derive(Debug, Clone)]
pub struct Settings {
    pub tokens: ApiTokens,
    /// Base of the absolute URLs the service hands out (`next`, `previous`); from the request's
    /// `Host` when unset.
    pub public_url: Option<String>,
    /// Whether `X-Forwarded-Proto` and `X-Forwarded-Host` may say where the client reached us.
    pub trust_forwarded: bool,
    /// The bound of every request, and of a request's headers.
    pub request_timeout: Duration,
    pub max_body_bytes: usize,
    pub max_connections: usize,
    /// The longest an event stream stays open.
    pub stream_max: Duration,
}

/// What every handler shares, behind one `Arc`: axum clones the state for each request, and one
/// reference count to bump is cheaper than one per field (each an atomic the two cores contend for).
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

pub struct Shared {
    store: Arc<dyn Store>,
    /// Group commit for deliveries (see `ingest::Writer`).
    writer: Writer,
    waiters: Waiters,
    verifier: Verifier,
    /// The bytes of request bodies held at once.
    bodies: BodyBudget,
    /// Whether the workers the service needs are running.
    health: Health,
    /// Creating through the inbox, when the platform's token is set.
    gateway: Option<Gateway>,
    /// The output archive, unless it is off.
    archive: Option<Arc<Archive>>,
    last_count: scrape::LastCount,
    settings: Settings,
    /// The OpenAPI description served at `/openapi.json`, rendered once from the routes; each
    /// answer shares it.
    description: axum::body::Bytes,
}

/// The parts the HTTP edge works with.
pub struct Parts {
    pub store: Arc<dyn Store>,
    pub writer: Writer,
    pub waiters: Waiters,
    pub verifier: Verifier,
    pub health: Health,
    pub bodies: BodyBudget,
    pub gateway: Option<Gateway>,
    pub archive: Option<Arc<Archive>>,
}

impl AppState {
    fn new(parts: Parts, mut settings: Settings, description: axum::body::Bytes) -> Self {
        settings.public_url = settings
            .public_url
            .map(|url| url.trim_end_matches('/').to_owned());
        Self(Arc::new(Shared {
            store: parts.store,
            writer: parts.writer,
            waiters: parts.waiters,
            verifier: parts.verifier,
            bodies: parts.bodies,
            health: parts.health,
            gateway: parts.gateway,
            archive: parts.archive,
            last_count: scrape::LastCount::default(),
            settings,
            description,
        }))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The service's routes, not yet inside the layers every request passes (see `App::service`).
pub struct App {
    routes: Router,
    templates: scrape::RouteTemplates,
}

impl App {
    /// The routes inside the layers every request passes, outermost first.
    ///
    /// Outside the router, not added with `Router::layer`: that boxes every request's future once
    /// more, and parked waits hold theirs by the thousand. So the request metrics find the route
    /// by its template rather than by axum's `MatchedPath`, which only layers inside know.
    pub fn service(
        self,
    ) -> impl tower::Service<
        Request<Body>,
        Response = Response,
        Error = Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + 'static {
        let templates = self.templates;
        ServiceBuilder::new()
            .then(error::problem_for_bare_errors)
            // A caller's `x-request-id` is kept; otherwise one is made. It goes back in the answer
            // and into the span every log line of the request is written in.
            .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
            .layer(PropagateRequestIdLayer::x_request_id())
            .layer(TraceLayer::new_for_http().make_span_with(request_span))
            .layer(tower::layer::layer_fn(move |inner| {
                scrape::CountRequests::new(inner, templates.clone())
            }))
            .layer(CatchPanicLayer::new())
            .service(self.routes)
    }
}

/// The service's routes over `parts`, and the description of them that `/openapi.json` serves.
pub fn router(parts: Parts, settings: Settings) -> App {
    let (router, description) = openapi::router()
        .merge(webhooks::router(&settings))
        .merge(predictions::router(&settings))
        .merge(gateway::router(&settings))
        .merge(archive::router(&settings))
        .merge(health::router(&settings))
        .merge(scrape::router(&settings))
        .split_for_parts();
    // Every route is in the description: each is added with its documentation.
    let templates = scrape::RouteTemplates::new(description.paths.paths.keys());
    let state = AppState::new(parts, settings, openapi::render(&description).into());
    let routes = router
        .fallback(|| async { ApiError::NotFound("there is no such route".into()) })
        .with_state(state);
    App { routes, templates }
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

/// `body` as a `200` answer of a fixed `content_type`.
fn typed(content_type: &'static str, body: impl IntoResponse) -> Response {
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
        body,
    )
        .into_response()
}

/// The bound on a route's whole answer; each route sets its own, since a wait or a stream is
/// meant to outlast an ordinary request. 503 rather than 408: a sender should retry, and the
/// problem layer adds `Retry-After`.
fn timeout(duration: Duration) -> TimeoutLayer {
    TimeoutLayer::with_status_code(StatusCode::SERVICE_UNAVAILABLE, duration)
}

/// Where the client reached us: the configured public URL, else what its request said — its
/// `Host`, and the `X-Forwarded-*` a proxy in front sets only when the operator trusts them (any
/// client can send them, and a link built from them would point wherever it liked).
fn base_url(state: &AppState, headers: &HeaderMap) -> String {
    let settings = &state.settings;
    if let Some(url) = &settings.public_url {
        return url.to_string();
    }
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.split(',').next())
            .map(str::trim)
            .filter(|value| !value.is_empty())
    };
    let forwarded = |name: &str| header(name).filter(|_| settings.trust_forwarded);
    let scheme = forwarded("x-forwarded-proto").unwrap_or("http");
    match forwarded("x-forwarded-host").or_else(|| header("host")) {
        Some(host) => format!("{scheme}://{host}"),
        None => String::new(),
    }
}
