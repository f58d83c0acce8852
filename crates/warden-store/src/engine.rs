//! The owner thread: the one place the database connection lives (SQLite's, or PostgreSQL's:
//! the crate's `Backend` trait).
//!
//! Callers hand it jobs through a bounded queue. The thread takes every job waiting (up to
//! [`MAX_BATCH`]), runs them in order inside one transaction, each under its own savepoint (a
//! failing job is rolled back alone), commits once, and only then answers each caller: group
//! commit. A job's answer therefore always means "committed" (or an error, and nothing kept).
//!
//! When the queue is full ([`QUEUE_CAPACITY`] jobs), callers wait for room: back-pressure,
//! never loss and never unbounded memory.
//!
//! Reads that must not wait behind a storm of writes (the journal's readers: webhook delivery
//! and history) have their own lane ([`READ_CAPACITY`] jobs, callers wait when it is full).
//! The thread answers every read waiting before it starts each write batch, so a read waits
//! for at most the commit in progress, not for every write queued before it; and it runs at
//! most one read batch between two write batches, so steady reads never hold writes back. Reads run with
//! `query_only` on and see only committed data; a caller that awaited a write sees it.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot, watch};

use crate::error::DbError;

/// A connection the owner thread runs transactions on.
pub(crate) trait Backend: Send + 'static {
    /// Starts a write transaction.
    const BEGIN: &'static str;
    /// Starts a transaction that cannot write.
    const BEGIN_READ: &'static str;
    /// Run after every read transaction, whatever happened in it (empty: nothing to undo).
    const AFTER_READ: &'static str;
    /// Runs `sql`: statements without results.
    fn batch(&mut self, sql: &str) -> Result<(), DbError>;
}

impl Backend for Connection {
    // Takes the write lock at once: a batch never fails half-way for want of it.
    const BEGIN: &'static str = "BEGIN IMMEDIATE";
    const BEGIN_READ: &'static str = "PRAGMA query_only = ON; BEGIN DEFERRED";
    const AFTER_READ: &'static str = "PRAGMA query_only = OFF";

    fn batch(&mut self, sql: &str) -> Result<(), DbError> {
        Ok(self.execute_batch(sql)?)
    }
}

/// How many jobs may wait for the owner thread before callers wait for room.
pub const QUEUE_CAPACITY: usize = 4096;
/// The most jobs one transaction (one commit, one fsync) carries.
pub const MAX_BATCH: usize = 1024;
/// How many reads may wait in their own lane before callers wait for room.
pub const READ_CAPACITY: usize = 1024;

/// One unit of work for the owner thread.
pub(crate) trait Job<C>: Send {
    /// Runs the work on the connection, inside the batch's transaction.
    fn run(&mut self, conn: &mut C);
    /// Answers the caller once the batch's commit is known.
    fn finish(self: Box<Self>, commit: Result<(), DbError>);
}

/// A closure and the port its result goes back on.
struct Call<T, F> {
    work: Option<F>,
    result: Option<Result<T, DbError>>,
    reply: oneshot::Sender<Result<T, DbError>>,
}

