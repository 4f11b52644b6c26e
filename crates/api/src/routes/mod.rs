//! HTTP routes of the API server.

pub mod idempotency;
pub mod items;

use crate::db::Database;
use crate::problem::{self, ApiError};
use actix_web::web;

/// What every handler can reach.
#[derive(Debug, Clone)]
pub struct AppState {
    /// PostgreSQL, every use bounded by the query timeout.
    pub db: Database,
    // @rabbitmq-begin
    /// Wakes the outbox relay after a write, so events leave within milliseconds.
    pub outbox_written: std::sync::Arc<tokio::sync::Notify>,
    // @rabbitmq-end
}

/// Mounts the API and the extractor error handlers that turn every failure into a problem.
pub fn configure(cfg: &mut web::ServiceConfig, body_limit: usize) {
    cfg.app_data(
        web::JsonConfig::default()
            .limit(body_limit)
            .error_handler(move |error, _| problem::json_error(error, body_limit).into()),
    )
    .app_data(web::PathConfig::default().error_handler(|error, _| {
        ApiError::BadRequest(format!("invalid path parameter: {error}")).into()
    }))
    .app_data(
        web::QueryConfig::default().error_handler(|error, _| {
            ApiError::BadRequest(format!("invalid query: {error}")).into()
        }),
    )
    .configure(items::mount);
}
