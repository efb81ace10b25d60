//! Reads at scale: with 1,000,000 predictions stored, how fast one is read by id and how fast a
//! page of the list is read at any depth. Runs the real release binary over a fresh database.
//!
//!     cargo bench --bench reads                    # Postgres, 1,000,000 predictions
//!     cargo bench --bench reads -- sqlite          # the embedded store
//!     cargo bench --bench reads -- postgres 100000 # fewer
//!
//! The rows are written straight into the database (the ingest path has its own benchmark), with
//! ~600-byte bodies, created a second apart. Reads go through HTTP on one keep-alive connection,
//! one at a time, so each latency is the service's and the database's alone. The walk to depth
//! 500,000 follows the API's own `next` links, 1,000 a page, timing each page on the way.

use std::time::Instant;

use sqlx::{Connection, Executor};
use support::bench::{BenchDatabase, Service, TOKEN, summary};

#[tokio::main]
async fn main() {
    let args = support::bench::args();
    let backend = args.first().map_or("postgres", String::as_str).to_owned();
    let rows: u64 = args
        .get(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);

    let database = BenchDatabase::create(&backend).await;
    // Started once to migrate, then again over the seeded rows with a cold process.
    drop(Service::start(&database.url, &[]));
    let seeding = Instant::now();
    seed(&database.url, rows).await;
    println!(
        "{backend}: {rows} predictions seeded in {:.0} s",
        seeding.elapsed().as_secs_f64()
    );

    let service = Service::start(&database.url, &[]);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .build()
        .unwrap();
    let get = |path: String| {
        let request = client
            .get(format!("{}{path}", service.address))
            .bearer_auth(TOKEN);
        async move {
            let started = Instant::now();
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 200, "{path}");
            let body = response.bytes().await.unwrap();
            (started.elapsed(), body)
        }
    };

    // Warm-up: the first reads of a cold process open connections and fill caches.
    for i in 0..200 {
        get(format!("/v1/predictions/{}", id(i * 4999 % rows + 1))).await;
    }
    let mut by_id = Vec::new();
    for _ in 0..5000 {
        let n = fastrand::u64(1..=rows);
        by_id.push(get(format!("/v1/predictions/{}", id(n))).await.0);
    }
    println!("get by id, 5000 random ids: {}", summary(&by_id));

    let depth = (rows / 2).min(500_000);
    let mut walk = Vec::new();
    let mut path = "/v1/predictions?limit=1000".to_owned();
    let mut seen = 0;
    while seen < depth {
        let (took, body) = get(path.clone()).await;
        walk.push(took);
        let page: serde_json::Value = serde_json::from_slice(&body).unwrap();
        seen += page["results"].as_array().unwrap().len() as u64;
        let next = page["next"].as_str().expect("a next page");
        path = next[next.find("/v1/").unwrap()..].to_owned();
    }
    println!(
        "walk to depth {seen} by `next`, pages of 1000: {}",
        summary(&walk)
    );

    let page_path = path.replace("limit=1000", "limit=100");
    let mut at_depth = Vec::new();
    for _ in 0..1000 {
        at_depth.push(get(page_path.clone()).await.0);
    }
    println!(
        "a page of 100 at depth {seen}, 1000 times: {}",
        summary(&at_depth)
    );
    let (rss, peak) = service.memory();
    println!(
        "service RSS {:.1} MiB (peak {:.1} MiB)",
        rss as f64 / 1024.0,
        peak as f64 / 1024.0
    );
    drop(service);
    database.drop_it().await;
}

fn id(n: u64) -> String {
    format!("p{n:08}")
}

/// `rows` predictions, one created a second after another, in the tables the service made.
async fn seed(url: &str, rows: u64) {
    let body = r#"format('{"id":"%s","model":"owner/model-%s","version":"v%s","input":{"prompt":"%s"},"logs":"","output":["https://example.com/%s.png"],"error":null,"status":"%s","created_at":"2026-01-01T00:00:00Z","urls":{"get":"https://api.replicate.com/v1/predictions/%s"}}', id, i % 50, i % 200, repeat('a', 300), id, status, id)"#;
    if let Some(path) = url.strip_prefix("sqlite://") {
        let mut connection = sqlx::SqliteConnection::connect(&format!("sqlite://{path}"))
            .await
            .unwrap();
        let sql = format!(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {rows}),
             r AS (SELECT i, printf('p%08d', i) AS id,
                          CASE i % 3 WHEN 0 THEN 'succeeded' WHEN 1 THEN 'failed' ELSE 'canceled' END AS status
                   FROM n)
             INSERT INTO predictions (id, status, model, version, created_at, progress_rank,
                                      progress_logs, progress_output, progress_timestamp,
                                      updated_at, body)
             SELECT id, status, 'owner/model-' || (i % 50), 'v' || (i % 200),
                    (1767225600 + i) * 1000000, 2, 0, 0, 0, 0,
                    {}
             FROM r",
            body.replace("format(", "printf(")
                .replace("repeat('a', 300)", "hex(zeroblob(150))")
        );
        connection.execute(sql.as_str()).await.unwrap();
        connection.execute("ANALYZE").await.unwrap();
        return;
    }
    // Each prediction's body is that of the delivery it points at.
    let mut connection = sqlx::PgConnection::connect(url).await.unwrap();
    let sql = format!(
        "WITH r AS (
             SELECT i, id, status, 'msg_' || id AS webhook_id
             FROM generate_series(1, {rows}) AS i,
                  LATERAL (SELECT 'p' || lpad(i::text, 8, '0') AS id,
                                  (ARRAY['succeeded', 'failed', 'canceled'])[1 + i % 3] AS status) AS r
         ), delivered AS (
             INSERT INTO deliveries (webhook_id, prediction_id, webhook_timestamp, received_at,
                                     applied, body)
             SELECT webhook_id, id, 0, now(), true, {body} FROM r
         )
         INSERT INTO predictions (id, status, model, version, created_at, progress_rank,
                                  progress_logs, progress_output, progress_timestamp, updated_at,
                                  latest_delivery)
         SELECT id, status, 'owner/model-' || (i % 50), 'v' || (i % 200),
                timestamptz '2026-01-01' + i * interval '1 second', 2, 0, 0, 0, now(), webhook_id
         FROM r"
    );
    connection.execute(sql.as_str()).await.unwrap();
    // As autovacuum would in time: statistics, and the visibility map index-only scans need.
    connection.execute("VACUUM ANALYZE").await.unwrap();
    // The seed's dirty pages written out now, not by a checkpoint while the reads are timed.
    connection.execute("CHECKPOINT").await.unwrap();
}
