//! [`Supervisor`]: the embedding API. Every control surface (socket, CLI, HTTP) goes through it.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use ractor::rpc::CallResult;
use ractor::{Actor, ActorRef, RpcReplyPort};
use tokio::sync::{broadcast, watch};

use crate::admission::AdmissionConfig;
use crate::error::{Error, StoreError};
use crate::events::SessionEvent;
use crate::janitor::JanitorConfig;
use crate::journal::{self, Bus, HistoryEntry, JournalConfig};
use crate::link::{Link, OpenOptions};
use crate::outbox::{self, MessageEvent, Outbox, OutboxConfig, OutgoingMessage, SendRequest};
use crate::policy::PolicyConfig;
use crate::proxy::ProxyUrl;
use crate::session::AbortOnDrop;
use crate::state::{SessionInfo, SessionList};
use crate::store::{self, SessionRecord, StoreWriter};
use crate::token::Token;
use warden_store::{Db, Store};

use super::messages::{Operation, Reaped, SupervisorMsg, Waiter};
use super::{Snapshot, SupervisorActor, SupervisorArgs};

/// Everything the supervisor is configured with.
#[derive(Debug, Clone)]
pub struct SupervisorConfig {
    /// Where `sessions/<token>/` folders live.
    pub sessions_dir: PathBuf,
    /// The restart policy.
    pub policy: PolicyConfig,
    /// The janitor's schedule and limits.
    pub janitor: JanitorConfig,
    /// Admission control.
    pub admission: AdmissionConfig,
    /// The bound on closing one connection gracefully.
    pub close_timeout: Duration,
    /// The bound on a graceful shutdown of everything.
    pub shutdown_timeout: Duration,
    /// How long an operation may wait for the supervisor's answer.
    pub call_timeout: Duration,
    /// How many events a subscriber may fall behind before it misses some.
    pub event_capacity: usize,
    /// The session store (shared with the link, when local); `None` opens
    /// `<sessions_dir>/warden.db`.
    pub store: Option<Store>,
    /// How many sessions may be live (queued, connecting or connected) at once; a start past
    /// it is refused with [`Error::Capacity`]. `None`: no limit.
    pub max_active: Option<usize>,
    /// The outbox: time to live, pacing, attempts.
    pub outbox: OutboxConfig,
    /// How much of each session's history the journal keeps.
    pub journal: JournalConfig,
}

impl SupervisorConfig {
    /// Defaults for everything, with sessions in `sessions_dir`.
    pub fn new(sessions_dir: impl Into<PathBuf>) -> Self {
        Self {
            sessions_dir: sessions_dir.into(),
            policy: PolicyConfig::default(),
            janitor: JanitorConfig::default(),
            admission: AdmissionConfig::default(),
            close_timeout: Duration::from_secs(5),
            shutdown_timeout: Duration::from_secs(10),
            call_timeout: Duration::from_secs(30),
            event_capacity: 1024,
            store: None,
            max_active: None,
            outbox: OutboxConfig::default(),
            journal: JournalConfig::default(),
        }
    }

    /// The same configuration on an already opened session store: a local database (the one
    /// the link uses), or PostgreSQL shared with other nodes.
    pub fn with_db(mut self, store: impl Into<Store>) -> Self {
        self.store = Some(store.into());
        self
    }

    /// Checks every value makes sense.
    pub fn validate(&self) -> Result<(), Error> {
        self.policy
            .validate()
            .map_err(|e| Error::Config(format!("[policy] {e}")))?;
        self.janitor
            .validate()
            .map_err(|e| Error::Config(format!("[janitor] {e}")))?;
        self.admission
            .validate()
            .map_err(|e| Error::Config(format!("[admission] {e}")))?;
        self.outbox
            .validate()
            .map_err(|e| Error::Config(format!("[outbox] {e}")))?;
        self.journal
            .validate()
            .map_err(|e| Error::Config(format!("[journal] {e}")))?;
        for (name, value) in [
            ("close_timeout", self.close_timeout),
            ("shutdown_timeout", self.shutdown_timeout),
            ("call_timeout", self.call_timeout),
        ] {
            if value.is_zero() {
                return Err(Error::Config(format!("{name} must be more than 0s")));
            }
        }
        Ok(())
    }
}

