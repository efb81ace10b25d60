//! The list cursor's text form: opaque to callers, a position in the store's keyset order.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as CURSOR_BASE64;

use crate::domain::{PredictionId, from_unix_micros, unix_micros};
use crate::http::ApiError;
use crate::store::{Direction, Position};

/// A position in the list and the way to go from it, opaque to clients.
pub(super) struct Cursor {
    pub(super) direction: Direction,
    pub(super) position: Position,
}

impl Cursor {
    pub(super) fn encode(&self) -> String {
        let direction = match self.direction {
            Direction::Older => 'o',
            Direction::Newer => 'n',
        };
        let micros = unix_micros(self.position.created_at);
        CURSOR_BASE64.encode(format!("{direction}.{micros}.{}", self.position.id))
    }

    pub(super) fn decode(text: &str) -> Result<Self, ApiError> {
        let invalid = || ApiError::BadRequest("`cursor` is not one this service handed out".into());
        let bytes = CURSOR_BASE64.decode(text).map_err(|_| invalid())?;
        let text = String::from_utf8(bytes).map_err(|_| invalid())?;
        let mut parts = text.splitn(3, '.');
        let direction = match parts.next() {
            Some("o") => Direction::Older,
            Some("n") => Direction::Newer,
            _ => return Err(invalid()),
        };
        let created_at = parts
            .next()
            .and_then(|micros| micros.parse().ok())
            .and_then(from_unix_micros)
            .ok_or_else(invalid)?;
        let id = parts
            .next()
            .filter(|id| PredictionId::is_valid(id))
            .ok_or_else(invalid)?;
        Ok(Self {
            direction,
            position: Position {
                created_at,
                id: id.to_owned(),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::OffsetDateTime;

    #[test]
    fn cursors_round_trip_and_reject_forgeries() {
        let cursor = Cursor {
            direction: Direction::Newer,
            position: Position {
                created_at: OffsetDateTime::from_unix_timestamp_nanos(1_694_189_974_765_994_000)
                    .unwrap(),
                id: "a.b.c".into(),
            },
        };
        let decoded = Cursor::decode(&cursor.encode()).unwrap();
        assert_eq!(
            (decoded.direction, decoded.position),
            (cursor.direction, cursor.position)
        );
        for bad in [
            "",
            "!!",
            "eC4xLmE",
            &CURSOR_BASE64.encode("o.abc.id"),
            &CURSOR_BASE64.encode("o.1."),
            &CURSOR_BASE64.encode(format!("o.{}.x", i128::MAX)),
        ] {
            assert!(Cursor::decode(bad).is_err(), "{bad}");
        }
    }
}
