//! The supervisor's timers: one queue of deadlines and a single wake-up, instead of one
//! detached task per timer. Cancelling removes the deadline from the queue at once, so the
//! queue holds at most the live timers (two per session): a connection that ends before its
//! `stable_after` (ten minutes by default) leaves nothing behind, however often it flaps. A
//! session still ignores a deadline whose id is not its current one.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

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

/// One queued deadline: when, and its id (never reused).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TimerKey {
    at: Instant,
    id: u64,
}

impl TimerKey {
    /// The deadline's id, as [`Deadlines::take_due`] gives it.
    pub fn id(self) -> u64 {
        self.id
    }
}

/// The queue of deadlines, ordered by time then id.
#[derive(Default)]
pub(crate) struct Deadlines {
    queue: BTreeMap<(Instant, u64), Due>,
    /// The queue's length, for `/metrics` (`Supervisor::timers_queued`).
    gauge: Arc<AtomicUsize>,
    next_id: u64,
    /// The pending wake-up and the deadline it is for.
    armed: Option<(Instant, WakeUp)>,
}

impl Deadlines {
    /// An empty queue whose length is kept in `gauge`.
    pub fn new(gauge: Arc<AtomicUsize>) -> Self {
        Self {
            queue: BTreeMap::new(),
            gauge,
            next_id: 0,
            armed: None,
        }
    }

    fn measure(&self) {
        self.gauge.store(self.queue.len(), Ordering::Relaxed);
    }

    /// Queues `due` at `at`; returns its key.
    pub fn add(&mut self, at: Instant, due: Due) -> TimerKey {
        self.next_id += 1;
        self.queue.insert((at, self.next_id), due);
        self.measure();
        TimerKey {
            at,
            id: self.next_id,
        }
    }

    /// Removes a deadline that is no longer wanted (nothing if it already came due). The
    /// wake-up armed for it, if any, stays: it finds nothing due and arms the next one.
    pub fn cancel(&mut self, key: TimerKey) {
        self.queue.remove(&(key.at, key.id));
        self.measure();
    }

    /// Takes every deadline that is due at `now`, oldest first.
    pub fn take_due(&mut self, now: Instant) -> Vec<(u64, Due)> {
        let later = self.queue.split_off(&(now, u64::MAX));
        let due = std::mem::replace(&mut self.queue, later);
        self.measure();
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

    /// Deadlines queued.
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
        let b = d.add(now + Duration::from_secs(2), Due::Retry(t("b"))).id();
        let a = d.add(now + Duration::from_secs(1), Due::Retry(t("a"))).id();
        let same = d.add(now + Duration::from_secs(2), Due::Retry(t("c"))).id();
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

    #[test]
    fn cancelled_deadlines_leave_the_queue_at_once() {
        let now = Instant::now();
        let gauge = Arc::new(AtomicUsize::new(0));
        let mut d = Deadlines::new(gauge.clone());
        // A session that connects and drops 1,000 times within its ten-minute stable_after:
        // each connection's timer is cancelled when it ends.
        for n in 0..1000 {
            let at = now + Duration::from_secs(600) + Duration::from_millis(n);
            let key = d.add(
                at,
                Due::Stable {
                    token: t("flapping"),
                    generation: n,
                },
            );
            d.cancel(key);
        }
        let kept = d.add(now + Duration::from_secs(5), Due::Retry(t("kept")));
        assert_eq!(d.len(), 1);
        assert_eq!(gauge.load(Ordering::Relaxed), 1);
        d.cancel(kept);
        d.cancel(kept); // twice, or after it came due: nothing happens
        assert_eq!(d.len(), 0);
        assert_eq!(gauge.load(Ordering::Relaxed), 0);
        assert!(d.take_due(now + Duration::from_secs(3600)).is_empty());
    }
}
