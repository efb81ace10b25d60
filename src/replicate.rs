//! The platform's HTTP API, as the service calls it with the account's token: creating and
//! cancelling predictions for callers of the gateway, and (later) reading them to repair missed
//! webhooks. Paths are built segment by segment from checked [`Segment`]s, so nothing a caller
//! sends can name another route of the platform.

use std::fmt;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use futures_util::StreamExt;
use reqwest::Url;

use crate::metrics;

/// The platform's answers the service reads whole (prediction objects, problems) are at most this
/// large; a prediction with more in it than this is refused rather than held.
pub const MAX_ANSWER_BYTES: usize = 16 * 1024 * 1024;

/// How the service reaches the platform.
#[derive(Clone)]
pub struct Settings {
    /// `https://api.replicate.com`, or a fake's address in tests; no trailing slash.
    pub api_url: String,
    pub token: AccountToken,
    /// Where the platform calls back: the webhook route's public URL.
    pub webhook_url: String,
    /// The bound of one call, answer included.
    pub timeout: Duration,
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("api_url", &self.api_url)
            .field("token", &self.token)
            .field("webhook_url", &self.webhook_url)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// The account's API token (`REPLICATE_API_TOKEN`). Never printed: `Debug` says only that it is
/// set, and it leaves the process only in the `Authorization` header of calls to the platform.
#[derive(Clone)]
pub struct AccountToken(String);

impl AccountToken {
    pub fn new(token: String) -> Self {
        Self(token)
    }
}

impl fmt::Debug for AccountToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AccountToken(<redacted>)")
    }
}

/// One path segment of a platform URL, as the service forwards it: `[A-Za-z0-9._-]+`, and not `.`
/// or `..`. Axum decodes `%2F` in path parameters, so without this a caller's
/// `..%2F..%2Fwebhooks%2Fdefault%2Fsecret` would reach another route with the account's token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment<'a>(&'a str);

impl<'a> Segment<'a> {
    pub fn parse(text: &'a str) -> Option<Self> {
        let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-');
        let well_formed = !text.is_empty() && text.bytes().all(allowed);
        (well_formed && text != "." && text != "..").then_some(Self(text))
    }

    pub fn as_str(&self) -> &'a str {
        self.0
    }
}

impl Segment<'static> {
    /// A fixed part of a path, written in the code (`v1`, `predictions`): plain names only.
    pub const fn literal(text: &'static str) -> Self {
        Self(text)
    }
}

/// The platform's paths' fixed parts.
pub const V1: Segment<'static> = Segment::literal("v1");
pub const PREDICTIONS: Segment<'static> = Segment::literal("predictions");
pub const MODELS: Segment<'static> = Segment::literal("models");
pub const DEPLOYMENTS: Segment<'static> = Segment::literal("deployments");
pub const VERSIONS: Segment<'static> = Segment::literal("versions");
pub const FILES: Segment<'static> = Segment::literal("files");
pub const TRAININGS: Segment<'static> = Segment::literal("trainings");
pub const CANCEL: Segment<'static> = Segment::literal("cancel");

/// What the service asks of the platform, for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Create,
    Cancel,
    Get,
    Version,
    File,
    List,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Cancel => "cancel",
            Self::Get => "get",
            Self::Version => "version",
            Self::File => "file",
            Self::List => "list",
        }
    }
}

/// Why a call to the platform brought no answer of its own.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("the platform could not be reached")]
    Unreachable,
    #[error("the platform did not answer in time")]
    TimedOut,
    /// `401` or `403`: the account's token is wrong or revoked. Never the caller's fault.
    #[error(
        "the platform refused the inbox's upstream token (REPLICATE_API_TOKEN); an operator must fix it"
    )]
    TokenRefused,
    #[error("the platform's answer is larger than the inbox reads")]
    TooLarge,
    /// A URL the platform handed out (a list's `next`) that is not on its API: never followed,
    /// since the account's token would go with it.
    #[error("a link in the platform's answer leads off its API")]
    NotThePlatform,
}

/// An answer of the platform, read whole.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub content_type: Option<HeaderValue>,
    pub retry_after: Option<HeaderValue>,
    pub body: Bytes,
}

/// The platform's API, with the account's token; cheap to clone.
#[derive(Clone)]
pub struct Platform {
    http: reqwest::Client,
    base: Url,
    authorization: HeaderValue,
    webhook_url: String,
    /// `{base}/v1/predictions/`: what a prediction's `urls.get` starts with.
    predictions_url: String,
}

