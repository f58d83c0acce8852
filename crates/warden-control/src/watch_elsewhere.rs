//! `watch` across a cluster's nodes.
//!
//! - One session that another node runs ([`watch_elsewhere`]): its node is asked for the
//!   session's view every [`ASK_EVERY`], and the view is sent whenever it changed (its QR code
//!   and pairing code included).
//! - Every session: this node's events as they happen, and the other nodes' sessions from
//!   their lists, every [`ASK_EVERY`], when they change.
//!
//! Both are an [`ElsewhereFeed`]: a task of its own does the asking, so this node's own events
//! never wait for the other nodes. The HTTP gateway's `GET /events` uses the same feeds.
//!
//! Messages and the other events of a session are seen on its own node's `watch`.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncWrite;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use warden_core::Supervisor;

use crate::lines::LineReader;
use crate::peers::Peers;
use crate::protocol::{ErrorBody, ErrorCode, EventLine, Op, Reply, SessionView, WatchingView};
use crate::server::{Context, end_stream, stream_ends, write_line};

/// How often the other nodes are asked.
pub const ASK_EVERY: Duration = Duration::from_secs(1);

/// The session's view, here if this node runs it now, else from the node that runs it: `Err`
/// with that node's error reply when there is none (`None`: the cluster has no such session).
pub async fn view_in_cluster(
    supervisor: &Supervisor,
    peers: &dyn Peers,
    token: &str,
) -> Result<SessionView, Option<Reply>> {
    if let Ok(info) = supervisor.status(token) {
        return Ok(SessionView::from(&info));
    }
    let op = Op::Status {
        token: token.to_owned(),
    };
    let reply = peers.on_session(token, &op).await.ok_or(None)?;
    match reply
        .result
        .clone()
        .and_then(|r| serde_json::from_value::<SessionView>(r).ok())
    {
        Some(view) if reply.ok => Ok(view),
        _ => Err(Some(reply)),
    }
}

/// Aborts its task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What other nodes' sessions do, as event lines. A task of its own asks every
/// [`ASK_EVERY`] (a slow look delays the next, never piles up); it holds one look's lines at
/// most until they are read, and ends when the feed is dropped.
pub struct ElsewhereFeed {
    lines: mpsc::Receiver<Vec<EventLine>>,
    _asking: AbortOnDrop,
}

impl ElsewhereFeed {
    /// Every session other nodes run: a `session` line for each one new or changed there, a
    /// `removed` line for each one gone from the cluster. A session that came to this node is
    /// left to this node's own events; a node that did not answer changes nothing.
    pub fn every_session(supervisor: Supervisor, peers: Arc<dyn Peers>) -> Self {
        let (tx, lines) = mpsc::channel(1);
        let asking = tokio::spawn(async move {
            let mut others = OtherNodes::default();
            let mut look = tokio::time::interval(ASK_EVERY);
            look.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                look.tick().await;
                let changed = others.changes(&supervisor, peers.as_ref()).await;
                if !changed.is_empty() && tx.send(changed).await.is_err() {
                    return;
                }
            }
        });
        Self {
            lines,
            _asking: AbortOnDrop(asking),
        }
    }

    /// One session, last seen as `last` (which the caller sent): a `session` line whenever its
    /// view changes, wherever it runs; a `removed` line once the cluster no longer has it, and
    /// then the feed ends. While the session moves between nodes, or its node is slow, the
    /// feed waits.
    pub fn one_session(
        supervisor: Supervisor,
        peers: Arc<dyn Peers>,
        token: String,
        mut last: SessionView,
    ) -> Self {
        let (tx, lines) = mpsc::channel(1);
        let asking = tokio::spawn(async move {
            loop {
                tokio::time::sleep(ASK_EVERY).await;
                let line = match view_in_cluster(&supervisor, peers.as_ref(), &token).await {
                    Ok(view) if view == last => continue,
                    Ok(view) => {
                        last = view.clone();
                        EventLine::Session {
                            session: Box::new(view),
                        }
                    }
                    Err(reply) if is_gone(reply.as_ref()) => {
                        let _ = tx.send(vec![EventLine::Removed { token }]).await;
                        return;
                    }
                    // Between nodes, or its node is slow: ask again.
                    Err(_) => continue,
                };
                if tx.send(vec![line]).await.is_err() {
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

/// Whether a failed look at a session says the cluster no longer has it.
fn is_gone(reply: Option<&Reply>) -> bool {
    reply.is_none_or(|r| {
        r.error
            .as_ref()
            .is_some_and(|e| e.code == ErrorCode::NotFound)
    })
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
    let first = match view_in_cluster(&context.supervisor, peers.as_ref(), token).await {
        Ok(view) => view,
        Err(reply) => {
            let mut reply = reply.unwrap_or_else(|| Reply::err(Value::Null, missing));
            reply.id = id;
            let _ = write_line(writer, &reply, timeout).await;
            return;
        }
    };
    let watching = Reply::ok(
        id,
        WatchingView {
            watching: Some(token.to_owned()),
        },
    );
    let first_line = EventLine::Session {
        session: Box::new(first.clone()),
    };
    if write_line(writer, &watching, timeout).await.is_err()
        || write_line(writer, &first_line, timeout).await.is_err()
    {
        return;
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

/// The sessions other nodes run, as last seen in their lists (one `list` per other node and
/// look).
#[derive(Default)]
struct OtherNodes {
    last: std::collections::BTreeMap<String, SessionView>,
}

impl OtherNodes {
    /// What changed on the other nodes since the last look (see
    /// [`ElsewhereFeed::every_session`]).
    async fn changes(
        &mut self,
        supervisor: &warden_core::Supervisor,
        peers: &dyn Peers,
    ) -> Vec<EventLine> {
        let Ok(gathered) = peers.on_every_node(&Op::List {}).await else {
            return Vec::new();
        };
        let mut lines = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        for (node, reply) in &gathered.replies {
            let Some(list) = reply
                .result
                .clone()
                .and_then(|r| serde_json::from_value::<crate::protocol::ListView>(r).ok())
            else {
                // No answer: what it ran is kept as last seen.
                seen.extend(
                    self.last
                        .iter()
                        .filter(|(_, v)| v.node.as_deref() == Some(node.as_str()))
                        .map(|(t, _)| t.clone()),
                );
                continue;
            };
            for mut view in list.sessions {
                view.node.get_or_insert_with(|| node.clone());
                seen.insert(view.token.clone());
                if self.last.get(&view.token) != Some(&view) {
                    lines.push(EventLine::Session {
                        session: Box::new(view.clone()),
                    });
                    self.last.insert(view.token.clone(), view);
                }
            }
        }
        let in_cluster: std::collections::BTreeSet<&str> = gathered
            .placements
            .iter()
            .map(|(t, _)| t.as_str())
            .collect();
        let gone: Vec<String> = self
            .last
            .keys()
            .filter(|t| !seen.contains(*t))
            .cloned()
            .collect();
        for token in gone {
            self.last.remove(&token);
            let here = supervisor.status(&token).is_ok();
            if !here && !in_cluster.contains(token.as_str()) {
                lines.push(EventLine::Removed { token });
            }
        }
        lines
    }
}
