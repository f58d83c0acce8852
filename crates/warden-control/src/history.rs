//! The `history` op: a session's journal, once or followed.

use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncWrite;
use tokio_util::sync::CancellationToken;
use warden_core::journal::MAX_READ;
use warden_core::{Error, HistoryEntry, Supervisor};

use crate::lines::LineReader;
use crate::protocol::{ErrorBody, EventLine, HistoryEntryView, HistoryView, Reply};
use crate::server::{end_stream, stream_ends, write_line};

/// How many entries a reply carries when the request says nothing.
pub const DEFAULT_ENTRIES: usize = 100;

/// What a `history` request asks for.
pub(crate) struct Ask {
    pub token: String,
    pub since: Option<i64>,
    pub limit: Option<usize>,
    /// When following in a cluster: other nodes commit too, unseen here, so the journal is
    /// also looked at this often.
    pub look_every: Option<Duration>,
}

fn views(entries: &[HistoryEntry]) -> Vec<HistoryEntryView> {
    entries.iter().map(HistoryEntryView::from).collect()
}

/// The first answer: entries after `since`, or the newest ones; and the last `seq` in it.
pub(crate) async fn read(s: &Supervisor, ask: &Ask) -> Result<(HistoryView, i64), Error> {
    let limit = ask.limit.unwrap_or(DEFAULT_ENTRIES);
    let entries = s.history(&ask.token, ask.since, limit).await?;
    let last = entries
        .last()
        .map_or(ask.since.unwrap_or(0), |entry| entry.seq);
    let view = HistoryView {
        token: ask.token.clone(),
        entries: views(&entries),
    };
    Ok((view, last))
}

/// Answers a `history` request that does not follow.
pub(crate) async fn once(s: &Supervisor, id: Value, ask: Ask) -> Reply {
    match read(s, &ask).await {
        Ok((view, _)) => Reply::ok(id, view),
        Err(e) => Reply::err(id, ErrorBody::from(&e)),
    }
}

/// Answers a `history` request that follows: the reply, then an [`EventLine::History`] line
/// for each later batch of committed entries, until the client hangs up or the daemon stops.
pub(crate) async fn follow<R, W>(
    s: &Supervisor,
    reader: &mut LineReader<R>,
    writer: &mut W,
    cancel: &CancellationToken,
    timeout: Duration,
    id: Value,
    ask: Ask,
) where
    R: tokio::io::AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    // Subscribe before reading, so no commit falls between the two.
    let mut head = s.journal_head();
    head.borrow_and_update();
    let (view, mut last) = match read(s, &ask).await {
        Ok(first) => first,
        Err(e) => {
            let reply = Reply::err(id, ErrorBody::from(&e));
            let _ = write_line(writer, &reply, timeout).await;
            return;
        }
    };
    if write_line(writer, &Reply::ok(id, view), timeout)
        .await
        .is_err()
    {
        return;
    }
    loop {
        tokio::select! {
            ended = stream_ends(reader, cancel) => {
                end_stream(writer, ended, timeout).await;
                return;
            }
            // In a cluster other nodes commit too, unseen here: look every so often as well.
            () = tokio::time::sleep(ask.look_every.unwrap_or_default()), if ask.look_every.is_some() => {}
            changed = head.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
        loop {
            let entries = match s.history(&ask.token, Some(last), MAX_READ).await {
                Ok(entries) => entries,
                // Nothing new of a session this node does not run (in a cluster): not an end.
                Err(Error::NotFound(_)) if ask.look_every.is_some() => break,
                Err(e) => {
                    let closed = EventLine::Closed {
                        reason: e.to_string(),
                    };
                    let _ = write_line(writer, &closed, timeout).await;
                    return;
                }
            };
            let Some(newest) = entries.last().map(|e| e.seq) else {
                break;
            };
            last = newest;
            let line = EventLine::History {
                token: ask.token.clone(),
                entries: views(&entries),
            };
            if write_line(writer, &line, timeout).await.is_err() {
                tracing::info!("disconnecting a history follower that does not keep up");
                return;
            }
            if entries.len() < MAX_READ {
                break;
            }
        }
    }
}
