//! Continuous load for the reliability tests: senders that deliver fresh predictions' whole lives,
//! one delivery after another, and keep a record of every answer, so that afterwards each 2xx can
//! be checked against what is stored.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prediction_inbox::sample;
use prediction_inbox::verify::Secret;

use super::{SECRET, TOKEN, prediction};

/// A prediction's life, in the order the platform sends it.
pub const LIFE: [&str; 3] = ["starting", "processing", "succeeded"];

/// One delivery sent, and how it was answered.
#[derive(Debug, Clone)]
pub struct Sent {
    pub prediction: String,
    /// Its place in `LIFE`.
    pub step: usize,
    /// The status code, or `None` when no answer came (refused, reset, timed out).
    pub status: Option<u16>,
    pub retry_after: bool,
    /// When the answer (or its absence) was known.
    pub at: Instant,
}

impl Sent {
    pub fn acknowledged(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }
}

pub struct Load {
    stop: Arc<AtomicBool>,
    senders: Vec<tokio::task::JoinHandle<()>>,
    sent: Arc<Mutex<Vec<Sent>>>,
}

impl Load {
    /// `senders` concurrent senders to the service at `address`, each on a connection of its own.
    pub fn start(address: &str, senders: usize, tag: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(Mutex::new(Vec::new()));
        let senders = (0..senders)
            .map(|sender| {
                let (stop, sent) = (stop.clone(), sent.clone());
                let url = format!("{address}/webhooks/replicate");
                let tag = format!("{tag}s{sender}");
                tokio::spawn(send_lives(url, tag, stop, sent))
            })
            .collect();
        Self {
            stop,
            senders,
            sent,
        }
    }

    /// How many deliveries were acknowledged after `since`.
    pub fn acknowledged_since(&self, since: Instant) -> usize {
        let sent = self.sent.lock().unwrap_or_else(|e| e.into_inner());
        sent.iter()
            .filter(|d| d.at > since && d.acknowledged())
            .count()
    }

    /// Stops the senders and returns every delivery they sent.
    pub async fn stop(self) -> Vec<Sent> {
        self.stop.store(true, Ordering::Relaxed);
        for sender in self.senders {
            let _ = sender.await;
        }
        let sent = self.sent.lock().unwrap_or_else(|e| e.into_inner());
        sent.clone()
    }
}

async fn send_lives(url: String, tag: String, stop: Arc<AtomicBool>, sent: Arc<Mutex<Vec<Sent>>>) {
    let secret: Secret = SECRET.parse().expect("test secret");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(1)
        .build()
        .expect("a client");
    let mut life = 0;
    while !stop.load(Ordering::Relaxed) {
        let id = format!("{tag}n{life}");
        life += 1;
        for (step, status) in LIFE.iter().enumerate() {
            let body = prediction(&id, status, &"log line\n".repeat(step));
            let (status, retry_after) = match sample::send(&client, &url, &secret, body).await {
                Ok(answer) => (Some(answer.status), answer.retry_after),
                Err(_) => (None, false),
            };
            let record = Sent {
                prediction: id.clone(),
                step,
                status,
                retry_after,
                at: Instant::now(),
            };
            let acknowledged = record.acknowledged();
            sent.lock().unwrap_or_else(|e| e.into_inner()).push(record);
            if !acknowledged {
                // The platform would retry later; this sender moves on to a fresh prediction.
                tokio::time::sleep(Duration::from_millis(20)).await;
                break;
            }
        }
    }
}

/// Checks every acknowledged delivery against the service at `address`: its prediction is stored
/// at that step of its life or a later one. Returns how many deliveries were acknowledged.
pub async fn verify_acknowledged(address: &str, sent: &[Sent]) -> usize {
    let mut furthest: std::collections::HashMap<&str, usize> = Default::default();
    for delivery in sent.iter().filter(|d| d.acknowledged()) {
        let step = furthest.entry(&delivery.prediction).or_default();
        *step = (*step).max(delivery.step);
    }
    let client = reqwest::Client::new();
    for (id, step) in &furthest {
        let response = client
            .get(format!("{address}/v1/predictions/{id}"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("read back");
        assert_eq!(response.status(), 200, "{id} was acknowledged and is lost");
        let stored: serde_json::Value = response.json().await.expect("JSON");
        let stored_step = LIFE
            .iter()
            .position(|s| stored["status"] == *s)
            .expect("a status of the life");
        assert!(
            stored_step >= *step,
            "{id}: acknowledged at {}, stored at {}",
            LIFE[*step],
            LIFE[stored_step]
        );
    }
    sent.iter().filter(|d| d.acknowledged()).count()
}
