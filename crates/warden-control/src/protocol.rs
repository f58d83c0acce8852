//! The control protocol: the only types that go over the control socket.
//!
//! A client writes one JSON request per line and reads one JSON reply per line:
//!
//! ```text
//! → {"id": 7, "op": "status", "token": "shop1"}
//! ← {"id": 7, "ok": true, "result": {"token": "shop1", "state": "connected", ...}}
//! → {"id": 8, "op": "stop", "token": "nope"}
//! ← {"id": 8, "ok": false, "error": {"code": "not_found", "message": "no session nope"}}
//! ```
//!
//! `id` is optional and echoed back as given (a number or a string). After a `watch` request
//! the connection carries [`EventLine`]s, one per line, starting with the current state of
//! every watched session. Every op is documented, with an example, in
//! `docs/control-protocol.md`.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use warden_core::{
    Error, IncomingMessage, OutgoingMessage, Reaped, SessionEvent, SessionInfo, SessionList,
};

/// One operation a client can ask for. The `op` field names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Op {
    /// Create a session (stopped): `{"op":"create","name":"Shop","token":"shop1"}`; every
    /// field optional (a random token is made when none is given). With
    /// `"proxy":"socks5h://user:pass@10.0.0.2:1080"`, every connection of the session goes
    /// through that proxy (`socks5://`, `socks5h://` or `http://`).
    Create {
        /// A human name; defaults to the token.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        /// The token to use.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<String>,
        /// The session's proxy.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        proxy: Option<String>,
    },
    /// Set or clear a session's proxy:
    /// `{"op":"set_proxy","token":"shop1","proxy":"http://10.0.0.3:3128","reconnect":true}`.
    /// `proxy` null (or absent) clears it (the `[whatsapp] proxy` default applies). It is
    /// used from the next connection; `reconnect` restarts a running session now (refused
    /// within the restart cooldown, and then nothing changes).
    SetProxy {
        /// The session.
        token: String,
        /// The proxy URL.
        #[serde(default)]
        proxy: Option<String>,
        /// Reconnect now through it.
        #[serde(default)]
        reconnect: bool,
    },
    /// Start a session: `{"op":"start","token":"shop1"}`; with `"phone":"15551234567"` it
    /// links by pairing code instead of QR.
    Start {
        /// The session.
        token: String,
        /// Link by pairing code to this phone number.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        phone: Option<String>,
    },
    /// Stop a session, keeping its credentials: `{"op":"stop","token":"shop1"}`.
    Stop {
        /// The session.
        token: String,
    },
    /// Restart a session: `{"op":"restart","token":"shop1","force":false}`.
    Restart {
        /// The session.
        token: String,
        /// Skip the cooldown.
        #[serde(default)]
        force: bool,
    },
    /// Ask for a new QR code: `{"op":"refresh_qr","token":"shop1"}`.
    RefreshQr {
        /// The session.
        token: String,
    },
    /// Log out and delete the credentials: `{"op":"logout","token":"shop1"}`.
    Logout {
        /// The session.
        token: String,
    },
    /// Delete a session and its folder: `{"op":"delete","token":"shop1"}`.
    Delete {
        /// The session.
        token: String,
    },
    /// Close whatever is there and cancel any pending restart:
    /// `{"op":"force_cleanup","token":"shop1"}`.
    ForceCleanup {
        /// The session.
        token: String,
    },
    /// Set the reconnect attempts to 0: `{"op":"reset_reconnect","token":"shop1"}`.
    ResetReconnect {
        /// The session.
        token: String,
    },
    /// One session's status: `{"op":"status","token":"shop1"}`.
    Status {
        /// The session.
        token: String,
    },
    /// Every session with counts per state: `{"op":"list"}`.
    List {},
    /// Queue a text message:
    /// `{"op":"send_text","token":"shop1","to":"15551234567","text":"hi","key":"order-42"}`.
    SendText {
        /// The session that sends.
        token: String,
        /// A phone number (digits with country code) or a JID.
        to: String,
        /// The text.
        text: String,
        /// The idempotency key (at most 128 bytes): a second send with the same key answers
        /// with the first message and sends nothing. Made when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<String>,
    },
    /// One outgoing message, by id or key:
    /// `{"op":"message_status","token":"shop1","message":"order-42"}`.
    MessageStatus {
        /// The session.
        token: String,
        /// The message's id or idempotency key (`id` is the request's own id).
        message: String,
    },
    /// A session's queued and failed messages: `{"op":"outbox","token":"shop1"}`.
    Outbox {
        /// The session.
        token: String,
        /// At most this many (default 100).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<usize>,
    },
    /// Queue a failed message again:
    /// `{"op":"retry_message","token":"shop1","message":"order-42"}`.
    RetryMessage {
        /// The session.
        token: String,
        /// The message's id or idempotency key.
        message: String,
    },
    /// Cancel a queued or failed message:
    /// `{"op":"cancel_message","token":"shop1","message":"order-42"}`.
    CancelMessage {
        /// The session.
        token: String,
        /// The message's id or idempotency key.
        message: String,
    },
    /// Reap stuck sessions now: `{"op":"reap"}`.
    Reap {},
    /// Whether the daemon and its supervisor answer: `{"op":"health"}`.
    Health {},
    /// Stream events: `{"op":"watch"}` or `{"op":"watch","token":"shop1"}`.
    Watch {
        /// Only this session's events.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<String>,
    },
}

