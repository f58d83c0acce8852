//! A node's own lease, as the node sees it: a pure state machine over its monotonic clock.
//!
//! - Registering or renewing *sends* a statement at `sent`; when it succeeds, the lease runs
//!   until `sent + D` ([`Timing::fence_after`]). The send time, not the answer's, counts: the
//!   peers' clock started no later than that.
//! - Once the deadline passes the node is **fenced** for good in this incarnation: it must
//!   abort every WhatsApp socket and register afresh. A late answer cannot bring it back.
//! - A node never dials, nor claims, with less than [`Timing::min_remaining`] left.

use std::time::{Duration, Instant};

use crate::timing::Timing;

/// The lease of one incarnation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lease {
    /// Valid until `deadline`.
    Held {
        /// When the node fences itself.
        deadline: Instant,
    },
    /// Past its deadline, or declared dead: this incarnation owns nothing any more.
    Fenced,
}

/// What a node may do with its lease at a given moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Enough lease left to dial WhatsApp or claim a session.
    Dial {
        /// How much is left.
        remaining: Duration,
    },
    /// Still owned, but too little left to start a connection or a claim: keep what is
    /// connected, start nothing.
    Hold {
        /// How much is left.
        remaining: Duration,
    },
    /// Fence now: abort every socket, own nothing.
    Fence,
}

impl Lease {
    /// The lease of an incarnation whose registration was sent at `sent` and succeeded.
    pub fn registered(sent: Instant, timing: &Timing) -> Self {
        Lease::Held {
            deadline: sent + timing.fence_after,
        }
    }

    /// A renewal sent at `sent` succeeded: the deadline moves to `sent + D` if that is later.
    /// A fenced lease stays fenced, and a lease already past its deadline at `now` fences.
    pub fn renewed(self, sent: Instant, now: Instant, timing: &Timing) -> Self {
        match self {
            Lease::Fenced => Lease::Fenced,
            Lease::Held { deadline } if now >= deadline => Lease::Fenced,
            Lease::Held { deadline } => Lease::Held {
                deadline: deadline.max(sent + timing.fence_after),
            },
        }
    }

    /// The lease at `now`: fenced once the deadline has come.
    pub fn at(self, now: Instant) -> Self {
        match self {
            Lease::Held { deadline } if now >= deadline => Lease::Fenced,
            other => other,
        }
    }

    /// What the node may do at `now`.
    pub fn verdict(self, now: Instant, timing: &Timing) -> Verdict {
        match self.at(now) {
            Lease::Fenced => Verdict::Fence,
            Lease::Held { deadline } => {
                let remaining = deadline - now;
                if remaining >= timing.min_remaining {
                    Verdict::Dial { remaining }
                } else {
                    Verdict::Hold { remaining }
                }
            }
        }
    }

    /// When this lease fences itself, if it is held.
    pub fn deadline(self) -> Option<Instant> {
        match self {
            Lease::Held { deadline } => Some(deadline),
            Lease::Fenced => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(n: f64) -> Duration {
        Duration::from_secs_f64(n)
    }

    #[test]
    fn renewals_move_the_deadline_from_their_send_time() {
        let t = Timing::default();
        let t0 = Instant::now();
        // (renewals as (sent, answered) in seconds after registering at 0, then the moment
        // asked, and the verdict expected)
        type Row = (&'static [(f64, f64)], f64, Verdict);
        let table: [Row; 8] = [
            (&[], 0.0, Verdict::Dial { remaining: s(10.0) }),
            (&[], 6.9, Verdict::Dial { remaining: s(3.1) }),
            (&[], 7.5, Verdict::Hold { remaining: s(2.5) }),
            (&[], 10.0, Verdict::Fence),
            // An answer that took 5 s extends from the send time, not the answer's.
            (&[(2.0, 7.0)], 11.0, Verdict::Hold { remaining: s(1.0) }),
            (
                &[(2.0, 2.1), (4.0, 4.1)],
                13.5,
                Verdict::Hold { remaining: s(0.5) },
            ),
            // An answer arriving after the deadline does not revive the lease.
            (&[(2.0, 12.5)], 12.6, Verdict::Fence),
            // An older renewal answered late never moves the deadline back.
            (
                &[(4.0, 4.1), (2.0, 4.2)],
                11.0,
                Verdict::Dial { remaining: s(3.0) },
            ),
        ];
        for (renewals, asked, expected) in table {
            let mut lease = Lease::registered(t0, &t);
            for &(sent, answered) in renewals {
                lease = lease.renewed(t0 + s(sent), t0 + s(answered), &t);
            }
            let verdict = lease.verdict(t0 + s(asked), &t);
            assert_eq!(verdict, expected, "renewals {renewals:?}, asked at {asked}");
        }
    }

    #[test]
    fn fenced_is_for_good() {
        let t = Timing::default();
        let t0 = Instant::now();
        let lease = Lease::registered(t0, &t).at(t0 + s(10.0));
        assert_eq!(lease, Lease::Fenced);
        assert_eq!(lease.renewed(t0 + s(10.5), t0 + s(10.6), &t), Lease::Fenced);
        assert_eq!(lease.deadline(), None);
    }
}