/// What [`Supervisor::start`] found in the session store.
#[derive(Debug, Default)]
pub struct StartReport {
    /// Sessions loaded from the store.
    pub loaded: usize,
    /// Sessions whose `session.toml` (from an earlier release) moved into the database.
    pub imported: Vec<Token>,
    /// Entries that could not be read; reported, never deleted.
    pub problems: Vec<StoreError>,
}

/// A handle to a running supervisor. Cheap to clone; all clones drive the same supervisor.
///
/// Status reads ([`Supervisor::status`], [`Supervisor::list`]) read a shared snapshot and never
/// wait on the supervisor's mailbox; every other operation is a message to it.
#[derive(Clone)]
pub struct Supervisor {
    actor: ActorRef<SupervisorMsg>,
    snapshot: Snapshot,
    events: Bus,
    /// The session store (history reads).
    db: Store,
    call_timeout: Duration,
    shutdown_timeout: Duration,
    /// The record writer: an operation's answer waits until its changes are committed.
    store: StoreWriter,
    /// How many connections did not close at shutdown (set by the supervisor actor).
    stuck: Arc<AtomicUsize>,
    /// How many deadlines the supervisor has queued (retries, bans, stability timers).
    timers: Arc<AtomicUsize>,
    /// Becomes true once the supervisor actor has ended, for whatever reason.
    ended: watch::Receiver<bool>,
    /// Every session's outgoing messages.
    outbox: Outbox,
    /// The interface the journal says this handle's operations were asked through.
    origin: &'static str,
    /// The task that expires old queued messages; it goes with the last handle.
    _expiry: Arc<AbortOnDrop>,
}

impl Supervisor {
    /// Loads the session store, starts the supervisor with `link`, and restores every session
    /// whose desired state is running (through admission control).
    pub async fn start(
        config: SupervisorConfig,
        link: Arc<dyn Link>,
    ) -> Result<(Self, StartReport), Error> {
        config.validate()?;
        let db = match config.store.clone() {
            Some(store) => store,
            None => {
                let dir = config.sessions_dir.clone();
                let db = tokio::task::spawn_blocking(move || Db::open_in(&dir))
                    .await
                    .map_err(|e| Error::Unavailable(format!("opening the session store: {e}")))?
                    .map_err(StoreError::from)?;
                Store::Local(db)
            }
        };
        let imported = store::import_legacy_records(&db, &config.sessions_dir).await;
        // On a cluster's store, a node starts holding nothing: sessions come in as it claims
        // them (`adopt`).
        let loaded = match db {
            Store::Local(_) => store::load_all(&db).await?,
            Store::Shared(_) => store::Loaded::default(),
        };
        let mut problems = imported.problems;
        problems.extend(loaded.problems);
        for problem in &problems {
            tracing::warn!(problem = %problem, "skipping an unreadable session entry");
        }
        if !imported.imported.is_empty() {
            tracing::info!(
                imported = imported.imported.len(),
                "session records of an earlier release moved into the session database"
            );
        }
        let report = StartReport {
            loaded: loaded.records.len(),
            imported: imported.imported,
            problems,
        };
        let writer = StoreWriter::spawn(db.clone(), config.journal);
        let stuck = Arc::new(AtomicUsize::new(0));
        let timers = Arc::new(AtomicUsize::new(0));
        let snapshot: Snapshot = Arc::new(DashMap::new());
        let (events, _) = broadcast::channel(config.event_capacity.max(1));
        let events = Bus::new(events, writer.clone());
        let outbox = Outbox::new(db.clone(), config.outbox.clone(), events.clone());
        let expiry = Arc::new(AbortOnDrop(outbox::spawn_expiry(&outbox)));
        let handle_config = (config.call_timeout, config.shutdown_timeout);
        let args = SupervisorArgs {
            config,
            link,
            records: loaded.records,
            snapshot: snapshot.clone(),
            events: events.clone(),
            store: writer.clone(),
            stuck: stuck.clone(),
            timers: timers.clone(),
            outbox: outbox.clone(),
        };
        let (actor, join) = Actor::spawn(None, SupervisorActor, args)
            .await
            .map_err(|e| Error::Unavailable(format!("could not start the supervisor: {e}")))?;
        let (ended_tx, ended) = watch::channel(false);
        tokio::spawn(async move {
            let _ = join.await;
            let _ = ended_tx.send(true);
        });
        let handle = Self {
            actor,
            snapshot,
            events,
            db,
            call_timeout: handle_config.0,
            shutdown_timeout: handle_config.1,
            store: writer,
            stuck,
            timers,
            ended,
            outbox,
            origin: "embedded",
            _expiry: expiry,
        };
        // The restore runs before the first message is handled: once this answers, every
        // restored session shows where it really is (queued, not its last recorded state).
        handle.ping().await?;
        Ok((handle, report))
    }

