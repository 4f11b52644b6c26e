//! Shared helpers of the integration tests: every test gets its own database on the machine's
// @rabbitmq-begin
//! PostgreSQL and its own vhost on the machine's RabbitMQ, dropped afterwards.
// @rabbitmq-else
// //! PostgreSQL, dropped afterwards.
// @rabbitmq-end
#![allow(dead_code, unused_imports, clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;
pub mod chart;
pub mod example;

pub use testkit::RabbitMq; // @rabbitmq
pub use testkit::{Fault, FaultProxy, Postgres, Service, Signal};

/// The binary under test, built by cargo for these tests.
pub fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_shipshape"))
}

mod embedded {
    refinery::embed_migrations!("src/db/migrations");
}

/// Applies what `migrate` of a next release would: this release's migrations and the expand
/// migration `V1000__add_priority` ([`example::next_release_expand`]), through the same code
/// (`bootstrap::schema`), under the lock and the timeouts of `tuning`. Returns the migrations it
/// applied.
pub fn migrate_to_next_release(
    database_url: &str,
    tuning: &bootstrap::config::MigrationSettings,
) -> anyhow::Result<Vec<String>> {
    migrate_with(
        database_url,
        tuning,
        &[("V1000__add_priority", &example::next_release_expand())],
    )
}

/// Applies this release's migrations and `later` ones (name, SQL) through `bootstrap::schema`.
pub fn migrate_with(
    database_url: &str,
    tuning: &bootstrap::config::MigrationSettings,
    later: &[(&str, &str)],
) -> anyhow::Result<Vec<String>> {
    let mut migrations = embedded::migrations::runner().get_migrations().clone();
    for (name, sql) in later {
        migrations.push(refinery::Migration::unapplied(name, sql)?);
    }
    let database = bootstrap::config::DatabaseSettings::from_url(database_url)?;
    let mut applied = Vec::new();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(bootstrap::schema::Schema::new(migrations).migrate(
        &database,
        tuning,
        |version, _| applied.push(version.to_string()),
    ))?;
    Ok(applied)
}

/// Runs `shipshape migrate` with `args` and `env`: its exit code, stdout and stderr.
pub fn migrate_command(args: &[&str], env: &[(String, String)]) -> (Option<i32>, String, String) {
    let output = Command::new(binary())
        .arg("migrate")
        .args(args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// How many migrations this release has.
pub fn release_migrations() -> usize {
    embedded::migrations::runner().get_migrations().len()
}

/// Detection bound of the test tuning (interval 500 ms x threshold 2 + timeout 400 ms), plus
/// generous slack for a loaded 2-core machine.
pub const DETECTION: Duration = Duration::from_millis(500 * 2 + 400 + 4000);

/// What one test owns on the machine's shared services (its database and the like).
pub struct Shared {
    pub name: String,
}

impl Shared {
    pub fn new(test: &str) -> Shared {
        let name = format!("t_{test}_{}", std::process::id());
        psql(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"));
        psql(&format!("CREATE DATABASE \"{name}\""));
        rabbitmqctl(&["add_vhost", &name]); // @rabbitmq
        rabbitmqctl(&["set_permissions", "-p", &name, "guest", ".*", ".*", ".*"]); // @rabbitmq
        Shared { name }
    }

    pub fn database_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:5432/{}", self.name)
    }

    // @rabbitmq-begin
    pub fn rabbitmq_url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:5672/{}", self.name)
    }
    // @rabbitmq-end

    /// Env for a service on these shared dependencies.
    pub fn env(&self) -> Vec<(String, String)> {
        self.env_with(&self.database_url(), &[])
    }

    /// Env for a service on the PostgreSQL at `postgres_url` (a throwaway server, a proxy) and
    /// the rest of these shared dependencies, with `extra` on top.
    pub fn env_with(&self, postgres_url: &str, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut env = vec![
            ("APP__DATABASE__URL".to_owned(), postgres_url.to_owned()),
            ("APP__RABBITMQ__URL".to_owned(), self.rabbitmq_url()), // @rabbitmq
        ];
        env.extend(
            extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        env
    }

    /// Transactions run in this test's database so far.
    pub fn transactions(&self) -> i64 {
        psql(&format!(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = '{}'",
            self.name
        ))
        .parse()
        .unwrap()
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-XAtqc",
                &format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name),
            ])
            .output();
        // @rabbitmq-begin
        let _ = Command::new("rabbitmqctl")
            .args(["delete_vhost", &self.name])
            .output();
        // @rabbitmq-end
    }
}

/// Runs SQL in the machine's `postgres` database.
pub fn psql(sql: &str) -> String {
    psql_in("postgres", sql)
}

/// Runs SQL in `database` on the machine's PostgreSQL; returns the unaligned output.
pub fn psql_in(database: &str, sql: &str) -> String {
    testkit::postgres::psql(5432, database, sql)
}

// @rabbitmq-begin
fn rabbitmqctl(args: &[&str]) {
    let output = Command::new("rabbitmqctl").args(args).output().unwrap();
    assert!(
        output.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}
// @rabbitmq-end

/// Spawns the service with `env` (owned pairs).
pub fn spawn(env: &[(String, String)]) -> Service {
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    Service::spawn(binary(), &pairs)
}

// @rabbitmq-begin
/// Env pointing the service at throwaway dependencies.
pub fn env_for(
    postgres_url: &str,
    rabbitmq_url: &str,
    extra: &[(&str, &str)],
) -> Vec<(String, String)> {
    let mut env = vec![
        ("APP__DATABASE__URL".to_owned(), postgres_url.to_owned()),
        ("APP__RABBITMQ__URL".to_owned(), rabbitmq_url.to_owned()),
    ];
    env.extend(
        extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    env
}
// @rabbitmq-end

/// `/livez` never failed while `watch` polled, and the process is still running.
pub fn assert_alive(service: &Service, watch: testkit::LivenessWatch) {
    let (polls, failures) = watch.finish();
    assert!(polls > 10, "liveness polled only {polls} times");
    assert!(
        failures.is_empty(),
        "/livez failed {} of {polls} polls: {failures:?}",
        failures.len()
    );
    assert!(
        service.try_exit().is_none(),
        "the service exited:\n{}",
        service.logs()
    );
}

/// The `output` of `check`'s connectivity entry in `/readyz?verbose`.
pub fn check_output(service: &Service, check: &str) -> String {
    let body = json(&service.probe("/readyz?verbose").2);
    body["checks"][format!("{check}:connectivity")][0]["output"]
        .as_str()
        .unwrap_or("")
        .to_owned()
}

/// Parses a verbose health+json body.
pub fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}
