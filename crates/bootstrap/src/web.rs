//! API server middleware: a span per request ([`RequestSpan`], request id echoed as
//! `X-Request-Id`), an access-log line, Prometheus metrics, admission control, body deadlines and
//! panic catching. The management server mounts none of it: kubelet probes must not drown the logs.

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{Extensions, Payload, ServiceRequest, ServiceResponse};
use actix_web::error::PayloadError;
use actix_web::http::Version;
use actix_web::http::header::{
    CONTENT_LENGTH, HeaderName, HeaderValue, RETRY_AFTER, TRANSFER_ENCODING, USER_AGENT,
    X_FORWARDED_FOR,
};
use actix_web::middleware::Next;
use actix_web::web::Bytes;
use actix_web::{Error, HttpMessage, HttpResponse};
use futures_util::{FutureExt, Stream, StreamExt};
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry};
use std::any::Any;
use std::net::IpAddr;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::time::{Duration, Instant};
use tracing::Span;
use tracing::field::Empty;
use tracing_actix_web::{DefaultRootSpanBuilder, RequestId, RootSpanBuilder};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The root span of an API request, for `TracingLogger::<RequestSpan>::new()`: tracing-actix-web's
/// default fields and target, continuing a W3C `traceparent`, but bounding what a client puts into
/// telemetry: the client address is what [`TrustedProxies`] vouch for (the default believes any
/// `X-Forwarded-For`), the target has no query, path and host are clipped, a made-up method is
/// `other` and an unrouted path `unmatched` (so span names stay bounded). No `trace_id` field:
/// every JSON log line leads with it.
///
/// ```
/// use bootstrap::web::RequestSpan;
/// let app = actix_web::App::new().wrap(tracing_actix_web::TracingLogger::<RequestSpan>::new());
/// ```
#[derive(Debug, Clone, Copy)]
pub struct RequestSpan;

/// The route the root span matched, left for [`observe`] so a request is routed once.
struct MatchedRoute(String);

/// The route pattern `request` matched, `unmatched` for the 404s: a label, never the raw path.
fn route_of(request: &ServiceRequest) -> String {
    request
        .match_pattern()
        .unwrap_or_else(|| "unmatched".to_owned())
}

impl RootSpanBuilder for RequestSpan {
    fn on_request_start(request: &ServiceRequest) -> Span {
        let route = route_of(request);
        let method = method_label(request.method());
        let request_id = request.extensions().get::<RequestId>().copied();
        // The target is tracing-actix-web's, so `RUST_LOG` directives written for it keep working.
        let span = tracing::info_span!(
            target: "tracing_actix_web::root_span_builder",
            "HTTP request",
            http.method = method,
            http.route = %route,
            http.flavor = http_flavor(request.version()),
            http.scheme = %request.connection_info().scheme(),
            http.host = clipped(request.connection_info().host()),
            http.client_ip = client_ip(request).map(tracing::field::display),
            http.user_agent = %request
                .headers()
                .get(USER_AGENT)
                .and_then(|agent| agent.to_str().ok())
                .unwrap_or(""),
            // The path only: the query may carry what does not belong in a trace or a log.
            http.target = clipped(request.path()),
            http.status_code = Empty,
            otel.name = %format_args!("{method} {route}"),
            otel.kind = "server",
            otel.status_code = Empty,
            request_id = request_id.map(tracing::field::display),
            exception.message = Empty,
            exception.details = Empty,
        );
        if !span.is_disabled() {
            let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
                propagator.extract(&RequestHeaders(request.headers()))
            });
            // Fails only when no OpenTelemetry layer is installed: then there is no context.
            let _ = span.set_parent(parent);
        }
        request.extensions_mut().insert(MatchedRoute(route));
        span
    }

    fn on_request_end<B: MessageBody>(span: Span, outcome: &Result<ServiceResponse<B>, Error>) {
        if !span.is_disabled() {
            DefaultRootSpanBuilder::on_request_end(span, outcome);
        }
    }
}

