//! What the replies carry, and the lines of a `watch` stream. Times are RFC 3339 text.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

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
    /// Why its last connection ended, and what followed; absent when it never had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why: Option<WhyView>,
    /// In a cluster, the node that runs it; absent on a single daemon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// Why a session's last connection ended, and what the restart policy (or the operator)
/// decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WhyView {
    /// The state the connection was in.
    pub from: String,
    /// The reason (`connection_lost`, `timed_out`, `stopped by operator`...).
    pub reason: Option<String>,
    /// When it ended (RFC 3339).
    pub at: String,
    /// The state it was put in: `backing_off` (a retry follows), `failed`, `banned`...
    pub decision: String,
    /// When the next attempt is due (RFC 3339), if one is.
    pub next_retry_at: Option<String>,
}

/// One entry of a session's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntryView {
    /// Its number: increasing within the session (`since` takes it).
    pub seq: i64,
    /// `session.status`, `session.qr`, `session.pair_code`, `message` or `message.status`.
    pub kind: String,
    /// What happened (for `session.status`: `from`, `to`, `reason`, `desired`, `attempts`,
    /// `next_retry_at`, `banned_until`). QR and pairing codes are left out.
    pub data: serde_json::Value,
    /// When it first happened (RFC 3339, milliseconds).
    pub first_at: String,
    /// When it last happened (RFC 3339, milliseconds).
    pub at: String,
    /// How many times in a row it happened: a storm, collapsed.
    pub repeats: u32,
}

/// One webhook, with its counters since the daemon started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookView {
    /// Its name (the URL without its query, unless `name` is set; `<token>:<name>` for a
    /// session's own).
    pub name: String,
    /// The one session it serves (set with `webhook_set`); absent for `daemon.toml`'s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Its URL without the query.
    pub url: String,
    /// The event types it gets (`*`: all).
    pub events: Vec<String>,
    /// Whether deliveries are signed.
    pub signed: bool,
    /// Whether it may reach private addresses.
    pub allow_private: bool,
    /// Events delivered.
    pub delivered: u64,
    /// Attempts that failed and were retried.
    pub retried: u64,
    /// Events given up on (dead letters).
    pub dead: u64,
    /// Events read from the journal and not yet done.
    pub queued: u64,
}

/// The result of `webhooks`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhooksView {
    /// Every webhook of `daemon.toml`.
    pub webhooks: Vec<WebhookView>,
}

/// An event a webhook gave up on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetterView {
    /// The webhook.
    pub hook: String,
    /// The journal entry (`webhook_redeliver` takes it).
    pub seq: i64,
    /// The session.
    pub token: String,
    /// The event type.
    pub kind: String,
    /// Why it was given up on.
    pub reason: String,
    /// Attempts made.
    pub attempts: u32,
    /// When (RFC 3339).
    pub failed_at: String,
}

/// The result of `webhook_dead`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLettersView {
    /// Oldest first.
    pub dead: Vec<DeadLetterView>,
}

/// One dead letter that failed again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedAgainView {
    /// The journal entry.
    pub seq: i64,
    /// Why.
    pub reason: String,
}

/// The result of `webhook_redeliver`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RedeliveredView {
    /// Entries delivered now (out of the dead letters).
    pub delivered: Vec<i64>,
    /// Entries that failed again (back in the dead letters).
    pub failed: Vec<FailedAgainView>,
}

/// The result of `webhook_remove`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookRemovedView {
    /// The webhook that is gone.
    pub removed: String,
}

/// The result of `webhook_replay`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayingView {
    /// The webhook.
    pub hook: String,
    /// The first entry sent again.
    pub from: i64,
}

/// The result of `webhook_test`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookTestView {
    /// The webhook.
    pub hook: String,
    /// Whether the receiver answered 2xx.
    pub delivered: bool,
    /// What happened (`HTTP 200`, `no answer within 10s`...).
    pub outcome: String,
}

/// The result of `history`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryView {
    /// The session.
    pub token: String,
    /// Its entries, oldest first.
    pub entries: Vec<HistoryEntryView>,
}

/// The result of `list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListView {
    /// Every session, ordered by token.
    pub sessions: Vec<SessionView>,
    /// How many sessions are in each state.
    pub counts: BTreeMap<String, usize>,
    /// In a cluster, the sessions no node reported: each with the node the database says
    /// owns it (`null`: none right now, it is between nodes), or whose node did not answer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unplaced: Vec<UnplacedView>,
    /// In a cluster, why this list is only this node's part (the cluster's database could not
    /// be reached); absent when it is whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incomplete: Option<String>,
}

/// A session of the cluster that no node reported in a `list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnplacedView {
    /// The token.
    pub token: String,
    /// The node the database says owns it, if any (that node did not answer).
    pub node: Option<String>,
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
    /// In a cluster, every live node by name: whether it answered, and how many sessions it
    /// runs; `sessions` and `counts` above are then the whole cluster's. Absent on a single
    /// daemon.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub nodes: BTreeMap<String, NodeHealthView>,
    /// In a cluster, why this report covers this node only (the cluster's database could not
    /// be reached); absent when it is whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incomplete: Option<String>,
}

/// One node of a cluster in `health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeHealthView {
    /// `ok`, or why it did not answer.
    pub status: String,
    /// How many sessions it runs (0 when it did not answer).
    pub sessions: usize,
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
    /// New entries of a followed history (`history` with `follow`).
    History {
        /// The session.
        token: String,
        /// The entries, oldest first.
        entries: Vec<HistoryEntryView>,
    },
    /// The daemon ends the stream (it fell too far behind, or the daemon is stopping).
    Closed {
        /// Why.
        reason: String,
    },
}
