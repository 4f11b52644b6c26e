use crate::auth::Caller;
use crate::db;
use crate::domain::item::ItemEvent; // @rabbitmq
use crate::domain::item::{Item, NewItem};
use crate::problem::{ApiError, Problem};
use crate::routes::{AppState, idempotency};
use actix_web::http::header::LOCATION;
use actix_web::{HttpRequest, HttpResponse, web};

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
    let new = body.into_inner().parse().map_err(ApiError::Unprocessable)?;
    let key = idempotency::key(&req, &caller)?;
    let request = serde_json::to_value(&new).map_err(|e| ApiError::Internal(e.to_string()))?;

    let headers = crate::messaging::trace::current_headers(); // @rabbitmq
    let written = &state.outbox_written; // @rabbitmq
    state
        .db
        .run(async move |client| {
            let tx = client.transaction().await?;
            if let Some(replay) = idempotency::replayed(&tx, key.as_ref(), &request).await? {
                return Ok(replay);
            }
            let item = db::items::insert(&tx, &new).await?;
            // @rabbitmq-begin
            let event = ItemEvent::created(item.id);
            db::outbox::enqueue(&tx, &event, &headers).await?;
            // @rabbitmq-end
            let location = format!("/v1/items/{}", item.id);
            idempotency::record(&tx, key.as_ref(), request, &item, &location).await?;
            tx.commit().await?;
            written.notify_one(); // @rabbitmq
            Ok(HttpResponse::Created()
                .insert_header((LOCATION, location))
                .json(item))
        })
        .await
}
