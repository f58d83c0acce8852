//! The states a session can be in, and the read-only view of a session that status reads return.

use std::collections::BTreeMap;
use std::fmt;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::token::Token;

/// Where a session is in its life. Persisted in `session.toml` (snake_case).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionState {
    /// Not running, by request (or never started).
    Stopped,
    /// Waiting for admission control to let it connect.
    Queued,
    /// A connection is being established.
    Connecting,
    /// Showing a QR code, waiting for a phone to scan it.
    WaitingForScan,
    /// The phone accepted the pairing; reconnecting to log in.
    Pairing,
    /// Logged in and ready.
    Connected,
    /// Disconnected; a retry is scheduled.
    BackingOff,
    /// Out of attempts, or a fatal error (outdated client, bad credentials). Needs an operator
    /// (or `retry_failed_after`).
    Failed,
    /// Logged out from the phone: credentials deleted, needs a new QR scan.
    LoggedOut,
    /// Another client took over the account; not retried automatically.
    Replaced,
    /// Temporarily banned; retried after the expiry.
    Banned,
    /// Every QR code expired without a scan; started again only on request.
    QrExpired,
}

impl SessionState {
    /// Every state, in display order.
    pub const ALL: [SessionState; 12] = [
        Self::Stopped,
        Self::Queued,
        Self::Connecting,
        Self::WaitingForScan,
        Self::Pairing,
        Self::Connected,
        Self::BackingOff,
        Self::Failed,
        Self::LoggedOut,
        Self::Replaced,
        Self::Banned,
        Self::QrExpired,
    ];

    /// The snake_case name used in files, logs and on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stopped => "stopped",
            Self::Queued => "queued",
            Self::Connecting => "connecting",
            Self::WaitingForScan => "waiting_for_scan",
            Self::Pairing => "pairing",
            Self::Connected => "connected",
            Self::BackingOff => "backing_off",
            Self::Failed => "failed",
            Self::LoggedOut => "logged_out",
            Self::Replaced => "replaced",
            Self::Banned => "banned",
            Self::QrExpired => "qr_expired",
        }
    }

    /// Parses a name made by [`SessionState::as_str`].
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// States in which a connection is (or is about to be) alive.
    pub fn is_live(self) -> bool {
        matches!(
            self,
            Self::Connecting | Self::WaitingForScan | Self::Pairing | Self::Connected
        )
    }

    /// States the policy parked: nothing runs until an operator (or a ban expiry) acts.
    pub fn is_parked(self) -> bool {
        matches!(
            self,
            Self::Failed | Self::LoggedOut | Self::Replaced | Self::Banned | Self::QrExpired
        )
    }
}

impl fmt::Display for SessionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// Whether the operator wants the session running. Persisted; restored sessions follow it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Desired {
    /// Keep it connected (restart per policy, restore on daemon start).
    Running,
    /// Leave it down.
    Stopped,
}

impl Desired {
    /// The snake_case name used in files and on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Stopped => "stopped",
        }
    }
}

/// Why a session's last connection ended, and what followed: the `why` of a status read.
/// Persisted with the record, so it survives a daemon restart.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LastDisconnect {
    /// The state the connection was in.
    pub from: SessionState,
    /// The reason given (a disconnect reason, or an operator's action).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When it ended.
    #[serde(with = "humantime_serde")]
    pub at: SystemTime,
    /// Where the restart policy (or the operator) put the session.
    pub decision: SessionState,
    /// When the policy retries, if it does.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub next_retry_at: Option<SystemTime>,
}

impl LastDisconnect {
    /// The disconnect that `before` → `after` is, if it is one: a live state left for one
    /// that is not.
    pub fn between(before: &SessionInfo, after: &SessionInfo) -> Option<Self> {
        (before.state.is_live() && !after.state.is_live()).then(|| Self {
            from: before.state,
            reason: after.reason.clone(),
            at: after.state_since,
            decision: after.state,
            next_retry_at: after.next_retry_at,
        })
    }
}

/// Counters kept per session (persisted).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default)]
pub struct Counters {
    /// Connections that reached `connected`.
    pub connects: u64,
    /// Connections that ended, for any reason.
    pub disconnects: u64,
    /// Connections started by the policy (retries and post-pairing restarts).
    pub restarts: u64,
}

/// A QR code currently on show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QrCode {
    /// The text to encode in the QR image (a pairing secret).
    pub code: String,
    /// When this code stops being valid.
    pub expires_at: SystemTime,
}

/// Everything a status read shows about one session. Kept current by the supervisor in a shared
/// snapshot, so reading it never waits on an actor's mailbox.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionInfo {
    /// The session's token.
    pub token: Token,
    /// Its human name.
    pub name: String,
    /// Where it is.
    pub state: SessionState,
    /// Why it is there (the last disconnect reason, a reap, an operator action), if anything.
    pub reason: Option<String>,
    /// Whether the operator wants it running.
    pub desired: Desired,
    /// Failed connection attempts counted towards the limit.
    pub attempts: u32,
    /// The linked account (JID), once paired.
    pub jid: Option<String>,
    /// The linked account's display name, when known.
    pub account_name: Option<String>,
    /// When the session was created.
    pub created_at: SystemTime,
    /// When it entered its current state.
    pub state_since: SystemTime,
    /// When the next automatic attempt is due (backing off, banned, `retry_failed_after`).
    pub next_retry_at: Option<SystemTime>,
    /// When a temporary ban ends.
    pub banned_until: Option<SystemTime>,
    /// The QR code on show, while waiting for a scan.
    pub qr: Option<QrCode>,
    /// The pairing code on show, when linking by phone number.
    pub pair_code: Option<String>,
    /// Lifetime counters.
    pub counters: Counters,
    /// The session's own proxy, password masked (`None`: the link's default, if any).
    pub proxy: Option<String>,
    /// Why its last connection ended, and what followed.
    pub last_disconnect: Option<LastDisconnect>,
}

impl SessionInfo {
    /// `running` or `stopped`.
    pub fn desired_text(&self) -> &'static str {
        self.desired.as_str()
    }
}

/// All sessions, with counts per state.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionList {
    /// Every session, ordered by token.
    pub sessions: Vec<SessionInfo>,
    /// How many sessions are in each state (states with none are absent).
    pub counts: BTreeMap<SessionState, usize>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for s in SessionState::ALL {
            assert_eq!(SessionState::from_name(s.as_str()), Some(s));
        }
        assert_eq!(SessionState::from_name("nope"), None);
    }
}
