//! The real binary in a process of its own, its log lines collected as they come.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

use super::{SECRET, TOKEN};

/// The service's binary, which cargo builds beside the tests of its package.
pub fn binary() -> PathBuf {
    super::target_profile().join("prediction-inbox")
}

/// The binary with a clean environment, run from a folder holding no config file.
pub fn command(env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(binary());
    command.env_clear().current_dir(std::env::temp_dir());
    for (key, value) in env {
        command.env(key, value);
    }
    command
}

/// The service as a child process, its log lines collected as they come.
pub struct Service {
    pub child: Child,
    pub address: String,
    lines: mpsc::Receiver<String>,
    log: Vec<String>,
}

impl Service {
    pub fn start(database_url: &str) -> Self {
        Self::start_with(&[("DATABASE_URL", database_url)], &std::env::temp_dir())
    }

    /// Runs in `folder` with `env` added to the settings every test needs.
    pub fn start_with(env: &[(&str, &str)], folder: &Path) -> Self {
        let base = [
            ("INBOX_WEBHOOK_SECRETS", SECRET),
            ("INBOX_API_TOKENS", TOKEN),
            ("INBOX_LISTEN", "127.0.0.1:0"),
            ("INBOX_LOG_FORMAT", "json"),
        ];
        let env: Vec<_> = base.iter().chain(env).copied().collect();
        let mut child = command(&env)
            .current_dir(folder)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (send, lines) = mpsc::channel();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let send = send.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let _ = send.send(line);
                }
            });
        }
        let mut service = Self {
            child,
            address: String::new(),
            lines,
            log: Vec::new(),
        };
        let serving = service.wait_for("serving");
        let line: Value = serde_json::from_str(&serving).unwrap();
        service.address = format!("http://{}", line["addr"].as_str().unwrap());
        service
    }

    /// The first log line containing `text`, waiting for it if it has not come yet.
    pub fn wait_for(&mut self, text: &str) -> String {
        if let Some(line) = self.log.iter().find(|line| line.contains(text)) {
            return line.clone();
        }
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(20))
                .unwrap_or_else(|_| {
                    panic!("no log line with {text:?}; log so far: {:#?}", self.log)
                });
            self.log.push(line.clone());
            if line.contains(text) {
                return line;
            }
        }
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Its resident set, KiB, from /proc.
    pub fn rss_kib(&self) -> u64 {
        self.status("VmRSS:")
    }

    /// The most its resident set has been, KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        self.status("VmHWM:")
    }

    fn status(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("the service's /proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
            .unwrap_or_else(|| panic!("{field} in the service's /proc status"))
    }

    /// Waits for the process to exit, gathering the rest of its log.
    pub fn exit_code(mut self) -> (Option<i32>, Vec<String>) {
        let status = self.child.wait().unwrap();
        self.log.extend(self.lines.try_iter());
        if let Some(signal) = std::os::unix::process::ExitStatusExt::signal(&status) {
            self.log.push(format!("(ended by signal {signal})"));
        }
        (status.code(), std::mem::take(&mut self.log))
    }
}

/// A service the test did not stop is killed with it, not left running after the test process.
impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
