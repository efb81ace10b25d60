//! Builds the whole service from `Settings` — the binary and the tests run the same thing.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::archive::{Archive, Archiver};
use crate::config::Settings;
use crate::http::{self, BodyBudget, Gateway};
use crate::ingest::{Faults, Writer};
use crate::reconcile::{self, Reconciler};
use crate::replicate::Platform;
use crate::retention;
use crate::store::{self, DatabaseUrl, Store, StoreError};
use crate::supervisor::{Role, Supervisor};
use crate::verify::Verifier;
use crate::waiters::{self, Waiters};

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the platform's API cannot be used: {0}")]
    Platform(String),
    #[error("the output archive cannot be used: {0}")]
    Archive(String),
    /// A command that could not do its work.
    #[error("{0}")]
    Command(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A migrated database, a bound listener and the background workers, ready to serve.
pub struct Application {
    listener: TcpListener,
    app: http::App,
    store: Arc<dyn Store>,
    waiters: Waiters,
    supervisor: Supervisor,
    bodies: BodyBudget,
    writer: Writer,
    http: http::Settings,
}

impl Application {
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        Self::build_with_faults(settings, None).await
    }

    /// As `build`, with failures a test makes happen in the batch writer.
    pub async fn build_with_faults(
        settings: Settings,
        faults: Option<Arc<dyn Faults>>,
    ) -> Result<Self, StartupError> {
        // Before anything is counted: metrics recorded with no recorder installed are lost.
        crate::metrics::handle();
        let store = store::open(&settings.database_url, settings.database_pool_size).await?;
        store.migrate().await?;
        tracing::info!(store = %store.describe(), "store ready");
        if matches!(settings.database_url, DatabaseUrl::Sqlite(_)) && in_container() {
            tracing::warn!(
                store = %store.describe(),
                "running on the embedded SQLite store inside a container: mount a volume on its \
                 folder or its state goes with the container, and run one replica only; set \
                 DATABASE_URL to a Postgres database to run several"
            );
        }
        let listener =
            TcpListener::bind(settings.listen)
                .await
                .map_err(|source| StartupError::Bind {
                    addr: settings.listen,
                    source,
                })?;
        let waiters = Waiters::new(settings.max_waiters, settings.max_waiters_per_token);
        let mut supervisor = Supervisor::new();
        let (writer, batch_writer) = Writer::new(store.clone(), faults);
        supervisor.spawn("batch_writer", Role::Essential, move |stop| {
            batch_writer.clone().run(stop)
        });
        let listened = (store.clone(), waiters.clone());
        supervisor.spawn("change_listener", Role::Auxiliary, move |stop| {
            until_stopped(
                stop,
                waiters::listen(listened.0.clone(), listened.1.clone()),
            )
        });
        supervisor.spawn("metrics_upkeep", Role::Auxiliary, |stop| {
            until_stopped(stop, crate::metrics::keep_up())
        });
        let (pruned, policy) = (store.clone(), settings.retention);
        let holder = worker_id();
        supervisor.spawn("pruner", Role::Auxiliary, move |stop| {
            until_stopped(stop, retention::run(pruned.clone(), policy, holder.clone()))
        });
        let backfilled = store.clone();
        supervisor.spawn("backfill", Role::Auxiliary, move |stop| {
            until_stopped(stop, backfill(backfilled.clone()))
        });
        let http = http::Settings {
            tokens: settings.api_tokens,
            public_url: settings.public_url,
            trust_forwarded: settings.trust_forwarded,
            request_timeout: settings.request_timeout,
            max_body_bytes: settings.max_body_bytes,
            max_connections: settings.max_connections,
            stream_max: settings.stream_max,
        };
        let bodies = BodyBudget::new(settings.max_inflight_body_bytes);
        let gateway = match &settings.gateway {
            Some(platform) => {
                let platform = Platform::new(platform).map_err(StartupError::Platform)?;
                tracing::info!(
                    api = %platform.url(&[]),
                    webhook = platform.webhook_url(),
                    "creating through the inbox is on"
                );
                if let Some(reconcile) = settings.reconcile {
                    let reconciler = Arc::new(Reconciler::new(
                        store.clone(),
                        platform.clone(),
                        writer.clone(),
                        reconcile,
                        worker_id(),
                    ));
                    supervisor.spawn("reconciler", Role::Auxiliary, move |stop| {
                        let reconciler = reconciler.clone();
                        async move {
                            until_stopped(stop, reconciler.clone().run()).await;
                            // The next replica (in a rolling deploy, the one replacing this)
                            // takes the lease at once rather than when it runs out.
                            let given = tokio::time::timeout(GIVE_BACK, reconciler.give_back());
                            if !matches!(given.await, Ok(Ok(()))) {
                                tracing::warn!("the reconciler's lease could not be given back; it runs out within a minute");
                            }
                        }
                    });
                }
                Some(Gateway::new(platform, settings.allowed_models.clone()))
            }
            None => None,
        };
        let archive = match settings.archive.clone() {
            Some(archiving) => {
                let archive = Arc::new(
                    Archive::open(archiving).map_err(|e| StartupError::Archive(e.to_string()))?,
                );
                let archiver = Arc::new(
                    Archiver::new(
                        store.clone(),
                        archive.clone(),
                        worker_id(),
                        settings.request_timeout,
                        waiters.finished(crate::archive::FINISHED_BOUND),
                    )
                    .map_err(|e| StartupError::Archive(e.to_string()))?,
                );
                supervisor.spawn("archiver", Role::Auxiliary, move |stop| {
                    archiver.clone().run(stop)
                });
                tracing::info!(
                    archive = archive.describe(),
                    "output files are archived, and reads name the copies"
                );
                Some(archive)
            }
            None => {
                tracing::info!(
                    "output files are not archived: their platform URLs stop working about an \
                     hour after a prediction ends; set INBOX_ARCHIVE_URL to keep them"
                );
                None
            }
        };
        let app = http::router(
            http::Parts {
                store: store.clone(),
                writer: writer.clone(),
                waiters: waiters.clone(),
                verifier: Verifier::new(settings.webhook_secrets, settings.webhook_tolerance_secs),
                health: supervisor.health(),
                bodies: bodies.clone(),
                gateway,
                archive,
            },
            http.clone(),
        );
        Ok(Self {
            listener,
            app,
            store,
            waiters,
            supervisor,
            bodies,
            writer,
            http,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        // A bound TCP listener always has a local address.
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// The waiters of this instance, to observe them.
    pub fn waiters(&self) -> Waiters {
        self.waiters.clone()
    }

    /// The budget of request bodies of this instance, to observe it.
    pub fn bodies(&self) -> BodyBudget {
        self.bodies.clone()
    }

    /// The queue of deliveries to write, to observe it.
    pub fn writer(&self) -> Writer {
        self.writer.clone()
    }

    /// Serves until `shutdown` completes, then stops accepting, ends waits and event streams with
    /// the current state, lets in-flight requests finish (each is bounded by its timeout), stops
    /// the background workers and closes the database pool.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send) {
        tracing::info!(addr = %self.local_addr(), "serving");
        let waiters = self.waiters.clone();
        let shutdown = async move {
            shutdown.await;
            waiters.close();
        };
        http::serve(self.listener, self.app, &self.http, shutdown).await;
        self.supervisor.shutdown().await;
        self.store.close().await;
        tracing::info!("stopped");
    }
}

/// Runs `work` until it ends or `stop` is cancelled.
async fn until_stopped(stop: CancellationToken, work: impl Future<Output = ()>) {
    tokio::select! {
        () = work => {}
        () = stop.cancelled() => {}
    }
}

/// How long a stopping replica tries to give back the reconciler's lease: within the
/// supervisor's 5 s for a worker to end.
const GIVE_BACK: Duration = Duration::from_secs(2);

/// Where the backfill records that it has once gone through every prediction: later starts skip
/// it, rather than walk the whole table again (a million rows cost reads a 7× slower p99 for the
/// walk's length). Rows an older replica writes meanwhile are measured when read, as before the
/// walk; a version whose `Store::backfill` fills something new names a new checkpoint.
const BACKFILLED: &str = "backfill-1";

/// Fills in, a slice at a time, what predictions stored by an earlier version lack (see
/// `Store::backfill`), then ends; at once if an earlier start went through them all.
async fn backfill(store: Arc<dyn Store>) {
    match store.checkpoint(BACKFILLED).await {
        Ok(Some(_)) => return,
        Ok(None) => {}
        // Walked again: it is only slower.
        Err(error) => tracing::warn!(%error, "could not read whether the backfill is done"),
    }
    let mut slices = 0u64;
    loop {
        match store.backfill().await {
            Ok(true) => slices += 1,
            Ok(false) => break,
            Err(error) => {
                tracing::warn!(%error, "the backfill failed; trying again in a minute");
                tokio::time::sleep(Duration::from_secs(60)).await;
            }
        }
        // Room between slices for the deliveries and reads waiting on the rows.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if slices > 0 {
        tracing::info!(slices, "backfill done");
    }
    if let Err(error) = store
        .set_checkpoint(BACKFILLED, time::OffsetDateTime::now_utc())
        .await
    {
        tracing::warn!(%error, "could not record that the backfill is done; the next start walks again");
    }
}

/// This process among the replicas, for the leases of background work: its host, its process id
/// and a random part, as a host name and pid repeat across containers.
fn worker_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .unwrap_or_default();
    let mut random = [0u8; 4];
    let _ = getrandom::getrandom(&mut random);
    format!(
        "{}/{}/{:08x}",
        host.trim(),
        std::process::id(),
        u32::from_le_bytes(random)
    )
}

/// Whether this process runs in a container, by the marks Docker, Podman and Kubernetes leave.
fn in_container() -> bool {
    std::path::Path::new("/.dockerenv").exists()
        || std::path::Path::new("/run/.containerenv").exists()
        || std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
}

/// `prediction-inbox migrate`.
pub async fn migrate(database_url: &DatabaseUrl) -> Result<(), StartupError> {
    let store = store::open(database_url, 1).await?;
    store.migrate().await?;
    store.close().await;
    tracing::info!(store = %store.describe(), "migrations applied");
    Ok(())
}

/// `prediction-inbox prune`: migrates, then runs retention once, as if it were `now`; with
/// `dry_run`, counts what it would remove instead.
pub async fn prune(
    database_url: &DatabaseUrl,
    policy: &retention::Policy,
    now: time::OffsetDateTime,
    dry_run: bool,
) -> Result<store::Pruned, StartupError> {
    let store = store::open(database_url, 1).await?;
    store.migrate().await?;
    let pruned = retention::prune_all(&*store, policy, now, dry_run).await;
    store.close().await;
    Ok(pruned?)
}

/// `prediction-inbox reconcile`: migrates, then reads from the platform every unfinished
/// prediction that is due (or the one named `id`, whatever its schedule), under the reconciler's
/// lease (handed over by a serving replica that holds it) and rate, and records what advances.
/// What it did, or why it could not.
pub async fn reconcile(
    settings: Settings,
    what: ReconcileWhat,
) -> Result<reconcile::Swept, ReconcileError> {
    let (Some(platform), Some(reconciling)) = (&settings.gateway, settings.reconcile) else {
        return Err(ReconcileError::Off);
    };
    let platform = Platform::new(platform).map_err(StartupError::Platform)?;
    let store = store::open(&settings.database_url, 2)
        .await
        .map_err(StartupError::from)?;
    store.migrate().await.map_err(StartupError::from)?;
    let (writer, batch_writer) = Writer::new(store.clone(), None);
    let stop = CancellationToken::new();
    let writing = tokio::spawn(batch_writer.run(stop.clone()));
    let reconciler = Reconciler::new(store.clone(), platform, writer, reconciling, worker_id());
    // Serving replicas hand their lease over for the command's run and take it back after.
    let swept = match reconciler.take_over().await {
        Ok(()) => match what {
            ReconcileWhat::One(id) => reconciler.one(&id).await,
            ReconcileWhat::Since(since) => reconciler.catch_up_since(Some(since)).await,
            ReconcileWhat::Due => reconciler.sweep().await,
        },
        Err(stopped) => Err(stopped),
    };
    if let Err(error) = reconciler.give_back().await {
        tracing::warn!(%error, "the reconciler's lease could not be given back; it runs out within a minute");
    }
    stop.cancel();
    let _ = writing.await;
    store.close().await;
    Ok(swept?)
}

/// What `prediction-inbox reconcile` reads.
#[derive(Debug)]
pub enum ReconcileWhat {
    /// Every unfinished prediction that is due.
    Due,
    /// One prediction, now.
    One(String),
    /// A catch-up from this time.
    Since(time::OffsetDateTime),
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(
        "reconciling needs REPLICATE_API_TOKEN and INBOX_WEBHOOK_URL set, and INBOX_RECONCILE_AFTER not 0"
    )]
    Off,
    #[error(transparent)]
    Startup(#[from] StartupError),
    #[error(transparent)]
    Stopped(#[from] reconcile::Stopped),
}

/// Resolves on SIGTERM or SIGINT.
pub fn shutdown_signal() -> impl Future<Output = ()> {
    // Registered now, not when the future is first polled: the workers start before the server
    // waits on it, and a SIGTERM that came in between would otherwise end the process by the
    // signal's default action (seen in CI: a pass of retention logged, then SIGTERM, exit by
    // signal). Must be called within the runtime.
    #[cfg(unix)]
    let (terminate, interrupt) = {
        use tokio::signal::unix::{SignalKind, signal};
        (
            signal(SignalKind::terminate()).ok(),
            signal(SignalKind::interrupt()).ok(),
        )
    };
    async move {
        #[cfg(unix)]
        {
            let received = |stream: Option<tokio::signal::unix::Signal>| async move {
                match stream {
                    Some(mut stream) => {
                        stream.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                () = received(terminate) => {}
                () = received(interrupt) => {}
            }
        }
        #[cfg(not(unix))]
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
        tracing::info!("shutdown requested; draining in-flight requests");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Once a start has gone through every prediction, the next does not walk them again: a row
    /// left unmeasured afterwards (as an older replica would write it) stays so.
    #[tokio::test]
    async fn the_backfill_walks_the_predictions_once_for_all_starts() {
        let path = std::env::temp_dir().join(format!("backfill-{:016x}.db", fastrand::u64(..)));
        let url = DatabaseUrl::Sqlite(format!("sqlite://{}", path.display()));
        let store = store::open(&url, 1).await.unwrap();
        store.migrate().await.unwrap();
        backfill(store.clone()).await;
        let options = sqlx::sqlite::SqliteConnectOptions::new().filename(&path);
        let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
        sqlx::query(
            "INSERT INTO predictions (id, status, created_at, progress_rank, progress_logs, \
             progress_timestamp, updated_at, body) VALUES ('p1', 'succeeded', 0, 2, 0, 0, 0, '{}')",
        )
        .execute(&pool)
        .await
        .unwrap();
        // A new start: a store of its own.
        store.close().await;
        let store = store::open(&url, 1).await.unwrap();
        backfill(store.clone()).await;
        let measured: Option<i64> =
            sqlx::query_scalar("SELECT progress_output FROM predictions WHERE id = 'p1'")
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!(
            measured, None,
            "the second start walked the predictions again"
        );
        store.close().await;
        let _ = std::fs::remove_file(&path);
    }
}
