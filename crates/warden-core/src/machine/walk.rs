//! Random walks through the machine: a model of the world (the session actor, the admission
//! queue, the timer, the cleanup task) delivers random operations and whatever the world can
//! deliver next, carries the effects out, and checks after every step that
//! - there is never more than one live connection, and nothing is deleted while one is live;
//! - nothing connects while the operator wants the session stopped;
//! - the phase matches the world;
//! - no session is left with no way forward: at rest, it is parked (an operator's `start`
//!   takes it out), stopped, or has its retry scheduled; and a `start` is never refused for
//!   ever;
//! - once the world has delivered everything, nobody is left waiting for an answer;
//! - a session relinquished (its lease lost) is forgotten only once no connection is live.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::lifecycle::DisconnectReason;
use crate::policy::{self, PolicyConfig};
use tokio::time::Instant;

const WALKS: u64 = 10_000;
const STEPS: usize = 80;

/// The world around one session.
struct World {
    phase: Phase,
    view: View,
    now: Instant,
    /// Session actors alive (never more than one).
    live: u32,
    /// The live actor was asked to close.
    closing: bool,
    /// In the admission queue.
    queued: bool,
    /// Holds an admission slot.
    slot: bool,
    /// The stability timer runs.
    stable_timer: bool,
    /// A cleanup task runs.
    cleanup: Option<CleanupKind>,
    /// Callers waiting for a session view, and for a delete.
    info_waiters: usize,
    delete_waiters: usize,
    /// The last operation was a delete (its `Wait` waits for the delete).
    deleting_op: bool,
    /// The event being delivered is admission's.
    admitting: bool,
    forgotten: bool,
    full: Option<usize>,
    retry_failed_after: Option<Duration>,
    trace: Vec<String>,
}

impl World {
    /// A session as a daemon start finds it: any state, either wish, maybe a ban, maybe an
    /// account.
    fn new(rng: &mut StdRng) -> Self {
        let state = SessionState::ALL[rng.random_range(0..SessionState::ALL.len())];
        let desired = if rng.random_bool(0.5) {
            Desired::Running
        } else {
            Desired::Stopped
        };
        let view = View {
            attempts: rng.random_range(0..4),
            paired: rng.random_bool(0.5),
            ban_left: (state == SessionState::Banned && rng.random_bool(0.8))
                .then(|| Duration::from_secs(rng.random_range(0..3_600))),
            ..View::new(state, desired)
        };
        Self {
            phase: Phase::Idle,
            view,
            now: Instant::now(),
            live: 0,
            closing: false,
            queued: false,
            slot: false,
            stable_timer: false,
            cleanup: None,
            info_waiters: 0,
            delete_waiters: 0,
            deleting_op: false,
            admitting: false,
            forgotten: false,
            full: None,
            retry_failed_after: rng.random_bool(0.5).then_some(Duration::from_secs(900)),
            trace: Vec::new(),
        }
    }

    fn context(&self) -> Context {
        Context {
            now: self.now,
            full: self.full,
            cooldown: Duration::from_secs(30),
            capacity_wait: Duration::from_secs(60),
            retry_failed_after: self.retry_failed_after,
        }
    }

    fn fail(&self, what: &str) -> ! {
        panic!(
            "{what}\nphase {:?}, view {:?}\nwalk:\n  {}",
            self.phase,
            self.view,
            self.trace.join("\n  ")
        )
    }

    fn check(&self, ok: bool, what: &str) {
        if !ok {
            self.fail(what);
        }
    }

    /// Delivers `event` and carries out what the machine says.
    fn deliver(&mut self, event: Event) {
        self.trace.push(format!("{event:?}"));
        self.deleting_op = event == Event::Delete;
        self.admitting = event == Event::Admitted;
        let operation = event.is_operation();
        // What the world did to bring the event.
        match &event {
            Event::Admitted => {
                // Admission takes it out of the queue and hands it a slot.
                self.queued = false;
                self.slot = true;
            }
            Event::Ended { .. } => {
                self.live = 0;
                self.closing = false;
            }
            Event::CleanupDone { .. } => self.cleanup = None,
            Event::RetryDue => self.view.retry_scheduled = false,
            _ => {}
        }
        let step = next(&self.phase, &self.view, &self.context(), event);
        self.trace
            .push(format!("  -> {:?} {:?}", step.phase, step.effects));
        if operation {
            let answers = step
                .effects
                .iter()
                .filter(|e| matches!(e, Effect::Reply | Effect::Refuse(_) | Effect::Wait))
                .count();
            self.check(
                answers == 1,
                &format!("an operation answered {answers} times: {:?}", step.effects),
            );
        }
        self.phase = step.phase;
        for effect in step.effects {
            self.carry_out(effect);
        }
        self.check_phase();
    }

