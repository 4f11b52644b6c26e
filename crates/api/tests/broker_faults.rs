//! Broker faults: a throwaway RabbitMQ node killed, black-holed and put under a resource alarm
//! while the service runs. RabbitMQ is not critical by default: readiness warns (200) and the
//! outbox keeps every write; critical, it fails readiness. `/livez` never fails.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use std::time::{Duration, Instant};

const RECOVERY: Duration = Duration::from_secs(20);

/// A service on the shared PostgreSQL (own database) and a throwaway RabbitMQ node.
fn on_throwaway_rabbitmq(test: &str, critical: bool) -> (Shared, RabbitMq, Service) {
    let shared = Shared::new(test);
    let rabbit = RabbitMq::start();
    let critical = if critical { "true" } else { "false" };
    let service = spawn(&env_for(
        &shared.database_url(),
        &rabbit.url(),
        &[("APP__HEALTH__RABBITMQ__CRITICAL", critical)],
    ));
    service.wait_for("/readyz", 200, Duration::from_secs(30));
    service.wait_for_status("pass", Duration::from_secs(15));
    (shared, rabbit, service)
}

#[test]
fn rabbitmq_kill9_warns_by_default_and_recovers() {
    let (_shared, rabbit, service) = on_throwaway_rabbitmq("rmqkill", false);
    let watch = service.watch_liveness();
    rabbit.kill9();
    service.wait_for_status("warn", DETECTION);
    // Non-critical: degraded, still in the Service.
    assert_eq!(service.probe("/readyz").0, 200);
    assert_eq!(service.probe("/readyz/rabbitmq").0, 503);
    rabbit.start_again();
    service.wait_for_status("pass", RECOVERY);
    assert_alive(&service, watch);
    assert!(
        service
            .logs()
            .contains("broker connected, topology declared")
    );
}

#[test]
fn a_dropped_broker_connection_is_reported_within_a_second() {
    let shared = Shared::new("rmqevent");
    let rabbit = RabbitMq::start();
    // The rabbitmq check's default tuning (every 2 s, 1 s timeout, 2 failures).
    let service = spawn(&env_for(
        &shared.database_url(),
        &rabbit.url(),
        &[
            ("APP__HEALTH__RABBITMQ__INTERVAL", "2s"),
            ("APP__HEALTH__RABBITMQ__TIMEOUT", "1s"),
        ],
    ));
    service.wait_for_status("pass", Duration::from_secs(30));
    let killed = Instant::now();
    rabbit.kill9();
    service.wait_for("/readyz/rabbitmq", 503, DETECTION);
    let took = killed.elapsed();
    println!("broker connection dropped -> rabbitmq failing after {took:?}");
    // The poll path alone takes up to 2 x 2 s + 1 s.
    assert!(took < Duration::from_secs(2), "took {took:?}");
}

#[test]
fn rabbitmq_kill9_fails_readiness_when_critical() {
    let (_shared, rabbit, service) = on_throwaway_rabbitmq("rmqcrit", true);
    let watch = service.watch_liveness();
    rabbit.kill9();
    service.wait_for("/readyz", 503, DETECTION);
    rabbit.start_again();
    service.wait_for("/readyz", 200, RECOVERY);
    service.wait_for_status("pass", RECOVERY);
    assert_alive(&service, watch);
}

#[test]
fn both_down_at_once_then_back() {
    let postgres = Postgres::start();
    postgres.create_database("app");
    let rabbit = RabbitMq::start();
    let service = spawn(&env_for(&postgres.url("app"), &rabbit.url(), &[]));
    service.wait_for("/readyz", 200, Duration::from_secs(30));
    service.wait_for_status("pass", Duration::from_secs(15));
    let watch = service.watch_liveness();
    postgres.kill9();
    rabbit.kill9();
    service.wait_for("/readyz", 503, DETECTION);
    let verbose = json(&service.probe("/readyz?verbose").2);
    assert_eq!(verbose["status"], "fail");
    postgres.start_again();
    rabbit.start_again();
    service.wait_for_status("pass", RECOVERY);
    assert_alive(&service, watch);
}

#[test]
fn starts_with_both_down_and_becomes_ready_when_they_return() {
    let postgres = Postgres::start();
    postgres.create_database("app");
    let rabbit = RabbitMq::start();
    postgres.kill9();
    rabbit.kill9();
    let service = spawn(&env_for(
        &postgres.url("app"),
        &rabbit.url(),
        &[("APP__STARTUP__DEADLINE", "120s")],
    ));
    service.wait_for("/livez", 200, Duration::from_secs(20));
    let watch = service.watch_liveness();
    // Startup is held by PostgreSQL; give it a few backoff rounds.
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        assert_eq!(service.probe("/startupz").0, 503);
        assert_eq!(service.probe("/readyz").0, 503);
        std::thread::sleep(Duration::from_millis(100));
    }
    postgres.start_again();
    service.wait_for("/startupz", 200, RECOVERY);
    // RabbitMQ is not critical: ready (warn) before the broker is back.
    service.wait_for_status("warn", RECOVERY);
    rabbit.start_again();
    service.wait_for_status("pass", RECOVERY);
    assert_alive(&service, watch);
}

