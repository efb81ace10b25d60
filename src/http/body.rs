//! Reading a delivery's body under bounds that an unauthenticated sender cannot move: the body
//! may be read only after its headers have passed every check that needs no body, and then
//!
//! - the bytes of bodies held at once, across the process, stay within a budget
//!   (`INBOX_MAX_INFLIGHT_BODY_BYTES`). Each body is charged as its bytes arrive (what it makes
//!   the process hold, as opposed to what it claims), plus a fixed amount for the request itself;
//!   past the budget the request is answered 503 and its connection closed;
//! - a share of the budget is kept for small bodies (under `SMALL_BODY`, as every ordinary
//!   delivery is): large ones cannot take it, so a flood of large bodies leaves room for the
//!   platform's deliveries;
//! - a body must keep coming: one that stalls for `BODY_IDLE`, or falls below `MIN_BODY_RATE`
//!   after `BODY_GRACE`, is cut off with 408, and what it held is let go at once rather than at
//!   the request timeout.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, header};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::ApiError;

/// A body of at most this many bytes is small: every ordinary delivery is.
pub const SMALL_BODY: usize = 1024 * 1024;
/// What every request reading a body is charged beyond its bytes: its headers and buffers.
const REQUEST_COST: usize = 16 * 1024;
/// The longest a body may stall between two of its chunks.
const BODY_IDLE: Duration = Duration::from_secs(3);
/// The least average rate a body must arrive at, once `BODY_GRACE` has passed.
const MIN_BODY_RATE: u64 = 32 * 1024;
const BODY_GRACE: Duration = Duration::from_secs(3);

/// The process' budget for request bodies; cheap to clone.
#[derive(Clone)]
pub struct BodyBudget {
    /// Any body may take from it.
    shared: Arc<Semaphore>,
    /// Only small bodies may take from it, once `shared` is spent.
    reserve: Arc<Semaphore>,
}

impl BodyBudget {
    /// `total` bytes, an eighth of it (at least two small bodies' worth, at most all of it) kept
    /// for small bodies.
    pub fn new(total: usize) -> Self {
        let reserve = (total / 8).max(2 * (SMALL_BODY + REQUEST_COST)).min(total);
        Self {
            shared: Arc::new(Semaphore::new(total - reserve)),
            reserve: Arc::new(Semaphore::new(reserve)),
        }
    }

    /// Bytes not held by any body now: of the part any body may take, and of the reserve.
    pub fn available(&self) -> (usize, usize) {
        (
            self.shared.available_permits(),
            self.reserve.available_permits(),
        )
    }

    /// Holds `bytes` of the budget for a body that streams through rather than being read whole:
    /// what its buffers may hold at once.
    pub fn hold(&self, bytes: usize) -> Result<Held, ApiError> {
        let mut held = Held {
            budget: self.clone(),
            shared: None,
            reserve: None,
            small: false,
        };
        held.grow(bytes)?;
        Ok(held)
    }

    /// Reads the body of a request whose headers are `headers`: at most `limit` bytes, charged to
    /// this budget as they arrive. The bytes come with what holds their share of the budget; drop
    /// it once the body is no longer needed.
    pub async fn read(
        &self,
        headers: &HeaderMap,
        body: Body,
        limit: usize,
    ) -> Result<(Vec<u8>, Held), ApiError> {
        let declared = declared_length(headers)?;
        if declared.is_some_and(|length| length > limit) {
            return Err(ApiError::TooLarge);
        }
        let small = declared.is_some_and(|length| length <= SMALL_BODY);
        let mut held = Held {
            budget: self.clone(),
            shared: None,
            reserve: None,
            small,
        };
        held.grow(REQUEST_COST)?;
        // With a declared length the whole body is allocated at once; its pages count only as
        // they are written, as its bytes arrive.
        let mut bytes = Vec::with_capacity(declared.unwrap_or(0));
        let started = Instant::now();
        let mut last_chunk = started;
        let mut body = body.into_data_stream();
        loop {
            let expected_by = (last_chunk + BODY_IDLE)
                .min(started + BODY_GRACE + rate_allowance(bytes.len()))
                .max(Instant::now());
            let next =
                tokio::time::timeout_at(expected_by, futures_util::StreamExt::next(&mut body))
                    .await
                    .map_err(|_| ApiError::BodyTooSlow)?;
            let Some(chunk) = next else { break };
            let chunk =
                chunk.map_err(|_| ApiError::BadRequest("the body could not be read".into()))?;
            let length = bytes.len() + chunk.len();
            if length > limit || declared.is_some_and(|declared| length > declared) {
                return Err(ApiError::TooLarge);
            }
            if length > SMALL_BODY {
                held.small = false;
            }
            // With a declared length, what has arrived; without, the vector grows by doubling:
            // what it allocated (its pages count only once written, so charging first is safe).
            let charged = match declared {
                Some(_) => length,
                None => {
                    bytes.reserve(chunk.len());
                    bytes.capacity()
                }
            };
            held.grow(REQUEST_COST + charged)?;
            bytes.extend_from_slice(&chunk);
            last_chunk = Instant::now();
        }
        Ok((bytes, held))
    }
}

