//! `GET /openapi.json`: the OpenAPI 3.1 description of every route, generated from the handlers'
//! own annotations as the routes are registered, so the two cannot drift apart.

use axum::extract::State;
use axum::response::Response;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "prediction-inbox",
        description = "Receives Replicate's signed prediction webhooks, keeps each prediction's latest state, and serves it back shaped like Replicate's own `GET /v1/predictions[/{id}]`. Every error is `application/problem+json` (RFC 9457).",
    ),
    modifiers(&BearerTokens),
    tags(
        (name = "deliveries", description = "What the platform sends"),
        (name = "predictions", description = "Reading latest states"),
        (name = "gateway", description = "Creating and cancelling through the inbox, which holds the account's token and wires each prediction's webhook to itself (on when REPLICATE_API_TOKEN is set; tokens of INBOX_CREATE_TOKENS)"),
        (name = "operations", description = "Probes, metrics and this description"),
    ),
)]
struct ApiDoc;

/// `Authorization: Bearer <token>`, one of `INBOX_API_TOKENS` (read) or `INBOX_CREATE_TOKENS`
/// (read, create and cancel).
struct BearerTokens;

impl Modify for BearerTokens {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let scheme = HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build();
        components.add_security_scheme("bearer", SecurityScheme::Http(scheme));
    }
}

/// `openapi` as the description to serve, rendered once when the router is built.
pub fn render(openapi: &utoipa::openapi::OpenApi) -> String {
    // Serialising a document of plain strings and maps cannot fail; an empty object is the
    // answer if it ever did.
    openapi.to_json().unwrap_or_else(|_| "{}".into())
}

/// The router every other one merges into; its document is the one served.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi()).routes(routes!(describe))
}

/// This description.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 description of this service", body = Object,
        content_type = "application/json")))]
async fn describe(State(state): State<AppState>) -> Response {
    super::typed("application/json", state.description.clone())
}
