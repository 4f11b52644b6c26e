//! Values of a layer: secret URLs, and the parsers that name what a valid value looks like.
//! A service's own settings use them in `#[serde(deserialize_with = "...")]`.

use serde::de::Error as _;
use serde::{Deserialize, Deserializer};
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;
use url::Url;

/// A URL whose password never reaches a log line or `Debug` output.
///
/// ```
/// use bootstrap::config::SecretUrl;
/// let url: SecretUrl = "postgres://app:hunter2@db:5432/app".parse()?;
/// assert_eq!(url.to_string(), "postgres://app:***@db:5432/app");
/// assert!(!format!("{url:?}").contains("hunter2"));
/// assert!(url.expose().contains("hunter2"));
/// # Ok::<(), url::ParseError>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(pub(super) Url);

impl SecretUrl {
    /// The full URL, password included: pass it to a client, never to a logger.
    pub fn expose(&self) -> &str {
        self.0.as_str()
    }

    /// The parsed URL.
    pub fn url(&self) -> &Url {
        &self.0
    }
}

impl std::str::FromStr for SecretUrl {
    type Err = url::ParseError;
    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        Url::parse(raw).map(SecretUrl)
    }
}

/// The user-info password and a `?password=` (libpq's keyword) masked.
impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact(self.0.as_str()))
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretUrl({self})")
    }
}

impl<'de> Deserialize<'de> for SecretUrl {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        text(
            deserializer,
            "a URL such as scheme://user:password@host:port/path",
            |raw| {
                raw.parse::<SecretUrl>()
                    .ok()
                    .filter(|url| url.url().host_str().is_some_and(|host| !host.is_empty()))
            },
        )
    }
}

/// Masks every password inside `text`: the `user:password@` of URLs and libpq's
/// `password=...`, wherever they appear (driver errors echo connection strings).
///
/// ```
/// use bootstrap::config::redact;
/// assert_eq!(
///     redact("connecting to postgres://app:s3cret@db:5432/app failed (password=hunter2 host=db)"),
///     "connecting to postgres://app:***@db:5432/app failed (password=*** host=db)",
/// );
/// ```
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (before, after) = rest.split_at(at + 3);
        out.push_str(before);
        // The authority ends at the first character a URL's user info cannot hold unescaped.
        let end = after
            .find(|c: char| c.is_whitespace() || "/?#\"'<>`".contains(c))
            .unwrap_or(after.len());
        let authority = &after[..end];
        match (authority.rfind('@'), authority.find(':')) {
            (Some(at), Some(colon)) if colon < at => {
                out.push_str(&format!("{}***{}", &authority[..=colon], &authority[at..]));
            }
            _ => out.push_str(authority),
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    redact_keywords(&out)
}

/// libpq keyword form: `password=secret` and `password='se cret'`.
fn redact_keywords(text: &str) -> String {
    const KEY: &str = "password=";
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.to_ascii_lowercase().find(KEY) {
        out.push_str(&format!("{}***", &rest[..at + KEY.len()]));
        let value = &rest[at + KEY.len()..];
        let end = match value.strip_prefix('\'') {
            Some(quoted) => quoted.find('\'').map_or(value.len(), |close| close + 2),
            None => value
                .find(|c: char| c.is_whitespace() || "&;,)\"".contains(c))
                .unwrap_or(value.len()),
        };
        rest = &value[end..];
    }
    out.push_str(rest);
    out
}

/// A compile-time URL of a default.
pub fn constant_url(raw: &'static str) -> SecretUrl {
    SecretUrl(Url::parse(raw).unwrap_or_else(|e| panic!("default URL {raw}: {e}")))
}

/// One value of a config layer as text, parsed by `parse`. The config crate gives TOML's numbers
/// and booleans as text too; a table or list where a value belongs is refused like a bad value.
pub fn text<'de, D: Deserializer<'de>, T>(
    deserializer: D,
    expected: &str,
    parse: impl FnOnce(&str) -> Option<T>,
) -> Result<T, D::Error> {
    let refused = || D::Error::custom(format!("expected {expected}"));
    let raw = String::deserialize(deserializer).map_err(|_| refused())?;
    parse(raw.trim()).ok_or_else(refused)
}

/// A TCP port, 1-65535.
pub fn port<'de, D: Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
    text(d, "a TCP port (1-65535)", |raw| {
        raw.parse::<u16>().ok().filter(|port| *port != 0)
    })
}

/// A whole number from `MIN` to `MAX`: `#[serde(deserialize_with = "count::<_, 1, 100>")]`.
pub fn count<'de, D: Deserializer<'de>, const MIN: usize, const MAX: usize>(
    d: D,
) -> Result<usize, D::Error> {
    text(d, &format!("a whole number from {MIN} to {MAX}"), |raw| {
        raw.parse::<usize>()
            .ok()
            .filter(|n| (MIN..=MAX).contains(n))
    })
}

/// A humantime duration (`5s`, `250ms`, `1h 30m`), zero included.
pub fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    text(d, "a duration such as \"5s\" or \"250ms\"", |raw| {
        humantime::parse_duration(raw).ok()
    })
}

/// A humantime duration above zero.
pub fn positive_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    text(
        d,
        "a duration above zero such as \"5s\" or \"250ms\"",
        |raw| humantime::parse_duration(raw).ok().filter(|d| !d.is_zero()),
    )
}

/// `true` or `false` (also `1`/`0`, `yes`/`no`).
pub fn boolean<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    let flag = |raw: &str| match raw.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Some(true),
        "false" | "0" | "no" => Some(false),
        _ => None,
    };
    text(d, "true or false", flag)
}

/// A flag that, when unset, leaves the choice to the code.
pub fn optional_flag<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    boolean(d).map(Some)
}

/// An empty value means unset, so a chart can always render the variable.
pub fn optional_file<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
    text(d, "a file path", |raw| Some(raw.to_owned()))
        .map(|raw| (!raw.is_empty()).then(|| PathBuf::from(raw)))
}

/// An IP address to bind to.
pub fn ip_address<'de, D: Deserializer<'de>>(d: D) -> Result<std::net::IpAddr, D::Error> {
    text(d, "an IP address such as 0.0.0.0 or 127.0.0.1", |raw| {
        raw.parse().ok()
    })
}

/// Comma-separated IP networks (`10.0.0.0/8`) or addresses (a /32 or /128); empty for none.
pub fn networks<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<ipnet::IpNet>, D::Error> {
    text(
        d,
        "IP networks or addresses such as 10.0.0.0/8,192.168.1.10",
        |raw| {
            raw.split(',')
                .map(str::trim)
                .filter(|part| !part.is_empty())
                .map(|part| {
                    part.parse::<ipnet::IpNet>()
                        .ok()
                        .or_else(|| part.parse::<std::net::IpAddr>().ok().map(Into::into))
                })
                .collect()
        },
    )
}

/// Names (of the service, of resources on a dependency): what Prometheus labels take unquoted.
pub fn name<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    text(
        d,
        "1-255 characters of a-z, 0-9, '.', '_', '-', ':'",
        |raw| {
            let valid = !raw.is_empty()
                && raw.len() <= 255
                && raw
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-:".contains(c));
            valid.then(|| raw.to_owned())
        },
    )
}
