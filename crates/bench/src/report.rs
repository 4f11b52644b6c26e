//! The results as a table and as docs/benchmarks.md.

use crate::{Results, ratio};
use std::time::Duration;

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// The markdown table printed on stdout and embedded in the document, ratios first.
pub fn table(r: &Results) -> String {
    let bare = &r.bare.load;
    let throughput = |rps: f64| format!("{:.2}x", rps / bare.requests_per_second);
    let mut out = String::new();
    out.push_str("| measure | value | target |\n|---|---|---|\n");
    out.push_str(&format!(
        "| /readyz throughput vs bare handler | **{}** | >= 0.9x |\n",
        throughput(r.readyz.load.requests_per_second)
    ));
    out.push_str(&format!(
        "| /readyz p99 vs bare handler | **{:.2}x** | <= 1.5x |\n",
        ratio(r.readyz.load.p99, bare.p99)
    ));
    out.push_str(&format!(
        "| /livez throughput vs bare handler | **{}** | >= 0.9x |\n",
        throughput(r.livez.load.requests_per_second)
    ));
    out.push_str(&format!(
        "| /livez p99 vs bare handler | **{:.2}x** | <= 1.5x |\n",
        ratio(r.livez.load.p99, bare.p99)
    ));
    out.push_str(&format!(
        "| naive readiness throughput vs bare handler | {} | (the pattern replaced) |\n",
        throughput(r.naive.load.requests_per_second)
    ));
    out.push_str(&format!(
        "| /readyz throughput vs naive readiness | **{:.1}x** | |\n",
        r.readyz.load.requests_per_second / r.naive.load.requests_per_second
    ));
    out.push_str(&format!("| database transactions per 1000 probes: shipshape / naive | **{:.2}** / {:.0} | 0 / - |\n", r.ours_transactions_per_1000, r.naive_transactions_per_1000));
    out.push_str(&format!("| /readyz p99 with the API saturated vs idle /readyz p99 | {:.2}x ({} vs {}) | isolation |\n", ratio(r.readyz_saturated.p99, r.readyz.load.p99), ms(r.readyz_saturated.p99), ms(r.readyz.load.p99)));
    out.push_str(&format!(
        "| exec -> /readyz 200, median of 10 | {} | <= 150 ms |\n",
        ms(r.startup_median)
    ));
    out.push_str(&format!(
        "| PostgreSQL kill -9 -> /readyz 503 (default tuning) | {} | <= 5 s (2 x 2 s + 1 s) |\n",
        ms(r.detection)
    ));
    out.push_str(&format!(
        "| PostgreSQL back -> /readyz 200 | {} | <= 3 s + restart |\n",
        ms(r.recovery)
    ));
    for route in &r.request_path {
        out.push_str(&format!(
            "| `{}` throughput vs floor handler | **{:.2}x** | >= 0.85x |\n",
            route.route,
            route.throughput()
        ));
        out.push_str(&format!(
            "| `{}` p99 vs floor handler | **{:.2}x** | <= 1.3x |\n",
            route.route,
            route.p99()
        ));
    }
    out.push_str(&format!("| idle RSS | {} | <= 30 MiB |\n", mib(r.idle_rss)));
    out.push_str(&format!(
        "| RSS with the API saturated | {} | |\n",
        mib(r.loaded_rss)
    ));
    out.push_str(&format!(
        "| release binary size | {} | |\n",
        mib(r.binary_size)
    ));
    out.push_str("\nAbsolute figures (64 connections, 10 s each, wrk on the same 2 cores):\n\n");
    out.push_str("| server | requests/s | p50 | p99 | non-2xx | socket errors |\n|---|---|---|---|---|---|\n");
    for row in [&r.bare, &r.livez, &r.readyz, &r.naive] {
        let l = &row.load;
        out.push_str(&format!(
            "| {} | {:.0} | {} | {} | {} | {} |\n",
            row.name,
            l.requests_per_second,
            ms(l.p50),
            ms(l.p99),
            l.non_2xx,
            l.socket_errors
        ));
    }
    let a = &r.api_saturating;
    out.push_str(&format!(
        "| API `GET /v1/items?limit=5` (saturating load) | {:.0} | {} | {} | {} | {} |\n",
        a.requests_per_second,
        ms(a.p50),
        ms(a.p99),
        a.non_2xx,
        a.socket_errors
    ));
    let s = &r.readyz_saturated;
    out.push_str(&format!(
        "| /readyz at 4 connections during that load | {:.0} | {} | {} | {} | {} |\n",
        s.requests_per_second,
        ms(s.p50),
        ms(s.p99),
        s.non_2xx,
        s.socket_errors
    ));
    for route in &r.request_path {
        for (server, l) in [("service", &route.ours), ("floor handler", &route.floor)] {
            out.push_str(&format!(
                "| `{}` on {server} | {:.0} | {} | {} | {} | {} |\n",
                route.route,
                l.requests_per_second,
                ms(l.p50),
                ms(l.p99),
                l.non_2xx,
                l.socket_errors
            ));
        }
    }
    let starts: Vec<String> = r
        .startups
        .iter()
        .map(|d| format!("{:.0}", d.as_secs_f64() * 1000.0))
        .collect();
    out.push_str(&format!("\nStartups (ms, sorted): {}\n", starts.join(", ")));
    out
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    format!("{cores} cores ({cpu})")
}

