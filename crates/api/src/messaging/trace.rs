//! W3C trace context across the broker: injected into the outbox row at request time,
//! published as AMQP headers, extracted by the consumer.

use lapin::types::{AMQPValue, FieldTable};
use opentelemetry::propagation::{Extractor, Injector};
use serde_json::{Map, Value};
use std::collections::HashMap;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The current span's context as headers (`traceparent`, `tracestate`), for the outbox row.
pub fn current_headers() -> Value {
    headers_of(&tracing::Span::current())
}

/// `span`'s context as headers (`traceparent`, `tracestate`).
pub fn headers_of(span: &tracing::Span) -> Value {
    let mut headers = HashMap::new();
    let context = span.context();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut HeaderMap(&mut headers));
    });
    Value::Object(
        headers
            .into_iter()
            .map(|(k, v)| (k, Value::String(v)))
            .collect::<Map<_, _>>(),
    )
}

struct HeaderMap<'a>(&'a mut HashMap<String, String>);

impl Injector for HeaderMap<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_owned(), value);
    }
}

/// Outbox headers as an AMQP field table.
pub fn to_amqp(headers: &Value) -> FieldTable {
    let mut table = FieldTable::default();
    if let Value::Object(map) = headers {
        for (key, value) in map {
            if let Value::String(text) = value {
                table.insert(
                    key.as_str().into(),
                    AMQPValue::LongString(text.as_str().into()),
                );
            }
        }
    }
    table
}

/// Makes the context stored with an outbox row (see [`current_headers`]) the parent of `span`.
pub fn continue_stored_trace(span: &tracing::Span, headers: &Value) {
    let Value::Object(map) = headers else { return };
    let context = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&StoredHeaders(map))
    });
    let _ = span.set_parent(context);
}

struct StoredHeaders<'a>(&'a Map<String, Value>);

impl Extractor for StoredHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(Value::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

/// Makes the context carried by `headers` the parent of `span`.
pub fn continue_trace(span: &tracing::Span, headers: Option<&FieldTable>) {
    let Some(headers) = headers else { return };
    let context = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&AmqpHeaders(headers))
    });
    let _ = span.set_parent(context);
}

struct AmqpHeaders<'a>(&'a FieldTable);

impl Extractor for AmqpHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .inner()
            .iter()
            .find(|(k, _)| k.as_str() == key)
            .and_then(|(_, value)| match value {
                AMQPValue::LongString(text) => std::str::from_utf8(text.as_bytes()).ok(),
                _ => None,
            })
    }

    fn keys(&self) -> Vec<&str> {
        self.0.inner().keys().map(|k| k.as_str()).collect()
    }
}