impl Platform {
    pub fn new(settings: &Settings) -> Result<Self, String> {
        let base = Url::parse(&settings.api_url).map_err(|e| e.to_string())?;
        if base.cannot_be_a_base() {
            return Err("it cannot be the base of a path".into());
        }
        let mut authorization = HeaderValue::from_str(&format!("Bearer {}", settings.token.0))
            .map_err(|_| "the token is not a valid header value".to_owned())?;
        authorization.set_sensitive(true);
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(Duration::from_secs(10))
            // The platform does not redirect its API; a redirect would carry the token elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("prediction-inbox/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| e.to_string())?;
        let mut platform = Self {
            http,
            base,
            authorization,
            webhook_url: settings.webhook_url.clone(),
            predictions_url: String::new(),
        };
        platform.predictions_url = format!("{}/", platform.url(&[V1, PREDICTIONS]));
        Ok(platform)
    }

    /// `{base}/v1/predictions/`: what the platform's `urls.get` of a prediction starts with.
    pub fn predictions_url(&self) -> &str {
        &self.predictions_url
    }

    /// Where the platform calls back.
    pub fn webhook_url(&self) -> &str {
        &self.webhook_url
    }

    /// The URL of `segments` under the API's base, each one a path segment of its own.
    pub fn url(&self, segments: &[Segment<'_>]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty();
            path.extend(segments.iter().map(Segment::as_str));
        }
        url
    }

    /// The path segments of `url` under the API's base, if `url` is on the API: the same scheme,
    /// host and port, below the base's path. Anything else (another host, another port, `http`
    /// for `https`) is not the platform's.
    pub fn api_path(&self, url: &Url) -> Option<Vec<String>> {
        if url.origin() != self.base.origin() {
            return None;
        }
        let base: Vec<&str> = self
            .base
            .path_segments()?
            .filter(|s| !s.is_empty())
            .collect();
        let path: Vec<&str> = url.path_segments()?.collect();
        let rest = path.strip_prefix(base.as_slice())?;
        Some(rest.iter().map(|s| (*s).to_owned()).collect())
    }

