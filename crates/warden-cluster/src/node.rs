//! One daemon's membership and ownership, run by two tasks with a connection each (the
//! node's whole pool, whatever the number of sessions):
//!
//! - the **heartbeat** task renews this incarnation's lease every R and fences the node at its
//!   deadline, on its own timer, even while a renewal hangs. Once fenced it registers a new
//!   incarnation; the old one never comes back.
//! - the **ownership** task polls every P, and at once when PostgreSQL notifies it that
//!   sessions were added or released (`LISTEN`): it declares silent peers dead ([`Reaper`]), claims
//!   what placement says it should ([`placement`]), notices what it lost, and carries out the
//!   embedder's commands (add, remove, release, leave).
//!
//! The embedder reads [`Node::ownership`] (what this node owns, with each fence) and
//! [`Node::may_dial`] before every connection, and aborts every socket when
//! [`Node::lease`] turns [`Lease::Fenced`]: the heartbeat empties the ownership at that same
//! instant, whatever the ownership task is doing; [`NodeEvent::Lost`] events follow and may
//! lag, so a socket is never closed on them alone. Dropping a [`Node`] stops it as a crash
//! would: its peers take over after T. [`Node::leave`] hands everything over at once.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{Notify, broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{MissedTickBehavior, sleep_until};

use crate::error::ClusterError;
use crate::lease::{Lease, Verdict};
use crate::pg::Pg;
use crate::placement;
use crate::reaper::{NodeKey, Reaper};
use crate::timing::Timing;
use crate::tls::PgTls;

/// How many events a slow subscriber may fall behind before it loses the oldest
/// ([`broadcast`]); [`Node::ownership`] and [`Node::lease`] never lose anything.
pub const EVENTS: usize = 1024;
/// Commands waiting for the ownership task; callers wait for room past it.
const COMMANDS: usize = 64;
/// At most one rebalancing hand-over suggested per this interval.
const REBALANCE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
/// How long a session the embedder declined to move is left out of rebalancing.
const DECLINED_FOR: std::time::Duration = std::time::Duration::from_secs(60);

/// How a node joins the cluster.
#[derive(Clone)]
pub struct NodeConfig {
    /// The database, as a `postgres://` URL or a key=value string (never logged).
    pub database_url: String,
    /// This node's name: stable across restarts, the placement key.
    pub node: String,
    /// Where its control API listens, for peers that forward to it.
    pub addr: Option<String>,
    /// At most this many sessions on this node.
    pub cap: Option<usize>,
    /// The lease timings.
    pub timing: Timing,
    /// TLS to the database (`None`: plain connections).
    pub tls: Option<PgTls>,
}

impl NodeConfig {
    /// A connection to the database, each statement under the timings' deadline.
    async fn connect(&self) -> Result<Pg, ClusterError> {
        Pg::connect_with(
            &self.database_url,
            self.timing.statement_timeout,
            self.tls.as_ref(),
        )
        .await
    }
}

impl std::fmt::Debug for NodeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeConfig")
            .field("node", &self.node)
            .field("addr", &self.addr)
            .field("cap", &self.cap)
            .field("timing", &self.timing)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

/// This node's current incarnation and its lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseView {
    /// The incarnation the lease belongs to.
    pub incarnation: i64,
    /// The lease.
    pub lease: Lease,
}

/// What this node owns: each session with the fence its writes must carry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ownership {
    /// The incarnation that owns them (none while fenced).
    pub incarnation: Option<i64>,
    /// Token → fence.
    pub sessions: BTreeMap<String, i64>,
}

/// A cheap, cloneable view of a node's lease and ownership, for the parts of an embedder that
/// must ask before they dial or write ([`Node::gate`]). It stays valid after the node is
/// dropped: it then holds nothing.
#[derive(Debug, Clone)]
pub struct Gate {
    name: String,
    timing: Timing,
    lease: watch::Receiver<LeaseView>,
    ownership: watch::Receiver<Ownership>,
}

