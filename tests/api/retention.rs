//! Retention and each prediction's history: `GET /v1/predictions/{id}/deliveries`, and the pruner,
//! run as if time had passed (its clock is an argument), never removing what a latest state stands
//! on, nor a body a latest or terminal state needs.

use std::time::Duration;

use prediction_inbox::retention::{self, Policy};
use prediction_inbox::store::{DatabaseUrl, Pruned};
use reqwest::StatusCode;
use serde_json::Value;
use support::{Backend, Delivery, TestApp, assert_problem, now, prediction, spawn_app};
use time::OffsetDateTime;

const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);

/// As shipped: records for 30 days, superseded bodies for a day.
const POLICY: Policy = Policy {
    deliveries: Some(Duration::from_secs(30 * 86_400)),
    bodies: Some(DAY),
};

/// The history's results, every page followed.
async fn history(app: &TestApp, id: &str, query: &str) -> Vec<Value> {
    let mut results = Vec::new();
    let mut url = format!("{}/v1/predictions/{id}/deliveries{query}", app.address);
    loop {
        let response = app
            .client
            .get(&url)
            .bearer_auth(support::TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let page: Value = response.json().await.unwrap();
        results.extend(page["results"].as_array().unwrap().iter().cloned());
        match page["next"].as_str() {
            Some(next) => url = next.to_owned(),
            None => return results,
        }
    }
}

/// Runs retention to the end as if it were `later` from now.
async fn prune_as_if(app: &TestApp, later: Duration) -> Pruned {
    let store = app.open_store().await;
    let pruned = retention::prune_all(&*store, &POLICY, OffsetDateTime::now_utc() + later, false)
        .await
        .expect("prune");
    store.close().await;
    pruned
}

/// A life: starting, three growing `processing`, a stale `starting` that arrives late, succeeded,
/// and a copy of its end sent earlier that arrives last.
async fn a_life(app: &TestApp, id: &str) -> Vec<Delivery> {
    let life = vec![
        Delivery::new(prediction(id, "starting", "")),
        Delivery::new(prediction(id, "processing", "a")),
        Delivery::new(prediction(id, "processing", "ab")),
        Delivery::new(prediction(id, "processing", "abc")),
        Delivery::new(prediction(id, "starting", "")),
        Delivery::new(prediction(id, "succeeded", "abcd")),
        // The same end again, sent earlier: terminal, but no latest state.
        Delivery::at(now() - 10, prediction(id, "succeeded", "abcd")),
    ];
    for (delivery, expected) in life.iter().zip([
        "applied", "applied", "applied", "applied", "ignored", "applied", "ignored",
    ]) {
        assert_eq!(app.deliver(delivery).await, expected);
    }
    life
}

async fn the_history_shows_every_delivery_oldest_first_with_what_became_of_it(backend: Backend) {
    let app = spawn_app(backend).await;
    let life = a_life(&app, "h1").await;
    let outcomes = [
        "applied", "applied", "applied", "applied", "ignored", "applied",
    ];

    // One page at a time, and all at once: the same, oldest first.
    let one_by_one = history(&app, "h1", "?limit=1").await;
    let all = history(&app, "h1", "").await;
    assert_eq!(one_by_one, all);
    assert_eq!(all.len(), life.len());
    for ((record, delivery), outcome) in all.iter().zip(&life).zip(outcomes) {
        assert_eq!(record["webhook_id"], delivery.webhook_id.as_str());
        assert_eq!(record["webhook_timestamp"], delivery.timestamp);
        assert_eq!(record["source"], "webhook");
        let status: Value =
            serde_json::from_str::<Value>(&delivery.body).unwrap()["status"].clone();
        assert_eq!(record["status"], status);
        assert_eq!(record["outcome"], outcome);
        assert_eq!(record["body_size"], delivery.body.len());
        assert_eq!(record["body_kept"], true);
        assert!(record.get("body").is_none(), "no body unless asked for");
        assert!(
            record["received_at"]
                .as_str()
                .is_some_and(|t| t.ends_with('Z'))
        );
    }

    // With the bodies: each exactly as received, on pages of any size.
    let response = app.get("/v1/predictions/h1/deliveries?include=body").await;
    let text = response.text().await.unwrap();
    for delivery in &life {
        assert!(
            text.contains(&delivery.body),
            "{} is not in {text}",
            delivery.body
        );
    }
    assert_eq!(
        history(&app, "h1", "?include=body&limit=2").await.len(),
        life.len()
    );

    assert_problem(
        app.get("/v1/predictions/none/deliveries").await,
        StatusCode::NOT_FOUND,
    )
    .await;
    for bad in [
        "include=bodies",
        "limit=0",
        "limit=1001",
        "cursor=bm90IGEgY3Vyc29y",
    ] {
        let response = app
            .get(&format!("/v1/predictions/h1/deliveries?{bad}"))
            .await;
        assert_problem(response, StatusCode::BAD_REQUEST).await;
    }
    let anonymous = app
        .client
        .get(format!("{}/v1/predictions/h1/deliveries", app.address))
        .send()
        .await
        .unwrap();
    assert_problem(anonymous, StatusCode::UNAUTHORIZED).await;
}

async fn retention_drops_superseded_bodies_then_old_records_and_keeps_what_states_stand_on(
    backend: Backend,
) {
    let app = spawn_app(backend).await;
    let life = a_life(&app, "r1").await;
    // A prediction still running, whose latest state is not terminal.
    let running = [
        Delivery::new(prediction("r2", "starting", "")),
        Delivery::new(prediction("r2", "processing", "x")),
    ];
    for delivery in &running {
        assert_eq!(app.deliver(delivery).await, "applied");
    }
    let before = history(&app, "r1", "").await;

    // Within a day nothing goes.
    assert_eq!(prune_as_if(&app, 23 * HOUR).await, Pruned::default());

    // After a day: the bodies of the superseded non-terminal deliveries (three `processing`, the
    // first `starting` and the late one of r1; r2's `starting`) are dropped. Kept: the terminal
    // one, each latest state's.
    let pruned = prune_as_if(&app, 25 * HOUR).await;
    assert_eq!(
        pruned,
        Pruned {
            deliveries: 0,
            bodies: 6
        }
    );
    let after = history(&app, "r1", "?include=body").await;
    assert_eq!(after.len(), life.len(), "every record stays");
    for ((record, was), delivery) in after.iter().zip(&before).zip(&life) {
        let terminal = record["status"] == "succeeded";
        assert_eq!(record["body_kept"], terminal, "{record}");
        assert_eq!(record["body"].is_null(), !terminal, "{record}");
        // What outlives the body.
        for field in [
            "webhook_id",
            "webhook_timestamp",
            "received_at",
            "source",
            "status",
            "outcome",
            "body_size",
        ] {
            assert_eq!(record[field], was[field], "{field}");
        }
        if terminal {
            assert_eq!(
                record["body"],
                serde_json::from_str::<Value>(&delivery.body).unwrap()
            );
        }
    }
    assert_eq!(
        app.prediction("r1").await.as_deref(),
        Some(life[5].body.as_str())
    );
    assert_eq!(
        app.prediction("r2").await.as_deref(),
        Some(running[1].body.as_str())
    );
    // A redelivery of a record whose body went is still a duplicate.
    assert_eq!(app.deliver(&life[1]).await, "duplicate");

    // After the retention: only the records the latest states stand on, with their bodies.
    let pruned = prune_as_if(&app, 31 * DAY).await;
    assert_eq!(
        pruned,
        Pruned {
            deliveries: 7,
            bodies: 0
        }
    );
    for (id, latest) in [("r1", &life[5]), ("r2", &running[1])] {
        let left = history(&app, id, "?include=body").await;
        assert_eq!(left.len(), 1, "{left:?}");
        assert_eq!(left[0]["webhook_id"], latest.webhook_id.as_str());
        assert_eq!(
            left[0]["body"],
            serde_json::from_str::<Value>(&latest.body).unwrap()
        );
        assert_eq!(
            app.prediction(id).await.as_deref(),
            Some(latest.body.as_str())
        );
        assert_eq!(app.deliver(latest).await, "duplicate");
    }
    // And nothing more to do.
    assert_eq!(prune_as_if(&app, 31 * DAY).await, Pruned::default());
}

/// What a dry run counts is what a run then removes; the dry run removes nothing.
async fn a_dry_run_counts_what_a_run_removes(backend: Backend) {
    let app = spawn_app(backend).await;
    a_life(&app, "d1").await;
    // The newest delivery of all is never removed on SQLite (see its store): let it be one that
    // stays anyway.
    let other = Delivery::new(prediction("d2", "starting", ""));
    assert_eq!(app.deliver(&other).await, "applied");
    let store = app.open_store().await;
    let later = OffsetDateTime::now_utc() + 25 * HOUR;
    let counted = retention::prune_all(&*store, &POLICY, later, true)
        .await
        .unwrap();
    assert_eq!(
        counted,
        Pruned {
            deliveries: 0,
            bodies: 5
        }
    );
    assert_eq!(
        retention::prune_all(&*store, &POLICY, later, true)
            .await
            .unwrap(),
        counted
    );
    assert_eq!(
        retention::prune_all(&*store, &POLICY, later, false)
            .await
            .unwrap(),
        counted
    );
    let later = OffsetDateTime::now_utc() + 31 * DAY;
    let counted = retention::prune_all(&*store, &POLICY, later, true)
        .await
        .unwrap();
    assert_eq!(
        counted,
        Pruned {
            deliveries: 6,
            bodies: 0
        }
    );
    assert_eq!(
        retention::prune_all(&*store, &POLICY, later, false)
            .await
            .unwrap(),
        counted
    );
    store.close().await;
}

/// Pruning while a prediction's deliveries arrive, in any order and over and over: the latest
/// state follows the rule, and its delivery and body are always there to read.
async fn pruning_and_ingest_racing_keep_the_latest_state_rule(backend: Backend) {
    let app = spawn_app(backend).await;
    let store = app.open_store().await;
    let far = OffsetDateTime::now_utc() + 365 * DAY;
    let pruning = async {
        for _ in 0..40 {
            retention::prune_all(&*store, &POLICY, far, false)
                .await
                .unwrap();
            tokio::task::yield_now().await;
        }
    };
    let ingesting = async {
        for round in 0..10 {
            let id = format!("race{round}");
            let mut life = vec![
                Delivery::new(prediction(&id, "starting", "")),
                Delivery::new(prediction(&id, "processing", "a")),
                Delivery::new(prediction(&id, "processing", "ab")),
                Delivery::new(prediction(&id, "succeeded", "abc")),
            ];
            let terminal = life[3].body.clone();
            fastrand::shuffle(&mut life);
            for delivery in &life {
                app.deliver(delivery).await;
                // A read during pruning always finds a whole latest state.
                let read = app.prediction(&id).await.expect("a latest state");
                serde_json::from_str::<Value>(&read).expect("a whole body");
            }
            assert_eq!(
                app.prediction(&id).await.as_deref(),
                Some(terminal.as_str())
            );
        }
    };
    tokio::join!(pruning, ingesting);
    // The newest delivery of all is never removed on SQLite (see its store): let it be one that
    // stays anyway.
    let last = Delivery::new(prediction("last", "starting", ""));
    assert_eq!(app.deliver(&last).await, "applied");
    retention::prune_all(&*store, &POLICY, far, false)
        .await
        .unwrap();
    for round in 0..10 {
        let id = format!("race{round}");
        let left = history(&app, &id, "?include=body").await;
        assert_eq!(left.len(), 1, "{left:?}");
        assert_eq!(left[0]["status"], "succeeded");
        let read: Value = serde_json::from_str(&app.prediction(&id).await.unwrap()).unwrap();
        assert_eq!(left[0]["body"], read);
    }
    store.close().await;
}

/// With bodies, a page ends before they pass 16 MiB, after at least one; without, it does not.
async fn a_page_of_bodies_stays_within_its_byte_limit(backend: Backend) {
    let app = spawn_app(backend).await;
    let logs = |n: usize| "a".repeat(n * 1024 * 1024);
    let big = [
        Delivery::new(prediction("big", "processing", &logs(9))),
        Delivery::new(prediction("big", "processing", &logs(10))),
    ];
    for delivery in &big {
        assert_eq!(app.deliver(delivery).await, "applied");
    }
    let page: Value = app
        .get("/v1/predictions/big/deliveries?include=body")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["results"].as_array().unwrap().len(), 1);
    assert!(page["next"].is_string());
    let all = history(&app, "big", "?include=body").await;
    assert_eq!(all.len(), 2);
    assert_eq!(all[1]["webhook_id"], big[1].webhook_id.as_str());
    assert_eq!(history(&app, "big", "?limit=2").await.len(), 2);
    let page: Value = app
        .get("/v1/predictions/big/deliveries")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["results"].as_array().unwrap().len(), 2);
}

