//! This service's settings: one struct per `APP__SECTION__*`, each field with its default.

use super::value::{
    constant_url, count, duration, ip_address, name, optional_file, optional_flag, port,
    positive_duration,
};
use super::{ConfigError, SecretUrl, Sources, display, from_layers, layered, redact};
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

/// All settings of the service: one struct per `APP__SECTION__*`, every field with its default.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// `APP__SERVICE__*`.
    pub service: ServiceSettings,
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

/// `APP__SERVICE__*`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServiceSettings {
    /// Name reported as `serviceId` and OTel `service.name` ({{project-name}}).
    #[serde(deserialize_with = "name")]
    pub name: String,
}

impl Default for ServiceSettings {
    fn default() -> Self {
        Self {
            name: "{{project-name}}".into(),
        }
    }
}

/// `APP__RETENTION__*`: bookkeeping tables pruned in bounded batches, so none only grows.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionSettings {
    /// Stored `Idempotency-Key` responses: a retry after this long creates anew (24 h).
    #[serde(deserialize_with = "positive_duration")]
    pub idempotency_keys: Duration,
    /// Ids of processed events: a redelivery older than this would be processed again (7 d).
    #[serde(deserialize_with = "positive_duration")]
    pub processed_events: Duration,
    /// How often a replica prunes (10 min).
    #[serde(deserialize_with = "positive_duration")]
    pub prune_every: Duration,
}

impl Default for RetentionSettings {
    fn default() -> Self {
        Self {
            idempotency_keys: Duration::from_secs(24 * 3600),
            processed_events: Duration::from_secs(7 * 24 * 3600),
            prune_every: Duration::from_secs(600),
        }
    }
}

/// `APP__OUTBOX__*`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutboxSettings {
    /// Rows the relay publishes per transaction (100).
    #[serde(deserialize_with = "count::<_, 1, 10_000>")]
    pub batch_size: usize,
    /// How long sent rows are kept before they are pruned (24 h).
    #[serde(deserialize_with = "positive_duration")]
    pub retention: Duration,
    /// The outbox check warns when the oldest pending event is older than this (30 s).
    #[serde(deserialize_with = "positive_duration")]
    pub lag_warn_after: Duration,
    /// Bound on publishing one batch and receiving its confirms (10 s): a stalled broker
    /// makes the relay give the batch up and retry, instead of holding its row locks.
    #[serde(deserialize_with = "positive_duration")]
    pub publish_timeout: Duration,
}

impl Default for OutboxSettings {
    fn default() -> Self {
        Self {
            batch_size: 100,
            retention: Duration::from_secs(24 * 3600),
            lag_warn_after: Duration::from_secs(30),
            publish_timeout: Duration::from_secs(10),
        }
    }
}

/// `APP__SERVER__*`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    /// Address both servers bind to (`0.0.0.0`: every interface of the pod).
    #[serde(deserialize_with = "ip_address")]
    pub host: std::net::IpAddr,
    /// API port (8080).
    #[serde(deserialize_with = "port")]
    pub port: u16,
    /// Worker threads; 0 means one per core.
    #[serde(deserialize_with = "count::<_, 0, 512>")]
    pub workers: usize,
    /// Largest accepted request body in bytes (64 KiB).
    #[serde(deserialize_with = "count::<_, 1, 67_108_864>")]
    pub body_limit: usize,
    /// Longest time a client may take to send a request body (10 s): a stalled upload holds
    /// a connection and a file descriptor, and enough of them would starve the probes.
    #[serde(deserialize_with = "positive_duration")]
    pub body_timeout: Duration,
    /// Open API connections, all workers together; 0 sizes it from the file limit, leaving
    /// room for the management port, the pools and the broker (0).
    #[serde(deserialize_with = "count::<_, 0, 1_000_000>")]
    pub max_connections: usize,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            host: std::net::IpAddr::from([0, 0, 0, 0]),
            port: 8080,
            workers: 0,
            body_limit: 64 * 1024,
            body_timeout: Duration::from_secs(10),
            max_connections: 0,
        }
    }
}

