//! OpenTelemetry on the wire: the service exports to a real OTLP/HTTP receiver (protobuf), and
// @rabbitmq-begin
//! one write is one trace from the HTTP request through the outbox relay to the consumer.
// @rabbitmq-else
// //! a write's trace continues the caller's and its log lines carry the ids.
// @rabbitmq-end

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use std::time::Duration;
use testkit::{OtlpReceiver, ReceivedSpan};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";
/// OTLP span kinds.
const SERVER: i32 = 2;
const PRODUCER: i32 = 4; // @rabbitmq
const CONSUMER: i32 = 5; // @rabbitmq

fn kind(spans: &[ReceivedSpan], wanted: i32) -> Option<&ReceivedSpan> {
    spans.iter().find(|span| span.kind == wanted)
}

#[test]
fn one_write_is_one_trace_across_the_service() {
    let receiver = OtlpReceiver::start();
    let shared = Shared::new("otlp");
    let endpoint = receiver.endpoint();
    let service = spawn(&shared.env_with(
        &shared.database_url(),
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            // Export every 100 ms instead of every 5 s: the test waits less.
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    ));
    service.wait_for("/readyz", 200, Duration::from_secs(30));
    service.wait_for_status("pass", Duration::from_secs(15));
    for _ in 0..20 {
        assert_eq!(service.probe("/readyz").0, 200);
        assert_eq!(service.probe("/livez").0, 200);
    }

    let created = service
        .http()
        .post(service.api_url(example::PATH))
        .header("traceparent", format!("00-{TRACE_ID}-{CALLER_SPAN}-01"))
        .json(&example::body("traced"))
        .send()
        .unwrap();
    assert_eq!(created.status().as_u16(), 201);

    // @rabbitmq-begin
    let expected = [SERVER, PRODUCER, CONSUMER];
    // @rabbitmq-else
    // let expected = [SERVER];
    // @rabbitmq-end
    let spans = receiver.wait_for_trace(TRACE_ID, Duration::from_secs(30), |spans| {
        expected.iter().all(|wanted| kind(spans, *wanted).is_some())
    });
    let server = kind(&spans, SERVER).unwrap();
    assert_eq!(server.parent_span_id, CALLER_SPAN, "{server:?}");
    // @rabbitmq-begin
    let publish = kind(&spans, PRODUCER).unwrap();
    let consume = kind(&spans, CONSUMER).unwrap();
    assert_eq!(publish.parent_span_id, server.span_id, "{publish:?}");
    assert_eq!(consume.parent_span_id, publish.span_id, "{consume:?}");
    // @rabbitmq-end
    assert_eq!(
        server.attribute("http.route"),
        Some(example::PATH),
        "{server:?}"
    );
    for span in &spans {
        assert_eq!(span.service_name, "shipshape", "{span:?}");
    }

    // Probes are never traced: no span of any trace names a probe path.
    let probe_spans: Vec<ReceivedSpan> = receiver
        .spans()
        .into_iter()
        .filter(|span| {
            span.attributes
                .iter()
                .any(|(_, value)| value.contains("/readyz") || value.contains("/livez"))
        })
        .collect();
    assert!(probe_spans.is_empty(), "probes traced: {probe_spans:?}");

    // The log lines carry the trace and their span.
    let logs = service.logs();
    // @rabbitmq-begin
    let logged = [("request", server), ("event consumed", consume)];
    // @rabbitmq-else
    // let logged = [("request", server)];
    // @rabbitmq-end
    for (message, span) in logged {
        let needle = format!("\"message\":\"{message}\"");
        let line = logs
            .lines()
            .find(|line| line.contains(&needle) && line.contains(TRACE_ID))
            .unwrap_or_else(|| panic!("no {message} line with the trace id:\n{logs}"));
        let ids = format!(
            "\"trace_id\":\"{TRACE_ID}\",\"span_id\":\"{}\"",
            span.span_id
        );
        assert!(line.contains(&ids), "{line}");
        // The ids lead a line that is still one JSON object.
        let object: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert_eq!(object["trace_id"], TRACE_ID, "{line}");
        assert_eq!(object["message"], message, "{line}");
        // Once: serde_json keeps the last of two equal keys, a stricter log pipeline refuses
        // the line.
        assert_eq!(
            line.matches("\"trace_id\":").count(),
            1,
            "trace_id twice: {line}"
        );
    }
}

#[test]
fn a_stalled_collector_never_holds_a_request_and_dropped_spans_are_counted() {
    let collector = OtlpReceiver::stalled();
    let shared = Shared::new("otlpstall");
    let endpoint = collector.endpoint();
    let service = spawn(&shared.env_with(
        &shared.database_url(),
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "64"),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "32"),
        ],
    ));
    service.wait_for("/readyz", 200, Duration::from_secs(30));
    let mut slowest = Duration::ZERO;
    for n in 0..200 {
        let began = std::time::Instant::now();
        let created = example::post(&service, &example::body(&format!("item {n}")), None);
        assert_eq!(created.status().as_u16(), 201);
        slowest = slowest.max(began.elapsed());
    }
    println!("200 writes with a stalled collector, slowest {slowest:?}");
    // A generous bound on behaviour, not a benchmark: an export that waited for the collector
    // would take its 10 s timeout.
    assert!(slowest < Duration::from_secs(3), "a write took {slowest:?}");
    let dropped = service.metric("otel_spans_dropped_total");
    println!("spans dropped: {dropped}");
    assert!(dropped > 0.0, "a full queue must drop and count");
    assert_eq!(service.probe("/livez").0, 200);
}
