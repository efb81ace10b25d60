//! Builds the whole service from `Settings` — the binary and the tests run the same thing.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;

use crate::changes::{self, Changes};
use crate::config::{DatabaseUrl, Settings};
use crate::http::{self, AppState, Limits};
use crate::store::{self, Store, StoreError};
use crate::verify::Verifier;

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A migrated database and a bound listener, ready to serve.
pub struct Application {
    listener: TcpListener,
    router: Router,
    store: Store,
    changes: Changes,
    header_timeout: Duration,
}

impl Application {
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        // Before anything is counted: metrics recorded with no recorder installed are lost.
        crate::metrics::handle();
        let store = store::open(&settings.database_url, settings.database_pool_size).await?;
        store.migrate().await?;
        tracing::info!(store = %store.describe(), "store ready");
        let listener =
            TcpListener::bind(settings.listen)
                .await
                .map_err(|source| StartupError::Bind {
                    addr: settings.listen,
                    source,
                })?;
        let changes = Changes::new(settings.max_waiters);
        let state = AppState::new(
            store.clone(),
            changes.clone(),
            Verifier::new(settings.webhook_secrets, settings.webhook_tolerance_secs),
            settings.api_tokens,
            settings.public_url,
            settings.request_timeout,
        );
        let limits = Limits {
            max_body_bytes: settings.max_body_bytes,
            request_timeout: settings.request_timeout,
        };
        Ok(Self {
            listener,
            router: http::router(state, &limits),
            store,
            changes,
            // No part of a request may take longer than the request timeout, its headers included.
            header_timeout: settings.request_timeout,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        // A bound TCP listener always has a local address.
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// The waiters of this instance, to observe them.
    pub fn changes(&self) -> Changes {
        self.changes.clone()
    }

    /// Serves until `shutdown` completes, then stops accepting, ends waits and event streams with
    /// the current state, lets in-flight requests finish (each is bounded by its timeout) and
    /// closes the database pool.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send) {
        tracing::info!(addr = %self.local_addr(), "serving");
        let listening = tokio::spawn(changes::listen(self.store.clone(), self.changes.clone()));
        let metrics_upkeep = tokio::spawn(crate::metrics::keep_up());
        let changes = self.changes.clone();
        let shutdown = async move {
            shutdown.await;
            changes.close();
        };
        http::serve(self.listener, self.router, self.header_timeout, shutdown).await;
        listening.abort();
        metrics_upkeep.abort();
        self.store.close().await;
        tracing::info!("stopped");
    }
}

/// `prediction-inbox migrate`.
pub async fn migrate(database_url: &DatabaseUrl) -> Result<(), StartupError> {
    let store = store::open(database_url, 1).await?;
    store.migrate().await?;
    store.close().await;
    tracing::info!(store = %store.describe(), "migrations applied");
    Ok(())
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let interrupt = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut stream) => {
                stream.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
    tracing::info!("shutdown requested; draining in-flight requests");
}