/// `APP__MANAGEMENT__*`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ManagementSettings {
    /// Probe and metrics port (9090).
    #[serde(deserialize_with = "port")]
    pub port: u16,
    /// Worker threads of its own, so a saturated API never starves the probes (1).
    #[serde(deserialize_with = "count::<_, 1, 64>")]
    pub workers: usize,
}

impl Default for ManagementSettings {
    fn default() -> Self {
        Self {
            port: 9090,
            workers: 1,
        }
    }
}

/// libpq's `sslmode`, read from the `sslmode` parameter of `APP__DATABASE__URL`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslMode {
    /// Plain TCP.
    Disable,
    /// TLS when the server offers it, plain otherwise; the certificate is not checked.
    #[default]
    Prefer,
    /// TLS or no connection; the certificate is not checked (unless a CA file is given).
    Require,
    /// TLS; the certificate chains to a trusted authority.
    VerifyCa,
    /// TLS; the chain and the host name are checked.
    VerifyFull,
}

impl std::str::FromStr for SslMode {
    type Err = ();
    fn from_str(raw: &str) -> Result<Self, ()> {
        Ok(match raw {
            "disable" => Self::Disable,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            _ => return Err(()),
        })
    }
}

/// `APP__DATABASE__*`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseSettings {
    /// Connection URL, without its `sslmode` parameter (that is [`Self::ssl_mode`]).
    pub url: SecretUrl,
    /// The URL's `sslmode` (prefer).
    #[serde(skip)]
    pub ssl_mode: SslMode,
    /// PEM bundle of the authorities that sign the server's certificate (unset: the system's).
    #[serde(deserialize_with = "optional_file")]
    pub ca_file: Option<PathBuf>,
    /// Largest number of request connections (16).
    #[serde(deserialize_with = "count::<_, 1, 1024>")]
    pub pool_max_size: usize,
    /// How long a request waits for a pooled connection before it gets a 503 (2 s).
    #[serde(deserialize_with = "positive_duration")]
    pub pool_wait_timeout: Duration,
    /// Longest time a request's database work may take before it is abandoned with a 503 (5 s).
    #[serde(deserialize_with = "positive_duration")]
    pub query_timeout: Duration,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: constant_url("postgres://postgres@127.0.0.1:5432/{{project-name}}"),
            ssl_mode: SslMode::Prefer,
            ca_file: None,
            pool_max_size: 16,
            pool_wait_timeout: Duration::from_secs(2),
            query_timeout: Duration::from_secs(5),
        }
    }
}

impl DatabaseSettings {
    /// The defaults with `url` (its `sslmode` taken out), as the loader does.
    ///
    /// ```
    /// use bootstrap::config::{DatabaseSettings, SslMode};
    /// let settings = DatabaseSettings::from_url("postgres://app@db/app?sslmode=require")?;
    /// assert_eq!(settings.ssl_mode, SslMode::Require);
    /// assert_eq!(settings.url.expose(), "postgres://app@db/app");
    /// # Ok::<(), bootstrap::ConfigError>(())
    /// ```
    pub fn from_url(url: &str) -> Result<Self, ConfigError> {
        let mut settings = Self {
            url: url.parse().map_err(|_| {
                ConfigError::new("database.url", Some(redact(url)), "a postgres:// URL")
            })?,
            ..Self::default()
        };
        settings.take_ssl_mode()?;
        Ok(settings)
    }

    /// Moves `sslmode` out of the URL: tokio-postgres knows only disable/prefer/require.
    fn take_ssl_mode(&mut self) -> Result<(), ConfigError> {
        let url = self.url.url();
        let mut mode = None;
        let kept: Vec<(String, String)> = url
            .query_pairs()
            .filter_map(|(key, value)| {
                if key == "sslmode" {
                    mode = Some(value.into_owned());
                    None
                } else {
                    Some((key.into_owned(), value.into_owned()))
                }
            })
            .collect();
        let Some(mode) = mode else {
            return Ok(());
        };
        self.ssl_mode = mode.parse().map_err(|()| {
            ConfigError::new(
                "database.url",
                Some(format!("sslmode={mode}")),
                "sslmode disable, prefer, require, verify-ca or verify-full",
            )
        })?;
        let mut stripped = url.clone();
        stripped.set_query(None);
        if !kept.is_empty() {
            stripped.query_pairs_mut().extend_pairs(kept);
        }
        self.url = SecretUrl::from(stripped);
        Ok(())
    }
}

