//! The fault table: real dependencies killed, restarted, black-holed and slowed down while the
//! service runs. In every case readiness must follow the truth within the detection bound,
//! `/livez` must never fail, and the process must never exit.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use std::time::{Duration, Instant};

const RECOVERY: Duration = Duration::from_secs(20);

/// A service on a throwaway PostgreSQL (and this test's share of the other dependencies).
fn on_throwaway_postgres(test: &str, proxy: Option<&FaultProxy>) -> (Shared, Postgres, Service) {
    let shared = Shared::new(test);
    let postgres = Postgres::start();
    postgres.create_database("app");
    let port = proxy.map_or(postgres.port(), FaultProxy::port);
    let url = format!("postgres://postgres@127.0.0.1:{port}/app");
    let service = spawn(&shared.env_with(&url, &[]));
    service.wait_for("/readyz", 200, Duration::from_secs(30));
    service.wait_for_status("pass", Duration::from_secs(10));
    (shared, postgres, service)
}

/// Keeps an outage going until liveness has been polled ten more times (a second) through it:
/// detection now takes a fraction of that.
fn hold_for_liveness(watch: &testkit::LivenessWatch) {
    let detected_at = watch.polls();
    testkit::wait_until("liveness polled during the outage", RECOVERY, || {
        watch.polls() >= detected_at + 10
    });
}

#[test]
fn postgres_kill9_fails_readiness_and_recovers() {
    let (_shared, postgres, service) = on_throwaway_postgres("pgkill", None);
    let watch = service.watch_liveness();
    postgres.kill9();
    let detected = service.wait_for("/readyz", 503, DETECTION);
    println!("postgres kill -9 detected after {detected:?}");
    hold_for_liveness(&watch);
    postgres.start_again();
    let recovered = service.wait_for("/readyz", 200, RECOVERY);
    println!("recovered after {recovered:?}");
    service.wait_for_status("pass", RECOVERY);
    assert_alive(&service, watch);
}

/// The postgres check's own default tuning (every 2 s, 1 s timeout, 2 failures), in place of
/// the tests' short one: event-driven detection must hold where users run it.
const DEFAULT_TUNING: [(&str, &str); 2] = [
    ("APP__HEALTH__POSTGRES__INTERVAL", "2s"),
    ("APP__HEALTH__POSTGRES__TIMEOUT", "1s"),
];

#[test]
fn postgres_death_fails_readiness_within_a_second_every_time() {
    let shared = Shared::new("pgevent");
    let postgres = Postgres::start();
    postgres.create_database("app");
    let service = spawn(&shared.env_with(&postgres.url("app"), &DEFAULT_TUNING));
    service.wait_for_status("pass", Duration::from_secs(30));
    let watch = service.watch_liveness();
    let mut detections = Vec::new();
    for _ in 0..5 {
        // From before the kill: the time kill9 takes to clear the processes counts too.
        let killed = Instant::now();
        postgres.kill9();
        service.wait_for("/readyz", 503, DETECTION);
        detections.push(killed.elapsed());
        postgres.start_again();
        service.wait_for_status("pass", RECOVERY);
    }
    println!("postgres kill -9 -> /readyz 503 (default tuning): {detections:?}");
    // The poll path alone takes 2 x 2 s + 1 s at this tuning; the event path about 250 ms.
    let bound = Duration::from_secs(2);
    assert!(
        detections.iter().all(|took| *took < bound),
        "detections {detections:?}, bound {bound:?}"
    );
    assert_alive(&service, watch);
}

