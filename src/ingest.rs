//! From a verified delivery to a durable fact: read the prediction out of the body, place it in
//! the latest-state order, and record it. Runs only on bodies whose signature has been checked.

use std::time::Instant;

use time::OffsetDateTime;

use crate::domain::{InvalidPrediction, Prediction, Progress};
use crate::metrics;
use crate::store::{NewDelivery, Outcome, Store, StoreError};
use crate::verify::Verified;

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    Invalid(#[from] InvalidPrediction),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Records one delivery. `Ok` means it is committed and may be acknowledged.
pub async fn ingest(
    store: &Store,
    verified: &Verified,
    body: &[u8],
) -> Result<Outcome, IngestError> {
    let started = Instant::now();
    let body = std::str::from_utf8(body).map_err(|_| InvalidPrediction::NotUtf8)?;
    let prediction = Prediction::parse(body)?;
    let progress = Progress::new(
        prediction.status.as_ref(),
        prediction.logs_len,
        verified.timestamp,
    );
    let recorded = store
        .record(&NewDelivery {
            webhook_id: &verified.webhook_id,
            webhook_timestamp: verified.timestamp,
            prediction: &prediction,
            progress,
            body,
            received_at: OffsetDateTime::now_utc(),
        })
        .await;
    let outcome = match recorded {
        Ok(outcome) => outcome,
        Err(error) => {
            metrics::delivery("error");
            return Err(error.into());
        }
    };
    metrics::ingest_duration(started.elapsed());
    metrics::delivery(outcome.as_str());
    tracing::info!(
        prediction_id = %prediction.id,
        webhook_id = %verified.webhook_id,
        status = prediction.status.as_ref().map(|s| s.as_str()),
        outcome = outcome.as_str(),
        "delivery"
    );
    Ok(outcome)
}
