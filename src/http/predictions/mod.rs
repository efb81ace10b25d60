//! `GET /v1/predictions/{id}` (with `Prefer: wait`), `GET /v1/predictions/{id}/events`,
//! `GET /v1/predictions/{id}/deliveries` and `GET /v1/predictions`, shaped like Replicate's own so
//! its official clients read from this service with only their base URL changed.
//!
//! One file a concern: `get.rs` (one prediction, `Prefer: wait`), `events.rs` (the event stream),
//! `list.rs` (the list and its links), `cursor.rs` (the list cursor's text form),
//! `deliveries.rs` (one prediction's delivery history). The keyset queries themselves are the
//! store's.

mod cursor;
mod deliveries;
mod events;
mod get;
mod list;

use std::time::Duration;

use axum::response::Response;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{ApiError, AppState, Settings, timeout};

use crate::domain::PredictionId;
pub(super) use get::{WaitPreference, wait_for_end};

pub(super) const DEFAULT_LIMIT: u32 = 100;
pub(super) const MAX_LIMIT: u32 = 1000;
/// The longest `Prefer: wait`, and the wait of a bare `Prefer: wait`.
pub(super) const MAX_WAIT_SECS: u64 = 60;
pub(super) const KEEP_ALIVE: Duration = Duration::from_secs(15);

pub fn router(settings: &Settings) -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(
            OpenApiRouter::new()
                .routes(routes!(list::list))
                .routes(routes!(deliveries::history))
                .layer(timeout(settings.request_timeout)),
        )
        // Bounds itself: see `get_one`.
        .routes(routes!(get::get_one))
        // A stream lasts until its prediction ends; only its database reads are bounded.
        .routes(routes!(events::events))
}

/// A prediction object as the platform sends it. Only `id` is required here; every field the
/// platform sends, including ones added after this was written, is stored and returned as is.
#[derive(ToSchema)]
#[schema(as = Prediction)]
#[allow(dead_code)] // describes JSON the service passes through, never builds
pub struct PredictionObject {
    id: String,
    /// `starting`, `processing`, `succeeded`, `failed`, `canceled`, `aborted`, or a value added later
    status: Option<String>,
    model: Option<String>,
    version: Option<String>,
    /// Any JSON
    #[schema(schema_with = any_json)]
    input: Option<serde_json::Value>,
    /// Any JSON; often null until the prediction succeeds
    #[schema(schema_with = any_json)]
    output: Option<serde_json::Value>,
    logs: Option<String>,
    error: Option<String>,
    data_removed: Option<bool>,
    /// RFC 3339
    created_at: Option<String>,
    started_at: Option<String>,
    completed_at: Option<String>,
    /// `get`, `cancel`, `web`, and `stream` for streaming models
    #[schema(value_type = Option<Object>)]
    urls: Option<serde_json::Value>,
    #[schema(value_type = Option<Object>)]
    metrics: Option<serde_json::Value>,
    /// Not the platform's: added by the inbox once output files are archived (or failed to be).
    /// `original_output` is `output` as the platform sent it; `files` says of each file `url`,
    /// `state` (`queued`, `archived`, `failed`, `expired`), and `reason`, `size`, `content_type`
    /// where known. `output` then names the inbox's copies, at `/archive/…` links that expire.
    #[schema(value_type = Option<Object>)]
    inbox_archive: Option<serde_json::Value>,
}

/// Any JSON value: a schema without a type.
pub(super) fn any_json() -> utoipa::openapi::schema::Object {
    utoipa::openapi::schema::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::SchemaType::AnyValue)
        .build()
}

/// A page of the list, like the platform's own.
#[derive(ToSchema)]
#[allow(dead_code)] // assembled from stored bodies in `list_body`, documented here
pub struct PredictionList {
    /// The page before this one (newer predictions), to follow as is
    previous: Option<String>,
    /// The page after this one (older predictions), to follow as is
    next: Option<String>,
    results: Vec<PredictionObject>,
}

/// A page size from `limit`: 1 to `MAX_LIMIT`, `DEFAULT_LIMIT` if absent.
pub(super) fn page_size(limit: Option<&str>) -> Result<u32, ApiError> {
    let Some(text) = limit else {
        return Ok(DEFAULT_LIMIT);
    };
    text.parse()
        .ok()
        .filter(|limit| (1..=MAX_LIMIT).contains(limit))
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "`limit` must be a whole number from 1 to {MAX_LIMIT}"
            ))
        })
}

/// The id, if a delivery could ever carry it. Any other (empty, over 1024 bytes, with a NUL, which
/// Postgres text cannot even hold) names no prediction, now or later: 404 at once, without a wait.
pub(super) fn receivable(id: &str) -> Result<(), ApiError> {
    if PredictionId::is_valid(id) {
        Ok(())
    } else {
        Err(not_received())
    }
}

pub(super) fn not_received() -> ApiError {
    ApiError::NotFound("no prediction with this id has been received".into())
}

pub(super) fn json(body: String) -> Response {
    super::typed("application/json", body)
}
