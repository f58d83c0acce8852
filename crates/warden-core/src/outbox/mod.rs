//! The outbox: every message a session is asked to send is stored first, then sent in order
//! when the session is connected, paced, and followed to `read` or `failed`.
//!
//! - **Stored before acknowledged.** [`Supervisor::send`](crate::Supervisor::send) answers
//!   after the message's row is committed in the session database; a kill -9 after the answer
//!   loses nothing. It is accepted while the session is connected or on its way back
//!   (queued, connecting, pairing, backing off), and refused otherwise.
//! - **Sent once.** Its WhatsApp message id is chosen when it is accepted and kept: a message
//!   whose send was cut short (a crash, a lost connection before the server's ack) is sent
//!   again under the same id, and recipients drop a second copy with an id they have.
//! - **Idempotent.** A caller's key (or one made for it) names the message: a second send
//!   with the same key answers with the first message and sends nothing, across restarts.
//! - **One at a time, in order, paced**: one drain task per connected session (none for a
//!   session that is not connected) sends the oldest queued message, waits for the server's
//!   ack, and waits `60 s / per_minute` before the next.
//! - **Nothing pending for ever**: a message still queued after `ttl` fails as expired; a
//!   logout or delete fails the session's queued messages; a send that keeps failing fails
//!   after `max_attempts`. **Nothing kept for ever**: a message out of the queue is deleted
//!   `retention` after its last change.
//! - **Refusals.** A server refusal fails the message with its code. 463 (WhatsApp's
//!   "reach-out timelock" on accounts that start too many new chats) also pauses the session's
//!   sends to chats it has not written to before, until the lock's end (24 h when unknown).
//!
//! [`status`] is the message's life as a pure function; [`input`] checks requests.

mod drain;
mod inbound;
pub mod input;
pub mod status;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dashmap::DashMap;
use serde::Deserialize;
use tokio::sync::Notify;

use crate::journal::Bus;
use warden_store::{NewOutboxMessage, OutboxChange, OutboxRow, Store};

use crate::error::{Error, StoreError};
use crate::events::SessionEvent;
use crate::state::SessionState;
use crate::token::Token;

pub(crate) use drain::drain;
pub(crate) use inbound::consume;
pub use status::{MessageEvent, MessageStatus, ReceiptKind};

/// How long new chats stay paused after a 463 that names no end.
const DEFAULT_TIMELOCK: Duration = Duration::from_secs(24 * 3600);
/// How many queued messages the drain looks through for one it may send (while new chats
/// are paused, messages to them are passed over).
const LOOKAHEAD: usize = 64;

/// The outbox's settings (`[outbox]` in `daemon.toml`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutboxConfig {
    /// A message still queued this long after it was accepted fails as expired. `0s`: messages
    /// are accepted only while the session is connected, and fail when it disconnects.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// At most this many messages a minute per session (one every `60 s / per_minute`).
    pub per_minute: u32,
    /// A message whose send fails this many times (not counting lost connections) fails.
    pub max_attempts: u32,
    /// How often expired messages are looked for.
    #[serde(with = "humantime_serde")]
    pub expiry_check: Duration,
    /// A message that is no longer queued is deleted this long after its last change (its key
    /// can then be used again). The outbox never grows without bound.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(24 * 3600),
            per_minute: 20,
            max_attempts: 5,
            expiry_check: Duration::from_secs(30),
            retention: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

impl OutboxConfig {
    /// Checks every value makes sense.
    pub fn validate(&self) -> Result<(), String> {
        if self.per_minute == 0 {
            return Err("per_minute must be at least 1".into());
        }
        if self.max_attempts == 0 {
            return Err("max_attempts must be at least 1".into());
        }
        if self.expiry_check.is_zero() {
            return Err("expiry_check must be more than 0s".into());
        }
        if self.retention.is_zero() {
            return Err("retention must be more than 0s".into());
        }
        Ok(())
    }

