//! With the gateway on, what readers get names the inbox: a prediction's `urls.get` and
//! `urls.cancel` point at the inbox's routes, so that a client following them carries its inbox
//! token to the inbox and never to the platform. Only these two links differ from what the
//! platform sent (the contract's "where reads may differ").

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use super::answer::as_the_inbox_answers;
use crate::http::{AppState, base_url};

/// The base a reader reached the inbox at, when the gateway is on.
pub(in crate::http) struct InboxLinks(Option<String>);

impl FromRequestParts<AppState> for InboxLinks {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        Ok(Self(
            state
                .gateway
                .is_some()
                .then(|| base_url(state, &parts.headers)),
        ))
    }
}

impl InboxLinks {
    /// `body` as readers get it: unchanged unless the gateway is on and it names the platform's
    /// predictions route.
    pub(in crate::http) fn apply(&self, state: &AppState, body: String) -> String {
        let (Some(base), Some(gateway)) = (&self.0, &state.gateway) else {
            return body;
        };
        if !body.contains(gateway.platform.predictions_url()) {
            return body;
        }
        as_the_inbox_answers(body.as_bytes(), base, false)
            .and_then(|(_, rewritten)| String::from_utf8(rewritten).ok())
            .unwrap_or(body)
    }
}
