//! Fetching output files without being made to fetch anything else. An output URL comes from a
//! model, which may be anyone's: it must not reach the inbox's own network (the cloud's metadata
//! address, a database, an admin port). So a file is fetched only
//!
//! - from a host on the list (`INBOX_ARCHIVE_HOSTS`), over `https` on port 443, with no userinfo,
//!   its name compared without a trailing dot;
//! - at an address checked once and connected to as checked: the name is resolved by
//!   [`Resolver`], which drops every address that is not public (loopback, private, link-local,
//!   CGNAT, and IPv6 forms of them), so no second lookup can rebind it;
//! - through redirects only to URLs that pass the same checks, and never through a proxy from the
//!   environment.
//!
//! An exact origin on the list (`http://10.0.0.5:9000`) is the operator naming a private store or
//! a test server: that origin alone is allowed, whatever its scheme, port or address.

use std::error::Error as StdError;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, PutPayload, WriteMultipart};
use reqwest::Url;
use reqwest::dns::{Name, Resolve, Resolving};
use reqwest::redirect::{Attempt, Policy};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The hosts files are fetched from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hosts(Vec<Entry>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    /// This host name (or IP address), exactly.
    Name(String),
    /// Any subdomain of this domain (`*.example.com`), not the domain itself.
    Subdomains(String),
    /// This origin alone, whatever its address.
    Origin {
        scheme: String,
        host: String,
        port: u16,
    },
}

/// The default list: the platform's file host and its subdomains.
pub const DEFAULT_HOSTS: &str = "replicate.delivery,*.replicate.delivery";
const MAX_REDIRECTS: usize = 5;

/// How a URL is allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allowed {
    /// By an exact origin on the list: its address is not checked.
    Origin,
    /// By a host name on the list: its address must be public.
    Host,
}

impl Hosts {
    /// Comma-separated entries: `host`, `*.domain`, or `scheme://host:port`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut entries = Vec::new();
        for entry in text.split(',').map(str::trim) {
            if entry.is_empty() {
                return Err("has an empty entry".into());
            }
            if entry.contains("://") {
                let url = Url::parse(entry).map_err(|_| format!("{entry:?} is not an origin"))?;
                let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
                    return Err(format!("{entry:?} is not an origin"));
                };
                if !matches!(url.scheme(), "http" | "https")
                    || !matches!(url.path(), "" | "/")
                    || url.query().is_some()
                    || !url.username().is_empty()
                {
                    return Err(format!(
                        "{entry:?}: an origin is http:// or https://, a host and a port, nothing more"
                    ));
                }
                entries.push(Entry::Origin {
                    scheme: url.scheme().to_owned(),
                    host: normalise(host),
                    port,
                });
            } else if let Some(domain) = entry.strip_prefix("*.") {
                entries.push(Entry::Subdomains(normalise(checked_name(domain)?)));
            } else {
                entries.push(Entry::Name(normalise(checked_name(entry)?)));
            }
        }
        Ok(Self(entries))
    }

    /// Whether `url` may be fetched, and how; `None`: never.
    pub fn allows(&self, url: &Url) -> Option<Allowed> {
        if !url.username().is_empty() || url.password().is_some() {
            return None;
        }
        let host = url.host()?;
        let name = normalise(&match &host {
            url::Host::Domain(domain) => (*domain).to_owned(),
            url::Host::Ipv4(ip) => ip.to_string(),
            url::Host::Ipv6(ip) => ip.to_string(),
        });
        let port = url.port_or_known_default()?;
        let origin = self.0.iter().any(|entry| {
            matches!(entry, Entry::Origin { scheme, host, port: p }
                if scheme == url.scheme() && *host == name && *p == port)
        });
        if origin {
            return Some(Allowed::Origin);
        }
        if url.scheme() != "https" || port != 443 {
            return None;
        }
        let listed = self.0.iter().any(|entry| match entry {
            Entry::Name(listed) => *listed == name,
            Entry::Subdomains(domain) => name
                .strip_suffix(domain.as_str())
                .is_some_and(|sub| sub.len() > 1 && sub.ends_with('.')),
            Entry::Origin { .. } => false,
        });
        let address_ok = match host {
            url::Host::Domain(_) => true,
            url::Host::Ipv4(ip) => is_public(IpAddr::V4(ip)),
            url::Host::Ipv6(ip) => is_public(IpAddr::V6(ip)),
        };
        (listed && address_ok).then_some(Allowed::Host)
    }

    /// The host names of the exact origins: the resolver lets their addresses through.
    fn origin_hosts(&self) -> Vec<String> {
        self.0
            .iter()
            .filter_map(|entry| match entry {
                Entry::Origin { host, .. } => Some(host.clone()),
                _ => None,
            })
            .collect()
    }
}

