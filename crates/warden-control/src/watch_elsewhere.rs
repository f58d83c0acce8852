//! `watch` of one session that another node of the cluster runs: its node is asked for the
//! session's view every [`ASK_EVERY`], and the view is sent whenever it changed (its QR code
//! and pairing code included). Messages and other events of that session are seen on its own
//! node's `watch`.

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
