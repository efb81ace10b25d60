//! The archive's queue on Postgres (see `store::archive`).

use std::sync::LazyLock;
use std::time::Duration;

use sqlx::Connection;
use time::OffsetDateTime;

use super::Postgres;
use crate::store::archive::{
    self as sql, ArchiveFile, ArchiveQueue, ArchiveUsage, FileJob, Finish, NewFile,
};
use crate::store::{StoreError, StoredPrediction};

/// The latest state's body, through the delivery it stands on.
const BODY: &str = "(SELECT d.body FROM deliveries AS d WHERE d.webhook_id = p.latest_delivery)";

#[async_trait::async_trait]
impl ArchiveQueue for Postgres {
    async fn archive_candidates(
        &self,
        since: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<StoredPrediction>, StoreError> {
        static CANDIDATES: LazyLock<String> =
            LazyLock::new(|| sql::CANDIDATES.replace("BODY", BODY));
        Ok(self
            .live(|| {
                sqlx::query_as(&CANDIDATES)
                    .bind(since)
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
            })
            .await?)
    }

    async fn archive_enqueue(
        &self,
        id: &str,
        completed_at: OffsetDateTime,
        files: &[NewFile],
    ) -> Result<(), StoreError> {
        let mut connection = self.pool.acquire().await?;
        let mut tx = connection.begin().await?;
        sqlx::query(sql::LOOKED_AT)
            .bind(id)
            .bind(OffsetDateTime::now_utc())
            .execute(&mut *tx)
            .await?;
        for file in files {
            sqlx::query(sql::ENQUEUE)
                .bind(&file.key)
                .bind(id)
                .bind(&file.url)
                .bind(completed_at)
                .bind(if file.refused.is_some() {
                    "failed"
                } else {
                    "queued"
                })
                .bind(file.refused)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn archive_take(
        &self,
        holder: &str,
        now: OffsetDateTime,
        ttl: Duration,
        limit: u32,
    ) -> Result<Vec<FileJob>, StoreError> {
        static TAKE: LazyLock<String> =
            LazyLock::new(|| sql::TAKE.replace("LOCK", "FOR UPDATE SKIP LOCKED"));
        Ok(self
            .live(|| {
                sqlx::query_as(&TAKE)
                    .bind(holder)
                    .bind(now + ttl)
                    .bind(now)
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
            })
            .await?)
    }

    async fn archive_renew(
        &self,
        key: &str,
        holder: &str,
        until: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let done = self
            .live(|| {
                sqlx::query(sql::RENEW)
                    .bind(key)
                    .bind(holder)
                    .bind(until)
                    .execute(&self.pool)
            })
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn archive_finish(
        &self,
        key: &str,
        holder: &str,
        finish: &Finish,
    ) -> Result<bool, StoreError> {
        let done = self
            .live(|| {
                let query = match finish {
                    Finish::Archived { size, content_type } => sqlx::query(sql::ARCHIVED)
                        .bind(key)
                        .bind(holder)
                        .bind(*size)
                        .bind(content_type.as_str())
                        .bind(OffsetDateTime::now_utc()),
                    Finish::Failed { reason } => sqlx::query(sql::FAILED)
                        .bind(key)
                        .bind(holder)
                        .bind(reason.as_str()),
                    Finish::Retry { at, reason } => sqlx::query(sql::RETRY)
                        .bind(key)
                        .bind(holder)
                        .bind(*at)
                        .bind(reason.as_str()),
                };
                query.execute(&self.pool)
            })
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn archive_files(&self, ids: &[&str]) -> Result<Vec<ArchiveFile>, StoreError> {
        static FILES: LazyLock<String> = LazyLock::new(|| {
            format!(
                "SELECT {} FROM archive_files WHERE prediction_id = ANY($1) ORDER BY prediction_id, url",
                sql::FILE_COLUMNS
            )
        });
        Ok(self
            .live(|| sqlx::query_as(&FILES).bind(ids).fetch_all(&self.pool))
            .await?)
    }

    async fn archive_file(&self, key: &str) -> Result<Option<ArchiveFile>, StoreError> {
        static FILE: LazyLock<String> = LazyLock::new(|| {
            format!(
                "SELECT {} FROM archive_files WHERE key = $1",
                sql::FILE_COLUMNS
            )
        });
        Ok(self
            .live(|| sqlx::query_as(&FILE).bind(key).fetch_optional(&self.pool))
            .await?)
    }

    async fn archive_usage(&self) -> Result<ArchiveUsage, StoreError> {
        let (queued, archived_bytes): (i64, i64) = self
            .live(|| sqlx::query_as(sql::USAGE).fetch_one(&self.pool))
            .await?;
        Ok(ArchiveUsage {
            queued,
            archived_bytes,
        })
    }

    async fn archive_expire(
        &self,
        before: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<String>, StoreError> {
        Ok(self
            .live(|| {
                sqlx::query_scalar(sql::EXPIRE)
                    .bind(before)
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
            })
            .await?)
    }
}
