//! `GET /v1/predictions/{id}/events`: the event stream of one prediction.

use axum::extract::{Path, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use std::borrow::Cow;
use std::convert::Infallible;

use super::{KEEP_ALIVE, receivable};
use crate::http::auth::Authenticated;
use crate::http::error::{PROBLEM_JSON, Problem};
use crate::http::reads::Reader;
use crate::http::{ApiError, AppState};
use crate::waiters::{Interest, Refused, Registration};

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
pub(super) async fn events(
    Authenticated(caller): Authenticated,
    State(state): State<AppState>,
    reader: Reader,
    Path(id): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    receivable(&id)?;
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
        state: state.clone(),
        reader,
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
    state: AppState,
    /// Whom the states are presented to.
    reader: Reader,
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
            match self.state.store.prediction(&self.id).await {
                Ok(Some(current)) if self.last_sent != Some(digest(&current.body)) => {
                    if current.is_terminal() {
                        self.phase = Phase::Terminal;
                    }
                    self.last_sent = Some(digest(&current.body));
                    let current = self.reader.present_one(&self.state, current).await;
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
