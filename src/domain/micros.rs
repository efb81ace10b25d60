//! Instants as Unix microseconds: the precision Postgres keeps, and the form SQLite's rows and
//! the list's cursors hold them in.

use time::OffsetDateTime;

/// `time` in whole microseconds since the Unix epoch, truncated as sqlx truncates for Postgres.
pub fn unix_micros(time: OffsetDateTime) -> i64 {
    // i64 microseconds reach beyond the year 290,000; `time` stops at 9999.
    (time.unix_timestamp_nanos() / 1_000) as i64
}

/// The instant `micros` microseconds after the Unix epoch, if `time` can hold it.
pub fn from_unix_micros(micros: i64) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1_000).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn microseconds_round_trip_and_nanoseconds_are_truncated() {
        let time = OffsetDateTime::from_unix_timestamp_nanos(1_694_189_974_765_994_123).unwrap();
        assert_eq!(unix_micros(time), 1_694_189_974_765_994);
        let back = from_unix_micros(unix_micros(time)).unwrap();
        assert_eq!(back.unix_timestamp_nanos(), 1_694_189_974_765_994_000);
        assert_eq!(from_unix_micros(i64::MAX), None);
    }
}
