//! `POST /webhooks/replicate`: one delivery in, acknowledged only once it is durably recorded.

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{map_request, map_response};
use axum::response::Response;
use axum::{Extension, Json};
use serde::Serialize;
use time::OffsetDateTime;
use tokio::time::Instant;
use tower::ServiceBuilder;
use tower_http::limit::RequestBodyLimitLayer;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{PROBLEM_JSON, Problem};
use super::{ApiError, AppState, Limits, timeout};
use crate::ingest::{IngestError, ingest};
use crate::metrics::{self, RejectReason};
use crate::store::Outcome;
use crate::verify::Rejection;

pub fn router(limits: &Limits) -> OpenApiRouter<AppState> {
    let request_timeout = limits.request_timeout;
    // One layer of the router, outermost first. Each `Router::layer` boxes the route anew, and
    // every request then clones and boxes each level again.
    let route_stack = ServiceBuilder::new()
        // Outside the limit, which answers 413 before the handler ever runs.
        .layer(map_response(count_too_large))
        // Just before the timeout starts, so that the writer knows when the handler will have
        // given up. (Outside the limit, whose request body it could not take.)
        .layer(map_request(move |mut request: Request| async move {
            let deadline = Deadline(Instant::now() + request_timeout);
            request.extensions_mut().insert(deadline);
            request
        }))
        // tower-http's limit answers 413 from Content-Length before reading anything, and cuts
        // off a chunked body at the limit; axum's own smaller default must not apply on top.
        .layer(RequestBodyLimitLayer::new(limits.max_body_bytes))
        .layer(DefaultBodyLimit::disable())
        .layer(timeout(limits.request_timeout));
    OpenApiRouter::new()
        .routes(routes!(receive))
        .layer(route_stack)
}

/// When the route's timeout answers 503: a delivery not committed by then must not be.
#[derive(Clone, Copy)]
struct Deadline(Instant);

async fn count_too_large(response: Response) -> Response {
    if response.status() == StatusCode::PAYLOAD_TOO_LARGE {
        metrics::rejected(RejectReason::TooLarge);
    }
    response
}

/// The answer to a delivery that was recorded, or recognised as already recorded.
#[derive(Serialize, ToSchema)]
pub struct Receipt {
    status: Outcome,
}

/// A delivery from the platform: a whole prediction object, signed with Standard Webhooks.
///
/// Answered `2xx` only once the delivery, and the state change it makes, are committed.
#[utoipa::path(
    post,
    path = "/webhooks/replicate",
    tag = "deliveries",
    params(
        ("webhook-id" = String, Header, description = "Unique per message, identical on retries of it"),
        ("webhook-timestamp" = String, Header, description = "Unix seconds; must be within the tolerance of this server's clock"),
        ("webhook-signature" = String, Header, description = "Space-separated `v1,<base64 HMAC-SHA256>` signatures; other versions are ignored"),
    ),
    request_body(content = super::predictions::PredictionObject, content_type = "application/json",
        description = "The prediction object, exactly as the platform sends it"),
    responses(
        (status = 200, description = "Recorded: `applied` (now the latest state), `ignored` (older than the stored state) or `duplicate` (this webhook-id was recorded before; nothing written)", body = Receipt),
        (status = 400, description = "Verified, but not a JSON object with a string `id`", body = Problem, content_type = PROBLEM_JSON),
        (status = 401, description = "Missing or malformed headers, no matching signature, or a timestamp outside the tolerance", body = Problem, content_type = PROBLEM_JSON),
        (status = 413, description = "Larger than INBOX_MAX_BODY_BYTES", body = Problem, content_type = PROBLEM_JSON),
        (status = 503, description = "The database is unavailable or the request took too long; nothing was recorded, retry after `Retry-After`", body = Problem, content_type = PROBLEM_JSON,
            headers(("Retry-After" = String, description = "Seconds to wait before retrying"))),
    ),
)]
async fn receive(
    State(state): State<AppState>,
    Extension(Deadline(deadline)): Extension<Deadline>,
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
    let status = ingest(&state.writer, &verified, &body, deadline)
        .await
        .inspect_err(|error| {
            if let IngestError::Invalid(invalid) = error {
                tracing::warn!(%invalid, webhook_id = %verified.webhook_id, "delivery rejected");
                metrics::rejected(RejectReason::Body);
            }
        })?;
    Ok(Json(Receipt { status }))
}