    /// The pause between two sends of one session.
    pub fn pace(&self) -> Duration {
        Duration::from_secs(60) / self.per_minute.max(1)
    }
}

/// A request to send a text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendRequest {
    /// A phone number with country code, or a JID.
    pub to: String,
    /// The text.
    pub text: String,
    /// The caller's idempotency key; one is made when absent.
    pub key: Option<String>,
}

/// An outgoing message, as status reads and events show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingMessage {
    /// The session that sends it.
    pub token: Token,
    /// Its WhatsApp message id.
    pub id: String,
    /// Its idempotency key.
    pub key: String,
    /// The recipient (a JID).
    pub to: String,
    /// The text.
    pub text: String,
    /// Where it is.
    pub status: MessageStatus,
    /// Why it failed, or what the server said.
    pub reason: Option<String>,
    /// The server's error code, when it refused it.
    pub code: Option<u16>,
    /// How many sends of it failed.
    pub attempts: u32,
    /// When it was accepted.
    pub created_at: SystemTime,
    /// When its status last changed.
    pub updated_at: SystemTime,
    /// When it expires if still queued.
    pub expires_at: Option<SystemTime>,
}

fn from_millis(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64)
}

fn millis(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl OutgoingMessage {
    fn from_row(token: &Token, row: OutboxRow) -> Result<Self, Error> {
        let status = row.status.parse::<MessageStatus>().map_err(|e| {
            Error::Store(StoreError::Db(warden_store::DbError::Corrupt(format!(
                "outbox message {}: {e}",
                row.id
            ))))
        })?;
        Ok(Self {
            token: token.clone(),
            id: row.id,
            key: row.key,
            to: row.to,
            text: row.text,
            status,
            reason: row.reason,
            code: row.code.and_then(|c| u16::try_from(c).ok()),
            attempts: row.attempts,
            created_at: from_millis(row.created_at),
            updated_at: from_millis(row.updated_at),
            expires_at: row.expires_at.map(from_millis),
        })
    }
}

/// What an event says besides itself: the reason and code to record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Detail {
    pub reason: Option<String>,
    pub code: Option<u16>,
}

impl Detail {
    pub(crate) fn reason(reason: impl Into<String>) -> Self {
        Self {
            reason: Some(reason.into()),
            code: None,
        }
    }
}

/// A new WhatsApp-style message id: `3EB0` and 18 hexadecimal digits.
fn new_message_id() -> String {
    use rand::Rng;
    let n: u128 = rand::rng().random();
    format!("3EB0{:018X}", n & ((1u128 << 72) - 1))
}

/// Wall-clock time that also advances with tokio's clock (so a paused test clock moves it):
/// the later of the system's time and the time at start plus tokio's time since. A system
/// clock corrected forward is followed; one set back is not (times never go backwards).
struct Clock {
    system: SystemTime,
    instant: tokio::time::Instant,
}

impl Clock {
    fn new() -> Self {
        Self {
            system: SystemTime::now(),
            instant: tokio::time::Instant::now(),
        }
    }

    fn now(&self) -> SystemTime {
        SystemTime::now().max(self.system + self.instant.elapsed())
    }
}

/// The outbox of every session. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Outbox {
    inner: Arc<Inner>,
}

struct Inner {
    db: Store,
    config: OutboxConfig,
    clock: Clock,
    events: Bus,
    /// One per session whose drain runs: wakes it when a message is queued.
    wakers: DashMap<Token, Arc<Notify>>,
    /// Sessions whose sends to new chats are paused (463), until when.
    pauses: DashMap<Token, SystemTime>,
    /// The message each session's drain is sending right now (it cannot be cancelled).
    in_flight: DashMap<Token, String>,
    /// When each session last sent, so the pace holds across reconnects.
    last_sends: DashMap<Token, tokio::time::Instant>,
}

impl Outbox {
    pub(crate) fn new(db: Store, config: OutboxConfig, events: Bus) -> Self {
        Self {
            inner: Arc::new(Inner {
                db,
                config,
                clock: Clock::new(),
                events,
                wakers: DashMap::new(),
                pauses: DashMap::new(),
                in_flight: DashMap::new(),
                last_sends: DashMap::new(),
            }),
        }
    }

