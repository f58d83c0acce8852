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
    /// The server gave a statement up: a row lock held past `lock_timeout` (a write in
    /// flight), or its own `statement_timeout`.
    #[error("cluster database busy: {0}")]
    Busy(String),
    /// A statement did not answer within its deadline.
    #[error("cluster database: no answer within {0:?}")]
    Timeout(std::time::Duration),
    /// This node's incarnation was declared dead: it must fence itself and start afresh.
    #[error("this node's incarnation was declared dead")]
    Reaped,
    /// The TLS setup for the database cannot be used (`[cluster] ca_file`).
    #[error("cluster database TLS: {0}")]
    Tls(String),
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
        use tokio_postgres::error::SqlState;
        // The driver's text never carries the connection string's password.
        match e.as_db_error() {
            Some(db)
                if *db.code() == SqlState::LOCK_NOT_AVAILABLE
                    || *db.code() == SqlState::QUERY_CANCELED =>
            {
                ClusterError::Busy(db.message().to_owned())
            }
            Some(db) => ClusterError::Database(format!("{} ({})", db.message(), db.code().code())),
            // With its causes: "error performing TLS handshake" alone does not say why.
            None => ClusterError::Database(with_causes(&e)),
        }
    }
}

/// `error`'s text followed by each of its causes'.
pub(crate) fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        text.push_str(&format!(": {e}"));
        cause = e.source();
    }
    text
}
