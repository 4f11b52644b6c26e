//! `GET /openapi.json`, generated from the handlers' types.

use actix_web::HttpResponse;
use actix_web::web::Bytes;
use utoipa::OpenApi;

#[derive(OpenApi)]
#[openapi(info(
    title = "shipshape",
    description = "Example service of the shipshape template."
))]
struct ApiDoc;

/// The document, serialised once at start.
pub fn document() -> Bytes {
    Bytes::from(
        ApiDoc::openapi()
            .to_json()
            .unwrap_or_else(|_| "{}".to_owned()),
    )
}

/// Serves the precomputed document.
pub async fn serve(document: actix_web::web::Data<Bytes>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(document.get_ref().clone())
}