/// One replica at a time prunes: a lease held is refused to another holder until it runs out,
/// and a holder renews its own.
#[tokio::test]
async fn one_replica_at_a_time_holds_the_pruners_lease() {
    let app = spawn_app(Backend::Postgres).await;
    let (one, other) = (app.open_store().await, app.open_store().await);
    // Not the pruner's own: the app's pruner holds that one.
    let ttl = Duration::from_secs(2);
    assert!(one.lease("a test's lease", "one", ttl).await.unwrap());
    assert!(!other.lease("a test's lease", "other", ttl).await.unwrap());
    assert!(
        one.lease("a test's lease", "one", ttl).await.unwrap(),
        "renewed"
    );
    // Once `one` stops renewing, the lease runs out and `other` takes it.
    support::eventually("the lease runs out", || async {
        other.lease("a test's lease", "other", ttl).await.unwrap()
    })
    .await;
    assert!(!one.lease("a test's lease", "one", ttl).await.unwrap());
    one.close().await;
    other.close().await;
}

/// On a role that owns its database and is no superuser, as on a managed server, the service
/// migrates its database, records deliveries and prunes them (`brin_summarize_new_values` among
/// what a slice runs).
#[tokio::test]
async fn a_role_that_is_no_superuser_records_and_prunes() {
    let (app, url) = support::spawn_app_as_plain_role().await;
    a_life(&app, "r1").await;
    let other = Delivery::new(prediction("r2", "starting", ""));
    assert_eq!(app.deliver(&other).await, "applied");
    let store = prediction_inbox::store::open(&DatabaseUrl::Postgres(url), 2)
        .await
        .expect("open the store as the role");
    let later = OffsetDateTime::now_utc() + 31 * DAY;
    let pruned = retention::prune_all(&*store, &POLICY, later, false)
        .await
        .expect("prune as the role");
    assert_eq!(
        pruned,
        Pruned {
            deliveries: 6,
            bodies: 0
        }
    );
    store.close().await;
}

