//! The task that derives the session counters of `/metrics` from the event bus.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;
use warden_core::{Counters, SessionEvent, SessionInfo, SessionState, Supervisor, Token};

use super::{DISCONNECT_REASONS, Metrics};

/// What the collector last saw of one session.
struct Seen {
    counters: Counters,
    state: SessionState,
}

/// The bucket a disconnect is counted in, from the reason the session shows after it.
fn classify(reason: Option<&str>) -> &'static str {
    let Some(reason) = reason else {
        // A restart of a healthy session leaves no reason.
        return "requested";
    };
    if reason.starts_with("reaped") {
        return "reaped";
    }
    if [
        "stopped by request",
        "force cleanup",
        "logged out by request",
    ]
    .iter()
    .any(|p| reason.starts_with(p))
    {
        return "requested";
    }
    let head = reason.split([':', ' ', ';']).next().unwrap_or_default();
    DISCONNECT_REASONS
        .iter()
        .find(|code| **code == head)
        .copied()
        .unwrap_or("unknown")
}

impl Metrics {
    /// Counts what changed between `seen` and `info`; `reason` names the disconnect bucket.
    fn count_changes(&self, seen: &Seen, info: &SessionInfo, reason: &str) {
        let delta = |now: u64, then: u64| now.saturating_sub(then);
        let disconnects = delta(info.counters.disconnects, seen.counters.disconnects);
        if disconnects > 0 {
            self.count_disconnects(reason, disconnects);
        }
        let restarts = delta(info.counters.restarts, seen.counters.restarts);
        self.restarts.fetch_add(restarts, Ordering::Relaxed);
        let connects = delta(info.counters.connects, seen.counters.connects);
        self.connects.fetch_add(connects, Ordering::Relaxed);
        let reaped = info.state != seen.state
            && info
                .reason
                .as_deref()
                .is_some_and(|r| r.starts_with("reaped"));
        if reaped {
            self.reaps.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn seen(info: &SessionInfo) -> Seen {
    Seen {
        counters: info.counters,
        state: info.state,
    }
}

/// Follows `supervisor`'s events until `stop`, counting disconnects by reason, restarts,
/// logins and reaps into `metrics`. Counts start at zero: what happened before is not counted.
pub async fn collect(
    metrics: std::sync::Arc<Metrics>,
    supervisor: Supervisor,
    stop: CancellationToken,
) {
    let mut events = supervisor.subscribe();
    let mut sessions: HashMap<Token, Seen> = supervisor
        .list()
        .sessions
        .iter()
        .map(|info| (info.token.clone(), seen(info)))
        .collect();
    loop {
        let event = tokio::select! {
            () = stop.cancelled() => return,
            event = events.recv() => event,
        };
        match event {
            Ok(SessionEvent::Updated(info)) => {
                if let Some(before) = sessions.get(&info.token) {
                    metrics.count_changes(before, &info, classify(info.reason.as_deref()));
                }
                sessions.insert(info.token.clone(), seen(&info));
            }
            Ok(SessionEvent::Removed { token }) => {
                sessions.remove(&token);
            }
            Ok(_) => {}
            Err(RecvError::Lagged(_)) => {
                // Catch up from the snapshot; the reasons of what was missed are unknown.
                let list = supervisor.list();
                let mut now = HashMap::with_capacity(list.sessions.len());
                for info in &list.sessions {
                    if let Some(before) = sessions.get(&info.token) {
                        metrics.count_changes(before, info, "unknown");
                    }
                    now.insert(info.token.clone(), seen(info));
                }
                sessions = now;
            }
            Err(RecvError::Closed) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_bucketed() {
        for (reason, bucket) in [
            (None, "requested"),
            (Some("connection_lost"), "connection_lost"),
            (Some("connect_failed: dns"), "connect_failed"),
            (
                Some("proxy_unreachable: connection refused"),
                "proxy_unreachable",
            ),
            (Some("proxy_auth_failed: refused"), "proxy_auth_failed"),
            (
                Some("temporarily_banned for 1h (code 101)"),
                "temporarily_banned",
            ),
            (Some("logged_out; credentials deleted"), "logged_out"),
            (Some("stopped by request"), "requested"),
            (Some("force cleanup"), "requested"),
            (Some("reaped: connecting for more than 10m"), "reaped"),
            (Some("something new"), "unknown"),
        ] {
            assert_eq!(classify(reason), bucket, "{reason:?}");
        }
    }
}
