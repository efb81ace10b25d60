//! `GET /archive/{digest}/{name}`: an archived output file, to whoever holds a link the inbox
//! signed (no bearer: browsers, `<img>` tags and clients follow these links as they are). The
//! signature is checked before anything is read. Model output can be HTML or SVG, served here
//! from the API's own origin, so it is never sniffed, runs sandboxed, and is downloaded rather
//! than shown unless it is an image, audio or video.

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use object_store::path::Path as ObjectPath;
use object_store::{GetOptions, GetRange};
use serde::Deserialize;
use time::OffsetDateTime;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{PROBLEM_JSON, Problem, problem};
use super::{ApiError, AppState, Settings, timeout};
use crate::archive::LinkCheck;

pub fn router(settings: &Settings) -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(file))
        .layer(timeout(settings.request_timeout))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct Link {
    /// When the link stops working, Unix seconds
    expires: Option<String>,
    /// The inbox's signature of the key and `expires`
    signature: Option<String>,
}

/// An archived output file. Reads of a prediction hand out these links in its `output`, each
/// valid for `INBOX_ARCHIVE_LINK_TTL`; a read hands out fresh ones.
#[utoipa::path(
    get,
    path = "/archive/{digest}/{name}",
    tag = "archive",
    params(
        ("digest" = String, Path, description = "The file's digest, as the link names it"),
        ("name" = String, Path, description = "The file's name, as the link names it"),
        Link,
        ("Range" = Option<String>, Header, description = "One byte range, `bytes=start-end`, `bytes=start-` or `bytes=-length`"),
    ),
    responses(
        (status = 200, description = "The file, byte for byte as the platform served it", body = Vec<u8>, content_type = "application/octet-stream"),
        (status = 206, description = "The range asked for", body = Vec<u8>, content_type = "application/octet-stream"),
        (status = 403, description = "The link was not signed by the inbox, was changed, or has expired: read the prediction again for a fresh one", body = Problem, content_type = PROBLEM_JSON),
        (status = 404, description = "No such file is kept", body = Problem, content_type = PROBLEM_JSON),
        (status = 416, description = "The range lies beyond the file", body = Problem, content_type = PROBLEM_JSON),
        (status = 503, description = "The database or the archive's store is unavailable", body = Problem, content_type = PROBLEM_JSON),
    ),
)]
async fn file(
    State(state): State<AppState>,
    Path((digest, name)): Path<(String, String)>,
    Query(link): Query<Link>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Some(archive) = &state.archive else {
        return Err(ApiError::NotFound("no files are archived here".into()));
    };
    let key = format!("{digest}/{name}");
    let expires = link
        .expires
        .as_deref()
        .and_then(|text| text.parse::<i64>().ok());
    let (Some(expires), Some(signature)) = (expires, link.signature.as_deref()) else {
        return Err(ApiError::Forbidden("the link has no valid `expires` and `signature`: read the prediction again for a fresh one".into()));
    };
    let now = OffsetDateTime::now_utc().unix_timestamp();
    match archive.links().check(&key, expires, signature, now) {
        LinkCheck::Valid => {}
        LinkCheck::Expired => {
            return Err(ApiError::Forbidden(
                "the link has expired: read the prediction again for a fresh one".into(),
            ));
        }
        LinkCheck::Forged => {
            return Err(ApiError::Forbidden(
                "the link was not signed by this inbox, or was changed".into(),
            ));
        }
    }
    let record = state.store.archive_file(&key).await?;
    let Some((size, content_type)) = record
        .filter(|record| record.state == "archived")
        .and_then(|record| Some((u64::try_from(record.size?).ok()?, record.content_type)))
    else {
        return Err(ApiError::NotFound("this file is no longer kept".into()));
    };
    let range = match requested_range(&headers, size) {
        Ok(range) => range,
        Err(()) => {
            let mut response = problem(
                StatusCode::RANGE_NOT_SATISFIABLE,
                format!("the file has {size} bytes"),
            );
            if let Ok(value) = HeaderValue::from_str(&format!("bytes */{size}")) {
                response.headers_mut().insert(header::CONTENT_RANGE, value);
            }
            return Ok(response);
        }
    };
    let options = GetOptions {
        range: range.clone().map(GetRange::Bounded),
        ..GetOptions::default()
    };
    let found = match archive
        .store()
        .get_opts(&ObjectPath::from(key.as_str()), options)
        .await
    {
        Ok(found) => found,
        Err(object_store::Error::NotFound { .. }) => {
            return Err(ApiError::NotFound("this file is no longer kept".into()));
        }
        Err(error) => {
            tracing::warn!(key, %error, "the archive's store failed a read");
            return Err(ApiError::Busy(
                "the archive's store is unavailable; retry later",
            ));
        }
    };
    let content_type = content_type.unwrap_or_else(|| "application/octet-stream".to_owned());
    let mut response = Body::from_stream(found.into_stream()).into_response();
    let answer = response.headers_mut();
    let mut set = |name, value: &str| {
        if let Ok(value) = HeaderValue::from_str(value) {
            answer.insert(name, value);
        }
    };
    set(header::CONTENT_TYPE, &content_type);
    set(header::ACCEPT_RANGES, "bytes");
    set(header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(header::CONTENT_SECURITY_POLICY, "sandbox");
    set(header::CACHE_CONTROL, "private");
    let shown = ["image/", "audio/", "video/"]
        .iter()
        .any(|kind| content_type.starts_with(kind));
    let disposition = if shown { "inline" } else { "attachment" };
    set(
        header::CONTENT_DISPOSITION,
        &format!("{disposition}; filename=\"{name}\""),
    );
    match range {
        Some(range) => {
            set(
                header::CONTENT_LENGTH,
                &(range.end - range.start).to_string(),
            );
            set(
                header::CONTENT_RANGE,
                &format!("bytes {}-{}/{size}", range.start, range.end - 1),
            );
            *response.status_mut() = StatusCode::PARTIAL_CONTENT;
        }
        None => set(header::CONTENT_LENGTH, &size.to_string()),
    }
    Ok(response)
}

/// The one byte range a `Range` header asks for, as `start..end`: `None` for the whole file (no
/// header, one that is not a single byte range, which may be ignored); `Err` if it lies beyond
/// the file.
fn requested_range(headers: &HeaderMap, size: u64) -> Result<Option<std::ops::Range<u64>>, ()> {
    let Some(spec) = headers
        .get(header::RANGE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().strip_prefix("bytes="))
    else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let Some((start, end)) = spec.split_once('-') else {
        return Ok(None);
    };
    let number = |text: &str| -> Option<u64> {
        let text = text.trim();
        (!text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()))
            .then(|| text.parse().ok())
            .flatten()
    };
    let range = match (number(start), number(end), end.trim().is_empty()) {
        // bytes=-n: the last n bytes.
        (None, Some(last), _) if start.trim().is_empty() => {
            if last == 0 || size == 0 {
                return Err(());
            }
            size.saturating_sub(last)..size
        }
        (Some(first), None, true) => first..size,
        (Some(first), Some(last), _) if last >= first => first..(last + 1).min(size),
        _ => return Ok(None),
    };
    if range.start >= size {
        return Err(());
    }
    Ok(Some(range))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(value: &str, size: u64) -> Result<Option<std::ops::Range<u64>>, ()> {
        let mut headers = HeaderMap::new();
        headers.insert(header::RANGE, HeaderValue::from_str(value).unwrap());
        requested_range(&headers, size)
    }

    #[test]
    fn single_byte_ranges_are_read_and_others_ignored() {
        assert_eq!(range("bytes=0-9", 100), Ok(Some(0..10)));
        assert_eq!(range("bytes=90-", 100), Ok(Some(90..100)));
        assert_eq!(range("bytes=-10", 100), Ok(Some(90..100)));
        assert_eq!(range("bytes=-1000", 100), Ok(Some(0..100)));
        assert_eq!(range("bytes=50-1000", 100), Ok(Some(50..100)));
        assert_eq!(range("bytes=100-", 100), Err(()));
        assert_eq!(range("bytes=-0", 100), Err(()));
        assert_eq!(range("bytes=0-1,5-6", 100), Ok(None));
        assert_eq!(range("bytes=9-1", 100), Ok(None));
        assert_eq!(range("items=0-1", 100), Ok(None));
        assert_eq!(range("bytes=x-1", 100), Ok(None));
    }
}
