//! The liveness watchdog's rule, replacing wa-rs's keepalive (which counts unanswered pings as
//! success and never notices a dead link, wa-rs-notes §0.4).
//!
//! The rule is about silence, measured by the transport: whatever arrives (a ping's answer, a
//! message, a receipt) proves the link alive. After [`Watchdog::ping_after`] of silence the
//! link sends a keepalive ping; after `timeout` of silence the connection is dead.

use std::time::Duration;

/// What to do after some silence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing to do.
    Alive,
    /// Quiet for a while: ask the server for a sign of life.
    Ping,
    /// Silent for `timeout`: close the connection and report it timed out.
    Dead,
}

/// The watchdog's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watchdog {
    /// Silence after which the connection is dead.
    pub timeout: Duration,
    /// Silence after which a ping goes out.
    pub ping_after: Duration,
}

impl Watchdog {
    /// A watchdog that pings after a third of `timeout`.
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            ping_after: timeout / 3,
        }
    }

    /// The verdict after `silent_for` without traffic (`None`: no socket open).
    pub fn judge(&self, silent_for: Option<Duration>) -> Verdict {
        match silent_for {
            Some(s) if s >= self.timeout => Verdict::Dead,
            Some(s) if s >= self.ping_after => Verdict::Ping,
            _ => Verdict::Alive,
        }
    }

    /// How often to look: often enough to catch a dead link within a sixth of `timeout`.
    pub fn period(&self) -> Duration {
        (self.timeout / 6).max(Duration::from_millis(10))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silence_leads_to_a_ping_then_to_death() {
        let w = Watchdog::new(Duration::from_secs(90));
        assert_eq!(w.judge(None), Verdict::Alive);
        assert_eq!(w.judge(Some(Duration::from_secs(29))), Verdict::Alive);
        assert_eq!(w.judge(Some(Duration::from_secs(30))), Verdict::Ping);
        assert_eq!(w.judge(Some(Duration::from_secs(89))), Verdict::Ping);
        assert_eq!(w.judge(Some(Duration::from_secs(90))), Verdict::Dead);
        assert_eq!(w.period(), Duration::from_secs(15));
    }
}
