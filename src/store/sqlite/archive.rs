//! The archive's queue on SQLite (see `store::archive`): writes through the one writer, times in
//! Unix microseconds.

use std::sync::LazyLock;
use std::time::Duration;

use time::OffsetDateTime;

use super::{Row, Sqlite, json_array, micros_to_time};
use crate::domain::unix_micros;
use crate::store::archive::{
    self as sql, ArchiveFile, ArchiveQueue, ArchiveUsage, Candidate, FileJob, Finish, Found,
};
use crate::store::{StoreError, StoredPrediction};

/// The succeeded deliveries of a stretch of time whose predictions have no file queued yet.
pub(in crate::store) static CANDIDATES: LazyLock<String> =
    LazyLock::new(|| sql::CANDIDATES.replace("BODY", "p.body"));

/// Which of a list of predictions (`$1`, a JSON array) succeeded and have no file queued yet:
/// `store::archive::CANDIDATES_AMONG`, led by the list. Given the list as an `IN`, SQLite's
/// planner, which has no statistics, preferred to walk every succeeded prediction through the
/// status index and check each against the list: a walk that grew with the table, each second
/// (60 ms at 300,000 succeeded predictions; by id, 2 ms).
pub(in crate::store) const CANDIDATES_AMONG: &str = "\
    SELECT p.id, p.status, p.created_at, p.body AS body \
    FROM json_each($1) AS listed CROSS JOIN predictions AS p ON p.id = listed.value \
    WHERE p.status = 'succeeded' \
      AND NOT EXISTS (SELECT 1 FROM archive_files AS f WHERE f.prediction_id = p.id)";

#[async_trait::async_trait]
impl ArchiveQueue for Sqlite {
    async fn archive_candidates(
        &self,
        after: (OffsetDateTime, &str),
        until: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<Candidate>, StoreError> {
        let rows: Vec<(i64, String, String, Option<String>, i64, String)> =
            sqlx::query_as(&CANDIDATES)
                .bind(unix_micros(after.0))
                .bind(after.1)
                .bind(i64::from(limit))
                .bind(unix_micros(until))
                .fetch_all(&self.readers)
                .await?;
        rows.into_iter()
            .map(|(received_at, webhook_id, id, status, created_at, body)| {
                let prediction = Row {
                    id,
                    status,
                    created_at,
                    body,
                }
                .into_stored()?;
                Ok(Candidate {
                    received_at: micros_to_time(received_at, "received_at")?,
                    webhook_id,
                    prediction,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    async fn archive_candidates_among(
        &self,
        ids: &[String],
    ) -> Result<Vec<StoredPrediction>, StoreError> {
        let rows: Vec<Row> = sqlx::query_as(CANDIDATES_AMONG)
            .bind(json_array(ids))
            .fetch_all(&self.readers)
            .await?;
        Ok(rows
            .into_iter()
            .map(Row::into_stored)
            .collect::<Result<_, _>>()?)
    }

    async fn archive_enqueue(&self, found: &[Found]) -> Result<(), StoreError> {
        if found.iter().all(|f| f.files.is_empty()) {
            return Ok(());
        }
        let mut tx = self.writer.begin().await?;
        for prediction in found {
            for file in &prediction.files {
                sqlx::query(sql::ENQUEUE)
                    .bind(&file.key)
                    .bind(&prediction.id)
                    .bind(&file.url)
                    .bind(unix_micros(prediction.completed_at))
                    .execute(&mut *tx)
                    .await?;
            }
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
        Ok(sqlx::query_as(&sql::TAKE.replace("LOCK", ""))
            .bind(holder)
            .bind(unix_micros(now + ttl))
            .bind(unix_micros(now))
            .bind(i64::from(limit))
            .fetch_all(&self.writer)
            .await?)
    }

    async fn archive_renew(
        &self,
        key: &str,
        holder: &str,
        until: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(sql::RENEW)
            .bind(key)
            .bind(holder)
            .bind(unix_micros(until))
            .execute(&self.writer)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn archive_finish(
        &self,
        key: &str,
        holder: &str,
        finish: &Finish,
    ) -> Result<bool, StoreError> {
        let query = match finish {
            Finish::Archived { size, content_type } => sqlx::query(sql::ARCHIVED)
                .bind(key)
                .bind(holder)
                .bind(*size)
                .bind(content_type.as_str())
                .bind(unix_micros(OffsetDateTime::now_utc())),
            Finish::Failed { reason } => sqlx::query(sql::FAILED)
                .bind(key)
                .bind(holder)
                .bind(reason.as_str()),
            Finish::Retry { at, reason } => sqlx::query(sql::RETRY)
                .bind(key)
                .bind(holder)
                .bind(unix_micros(*at))
                .bind(reason.as_str()),
        };
        Ok(query.execute(&self.writer).await?.rows_affected() == 1)
    }

    async fn archive_files(&self, ids: &[&str]) -> Result<Vec<ArchiveFile>, StoreError> {
        let ids = json_array(ids);
        Ok(sqlx::query_as(&format!(
            "SELECT {} FROM archive_files \
             WHERE prediction_id IN (SELECT value FROM json_each($1)) ORDER BY prediction_id, url",
            sql::FILE_COLUMNS
        ))
        .bind(ids)
        .fetch_all(&self.readers)
        .await?)
    }

    async fn archive_file(&self, key: &str) -> Result<Option<ArchiveFile>, StoreError> {
        Ok(sqlx::query_as(&format!(
            "SELECT {} FROM archive_files WHERE key = $1",
            sql::FILE_COLUMNS
        ))
        .bind(key)
        .fetch_optional(&self.readers)
        .await?)
    }

    async fn archive_usage(&self) -> Result<ArchiveUsage, StoreError> {
        let (queued, archived_bytes): (i64, i64) =
            sqlx::query_as(sql::USAGE).fetch_one(&self.readers).await?;
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
        Ok(sqlx::query_scalar(sql::EXPIRE)
            .bind(unix_micros(before))
            .bind(i64::from(limit))
            .fetch_all(&self.writer)
            .await?)
    }
}
