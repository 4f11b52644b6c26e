//! A release's schema (docs/migrations.md): refinery embeds and records the migrations; they are
//! applied here, one per transaction, so each statement runs under a lock timeout.

use crate::Backoff;
use crate::config::{DatabaseSettings, MigrationSettings};
use anyhow::Context;
use refinery::Migration;
use std::fmt;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, GenericClient};

/// refinery's history table: releases built before this module wrote it through refinery.
const HISTORY: &str = "refinery_schema_history";

/// Arbitrary constant naming the migration lock among the advisory locks of the database.
const LOCK: i64 = 0x5348_4950_5348_4150; // "SHIPSHAP"

/// First line of a migration that must run outside a transaction (`CREATE INDEX CONCURRENTLY`).
/// Such a file holds one statement, harmless to run twice (`IF NOT EXISTS`).
pub const NO_TRANSACTION: &str = "-- shipshape:no-transaction";

/// One migration as the history names it: `V2__items_priority`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    number: i32,
    name: String,
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "V{}__{}", self.number, self.name)
    }
}

/// How a database's schema compares with a release's migrations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SchemaStatus {
    /// Migrations of the release not applied yet, in order.
    pub pending: Vec<Version>,
    /// Applied migrations of a later release (this one is a rollback, or an old pod mid-rollout).
    /// Expand/contract keeps them working for this release, so they are reported, not refused.
    pub unknown: Vec<Version>,
}

/// A release's migrations, in version order.
///
/// ```no_run
/// # async fn example() -> anyhow::Result<()> {
/// use bootstrap::config::{DatabaseSettings, MigrationSettings};
/// let items = refinery::Migration::unapplied("V1__items", "CREATE TABLE items (id uuid)")?;
/// let status = bootstrap::schema::Schema::new(vec![items])
///     .migrate(&DatabaseSettings::default(), &MigrationSettings::default(), |version, took| {
///         println!("applied {version} in {took:?}");
///     })
///     .await?;
/// assert!(status.pending.is_empty());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Schema {
    migrations: Vec<Migration>,
}

impl Schema {
    /// The schema made by `migrations` (refinery's `embed_migrations!` gives them).
    pub fn new(mut migrations: Vec<Migration>) -> Self {
        migrations.sort_by_key(Migration::version);
        Self { migrations }
    }

    /// Compares the database's history with this release. A migration applied with another name
    /// or content (edited or renumbered after it ran) is an error: no code can tell which is right.
    pub async fn status(&self, database: &DatabaseSettings) -> anyhow::Result<SchemaStatus> {
        let (client, driver) = connect(database).await?;
        let applied = history(&client).await;
        drop(client);
        let _ = driver.await;
        self.compare(&applied.context("reading the schema history")?)
    }

    fn migration(&self, number: i32) -> Option<&Migration> {
        self.migrations.iter().find(|m| m.version() == number)
    }

    fn compare(&self, applied: &[Applied]) -> anyhow::Result<SchemaStatus> {
        let mut status = SchemaStatus::default();
        for (version, checksum) in applied {
            match self.migration(version.number) {
                None => status.unknown.push(version.clone()),
                Some(own)
                    if own.name() != version.name || own.checksum().to_string() != *checksum =>
                {
                    anyhow::bail!(
                        "the schema history diverges from this release: the database applied \
                         {version} (checksum {checksum}), this release has {} (checksum {}); a \
                         migration was edited or renumbered after it ran",
                        version_of(own),
                        own.checksum()
                    )
                }
                Some(_) => {}
            }
        }
        status.pending = self
            .migrations
            .iter()
            .filter(|m| {
                !applied
                    .iter()
                    .any(|(version, _)| version.number == m.version())
            })
            .map(version_of)
            .collect();
        Ok(status)
    }

    /// Applies pending migrations under an advisory lock (replicas starting together take turns),
    /// statements bounded by `tuning`'s timeouts; one refused a lock is rolled back (letting
    /// queries queued behind it through) and retried with backoff, so bound the call with a
    /// deadline. Calls `applied` after each.
    pub async fn migrate(
        &self,
        database: &DatabaseSettings,
        tuning: &MigrationSettings,
        mut applied: impl FnMut(&Version, Duration),
    ) -> anyhow::Result<SchemaStatus> {
        let (mut client, driver) = connect(database).await?;
        // Taken before the timeouts are set: waiting for another replica's migrations is not
        // waiting for a table lock. The lock ends with the session too.
        client
            .execute("SELECT pg_advisory_lock($1)", &[&LOCK])
            .await
            .context("taking the migration lock")?;
        let outcome = self.apply_pending(&mut client, tuning, &mut applied).await;
        let _ = client
            .execute("SELECT pg_advisory_unlock($1)", &[&LOCK])
            .await;
        drop(client);
        let _ = driver.await;
        outcome
    }