    fn carry_out(&mut self, effect: Effect) {
        match effect {
            Effect::SetDesired(desired) => self.view.desired = desired,
            Effect::SetState(state, _) => self.view.state = state,
            Effect::SetReason(_) | Effect::Log(_) | Effect::CountRestart => {}
            Effect::ResetAttempts => self.view.attempts = 0,
            Effect::SetAttempts(n) => self.view.attempts = n,
            Effect::BanFor(left) => self.view.ban_left = Some(left),
            Effect::ClearBan => self.view.ban_left = None,
            Effect::ClearAccount => self.view.paired = false,
            Effect::UseOptions | Effect::DefaultOptions => {}
            Effect::MarkUnpark => self.view.last_unpark = Some(self.now),
            Effect::Enqueue { .. } => {
                self.check(
                    !self.queued && self.live == 0,
                    "queued twice, or while live",
                );
                self.check(
                    self.view.desired == Desired::Running,
                    "queued a session the operator wants stopped",
                );
                self.queued = true;
            }
            Effect::Dequeue => {
                self.check(self.queued, "dequeued a session that was not queued");
                self.queued = false;
            }
            Effect::Spawn => {
                self.check(self.live == 0, "two live connections");
                self.check(self.cleanup.is_none(), "connected while a cleanup runs");
                self.check(
                    self.view.desired == Desired::Running,
                    "connected a session the operator wants stopped",
                );
                self.check(self.admitting, "spawned without admission");
                self.check(self.slot, "spawned without an admission slot");
                self.live = 1;
                self.view.last_start = Some(self.now);
            }
            Effect::Close => {
                self.check(self.live == 1, "closed a connection that is not live");
                self.closing = true;
            }
            Effect::ReleaseAdmission => {
                self.check(self.slot, "released an admission slot it did not hold");
                self.slot = false;
            }
            Effect::RecordProgress => match self.view.state {
                // As the supervisor records them: the account on pairing and login, and a
                // login ends any ban.
                SessionState::Pairing => self.view.paired = true,
                SessionState::Connected => {
                    self.view.paired = true;
                    self.view.ban_left = None;
                }
                _ => {}
            },
            Effect::StartStableTimer => self.stable_timer = true,
            Effect::ConnectionGone => self.stable_timer = false,
            Effect::ScheduleRetry(_) => self.view.retry_scheduled = true,
            Effect::CancelRetry => self.view.retry_scheduled = false,
            Effect::DeleteCredentials | Effect::DeleteEverything => {
                self.check(self.live == 0, "deleted while a connection is live");
                self.check(self.cleanup.is_none(), "two cleanups at once");
                self.cleanup = Some(if effect == Effect::DeleteCredentials {
                    CleanupKind::Credentials
                } else {
                    CleanupKind::Everything
                });
            }
            Effect::Forget => self.forgotten = true,
            Effect::Release => {
                self.check(self.live == 0, "released with a connection live");
                self.check(!self.queued, "released while queued");
                // Forgotten here; whoever waited is told another node holds it.
                self.forgotten = true;
                self.info_waiters = 0;
                self.delete_waiters = 0;
            }
            Effect::Reply | Effect::Refuse(_) => {}
            Effect::Wait if self.deleting_op => self.delete_waiters += 1,
            Effect::Wait => self.info_waiters += 1,
            Effect::AnswerWaiters | Effect::FailWaiters => {
                self.info_waiters = 0;
                self.delete_waiters = 0;
            }
            Effect::AnswerInfoWaiters | Effect::FailInfoWaiters => self.info_waiters = 0,
        }
    }

    fn check_phase(&self) {
        let fits = match &self.phase {
            Phase::Idle => self.live == 0 && !self.queued && self.cleanup.is_none(),
            Phase::Queued => self.live == 0 && self.queued && self.cleanup.is_none(),
            Phase::Live { admitted, closing } => {
                self.live == 1
                    && !self.queued
                    && self.cleanup.is_none()
                    && *admitted == self.slot
                    && closing.is_some() == self.closing
            }
            Phase::Cleaning { kind, .. } => {
                self.live == 0 && !self.queued && self.cleanup == Some(*kind)
            }
        };
        self.check(fits || self.forgotten, "the phase does not match the world");
        if self.phase == Phase::Idle && !self.forgotten {
            let state = self.view.state;
            self.check(
                !state.is_live() && state != SessionState::Queued,
                "at rest in a live state",
            );
            if state == SessionState::BackingOff {
                self.check(self.view.retry_scheduled, "backing off with no retry");
            }
            if self.view.desired == Desired::Running && state == SessionState::Banned {
                self.check(
                    self.view.retry_scheduled,
                    "banned, wanted running, and no retry at the ban's end",
                );
            }
            self.check_start_is_a_way_forward();
        }
    }