/// How long `received` bytes may take to arrive at the least rate.
fn rate_allowance(received: usize) -> Duration {
    Duration::from_millis(received as u64 * 1000 / MIN_BODY_RATE)
}

/// `Content-Length`, if the request has one; a malformed one is refused.
pub(super) fn declared_length(headers: &HeaderMap) -> Result<Option<usize>, ApiError> {
    let Some(value) = headers.get(header::CONTENT_LENGTH) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|text| text.parse().ok())
        .map(Some)
        .ok_or_else(|| ApiError::BadRequest("`Content-Length` is not a number".into()))
}

/// A body's share of the budget, given back when dropped.
pub struct Held {
    budget: BodyBudget,
    shared: Option<OwnedSemaphorePermit>,
    reserve: Option<OwnedSemaphorePermit>,
    /// Whether the body may draw on the reserve.
    small: bool,
}

impl Held {
    fn bytes(&self) -> usize {
        self.shared.as_ref().map_or(0, |p| p.num_permits())
            + self.reserve.as_ref().map_or(0, |p| p.num_permits())
    }

    /// Holds `total` bytes in all; `Busy` when the budget has not that much left for this body.
    fn grow(&mut self, total: usize) -> Result<(), ApiError> {
        let held = self.bytes();
        if total <= held {
            return Ok(());
        }
        if !self.small && self.reserve.is_some() {
            // A body that has become large must find all it holds in the shared part, and gives
            // back what it held of the reserve.
            let in_shared = self.shared.as_ref().map_or(0, |p| p.num_permits());
            merge(
                &mut self.shared,
                take(&self.budget.shared, total - in_shared)?,
            );
            self.reserve = None;
            return Ok(());
        }
        let more = total - held;
        match take(&self.budget.shared, more) {
            Ok(permit) => merge(&mut self.shared, permit),
            Err(busy) if !self.small => return Err(busy),
            Err(_) => merge(&mut self.reserve, take(&self.budget.reserve, more)?),
        }
        Ok(())
    }
}

fn take(semaphore: &Arc<Semaphore>, bytes: usize) -> Result<OwnedSemaphorePermit, ApiError> {
    let permits = u32::try_from(bytes).map_err(|_| ApiError::TooLarge)?;
    semaphore
        .clone()
        .try_acquire_many_owned(permits)
        .map_err(|_| ApiError::Busy("too many request bodies are being received; retry later"))
}

fn merge(held: &mut Option<OwnedSemaphorePermit>, more: OwnedSemaphorePermit) {
    match held {
        Some(permit) => permit.merge(more),
        None => *held = Some(more),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(budget: &BodyBudget, small: bool) -> Held {
        Held {
            budget: budget.clone(),
            shared: None,
            reserve: None,
            small,
        }
    }

    #[test]
    fn large_bodies_cannot_take_the_reserve_and_small_ones_can() {
        let budget = BodyBudget::new(64 * SMALL_BODY);
        let (shared, reserve) = budget.available();
        assert_eq!((shared, reserve), (56 * SMALL_BODY, 8 * SMALL_BODY));
        let mut large = held(&budget, false);
        large.grow(shared).unwrap();
        assert!(held(&budget, false).grow(1).is_err());
        let mut small = held(&budget, true);
        small.grow(SMALL_BODY).unwrap();
        assert_eq!(budget.available(), (0, 7 * SMALL_BODY));
        // A small body that turns out large moves to the shared part, which is spent.
        small.small = false;
        assert!(small.grow(SMALL_BODY + 1).is_err());
        drop((large, small));
        assert_eq!(budget.available(), (shared, reserve));
    }

    #[test]
    fn a_body_that_grows_large_gives_back_the_reserve() {
        let budget = BodyBudget::new(64 * SMALL_BODY);
        let (shared, _) = budget.available();
        let mut filler = held(&budget, false);
        filler.grow(shared - 4 * SMALL_BODY).unwrap();
        let mut body = held(&budget, true);
        body.grow(4 * SMALL_BODY).unwrap();
        body.grow(5 * SMALL_BODY).unwrap();
        assert_eq!(budget.available(), (0, 7 * SMALL_BODY));
        drop(filler);
        body.small = false;
        body.grow(6 * SMALL_BODY).unwrap();
        assert_eq!(budget.available().1, 8 * SMALL_BODY);
    }
}
