//! Watching sessions that other nodes of a cluster run.
//!
//! [`ElsewhereFeed`] follows what other nodes' sessions do: every session of the other nodes
//! (for `watch` of everything), or one session wherever it runs or moves (for `watch` of one).
//! A task of its own looks at the cluster every [`ASK_EVERY`] through [`Peers::look`] (which
//! a cluster shares among every feed of the node: one look a second, however many watch), so
//! this node's own events never wait for the other nodes. The control socket's `watch` and
//! the HTTP gateway's `GET /events` use the same feeds, beside this node's own events.
//!
//! Messages and the other events of a session are seen on its own node's streams.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use warden_core::Supervisor;

use crate::peers::{LIST, Look, Peers};
use crate::protocol::{ErrorBody, EventLine, SessionView};

/// How often the other nodes are looked at.
pub const ASK_EVERY: Duration = Duration::from_secs(1);

/// Where a session that this node does not run is, at one look at the cluster.
#[derive(Debug, Clone, PartialEq)]
pub enum Whereabouts {
    /// Another node runs it: its view there, with its `node`.
    Listed(Box<SessionView>),
    /// It is in the cluster, but no node reported it: it is moving between nodes, or its node
    /// did not answer.
    Between,
    /// The cluster has no such session.
    Missing,
}

/// Where `token` (which this node does not run) is, from a fresh look at the cluster (never
/// a shared one, which may predate a session just created); `Err` with why when the other
/// nodes cannot be asked.
pub async fn whereabouts(peers: &dyn Peers, token: &str) -> Result<Whereabouts, ErrorBody> {
    let started = tokio::time::Instant::now();
    let look = Look::of(&peers.on_every_node(&LIST).await?, started);
    for (node, list) in &look.lists {
        let found = list
            .as_ref()
            .and_then(|list| list.sessions.iter().find(|v| v.token == token));
        if let Some(view) = found {
            let mut view = view.clone();
            view.node.get_or_insert_with(|| node.clone());
            return Ok(Whereabouts::Listed(Box::new(view)));
        }
    }
    Ok(if look.placements.contains_key(token) {
        Whereabouts::Between
    } else {
        Whereabouts::Missing
    })
}

/// Aborts its task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What other nodes' sessions do, as event lines. A task of its own looks every
/// [`ASK_EVERY`] (a slow look delays the next, never piles up); it holds one look's lines at
/// most until they are read, and ends when the feed is dropped.
pub struct ElsewhereFeed {
    lines: mpsc::Receiver<Vec<EventLine>>,
    supervisor: Supervisor,
    me: String,
    _asking: AbortOnDrop,
}

impl ElsewhereFeed {
    /// Every session other nodes run: a `session` line for each one new or changed there
    /// (with its `node`), a `removed` line for each one gone from the cluster. A session moving
    /// between nodes, or on a node that did not answer, is kept as last seen (until the
    /// cluster no longer has it); a look that failed changes nothing. A session that came to
    /// this node gets one line of its view here; this node's own events tell the rest.
    pub fn every_session(supervisor: Supervisor, peers: Arc<dyn Peers>) -> Self {
        Self::start(OtherNodes::new(supervisor, peers, None))
    }

    /// One session, last seen as `last` (which the caller sent, if any), wherever it runs:
    /// the same lines as [`ElsewhereFeed::every_session`] for it alone, and the feed ends
    /// after its `removed`.
    pub fn one_session(
        supervisor: Supervisor,
        peers: Arc<dyn Peers>,
        token: String,
        last: Option<SessionView>,
    ) -> Self {
        let mut others = OtherNodes::new(supervisor, peers, Some(token.clone()));
        if let Some(view) = last.filter(|_| others.supervisor.status(&token).is_err()) {
            others.last.insert(token, view);
        }
        Self::start(others)
    }

    fn start(mut others: OtherNodes) -> Self {
        let supervisor = others.supervisor.clone();
        let me = others.peers.me().to_owned();
        let (tx, lines) = mpsc::channel(1);
        let asking = tokio::spawn(async move {
            let mut look = tokio::time::interval(ASK_EVERY);
            look.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                look.tick().await;
                let (changed, ended) = others.changes().await;
                if !changed.is_empty() && tx.send(changed).await.is_err() {
                    return;
                }
                if ended {
                    return;
                }
            }
        });
        Self {
            lines,
            supervisor,
            me,
            _asking: AbortOnDrop(asking),
        }
    }

    /// The next lines; `None` once the feed has ended. The view of a session that runs here
    /// is read as the lines are handed over, so it is never older than this node's events
    /// already sent.
    pub async fn next(&mut self) -> Option<Vec<EventLine>> {
        let mut lines = self.lines.recv().await?;
        for line in &mut lines {
            if let EventLine::Session { session } = line
                && let Ok(info) = self.supervisor.status(&session.token)
            {
                let mut view = SessionView::from(&info);
                view.node = Some(self.me.clone());
                **session = view;
            }
        }
        Some(lines)
    }
}

