//! The webhook routes: `GET /webhooks`, `GET /webhooks/dead`,
//! `POST /webhooks/{hook}/redeliver`, `/replay` and `/test`, `DELETE /webhooks/{hook}` (a
//! session's own), and `POST /session/webhook/{token}` (set one for a session, the body
//! being a `[[webhooks]]` entry as JSON). Answers are the control socket's views
//! (`warden_control::webhooks`).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use warden_control::protocol::{
    DeadLettersView, ErrorCode, RedeliveredView, ReplayingView, WebhookRemovedView,
    WebhookTestView, WebhookView, WebhooksView,
};
use warden_control::webhooks as ops;
use warden_webhooks::{WebhookConfig, WebhookError};

use crate::error::ApiError;
use crate::extract::{JsonBody, QueryOf, TokenPath};
use crate::state::AppState;

fn api_error(e: &WebhookError) -> ApiError {
    body_error(ops::error(e))
}

/// The HTTP error of a control-protocol error body.
fn body_error(body: warden_control::ErrorBody) -> ApiError {
    let status = match body.code {
        ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::InvalidToken | ErrorCode::BadRequest => StatusCode::BAD_REQUEST,
        ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let code = serde_json::to_value(body.code)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| "internal".into());
    ApiError::new(status, &code, body.message)
}

/// The query of `GET /webhooks/dead` and `POST /webhooks/{hook}/redeliver`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct DeadQuery {
    /// Only this webhook's (listing).
    pub hook: Option<String>,
    /// At most this many (listing; default 100).
    pub limit: Option<usize>,
    /// Only this entry's (redelivery).
    pub seq: Option<i64>,
    /// The API key, for clients that cannot send headers (checked by the auth layer).
    pub api_key: Option<String>,
}

/// The query of `POST /webhooks/{hook}/replay`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ReplayQuery {
    /// The first journal entry to send again.
    pub from: Option<i64>,
    /// The API key, for clients that cannot send headers (checked by the auth layer).
    pub api_key: Option<String>,
}

/// `GET /webhooks`.
pub async fn list(State(app): State<Arc<AppState>>) -> Json<WebhooksView> {
    Json(ops::list(app.webhooks.as_deref()))
}

/// `GET /webhooks/dead?hook=&limit=`.
pub async fn dead(
    State(app): State<Arc<AppState>>,
    QueryOf(query): QueryOf<DeadQuery>,
) -> Result<Json<DeadLettersView>, ApiError> {
    ops::dead(app.webhooks.as_deref(), query.hook.as_deref(), query.limit)
        .await
        .map(Json)
        .map_err(|e| api_error(&e))
}

/// `POST /webhooks/{hook}/redeliver?seq=`.
pub async fn redeliver(
    State(app): State<Arc<AppState>>,
    Path(hook): Path<String>,
    QueryOf(query): QueryOf<DeadQuery>,
) -> Result<Json<RedeliveredView>, ApiError> {
    ops::redeliver(app.webhooks.as_deref(), &hook, query.seq)
        .await
        .map(Json)
        .map_err(|e| api_error(&e))
}

/// `POST /webhooks/{hook}/replay?from=`.
pub async fn replay(
    State(app): State<Arc<AppState>>,
    Path(hook): Path<String>,
    QueryOf(query): QueryOf<ReplayQuery>,
) -> Result<Json<ReplayingView>, ApiError> {
    let from = query
        .from
        .ok_or_else(|| ApiError::bad_request("replay needs ?from=SEQ (a journal entry)"))?;
    ops::replay(app.webhooks.as_deref(), &hook, from)
        .await
        .map(Json)
        .map_err(|e| api_error(&e))
}

/// `POST /session/webhook/{token}`: sets a webhook for the session (body: the keys of a
/// `[[webhooks]]` entry).
pub async fn set(
    State(app): State<Arc<AppState>>,
    TokenPath(token): TokenPath,
    JsonBody(config): JsonBody<WebhookConfig>,
) -> Result<Json<WebhookView>, ApiError> {
    let request = ops::SetRequest { token, config };
    ops::set(&app.supervisor, app.webhooks.as_deref(), request)
        .await
        .map(Json)
        .map_err(body_error)
}

/// `DELETE /webhooks/{hook}`: removes a session's webhook.
pub async fn remove(
    State(app): State<Arc<AppState>>,
    Path(hook): Path<String>,
) -> Result<Json<WebhookRemovedView>, ApiError> {
    ops::remove(app.webhooks.as_deref(), &hook)
        .await
        .map(Json)
        .map_err(|e| api_error(&e))
}

/// `POST /webhooks/{hook}/test`.
pub async fn test(
    State(app): State<Arc<AppState>>,
    Path(hook): Path<String>,
) -> Result<Json<WebhookTestView>, ApiError> {
    ops::test(app.webhooks.as_deref(), &hook)
        .await
        .map(Json)
        .map_err(|e| api_error(&e))
}
