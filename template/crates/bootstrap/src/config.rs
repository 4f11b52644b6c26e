//! Layered, typed, validated settings.
//!
//! Layers, lowest first: built-in defaults < `config/default.toml` < `config/$APP_ENV.toml` <
//! environment variables `APP__SECTION__KEY`. Every value is parsed here, at start, before any
//! port is bound; a bad one becomes a [`ConfigError`] naming the variable, the value and what
//! was expected, and the binary exits with code 2.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use url::Url;

/// A setting that could not be used.
///
/// ```
/// let error = bootstrap::config::ConfigError::new("server.port", Some("abc".into()), "a TCP port (1-65535)");
/// assert_eq!(error.to_string(), r#"APP__SERVER__PORT="abc" is invalid: expected a TCP port (1-65535)"#);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The environment variable that sets the key (`APP__SERVER__PORT`).
    pub variable: String,
    /// The offending value, already redacted; `None` when it was missing.
    pub value: Option<String>,
    /// What a valid value looks like.
    pub expected: String,
}

impl ConfigError {
    /// An error for the dotted `key` (`server.port`).
    pub fn new(key: &str, value: Option<String>, expected: impl Into<String>) -> Self {
        Self {
            variable: env_name(key),
            value,
            expected: expected.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            Some(value) => write!(
                f,
                "{}={value:?} is invalid: expected {}",
                self.variable, self.expected
            ),
            None => write!(
                f,
                "{} is missing: expected {}",
                self.variable, self.expected
            ),
        }
    }
}

/// `server.port` -> `APP__SERVER__PORT`.
fn env_name(key: &str) -> String {
    if key.starts_with("APP_") || key.chars().all(|c| c.is_ascii_uppercase() || c == '_') {
        return key.to_owned();
    }
    format!("APP__{}", key.replace('.', "__").to_ascii_uppercase())
}

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
pub struct SecretUrl(Url);

impl SecretUrl {
    /// The full URL, password included: pass it to a client, never to a logger.
    pub fn expose(&self) -> &str {
        self.0.as_str()
    }

    /// The parsed URL.
    pub fn url(&self) -> &Url {
        &self.0
    }

    fn redacted(&self) -> String {
        let mut shown = self.0.clone();
        if shown.password().is_some() {
            // Only fails for URLs that cannot carry credentials, which cannot have a password.
            let _ = shown.set_password(Some("***"));
        }
        shown.to_string()
    }
}

impl std::str::FromStr for SecretUrl {
    type Err = url::ParseError;
    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        Url::parse(raw).map(SecretUrl)
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretUrl({})", self.redacted())
    }
}

/// Redacts the password of anything that looks like a URL inside `text` (for error messages
/// that echo a value back).
pub fn redact(text: &str) -> String {
    match text.parse::<SecretUrl>() {
        Ok(url) => url.to_string(),
        Err(_) => text.to_owned(),
    }
}

/// All settings of the service.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Name reported as `serviceId` and OTel `service.name`.
    pub service_name: String,
    /// The API server.
    pub server: ServerSettings,
    /// The management server (probes, metrics).
    pub management: ManagementSettings,
    /// PostgreSQL.
    pub database: DatabaseSettings,
    /// RabbitMQ.
    pub rabbitmq: RabbitMqSettings,
    /// Startup.
    pub startup: StartupSettings,
    /// Shutdown.
    pub shutdown: ShutdownSettings,
    /// Check tuning.
    pub health: HealthSettings,
    /// The outbox relay.
    pub outbox: OutboxSettings,
    /// How long bookkeeping rows are kept.
    pub retention: RetentionSettings,
}

/// `APP__RETENTION__*`: bookkeeping tables pruned in bounded batches, so none only grows.
#[derive(Debug, Clone)]
pub struct RetentionSettings {
    /// Stored `Idempotency-Key` responses: a retry after this long creates anew (24 h).
    pub idempotency_keys: Duration,
    /// Ids of processed events: a redelivery older than this would be processed again (7 d).
    pub processed_events: Duration,
    /// How often a replica prunes (10 min).
    pub prune_every: Duration,
}

