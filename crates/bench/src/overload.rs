//! Overload: the API under an open-loop load, requests sent at a fixed rate whether or not the
//! answers keep up, each timed from the moment it was due, so a server that falls behind is
//! charged for every request it delayed (no coordinated omission, which a closed-loop tool such
//! as wrk has: its connections wait for answers and so stop offering load). Rates are multiples
//! of the route's saturation rate, measured first in the same run with wrk at 64 connections.
//!
//! The generator (and wrk) run on the first CPU, the service on the second: on two shared cores
//! the generator took what it spent from the server, and the figures of cheap routes said as
//! much about the generator as about the server (docs/benchmarks.md, "Overload").

use crate::request_path::{WRITE, seed, settle};
use crate::{CONNECTIONS, RUN};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use testkit::Service;
use testkit::load::wrk_scripted;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Multiples of the saturation rate offered, half first (the reference for the p99 goal).
pub const LOADS: [f64; 3] = [0.5, 2.0, 4.0];

/// Connections the generator holds at most: a due request waits for a free one, and the wait
/// counts in its latency (it was due), so a slow server is charged for every request it held up.
const GENERATOR_CONNECTIONS: usize = 1_000;

/// A client gives up on a request this long after it was due (reqwest's and many SDKs' order
/// of magnitude): one that waited longer for a connection is counted failed, never sent.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// An answer a user still waits for: slower ones count in the goodput, not in the prompt one.
pub const PROMPT: Duration = Duration::from_secs(1);

/// One open-loop run.
#[derive(Debug, Clone, Default)]
pub struct OpenLoop {
    /// Requests per second offered.
    pub offered: f64,
    /// From the first request due to the last answer: longer than [`RUN`] when answers lag.
    pub took: Duration,
    /// Latencies of the 2xx answers, sorted.
    pub ok: Vec<Duration>,
    /// How late the generator sent requests (from due to written), sorted: its own limit.
    pub send_lag: Vec<Duration>,
    /// Latencies of the 503 answers, sorted.
    pub rejected: Vec<Duration>,
    /// Other statuses, transport errors and time-outs.
    pub failed: u64,
    /// Probe answers other than 200 during the run (`/livez` and `/readyz`), of `probes`.
    pub probe_failures: usize,
    pub probes: usize,
}

impl OpenLoop {
    /// 2xx answers per second of the run, until its last answer.
    pub fn goodput(&self) -> f64 {
        self.ok.len() as f64 / self.took.max(RUN).as_secs_f64()
    }

    /// 2xx answers within [`PROMPT`] of being due, per second of the run.
    pub fn prompt_goodput(&self) -> f64 {
        let prompt = self.ok.partition_point(|took| *took <= PROMPT);
        prompt as f64 / self.took.max(RUN).as_secs_f64()
    }
}

/// The 99th percentile of sorted `latencies` (zero for none).
pub fn p99(latencies: &[Duration]) -> Duration {
    latencies
        .get((latencies.len() * 99).div_ceil(100).saturating_sub(1))
        .copied()
        .unwrap_or_default()
}

/// One route under one admission setting: its saturation rate and a run at each of [`LOADS`].
#[derive(Debug, Clone)]
pub struct Route {
    pub route: &'static str,
    /// `limit` (the default admission limit) or `control` (none).
    pub admission: &'static str,
    pub saturation: f64,
    pub runs: Vec<OpenLoop>,
}

/// Sends `rate` requests per second (`request`, raw HTTP/1.1) to `address` for [`RUN`] and sorts
/// what came back. Raw requests on kept connections cost the generator a few microseconds each,
/// so four times a cheap route's saturation rate fits on one core.
pub fn open_loop(address: SocketAddr, request: &str, rate: f64) -> anyhow::Result<OpenLoop> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let request: Arc<[u8]> = request.as_bytes().into();
    runtime.block_on(async {
        let (send, due) = tokio::sync::mpsc::unbounded_channel::<Instant>();
        let due = Arc::new(tokio::sync::Mutex::new(due));
        let connections: Vec<_> = (0..GENERATOR_CONNECTIONS)
            .map(|_| tokio::spawn(connection(address, request.clone(), due.clone())))
            .collect();
        let start = Instant::now();
        let total = (rate * RUN.as_secs_f64()) as u64;
        for n in 0..total {
            let at = start + Duration::from_secs_f64(n as f64 / rate);
            tokio::time::sleep_until(at).await;
            send.send(at)?;
        }
        drop(send);
        let mut run = OpenLoop {
            offered: rate,
            ..OpenLoop::default()
        };
        for connection in connections {
            for (status, took, lag) in connection.await? {
                run.send_lag.push(lag);
                match status {
                    200..=299 => run.ok.push(took),
                    503 => run.rejected.push(took),
                    _ => run.failed += 1,
                }
            }
        }
        run.took = start.elapsed();
        run.ok.sort();
        run.rejected.sort();
        run.send_lag.sort();
        Ok(run)
    })
}

