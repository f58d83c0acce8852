//! [`CredentialsDb`]: where one session's credentials and keys are kept, whichever database
//! holds them. The link's wa-rs store (`warden-whatsapp`'s `SessionStore`) is written on it.

use crate::Db;
use crate::devices::DeviceId;
use crate::error::DbError;
use crate::kv::Kv;
use crate::pg::{Fence, PgDb};

/// The database of one session's credentials.
#[derive(Debug, Clone)]
pub enum CredentialsDb {
    /// The local SQLite database (one daemon).
    Local(Db),
    /// PostgreSQL, written under the session's lease: every write is checked against `fence`
    /// and refused ([`DbError::StaleFence`]) once the lease moved on.
    Leased {
        /// The store.
        db: PgDb,
        /// This node's fence on the session.
        fence: Fence,
    },
}

impl From<Db> for CredentialsDb {
    fn from(db: Db) -> Self {
        Self::Local(db)
    }
}

impl CredentialsDb {
    /// The fence its writes carry: `None` for the local database, which has no leases.
    pub fn fence(&self) -> Option<&Fence> {
        match self {
            Self::Local(_) => None,
            Self::Leased { fence, .. } => Some(fence),
        }
    }

    /// Runs `work` on `device`'s keys, in one transaction.
    pub async fn kv<T, F>(&self, device: DeviceId, work: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Kv<'_>) -> Result<T, DbError> + Send + 'static,
    {
        match self {
            Self::Local(db) => db.kv(device, work).await,
            Self::Leased { db, fence } => db.kv(device, fence, work).await,
        }
    }

    /// The device of `token`, made if it has none yet.
    pub async fn open_device(&self, token: &str) -> Result<DeviceId, DbError> {
        match self {
            Self::Local(db) => db.open_device(token).await,
            Self::Leased { db, fence } => db.open_device(token, fence).await,
        }
    }

    /// Deletes `token`'s credentials and keys; whether there was anything to delete.
    pub async fn delete_device(&self, token: &str) -> Result<bool, DbError> {
        match self {
            Self::Local(db) => db.delete_device(token).await,
            Self::Leased { db, fence } => db.delete_device(token, fence).await,
        }
    }
}