/// On Postgres the records' walk removes the rows by their address, never through the
/// `webhook_id` key, whose scattered pages each slice would read by the hundred.
#[tokio::test]
async fn the_records_walk_removes_rows_by_their_address() {
    use prediction_inbox::store::POSTGRES_PRUNE_STATEMENT;
    use sqlx::Connection;

    let (db, store) = support::migrated_postgres_store().await;
    let mut connection = sqlx::PgConnection::connect(&db.url).await.unwrap();
    // A table of some size, analysed: on an empty one any plan is as cheap as another.
    sqlx::raw_sql(
        "INSERT INTO deliveries (webhook_id, prediction_id, webhook_timestamp, applied, body) \
         SELECT 'msg_' || md5(g::text), 'p' || g / 10, 0, false, repeat('x', 800) \
         FROM generate_series(1, 20000) AS g; \
         ANALYZE deliveries",
    )
    .execute(&mut connection)
    .await
    .unwrap();
    let plan = support::generic_plan(
        &mut connection,
        POSTGRES_PRUNE_STATEMENT,
        "'2026-01-01', '', '2026-01-02', 500",
    )
    .await;
    assert!(plan.contains("Tid Scan on deliveries d"), "{plan}");
    assert!(!plan.contains("deliveries_pkey"), "{plan}");
    store.close().await;
}

