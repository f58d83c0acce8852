//! Conversions from warden-core's types (feature `core`): how the daemon builds the views.

use std::collections::BTreeMap;
use std::time::SystemTime;

use warden_core::{
    Error, IncomingMessage, OutgoingMessage, Reaped, SessionEvent, SessionInfo, SessionList,
};

use crate::reply::{ErrorBody, ErrorCode};
use crate::views::{
    CountersView, EventLine, HistoryEntryView, ListView, MessageView, OutboxView, OutgoingView,
    QrView, ReapedView, SessionView, WhyView,
};

fn time(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
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

impl SessionView {
    /// The view with the outbox's pause of new chats, if any.
    pub fn with_pause(mut self, until: Option<SystemTime>) -> Self {
        self.new_chats_paused_until = until.map(time);
        self
    }
}

impl From<&warden_core::HistoryEntry> for HistoryEntryView {
    fn from(entry: &warden_core::HistoryEntry) -> Self {
        let millis = |t| humantime::format_rfc3339_millis(t).to_string();
        Self {
            seq: entry.seq,
            kind: entry.kind.clone(),
            data: entry.data.clone(),
            first_at: millis(entry.first_at),
            at: millis(entry.at),
            repeats: entry.repeats,
        }
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
            why: info.last_disconnect.as_ref().map(|last| WhyView {
                from: last.from.as_str().to_owned(),
                reason: last.reason.clone(),
                at: time(last.at),
                decision: last.decision.as_str().to_owned(),
                next_retry_at: last.next_retry_at.map(time),
            }),
            node: None,
        }
    }
}

impl From<&SessionList> for ListView {
    fn from(list: &SessionList) -> Self {
        Self {
            sessions: list.sessions.iter().map(SessionView::from).collect(),
            counts: counts(list),
            unplaced: Vec::new(),
            incomplete: None,
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
    use crate::reply::Reply;
    use serde_json::json;

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
