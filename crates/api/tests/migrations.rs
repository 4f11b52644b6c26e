//! Schema changes across releases: replicas migrating together, a rollback onto a schema a
//! later release migrated, migrations as a release step (`shipshape migrate`), and DDL that
//! waits for a lock without stalling the traffic behind it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use bootstrap::config::MigrationSettings;
use common::*;
use std::time::{Duration, Instant};

fn history(database: &str) -> String {
    psql_in(
        database,
        "SELECT string_agg(version::text, ',' ORDER BY version) FROM refinery_schema_history",
    )
}

#[test]
fn five_replicas_starting_together_on_an_empty_database_all_become_ready() {
    let shared = Shared::new("migrace");
    let services: Vec<Service> = (0..5).map(|_| spawn(&shared.env())).collect();
    for service in &services {
        service.wait_for("/readyz", 200, Duration::from_secs(60));
    }
    // Each migration applied exactly once, whoever won the race.
    assert_eq!(
        psql_in(
            &shared.name,
            "SELECT count(*) || '/' || count(DISTINCT version) FROM refinery_schema_history"
        ),
        format!("{0}/{0}", release_migrations())
    );
    for service in &services {
        assert_eq!(
            example::post(service, &example::body("works"), None).status(),
            201
        );
    }
}

#[test]
fn a_rollback_serves_on_the_schema_a_later_release_migrated() {
    let shared = Shared::new("rollback");
    let service = spawn(&shared.env());
    service.wait_for("/readyz", 200, Duration::from_secs(30));
    service.signal(Signal::SIGTERM);
    assert_eq!(service.wait_exit(Duration::from_secs(30)).0.code(), Some(0));
    // What the next release's migration did: a history row this release does not know and a
    // column with a default (the expand step of adding a field).
    psql_in(
        &shared.name,
        &format!(
            "INSERT INTO refinery_schema_history (version, name, applied_on, checksum) \
             VALUES (1000, 'add_priority', '2026-12-05T00:00:00Z', '1'); {}",
            example::next_release_expand()
        ),
    );
    // `helm rollback`, or a pod of the old release restarted during the rollout.
    let service = spawn(&shared.env());
    service.wait_for("/readyz", 200, Duration::from_secs(30));
    let created = example::post(&service, &example::body("after the rollback"), None);
    assert_eq!(created.status(), 201, "{}", service.logs());
    let id = created.json::<serde_json::Value>().unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(service.api(&example::one(&id)).0, 200);
    assert_eq!(service.api(&example::page(5)).0, 200);
    // The later column took its default; the history still has the later release's row.
    assert_eq!(
        psql_in(
            &shared.name,
            &format!("SELECT priority FROM {} WHERE id = '{id}'", example::TABLE)
        ),
        "0"
    );
    assert!(history(&shared.name).ends_with(",1000"));
    let logs = service.logs();
    assert_eq!(
        logs.matches("V1000__add_priority").count(),
        1,
        "the later migration is logged once:\n{logs}"
    );
}

#[test]
fn migrate_applies_what_is_pending_once_and_check_tells_what_is() {
    let shared = Shared::new("migratecmd");
    let env = shared.env();
    let (code, out, err) = migrate_command(&["--check"], &env);
    assert_eq!(code, Some(1), "{out}{err}");
    assert_eq!(
        out.matches("pending V").count(),
        release_migrations(),
        "{out}"
    );
    assert!(out.contains("pending V1__"), "{out}");

    let (code, out, err) = migrate_command(&[], &env);
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(
        out.matches("applied V").count(),
        release_migrations(),
        "{out}"
    );
    assert!(out.contains("schema up to date"), "{out}");
    let applied = history(&shared.name);

    // Again: nothing to do.
    let (code, out, _) = migrate_command(&[], &env);
    assert_eq!(
        (code, out.matches("applied V").count()),
        (Some(0), 0),
        "{out}"
    );
    let (code, out, _) = migrate_command(&["--check"], &env);
    assert_eq!(code, Some(0), "{out}");
    assert!(!out.contains("pending"), "{out}");
    assert_eq!(history(&shared.name), applied);

    // A later release's migration is reported, not refused.
    psql_in(
        &shared.name,
        "INSERT INTO refinery_schema_history VALUES (1000, 'add_priority', '2026-12-05T00:00:00Z', '1')",
    );
    let (code, out, _) = migrate_command(&["--check"], &env);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("applied by a later release: V1000__add_priority"),
        "{out}"
    );

    // A migration edited after it ran is refused, naming it.
    psql_in(
        &shared.name,
        "UPDATE refinery_schema_history SET checksum = '1' WHERE version = 1",
    );
    for args in [&["--check"][..], &[]] {
        let (code, out, err) = migrate_command(args, &env);
        assert_eq!(code, Some(1), "{out}{err}");
        assert!(err.contains("diverges") && err.contains("V1__"), "{err}");
    }

    let (code, _, err) = migrate_command(&["--dry-run"], &env);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("usage"), "{err}");
}

