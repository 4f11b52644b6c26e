//! W3C trace context across the broker: injected into the outbox row at request time,
//! published as AMQP headers, extracted by the consumer.

use lapin::types::{AMQPValue, FieldTable};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The current span's context as headers (`traceparent`, `tracestate`), for the outbox row.
pub fn current_headers() -> Value {
    let headers = inject(&tracing::Span::current());
    Value::Object(headers.into_iter().map(|(k, v)| (k, v.into())).collect())
}

/// `span`'s context as AMQP headers.
pub fn amqp_headers(span: &tracing::Span) -> FieldTable {
    let headers = inject(span).into_iter();
    FieldTable::from(BTreeMap::from_iter(
        headers.map(|(k, v)| (k.into(), AMQPValue::LongString(v.into()))),
    ))
}

fn inject(span: &tracing::Span) -> HashMap<String, String> {
    let mut headers = HashMap::new();
    let context = span.context();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut headers);
    });
    headers
}

/// Makes the context stored with an outbox row (see [`current_headers`]) the parent of `span`.
pub fn continue_stored_trace(span: &tracing::Span, headers: &Value) {
    let Value::Object(map) = headers else { return };
    extract(
        span,
        map.iter()
            .filter_map(|(k, v)| Some((k.as_str(), v.as_str()?))),
    );
}

/// Makes the context carried by AMQP `headers` the parent of `span`.
pub fn continue_trace(span: &tracing::Span, headers: Option<&FieldTable>) {
    let Some(headers) = headers else { return };
    extract(
        span,
        headers.inner().iter().filter_map(|(k, v)| {
            let text = std::str::from_utf8(v.as_long_string()?.as_bytes()).ok()?;
            Some((k.as_str(), text))
        }),
    );
}

fn extract<'a>(span: &tracing::Span, headers: impl Iterator<Item = (&'a str, &'a str)>) {
    let headers: HashMap<String, String> =
        headers.map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
    let context =
        opentelemetry::global::get_text_map_propagator(|propagator| propagator.extract(&headers));
    let _ = span.set_parent(context);
}