impl Gate {
    /// The node's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The incarnation that holds `token` and its fence, if this node holds it now (whatever
    /// is left of its lease): what a write carries. The database refuses it once stale.
    pub fn held(&self, token: &str) -> Option<(i64, i64)> {
        if self.ownership.has_changed().is_err() {
            return None; // the node is gone
        }
        let ownership = self.ownership.borrow();
        let incarnation = ownership.incarnation?;
        ownership
            .sessions
            .get(token)
            .map(|fence| (incarnation, *fence))
    }

    /// The fence under which this node may dial `token` now: it holds it, and its lease has
    /// at least [`Timing::min_remaining`] left. `None` means: do not connect.
    pub fn may_dial(&self, token: &str) -> Option<i64> {
        self.dial(token).map(|(_, fence)| fence)
    }

    /// [`Gate::may_dial`] with the incarnation the fence belongs to, read together.
    pub fn dial(&self, token: &str) -> Option<(i64, i64)> {
        if self.lease.has_changed().is_err() {
            return None; // the node is gone
        }
        let view = *self.lease.borrow();
        if !matches!(
            view.lease.verdict(now(), &self.timing),
            Verdict::Dial { .. }
        ) {
            return None;
        }
        let ownership = self.ownership.borrow();
        if ownership.incarnation != Some(view.incarnation) {
            return None;
        }
        ownership
            .sessions
            .get(token)
            .map(|fence| (view.incarnation, *fence))
    }
}

/// Why a node fenced itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FenceReason {
    /// D passed since the send time of its last successful renewal.
    Deadline,
    /// A renewal found the incarnation declared dead.
    Reaped,
}

/// What a node did, for logs, metrics and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeEvent {
    /// A new incarnation joined.
    Registered {
        /// Its incarnation.
        incarnation: i64,
    },
    /// The node fenced itself: it owns nothing until it registers again.
    Fenced {
        /// The incarnation that ended.
        incarnation: i64,
        /// Why.
        why: FenceReason,
    },
    /// A session is this node's, under `fence`.
    Claimed {
        /// The session.
        token: String,
        /// Its new fence.
        fence: i64,
    },
    /// A session is no longer this node's (fenced, released, removed or taken).
    Lost {
        /// The session.
        token: String,
    },
    /// This node declared a silent peer dead.
    Reaped {
        /// The peer's incarnation.
        peer: NodeKey,
    },
    /// Placement prefers another node for this session: close it and [`Node::release`] it.
    Rebalance {
        /// The session.
        token: String,
    },
    /// The database stopped answering this node's polls (logged once per outage).
    DatabaseDown {
        /// The first error.
        error: String,
    },
}

enum Command {
    Add(String, oneshot::Sender<Result<bool, ClusterError>>),
    Remove(String, oneshot::Sender<Result<bool, ClusterError>>),
    Release(String, oneshot::Sender<Result<bool, ClusterError>>),
    Decline(String),
    Leave(oneshot::Sender<Result<u64, ClusterError>>),
}

/// A running cluster member. Dropping it stops it as a crash would.
#[derive(Debug)]
pub struct Node {
    name: String,
    timing: Timing,
    lease: watch::Receiver<LeaseView>,
    ownership: watch::Receiver<Ownership>,
    events: broadcast::Sender<NodeEvent>,
    commands: mpsc::Sender<Command>,
    heartbeat: JoinHandle<()>,
    owner: JoinHandle<()>,
}

impl Drop for Node {
    fn drop(&mut self) {
        self.heartbeat.abort();
        self.owner.abort();
    }
}

fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

fn new_incarnation() -> i64 {
    // 62 random bits, positive: never reused in practice.
    (rand::random::<u64>() >> 2) as i64
}

impl Node {
    /// Connects, creates the tables if needed, registers a new incarnation and starts the two
    /// tasks. Fails if the timings are unsafe or the database cannot be reached now.
    pub async fn start(config: NodeConfig) -> Result<Self, ClusterError> {
        Ok(Self::start_with_events(config).await?.0)
    }

