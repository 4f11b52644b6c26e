//! One client must not take the pod down by holding connections: uploads whose body never
//! arrives, or idle connections to the management port, more of them than the process may
//! open files. Each port sheds them within its own cap; the probes and the connections to the
//! dependencies keep their descriptors.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

const FILE_LIMIT: u64 = 1024;
const UPLOADS: usize = 1100;
const CLOSED_WITHIN: Duration = Duration::from_secs(30);

/// This test process holds every upload's socket: it needs more than its default 1024 files.
fn raise_own_file_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    assert!(
        hard >= 2 * UPLOADS as u64,
        "hard file limit {hard} too low for this test"
    );
}

/// Reads what the server sends until it closes the connection; `None` when it is still open
/// at `deadline`.
fn wait_closed(mut stream: TcpStream, deadline: Instant) -> Option<String> {
    let mut answer = Vec::new();
    let mut buffer = [0u8; 512];
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        stream
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        match stream.read(&mut buffer) {
            Ok(0) => return Some(String::from_utf8_lossy(&answer).into_owned()),
            Ok(n) => answer.extend_from_slice(&buffer[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Some(String::from_utf8_lossy(&answer).into_owned());
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return None;
            }
            Err(e) => panic!("reading an upload's answer: {e}"),
        }
    }
}

#[test]
fn stalled_uploads_under_a_small_file_limit_never_starve_the_probes() {
    raise_own_file_limit();
    let shared = Shared::new("stalled");
    let env = shared.env();
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut pairs = pairs;
    // Half the default, for margin under the 30 s bound on a loaded machine (two waves: the
    // connections first accepted, then those the cap kept in the kernel's queue).
    pairs.push(("APP__SERVER__BODY_TIMEOUT", "5s"));
    let service = Service::spawn_with_file_limit(binary(), &pairs, FILE_LIMIT);
    service.wait_for("/readyz", 200, Duration::from_secs(30));
    let liveness = service.watch_probe("/livez");
    let readiness = service.watch_probe("/readyz");

    let began = Instant::now();
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: shipshape\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"na",
        example::PATH
    );
    let uploads: Vec<TcpStream> = (0..UPLOADS)
        .map(|_| {
            let mut stream = TcpStream::connect(("127.0.0.1", service.api_port)).unwrap();
            stream.write_all(head.as_bytes()).unwrap();
            stream
        })
        .collect();
    println!("{UPLOADS} stalled uploads open after {:?}", began.elapsed());

    let deadline = began + CLOSED_WITHIN;
    let mut answers = std::collections::BTreeMap::<String, usize>::new();
    for upload in uploads {
        let status = match wait_closed(upload, deadline) {
            None => format!("(still open after {CLOSED_WITHIN:?})"),
            Some(answer) => answer
                .lines()
                .next()
                .unwrap_or("(closed without an answer)")
                .to_owned(),
        };
        *answers.entry(status).or_default() += 1;
    }
    println!("uploads after {:?}: {answers:?}", began.elapsed());
    let probes = [("/livez", liveness), ("/readyz", readiness)].map(|(probe, watch)| {
        let (polls, failures) = watch.finish();
        println!("{probe}: {} of {polls} polls failed", failures.len());
        (probe, polls, failures)
    });

    // A body on its way takes no place under the limit of requests in flight: none is a 503.
    assert!(
        answers
            .keys()
            .all(|status| status.contains("408") || status.starts_with("(closed")),
        "every upload is closed by the server (408 or a bare close): {answers:?}"
    );
    for (probe, polls, failures) in probes {
        assert!(polls > 50, "{probe} polled only {polls} times");
        assert!(
            failures.is_empty(),
            "{probe} failed {} of {polls} polls while the API port was flooded: {:?}",
            failures.len(),
            &failures[..failures.len().min(5)]
        );
    }
    assert_eq!(service.api(example::PATH).0, 200, "the API serves again");
    assert!(
        !service.logs().contains("Too many open files"),
        "the process ran out of descriptors:\n{}",
        service.logs()
    );
}

