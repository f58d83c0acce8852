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
use crate::machine::{self, CleanupKind, Context, Effect, Event, Note, Reason, Refusal};
use crate::outbox::{MessageEvent, Outbox};
use crate::session::{SessionActor, SessionArgs};
use crate::state::{QrCode, SessionState};
use crate::token::Token;

use super::SupervisorState;
use super::deadlines::Due;
use super::entry::{Live, Waiter};
use super::messages::SupervisorMsg;

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
        let others = self.active() - usize::from(counted).min(self.active());
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
        let mut queued = false;
        for effect in &step.effects {
            match effect {
                effect if effect.is_reply() || *effect == Effect::Wait => {
                    answers.push(effect.clone())
                }
                Effect::Forget => forget = true,
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
                    live.actor.stop(Some("closed by the supervisor".into()));
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
                if let Some(entry) = self.sessions.get_mut(token) {
                    entry.stable_timer = Some(id);
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
                entry.cancel_stable();
                entry.record.counters.disconnects += 1;
            }
            Effect::ScheduleRetry(delay) => self.schedule_retry(myself, token, *delay),
            Effect::CancelRetry => {
                let had = entry.retry_timer.is_some();
                entry.cancel_retry();
                return had;
            }
            Effect::DeleteEverything => self.begin_deletion(myself, token),
            Effect::Forget
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
                let _ = self.events.send(SessionEvent::Qr {
                    token: token.clone(),
                    code,
                    expires_in,
                });
            }
            LifecycleEvent::PairCode { code } => {
                entry.pair_code = Some(code.clone());
                tracing::info!(token = %token, "pairing code issued; waiting for it to be entered on the phone");
                let _ = self.events.send(SessionEvent::PairCode {
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

    /// Deletes the credentials off the loop, once no connection can hold them. The record
    /// without its account is committed first: a crash in between must never leave a record
    /// that names an account whose credentials are gone.
    fn begin_credentials_deletion(&mut self, myself: &ActorRef<SupervisorMsg>, token: &Token) {
        let Some(entry) = self.sessions.get(token) else {
            return;
        };
        let slot = entry.slot.clone();
        let link = self.link.clone();
        let store = self.store.clone();
        let outbox = self.outbox.clone();
        let me = myself.clone();
        let t = token.clone();
        tokio::spawn(async move {
            fail_queued(&outbox, &t, "the session was logged out").await;
            let result = match store.flush().await {
                Err(e) => Err(Error::from(e)),
                // The slot proves no connection of this token is alive while files go.
                Ok(()) => match slot.acquire_owned().await {
                    Ok(_permit) => {
                        link.delete_credentials(&t)
                            .await
                            .map_err(|source| Error::Link {
                                token: t.clone(),
                                source,
                            })
                    }
                    Err(_) => Ok(()),
                },
            };
            let _ = me.cast(SupervisorMsg::CleanupDone {
                token: t,
                kind: CleanupKind::Credentials,
                result,
            });
        });
    }

    /// Deletes the session off the loop, once no connection is alive: the link forgets it,
    /// its messages and its record go.
    fn begin_deletion(&mut self, myself: &ActorRef<SupervisorMsg>, token: &Token) {
        let Some(entry) = self.sessions.get(token) else {
            return;
        };
        let slot = entry.slot.clone();
        let link = self.link.clone();
        let store = self.store.clone();
        let outbox = self.outbox.clone();
        let me = myself.clone();
        let t = token.clone();
        tokio::spawn(async move {
            let result = match slot.acquire_owned().await {
                Ok(_permit) => {
                    // Subscribers hear that its queued messages will not go; the rows go
                    // with the session's record.
                    fail_queued(&outbox, &t, "the session was deleted").await;
                    outbox.forget(&t);
                    let forgotten = link.forget(&t).await.map_err(|source| Error::Link {
                        token: t.clone(),
                        source,
                    });
                    let removed = store.remove(&t).await.map_err(Error::from);
                    forgotten.and(removed)
                }
                Err(_) => Ok(()),
            };
            let _ = me.cast(SupervisorMsg::CleanupDone {
                token: t,
                kind: CleanupKind::Everything,
                result,
            });
        });
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

/// The text of a reason.
fn reason_text(reason: &Reason, current: Option<&str>, carry: &Carry) -> Option<String> {
    let error = || {
        carry
            .error
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default()
    };
    match reason {
        Reason::None => None,
        Reason::Text(text) => Some(text.clone()),
        Reason::Keep => current.map(str::to_string),
        Reason::Capacity(limit) => Some(format!("capacity: {limit} sessions are live")),
        Reason::CredentialsDeleted => {
            let why = current.unwrap_or("logged_out");
            Some(if why.ends_with("credentials deleted") {
                why.to_string()
            } else {
                format!("{why}; credentials deleted")
            })
        }
        Reason::CleanupFailed(CleanupKind::Credentials) => {
            Some(format!("credentials not deleted: {}", error()))
        }
        Reason::CleanupFailed(CleanupKind::Everything) => {
            Some(format!("delete failed: {}", error()))
        }
    }
}

/// The error a caller gets for a refusal.
pub(super) fn refusal_error(
    token: &Token,
    state: SessionState,
    banned_until: Option<SystemTime>,
    refusal: &Refusal,
) -> Error {
    let conflict = |state, message: String| Error::Conflict {
        token: token.clone(),
        state,
        message,
    };
    match refusal {
        Refusal::NotFound => Error::NotFound(token.clone()),
        Refusal::BeingDeleted => conflict(state, "it is being deleted".into()),
        Refusal::BannedStart { retry_scheduled } => {
            let until = banned_until
                .map(|t| humantime::format_rfc3339_seconds(t).to_string())
                .unwrap_or_default();
            // Only a session that is meant to run has its retry scheduled at the expiry.
            let then = if *retry_scheduled {
                "it will be retried then"
            } else {
                "start it again then"
            };
            conflict(
                SessionState::Banned,
                format!("it is banned until {until}; {then} (restart --force overrides)"),
            )
        }
        Refusal::BannedRestart => conflict(
            SessionState::Banned,
            "it is banned; pass --force to try anyway".into(),
        ),
        Refusal::Capacity(limit) => Error::Capacity { limit: *limit },
        Refusal::Cooldown(retry_after) => Error::Cooldown {
            token: token.clone(),
            retry_after: *retry_after,
        },
        Refusal::NoQrNow { paired } => {
            let message = if *paired {
                "it is linked to an account, so it shows no QR code; log out first to link another phone"
            } else {
                "a new QR code can be asked for while one is shown, or after it expired"
            };
            conflict(state, message.into())
        }
    }
}

/// Logs a decision of the machine (the legacy gateway's log lines included).
fn log(token: &Token, note: &Note) {
    match note {
        Note::ShouldReconnect(should) => {
            tracing::info!(token = %token, "Should reconnect: {should}")
        }
        Note::RetryIn { attempt, delay } => {
            tracing::info!(token = %token, attempt, delay = ?delay, "Reconnect attempts: {attempt}")
        }
        Note::Failed(why) => tracing::error!(token = %token, reason = %why, "session failed"),
        Note::LoggedOut => {
            tracing::warn!(token = %token, "session logged out; deleting its credentials")
        }
        Note::Replaced => {
            tracing::warn!(token = %token, "another client took over this account; not reconnecting")
        }
        Note::Banned(expires_in) => {
            tracing::warn!(token = %token, expires_in = ?expires_in, "session temporarily banned")
        }
        Note::BanExpired => tracing::info!(token = %token, "ban expired; reconnecting"),
        Note::QuarantineOver => {
            tracing::info!(token = %token, "retrying a failed session after its quarantine")
        }
        Note::Stable => {
            tracing::info!(token = %token, "connection stable; Reconnect attempts: 0")
        }
        Note::WaitingForRoom(limit) => {
            tracing::warn!(token = %token, limit, "at capacity; the session waits for room")
        }
    }
}

/// Fails `token`'s queued messages with `reason`; a failure to do so is logged (the messages
/// then expire).
async fn fail_queued(outbox: &Outbox, token: &Token, reason: &str) {
    match outbox
        .fail_queued(token, MessageEvent::SessionGone, reason)
        .await
    {
        Ok(0) => {}
        Ok(n) => tracing::info!(token = %token, failed = n, "queued messages failed: {reason}"),
        Err(e) => tracing::warn!(token = %token, error = %e, "queued messages not failed"),
    }
}
