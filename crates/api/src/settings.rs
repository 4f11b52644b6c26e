//! The settings of this service: the shared sections from `bootstrap`, and its own (retention,
//! which checks exist, the sections its parts bring). Loaded and validated by
//! `bootstrap::config::load` before anything starts; see docs/configuration.md.

use crate::messaging::settings::{OutboxSettings, RabbitMqSettings}; // @rabbitmq
use bootstrap::config::value::{name, positive_duration};
use bootstrap::config::{
    CheckTuning, ConfigError, ConnectionBudget, DatabaseSettings, LivenessSettings,
    ManagementSettings, MigrationSettings, ServerSettings, ShutdownSettings, Sources,
    StartupSettings,
};
use serde::Deserialize;
use smart_default::SmartDefault;
use std::time::Duration;

// @rabbitmq-begin
/// The background pool's default size: housekeeping, the relay's publishing loops and its lag
/// check, and the consumers take turns on these, each for a statement or a transaction.
const BACKGROUND_CONNECTIONS: usize = 3;
// @rabbitmq-else
// /// The background pool's default size: housekeeping.
// const BACKGROUND_CONNECTIONS: usize = 1;
// @rabbitmq-end

/// All settings of the service: one struct per `APP__SECTION__*`, every field with its default.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub service: ServiceSettings,
    pub server: ServerSettings,
    pub management: ManagementSettings,
    pub database: DatabaseSettings,
    pub migrations: MigrationSettings,
    pub rabbitmq: RabbitMqSettings, // @rabbitmq
    pub startup: StartupSettings,
    pub shutdown: ShutdownSettings,
    pub health: HealthSettings,
    pub outbox: OutboxSettings, // @rabbitmq
    pub retention: RetentionSettings,
}

/// `APP__SERVICE__*`.
#[derive(Debug, Clone, Deserialize, SmartDefault)]
#[serde(default, deny_unknown_fields)]
pub struct ServiceSettings {
    /// Name reported as `serviceId` and OTel `service.name` (shipshape).
    #[serde(deserialize_with = "name")]
    #[default("shipshape".into())]
    pub name: String,
}

/// `APP__RETENTION__*`: bookkeeping tables pruned in bounded batches, so none only grows.
#[derive(Debug, Clone, Deserialize, SmartDefault)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionSettings {
    /// Stored `Idempotency-Key` responses: a retry after this long creates anew (24 h).
    #[serde(deserialize_with = "positive_duration")]
    #[default(Duration::from_secs(24 * 3600))]
    pub idempotency_keys: Duration,
    // @rabbitmq-begin
    /// Ids of processed events: a redelivery older than this would be processed again (7 d).
    #[serde(deserialize_with = "positive_duration")]
    #[default(Duration::from_secs(7 * 24 * 3600))]
    pub processed_events: Duration,
    // @rabbitmq-end
    /// How often a replica prunes (10 min).
    #[serde(deserialize_with = "positive_duration")]
    #[default(Duration::from_secs(600))]
    pub prune_every: Duration,
}

/// `APP__HEALTH__*`: which checks this service has, and the liveness bound.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthSettings {
    pub postgres: CheckTuning,
    pub rabbitmq: CheckTuning, // @rabbitmq
    pub liveness: LivenessSettings,
}

impl Settings {
    /// How the replica's `APP__DATABASE__MAX_CONNECTIONS` is split (validated at load).
    pub fn connection_budget(&self) -> Result<ConnectionBudget, ConfigError> {
        self.database.connection_budget(BACKGROUND_CONNECTIONS)
    }

