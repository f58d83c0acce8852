//! `GET /events`: server-sent events. Each event is named after its kind and carries the
//! control socket's watch line as data:
//!
//! ```text
//! event: watching
//! data: {"watching":null}
//!
//! event: session
//! data: {"event":"session","session":{"token":"shop1","state":"connected",...}}
//! ```
//!
//! In a cluster, the stream covers every node, like the control socket's `watch`: this node's
//! events as they happen, and the other nodes' sessions as they change, looked at once a
//! second (their `session` and `removed` events; their messages are on their own node's
//! stream). `?token=` follows its session the same way while another node runs it.
//!
//! The stream starts with `watching`, then the current state of every watched session (and
//! its QR or pairing code, when one is on show), then changes: `session`, `qr`, `pair_code`,
//! `message`, `removed`. A client that falls behind gets `closed` and the stream ends; an
//! `EventSource` reconnects by itself and starts again from the current state.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use serde::Deserialize;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;
use warden_control::protocol::{EventLine, WatchingView};
use warden_control::{ElsewhereFeed, Whereabouts, whereabouts};
use warden_core::{SessionEvent, SessionInfo, Token};

use crate::error::ApiError;
use crate::extract::QueryOf;
use crate::metrics::Metrics;
use crate::state::AppState;

/// How soon an `EventSource` should reconnect after the stream ends.
const RETRY: Duration = Duration::from_secs(1);

/// The query of `GET /events`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct EventsQuery {
    /// Only this session's events.
    pub token: Option<String>,
    /// The API key, for clients that cannot send headers (checked by the auth layer).
    pub api_key: Option<String>,
}

fn event(line: &EventLine) -> Event {
    let name = match line {
        EventLine::Session { .. } => "session",
        EventLine::Qr { .. } => "qr",
        EventLine::PairCode { .. } => "pair_code",
        EventLine::Message { .. } => "message",
        EventLine::MessageStatus { .. } => "message_status",
        EventLine::NewChatsPaused { .. } => "new_chats_paused",
        EventLine::Removed { .. } => "removed",
        EventLine::History { .. } => "history",
        EventLine::Closed { .. } => "closed",
    };
    let data = serde_json::to_string(line).unwrap_or_else(|_| "{}".into());
    Event::default().event(name).data(data)
}

/// The current state of one session, as the first events of a stream show it.
fn current(info: &SessionInfo, out: &mut VecDeque<Event>) {
    out.push_back(event(&EventLine::from(&SessionEvent::Updated(Box::new(
        info.clone(),
    )))));
    if let Some(qr) = &info.qr {
        let expires_in = qr
            .expires_at
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        out.push_back(event(&EventLine::Qr {
            token: info.token.to_string(),
            code: qr.code.clone(),
            expires_in_secs: expires_in.as_secs(),
        }));
    }
    if let Some(code) = &info.pair_code {
        out.push_back(event(&EventLine::PairCode {
            token: info.token.to_string(),
            code: code.clone(),
        }));
    }
}

/// One open stream: what it still has to send, and where it reads from.
struct Feed {
    /// Events to send before reading the bus (the current state, or a final `closed`).
    pending: VecDeque<Event>,
    /// The event bus, subscribed before the current state was read, so no change is lost.
    events: broadcast::Receiver<SessionEvent>,
    /// Only this session, if set.
    filter: Option<Token>,
    /// Cancelled at shutdown: the stream says `closed` and ends.
    shutdown: tokio_util::sync::CancellationToken,
    /// Set once `closed` is queued: the stream ends after sending it.
    ending: bool,
    /// In a cluster, what the other nodes' sessions do (or the one session's, when it runs
    /// on another node).
    elsewhere: Option<ElsewhereFeed>,
    /// Keeps the open-streams gauge right however the stream ends.
    guard: StreamGuard,
}

/// Counts the stream in `/metrics` while it lives.
struct StreamGuard {
    metrics: Arc<Metrics>,
    lagged: bool,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.metrics.event_stream_closed(self.lagged);
    }
}

impl Feed {
    fn close(&mut self, reason: &str) {
        self.pending.push_back(event(&EventLine::Closed {
            reason: reason.into(),
        }));
        self.ending = true;
    }

