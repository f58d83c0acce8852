//! `watch` across a cluster's nodes.
//!
//! - One session that another node runs ([`watch_elsewhere`]), or that this node runs now and
//!   may hand over: what other nodes report of it, when it changes, until it is deleted.
//! - Every session: this node's events as they happen, and the other nodes' sessions when
//!   they change.
//!
//! Both are an [`ElsewhereFeed`]: a task of its own looks at the other nodes every
//! [`ASK_EVERY`] through [`Peers::look`] (which a cluster shares among every feed of the
//! node: one gathering a second, however many watch), so this node's own events never wait
//! for the other nodes. The HTTP gateway's `GET /events` uses the same feeds.
//!
//! Messages and the other events of a session are seen on its own node's `watch`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncWrite;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use warden_core::Supervisor;

use crate::lines::LineReader;
use crate::peers::{Gathered, Peers};
use crate::protocol::{ErrorBody, EventLine, ListView, Reply, SessionView, WatchingView};
use crate::server::{Context, end_stream, stream_ends, write_line};

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

/// Where `token` (which this node does not run) is, from one look at the cluster; `Err` with
/// why when the other nodes cannot be asked.
pub async fn whereabouts(peers: &dyn Peers, token: &str) -> Result<Whereabouts, ErrorBody> {
    let gathered = peers.look().await?;
    for (node, list) in lists(&gathered) {
        if let Some(mut view) = list.sessions.into_iter().find(|v| v.token == token) {
            view.node.get_or_insert_with(|| node.to_owned());
            return Ok(Whereabouts::Listed(Box::new(view)));
        }
    }
    Ok(if gathered.placements.iter().any(|(t, _)| t == token) {
        Whereabouts::Between
    } else {
        Whereabouts::Missing
    })
}

/// Each node's list in `gathered`, skipping the nodes that gave none.
fn lists(gathered: &Gathered) -> impl Iterator<Item = (&str, ListView)> {
    gathered.replies.iter().filter_map(|(node, reply)| {
        let list = serde_json::from_value::<ListView>(reply.result.clone()?).ok()?;
        Some((node.as_str(), list))
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
    _asking: AbortOnDrop,
}

impl ElsewhereFeed {
    /// Every session other nodes run: a `session` line for each one new or changed there
    /// (with its `node`), a `removed` line for each one gone from the cluster. A session that
    /// came to this node gets one line of its view here, then this node's own events tell
    /// the rest; a session moving between nodes, or on a node that did not answer, is kept as
    /// last seen; a look that failed changes nothing.
    pub fn every_session(supervisor: Supervisor, peers: Arc<dyn Peers>) -> Self {
        Self::start(OtherNodes::new(supervisor, peers, None))
    }

    /// One session, last seen as `last` (which the caller sent, if any), whether it runs here
    /// now or elsewhere: the same lines as [`ElsewhereFeed::every_session`] for it alone, and
    /// the feed ends after its `removed`. While it runs here, this node's own events tell.
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
            _asking: AbortOnDrop(asking),
        }
    }

    /// The next lines; `None` once the feed has ended.
    pub async fn next(&mut self) -> Option<Vec<EventLine>> {
        self.lines.recv().await
    }
}

