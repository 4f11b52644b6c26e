//! Span export that never holds a request: a bounded queue, and what does not fit is dropped and
//! counted (`otel_spans_dropped_total`) instead of waiting for a slow or absent collector.

use opentelemetry::Context;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Span, SpanData, SpanExporter, SpanProcessor,
};
use prometheus::IntCounter;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

/// Spans dropped because the export queue was full (a collector down, slow or far away).
pub static SPANS_DROPPED: LazyLock<IntCounter> = LazyLock::new(|| {
    IntCounter::new(
        "otel_spans_dropped_total",
        "Finished spans dropped because the export queue was full.",
    )
    .unwrap_or_else(|e| panic!("a constant metric definition: {e}"))
});

/// A batch processor whose queued spans are counted: a span that would overflow the queue is
/// dropped here, where it is counted, rather than inside the SDK, where it is not.
#[derive(Debug)]
pub(super) struct BoundedExport {
    inner: BatchSpanProcessor,
    queued: Arc<AtomicUsize>,
    limit: usize,
}

impl BoundedExport {
    pub(super) fn new<E: SpanExporter + 'static>(exporter: E) -> Self {
        let queued = Arc::new(AtomicUsize::new(0));
        let exporter = CountingExporter {
            inner: exporter,
            queued: queued.clone(),
        };
        // The SDK's own setting (2048 by default), given to its queue too, so that queue never
        // drops a span this count let through.
        let limit: usize = std::env::var("OTEL_BSP_MAX_QUEUE_SIZE")
            .ok()
            .and_then(|raw| raw.parse().ok())
            .filter(|size| *size > 0)
            .unwrap_or(2048);
        let config = BatchConfigBuilder::default()
            .with_max_queue_size(limit)
            .build();
        Self {
            inner: BatchSpanProcessor::builder(exporter)
                .with_batch_config(config)
                .build(),
            queued,
            limit,
        }
    }
}

impl SpanProcessor for BoundedExport {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if self.queued.fetch_add(1, Ordering::Relaxed) >= self.limit {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            SPANS_DROPPED.inc();
            return;
        }
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// Takes a batch's spans out of the count when dropped.
struct HandedOver<'a> {
    queued: &'a AtomicUsize,
    spans: usize,
}

impl Drop for HandedOver<'_> {
    fn drop(&mut self) {
        self.queued.fetch_sub(self.spans, Ordering::Relaxed);
    }
}

/// Counts spans out of the queue as their batch is handed over, exported or not.
#[derive(Debug)]
struct CountingExporter<E> {
    inner: E,
    queued: Arc<AtomicUsize>,
}

impl<E: SpanExporter> SpanExporter for CountingExporter<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        // Counted out even when the export panics or is dropped half way.
        let _handed_over = HandedOver {
            queued: &self.queued,
            spans: batch.len(),
        };
        self.inner.export(batch).await
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}
