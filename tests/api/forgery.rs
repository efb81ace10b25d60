//! Forgery: every way we know to get a delivery in without the secret, over HTTP, against the real
//! verifier. Each must be refused with 401 and write nothing; the genuine delivery, sent last, must
//! get in — so the harness can tell a refusal from a broken request.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use prediction_inbox::verify::Secret;
use reqwest::StatusCode;
use support::{Backend, Delivery, now, prediction, spawn_app};

/// A request's three webhook headers (several signature headers allowed) and its body.
struct Attempt {
    case: &'static str,
    headers: Vec<(&'static str, String)>,
    body: String,
}

async fn every_forgery_is_refused_and_the_genuine_delivery_is_not(backend: Backend) {
    let app = spawn_app(backend).await;
    let genuine = Delivery::new(prediction("p1", "succeeded", "done"));
    let (id, ts, body) = (
        genuine.webhook_id.clone(),
        genuine.timestamp.to_string(),
        genuine.body.clone(),
    );
    let signature = app.signature(&genuine);
    let mac = signature.strip_prefix("v1,").unwrap().to_owned();
    let mac_bytes = STANDARD.decode(&mac).unwrap();
    let other: Secret = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD".parse().unwrap();
    let sign_as =
        |secret: &Secret, id: &str, ts: i64, body: &str| secret.sign(id, ts, body.as_bytes());
    let our: Secret = support::SECRET.parse().unwrap();
    let attempt = |case, id: &str, ts: &str, signatures: &[&str], body: &str| Attempt {
        case,
        headers: [
            ("webhook-id", id.to_owned()),
            ("webhook-timestamp", ts.to_owned()),
        ]
        .into_iter()
        .chain(
            signatures
                .iter()
                .map(|s| ("webhook-signature", (*s).to_owned())),
        )
        .collect(),
        body: body.to_owned(),
    };
    let stale = now() - 3600;
    let future = now() + 3600;
    let mut long = mac_bytes.clone();
    long.extend_from_slice(&[0; 8]);
    let attempts = vec![
        attempt(
            "body with a space added",
            &id,
            &ts,
            &[&signature],
            &format!("{body} "),
        ),
        attempt(
            "body with a field changed",
            &id,
            &ts,
            &[&signature],
            &body.replace("done", "dune"),
        ),
        attempt("empty body", &id, &ts, &[&signature], ""),
        attempt(
            "another prediction's body",
            &id,
            &ts,
            &[&signature],
            &prediction("p2", "succeeded", "done"),
        ),
        attempt("id changed", &format!("{id}x"), &ts, &[&signature], &body),
        attempt("empty id", "", &ts, &[&signature], &body),
        attempt(
            "timestamp changed",
            &id,
            &(genuine.timestamp + 1).to_string(),
            &[&signature],
            &body,
        ),
        attempt("timestamp not a number", &id, "1e9", &[&signature], &body),
        attempt(
            "timestamp overflowing",
            &id,
            "99999999999999999999",
            &[&signature],
            &body,
        ),
        attempt("negative timestamp", &id, "-1", &[&signature], &body),
        attempt(
            "wrong secret",
            &id,
            &ts,
            &[&sign_as(&other, &id, genuine.timestamp, &body)],
            &body,
        ),
        attempt("empty signature", &id, &ts, &[""], &body),
        attempt("v1, and nothing after", &id, &ts, &["v1,"], &body),
        attempt(
            "short signature",
            &id,
            &ts,
            &[&format!("v1,{}", STANDARD.encode(&mac_bytes[..16]))],
            &body,
        ),
        attempt(
            "long signature",
            &id,
            &ts,
            &[&format!("v1,{}", STANDARD.encode(&long))],
            &body,
        ),
        attempt("garbage signature", &id, &ts, &["v1,!!not*base64!!"], &body),
        attempt(
            "all-zero signature",
            &id,
            &ts,
            &[&format!("v1,{}", STANDARD.encode([0u8; 32]))],
            &body,
        ),
        attempt("no label", &id, &ts, &[&mac], &body),
        attempt(
            "valid MAC under v2,",
            &id,
            &ts,
            &[&format!("v2,{mac}")],
            &body,
        ),
        attempt(
            "valid MAC under V1,",
            &id,
            &ts,
            &[&format!("V1,{mac}")],
            &body,
        ),
        attempt(
            "valid MAC under v1a,",
            &id,
            &ts,
            &[&format!("v1a,{mac}")],
            &body,
        ),
        attempt(
            "valid MAC with the label after",
            &id,
            &ts,
            &[&format!("{mac},v1")],
            &body,
        ),
        attempt(
            "several signature headers, none valid",
            &id,
            &ts,
            &["v1,AAAA", &format!("v2,{mac}"), "garbage"],
            &body,
        ),
        attempt(
            "stale timestamp, correctly signed",
            &id,
            &stale.to_string(),
            &[&sign_as(&our, &id, stale, &body)],
            &body,
        ),
        attempt(
            "future timestamp, correctly signed",
            &id,
            &future.to_string(),
            &[&sign_as(&our, &id, future, &body)],
            &body,
        ),
        attempt(
            "replay: new timestamp, old signature",
            &id,
            &now().saturating_add(5).to_string(),
            &[&signature],
            &body,
        ),
        attempt(
            "replay of a stale capture, as captured",
            &id,
            &stale.to_string(),
            &[&sign_as(&our, &id, stale, &body)],
            &body,
        ),
        attempt("no signature header", &id, &ts, &[], &body),
    ];
    let tried = attempts.len();
    for attempt in attempts {
        let mut request = app
            .client
            .post(format!("{}/webhooks/replicate", app.address))
            .header("content-type", "application/json")
            .body(attempt.body.clone());
        for (name, value) in &attempt.headers {
            request = request.header(*name, value);
        }
        let status = request.send().await.expect("send").status();
        assert_eq!(status, StatusCode::UNAUTHORIZED, "bypass: {}", attempt.case);
    }
    // Header names are case-insensitive in HTTP: these are the genuine delivery, and verify.
    assert_eq!(app.count("deliveries").await, 0);
    let response = app
        .client
        .post(format!("{}/webhooks/replicate", app.address))
        .header("WEBHOOK-ID", &id)
        .header("Webhook-Timestamp", &ts)
        .header("webhook-SIGNATURE", format!("v2,{mac} {signature}"))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(app.prediction("p1").await.as_deref(), Some(body.as_str()));
    assert_eq!(app.count("deliveries").await, 1);
    println!("forgery cases tried: {tried}; bypasses: 0");
}

support::on_each_backend!(every_forgery_is_refused_and_the_genuine_delivery_is_not);
