//! The operations: what each control request does to the registry.

use std::time::{Duration, SystemTime};

use ractor::{ActorRef, RpcReplyPort};
use tokio::time::Instant;

use crate::error::Error;
use crate::events::SessionEvent;
use crate::link::OpenOptions;
use crate::proxy::ProxyUrl;
use crate::start_rule::{self, StartDecision, StartFacts};
use crate::state::{Desired, SessionState};
use crate::store::SessionRecord;
use crate::token::Token;

use super::SupervisorState;
use super::entry::{Entry, Intent, Waiter};
use super::messages::{InfoReply, Reaped, SupervisorMsg};

/// The session's entry, or answer `reply` with the error (not found, being deleted) and return.
macro_rules! entry_or_reply {
    ($state:ident, $token:ident, $reply:ident) => {
        match $state.entry(&$token) {
            Ok(entry) => entry,
            Err(e) => {
                let _ = $reply.send(Err(e));
                return;
            }
        }
    };
}

impl SupervisorState {
    /// Cancels any pending retry or queued start of `token` and closes its live connection
    /// with `intent` (a delete, or a logout that is not overtaken by a delete, keeps its own).
    /// Returns whether a connection was live: its end completes the operation.
    fn close_with(&mut self, token: &Token, intent: Intent) -> bool {
        let Some(entry) = self.sessions.get_mut(token) else {
            return false;
        };
        entry.cancel_retry();
        if entry.queued {
            entry.queued = false;
            self.admission.dequeue(token);
        }
        let entry = self.sessions.get_mut(token).expect("checked above");
        let Some(live) = &entry.live else {
            return false;
        };
        let keep = match (&entry.intent, &intent) {
            (Some(Intent::Delete), _) => true,
            (Some(Intent::Logout), Intent::Delete) => false,
            (Some(Intent::Logout), _) => true,
            _ => false,
        };
        if !keep {
            entry.intent = Some(intent);
        }
        live.actor.stop(Some("closed by the supervisor".into()));
        true
    }

    /// A connecting operation that must wait for (or cannot follow) a logout or a delete:
    /// answers or queues `reply` and returns `None`; otherwise hands `reply` back.
    fn defer_connect(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        token: &Token,
        reply: InfoReply,
    ) -> Option<InfoReply> {
        let Some(entry) = self.sessions.get_mut(token) else {
            return Some(reply);
        };
        if entry.deleting || entry.intent == Some(Intent::Delete) {
            let _ = reply.send(Err(Error::Conflict {
                token: token.clone(),
                state: entry.state(),
                message: "it is being deleted".into(),
            }));
            return None;
        }
        let logging_out = entry.intent == Some(Intent::Logout) || entry.cleaning_credentials;
        let logged_out = entry.state() == SessionState::LoggedOut && entry.live.is_none();
        if !(logging_out || logged_out) {
            return Some(reply);
        }
        // Credentials must be gone before a new link is made: finish (or redo) the deletion,
        // then connect for a fresh QR code.
        entry.record.desired = Desired::Running;
        entry.record.attempts = 0;
        entry.connect_after_cleanup = true;
        entry.waiters.push(Waiter::Info(reply));
        if !logging_out {
            self.begin_logout(myself, token, None, true);
        }
        None
    }

    fn entry(&mut self, token: &Token) -> Result<&mut Entry, Error> {
        match self.sessions.get_mut(token) {
            Some(entry) if !entry.deleting => Ok(entry),
            _ => Err(Error::NotFound(token.clone())),
        }
    }

