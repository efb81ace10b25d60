//! `GET /v1/predictions/{id}/deliveries`: what arrived for one prediction, oldest first, as the
//! store keeps it (retention removes old records and drops superseded bodies).

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as CURSOR_BASE64;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use time::format_description::well_known::Rfc3339;
use utoipa::{IntoParams, ToSchema};

use super::{json, not_received, page_size, receivable};
use crate::domain::{from_unix_micros, nul_free, unix_micros};
use crate::http::auth::Authenticated;
use crate::http::base_url;
use crate::http::error::{PROBLEM_JSON, Problem};
use crate::http::reads::Reader;
use crate::http::{ApiError, AppState};
use crate::store::{HistoryQuery, StoredDelivery};

/// The bodies one page carries at most, in bytes; a page always carries its first delivery's.
const PAGE_BODY_BYTES: i64 = 16 * 1024 * 1024;

/// The history's query string, as text so that each bad value gets its own message.
#[derive(Debug, Clone, Default, Deserialize, Serialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct HistoryParams {
    /// `body`: add each body still kept, as received (a page then ends before its bodies pass
    /// 16 MiB, after at least one)
    #[serde(skip_serializing_if = "Option::is_none")]
    #[param(pattern = "^body$")]
    include: Option<String>,
    /// Page size; 100 by default
    #[serde(skip_serializing_if = "Option::is_none")]
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    limit: Option<String>,
    /// Opaque; part of the `next` URL
    #[serde(skip_serializing_if = "Option::is_none")]
    cursor: Option<String>,
}

/// A page of one prediction's deliveries.
#[derive(Serialize, ToSchema)]
pub struct DeliveryList {
    /// The next page (later deliveries), to follow as is
    next: Option<String>,
    results: Vec<DeliveryRecord>,
}

/// One delivery, as recorded.
#[derive(Serialize, ToSchema)]
pub struct DeliveryRecord {
    webhook_id: String,
    /// The `webhook-timestamp` header, Unix seconds. A delivery the service made itself has none:
    /// its place in the latest-state order's timestamp, which is 0 for a terminal one (so any
    /// terminal delivery of the platform's is later) and the time it was made for any other
    webhook_timestamp: i64,
    /// When the service recorded it, RFC 3339
    received_at: String,
    /// How it came: `webhook` (signed by the platform), or made by the service from the platform's
    /// answer to a `create`, a `cancel` or a `reconcile` read; these ids hold a `·`, which no
    /// `webhook-id` can
    source: String,
    /// Its own status, as sent
    status: Option<String>,
    /// `applied` if it became the prediction's latest state when it arrived, else `ignored`
    outcome: &'static str,
    /// The body's length in bytes, kept or not
    body_size: i64,
    /// Whether the body is still kept (retention drops superseded ones)
    body_kept: bool,
    /// With `include=body`, the body if kept, exactly as received
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    body: Option<Box<RawValue>>,
}

