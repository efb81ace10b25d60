//! `POST /v1/predictions`, `POST /v1/models/{owner}/{name}/predictions` and
//! `POST /v1/deployments/{owner}/{name}/predictions`: forwarded with the inbox's webhook, recorded
//! at once, and with `Prefer: wait`, answered from the inbox's own deliveries.

use std::time::Instant;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use serde_json::Value;
use std::collections::BTreeMap;

use utoipa::ToSchema;
use utoipa::openapi::{
    self, ContentBuilder, HeaderBuilder, ObjectBuilder, Ref, RefOr, ResponseBuilder, Type,
};

use super::answer::{self, as_the_inbox_answers, passed_on, prediction_id};
use super::{Gateway, gateway, segment};
use crate::domain::Members;
use crate::http::auth::Creator;
use crate::http::error::PROBLEM_JSON;
use crate::http::predictions::{WaitPreference, wait_for_end};
use crate::http::{ApiError, AppState, base_url};
use crate::metrics;
use crate::replicate::{
    Answer, DEPLOYMENTS, MODELS, Operation, PREDICTIONS, Segment, UpstreamError, V1, VERSIONS,
};
use crate::store::Source;

/// The fields a caller may not send: the inbox wires every prediction's webhook itself.
const WIRED_BY_THE_INBOX: [&str; 3] = ["webhook", "webhook_completed", "webhook_events_filter"];
/// Every event, so that event streams get logs and output as they come.
const EVERY_EVENT: [&str; 4] = ["start", "output", "logs", "completed"];
/// Versions of a bare version id looked up under the allowed models, at most.
const LOOKUPS_MAX: usize = 20;

/// A create by version, as the platform takes it; other fields are passed on.
#[derive(ToSchema)]
#[allow(dead_code)] // describes JSON the gateway forwards, never builds
pub(super) struct CreateByVersion {
    /// A version id, `owner/name:id` or `owner/name`
    version: String,
    /// The model's input
    #[schema(value_type = Object)]
    input: Value,
    /// Whether the platform should stream the output (see `urls.stream`)
    stream: Option<bool>,
}

/// A create of a model's or a deployment's prediction, as the platform takes it; other fields
/// are passed on.
#[derive(ToSchema)]
#[allow(dead_code)] // describes JSON the gateway forwards, never builds
pub(super) struct CreateForModel {
    /// The model's input
    #[schema(value_type = Object)]
    input: Value,
    /// Whether the platform should stream the output (see `urls.stream`)
    stream: Option<bool>,
}

/// What the three create routes answer, described once.
pub(super) struct CreateAnswers;

impl utoipa::IntoResponses for CreateAnswers {
    fn responses() -> BTreeMap<String, RefOr<openapi::Response>> {
        let content = |media: &str, schema: &str| {
            (
                media.to_owned(),
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name(schema)))
                    .build(),
            )
        };
        let location = HeaderBuilder::new()
            .schema(ObjectBuilder::new().schema_type(Type::String))
            .description(Some(
                "With `Prefer: wait`: the prediction's `GET` on the inbox",
            ))
            .build();
        let (media, prediction) = content("application/json", "Prediction");
        let created = ResponseBuilder::new()
            .description("Created, and recorded: with `Prefer: wait`, as it stands when it finished or the wait ran out, an unfinished one as `starting`")
            .content(media, prediction)
            .header("Location", location)
            .build();
        let mut answers = BTreeMap::from([("201".to_owned(), created.into())]);
        for (status, description) in [
            (
                "400",
                "Not a JSON object, a field the inbox sets itself, or a malformed path segment",
            ),
            ("401", "No accepted bearer token"),
            (
                "403",
                "A read-only token, or a model not in INBOX_ALLOWED_MODELS",
            ),
            (
                "404",
                "A path segment `.` or `..`, or the platform knows no such model or deployment",
            ),
            ("413", "The body is larger than INBOX_MAX_BODY_BYTES"),
            (
                "422",
                "Refused by the platform, as any error it answers: its status and problem, passed on",
            ),
            ("429", "The platform's rate limit, with its `Retry-After`"),
            ("501", "REPLICATE_API_TOKEN is not set"),
            (
                "502",
                "The platform could not be reached, or refused the inbox's own token",
            ),
            (
                "503",
                "Too many bodies in flight, or the platform unavailable (its `Retry-After`)",
            ),
            ("504", "The platform did not answer in time"),
        ] {
            let (media, schema) = content(PROBLEM_JSON, "Problem");
            let answer = ResponseBuilder::new()
                .description(description)
                .content(media, schema)
                .build();
            answers.insert(status.to_owned(), answer.into());
        }
        answers
    }
}

