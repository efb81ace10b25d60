//! `POST /webhooks/replicate`: one delivery in, acknowledged only once it is durably recorded.

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::{map_request, map_response};
use axum::response::Response;
use axum::{Extension, Json};
use serde::Serialize;
use time::OffsetDateTime;
use tokio::time::Instant;
use tower::ServiceBuilder;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{PROBLEM_JSON, Problem};
use super::{ApiError, AppState, Settings, timeout};
use crate::ingest::{IngestError, ingest};
use crate::metrics::{self, RejectReason};
use crate::store::Outcome;
use crate::verify::Rejection;

pub fn router(settings: &Settings) -> OpenApiRouter<AppState> {
    let request_timeout = settings.request_timeout;
    // One layer of the router, outermost first. Each `Router::layer` boxes the route anew, and
    // every request then clones and boxes each level again.
    let route_stack = ServiceBuilder::new()
        .layer(map_response(count_too_large))
        // Just before the timeout starts, so that the writer knows when the handler will have
        // given up.
        .layer(map_request(move |mut request: Request| async move {
            let deadline = Deadline(Instant::now() + request_timeout);
            request.extensions_mut().insert(deadline);
            request
        }))
        .layer(timeout(request_timeout));
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
    status: Recorded,
}

/// What recording the delivery did, by the store's own name for it.
struct Recorded(Outcome);

impl Serialize for Recorded {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.0.as_str())
    }
}

impl utoipa::PartialSchema for Recorded {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::Type::String)
            .enum_values(Some(Outcome::ALL.map(Outcome::as_str)))
            .into()
    }
}

impl ToSchema for Recorded {
    fn name() -> std::borrow::Cow<'static, str> {
        "Outcome".into()
    }
}

/// A delivery from the platform: a whole prediction object, signed with Standard Webhooks.
///
/// Its headers are checked before a byte of its body is read. Answered `2xx` only once the
/// delivery, and the state change it makes, are committed.
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
        (status = 200, description = "Recorded: `applied` (it advanced the latest state), `ignored` (older than the stored state) or `duplicate` (this webhook-id was recorded before; nothing written)", body = Receipt),
        (status = 400, description = "Verified, but not a JSON object with a usable string `id`, nested 128 deep or more, or with a number no double can hold", body = Problem, content_type = PROBLEM_JSON),
        (status = 401, description = "Missing or malformed headers, a timestamp outside the tolerance (both answered before the body is read), or no matching signature", body = Problem, content_type = PROBLEM_JSON),
        (status = 408, description = "The body stalled, or came too slowly; nothing was recorded", body = Problem, content_type = PROBLEM_JSON),
        (status = 413, description = "Larger than INBOX_MAX_BODY_BYTES", body = Problem, content_type = PROBLEM_JSON),
        (status = 503, description = "The database is unavailable, too many bodies are being received, or the request took too long; nothing was recorded, retry after `Retry-After`", body = Problem, content_type = PROBLEM_JSON,
            headers(("Retry-After" = String, description = "Seconds to wait before retrying"))),
    ),
)]
async fn receive(
    State(state): State<AppState>,
    Extension(Deadline(deadline)): Extension<Deadline>,
    request: Request,
) -> Result<Json<Receipt>, ApiError> {
    let (parts, body) = request.into_parts();
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let claim = state
        .verifier
        .claim(&parts.headers, now)
        .inspect_err(rejected)?;
    // Held until the delivery is recorded: its bytes are in memory until then.
    let (body, _held) = state
        .bodies
        .read(&parts.headers, body, state.settings.max_body_bytes)
        .await?;
    let verified = state
        .verifier
        .verify_claim(claim, &body)
        .inspect_err(rejected)?;
    let webhook_id = verified.webhook_id.clone();
    let status = ingest(&state.writer, verified, body, deadline)
        .await
        .inspect_err(|error| {
            if let IngestError::Invalid(invalid) = error {
                tracing::warn!(%invalid, %webhook_id, "delivery rejected");
                metrics::rejected(RejectReason::Body);
            }
        })?;
    Ok(Json(Receipt {
        status: Recorded(status),
    }))
}

fn rejected(rejection: &Rejection) {
    tracing::warn!(%rejection, "delivery rejected");
    metrics::rejected(match rejection {
        Rejection::OutsideTolerance(_) => RejectReason::Timestamp,
        Rejection::NoMatchingSignature => RejectReason::Signature,
        Rejection::MissingHeader(_) | Rejection::MalformedHeader(_) | Rejection::InvalidId(_) => {
            RejectReason::Headers
        }
    });
}
