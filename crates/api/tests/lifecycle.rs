//! Graceful shutdown and what the logs show.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use std::time::{Duration, Instant};

#[test]
fn sigterm_fails_readiness_at_once_keeps_serving_then_exits_0() {
    let shared = Shared::new("sigterm");
    let env = shared.env_with(
        &shared.database_url(),
        &[
            ("APP__SHUTDOWN__DRAIN_DELAY", "2s"),
            ("APP__SHUTDOWN__TIMEOUT", "5s"),
        ],
    );
    let service = spawn(&env);
    service.wait_for("/readyz", 200, Duration::from_secs(30));
    let signalled = Instant::now();
    service.signal(Signal::SIGTERM);
    // Readiness fails from the first moment (signal delivery is asynchronous: allow 500 ms)...
    let flipped = service.wait_for("/readyz", 503, Duration::from_millis(500));
    println!("readiness failed {flipped:?} after SIGTERM");
    let (_, _, body) = service.probe("/readyz");
    assert_eq!(body, r#"{"status":"fail"}"#);
    // ...liveness does not (Kubernetes must not restart a pod that is shutting down cleanly)...
    assert_eq!(service.probe("/livez").0, 200);
    // ...and the API keeps serving during the drain delay.
    let mut served = 0;
    while signalled.elapsed() < Duration::from_millis(1500) {
        assert_eq!(
            service.api("/openapi.json").0,
            200,
            "refused during the drain delay"
        );
        served += 1;
    }
    assert!(served > 10);
    let (exit, _) = service.wait_exit(Duration::from_secs(2 + 5 + 5));
    let total = signalled.elapsed();
    assert_eq!(exit.code(), Some(0), "{}", service.logs());
    assert!(
        total >= Duration::from_secs(2),
        "exited before the drain delay: {total:?}"
    );
    assert!(
        total < Duration::from_secs(2 + 5),
        "took {total:?}, beyond drain + timeout"
    );
    assert_eq!(
        service.api("/openapi.json").0,
        0,
        "still accepting after exit"
    );
    let logs = service.logs();
    let draining = logs.find("\"to\":\"draining\"").expect("draining logged");
    let stopped = logs.find("\"to\":\"stopped\"").expect("stopped logged");
    assert!(draining < stopped);
}

#[test]
fn a_second_signal_exits_at_once() {
    let shared = Shared::new("sigtwice");
    let env = shared.env_with(
        &shared.database_url(),
        &[("APP__SHUTDOWN__DRAIN_DELAY", "30s")],
    );
    let service = spawn(&env);
    service.wait_for("/readyz", 200, Duration::from_secs(30));
    service.signal(Signal::SIGTERM);
    service.wait_for("/readyz", 503, Duration::from_secs(5));
    service.signal(Signal::SIGINT);
    let (exit, took) = service.wait_exit(Duration::from_secs(5));
    assert_eq!(exit.code(), Some(130));
    assert!(took < Duration::from_secs(5));
}

#[test]
fn probes_are_not_access_logged_and_state_changes_are_logged_once() {
    let postgres = Postgres::start();
    postgres.create_database("app");
    let shared = Shared::new("quietlogs");
    // The test client is the trusted proxy: the address it forwards is the client's.
    let service = spawn(&shared.env_with(
        &postgres.url("app"),
        &[("APP__SERVER__TRUSTED_PROXIES", "10.0.0.0/8, 127.0.0.1")],
    ));
    service.wait_for("/readyz", 200, Duration::from_secs(30));
    for _ in 0..200 {
        service.probe("/readyz");
        service.probe("/livez");
        service.probe("/metrics");
    }
    let response = service
        .http()
        .get(service.api_url("/openapi.json"))
        .header("X-Forwarded-For", "203.0.113.9")
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    postgres.stop();
    service.wait_for("/readyz", 503, DETECTION);
    // Keep probing while it stays down for several more check intervals.
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        service.probe("/readyz");
    }
    postgres.start_again();
    service.wait_for("/readyz", 200, Duration::from_secs(20));
    let logs = service.logs();
    let requests: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("\"message\":\"request\""))
        .collect();
    assert_eq!(
        requests.len(),
        1,
        "only the API request is access-logged:\n{}",
        requests.join("\n")
    );
    assert!(requests[0].contains("/openapi.json"));
    assert!(
        requests[0].contains(r#""client_ip":"203.0.113.9""#),
        "{}",
        requests[0]
    );
    assert!(
        !logs.contains("/readyz") && !logs.contains("/livez"),
        "a probe reached the logs"
    );
    let failing = logs
        .lines()
        .filter(|l| l.contains("health check failing") && l.contains("\"check\":\"postgres\""))
        .count();
    let recovered = logs
        .lines()
        .filter(|l| l.contains("health check recovered") && l.contains("\"check\":\"postgres\""))
        .count();
    assert_eq!(
        (failing, recovered),
        (1, 2),
        "one failure, one recovery after the initial pass:\n{logs}"
    );
}

