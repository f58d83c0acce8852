//! [`EventWaiter`]: waits for session states in tests without sleeping.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use tokio::sync::broadcast;

use crate::events::SessionEvent;
use crate::state::{SessionInfo, SessionState};
use crate::supervisor::Supervisor;

/// A supervisor's event stream, split per token: waiting for one token never loses the events
/// of another, and each token's updates are seen in order. Events other than updates are kept
/// in [`EventWaiter::others`].
pub struct EventWaiter {
    rx: broadcast::Receiver<SessionEvent>,
    pending: HashMap<String, VecDeque<SessionInfo>>,
    /// How long one wait may take before the test fails.
    limit: Duration,
    /// QR codes, pair codes, messages and removals seen so far, in order.
    pub others: Vec<SessionEvent>,
}

impl EventWaiter {
    /// The events of `supervisor` from now on; each wait fails after `limit`.
    pub fn new(supervisor: &Supervisor, limit: Duration) -> Self {
        Self {
            rx: supervisor.subscribe(),
            pending: HashMap::new(),
            limit,
            others: Vec::new(),
        }
    }

    /// Waits for the next update of `token` that matches `pred`, skipping earlier updates of
    /// that token. Panics (failing the test) after the limit.
    pub async fn wait(&mut self, token: &str, pred: impl Fn(&SessionInfo) -> bool) -> SessionInfo {
        let waiting = async {
            loop {
                if let Some(queue) = self.pending.get_mut(token) {
                    while let Some(info) = queue.pop_front() {
                        if pred(&info) {
                            return info;
                        }
                    }
                }
                match self.rx.recv().await {
                    Ok(SessionEvent::Updated(info)) => self
                        .pending
                        .entry(info.token.to_string())
                        .or_default()
                        .push_back(*info),
                    Ok(other) => self.others.push(other),
                    Err(broadcast::error::RecvError::Lagged(n)) => panic!("test lagged {n} events"),
                    Err(broadcast::error::RecvError::Closed) => panic!("event stream closed"),
                }
            }
        };
        tokio::time::timeout(self.limit, waiting)
            .await
            .unwrap_or_else(|_| panic!("{token} never reached the awaited state"))
    }

    /// Waits for `token` to reach `state`.
    pub async fn state(&mut self, token: &str, state: SessionState) -> SessionInfo {
        self.wait(token, |info| info.state == state).await
    }

    /// Like [`EventWaiter::wait`], but first looks at the session's current status: for a
    /// supervisor whose sessions may have moved before this stream was opened.
    pub async fn wait_status(
        &mut self,
        supervisor: &Supervisor,
        token: &str,
        pred: impl Fn(&SessionInfo) -> bool,
    ) -> SessionInfo {
        match supervisor.status(token) {
            Ok(info) if pred(&info) => info,
            _ => self.wait(token, pred).await,
        }
    }
}
