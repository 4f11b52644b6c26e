//! Settings sections most services share: the two servers, PostgreSQL, startup, migrations,
//! shutdown and check tuning, composed into a service's settings type (see the example's
//! `crates/api/src/settings.rs`) and loaded with [`super::load`].

use super::value::{
    boolean, constant_url, count, duration, ip_address, networks, optional_file, optional_flag,
    port, positive_duration,
};
use super::{ConfigError, SecretUrl, redact};
use health::{CheckPolicy, PolicyError};
use serde::Deserialize;
use serde::de::IntoDeserializer;
use smart_default::SmartDefault;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `APP__SERVER__*`.
#[derive(Debug, Clone, Deserialize, SmartDefault)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    /// Address both servers bind to (`0.0.0.0`: every interface of the pod).
    #[serde(deserialize_with = "ip_address")]
    #[default(std::net::IpAddr::from([0, 0, 0, 0]))]
    pub host: std::net::IpAddr,
    /// API port (8080).
    #[serde(deserialize_with = "port")]
    #[default(8080)]
    pub port: u16,
    /// Worker threads; 0 means one per core.
    #[serde(deserialize_with = "count::<_, 0, 512>")]
    pub workers: usize,
    /// Largest accepted request body in bytes (64 KiB).
    #[serde(deserialize_with = "count::<_, 1, 67_108_864>")]
    #[default(64 * 1024)]
    pub body_limit: usize,
    /// Longest time a client may take to send a request body (10 s): a stalled upload holds
    /// a connection and a file descriptor, and enough of them would starve the probes.
    #[serde(deserialize_with = "positive_duration")]
    #[default(Duration::from_secs(10))]
    pub body_timeout: Duration,
    /// Longest time sent data may wait for a client that stopped reading or acknowledging
    /// (30 s); past it the connection is cut, so a slow reader cannot hold a response's memory.
    #[serde(deserialize_with = "positive_duration")]
    #[default(Duration::from_secs(30))]
    pub write_timeout: Duration,
    /// Open API connections, all workers together; 0 sizes it from the file limit, leaving
    /// room for the management port, the pools and other dependencies (0).
    #[serde(deserialize_with = "count::<_, 0, 1_000_000>")]
    pub max_connections: usize,
    /// API requests worked on at once, all workers together; past it a request is refused at
    /// once with 503 and `Retry-After` instead of queueing; 0 derives it from the request pool.
    #[serde(deserialize_with = "count::<_, 0, 1_000_000>")]
    pub max_in_flight: usize,
    /// Proxies whose `X-Forwarded-For` names the client, comma-separated networks or addresses
    /// (the ingress controller's pods); none by default: the peer is the client.
    #[serde(deserialize_with = "networks")]
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

/// `APP__MANAGEMENT__*`.
#[derive(Debug, Clone, Deserialize, SmartDefault)]
#[serde(default, deny_unknown_fields)]
pub struct ManagementSettings {
    /// Probe and metrics port (9090).
    #[serde(deserialize_with = "port")]
    #[default(9090)]
    pub port: u16,
    /// Worker threads of its own, so a saturated API never starves the probes (1).
    #[serde(deserialize_with = "count::<_, 1, 64>")]
    #[default(1)]
    pub workers: usize,
}

/// libpq's `sslmode`, read from the `sslmode` parameter of `APP__DATABASE__URL`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
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

/// `APP__DATABASE__*`.
#[derive(Debug, Clone, Deserialize, SmartDefault)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseSettings {
    /// Connection URL, without its `sslmode` parameter (that is [`Self::ssl_mode`]).
    #[default(constant_url("postgres://postgres@127.0.0.1:5432/shipshape"))]
    pub url: SecretUrl,
    /// The URL's `sslmode` (prefer).
    #[serde(skip)]
    pub ssl_mode: SslMode,
    /// PEM bundle of the authorities that sign the server's certificate (unset: the system's).
    #[serde(deserialize_with = "optional_file")]
    pub ca_file: Option<PathBuf>,
    /// Every PostgreSQL connection one replica holds: its requests, its background work and
    /// the health check's (16). Three replicas, a surge pod, a draining pod, a migration and
    /// an operator's psql then fit a stock server (100, 3 reserved): 5 x 16 + 2 = 82.
    #[serde(deserialize_with = "count::<_, 3, 1024>")]
    #[default(16)]
    pub max_connections: usize,
    /// The request pool's share of `max_connections` (0: what the rest leaves).
    #[serde(deserialize_with = "count::<_, 0, 1024>")]
    pub request_connections: usize,
    /// The background pool's share of `max_connections` (0: the service's default).
    #[serde(deserialize_with = "count::<_, 0, 1024>")]
    pub background_connections: usize,
    /// How long a request waits for a pooled connection before it gets a 503 (2 s).
    #[serde(deserialize_with = "positive_duration")]
    #[default(Duration::from_secs(2))]
    pub pool_wait_timeout: Duration,
    /// Longest time a request's database work may take before it is abandoned with a 503 (5 s).
    #[serde(deserialize_with = "positive_duration")]
    #[default(Duration::from_secs(5))]
    pub query_timeout: Duration,
}

