//! `GET /v1/predictions/{id}` (with `Prefer: wait`), `GET /v1/predictions/{id}/events` and
//! `GET /v1/predictions`, shaped like Replicate's own so its official clients read from this service
//! with only their base URL changed.

use std::borrow::Cow;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as CURSOR_BASE64;
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::Authenticated;
use super::error::{PROBLEM_JSON, Problem};
use super::{ApiError, AppState, Settings, timeout};
use crate::domain::{PredictionId, from_unix_micros, nul_free, unix_micros};
use crate::store::{Direction, ListQuery, Page, Position, Store, StoreError, StoredPrediction};
use crate::waiters::{Interest, Refused, Registration};

const DEFAULT_LIMIT: u32 = 100;
const MAX_LIMIT: u32 = 1000;
/// The longest `Prefer: wait`, and the wait of a bare `Prefer: wait`.
const MAX_WAIT_SECS: u64 = 60;
const KEEP_ALIVE: Duration = Duration::from_secs(15);

pub fn router(settings: &Settings) -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(
            OpenApiRouter::new()
                .routes(routes!(list))
                .layer(timeout(settings.request_timeout)),
        )
        // Bounds itself: see `get_one`.
        .routes(routes!(get_one))
        // A stream lasts until its prediction ends; only its database reads are bounded.
        .routes(routes!(events))
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
    #[schema(value_type = Object)]
    input: Option<serde_json::Value>,
    /// Any JSON; often null until the prediction succeeds
    #[schema(value_type = Object)]
    output: Option<serde_json::Value>,
    logs: Option<String>,
    error: Option<String>,
    data_removed: Option<bool>,
    /// RFC 3339
    created_at: Option<String>,
    started_at: Option<String>,
    completed_at: Option<String>,
    /// `get`, `cancel`, `web`, and `stream` for streaming models
    #[schema(value_type = Object)]
    urls: Option<serde_json::Value>,
    #[schema(value_type = Object)]
    metrics: Option<serde_json::Value>,
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

/// The latest state of one prediction, exactly as the platform sent it; with `Prefer: wait`, held
/// until it finishes or the wait runs out.
#[utoipa::path(
    get,
    path = "/v1/predictions/{id}",
    tag = "predictions",
    security(("bearer" = [])),
    params(
        ("id" = String, Path, description = "The prediction's id"),
        ("Prefer" = Option<String>, Header, description = "`wait` (60 s) or `wait=N` (1..60): hold the request until the prediction is terminal or N seconds pass"),
    ),
    responses(
        (status = 200, description = "The prediction", body = PredictionObject,
            headers(("Preference-Applied" = String, description = "`wait=N` when a wait was asked for; `wait=0` when too many requests were already waiting"))),
        (status = 400, description = "A malformed `Prefer: wait`", body = Problem, content_type = PROBLEM_JSON),
        (status = 401, description = "No accepted bearer token", body = Problem, content_type = PROBLEM_JSON),
        (status = 404, description = "Never received (after the wait, if one was asked for)", body = Problem, content_type = PROBLEM_JSON),
        (status = 503, description = "The database is unavailable", body = Problem, content_type = PROBLEM_JSON),
    ),
)]
async fn get_one(
    Authenticated(caller): Authenticated,
    State(state): State<AppState>,
    Path(id): Path<String>,
    WaitPreference(wait): WaitPreference,
) -> Result<Response, ApiError> {
    let id = receivable(id)?;
    read_or_wait(&state, &id, wait, caller).await
}

