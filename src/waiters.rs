//! Wake-ups for requests waiting on a prediction (`Prefer: wait`, the event stream), without
//! polling: every replica listens on one Postgres connection for the notifications the ingest
//! transaction sends on commit, and fans each out in-process to the waiters of that prediction.
//!
//! A waiter registers *before* it reads the state, so a change committed between its read and its
//! wait still wakes it. A notification carries whether the change made the prediction terminal,
//! so a `Prefer: wait` sleeps through every `processing` change and an event stream wakes for each.
//! A wake-up carries no state: the waiter re-reads it, so a wake-up may be spurious but never
//! stale, and a parked waiter holds no body. When the listening connection drops, every waiter is
//! woken once it is listening again, which covers whatever was committed during the gap.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;

use crate::store::{Change, Store};

/// The registry of waiters of this process. Cheap to clone.
#[derive(Clone)]
pub struct Waiters {
    inner: Arc<Inner>,
}

/// What a waiter wants to be woken for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interest {
    /// Every committed change of its prediction (an event stream).
    Every,
    /// Only the change that makes it terminal (`Prefer: wait`).
    Terminal,
}

/// Who is waiting: the index of the caller's token, for the per-token cap.
pub type Caller = usize;

struct Inner {
    /// Per prediction id: a generation counter for every change and one for terminal changes, each
    /// bumped on a wake-up and made when its first waiter comes, and how many wait on them.
    waiting: Mutex<HashMap<Arc<str>, Waiting>>,
    count: AtomicUsize,
    max: usize,
    /// Waiters per caller, and the most one caller may park.
    by_caller: Mutex<HashMap<Caller, usize>>,
    max_per_caller: Option<usize>,
    closed: AtomicBool,
    /// Where the ids of predictions that became terminal go, for a worker that wants them (the
    /// archiver): bounded, and dropped when full, so ingest never waits on it.
    finished: std::sync::OnceLock<tokio::sync::mpsc::Sender<String>>,
}

#[derive(Default)]
struct Waiting {
    every: Option<Arc<Generation>>,
    terminal: Option<Arc<Generation>>,
    waiters: usize,
}

/// A count of wake-ups, which each waiter compares with the last it saw, and the means to wake
/// them: some 60 bytes where a `watch` channel is some 350, for each prediction waited on.
#[derive(Default)]
struct Generation {
    count: AtomicU64,
    woken: Notify,
}

/// Why a waiter could not be registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The process has as many waiters as it takes.
    Full,
    /// This caller has as many as one caller may park.
    CallerFull,
    /// The process is shutting down.
    Closed,
}

impl Waiters {
    /// `max` bounds the waiters parked at once across all predictions, and `max_per_caller` those
    /// of any one caller.
    pub fn new(max: usize, max_per_caller: Option<usize>) -> Self {
        Self {
            inner: Arc::new(Inner {
                waiting: Mutex::new(HashMap::new()),
                count: AtomicUsize::new(0),
                max,
                by_caller: Mutex::new(HashMap::new()),
                max_per_caller,
                closed: AtomicBool::new(false),
                finished: std::sync::OnceLock::new(),
            }),
        }
    }