/// The proxies whose `X-Forwarded-For` is believed (`APP__SERVER__TRUSTED_PROXIES`): anyone can
/// write the header; only your proxies can vouch for it. The client is the rightmost hop not among
/// them (or an untrusted peer). Mount with `App::app_data`; without it, the peer is the client.
///
/// ```
/// use actix_web::test::TestRequest;
/// use bootstrap::web::TrustedProxies;
///
/// let proxies = TrustedProxies::new(vec!["10.0.0.0/8".parse().unwrap()]);
/// let request = TestRequest::get()
///     .peer_addr("10.0.0.7:4000".parse().unwrap())
///     .insert_header(("X-Forwarded-For", "203.0.113.9"))
///     .to_srv_request();
/// assert_eq!(proxies.client_ip(&request), Some("203.0.113.9".parse().unwrap()));
/// ```
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(std::sync::Arc<[ipnet::IpNet]>);

impl TrustedProxies {
    /// Trusts `networks` (single addresses are /32 or /128 networks).
    pub fn new(networks: Vec<ipnet::IpNet>) -> Self {
        Self(networks.into())
    }

    fn trusts(&self, address: IpAddr) -> bool {
        // A dual-stack listener sees IPv4 peers as ::ffff:a.b.c.d.
        let address = address.to_canonical();
        self.0.iter().any(|network| network.contains(&address))
    }

    /// The client's address as far as trusted proxies vouch for it.
    pub fn client_ip(&self, request: &ServiceRequest) -> Option<IpAddr> {
        let mut client = request.peer_addr()?.ip();
        if !self.trusts(client) {
            return Some(client);
        }
        let hops = request
            .headers()
            .get_all(X_FORWARDED_FOR)
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .rev()
            .map_while(|hop| hop.trim().parse::<IpAddr>().ok());
        for address in hops {
            client = address;
            if !self.trusts(address) {
                break;
            }
        }
        Some(client)
    }
}

/// The client address of `request` under the app's [`TrustedProxies`] (none: the peer).
fn client_ip(request: &ServiceRequest) -> Option<IpAddr> {
    match request.app_data::<TrustedProxies>() {
        Some(proxies) => proxies.client_ip(request),
        None => request.peer_addr().map(|peer| peer.ip()),
    }
}

/// A request's path or host clipped to 256 bytes for telemetry (a client can send kilobytes).
fn clipped(text: &str) -> &str {
    &text[..text.floor_char_boundary(256)]
}

/// The HTTP version as OpenTelemetry's `http.flavor` spells it.
fn http_flavor(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_11 => "1.1",
        Version::HTTP_2 => "2.0",
        Version::HTTP_3 => "3.0",
        _ => "other",
    }
}

/// Request headers as a W3C trace-context carrier.
struct RequestHeaders<'a>(&'a actix_web::http::header::HeaderMap);

impl opentelemetry::propagation::Extractor for RequestHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

/// HTTP request metrics: `http_requests_total` and `http_request_duration_seconds` by method, route
/// pattern (never the raw path: ids would explode the cardinality) and status.
#[derive(Debug, Clone)]
pub struct HttpMetrics {
    requests: IntCounterVec,
    duration: HistogramVec,
}

impl HttpMetrics {
    /// Creates the metrics in `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        // Built, then registered: prometheus' register_*! macros unwrap inside.
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

/// The API's connections, for `HttpServer::on_connect`: counted in `http_connections_open` (beside
/// the cap, `http_connections_limit`, so a cap one client fills shows), and cut by the kernel
/// (`TCP_USER_TIMEOUT`) once data waited `write_timeout` for a peer that stopped reading or
/// acknowledging, so a slow reader cannot hold a response's memory and a descriptor.
///
/// ```
/// use actix_web::{App, HttpServer};
/// let registry = prometheus::Registry::new();
/// let timeout = std::time::Duration::from_secs(30);
/// let connections = bootstrap::web::ApiConnections::register(&registry, 1000, timeout)?;
/// let server = HttpServer::new(App::new)
///     .max_connections(1000)
///     .on_connect(move |connection, data| connections.on_connect(connection, data));
/// # Ok::<(), prometheus::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct ApiConnections {
    open: IntGauge,
    write_timeout: Duration,
}

