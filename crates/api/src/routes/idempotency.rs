//! `Idempotency-Key` on a write: any handler that creates something makes its retries safe with
//! [`key`], [`replayed`] and [`record`], inside the transaction of the write: the first response
//! to a key is stored in the transaction that produced it.

use crate::auth::Caller;
use crate::problem::ApiError;
use actix_web::http::StatusCode;
use actix_web::http::header::LOCATION;
use actix_web::{HttpRequest, HttpResponse};
use deadpool_postgres::GenericClient;
use serde::Serialize;
use serde_json::Value;

/// Longest accepted `Idempotency-Key`.
const KEY_MAX: usize = 255;

/// An `Idempotency-Key` scoped by method, route pattern and caller (`POST /v1/orders`,
/// `POST /v1/orders as alice`): one key sent to two endpoints, or by two callers, is two keys.
#[derive(Debug, Clone)]
pub struct ScopedKey {
    scope: String,
    key: String,
}

/// The request's key, scoped by method, route pattern and caller; `None` without the header.
pub fn key(req: &HttpRequest, caller: &Caller) -> Result<Option<ScopedKey>, ApiError> {
    let mut values = req.headers().get_all("idempotency-key");
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ApiError::BadRequest(
            "Idempotency-Key must be sent once".into(),
        ));
    }
    let key = value
        .to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.len() <= KEY_MAX)
        .filter(|k| k.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "Idempotency-Key must be 1 to {KEY_MAX} visible ASCII characters"
            ))
        })?;
    // Per caller: a replay must not return another's response. Anonymous keeps the old scope.
    let route = req.match_pattern().unwrap_or_else(|| req.path().to_owned());
    let scope = match caller {
        Caller::Anonymous => format!("{} {route}", req.method()),
        Caller::Principal(principal) => format!("{} {route} as {principal}", req.method()),
    };
    let key = key.to_owned();
    Ok(Some(ScopedKey { scope, key }))
}