/// `APP__RABBITMQ__*`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RabbitMqSettings {
    /// Connection URL; `amqps://` for TLS.
    pub url: SecretUrl,
    /// PEM bundle added to the system roots to verify the broker (`amqps://` only).
    #[serde(deserialize_with = "optional_file")]
    pub ca_file: Option<PathBuf>,
    /// Topic exchange the events go to.
    #[serde(deserialize_with = "name")]
    pub exchange: String,
    /// The consumer's durable queue.
    #[serde(deserialize_with = "name")]
    pub queue: String,
    /// Longest pause between two reconnection attempts (10 s).
    #[serde(deserialize_with = "positive_duration")]
    pub reconnect_max_backoff: Duration,
    /// Bound on one connection attempt, handshake and topology included (5 s): a black-holed
    /// broker accepts TCP and never answers.
    #[serde(deserialize_with = "positive_duration")]
    pub connect_timeout: Duration,
}

impl Default for RabbitMqSettings {
    fn default() -> Self {
        Self {
            url: constant_url("amqp://guest:guest@127.0.0.1:5672/%2f"),
            ca_file: None,
            exchange: "{{project-name}}.events".into(),
            queue: "{{project-name}}.items".into(),
            reconnect_max_backoff: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// `APP__STARTUP__*`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StartupSettings {
    /// Give up (exit 1) when a required phase has not finished by then (60 s).
    #[serde(deserialize_with = "positive_duration")]
    pub deadline: Duration,
}

impl Default for StartupSettings {
    fn default() -> Self {
        Self {
            deadline: Duration::from_secs(60),
        }
    }
}

/// `APP__SHUTDOWN__*`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownSettings {
    /// After SIGTERM: not ready but still serving, while endpoints are removed (5 s).
    #[serde(deserialize_with = "duration")]
    pub drain_delay: Duration,
    /// Grace for in-flight requests and consumers after the drain delay (20 s).
    #[serde(deserialize_with = "positive_duration")]
    pub timeout: Duration,
}

impl Default for ShutdownSettings {
    fn default() -> Self {
        Self {
            drain_delay: Duration::from_secs(5),
            timeout: Duration::from_secs(20),
        }
    }
}

/// `APP__HEALTH__*`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthSettings {
    /// The PostgreSQL check.
    pub postgres: CheckTuning,
    /// The RabbitMQ check.
    pub rabbitmq: CheckTuning,
    /// `APP__HEALTH__LIVENESS__*`.
    pub liveness: LivenessSettings,
}

/// `APP__HEALTH__LIVENESS__*`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LivenessSettings {
    /// `/livez` fails when the runtime has not ticked for this long (10 s).
    #[serde(deserialize_with = "positive_duration")]
    pub stall_after: Duration,
}

impl Default for LivenessSettings {
    fn default() -> Self {
        Self {
            stall_after: Duration::from_secs(10),
        }
    }
}

/// `APP__HEALTH__<CHECK>__*`: a check's schedule and thresholds. Whether it is critical by
/// default is the service's choice ([`CheckTuning::policy`]); the setting overrides it.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CheckTuning {
    /// Time between two runs (2 s).
    #[serde(deserialize_with = "positive_duration")]
    pub interval: Duration,
    /// Bound on one run; at most the interval (1 s).
    #[serde(deserialize_with = "positive_duration")]
    pub timeout: Duration,
    /// Failed runs in a row before the check reports failure (2).
    #[serde(deserialize_with = "count::<_, 1, 100>")]
    pub failure_threshold: usize,
    /// Passed runs in a row before a failed check passes again (1).
    #[serde(deserialize_with = "count::<_, 1, 100>")]
    pub success_threshold: usize,
    /// Overrides whether a failure makes the pod unready.
    #[serde(deserialize_with = "optional_flag")]
    pub critical: Option<bool>,
}

