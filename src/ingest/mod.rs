//! From a verified delivery to a durable fact: read the prediction out of the body, place it in
//! the latest-state order, and hand it to the [`Writer`], which commits it with whatever else
//! arrived meanwhile. Runs only on bodies whose signature has been checked.

mod writer;

use std::sync::Arc;
use std::time::Instant as Started;

use tokio::time::Instant;

use crate::domain::{InvalidPrediction, Prediction};
use crate::metrics;
use crate::store::{NewDelivery, Outcome, Source, StoreError};
use crate::verify::Verified;

pub use writer::{BatchWriter, Faults, MAX_BATCH_BYTES, Writer};

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    Invalid(#[from] InvalidPrediction),
    /// The batch holding the delivery failed; nothing of it was recorded.
    #[error(transparent)]
    Store(Arc<StoreError>),
    /// The writer is behind and its queue stayed full past the bound; nothing was recorded.
    #[error("{}", IngestError::BUSY)]
    Busy,
}

impl IngestError {
    /// What a sender is told when the writer is behind.
    pub const BUSY: &'static str = "too many deliveries are waiting to be written; retry later";
}

/// Records one delivery before `deadline`. `Ok` means it is committed and may be acknowledged;
/// an error means it was not recorded (but for a commit that races the deadline, which the
/// sender's retry then finds as a duplicate).
pub async fn ingest(
    writer: &Writer,
    verified: Verified,
    body: Vec<u8>,
    deadline: Instant,
) -> Result<Outcome, IngestError> {
    let started = Started::now();
    let body = String::from_utf8(body).map_err(|_| InvalidPrediction::NotUtf8)?;
    let prediction = Prediction::parse(&body)?;
    let delivery = NewDelivery::new(prediction, verified.webhook_id, verified.timestamp, body);
    commit(writer, delivery, deadline, started).await
}

/// Records a prediction object the platform answered the service with (a create, a cancel, a
/// reconciling read), as a delivery of `source`, through the same order as a webhook's.
pub async fn record_answer(
    writer: &Writer,
    source: Source,
    body: String,
    deadline: Instant,
) -> Result<Outcome, IngestError> {
    let started = Started::now();
    let prediction = Prediction::parse(&body)?;
    commit(
        writer,
        NewDelivery::own(source, prediction, body),
        deadline,
        started,
    )
    .await
}

async fn commit(
    writer: &Writer,
    delivery: NewDelivery,
    deadline: Instant,
    started: Started,
) -> Result<Outcome, IngestError> {
    let prediction_id = delivery.prediction.id.clone();
    let status = delivery.prediction.status.clone();
    let webhook_id = delivery.webhook_id().clone();
    let source = delivery.source;
    let outcome = match writer.record(delivery, deadline).await {
        Ok(outcome) => outcome,
        Err(error) => {
            metrics::delivery("error");
            return Err(error);
        }
    };
    metrics::ingest_duration(started.elapsed());
    metrics::delivery(outcome.as_str());
    tracing::info!(
        prediction_id = %prediction_id,
        %webhook_id,
        source = source.as_str(),
        status = status.as_ref().map(|s| s.as_str()),
        outcome = outcome.as_str(),
        "delivery"
    );
    Ok(outcome)
}
