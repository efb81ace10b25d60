//! With the gateway on, what readers get names the inbox: a prediction's `urls.get` and
//! `urls.cancel` point at the inbox's routes, so that a client following them carries its inbox
//! token to the inbox and never to the platform.

use super::answer::as_the_inbox_answers;
use crate::http::AppState;

/// `body` as readers who reached the inbox at `base` get it: unchanged unless the gateway is on
/// and it names the platform's predictions route.
pub(in crate::http) fn name_the_inbox(state: &AppState, base: &str, body: String) -> String {
    let Some(gateway) = &state.gateway else {
        return body;
    };
    if !body.contains(gateway.platform.predictions_url()) {
        return body;
    }
    as_the_inbox_answers(body.as_bytes(), base, false)
        .and_then(|(_, rewritten)| String::from_utf8(rewritten).ok())
        .unwrap_or(body)
}