    /// Loads every layer and validates every value, then what one value cannot say on its own:
    /// relations between settings and files on disk.
    pub fn load(sources: &Sources) -> Result<Settings, ConfigError> {
        let mut settings: Settings = bootstrap::config::load(sources)?;
        if settings.server.port == settings.management.port {
            return Err(ConfigError::new(
                "management.port",
                Some(settings.management.port.to_string()),
                "a port different from APP__SERVER__PORT",
            ));
        }
        settings.health.postgres.validate("postgres")?;
        settings.health.rabbitmq.validate("rabbitmq")?; // @rabbitmq
        settings.database.validate()?;
        settings.connection_budget()?;
        settings.rabbitmq.validate()?; // @rabbitmq
        Ok(settings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bootstrap::config::{SslMode, redact};

    use std::time::Duration;

    /// Settings from one `default.toml` holding `pairs` (dotted keys, text values: as the
    /// environment gives them).
    fn load(pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let mut tables = std::collections::BTreeMap::<&str, String>::new();
        for (key, value) in pairs {
            let (table, field) = key.rsplit_once('.').unwrap();
            tables
                .entry(table)
                .or_default()
                .push_str(&format!("{field} = {value:?}\n"));
        }
        let toml: String = tables
            .iter()
            .map(|(table, fields)| format!("[{table}]\n{fields}"))
            .collect();
        std::fs::write(dir.path().join("default.toml"), toml).unwrap();
        Settings::load(&Sources {
            dir: dir.path().to_path_buf(),
            app_env: None,
        })
    }

    #[test]
    fn a_misspelt_key_is_an_error_naming_it() {
        let error = load(&[("health.postgres.intervall", "5s")]).unwrap_err();
        assert_eq!(error.variable, "APP__HEALTH__POSTGRES__INTERVALL");
        assert!(error.expected.contains("misspelt"), "{error}");
    }

    #[test]
    fn a_table_where_a_value_belongs_is_an_error_not_the_default() {
        let error = load(&[("server.port.number", "8080")]).unwrap_err();
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
        assert_eq!(s.health.rabbitmq.critical, None); // @rabbitmq
        assert_eq!(s.database.ssl_mode, SslMode::Prefer);
        assert_eq!(s.rabbitmq.exchange, "shipshape.events"); // @rabbitmq
    }

    #[test]
    fn one_number_bounds_the_replicas_connections() {
        let s = load(&[]).unwrap();
        let budget = s.connection_budget().unwrap();
        assert_eq!(budget.total(), 16);
        assert_eq!(budget.requests + budget.background + 1, 16);
        let s = load(&[("database.max_connections", "8")]).unwrap();
        assert_eq!(s.connection_budget().unwrap().total(), 8);
        let set = load(&[
            ("database.max_connections", "10"),
            ("database.request_connections", "6"),
            ("database.background_connections", "3"),
        ])
        .unwrap();
        assert_eq!(
            set.connection_budget().unwrap(),
            ConnectionBudget {
                requests: 6,
                background: 3
            }
        );
    }

    #[test]
    fn parts_that_do_not_fit_the_total_name_the_variables() {
        let error = load(&[
            ("database.max_connections", "10"),
            ("database.request_connections", "7"),
            ("database.background_connections", "3"),
        ])
        .unwrap_err();
        assert_eq!(error.variable, "APP__DATABASE__MAX_CONNECTIONS");
        assert_eq!(error.value.as_deref(), Some("10"));
        for part in [
            "APP__DATABASE__REQUEST_CONNECTIONS (7)",
            "APP__DATABASE__BACKGROUND_CONNECTIONS (3)",
        ] {
            assert!(error.expected.contains(part), "{error}");
        }
        let no_room = load(&[
            ("database.max_connections", "4"),
            ("database.background_connections", "3"),
        ])
        .unwrap_err();
        assert_eq!(no_room.variable, "APP__DATABASE__MAX_CONNECTIONS");
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
            ("health.postgres.critical", "false"),
            ("health.postgres.interval", "500ms"),
            ("health.postgres.timeout", "250ms"),
        ])
        .unwrap();
        assert!(!s.health.postgres.policy(true).unwrap().is_critical());
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
        // The other parameters keep their encoding: libpq's options value has spaces.
        let s = load(&[(
            "database.url",
            "postgres://db/app?options=-c%20search_path%3Dx&sslmode=require",
        )])
        .unwrap();
        assert_eq!(
            s.database.url.expose(),
            "postgres://db/app?options=-c%20search_path%3Dx"
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
        let error = load(&[("database.ca_file", not_pem.to_str().unwrap())]).unwrap_err();
        assert!(error.expected.contains("PEM"), "{error}");
        // @rabbitmq-begin
        let error = load(&[
            ("rabbitmq.url", "amqps://mq/%2f"),
            ("rabbitmq.ca_file", not_pem.to_str().unwrap()),
        ])
        .unwrap_err();
        assert_eq!(error.variable, "APP__RABBITMQ__CA_FILE");
        let plain = load(&[("rabbitmq.ca_file", not_pem.to_str().unwrap())]).unwrap_err();
        assert!(plain.expected.contains("amqps://"), "{plain}");
        assert!(
            plain.to_string().contains("is invalid"),
            "a set file is not missing: {plain}"
        );
        // @rabbitmq-end
        let disabled = load(&[
            ("database.url", "postgres://db/app?sslmode=disable"),
            ("database.ca_file", not_pem.to_str().unwrap()),
        ])
        .unwrap_err();
        assert!(disabled.expected.contains("sslmode=disable"), "{disabled}");
        let said = disabled.to_string();
        assert!(
            said.contains("is invalid"),
            "a set file is not missing: {said}"
        );
        // Empty means unset: a chart can always render the variable.
        assert_eq!(
            load(&[("database.ca_file", "")]).unwrap().database.ca_file,
            None
        );
    }

    #[test]
    fn a_wrong_type_is_an_error_never_the_default() {
        for (key, value, variable) in [
            ("outbox.batch_size", "lots", "APP__OUTBOX__BATCH_SIZE"), // @rabbitmq
            (
                "health.postgres.critical",
                "maybe",
                "APP__HEALTH__POSTGRES__CRITICAL",
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
        let error = load(&[("database.url", "http://u:s3cret@db/x")]).unwrap_err();
        assert!(!error.to_string().contains("s3cret"), "{error}");
        let embedded =
            redact("connect failed: postgres://app:hunter2@db:5432/app (password=hunter2)");
        assert!(!embedded.contains("hunter2"), "{embedded}");
    }
}
