//! `POST /v1/predictions/{id}/cancel`: forwarded for a prediction the inbox knows, and the answer
//! recorded like a delivery.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method};
use axum::response::Response;

use super::answer::{self, as_the_inbox_answers, passed_on};
use super::{gateway, segment};
use crate::http::auth::Creator;
use crate::http::error::{PROBLEM_JSON, Problem};
use crate::http::predictions::PredictionObject;
use crate::http::{ApiError, AppState, base_url};
use crate::replicate::{CANCEL, Operation, PREDICTIONS, V1};
use crate::store::Source;

/// Cancels a prediction the inbox has received or created.
#[utoipa::path(
    post,
    path = "/v1/predictions/{id}/cancel",
    tag = "gateway",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The prediction's id")),
    responses(
        (status = 200, description = "The prediction as the platform answered the cancel", body = PredictionObject),
        (status = 401, description = "No accepted bearer token", body = Problem, content_type = PROBLEM_JSON),
        (status = 403, description = "A read-only token", body = Problem, content_type = PROBLEM_JSON),
        (status = 404, description = "The inbox knows no such prediction", body = Problem, content_type = PROBLEM_JSON),
        (status = 501, description = "REPLICATE_API_TOKEN is not set", body = Problem, content_type = PROBLEM_JSON),
        (status = 502, description = "The platform could not be reached, or refused the inbox's own token", body = Problem, content_type = PROBLEM_JSON),
        (status = 504, description = "The platform did not answer in time", body = Problem, content_type = PROBLEM_JSON),
    ),
)]
pub(super) async fn cancel(
    Creator(_): Creator,
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let gateway = gateway(&state)?;
    let unknown = || ApiError::NotFound("the inbox knows no prediction with this id".into());
    let Ok(segment) = segment("id", &id) else {
        return Err(unknown());
    };
    if state.store.finished(&id).await?.is_none() {
        return Err(unknown());
    }
    let path = [V1, PREDICTIONS, segment, CANCEL];
    let answer = gateway
        .platform
        .call(
            Operation::Cancel,
            Method::POST,
            &path,
            HeaderMap::new(),
            None,
        )
        .await?;
    if !answer.status.is_success() {
        return Ok(passed_on(&answer));
    }
    answer::record(&state, Source::Cancel, &answer.body).await;
    Ok(
        match as_the_inbox_answers(&answer.body, &base_url(&state, &headers), false) {
            Some((_, body)) => answer::json(answer.status, body),
            None => passed_on(&answer),
        },
    )
}