/// What a create names: a version (in the body), a model, or a deployment.
enum Target<'a> {
    Version,
    Model(Segment<'a>, Segment<'a>),
    Deployment(Segment<'a>, Segment<'a>),
}

/// Creates a prediction of a version, named in the body's `version` (an id, or
/// `owner/name[:id]`).
#[utoipa::path(
    post,
    path = "/v1/predictions",
    tag = "gateway",
    security(("bearer" = [])),
    params(
        ("Prefer" = Option<String>, Header, description = "`wait` or `wait=N` (1..60): hold the answer until the prediction is terminal or N seconds pass; an unfinished one is answered as `starting`"),
        ("Cancel-After" = Option<String>, Header, description = "Passed to the platform: a deadline after which the prediction is canceled (or `aborted`, if it had not started)"),
    ),
    request_body(content = CreateByVersion, description = "As the platform takes it, without `webhook`, `webhook_completed` or `webhook_events_filter`: the inbox sets those"),
    responses(CreateAnswers),
)]
pub(super) async fn by_version(
    Creator(caller): Creator,
    State(state): State<AppState>,
    WaitPreference(wait): WaitPreference,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    create(&state, caller, Target::Version, wait, headers, body).await
}

/// Creates a prediction of a model's latest version (official models).
#[utoipa::path(
    post,
    path = "/v1/models/{owner}/{name}/predictions",
    tag = "gateway",
    security(("bearer" = [])),
    params(
        ("owner" = String, Path, pattern = "^[A-Za-z0-9._-]+$"),
        ("name" = String, Path, pattern = "^[A-Za-z0-9._-]+$"),
        ("Prefer" = Option<String>, Header, description = "As for `POST /v1/predictions`"),
        ("Cancel-After" = Option<String>, Header, description = "Passed to the platform"),
    ),
    request_body(content = CreateForModel, description = "As the platform takes it, without `webhook`, `webhook_completed` or `webhook_events_filter`: the inbox sets those"),
    responses(CreateAnswers),
)]
pub(super) async fn for_model(
    Creator(caller): Creator,
    State(state): State<AppState>,
    Path((owner, name)): Path<(String, String)>,
    WaitPreference(wait): WaitPreference,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let target = Target::Model(segment("owner", &owner)?, segment("name", &name)?);
    create(&state, caller, target, wait, headers, body).await
}

/// Creates a prediction on a deployment.
#[utoipa::path(
    post,
    path = "/v1/deployments/{owner}/{name}/predictions",
    tag = "gateway",
    security(("bearer" = [])),
    params(
        ("owner" = String, Path, pattern = "^[A-Za-z0-9._-]+$"),
        ("name" = String, Path, pattern = "^[A-Za-z0-9._-]+$"),
        ("Prefer" = Option<String>, Header, description = "As for `POST /v1/predictions`"),
        ("Cancel-After" = Option<String>, Header, description = "Passed to the platform"),
    ),
    request_body(content = CreateForModel, description = "As the platform takes it, without `webhook`, `webhook_completed` or `webhook_events_filter`: the inbox sets those"),
    responses(CreateAnswers),
)]
pub(super) async fn for_deployment(
    Creator(caller): Creator,
    State(state): State<AppState>,
    Path((owner, name)): Path<(String, String)>,
    WaitPreference(wait): WaitPreference,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let target = Target::Deployment(segment("owner", &owner)?, segment("name", &name)?);
    create(&state, caller, target, wait, headers, body).await
}

