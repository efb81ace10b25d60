//! Crash under load: the real binary is killed with SIGKILL at random moments while senders deliver
//! continuously, then restarted; every delivery that was answered 2xx must be readable with its
//! state (or a later one of its life) afterwards.
//!
//! CI runs 4 crashes per store. For a longer run:
//!
//!     INBOX_CRASHES=50 cargo test --test binary crash -- --nocapture

use std::time::Duration;

use support::load::{Load, verify_acknowledged};
use support::service::Service;
use support::{Backend, TestStore};

async fn nothing_acknowledged_is_lost_across_kill_9_under_load(backend: Backend) {
    let crashes: usize = std::env::var("INBOX_CRASHES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(4);
    let store = TestStore::create(backend).await;
    let mut sent = Vec::new();
    for crash in 0..crashes {
        let mut service = Service::start(&store.url());
        let load = Load::start(&service.address, 16, &format!("c{crash}"));
        // A random moment, after the load has built up.
        tokio::time::sleep(Duration::from_millis(fastrand::u64(300..1500))).await;
        service.child.kill().expect("SIGKILL");
        service.child.wait().expect("reap");
        sent.extend(load.stop().await);
    }
    let service = Service::start(&store.url());
    let acknowledged = verify_acknowledged(&service.address, &sent).await;
    let unanswered = sent.iter().filter(|d| d.status.is_none()).count();
    println!(
        "{backend:?}: {crashes} crashes; {} deliveries sent, {acknowledged} acknowledged and all \
         present, {unanswered} cut off by a crash",
        sent.len()
    );
    assert!(
        acknowledged > 20 * crashes,
        "too little load to mean anything"
    );
}

support::on_each_backend!(nothing_acknowledged_is_lost_across_kill_9_under_load);

/// A file being fetched when the service is killed is fetched again, whole, once its lease runs
/// out: the archive's queue lives in the database.
async fn an_archive_cut_off_by_kill_9_resumes_after_restart(backend: Backend) {
    use support::fake_replicate::{FakeReplicate, file_bytes};

    let fake = FakeReplicate::start().await;
    let size = 4 * 1024 * 1024;
    let url = fake.serve_file("slow.bin", size);
    // Four seconds of it: the kill lands mid-download.
    fake.trickle_file("slow.bin", 1024 * 1024);
    let store = TestStore::create(backend).await;
    let database_url = store.url();
    let folder = support::target_tmp().join(format!("crash-archive-{:016x}", fastrand::u64(..)));
    let mut env: Vec<(String, String)> = match backend {
        Backend::Sqlite => vec![(
            "INBOX_ARCHIVE_URL".into(),
            format!("file://{}", folder.display()),
        )],
        Backend::Postgres => support::s3::server().await.bucket(),
    };
    env.push(("DATABASE_URL".into(), database_url));
    env.push(("INBOX_ARCHIVE_HOSTS".into(), fake.files_url().to_owned()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let start = || {
        let mut service = Service::start_with(&env, &std::env::temp_dir());
        service.wait_for("serving");
        service
    };

    let mut service = start();
    let body = crate::archive::succeeded("p-crash", &url);
    let answer = crate::commands::deliver(&service.address, &body).await;
    assert!(answer.status().is_success());
    support::eventually("the download starts", || async {
        fake.file_requests("slow.bin") == 1
    })
    .await;
    service.child.kill().expect("SIGKILL");
    service.child.wait().expect("reap");

    let service = start();

    // The dead process's lease on the file runs out (30 s), then the new one fetches it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let read = loop {
        let read: serde_json::Value =
            serde_json::from_str(&crate::commands::read(&service.address, "p-crash").await)
                .unwrap();
        if read["inbox_archive"]["files"][0]["state"] == "archived" {
            break read;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never archived: {read}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let link = read["output"][0].as_str().unwrap();
    let copy = reqwest::get(link).await.unwrap().bytes().await.unwrap();
    assert!(copy == file_bytes("slow.bin", size), "the copy differs");
    assert_eq!(fake.file_requests("slow.bin"), 2);
}

support::on_each_backend!(an_archive_cut_off_by_kill_9_resumes_after_restart);
