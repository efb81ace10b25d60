//! Migrations of a database that holds data: what the service stored before reads the same after.

use std::path::PathBuf;

use prediction_inbox::store::DatabaseUrl;
use prediction_inbox::store::{self, ListQuery};
use sqlx::PgPool;
use support::{Backend, Delivery, TestDatabase, now, prediction, spawn_app};

/// The migration after which each prediction points at its latest delivery.
const POINTERS: i64 = 20261126000003;
/// The migration that makes the latest-state rule one total order, output length included.
const TOTAL_ORDER: i64 = 20261203000001;

/// The first migration that builds an index for retention, CONCURRENTLY.
const RETENTION_INDEXES: i64 = 20261205000003;

/// A database migrated as far as the migrations before `version`, as a service released before it
/// would have left it.
async fn migrated_before(version: i64) -> TestDatabase {
    let db = TestDatabase::create().await;
    let source = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("migrations/postgres");
    let earlier = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("migrations-before-{version}-{}", fastrand::u64(..)));
    std::fs::create_dir_all(&earlier).unwrap();
    for entry in std::fs::read_dir(&source).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let number: i64 = name.split('_').next().unwrap().parse().unwrap();
        if number < version {
            std::fs::copy(&path, earlier.join(&name)).unwrap();
        }
    }
    let pool = db.pool().await;
    sqlx::migrate::Migrator::new(earlier.as_path())
        .await
        .unwrap()
        .run(&pool)
        .await
        .unwrap();
    pool.close().await;
    std::fs::remove_dir_all(&earlier).unwrap();
    db
}

/// Records `webhook_id` of prediction `id` as the service did before `POINTERS`, and, if it was
/// applied, makes `body` the prediction's stored state.
async fn record_before_pointers(
    pool: &PgPool,
    webhook_id: &str,
    id: &str,
    applied: bool,
    body: &str,
) {
    sqlx::query(
        "INSERT INTO deliveries (webhook_id, prediction_id, webhook_timestamp, received_at, applied, body)
         VALUES ($1, $2, 0, clock_timestamp(), $3, $4::json)",
    )
    .bind(webhook_id)
    .bind(id)
    .bind(applied)
    .bind(body)
    .execute(pool)
    .await
    .unwrap();
    if applied {
        sqlx::query(
            "INSERT INTO predictions (id, status, created_at, progress_rank, progress_logs,
                                      progress_timestamp, body)
             VALUES ($1, $2::json->>'status', now(), 0, 0, 0, $2::json)
             ON CONFLICT (id) DO UPDATE SET status = excluded.status, body = excluded.body",
        )
        .bind(id)
        .bind(body)
        .execute(pool)
        .await
        .unwrap();
    }
}

/// The output length joins the order without a rewrite of `predictions` (its file stays the same),
/// a prediction stored before it is measured when a delivery compares with it, and the background
/// fill gives every row its length, a slice at a time, while deliveries go on.
#[tokio::test]
async fn the_order_key_grows_without_a_rewrite_and_rows_stored_before_are_measured() {
    let db = migrated_before(TOTAL_ORDER).await;
    let pool = db.pool().await;
    let t = now();
    let in_flight = prediction("flying", "processing", "ab")
        .replace("\"output\":null", "\"output\":[\"a\",\"b\"]");
    sqlx::query(
        "INSERT INTO deliveries (webhook_id, prediction_id, webhook_timestamp, received_at, applied, body)
         VALUES ('msg_old', 'flying', $1, now(), true, $2)",
    )
    .bind(t)
    .bind(&in_flight)
    .execute(&pool)
    .await
    .unwrap();
    // Thousands finished before, so that the fill takes several slices.
    for sql in [
        "INSERT INTO predictions (id, status, created_at, progress_rank, progress_logs,
                                  progress_timestamp, latest_delivery)
         VALUES ('flying', 'processing', now(), 1, 2, $1, 'msg_old')",
        "INSERT INTO deliveries (webhook_id, prediction_id, webhook_timestamp, received_at, applied, body)
         SELECT 'msg_done' || n, 'done' || n, $1, now(), true, '{\"id\":\"done' || n || '\"}'
         FROM generate_series(1, 3500) AS n",
        "INSERT INTO predictions (id, status, created_at, progress_rank, progress_logs,
                                  progress_timestamp, latest_delivery)
         SELECT 'done' || n, 'succeeded', now(), 2, 0, $1, 'msg_done' || n
         FROM generate_series(1, 3500) AS n",
    ] {
        sqlx::query(sql).bind(t).execute(&pool).await.unwrap();
    }
    let file = "SELECT relfilenode::int8 FROM pg_class WHERE relname = 'predictions'";
    let before: i64 = sqlx::query_scalar(file).fetch_one(&pool).await.unwrap();

    let service = support::start(&db.url, &[], None).await;
    let after: i64 = sqlx::query_scalar(file).fetch_one(&pool).await.unwrap();
    assert_eq!(after, before, "the migration rewrote predictions");

    let client = reqwest::Client::new();
    let url = format!("{}/webhooks/replicate", service.address);
    let secret = support::SECRET.parse().unwrap();
    let deliver = |output: &'static str| {
        let body = in_flight.replace("[\"a\",\"b\"]", output);
        let (client, url, secret) = (&client, &url, &secret);
        async move {
            let answer = prediction_inbox::sample::send(client, url, secret, body)
                .await
                .unwrap();
            assert_eq!(answer.status, 200, "{}", answer.body);
            answer.body
        }
    };
    // Later, with the same logs and less output: older by the rule, though the row had no length.
    assert_eq!(deliver("[\"a\"]").await, r#"{"status":"ignored"}"#);
    assert_eq!(
        deliver("[\"a\",\"b\",\"c\"]").await,
        r#"{"status":"applied"}"#
    );
    let unmeasured = "SELECT count(*) FROM predictions WHERE progress_output IS NULL";
    support::eventually_counts("every row has its output's length", &pool, unmeasured, 0).await;
    let terminal: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM predictions WHERE progress_rank = 2 AND progress_output = 0",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(terminal, 3500);
}