/// Holds the example's table exclusively for `hold` ([`example::lock`]), so API requests that
/// touch it stay in flight; returns once the lock is held, with the thread that releases it.
fn lock_for(database: &str, hold: Duration) -> std::thread::JoinHandle<()> {
    let locker = example::lock(database);
    let database = database.to_owned();
    std::thread::spawn(move || {
        std::thread::sleep(hold);
        example::release(&database, locker);
    })
}

#[test]
fn a_request_in_flight_at_sigterm_completes() {
    let shared = Shared::new("inflight");
    let env = shared.env_with(
        &shared.database_url(),
        &[
            ("APP__SHUTDOWN__DRAIN_DELAY", "1s"),
            ("APP__SHUTDOWN__TIMEOUT", "10s"),
        ],
    );
    let service = spawn(&env);
    service.wait_for("/readyz", 200, Duration::from_secs(30));
    let lock = lock_for(&shared.name, Duration::from_secs(3));
    std::thread::scope(|scope| {
        let in_flight = scope.spawn(|| list(&service));
        // Wait until the request is inside the service, blocked on the lock.
        wait_for_a_request_on_a_lock(&shared);
        service.signal(Signal::SIGTERM);
        service.wait_for("/readyz", 503, Duration::from_millis(500));
        assert_eq!(
            in_flight.join().unwrap().unwrap(),
            200,
            "the in-flight request must complete"
        );
    });
    lock.join().unwrap();
    let (exit, _) = service.wait_exit(Duration::from_secs(15));
    assert_eq!(exit.code(), Some(0));
}

#[test]
fn a_request_slower_than_the_shutdown_leaves_the_background_work_its_time() {
    let shared = Shared::new("slowstop");
    let env = shared.env_with(
        &shared.database_url(),
        &[
            ("APP__SHUTDOWN__DRAIN_DELAY", "1s"),
            ("APP__SHUTDOWN__TIMEOUT", "3s"),
        ],
    );
    let service = spawn(&env);
    service.wait_for_status("pass", Duration::from_secs(30));
    // The request waits on the lock until its query timeout (5 s): past the whole budget.
    let lock = lock_for(&shared.name, Duration::from_secs(8));
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let _ = list(&service);
        });
        wait_for_a_request_on_a_lock(&shared);
        service.signal(Signal::SIGTERM);
        service.wait_exit(Duration::from_secs(15));
    });
    lock.join().unwrap();
    let logs = service.logs();
    let cut: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("shutdown step cut short"))
        .collect();
    // The slow request may be cut; the background work stops alongside it, settled.
    assert!(
        cut.iter().all(|l| l.contains("\"step\":\"api server\"")),
        "steps other than the API's were cut short:\n{logs}"
    );
    // @rabbitmq-begin
    assert!(logs.contains("consumer stopped"), "{logs}");
    assert!(logs.contains("outbox relay stopped"), "{logs}");
    // @rabbitmq-end
}

#[test]
fn a_saturated_pool_does_not_flip_readiness_and_shows_in_the_gauges() {
    let shared = Shared::new("saturated");
    let env = shared.env_with(
        &shared.database_url(),
        &[
            ("APP__DATABASE__REQUEST_CONNECTIONS", "2"),
            ("APP__DATABASE__POOL_WAIT_TIMEOUT", "3s"),
            ("APP__DATABASE__QUERY_TIMEOUT", "10s"),
        ],
    );
    let service = spawn(&env);
    service.wait_for("/readyz", 200, Duration::from_secs(30));
    let lock = lock_for(&shared.name, Duration::from_secs(4));
    std::thread::scope(|scope| {
        let requests: Vec<_> = (0..5).map(|_| scope.spawn(|| list(&service))).collect();
        // Both pooled connections busy, the other requests queued for one.
        testkit::wait_until("a saturated pool", Duration::from_secs(5), || {
            let metrics = service.probe("/metrics").2;
            metrics.contains("db_pool_connections{state=\"in_use\"} 2")
                && !metrics.contains("db_pool_connections{state=\"waiting\"} 0")
        });
        // Checks use their own connection: readiness stays green throughout.
        let until = std::time::Instant::now() + Duration::from_secs(2);
        while std::time::Instant::now() < until {
            assert_eq!(
                service.probe("/readyz").0,
                200,
                "a busy pool must not fail readiness"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        for request in requests {
            let status = request.join().unwrap().unwrap();
            assert!(status == 200 || status == 503, "got {status}");
        }
    });
    lock.join().unwrap();
}

/// Until a session of `shared`'s database waits on a lock (the blocked request is inside).
fn wait_for_a_request_on_a_lock(shared: &Shared) {
    testkit::wait_until(
        "the request to wait on the lock",
        Duration::from_secs(10),
        || {
            psql(&format!(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = '{}' AND wait_event_type = 'Lock'",
                shared.name
            )) != "0"
        },
    );
}

/// `GET` of the example's collection with 20 s to answer (it waits on the lock); its status.
fn list(service: &Service) -> reqwest::Result<u16> {
    service
        .http()
        .get(service.api_url(example::PATH))
        .timeout(Duration::from_secs(20))
        .send()
        .map(|r| r.status().as_u16())
}