    pub(crate) fn config(&self) -> &OutboxConfig {
        &self.inner.config
    }

    /// Whether a session in `state` takes new messages.
    fn accepts(&self, state: SessionState) -> bool {
        match state {
            SessionState::Connected => true,
            SessionState::Queued
            | SessionState::Connecting
            | SessionState::Pairing
            | SessionState::BackingOff => !self.inner.config.ttl.is_zero(),
            _ => false,
        }
    }

    /// Stores a message of `token` (in `state`), unless its key was used: then answers with
    /// the message stored under it. The bool says whether the message is new.
    pub(crate) async fn accept(
        &self,
        token: &Token,
        state: SessionState,
        current_state: impl Fn() -> Option<SessionState>,
        request: SendRequest,
    ) -> Result<(OutgoingMessage, bool), Error> {
        let to = input::recipient(&request.to).map_err(Error::InvalidRequest)?;
        input::text(&request.text).map_err(Error::InvalidRequest)?;
        if let Some(key) = &request.key {
            input::key(key).map_err(Error::InvalidRequest)?;
        }
        if !self.accepts(state) {
            // A repeated key answers whatever the session's state is now. (When the session
            // takes messages, the insert below answers a repeated key itself, in one job.)
            if let Some(key) = &request.key
                && let Some(row) = self
                    .inner
                    .db
                    .outbox_by_key(token.as_str(), key)
                    .await
                    .map_err(db)?
            {
                return Ok((OutgoingMessage::from_row(token, row)?, false));
            }
            return Err(Error::NotConnected {
                token: token.clone(),
                state,
            });
        }
        let id = new_message_id();
        let now = self.inner.clock.now();
        let ttl = self.inner.config.ttl;
        let message = NewOutboxMessage {
            token: token.to_string(),
            key: request.key.unwrap_or_else(|| id.clone()),
            id,
            to,
            text: request.text,
            status: MessageStatus::Queued.as_str().into(),
            created_at: millis(now),
            expires_at: (!ttl.is_zero()).then(|| millis(now + ttl)),
        };
        let (row, new) = match self.inner.db.outbox_insert(message).await {
            Ok(stored) => stored,
            // The session's record went (a delete) while this was on its way.
            Err(warden_store::DbError::Closed) => return Err(Error::NotFound(token.clone())),
            Err(e) => return Err(db(e)),
        };
        let message = OutgoingMessage::from_row(token, row)?;
        if !new {
            return Ok((message, false));
        }
        tracing::info!(token = %token, id = %message.id, "message queued");
        self.publish(&message);
        // A logout (or a stop under `ttl = 0`) that came while this was stored has already
        // failed the queued messages: fail this one too, rather than leave it behind.
        match current_state() {
            Some(now) if self.accepts(now) => {
                self.wake(token);
                Ok((message, true))
            }
            now => {
                let reason = format!(
                    "the session stopped taking messages ({}) while this one was stored",
                    now.map_or("deleted", |s| s.as_str())
                );
                let failed = self
                    .apply(
                        token,
                        &message.id,
                        MessageEvent::SessionGone,
                        Detail::reason(reason),
                    )
                    .await?;
                Ok((failed.unwrap_or(message), true))
            }
        }
    }

    /// The message of `token` with this id or key.
    pub(crate) async fn get(
        &self,
        token: &Token,
        id_or_key: &str,
    ) -> Result<OutgoingMessage, Error> {
        match self
            .inner
            .db
            .outbox_get(token.as_str(), id_or_key)
            .await
            .map_err(db)?
        {
            Some(row) => OutgoingMessage::from_row(token, row),
            None => Err(Error::MessageNotFound {
                token: token.clone(),
                id: id_or_key.to_owned(),
            }),
        }
    }