impl Default for CheckTuning {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            failure_threshold: 2,
            success_threshold: 1,
            critical: None,
        }
    }
}

impl CheckTuning {
    /// The policy, critical as configured or else `critical_by_default`.
    ///
    /// ```
    /// let tuning = bootstrap::config::CheckTuning::default();
    /// assert!(!tuning.policy(false).critical);
    /// assert_eq!(tuning.policy(true).failure_threshold, 2);
    /// ```
    pub fn policy(&self, critical_by_default: bool) -> health::CheckPolicy {
        health::CheckPolicy {
            interval: self.interval,
            timeout: self.timeout,
            // Bounded to 1-100 when read.
            failure_threshold: u32::try_from(self.failure_threshold).unwrap_or(u32::MAX),
            success_threshold: u32::try_from(self.success_threshold).unwrap_or(u32::MAX),
            critical: self.critical.unwrap_or(critical_by_default),
        }
    }
}

impl Settings {
    /// Loads every layer and validates every value.
    pub fn load(sources: &Sources) -> Result<Settings, ConfigError> {
        Self::from_layers(&layered(sources)?)
    }

    fn from_layers(raw: &config::Config) -> Result<Settings, ConfigError> {
        let mut settings: Settings = from_layers(raw)?;
        settings.validate()?;
        Ok(settings)
    }

    /// What one value cannot say on its own: relations between settings and files on disk.
    fn validate(&mut self) -> Result<(), ConfigError> {
        if self.server.port == self.management.port {
            return Err(ConfigError::new(
                "management.port",
                Some(self.management.port.to_string()),
                "a port different from APP__SERVER__PORT",
            ));
        }
        for (check, tuning) in [
            ("postgres", &self.health.postgres),
            ("rabbitmq", &self.health.rabbitmq),
        ] {
            if tuning.timeout > tuning.interval {
                return Err(ConfigError::new(
                    &format!("health.{check}.timeout"),
                    Some(humantime::format_duration(tuning.timeout).to_string()),
                    format!(
                        "a timeout no longer than the interval ({})",
                        humantime::format_duration(tuning.interval)
                    ),
                ));
            }
        }
        scheme(
            "database.url",
            &self.database.url,
            &["postgres", "postgresql"],
        )?;
        scheme("rabbitmq.url", &self.rabbitmq.url, &["amqp", "amqps"])?;
        self.database.take_ssl_mode()?;
        if self.database.ssl_mode == SslMode::Disable && self.database.ca_file.is_some() {
            return Err(ConfigError::new(
                "database.ca_file",
                None,
                "no CA file with sslmode=disable (TLS is off)",
            ));
        }
        if self.rabbitmq.url.url().scheme() == "amqp" && self.rabbitmq.ca_file.is_some() {
            return Err(ConfigError::new(
                "rabbitmq.ca_file",
                None,
                "no CA file with an amqp:// URL (use amqps:// for TLS)",
            ));
        }
        for (key, file) in [
            ("database.ca_file", &self.database.ca_file),
            ("rabbitmq.ca_file", &self.rabbitmq.ca_file),
        ] {
            if let Some(path) = file {
                crate::tls::read_ca_file(path).map_err(|e| {
                    ConfigError::new(key, Some(display(path)), format!("a PEM CA bundle ({e:#})"))
                })?;
            }
        }
        Ok(())
    }
}

