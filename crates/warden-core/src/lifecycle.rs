//! What a connection reports while it lives: the lifecycle messages and the disconnect reasons.

use std::fmt;
use std::time::{Duration, SystemTime};

/// One lifecycle message from a live connection, in the order the connection saw them.
#[derive(Debug, Clone, PartialEq)]
pub enum LifecycleEvent {
    /// A QR code to scan; it stops being valid after `expires_in`. The code is a pairing secret:
    /// it is published to subscribers but never logged.
    QrIssued {
        /// The text to encode in the QR image.
        code: String,
        /// How long this code stays valid.
        expires_in: Duration,
    },
    /// A pairing code for linking by phone number (also a secret: never logged).
    PairCode {
        /// The code the user types on the phone.
        code: String,
    },
    /// The phone accepted the pairing; the connection will end with
    /// [`DisconnectReason::RestartRequired`] and the next one logs in.
    Paired {
        /// The account's id (JID).
        jid: String,
    },
    /// Logged in and ready.
    Connected {
        /// The account's id (JID).
        jid: String,
        /// The account's display name, when known.
        name: Option<String>,
    },
    /// The connection ended. Always the last event of a connection.
    Disconnected {
        /// Why it ended.
        reason: DisconnectReason,
    },
}

/// What a connection receives for the account besides its lifecycle; it travels on its own
/// bounded path ([`LifecycleSink::inbound`](crate::LifecycleSink::inbound)).
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound {
    /// A message arrived.
    Message(Box<IncomingMessage>),
    /// A recipient's receipt for messages this account sent.
    Receipt(Box<Receipt>),
}
// Both variants are boxed: every slot of a connection's queue is as large as the largest
// variant, and each queue allocates its first 32 slots when the connection opens.

/// A recipient's receipt for messages this account sent.
#[derive(Debug, Clone, PartialEq)]
pub struct Receipt {
    /// The chat.
    pub chat: String,
    /// The messages it is about.
    pub ids: Vec<String>,
    /// What it says.
    pub kind: crate::outbox::ReceiptKind,
}

/// An incoming message, as surfaced to subscribers.
#[derive(Debug, Clone, PartialEq)]
pub struct IncomingMessage {
    /// The message id.
    pub id: String,
    /// The chat it belongs to (a JID).
    pub chat: String,
    /// Who sent it (a JID).
    pub sender: String,
    /// When it was sent.
    pub timestamp: SystemTime,
    /// What it is: `text`, `image`, `video`, `audio`, `document`, `sticker`, `reaction`,
    /// `location`, `contact`, or `other` (anything else, named by nothing more).
    pub kind: String,
    /// Its text; for media its caption; for a reaction its emoji. `None` when it has none.
    pub text: Option<String>,
}

/// Why a connection ended. The restart policy decides from this alone.
#[derive(Debug, Clone, PartialEq)]
pub enum DisconnectReason {
    /// The network dropped (no close from the server).
    ConnectionLost,
    /// The server closed the connection.
    ConnectionClosed,
    /// Nothing came back in time (handshake, liveness).
    TimedOut,
    /// The connection could not be established (dial, TLS, WebSocket, handshake).
    ConnectFailed(String),
    /// The session's proxy could not be reached, or gave no answer, within the connect
    /// timeout. A connect failure for the restart policy.
    ProxyUnreachable(String),
    /// The session's proxy refused its user and password. A connect failure for the restart
    /// policy.
    ProxyAuthFailed(String),
    /// The server said it is unavailable (HTTP-like 500/503).
    ServerUnavailable,
    /// An unknown stream error from the server.
    StreamError(String),
    /// The session actor or its connection crashed (a bug).
    SessionCrashed(String),
    /// The server asked for a restart after pairing (stream error 515).
    RestartRequired,
    /// The account was logged out (401, device removed, main device gone).
    LoggedOut,
    /// Another client took over this account.
    Replaced,
    /// The account is banned for a while.
    TemporarilyBanned {
        /// How long the ban lasts from now.
        expires_in: Duration,
        /// The server's ban code, when given.
        code: Option<String>,
    },
    /// The server refuses this client version.
    ClientOutdated,
    /// The stored credentials were refused (not a logout).
    BadCredentials(String),
    /// Every QR code expired without a scan.
    QrExpired,
    /// The connection was closed on request.
    Stopped,
}

impl DisconnectReason {
    /// A stable snake_case code for the reason, for logs, metrics and the wire.
    pub fn code(&self) -> &'static str {
        match self {
            Self::ConnectionLost => "connection_lost",
            Self::ConnectionClosed => "connection_closed",
            Self::TimedOut => "timed_out",
            Self::ConnectFailed(_) => "connect_failed",
            Self::ProxyUnreachable(_) => "proxy_unreachable",
            Self::ProxyAuthFailed(_) => "proxy_auth_failed",
            Self::ServerUnavailable => "server_unavailable",
            Self::StreamError(_) => "stream_error",
            Self::SessionCrashed(_) => "session_crashed",
            Self::RestartRequired => "restart_required",
            Self::LoggedOut => "logged_out",
            Self::Replaced => "replaced",
            Self::TemporarilyBanned { .. } => "temporarily_banned",
            Self::ClientOutdated => "client_outdated",
            Self::BadCredentials(_) => "bad_credentials",
            Self::QrExpired => "qr_expired",
            Self::Stopped => "stopped",
        }
    }
}

impl fmt::Display for DisconnectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ConnectFailed(detail)
            | Self::ProxyUnreachable(detail)
            | Self::ProxyAuthFailed(detail)
            | Self::StreamError(detail)
            | Self::SessionCrashed(detail)
            | Self::BadCredentials(detail) => write!(f, "{}: {detail}", self.code()),
            Self::TemporarilyBanned { expires_in, code } => {
                write!(
                    f,
                    "{} for {}",
                    self.code(),
                    humantime::format_duration(*expires_in)
                )?;
                if let Some(code) = code {
                    write!(f, " (code {code})")?;
                }
                Ok(())
            }
            _ => f.write_str(self.code()),
        }
    }
}