/// The first response to `key`, if there was one: a retry gets it again; the same key with
/// another body is a 422. Holds the key's lock until the transaction ends.
pub async fn replayed(
    tx: &impl GenericClient,
    key: Option<&ScopedKey>,
    request: &Value,
) -> Result<Option<HttpResponse>, ApiError> {
    let Some(key) = key else { return Ok(None) };
    // Serialises requests with the same key (20 parallel retries: one item, 19 replays). It locks
    // the unscoped key, as the previous release does, so both releases share the lock during a
    // rollout; a key sent to two routes at once merely waits.
    let lock = tx
        .prepare_cached("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .await?;
    tx.execute(&lock, &[&key.key]).await?;
    let find = tx
        .prepare_cached(
            "SELECT request, status, body, location FROM idempotency_keys WHERE scope = $1 AND key = $2",
        )
        .await?;
    let Some(row) = tx.query_opt(&find, &[&key.scope, &key.key]).await? else {
        return Ok(None);
    };
    if row.try_get::<_, Value>("request")? != *request {
        return Err(ApiError::Unprocessable(
            "Idempotency-Key was already used with a different request body".into(),
        ));
    }
    let status = u16::try_from(row.try_get::<_, i16>("status")?).unwrap_or(500);
    let mut response = HttpResponse::build(StatusCode::from_u16(status).unwrap_or(StatusCode::OK));
    if let Some(location) = row.try_get::<_, Option<String>>("location")? {
        response.insert_header((LOCATION, location));
    }
    response.insert_header(("Idempotent-Replayed", "true"));
    Ok(Some(response.json(row.try_get::<_, Value>("body")?)))
}

/// Stores a `201 Created` at `location` with `body` under `key`, for [`replayed`] to find.
pub async fn record(
    tx: &impl GenericClient,
    key: Option<&ScopedKey>,
    request: Value,
    body: &impl Serialize,
    location: &str,
) -> Result<(), ApiError> {
    let Some(key) = key else { return Ok(()) };
    let body = serde_json::to_value(body).map_err(|e| ApiError::Internal(e.to_string()))?;
    let insert = tx
        .prepare_cached("INSERT INTO idempotency_keys (scope, key, request, status, body, location) VALUES ($1, $2, $3, $4, $5, $6)")
        .await?;
    tx.execute(
        &insert,
        &[&key.scope, &key.key, &request, &201i16, &body, &location],
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{key, record, replayed};
    use crate::auth::Caller;
    use crate::db::Database;
    use crate::problem::ApiError;
    use actix_web::dev::{ServiceRequest, ServiceResponse};
    use actix_web::middleware::{Next, from_fn};
    use actix_web::{App, HttpMessage, HttpRequest, HttpResponse, test, web};
    use bootstrap::config::{DatabaseSettings, MigrationSettings};
    use std::time::Duration;

    /// A database of its own on the machine's PostgreSQL, migrated.
    async fn database(name: &str) -> crate::db::Database {
        let admin = crate::db::test_admin().await;
        let drop = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
        admin.batch_execute(&drop).await.unwrap();
        let create = format!("CREATE DATABASE {name}");
        admin.batch_execute(&create).await.unwrap();
        let settings = DatabaseSettings {
            url: format!("postgres://postgres@127.0.0.1:5432/{name}")
                .parse()
                .unwrap(),
            ..DatabaseSettings::default()
        };
        crate::db::schema()
            .migrate(&settings, &MigrationSettings::default(), |_, _| {})
            .await
            .unwrap();
        let pool = crate::db::pool(&settings, "shipshape", 2, &health::Alarm::default()).unwrap();
        crate::db::Database::new(pool, Duration::from_secs(5))
    }

    /// A team's authentication as docs/extending.md shows it, with a header for a token.
    async fn authenticate(
        req: ServiceRequest,
        next: Next<impl actix_web::body::MessageBody>,
    ) -> Result<ServiceResponse<impl actix_web::body::MessageBody>, actix_web::Error> {
        let user = req
            .headers()
            .get("x-test-user")
            .and_then(|v| v.to_str().ok());
        if let Some(user) = user.map(str::to_owned) {
            req.extensions_mut().insert(Caller::Principal(user));
        }
        next.call(req).await
    }

    /// A create as a resource writes it: a fresh id per request, replayed per key and caller.
    async fn create(
        db: web::Data<Database>,
        req: HttpRequest,
        caller: Caller,
    ) -> Result<HttpResponse, ApiError> {
        let key = key(&req, &caller)?;
        let request = serde_json::json!({"order": 42});
        db.run(async move |client| {
            let tx = client.transaction().await?;
            if let Some(replay) = replayed(&tx, key.as_ref(), &request).await? {
                return Ok(replay);
            }
            let created = serde_json::json!({"id": uuid::Uuid::now_v7()});
            record(&tx, key.as_ref(), request, &created, "/orders/42").await?;
            tx.commit().await?;
            Ok(HttpResponse::Created().json(created))
        })
        .await
    }

    #[actix_web::test]
    async fn a_key_replayed_by_another_caller_is_that_callers_own_key() {
        let db = database("unit_idempotency_callers").await;
        let app = test::init_service(
            App::new()
                .app_data(web::Data::new(db))
                .wrap(from_fn(authenticate))
                .route("/orders", web::post().to(create)),
        )
        .await;
        let post = |user: &'static str| {
            test::TestRequest::post()
                .uri("/orders")
                .insert_header(("x-test-user", user))
                .insert_header(("Idempotency-Key", "order-42"))
                .to_request()
        };
        let id = |body: serde_json::Value| body["id"].as_str().unwrap().to_owned();
        let alices: serde_json::Value = test::call_and_read_body_json(&app, post("alice")).await;
        // Bob replays Alice's key with her body: he gets an order of his own, not her response.
        let bobs: serde_json::Value = test::call_and_read_body_json(&app, post("bob")).await;
        assert_ne!(
            id(bobs.clone()),
            id(alices.clone()),
            "bob received alice's response"
        );
        // Each one's retry is still a replay of their own.
        let again: serde_json::Value = test::call_and_read_body_json(&app, post("alice")).await;
        assert_eq!(id(again), id(alices));
        let again: serde_json::Value = test::call_and_read_body_json(&app, post("bob")).await;
        assert_eq!(id(again), id(bobs));
    }
}
