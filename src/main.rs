use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use prediction_inbox::config::{self, Settings, Source};
use prediction_inbox::startup::{self, Application};
use prediction_inbox::telemetry;
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
}

/// Exit code for missing or malformed settings and arguments, as clap uses for usage errors.
const BAD_SETTINGS: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Serve);
    if let Command::Sign {
        secret,
        id,
        timestamp,
        file,
    } = command
    {
        return sign(&secret, id, timestamp, &file);
    }

    let (file, required) = match cli.config {
        Some(path) => (path, true),
        None => (PathBuf::from(config::DEFAULT_CONFIG_FILE), false),
    };
    let settings = Source::load(&file, required).and_then(|source| {
        let log_format = source.log_format()?;
        let settings = match command {
            Command::Serve => Some(Settings::from_source(&source)?),
            _ => None,
        };
        Ok((source.database_url()?, log_format, settings))
    });
    let (database_url, log_format, settings) = match settings {
        Ok(loaded) => loaded,
        Err(error) => {
            eprintln!("prediction-inbox: {error}");
            return ExitCode::from(BAD_SETTINGS);
        }
    };
    telemetry::init(log_format);

    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("prediction-inbox: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match settings {
            Some(settings) => {
                Application::build(settings)
                    .await?
                    .run_until(startup::shutdown_signal())
                    .await
            }
            None => startup::migrate(database_url.expose()).await,
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

fn sign(secret: &str, id: Option<String>, timestamp: Option<i64>, file: &PathBuf) -> ExitCode {
    let secret: Secret = match secret.parse() {
        Ok(secret) => secret,
        Err(error) => {
            eprintln!("prediction-inbox: --secret {error}");
            return ExitCode::from(BAD_SETTINGS);
        }
    };
    let body = match std::fs::read(file) {
        Ok(body) => body,
        Err(error) => {
            eprintln!("prediction-inbox: cannot read {}: {error}", file.display());
            return ExitCode::FAILURE;
        }
    };
    let id = id.unwrap_or_else(message_id);
    let timestamp = timestamp.unwrap_or_else(|| time::OffsetDateTime::now_utc().unix_timestamp());
    println!("webhook-id: {id}");
    println!("webhook-timestamp: {timestamp}");
    println!("webhook-signature: {}", secret.sign(&id, timestamp, &body));
    ExitCode::SUCCESS
}

/// A `msg_` id with 128 random bits, like the platform's.
fn message_id() -> String {
    use base64::Engine;
    let mut bytes = [0u8; 16];
    // Without randomness, fall back to the clock: the id need only be unique, not secret.
    if getrandom::getrandom(&mut bytes).is_err() {
        bytes = time::OffsetDateTime::now_utc()
            .unix_timestamp_nanos()
            .to_le_bytes();
    }
    format!(
        "msg_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}
