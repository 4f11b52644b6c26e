//! `make bench`: measures shipshape's probes and startup against reference servers built in the
//! same run, prints a table, and regenerates docs/benchmarks.md and docs/benchmarks.svg.
//!
//! Absolute numbers on a shared 2-core machine (wrk competes with the server for CPU) mean
//! little; the ratios against the bare actix-web handler measured minutes apart are the result.

mod chart;
mod overload;
mod pipeline;
mod report;
mod request_path;
mod soak;

use anyhow::Context;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use testkit::load::{LoadReport, wrk};
use testkit::{Postgres, Service};

/// Load of every throughput run: 64 keep-alive connections for this long.
pub const CONNECTIONS: u32 = 64;
pub const RUN: Duration = Duration::from_secs(10);
// The machine's shared broker, for the service and the naive handler.
const RABBITMQ_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// One measured server.
#[derive(Debug, Clone)]
pub struct Row {
    pub name: &'static str,
    pub load: LoadReport,
}

/// Everything `make bench` measured.
#[derive(Debug, Clone)]
pub struct Results {
    pub bare: Row,
    pub livez: Row,
    pub readyz: Row,
    pub naive: Row,
    pub readyz_saturated: LoadReport,
    pub api_saturating: LoadReport,
    pub naive_transactions_per_1000: f64,
    pub ours_transactions_per_1000: f64,
    pub startup_median: Duration,
    pub startups: Vec<Duration>,
    /// PostgreSQL `kill -9` -> /readyz 503, sorted, one per trial.
    pub detections: Vec<Duration>,
    /// PostgreSQL back -> /readyz 200, sorted, one per trial.
    pub recoveries: Vec<Duration>,
    pub idle_rss: u64,
    pub loaded_rss: u64,
    pub binary_size: u64,
    /// The API's routes against the floor handler.
    pub request_path: Vec<request_path::Comparison>,
    // The relay and the consumer against their floors.
    pub pipeline: pipeline::Pipeline,
    /// Memory over ten minutes of mixed load; tracing exported against not.
    pub soak: soak::Soak,
}