fn today() -> String {
    let output = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output();
    output
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// What the naive readiness handler does per probe.
// @rabbitmq-begin
const NAIVE_PROBE: &str = "runs `SELECT 1` on a pooled connection and opens an AMQP channel";
// @rabbitmq-else
// const NAIVE_PROBE: &str = "runs `SELECT 1` on a pooled connection";
// @rabbitmq-end

/// What the service does besides answering while it is measured.
// @rabbitmq-begin
const BACKGROUND: &str = " (during the POST run its relay publishes every event and its consumer processes it, on the same 2 cores)";
// @rabbitmq-else
// const BACKGROUND: &str = "";
// @rabbitmq-end

/// docs/benchmarks.md, regenerated by every `make bench`.
pub fn document(table: &str) -> String {
    format!(
        "# Benchmarks\n\n\
         Generated by `make bench` on {} - machine: {}. Every figure is measured in the same run as\n\
         the references it is compared with; on a shared 2-core machine wrk competes with the server\n\
         for CPU, so the **ratios** are the result and the absolute numbers are context.\n\n\
         ![throughput and p99 next to the references](benchmarks.svg)\n\n\
         {table}\n\
         ## What is compared\n\n\
         - **bare actix-web**: `crates/bench/src/bin/bare.rs`, a constant 200 on one worker: the cost\n\
           floor of any handler.\n\
         - **shipshape /livez, /readyz**: the release binary's management server (one worker), reading\n\
           the cached snapshot; non-verbose answers are static bytes.\n\
         - **naive readiness**: `crates/bench/src/bin/naive.rs`, the pattern this template replaces: every\n\
           probe {NAIVE_PROBE}. Its transactions\n\
           per probe are counted in `pg_stat_database` of a dedicated database; shipshape's are the\n\
           transactions during its probe run minus an idle window of the same length (the scheduler's\n\
           own checks).\n\
         - **request path**: `GET /v1/items/{{id}}`, `GET /v1/items?limit=20` and `POST /v1/items` on the\n\
           service against `crates/bench/src/bin/floor.rs`: the same SQL (a write is one transaction\n\
           with the same inserts) on actix-web and deadpool-postgres with no middleware, both with 2 API\n\
           workers, a pool of 16 and plain TCP, measured one after the other on the same database (the\n\
           floor first). The service also validates input, keeps the request for `Idempotency-Key`,\n\
           bounds each query, and runs its background work as always{BACKGROUND}. Goals: at least\n\
           0.85x the floor's throughput, p99 at most 1.3x.\n\
         - **isolation**: `/readyz` at 4 connections while 64 connections saturate the API port.\n\
         - **startup**: from `exec` to the first `/readyz` 200 with the dependencies up (polled every\n\
           millisecond), migrations included.\n\
         - **detection**: a throwaway PostgreSQL killed with `kill -9` under the default tuning\n\
           (interval 2 s, timeout 1 s, threshold 2).\n\n\
         `make bench` fails (a regression guard) when `/readyz` throughput falls under 0.5x or its p99\n\
         rises above 3x the bare handler's, when probes cause database transactions, or when a route\n\
         falls under 0.3x the floor handler's throughput or its p99 rises above 8x (floors under today's\n\
         figures, which are short of the goals).\n",
        today(),
        machine(),
    ) + &format!(
        "\nThroughput runs: {} connections, {} s each.\n",
        crate::CONNECTIONS,
        crate::RUN.as_secs()
    )
}
