//! An OTLP/HTTP trace receiver (protobuf, decoded with the OpenTelemetry proto definitions),
//! for tests that point a service's `OTEL_EXPORTER_OTLP_ENDPOINT` at it.

use crate::net::wait_until;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One span as received, ids in lowercase hex.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    /// 32 hex digits.
    pub trace_id: String,
    /// 16 hex digits.
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    /// The span's name.
    pub name: String,
    /// OTLP span kind (the `SpanKind` enum of the protocol: 2 is a server span).
    pub kind: i32,
    /// `service.name` of the resource that sent it.
    pub service_name: String,
    /// String and integer attributes, as text.
    pub attributes: Vec<(String, String)>,
}

impl ReceivedSpan {
    /// The value of attribute `key`.
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Listens on a free loopback port; every span posted to `/v1/traces` is kept.
pub struct OtlpReceiver {
    port: u16,
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    requests: Arc<Mutex<u64>>,
    stop: Arc<AtomicBool>,
}

impl OtlpReceiver {
    fn bind() -> (TcpListener, OtlpReceiver) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let receiver = OtlpReceiver {
            port: listener.local_addr().unwrap().port(),
            spans: Arc::default(),
            requests: Arc::default(),
            stop: Arc::default(),
        };
        (listener, receiver)
    }

    /// Starts the receiver.
    pub fn start() -> OtlpReceiver {
        let (listener, receiver) = Self::bind();
        let (spans, requests, stop) = (
            receiver.spans.clone(),
            receiver.requests.clone(),
            receiver.stop.clone(),
        );
        std::thread::spawn(move || {
            for connection in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(connection) = connection else { continue };
                let (spans, requests) = (spans.clone(), requests.clone());
                std::thread::spawn(move || serve(connection, &spans, &requests));
            }
        });
        receiver
    }

    /// A collector that accepts connections and never answers (nor reads): what an overloaded
    /// or half-dead collector looks like to an exporter.
    pub fn stalled() -> OtlpReceiver {
        let (listener, receiver) = Self::bind();
        let stop = receiver.stop.clone();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for connection in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                held.extend(connection.ok());
            }
        });
        receiver
    }

    /// `http://127.0.0.1:PORT`: the value of `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().unwrap().clone()
    }

    /// Export requests received so far.
    pub fn requests(&self) -> u64 {
        *self.requests.lock().unwrap()
    }

    /// The spans of trace `trace_id`, once `done` accepts them (within `deadline`).
    pub fn wait_for_trace(
        &self,
        trace_id: &str,
        deadline: Duration,
        mut done: impl FnMut(&[ReceivedSpan]) -> bool,
    ) -> Vec<ReceivedSpan> {
        let mut found = Vec::new();
        wait_until(&format!("spans of trace {trace_id}"), deadline, || {
            found = self
                .spans()
                .into_iter()
                .filter(|span| span.trace_id == trace_id)
                .collect();
            done(&found)
        });
        found
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Answers HTTP/1.1 requests on one connection until the client closes it.
fn serve(connection: TcpStream, spans: &Mutex<Vec<ReceivedSpan>>, requests: &Mutex<u64>) {
    let mut writer = connection.try_clone().unwrap();
    let mut reader = BufReader::new(connection);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut length = 0usize;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0u8; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        if request_line.starts_with("POST /v1/traces")
            && let Ok(export) = ExportTraceServiceRequest::decode(body.as_slice())
        {
            spans.lock().unwrap().extend(flatten(export));
            *requests.lock().unwrap() += 1;
        }
        // An empty ExportTraceServiceResponse.
        let answer =
            "HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
        if writer.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

fn flatten(export: ExportTraceServiceRequest) -> Vec<ReceivedSpan> {
    let mut out = Vec::new();
    for resource_spans in export.resource_spans {
        let service_name = resource_spans
            .resource
            .as_ref()
            .and_then(|resource| text_of(&resource.attributes, "service.name"))
            .unwrap_or_default();
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                out.push(ReceivedSpan {
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    name: span.name,
                    kind: span.kind,
                    service_name: service_name.clone(),
                    attributes: span
                        .attributes
                        .iter()
                        .filter_map(|kv| Some((kv.key.clone(), value_text(kv)?)))
                        .collect(),
                });
            }
        }
    }
    out
}

fn text_of(attributes: &[KeyValue], key: &str) -> Option<String> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(value_text)
}

fn value_text(kv: &KeyValue) -> Option<String> {
    match kv.value.as_ref()?.value.as_ref()? {
        Value::StringValue(text) => Some(text.clone()),
        Value::IntValue(n) => Some(n.to_string()),
        Value::BoolValue(b) => Some(b.to_string()),
        Value::DoubleValue(x) => Some(x.to_string()),
        _ => None,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
