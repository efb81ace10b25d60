//! `INBOX_ALLOWED_MODELS`: which models may be created through the gateway.

use std::collections::HashSet;
use std::sync::{Mutex, PoisonError};

/// `owner/name` patterns, comma separated; `*` for a whole part matches any (`owner/*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedModels(Vec<(String, String)>);

impl AllowedModels {
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut patterns = Vec::new();
        for (i, entry) in text.split(',').map(str::trim).enumerate() {
            let pattern = entry
                .split_once('/')
                .filter(|(owner, name)| {
                    !owner.is_empty() && !name.is_empty() && !name.contains('/')
                })
                .ok_or_else(|| {
                    format!("entry {} is not `owner/name` (either may be `*`)", i + 1)
                })?;
            patterns.push((pattern.0.to_owned(), pattern.1.to_owned()));
        }
        Ok(Self(patterns))
    }

    pub fn allows(&self, owner: &str, name: &str) -> bool {
        let matches = |pattern: &str, value: &str| pattern == "*" || pattern == value;
        self.0
            .iter()
            .any(|(o, n)| matches(o, owner) && matches(n, name))
    }

    /// The patterns that name one model exactly: the only ones a bare version id can be looked up
    /// under.
    pub fn exact(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0
            .iter()
            .filter(|(o, n)| o != "*" && n != "*")
            .map(|(o, n)| (o.as_str(), n.as_str()))
    }
}

/// Version ids the platform has said belong to an allowed model, so each is looked up once.
#[derive(Default)]
pub struct KnownVersions(Mutex<HashSet<String>>);

/// Enough for every version a team runs; past it the set starts again rather than grow.
const KNOWN_VERSIONS_MAX: usize = 10_000;

impl KnownVersions {
    pub fn contains(&self, version: &str) -> bool {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(version)
    }

    pub fn insert(&self, version: &str) {
        let mut known = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if known.len() >= KNOWN_VERSIONS_MAX {
            known.clear();
        }
        known.insert(version.to_owned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_whole_parts() {
        let allowed = AllowedModels::parse("acme/*, stability-ai/sdxl").unwrap();
        assert!(allowed.allows("acme", "anything"));
        assert!(allowed.allows("stability-ai", "sdxl"));
        assert!(!allowed.allows("stability-ai", "sdxl-2"));
        assert!(!allowed.allows("acme-evil", "x"));
        assert_eq!(
            allowed.exact().collect::<Vec<_>>(),
            [("stability-ai", "sdxl")]
        );
        for bad in ["acme", "a/b/c", "/b", "a/", "a/b,"] {
            assert!(AllowedModels::parse(bad).is_err(), "{bad}");
        }
    }
}