impl Default for Hosts {
    fn default() -> Self {
        Self::parse(DEFAULT_HOSTS).unwrap_or(Self(Vec::new()))
    }
}

fn checked_name(name: &str) -> Result<&str, String> {
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':'));
    if valid {
        Ok(name)
    } else {
        Err(format!(
            "{name:?} is not a host name, `*.` and a domain, or an origin"
        ))
    }
}

/// Lower case, without the brackets of an IPv6 literal or a trailing dot.
fn normalise(host: &str) -> String {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .trim_end_matches('.')
        .to_ascii_lowercase()
}

/// Whether `ip` is an address on the public internet: not loopback, private, link-local (the
/// cloud metadata address among them), CGNAT, multicast, reserved or for documentation, nor an
/// IPv6 form of one (IPv4-mapped, NAT64, 6to4).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => public_v4(ip),
        IpAddr::V6(ip) => {
            if let Some(v4) = ip.to_ipv4_mapped() {
                return public_v4(v4);
            }
            let s = ip.segments();
            // NAT64 (64:ff9b::/96) carries an IPv4 address in its last 32 bits.
            if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0; 4] {
                return public_v4(Ipv4Addr::from((ip.to_bits() & 0xffff_ffff) as u32));
            }
            // 6to4 (2002::/16) carries one in its second and third segments.
            if s[0] == 0x2002 {
                let [a, b] = s[1].to_be_bytes();
                let [c, d] = s[2].to_be_bytes();
                return public_v4(Ipv4Addr::new(a, b, c, d));
            }
            !(s[0..6] == [0; 6] // ::, ::1 and IPv4-compatible forms
                || ip.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local
                || (s[0] & 0xffc0) == 0xfe80 // link-local
                || (s[0] & 0xffc0) == 0xfec0 // site-local, deprecated
                || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
                || (s[0] == 0x2001 && s[1] == 0)) // Teredo
        }
    }
}

fn public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(a == 0
        || a == 10
        || a == 127
        || (a == 100 && (b & 0xc0) == 64) // CGNAT, 100.64.0.0/10
        || (a == 169 && b == 254) // link-local, the metadata address among them
        || (a == 172 && (b & 0xf0) == 16)
        || (a == 192 && b == 168)
        || (a == 192 && b == 0 && (c == 0 || c == 2))
        || (a == 198 && (b & 0xfe) == 18) // benchmarking
        || (a == 198 && b == 51 && c == 100)
        || (a == 203 && b == 0 && c == 113)
        || a >= 224) // multicast, reserved, broadcast
}

/// Resolves a name once and hands the HTTP client only its public addresses (or every address of
/// an exact origin's host): the connection goes to an address that was checked.
struct Resolver {
    origin_hosts: Arc<Vec<String>>,
}

/// No address of the name may be connected to.
#[derive(Debug)]
pub struct RefusedAddress;

impl fmt::Display for RefusedAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the host resolves to no public address")
    }
}

impl StdError for RefusedAddress {}

/// A redirect to somewhere the list does not allow.
#[derive(Debug)]
pub struct RefusedRedirect;

impl fmt::Display for RefusedRedirect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a redirect to a URL that is not allowed, or too many redirects")
    }
}

impl StdError for RefusedRedirect {}

impl Resolve for Resolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = normalise(name.as_str());
        let any_address = self.origin_hosts.contains(&host);
        Box::pin(async move {
            let addresses: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|address| any_address || is_public(address.ip()))
                .collect();
            if addresses.is_empty() {
                return Err(Box::new(RefusedAddress) as Box<dyn StdError + Send + Sync>);
            }
            Ok(Box::new(addresses.into_iter()) as Box<dyn Iterator<Item = SocketAddr> + Send>)
        })
    }
}

/// The client files are fetched with: the resolver above, redirects checked, no proxy, bounded
/// waits; an error if the TLS backend cannot start.
pub fn client(hosts: &Hosts) -> Result<reqwest::Client, reqwest::Error> {
    let allowed = hosts.clone();
    reqwest::Client::builder()
        .no_proxy()
        .dns_resolver(Arc::new(Resolver {
            origin_hosts: Arc::new(hosts.origin_hosts()),
        }))
        .redirect(Policy::custom(move |attempt: Attempt<'_>| {
            if attempt.previous().len() < MAX_REDIRECTS && allowed.allows(attempt.url()).is_some() {
                attempt.follow()
            } else {
                attempt.error(RefusedRedirect)
            }
        }))
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(READ_TIMEOUT)
        .user_agent(concat!("prediction-inbox/", env!("CARGO_PKG_VERSION")))
        .build()
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest silence while a file streams in.
const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Files are written in parts of this size (S3's smallest but for the last), one part in flight:
/// what one download holds, whatever the file's size. A file smaller than one part is written
/// whole, in one request.
pub const PART_BYTES: usize = 5 * 1024 * 1024;

/// A file archived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    pub size: u64,
    pub content_type: String,
}

