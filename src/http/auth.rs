//! Bearer tokens: `INBOX_API_TOKENS` read; `INBOX_CREATE_TOKENS` read, and also create and cancel
//! predictions through the gateway, which spends the account's money and rate limit.

use std::fmt;

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};

use super::{ApiError, AppState};
use crate::waiters::Caller;

/// The accepted tokens, held as SHA-256 digests: comparing digests in constant time leaks neither
/// a token's bytes nor its length, and the tokens themselves are not kept in memory. The first
/// `readers` only read; the rest may also create.
#[derive(Clone)]
pub struct ApiTokens {
    digests: Vec<[u8; 32]>,
    readers: usize,
}

impl fmt::Debug for ApiTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiTokens({} tokens, <redacted>)", self.digests.len())
    }
}

impl ApiTokens {
    pub fn new<'a>(
        readers: impl IntoIterator<Item = &'a str>,
        creators: impl IntoIterator<Item = &'a str>,
    ) -> Self {
        let mut digests: Vec<_> = readers.into_iter().map(digest).collect();
        let readers = digests.len();
        digests.extend(creators.into_iter().map(digest));
        Self { digests, readers }
    }

    /// Which of the tokens `token` is, if any; every one is compared, in constant time.
    pub fn find(&self, token: &str) -> Option<usize> {
        let candidate = digest(token);
        let mut found = u32::MAX;
        for (i, known) in self.digests.iter().enumerate() {
            let i = u32::try_from(i).unwrap_or(u32::MAX);
            found.conditional_assign(&i, known.ct_eq(&candidate));
        }
        (found != u32::MAX).then_some(found as usize)
    }

    /// Whether the token found at `index` may create and cancel.
    pub fn may_create(&self, index: usize) -> bool {
        index >= self.readers
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Extracting this proves the request carried an accepted `Authorization: Bearer` token; it holds
/// which one, to tell callers apart.
pub struct Authenticated(pub Caller);

/// Extracting this proves the request carried a token that may create (`INBOX_CREATE_TOKENS`).
pub struct Creator(pub Caller);

impl FromRequestParts<AppState> for Creator {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Authenticated(caller) = Authenticated::from_request_parts(parts, state).await?;
        if state.settings.tokens.may_create(caller) {
            Ok(Self(caller))
        } else {
            Err(ApiError::Forbidden(
                "this token may only read; creating and cancelling take one of INBOX_CREATE_TOKENS"
                    .into(),
            ))
        }
    }
}

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
        state
            .settings
            .tokens
            .find(token)
            .map(Self)
            .ok_or(ApiError::Unauthorized("the token is not accepted"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_exactly_the_configured_tokens() {
        let tokens = ApiTokens::new(["alpha"], ["beta"]);
        assert_eq!(
            (tokens.find("alpha"), tokens.find("beta")),
            (Some(0), Some(1))
        );
        assert!(!tokens.may_create(0) && tokens.may_create(1));
        for wrong in ["", "alph", "alphaa", "Alpha", "gamma"] {
            assert_eq!(tokens.find(wrong), None, "{wrong}");
        }
        assert!(!format!("{tokens:?}").contains("alpha"));
    }
}
