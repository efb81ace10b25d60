//! The few fields of a prediction object the service reads. The object itself is kept as the exact
//! bytes received; these are copies for ranking, filtering and ordering.

use std::borrow::Cow;
use std::marker::PhantomData;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny};
use serde_json::value::RawValue;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::PredictionId;
use super::text::InvalidText;

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
    /// The statuses the platform documents, in the order of the variants above: the one place
    /// their names are written. Anything else is kept but counted as "other".
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
        match Self::KNOWN.iter().position(|known| *known == value) {
            Some(0) => Self::Starting,
            Some(1) => Self::Processing,
            Some(2) => Self::Succeeded,
            Some(3) => Self::Failed,
            Some(4) => Self::Canceled,
            Some(5) => Self::Aborted,
            _ => Self::Other(value.to_owned()),
        }
    }

    pub fn as_str(&self) -> &str {
        let known = match self {
            Self::Starting => 0,
            Self::Processing => 1,
            Self::Succeeded => 2,
            Self::Failed => 3,
            Self::Canceled => 4,
            Self::Aborted => 5,
            Self::Other(other) => return other,
        };
        Self::KNOWN[known]
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

    /// The names of the terminal statuses.
    pub fn terminal_names() -> Vec<&'static str> {
        Self::KNOWN
            .into_iter()
            .filter(|name| Self::parse(name).is_terminal())
            .collect()
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
    /// As sent, whatever it holds; see [`holdable`] for what an indexed column keeps of it.
    ///
    /// [`holdable`]: super::holdable
    pub model: Option<String>,
    pub version: Option<String>,
    /// `None` when absent or not RFC 3339 (cog's own server sends none).
    pub created_at: Option<OffsetDateTime>,
    /// Byte length of `logs`; 0 when absent or not a string.
    pub logs_len: usize,
    /// Byte length of `output`'s JSON text exactly as received; 0 when absent.
    pub output_len: usize,
}

/// Deepest nesting of arrays and objects accepted, the object itself counting as one: serde_json's
/// own limit (it refuses the 128th level), which the JSON functions of Postgres are well within.
pub const MAX_DEPTH: usize = 127;

#[derive(Debug, thiserror::Error)]
pub enum InvalidPrediction {
    #[error("the body is not UTF-8")]
    NotUtf8,
    #[error("the body is not a JSON object")]
    NotAnObject,
    #[error("the body nests arrays and objects {} deep or more", MAX_DEPTH + 1)]
    TooDeep,
    #[error("the body is not a valid prediction object: {0}")]
    Json(serde_json::Error),
    #[error(transparent)]
    Field(#[from] InvalidText),
}

impl From<serde_json::Error> for InvalidPrediction {
    fn from(error: serde_json::Error) -> Self {
        // serde_json says so only in its message; the depth check below says it the same way.
        if error.to_string().starts_with(RECURSION_LIMIT) {
            Self::TooDeep
        } else {
            Self::Json(error)
        }
    }
}

/// serde_json's message for nesting past its limit, which `Checked` uses too.
const RECURSION_LIMIT: &str = "recursion limit exceeded";

impl Prediction {
    /// Reads the fields of interest in one pass, without building the document in memory. Every
    /// other value is still checked (syntax, nesting, numbers a double can hold), so a body that
    /// parses here is valid JSON throughout. A key given twice counts as its last value, as in
    /// most JSON parsers (and Postgres' `json` operators).
    pub fn parse(body: &str) -> Result<Self, InvalidPrediction> {
        // serde would also accept a JSON array as the sequence form of a struct.
        if body.bytes().find(|b| !b.is_ascii_whitespace()) != Some(b'{') {
            return Err(InvalidPrediction::NotAnObject);
        }
        let mut deserializer = serde_json::Deserializer::from_str(body);
        let fields = Fields::deserialize(&mut deserializer)?;
        deserializer.end()?;
        let id = fields.id.ok_or_else(|| {
            InvalidPrediction::Json(de::Error::custom("`id` is missing or not a string"))
        })?;
        Ok(Self {
            id: PredictionId::parse(id)?,
            status: fields.status.as_deref().map(Status::parse),
            model: fields.model,
            version: fields.version,
            created_at: fields
                .created_at
                .and_then(|text| OffsetDateTime::parse(&text, &Rfc3339).ok()),
            logs_len: fields.logs_len,
            output_len: fields.output_len,
        })
    }
}

/// The fields read, each the last value given for its key.
#[derive(Default)]
struct Fields {
    id: Option<String>,
    status: Option<String>,
    model: Option<String>,
    version: Option<String>,
    created_at: Option<String>,
    logs_len: usize,
    output_len: usize,
}

impl<'de> Deserialize<'de> for Fields {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> de::Visitor<'de> for Visitor {
            type Value = Fields;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a prediction object")
            }

            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Fields, A::Error> {
                let mut fields = Fields::default();
                // Values in this object are one level down.
                let inside = Checked { depth: 1 };
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    match key.as_ref() {
                        "id" => fields.id = map.next_value_seed(Text::at(inside))?,
                        "status" => fields.status = map.next_value_seed(Text::at(inside))?,
                        "model" => fields.model = map.next_value_seed(Text::at(inside))?,
                        "version" => fields.version = map.next_value_seed(Text::at(inside))?,
                        "created_at" => {
                            fields.created_at = map.next_value_seed(Text::at(inside))?
                        }
                        "logs" => {
                            let logs: Option<Cow<'de, str>> =
                                map.next_value_seed(Text::at(inside))?;
                            fields.logs_len = logs.map_or(0, |logs| logs.len());
                        }
                        "output" => {
                            // Its exact text, to measure; then checked like any other value.
                            let raw: &'de RawValue = map.next_value()?;
                            inside
                                .deserialize(&mut serde_json::Deserializer::from_str(raw.get()))
                                .map_err(de::Error::custom)?;
                            fields.output_len = raw.get().len();
                        }
                        _ => map.next_value_seed(inside)?,
                    }
                }
                Ok(fields)
            }
        }
        deserializer.deserialize_map(Visitor)
    }
}