/// Sends `request` on a new connection; returns the status line of the answer.
fn raw_status(service: &Service, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", service.api_port)).unwrap();
    stream.write_all(request).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer)
        .lines()
        .next()
        .unwrap_or("")
        .to_owned()
}

#[test]
fn malformed_requests_are_400_counted_and_not_logged_as_errors() {
    let shared = Shared::new("malformed");
    let service = spawn(&shared.env());
    service.wait_for("/readyz", 200, Duration::from_secs(30));
    let path = example::PATH;
    let cases = [
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n"),
        format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(70_000)),
        "NOT-HTTP\r\n\r\n".to_owned(),
        format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: ten\r\n\r\n"),
    ];
    for request in &cases {
        let status = raw_status(&service, request.as_bytes());
        assert!(status.starts_with("HTTP/1.1 400"), "{status}");
    }
    let counted = service.metric("http_client_protocol_errors_total");
    assert!(counted >= cases.len() as f64, "{counted} counted");
    let logs = service.logs();
    let errors: Vec<&str> = logs
        .lines()
        .filter(|line| line.contains("\"level\":\"ERROR\""))
        .collect();
    assert!(
        errors.is_empty(),
        "client mistakes logged as errors: {errors:?}"
    );
}

#[test]
fn a_flood_of_idle_management_connections_leaves_the_api_its_descriptors() {
    raise_own_file_limit();
    let shared = Shared::new("mgmtflood");
    let env = shared.env();
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let service = Service::spawn_with_file_limit(binary(), &pairs, FILE_LIMIT);
    service.wait_for("/readyz", 200, Duration::from_secs(30));
    let liveness = service.watch_probe("/livez");
    // Twice the file limit in connections that never send a request, as any pod in the
    // cluster could open with the NetworkPolicy off.
    let began = Instant::now();
    let flood: Vec<TcpStream> = (0..2 * FILE_LIMIT)
        .filter_map(|_| {
            let address = std::net::SocketAddr::from(([127, 0, 0, 1], service.management_port));
            TcpStream::connect_timeout(&address, Duration::from_secs(1)).ok()
        })
        .collect();
    println!(
        "{} idle connections after {:?}",
        flood.len(),
        began.elapsed()
    );
    // The API keeps its descriptors: it serves while the flood lasts.
    for _ in 0..5 {
        assert_eq!(
            service.api(example::PATH).0,
            200,
            "the API failed during the flood"
        );
    }
    // Every idle connection is closed by the server.
    let deadline = began + Duration::from_secs(60);
    let open = flood
        .into_iter()
        .filter(|stream| wait_closed(stream.try_clone().unwrap(), deadline).is_none())
        .count();
    let drained = began.elapsed();
    let (polls, failures) = liveness.finish();
    println!(
        "flood closed after {drained:?}; /livez: {} of {polls} polls failed",
        failures.len()
    );
    assert_eq!(open, 0, "idle management connections still open after 60 s");
    // Probes queue behind the flood until it drains: over before the chart's liveness (every
    // 10 s, 3 failures) could fail three times in a row. (A sustained flood: the NetworkPolicy.)
    assert!(
        drained < Duration::from_secs(20),
        "the flood took {drained:?} to drain"
    );
    assert!(
        !service.logs().contains("Too many open files"),
        "the process ran out of descriptors:\n{}",
        service.logs()
    );
}

/// Reads one answer (status line, headers and a `Content-Length` body) from `stream`.
fn read_answer(stream: &mut TcpStream) -> String {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut answer = Vec::new();
    let mut byte = [0u8; 1];
    while !answer.ends_with(b"\r\n\r\n") {
        assert_eq!(stream.read(&mut byte).unwrap(), 1, "closed mid-answer");
        answer.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&answer).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length: "))
        .map_or(0, |n| n.trim().parse().unwrap());
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&answer),
        String::from_utf8_lossy(&body)
    )
}

