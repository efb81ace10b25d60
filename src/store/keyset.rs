//! The list query, written once for both backends: filters, then a keyset bound on
//! `(created_at, id)` in the page's direction, one row more than the page to tell whether another
//! follows. Never `OFFSET`: a page at any depth is one index range scan.

use sqlx::{Database, Encode, QueryBuilder, Type};
use time::OffsetDateTime;

use super::{Direction, ListQuery, Page, StoredPrediction};
use crate::domain::Status;

/// Which index serves the list's `status` filter.
#[derive(Clone, Copy)]
pub(super) enum StatusIndex {
    /// `(status, created_at, id)`.
    Status,
    /// `(settled, created_at, id)`, where `settled` is the status once terminal and '' before
    /// (Postgres: see its migration `index_statuses_once_settled`).
    Settled,
}

/// `SELECT {columns} FROM predictions …` for `query`; `time` turns a timestamp into the backend's
/// stored form of `created_at`.
pub(super) fn select<'a, DB, T>(
    query: &'a ListQuery,
    columns: &str,
    status_index: StatusIndex,
    time: impl Fn(OffsetDateTime) -> T,
) -> QueryBuilder<'a, DB>
where
    DB: Database,
    DB::Arguments<'a>: Default,
    &'a str: Encode<'a, DB> + Type<DB>,
    i64: Encode<'a, DB> + Type<DB>,
    T: Encode<'a, DB> + Type<DB> + 'a,
{
    let mut sql = QueryBuilder::new(format!("SELECT {columns} FROM predictions WHERE true"));
    // The index's range: the status itself once terminal, else every prediction in flight, which
    // the filter on `status` below narrows to the one asked for.
    if let (Some(status), StatusIndex::Settled) = (&query.status, status_index) {
        let settled = if Status::parse(status).is_terminal() {
            status.as_str()
        } else {
            ""
        };
        sql.push(" AND settled = ").push_bind(settled);
    }
    for (column, value) in [
        ("status", &query.status),
        ("model", &query.model),
        ("version", &query.version),
    ] {
        if let Some(value) = value {
            sql.push(format_args!(" AND {column} = "))
                .push_bind(value.as_str());
        }
    }
    if let Some(after) = query.created_after {
        sql.push(" AND created_at > ").push_bind(time(after));
    }
    if let Some(before) = query.created_before {
        sql.push(" AND created_at < ").push_bind(time(before));
    }
    let direction = direction(query);
    if let Some((_, position)) = &query.from {
        let compare = match direction {
            Direction::Older => "<",
            Direction::Newer => ">",
        };
        sql.push(format_args!(" AND (created_at, id) {compare} ("))
            .push_bind(time(position.created_at))
            .push(", ")
            .push_bind(position.id.as_str())
            .push(")");
    }
    let order = match direction {
        Direction::Older => "DESC",
        Direction::Newer => "ASC",
    };
    sql.push(format_args!(
        " ORDER BY created_at {order}, id {order} LIMIT "
    ))
    .push_bind(i64::from(query.limit) + 1);
    sql
}

fn direction(query: &ListQuery) -> Direction {
    query.from.as_ref().map_or(Direction::Older, |(d, _)| *d)
}

/// The page `select` fetched `rows` for, newest first.
pub(super) fn page(query: &ListQuery, mut rows: Vec<StoredPrediction>) -> Page {
    let more = rows.len() > query.limit as usize;
    rows.truncate(query.limit as usize);
    match direction(query) {
        Direction::Older => Page {
            items: rows,
            has_older: more,
            has_newer: query.from.is_some(),
        },
        Direction::Newer => {
            rows.reverse();
            Page {
                items: rows,
                has_older: true,
                has_newer: more,
            }
        }
    }
}
