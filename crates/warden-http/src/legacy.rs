//! The session routes, answering in the legacy gateway's JSON field names so an existing
//! frontend keeps working: `success`, `token`, `name`, `status`, `session_status`, `isReady`,
//! `jid`, `userName`, `connectionStatus`, `message`, `qr`. Each session also carries warden's
//! full view under `session` (the control protocol's `SessionView`).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;
use warden_control::protocol::{SessionView, counts};
use warden_core::{Error, OpenOptions, SessionEvent, SessionInfo, SessionState};

use crate::error::ApiError;
use crate::extract::{JsonBody, QueryOf, TokenPath};
use crate::qr;
use crate::state::AppState;

/// The legacy `status` word of a session: `qr_generated`, `pair_code_generated`, `connected`,
/// `connecting`, `logged_out` or `disconnected`.
pub fn legacy_status(info: &SessionInfo) -> &'static str {
    match info.state {
        SessionState::WaitingForScan if info.qr.is_none() && info.pair_code.is_some() => {
            "pair_code_generated"
        }
        SessionState::WaitingForScan => "qr_generated",
        SessionState::Connected => "connected",
        SessionState::LoggedOut => "logged_out",
        SessionState::Queued
        | SessionState::Connecting
        | SessionState::Pairing
        | SessionState::BackingOff
            if info.pair_code.is_some() =>
        {
            "pair_code_generated"
        }
        SessionState::Queued
        | SessionState::Connecting
        | SessionState::Pairing
        | SessionState::BackingOff => "connecting",
        SessionState::Stopped
        | SessionState::Failed
        | SessionState::Replaced
        | SessionState::Banned
        | SessionState::QrExpired => "disconnected",
    }
}

/// One session in the legacy shape.
#[derive(Debug, Clone, Serialize)]
pub struct LegacySession {
    /// The token.
    pub token: String,
    /// The human name.
    pub name: String,
    /// The legacy status word (see [`legacy_status`]).
    pub status: &'static str,
    /// The same word, under the name older frontends read.
    pub session_status: &'static str,
    /// Whether the session is logged in and can send.
    #[serde(rename = "isReady")]
    pub is_ready: bool,
    /// The linked account's JID.
    pub jid: Option<String>,
    /// The linked account's display name.
    #[serde(rename = "userName")]
    pub user_name: Option<String>,
    /// warden's own state name (`waiting_for_scan`, `backing_off`, ...).
    #[serde(rename = "connectionStatus")]
    pub connection_status: &'static str,
    /// The QR text, while one is on show.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qr: Option<String>,
    /// The pairing code, while one is on show.
    #[serde(rename = "pairCode", skip_serializing_if = "Option::is_none")]
    pub pair_code: Option<String>,
    /// warden's full view.
    pub session: SessionView,
}

impl From<&SessionInfo> for LegacySession {
    fn from(info: &SessionInfo) -> Self {
        let status = legacy_status(info);
        Self {
            token: info.token.to_string(),
            name: info.name.clone(),
            status,
            session_status: status,
            is_ready: info.state == SessionState::Connected,
            jid: info.jid.clone(),
            user_name: info.account_name.clone(),
            connection_status: info.state.as_str(),
            qr: info.qr.as_ref().map(|qr| qr.code.clone()),
            pair_code: info.pair_code.clone(),
            session: SessionView::from(info),
        }
    }
}

/// The answer about one session.
#[derive(Debug, Clone, Serialize)]
pub struct SessionReply {
    /// Always `true`.
    pub success: bool,
    /// What was done, and what to do next.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The session.
    #[serde(flatten)]
    pub session: LegacySession,
    /// The QR code as a PNG `data:` URL, for an `<img src>` (start and refresh only).
    #[serde(rename = "qrImage", skip_serializing_if = "Option::is_none")]
    pub qr_image: Option<String>,
}

