//! The PostgreSQL server the tests use: the one at `TEST_DATABASE_URL` (else 127.0.0.1:5432) if it
//! answers; otherwise a throwaway server that this test process starts from the locally installed
//! PostgreSQL binaries, in a folder of its own, and stops and removes when it exits. Only when no
//! PostgreSQL is installed at all do the Postgres tests fail, saying what to install.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use sqlx::{Connection, PgConnection};
use tokio::sync::OnceCell;

const LOCAL: &str = "postgres://postgres@127.0.0.1:5432";

/// The URL of a server that answers, without a database path.
pub async fn server() -> &'static str {
    static SERVER: OnceCell<String> = OnceCell::const_new();
    SERVER
        .get_or_init(|| async {
            let configured = std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| LOCAL.into());
            if answers(&configured).await {
                return configured;
            }
            eprintln!("no PostgreSQL answers at {configured}; starting a throwaway server");
            let url = start().unwrap_or_else(|reason| {
                panic!(
                    "the Postgres tests need PostgreSQL: none answers at {configured}, and {reason}. \
                     Install PostgreSQL's server binaries (Debian/Ubuntu: `apt install postgresql`; \
                     macOS: `brew install postgresql`), or set \
                     TEST_DATABASE_URL=postgres://user:password@host:port"
                )
            });
            for _ in 0..100 {
                if answers(&url).await {
                    return url;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!("the throwaway PostgreSQL at {url} did not answer");
        })
        .await
}

async fn answers(server: &str) -> bool {
    let Ok(mut url) = url::Url::parse(server) else {
        return false;
    };
    url.set_path("/postgres");
    let connecting = PgConnection::connect(url.as_str());
    matches!(
        tokio::time::timeout(Duration::from_secs(5), connecting).await,
        Ok(Ok(_))
    )
}

/// A started server: its folder, and how to run its binaries.
struct Cluster {
    folder: PathBuf,
    bin: PathBuf,
    user: Option<String>,
}

static STARTED: Mutex<Option<Cluster>> = Mutex::new(None);

unsafe extern "C" {
    safe fn geteuid() -> u32;
    safe fn atexit(callback: extern "C" fn()) -> i32;
}

/// Initialises and starts a cluster on a free port; its URL, or why it could not.
fn start() -> Result<String, String> {
    let bin = binaries().ok_or("no PostgreSQL server binaries (initdb, pg_ctl) are installed")?;
    // PostgreSQL refuses to run as root; as root, run it as its own user.
    let user = (geteuid() == 0).then(|| "postgres".to_owned());
    let folder = super::target_tmp().join(format!("throwaway-postgres-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&folder);
    std::fs::create_dir_all(&folder).map_err(|e| format!("cannot create {folder:?}: {e}"))?;
    if let Some(user) = &user {
        let status = Command::new("chown")
            .args([user.as_str(), &folder.display().to_string()])
            .status();
        if !status.is_ok_and(|s| s.success()) {
            return Err(format!("cannot give {folder:?} to the user {user}"));
        }
    }
    let cluster = Cluster { folder, bin, user };
    let data = cluster.folder.join("data");
    cluster.run(
        "initdb",
        &[
            "-D",
            &data.display().to_string(),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--no-sync",
        ],
    )?;
    let port = free_port().ok_or("no free port")?;
    let options = format!(
        "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300",
        cluster.folder.display()
    );
    let log = cluster.folder.join("server.log");
    let started = cluster.run(
        "pg_ctl",
        &[
            "-D",
            &data.display().to_string(),
            "-l",
            &log.display().to_string(),
            "-o",
            &options,
            "-w",
            "start",
        ],
    );
    *STARTED.lock().unwrap_or_else(|e| e.into_inner()) = Some(cluster);
    atexit(stop);
    started?;
    Ok(format!("postgres://postgres@127.0.0.1:{port}"))
}

extern "C" fn stop() {
    let Some(cluster) = STARTED.lock().ok().and_then(|mut c| c.take()) else {
        return;
    };
    let data = cluster.folder.join("data").display().to_string();
    let _ = cluster.run("pg_ctl", &["-D", &data, "-m", "immediate", "-w", "stop"]);
    let _ = std::fs::remove_dir_all(&cluster.folder);
}

impl Cluster {
    fn run(&self, program: &str, args: &[&str]) -> Result<(), String> {
        let program = self.bin.join(program);
        let mut command = match &self.user {
            Some(user) => {
                let mut command = Command::new("runuser");
                command.args(["-u", user, "--"]).arg(&program);
                command
            }
            None => Command::new(&program),
        };
        let output = command
            .args(args)
            .output()
            .map_err(|e| format!("cannot run {}: {e}", program.display()))?;
        if output.status.success() {
            return Ok(());
        }
        Err(format!(
            "{} failed: {}{}",
            program.display(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// The folder holding `initdb` and `pg_ctl`: on the PATH, else Debian's versioned folders.
fn binaries() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default();
    let mut versioned: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|entries| {
            entries
                .filter_map(|entry| Some(entry.ok()?.path().join("bin")))
                .collect()
        })
        .unwrap_or_default();
    // The newest version first.
    versioned.sort_by_key(|path| {
        std::cmp::Reverse(
            path.parent()
                .and_then(Path::file_name)
                .and_then(|v| v.to_str()?.parse::<u32>().ok()),
        )
    });
    on_path
        .into_iter()
        .chain(versioned)
        .find(|folder| folder.join("initdb").is_file() && folder.join("pg_ctl").is_file())
}

fn free_port() -> Option<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").ok()?;
    Some(listener.local_addr().ok()?.port())
}
