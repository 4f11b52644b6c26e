//! Graceful shutdown and what the logs show.

mod common;

use common::*;
use std::time::{Duration, Instant};

#[test]
fn sigterm_fails_readiness_at_once_keeps_serving_then_exits_0() {
    let shared = Shared::new("sigterm");
    let mut env = shared.env();
    env.push(("APP__SHUTDOWN__DRAIN_DELAY".into(), "2s".into()));
    env.push(("APP__SHUTDOWN__TIMEOUT".into(), "5s".into()));
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
    let mut env = shared.env();
    env.push(("APP__SHUTDOWN__DRAIN_DELAY".into(), "30s".into()));
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
    let service = spawn(&env_for(&postgres.url("app"), &shared.rabbitmq_url(), &[]));
    service.wait_for("/readyz", 200, Duration::from_secs(30));
    for _ in 0..200 {
        service.probe("/readyz");
        service.probe("/livez");
        service.probe("/metrics");
    }
    assert_eq!(service.api("/openapi.json").0, 200);
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