#[test]
fn a_request_whose_query_fails_does_not_change_readiness() {
    let shared = Shared::new("pgonequery");
    let mut env = DEFAULT_TUNING.to_vec();
    env.push(("APP__DATABASE__QUERY_TIMEOUT", "20s"));
    let service = spawn(&shared.env_with(&shared.database_url(), &env));
    service.wait_for_status("pass", Duration::from_secs(30));
    // Another session holds a lock on the example's table: the next read waits on it, in flight.
    let locker = example::lock(&shared.name);
    let waiting_read = format!(
        "FROM pg_stat_activity WHERE datname = '{}' AND application_name = 'shipshape' \
         AND wait_event_type = 'Lock'",
        shared.name
    );
    let readiness = service.watch_probe("/readyz");
    let path = example::one(uuid::Uuid::now_v7());
    let (status, _, body) = std::thread::scope(|scope| {
        let read = scope.spawn(|| service.api(&path));
        testkit::wait_until(
            "the read waits on the lock",
            Duration::from_secs(10),
            || psql(&format!("SELECT count(*) {waiting_read}")) == "1",
        );
        // The read's own connection dies under it: one failed request-path query.
        psql(&format!("SELECT pg_terminate_backend(pid) {waiting_read}"));
        read.join().unwrap()
    });
    assert_eq!(status, 503, "the read whose connection died: {body}");
    // Its connection's end raised the postgres alarm; the check ran and passed. Watched for a
    // second more before the lock goes.
    let failed_at = readiness.polls();
    testkit::wait_until("readiness watched after the failure", RECOVERY, || {
        readiness.polls() >= failed_at + 10
    });
    example::release(&shared.name, locker);
    let (polls, failures) = readiness.finish();
    assert!(
        failures.is_empty(),
        "/readyz failed {} of {polls} polls after one failed query: {failures:?}",
        failures.len()
    );
    assert_eq!(
        service.api(&path).0,
        404,
        "reads work on a fresh connection"
    );
}

#[test]
fn dropped_connections_of_a_live_server_never_change_readiness() {
    let shared = Shared::new("pgdrops");
    let service = spawn(&shared.env_with(&shared.database_url(), &DEFAULT_TUNING));
    service.wait_for_status("pass", Duration::from_secs(30));
    let readiness = service.watch_probe("/readyz");
    let drop_all = format!(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE datname = '{}' AND pid <> pg_backend_pid()",
        shared.name
    );
    for round in 0..5 {
        let created = example::post(&service, &example::body(&format!("round {round}")), None);
        assert_eq!(created.status().as_u16(), 201, "round {round}");
        // Every connection of the replica, the check's and the pools', at once, every 2 s:
        // each raises the postgres alarm; each triggered run reconnects and passes.
        let check_backend = format!(
            "SELECT coalesce(max(pid), 0) FROM pg_stat_activity \
             WHERE datname = '{}' AND application_name = 'health-check'",
            shared.name
        );
        let before = psql(&check_backend);
        let dropped: u32 = psql(&drop_all).parse().unwrap();
        assert!(dropped >= 2, "round {round}: dropped {dropped} connections");
        // A backend of another pid: the check has reconnected.
        testkit::wait_until("the check reconnected", Duration::from_secs(5), || {
            let now = psql(&check_backend);
            now != "0" && now != before
        });
        std::thread::sleep(Duration::from_secs(2));
    }
    let (polls, failures) = readiness.finish();
    assert!(polls > 50, "readiness polled only {polls} times");
    assert!(
        failures.is_empty(),
        "/readyz failed {} of {polls} polls while only connections dropped: {failures:?}",
        failures.len()
    );
}

#[test]
fn postgres_restart_fails_readiness_and_recovers() {
    let (_shared, postgres, service) = on_throwaway_postgres("pgrestart", None);
    let watch = service.watch_liveness();
    postgres.stop();
    service.wait_for("/readyz", 503, DETECTION);
    assert_eq!(service.probe("/readyz/postgres").0, 503);
    hold_for_liveness(&watch);
    postgres.start_again();
    service.wait_for("/readyz", 200, RECOVERY);
    assert_alive(&service, watch);
}

#[test]
fn black_holed_postgres_times_out_while_probes_stay_fast() {
    let postgres_port_holder = Postgres::start();
    postgres_port_holder.create_database("app");
    let proxy = FaultProxy::start(postgres_port_holder.port());
    let shared = Shared::new("pgblackhole");
    let url = format!("postgres://postgres@127.0.0.1:{}/app", proxy.port());
    let service = spawn(&shared.env_with(&url, &[]));
    service.wait_for("/readyz", 200, Duration::from_secs(30));
    let watch = service.watch_liveness();
    proxy.set(Fault::BlackHole);
    let began = Instant::now();
    let mut slowest = Duration::ZERO;
    while service.probe("/readyz").0 != 503 {
        assert!(
            began.elapsed() < DETECTION,
            "black hole not detected within {DETECTION:?}"
        );
        let probe = Instant::now();
        service.probe("/livez");
        slowest = slowest.max(probe.elapsed());
    }
    assert!(
        slowest < Duration::from_millis(500),
        "a probe took {slowest:?} during the outage"
    );
    assert!(
        check_output(&service, "postgres").contains("timed out"),
        "{}",
        check_output(&service, "postgres")
    );
    proxy.set(Fault::Pass);
    service.wait_for("/readyz", 200, RECOVERY);
    assert_alive(&service, watch);
}

