//! What follows from a session's life: admission, spawning, lifecycle, the end of a
//! connection and the restart policy's decision, timers and cleanup.

use std::time::{Duration, SystemTime};

use ractor::{Actor, ActorRef};
use tokio::time::Instant;

use crate::admission::Admit;
use crate::error::Error;
use crate::events::SessionEvent;
use crate::lifecycle::{DisconnectReason, LifecycleEvent};
use crate::link::OpenOptions;
use crate::outbox::{MessageEvent, Outbox};
use crate::policy::{self, Decision, Parked};
use crate::session::{SessionActor, SessionArgs};
use crate::state::{Desired, QrCode, SessionState};
use crate::token::Token;

use super::SupervisorState;
use super::deadlines::Due;
use super::entry::{Intent, Live};
use super::messages::{Cleanup, SupervisorMsg};

impl SupervisorState {
    /// Queues the session for a connection; admission control decides when it starts.
    pub(super) async fn request_connect(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        token: &Token,
    ) {
        self.queue_connect(myself, token, false).await;
    }

    /// [`request_connect`](Self::request_connect) for a reconnection that is a protocol step
    /// (the restart after a pairing): first in the queue, not charged to the rate limit.
    pub(super) async fn request_reconnect_now(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        token: &Token,
    ) {
        self.queue_connect(myself, token, true).await;
    }

    async fn queue_connect(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        token: &Token,
        priority: bool,
    ) {
        let Some(entry) = self.sessions.get_mut(token) else {
            return;
        };
        if entry.live.is_some() || entry.queued {
            return;
        }
        if let Some(limit) = self.max_active
            && self.active() >= limit
        {
            // No room now: try again later, without counting an attempt.
            tracing::warn!(token = %token, limit, "at capacity; the session waits for room");
            let wait = self.policy.backoff_cap;
            let entry = self.sessions.get_mut(token).expect("checked above");
            entry.set_state(
                entry.state(),
                Some(format!("capacity: {limit} sessions are live")),
                Instant::now(),
            );
            self.schedule_retry(myself, token, wait);
            self.publish(token);
            return;
        }
        let entry = self.sessions.get_mut(token).expect("checked above");
        entry.queued = true;
        entry.set_state(SessionState::Queued, None, Instant::now());
        if priority {
            self.admission.enqueue_priority(token.clone());
        } else {
            self.admission.enqueue(token.clone());
        }
        self.publish(token);
        self.pump(myself).await;
    }

    /// How many sessions are queued or live now (what capacity limits).
    pub(super) fn active(&self) -> usize {
        self.by_actor.len() + self.admission.queued()
    }

    /// Starts as many queued sessions as admission control allows now.
    pub(super) async fn pump(&mut self, myself: &ActorRef<SupervisorMsg>) {
        loop {
            match self.admission.next(Instant::now()) {
                Admit::Go(token) => {
                    let ready = self
                        .sessions
                        .get(&token)
                        .is_some_and(|e| e.queued && e.live.is_none() && !e.deleting);
                    if ready {
                        self.spawn_session(myself, &token).await;
                    } else {
                        self.admission.release();
                    }
                }
                Admit::WaitFor(delay) => {
                    if !self.admission_tick_pending {
                        self.admission_tick_pending = true;
                        myself.send_after(delay, || SupervisorMsg::AdmissionTick);
                    }
                    return;
                }
                Admit::WaitForSlot | Admit::Idle => return,
            }
        }
    }

    async fn spawn_session(&mut self, myself: &ActorRef<SupervisorMsg>, token: &Token) {
        let now = Instant::now();
        let entry = self.sessions.get_mut(token).expect("caller checked");
        entry.queued = false;
        entry.in_flight = true;
        entry.generation += 1;
        entry.last_start = Some(now);
        entry.set_state(SessionState::Connecting, None, now);
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
        self.publish(token);
    }

    fn release_admission(&mut self, token: &Token) {
        if let Some(entry) = self.sessions.get_mut(token)
            && entry.in_flight
        {
            entry.in_flight = false;
            self.admission.release();
        }
    }

