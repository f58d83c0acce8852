//! The supervisor's timers: one queue of deadlines and a single wake-up, instead of one
//! detached task per timer. Cancelling is lazy: a cancelled deadline stays queued, and the
//! session ignores it when it comes due because its id no longer matches.

use std::collections::BTreeMap;

use ractor::ActorRef;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::token::Token;

use super::messages::SupervisorMsg;

/// The pending timer task that sends [`SupervisorMsg::TimersDue`].
type WakeUp = JoinHandle<Result<(), ractor::MessagingErr<SupervisorMsg>>>;

/// What is due at a deadline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Due {
    /// Retry, ban expiry or quarantine end of a session.
    Retry(Token),
    /// A connection may have been up for `stable_after`.
    Stable { token: Token, generation: u64 },
}

/// The queue of deadlines, ordered by time then id.
#[derive(Default)]
pub(crate) struct Deadlines {
    queue: BTreeMap<(Instant, u64), Due>,
    next_id: u64,
    /// The pending wake-up and the deadline it is for.
    armed: Option<(Instant, WakeUp)>,
}

impl Deadlines {
    /// Queues `due` at `at`; returns its id.
    pub fn add(&mut self, at: Instant, due: Due) -> u64 {
        self.next_id += 1;
        self.queue.insert((at, self.next_id), due);
        self.next_id
    }

    /// Takes every deadline that is due at `now`, oldest first.
    pub fn take_due(&mut self, now: Instant) -> Vec<(u64, Due)> {
        let later = self.queue.split_off(&(now, u64::MAX));
        let due = std::mem::replace(&mut self.queue, later);
        due.into_iter().map(|((_, id), due)| (id, due)).collect()
    }

    /// Forgets the wake-up that just fired.
    pub fn fired(&mut self) {
        self.armed = None;
    }

    /// Makes sure a wake-up comes at the earliest deadline.
    pub fn arm(&mut self, myself: &ActorRef<SupervisorMsg>, now: Instant) {
        let Some(&(next, _)) = self.queue.keys().next() else {
            return;
        };
        if self.armed.as_ref().is_some_and(|(at, _)| *at <= next) {
            return;
        }
        if let Some((_, old)) = self.armed.take() {
            old.abort();
        }
        let handle = myself.send_after(next.saturating_duration_since(now), || {
            SupervisorMsg::TimersDue
        });
        self.armed = Some((next, handle));
    }

    /// Deadlines queued (including cancelled ones not yet due).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.queue.len()
    }
}

impl Drop for Deadlines {
    fn drop(&mut self) {
        if let Some((_, handle)) = self.armed.take() {
            handle.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn t(s: &str) -> Token {
        Token::parse(s).unwrap()
    }

    #[test]
    fn due_deadlines_come_out_in_order_and_later_ones_stay() {
        let now = Instant::now();
        let mut d = Deadlines::default();
        let b = d.add(now + Duration::from_secs(2), Due::Retry(t("b")));
        let a = d.add(now + Duration::from_secs(1), Due::Retry(t("a")));
        let same = d.add(now + Duration::from_secs(2), Due::Retry(t("c")));
        d.add(now + Duration::from_secs(9), Due::Retry(t("late")));
        let due = d.take_due(now + Duration::from_secs(2));
        assert_eq!(
            due,
            vec![
                (a, Due::Retry(t("a"))),
                (b, Due::Retry(t("b"))),
                (same, Due::Retry(t("c")))
            ]
        );
        assert_eq!(d.len(), 1);
        assert!(d.take_due(now).is_empty());
    }
}