fn reply(info: &SessionInfo, message: impl Into<Option<String>>) -> Json<SessionReply> {
    Json(SessionReply {
        success: true,
        message: message.into(),
        session: LegacySession::from(info),
        qr_image: None,
    })
}

/// The answer of `GET /sessions`.
#[derive(Debug, Clone, Serialize)]
pub struct ListReply {
    /// Always `true`.
    pub success: bool,
    /// How many sessions there are.
    pub total: usize,
    /// How many are in each warden state.
    pub counts: BTreeMap<String, usize>,
    /// Every session, ordered by token.
    pub sessions: Vec<LegacySession>,
}

/// The body of `POST /session`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct CreateBody {
    /// A human name; defaults to the token.
    pub name: Option<String>,
    /// The token to use (`[A-Za-z0-9_-]{1,64}`); a random one when absent.
    pub token: Option<String>,
    /// The session's proxy (`socks5://`, `socks5h://` or `http://`).
    pub proxy: Option<String>,
}

/// The body of `POST /session/proxy/{token}`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProxyBody {
    /// The proxy URL; null or absent clears it.
    pub proxy: Option<String>,
    /// Restart a running session now, through the new proxy.
    pub reconnect: bool,
}

/// The body of `POST /session/start/{token}`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct StartBody {
    /// Link by a pairing code sent to this phone number (digits with country code) instead
    /// of a QR code.
    pub phone: Option<String>,
}

/// The query of `POST /session/restart/{token}`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ForceQuery {
    /// Restart even within the cooldown.
    pub force: Option<bool>,
}

/// `POST /session`: creates a session (stopped).
pub async fn create(
    State(app): State<Arc<AppState>>,
    JsonBody(body): JsonBody<CreateBody>,
) -> Result<Json<SessionReply>, ApiError> {
    let info = app
        .supervisor
        .create_with_proxy(body.name, body.token.as_deref(), body.proxy.as_deref())
        .await?;
    let message = format!(
        "Session created: start it with POST /session/start/{}",
        info.token
    );
    Ok(reply(&info, message))
}

/// `POST /session/proxy/{token}`: sets (or, with `"proxy": null`, clears) the session's
/// proxy; saved before the answer, used from the next connection, or now with
/// `"reconnect": true`.
pub async fn set_proxy(
    State(app): State<Arc<AppState>>,
    TokenPath(token): TokenPath,
    JsonBody(body): JsonBody<ProxyBody>,
) -> Result<Json<SessionReply>, ApiError> {
    let info = app
        .supervisor
        .set_proxy(&token, body.proxy.as_deref(), body.reconnect)
        .await?;
    let reconnecting = body.reconnect && info.desired == warden_core::Desired::Running;
    let message = match (&info.proxy, reconnecting) {
        (Some(_), true) => "Proxy set; reconnecting through it",
        (Some(_), false) => "Proxy set; used from the next connection",
        (None, true) => "Proxy cleared; reconnecting without it",
        (None, false) => "Proxy cleared; used from the next connection",
    };
    Ok(reply(&info, message.to_string()))
}

/// `GET /session/status/{token}`.
pub async fn status(
    State(app): State<Arc<AppState>>,
    TokenPath(token): TokenPath,
) -> Result<Json<SessionReply>, ApiError> {
    Ok(reply(&app.supervisor.status(&token)?, None))
}

/// `GET /sessions`: in a cluster, every node's sessions, each with its `node`.
pub async fn list(State(app): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let list = app.supervisor.list();
    let mine = ListReply {
        success: true,
        total: list.sessions.len(),
        counts: counts(&list),
        sessions: list.sessions.iter().map(LegacySession::from).collect(),
    };
    let mine = serde_json::to_value(&mine).unwrap_or_default();
    let Some(elsewhere) = &app.elsewhere else {
        return Json(mine);
    };
    let gathered = elsewhere
        .on_every_node(crate::elsewhere::HttpAsk::get("/sessions"))
        .await;
    Json(crate::elsewhere::merge_session_lists(
        elsewhere.me(),
        mine,
        gathered,
    ))
}

