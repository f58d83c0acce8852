//! The event bus: what subscribers (watch streams, the dashboard, embedding apps) are told.

use std::time::Duration;

use std::time::SystemTime;

use crate::lifecycle::IncomingMessage;
use crate::outbox::OutgoingMessage;
use crate::state::SessionInfo;
use crate::token::Token;

/// One thing that happened to a session.
#[derive(Debug, Clone, PartialEq)]
pub enum SessionEvent {
    /// A session was created or changed state (or its reason, attempts or account changed):
    /// the full current view.
    Updated(Box<SessionInfo>),
    /// A new QR code is on show (a pairing secret: never logged).
    Qr {
        /// The session.
        token: Token,
        /// The text to encode in the QR image.
        code: String,
        /// How long it stays valid.
        expires_in: Duration,
    },
    /// A pairing code is on show (never logged).
    PairCode {
        /// The session.
        token: Token,
        /// The code to type on the phone.
        code: String,
    },
    /// A message arrived.
    Message {
        /// The session that received it.
        token: Token,
        /// The message.
        message: IncomingMessage,
    },
    /// An outgoing message changed status (queued, sent, delivered, read, failed, cancelled).
    MessageStatus(Box<OutgoingMessage>),
    /// WhatsApp refused a message to a new chat (463): the session's sends to chats it has
    /// not written to are paused until `until`.
    NewChatsPaused {
        /// The session.
        token: Token,
        /// When sends to new chats resume.
        until: SystemTime,
    },
    /// A session was deleted.
    Removed {
        /// The session.
        token: Token,
    },
}

impl SessionEvent {
    /// The session the event is about.
    pub fn token(&self) -> &Token {
        match self {
            Self::Updated(info) => &info.token,
            Self::MessageStatus(message) => &message.token,
            Self::Qr { token, .. }
            | Self::PairCode { token, .. }
            | Self::Message { token, .. }
            | Self::NewChatsPaused { token, .. }
            | Self::Removed { token } => token,
        }
    }
}
