//! The few fields of a prediction object the service reads. The object itself is kept as the exact
//! bytes received; these are copies for ranking, filtering and ordering.

use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::PredictionId;
use super::text::{InvalidText, check};

/// A prediction's `status`. Values the platform may add later are kept as sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Starting,
    Processing,
    Succeeded,
    Failed,
    Canceled,
    Aborted,
    Other(String),
}

impl Status {
    /// The statuses the platform documents; anything else is kept but counted as "other".
    pub const KNOWN: [&'static str; 6] = [
        "starting",
        "processing",
        "succeeded",
        "failed",
        "canceled",
        "aborted",
    ];
    pub const UNKNOWN_RANK: i16 = 1;
    pub const TERMINAL_RANK: i16 = 2;

    pub fn parse(value: &str) -> Self {
        match value {
            "starting" => Self::Starting,
            "processing" => Self::Processing,
            "succeeded" => Self::Succeeded,
            "failed" => Self::Failed,
            "canceled" => Self::Canceled,
            "aborted" => Self::Aborted,
            other => Self::Other(other.to_owned()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Self::Starting => "starting",
            Self::Processing => "processing",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Canceled => "canceled",
            Self::Aborted => "aborted",
            Self::Other(other) => other,
        }
    }

    pub fn rank(&self) -> i16 {
        match self {
            Self::Starting => 0,
            Self::Processing | Self::Other(_) => Self::UNKNOWN_RANK,
            Self::Succeeded | Self::Failed | Self::Canceled | Self::Aborted => Self::TERMINAL_RANK,
        }
    }

    pub fn is_terminal(&self) -> bool {
        self.rank() == Self::TERMINAL_RANK
    }
}

/// What a delivery's body says about its prediction.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    pub id: PredictionId,
    /// `None` when the object has no string `status`; it is still stored (see [`Progress::new`]).
    ///
    /// [`Progress::new`]: super::Progress::new
    pub status: Option<Status>,
    pub model: Option<String>,
    pub version: Option<String>,
    /// `None` when absent or not RFC 3339 (cog's own server sends none).
    pub created_at: Option<OffsetDateTime>,
    /// Byte length of `logs`; 0 when absent.
    pub logs_len: usize,
}

/// Deepest nesting of arrays and objects accepted: serde_json's own limit (it refuses the 128th
/// level). Skipped values are not depth-checked by serde_json, and the JSON functions of Postgres
/// refuse very deep documents (bodies are stored as text, but an operator may query them as JSON).
pub const MAX_DEPTH: usize = 127;

#[derive(Debug, thiserror::Error)]
pub enum InvalidPrediction {
    #[error("the body is not UTF-8")]
    NotUtf8,
    #[error("the body is not a JSON object")]
    NotAnObject,
    #[error("the body nests arrays and objects more than {MAX_DEPTH} deep")]
    TooDeep,
    #[error("the body is not a valid prediction object: {0}")]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Field(#[from] InvalidText),
}

impl Prediction {
    /// Reads the fields of interest without building the whole document in memory. Everything else
    /// is skipped but still syntax-checked, so a body that parses here is valid JSON throughout.
    pub fn parse(body: &str) -> Result<Self, InvalidPrediction> {
        // serde would also accept a JSON array as the sequence form of a struct.
        if body.bytes().find(|b| !b.is_ascii_whitespace()) != Some(b'{') {
            return Err(InvalidPrediction::NotAnObject);
        }
        if too_deep(body.as_bytes()) {
            return Err(InvalidPrediction::TooDeep);
        }
        let fields: Fields = serde_json::from_str(body)?;
        // The fields above skip everything else without reading its numbers; a number no double
        // can hold (`1e999999`) would pass, be stored, and break whoever reads it later.
        serde_json::from_str::<Finite>(body)?;
        for (field, value) in [
            ("status", &fields.status),
            ("model", &fields.model),
            ("version", &fields.version),
        ] {
            if let Some(value) = value {
                check(field, value)?;
            }
        }
        Ok(Self {
            id: PredictionId::parse(fields.id)?,
            status: fields.status.as_deref().map(Status::parse),
            model: fields.model,
            version: fields.version,
            created_at: fields
                .created_at
                .and_then(|text| OffsetDateTime::parse(&text, &Rfc3339).ok()),
            logs_len: fields.logs.map_or(0, |logs| logs.len()),
        })
    }
}

