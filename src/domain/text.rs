//! Identifiers that arrive from outside and end up as database keys.

use std::fmt;

/// Longest identifier, or value of an indexed column, the service keeps. Replicate's ids are 26
/// characters; anything near this bound is garbage, and refusing it keeps index entries small.
const MAX_LEN: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{field}` {reason}")]
pub struct InvalidText {
    pub field: &'static str,
    pub reason: &'static str,
}

/// Checks text that will be a key: not empty, and holdable (see [`holdable`]).
fn check(field: &'static str, value: &str) -> Result<(), InvalidText> {
    let reason = if value.is_empty() {
        "is empty"
    } else if value.len() > MAX_LEN {
        "is longer than 1024 bytes"
    } else if !nul_free(value) {
        "contains a NUL character"
    } else {
        return Ok(());
    };
    Err(InvalidText { field, reason })
}

/// Whether an indexed column can hold `value` as it is: Postgres text cannot hold NUL, and a
/// b-tree entry has a size limit. A value that cannot be held is stored as NULL there, never cut
/// to a prefix, which would make an exact filter match what was never sent.
pub fn holdable(value: &str) -> bool {
    value.len() <= MAX_LEN && nul_free(value)
}

/// Whether Postgres text can hold `value`: it cannot hold NUL, so no stored value has one.
pub fn nul_free(value: &str) -> bool {
    !value.contains('\0')
}

macro_rules! identifier {
    ($(#[$doc:meta])* $name:ident, $field:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            pub fn parse(value: impl Into<String>) -> Result<Self, InvalidText> {
                let value = value.into();
                check($field, &value)?;
                Ok(Self(value))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// Whether `value` could be one: a read for anything else can only miss.
            pub fn is_valid(value: &str) -> bool {
                check($field, value).is_ok()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

identifier!(
    /// The platform's id of a prediction (the `id` field of the object).
    PredictionId,
    "id"
);
identifier!(
    /// The `webhook-id` header: unique per message, identical on retries of that message.
    WebhookId,
    "webhook-id"
);

impl WebhookId {
    /// The id of a delivery the service makes itself, from short text it wrote without a NUL:
    /// valid by construction.
    pub fn made(value: String) -> Self {
        debug_assert!(check("webhook-id", &value).is_ok());
        Self(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_reject_what_cannot_be_a_key() {
        assert!(PredictionId::parse("gm3qorzdhgbfurvjtvhg6dckhu").is_ok());
        assert_eq!(PredictionId::parse("").unwrap_err().reason, "is empty");
        assert_eq!(
            PredictionId::parse("a\0b").unwrap_err().reason,
            "contains a NUL character"
        );
        assert!(WebhookId::parse("x".repeat(MAX_LEN)).is_ok());
        assert!(WebhookId::parse("x".repeat(MAX_LEN + 1)).is_err());
    }
}