fn main() -> anyhow::Result<()> {
    let root = workspace_root();
    let release = root.join("target/release");
    let service_binary = release.join("shipshape");
    for binary in ["shipshape", "bench-bare", "bench-naive", "bench-floor"] {
        anyhow::ensure!(
            release.join(binary).exists(),
            "{binary} is not built: run `make bench`"
        );
    }
    let database = format!("bench_{}", std::process::id());
    psql("postgres", &format!("CREATE DATABASE {database}"))?;
    // `bench request-path`, `bench detection`, `bench overload` and `bench pipeline`: one
    // section, printed, nothing written.
    let env = service_env(&database);
    let env = borrowed(&env);
    let section = std::env::args().nth(1);
    if section.as_deref() == Some("request-path") {
        let outcome = migrate(&service_binary, &env)
            .and_then(|()| request_path::measure(&release, &service_binary, &database, &env));
        drop_database(&database);
        let routes = outcome?;
        println!(
            "{}\n{}",
            report::request_path_rows(&routes),
            report::request_path_figures(&routes)
        );
        return Ok(());
    }
    if section.as_deref() == Some("overload") {
        let outcome = migrate(&service_binary, &env)
            .and_then(|()| overload::measure(&service_binary, &database, &env));
        drop_database(&database);
        println!("{}", report::overload_rows(&outcome?));
        return Ok(());
    }
    if section.as_deref() == Some("detection") {
        drop_database(&database);
        let (detections, recoveries) = detection_and_recovery(&service_binary)?;
        println!("{}", report::detection_rows(&detections, &recoveries));
        return Ok(());
    }
    if section.as_deref() == Some("pipeline") {
        let outcome = migrate(&service_binary, &env)
            .and_then(|()| pipeline::measure(&service_binary, &database, &env));
        drop_database(&database);
        println!("{}", report::pipeline_rows(&outcome?));
        return Ok(());
    }
    // The overload section last: it pins this process (and what it starts) to the first CPU.
    let outcome = measure(&release, &service_binary, &database).and_then(|results| {
        eprintln!("bench: overload, with and without the admission limit");
        Ok((
            results,
            overload::measure(&service_binary, &database, &env)?,
        ))
    });
    drop_database(&database);
    let (results, overload) = outcome?;

    let table = report::table(&results);
    let overload = report::overload_rows(&overload);
    println!("{table}\n{overload}");
    std::fs::write(
        root.join("docs/benchmarks.md"),
        report::document(&table, &overload),
    )
    .context("writing docs/benchmarks.md")?;
    chart::render(&results, &root.join("docs/benchmarks.svg"))?;
    println!("wrote docs/benchmarks.md and docs/benchmarks.svg");

    // Regression guard: ratios only, generous enough for a noisy shared machine.
    let throughput =
        results.readyz.load.requests_per_second / results.bare.load.requests_per_second;
    let p99 = ratio(results.readyz.load.p99, results.bare.load.p99);
    anyhow::ensure!(
        throughput >= 0.5,
        "regression: /readyz throughput is {throughput:.2}x the bare handler's"
    );
    anyhow::ensure!(
        p99 <= 3.0,
        "regression: /readyz p99 is {p99:.2}x the bare handler's"
    );
    anyhow::ensure!(
        results.ours_transactions_per_1000 < 1.0,
        "regression: probes cause database transactions"
    );
    let pipeline = &results.pipeline;
    anyhow::ensure!(
        pipeline.relay_vs_raw() >= 0.25 && pipeline.consumer_vs_relay() >= 0.5,
        "regression: the relay is {:.2}x the minimal publisher, the consumer {:.2}x the relay",
        pipeline.relay_vs_raw(),
        pipeline.consumer_vs_relay()
    );
    anyhow::ensure!(
        pipeline.relay_drained_after <= Duration::from_secs(30)
            && pipeline.consumer_caught_up_after <= Duration::from_secs(30),
        "regression: after the POST load the outbox took {:?} to drain and the consumer {:?}",
        pipeline.relay_drained_after,
        pipeline.consumer_caught_up_after
    );
    anyhow::ensure!(
        results.soak.rss_growth() < 0.5,
        "regression: RSS grew {:.0} % over the mixed load",
        results.soak.rss_growth() * 100.0
    );
    anyhow::ensure!(
        results.soak.tracing_ratio() >= 0.3,
        "regression: exporting traces leaves {:.2}x of the write throughput",
        results.soak.tracing_ratio()
    );
    // Under the goals (0.85x, 1.3x) by a margin for a noisy machine: a regression, not noise.
    for route in &results.request_path {
        let minimum = match route.route {
            // The write route also pays for the event pipeline on the same two cores (0.5x
            // today, docs/benchmarks.md says why); with the broker away it is held to 0.6.
            request_path::WRITE_ROUTE => 0.3,
            // The logged read pays for its access line and span (0.7x today).
            request_path::LOGGED_ROUTE => 0.4,
            _ => 0.6,
        };
        anyhow::ensure!(
            route.throughput() >= minimum && route.p99() <= 6.0,
            "regression: {} is {:.2}x the floor's throughput, p99 {:.2}x",
            route.route,
            route.throughput(),
            route.p99()
        );
    }
    Ok(())
}

fn drop_database(database: &str) {
    let _ = psql(
        "postgres",
        &format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"),
    );
}

/// The service as the request path and the pipeline are measured: the worker count and pool size
/// of the floor handler, plain TCP like it (libpq's default `prefer` would take TLS where the
/// server offers it).
fn service_env(database: &str) -> Vec<(&'static str, String)> {
    vec![
        (
            "APP__DATABASE__URL",
            format!("postgres://postgres@127.0.0.1:5432/{database}?sslmode=disable"),
        ),
        ("APP__SERVER__WORKERS", request_path::WORKERS.into()),
        ("APP__RABBITMQ__URL", RABBITMQ_URL.into()),
        ("APP__RABBITMQ__EXCHANGE", "bench.events".into()),
        ("APP__RABBITMQ__QUEUE", "bench.items".into()),
        ("RUST_LOG", "warn".into()),
    ]
}

