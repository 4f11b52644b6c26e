//! `GET /openapi.json`, generated from the handlers' types and annotations.

use crate::problem::Problem;
use crate::routes::items;
use actix_web::HttpResponse;
use actix_web::web::{Bytes, Data};
use utoipa::OpenApi;

#[derive(OpenApi)]
// Title, version and description from Cargo.toml; the routes from each resource's `Api`.
#[openapi(components(schemas(Problem)))]
struct ApiDoc;

/// The document, serialised once at start.
pub fn document() -> Bytes {
    let json = ApiDoc::openapi()
        .merge_from(items::Api::openapi())
        .to_json();
    Bytes::from(json.unwrap_or_else(|_| "{}".to_owned()))
}

pub async fn serve(document: Data<Bytes>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(document.get_ref().clone())
}
