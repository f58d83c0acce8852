//! The root supervisor actor: owns the registry of sessions and the restart strategy.
//!
//! Everything about a session is decided here, in one place and one thread of control: the
//! session actors only report, the policy only computes, the janitor only ticks.

mod cleanup;
mod deadlines;
mod effects;
mod entry;
mod handle;
pub(crate) mod messages;
mod ops;
mod outcome;
mod texts;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::time::Instant;

use crate::admission::{Admission, AdmissionConfig};
use crate::janitor::{JanitorActor, JanitorConfig, JanitorMsg};
use crate::journal::Bus;
use crate::lifecycle::DisconnectReason;
use crate::link::Link;
use crate::outbox::Outbox;
use crate::policy::PolicyConfig;
use crate::session::SessionState as SessionActorState;
use crate::state::{LastDisconnect, SessionInfo};
use crate::store::{SessionRecord, StoreWriter};
use crate::token::Token;

pub use handle::{StartReport, Supervisor, SupervisorConfig};
pub use messages::Reaped;

use deadlines::{Deadlines, Due, TimerKey};
use entry::Entry;
use messages::SupervisorMsg;

/// The shared, read-only view of every session, kept current by the supervisor.
pub(crate) type Snapshot = Arc<DashMap<Token, SessionInfo>>;

/// The supervisor actor.
pub(crate) struct SupervisorActor;

/// What the supervisor actor is started with.
pub(crate) struct SupervisorArgs {
    pub config: SupervisorConfig,
    pub link: Arc<dyn Link>,
    pub records: Vec<(Token, SessionRecord)>,
    pub snapshot: Snapshot,
    pub events: Bus,
    pub store: StoreWriter,
    /// Set at shutdown to how many connections did not close in time.
    pub stuck: Arc<AtomicUsize>,
    /// How many deadlines are queued.
    pub timers: Arc<AtomicUsize>,
    pub outbox: Outbox,
}

/// The supervisor's state.
pub(crate) struct SupervisorState {
    policy: PolicyConfig,
    janitor_config: JanitorConfig,
    close_timeout: Duration,
    shutdown_timeout: Duration,
    link: Arc<dyn Link>,
    /// Every session, by token.
    sessions: HashMap<Token, Entry>,
    /// Which token each live session actor serves (events about unknown ids are stale).
    by_actor: HashMap<ActorId, Token>,
    admission: Admission,
    /// An `AdmissionTick` is already scheduled.
    admission_tick_pending: bool,
    snapshot: Snapshot,
    events: Bus,
    store: StoreWriter,
    /// Set at shutdown to how many connections did not close in time.
    stuck: Arc<AtomicUsize>,
    /// How many sessions may be queued or live at once (`None`: no limit).
    max_active: Option<usize>,
    janitor: Option<ActorRef<JanitorMsg>>,
    /// Retry, ban, quarantine and stability deadlines.
    deadlines: Deadlines,
    /// Every session's outgoing messages.
    outbox: Outbox,
}

impl Actor for SupervisorActor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<SupervisorMsg>,
        args: SupervisorArgs,
    ) -> Result<SupervisorState, ActorProcessingErr> {
        let now = Instant::now();
        let SupervisorArgs {
            config,
            link,
            records,
            snapshot,
            events,
            store,
            stuck,
            timers,
            outbox,
        } = args;
        let mut state = SupervisorState {
            policy: config.policy,
            janitor_config: config.janitor,
            close_timeout: config.close_timeout,
            shutdown_timeout: config.shutdown_timeout,
            link,
            sessions: HashMap::with_capacity(records.len()),
            by_actor: HashMap::new(),
            admission: Admission::new(config.admission, now),
            admission_tick_pending: false,
            snapshot,
            events,
            store,
            stuck,
            max_active: config.max_active,
            janitor: None,
            deadlines: Deadlines::new(timers),
            outbox,
        };
        for (token, record) in records {
            let entry = Entry::new(token.clone(), record, now);
            state.snapshot.insert(token.clone(), entry.info());
            state.sessions.insert(token, entry);
        }
        Ok(state)
    }

    async fn post_start(
        &self,
        myself: ActorRef<SupervisorMsg>,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        state.spawn_janitor(&myself).await;
        state.restore_all(&myself).await;
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<SupervisorMsg>,
        message: SupervisorMsg,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        state.dispatch(&myself, message).await;
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<SupervisorMsg>,
        event: SupervisionEvent,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        // Never the default: that would stop the supervisor when one session ends.
        match event {
            SupervisionEvent::ActorTerminated(cell, final_state, exit) => {
                let outcome = final_state
                    .and_then(|mut s| s.take::<SessionActorState>().ok())
                    .and_then(|s| s.outcome.clone());
                let reason = outcome.unwrap_or_else(|| {
                    DisconnectReason::SessionCrashed(format!(
                        "the session ended without a reason ({})",
                        exit.as_deref().unwrap_or("no exit reason")
                    ))
                });
                state.on_actor_gone(&myself, &cell, reason).await;
            }
            SupervisionEvent::ActorFailed(cell, error) => {
                let reason = DisconnectReason::SessionCrashed(error.to_string());
                state.on_actor_gone(&myself, &cell, reason).await;
            }
            _ => {}
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        myself: ActorRef<SupervisorMsg>,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        // Graceful shutdown: every connection closed (bounded). The records keep their
        // desired state, so the next start restores the same sessions; the handle then waits
        // (bounded) for them to be committed.
        let live = state.by_actor.len();
        tracing::info!(live, "supervisor shutting down");
        myself
            .stop_children_and_wait(Some("shutdown".into()), Some(state.shutdown_timeout))
            .await;
        let stuck = myself
            .get_children()
            .iter()
            .filter(|c| state.by_actor.contains_key(&c.get_id()))
            .count();
        state.stuck.store(stuck, Ordering::SeqCst);
        if stuck > 0 {
            tracing::error!(
                stuck,
                "connections did not close within the shutdown timeout"
            );
        }
        Ok(())
    }
}

