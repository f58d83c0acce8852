//! The operations: each control request becomes an event of the session machine (create,
//! `set_proxy`'s setting and `reset_reconnect` only change the record).

use ractor::ActorRef;
use tokio::time::Instant;

use crate::error::Error;
use crate::events::SessionEvent;
use crate::janitor;
use crate::link::OpenOptions;
use crate::machine::{Effect, Event, Refusal};
use crate::proxy::ProxyUrl;
use crate::state::SessionInfo;
use crate::store::SessionRecord;
use crate::token::Token;

use super::SupervisorState;
use super::effects::Carry;
use super::entry::Entry;
use super::messages::{InfoReply, Reaped, SupervisorMsg, Waiter};
use super::texts::refusal_error;

impl SupervisorState {
    /// The session's entry, unless it is unknown or being deleted.
    fn entry(&mut self, token: &Token) -> Result<&mut Entry, Error> {
        match self.sessions.get_mut(token) {
            Some(entry) if !entry.deleting() => Ok(entry),
            _ => Err(Error::NotFound(token.clone())),
        }
    }

    /// Delivers an operator's operation to the session's machine; `reply` is answered as it
    /// says (now, or once the operation has completed).
    pub(super) async fn operate(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        token: &Token,
        event: Event,
        reply: Waiter,
        options: Option<OpenOptions>,
    ) {
        let what = match &event {
            Event::Start => "starting session".to_string(),
            Event::Stop { reason } => format!("stopping session ({reason})"),
            Event::Restart { force } => format!("restarting session (force: {force})"),
            Event::RefreshQr => "refreshing QR code".into(),
            Event::Logout => "logging out".into(),
            Event::Delete => "deleting session".into(),
            other => format!("{other:?}"),
        };
        let carry = Carry {
            options,
            ..Carry::reply(reply)
        };
        let step = self.apply(myself, token, event, carry).await;
        // Logged when it does something: not for a refusal (the caller hears why), nor for
        // one that finds the session already as asked.
        let acted = step.effects.iter().any(|e| {
            matches!(
                e,
                Effect::SetState(..)
                    | Effect::Enqueue { .. }
                    | Effect::Close
                    | Effect::Wait
                    | Effect::DeleteCredentials
                    | Effect::DeleteEverything
            )
        });
        if acted {
            tracing::info!(token = %token, "{what}");
        }
        if let Some(Effect::Refuse(refusal)) = step.effects.first() {
            tracing::info!(token = %token, ?refusal, "{what}: refused");
        }
    }

    pub(super) fn create(
        &mut self,
        name: Option<String>,
        token: Option<Token>,
        proxy: Option<ProxyUrl>,
    ) -> Result<SessionInfo, Error> {
        let token = match token {
            Some(token) if self.sessions.contains_key(&token) => {
                return Err(Error::AlreadyExists(token));
            }
            Some(token) => token,
            None => loop {
                let candidate = Token::generate();
                if !self.sessions.contains_key(&candidate) {
                    break candidate;
                }
            },
        };
        let record = SessionRecord::created(name, &token, proxy);
        let mut entry = Entry::new(token.clone(), record, Instant::now());
        entry.persisted = None;
        self.sessions.insert(token.clone(), entry);
        match &self.sessions[&token].record.proxy {
            Some(proxy) => tracing::info!(token = %token, proxy = %proxy, "session created"),
            None => tracing::info!(token = %token, "session created"),
        }
        self.publish(&token);
        Ok(self.sessions[&token].info())
    }