    /// Registers a waiter of `caller` on `id`.
    pub fn register(
        &self,
        id: &str,
        interest: Interest,
        caller: Caller,
    ) -> Result<Registration, Refused> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(Refused::Closed);
        }
        if let Some(most) = self.inner.max_per_caller {
            let mut by_caller = lock(&self.inner.by_caller);
            let parked = by_caller.entry(caller).or_default();
            if *parked >= most {
                return Err(Refused::CallerFull);
            }
            *parked += 1;
        }
        let reserved = self
            .inner
            .count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.inner.max).then_some(n + 1)
            });
        if reserved.is_err() {
            self.release_caller(caller);
            return Err(Refused::Full);
        }
        let mut waiting = self.lock();
        // The map's key is shared with the registration: one copy of the id for all its waiters.
        let entry = waiting.entry(Arc::from(id));
        let id = Arc::clone(entry.key());
        let entry = entry.or_default();
        entry.waiters += 1;
        // A wait on a prediction has no use for the other generation.
        let generation = Arc::clone(
            match interest {
                Interest::Every => &mut entry.every,
                Interest::Terminal => &mut entry.terminal,
            }
            .get_or_insert_default(),
        );
        // Read under the lock that every wake-up takes: what is seen here is not missed.
        let seen = generation.count.load(Ordering::Acquire);
        Ok(Registration {
            changes: self.clone(),
            id,
            caller,
            generation,
            seen,
        })
    }

    fn release_caller(&self, caller: Caller) {
        if self.inner.max_per_caller.is_some() {
            let mut by_caller = lock(&self.inner.by_caller);
            if let Some(parked) = by_caller.get_mut(&caller) {
                *parked -= 1;
                if *parked == 0 {
                    by_caller.remove(&caller);
                }
            }
        }
    }

    /// Waiters parked now.
    pub fn count(&self) -> usize {
        self.inner.count.load(Ordering::Acquire)
    }

    /// The ids of predictions that become terminal from now on, as this process hears of them
    /// (from any replica), at most `bound` held; an id that finds it full is dropped, so the
    /// reader must have another way to find what it missed. One reader: `None` once taken.
    pub fn finished(&self, bound: usize) -> Option<tokio::sync::mpsc::Receiver<String>> {
        let (sender, receiver) = tokio::sync::mpsc::channel(bound);
        self.inner.finished.set(sender).ok().map(|()| receiver)
    }

    /// Wakes the waiters interested in this change of a prediction.
    pub fn wake(&self, change: &Change) {
        if change.terminal {
            if let Some(finished) = self.inner.finished.get() {
                let _ = finished.try_send(change.id.clone());
            }
        }
        if let Some(waiting) = self.lock().get(change.id.as_str()) {
            bump(&waiting.every);
            if change.terminal {
                bump(&waiting.terminal);
            }
        }
    }

    /// Wakes every waiter, to re-read what a gap in listening may have hidden.
    pub fn wake_all(&self) {
        for waiting in self.lock().values() {
            bump(&waiting.every);
            bump(&waiting.terminal);
        }
    }

    /// Ends every wait now and refuses new ones: waits answer with the current state and event
    /// streams close, so a graceful shutdown is not held up by them.
    pub fn close(&self) {
        self.inner.closed.store(true, Ordering::Release);
        self.wake_all();
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Arc<str>, Waiting>> {
        lock(&self.inner.waiting)
    }
}

/// Wakes the waiters on `generation`, if any ever came.
fn bump(generation: &Option<Arc<Generation>>) {
    if let Some(generation) = generation {
        generation.count.fetch_add(1, Ordering::AcqRel);
        generation.woken.notify_waiters();
    }
}

/// The maps stay consistent even if a holder panicked: each update is a single step.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One waiter's interest in one prediction; dropping it (the client went away, the wait ended)
/// removes the waiter at once.
pub struct Registration {
    changes: Waiters,
    id: Arc<str>,
    caller: Caller,
    generation: Arc<Generation>,
    /// The generation's count at the last wake-up this waiter saw.
    seen: u64,
}