    /// [`Node::start`], with a subscription to every event from the first (`Registered`).
    pub async fn start_with_events(
        config: NodeConfig,
    ) -> Result<(Self, broadcast::Receiver<NodeEvent>), ClusterError> {
        config.timing.validate()?;
        let pg = config.connect().await?;
        pg.migrate().await?;
        let incarnation = new_incarnation();
        let key = NodeKey {
            node: config.node.clone(),
            incarnation,
        };
        let sent = now();
        pg.register(&key, config.addr.as_deref()).await?;
        let (events, first) = broadcast::channel(EVENTS);
        let (lease_tx, lease) = watch::channel(LeaseView {
            incarnation,
            lease: Lease::registered(sent, &config.timing),
        });
        let (ownership_tx, ownership) = watch::channel(Ownership {
            incarnation: Some(incarnation),
            sessions: BTreeMap::new(),
        });
        let ownership_tx = Arc::new(ownership_tx);
        let _ = events.send(NodeEvent::Registered { incarnation });
        tracing::info!(node = %config.node, incarnation, "joined the cluster");
        let (commands, commands_rx) = mpsc::channel(COMMANDS);
        let heartbeat = tokio::spawn(heartbeat(
            config.clone(),
            Some(pg),
            lease_tx,
            ownership_tx.clone(),
            events.clone(),
        ));
        let owner = tokio::spawn(
            Owner {
                config: config.clone(),
                pg: None,
                reaper: Reaper::default(),
                waiting: HashMap::new(),
                lease: lease.clone(),
                ownership: ownership_tx,
                events: events.clone(),
                following: Some(incarnation),
                releasing: BTreeMap::new(),
                down: false,
                last_rebalance: None,
                declined: HashMap::new(),
                wake: Arc::new(Notify::new()),
            }
            .run(commands_rx),
        );
        let node = Self {
            name: config.node,
            timing: config.timing,
            lease,
            ownership,
            events,
            commands,
            heartbeat,
            owner,
        };
        Ok((node, first))
    }

    /// This node's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The current incarnation and its lease; changes when it renews, fences or registers.
    pub fn lease(&self) -> watch::Receiver<LeaseView> {
        self.lease.clone()
    }

    /// What this node owns; changes at every claim, loss and release.
    pub fn ownership(&self) -> watch::Receiver<Ownership> {
        self.ownership.clone()
    }

    /// Every event from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<NodeEvent> {
        self.events.subscribe()
    }

    /// The fence under which this node may dial `token` now: it owns it, and its lease has at
    /// least [`Timing::min_remaining`] left. `None` means: do not connect.
    pub fn may_dial(&self, token: &str) -> Option<i64> {
        self.gate().may_dial(token)
    }

    /// A cloneable view of this node's lease and ownership ([`Gate`]).
    pub fn gate(&self) -> Gate {
        Gate {
            name: self.name.clone(),
            timing: self.timing,
            lease: self.lease.clone(),
            ownership: self.ownership.clone(),
        }
    }

    async fn ask<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<Result<T, ClusterError>>) -> Command,
    ) -> Result<T, ClusterError> {
        let (reply, answer) = oneshot::channel();
        let stopped = || ClusterError::Database("the node has stopped".to_owned());
        self.commands
            .send(command(reply))
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// Adds a session to the cluster, unowned: placement gives it a node. False if it existed.
    pub async fn add_session(&self, token: &str) -> Result<bool, ClusterError> {
        self.ask(|reply| Command::Add(token.to_owned(), reply))
            .await
    }

    /// Removes a session this node owns (its socket closed first). False if not owned here.
    /// As with [`Node::release`], an unanswered removal is sent again at every poll.
    pub async fn remove_session(&self, token: &str) -> Result<bool, ClusterError> {
        self.ask(|reply| Command::Remove(token.to_owned(), reply))
            .await
    }

    /// Hands a session back (its socket closed first), for its preferred node to claim. The
    /// session is not this node's from the call on; if the database does not answer, the
    /// error says so and every poll sends the release again until it does.
    pub async fn release(&self, token: &str) -> Result<bool, ClusterError> {
        self.releaser().release(token).await
    }

    /// A cloneable handle that releases sessions ([`Releaser`]), for a task of the caller's
    /// that acts on [`NodeEvent::Rebalance`].
    pub fn releaser(&self) -> Releaser {
        Releaser {
            commands: self.commands.clone(),
        }
    }

    /// Leaves the cluster gracefully (every socket closed first): stops renewing, releases
    /// every session and marks this incarnation dead in one transaction, so that the others
    /// claim at their next poll instead of after T. Returns how many sessions were released.
    pub async fn leave(self) -> Result<u64, ClusterError> {
        // No renewal may race the leave: a renewal that found the incarnation dead would
        // register a new one.
        self.heartbeat.abort();
        let released = self.ask(Command::Leave).await;
        self.owner.abort();
        released
    }
}

