//! The latest-state rule, end to end: through HTTP and Postgres, in any order, under concurrency.

use std::collections::HashMap;
use std::sync::Arc;

use support::{Backend, Delivery, TestApp, now, prediction, spawn_app, spawn_app_with};

/// (first delivered, then delivered, the second's receipt, which one is the latest state after).
/// Each delivery is (status, logs, timestamp); the second's `webhook-id` is less than the first's
/// unless the case says otherwise, in `GREATER_ID_CASES`.
async fn the_contract_table_through_the_database(backend: Backend) {
    let app = spawn_app(backend).await;
    let t = now();
    let cases = [
        (("starting", "", t), ("processing", "", t), "applied", 2),
        (
            ("processing", "abc", t),
            ("starting", "", t + 5),
            "ignored",
            1,
        ),
        (
            ("succeeded", "abc", t),
            ("processing", "abcdef", t + 5),
            "ignored",
            1,
        ),
        (
            ("processing", "abc", t),
            ("succeeded", "", t - 5),
            "applied",
            2,
        ),
        (("processing", "abc", t), ("aborted", "", t), "applied", 2),
        (
            ("processing", "abc", t),
            ("processing", "abcd", t - 5),
            "applied",
            2,
        ),
        (
            ("processing", "abcd", t),
            ("processing", "abc", t + 5),
            "ignored",
            1,
        ),
        (
            ("processing", "abc", t),
            ("processing", "abc", t + 1),
            "applied",
            2,
        ),
        (
            ("processing", "abc", t),
            ("processing", "abc", t),
            "ignored",
            1,
        ),
        (
            ("processing", "abc", t),
            ("successful", "abcd", t),
            "applied",
            2,
        ),
        (
            ("successful", "abc", t),
            ("processing", "ab", t + 5),
            "ignored",
            1,
        ),
        (
            ("succeeded", "abc", t),
            ("succeeded", "abcdef", t),
            "ignored",
            1,
        ),
        (("succeeded", "abc", t), ("failed", "", t + 1), "applied", 2),
        (("failed", "", t), ("canceled", "", t - 1), "ignored", 1),
        // The same second, and equal otherwise: the greater webhook-id wins, whichever came first.
        (
            ("processing", "abc", t),
            ("processing", "abc", t),
            "applied",
            2,
        ),
        (("succeeded", "", t), ("failed", "", t), "applied", 2),
        (("succeeded", "", t), ("failed", "", t), "ignored", 1),
    ];
    const GREATER_ID_CASES: [usize; 2] = [14, 15];
    for (i, (first, second, receipt, latest)) in cases.into_iter().enumerate() {
        let id = format!("case{i}");
        let mut first = Delivery::at(first.2, prediction(&id, first.0, first.1));
        let mut second = Delivery::at(second.2, prediction(&id, second.0, second.1));
        first.webhook_id = format!("msg_{i:02}_b");
        second.webhook_id = if GREATER_ID_CASES.contains(&i) {
            format!("msg_{i:02}_c")
        } else {
            format!("msg_{i:02}_a")
        };
        assert_eq!(app.deliver(&first).await, "applied", "case {i}");
        assert_eq!(app.deliver(&second).await, receipt, "case {i}");
        let expected = if latest == 1 {
            &first.body
        } else {
            &second.body
        };
        assert_eq!(
            app.prediction(&id).await.as_ref(),
            Some(expected),
            "case {i}"
        );
    }

    // At equal logs, more output is later, whatever the timestamps and ids say.
    let shorter = Delivery::at(
        t + 5,
        with_output(prediction("out", "processing", "l"), "[\"a\"]"),
    );
    let longer = Delivery::at(
        t,
        with_output(prediction("out", "processing", "l"), "[\"a\",\"b\"]"),
    );
    assert_eq!(app.deliver(&longer).await, "applied");
    assert_eq!(app.deliver(&shorter).await, "ignored");
    assert_eq!(app.prediction("out").await, Some(longer.body));
}

/// `body` with its `output` replaced by the JSON text `output`, as sent.
fn with_output(body: String, output: &str) -> String {
    let mut value: serde_json::Value = serde_json::from_str(&body).unwrap();
    value["output"] = serde_json::Value::Null;
    serde_json::to_string(&value)
        .unwrap()
        .replace("\"output\":null", &format!("\"output\":{output}"))
}