/// Uncounts its connection or request when dropped (actix drops a connection's data on close).
struct Counted(IntGauge);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl ApiConnections {
    /// Creates the gauges in `registry`; `limit` is the server's connection cap.
    pub fn register(
        registry: &Registry,
        limit: usize,
        write_timeout: Duration,
    ) -> prometheus::Result<Self> {
        let open = IntGauge::new("http_connections_open", "Open API connections.")?;
        let cap = IntGauge::new(
            "http_connections_limit",
            "API connections the server holds at most; past it, clients wait in the accept queue.",
        )?;
        cap.set(i64::try_from(limit).unwrap_or(i64::MAX));
        registry.register(Box::new(open.clone()))?;
        registry.register(Box::new(cap))?;
        Ok(Self {
            open,
            write_timeout,
        })
    }

    /// Counts `connection` and sets its write timeout.
    pub fn on_connect(&self, connection: &dyn Any, data: &mut Extensions) {
        self.open.inc();
        data.insert(Counted(self.open.clone()));
        if let Some(stream) = connection.downcast_ref::<actix_web::rt::net::TcpStream>()
            && let Err(error) =
                socket2::SockRef::from(stream).set_tcp_user_timeout(Some(self.write_timeout))
        {
            tracing::debug!(%error, "setting a connection's write timeout");
        }
    }
}

static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The method as a metric label, made-up ones as `other`: a label copied from the request would let
/// one client grow /metrics without bound.
fn method_label(method: &actix_web::http::Method) -> &'static str {
    const KNOWN: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE",
    ];
    KNOWN
        .into_iter()
        .find(|known| *known == method.as_str())
        .unwrap_or("other")
}

/// Middleware (for `from_fn`) recording metrics and the access log and echoing the request id;
/// mount it inside `TracingLogger::<RequestSpan>`, which supplies the id and the matched route.
pub async fn observe(
    metrics: HttpMetrics,
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody + 'static>, Error> {
    let started = Instant::now();
    let method = method_label(req.method());
    let matched = req.extensions_mut().remove::<MatchedRoute>();
    let route = matched.map_or_else(|| route_of(&req), |MatchedRoute(route)| route);
    let request_id = req.extensions().get::<RequestId>().copied();
    // Copied only when the access line is logged; without the query, which may carry what does
    // not belong in a log.
    let requested = tracing::enabled!(tracing::Level::INFO)
        .then(|| (clipped(req.path()).to_owned(), client_ip(&req)));
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
    let (path, client_ip) = requested.unzip();
    tracing::info!(
        method,
        route = route.as_str(),
        path = path.as_deref(),
        client_ip = client_ip.flatten().map(tracing::field::display),
        status = status.as_u16(),
        duration_ms = took.as_secs_f64() * 1000.0,
        request_id = request_id.map(tracing::field::display),
        "request"
    );
    let mut response = outcome?;
    if let Some(id) = request_id
        && let Ok(value) = HeaderValue::try_from(id.to_string())
    {
        response.headers_mut().insert(REQUEST_ID.clone(), value);
    }
    Ok(response)
}

/// Middleware (for `from_fn`), mounted outermost, that receives a request's body whole before the
/// request goes on, so a slow upload holds only its connection (no [`AdmissionLimit`] place, span
/// or database connection), and that for at most `timeout`: then the body ends in an
/// [`std::io::ErrorKind::TimedOut`] payload error (the API answers 408 and closes the connection).
/// Past `limit` bytes the extractor refuses the rest.
///
/// ```
/// use actix_web::{App, middleware::from_fn};
/// let timeout = std::time::Duration::from_secs(10);
/// let app = App::new().wrap(from_fn(move |req, next| {
///     bootstrap::web::receive_body(timeout, 64 * 1024, req, next)
/// }));
/// ```
pub async fn receive_body<B: MessageBody + 'static>(
    timeout: Duration,
    limit: usize,
    mut req: ServiceRequest,
    next: Next<B>,
) -> Result<ServiceResponse<B>, Error> {
    // Bodiless (every GET) or declared too large (refused by length, unread): go on at once.
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok()?.parse::<usize>().ok());
    let chunked = req.headers().contains_key(TRANSFER_ENCODING);
    if !(chunked || declared.is_some_and(|length| length > 0 && length <= limit)) {
        return next.call(req).await;
    }
    let mut payload = req.take_payload();
    let mut received = actix_web::web::BytesMut::new();
    let read = actix_web::rt::time::timeout(timeout, async {
        while let Some(chunk) = payload.next().await {
            received.extend_from_slice(&chunk?);
            if received.len() > limit {
                return Ok(false);
            }
        }
        Ok(true)
    })
    .await
    .unwrap_or_else(|_| {
        let late = std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "the request body did not arrive in time",
        );
        Err(PayloadError::Io(late))
    });
    let head = futures_util::stream::iter([Ok(received.freeze())]);
    let body: Pin<Box<dyn Stream<Item = Result<Bytes, PayloadError>>>> = match read {
        Ok(true) => Box::pin(head),
        // Over the limit: the extractor reads on to its own refusal.
        Ok(false) => Box::pin(head.chain(payload)),
        Err(error) => Box::pin(head.chain(futures_util::stream::iter([Err(error)]))),
    };
    req.set_payload(Payload::from(body));
    next.call(req).await
}

