//! Group commit. Handlers queue their delivery and wait; the writer takes whatever has queued up —
//! at once, without waiting for more — and records it as one batch in one transaction, then
//! answers every handler in it. A lone delivery is written as soon as it arrives; under load,
//! deliveries that arrive while a batch commits form the next one, so the commit's cost is shared
//! and throughput is no longer bounded by one transaction per delivery.
//!
//! A batch is bounded by count and by bytes, so one large delivery never makes a statement too
//! large for the database (Postgres takes at most 1 GB in one parameter); a delivery larger than
//! the byte bound is a batch of its own.
//!
//! The queue is bounded: when the writer falls behind, handlers wait for room (backpressure), and
//! past `QUEUE_WAIT` are answered 503 with nothing recorded.
//!
//! Each delivery carries its request's deadline, when the handler answers 503 whatever happens. A
//! batch that has not committed by the earliest deadline in it is abandoned, and the store makes
//! sure nothing of it commits later, so a delivery answered 503 is not recorded behind the
//! sender's back.
//!
//! A batch the database refuses, or whose recording panics, is recorded again in halves, and so on,
//! until what fails is one delivery alone: it is answered 503 and every other one is recorded. The
//! writer runs under the supervisor: should it die, it is started again over the same queue.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::IngestError;
use crate::metrics;
use crate::store::{NewDelivery, Outcome, Store, StoreError};

/// The most deliveries one transaction writes.
pub const MAX_BATCH: usize = 256;
/// The most body bytes one transaction writes, but for a single delivery larger than this.
pub const MAX_BATCH_BYTES: usize = 64 * 1024 * 1024;
/// Deliveries queued beyond those being written.
const QUEUE: usize = 4 * MAX_BATCH;
/// The least time a delivery must have left before its deadline to join a batch. Batches commit in
/// milliseconds; one with less time left than this would likely time out inside the batch, and
/// abandon the batch with it.
const MIN_TIME_TO_WRITE: Duration = Duration::from_millis(100);
/// How long a delivery may wait for room in the queue before it is refused.
const QUEUE_WAIT: Duration = Duration::from_secs(5);

/// Failures a test makes happen in the writer, by what the deliveries hold. The service never sets
/// one; tests do, through `startup::Application::build_with_faults`.
pub trait Faults: Send + Sync + 'static {
    /// What the writer waits for before it takes each batch off the queue: deliveries keep
    /// arriving, and holding their bodies, meanwhile.
    fn hold(&self) -> BoxFuture<'static, ()> {
        Box::pin(std::future::ready(()))
    }

    /// When the writer takes a batch off the queue; a panic here kills the writer.
    fn take(&self, _batch: &[&NewDelivery]) {}

    /// Just before a batch, or a part of one, is recorded: an error fails it as the database would
    /// refuse it, and a panic panics its recording.
    fn record(&self, _batch: &[NewDelivery]) -> Result<(), StoreError> {
        Ok(())
    }
}

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

/// The writer's work, run by the supervisor; a restarted run takes up the same queue.
#[derive(Clone)]
pub struct BatchWriter {
    store: Arc<dyn Store>,
    queue: Arc<Mutex<mpsc::Receiver<Pending>>>,
    faults: Option<Arc<dyn Faults>>,
}

impl Writer {
    /// The handlers' end of the queue, and the writer that empties it.
    pub fn new(store: Arc<dyn Store>, faults: Option<Arc<dyn Faults>>) -> (Self, BatchWriter) {
        let (queue, receiver) = mpsc::channel(QUEUE);
        let writer = BatchWriter {
            store,
            queue: Arc::new(Mutex::new(receiver)),
            faults,
        };
        (Self { queue }, writer)
    }

    /// Deliveries waiting in the queue for the writer to take them.
    pub fn queued(&self) -> usize {
        self.queue.max_capacity() - self.queue.capacity()
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
            // The writer died with the batch (it panicked): whether the batch committed is
            // unknown, so the sender should retry; a retry that finds it recorded is a duplicate.
            Err(_) => Err(IngestError::Busy),
        }
    }
}

impl BatchWriter {
    /// One batch at a time: everything queued, up to a batch, or else the next delivery to arrive;
    /// until `stop`, or until every `Writer` is dropped.
    ///
    /// With the service and Postgres on one 2-core machine, one writer wrote 15–45 % more per
    /// second than two or four (docs/benchmarks.md): a second halves the batches, and the CPU it
    /// would need is the HTTP side's.
    pub async fn run(self, stop: CancellationToken) {
        // A run that panicked dropped its guard; the next one takes the queue over.
        let mut queue = self.queue.lock().await;
        // Received but not yet written, oldest first: what the last batch's byte bound left over.
        let mut received: Vec<Pending> = Vec::with_capacity(MAX_BATCH);
        loop {
            if received.is_empty() {
                let got = tokio::select! {
                    got = queue.recv_many(&mut received, MAX_BATCH) => got,
                    () = stop.cancelled() => return,
                };
                if got == 0 {
                    return;
                }
            }
            if let Some(faults) = &self.faults {
                faults.hold().await;
            }
            let batch = take_batch(&mut received);
            if let Some(faults) = &self.faults {
                let deliveries: Vec<&NewDelivery> = batch.iter().map(|p| &p.delivery).collect();
                faults.take(&deliveries);
            }
            let ripe = refuse_late(batch, Instant::now());
            let Some(deadline) = ripe.iter().map(|pending| pending.deadline).min() else {
                continue;
            };
            let (deliveries, waiting): (Vec<_>, Vec<_>) = ripe
                .into_iter()
                .map(|pending| (pending.delivery, pending.done))
                .unzip();
            metrics::batch_size(deliveries.len());
            let recorded = self.record_isolating(&deliveries, deadline).await;
            for (done, result) in waiting.into_iter().zip(recorded) {
                // A handler that has gone (its client left, or it timed out) needs no answer.
                let _ = done.send(result);
            }
        }
    }

