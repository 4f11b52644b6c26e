//! A dependency the crate knows nothing about, added through the public API only: a TCP check
//! (what a Redis, a cache or any TCP service needs) registered next to nothing else, seen in
//! `/readyz?verbose`, in `/metrics` and in the log as its dependency comes and goes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use actix_web::{App, test, web};
use health::{Check, CheckFailure, CheckPolicy, Health, LifecycleState, Observation, Status};
use std::time::{Duration, Instant};
use testkit::logs::CapturedLogs;
use tokio::net::{TcpListener, TcpStream};

/// The whole check a new TCP dependency needs: connect within the policy's timeout.
struct TcpCheck {
    address: std::net::SocketAddr,
}

#[async_trait::async_trait]
impl Check for TcpCheck {
    async fn run(&self) -> Result<Observation, CheckFailure> {
        let began = Instant::now();
        TcpStream::connect(self.address)
            .await
            .map_err(|e| CheckFailure::new(format!("connecting: {}", e.kind())))?;
        Ok(Observation::latency(began.elapsed()))
    }
}

async fn wait_for(health: &Health, selector: &str, wanted: Status) {
    let mut listener = health.listen(selector).unwrap();
    tokio::time::timeout(
        Duration::from_secs(10),
        listener.wait_until(|s| s == wanted),
    )
    .await
    .unwrap_or_else(|_| panic!("{selector} never became {wanted}"));
}

#[actix_web::test]
async fn a_custom_check_shows_in_readiness_metrics_and_logs() {
    let logs = CapturedLogs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = server.local_addr().unwrap();
    let policy = CheckPolicy::builder()
        .interval(Duration::from_millis(100))
        .timeout(Duration::from_millis(100))
        .failure_threshold(1)
        .critical(false)
        .build()
        .unwrap();
    let health = Health::builder("demo", "1.0.0")
        .check("redis", policy, TcpCheck { address })
        .build()
        .unwrap();
    health.advance(LifecycleState::Ready);
    let stop = health::CancellationToken::new();
    let _scheduler = health.spawn_scheduler(stop.clone());
    let app = test::init_service(
        App::new()
            .app_data(web::Data::new(health.clone()))
            .configure(health::http::configure),
    )
    .await;

    wait_for(&health, "redis", Status::Pass).await;
    let verbose: serde_json::Value = test::call_and_read_body_json(
        &app,
        test::TestRequest::get().uri("/readyz?verbose").to_request(),
    )
    .await;
    let entry = &verbose["checks"]["redis:connectivity"][0];
    assert_eq!(entry["status"], "pass", "{verbose}");
    assert_eq!(entry["observedUnit"], "ms", "{verbose}");

    // The dependency goes away: a non-critical check turns readiness to warn, not fail.
    drop(server);
    wait_for(&health, "redis", Status::Fail).await;
    let verbose: serde_json::Value = test::call_and_read_body_json(
        &app,
        test::TestRequest::get().uri("/readyz?verbose").to_request(),
    )
    .await;
    assert_eq!(verbose["status"], "warn", "{verbose}");
    let output = verbose["checks"]["redis:connectivity"][0]["output"]
        .as_str()
        .unwrap();
    assert!(output.starts_with("connecting: "), "{output}");

    let metrics = String::from_utf8(
        test::call_and_read_body(&app, test::TestRequest::get().uri("/metrics").to_request())
            .await
            .to_vec(),
    )
    .unwrap();
    assert!(
        metrics.contains("health_check_status{check=\"redis\",critical=\"false\"} 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("health_check_transitions_total{check=\"redis\""),
        "{metrics}"
    );
    let log = logs.text();
    assert!(
        log.contains("health check failing") && log.contains("redis"),
        "{log}"
    );
    stop.cancel();
}
