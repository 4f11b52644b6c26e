//! Request telemetry for the API server: a span per request (tracing-actix-web, with a request
//! id echoed as `X-Request-Id`), one access-log line, and Prometheus request metrics.
//!
//! The management server mounts none of this: kubelet probes must not drown the logs.

use actix_web::body::MessageBody;
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::error::PayloadError;
use actix_web::http::header::{CONTENT_LENGTH, HeaderName, HeaderValue, TRANSFER_ENCODING};
use actix_web::middleware::Next;
use actix_web::web::Bytes;
use actix_web::{Error, HttpMessage, HttpResponse};
use futures_util::FutureExt;
use futures_util::Stream;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
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

/// The method as a metric label: the standard ones by name, anything a client makes up as
/// `other`. A label copied from the request would let one client grow /metrics without bound.
fn method_label(method: &actix_web::http::Method) -> &'static str {
    use actix_web::http::Method;
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}

/// Middleware (for `actix_web::middleware::from_fn`) recording metrics and the access log.
/// Mount it inside `TracingLogger` so it sees the request id.
pub async fn observe(
    metrics: HttpMetrics,
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody + 'static>, Error> {
    let started = Instant::now();
    let method = method_label(req.method());
    let route = req
        .match_pattern()
        .unwrap_or_else(|| "unmatched".to_owned());
    let request_id = req.extensions().get::<RequestId>().copied();
    let outcome = next.call(req).await;
    // An error (a panic caught inside) is answered by actix further out: count it all the same.
    let status = match &outcome {
        Ok(response) => response.status(),
        Err(error) => error.as_response_error().status_code(),
    };
    let took = started.elapsed();
    metrics
        .requests
        .with_label_values(&[method, &route, status.as_str()])
        .inc();
    metrics
        .duration
        .with_label_values(&[method, &route])
        .observe(took.as_secs_f64());
    tracing::info!(method = %method, route = %route, status = status.as_u16(), duration_ms = took.as_secs_f64() * 1000.0, "request");
    let mut response = outcome?;
    if let Some(id) = request_id
        && let Ok(value) = HeaderValue::from_str(&id.to_string())
    {
        response.headers_mut().insert(REQUEST_ID.clone(), value);
    }
    Ok(response)
}

/// Middleware (for `actix_web::middleware::from_fn`) bounding the time a client may take to
/// send a request body: past `timeout`, reading the body fails with an
/// [`std::io::ErrorKind::TimedOut`] payload error, which the handler's extractor answers (the
/// API maps it to 408 and closes the connection). Without it, a client that sends headers and
/// no body holds a connection and a file descriptor for as long as it likes.
///
/// ```
/// # #[actix_web::main] async fn main() {
/// use actix_web::{App, HttpResponse, middleware::from_fn, test, web};
/// use std::time::Duration;
///
/// let app = test::init_service(
///     App::new()
///         .wrap(from_fn(|req, next| bootstrap::web::body_deadline(Duration::from_secs(10), req, next)))
///         .route("/", web::post().to(|body: String| async move { HttpResponse::Ok().body(body) })),
/// )
/// .await;
/// let request = test::TestRequest::post().uri("/").set_payload("hello").to_request();
/// assert_eq!(test::call_and_read_body(&app, request).await, "hello");
/// # }
/// ```
pub async fn body_deadline<B: MessageBody + 'static>(
    timeout: Duration,
    mut req: ServiceRequest,
    next: Next<B>,
) -> Result<ServiceResponse<B>, Error> {
    // Bodiless requests (every GET) skip the timer.
    let has_body =
        req.headers().contains_key(CONTENT_LENGTH) || req.headers().contains_key(TRANSFER_ENCODING);
    if has_body {
        let body = BodyDeadline {
            inner: req.take_payload(),
            expires: Box::pin(actix_web::rt::time::sleep(timeout)),
            expired: false,
        };
        let body: Pin<Box<dyn Stream<Item = Result<Bytes, PayloadError>>>> = Box::pin(body);
        req.set_payload(Payload::from(body));
    }
    next.call(req).await
}

