//! Carries out what the session machine ([`crate::machine`]) decides: the supervisor gathers
//! the facts, asks [`machine::next`], and does what it says, in order. Nothing here decides
//! what follows what.

use std::time::SystemTime;

use ractor::{Actor, ActorRef};
use tokio::time::Instant;

use crate::error::Error;
use crate::events::SessionEvent;
use crate::lifecycle::{DisconnectReason, LifecycleEvent};
use crate::link::OpenOptions;
use crate::machine::{self, Context, Effect, Event};
use crate::session::{SessionActor, SessionArgs};
use crate::state::QrCode;
use crate::token::Token;

use super::SupervisorState;
use super::deadlines::Due;
use super::entry::Live;
use super::messages::{SupervisorMsg, Waiter};
use super::texts::{log, reason_text, refusal_error};

/// The reason a session actor is stopped with when the supervisor closes it on purpose.
pub(super) const CLOSED_BY_SUPERVISOR: &str = "closed by the supervisor";

/// What an event brings besides itself: the caller to answer, and the data the effects use.
#[derive(Default)]
pub(super) struct Carry {
    /// The caller of an operation.
    pub reply: Option<Waiter>,
    /// The options of a `start`.
    pub options: Option<OpenOptions>,
    /// What the connection reported (for `RecordProgress`).
    pub progress: Option<LifecycleEvent>,
    /// The cleanup's error.
    pub error: Option<Error>,
}

impl Carry {
    /// An operation's caller.
    pub fn reply(reply: Waiter) -> Self {
        Self {
            reply: Some(reply),
            ..Self::default()
        }
    }
}

impl SupervisorState {
    /// The facts outside the session that the machine needs. `counted`: whether the session
    /// itself is among the active ones (queued or live): capacity is about room for it, so
    /// its own place does not count against it.
    pub(super) fn context(&self, counted: bool) -> Context {
        let others = self.active().saturating_sub(usize::from(counted));
        Context {
            now: Instant::now(),
            full: self.max_active.filter(|limit| others >= *limit),
            cooldown: self.policy.restart_cooldown,
            capacity_wait: self.policy.backoff_cap,
            retry_failed_after: self.policy.retry_failed_after,
        }
    }

    /// What `event` would do to `token` now, without doing it.
    pub(super) fn preview(&self, token: &Token, event: Event) -> Option<machine::Step> {
        let entry = self.sessions.get(token)?;
        let counted = match &entry.phase {
            machine::Phase::Queued => true,
            machine::Phase::Live { .. } => entry
                .live
                .as_ref()
                .is_some_and(|live| self.by_actor.contains_key(&live.actor.get_id())),
            machine::Phase::Idle | machine::Phase::Cleaning { .. } => false,
        };
        Some(machine::next(
            &entry.phase,
            &entry.view(),
            &self.context(counted),
            event,
        ))
    }

    /// Delivers `event` to `token`'s machine and carries out the step: the effects in order,
    /// then the new view published, then the answers, then admission.
    pub(super) async fn apply(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        token: &Token,
        event: Event,
        mut carry: Carry,
    ) -> machine::Step {
        let Some(step) = self.preview(token, event) else {
            if let Some(reply) = carry.reply.take() {
                reply.fail(&Error::NotFound(token.clone()));
            }
            return machine::Step {
                phase: machine::Phase::Idle,
                effects: Vec::new(),
            };
        };
        self.sessions.get_mut(token).expect("previewed above").phase = step.phase.clone();
        let mut changed = false;
        let mut answers = Vec::new();
        let mut forget = false;
        let mut release = false;
        let mut queued = false;
        for effect in &step.effects {
            match effect {
                effect if effect.is_reply() || *effect == Effect::Wait => {
                    answers.push(effect.clone())
                }
                Effect::Forget => forget = true,
                Effect::Release => release = true,
                Effect::Log(note) => log(token, note),
                Effect::DeleteCredentials => {
                    // The record as the machine left it (no account) is queued before the
                    // deletion's flush.
                    if std::mem::take(&mut changed) {
                        self.publish(token);
                    }
                    self.begin_credentials_deletion(myself, token);
                }
                effect => {
                    queued |= matches!(effect, Effect::Enqueue { .. });
                    changed |= self.carry_out(myself, token, effect, &mut carry).await;
                }
            }
        }
        if changed {
            self.publish(token);
        }
        for answer in answers {
            self.answer_with(token, &answer, &mut carry);
        }
        if forget {
            self.removed(token);
        }
        if release {
            self.released(token);
        }
        if queued {
            self.pump(myself).await;
        }
        step
    }

