//! Probes: liveness says the process runs, readiness says the database answers.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{PROBLEM_JSON, Problem, problem};
use super::{AppState, Settings, timeout};

/// Shorter than the usual probe timeout, so a hung database reads as "not ready", not as no answer.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

pub fn router(settings: &Settings) -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(live))
        .routes(routes!(ready))
        .layer(timeout(settings.request_timeout))
}

/// Liveness: answers while the process runs.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "The process runs", body = String, content_type = "text/plain")))]
async fn live() -> &'static str {
    "ok"
}

/// Readiness: answers 200 when the database answers within 2 s and the workers deliveries need
/// (the batch writer) run.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "The database answers and the batch writer runs", body = String, content_type = "text/plain"),
        (status = 503, description = "The database does not answer, or the batch writer is being restarted", body = Problem, content_type = PROBLEM_JSON),
    ))]
async fn ready(State(state): State<AppState>) -> Response {
    let down = state.health.down();
    if !down.is_empty() {
        return problem(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not running: {}", down.join(", ")),
        );
    }
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