/// On Postgres a slice of the records' walk reads the pages of the rows it takes, however the
/// table is laid out. Once a pass has freed old pages and new deliveries have filled them beside
/// the records that stay, each of those pages holds days from the first to today: an index of
/// page ranges by time (BRIN) then sent every slice through the whole of the pruned part.
#[tokio::test]
async fn a_slice_reads_its_own_rows_once_freed_pages_are_filled_again() {
    use prediction_inbox::store::POSTGRES_PRUNE_STATEMENT;
    use sqlx::{Connection, Executor};

    let (db, store) = support::migrated_postgres_store().await;
    let mut connection = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let deliveries = |prefix: &str, from: &str, count: i32| {
        format!(
            "INSERT INTO deliveries \
                 (webhook_id, prediction_id, webhook_timestamp, received_at, applied, body) \
             SELECT format('msg_{prefix}_%s', lpad(g::text, 6, '0')), '{prefix}' || g / 10, 0, \
                    '{from}'::timestamptz + g * interval '1 millisecond', false, repeat('x', 800) \
             FROM generate_series(1, {count}) AS g"
        )
    };
    // 40,000 records in January, about 4,500 pages; then a pass through the first half, which
    // keeps one in ten, and March's deliveries in the space it freed.
    for sql in [
        deliveries("jan", "2026-01-01", 40_000),
        "DELETE FROM deliveries WHERE received_at < '2026-01-01 00:00:20' \
             AND right(webhook_id, 1) <> '9'"
            .to_owned(),
        "VACUUM deliveries".to_owned(),
        deliveries("mar", "2026-03-01", 15_000),
        "ANALYZE deliveries".to_owned(),
    ] {
        connection.execute(sql.as_str()).await.unwrap();
    }
    let placed: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT (ctid::text::point)[0]) FROM deliveries \
         WHERE received_at < '2026-01-01 00:00:20' OR webhook_id LIKE 'msg_mar_%'",
    )
    .fetch_one(&mut connection)
    .await
    .unwrap();
    assert!(
        placed < 3_000,
        "March's deliveries did not go into the freed pages: with January's first half they \
         take {placed} pages"
    );

    // A slice of 500 in the second half of January: some 60 pages of rows.
    let plan = support::generic_plan_run(
        &mut connection,
        POSTGRES_PRUNE_STATEMENT,
        "'2026-01-01 00:00:30', '', '2026-01-02', 500",
    )
    .await;
    let candidates = plan
        .split_once("CTE candidates")
        .and_then(|(_, rest)| rest.split_once("Buffers: shared "))
        .map(|(_, buffers)| buffers.lines().next().unwrap_or_default())
        .unwrap_or_else(|| panic!("no buffers for the candidates in {plan}"));
    let pages: i64 = candidates
        .split([' ', ','])
        .filter_map(|count| match count.split_once('=')? {
            ("hit" | "read", pages) => pages.parse::<i64>().ok(),
            _ => None,
        })
        .sum();
    assert!(
        pages < 200,
        "{pages} pages read for a slice of 500:\n{plan}"
    );
    store.close().await;
}

