//! `/v1/notes`: a resource of the service's own in place of the `items` example. `make
//! template-check` puts it where the example was, as docs/extending.md ("Replacing the example")
//! says, and runs the generated project's checks against it. Lines marked `@rabbitmq` are the
//! broker variant's (the check writes the variant with `template-sync.py --file`).

use crate::auth::Caller;
use crate::db; // @rabbitmq
use crate::problem::{self, ApiError, Problem};
use crate::routes::{AppState, idempotency};
use actix_web::http::header::LOCATION;
use actix_web::{HttpRequest, HttpResponse, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json; // @rabbitmq
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

/// A stored note.
#[derive(Debug, Serialize, ToSchema)]
pub struct Note {
    pub id: Uuid,
    pub text: String,
    pub created_at: DateTime<Utc>,
}

/// Body of `POST /v1/notes`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewNote {
    /// 1 to 200 characters.
    pub text: String,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Page {
    /// 1 to 100 notes (20 when absent).
    pub limit: Option<i64>,
}

fn note(row: &tokio_postgres::Row) -> Result<Note, tokio_postgres::Error> {
    Ok(Note {
        id: row.try_get("id")?,
        text: row.try_get("text")?,
        created_at: row.try_get("created_at")?,
    })
}

pub fn mount(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/v1/notes")
            .route(web::get().to(list))
            .route(web::post().to(create))
            .default_service(web::to(problem::method_not_allowed)),
    )
    .service(
        web::resource("/v1/notes/{id}")
            .route(web::get().to(get))
            .route(web::delete().to(delete))
            .default_service(web::to(problem::method_not_allowed)),
    );
}

#[derive(utoipa::OpenApi)]
#[openapi(paths(create, get, list, delete), components(schemas(Note, NewNote)))]
pub struct Api;

/// Stores a note; `Idempotency-Key` makes a retry replay the first response.
#[utoipa::path(post, path = "/v1/notes", request_body = NewNote, responses(
    (status = 201, description = "Created", body = Note),
    (status = 422, description = "Invalid note", body = Problem, content_type = "application/problem+json"),
))]
pub async fn create(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    body: web::Json<NewNote>,
) -> Result<HttpResponse, ApiError> {
    let new = body.into_inner();
    if !(1..=200).contains(&new.text.chars().count()) {
        return Err(ApiError::Unprocessable("text: 1 to 200 characters".into()));
    }
    let key = idempotency::key(&req, &caller)?;
    let request = serde_json::to_value(&new).map_err(|e| ApiError::Internal(e.to_string()))?;
    let headers = crate::messaging::trace::current_headers(); // @rabbitmq
    let written = &state.outbox_written; // @rabbitmq
    state
        .db
        .run(async move |client| {
            let tx = client.transaction().await?;
            if let Some(replay) = idempotency::replayed(&tx, key.as_ref(), &request).await? {
                return Ok(replay);
            }
            let sql = "INSERT INTO notes (id, text) VALUES ($1, $2) RETURNING id, text, created_at";
            let note = note(&tx.query_one(sql, &[&Uuid::now_v7(), &new.text]).await?)?;
            let location = format!("/v1/notes/{}", note.id);
            idempotency::record(&tx, key.as_ref(), request, &note, &location).await?;
            // @rabbitmq-begin
            let event = json!({"id": Uuid::now_v7(), "type": "note.created", "note_id": note.id});
            db::outbox::enqueue(&tx, &event, &headers).await?;
            // @rabbitmq-end
            tx.commit().await?;
            written.notify_one(); // @rabbitmq
            Ok(HttpResponse::Created()
                .insert_header((LOCATION, location))
                .json(note))
        })
        .await
}

#[utoipa::path(get, path = "/v1/notes/{id}", responses(
    (status = 200, description = "The note", body = Note),
    (status = 404, description = "No such note", body = Problem, content_type = "application/problem+json"),
))]
pub async fn get(
    state: web::Data<AppState>,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    let sql = "SELECT id, text, created_at FROM notes WHERE id = $1";
    let row = state
        .db
        .run(async |client| Ok(client.query_opt(sql, &[&id]).await?))
        .await?
        .ok_or(ApiError::NotFound("note", id))?;
    Ok(HttpResponse::Ok().json(note(&row)?))
}

/// The newest notes first.
#[utoipa::path(get, path = "/v1/notes", params(Page), responses(
    (status = 200, description = "Notes", body = [Note]),
))]
pub async fn list(
    state: web::Data<AppState>,
    page: web::Query<Page>,
) -> Result<HttpResponse, ApiError> {
    let limit = page.limit.unwrap_or(20).clamp(1, 100);
    let sql = "SELECT id, text, created_at FROM notes ORDER BY id DESC LIMIT $1";
    let rows = state
        .db
        .run(async |client| Ok(client.query(sql, &[&limit]).await?))
        .await?;
    let notes = rows.iter().map(note).collect::<Result<Vec<_>, _>>()?;
    Ok(HttpResponse::Ok().json(notes))
}

#[utoipa::path(delete, path = "/v1/notes/{id}", responses(
    (status = 204, description = "Deleted"),
    (status = 404, description = "No such note", body = Problem, content_type = "application/problem+json"),
))]
pub async fn delete(
    state: web::Data<AppState>,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    let headers = crate::messaging::trace::current_headers(); // @rabbitmq
    let written = &state.outbox_written; // @rabbitmq
    state
        .db
        .run(async move |client| {
            let tx = client.transaction().await?;
            let sql = "DELETE FROM notes WHERE id = $1";
            if tx.execute(sql, &[&id]).await? == 0 {
                return Err(ApiError::NotFound("note", id));
            }
            // @rabbitmq-begin
            let event = json!({"id": Uuid::now_v7(), "type": "note.deleted", "note_id": id});
            db::outbox::enqueue(&tx, &event, &headers).await?;
            // @rabbitmq-end
            tx.commit().await?;
            written.notify_one(); // @rabbitmq
            Ok(HttpResponse::NoContent().finish())
        })
        .await
}