#[test]
fn latency_above_the_check_timeout_fails_readiness() {
    let postgres = Postgres::start();
    postgres.create_database("app");
    let proxy = FaultProxy::start(postgres.port());
    let shared = Shared::new("pglatency");
    let url = format!("postgres://postgres@127.0.0.1:{}/app", proxy.port());
    let service = spawn(&shared.env_with(&url, &[]));
    service.wait_for("/readyz", 200, Duration::from_secs(30));
    let watch = service.watch_liveness();
    proxy.set(Fault::Latency(Duration::from_secs(2)));
    service.wait_for("/readyz", 503, DETECTION);
    assert!(check_output(&service, "postgres").contains("timed out"));
    proxy.set(Fault::Pass);
    service.wait_for("/readyz", 200, RECOVERY);
    assert_alive(&service, watch);
}

#[test]
fn startup_deadline_exceeded_exits_1_naming_the_dependency() {
    let shared = Shared::new("deadline");
    let closed = testkit::free_port();
    let url = format!("postgres://postgres:s3cr3t-pw@127.0.0.1:{closed}/app");
    let service = spawn(&shared.env_with(&url, &[("APP__STARTUP__DEADLINE", "3s")]));
    service.wait_for("/livez", 200, Duration::from_secs(10));
    let (status, took) = service.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(1), "{}", service.logs());
    assert!(took < Duration::from_secs(10), "exited after {took:?}");
    let logs = service.logs();
    assert!(
        logs.contains(
            "startup deadline of 3s exceeded in phase \\\"postgres pool\\\" waiting for postgres"
        ),
        "{logs}"
    );
    assert!(!logs.contains("s3cr3t-pw"), "password leaked:\n{logs}");
}

#[test]
fn every_request_is_bounded_when_the_database_freezes() {
    let shared = Shared::new("frozen");
    let postgres = Postgres::start();
    postgres.create_database("app");
    let query_timeout = Duration::from_secs(2);
    let service = spawn(&shared.env_with(
        &postgres.url("app"),
        &[("APP__DATABASE__QUERY_TIMEOUT", "2s")],
    ));
    service.wait_for_status("pass", Duration::from_secs(30));
    let id = uuid::Uuid::now_v7();
    // Warm the pool: the requests below find an open connection to the frozen server.
    for path in [example::one(id), example::page(5)] {
        assert!(service.api(&path).0 < 500, "{path}");
    }

    postgres.pause();
    let bound = query_timeout + Duration::from_secs(2);
    for path in [example::one(id), example::page(5)] {
        let began = Instant::now();
        let response = service.http().get(service.api_url(&path)).send();
        let took = began.elapsed();
        let response = response.unwrap_or_else(|e| panic!("GET {path} after {took:?}: {e}"));
        assert_eq!(
            response.status().as_u16(),
            503,
            "GET {path} against a frozen database"
        );
        assert!(took <= bound, "GET {path} took {took:?}, bound {bound:?}");
        assert!(response.headers().contains_key("retry-after"));
    }
    postgres.resume();
    testkit::wait_until("reads work again", RECOVERY, || {
        service.api(&example::one(id)).0 == 404
    });
}

#[test]
fn the_verbose_report_gives_an_error_class_not_the_servers_text() {
    let shared = Shared::new("leak");
    let postgres = Postgres::start();
    postgres.create_database("app");
    postgres.psql("app", "CREATE ROLE leaky_app_role LOGIN SUPERUSER");
    let url = format!(
        "postgres://leaky_app_role@127.0.0.1:{}/app",
        postgres.port()
    );
    let service = spawn(&shared.env_with(&url, &[]));
    service.wait_for_status("pass", Duration::from_secs(30));
    // The role may no longer log in: the check's next connection is refused by the server,
    // whose message names the role.
    postgres.psql("app", "ALTER ROLE leaky_app_role NOLOGIN");
    postgres.psql(
        "app",
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'leaky_app_role'",
    );
    service.wait_for("/readyz", 503, DETECTION);
    let output = check_output(&service, "postgres");
    assert!(output.contains("authentication failed"), "{output}");
    let report = service.probe("/readyz?verbose").2;
    assert!(!report.contains("leaky_app_role"), "{report}");
    assert!(!report.contains("127.0.0.1"), "{report}");
}