impl Op {
    /// The op's name as written on the wire (`"status"`, `"force_cleanup"`...).
    pub fn name(&self) -> &'static str {
        match self {
            Self::Create { .. } => "create",
            Self::SetProxy { .. } => "set_proxy",
            Self::Start { .. } => "start",
            Self::Stop { .. } => "stop",
            Self::Restart { .. } => "restart",
            Self::RefreshQr { .. } => "refresh_qr",
            Self::Logout { .. } => "logout",
            Self::Delete { .. } => "delete",
            Self::ForceCleanup { .. } => "force_cleanup",
            Self::ResetReconnect { .. } => "reset_reconnect",
            Self::Status { .. } => "status",
            Self::List {} => "list",
            Self::SendText { .. } => "send_text",
            Self::MessageStatus { .. } => "message_status",
            Self::Outbox { .. } => "outbox",
            Self::RetryMessage { .. } => "retry_message",
            Self::CancelMessage { .. } => "cancel_message",
            Self::Reap {} => "reap",
            Self::Health {} => "health",
            Self::Watch { .. } => "watch",
        }
    }
}

/// The names of every op, for error messages.
pub const OPS: [&str; 20] = [
    "create",
    "set_proxy",
    "start",
    "stop",
    "restart",
    "refresh_qr",
    "logout",
    "delete",
    "force_cleanup",
    "reset_reconnect",
    "status",
    "list",
    "send_text",
    "message_status",
    "outbox",
    "retry_message",
    "cancel_message",
    "reap",
    "health",
    "watch",
];

/// A parsed request line.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// Echoed back in the reply (`null` when absent).
    pub id: Value,
    /// What to do.
    pub op: Op,
}

impl Request {
    /// Parses one request line. On failure, returns the id (if one could be read) and the
    /// error to send back.
    pub fn parse(line: &str) -> Result<Self, (Value, ErrorBody)> {
        let value: Value = serde_json::from_str(line).map_err(|e| {
            (
                Value::Null,
                ErrorBody::bad_request(format!("malformed JSON: {e}")),
            )
        })?;
        let Value::Object(mut object) = value else {
            return Err((
                Value::Null,
                ErrorBody::bad_request("a request is a JSON object, like {\"op\":\"list\"}"),
            ));
        };
        let id = object.remove("id").unwrap_or(Value::Null);
        if !(id.is_null() || id.is_number() || id.is_string()) {
            return Err((
                Value::Null,
                ErrorBody::bad_request("\"id\" must be a number or a string"),
            ));
        }
        let op_name = match object.get("op") {
            Some(Value::String(name)) => name.clone(),
            Some(_) => return Err((id, ErrorBody::bad_request("\"op\" must be a string"))),
            None => {
                return Err((
                    id,
                    ErrorBody::bad_request(format!("missing \"op\"; one of: {}", OPS.join(", "))),
                ));
            }
        };
        if !OPS.contains(&op_name.as_str()) {
            return Err((
                id,
                ErrorBody::bad_request(format!(
                    "unknown op {op_name:?}; one of: {}",
                    OPS.join(", ")
                )),
            ));
        }
        match serde_json::from_value::<Op>(Value::Object(object)) {
            Ok(op) => Ok(Self { id, op }),
            Err(e) => Err((
                id,
                ErrorBody::bad_request(format!("invalid {op_name} request: {e}")),
            )),
        }
    }
}

