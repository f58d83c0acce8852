//! A scripted [`Link`]: a test double that plays a given lifecycle per connection attempt.
//!
//! For tests and examples only (feature `scripted-link`); the daemon never uses it. It counts
//! live connections per token, so tests can assert there were never two at once.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::lifecycle::{DisconnectReason, Inbound, IncomingMessage, LifecycleEvent, Receipt};
use crate::link::{
    Connection, LifecycleSink, Link, LinkError, OpenOptions, Outgoing, SendFuture, SendOutcome,
};
use crate::outbox::ReceiptKind;
use crate::token::Token;

mod waiter;
pub use waiter::EventWaiter;

/// One step of a scripted connection.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Report a lifecycle event.
    Emit(LifecycleEvent),
    /// Queue an incoming message or receipt on the bounded inbound path.
    Inbound(Inbound),
    /// Wait this long (on tokio's clock, so paused-clock tests run instantly).
    Wait(Duration),
    /// Panic inside `open`, i.e. inside the session actor (a crashing session).
    PanicOnOpen,
    /// Refuse to open.
    FailOpen(String),
}

/// The steps of one connection. After the last step the connection stays open until closed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Script(pub Vec<Step>);

impl Script {
    /// An empty script: a connection that opens and then just stays there ("connecting").
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a step.
    pub fn then(mut self, step: Step) -> Self {
        self.0.push(step);
        self
    }

    /// Waits `duration`.
    pub fn wait(self, duration: Duration) -> Self {
        self.then(Step::Wait(duration))
    }

    /// Shows a QR code valid for `expires_in`.
    pub fn qr(self, code: &str, expires_in: Duration) -> Self {
        self.then(Step::Emit(LifecycleEvent::QrIssued {
            code: code.into(),
            expires_in,
        }))
    }

    /// Reports a pairing code.
    pub fn pair_code(self, code: &str) -> Self {
        self.then(Step::Emit(LifecycleEvent::PairCode { code: code.into() }))
    }

    /// Reports a successful pairing.
    pub fn paired(self, jid: &str) -> Self {
        self.then(Step::Emit(LifecycleEvent::Paired { jid: jid.into() }))
    }

    /// Reports a login.
    pub fn connected(self, jid: &str) -> Self {
        self.then(Step::Emit(LifecycleEvent::Connected {
            jid: jid.into(),
            name: Some("Scripted".into()),
        }))
    }

    /// Reports an incoming message.
    pub fn message(self, message: IncomingMessage) -> Self {
        self.then(Step::Inbound(Inbound::Message(Box::new(message))))
    }

    /// Ends the connection with `reason`.
    pub fn disconnect(self, reason: DisconnectReason) -> Self {
        self.then(Step::Emit(LifecycleEvent::Disconnected { reason }))
    }

    /// A connection that logs in at once and stays up.
    pub fn login(jid: &str) -> Self {
        Self::new().connected(jid)
    }

    /// A connection that fails to connect after `after`.
    pub fn fail(after: Duration, reason: DisconnectReason) -> Self {
        Self::new().wait(after).disconnect(reason)
    }
}

/// What the scripted link saw for one token.
#[derive(Debug, Clone, Default)]
pub struct TokenStats {
    /// When each connection was opened (tokio's clock).
    pub opens: Vec<Instant>,
    /// The proxy each connection was opened with, in the same order.
    pub proxies: Vec<Option<crate::proxy::ProxyUrl>>,
    /// Connections alive right now.
    pub live: usize,
    /// The most connections ever alive at once.
    pub max_live: usize,
    /// How often the credentials were deleted.
    pub credentials_deleted: u32,
    /// How often the token was forgotten (deleted).
    pub forgotten: u32,
    /// Every send the link was asked for, in order (a message sent again appears again).
    pub sent: Vec<Outgoing>,
    /// When each of them was asked for (tokio's clock).
    pub sent_at: Vec<Instant>,
    /// Incoming messages and receipts the bounded inbound queue refused (it was full).
    pub inbound_dropped: u64,
    /// Connections whose script was played to its last step.
    pub scripts_finished: u32,
}

