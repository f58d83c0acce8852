//! The machine's vocabulary: phases, what is known, events, effects.

use std::time::Duration;

use tokio::time::Instant;

use crate::lifecycle::DisconnectReason;
use crate::policy::Outcome;
use crate::state::{Desired, SessionState};

/// Where a session's connection is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Nothing runs and nothing is pending but (maybe) a timer.
    Idle,
    /// Waiting in the admission queue.
    Queued,
    /// A session actor serves the connection.
    Live {
        /// It holds one of admission's in-flight slots (its handshake is not over).
        admitted: bool,
        /// Set once the supervisor asked it to end: what follows its end.
        closing: Option<Closing>,
    },
    /// A deletion runs off the supervisor's loop; nothing connects until it is over.
    Cleaning {
        /// What is being deleted.
        kind: CleanupKind,
        /// What follows once it is done.
        then: Then,
    },
}

impl Phase {
    /// Whether the session is on its way out: being deleted, or about to be.
    pub fn deleting(&self) -> bool {
        matches!(
            self,
            Phase::Cleaning {
                kind: CleanupKind::Everything,
                ..
            } | Phase::Cleaning {
                then: Then::Delete,
                ..
            }
        )
    }

    /// Whether the session is going from here because this node no longer holds it (its
    /// connection closing, or a deletion finishing).
    pub fn relinquishing(&self) -> bool {
        matches!(
            self,
            Phase::Live {
                closing: Some(Closing::Relinquish),
                ..
            } | Phase::Cleaning {
                then: Then::Release,
                ..
            }
        )
    }

    /// Whether the connection is closing for a delete (the session is not gone yet).
    pub fn closing_for_delete(&self) -> bool {
        matches!(
            self,
            Phase::Live {
                closing: Some(Closing::Delete),
                ..
            }
        )
    }
}

/// Why the supervisor ended a live connection; decides what follows instead of the policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Closing {
    /// Stop (or force-cleanup): leave it `stopped` with this reason.
    Stop {
        /// The reason shown.
        reason: String,
    },
    /// Restart or refresh the QR code: connect again once it is gone.
    Reconnect,
    /// Log out: delete the credentials once it is gone, then `then`.
    Logout {
        /// What follows the deletion (a `start` during a logout connects afterwards).
        then: Then,
    },
    /// Delete: remove everything once it is gone.
    Delete,
    /// This node no longer holds the session: forget it here once it is gone.
    Relinquish,
    /// The janitor reaped it: leave it in `state` with `reason`.
    Reap {
        /// The state it is left in.
        state: SessionState,
        /// Why.
        reason: String,
    },
}

/// What a cleanup deletes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CleanupKind {
    /// The credentials (a logout).
    Credentials,
    /// The session: its record, its credentials, its messages (a delete).
    Everything,
}

/// What follows a credentials deletion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Then {
    /// Nothing: the session rests `logged_out`.
    Rest,
    /// Connect for a new QR code, if the operator still wants it running.
    Connect,
    /// Delete the session.
    Delete,
    /// This node no longer holds the session: forget it here once the deletion is over.
    Release,
}

/// What the supervisor knows of the session, besides its phase.
#[derive(Debug, Clone, PartialEq)]
pub struct View {
    /// The session's state (persisted).
    pub state: SessionState,
    /// What the operator wants.
    pub desired: Desired,
    /// Retries counted.
    pub attempts: u32,
    /// Whether it is linked to an account.
    pub paired: bool,
    /// How long its ban has left (`Some(ZERO)`: it has passed), if a ban is known.
    pub ban_left: Option<Duration>,
    /// Whether a retry (or ban-expiry, or quarantine) timer is pending.
    pub retry_scheduled: bool,
    /// When its last connection was started.
    pub last_start: Option<Instant>,
    /// When a `start` last took it out of a parked state.
    pub last_unpark: Option<Instant>,
}

impl View {
    /// A session at rest in `state`, as the operator wants it (`desired`).
    pub fn new(state: SessionState, desired: Desired) -> Self {
        Self {
            state,
            desired,
            attempts: 0,
            paired: false,
            ban_left: None,
            retry_scheduled: false,
            last_start: None,
            last_unpark: None,
        }
    }

