//! The archive (issue 25) in a process of its own: what only a real process shows — its
//! environment and its shutdown. (An archive cut off by `kill -9` is in `crash`.)

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use support::fake_replicate::FakeReplicate;
use support::service::Service;
use support::{Backend, TestStore};

/// A succeeded prediction `id` whose one output file is at `url`.
pub(crate) fn succeeded(id: &str, url: &str) -> String {
    serde_json::json!({
        "id": id, "status": "succeeded", "model": "acme/echo", "version": "v",
        "input": {}, "output": [url], "logs": "",
        "created_at": "2026-12-05T10:00:00Z", "completed_at": "2026-12-05T10:00:05Z",
    })
    .to_string()
}

/// Proxy variables in the service's environment are not followed: a proxy sees no request, on
/// the default list and the platform's own host (which does not resolve here; through a proxy it
/// would not need to).
#[tokio::test]
async fn proxy_variables_are_ignored() {
    let proxy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_url = format!("http://{}", proxy.local_addr().unwrap());
    let reached = Arc::new(AtomicUsize::new(0));
    let counted = reached.clone();
    tokio::spawn(async move {
        while let Ok((_connection, _)) = proxy.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
        }
    });
    let store = TestStore::create(Backend::Sqlite).await;
    let url = store.url();
    let mut env = vec![("DATABASE_URL", url.as_str())];
    for name in [
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
        "ALL_PROXY",
        "all_proxy",
    ] {
        env.push((name, proxy_url.as_str()));
    }
    let mut service = Service::start_with(&env, &std::env::temp_dir());
    service.wait_for("serving");
    let body = succeeded("p-proxy", "https://replicate.delivery/pbxt/abc/out.png");
    let answer = crate::commands::deliver(&service.address, &body).await;
    assert!(answer.status().is_success());
    support::eventually("the file is tried and fails", || async {
        store
            .text("SELECT reason FROM archive_files WHERE prediction_id = 'p-proxy'")
            .await
            .is_some()
    })
    .await;
    service.signal("-TERM");
    assert_eq!(service.exit_code().0, Some(0));
    assert_eq!(reached.load(Ordering::SeqCst), 0, "a proxy was used");
}

/// A file being uploaded in parts when the service is told to stop leaves no parts in the store:
/// the upload is aborted (S3 would otherwise keep them, unseen and paid for). Its lease runs out
/// and it is fetched again, as after `kill -9` above.
#[tokio::test]
async fn an_upload_cut_by_shutdown_leaves_no_parts_in_the_store() {
    let fake = FakeReplicate::start().await;
    // Six seconds of it, in parts of 5 MiB: SIGTERM lands between parts.
    let url = fake.serve_file("parts.bin", 24 * 1024 * 1024);
    fake.trickle_file("parts.bin", 4 * 1024 * 1024);
    let s3 = support::s3::server().await;
    let bucket = s3.bucket();
    let store = TestStore::create(Backend::Sqlite).await;
    let mut env = bucket.clone();
    env.push(("DATABASE_URL".into(), store.url()));
    env.push(("INBOX_ARCHIVE_HOSTS".into(), fake.files_url().to_owned()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut service = Service::start_with(&env, &std::env::temp_dir());
    service.wait_for("serving");
    let body = succeeded("p-parts", &url);
    let answer = crate::commands::deliver(&service.address, &body).await;
    assert!(answer.status().is_success());
    support::eventually("a multipart upload is begun", || async {
        s3.uploads_in_progress(&bucket).await > 0
    })
    .await;
    service.signal("-TERM");
    assert_eq!(service.exit_code().0, Some(0));
    assert_eq!(
        s3.uploads_in_progress(&bucket).await,
        0,
        "the stopped download left its upload's parts in the store"
    );
}