    /// Carries out one effect; returns whether the session's view changed.
    async fn carry_out(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        token: &Token,
        effect: &Effect,
        carry: &mut Carry,
    ) -> bool {
        let now = Instant::now();
        let Some(entry) = self.sessions.get_mut(token) else {
            return false;
        };
        match effect {
            Effect::SetDesired(desired) => entry.record.desired = *desired,
            Effect::SetState(state, reason) => {
                let reason = reason_text(reason, entry.record.reason.as_deref(), carry);
                entry.set_state(*state, reason, now);
            }
            Effect::SetReason(reason) => {
                entry.record.reason = reason_text(reason, entry.record.reason.as_deref(), carry);
            }
            Effect::ResetAttempts => entry.record.attempts = 0,
            Effect::SetAttempts(attempts) => entry.record.attempts = *attempts,
            Effect::CountRestart => entry.record.counters.restarts += 1,
            Effect::BanFor(left) => entry.record.banned_until = Some(SystemTime::now() + *left),
            Effect::ClearBan => entry.record.banned_until = None,
            Effect::ClearAccount => {
                entry.record.jid = None;
                entry.record.account_name = None;
            }
            Effect::UseOptions => entry.options = carry.options.take().unwrap_or_default(),
            Effect::DefaultOptions => entry.options = OpenOptions::default(),
            Effect::MarkUnpark => entry.last_unpark = Some(now),
            Effect::Enqueue { priority: true } => self.admission.enqueue_priority(token.clone()),
            Effect::Enqueue { priority: false } => self.admission.enqueue(token.clone()),
            Effect::Dequeue => self.admission.dequeue(token),
            Effect::Spawn => self.spawn_session(myself, token).await,
            Effect::Close => {
                if let Some(live) = &entry.live {
                    live.actor.stop(Some(CLOSED_BY_SUPERVISOR.into()));
                }
                return false;
            }
            Effect::ReleaseAdmission => self.admission.release(),
            Effect::RecordProgress => {
                if let Some(progress) = carry.progress.take() {
                    self.record_progress(token, progress);
                }
            }
            Effect::StartStableTimer => {
                let generation = entry.generation;
                let due = Due::Stable {
                    token: token.clone(),
                    generation,
                };
                let id = self.add_deadline(myself, self.policy.stable_after, due);
                if let Some(entry) = self.sessions.get_mut(token)
                    && let Some(replaced) = entry.stable_timer.replace(id)
                {
                    self.deadlines.cancel(replaced);
                }
            }
            Effect::ConnectionGone => {
                if let Some(live) = entry.live.take() {
                    self.by_actor.remove(&live.actor.get_id());
                }
                let entry = self.sessions.get_mut(token).expect("still there");
                entry.connected_at = None;
                entry.qr = None;
                entry.pair_code = None;
                if let Some(key) = entry.cancel_stable() {
                    self.deadlines.cancel(key);
                }
                entry.record.counters.disconnects += 1;
            }
            Effect::ScheduleRetry(delay) => self.schedule_retry(myself, token, *delay),
            Effect::CancelRetry => {
                let Some(key) = entry.cancel_retry() else {
                    return false;
                };
                self.deadlines.cancel(key);
                return true;
            }
            Effect::DeleteEverything => self.begin_deletion(myself, token),
            Effect::Forget
            | Effect::Release
            | Effect::DeleteCredentials
            | Effect::Log(_)
            | Effect::Reply
            | Effect::Refuse(_)
            | Effect::Wait
            | Effect::AnswerWaiters
            | Effect::AnswerInfoWaiters
            | Effect::FailInfoWaiters
            | Effect::FailWaiters => return false,
        }
        true
    }

