//! Reference: the floor of the request path. The same SQL as shipshape's item routes on a
//! deadpool-postgres pool, served by actix-web with no middleware at all (no tracing, metrics,
//! request id, body deadline or problem mapping), with the worker count and pool size `make
//! bench` gives the service. A write is one transaction with the same inserts as the service's.

use actix_web::{App, HttpResponse, HttpServer, web};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio_postgres::Row;
use uuid::Uuid;

/// The same fields and serialisation as the service's `Item`.
#[derive(Serialize)]
struct Item {
    id: Uuid,
    name: String,
    note: Option<String>,
    created_at: chrono::DateTime<chrono::Utc>,
}

#[derive(Serialize)]
struct ItemPage {
    items: Vec<Item>,
    next_cursor: Option<String>,
}

fn item(row: &Row) -> Item {
    Item {
        id: row.get("id"),
        name: row.get("name"),
        note: row.get("note"),
        created_at: row.get("created_at"),
    }
}

fn unavailable(error: impl std::fmt::Display) -> HttpResponse {
    HttpResponse::ServiceUnavailable().body(error.to_string())
}

async fn get(pool: web::Data<Pool>, id: web::Path<Uuid>) -> HttpResponse {
    let Ok(client) = pool.get().await else {
        return HttpResponse::ServiceUnavailable().finish();
    };
    let statement = match client
        .prepare_cached("SELECT id, name, note, created_at FROM items WHERE id = $1")
        .await
    {
        Ok(statement) => statement,
        Err(error) => return unavailable(error),
    };
    match client.query_opt(&statement, &[&id.into_inner()]).await {
        Ok(Some(row)) => HttpResponse::Ok().json(item(&row)),
        Ok(None) => HttpResponse::NotFound().finish(),
        Err(error) => unavailable(error),
    }
}

#[derive(Deserialize)]
struct PageQuery {
    limit: Option<i64>,
}

async fn list(pool: web::Data<Pool>, query: web::Query<PageQuery>) -> HttpResponse {
    let limit = query.limit.unwrap_or(20).clamp(1, 100);
    let Ok(client) = pool.get().await else {
        return HttpResponse::ServiceUnavailable().finish();
    };
    let statement = match client
        .prepare_cached(
            "SELECT id, name, note, created_at FROM items \
             WHERE $1::uuid IS NULL OR id > $1 ORDER BY id LIMIT $2",
        )
        .await
    {
        Ok(statement) => statement,
        Err(error) => return unavailable(error),
    };
    match client.query(&statement, &[&None::<Uuid>, &limit]).await {
        Ok(rows) => {
            let items: Vec<Item> = rows.iter().map(item).collect();
            let next_cursor = (items.len() as i64 == limit)
                .then(|| items.last().map(|last| last.id.to_string()))
                .flatten();
            HttpResponse::Ok().json(ItemPage { items, next_cursor })
        }
        Err(error) => unavailable(error),
    }
}

#[derive(Deserialize)]
struct NewItem {
    name: String,
    note: Option<String>,
}

async fn create(pool: web::Data<Pool>, body: web::Json<NewItem>) -> HttpResponse {
    let Ok(mut client) = pool.get().await else {
        return HttpResponse::ServiceUnavailable().finish();
    };
    let result = async {
        let tx = client.transaction().await?;
        let insert = tx
            .prepare_cached("INSERT INTO items (id, name, note) VALUES ($1, $2, $3) RETURNING id, name, note, created_at")
            .await?;
        let row = tx
            .query_one(&insert, &[&Uuid::now_v7(), &body.name, &body.note])
            .await?;
        let event_id = Uuid::now_v7();
        let event = json!({
            "id": event_id,
            "type": "item.created",
            "item_id": row.get::<_, Uuid>("id"),
            "occurred_at": chrono::Utc::now(),
        });
        let outbox = tx
            .prepare_cached(
                "INSERT INTO outbox (event_id, routing_key, payload, headers) VALUES ($1, $2, $3, $4)",
            )
            .await?;
        tx.execute(&outbox, &[&event_id, &"item.created", &event, &json!({})])
            .await?;
        tx.commit().await?;
        Ok::<_, tokio_postgres::Error>(row)
    }
    .await;
    match result {
        Ok(row) => HttpResponse::Created()
            .insert_header((
                "Location",
                format!("/v1/items/{}", row.get::<_, Uuid>("id")),
            ))
            .json(item(&row)),
        Err(error) => unavailable(error),
    }
}

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    let port = setting("PORT", 9193) as u16;
    let database: tokio_postgres::Config = std::env::var("DATABASE_URL")?.parse()?;
    let manager = Manager::from_config(
        database,
        tokio_postgres::NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let pool = Pool::builder(manager)
        .max_size(setting("POOL_SIZE", 16))
        .build()?;
    HttpServer::new(move || {
        App::new()
            .app_data(web::Data::new(pool.clone()))
            .route("/v1/items", web::get().to(list))
            .route("/v1/items", web::post().to(create))
            .route("/v1/items/{id}", web::get().to(get))
    })
    .workers(setting("WORKERS", 2))
    .bind(("127.0.0.1", port))?
    .run()
    .await?;
    Ok(())
}
