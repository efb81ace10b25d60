//! The archive's queue on Postgres (see `store::archive`).

use std::sync::LazyLock;
use std::time::Duration;

use time::OffsetDateTime;

use super::Postgres;
use crate::store::archive::{
    self as sql, ArchiveFile, ArchiveQueue, ArchiveUsage, Candidate, FileJob, Finish, Found,
};
use crate::store::{StoreError, StoredPrediction};

/// The latest state's body, through the delivery it stands on.
const BODY: &str = "(SELECT d.body FROM deliveries AS d WHERE d.webhook_id = p.latest_delivery)";

/// Which of a list of predictions (`$1`) succeeded and have no file queued yet.
pub(in crate::store) static CANDIDATES_AMONG: LazyLock<String> = LazyLock::new(|| {
    sql::CANDIDATES_AMONG
        .replace("AMONG", "= ANY($1)")
        .replace("BODY", BODY)
});

#[async_trait::async_trait]
impl ArchiveQueue for Postgres {
    async fn archive_candidates(
        &self,
        after: (OffsetDateTime, &str),
        until: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<Candidate>, StoreError> {
        static CANDIDATES: LazyLock<String> =
            LazyLock::new(|| sql::CANDIDATES.replace("BODY", BODY));
        let rows: Vec<(
            OffsetDateTime,
            String,
            String,
            Option<String>,
            OffsetDateTime,
            String,
        )> = self
            .live(|| {
                sqlx::query_as(&CANDIDATES)
                    // Planned for its own bounds each time: a generic plan knows nothing of how
                    // recent `$1` is, and scanned every delivery.
                    .persistent(false)
                    .bind(after.0)
                    .bind(after.1)
                    .bind(i64::from(limit))
                    .bind(until)
                    .fetch_all(&self.pool)
            })
            .await?;
        Ok(rows
            .into_iter()
            .map(
                |(received_at, webhook_id, id, status, created_at, body)| Candidate {
                    received_at,
                    webhook_id,
                    prediction: StoredPrediction {
                        id,
                        status,
                        created_at,
                        body,
                    },
                },
            )
            .collect())
    }

    async fn archive_candidates_among(
        &self,
        ids: &[String],
    ) -> Result<Vec<StoredPrediction>, StoreError> {
        Ok(self
            .live(|| {
                sqlx::query_as(&CANDIDATES_AMONG)
                    // Planned for its own list each time (once a second): a plan kept from when
                    // `archive_files` was empty reads it whole until autovacuum analyses it.
                    .persistent(false)
                    .bind(ids)
                    .fetch_all(&self.pool)
            })
            .await?)
    }

    /// One statement whatever the number: a walk under load records thousands a second.
    async fn archive_enqueue(&self, found: &[Found]) -> Result<(), StoreError> {
        let files = found
            .iter()
            .flat_map(|f| f.files.iter().map(move |file| (f, file)));
        let (mut keys, mut owners, mut urls, mut completed) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (prediction, file) in files {
            keys.push(file.key.as_str());
            owners.push(prediction.id.as_str());
            urls.push(file.url.as_str());
            completed.push(prediction.completed_at);
        }
        if keys.is_empty() {
            return Ok(());
        }
        self.live(|| {
            sqlx::query(
                "INSERT INTO archive_files (key, prediction_id, url, completed_at, state, next_at) \
                 SELECT k, p, u, c, 'queued', c \
                 FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[]) \
                     AS f (k, p, u, c) \
                 ON CONFLICT (key) DO NOTHING",
            )
            .bind(&keys)
            .bind(&owners)
            .bind(&urls)
            .bind(&completed)
            .execute(&self.pool)
        })
        .await?;
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
