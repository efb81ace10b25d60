//! Background work, started, watched and stopped from one place. Every task that runs beside the
//! HTTP server — the batch writer, the change listener, the metrics upkeep, and whatever joins
//! them — is a worker here:
//!
//! - a worker that panics is started again, after a pause that doubles while it keeps failing, and
//!   the restart is counted (`inbox_worker_restarts_total`);
//! - an *essential* worker (one the service cannot answer without) that is not running makes the
//!   service not ready (`/readyz` answers 503) until it runs again;
//! - on shutdown every worker is told to stop, through the token it is started with, and awaited.
//!
//! A worker whose future returns is done and is not started again (a backfill that has finished).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::metrics;

/// The first pause before a failed worker is started again.
const FIRST_RESTART_DELAY: Duration = Duration::from_secs(1);
/// The longest pause between restarts.
const MAX_RESTART_DELAY: Duration = Duration::from_secs(30);
/// A worker that ran this long before failing is started again after the first pause.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// Whether the essential workers are running; cheap to clone.
#[derive(Clone, Default)]
pub struct Health {
    essential: Arc<std::sync::Mutex<Vec<Running>>>,
}

/// One worker's name, and whether it runs now.
type Running = (&'static str, Arc<AtomicBool>);

impl Health {
    /// The names of essential workers not running now.
    pub fn down(&self) -> Vec<&'static str> {
        self.essential
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .filter(|(_, running)| !running.load(Ordering::Acquire))
            .map(|(name, _)| *name)
            .collect()
    }

    fn watch(&self, name: &'static str) -> Arc<AtomicBool> {
        let running = Arc::new(AtomicBool::new(false));
        self.essential
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((name, running.clone()));
        running
    }
}

/// Whether a worker is one the service cannot answer without.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Not running makes the service not ready.
    Essential,
    /// Its absence shows in metrics and logs only.
    Auxiliary,
}

pub struct Supervisor {
    stop: CancellationToken,
    health: Health,
    workers: Vec<JoinHandle<()>>,
}

impl Default for Supervisor {
    fn default() -> Self {
        Self::new()
    }
}

impl Supervisor {
    pub fn new() -> Self {
        Self {
            stop: CancellationToken::new(),
            health: Health::default(),
            workers: Vec::new(),
        }
    }

    pub fn health(&self) -> Health {
        self.health.clone()
    }

    /// Starts `name`, running `work(stop)` until it returns or `stop` is cancelled; if it panics,
    /// starts it again. The worker should return soon after `stop` is cancelled; it is aborted at
    /// its next await point after that anyway.
    pub fn spawn<F, Fut>(&mut self, name: &'static str, role: Role, work: F)
    where
        F: Fn(CancellationToken) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let running = match role {
            Role::Essential => self.health.watch(name),
            Role::Auxiliary => Arc::new(AtomicBool::new(false)),
        };
        let stop = self.stop.clone();
        self.workers.push(tokio::spawn(async move {
            let mut delay = FIRST_RESTART_DELAY;
            loop {
                running.store(true, Ordering::Release);
                metrics::worker_up(name, true);
                let started = Instant::now();
                let mut task = tokio::spawn(work(stop.clone()));
                let ended = tokio::select! {
                    ended = &mut task => ended,
                    () = stop.cancelled() => {
                        // Give it the moment it needs to see the token, then make sure.
                        let ended = tokio::time::timeout(Duration::from_secs(5), &mut task).await;
                        if ended.is_err() {
                            task.abort();
                        }
                        running.store(false, Ordering::Release);
                        return;
                    }
                };
                running.store(false, Ordering::Release);
                metrics::worker_up(name, false);
                match ended {
                    Ok(()) => return,
                    Err(error) if error.is_panic() => {
                        metrics::worker_restarted(name);
                        if started.elapsed() >= HEALTHY_RUN {
                            delay = FIRST_RESTART_DELAY;
                        }
                        tracing::error!(
                            worker = name,
                            ?delay,
                            "the worker panicked; restarting it"
                        );
                    }
                    // Aborted from outside, which only shutdown does.
                    Err(_) => return,
                }
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = stop.cancelled() => return,
                }
                delay = (delay * 2).min(MAX_RESTART_DELAY);
            }
        }));
    }

    /// Tells every worker to stop, and waits until they have.
    pub async fn shutdown(self) {
        self.stop.cancel();
        for worker in self.workers {
            let _ = worker.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_panicking_worker_is_started_again_and_is_down_meanwhile() {
        let mut supervisor = Supervisor::new();
        let health = supervisor.health();
        let runs = Arc::new(AtomicUsize::new(0));
        let counted = runs.clone();
        supervisor.spawn("flaky", Role::Essential, move |stop| {
            let run = counted.fetch_add(1, Ordering::SeqCst);
            async move {
                if run == 0 {
                    panic!("the first run fails");
                }
                stop.cancelled().await;
            }
        });
        // The first run panics, and the worker is down for the pause before the second.
        while runs.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(health.down(), ["flaky"]);
        tokio::time::sleep(FIRST_RESTART_DELAY).await;
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        assert!(health.down().is_empty());
        supervisor.shutdown().await;
    }

    #[tokio::test]
    async fn shutdown_stops_every_worker_and_a_finished_one_is_not_restarted() {
        let mut supervisor = Supervisor::new();
        let runs = Arc::new(AtomicUsize::new(0));
        let counted = runs.clone();
        supervisor.spawn("once", Role::Auxiliary, move |_| {
            counted.fetch_add(1, Ordering::SeqCst);
            async {}
        });
        supervisor.spawn("forever", Role::Essential, |stop| async move {
            stop.cancelled().await;
        });
        supervisor.shutdown().await;
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }
}
