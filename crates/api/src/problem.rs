//! Errors of the API as RFC 9457 problem details (`application/problem+json`).

use actix_web::http::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use actix_web::http::{ConnectionType, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;
use utoipa::ToSchema;

/// Longest `detail`, in characters.
const DETAIL_MAX: usize = 200;

/// An RFC 9457 problem document.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// `about:blank`: the status code says it all.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub title: &'static str,
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// What a handler can fail with. `Display` is the client's detail: `Internal` only logs its cause.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    /// What was not found (`"item"`), and the id asked for.
    #[error("no {0} with id {1}")]
    NotFound(&'static str, uuid::Uuid),
    #[error("the request body must be application/json")]
    UnsupportedMediaType,
    #[error("the request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    #[error("the request body did not arrive in time")]
    BodyTimeout,
    #[error("{0}")]
    Unprocessable(String),
    #[error("the database is unavailable, retry shortly")]
    Unavailable(String),
    #[error("an unexpected error occurred")]
    Internal(String),
}

impl From<deadpool_postgres::PoolError> for ApiError {
    fn from(error: deadpool_postgres::PoolError) -> Self {
        // Timeouts and failed connects mean the database is unreachable or saturated: 503.
        ApiError::Unavailable(error.to_string())
    }
}

impl From<tokio_postgres::Error> for ApiError {
    fn from(error: tokio_postgres::Error) -> Self {
        // Text PostgreSQL can't store (NUL 22021, outside its encoding 22P05) is the client's: 422.
        let code = error.code().map(tokio_postgres::error::SqlState::code);
        if matches!(code, Some("22021" | "22P05")) {
            return ApiError::Unprocessable(
                "a text value holds a character the database cannot store (such as NUL)".into(),
            );
        }
        // The database away or a conflict a retry resolves: 503 with Retry-After, not a bug.
        if crate::db::is_transient(&error) {
            ApiError::Unavailable(crate::db::describe(&error))
        } else {
            ApiError::Internal(crate::db::describe(&error))
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(..) => StatusCode::NOT_FOUND,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        // Details quote client input (an unknown field's name, a bad cursor): never whole.
        let detail = clip(&self.to_string(), DETAIL_MAX).into_owned();
        let mut response = problem(self.status_code(), Some(detail));
        match self {
            ApiError::Internal(cause) => tracing::error!(%cause, "request failed"),
            ApiError::Unavailable(cause) => {
                tracing::warn!(%cause, "database unavailable");
                let one_second = HeaderValue::from_static("1");
                response.headers_mut().insert(RETRY_AFTER, one_second);
            }
            // The rest of the body may still come: the connection cannot carry another request.
            ApiError::BodyTimeout => response
                .head_mut()
                .set_connection_type(ConnectionType::Close),
            _ => {}
        }
        response
    }
}

/// Maps the JSON extractor's failures; well-formed JSON of the wrong shape is a 422.
pub fn json_error(error: actix_web::error::JsonPayloadError, limit: usize) -> ApiError {
    use actix_web::error::JsonPayloadError as E;
    match error {
        E::ContentType => ApiError::UnsupportedMediaType,
        E::Overflow { .. } | E::OverflowKnownLength { .. } => ApiError::PayloadTooLarge(limit),
        E::Deserialize(e) if e.is_data() => ApiError::Unprocessable(e.to_string()),
        E::Deserialize(e) => ApiError::BadRequest(format!("malformed JSON: {e}")),
        E::Payload(actix_web::error::PayloadError::Io(e))
            if e.kind() == std::io::ErrorKind::TimedOut =>
        {
            ApiError::BodyTimeout
        }
        other => ApiError::BadRequest(other.to_string()),
    }
}

/// `text` cut to `max` characters (plus `...`), to quote client input without echoing kilobytes.
pub fn clip(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    match text.char_indices().nth(max) {
        None => std::borrow::Cow::Borrowed(text),
        Some((cut, _)) => std::borrow::Cow::Owned(format!("{}...", &text[..cut])),
    }
}

/// The problem document for `status` as a response, titled with RFC 9110's reason phrase.
fn problem(status: StatusCode, detail: Option<String>) -> HttpResponse {
    let title = match status {
        // RFC 9110's names, where the http crate keeps older ones.
        StatusCode::PAYLOAD_TOO_LARGE => "Content Too Large",
        StatusCode::UNPROCESSABLE_ENTITY => "Unprocessable Content",
        _ => status.canonical_reason().unwrap_or("Error"),
    };
    let document = Problem {
        kind: "about:blank",
        title,
        status: status.as_u16(),
        detail,
    };
    let body = serde_json::to_vec(&document).unwrap_or_default();
    HttpResponse::build(status)
        .insert_header((CONTENT_TYPE, "application/problem+json"))
        .body(body)
}

/// The API's answer to a path it does not know.
pub async fn not_found() -> HttpResponse {
    problem(StatusCode::NOT_FOUND, None)
}

/// The API's answer to a known path with a method it does not serve.
pub async fn method_not_allowed() -> HttpResponse {
    problem(StatusCode::METHOD_NOT_ALLOWED, None)
}
