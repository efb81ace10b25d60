//! Probes: liveness says the process runs, readiness says the database answers.

use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::error::problem;
use super::{AppState, Limits, timeout};

/// Shorter than the usual probe timeout, so a hung database reads as "not ready", not as no answer.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

pub fn router(limits: &Limits) -> Router<AppState> {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .layer(timeout(limits.request_timeout))
}

async fn ready(State(state): State<AppState>) -> Response {
    match tokio::time::timeout(READY_TIMEOUT, state.store.ping()).await {
        Ok(Ok(())) => "ready".into_response(),
        Ok(Err(error)) => {
            tracing::warn!(%error, "not ready");
            problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "the database does not answer",
            )
        }
        Err(_) => problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "the database did not answer in time",
        ),
    }
}