    /// Whether a ban holds now: banned, with time left.
    pub fn ban_holds(&self) -> bool {
        self.state == SessionState::Banned && self.ban_left.is_some_and(|left| !left.is_zero())
    }
}

/// The settings and facts outside the session.
#[derive(Debug, Clone, PartialEq)]
pub struct Context {
    /// Now.
    pub now: Instant,
    /// `Some(limit)` when `limit` sessions are queued or live already: no room for another.
    pub full: Option<usize>,
    /// Minimum time between two operator restarts, and between two starts out of a parked
    /// state.
    pub cooldown: Duration,
    /// How long a session that waits for room waits before trying again.
    pub capacity_wait: Duration,
    /// When a `failed` session is retried on its own (`None`: never).
    pub retry_failed_after: Option<Duration>,
}

/// What a connection reported that changes the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// A QR code is on show.
    Qr,
    /// A pairing code is on show.
    PairCode,
    /// The phone accepted the pairing; the connection restarts to log in.
    Paired,
    /// Logged in.
    Connected,
}

/// Something that happens to a session.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The operator's `start`.
    Start,
    /// The operator's `stop` or `force-cleanup`, with the reason to show.
    Stop {
        /// The reason shown.
        reason: String,
    },
    /// The operator's `restart` (also `set_proxy` with `reconnect`); `force` skips the cooldown
    /// and the ban.
    Restart {
        /// Skip the cooldown and the ban.
        force: bool,
    },
    /// The operator asks for a new QR code.
    RefreshQr,
    /// The operator's `logout`.
    Logout,
    /// The operator's `delete`.
    Delete,
    /// The janitor found the live connection stuck: end it and leave the session in `state`.
    Reap {
        /// The state to leave it in.
        state: SessionState,
        /// Why.
        reason: String,
    },
    /// The daemon starts with this session's record.
    Restore,
    /// Admission control lets it connect.
    Admitted,
    /// The live connection made progress.
    Progress(Progress),
    /// The live connection has been logged in for `stable_after`.
    Stable,
    /// The live connection ended with `reason`; `policy` is the restart policy's answer, used
    /// when the supervisor did not end it itself.
    Ended {
        /// Why it ended.
        reason: DisconnectReason,
        /// What the restart policy says.
        policy: Outcome,
    },
    /// The retry timer fired.
    RetryDue,
    /// The running cleanup finished.
    CleanupDone {
        /// Whether it succeeded.
        ok: bool,
    },
    /// This node no longer holds the session's lease (in a cluster: it was released, or
    /// another node took it over): end what runs here and forget the session here, deleting
    /// and writing nothing; the node that holds it carries on from its record.
    Relinquish,
}

impl Event {
    /// Whether it is an operator's operation (answered with a reply, a refusal or a wait).
    pub fn is_operation(&self) -> bool {
        matches!(
            self,
            Event::Start
                | Event::Stop { .. }
                | Event::Restart { .. }
                | Event::RefreshQr
                | Event::Logout
                | Event::Delete
        )
    }
}

/// A reason to show with a state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// No reason.
    None,
    /// This text.
    Text(String),
    /// Keep the reason it has.
    Keep,
    /// Capacity is full: `limit` sessions are queued or live.
    Capacity(usize),
    /// Append that the credentials are deleted.
    CredentialsDeleted,
    /// The cleanup failed (the error is the cleanup's).
    CleanupFailed(CleanupKind),
}

/// Why an operation is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No such session (or it is being deleted).
    NotFound,
    /// It is closing for a delete.
    BeingDeleted,
    /// `start` while banned: refused until the ban ends. `retry_scheduled`: it will be retried
    /// then on its own.
    BannedStart {
        /// Whether its retry is scheduled at the expiry.
        retry_scheduled: bool,
    },
    /// `restart` while banned, without `force`.
    BannedRestart,
    /// No room: `limit` sessions are queued or live.
    Capacity(usize),
    /// Too soon after the last start or restart; try again after this long.
    Cooldown(Duration),
    /// A new QR code does not fit the state; `paired` says why.
    NoQrNow {
        /// Whether it is linked to an account.
        paired: bool,
    },
    /// This node no longer holds the session (it is closing here, for another node).
    NotHeld,
}

