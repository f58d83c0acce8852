//! Admission control: a global limit on connection attempts in flight and per second, so that
//! restoring thousands of sessions or a network blip does not become a reconnect storm.
//!
//! Pure bookkeeping (no clock reads): the supervisor passes `now` in and acts on the answers.

use std::collections::VecDeque;
use std::time::Duration;

use serde::Deserialize;
use tokio::time::Instant;

use crate::token::Token;

/// The knobs of admission control (`[admission]` in `daemon.toml`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdmissionConfig {
    /// At most this many connections may be between "dialling" and "connected or showing a QR".
    pub max_in_flight: usize,
    /// At most this many connection attempts start per second, on average.
    pub per_second: f64,
    /// Up to this many attempts may start at once after a quiet period.
    pub burst: u32,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        Self {
            max_in_flight: 16,
            per_second: 5.0,
            burst: 5,
        }
    }
}

impl AdmissionConfig {
    /// Checks the values make sense.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_in_flight == 0 {
            return Err("max_in_flight must be at least 1".into());
        }
        if !(self.per_second > 0.0 && self.per_second.is_finite()) {
            return Err("per_second must be a number above 0".into());
        }
        if self.burst == 0 {
            return Err("burst must be at least 1".into());
        }
        Ok(())
    }
}

/// The answer to "may the next queued session connect now?".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admit {
    /// Yes: this session may start (the in-flight slot is now taken).
    Go(Token),
    /// Not before `Duration` from now (rate limit).
    WaitFor(Duration),
    /// Not until a connection in flight finishes its handshake.
    WaitForSlot,
    /// Nothing is queued.
    Idle,
}

/// The admission queue, token bucket and in-flight count.
#[derive(Debug)]
pub struct Admission {
    config: AdmissionConfig,
    /// Sessions waiting to connect, first come first served.
    queue: VecDeque<Token>,
    /// Sessions whose reconnection is a protocol step (the restart WhatsApp asks for after a
    /// pairing), not a new attempt: admitted before `queue` and not charged to the bucket.
    priority: VecDeque<Token>,
    /// Connections admitted whose handshake has not finished.
    in_flight: usize,
    /// Attempts that may start right now (the token bucket), at most `burst`.
    tokens: f64,
    /// When `tokens` was last topped up.
    refilled_at: Instant,
}

impl Admission {
    /// An empty admission controller with a full bucket.
    pub fn new(config: AdmissionConfig, now: Instant) -> Self {
        let tokens = f64::from(config.burst);
        Self {
            config,
            queue: VecDeque::new(),
            priority: VecDeque::new(),
            in_flight: 0,
            tokens,
            refilled_at: now,
        }
    }

    /// Replaces the limits (reload); the queue and in-flight count are kept.
    pub fn reconfigure(&mut self, config: AdmissionConfig) {
        self.tokens = self.tokens.min(f64::from(config.burst));
        self.config = config;
    }

    /// Puts a session at the back of the queue.
    pub fn enqueue(&mut self, token: Token) {
        self.queue.push_back(token);
    }

    /// Queues a session ahead of everyone, exempt from the rate limit (still within
    /// `max_in_flight`): for the immediate restart after a pairing.
    pub fn enqueue_priority(&mut self, token: Token) {
        self.priority.push_back(token);
    }

    /// Takes a session out of the queue (it was stopped or deleted while waiting).
    pub fn dequeue(&mut self, token: &Token) {
        self.queue.retain(|t| t != token);
        self.priority.retain(|t| t != token);
    }

    /// Frees one in-flight slot (the handshake finished, or the connection ended first).
    pub fn release(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
    }

    /// Connections admitted and still in their handshake.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Sessions waiting in the queue.
    pub fn queued(&self) -> usize {
        self.queue.len() + self.priority.len()
    }

