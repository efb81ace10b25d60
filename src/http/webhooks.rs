//! `POST /webhooks/replicate`: one delivery in, acknowledged only once it is durably recorded.

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::map_response;
use axum::response::Response;
use axum::routing::post;
use axum::{Json, Router};
use serde::Serialize;
use time::OffsetDateTime;
use tower_http::limit::RequestBodyLimitLayer;

use super::{ApiError, AppState, Limits, timeout};
use crate::ingest::{IngestError, ingest};
use crate::metrics::{self, RejectReason};
use crate::store::Outcome;
use crate::verify::Rejection;

pub fn router(limits: &Limits) -> Router<AppState> {
    Router::new()
        .route("/webhooks/replicate", post(receive))
        .layer(timeout(limits.request_timeout))
        // tower-http's limit answers 413 from Content-Length before reading anything, and cuts off
        // a chunked body at the limit; axum's own smaller default must not apply on top.
        .layer(DefaultBodyLimit::disable())
        .layer(RequestBodyLimitLayer::new(limits.max_body_bytes))
        // Outside the limit, which answers 413 before the handler ever runs.
        .layer(map_response(count_too_large))
}

async fn count_too_large(response: Response) -> Response {
    if response.status() == StatusCode::PAYLOAD_TOO_LARGE {
        metrics::rejected(RejectReason::TooLarge);
    }
    response
}

#[derive(Serialize)]
struct Receipt {
    status: Outcome,
}

async fn receive(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Receipt>, ApiError> {
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let verified = state
        .verifier
        .verify(&headers, &body, now)
        .inspect_err(|rejection| {
            tracing::warn!(%rejection, "delivery rejected");
            metrics::rejected(match rejection {
                Rejection::OutsideTolerance(_) => RejectReason::Timestamp,
                Rejection::NoMatchingSignature => RejectReason::Signature,
                Rejection::MissingHeader(_)
                | Rejection::MalformedHeader(_)
                | Rejection::InvalidId(_) => RejectReason::Headers,
            });
        })?;
    let status = ingest(&state.store, &verified, &body)
        .await
        .inspect_err(|error| {
            if let IngestError::Invalid(invalid) = error {
                tracing::warn!(%invalid, webhook_id = %verified.webhook_id, "delivery rejected");
                metrics::rejected(RejectReason::Body);
            }
        })?;
    Ok(Json(Receipt { status }))
}
