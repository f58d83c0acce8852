//! The daemon as one node of a cluster (docs/cluster.md): what joins `warden-cluster`'s
//! [`Node`](warden_cluster::Node) to the supervisor, the store and the WhatsApp link.
//!
//! - [`NodeLeases`]: the fence each write of the store carries, while this node holds the
//!   session ([`warden_store::Leases`]).
//! - [`NodeCredentials`]: a session's credentials for its next connection, only while this node
//!   may dial it (its lease has enough left), under that fence ([`warden_whatsapp::Credentials`]).
//! - [`follow`]: drives the supervisor from the node's ownership: a session claimed is adopted
//!   (run from its stored record), one lost is relinquished (closed here, nothing written), and
//!   when the node fences itself (or stops) every session is relinquished at once.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::join_all;
use tokio::sync::watch;
use warden_cluster::{Gate, Ownership};
use warden_core::{Error, StoreError, Supervisor, Token};
use warden_store::{CredentialsDb, Fence, Leases, PgDb};

/// How often a session that could not be adopted yet (its connection here still closing from
/// an earlier loss, or a passing failure) is tried again.
pub const ADOPT_RETRY: Duration = Duration::from_millis(200);

/// The fence each session was adopted under, kept by [`follow`]: a write or a dial is allowed
/// only under the fence the running session was adopted with, never under a later claim of
/// the same session that this node has not adopted yet (the session running here then is the
/// old one, and its view is out of date).
#[derive(Debug, Clone, Default)]
pub struct Adopted(Arc<Mutex<BTreeMap<String, i64>>>);

impl Adopted {
    fn get(&self, token: &str) -> Option<i64> {
        self.lock().get(token).copied()
    }

    fn set(&self, token: &str, fence: i64) {
        self.lock().insert(token.to_owned(), fence);
    }

