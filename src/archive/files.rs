//! The files of a prediction's output: which strings are files to fetch, what their copies are
//! called, and what readers get once they are archived.

use std::collections::HashSet;

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::Links;
use crate::domain::Members;
use crate::store::ArchiveFile;

/// The most files taken from one prediction's output.
pub const MAX_FILES: usize = 1000;

/// Every `http` or `https` URL among the strings of an output, at any depth of arrays and
/// objects, each once, in the order they appear. (`data:` URIs are not URLs to fetch: they stay
/// inline.)
pub fn output_urls(output: &Value) -> Vec<String> {
    let mut urls = Vec::new();
    let mut seen = HashSet::new();
    let mut stack = vec![output];
    while let Some(value) = stack.pop() {
        match value {
            Value::String(text) => {
                let lower = text.get(..8).unwrap_or(text).to_ascii_lowercase();
                let is_url = lower.starts_with("https://") || lower.starts_with("http://");
                if is_url && urls.len() < MAX_FILES && seen.insert(text.as_str()) {
                    urls.push(text.clone());
                }
            }
            Value::Array(items) => stack.extend(items.iter().rev()),
            Value::Object(members) => stack.extend(members.values().rev()),
            _ => {}
        }
    }
    urls
}

/// The copy's key in the store: a digest of the prediction and the URL, then the URL's file name
/// (for a reader's download), in characters that need no escaping in a path.
pub fn file_key(prediction_id: &str, url: &str) -> String {
    let digest = Sha256::new()
        .chain_update(prediction_id.as_bytes())
        .chain_update(b"\n")
        .chain_update(url.as_bytes())
        .finalize();
    let digest: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
    let path = url.split(['?', '#']).next().unwrap_or_default();
    let name: String = path
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        .take(100)
        .collect();
    let name = name.trim_start_matches('.');
    format!("{digest}/{}", if name.is_empty() { "file" } else { name })
}

/// A prediction's body as readers get it once some of its files have a record: each archived
/// URL in `output` replaced by a signed link to the inbox's copy under `base`, and a member
/// `inbox_archive` with the platform's `output` as it came and how each file went.
pub struct ArchivedOutput<'a> {
    pub base: &'a str,
    pub links: &'a Links,
    /// Unix seconds, for the links' expiry.
    pub now: i64,
}

impl ArchivedOutput<'_> {
    /// `None`: `body` as stored (nothing recorded, or not an object with an `output`).
    pub fn present(&self, body: &str, files: &[ArchiveFile]) -> Option<String> {
        if files.is_empty() {
            return None;
        }
        let members = Members::parse(body)?;
        let original = members.get("output")?.get();
        let mut output = original.to_owned();
        for file in files.iter().filter(|file| file.state == "archived") {
            let (Ok(from), Ok(to)) = (
                serde_json::to_string(&file.url),
                serde_json::to_string(&format!(
                    "{}/archive/{}?{}",
                    self.base,
                    file.key,
                    self.links.sign(&file.key, self.now)
                )),
            ) else {
                continue;
            };
            output = output.replace(&from, &to);
        }
        let described: Vec<Value> = files.iter().map(describe).collect();
        let mut text = members.write(|key, _| (key == "output").then(|| output.clone()));
        text.pop();
        text.push_str(",\"inbox_archive\":{\"original_output\":");
        text.push_str(original);
        text.push_str(",\"files\":");
        text.push_str(&Value::Array(described).to_string());
        text.push_str("}}");
        Some(text)
    }
}

/// One file, as `inbox_archive.files` says how it went.
fn describe(file: &ArchiveFile) -> Value {
    let mut entry = serde_json::Map::new();
    entry.insert("url".into(), file.url.clone().into());
    entry.insert("state".into(), file.state.clone().into());
    if let Some(reason) = &file.reason {
        entry.insert("reason".into(), reason.clone().into());
    }
    if let Some(size) = file.size {
        entry.insert("size".into(), size.into());
    }
    if let Some(content_type) = &file.content_type {
        entry.insert("content_type".into(), content_type.clone().into());
    }
    Value::Object(entry)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::SigningKey;
    use serde_json::json;

    #[test]
    fn every_url_at_any_depth_is_found_once_and_data_uris_are_not() {
        let output = json!([
            "https://replicate.delivery/a/out-0.png",
            {"audio": "http://example.test/x.wav", "n": 1, "again": "https://replicate.delivery/a/out-0.png"},
            [["HTTPS://replicate.delivery/b.txt"]],
            "data:image/png;base64,iVBORw0KGgo=",
            "not a url"
        ]);
        assert_eq!(
            output_urls(&output),
            [
                "https://replicate.delivery/a/out-0.png",
                "http://example.test/x.wav",
                "HTTPS://replicate.delivery/b.txt",
            ]
        );
        assert_eq!(output_urls(&json!("https://replicate.delivery/x")).len(), 1);
        assert!(output_urls(&Value::Null).is_empty());
    }

    #[test]
    fn a_key_is_the_same_for_the_same_file_and_safe_in_a_path() {
        let key = file_key("p1", "https://replicate.delivery/a/out%20put.png?x=1");
        assert_eq!(
            key,
            file_key("p1", "https://replicate.delivery/a/out%20put.png?x=1")
        );
        assert_ne!(
            key,
            file_key("p2", "https://replicate.delivery/a/out%20put.png?x=1")
        );
        assert!(key.ends_with("/out20put.png"), "{key}");
        assert!(file_key("p1", "https://replicate.delivery/").ends_with("/file"));
        assert!(file_key("p1", "https://x.test/..").ends_with("/file"));
    }

    #[test]
    fn readers_get_links_in_place_and_the_original_beside_them() {
        let links = Links::new(
            vec![SigningKey::new("k".repeat(32)).unwrap()],
            std::time::Duration::from_secs(60),
        );
        let url = "https://replicate.delivery/a/out.png";
        let body = format!(
            r#"{{"id":"p1","output":["{url}","https://replicate.delivery/gone.png"],"z":1}}"#
        );
        let files = [
            ArchiveFile {
                key: "abc/out.png".into(),
                prediction_id: "p1".into(),
                url: url.into(),
                state: "archived".into(),
                reason: None,
                size: Some(3),
                content_type: Some("image/png".into()),
            },
            ArchiveFile {
                key: "def/gone.png".into(),
                prediction_id: "p1".into(),
                url: "https://replicate.delivery/gone.png".into(),
                state: "failed".into(),
                reason: Some("expired".into()),
                size: None,
                content_type: None,
            },
        ];
        let view = ArchivedOutput {
            base: "http://inbox",
            links: &links,
            now: 0,
        };
        let read: Value = serde_json::from_str(&view.present(&body, &files).unwrap()).unwrap();
        let link = read["output"][0].as_str().unwrap();
        assert!(
            link.starts_with("http://inbox/archive/abc/out.png?expires="),
            "{link}"
        );
        assert_eq!(read["output"][1], "https://replicate.delivery/gone.png");
        assert_eq!(read["inbox_archive"]["original_output"][0], url);
        assert_eq!(read["inbox_archive"]["files"][1]["reason"], "expired");
        assert_eq!(read["z"], 1);
        assert!(view.present(&body, &[]).is_none());
    }
}