    /// A lifecycle message from the live connection of `token`.
    pub(super) fn on_lifecycle(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        token: &Token,
        generation: u64,
        event: LifecycleEvent,
    ) {
        let Some(entry) = self.sessions.get_mut(token) else {
            return;
        };
        let current = entry
            .live
            .as_ref()
            .is_some_and(|l| l.generation == generation);
        if !current || entry.intent.is_some() {
            return; // from a connection that is gone or going
        }
        let now = Instant::now();
        match event {
            LifecycleEvent::QrIssued { code, expires_in } => {
                entry.set_state(SessionState::WaitingForScan, None, now);
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
                self.release_admission(token);
            }
            LifecycleEvent::PairCode { code } => {
                entry.set_state(SessionState::WaitingForScan, None, now);
                entry.pair_code = Some(code.clone());
                tracing::info!(token = %token, "pairing code issued; waiting for it to be entered on the phone");
                let _ = self.events.send(SessionEvent::PairCode {
                    token: token.clone(),
                    code,
                });
                self.release_admission(token);
            }
            LifecycleEvent::Paired { jid } => {
                entry.set_state(SessionState::Pairing, None, now);
                entry.qr = None;
                entry.pair_code = None;
                entry.record.jid = Some(jid);
                tracing::info!(token = %token, "paired; reconnecting to log in");
            }
            LifecycleEvent::Connected { jid, name } => {
                entry.set_state(SessionState::Connected, None, now);
                entry.connected_at = Some(now);
                entry.qr = None;
                entry.pair_code = None;
                entry.record.jid = Some(jid);
                if name.is_some() {
                    entry.record.account_name = name;
                }
                entry.record.banned_until = None;
                entry.record.counters.connects += 1;
                let stable_after = self.policy.stable_after;
                let due = Due::Stable {
                    token: token.clone(),
                    generation,
                };
                let id = self.add_deadline(myself, stable_after, due);
                let entry = self.sessions.get_mut(token).expect("still there");
                entry.stable_timer = Some(id);
                tracing::info!(token = %token, attempts = entry.record.attempts, "Session connected successfully");
                self.release_admission(token);
            }
            LifecycleEvent::Disconnected { .. } => return, // the session actor ends with it
        }
        self.publish(token);
    }

    /// The connection `generation` of `token` is gone (its actor stopped, failed or never
    /// started). Decide what follows: the supervisor's own intent first, else the policy.
    pub(super) async fn on_connection_end(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        token: &Token,
        generation: u64,
        reason: DisconnectReason,
    ) {
        let now = Instant::now();
        let Some(entry) = self.sessions.get_mut(token) else {
            return;
        };
        if entry.generation != generation {
            return;
        }
        self.release_admission(token);
        let entry = self.sessions.get_mut(token).expect("checked above");
        if let Some(live) = entry.live.take() {
            self.by_actor.remove(&live.actor.get_id());
        }
        let entry = self.sessions.get_mut(token).expect("still there");
        let connected_for = entry.connected_for(now);
        entry.connected_at = None;
        entry.qr = None;
        entry.pair_code = None;
        entry.cancel_stable();
        entry.record.counters.disconnects += 1;
        if let DisconnectReason::SessionCrashed(why) = &reason {
            tracing::error!(token = %token, error = %why, "session crashed");
        }
        tracing::info!(token = %token, reason = %reason, "Client disconnected");

        let mut intent = entry.intent.take();
        if reason == DisconnectReason::LoggedOut
            && matches!(intent, Some(Intent::Stop { .. } | Intent::Reap { .. }))
        {
            // The phone logged the session out before our close: that is what happened, and
            // the credentials must go. The operator's stop is answered once they have.
            intent = Some(Intent::Logout);
            let entry = self.sessions.get_mut(token).expect("still there");
            entry.record.desired = Desired::Stopped;
        }
        if let (DisconnectReason::TemporarilyBanned { expires_in, .. }, Some(Intent::Stop { .. })) =
            (&reason, &intent)
        {
            // Stopped as asked, but the ban is remembered: a start before its end is refused.
            let entry = self.sessions.get_mut(token).expect("still there");
            entry.record.banned_until = Some(SystemTime::now() + *expires_in);
        }
        let entry = self.sessions.get_mut(token).expect("still there");
        match intent {
            Some(Intent::Stop { reason: why })
                if entry.record.banned_until.is_some()
                    && matches!(reason, DisconnectReason::TemporarilyBanned { .. }) =>
            {
                tracing::info!(token = %token, "Should reconnect: false");
                entry.set_state(SessionState::Banned, Some(why), now);
                self.publish(token);
                self.answer(token);
            }
            Some(Intent::Stop { reason }) => {
                tracing::info!(token = %token, "Should reconnect: false");
                if entry.state() != SessionState::LoggedOut {
                    entry.set_state(SessionState::Stopped, Some(reason), now);
                    entry.record.banned_until = None;
                }
                self.publish(token);
                self.answer(token);
            }
            Some(Intent::Reconnect) => {
                self.publish(token);
                self.request_connect(myself, token).await;
                self.answer(token);
            }
            Some(Intent::Reap { state, reason }) => {
                tracing::info!(token = %token, "Should reconnect: false");
                entry.set_state(state, Some(reason), now);
                if state == SessionState::Failed
                    && let Some(after) = self.policy.retry_failed_after
                {
                    self.schedule_retry(myself, token, after);
                }
                self.publish(token);
                self.answer(token);
            }
            Some(Intent::Logout) => {
                let why = match reason {
                    DisconnectReason::LoggedOut => reason.to_string(),
                    _ => "logged out by request".into(),
                };
                self.begin_logout(myself, token, Some(why), false);
            }
            Some(Intent::Delete) => self.begin_delete(myself, token),
            None => {
                self.apply_policy(myself, token, reason, connected_for)
                    .await
            }
        }
        self.pump(myself).await;
    }

