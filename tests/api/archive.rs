//! The output archive (issue 25): every output file of a succeeded prediction copied into object
//! storage — a local folder, and a real S3 server (SeaweedFS) — and served back by the inbox at
//! signed links; nothing fetched from anywhere the list does not allow.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use support::fake_replicate::{FakeReplicate, file_bytes};
use support::{Backend, Delivery, TestApp, spawn_app_with, target_tmp};

/// The signing key the tests' services sign links with, so a test can make one of its own.
const LINK_KEY: &str = "archive-links-test-key-0123456789abcdef";

#[derive(Debug, Clone, Copy)]
enum Place {
    Folder,
    S3,
}

/// A service on `backend` that archives into a new folder or bucket and fetches from the fake's
/// file origin; `extra` settings on top.
async fn spawn(
    backend: Backend,
    place: Place,
    fake: &FakeReplicate,
    extra: &[(&str, &str)],
) -> TestApp {
    let mut settings: Vec<(String, String)> = match place {
        Place::Folder => {
            let folder = target_tmp().join(format!("archive-{:016x}", fastrand::u64(..)));
            vec![(
                "INBOX_ARCHIVE_URL".into(),
                format!("file://{}", folder.display()),
            )]
        }
        Place::S3 => support::s3::server().await.bucket(),
    };
    settings.push(("INBOX_ARCHIVE_HOSTS".into(), fake.files_url().to_owned()));
    settings.push(("INBOX_ARCHIVE_SIGNING_KEY".into(), LINK_KEY.to_owned()));
    for (key, value) in extra {
        settings.retain(|(k, _)| k != key);
        settings.push(((*key).to_owned(), (*value).to_owned()));
    }
    let borrowed: Vec<(&str, &str)> = settings
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    spawn_app_with(backend, &borrowed).await
}

/// A succeeded prediction with `output`, as the platform's completed webhook carries it.
fn succeeded(id: &str, output: Value) -> String {
    json!({
        "id": id,
        "status": "succeeded",
        "model": "acme/echo",
        "version": "5c7d5dc6dd8bf75c1acaa8565735e7986bc5b66206b55cca93cb72c9bf15ccaa",
        "input": {},
        "output": output,
        "logs": "",
        "error": null,
        "created_at": "2026-12-05T10:00:00.000Z",
        "started_at": "2026-12-05T10:00:01.000Z",
        "completed_at": "2026-12-05T10:00:05.000Z",
        "urls": {"get": format!("https://api.replicate.com/v1/predictions/{id}")},
    })
    .to_string()
}

/// The prediction as read, once none of its files is queued any more.
async fn settled(app: &TestApp, id: &str, files: usize) -> Value {
    settled_while(app, id, files, || true).await
}