    /// `token`'s queued and failed messages, oldest first (at most `limit`).
    pub(crate) async fn pending(
        &self,
        token: &Token,
        limit: usize,
    ) -> Result<Vec<OutgoingMessage>, Error> {
        let statuses = [
            MessageStatus::Queued.as_str(),
            MessageStatus::Failed.as_str(),
        ];
        let rows = self
            .inner
            .db
            .outbox_list(token.as_str(), &statuses, limit)
            .await
            .map_err(db)?;
        rows.into_iter()
            .map(|r| OutgoingMessage::from_row(token, r))
            .collect()
    }

    /// Applies an operator's `event` (retry, cancel) to the message with this id or key.
    pub(crate) async fn operate(
        &self,
        token: &Token,
        state: SessionState,
        id_or_key: &str,
        event: MessageEvent,
    ) -> Result<OutgoingMessage, Error> {
        let message = self.get(token, id_or_key).await?;
        if event == MessageEvent::Retry && !self.accepts(state) {
            return Err(Error::NotConnected {
                token: token.clone(),
                state,
            });
        }
        if event == MessageEvent::Cancel
            && self
                .inner
                .in_flight
                .get(token)
                .is_some_and(|id| *id == message.id)
        {
            return Err(Error::InvalidRequest(format!(
                "message {} is being sent right now: it can no longer be cancelled",
                message.id
            )));
        }
        if status::next(message.status, event).is_none() {
            let what = if event == MessageEvent::Retry {
                "retried"
            } else {
                "cancelled"
            };
            return Err(Error::InvalidRequest(format!(
                "message {} is {}: only a failed message can be {what}{}",
                message.id,
                message.status,
                if event == MessageEvent::Cancel {
                    " or a queued one"
                } else {
                    ""
                }
            )));
        }
        let detail = match event {
            MessageEvent::Cancel => Detail::reason("cancelled by request"),
            _ => Detail::default(),
        };
        let Some(after) = self.apply(token, &message.id, event, detail).await? else {
            // Something else moved it meanwhile (its ack, a receipt, its expiry).
            let now = self.get(token, &message.id).await?;
            return Err(Error::InvalidRequest(format!(
                "message {} became {} meanwhile; nothing was changed",
                now.id, now.status
            )));
        };
        if event == MessageEvent::Retry {
            self.wake(token);
        }
        Ok(after)
    }

    /// When `token` last sent a message (in this process).
    pub(crate) fn last_send(&self, token: &Token) -> Option<tokio::time::Instant> {
        self.inner.last_sends.get(token).map(|t| *t)
    }

    /// Records that `token` sends a message now.
    pub(crate) fn sending_now(&self, token: &Token) -> tokio::time::Instant {
        let now = tokio::time::Instant::now();
        self.inner.last_sends.insert(token.clone(), now);
        now
    }

    /// Forgets what is kept in memory for `token` (it was deleted).
    pub(crate) fn forget(&self, token: &Token) {
        self.inner.wakers.remove(token);
        self.inner.pauses.remove(token);
        self.inner.in_flight.remove(token);
        self.inner.last_sends.remove(token);
    }

    /// Marks the message `token`'s drain is sending (`None`: none).
    pub(crate) fn set_in_flight(&self, token: &Token, id: Option<&str>) {
        match id {
            Some(id) => {
                self.inner.in_flight.insert(token.clone(), id.to_owned());
            }
            None => {
                self.inner.in_flight.remove(token);
            }
        }
    }