/// Releases sessions of a [`Node`] from another task ([`Node::releaser`]); it fails once the
/// node has stopped.
#[derive(Debug, Clone)]
pub struct Releaser {
    commands: mpsc::Sender<Command>,
}

impl Releaser {
    /// The embedder will not move `token` now (a QR code is on show, say): rebalancing
    /// suggests other sessions instead, and this one again after a minute at the earliest.
    pub async fn decline(&self, token: &str) {
        // A stopped node suggests nothing more: nothing to tell it.
        let _ = self.commands.send(Command::Decline(token.to_owned())).await;
    }

    /// [`Node::release`].
    pub async fn release(&self, token: &str) -> Result<bool, ClusterError> {
        let (reply, answer) = oneshot::channel();
        let stopped = || ClusterError::Database("the node has stopped".to_owned());
        self.commands
            .send(Command::Release(token.to_owned(), reply))
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

/// Renews the lease every R; fences at the deadline; registers a new incarnation after.
async fn heartbeat(
    config: NodeConfig,
    mut pg: Option<Pg>,
    lease: watch::Sender<LeaseView>,
    ownership: Arc<watch::Sender<Ownership>>,
    events: broadcast::Sender<NodeEvent>,
) {
    let timing = config.timing;
    loop {
        let view = *lease.borrow();
        let key = NodeKey {
            node: config.node.clone(),
            incarnation: view.incarnation,
        };
        let mut next = tokio::time::Instant::now() + timing.renew_every;
        let mut failing = false;
        let why = loop {
            let Some(deadline) = lease.borrow().lease.deadline() else {
                break FenceReason::Deadline;
            };
            let deadline = tokio::time::Instant::from_std(deadline);
            tokio::select! {
                _ = sleep_until(deadline) => break FenceReason::Deadline,
                _ = sleep_until(next) => {}
            }
            next += timing.renew_every;
            let sent = now();
            let renewed = tokio::select! {
                renewed = renew(&config, &mut pg, &key) => renewed,
                _ = sleep_until(deadline) => {
                    pg = None; // the renewal it abandoned may still hold it
                    break FenceReason::Deadline;
                }
            };
            match renewed {
                Ok(_) => {
                    if failing {
                        tracing::info!(node = %key.node, "lease renewals succeed again");
                        failing = false;
                    }
                    lease.send_modify(|v| v.lease = v.lease.renewed(sent, now(), &timing));
                }
                Err(ClusterError::Reaped) => break FenceReason::Reaped,
                Err(e) => {
                    if !failing {
                        tracing::warn!(node = %key.node, error = %e, "lease renewal failed");
                        failing = true;
                    }
                    if pg.as_ref().is_some_and(Pg::is_broken) {
                        pg = None;
                    }
                }
            }
        };
        lease.send_modify(|v| v.lease = Lease::Fenced);
        // Nothing is this node's from this instant, whatever the ownership task is doing.
        disown(&ownership, None, &events);
        let _ = events.send(NodeEvent::Fenced {
            incarnation: key.incarnation,
            why,
        });
        tracing::error!(
            node = %key.node, incarnation = key.incarnation, ?why,
            "fenced: this node's lease ended; every session on it is dropped"
        );
        // Start afresh under a new incarnation, retrying every R.
        loop {
            tokio::time::sleep(timing.renew_every).await;
            let key = NodeKey {
                node: config.node.clone(),
                incarnation: new_incarnation(),
            };
            let sent = now();
            match register(&config, &mut pg, &key).await {
                Ok(()) => {
                    lease.send_replace(LeaseView {
                        incarnation: key.incarnation,
                        lease: Lease::registered(sent, &timing),
                    });
                    let _ = events.send(NodeEvent::Registered {
                        incarnation: key.incarnation,
                    });
                    tracing::info!(node = %key.node, incarnation = key.incarnation, "joined the cluster again");
                    break;
                }
                Err(_) => pg = None,
            }
        }
    }
}

/// Empties `ownership` and gives it to `incarnation` (none while fenced); a `Lost` event for
/// every session it held.
fn disown(
    ownership: &watch::Sender<Ownership>,
    incarnation: Option<i64>,
    events: &broadcast::Sender<NodeEvent>,
) {
    let mut lost = Vec::new();
    ownership.send_modify(|o| {
        lost = std::mem::take(&mut o.sessions).into_keys().collect();
        o.incarnation = incarnation;
    });
    for token in lost {
        let _ = events.send(NodeEvent::Lost { token });
    }
}

async fn connected<'a>(
    config: &NodeConfig,
    pg: &'a mut Option<Pg>,
) -> Result<&'a Pg, ClusterError> {
    if pg.as_ref().is_none_or(Pg::is_broken) {
        *pg = Some(config.connect().await?);
    }
    Ok(pg.as_ref().expect("connected above"))
}

