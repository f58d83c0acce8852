//! The errors of the supervisor's API. Each message says what to do next.

use std::path::PathBuf;
use std::time::Duration;

use crate::link::LinkError;
use crate::state::SessionState;
use crate::token::{Token, TokenError};

/// An operation on the supervisor failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// The token is not valid; nothing was touched.
    #[error("invalid session token: {0}")]
    InvalidToken(#[from] TokenError),
    /// No session has this token.
    #[error("no session {0}")]
    NotFound(Token),
    /// A session with this token already exists.
    #[error("session {0} already exists")]
    AlreadyExists(Token),
    /// A manual restart came too soon after the last start.
    #[error(
        "session {token} is cooling down: retry in {} s, or pass --force",
        retry_after.as_secs().max(1)
    )]
    Cooldown {
        /// The session.
        token: Token,
        /// How long to wait.
        retry_after: Duration,
    },
    /// The operation does not fit the session's state.
    #[error("session {token} is {state}: {message}")]
    Conflict {
        /// The session.
        token: Token,
        /// Its state.
        state: SessionState,
        /// What is wrong and what to do.
        message: String,
    },
    /// The session is not connected, so it cannot send.
    #[error(
        "session {token} is not connected (it is {state}): start it and wait until it is connected"
    )]
    NotConnected {
        /// The session.
        token: Token,
        /// Its state.
        state: SessionState,
    },
    /// The request is malformed (a bad recipient, an empty or too long text, a bad key);
    /// nothing was stored or changed.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The session has no outgoing message with this id or key.
    #[error("session {token} has no message {id:?}")]
    MessageNotFound {
        /// The session.
        token: Token,
        /// The id or key asked for.
        id: String,
    },
    /// The link failed.
    #[error("session {token}: {source}")]
    Link {
        /// The session.
        token: Token,
        /// What the link said.
        source: LinkError,
    },
    /// The session store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Starting the session would exceed how many sessions may be live at once (the
    /// daemon's file-descriptor limit); nothing was opened.
    #[error(
        "capacity: {limit} sessions are already live, the most this daemon allows; stop one, or raise its file-descriptor limit (LimitNOFILE)"
    )]
    Capacity {
        /// How many sessions may be live at once.
        limit: usize,
    },
    /// The supervisor is shutting down or did not answer in time.
    #[error("the supervisor is unavailable: {0}")]
    Unavailable(String),
    /// A configuration value is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
}

/// The session store failed to read or write.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StoreError {
    /// The session database failed.
    #[error(transparent)]
    Db(#[from] warden_store::DbError),
    /// A change was not committed in time (the reply would have claimed what is not saved).
    #[error("the change is not saved yet: {0}")]
    NotSaved(String),
    /// A record could not be encoded.
    #[error("cannot encode a session record: {0}")]
    Encode(String),
    /// A stored record could not be parsed.
    #[error("the stored record of session {token} is unreadable: {message}; left as it is")]
    Record {
        /// The session.
        token: String,
        /// The parser's message.
        message: String,
    },
    /// A stored record's token is not a valid token.
    #[error("stored session {name:?} is not a valid session token ({reason}); left as it is")]
    BadToken {
        /// The stored name.
        name: String,
        /// Why it is not a token.
        reason: TokenError,
    },
    /// An I/O error on a path.
    #[error("{}: {message}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The OS error.
        message: String,
    },
    /// A `session.toml` could not be parsed.
    #[error("{}: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message (with line and column).
        message: String,
    },
    /// A folder in `sessions/` is not named like a token.
    #[error("{}: not a valid session token ({reason}); left alone", path.display())]
    BadFolderName {
        /// The folder.
        path: PathBuf,
        /// Why the name is not a token.
        reason: TokenError,
    },
}

impl StoreError {
    pub(crate) fn io(path: impl Into<PathBuf>, err: &std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            message: err.to_string(),
        }
    }
}
