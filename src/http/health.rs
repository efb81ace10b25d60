//! Probes: liveness says the process runs, readiness says the database answers.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{PROBLEM_JSON, Problem, problem};
use super::{AppState, Limits, timeout};

/// Shorter than the usual probe timeout, so a hung database reads as "not ready", not as no answer.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

pub fn router(limits: &Limits) -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(live))
        .routes(routes!(ready))
        .layer(timeout(limits.request_timeout))
}

/// Liveness: answers while the process runs.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "The process runs", body = String, content_type = "text/plain")))]
async fn live() -> &'static str {
    "ok"
}

/// Readiness: answers 200 when the database answers within 2 s.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "The database answers", body = String, content_type = "text/plain"),
        (status = 503, description = "The database does not answer", body = Problem, content_type = PROBLEM_JSON),
    ))]
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