/// The deliveries recorded for one prediction, oldest first by arrival, a page at a time.
#[utoipa::path(
    get,
    path = "/v1/predictions/{id}/deliveries",
    tag = "predictions",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The prediction's id"), HistoryParams),
    responses(
        (status = 200, description = "A page", body = DeliveryList),
        (status = 400, description = "A malformed `include`, limit or cursor", body = Problem, content_type = PROBLEM_JSON),
        (status = 401, description = "No accepted bearer token", body = Problem, content_type = PROBLEM_JSON),
        (status = 404, description = "Nothing received for this prediction", body = Problem, content_type = PROBLEM_JSON),
        (status = 503, description = "The database is unavailable", body = Problem, content_type = PROBLEM_JSON),
    ),
)]
pub(super) async fn history(
    _: Authenticated,
    State(state): State<AppState>,
    headers: HeaderMap,
    reader: Reader,
    Path(id): Path<String>,
    Query(params): Query<HistoryParams>,
) -> Result<Response, ApiError> {
    receivable(&id)?;
    let with_bodies = match params.include.as_deref() {
        None => false,
        Some("body") => true,
        Some(_) => return Err(ApiError::BadRequest("`include` may only be `body`".into())),
    };
    let limit = page_size(params.limit.as_deref())?;
    // An empty cursor is none: the first page.
    let after = params
        .cursor
        .as_deref()
        .filter(|cursor| !cursor.is_empty())
        .map(decode)
        .transpose()?;
    let first_page = after.is_none();
    let mut rows = state
        .store
        .deliveries(&HistoryQuery {
            prediction_id: id.clone(),
            after,
            // One more, to know whether there is a next page.
            limit: limit + 1,
        })
        .await?;
    if rows.is_empty() && first_page {
        return Err(not_received());
    }
    let mut more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let mut bodies = Vec::new();
    if with_bodies {
        let mut total = 0;
        let fits = rows
            .iter()
            .position(|row| {
                total += if row.body_kept { row.body_size } else { 0 };
                total > PAGE_BODY_BYTES
            })
            .map_or(rows.len(), |over| over.max(1));
        more |= fits < rows.len();
        rows.truncate(fits);
        let kept: Vec<String> = rows
            .iter()
            .filter(|row| row.body_kept)
            .map(|row| row.webhook_id.clone())
            .collect();
        if !kept.is_empty() {
            let (webhook_ids, stored): (Vec<String>, Vec<_>) = state
                .store
                .bodies(&id, &kept)
                .await?
                .into_iter()
                .map(|(webhook_id, body)| {
                    let status = rows
                        .iter()
                        .find(|row| row.webhook_id == webhook_id)
                        .and_then(|row| row.status.clone());
                    (webhook_id, (status, body))
                })
                .unzip();
            let presented = reader.present_deliveries(&state, &id, stored).await;
            bodies = webhook_ids.into_iter().zip(presented).collect();
        }
    }
    let next = more.then(|| rows.last()).flatten().map(|last| {
        let params = HistoryParams {
            cursor: Some(encode(last)),
            ..params.clone()
        };
        // Infallible for a struct of optional strings.
        let query = serde_urlencoded::to_string(&params).unwrap_or_default();
        format!(
            "{}/v1/predictions/{}/deliveries?{query}",
            base_url(&state, &headers),
            path_segment(&id)
        )
    });
    let results = rows
        .into_iter()
        .map(|row| {
            let body = bodies
                .iter()
                .position(|(webhook_id, _)| *webhook_id == row.webhook_id)
                .map(|at| bodies.swap_remove(at).1)
                .and_then(|body| RawValue::from_string(body).ok());
            record(row, body)
        })
        .collect();
    let page = DeliveryList { next, results };
    // Infallible: strings, numbers and JSON already valid.
    Ok(json(serde_json::to_string(&page).unwrap_or_default()))
}

fn record(row: StoredDelivery, body: Option<Box<RawValue>>) -> DeliveryRecord {
    DeliveryRecord {
        webhook_id: row.webhook_id,
        webhook_timestamp: row.webhook_timestamp,
        received_at: row.received_at.format(&Rfc3339).unwrap_or_default(),
        source: row.source,
        status: row.status,
        outcome: if row.applied { "applied" } else { "ignored" },
        body_size: row.body_size,
        body_kept: row.body_kept,
        body,
    }
}

/// The cursor after `row`: its arrival time and `webhook-id`, opaque to clients.
fn encode(row: &StoredDelivery) -> String {
    CURSOR_BASE64.encode(format!(
        "{}.{}",
        unix_micros(row.received_at),
        row.webhook_id
    ))
}

fn decode(text: &str) -> Result<(time::OffsetDateTime, String), ApiError> {
    let invalid = || ApiError::BadRequest("`cursor` is not one this service handed out".into());
    let bytes = CURSOR_BASE64.decode(text).map_err(|_| invalid())?;
    let text = String::from_utf8(bytes).map_err(|_| invalid())?;
    let (micros, webhook_id) = text.split_once('.').ok_or_else(invalid)?;
    let at = micros
        .parse()
        .ok()
        .and_then(from_unix_micros)
        .ok_or_else(invalid)?;
    if webhook_id.is_empty() || !nul_free(webhook_id) {
        return Err(invalid());
    }
    Ok((at, webhook_id.to_owned()))
}

/// `id` as one segment of a URL's path: everything but the unreserved characters
/// percent-encoded.
fn path_segment(id: &str) -> String {
    let mut segment = String::with_capacity(id.len());
    for byte in id.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            segment.push(char::from(byte));
        } else {
            segment.push_str(&format!("%{byte:02X}"));
        }
    }
    segment
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_forgeries() {
        let row = StoredDelivery {
            webhook_id: "msg_a.b".into(),
            webhook_timestamp: 0,
            received_at: time::OffsetDateTime::from_unix_timestamp_nanos(1_694_189_974_765_994_000)
                .unwrap(),
            source: "webhook".into(),
            status: None,
            applied: true,
            body_size: 0,
            body_kept: true,
        };
        let (at, id) = decode(&encode(&row)).unwrap();
        assert_eq!((at, id.as_str()), (row.received_at, "msg_a.b"));
        for bad in [
            "",
            "!!",
            &CURSOR_BASE64.encode("1."),
            &CURSOR_BASE64.encode("x.id"),
        ] {
            assert!(decode(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ids_are_escaped_as_one_path_segment() {
        assert_eq!(path_segment("abc-1_2.3~"), "abc-1_2.3~");
        assert_eq!(path_segment("a/b?c d"), "a%2Fb%3Fc%20d");
    }
}