    /// Applies `event` to message `id` of `token`, in one transaction; publishes and returns
    /// the message when it changed. A failed send also counts an attempt.
    pub(crate) async fn apply(
        &self,
        token: &Token,
        id: &str,
        event: MessageEvent,
        detail: Detail,
    ) -> Result<Option<OutgoingMessage>, Error> {
        let max_attempts = self.inner.config.max_attempts;
        let retry_ttl = self.inner.config.ttl;
        let now = self.inner.clock.now();
        let applied = self
            .inner
            .db
            .outbox_apply(token.as_str(), id, move |row| {
                let current = row.status.parse::<MessageStatus>().ok()?;
                let failed_send = matches!(event, MessageEvent::SendFailed { .. });
                if failed_send && current != MessageStatus::Queued {
                    // A receipt, a cancel or an expiry got there first: nothing to count.
                    return None;
                }
                let attempts = match event {
                    MessageEvent::SendFailed { .. } => row.attempts + 1,
                    MessageEvent::Retry => 0,
                    _ => row.attempts,
                };
                let event = match event {
                    MessageEvent::SendFailed { .. } => MessageEvent::SendFailed {
                        last: attempts >= max_attempts,
                    },
                    other => other,
                };
                let to = status::next(current, event);
                if to.is_none() && !failed_send {
                    return None;
                }
                let expires_at = match event {
                    MessageEvent::Retry if !retry_ttl.is_zero() => Some(millis(now + retry_ttl)),
                    _ => row.expires_at,
                };
                Some(OutboxChange {
                    status: to.unwrap_or(current).as_str().into(),
                    reason: match to {
                        Some(MessageStatus::Queued | MessageStatus::Sent) => None,
                        _ => detail.reason.clone().or_else(|| row.reason.clone()),
                    },
                    code: detail.code.map(i64::from).or(row.code),
                    attempts,
                    at: millis(now),
                    expires_at,
                })
            })
            .await
            .map_err(db)?;
        match applied {
            Some((row, true)) => {
                let message = OutgoingMessage::from_row(token, row)?;
                if matches!(message.status, MessageStatus::Failed) {
                    tracing::warn!(
                        token = %token,
                        id = %message.id,
                        reason = message.reason.as_deref().unwrap_or(""),
                        "message failed"
                    );
                }
                self.publish(&message);
                Ok(Some(message))
            }
            _ => Ok(None),
        }
    }

    /// Fails every queued message of `token` with `reason` (its session was logged out or
    /// deleted, or disconnected under `ttl = 0`).
    pub(crate) async fn fail_queued(
        &self,
        token: &Token,
        event: MessageEvent,
        reason: &str,
    ) -> Result<usize, Error> {
        let queued = self
            .inner
            .db
            .outbox_list(
                token.as_str(),
                &[MessageStatus::Queued.as_str()],
                usize::MAX >> 1,
            )
            .await
            .map_err(db)?;
        let mut failed = 0;
        for row in queued {
            if self
                .apply(token, &row.id, event, Detail::reason(reason))
                .await?
                .is_some()
            {
                failed += 1;
            }
        }
        Ok(failed)
    }

    /// Fails every session's queued messages whose time to live has passed.
    pub(crate) async fn expire_due(&self) -> Result<usize, Error> {
        let due = self
            .inner
            .db
            .outbox_expiring(
                MessageStatus::Queued.as_str(),
                millis(self.inner.clock.now()),
            )
            .await
            .map_err(db)?;
        let mut expired = 0;
        for row in due {
            let Ok(token) = Token::parse(&row.token) else {
                continue;
            };
            let reason = format!(
                "expired: still queued after {}",
                humantime::format_duration(self.inner.config.ttl)
            );
            if self
                .apply(
                    &token,
                    &row.id,
                    MessageEvent::Expired,
                    Detail::reason(reason),
                )
                .await?
                .is_some()
            {
                expired += 1;
            }
        }
        Ok(expired)
    }

    /// Deletes the messages that left the queue more than `retention` ago.
    pub(crate) async fn prune(&self) -> Result<u64, Error> {
        let before = self.inner.clock.now() - self.inner.config.retention;
        self.inner
            .db
            .outbox_prune(MessageStatus::Queued.as_str(), millis(before))
            .await
            .map_err(db)
    }