/// On SQLite, the predictions in flight are measured as the service starts, and the others filled
/// in behind it.
#[tokio::test]
async fn on_sqlite_rows_stored_before_the_output_length_are_measured() {
    let file = support::TestFile::create();
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&file.path)
        .create_if_missing(true);
    let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
    sqlx::query(include_str!(
        "../../migrations/sqlite/20261125000001_core.sql"
    ))
    .execute(&pool)
    .await
    .unwrap();
    let t = now();
    let in_flight = prediction("flying", "processing", "ab")
        .replace("\"output\":null", "\"output\":[\"a\",\"b\"]");
    let done = prediction("done", "succeeded", "");
    for (webhook_id, id, rank, body) in [
        ("msg_old", "flying", 1, &in_flight),
        ("msg_done", "done", 2, &done),
    ] {
        sqlx::query(
            "INSERT INTO deliveries (webhook_id, prediction_id, webhook_timestamp, received_at, applied, body)
             VALUES ($1, $2, $3, 0, 1, $4)",
        )
        .bind(webhook_id)
        .bind(id)
        .bind(t)
        .bind(body)
        .execute(&pool)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO predictions (id, status, created_at, progress_rank, progress_logs,
                                      progress_timestamp, updated_at, body)
             VALUES ($1, 'x', 0, $2, 2, $3, 0, $4)",
        )
        .bind(id)
        .bind(rank)
        .bind(t)
        .bind(body)
        .execute(&pool)
        .await
        .unwrap();
    }
    // The migrations as a service released before the new one recorded them.
    sqlx::query(
        "CREATE TABLE _sqlx_migrations (version BIGINT PRIMARY KEY, description TEXT NOT NULL,
         installed_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP, success BOOLEAN NOT NULL,
         checksum BLOB NOT NULL, execution_time BIGINT NOT NULL)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let migrator = sqlx::migrate!("./migrations/sqlite");
    let core = &migrator.migrations[0];
    sqlx::query("INSERT INTO _sqlx_migrations VALUES ($1, $2, 0, true, $3, 0)")
        .bind(core.version)
        .bind(core.description.as_ref())
        .bind(core.checksum.as_ref())
        .execute(&pool)
        .await
        .unwrap();

    let service = support::start(&file.url(), &[], None).await;
    let (client, secret) = (reqwest::Client::new(), support::SECRET.parse().unwrap());
    let url = format!("{}/webhooks/replicate", service.address);
    let body = in_flight.replace("[\"a\",\"b\"]", "[\"a\"]");
    let answer = prediction_inbox::sample::send(&client, &url, &secret, body)
        .await
        .unwrap();
    assert_eq!(answer.body, r#"{"status":"ignored"}"#);
    let unfilled = "SELECT count(*) FROM predictions \
                    WHERE progress_output IS NULL OR latest_delivery IS NULL";
    support::eventually("every row is filled in", || async {
        sqlx::query_scalar::<_, i64>(unfilled)
            .fetch_one(&pool)
            .await
            .unwrap()
            == 0
    })
    .await;
    let latest: String =
        sqlx::query_scalar("SELECT latest_delivery FROM predictions WHERE id = 'done'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(latest, "msg_done");
}

#[tokio::test]
async fn predictions_stored_with_their_bodies_read_the_same_once_they_point_at_deliveries() {
    let db = migrated_before(POINTERS).await;
    let pool = db.pool().await;
    let p1_starting = prediction("p1", "starting", "");
    let p1_succeeded = prediction("p1", "succeeded", "done\n");
    // Spacing and key order are kept as received: the migration must find this exact text.
    let p2 = r#"{ "status":"processing",  "id":"p2", "logs":"1.0e3" }"#;
    record_before_pointers(&pool, "msg_1", "p1", true, &p1_starting).await;
    record_before_pointers(&pool, "msg_2", "p1", true, &p1_succeeded).await;
    // A late `processing`, recorded but not applied: it must not become p1's state.
    let late = prediction("p1", "processing", "");
    record_before_pointers(&pool, "msg_3", "p1", false, &late).await;
    record_before_pointers(&pool, "msg_4", "p2", true, p2).await;

    let store = store::open(&DatabaseUrl::Postgres(db.url.clone()), 2)
        .await
        .unwrap();
    store.migrate().await.unwrap();

    let read = |id: &'static str| {
        let store = store.clone();
        async move { store.prediction(id).await.unwrap().unwrap().body }
    };
    assert_eq!(read("p1").await, p1_succeeded);
    assert_eq!(read("p2").await, p2);
    let page = store
        .list(&ListQuery {
            limit: 10,
            ..ListQuery::default()
        })
        .await
        .unwrap();
    let mut bodies: Vec<String> = page.items.into_iter().map(|p| p.body).collect();
    bodies.sort();
    let mut expected = vec![p1_succeeded.clone(), p2.to_owned()];
    expected.sort();
    assert_eq!(bodies, expected);
    store.close().await;
}

