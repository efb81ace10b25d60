//! Output files that outlive the platform's hour. The platform removes an API prediction's output
//! files about an hour after it ends; the inbox copies each into object storage as soon as the
//! prediction succeeds, and from then on reads name the inbox's copy.
//!
//! One file's path: `worker` finds predictions that became `succeeded` (by any source) and queues
//! the URLs of their `output` (`files`) in the database; it leases the queued files, most recently
//! completed first, and `fetch` downloads each from an allowed host only (no request forgery),
//! streaming it into the object store. `links` signs the inbox's URLs for the copies, which
//! `http::archive` checks and serves, and `files` rewrites what readers get.

mod background;
mod fetch;
mod files;
mod links;
mod worker;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use object_store::ObjectStore;
use object_store::path::Path as ObjectPath;

pub use fetch::{Hosts, is_public};
pub use files::{ArchivedOutput, file_key, output_urls};
pub use links::{LinkCheck, Links, SigningKey};
pub use worker::{Archiver, FINISHED_BOUND};

/// What the archive is told (`INBOX_ARCHIVE_*`).
#[derive(Debug, Clone)]
pub struct Settings {
    pub location: Location,
    /// The only places files are fetched from (`INBOX_ARCHIVE_HOSTS`).
    pub hosts: Hosts,
    /// A larger file is not archived (`INBOX_ARCHIVE_MAX_FILE_BYTES`).
    pub max_file_bytes: u64,
    /// Past this many bytes archived in all, new files are not (`INBOX_ARCHIVE_QUOTA_BYTES`).
    pub quota_bytes: Option<u64>,
    /// How long an archived file is kept (`INBOX_ARCHIVE_RETENTION`); `None`: as long as its
    /// prediction.
    pub retention: Option<Duration>,
    /// Links are signed with the first and accepted with any (`INBOX_ARCHIVE_SIGNING_KEY`).
    pub signing_keys: Vec<SigningKey>,
    /// How long a link handed out stays valid (`INBOX_ARCHIVE_LINK_TTL`).
    pub link_ttl: Duration,
}

/// Where archived files go.
#[derive(Clone)]
pub enum Location {
    /// A local folder (`file:///path`, or the embedded store's `files/`).
    Folder(PathBuf),
    /// An S3 or S3-compatible bucket (`s3://bucket/prefix`), with the `AWS_*` settings that reach
    /// it (credentials among them: never printed).
    S3 {
        bucket: String,
        prefix: String,
        options: Vec<(String, String)>,
    },
}

impl fmt::Debug for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Location {
    /// Where it is, for the start-up log: never a credential.
    pub fn describe(&self) -> String {
        match self {
            Self::Folder(path) => format!("file://{}", path.display()),
            Self::S3 { bucket, prefix, .. } => format!("s3://{bucket}/{prefix}"),
        }
    }

    /// `file:///path` or `s3://bucket/prefix`; the `AWS_*` options come with an S3 one.
    pub fn parse(text: &str, options: Vec<(String, String)>) -> Result<Self, String> {
        let text = text.trim();
        if let Some(path) = text.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err("a file:// URL takes an absolute path: file:///var/lib/inbox".into());
            }
            return Ok(Self::Folder(PathBuf::from(path)));
        }
        if let Some(rest) = text.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err("an s3:// URL names its bucket: s3://bucket/prefix".into());
            }
            return Ok(Self::S3 {
                bucket: bucket.to_owned(),
                prefix: prefix.trim_matches('/').to_owned(),
                options,
            });
        }
        Err("must be file:///path, s3://bucket/prefix or off".into())
    }
}

/// The object store files are kept in, and how links to them are signed.
pub struct Archive {
    store: Arc<dyn ObjectStore>,
    links: Links,
    settings: Settings,
}

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("cannot create the archive's folder {path}: {source}")]
    Folder {
        path: String,
        source: std::io::Error,
    },
    #[error("the archive's store cannot be used: {0}")]
    Store(#[from] object_store::Error),
    #[error("the archive's HTTP client cannot start: {0}")]
    Client(reqwest::Error),
    #[error("the archive's threads cannot start: {0}")]
    Threads(std::io::Error),
}

impl Archive {
    /// Opens the store `settings` name: a folder is created if missing.
    pub fn open(settings: Settings) -> Result<Self, ArchiveError> {
        let store: Arc<dyn ObjectStore> = match &settings.location {
            Location::Folder(path) => {
                std::fs::create_dir_all(path).map_err(|source| ArchiveError::Folder {
                    path: path.display().to_string(),
                    source,
                })?;
                Arc::new(object_store::local::LocalFileSystem::new_with_prefix(path)?)
            }
            Location::S3 {
                bucket,
                prefix,
                options,
            } => {
                let mut builder =
                    object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket);
                for (key, value) in options {
                    if let Ok(key) = key.to_ascii_lowercase().parse() {
                        builder = builder.with_config(key, value);
                    }
                }
                let s3 = builder.build()?;
                if prefix.is_empty() {
                    Arc::new(s3)
                } else {
                    Arc::new(object_store::prefix::PrefixStore::new(
                        s3,
                        ObjectPath::from(prefix.as_str()),
                    ))
                }
            }
        };
        Ok(Self {
            store,

            links: Links::new(settings.signing_keys.clone(), settings.link_ttl),
            settings,
        })
    }

    /// Where it is, for the start-up log: never a credential.
    pub fn describe(&self) -> String {
        self.settings.location.describe()
    }

    pub fn links(&self) -> &Links {
        &self.links
    }

    /// The object store itself.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }
}
