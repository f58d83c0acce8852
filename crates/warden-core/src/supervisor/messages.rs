//! The supervisor's mailbox: operations from the handle, and what its children report.

use ractor::RpcReplyPort;

use crate::admission::AdmissionConfig;
use crate::error::Error;
use crate::janitor::JanitorConfig;
use crate::lifecycle::{DisconnectReason, LifecycleEvent};
use crate::link::OpenOptions;
use crate::machine::{CleanupKind, Event};
use crate::policy::PolicyConfig;
use crate::proxy::ProxyUrl;
use crate::state::{SessionInfo, SessionState};
use crate::store::SessionRecord;
use crate::token::Token;

/// A reply carrying the session's view after the operation.
pub(crate) type InfoReply = RpcReplyPort<Result<SessionInfo, Error>>;

/// Someone waiting for an operation that completes after the connection has gone.
pub(crate) enum Waiter {
    Info(InfoReply),
    Unit(RpcReplyPort<Result<(), Error>>),
}

/// A session the janitor (or a reap request) cleaned up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reaped {
    /// The session.
    pub token: Token,
    /// The state it was stuck in.
    pub was: SessionState,
    /// The state it was left in.
    pub now: SessionState,
    /// Why it was reaped.
    pub reason: String,
}

/// An operator's operation on one session's lifecycle. Each is an event of the session
/// machine ([`Operation::event`]); adding one means a variant here, its event, and a handle
/// method.
pub(crate) enum Operation {
    /// Start, opening the connection with these options.
    Start(OpenOptions),
    /// Stop, keeping the credentials.
    Stop,
    /// Close whatever is there and leave it stopped.
    ForceCleanup,
    /// Close and open a fresh connection; `force` skips the cooldown and a ban.
    Restart { force: bool },
    /// A new QR code.
    RefreshQr,
    /// Log out and delete the credentials.
    Logout,
    /// Delete the session (answered with `()`).
    Delete,
}

impl Operation {
    /// The operation's name, as the control protocol names it.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Start(_) => "start",
            Self::Stop => "stop",
            Self::ForceCleanup => "force_cleanup",
            Self::Restart { .. } => "restart",
            Self::RefreshQr => "refresh_qr",
            Self::Logout => "logout",
            Self::Delete => "delete",
        }
    }

    /// The machine event, and the options a start brings.
    pub fn event(self) -> (Event, Option<OpenOptions>) {
        match self {
            Self::Start(options) => (Event::Start, Some(options)),
            Self::Stop => (
                Event::Stop {
                    reason: "stopped by request".into(),
                },
                None,
            ),
            Self::ForceCleanup => (
                Event::Stop {
                    reason: "force cleanup".into(),
                },
                None,
            ),
            Self::Restart { force } => (Event::Restart { force }, None),
            Self::RefreshQr => (Event::RefreshQr, None),
            Self::Logout => (Event::Logout, None),
            Self::Delete => (Event::Delete, None),
        }
    }
}

/// Messages the supervisor actor handles.
pub(crate) enum SupervisorMsg {
    // ---- operations (from the handle) ----
    Create {
        name: Option<String>,
        token: Option<Token>,
        proxy: Option<ProxyUrl>,
        reply: InfoReply,
    },
    SetProxy {
        token: Token,
        proxy: Option<ProxyUrl>,
        reconnect: bool,
        reply: InfoReply,
    },
    /// An operation on a session's lifecycle: a machine event, answered as the machine says.
    Operate {
        token: Token,
        operation: Operation,
        reply: Waiter,
    },
    ResetReconnect {
        token: Token,
        reply: InfoReply,
    },
    /// Reap stuck sessions now (the janitor sends it without a reply port).
    Reap {
        reply: Option<RpcReplyPort<Result<Vec<Reaped>, Error>>>,
    },
    /// Replace the policy, janitor and admission settings without touching live sessions.
    Reload {
        policy: PolicyConfig,
        janitor: JanitorConfig,
        admission: AdmissionConfig,
        reply: RpcReplyPort<Result<(), Error>>,
    },
    /// Answers at once: proves the supervisor's loop is alive.
    Ping {
        reply: RpcReplyPort<Result<(), Error>>,
    },
    /// This node now holds the session (in a cluster): run it from its stored record.
    Adopt {
        token: Token,
        record: Box<SessionRecord>,
        reply: InfoReply,
    },
    /// This node no longer holds the session: end it here, writing nothing (answered once it
    /// is gone here, with whether it was here).
    Relinquish {
        token: Token,
        reply: RpcReplyPort<Result<bool, Error>>,
    },

    // ---- internal ----
    /// A session actor forwards its connection's lifecycle.
    Lifecycle {
        token: Token,
        generation: u64,
        event: LifecycleEvent,
    },
    /// A connection is over: its session actor stopped, failed or could not be spawned.
    ///
    /// Sent by the supervisor to itself when it learns of the end, so that it is handled after
    /// every lifecycle message the session actor sent before ending (supervision events
    /// overtake ordinary messages; this puts the end back in order).
    ConnectionEnded {
        token: Token,
        generation: u64,
        reason: DisconnectReason,
    },
    /// The earliest deadline (retry, ban expiry, quarantine end, stability) has come.
    TimersDue,
    /// The admission rate limit may admit the next queued session.
    AdmissionTick,
    /// Credentials deletion (logout) or folder removal (delete) finished.
    CleanupDone {
        token: Token,
        kind: CleanupKind,
        result: Result<(), Error>,
    },
}