    async fn apply_policy(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        token: &Token,
        reason: DisconnectReason,
        connected_for: Option<Duration>,
    ) {
        let now = Instant::now();
        let entry = self.sessions.get_mut(token).expect("caller checked");
        if entry.record.desired == Desired::Stopped {
            entry.set_state(SessionState::Stopped, Some(reason.to_string()), now);
            self.publish(token);
            return;
        }
        let outcome = policy::decide(
            &self.policy,
            &reason,
            entry.record.attempts,
            connected_for,
            rand::random::<f64>(),
        );
        entry.record.attempts = outcome.attempts;
        let should = !matches!(outcome.decision, Decision::Park(_));
        tracing::info!(token = %token, reason = %reason, "Should reconnect: {should}");
        match outcome.decision {
            Decision::RestartNow => {
                entry.record.counters.restarts += 1;
                self.request_reconnect_now(myself, token).await;
            }
            Decision::RetryAfter { delay, attempt } => {
                tracing::info!(token = %token, attempt, delay = ?delay, "Reconnect attempts: {attempt}");
                entry.record.counters.restarts += 1;
                entry.set_state(SessionState::BackingOff, Some(reason.to_string()), now);
                self.schedule_retry(myself, token, delay);
                self.publish(token);
            }
            Decision::Park(parked) => self.park(myself, token, parked, &reason),
        }
    }

    fn park(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        token: &Token,
        parked: Parked,
        reason: &DisconnectReason,
    ) {
        let now = Instant::now();
        let entry = self.sessions.get_mut(token).expect("caller checked");
        match parked {
            Parked::Failed(why) => {
                tracing::error!(token = %token, reason = %why, "session failed");
                entry.set_state(SessionState::Failed, Some(why), now);
                if let Some(after) = self.policy.retry_failed_after {
                    self.schedule_retry(myself, token, after);
                }
            }
            Parked::LoggedOut => {
                tracing::warn!(token = %token, "session logged out; deleting its credentials");
                self.begin_logout(myself, token, Some(reason.to_string()), false);
                return;
            }
            Parked::Replaced => {
                tracing::warn!(token = %token, "another client took over this account; not reconnecting");
                entry.set_state(SessionState::Replaced, Some(reason.to_string()), now);
            }
            Parked::Banned { expires_in } => {
                tracing::warn!(token = %token, expires_in = ?expires_in, "session temporarily banned");
                entry.record.banned_until = Some(SystemTime::now() + expires_in);
                entry.set_state(SessionState::Banned, Some(reason.to_string()), now);
                self.schedule_retry(myself, token, expires_in);
            }
            Parked::QrExpired => {
                entry.set_state(SessionState::QrExpired, Some(reason.to_string()), now);
            }
            Parked::Stopped => {
                entry.set_state(SessionState::Stopped, Some(reason.to_string()), now);
            }
        }
        self.publish(token);
    }

    /// Schedules the next automatic attempt of `token` after `delay`.
    pub(super) fn schedule_retry(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        token: &Token,
        delay: Duration,
    ) {
        if !self.sessions.contains_key(token) {
            return;
        }
        let id = self.add_deadline(myself, delay, Due::Retry(token.clone()));
        let entry = self.sessions.get_mut(token).expect("checked above");
        entry.retry_timer = Some(id);
        entry.next_retry_at = Some(SystemTime::now() + delay);
    }

    pub(super) async fn on_retry_due(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        token: &Token,
        timer: u64,
    ) {
        let Some(entry) = self.sessions.get_mut(token) else {
            return;
        };
        if entry.retry_timer != Some(timer) {
            return; // cancelled or replaced
        }
        entry.retry_timer = None;
        entry.next_retry_at = None;
        if entry.record.desired != Desired::Running || entry.live.is_some() || entry.deleting {
            return;
        }
        match entry.state() {
            SessionState::Failed => {
                tracing::info!(token = %token, "retrying a failed session after its quarantine");
                entry.record.attempts = 0;
            }
            SessionState::Banned => {
                tracing::info!(token = %token, "ban expired; reconnecting");
                entry.record.banned_until = None;
            }
            SessionState::BackingOff => {}
            _ => return,
        }
        self.request_connect(myself, token).await;
    }

