//! Zero-downtime proof: a rolling update of real replicas behind HAProxy under wrk load,
//! following the chart's own rollout settings. `make e2e` (part of `make test`) runs it.
//!
//! HAProxy stands in for the Service and kube-proxy (active checks on `/readyz`, no retries, no
//! redispatch); the driver stands in for the Deployment controller (maxSurge, maxUnavailable,
//! minReadySeconds) and the endpoints controller (a new replica joins only once ready; an old
//! one leaves after the endpoint-propagation lag or when HAProxy's own check sees it fail).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::chart::Chart;
use common::*;
use std::time::{Duration, Instant};
use testkit::balancer::{Balancer, Slot};
use testkit::load::{LoadReport, wrk_scripted};

/// What the load does during the rollout.
#[derive(Clone, Copy, PartialEq)]
enum Load {
    /// GET a page of the example's collection (`example::page(5)`) at full speed.
    Reads,
    /// POST to the example's collection at full speed: every replica's request pool busy, and
    /// its background work with it, while old, new and draining replicas together hold
    /// connections on a server with a stock `max_connections` (100). After the first replica is
    /// replaced, a next release's expand migration runs as its migration Job would (`ALTER
    /// TABLE` of the example's table under the write load); the replicas started after it run
    /// on a schema they do not know.
    Writes,
}

/// wrk's script of the writes: a `POST` of one body.
fn writes() -> String {
    format!(
        r#"
wrk.method = "POST"
wrk.body = '{}'
wrk.headers["Content-Type"] = "application/json"
"#,
        example::body("written during the rollout")
    )
}