    async fn ask<T: Send + 'static>(
        &self,
        build: impl FnOnce(RpcReplyPort<Result<T, Error>>) -> SupervisorMsg,
    ) -> Result<T, Error> {
        match self.actor.call(build, Some(self.call_timeout)).await {
            Ok(CallResult::Success(result)) => result,
            Ok(CallResult::Timeout) => Err(Error::Unavailable(format!(
                "no answer within {}",
                humantime::format_duration(self.call_timeout)
            ))),
            Ok(CallResult::SenderError) | Err(_) => {
                Err(Error::Unavailable("the supervisor has stopped".into()))
            }
        }
    }

    /// Sends an operation and answers only once what it changed is committed: a reply never
    /// claims a change that a kill -9 could still lose.
    /// Delivers a lifecycle operation; answers as the session machine says, once what it
    /// changed is committed.
    /// Journals that `op` was asked of `token` through this handle's interface, before the
    /// operation is sent: the flush that precedes its answer commits the entry with it.
    /// Nothing for a session that does not exist.
    fn asked(&self, token: &Token, op: &'static str) {
        if self.snapshot.contains_key(token) {
            self.store
                .journal(token, journal::entry::operation(op, self.origin));
        }
    }

    /// A handle whose operations the journal records as asked through `origin` (`socket`,
    /// `http`...); operations of other handles say `embedded`.
    pub fn via(&self, origin: &'static str) -> Self {
        Self {
            origin,
            ..self.clone()
        }
    }

    async fn lifecycle(&self, token: Token, operation: Operation) -> Result<SessionInfo, Error> {
        let op = operation.name();
        self.call_on(&token.clone(), Some(op), |reply| SupervisorMsg::Operate {
            token,
            operation,
            reply: Waiter::Info(reply),
        })
        .await
    }

    async fn call<T: Send + 'static>(
        &self,
        build: impl FnOnce(RpcReplyPort<Result<T, Error>>) -> SupervisorMsg,
    ) -> Result<T, Error> {
        let answer = self.ask(build).await;
        self.store.flush().await?;
        answer
    }

    /// [`Supervisor::call`] for operation `op` on `token` (journaled as asked, when named):
    /// answered with the refusal when a change of the session made from here on (its journal
    /// entry included) was dropped because this node no longer holds the session. It may
    /// also be a change the supervisor made to the session meanwhile: the answer then errs
    /// on the side of "not saved".
    async fn call_on<T: Send + 'static>(
        &self,
        token: &Token,
        op: Option<&'static str>,
        build: impl FnOnce(RpcReplyPort<Result<T, Error>>) -> SupervisorMsg,
    ) -> Result<T, Error> {
        let point = self.store.mark_point();
        if let Some(op) = op {
            self.asked(token, op);
        }
        let answer = self.call(build).await;
        match self.store.refusal_since(token, point) {
            Some(refusal) => Err(StoreError::NotSaved(refusal).into()),
            None => answer,
        }
    }

    /// This node now holds session `token` (in a cluster, it claimed the session's lease):
    /// the session comes in from its stored record and is restored as at start-up (connected
    /// through admission control if it is meant to run). A session already here is reported
    /// as it is; one still closing here after [`Supervisor::relinquish`] is refused with
    /// [`Error::Conflict`] until it is gone, and one with no stored record with
    /// [`Error::NotFound`].
    pub async fn adopt(&self, token: &str) -> Result<SessionInfo, Error> {
        let token = Token::parse(token)?;
        let text = self
            .db
            .load_record(token.as_str())
            .await
            .map_err(StoreError::Db)?
            .ok_or_else(|| Error::NotFound(token.clone()))?;
        let record = SessionRecord::decode(token.as_str(), &text)?;
        self.ask(|reply| SupervisorMsg::Adopt {
            token,
            record: Box::new(record),
            reply,
        })
        .await
    }

    /// This node no longer holds session `token` (in a cluster, its lease was released or
    /// taken over): its connection here is closed at once and the session is forgotten here,
    /// with nothing written or deleted; whoever waits on it is told another node holds it.
    /// Answers once it is gone here (its connection closed, or a deletion under way finished:
    /// a graceful hand-over releases the lease only then), with whether the session was here.
    pub async fn relinquish(&self, token: &str) -> Result<bool, Error> {
        let token = Token::parse(token)?;
        self.ask(|reply| SupervisorMsg::Relinquish { token, reply })
            .await
    }

    /// Creates a session (stopped). `token` is chosen by the caller or generated; `name`
    /// defaults to the token.
    pub async fn create(
        &self,
        name: Option<String>,
        token: Option<&str>,
    ) -> Result<SessionInfo, Error> {
        self.create_with_proxy(name, token, None).await
    }

    /// Creates a session (stopped) whose connections all go through `proxy`
    /// (`socks5://`, `socks5h://` or `http://`, see [`ProxyUrl`]). A malformed proxy is
    /// refused with [`Error::InvalidRequest`] and nothing is created.
    pub async fn create_with_proxy(
        &self,
        name: Option<String>,
        token: Option<&str>,
        proxy: Option<&str>,
    ) -> Result<SessionInfo, Error> {
        let token = token.map(Token::parse).transpose()?;
        let proxy = parse_proxy(proxy)?;
        if let Store::Shared(_) = &self.db {
            return self.create_in_cluster(name, token, proxy).await;
        }
        self.call(|reply| SupervisorMsg::Create {
            name,
            token,
            proxy,
            reply,
        })
        .await
    }

    /// Creates a session on a cluster's store: it joins the cluster, stopped and unowned, in one
    /// commit, before this answers; the node that claims it runs it. Refused with
    /// [`Error::AlreadyExists`] when the token is taken anywhere in the cluster.
    async fn create_in_cluster(
        &self,
        name: Option<String>,
        token: Option<Token>,
        proxy: Option<ProxyUrl>,
    ) -> Result<SessionInfo, Error> {
        let token = token.unwrap_or_else(Token::generate);
        let record = SessionRecord::created(name, &token, proxy);
        let created = self
            .db
            .create_session(token.as_str(), &record.encode()?)
            .await
            .map_err(StoreError::Db)?;
        if !created {
            return Err(Error::AlreadyExists(token));
        }
        tracing::info!(token = %token, "session created in the cluster");
        Ok(super::entry::Entry::new(token, record, tokio::time::Instant::now()).info())
    }

    /// Sets the session's proxy (`None` clears it: the link's default applies). It is saved
    /// before this answers and used from the session's next connection on; with `reconnect`,
    /// a session meant to run is restarted now (refused within the restart cooldown, and then
    /// nothing is changed). A malformed proxy is refused and nothing is saved.
    pub async fn set_proxy(
        &self,
        token: &str,
        proxy: Option<&str>,
        reconnect: bool,
    ) -> Result<SessionInfo, Error> {
        let token = Token::parse(token)?;
        let proxy = parse_proxy(proxy)?;
        self.call_on(&token.clone(), Some("set_proxy"), |reply| {
            SupervisorMsg::SetProxy {
                token,
                proxy,
                reconnect,
                reply,
            }
        })
        .await
    }

    /// Starts a session. Idempotent: a running session is left alone and reported as it is.
    pub async fn start_session(
        &self,
        token: &str,
        options: OpenOptions,
    ) -> Result<SessionInfo, Error> {
        let token = Token::parse(token)?;
        self.lifecycle(token, Operation::Start(options)).await
    }

    /// Stops a session, keeping its credentials. Answers once the connection is closed.
    pub async fn stop(&self, token: &str) -> Result<SessionInfo, Error> {
        let token = Token::parse(token)?;
        self.lifecycle(token, Operation::Stop).await
    }

    /// Closes a fresh connection after closing the current one; keeps credentials and resets
    /// the attempts. Refused within the cooldown after the last start unless `force`.
    pub async fn restart(&self, token: &str, force: bool) -> Result<SessionInfo, Error> {
        let token = Token::parse(token)?;
        self.lifecycle(token, Operation::Restart { force }).await
    }

    /// Asks for a new QR code (while one is shown, or after they expired).
    pub async fn refresh_qr(&self, token: &str) -> Result<SessionInfo, Error> {
        let token = Token::parse(token)?;
        self.lifecycle(token, Operation::RefreshQr).await
    }

    /// Logs out: closes the connection and deletes the credentials; a new QR scan is needed.
    pub async fn logout(&self, token: &str) -> Result<SessionInfo, Error> {
        let token = Token::parse(token)?;
        self.lifecycle(token, Operation::Logout).await
    }

    /// Deletes a session: closes it and removes `sessions/<token>/` entirely.
    pub async fn delete(&self, token: &str) -> Result<(), Error> {
        let token = Token::parse(token)?;
        let op = Operation::Delete.name();
        self.call_on(&token.clone(), Some(op), |reply| SupervisorMsg::Operate {
            token,
            operation: Operation::Delete,
            reply: Waiter::Unit(reply),
        })
        .await
    }

    /// Closes whatever is there, cancels any pending restart, and leaves it `stopped`.
    pub async fn force_cleanup(&self, token: &str) -> Result<SessionInfo, Error> {
        let token = Token::parse(token)?;
        self.lifecycle(token, Operation::ForceCleanup).await
    }

    /// Sets the reconnect attempts back to 0.
    pub async fn reset_reconnect(&self, token: &str) -> Result<SessionInfo, Error> {
        let token = Token::parse(token)?;
        self.call_on(&token.clone(), Some("reset_reconnect"), |reply| {
            SupervisorMsg::ResetReconnect { token, reply }
        })
        .await
    }

    /// Queues a text message of a session that is connected or on its way back (queued,
    /// connecting, pairing, backing off), and answers once it is stored: the drain of the
    /// connected session sends it, in order and paced. A request whose `key` was used before
    /// answers with that message and sends nothing. Bad input is refused with
    /// [`Error::InvalidRequest`] and nothing is stored.
    pub async fn send(&self, token: &str, request: SendRequest) -> Result<OutgoingMessage, Error> {
        let token = Token::parse(token)?;
        let state = self
            .snapshot
            .get(&token)
            .map(|info| info.state)
            .ok_or_else(|| Error::NotFound(token.clone()))?;
        let snapshot = self.snapshot.clone();
        let current = || snapshot.get(&token).map(|info| info.state);
        let (message, _new) = self.outbox.accept(&token, state, current, request).await?;
        Ok(message)
    }

    /// [`Supervisor::send`] without a key; resolves to the message id.
    pub async fn send_text(&self, token: &str, to: &str, text: &str) -> Result<String, Error> {
        let request = SendRequest {
            to: to.to_owned(),
            text: text.to_owned(),
            key: None,
        };
        Ok(self.send(token, request).await?.id)
    }

    /// One outgoing message of a session, by its id or its idempotency key.
    pub async fn message_status(
        &self,
        token: &str,
        id_or_key: &str,
    ) -> Result<OutgoingMessage, Error> {
        let token = self.known(token)?;
        self.outbox.get(&token, id_or_key).await
    }

    /// A session's queued and failed messages, oldest first (at most `limit`).
    pub async fn outbox(&self, token: &str, limit: usize) -> Result<Vec<OutgoingMessage>, Error> {
        let token = self.known(token)?;
        self.outbox.pending(&token, limit).await
    }

    /// Queues a failed message again (its attempts start over, and its time to live).
    pub async fn retry_message(
        &self,
        token: &str,
        id_or_key: &str,
    ) -> Result<OutgoingMessage, Error> {
        self.operate(token, id_or_key, MessageEvent::Retry).await
    }

    /// Cancels a queued or failed message: it will never be sent.
    pub async fn cancel_message(
        &self,
        token: &str,
        id_or_key: &str,
    ) -> Result<OutgoingMessage, Error> {
        self.operate(token, id_or_key, MessageEvent::Cancel).await
    }

    async fn operate(
        &self,
        token: &str,
        id_or_key: &str,
        event: MessageEvent,
    ) -> Result<OutgoingMessage, Error> {
        let token = self.known(token)?;
        let state = self.state_of(&token)?;
        self.outbox.operate(&token, state, id_or_key, event).await
    }

    /// Until when a session's sends to new chats are paused (a 463 refusal), if they are.
    pub fn new_chats_paused_until(&self, token: &str) -> Option<std::time::SystemTime> {
        let token = Token::parse(token).ok()?;
        self.outbox.paused_until(&token)
    }

    fn state_of(&self, token: &Token) -> Result<crate::state::SessionState, Error> {
        self.snapshot
            .get(token)
            .map(|info| info.state)
            .ok_or_else(|| Error::NotFound(token.clone()))
    }

    fn known(&self, token: &str) -> Result<Token, Error> {
        let token = Token::parse(token)?;
        if !self.snapshot.contains_key(&token) {
            return Err(Error::NotFound(token));
        }
        Ok(token)
    }

    /// Reaps stuck sessions now (what the janitor does periodically).
    pub async fn reap_now(&self) -> Result<Vec<Reaped>, Error> {
        self.call(|reply| SupervisorMsg::Reap { reply: Some(reply) })
            .await
    }

    /// Replaces the policy, janitor and admission settings; live sessions are not touched.
    pub async fn reload(
        &self,
        policy: PolicyConfig,
        janitor: JanitorConfig,
        admission: AdmissionConfig,
    ) -> Result<(), Error> {
        policy.validate().map_err(Error::Config)?;
        janitor.validate().map_err(Error::Config)?;
        admission.validate().map_err(Error::Config)?;
        self.call(|reply| SupervisorMsg::Reload {
            policy,
            janitor,
            admission,
            reply,
        })
        .await
    }

    /// Resolves once every change to the session records made so far is committed.
    pub async fn flush(&self) -> Result<(), Error> {
        Ok(self.store.flush().await?)
    }

    /// Answers once the supervisor's loop has handled a message: proof of life.
    pub async fn ping(&self) -> Result<(), Error> {
        self.ask(|reply| SupervisorMsg::Ping { reply }).await
    }

    /// One session's current view, from the snapshot.
    pub fn status(&self, token: &str) -> Result<SessionInfo, Error> {
        let token = Token::parse(token)?;
        self.snapshot
            .get(&token)
            .map(|info| info.clone())
            .ok_or(Error::NotFound(token))
    }

    /// Every session with counts per state, from the snapshot.
    pub fn list(&self) -> SessionList {
        let mut sessions: Vec<SessionInfo> = self
            .snapshot
            .iter()
            .map(|item| item.value().clone())
            .collect();
        sessions.sort_by(|a, b| a.token.cmp(&b.token));
        let mut counts = std::collections::BTreeMap::new();
        for info in &sessions {
            *counts.entry(info.state).or_insert(0) += 1;
        }
        SessionList { sessions, counts }
    }

    /// How many sessions are in each state (states with none are absent), from the snapshot,
    /// without copying any session.
    pub fn counts(&self) -> std::collections::BTreeMap<crate::state::SessionState, usize> {
        let mut counts = std::collections::BTreeMap::new();
        for item in self.snapshot.iter() {
            *counts.entry(item.value().state).or_insert(0) += 1;
        }
        counts
    }

    /// A stream of events (state changes, QR codes, messages, removals) from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<SessionEvent> {
        self.events.subscribe()
    }

    /// `token`'s history, oldest first, pairing secrets left out: the entries after `since`,
    /// or (`None`) the newest ones; at most `limit` (capped at [`journal::MAX_READ`]). A
    /// deleted session's last entry (its removal) stays until the journal's age limit; a
    /// token with neither a session nor entries is not found.
    pub async fn history(
        &self,
        token: &str,
        since: Option<i64>,
        limit: usize,
    ) -> Result<Vec<HistoryEntry>, Error> {
        let token = Token::parse(token)?;
        let limit = limit.clamp(1, journal::MAX_READ);
        let stored = match since {
            Some(since) => {
                self.db
                    .read_journal(Some(token.to_string()), since, limit)
                    .await
            }
            None => self.db.journal_tail(token.to_string(), limit).await,
        }
        .map_err(|e| Error::Store(StoreError::Db(e)))?;
        if stored.is_empty() && !self.snapshot.contains_key(&token) {
            return Err(Error::NotFound(token));
        }
        Ok(stored.into_iter().map(HistoryEntry::shown).collect())
    }

    /// The number of the last journal entry committed; it changes after every commit that
    /// appends entries (to follow history, and for webhooks).
    pub fn journal_head(&self) -> watch::Receiver<i64> {
        self.store.journal_head()
    }

    /// How many journal entries were dropped because the database could not keep up (or was
    /// failing) with [`crate::store::JOURNAL_QUEUE`] entries waiting.
    pub fn journal_dropped(&self) -> u64 {
        self.store.journal_dropped()
    }

    /// How many timers the supervisor has queued (retries, ban and quarantine ends, and each
    /// connection's stability timer): at most two per session, since a cancelled timer leaves
    /// the queue at once.
    pub fn timers_queued(&self) -> usize {
        self.timers.load(Ordering::Relaxed)
    }

    /// The session store.
    pub fn db(&self) -> &Store {
        &self.db
    }

    /// Whether the supervisor is still running.
    pub fn is_running(&self) -> bool {
        matches!(
            self.actor.get_status(),
            ractor::ActorStatus::Running | ractor::ActorStatus::Upgrading
        )
    }

    /// Resolves once the supervisor has ended: after [`Supervisor::shutdown`], or on its own
    /// (a panic in its handler ends it, and no session is managed any more). An application
    /// that did not ask for the shutdown should treat it as fatal; `warden serve` exits with
    /// a non-zero status so that its service manager restarts it.
    pub async fn stopped(&self) {
        let mut ended = self.ended.clone();
        let _ = ended.wait_for(|ended| *ended).await;
    }

    /// Shuts down gracefully: every connection closed, every record committed, within the
    /// configured bound. The records keep their desired state, so the next start restores
    /// them. Fails, naming what was stuck, when anything did not finish in time.
    pub async fn shutdown(&self) -> Result<(), Error> {
        let bound = self.shutdown_timeout + Duration::from_secs(1);
        let stopped = self
            .actor
            .stop_and_wait(Some("shutdown".into()), Some(bound))
            .await;
        let mut stuck = Vec::new();
        if let Err(e) = stopped {
            stuck.push(format!("the supervisor did not stop ({e})"));
        }
        let connections = self.stuck.load(Ordering::SeqCst);
        if connections > 0 {
            stuck.push(format!("{connections} connections did not close"));
        }
        match tokio::time::timeout(self.shutdown_timeout, self.store.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => stuck.push(format!("session records were not saved: {e}")),
            Err(_) => stuck.push("session records were not saved in time".into()),
        }
        if stuck.is_empty() {
            Ok(())
        } else {
            Err(Error::Unavailable(format!(
                "shutdown did not finish: {}",
                stuck.join("; ")
            )))
        }
    }
}

