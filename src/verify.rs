//! Standard Webhooks verification (symmetric `v1` signatures), as Replicate signs its deliveries.
//! Pure: headers, the exact body bytes, the secrets and the current time in; verified or why not out.

use std::fmt;
use std::str::FromStr;

use axum::http::HeaderMap;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::domain::{InvalidText, WebhookId};

type HmacSha256 = Hmac<Sha256>;

const SIGNATURE_LEN: usize = 32;
const SECRET_PREFIX: &str = "whsec_";
/// The shortest key accepted: the platform's own are 24 to 64 random bytes, and a shorter one is
/// a typo or a guessable test value.
pub const MIN_KEY_BYTES: usize = 24;

/// A signing key: the base64-decoded part of a `whsec_…` secret (never the text itself), held as a
/// keyed HMAC state so each message only clones it.
#[derive(Clone)]
pub struct Secret(HmacSha256);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidSecret {
    #[error("is not a `whsec_` secret")]
    MissingPrefix,
    #[error("the part after `whsec_` is not base64")]
    NotBase64,
    #[error("the part after `whsec_` decodes to fewer than {MIN_KEY_BYTES} bytes")]
    TooShort,
}

impl FromStr for Secret {
    type Err = InvalidSecret;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let encoded = text
            .trim()
            .strip_prefix(SECRET_PREFIX)
            .ok_or(InvalidSecret::MissingPrefix)?;
        let key = BASE64
            .decode(encoded)
            .map_err(|_| InvalidSecret::NotBase64)?;
        if key.len() < MIN_KEY_BYTES {
            return Err(InvalidSecret::TooShort);
        }
        let mac = HmacSha256::new_from_slice(&key).map_err(|_| InvalidSecret::TooShort)?;
        Ok(Self(mac))
    }
}

impl Secret {
    fn mac(&self, id: &str, timestamp: &str, body: &[u8]) -> [u8; SIGNATURE_LEN] {
        let mut mac = self.0.clone();
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.as_bytes());
        mac.update(b".");
        mac.update(body);
        mac.finalize().into_bytes().into()
    }

    /// A key for another use, derived from this one: HMAC of `label` behind a NUL, which no
    /// signed message can start with (a `webhook-id` is visible ASCII), so a derived key is never
    /// a signature the platform could be made to send.
    pub fn derive(&self, label: &str) -> [u8; SIGNATURE_LEN] {
        let mut mac = self.0.clone();
        mac.update(b"\0derive\0");
        mac.update(label.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// The `webhook-signature` value a sender would put on this message: `v1,<base64>`.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let mac = self.mac(id, &timestamp.to_string(), body);
        format!("v1,{}", BASE64.encode(mac))
    }
}

/// Why a delivery was not accepted as coming from the platform.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("the `{0}` header is missing")]
    MissingHeader(&'static str),
    #[error("the `{0}` header is malformed")]
    MalformedHeader(&'static str),
    #[error("the `webhook-id` header is not usable: {0}")]
    InvalidId(#[from] InvalidText),
    #[error("`webhook-timestamp` is more than {0} s away from this server's clock")]
    OutsideTolerance(u64),
    #[error(
        "no `v1` signature in `webhook-signature` matches the message under any configured secret"
    )]
    NoMatchingSignature,
}

/// What verification establishes about a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub webhook_id: WebhookId,
    /// `webhook-timestamp`, Unix seconds.
    pub timestamp: i64,
}

#[derive(Debug, Clone)]
pub struct Verifier {
    secrets: Vec<Secret>,
    tolerance_secs: u64,
}

/// What a delivery's headers claim, checked as far as it can be without its body: every header
/// present and well formed, the timestamp within the tolerance, and at least one `v1` signature of
/// the right length. Only such a delivery is worth reading the body of.
#[derive(Debug)]
pub struct Claim {
    webhook_id: WebhookId,
    /// As received: the signature covers this text, not a number re-printed.
    timestamp_text: String,
    timestamp: i64,
    candidates: Vec<[u8; SIGNATURE_LEN]>,
}

impl Verifier {
    /// Any one of `secrets` verifying is enough, so a secret can be rotated without downtime.
    pub fn new(secrets: Vec<Secret>, tolerance_secs: u64) -> Self {
        Self {
            secrets,
            tolerance_secs,
        }
    }

