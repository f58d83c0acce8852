//! [`PgDb`]: the session store on PostgreSQL, for warden running as several nodes over one
//! database (`warden-cluster` owns the membership and the session leases).
//!
//! The same shape as the SQLite store: one owner thread holding one connection, whatever the
//! number of sessions; callers queue jobs (bounded); the thread runs every job waiting in one
//! transaction, each under its own savepoint, and answers each caller only after `COMMIT`.
//! The difference: every write carries the writer's [`Fence`], and is refused with
//! [`DbError::StaleFence`] once the session's lease has moved on, so a deposed node cannot
//! write.
//!
//! What is here so far: the credentials and keys ([`PgDb::kv`], the wa-rs store's whole
//! backend) and the devices' lifecycle. Records, outbox, journal and webhooks' progress are
//! still SQLite's only (docs/cluster.md).

mod conn;
mod kv;
mod schema;

use crate::devices::DeviceId;
use crate::engine::{self, Queue};
use crate::error::DbError;
use crate::kv::Kv;

pub use conn::PgOptions;
use conn::{PgConn, pg_error};

/// Who writes a session's data, and under which fence: the node's incarnation that holds the
/// session's lease, and the fence of its claim (`warden_cluster::Node::may_dial` gives it).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Fence {
    /// The node's name.
    pub node: String,
    /// The node's incarnation (one per process start).
    pub incarnation: i64,
    /// The session's fence when this incarnation claimed it.
    pub fence: i64,
}

/// A handle to the session store on PostgreSQL. Cheap to clone; every clone talks to the same
/// owner thread, which ends (closing its connection) when the last clone is dropped.
#[derive(Clone)]
pub struct PgDb {
    queue: Queue<PgConn>,
    closed: engine::Closed,
}

impl std::fmt::Debug for PgDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgDb").finish_non_exhaustive()
    }
}

impl PgDb {
    /// Connects to `url`, creates the store's tables if they are missing, and starts the owner
    /// thread. Blocking: call it at startup (or from `spawn_blocking`). The connection is made
    /// again on the next transaction whenever it breaks.
    pub fn connect(url: &str, options: &PgOptions) -> Result<Self, DbError> {
        let mut conn = PgConn::new(url, options)?;
        conn.client()?
            .batch_execute(schema::SCHEMA)
            .map_err(pg_error)?;
        let (queue, closed) = engine::spawn(conn, "warden-pg")
            .map_err(|e| DbError::Postgres(format!("cannot start the database thread: {e}")))?;
        Ok(Self { queue, closed })
    }

    /// Lets go of this handle and resolves once every clone is dropped and the owner thread
    /// has finished the jobs queued before and closed its connection.
    pub async fn close(self) {
        let mut closed = self.closed.clone();
        drop(self);
        let _ = closed.changed().await;
    }

    /// The device of `token`, made if it has none yet. A write: checked against `fence`.
    pub async fn open_device(&self, token: &str, fence: &Fence) -> Result<DeviceId, DbError> {
        let (token, fence) = (token.to_owned(), fence.clone());
        self.queue
            .call(move |conn| {
                kv::check_fence(conn, &token, &fence)?;
                if let Some(id) = find(conn, &token)? {
                    return Ok(id);
                }
                let (client, statement) =
                    conn.prepared("INSERT INTO warden_device (token) VALUES ($1) RETURNING id")?;
                let row = client.query_one(&statement, &[&token]).map_err(pg_error)?;
                Ok(DeviceId(row.get(0)))
            })
            .await
    }

    /// The device of `token`, if it has one.
    pub async fn find_device(&self, token: &str) -> Result<Option<DeviceId>, DbError> {
        let token = token.to_owned();
        self.queue.read(move |conn| find(conn, &token)).await
    }

    /// Deletes `token`'s credentials and every key, in one transaction (checked against
    /// `fence`). Returns whether there was anything to delete.
    pub async fn delete_device(&self, token: &str, fence: &Fence) -> Result<bool, DbError> {
        let (token, fence) = (token.to_owned(), fence.clone());
        self.queue
            .call(move |conn| {
                kv::check_fence(conn, &token, &fence)?;
                let Some(id) = find(conn, &token)? else {
                    return Ok(false);
                };
                for sql in [
                    "DELETE FROM warden_kv WHERE device_id = $1",
                    "DELETE FROM warden_device WHERE id = $1",
                ] {
                    let (client, statement) = conn.prepared(sql)?;
                    client.execute(&statement, &[&id.0]).map_err(pg_error)?;
                }
                Ok(true)
            })
            .await
    }

    /// Runs `work` on `device`'s keys, in one transaction with nothing else of its own. Its
    /// first write checks that the device exists ([`DbError::Closed`]) and that `fence` still
    /// holds its session ([`DbError::StaleFence`]); a refused write rolls back `work` whole.
    pub async fn kv<T, F>(&self, device: DeviceId, fence: &Fence, work: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Kv<'_>) -> Result<T, DbError> + Send + 'static,
    {
        let fence = fence.clone();
        self.queue
            .call(move |conn| {
                let ops = kv::PgKv {
                    conn,
                    device,
                    fence,
                    checked: false,
                };
                work(&mut Kv::new(device, ops))
            })
            .await
    }

    /// Resolves once every job queued before it is committed: a barrier.
    pub async fn sync(&self) -> Result<(), DbError> {
        self.queue.call(|_| Ok(())).await
    }
}

fn find(conn: &mut PgConn, token: &str) -> Result<Option<DeviceId>, DbError> {
    let (client, statement) = conn.prepared("SELECT id FROM warden_device WHERE token = $1")?;
    let rows = client.query(&statement, &[&token]).map_err(pg_error)?;
    Ok(rows.first().map(|r| DeviceId(r.get(0))))
}
