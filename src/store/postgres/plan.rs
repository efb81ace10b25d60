//! What a batch's statement writes, decided in memory so that the batch ends exactly as if its
//! deliveries had been recorded one after another, in order:
//!
//! - a `webhook-id` recorded before is a duplicate, and so is every copy of one after the first;
//! - of several new deliveries of one prediction, only the greatest by the latest-state order is
//!   offered to the upsert (the first of equals, as serially the later would not supersede it);
//!   the others are recorded, but ignored — which is what they would be after it.
//!
//! Rows are offered in key order (webhook ids for the insert, prediction ids for the upsert), so
//! two batches that overlap take their row locks in the same order and cannot deadlock.

use std::collections::{BTreeMap, HashSet};

use crate::store::{NewDelivery, Outcome};

pub struct Plan<'a> {
    batch: &'a [NewDelivery],
    outcomes: Vec<Outcome>,
    /// The first copy of each new `webhook-id`, by `webhook-id`.
    new: Vec<usize>,
    /// Whether each delivery of the batch is offered to the upsert: at most one per prediction.
    offered: Vec<bool>,
}

impl<'a> Plan<'a> {
    /// Plans `batch`, given which of its `webhook-id`s were recorded before (`seen`).
    pub fn new(batch: &'a [NewDelivery], seen: &[String]) -> Self {
        let seen: HashSet<&str> = seen.iter().map(String::as_str).collect();
        let mut new: Vec<usize> = (0..batch.len())
            .filter(|&i| !seen.contains(batch[i].webhook_id.as_str()))
            .collect();
        // Stable: among copies of one id the first stays first, and `dedup_by` keeps it.
        new.sort_by(|&a, &b| batch[a].webhook_id.cmp(&batch[b].webhook_id));
        new.dedup_by(|later, first| batch[*later].webhook_id == batch[*first].webhook_id);

        let mut outcomes = vec![Outcome::Duplicate; batch.len()];
        let mut greatest: BTreeMap<&str, usize> = BTreeMap::new();
        let mut in_order = new.clone();
        in_order.sort_unstable();
        for i in in_order {
            outcomes[i] = Outcome::Ignored;
            greatest
                .entry(batch[i].prediction.id.as_str())
                .and_modify(|best| {
                    if batch[i].progress > batch[*best].progress {
                        *best = i;
                    }
                })
                .or_insert(i);
        }
        let mut offered = vec![false; batch.len()];
        for i in greatest.into_values() {
            offered[i] = true;
        }
        Self {
            batch,
            outcomes,
            new,
            offered,
        }
    }

    /// The deliveries to insert, by `webhook-id`.
    pub fn new_deliveries(&self) -> Vec<&'a NewDelivery> {
        self.new.iter().map(|&i| &self.batch[i]).collect()
    }

    /// Whether each of [`Plan::new_deliveries`] is offered to the upsert.
    pub fn offered(&self) -> Vec<bool> {
        self.new.iter().map(|&i| self.offered[i]).collect()
    }

    /// Takes the prediction ids the upsert changed: their offered deliveries were applied.
    pub fn applied(&mut self, prediction_ids: &[String]) {
        let changed: HashSet<&str> = prediction_ids.iter().map(String::as_str).collect();
        for &i in &self.new {
            if self.offered[i] && changed.contains(self.batch[i].prediction.id.as_str()) {
                self.outcomes[i] = Outcome::Applied;
            }
        }
    }

    /// One outcome per delivery of the batch, in its order.
    pub fn outcomes(self) -> Vec<Outcome> {
        self.outcomes
    }
}

#[cfg(test)]
mod tests {
    use time::OffsetDateTime;

    use super::*;
    use crate::domain::{Prediction, Progress, WebhookId};

    fn delivery(webhook_id: &str, id: &str, status: &str, timestamp: i64) -> NewDelivery {
        let body = format!(r#"{{"id":"{id}","status":"{status}"}}"#);
        let prediction = Prediction::parse(&body).unwrap();
        NewDelivery {
            webhook_id: WebhookId::parse(webhook_id).unwrap(),
            webhook_timestamp: timestamp,
            progress: Progress::new(prediction.status.as_ref(), 0, timestamp),
            prediction,
            body,
            received_at: OffsetDateTime::UNIX_EPOCH,
        }
    }

    fn ids(rows: Vec<&NewDelivery>) -> Vec<&str> {
        rows.into_iter().map(|d| d.webhook_id.as_str()).collect()
    }

    #[test]
    fn copies_of_a_webhook_id_after_the_first_are_duplicates() {
        let batch = [
            delivery("w2", "p1", "starting", 1),
            delivery("w1", "p2", "starting", 1),
            delivery("w2", "p1", "succeeded", 2),
        ];
        let mut plan = Plan::new(&batch, &[]);
        assert_eq!(ids(plan.new_deliveries()), ["w1", "w2"]);
        assert_eq!(plan.offered(), [true, true]);
        plan.applied(&["p1".into(), "p2".into()]);
        // The duplicate is the copy that would have advanced p1: a seen id writes nothing.
        assert_eq!(
            plan.outcomes(),
            [Outcome::Applied, Outcome::Applied, Outcome::Duplicate]
        );
    }

    #[test]
    fn the_greatest_new_delivery_of_a_prediction_is_the_one_offered() {
        let batch = [
            delivery("w1", "p1", "processing", 5),
            delivery("w2", "p1", "succeeded", 3),
            delivery("w3", "p1", "starting", 9),
            delivery("w4", "p1", "succeeded", 3),
        ];
        let mut plan = Plan::new(&batch, &[]);
        // w2 and w4 are equal: the first wins, as serially w4 would not supersede it.
        assert_eq!(plan.offered(), [false, true, false, false]);
        plan.applied(&["p1".into()]);
        assert_eq!(
            plan.outcomes(),
            [
                Outcome::Ignored,
                Outcome::Applied,
                Outcome::Ignored,
                Outcome::Ignored
            ]
        );
    }

    #[test]
    fn seen_ids_are_duplicates_and_a_refused_upsert_is_ignored() {
        let batch = [
            delivery("w1", "p1", "succeeded", 1),
            delivery("w2", "p2", "starting", 1),
        ];
        let mut plan = Plan::new(&batch, &["w1".into()]);
        assert_eq!(ids(plan.new_deliveries()), ["w2"]);
        assert_eq!(plan.offered(), [true]);
        plan.applied(&[]);
        assert_eq!(plan.outcomes(), [Outcome::Duplicate, Outcome::Ignored]);
    }

    #[test]
    fn a_seen_delivery_does_not_stand_in_for_its_prediction() {
        // The seen copy is the greatest, but writes nothing: the new one is offered, and the
        // stored state decides.
        let batch = [
            delivery("w1", "p1", "succeeded", 1),
            delivery("w2", "p1", "processing", 1),
        ];
        let mut plan = Plan::new(&batch, &["w1".into()]);
        assert_eq!(ids(plan.new_deliveries()), ["w2"]);
        assert_eq!(plan.offered(), [true]);
        plan.applied(&["p1".into()]);
        assert_eq!(plan.outcomes(), [Outcome::Duplicate, Outcome::Applied]);
    }
}