    /// Sets (or clears) the session's proxy. It is used from the next connection on; with
    /// `reconnect`, a session that is meant to run is restarted now, as by `restart` (the
    /// cooldown applies, and a refusal changes nothing).
    pub(super) async fn set_proxy(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        token: Token,
        proxy: Option<ProxyUrl>,
        reconnect: bool,
        reply: InfoReply,
    ) {
        let restart = match self.entry(&token) {
            Ok(entry) => reconnect && entry.record.desired == crate::state::Desired::Running,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        let event = Event::Restart { force: false };
        if restart
            && let Some(step) = self.preview(&token, event.clone())
            && let Some(Effect::Refuse(refusal)) = step.effects.first()
        {
            // The machine is pure: asking it first changes nothing, so a refusal leaves the
            // proxy as it was.
            let entry = &self.sessions[&token];
            let error = match refusal {
                Refusal::BannedRestart => Error::Conflict {
                    token: token.clone(),
                    state: entry.state(),
                    message: "it is banned; set the proxy without reconnect: it is used when \
                              the ban ends"
                        .into(),
                },
                refusal => refusal_error(&token, entry.state(), entry.record.banned_until, refusal),
            };
            let _ = reply.send(Err(error));
            return;
        }
        match &proxy {
            Some(proxy) => {
                tracing::info!(token = %token, proxy = %proxy, reconnect = restart, "proxy set")
            }
            None => tracing::info!(token = %token, reconnect = restart, "proxy cleared"),
        }
        self.sessions
            .get_mut(&token)
            .expect("checked above")
            .record
            .proxy = proxy;
        if restart {
            self.operate(myself, &token, event, Waiter::Info(reply), None)
                .await;
        } else {
            self.publish(&token);
            let _ = reply.send(Ok(self.sessions[&token].info()));
        }
    }

    pub(super) fn reset_reconnect(&mut self, token: &Token) -> Result<SessionInfo, Error> {
        let entry = self.entry(token)?;
        entry.record.attempts = 0;
        tracing::info!(token = %token, "Reconnect attempts: 0 (reset by request)");
        self.publish(token);
        Ok(self.sessions[token].info())
    }

    /// The janitor's sweep: live sessions stuck connecting or showing a QR code too long are
    /// ended and left as the janitor's verdict says.
    pub(super) async fn reap(&mut self, myself: &ActorRef<SupervisorMsg>) -> Vec<Reaped> {
        let now = Instant::now();
        let stuck: Vec<(Token, Reaped)> = self
            .sessions
            .values()
            .filter(|entry| entry.live.is_some())
            .filter_map(|entry| {
                let stuck_for = now.saturating_duration_since(entry.since);
                let (state, reason) =
                    janitor::verdict(entry.state(), stuck_for, &self.janitor_config)?;
                let reaped = Reaped {
                    token: entry.token.clone(),
                    was: entry.state(),
                    now: state,
                    reason,
                };
                Some((entry.token.clone(), reaped))
            })
            .collect();
        let mut reaped = Vec::new();
        for (token, verdict) in stuck {
            let event = Event::Reap {
                state: verdict.now,
                reason: verdict.reason.clone(),
            };
            let step = self.apply(myself, &token, event, Carry::default()).await;
            if step.effects.contains(&Effect::Close) {
                tracing::warn!(token = %token, was = %verdict.was, reason = %verdict.reason, "Auto-cleanup: Removing stuck session connection");
                reaped.push(verdict);
            }
        }
        reaped
    }

    /// On start: every session whose desired state is running comes back, through admission
    /// control; parked ones stay parked (with their ban or quarantine timers).
    pub(super) async fn restore_all(&mut self, myself: &ActorRef<SupervisorMsg>) {
        let tokens: Vec<Token> = self.sessions.keys().cloned().collect();
        let mut restored = 0usize;
        for token in tokens {
            let step = self
                .apply(myself, &token, Event::Restore, Carry::default())
                .await;
            restored += usize::from(step.phase == crate::machine::Phase::Queued);
        }
        if restored > 0 {
            tracing::info!(restored, "restoring sessions");
        }
    }

    /// This node now holds `token` (in a cluster): the session comes in from its stored
    /// record and is restored as at start-up. A session already here is left as it is; one
    /// still closing after being relinquished is refused until it is gone (the caller tries
    /// again).
    pub(super) async fn adopt(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        token: Token,
        record: SessionRecord,
    ) -> Result<SessionInfo, Error> {
        if let Some(entry) = self.sessions.get(&token) {
            if entry.leaving {
                return Err(Error::Conflict {
                    token,
                    state: entry.state(),
                    message: "its connection here is still closing; try again once it is gone"
                        .into(),
                });
            }
            return Ok(entry.info());
        }
        let entry = Entry::new(token.clone(), record, Instant::now());
        self.snapshot.insert(token.clone(), entry.info());
        self.sessions.insert(token.clone(), entry);
        tracing::info!(token = %token, "session held by this node now");
        self.apply(myself, &token, Event::Restore, Carry::default())
            .await;
        Ok(self.sessions[&token].info())
    }

    /// This node no longer holds `token`: what runs here ends and the session is forgotten
    /// here, without anything written or deleted. `reply` is answered once it is gone here
    /// (at once when nothing ran), with whether it was here.
    pub(super) async fn relinquish(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        token: &Token,
        reply: ractor::RpcReplyPort<Result<bool, Error>>,
    ) {
        let Some(entry) = self.sessions.get_mut(token) else {
            let _ = reply.send(Ok(false));
            return;
        };
        if !entry.leaving {
            tracing::warn!(token = %token, "this node no longer holds the session: ending it here");
        }
        entry.leaving = true;
        entry.relinquished_by.push(reply);
        // Whatever was queued for it and not yet committed is another node's business now.
        self.store.forget(token);
        self.apply(myself, token, Event::Relinquish, Carry::default())
            .await;
    }

    /// Forgets a relinquished session: its timers go, and whoever waited is told that another
    /// node holds it now.
    pub(super) fn released(&mut self, token: &Token) {
        self.snapshot.remove(token);
        self.store.forget(token);
        if let Some(mut entry) = self.sessions.remove(token) {
            for key in [entry.cancel_retry(), entry.cancel_stable()]
                .into_iter()
                .flatten()
            {
                self.deadlines.cancel(key);
            }
            // Answered once nothing of it is left here.
            entry.fail_waiters(&super::texts::not_held(token, entry.state()));
            for reply in entry.relinquished_by.drain(..) {
                let _ = reply.send(Ok(true));
            }
        }
    }

    /// Forgets a deleted session.
    pub(super) fn removed(&mut self, token: &Token) {
        if let Some(mut entry) = self.sessions.remove(token) {
            // Relinquished while its deletion finished: it is gone here.
            for reply in entry.relinquished_by.drain(..) {
                let _ = reply.send(Ok(true));
            }
            for key in [entry.cancel_retry(), entry.cancel_stable()]
                .into_iter()
                .flatten()
            {
                self.deadlines.cancel(key);
            }
        }
        self.snapshot.remove(token);
        self.events.send(SessionEvent::Removed {
            token: token.clone(),
        });
    }
}
