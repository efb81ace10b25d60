use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use prediction_inbox::config::{self, Settings, Source};
use prediction_inbox::retention::Policy;
use prediction_inbox::sample;
use prediction_inbox::startup::{self, Application, StartupError};
use prediction_inbox::store::DatabaseUrl;
use prediction_inbox::telemetry::{self, LogFormat};
use prediction_inbox::verify::Secret;

/// Receives Replicate's signed prediction webhooks and serves each prediction's latest state.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// Env-format file with settings; environment variables override it.
    #[arg(long, env = "INBOX_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Apply migrations, then serve until SIGTERM/SIGINT (the default).
    Serve,
    /// Apply pending migrations and exit.
    Migrate,
    /// Run retention once (INBOX_DELIVERY_RETENTION, INBOX_INTERMEDIATE_BODY_RETENTION) and
    /// print what it removed.
    Prune {
        /// Count what it would remove, and remove nothing.
        #[arg(long)]
        dry_run: bool,
        /// Prune as if it were this time (RFC 3339); now by default.
        #[arg(long, value_parser = parse_time)]
        now: Option<time::OffsetDateTime>,
    },
    /// Read from the platform, once, every unfinished prediction whose webhooks are overdue (under
    /// the reconciler's lease and INBOX_RECONCILE_RPS), record what advanced, and print it.
    Reconcile {
        /// Read this prediction alone, whatever its schedule.
        #[arg(long, conflicts_with = "since")]
        id: Option<String>,
        /// Catch up instead: list the platform's predictions created since this time (RFC 3339)
        /// and import or finish those this inbox should know.
        #[arg(long, value_parser = parse_time)]
        since: Option<time::OffsetDateTime>,
    },
    /// Print the three webhook headers that sign FILE's exact bytes.
    Sign {
        /// The signing secret, `whsec_…`.
        #[arg(long, env = "INBOX_SIGN_SECRET", hide_env_values = true)]
        secret: String,
        /// `webhook-id`; a fresh `msg_…` by default.
        #[arg(long)]
        id: Option<String>,
        /// `webhook-timestamp` in Unix seconds; now by default.
        #[arg(long)]
        timestamp: Option<i64>,
        file: PathBuf,
    },
    /// POST a signed sample delivery to URL and report the answer.
    SendTest {
        /// The receiver, e.g. http://localhost:8080/webhooks/replicate
        url: String,
        /// The signing secret, `whsec_…`.
        #[arg(long, env = "INBOX_SIGN_SECRET", hide_env_values = true)]
        secret: String,
        /// The sample prediction's status.
        #[arg(long, default_value = "succeeded", conflicts_with = "sequence")]
        status: String,
        /// Send a whole life instead: starting, processing, succeeded, one delivery each.
        #[arg(long)]
        sequence: bool,
    },
}

/// What a command that needs the settings needs of them.
enum Run {
    /// Boxed: the settings are many times the size of the other commands' needs.
    Serve(Box<Settings>),
    Reconcile(Box<Settings>, startup::ReconcileWhat),
    Migrate(DatabaseUrl, LogFormat),
    Prune {
        database_url: DatabaseUrl,
        policy: Policy,
        log_format: LogFormat,
        now: time::OffsetDateTime,
        dry_run: bool,
    },
}