#[derive(Default)]
struct Inner {
    scripts: HashMap<Token, VecDeque<Script>>,
    stats: HashMap<Token, TokenStats>,
    default: Script,
    /// How many of the next credentials deletions fail.
    failing_deletions: u32,
    /// What the next sends answer, in order; then `Accepted`.
    send_outcomes: VecDeque<Result<SendOutcome, LinkError>>,
    /// The receipt each accepted send is followed by, if any.
    receipts: Option<ReceiptKind>,
}

/// The scripted link. Cheap to clone; clones share scripts and statistics.
#[derive(Clone, Default)]
pub struct ScriptedLink {
    inner: Arc<Mutex<Inner>>,
    /// Credentials deletions wait while a [`ScriptedLink::hold_deletions`] guard is held.
    deletions: Arc<tokio::sync::RwLock<()>>,
}

/// Holds every credentials deletion of a [`ScriptedLink`] until dropped.
pub struct DeletionHold {
    _held: tokio::sync::OwnedRwLockWriteGuard<()>,
}

impl ScriptedLink {
    /// A link that plays `default` for every connection without a queued script.
    pub fn new(default: Script) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                default,
                ..Inner::default()
            })),
            deletions: Arc::default(),
        }
    }

    /// Makes the next sends answer `outcomes`, in order (then they are accepted again).
    pub fn answer_sends(&self, outcomes: impl IntoIterator<Item = Result<SendOutcome, LinkError>>) {
        self.lock().send_outcomes.extend(outcomes);
    }

    /// Follows every accepted send with a receipt of `kind` from the recipient (`None`: no
    /// receipts).
    pub fn send_receipts(&self, kind: Option<ReceiptKind>) {
        self.lock().receipts = kind;
    }

    /// Makes the next credentials deletion fail (a storage error).
    pub fn fail_next_deletion(&self) {
        self.lock().failing_deletions += 1;
    }

    /// Makes credentials deletions wait (once started, they are "running") until the guard
    /// is dropped: for operations that arrive during a logout's deletion.
    pub fn hold_deletions(&self) -> DeletionHold {
        DeletionHold {
            _held: self
                .deletions
                .clone()
                .try_write_owned()
                .expect("deletions are not already held"),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `scripts` for the next connections of `token`, in order.
    pub fn script(&self, token: &str, scripts: impl IntoIterator<Item = Script>) {
        let token = Token::parse(token).expect("a valid token in a test script");
        self.lock()
            .scripts
            .entry(token)
            .or_default()
            .extend(scripts);
    }

    /// What was seen for `token`.
    pub fn stats(&self, token: &str) -> TokenStats {
        let token = Token::parse(token).expect("a valid token");
        self.lock().stats.get(&token).cloned().unwrap_or_default()
    }

    /// The most connections ever alive at once for any single token.
    pub fn max_live_any(&self) -> usize {
        self.lock()
            .stats
            .values()
            .map(|s| s.max_live)
            .max()
            .unwrap_or(0)
    }

    /// Connections alive right now, over all tokens.
    pub fn live_total(&self) -> usize {
        self.lock().stats.values().map(|s| s.live).sum()
    }
}

/// Decrements the live count when the connection is dropped.
struct LiveGuard {
    link: ScriptedLink,
    token: Token,
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        if let Some(stats) = self.link.lock().stats.get_mut(&self.token) {
            stats.live -= 1;
        }
    }
}

struct ScriptedConnection {
    /// Plays the script; aborted when the connection is dropped.
    player: JoinHandle<()>,
    link: ScriptedLink,
    token: Token,
    /// For the receipts that follow sends.
    sink: LifecycleSink,
    // Dropped after `player` is told to abort (`Drop` runs before the fields): the count falls
    // when the connection object goes, which is what "live" means here (a player task still
    // finishing a poll on another thread can only emit to a sink nobody listens to).
    _guard: LiveGuard,
}

impl Drop for ScriptedConnection {
    fn drop(&mut self) {
        self.player.abort();
    }
}

#[async_trait::async_trait]
impl Connection for ScriptedConnection {
    async fn close(&mut self) {
        self.player.abort();
    }