/// The request as a client writes it.
#[derive(Debug, Clone, Serialize)]
pub struct RequestLine<'a> {
    /// Echoed back in the reply.
    pub id: u64,
    /// The operation, flattened beside `id`.
    #[serde(flatten)]
    pub op: &'a Op,
}

/// One reply line: `ok` with a `result`, or not `ok` with an `error`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    /// The request's id.
    pub id: Value,
    /// Whether the operation succeeded.
    pub ok: bool,
    /// What it returned (`ok` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// What went wrong (not `ok` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
}

impl Reply {
    /// A success carrying `result`.
    pub fn ok(id: Value, result: impl Serialize) -> Self {
        match serde_json::to_value(result) {
            Ok(result) => Self {
                id,
                ok: true,
                result: Some(result),
                error: None,
            },
            Err(e) => Self::err(
                id,
                ErrorBody::new(ErrorCode::Internal, format!("cannot encode the reply: {e}")),
            ),
        }
    }

    /// A failure.
    pub fn err(id: Value, error: ErrorBody) -> Self {
        Self {
            id,
            ok: false,
            result: None,
            error: Some(error),
        }
    }
}

/// Machine-readable error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Malformed JSON, unknown op, missing or mistyped fields, a line too long.
    BadRequest,
    /// The token is not `[A-Za-z0-9_-]{1,64}`.
    InvalidToken,
    /// No such session.
    NotFound,
    /// The operation does not fit the session's state (or the token is taken).
    Conflict,
    /// A restart too soon after the last start; see `retry_after_secs`.
    Cooldown,
    /// A start refused because the daemon already runs as many live sessions as its capacity
    /// (derived from its file-descriptor limit, or `[daemon] max_sessions`); nothing was
    /// opened. Stop a session, or raise the limit.
    Capacity,
    /// The supervisor is shutting down or did not answer.
    Unavailable,
    /// Something broke inside the daemon.
    Internal,
}

/// An error reply's body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What kind of error.
    pub code: ErrorCode,
    /// What happened and what to do, for people.
    pub message: String,
    /// With `cooldown`: the seconds to wait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_secs: Option<u64>,
}

impl ErrorBody {
    /// An error with a code and a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retry_after_secs: None,
        }
    }

    /// A `bad_request` error.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }
}

impl From<&Error> for ErrorBody {
    fn from(error: &Error) -> Self {
        let code = match error {
            Error::InvalidToken(_) => ErrorCode::InvalidToken,
            Error::NotFound(_) | Error::MessageNotFound { .. } => ErrorCode::NotFound,
            Error::InvalidRequest(_) => ErrorCode::BadRequest,
            Error::AlreadyExists(_) | Error::Conflict { .. } | Error::NotConnected { .. } => {
                ErrorCode::Conflict
            }
            Error::Cooldown { .. } => ErrorCode::Cooldown,
            Error::Capacity { .. } => ErrorCode::Capacity,
            Error::Link {
                source: warden_core::LinkError::InvalidRecipient(_),
                ..
            }
            | Error::Config(_) => ErrorCode::BadRequest,
            Error::Unavailable(_) => ErrorCode::Unavailable,
            Error::Link { .. } | Error::Store(_) => ErrorCode::Internal,
        };
        let retry_after_secs = match error {
            Error::Cooldown { retry_after, .. } => Some(retry_after.as_secs().max(1)),
            _ => None,
        };
        Self {
            code,
            message: error.to_string(),
            retry_after_secs,
        }
    }
}