impl Registration {
    /// Resolves at the next wake-up after the last one seen: `true` to re-read the state, `false`
    /// when the process is shutting down and the wait should end.
    pub async fn changed(&mut self) -> bool {
        let generation = &self.generation;
        loop {
            // Made before the count is read: a wake-up in between still reaches it.
            let woken = generation.woken.notified();
            let count = generation.count.load(Ordering::Acquire);
            if count != self.seen {
                self.seen = count;
                return !self.changes.inner.closed.load(Ordering::Acquire);
            }
            woken.await;
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut waiting = self.changes.lock();
        if let Some(entry) = waiting.get_mut(&*self.id) {
            entry.waiters -= 1;
            if entry.waiters == 0 {
                waiting.remove(&*self.id);
            }
        }
        drop(waiting);
        self.changes.inner.count.fetch_sub(1, Ordering::AcqRel);
        self.changes.release_caller(self.caller);
    }
}

/// Listens for committed changes for as long as the process runs, reconnecting with backoff.
pub async fn listen(store: Arc<dyn Store>, changes: Waiters) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match store.change_feed().await {
            Ok(mut listener) => {
                tracing::info!("listening for committed changes");
                backoff = Duration::from_millis(100);
                // Anything committed before LISTEN took effect reaches its waiters this way.
                changes.wake_all();
                loop {
                    match listener.next().await {
                        Ok(Some(change)) => changes.wake(&change),
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

    fn change(id: &str, terminal: bool) -> Change {
        Change {
            id: id.into(),
            terminal,
        }
    }

    #[tokio::test]
    async fn wakes_only_the_waiters_of_that_prediction() {
        let waiters = Waiters::new(10, None);
        let mut a = waiters.register("a", Interest::Every, 0).unwrap();
        let mut b = waiters.register("b", Interest::Every, 0).unwrap();
        waiters.wake(&change("a", false));
        assert!(a.changed().await);
        let b_woke = tokio::time::timeout(Duration::from_millis(50), b.changed()).await;
        assert!(b_woke.is_err());
    }

    #[tokio::test]
    async fn a_waiter_for_the_end_sleeps_through_every_other_change() {
        let waiters = Waiters::new(10, None);
        let mut stream = waiters.register("a", Interest::Every, 0).unwrap();
        let mut wait = waiters.register("a", Interest::Terminal, 0).unwrap();
        waiters.wake(&change("a", false));
        assert!(stream.changed().await);
        let woke = tokio::time::timeout(Duration::from_millis(50), wait.changed()).await;
        assert!(woke.is_err(), "a processing change woke a wait");
        waiters.wake(&change("a", true));
        assert!(wait.changed().await && stream.changed().await);
    }

    #[tokio::test]
    async fn a_parked_waiter_is_woken() {
        let waiters = Waiters::new(10, None);
        let mut a = waiters.register("a", Interest::Terminal, 0).unwrap();
        let mut changed = std::pin::pin!(a.changed());
        let parked = std::future::poll_fn(|cx| {
            std::task::Poll::Ready(changed.as_mut().poll(cx).is_pending())
        });
        assert!(parked.await, "nothing has changed yet");
        waiters.wake(&change("a", true));
        let woken = tokio::time::timeout(Duration::from_secs(5), changed).await;
        assert!(woken.expect("woken"));
    }

    #[tokio::test]
    async fn a_wake_before_the_wait_is_not_lost() {
        let waiters = Waiters::new(10, None);
        let mut a = waiters.register("a", Interest::Terminal, 0).unwrap();
        waiters.wake(&change("a", true));
        assert!(
            tokio::time::timeout(Duration::from_secs(1), a.changed())
                .await
                .unwrap()
        );
    }

    #[test]
    fn dropping_registrations_leaves_nothing_behind_and_the_caps_hold() {
        let waiters = Waiters::new(3, Some(2));
        let first = waiters.register("a", Interest::Every, 7).unwrap();
        let second = waiters.register("a", Interest::Terminal, 7).unwrap();
        assert_eq!(
            waiters.register("b", Interest::Every, 7).err(),
            Some(Refused::CallerFull)
        );
        let other = waiters.register("b", Interest::Every, 8).unwrap();
        assert_eq!(
            waiters.register("c", Interest::Every, 9).err(),
            Some(Refused::Full)
        );
        assert_eq!(waiters.count(), 3);
        drop((first, other));
        assert_eq!(waiters.lock().len(), 1);
        drop(second);
        assert_eq!((waiters.count(), waiters.lock().len()), (0, 0));
        assert!(lock(&waiters.inner.by_caller).is_empty());
        assert!(waiters.register("b", Interest::Every, 7).is_ok());
    }

    #[tokio::test]
    async fn closing_ends_every_wait_and_refuses_new_ones() {
        let waiters = Waiters::new(10, None);
        let mut a = waiters.register("a", Interest::Terminal, 0).unwrap();
        waiters.close();
        assert!(!a.changed().await);
        assert_eq!(
            waiters.register("a", Interest::Every, 0).err(),
            Some(Refused::Closed)
        );
    }
}
