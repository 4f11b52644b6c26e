//! `/v1/items`, the example resource: one handler per file, mounted by [`mount`] and described
//! by [`Api`]. Replacing the example replaces this folder (docs/extending.md).

pub mod create;
pub mod delete;
pub mod get;
pub mod list;

use crate::domain::item::{Item, NewItem};
use crate::problem;
use actix_web::web;

/// The example's routes; other methods get a 405 problem.
pub fn mount(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/v1/items")
            .route(web::get().to(list::list))
            .route(web::post().to(create::create))
            .default_service(web::to(problem::method_not_allowed)),
    )
    .service(
        web::resource("/v1/items/{id}")
            .route(web::get().to(get::get))
            .route(web::delete().to(delete::delete))
            .default_service(web::to(problem::method_not_allowed)),
    );
}

/// The example's part of `/openapi.json`.
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(create::create, get::get, list::list, delete::delete),
    components(schemas(Item, NewItem, list::ItemPage)),
    tags((name = "items", description = "The example resource"))
)]
pub struct Api;