fn time(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// A QR code on show.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QrView {
    /// The text to encode in the QR image.
    pub code: String,
    /// When it stops being valid (RFC 3339).
    pub expires_at: String,
}

/// Lifetime counters of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CountersView {
    /// Connections that reached `connected`.
    pub connects: u64,
    /// Connections that ended.
    pub disconnects: u64,
    /// Connections started by the restart policy.
    pub restarts: u64,
}

/// A session as the protocol shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionView {
    /// The token.
    pub token: String,
    /// The human name.
    pub name: String,
    /// The state (`stopped`, `queued`, `connecting`, `waiting_for_scan`, `pairing`,
    /// `connected`, `backing_off`, `failed`, `logged_out`, `replaced`, `banned`, `qr_expired`).
    pub state: String,
    /// Why it is in that state.
    pub reason: Option<String>,
    /// `running` or `stopped`: what the operator asked for.
    pub desired: String,
    /// Reconnect attempts counted.
    pub attempts: u32,
    /// The linked account's JID.
    pub jid: Option<String>,
    /// The linked account's display name.
    pub account_name: Option<String>,
    /// When the session was created (RFC 3339).
    pub created_at: String,
    /// When it entered its state (RFC 3339).
    pub state_since: String,
    /// When the next automatic attempt is due (RFC 3339).
    pub next_retry_at: Option<String>,
    /// When a temporary ban ends (RFC 3339).
    pub banned_until: Option<String>,
    /// The QR code on show.
    pub qr: Option<QrView>,
    /// The pairing code on show.
    pub pair_code: Option<String>,
    /// Lifetime counters.
    pub counters: CountersView,
    /// The session's own proxy, password masked (`user:***@`); null when it uses the
    /// `[whatsapp] proxy` default (or none).
    #[serde(default)]
    pub proxy: Option<String>,
    /// Until when its sends to new chats are paused after a 463 refusal (RFC 3339); absent
    /// when they are not (and in lists).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_chats_paused_until: Option<String>,
}

impl SessionView {
    /// The view with the outbox's pause of new chats, if any.
    pub fn with_pause(mut self, until: Option<SystemTime>) -> Self {
        self.new_chats_paused_until = until.map(time);
        self
    }
}

impl From<&SessionInfo> for SessionView {
    fn from(info: &SessionInfo) -> Self {
        Self {
            token: info.token.to_string(),
            name: info.name.clone(),
            state: info.state.as_str().to_owned(),
            reason: info.reason.clone(),
            desired: match info.desired {
                warden_core::Desired::Running => "running",
                warden_core::Desired::Stopped => "stopped",
            }
            .to_owned(),
            attempts: info.attempts,
            jid: info.jid.clone(),
            account_name: info.account_name.clone(),
            created_at: time(info.created_at),
            state_since: time(info.state_since),
            next_retry_at: info.next_retry_at.map(time),
            banned_until: info.banned_until.map(time),
            qr: info.qr.as_ref().map(|qr| QrView {
                code: qr.code.clone(),
                expires_at: time(qr.expires_at),
            }),
            pair_code: info.pair_code.clone(),
            counters: CountersView {
                connects: info.counters.connects,
                disconnects: info.counters.disconnects,
                restarts: info.counters.restarts,
            },
            proxy: info.proxy.clone(),
            new_chats_paused_until: None,
        }
    }
}

/// The result of `list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListView {
    /// Every session, ordered by token.
    pub sessions: Vec<SessionView>,
    /// How many sessions are in each state.
    pub counts: BTreeMap<String, usize>,
}

impl From<&SessionList> for ListView {
    fn from(list: &SessionList) -> Self {
        Self {
            sessions: list.sessions.iter().map(SessionView::from).collect(),
            counts: counts(list),
        }
    }
}

/// Counts per state, keyed by the state's name.
pub fn counts(list: &SessionList) -> BTreeMap<String, usize> {
    list.counts
        .iter()
        .map(|(state, n)| (state.as_str().to_owned(), *n))
        .collect()
}

/// The result of `delete`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeletedView {
    /// The token that is gone.
    pub deleted: String,
}