    async fn next(mut self) -> Option<(Result<Event, Infallible>, Self)> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some((Ok(event), self));
            }
            if self.ending {
                return None;
            }
            let received = tokio::select! {
                () = self.shutdown.cancelled() => {
                    self.close("the daemon is stopping");
                    continue;
                }
                received = self.events.recv() => received,
                lines = next_from(&mut self.elsewhere) => {
                    match lines {
                        Some(lines) => self.pending.extend(lines.iter().map(event)),
                        None => {
                            self.elsewhere = None;
                            // A session's feed ends once the cluster no longer has it (its
                            // `removed` was the last line); the feed of every session does not
                            // end, short of a panic, and this node's events go on.
                            if self.filter.is_some() {
                                self.close("the session was deleted");
                            }
                        }
                    }
                    continue;
                }
            };
            match received {
                Ok(event) => {
                    if self.filter.as_ref().is_none_or(|t| t == event.token()) {
                        let line = self::event(&EventLine::from(&event));
                        if self.filter.is_some() && matches!(event, SessionEvent::Removed { .. }) {
                            // The one session this stream follows is gone: say so and end.
                            self.pending.push_back(line);
                            self.close("the session was deleted");
                            continue;
                        }
                        return Some((Ok(line), self));
                    }
                }
                Err(RecvError::Lagged(missed)) => {
                    self.guard.lagged = true;
                    self.close(&format!(
                        "this stream fell {missed} events behind; reconnect to get the current state"
                    ));
                }
                Err(RecvError::Closed) => self.close("the supervisor has stopped"),
            }
        }
    }
}

/// `GET /events`: the event stream, optionally for one session (`?token=`).
pub async fn events(
    State(app): State<Arc<AppState>>,
    QueryOf(query): QueryOf<EventsQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let peers = app.elsewhere.as_ref().map(|e| e.as_peers());
    // A session another node runs: where it is, asked before subscribing (the look may take
    // seconds, and this node's events meanwhile are not this stream's).
    let mut elsewhere_first = None;
    if let (Some(token), Some(peers)) = (&query.token, &peers)
        && let Err(warden_core::Error::NotFound(token)) = app.supervisor.status(token)
    {
        match whereabouts(peers.as_ref(), token.as_str()).await {
            Ok(Whereabouts::Listed(view)) => elsewhere_first = Some(*view),
            // Moving between nodes: its view comes once a node runs it.
            Ok(Whereabouts::Between) => {}
            Ok(Whereabouts::Missing) => return Err(warden_core::Error::NotFound(token).into()),
            Err(why) => return Err(ApiError::from_body(&why)),
        }
    }
    // Subscribe before the current state is read: a change made meanwhile is sent twice at
    // worst, never missed.
    let events = app.supervisor.subscribe();
    let mut pending = VecDeque::new();
    let watching = WatchingView {
        watching: query.token.clone(),
    };
    pending.push_back(
        Event::default()
            .event("watching")
            .retry(RETRY)
            .data(serde_json::to_string(&watching).unwrap_or_else(|_| "{}".into())),
    );
    let (filter, elsewhere) = match &query.token {
        Some(token) => match (app.supervisor.status(token), peers) {
            // Here (perhaps come here since it was looked for: this view is the newer).
            (Ok(info), peers) => {
                current(&info, &mut pending);
                // In a cluster it may be handed to another node: followed there too.
                let feed = peers.map(|peers| {
                    ElsewhereFeed::one_session(
                        app.supervisor.clone(),
                        peers,
                        info.token.to_string(),
                        None,
                    )
                });
                (Some(info.token), feed)
            }
            // In a cluster the session may run on another node: follow it there.
            (Err(warden_core::Error::NotFound(token)), Some(peers)) => {
                if let Some(view) = &elsewhere_first {
                    pending.push_back(event(&EventLine::Session {
                        session: Box::new(view.clone()),
                    }));
                }
                let feed = ElsewhereFeed::one_session(
                    app.supervisor.clone(),
                    peers,
                    token.to_string(),
                    elsewhere_first,
                );
                (Some(token), Some(feed))
            }
            (Err(e), _) => return Err(e.into()),
        },
        None => {
            for info in &app.supervisor.list().sessions {
                current(info, &mut pending);
            }
            let feed =
                peers.map(|peers| ElsewhereFeed::every_session(app.supervisor.clone(), peers));
            (None, feed)
        }
    };
    app.metrics.event_stream_opened();
    let feed = Feed {
        pending,
        events,
        filter,
        shutdown: app.shutdown.clone(),
        ending: false,
        elsewhere,
        guard: StreamGuard {
            metrics: app.metrics.clone(),
            lagged: false,
        },
    };
    let stream = futures_util::stream::unfold(feed, Feed::next);
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(app.options.keep_alive)))
}

/// The next lines of `feed`; never, when there is none.
async fn next_from(feed: &mut Option<ElsewhereFeed>) -> Option<Vec<EventLine>> {
    match feed {
        Some(feed) => feed.next().await,
        None => std::future::pending().await,
    }
}
