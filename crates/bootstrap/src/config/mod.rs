//! Layered, typed, validated settings (docs/configuration.md): a bad value or a misspelt key
//! becomes a [`ConfigError`] naming variable, value and expectation.

mod sections;
pub mod value;

pub use sections::*;
pub use value::{SecretUrl, constant_url, redact};

use serde::de::DeserializeOwned;
use std::path::PathBuf;

/// A setting that could not be used.
///
/// ```
/// let error = bootstrap::config::ConfigError::new("server.port", Some("abc".into()), "a TCP port (1-65535)");
/// assert_eq!(error.to_string(), r#"APP__SERVER__PORT="abc" is invalid: expected a TCP port (1-65535)"#);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{variable}{}: expected {expected}",
    .value.as_ref().map_or(" is missing".into(), |value| format!("={value:?} is invalid"))
)]
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

/// `server.port` -> `APP__SERVER__PORT`.
fn env_name(key: &str) -> String {
    if key.starts_with("APP_") || key.chars().all(|c| c.is_ascii_uppercase() || c == '_') {
        return key.to_owned();
    }
    format!("APP__{}", key.replace('.', "__").to_ascii_uppercase())
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
            dir: std::env::var_os("APP_CONFIG_DIR").map_or_else(|| "config".into(), PathBuf::from),
            app_env: std::env::var("APP_ENV").ok().filter(|v| !v.is_empty()),
        }
    }
}

/// Loads any settings type (defaults from its `Default`) from the layers of `sources`; the first
/// bad value becomes one [`ConfigError`].
///
/// ```
/// #[derive(Debug, Default, serde::Deserialize)]
/// #[serde(default, deny_unknown_fields)]
/// struct Settings { cache: Cache }
///
/// #[derive(Debug, Default, serde::Deserialize)]
/// #[serde(default, deny_unknown_fields)]
/// struct Cache { size: usize }
///
/// let dir = tempfile::tempdir()?;
/// std::fs::write(dir.path().join("default.toml"), "[cache]\nsize = 5\n")?;
/// let sources = bootstrap::config::Sources { dir: dir.path().into(), app_env: None };
/// let settings: Settings = bootstrap::config::load(&sources)?;
/// assert_eq!(settings.cache.size, 5);
///
/// std::fs::write(dir.path().join("default.toml"), "[cache]\nsise = 5\n")?;
/// let error = bootstrap::config::load::<Settings>(&sources).unwrap_err();
/// assert_eq!(error.variable, "APP__CACHE__SISE");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn load<T: DeserializeOwned>(sources: &Sources) -> Result<T, ConfigError> {
    let raw = layered(sources)?;
    serde_path_to_error::deserialize(raw.clone()).map_err(|error| {
        let key = error.path().to_string();
        let message = error.inner().to_string();
        if message.starts_with("unknown field") {
            return ConfigError::new(
                &key,
                raw.get_string(&key).ok().map(|v| redact(&v)),
                "a known setting: this key is not one (misspelt? see docs/configuration.md)",
            );
        }
        let expected = message
            .rsplit_once("expected ")
            .map_or(message.as_str(), |(_, expected)| expected);
        // The config crate appends the key, which the variable already names.
        let expected = expected
            .split_once(" for key `")
            .map_or(expected, |(expected, _)| expected);
        let value = raw
            .get_string(&key)
            .map_or_else(|_| "(not a single value)".into(), |value| redact(&value));
        ConfigError::new(&key, Some(value), redact(expected))
    })
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
                format!("an environment with a file {}", file.display()),
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