/// An outgoing message: the result of `send_text`, `message_status`, `retry_message` and
/// `cancel_message`, and what `message_status` events carry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutgoingView {
    /// Its WhatsApp message id.
    pub message_id: String,
    /// Its idempotency key (the id when none was given).
    pub key: String,
    /// The recipient (a JID).
    pub to: String,
    /// `queued`, `sent`, `delivered`, `read`, `failed` or `cancelled`.
    pub status: String,
    /// Why it failed, or what the server said.
    pub reason: Option<String>,
    /// The server's error code, when it refused it (463: too many new chats).
    pub code: Option<u16>,
    /// How many sends of it failed.
    pub attempts: u32,
    /// When it was accepted (RFC 3339).
    pub created_at: String,
    /// When its status last changed (RFC 3339).
    pub updated_at: String,
    /// When it expires if still queued (RFC 3339).
    pub expires_at: Option<String>,
}

impl From<&OutgoingMessage> for OutgoingView {
    fn from(m: &OutgoingMessage) -> Self {
        Self {
            message_id: m.id.clone(),
            key: m.key.clone(),
            to: m.to.clone(),
            status: m.status.as_str().to_owned(),
            reason: m.reason.clone(),
            code: m.code,
            attempts: m.attempts,
            created_at: time(m.created_at),
            updated_at: time(m.updated_at),
            expires_at: m.expires_at.map(time),
        }
    }
}

/// The result of `outbox`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxView {
    /// The session.
    pub token: String,
    /// Its queued and failed messages, oldest first.
    pub messages: Vec<OutgoingView>,
    /// Until when its sends to new chats are paused (RFC 3339), if they are.
    pub new_chats_paused_until: Option<String>,
}

impl OutboxView {
    /// The view of `messages` of `token`.
    pub fn new(token: &str, messages: &[OutgoingMessage], paused: Option<SystemTime>) -> Self {
        Self {
            token: token.to_owned(),
            messages: messages.iter().map(OutgoingView::from).collect(),
            new_chats_paused_until: paused.map(time),
        }
    }
}

/// One session cleaned up by a reap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReapedView {
    /// The session.
    pub token: String,
    /// The state it was stuck in.
    pub was: String,
    /// The state it was left in.
    pub now: String,
    /// Why.
    pub reason: String,
}

impl From<&Reaped> for ReapedView {
    fn from(r: &Reaped) -> Self {
        Self {
            token: r.token.to_string(),
            was: r.was.as_str().to_owned(),
            now: r.now.as_str().to_owned(),
            reason: r.reason.clone(),
        }
    }
}

/// The result of `reap`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReapView {
    /// What was reaped.
    pub reaped: Vec<ReapedView>,
}

/// The result of `health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthView {
    /// `ok` when the supervisor answered.
    pub status: String,
    /// The daemon's version.
    pub version: String,
    /// Seconds since the daemon started.
    pub uptime_secs: u64,
    /// How many sessions there are.
    pub sessions: usize,
    /// How many are in each state.
    pub counts: BTreeMap<String, usize>,
}

/// The first reply to `watch`; events follow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchingView {
    /// The session watched, or `null` for all.
    pub watching: Option<String>,
}

/// An incoming message as the protocol shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageView {
    /// The message id.
    pub id: String,
    /// The chat (JID).
    pub chat: String,
    /// The sender (JID).
    pub sender: String,
    /// When it was sent (RFC 3339).
    pub timestamp: String,
    /// `text`, `image`, `video`, `audio`, `document`, `sticker`, `reaction`, `location`,
    /// `contact` or `other`.
    pub kind: String,
    /// Its text, caption or reaction, if any.
    pub text: Option<String>,
}

impl From<&IncomingMessage> for MessageView {
    fn from(m: &IncomingMessage) -> Self {
        Self {
            id: m.id.clone(),
            chat: m.chat.clone(),
            sender: m.sender.clone(),
            timestamp: time(m.timestamp),
            kind: m.kind.clone(),
            text: m.text.clone(),
        }
    }
}

