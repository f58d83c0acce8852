//! The event journal: every session's history, durable in the session database.
//!
//! Whatever happens to a session goes in as it is announced: state changes (from, to, reason,
//! attempts, next retry, ban expiry), creation and deletion, QR and pairing codes issued,
//! messages received, outgoing messages' statuses. [`entry`] decides, as a pure function, what
//! each announcement writes; the store's writer commits entries with the record changes they
//! go with, so an entry is in the database before the operation that caused it is answered.
//!
//! - Each entry has a number (`seq`), increasing within its session and unique in the
//!   database, and a time.
//! - Retention is bounded per session: the newest [`JournalConfig::keep`] entries, none older
//!   than [`JournalConfig::max_age`].
//! - Storms collapse: a transition that repeats among a session's last few entries moves to
//!   the end with a count (see `warden_store::journal`), so a reconnect loop is a handful of
//!   counted rows.
//!
//! The journal is what `history` shows and what webhooks deliver from.

pub mod entry;

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::events::SessionEvent;
use crate::state::SessionInfo;
use crate::store::StoreWriter;

pub use entry::{Entry, kind};

/// The most entries one history read returns.
pub const MAX_READ: usize = 1000;

/// How much of each session's history is kept (`[journal]` in `daemon.toml`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JournalConfig {
    /// The newest entries kept per session.
    pub keep: u32,
    /// Entries older than this are removed (checked hourly).
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
}

impl Default for JournalConfig {
    fn default() -> Self {
        Self {
            keep: 1000,
            max_age: Duration::from_secs(30 * 24 * 3600),
        }
    }
}

impl JournalConfig {
    /// Checks every value makes sense.
    pub fn validate(&self) -> Result<(), String> {
        if self.keep == 0 {
            return Err("keep must be at least 1".into());
        }
        if self.max_age < Duration::from_secs(60) {
            return Err("max_age must be at least 1m".into());
        }
        Ok(())
    }
}

/// One entry as history shows it: pairing secrets left out.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryEntry {
    /// Its number: increasing within the session.
    pub seq: i64,
    /// The session.
    pub token: String,
    /// Its kind (see [`kind`]).
    pub kind: String,
    /// What happened.
    pub data: serde_json::Value,
    /// When it first happened.
    pub first_at: SystemTime,
    /// When it last happened.
    pub at: SystemTime,
    /// How many times it happened in a row (a storm collapsed).
    pub repeats: u32,
}

impl HistoryEntry {
    /// The entry as stored, shown (secrets left out).
    pub fn shown(stored: warden_store::JournalEntry) -> Self {
        let data = serde_json::from_str(&stored.data).unwrap_or(serde_json::Value::Null);
        Self {
            seq: stored.seq,
            token: stored.token,
            data: entry::shown(&stored.kind, data),
            kind: stored.kind,
            first_at: from_millis(stored.first_at),
            at: from_millis(stored.at),
            repeats: stored.repeats,
        }
    }
}

/// The time of Unix milliseconds.
pub fn from_millis(ms: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

/// Where announcements go: subscribers (as events) and the journal (as entries). Every
/// announcement of the supervisor and the outbox goes through it.
#[derive(Clone)]
pub(crate) struct Bus {
    events: broadcast::Sender<SessionEvent>,
    store: StoreWriter,
}

impl Bus {
    /// A bus over `events` whose entries `store` commits.
    pub fn new(events: broadcast::Sender<SessionEvent>, store: StoreWriter) -> Self {
        Self { events, store }
    }

    /// Journals `event` (when it is one that goes in) and tells subscribers.
    pub fn send(&self, event: SessionEvent) {
        // A deletion's entry was committed with the removal itself (a later one could not be:
        // in a cluster, the session's lease is gone with it).
        let journaled_already = matches!(event, SessionEvent::Removed { .. });
        if !journaled_already && let Some(entry) = entry::event(&event, SystemTime::now()) {
            self.store.journal(event.token(), entry);
        }
        let _ = self.events.send(event);
    }

    /// Journals a change of a session's view and tells subscribers.
    pub fn updated(&self, before: Option<&SessionInfo>, after: SessionInfo) {
        if let Some(entry) = entry::status_change(before, &after) {
            self.store.journal(&after.token, entry);
        }
        let _ = self.events.send(SessionEvent::Updated(Box::new(after)));
    }

    /// A subscription to events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<SessionEvent> {
        self.events.subscribe()
    }
}
