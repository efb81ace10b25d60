//! The OpenAPI description against the running service, by a property-based API tester
//! (schemathesis, installed by `tests/setup.sh`): every check, in its coverage, fuzzing and
//! stateful phases, with the gateway on over the fake platform, so that every route answers as
//! it would in production. It must find nothing.
//!
//! Left out by name: the event stream (it stays open until its prediction ends) and waits (a
//! `Prefer: wait` is meant to hold the request up to a minute, past any per-request timeout).

use std::process::Command;

use support::fake_replicate::FakeReplicate;
use support::{Backend, CREATE_TOKEN, spawn_gateway_app};

#[tokio::test]
async fn the_description_holds_for_everything_a_tester_sends() {
    let fake = FakeReplicate::start().await;
    let app = spawn_gateway_app(Backend::Sqlite, &fake, &[]).await;
    let schemathesis = support::venv_program("schemathesis");
    let seed = std::env::var("INBOX_SCHEMATHESIS_SEED").unwrap_or_else(|_| "20261205".into());
    let mut command = Command::new(schemathesis);
    command
        .arg("--config-file")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/schemathesis.toml"
        ))
        .arg("run")
        .arg(format!("{}/openapi.json", app.address))
        .args(["--checks", "all"])
        .args(["--phases", "examples,coverage,fuzzing,stateful"])
        .args(["--request-timeout", "10"])
        .args(["--max-examples", "50"])
        // The same cases on every run, so that CI is reproducible; another seed explores more
        // (`INBOX_SCHEMATHESIS_SEED`).
        .args(["--seed", &seed])
        .args(["--exclude-path-regex", "/events$"])
        .args(["--header", &format!("Authorization: Bearer {CREATE_TOKEN}")])
        .args(["--workers", "2"])
        .env("NO_COLOR", "1");
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .expect("schemathesis runs");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{said}");
}