/// One line of a `watch` stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EventLine {
    /// A session's full current view (sent first for every watched session, then on change).
    Session {
        /// The session.
        session: Box<SessionView>,
    },
    /// A new QR code to scan.
    Qr {
        /// The session.
        token: String,
        /// The text to encode in the QR image.
        code: String,
        /// Seconds it stays valid.
        expires_in_secs: u64,
    },
    /// A pairing code to type on the phone.
    PairCode {
        /// The session.
        token: String,
        /// The code.
        code: String,
    },
    /// A message arrived.
    Message {
        /// The session that received it.
        token: String,
        /// The message.
        message: MessageView,
    },
    /// An outgoing message changed status.
    MessageStatus {
        /// The session that sends it.
        token: String,
        /// The message as it is now.
        message: OutgoingView,
    },
    /// WhatsApp refused a message to a new chat (463): sends to new chats are paused.
    NewChatsPaused {
        /// The session.
        token: String,
        /// When they resume (RFC 3339).
        until: String,
    },
    /// A session was deleted.
    Removed {
        /// The session.
        token: String,
    },
    /// The daemon ends the stream (it fell too far behind, or the daemon is stopping).
    Closed {
        /// Why.
        reason: String,
    },
}

impl From<&SessionEvent> for EventLine {
    fn from(event: &SessionEvent) -> Self {
        match event {
            SessionEvent::Updated(info) => Self::Session {
                session: Box::new(SessionView::from(info.as_ref())),
            },
            SessionEvent::Qr {
                token,
                code,
                expires_in,
            } => Self::Qr {
                token: token.to_string(),
                code: code.clone(),
                expires_in_secs: expires_in.as_secs(),
            },
            SessionEvent::PairCode { token, code } => Self::PairCode {
                token: token.to_string(),
                code: code.clone(),
            },
            SessionEvent::Message { token, message } => Self::Message {
                token: token.to_string(),
                message: MessageView::from(message),
            },
            SessionEvent::MessageStatus(message) => Self::MessageStatus {
                token: message.token.to_string(),
                message: OutgoingView::from(message.as_ref()),
            },
            SessionEvent::NewChatsPaused { token, until } => Self::NewChatsPaused {
                token: token.to_string(),
                until: time(*until),
            },
            SessionEvent::Removed { token } => Self::Removed {
                token: token.to_string(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(line: &str, expected: Result<(Value, Op), (Value, ErrorCode, &str)>) {
        match (Request::parse(line), expected) {
            (Ok(request), Ok((id, op))) => {
                assert_eq!((request.id, request.op), (id, op), "{line}");
            }
            (Err((id, body)), Err((want_id, code, fragment))) => {
                assert_eq!((id, body.code), (want_id, code), "{line}: {}", body.message);
                assert!(
                    body.message.contains(fragment),
                    "{line}: {:?} lacks {fragment:?}",
                    body.message
                );
            }
            (got, want) => panic!("{line}: got {got:?}, wanted {want:?}"),
        }
    }

    #[test]
    fn requests_parse_or_explain_why_not() {
        check(
            r#"{"id":7,"op":"status","token":"shop1"}"#,
            Ok((
                json!(7),
                Op::Status {
                    token: "shop1".into(),
                },
            )),
        );
        check(r#"{"op":"list"}"#, Ok((Value::Null, Op::List {})));
        check(
            r#"{"id":"a","op":"restart","token":"t"}"#,
            Ok((
                json!("a"),
                Op::Restart {
                    token: "t".into(),
                    force: false,
                },
            )),
        );
        check(
            r#"{"id":1,"op":"start","token":"t","phone":"155"}"#,
            Ok((
                json!(1),
                Op::Start {
                    token: "t".into(),
                    phone: Some("155".into()),
                },
            )),
        );
        check(
            r#"{"op":"watch"}"#,
            Ok((Value::Null, Op::Watch { token: None })),
        );
        check(
            "{nope",
            Err((Value::Null, ErrorCode::BadRequest, "malformed JSON")),
        );
        check(
            "[1,2]",
            Err((Value::Null, ErrorCode::BadRequest, "JSON object")),
        );
        check(
            r#"{"id":{"x":1},"op":"list"}"#,
            Err((Value::Null, ErrorCode::BadRequest, "\"id\" must be")),
        );
        check(
            r#"{"id":3,"op":"explode"}"#,
            Err((json!(3), ErrorCode::BadRequest, "unknown op \"explode\"")),
        );
        check(
            r#"{"id":4}"#,
            Err((json!(4), ErrorCode::BadRequest, "missing \"op\"")),
        );
        check(
            r#"{"id":5,"op":"status"}"#,
            Err((json!(5), ErrorCode::BadRequest, "missing field `token`")),
        );
        check(
            r#"{"id":6,"op":"status","token":12}"#,
            Err((json!(6), ErrorCode::BadRequest, "invalid status request")),
        );
        check(
            r#"{"id":8,"op":"restart","token":"t","force":"yes"}"#,
            Err((json!(8), ErrorCode::BadRequest, "invalid restart request")),
        );
        check(
            r#"{"id":9,"op":"list","extra":1}"#,
            Err((json!(9), ErrorCode::BadRequest, "unknown field `extra`")),
        );
        check(
            r#"{"id":10,"op":7}"#,
            Err((json!(10), ErrorCode::BadRequest, "\"op\" must be a string")),
        );
    }

    #[test]
    fn every_op_name_is_known() {
        let ops = [
            Op::List {},
            Op::Reap {},
            Op::Health {},
            Op::Watch { token: None },
            Op::Status { token: "t".into() },
            Op::RefreshQr { token: "t".into() },
            Op::ForceCleanup { token: "t".into() },
            Op::ResetReconnect { token: "t".into() },
            Op::Outbox {
                token: "t".into(),
                limit: None,
            },
            Op::MessageStatus {
                token: "t".into(),
                message: "k".into(),
            },
            Op::RetryMessage {
                token: "t".into(),
                message: "k".into(),
            },
            Op::CancelMessage {
                token: "t".into(),
                message: "k".into(),
            },
        ];
        for op in ops {
            assert!(OPS.contains(&op.name()), "{}", op.name());
            let line = serde_json::to_value(&op).unwrap();
            assert_eq!(line["op"], op.name());
        }
    }

    #[test]
    fn request_lines_round_trip() {
        for key in [None, Some("order-42".to_string())] {
            let op = Op::SendText {
                token: "t".into(),
                to: "155".into(),
                text: "hi".into(),
                key,
            };
            let line = serde_json::to_string(&RequestLine { id: 3, op: &op }).unwrap();
            assert_eq!(Request::parse(&line).unwrap().op, op);
        }
        // An op's own fields never collide with the request's `id`.
        let op = Op::MessageStatus {
            token: "t".into(),
            message: "order-42".into(),
        };
        let line = serde_json::to_string(&RequestLine { id: 9, op: &op }).unwrap();
        let parsed = Request::parse(&line).unwrap();
        assert_eq!((parsed.id, parsed.op), (json!(9), op));
    }

    #[test]
    fn replies_have_the_documented_shape() {
        let ok = serde_json::to_value(Reply::ok(
            json!(7),
            DeletedView {
                deleted: "t".into(),
            },
        ))
        .unwrap();
        assert_eq!(ok, json!({"id": 7, "ok": true, "result": {"deleted": "t"}}));
        let mut body = ErrorBody::new(ErrorCode::Cooldown, "wait");
        body.retry_after_secs = Some(24);
        let err = serde_json::to_value(Reply::err(json!(8), body)).unwrap();
        assert_eq!(
            err,
            json!({"id": 8, "ok": false, "error": {"code": "cooldown", "message": "wait", "retry_after_secs": 24}})
        );
    }

    #[test]
    fn a_start_beyond_capacity_is_refused_with_its_own_code() {
        let body = ErrorBody::from(&Error::Capacity { limit: 2200 });
        assert_eq!(body.code, ErrorCode::Capacity);
        assert!(body.message.contains("2200"), "{}", body.message);
        let wire = serde_json::to_value(Reply::err(json!(9), body)).unwrap();
        assert_eq!(wire["error"]["code"], json!("capacity"));
        let back: ErrorBody = serde_json::from_value(wire["error"].clone()).unwrap();
        assert_eq!(back.code, ErrorCode::Capacity);
    }
}
