//! The latest-state rule as a property: however a prediction's deliveries are reordered and
//! duplicated, folding them ends in the same delivery — the same body — and for a life as the
//! platform sends it, in its terminal delivery.

use prediction_inbox::domain::{Progress, Status, WebhookId};
use proptest::prelude::*;

/// A delivery as the fold sees it: its place in the order, and which body it carries.
#[derive(Debug, Clone)]
struct Delivery {
    progress: Progress,
    body: String,
}

/// Deliveries of one prediction drawn from few values, so that equal statuses, equal logs, equal
/// output and the same second are common; each has a `webhook-id` and a body of its own.
fn deliveries() -> impl Strategy<Value = Vec<Delivery>> {
    let status = prop::sample::select(vec![
        "starting",
        "processing",
        "queued",
        "succeeded",
        "failed",
        "canceled",
    ]);
    prop::collection::vec((status, 0usize..3, 0usize..3, 0i64..3), 1..10).prop_map(|drawn| {
        drawn
            .into_iter()
            .enumerate()
            .map(|(i, (status, logs, output, second))| Delivery {
                progress: Progress::new(
                    Some(&Status::parse(status)),
                    logs,
                    output,
                    1_700_000_000 + second,
                    WebhookId::parse(format!("msg_{i:02}")).expect("a webhook id"),
                ),
                body: format!("body {i}: {status}, logs {logs}, output {output}, at {second}"),
            })
            .collect()
    })
}

/// A prediction's life as the platform sends it: `starting`, then processing steps whose logs and
/// output only grow, then one terminal status; timestamps never go backwards (several may share a
/// second).
fn life() -> impl Strategy<Value = Vec<Delivery>> {
    let terminal = prop::sample::select(vec!["succeeded", "failed", "canceled", "aborted"]);
    (
        prop::collection::vec((0usize..50, 0usize..50, 0i64..3), 0..8),
        terminal,
        0i64..3,
    )
        .prop_map(|(steps, terminal, last_gap)| {
            let mut t = 1_700_000_000;
            let (mut logs, mut output) = (0, 4);
            let step = |status: &str, logs, output, t, i: usize| Delivery {
                progress: Progress::new(
                    Some(&Status::parse(status)),
                    logs,
                    output,
                    t,
                    WebhookId::parse(format!("msg_{i:02}")).expect("a webhook id"),
                ),
                body: format!("step {i}: {status}"),
            };
            let mut life = vec![step("starting", 0, 4, t, 0)];
            for (i, (more_logs, more_output, gap)) in steps.into_iter().enumerate() {
                logs += more_logs;
                output += more_output;
                t += gap;
                life.push(step("processing", logs, output, t, i + 1));
            }
            t += last_gap;
            let n = life.len();
            life.push(step(terminal, logs, output, t, n));
            life
        })
}

/// The stored state after `deliveries` arrive in this order: each replaces it if it supersedes it.
fn fold<'a>(deliveries: impl IntoIterator<Item = &'a Delivery>) -> Option<&'a Delivery> {
    deliveries
        .into_iter()
        .fold(None, |stored, new| match stored {
            Some(stored) if !new.progress.supersedes(&stored.progress) => Some(stored),
            _ => Some(new),
        })
}

/// Every delivery at least once, some several times (the platform's retries), in any order.
fn reordered(n: usize) -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(0..n, 0..3 * n)
        .prop_map(move |extra| (0..n).chain(extra).collect::<Vec<_>>())
        .prop_shuffle()
}

proptest! {
    // Cheap enough to look hard.
    #![proptest_config(ProptestConfig::with_cases(4096))]

    #[test]
    fn any_order_with_duplicates_ends_in_the_same_body(
        (deliveries, order) in deliveries().prop_flat_map(|d| {
            let n = d.len();
            (Just(d), reordered(n))
        })
    ) {
        let as_sent = fold(&deliveries).map(|d| &d.body);
        let as_arrived = fold(order.iter().map(|&i| &deliveries[i])).map(|d| &d.body);
        prop_assert_eq!(as_arrived, as_sent);
    }

    #[test]
    fn a_life_in_any_order_ends_in_its_terminal_delivery(
        (life, order) in life().prop_flat_map(|life| {
            let n = life.len();
            (Just(life), reordered(n))
        })
    ) {
        let as_arrived = fold(order.iter().map(|&i| &life[i])).map(|d| &d.body);
        prop_assert_eq!(as_arrived, life.last().map(|d| &d.body));
    }
}
