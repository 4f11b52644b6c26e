//! Reference: the readiness handler this template replaces. Every probe request runs
//! `SELECT 1` on a pooled PostgreSQL connection and opens an AMQP channel, so probe load
//! becomes database and broker load. `make bench` measures it next to shipshape's cached probe.

use actix_web::{App, HttpResponse, HttpServer, web};
use deadpool_postgres::{Manager, Pool};
use lapin::{Connection, ConnectionProperties};
use std::sync::Arc;

struct Dependencies {
    pool: Pool,
    broker: Connection,
}

async fn readyz(deps: web::Data<Arc<Dependencies>>) -> HttpResponse {
    let database = async {
        let client = deps.pool.get().await.map_err(|e| e.to_string())?;
        client
            .simple_query("SELECT 1")
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(())
    };
    let broker = async {
        let channel = deps
            .broker
            .create_channel()
            .await
            .map_err(|e| e.to_string())?;
        channel
            .close(200, "probe".into())
            .await
            .map_err(|e| e.to_string())
    };
    match tokio::join!(database, broker) {
        (Ok(()), Ok(())) => HttpResponse::Ok().body(r#"{"status":"pass"}"#),
        _ => HttpResponse::ServiceUnavailable().body(r#"{"status":"fail"}"#),
    }
}

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(9192);
    let database: tokio_postgres::Config = std::env::var("DATABASE_URL")?.parse()?;
    let pool = Pool::builder(Manager::new(database, tokio_postgres::NoTls))
        .max_size(16)
        .build()?;
    let broker = Connection::connect(
        &std::env::var("RABBITMQ_URL")?,
        ConnectionProperties::default(),
    )
    .await?;
    let deps = Arc::new(Dependencies { pool, broker });
    HttpServer::new(move || {
        App::new()
            .app_data(web::Data::new(deps.clone()))
            .route("/readyz", web::get().to(readyz))
    })
    .workers(1)
    .bind(("127.0.0.1", port))?
    .run()
    .await?;
    Ok(())
}