#[tokio::test]
async fn a_prediction_whose_body_is_in_none_of_its_deliveries_stops_the_migration_and_keeps_it() {
    let db = migrated_before(POINTERS).await;
    let pool = db.pool().await;
    let delivered = prediction("p1", "starting", "");
    record_before_pointers(&pool, "msg_1", "p1", true, &delivered).await;
    // A state no delivery holds (written by hand, say): its body would be lost with the column.
    sqlx::query("UPDATE predictions SET body = '{\"id\":\"p1\",\"status\":\"edited\"}'")
        .execute(&pool)
        .await
        .unwrap();

    let store = store::open(&DatabaseUrl::Postgres(db.url.clone()), 2)
        .await
        .unwrap();
    assert!(store.migrate().await.is_err());
    store.close().await;

    let kept: String = sqlx::query_scalar("SELECT body::text FROM predictions WHERE id = 'p1'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(kept, r#"{"id":"p1","status":"edited"}"#);
    let applied: i64 = sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(applied < POINTERS);
}

/// A migration runs without the 10 s statement timeout of the service's other statements. On a
/// million predictions the one above takes about 30 s; here it waits 11 s for a lock instead.
#[tokio::test]
async fn a_migration_may_take_longer_than_the_statement_timeout() {
    let db = migrated_before(POINTERS).await;
    let pool = db.pool().await;
    record_before_pointers(
        &pool,
        "msg_1",
        "p1",
        true,
        &prediction("p1", "starting", ""),
    )
    .await;
    let mut reader = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE predictions IN ACCESS SHARE MODE")
        .execute(&mut *reader)
        .await
        .unwrap();

    let store = store::open(&DatabaseUrl::Postgres(db.url.clone()), 2)
        .await
        .unwrap();
    let migrating = tokio::spawn({
        let store = store.clone();
        async move { store.migrate().await }
    });
    // The property is about time: the migration waits on the lock past the statement timeout.
    let waited_past_the_timeout = "SELECT count(*) FROM pg_stat_activity \
        WHERE datname = current_database() AND wait_event_type = 'Lock' \
        AND now() - query_start > interval '11 seconds'";
    support::eventually_counts(
        "the migration waits past the statement timeout",
        &pool,
        waited_past_the_timeout,
        1,
    )
    .await;
    assert!(!migrating.is_finished(), "the migration gave up waiting");
    reader.commit().await.unwrap();
    migrating.await.unwrap().unwrap();
    assert!(store.prediction("p1").await.unwrap().is_some());
    store.close().await;
}

/// `predictions` keeps 30 % of each page free, so that an update keeping a prediction's status is
/// heap-only (migration `predictions_fillfactor`; docs/benchmarks.md measured +6–7 %).
#[tokio::test]
async fn predictions_pages_keep_room_for_the_next_versions_of_their_rows() {
    let db = TestDatabase::create().await;
    let store = store::open(&DatabaseUrl::Postgres(db.url.clone()), 2)
        .await
        .unwrap();
    store.migrate().await.unwrap();
    store.close().await;
    let options: Vec<String> = sqlx::query_scalar(
        "SELECT unnest(reloptions) FROM pg_class WHERE oid = 'predictions'::regclass",
    )
    .fetch_all(&db.pool().await)
    .await
    .unwrap();
    assert_eq!(options, ["fillfactor=70"]);
}

/// New bodies are compressed with lz4 (migration `bodies_compressed_with_lz4`), where this
/// server can: the project's Postgres can.
#[tokio::test]
async fn bodies_are_compressed_with_lz4() {
    let app = spawn_app(Backend::Postgres).await;
    let logs = "step 1 of 8 done\n".repeat(1000);
    app.deliver(&Delivery::new(prediction("p1", "processing", &logs)))
        .await;
    let compression: Option<String> =
        sqlx::query_scalar("SELECT pg_column_compression(body) FROM deliveries")
            .fetch_one(app.postgres().1)
            .await
            .unwrap();
    assert_eq!(compression.as_deref(), Some("lz4"));
}

/// A prediction's status changes at almost every step of its life, and the way from `starting` to
/// `processing`, and on through more `processing`, must still be heap-only: no index of
/// `predictions` may change with it, or every update writes to all of them (migration
/// `index_statuses_once_settled`; docs/benchmarks.md measured 13 % of ingest, with the index it
/// dropped from `deliveries`).
#[tokio::test]
async fn a_prediction_in_flight_is_updated_without_new_index_entries() {
    let app = spawn_app(Backend::Postgres).await;
    let t = now();
    for (step, status) in [(0, "starting"), (1, "processing"), (2, "processing")] {
        let body = prediction("p1", status, &"x".repeat(step));
        app.deliver(&Delivery::at(t + step as i64, body)).await;
    }
    // A backend reports its counts when it ends (when idle, only every 10 s).
    let (db, pool) = app.postgres();
    db.admin(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = '{db}' AND application_name = 'prediction-inbox'",
    )
    .await;
    let mut updates = (0, 0);
    for _ in 0..100 {
        updates = sqlx::query_as(
            "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'predictions'",
        )
        .fetch_one(pool)
        .await
        .unwrap();
        if updates.0 == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(updates, (2_i64, 2_i64), "(updates, of them heap-only)");
}

/// The indexes retention and the history need are built, and the one they replaced dropped, while
/// deliveries go on being written: a transaction that wrote to `deliveries` and stays open holds
/// the build up, and meanwhile another delivery is recorded (a plain `CREATE INDEX` would queue it
/// behind the build).
#[tokio::test]
async fn retentions_indexes_are_built_while_deliveries_are_written() {
    let db = migrated_before(RETENTION_INDEXES).await;
    let pool = db.pool().await;
    let insert = |webhook_id: &'static str| {
        sqlx::query(
            "INSERT INTO deliveries (webhook_id, prediction_id, webhook_timestamp, applied, body)
             VALUES ($1, 'p', 0, false, '{}')",
        )
        .bind(webhook_id)
    };
    let mut open = pool.begin().await.unwrap();
    insert("msg_open").execute(&mut *open).await.unwrap();

    let store = store::open(&DatabaseUrl::Postgres(db.url.clone()), 2)
        .await
        .unwrap();
    let migrating = tokio::spawn({
        let store = store.clone();
        async move { store.migrate().await }
    });
    let building = "SELECT count(*) FROM pg_stat_activity \
        WHERE datname = current_database() AND query LIKE '%CREATE INDEX%' \
        AND wait_event_type = 'Lock'";
    support::eventually_counts(
        "the build waits for the open transaction",
        &pool,
        building,
        1,
    )
    .await;
    let mut writer = pool.acquire().await.unwrap();
    sqlx::query("SET statement_timeout = '5s'")
        .execute(&mut *writer)
        .await
        .unwrap();
    insert("msg_during")
        .execute(&mut *writer)
        .await
        .expect("a delivery is written while the index builds");
    assert!(!migrating.is_finished());
    open.commit().await.unwrap();
    migrating.await.unwrap().unwrap();
    let valid: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_index AS i JOIN pg_class AS c ON c.oid = i.indexrelid \
         WHERE i.indisvalid AND c.relname IN \
             ('deliveries_received_brin', 'deliveries_received_idx', 'deliveries_prediction_idx') \
         ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        valid,
        ["deliveries_prediction_idx", "deliveries_received_idx"]
    );
    store.close().await;
}