/// A line the supervisor logs about a decision (the legacy gateway's log lines included).
#[derive(Debug, Clone, PartialEq)]
pub enum Note {
    /// `Should reconnect: …` after a connection ended.
    ShouldReconnect(bool),
    /// `Reconnect attempts: …` with the delay of the retry.
    RetryIn {
        /// The attempt number.
        attempt: u32,
        /// How long until it.
        delay: Duration,
    },
    /// The session failed.
    Failed(String),
    /// Logged out from the phone: the credentials go.
    LoggedOut,
    /// Another client took the account over.
    Replaced,
    /// Temporarily banned.
    Banned(Duration),
    /// A ban expired: reconnecting.
    BanExpired,
    /// A failed session's quarantine ended: retrying.
    QuarantineOver,
    /// The connection has been stable long enough: attempts reset.
    Stable,
    /// No room for another live session: waiting.
    WaitingForRoom(usize),
}

/// Something the supervisor does, in the order given.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Record what the operator wants.
    SetDesired(Desired),
    /// Move to a state (its clock restarts only on a change).
    SetState(SessionState, Reason),
    /// Change only the reason.
    SetReason(Reason),
    /// Attempts back to 0.
    ResetAttempts,
    /// The policy's attempt count.
    SetAttempts(u32),
    /// Count a restart.
    CountRestart,
    /// Remember a ban ending this long from now.
    BanFor(Duration),
    /// Forget the ban.
    ClearBan,
    /// Forget the account (logged out).
    ClearAccount,
    /// Open the next connection with the operation's options.
    UseOptions,
    /// Open the next connection with the default options (a QR code).
    DefaultOptions,
    /// Remember that a `start` left a parked state now.
    MarkUnpark,
    /// Join the admission queue (`priority`: first in line, not charged to the rate).
    Enqueue {
        /// First in line.
        priority: bool,
    },
    /// Leave the admission queue.
    Dequeue,
    /// Spawn the session actor for a new connection.
    Spawn,
    /// Ask the live session actor to end.
    Close,
    /// Give back the admission slot.
    ReleaseAdmission,
    /// Keep what the connection reported (QR code, pairing code, account).
    RecordProgress,
    /// Start the stability timer.
    StartStableTimer,
    /// The connection is gone: forget what only it had (QR code, stability timer).
    ConnectionGone,
    /// Retry after this long.
    ScheduleRetry(Duration),
    /// Cancel the pending retry.
    CancelRetry,
    /// Delete the credentials (off the loop; reports back).
    DeleteCredentials,
    /// Delete the session (off the loop; reports back).
    DeleteEverything,
    /// Forget the session: it is deleted.
    Forget,
    /// Forget the session here, deleting nothing, and answer whoever waits that another node
    /// holds it now.
    Release,
    /// Log a decision.
    Log(Note),
    /// Answer the caller with the session's view.
    Reply,
    /// Refuse the caller.
    Refuse(Refusal),
    /// Answer the caller once the operation has completed.
    Wait,
    /// Answer everyone waiting.
    AnswerWaiters,
    /// Answer those waiting for a session view (those waiting for a delete keep waiting).
    AnswerInfoWaiters,
    /// Fail those waiting for a session view with the cleanup's error.
    FailInfoWaiters,
    /// Fail everyone waiting with the cleanup's error.
    FailWaiters,
}

impl Effect {
    /// Whether it answers a caller (carried out after the session's view is published).
    pub fn is_reply(&self) -> bool {
        matches!(
            self,
            Effect::Reply
                | Effect::Refuse(_)
                | Effect::AnswerWaiters
                | Effect::AnswerInfoWaiters
                | Effect::FailInfoWaiters
                | Effect::FailWaiters
        )
    }
}

/// The result of one event.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// The phase after it.
    pub phase: Phase,
    /// What to do, in order.
    pub effects: Vec<Effect>,
}