#[test]
fn a_black_holed_broker_does_not_stall_reconnection() {
    let shared = Shared::new("mqhole");
    let rabbit = RabbitMq::start();
    let proxy = FaultProxy::start(rabbit.port());
    proxy.set(Fault::BlackHole);
    let url = format!("amqp://guest:guest@127.0.0.1:{}/%2f", proxy.port());
    let service = spawn(&env_for(
        &shared.database_url(),
        &url,
        &[("APP__RABBITMQ__CONNECT_TIMEOUT", "2s")],
    ));
    // Not critical: ready, degraded.
    service.wait_for_status("warn", Duration::from_secs(30));
    // The attempt into the black hole is given up, not waited on for minutes.
    testkit::wait_until(
        "a connection attempt given up",
        Duration::from_secs(15),
        || service.logs().contains("broker connection failed"),
    );
    proxy.set(Fault::Pass);
    service.wait_for_status("pass", RECOVERY);
}

#[test]
fn a_broker_under_a_resource_alarm_is_reported() {
    let shared = Shared::new("mqalarm");
    let rabbit = RabbitMq::start();
    let service = spawn(&env_for(&shared.database_url(), &rabbit.url(), &[]));
    service.wait_for_status("pass", Duration::from_secs(30));
    // A publishing connection: the relay sends this item's event.
    let created = example::post(&service, &example::body("before the alarm"), None);
    assert_eq!(created.status().as_u16(), 201);
    testkit::wait_until("the event consumed", Duration::from_secs(20), || {
        psql_in(&shared.name, "SELECT count(*) FROM processed_events") == "1"
    });

    rabbit.ctl(&["set_vm_memory_high_watermark", "0.000001"]);
    // The broker blocks a connection when it next publishes: the relay, with this event.
    let during = example::post(&service, &example::body("during the alarm"), None);
    assert_eq!(
        during.status().as_u16(),
        201,
        "writes do not wait for the broker"
    );
    service.wait_for_status("warn", DETECTION);
    assert_eq!(service.probe("/readyz/rabbitmq").0, 503);
    assert!(
        check_output(&service, "rabbitmq").contains("blocked"),
        "{}",
        service.probe("/readyz?verbose").2
    );
    rabbit.ctl(&["set_vm_memory_high_watermark", "0.4"]);
    service.wait_for_status("pass", RECOVERY);
}

#[test]
fn a_frozen_broker_cannot_hold_shutdown_past_its_deadline() {
    let shared = Shared::new("frozenmq");
    let rabbit = RabbitMq::start();
    let service = spawn(&env_for(
        &shared.database_url(),
        &rabbit.url(),
        &[
            ("APP__SHUTDOWN__DRAIN_DELAY", "1s"),
            ("APP__SHUTDOWN__TIMEOUT", "4s"),
        ],
    ));
    service.wait_for_status("pass", Duration::from_secs(30));
    rabbit.pause();
    let signalled = Instant::now();
    service.signal(Signal::SIGTERM);
    // drain 1 s + everything else 4 s, plus 1 s for the process to go.
    let bound = Duration::from_secs(1 + 4 + 1);
    let (exit, _) = service.wait_exit(bound + Duration::from_secs(10));
    let took = signalled.elapsed();
    rabbit.resume();
    let logs = service.logs();
    assert_eq!(exit.code(), Some(0), "{logs}");
    assert!(
        took <= bound,
        "exit {took:?} after SIGTERM, bound {bound:?}\n{logs}"
    );
    assert!(
        logs.contains("shutdown step cut short"),
        "a step was cut short, and the log must say which:\n{logs}"
    );
}

#[test]
fn a_broker_outage_costs_no_cpu() {
    let (_shared, rabbit, service) = on_throwaway_rabbitmq("rmqidle", false);
    rabbit.kill9();
    service.wait_for_status("warn", DETECTION);
    // A measurement window, not a synchronisation: the relay and the consumer wait for the
    // broker to come back, and waiting must be sleeping.
    let before = service.cpu_time();
    std::thread::sleep(Duration::from_secs(5));
    let used = service.cpu_time() - before;
    println!("CPU used in 5 s with the broker down: {used:?}");
    assert!(
        used < Duration::from_secs(1),
        "{used:?} of CPU in 5 s while the broker was down: something spins"
    );
    rabbit.start_again();
    service.wait_for_status("pass", RECOVERY);
}
