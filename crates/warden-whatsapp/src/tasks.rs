//! A count of the tasks this crate spawns (connection drivers, `run()` tasks, socket readers,
//! pings, pair-code requests), for metrics and leak tests: it is 0 whenever no connection
//! exists. wa-rs's own tasks are not counted (see the crate docs for those that outlive a
//! connection).

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::task::JoinHandle;

static ALIVE: AtomicUsize = AtomicUsize::new(0);

/// How many tasks spawned by this crate are alive (running, or aborted but not yet dropped).
pub fn alive() -> usize {
    ALIVE.load(Ordering::Relaxed)
}

/// Counts one task for as long as its future exists (dropped when it ends or is aborted).
struct Counted;

impl Counted {
    fn new() -> Self {
        ALIVE.fetch_add(1, Ordering::Relaxed);
        Self
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        ALIVE.fetch_sub(1, Ordering::Relaxed);
    }
}

/// `tokio::spawn`, counted.
pub(crate) fn spawn<F>(future: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let counted = Counted::new();
    tokio::spawn(async move {
        let _counted = counted;
        future.await
    })
}