    /// The oldest queued message of `token` that may be sent now: while new chats are
    /// paused, messages to chats the session has not written to wait.
    pub(crate) async fn next_to_send(
        &self,
        token: &Token,
    ) -> Result<Option<OutgoingMessage>, Error> {
        let queued = self
            .inner
            .db
            .outbox_list(token.as_str(), &[MessageStatus::Queued.as_str()], LOOKAHEAD)
            .await
            .map_err(db)?;
        let paused = self.paused_until(token).is_some();
        for row in queued {
            if paused {
                let known = [
                    MessageStatus::Sent.as_str(),
                    MessageStatus::Delivered.as_str(),
                    MessageStatus::Read.as_str(),
                ];
                let has_chat = self
                    .inner
                    .db
                    .outbox_has_chat(token.as_str(), &row.to, &known)
                    .await
                    .map_err(db)?;
                if !has_chat {
                    continue;
                }
            }
            return OutgoingMessage::from_row(token, row).map(Some);
        }
        Ok(None)
    }

    /// The waker of `token`'s drain.
    pub(crate) fn waker(&self, token: &Token) -> Arc<Notify> {
        self.inner
            .wakers
            .entry(token.clone())
            .or_insert_with(|| Arc::new(Notify::new()))
            .clone()
    }

    /// Forgets `token`'s waker once its drain has ended.
    pub(crate) fn drop_waker(&self, token: &Token) {
        self.inner.wakers.remove(token);
    }

    /// Wakes `token`'s drain, if it runs.
    pub(crate) fn wake(&self, token: &Token) {
        if let Some(waker) = self.inner.wakers.get(token) {
            waker.notify_one();
        }
    }

    /// Pauses `token`'s sends to new chats until `until` (or 24 h from now).
    pub(crate) fn pause_new_chats(&self, token: &Token, until: Option<SystemTime>) -> SystemTime {
        let until = until.unwrap_or_else(|| self.inner.clock.now() + DEFAULT_TIMELOCK);
        self.inner.pauses.insert(token.clone(), until);
        tracing::warn!(
            token = %token,
            until = %humantime::format_rfc3339_seconds(until),
            "WhatsApp refused a message to a new chat (463, reach-out timelock): sends to new chats are paused"
        );
        self.inner.events.send(SessionEvent::NewChatsPaused {
            token: token.clone(),
            until,
        });
        until
    }

    /// How long `token`'s sends to new chats stay paused, if they are.
    pub(crate) fn pause_left(&self, token: &Token) -> Option<Duration> {
        let until = self.paused_until(token)?;
        until.duration_since(self.inner.clock.now()).ok()
    }

    /// Until when `token`'s sends to new chats are paused, if they are.
    pub(crate) fn paused_until(&self, token: &Token) -> Option<SystemTime> {
        let until = *self.inner.pauses.get(token)?;
        if until > self.inner.clock.now() {
            return Some(until);
        }
        self.inner.pauses.remove(token);
        None
    }

    fn publish(&self, message: &OutgoingMessage) {
        self.inner
            .events
            .send(SessionEvent::MessageStatus(Box::new(message.clone())));
    }

    /// Publishes an incoming message.
    pub(crate) fn publish_incoming(
        &self,
        token: &Token,
        message: crate::lifecycle::IncomingMessage,
    ) {
        self.inner.events.send(SessionEvent::Message {
            token: token.clone(),
            message,
        });
    }
}

fn db(e: warden_store::DbError) -> Error {
    Error::Store(StoreError::Db(e))
}

/// Looks for expired messages every `expiry_check`, for as long as the outbox is used.
pub(crate) fn spawn_expiry(outbox: &Outbox) -> tokio::task::JoinHandle<()> {
    let weak = Arc::downgrade(&outbox.inner);
    let every = outbox.inner.config.expiry_check;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(inner) = weak.upgrade() else { return };
            let outbox = Outbox { inner };
            if let Err(e) = outbox.expire_due().await {
                tracing::warn!(error = %e, "could not look for expired messages");
            }
            match outbox.prune().await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(pruned = n, "old outbox messages deleted"),
                Err(e) => tracing::warn!(error = %e, "could not delete old outbox messages"),
            }
        }
    })
}