/// On SQLite, dropped bodies give their pages back: the records that stay are packed together, so
/// the file reuses the space for the next day's deliveries instead of growing by it.
#[tokio::test]
async fn dropped_bodies_give_their_pages_back_on_sqlite() {
    let app = spawn_app(Backend::Sqlite).await;
    // Bodies of about 3 KiB: each held whole in a page of its own (4 KiB), as a long
    // prediction's are in part.
    let logs = "a log line that repeats\n".repeat(120);
    for i in 1..=200 {
        let body = prediction("pages", "processing", &logs[..logs.len() - 200 + i]);
        assert_eq!(app.deliver(&Delivery::new(body)).await, "applied");
    }
    let used = || async {
        app.store
            .text(
                "SELECT CAST((SELECT page_count FROM pragma_page_count()) \
                     - (SELECT freelist_count FROM pragma_freelist_count()) AS TEXT)",
            )
            .await
            .and_then(|pages| pages.parse::<i64>().ok())
            .expect("pages in use")
    };
    let before = used().await;
    let pruned = prune_as_if(&app, 25 * HOUR).await;
    assert_eq!(pruned.bodies, 199);
    let after = used().await;
    assert!(
        after * 4 < before,
        "pages in use: {before} before the bodies were dropped, {after} after"
    );
}

support::on_each_backend!(
    the_history_shows_every_delivery_oldest_first_with_what_became_of_it,
    retention_drops_superseded_bodies_then_old_records_and_keeps_what_states_stand_on,
    a_dry_run_counts_what_a_run_removes,
    pruning_and_ingest_racing_keep_the_latest_state_rule,
    a_page_of_bodies_stays_within_its_byte_limit,
);
