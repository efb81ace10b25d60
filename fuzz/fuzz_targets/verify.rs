//! Signature headers and verification: whatever the headers and body, `verify` never panics, and
//! it accepts only when one `v1` entry is exactly the MAC of the id, timestamp and body under the
//! secret — never on anything a fuzzer can make up.
#![no_main]

use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use prediction_inbox::verify::{Secret, Verifier};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const NOW: i64 = 1_700_000_000;

fuzz_target!(|data: &[u8]| {
    // Lines: webhook-id, webhook-timestamp, then any number of webhook-signature values; the body
    // is what follows the first empty line.
    let (head, body) = match data.windows(2).position(|w| w == b"\n\n") {
        Some(at) => (&data[..at], &data[at + 2..]),
        None => (data, &[][..]),
    };
    let mut lines = head.split(|b| *b == b'\n');
    let mut headers = HeaderMap::new();
    for name in ["webhook-id", "webhook-timestamp"] {
        if let Some(Ok(value)) = lines.next().map(HeaderValue::from_bytes) {
            headers.insert(name, value);
        }
    }
    for line in lines {
        if let Ok(value) = HeaderValue::from_bytes(line) {
            headers.append("webhook-signature", value);
        }
    }
    let secret: Secret = SECRET.parse().unwrap();
    let verifier = Verifier::new(vec![SECRET.parse().unwrap()], 300);
    if let Ok(verified) = verifier.verify(&headers, body, NOW) {
        let genuine = secret.sign(verified.webhook_id.as_str(), verified.timestamp, body);
        let offered = headers
            .get_all("webhook-signature")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(' '))
            .any(|entry| entry == genuine);
        assert!(offered, "accepted without the genuine signature");
    }
});
