//! [`PgDb`]: the session store on PostgreSQL, for warden running as several nodes over one
//! database (`warden-cluster` owns the membership and the session leases).
//!
//! The same shape as the SQLite store, with a small fixed pool: [`PgOptions::connections`]
//! owner threads (4 by default), each holding one connection, whatever the number of sessions.
//! A device's jobs always go to the same one (by its id), so they run in the order they were
//! queued. Callers queue jobs (bounded); each thread runs every job waiting in one
//! transaction, each under its own savepoint, and answers each caller only after `COMMIT`
//! (or, when the answer is lost or late, with [`DbError::Unconfirmed`]: every call but
//! `connect` and `close` answers within [`PgOptions::answer_timeout`], whatever the server
//! does).
//! Several connections are what make it fast: each job is a few round trips to the server,
//! and one connection waits for every one of them.
//! The difference: every write carries the writer's [`Fence`], and is refused with
//! [`DbError::StaleFence`] once the session's lease has moved on, so a deposed node cannot
//! write.
//!
//! What is here so far: the credentials and keys ([`PgDb::kv`], the wa-rs store's whole
//! backend) and the devices' lifecycle; the session records and the event journal
//! ([`PgDb::commit`]); the outbox ([`PgDb::outbox_insert`] and the rest); the webhooks'
//! progress ([`PgDb::webhook_pending`] and the rest): the whole store, which `warden serve` runs
//! on with `[cluster]` set (docs/cluster.md).

mod conn;
mod journal;
mod kv;
mod outbox;
mod records;
mod schema;
mod webhooks;

use crate::devices::DeviceId;
use crate::engine::{self, Queue};
use crate::error::DbError;
use crate::kv::Kv;

pub use conn::PgOptions;
use conn::{PgConn, pg_error};
pub use records::RELEASED_CHANNEL;
pub use schema::JOURNAL_LOCK;

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
/// owner threads, which end (closing their connections) when the last clone is dropped.
#[derive(Clone)]
pub struct PgDb {
    queues: std::sync::Arc<[Queue<PgConn>]>,
    closed: Vec<engine::Closed>,
    /// How long a caller waits for an answer ([`PgOptions::answer_timeout`]).
    answer_timeout: std::time::Duration,
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
    ///
    /// Its own wait is bounded only where the client library bounds it: `connect_timeout`
    /// covers the TCP connect, not the startup and authentication exchange after it, so a
    /// server frozen just then holds this call; a caller that must not wait for ever runs it
    /// under its own deadline. Once connected, every call but `close` answers within
    /// [`PgOptions::answer_timeout`].
    pub fn connect(url: &str, options: &PgOptions) -> Result<Self, DbError> {
        let mut queues = Vec::new();
        let mut closed = Vec::new();
        for n in 0..options.connections.max(1) {
            let mut conn = PgConn::new(url, options)?;
            let client = conn.client()?;
            if n == 0 {
                client.batch_execute(schema::SCHEMA).map_err(pg_error)?;
            }
            let (queue, done) = engine::spawn(conn, &format!("warden-pg-{n}"))
                .map_err(|e| DbError::Postgres(format!("cannot start the database thread: {e}")))?;
            queues.push(queue);
            closed.push(done);
        }
        Ok(Self {
            queues: queues.into(),
            closed,
            answer_timeout: options.answer_timeout,
        })
    }

    /// Lets go of this handle and resolves once every clone is dropped and the owner threads
    /// have finished the jobs queued before and closed their connections.
    pub async fn close(self) {
        let mut closed = self.closed.clone();
        drop(self);
        for done in &mut closed {
            let _ = done.changed().await;
        }
    }

    /// `answer`, or the error that it did not come within the deadline: unconfirmed for a
    /// write (it may still commit), a plain failure for a read.
    async fn answered<T>(
        &self,
        write: bool,
        answer: impl std::future::Future<Output = Result<T, DbError>>,
    ) -> Result<T, DbError> {
        let limit = self.answer_timeout;
        match tokio::time::timeout(limit, answer).await {
            // A read kept nothing whatever happened to its transaction's end.
            Ok(Err(DbError::Unconfirmed(why))) if !write => Err(DbError::Postgres(why)),
            Ok(answer) => answer,
            Err(_) => {
                let what = format!("no answer within {limit:?}");
                Err(if write {
                    DbError::Unconfirmed(what)
                } else {
                    DbError::Postgres(what)
                })
            }
        }
    }

