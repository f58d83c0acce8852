//! `GET /session/history/{token}`: a session's journal. With `?follow=true` the answer is a
//! stream of server-sent events instead: `history` events, each carrying the control
//! socket's history line (`{"event":"history","token":...,"entries":[...]}`), the first with
//! the entries asked for, then one per batch of new entries as they are committed.

use std::convert::Infallible;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use warden_control::protocol::{EventLine, HistoryEntryView, HistoryView};
use warden_core::journal::MAX_READ;
use warden_core::{HistoryEntry, Supervisor};

use crate::error::ApiError;
use crate::extract::{QueryOf, TokenPath};
use crate::state::AppState;

/// The query of `GET /session/history/{token}`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct HistoryQuery {
    /// Only entries after this `seq`; without it, the newest ones.
    pub since: Option<i64>,
    /// At most this many (default 100, at most 1000).
    pub limit: Option<usize>,
    /// Stream new entries as server-sent events.
    pub follow: bool,
    /// The API key, for clients that cannot send headers (checked by the auth layer).
    pub api_key: Option<String>,
}

fn views(entries: &[HistoryEntry]) -> Vec<HistoryEntryView> {
    entries.iter().map(HistoryEntryView::from).collect()
}

/// `GET /session/history/{token}`.
pub async fn history(
    State(app): State<Arc<AppState>>,
    TokenPath(token): TokenPath,
    QueryOf(query): QueryOf<HistoryQuery>,
) -> Result<Response, ApiError> {
    // Subscribe before reading, so no commit falls between the two.
    let mut head = app.supervisor.journal_head();
    head.borrow_and_update();
    let entries = app
        .supervisor
        .history(&token, query.since, query.limit.unwrap_or(100))
        .await?;
    if !query.follow {
        let view = HistoryView {
            token,
            entries: views(&entries),
        };
        return Ok(Json(view).into_response());
    }
    let last = entries.last().map_or(query.since.unwrap_or(0), |e| e.seq);
    let first = EventLine::History {
        token: token.clone(),
        entries: views(&entries),
    };
    let feed = Follow {
        supervisor: app.supervisor.clone(),
        token,
        head,
        last,
        first: Some(first),
        shutdown: app.shutdown.clone(),
        ended: false,
        look_every: app
            .elsewhere
            .as_ref()
            .map(|_| std::time::Duration::from_secs(1)),
    };
    let stream = futures_util::stream::unfold(feed, Follow::next);
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// One followed history.
struct Follow {
    supervisor: Supervisor,
    token: String,
    head: watch::Receiver<i64>,
    last: i64,
    first: Option<EventLine>,
    shutdown: CancellationToken,
    ended: bool,
    /// In a cluster, other nodes commit too, unseen here: looked at this often as well.
    look_every: Option<std::time::Duration>,
}

fn event(line: &EventLine) -> Event {
    let name = if matches!(line, EventLine::Closed { .. }) {
        "closed"
    } else {
        "history"
    };
    Event::default()
        .event(name)
        .data(serde_json::to_string(line).unwrap_or_else(|_| "{}".into()))
}

impl Follow {
    fn close(mut self, reason: String) -> Option<(Result<Event, Infallible>, Self)> {
        self.ended = true;
        let line = EventLine::Closed { reason };
        Some((Ok(event(&line)), self))
    }

    async fn next(mut self) -> Option<(Result<Event, Infallible>, Self)> {
        if let Some(first) = self.first.take() {
            return Some((Ok(event(&first)), self));
        }
        if self.ended {
            return None;
        }
        loop {
            let entries = match self
                .supervisor
                .history(&self.token, Some(self.last), MAX_READ)
                .await
            {
                Ok(entries) => entries,
                // Nothing new of a session this node does not run (in a cluster): not an end.
                Err(warden_core::Error::NotFound(_)) if self.look_every.is_some() => Vec::new(),
                Err(e) => return self.close(e.to_string()),
            };
            if let Some(newest) = entries.last().map(|e| e.seq) {
                self.last = newest;
                let line = EventLine::History {
                    token: self.token.clone(),
                    entries: views(&entries),
                };
                return Some((Ok(event(&line)), self));
            }
            tokio::select! {
                () = self.shutdown.cancelled() => {
                    return self.close("the daemon is stopping".into());
                }
                () = tokio::time::sleep(self.look_every.unwrap_or_default()),
                    if self.look_every.is_some() => {}
                changed = self.head.changed() => {
                    if changed.is_err() {
                        return self.close("the supervisor has stopped".into());
                    }
                }
            }
        }
    }
}
