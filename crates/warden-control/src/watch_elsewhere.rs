//! `watch` across a cluster's nodes.
//!
//! - One session that another node runs ([`watch_elsewhere`]): its node is asked for the
//!   session's view every [`ASK_EVERY`], and the view is sent whenever it changed (its QR code
//!   and pairing code included).
//! - Every session ([`OtherNodes`]): this node's events as they happen, and the other nodes'
//!   sessions from their lists, every [`ASK_EVERY`], when they change.
//!
//! Messages and the other events of a session are seen on its own node's `watch`.

use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncWrite;
use tokio_util::sync::CancellationToken;

use crate::lines::LineReader;
use crate::peers::Peers;
use crate::protocol::{ErrorBody, ErrorCode, EventLine, Op, Reply, SessionView, WatchingView};
use crate::server::{Context, end_stream, stream_ends, write_line};

/// How often the session's node is asked.
pub const ASK_EVERY: Duration = Duration::from_secs(1);

/// The session's view, here if this node runs it now, else from its node: `Err` with the
/// reply when there is none (`None`: the cluster has no such session).
async fn view_of(
    context: &Context,
    peers: &dyn Peers,
    token: &str,
) -> Result<SessionView, Option<Reply>> {
    if let Ok(info) = context.supervisor.status(token) {
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

/// Streams the session's view to a client until it hangs up, the daemon stops, or the session
/// is deleted. `missing` is this node's answer when the cluster has no such session.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn watch_elsewhere<R, W>(
    reader: &mut LineReader<R>,
    writer: &mut W,
    context: &Context,
    peers: &dyn Peers,
    cancel: &CancellationToken,
    id: Value,
    token: &str,
    missing: ErrorBody,
) where
    R: tokio::io::AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let timeout = context.write_timeout;
    let mut last = match view_of(context, peers, token).await {
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
    let first = EventLine::Session {
        session: Box::new(last.clone()),
    };
    if write_line(writer, &watching, timeout).await.is_err()
        || write_line(writer, &first, timeout).await.is_err()
    {
        return;
    }
    loop {
        tokio::select! {
            ended = stream_ends(reader, cancel) => {
                end_stream(writer, ended, timeout).await;
                return;
            }
            () = tokio::time::sleep(ASK_EVERY) => {}
        }
        let view = match view_of(context, peers, token).await {
            Ok(view) => view,
            Err(reply) => {
                let gone = reply.as_ref().is_none_or(|r| {
                    r.error
                        .as_ref()
                        .is_some_and(|e| e.code == ErrorCode::NotFound)
                });
                if gone {
                    let closed = EventLine::Closed {
                        reason: "the session was deleted".into(),
                    };
                    let _ = write_line(writer, &closed, timeout).await;
                    return;
                }
                // Between nodes, or its node is slow: ask again.
                continue;
            }
        };
        if view != last {
            let line = EventLine::Session {
                session: Box::new(view.clone()),
            };
            if write_line(writer, &line, timeout).await.is_err() {
                return;
            }
            last = view;
        }
    }
}

/// `watch` of every session, in a cluster: the sessions other nodes run, as their nodes
/// report them every [`ASK_EVERY`] (one `list` per other node), sent when they change.
#[derive(Default)]
pub(crate) struct OtherNodes {
    last: std::collections::BTreeMap<String, SessionView>,
}

impl OtherNodes {
    /// What changed on the other nodes since the last look: a `session` line for each session
    /// new or changed there, a `removed` line for each one gone from the cluster. A session
    /// that came to this node is left to this node's own events; a node that did not answer
    /// changes nothing.
    /// Looks every [`ASK_EVERY`] (a slow look delays the next, never piles up) and sends
    /// what changed to `lines`, until its receiver is gone.
    pub(crate) async fn follow(
        supervisor: warden_core::Supervisor,
        peers: std::sync::Arc<dyn Peers>,
        lines: tokio::sync::mpsc::Sender<Vec<EventLine>>,
    ) {
        let mut others = Self::default();
        let mut look = tokio::time::interval(ASK_EVERY);
        look.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            look.tick().await;
            let changed = others.changes(&supervisor, peers.as_ref()).await;
            if !changed.is_empty() && lines.send(changed).await.is_err() {
                return;
            }
        }
    }

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
