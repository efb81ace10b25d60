//! What the official clients ask of the platform beside predictions, passed through with the
//! account's token and streamed both ways: `GET /v1/models/{owner}/{name}/versions/{id}` (the
//! Python client reads it for `owner/name:version` references) and `POST /v1/files` (both clients
//! upload file inputs there).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, header};
use axum::response::Response;
use futures_util::StreamExt;

use super::answer::from_the_platform;
use super::{gateway, segment};
use crate::http::auth::Creator;
use crate::http::body::declared_length;
use crate::http::error::{PROBLEM_JSON, Problem};
use crate::http::{ApiError, AppState};
use crate::replicate::{FILES, MODELS, Operation, V1, VERSIONS};

/// What an upload in flight is charged to the body budget: the buffers between the caller and the
/// platform, not the file, which streams through.
const UPLOAD_IN_FLIGHT: usize = 1024 * 1024;

/// A file upload, as the platform takes it.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // describes what the gateway streams through, never builds
pub(super) struct FileUpload {
    /// The file's bytes
    #[schema(value_type = String, format = Binary)]
    content: Vec<u8>,
    filename: Option<String>,
    /// Its media type
    #[schema(rename = "type")]
    content_type: Option<String>,
    /// Any JSON object, kept with the file
    #[schema(value_type = Option<Object>)]
    metadata: Option<serde_json::Value>,
}

/// A version of a model, as the platform answers it.
#[utoipa::path(
    get,
    path = "/v1/models/{owner}/{name}/versions/{id}",
    tag = "gateway",
    security(("bearer" = [])),
    params(
        ("owner" = String, Path, pattern = "^[A-Za-z0-9._-]+$"),
        ("name" = String, Path, pattern = "^[A-Za-z0-9._-]+$"),
        ("id" = String, Path, pattern = "^[A-Za-z0-9._-]+$"),
    ),
    responses(
        (status = 200, description = "The platform's answer, passed through", content_type = "application/json"),
        (status = 400, description = "A malformed path segment", body = Problem, content_type = PROBLEM_JSON),
        (status = 401, description = "No accepted bearer token", body = Problem, content_type = PROBLEM_JSON),
        (status = 403, description = "A read-only token", body = Problem, content_type = PROBLEM_JSON),
        (status = 404, description = "No such version (the platform's answer)", body = Problem, content_type = PROBLEM_JSON),
        (status = 501, description = "REPLICATE_API_TOKEN is not set", body = Problem, content_type = PROBLEM_JSON),
        (status = 502, description = "The platform could not be reached, or refused the inbox's own token", body = Problem, content_type = PROBLEM_JSON),
    ),
)]
pub(super) async fn version(
    Creator(_): Creator,
    State(state): State<AppState>,
    Path((owner, name, id)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    let gateway = gateway(&state)?;
    let path = [
        V1,
        MODELS,
        segment("owner", &owner)?,
        segment("name", &name)?,
        VERSIONS,
        segment("id", &id)?,
    ];
    let answer = gateway
        .platform
        .relay(
            Operation::Version,
            Method::GET,
            &path,
            HeaderMap::new(),
            reqwest::Body::from(Vec::new()),
        )
        .await?;
    Ok(streamed(answer))
}

/// Uploads a file input (multipart, as the platform takes it), streamed to the platform.
#[utoipa::path(
    post,
    path = "/v1/files",
    tag = "gateway",
    security(("bearer" = [])),
    request_body(content = FileUpload, content_type = "multipart/form-data", description = "As the platform takes it; at most INBOX_MAX_BODY_BYTES"),
    responses(
        (status = 201, description = "The platform's answer, passed through", content_type = "application/json"),
        (status = 400, description = "Refused by the platform (its status and problem are passed on, as for any error it answers)", body = Problem, content_type = PROBLEM_JSON),
        (status = 422, description = "Refused by the platform: no `content`", body = Problem, content_type = PROBLEM_JSON),
        (status = 401, description = "No accepted bearer token", body = Problem, content_type = PROBLEM_JSON),
        (status = 403, description = "A read-only token", body = Problem, content_type = PROBLEM_JSON),
        (status = 413, description = "Larger than INBOX_MAX_BODY_BYTES", body = Problem, content_type = PROBLEM_JSON),
        (status = 501, description = "REPLICATE_API_TOKEN is not set", body = Problem, content_type = PROBLEM_JSON),
        (status = 502, description = "The platform could not be reached, or refused the inbox's own token", body = Problem, content_type = PROBLEM_JSON),
        (status = 503, description = "Too many bodies in flight", body = Problem, content_type = PROBLEM_JSON),
    ),
)]
pub(super) async fn upload(
    Creator(_): Creator,
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let gateway = gateway(&state)?;
    let limit = state.settings.max_body_bytes;
    if declared_length(&headers)?.is_some_and(|length| length > limit) {
        return Err(ApiError::TooLarge);
    }
    let held = state.bodies.hold(UPLOAD_IN_FLIGHT)?;
    // Counted as it streams: past the limit, the stream fails and the platform sees a cut body;
    // the caller is told why, not that the platform failed.
    let mut sent = 0;
    let too_large = Arc::new(AtomicBool::new(false));
    let cut = too_large.clone();
    let counted = body.into_data_stream().map(move |chunk| {
        let _held = &held;
        let chunk = chunk.map_err(std::io::Error::other)?;
        sent += chunk.len();
        if sent > limit {
            cut.store(true, Ordering::Relaxed);
            return Err(std::io::Error::other(
                "the upload is larger than the inbox takes",
            ));
        }
        Ok(chunk)
    });
    let mut upstream = HeaderMap::new();
    for name in [header::CONTENT_TYPE, header::CONTENT_LENGTH] {
        if let Some(value) = headers.get(&name) {
            upstream.insert(name, value.clone());
        }
    }
    let answer = gateway
        .platform
        .relay(
            Operation::File,
            Method::POST,
            &[V1, FILES],
            upstream,
            reqwest::Body::wrap_stream(counted),
        )
        .await;
    match answer {
        Ok(answer) => Ok(streamed(answer)),
        Err(_) if too_large.load(Ordering::Relaxed) => Err(ApiError::TooLarge),
        Err(error) => Err(error.into()),
    }
}

/// The platform's answer as it comes: its status, type, `Retry-After` and body, streamed.
fn streamed(answer: reqwest::Response) -> Response {
    let header = |name| answer.headers().get(name).cloned();
    let (content_type, retry_after) = (header(header::CONTENT_TYPE), header(header::RETRY_AFTER));
    from_the_platform(
        answer.status(),
        content_type,
        retry_after,
        Body::from_stream(answer.bytes_stream()),
    )
}