/// The sessions other nodes run, as last seen at the looks (all of them, or `only` one).
struct OtherNodes {
    supervisor: Supervisor,
    peers: Arc<dyn Peers>,
    only: Option<String>,
    last: BTreeMap<String, SessionView>,
    /// Following one session: looks that started before this (shared ones, made before the
    /// caller found the session) are passed over, so that a session just created is never
    /// taken for one deleted.
    since: Option<tokio::time::Instant>,
    /// Watching everything: the sessions this node held at the last look, or that left it
    /// and no look has seen elsewhere yet. One of them deleted before any node listed it is
    /// reported gone (this node's events said nothing when it left).
    held_here: BTreeSet<String>,
}

impl OtherNodes {
    fn new(supervisor: Supervisor, peers: Arc<dyn Peers>, only: Option<String>) -> Self {
        Self {
            since: only.as_ref().map(|_| tokio::time::Instant::now()),
            // What runs here as the watch starts: one handed away before the first look is
            // still followed.
            held_here: if only.is_none() {
                supervisor
                    .list()
                    .sessions
                    .iter()
                    .map(|info| info.token.to_string())
                    .collect()
            } else {
                BTreeSet::new()
            },
            supervisor,
            peers,
            only,
            last: BTreeMap::new(),
        }
    }

    fn wanted(&self, token: &str) -> bool {
        self.only.as_deref().is_none_or(|only| only == token)
    }

    /// What changed since the last look (see [`ElsewhereFeed::every_session`]), and whether
    /// the one session followed is gone.
    async fn changes(&mut self) -> (Vec<EventLine>, bool) {
        let Ok(look) = self.peers.look().await else {
            return (Vec::new(), false);
        };
        if self.since.is_some_and(|since| look.started < since) {
            return (Vec::new(), false);
        }
        let placed = &look.placements;
        let mut lines = Vec::new();
        // Seen in a list at this look, or kept as last seen (on a node that gave none, and
        // still in the cluster).
        let mut current = BTreeSet::new();
        for (node, list) in &look.lists {
            let Some(list) = list else {
                current.extend(
                    self.last
                        .iter()
                        .filter(|(t, v)| {
                            v.node.as_deref() == Some(node.as_str())
                                && placed.contains_key(t.as_str())
                        })
                        .map(|(t, _)| t.clone()),
                );
                continue;
            };
            for view in &list.sessions {
                // Runs here now: this node's own events tell.
                if !self.wanted(&view.token) || self.supervisor.status(&view.token).is_ok() {
                    continue;
                }
                let mut view = view.clone();
                view.node.get_or_insert_with(|| node.clone());
                current.insert(view.token.clone());
                if self.last.get(&view.token) != Some(&view) {
                    lines.push(EventLine::Session {
                        session: Box::new(view.clone()),
                    });
                    self.last.insert(view.token.clone(), view);
                }
            }
        }
        let mut unlisted: Vec<String> = self
            .last
            .keys()
            .filter(|t| !current.contains(*t))
            .cloned()
            .collect();
        // The one session followed, even never seen elsewhere: its deletion ends the feed.
        if let Some(only) = &self.only
            && !current.contains(only)
            && !unlisted.contains(only)
        {
            unlisted.push(only.clone());
        }
        if self.only.is_none() {
            let me = self.peers.me();
            let mut held_here: BTreeSet<String> = look
                .placements
                .iter()
                .filter(|(_, owner)| owner.as_deref() == Some(me))
                .map(|(t, _)| t.clone())
                .collect();
            for token in std::mem::take(&mut self.held_here) {
                if held_here.contains(&token)
                    || current.contains(&token)
                    || self.last.contains_key(&token)
                {
                    continue;
                }
                if self.supervisor.status(&token).is_ok() || placed.contains_key(token.as_str()) {
                    // Still here (being handed away), or between nodes: watched for its
                    // deletion.
                    // Between nodes still: watched for its deletion.
                    held_here.insert(token);
                } else {
                    lines.push(EventLine::Removed { token });
                }
            }
            self.held_here = held_here;
        }
        let mut ended = false;
        for token in unlisted {
            if self.supervisor.status(&token).is_ok() {
                // Came here: its view here once (read as it is handed over), then this
                // node's own events.
                if let Some(view) = self.last.remove(&token) {
                    lines.push(EventLine::Session {
                        session: Box::new(view),
                    });
                }
            } else if !placed.contains_key(token.as_str()) {
                self.last.remove(&token);
                ended = self.only.is_some();
                lines.push(EventLine::Removed { token });
            }
            // Else moving between nodes: kept as last seen, so that its deletion is seen.
        }
        (lines, ended)
    }
}