/// `env` as the `(name, value)` pairs a spawned process takes.
fn borrowed<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// Starts the service once so its migrations create the schema.
fn migrate(service_binary: &Path, env: &[(&str, &str)]) -> anyhow::Result<()> {
    let service = Service::spawn_untuned(service_binary, env);
    service.wait_for("/readyz", 200, Duration::from_secs(30));
    Ok(())
}

pub fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64().max(1e-9)
}

fn measure(release: &Path, service_binary: &Path, database: &str) -> anyhow::Result<Results> {
    let database_url = format!("postgres://postgres@127.0.0.1:5432/{database}");
    let env = [
        ("APP__DATABASE__URL", database_url.as_str()),
        ("APP__RABBITMQ__URL", RABBITMQ_URL),
        ("APP__RABBITMQ__EXCHANGE", "bench.events"),
        ("APP__RABBITMQ__QUEUE", "bench.items"),
        ("RUST_LOG", "warn"),
    ];

    eprintln!("bench: the bare actix-web handler");
    let bare = {
        let port = testkit::free_port();
        let _server = Reference::start(&release.join("bench-bare"), port, &[])?;
        Row {
            name: "bare actix-web (reference)",
            load: wrk(&format!("http://127.0.0.1:{port}/"), CONNECTIONS, RUN),
        }
    };

    eprintln!("bench: shipshape probes");
    let service = Service::spawn_untuned(service_binary, &env);
    service.wait_for("/readyz", 200, Duration::from_secs(30));
    let probe = |path: &str| {
        wrk(
            &format!("http://127.0.0.1:{}{path}", service.management_port),
            CONNECTIONS,
            RUN,
        )
    };
    let idle_rss = service.rss_bytes();
    let idle_before = transactions(database)?;
    std::thread::sleep(RUN);
    let idle = transactions(database)? - idle_before;
    let before = transactions(database)?;
    let readyz = Row {
        name: "shipshape /readyz",
        load: probe("/readyz"),
    };
    let during = transactions(database)? - before;
    let ours_transactions_per_1000 =
        ((during - idle).max(0) as f64) * 1000.0 / readyz.load.requests.max(1) as f64;
    let livez = Row {
        name: "shipshape /livez",
        load: probe("/livez"),
    };

    eprintln!("bench: /readyz while the API is saturated");
    for n in 0..20 {
        let _ = service
            .http()
            .post(service.api_url("/v1/items"))
            .json(&serde_json::json!({"name": format!("bench {n}")}))
            .send();
    }
    let api_url = service.api_url("/v1/items?limit=5");
    let readyz_url = format!("http://127.0.0.1:{}/readyz", service.management_port);
    let (api_saturating, readyz_saturated, loaded_rss) = std::thread::scope(|scope| {
        let api = scope.spawn(|| wrk(&api_url, CONNECTIONS, RUN));
        std::thread::sleep(Duration::from_secs(1));
        let rss = service.rss_bytes();
        let probes = wrk(&readyz_url, 4, RUN - Duration::from_secs(2));
        let api = api
            .join()
            .map_err(|_| anyhow::anyhow!("the API load thread panicked"))?;
        Ok::<_, anyhow::Error>((api, probes, rss))
    })?;
    drop(service);

    eprintln!("bench: the naive readiness handler");
    let naive = {
        let port = testkit::free_port();
        let before = transactions(database)?;
        let server = Reference::start(
            &release.join("bench-naive"),
            port,
            &[
                ("DATABASE_URL", &database_url),
                ("RABBITMQ_URL", RABBITMQ_URL),
            ],
        )?;
        let load = wrk(&format!("http://127.0.0.1:{port}/readyz"), CONNECTIONS, RUN);
        // Busy backends report their statistics lazily; ending them flushes everything.
        drop(server);
        let caused = transactions(database)? - before;
        (
            Row {
                name: "naive readiness (queries per probe)",
                load,
            },
            caused,
        )
    };
    let naive_transactions_per_1000 = naive.1 as f64 * 1000.0 / naive.0.load.requests.max(1) as f64;

    eprintln!("bench: the request path against the floor handler");
    let service_env = service_env(database);
    let service_env = borrowed(&service_env);
    let request_path = request_path::measure(release, service_binary, database, &service_env)?;
    eprintln!("bench: the event pipeline against its floors");
    let pipeline = pipeline::measure(service_binary, database, &service_env)?;
    let item = request_path::seed(database)?;
    let soak = soak::measure(service_binary, database, &service_env, &item)?;

    eprintln!("bench: time from exec to ready (10 starts)");
    let mut startups = Vec::new();
    for _ in 0..10 {
        let began = Instant::now();
        let service = Service::spawn_untuned(service_binary, &env);
        loop {
            if service.probe("/readyz").0 == 200 {
                break;
            }
            anyhow::ensure!(
                began.elapsed() < Duration::from_secs(30),
                "not ready after 30 s"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        startups.push(began.elapsed());
    }
    startups.sort();
    let startup_median = (startups[4] + startups[5]) / 2;

    let (detections, recoveries) = detection_and_recovery(service_binary)?;

    Ok(Results {
        bare,
        livez,
        readyz,
        naive: naive.0,
        readyz_saturated,
        api_saturating,
        naive_transactions_per_1000,
        ours_transactions_per_1000,
        startup_median,
        startups,
        detections,
        recoveries,
        idle_rss,
        loaded_rss,
        binary_size: std::fs::metadata(service_binary)?.len(),
        request_path,
        pipeline,
        soak,
    })
}

/// Trials of PostgreSQL `kill -9` -> /readyz 503 -> restart -> /readyz 200.
const DETECTION_TRIALS: usize = 10;

/// PostgreSQL killed with `kill -9` under the default tuning, [`DETECTION_TRIALS`] times: the
/// detections and the recoveries, each sorted.
fn detection_and_recovery(service_binary: &Path) -> anyhow::Result<(Vec<Duration>, Vec<Duration>)> {
    eprintln!(
        "bench: PostgreSQL kill -9 detection and recovery, default tuning, {DETECTION_TRIALS} trials"
    );
    let postgres = Postgres::start();
    postgres.create_database("app");
    let url = postgres.url("app");
    let service = Service::spawn_untuned(
        service_binary,
        &[
            ("APP__DATABASE__URL", &url),
            ("APP__RABBITMQ__URL", RABBITMQ_URL),
            ("APP__RABBITMQ__QUEUE", "bench.items"),
            ("RUST_LOG", "warn"),
        ],
    );
    service.wait_for("/readyz", 200, Duration::from_secs(30));
    let (mut detections, mut recoveries) = (Vec::new(), Vec::new());
    for _ in 0..DETECTION_TRIALS {
        // From before the kill: the time kill9 takes to reach every process counts too.
        let killed = Instant::now();
        postgres.kill9();
        service.wait_for("/readyz", 503, Duration::from_secs(30));
        detections.push(killed.elapsed());
        postgres.start_again();
        recoveries.push(service.wait_for("/readyz", 200, Duration::from_secs(30)));
    }
    detections.sort();
    recoveries.sort();
    Ok((detections, recoveries))
}

/// A reference server process, killed on drop.
#[derive(Debug)]
pub struct Reference(Child);

impl Reference {
    pub fn start(binary: &Path, port: u16, env: &[(&str, &str)]) -> anyhow::Result<Reference> {
        let mut command = Command::new(binary);
        command
            .env("PORT", port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        testkit::wait_until("the reference server", Duration::from_secs(10), || {
            testkit::net::port_open(port)
        });
        Ok(Reference(child))
    }
}

impl Drop for Reference {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn transactions(database: &str) -> anyhow::Result<i64> {
    // Statistics are flushed by backends about once a second.
    std::thread::sleep(Duration::from_millis(1100));
    Ok(psql(
        "postgres",
        &format!(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = '{database}'"
        ),
    )?
    .parse()?)
}

fn psql(database: &str, sql: &str) -> anyhow::Result<String> {
    Ok(testkit::postgres::psql(5432, database, sql))
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap_or_else(|_| PathBuf::from("."))
}
