//! Every error answer leaves as `application/problem+json` (RFC 9457) from here: `ApiError` for
//! the service's own errors, and `problem_for_bare_errors` for the ones the framework and the
//! middleware make (unknown routes, wrong methods, body limits, timeouts, panics).

use std::convert::Infallible;
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::future::{BoxFuture, Either, Ready, ready};
use serde::Serialize;

use crate::ingest::IngestError;
use crate::store::StoreError;
use crate::verify::Rejection;

/// The media type of every error answer; the OpenAPI description names it too.
pub(super) const PROBLEM_JSON: &str = "application/problem+json";
/// What a request that ran out of time is told, by a route's own bound or a timeout layer.
const TIMED_OUT: &str = "the request took too long; retry later";
/// Seconds a client is asked to wait before retrying after a 503.
const RETRY_AFTER_SECS: &str = "5";

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error(transparent)]
    Signature(#[from] Rejection),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    /// A route whose setting is not set.
    #[error("{0}")]
    NotConfigured(&'static str),
    /// The platform gave no answer of its own.
    #[error(transparent)]
    Upstream(#[from] crate::replicate::UpstreamError),
    /// The database failed; shared by every request of a batch that failed together.
    #[error(transparent)]
    Unavailable(Arc<StoreError>),
    /// At a capacity limit; worth retrying shortly.
    #[error("{0}")]
    Busy(&'static str),
    /// The route's time bound ran out.
    #[error("{TIMED_OUT}")]
    TimedOut,
    #[error("the body is larger than this service accepts")]
    TooLarge,
    #[error("the body stalled or came too slowly; nothing was recorded")]
    BodyTooSlow,
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        Self::Unavailable(Arc::new(error))
    }
}

impl From<IngestError> for ApiError {
    fn from(error: IngestError) -> Self {
        match error {
            IngestError::Invalid(invalid) => Self::BadRequest(invalid.to_string()),
            IngestError::Store(store) => Self::Unavailable(store),
            IngestError::Busy => Self::Busy(IngestError::BUSY),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            Self::Unauthorized(_) | Self::Signature(_) => StatusCode::UNAUTHORIZED,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::NotConfigured(_) => StatusCode::NOT_IMPLEMENTED,
            Self::Upstream(crate::replicate::UpstreamError::TimedOut) => {
                StatusCode::GATEWAY_TIMEOUT
            }
            Self::Upstream(_) => StatusCode::BAD_GATEWAY,
            Self::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyTooSlow => StatusCode::REQUEST_TIMEOUT,
            Self::Unavailable(_) | Self::Busy(_) | Self::TimedOut => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        };
        let detail = match &self {
            Self::Unavailable(error) => {
                // The cause goes to the log; the caller learns only that it should retry.
                tracing::error!(%error, "database operation failed");
                "the database is unavailable; retry later".to_owned()
            }
            other => other.to_string(),
        };
        let mut response = problem(status, detail);
        if let Self::Unauthorized(_) = self {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// An error answer (RFC 9457), shaped like the platform's own.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// The status's reason phrase.
    title: &'static str,
    status: u16,
    /// What went wrong, for a person.
    detail: String,
}

/// A problem answer; a 503 always says when to come back.
pub fn problem(status: StatusCode, detail: impl Into<String>) -> Response {
    let body = Problem {
        title: status.canonical_reason().unwrap_or("Error"),
        status: status.as_u16(),
        detail: detail.into(),
    };
    let mut response = (status, Json(body)).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    if status == StatusCode::SERVICE_UNAVAILABLE {
        headers.insert(
            header::RETRY_AFTER,
            HeaderValue::from_static(RETRY_AFTER_SECS),
        );
    }
    response
}

/// What the service answers to every request: the layers never fail it.
type Answer = Result<Response, Infallible>;

/// Rewrites an error answer that is not already a problem (a rejection's plain text, an empty
/// 405/408/413) into one, keeping its status and headers and using its text as the detail.
///
/// A `then` step after the whole stack, not an async middleware: every request's future, parked
/// waits by the thousand among them, is then the inner future and a tag, and only a bare error,
/// whose body must be read, takes a box.
pub fn problem_for_bare_errors<B>(
    response: Result<axum::http::Response<B>, Infallible>,
) -> Either<Ready<Answer>, BoxFuture<'static, Answer>>
where
    B: axum::body::HttpBody<Data = axum::body::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    let Ok(response) = response;
    let status = response.status();
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes() == PROBLEM_JSON.as_bytes());
    let response = response.map(Body::new);
    if !(status.is_client_error() || status.is_server_error()) || is_problem {
        return Either::Left(ready(Ok(response)));
    }
    Either::Right(Box::pin(
        async move { Ok(rebuild_as_problem(response).await) },
    ))
}

async fn rebuild_as_problem(response: Response) -> Response {
    let status = response.status();
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let detail = match text.trim() {
        "" => default_detail(status),
        text => text.to_owned(),
    };
    let rebuilt = problem(status, detail);
    parts.headers.remove(header::CONTENT_LENGTH);
    let (new_parts, new_body) = rebuilt.into_parts();
    for (name, value) in &new_parts.headers {
        parts.headers.insert(name, value.clone());
    }
    Response::from_parts(parts, new_body)
}

fn default_detail(status: StatusCode) -> String {
    match status {
        StatusCode::PAYLOAD_TOO_LARGE => "the body is larger than this service accepts".into(),
        StatusCode::METHOD_NOT_ALLOWED => "this route does not take that method".into(),
        StatusCode::SERVICE_UNAVAILABLE => TIMED_OUT.into(),
        status => status
            .canonical_reason()
            .unwrap_or("the request failed")
            .to_lowercase(),
    }
}
