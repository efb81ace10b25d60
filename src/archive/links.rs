//! The inbox's links to archived files: `/archive/{key}?expires=…&signature=…`, signed with a key
//! of the inbox's own, so that they work without a bearer (a browser, an `<img>` tag, a client
//! that sends its bearer only to the inbox) and cannot be made up or extended. Each read hands
//! out a fresh one; expiry is rounded up to the minute, so reads within a minute get the same
//! link (caches and event streams see no change).

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The shortest signing key accepted.
pub const MIN_SIGNING_KEY_BYTES: usize = 32;

/// A key links are signed with, held as a keyed HMAC state; never printed.
#[derive(Clone)]
pub struct SigningKey(HmacSha256);

impl SigningKey {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Self, String> {
        let bytes = bytes.into();
        if bytes.len() < MIN_SIGNING_KEY_BYTES {
            return Err(format!(
                "must be at least {MIN_SIGNING_KEY_BYTES} characters"
            ));
        }
        HmacSha256::new_from_slice(&bytes)
            .map(Self)
            .map_err(|_| "cannot be used as an HMAC key".to_owned())
    }

    fn mac(&self, key: &str, expires: i64) -> HmacSha256 {
        let mut mac = self.0.clone();
        mac.update(key.as_bytes());
        mac.update(b"\n");
        mac.update(expires.to_string().as_bytes());
        mac
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningKey(<redacted>)")
    }
}

/// Signs links with the first key and accepts any of them: a new key goes first, the old one
/// stays second until the links it signed have expired.
#[derive(Debug, Clone)]
pub struct Links {
    keys: Vec<SigningKey>,
    ttl_secs: i64,
}

/// Why a link is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkCheck {
    Valid,
    Expired,
    /// Not signed by any of the keys: made up, or changed.
    Forged,
}

impl Links {
    pub fn new(keys: Vec<SigningKey>, ttl: std::time::Duration) -> Self {
        Self {
            keys,
            ttl_secs: i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX / 2),
        }
    }

    /// The query of a link to `key` handed out at `now` (Unix seconds):
    /// `expires=…&signature=…`.
    pub fn sign(&self, key: &str, now: i64) -> String {
        let expires = (now.saturating_add(self.ttl_secs) / 60 + 1) * 60;
        let signature = match self.keys.first() {
            Some(signing) => {
                URL_SAFE_NO_PAD.encode(signing.mac(key, expires).finalize().into_bytes())
            }
            None => String::new(),
        };
        format!("expires={expires}&signature={signature}")
    }

    /// Whether a link to `key` with this query is one the inbox signed and still valid at `now`.
    pub fn check(&self, key: &str, expires: i64, signature: &str, now: i64) -> LinkCheck {
        let Ok(signature) = URL_SAFE_NO_PAD.decode(signature) else {
            return LinkCheck::Forged;
        };
        let signed = self
            .keys
            .iter()
            .any(|k| k.mac(key, expires).verify_slice(&signature).is_ok());
        match (signed, expires > now) {
            (false, _) => LinkCheck::Forged,
            (true, false) => LinkCheck::Expired,
            (true, true) => LinkCheck::Valid,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn links(keys: &[&str]) -> Links {
        Links::new(
            keys.iter().map(|k| SigningKey::new(*k).unwrap()).collect(),
            Duration::from_secs(3600),
        )
    }

    fn parts(query: &str) -> (i64, String) {
        let (expires, signature) = query.split_once('&').unwrap();
        (
            expires.strip_prefix("expires=").unwrap().parse().unwrap(),
            signature.strip_prefix("signature=").unwrap().to_owned(),
        )
    }

    #[test]
    fn a_link_is_valid_until_it_expires_and_only_for_its_key() {
        let links = links(&["k".repeat(32).as_str()]);
        let (expires, signature) = parts(&links.sign("ab/out.png", 1_000_000));
        assert!((1_000_000 + 3600..1_000_000 + 3660).contains(&expires));
        assert_eq!(
            links.check("ab/out.png", expires, &signature, 1_000_000),
            LinkCheck::Valid
        );
        assert_eq!(
            links.check("ab/out.png", expires, &signature, expires),
            LinkCheck::Expired
        );
        assert_eq!(
            links.check("ab/other.png", expires, &signature, 0),
            LinkCheck::Forged
        );
        assert_eq!(
            links.check("ab/out.png", expires + 60, &signature, 0),
            LinkCheck::Forged
        );
        assert_eq!(
            links.check("ab/out.png", expires, "AAAA", 0),
            LinkCheck::Forged
        );
    }

    #[test]
    fn an_old_key_still_verifies_after_rotation_and_signs_no_more() {
        let (old, new) = ("o".repeat(32), "n".repeat(32));
        let (expires, signature) = parts(&links(&[&old]).sign("k", 0));
        let rotated = links(&[&new, &old]);
        assert_eq!(rotated.check("k", expires, &signature, 0), LinkCheck::Valid);
        assert_ne!(rotated.sign("k", 0), links(&[&old]).sign("k", 0));
        assert_eq!(
            links(&[&new]).check("k", expires, &signature, 0),
            LinkCheck::Forged
        );
        assert!(SigningKey::new("short").is_err());
        assert!(!format!("{:?}", rotated).contains(&old));
    }
}
