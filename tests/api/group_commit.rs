//! Group commit: deliveries that arrive together are written together, and each still gets the
//! answer it would have had alone.

use std::collections::HashMap;

use futures_util::future::join_all;
use reqwest::StatusCode;
use support::{Backend, Delivery, TestApp, now, prediction, spawn_app};

/// Sends every delivery at once; the status code and receipt status (or problem) of each.
async fn send_together(app: &TestApp, deliveries: &[Delivery]) -> Vec<(StatusCode, String)> {
    join_all(deliveries.iter().map(|delivery| async move {
        let response = app.send(delivery).await;
        let status = response.status();
        let body: serde_json::Value = response.json().await.expect("a JSON answer");
        (
            status,
            body["status"].to_string().trim_matches('"').to_owned(),
        )
    }))
    .await
}

fn batches_written() -> (f64, f64) {
    let text = prediction_inbox::metrics::handle().render();
    let read = |name: &str| -> f64 {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or(0.0)
    };
    (
        read("inbox_ingest_batch_size_count"),
        read("inbox_ingest_batch_size_sum"),
    )
}

async fn copies_sent_together_record_one_and_answer_the_rest_duplicate(backend: Backend) {
    let app = spawn_app(backend).await;
    let (batches_before, deliveries_before) = batches_written();
    let delivery = Delivery::new(prediction("p1", "succeeded", ""));
    let answers = send_together(&app, &vec![delivery.clone(); 64]).await;

    let mut counts: HashMap<String, usize> = HashMap::new();
    for (status, receipt) in answers {
        assert_eq!(status, StatusCode::OK, "{receipt}");
        *counts.entry(receipt).or_default() += 1;
    }
    assert_eq!(counts.get("applied"), Some(&1), "{counts:?}");
    assert_eq!(counts.get("duplicate"), Some(&63), "{counts:?}");
    assert_eq!(app.count("deliveries").await, 1);
    assert_eq!(
        app.prediction("p1").await.as_deref(),
        Some(delivery.body.as_str())
    );
    // They were written in fewer transactions than deliveries (other tests in this process may
    // add to both figures, never to one without the other).
    let (batches, deliveries) = batches_written();
    assert!(
        deliveries - deliveries_before > batches - batches_before,
        "no batch held more than one delivery"
    );
}

async fn a_life_sent_all_at_once_ends_in_its_final_state_with_one_receipt_each(backend: Backend) {
    let app = spawn_app(backend).await;
    let t = now();
    let mut deliveries = Vec::new();
    for p in 0..16 {
        let id = format!("p{p}");
        deliveries.extend([
            Delivery::at(t, prediction(&id, "starting", "")),
            Delivery::at(t + 1, prediction(&id, "processing", "a")),
            Delivery::at(t + 2, prediction(&id, "processing", "ab")),
            Delivery::at(t + 3, prediction(&id, "succeeded", "ab")),
        ]);
    }
    let answers = send_together(&app, &deliveries).await;
    for (delivery, (status, receipt)) in deliveries.iter().zip(&answers) {
        assert_eq!(*status, StatusCode::OK);
        // Whatever order they were written in, the terminal state is never ignored: nothing
        // of its prediction is greater.
        if delivery.body.contains("succeeded") {
            assert_eq!(receipt, "applied");
        } else {
            assert!(receipt == "applied" || receipt == "ignored", "{receipt}");
        }
    }
    for p in 0..16 {
        let stored: serde_json::Value =
            serde_json::from_str(&app.prediction(&format!("p{p}")).await.unwrap()).unwrap();
        assert_eq!(stored["status"], "succeeded");
    }
    // Each delivery is recorded once, and exactly the applied ones are marked so.
    let recorded = app.deliveries().await;
    assert_eq!(recorded.len(), deliveries.len());
    let applied_receipts = answers.iter().filter(|(_, r)| r == "applied").count();
    let applied_rows = recorded.iter().filter(|(applied, _)| *applied).count();
    assert_eq!(applied_rows, applied_receipts);
}