async fn read_or_wait(
    state: &AppState,
    id: &str,
    wait: Option<u64>,
    caller: usize,
) -> Result<Response, ApiError> {
    // This route's bounds live here rather than in a timeout layer: a layer, or a timeout around
    // the whole wait, is one more future and timer for every parked wait, and waits are what this
    // route holds by the thousand. Each read is bounded by the request timeout, the wait by its
    // own deadline.
    let bound = state.settings.request_timeout;
    let read = || bounded(bound, state.store.prediction(id));
    let Some(wait) = wait else {
        return Ok(answer(read().await?, None));
    };
    // Registered before the first read, so a change committed in between still wakes this wait.
    let Ok(mut registration) = state.waiters.register(id, Interest::Terminal, caller) else {
        // Too many waiters already: the state now, and a header that says no wait was applied.
        return Ok(answer(read().await?, Some(0)));
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(wait);
    // Whether the prediction is finished, asked without its body: a parked wait holds none, and
    // reads it once, when it answers.
    while bounded(bound, state.store.finished(id)).await? != Some(true) {
        // Woken only when a change makes the prediction terminal (or when changes may have been
        // missed): then it is asked again.
        tokio::select! {
            woken = registration.changed() => if !woken { break },
            () = tokio::time::sleep_until(deadline) => break,
        }
    }
    // The state as it is now: finished, or at the deadline (or at shutdown).
    Ok(answer(read().await?, Some(wait)))
}

/// A database call that gives up after `limit`, answered 503.
async fn bounded<T>(
    limit: Duration,
    call: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, ApiError> {
    Ok(tokio::time::timeout(limit, call)
        .await
        .map_err(|_| ApiError::TimedOut)??)
}

/// The id, if a delivery could ever carry it. Any other (empty, over 1024 bytes, with a NUL, which
/// Postgres text cannot even hold) names no prediction, now or later: 404 at once, without a wait.
fn receivable(id: String) -> Result<String, ApiError> {
    if PredictionId::is_valid(&id) {
        Ok(id)
    } else {
        Err(not_received())
    }
}

fn not_received() -> ApiError {
    ApiError::NotFound("no prediction with this id has been received".into())
}

/// The prediction, or 404; with `Preference-Applied: wait=N` when a wait was asked for.
fn answer(found: Option<StoredPrediction>, wait_applied: Option<u64>) -> Response {
    let mut response = match found {
        Some(prediction) => json(prediction.body),
        None => not_received().into_response(),
    };
    if let Some(wait) = wait_applied {
        if let Ok(value) = HeaderValue::from_str(&format!("wait={wait}")) {
            response.headers_mut().insert("preference-applied", value);
        }
    }
    response
}

/// The `wait` preference among `Prefer` headers (RFC 7240), in seconds, read in place rather than
/// copying every header into the waiting request.
struct WaitPreference(Option<u64>);

impl<S: Sync> FromRequestParts<S> for WaitPreference {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        requested_wait(&parts.headers).map(Self)
    }
}

/// Other preferences are ignored. A bare `wait` means the longest wait; a value out of range is an
/// error, not a default.
fn requested_wait(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let invalid = || {
        ApiError::BadRequest(format!(
            "`Prefer: wait=N` takes N from 1 to {MAX_WAIT_SECS} seconds"
        ))
    };
    for value in headers.get_all("prefer") {
        let value = value.to_str().map_err(|_| invalid())?;
        for preference in value.split(',') {
            // Parameters after `;` do not apply to `wait`.
            let preference = preference.split(';').next().unwrap_or_default().trim();
            let (name, argument) = match preference.split_once('=') {
                Some((name, argument)) => (name.trim(), Some(argument.trim().trim_matches('"'))),
                None => (preference, None),
            };
            if !name.eq_ignore_ascii_case("wait") {
                continue;
            }
            let Some(seconds) = argument else {
                return Ok(Some(MAX_WAIT_SECS));
            };
            // Digits only: `u64::from_str` would also take a sign.
            if !seconds.bytes().all(|b| b.is_ascii_digit()) {
                return Err(invalid());
            }
            return match seconds.parse() {
                Ok(seconds) if (1..=MAX_WAIT_SECS).contains(&seconds) => Ok(Some(seconds)),
                _ => Err(invalid()),
            };
        }
    }
    Ok(None)
}

/// Server-sent events for one prediction: its current state, each advance, then `done`.
#[utoipa::path(
    get,
    path = "/v1/predictions/{id}/events",
    tag = "predictions",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The prediction's id; it need not have arrived yet")),
    responses(
        (status = 200, description = "`event: prediction` with the whole object, first the current state (if any) and then each advance; then `event: done` and the stream closes. A comment every 15 s keeps it alive.",
            body = String, content_type = "text/event-stream"),
        (status = 401, description = "No accepted bearer token", body = Problem, content_type = PROBLEM_JSON),
        (status = 404, description = "An id no delivery could carry (empty, over 1024 bytes, or with a NUL)", body = Problem, content_type = PROBLEM_JSON),
        (status = 503, description = "Too many requests are waiting on predictions", body = Problem, content_type = PROBLEM_JSON),
    ),
)]
async fn events(
    Authenticated(caller): Authenticated,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let id = receivable(id)?;
    let registration = state
        .waiters
        .register(&id, Interest::Every, caller)
        .map_err(|refused| {
            ApiError::Busy(match refused {
                Refused::CallerFull => {
                    "this token has as many requests waiting on predictions as it may; retry later"
                }
                Refused::Full | Refused::Closed => {
                    "too many requests are waiting on predictions; retry later"
                }
            })
        })?;
    let watch = Watch {
        store: state.store.clone(),
        id,
        registration,
        last_sent: None,
        ends: tokio::time::Instant::now() + state.settings.stream_max,
        max_secs: state.settings.stream_max.as_secs(),
        phase: Phase::Watching,
    };
    let stream = futures_util::stream::unfold(watch, Watch::next_event);
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}

