//! The chart's probes against the real binary: the Deployment and ConfigMap rendered by
//! `helm template` drive a kubelet stand-in and the service's own settings.
//!
//! Ignored by a plain `cargo test` (it needs the rendered chart); `make probe-contract` (part of
//! `make test`) renders it and sets `CHART_JSON`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::chart::Chart;
use common::*;
use std::net::TcpStream;
use std::time::{Duration, Instant};
use testkit::kubelet::ProbeLoop;

/// Slack for a loaded 2-core machine on top of every computed bound.
const SLACK: Duration = Duration::from_secs(3);

#[test]
#[ignore = "needs the rendered chart: run through `make probe-contract`"]
fn the_charts_probes_tell_the_kubelet_the_truth() {
    let chart = Chart::rendered();
    assert_eq!(
        (
            chart.startup.path.as_str(),
            chart.liveness.path.as_str(),
            chart.readiness.path.as_str()
        ),
        ("/startupz", "/livez", "/readyz")
    );
    let postgres = Postgres::start();
    postgres.create_database("app");
    let shared = Shared::new("contract");
    let env = {
        let mut env = chart.env.clone();
        env.extend(shared.env_with(&postgres.url("app"), &[]));
        env
    };
    // The app's own detection bound, from the chart's check tuning.
    let interval = chart.seconds("APP__HEALTH__POSTGRES__INTERVAL");
    let timeout = chart.seconds("APP__HEALTH__POSTGRES__TIMEOUT");
    let threshold: u32 = chart
        .value("APP__HEALTH__POSTGRES__FAILURE_THRESHOLD")
        .parse()
        .unwrap();
    let app_detection = interval * threshold + timeout;
    let drain = chart.seconds("APP__SHUTDOWN__DRAIN_DELAY");

    let spawned = Instant::now();
    let service = spawn(&env);

    // Startup: passes inside the startup budget; liveness and readiness wait for it.
    let startup = ProbeLoop::start(service.management_port, chart.startup.clone());
    let budget = chart.startup.failure_budget();
    testkit::wait_until("the startup probe to pass", budget, || {
        startup.passed_at(spawned).is_some()
    });
    let started = startup.passed_at(spawned).unwrap();
    println!(
        "startup probe passed {:?} after exec (budget {budget:?})",
        started - spawned
    );
    drop(startup);
    let liveness = ProbeLoop::start(service.management_port, chart.liveness.clone());
    let readiness = ProbeLoop::start(service.management_port, chart.readiness.clone());
    let since = Instant::now();
    testkit::wait_until(
        "readiness",
        chart.readiness.failure_budget() + SLACK,
        || readiness.passed_at(since).is_some(),
    );

    // PostgreSQL dies: the kubelet takes the pod out within app detection + its own threshold.
    postgres.kill9();
    let killed = Instant::now();
    let bound = app_detection + chart.readiness.period * chart.readiness.failure_threshold + SLACK;
    testkit::wait_until("the kubelet to see readiness fail", bound, || {
        readiness.failed_at(killed).is_some()
    });
    println!(
        "readiness failed (kubelet view) {:?} after kill -9 (bound {bound:?})",
        readiness.failed_at(killed).unwrap() - killed
    );
    // Stay down long enough for liveness to have acted, were it wired to the database.
    std::thread::sleep(chart.liveness.failure_budget());
    assert!(
        liveness.longest_failure_run() < chart.liveness.failure_threshold,
        "liveness failed {} times in a row during a database outage",
        liveness.longest_failure_run()
    );

    // Recovery: ready again without a restart.
    postgres.start_again();
    let restarted = Instant::now();
    let recovery =
        interval + timeout + chart.readiness.period * chart.readiness.success_threshold + SLACK;
    testkit::wait_until("readiness to return", recovery, || {
        readiness.passed_at(restarted).is_some()
    });
    println!(
        "readiness back {:?} after restart",
        readiness.passed_at(restarted).unwrap() - restarted
    );

    // SIGTERM: readiness fails (kubelet view) before the API stops accepting; exit inside the grace period.
    let signalled = Instant::now();
    service.signal(Signal::SIGTERM);
    let mut api_closed = None;
    while api_closed.is_none() && signalled.elapsed() < chart.grace {
        if TcpStream::connect_timeout(
            &([127, 0, 0, 1], service.api_port).into(),
            Duration::from_millis(100),
        )
        .is_err()
        {
            api_closed = Some(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let api_closed = api_closed.expect("the API never stopped accepting");
    let (exit, _) = service.wait_exit(chart.grace);
    let exited = signalled.elapsed();
    assert_eq!(exit.code(), Some(0));
    assert!(
        exited <= chart.grace,
        "exit after {exited:?}, beyond terminationGracePeriodSeconds {:?}",
        chart.grace
    );
    let unready = readiness
        .failed_at(signalled)
        .expect("readiness never failed after SIGTERM");
    assert!(
        unready < api_closed,
        "the kubelet saw readiness fail {:?} after SIGTERM, but the API closed at {:?}",
        unready - signalled,
        api_closed - signalled
    );
    assert!(
        api_closed - signalled >= drain,
        "the API closed before the drain delay"
    );
    println!(
        "after SIGTERM: unready (kubelet) {:?}, API closed {:?}, exit {exited:?} (grace {:?})",
        unready - signalled,
        api_closed - signalled,
        chart.grace
    );
    assert_eq!(
        liveness.longest_failure_run(),
        0,
        "liveness must not fail at all in this scenario"
    );
}
