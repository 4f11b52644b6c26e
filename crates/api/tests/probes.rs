// @rabbitmq-begin
//! The probe contract, against the real binary on real PostgreSQL and RabbitMQ.
// @rabbitmq-else
// //! The probe contract, against the real binary on real PostgreSQL.
// @rabbitmq-end

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use std::time::Duration;

#[test]
fn probes_follow_the_contract() {
    let shared = Shared::new("probes");
    let mut env = shared.env();
    // What the chart renders: the postgres check's criticality said explicitly.
    env.push(("APP__HEALTH__POSTGRES__CRITICAL".into(), "true".into()));
    let service = spawn(&env);
    service.wait_for("/readyz", 200, Duration::from_secs(30));
    service.wait_for_status("pass", Duration::from_secs(10));

    let (status, media, body) = service.probe("/readyz");
    assert_eq!(
        (status, media.as_str(), body.as_str()),
        (200, "application/health+json", r#"{"status":"pass"}"#)
    );

    let (status, media, body) = service.probe("/readyz?verbose");
    assert_eq!((status, media.as_str()), (200, "application/health+json"));
    let verbose = json(&body);
    assert_eq!(verbose["status"], "pass");
    assert_eq!(verbose["serviceId"], "shipshape");
    let checks = [
        "postgres:connectivity",
        "rabbitmq:connectivity", // @rabbitmq
    ];
    for key in checks {
        let entry = &verbose["checks"][key][0];
        assert_eq!(entry["status"], "pass", "{key} in {body}");
        assert_eq!(entry["observedUnit"], "ms");
        assert!(entry["observedValue"].as_f64().unwrap() >= 0.0);
        assert!(entry["time"].as_str().unwrap().ends_with('Z'));
    }
    let affects = |key: &str| verbose["checks"][key][0]["affectsReadiness"].clone();
    assert_eq!(affects("postgres:connectivity"), true, "{body}");
    // @rabbitmq-begin
    // Criticality as the design says: a lagging relay never takes the pod out of its Service.
    assert_eq!(affects("rabbitmq:connectivity"), false, "{body}");
    assert_eq!(affects("outbox:lag"), false, "{body}");

    let excluded = json(&service.probe("/readyz?verbose&exclude=rabbitmq").2);
    assert!(
        excluded["checks"].get("rabbitmq:connectivity").is_none(),
        "{excluded}"
    );
    assert!(excluded["checks"].get("postgres:connectivity").is_some());
    // @rabbitmq-else
    // let excluded = json(&service.probe("/readyz?verbose&exclude=postgres").2);
    // assert!(
    //     excluded["checks"].get("postgres:connectivity").is_none(),
    //     "{excluded}"
    // );
    // @rabbitmq-end

    let (status, media, body) = service.probe("/readyz/postgres");
    assert_eq!((status, media.as_str()), (200, "application/health+json"));
    assert_eq!(
        json(&body)["checks"]["postgres:connectivity"][0]["status"],
        "pass"
    );
    assert_eq!(service.probe("/readyz/nosuch").0, 404);

    for path in ["/livez", "/startupz"] {
        let (status, media, body) = service.probe(path);
        assert_eq!(
            (status, media.as_str(), body.as_str()),
            (200, "application/health+json", r#"{"status":"pass"}"#),
            "{path}"
        );
    }

    let (status, media, text) = service.probe("/metrics");
    assert_eq!(status, 200);
    assert!(media.starts_with("text/plain"), "{media}");
    let samples = parse_exposition(&text);
    for (name, labels) in [
        ("health_check_status", r#"check="postgres""#),
        ("health_check_status", r#"check="rabbitmq""#), // @rabbitmq
        ("health_check_duration_seconds_count", r#"check="postgres""#),
        ("service_lifecycle_state", r#"state="ready""#),
        ("db_pool_connections", r#"state="max""#),
    ] {
        assert!(
            samples
                .iter()
                .any(|(n, l, _)| n == name && l.contains(labels)),
            "{name}{{{labels}}} missing in\n{text}"
        );
    }
    let ready = samples
        .iter()
        .find(|(n, l, _)| n == "service_lifecycle_state" && l.contains("ready"))
        .unwrap();
    assert_eq!(ready.2, 1.0);
    let pg = samples
        .iter()
        .find(|(n, l, _)| n == "health_check_status" && l.contains("postgres"))
        .unwrap();
    assert_eq!(pg.2, 1.0);
}

/// Parses the Prometheus text format strictly enough to fail on a malformed line.
fn parse_exposition(text: &str) -> Vec<(String, String, f64)> {
    let mut samples = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix('#') {
            let rest = rest.trim_start();
            assert!(
                rest.starts_with("HELP ") || rest.starts_with("TYPE "),
                "bad comment line {line:?}"
            );
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value in {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let (name, labels) = match series.split_once('{') {
            Some((name, labels)) => (
                name,
                labels
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("unclosed labels in {line:?}")),
            ),
            None => (series, ""),
        };
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line:?}"
        );
        samples.push((name.to_owned(), labels.to_owned(), value));
    }
    samples
}

#[test]
fn startup_waits_for_postgres_while_liveness_passes() {
    let shared = Shared::new("startup");
    let proxy = FaultProxy::start(5432);
    proxy.set(Fault::BlackHole);
    let mut env = shared.env();
    env[0].1 = format!(
        "postgres://postgres@127.0.0.1:{}/{}",
        proxy.port(),
        shared.name
    );
    let service = spawn(&env);
    service.wait_for("/livez", 200, Duration::from_secs(20));
    let (status, media, body) = service.probe("/startupz");
    assert_eq!(
        (status, media.as_str(), body.as_str()),
        (503, "application/health+json", r#"{"status":"fail"}"#)
    );
    assert_eq!(service.probe("/readyz").0, 503);
    // The API port is not bound before the service is ready.
    assert_eq!(service.api("/openapi.json").0, 0);
    proxy.set(Fault::Pass);
    service.wait_for("/startupz", 200, Duration::from_secs(20));
    service.wait_for("/readyz", 200, Duration::from_secs(10));
    assert_eq!(service.api("/openapi.json").0, 200);
}

#[test]
fn probe_load_adds_no_database_queries() {
    let shared = Shared::new("probeload");
    let service = spawn(&shared.env());
    service.wait_for("/readyz", 200, Duration::from_secs(30));
    // Measure the scheduler's own rate first, then the same window with probe load.
    let window = Duration::from_secs(3);
    let before = shared.transactions();
    std::thread::sleep(window);
    let idle = shared.transactions() - before;
    let before = shared.transactions();
    let began = std::time::Instant::now();
    let mut probes = 0;
    while began.elapsed() < window {
        assert_eq!(service.probe("/readyz").0, 200);
        probes += 1;
    }
    let loaded = shared.transactions() - before;
    assert!(probes > 500, "only {probes} probes in {window:?}");
    // pg_stat_database counts with some lag; allow the scheduler's jitter of a couple of runs.
    assert!(
        loaded <= idle + 3,
        "{probes} probes caused {loaded} transactions vs {idle} idle"
    );
}

#[test]
fn probes_answer_head_refuse_other_methods_and_clip_what_they_reflect() {
    let shared = Shared::new("probemethods");
    let service = spawn(&shared.env());
    service.wait_for("/readyz", 200, Duration::from_secs(30));
    let http = service.http();
    let url = |path: &str| format!("http://127.0.0.1:{}{path}", service.management_port);
    for path in [
        "/livez",
        "/readyz",
        "/startupz",
        "/readyz/postgres",
        "/metrics",
    ] {
        let head = http.head(url(path)).send().unwrap();
        assert_eq!(head.status().as_u16(), 200, "HEAD {path}");
        assert_eq!(head.text().unwrap(), "", "HEAD {path} has no body");
        let post = http.post(url(path)).send().unwrap();
        assert_eq!(post.status().as_u16(), 405, "POST {path}");
        assert_eq!(post.headers()["allow"], "GET, HEAD");
    }
    let long = "x".repeat(60_000);
    let (status, _, body) = service.probe(&format!("/readyz/{long}"));
    assert_eq!(status, 404);
    assert!(body.len() < 200, "{} bytes reflected", body.len());
}

#[test]
fn made_up_methods_do_not_grow_the_metrics() {
    let shared = Shared::new("methods");
    let service = spawn(&shared.env());
    service.wait_for("/readyz", 200, Duration::from_secs(30));
    for i in 0..300 {
        let method = reqwest::Method::from_bytes(format!("M{i}X").as_bytes()).unwrap();
        let _ = service
            .http()
            .request(method, service.api_url(example::PATH))
            .send()
            .unwrap();
    }
    let metrics = service.probe("/metrics").2;
    let series: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("http_requests_total{"))
        .collect();
    assert!(
        series.iter().all(|l| !l.contains("method=\"M")),
        "made-up methods became labels: {} series",
        series.len()
    );
    assert!(
        series.iter().any(|l| l.contains("method=\"other\"")),
        "{series:?}"
    );
}
