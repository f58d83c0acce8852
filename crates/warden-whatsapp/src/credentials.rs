//! [`Credentials`]: where the link keeps each session's credentials and keys, and whether this
//! process may connect the session at all.
//!
//! One daemon keeps them in its SQLite database ([`warden_store::Db`] implements the trait:
//! every session, always). Several daemons over PostgreSQL keep them in
//! [`warden_store::PgDb`], written under the session's lease: the source answers with the
//! lease's fence, or with nothing when this node does not hold the session (then the link
//! refuses to connect it, and to delete its credentials).

use warden_core::Token;
use warden_store::{CredentialsDb, Db};

/// Where each session's credentials are kept; see the module docs.
pub trait Credentials: Send + Sync + std::fmt::Debug + 'static {
    /// The database for `token`'s credentials for its next connection, or `None` when this
    /// process may not connect `token` now (in a cluster: it holds no lease on it).
    fn for_session(&self, token: &Token) -> Option<CredentialsDb>;
}

impl Credentials for Db {
    fn for_session(&self, _token: &Token) -> Option<CredentialsDb> {
        Some(CredentialsDb::Local(self.clone()))
    }
}
