//! What a batch's bulk statements write, decided in memory so that the batch ends exactly as if
//! its deliveries had been recorded one after another, in order:
//!
//! - of several copies of one `webhook-id`, the first is written and the others are duplicates;
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
    /// The first copy of each `webhook-id`, by `webhook-id`.
    candidates: Vec<usize>,
    /// The delivery offered for each prediction, by prediction id.
    winners: Vec<usize>,
}

impl<'a> Plan<'a> {
    pub fn new(batch: &'a [NewDelivery]) -> Self {
        let mut candidates: Vec<usize> = (0..batch.len()).collect();
        // Stable: among copies of one id the first stays first, and `dedup_by` keeps it.
        candidates.sort_by(|&a, &b| batch[a].webhook_id.cmp(&batch[b].webhook_id));
        candidates.dedup_by(|later, first| batch[*later].webhook_id == batch[*first].webhook_id);
        Self {
            batch,
            outcomes: vec![Outcome::Duplicate; batch.len()],
            candidates,
            winners: Vec::new(),
        }
    }

    /// The deliveries to insert.
    pub fn candidates(&self) -> Vec<&'a NewDelivery> {
        self.rows(&self.candidates)
    }

    /// Takes the `webhook-id`s the insert wrote; every other delivery was seen before.
    pub fn inserted(&mut self, webhook_ids: &[String]) {
        let batch = self.batch;
        let inserted: HashSet<&str> = webhook_ids.iter().map(String::as_str).collect();
        let mut new: Vec<usize> = self
            .candidates
            .iter()
            .copied()
            .filter(|&i| inserted.contains(batch[i].webhook_id.as_str()))
            .collect();
        new.sort_unstable();
        let mut greatest: BTreeMap<&str, usize> = BTreeMap::new();
        for i in new {
            self.outcomes[i] = Outcome::Ignored;
            greatest
                .entry(batch[i].prediction.id.as_str())
                .and_modify(|best| {
                    if batch[i].progress > batch[*best].progress {
                        *best = i;
                    }
                })
                .or_insert(i);
        }
        self.winners = greatest.into_values().collect();
    }

    /// The deliveries to offer to the upsert, one per prediction.
    pub fn winners(&self) -> Vec<&'a NewDelivery> {
        self.rows(&self.winners)
    }

    /// Takes the prediction ids the upsert changed, and returns the deliveries that changed them.
    pub fn applied(&mut self, prediction_ids: &[String]) -> Vec<&'a NewDelivery> {
        let changed: HashSet<&str> = prediction_ids.iter().map(String::as_str).collect();
        let mut applied = Vec::new();
        for &i in &self.winners {
            if changed.contains(self.batch[i].prediction.id.as_str()) {
                self.outcomes[i] = Outcome::Applied;
                applied.push(&self.batch[i]);
            }
        }
        applied
    }

    /// One outcome per delivery of the batch, in its order.
    pub fn outcomes(self) -> Vec<Outcome> {
        self.outcomes
    }

    fn rows(&self, indexes: &[usize]) -> Vec<&'a NewDelivery> {
        indexes.iter().map(|&i| &self.batch[i]).collect()
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
        let mut plan = Plan::new(&batch);
        assert_eq!(ids(plan.candidates()), ["w1", "w2"]);
        plan.inserted(&["w1".into(), "w2".into()]);
        assert_eq!(ids(plan.winners()), ["w2", "w1"]); // by prediction id: p1, p2
        assert_eq!(ids(plan.applied(&["p1".into(), "p2".into()])), ["w2", "w1"]);
        let outcomes = plan.outcomes();
        assert_eq!(
            outcomes,
            [Outcome::Applied, Outcome::Applied, Outcome::Duplicate]
        );
        // The duplicate is the copy that would have advanced p1: a seen id writes nothing.
    }

    #[test]
    fn the_greatest_new_delivery_of_a_prediction_is_the_one_offered() {
        let batch = [
            delivery("w1", "p1", "processing", 5),
            delivery("w2", "p1", "succeeded", 3),
            delivery("w3", "p1", "starting", 9),
            delivery("w4", "p1", "succeeded", 3),
        ];
        let mut plan = Plan::new(&batch);
        plan.inserted(&["w1".into(), "w2".into(), "w3".into(), "w4".into()]);
        // w2 and w4 are equal: the first wins, as serially w4 would not supersede it.
        assert_eq!(ids(plan.winners()), ["w2"]);
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
        let mut plan = Plan::new(&batch);
        plan.inserted(&["w2".into()]);
        assert_eq!(ids(plan.winners()), ["w2"]);
        assert!(plan.applied(&[]).is_empty());
        assert_eq!(plan.outcomes(), [Outcome::Duplicate, Outcome::Ignored]);
    }
}