/// `POST /session/start/{token}`: starts the session and answers with the first QR code, the
/// login, or the state it settled in, waiting at most [`crate::ServeOptions::start_wait`].
pub async fn start(
    State(app): State<Arc<AppState>>,
    TokenPath(token): TokenPath,
    JsonBody(body): JsonBody<StartBody>,
) -> Result<Json<SessionReply>, ApiError> {
    let events = app.supervisor.subscribe();
    let options = OpenOptions {
        pair_phone: body.phone.filter(|p| !p.trim().is_empty()),
        ..OpenOptions::default()
    };
    let first = app.supervisor.start_session(&token, options).await?;
    let info = await_outcome(&app, events, first, None).await?;
    Ok(outcome_reply(&info))
}

/// `POST /session/refresh/{token}`: asks for a new QR code and answers with it (or with the
/// state the session settled in).
pub async fn refresh(
    State(app): State<Arc<AppState>>,
    TokenPath(token): TokenPath,
) -> Result<Json<SessionReply>, ApiError> {
    let old = app.supervisor.status(&token)?.qr.map(|qr| qr.code);
    let events = app.supervisor.subscribe();
    let first = app.supervisor.refresh_qr(&token).await?;
    let info = await_outcome(&app, events, first, old).await?;
    Ok(outcome_reply(&info))
}

/// The answer of start and refresh: the session, with the QR image when one is on show.
fn outcome_reply(info: &SessionInfo) -> Json<SessionReply> {
    let message = match (info.state, &info.pair_code) {
        (SessionState::WaitingForScan, _) if info.qr.is_some() => {
            "QR code generated: scan it in WhatsApp > Settings > Linked devices > Link a device"
                .to_owned()
        }
        (SessionState::Connected, _) => "Session connected".to_owned(),
        (_, Some(_)) => {
            "Pairing code generated: enter it in WhatsApp > Linked devices > Link with phone number"
                .to_owned()
        }
        (state, _) if state.is_parked() || state == SessionState::Stopped => format!(
            "Session is {state}{}",
            info.reason
                .as_deref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        ),
        _ => format!(
            "Session is {}: follow it with GET /session/status/{} or GET /events",
            info.state, info.token
        ),
    };
    let mut body = reply(info, message);
    if let Some(qr) = &info.qr {
        // A QR text too long to draw still leaves `qr` for the client to draw.
        body.0.qr_image = qr::png_data_url(&qr.code).ok();
    }
    body
}

/// Whether `info` answers a start or refresh. Stopped and parked states count only after the
/// session was seen running, so an update from before the request is not mistaken for one.
fn is_outcome(info: &SessionInfo, avoid_qr: Option<&str>, running_seen: &mut bool) -> bool {
    let state = info.state;
    if state.is_live() || matches!(state, SessionState::Queued | SessionState::BackingOff) {
        *running_seen = true;
    }
    match state {
        SessionState::WaitingForScan => {
            info.qr
                .as_ref()
                .is_some_and(|qr| avoid_qr != Some(qr.code.as_str()))
                || info.pair_code.is_some()
        }
        SessionState::Connected => true,
        SessionState::Stopped => *running_seen,
        state if state.is_parked() => *running_seen,
        _ => info.pair_code.is_some(),
    }
}

