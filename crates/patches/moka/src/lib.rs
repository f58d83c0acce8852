//! # moka (warden's stand-in)
//!
//! The part of [moka](https://crates.io/crates/moka) 0.12's `future::Cache` API that wa-rs 0.2
//! uses, built on a mutex'd `HashMap`. The workspace puts it in moka's place with
//! `[patch.crates-io]`; see `crates/patches/README.md` for why and what it saves.
//!
//! - **Small when empty.** A cache is one `Arc` holding a mutex, an empty map (no allocation
//!   until the first insert) and its settings: about 150 bytes. moka 0.12 writes two 384-slot
//!   channels and 64 map segments at creation, about 32 kB per cache, and wa-rs builds nine of
//!   them per client.
//! - **Same semantics where wa-rs relies on them**: `time_to_live` and `time_to_idle` (an
//!   expired entry is never returned), `max_capacity` (the least recently used entries are
//!   evicted once it is passed), `get_with` runs its init once per missing key even when
//!   callers race, and `and_compute_with` is atomic.
//! - **Expiry frees memory without being asked**: one process-wide thread
//!   (`moka-sweeper`) removes expired entries from the caches that hold any, every
//!   [`SWEEP_PERIOD`]. An entry that holds the sender of a task which holds the cache's owner
//!   therefore goes when it expires, and the cycle with it.
//!
//! Where it differs from moka, knowingly:
//! - eviction past `max_capacity` is least-recently-used, in batches down to seven eighths of
//!   the capacity (moka admits and evicts with TinyLFU, entry by entry);
//! - `remove` of an entry that has expired but is still stored returns `None` (moka returns
//!   the stale value), and a compute that removes such an entry reports `StillNone`;
//! - `get_with`, `or_insert_with` and `and_compute_with` hold one lock per cache while their
//!   init or compute future runs, so such a future must not call back into the same cache
//!   (it would wait for ever). Every one in wa-rs 0.2 is a constructor or a counter.
//!
//! What it does not do: weighers, eviction listeners, iteration and the `sync` cache. Nothing
//! in wa-rs uses them.

pub mod future;
pub mod ops;

mod entry;
mod sweeper;

pub use entry::Entry;
pub use sweeper::SWEEP_PERIOD;

/// Runs one sweep over every cache as if the clock read `now`: what the sweeper thread will
/// do once that time has come. Not part of moka's API; for tests that cannot wait out a
/// five-minute time to live.
#[doc(hidden)]
pub fn sweep_expired_as_of(now: std::time::Instant) {
    sweeper::sweep_once(now);
}