    /// The owner thread of `device`'s jobs.
    fn of_device(&self, device: DeviceId) -> &Queue<PgConn> {
        &self.queues[device.0.unsigned_abs() as usize % self.queues.len()]
    }

    /// The owner thread of the records and the journal: one, so that one node's commits are
    /// made in the order they were asked for.
    fn of_writes(&self) -> &Queue<PgConn> {
        &self.queues[0]
    }

    /// The owner thread of jobs on `token` before it has a device.
    fn of_token(&self, token: &str) -> &Queue<PgConn> {
        // FNV-1a: stable, and spreads tokens that differ in one character.
        let hash = token.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        &self.queues[hash as usize % self.queues.len()]
    }

    /// The device of `token`, made if it has none yet. A write: checked against `fence`.
    pub async fn open_device(&self, token: &str, fence: &Fence) -> Result<DeviceId, DbError> {
        let (token, fence) = (token.to_owned(), fence.clone());
        let queue = self.of_token(&token).clone();
        self.answered(
            true,
            queue.call(move |conn| {
                kv::check_fence(conn, &token, &fence)?;
                if let Some(id) = find(conn, &token)? {
                    return Ok(id);
                }
                let (client, statement) =
                    conn.prepared("INSERT INTO warden_device (token) VALUES ($1) RETURNING id")?;
                let row = client.query_one(&statement, &[&token]).map_err(pg_error)?;
                Ok(DeviceId(row.get(0)))
            }),
        )
        .await
    }

    /// The device of `token`, if it has one.
    pub async fn find_device(&self, token: &str) -> Result<Option<DeviceId>, DbError> {
        let token = token.to_owned();
        let queue = self.of_token(&token).clone();
        self.answered(false, queue.read(move |conn| find(conn, &token)))
            .await
    }

    /// Deletes `token`'s credentials and every key, in one transaction (checked against
    /// `fence`), on the owner thread of its device: after every write queued before for it.
    /// Returns whether there was anything to delete.
    pub async fn delete_device(&self, token: &str, fence: &Fence) -> Result<bool, DbError> {
        let (token, fence) = (token.to_owned(), fence.clone());
        self.answered(true, async move {
            let Some(device) = self.find_device(&token).await? else {
                return Ok(false);
            };
            self.of_device(device)
                .call(move |conn| {
                    kv::check_fence(conn, &token, &fence)?;
                    let Some(id) = find(conn, &token)? else {
                        return Ok(false);
                    };
                    delete_device_rows(conn, id)?;
                    Ok(true)
                })
                .await
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
        self.answered(
            true,
            self.of_device(device).call(move |conn| {
                let ops = kv::PgKv {
                    conn,
                    device,
                    fence,
                    checked: false,
                };
                work(&mut Kv::new(device, ops))
            }),
        )
        .await
    }

    /// Resolves once every job queued before it is committed: a barrier.
    pub async fn sync(&self) -> Result<(), DbError> {
        self.answered(true, async {
            for queue in self.queues.iter() {
                queue.call(|_| Ok(())).await?;
            }
            Ok(())
        })
        .await
    }
}

fn find(conn: &mut PgConn, token: &str) -> Result<Option<DeviceId>, DbError> {
    let (client, statement) = conn.prepared("SELECT id FROM warden_device WHERE token = $1")?;
    let rows = client.query(&statement, &[&token]).map_err(pg_error)?;
    Ok(rows.first().map(|r| DeviceId(r.get(0))))
}

/// Deletes device `id`'s keys and credentials, in the transaction in progress.
fn delete_device_rows(conn: &mut PgConn, id: DeviceId) -> Result<(), DbError> {
    execute_each(
        conn,
        &[
            "DELETE FROM warden_kv WHERE device_id = $1",
            "DELETE FROM warden_device WHERE id = $1",
        ],
        &id.0,
    )
}

/// Runs each of `statements`, in order, with `param` as its one parameter, in the
/// transaction in progress.
fn execute_each(
    conn: &mut PgConn,
    statements: &[&'static str],
    param: &(dyn postgres::types::ToSql + Sync),
) -> Result<(), DbError> {
    for sql in statements {
        let (client, statement) = conn.prepared(sql)?;
        client.execute(&statement, &[param]).map_err(pg_error)?;
    }
    Ok(())
}

/// A row limit as PostgreSQL takes it.
fn limit_of(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}