    /// Checks everything the headers alone can show; `now` is the current Unix time in seconds.
    pub fn claim(&self, headers: &HeaderMap, now: i64) -> Result<Claim, Rejection> {
        let id = single_header(headers, "webhook-id")?;
        let timestamp_text = single_header(headers, "webhook-timestamp")?;
        let timestamp = parse_timestamp(timestamp_text)?;
        if timestamp.abs_diff(now) > self.tolerance_secs {
            return Err(Rejection::OutsideTolerance(self.tolerance_secs));
        }
        let webhook_id = WebhookId::parse(id)?;

        // Senders may list several signatures in one header, or repeat the header.
        let mut candidates = Vec::new();
        for value in headers.get_all("webhook-signature") {
            let value = value
                .to_str()
                .map_err(|_| Rejection::MalformedHeader("webhook-signature"))?;
            candidates.extend(v1_signatures(value));
        }
        if candidates.is_empty() {
            return Err(match headers.get("webhook-signature") {
                None => Rejection::MissingHeader("webhook-signature"),
                // Nothing in it could ever match.
                Some(_) => Rejection::NoMatchingSignature,
            });
        }
        Ok(Claim {
            webhook_id,
            timestamp_text: timestamp_text.to_owned(),
            timestamp,
            candidates,
        })
    }

    /// Whether one of the claim's signatures is the body's, under any of the secrets.
    pub fn verify_claim(&self, claim: Claim, body: &[u8]) -> Result<Verified, Rejection> {
        let id = claim.webhook_id.as_str();
        let mut matched = subtle::Choice::from(0);
        for secret in &self.secrets {
            let expected = secret.mac(id, &claim.timestamp_text, body);
            for candidate in &claim.candidates {
                matched |= expected.ct_eq(candidate);
            }
        }
        if !bool::from(matched) {
            return Err(Rejection::NoMatchingSignature);
        }
        Ok(Verified {
            webhook_id: claim.webhook_id,
            timestamp: claim.timestamp,
        })
    }

    /// Both steps at once, for a delivery whose body is at hand.
    pub fn verify(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now: i64,
    ) -> Result<Verified, Rejection> {
        self.verify_claim(self.claim(headers, now)?, body)
    }
}

fn single_header<'h>(headers: &'h HeaderMap, name: &'static str) -> Result<&'h str, Rejection> {
    let mut values = headers.get_all(name).iter();
    let value = values.next().ok_or(Rejection::MissingHeader(name))?;
    if values.next().is_some() {
        return Err(Rejection::MalformedHeader(name));
    }
    let value = value
        .to_str()
        .map_err(|_| Rejection::MalformedHeader(name))?;
    if value.is_empty() {
        return Err(Rejection::MissingHeader(name));
    }
    Ok(value)
}

fn parse_timestamp(text: &str) -> Result<i64, Rejection> {
    // Plain decimal seconds only: no sign, no spaces, no fractions.
    if text.is_empty() || text.len() > 18 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Rejection::MalformedHeader("webhook-timestamp"));
    }
    text.parse()
        .map_err(|_| Rejection::MalformedHeader("webhook-timestamp"))
}

