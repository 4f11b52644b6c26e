//! Memory and cost over time: minutes of mixed load (reads, writes, probes, scrapes) with the
//! resident memory read every minute, and the write path with traces exported to an OTLP
//! receiver against the same path with no exporter.

use std::path::Path;
use std::time::{Duration, Instant};
use testkit::Service;
use testkit::load::{LoadReport, wrk_scripted};
use testkit::otlp::OtlpReceiver;

/// Length of the mixed load, in minutes (`BENCH_SOAK_MINUTES` shortens it while iterating).
const MINUTES: u64 = 10;
/// API connections of the mixed load.
const CONNECTIONS: u32 = 16;
/// The write load of the tracing comparison.
const TRACED_CONNECTIONS: u32 = 32;
const TRACED: Duration = Duration::from_secs(10);

/// One request in ten writes, four list a page, five read one item.
const MIXED: &str = r#"
local n = 0
request = function()
  n = n + 1
  local kind = n % 10
  if kind == 0 then
    return wrk.format("POST", "/v1/items", {["Content-Type"] = "application/json"}, '{"name":"soak"}')
  elseif kind < 5 then
    return wrk.format("GET", "/v1/items?limit=20")
  end
  return wrk.format("GET", "/v1/items/ITEM")
end
"#;

/// Kubelet-like and Prometheus-like traffic on the management port: liveness and readiness,
/// and a scrape every tenth request, each connection pausing 10 ms between requests.
const MANAGEMENT: &str = r#"
local n = 0
request = function()
  n = n + 1
  if n % 10 == 0 then return wrk.format("GET", "/metrics") end
  if n % 2 == 0 then return wrk.format("GET", "/livez") end
  return wrk.format("GET", "/readyz")
end
delay = function() return 10 end
"#;

/// What the soak and the tracing comparison found.
#[derive(Debug, Clone)]
pub struct Soak {
    /// Resident memory at the end of each minute of the mixed load.
    pub rss: Vec<u64>,
    /// The API's mixed load over the whole window.
    pub api: LoadReport,
    /// Probes and scrapes over the same window.
    pub management: LoadReport,
    /// POST load with no exporter (`RUST_LOG=info`: spans exist, nothing leaves the process).
    pub untraced: LoadReport,
    /// The same load exporting every span over OTLP/HTTP to the testkit receiver.
    pub traced: LoadReport,
    /// Spans the receiver got during the traced run.
    pub spans_received: usize,
}

impl Soak {
    /// RSS growth from the end of minute 1 to the end of the last minute.
    pub fn rss_growth(&self) -> f64 {
        match (self.rss.first(), self.rss.last()) {
            (Some(&first), Some(&last)) if first > 0 => last as f64 / first as f64 - 1.0,
            _ => f64::NAN,
        }
    }

    /// Throughput with traces exported against without.
    pub fn tracing_ratio(&self) -> f64 {
        self.traced.requests_per_second / self.untraced.requests_per_second.max(1e-9)
    }
}

fn minutes() -> u64 {
    std::env::var("BENCH_SOAK_MINUTES")
        .ok()
        .and_then(|m| m.parse().ok())
        .filter(|m| *m >= 2)
        .unwrap_or(MINUTES)
}

/// Runs the soak on `database` (items seeded: `item` is one of them), then the tracing pair.
pub fn measure(
    service_binary: &Path,
    database: &str,
    env: &[(&str, &str)],
    item: &str,
) -> anyhow::Result<Soak> {
    let minutes = minutes();
    eprintln!("bench: {minutes} minutes of mixed load, RSS every minute");
    let service = Service::spawn_untuned(service_binary, env);
    service.wait_for("/readyz", 200, Duration::from_secs(30));
    let mixed = MIXED.replace("ITEM", item);
    let window = Duration::from_secs(minutes * 60);
    let api_url = service.api_url("");
    let management_url = format!("http://127.0.0.1:{}", service.management_port);
    let (api, management, rss) = std::thread::scope(|scope| {
        let api = scope.spawn(|| wrk_scripted(&api_url, CONNECTIONS, window, Some(&mixed)));
        let management = scope.spawn(|| wrk_scripted(&management_url, 2, window, Some(MANAGEMENT)));
        let began = Instant::now();
        let mut rss = Vec::new();
        for minute in 1..=minutes {
            // A clock, not a synchronisation: the reading is taken whatever the load does.
            let at = began + Duration::from_secs(minute * 60) - Duration::from_secs(1);
            std::thread::sleep(at.saturating_duration_since(Instant::now()));
            rss.push(service.rss_bytes());
            eprintln!(
                "bench: minute {minute}: RSS {:.1} MiB",
                *rss.last().unwrap_or(&0) as f64 / 1048576.0
            );
        }
        let api = api
            .join()
            .map_err(|_| anyhow::anyhow!("the API load panicked"))?;
        let management = management
            .join()
            .map_err(|_| anyhow::anyhow!("the management load panicked"))?;
        Ok::<_, anyhow::Error>((api, management, rss))
    })?;
    settle(database);
    drop(service);

    eprintln!("bench: POST load with traces exported over OTLP and without");
    let info: Vec<(&str, &str)> = env
        .iter()
        .copied()
        .filter(|(key, _)| *key != "RUST_LOG")
        .chain([("RUST_LOG", "info")])
        .collect();
    let untraced = write_load(service_binary, database, &info)?;
    let receiver = OtlpReceiver::start();
    let endpoint = receiver.endpoint();
    let mut exporting = info.clone();
    exporting.push(("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()));
    let traced = write_load(service_binary, database, &exporting)?;
    let spans_received = receiver.spans().len();
    anyhow::ensure!(
        spans_received > 0,
        "the traced run exported no span to the receiver"
    );
    Ok(Soak {
        rss,
        api,
        management,
        untraced,
        traced,
        spans_received,
    })
}

fn write_load(
    service_binary: &Path,
    database: &str,
    env: &[(&str, &str)],
) -> anyhow::Result<LoadReport> {
    let service = Service::spawn_untuned(service_binary, env);
    service.wait_for("/readyz", 200, Duration::from_secs(30));
    let load = wrk_scripted(
        &service.api_url("/v1/items"),
        TRACED_CONNECTIONS,
        TRACED,
        Some(crate::request_path::WRITE),
    );
    settle(database);
    // Stopped gracefully, so the exporter flushes what it holds before the spans are counted.
    service.signal(testkit::Signal::SIGTERM);
    service.wait_exit(Duration::from_secs(30));
    Ok(load)
}

/// Waits until the service's background work has caught up with what the load wrote, so the
/// next run does not start with a backlog of it.
fn settle(database: &str) {
    testkit::wait_until("the outbox drained", Duration::from_secs(120), || {
        testkit::postgres::psql(
            5432,
            database,
            "SELECT count(*) FROM outbox WHERE sent_at IS NULL",
        ) == "0"
    });
}
