//! Item rows.

use crate::domain::item::{Item, ValidNewItem};
use deadpool_postgres::GenericClient;
use futures_util::TryStreamExt;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

/// Fallible: a column changed by a migration under a running replica is a 500, not a panic.
fn from_row(row: &Row) -> Result<Item, tokio_postgres::Error> {
    Ok(Item {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        note: row.try_get("note")?,
        created_at: row.try_get("created_at")?,
    })
}

/// Inserts a new item with a fresh UUIDv7.
pub async fn insert(
    db: &impl GenericClient,
    new: &ValidNewItem,
) -> Result<Item, tokio_postgres::Error> {
    let statement = db
        .prepare_cached("INSERT INTO items (id, name, note) VALUES ($1, $2, $3) RETURNING id, name, note, created_at")
        .await?;
    let row = db
        .query_one(&statement, &[&Uuid::now_v7(), &new.name, &new.note])
        .await?;
    from_row(&row)
}

pub async fn find(
    db: &impl GenericClient,
    id: Uuid,
) -> Result<Option<Item>, tokio_postgres::Error> {
    let statement = db
        .prepare_cached("SELECT id, name, note, created_at FROM items WHERE id = $1")
        .await?;
    db.query_opt(&statement, &[&id])
        .await?
        .as_ref()
        .map(from_row)
        .transpose()
}

/// Up to `limit` items after `after` in creation (UUIDv7) order, cut once their JSON text
/// (escapes included) passes `budget` bytes, keeping the crossing row so a page is never empty;
/// and whether it was cut. Summed while streaming: a SQL window sum cost more (docs/benchmarks.md).
pub async fn page(
    db: &impl GenericClient,
    after: Option<Uuid>,
    limit: i64,
    budget: i64,
) -> Result<(Vec<Item>, bool), tokio_postgres::Error> {
    let statement = db
        .prepare_cached(
            "SELECT id, name, note, created_at, \
                    octet_length(to_json(name)::text) \
                      + coalesce(octet_length(to_json(note)::text), 0) AS bytes \
             FROM items WHERE $1::uuid IS NULL OR id > $1 ORDER BY id LIMIT $2",
        )
        .await?;
    let params: [&(dyn ToSql + Sync); 2] = [&after, &limit];
    let rows = db.query_raw(&statement, params).await?;
    futures_util::pin_mut!(rows);
    let (mut items, mut written) = (Vec::new(), 0i64);
    while let Some(row) = rows.try_next().await? {
        if written >= budget {
            return Ok((items, true));
        }
        written += i64::from(row.try_get::<_, i32>("bytes")?);
        items.push(from_row(&row)?);
    }
    Ok((items, false))
}

/// Deletes an item; false when there was none.
pub async fn delete(db: &impl GenericClient, id: Uuid) -> Result<bool, tokio_postgres::Error> {
    let statement = db.prepare_cached("DELETE FROM items WHERE id = $1").await?;
    Ok(db.execute(&statement, &[&id]).await? == 1)
}
