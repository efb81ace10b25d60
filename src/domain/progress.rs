//! The latest-state rule of the contract, written once as an order over deliveries.
//!
//! Rank by status (`starting` 0 < `processing` and unknown 1 < terminal 2); at equal non-terminal
//! rank the longer `logs` wins, then the later `webhook-timestamp`; a terminal state is final except
//! that a terminal delivery with a later `webhook-timestamp` refreshes it. All of that is the
//! lexicographic order of `(rank, logs length — counted as 0 once terminal, timestamp)`, so a
//! delivery replaces the stored state exactly when its `Progress` is greater. Storage keeps the key
//! beside each prediction and compares keys; it never needs to know the rule itself.

use super::Status;

/// How far a prediction had come according to one delivery. Field order is the rule: derive(Ord)
/// compares rank, then logs length, then timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Progress {
    pub rank: i16,
    pub logs_len: i64,
    pub timestamp: i64,
}

impl Progress {
    /// `status` is `None` when the object carried no status string; that ranks as an unknown status.
    pub fn new(status: Option<&Status>, logs_len: usize, webhook_timestamp: i64) -> Self {
        let rank = status.map_or(Status::UNKNOWN_RANK, Status::rank);
        let logs_len = if rank == Status::TERMINAL_RANK {
            // Logs do not reopen a finished prediction: only a later terminal delivery refreshes it.
            0
        } else {
            i64::try_from(logs_len).unwrap_or(i64::MAX)
        };
        Self {
            rank,
            logs_len,
            timestamp: webhook_timestamp,
        }
    }

    /// Whether a delivery with this progress replaces a stored state with `stored` progress.
    pub fn supersedes(&self, stored: &Progress) -> bool {
        self > stored
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(status: &str, logs: usize, ts: i64) -> Progress {
        Progress::new(Some(&Status::parse(status)), logs, ts)
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
            // equal non-terminal rank: longer logs win, then the later timestamp
            (at("processing", 5, 10), at("processing", 6, 9), true),
            (at("processing", 6, 10), at("processing", 5, 99), false),
            (at("processing", 5, 10), at("processing", 5, 11), true),
            (at("processing", 5, 10), at("processing", 5, 10), false),
            (at("processing", 5, 10), at("processing", 5, 9), false),
            (at("starting", 0, 10), at("starting", 0, 11), true),
            // unknown statuses rank with processing
            (at("processing", 5, 10), at("successful", 6, 10), true),
            (at("successful", 5, 10), at("processing", 4, 99), false),
            (at("successful", 5, 10), at("succeeded", 0, 1), true),
            (at("starting", 0, 10), at("queued", 0, 10), true),
            // terminal is final, except a later terminal delivery refreshes it
            (at("succeeded", 5, 10), at("succeeded", 9, 10), false),
            (at("succeeded", 5, 10), at("succeeded", 0, 11), true),
            (at("succeeded", 5, 10), at("failed", 0, 9), false),
            (at("failed", 0, 10), at("failed", 0, 10), false),
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
        let none = Progress::new(None, 0, 10);
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
            .copied()
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
