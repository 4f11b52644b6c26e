//! The one place the tests name the example resource (its path, its table, a body its POST
//! accepts); docs/extending.md, "Replacing the example", says how to point it at your own.
//! Only `items.rs`, the example's own tests, names it elsewhere.

use super::{Service, psql};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The collection: `POST` creates, `GET` lists.
pub const PATH: &str = "/v1/items";

/// The table behind it.
pub const TABLE: &str = "items";

// @rabbitmq-begin
/// The type (and routing key) of the event a `POST` of the resource writes.
pub const CREATED: &str = "item.created";
/// The type of the event a `DELETE` of one writes.
pub const DELETED: &str = "item.deleted";
// @rabbitmq-end

/// A body `POST` [`PATH`] accepts.
pub fn body(name: &str) -> serde_json::Value {
    serde_json::json!({ "name": name })
}

/// One resource of the collection: `{PATH}/{id}`.
pub fn one(id: impl std::fmt::Display) -> String {
    format!("{PATH}/{id}")
}

/// A page of the collection: `{PATH}?limit={limit}`.
pub fn page(limit: u32) -> String {
    format!("{PATH}?limit={limit}")
}

/// `POST` [`PATH`] with `body` (and an `Idempotency-Key`).
pub fn post(
    service: &Service,
    body: &serde_json::Value,
    key: Option<&str>,
) -> reqwest::blocking::Response {
    let mut request = service.http().post(service.api_url(PATH)).json(body);
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    request.send().unwrap()
}

/// The expand step of adding a field in a next release: a column with a default, which this
/// release's queries neither read nor write (docs/migrations.md).
pub fn next_release_expand() -> String {
    format!("ALTER TABLE {TABLE} ADD COLUMN priority integer NOT NULL DEFAULT 0")
}

/// A psql session holding [`TABLE`] in `database` exclusively (for at most 60 s), returned once
/// the lock is granted: every read of the table waits on it until [`release`].
pub fn lock(database: &str) -> Child {
    let locker = Command::new("psql")
        .args(["-h", "127.0.0.1", "-U", "postgres", "-d", database, "-Xqc"])
        .arg(format!(
            "BEGIN; LOCK TABLE {TABLE} IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(60)"
        ))
        .env("PGAPPNAME", "locker")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lock_held = format!(
        "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) \
         WHERE a.application_name = 'locker' AND l.mode = 'AccessExclusiveLock' AND l.granted \
         AND a.datname = '{database}'"
    );
    testkit::wait_until("the lock held", Duration::from_secs(10), || {
        psql(&lock_held) != "0"
    });
    locker
}

/// Ends the session of [`lock`]: the reads waiting on it go on.
pub fn release(database: &str, mut locker: Child) {
    psql(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE application_name = 'locker' AND datname = '{database}'"
    ));
    let _ = locker.wait();
}