/// One generator connection: takes the next due request, sends it, reads the answer, and
/// returns each answer's status (0: a transport error, or none within [`CLIENT_TIMEOUT`]), its
/// latency and how late it was sent.
async fn connection(
    address: SocketAddr,
    request: Arc<[u8]>,
    due: Arc<tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<Instant>>>,
) -> Vec<(u16, Duration, Duration)> {
    let mut answers = Vec::new();
    let mut stream = None;
    loop {
        let Some(at) = due.lock().await.recv().await else {
            return answers;
        };
        let lag = at.elapsed();
        let Some(left) = CLIENT_TIMEOUT.checked_sub(lag) else {
            answers.push((0, lag, lag));
            continue;
        };
        let exchanged = tokio::time::timeout(left, exchange(&mut stream, address, &request)).await;
        let status = match exchanged {
            Ok(Ok(status)) => status,
            _ => {
                stream = None;
                0
            }
        };
        answers.push((status, at.elapsed(), lag));
    }
}

/// Sends `request` on the kept connection (opening one first if none) and reads the answer's
/// status line, headers and `Content-Length` body.
async fn exchange(
    stream: &mut Option<BufReader<TcpStream>>,
    address: SocketAddr,
    request: &[u8],
) -> std::io::Result<u16> {
    let connection = match stream {
        Some(connection) => connection,
        None => stream.insert(BufReader::new(TcpStream::connect(address).await?)),
    };
    connection.get_mut().write_all(request).await?;
    let mut line = String::new();
    connection.read_line(&mut line).await?;
    let status = line.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let (mut length, mut close) = (0, false);
    loop {
        line.clear();
        if connection.read_line(&mut line).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let header = line.trim_end().to_ascii_lowercase();
        if header.is_empty() {
            break;
        }
        if let Some(value) = header.strip_prefix("content-length:") {
            length = value.trim().parse().unwrap_or(0);
        }
        close |= header == "connection: close";
    }
    let mut body = vec![0; length];
    connection.read_exact(&mut body).await?;
    if close {
        *stream = None;
    }
    Ok(status)
}

/// The two routes of the overload goal on the service at the chart's defaults (two workers,
/// `RUST_LOG=info`), each at its saturation rate's multiples, with the default admission limit
/// and without one (the control). The generator runs on the first core and the service on the
/// second, so what the generator spends is not taken from the server (PostgreSQL may use both).
pub fn measure(
    service_binary: &Path,
    database: &str,
    env: &[(&str, &str)],
) -> anyhow::Result<Vec<Route>> {
    let id = seed(database)?;
    pin(std::process::id(), 0)?;
    let mut env = env.to_vec();
    env.retain(|(key, _)| *key != "RUST_LOG");
    env.push(("RUST_LOG", "info"));
    let routes: [(&'static str, String, Option<&'static str>); 2] = [
        ("GET /v1/items/{id}", format!("/v1/items/{id}"), None),
        ("POST /v1/items", "/v1/items".into(), Some(WRITE_BODY)),
    ];
    let mut measured = Vec::new();
    for (route, path, body) in routes {
        let mut saturation = 0.0;
        for admission in ["control", "limit"] {
            let mut env = env.clone();
            if admission == "control" {
                env.push(("APP__SERVER__MAX_IN_FLIGHT", "1000000"));
            }
            settle(database);
            let service = Service::spawn_untuned(service_binary, &env);
            pin(service.pid(), 1)?;
            service.wait_for("/readyz", 200, Duration::from_secs(30));
            // Again, ready: a thread started while the first pass ran may have escaped it.
            pin(service.pid(), 1)?;
            let url = service.api_url(&path);
            if admission == "control" {
                // Without the limit: wrk's connections would otherwise count refusals.
                saturation =
                    wrk_scripted(&url, CONNECTIONS, RUN, body.map(|_| WRITE)).requests_per_second;
                eprintln!("bench: {route} saturates at {saturation:.0} requests/s");
            }
            let runs = loads(&service, &path, body, route, saturation)?;
            measured.push(Route {
                route,
                admission,
                saturation,
                runs,
            });
        }
    }
    Ok(measured)
}

/// Moves every thread of process `pid` onto CPU `core` (threads it starts later inherit it).
fn pin(pid: u32, core: usize) -> anyhow::Result<()> {
    let status = std::process::Command::new("taskset")
        .args(["-a", "-p", "-c", &core.to_string(), &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .status()?;
    anyhow::ensure!(
        status.success(),
        "taskset could not pin process {pid} to CPU {core}"
    );
    Ok(())
}

/// A run at each of [`LOADS`] against `service`, the probes watched throughout.
fn loads(
    service: &Service,
    path: &str,
    body: Option<&'static str>,
    route: &str,
    saturation: f64,
) -> anyhow::Result<Vec<OpenLoop>> {
    let address = SocketAddr::from(([127, 0, 0, 1], service.api_port));
    let request = match body {
        Some(body) => format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
        None => format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"),
    };
    let mut runs = Vec::new();
    for multiple in LOADS {
        let livez = service.watch_probe("/livez");
        let readyz = service.watch_probe("/readyz");
        let mut run = open_loop(address, &request, saturation * multiple)?;
        for watch in [livez, readyz] {
            let (polls, failures) = watch.finish();
            run.probes += polls;
            run.probe_failures += failures.len();
        }
        eprintln!(
            "bench: {route} at {multiple}x: {:.0} 2xx/s ({:.0} within 1 s), p99 {:?}, {} 503s (p99 {:?}), {} failed, send lag p99 {:?}",
            run.goodput(),
            run.prompt_goodput(),
            p99(&run.ok),
            run.rejected.len(),
            p99(&run.rejected),
            run.failed,
            p99(&run.send_lag),
        );
        runs.push(run);
    }
    Ok(runs)
}

/// The body [`WRITE`] posts.
const WRITE_BODY: &str = r#"{"name":"bench"}"#;
