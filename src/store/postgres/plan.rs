//! What a batch's statement writes, decided in memory so that the batch ends exactly as if its
//! deliveries had been recorded one after another, in order:
//!
//! - a `webhook-id` recorded before is a duplicate, and so is every copy of one after the first;
//! - of the new deliveries of one prediction, a delivery *leads* when it is greater, by the
//!   latest-state order, than every one before it in the batch: at its turn it advanced the state
//!   if it was also greater than the stored one, which only the statement knows. So the statement
//!   is told which lead, and answers which of them beat the stored state;
//! - only the greatest of a prediction's new deliveries is offered to the upsert (Postgres refuses
//!   to update one row twice in a statement); it is the last leader, and the state it leaves is the
//!   one serial recording would have left.
//!
//! Rows are offered in key order (webhook ids for the insert, prediction ids for the upsert), so
//! two batches that overlap take their row locks in the same order and cannot deadlock.

use std::collections::{HashMap, HashSet};

use crate::store::{NewDelivery, Outcome};

pub struct Plan<'a> {
    batch: &'a [NewDelivery],
    outcomes: Vec<Outcome>,
    /// The first copy of each new `webhook-id`, by `webhook-id`.
    new: Vec<usize>,
    /// Whether each delivery of the batch leads its prediction at its turn (see the module's docs).
    leads: Vec<bool>,
    /// Whether each delivery of the batch is offered to the upsert: at most one per prediction.
    offered: Vec<bool>,
}

impl<'a> Plan<'a> {
    /// Plans `batch`, given which of its `webhook-id`s were recorded before (`seen`).
    pub fn new(batch: &'a [NewDelivery], seen: &[String]) -> Self {
        let seen: HashSet<&str> = seen.iter().map(String::as_str).collect();
        let mut new: Vec<usize> = (0..batch.len())
            .filter(|&i| !seen.contains(batch[i].webhook_id().as_str()))
            .collect();
        // Stable: among copies of one id the first stays first, and `dedup_by` keeps it.
        new.sort_by(|&a, &b| batch[a].webhook_id().cmp(batch[b].webhook_id()));
        new.dedup_by(|later, first| batch[*later].webhook_id() == batch[*first].webhook_id());

        let mut outcomes = vec![Outcome::Duplicate; batch.len()];
        let mut leads = vec![false; batch.len()];
        let mut greatest: HashMap<&str, usize> = HashMap::new();
        let mut in_order = new.clone();
        in_order.sort_unstable();
        for i in in_order {
            outcomes[i] = Outcome::Ignored;
            let best = greatest.entry(batch[i].prediction.id.as_str()).or_insert(i);
            if *best == i || batch[i].progress.supersedes(&batch[*best].progress) {
                *best = i;
                leads[i] = true;
            }
        }
        let mut offered = vec![false; batch.len()];
        for i in greatest.into_values() {
            offered[i] = true;
        }
        Self {
            batch,
            outcomes,
            new,
            leads,
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

    /// Whether each of [`Plan::new_deliveries`] leads its prediction at its turn.
    pub fn leads(&self) -> Vec<bool> {
        self.new.iter().map(|&i| self.leads[i]).collect()
    }

    /// Takes the `webhook-id`s the statement found to have advanced their prediction at their turn.
    pub fn applied(&mut self, webhook_ids: &[String]) {
        let applied: HashSet<&str> = webhook_ids.iter().map(String::as_str).collect();
        for &i in &self.new {
            if applied.contains(self.batch[i].webhook_id().as_str()) {
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
    use super::*;
    use crate::domain::{Prediction, WebhookId};

    fn delivery(webhook_id: &str, id: &str, status: &str, timestamp: i64) -> NewDelivery {
        let body = format!(r#"{{"id":"{id}","status":"{status}"}}"#);
        let prediction = Prediction::parse(&body).unwrap();
        NewDelivery::new(
            prediction,
            WebhookId::parse(webhook_id).unwrap(),
            timestamp,
            body,
        )
    }

    fn ids(rows: Vec<&NewDelivery>) -> Vec<&str> {
        rows.into_iter().map(|d| d.webhook_id().as_str()).collect()
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
        plan.applied(&["w1".into(), "w2".into()]);
        // The duplicate is the copy that would have advanced p1: a seen id writes nothing.
        assert_eq!(
            plan.outcomes(),
            [Outcome::Applied, Outcome::Applied, Outcome::Duplicate]
        );
    }

    #[test]
    fn the_greatest_is_offered_and_each_delivery_greater_than_those_before_it_leads() {
        let batch = [
            delivery("w1", "p1", "processing", 5),
            delivery("w2", "p1", "succeeded", 3),
            delivery("w3", "p1", "starting", 9),
            delivery("w4", "p1", "succeeded", 3),
        ];
        let plan = Plan::new(&batch, &[]);
        // By webhook id: w1, w2, w3, w4. w4 equals w2 but for its greater id, so it is greater.
        assert_eq!(plan.offered(), [false, false, false, true]);
        assert_eq!(plan.leads(), [true, true, false, true]);
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
        assert_eq!((plan.offered(), plan.leads()), (vec![true], vec![true]));
        plan.applied(&["w2".into()]);
        assert_eq!(plan.outcomes(), [Outcome::Duplicate, Outcome::Applied]);
    }
}
