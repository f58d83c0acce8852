//! What goes in the journal for each thing that happens: a pure function from an event (and,
//! for a state change, the view before it) to an entry, tested with a table.

use std::time::SystemTime;

use serde_json::{Value, json};

use crate::events::SessionEvent;
use crate::state::SessionInfo;

/// The kinds of entry, which are also the webhook event types.
pub mod kind {
    /// A session was created, changed state or reason, or was deleted.
    pub const STATUS: &str = "session.status";
    /// A QR code was issued.
    pub const QR: &str = "session.qr";
    /// A pairing code was issued.
    pub const PAIR_CODE: &str = "session.pair_code";
    /// A message arrived.
    pub const MESSAGE: &str = "message";
    /// An outgoing message changed status, or sends to new chats were paused.
    pub const MESSAGE_STATUS: &str = "message.status";
    /// An operator asked for an operation (journal only: webhooks do not get it).
    pub const OPERATION: &str = "session.operation";
    /// Every kind.
    pub const ALL: [&str; 6] = [STATUS, QR, PAIR_CODE, MESSAGE, MESSAGE_STATUS, OPERATION];
}

/// One entry to write: its kind, what makes it collapse with its like (empty: never), its
/// data and its time.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The kind (see [`kind`]).
    pub kind: &'static str,
    /// Entries of a session with the same non-empty key collapse into one, counted.
    pub key: String,
    /// What happened, as JSON (never with the session's credentials; QR and pairing codes
    /// are in it, for webhooks, and left out when history is shown).
    pub data: Value,
    /// When.
    pub at: SystemTime,
}

