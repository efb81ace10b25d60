//! The official clients, unchanged, through the gateway to the fake platform: Python `replicate`
//! 1.0.7 and JavaScript `replicate` 1.4.0 (pinned in `tests/clients/`, installed by
//! `tests/setup.sh`), with only their base URL and token changed. Each scenario is a process of
//! its own that prints one JSON line.

use std::path::PathBuf;
use std::process::Command;

use serde_json::{Value, json};
use support::fake_replicate::{FakeReplicate, VERSION};
use support::{Backend, CREATE_TOKEN, TestApp, on_each_backend, spawn_gateway_app};

on_each_backend!(the_python_client_runs_unchanged);

#[tokio::test]
async fn the_javascript_client_runs_unchanged() {
    let fake = FakeReplicate::start().await;
    let app = spawn_gateway_app(Backend::Postgres, &fake, &[]).await;
    runs_and_waits(Client::JavaScript, &app).await;
    // No client call went to the platform but through the inbox: one create each, no reads.
    assert_eq!(fake.count("POST", "/v1/predictions"), 3);
    assert!(fake.seen().iter().all(|s| s.method != "GET"));
}

async fn the_python_client_runs_unchanged(backend: Backend) {
    let fake = FakeReplicate::start().await;
    let app = spawn_gateway_app(backend, &fake, &[]).await;
    let python = Client::Python;
    runs_and_waits(python, &app).await;
    let canceled = python.run(&app, "cancel").await;
    assert_eq!(canceled["status"], "canceled");
    assert_eq!(python.run(&app, "file_input").await, json!(["step 1"]));
    // The file went through the inbox to the platform, and the create carried its URL.
    assert_eq!(fake.count("POST", "/v1/files"), 1);
    // `owner/name:version` references are looked up through the inbox.
    assert!(fake.count("GET", &format!("/v1/models/acme/echo/versions/{VERSION}")) >= 1);
}

/// What both clients do alike: `run()` by version and by model, within and beyond the create's
/// wait, and a create followed by the client's own wait.
async fn runs_and_waits(client: Client, app: &TestApp) {
    assert_eq!(
        client.run(app, "run_version").await,
        json!(["step 1", "step 2", "hi"])
    );
    assert_eq!(
        client.run(app, "run_model").await,
        json!(["step 1", "model"])
    );
    assert_eq!(
        client.run(app, "run_longer_than_the_wait").await,
        json!(["step 1", "late"])
    );
    let waited = client.run(app, "create_and_wait").await;
    assert_eq!(waited["status"], "succeeded");
    assert_eq!(waited["output"], json!(["step 1", "step 2"]));
}

#[derive(Clone, Copy)]
enum Client {
    Python,
    JavaScript,
}

impl Client {
    /// Runs `scenario` against `app` and reads what it printed.
    async fn run(self, app: &TestApp, scenario: &str) -> Value {
        let mut command = match self {
            Self::Python => {
                let python = support::venv_program("python");
                let mut command = Command::new(python);
                command.arg(clients().join("python/scenarios.py"));
                command
            }
            Self::JavaScript => {
                assert!(
                    clients().join("js/node_modules/replicate").exists(),
                    "the JavaScript client is not installed: run tests/setup.sh"
                );
                let mut command = Command::new("node");
                command.arg(clients().join("js/scenarios.mjs"));
                command
            }
        };
        command
            .arg(scenario)
            .env("INBOX_URL", &app.address)
            .env("INBOX_TOKEN", CREATE_TOKEN)
            .env("FAKE_VERSION", VERSION)
            // Neither the token the clients would otherwise read nor a base URL of the shell's.
            .env_remove("REPLICATE_API_TOKEN")
            .env_remove("REPLICATE_BASE_URL");
        let output = tokio::task::spawn_blocking(move || command.output())
            .await
            .unwrap()
            .expect("the client runs");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "{scenario}: {}\n{stdout}{stderr}",
            output.status
        );
        serde_json::from_str(stdout.trim())
            .unwrap_or_else(|e| panic!("{scenario} printed {stdout:?}: {e}"))
    }
}

fn clients() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/clients")
}