fn scheme(key: &str, url: &SecretUrl, schemes: &[&str]) -> Result<(), ConfigError> {
    if schemes.contains(&url.url().scheme()) {
        return Ok(());
    }
    let expected = schemes
        .iter()
        .map(|s| format!("{s}://"))
        .collect::<Vec<_>>()
        .join(" or ");
    Err(ConfigError::new(
        key,
        Some(url.to_string()),
        format!("a URL starting with {expected}"),
    ))
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
        Settings::from_layers(&raw)
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
        let error = Settings::from_layers(&builder.build().unwrap()).unwrap_err();
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
        assert_eq!(s.health.postgres.failure_threshold, 2);
        assert_eq!(s.health.rabbitmq.critical, None);
        assert_eq!(s.database.ssl_mode, SslMode::Prefer);
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
        assert!(s.health.rabbitmq.policy(false).critical);
        assert_eq!(s.health.postgres.interval, Duration::from_millis(500));
    }

    #[test]
    fn a_timeout_longer_than_the_interval_is_refused() {
        let error = load(&[("health.postgres.timeout", "5s")]).unwrap_err();
        assert_eq!(error.variable, "APP__HEALTH__POSTGRES__TIMEOUT");
    }

    #[test]
    fn sslmode_leaves_the_url_and_a_bad_one_is_refused() {
        let s = load(&[(
            "database.url",
            "postgres://u:pw@db/app?sslmode=verify-ca&connect_timeout=3",
        )])
        .unwrap();
        assert_eq!(s.database.ssl_mode, SslMode::VerifyCa);
        assert_eq!(
            s.database.url.expose(),
            "postgres://u:pw@db/app?connect_timeout=3"
        );
        let error = load(&[("database.url", "postgres://u:pw@db/app?sslmode=verify")]).unwrap_err();
        assert_eq!(error.variable, "APP__DATABASE__URL");
        assert!(error.expected.contains("verify-full"), "{error}");
    }

    #[test]
    fn a_ca_file_must_be_a_pem_bundle_and_needs_tls() {
        let missing = load(&[("database.ca_file", "/nonexistent/ca.pem")]).unwrap_err();
        assert_eq!(missing.variable, "APP__DATABASE__CA_FILE");
        let dir = tempfile::tempdir().unwrap();
        let not_pem = dir.path().join("ca.pem");
        std::fs::write(&not_pem, "hello").unwrap();
        let error = load(&[
            ("rabbitmq.url", "amqps://mq/%2f"),
            ("rabbitmq.ca_file", not_pem.to_str().unwrap()),
        ])
        .unwrap_err();
        assert_eq!(error.variable, "APP__RABBITMQ__CA_FILE");
        let plain = load(&[("rabbitmq.ca_file", not_pem.to_str().unwrap())]).unwrap_err();
        assert!(plain.expected.contains("amqps://"), "{plain}");
        let disabled = load(&[
            ("database.url", "postgres://db/app?sslmode=disable"),
            ("database.ca_file", not_pem.to_str().unwrap()),
        ])
        .unwrap_err();
        assert!(disabled.expected.contains("sslmode=disable"), "{disabled}");
        // Empty means unset: a chart can always render the variable.
        assert_eq!(
            load(&[("database.ca_file", "")]).unwrap().database.ca_file,
            None
        );
    }

    #[test]
    fn a_wrong_type_is_an_error_never_the_default() {
        for (key, value, variable) in [
            ("outbox.batch_size", "lots", "APP__OUTBOX__BATCH_SIZE"),
            (
                "health.rabbitmq.critical",
                "maybe",
                "APP__HEALTH__RABBITMQ__CRITICAL",
            ),
            ("server.body_timeout", "0s", "APP__SERVER__BODY_TIMEOUT"),
            ("server.host", "localhost", "APP__SERVER__HOST"),
        ] {
            let error = load(&[(key, value)]).unwrap_err();
            assert_eq!(error.variable, variable, "{error}");
            assert_eq!(error.value.as_deref(), Some(value), "{error}");
            assert!(!error.expected.contains("for key"), "{error}");
        }
    }

    #[test]
    fn passwords_are_masked_inside_any_error_text() {
        let error = load(&[("rabbitmq.url", "http://u:s3cret@mq/x")]).unwrap_err();
        assert!(!error.to_string().contains("s3cret"), "{error}");
        let embedded =
            redact("connect failed: postgres://app:hunter2@db:5432/app (password=hunter2)");
        assert!(!embedded.contains("hunter2"), "{embedded}");
    }
}
