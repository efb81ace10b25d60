//! `GET /metrics`: Prometheus text. Gauges of this process are read at scrape time; the count of
//! predictions by status is a query, so it is refreshed at most every `COUNT_EVERY`. Also the
//! middleware that counts requests by route.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::Method;
use axum::response::Response;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{AppState, Settings, timeout};
use crate::domain::Status;
use crate::metrics;

const COUNT_EVERY: Duration = Duration::from_secs(15);
const COUNT_TIMEOUT: Duration = Duration::from_secs(2);

/// When predictions were last counted, shared by the scrapes of one process.
#[derive(Default)]
pub struct LastCount(Mutex<Option<Instant>>);

impl LastCount {
    /// Claims the next count if the last is older than `COUNT_EVERY`, so concurrent scrapes
    /// start one query, not one each.
    fn claim(&self) -> bool {
        let mut last = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let due = last.is_none_or(|at| at.elapsed() >= COUNT_EVERY);
        if due {
            *last = Some(Instant::now());
        }
        due
    }
}

pub fn router(settings: &Settings) -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(scrape))
        .layer(timeout(settings.request_timeout))
}

/// Prometheus metrics of this process (README, "Operating it", lists them).
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format 0.0.4", body = String,
        content_type = "text/plain; version=0.0.4; charset=utf-8")))]
async fn scrape(State(state): State<AppState>) -> Response {
    metrics::waiters(state.waiters.count());
    metrics::body_budget(state.bodies.available());
    let (in_use, idle) = state.store.pool_status();
    metrics::pool(in_use, idle);
    if state.last_count.claim() {
        match tokio::time::timeout(COUNT_TIMEOUT, state.store.count_by_status()).await {
            Ok(Ok(counts)) => {
                // A sender's made-up status is counted as `other`, never made a label.
                let count_of = |wanted: Option<&str>| -> i64 {
                    counts
                        .iter()
                        .filter(|(status, _)| {
                            let known = status.as_deref().filter(|s| Status::KNOWN.contains(s));
                            known == wanted
                        })
                        .map(|(_, n)| n)
                        .sum()
                };
                for status in Status::KNOWN {
                    metrics::predictions(status, count_of(Some(status)));
                }
                metrics::predictions("other", count_of(None));
            }
            // The last figures stay; the next due scrape tries again.
            Ok(Err(error)) => tracing::warn!(%error, "cannot count predictions"),
            Err(_) => tracing::warn!("counting predictions took too long"),
        }
        match tokio::time::timeout(COUNT_TIMEOUT, state.store.oldest_unfinished()).await {
            Ok(Ok(oldest)) => {
                let age = oldest.map_or(0.0, |at| {
                    (time::OffsetDateTime::now_utc() - at)
                        .as_seconds_f64()
                        .max(0.0)
                });
                metrics::oldest_unfinished(std::time::Duration::from_secs_f64(age));
            }
            Ok(Err(error)) => {
                tracing::warn!(%error, "cannot read the oldest unfinished prediction")
            }
            Err(_) => tracing::warn!("reading the oldest unfinished prediction took too long"),
        }
    }
    let handle = metrics::handle();
    handle.run_upkeep();
    super::typed("text/plain; version=0.0.4; charset=utf-8", handle.render())
}

/// The routes' templates (`/v1/predictions/{id}`), found by the matcher axum routes with.
///
/// The request metrics are labelled with them. Axum's own `MatchedPath` is known only inside the
/// router, to layers added with `Router::layer`, and each such layer boxes every request's future
/// once more — which a parked wait holds for as long as it waits.
#[derive(Clone)]
pub struct RouteTemplates(Arc<matchit::Router<Arc<str>>>);

impl RouteTemplates {
    /// `templates` are the routes' paths, as the API description lists every one of them.
    pub fn new<'a>(templates: impl IntoIterator<Item = &'a String>) -> Self {
        let mut routes = matchit::Router::new();
        for template in templates {
            // The router already took each of these; a template it could not take would have
            // stopped it from being built.
            if let Err(error) = routes.insert(template.as_str(), Arc::from(template.as_str())) {
                tracing::warn!(%error, template, "a route is counted as unmatched");
            }
        }
        Self(Arc::new(routes))
    }

    /// The template `path` matches, if any route's does.
    fn find(&self, path: &str) -> Option<Arc<str>> {
        self.0.at(path).ok().map(|found| Arc::clone(found.value))
    }
}

/// Counts and times each request by its route template (`unmatched` for the fallback). A concrete
/// service rather than `from_fn`, which boxes two futures for every request in flight — and
/// parked waits are requests in flight.
#[derive(Clone)]
pub struct CountRequests<S> {
    inner: S,
    templates: RouteTemplates,
}

impl<S> CountRequests<S> {
    pub fn new(inner: S, templates: RouteTemplates) -> Self {
        Self { inner, templates }
    }
}

impl<S, B> tower::Service<Request> for CountRequests<S>
where
    S: tower::Service<Request, Response = axum::http::Response<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Counted<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        Counted {
            route: self.templates.find(request.uri().path()),
            method: request.method().clone(),
            started: Instant::now(),
            inner: self.inner.call(request),
        }
    }
}

pin_project_lite::pin_project! {
    pub struct Counted<F> {
        #[pin]
        inner: F,
        route: Option<Arc<str>>,
        method: Method,
        started: Instant,
    }
}

impl<F, B, E> Future for Counted<F>
where
    F: Future<Output = Result<axum::http::Response<B>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        if let Ok(response) = &result {
            let route = this.route.as_deref().unwrap_or("unmatched");
            metrics::http_request(
                route,
                this.method.as_str(),
                response.status().as_u16(),
                this.started.elapsed(),
            );
        }
        Poll::Ready(result)
    }
}