/// A replica's PostgreSQL connections by use: the request pool, the background pool, and the
/// health check's own ([`ConnectionBudget::CHECK`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionBudget {
    /// The request pool's size.
    pub requests: usize,
    /// The background pool's size.
    pub background: usize,
}

impl ConnectionBudget {
    /// The health check's connection: its own, so a busy pool never fails readiness.
    pub const CHECK: usize = 1;

    /// Every connection the replica may hold.
    pub fn total(&self) -> usize {
        self.requests + self.background + Self::CHECK
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
        settings.validate()?;
        Ok(settings)
    }

    /// How [`Self::max_connections`] is split, `background` being the service's default for
    /// its background work; parts set by hand must fit the total with the check's connection.
    ///
    /// ```
    /// use bootstrap::config::{ConnectionBudget, DatabaseSettings};
    /// let settings = DatabaseSettings::from_url("postgres://app@db/app")?;
    /// let budget = settings.connection_budget(3)?;
    /// assert_eq!(budget, ConnectionBudget { requests: 12, background: 3 });
    /// assert_eq!(budget.total(), settings.max_connections);
    /// # Ok::<(), bootstrap::ConfigError>(())
    /// ```
    pub fn connection_budget(&self, background: usize) -> Result<ConnectionBudget, ConfigError> {
        let background = match self.background_connections {
            0 => background.max(1),
            set => set,
        };
        let requests = match self.request_connections {
            0 => self
                .max_connections
                .saturating_sub(background + ConnectionBudget::CHECK),
            set => set,
        };
        let budget = ConnectionBudget {
            requests,
            background,
        };
        if requests == 0 || budget.total() > self.max_connections {
            return Err(ConfigError::new(
                "database.max_connections",
                Some(self.max_connections.to_string()),
                format!(
                    "at least APP__DATABASE__REQUEST_CONNECTIONS ({}) + \
                     APP__DATABASE__BACKGROUND_CONNECTIONS ({background}) + 1 (the health check)",
                    requests.max(1)
                ),
            ));
        }
        Ok(budget)
    }

    /// Checks what one value cannot say alone, after loading: the URL's scheme and `sslmode` (moved
    /// out of the URL), and the CA file (a readable PEM bundle, not with TLS off).
    pub fn validate(&mut self) -> Result<(), ConfigError> {
        require_scheme("database.url", &self.url, &["postgres", "postgresql"])?;
        self.take_ssl_mode()?;
        if let Some(path) = &self.ca_file {
            let off = (self.ssl_mode == SslMode::Disable).then_some("sslmode=disable (TLS is off)");
            check_ca_file("database.ca_file", path, off)?;
        }
        Ok(())
    }

    /// Moves `sslmode` out of the URL: tokio-postgres knows only disable/prefer/require. The other
    /// parameters keep their encoding byte for byte.
    pub(crate) fn take_ssl_mode(&mut self) -> Result<(), ConfigError> {
        // No query splits into one empty segment, which holds no sslmode.
        let query = self.url.url().query().unwrap_or_default();
        let (modes, kept): (Vec<&str>, Vec<&str>) = query
            .split('&')
            .partition(|segment| segment.starts_with("sslmode="));
        let Some(mode) = modes.last().and_then(|mode| mode.strip_prefix("sslmode=")) else {
            return Ok(());
        };
        let parsed = SslMode::deserialize(mode.into_deserializer());
        self.ssl_mode = parsed.map_err(|_: serde::de::value::Error| {
            ConfigError::new(
                "database.url",
                Some(format!("sslmode={mode}")),
                "sslmode disable, prefer, require, verify-ca or verify-full",
            )
        })?;
        let kept = Some(kept.join("&")).filter(|kept| !kept.is_empty());
        self.url.0.set_query(kept.as_deref());
        Ok(())
    }
}

/// `APP__STARTUP__*`.
#[derive(Debug, Clone, Deserialize, SmartDefault)]
#[serde(default, deny_unknown_fields)]
pub struct StartupSettings {
    /// Give up (exit 1) when a required phase has not finished by then (60 s).
    #[serde(deserialize_with = "positive_duration")]
    #[default(Duration::from_secs(60))]
    pub deadline: Duration,
}

/// `APP__MIGRATIONS__*`: how the schema reaches what the release needs (docs/migrations.md).
#[derive(Debug, Clone, Deserialize, SmartDefault)]
#[serde(default, deny_unknown_fields)]
pub struct MigrationSettings {
    /// Apply pending migrations during startup, under the advisory lock (true). False when the
    /// chart's migration Job runs `<binary> migrate`: startup then waits for the schema.
    #[serde(deserialize_with = "boolean")]
    #[default(true)]
    pub at_startup: bool,
    /// How long a migration statement waits for a table lock before it gives up and is retried
    /// (2 s): queries queue behind a waiting `ALTER TABLE`, so this is the longest a migration can
    /// stall them; keep it under the query timeout.
    #[serde(deserialize_with = "positive_duration")]
    #[default(Duration::from_secs(2))]
    pub lock_timeout: Duration,
    /// Bound on one statement of a migration (1 min): a rewrite of a large table holds its
    /// lock the whole time, which is an outage, not a migration.
    #[serde(deserialize_with = "positive_duration")]
    #[default(Duration::from_secs(60))]
    pub statement_timeout: Duration,
    /// Bound on `<binary> migrate` as a whole (5 min), lock waits and retries included.
    #[serde(deserialize_with = "positive_duration")]
    #[default(Duration::from_secs(300))]
    pub deadline: Duration,
}