/// One event stream's progress. Dropping it (the client went away) drops the registration.
struct Watch {
    store: Store,
    id: String,
    registration: Registration,
    /// A digest of the last state sent, to send each state once: not the state itself, which a
    /// parked stream must not hold.
    last_sent: Option<u64>,
    /// When the stream ends, finished or not (`INBOX_STREAM_MAX_SECS`).
    ends: tokio::time::Instant,
    max_secs: u64,
    phase: Phase,
}

enum Phase {
    Watching,
    /// The terminal state went out; `done` follows.
    Terminal,
    Finished,
}

impl Watch {
    async fn next_event(mut self) -> Option<(Result<Event, Infallible>, Self)> {
        match std::mem::replace(&mut self.phase, Phase::Finished) {
            Phase::Finished => return None,
            Phase::Terminal => {
                let done = Event::default()
                    .event("done")
                    .data(serde_json::json!({"id": self.id}).to_string());
                return Some((Ok(done), self));
            }
            Phase::Watching => self.phase = Phase::Watching,
        }
        loop {
            match self.store.prediction(&self.id).await {
                Ok(Some(current)) if self.last_sent != Some(digest(&current.body)) => {
                    if current.is_terminal() {
                        self.phase = Phase::Terminal;
                    }
                    self.last_sent = Some(digest(&current.body));
                    let event = Event::default()
                        .event("prediction")
                        .data(sse_data(&current.body));
                    return Some((Ok(event), self));
                }
                Ok(_) => {}
                Err(error) => {
                    // Ending the stream is honest: a reconnecting client starts from the current state.
                    tracing::warn!(%error, "event stream ended: cannot read the prediction");
                    return None;
                }
            }
            tokio::select! {
                woken = self.registration.changed() => if !woken {
                    return self.end("shutdown", "the service is shutting down; reconnect to go on".into());
                },
                () = tokio::time::sleep_until(self.ends) => {
                    let detail = format!(
                        "the stream reached its longest duration, {} s (INBOX_STREAM_MAX_SECS); reconnect to go on",
                        self.max_secs
                    );
                    return self.end("max_duration", detail);
                }
            }
        }
    }

    /// The `end` event, which says why the stream closes before its prediction finished.
    fn end(
        mut self,
        reason: &'static str,
        detail: String,
    ) -> Option<(Result<Event, Infallible>, Self)> {
        let end = Event::default().event("end").data(
            serde_json::json!({"id": self.id, "reason": reason, "detail": detail}).to_string(),
        );
        self.phase = Phase::Finished;
        Some((Ok(end), self))
    }
}

fn digest(body: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    body.hash(&mut hasher);
    hasher.finish()
}

/// SSE cannot carry a carriage return. In valid JSON a raw CR is only ever insignificant
/// whitespace (inside strings it is escaped), so turning it into a newline changes nothing.
fn sse_data(body: &str) -> Cow<'_, str> {
    if body.contains('\r') {
        Cow::Owned(body.replace("\r\n", "\n").replace('\r', "\n"))
    } else {
        Cow::Borrowed(body)
    }
}