/// The body of the answer to a request refused for overload (RFC 9457).
const OVERLOADED_PROBLEM: &str = r#"{"type":"about:blank","title":"Service Unavailable","status":503,"detail":"the service is at its limit of requests in flight, retry shortly"}"#;

/// Admission control for the API server: at most `limit` requests in flight, all workers together;
/// the next gets 503 at once, with `Retry-After: 1` and a problem document, instead of queueing
/// until every client times out. Mount [`AdmissionLimit::admit`] outside the telemetry (a refusal
/// costs no span or log line), inside [`receive_body`] (a slow upload takes no place), and never on
/// the management server (probes and /metrics answer however busy the API is). A refusal counts in
/// `http_requests_total` (503) as well as in its own metric, so error-ratio alerts see it. Shedding
/// never fails readiness: that only moves the load to other replicas.
///
/// ```
/// use actix_web::{App, middleware::from_fn};
/// use bootstrap::web::{AdmissionLimit, HttpMetrics};
/// let registry = prometheus::Registry::new();
/// let metrics = HttpMetrics::register(&registry)?;
/// let limit = AdmissionLimit::register(&registry, 100, &metrics)?;
/// let app = App::new().wrap(from_fn(move |req, next| limit.clone().admit(req, next)));
/// # Ok::<(), prometheus::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct AdmissionLimit {
    permits: std::sync::Arc<tokio::sync::Semaphore>,
    in_flight: IntGauge,
    shed: prometheus::IntCounter,
    requests: IntCounterVec,
}

impl AdmissionLimit {
    /// Creates `http_requests_in_flight`, `http_requests_in_flight_limit` and
    /// `http_requests_shed_total` in `registry`.
    pub fn register(
        registry: &Registry,
        limit: usize,
        metrics: &HttpMetrics,
    ) -> prometheus::Result<Self> {
        let shed = prometheus::IntCounter::new(
            "http_requests_shed_total",
            "API requests refused with 503 because the limit of requests in flight was reached.",
        )?;
        let cap = IntGauge::new(
            "http_requests_in_flight_limit",
            "API requests the server works on at once; past it, requests are refused.",
        )?;
        cap.set(i64::try_from(limit).unwrap_or(i64::MAX));
        let in_flight = IntGauge::new("http_requests_in_flight", "API requests being worked on.")?;
        registry.register(Box::new(shed.clone()))?;
        registry.register(Box::new(cap))?;
        registry.register(Box::new(in_flight.clone()))?;
        let limit = limit.min(tokio::sync::Semaphore::MAX_PERMITS);
        Ok(Self {
            permits: std::sync::Arc::new(tokio::sync::Semaphore::new(limit)),
            in_flight,
            shed,
            requests: metrics.requests.clone(),
        })
    }

    /// Middleware (for `from_fn`): passes `req` on while a place is free, answers 503 otherwise.
    pub async fn admit<B: MessageBody + 'static>(
        self,
        req: ServiceRequest,
        next: Next<B>,
    ) -> Result<ServiceResponse<EitherBody<B>>, Error> {
        if let Ok(_place) = self.permits.try_acquire_owned() {
            self.in_flight.inc();
            let _counted = Counted(self.in_flight);
            return Ok(next.call(req).await?.map_into_left_body());
        }
        self.shed.inc();
        self.requests
            .with_label_values(&[method_label(req.method()), &route_of(&req), "503"])
            .inc();
        let response = HttpResponse::ServiceUnavailable()
            .content_type("application/problem+json")
            .insert_header((RETRY_AFTER, "1"))
            .body(OVERLOADED_PROBLEM);
        Ok(req.into_response(response.map_into_right_body()))
    }
}