/// `APP__OUTBOX__*`.
#[derive(Debug, Clone)]
pub struct OutboxSettings {
    /// Rows the relay publishes per transaction (100).
    pub batch_size: usize,
    /// How long sent rows are kept before they are pruned (24 h).
    pub retention: Duration,
    /// The outbox check warns when the oldest pending event is older than this (30 s).
    pub lag_warn_after: Duration,
    /// Bound on publishing one batch and receiving its confirms (10 s): a stalled broker
    /// makes the relay give the batch up and retry, instead of holding its row locks.
    pub publish_timeout: Duration,
}

/// `APP__SERVER__*`.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// Address both servers bind to (`0.0.0.0`: every interface of the pod).
    pub host: std::net::IpAddr,
    /// API port (8080).
    pub port: u16,
    /// Worker threads; 0 means one per core.
    pub workers: usize,
    /// Largest accepted request body in bytes (64 KiB).
    pub body_limit: usize,
}

/// `APP__MANAGEMENT__*`.
#[derive(Debug, Clone)]
pub struct ManagementSettings {
    /// Probe and metrics port (9090).
    pub port: u16,
    /// Worker threads of its own, so a saturated API never starves the probes (1).
    pub workers: usize,
}

/// `APP__DATABASE__*`.
#[derive(Debug, Clone)]
pub struct DatabaseSettings {
    /// Connection URL.
    pub url: SecretUrl,
    /// Largest number of request connections (16).
    pub pool_max_size: usize,
    /// How long a request waits for a pooled connection before it gets a 503 (2 s).
    pub pool_wait_timeout: Duration,
    /// Longest time a request's database work may take before it is abandoned with a 503 (5 s).
    pub query_timeout: Duration,
}

/// `APP__RABBITMQ__*`.
#[derive(Debug, Clone)]
pub struct RabbitMqSettings {
    /// Connection URL.
    pub url: SecretUrl,
    /// Topic exchange the events go to.
    pub exchange: String,
    /// The consumer's durable queue.
    pub queue: String,
    /// Longest pause between two reconnection attempts (10 s).
    pub reconnect_max_backoff: Duration,
    /// Bound on one connection attempt, handshake and topology included (5 s): a black-holed
    /// broker accepts TCP and never answers.
    pub connect_timeout: Duration,
}

/// `APP__STARTUP__*`.
#[derive(Debug, Clone)]
pub struct StartupSettings {
    /// Give up (exit 1) when a required phase has not finished by then (60 s).
    pub deadline: Duration,
}

/// `APP__SHUTDOWN__*`.
#[derive(Debug, Clone)]
pub struct ShutdownSettings {
    /// After SIGTERM: not ready but still serving, while endpoints are removed (5 s).
    pub drain_delay: Duration,
    /// Grace for in-flight requests and consumers after the drain delay (20 s).
    pub timeout: Duration,
}

/// `APP__HEALTH__*`.
#[derive(Debug, Clone)]
pub struct HealthSettings {
    /// The PostgreSQL check (critical by default).
    pub postgres: health::CheckPolicy,
    /// The RabbitMQ check (not critical by default: the outbox absorbs broker outages).
    pub rabbitmq: health::CheckPolicy,
    /// `/livez` fails when the runtime has not ticked for this long (10 s).
    pub liveness_stall_after: Duration,
}

/// Where the layers come from.
#[derive(Debug, Clone)]
pub struct Sources {
    /// Folder holding `default.toml` and `<APP_ENV>.toml` (`config`, or `APP_CONFIG_DIR`).
    pub dir: PathBuf,
    /// `APP_ENV`, when set.
    pub app_env: Option<String>,
}