/// Endpoint-propagation lag between SIGTERM and the balancer dropping the replica
/// (`E2E_PROPAGATION_LAG_MS`, default 1000; try up to 3000).
fn propagation_lag() -> Duration {
    Duration::from_millis(
        std::env::var("E2E_PROPAGATION_LAG_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1000),
    )
}

struct Outcome {
    load: LoadReport,
    /// Most sessions the replicas held on PostgreSQL at once.
    peak_connections: usize,
    /// Replica processes running at that moment (old, new and draining).
    peak_replicas: usize,
    rollout: Duration,
    stops: Vec<(i32, Duration)>,
    grace: Duration,
}

/// Runs 3 old replicas, then rolls them to 3 new ones under load. `blip` restarts PostgreSQL
/// (a throwaway instance) after the first new replica is in.
// @rabbitmq-begin
/// Under a write load, every item answered 201 must have its row and, once the new replicas
/// have caught up, its event consumed.
// @rabbitmq-else
// /// Under a write load, every item answered 201 must have its row.
// @rabbitmq-end
fn rolling_update(test: &str, drain: &str, blip: bool, kind: Load) -> Outcome {
    let chart = Chart::rendered();
    assert_eq!(
        chart.max_unavailable, 0,
        "the driver implements maxUnavailable 0"
    );
    let surge = usize::try_from(chart.max_surge.max(1)).unwrap();
    let replicas = chart.replicas;
    let postgres = Postgres::start();
    postgres.create_database("app");
    let shared = Shared::new(test);
    let mut env = chart.env.clone();
    env.retain(|(key, _)| key != "APP__SHUTDOWN__DRAIN_DELAY");
    env.push(("APP__SHUTDOWN__DRAIN_DELAY".into(), drain.into()));
    env.extend(shared.env_with(&postgres.url("app"), &[("RUST_LOG", "warn")]));
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();

    let slots: Vec<Slot> = (0..replicas * 2)
        .map(|_| Slot {
            api_port: testkit::free_port(),
            management_port: testkit::free_port(),
        })
        .collect();
    let balancer = Balancer::start(&slots);
    // Replica processes running: a sample's sessions are bounded by these times the total.
    let alive = std::sync::atomic::AtomicUsize::new(0);
    let launch = |i: usize| {
        alive.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Service::spawn_on(
            binary(),
            &pairs,
            slots[i].api_port,
            slots[i].management_port,
        )
    };

    let old: Vec<Service> = (0..replicas).map(launch).collect();
    for (i, replica) in old.iter().enumerate() {
        replica.wait_for("/readyz", 200, Duration::from_secs(30));
        balancer.enable(i);
    }
    for i in 0..replicas {
        testkit::wait_until(
            "haproxy to see the replica up",
            Duration::from_secs(10),
            || balancer.status(i) == "UP",
        );
    }
    // Something for the load to read.
    for n in 0..20 {
        let response = example::post(&old[0], &example::body(&format!("seed {n}")), None);
        assert_eq!(response.status().as_u16(), 201);
    }

    // The whole rollout must fit in the load window; the estimate errs on the long side.
    let step = chart.min_ready + chart.readiness.period + Duration::from_secs(2);
    let window = step * u32::try_from(replicas).unwrap()
        + chart.seconds("APP__SHUTDOWN__TIMEOUT")
        + Duration::from_secs(if blip { 25 } else { 10 });
    let writes = writes();
    let (url, connections, script) = match kind {
        Load::Reads => (
            format!("http://127.0.0.1:{}{}", balancer.port, example::page(5)),
            32,
            None,
        ),
        Load::Writes => (
            format!("http://127.0.0.1:{}{}", balancer.port, example::PATH),
            32,
            Some(writes.as_str()),
        ),
    };
    let per_pod: usize = chart
        .env
        .iter()
        .find(|(key, _)| key == "APP__DATABASE__MAX_CONNECTIONS")
        .and_then(|(_, value)| value.parse().ok())
        .expect("the chart sets APP__DATABASE__MAX_CONNECTIONS");
    let sessions = Sessions::default();
    let sampling = std::sync::atomic::AtomicBool::new(true);
    std::thread::scope(|scope| {
        // Stops the sampler even when an assertion below fails, or the scope would wait for it.
        let _stop_sampling = StopOnDrop(&sampling);
        let load = scope.spawn(|| wrk_scripted(&url, connections, window, script));
        scope.spawn(|| {
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                sessions.sample(&postgres, &alive, per_pod);
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        std::thread::sleep(Duration::from_secs(2));
        let began = Instant::now();
        let mut new: Vec<Service> = Vec::new();
        let mut stoppers = Vec::new();
        let mut index = 0;
        while index < replicas {
            let batch: Vec<usize> = (index..(index + surge).min(replicas)).collect();
            if kind == Load::Writes && index == 1 {
                let tuning = bootstrap::config::MigrationSettings::default();
                let applied = migrate_to_next_release(&postgres.url("app"), &tuning).unwrap();
                assert_eq!(applied, ["V1000__add_priority"]);
            }
            for &i in &batch {
                new.push(launch(replicas + i));
            }
            if blip && index == 1 {
                // PostgreSQL restarts while the second new replica starts: it must not join
                // before it is ready, and the rollout must wait for it.
                postgres.stop();
                std::thread::sleep(Duration::from_secs(3));
                postgres.start_again();
            }
            for &i in &batch {
                // The endpoints controller: in rotation only once readiness passes.
                new[i].wait_for("/readyz", 200, Duration::from_secs(60));
                balancer.enable(replicas + i);
            }
            // minReadySeconds: the new replicas must stay ready before an old one goes.
            let until = Instant::now() + chart.min_ready;
            while Instant::now() < until {
                for &i in &batch {
                    assert_eq!(
                        new[i].probe("/readyz").0,
                        200,
                        "a new replica fell over during minReadySeconds"
                    );
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            for &i in &batch {
                let replica = &old[i];
                let balancer = &balancer;
                let alive = &alive;
                replica.signal(Signal::SIGTERM);
                let signalled = Instant::now();
                stoppers.push(scope.spawn(move || {
                    // Endpoint removal: after the propagation lag, or once HAProxy's own
                    // check has marked the replica down, whichever comes first.
                    while signalled.elapsed() < propagation_lag() && balancer.status(i) == "UP" {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    balancer.disable(i);
                    let (exit, _) = replica.wait_exit(Duration::from_secs(120));
                    alive.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                    (exit.code().unwrap_or(-1), signalled.elapsed())
                }));
            }
            index += surge;
        }
        let stops: Vec<(i32, Duration)> = stoppers.into_iter().map(|s| s.join().unwrap()).collect();
        let rollout = began.elapsed();
        let load = load.join().unwrap();
        sampling.store(false, std::sync::atomic::Ordering::Relaxed);
        let sessions = sessions.taken();
        assert!(sessions.peak > 0, "no PostgreSQL session was ever sampled");
        assert!(
            sessions.over.is_empty(),
            "replicas held more than {per_pod} sessions each in {} samples, the first: {:?}",
            sessions.over.len(),
            &sessions.over[..sessions.over.len().min(3)]
        );
        // A stock PostgreSQL's max_connections (100) minus its 3 reserved ones.
        assert!(
            sessions.peak <= 97,
            "{} sessions at the peak ({}) would exhaust a stock PostgreSQL",
            sessions.peak,
            sessions.at_peak
        );
        assert!(
            rollout + Duration::from_secs(2) < window,
            "the rollout ({rollout:?}) outlasted the load window ({window:?})"
        );
        for replica in &new {
            assert!(
                replica.try_exit().is_none(),
                "a new replica exited:\n{}",
                replica.logs()
            );
            assert_eq!(replica.probe("/readyz").0, 200);
        }
        if blip {
            for replica in &new {
                let logs = replica.logs();
                assert!(
                    !logs.contains("\"level\":\"ERROR\""),
                    "a new replica logged an error:\n{logs}"
                );
            }
        }
        if kind == Load::Writes {
            let rows: u64 = postgres
                .psql("app", &format!("SELECT count(*) FROM {}", example::TABLE))
                .parse()
                .unwrap();
            assert!(
                rows >= load.requests + 20,
                "{} writes answered 201 but only {rows} rows (20 seeded)",
                load.requests
            );
            assert_eq!(
                postgres.psql(
                    "app",
                    &format!("SELECT count(*) FROM {} WHERE priority = 0", example::TABLE)
                ),
                rows.to_string(),
                "the expand migration's column took its default on every row"
            );
            // @rabbitmq-begin
            testkit::wait_until(
                "every item's event consumed by the new replicas",
                Duration::from_secs(120),
                || {
                    postgres.psql("app", "SELECT count(*) FROM processed_events")
                        == rows.to_string()
                },
            );
            let created = postgres.psql(
                "app",
                &format!(
                    "SELECT count(*) FROM outbox WHERE routing_key = '{}'",
                    example::CREATED
                ),
            );
            assert_eq!(created, rows.to_string(), "an item without its event");
            // @rabbitmq-end
        }
        Outcome {
            load,
            peak_connections: sessions.peak,
            peak_replicas: sessions.replicas_at_peak,
            rollout,
            stops,
            grace: chart.grace,
        }
    })
}

/// PostgreSQL sessions sampled during a rollout, by `application_name`.
#[derive(Default)]
struct SessionSamples {
    peak: usize,
    at_peak: String,
    replicas_at_peak: usize,
    /// Samples where the replicas held more than their totals allow.
    over: Vec<String>,
}

#[derive(Default)]
struct Sessions(std::sync::Mutex<SessionSamples>);

impl Sessions {
    /// One look at `pg_stat_activity`; tolerant: the server may be full, or restarting (the
    /// blip). The replicas running before and after the query bound what it may see. Client
    /// backends only: an autovacuum worker on the example's table (the writes scenario) has the
    /// database's name but no `application_name`, and takes no `max_connections` slot.
    fn sample(&self, postgres: &Postgres, alive: &std::sync::atomic::AtomicUsize, per_pod: usize) {
        let before = alive.load(std::sync::atomic::Ordering::SeqCst);
        let out = std::process::Command::new("psql")
            .args(["-h", "127.0.0.1", "-p", &postgres.port().to_string()])
            .args(["-U", "postgres", "-XAtqc"])
            .arg(
                "SELECT application_name || '=' || count(*) FROM pg_stat_activity \
                 WHERE datname = 'app' AND backend_type = 'client backend' \
                 GROUP BY application_name ORDER BY 1",
            )
            .arg("postgres")
            .output();
        let replicas = before.max(alive.load(std::sync::atomic::Ordering::SeqCst));
        let breakdown = out
            .map(|out| {
                String::from_utf8_lossy(&out.stdout)
                    .trim()
                    .replace('\n', " ")
            })
            .unwrap_or_default();
        let count = |migrations: bool| -> usize {
            breakdown
                .split(' ')
                .filter_map(|part| part.rsplit_once('='))
                .filter(|(name, _)| migrations || *name != "shipshape-migrations")
                .filter_map(|(_, n)| n.parse::<usize>().ok())
                .sum()
        };
        let mut samples = self.0.lock().unwrap();
        // The migration Job's session is not a replica's.
        if count(false) > replicas * per_pod {
            samples
                .over
                .push(format!("{replicas} replicas: {breakdown}"));
        }
        if count(true) > samples.peak {
            samples.peak = count(true);
            samples.replicas_at_peak = replicas;
            samples.at_peak = breakdown;
        }
    }

    fn taken(&self) -> SessionSamples {
        std::mem::take(&mut self.0.lock().unwrap())
    }
}

/// Clears a flag when dropped (also while a panic unwinds).
struct StopOnDrop<'a>(&'a std::sync::atomic::AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(false, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Prints the figures and, under `make e2e`, saves them for docs/rolling-updates.md.
fn print(name: &str, outcome: &Outcome) {
    if let Ok(dir) = std::env::var("E2E_OUT") {
        let stops: Vec<serde_json::Value> = outcome
            .stops
            .iter()
            .map(|(code, took)| serde_json::json!({"exit": code, "seconds": took.as_secs_f64()}))
            .collect();
        let figures = serde_json::json!({
            "scenario": name,
            "requests": outcome.load.requests,
            "non_2xx": outcome.load.non_2xx,
            "socket_errors": outcome.load.socket_errors,
            "peak_connections": outcome.peak_connections,
            "peak_replicas": outcome.peak_replicas,
            "rollout_seconds": outcome.rollout.as_secs_f64(),
            "propagation_lag_ms": propagation_lag().as_millis() as u64,
            "stops": stops,
            "grace_seconds": outcome.grace.as_secs(),
        });
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            format!("{dir}/{}.json", name.replace(' ', "-")),
            figures.to_string(),
        )
        .unwrap();
    }
    let stops: Vec<String> = outcome
        .stops
        .iter()
        .map(|(code, took)| format!("exit {code} after {:.1} s", took.as_secs_f64()))
        .collect();
    println!(
        "E2E {name}: requests={} non2xx={} socket_errors={} peak_connections={} ({} replicas) rollout={:.1}s stops=[{}]",
        outcome.load.requests,
        outcome.load.non_2xx,
        outcome.load.socket_errors,
        outcome.peak_connections,
        outcome.peak_replicas,
        outcome.rollout.as_secs_f64(),
        stops.join("; ")
    );
}

#[test]
#[ignore = "needs haproxy, wrk and the rendered chart: run through `make e2e`"]
fn rolling_update_with_the_charts_defaults_loses_no_request() {
    let chart = Chart::rendered();
    let drain = format!("{}s", chart.seconds("APP__SHUTDOWN__DRAIN_DELAY").as_secs());
    let outcome = rolling_update("rollout", &drain, false, Load::Reads);
    print("defaults", &outcome);
    assert_lossless(&outcome, 50_000, "requests");
}

#[test]
#[ignore = "needs haproxy, wrk and the rendered chart: run through `make e2e`"]
fn negative_control_without_a_drain_delay_loses_requests() {
    let outcome = rolling_update("nodrain", "0s", false, Load::Reads);
    print("no drain delay", &outcome);
    // If this sees no failure, the harness cannot see failures and proves nothing.
    assert!(
        outcome.load.non_2xx + outcome.load.socket_errors > 0,
        "the harness saw no failure without a drain delay:\n{}",
        outcome.load.raw
    );
}

#[test]
#[ignore = "needs haproxy, wrk and the rendered chart: run through `make e2e`"]
fn rolling_update_through_a_postgres_restart_waits_and_crashes_nothing() {
    let chart = Chart::rendered();
    let drain = format!("{}s", chart.seconds("APP__SHUTDOWN__DRAIN_DELAY").as_secs());
    let outcome = rolling_update("rolloutblip", &drain, true, Load::Reads);
    print("postgres restart mid-rollout", &outcome);
    for (code, _) in &outcome.stops {
        assert_eq!(*code, 0, "an old replica crashed");
    }
}

#[test]
#[ignore = "needs haproxy, wrk and the rendered chart: run through `make e2e`"]
fn writes_through_a_rolling_update_all_succeed() {
    let chart = Chart::rendered();
    let drain = format!("{}s", chart.seconds("APP__SHUTDOWN__DRAIN_DELAY").as_secs());
    let outcome = rolling_update("rolloutwrite", &drain, false, Load::Writes);
    print("writes", &outcome);
    assert_lossless(&outcome, 2_000, "writes");
}

/// Enough load to prove anything, none of it lost, every old replica out cleanly in time.
fn assert_lossless(outcome: &Outcome, minimum: u64, what: &str) {
    assert!(
        outcome.load.requests >= minimum,
        "only {} {what}: not enough load to prove anything",
        outcome.load.requests
    );
    assert_eq!(
        (outcome.load.non_2xx, outcome.load.socket_errors),
        (0, 0),
        "{what} lost:\n{}",
        outcome.load.raw
    );
    for (code, took) in &outcome.stops {
        assert_eq!(*code, 0);
        assert!(
            *took <= outcome.grace,
            "a replica took {took:?}, beyond its grace period"
        );
    }
}