/// The list's query string. Everything arrives as text so that each bad value gets its own message.
#[derive(Debug, Clone, Default, Deserialize, Serialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ListParams {
    /// Only predictions with this status
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<String>,
    /// Only predictions of this model, `owner/name`
    #[serde(skip_serializing_if = "Option::is_none")]
    model: Option<String>,
    /// Only predictions of this model version
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<String>,
    /// Only predictions created after this time, RFC 3339
    #[serde(skip_serializing_if = "Option::is_none")]
    #[param(format = DateTime)]
    created_after: Option<String>,
    /// Only predictions created before this time, RFC 3339
    #[serde(skip_serializing_if = "Option::is_none")]
    #[param(format = DateTime)]
    created_before: Option<String>,
    /// Page size; 100 by default
    #[serde(skip_serializing_if = "Option::is_none")]
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    limit: Option<String>,
    /// Opaque; part of the `next` and `previous` URLs
    #[serde(skip_serializing_if = "Option::is_none")]
    cursor: Option<String>,
}

/// Predictions, newest first by `created_at` then `id`, a page at a time.
#[utoipa::path(
    get,
    path = "/v1/predictions",
    tag = "predictions",
    security(("bearer" = [])),
    params(ListParams),
    responses(
        (status = 200, description = "A page", body = PredictionList),
        (status = 400, description = "A malformed filter, limit or cursor", body = Problem, content_type = PROBLEM_JSON),
        (status = 401, description = "No accepted bearer token", body = Problem, content_type = PROBLEM_JSON),
        (status = 503, description = "The database is unavailable", body = Problem, content_type = PROBLEM_JSON),
    ),
)]
async fn list(
    _: Authenticated,
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(params): Query<ListParams>,
) -> Result<Response, ApiError> {
    for (name, value) in [
        ("status", &params.status),
        ("model", &params.model),
        ("version", &params.version),
    ] {
        if value.as_deref().is_some_and(|v| !nul_free(v)) {
            return Err(ApiError::BadRequest(format!(
                "`{name}` cannot contain a NUL character"
            )));
        }
    }
    let query = ListQuery {
        status: params.status.clone(),
        model: params.model.clone(),
        version: params.version.clone(),
        created_after: params
            .created_after
            .as_deref()
            .map(|t| timestamp("created_after", t))
            .transpose()?,
        created_before: params
            .created_before
            .as_deref()
            .map(|t| timestamp("created_before", t))
            .transpose()?,
        from: params
            .cursor
            .as_deref()
            .map(Cursor::decode)
            .transpose()?
            .map(|c| (c.direction, c.position)),
        limit: match params.limit.as_deref() {
            None => DEFAULT_LIMIT,
            Some(text) => text
                .parse()
                .ok()
                .filter(|limit| (1..=MAX_LIMIT).contains(limit))
                .ok_or_else(|| {
                    ApiError::BadRequest(format!(
                        "`limit` must be a whole number from 1 to {MAX_LIMIT}"
                    ))
                })?,
        },
    };
    let page = state.store.list(&query).await?;

    let base = base_url(&state, &headers);
    let link = |direction, position: Option<Position>| {
        position.map(|position| {
            let params = ListParams {
                cursor: Some(
                    Cursor {
                        direction,
                        position,
                    }
                    .encode(),
                ),
                ..params.clone()
            };
            // Infallible for a struct of optional strings.
            let query = serde_urlencoded::to_string(&params).unwrap_or_default();
            format!("{base}/v1/predictions?{query}")
        })
    };
    let next = page
        .has_older
        .then(|| page.items.last().map(position))
        .flatten();
    let previous = page
        .has_newer
        .then(|| page.items.first().map(position))
        .flatten();
    let (previous, next) = (
        link(Direction::Newer, previous),
        link(Direction::Older, next),
    );
    Ok(json(list_body(previous, next, &page)))
}

fn position(item: &StoredPrediction) -> Position {
    Position {
        created_at: item.created_at,
        id: item.id.clone(),
    }
}

