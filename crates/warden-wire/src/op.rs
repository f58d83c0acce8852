//! [`Op`]: every operation a client can ask for, and its wire name.

use serde::{Deserialize, Serialize};

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
    /// A session's history, oldest first:
    /// `{"op":"history","token":"shop1","since":120,"limit":100}`. `since` is the `seq` of the
    /// last entry already seen (default: from the start); without `since`, the newest `limit`
    /// entries (default 100). With `"follow":true` the reply is followed by a line for each
    /// later batch of entries, as `watch` streams events.
    History {
        /// The session.
        token: String,
        /// Only entries after this one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since: Option<i64>,
        /// At most this many (default 100, at most 1000).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<usize>,
        /// Keep the stream open and send new entries as they are committed.
        #[serde(default)]
        follow: bool,
    },
    /// Every webhook with its counters: `{"op":"webhooks"}`.
    Webhooks {},
    /// Events webhooks gave up on: `{"op":"webhook_dead","hook":"crm","limit":100}`; every
    /// webhook's without `hook`.
    WebhookDead {
        /// Only this webhook's.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        hook: Option<String>,
        /// At most this many (default 100).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<usize>,
    },
    /// Send a webhook's dead letters again, once each:
    /// `{"op":"webhook_redeliver","hook":"crm"}`, or only one with `"seq":120`.
    WebhookRedeliver {
        /// The webhook.
        hook: String,
        /// Only this journal entry's.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seq: Option<i64>,
    },
    /// Send a webhook every event again from a journal entry on:
    /// `{"op":"webhook_replay","hook":"crm","from":120}`.
    WebhookReplay {
        /// The webhook.
        hook: String,
        /// The first entry to send again.
        from: i64,
    },
    /// Set a webhook for one session (kept in the database; replaces one of the same name):
    /// `{"op":"webhook_set","token":"shop1","url":"https://example.com/h","secret":"whsec_...",
    /// "events":["message"]}`. Its name is `<token>:<name>` (`name` defaults to the URL
    /// without its query). It goes with the session, after sending its deletion.
    WebhookSet {
        /// The session.
        token: String,
        /// Where events are POSTed.
        url: String,
        /// `whsec_` and the base64 of the key; required unless `unsigned`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        secret: Option<String>,
        /// Sends without a signature (only when asked).
        #[serde(default)]
        unsigned: bool,
        /// The event types (default `["*"]`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        events: Option<Vec<String>>,
        /// Lets the URL reach loopback and private addresses.
        #[serde(default)]
        allow_private: bool,
        /// Its name within the session.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
    },
    /// Remove a session's webhook: `{"op":"webhook_remove","hook":"shop1:crm"}`.
    WebhookRemove {
        /// The webhook, as `webhooks` lists it.
        hook: String,
    },
    /// Send a `webhook.test` event now: `{"op":"webhook_test","hook":"crm"}`.
    WebhookTest {
        /// The webhook.
        hook: String,
    },
    /// Stream events: `{"op":"watch"}` or `{"op":"watch","token":"shop1"}`.
    Watch {
        /// Only this session's events.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<String>,
    },
}

/// Declares each op's wire name once: [`Op::name`] and [`OPS`] both come from this list, the
/// match in `name` does not compile when a variant is missing, and a test checks each name
/// against serde's.
macro_rules! op_names {
    ($($variant:ident => $name:literal),+ $(,)?) => {
        impl Op {
            /// The op's name as written on the wire (`"status"`, `"force_cleanup"`...).
            pub fn name(&self) -> &'static str {
                match self {
                    $(Self::$variant { .. } => $name,)+
                }
            }
        }

        /// The names of every op, for error messages.
        pub const OPS: &[&str] = &[$($name),+];
    };
}

op_names! {
    Create => "create",
    SetProxy => "set_proxy",
    Start => "start",
    Stop => "stop",
    Restart => "restart",
    RefreshQr => "refresh_qr",
    Logout => "logout",
    Delete => "delete",
    ForceCleanup => "force_cleanup",
    ResetReconnect => "reset_reconnect",
    Status => "status",
    List => "list",
    SendText => "send_text",
    MessageStatus => "message_status",
    Outbox => "outbox",
    RetryMessage => "retry_message",
    CancelMessage => "cancel_message",
    Reap => "reap",
    Health => "health",
    History => "history",
    Webhooks => "webhooks",
    WebhookDead => "webhook_dead",
    WebhookRedeliver => "webhook_redeliver",
    WebhookReplay => "webhook_replay",
    WebhookTest => "webhook_test",
    WebhookSet => "webhook_set",
    WebhookRemove => "webhook_remove",
    Watch => "watch",
}
