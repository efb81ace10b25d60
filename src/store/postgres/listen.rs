//! The notifications `record` sends on commit, as one process hears them.

use std::time::Duration;

use sqlx::postgres::{PgListener, PgPool, PgPoolOptions};

use super::CHANGES_CHANNEL;
use crate::store::{ChangeFeed, StoreError};

/// A dedicated connection LISTENing for committed changes.
pub struct ChangeListener(PgListener);

impl ChangeListener {
    /// Opens a listening connection of its own, outside the request pool, so it never competes
    /// with requests for a connection and is never recycled under them.
    pub async fn connect(requests: &PgPool) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(5))
            .max_lifetime(None)
            .idle_timeout(None)
            .connect_with((*requests.connect_options()).clone())
            .await?;
        let mut listener = PgListener::connect_with(&pool).await?;
        listener.listen(CHANGES_CHANNEL).await?;
        Ok(Self(listener))
    }
}

#[async_trait::async_trait]
impl ChangeFeed for ChangeListener {
    /// `None` when the connection was lost and has been re-established, listening again: changes
    /// in the gap were not heard.
    async fn next(&mut self) -> Result<Option<String>, StoreError> {
        Ok(self
            .0
            .try_recv()
            .await?
            .map(|notification| notification.payload().to_owned()))
    }
}
