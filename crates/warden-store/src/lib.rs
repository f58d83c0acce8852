//! # warden-store: one database for every session
//!
//! [`Db`] is the single SQLite database (`sessions/warden.db`) that holds everything warden
//! persists: each session's record (written by the supervisor) and each session's WhatsApp
//! credentials and keys (written by the link through [`Kv`]), and each session's outbox of
//! messages to send ([`OutboxRow`]).
//!
//! - **One owner thread, whatever the number of sessions.** The connection lives on one thread
//!   ([`engine`]); callers queue jobs (bounded: when full, callers wait). No pool, no thread,
//!   no file per session: the process holds the database and its WAL, two descriptors.
//! - **Committed before acknowledged.** The thread runs every waiting job in one transaction
//!   (group commit: one fsync for many callers) and answers each one only after `COMMIT`, with
//!   `synchronous = FULL`. A reply survives a kill -9, and a power loss.
//! - **One daemon.** The database is opened with an exclusive lock: a second process is
//!   refused with [`DbError::InUse`].
//! - **Several daemons**: [`PgDb`] is the same store on PostgreSQL (records, credentials and
//!   keys, outbox, journal, webhooks' progress), the same way (a small fixed pool of owner
//!   threads, group commit), every write checked against the writer's lease on the session
//!   ([`Fence`]); [`CredentialsDb`] is either store for one session's credentials.
//! - **Deletion is final.** Logout and delete remove a session's rows in one transaction, and
//!   later writes for that set of credentials are refused ([`DbError::Closed`]). SQLite
//!   overwrites the deleted rows (`secure_delete`); PostgreSQL keeps them on disk until
//!   `VACUUM` reclaims them.
//!
//! ```no_run
//! # async fn demo() -> Result<(), warden_store::DbError> {
//! let db = warden_store::Db::open(std::path::Path::new("sessions/warden.db"))?;
//! let device = db.open_device("shop1").await?;
//! db.kv(device, |kv| kv.put(1, b"identity", b"...")).await?;
//! # Ok(()) }
//! ```

mod credentials;
mod devices;
pub mod engine;
mod error;
pub mod journal;
mod kv;
mod outbox;
pub mod pg;
mod records;
pub mod schema;
mod store;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use credentials::CredentialsDb;
pub use devices::DeviceId;
pub use error::DbError;
pub use journal::{DeadLetter, JournalChange, JournalEntry, NewJournalEntry};
pub use kv::{Entries, Kv};
pub use outbox::{NewOutboxMessage, OutboxChange, OutboxRow};
pub use pg::{Fence, PgDb, PgOptions, RELEASED_CHANNEL};
pub use records::RecordChange;
pub use store::{Leases, Shared, Store};

/// The database's file name inside `sessions/`.
pub const DB_FILE: &str = "warden.db";

/// Creates the database file (if missing) and its WAL and shared-memory files (if present)
/// with mode 0600, or narrows them to it: they hold credentials and proxy passwords. SQLite
/// gives the files it creates later the database file's mode.
fn owner_only(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)?;
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let mut file = path.as_os_str().to_owned();
            file.push(suffix);
            match std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// A handle to the session database. Cheap to clone; every clone talks to the same owner
/// thread, which ends (closing the file) when the last clone is dropped.
#[derive(Clone)]
pub struct Db {
    queue: engine::Queue<rusqlite::Connection>,
    closed: engine::Closed,
    path: Arc<PathBuf>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").field("path", &self.path).finish()
    }
}

impl Db {
    /// Opens (or creates) the database at `path`, takes its exclusive lock, brings the schema
    /// up to date and starts the owner thread. Blocking: call it at startup.
    pub fn open(path: &Path) -> Result<Self, DbError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| DbError::Open {
                path: path.to_owned(),
                message: e.to_string(),
            })?;
        }
        let open_error = |e: rusqlite::Error| {
            if matches!(
                e.sqlite_error_code(),
                Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
            ) {
                DbError::InUse {
                    path: path.to_owned(),
                }
            } else {
                DbError::Open {
                    path: path.to_owned(),
                    message: e.to_string(),
                }
            }
        };
        owner_only(path).map_err(|e| DbError::Open {
            path: path.to_owned(),
            message: format!("cannot make the database readable by its owner only: {e}"),
        })?;
        let conn = rusqlite::Connection::open(path).map_err(open_error)?;
        schema::prepare(&conn).map_err(open_error)?;
        let (queue, closed) = engine::spawn(conn, "warden-db").map_err(|e| DbError::Open {
            path: path.to_owned(),
            message: format!("cannot start the database thread: {e}"),
        })?;
        Ok(Self {
            queue,
            closed,
            path: Arc::new(path.to_owned()),
        })
    }

    /// Opens a database in memory, in inline mode: every call runs on the calling thread (see
    /// [`engine`]). For tests on tokio's paused clock and examples; nothing survives the
    /// process.
    pub fn in_memory() -> Result<Self, DbError> {
        let path = PathBuf::from(":memory:");
        let conn = rusqlite::Connection::open_in_memory().map_err(|e| DbError::Open {
            path: path.clone(),
            message: e.to_string(),
        })?;
        schema::prepare(&conn).map_err(|e| DbError::Open {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let (queue, closed) = engine::inline(conn);
        Ok(Self {
            queue,
            closed,
            path: Arc::new(path),
        })
    }

    /// Opens `<sessions_dir>/warden.db`.
    pub fn open_in(sessions_dir: &Path) -> Result<Self, DbError> {
        Self::open(&sessions_dir.join(DB_FILE))
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Lets go of this handle and resolves once the database is closed: every job queued
    /// before is done, every other clone has been dropped too, and the file (with its
    /// exclusive lock) is released, so another process may open it.
    pub async fn close(self) {
        let mut closed = self.closed.clone();
        drop(self);
        // Only ever ends with the sender dropped: nothing is sent on it.
        let _ = closed.changed().await;
    }

    /// Resolves once every job queued before it is committed: a barrier.
    pub async fn sync(&self) -> Result<(), DbError> {
        self.queue.call(|_| Ok(())).await
    }

    /// Runs SQLite's `PRAGMA integrity_check`; `Ok(())` when it says "ok".
    pub async fn integrity_check(&self) -> Result<(), DbError> {
        let answer: String = self
            .queue
            .call(|conn| Ok(conn.query_row("PRAGMA integrity_check", [], |row| row.get(0))?))
            .await?;
        if answer == "ok" {
            Ok(())
        } else {
            Err(DbError::Corrupt(answer))
        }
    }
}
