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
use std::time::Duration;

use futures_util::future::join_all;
use tokio::sync::watch;
use warden_cluster::{Gate, Ownership};
use warden_core::{Error, Supervisor, Token};
use warden_store::{CredentialsDb, Fence, Leases, PgDb};

/// How often a session that could not be adopted yet (its connection here still closing from
/// an earlier loss) is tried again.
pub const ADOPT_RETRY: Duration = Duration::from_millis(200);

/// The fences of the sessions this node holds, for the store's writes.
#[derive(Debug, Clone)]
pub struct NodeLeases(pub Gate);

impl Leases for NodeLeases {
    fn fence(&self, token: &str) -> Option<Fence> {
        let (incarnation, fence) = self.0.held(token)?;
        Some(Fence {
            node: self.0.name().to_owned(),
            incarnation,
            fence,
        })
    }
}

/// The sessions' credentials on PostgreSQL, given to the link only while this node may dial.
#[derive(Debug, Clone)]
pub struct NodeCredentials {
    /// This node's lease and ownership.
    pub gate: Gate,
    /// The store.
    pub db: PgDb,
}

impl warden_whatsapp::Credentials for NodeCredentials {
    fn for_session(&self, token: &Token) -> Option<CredentialsDb> {
        let (incarnation, _) = self.gate.held(token.as_str())?;
        let fence = self.gate.may_dial(token.as_str())?;
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

/// Follows `ownership` until the node stops: adopts each session claimed, relinquishes each
/// session lost (or claimed again under a new fence: relinquished, then adopted), and
/// relinquishes everything when the ownership empties (the node fenced itself) or its
/// sender is gone (the node stopped). Relinquishing answers once the connection is closed,
/// and every loss is carried out at once, in parallel.
pub async fn follow(supervisor: Supervisor, mut ownership: watch::Receiver<Ownership>) {
    // What the supervisor runs here, with the fence it was adopted under.
    let mut here: BTreeMap<String, i64> = BTreeMap::new();
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
            match supervisor.adopt(token).await {
                Ok(_) => {
                    here.insert(token.clone(), *fence);
                }
                // Still closing here from an earlier loss: again shortly.
                Err(Error::Conflict { .. }) => retry = true,
                Err(e) => {
                    tracing::warn!(token = %token, error = %e, "a session this node holds cannot run here");
                    here.insert(token.clone(), *fence);
                }
            }
        }
        if retry {
            let _ = tokio::time::timeout(ADOPT_RETRY, ownership.changed()).await;
        } else if ownership.changed().await.is_err() {
            // The node stopped: the next round lets go of everything.
        }
    }
}

/// Leaves the cluster gracefully: stops following (`follower`), closes every session here
/// (in parallel, each answered once its connection is gone), then hands every session back
/// and marks this incarnation dead in one transaction ([`Node::leave`]), so that the other
/// nodes claim at once instead of after the dead timeout. Returns how many were handed back.
///
/// [`Node::leave`]: warden_cluster::Node::leave
pub async fn hand_over(
    supervisor: &Supervisor,
    node: warden_cluster::Node,
    follower: tokio::task::JoinHandle<()>,
) -> Result<u64, warden_cluster::ClusterError> {
    follower.abort();
    let _ = follower.await;
    let tokens: Vec<String> = supervisor
        .list()
        .sessions
        .into_iter()
        .map(|info| info.token.to_string())
        .collect();
    for (token, result) in tokens
        .iter()
        .zip(join_all(tokens.iter().map(|t| supervisor.relinquish(t))).await)
    {
        if let Err(e) = result {
            tracing::error!(token = %token, error = %e, "could not close a session before leaving");
        }
    }
    node.leave().await
}