/// The decoded `v1` entries of a `webhook-signature` value. Other versions, undecodable entries and
/// entries of the wrong length are skipped: they can never match, and one bad entry must not hide a
/// good one. A short entry is never compared as a prefix (CVE-2024-21491).
fn v1_signatures(value: &str) -> impl Iterator<Item = [u8; SIGNATURE_LEN]> + '_ {
    value.split_ascii_whitespace().filter_map(|entry| {
        let (version, signature) = entry.split_once(',')?;
        if version != "v1" {
            return None;
        }
        BASE64.decode(signature).ok()?.try_into().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use serde::Deserialize;

    #[derive(Deserialize)]
    struct Vectors {
        vectors: Vec<Vector>,
    }

    #[derive(Deserialize)]
    struct Vector {
        secret: String,
        webhook_id: String,
        webhook_timestamp: String,
        body: String,
        webhook_signature: String,
    }

    fn vectors() -> Vec<Vector> {
        let text = include_str!("../tests/fixtures/signature-vectors.json");
        serde_json::from_str::<Vectors>(text).unwrap().vectors
    }

    fn headers(id: &str, timestamp: &str, signature: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("webhook-id", HeaderValue::from_str(id).unwrap());
        headers.insert(
            "webhook-timestamp",
            HeaderValue::from_str(timestamp).unwrap(),
        );
        headers.insert(
            "webhook-signature",
            HeaderValue::from_str(signature).unwrap(),
        );
        headers
    }

    fn verifier(secret: &str) -> Verifier {
        Verifier::new(vec![secret.parse().unwrap()], 300)
    }

    fn check(
        v: &Vector,
        id: &str,
        timestamp: &str,
        signature: &str,
        body: &str,
    ) -> Result<Verified, Rejection> {
        let now = v.webhook_timestamp.parse().unwrap();
        verifier(&v.secret).verify(&headers(id, timestamp, signature), body.as_bytes(), now)
    }

    #[test]
    fn every_reference_vector_verifies_and_signs_identically() {
        for v in vectors() {
            let verified = check(
                &v,
                &v.webhook_id,
                &v.webhook_timestamp,
                &v.webhook_signature,
                &v.body,
            )
            .unwrap();
            assert_eq!(verified.webhook_id.as_str(), v.webhook_id);
            let secret: Secret = v.secret.parse().unwrap();
            let ts = v.webhook_timestamp.parse().unwrap();
            assert_eq!(
                secret.sign(&v.webhook_id, ts, v.body.as_bytes()),
                v.webhook_signature
            );
        }
    }

    #[test]
    fn any_tampering_fails() {
        for v in vectors() {
            let (id, ts, sig, body) = (
                &v.webhook_id,
                &v.webhook_timestamp,
                &v.webhook_signature,
                &v.body,
            );
            let bumped = (ts.parse::<i64>().unwrap() + 1).to_string();
            let no_match = Err(Rejection::NoMatchingSignature);
            assert_eq!(
                check(&v, id, ts, sig, &format!("{body} ")),
                no_match,
                "body"
            );
            assert_eq!(check(&v, &format!("{id}x"), ts, sig, body), no_match, "id");
            assert_eq!(check(&v, id, &bumped, sig, body), no_match, "timestamp");
            // The same signature under another secret.
            let other = Verifier::new(
                vec![
                    "whsec_dGhpcyBpcyBub3QgdGhlIHNlY3JldCwgaXQgaXMgYW5vdGhlcg=="
                        .parse()
                        .unwrap(),
                ],
                300,
            );
            let now = ts.parse().unwrap();
            assert_eq!(
                other.verify(&headers(id, ts, sig), body.as_bytes(), now),
                no_match,
                "secret"
            );
        }
    }

    #[test]
    fn wrong_length_signatures_never_match() {
        let v = &vectors()[0];
        let full = BASE64.decode(&v.webhook_signature[3..]).unwrap();
        for len in [0, 1, 16, 31] {
            let short = format!("v1,{}", BASE64.encode(&full[..len]));
            assert_eq!(
                check(v, &v.webhook_id, &v.webhook_timestamp, &short, &v.body),
                Err(Rejection::NoMatchingSignature),
                "{len} bytes"
            );
        }
        let long = format!("v1,{}", BASE64.encode([&full[..], &[0]].concat()));
        assert_eq!(
            check(v, &v.webhook_id, &v.webhook_timestamp, &long, &v.body),
            Err(Rejection::NoMatchingSignature)
        );
    }

    #[test]
    fn only_v1_entries_count_and_bad_entries_are_skipped() {
        let v = &vectors()[0];
        let sig = &v.webhook_signature[3..];
        let ok =
            |signature: &str| check(v, &v.webhook_id, &v.webhook_timestamp, signature, &v.body);
        assert!(
            ok(&format!(
                "v1,bm90IGEgc2lnbmF0dXJl v2,abc garbage v1, v1,!!! v1,{sig}"
            ))
            .is_ok()
        );
        assert_eq!(
            ok(&format!("v2,{sig}")),
            Err(Rejection::NoMatchingSignature)
        );
        assert_eq!(
            ok(&format!("v1a,{sig}")),
            Err(Rejection::NoMatchingSignature)
        );
        assert_eq!(ok(""), Err(Rejection::NoMatchingSignature));
    }

    #[test]
    fn repeated_signature_headers_are_all_considered() {
        let v = &vectors()[0];
        let mut h = headers(&v.webhook_id, &v.webhook_timestamp, "v1,AAAA");
        h.append(
            "webhook-signature",
            HeaderValue::from_str(&v.webhook_signature).unwrap(),
        );
        let now = v.webhook_timestamp.parse().unwrap();
        assert!(
            verifier(&v.secret)
                .verify(&h, v.body.as_bytes(), now)
                .is_ok()
        );
    }

    #[test]
    fn any_configured_secret_may_match() {
        let v = &vectors()[0];
        let secrets = vec![
            "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD".parse().unwrap(),
            v.secret.parse().unwrap(),
        ];
        let now = v.webhook_timestamp.parse().unwrap();
        let h = headers(&v.webhook_id, &v.webhook_timestamp, &v.webhook_signature);
        assert!(
            Verifier::new(secrets, 300)
                .verify(&h, v.body.as_bytes(), now)
                .is_ok()
        );
    }

    #[test]
    fn timestamps_outside_the_tolerance_fail_both_ways() {
        let v = &vectors()[0];
        let ts: i64 = v.webhook_timestamp.parse().unwrap();
        let h = headers(&v.webhook_id, &v.webhook_timestamp, &v.webhook_signature);
        let verifier = verifier(&v.secret);
        for (now, ok) in [
            (ts + 300, true),
            (ts - 300, true),
            (ts + 301, false),
            (ts - 301, false),
            (ts + 86_400, false),
        ] {
            let result = verifier.verify(&h, v.body.as_bytes(), now);
            assert_eq!(result.is_ok(), ok, "now = ts {:+}", now - ts);
            if !ok {
                assert_eq!(result, Err(Rejection::OutsideTolerance(300)));
            }
        }
    }

    #[test]
    fn missing_or_malformed_headers_fail() {
        let v = &vectors()[0];
        let now = v.webhook_timestamp.parse().unwrap();
        let verifier = verifier(&v.secret);
        for name in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
            let mut h = headers(&v.webhook_id, &v.webhook_timestamp, &v.webhook_signature);
            h.remove(name);
            assert_eq!(
                verifier.verify(&h, v.body.as_bytes(), now),
                Err(Rejection::MissingHeader(name))
            );
        }
        for ts in [
            "-1614265330",
            "1614265330.0",
            " 1614265330",
            "abc",
            "99999999999999999999",
        ] {
            let h = headers(&v.webhook_id, ts, &v.webhook_signature);
            assert_eq!(
                verifier.verify(&h, v.body.as_bytes(), now),
                Err(Rejection::MalformedHeader("webhook-timestamp")),
                "{ts}"
            );
        }
        let mut h = headers(&v.webhook_id, &v.webhook_timestamp, &v.webhook_signature);
        h.append("webhook-id", HeaderValue::from_static("msg_other"));
        assert_eq!(
            verifier.verify(&h, v.body.as_bytes(), now),
            Err(Rejection::MalformedHeader("webhook-id"))
        );
    }

    /// The contract: the ids of deliveries the service makes itself never collide with a
    /// platform's `webhook-id`, even one signed with the right secret.
    #[test]
    fn an_id_the_service_makes_can_never_arrive_as_a_webhook_id() {
        use crate::domain::Prediction;
        use crate::store::{NewDelivery, Source};
        let v = &vectors()[0];
        let verifier = verifier(&v.secret);
        let now: i64 = v.webhook_timestamp.parse().unwrap();
        for source in [Source::Create, Source::Cancel, Source::Reconcile] {
            let prediction = Prediction::parse(r#"{"id":"p"}"#).unwrap();
            let own = NewDelivery::own(source, prediction, String::new());
            let id = own.webhook_id().as_str();
            let signature = verifier.secrets[0].sign(id, now, v.body.as_bytes());
            let mut h = headers("placeholder", &v.webhook_timestamp, &signature);
            h.insert(
                "webhook-id",
                HeaderValue::from_bytes(id.as_bytes()).unwrap(),
            );
            assert_eq!(
                verifier.verify(&h, v.body.as_bytes(), now),
                Err(Rejection::MalformedHeader("webhook-id")),
                "{id}"
            );
        }
    }

    #[test]
    fn secrets_parse_strictly_and_never_print() {
        assert_eq!(
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
                .parse::<Secret>()
                .unwrap_err(),
            InvalidSecret::MissingPrefix
        );
        assert_eq!(
            "whsec_not base64!".parse::<Secret>().unwrap_err(),
            InvalidSecret::NotBase64
        );
        for short in ["whsec_", "whsec_dGhpcyBpcyBub3QgdGhlIHNlY3JldA=="] {
            assert_eq!(
                short.parse::<Secret>().unwrap_err(),
                InvalidSecret::TooShort
            );
        }
        let secret: Secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".parse().unwrap();
        assert_eq!(format!("{secret:?}"), "Secret(<redacted>)");
    }
}
