//! The supervisor's record of one session: persisted fields plus what only lives in memory.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ractor::ActorRef;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::error::Error;
use crate::link::OpenOptions;
use crate::machine::{Phase, View};
use crate::proxy::ProxyUrl;
use crate::session::SessionMsg;
use crate::state::{QrCode, SessionInfo, SessionState};
use crate::store::SessionRecord;
use crate::token::Token;

use super::deadlines::TimerKey;
use super::messages::{InfoReply, Waiter};

/// The live session actor of a token.
pub(crate) struct Live {
    pub actor: ActorRef<SessionMsg>,
    pub generation: u64,
}

/// Everything the supervisor knows about one session.
pub(crate) struct Entry {
    pub token: Token,
    /// The persisted part; `record.state` is the session's state.
    pub record: SessionRecord,
    /// The fingerprint of the record as last queued for writing (`None`: never written), to
    /// skip writes that change nothing.
    pub persisted: Option<u64>,
    /// When the current state began (monotonic, for the janitor).
    pub since: Instant,
    /// When the current state began (wall clock, for people).
    pub since_wall: SystemTime,
    /// The live session actor, if any. At most one, and a new one is only spawned once the
    /// previous one's termination has been handled.
    pub live: Option<Live>,
    /// Counts the connections of this token; the live one carries the latest.
    pub generation: u64,
    /// Where its connection is in its life; only [`machine::next`] changes it.
    pub phase: Phase,
    /// When the live connection logged in.
    pub connected_at: Option<Instant>,
    /// When the last connection was started (for the restart cooldown).
    pub last_start: Option<Instant>,
    /// When a `start` last took it out of a parked state (see `start_rule`).
    pub last_unpark: Option<Instant>,
    /// How the next connection should be opened.
    pub options: OpenOptions,
    /// The token's single connection slot, shared with its session actors.
    pub slot: Arc<Semaphore>,
    /// The pending retry, ban-expiry or quarantine deadline.
    pub retry_timer: Option<TimerKey>,
    /// When `retry_timer` fires (wall clock, for people).
    pub next_retry_at: Option<SystemTime>,
    /// The deadline at which the connection has been up for `stable_after`.
    pub stable_timer: Option<TimerKey>,
    /// The QR code on show.
    pub qr: Option<QrCode>,
    /// The pairing code on show.
    pub pair_code: Option<String>,
    /// Operations to answer once the connection has gone (or cleanup finished).
    pub waiters: Vec<Waiter>,
    /// This node no longer holds the session (it is being relinquished): nothing of it is
    /// written or announced any more.
    pub leaving: bool,
    /// Those who relinquished it, answered once it is gone here.
    pub relinquished_by: Vec<ractor::RpcReplyPort<Result<bool, Error>>>,
}

impl Entry {
    /// An entry for a record, in the record's state, with nothing live.
    pub fn new(token: Token, record: SessionRecord, now: Instant) -> Self {
        Self {
            token,
            persisted: Some(record.fingerprint()),
            record,
            since: now,
            since_wall: SystemTime::now(),
            live: None,
            generation: 0,
            phase: Phase::Idle,
            connected_at: None,
            last_start: None,
            last_unpark: None,
            options: OpenOptions::default(),
            slot: Arc::new(Semaphore::new(1)),
            retry_timer: None,
            next_retry_at: None,
            stable_timer: None,
            qr: None,
            pair_code: None,
            waiters: Vec::new(),
            leaving: false,
            relinquished_by: Vec::new(),
        }
    }

    /// The state the session is in.
    pub fn state(&self) -> SessionState {
        self.record.state
    }

    /// What the state machine needs to know of it.
    pub fn view(&self) -> View {
        View {
            state: self.record.state,
            desired: self.record.desired,
            attempts: self.record.attempts,
            paired: self.record.jid.is_some(),
            ban_left: self.record.banned_until.map(|until| {
                until
                    .duration_since(SystemTime::now())
                    .unwrap_or(Duration::ZERO)
            }),
            retry_scheduled: self.retry_timer.is_some(),
            last_start: self.last_start,
            last_unpark: self.last_unpark,
        }
    }