    /// Sends one request and reads its answer whole (up to `MAX_ANSWER_BYTES`).
    pub async fn call(
        &self,
        operation: Operation,
        method: Method,
        segments: &[Segment<'_>],
        headers: HeaderMap,
        body: Option<Bytes>,
    ) -> Result<Answer, UpstreamError> {
        let started = Instant::now();
        let answered = async {
            let response = self.send(method, segments, headers, body).await?;
            read_answer(response).await
        }
        .await;
        record(operation, started, &answered.as_ref().map(|a| a.status));
        answered
    }

    /// `GET url`, a URL the platform handed out (a list's `next`), read whole: only if it is on
    /// the API, since the account's token goes with it.
    pub async fn get_url(&self, operation: Operation, url: Url) -> Result<Answer, UpstreamError> {
        if self.api_path(&url).is_none() {
            return Err(UpstreamError::NotThePlatform);
        }
        let started = Instant::now();
        let answered = async {
            let response = self
                .http
                .get(url)
                .header(header::AUTHORIZATION, self.authorization.clone())
                .send()
                .await
                .map_err(failure)
                .and_then(refused_token)?;
            read_answer(response).await
        }
        .await;
        record(operation, started, &answered.as_ref().map(|a| a.status));
        answered
    }

    /// Sends one request whose body streams from the caller and whose answer streams back to it.
    pub async fn relay(
        &self,
        operation: Operation,
        method: Method,
        segments: &[Segment<'_>],
        headers: HeaderMap,
        body: reqwest::Body,
    ) -> Result<reqwest::Response, UpstreamError> {
        let started = Instant::now();
        let url = self.url(segments);
        let answered = self
            .http
            .request(method, url)
            .headers(headers)
            .header(header::AUTHORIZATION, self.authorization.clone())
            .body(body)
            .send()
            .await
            .map_err(failure)
            .and_then(refused_token);
        record(operation, started, &answered.as_ref().map(|a| a.status()));
        answered
    }

    async fn send(
        &self,
        method: Method,
        segments: &[Segment<'_>],
        headers: HeaderMap,
        body: Option<Bytes>,
    ) -> Result<reqwest::Response, UpstreamError> {
        let mut request = self
            .http
            .request(method, self.url(segments))
            .headers(headers)
            .header(header::AUTHORIZATION, self.authorization.clone());
        if let Some(body) = body {
            request = request
                .header(header::CONTENT_TYPE, "application/json")
                .body(body);
        }
        request
            .send()
            .await
            .map_err(failure)
            .and_then(refused_token)
    }
}

fn failure(error: reqwest::Error) -> UpstreamError {
    // The error's text names the URL, never the token; it goes to the log only.
    tracing::warn!(error = %error, "call to the platform failed");
    if error.is_timeout() {
        UpstreamError::TimedOut
    } else {
        UpstreamError::Unreachable
    }
}

fn refused_token(response: reqwest::Response) -> Result<reqwest::Response, UpstreamError> {
    match response.status() {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
            tracing::error!(
                status = response.status().as_u16(),
                "the platform refused REPLICATE_API_TOKEN"
            );
            Err(UpstreamError::TokenRefused)
        }
        _ => Ok(response),
    }
}

async fn read_answer(response: reqwest::Response) -> Result<Answer, UpstreamError> {
    let status = response.status();
    let content_type = response.headers().get(header::CONTENT_TYPE).cloned();
    let retry_after = response.headers().get(header::RETRY_AFTER).cloned();
    if response
        .content_length()
        .is_some_and(|length| length > MAX_ANSWER_BYTES as u64)
    {
        return Err(UpstreamError::TooLarge);
    }
    let mut body = Vec::new();
    let mut chunks = response.bytes_stream();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(failure)?;
        if body.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(UpstreamError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Answer {
        status,
        content_type,
        retry_after,
        body: body.into(),
    })
}

fn record(operation: Operation, started: Instant, answered: &Result<StatusCode, &UpstreamError>) {
    let outcome = match answered {
        Ok(status) if status.is_success() => "ok",
        Ok(status) if *status == StatusCode::TOO_MANY_REQUESTS => "rate_limited",
        Ok(status) if status.is_client_error() => "client_error",
        Ok(_) => "server_error",
        Err(UpstreamError::TokenRefused) => "token_refused",
        Err(UpstreamError::TimedOut) => "timeout",
        Err(UpstreamError::Unreachable) => "unreachable",
        Err(UpstreamError::TooLarge) => "too_large",
        Err(UpstreamError::NotThePlatform) => "not_the_platform",
    };
    metrics::upstream(operation.as_str(), outcome, started.elapsed());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fixed_parts_are_plain_names() {
        for literal in [
            V1,
            PREDICTIONS,
            MODELS,
            DEPLOYMENTS,
            VERSIONS,
            FILES,
            CANCEL,
        ] {
            assert_eq!(Segment::parse(literal.as_str()), Some(literal));
        }
    }

    #[test]
    fn segments_are_plain_names_only() {
        for good in ["stability-ai", "sdxl", "v1.2_3", "abc..def"] {
            assert!(Segment::parse(good).is_some(), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "../webhooks",
            "a%2Fb",
            "a b",
            "a?b",
            "a#b",
            "é",
        ] {
            assert!(Segment::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn a_url_is_built_segment_by_segment_under_the_base() {
        let platform = Platform::new(&Settings {
            api_url: "http://127.0.0.1:9/base/".into(),
            token: AccountToken::new("r8_secret".into()),
            webhook_url: "https://inbox.example/webhooks/replicate".into(),
            timeout: Duration::from_secs(1),
        })
        .unwrap();
        let segments = ["v1", "models", "a", "b"].map(|s| Segment::parse(s).unwrap());
        assert_eq!(
            platform.url(&segments).as_str(),
            "http://127.0.0.1:9/base/v1/models/a/b"
        );
        let on = |url: &str| platform.api_path(&Url::parse(url).unwrap());
        assert_eq!(
            on("http://127.0.0.1:9/base/v1/predictions/x"),
            Some(vec!["v1".into(), "predictions".into(), "x".into()])
        );
        for elsewhere in [
            "http://127.0.0.1:10/base/v1/predictions/x",
            "https://127.0.0.1:9/base/v1/predictions/x",
            "http://localhost:9/base/v1/predictions/x",
            "http://127.0.0.1:9/other/v1/predictions/x",
        ] {
            assert_eq!(on(elsewhere), None, "{elsewhere}");
        }
        let settings = format!("{:?}", AccountToken::new("r8_secret".into()));
        assert!(!settings.contains("r8_secret"));
    }
}
