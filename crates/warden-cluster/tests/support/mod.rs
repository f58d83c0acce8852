//! What the cluster's tests share: a real PostgreSQL, a TCP proxy the test can cut, and the
//! short lease timings every test runs on.

#![allow(dead_code)]

pub mod postgres;
pub mod proxy;

use std::time::Duration;

use warden_cluster::Timing;

/// Lease timings five times shorter than the defaults, with the same shape: T = 3 s,
/// D = 2 s, R = 0.4 s, P = 0.2 s, so the margin T − D − P is 0.8 s (checked by
/// `timing.rs`'s table).
pub fn fast() -> Timing {
    let ms = Duration::from_millis;
    Timing {
        renew_every: ms(400),
        fence_after: ms(2000),
        dead_after: ms(3000),
        poll_every: ms(200),
        min_remaining: ms(600),
        grace: ms(600),
        statement_timeout: ms(500),
    }
}