impl SupervisorState {
    async fn spawn_janitor(&mut self, myself: &ActorRef<SupervisorMsg>) {
        let args = (myself.clone(), self.janitor_config.interval);
        match Actor::spawn_linked(None, JanitorActor, args, myself.get_cell()).await {
            Ok((janitor, _)) => self.janitor = Some(janitor),
            Err(e) => tracing::error!(error = %e, "could not start the janitor"),
        }
    }

    /// A child is gone: a session's connection ended, or the janitor died.
    async fn on_actor_gone(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        cell: &ActorCell,
        reason: DisconnectReason,
    ) {
        let id = cell.get_id();
        if self.janitor.as_ref().is_some_and(|j| j.get_id() == id) {
            tracing::error!(%reason, "janitor stopped; starting a new one");
            self.janitor = None;
            self.spawn_janitor(myself).await;
            return;
        }
        let Some(token) = self.by_actor.remove(&id) else {
            return; // stale: not ours any more
        };
        let generation = self
            .sessions
            .get(&token)
            .and_then(|e| e.live.as_ref())
            .filter(|live| live.actor.get_id() == id)
            .map(|live| live.generation);
        if let Some(generation) = generation {
            let _ = myself.cast(SupervisorMsg::ConnectionEnded {
                token,
                generation,
                reason,
            });
        }
    }

    async fn dispatch(&mut self, myself: &ActorRef<SupervisorMsg>, message: SupervisorMsg) {
        use SupervisorMsg as M;
        match message {
            M::Create {
                name,
                token,
                proxy,
                reply,
            } => {
                let _ = reply.send(self.create(name, token, proxy));
            }
            M::SetProxy {
                token,
                proxy,
                reconnect,
                reply,
            } => self.set_proxy(myself, token, proxy, reconnect, reply).await,
            M::Operate {
                token,
                operation,
                reply,
            } => {
                let (event, options) = operation.event();
                self.operate(myself, &token, event, reply, options).await
            }
            M::ResetReconnect { token, reply } => {
                let _ = reply.send(self.reset_reconnect(&token));
            }
            M::Reap { reply } => {
                let reaped = self.reap(myself).await;
                if let Some(reply) = reply {
                    let _ = reply.send(Ok(reaped));
                }
            }
            M::Reload {
                policy,
                janitor,
                admission,
                reply,
            } => {
                self.reload(myself, policy, janitor, admission).await;
                let _ = reply.send(Ok(()));
            }
            M::Ping { reply } => {
                let _ = reply.send(Ok(()));
            }
            M::Adopt {
                token,
                record,
                reply,
            } => {
                let answer = self.adopt(myself, token, *record).await;
                let _ = reply.send(answer);
            }
            M::Relinquish { token, reply } => self.relinquish(myself, &token, reply).await,
            M::Lifecycle {
                token,
                generation,
                event,
            } => self.on_lifecycle(myself, &token, generation, event).await,
            M::ConnectionEnded {
                token,
                generation,
                reason,
            } => {
                self.on_connection_end(myself, &token, generation, reason)
                    .await
            }
            M::TimersDue => {
                self.deadlines.fired();
                for (id, due) in self.deadlines.take_due(Instant::now()) {
                    match due {
                        Due::Retry(token) => self.on_retry_due(myself, &token, id).await,
                        Due::Stable { token, generation } => {
                            self.on_stable(myself, &token, generation, id).await
                        }
                    }
                }
                self.deadlines.arm(myself, Instant::now());
            }
            M::AdmissionTick => {
                self.admission_tick_pending = false;
                self.pump(myself).await;
            }
            M::CleanupDone {
                token,
                kind,
                result,
            } => self.on_cleanup_done(myself, &token, kind, result).await,
        }
    }

    async fn reload(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        policy: PolicyConfig,
        janitor: JanitorConfig,
        admission: AdmissionConfig,
    ) {
        if let Some(j) = &self.janitor {
            let _ = j.cast(JanitorMsg::SetInterval(janitor.interval));
        }
        self.policy = policy;
        self.janitor_config = janitor;
        self.admission.reconfigure(admission);
        tracing::info!("policy, janitor and admission settings reloaded");
        self.pump(myself).await;
    }

    /// Records a change of `token`: snapshot, event, and (if the record changed) the store.
    fn publish(&mut self, token: &Token) {
        let Some(entry) = self.sessions.get_mut(token) else {
            return;
        };
        let mut info = entry.info();
        let before = self.snapshot.get(token).map(|b| b.clone());
        if let Some(disconnect) = before
            .as_ref()
            .and_then(|before| LastDisconnect::between(before, &info))
        {
            entry.record.last_disconnect = Some(disconnect);
            info.last_disconnect = entry.record.last_disconnect.clone();
        }
        self.snapshot.insert(token.clone(), info.clone());
        if entry.leaving {
            return; // another node holds it: it announces and writes the session now
        }
        self.events.updated(before.as_ref(), info);
        let fingerprint = entry.record.fingerprint();
        if !entry.deleting() && entry.persisted != Some(fingerprint) {
            self.store.write(token, entry.record.clone());
            entry.persisted = Some(fingerprint);
        }
    }

    /// Queues a deadline and makes sure the supervisor wakes up for it.
    fn add_deadline(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        after: Duration,
        due: Due,
    ) -> TimerKey {
        let now = Instant::now();
        let key = self.deadlines.add(now + after, due);
        self.deadlines.arm(myself, now);
        key
    }
}
