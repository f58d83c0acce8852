//! Sending and following messages over HTTP: the legacy send route (its shape kept, with an
//! optional idempotency key), one message's status, a session's outbox, retry and cancel.

use std::sync::Arc;

use axum::Json;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use serde::{Deserialize, Serialize};
use warden_control::protocol::{OutboxView, OutgoingView};
use warden_core::SendRequest;

use crate::error::ApiError;
use crate::extract::{JsonBody, QueryOf, TokenPath};
use crate::state::AppState;

/// The body of `POST /session/send/{token}`.
#[derive(Debug, Deserialize)]
pub struct SendBody {
    /// A phone number (digits with country code) or a JID.
    pub to: String,
    /// The text.
    pub text: String,
    /// The idempotency key: a second send with it answers with the first message.
    #[serde(default)]
    pub key: Option<String>,
}

/// The answer of `POST /session/send/{token}` (the legacy shape, plus the message's status).
#[derive(Debug, Serialize)]
pub struct SentReply {
    /// Always `true`.
    pub success: bool,
    /// What was done.
    pub message: String,
    /// The session that sends it.
    pub token: String,
    /// The message's id.
    #[serde(rename = "messageId")]
    pub message_id: String,
    /// Its idempotency key.
    pub key: String,
    /// Its status: `queued` when just accepted; a repeated key shows where the first is.
    pub status: String,
}

/// `POST /session/send/{token}`: stores the message and answers; the session sends it.
pub async fn send(
    State(app): State<Arc<AppState>>,
    TokenPath(token): TokenPath,
    JsonBody(body): JsonBody<SendBody>,
) -> Result<Json<SentReply>, ApiError> {
    let request = SendRequest {
        to: body.to,
        text: body.text,
        key: body.key,
    };
    let message = app.supervisor.send(&token, request).await?;
    Ok(Json(SentReply {
        success: true,
        message: "Message queued".into(),
        token,
        message_id: message.id,
        key: message.key,
        status: message.status.as_str().into(),
    }))
}

/// A `{token}` and an `{id}` (a message id or idempotency key) from the path.
pub struct MessagePath(pub String, pub String);

impl<S: Send + Sync> FromRequestParts<S> for MessagePath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Path::<(String, String)>::from_request_parts(parts, state)
            .await
            .map(|Path((token, id))| Self(token, id))
            .map_err(|e| ApiError::bad_request(format!("invalid path: {}", e.body_text())))
    }
}

/// `GET /session/message/{token}/{id}`: one message, by id or key.
pub async fn status(
    State(app): State<Arc<AppState>>,
    MessagePath(token, id): MessagePath,
) -> Result<Json<OutgoingView>, ApiError> {
    let message = app.supervisor.message_status(&token, &id).await?;
    Ok(Json(OutgoingView::from(&message)))
}

/// `POST /session/message/{token}/{id}/retry`: queues a failed message again.
pub async fn retry(
    State(app): State<Arc<AppState>>,
    MessagePath(token, id): MessagePath,
) -> Result<Json<OutgoingView>, ApiError> {
    let message = app.supervisor.retry_message(&token, &id).await?;
    Ok(Json(OutgoingView::from(&message)))
}

/// `POST /session/message/{token}/{id}/cancel`: cancels a queued or failed message.
pub async fn cancel(
    State(app): State<Arc<AppState>>,
    MessagePath(token, id): MessagePath,
) -> Result<Json<OutgoingView>, ApiError> {
    let message = app.supervisor.cancel_message(&token, &id).await?;
    Ok(Json(OutgoingView::from(&message)))
}

/// The query of `GET /session/outbox/{token}`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct OutboxQuery {
    /// At most this many messages (default 100).
    pub limit: Option<usize>,
}

/// `GET /session/outbox/{token}`: the session's queued and failed messages, oldest first.
pub async fn outbox(
    State(app): State<Arc<AppState>>,
    TokenPath(token): TokenPath,
    QueryOf(query): QueryOf<OutboxQuery>,
) -> Result<Json<OutboxView>, ApiError> {
    let messages = app
        .supervisor
        .outbox(&token, query.limit.unwrap_or(100))
        .await?;
    let paused = app.supervisor.new_chats_paused_until(&token);
    Ok(Json(OutboxView::new(&token, &messages, paused)))
}
