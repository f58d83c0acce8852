//! Rebalancing when a node joins: the cluster layer suggests, at most once a second, a
//! session that placement prefers on another node ([`NodeEvent::Rebalance`]); this node
//! closes it here and releases its lease, and the preferred node claims it at once. A session
//! being linked (a QR code or pairing code on show) is never moved: the person scanning would
//! lose it; the node is told, and suggests other sessions meanwhile.

use tokio::sync::broadcast;
use warden_cluster::{NodeEvent, Releaser};
use warden_core::{SessionState, Supervisor};

use crate::cluster::Adopted;

/// How long to wait before asking the supervisor again to close a session being moved.
const RETRY_CLOSE: std::time::Duration = std::time::Duration::from_secs(1);

/// Whether a session in `state` may be moved to another node now.
pub fn movable(state: SessionState) -> bool {
    !matches!(state, SessionState::WaitingForScan | SessionState::Pairing)
}

/// Acts on the node's rebalancing suggestions (`events`) until the node stops.
pub async fn rebalance(
    supervisor: Supervisor,
    releaser: Releaser,
    mut events: broadcast::Receiver<NodeEvent>,
    adopted: Adopted,
) {
    loop {
        let token = match events.recv().await {
            Ok(NodeEvent::Rebalance { token }) => token,
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => return,
        };
        match supervisor.status(&token) {
            Ok(info) if movable(info.state) => {}
            // Being linked, or not running here (yet): the node suggests others meanwhile.
            _ => {
                releaser.decline(&token).await;
                continue;
            }
        }
        // No write of it from here on; then its connection closes (insisting: a session
        // left unwritable but held would run nowhere); then the lease goes.
        adopted.unset(&token);
        let mut warned = false;
        loop {
            let result = tokio::select! {
                // The daemon is ending: nothing more to move.
                () = supervisor.stopped() => return,
                result = supervisor.relinquish(&token) => result,
            };
            let Err(e) = result else { break };
            if !warned {
                tracing::warn!(token = %token, error = %e, "could not close a session to move it to another node; trying again");
                warned = true;
            }
            tokio::time::sleep(RETRY_CLOSE).await;
        }
        match releaser.release(&token).await {
            Ok(true) => {
                tracing::info!(token = %token, "session handed to the node placement prefers (rebalancing)")
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(token = %token, error = %e, "could not release a session to move it; the node sends the release again")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_session_being_linked_stays_put() {
        let rows = [
            (SessionState::Stopped, true),
            (SessionState::Queued, true),
            (SessionState::Connecting, true),
            (SessionState::WaitingForScan, false),
            (SessionState::Pairing, false),
            (SessionState::Connected, true),
            (SessionState::BackingOff, true),
            (SessionState::Failed, true),
            (SessionState::LoggedOut, true),
            (SessionState::Replaced, true),
            (SessionState::Banned, true),
            (SessionState::QrExpired, true),
        ];
        for (state, expected) in rows {
            assert_eq!(movable(state), expected, "{state:?}");
        }
    }
}