/// `{"previous":…,"next":…,"results":[…]}` with the stored bodies spliced in as they are: they came
/// out of a `json` column, so they are valid JSON and need no second parse.
fn list_body(previous: Option<String>, next: Option<String>, page: &Page) -> String {
    let link = |url: Option<String>| serde_json::to_string(&url).unwrap_or_else(|_| "null".into());
    let size: usize = page.items.iter().map(|item| item.body.len() + 1).sum();
    let mut body = String::with_capacity(size + 512);
    body.push_str("{\"previous\":");
    body.push_str(&link(previous));
    body.push_str(",\"next\":");
    body.push_str(&link(next));
    body.push_str(",\"results\":[");
    for (i, item) in page.items.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&item.body);
    }
    body.push_str("]}");
    body
}

fn json(body: String) -> Response {
    super::typed("application/json", body)
}

fn timestamp(name: &str, text: &str) -> Result<OffsetDateTime, ApiError> {
    OffsetDateTime::parse(text, &Rfc3339)
        .map_err(|_| ApiError::BadRequest(format!("`{name}` must be an RFC 3339 timestamp")))
}

/// Where the client reached us: the configured public URL, else what its request said — its
/// `Host`, and the `X-Forwarded-*` a proxy in front sets only when the operator trusts them (any
/// client can send them, and a link built from them would point wherever it liked).
fn base_url(state: &AppState, headers: &HeaderMap) -> String {
    let settings = &state.settings;
    if let Some(url) = &settings.public_url {
        return url.to_string();
    }
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.split(',').next())
            .map(str::trim)
            .filter(|value| !value.is_empty())
    };
    let forwarded = |name: &str| header(name).filter(|_| settings.trust_forwarded);
    let scheme = forwarded("x-forwarded-proto").unwrap_or("http");
    match forwarded("x-forwarded-host").or_else(|| header("host")) {
        Some(host) => format!("{scheme}://{host}"),
        None => String::new(),
    }
}

/// A position in the list and the way to go from it, opaque to clients.
struct Cursor {
    direction: Direction,
    position: Position,
}

impl Cursor {
    fn encode(&self) -> String {
        let direction = match self.direction {
            Direction::Older => 'o',
            Direction::Newer => 'n',
        };
        let micros = unix_micros(self.position.created_at);
        CURSOR_BASE64.encode(format!("{direction}.{micros}.{}", self.position.id))
    }

    fn decode(text: &str) -> Result<Self, ApiError> {
        let invalid = || ApiError::BadRequest("`cursor` is not one this service handed out".into());
        let bytes = CURSOR_BASE64.decode(text).map_err(|_| invalid())?;
        let text = String::from_utf8(bytes).map_err(|_| invalid())?;
        let mut parts = text.splitn(3, '.');
        let direction = match parts.next() {
            Some("o") => Direction::Older,
            Some("n") => Direction::Newer,
            _ => return Err(invalid()),
        };
        let created_at = parts
            .next()
            .and_then(|micros| micros.parse().ok())
            .and_then(from_unix_micros)
            .ok_or_else(invalid)?;
        let id = parts
            .next()
            .filter(|id| PredictionId::is_valid(id))
            .ok_or_else(invalid)?;
        Ok(Self {
            direction,
            position: Position {
                created_at,
                id: id.to_owned(),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_forgeries() {
        let cursor = Cursor {
            direction: Direction::Newer,
            position: Position {
                created_at: OffsetDateTime::from_unix_timestamp_nanos(1_694_189_974_765_994_000)
                    .unwrap(),
                id: "a.b.c".into(),
            },
        };
        let decoded = Cursor::decode(&cursor.encode()).unwrap();
        assert_eq!(
            (decoded.direction, decoded.position),
            (cursor.direction, cursor.position)
        );
        for bad in [
            "",
            "!!",
            "eC4xLmE",
            &CURSOR_BASE64.encode("o.abc.id"),
            &CURSOR_BASE64.encode("o.1."),
            &CURSOR_BASE64.encode(format!("o.{}.x", i128::MAX)),
        ] {
            assert!(Cursor::decode(bad).is_err(), "{bad}");
        }
    }
}