    /// Answers the caller, or those waiting, as `effect` says.
    fn answer_with(&mut self, token: &Token, effect: &Effect, carry: &mut Carry) {
        let Some(entry) = self.sessions.get_mut(token) else {
            return;
        };
        let cleanup_error = || {
            carry
                .error
                .clone()
                .unwrap_or_else(|| Error::NotFound(token.clone()))
        };
        match effect {
            Effect::Reply => {
                if let Some(reply) = carry.reply.take() {
                    reply.answer(entry.info());
                }
            }
            Effect::Refuse(refusal) => {
                let error = refusal_error(token, entry.state(), entry.record.banned_until, refusal);
                if let Some(reply) = carry.reply.take() {
                    reply.fail(&error);
                }
            }
            Effect::Wait => {
                if let Some(reply) = carry.reply.take() {
                    entry.waiters.push(reply);
                }
            }
            Effect::AnswerWaiters => entry.answer_waiters(),
            Effect::AnswerInfoWaiters => entry.answer_info_waiters(),
            Effect::FailInfoWaiters => entry.fail_info_waiters(&cleanup_error()),
            Effect::FailWaiters => entry.fail_waiters(&cleanup_error()),
            _ => {}
        }
    }

    /// Keeps what the live connection reported.
    fn record_progress(&mut self, token: &Token, progress: LifecycleEvent) {
        let now = Instant::now();
        let Some(entry) = self.sessions.get_mut(token) else {
            return;
        };
        match progress {
            LifecycleEvent::QrIssued { code, expires_in } => {
                entry.qr = Some(QrCode {
                    code: code.clone(),
                    expires_at: SystemTime::now() + expires_in,
                });
                tracing::info!(token = %token, expires_in = ?expires_in, "QR code issued; waiting for a scan");
                self.events.send(SessionEvent::Qr {
                    token: token.clone(),
                    code,
                    expires_in,
                });
            }
            LifecycleEvent::PairCode { code } => {
                entry.pair_code = Some(code.clone());
                tracing::info!(token = %token, "pairing code issued; waiting for it to be entered on the phone");
                self.events.send(SessionEvent::PairCode {
                    token: token.clone(),
                    code,
                });
            }
            LifecycleEvent::Paired { jid } => {
                entry.qr = None;
                entry.pair_code = None;
                entry.record.jid = Some(jid);
                tracing::info!(token = %token, "paired; reconnecting to log in");
            }
            LifecycleEvent::Connected { jid, name } => {
                entry.connected_at = Some(now);
                entry.qr = None;
                entry.pair_code = None;
                entry.record.jid = Some(jid);
                if name.is_some() {
                    entry.record.account_name = name;
                }
                entry.record.banned_until = None;
                entry.record.counters.connects += 1;
                tracing::info!(token = %token, attempts = entry.record.attempts, "Session connected successfully");
            }
            LifecycleEvent::Disconnected { .. } => {}
        }
    }

    /// Spawns the session actor of a new connection of `token`.
    async fn spawn_session(&mut self, myself: &ActorRef<SupervisorMsg>, token: &Token) {
        let now = Instant::now();
        let entry = self.sessions.get_mut(token).expect("caller checked");
        entry.generation += 1;
        entry.last_start = Some(now);
        let generation = entry.generation;
        let args = SessionArgs {
            token: token.clone(),
            generation,
            link: self.link.clone(),
            supervisor: myself.clone(),
            slot: entry.slot.clone(),
            options: OpenOptions {
                proxy: entry.record.proxy.clone(),
                ..entry.options.clone()
            },
            close_timeout: self.close_timeout,
            outbox: self.outbox.clone(),
        };
        match Actor::spawn_linked(None, SessionActor, args, myself.get_cell()).await {
            Ok((actor, _)) => {
                self.by_actor.insert(actor.get_id(), token.clone());
                let entry = self.sessions.get_mut(token).expect("still there");
                entry.live = Some(Live { actor, generation });
            }
            Err(e) => {
                // No supervision event comes for a failed spawn: report it to ourselves.
                let reason = DisconnectReason::SessionCrashed(format!("could not start: {e}"));
                let _ = myself.cast(SupervisorMsg::ConnectionEnded {
                    token: token.clone(),
                    generation,
                    reason,
                });
            }
        }
    }
}

impl Waiter {
    /// Answers with the session's view (or `()`).
    pub(super) fn answer(self, info: crate::state::SessionInfo) {
        match self {
            Waiter::Info(reply) => {
                let _ = reply.send(Ok(info));
            }
            Waiter::Unit(reply) => {
                let _ = reply.send(Ok(()));
            }
        }
    }

    /// Answers with an error.
    pub(super) fn fail(self, error: &Error) {
        match self {
            Waiter::Info(reply) => {
                let _ = reply.send(Err(error.clone()));
            }
            Waiter::Unit(reply) => {
                let _ = reply.send(Err(error.clone()));
            }
        }
    }
}
