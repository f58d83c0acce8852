//! What an operator's `start` does to a session that is neither live nor queued: a pure rule,
//! tested with a table. The supervisor carries the decision out.
//!
//! - **A `start` never skips the backoff.** A session waiting for a scheduled retry keeps its
//!   schedule: answering `start` by connecting at once would let a client that polls `start`
//!   recreate the connect-reconnect loop the restart policy exists to end. `restart` connects
//!   at once (within its cooldown, or with `--force`).
//! - **Leaving a parked state** (failed, logged out, replaced, QR expired) starts a fresh
//!   round of attempts, at most once per `restart_cooldown`: a second such start within it is
//!   refused with the time left, so polling `start` on a failing session costs at most one
//!   round of attempts (or one QR code) per cooldown.
//! - Banned sessions are refused before this rule (their expiry schedules the retry).

use std::time::Duration;

use tokio::time::Instant;

use crate::state::SessionState;

/// What the supervisor knows when a `start` arrives for a session that is not live or queued.
#[derive(Debug, Clone, Copy)]
pub struct StartFacts {
    /// The session's state.
    pub state: SessionState,
    /// Whether a retry (or a parked session's automatic retry) is scheduled.
    pub retry_scheduled: bool,
    /// When a `start` last took this session out of a parked state.
    pub last_unpark: Option<Instant>,
    /// Now.
    pub now: Instant,
    /// The restart cooldown.
    pub cooldown: Duration,
}

/// The decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartDecision {
    /// Connect now (through admission control). `unparks`: this start takes the session out
    /// of a parked state, with a fresh round of attempts; remember when.
    Connect {
        /// Whether it leaves a parked state.
        unparks: bool,
    },
    /// A retry is scheduled: keep it, answer with the session as it is.
    KeepSchedule,
    /// Out of a parked state too soon after the last time: refused for this long.
    TooSoon(Duration),
}

/// Decides what a `start` does; see the module docs.
pub fn decide(facts: StartFacts) -> StartDecision {
    if facts.state.is_parked() {
        let since = facts
            .last_unpark
            .map(|at| facts.now.saturating_duration_since(at));
        return match since {
            Some(since) if since < facts.cooldown => StartDecision::TooSoon(facts.cooldown - since),
            _ => StartDecision::Connect { unparks: true },
        };
    }
    if facts.retry_scheduled {
        return StartDecision::KeepSchedule;
    }
    StartDecision::Connect { unparks: false }
}

#[cfg(test)]
mod tests {
    use super::*;
    use SessionState::*;

    #[test]
    fn start_by_state() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let cooldown = s(30);
        // (state, retry scheduled, last unpark (s before now), expected)
        let table = [
            (
                Stopped,
                false,
                None,
                StartDecision::Connect { unparks: false },
            ),
            (
                Connecting,
                false,
                None,
                StartDecision::Connect { unparks: false },
            ),
            (BackingOff, true, None, StartDecision::KeepSchedule),
            // A backing-off session whose retry is not scheduled any more (it was cancelled)
            // connects.
            (
                BackingOff,
                false,
                None,
                StartDecision::Connect { unparks: false },
            ),
            (
                Failed,
                false,
                None,
                StartDecision::Connect { unparks: true },
            ),
            (
                Failed,
                false,
                Some(31),
                StartDecision::Connect { unparks: true },
            ),
            (
                Failed,
                false,
                Some(30),
                StartDecision::Connect { unparks: true },
            ),
            (Failed, false, Some(10), StartDecision::TooSoon(s(20))),
            // A failed session with an automatic retry later (`retry_failed_after`) is taken
            // out by the operator's start, not made to wait for it.
            (Failed, true, None, StartDecision::Connect { unparks: true }),
            (Failed, true, Some(1), StartDecision::TooSoon(s(29))),
            (LoggedOut, false, Some(5), StartDecision::TooSoon(s(25))),
            (
                QrExpired,
                false,
                None,
                StartDecision::Connect { unparks: true },
            ),
            (Replaced, false, Some(29), StartDecision::TooSoon(s(1))),
        ];
        for (state, retry_scheduled, ago, expected) in table {
            let now = t0 + s(3600);
            let facts = StartFacts {
                state,
                retry_scheduled,
                last_unpark: ago.map(|a| now - s(a)),
                now,
                cooldown,
            };
            assert_eq!(
                decide(facts),
                expected,
                "{state:?} {retry_scheduled} {ago:?}"
            );
        }
    }
}
