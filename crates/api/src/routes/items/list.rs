use crate::db;
use crate::domain::item::Item;
use crate::problem::{ApiError, Problem, clip};
use crate::routes::AppState;
use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

/// Default and largest page size.
const DEFAULT_LIMIT: i64 = 20;
const MAX_LIMIT: i64 = 100;
/// Bytes of JSON text after which a page ends early: 100 items with 60 KB notes would hold 6 MB
/// per slow client (docs/api.md).
const PAGE_BYTES: i64 = 256 * 1024;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Page size, 1 to 100 (larger values are capped at 100). A page of large items ends
    /// early, past 256 KiB of text, with `next_cursor` set.
    #[param(minimum = 1)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// One page of items.
#[derive(Debug, Serialize, ToSchema)]
pub struct ItemPage {
    pub items: Vec<Item>,
    /// Pass as `cursor` to get the next page; null on the last page.
    #[schema(nullable = true)]
    pub next_cursor: Option<String>,
}

/// Lists items in id (UUIDv7: creation) order with keyset pagination. A walk returns once each
/// item committed before it began; one committed during it may be missed (docs/api.md).
#[utoipa::path(
    get, path = "/v1/items", tag = "items",
    params(PageQuery),
    responses(
        (status = 200, description = "A page of items", body = ItemPage),
        (status = 400, description = "Bad limit or cursor", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Database unavailable", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list(
    state: web::Data<AppState>,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
    if limit < 1 {
        return Err(ApiError::BadRequest(format!(
            "limit must be at least 1, got {limit}"
        )));
    }
    let limit = limit.min(MAX_LIMIT);
    let after = match query.cursor.as_deref() {
        None | Some("") => None,
        Some(raw) => Some(
            Uuid::parse_str(raw)
                .map_err(|_| ApiError::BadRequest(format!("invalid cursor {:?}", clip(raw, 64))))?,
        ),
    };
    let (items, cut) = state
        .db
        .run(async |client| Ok(db::items::page(&*client, after, limit, PAGE_BYTES).await?))
        .await?;
    let more = cut || items.len() as i64 == limit;
    let next_cursor = items.last().filter(|_| more).map(|i| i.id.to_string());
    Ok(HttpResponse::Ok().json(ItemPage { items, next_cursor }))
}