/// `APP__SHUTDOWN__*`.
#[derive(Debug, Clone, Deserialize, SmartDefault)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownSettings {
    /// After SIGTERM: not ready but still serving, while endpoints are removed (5 s).
    #[serde(deserialize_with = "duration")]
    #[default(Duration::from_secs(5))]
    pub drain_delay: Duration,
    /// Grace for in-flight requests and background work after the drain delay (20 s).
    #[serde(deserialize_with = "positive_duration")]
    #[default(Duration::from_secs(20))]
    pub timeout: Duration,
}

/// `APP__HEALTH__LIVENESS__*`.
#[derive(Debug, Clone, Deserialize, SmartDefault)]
#[serde(default, deny_unknown_fields)]
pub struct LivenessSettings {
    /// `/livez` fails when the runtime has not ticked for this long (10 s).
    #[serde(deserialize_with = "positive_duration")]
    #[default(Duration::from_secs(10))]
    pub stall_after: Duration,
}

/// `APP__HEALTH__<CHECK>__*`: a check's schedule and thresholds. Whether it is critical by
/// default is the service's choice ([`CheckTuning::policy`]); the setting overrides it.
#[derive(Debug, Clone, Deserialize, SmartDefault)]
#[serde(default, deny_unknown_fields)]
pub struct CheckTuning {
    /// Time between two runs (2 s).
    #[serde(deserialize_with = "positive_duration")]
    #[default(Duration::from_secs(2))]
    pub interval: Duration,
    /// Bound on one run; at most the interval (1 s).
    #[serde(deserialize_with = "positive_duration")]
    #[default(Duration::from_secs(1))]
    pub timeout: Duration,
    /// Failed runs in a row before the check reports failure (2).
    #[serde(deserialize_with = "count::<_, 1, 100>")]
    #[default(2)]
    pub failure_threshold: usize,
    /// Passed runs in a row before a failed check passes again (1).
    #[serde(deserialize_with = "count::<_, 1, 100>")]
    #[default(1)]
    pub success_threshold: usize,
    /// Overrides whether a failure makes the pod unready.
    #[serde(deserialize_with = "optional_flag")]
    pub critical: Option<bool>,
}

impl CheckTuning {
    /// The policy, critical as configured or else `critical_by_default`.
    ///
    /// ```
    /// let tuning = bootstrap::config::CheckTuning::default();
    /// assert!(!tuning.policy(false)?.is_critical());
    /// assert_eq!(tuning.policy(true)?.failure_threshold(), 2);
    /// # Ok::<(), health::PolicyError>(())
    /// ```
    pub fn policy(&self, critical_by_default: bool) -> Result<CheckPolicy, PolicyError> {
        CheckPolicy::builder()
            .interval(self.interval)
            .timeout(self.timeout)
            // Bounded to 1-100 when read.
            .failure_threshold(u32::try_from(self.failure_threshold).unwrap_or(u32::MAX))
            .success_threshold(u32::try_from(self.success_threshold).unwrap_or(u32::MAX))
            .critical(self.critical.unwrap_or(critical_by_default))
            .build()
    }

    /// Refuses a tuning no policy can be built from, naming `APP__HEALTH__<CHECK>__TIMEOUT`.
    pub fn validate(&self, check: &str) -> Result<(), ConfigError> {
        self.policy(true).map(|_| ()).map_err(|error| {
            ConfigError::new(
                &format!("health.{check}.timeout"),
                Some(humantime::format_duration(self.timeout).to_string()),
                format!("a valid check policy ({error})"),
            )
        })
    }
}

/// Refuses `url` unless its scheme is one of `schemes`, naming the variable of `key`.
pub fn require_scheme(key: &str, url: &SecretUrl, schemes: &[&str]) -> Result<(), ConfigError> {
    if schemes.contains(&url.url().scheme()) {
        return Ok(());
    }
    // ["postgres", "postgresql"]: "postgres:// or postgresql://".
    let expected = format!("a URL starting with {}://", schemes.join(":// or "));
    Err(ConfigError::new(key, Some(url.to_string()), expected))
}

/// Refuses a CA file that is not a readable PEM bundle, or that comes while TLS is off (`tls_off`
/// says by what), naming the variable of `key`.
pub fn check_ca_file(key: &str, path: &Path, tls_off: Option<&str>) -> Result<(), ConfigError> {
    let refused =
        |expected: String| ConfigError::new(key, Some(path.display().to_string()), expected);
    if let Some(off) = tls_off {
        return Err(refused(format!("no CA file with {off}")));
    }
    crate::tls::read_ca_file(path)
        .map(|_| ())
        .map_err(|e| refused(format!("a PEM CA bundle ({e:#})")))
}
