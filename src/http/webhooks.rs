//! `POST /webhooks/replicate`: one delivery in, acknowledged only once it is durably recorded.

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::HeaderMap;
use axum::routing::post;
use axum::{Json, Router};
use serde::Serialize;
use time::OffsetDateTime;
use tower_http::limit::RequestBodyLimitLayer;

use super::{ApiError, AppState, Limits, timeout};
use crate::ingest::ingest;
use crate::store::Outcome;

pub fn router(limits: &Limits) -> Router<AppState> {
    Router::new()
        .route("/webhooks/replicate", post(receive))
        .layer(timeout(limits.request_timeout))
        // tower-http's limit answers 413 from Content-Length before reading anything, and cuts off
        // a chunked body at the limit; axum's own smaller default must not apply on top.
        .layer(DefaultBodyLimit::disable())
        .layer(RequestBodyLimitLayer::new(limits.max_body_bytes))
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
        .inspect_err(|rejection| tracing::warn!(%rejection, "delivery rejected"))?;
    let status = ingest(&state.store, &verified, &body).await?;
    Ok(Json(Receipt { status }))
}