/// Why a file was not archived.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// For good: the URL, its address or a redirect is not allowed, the file is gone or too large.
    #[error("{0}")]
    Refused(&'static str),
    /// Perhaps not next time: the host failed, or could not be reached, or the store failed.
    #[error("{reason}: {detail}")]
    Failed {
        reason: &'static str,
        detail: String,
    },
    /// The service is stopping, or another replica has the file: what was uploaded is removed.
    #[error("the download was stopped")]
    Stopped,
}

impl FetchError {
    /// The reason, as fields and metrics name it.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Refused(reason) | Self::Failed { reason, .. } => reason,
            Self::Stopped => "stopped",
        }
    }

    fn from_http(error: reqwest::Error) -> Self {
        let mut source: Option<&(dyn StdError + 'static)> = error.source();
        while let Some(cause) = source {
            if cause.is::<RefusedAddress>() {
                return Self::Refused("address_refused");
            }
            if cause.is::<RefusedRedirect>() {
                return Self::Refused("redirect_refused");
            }
            source = cause.source();
        }
        Self::Failed {
            reason: if error.is_timeout() {
                "timed_out"
            } else {
                "unreachable"
            },
            // Without the URL: it may carry a signed query.
            detail: error.without_url().to_string(),
        }
    }

    fn store(error: object_store::Error) -> Self {
        Self::Failed {
            reason: "store_failed",
            detail: error.to_string(),
        }
    }
}

/// Downloads `url` into `path` of `store`, streamed: never more than about two parts in memory.
/// Once `stop` is cancelled it ends, removing what it had uploaded of the file.
pub async fn fetch(
    client: &reqwest::Client,
    hosts: &Hosts,
    url: &str,
    (store, path): (&dyn ObjectStore, &ObjectPath),
    max_bytes: u64,
    stop: &CancellationToken,
) -> Result<Fetched, FetchError> {
    let parsed = Url::parse(url).map_err(|_| FetchError::Refused("not_a_url"))?;
    if hosts.allows(&parsed).is_none() {
        return Err(FetchError::Refused("host_not_allowed"));
    }
    let mut response = client
        .get(parsed.clone())
        .send()
        .await
        .map_err(FetchError::from_http)?;
    let status = response.status();
    if matches!(status.as_u16(), 404 | 410) {
        return Err(FetchError::Refused("expired"));
    }
    if status.as_u16() == 429 || status.is_server_error() {
        return Err(FetchError::Failed {
            reason: "host_failed",
            detail: format!("the host answered {status}"),
        });
    }
    if !status.is_success() {
        return Err(FetchError::Refused("host_refused"));
    }
    if response.content_length().is_some_and(|n| n > max_bytes) {
        return Err(FetchError::Refused("too_large"));
    }
    let content_type = content_type(response.headers(), response.url());
    let mut size = 0u64;
    let mut first = Vec::new();
    let mut upload: Option<WriteMultipart> = None;
    let copying = async {
        let mut window = Window::new();
        loop {
            let Some(chunk) = window.next(&mut response).await? else {
                break;
            };
            size += chunk.len() as u64;
            if size > max_bytes {
                return Err(FetchError::Refused("too_large"));
            }
            match &mut upload {
                Some(upload) => {
                    upload
                        .wait_for_capacity(1)
                        .await
                        .map_err(FetchError::store)?;
                    upload.put(chunk);
                }
                None if first.len() + chunk.len() <= PART_BYTES => {
                    first.extend_from_slice(&chunk);
                }
                None => {
                    let mut started = WriteMultipart::new_with_chunk_size(
                        store.put_multipart(path).await.map_err(FetchError::store)?,
                        PART_BYTES,
                    );
                    started.put(Bytes::from(std::mem::take(&mut first)));
                    started.put(chunk);
                    upload = Some(started);
                }
            }
        }
        Ok(())
    };
    let outcome = tokio::select! {
        outcome = copying => outcome,
        () = stop.cancelled() => Err(FetchError::Stopped),
    };
    match (outcome, upload) {
        (Ok(()), None) => {
            store
                .put(path, PutPayload::from(first))
                .await
                .map_err(FetchError::store)?;
        }
        (Ok(()), Some(upload)) => {
            upload.finish().await.map_err(FetchError::store)?;
        }
        (Err(error), Some(upload)) => {
            let _ = upload.abort().await;
            return Err(error);
        }
        (Err(error), None) => return Err(error),
    }
    Ok(Fetched { size, content_type })
}

