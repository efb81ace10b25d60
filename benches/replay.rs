//! A deterministic replay of the ingest path, for a figure the machine's speed does not move: a
//! fixed set of signed deliveries goes through verification, parsing and a batch's plan, as the
//! service takes them, on one thread, with no network and no database. Counted in instructions by
//! callgrind, which repeats to the instruction whatever else the machine does:
//!
//!     tools/replay.sh                  # instructions per delivery
//!     cargo bench --bench replay       # runs it once, untimed: a check that it works
//!
//! The deliveries: 500 predictions, each through the fixtures' life (starting, processing,
//! processing with output, succeeded), interleaved as the platform sends many at once; every
//! tenth delivery sent twice, as the platform's retries do. In batches of 64, as the writer takes
//! them.

use std::collections::HashSet;
use std::hint::black_box;
use std::path::Path;

use axum::http::{HeaderMap, HeaderValue};
use prediction_inbox::domain::Prediction;
use prediction_inbox::store::{BatchPlan, NewDelivery, Outcome};
use prediction_inbox::verify::{Secret, Verifier};
use serde_json::Value;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const PREDICTIONS: usize = 500;
const BATCH: usize = 64;
/// The replay's clock: every delivery was sent within the tolerance of it.
const NOW: i64 = 1_764_000_000;
const LIFE: [&str; 4] = [
    "01-starting.json",
    "02-processing.json",
    "03-processing-output.json",
    "04-succeeded.json",
];

/// A delivery as it arrives: its headers and its body.
struct Signed {
    headers: HeaderMap,
    body: Vec<u8>,
}

fn main() {
    let deliveries = deliveries();
    let verifier = Verifier::new(vec![secret()], 300);
    let tally = replay(&verifier, &deliveries);
    println!(
        "replayed {} deliveries: {} applied, {} ignored, {} duplicate",
        deliveries.len(),
        tally[0],
        tally[1],
        tally[2]
    );
}

fn secret() -> Secret {
    SECRET.parse().expect("the replay's secret")
}

/// What is measured: each delivery verified, parsed and made a record, and each batch planned.
#[inline(never)]
fn replay(verifier: &Verifier, deliveries: &[Signed]) -> [usize; 3] {
    let mut tally = [0; 3];
    let mut recorded = HashSet::new();
    let mut batch = Vec::with_capacity(BATCH);
    for delivery in deliveries {
        let verified = verifier
            .verify(&delivery.headers, &delivery.body, NOW)
            .expect("a delivery signed with the replay's secret");
        let body = String::from_utf8(delivery.body.clone()).expect("UTF-8");
        let prediction = Prediction::parse(&body).expect("a prediction");
        batch.push(NewDelivery::new(
            prediction,
            verified.webhook_id,
            verified.timestamp,
            body,
        ));
        if batch.len() == BATCH {
            plan(&batch, &mut recorded, &mut tally);
            batch.clear();
        }
    }
    if !batch.is_empty() {
        plan(&batch, &mut recorded, &mut tally);
    }
    tally
}

/// A batch planned as the Postgres store plans it. `recorded` stands for the database: the
/// `webhook-id`s of earlier batches, which the store would find there; and the statement's answer
/// is that every leader beat the stored state, as each delivery here is a later step.
fn plan(batch: &[NewDelivery], recorded: &mut HashSet<String>, tally: &mut [usize; 3]) {
    let seen: Vec<String> = batch
        .iter()
        .map(|delivery| delivery.webhook_id().as_str())
        .filter(|id| recorded.contains(*id))
        .map(str::to_owned)
        .collect();
    let mut plan = BatchPlan::new(batch, &seen);
    let new = plan.new_deliveries();
    let leaders: Vec<String> = new
        .iter()
        .zip(plan.leads())
        .filter(|(_, leads)| *leads)
        .map(|(delivery, _)| delivery.webhook_id().as_str().to_owned())
        .collect();
    recorded.extend(new.iter().map(|d| d.webhook_id().as_str().to_owned()));
    black_box(plan.offered());
    plan.applied(&leaders);
    for outcome in plan.outcomes() {
        tally[match outcome {
            Outcome::Applied => 0,
            Outcome::Ignored => 1,
            Outcome::Duplicate => 2,
        }] += 1;
    }
}

/// The fixed set of deliveries, signed: built the same way on every run.
fn deliveries() -> Vec<Signed> {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let life: Vec<Value> = LIFE
        .iter()
        .map(|name| {
            let text = std::fs::read_to_string(fixtures.join(name)).expect("a fixture");
            serde_json::from_str(&text).expect("a fixture's JSON")
        })
        .collect();
    let secret = secret();
    let mut signed = Vec::new();
    // Step by step across the predictions, as many run at once.
    for (step, fixture) in life.iter().enumerate() {
        for p in 0..PREDICTIONS {
            let mut body = fixture.clone();
            body["id"] = format!("replay{p:020}").into();
            let body = body.to_string().into_bytes();
            let sequence = step * PREDICTIONS + p;
            let id = format!("msg_replay{sequence:017}");
            let timestamp = NOW - 60 + step as i64;
            let mut headers = HeaderMap::new();
            let header = |text: String| HeaderValue::from_str(&text).expect("a header value");
            headers.insert("webhook-id", header(id.clone()));
            headers.insert("webhook-timestamp", header(timestamp.to_string()));
            headers.insert(
                "webhook-signature",
                header(secret.sign(&id, timestamp, &body)),
            );
            if sequence % 10 == 0 {
                signed.push(Signed {
                    headers: headers.clone(),
                    body: body.clone(),
                });
            }
            signed.push(Signed { headers, body });
        }
    }
    signed
}