/// The text of a time in entries (RFC 3339, milliseconds).
pub fn time_text(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// The entry for a change of a session's view, `before` being the view published before
/// (`None`: the session is new). `None` when neither the state nor its reason changed
/// (counters, attempts and the like are in the next entry that matters).
pub fn status_change(before: Option<&SessionInfo>, after: &SessionInfo) -> Option<Entry> {
    let from = before.map(|b| b.state.as_str());
    if let Some(before) = before
        && before.state == after.state
        && before.reason == after.reason
    {
        return None;
    }
    let to = after.state.as_str();
    let key = match from {
        // A creation never collapses.
        None => String::new(),
        Some(from) => format!(
            "{from}>{to}|{}|{}",
            after.reason.as_deref().unwrap_or(""),
            after.desired_text()
        ),
    };
    Some(Entry {
        kind: kind::STATUS,
        key,
        data: json!({
            "from": from,
            "to": to,
            "reason": after.reason,
            "desired": after.desired_text(),
            "attempts": after.attempts,
            "next_retry_at": after.next_retry_at.map(time_text),
            "banned_until": after.banned_until.map(time_text),
        }),
        at: after
            .state_since
            .max(before.map_or(after.state_since, |b| b.state_since)),
    })
}

/// The entry for operation `op` asked through `by` (`socket`, `http`, `embedded`), now.
/// Repeats of the same operation through the same interface collapse.
pub fn operation(op: &str, by: &str) -> Entry {
    Entry {
        kind: kind::OPERATION,
        key: format!("op:{op}:{by}"),
        data: json!({ "op": op, "by": by }),
        at: SystemTime::now(),
    }
}

/// The entry for an event other than a change of view (those go through [`status_change`]),
/// at `now`.
pub fn event(event: &SessionEvent, now: SystemTime) -> Option<Entry> {
    let (kind, key, data) = match event {
        SessionEvent::Updated(_) => return None,
        SessionEvent::Qr {
            code, expires_in, ..
        } => (
            kind::QR,
            "qr".to_string(),
            json!({ "code": code, "expires_at": time_text(now + *expires_in) }),
        ),
        SessionEvent::PairCode { code, .. } => {
            (kind::PAIR_CODE, "pair_code".into(), json!({ "code": code }))
        }
        SessionEvent::Message { message, .. } => (
            kind::MESSAGE,
            String::new(),
            json!({
                "id": message.id,
                "chat": message.chat,
                "sender": message.sender,
                "timestamp": time_text(message.timestamp),
                "kind": message.kind,
                "text": message.text,
            }),
        ),
        SessionEvent::MessageStatus(message) => (
            kind::MESSAGE_STATUS,
            String::new(),
            json!({
                "message_id": message.id,
                "key": message.key,
                "to": message.to,
                "status": message.status.as_str(),
                "reason": message.reason,
                "code": message.code,
                "attempts": message.attempts,
            }),
        ),
        SessionEvent::NewChatsPaused { until, .. } => (
            kind::MESSAGE_STATUS,
            String::new(),
            json!({ "new_chats_paused_until": time_text(*until) }),
        ),
        SessionEvent::Removed { .. } => (
            kind::STATUS,
            String::new(),
            json!({ "from": null, "to": "deleted", "reason": "deleted by operator" }),
        ),
    };
    Some(Entry {
        kind,
        key,
        data,
        at: now,
    })
}

/// The fields left out when entries are shown (history, the dashboard): pairing secrets.
pub const SECRET_FIELDS: [&str; 1] = ["code"];

/// `data` without its pairing secrets, for showing.
pub fn shown(kind: &str, mut data: Value) -> Value {
    if (kind == kind::QR || kind == kind::PAIR_CODE)
        && let Some(object) = data.as_object_mut()
    {
        for field in SECRET_FIELDS {
            object.remove(field);
        }
    }
    data
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::lifecycle::IncomingMessage;
    use crate::state::{Counters, Desired, SessionState};
    use crate::token::Token;

    fn view(state: SessionState, reason: Option<&str>, attempts: u32, at: u64) -> SessionInfo {
        SessionInfo {
            token: Token::parse("s1").unwrap(),
            name: "s1".into(),
            state,
            reason: reason.map(str::to_string),
            desired: Desired::Running,
            attempts,
            jid: None,
            account_name: None,
            created_at: SystemTime::UNIX_EPOCH,
            state_since: SystemTime::UNIX_EPOCH + Duration::from_secs(at),
            next_retry_at: None,
            banned_until: None,
            qr: None,
            pair_code: None,
            counters: Counters::default(),
            proxy: None,
            last_disconnect: None,
        }
    }

    /// (before, after) → (kind, key) or nothing.
    #[test]
    fn state_changes_give_entries_with_keys_that_ignore_attempts() {
        use SessionState::*;
        let rows: [(Option<SessionInfo>, SessionInfo, Option<&str>); 6] = [
            (None, view(Stopped, None, 0, 1), Some("")),
            (
                Some(view(Stopped, None, 0, 1)),
                view(Queued, None, 0, 2),
                Some("stopped>queued||running"),
            ),
            (
                Some(view(Connecting, None, 0, 1)),
                view(BackingOff, Some("timed_out"), 3, 2),
                Some("connecting>backing_off|timed_out|running"),
            ),
            (
                Some(view(Connecting, None, 0, 1)),
                view(BackingOff, Some("timed_out"), 4, 2),
                Some("connecting>backing_off|timed_out|running"),
            ),
            // Only the attempts changed: nothing.
            (
                Some(view(BackingOff, Some("timed_out"), 3, 1)),
                view(BackingOff, Some("timed_out"), 4, 1),
                None,
            ),
            // Same state, new reason: an entry.
            (
                Some(view(Failed, Some("a"), 0, 1)),
                view(Failed, Some("b"), 0, 1),
                Some("failed>failed|b|running"),
            ),
        ];
        for (i, (before, after, want)) in rows.iter().enumerate() {
            let got = status_change(before.as_ref(), after);
            assert_eq!(got.as_ref().map(|e| e.key.as_str()), *want, "row {i}");
            if let Some(entry) = got {
                assert_eq!(entry.kind, kind::STATUS);
                assert_eq!(entry.data["to"], after.state.as_str(), "row {i}");
                assert_eq!(entry.data["attempts"], after.attempts, "row {i}");
            }
        }
    }

    #[test]
    fn events_give_their_kinds_and_secrets_are_left_out_when_shown() {
        let token = Token::parse("s1").unwrap();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(100);
        let qr = SessionEvent::Qr {
            token: token.clone(),
            code: "2@secret".into(),
            expires_in: Duration::from_secs(20),
        };
        let entry = event(&qr, now).unwrap();
        assert_eq!((entry.kind, entry.key.as_str()), (kind::QR, "qr"));
        assert_eq!(entry.data["code"], "2@secret");
        assert_eq!(entry.data["expires_at"], "1970-01-01T00:02:00.000Z");
        assert_eq!(shown(entry.kind, entry.data.clone()).get("code"), None);
        let message = SessionEvent::Message {
            token: token.clone(),
            message: IncomingMessage {
                id: "M1".into(),
                chat: "1@s.whatsapp.net".into(),
                sender: "1@s.whatsapp.net".into(),
                timestamp: now,
                kind: "text".into(),
                text: Some("hi".into()),
            },
        };
        let entry = event(&message, now).unwrap();
        assert_eq!((entry.kind, entry.key.as_str()), (kind::MESSAGE, ""));
        assert_eq!(shown(entry.kind, entry.data.clone())["text"], "hi");
        let removed = event(&SessionEvent::Removed { token }, now).unwrap();
        assert_eq!(removed.data["to"], "deleted");
        assert_eq!(
            event(
                &SessionEvent::Updated(Box::new(view(SessionState::Stopped, None, 0, 1))),
                now
            ),
            None
        );
    }
}
