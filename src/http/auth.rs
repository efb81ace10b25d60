//! Bearer tokens for the read API.

use std::fmt;

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{ApiError, AppState};

/// The accepted tokens, held as SHA-256 digests: comparing digests in constant time leaks neither
/// a token's bytes nor its length, and the tokens themselves are not kept in memory.
#[derive(Clone)]
pub struct ApiTokens(Vec<[u8; 32]>);

impl fmt::Debug for ApiTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiTokens({} tokens, <redacted>)", self.0.len())
    }
}

impl ApiTokens {
    pub fn new<'a>(tokens: impl IntoIterator<Item = &'a str>) -> Self {
        Self(tokens.into_iter().map(digest).collect())
    }

    pub fn accepts(&self, token: &str) -> bool {
        let candidate = digest(token);
        let matched = self
            .0
            .iter()
            .fold(subtle::Choice::from(0), |matched, known| {
                matched | known.ct_eq(&candidate)
            });
        matched.into()
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Extracting this proves the request carried an accepted `Authorization: Bearer` token.
pub struct Authenticated;

impl FromRequestParts<AppState> for Authenticated {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let value = parts
            .headers
            .get(AUTHORIZATION)
            .ok_or(ApiError::Unauthorized(
                "send `Authorization: Bearer <token>`",
            ))?;
        let token = value
            .to_str()
            .ok()
            .and_then(|value| value.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .ok_or(ApiError::Unauthorized(
                "`Authorization` must be `Bearer <token>`",
            ))?;
        if state.tokens.accepts(token) {
            Ok(Self)
        } else {
            Err(ApiError::Unauthorized("the token is not accepted"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_exactly_the_configured_tokens() {
        let tokens = ApiTokens::new(["alpha", "beta"]);
        assert!(tokens.accepts("alpha") && tokens.accepts("beta"));
        for wrong in ["", "alph", "alphaa", "Alpha", "gamma"] {
            assert!(!tokens.accepts(wrong), "{wrong}");
        }
        assert!(!format!("{tokens:?}").contains("alpha"));
    }
}
