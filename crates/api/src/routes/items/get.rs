use crate::db;
use crate::domain::item::Item;
use crate::problem::{ApiError, Problem};
use crate::routes::AppState;
use actix_web::{HttpResponse, web};
use uuid::Uuid;

/// Reads one item.
#[utoipa::path(
    get, path = "/v1/items/{id}", tag = "items",
    params(("id" = Uuid, Path, description = "Item id")),
    responses(
        (status = 200, description = "The item", body = Item),
        (status = 400, description = "Not a UUID", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such item", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Database unavailable", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get(
    state: web::Data<AppState>,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    let item = state
        .db
        .run(async |client| Ok(db::items::find(&*client, id).await?))
        .await?
        .ok_or(ApiError::NotFound("item", id))?;
    Ok(HttpResponse::Ok().json(item))
}
