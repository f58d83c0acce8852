//! The cluster's errors.

/// What went wrong talking to the cluster's database, or in its configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClusterError {
    /// The timings cannot keep ownership exclusive.
    #[error("cluster timings: {0}")]
    Timing(String),
    /// The database refused or failed a statement.
    #[error("cluster database: {0}")]
    Database(String),
    /// A statement did not answer within its deadline.
    #[error("cluster database: no answer within {0:?}")]
    Timeout(std::time::Duration),
    /// This node's incarnation was declared dead: it must fence itself and start afresh.
    #[error("this node's incarnation was declared dead")]
    Reaped,
    /// A write carried a fence that is no longer the session's: another node owns it now.
    #[error("stale fence {fence} for session {token}: another node owns it")]
    StaleFence {
        /// The session.
        token: String,
        /// The fence the write carried.
        fence: i64,
    },
}

impl From<tokio_postgres::Error> for ClusterError {
    fn from(e: tokio_postgres::Error) -> Self {
        // The driver's text never carries the connection string's password.
        ClusterError::Database(match e.as_db_error() {
            Some(db) => format!("{} ({})", db.message(), db.code().code()),
            None => e.to_string(),
        })
    }
}
