//! Logs and traces: JSON log lines (pretty on a terminal) filtered by `RUST_LOG` (default `info`),
//! spans exported over OTLP/HTTP only when `OTEL_EXPORTER_OTLP_ENDPOINT` is set. W3C `traceparent`
//! propagation is always on, so a trace continues through this service into the calls and
//! messages it sends even when it does not export.

mod export;

pub use export::SPANS_DROPPED;

use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use prometheus::IntCounter;
use std::io::IsTerminal;
use std::sync::LazyLock;
use std::time::Duration;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::{self, LevelFilter};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::{Context, Filter, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Keeps the trace pipeline alive; [`Telemetry::shutdown`] flushes it.
#[derive(Debug)]
pub struct Telemetry(SdkTracerProvider);

/// Telemetry could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// `RUST_LOG` is not a valid filter.
    #[error("RUST_LOG is invalid: {0}")]
    Filter(String),
    /// The OTLP exporter could not be built from the `OTEL_*` variables.
    #[error("OTEL_EXPORTER_OTLP_ENDPOINT is set but the exporter cannot start: {0}")]
    Exporter(String),
    /// A global subscriber was already installed.
    #[error("installing the tracing subscriber: {0}")]
    Install(String),
}

impl Telemetry {
    /// Installs the global subscriber for `service_name`; an error names the variable at fault.
    pub fn init(service_name: &str) -> Result<Telemetry, TelemetryError> {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        let filter = EnvFilter::builder()
            .with_default_directive(LevelFilter::INFO.into())
            .from_env()
            .map_err(|e| TelemetryError::Filter(e.to_string()))?;
        let provider = tracer_provider(service_name)?;
        let tracer = provider.tracer(service_name.to_owned());
        subscriber(filter, std::io::stdout().is_terminal(), tracer)
            .try_init()
            .map_err(|e| TelemetryError::Install(e.to_string()))?;
        opentelemetry::global::set_tracer_provider(provider.clone());
        Ok(Telemetry(provider))
    }

    /// Flushes and stops the exporter, if any; the last step of a graceful shutdown.
    pub fn shutdown(self) {
        if let Err(error) = self.0.shutdown() {
            tracing::warn!(%error, "flushing traces at shutdown");
        }
    }
}

/// `filter` over everything, log lines (pretty on a terminal, else JSON), spans to `tracer`.
fn subscriber(
    filter: EnvFilter,
    pretty: bool,
    tracer: opentelemetry_sdk::trace::SdkTracer,
) -> impl Subscriber + Send + Sync + 'static {
    let most_verbose = filter.max_level_hint().unwrap_or(LevelFilter::TRACE);
    let logs = if pretty {
        tracing_subscriber::fmt::layer().pretty().boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .event_format(WithTraceIds(
                tracing_subscriber::fmt::format()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_span_list(false),
            ))
            .with_filter(shown(false, LevelFilter::TRACE, most_verbose))
            .boxed()
    };
    // Nothing reads `opentelemetry::Context::current()` (spans are parented through the tracing
    // tree; exports carry `Span::context()`), so entering a span need not attach its context.
    let traces = tracing_opentelemetry::layer()
        .with_context_activation(false)
        .with_tracked_inactivity(false)
        .with_threads(false)
        .with_location(false)
        .with_tracer(tracer)
        .with_filter(shown(true, LevelFilter::WARN, most_verbose));
    tracing_subscriber::registry()
        .with(ClientProtocolErrors)
        .with(filter)
        .with(logs)
        .with(traces)
}

/// What a layer shows of what `RUST_LOG` lets through: the log layer no spans (the trace has their
/// fields), the trace layer spans and events from WARN up (INFO lines are in the log with their
/// trace id). A dynamic filter answers "sometimes" per call site, not "always", which leaks across
/// layers (tokio-rs/tracing#2519); the level hint lets disabled `debug!`s skip it.
fn shown<S>(spans: bool, events: LevelFilter, most_verbose: LevelFilter) -> impl Filter<S> {
    filter::dynamic_filter_fn(move |metadata: &Metadata<'_>, _: &Context<'_, S>| {
        let level = LevelFilter::from_level(*metadata.level());
        let wanted = if metadata.is_span() {
            spans
        } else {
            level <= events
        };
        level <= most_verbose && wanted
    })
    .with_max_level_hint(most_verbose)
}

/// A provider that exports over OTLP when an endpoint is configured, and otherwise only gives
/// spans their trace context (no processor, nothing leaves the process).
fn tracer_provider(service_name: &str) -> Result<SdkTracerProvider, TelemetryError> {
    let endpoint_set = [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|name| std::env::var(name).is_ok_and(|v| !v.is_empty()));
    if !endpoint_set {
        return Ok(SdkTracerProvider::builder().build());
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
        .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
    let service_name =
        std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| service_name.to_owned());
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service_name)
        .build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(export::BoundedExport::new(exporter))
        .with_resource(resource)
        .build();
    Ok(provider)
}

/// JSON log lines led by the `trace_id` and `span_id` of their span (when valid), so a log search
/// by trace id finds every line of a request and of the work it causes.
struct WithTraceIds<F>(F);