/// Follows the session's updates from `first` until [`is_outcome`], the wait bound, or
/// shutdown; answers the latest view.
async fn await_outcome(
    app: &AppState,
    mut events: broadcast::Receiver<SessionEvent>,
    first: SessionInfo,
    avoid_qr: Option<String>,
) -> Result<SessionInfo, Error> {
    let token = first.token.clone();
    let mut latest = first;
    let mut running_seen = false;
    let deadline = tokio::time::sleep(app.options.start_wait);
    tokio::pin!(deadline);
    loop {
        if is_outcome(&latest, avoid_qr.as_deref(), &mut running_seen) {
            return Ok(latest);
        }
        let event = tokio::select! {
            () = &mut deadline => return Ok(app.supervisor.status(token.as_str()).unwrap_or(latest)),
            () = app.shutdown.cancelled() => return Ok(latest),
            event = events.recv() => event,
        };
        match event {
            Ok(SessionEvent::Updated(info)) if info.token == token => latest = *info,
            Ok(SessionEvent::Removed { token: gone }) if gone == token => {
                return Err(Error::NotFound(token));
            }
            Ok(_) => {}
            Err(RecvError::Lagged(_)) => latest = app.supervisor.status(token.as_str())?,
            Err(RecvError::Closed) => return Ok(latest),
        }
    }
}

/// `POST /session/restart/{token}` (`?force=true` skips the cooldown): closes the connection
/// and opens a fresh one, keeping the credentials. Answers at once; follow the status.
pub async fn restart(
    State(app): State<Arc<AppState>>,
    TokenPath(token): TokenPath,
    QueryOf(query): QueryOf<ForceQuery>,
) -> Result<Json<SessionReply>, ApiError> {
    let info = app
        .supervisor
        .restart(&token, query.force.unwrap_or(false))
        .await?;
    Ok(reply(
        &info,
        "Session restarted (credentials kept)".to_owned(),
    ))
}

/// `POST /session/stop/{token}`: closes the connection, keeping the credentials.
pub async fn stop(
    State(app): State<Arc<AppState>>,
    TokenPath(token): TokenPath,
) -> Result<Json<SessionReply>, ApiError> {
    let info = app.supervisor.stop(&token).await?;
    Ok(reply(
        &info,
        "Session stopped (credentials kept)".to_owned(),
    ))
}

/// `POST /session/logout/{token}`: logs out and deletes the credentials.
pub async fn logout(
    State(app): State<Arc<AppState>>,
    TokenPath(token): TokenPath,
) -> Result<Json<SessionReply>, ApiError> {
    let info = app.supervisor.logout(&token).await?;
    Ok(reply(
        &info,
        "Session logged out: credentials deleted; start it to scan a new QR code".to_owned(),
    ))
}

/// `POST /session/force-cleanup/{token}`: closes whatever is there, cancels any pending
/// restart, and leaves the session stopped (credentials kept).
pub async fn force_cleanup(
    State(app): State<Arc<AppState>>,
    TokenPath(token): TokenPath,
) -> Result<Json<SessionReply>, ApiError> {
    let info = app.supervisor.force_cleanup(&token).await?;
    Ok(reply(
        &info,
        "Session cleaned up: stopped, credentials kept; start it again when ready".to_owned(),
    ))
}

/// `POST /session/reset-reconnect/{token}`: sets the reconnect attempts back to 0.
pub async fn reset_reconnect(
    State(app): State<Arc<AppState>>,
    TokenPath(token): TokenPath,
) -> Result<Json<SessionReply>, ApiError> {
    let info = app.supervisor.reset_reconnect(&token).await?;
    Ok(reply(&info, "Reconnect attempts reset to 0".to_owned()))
}

/// The answer of `DELETE /session/{token}`.
#[derive(Debug, Clone, Serialize)]
pub struct DeletedReply {
    /// Always `true`.
    pub success: bool,
    /// What was done.
    pub message: String,
    /// The token that is gone.
    pub token: String,
}

/// `DELETE /session/{token}`: closes the session and removes its folder and credentials.
pub async fn delete(
    State(app): State<Arc<AppState>>,
    TokenPath(token): TokenPath,
) -> Result<Json<DeletedReply>, ApiError> {
    app.supervisor.delete(&token).await?;
    Ok(Json(DeletedReply {
        success: true,
        message: "Session deleted".into(),
        token,
    }))
}