    pub(super) fn on_stable(&mut self, token: &Token, generation: u64, timer: u64) {
        let Some(entry) = self.sessions.get_mut(token) else {
            return;
        };
        if entry.stable_timer != Some(timer) {
            return; // cancelled
        }
        let current = entry
            .live
            .as_ref()
            .is_some_and(|l| l.generation == generation);
        entry.stable_timer = None;
        if current && entry.state() == SessionState::Connected && entry.record.attempts > 0 {
            entry.record.attempts = 0;
            tracing::info!(token = %token, "connection stable; Reconnect attempts: 0");
            self.publish(token);
        }
    }

    /// Logged out: mark it (when `reason` is given), then delete the credentials once no
    /// connection can hold them; connect afterwards if `then_connect`. Nothing else connects
    /// while the deletion runs, so a new connection can never pick up credentials on their way
    /// out. A start from `logged_out` deletes them again first (deleting is idempotent), so a
    /// deletion that failed or was cut short by a shutdown is finished before any login.
    pub(super) fn begin_logout(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        token: &Token,
        reason: Option<String>,
        then_connect: bool,
    ) {
        let Some(entry) = self.sessions.get_mut(token) else {
            return;
        };
        entry.connect_after_cleanup |= then_connect;
        if let Some(reason) = reason {
            entry.set_state(SessionState::LoggedOut, Some(reason), Instant::now());
            entry.record.jid = None;
            entry.record.account_name = None;
            entry.record.attempts = 0;
            self.publish(token);
        }
        let entry = self.sessions.get_mut(token).expect("checked above");
        if entry.cleaning_credentials {
            return; // already under way; it will honour `connect_after_cleanup`
        }
        entry.cleaning_credentials = true;
        let slot = entry.slot.clone();
        let link = self.link.clone();
        let store = self.store.clone();
        let outbox = self.outbox.clone();
        let me = myself.clone();
        let t = token.clone();
        tokio::spawn(async move {
            fail_queued(&outbox, &t, "the session was logged out").await;
            // The record without its account is committed first: a crash in between must
            // never leave a record that names an account whose credentials are gone.
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
                kind: Cleanup::Logout,
                result,
            });
        });
    }

    /// Deleted: once no connection is alive, the link forgets it and its folder goes.
    pub(super) fn begin_delete(&mut self, myself: &ActorRef<SupervisorMsg>, token: &Token) {
        let Some(entry) = self.sessions.get_mut(token) else {
            return;
        };
        entry.deleting = true;
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
                kind: Cleanup::Delete,
                result,
            });
        });
    }

    pub(super) async fn on_cleanup_done(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        token: &Token,
        kind: Cleanup,
        result: Result<(), Error>,
    ) {
        let Some(entry) = self.sessions.get_mut(token) else {
            return;
        };
        match (kind, result) {
            (Cleanup::Logout, Ok(())) => {
                tracing::info!(token = %token, "credentials deleted");
                entry.cleaning_credentials = false;
                let why = entry
                    .record
                    .reason
                    .clone()
                    .unwrap_or_else(|| "logged_out".into());
                if !why.ends_with("credentials deleted") {
                    entry.record.reason = Some(format!("{why}; credentials deleted"));
                }
                // Connect only if that is still what the operator wants: a stop or a second
                // logout after the start that asked for it wins.
                let connect = std::mem::take(&mut entry.connect_after_cleanup)
                    && entry.record.desired == Desired::Running;
                self.publish(token);
                if connect && !self.sessions[token].deleting {
                    self.request_connect(myself, token).await;
                }
                if let Some(entry) = self.sessions.get_mut(token) {
                    entry.answer_info_waiters();
                }
            }
            (Cleanup::Logout, Err(e)) => {
                tracing::error!(token = %token, error = %e, "could not delete the credentials");
                entry.cleaning_credentials = false;
                entry.connect_after_cleanup = false;
                entry.record.reason = Some(format!("credentials not deleted: {e}"));
                // A delete waiting behind this logout goes on (it removes the credentials
                // with everything else) and answers for itself.
                entry.fail_info_waiters(&e);
                self.publish(token);
            }
            (Cleanup::Delete, Ok(())) => {
                tracing::info!(token = %token, "session deleted");
                self.answer(token);
                self.removed(token);
            }
            (Cleanup::Delete, Err(e)) => {
                // Keep the session: what is left on disk would come back at the next start
                // anyway. The caller is told, and can delete again.
                tracing::error!(token = %token, error = %e, "session not deleted");
                entry.deleting = false;
                entry.persisted = None;
                entry.record.reason = Some(format!("delete failed: {e}"));
                entry.fail_waiters(&e);
                self.publish(token);
            }
        }
    }

    /// Answers the operations waiting on `token`.
    pub(super) fn answer(&mut self, token: &Token) {
        if let Some(entry) = self.sessions.get_mut(token) {
            entry.answer_waiters();
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
