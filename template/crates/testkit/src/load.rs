//! Load from a second process: wrk, with its report parsed.

use std::process::Command;
use std::time::Duration;

/// What wrk reported.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoadReport {
    pub requests: u64,
    pub requests_per_second: f64,
    pub p50: Duration,
    pub p99: Duration,
    pub non_2xx: u64,
    pub socket_errors: u64,
    pub raw: String,
}

/// Runs wrk (2 threads) against `url` for `duration` with `connections` keep-alive connections.
pub fn wrk(url: &str, connections: u32, duration: Duration) -> LoadReport {
    wrk_scripted(url, connections, duration, None)
}

/// As [`wrk`], with a Lua script (`wrk.method`, `wrk.body`, `delay()`, ...) when given.
pub fn wrk_scripted(
    url: &str,
    connections: u32,
    duration: Duration,
    script: Option<&str>,
) -> LoadReport {
    let script_file = script.map(|lua| {
        let file = tempfile::Builder::new()
            .prefix("testkit-wrk-")
            .suffix(".lua")
            .tempfile()
            .unwrap();
        std::fs::write(file.path(), lua).unwrap();
        file
    });
    let mut command = Command::new("wrk");
    command.args([
        "-t",
        "2",
        "-c",
        &connections.to_string(),
        "-d",
        &format!("{}s", duration.as_secs()),
        "--timeout",
        "5s",
        "--latency",
    ]);
    if let Some(file) = &script_file {
        command.arg("-s").arg(file.path());
    }
    let output = command
        .arg(url)
        .output()
        .expect("wrk (apt-get install wrk)");
    let raw = String::from_utf8_lossy(&output.stdout).to_string();
    let report = parse(&raw);
    assert!(report.requests > 0, "could not parse wrk's output:\n{raw}");
    report
}

/// Parses wrk's text report.
pub fn parse(raw: &str) -> LoadReport {
    let mut report = LoadReport {
        raw: raw.to_owned(),
        ..LoadReport::default()
    };
    for line in raw.lines().map(str::trim) {
        if line.contains(" requests in ") {
            report.requests = line
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
        } else if let Some(rest) = line.strip_prefix("Requests/sec:") {
            report.requests_per_second = rest.trim().parse().unwrap_or(0.0);
        } else if let Some(rest) = line.strip_prefix("Socket errors:") {
            report.socket_errors = rest
                .split(',')
                .filter_map(|part| part.split_whitespace().last()?.parse::<u64>().ok())
                .sum();
        } else if let Some(rest) = line.strip_prefix("Non-2xx or 3xx responses:") {
            report.non_2xx = rest.trim().parse().unwrap_or(0);
        } else if let Some(rest) = line.strip_prefix("50%") {
            report.p50 = duration(rest.trim());
        } else if let Some(rest) = line.strip_prefix("99%") {
            report.p99 = duration(rest.trim());
        }
    }
    report
}

/// `812.00us`, `1.23ms`, `2.01s`.
fn duration(text: &str) -> Duration {
    let split = text
        .find(|c: char| c.is_ascii_alphabetic())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().unwrap_or(0.0);
    let seconds = match unit {
        "us" => value / 1e6,
        "ms" => value / 1e3,
        "s" => value,
        "m" => value * 60.0,
        _ => 0.0,
    };
    Duration::from_secs_f64(seconds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_wrk_report() {
        let raw = "Running 10s test @ http://127.0.0.1:9090/livez\n  2 threads and 64 connections\n  Latency Distribution\n     50%  812.00us\n     75%    1.01ms\n     90%    1.50ms\n     99%    3.20ms\n  412345 requests in 10.00s, 60.00MB read\n  Socket errors: connect 0, read 2, write 0, timeout 1\n  Non-2xx or 3xx responses: 7\nRequests/sec:  41234.50\n";
        let report = parse(raw);
        assert_eq!(report.requests, 412_345);
        assert_eq!(report.socket_errors, 3);
        assert_eq!(report.non_2xx, 7);
        assert!((report.requests_per_second - 41_234.5).abs() < 1e-6);
        assert_eq!(report.p50, Duration::from_micros(812));
        assert_eq!(report.p99, Duration::from_micros(3200));
    }
}