/// A request body that fails once its deadline passes.
struct BodyDeadline {
    inner: Payload,
    expires: Pin<Box<actix_web::rt::time::Sleep>>,
    expired: bool,
}

impl Stream for BodyDeadline {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        // Once expired, every poll fails: a reader that goes on must not take a cut body
        // for a complete one.
        if !self.expired {
            if let Poll::Ready(item) = Pin::new(&mut self.inner).poll_next(cx) {
                return Poll::Ready(item);
            }
            if self.expires.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.expired = true;
        }
        Poll::Ready(Some(Err(PayloadError::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "the request body did not arrive in time",
        )))))
    }
}

/// The body of the answer to a request whose handler panicked (RFC 9457, no internals).
const PANIC_PROBLEM: &str = r#"{"type":"about:blank","title":"Internal Server Error","status":500,"detail":"an unexpected error occurred"}"#;

/// A handler panicked: answered as one 500 problem.
#[derive(Debug, thiserror::Error)]
#[error("a handler panicked")]
pub struct HandlerPanicked;

impl actix_web::ResponseError for HandlerPanicked {
    fn error_response(&self) -> HttpResponse {
        HttpResponse::InternalServerError()
            .content_type("application/problem+json")
            .body(PANIC_PROBLEM)
    }
}

/// Middleware (for `actix_web::middleware::from_fn`) that turns a panic in a handler into one
/// 500 problem and an ERROR log line, instead of a dropped connection for every request on that
/// worker (or, with `panic = "abort"`, the whole process). Mount it innermost; [`observe`]
/// counts the 500 in the request metrics and the access log.
///
/// ```
/// # #[actix_web::main] async fn main() {
/// use actix_web::{App, HttpResponse, middleware::from_fn, test, web};
///
/// async fn buggy() -> HttpResponse {
///     panic!("a bug")
/// }
///
/// let app = test::init_service(
///     App::new()
///         .wrap(from_fn(bootstrap::web::catch_panics))
///         .route("/", web::get().to(buggy)),
/// )
/// .await;
/// let request = test::TestRequest::get().uri("/").to_request();
/// let error = test::try_call_service(&app, request).await.err().unwrap();
/// assert_eq!(error.error_response().status(), 500);
/// # }
/// ```
pub async fn catch_panics(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody + 'static>, Error> {
    // The request cannot be kept for the answer (routing needs it unshared): the panic becomes
    // an error, which actix turns into the response with the request it holds.
    let path = req.path().to_owned();
    match AssertUnwindSafe(next.call(req)).catch_unwind().await {
        Ok(result) => result,
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".to_owned());
            tracing::error!(panic = %message, %path, "handler panicked: answered 500, the process goes on");
            Err(HandlerPanicked.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::middleware::from_fn;
    use actix_web::{App, test, web};

    async fn a_column_that_changed_type() -> HttpResponse {
        panic!("a column that changed type")
    }

    #[actix_web::test]
    async fn a_panicking_handler_is_one_500_and_the_next_request_is_served() {
        let app = test::init_service(
            App::new()
                .wrap(from_fn(catch_panics))
                .route("/panic", web::get().to(a_column_that_changed_type))
                .route(
                    "/fine",
                    web::get().to(|| async { HttpResponse::Ok().body("ok") }),
                ),
        )
        .await;
        // actix answers a service error with its ResponseError rendering.
        let error =
            test::try_call_service(&app, test::TestRequest::get().uri("/panic").to_request())
                .await
                .err()
                .expect("the panic surfaces as an error");
        let response = error.error_response();
        assert_eq!(response.status(), 500);
        assert_eq!(
            response.headers().get("content-type").unwrap(),
            "application/problem+json"
        );
        let body = actix_web::body::to_bytes(response.into_body())
            .await
            .unwrap();
        assert_eq!(body, PANIC_PROBLEM.as_bytes());
        let response =
            test::call_service(&app, test::TestRequest::get().uri("/fine").to_request()).await;
        assert_eq!(response.status(), 200);
    }
}
