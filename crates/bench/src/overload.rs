//! Overload: the API under an open-loop load, requests sent at a fixed rate whether or not the
//! answers keep up, each timed from the moment it was due, so a server that falls behind is
//! charged for every request it delayed (no coordinated omission, which a closed-loop tool such
//! as wrk has: its connections wait for answers and so stop offering load). Rates are multiples
//! of the route's saturation rate, measured first in the same run with wrk at 64 connections.
//!
//! The generator shares the machine's two cores with the server: at half the saturation rate of
//! `GET /v1/items/{id}` (about 5,000 requests/s) its own scheduling puts the p99 near 30 ms,
//! where wrk's closed loop sees a few milliseconds, so figures of cheap routes say as much about
//! the generator as about the server (docs/benchmarks.md, "Overload").

use crate::request_path::{WRITE, seed};
use crate::{CONNECTIONS, RUN};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use testkit::Service;
use testkit::load::wrk_scripted;
use tokio::time::Instant;

/// Multiples of the saturation rate offered, half first (the reference for the p99 goal).
pub const LOADS: [f64; 3] = [0.5, 2.0, 4.0];

/// Requests the generator holds open at most; past it a due request is counted as unsent (the
/// generator, not the server, would be the limit).
const IN_FLIGHT_CAP: usize = 4_000;

/// One open-loop run.
#[derive(Debug, Clone, Default)]
pub struct OpenLoop {
    /// Requests per second offered.
    pub offered: f64,
    /// Latencies of the 2xx answers, sorted.
    pub ok: Vec<Duration>,
    /// Latencies of the 503 answers, sorted.
    pub rejected: Vec<Duration>,
    /// Other statuses, transport errors and time-outs.
    pub failed: u64,
    /// Due requests the generator could not send (its in-flight cap reached).
    pub unsent: u64,
    /// Probe answers other than 200 during the run (`/livez` and `/readyz`), of `probes`.
    pub probe_failures: usize,
    pub probes: usize,
}

impl OpenLoop {
    /// 2xx answers per second of the run.
    pub fn goodput(&self) -> f64 {
        self.ok.len() as f64 / RUN.as_secs_f64()
    }
}

/// The 99th percentile of sorted `latencies` (zero for none).
pub fn p99(latencies: &[Duration]) -> Duration {
    latencies
        .get((latencies.len() * 99).div_ceil(100).saturating_sub(1))
        .copied()
        .unwrap_or_default()
}

/// One route: its saturation rate and a run at each of [`LOADS`].
#[derive(Debug, Clone)]
pub struct Route {
    pub route: &'static str,
    pub saturation: f64,
    pub runs: Vec<OpenLoop>,
}

/// Sends `rate` requests per second to `url` for [`RUN`] (a POST of `body` when given) and
/// sorts what came back.
pub fn open_loop(url: &str, body: Option<&'static str>, rate: f64) -> anyhow::Result<OpenLoop> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(IN_FLIGHT_CAP)
            .build()?;
        let url: Arc<str> = url.into();
        let mut tasks = tokio::task::JoinSet::new();
        let mut run = OpenLoop {
            offered: rate,
            ..OpenLoop::default()
        };
        let start = Instant::now();
        let total = (rate * RUN.as_secs_f64()) as u64;
        for n in 0..total {
            let due = start + Duration::from_secs_f64(n as f64 / rate);
            tokio::time::sleep_until(due).await;
            while let Some(done) = tasks.try_join_next() {
                record(&mut run, done?);
            }
            if tasks.len() >= IN_FLIGHT_CAP {
                run.unsent += 1;
                continue;
            }
            let (client, url) = (client.clone(), url.clone());
            tasks.spawn(async move {
                let request = match body {
                    Some(body) => client
                        .post(&*url)
                        .header("content-type", "application/json")
                        .body(body),
                    None => client.get(&*url),
                };
                let status = match request.send().await {
                    Ok(response) => {
                        let status = response.status().as_u16();
                        // Read to the end: the answer is not complete before its body.
                        response.bytes().await.map_or(0, |_| status)
                    }
                    Err(_) => 0,
                };
                (status, due.elapsed())
            });
        }
        while let Some(done) = tasks.join_next().await {
            record(&mut run, done?);
        }
        run.ok.sort();
        run.rejected.sort();
        Ok(run)
    })
}

fn record(run: &mut OpenLoop, (status, took): (u16, Duration)) {
    match status {
        200..=299 => run.ok.push(took),
        503 => run.rejected.push(took),
        _ => run.failed += 1,
    }
}

/// The two routes of the overload goal on the service at the chart's defaults (two workers,
/// `RUST_LOG=info`), each at its saturation rate's multiples.
pub fn measure(
    service_binary: &Path,
    database: &str,
    env: &[(&str, &str)],
) -> anyhow::Result<Vec<Route>> {
    let id = seed(database)?;
    let mut env = env.to_vec();
    env.retain(|(key, _)| *key != "RUST_LOG");
    env.push(("RUST_LOG", "info"));
    let routes: [(&'static str, String, Option<&'static str>); 2] = [
        ("GET /v1/items/{id}", format!("/v1/items/{id}"), None),
        ("POST /v1/items", "/v1/items".into(), Some(WRITE_BODY)),
    ];
    let mut measured = Vec::new();
    for (route, path, body) in routes {
        let service = Service::spawn_untuned(service_binary, &env);
        service.wait_for("/readyz", 200, Duration::from_secs(30));
        let url = service.api_url(&path);
        let saturation =
            wrk_scripted(&url, CONNECTIONS, RUN, body.map(|_| WRITE)).requests_per_second;
        eprintln!("bench: {route} saturates at {saturation:.0} requests/s");
        let runs = loads(&service, &url, body, route, saturation)?;
        measured.push(Route {
            route,
            saturation,
            runs,
        });
    }
    Ok(measured)
}

/// A run at each of [`LOADS`] against `service`, the probes watched throughout.
fn loads(
    service: &Service,
    url: &str,
    body: Option<&'static str>,
    route: &str,
    saturation: f64,
) -> anyhow::Result<Vec<OpenLoop>> {
    let mut runs = Vec::new();
    for multiple in LOADS {
        let livez = service.watch_probe("/livez");
        let readyz = service.watch_probe("/readyz");
        let mut run = open_loop(url, body, saturation * multiple)?;
        for watch in [livez, readyz] {
            let (polls, failures) = watch.finish();
            run.probes += polls;
            run.probe_failures += failures.len();
        }
        eprintln!(
            "bench: {route} at {multiple}x: {:.0} 2xx/s, p99 {:?}, {} 503s (p99 {:?}), {} failed, {} unsent",
            run.goodput(),
            p99(&run.ok),
            run.rejected.len(),
            p99(&run.rejected),
            run.failed,
            run.unsent
        );
        runs.push(run);
    }
    Ok(runs)
}

/// The body [`WRITE`] posts.
const WRITE_BODY: &str = r#"{"name":"bench"}"#;
