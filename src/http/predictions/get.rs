//! `GET /v1/predictions/{id}`, with `Prefer: wait`.

use std::time::Duration;

use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};

use super::{MAX_WAIT_SECS, PredictionObject, json, not_received, receivable};
use crate::http::auth::Authenticated;
use crate::http::error::{PROBLEM_JSON, Problem};
use crate::http::reads::Reader;
use crate::http::{ApiError, AppState};
use crate::store::{StoreError, StoredPrediction};
use crate::waiters::Interest;

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
//
// Not an `async fn`: one keeps its arguments twice, as they came and as it moved them, and a
// parked wait carries that space until it answers.
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn keeps its arguments twice"
)]
pub(super) fn get_one(
    Authenticated(caller): Authenticated,
    State(state): State<AppState>,
    Path(id): Path<String>,
    WaitPreference(wait): WaitPreference,
    reader: Reader,
) -> impl Future<Output = Result<Response, ApiError>> {
    async move {
        receivable(&id)?;
        let (found, applied) = match wait {
            None => {
                let read = bounded(state.settings.request_timeout, state.store.prediction(&id));
                (read.await?, None)
            }
            Some(wait) => {
                let (found, applied) = wait_for_end(&state, &id, wait, caller).await?;
                (found, Some(applied))
            }
        };
        let found = match found {
            Some(found) => Some(reader.present_one(&state, found).await),
            None => None,
        };
        Ok(answer(found, applied))
    }
}

/// Holds the request until prediction `id` is terminal or `wait` seconds pass (or the service
/// shuts down), then reads it: its state then, and the wait applied (0 when too many requests
/// were already waiting, and the state is read at once).
//
// Not an `async fn`, which would keep its arguments twice for as long as the wait is parked.
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn keeps its arguments twice"
)]
pub(in crate::http) fn wait_for_end<'a>(
    state: &'a AppState,
    id: &'a str,
    wait: u64,
    caller: usize,
) -> impl Future<Output = Result<(Option<StoredPrediction>, u64), ApiError>> + 'a {
    async move {
        // This route's bounds live here rather than in a timeout layer: a layer, or a timeout
        // around the whole wait, is one more future and timer for every parked wait, and waits are
        // what this route holds by the thousand. Each read is bounded by the request timeout, the
        // wait by its own deadline.
        let read = || bounded(state.settings.request_timeout, state.store.prediction(id));
        // Registered before the first read, so a change committed in between still wakes it.
        let Ok(mut registration) = state.waiters.register(id, Interest::Terminal, caller) else {
            // Too many waiters already: the state now, and a header saying no wait was applied.
            return Ok((read().await?, 0));
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(wait);
        // Whether the prediction is finished, asked without its body: a parked wait holds none,
        // and reads it once, when it answers.
        let finished = || bounded(state.settings.request_timeout, state.store.finished(id));
        while finished().await? != Some(true) {
            // Woken only when a change makes the prediction terminal (or when changes may have
            // been missed): then it is asked again.
            tokio::select! {
                woken = registration.changed() => if !woken { break },
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
        // The state as it is now: finished, or at the deadline (or at shutdown).
        Ok((read().await?, wait))
    }
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
pub(in crate::http) struct WaitPreference(pub Option<u64>);

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