async fn create(
    state: &AppState,
    caller: usize,
    target: Target<'_>,
    wait: Option<u64>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let gateway = gateway(state)?;
    let (bytes, held) = state
        .bodies
        .read(&headers, body, state.settings.max_body_bytes)
        .await?;
    // The caller's body goes on as it came, member by member (an input's numbers and key order
    // included), with the inbox's two members added.
    let not_an_object = || ApiError::BadRequest("the body must be a JSON object".into());
    let text = std::str::from_utf8(&bytes).map_err(|_| not_an_object())?;
    let members = Members::parse(text).ok_or_else(not_an_object)?;
    if let Some(key) = WIRED_BY_THE_INBOX
        .iter()
        .find(|key| members.get(key).is_some())
    {
        metrics::create("refused");
        return Err(ApiError::BadRequest(format!(
            "`{key}` is not accepted: the inbox wires every prediction's webhook to itself, \
             with every event; read the prediction from the inbox"
        )));
    }
    let version: Option<String> = members
        .get("version")
        .and_then(|raw| serde_json::from_str(raw.get()).ok());
    if let Err(error) = check_allowed(gateway, &target, version.as_deref()).await {
        metrics::create("refused");
        return Err(error);
    }
    let mut forwarded = members.write(|_, _| None);
    forwarded.pop();
    if forwarded.len() > 1 {
        forwarded.push(',');
    }
    forwarded.push_str("\"webhook\":");
    forwarded.push_str(&Value::String(gateway.platform.webhook_url().to_owned()).to_string());
    forwarded.push_str(",\"webhook_events_filter\":");
    forwarded.push_str(&Value::from(EVERY_EVENT.to_vec()).to_string());
    forwarded.push('}');
    drop(bytes);
    let segments: Vec<Segment<'_>> = match &target {
        Target::Version => vec![V1, PREDICTIONS],
        Target::Model(owner, name) => {
            vec![V1, MODELS, owner.clone(), name.clone(), PREDICTIONS]
        }
        Target::Deployment(owner, name) => {
            vec![V1, DEPLOYMENTS, owner.clone(), name.clone(), PREDICTIONS]
        }
    };
    // Never `Prefer: wait` upstream: the inbox holds the caller, not a connection to the platform.
    let mut upstream = HeaderMap::new();
    if let Some(cancel_after) = headers.get("cancel-after") {
        upstream.insert("cancel-after", cancel_after.clone());
    }
    let body = forwarded.into_bytes();
    let calling = Instant::now();
    let answered = gateway
        .platform
        .call(
            Operation::Create,
            Method::POST,
            &segments,
            upstream,
            Some(body.into()),
        )
        .await;
    drop(held);
    let upstream = calling.elapsed();
    let answer = match answered {
        Ok(answer) if answer.status.is_success() => answer,
        Ok(answer) => {
            metrics::create("upstream_error");
            return Ok(passed_on(&answer));
        }
        Err(error) => {
            metrics::create("upstream_error");
            return Err(error.into());
        }
    };
    // From here the prediction exists and bills: the caller gets the platform's success whatever
    // happens to the inbox's own record, so that no retry of theirs creates a second one.
    let recording = Instant::now();
    let recorded = answer::record(state, Source::Create, &answer.body).await;
    metrics::create(if recorded { "created" } else { "unrecorded" });
    // What the create spent where, for callers and benchmarks (`benches/gateway.rs`): the call
    // to the platform and the local commit; the rest is the inbox's own.
    let timing = format!(
        "upstream;dur={:.3}, commit;dur={:.3}",
        upstream.as_secs_f64() * 1e3,
        recording.elapsed().as_secs_f64() * 1e3
    );
    let mut response = answered_to_the_caller(state, &answer, &headers, wait, caller).await;
    if let Ok(timing) = HeaderValue::from_str(&timing) {
        response.headers_mut().insert("server-timing", timing);
    }
    Ok(response)
}