    /// Whether the session is being deleted (or is about to be): it is not found any more,
    /// and nothing more is written for it.
    pub fn deleting(&self) -> bool {
        self.phase.deleting()
    }

    /// Moves to `state` with `reason`; the clock of the state restarts only on a real change.
    pub fn set_state(&mut self, state: SessionState, reason: Option<String>, now: Instant) {
        if self.record.state != state {
            self.since = now;
            self.since_wall = SystemTime::now();
        }
        self.record.state = state;
        self.record.reason = reason;
    }

    /// The public view of this session.
    pub fn info(&self) -> SessionInfo {
        SessionInfo {
            token: self.token.clone(),
            name: self.record.name.clone(),
            state: self.record.state,
            reason: self.record.reason.clone(),
            desired: self.record.desired,
            attempts: self.record.attempts,
            jid: self.record.jid.clone(),
            account_name: self.record.account_name.clone(),
            created_at: self.record.created_at,
            state_since: self.since_wall,
            next_retry_at: self.next_retry_at,
            banned_until: self.record.banned_until,
            qr: self.qr.clone(),
            pair_code: self.pair_code.clone(),
            counters: self.record.counters,
            proxy: self.record.proxy.as_ref().map(ProxyUrl::masked),
            last_disconnect: self.record.last_disconnect.clone(),
        }
    }

    /// Cancels the retry timer; returns its deadline, for the caller to take out of the queue.
    #[must_use = "the deadline must leave the queue too (Deadlines::cancel)"]
    pub fn cancel_retry(&mut self) -> Option<TimerKey> {
        self.next_retry_at = None;
        self.retry_timer.take()
    }

    /// Cancels the stability timer; returns its deadline, for the caller to take out of the
    /// queue.
    #[must_use = "the deadline must leave the queue too (Deadlines::cancel)"]
    pub fn cancel_stable(&mut self) -> Option<TimerKey> {
        self.stable_timer.take()
    }

    /// How long the live connection has been logged in.
    pub fn connected_for(&self, now: Instant) -> Option<Duration> {
        self.connected_at
            .map(|at| now.saturating_duration_since(at))
    }

    /// Answers everyone waiting with the current view (or `()`).
    pub fn answer_waiters(&mut self) {
        let info = self.info();
        for waiter in self.waiters.drain(..) {
            waiter.answer(info.clone());
        }
    }

    /// Answers the operations waiting for a session view (not those waiting for a deletion).
    pub fn answer_info_waiters(&mut self) {
        let info = self.info();
        for reply in self.take_info_waiters() {
            let _ = reply.send(Ok(info.clone()));
        }
    }

    /// Answers the operations waiting for a session view with an error; those waiting for a
    /// deletion keep waiting for it.
    pub fn fail_info_waiters(&mut self, error: &Error) {
        for reply in self.take_info_waiters() {
            let _ = reply.send(Err(error.clone()));
        }
    }

    /// Takes the waiters that want a session view out of the list; the others stay.
    fn take_info_waiters(&mut self) -> Vec<InfoReply> {
        let (info_waiters, rest): (Vec<_>, Vec<_>) = self
            .waiters
            .drain(..)
            .partition(|w| matches!(w, Waiter::Info(_)));
        self.waiters = rest;
        info_waiters
            .into_iter()
            .filter_map(|waiter| match waiter {
                Waiter::Info(reply) => Some(reply),
                Waiter::Unit(_) => None,
            })
            .collect()
    }

    /// Answers everyone waiting with an error.
    pub fn fail_waiters(&mut self, error: &Error) {
        for waiter in self.waiters.drain(..) {
            waiter.fail(error);
        }
    }
}
