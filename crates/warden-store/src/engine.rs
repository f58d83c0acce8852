//! The owner thread: the one place the SQLite connection lives.
//!
//! Callers hand it jobs through a bounded queue. The thread takes every job waiting (up to
//! [`MAX_BATCH`]), runs them in order inside one transaction, each under its own savepoint (a
//! failing job is rolled back alone), commits once, and only then answers each caller: group
//! commit. A job's answer therefore always means "committed" (or an error, and nothing kept).
//!
//! When the queue is full ([`QUEUE_CAPACITY`] jobs), callers wait for room: back-pressure,
//! never loss and never unbounded memory.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot, watch};

use crate::error::DbError;

/// How many jobs may wait for the owner thread before callers wait for room.
pub const QUEUE_CAPACITY: usize = 4096;
/// The most jobs one transaction (one commit, one fsync) carries.
pub const MAX_BATCH: usize = 1024;

/// One unit of work for the owner thread.
pub(crate) trait Job: Send {
    /// Runs the work on the connection, inside the batch's transaction.
    fn run(&mut self, conn: &Connection);
    /// Answers the caller once the batch's commit is known.
    fn finish(self: Box<Self>, commit: Result<(), DbError>);
}

/// A closure and the port its result goes back on.
struct Call<T, F> {
    work: Option<F>,
    result: Option<Result<T, DbError>>,
    reply: oneshot::Sender<Result<T, DbError>>,
}

impl<T, F> Job for Call<T, F>
where
    T: Send,
    F: FnOnce(&Connection) -> Result<T, DbError> + Send,
{
    fn run(&mut self, conn: &Connection) {
        let Some(work) = self.work.take() else {
            return;
        };
        if let Err(e) = conn.execute_batch("SAVEPOINT job") {
            self.result = Some(Err(e.into()));
            return;
        }
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| work(conn)))
            .unwrap_or_else(|panic| Err(DbError::Panicked(panic_message(&panic))));
        let end = if result.is_ok() {
            "RELEASE job"
        } else {
            "ROLLBACK TO job; RELEASE job"
        };
        self.result = Some(match conn.execute_batch(end) {
            Ok(()) => result,
            Err(e) => Err(e.into()),
        });
    }

    fn finish(self: Box<Self>, commit: Result<(), DbError>) {
        let answer = match (commit, self.result) {
            (Ok(()), Some(result)) => result,
            (Ok(()), None) => Err(DbError::Unavailable),
            (Err(e), _) => Err(e),
        };
        let _ = self.reply.send(answer);
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// Where jobs go: the owner thread's queue, or (inline mode) the caller's own thread.
#[derive(Clone)]
pub(crate) enum Queue {
    /// The owner thread (the daemon's mode).
    Thread(mpsc::Sender<Box<dyn Job>>),
    /// Jobs run on the calling thread, one transaction each, under a lock: for tests on
    /// tokio's paused clock (a wait on another thread would let that clock jump) and tiny
    /// embedders. Never used by the daemon.
    Inline(Arc<InlineConn>),
}

impl Queue {
    /// Runs `work`; resolves after its transaction committed.
    pub(crate) async fn call<T, F>(&self, work: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, DbError> + Send + 'static,
    {
        let (reply, mut answer) = oneshot::channel();
        let job: Box<dyn Job> = Box::new(Call {
            work: Some(work),
            result: None,
            reply,
        });
        match self {
            Queue::Thread(tx) => {
                tx.send(job).await.map_err(|_| DbError::Unavailable)?;
                answer.await.map_err(|_| DbError::Unavailable)?
            }
            Queue::Inline(inline) => {
                let conn = inline.conn.lock().unwrap_or_else(|e| e.into_inner());
                let mut batch = [job];
                let commit = run_batch(&conn, &mut batch);
                let [job] = batch;
                job.finish(commit);
                answer.try_recv().map_err(|_| DbError::Unavailable)?
            }
        }
    }
}

/// Tells, by its sender being dropped, that the database file is closed.
pub(crate) type Closed = watch::Receiver<()>;

/// Starts the owner thread on `conn`. The thread ends (closing the database, then dropping
/// the [`Closed`] sender) when every [`Queue`] is dropped and the jobs already queued are done.
pub(crate) fn spawn(conn: Connection) -> std::io::Result<(Queue, Closed)> {
    let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
    let (closing, closed) = watch::channel(());
    std::thread::Builder::new()
        .name("warden-db".into())
        .spawn(move || {
            run(conn, rx);
            drop(closing);
        })?;
    Ok((Queue::Thread(tx), closed))
}

/// Inline mode: the connection closes when the last [`Queue`] holding it is dropped, and then
/// the [`Closed`] sender goes with it.
pub(crate) fn inline(conn: Connection) -> (Queue, Closed) {
    let (closing, closed) = watch::channel(());
    (
        Queue::Inline(Arc::new(InlineConn {
            conn: Mutex::new(conn),
            _closing: closing,
        })),
        closed,
    )
}

/// The inline connection; fields drop in order, so the connection is closed before the
/// sender announces it.
pub(crate) struct InlineConn {
    conn: Mutex<Connection>,
    _closing: watch::Sender<()>,
}

fn run(conn: Connection, mut rx: mpsc::Receiver<Box<dyn Job>>) {
    let mut batch: Vec<Box<dyn Job>> = Vec::with_capacity(64);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let commit = run_batch(&conn, &mut batch);
        if let Err(e) = &commit {
            tracing::error!(error = %e, jobs = batch.len(), "a session database commit failed; its operations were not kept");
        }
        for job in batch.drain(..) {
            job.finish(commit.clone());
        }
    }
    drop(conn);
}

fn run_batch(conn: &Connection, batch: &mut [Box<dyn Job>]) -> Result<(), DbError> {
    conn.execute_batch("BEGIN IMMEDIATE")?;
    for job in batch.iter_mut() {
        job.run(conn);
    }
    if let Err(e) = conn.execute_batch("COMMIT") {
        let _ = conn.execute_batch("ROLLBACK");
        return Err(e.into());
    }
    Ok(())
}
