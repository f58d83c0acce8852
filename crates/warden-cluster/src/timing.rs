//! The lease's clocks: how often a node renews, when it fences itself, when its peers may
//! declare it dead, and how much lease a dial needs. Every figure is on a node's own
//! monotonic clock; no timestamp crosses the network.

use std::time::Duration;

use crate::error::ClusterError;

/// The lease timings (defaults: Kubernetes' 15/10/2 shape plus a 1 s poll).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// R: how often a node bumps its heartbeat.
    pub renew_every: Duration,
    /// D: a node fences itself this long after the *send* time of its last successful renewal.
    pub fence_after: Duration,
    /// T: a peer declares a node dead after seeing its heartbeat unchanged this long.
    pub dead_after: Duration,
    /// P: how often a node reads the membership and the claimable sessions.
    pub poll_every: Duration,
    /// A node never dials WhatsApp, nor claims, on a lease with less than this left.
    pub min_remaining: Duration,
    /// How long the preferred node has to claim a session before any node under its cap may.
    pub grace: Duration,
    /// Every statement's own deadline: a statement that has not answered by then failed.
    pub statement_timeout: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            renew_every: Duration::from_secs(2),
            fence_after: Duration::from_secs(10),
            dead_after: Duration::from_secs(15),
            poll_every: Duration::from_secs(1),
            min_remaining: Duration::from_secs(3),
            grace: Duration::from_secs(3),
            statement_timeout: Duration::from_secs(2),
        }
    }
}

impl Timing {
    /// The defaults with every duration multiplied by `scale` (0.2: five times faster, for
    /// tests on one machine).
    pub fn scaled(scale: f64) -> Self {
        let d = Self::default();
        let s = |x: Duration| x.mul_f64(scale);
        Self {
            renew_every: s(d.renew_every),
            fence_after: s(d.fence_after),
            dead_after: s(d.dead_after),
            poll_every: s(d.poll_every),
            min_remaining: s(d.min_remaining),
            grace: s(d.grace),
            statement_timeout: s(d.statement_timeout),
        }
    }

    /// The margin between a node fencing itself and the earliest moment a peer can declare it
    /// dead: T − D − P. It must be positive for ownership to be exclusive.
    pub fn margin(&self) -> Option<Duration> {
        self.dead_after
            .checked_sub(self.fence_after)?
            .checked_sub(self.poll_every)
            .filter(|m| !m.is_zero())
    }

    /// Checks the timings against each other: D ≥ 2R, a statement's deadline below D, a
    /// dial's minimum below D and above a statement's deadline, and a positive margin
    /// T − D − P (at least 2 s is advised; the defaults have 4 s).
    pub fn validate(&self) -> Result<(), ClusterError> {
        let bad = |why: &str| Err(ClusterError::Timing(why.to_owned()));
        if self.renew_every.is_zero() || self.poll_every.is_zero() {
            return bad("renew_every and poll_every must be above zero");
        }
        if self.renew_every * 2 > self.fence_after {
            return bad("fence_after must be at least two renew_every (a renewal may fail)");
        }
        if self.min_remaining >= self.fence_after {
            return bad("min_remaining must be shorter than fence_after");
        }
        if self.statement_timeout.is_zero() || self.statement_timeout >= self.fence_after {
            return bad("statement_timeout must be above zero and shorter than fence_after");
        }
        if self.min_remaining <= self.statement_timeout {
            // A claim's answer may take a whole statement timeout: the lease must outlast it.
            return bad("min_remaining must exceed statement_timeout");
        }
        if self.margin().is_none() {
            return bad("dead_after must exceed fence_after + poll_every");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_defaults_are_valid_with_a_four_second_margin() {
        let t = Timing::default();
        assert_eq!(t.validate(), Ok(()));
        assert_eq!(t.margin(), Some(Duration::from_secs(4)));
    }

    #[test]
    fn timings_that_break_exclusivity_are_refused() {
        // (renew, fence, dead, poll, min_remaining, statement, valid?)
        let table = [
            (2000, 10000, 15000, 1000, 3000, 2000, true),
            (6000, 10000, 15000, 1000, 3000, 2000, false), // D < 2R
            (2000, 10000, 11000, 1000, 3000, 2000, false), // T − D − P = 0
            (2000, 10000, 10000, 1000, 3000, 2000, false), // T = D
            (2000, 10000, 15000, 1000, 10000, 2000, false), // dial minimum = D
            (2000, 10000, 15000, 1000, 2000, 2000, false), // dial minimum = a statement's deadline
            (2000, 10000, 15000, 0, 3000, 2000, false),    // no poll
            (2000, 10000, 15000, 1000, 3000, 0, false),    // no statement timeout
            (400, 2000, 3000, 200, 600, 500, true),        // the cluster tests' timings
            (400, 2000, 3000, 200, 600, 400, true),        // warden-cluster-node --scale 0.2
        ];
        for (renew, fence, dead, poll, min, stmt, valid) in table {
            let t = Timing {
                renew_every: ms(renew),
                fence_after: ms(fence),
                dead_after: ms(dead),
                poll_every: ms(poll),
                min_remaining: ms(min),
                grace: ms(300),
                statement_timeout: ms(stmt),
            };
            assert_eq!(t.validate().is_ok(), valid, "{t:?}");
        }
    }
}
