//! The latest-state rule as a property: however a prediction's deliveries are reordered and
//! duplicated, folding them ends in the state in-order delivery ends in.

use prediction_inbox::domain::{Progress, Status};
use proptest::prelude::*;

/// A prediction's life as the platform sends it: `starting`, then processing steps whose logs only
/// grow, then one terminal status; timestamps never go backwards (several may share a second).
fn life() -> impl Strategy<Value = Vec<Progress>> {
    let terminal = prop::sample::select(vec!["succeeded", "failed", "canceled", "aborted"]);
    (
        prop::collection::vec((1usize..50, 0i64..3), 0..8),
        terminal,
        0i64..3,
    )
        .prop_map(|(steps, terminal, last_gap)| {
            let mut t = 1_700_000_000;
            let mut logs = 0;
            let mut life = vec![Progress::new(Some(&Status::Starting), 0, t)];
            for (growth, gap) in steps {
                logs += growth;
                t += gap;
                life.push(Progress::new(Some(&Status::Processing), logs, t));
            }
            t += last_gap;
            life.push(Progress::new(Some(&Status::parse(terminal)), logs, t));
            life
        })
}

fn fold(deliveries: impl IntoIterator<Item = Progress>) -> Option<Progress> {
    deliveries
        .into_iter()
        .fold(None, |stored, new| match stored {
            Some(stored) if !new.supersedes(&stored) => Some(stored),
            _ => Some(new),
        })
}

proptest! {
    // Cheap enough to look hard.
    #![proptest_config(ProptestConfig::with_cases(4096))]

    #[test]
    fn any_order_with_duplicates_ends_in_the_in_order_state(
        (life, order) in life().prop_flat_map(|life| {
            let n = life.len();
            // Every delivery at least once, some several times, in any order.
            let order = prop::collection::vec(0..n, 0..3 * n)
                .prop_map(move |extra| (0..n).chain(extra).collect::<Vec<_>>())
                .prop_shuffle();
            (Just(life), order)
        })
    ) {
        let in_order = fold(life.iter().copied());
        let shuffled = fold(order.iter().map(|&i| life[i]));
        prop_assert_eq!(shuffled, in_order);
        // And the state reached is the terminal one: nothing after it ever wins.
        prop_assert_eq!(in_order, life.last().copied());
    }
}