async fn renew(
    config: &NodeConfig,
    pg: &mut Option<Pg>,
    key: &NodeKey,
) -> Result<i64, ClusterError> {
    connected(config, pg).await?.renew(key).await
}

async fn register(
    config: &NodeConfig,
    pg: &mut Option<Pg>,
    key: &NodeKey,
) -> Result<(), ClusterError> {
    connected(config, pg)
        .await?
        .register(key, config.addr.as_deref())
        .await
}

/// The ownership task's state.
struct Owner {
    config: NodeConfig,
    pg: Option<Pg>,
    reaper: Reaper,
    /// Claimable sessions, and when this node first saw each claimable.
    waiting: HashMap<String, Instant>,
    lease: watch::Receiver<LeaseView>,
    ownership: Arc<watch::Sender<Ownership>>,
    events: broadcast::Sender<NodeEvent>,
    /// The incarnation whose ownership this task keeps.
    following: Option<i64>,
    /// Sessions let go of whose release or removal has not been answered yet (token → fence,
    /// and whether it is a removal): retried at every poll, and never taken back meanwhile.
    releasing: BTreeMap<String, (i64, bool)>,
    down: bool,
    last_rebalance: Option<Instant>,
    /// Sessions the embedder declined to move, and when: not suggested again for
    /// [`DECLINED_FOR`].
    declined: HashMap<String, Instant>,
    /// Woken when sessions become claimable (`LISTEN`), so they are claimed before the next
    /// poll.
    wake: Arc<Notify>,
}

