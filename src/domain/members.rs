//! A JSON object's members as they came: in order, duplicates kept, each value its raw text. What
//! lets the service change one member of a prediction object (a link, a status, an output) and
//! leave every other byte as the platform sent it.

use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

pub struct Members<'a>(Vec<(String, &'a RawValue)>);

impl<'a> Members<'a> {
    /// `None` if `text` is not a JSON object.
    pub fn parse(text: &'a str) -> Option<Self> {
        serde_json::from_str(text).ok()
    }

    /// The last member named `key`, as a JSON reader takes it.
    pub fn get(&self, key: &str) -> Option<&'a RawValue> {
        self.0.iter().rev().find(|(k, _)| k == key).map(|(_, v)| *v)
    }

    /// The object again, each member's value as `replace` gives it (`None`: as it came).
    pub fn write(&self, mut replace: impl FnMut(&str, &RawValue) -> Option<String>) -> String {
        let size: usize = self
            .0
            .iter()
            .map(|(k, v)| k.len() + v.get().len() + 4)
            .sum();
        let mut out = String::with_capacity(size + 64);
        out.push('{');
        for (i, (key, raw)) in self.0.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            // A string always serialises.
            out.push_str(&serde_json::to_string(key).unwrap_or_default());
            out.push(':');
            match replace(key, raw) {
                Some(value) => out.push_str(&value),
                None => out.push_str(raw.get()),
            }
        }
        out.push('}');
        out
    }
}

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Each;
        impl<'de> Visitor<'de> for Each {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members<'de>, A::Error> {
                let mut members = Vec::new();
                while let Some(member) = map.next_entry::<String, &'de RawValue>()? {
                    members.push(member);
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(Each)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_are_written_back_as_they_came_but_for_the_replaced() {
        let odd =
            r#"{"z":1,"id":"p2","n":123456789012345678901234567890,"a":{"b" : [1, 2]},"z":2}"#;
        let members = Members::parse(odd).unwrap();
        assert_eq!(members.write(|_, _| None), odd);
        assert_eq!(members.get("z").unwrap().get(), "2");
        let replaced = members.write(|key, _| (key == "z").then(|| "null".to_owned()));
        assert_eq!(
            replaced,
            r#"{"z":null,"id":"p2","n":123456789012345678901234567890,"a":{"b" : [1, 2]},"z":null}"#
        );
        assert!(Members::parse("[1]").is_none());
    }
}