/// The body of the answer to a request whose handler panicked (RFC 9457, no internals).
const PANIC_PROBLEM: &str = r#"{"type":"about:blank","title":"Internal Server Error","status":500,"detail":"an unexpected error occurred"}"#;

/// A handler panicked: answered as one 500 problem, however often the error is rendered.
#[derive(Debug, thiserror::Error)]
#[error("a handler panicked")]
struct HandlerPanicked;

impl actix_web::ResponseError for HandlerPanicked {
    fn error_response(&self) -> HttpResponse {
        HttpResponse::InternalServerError()
            .content_type("application/problem+json")
            .body(PANIC_PROBLEM)
    }
}

/// Middleware (for `actix_web::middleware::from_fn`) that turns a handler's panic into one 500
/// problem and an ERROR log line, instead of a dropped connection for every request on that worker
/// (or, with `panic = "abort"`, the process). Mount it innermost, so [`observe`] counts the 500.
///
/// ```
/// use actix_web::{App, middleware::from_fn};
/// let app = App::new().wrap(from_fn(bootstrap::web::catch_panics));
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
    use testkit::logs::CapturedLogs;
    use tracing_actix_web::TracingLogger;
    use tracing_subscriber::filter::LevelFilter;

    /// JSON logs at `level` into `captured`, for the current thread.
    fn subscriber(level: LevelFilter, captured: &CapturedLogs) -> impl tracing::Subscriber {
        let captured = captured.clone();
        tracing_subscriber::fmt()
            .json()
            .with_current_span(true)
            .with_max_level(level)
            .with_writer(move || captured.clone())
            .finish()
    }

    /// The address requests in these tests come from.
    const CLIENT: std::net::SocketAddr = std::net::SocketAddr::new(
        std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 1, 2, 3)),
        4567,
    );

    /// `GET uri` through the API's telemetry (logger, `observe`): its `X-Request-Id` and the
    /// `http_requests_total` series it counted (`route status` each).
    async fn traced_get(uri: &str) -> (String, Vec<String>) {
        let registry = Registry::new();
        let metrics = HttpMetrics::register(&registry).unwrap();
        let app = test::init_service(
            App::new()
                .wrap(from_fn(move |req, next| {
                    observe(metrics.clone(), req, next)
                }))
                .wrap(TracingLogger::<RequestSpan>::new())
                .route(
                    "/items/{id}",
                    web::get().to(|| async {
                        tracing::info!("handled");
                        HttpResponse::Ok().finish()
                    }),
                ),
        )
        .await;
        let response = test::call_service(
            &app,
            test::TestRequest::get()
                .uri(uri)
                .peer_addr(CLIENT)
                // From a client that no proxy setting trusts: not believed.
                .insert_header(("X-Forwarded-For", "203.0.113.9"))
                .to_request(),
        )
        .await;
        let request_id = response
            .headers()
            .get(&REQUEST_ID)
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        let series = registry
            .gather()
            .iter()
            .filter(|family| family.name() == "http_requests_total")
            .flat_map(|family| family.get_metric())
            .map(|metric| {
                let label = |name: &str| {
                    metric
                        .get_label()
                        .iter()
                        .find(|l| l.name() == name)
                        .unwrap()
                        .value()
                        .to_owned()
                };
                format!("{} {}", label("route"), label("status"))
            })
            .collect();
        (request_id, series)
    }

    #[actix_web::test]
    async fn an_enabled_request_span_carries_the_route_the_target_and_the_request_id() {
        let captured = CapturedLogs::default();
        let _guard = tracing::subscriber::set_default(subscriber(LevelFilter::INFO, &captured));
        let (request_id, series) = traced_get("/items/7?fields=name").await;
        assert_eq!(series, ["/items/{id} 200"]);
        let logs = captured.text();
        let handled = logs
            .lines()
            .find(|line| line.contains("\"handled\""))
            .unwrap();
        for field in [
            r#""http.route":"/items/{id}""#.to_owned(),
            r#""otel.name":"GET /items/{id}""#.to_owned(),
            // The path without its query.
            r#""http.target":"/items/7","#.to_owned(),
            r#""http.method":"GET""#.to_owned(),
            r#""http.client_ip":"10.1.2.3""#.to_owned(),
            format!(r#""request_id":"{request_id}""#),
        ] {
            assert!(handled.contains(&field), "{field} missing: {handled}");
        }
        // The access log line, with the same route, in the same span.
        let access = logs
            .lines()
            .find(|line| line.contains("\"request\""))
            .unwrap();
        assert!(
            access.contains(&format!(r#""request_id":"{request_id}""#)),
            "{access}"
        );
        for field in [
            r#""status":200"#,
            r#""route":"/items/{id}""#,
            // The path without its query.
            r#""path":"/items/7","#,
            r#""client_ip":"10.1.2.3""#,
        ] {
            assert!(access.contains(field), "{field} missing: {access}");
        }
    }

    #[actix_web::test]
    async fn with_the_span_filtered_out_the_metrics_still_get_the_route_and_the_response_its_id() {
        let captured = CapturedLogs::default();
        let _guard = tracing::subscriber::set_default(subscriber(LevelFilter::WARN, &captured));
        let (request_id, series) = traced_get("/items/7").await;
        assert_eq!(series, ["/items/{id} 200"]);
        assert!(uuid::Uuid::parse_str(&request_id).is_ok(), "{request_id}");
        let (_, series) = traced_get("/nothing/here").await;
        assert_eq!(series, ["unmatched 404"]);
        assert_eq!(captured.text(), "", "nothing is logged below WARN");
    }

    #[actix_web::test]
    async fn forwarded_addresses_are_believed_only_from_trusted_proxies() {
        let client = |trusted: &[&str], forwarded: &[&str]| {
            let proxies = TrustedProxies::new(trusted.iter().map(|n| n.parse().unwrap()).collect());
            let mut request = test::TestRequest::get().peer_addr(CLIENT);
            for header in forwarded {
                request = request.append_header(("X-Forwarded-For", *header));
            }
            proxies
                .client_ip(&request.to_srv_request())
                .map(|ip| ip.to_string())
        };
        // Nobody trusted: the peer, whatever it claims.
        assert_eq!(client(&[], &["203.0.113.9"]), Some("10.1.2.3".into()));
        // A trusted peer: the address it saw.
        assert_eq!(
            client(&["10.0.0.0/8"], &["203.0.113.9"]),
            Some("203.0.113.9".into())
        );
        // The rightmost untrusted hop: what a client writes on the left is not believed.
        assert_eq!(
            client(&["10.0.0.0/8"], &["198.51.100.1, 203.0.113.9", "10.0.0.5"]),
            Some("203.0.113.9".into())
        );
        // Garbage in the chain ends it: the last trusted hop is the client.
        assert_eq!(
            client(&["10.0.0.0/8"], &["not-an-ip, 10.0.0.5"]),
            Some("10.0.0.5".into())
        );
        // A trusted peer with no header: the peer.
        assert_eq!(client(&["10.0.0.0/8"], &[]), Some("10.1.2.3".into()));
        // An IPv4 peer seen through a dual-stack listener is the same peer.
        let mapped = TrustedProxies::new(vec!["10.0.0.0/8".parse().unwrap()]);
        let request = test::TestRequest::get()
            .peer_addr("[::ffff:10.1.2.3]:4567".parse().unwrap())
            .insert_header(("X-Forwarded-For", "203.0.113.9"))
            .to_srv_request();
        assert_eq!(
            mapped.client_ip(&request),
            Some("203.0.113.9".parse().unwrap())
        );
    }

    /// A real server on a loopback port whose one route answers `size` bytes, with the API's
    /// connection handling; its registry and address.
    fn serve(size: usize, write_timeout: Duration) -> (Registry, std::net::SocketAddr) {
        let registry = Registry::new();
        let connections = ApiConnections::register(&registry, 10, write_timeout).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let server = actix_web::HttpServer::new(move || {
            App::new().route(
                "/",
                web::get().to(move || async move { HttpResponse::Ok().body(vec![b'x'; size]) }),
            )
        })
        .workers(1)
        .on_connect(move |connection, data| connections.on_connect(connection, data))
        .listen(listener)
        .unwrap()
        .run();
        std::thread::spawn(move || actix_web::rt::System::new().block_on(server));
        (registry, address)
    }

    fn gauge(registry: &Registry, name: &str) -> i64 {
        registry
            .gather()
            .iter()
            .find(|family| family.name() == name)
            .map_or(-1, |family| {
                family.get_metric()[0].get_gauge().get_value() as i64
            })
    }

    #[actix_web::test]
    async fn a_peer_that_stops_reading_is_cut_after_the_write_timeout() {
        use std::io::{Read, Write};
        const BODY: usize = 64 * 1024 * 1024;
        let (_, address) = serve(BODY, Duration::from_secs(1));
        // A client that asks and does not read: its window closes, the rest waits in buffers.
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        socket.connect(&address.into()).unwrap();
        let mut stream: std::net::TcpStream = socket.into();
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        std::thread::sleep(Duration::from_secs(4));
        // Reading now: what was buffered arrives, then the reset; never the whole body.
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut received = 0;
        let mut buffer = vec![0; 1 << 16];
        let ended = loop {
            match stream.read(&mut buffer) {
                Ok(0) => break "closed",
                Ok(n) => received += n,
                Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => break "reset",
                Err(error) => panic!("after {received} bytes: {error}"),
            }
        };
        assert!(
            received < BODY,
            "the whole body arrived: the connection was never cut"
        );
        println!("{ended} after {received} bytes");
    }

    #[actix_web::test]
    async fn open_connections_are_counted_until_they_close() {
        let (registry, address) = serve(10, Duration::from_secs(30));
        assert_eq!(gauge(&registry, "http_connections_limit"), 10);
        let open: Vec<std::net::TcpStream> = (0..5)
            .map(|_| std::net::TcpStream::connect(address).unwrap())
            .collect();
        testkit::wait_until("five connections counted", Duration::from_secs(10), || {
            gauge(&registry, "http_connections_open") == 5
        });
        drop(open);
        testkit::wait_until(
            "every connection uncounted",
            Duration::from_secs(10),
            || gauge(&registry, "http_connections_open") == 0,
        );
    }

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
        // Rendered as often as a middleware asks (a logger, then the dispatcher): the same answer.
        for _ in 0..2 {
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
        }
        let response =
            test::call_service(&app, test::TestRequest::get().uri("/fine").to_request()).await;
        assert_eq!(response.status(), 200);
    }

    #[actix_web::test]
    async fn past_the_limit_in_flight_a_request_is_refused_at_once_with_retry_after() {
        let registry = Registry::new();
        let metrics = HttpMetrics::register(&registry).unwrap();
        // No place at all: every request is past the limit.
        let limit = AdmissionLimit::register(&registry, 0, &metrics).unwrap();
        let app = test::init_service(
            App::new()
                .wrap(from_fn(move |req, next| limit.clone().admit(req, next)))
                .route("/", web::get().to(HttpResponse::Ok)),
        )
        .await;
        let response = test::call_service(&app, test::TestRequest::get().to_request()).await;
        assert_eq!(response.status(), 503);
        assert_eq!(response.headers().get("retry-after").unwrap(), "1");
        let body = test::read_body(response).await;
        assert_eq!(body, OVERLOADED_PROBLEM.as_bytes());
        let shed = registry.gather();
        let shed = shed.iter().find(|f| f.name() == "http_requests_shed_total");
        assert_eq!(shed.unwrap().get_metric()[0].get_counter().get_value(), 1.0);
    }

    #[actix_web::test]
    async fn a_body_received_whole_reaches_the_handler_unchanged() {
        let app = test::init_service(
            App::new()
                .wrap(from_fn(|req, next| {
                    receive_body(Duration::from_secs(10), 64 * 1024, req, next)
                }))
                .route("/", web::post().to(|body: String| async move { body })),
        )
        .await;
        let request = test::TestRequest::post().set_payload("hello").to_request();
        assert_eq!(test::call_and_read_body(&app, request).await, "hello");
    }
}
