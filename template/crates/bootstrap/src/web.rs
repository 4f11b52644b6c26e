//! Request telemetry for the API server: a span per request (tracing-actix-web, with a request
//! id echoed as `X-Request-Id`), one access-log line, and Prometheus request metrics.
//!
//! The management server mounts none of this: kubelet probes must not drown the logs.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{Error, HttpMessage};
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};
use std::time::Instant;
use tracing_actix_web::RequestId;

/// HTTP request metrics: `http_requests_total` and `http_request_duration_seconds`, labelled by
/// method, matched route pattern (never the raw path: ids would explode the cardinality) and
/// status.
#[derive(Debug, Clone)]
pub struct HttpMetrics {
    requests: IntCounterVec,
    duration: HistogramVec,
}

impl HttpMetrics {
    /// Creates the metrics in `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let requests = IntCounterVec::new(
            Opts::new(
                "http_requests_total",
                "API requests by method, route and status.",
            ),
            &["method", "route", "status"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "http_request_duration_seconds",
                "API request latency by method and route.",
            ),
            &["method", "route"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        Ok(Self { requests, duration })
    }
}

static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Middleware (for `actix_web::middleware::from_fn`) recording metrics and the access log.
/// Mount it inside `TracingLogger` so it sees the request id.
pub async fn observe(
    metrics: HttpMetrics,
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody + 'static>, Error> {
    let started = Instant::now();
    let method = req.method().clone();
    let route = req
        .match_pattern()
        .unwrap_or_else(|| "unmatched".to_owned());
    let request_id = req.extensions().get::<RequestId>().copied();
    let mut response = next.call(req).await?;
    let status = response.status();
    let took = started.elapsed();
    metrics
        .requests
        .with_label_values(&[method.as_str(), &route, status.as_str()])
        .inc();
    metrics
        .duration
        .with_label_values(&[method.as_str(), &route])
        .observe(took.as_secs_f64());
    if let Some(id) = request_id
        && let Ok(value) = HeaderValue::from_str(&id.to_string())
    {
        response.headers_mut().insert(REQUEST_ID.clone(), value);
    }
    tracing::info!(method = %method, route = %route, status = status.as_u16(), duration_ms = took.as_secs_f64() * 1000.0, "request");
    Ok(response)
}