/// A string value, or `None` for a value of any other type (checked like any value): the service
/// is lenient where the platform's own examples are.
struct Text<T>(Checked, PhantomData<fn() -> T>);

impl<T> Text<T> {
    fn at(depth: Checked) -> Self {
        Self(depth, PhantomData)
    }
}

impl<'de, T: From<&'de str> + From<String>> DeserializeSeed<'de> for Text<T> {
    type Value = Option<T>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Option<T>, D::Error> {
        struct Visitor<T>(Checked, PhantomData<fn() -> T>);
        impl<'de, T: From<&'de str> + From<String>> de::Visitor<'de> for Visitor<T> {
            type Value = Option<T>;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Some(T::from(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Some(T::from(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Some(T::from(v)))
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
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                finite(v).map(|()| None)
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                self.0.nested()?.check_seq(seq).map(|()| None)
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                self.0.nested()?.check_map(map).map(|()| None)
            }
        }
        deserializer.deserialize_any(Visitor(self.0, PhantomData))
    }
}

/// Any JSON value at `depth` whose numbers are all finite doubles (or integers) and which nests no
/// deeper than `MAX_DEPTH`: checked, nothing kept. A number no double can hold (`1e999999`) would
/// otherwise be stored, and break whoever reads it later.
#[derive(Clone, Copy)]
struct Checked {
    depth: usize,
}

impl Checked {
    /// One level further down, into an array or object.
    fn nested<E: de::Error>(self) -> Result<Self, E> {
        let depth = self.depth + 1;
        if depth > MAX_DEPTH {
            return Err(E::custom(RECURSION_LIMIT));
        }
        Ok(Self { depth })
    }

    fn check_seq<'de, A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(self)?.is_some() {}
        Ok(())
    }

    fn check_map<'de, A: de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while map.next_key::<IgnoredAny>()?.is_some() {
            map.next_value_seed(self)?;
        }
        Ok(())
    }
}

fn finite<E: de::Error>(value: f64) -> Result<(), E> {
    if value.is_finite() {
        Ok(())
    } else {
        Err(E::custom("a number is out of range"))
    }
}

