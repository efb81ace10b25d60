//! The latest-state rule of the contract, written once as a total order over deliveries.
//!
//! 1. rank by status (`starting` 0 < `processing` and unknown 1 < terminal 2);
//! 2. below terminal rank, the length of `logs`, then the byte length of `output`'s JSON text as
//!    received (more logs or more output is later, as the platform advises); both count as 0 once
//!    terminal, so logs never reopen a finished prediction;
//! 3. `webhook-timestamp`;
//! 4. `webhook-id`, a last tie-break that is arbitrary but fixed.
//!
//! That is the lexicographic order of the fields of [`Progress`], so a delivery replaces the stored
//! state exactly when its `Progress` is greater, and the stored state never depends on the order
//! in which deliveries arrive: any order folds to the greatest. Store keeps the key beside each
//! prediction and compares keys; it never needs to know the rule itself.

use super::{Prediction, Status, WebhookId};

/// How far a prediction had come according to one delivery. Field order is the rule: derive(Ord)
/// compares rank, logs, output, timestamp, then the webhook id (bytewise, as `COLLATE "C"` and
/// SQLite's `BINARY` compare text).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Progress {
    pub rank: i16,
    pub logs_len: i64,
    pub output_len: i64,
    pub timestamp: i64,
    pub webhook_id: WebhookId,
}

impl Progress {
    /// `status` is `None` when the object carried no status string; that ranks as an unknown status.
    pub fn new(
        status: Option<&Status>,
        logs_len: usize,
        output_len: usize,
        timestamp: i64,
        webhook_id: WebhookId,
    ) -> Self {
        let rank = status.map_or(Status::UNKNOWN_RANK, Status::rank);
        let below_terminal = |len: usize| {
            if rank == Status::TERMINAL_RANK {
                0
            } else {
                i64::try_from(len).unwrap_or(i64::MAX)
            }
        };
        Self {
            rank,
            logs_len: below_terminal(logs_len),
            output_len: below_terminal(output_len),
            timestamp,
            webhook_id,
        }
    }

    /// The place of a delivery of `prediction` signed with this id and timestamp.
    pub fn of(prediction: &Prediction, webhook_id: WebhookId, timestamp: i64) -> Self {
        Self::new(
            prediction.status.as_ref(),
            prediction.logs_len,
            prediction.output_len,
            timestamp,
            webhook_id,
        )
    }

    /// Whether a delivery with this progress replaces a stored state with `stored` progress.
    pub fn supersedes(&self, stored: &Progress) -> bool {
        self > stored
    }

