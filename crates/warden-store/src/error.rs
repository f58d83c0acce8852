//! [`DbError`]: what the session database can say went wrong. Each message says what to do.

use std::path::PathBuf;

/// An operation on the session database failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DbError {
    /// The database file could not be opened or prepared.
    #[error("cannot open the session database {}: {message}", path.display())]
    Open {
        /// The database file.
        path: PathBuf,
        /// What SQLite or the OS said.
        message: String,
    },
    /// Another process holds the database (a second daemon on the same `sessions/`).
    #[error(
        "the session database {} is in use by another process: stop the other daemon first",
        path.display()
    )]
    InUse {
        /// The database file.
        path: PathBuf,
    },
    /// A statement or a commit failed; nothing of the operation was kept.
    #[error("the session database failed: {0}")]
    Sqlite(String),
    /// A PostgreSQL statement, commit or connection failed; nothing of the operation was kept.
    #[error("the session database (PostgreSQL) failed: {0}")]
    Postgres(String),
    /// PostgreSQL's answer to the operation never came: the connection broke during its
    /// `COMMIT`, or no answer came within the store's deadline (`PgOptions::answer_timeout`;
    /// a frozen or cut-off server). It may have been kept or not: read it back before relying
    /// on either.
    #[error(
        "the session database (PostgreSQL) did not confirm the operation, which may or may not have been kept: {0}"
    )]
    Unconfirmed(String),
    /// The writer no longer holds the session under this fence (another node claimed it,
    /// after this one released it or was declared dead): the write was refused and nothing
    /// of it kept.
    #[error("session {token}: fence {fence} is stale, another node owns the session now")]
    StaleFence {
        /// The session.
        token: String,
        /// The fence the write carried.
        fence: i64,
    },
    /// A write on PostgreSQL for a session this node does not hold (no fence for it): every
    /// write there must carry its writer's lease. Nothing of the operation was kept.
    #[error("session {0} is not held by this node, which may not write it")]
    NotHeld(String),
    /// The session's credentials were deleted (logout or delete): later writes are refused.
    #[error("the session's credentials were deleted; its store is closed")]
    Closed,
    /// The database's owner thread has stopped (the daemon is shutting down).
    #[error("the session database is shut down")]
    Unavailable,
    /// An operation panicked inside the database thread; it was rolled back.
    #[error("a database operation panicked and was rolled back: {0}")]
    Panicked(String),
    /// Stored bytes could not be decoded.
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
}

impl From<rusqlite::Error> for DbError {
    fn from(e: rusqlite::Error) -> Self {
        Self::Sqlite(e.to_string())
    }
}
