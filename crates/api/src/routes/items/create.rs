use crate::auth::Caller;
use crate::db;
use crate::db::idempotency::{ScopedKey, Stored};
use crate::domain::item::{Item, NewItem};
use crate::domain::item::{ItemEvent, ItemEventKind}; // @rabbitmq
use crate::problem::{ApiError, Problem};
use crate::routes::AppState;
use actix_web::http::StatusCode;
use actix_web::http::header::LOCATION;
use actix_web::{HttpRequest, HttpResponse, web};

/// Longest accepted `Idempotency-Key`.
const KEY_MAX: usize = 255;

// @rabbitmq-begin
/// Creates an item and records `item.created` in the outbox, in one transaction.
// @rabbitmq-else
// /// Creates an item (and its idempotency record) in one transaction.
// @rabbitmq-end
///
/// With `Idempotency-Key`, a same-body retry replays the first response; another body gets 422.
#[utoipa::path(
    post, path = "/v1/items", tag = "items",
    request_body(content = NewItem, content_type = "application/json"),
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes retries safe: same key and body, same response")),
    responses(
        (status = 201, description = "Created", body = Item, headers(("Location" = String, description = "URL of the new item"))),
        (status = 400, description = "Malformed JSON or key", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid item, or key reused with another body", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Database unavailable", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    body: web::Json<NewItem>,
) -> Result<HttpResponse, ApiError> {
    let new = body
        .into_inner()
        .parse()
        .map_err(|invalid| ApiError::Unprocessable(invalid.to_string()))?;
    let key = idempotency_key(&req, &caller)?;
    let request = serde_json::to_value(&new).map_err(|e| ApiError::Internal(e.to_string()))?;

    let headers = crate::messaging::trace::current_headers(); // @rabbitmq
    let written = &state.outbox_written; // @rabbitmq
    state
        .db
        .run(async move |client| {
            let tx = client.transaction().await?;
            if let Some(key) = &key {
                db::idempotency::lock(&tx, key).await?;
                if let Some(stored) = db::idempotency::find(&tx, key).await? {
                    if stored.request != request {
                        return Err(ApiError::Unprocessable(
                            "Idempotency-Key was already used with a different request body".into(),
                        ));
                    }
                    return Ok(replay(&stored));
                }
            }
            let item = db::items::insert(&tx, &new).await?;
            // @rabbitmq-begin
            let event = ItemEvent::new(ItemEventKind::Created, item.id);
            db::outbox::enqueue(&tx, &event, &headers).await?;
            // @rabbitmq-end
            if let Some(key) = &key {
                let body =
                    serde_json::to_value(&item).map_err(|e| ApiError::Internal(e.to_string()))?;
                let stored = Stored {
                    request,
                    status: 201,
                    body,
                    location: Some(super::location(item.id)),
                };
                db::idempotency::store(&tx, key, &stored).await?;
            }
            tx.commit().await?;
            written.notify_one(); // @rabbitmq
            Ok(HttpResponse::Created()
                .insert_header((LOCATION, super::location(item.id)))
                .json(item))
        })
        .await
}

fn idempotency_key(req: &HttpRequest, caller: &Caller) -> Result<Option<ScopedKey>, ApiError> {
    let mut values = req.headers().get_all("idempotency-key");
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ApiError::BadRequest(
            "Idempotency-Key must be sent once".into(),
        ));
    }
    let key = value
        .to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.len() <= KEY_MAX)
        .filter(|k| k.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "Idempotency-Key must be 1 to {KEY_MAX} visible ASCII characters"
            ))
        })?;
    // Per caller: a replay must not return another's response. Anonymous keeps the old scope.
    let route = req.match_pattern().unwrap_or_else(|| req.path().to_owned());
    let scope = match caller {
        Caller::Anonymous => format!("{} {route}", req.method()),
        Caller::Principal(principal) => format!("{} {route} as {principal}", req.method()),
    };
    let key = key.to_owned();
    Ok(Some(ScopedKey { scope, key }))
}

fn replay(stored: &Stored) -> HttpResponse {
    let mut response =
        HttpResponse::build(StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK));
    if let Some(location) = &stored.location {
        response.insert_header((LOCATION, location.clone()));
    }
    response.insert_header(("Idempotent-Replayed", "true"));
    response.json(&stored.body)
}

#[cfg(test)]
mod tests {
    use crate::auth::Caller;
    use crate::routes::{self, AppState};
    use actix_web::dev::{ServiceRequest, ServiceResponse};
    use actix_web::middleware::{Next, from_fn};
    use actix_web::{App, HttpMessage, test, web};
    use bootstrap::config::{DatabaseSettings, MigrationSettings};
    use std::time::Duration;

    /// A database of its own on the machine's PostgreSQL, migrated.
    async fn database(name: &str) -> crate::db::Database {
        let admin = crate::db::test_admin().await;
        let drop = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
        admin.batch_execute(&drop).await.unwrap();
        let create = format!("CREATE DATABASE {name}");
        admin.batch_execute(&create).await.unwrap();
        let settings = DatabaseSettings {
            url: format!("postgres://postgres@127.0.0.1:5432/{name}")
                .parse()
                .unwrap(),
            ..DatabaseSettings::default()
        };
        crate::db::schema()
            .migrate(&settings, &MigrationSettings::default(), |_, _| {})
            .await
            .unwrap();
        let pool = crate::db::request_pool(&settings, 2, &health::Alarm::default()).unwrap();
        crate::db::Database::new(pool, Duration::from_secs(5))
    }

    /// A team's authentication as docs/extending.md shows it, with a header for a token.
    async fn authenticate(
        req: ServiceRequest,
        next: Next<impl actix_web::body::MessageBody>,
    ) -> Result<ServiceResponse<impl actix_web::body::MessageBody>, actix_web::Error> {
        let user = req
            .headers()
            .get("x-test-user")
            .and_then(|v| v.to_str().ok());
        if let Some(user) = user.map(str::to_owned) {
            req.extensions_mut().insert(Caller::Principal(user));
        }
        next.call(req).await
    }

    #[actix_web::test]
    async fn a_key_replayed_by_another_caller_is_that_callers_own_key() {
        let state = AppState {
            db: database("unit_idempotency_callers").await,
            outbox_written: Default::default(), // @rabbitmq
        };
        let app = test::init_service(
            App::new()
                .app_data(web::Data::new(state))
                .wrap(from_fn(authenticate))
                .configure(|cfg| routes::configure(cfg, 64 * 1024)),
        )
        .await;
        let post = |user: &'static str| {
            test::TestRequest::post()
                .uri("/v1/items")
                .insert_header(("x-test-user", user))
                .insert_header(("Idempotency-Key", "order-42"))
                .set_json(serde_json::json!({"name": "alice's order"}))
                .to_request()
        };
        let id = |body: serde_json::Value| body["id"].as_str().unwrap().to_owned();
        let alices: serde_json::Value = test::call_and_read_body_json(&app, post("alice")).await;
        // Bob replays Alice's key with her body: he gets an item of his own, not her response.
        let bobs: serde_json::Value = test::call_and_read_body_json(&app, post("bob")).await;
        assert_ne!(
            id(bobs.clone()),
            id(alices.clone()),
            "bob received alice's response"
        );
        // Each one's retry is still a replay of their own.
        let again: serde_json::Value = test::call_and_read_body_json(&app, post("alice")).await;
        assert_eq!(id(again), id(alices));
        let again: serde_json::Value = test::call_and_read_body_json(&app, post("bob")).await;
        assert_eq!(id(again), id(bobs));
    }
}
