//! The gateway: internal services create, cancel and read predictions through the inbox with the
//! official clients, changing only their base URL and using an inbox token. The inbox holds the
//! account's token, wires every prediction's webhook to itself, records what the platform
//! answers at once, and answers `Prefer: wait` from its own deliveries.
//!
//! One file a concern: `create.rs` (the three create routes, and `Prefer: wait` on them),
//! `cancel.rs`, `relay.rs` (the version lookup and file uploads the clients make, passed
//! through), `answer.rs` (what the platform's answers become: recorded, and rewritten to name the
//! inbox), `models.rs` (`INBOX_ALLOWED_MODELS`). The client of the platform is `crate::replicate`.

mod answer;
mod cancel;
mod create;
mod links;
mod models;
mod relay;

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{ApiError, AppState, Settings, timeout};
use crate::replicate::{Platform, Segment};

pub use models::AllowedModels;

pub(super) use links::name_the_inbox;

/// What the gateway works with, when `REPLICATE_API_TOKEN` is set.
pub struct Gateway {
    pub platform: Platform,
    pub allowed_models: Option<AllowedModels>,
    known_versions: models::KnownVersions,
}

impl Gateway {
    pub fn new(platform: Platform, allowed_models: Option<AllowedModels>) -> Self {
        Self {
            platform,
            allowed_models,
            known_versions: models::KnownVersions::default(),
        }
    }
}

pub fn router(settings: &Settings) -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(
            OpenApiRouter::new()
                .routes(routes!(cancel::cancel))
                .routes(routes!(relay::version))
                .routes(routes!(relay::upload))
                .layer(timeout(settings.request_timeout)),
        )
        // Bound themselves: a create with `Prefer: wait` outlasts an ordinary request.
        .routes(routes!(create::by_version))
        .routes(routes!(create::for_model))
        .routes(routes!(create::for_deployment))
}

/// The gateway, or 501 naming the setting that turns it on.
fn gateway(state: &AppState) -> Result<&Gateway, ApiError> {
    state.gateway.as_ref().ok_or(ApiError::NotConfigured(
        "creating through the inbox is off: set REPLICATE_API_TOKEN (and INBOX_WEBHOOK_URL)",
    ))
}

/// A path parameter that is forwarded to the platform, checked as a [`Segment`]: `400` for one
/// with other characters (the routes' descriptions give the pattern, `^[A-Za-z0-9._-]+$`),
/// `404` for `.` and `..`, which name nothing of the platform's.
fn segment<'a>(name: &str, value: &'a str) -> Result<Segment<'a>, ApiError> {
    if let Some(segment) = Segment::parse(value) {
        return Ok(segment);
    }
    if value == "." || value == ".." {
        return Err(ApiError::NotFound(format!("no {name} is called `{value}`")));
    }
    Err(ApiError::BadRequest(format!(
        "`{name}` must be letters, digits, `.`, `_` or `-`"
    )))
}
