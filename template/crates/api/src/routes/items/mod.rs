//! `/v1/items`: one handler per file.

pub mod create;
pub mod delete;
pub mod get;
pub mod list;

use uuid::Uuid;

/// `Location` of an item.
pub fn location(id: Uuid) -> String {
    format!("/v1/items/{id}")
}