    /// Admits the next queued session if the limits allow it: a priority session needs only
    /// an in-flight slot; the others also need a token from the bucket.
    pub fn next(&mut self, now: Instant) -> Admit {
        if self.queue.is_empty() && self.priority.is_empty() {
            return Admit::Idle;
        }
        if self.in_flight >= self.config.max_in_flight {
            return Admit::WaitForSlot;
        }
        if let Some(token) = self.priority.pop_front() {
            self.in_flight += 1;
            return Admit::Go(token);
        }
        self.refill(now);
        if self.tokens < 1.0 {
            let missing = 1.0 - self.tokens;
            return Admit::WaitFor(Duration::from_secs_f64(missing / self.config.per_second));
        }
        match self.queue.pop_front() {
            Some(token) => {
                self.tokens -= 1.0;
                self.in_flight += 1;
                Admit::Go(token)
            }
            None => Admit::Idle,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now
            .saturating_duration_since(self.refilled_at)
            .as_secs_f64();
        self.tokens =
            (self.tokens + elapsed * self.config.per_second).min(f64::from(self.config.burst));
        self.refilled_at = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Token {
        Token::parse(s).unwrap()
    }

    fn admission(max_in_flight: usize, per_second: f64, burst: u32) -> (Admission, Instant) {
        let now = Instant::now();
        let config = AdmissionConfig {
            max_in_flight,
            per_second,
            burst,
        };
        (Admission::new(config, now), now)
    }

    #[test]
    fn burst_then_rate_limited() {
        let (mut a, now) = admission(100, 5.0, 2);
        for name in ["a", "b", "c"] {
            a.enqueue(t(name));
        }
        assert_eq!(a.next(now), Admit::Go(t("a")));
        assert_eq!(a.next(now), Admit::Go(t("b")));
        assert_eq!(a.next(now), Admit::WaitFor(Duration::from_millis(200)));
        assert_eq!(a.next(now + Duration::from_millis(200)), Admit::Go(t("c")));
        assert_eq!(a.next(now + Duration::from_secs(9)), Admit::Idle);
        assert_eq!(a.in_flight(), 3);
    }

    #[test]
    fn in_flight_limit_waits_for_a_release() {
        let (mut a, now) = admission(1, 1000.0, 10);
        a.enqueue(t("a"));
        a.enqueue(t("b"));
        assert_eq!(a.next(now), Admit::Go(t("a")));
        assert_eq!(a.next(now), Admit::WaitForSlot);
        a.release();
        assert_eq!(a.next(now), Admit::Go(t("b")));
    }

    #[test]
    fn priority_sessions_go_first_and_free_of_the_rate_limit() {
        let (mut a, now) = admission(2, 0.01, 1);
        a.enqueue(t("a"));
        a.enqueue(t("b"));
        assert_eq!(a.next(now), Admit::Go(t("a"))); // the bucket's one token
        a.enqueue_priority(t("paired"));
        assert_eq!(a.queued(), 2);
        assert_eq!(a.next(now), Admit::Go(t("paired")), "no token needed");
        assert_eq!(a.next(now), Admit::WaitForSlot, "but a slot is");
        a.release();
        assert_eq!(a.next(now), Admit::WaitFor(Duration::from_secs(100)));
        a.enqueue_priority(t("p2"));
        a.dequeue(&t("p2"));
        assert_eq!(a.queued(), 1);
        assert_eq!(a.next(now + Duration::from_secs(100)), Admit::Go(t("b")));
    }

    #[test]
    fn dequeued_sessions_are_skipped() {
        let (mut a, now) = admission(10, 10.0, 10);
        a.enqueue(t("a"));
        a.enqueue(t("b"));
        a.dequeue(&t("a"));
        assert_eq!(a.queued(), 1);
        assert_eq!(a.next(now), Admit::Go(t("b")));
    }

    #[test]
    fn bucket_never_exceeds_burst() {
        let (mut a, now) = admission(100, 1.0, 2);
        for i in 0..4 {
            a.enqueue(t(&format!("s{i}")));
        }
        let later = now + Duration::from_secs(3600);
        assert!(matches!(a.next(later), Admit::Go(_)));
        assert!(matches!(a.next(later), Admit::Go(_)));
        assert_eq!(a.next(later), Admit::WaitFor(Duration::from_secs(1)));
    }

    #[test]
    fn validation() {
        assert!(AdmissionConfig::default().validate().is_ok());
        assert!(
            AdmissionConfig {
                max_in_flight: 0,
                ..Default::default()
            }
            .validate()
            .is_err()
        );
        assert!(
            AdmissionConfig {
                per_second: 0.0,
                ..Default::default()
            }
            .validate()
            .is_err()
        );
    }
}