/// Whether brackets outside strings nest deeper than `MAX_DEPTH`; a cheap pass before parsing.
fn too_deep(body: &[u8]) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &byte in body {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// Any JSON value whose numbers are all finite doubles (or integers): checked, nothing kept.
struct Finite;

impl<'de> Deserialize<'de> for Finite {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> de::Visitor<'de> for Visitor {
            type Value = Finite;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON value with finite numbers")
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Finite, E> {
                Ok(Finite)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Finite, E> {
                Ok(Finite)
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Finite, E> {
                Ok(Finite)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Finite, E> {
                Ok(Finite)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Finite, E> {
                Ok(Finite)
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Finite, E> {
                if v.is_finite() {
                    Ok(Finite)
                } else {
                    Err(E::custom("a number is out of range"))
                }
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Finite, A::Error> {
                while seq.next_element::<Finite>()?.is_some() {}
                Ok(Finite)
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Finite, A::Error> {
                while map.next_entry::<IgnoredAny, Finite>()?.is_some() {}
                Ok(Finite)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// Lenient where the platform's own examples are: a field of another type than expected is
/// ignored rather than fatal, except `id`, without which the object means nothing.
#[derive(Deserialize)]
struct Fields {
    id: String,
    #[serde(default, deserialize_with = "string_or_ignore")]
    status: Option<String>,
    #[serde(default, deserialize_with = "string_or_ignore")]
    model: Option<String>,
    #[serde(default, deserialize_with = "string_or_ignore")]
    version: Option<String>,
    #[serde(default, deserialize_with = "string_or_ignore")]
    created_at: Option<String>,
    #[serde(default, deserialize_with = "string_or_ignore")]
    logs: Option<String>,
}

fn string_or_ignore<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<String>, D::Error> {
    struct Visitor;
    impl<'de> de::Visitor<'de> for Visitor {
        type Value = Option<String>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("any JSON value")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Some(v.to_owned()))
        }
        fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
            Ok(Some(v))
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok(None)
        }
        fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            Ok(None)
        }
    }
    deserializer.deserialize_any(Visitor)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUCCEEDED: &str = include_str!("../../tests/fixtures/04-succeeded.json");

    #[test]
    fn reads_a_fixture() {
        let p = Prediction::parse(SUCCEEDED).unwrap();
        assert_eq!(p.id.as_str(), "gm3qorzdhgbfurvjtvhg6dckhu");
        assert_eq!(p.status, Some(Status::Succeeded));
        assert_eq!(p.model.as_deref(), Some("replicate/hello-world"));
        assert_eq!(
            p.logs_len,
            "Using seed: 1234\n100%|##########| 50/50\n".len()
        );
        assert_eq!(p.created_at.unwrap().unix_timestamp(), 1694189974);
    }

    #[test]
    fn is_lenient_about_everything_but_the_id() {
        let p = Prediction::parse(r#"{"id":"x","status":"successful","model":7,"logs":null,"created_at":"yesterday","extra":{"a":[1,2]}}"#).unwrap();
        assert_eq!(p.status, Some(Status::Other("successful".into())));
        assert_eq!((p.model, p.created_at, p.logs_len), (None, None, 0));
        assert_eq!(Prediction::parse(r#"{"id":"x"}"#).unwrap().status, None);
    }

    #[test]
    fn rejects_what_is_not_a_prediction() {
        for body in [
            "[\"id\"]",
            "\"id\"",
            "",
            "{\"id\":1}",
            "{\"status\":\"starting\"}",
            "{\"id\":\"\"}",
            "{\"id\":\"a\\u0000\"}",
            "{\"id\":\"x\",\"status\":\"a\\u0000\"}",
            "{\"id\":\"x\"} trailing",
            "{\"id\":\"x\",\"id\":\"y\"}",
        ] {
            assert!(Prediction::parse(body).is_err(), "{body}");
        }
        let nested = |depth: usize| {
            format!(
                "{{\"id\":\"x\",\"a\":{}{}}}",
                "[".repeat(depth),
                "]".repeat(depth)
            )
        };
        assert!(matches!(
            Prediction::parse(nested(100_000).as_str()),
            Err(InvalidPrediction::TooDeep)
        ));
        assert!(matches!(
            Prediction::parse(nested(MAX_DEPTH).as_str()),
            Err(InvalidPrediction::TooDeep)
        ));
        assert!(Prediction::parse(nested(MAX_DEPTH - 1).as_str()).is_ok());
        // Brackets inside strings, escaped quotes included, do not count.
        let in_string = format!("{{\"id\":\"x\",\"logs\":\"\\\"{}\"}}", "[".repeat(1000));
        assert!(Prediction::parse(&in_string).is_ok());
    }
}