#[test]
fn with_migrations_run_by_a_release_step_startup_waits_for_the_schema() {
    let shared = Shared::new("migratewait");
    let mut env = shared.env();
    env.push(("APP__MIGRATIONS__AT_STARTUP".into(), "false".into()));
    let service = spawn(&env);
    testkit::wait_until(
        "startup to wait for the schema",
        Duration::from_secs(20),
        || service.logs().contains("waiting for"),
    );
    assert_eq!(service.probe("/startupz").0, 503);
    assert_eq!(
        psql_in(
            &shared.name,
            &format!("SELECT to_regclass('{}') IS NULL", example::TABLE)
        ),
        "t",
        "the replica migrated by itself"
    );
    assert!(service.try_exit().is_none(), "{}", service.logs());
    // The release step (the chart's Job) runs; the replica becomes ready on its own.
    let (code, out, err) = migrate_command(&[], &env);
    assert_eq!(code, Some(0), "{out}{err}");
    service.wait_for("/readyz", 200, Duration::from_secs(30));
    assert_eq!(
        example::post(&service, &example::body("migrated"), None).status(),
        201
    );
}

#[test]
fn ddl_waiting_for_a_lock_never_stalls_reads_and_writes_past_the_lock_timeout() {
    let shared = Shared::new("locksafety");
    let service = spawn(&shared.env());
    service.wait_for("/readyz", 200, Duration::from_secs(30));
    let created = example::post(&service, &example::body("read me"), None);
    let id = created.json::<serde_json::Value>().unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // A long transaction (a report, a stuck session) holds a lock on the example's table.
    let mut holder = std::process::Command::new("psql")
        .args(["-h", "127.0.0.1", "-U", "postgres", "-XAq", &shared.name])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = holder.stdin.take().unwrap();
    let report = format!("BEGIN; SELECT count(*) FROM {};\n", example::TABLE);
    std::io::Write::write_all(&mut stdin, report.as_bytes()).unwrap();
    testkit::wait_until("the lock to be held", Duration::from_secs(10), || {
        psql_in(
            &shared.name,
            &format!(
                "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation \
                 WHERE c.relname = '{}' AND l.mode = 'AccessShareLock' AND l.granted",
                example::TABLE
            ),
        ) != "0"
    });

    let tuning = MigrationSettings {
        lock_timeout: Duration::from_millis(500),
        ..MigrationSettings::default()
    };
    let url = shared.database_url();
    let migration = std::thread::spawn(move || migrate_to_next_release(&url, &tuning));

    // The ALTER TABLE queues for its lock over and over; requests on the table keep flowing.
    let began = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut requests = 0;
    while began.elapsed() < Duration::from_secs(6) {
        let sent = Instant::now();
        assert_eq!(service.api(&example::one(&id)).0, 200);
        assert_eq!(
            example::post(&service, &example::body("during"), None).status(),
            201
        );
        slowest = slowest.max(sent.elapsed());
        requests += 2;
    }
    println!("{requests} requests while the migration waited, slowest pair {slowest:?}");
    // A request may queue behind one attempt of the ALTER: at most the lock timeout, plus
    // generous slack for a loaded machine; without the timeout it would wait for the report.
    assert!(
        slowest < Duration::from_millis(500 + 1500),
        "a request waited {slowest:?} behind the migration"
    );
    assert!(
        !migration.is_finished(),
        "the migration ran under the held lock"
    );
    assert!(!history(&shared.name).ends_with(",1000"));

    // The long transaction ends: the migration gets its lock and completes.
    std::io::Write::write_all(&mut stdin, b"COMMIT;\n").unwrap();
    drop(stdin);
    let applied = migration.join().unwrap().unwrap();
    assert_eq!(applied, ["V1000__add_priority"]);
    let _ = holder.wait();
    assert!(history(&shared.name).ends_with(",1000"));
    assert_eq!(service.api(&example::one(&id)).0, 200);
}

#[test]
fn an_index_built_concurrently_runs_outside_a_transaction() {
    let shared = Shared::new("concurrently");
    let table = example::TABLE;
    let index = format!(
        "-- shipshape:no-transaction\n\
         CREATE INDEX CONCURRENTLY IF NOT EXISTS {table}_priority ON {table} (priority)"
    );
    let index_migration = format!("V1001__{table}_priority_index");
    let expand = example::next_release_expand();
    let later = [
        ("V1000__add_priority", expand.as_str()),
        (index_migration.as_str(), index.as_str()),
    ];
    let tuning = MigrationSettings::default();
    // PostgreSQL refuses CREATE INDEX CONCURRENTLY inside a transaction block: this passes only
    // when the marked file runs on its own.
    let applied = migrate_with(&shared.database_url(), &tuning, &later).unwrap();
    assert!(applied.ends_with(&["V1000__add_priority".into(), index_migration.clone()]));
    assert_eq!(
        psql_in(
            &shared.name,
            &format!(
                "SELECT indisvalid FROM pg_index WHERE indexrelid = '{table}_priority'::regclass"
            )
        ),
        "t"
    );
    assert!(history(&shared.name).ends_with(",1000,1001"));
    // Recorded once: the next run has nothing to do.
    assert!(
        migrate_with(&shared.database_url(), &tuning, &later)
            .unwrap()
            .is_empty()
    );
}