/// As `settled`, failing as soon as `holds` does not.
async fn settled_while(app: &TestApp, id: &str, files: usize, holds: impl Fn() -> bool) -> Value {
    let read = || async {
        app.prediction(id)
            .await
            .and_then(|body| serde_json::from_str::<Value>(&body).ok())
    };
    let done = |read: &Value| {
        let listed = read["inbox_archive"]["files"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        listed.len() == files && listed.iter().all(|file| file["state"] != "queued")
    };
    // Longer than `eventually`: files of megabytes, through a debug build, beside other tests.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while !read().await.is_some_and(|value| done(&value)) {
        assert!(
            holds(),
            "{id}: what must hold while its files are fetched did not"
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "never: {id}'s {files} files are archived or failed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    read().await.expect("the prediction")
}

/// A plain GET, without any bearer.
async fn fetch(url: &str, range: Option<&str>) -> reqwest::Response {
    let mut request = reqwest::Client::new().get(url);
    if let Some(range) = range {
        request = request.header("range", range);
    }
    request.send().await.expect("GET the link")
}

mod files_arrive_byte_identical {
    use super::*;

    #[tokio::test]
    async fn sqlite_into_a_folder() {
        files_arrive_byte_identical(Backend::Sqlite, Place::Folder).await;
    }
    #[tokio::test]
    async fn postgres_into_s3() {
        files_arrive_byte_identical(Backend::Postgres, Place::S3).await;
    }
    #[tokio::test]
    async fn sqlite_into_s3() {
        files_arrive_byte_identical(Backend::Sqlite, Place::S3).await;
    }
    #[tokio::test]
    async fn postgres_into_a_folder() {
        files_arrive_byte_identical(Backend::Postgres, Place::Folder).await;
    }
}

/// A small image and a file of several parts, at any depth of the output, arrive byte for byte;
/// reads name the inbox's copies and keep the platform's URLs beside them; the links work
/// without a bearer, with ranges and safe headers, and nothing else does.
async fn files_arrive_byte_identical(backend: Backend, place: Place) {
    let fake = FakeReplicate::start().await;
    let app = spawn(backend, place, &fake, &[]).await;
    let image = fake.serve_file("out-0.png", 3_000);
    // Larger than a part (5 MiB): written as a multipart upload.
    let big_size = 6 * 1024 * 1024 + 123;
    let big = fake.serve_file("weights.bin", big_size);
    let output = json!([image, {"weights": big, "inline": "data:text/plain;base64,aGk="}]);
    app.deliver(&Delivery::new(succeeded("p-files", output.clone())))
        .await;

    let read = settled(&app, "p-files", 2).await;
    assert_eq!(read["inbox_archive"]["original_output"], output);
    assert!(
        read["inbox_archive"]["files"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["state"] == "archived"),
        "{read}"
    );
    let image_link = read["output"][0].as_str().unwrap().to_owned();
    let big_link = read["output"][1]["weights"].as_str().unwrap().to_owned();
    assert!(
        image_link.starts_with(&format!("{}/archive/", app.address)),
        "{image_link}"
    );
    assert_eq!(read["output"][1]["inline"], "data:text/plain;base64,aGk=");

    let got = fetch(&image_link, None).await;
    assert_eq!(got.status(), StatusCode::OK);
    let headers = got.headers().clone();
    assert_eq!(headers["content-type"], "image/png");
    assert_eq!(headers["content-length"], "3000");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(headers["content-security-policy"], "sandbox");
    assert!(
        headers["content-disposition"]
            .to_str()
            .unwrap()
            .starts_with("inline")
    );
    assert_eq!(got.bytes().await.unwrap(), file_bytes("out-0.png", 3_000));

    let big_bytes = file_bytes("weights.bin", big_size);
    let got = fetch(&big_link, None).await;
    assert_eq!(got.status(), StatusCode::OK);
    assert!(
        got.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .starts_with("attachment")
    );
    assert_eq!(
        got.bytes().await.unwrap(),
        file_bytes("weights.bin", big_size)
    );

    let part = fetch(&big_link, Some("bytes=5242870-5242889")).await;
    assert_eq!(part.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        part.headers()["content-range"],
        format!("bytes 5242870-5242889/{big_size}")
    );
    assert_eq!(part.bytes().await.unwrap(), big_bytes[5_242_870..5_242_890]);
    let beyond = fetch(&big_link, Some(&format!("bytes={big_size}-"))).await;
    assert_eq!(beyond.status(), StatusCode::RANGE_NOT_SATISFIABLE);

    // A changed signature, a changed expiry, another file's key: refused.
    let tampered = image_link.replace("signature=", "signature=A");
    assert_eq!(fetch(&tampered, None).await.status(), StatusCode::FORBIDDEN);
    let (base, query) = image_link.split_once('?').unwrap();
    let expires: i64 = query
        .split('&')
        .find_map(|p| p.strip_prefix("expires="))
        .unwrap()
        .parse()
        .unwrap();
    let extended = image_link.replace(
        &format!("expires={expires}"),
        &format!("expires={}", expires + 3600),
    );
    assert_eq!(fetch(&extended, None).await.status(), StatusCode::FORBIDDEN);
    let other = big_link.split_once('?').unwrap().0;
    assert_eq!(
        fetch(&format!("{other}?{query}"), None).await.status(),
        StatusCode::FORBIDDEN
    );
    // A link signed with the inbox's own key that has expired: refused too.
    let key = base.split_once("/archive/").unwrap().1;
    let links = prediction_inbox::archive::Links::new(
        vec![prediction_inbox::archive::SigningKey::new(LINK_KEY).unwrap()],
        Duration::from_secs(60),
    );
    let stale = links.sign(key, support::now() - 3600);
    let expired = fetch(&format!("{base}?{stale}"), None).await;
    assert_eq!(expired.status(), StatusCode::FORBIDDEN);
    assert!(expired.text().await.unwrap().contains("expired"));
    let fresh = links.sign(key, support::now());
    assert_eq!(
        fetch(&format!("{base}?{fresh}"), None).await.status(),
        StatusCode::OK
    );

    // Every read route names the copies: the list, the history with bodies.
    let listed: Value = app.get("/v1/predictions").await.json().await.unwrap();
    assert!(
        listed["results"][0]["output"][0]
            .as_str()
            .unwrap()
            .contains("/archive/")
    );
    let history: Value = app
        .get("/v1/predictions/p-files/deliveries?include=body")
        .await
        .json()
        .await
        .unwrap();
    assert!(
        history["results"][0]["body"]["output"][0]
            .as_str()
            .unwrap()
            .contains("/archive/")
    );
    // Each file was fetched once.
    assert_eq!(fake.file_requests("out-0.png"), 1);
    assert_eq!(fake.file_requests("weights.bin"), 1);
}

support::on_each_backend!(an_expired_file_is_reported_and_not_retried);

async fn an_expired_file_is_reported_and_not_retried(backend: Backend) {
    let fake = FakeReplicate::start().await;
    let place = if backend == Backend::Sqlite {
        Place::Folder
    } else {
        Place::S3
    };
    let app = spawn(backend, place, &fake, &[]).await;
    let gone = fake.serve_file("gone.png", 100);
    fake.expire_file("gone.png");
    let failing = fake.serve_file("flaky.txt", 100);
    fake.fail_file("flaky.txt", 1);
    app.deliver(&Delivery::new(succeeded(
        "p-expired",
        json!([gone, failing]),
    )))
    .await;
    let read = settled(&app, "p-expired", 2).await;
    let files = &read["inbox_archive"]["files"];
    let by_url = |url: &str| {
        files
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["url"] == url)
            .unwrap()
            .clone()
    };
    assert_eq!(by_url(&gone)["state"], "failed", "{read}");
    assert_eq!(by_url(&gone)["reason"], "expired");
    // Its output keeps the platform's URL; the one that failed once came on its second try.
    assert_eq!(read["output"][0], gone.as_str());
    assert_eq!(by_url(&failing)["state"], "archived", "{read}");
    assert_eq!(fake.file_requests("flaky.txt"), 2);
    assert_eq!(fake.file_requests("gone.png"), 1);
}

support::on_each_backend!(nothing_is_fetched_from_where_the_list_does_not_allow);

/// A prediction the feed of finished ids never told the archiver of (here: recorded by a
/// replica of its own over the embedded file, which the others do not hear), whose batch
/// committed only after the sweep that covered its arrival began: the next sweep, which looks
/// back over the margin, finds it.
#[tokio::test]
async fn a_sweep_finds_what_committed_after_the_last_one_began() {
    let fake = FakeReplicate::start().await;
    let folder = target_tmp().join(format!("archive-{:016x}", fastrand::u64(..)));
    let archive_url = format!("file://{}", folder.display());
    // The margin is the request timeout and 30 s more.
    let settings = [
        ("INBOX_ARCHIVE_URL", archive_url.as_str()),
        ("INBOX_REQUEST_TIMEOUT_SECS", "30"),
    ];
    let app = spawn(Backend::Sqlite, Place::Folder, &fake, &settings).await;
    let checkpoint = "SELECT CAST(through_at AS TEXT) FROM checkpoints WHERE name = 'archive'";
    support::eventually("the first sweep", || async {
        app.store.text(checkpoint).await.is_some()
    })
    .await;
    let swept: i64 = app.store.text(checkpoint).await.unwrap().parse().unwrap();
    let silent = app
        .another_instance_with(&[("INBOX_ARCHIVE_URL", "off")])
        .await;
    let url = fake.serve_file("late.txt", 1_000);
    let answer = app
        .send_to(
            &silent.address,
            &Delivery::new(succeeded("p-late", json!([url]))),
        )
        .await;
    assert_eq!(answer.status(), StatusCode::OK);
    // Received just after the margin before that sweep began, committed after it.
    let received = swept - 60_000_000 + 100_000;
    app.execute(&format!(
        "UPDATE deliveries SET received_at = {received} WHERE prediction_id = 'p-late'"
    ))
    .await;
    support::eventually("the next sweep may reach it", || async {
        time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000 > i128::from(swept) + 100_000
    })
    .await;
    let _restarted = app
        .another_instance_with(&[
            settings[0],
            settings[1],
            ("INBOX_ARCHIVE_HOSTS", fake.files_url()),
            ("INBOX_ARCHIVE_SIGNING_KEY", LINK_KEY),
        ])
        .await;
    let read = settled(&app, "p-late", 1).await;
    assert_eq!(
        read["inbox_archive"]["files"][0]["state"], "archived",
        "{read}"
    );
}

/// A host that trickles a file, each byte well within the read timeout, is cut once a window of
/// 30 s brings less than the least rate, and the file is tried again later: it does not hold one
/// of the few fetches for ever.
#[tokio::test]
async fn a_host_that_trickles_is_cut_and_tried_again() {
    let fake = FakeReplicate::start().await;
    let app = spawn(Backend::Sqlite, Place::Folder, &fake, &[]).await;
    // Four minutes of it at this rate.
    let url = fake.serve_file("trickle.bin", 4 * 1024 * 1024);
    fake.trickle_file("trickle.bin", 16 * 1024);
    app.deliver(&Delivery::new(succeeded("p-trickle", json!([url]))))
        .await;
    // Readers get the platform's URL while the file is queued: its record says why it waits.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let reason = app
            .store
            .text("SELECT reason FROM archive_files WHERE prediction_id = 'p-trickle'")
            .await;
        if reason.as_deref() == Some("too_slow") && fake.file_requests("trickle.bin") >= 2 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the trickle was never cut and tried again: {reason:?}, {} requests",
            fake.file_requests("trickle.bin")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// With the default list, no URL of an output reaches a listener of this machine, by any route:
/// plain addresses, names that resolve to loopback, IPv6 forms, userinfo, other ports and
/// schemes; a redirect from an allowed origin to one; a listed name that resolves to loopback.
async fn nothing_is_fetched_from_where_the_list_does_not_allow(backend: Backend) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let reached = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = reached.clone();
    tokio::spawn(async move {
        while let Ok((_connection, _)) = listener.accept().await {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    let fake = FakeReplicate::start().await;
    let place = if backend == Backend::Sqlite {
        Place::Folder
    } else {
        Place::S3
    };
    let refused = [
        format!("http://127.0.0.1:{port}/a.png"),
        format!("https://127.0.0.1:{port}/a.png"),
        format!("https://localhost:{port}/a.png"),
        format!("https://[::ffff:127.0.0.1]:{port}/a.png"),
        format!("http://[::1]:{port}/a.png"),
        format!("https://replicate.delivery@127.0.0.1:{port}/a.png"),
        format!("https://replicate.delivery:{port}/a.png"),
        "http://replicate.delivery/a.png".to_owned(),
        format!("https://2130706433:{port}/a.png"),
        "https://169.254.169.254/latest/meta-data/".to_owned(),
        "https://localhost/a.png".to_owned(),
    ];
    // The default list, with `localhost` listed by name (its address must still be public) and
    // the fake's origin exactly (whose redirect must still pass the checks).
    let hosts = format!(
        "replicate.delivery,*.replicate.delivery,localhost,{}",
        fake.files_url()
    );
    let app = spawn(backend, place, &fake, &[("INBOX_ARCHIVE_HOSTS", &hosts)]).await;
    fake.serve_file("redirected.png", 10);
    let redirected = format!("{}/files/redirected.png", fake.files_url());
    fake.redirect_file("redirected.png", &format!("http://127.0.0.1:{port}/a.png"));
    let mut output: Vec<Value> = refused.iter().map(|url| json!(url)).collect();
    output.push(json!(redirected));
    app.deliver(&Delivery::new(succeeded("p-ssrf", json!(output.clone()))))
        .await;

    let untouched = || reached.load(std::sync::atomic::Ordering::SeqCst) == 0;
    // Only the two URLs on listed hosts are files to fetch; the rest are links to elsewhere,
    // never fetched, left as they are.
    let read = settled_while(&app, "p-ssrf", 2, untouched).await;
    let files = read["inbox_archive"]["files"].as_array().unwrap().clone();
    for file in &files {
        assert_eq!(file["state"], "failed", "{file}");
    }
    let reason = |url: &str| files.iter().find(|f| f["url"] == url).unwrap()["reason"].clone();
    assert_eq!(read["output"], json!(output), "nothing is replaced");
    assert_eq!(reason("https://localhost/a.png"), "address_refused");
    assert_eq!(reason(&redirected), "redirect_refused");
    assert_eq!(fake.file_requests("redirected.png"), 1);
    assert_eq!(
        reached.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "a request reached the local listener"
    );
}

support::on_each_backend!(size_and_quota_bound_what_is_kept);

async fn size_and_quota_bound_what_is_kept(backend: Backend) {
    let fake = FakeReplicate::start().await;
    let app = spawn(
        backend,
        Place::Folder,
        &fake,
        &[
            ("INBOX_ARCHIVE_MAX_FILE_BYTES", "1000"),
            ("INBOX_ARCHIVE_QUOTA_BYTES", "500"),
        ],
    )
    .await;
    let large = fake.serve_file("large.bin", 1001);
    let first = fake.serve_file("first.txt", 600);
    app.deliver(&Delivery::new(succeeded("p-large", json!([large, first]))))
        .await;
    let read = settled(&app, "p-large", 2).await;
    let files = read["inbox_archive"]["files"].as_array().unwrap().clone();
    let file = |url: &str| files.iter().find(|f| f["url"] == url).unwrap().clone();
    assert_eq!(file(&large)["reason"], "too_large", "{read}");
    assert_eq!(file(&first)["state"], "archived", "{read}");
    // 600 bytes kept: past the quota, the next file is not archived.
    let second = fake.serve_file("second.txt", 10);
    app.deliver(&Delivery::new(succeeded("p-over", json!([second]))))
        .await;
    let read = settled(&app, "p-over", 1).await;
    assert_eq!(
        read["inbox_archive"]["files"][0]["reason"], "quota",
        "{read}"
    );
    assert_eq!(fake.file_requests("second.txt"), 0);
}

#[tokio::test]
async fn two_replicas_fetch_each_file_once() {
    let fake = FakeReplicate::start().await;
    let app = spawn(Backend::Postgres, Place::S3, &fake, &[]).await;
    let names: Vec<String> = (0..12).map(|i| format!("shared-{i}.txt")).collect();
    for name in &names {
        fake.serve_file(name, 200_000);
        fake.trickle_file(name, 2_000_000);
    }
    let urls: Vec<String> = names
        .iter()
        .map(|n| format!("{}/files/{n}", fake.files_url()))
        .collect();
    // A second replica over the same database and bucket.
    let _second = app.another_instance().await;
    app.deliver(&Delivery::new(succeeded("p-shared", json!(urls))))
        .await;
    let read = settled(&app, "p-shared", names.len()).await;
    assert!(
        read["inbox_archive"]["files"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["state"] == "archived"),
        "{read}"
    );
    for name in &names {
        assert_eq!(fake.file_requests(name), 1, "{name}");
    }
}

#[tokio::test]
async fn the_python_client_reads_an_archived_file() {
    let fake = FakeReplicate::start().await;
    let app = spawn(Backend::Sqlite, Place::Folder, &fake, &[]).await;
    let image = fake.serve_file("client.png", 5_000);
    app.deliver(&Delivery::new(succeeded("p-client", json!([image]))))
        .await;
    settled(&app, "p-client", 1).await;
    // The platform's copy is gone: only the inbox's can answer.
    fake.expire_file("client.png");
    let python = support::venv_program("python");
    let script = r#"
import hashlib, json, os, sys
import replicate
from replicate.helpers import FileOutput
client = replicate.Client(api_token=os.environ["INBOX_TOKEN"], base_url=os.environ["INBOX_URL"])
prediction = client.predictions.get("p-client")
data = FileOutput(prediction.output[0], client).read()
print(json.dumps({"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}))
"#;
    let mut command = std::process::Command::new(python);
    command
        .arg("-c")
        .arg(script)
        .env("INBOX_URL", &app.address)
        .env("INBOX_TOKEN", support::TOKEN)
        .env_remove("REPLICATE_API_TOKEN");
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .expect("the client runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let read: Value = serde_json::from_str(stdout.trim()).unwrap();
    use sha2::Digest;
    let expected = sha2::Sha256::digest(file_bytes("client.png", 5_000));
    let expected: String = expected.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(read["size"], 5_000);
    assert_eq!(read["sha256"], expected);
}

#[tokio::test]
async fn copies_past_their_retention_are_deleted() {
    let fake = FakeReplicate::start().await;
    let app = spawn(
        Backend::Sqlite,
        Place::S3,
        &fake,
        &[("INBOX_ARCHIVE_RETENTION", "2s")],
    )
    .await;
    let url = fake.serve_file("brief.txt", 64);
    app.deliver(&Delivery::new(succeeded("p-brief", json!([url]))))
        .await;
    let read = settled(&app, "p-brief", 1).await;
    let link = read["output"][0].as_str().unwrap().to_owned();
    assert!(link.contains("/archive/"), "{read}");
    // Read at once: archived. Then expired, and the link answers 404.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let read: Value = app
            .get("/v1/predictions/p-brief")
            .await
            .json()
            .await
            .unwrap();
        if read["inbox_archive"]["files"][0]["state"] == "expired" {
            assert_eq!(
                read["inbox_archive"]["files"][0]["reason"],
                "archive_retention"
            );
            assert_eq!(read["output"][0], url.as_str());
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never expired: {read}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(fetch(&link, None).await.status(), StatusCode::NOT_FOUND);
}

/// The archiver's lookup, each second, of which predictions it heard finish have files to queue:
/// planned on a table still empty and kept (as Postgres keeps a prepared statement's plan), it
/// reads the queued files once for the whole list, never once for each prediction.
#[tokio::test]
async fn the_lookup_of_finished_predictions_reads_the_files_once_in_any_plan() {
    let app = spawn_app_with(Backend::Postgres, &[]).await;
    let (_, pool) = app.postgres();
    let mut connection = pool.acquire().await.unwrap();
    let lookup = prediction_inbox::store::postgres_archive_lookup();
    let plan = support::generic_plan(&mut connection, lookup, "'{}'").await;
    assert!(plan.contains("on archive_files"), "{plan}");
    assert!(!plan.contains("Nested Loop"), "{plan}");
}

/// The same lookup on SQLite, whose planner has no statistics, and the sweep once a minute:
/// each finds predictions by their id, from the list or from the succeeded deliveries of the
/// stretch swept, never by walking every succeeded prediction through the status index, a walk
/// that grows with the table.
#[tokio::test]
async fn on_sqlite_the_archivers_lookups_find_predictions_by_their_id() {
    let app = spawn_app_with(Backend::Sqlite, &[]).await;
    let support::TestStore::Sqlite { pool, .. } = &app.store else {
        unreachable!("a SQLite app")
    };
    let plan = |statement: &str, arguments: usize| {
        let explain = format!("EXPLAIN QUERY PLAN {statement}");
        async move {
            let mut query = sqlx::query_as(&explain);
            for _ in 0..arguments {
                query = query.bind(0);
            }
            let steps: Vec<(i64, i64, i64, String)> = query.fetch_all(pool).await.unwrap();
            steps
                .into_iter()
                .map(|(_, _, _, step)| step)
                .collect::<Vec<_>>()
        }
    };
    let lookup = plan(prediction_inbox::store::sqlite_archive_lookup(), 1).await;
    let sweep = plan(prediction_inbox::store::sqlite_archive_sweep(), 4).await;
    assert!(
        sweep[0].starts_with("SEARCH d USING INDEX deliveries_succeeded_idx"),
        "{sweep:#?}"
    );
    for steps in [lookup, sweep] {
        assert!(
            steps
                .iter()
                .any(|step| step.starts_with("SEARCH p ") && step.ends_with("(id=?)")),
            "{steps:#?}"
        );
        assert!(
            !steps.iter().any(|step| step.contains("status=")),
            "{steps:#?}"
        );
    }
}
