//! Deliveries for testing a receiver without the platform: what `sign` and `send-test` send.

use serde_json::json;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::domain::Status;
use crate::verify::Secret;

/// A `msg_` id for a message created at `unix_seconds`, shaped like the platform's: a KSUID, 27
/// base62 digits of 4 bytes of time (seconds since 2014-05-13) and 16 random bytes. The
/// reference library's vector `msg_27UH4WbU6Z5A5EzD8u03UvzRbpk` decodes to its own
/// `webhook-timestamp`. So ids are in time order, and a stream that sends random ids instead
/// writes to the receiver's index of them in a way the platform never would.
pub fn message_id_at(unix_seconds: i64) -> String {
    format!("msg_{}", ksuid(unix_seconds, random_bytes()))
}

fn ksuid(unix_seconds: i64, payload: [u8; 16]) -> String {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    const EPOCH: i64 = 1_400_000_000;
    let since = u32::try_from((unix_seconds - EPOCH).max(0)).unwrap_or(u32::MAX);
    let mut number = [0u8; 20];
    number[..4].copy_from_slice(&since.to_be_bytes());
    number[4..].copy_from_slice(&payload);
    // The 160-bit number in base 62, by long division: 27 digits hold it, zero-padded.
    let mut digits = [b'0'; 27];
    for digit in digits.iter_mut().rev() {
        let mut remainder = 0u32;
        for byte in number.iter_mut() {
            let accumulated = remainder * 256 + u32::from(*byte);
            *byte = (accumulated / 62) as u8;
            remainder = accumulated % 62;
        }
        *digit = ALPHABET[remainder as usize];
    }
    digits.iter().map(|&d| d as char).collect()
}

/// A fresh 26-character prediction id in the platform's alphabet.
pub fn prediction_id() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let bytes = [random_bytes(), random_bytes()].concat();
    bytes[..26]
        .iter()
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect()
}

fn random_bytes() -> [u8; 16] {
    let mut bytes = [0u8; 16];
    // Without an entropy source, fall back to the clock: these ids need only be unique, not secret.
    if getrandom::getrandom(&mut bytes).is_err() {
        bytes = OffsetDateTime::now_utc()
            .unix_timestamp_nanos()
            .to_le_bytes();
    }
    bytes
}

/// The object the platform would send for prediction `id` at `status`.
pub fn prediction(id: &str, status: &str) -> String {
    let now = OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .unwrap_or_default();
    let terminal = Status::parse(status).is_terminal();
    let mut body = json!({
        "id": id,
        "model": "replicate/hello-world",
        "version": "5c7d5dc6dd8bf75c1acaa8565735e7986bc5b66206b55cca93cb72c9bf15ccaa",
        "input": {"text": "Alice"},
        "logs": match status {
            "starting" => "",
            "processing" => "Using seed: 1234\n 40%|####      | 20/50\n",
            _ => "Using seed: 1234\n100%|##########| 50/50\n",
        },
        "output": if status == "succeeded" {
            json!([
                format!("https://replicate.delivery/pbxt/{id}/out-0.png"),
                format!("https://replicate.delivery/pbxt/{id}/out-1.png"),
            ])
        } else {
            json!(null)
        },
        "error": if status == "failed" { json!("the sample failed on purpose") } else { json!(null) },
        "status": status,
        "created_at": now,
        "urls": {
            "get": format!("https://api.replicate.com/v1/predictions/{id}"),
            "cancel": format!("https://api.replicate.com/v1/predictions/{id}/cancel"),
            "stream": format!("https://stream.replicate.com/v1/files/{id}"),
            "web": format!("https://replicate.com/p/{id}"),
        },
        "webhook": "https://inbox.example.com/webhooks/replicate",
        "webhook_events_filter": ["start", "output", "logs", "completed"],
        "data_removed": false,
        "source": "api",
    });
    if status != "starting" {
        body["started_at"] = json!(now);
    }
    if terminal {
        body["completed_at"] = json!(now);
        body["metrics"] = json!({"predict_time": 0.1, "total_time": 0.2});
    }
    body.to_string()
}

/// What a receiver answered to one delivery.
#[derive(Debug)]
pub struct Answer {
    pub webhook_id: String,
    pub status: u16,
    /// Whether it said when to retry (`Retry-After`), as every 503 should.
    pub retry_after: bool,
    pub body: String,
}

/// Signs `body` as the platform would, now, under a fresh message id, and POSTs it to `url`.
pub async fn send(
    client: &reqwest::Client,
    url: &str,
    secret: &Secret,
    body: String,
) -> Result<Answer, reqwest::Error> {
    let timestamp = OffsetDateTime::now_utc().unix_timestamp();
    let webhook_id = message_id_at(timestamp);
    let response = client
        .post(url)
        .header("content-type", "application/json")
        .header("webhook-id", &webhook_id)
        .header("webhook-timestamp", timestamp.to_string())
        .header(
            "webhook-signature",
            secret.sign(&webhook_id, timestamp, body.as_bytes()),
        )
        .body(body)
        .send()
        .await?;
    let status = response.status().as_u16();
    let retry_after = response.headers().contains_key("retry-after");
    let body = response.text().await?;
    Ok(Answer {
        webhook_id,
        status,
        retry_after,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Prediction;

    #[test]
    fn samples_are_predictions_the_service_accepts() {
        let id = prediction_id();
        assert_eq!(id.len(), 26);
        for status in Status::KNOWN {
            let parsed = Prediction::parse(&prediction(&id, status)).unwrap();
            assert_eq!(parsed.id.as_str(), id);
            assert_eq!(parsed.status, Some(Status::parse(status)));
            assert!(parsed.created_at.is_some());
        }
        assert_ne!(message_id_at(1_700_000_000), message_id_at(1_700_000_000));
    }

    #[test]
    fn message_ids_are_ksuids_like_the_platforms() {
        // The reference library's vector: its id's time is its `webhook-timestamp`, 1649367553.
        let payload = [
            50, 125, 142, 238, 59, 221, 56, 25, 90, 84, 155, 14, 26, 110, 190, 244,
        ];
        assert_eq!(ksuid(1_649_367_553, payload), "27UH4WbU6Z5A5EzD8u03UvzRbpk");
        // The extremes keep 27 digits.
        assert_eq!(ksuid(0, [0; 16]), "0".repeat(27));
        assert_eq!(ksuid(i64::MAX, [255; 16]), "aWgEPTl1tmebfsQzFP4bxwgy80V");
        // Ids of a later second sort after those of an earlier one.
        let (earlier, later) = (message_id_at(1_700_000_000), message_id_at(1_700_000_001));
        assert!(earlier < later, "{earlier} < {later}");
        assert_eq!(later.len(), "msg_".len() + 27);
    }
}