/// Parses an optional proxy URL for an operation.
fn parse_proxy(proxy: Option<&str>) -> Result<Option<ProxyUrl>, Error> {
    proxy
        .map(ProxyUrl::parse)
        .transpose()
        .map_err(|e| Error::InvalidRequest(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scripted::{Script, ScriptedLink};

    /// A supervisor that dies on its own (as a panic in its handler ends it) is seen to be
    /// gone: `stopped` resolves, `is_running` says so, and operations fail as unavailable.
    #[tokio::test]
    async fn stopped_resolves_when_the_supervisor_dies_on_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open_in(dir.path()).unwrap();
        let config = SupervisorConfig::new(dir.path()).with_db(db);
        let link = Arc::new(ScriptedLink::new(Script::new()));
        let (supervisor, _) = Supervisor::start(config, link).await.unwrap();
        let waiting = tokio::time::timeout(Duration::from_millis(50), supervisor.stopped());
        assert!(waiting.await.is_err(), "still running");
        assert!(supervisor.is_running());

        supervisor.actor.kill();
        tokio::time::timeout(Duration::from_secs(5), supervisor.stopped())
            .await
            .expect("stopped resolves once the actor is gone");
        assert!(!supervisor.is_running());
        assert!(matches!(
            supervisor.ping().await,
            Err(Error::Unavailable(_))
        ));
    }
}
