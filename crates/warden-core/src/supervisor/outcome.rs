//! What the world reports about a session, turned into events of the session machine:
//! admission, the connection's lifecycle and end (with the restart policy's answer), timers
//! and cleanup results.

use std::time::{Duration, SystemTime};

use ractor::ActorRef;
use tokio::time::Instant;

use crate::admission::Admit;
use crate::error::Error;
use crate::lifecycle::{DisconnectReason, LifecycleEvent};
use crate::machine::{CleanupKind, Event, Phase, Progress};
use crate::policy;
use crate::token::Token;

use super::SupervisorState;
use super::deadlines::{Due, TimerKey};
use super::effects::CLOSED_BY_SUPERVISOR;
use super::effects::Carry;
use super::messages::SupervisorMsg;

impl SupervisorState {
    /// How many sessions are queued or live now (what capacity limits).
    pub(super) fn active(&self) -> usize {
        self.by_actor.len() + self.admission.queued()
    }

    /// Starts as many queued sessions as admission control allows now.
    pub(super) async fn pump(&mut self, myself: &ActorRef<SupervisorMsg>) {
        loop {
            match self.admission.next(Instant::now()) {
                Admit::Go(token) => {
                    if self.sessions.contains_key(&token) {
                        // Boxed: admitting spawns, and a spawn may admit the next.
                        Box::pin(self.apply(myself, &token, Event::Admitted, Carry::default()))
                            .await;
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

    /// A lifecycle message from connection `generation` of `token`.
    pub(super) async fn on_lifecycle(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        token: &Token,
        generation: u64,
        event: LifecycleEvent,
    ) {
        let current = self
            .sessions
            .get(token)
            .and_then(|e| e.live.as_ref())
            .is_some_and(|l| l.generation == generation);
        if !current {
            return; // from a connection that is gone
        }
        let progress = match &event {
            LifecycleEvent::QrIssued { .. } => Progress::Qr,
            LifecycleEvent::PairCode { .. } => Progress::PairCode,
            LifecycleEvent::Paired { .. } => Progress::Paired,
            LifecycleEvent::Connected { .. } => Progress::Connected,
            LifecycleEvent::Disconnected { .. } => return, // the session actor ends with it
        };
        let carry = Carry {
            progress: Some(event),
            ..Carry::default()
        };
        self.apply(myself, token, Event::Progress(progress), carry)
            .await;
        // A handshake that finished frees an admission slot for the next in line.
        self.pump(myself).await;
    }

    /// Connection `generation` of `token` is gone (its actor stopped, failed or never
    /// started): the machine decides what follows, the restart policy answering for a
    /// connection that ended on its own.
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
        if entry.generation != generation || !matches!(entry.phase, Phase::Live { .. }) {
            return;
        }
        // It no longer counts against capacity when the machine decides.
        if let Some(live) = &entry.live {
            self.by_actor.remove(&live.actor.get_id());
        }
        let entry = &self.sessions[token];
        // A connection this node closed on purpose (stop, restart, reap...) did not crash.
        let closed_here = matches!(
            entry.phase,
            Phase::Live {
                closing: Some(_),
                ..
            }
        );
        // Ended without a reason of its own after the supervisor stopped it: the close itself.
        let just_closed = closed_here
            && matches!(&reason, DisconnectReason::SessionCrashed(why) if why.contains(CLOSED_BY_SUPERVISOR));
        if just_closed {
            tracing::info!(token = %token, reason = "closed_by_this_node", "Client disconnected");
        } else {
            if let DisconnectReason::SessionCrashed(why) = &reason {
                if closed_here {
                    tracing::warn!(token = %token, error = %why, "session crashed while closing");
                } else {
                    tracing::error!(token = %token, error = %why, "session crashed");
                }
            }
            tracing::info!(token = %token, reason = %reason, "Client disconnected");
        }
        let policy = policy::decide(
            &self.policy,
            &reason,
            entry.record.attempts,
            entry.connected_for(now),
            rand::random::<f64>(),
        );
        let event = Event::Ended { reason, policy };
        self.apply(myself, token, event, Carry::default()).await;
        self.pump(myself).await;
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
        let key = self.add_deadline(myself, delay, Due::Retry(token.clone()));
        let entry = self.sessions.get_mut(token).expect("checked above");
        if let Some(replaced) = entry.retry_timer.replace(key) {
            self.deadlines.cancel(replaced);
        }
        entry.next_retry_at = Some(SystemTime::now() + delay);
    }

    /// The retry timer `timer` of `token` fired.
    pub(super) async fn on_retry_due(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        token: &Token,
        timer: u64,
    ) {
        let Some(entry) = self.sessions.get_mut(token) else {
            return;
        };
        if entry.retry_timer.map(TimerKey::id) != Some(timer) {
            return; // cancelled or replaced
        }
        let _came_due = entry.cancel_retry(); // already out of the queue
        self.apply(myself, token, Event::RetryDue, Carry::default())
            .await;
    }

    /// The stability timer `timer` of connection `generation` of `token` fired.
    pub(super) async fn on_stable(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        token: &Token,
        generation: u64,
        timer: u64,
    ) {
        let Some(entry) = self.sessions.get_mut(token) else {
            return;
        };
        if entry.stable_timer.map(TimerKey::id) != Some(timer) {
            return; // cancelled
        }
        let _came_due = entry.cancel_stable(); // already out of the queue
        let current = entry
            .live
            .as_ref()
            .is_some_and(|l| l.generation == generation);
        if current {
            self.apply(myself, token, Event::Stable, Carry::default())
                .await;
        }
    }

    /// A credentials deletion or a session deletion finished.
    pub(super) async fn on_cleanup_done(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        token: &Token,
        kind: CleanupKind,
        result: Result<(), Error>,
    ) {
        let running = self
            .sessions
            .get(token)
            .is_some_and(|e| matches!(e.phase, Phase::Cleaning { kind: k, .. } if k == kind));
        if !running {
            return;
        }
        match (&result, kind) {
            (Ok(()), CleanupKind::Credentials) => {
                tracing::info!(token = %token, "credentials deleted")
            }
            (Ok(()), CleanupKind::Everything) => tracing::info!(token = %token, "session deleted"),
            (Err(e), CleanupKind::Credentials) => {
                tracing::error!(token = %token, error = %e, "could not delete the credentials")
            }
            (Err(e), CleanupKind::Everything) => {
                tracing::error!(token = %token, error = %e, "session not deleted")
            }
        }
        let failed = result.is_err();
        if failed && kind == CleanupKind::Everything {
            // The record is written again: the failed delete may have removed it.
            if let Some(entry) = self.sessions.get_mut(token) {
                entry.persisted = None;
            }
        }
        let carry = Carry {
            error: result.err(),
            ..Carry::default()
        };
        let event = Event::CleanupDone { ok: !failed };
        self.apply(myself, token, event, carry).await;
    }
}
