//! `GET /openapi.json`, generated from the handlers' types and annotations.

use crate::domain::item::{Item, NewItem};
use crate::problem::Problem;
use crate::routes::items;
use actix_web::HttpResponse;
use actix_web::web::{Bytes, Data};
use utoipa::OpenApi;

#[derive(OpenApi)]
#[openapi(
    // @rabbitmq-begin
    info(title = "shipshape", description = "Example resource of the shipshape template: items on PostgreSQL, events through a transactional outbox."),
    // @rabbitmq-else
    // info(title = "shipshape", description = "Example resource of the shipshape template: items on PostgreSQL."),
    // @rabbitmq-end
    paths(items::create::create, items::get::get, items::list::list, items::delete::delete),
    components(schemas(Item, NewItem, Problem, items::list::ItemPage)),
    tags((name = "items", description = "The example resource"))
)]
struct ApiDoc;

/// The document, serialised once at start.
pub fn document() -> Bytes {
    let json = ApiDoc::openapi().to_json();
    Bytes::from(json.unwrap_or_else(|_| "{}".to_owned()))
}

pub async fn serve(document: Data<Bytes>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(document.get_ref().clone())
}
