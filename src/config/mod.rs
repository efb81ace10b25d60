//! Settings, from environment variables over an optional env-format file that uses the very same
//! keys (`config/prediction-inbox.env` by default): the environment wins. Each value is parsed into
//! the type that uses it, and a bad one is reported as one line naming its key.

mod env_file;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use crate::archive::{self, Hosts, Location, SigningKey};
use crate::http::{AllowedModels, ApiTokens};
use crate::reconcile;
use crate::replicate::{self, AccountToken};
use crate::retention::{self, Policy};
use crate::store::DatabaseUrl;
use crate::telemetry::LogFormat;
use crate::verify::Secret;

pub const DEFAULT_CONFIG_FILE: &str = "config/prediction-inbox.env";

#[derive(Debug, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct ConfigError {
    pub key: String,
    pub reason: String,
}

impl ConfigError {
    fn new(key: &str, reason: impl Into<String>) -> Self {
        Self {
            key: key.to_owned(),
            reason: reason.into(),
        }
    }
}

/// Reads one variable of the environment.
type Lookup = Box<dyn Fn(&str) -> Option<String>>;

/// Where settings come from: the environment first, then the file.
pub struct Source {
    file: HashMap<String, String>,
    env: Lookup,
}

impl Source {
    /// Reads `file` if it exists; a file named explicitly (`required`) must exist.
    pub fn load(file: &Path, required: bool) -> Result<Self, ConfigError> {
        let key = "INBOX_CONFIG";
        let entries = match std::fs::read_to_string(file) {
            Ok(text) => env_file::parse(&text)
                .map_err(|e| ConfigError::new(key, format!("{} {e}", file.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => HashMap::new(),
            Err(e) => return Err(ConfigError::new(key, format!("{}: {e}", file.display()))),
        };
        Ok(Self {
            file: entries,
            env: Box::new(|key| std::env::var(key).ok()),
        })
    }

    /// Settings from a fixed map alone, as tests and tools build them.
    pub fn from_map(map: HashMap<String, String>) -> Self {
        Self {
            file: map,
            env: Box::new(|_| None),
        }
    }

    /// A set, non-blank value; blank counts as unset so `KEY=` in a compose file means "default".
    fn get(&self, key: &str) -> Option<String> {
        (self.env)(key)
            .or_else(|| self.file.get(key).cloned())
            .filter(|value| !value.trim().is_empty())
    }

    fn required(&self, key: &str, what: &str) -> Result<String, ConfigError> {
        self.get(key)
            .ok_or_else(|| ConfigError::new(key, format!("required ({what})")))
    }

    fn parsed<T: FromStr>(&self, key: &str, default: T, what: &str) -> Result<T, ConfigError> {
        match self.get(key) {
            None => Ok(default),
            Some(text) => text
                .trim()
                .parse()
                .map_err(|_| ConfigError::new(key, format!("expected {what}, got {text:?}"))),
        }
    }

    /// Like `parsed`, and zero is refused.
    fn positive<T>(&self, key: &str, default: T, what: &str) -> Result<T, ConfigError>
    where
        T: FromStr + PartialEq + From<u8>,
    {
        let value = self.parsed(key, default, what)?;
        if value == T::from(0) {
            return Err(ConfigError::new(key, "must be greater than 0"));
        }
        Ok(value)
    }

    /// Comma-separated entries, none of them blank.
    fn list(&self, key: &str, what: &str) -> Result<Vec<String>, ConfigError> {
        let text = self.required(key, what)?;
        let entries: Vec<String> = text.split(',').map(|e| e.trim().to_owned()).collect();
        if entries.iter().any(String::is_empty) {
            return Err(ConfigError::new(key, "has an empty entry"));
        }
        Ok(entries)
    }

    /// `DATABASE_URL`: Postgres or SQLite by its scheme; unset, the embedded default.
    pub fn database_url(&self) -> Result<DatabaseUrl, ConfigError> {
        let key = "DATABASE_URL";
        let Some(url) = self.get(key) else {
            return Ok(DatabaseUrl::Sqlite(DEFAULT_SQLITE_URL.to_owned()));
        };
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(DatabaseUrl::Postgres(url))
        } else if url.starts_with("sqlite:") {
            Ok(DatabaseUrl::Sqlite(url))
        } else {
            Err(ConfigError::new(
                key,
                "must start with postgres://, postgresql:// or sqlite:",
            ))
        }
    }

    /// `INBOX_DELIVERY_RETENTION` and `INBOX_INTERMEDIATE_BODY_RETENTION`.
    pub fn retention(&self) -> Result<Policy, ConfigError> {
        Ok(Policy {
            deliveries: self.age("INBOX_DELIVERY_RETENTION", "30d")?,
            bodies: self.age("INBOX_INTERMEDIATE_BODY_RETENTION", "24h")?,
        })
    }

    /// A retention: `0`, or at least `Policy::SHORTEST`.
    fn age(&self, key: &str, default: &str) -> Result<Option<Duration>, ConfigError> {
        let text = self.get(key).unwrap_or_else(|| default.to_owned());
        let age = retention::parse_age(&text).ok_or_else(|| {
            ConfigError::new(key, "must be 0 or a whole number and a unit: 30d, 24h, 90m")
        })?;
        if age.is_some_and(|age| age < Policy::SHORTEST) {
            return Err(ConfigError::new(
                key,
                "must be 0 (keep everything) or at least 1h: the platform's retries must find \
                 the records they repeat",
            ));
        }
        Ok(age)
    }

    /// Bearer tokens under `key`, each long enough not to be guessed.
    fn tokens(&self, key: &str) -> Result<Vec<String>, ConfigError> {
        let tokens = self.list(key, "one or more bearer tokens, comma separated")?;
        if let Some(i) = tokens
            .iter()
            .position(|t| t.chars().count() < MIN_TOKEN_CHARS)
        {
            return Err(ConfigError::new(
                key,
                format!(
                    "entry {} is shorter than {MIN_TOKEN_CHARS} characters",
                    i + 1
                ),
            ));
        }
        Ok(tokens)
    }

    /// `REPLICATE_API_TOKEN`, `INBOX_REPLICATE_API_URL` and `INBOX_WEBHOOK_URL`: the gateway, or
    /// `None` without a token. A call to the platform is bounded like a request (`timeout`).
    fn gateway(&self, timeout: Duration) -> Result<Option<replicate::Settings>, ConfigError> {
        let Some(token) = self.get("REPLICATE_API_TOKEN") else {
            return Ok(None);
        };
        let token = token.trim().to_owned();
        if token.bytes().any(|b| !b.is_ascii_graphic()) {
            return Err(ConfigError::new(
                "REPLICATE_API_TOKEN",
                "must be printable ASCII without spaces",
            ));
        }
        let api_key = "INBOX_REPLICATE_API_URL";
        let api_url = self
            .get(api_key)
            .unwrap_or_else(|| DEFAULT_REPLICATE_API_URL.to_owned());
        let api_url = api_url.trim().trim_end_matches('/').to_owned();
        http_url(api_key, &api_url)?;
        let webhook_key = "INBOX_WEBHOOK_URL";
        let webhook_url = self.required(
            webhook_key,
            "the public URL the platform calls back, such as \
             https://inbox.example.com/webhooks/replicate, when REPLICATE_API_TOKEN is set",
        )?;
        http_url(webhook_key, webhook_url.trim())?;
        let settings = replicate::Settings {
            api_url,
            token: AccountToken::new(token),
            webhook_url: webhook_url.trim().to_owned(),
            timeout,
        };
        Ok(Some(settings))
    }

    /// `INBOX_RECONCILE_AFTER` (`0`: off), `INBOX_RECONCILE_RPS`, `INBOX_RECONCILE_CATCHUP_EVERY`
    /// (`0`: never) and `INBOX_RECONCILE_IMPORT`.
    fn reconcile(&self) -> Result<Option<reconcile::Settings>, ConfigError> {
        let key = "INBOX_RECONCILE_AFTER";
        let text = self.get(key).unwrap_or_else(|| "2m".to_owned());
        let after = retention::parse_age(&text).ok_or_else(|| {
            ConfigError::new(
                key,
                "must be 0 (off) or a whole number and a unit: 2m, 90s, 1h",
            )
        })?;
        let rps = self.positive("INBOX_RECONCILE_RPS", 10, "reads a second")?;
        let every_key = "INBOX_RECONCILE_CATCHUP_EVERY";
        let every = self.get(every_key).unwrap_or_else(|| "10m".to_owned());
        let catchup_every = retention::parse_age(&every).ok_or_else(|| {
            ConfigError::new(
                every_key,
                "must be 0 (never) or a whole number and a unit: 10m, 1h",
            )
        })?;
        let import = match self.get("INBOX_RECONCILE_IMPORT").as_deref().map(str::trim) {
            None | Some("ours") => reconcile::Import::Ours,
            Some("all") => reconcile::Import::All,
            Some(_) => {
                return Err(ConfigError::new(
                    "INBOX_RECONCILE_IMPORT",
                    "must be `ours` or `all`",
                ));
            }
        };
        Ok(after.map(|after| reconcile::Settings {
            after,
            rps,
            catchup_every,
            import,
        }))
    }

    /// `INBOX_ARCHIVE_*`: the output archive, or `None` when it is off (`INBOX_ARCHIVE_URL=off`, or
    /// unset on Postgres or an in-memory SQLite). Links are signed with `INBOX_ARCHIVE_SIGNING_KEY`,
    /// or else with a key derived from the first webhook secret, which every replica shares.
    fn archive(
        &self,
        database_url: &DatabaseUrl,
        webhook_secret: Option<&Secret>,
    ) -> Result<Option<archive::Settings>, ConfigError> {
        let url_key = "INBOX_ARCHIVE_URL";
        // Every setting is checked, on or off: a typo is found before the day it is turned on.
        let location = match self.get(url_key).as_deref().map(str::trim) {
            Some("off") => None,
            Some(url) => Some(
                Location::parse(url, self.aws_options())
                    .map_err(|reason| ConfigError::new(url_key, reason))?,
            ),
            None => embedded_files_folder(database_url).map(Location::Folder),
        };
        let hosts_key = "INBOX_ARCHIVE_HOSTS";
        let hosts = match self.get(hosts_key) {
            Some(text) => {
                Hosts::parse(&text).map_err(|reason| ConfigError::new(hosts_key, reason))?
            }
            None => Hosts::default(),
        };
        let keys_key = "INBOX_ARCHIVE_SIGNING_KEY";
        let signing_keys = match self.get(keys_key) {
            Some(_) => self
                .list(
                    keys_key,
                    "one or more keys, comma separated, the signing one first",
                )?
                .into_iter()
                .enumerate()
                .map(|(i, key)| {
                    SigningKey::new(key.into_bytes()).map_err(|reason| {
                        ConfigError::new(keys_key, format!("entry {} {reason}", i + 1))
                    })
                })
                .collect::<Result<_, _>>()?,
            None => webhook_secret
                .map(|secret| SigningKey::new(secret.derive("archive links").to_vec()))
                .transpose()
                .map_err(|reason| ConfigError::new(keys_key, reason))?
                .into_iter()
                .collect(),
        };
        let ttl_key = "INBOX_ARCHIVE_LINK_TTL";
        let link_ttl = retention::parse_age(&self.get(ttl_key).unwrap_or_else(|| "7d".to_owned()))
            .flatten()
            .ok_or_else(|| {
                ConfigError::new(ttl_key, "must be a whole number and a unit: 7d, 12h")
            })?;
        let retention_key = "INBOX_ARCHIVE_RETENTION";
        let retention = match self.get(retention_key) {
            Some(text) => retention::parse_age(&text).ok_or_else(|| {
                ConfigError::new(
                    retention_key,
                    "must be 0 (as long as the prediction) or a whole number and a unit: 90d",
                )
            })?,
            None => None,
        };
        let max_file_bytes =
            self.positive("INBOX_ARCHIVE_MAX_FILE_BYTES", 1 << 30, "a number of bytes")?;
        let quota_bytes = self
            .get("INBOX_ARCHIVE_QUOTA_BYTES")
            .map(|_| self.positive("INBOX_ARCHIVE_QUOTA_BYTES", 1, "a number of bytes"))
            .transpose()?;
        Ok(location.map(|location| archive::Settings {
            location,
            hosts,
            max_file_bytes,
            quota_bytes,
            retention,
            signing_keys,
            link_ttl,
        }))
    }

    /// The `AWS_*` settings an S3 archive is reached with, from the file (the environment's are
    /// read by the S3 client itself; where both set one, the environment's wins here too).
    fn aws_options(&self) -> Vec<(String, String)> {
        let mut keys: Vec<&String> = self
            .file
            .keys()
            .filter(|key| key.starts_with("AWS_"))
            .collect();
        keys.sort();
        keys.into_iter()
            .filter_map(|key| self.get(key).map(|value| (key.clone(), value)))
            .collect()
    }

    pub fn log_format(&self) -> Result<LogFormat, ConfigError> {
        self.parsed("INBOX_LOG_FORMAT", LogFormat::Text, "`text` or `json`")
    }
}

/// The platform's API, unless `INBOX_REPLICATE_API_URL` says otherwise.
pub const DEFAULT_REPLICATE_API_URL: &str = "https://api.replicate.com";

/// Refuses anything but an absolute `http://` or `https://` URL.
fn http_url(key: &str, text: &str) -> Result<(), ConfigError> {
    let parsed = reqwest::Url::parse(text)
        .map_err(|_| ConfigError::new(key, "must be an absolute http:// or https:// URL"))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(ConfigError::new(
            key,
            "must be an absolute http:// or https:// URL",
        ));
    }
    Ok(())
}

/// The embedded store's `files/` folder, beside its database file; `None` on Postgres or an
/// in-memory database.
fn embedded_files_folder(url: &DatabaseUrl) -> Option<std::path::PathBuf> {
    let DatabaseUrl::Sqlite(url) = url else {
        return None;
    };
    let path = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = path.split('?').next().unwrap_or_default();
    if path.is_empty() || path.contains(":memory:") {
        return None;
    }
    let parent = Path::new(path).parent().unwrap_or(Path::new("."));
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    Some(parent.join("files"))
}

/// Where state lives when `DATABASE_URL` is not set: a file in `./data`, created on first start.
pub const DEFAULT_SQLITE_URL: &str = "sqlite://./data/prediction-inbox.db";

/// Everything `serve` needs.
#[derive(Debug, Clone)]
pub struct Settings {
    pub database_url: DatabaseUrl,
    pub database_pool_size: u32,
    pub webhook_secrets: Vec<Secret>,
    pub webhook_tolerance_secs: u64,
    pub api_tokens: ApiTokens,
    pub listen: SocketAddr,
    pub max_body_bytes: usize,
    pub max_inflight_body_bytes: usize,
    pub max_connections: usize,
    pub request_timeout: Duration,
    pub max_waiters: usize,
    pub max_waiters_per_token: Option<usize>,
    pub stream_max: Duration,
    pub public_url: Option<String>,
    pub trust_forwarded: bool,
    pub log_format: LogFormat,
    pub retention: Policy,
    /// The platform's API, when `REPLICATE_API_TOKEN` is set.
    pub gateway: Option<replicate::Settings>,
    /// The reconciler, when the gateway is on and `INBOX_RECONCILE_AFTER` is not `0`.
    pub reconcile: Option<reconcile::Settings>,
    pub allowed_models: Option<AllowedModels>,
    /// The output archive, unless it is off.
    pub archive: Option<archive::Settings>,
}

/// The shortest bearer token accepted: anything shorter is guessable.
pub const MIN_TOKEN_CHARS: usize = 16;
/// The largest delivery that may be accepted: one Postgres statement parameter holds at most 1 GB,
/// and each delivery is written in one.
pub const MAX_BODY_BYTES_LIMIT: usize = 256 * 1024 * 1024;

impl Settings {
    pub fn from_source(source: &Source) -> Result<Self, ConfigError> {
        let secrets_key = "INBOX_WEBHOOK_SECRETS";
        let webhook_secrets: Vec<Secret> = source
            .list(secrets_key, "one or more whsec_… secrets, comma separated")?
            .iter()
            .enumerate()
            .map(|(i, text)| {
                // The message names the entry, never its value.
                text.parse()
                    .map_err(|e| ConfigError::new(secrets_key, format!("entry {} {e}", i + 1)))
            })
            .collect::<Result<_, _>>()?;
        let tokens = source.tokens("INBOX_API_TOKENS")?;
        let database_url = source.database_url()?;
        let archive = source.archive(&database_url, webhook_secrets.first())?;
        let create_tokens = match source.get("INBOX_CREATE_TOKENS") {
            Some(_) => source.tokens("INBOX_CREATE_TOKENS")?,
            None => Vec::new(),
        };
        let max_body_bytes = source.positive(
            "INBOX_MAX_BODY_BYTES",
            16 * 1024 * 1024,
            "a number of bytes",
        )?;
        if max_body_bytes > MAX_BODY_BYTES_LIMIT {
            return Err(ConfigError::new(
                "INBOX_MAX_BODY_BYTES",
                format!("must be at most {MAX_BODY_BYTES_LIMIT}"),
            ));
        }
        let inflight_key = "INBOX_MAX_INFLIGHT_BODY_BYTES";
        let max_inflight_body_bytes =
            source.positive(inflight_key, 256 * 1024 * 1024, "a number of bytes")?;
        if max_inflight_body_bytes < max_body_bytes {
            return Err(ConfigError::new(
                inflight_key,
                "must be at least INBOX_MAX_BODY_BYTES, or the largest delivery could never be read",
            ));
        }
        let request_timeout =
            Duration::from_secs(source.positive("INBOX_REQUEST_TIMEOUT_SECS", 30, "seconds")?);
        let public_url = source.get("INBOX_PUBLIC_URL");
        if let Some(url) = &public_url {
            http_url("INBOX_PUBLIC_URL", url)?;
        }
        Ok(Self {
            database_url,
            archive,
            database_pool_size: source.positive(
                "INBOX_DATABASE_POOL_SIZE",
                10,
                "a number of connections",
            )?,
            webhook_secrets,
            webhook_tolerance_secs: source.parsed(
                "INBOX_WEBHOOK_TOLERANCE_SECS",
                300,
                "seconds",
            )?,
            api_tokens: ApiTokens::new(
                tokens.iter().map(String::as_str),
                create_tokens.iter().map(String::as_str),
            ),
            gateway: source.gateway(request_timeout)?,
            reconcile: source.reconcile()?,
            allowed_models: source
                .get("INBOX_ALLOWED_MODELS")
                .map(|text| {
                    AllowedModels::parse(&text)
                        .map_err(|reason| ConfigError::new("INBOX_ALLOWED_MODELS", reason))
                })
                .transpose()?,
            listen: source.parsed(
                "INBOX_LISTEN",
                SocketAddr::from(([0, 0, 0, 0], 8080)),
                "an address like 0.0.0.0:8080",
            )?,
            max_body_bytes,
            max_inflight_body_bytes,
            max_connections: source.positive(
                "INBOX_MAX_CONNECTIONS",
                4096,
                "a number of connections",
            )?,
            request_timeout,
            max_waiters: source.positive(
                "INBOX_MAX_WAITERS",
                10_000,
                "a number of waiting requests",
            )?,
            max_waiters_per_token: source
                .get("INBOX_MAX_WAITERS_PER_TOKEN")
                .map(|_| {
                    source.positive(
                        "INBOX_MAX_WAITERS_PER_TOKEN",
                        1,
                        "a number of waiting requests",
                    )
                })
                .transpose()?,
            stream_max: Duration::from_secs(source.positive(
                "INBOX_STREAM_MAX_SECS",
                3600,
                "seconds",
            )?),
            public_url,
            trust_forwarded: source.parsed("INBOX_TRUST_FORWARDED", false, "`true` or `false`")?,
            log_format: source.log_format()?,
            retention: source.retention()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(pairs: &[(&str, &str)]) -> Source {
        Source::from_map(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    const VALID: [(&str, &str); 3] = [
        ("DATABASE_URL", "postgres://postgres@127.0.0.1/inbox"),
        (
            "INBOX_WEBHOOK_SECRETS",
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        ),
        ("INBOX_API_TOKENS", "token-one-0123456,token-two-0123456"),
    ];

    fn error_with(overrides: &[(&str, &str)]) -> ConfigError {
        let mut pairs: Vec<_> = VALID
            .iter()
            .filter(|(k, _)| !overrides.iter().any(|(o, _)| o == k))
            .copied()
            .collect();
        pairs.extend(overrides.iter().filter(|(_, v)| !v.is_empty()));
        Settings::from_source(&source(&pairs)).unwrap_err()
    }

    #[test]
    fn defaults_follow_the_contract() {
        let settings = Settings::from_source(&source(&VALID)).unwrap();
        assert_eq!(settings.listen.to_string(), "0.0.0.0:8080");
        assert_eq!(settings.webhook_tolerance_secs, 300);
        assert_eq!(settings.max_body_bytes, 16_777_216);
        assert_eq!(settings.max_inflight_body_bytes, 256 << 20);
        assert_eq!(settings.max_connections, 4096);
        assert_eq!(settings.max_waiters_per_token, None);
        assert_eq!(settings.stream_max, Duration::from_secs(3600));
        assert!(!settings.trust_forwarded);
        assert_eq!(settings.webhook_secrets.len(), 1);
        assert_eq!(
            settings.retention,
            Policy {
                deliveries: Some(Duration::from_secs(30 * 86_400)),
                bodies: Some(Duration::from_secs(86_400)),
            }
        );
    }

    #[test]
    fn each_bad_setting_is_named_without_its_value() {
        for (key, value) in [
            ("DATABASE_URL", "mysql://x"),
            ("INBOX_WEBHOOK_SECRETS", ""),
            (
                "INBOX_WEBHOOK_SECRETS",
                "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw,notasecret",
            ),
            (
                "INBOX_WEBHOOK_SECRETS",
                "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw,",
            ),
            ("INBOX_API_TOKENS", ""),
            ("INBOX_LISTEN", "localhost"),
            ("INBOX_WEBHOOK_TOLERANCE_SECS", "-1"),
            ("INBOX_MAX_BODY_BYTES", "0"),
            ("INBOX_MAX_BODY_BYTES", "1000000000"),
            ("INBOX_MAX_INFLIGHT_BODY_BYTES", "1000"),
            ("INBOX_MAX_CONNECTIONS", "0"),
            ("INBOX_MAX_WAITERS", "many"),
            ("INBOX_MAX_WAITERS_PER_TOKEN", "0"),
            ("INBOX_STREAM_MAX_SECS", "forever"),
            ("INBOX_TRUST_FORWARDED", "yes"),
            ("INBOX_LOG_FORMAT", "xml"),
            ("INBOX_DELIVERY_RETENTION", "59m"),
            ("INBOX_DELIVERY_RETENTION", "30"),
            ("INBOX_INTERMEDIATE_BODY_RETENTION", "1s"),
            ("INBOX_INTERMEDIATE_BODY_RETENTION", "a day"),
            (
                "INBOX_WEBHOOK_SECRETS",
                "whsec_dGhpcyBpcyBub3QgdGhlIHNlY3JldA==",
            ),
            ("INBOX_API_TOKENS", "token-one-0123456,notasecret"),
            ("INBOX_CREATE_TOKENS", "notasecret"),
            ("INBOX_ALLOWED_MODELS", "owner"),
            ("INBOX_ALLOWED_MODELS", "owner/name/extra"),
            ("INBOX_RECONCILE_AFTER", "soon"),
            ("INBOX_RECONCILE_RPS", "0"),
            ("INBOX_RECONCILE_CATCHUP_EVERY", "often"),
            ("INBOX_RECONCILE_IMPORT", "some"),
            ("INBOX_ARCHIVE_URL", "gs://bucket"),
            ("INBOX_ARCHIVE_URL", "file://relative/path"),
            ("INBOX_ARCHIVE_HOSTS", "replicate.delivery,,x"),
            ("INBOX_ARCHIVE_HOSTS", "https://host/with/path"),
            ("INBOX_ARCHIVE_SIGNING_KEY", "notasecret"),
            ("INBOX_ARCHIVE_LINK_TTL", "0"),
            ("INBOX_ARCHIVE_RETENTION", "forever"),
            ("INBOX_ARCHIVE_MAX_FILE_BYTES", "0"),
            ("INBOX_ARCHIVE_QUOTA_BYTES", "lots"),
        ] {
            let error = error_with(&[(key, value)]);
            assert_eq!(error.key, key, "{value}");
            assert!(!error.to_string().contains("notasecret"));
        }
    }

    #[test]
    fn the_gateway_needs_its_webhook_url_and_never_shows_its_token() {
        let with = |pairs: &[(&str, &str)]| {
            let mut all = VALID.to_vec();
            all.extend_from_slice(pairs);
            Settings::from_source(&source(&all))
        };
        assert!(with(&[]).unwrap().gateway.is_none());
        let missing = with(&[("REPLICATE_API_TOKEN", "r8_notasecret")]).unwrap_err();
        assert_eq!(missing.key, "INBOX_WEBHOOK_URL");
        for (key, value) in [
            ("INBOX_WEBHOOK_URL", "inbox.example.com/webhooks"),
            ("INBOX_REPLICATE_API_URL", "ftp://api.example"),
        ] {
            let mut pairs = vec![
                ("REPLICATE_API_TOKEN", "r8_notasecret"),
                (
                    "INBOX_WEBHOOK_URL",
                    "https://inbox.example.com/webhooks/replicate",
                ),
            ];
            pairs.retain(|(k, _)| *k != key);
            pairs.push((key, value));
            let error = with(&pairs).unwrap_err();
            assert_eq!(error.key, key);
            assert!(!error.to_string().contains("notasecret"));
        }
        let settings = with(&[
            ("REPLICATE_API_TOKEN", "r8_notasecret"),
            (
                "INBOX_WEBHOOK_URL",
                "https://inbox.example.com/webhooks/replicate",
            ),
        ])
        .unwrap();
        let gateway = settings.gateway.as_ref().unwrap();
        assert_eq!(gateway.api_url, DEFAULT_REPLICATE_API_URL);
        assert!(!format!("{settings:?}").contains("notasecret"));
    }

    #[test]
    fn the_database_is_chosen_by_scheme_and_defaults_to_the_embedded_file() {
        let url = |value: &str| {
            let mut pairs = VALID.to_vec();
            pairs.retain(|(k, _)| *k != "DATABASE_URL");
            pairs.push(("DATABASE_URL", value));
            Settings::from_source(&source(&pairs)).unwrap().database_url
        };
        assert!(matches!(url(""), DatabaseUrl::Sqlite(u) if u == DEFAULT_SQLITE_URL));
        assert!(matches!(
            url("sqlite:///var/lib/inbox.db"),
            DatabaseUrl::Sqlite(_)
        ));
        assert!(matches!(
            url("postgresql://db/inbox"),
            DatabaseUrl::Postgres(_)
        ));
        let secret = DatabaseUrl::Postgres("postgres://u:hunter2@db/inbox".into());
        assert!(!format!("{secret:?}").contains("hunter2"));
    }

    #[test]
    fn the_archive_is_beside_the_embedded_store_off_on_postgres_and_never_shows_its_keys() {
        let with = |pairs: &[(&str, &str)]| {
            let mut all = VALID.to_vec();
            all.retain(|(k, _)| !pairs.iter().any(|(p, _)| p == k));
            all.extend_from_slice(pairs);
            Settings::from_source(&source(&all)).unwrap().archive
        };
        assert!(with(&[]).is_none(), "off on Postgres until set");
        let embedded =
            with(&[("DATABASE_URL", "sqlite:///var/lib/inbox/inbox.db?mode=rwc")]).unwrap();
        assert_eq!(embedded.location.describe(), "file:///var/lib/inbox/files");
        assert_eq!(embedded.link_ttl, Duration::from_secs(7 * 86_400));
        assert_eq!(embedded.max_file_bytes, 1 << 30);
        assert_eq!(
            embedded.signing_keys.len(),
            1,
            "derived from the webhook secret"
        );
        assert!(with(&[("DATABASE_URL", "sqlite::memory:")]).is_none());
        assert!(
            with(&[
                ("DATABASE_URL", "sqlite:///x.db"),
                ("INBOX_ARCHIVE_URL", "off")
            ])
            .is_none()
        );
        let s3 = with(&[
            ("INBOX_ARCHIVE_URL", "s3://bucket/prefix/"),
            ("AWS_SECRET_ACCESS_KEY", "notasecret"),
            (
                "INBOX_ARCHIVE_SIGNING_KEY",
                "notasecret-notasecret-notasecret-1,notasecret-notasecret-notasecret-2",
            ),
        ])
        .unwrap();
        assert_eq!(s3.location.describe(), "s3://bucket/prefix");
        assert_eq!(s3.signing_keys.len(), 2);
        assert!(!format!("{s3:?}").contains("notasecret"));
    }

    #[test]
    fn the_environment_wins_over_the_file() {
        let mut s = source(&VALID);
        s.env = Box::new(|key| (key == "INBOX_LISTEN").then(|| "127.0.0.1:9".to_owned()));
        s.file.insert("INBOX_LISTEN".into(), "127.0.0.1:8".into());
        assert_eq!(
            Settings::from_source(&s).unwrap().listen.to_string(),
            "127.0.0.1:9"
        );
    }
}