impl<'de> DeserializeSeed<'de> for Checked {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> de::Visitor<'de> for Checked {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value with finite numbers")
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        finite(v)
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, seq: A) -> Result<(), A::Error> {
        self.nested()?.check_seq(seq)
    }
    fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        self.nested()?.check_map(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUCCEEDED: &str = include_str!("../../tests/fixtures/04-succeeded.json");

    #[test]
    fn each_documented_status_reads_back_as_its_name_and_others_are_kept() {
        for name in Status::KNOWN {
            let status = Status::parse(name);
            assert!(!matches!(status, Status::Other(_)), "{name}");
            assert_eq!(status.as_str(), name);
        }
        let ranks: Vec<i16> = Status::KNOWN
            .map(|name| Status::parse(name).rank())
            .to_vec();
        assert_eq!(ranks, [0, 1, 2, 2, 2, 2]);
        assert_eq!(Status::parse("queued"), Status::Other("queued".into()));
        assert_eq!(Status::parse("queued").as_str(), "queued");
    }

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
        let output = "[\n    \"https://replicate.delivery/pbxt/abc/out-0.png\",\n    \"https://replicate.delivery/pbxt/abc/out-1.png\"\n  ]";
        assert_eq!(p.output_len, output.len());
    }

    #[test]
    fn is_lenient_about_everything_but_the_id() {
        let p = Prediction::parse(r#"{"id":"x","status":"successful","model":7,"logs":null,"created_at":"yesterday","extra":{"a":[1,2]}}"#).unwrap();
        assert_eq!(p.status, Some(Status::Other("successful".into())));
        assert_eq!((p.model, p.created_at, p.logs_len), (None, None, 0));
        let bare = Prediction::parse(r#"{"id":"x"}"#).unwrap();
        assert_eq!((bare.status, bare.output_len), (None, 0));
    }

    #[test]
    fn output_is_measured_as_received() {
        let p =
            Prediction::parse(r#"{"id":"x", "output" :  [ "a",  {"b": 1.50} ] , "logs":"\u00e9"}"#)
                .unwrap();
        assert_eq!(p.output_len, r#"[ "a",  {"b": 1.50} ]"#.len());
        // Logs count in bytes of the decoded text.
        assert_eq!(p.logs_len, 2);
        assert_eq!(
            Prediction::parse(r#"{"id":"x","output":null}"#)
                .unwrap()
                .output_len,
            4
        );
    }

    #[test]
    fn a_key_given_twice_counts_as_its_last_value() {
        let p = Prediction::parse(
            r#"{"id":"x","status":"starting","id":"y","status":"succeeded","output":1,"output":"long"}"#,
        )
        .unwrap();
        assert_eq!(p.id.as_str(), "y");
        assert_eq!(p.status, Some(Status::Succeeded));
        assert_eq!(p.output_len, 6);
        // The last `id` is the one that must be usable.
        assert!(Prediction::parse(r#"{"id":"x","id":1}"#).is_err());
        assert!(Prediction::parse(r#"{"id":1,"id":"x"}"#).is_ok());
    }

    #[test]
    fn odd_values_of_the_indexed_fields_are_kept_as_sent() {
        let long = "m".repeat(5000);
        let body = format!(r#"{{"id":"x","status":"","model":"{long}","version":"a\u0000b"}}"#);
        let p = Prediction::parse(&body).unwrap();
        assert_eq!(p.status, Some(Status::Other(String::new())));
        assert_eq!(p.model.as_deref(), Some(long.as_str()));
        assert_eq!(p.version.as_deref(), Some("a\0b"));
        let nul = Prediction::parse(r#"{"id":"x","status":"succeeded\u0000"}"#).unwrap();
        assert_eq!(nul.status.map(|s| s.rank()), Some(Status::UNKNOWN_RANK));
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
            "{\"id\":\"x\"} trailing",
            "{\"id\":\"x\",\"a\":1e999}",
            "{\"id\":\"x\",\"status\":-1e999}",
            "{\"id\":\"x\",\"output\":[1,2,1e400]}",
            "{\"id\":\"x\",\"output\":[1,2,}",
            "{\"id\":\"x\",\"logs\":NaN}",
        ] {
            assert!(Prediction::parse(body).is_err(), "{body}");
        }
    }

    #[test]
    fn nesting_is_limited_wherever_it_is() {
        // `depth` levels in all, the object itself counting as one.
        let nested = |field: &str, depth: usize| {
            format!(
                "{{\"id\":\"x\",\"{field}\":{}{}}}",
                "[".repeat(depth - 1),
                "]".repeat(depth - 1)
            )
        };
        for field in ["a", "output", "status", "logs"] {
            for depth in [MAX_DEPTH + 1, 100_000] {
                assert!(
                    matches!(
                        Prediction::parse(&nested(field, depth)),
                        Err(InvalidPrediction::TooDeep)
                    ),
                    "{field} at {depth}"
                );
            }
            assert!(
                Prediction::parse(&nested(field, MAX_DEPTH)).is_ok(),
                "{field}"
            );
        }
        // Brackets inside strings, escaped quotes included, do not count.
        let in_string = format!("{{\"id\":\"x\",\"logs\":\"\\\"{}\"}}", "[".repeat(1000));
        assert!(Prediction::parse(&in_string).is_ok());
    }
}
