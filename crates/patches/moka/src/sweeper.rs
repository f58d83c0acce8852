//! One process-wide thread that removes expired entries from every cache that holds some.
//!
//! The thread starts when the first cache that can expire entries is built. A cache registers
//! itself when it stores an entry that can expire, and is dropped from the
//! list once a sweep leaves it empty (it registers again on its next such insert) or once the
//! cache itself is gone. Caches that are empty cost the sweeper nothing.

use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

/// How often expired entries are removed.
pub const SWEEP_PERIOD: Duration = Duration::from_secs(5);

/// A cache the sweeper can clean.
pub(crate) trait Sweep: Send + Sync {
    /// Removes the entries expired at `now`. Returns whether entries that can expire remain;
    /// if not, the cache has marked itself unregistered (under its own lock).
    fn sweep(&self, now: Instant) -> bool;
}

/// The caches to sweep.
type List = Mutex<Vec<Weak<dyn Sweep>>>;

fn registry() -> Option<&'static List> {
    static REGISTRY: OnceLock<Option<List>> = OnceLock::new();
    REGISTRY
        .get_or_init(|| {
            // If the thread cannot start, nothing is listed (a list nobody prunes would only
            // grow): expired entries are still never returned, and are removed when the cache
            // passes its capacity; only the timely freeing is lost.
            std::thread::Builder::new()
                .name("moka-sweeper".into())
                .spawn(run)
                .ok()
                .map(|_| Mutex::new(Vec::new()))
        })
        .as_ref()
}

/// Starts the sweeper's thread if it is not running yet.
pub(crate) fn start() {
    let _ = registry();
}

/// Adds a cache to the sweeper's list.
pub(crate) fn register(cache: Weak<dyn Sweep>) {
    if let Some(list) = registry() {
        lock(list).push(cache);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn run() {
    loop {
        std::thread::sleep(SWEEP_PERIOD);
        sweep_once(Instant::now());
    }
}

/// One pass over every registered cache.
pub(crate) fn sweep_once(now: Instant) {
    let Some(list) = registry() else { return };
    let caches = std::mem::take(&mut *lock(list));
    let mut keep = Vec::with_capacity(caches.len());
    for weak in caches {
        if let Some(cache) = weak.upgrade()
            && cache.sweep(now)
        {
            keep.push(Arc::downgrade(&cache));
        }
    }
    // Caches registered during the pass were pushed to the (emptied) list meanwhile.
    lock(list).extend(keep);
}
