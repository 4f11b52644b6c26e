//! The management endpoints for actix-web (feature `actix`). Handlers only read the cached
//! snapshot; the common (non-verbose) answer is a static body.

use crate::report::{HEALTH_JSON, minimal_body};
use crate::{Health, ProbeQuery, Status};
use actix_web::body::MessageBody;
use actix_web::http::StatusCode;
use actix_web::http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, web};
use prometheus::{TEXT_FORMAT, TextEncoder};

/// Mounts `/livez`, `/readyz`, `/readyz/{check}`, `/startupz` and `/metrics`.
///
/// ```
/// use actix_web::{App, web};
/// let health = health::Health::builder("demo", "1.0.0").build()?;
/// let _app = App::new()
///     .app_data(web::Data::new(health))
///     .configure(health::http::configure);
/// # Ok::<(), health::HealthError>(())
/// ```
pub fn configure(cfg: &mut web::ServiceConfig) {
    // GET and HEAD (load balancers probe with either); any other method is a 405.
    macro_rules! probe {
        ($path:literal, $handler:expr) => {
            web::resource($path)
                .route(web::get().to($handler))
                .route(web::head().to($handler))
                .default_service(web::to(method_not_allowed))
        };
    }
    cfg.service(probe!("/livez", livez))
        .service(probe!("/readyz", readyz))
        .service(probe!("/readyz/{check}", readyz_check))
        .service(probe!("/startupz", startupz))
        .service(probe!("/metrics", metrics));
}

async fn method_not_allowed() -> HttpResponse {
    HttpResponse::MethodNotAllowed()
        .insert_header(("Allow", "GET, HEAD"))
        .finish()
}

fn answer(health: &Health, status: Status, query: &ProbeQuery<'_>) -> HttpResponse {
    if query.verbose() {
        respond(status, health.verbose_body(status, query, None))
    } else {
        respond(status, minimal_body(status))
    }
}

/// 503 for `fail`, 200 otherwise, with `body` as health+json.
fn respond(status: Status, body: impl MessageBody + 'static) -> HttpResponse {
    let code = if status == Status::Fail {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    HttpResponse::build(code)
        .insert_header((CONTENT_TYPE, HeaderValue::from_static(HEALTH_JSON)))
        // A cached probe answer is a lie about now.
        .insert_header((CACHE_CONTROL, HeaderValue::from_static("no-store")))
        .body(body)
}

async fn livez(health: web::Data<Health>, req: HttpRequest) -> HttpResponse {
    let query = ProbeQuery::parse(req.query_string());
    let status = health.liveness();
    if query.verbose() {
        let body = serde_json::json!({
            "status": status,
            "serviceId": health.service_id(),
            "version": health.version(),
            "checks": {"runtime:heartbeat": [{
                "componentId": "runtime",
                "status": status,
                "observedValue": health.heartbeat().age().as_secs_f64() * 1000.0,
                "observedUnit": "ms",
            }]},
        });
        return respond(status, body.to_string());
    }
    answer(&health, status, &query)
}

async fn readyz(health: web::Data<Health>, req: HttpRequest) -> HttpResponse {
    let query = ProbeQuery::parse(req.query_string());
    answer(&health, health.readiness(&query), &query)
}

async fn readyz_check(health: web::Data<Health>, name: web::Path<String>) -> HttpResponse {
    if let Some(status) = health.check_status(&name) {
        let body = health.verbose_body(status, &ProbeQuery::default(), Some(&name));
        return respond(status, body);
    }
    // The name is the client's: reflect at most 64 characters of it.
    let shown: String = name.chars().take(64).collect();
    let output = serde_json::Value::String(format!("unknown check {shown:?}"));
    HttpResponse::NotFound()
        .insert_header((CONTENT_TYPE, HEALTH_JSON))
        .body(format!(r#"{{"status":"fail","output":{output}}}"#))
}

async fn startupz(health: web::Data<Health>, req: HttpRequest) -> HttpResponse {
    let query = ProbeQuery::parse(req.query_string());
    answer(&health, health.startup(), &query)
}

async fn metrics(health: web::Data<Health>) -> HttpResponse {
    match TextEncoder::new().encode_to_string(&health.registry().gather()) {
        Ok(text) => HttpResponse::Ok()
            .insert_header((CONTENT_TYPE, TEXT_FORMAT))
            .body(text),
        Err(error) => {
            tracing::error!(%error, "encoding metrics");
            HttpResponse::InternalServerError().finish()
        }
    }
}
