use crate::db;
use crate::domain::item::ItemEvent; // @rabbitmq
use crate::problem::{ApiError, Problem};
use crate::routes::AppState;
use actix_web::{HttpResponse, web};
use uuid::Uuid;

// @rabbitmq-begin
/// Deletes an item and records `item.deleted` in the outbox, in one transaction.
// @rabbitmq-else
// /// Deletes an item.
// @rabbitmq-end
#[utoipa::path(
    delete, path = "/v1/items/{id}", tag = "items",
    params(("id" = Uuid, Path, description = "Item id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "Not a UUID", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such item", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Database unavailable", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn delete(
    state: web::Data<AppState>,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    let headers = crate::messaging::trace::current_headers(); // @rabbitmq
    state
        .db
        .run(async move |client| {
            let tx = client.transaction().await?;
            if !db::items::delete(&tx, id).await? {
                return Err(ApiError::NotFound("item", id));
            }
            // @rabbitmq-begin
            let event = ItemEvent::deleted(id);
            db::outbox::enqueue(&tx, &event, &headers).await?;
            // @rabbitmq-end
            tx.commit().await?;
            Ok(())
        })
        .await?;
    state.outbox_written.notify_one(); // @rabbitmq
    Ok(HttpResponse::NoContent().finish())
}
