//! `GET /v1/predictions`: a page of latest states, newest first, and the links to the next.

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use utoipa::IntoParams;

use super::cursor::Cursor;
use super::{PredictionList, json, page_size};
use crate::domain::nul_free;
use crate::http::auth::Authenticated;
use crate::http::error::{PROBLEM_JSON, Problem};
use crate::http::reads::Reader;
use crate::http::{ApiError, AppState, base_url};
use crate::store::{Direction, ListQuery, Page, Position, StoredPrediction};

/// The list's query string. Everything arrives as text so that each bad value gets its own message.
#[derive(Debug, Clone, Default, Deserialize, Serialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct ListParams {
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
pub(super) async fn list(
    _: Authenticated,
    State(state): State<AppState>,
    headers: HeaderMap,
    reader: Reader,
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
        // An empty cursor is none: the first page.
        from: params
            .cursor
            .as_deref()
            .filter(|cursor| !cursor.is_empty())
            .map(Cursor::decode)
            .transpose()?
            .map(|c| (c.direction, c.position)),
        limit: page_size(params.limit.as_deref())?,
    };
    let mut page = state.store.list(&query).await?;
    reader.present(&state, &mut page.items).await;

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

fn timestamp(name: &str, text: &str) -> Result<OffsetDateTime, ApiError> {
    OffsetDateTime::parse(text, &Rfc3339)
        .map_err(|_| ApiError::BadRequest(format!("`{name}` must be an RFC 3339 timestamp")))
}
