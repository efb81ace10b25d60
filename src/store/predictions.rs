//! Reading latest states: one by id, and pages of the list walked by keyset over `(created_at, id)`.

use sqlx::{FromRow, Postgres, QueryBuilder};
use time::OffsetDateTime;

use super::{Store, StoreError};
use crate::domain::Status;

/// A prediction's latest state: the body exactly as received, and its place in the list.
#[derive(Debug, FromRow)]
pub struct StoredPrediction {
    pub id: String,
    pub status: Option<String>,
    pub created_at: OffsetDateTime,
    pub body: String,
}

/// A place in the list (newest first by `created_at`, then `id`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub created_at: OffsetDateTime,
    pub id: String,
}

/// Which way a page goes from a position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Entries after the position in list order (older).
    Older,
    /// Entries before it (newer): the way back.
    Newer,
}

#[derive(Debug, Default)]
pub struct ListQuery {
    pub status: Option<String>,
    pub model: Option<String>,
    pub version: Option<String>,
    pub created_after: Option<OffsetDateTime>,
    pub created_before: Option<OffsetDateTime>,
    /// `None`: the first page.
    pub from: Option<(Direction, Position)>,
    pub limit: u32,
}

/// A page, newest first, and whether there is more on either side of it.
#[derive(Debug)]
pub struct Page {
    pub items: Vec<StoredPrediction>,
    pub has_older: bool,
    pub has_newer: bool,
}

impl StoredPrediction {
    pub fn is_terminal(&self) -> bool {
        self.status
            .as_deref()
            .is_some_and(|status| Status::parse(status).is_terminal())
    }
}

impl Store {
    pub async fn prediction(&self, id: &str) -> Result<Option<StoredPrediction>, StoreError> {
        let found = sqlx::query_as(
            "SELECT id, status, created_at, body::text AS body FROM predictions WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(found)
    }

    pub async fn list(&self, query: &ListQuery) -> Result<Page, StoreError> {
        let direction = query.from.as_ref().map_or(Direction::Older, |(d, _)| *d);
        let mut sql = QueryBuilder::<Postgres>::new(
            "SELECT id, status, created_at, body::text AS body FROM predictions WHERE true",
        );
        for (column, value) in [
            ("status", &query.status),
            ("model", &query.model),
            ("version", &query.version),
        ] {
            if let Some(value) = value {
                sql.push(format_args!(" AND {column} = "))
                    .push_bind(value.clone());
            }
        }
        if let Some(after) = query.created_after {
            sql.push(" AND created_at > ").push_bind(after);
        }
        if let Some(before) = query.created_before {
            sql.push(" AND created_at < ").push_bind(before);
        }
        if let Some((_, position)) = &query.from {
            let compare = match direction {
                Direction::Older => "<",
                Direction::Newer => ">",
            };
            sql.push(format_args!(" AND (created_at, id) {compare} ("))
                .push_bind(position.created_at)
                .push(", ")
                .push_bind(position.id.clone())
                .push(")");
        }
        let order = match direction {
            Direction::Older => "DESC",
            Direction::Newer => "ASC",
        };
        // One more than asked tells whether another page follows.
        sql.push(format_args!(
            " ORDER BY created_at {order}, id {order} LIMIT "
        ))
        .push_bind(i64::from(query.limit) + 1);

        let mut items: Vec<StoredPrediction> = sql.build_query_as().fetch_all(&self.pool).await?;
        let more = items.len() > query.limit as usize;
        items.truncate(query.limit as usize);
        let from_cursor = query.from.is_some();
        Ok(match direction {
            Direction::Older => Page {
                items,
                has_older: more,
                has_newer: from_cursor,
            },
            Direction::Newer => {
                items.reverse();
                Page {
                    items,
                    has_older: true,
                    has_newer: more,
                }
            }
        })
    }
}