impl Owner {
    async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut ticker = tokio::time::interval(self.config.timing.poll_every);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // The heartbeat task ends first when the node leaves; its commands still run after.
        let mut heartbeat_runs = true;
        loop {
            let wake = self.wake.clone();
            tokio::select! {
                _ = ticker.tick(), if heartbeat_runs => self.poll().await,
                _ = wake.notified(), if heartbeat_runs => self.poll().await,
                changed = self.lease.changed(), if heartbeat_runs => {
                    heartbeat_runs = changed.is_ok();
                    self.follow_lease();
                }
                command = commands.recv() => match command {
                    Some(command) => self.obey(command).await,
                    None => return,
                },
            }
        }
    }

    /// The ownership task's connection, made again (and listening) if it broke.
    async fn connect(&mut self) -> Result<&Pg, ClusterError> {
        if self.pg.as_ref().is_none_or(Pg::is_broken) {
            self.pg = None;
            let pg = self.config.connect().await?;
            pg.listen_for_releases().await?;
            self.wake = pg.wake();
            self.pg = Some(pg);
        }
        Ok(self.pg.as_ref().expect("connected above"))
    }

    /// The incarnation whose lease is held now, if any.
    fn me(&self) -> Option<NodeKey> {
        let view = *self.lease.borrow();
        matches!(view.lease.at(now()), Lease::Held { .. }).then(|| NodeKey {
            node: self.config.node.clone(),
            incarnation: view.incarnation,
        })
    }

    /// Drops everything once the lease is fenced or replaced by a new incarnation.
    fn follow_lease(&mut self) {
        let held = self.me().map(|me| me.incarnation);
        if held == self.following {
            return;
        }
        self.following = held;
        disown(&self.ownership, held, &self.events);
        self.reaper.poll_failed();
        self.waiting.clear();
        self.releasing.clear();
    }

    fn lose(&mut self, token: &str) {
        let mut removed = false;
        self.ownership.send_if_modified(|o| {
            removed = o.sessions.remove(token).is_some();
            removed
        });
        if removed {
            let _ = self.events.send(NodeEvent::Lost {
                token: token.to_owned(),
            });
        }
    }

    /// Records a claim of `me`'s, unless `me`'s lease ended meanwhile (checked under the
    /// ownership's own lock, which the heartbeat takes when it fences).
    fn gain(&mut self, me: &NodeKey, token: String, fence: i64) {
        if self.me().as_ref() != Some(me) {
            return;
        }
        let mut added = false;
        self.ownership.send_if_modified(|o| {
            added = o.incarnation == Some(me.incarnation);
            if added {
                o.sessions.insert(token.clone(), fence);
            }
            added
        });
        if added {
            let _ = self.events.send(NodeEvent::Claimed { token, fence });
        }
    }

    async fn poll(&mut self) {
        self.follow_lease();
        let Some(me) = self.me() else {
            return;
        };
        match self.poll_once(&me).await {
            Ok(()) => {
                if self.down {
                    tracing::info!(node = %me.node, "the cluster database answers again");
                    self.down = false;
                }
            }
            Err(e) => {
                if !self.down {
                    tracing::warn!(node = %me.node, error = %e, "cluster poll failed");
                    let _ = self.events.send(NodeEvent::DatabaseDown {
                        error: e.to_string(),
                    });
                    self.down = true;
                }
                if self.pg.as_ref().is_some_and(Pg::is_broken) {
                    self.pg = None;
                }
            }
        }
    }

    async fn poll_once(&mut self, me: &NodeKey) -> Result<(), ClusterError> {
        let timing = self.config.timing;
        self.connect().await?;
        let pg = self.pg.as_ref().expect("connected above");

        // Releases whose answer was lost: again, until the database answers.
        let pending: Vec<(String, (i64, bool))> = self
            .releasing
            .iter()
            .map(|(t, f)| (t.clone(), *f))
            .collect();
        for (token, (fence, remove)) in pending {
            if remove {
                pg.remove_session(me, &token, fence).await?;
            } else {
                pg.release(me, &token, fence).await?;
            }
            self.releasing.remove(&token);
        }

        // Membership: declare silent peers dead. Time this node could not observe never
        // counts against a peer: a failed read restarts every timer.
        let rows = match pg.nodes().await {
            Ok(rows) => rows,
            Err(e) => {
                self.reaper.poll_failed();
                return Err(e);
            }
        };
        for (peer, beat) in self.reaper.observe(now(), &rows, me, &timing) {
            if pg.reap(&peer, beat).await? {
                tracing::warn!(peer = %peer.node, incarnation = peer.incarnation, "declared a silent node dead");
                let _ = self.events.send(NodeEvent::Reaped { peer });
            }
        }
        let mut live: Vec<String> = rows
            .iter()
            .filter(|r| !r.dead)
            .map(|r| r.key.node.clone())
            .collect();
        live.sort();
        live.dedup();

        // What the database says this incarnation owns: losses, and claims whose answer was
        // lost (a timed-out claim that committed).
        let in_db: BTreeMap<String, i64> = pg.owned(me).await?.into_iter().collect();
        let known = self.ownership.borrow().sessions.clone();
        for (token, fence) in &known {
            if in_db.get(token) != Some(fence) {
                self.lose(token);
            }
        }
        if self.me().as_ref() != Some(me) {
            return Ok(()); // fenced meanwhile: claim nothing
        }
        for (token, fence) in &in_db {
            if known.get(token) != Some(fence) && !self.releasing.contains_key(token) {
                self.gain(me, token.clone(), *fence);
            }
        }

        // Claims.
        let pg = self.pg.as_ref().expect("connected above");
        let claimable = pg.claimable().await?;
        let seen_at = now();
        self.waiting
            .retain(|t, _| claimable.iter().any(|(c, _)| c == t));
        for (token, seen) in claimable {
            let waited =
                seen_at.duration_since(*self.waiting.entry(token.clone()).or_insert(seen_at));
            let owned = self.ownership.borrow().sessions.len();
            if !placement::may_claim(
                &me.node,
                &token,
                &live,
                waited,
                timing.grace,
                owned,
                self.config.cap,
            ) {
                continue;
            }
            // Never claim on a lease that could run out before the session connects.
            let lease = self.lease.borrow().lease;
            if !matches!(lease.verdict(now(), &timing), Verdict::Dial { .. }) {
                break;
            }
            let pg = self.pg.as_ref().expect("connected above");
            if let Some(fence) = pg.claim(me, &token, seen).await? {
                self.waiting.remove(&token);
                // Not if the lease ended while the claim was on its way: the session stays
                // this incarnation's in the database until it is declared dead.
                self.gain(me, token, fence);
            }
        }

        // Rebalancing: at most one suggestion per second.
        if self
            .last_rebalance
            .is_none_or(|at| now().duration_since(at) >= REBALANCE_EVERY)
        {
            self.last_rebalance = Some(now());
            let pg = self.pg.as_ref().expect("connected above");
            let counts = pg.counts().await?;
            self.declined
                .retain(|_, at| now().duration_since(*at) < DECLINED_FOR);
            let mine: Vec<String> = self
                .ownership
                .borrow()
                .sessions
                .keys()
                .filter(|token| !self.declined.contains_key(*token))
                .cloned()
                .collect();
            if let Some(token) =
                placement::rebalance_pick(&me.node, &mine, &counts, self.config.cap)
            {
                let _ = self.events.send(NodeEvent::Rebalance {
                    token: token.to_owned(),
                });
            }
        }
        Ok(())
    }

    async fn obey(&mut self, command: Command) {
        let me = self.me();
        let not_held = || ClusterError::Database("this node's lease is not held".to_owned());
        match command {
            Command::Add(token, reply) => {
                let result = match self.connect().await {
                    Ok(pg) => pg.add_session(&token).await,
                    Err(e) => Err(e),
                };
                let _ = reply.send(result);
            }
            Command::Remove(token, reply) | Command::Release(token, reply) if me.is_none() => {
                let _ = token;
                let _ = reply.send(Err(not_held()));
            }
            Command::Remove(token, reply) => {
                let result = self.give_up(me.as_ref(), &token, true).await;
                let _ = reply.send(result);
            }
            Command::Release(token, reply) => {
                let result = self.give_up(me.as_ref(), &token, false).await;
                let _ = reply.send(result);
            }
            Command::Decline(token) => {
                self.declined.insert(token, now());
            }
            Command::Leave(reply) => {
                let key = NodeKey {
                    node: self.config.node.clone(),
                    incarnation: self.lease.borrow().incarnation,
                };
                let lost: Vec<String> = self.ownership.borrow().sessions.keys().cloned().collect();
                for token in lost {
                    self.lose(&token);
                }
                let result = match self.connect().await {
                    Ok(_) => self.pg.as_mut().expect("connected above").leave(&key).await,
                    Err(e) => Err(e),
                };
                let _ = reply.send(result);
            }
        }
    }

    async fn give_up(
        &mut self,
        me: Option<&NodeKey>,
        token: &str,
        remove: bool,
    ) -> Result<bool, ClusterError> {
        let me = me.expect("checked by the caller");
        let Some(fence) = self.ownership.borrow().sessions.get(token).copied() else {
            return Ok(false);
        };
        // Not ours from this moment: nothing here may act on it while the database changes,
        // and no poll takes it back until the database has answered (an unanswered statement
        // may still commit), which every poll asks again.
        self.lose(token);
        self.releasing.insert(token.to_owned(), (fence, remove));
        let pg = self.connect().await?;
        let done = if remove {
            pg.remove_session(me, token, fence).await?
        } else {
            pg.release(me, token, fence).await?
        };
        self.releasing.remove(token);
        Ok(done)
    }
}