/// Exit code for missing or malformed settings and arguments, as clap uses for usage errors.
const BAD_SETTINGS: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Serve);
    match command {
        Command::Sign {
            secret,
            id,
            timestamp,
            file,
        } => return sign(&secret, id, timestamp, &file),
        Command::SendTest {
            url,
            secret,
            status,
            sequence,
        } => {
            let statuses = if sequence {
                ["starting", "processing", "succeeded"]
                    .map(String::from)
                    .to_vec()
            } else {
                vec![status]
            };
            return send_test(&url, &secret, &statuses);
        }
        Command::Serve | Command::Migrate | Command::Prune { .. } | Command::Reconcile { .. } => {}
    }

    let (file, required) = match cli.config {
        Some(path) => (path, true),
        None => (PathBuf::from(config::DEFAULT_CONFIG_FILE), false),
    };
    let run = Source::load(&file, required).and_then(|source| match command {
        Command::Serve => {
            Settings::from_source(&source).map(|settings| Run::Serve(Box::new(settings)))
        }
        Command::Reconcile { id, since } => Settings::from_source(&source).map(|settings| {
            let what = match (id, since) {
                (Some(id), _) => startup::ReconcileWhat::One(id),
                (None, Some(since)) => startup::ReconcileWhat::Since(since),
                (None, None) => startup::ReconcileWhat::Due,
            };
            Run::Reconcile(Box::new(settings), what)
        }),
        Command::Prune { dry_run, now } => Ok(Run::Prune {
            database_url: source.database_url()?,
            policy: source.retention()?,
            log_format: source.log_format()?,
            now: now.unwrap_or_else(time::OffsetDateTime::now_utc),
            dry_run,
        }),
        _ => Ok(Run::Migrate(source.database_url()?, source.log_format()?)),
    });
    let run = match run {
        Ok(Run::Reconcile(settings, _))
            if settings.gateway.is_none() || settings.reconcile.is_none() =>
        {
            eprintln!(
                "prediction-inbox: REPLICATE_API_TOKEN: reconciling needs the platform's token \
                 (and INBOX_WEBHOOK_URL), and INBOX_RECONCILE_AFTER not 0"
            );
            return ExitCode::from(BAD_SETTINGS);
        }
        Ok(run) => run,
        Err(error) => {
            eprintln!("prediction-inbox: {error}");
            return ExitCode::from(BAD_SETTINGS);
        }
    };
    telemetry::init(match &run {
        Run::Serve(settings) | Run::Reconcile(settings, _) => settings.log_format,
        Run::Migrate(_, log_format) | Run::Prune { log_format, .. } => *log_format,
    });
    prediction_inbox::memory::return_large_blocks();

    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("prediction-inbox: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match run {
            Run::Serve(settings) => {
                // Before any worker starts: see `shutdown_signal`.
                let shutdown = startup::shutdown_signal();
                let application = Application::build(*settings).await?;
                application.run_until(shutdown).await;
                Ok(())
            }
            Run::Migrate(database_url, _) => startup::migrate(&database_url).await,
            Run::Reconcile(settings, id) => {
                let swept = match startup::reconcile(*settings, id).await {
                    Ok(swept) => swept,
                    Err(startup::ReconcileError::Startup(error)) => return Err(error),
                    Err(error) => return Err(StartupError::Command(error.to_string())),
                };
                println!(
                    "advanced {}; unchanged {}; missing at the platform {}; marked {}; skipped {}",
                    swept.advanced, swept.unchanged, swept.missing, swept.marked, swept.skipped
                );
                Ok(())
            }
            Run::Prune {
                database_url,
                policy,
                now,
                dry_run,
                ..
            } => {
                let pruned = startup::prune(&database_url, &policy, now, dry_run).await?;
                let (verb, drop) = match dry_run {
                    true => ("would remove", "would drop"),
                    false => ("removed", "dropped"),
                };
                println!(
                    "{verb} {} delivery records; {drop} {} bodies of superseded deliveries",
                    pruned.deliveries, pruned.bodies
                );
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "exiting");
            ExitCode::FAILURE
        }
    }
}

/// `--now`: an RFC 3339 time.
fn parse_time(text: &str) -> Result<time::OffsetDateTime, String> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|error| format!("not an RFC 3339 time: {error}"))
}

/// The `--secret` argument, reported without echoing it.
fn parse_secret(secret: &str) -> Result<Secret, ExitCode> {
    secret.parse().map_err(|error| {
        eprintln!("prediction-inbox: --secret {error}");
        ExitCode::from(BAD_SETTINGS)
    })
}

fn sign(secret: &str, id: Option<String>, timestamp: Option<i64>, file: &PathBuf) -> ExitCode {
    let secret = match parse_secret(secret) {
        Ok(secret) => secret,
        Err(code) => return code,
    };
    let body = match std::fs::read(file) {
        Ok(body) => body,
        Err(error) => {
            eprintln!("prediction-inbox: cannot read {}: {error}", file.display());
            return ExitCode::FAILURE;
        }
    };
    let timestamp = timestamp.unwrap_or_else(|| time::OffsetDateTime::now_utc().unix_timestamp());
    let id = id.unwrap_or_else(|| sample::message_id_at(timestamp));
    println!("webhook-id: {id}");
    println!("webhook-timestamp: {timestamp}");
    println!("webhook-signature: {}", secret.sign(&id, timestamp, &body));
    ExitCode::SUCCESS
}

/// Sends one sample delivery per status, for one fresh prediction, and prints each answer;
/// exits 0 only if every answer was a 2xx.
fn send_test(url: &str, secret: &str, statuses: &[String]) -> ExitCode {
    let secret = match parse_secret(secret) {
        Ok(secret) => secret,
        Err(code) => return code,
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("prediction-inbox: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let id = sample::prediction_id();
    println!("prediction {id}");
    runtime.block_on(async {
        let client = reqwest::Client::new();
        let mut all_accepted = true;
        for status in statuses {
            match sample::send(&client, url, &secret, sample::prediction(&id, status)).await {
                Ok(answer) => {
                    println!(
                        "{status:<10} {} -> {} {}",
                        answer.webhook_id,
                        answer.status,
                        answer.body.trim()
                    );
                    all_accepted &= (200..300).contains(&answer.status);
                }
                Err(error) => {
                    println!("{status:<10} -> no answer: {error}");
                    all_accepted = false;
                }
            }
        }
        if all_accepted {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    })
}