#[test]
fn past_the_limit_of_requests_in_flight_requests_are_refused_at_once_and_probes_stay_200() {
    let shared = Shared::new("admission");
    let mut env = shared.env();
    env.push(("APP__SERVER__MAX_IN_FLIGHT".into(), "2".into()));
    env.push(("APP__DATABASE__QUERY_TIMEOUT".into(), "60s".into()));
    let service = spawn(&env);
    service.wait_for("/readyz", 200, Duration::from_secs(30));
    let id = example::post(&service, &example::body("held"), None)
        .json::<serde_json::Value>()
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let liveness = service.watch_probe("/livez");
    let readiness = service.watch_probe("/readyz");

    // A session holding the example's table: two reads of it wait, each holding a place.
    let locker = example::lock(&shared.name);
    let path = example::one(&id);
    std::thread::scope(|scope| {
        let held: Vec<_> = (0..2)
            .map(|_| scope.spawn(|| service.api(&path).0))
            .collect();
        testkit::wait_until("two reads in flight", Duration::from_secs(10), || {
            service.metric("http_requests_in_flight") >= 2.0
        });
        refusals_while_full(&service);
        // The places come back when the held requests end.
        example::release(&shared.name, locker);
        for read in held {
            assert_eq!(read.join().unwrap(), 200, "a held read failed");
        }
    });
    assert_eq!(service.api(&path).0, 200);
    for (probe, watch) in [("/livez", liveness), ("/readyz", readiness)] {
        let (polls, failures) = watch.finish();
        assert!(polls > 0, "{probe} never polled");
        assert!(
            failures.is_empty(),
            "{probe} failed while shedding: {failures:?}"
        );
    }
}

/// With every place held: many more requests than the limit, reads and writes on one
/// connection, each refused at once, counted, not logged, the connection kept.
fn refusals_while_full(service: &Service) {
    // Many more requests than the limit, on one connection, reads and writes: every one refused
    // at once, the connection kept for the next.
    let mut stream = TcpStream::connect(("127.0.0.1", service.api_port)).unwrap();
    let mut answers = Vec::new();
    let body = example::body("shed").to_string();
    let write = format!(
        "POST {} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        example::PATH,
        body.len()
    );
    let read = format!("GET {} HTTP/1.1\r\nHost: x\r\n\r\n", example::PATH);
    let began = Instant::now();
    for _ in 0..20 {
        stream.write_all(write.as_bytes()).unwrap();
        answers.push(read_answer(&mut stream));
        stream.write_all(read.as_bytes()).unwrap();
        answers.push(read_answer(&mut stream));
    }
    let took = began.elapsed();
    for answer in &answers {
        let lower = answer.to_ascii_lowercase();
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        assert!(lower.contains("\r\nretry-after: 1\r\n"), "{answer}");
        assert!(
            lower.contains("content-type: application/problem+json"),
            "{answer}"
        );
        assert!(answer.contains(r#""status":503"#), "{answer}");
    }
    // 40 refusals on one connection: a generous bound that a queued request would not meet.
    assert!(took < Duration::from_secs(5), "40 refusals took {took:?}");
    let shed = service.metric("http_requests_shed_total");
    assert!(shed >= answers.len() as f64, "{shed} counted as shed");
    assert_eq!(service.metric("http_requests_in_flight_limit"), 2.0);

    let refused = service
        .probe("/metrics")
        .2
        .lines()
        .filter(|line| line.starts_with("http_requests_total{") && line.contains("status=\"503\""))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>();
    assert!(
        refused >= answers.len() as f64,
        "{refused} 503s in http_requests_total"
    );
    // Refused before the telemetry: no access line and no span for them.
    assert!(
        !service.logs().contains("\"status\":503"),
        "a refusal was logged:\n{}",
        service.logs()
    );
}