/// Streams the session's view to a client until it hangs up, the daemon stops, or the session
/// is deleted. `missing` is this node's answer when the cluster has no such session.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn watch_elsewhere<R, W>(
    reader: &mut LineReader<R>,
    writer: &mut W,
    context: &Context,
    peers: Arc<dyn Peers>,
    cancel: &CancellationToken,
    id: Value,
    token: &str,
    missing: ErrorBody,
) where
    R: tokio::io::AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let timeout = context.write_timeout;
    let first = match whereabouts(peers.as_ref(), token).await {
        Ok(Whereabouts::Listed(view)) => Some(*view),
        Ok(Whereabouts::Between) => None,
        Ok(Whereabouts::Missing) => {
            let _ = write_line(writer, &Reply::err(id, missing), timeout).await;
            return;
        }
        Err(why) => {
            let _ = write_line(writer, &Reply::err(id, why), timeout).await;
            return;
        }
    };
    let watching = Reply::ok(
        id,
        WatchingView {
            watching: Some(token.to_owned()),
        },
    );
    if write_line(writer, &watching, timeout).await.is_err() {
        return;
    }
    if let Some(view) = &first {
        let line = EventLine::Session {
            session: Box::new(view.clone()),
        };
        if write_line(writer, &line, timeout).await.is_err() {
            return;
        }
    }
    let mut feed =
        ElsewhereFeed::one_session(context.supervisor.clone(), peers, token.to_owned(), first);
    loop {
        let lines = tokio::select! {
            ended = stream_ends(reader, cancel) => {
                end_stream(writer, ended, timeout).await;
                return;
            }
            lines = feed.next() => lines,
        };
        let Some(lines) = lines else {
            // The session is gone (its `removed` line was sent): say so and end.
            let closed = EventLine::Closed {
                reason: "the session was deleted".into(),
            };
            let _ = write_line(writer, &closed, timeout).await;
            return;
        };
        for line in lines {
            if write_line(writer, &line, timeout).await.is_err() {
                return;
            }
        }
    }
}

/// The sessions other nodes run, as last seen at the looks (all of them, or `only` one).
struct OtherNodes {
    supervisor: Supervisor,
    peers: Arc<dyn Peers>,
    only: Option<String>,
    last: BTreeMap<String, SessionView>,
}

impl OtherNodes {
    fn new(supervisor: Supervisor, peers: Arc<dyn Peers>, only: Option<String>) -> Self {
        Self {
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
        let Ok(gathered) = self.peers.look().await else {
            return (Vec::new(), false);
        };
        let mut lines = Vec::new();
        let mut listed = BTreeSet::new();
        let answered: Vec<(&str, ListView)> = lists(&gathered).collect();
        for (node, _) in &gathered.replies {
            if !answered.iter().any(|(n, _)| n == node) {
                // No list from it: what it ran is kept as last seen.
                listed.extend(
                    self.last
                        .iter()
                        .filter(|(_, v)| v.node.as_deref() == Some(node.as_str()))
                        .map(|(t, _)| t.clone()),
                );
            }
        }
        for (node, list) in answered {
            for mut view in list.sessions {
                // Runs here now: this node's own events tell.
                if !self.wanted(&view.token) || self.supervisor.status(&view.token).is_ok() {
                    continue;
                }
                view.node.get_or_insert_with(|| node.to_owned());
                listed.insert(view.token.clone());
                if self.last.get(&view.token) != Some(&view) {
                    lines.push(EventLine::Session {
                        session: Box::new(view.clone()),
                    });
                    self.last.insert(view.token.clone(), view);
                }
            }
        }
        let placed: BTreeSet<&str> = gathered
            .placements
            .iter()
            .map(|(t, _)| t.as_str())
            .collect();
        let mut unlisted: Vec<String> = self
            .last
            .keys()
            .filter(|t| !listed.contains(*t))
            .cloned()
            .collect();
        // The one session followed, even never seen elsewhere: its deletion ends the feed.
        if let Some(only) = &self.only
            && !listed.contains(only)
            && !unlisted.contains(only)
        {
            unlisted.push(only.clone());
        }
        let mut ended = false;
        for token in unlisted {
            if let Ok(info) = self.supervisor.status(&token) {
                // Came here: its view here once, then this node's own events.
                if self.last.remove(&token).is_some() {
                    let mut view = SessionView::from(&info);
                    view.node = Some(self.peers.me().to_owned());
                    lines.push(EventLine::Session {
                        session: Box::new(view),
                    });
                }
            } else if !placed.contains(token.as_str()) {
                self.last.remove(&token);
                ended = self.only.is_some();
                lines.push(EventLine::Removed { token });
            }
            // Else moving between nodes: kept as last seen, so that its deletion is seen.
        }
        (lines, ended)
    }
}
