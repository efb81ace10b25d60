//! Group commit. Handlers queue their delivery and wait; the writer task takes whatever has queued
//! up — at once, without waiting for more — and records it as one batch in one transaction, then
//! answers every handler in it. A lone delivery is written as soon as it arrives; under load,
//! deliveries that arrive while a batch commits form the next one, so the commit's cost is shared
//! and throughput is no longer bounded by one transaction per delivery.
//!
//! The queue is bounded: when the writer falls behind, handlers wait for room (backpressure), and
//! past `QUEUE_WAIT` are answered 503 with nothing recorded.
//!
//! Each delivery carries its request's deadline, when the handler answers 503 whatever happens. A
//! batch that has not committed by the earliest deadline in it is abandoned, and the store makes
//! sure nothing of it commits later, so a delivery answered 503 is not recorded behind the
//! sender's back.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::IngestError;
use crate::metrics;
use crate::store::{NewDelivery, Outcome, Store, StoreError};

/// The most deliveries one transaction writes.
pub const MAX_BATCH: usize = 256;
/// Deliveries queued beyond those being written.
const QUEUE: usize = 4 * MAX_BATCH;
/// The least time a delivery must have left before its deadline to join a batch. Batches commit in
/// milliseconds; one with less time left than this would likely time out inside the batch, and
/// abandon the batch with it.
const MIN_TIME_TO_WRITE: Duration = Duration::from_millis(100);
/// How long a delivery may wait for room in the queue before it is refused.
const QUEUE_WAIT: Duration = Duration::from_secs(5);

/// Where handlers hand their deliveries; cheap to clone.
#[derive(Clone)]
pub struct Writer {
    queue: mpsc::Sender<Pending>,
}

struct Pending {
    delivery: NewDelivery,
    deadline: Instant,
    done: oneshot::Sender<Result<Outcome, Arc<StoreError>>>,
}

impl Writer {
    /// Starts the writer task; it ends when every `Writer` is dropped.
    pub fn start(store: Store) -> Self {
        let (queue, receiver) = mpsc::channel(QUEUE);
        tokio::spawn(write_batches(store, receiver));
        Self { queue }
    }

    /// Records a delivery with others; `Ok` once the transaction holding it has committed, which
    /// it does before `deadline` or not at all.
    pub async fn record(
        &self,
        delivery: NewDelivery,
        deadline: Instant,
    ) -> Result<Outcome, IngestError> {
        let wait_until = deadline.min(Instant::now() + QUEUE_WAIT);
        let room = tokio::time::timeout_at(wait_until, self.queue.reserve()).await;
        let Ok(Ok(room)) = room else {
            return Err(IngestError::Busy);
        };
        let (done, outcome) = oneshot::channel();
        room.send(Pending {
            delivery,
            deadline,
            done,
        });
        match outcome.await {
            Ok(Ok(outcome)) => Ok(outcome),
            Ok(Err(error)) => Err(IngestError::Store(error)),
            // The writer task is gone (it panicked): whether the batch committed is unknown, so
            // the sender should retry; a retry that finds it recorded is a duplicate.
            Err(_) => Err(IngestError::Busy),
        }
    }
}

/// One batch at a time: everything queued, up to a batch, or else the next delivery to arrive.
/// With the service and Postgres on one 2-core machine, one writer wrote 15–45 % more per second
/// than two or four, at 16, 64 and 256 connections: a second halves the batches, and the CPU it
/// would need is the HTTP side's. Postgres alone takes 1.7–1.9 times as much from two writers
/// as from one (docs/benchmarks.md), so where the database has cores of its own, measure again.
async fn write_batches(store: Store, mut queue: mpsc::Receiver<Pending>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        if queue.recv_many(&mut batch, MAX_BATCH).await == 0 {
            return;
        }
        let ripe = refuse_late(&mut batch, Instant::now());
        let Some(deadline) = ripe.iter().map(|pending| pending.deadline).min() else {
            continue;
        };
        let (deliveries, waiting): (Vec<_>, Vec<_>) = ripe
            .into_iter()
            .map(|pending| (pending.delivery, pending.done))
            .unzip();
        metrics::batch_size(deliveries.len());
        // The store makes sure a batch abandoned here leaves nothing behind.
        let recorded = tokio::time::timeout_at(deadline, store.record(&deliveries, deadline))
            .await
            .unwrap_or(Err(StoreError::Deadline));
        match recorded {
            Ok(outcomes) => {
                for (done, outcome) in waiting.into_iter().zip(outcomes) {
                    // A handler that has gone (its client left, or it timed out) needs no answer.
                    let _ = done.send(Ok(outcome));
                }
            }
            Err(error) => {
                tracing::error!(%error, deliveries = deliveries.len(), "a batch failed; nothing of it was recorded");
                let error = Arc::new(error);
                for done in waiting {
                    let _ = done.send(Err(error.clone()));
                }
            }
        }
    }
}

/// Takes the deliveries with time left to be written, and refuses the others at once, unwritten. A
/// batch is abandoned at its earliest deadline, so a delivery about to time out must not join one
/// and take the others down with it.
fn refuse_late(batch: &mut Vec<Pending>, now: Instant) -> Vec<Pending> {
    let (ripe, late): (Vec<_>, Vec<_>) = batch
        .drain(..)
        .partition(|pending| pending.deadline >= now + MIN_TIME_TO_WRITE);
    for pending in late {
        let _ = pending.done.send(Err(Arc::new(StoreError::Deadline)));
    }
    ripe
}

#[cfg(test)]
mod tests {
    use time::OffsetDateTime;

    use super::*;
    use crate::domain::{Prediction, Progress, WebhookId};

    fn pending(
        deadline: Instant,
    ) -> (Pending, oneshot::Receiver<Result<Outcome, Arc<StoreError>>>) {
        let body = r#"{"id":"p1","status":"starting"}"#.to_owned();
        let prediction = Prediction::parse(&body).unwrap();
        let (done, answer) = oneshot::channel();
        let delivery = NewDelivery {
            webhook_id: WebhookId::parse("msg_1").unwrap(),
            webhook_timestamp: 1,
            progress: Progress::new(prediction.status.as_ref(), 0, 1),
            prediction,
            body,
            received_at: OffsetDateTime::UNIX_EPOCH,
        };
        (
            Pending {
                delivery,
                deadline,
                done,
            },
            answer,
        )
    }

    #[test]
    fn a_delivery_about_to_time_out_is_refused_and_does_not_join_the_batch() {
        let now = Instant::now();
        let (late, mut late_answer) = pending(now + Duration::from_millis(20));
        let (ripe, mut ripe_answer) = pending(now + Duration::from_secs(30));
        let mut batch = vec![late, ripe];
        let kept = refuse_late(&mut batch, now);
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].deadline, now + Duration::from_secs(30));
        assert!(matches!(
            late_answer.try_recv(),
            Ok(Err(error)) if matches!(*error, StoreError::Deadline)
        ));
        assert!(
            ripe_answer.try_recv().is_err(),
            "the ripe one is still to be written"
        );
    }
}
