//! The notifications `record` sends on commit, as one process hears them.

use sqlx::postgres::{PgListener, PgPool, PgPoolOptions};

use super::{CHANGES_CHANNEL, LEGACY_CHANGES_CHANNEL};
use crate::store::{ACQUIRE_TIMEOUT, Change, ChangeFeed, StoreError};

/// A dedicated connection LISTENing for committed changes.
pub struct ChangeListener(PgListener);

impl ChangeListener {
    /// Opens a listening connection of its own, outside the request pool, so it never competes
    /// with requests for a connection and is never recycled under them.
    pub async fn connect(requests: &PgPool) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .max_lifetime(None)
            .idle_timeout(None)
            .connect_with((*requests.connect_options()).clone())
            .await?;
        let mut listener = PgListener::connect_with(&pool).await?;
        listener
            .listen_all([CHANGES_CHANNEL, LEGACY_CHANGES_CHANNEL])
            .await?;
        Ok(Self(listener))
    }
}

#[async_trait::async_trait]
impl ChangeFeed for ChangeListener {
    /// `None` when the connection was lost and has been re-established, listening again: changes
    /// in the gap were not heard.
    async fn next(&mut self) -> Result<Option<Change>, StoreError> {
        loop {
            let Some(notification) = self.0.try_recv().await? else {
                return Ok(None);
            };
            let payload = notification.payload();
            if notification.channel() == LEGACY_CHANGES_CHANNEL {
                return Ok(Some(Change {
                    id: payload.to_owned(),
                    terminal: true,
                }));
            }
            // Only the service notifies on this channel; anything else is not a change of ours.
            if let Some(change) = Change::decode(payload) {
                return Ok(Some(change));
            }
        }
    }
}
