//! Wake-ups for requests waiting on a prediction (`Prefer: wait`, the event stream), without
//! polling: every replica listens on one Postgres connection for the notifications the ingest
//! transaction sends on commit, and fans each out in-process to the waiters of that prediction.
//!
//! A waiter registers *before* it reads the state, so a change committed between its read and its
//! wait still wakes it. A wake-up carries no state: the waiter re-reads it, so a wake-up may be
//! spurious but never stale. When the listening connection drops, every waiter is woken once it is
//! listening again, which covers whatever was committed during the gap.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;

use crate::store::Store;

/// The registry of waiters of this process. Cheap to clone.
#[derive(Clone)]
pub struct Changes {
    inner: Arc<Inner>,
}

struct Inner {
    /// Per prediction id: a generation counter bumped on every wake-up, and how many wait on it.
    waiting: Mutex<HashMap<String, (watch::Sender<u64>, usize)>>,
    count: AtomicUsize,
    max: usize,
    closed: AtomicBool,
}

impl Changes {
    /// `max` bounds the waiters parked at once across all predictions.
    pub fn new(max: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                waiting: Mutex::new(HashMap::new()),
                count: AtomicUsize::new(0),
                max,
                closed: AtomicBool::new(false),
            }),
        }
    }

    /// Registers a waiter on `id`; `None` when the cap is reached or the process is shutting down.
    pub fn register(&self, id: &str) -> Option<Registration> {
        if self.inner.closed.load(Ordering::Acquire) {
            return None;
        }
        let reserved = self
            .inner
            .count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.inner.max).then_some(n + 1)
            });
        if reserved.is_err() {
            return None;
        }
        let mut waiting = self.lock();
        let (sender, waiters) = waiting
            .entry(id.to_owned())
            .or_insert_with(|| (watch::channel(0).0, 0));
        *waiters += 1;
        let receiver = sender.subscribe();
        Some(Registration {
            changes: self.clone(),
            id: id.to_owned(),
            receiver,
        })
    }

    /// Waiters parked now.
    pub fn count(&self) -> usize {
        self.inner.count.load(Ordering::Acquire)
    }

    /// Wakes the waiters of one prediction.
    pub fn wake(&self, id: &str) {
        if let Some((sender, _)) = self.lock().get(id) {
            sender.send_modify(|generation| *generation += 1);
        }
    }

    /// Wakes every waiter, to re-read what a gap in listening may have hidden.
    pub fn wake_all(&self) {
        for (sender, _) in self.lock().values() {
            sender.send_modify(|generation| *generation += 1);
        }
    }

    /// Ends every wait now and refuses new ones: waits answer with the current state and event
    /// streams close, so a graceful shutdown is not held up by them.
    pub fn close(&self) {
        self.inner.closed.store(true, Ordering::Release);
        self.wake_all();
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, (watch::Sender<u64>, usize)>> {
        // The map stays consistent even if a holder panicked: each update is a single step.
        self.inner
            .waiting
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// One waiter's interest in one prediction; dropping it (the client went away, the wait ended)
/// removes the waiter at once.
pub struct Registration {
    changes: Changes,
    id: String,
    receiver: watch::Receiver<u64>,
}

impl Registration {
    /// Resolves at the next wake-up after the last one seen: `true` to re-read the state, `false`
    /// when the process is shutting down and the wait should end.
    pub async fn changed(&mut self) -> bool {
        // The sender lives as long as any registration on this id, this one included.
        self.receiver.changed().await.is_ok() && !self.changes.inner.closed.load(Ordering::Acquire)
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut waiting = self.changes.lock();
        if let Some((_, waiters)) = waiting.get_mut(&self.id) {
            *waiters -= 1;
            if *waiters == 0 {
                waiting.remove(&self.id);
            }
        }
        self.changes.inner.count.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Listens for committed changes for as long as the process runs, reconnecting with backoff.
pub async fn listen(store: Store, changes: Changes) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match store.changes().await {
            Ok(mut listener) => {
                tracing::info!("listening for committed changes");
                backoff = Duration::from_millis(100);
                // Anything committed before LISTEN took effect reaches its waiters this way.
                changes.wake_all();
                loop {
                    match listener.next().await {
                        Ok(Some(id)) => changes.wake(&id),
                        Ok(None) => {
                            tracing::warn!(
                                "the listening connection was replaced; waking every waiter"
                            );
                            changes.wake_all();
                        }
                        Err(error) => {
                            tracing::warn!(%error, "the listening connection failed");
                            break;
                        }
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "cannot listen for changes; retrying"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wakes_only_the_waiters_of_that_prediction() {
        let changes = Changes::new(10);
        let mut a = changes.register("a").unwrap();
        let mut b = changes.register("b").unwrap();
        changes.wake("a");
        assert!(a.changed().await);
        let b_woke = tokio::time::timeout(Duration::from_millis(50), b.changed()).await;
        assert!(b_woke.is_err());
    }

    #[tokio::test]
    async fn a_wake_before_the_wait_is_not_lost() {
        let changes = Changes::new(10);
        let mut a = changes.register("a").unwrap();
        changes.wake("a");
        assert!(
            tokio::time::timeout(Duration::from_secs(1), a.changed())
                .await
                .unwrap()
        );
    }

    #[test]
    fn dropping_registrations_leaves_nothing_behind_and_the_cap_holds() {
        let changes = Changes::new(2);
        let first = changes.register("a").unwrap();
        let second = changes.register("a").unwrap();
        assert!(changes.register("b").is_none());
        assert_eq!(changes.count(), 2);
        drop(first);
        assert_eq!(changes.lock().len(), 1);
        drop(second);
        assert_eq!((changes.count(), changes.lock().len()), (0, 0));
        assert!(changes.register("b").is_some());
    }

    #[tokio::test]
    async fn closing_ends_every_wait_and_refuses_new_ones() {
        let changes = Changes::new(10);
        let mut a = changes.register("a").unwrap();
        changes.close();
        assert!(!a.changed().await);
        assert!(changes.register("a").is_none());
    }
}