    /// Records `deliveries`; if the database refuses them or the recording panics, records each
    /// half the same way, so that only the deliveries at fault fail.
    fn record_isolating<'a>(
        &'a self,
        deliveries: &'a [NewDelivery],
        deadline: Instant,
    ) -> BoxFuture<'a, Vec<Result<Outcome, Arc<StoreError>>>> {
        Box::pin(async move {
            let recorded = AssertUnwindSafe(self.record(deliveries, deadline))
                .catch_unwind()
                .await
                .unwrap_or(Err(StoreError::Panicked));
            let error = match recorded {
                Ok(outcomes) => return outcomes.into_iter().map(Ok).collect(),
                Err(error) if deliveries.len() > 1 && error.may_be_the_data() => error,
                Err(error) => {
                    tracing::error!(%error, deliveries = deliveries.len(), "a batch failed; nothing of it was recorded");
                    let error = Arc::new(error);
                    return deliveries.iter().map(|_| Err(error.clone())).collect();
                }
            };
            tracing::warn!(%error, deliveries = deliveries.len(), "a batch failed; recording it in halves");
            let (first, second) = deliveries.split_at(deliveries.len() / 2);
            // In order, as one after another: the answers stay those of serial recording.
            let mut outcomes = self.record_isolating(first, deadline).await;
            outcomes.extend(self.record_isolating(second, deadline).await);
            outcomes
        })
    }

    async fn record(
        &self,
        deliveries: &[NewDelivery],
        deadline: Instant,
    ) -> Result<Vec<Outcome>, StoreError> {
        if let Some(faults) = &self.faults {
            faults.record(deliveries)?;
        }
        // The store makes sure a batch abandoned here leaves nothing behind.
        tokio::time::timeout_at(deadline, self.store.record(deliveries, deadline))
            .await
            .unwrap_or(Err(StoreError::Deadline))
    }
}

/// The next batch from the front of `received`: as many as fit `MAX_BATCH` and `MAX_BATCH_BYTES`,
/// and always at least one.
fn take_batch(received: &mut Vec<Pending>) -> Vec<Pending> {
    let mut bytes = 0;
    let mut count = 0;
    for pending in received.iter().take(MAX_BATCH) {
        bytes += pending.delivery.body.len();
        if count > 0 && bytes > MAX_BATCH_BYTES {
            break;
        }
        count += 1;
    }
    received.drain(..count).collect()
}

/// Takes the deliveries with time left to be written, and refuses the others at once, unwritten. A
/// batch is abandoned at its earliest deadline, so a delivery about to time out must not join one
/// and take the others down with it.
fn refuse_late(batch: Vec<Pending>, now: Instant) -> Vec<Pending> {
    let (ripe, late): (Vec<_>, Vec<_>) = batch
        .into_iter()
        .partition(|pending| pending.deadline >= now + MIN_TIME_TO_WRITE);
    for pending in late {
        let _ = pending.done.send(Err(Arc::new(StoreError::Deadline)));
    }
    ripe
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Prediction, WebhookId};

    fn pending(
        deadline: Instant,
        body_bytes: usize,
    ) -> (Pending, oneshot::Receiver<Result<Outcome, Arc<StoreError>>>) {
        let body = format!(
            r#"{{"id":"p1","status":"starting","logs":"{}"}}"#,
            "x".repeat(body_bytes)
        );
        let prediction = Prediction::parse(&body).unwrap();
        let (done, answer) = oneshot::channel();
        let delivery = NewDelivery::new(prediction, WebhookId::parse("msg_1").unwrap(), 1, body);
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
        let (late, mut late_answer) = pending(now + Duration::from_millis(20), 0);
        let (ripe, mut ripe_answer) = pending(now + Duration::from_secs(30), 0);
        let kept = refuse_late(vec![late, ripe], now);
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

    #[test]
    fn batches_are_bounded_by_bytes_and_a_large_delivery_goes_alone() {
        let later = Instant::now() + Duration::from_secs(30);
        let sizes = [
            MAX_BATCH_BYTES / 2,
            MAX_BATCH_BYTES / 2,
            10,
            MAX_BATCH_BYTES * 2,
            10,
        ];
        let mut received: Vec<Pending> = sizes.iter().map(|&n| pending(later, n).0).collect();
        let mut batches = Vec::new();
        while !received.is_empty() {
            batches.push(take_batch(&mut received).len());
        }
        // Half the bound each, and the JSON around their logs takes the two past it.
        assert_eq!(batches, [1, 2, 1, 1]);
    }
}