/// starting → processing → processing (more logs) → succeeded, one second apart.
fn life(id: &str, t: i64) -> Vec<Delivery> {
    [
        ("starting", ""),
        ("processing", "step 1\n"),
        ("processing", "step 1\nstep 2\n"),
        ("succeeded", "step 1\nstep 2\ndone\n"),
    ]
    .iter()
    .enumerate()
    .map(|(i, (status, logs))| Delivery::at(t + i as i64, prediction(id, status, logs)))
    .collect()
}

fn permutations(n: usize) -> Vec<Vec<usize>> {
    if n == 0 {
        return vec![vec![]];
    }
    let mut all = Vec::new();
    for rest in permutations(n - 1) {
        for position in 0..=rest.len() {
            let mut p = rest.clone();
            p.insert(position, n - 1);
            all.push(p);
        }
    }
    all
}

async fn every_ordering_with_duplicates_ends_in_the_in_order_state(backend: Backend) {
    let app = spawn_app(backend).await;
    let t = now();
    for (n, order) in permutations(4).into_iter().enumerate() {
        let id = format!("order{n}");
        let deliveries = life(&id, t);
        // Each delivery, then each again in reverse: every duplicate arrives after everything else.
        let sequence = order.iter().chain(order.iter().rev());
        let mut seen = std::collections::HashSet::new();
        for &i in sequence {
            let receipt = app.deliver(&deliveries[i]).await;
            if !seen.insert(i) {
                assert_eq!(receipt, "duplicate", "{order:?}");
            }
        }
        let final_state = &deliveries[3].body;
        assert_eq!(
            app.prediction(&id).await.as_ref(),
            Some(final_state),
            "{order:?}"
        );
    }
    assert_eq!(app.count("deliveries").await, 24 * 4);
}

async fn a_concurrent_storm_ends_in_the_right_states_without_5xx(backend: Backend) {
    const PREDICTIONS: usize = 150;
    const SENDERS: usize = 48;
    // A bigger pool than senders would hide contention; keep the default.
    let app = Arc::new(spawn_app_with(backend, &[]).await);
    let t = now();
    let mut sends = Vec::new();
    let mut expected = HashMap::new();
    for p in 0..PREDICTIONS {
        let id = format!("storm{p}");
        let deliveries = life(&id, t);
        expected.insert(id, deliveries[3].body.clone());
        for delivery in deliveries {
            // About a third are retried, as the platform retries and networks duplicate.
            if fastrand::u8(..3) == 0 {
                sends.push(delivery.clone());
            }
            sends.push(delivery);
        }
    }
    fastrand::shuffle(&mut sends);

    let queue = Arc::new(std::sync::Mutex::new(sends));
    let senders: Vec<_> = (0..SENDERS)
        .map(|_| {
            let (app, queue) = (app.clone(), queue.clone());
            tokio::spawn(async move { send_all(&app, &queue).await })
        })
        .collect();
    let mut receipts: HashMap<String, usize> = HashMap::new();
    for sender in senders {
        for (status, receipt) in sender.await.unwrap() {
            assert_eq!(status, 200, "{receipt}");
            *receipts.entry(receipt).or_default() += 1;
        }
    }
    assert_eq!(
        receipts.get("applied").copied().unwrap_or(0)
            + receipts.get("ignored").copied().unwrap_or(0),
        PREDICTIONS * 4
    );
    for (id, body) in &expected {
        assert_eq!(app.prediction(id).await.as_ref(), Some(body), "{id}");
    }
    assert_eq!(app.count("deliveries").await as usize, PREDICTIONS * 4);
}

async fn send_all(app: &TestApp, queue: &std::sync::Mutex<Vec<Delivery>>) -> Vec<(u16, String)> {
    let mut results = Vec::new();
    loop {
        let next = queue.lock().unwrap().pop();
        let Some(delivery) = next else { return results };
        let response = app.send(&delivery).await;
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        let receipt = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["status"].as_str().map(str::to_owned))
            .unwrap_or(text);
        results.push((status, receipt));
    }
}

support::on_each_backend!(
    the_contract_table_through_the_database,
    every_ordering_with_duplicates_ends_in_the_in_order_state,
    a_concurrent_storm_ends_in_the_right_states_without_5xx,
);