    pub(super) fn create(
        &mut self,
        name: Option<String>,
        token: Option<Token>,
        proxy: Option<ProxyUrl>,
    ) -> Result<crate::state::SessionInfo, Error> {
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
        let name = name
            .filter(|n| !n.trim().is_empty())
            .unwrap_or_else(|| token.to_string());
        let mut record = SessionRecord::new(name, SystemTime::now());
        record.proxy = proxy;
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

    pub(super) async fn start(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        token: Token,
        options: OpenOptions,
        reply: InfoReply,
    ) {
        let entry = entry_or_reply!(self, token, reply);
        // A ban holds until its expiry; past it (or with none known), a start goes ahead.
        let ban_holds = entry.state() == SessionState::Banned
            && entry
                .record
                .banned_until
                .is_some_and(|until| until > SystemTime::now());
        if ban_holds {
            let until = entry
                .record
                .banned_until
                .map(|t| humantime::format_rfc3339_seconds(t).to_string())
                .unwrap_or_default();
            // Only a session that is meant to run has its retry scheduled at the expiry.
            let then = if entry.retry_timer.is_some() {
                "it will be retried then"
            } else {
                "start it again then"
            };
            let _ = reply.send(Err(Error::Conflict {
                token: token.clone(),
                state: SessionState::Banned,
                message: format!("it is banned until {until}; {then} (restart --force overrides)"),
            }));
            return;
        }
        let already = entry.live.is_some() || entry.queued || entry.intent.is_some();
        if let Some(limit) = self.max_active
            && !already
            && self.active() >= limit
        {
            tracing::warn!(token = %token, limit, "start refused: at capacity");
            let _ = reply.send(Err(Error::Capacity { limit }));
            return;
        }
        if !already {
            let cooldown = self.policy.restart_cooldown;
            let entry = self.sessions.get_mut(&token).expect("checked above");
            let facts = StartFacts {
                state: entry.state(),
                retry_scheduled: entry.retry_timer.is_some(),
                last_unpark: entry.last_unpark,
                now: Instant::now(),
                cooldown,
            };
            match start_rule::decide(facts) {
                StartDecision::KeepSchedule => {
                    let _ = reply.send(Ok(entry.info()));
                    return;
                }
                StartDecision::TooSoon(retry_after) => {
                    let _ = reply.send(Err(Error::Cooldown {
                        token: token.clone(),
                        retry_after,
                    }));
                    return;
                }
                StartDecision::Connect { unparks } => {
                    if unparks {
                        entry.last_unpark = Some(facts.now);
                    }
                }
            }
        }
        let Some(reply) = self.defer_connect(myself, &token, reply) else {
            return;
        };
        let entry = self.sessions.get_mut(&token).expect("checked above");
        entry.record.desired = Desired::Running;
        entry.options = options;
        if let Some(intent) = &entry.intent {
            // Being stopped: start again once it is gone.
            if matches!(intent, Intent::Stop { .. } | Intent::Reap { .. }) {
                entry.intent = Some(Intent::Reconnect);
            }
            entry.waiters.push(Waiter::Info(reply));
            return;
        }
        if entry.live.is_some() || entry.queued {
            // Idempotent: already running (or about to).
            let _ = reply.send(Ok(entry.info()));
            return;
        }
        if entry.state().is_parked() {
            // An operator start is the way out of a parked state (a ban only once it expired).
            entry.record.attempts = 0;
            entry.record.banned_until = None;
        }
        entry.cancel_retry();
        tracing::info!(token = %token, "starting session");
        self.request_connect(myself, &token).await;
        let _ = reply.send(Ok(self.sessions[&token].info()));
    }

    /// Stop and force-cleanup: close whatever is there, cancel any pending restart, `stopped`.
    pub(super) async fn stop(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        token: Token,
        reason: String,
        reply: InfoReply,
    ) {
        let entry = entry_or_reply!(self, token, reply);
        entry.record.desired = Desired::Stopped;
        entry.connect_after_cleanup = false;
        let intent = Intent::Stop {
            reason: reason.clone(),
        };
        let entry = if self.close_with(&token, intent) {
            let entry = self.sessions.get_mut(&token).expect("checked above");
            entry.waiters.push(Waiter::Info(reply));
            return;
        } else {
            self.sessions.get_mut(&token).expect("checked above")
        };
        tracing::info!(token = %token, %reason, "session stopped");
        // A logged-out session stays logged out: its credentials are gone either way.
        if entry.state() != SessionState::LoggedOut {
            entry.set_state(SessionState::Stopped, Some(reason), Instant::now());
            entry.record.banned_until = None;
        }
        self.publish(&token);
        let _ = reply.send(Ok(self.sessions[&token].info()));
        self.pump(myself).await;
    }

    pub(super) async fn restart(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        token: Token,
        force: bool,
        reply: InfoReply,
    ) {
        let cooldown = self.policy.restart_cooldown;
        let entry = entry_or_reply!(self, token, reply);
        if !force && let Some(refusal) = restart_refusal(entry, cooldown) {
            let _ = reply.send(Err(refusal));
            return;
        }
        tracing::info!(token = %token, force, "restarting session");
        self.restart_now(myself, token, reply).await;
    }

    /// Restarts a session whose restart was allowed: fresh attempts, no ban, a new connection
    /// once the current one is gone.
    async fn restart_now(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        token: Token,
        reply: InfoReply,
    ) {
        let entry = self.sessions.get_mut(&token).expect("the caller checked");
        entry.record.desired = Desired::Running;
        entry.record.attempts = 0;
        entry.record.banned_until = None;
        self.reconnect(myself, token, reply).await;
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
        let cooldown = self.policy.restart_cooldown;
        let entry = entry_or_reply!(self, token, reply);
        let restart = reconnect && entry.record.desired == Desired::Running;
        if restart && let Some(mut refusal) = restart_refusal(entry, cooldown) {
            if let Error::Conflict { message, .. } = &mut refusal {
                *message = "it is banned; set the proxy without reconnect: it is used when the \
                            ban ends"
                    .into();
            }
            let _ = reply.send(Err(refusal));
            return;
        }
        match &proxy {
            Some(proxy) => {
                tracing::info!(token = %token, proxy = %proxy, reconnect = restart, "proxy set")
            }
            None => tracing::info!(token = %token, reconnect = restart, "proxy cleared"),
        }
        entry.record.proxy = proxy;
        if restart {
            self.restart_now(myself, token, reply).await;
        } else {
            self.publish(&token);
            let _ = reply.send(Ok(self.sessions[&token].info()));
        }
    }

    /// Ends the live connection (if any) and starts a fresh one.
    async fn reconnect(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        token: Token,
        reply: InfoReply,
    ) {
        let Some(reply) = self.defer_connect(myself, &token, reply) else {
            return;
        };
        let entry = self.sessions.get_mut(&token).expect("caller checked");
        // A fresh connection links by QR again unless a start asks for a pairing code.
        entry.options = OpenOptions::default();
        if self.close_with(&token, Intent::Reconnect) {
            let entry = self.sessions.get_mut(&token).expect("checked above");
            entry.waiters.push(Waiter::Info(reply));
            return;
        }
        self.request_connect(myself, &token).await;
        let _ = reply.send(Ok(self.sessions[&token].info()));
    }

    pub(super) async fn refresh_qr(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        token: Token,
        reply: InfoReply,
    ) {
        let entry = entry_or_reply!(self, token, reply);
        let state = entry.state();
        let paired = entry.record.jid.is_some();
        let fits = match state {
            SessionState::WaitingForScan | SessionState::QrExpired | SessionState::LoggedOut => {
                true
            }
            SessionState::Stopped | SessionState::Failed => !paired,
            _ => false,
        };
        if !fits {
            let message = if paired {
                "it is linked to an account, so it shows no QR code; log out first to link another phone"
            } else {
                "a new QR code can be asked for while one is shown, or after it expired"
            };
            let _ = reply.send(Err(Error::Conflict {
                token: token.clone(),
                state,
                message: message.into(),
            }));
            return;
        }
        tracing::info!(token = %token, "refreshing QR code");
        entry.record.desired = Desired::Running;
        entry.record.attempts = 0;
        self.reconnect(myself, token, reply).await;
    }

    pub(super) fn logout(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        token: Token,
        reply: InfoReply,
    ) {
        let entry = entry_or_reply!(self, token, reply);
        tracing::info!(token = %token, "logging out");
        entry.record.desired = Desired::Stopped;
        entry.connect_after_cleanup = false;
        entry.waiters.push(Waiter::Info(reply));
        if self.close_with(&token, Intent::Logout) {
            return;
        }
        self.begin_logout(myself, &token, Some("logged out by request".into()), false);
    }

    pub(super) fn delete(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        token: Token,
        reply: RpcReplyPort<Result<(), Error>>,
    ) {
        let entry = entry_or_reply!(self, token, reply);
        tracing::info!(token = %token, "deleting session");
        entry.waiters.push(Waiter::Unit(reply));
        if self.close_with(&token, Intent::Delete) {
            return;
        }
        self.begin_delete(myself, &token);
    }

    pub(super) fn reset_reconnect(
        &mut self,
        token: &Token,
    ) -> Result<crate::state::SessionInfo, Error> {
        let entry = self.entry(token)?;
        entry.record.attempts = 0;
        tracing::info!(token = %token, "Reconnect attempts: 0 (reset by request)");
        self.publish(token);
        Ok(self.sessions[token].info())
    }

    /// The janitor's sweep: sessions stuck connecting or showing a QR too long are stopped.
    pub(super) fn reap(&mut self) -> Vec<Reaped> {
        let now = Instant::now();
        let max_connecting = self.janitor_config.max_connecting;
        let max_qr = self.janitor_config.max_qr;
        let mut reaped = Vec::new();
        for entry in self.sessions.values_mut() {
            let Some(live) = &entry.live else { continue };
            if entry.intent.is_some() {
                continue;
            }
            let stuck_for = now.saturating_duration_since(entry.since);
            let (state, reason) = match entry.state() {
                SessionState::Connecting | SessionState::Pairing if stuck_for > max_connecting => (
                    SessionState::Failed,
                    format!(
                        "reaped: connecting for more than {}",
                        humantime::format_duration(max_connecting)
                    ),
                ),
                SessionState::WaitingForScan if stuck_for > max_qr => (
                    SessionState::QrExpired,
                    format!(
                        "reaped: QR code shown for more than {}",
                        humantime::format_duration(max_qr)
                    ),
                ),
                _ => continue,
            };
            tracing::warn!(token = %entry.token, was = %entry.state(), %reason, "Auto-cleanup: Removing stuck session connection");
            reaped.push(Reaped {
                token: entry.token.clone(),
                was: entry.state(),
                now: state,
                reason: reason.clone(),
            });
            live.actor.stop(Some("reaped".into()));
            entry.intent = Some(Intent::Reap { state, reason });
        }
        reaped
    }

    /// On start: every session whose desired state is running comes back, through admission
    /// control; parked ones stay parked (with their ban or quarantine timers).
    pub(super) async fn restore_all(&mut self, myself: &ActorRef<SupervisorMsg>) {
        let tokens: Vec<Token> = self.sessions.keys().cloned().collect();
        let mut restored = 0usize;
        for token in tokens {
            let entry = self.sessions.get_mut(&token).expect("listed above");
            if entry.record.desired != Desired::Running {
                if entry.state() != SessionState::Stopped && !entry.state().is_parked() {
                    entry.set_state(
                        SessionState::Stopped,
                        entry.record.reason.clone(),
                        Instant::now(),
                    );
                    self.publish(&token);
                }
                continue;
            }
            match entry.state() {
                SessionState::Banned => {
                    let wait = entry
                        .record
                        .banned_until
                        .and_then(|until| until.duration_since(SystemTime::now()).ok())
                        .unwrap_or_default();
                    self.schedule_retry(myself, &token, wait);
                    self.publish(&token);
                }
                SessionState::Failed => {
                    if let Some(after) = self.policy.retry_failed_after {
                        self.schedule_retry(myself, &token, after);
                        self.publish(&token);
                    }
                }
                state if state.is_parked() => {}
                _ => {
                    restored += 1;
                    self.request_connect(myself, &token).await;
                }
            }
        }
        if restored > 0 {
            tracing::info!(restored, "restoring sessions");
        }
    }

    pub(super) fn removed(&mut self, token: &Token) {
        if let Some(entry) = self.sessions.remove(token) {
            if entry.in_flight {
                self.admission.release();
            }
            if entry.queued {
                self.admission.dequeue(token);
            }
        }
        self.snapshot.remove(token);
        let _ = self.events.send(SessionEvent::Removed {
            token: token.clone(),
        });
    }
}

/// Why an operator's restart (without `--force`) is refused now, if it is: within the
/// restart cooldown, or banned.
fn restart_refusal(entry: &Entry, cooldown: Duration) -> Option<Error> {
    if let Some(last) = entry.last_start {
        let elapsed = Instant::now().saturating_duration_since(last);
        if elapsed < cooldown {
            return Some(Error::Cooldown {
                token: entry.token.clone(),
                retry_after: cooldown - elapsed,
            });
        }
    }
    (entry.state() == SessionState::Banned).then(|| Error::Conflict {
        token: entry.token.clone(),
        state: SessionState::Banned,
        message: "it is banned; pass --force to try anyway".into(),
    })
}
