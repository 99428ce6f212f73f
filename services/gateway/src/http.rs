//! The HTTP/JSON face. Every error, axum's own rejections included, is a JSON body
//! `{"error": {"code", "message"}}`.

use axum::extract::{DefaultBodyLimit, FromRequest, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::api::{EventBody, EventError, InputError, RecommendBody, Recorded};
use crate::gateway::Gateway;

/// An error answer: status, a stable machine-readable code and a message naming the problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    code: &'a str,
    message: &'a str,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into() }
    }

    fn from_json(error: &serde_json::Error) -> Self {
        use serde_json::error::Category;
        match error.classify() {
            Category::Syntax | Category::Eof | Category::Io => {
                Self::new(StatusCode::BAD_REQUEST, "malformed_json", format!("body is not valid JSON: {error}"))
            }
            Category::Data => Self::new(StatusCode::BAD_REQUEST, "invalid_body", error.to_string()),
        }
    }
}

impl From<InputError> for ApiError {
    fn from(error: InputError) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_argument", error.to_string())
    }
}

impl From<EventError> for ApiError {
    fn from(error: EventError) -> Self {
        match error {
            EventError::Input(error) => error.into(),
            EventError::Token(_) => Self::new(StatusCode::BAD_REQUEST, "invalid_token", error.to_string()),
            EventError::NotCovered { reason, .. } => Self::new(StatusCode::FORBIDDEN, reason, error.to_string()),
            EventError::Refused(message) => Self::new(StatusCode::BAD_REQUEST, "invalid_event", message),
            EventError::Unavailable(_) => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "events_unavailable", error.to_string())
            }
            EventError::DedupUnavailable(_) => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "dedup_unavailable", error.to_string())
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody { error: ErrorDetail { code: self.code, message: &self.message } };
        (self.status, Json(body)).into_response()
    }
}

/// A JSON body extractor whose rejections are [`ApiError`]s (axum's are plain text).
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let content_type = request.headers().get(header::CONTENT_TYPE).and_then(|value| value.to_str().ok());
        let is_json = content_type.and_then(|value| value.split(';').next()).is_some_and(|mime| {
            let mime = mime.trim();
            mime.eq_ignore_ascii_case("application/json")
        });
        if !is_json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!("Content-Type must be application/json, got {:?}", content_type.unwrap_or("nothing")),
            ));
        }
        let bytes = axum::body::Bytes::from_request(request, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", rejection.body_text())
            } else {
                ApiError::new(StatusCode::BAD_REQUEST, "unreadable_body", rejection.body_text())
            }
        })?;
        // Through a Value first: derived structs would also accept JSON arrays (by position).
        let value: serde_json::Value = serde_json::from_slice(&bytes).map_err(|error| ApiError::from_json(&error))?;
        if !value.is_object() {
            return Err(ApiError::new(StatusCode::BAD_REQUEST, "invalid_body", "body must be a JSON object"));
        }
        // The path names the offending field (`context.now_ms: invalid type ...`).
        serde_path_to_error::deserialize(value).map(JsonBody).map_err(|error| {
            let path = error.path().to_string();
            let inner = ApiError::from_json(error.inner());
            match path.as_str() {
                "." | "" => inner,
                _ => ApiError::new(inner.status, inner.code, format!("{path}: {}", inner.message)),
            }
        })
    }
}

async fn recommend(State(gateway): State<Gateway>, JsonBody(body): JsonBody<RecommendBody>) -> Response {
    match body.into_query() {
        Ok(query) => Json(gateway.recommend(query).await).into_response(),
        Err(error) => ApiError::from(error).into_response(),
    }
}

#[derive(Serialize)]
struct Accepted {
    accepted: bool,
    /// The event was already recorded: accepted again, not counted again.
    duplicate: bool,
}

async fn events(State(gateway): State<Gateway>, JsonBody(body): JsonBody<EventBody>) -> Response {
    let result = match body.into_input() {
        Ok(input) => gateway.record_event(input).await,
        Err(error) => Err(error.into()),
    };
    match result {
        Ok(recorded) => {
            let body = Accepted { accepted: true, duplicate: recorded == Recorded::Duplicate };
            (StatusCode::ACCEPTED, Json(body)).into_response()
        }
        Err(error) => ApiError::from(error).into_response(),
    }
}

async fn not_found(request: Request) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no route for {}", request.uri().path()))
}

async fn method_not_allowed(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{} is not allowed on {}", request.method(), request.uri().path()),
    )
}

/// The API routes (`/v1/recommend`, `/v1/events`) with JSON 404/405 answers; merge the admin
/// router into it.
pub fn api_router(gateway: Gateway) -> Router {
    let limit = gateway.settings().body_limit_bytes;
    Router::new()
        .route("/v1/recommend", post(recommend))
        .route("/v1/events", post(events))
        .with_state(gateway)
        .layer(DefaultBodyLimit::max(limit))
}

/// Adds the JSON 404/405 answers to a complete router.
pub fn with_json_fallbacks(router: Router) -> Router {
    router.fallback(not_found).method_not_allowed_fallback(method_not_allowed)
}