    /// No write or dial of `token` from now on (it is being let go).
    pub(crate) fn unset(&self, token: &str) {
        self.lock().remove(token);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, i64>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The fence a write (or a dial) may carry: what the node holds, `(incarnation, fence)`, only
/// when it is the fence the running session was adopted under.
pub fn usable(held: Option<(i64, i64)>, adopted: Option<i64>) -> Option<(i64, i64)> {
    held.filter(|(_, fence)| adopted == Some(*fence))
}

/// The fences of the sessions this node holds, for the store's writes.
#[derive(Debug, Clone)]
pub struct NodeLeases {
    /// This node's lease and ownership.
    pub gate: Gate,
    /// The fence each running session was adopted under.
    pub adopted: Adopted,
}

impl Leases for NodeLeases {
    fn fence(&self, token: &str) -> Option<Fence> {
        let (incarnation, fence) = usable(self.gate.held(token), self.adopted.get(token))?;
        Some(Fence {
            node: self.gate.name().to_owned(),
            incarnation,
            fence,
        })
    }
}

/// The sessions' credentials on PostgreSQL, given to the link only while this node may dial
/// the session under the fence it was adopted with.
#[derive(Debug, Clone)]
pub struct NodeCredentials {
    /// This node's lease and ownership.
    pub gate: Gate,
    /// The fence each running session was adopted under.
    pub adopted: Adopted,
    /// The store.
    pub db: PgDb,
}

impl warden_whatsapp::Credentials for NodeCredentials {
    fn for_session(&self, token: &Token) -> Option<CredentialsDb> {
        let token = token.as_str();
        let (incarnation, fence) = usable(self.gate.dial(token), self.adopted.get(token))?;
        Some(CredentialsDb::Leased {
            db: self.db.clone(),
            fence: Fence {
                node: self.gate.name().to_owned(),
                incarnation,
                fence,
            },
        })
    }
}

/// Whether a failed adopt is for good (the session cannot run here from its record) rather
/// than passing (tried again).
fn for_good(error: &Error) -> bool {
    matches!(
        error,
        Error::NotFound(_)
            | Error::InvalidToken(_)
            | Error::Store(StoreError::Record { .. } | StoreError::BadToken { .. })
    )
}

/// Follows `ownership` until the node stops: adopts each session claimed, relinquishes each
/// session lost (or claimed again under a new fence: relinquished, then adopted), and
/// relinquishes everything when the ownership empties (the node fenced itself) or its
/// sender is gone (the node stopped). A loss stops the session's writes at once
/// (`adopted`), then closes it; losses are carried out in parallel, and before any adopt:
/// an adopt in progress is abandoned (and undone) when the ownership changes.
pub async fn follow(
    supervisor: Supervisor,
    mut ownership: watch::Receiver<Ownership>,
    adopted: Adopted,
) {
    // What the supervisor runs here, with the fence it was adopted under.
    let mut here: BTreeMap<String, i64> = BTreeMap::new();
    // Sessions whose adopt keeps failing (warned once each, until it works).
    let mut failing: std::collections::BTreeSet<String> = Default::default();
    loop {
        let (wanted, stopped) = match ownership.has_changed() {
            Err(_) => (BTreeMap::new(), true),
            Ok(_) => (ownership.borrow_and_update().sessions.clone(), false),
        };
        let lost: Vec<String> = here
            .iter()
            .filter(|(token, fence)| wanted.get(*token) != Some(fence))
            .map(|(token, _)| token.clone())
            .collect();
        for token in &lost {
            adopted.unset(token);
        }
        let releases = lost.iter().map(|token| supervisor.relinquish(token));
        for (token, result) in lost.iter().zip(join_all(releases).await) {
            here.remove(token);
            if let Err(e) = result {
                tracing::error!(token = %token, error = %e, "could not let go of a session this node lost");
            }
        }
        if stopped {
            return;
        }
        let mut retry = false;
        for (token, fence) in &wanted {
            if here.get(token) == Some(fence) {
                continue;
            }
            if lost_any(&ownership, &here) {
                break; // a loss goes first
            }
            adopted.set(token, *fence);
            let result = adopt_unless_lost(&supervisor, &mut ownership, &here, token, *fence).await;
            match result {
                Some(Ok(_)) => {
                    here.insert(token.clone(), *fence);
                    if failing.remove(token) {
                        tracing::info!(token = %token, "a session this node holds runs here now");
                    }
                }
                Some(Err(e)) if for_good(&e) => {
                    tracing::warn!(token = %token, error = %e, "a session this node holds cannot run here");
                    adopted.unset(token);
                    here.insert(token.clone(), *fence);
                }
                Some(Err(e)) => {
                    // Still closing here from an earlier loss, or a passing failure (which may
                    // have come after the supervisor took the session in): undone, then tried
                    // again.
                    adopted.unset(token);
                    if !matches!(e, Error::Conflict { .. }) {
                        undo_adopt(&supervisor, token).await;
                        if failing.insert(token.clone()) {
                            tracing::warn!(token = %token, error = %e, "could not run a session this node holds; trying again");
                        }
                    }
                    retry = true;
                }
                None => {
                    // Abandoned for a change of ownership: undo it, in case it got through.
                    adopted.unset(token);
                    undo_adopt(&supervisor, token).await;
                    break;
                }
            }
        }
        // A change seen while adopting (more sessions claimed) was marked seen: go round again
        // at once rather than wait for the next one.
        let moved = ownership.borrow().sessions != wanted;
        if moved {
            continue;
        }
        if retry {
            let _ = tokio::time::timeout(ADOPT_RETRY, ownership.changed()).await;
        } else if ownership.changed().await.is_err() {
            // The node stopped: the next round lets go of everything.
        }
    }
}

/// Lets go of `token` in case an adopt got through before it failed or was abandoned (a
/// session nobody follows must not run); a failure to do so is logged.
async fn undo_adopt(supervisor: &Supervisor, token: &str) {
    if let Err(e) = supervisor.relinquish(token).await {
        tracing::error!(token = %token, error = %e, "could not let go of a session whose adopt did not complete");
    }
}

/// Whether the ownership now lacks a session this node runs (under the fence it runs it with),
/// or the node stopped.
fn lost_any(ownership: &watch::Receiver<Ownership>, here: &BTreeMap<String, i64>) -> bool {
    if ownership.has_changed().is_err() {
        return true;
    }
    let now = ownership.borrow();
    here.iter().any(|(t, f)| now.sessions.get(t) != Some(f))
}

/// Adopts `token` (held under `fence`), unless meanwhile the ownership changes so that this
/// node loses it or any session it runs (`None`: abandoned, so that the loss goes first).
/// Other changes (more sessions claimed) do not interrupt it.
async fn adopt_unless_lost(
    supervisor: &Supervisor,
    ownership: &mut watch::Receiver<Ownership>,
    here: &BTreeMap<String, i64>,
    token: &str,
    fence: i64,
) -> Option<Result<warden_core::SessionInfo, Error>> {
    let mut adopt = std::pin::pin!(supervisor.adopt(token));
    loop {
        tokio::select! {
            result = &mut adopt => return Some(result),
            changed = ownership.changed() => {
                if changed.is_err() {
                    return None;
                }
                let lost_this = ownership.borrow().sessions.get(token) != Some(&fence);
                if lost_this || lost_any(ownership, here) {
                    return None;
                }
            }
        }
    }
}

/// Why [`hand_over`] did not leave the cluster.
#[derive(Debug, thiserror::Error)]
pub enum HandOverError {
    /// A session could not be closed here: the node does not hand it over while its
    /// connection may still be open (the others take over once they declare it dead).
    #[error("could not close session {token} ({error}); not leaving the cluster")]
    Close {
        /// The session.
        token: String,
        /// Why.
        error: Error,
    },
    /// Leaving failed.
    #[error(transparent)]
    Leave(#[from] warden_cluster::ClusterError),
}

/// Leaves the cluster gracefully: stops following (`follower`), closes every session here
/// (in parallel, each answered once its connection is gone, nothing of them written), then
/// hands every session back and marks this incarnation dead in one transaction
/// ([`Node::leave`]), so that the other nodes claim at once instead of after the dead
/// timeout. Returns how many were handed back. If a session cannot be closed, the node does
/// not leave.
///
/// [`Node::leave`]: warden_cluster::Node::leave
pub async fn hand_over(
    supervisor: &Supervisor,
    node: warden_cluster::Node,
    follower: tokio::task::JoinHandle<()>,
    adopted: &Adopted,
) -> Result<u64, HandOverError> {
    follower.abort();
    let _ = follower.await;
    // An adopt the follower sent before it stopped is handled before this answers, so the
    // list below has it.
    let _ = supervisor.ping().await;
    let tokens: Vec<String> = supervisor
        .list()
        .sessions
        .into_iter()
        .map(|info| info.token.to_string())
        .collect();
    for token in &tokens {
        adopted.unset(token);
    }
    let closed = join_all(tokens.iter().map(|t| supervisor.relinquish(t))).await;
    for (token, result) in tokens.iter().zip(closed) {
        if let Err(error) = result {
            return Err(HandOverError::Close {
                token: token.clone(),
                error,
            });
        }
    }
    Ok(node.leave().await?)
}

#[cfg(test)]
mod tests {
    use super::usable;

    #[test]
    fn a_write_carries_only_the_fence_the_running_session_was_adopted_under() {
        let rows = [
            // (held now, adopted under) -> usable
            (Some((7, 3)), Some(3), Some((7, 3))),
            (Some((7, 4)), Some(3), None), // claimed again, not adopted again yet
            (Some((7, 3)), None, None),    // claimed, not adopted yet (or let go)
            (None, Some(3), None),         // lost (or fenced)
            (None, None, None),
        ];
        for (held, adopted, expected) in rows {
            assert_eq!(usable(held, adopted), expected, "{held:?} {adopted:?}");
        }
    }
}
