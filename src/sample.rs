//! Deliveries for testing a receiver without the platform: what `sign` and `send-test` send.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::json;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::domain::Status;
use crate::verify::Secret;

/// A `msg_` id with 128 random bits, like the platform's.
pub fn message_id() -> String {
    format!("msg_{}", URL_SAFE_NO_PAD.encode(random_bytes()))
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
    let webhook_id = message_id();
    let timestamp = OffsetDateTime::now_utc().unix_timestamp();
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
        assert_ne!(message_id(), message_id());
    }
}
