//! What the platform's answers become: a prediction it answered is recorded as a delivery of the
//! service's own, and what the caller gets names the inbox's routes rather than the platform's.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::domain::Members;
use crate::http::AppState;
use crate::ingest::{self, IngestError};
use crate::replicate::Answer;
use crate::store::Source;

/// How often, and how far apart, a prediction the platform answered is offered to the store again
/// when recording it failed: for about ten minutes, by which time its webhooks have brought it.
const RECORD_ATTEMPTS: u32 = 10;
const RECORD_BACKOFF_MAX: Duration = Duration::from_secs(120);

/// Records a prediction the platform answered with, as a delivery of `source`. Whether it was
/// recorded now; if not, and it is worth trying again, it is retried in the background, so that
/// the caller's answer never waits on it nor fails for it.
pub(super) async fn record(state: &AppState, source: Source, body: &Bytes) -> bool {
    let Ok(text) = String::from_utf8(body.to_vec()) else {
        tracing::warn!(
            source = source.as_str(),
            "the platform answered a body that is not UTF-8"
        );
        return false;
    };
    let deadline = tokio::time::Instant::now() + state.settings.request_timeout;
    match ingest::record_answer(&state.writer, source, text.clone(), deadline).await {
        Ok(_) => true,
        Err(IngestError::Invalid(error)) => {
            tracing::warn!(source = source.as_str(), %error, "the platform's answer is not a prediction the inbox can record");
            false
        }
        Err(error) => {
            tracing::warn!(source = source.as_str(), %error, "recording the platform's answer failed; retrying in the background");
            let state = state.clone();
            tokio::spawn(async move { record_later(state, source, text).await });
            false
        }
    }
}

async fn record_later(state: AppState, source: Source, text: String) {
    let mut backoff = Duration::from_secs(1);
    for _ in 1..RECORD_ATTEMPTS {
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(RECORD_BACKOFF_MAX);
        let deadline = tokio::time::Instant::now() + state.settings.request_timeout;
        match ingest::record_answer(&state.writer, source, text.clone(), deadline).await {
            Ok(_) => return,
            Err(IngestError::Invalid(_)) => return,
            Err(error) => {
                tracing::warn!(source = source.as_str(), %error, "recording the platform's answer failed again")
            }
        }
    }
    tracing::error!(
        source = source.as_str(),
        "gave up recording the platform's answer; the prediction's webhooks will bring its state"
    );
}

/// A prediction object as the inbox answers it: `urls.get` and `urls.cancel` name the inbox's
/// routes under `base` (a client that follows them must not carry its inbox token to the
/// platform; `urls.stream` stays the platform's), and with `starting`, an unfinished prediction
/// says `starting` (see `create`). Every other member stays as it came, in its order, byte for
/// byte. `None` if it is not a JSON object with a string `id`.
pub(super) fn as_the_inbox_answers(
    body: &[u8],
    base: &str,
    starting: bool,
) -> Option<(String, Vec<u8>)> {
    let members = Members::parse(std::str::from_utf8(body).ok()?)?;
    let id = id_of(&members)?;
    let written = members.write(|key, raw| match key {
        "urls" => Some(urls_naming_the_inbox(raw, base, &id)),
        "status" if starting && !terminal(raw) => Some("\"starting\"".to_owned()),
        _ => None,
    });
    Some((id, written.into_bytes()))
}

/// The `id` of a prediction object the platform answered; `None` if it is not an object with a
/// string `id`.
pub(super) fn prediction_id(body: &[u8]) -> Option<String> {
    id_of(&Members::parse(std::str::from_utf8(body).ok()?)?)
}

fn id_of(members: &Members<'_>) -> Option<String> {
    serde_json::from_str(members.get("id")?.get()).ok()
}

/// `urls` with `get` and `cancel` naming the inbox; as it came if it is not an object.
fn urls_naming_the_inbox(raw: &RawValue, base: &str, id: &str) -> String {
    let Ok(mut urls) = serde_json::from_str::<Map<String, Value>>(raw.get()) else {
        return raw.get().to_owned();
    };
    let get = format!("{base}/v1/predictions/{id}");
    urls.insert("cancel".into(), Value::String(format!("{get}/cancel")));
    urls.insert("get".into(), Value::String(get));
    serde_json::to_string(&urls).unwrap_or_else(|_| raw.get().to_owned())
}

fn terminal(status: &RawValue) -> bool {
    serde_json::from_str::<&str>(status.get())
        .is_ok_and(|status| crate::domain::Status::parse(status).is_terminal())
}

/// The platform's own answer, passed on as it came: its status, its problem body, and the
/// `Retry-After` of a `429` or `503`.
pub(super) fn passed_on(answer: &Answer) -> Response {
    from_the_platform(
        answer.status,
        answer.content_type.clone(),
        answer.retry_after.clone(),
        Body::from(answer.body.clone()),
    )
}

/// An answer of the platform's, whole or streamed: its status, its type (JSON if it gave none),
/// its `Retry-After`, and `body`.
pub(super) fn from_the_platform(
    status: StatusCode,
    content_type: Option<HeaderValue>,
    retry_after: Option<HeaderValue>,
    body: Body,
) -> Response {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        content_type.unwrap_or(HeaderValue::from_static("application/json")),
    );
    if let Some(retry_after) = retry_after {
        headers.insert(header::RETRY_AFTER, retry_after);
    }
    response
}

/// A JSON answer of `status`.
pub(super) fn json(status: StatusCode, body: Vec<u8>) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answer_names_the_inbox_and_keeps_the_stream() {
        let body = br#"{"id":"p1","status":"processing","urls":{"get":"https://api.replicate.com/v1/predictions/p1","cancel":"https://api.replicate.com/v1/predictions/p1/cancel","stream":"https://stream.replicate.com/v1/files/x"}}"#;
        let (id, bytes) = as_the_inbox_answers(body, "https://inbox.example", true).unwrap();
        let value: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(id, "p1");
        assert_eq!(value["status"], "starting");
        assert_eq!(
            value["urls"]["get"],
            "https://inbox.example/v1/predictions/p1"
        );
        assert_eq!(
            value["urls"]["cancel"],
            "https://inbox.example/v1/predictions/p1/cancel"
        );
        assert_eq!(
            value["urls"]["stream"],
            "https://stream.replicate.com/v1/files/x"
        );
        let done = br#"{"id":"p1","status":"succeeded"}"#;
        let (_, bytes) = as_the_inbox_answers(done, "", true).unwrap();
        assert_eq!(bytes, done);
        assert!(as_the_inbox_answers(b"[1]", "", false).is_none());
        // Every other member as it came: order, spacing inside values, numbers no double holds,
        // duplicate keys.
        let odd =
            br#"{"z":1,"id":"p2","n":123456789012345678901234567890,"a":{"b" : [1, 2]},"z":2}"#;
        let (_, bytes) = as_the_inbox_answers(odd, "x", false).unwrap();
        assert_eq!(bytes, odd);
    }
}