    async fn apply_pending(
        &self,
        client: &mut Client,
        tuning: &MigrationSettings,
        applied: &mut impl FnMut(&Version, Duration),
    ) -> anyhow::Result<SchemaStatus> {
        client
            .batch_execute(&format!(
                "SET lock_timeout = {}; SET statement_timeout = {};
                 CREATE TABLE IF NOT EXISTS {HISTORY} (version int4 PRIMARY KEY,
                     name varchar(255), applied_on varchar(255), checksum varchar(255));",
                tuning.lock_timeout.as_millis(),
                tuning.statement_timeout.as_millis()
            ))
            .await
            .context("preparing the migration session")?;
        let recorded = history(client)
            .await
            .context("reading the schema history")?;
        let mut status = self.compare(&recorded)?;
        for version in std::mem::take(&mut status.pending) {
            let Some(migration) = self.migration(version.number) else {
                continue;
            };
            let began = Instant::now();
            let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
            loop {
                match apply(client, migration).await {
                    Ok(()) => break,
                    Err(error) if waited_for_a_lock(&error) => {
                        let delay = backoff.next_delay();
                        tracing::warn!(
                            migration = %version,
                            sqlstate = error.code().map(SqlState::code),
                            retry_in_ms = delay.as_millis() as u64,
                            "migration gave up waiting for a lock (APP__MIGRATIONS__LOCK_TIMEOUT); retrying"
                        );
                        tokio::time::sleep(delay).await;
                    }
                    Err(error) => return Err(error).with_context(|| format!("applying {version}")),
                }
            }
            applied(&version, began.elapsed());
        }
        Ok(status)
    }
}

/// One migration and its history row: in one transaction, or, for a [`NO_TRANSACTION`] file,
/// the statement alone and then the row.
async fn apply(client: &mut Client, migration: &Migration) -> Result<(), tokio_postgres::Error> {
    let sql = migration.sql().unwrap_or_default();
    if sql.trim_start().starts_with(NO_TRANSACTION) {
        client.batch_execute(sql).await?;
        return record(client, migration).await;
    }
    let transaction = client.transaction().await?;
    transaction.batch_execute(sql).await?;
    record(&transaction, migration).await?;
    transaction.commit().await
}

/// The history row of `migration`.
async fn record(
    client: &impl GenericClient,
    migration: &Migration,
) -> Result<(), tokio_postgres::Error> {
    let checksum = migration.checksum().to_string();
    let row = format!(
        "INSERT INTO {HISTORY} (version, name, applied_on, checksum) \
         VALUES ($1, $2, to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), $3)"
    );
    let values: [&(dyn ToSql + Sync); 3] = [&migration.version(), &migration.name(), &checksum];
    client.execute(&row, &values).await.map(|_| ())
}

/// A connection of its own: the lock and the timeouts are the session's.
async fn connect(database: &DatabaseSettings) -> anyhow::Result<(Client, JoinHandle<()>)> {
    let (mut config, tls) = crate::tls::postgres(database)?;
    config.application_name("shipshape-migrations");
    let (client, connection) = config
        .connect(tls)
        .await
        .context("connecting for migrations")?;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok((client, driver))
}

/// A row of the history: the migration and its checksum.
type Applied = (Version, String);

async fn history(client: &Client) -> Result<Vec<Applied>, tokio_postgres::Error> {
    let exists: bool = client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&HISTORY])
        .await?
        .get(0);
    if !exists {
        return Ok(Vec::new());
    }
    let rows = client
        .query(
            &format!("SELECT version, name, checksum FROM {HISTORY} ORDER BY version"),
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| {
            let version = Version {
                number: row.get(0),
                name: row.get(1),
            };
            (version, row.get(2))
        })
        .collect())
}

fn version_of(migration: &Migration) -> Version {
    Version {
        number: migration.version(),
        name: migration.name().to_owned(),
    }
}

/// A lock not granted within `lock_timeout`, or a deadlock: the same migration may pass later.
fn waited_for_a_lock(error: &tokio_postgres::Error) -> bool {
    error.code().is_some_and(|code| {
        *code == SqlState::LOCK_NOT_AVAILABLE || *code == SqlState::T_R_DEADLOCK_DETECTED
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> Schema {
        Schema::new(vec![
            Migration::unapplied("V2__notes", "ALTER TABLE items ADD COLUMN note text").unwrap(),
            Migration::unapplied("V1__items", "CREATE TABLE items (id uuid)").unwrap(),
        ])
    }

    fn applied(schema: &Schema, number: i32) -> Applied {
        let own = &schema.migrations[usize::try_from(number - 1).unwrap()];
        (version_of(own), own.checksum().to_string())
    }

    fn version(number: i32, name: &str) -> Version {
        Version {
            number,
            name: name.into(),
        }
    }

    #[test]
    fn an_empty_history_leaves_every_migration_pending_in_order() {
        let status = schema().compare(&[]).unwrap();
        assert_eq!(status.pending, [version(1, "items"), version(2, "notes")]);
        assert!(status.unknown.is_empty());
    }

    #[test]
    fn versions_of_a_later_release_are_reported_not_refused() {
        let schema = schema();
        let later = (version(3, "add_priority"), "42".to_owned());
        let status = schema
            .compare(&[applied(&schema, 1), applied(&schema, 2), later])
            .unwrap();
        assert!(status.pending.is_empty());
        assert_eq!(status.unknown, [version(3, "add_priority")]);
        assert_eq!(status.unknown[0].to_string(), "V3__add_priority");
    }

    #[test]
    fn a_migration_edited_after_it_ran_is_an_error_naming_it() {
        let schema = schema();
        let edited = (version(2, "notes"), "1".to_owned());
        let error = schema
            .compare(&[applied(&schema, 1), edited])
            .unwrap_err()
            .to_string();
        assert!(error.contains("diverges"), "{error}");
        assert!(error.contains("V2__notes (checksum 1)"), "{error}");
        let renamed = (version(2, "comments"), applied(&schema, 2).1);
        assert!(schema.compare(&[renamed]).is_err());
    }
}