impl<C, T, F> Job<C> for Call<T, F>
where
    C: Backend,
    T: Send,
    F: FnOnce(&mut C) -> Result<T, DbError> + Send,
{
    fn run(&mut self, conn: &mut C) {
        let Some(work) = self.work.take() else {
            return;
        };
        if let Err(e) = conn.batch("SAVEPOINT job") {
            self.result = Some(Err(e));
            return;
        }
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| work(conn)))
            .unwrap_or_else(|panic| Err(DbError::Panicked(panic_message(&panic))));
        let end = if result.is_ok() {
            "RELEASE job"
        } else {
            "ROLLBACK TO job; RELEASE job"
        };
        self.result = Some(match conn.batch(end) {
            Ok(()) => result,
            Err(e) => {
                // A statement of the job failed underneath it, and the job went on (PostgreSQL
                // then refuses everything, the release included, until the savepoint is rolled
                // back; its `COMMIT` would quietly roll the whole batch back): undo the job
                // alone, so that the others in the batch still commit.
                if result.is_ok() {
                    let _ = conn.batch("ROLLBACK TO job; RELEASE job");
                }
                Err(e)
            }
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
pub(crate) enum Queue<C> {
    /// The owner thread (the daemon's mode): its write queue and its read lane.
    Thread {
        /// Jobs that may write: run in group commits, in order.
        writes: mpsc::Sender<Box<dyn Job<C>>>,
        /// Jobs that only read: answered before the next write batch starts.
        reads: mpsc::Sender<Box<dyn Job<C>>>,
    },
    /// Jobs run on the calling thread, one transaction each, under a lock: for tests on
    /// tokio's paused clock (a wait on another thread would let that clock jump) and tiny
    /// embedders. Never used by the daemon.
    Inline(Arc<InlineConn<C>>),
}

impl<C> Clone for Queue<C> {
    fn clone(&self) -> Self {
        match self {
            Queue::Thread { writes, reads } => Queue::Thread {
                writes: writes.clone(),
                reads: reads.clone(),
            },
            Queue::Inline(inline) => Queue::Inline(inline.clone()),
        }
    }
}

impl<C: Backend> Queue<C> {
    /// Runs `work`; resolves after its transaction committed.
    pub(crate) async fn call<T, F>(&self, work: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnOnce(&mut C) -> Result<T, DbError> + Send + 'static,
    {
        self.submit(work, false).await
    }

    /// Runs `work`, which only reads, in the read lane: ahead of the writes still queued.
    /// A write attempted by `work` fails (`query_only`).
    pub(crate) async fn read<T, F>(&self, work: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnOnce(&mut C) -> Result<T, DbError> + Send + 'static,
    {
        self.submit(work, true).await
    }

    async fn submit<T, F>(&self, work: F, read_only: bool) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnOnce(&mut C) -> Result<T, DbError> + Send + 'static,
    {
        let (reply, mut answer) = oneshot::channel();
        let job: Box<dyn Job<C>> = Box::new(Call {
            work: Some(work),
            result: None,
            reply,
        });
        match self {
            Queue::Thread { writes, reads } => {
                let lane = if read_only { reads } else { writes };
                lane.send(job).await.map_err(|_| DbError::Unavailable)?;
                answer.await.map_err(|_| DbError::Unavailable)?
            }
            Queue::Inline(inline) => {
                let mut conn = inline.conn.lock().unwrap_or_else(|e| e.into_inner());
                if read_only {
                    run_read_batch(&mut *conn, &mut vec![job]);
                } else {
                    let mut batch = [job];
                    let commit = run_batch(&mut *conn, &mut batch);
                    let [job] = batch;
                    job.finish(commit);
                }
                answer.try_recv().map_err(|_| DbError::Unavailable)?
            }
        }
    }
}

/// Tells, by its sender being dropped, that the database file is closed.
pub(crate) type Closed = watch::Receiver<()>;

/// Starts the owner thread on `conn`. The thread ends (closing the database, then dropping
/// the [`Closed`] sender) when every [`Queue`] is dropped and the jobs already queued are done.
pub(crate) fn spawn<C: Backend>(mut conn: C, name: &str) -> std::io::Result<(Queue<C>, Closed)> {
    let (writes, write_rx) = mpsc::channel(QUEUE_CAPACITY);
    let (reads, read_rx) = mpsc::channel(READ_CAPACITY);
    let (closing, closed) = watch::channel(());
    // Only to wait on both lanes at once: no I/O or timer driver, no thread of its own.
    let waiter = tokio::runtime::Builder::new_current_thread().build()?;
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            run(&mut conn, &waiter, write_rx, read_rx);
            drop(conn);
            drop(closing);
        })?;
    Ok((Queue::Thread { writes, reads }, closed))
}

/// Inline mode: the connection closes when the last [`Queue`] holding it is dropped, and then
/// the [`Closed`] sender goes with it.
pub(crate) fn inline<C: Backend>(conn: C) -> (Queue<C>, Closed) {
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
pub(crate) struct InlineConn<C> {
    conn: Mutex<C>,
    _closing: watch::Sender<()>,
}

/// What the owner thread takes next.
enum Next<C> {
    Read(Box<dyn Job<C>>),
    Write(Box<dyn Job<C>>),
}

fn run<C: Backend>(
    conn: &mut C,
    waiter: &tokio::runtime::Runtime,
    mut writes: mpsc::Receiver<Box<dyn Job<C>>>,
    mut reads: mpsc::Receiver<Box<dyn Job<C>>>,
) {
    let mut batch: Vec<Box<dyn Job<C>>> = Vec::with_capacity(64);
    loop {
        let next = waiter.block_on(async {
            tokio::select! {
                biased;
                Some(job) = reads.recv() => Some(Next::Read(job)),
                Some(job) = writes.recv() => Some(Next::Write(job)),
                else => None,
            }
        });
        let first = match next {
            None => return,
            Some(Next::Read(job)) => {
                batch.push(job);
                run_reads(conn, &mut batch, &mut reads);
                // One read batch between write batches at most: steady reads never hold the
                // writes back.
                match writes.try_recv() {
                    Ok(job) => job,
                    Err(_) => continue,
                }
            }
            Some(Next::Write(job)) => {
                // The reads that came while this write waited go first.
                run_reads(conn, &mut batch, &mut reads);
                job
            }
        };
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match writes.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let commit = run_batch(conn, &mut batch);
        if let Err(e) = &commit {
            tracing::error!(error = %e, jobs = batch.len(), "a session database commit failed (the error says whether its operations were kept)");
        }
        for job in batch.drain(..) {
            job.finish(commit.clone());
        }
    }
}

/// Runs the reads in `batch` and every read waiting in `reads` (up to [`MAX_BATCH`]) in one
/// read-only transaction, and answers them.
fn run_reads<C: Backend>(
    conn: &mut C,
    batch: &mut Vec<Box<dyn Job<C>>>,
    reads: &mut mpsc::Receiver<Box<dyn Job<C>>>,
) {
    while batch.len() < MAX_BATCH {
        match reads.try_recv() {
            Ok(job) => batch.push(job),
            Err(_) => break,
        }
    }
    run_read_batch(conn, batch);
}

/// Runs the reads in `batch` in one read-only transaction, and answers them.
fn run_read_batch<C: Backend>(conn: &mut C, batch: &mut Vec<Box<dyn Job<C>>>) {
    if batch.is_empty() {
        return;
    }
    let done = conn.batch(C::BEGIN_READ);
    if done.is_ok() {
        for job in batch.iter_mut() {
            job.run(conn);
        }
    }
    let end = match &done {
        Ok(()) => conn.batch("COMMIT"),
        Err(_) => Ok(()),
    };
    if end.is_err() {
        let _ = conn.batch("ROLLBACK");
    }
    // Whatever happened above, the writes that follow must be able to write.
    if !C::AFTER_READ.is_empty()
        && let Err(e) = conn.batch(C::AFTER_READ)
    {
        tracing::error!(error = %e, "the session database could not leave read-only mode");
    }
    let outcome = done.and(end);
    for job in batch.drain(..) {
        job.finish(outcome.clone());
    }
}

fn run_batch<C: Backend>(conn: &mut C, batch: &mut [Box<dyn Job<C>>]) -> Result<(), DbError> {
    conn.batch(C::BEGIN)?;
    for job in batch.iter_mut() {
        job.run(conn);
    }
    if let Err(e) = conn.batch("COMMIT") {
        let _ = conn.batch("ROLLBACK");
        return Err(e);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::Pin;
    use std::task::Poll;

    use super::*;

    /// Polls `future` once: `true` if it is still pending (its job is then queued).
    async fn queued<T>(future: &mut Pin<Box<impl Future<Output = T>>>) -> bool {
        std::future::poll_fn(|cx| Poll::Ready(future.as_mut().poll(cx).is_pending())).await
    }

    /// Which lane a job goes to.
    enum Lane {
        Write,
        Read,
    }

    /// Holds the owner thread in a job of `lane` until the sender is used (or dropped).
    async fn hold(
        queue: &Queue<Connection>,
        lane: Lane,
    ) -> (
        tokio::task::JoinHandle<Result<(), DbError>>,
        std::sync::mpsc::Sender<()>,
    ) {
        let (started, running) = oneshot::channel();
        let (release, held) = std::sync::mpsc::channel::<()>();
        let work = move |_: &mut Connection| {
            let _ = started.send(());
            let _ = held.recv();
            Ok(())
        };
        let queue = queue.clone();
        let holding = tokio::spawn(async move {
            match lane {
                Lane::Write => queue.call(work).await,
                Lane::Read => queue.read(work).await,
            }
        });
        running.await.unwrap();
        (holding, release)
    }

    fn count(conn: &mut Connection) -> Result<i64, DbError> {
        Ok(conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0))?)
    }

    #[tokio::test]
    async fn a_read_goes_ahead_of_the_writes_queued_before_it_and_cannot_write() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t (n INTEGER)").unwrap();
        let (queue, _closed) = spawn(conn, "test-db").unwrap();

        // Hold the owner thread in a write until everything below is queued.
        let (holding, release) = hold(&queue, Lane::Write).await;
        let mut writes = Vec::new();
        for n in 0..10 {
            let mut write = Box::pin(queue.call(move |c| {
                c.execute("INSERT INTO t VALUES (?1)", [n])?;
                Ok(())
            }));
            assert!(queued(&mut write).await);
            writes.push(write);
        }
        let mut read = Box::pin(queue.read(count));
        assert!(queued(&mut read).await);
        release.send(()).unwrap();

        assert_eq!(read.await.unwrap(), 0, "the read went first");
        for write in writes {
            write.await.unwrap();
        }
        holding.await.unwrap().unwrap();
        assert_eq!(
            queue.read(count).await.unwrap(),
            10,
            "a read sees what was committed"
        );

        let refused = queue
            .read(|c| {
                c.execute("INSERT INTO t VALUES (99)", [])?;
                Ok(())
            })
            .await;
        assert!(refused.is_err(), "{refused:?}");
        queue
            .call(|c| {
                c.execute("INSERT INTO t VALUES (100)", [])?;
                Ok(())
            })
            .await
            .unwrap();
        assert_eq!(
            queue.read(count).await.unwrap(),
            11,
            "writes work after a refused one"
        );
    }

    #[tokio::test]
    async fn reads_do_not_hold_back_a_write_that_waits() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t (n INTEGER)").unwrap();
        let (queue, _closed) = spawn(conn, "test-db").unwrap();

        // Hold the owner thread in a read until a write and another read are queued.
        let (holding, release) = hold(&queue, Lane::Read).await;
        let mut write = Box::pin(queue.call(|c| {
            c.execute("INSERT INTO t VALUES (1)", [])?;
            Ok(())
        }));
        assert!(queued(&mut write).await);
        let mut read = Box::pin(queue.read(count));
        assert!(queued(&mut read).await);
        release.send(()).unwrap();

        holding.await.unwrap().unwrap();
        assert_eq!(
            read.await.unwrap(),
            1,
            "the waiting write went before the next reads"
        );
        write.await.unwrap();
    }

    #[tokio::test]
    async fn inline_reads_cannot_write_either() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t (n INTEGER)").unwrap();
        let (queue, _closed) = inline(conn);
        let refused = queue
            .read(|c| {
                c.execute("INSERT INTO t VALUES (1)", [])?;
                Ok(())
            })
            .await;
        assert!(refused.is_err(), "{refused:?}");
        queue
            .call(|c| {
                c.execute("INSERT INTO t VALUES (2)", [])?;
                Ok(())
            })
            .await
            .unwrap();
        assert_eq!(queue.read(count).await.unwrap(), 1);
    }
}