/// Within one batch each delivery is answered as if the batch had been recorded one delivery after
/// another in arrival order: `applied` if it advanced the state at its turn, even when a later one
/// advanced it further; and the `applied` flag recorded says the same.
async fn a_batch_is_answered_as_if_recorded_one_delivery_after_another(backend: Backend) {
    let faults = std::sync::Arc::new(support::Faulty::default());
    let app = support::spawn_app_with_faults(backend, &[], Some(faults.clone())).await;
    let t = now();
    // One prediction stored before the batch, at logs "abc".
    let stored = Delivery::at(t, prediction("known", "processing", "abc"));
    assert_eq!(app.deliver(&stored).await, "applied");
    // (prediction, status, logs, seconds after t, the answer of serial recording)
    let table = [
        // A new prediction's life in order: each advances it at its turn.
        ("new", "starting", "", 0, "applied"),
        ("new", "processing", "a", 1, "applied"),
        ("new", "succeeded", "a", 2, "applied"),
        // Another's out of order: the first is applied, then only what beats it.
        ("late", "processing", "ab", 2, "applied"),
        ("late", "starting", "", 0, "ignored"),
        ("late", "failed", "", 3, "applied"),
        ("late", "processing", "abc", 1, "ignored"),
        // The stored one's: less than the stored state is ignored even when it leads the batch.
        ("known", "processing", "ab", 5, "ignored"),
        ("known", "processing", "abcd", 1, "applied"),
        ("known", "starting", "", 9, "ignored"),
        ("known", "canceled", "", 2, "applied"),
    ];
    let batch: Vec<(Delivery, &str)> = table
        .iter()
        .map(|(id, status, logs, after, receipt)| {
            (
                Delivery::at(t + after, prediction(id, status, logs)),
                *receipt,
            )
        })
        .collect();
    let deliveries: Vec<Delivery> = batch.iter().map(|(d, _)| d.clone()).collect();
    let answers = support::send_as_one_batch(&app, &faults, &deliveries).await;
    let expected: Vec<_> = batch.iter().map(|(_, receipt)| *receipt).collect();
    let receipts: Vec<String> = answers
        .iter()
        .map(|(status, text)| {
            assert_eq!(*status, StatusCode::OK, "{text}");
            serde_json::from_str::<serde_json::Value>(text).unwrap()["status"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(receipts, expected);
    let in_one_batch: Vec<String> = table.iter().map(|row| row.0.to_owned()).collect();
    assert!(faults.taken.lock().unwrap().contains(&in_one_batch));
    for (id, last) in [("new", 2), ("late", 5), ("known", 10)] {
        assert_eq!(app.prediction(id).await, Some(batch[last].0.body.clone()));
    }
    let recorded = app.deliveries().await;
    for (delivery, receipt) in &batch {
        let applied = recorded
            .iter()
            .find(|(_, body)| *body == delivery.body)
            .unwrap()
            .0;
        assert_eq!(applied, *receipt == "applied", "{}", delivery.body);
    }
}

async fn a_failed_batch_answers_503_to_every_delivery_in_it_and_records_none(backend: Backend) {
    let app = spawn_app(backend).await;
    app.execute(match backend {
        Backend::Postgres => {
            "ALTER TABLE deliveries ADD CONSTRAINT refuse CHECK (webhook_timestamp < 0) NOT VALID"
        }
        Backend::Sqlite => {
            "CREATE TRIGGER refuse BEFORE INSERT ON deliveries BEGIN SELECT RAISE(ABORT, 'refused'); END"
        }
    })
    .await;
    let deliveries: Vec<Delivery> = (0..32)
        .map(|p| Delivery::new(prediction(&format!("p{p}"), "starting", "")))
        .collect();
    for (status, _) in send_together(&app, &deliveries).await {
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    }
    assert_eq!(app.count("deliveries").await, 0);
    assert_eq!(app.count("predictions").await, 0);
}

/// When the writers fall behind, the queue holds a bounded number of deliveries; past it, senders
/// wait for room and then get a 503 with `Retry-After`, with nothing of theirs recorded, while
/// everything queued is still written once the writers can write again.
async fn past_a_full_queue_senders_get_503_and_lose_nothing(backend: Backend) {
    // More than the queue and every writer's largest batch can hold.
    const SENDERS: usize = 2300;
    support::limits::raise_open_files(3 * SENDERS as u64 + 1000);
    let app = spawn_app(backend).await;
    let blocker = app.block_writes().await;
    let deliveries: Vec<Delivery> = (0..SENDERS)
        .map(|p| Delivery::new(prediction(&format!("p{p}"), "starting", "")))
        .collect();
    let refused_so_far = std::sync::atomic::AtomicUsize::new(0);
    let release = async {
        // Once senders waited past the 5 s a sender waits for room in the queue.
        support::eventually("a sender is refused", || async {
            refused_so_far.load(std::sync::atomic::Ordering::SeqCst) > 0
        })
        .await;
        blocker.release().await;
    };
    let (app, refused_so_far) = (&app, &refused_so_far);
    let sending = join_all(deliveries.iter().map(|delivery| async move {
        let response = app.send(delivery).await;
        if response.status() == StatusCode::SERVICE_UNAVAILABLE {
            refused_so_far.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        let retry_after = response.headers().contains_key("retry-after");
        (response.status(), retry_after)
    }));
    let (answers, ()) = tokio::join!(sending, release);

    let refused = answers
        .iter()
        .filter(|(status, _)| *status == StatusCode::SERVICE_UNAVAILABLE)
        .count();
    let accepted = answers
        .iter()
        .filter(|(status, _)| status.is_success())
        .count();
    assert!(refused > 0, "the queue never filled");
    assert!(accepted > 0, "nothing queued was written");
    assert_eq!(refused + accepted, SENDERS, "only 200s and 503s");
    assert!(
        answers
            .iter()
            .all(|(status, retry)| status.is_success() || *retry)
    );
    // Exactly the accepted ones are recorded.
    assert_eq!(app.count("deliveries").await, accepted as i64);
    assert_eq!(app.count("predictions").await, accepted as i64);
}

support::on_each_backend!(
    copies_sent_together_record_one_and_answer_the_rest_duplicate,
    a_life_sent_all_at_once_ends_in_its_final_state_with_one_receipt_each,
    a_batch_is_answered_as_if_recorded_one_delivery_after_another,
    a_failed_batch_answers_503_to_every_delivery_in_it_and_records_none,
    past_a_full_queue_senders_get_503_and_lose_nothing,
);

/// Batches go out on one connection that the writer keeps. Through the pool, each batch paid one
/// more round trip (sqlx pings every connection it takes back), and as the pool hands out its idle
/// connections in turn, batches went round all of its backends.
#[tokio::test]
async fn batches_are_written_on_one_connection_the_writer_keeps() {
    let app = spawn_app(Backend::Postgres).await;
    // Reads at once, so that the pool holds several idle connections, which it hands out in turn.
    join_all((0..8).map(|_| app.prediction("p0"))).await;
    // Senders that keep the writer busy: each next batch is ready as the last one commits.
    join_all((0..16).map(|sender| {
        let app = &app;
        async move {
            for i in 0..20 {
                let id = format!("p{sender}_{i}");
                assert_eq!(
                    app.deliver(&Delivery::new(prediction(&id, "starting", "")))
                        .await,
                    "applied"
                );
            }
        }
    }))
    .await;
    // Each backend's `query` is (the start of) the last statement it ran.
    let writers: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
         AND application_name = 'prediction-inbox' AND query LIKE '%UNNEST($1::text[]%'",
    )
    .fetch_one(app.postgres().1)
    .await
    .unwrap();
    assert_eq!(writers, 1);
}

/// Once the store is closed (at shutdown, after the last request), a batch opens no connection:
/// the one kept for writes is closed with the pool, and not opened again.
#[tokio::test]
async fn a_closed_store_writes_nothing_and_leaves_no_connection_open() {
    use prediction_inbox::domain::{Prediction, WebhookId};
    use prediction_inbox::store::NewDelivery;

    let (db, store) = support::migrated_postgres_store().await;
    let delivery = |webhook_id: &str| {
        let body = prediction("p1", "starting", "");
        let prediction = Prediction::parse(&body).unwrap();
        NewDelivery::new(
            prediction,
            WebhookId::parse(webhook_id).unwrap(),
            now(),
            body,
        )
    };
    let deadline = || tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    store
        .record(&[delivery("msg_1")], deadline())
        .await
        .unwrap();
    store.close().await;

    assert!(
        store
            .record(&[delivery("msg_2")], deadline())
            .await
            .is_err()
    );
    let pool = db.pool().await;
    // A closed connection's backend leaves `pg_stat_activity` a moment after it is closed.
    let mut open = -1_i64;
    for _ in 0..50 {
        open = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
             AND application_name = 'prediction-inbox'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        if open == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(open, 0, "connections left open");
    let recorded: i64 = sqlx::query_scalar("SELECT count(*) FROM deliveries")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(recorded, 1);
}

/// The writer's statement finds each prediction of a batch through its key even in a plan made
/// while `predictions` was empty. The server keeps one generic plan per connection after five
/// runs; made on a near-empty table, it had read the whole table for every batch ever after, and
/// a fresh database wrote half as many deliveries a second as it should have.
#[tokio::test]
async fn the_batch_statement_finds_predictions_by_key_in_a_plan_made_on_an_empty_table() {
    use prediction_inbox::store::{POSTGRES_BATCH_STATEMENT, POSTGRES_WRITER_SETTINGS};
    use sqlx::Connection;
    use sqlx::postgres::{PgConnectOptions, PgConnection};

    let (db, _store) = support::migrated_postgres_store().await;
    let options: PgConnectOptions = db.url.parse().unwrap();
    let mut connection = PgConnection::connect_with(&options.options(POSTGRES_WRITER_SETTINGS))
        .await
        .unwrap();
    let plan = support::generic_plan(
        &mut connection,
        POSTGRES_BATCH_STATEMENT,
        "'{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', \
         'channel', '1 minute', '{}'",
    )
    .await;
    assert!(
        plan.contains("Index Scan using predictions_pkey on predictions"),
        "{plan}"
    );
    assert!(!plan.contains("Seq Scan on predictions"), "{plan}");
}

/// On SQLite, what a commit writes to the write-ahead log reaches the database file without a
/// commit copying it: left to the writer, the commit that took the log past a thousand pages
/// copied it into the file and synced it, and every delivery behind it waited.
#[tokio::test]
async fn on_sqlite_the_log_reaches_the_file_off_the_writers_path() {
    let app = spawn_app(Backend::Sqlite).await;
    let support::TestStore::Sqlite { file, .. } = &app.store else {
        unreachable!("a SQLite app");
    };
    for p in 0..3 {
        let delivery = Delivery::new(prediction(&format!("p{p}"), "starting", ""));
        assert_eq!(app.deliver(&delivery).await, "applied");
    }
    // Opened `immutable`, SQLite reads the file alone and never its log.
    let in_the_file = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&file.path)
        .read_only(true)
        .immutable(true);
    support::eventually("the three deliveries are in the file itself", || async {
        let Ok(mut connection) = sqlx::ConnectOptions::connect(&in_the_file).await else {
            return false;
        };
        let counted = sqlx::query_scalar::<_, i64>("SELECT count(*) FROM deliveries")
            .fetch_one(&mut connection)
            .await;
        matches!(counted, Ok(3))
    })
    .await;
}