    fn send(&self, message: Outgoing) -> SendFuture<Result<SendOutcome, LinkError>> {
        let mut inner = self.link.lock();
        let outcome = inner
            .send_outcomes
            .pop_front()
            .unwrap_or(Ok(SendOutcome::Accepted));
        let receipt = inner
            .receipts
            .filter(|_| outcome == Ok(SendOutcome::Accepted));
        let stats = inner.stats.entry(self.token.clone()).or_default();
        stats.sent.push(message.clone());
        stats.sent_at.push(Instant::now());
        drop(inner);
        let sink = self.sink.clone();
        Box::pin(async move {
            if let Some(kind) = receipt {
                sink.inbound(Inbound::Receipt(Box::new(Receipt {
                    chat: message.to,
                    ids: vec![message.id],
                    kind,
                })));
            }
            outcome
        })
    }
}

#[async_trait::async_trait]
impl Link for ScriptedLink {
    async fn open(
        &self,
        token: &Token,
        options: OpenOptions,
        sink: LifecycleSink,
    ) -> Result<Box<dyn Connection>, LinkError> {
        let script = {
            let mut inner = self.lock();
            let script = match inner.scripts.get_mut(token).and_then(|q| q.pop_front()) {
                Some(script) => script,
                None => inner.default.clone(),
            };
            let stats = inner.stats.entry(token.clone()).or_default();
            stats.opens.push(Instant::now());
            stats.proxies.push(options.proxy);
            script
        };
        match script.0.first() {
            Some(Step::PanicOnOpen) => panic!("scripted panic while opening {token}"),
            Some(Step::FailOpen(why)) => return Err(LinkError::Open(why.clone())),
            _ => {}
        }
        {
            let mut inner = self.lock();
            let stats = inner.stats.entry(token.clone()).or_default();
            stats.live += 1;
            stats.max_live = stats.max_live.max(stats.live);
        }
        let guard = LiveGuard {
            link: self.clone(),
            token: token.clone(),
        };
        let connection_sink = sink.clone();
        let (stats_link, stats_token) = (self.clone(), token.clone());
        let player = tokio::spawn(async move {
            for step in script.0 {
                match step {
                    Step::Emit(event) => sink.emit(event),
                    Step::Inbound(item) => {
                        if !sink.inbound(item) {
                            let mut inner = stats_link.lock();
                            inner
                                .stats
                                .entry(stats_token.clone())
                                .or_default()
                                .inbound_dropped += 1;
                        }
                    }
                    Step::Wait(duration) => tokio::time::sleep(duration).await,
                    Step::PanicOnOpen | Step::FailOpen(_) => {}
                }
            }
            stats_link
                .lock()
                .stats
                .entry(stats_token.clone())
                .or_default()
                .scripts_finished += 1;
            // Stay open until closed; the sink lives as long as the connection.
            std::future::pending::<()>().await;
            drop(sink);
        });
        Ok(Box::new(ScriptedConnection {
            player,
            link: self.clone(),
            token: token.clone(),
            sink: connection_sink,
            _guard: guard,
        }))
    }

    async fn delete_credentials(&self, token: &Token) -> Result<(), LinkError> {
        drop(self.deletions.read().await);
        let mut inner = self.lock();
        if inner.failing_deletions > 0 {
            inner.failing_deletions -= 1;
            return Err(LinkError::Storage("scripted deletion failure".into()));
        }
        let stats = inner.stats.entry(token.clone()).or_default();
        if stats.live > 0 {
            return Err(LinkError::Storage(
                "credentials deleted while a connection is alive".into(),
            ));
        }
        stats.credentials_deleted += 1;
        Ok(())
    }

    async fn forget(&self, token: &Token) -> Result<(), LinkError> {
        let mut inner = self.lock();
        let stats = inner.stats.entry(token.clone()).or_default();
        if stats.live > 0 {
            return Err(LinkError::Storage(
                "forgotten while a connection is alive".into(),
            ));
        }
        stats.forgotten += 1;
        Ok(())
    }
}