impl Sources {
    /// Reads `APP_CONFIG_DIR` and `APP_ENV` from the process environment.
    pub fn from_env() -> Self {
        Self {
            dir: std::env::var_os("APP_CONFIG_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("config")),
            app_env: std::env::var("APP_ENV").ok().filter(|v| !v.is_empty()),
        }
    }
}

impl Settings {
    /// Loads every layer and validates every value.
    pub fn load(sources: &Sources) -> Result<Settings, ConfigError> {
        from_layers(&layered(sources)?)
    }
}

/// Every setting out of the merged layers; any key no setting reads is an error.
fn from_layers(raw: &config::Config) -> Result<Settings, ConfigError> {
    let reader = Reader {
        raw,
        read: RefCell::new(BTreeSet::new()),
    };
    let settings = reader.settings()?;
    // Last: a known key with a bad value is named before an unknown one.
    reader.refuse_unknown_keys()?;
    Ok(settings)
}

fn layered(sources: &Sources) -> Result<config::Config, ConfigError> {
    let mut builder = config::Config::builder().add_source(
        config::File::from(sources.dir.join("default.toml"))
            .format(config::FileFormat::Toml)
            .required(false),
    );
    if let Some(env) = &sources.app_env {
        let file = sources.dir.join(format!("{env}.toml"));
        if !file.is_file() {
            return Err(ConfigError::new(
                "APP_ENV",
                Some(env.clone()),
                format!("an environment with a file {}", display(&file)),
            ));
        }
        builder = builder.add_source(config::File::from(file).format(config::FileFormat::Toml));
    }
    builder
        .add_source(
            config::Environment::with_prefix("APP")
                .prefix_separator("__")
                .separator("__"),
        )
        .build()
        .map_err(|e| {
            ConfigError::new(
                "APP_ENV",
                sources.app_env.clone(),
                format!("readable configuration files ({})", redact(&e.to_string())),
            )
        })
}

/// The dotted keys of every leaf value in `table` (`health.postgres.interval`).
fn flatten(prefix: &str, table: &config::Map<String, config::Value>, out: &mut Vec<String>) {
    for (name, value) in table {
        let key = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}.{name}")
        };
        match value.clone().into_table() {
            Ok(inner) => flatten(&key, &inner, out),
            Err(_) => out.push(key),
        }
    }
}

fn display(path: &Path) -> String {
    path.display().to_string()
}

/// Reads typed values out of the merged layers, naming the key on every failure, and
/// remembers which keys it read: anything else in the layers is a misspelling.
struct Reader<'a> {
    raw: &'a config::Config,
    read: RefCell<BTreeSet<String>>,
}