/// The least a download must bring in each `RATE_WINDOW`, or it is cut (`too_slow`, and tried
/// again later): a host that trickles a byte at a time, each within `READ_TIMEOUT`, would
/// otherwise hold one of the few fetches for ever. About 35 KiB/s.
const RATE_WINDOW: Duration = Duration::from_secs(30);
const RATE_WINDOW_BYTES: u64 = 1024 * 1024;

/// Counts what a download brings in each window of `RATE_WINDOW`.
struct Window {
    ends: Instant,
    bytes: u64,
}

impl Window {
    fn new() -> Self {
        Self {
            ends: Instant::now() + RATE_WINDOW,
            bytes: 0,
        }
    }

    /// The response's next chunk (`None` at its end), unless the window ends first having
    /// brought too little.
    async fn next(
        &mut self,
        response: &mut reqwest::Response,
    ) -> Result<Option<Bytes>, FetchError> {
        loop {
            // `None`: the window ended first. `chunk` takes nothing until it has it, so the same
            // chunk is waited for again in the next window.
            let chunk = match tokio::time::timeout_at(self.ends, response.chunk()).await {
                Ok(next) => match next.map_err(FetchError::from_http)? {
                    Some(chunk) => Some(chunk),
                    None => return Ok(None),
                },
                Err(_) => None,
            };
            self.bytes += chunk.as_ref().map_or(0, |c| c.len() as u64);
            if Instant::now() >= self.ends {
                if self.bytes < RATE_WINDOW_BYTES {
                    return Err(FetchError::Failed {
                        reason: "too_slow",
                        detail: format!(
                            "the host sent {} bytes in {RATE_WINDOW:?}, less than {RATE_WINDOW_BYTES}",
                            self.bytes
                        ),
                    });
                }
                *self = Self::new();
            }
            if let Some(chunk) = chunk {
                return Ok(Some(chunk));
            }
        }
    }
}

/// The type the host says, unless it says nothing useful; then the one the name's extension
/// suggests.
fn content_type(headers: &reqwest::header::HeaderMap, url: &Url) -> String {
    let said = headers
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .map(str::trim)
        .filter(|value| {
            !value.is_empty()
                && value.is_ascii()
                && !value.starts_with("application/octet-stream")
                && value.contains('/')
        });
    match said {
        Some(said) => said.to_owned(),
        None => mime_guess::from_path(url.path())
            .first()
            .map(|mime| mime.essence_str().to_owned())
            .unwrap_or_else(|| "application/octet-stream".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allows(hosts: &str, url: &str) -> Option<Allowed> {
        Hosts::parse(hosts)
            .unwrap()
            .allows(&Url::parse(url).unwrap())
    }

    #[test]
    fn the_default_list_allows_the_platforms_files_over_https_on_443_only() {
        for url in [
            "https://replicate.delivery/pbxt/abc/out.png",
            "https://pbxt.replicate.delivery/abc/out.png",
            "https://replicate.delivery./abc/out.png",
            "https://REPLICATE.delivery:443/abc",
        ] {
            assert_eq!(allows(DEFAULT_HOSTS, url), Some(Allowed::Host), "{url}");
        }
        for url in [
            "http://replicate.delivery/abc",
            "https://replicate.delivery:8443/abc",
            "https://user@replicate.delivery/abc",
            "https://replicate.delivery@127.0.0.1/abc",
            "https://evilreplicate.delivery/abc",
            "https://replicate.delivery.evil.example/abc",
            "https://127.0.0.1/abc",
            "https://[::ffff:127.0.0.1]/abc",
            "https://169.254.169.254/latest/meta-data",
            "https://localhost/abc",
            "file:///etc/passwd",
        ] {
            assert_eq!(allows(DEFAULT_HOSTS, url), None, "{url}");
        }
    }

    #[test]
    fn an_exact_origin_allows_that_origin_alone() {
        let list = "http://127.0.0.1:9000";
        assert_eq!(
            allows(list, "http://127.0.0.1:9000/f"),
            Some(Allowed::Origin)
        );
        assert_eq!(allows(list, "http://127.0.0.1:9001/f"), None);
        assert_eq!(allows(list, "https://127.0.0.1:9000/f"), None);
        assert_eq!(allows(list, "https://127.0.0.1/f"), None);
        assert!(Hosts::parse("https://x.example/path").is_err());
        assert!(Hosts::parse("a.example,,b.example").is_err());
        assert!(Hosts::parse("a b").is_err());
    }

    #[test]
    fn only_public_addresses_are_public() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.255",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "ff02::1",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        for public in [
            "8.8.8.8",
            "100.128.0.1",
            "172.32.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
    }
}