    /// Once the ban and the cooldown have passed, a `start` connects (or keeps a scheduled
    /// retry), from any session at rest.
    fn check_start_is_a_way_forward(&self) {
        let view = View {
            ban_left: self.view.ban_left.map(|_| Duration::ZERO),
            ..self.view.clone()
        };
        let ctx = Context {
            now: self.now + Duration::from_secs(31),
            full: None,
            ..self.context()
        };
        let step = next(&self.phase, &view, &ctx, Event::Start);
        let forward = match &step.phase {
            Phase::Queued => true,
            Phase::Cleaning { then, .. } => *then == Then::Connect,
            Phase::Idle => view.retry_scheduled && step.effects == vec![Effect::Reply],
            Phase::Live { .. } => false,
        };
        self.check(forward, &format!("a start does not go forward: {step:?}"));
    }

    /// What the world can deliver now (besides operations).
    fn deliverable(&self, rng: &mut StdRng, draining: bool) -> Vec<Event> {
        let mut events = Vec::new();
        if self.queued {
            events.push(Event::Admitted);
        }
        if self.live == 1 && (!draining || self.closing) {
            let reasons = [
                DisconnectReason::ConnectionLost,
                DisconnectReason::RestartRequired,
                DisconnectReason::LoggedOut,
                DisconnectReason::Replaced,
                DisconnectReason::QrExpired,
                DisconnectReason::ClientOutdated,
                DisconnectReason::SessionCrashed("boom".into()),
                DisconnectReason::TemporarilyBanned {
                    expires_in: Duration::from_secs(600),
                    code: None,
                },
            ];
            let reason = reasons[rng.random_range(0..reasons.len())].clone();
            let connected_for = rng
                .random_bool(0.3)
                .then(|| Duration::from_secs(rng.random_range(0..1_200)));
            let policy = policy::decide(
                &PolicyConfig::default(),
                &reason,
                self.view.attempts,
                connected_for,
                rng.random(),
            );
            events.push(Event::Ended { reason, policy });
        }
        if self.live == 1 && !draining {
            let progress = [
                Progress::Qr,
                Progress::PairCode,
                Progress::Paired,
                Progress::Connected,
            ];
            events.push(Event::Progress(progress[rng.random_range(0..4)]));
        }
        if self.stable_timer && !draining {
            events.push(Event::Stable);
        }
        if self.view.retry_scheduled && !draining {
            events.push(Event::RetryDue);
        }
        if self.cleanup.is_some() {
            events.push(Event::CleanupDone {
                ok: rng.random_bool(0.8),
            });
        }
        events
    }

    fn operation(rng: &mut StdRng) -> Event {
        match rng.random_range(0..8) {
            0 | 1 => Event::Start,
            2 => Event::Stop {
                reason: "stopped by request".into(),
            },
            3 => Event::Restart {
                force: rng.random_bool(0.5),
            },
            4 => Event::RefreshQr,
            5 => Event::Logout,
            6 if rng.random_bool(0.3) => Event::Delete,
            _ => Event::Reap {
                state: if rng.random_bool(0.5) {
                    SessionState::Failed
                } else {
                    SessionState::QrExpired
                },
                reason: "reaped".into(),
            },
        }
    }
}

fn walk(seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut world = World::new(&mut rng);
    world.deliver(Event::Restore);
    for _ in 0..STEPS {
        if world.forgotten {
            return;
        }
        world.now += Duration::from_secs(rng.random_range(0..20));
        world.full = rng.random_bool(0.1).then_some(10);
        if rng.random_bool(0.05) {
            // Time passes beyond the ban.
            world.view.ban_left = world.view.ban_left.map(|_| Duration::ZERO);
        }
        let mut choices = world.deliverable(&mut rng, false);
        if choices.is_empty() || rng.random_bool(0.5) {
            choices.push(World::operation(&mut rng));
        }
        if rng.random_bool(0.02) {
            // In a cluster, the lease moves to another node.
            choices.push(Event::Relinquish);
        }
        let event = choices.swap_remove(rng.random_range(0..choices.len()));
        world.deliver(event);
    }
    // Drain: the world delivers everything pending (closing connections end, cleanups end),
    // then nobody may be left waiting.
    world.full = None;
    for _ in 0..20 {
        if world.forgotten {
            return;
        }
        let choices = world.deliverable(&mut rng, true);
        let Some(event) = choices.into_iter().next() else {
            break;
        };
        world.deliver(event);
    }
    if !world.forgotten {
        world.check(
            world.info_waiters == 0 && world.delete_waiters == 0,
            "a caller is left waiting once everything was delivered",
        );
    }
}

#[test]
fn random_walks_keep_every_promise() {
    for seed in 0..WALKS {
        walk(seed);
    }
}