impl Reader<'_> {
    /// The value of `key` as text; `None` when no layer sets it. A value that is not text
    /// (a table where a value belongs) is an error, never a silent default.
    fn text(&self, key: &str) -> Result<Option<String>, ConfigError> {
        self.read.borrow_mut().insert(key.to_owned());
        match self.raw.get_string(key) {
            Ok(value) => Ok(Some(value)),
            Err(config::ConfigError::NotFound(_)) => Ok(None),
            Err(_) => Err(ConfigError::new(
                key,
                Some("(not a single value)".into()),
                "a single value",
            )),
        }
    }

    /// Every key a layer sets that no setting reads: `APP__HEALTH__POSTGRES__INTERVALL=5s`
    /// must stop the process, not be ignored.
    fn refuse_unknown_keys(&self) -> Result<(), ConfigError> {
        let mut keys = Vec::new();
        if let Ok(table) = config::Source::collect(self.raw) {
            flatten("", &table, &mut keys);
        }
        let read = self.read.borrow();
        match keys.into_iter().find(|key| !read.contains(key)) {
            None => Ok(()),
            Some(key) => Err(ConfigError::new(
                &key,
                self.raw.get_string(&key).ok().map(|v| redact(&v)),
                "a known setting: this key is not one (misspelt? see docs/configuration.md)",
            )),
        }
    }

    fn parse<T>(
        &self,
        key: &str,
        default: T,
        expected: &str,
        parse: impl Fn(&str) -> Option<T>,
    ) -> Result<T, ConfigError> {
        match self.text(key)? {
            None => Ok(default),
            Some(raw) => {
                parse(raw.trim()).ok_or_else(|| ConfigError::new(key, Some(redact(&raw)), expected))
            }
        }
    }

    fn port(&self, key: &str, default: u16) -> Result<u16, ConfigError> {
        self.parse(key, default, "a TCP port (1-65535)", |raw| {
            raw.parse::<u16>().ok().filter(|port| *port != 0)
        })
    }

    fn count(
        &self,
        key: &str,
        default: usize,
        min: usize,
        max: usize,
    ) -> Result<usize, ConfigError> {
        self.parse(
            key,
            default,
            &format!("a whole number from {min} to {max}"),
            |raw| {
                raw.parse::<usize>()
                    .ok()
                    .filter(|n| (min..=max).contains(n))
            },
        )
    }

    fn duration(&self, key: &str, default: Duration) -> Result<Duration, ConfigError> {
        self.parse(
            key,
            default,
            "a duration such as \"5s\" or \"250ms\"",
            |raw| humantime::parse_duration(raw).ok(),
        )
    }

    fn positive_duration(&self, key: &str, default: Duration) -> Result<Duration, ConfigError> {
        let value = self.duration(key, default)?;
        if value.is_zero() {
            return Err(ConfigError::new(
                key,
                Some("0s".into()),
                "a duration above zero",
            ));
        }
        Ok(value)
    }

    fn flag(&self, key: &str, default: bool) -> Result<bool, ConfigError> {
        self.parse(key, default, "true or false", |raw| {
            match raw.to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" => Some(true),
                "false" | "0" | "no" => Some(false),
                _ => None,
            }
        })
    }

    fn url(&self, key: &str, default: &str, schemes: &[&str]) -> Result<SecretUrl, ConfigError> {
        let raw = self.text(key)?.unwrap_or_else(|| default.to_owned());
        let expected = format!(
            "a URL starting with {}",
            schemes
                .iter()
                .map(|s| format!("{s}://"))
                .collect::<Vec<_>>()
                .join(" or ")
        );
        let url: SecretUrl = raw
            .trim()
            .parse()
            .map_err(|_| ConfigError::new(key, Some(redact(&raw)), expected.clone()))?;
        if !schemes.contains(&url.url().scheme()) || url.url().host_str().is_none_or(str::is_empty)
        {
            return Err(ConfigError::new(key, Some(url.to_string()), expected));
        }
        Ok(url)
    }

    fn name(&self, key: &str, default: &str) -> Result<String, ConfigError> {
        let value = self.text(key)?.unwrap_or_else(|| default.to_owned());
        let valid = !value.is_empty()
            && value.len() <= 255
            && value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-:".contains(c));
        if valid {
            Ok(value)
        } else {
            Err(ConfigError::new(
                key,
                Some(value),
                "1-255 characters of a-z, 0-9, '.', '_', '-', ':'",
            ))
        }
    }

    fn policy(
        &self,
        check: &str,
        default: health::CheckPolicy,
    ) -> Result<health::CheckPolicy, ConfigError> {
        let key = |field: &str| format!("health.{check}.{field}");
        let policy = health::CheckPolicy {
            interval: self.positive_duration(&key("interval"), default.interval)?,
            timeout: self.positive_duration(&key("timeout"), default.timeout)?,
            failure_threshold: u32::try_from(self.count(
                &key("failure_threshold"),
                default.failure_threshold as usize,
                1,
                100,
            )?)
            .unwrap_or(1),
            success_threshold: u32::try_from(self.count(
                &key("success_threshold"),
                default.success_threshold as usize,
                1,
                100,
            )?)
            .unwrap_or(1),
            critical: self.flag(&key("critical"), default.critical)?,
        };
        if policy.timeout > policy.interval {
            return Err(ConfigError::new(
                &key("timeout"),
                Some(humantime::format_duration(policy.timeout).to_string()),
                format!(
                    "a timeout no longer than the interval ({})",
                    humantime::format_duration(policy.interval)
                ),
            ));
        }
        Ok(policy)
    }

    fn settings(&self) -> Result<Settings, ConfigError> {
        let check_defaults = health::CheckPolicy {
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            failure_threshold: 2,
            success_threshold: 1,
            critical: true,
        };
        let settings = Settings {
            service_name: self.name("service.name", "{{project-name}}")?,
            server: ServerSettings {
                host: self.parse(
                    "server.host",
                    std::net::IpAddr::from([0, 0, 0, 0]),
                    "an IP address such as 0.0.0.0 or 127.0.0.1",
                    |raw| raw.parse().ok(),
                )?,
                port: self.port("server.port", 8080)?,
                workers: self.count("server.workers", 0, 0, 512)?,
                body_limit: self.count("server.body_limit", 64 * 1024, 1, 64 * 1024 * 1024)?,
            },
            management: ManagementSettings {
                port: self.port("management.port", 9090)?,
                workers: self.count("management.workers", 1, 1, 64)?,
            },
            database: DatabaseSettings {
                url: self.url(
                    "database.url",
                    "postgres://postgres@127.0.0.1:5432/{{project-name}}",
                    &["postgres", "postgresql"],
                )?,
                pool_max_size: self.count("database.pool_max_size", 16, 1, 1024)?,
                pool_wait_timeout: self
                    .positive_duration("database.pool_wait_timeout", Duration::from_secs(2))?,
                query_timeout: self
                    .positive_duration("database.query_timeout", Duration::from_secs(5))?,
            },
            rabbitmq: RabbitMqSettings {
                url: self.url(
                    "rabbitmq.url",
                    "amqp://guest:guest@127.0.0.1:5672/%2f",
                    &["amqp", "amqps"],
                )?,
                exchange: self.name("rabbitmq.exchange", "{{project-name}}.events")?,
                queue: self.name("rabbitmq.queue", "{{project-name}}.items")?,
                reconnect_max_backoff: self
                    .positive_duration("rabbitmq.reconnect_max_backoff", Duration::from_secs(10))?,
                connect_timeout: self
                    .positive_duration("rabbitmq.connect_timeout", Duration::from_secs(5))?,
            },
            startup: StartupSettings {
                deadline: self.positive_duration("startup.deadline", Duration::from_secs(60))?,
            },
            shutdown: ShutdownSettings {
                drain_delay: self.duration("shutdown.drain_delay", Duration::from_secs(5))?,
                timeout: self.positive_duration("shutdown.timeout", Duration::from_secs(20))?,
            },
            health: HealthSettings {
                postgres: self.policy("postgres", check_defaults)?,
                rabbitmq: self.policy("rabbitmq", check_defaults.critical(false))?,
                liveness_stall_after: self
                    .positive_duration("health.liveness.stall_after", Duration::from_secs(10))?,
            },
            outbox: OutboxSettings {
                batch_size: self.count("outbox.batch_size", 100, 1, 10_000)?,
                retention: self
                    .positive_duration("outbox.retention", Duration::from_secs(24 * 3600))?,
                lag_warn_after: self
                    .positive_duration("outbox.lag_warn_after", Duration::from_secs(30))?,
                publish_timeout: self
                    .positive_duration("outbox.publish_timeout", Duration::from_secs(10))?,
            },
            retention: RetentionSettings {
                idempotency_keys: self.positive_duration(
                    "retention.idempotency_keys",
                    Duration::from_secs(24 * 3600),
                )?,
                processed_events: self.positive_duration(
                    "retention.processed_events",
                    Duration::from_secs(7 * 24 * 3600),
                )?,
                prune_every: self
                    .positive_duration("retention.prune_every", Duration::from_secs(600))?,
            },
        };
        if settings.server.port == settings.management.port {
            return Err(ConfigError::new(
                "management.port",
                Some(settings.management.port.to_string()),
                "a port different from APP__SERVER__PORT",
            ));
        }
        Ok(settings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let mut builder = config::Config::builder();
        for (key, value) in pairs {
            builder = builder.set_override(*key, *value).unwrap();
        }
        let raw = builder.build().unwrap();
        from_layers(&raw)
    }

    #[test]
    fn a_misspelt_key_is_an_error_naming_it() {
        let error = load(&[("health.postgres.intervall", "5s")]).unwrap_err();
        assert_eq!(error.variable, "APP__HEALTH__POSTGRES__INTERVALL");
        assert!(error.expected.contains("misspelt"), "{error}");
    }

    #[test]
    fn a_table_where_a_value_belongs_is_an_error_not_the_default() {
        let mut builder = config::Config::builder();
        builder = builder.set_override("server.port.number", "8080").unwrap();
        let error = from_layers(&builder.build().unwrap()).unwrap_err();
        assert_eq!(error.variable, "APP__SERVER__PORT");
    }

    #[test]
    fn the_app_env_file_overrides_default_toml() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("default.toml"),
            "[server]\nport = 7000\n[management]\nport = 7100\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("staging.toml"), "[server]\nport = 7001\n").unwrap();
        let sources = |app_env: Option<&str>| Sources {
            dir: dir.path().to_path_buf(),
            app_env: app_env.map(str::to_owned),
        };
        let base = Settings::load(&sources(None)).unwrap();
        assert_eq!((base.server.port, base.management.port), (7000, 7100));
        let staging = Settings::load(&sources(Some("staging"))).unwrap();
        assert_eq!((staging.server.port, staging.management.port), (7001, 7100));
        let missing = Settings::load(&sources(Some("nowhere"))).unwrap_err();
        assert_eq!(missing.variable, "APP_ENV");
    }

    #[test]
    fn defaults_match_the_design() {
        let s = load(&[]).unwrap();
        assert_eq!(
            (s.server.port, s.management.port, s.management.workers),
            (8080, 9090, 1)
        );
        assert_eq!(s.shutdown.drain_delay, Duration::from_secs(5));
        assert_eq!(s.shutdown.timeout, Duration::from_secs(20));
        assert_eq!(s.startup.deadline, Duration::from_secs(60));
        assert!(s.health.postgres.critical);
        assert!(!s.health.rabbitmq.critical);
        assert_eq!(s.rabbitmq.exchange, "{{project-name}}.events");
    }

    #[test]
    fn a_bad_port_names_the_variable_and_the_value() {
        let error = load(&[("server.port", "80800")]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "APP__SERVER__PORT=\"80800\" is invalid: expected a TCP port (1-65535)"
        );
    }

    #[test]
    fn a_bad_duration_is_refused() {
        let error = load(&[("shutdown.drain_delay", "soon")]).unwrap_err();
        assert_eq!(error.variable, "APP__SHUTDOWN__DRAIN_DELAY");
    }

    #[test]
    fn a_bad_url_is_refused_without_its_password() {
        let error = load(&[("database.url", "mysql://u:s3cret@db/x")]).unwrap_err();
        assert_eq!(error.variable, "APP__DATABASE__URL");
        assert!(!error.to_string().contains("s3cret"), "{error}");
    }

    #[test]
    fn check_tuning_is_read_per_check() {
        let s = load(&[
            ("health.rabbitmq.critical", "true"),
            ("health.postgres.interval", "500ms"),
            ("health.postgres.timeout", "250ms"),
        ])
        .unwrap();
        assert!(s.health.rabbitmq.critical);
        assert_eq!(s.health.postgres.interval, Duration::from_millis(500));
    }

    #[test]
    fn a_timeout_longer_than_the_interval_is_refused() {
        let error = load(&[("health.postgres.timeout", "5s")]).unwrap_err();
        assert_eq!(error.variable, "APP__HEALTH__POSTGRES__TIMEOUT");
    }
}