impl<S, N, F> FormatEvent<S, N> for WithTraceIds<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        // Outside any span the context is empty, its ids invalid.
        let context = tracing::Span::current().context();
        let span = context.span();
        let ids = span.span_context();
        if !ids.is_valid() {
            return self.0.format_event(ctx, writer, event);
        }
        let (trace_id, span_id) = (ids.trace_id(), ids.span_id());
        let mut line = String::new();
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        match line.strip_prefix('{') {
            Some(rest) => write!(
                writer,
                "{{\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\",{rest}"
            ),
            None => writer.write_str(&line),
        }
    }
}

/// Requests the HTTP layer refused as malformed (each answered 400 by actix-http).
pub static CLIENT_PROTOCOL_ERRORS: LazyLock<IntCounter> = LazyLock::new(|| {
    IntCounter::new(
        "http_client_protocol_errors_total",
        "Malformed requests the HTTP layer answered 400 (bad request line or header, URI too long).",
    )
    .unwrap_or_else(|e| panic!("a constant metric definition: {e}"))
});

/// Takes actix-http's client protocol errors, the client's fault and already answered 400, out of
/// the ERROR log and counts them: one client sending garbage must not page anybody.
struct ClientProtocolErrors;

impl<S: Subscriber> tracing_subscriber::Layer<S> for ClientProtocolErrors {
    fn event_enabled(&self, event: &Event<'_>, _: Context<'_, S>) -> bool {
        let metadata = event.metadata();
        if *metadata.level() != Level::ERROR || !metadata.target().starts_with("actix_http::h1") {
            return true;
        }
        let mut message = ClientFault(false);
        event.record(&mut message);
        if message.0 {
            CLIENT_PROTOCOL_ERRORS.inc();
        }
        !message.0
    }
}

/// Whether an actix-http message is about what a client sent.
struct ClientFault(bool);

impl Visit for ClientFault {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let text = format!("{value:?}");
            // Parse errors are the client's; other stream errors (I/O, internal) stay at ERROR.
            self.0 = text.starts_with("stream error: request parse error")
                || text.starts_with("MAX_BUFFER_SIZE");
        }
    }
}

/// Logs at INFO, every `every`, how many malformed requests were refused since the last report.
pub async fn report_client_protocol_errors(every: Duration) {
    let mut reported = CLIENT_PROTOCOL_ERRORS.get();
    loop {
        tokio::time::sleep(every).await;
        let now = CLIENT_PROTOCOL_ERRORS.get();
        if now > reported {
            tracing::info!(
                count = now - reported,
                "malformed requests refused by the HTTP layer (400)"
            );
            reported = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_sdk::error::OTelSdkResult;
    use opentelemetry_sdk::trace::{SpanData, SpanExporter};
    use std::sync::{Arc, Mutex};

    /// The spans a test's tracer finished.
    #[derive(Debug, Clone, Default)]
    struct Finished(Arc<Mutex<Vec<SpanData>>>);

    impl SpanExporter for Finished {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            self.0.lock().unwrap().extend(batch);
            Ok(())
        }
    }

    /// INFO lines are the log's (with the span's ids); a span keeps the warnings and errors
    /// logged in it as its events, and its parent without an attached OpenTelemetry context.
    /// `enabled!` runs the layers' filters without an event, as the access log does before the
    /// handler: the warning after it must not be judged by what the filters said of INFO.
    #[test]
    fn a_span_keeps_its_warnings_as_events_and_leaves_info_lines_to_the_log() {
        let finished = Finished::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(finished.clone())
            .build();
        let subscriber = subscriber(EnvFilter::new("info"), false, provider.tracer("test"));
        tracing::subscriber::with_default(subscriber, || {
            let request = tracing::info_span!("request");
            let _request = request.enter();
            tracing::info!("handled");
            let query = tracing::info_span!("query");
            let _query = query.enter();
            assert!(tracing::enabled!(Level::INFO));
            tracing::warn!("slow");
            tracing::error!("failed");
        });
        let spans = finished.0.lock().unwrap();
        let [query, request] = spans.as_slice() else {
            panic!("wanted the query span, then the request span: {spans:?}");
        };
        assert_eq!((&*query.name, &*request.name), ("query", "request"));
        assert_eq!(query.parent_span_id, request.span_context.span_id());
        assert_eq!(
            query.span_context.trace_id(),
            request.span_context.trace_id()
        );
        let events = |span: &SpanData| -> Vec<String> {
            span.events.iter().map(|e| e.name.to_string()).collect()
        };
        assert_eq!(events(query), ["slow", "failed"]);
        assert!(events(request).is_empty(), "{:?}", events(request));
    }

    /// The level hint lets every `debug!` and `trace!` below `RUST_LOG` be skipped at its call
    /// site; a stack that loses it runs the whole filter chain for each of them, in every
    /// dependency, on every request.
    #[test]
    fn the_subscriber_keeps_the_filter_s_level_so_disabled_call_sites_cost_nothing() {
        let tracer = SdkTracerProvider::builder().build().tracer("test");
        for (directives, level) in [("info", LevelFilter::INFO), ("warn", LevelFilter::WARN)] {
            for pretty in [false, true] {
                let subscriber = subscriber(EnvFilter::new(directives), pretty, tracer.clone());
                assert_eq!(
                    subscriber.max_level_hint(),
                    Some(level),
                    "{directives}, pretty: {pretty}"
                );
            }
        }
    }
}