/// What the caller of a create the platform answered with success gets: the prediction, with
/// `Prefer: wait` as it stands when it finishes or the wait runs out.
async fn answered_to_the_caller(
    state: &AppState,
    answer: &Answer,
    headers: &HeaderMap,
    wait: Option<u64>,
    caller: usize,
) -> Response {
    let base = base_url(state, headers);
    let Some(wait) = wait else {
        return match as_the_inbox_answers(&answer.body, &base, false) {
            Some((_, body)) => answer::json(answer.status, body),
            None => passed_on(answer),
        };
    };
    let Some(id) = prediction_id(&answer.body) else {
        return passed_on(answer);
    };
    // As the platform's sync mode: held until the inbox's own deliveries make it terminal or the
    // wait runs out, then the state it has.
    let (found, applied) = match wait_for_end(state, &id, wait, caller).await {
        Ok(waited) => waited,
        Err(error) => {
            tracing::warn!(%error, prediction_id = %id, "waiting on a created prediction failed; answering the create");
            (None, 0)
        }
    };
    let latest = found.map_or_else(|| answer.body.to_vec(), |found| found.body.into_bytes());
    let Some((_, body)) = as_the_inbox_answers(&latest, &base, true) else {
        return passed_on(answer);
    };
    let mut response = answer::json(answer.status, body);
    let headers = response.headers_mut();
    if let Ok(location) = HeaderValue::from_str(&format!("{base}/v1/predictions/{id}")) {
        headers.insert(header::LOCATION, location);
    }
    if let Ok(applied) = HeaderValue::from_str(&format!("wait={applied}")) {
        headers.insert("preference-applied", applied);
    }
    response
}

/// Refuses a create that `INBOX_ALLOWED_MODELS` does not allow (`version`: the body's, if a
/// string). A deployment is matched by its own
/// `owner/name`; a bare version id, by asking the platform whether it is a version of one of the
/// models the patterns name exactly (wildcards cannot be looked up under).
async fn check_allowed(
    gateway: &Gateway,
    target: &Target<'_>,
    version: Option<&str>,
) -> Result<(), ApiError> {
    let Some(allowed) = &gateway.allowed_models else {
        return Ok(());
    };
    let refused = |what: &str| {
        Err(ApiError::Forbidden(format!(
            "{what} is not among INBOX_ALLOWED_MODELS"
        )))
    };
    let version = match target {
        Target::Model(owner, name) | Target::Deployment(owner, name) => {
            return match allowed.allows(owner.as_str(), name.as_str()) {
                true => Ok(()),
                false => refused(&format!("`{}/{}`", owner.as_str(), name.as_str())),
            };
        }
        Target::Version => version.ok_or_else(|| {
            ApiError::BadRequest(
                "`version` must be a string: a version id, `owner/name` or `owner/name:id`".into(),
            )
        })?,
    };
    let model = version.split_once(':').map_or(version, |(model, _)| model);
    if let Some((owner, name)) = model.split_once('/') {
        return match allowed.allows(owner, name) {
            true => Ok(()),
            false => refused(&format!("`{owner}/{name}`")),
        };
    }
    if gateway.known_versions.contains(version) {
        return Ok(());
    }
    let Some(id) = Segment::parse(version) else {
        return refused("this version");
    };
    for (owner, name) in allowed.exact().take(LOOKUPS_MAX) {
        let (Some(owner), Some(name)) = (Segment::parse(owner), Segment::parse(name)) else {
            continue;
        };
        let path = [V1, MODELS, owner, name, VERSIONS, id.clone()];
        let answer = gateway
            .platform
            .call(
                Operation::Version,
                Method::GET,
                &path,
                HeaderMap::new(),
                None,
            )
            .await
            .map_err(|error: UpstreamError| ApiError::Upstream(error))?;
        if answer.status == StatusCode::OK {
            gateway.known_versions.insert(version);
            return Ok(());
        }
    }
    refused("this version (name it as `owner/name:id` if its model is allowed by a wildcard)")
}