    pub fn is_terminal(&self) -> bool {
        self.rank == Status::TERMINAL_RANK
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at_id(status: &str, logs: usize, output: usize, ts: i64, id: &str) -> Progress {
        Progress::new(
            Some(&Status::parse(status)),
            logs,
            output,
            ts,
            WebhookId::parse(id).unwrap(),
        )
    }

    fn at(status: &str, logs: usize, ts: i64) -> Progress {
        at_id(status, logs, 4, ts, "msg_1")
    }

    #[test]
    fn the_contract_table() {
        // (stored, incoming, replaces?)
        let cases = [
            (at("starting", 0, 10), at("processing", 0, 10), true),
            (at("processing", 5, 10), at("starting", 9, 20), false),
            (at("succeeded", 5, 10), at("processing", 99, 99), false),
            (at("succeeded", 5, 10), at("starting", 0, 99), false),
            (at("processing", 5, 10), at("succeeded", 0, 1), true),
            (at("processing", 5, 10), at("failed", 0, 10), true),
            (at("processing", 5, 10), at("canceled", 0, 10), true),
            (at("starting", 0, 10), at("aborted", 0, 10), true),
            // equal non-terminal rank: longer logs win, then more output, then the later timestamp
            (at("processing", 5, 10), at("processing", 6, 9), true),
            (at("processing", 6, 10), at("processing", 5, 99), false),
            (
                at_id("processing", 5, 4, 10, "msg_1"),
                at_id("processing", 5, 9, 9, "msg_1"),
                true,
            ),
            (
                at_id("processing", 5, 9, 10, "msg_1"),
                at_id("processing", 5, 4, 99, "msg_1"),
                false,
            ),
            (at("processing", 5, 10), at("processing", 5, 11), true),
            (at("processing", 5, 10), at("processing", 5, 10), false),
            (at("processing", 5, 10), at("processing", 5, 9), false),
            (at("starting", 0, 10), at("starting", 0, 11), true),
            // the same second: the greater webhook id, whatever came first
            (
                at_id("processing", 5, 4, 10, "msg_a"),
                at_id("processing", 5, 4, 10, "msg_b"),
                true,
            ),
            (
                at_id("processing", 5, 4, 10, "msg_b"),
                at_id("processing", 5, 4, 10, "msg_a"),
                false,
            ),
            // unknown statuses rank with processing
            (at("processing", 5, 10), at("successful", 6, 10), true),
            (at("successful", 5, 10), at("processing", 4, 99), false),
            (at("successful", 5, 10), at("succeeded", 0, 1), true),
            (at("starting", 0, 10), at("queued", 0, 10), true),
            // terminal: logs and output no longer count; a later one (or a greater id in the same
            // second) refreshes it
            (at("succeeded", 5, 10), at("succeeded", 9, 10), false),
            (
                at_id("succeeded", 0, 4, 10, "msg_1"),
                at_id("succeeded", 0, 900, 10, "msg_1"),
                false,
            ),
            (at("succeeded", 5, 10), at("succeeded", 0, 11), true),
            (at("succeeded", 5, 10), at("failed", 0, 9), false),
            (at("failed", 0, 10), at("failed", 0, 10), false),
            (
                at_id("failed", 0, 4, 10, "msg_a"),
                at_id("succeeded", 0, 4, 10, "msg_b"),
                true,
            ),
        ];
        for (stored, incoming, replaces) in cases {
            assert_eq!(
                incoming.supersedes(&stored),
                replaces,
                "{incoming:?} over {stored:?}"
            );
        }
    }

    #[test]
    fn a_missing_status_ranks_as_unknown() {
        let none = Progress::new(None, 0, 0, 10, WebhookId::parse("msg_1").unwrap());
        assert!(none.supersedes(&at("starting", 0, 10)));
        assert!(!none.supersedes(&at("processing", 0, 10)));
        assert!(at("succeeded", 0, 1).supersedes(&none));
    }

    /// Every ordering of a life with duplicates folds to the state in-order delivery ends in.
    #[test]
    fn every_ordering_with_duplicates_ends_in_the_in_order_state() {
        let life = [
            at("starting", 0, 100),
            at("processing", 17, 101),
            at("processing", 40, 102),
            at("succeeded", 40, 103),
        ];
        let in_order = fold(life.iter());
        // Each delivery twice, in every order of the eight (8! = 40320 sequences).
        let sequence: Vec<usize> = (0..life.len()).chain(0..life.len()).collect();
        for_each_permutation(sequence, &mut |order| {
            assert_eq!(fold(order.iter().map(|&i| &life[i])), in_order, "{order:?}");
        });
    }

    fn fold<'a>(deliveries: impl Iterator<Item = &'a Progress>) -> Progress {
        deliveries
            .cloned()
            .reduce(|stored, new| if new.supersedes(&stored) { new } else { stored })
            .expect("non-empty")
    }

    /// Heap's algorithm.
    fn for_each_permutation(mut items: Vec<usize>, visit: &mut impl FnMut(&[usize])) {
        let n = items.len();
        let mut c = vec![0; n];
        visit(&items);
        let mut i = 0;
        while i < n {
            if c[i] < i {
                items.swap(if i % 2 == 0 { 0 } else { c[i] }, i);
                visit(&items);
                c[i] += 1;
                i = 0;
            } else {
                c[i] = 0;
                i += 1;
            }
        }
    }
}
